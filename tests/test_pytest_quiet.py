"""The test command's own plumbing: ``pytest -q`` must run the MPI tests (tests/conftest.py)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TWO_RANK_TEST = ("tests/test_linalg.py::"
                 "test_activation_operator_formed_by_the_ranks_together_equals_serial_and_is_bit_identical[2-12-5]")


def test_pytest_quiet_runs_a_two_rank_test():
    # pytest-isolate-mpi 0.4 forwarded -q to the ranks' sub-sessions as a bare "-": every MPI
    # test then failed with "file or directory not found: -"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TWO_RANK_TEST],
                            cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 passed" in result.stdout
