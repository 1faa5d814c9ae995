"""bench/reproduce.py: a selected recipe rerun from its config alone, compared with its selection."""

import json

import pytest

from tests.helpers import REPO, bench_module

SELECTION_SETTINGS = 'validation_fraction = 0.16667\niters = 2\nearly_stopping = true\npatience = 1\nkeep = "best"\n'


@pytest.mark.timeout(300)
def test_a_config_holding_the_pick_reproduces_its_selection_run(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text('solver = "minibatch_am"\nhidden = [16]\nseed = 0\n' + SELECTION_SETTINGS)
    selection = tmp_path / "selection_tiny.json"
    data = str(REPO / "data" / "digits.h5")
    bench_module("select_recipe").main(
        ["--config", str(config), "--data", data, "--candidate", "plain=", "--iters", "2", "--patience", "1",
         "--runs", str(tmp_path / "runs"), "--name", "tiny", "--out", str(selection), "--timeout", "240"])
    out = tmp_path / "reproduce.json"
    reproduce = bench_module("reproduce")
    assert reproduce.main(["--selection", str(selection), "--data", data, "--runs", str(tmp_path / "runs"),
                           "--out", str(out), "--timeout", "240"]) == 0
    run = json.loads(out.read_text())["runs"]["selection_tiny"]
    recorded = json.loads(selection.read_text())
    assert run["reproduced"] and run["settings_changed"] == {} and not run["read_back"]
    assert run["rerun"]["validation_accuracy"] == recorded["pick_validation_accuracy"]  # same seed, same ranks
    assert run["rerun"]["test_accuracy"] == recorded["pick_test_accuracy"]
    assert "--config" in run["train_command"] and str(tmp_path) not in out.read_text()
    table = out.with_suffix(".md")
    row = f"| `selection_tiny` | {run['recorded']['validation_accuracy']:.4f} / {run['rerun']['validation_accuracy']:.4f} |"
    assert row in table.read_text() and "| yes (0.002) |" in table.read_text()
    table.unlink()
    assert reproduce.main(["--table", "--out", str(out)]) == 0 and row in table.read_text()  # from the JSON alone
    # read back the finished run instead of training again (its settings and accuracies are what count)
    metrics = tmp_path / "runs" / "reproduce-selection_tiny" / "metrics.jsonl"
    before = metrics.stat().st_mtime_ns
    assert reproduce.main(["--selection", str(selection), "--data", data, "--run", str(metrics.parent),
                           "--run-commit", "abc123", "--out", str(out)]) == 0
    again = json.loads(out.read_text())["runs"]["selection_tiny"]
    assert again["read_back"] and again["run_commit"] == "abc123" and metrics.stat().st_mtime_ns == before
    assert again["rerun"] == run["rerun"]


def _selection(validation, test):
    settings = {"solver": "taylor", "ridge": 1e-4, "layout": "layer", "out": "a", "data": "x"}
    return {"pick": "p", "pick_validation_accuracy": validation, "pick_test_accuracy": test,
            "candidates": [{"tag": "p", "settings": settings, "kept_epoch": 3}]}


def _summary(validation, test, **changed):
    config = {"solver": "taylor", "ridge": 1e-4, "layout": "layer", "out": "b", "data": "y", "eval_test": "end",
              **changed}
    return {"config": config, "validation_accuracy": validation, "test_accuracy": test, "kept_iteration": 3,
            "iterations": 5, "ranks": 2}


def test_compare_holds_both_accuracies_to_the_tolerance_and_names_changed_settings():
    compare = bench_module("reproduce").compare
    same = compare(_selection(0.95, 0.96), _summary(0.9515, 0.9585), 0.002)
    assert same["reproduced"] and same["settings_changed"] == {}
    assert same["delta_test"] == pytest.approx(-0.0015)
    assert not compare(_selection(0.95, 0.96), _summary(0.95, 0.9625), 0.002)["reproduced"]  # test off by 0.0025
    assert not compare(_selection(0.95, 0.96), _summary(0.947, 0.96), 0.002)["reproduced"]  # validation off
    moved = compare(_selection(0.95, 0.96), _summary(0.95, 0.96, layout="data"), 0.002)
    assert moved["settings_changed"] == {"layout": {"recorded": "layer", "rerun": "data"}}
