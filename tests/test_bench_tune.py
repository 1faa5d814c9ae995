"""bench/tune.py (admm-mpi tune against the MLP's search): sets accumulate across invocations, each
with the command and commit that made it; another budget is refused."""

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.helpers import REPO, child_env

pytestmark = pytest.mark.skipif(importlib.util.find_spec("optuna") is None, reason="Optuna (the [tune] extra) is absent")


def _run(out, *args):
    return subprocess.run([sys.executable, str(REPO / "bench" / "tune.py"), "--quick", "--no-one-group",
                           "--candidates", "2", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=600, env=child_env(), cwd=REPO)


@pytest.mark.timeout(900)
def test_sets_accumulate_over_invocations_and_another_budget_is_refused(tmp_path):
    out = tmp_path / "tune.json"
    first = _run(out, "--sets", "wine_sk")
    assert first.returncode == 0, first.stderr[-3000:]
    second = _run(out, "--sets", "breast_cancer_sk")
    assert second.returncode == 0, second.stderr[-3000:]
    result = json.loads(out.read_text())
    assert list(result["sets"]) == ["wine_sk", "breast_cancer_sk"]
    for name, entry in result["sets"].items():
        assert "--quick" in entry["command"] and entry["commit"], name
        assert 0 <= entry["tune_2"]["test_accuracy"] <= 1 and 0 <= entry["halving"]["test_accuracy"] <= 1
        assert sum(entry["tune_2"]["states"].values()) == 2  # the sweep's two trials
    assert "--sets breast_cancer_sk" in result["command"]  # the last invocation's record

    refused = _run(out, "--sets", "wine_sk", "--candidates", "3")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        "tune: tune.json holds another budget (candidates 2, quick True): give --fresh or another --out")
