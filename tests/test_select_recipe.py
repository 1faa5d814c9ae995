"""bench/select_recipe.py: candidates trained without reading the test split, the pick by validation,
its test accuracy read once from its saved model."""

import json

import pytest

from tests.helpers import REPO, bench_module


@pytest.mark.timeout(300)
def test_the_pick_is_the_best_validation_run_and_only_it_is_scored_on_test(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text('solver = "minibatch_am"\nhidden = [16]\nseed = 0\n')
    out = tmp_path / "selection.json"
    argv = ["--config", str(config), "--data", str(REPO / "data" / "digits.h5"), "--candidate", "weak=--ridge 1",
            "--candidate", "plain=--ridge 1e-4", "--iters", "2", "--patience", "1", "--runs", str(tmp_path / "runs"),
            "--name", "tiny", "--out", str(out), "--timeout", "240"]
    module = bench_module("select_recipe")
    module.main(argv)
    result = json.loads(out.read_text())
    records = {r["tag"]: r for r in result["candidates"]}
    assert result["pick"] == max(records, key=lambda tag: records[tag]["validation_accuracy"])
    assert result["pick_validation_accuracy"] == records[result["pick"]]["validation_accuracy"]
    assert 0.0 < result["pick_test_accuracy"] <= 1.0 and result["n_test"] == 297
    for tag, record in records.items():  # no candidate's training read the test split
        rows = [json.loads(line) for line in (tmp_path / "runs" / f"tiny-{tag}" / "metrics.jsonl").read_text().split("\n")
                if line]
        assert rows and all(row["test_accuracy"] is None for row in rows)
        assert record["n_validation"] == 250 and record["settings"]["eval_test"] == "never"
        assert "data" not in record["settings"] and "out" not in record["settings"]
    assert "commit" in result and "machine" in result and str(tmp_path) not in out.read_text()
    metrics = tmp_path / "runs" / "tiny-plain" / "metrics.jsonl"
    before = metrics.stat().st_mtime_ns
    module.main(argv + ["--reuse"])  # read back, not retrained
    assert metrics.stat().st_mtime_ns == before
    assert json.loads(out.read_text())["pick"] == result["pick"]


@pytest.mark.timeout(300)
def test_adams_learning_rate_is_picked_on_the_validation_rows_and_only_the_pick_meets_test(tmp_path):
    pytest.importorskip("torch", reason="PyTorch (the [bench] extra) is not installed")
    config = tmp_path / "tiny.toml"
    config.write_text('solver = "minibatch_am"\nhidden = [16]\nseed = 0\n')
    out = tmp_path / "selection.json"
    module = bench_module("select_recipe")
    module.main(["--config", str(config), "--data", str(REPO / "data" / "digits.h5"), "--adam-lr", "1e-5",
                 "--adam-lr", "1e-2", "--iters", "3", "--patience", "1", "--name", "tiny", "--out", str(out),
                 "--torch-threads", "1"])
    result = json.loads(out.read_text())
    adam = result["torch"]
    runs = {r["lr"]: r for r in adam["candidates"]}
    assert adam["pick"] == "adam-lr0.01" and runs[1e-2]["validation_accuracy"] > runs[1e-5]["validation_accuracy"]
    assert adam["pick_validation_accuracy"] == max(point[1] for point in runs[1e-2]["curve"])
    assert adam["n_validation"] == 250 and adam["n_train"] + 250 == 1500 and adam["n_test"] == 297
    assert 0.5 < adam["pick_test_accuracy"] <= 1.0
    assert [r["tag"] for r in adam["test_reads"]] == ["adam-lr0.01"]  # one read: the pick's


@pytest.mark.timeout(300)
def test_accuracy_json_records_the_validation_and_test_accuracy_of_each_selection(tmp_path, monkeypatch):
    import sys

    results = tmp_path / "results"
    results.mkdir()
    config = tmp_path / "digits-minibatch_am.toml"
    config.write_text('solver = "minibatch_am"\nhidden = [16]\nseed = 0\n')
    bench_module("select_recipe").main(
        ["--config", str(config), "--data", str(REPO / "data" / "digits.h5"), "--candidate", "weak=--ridge 1",
         "--candidate", "plain=", "--iters", "2", "--patience", "1", "--runs", str(tmp_path / "runs"),
         "--out", str(results / "selection_digits-minibatch_am.json"), "--timeout", "240"])
    (results / "accuracy.json").write_text(json.dumps({"runs": [{"name": "digits-taylor", "test_accuracy": 0.9}],
                                                       "ablation": []}))
    accuracy = bench_module("accuracy")
    monkeypatch.setattr(accuracy, "RESULTS", results)
    monkeypatch.setattr(sys.modules["common"], "RESULTS", results)
    accuracy.main(["--fold-selections"])
    folded = json.loads((results / "accuracy.json").read_text())
    selection = json.loads((results / "selection_digits-minibatch_am.json").read_text())
    [entry] = folded["selected"]
    assert entry["name"] == "digits-minibatch_am" and entry["pick"] == selection["pick"]
    assert entry["validation_accuracy"] == selection["pick_validation_accuracy"]
    assert entry["test_accuracy"] == selection["pick_test_accuracy"]
    assert {c["tag"] for c in entry["candidates"]} == {"weak", "plain"} and "validation" in entry["selected_on"]
    assert folded["runs"][0]["selected_on"].startswith("test")  # the earlier runs are labelled
    assert "| digits | `minibatch_am`" in (results / "accuracy_selected.md").read_text()


@pytest.mark.timeout(300)
def test_reuse_from_adds_candidates_beside_an_earlier_selection_without_reading_test_again(tmp_path, monkeypatch):
    config = tmp_path / "tiny.toml"
    config.write_text('solver = "minibatch_am"\nhidden = [16]\nseed = 0\n')
    module = bench_module("select_recipe")
    common = ["--config", str(config), "--data", str(REPO / "data" / "digits.h5"), "--iters", "2", "--patience", "1",
              "--runs", str(tmp_path / "runs"), "--name", "tiny", "--timeout", "240"]
    first, second, third = (tmp_path / f"selection{i}.json" for i in (1, 2, 3))
    module.main(common + ["--candidate", "weak=--ridge 30", "--out", str(first)])
    module.main(common + ["--reuse-from", str(first), "--candidate", "plain=--ridge 1e-4", "--out", str(second)])
    result = json.loads(second.read_text())
    records = {r["tag"]: r for r in result["candidates"]}
    assert records["weak"]["reused_from"]["file"] == first.name and "reused_from" not in records["plain"]
    assert records["weak"]["validation_accuracy"] == json.loads(first.read_text())["pick_validation_accuracy"]
    assert result["pick"] == "plain" and records["plain"]["validation_accuracy"] > records["weak"]["validation_accuracy"]

    def no_test_read(*_):
        raise AssertionError("the test split was read again")

    monkeypatch.setattr(module, "test_accuracy", no_test_read)
    module.main(common + ["--reuse-from", str(second), "--candidate", "weaker=--ridge 100", "--out", str(third)])
    again = json.loads(third.read_text())
    assert again["pick"] == "plain" and again["pick_test_accuracy"] == result["pick_test_accuracy"]
    assert [r["tag"] for r in again["candidates"]] == ["weak", "plain", "weaker"]
    sources = {r["tag"]: r["reused_from"]["file"] for r in again["candidates"] if "reused_from" in r}
    assert sources == {"weak": first.name, "plain": second.name}  # a record keeps where it first ran
    with pytest.raises(SystemExit, match="already holds candidate"):
        module.main(common + ["--reuse-from", str(second), "--candidate", "plain=--ridge 1"])
    second.write_text(json.dumps({**result, "pick": "weak"}))  # an earlier best that was never scored on test
    with pytest.raises(SystemExit, match="not scored on test"):
        module.main(common + ["--reuse-from", str(second), "--candidate", "weakest=--ridge 300"])


@pytest.mark.timeout(300)
def test_pytorch_candidates_take_their_own_optimiser_schedule_widths_and_epochs_and_earlier_records_join(tmp_path):
    """SGD and Adam candidates with their own widths, epoch budgets and schedules; an earlier --adam-lr file's
    runs join as constant-rate Adam candidates, their pick's test figure as that file read it."""
    pytest.importorskip("torch", reason="PyTorch (the [bench] extra) is not installed")
    config = tmp_path / "tiny.toml"
    config.write_text('solver = "minibatch_am"\nhidden = [16]\nseed = 0\n')
    digits = str(REPO / "data" / "digits.h5")
    module = bench_module("select_recipe")
    base = ["--config", str(config), "--data", digits, "--iters", "3", "--patience", "1", "--name", "tiny",
            "--torch-threads", "1"]
    earlier = {"config": str(config), "data": "digits.h5", "validation_fraction": 0.16667, "patience": 1,
               "iters": 3, "commit": "abc", "adam": {
        "widths": [64, 16, 10], "n_test": 297, "pick_lr": 1e-5, "pick_test_accuracy": 0.5,
        "runs": [{"lr": 1e-5, "curve": [[1, 0.5, 1.0]], "validation_accuracy": 0.5, "kept_epoch": 1,
                  "epochs_run": 1, "train_seconds": 1.0}]}}
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    out = tmp_path / "sgd.json"
    module.main(base + ["--out", str(out), "--reuse-from", str(tmp_path / "earlier.json"),
                        "--torch-candidate", "sgd-wide=sgd_momentum lr=0.1 hidden=32,16 iters=2",
                        "--torch-candidate", "sgd-cosine=sgd_momentum lr=0.1 schedule=warmup_cosine"])
    result = json.loads(out.read_text())["torch"]
    tags = {c["tag"]: c for c in result["candidates"]}
    assert list(tags) == ["adam-lr1e-05", "sgd-wide", "sgd-cosine"]
    assert tags["adam-lr1e-05"]["reused_from"] == {"file": "earlier.json", "commit": "abc"}
    assert tags["adam-lr1e-05"]["optimiser"] == "adam" and tags["adam-lr1e-05"]["hidden"] == [16]
    assert (tags["sgd-wide"]["hidden"], tags["sgd-wide"]["iters"], tags["sgd-wide"]["epochs_run"]) == ([32, 16], 2, 2)
    assert (tags["sgd-cosine"]["schedule"], tags["sgd-cosine"]["iters"], tags["sgd-cosine"]["hidden"]) == (
        "warmup_cosine", 3, [16])
    assert result["pick"] in ("sgd-wide", "sgd-cosine")  # SGD at 0.1 beats Adam at 1e-5 on validation
    # every test read of the chain is listed: the earlier file's pick, then this one's
    assert [(r["tag"], r["commit"]) for r in result["test_reads"]][0] == ("adam-lr1e-05", "abc")
    assert result["test_reads"][1]["tag"] == result["pick"] and len(result["test_reads"]) == 2
    assert result["test_reads"][1]["test_accuracy"] == result["pick_test_accuracy"]
    assert result["pick_validation_accuracy"] == tags[result["pick"]]["validation_accuracy"] > 0.6
    assert 0.6 < result["pick_test_accuracy"] <= 1.0 and result["n_test"] == 297

    # reused alone (no new candidate): the earlier pick and its test figure as read then
    alone = tmp_path / "alone.json"
    module.main(base + ["--out", str(alone), "--reuse-from", str(tmp_path / "earlier.json")])
    again = json.loads(alone.read_text())["torch"]
    assert (again["pick"], again["pick_test_accuracy"], again["n_test"]) == ("adam-lr1e-05", 0.5, 297)
    assert len(again["test_reads"]) == 1  # no new read: the pick is the earlier one

    # a file selected on other rows, or of the other method, does not join; a tag given twice is refused
    (tmp_path / "other.json").write_text(json.dumps({**earlier, "validation_fraction": 0.1}))
    (tmp_path / "admm.json").write_text(json.dumps({"candidates": [], "pick": None}))
    for reuse, message in (("other.json", "was selected with other validation_fraction"),
                           ("admm.json", "holds no PyTorch candidates")):
        with pytest.raises(SystemExit) as stop:
            module.main(base + ["--out", str(tmp_path / "x.json"), "--reuse-from", str(tmp_path / reuse),
                                "--torch-candidate", "a=adam lr=0.01"])
        assert message in str(stop.value)
    with pytest.raises(SystemExit) as stop:
        module.main(base + ["--out", str(tmp_path / "x.json"), "--torch-candidate", "a=adam lr=0.01",
                            "--torch-candidate", "a=sgd_momentum lr=0.1"])
    assert "candidate tag(s) a given twice" in str(stop.value)
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("text", ["x=rmsprop lr=1", "x=adam", "x=adam lr=1 schedule=step", "x=adam lr=1 momentum=0"])
def test_a_malformed_pytorch_candidate_is_refused_in_one_line(tmp_path, text):
    config = tmp_path / "tiny.toml"
    config.write_text('solver = "minibatch_am"\nhidden = [16]\n')
    with pytest.raises(SystemExit) as stop:
        bench_module("select_recipe").main(["--config", str(config), "--data", str(REPO / "data" / "digits.h5"),
                                            "--torch-candidate", text, "--out", str(tmp_path / "x.json")])
    assert str(stop.value).startswith("select_recipe: --torch-candidate") and "\n" not in str(stop.value)
