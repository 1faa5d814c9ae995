"""bench/time_to_accuracy.py: the learning-rate choice and its grid, the schedule, the medians and the
two tables, and a quick run on digits (both sides on the same rows, once per epoch, >= 3 rounds)."""

import importlib.util
import json
import math
import subprocess
import sys

import pytest

from tests.helpers import bench_module, REPO, child_env

HAS_TORCH = importlib.util.find_spec("torch") is not None


def _module():
    return bench_module("time_to_accuracy")


def _curve(points):
    return [{"epoch": e, "seconds": s, "validation_accuracy": v, "test_accuracy": t} for e, (s, v, t) in
            enumerate(points, 1)]


def test_time_to_target_is_the_first_point_at_or_above():
    tta = _module()
    curve = _curve([(1.0, 0.5, 0.6), (2.0, 0.97, 0.96), (3.0, 0.95, 0.97), (4.0, 0.99, 0.99)])
    assert tta.time_to_target(curve, 0.97) == 3.0
    assert tta.time_to_target(curve, 0.97, "validation_accuracy") == 2.0
    assert tta.time_to_target(curve, 0.995) is None
    assert tta.time_to_target([{"seconds": 1.0, "test_accuracy": None}], 0.1) is None


def test_lr_is_chosen_on_validation_epochs_not_test():
    tta = _module()
    fast_on_test = {"lr": 0.1, "curve": _curve([(1.0, 0.90, 0.98), (2.0, 0.96, 0.98), (3.0, 0.98, 0.98)])}
    fast_on_validation = {"lr": 0.01, "curve": _curve([(1.5, 0.90, 0.90), (3.0, 0.98, 0.90)])}
    chosen, how = tta.choose_lr([fast_on_test, fast_on_validation], 0.97)
    assert chosen is fast_on_validation and how.startswith("fewest epochs")
    tie = {"lr": 0.03, "curve": _curve([(0.1, 0.90, 0.5), (0.2, 0.99, 0.5)])}  # same epoch, higher accuracy
    assert tta.choose_lr([fast_on_validation, tie], 0.97)[0] is tie
    never = {"lr": 1.0, "curve": _curve([(1.0, 0.60, 0.99)])}
    closer = {"lr": 0.3, "curve": _curve([(1.0, 0.80, 0.50)])}
    chosen, how = tta.choose_lr([never, closer], 0.97)
    assert chosen is closer and how.startswith("best validation accuracy")


@pytest.mark.parametrize("peak, max_points, grid, interior", [
    (0.01, 9, [0.00316, 0.01, 0.0316, 0.1, 0.316, 1.0, 3.16], True),   # widened down four times
    (1.0, 9, [0.316, 1.0, 3.16], True),                                 # the start is the pick: no widening
    (100.0, 9, [0.316, 1.0, 3.16, 10.0, 31.6, 100.0, 316.0], True),     # widened up
    (0.01, 5, [0.0316, 0.1, 0.316, 1.0, 3.16], False),                  # stopped by max_points: not interior
])
def test_the_grid_is_widened_until_the_pick_is_interior(peak, max_points, grid, interior):
    common = bench_module("common")
    ran = []
    pick = lambda: [min(ran, key=lambda lr: abs(math.log(lr / peak)))]  # noqa: E731 - the closest to the peak
    got, inside = common.widen_until_interior(ran.append, pick, 1.0, max_points=max_points)
    assert got == grid and sorted(ran) == grid and inside is interior
    assert ran[:3] == [1.0, 3.16, 0.316]  # the start, then one step either side


def test_two_picks_widen_both_ends():
    common = bench_module("common")
    ran = []
    closest = lambda peak: min(ran, key=lambda lr: abs(math.log(lr / peak)))  # noqa: E731
    grid, interior = common.widen_until_interior(ran.append, lambda: [closest(0.1), closest(10.0)], 1.0)
    assert grid == [0.0316, 0.1, 0.316, 1.0, 3.16, 10.0, 31.6] and interior
    assert ran == [1.0, 3.16, 0.316, 0.1, 0.0316, 10.0, 31.6]  # the low end first, then the high end


def test_a_rate_is_pruned_only_once_it_cannot_be_a_pick():
    tta = _module()
    runs = [{"curve": _curve([(1, 0.5, None), (2, 0.95, None), (3, 0.99, None)])}]
    assert tta.prune_after(runs, (0.9, 0.98)) == 3  # 0.9 first reached at epoch 2, 0.98 at 3: the later
    assert tta.prune_after(runs, (0.9, 0.995)) is None  # a target nobody reached: no pruning
    runs.append({"curve": _curve([(1, 0.99, None)])})
    assert tta.prune_after(runs, (0.9, 0.98)) == 1 and tta.prune_after([], (0.9,)) is None


def test_warm_up_then_cosine_schedule():
    tta = _module()
    factor = lambda step: tta.learning_rate_factor("warmup_cosine", step, 10, 5)  # noqa: E731: 10 steps an epoch
    assert tta.WARMUP_EPOCHS == 1
    assert [factor(s) for s in (1, 5, 10)] == pytest.approx([0.1, 0.5, 1.0])  # linear over the first epoch
    assert factor(30) == pytest.approx(0.5)  # half way through the 40 decay steps
    assert factor(50) == pytest.approx(0.0, abs=1e-12) and factor(11) < 1.0
    assert all(tta.learning_rate_factor("constant", s, 10, 5) == 1.0 for s in (1, 10, 50))


def _timed(validation, test):
    return {"validation_seconds": {"0.97": validation}, "test_seconds": {"0.97": test}, "epochs": {"0.97": 2},
            "load_average_1min": 1.0, "curve": []}


def test_medians_and_both_tables():
    tta = _module()
    admm_small, admm_big = tta.method_name((64,)), tta.method_name((512,))
    adam_small, sgd_big = tta.method_name((64,), "adam", "constant", 1e-3), \
        tta.method_name((512,), "sgd_momentum", "warmup_cosine", 0.1)
    seconds = {admm_small: [(3, 3), (1, 1), (2, 9)], admm_big: [(1, 1)] * 3,
               adam_small: [(2, 4), (2, 4), (2, 5)], sgd_big: [(5, 5), (5, None), (5, None)]}
    rounds = [{m: _timed(*seconds[m][r]) for m in seconds} for r in range(3)]
    selection = [{"optimiser": "adam", "schedule": "constant", "widths": [8, 64, 10], "picks": {"0.97": {"lr": 1e-3, "validation_epochs": 2}}},
                 {"optimiser": "sgd_momentum", "schedule": "warmup_cosine", "widths": [8, 512, 10],
                  "picks": {"0.97": {"lr": 0.1, "validation_epochs": 3}}}]
    entry = {"targets": [0.97], "recipe_widths": [64], "rounds": rounds, "selection": selection}
    (summary,) = tta.summarise(entry)["summary"]
    assert summary["medians"][admm_small] == {"validation_seconds": 2, "test_seconds": 3, "epochs": 2}
    assert summary["medians"][sgd_big]["test_seconds"] is None  # two rounds of three never reached it
    same, best = summary["same_network"], summary["best_network"]
    assert (same["admm"], same["torch"]) == (admm_small, adam_small)
    assert same["ratio_of_medians"] == pytest.approx(3 / 4)
    assert (best["admm"], best["torch"]) == (admm_big, adam_small)  # chosen on validation seconds, not test
    assert best["ratio_of_medians"] == pytest.approx(1 / 4)
    table = tta.markdown({"problems": [{**entry, "problem": "digits", "command": "c", "commit": "x",
                                        "admm_command": "a", "torch_train_rows": 1, "validation_rows": 1,
                                        "validation_fraction": 0.1, "seed": 0, "test_rows": 1, "max_epochs": 2,
                                        "batch_size": 128, "torch_threads": 2, "candidate_widths": [[64], [512]],
                                        "load_averages_before": [1, 1, 1], "load_averages_after": [1, 1, 1],
                                        "selection": [{**s, "lr_grid": [1e-3], "interior": False}
                                                      for s in selection]}]})
    assert "| same network | ADMM minibatch_am 64 | 3.00 s | PyTorch adam+constant lr 0.001 64 | 4.00 s | **0.75×** |" \
        in table
    assert "a 1-minute load above 0.5 before a problem" in table and "| NO |" in table


def test_a_round_that_never_reaches_the_target_counts_as_the_slowest():
    tta = _module()
    assert tta.median_or_none([5, 1, None]) == 5
    assert tta.median_or_none([None, 1, None]) is None
    assert tta.median_or_none([2, None]) is None  # the middle of (2, never) is never
    assert tta.median_or_none([3, 1, 2]) == 2 and tta.median_or_none([]) is None


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    if not HAS_TORCH:
        pytest.skip("PyTorch is not installed")
    out = tmp_path_factory.mktemp("tta")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "time_to_accuracy.py"), "--quick", "--out", str(out),
                           "--torch-threads", "1"],
                          capture_output=True, text=True, timeout=600, env=child_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "time_to_accuracy.json").read_text())


@pytest.mark.timeout(700)
def test_quick_run_same_rows_same_cadence_medians_and_grids(quick_run):
    out, result = quick_run
    for key in ("argv", "commit", "machine"):
        assert result[key], key
    assert "--quick" in result["argv"] and str(REPO) not in (out / "time_to_accuracy.json").read_text()
    (entry,) = result["problems"]
    assert entry["validation_rows"] == 150 and entry["torch_train_rows"] == 1350  # admm-mpi's own hold-out
    assert entry["evaluations_per_epoch"] == 1 and len(entry["rounds"]) == 3
    assert len(entry["load_averages_before"]) == len(entry["load_averages_after"]) == 3
    assert "--no-early-stopping --eval-test every" in entry["admm_command"]
    for runs in entry["rounds"]:
        assert {m.split()[0] for m in runs} == {"ADMM", "PyTorch"}
        for method, timed in runs.items():
            epochs = [p["epoch"] for p in timed["curve"]]
            assert epochs == list(range(1, len(epochs) + 1)), method  # one point per epoch, both sides
            assert len(epochs) <= entry["max_epochs"] == 4
    assert {(s["optimiser"], s["schedule"]) for s in entry["selection"]} == {
        (o, s) for o in ("sgd_momentum", "adam") for s in ("constant", "warmup_cosine")}
    for sel in entry["selection"]:
        assert sel["lr_grid"] == sorted(r["lr"] for r in sel["runs"]) and len(sel["lr_grid"]) >= 3
        assert all(p["test_accuracy"] is None for r in sel["runs"] for p in r["curve"])  # selection never scores test
        pick = sel["picks"]["0.9"]["lr"]
        assert sel["interior"] == (sel["lr_grid"][0] < pick < sel["lr_grid"][-1])
        assert sel["interior"] or len(sel["lr_grid"]) == 4  # widening stops only at --max-lrs (quick: 4)
    (summary,) = entry["summary"]
    for table in ("same_network", "best_network"):
        t = summary[table]
        if t["admm"] and t["torch"] and t["torch_median_test_seconds"]:
            assert t["ratio_of_medians"] == pytest.approx(t["admm_median_test_seconds"] / t["torch_median_test_seconds"])
    assert (out / "time_to_accuracy_digits.png").stat().st_size > 0
    assert "### target 0.9 (test accuracy), medians of 3 rounds" in (out / "time_to_accuracy.md").read_text()


@pytest.mark.timeout(700)
def test_a_run_stopped_part_way_continues_from_its_progress_file_and_other_settings_are_refused(tmp_path):
    """--progress: the grids and rounds a stopped invocation finished are kept as they were; the rest is
    run; the result lists both invocations. A progress file made under other settings is refused."""
    if not HAS_TORCH:
        pytest.skip("PyTorch is not installed")

    def run(*extra):
        return subprocess.run([sys.executable, str(REPO / "bench" / "time_to_accuracy.py"), "--quick",
                               "--out", str(tmp_path / "out"), "--torch-threads", "1",
                               "--progress", str(tmp_path / "progress"), *extra],
                              capture_output=True, text=True, timeout=600, env=child_env(), cwd=REPO)

    proc = run()
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = tmp_path / "progress" / "time_to_accuracy-digits.json"
    whole = json.loads(path.read_text())
    assert len(whole["selection"]) == 4 and len(whole["rounds"]) == 3
    # as if stopped after two grids and one round
    stopped = {**whole, "selection": whole["selection"][:2], "rounds": whole["rounds"][:1]}
    path.write_text(json.dumps(stopped))
    proc = run()
    assert proc.returncode == 0, proc.stderr[-3000:]
    (entry,) = json.loads((tmp_path / "out" / "time_to_accuracy.json").read_text())["problems"]
    assert entry["selection"][:2] == whole["selection"][:2] and entry["rounds"][0] == whole["rounds"][0]
    assert len(entry["selection"]) == 4 and len(entry["rounds"]) == 3
    assert [(i["selection_done"], i["rounds_done"]) for i in entry["invocations"]] == [(0, 0), (2, 1)]
    assert all(i["commit"] and "--progress" in i["command"] for i in entry["invocations"])

    assert all(i["machine"]["cpu"] for i in entry["invocations"])

    # rounds timed on another CPU are set aside, not mixed into the medians; the grids carry over
    moved = json.loads(path.read_text())
    moved.update(rounds_cpu="another CPU", rounds=moved["rounds"][:1])
    path.write_text(json.dumps(moved))
    proc = run()
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads(path.read_text())
    assert state["set_aside_rounds"] == [{"cpu": "another CPU", "rounds": whole["rounds"][:1]}]
    assert len(state["rounds"]) == 3 and state["selection"] == moved["selection"]
    assert (state["invocations"][-1]["selection_done"], state["invocations"][-1]["rounds_done"]) == (4, 0)

    other = json.loads(path.read_text())
    other["settings"]["max_epochs"] += 1
    path.write_text(json.dumps(other))
    proc = run()
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "was made under other settings (max_epochs): move it away to start afresh")
    assert "Traceback" not in proc.stderr
