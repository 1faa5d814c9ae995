"""bench/large_batch.py: the quick mode end to end (digits, two batches, 4 epochs), and its pieces."""

import importlib.util
import json
import math
import subprocess
import sys

import pytest

from tests.helpers import REPO, bench_module, child_env

HAS_TORCH = importlib.util.find_spec("torch") is not None


def _module():
    return bench_module("large_batch")


def test_epochs_to_target_kept_epoch_and_the_pick():
    lb = _module()
    curve = [{"epoch": e, "validation_accuracy": v} for e, v in ((1, 0.5), (2, 0.91), (3, 0.95), (4, 0.93))]
    assert lb.epochs_to_target(curve, 0.9) == 2 and lb.kept_epoch(curve, 0.9) == 2
    assert lb.epochs_to_target(curve, 0.99) is None and lb.kept_epoch(curve, 0.99) == 3  # the best validation epoch

    def run(*accuracies):
        return {"validation_curve": [{"epoch": e, "validation_accuracy": v} for e, v in enumerate(accuracies, 1)]}

    fast, slow, never = run(0.5, 0.91, 0.95), run(0.5, 0.6, 0.92), run(0.89, 0.89, 0.89)
    assert lb.better(fast, slow, 0.9) and not lb.better(slow, fast, 0.9)
    assert lb.better(slow, never, 0.9) and lb.better(never, None, 0.9)
    assert lb.better(run(0.1, 0.92), fast, 0.9) and not lb.better(fast, run(0.1, 0.92), 0.9)  # same epoch: the higher there
    assert lb.better(never, run(0.88), 0.9) and not lb.better(run(0.88), never, 0.9)  # neither: the best accuracy


def test_a_diverged_or_collapsed_rate_is_never_the_pick_over_a_stable_one_and_the_grid_widens_down():
    lb = _module()

    def run(base_lr, *accuracies, stopped="early stopping"):
        return {"base_lr": base_lr, "stopped": stopped,
                "validation_curve": [{"epoch": e, "validation_accuracy": v} for e, v in enumerate(accuracies, 1)]}

    collapsed = run(0.1, 0.66, 0.11, 0.10, 0.10)  # a good first epoch in the warm-up, then chance
    slower_collapse = run(0.0316, 0.65, 0.30, 0.10)
    stable = run(0.01, 0.40, 0.55, 0.60)
    diverged = run(0.316, 0.7, stopped="diverged (non-finite loss)")
    assert lb.unstable(collapsed) and lb.unstable(diverged) and not lb.unstable(stable)
    assert lb.better(stable, collapsed, 0.98) and not lb.better(collapsed, stable, 0.98)
    assert lb.better(slower_collapse, collapsed, 0.98) and lb.better(collapsed, diverged, 0.98)  # the smaller rate

    picked = []  # the grid's own widening, with these runs' outcomes by rate
    outcomes = {0.1: collapsed, 0.316: diverged, 0.0316: slower_collapse, 0.01: stable,
                0.00316: run(0.00316, 0.3, 0.4, 0.5)}
    pick = None

    def train(base):
        nonlocal pick
        picked.append(base)
        if lb.better(outcomes[base], pick, 0.98):
            pick = outcomes[base]

    from common import widen_until_interior

    grid, interior = widen_until_interior(train, lambda: [pick["base_lr"]], 0.1, lb.LR_FACTOR, 6)
    assert picked == [0.1, 0.316, 0.0316, 0.01, 0.00316] and pick["base_lr"] == 0.01 and interior


def test_ring_allreduce_bytes_and_the_cost_model():
    lb = _module()
    widths = [784, 8000, 1000, 10]
    params = 785 * 8000 + 8001 * 1000 + 1001 * 10
    assert lb.n_params(widths) == params
    cell = lb.sgd_bytes_per_epoch(widths, 50000, 8192, 64)
    assert cell["steps_per_epoch"] == 7 and cell["per_rank"] == pytest.approx(2 * 63 / 64 * 4 * params * 7)
    assert cell["all_ranks"] == pytest.approx(64 * cell["per_rank"])
    assert lb.sgd_bytes_per_epoch(widths, 50000, 2048, 1)["per_rank"] == 0  # one rank sends nothing
    seconds = lb.modelled_seconds(widths, 50000, 8192)  # bench/cost_model.py's own functions
    cost_model = bench_module("cost_model")
    params_, coll, _ = lb.cost_model_inputs()
    assert seconds["ranks"] == 64
    assert seconds["sgd"] == cost_model.sgd_epoch(params_, coll, tuple(widths), 50000, 64, global_batch=8192) > 0
    assert seconds["admm_spread_solve"] == cost_model.admm_epoch(params_, coll, tuple(widths), 50000, 8192, 64,
                                                                 spread=True)[0] > 0


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("large_batch")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "large_batch.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=child_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "large_batch.json").read_text())


@pytest.mark.timeout(320)
def test_quick_run_records_every_cell(quick_run):
    out, result = quick_run
    for key in ("argv", "commit", "machine", "cost_model", "validation", "sgd_bytes_model"):
        assert result[key], key
    assert "--quick" in result["argv"] and str(REPO) not in (out / "large_batch.json").read_text()
    entry = result["datasets"]["digits"]
    assert entry["target"] == 0.9 and set(entry["batches"]) == {"128", "512"}
    for batch, methods in entry["batches"].items():
        assert set(methods) == ({"admm", "sgd_momentum", "adam"} if HAS_TORCH else {"admm"})
        admm = methods["admm"]
        assert admm["batch"] == int(batch) and admm["ranks"] == 2 and admm["n_validation"] == 250
        assert "--batch-size " + batch in admm["command"] and "mpiexec -n 2 admm-mpi train" in admm["command"]
        assert admm["bytes_per_epoch"]["all_ranks"] > 0
        curve = admm["validation_curve"]
        assert [p["epoch"] for p in curve] == list(range(1, len(curve) + 1)) and len(curve) <= 4
        assert admm["epochs_to_target"] == _module().epochs_to_target(curve, 0.9)
        assert admm["test_accuracy_at_kept"] > 0.3  # ten classes; 4 epochs of a 32-unit network
        for method, cell in methods.items():
            modelled = cell["modelled"]
            assert modelled["ranks"] == int(batch) // 128 and modelled["seconds_per_epoch"] > 0
            if cell["epochs_to_target"] is None:
                assert modelled["seconds_to_target"] is None
            else:
                assert modelled["seconds_to_target"] == pytest.approx(cell["epochs_to_target"]
                                                                      * modelled["seconds_per_epoch"])
            if method == "admm":
                continue
            assert cell["lr_grid"] == sorted(r["base_lr"] for r in cell["runs"]) and len(cell["lr_grid"]) >= 3
            assert cell["lr_pick"] in cell["lr_grid"]
            assert cell["lr_pick_scaled"] == pytest.approx(cell["lr_pick"] * int(batch) / 256)
            assert cell["pick_interior"] == (cell["lr_grid"][0] < cell["lr_pick"] < cell["lr_grid"][-1])
            assert cell["pick_interior"] or len(cell["lr_grid"]) == 4  # widening stops at --max-lrs (4 here)
            steps = math.ceil(1250 / int(batch))
            assert cell["bytes_per_epoch"]["modelled_2_ranks"]["steps_per_epoch"] == steps
            assert 0 <= cell["test_accuracy_at_kept"] <= 1 and cell["n_test"] == 297
    assert set(r["batch"] for r in entry["crossover"]["rows"]) == {128, 512}
    table = (out / "large_batch.md").read_text()
    assert "| 128 (1) | admm |" in table and "Modelled time to accuracy on the cluster" in table


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed")
def test_quick_run_sgd_learns_at_the_small_batch(quick_run):
    _, result = quick_run
    sgd = result["datasets"]["digits"]["batches"]["128"]["sgd_momentum"]
    assert sgd["test_accuracy_at_kept"] > 0.5 and sgd["validation_accuracy_at_kept"] > 0.5  # chance: 0.1
    for run in sgd["runs"]:
        assert run["lr"] == pytest.approx(run["base_lr"] * 128 / 256)
        if run["epochs_to_target"] is None and sgd["epochs_to_target"] is not None and run["stopped"].startswith("pruned"):
            assert run["epochs_run"] == sgd["epochs_to_target"]  # stopped once it could no longer be the pick


def test_admm_mpi_bench_runs_it():
    proc = subprocess.run([sys.executable, "-m", "admm_mpi", "bench", "large_batch", "--help"], capture_output=True,
                          text=True, timeout=120, env=child_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "--quick" in proc.stdout and "--cap" in proc.stdout


@pytest.mark.timeout(600)
def test_a_pytorch_grid_stopped_part_way_continues_and_its_pick_read_back_is_replayed_for_test(tmp_path):
    """--progress: the rates a stopped grid finished are read back, not trained; a pick read back is
    trained again from its seed to be scored on test, with the same curve and the same figures as a
    grid run at one go. A progress file made under other settings is refused in one line."""
    if not HAS_TORCH:
        pytest.skip("PyTorch is not installed")

    def run(out, *extra):
        proc = subprocess.run([sys.executable, str(REPO / "bench" / "large_batch.py"), "--quick", "--out", str(out),
                               "--methods", "sgd_momentum", *extra],  # quick: batches 128 and 512
                              capture_output=True, text=True, timeout=500, env=child_env(), cwd=REPO)
        return proc

    proc = run(tmp_path / "whole")
    assert proc.returncode == 0, proc.stderr[-3000:]
    whole = json.loads((tmp_path / "whole" / "cells" / "digits-sgd_momentum-128.json").read_text())
    progress = tmp_path / "progress"
    proc = run(tmp_path / "first", "--progress", str(progress))
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = progress / "large_batch-digits-sgd_momentum-128.json"
    state = json.loads(path.read_text())
    assert sorted(r["record"]["base_lr"] for r in state["runs"]) == whole["lr_grid"]
    # as if stopped after the first two rates
    state["runs"] = state["runs"][:2]
    path.write_text(json.dumps(state))
    proc = run(tmp_path / "second", "--progress", str(progress))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sum(line.startswith("digits sgd_momentum batch 128 ") and line.endswith(", read back)")
               for line in proc.stdout.splitlines()) == 2
    cell = json.loads((tmp_path / "second" / "cells" / "digits-sgd_momentum-128.json").read_text())
    for key in ("lr_grid", "lr_pick", "epochs_to_target", "kept_epoch", "validation_curve", "test_accuracy_at_kept"):
        assert cell[key] == whole[key], key
    assert cell["replayed"] is None or cell["replayed"] == {"base_lr": cell["lr_pick"], "same_curve": True}
    # at batch 512 every rate was read back: its pick was trained again, to the same curve and test figure
    whole_512 = json.loads((tmp_path / "whole" / "cells" / "digits-sgd_momentum-512.json").read_text())
    cell_512 = json.loads((tmp_path / "second" / "cells" / "digits-sgd_momentum-512.json").read_text())
    assert cell_512["replayed"] == {"base_lr": whole_512["lr_pick"], "same_curve": True}
    for key in ("lr_grid", "lr_pick", "validation_curve", "test_accuracy_at_kept"):
        assert cell_512[key] == whole_512[key], key
    assert [i["rates_done"] for i in json.loads(path.read_text())["invocations"]] == [0, 2]

    other = json.loads(path.read_text())
    other["settings"]["cap"] += 1
    path.write_text(json.dumps(other))
    proc = run(tmp_path / "third", "--progress", str(progress))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("was made under other settings (cap): move it away to start afresh")


def test_cells_restored_from_the_results_assemble_to_the_same_results(quick_run, tmp_path):
    out, result = quick_run
    cells = tmp_path / "cells"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "large_batch.py"), "--quick", "--assemble",
                           "--restore-cells", str(out / "large_batch.json"), "--cells", str(cells),
                           "--out", str(tmp_path)], capture_output=True, text=True, env=child_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    restored = sorted(p.name for p in cells.glob("*.json"))
    assert restored == sorted(p.name for p in (out / "cells").glob("*.json") if "all" not in p.name)
    again = json.loads((tmp_path / "large_batch.json").read_text())
    assert again["datasets"] == result["datasets"]
