import shutil
import tempfile

import pytest


def pytest_configure(config):
    _forward_quiet_to_mpi_subsessions()


def _forward_quiet_to_mpi_subsessions():
    """Let ``pytest -q`` run the MPI tests.

    pytest-isolate-mpi 0.4 forwards the verbosity to each rank's sub-session as ``-`` followed
    by ``verbose`` times ``v``; ``-q`` (verbosity -1) thus becomes a bare ``-``, which the
    sub-session takes for a file name, so every MPI test failed with "file or directory not
    found: -". A negative verbosity is forwarded as ``-q`` instead.
    """
    try:
        from pytest_isolate_mpi import _plugin
    except ImportError:  # the plugin is absent or reorganised: nothing to mend
        return
    assemble = getattr(_plugin, "assemble_sub_pytest_cmd", None)
    if assemble is None or getattr(assemble, "forwards_quiet", False):
        return

    def assemble_forwarding_quiet(option, nodeid):
        command = assemble(option, nodeid)
        if option.verbose < 0:
            command = ["-" + "q" * -option.verbose if arg == "-" else arg for arg in command]
        return command

    assemble_forwarding_quiet.forwards_quiet = True
    _plugin.assemble_sub_pytest_cmd = assemble_forwarding_quiet


@pytest.fixture
def comm(mpi_ranks):
    """COMM_WORLD of a test marked ``@pytest.mark.mpi(ranks=[...])``, checked to have that many ranks.

    (This replaces pytest-isolate-mpi's own ``comm`` fixture. Without the check, a run with
    ``--no-mpi-isolation`` gives every case a 1-rank COMM_WORLD and distributed == serial would
    compare the serial run with itself.)
    """
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    assert world.Get_size() == mpi_ranks, (
        f"this test is meant for {mpi_ranks} MPI ranks but runs on {world.Get_size()}; run it under "
        f"pytest-isolate-mpi (not --no-mpi-isolation) or launch it with mpiexec -n {mpi_ranks}")
    return world


@pytest.fixture
def shared_tmp(comm):
    """A temporary directory made by rank 0 and shared with every rank of the test's job.

    (pytest's own tmp_path is not safe here: each rank would create and prune numbered
    directories under the same base at the same time.)
    """
    from pathlib import Path

    path = tempfile.mkdtemp(prefix="admm-mpi-test-") if comm.rank == 0 else None
    path = comm.bcast(path, root=0)
    yield Path(path)
    comm.Barrier()
    if comm.rank == 0:
        shutil.rmtree(path, ignore_errors=True)
