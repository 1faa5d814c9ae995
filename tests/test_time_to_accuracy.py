"""bench/time_to_accuracy.py: the learning-rate choice, the times to target, and a quick run on digits."""

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.helpers import bench_module, REPO, child_env

HAS_TORCH = importlib.util.find_spec("torch") is not None


def _module():
    return bench_module("time_to_accuracy")


def _curve(points):
    return [{"seconds": s, "validation_accuracy": v, "test_accuracy": t} for s, v, t in points]


def test_time_to_target_is_the_first_point_at_or_above():
    tta = _module()
    curve = _curve([(1.0, 0.5, 0.6), (2.0, 0.97, 0.96), (3.0, 0.95, 0.97), (4.0, 0.99, 0.99)])
    assert tta.time_to_target(curve, 0.97) == 3.0
    assert tta.time_to_target(curve, 0.97, "validation_accuracy") == 2.0
    assert tta.time_to_target(curve, 0.995) is None
    assert tta.time_to_target([{"seconds": 1.0, "test_accuracy": None}], 0.1) is None


def test_lr_is_chosen_on_validation_not_test():
    tta = _module()
    fast_on_test = {"lr": 0.1, "curve": _curve([(1.0, 0.90, 0.98), (2.0, 0.98, 0.98)])}
    fast_on_validation = {"lr": 0.01, "curve": _curve([(1.5, 0.98, 0.90), (3.0, 0.98, 0.98)])}
    chosen, how = tta.choose_lr([fast_on_test, fast_on_validation], 0.97)
    assert chosen is fast_on_validation and "validation" in how
    never = {"lr": 1.0, "curve": _curve([(1.0, 0.60, 0.99)])}
    closer = {"lr": 0.3, "curve": _curve([(1.0, 0.80, 0.50)])}
    chosen, how = tta.choose_lr([never, closer], 0.97)
    assert chosen is closer and how.startswith("best validation accuracy")


def test_summary_ratio_and_missing_sides():
    tta = _module()
    entry = {"problem": "digits", "targets": [0.97, 0.99],
             "admm": [{"solver": "minibatch_am", "curve": _curve([(0.5, None, 0.96), (1.0, None, 0.975)])},
                      {"solver": "taylor", "curve": _curve([(3.0, None, 0.98)])}],
             "torch": [{"optimiser": "adam", "lr": 1e-3, "cap_hit": False,
                        "curve": _curve([(0.2, 0.97, 0.96), (0.4, 0.98, 0.98)])},
                       {"optimiser": "adam", "lr": 3e-3, "cap_hit": True, "curve": _curve([(0.3, 0.99, 0.97)])}]}
    first, second = tta.summarise(entry)["summary"]
    assert first["admm_seconds"] == {"minibatch_am": 1.0, "taylor": 3.0}
    assert first["torch"]["adam"]["lr"] == 1e-3 and first["torch"]["adam"]["test_seconds"] == 0.4
    assert first["ratio_admm_over_torch"] == pytest.approx(2.5) and first["goal_ratio"] == 2.0
    assert second["torch"]["adam"]["lr"] == 3e-3 and second["torch"]["adam"]["test_seconds"] is None
    assert second["best_admm_seconds"] is None and second["ratio_admm_over_torch"] is None
    table = tta.markdown({"command": "c", "commit": "x", "load_averages": [1.0], "problems": [entry]})
    assert "| **2.50×** | ≤ 2× not met |" in table and "caps hit: adam lr 0.003." in table


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tta")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "time_to_accuracy.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=child_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "time_to_accuracy.json").read_text())


def test_quick_run_records_curves_loads_and_ratio(quick_run):
    out, result = quick_run
    for key in ("argv", "commit", "machine", "load_averages"):
        assert result[key], key
    assert "--quick" in result["argv"] and str(REPO) not in (out / "time_to_accuracy.json").read_text()
    (entry,) = result["problems"]
    (admm,) = entry["admm"]
    assert admm["solver"] == "minibatch_am" and "mpiexec -n 2 admm-mpi train" in admm["command"]
    seconds = [p["seconds"] for p in admm["curve"]]
    assert len(seconds) >= 1 and seconds == sorted(seconds) and seconds[0] > 0
    (summary,) = entry["summary"]
    assert summary["admm_seconds"]["minibatch_am"] == _module().time_to_target(admm["curve"], 0.97)
    if not HAS_TORCH:
        assert entry["torch_skipped"] and summary["ratio_admm_over_torch"] is None
        return
    assert {r["optimiser"] for r in entry["torch"]} == {"sgd_momentum", "adam", "lbfgs"}
    assert entry["validation_rows"] == 150 and entry["torch_train_rows"] == 1350
    for record in entry["torch"]:
        assert record["curve"] and 0 <= record["load_average_1min"]
        assert record["cap_hit"] == (record["curve"][-1]["seconds"] >= record["cap_seconds"])
    best_torch = summary["best_torch_seconds"]
    assert best_torch == min((o["test_seconds"] for o in summary["torch"].values() if o["test_seconds"] is not None),
                             default=None)
    if summary["best_admm_seconds"] is not None and best_torch:
        assert summary["ratio_admm_over_torch"] == pytest.approx(summary["best_admm_seconds"] / best_torch)
    assert (out / "time_to_accuracy_digits.png").stat().st_size > 0
    assert "| 0.97 |" in (out / "time_to_accuracy.md").read_text()


def test_admm_from_adds_a_solver_beside_the_earlier_runs(quick_run, tmp_path):
    earlier, first = quick_run
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "time_to_accuracy.py"), "--quick", "--solvers", "taylor",
                           "--admm-from", str(earlier / "time_to_accuracy.json"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=child_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (entry,) = json.loads((tmp_path / "time_to_accuracy.json").read_text())["problems"]
    (kept,) = [r for r in entry["admm"] if r["solver"] == "minibatch_am"]
    assert kept == first["problems"][0]["admm"][0]  # the earlier run itself, not a re-run
    assert [r["solver"] for r in entry["admm"]] == ["minibatch_am", "taylor"]
    assert entry["admm_from"]["solvers"] == ["minibatch_am"] and "--quick" in entry["admm_from"]["command"]
    assert set(entry["summary"][0]["admm_seconds"]) == {"minibatch_am", "taylor"}
    assert "ADMM runs of minibatch_am (and their repeats) taken from" in (tmp_path / "time_to_accuracy.md").read_text()
