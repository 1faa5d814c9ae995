"""The PyTorch baselines of bench/ run end to end on the bundled digits (CI installs torch's CPU wheel).

Each test drives one script's PyTorch code path on a tiny problem (a narrow MLP, a few epochs,
one thread) and checks what its results carry: accuracy well above chance (digits: 10 classes),
the learning rates tried and picked, and the fields the result files record.
"""

import json

import numpy as np
import pytest

from tests.helpers import REPO, bench_module

torch = pytest.importorskip("torch", reason="PyTorch is not installed (CI installs torch==2.13.0, the CPU wheel)")

CHANCE = 0.1  # ten classes


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _digits_splits(tta):
    splits = tta.split_validation(tta.load_samples("digits"), 0.1, 0)  # admm-mpi's default hold-out
    return {k: (torch.from_numpy(np.ascontiguousarray(X)), torch.from_numpy(np.asarray(y, np.int64)))
            for k, (X, y) in splits.items()}


@pytest.mark.timeout(120)
def test_time_to_accuracy_trains_sgd_adam_and_lbfgs_and_picks_on_validation():
    tta = bench_module("time_to_accuracy")
    splits = _digits_splits(tta)
    assert len(splits["validation"][1]) == 150 and len(splits["train"][1]) == 1350
    widths = [64, 32, 10]
    records = [tta.train_torch(widths, optimiser, lr, splits, stop_at=2.0, cap_seconds=float("inf"), max_epochs=3,
                               threads=1)
               for optimiser, lr in (("sgd_momentum", 0.1), ("sgd_momentum", 1e-5), ("adam", 3e-3), ("lbfgs", 1.0))]
    records.append(tta.train_torch(widths, "adam", 3e-3, splits, stop_at=2.0, cap_seconds=float("inf"), max_epochs=6,
                                   threads=1, schedule="warmup_cosine"))  # decays to 0 at epoch 6
    for record in records:
        curve = record["curve"]
        assert record["threads"] == 1 and not record["cap_hit"]
        assert [p["seconds"] for p in curve] == sorted(p["seconds"] for p in curve)
        assert all(0.0 <= p["validation_accuracy"] <= 1.0 and 0.0 <= p["test_accuracy"] <= 1.0 for p in curve)
    sgd, sgd_tiny, adam, lbfgs, adam_cosine = records
    assert adam_cosine["schedule"] == "warmup_cosine" and adam_cosine["curve"] != adam["curve"]
    assert len(sgd["curve"]) == 3 * tta.EVALS_PER_EPOCH and sgd["curve"][-1]["epoch"] == pytest.approx(3.0)
    for record in (sgd, adam, lbfgs, adam_cosine):
        assert record["curve"][-1]["validation_accuracy"] > 0.8 > 5 * CHANCE, record["optimiser"]
        assert record["curve"][-1]["test_accuracy"] > 0.8, record["optimiser"]
    assert sgd_tiny["curve"][-1]["validation_accuracy"] < sgd["curve"][-1]["validation_accuracy"]
    chosen, how = tta.choose_lr([sgd_tiny, sgd], 0.8)  # the lr that reaches 0.8 first on validation
    assert chosen is sgd and "validation" in how


@pytest.mark.timeout(120)
def test_accuracy_adam_reference_on_digits():
    accuracy = bench_module("accuracy")
    entry = accuracy.run_adam("digits", "digits", [32], epochs=8)
    assert entry["solver"] == f"PyTorch {torch.__version__} Adam" and entry["widths"] == [64, 32, 10]
    assert entry["iterations"] == 8 and len(entry["curve"]) == 8  # a point per epoch
    assert entry["curve"][-1]["iteration"] == pytest.approx(8.0)
    assert entry["test_accuracy"] == entry["curve"][-1]["test_accuracy"] > 0.8


@pytest.mark.timeout(120)
def test_suite_adam_picks_its_lr_on_validation(tmp_path):
    suite = bench_module("suite")
    arrays = suite.load_arrays(suite.prepare("wine_sk", 0, tmp_path))
    record = suite.run_adam(arrays, (16,), (1e-6, 1e-2), max_epochs=15)
    assert record["lr"] == 1e-2  # 1e-6 barely moves the network in 15 epochs
    assert record["validation_accuracy"] > 0.8 and record["test_accuracy"] > 0.8  # three classes
    assert 1 <= record["epochs"] <= 15 and record["grid_seconds"] >= record["train_seconds"] > 0
    assert "lr on validation from [1e-06, 0.01]" in record["settings"]


@pytest.mark.timeout(180)
def test_select_recipe_adam_records_every_lr_and_an_interior_pick(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text('solver = "minibatch_am"\nhidden = [32]\nseed = 0\n')
    out = tmp_path / "selection.json"
    bench_module("select_recipe").main(
        ["--config", str(config), "--data", str(REPO / "data" / "digits.h5"), "--adam-lr", "1e-6", "--adam-lr",
         "3e-3", "--adam-lr", "10", "--iters", "4", "--patience", "2", "--name", "tiny", "--out", str(out),
         "--torch-threads", "1"])
    result = json.loads(out.read_text())
    adam = result["torch"]
    runs = {r["lr"]: r for r in adam["candidates"]}
    assert sorted(runs) == [1e-6, 3e-3, 10.0]  # the grid as tried
    assert adam["pick"] == "adam-lr0.003"  # interior: both neighbours are worse on validation
    assert runs[3e-3]["validation_accuracy"] > max(runs[1e-6]["validation_accuracy"], runs[10.0]["validation_accuracy"])
    assert adam["pick_validation_accuracy"] == runs[3e-3]["validation_accuracy"] > 0.8
    assert adam["pick_test_accuracy"] > 0.8 and adam["n_test"] == 297 and adam["threads"] == 1
    assert adam["torch"] == torch.__version__ and all(r["hidden"] == [32] for r in adam["candidates"])
    for key in ("argv", "commit", "machine"):
        assert result[key], key
    assert str(tmp_path) not in out.read_text()


@pytest.mark.timeout(180)
def test_large_batch_tunes_sgd_and_adam_with_warm_up_and_records_the_grid(tmp_path):
    lb = bench_module("large_batch")
    cell = lb.tune_torch("digits", "digits", "sgd_momentum", 128, cap=6, target=0.9, hidden=[32], max_lrs=5)
    assert cell["lr_grid"] == sorted(r["base_lr"] for r in cell["runs"]) and len(cell["lr_grid"]) >= 3
    assert cell["lr_pick"] in cell["lr_grid"] and cell["lr_pick_scaled"] == pytest.approx(cell["lr_pick"] * 128 / 256)
    if cell["pick_interior"]:
        assert cell["lr_grid"][0] < cell["lr_pick"] < cell["lr_grid"][-1]
    else:  # widening stopped at max_lrs only
        assert len(cell["lr_grid"]) == 5
    assert cell["epochs_to_target"] is not None and cell["epochs_to_target"] <= 6
    assert cell["test_accuracy_at_kept"] > 0.8 and cell["validation_accuracy_at_kept"] >= 0.9
    assert cell["n_train"] == 1250 and cell["n_validation"] == 250 and cell["n_test"] == 297
    steps = cell["bytes_per_epoch"]["modelled_2_ranks"]["steps_per_epoch"]
    assert steps == 10 and cell["bytes_per_epoch"]["modelled_2_ranks"]["per_rank"] == 4 * (64 * 32 + 32 + 33 * 10) * steps
