import shutil
import tempfile

import pytest


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
