"""The run directory belongs to its run (issue 37): nothing of another run or another user is
deleted, followed or mixed in. Every case runs real ``mpiexec`` jobs at 2 ranks; links point at
targets outside the test's run directory, which must come out unchanged."""

import json

import h5py
import numpy as np
import pytest

from admm_mpi.data import content_hash, _MASK
from tests.helpers import run_admm

FAST = ["--hidden", "8", "--no-progress", "--checkpoint-every", "1"]


def _train(out, *args, expect=0):
    proc = run_admm(2, "train", *FAST, *args, "--out", out)
    assert proc.returncode == expect, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def _tree(path):
    """Every file's bytes but the lock's (it names the last process that held it)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_resume_into_another_runs_directory_is_refused_and_deletes_nothing(tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    _train(b, "--iters", 3)
    _train(a, "--iters", 2, "--seed", 7)
    before = _tree(a)
    refused = _train(a, "--iters", 5, "--resume", b, expect=2)
    assert "not the resumed run's" in refused.stderr
    assert _tree(a) == before


def test_resume_auto_never_removes_a_directory_admm_mpi_did_not_write(tmp_path):
    run = tmp_path / "run"
    planted = run / "checkpoints" / "ckpt-000100"
    planted.mkdir(parents=True)
    (planted / "thesis.tex").write_text("a week of work\n")
    fresh = _train(run, "--iters", 2, expect=2)
    assert "did not write" in fresh.stderr
    resumed = _train(run, "--iters", 2, "--resume", "auto", expect=2)
    assert "ckpt-000100" in resumed.stderr
    assert (planted / "thesis.tex").read_text() == "a week of work\n"


@pytest.mark.parametrize("name", [".lock", "metrics.jsonl", "model.h5.tmp", "summary.json.tmp",
                                  "checkpoints/latest.tmp", "checkpoints/ckpt-000001"])
def test_a_planted_link_where_the_trainer_writes_refuses_the_run(tmp_path, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "victim"
    if name.startswith("checkpoints/ckpt"):
        target.mkdir()
        (target / "data.txt").write_text("keep me\n")
    else:
        target.write_text("keep me\n")
    run = tmp_path / "run"
    link = run / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    proc = _train(run, "--iters", 2, "--resume", "auto", expect=2)
    assert "symbolic link" in proc.stderr
    assert _tree(outside) == {("victim/data.txt" if target.is_dir() else "victim"): b"keep me\n"}


def _manifest(run):
    path = run / "checkpoints" / "ckpt-000002" / "manifest.json"
    return path, json.loads(path.read_text())


@pytest.mark.parametrize("part", ["/etc/hostname", "../ckpt-000001/part-00000.h5"])
def test_a_manifest_part_outside_its_directory_is_damage_and_falls_back(tmp_path, part):
    run = tmp_path / "run"
    _train(run, "--iters", 2)
    path, manifest = _manifest(run)
    manifest["parts"][0]["file"] = part
    path.write_text(json.dumps(manifest))
    proc = _train(run, "--iters", 3, "--resume", "auto")
    assert "damaged manifest" in proc.stderr and "trying the previous checkpoint" in proc.stderr
    assert json.loads((run / "summary.json").read_text())["first_iteration"] == 2


@pytest.mark.parametrize("edit", [lambda m: m.pop("iteration"), lambda m: m.update(parts="x"),
                                  lambda m: m["parts"][0].update(columns=["a", 3])])
def test_a_manifest_missing_or_mistyping_a_key_falls_back_without_a_traceback(tmp_path, edit):
    run = tmp_path / "run"
    _train(run, "--iters", 2)
    path, manifest = _manifest(run)
    edit(manifest)
    path.write_text(json.dumps(manifest))
    proc = _train(run, "--iters", 3, "--resume", "auto")
    assert "damaged manifest" in proc.stderr


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path):
    run = tmp_path / "run"
    _train(run, "--iters", 2)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 3, "objec')
    proc = _train(run, "--iters", 4, "--resume", "auto")
    assert "torn line" in proc.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
    assert len({r["run_id"] for r in rows}) == 1


def _digits_copy(path, edit):
    from admm_mpi.data import resolve_path

    with h5py.File(resolve_path("digits"), "r") as src, h5py.File(path, "w") as dst:
        for key in src:
            dst[key] = edit(key, src[key][...])
        dst.attrs.update(src.attrs)
    return path


def test_resume_on_data_that_differs_anywhere_is_refused_naming_what(tmp_path):
    run = tmp_path / "run"
    same = _digits_copy(tmp_path / "same.h5", lambda key, a: a)
    _train(run, "--iters", 2, "--data", same)

    def last_label(key, a):
        if key == "y":
            a = a.copy()
            a[-1] = (a[-1] + 1) % 10
        return a

    other = _digits_copy(tmp_path / "labels.h5", last_label)
    proc = _train(run, "--iters", 3, "--resume", "auto", "--data", other, expect=2)
    assert "the training labels differ" in proc.stderr or "the validation labels differ" in proc.stderr
    _train(run, "--iters", 3, "--resume", "auto", "--data", same)  # the same content at another path resumes


def test_resuming_a_finished_run_reports_it_and_changes_nothing(tmp_path):
    run = tmp_path / "run"
    _train(run, "--iters", 60, "--patience", "1")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped"] == "early_stopping"
    before = _tree(run)
    again = _train(run, "--iters", 60, "--patience", "1", "--resume", "auto")
    assert "already finished" in again.stdout
    assert _tree(run) == before


def test_the_content_hash_is_the_same_for_any_split_and_sees_one_changed_bit():
    X = np.random.default_rng(0).random((7, 1000))
    whole = content_hash(X, 0)
    for cut in (1, 333, 999):
        a, b = content_hash(X[:, :cut], 0), content_hash(X[:, cut:], cut)
        assert [(p + q) & _MASK for p, q in zip(a, b)] == whole
    changed = X.copy()
    changed.view(np.uint64)[3, 500] ^= 1
    assert content_hash(changed, 0) != whole
    assert content_hash(X[:, ::-1].copy(), 0) != whole  # order matters


def test_the_estimator_refuses_a_fractional_width():
    from admm_mpi import ADMMClassifier

    with pytest.raises(ValueError, match="positive integers"):
        ADMMClassifier(hidden_layer_sizes=(2.5,)).fit(np.random.rand(20, 3), np.arange(20) % 2)


def _subcommands():
    """Every command path of the parser (``train``, ``data convert``, ...)."""
    from admm_mpi.cli import make_parser

    def walk(parser, prefix):
        subs = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not subs:
            return [prefix]
        return [path for name, sub in subs[0].choices.items() for path in walk(sub, prefix + [name])]

    return walk(make_parser(), [])


BAD_VALUES = ["--no-such-flag", "/nonexistent/dir/file.h5"]


@pytest.mark.parametrize("command", [" ".join(c) for c in _subcommands()])
def test_every_subcommand_answers_bad_input_in_one_line(tmp_path, command):
    """Each subcommand, given an unknown flag and then a missing file where it takes one: a
    non-zero exit and one ``admm-mpi: error:`` line, never a traceback."""
    import subprocess
    import sys

    from tests.helpers import child_env

    env = child_env(ADMM_MPI_NO_MPI=1)
    runs = [[*command.split(), "--no-such-flag"]]
    takes_path = {"train": ["--data"], "evaluate": ["--model"], "predict": ["--model"], "plot": [],
                  "data convert": [], "data info": [], "data augment": []}
    if command in takes_path:
        extra = {"data convert": ["--out", str(tmp_path / "o.h5")], "data augment": ["--adjacency", BAD_VALUES[1],
                                                                                     "--out", str(tmp_path / "o.h5")],
                 "train": ["--out", str(tmp_path / "run")]}.get(command, [])
        runs.append([*command.split(), *takes_path[command], BAD_VALUES[1], *extra])
    for args in runs:
        proc = subprocess.run([sys.executable, "-m", "admm_mpi", *args], capture_output=True, text=True, timeout=120,
                              env=env, cwd=tmp_path)
        assert proc.returncode != 0, (args, proc.stdout)
        assert "Traceback" not in proc.stderr, (args, proc.stderr)
        assert sum(line.startswith("admm-mpi: error:") for line in proc.stderr.splitlines()) == 1, (args, proc.stderr)


def test_a_width_too_large_for_memory_is_one_line(tmp_path):
    proc = run_admm(2, "train", "--hidden", "100000000", "--iters", "1", "--no-progress", "--out", tmp_path / "run")
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
    assert "out of memory" in proc.stderr


def test_data_info_into_a_closed_pipe_ends_quietly():
    import subprocess
    import sys

    from tests.helpers import child_env

    from admm_mpi.data import resolve_path

    reader_gone = subprocess.Popen([sys.executable, "-m", "admm_mpi", "data", "info", resolve_path("digits")],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(ADMM_MPI_NO_MPI=1))
    reader_gone.stdout.close()  # before the command prints: its write meets a closed pipe
    stderr = reader_gone.stderr.read().decode()
    assert reader_gone.wait(timeout=60) == 141 and "Traceback" not in stderr, stderr
