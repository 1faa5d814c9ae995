"""pdADMM from the command line: layer and hybrid runs end to end, and bad layouts rejected."""

import json
import time

import pytest

from tests.helpers import NO_VALIDATION_FLAGS, run_admm


def test_layer_layout_run_writes_a_whole_model_that_evaluates_to_the_same_accuracy(tmp_path):
    run = tmp_path / "run"
    done = run_admm(3, "train", "--solver", "pdadmm", *NO_VALIDATION_FLAGS, "--layout", "layer", "--hidden",
                    "32,32,32,32", "--iters", 4, "--quantize", 8, "--no-progress", "--out", run)  # all 1500 rows
    assert done.returncode == 0, done.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["layout"] == "layer" and summary["layer_groups"] == 3 and summary["data_shards"] == 1
    per_rank = summary["bytes_per_iteration_per_rank"]
    assert len(per_rank) == 3 and all(b > 0 for b in per_rank)
    # 8-bit codes of the 32 x 1500 boundaries plus (offset, scale) as 2 float32: p back, q forward
    n = 1500
    assert per_rank[0] == 32 * n + 8             # q forward only
    assert per_rank[1] == 2 * (32 * n + 8)       # p back and q forward
    evaluated = run_admm(2, "evaluate", "--model", run / "model.h5", "--data", "digits")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-12)


BAD_LAYOUTS = [
    (3, ["--layout", "layer"], "needs a layer-parallel solver (pdadmm)"),
    (2, ["--solver", "pdadmm", "--layout", "hybrid"], "needs --layer-groups"),
    (3, ["--solver", "pdadmm", "--layout", "hybrid", "--layer-groups", "2"], "do not divide 3 ranks"),
    (3, ["--solver", "pdadmm", "--layout", "layer", "--hidden", "8"], "at most one layer group per layer"),
    (2, ["--solver", "pdadmm", "--layout", "layer", "--layer-groups", "2"], "applies to layout 'hybrid' only"),
    (2, ["--solver", "pdadmm", "--quantize", "1"], "quantize must be"),
    (2, ["--solver", "dladmm", "--quantize", "8"], "has no setting quantize"),
]


@pytest.mark.parametrize("ranks, args, message", BAD_LAYOUTS)
def test_bad_layout_gives_one_message_on_every_rank(tmp_path, ranks, args, message):
    start = time.time()
    proc = run_admm(ranks, "train", *args, "--iters", 2, "--no-progress", "--out", tmp_path / "run", timeout=30)
    assert time.time() - start < 30
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("admm-mpi: error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
