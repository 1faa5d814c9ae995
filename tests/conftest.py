import shutil
import tempfile

import pytest


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
