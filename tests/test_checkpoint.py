"""Checkpoints: sharded parts committed by a manifest, bit-exact and re-sharded resume, fallback
past torn or corrupted checkpoints, the run-directory lock, signals on any rank, full disks."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from tests.helpers import NO_VALIDATION_FLAGS, child_env, mpiexec, run_admm

# Taylor, every iteration, the last iterate kept (a --solver in a test's own arguments overrides it)
COMMON = ["--solver", "taylor", *NO_VALIDATION_FLAGS, "--hidden", "32,32", "--no-progress", "--dtype", "float64"]


def _weights(run):
    with h5py.File(run / "model.h5", "r") as f:
        return [f[f"layers/{l}/W"][...] for l in range(3)] + [f[f"layers/{l}/b"][...] for l in range(3)]


def _train(ranks, out, *args, expect=0):
    proc = run_admm(ranks, "train", *COMMON, "--out", out, *args, timeout=300)
    assert proc.returncode == expect, proc.stderr
    return proc


def _summary(run):
    return json.loads((run / "summary.json").read_text())


def _manifest(run, name):
    return json.loads((run / "checkpoints" / name / "manifest.json").read_text())


def _assert_resumed(run, first, name):
    """The run continued the checkpoint ``name`` (a silent restart gives the same weights)."""
    summary = _summary(run)
    assert summary["first_iteration"] == first, summary
    assert summary["resumed_from"] is not None and summary["resumed_from"].endswith(name), summary


BATCHES = ["--batch-size", "300"]


@pytest.mark.parametrize("solver, extra", [("taylor", []), ("dladmm", []), ("mdlam", []), ("sigmoid_admm", []),
                                           ("minibatch_am", BATCHES),
                                           ("mdlam", [*BATCHES, "--batch-sweeps", "3", "--eps", "1"])])
def test_resume_is_bit_exact_and_elastic(tmp_path, solver, extra):
    full, part, elastic = tmp_path / "full", tmp_path / "part", tmp_path / "elastic"
    # mini-batches: several per epoch, so the resumed epochs must redraw the same ones (and the
    # mini-batch mode's checkpoint holds no per-sample variable: they are rebuilt per batch)
    args = ["--solver", solver, *extra]
    _train(2, full, *args, "--iters", 12)
    _train(2, part, *args, "--iters", 7, "--checkpoint-every", 5)
    assert (part / "checkpoints" / "latest").read_text().strip() == "ckpt-000005"
    shutil.copytree(part, elastic)
    _train(2, part, *args, "--iters", 12, "--resume", "auto")
    _train(3, elastic, *args, "--iters", 12, "--resume", "auto")
    _assert_resumed(part, 6, "ckpt-000005")
    _assert_resumed(elastic, 6, "ckpt-000005")
    # 2 -> 3 ranks: 1e-10; sigmoid-ADMM's backtracked prox-linear steps amplify the rounding
    # differences of the other reduction order a little more (2.8e-10 measured after 7 iterations)
    bound = 1e-9 if solver == "sigmoid_admm" else 1e-10
    for W, W_part, W_el in zip(_weights(full), _weights(part), _weights(elastic)):
        assert np.array_equal(W, W_part)                                    # same ranks: bit-exact
        assert np.linalg.norm(W - W_el) <= bound * np.linalg.norm(W)
    rows = [json.loads(line) for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(1, 13))              # no duplicated rows
    manifest = _manifest(part, "ckpt-000005")
    sample_keys = [k for p in manifest["parts"] for k in p["samples"]]
    if extra:
        assert sample_keys == []                       # the mini-batch modes keep no per-sample state
    else:
        assert sample_keys


@pytest.mark.parametrize("ranks, resumed_ranks", [(1, 4), (4, 3), (3, 1), (2, 4)])
def test_a_checkpoint_written_at_p_ranks_resumes_at_any_other(tmp_path, ranks, resumed_ranks):
    """Each rank wrote its own columns; each resuming rank reads the ranges it needs from the
    parts that overlap them (uneven splits of 1500 columns)."""
    full, part = tmp_path / "full", tmp_path / "part"
    _train(resumed_ranks, full, "--iters", 8)
    _train(ranks, part, "--iters", 5, "--checkpoint-every", 5)
    manifest = _manifest(part, "ckpt-000005")
    columns = sorted(tuple(p["columns"]) for p in manifest["parts"])
    assert len(columns) == ranks and columns[0][0] == 0 and columns[-1][1] == 1500
    assert all(a[1] == b[0] for a, b in zip(columns, columns[1:]))      # every column once, by its owner
    with h5py.File(part / "checkpoints" / "ckpt-000005" / "part-00000.h5", "r") as f:
        assert f["samples/z/0"].shape[-1] == columns[0][1]                # the root wrote its own columns only
    _train(resumed_ranks, part, "--iters", 8, "--resume", "auto")
    _assert_resumed(part, 6, "ckpt-000005")
    for W, W_part in zip(_weights(full), _weights(part)):
        assert np.linalg.norm(W - W_part) <= 1e-10 * np.linalg.norm(W)


def test_a_checkpoint_of_another_config_or_data_is_refused_and_kept(tmp_path):
    run = tmp_path / "run"
    _train(2, run, "--iters", 4, "--checkpoint-every", 2)
    part = run / "checkpoints" / "ckpt-000004" / "part-00000.h5"
    before = (part.read_bytes(), part.stat().st_mtime_ns)
    other = run_admm(2, "train", *COMMON, "--hidden", "16,16", "--iters", 8, "--resume", run, "--out", run)
    assert other.returncode == 2 and "another configuration" in other.stderr and "hidden" in other.stderr
    from admm_mpi.data import write_dataset
    from tests.helpers import blobs

    X, y = blobs(50, 64, 10, seed=0)
    write_dataset(str(tmp_path / "other.h5"), X, y, name="other", n_classes=10)
    other = run_admm(2, "train", *COMMON, "--iters", 8, "--data", tmp_path / "other.h5", "--resume", run,
                     "--out", tmp_path / "o2")
    assert other.returncode == 2 and "trained on other data" in other.stderr
    assert (part.read_bytes(), part.stat().st_mtime_ns) == before
    missing = run_admm(2, "train", *COMMON, "--iters", 8, "--resume", tmp_path / "nothing", "--out", run)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


@pytest.mark.parametrize("damage", ["no latest", "dangling latest", "empty latest"])
def test_resume_and_the_fresh_run_guard_do_not_depend_on_latest(tmp_path, damage):
    """Issue 16, case 1: without a usable ``latest`` pointer, a fresh run used to start at
    iteration 1 in the old directory and its pruning deleted the earlier run's checkpoints."""
    run = tmp_path / "run"
    _train(2, run, "--hidden", "64,64", "--iters", 6, "--checkpoint-every", 2)
    latest = run / "checkpoints" / "latest"
    if damage == "no latest":
        latest.unlink()
    elif damage == "dangling latest":
        latest.write_text("ckpt-000999\n")
    else:
        latest.write_text("")
    kept = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("ckpt-"))
    fresh = run_admm(2, "train", *COMMON, "--hidden", "32,32", "--iters", 6, "--checkpoint-every", 2, "--out", run)
    assert fresh.returncode == 2 and "holds checkpoints of an earlier run" in fresh.stderr, fresh.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("ckpt-")) == kept
    _train(2, run, "--hidden", "64,64", "--iters", 8, "--resume", "auto")
    _assert_resumed(run, 7, "ckpt-000006")


def _flip_bytes(path, offset_from_end=200):
    data = bytearray(path.read_bytes())
    for i in range(len(data) - offset_from_end, len(data) - offset_from_end + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))  # same size: only the checksum can tell


@pytest.mark.parametrize("damage", ["torn", "corrupt part", "missing part", "garbled manifest"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, damage):
    run, full = tmp_path / "run", tmp_path / "full"
    _train(2, run, "--iters", 6, "--checkpoint-every", 2)
    newest = run / "checkpoints" / "ckpt-000006"
    if damage == "torn":                     # killed between the part writes and the manifest
        (newest / "manifest.json").unlink()
    elif damage == "corrupt part":
        _flip_bytes(newest / "part-00001.h5")
    elif damage == "missing part":
        (newest / "part-00000.h5").unlink()
    else:
        (newest / "manifest.json").write_text('{"format": "admm-mpi checkp')
    proc = _train(2, run, "--iters", 8, "--resume", "auto")
    assert "ckpt-000006" in proc.stderr and "trying the previous checkpoint" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    _assert_resumed(run, 5, "ckpt-000004")
    _train(2, full, "--iters", 8)
    for W, W_ref in zip(_weights(run), _weights(full)):
        assert np.array_equal(W, W_ref)


def test_a_run_with_no_intact_checkpoint_is_refused(tmp_path):
    run = tmp_path / "run"
    _train(2, run, "--iters", 2, "--checkpoint-every", 2)
    _flip_bytes(run / "checkpoints" / "ckpt-000002" / "part-00000.h5")
    proc = _train(2, run, "--iters", 4, "--resume", "auto", expect=2)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("admm-mpi: error:")]
    assert len(errors) == 1 and "no intact checkpoint" in errors[0] and "Traceback" not in proc.stderr


def test_a_single_file_checkpoint_of_the_old_format_is_refused_clearly(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with h5py.File(run / "checkpoints" / "ckpt-000004.h5", "w") as f:
        f.create_group("meta").attrs["format_version"] = 1
    (run / "checkpoints" / "latest").write_text("ckpt-000004.h5\n")
    resumed = _train(2, run, "--iters", 8, "--resume", "auto", expect=2)
    assert "single-file checkpoint of an earlier admm-mpi" in resumed.stderr
    fresh = _train(2, run, "--iters", 8, expect=2)
    assert "holds checkpoints of an earlier run" in fresh.stderr
    assert (run / "checkpoints" / "ckpt-000004.h5").exists()


def _popen(ranks, run, *args):
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "admm_mpi", "train", *COMMON, "--out", str(run),
           *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())


def _wait_rows(run, rows, timeout=60):
    deadline = time.time() + timeout
    metrics = run / "metrics.jsonl"
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= rows:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("checkpoints", [True, False])
def test_two_jobs_on_one_run_directory_the_second_is_refused(tmp_path, checkpoints):
    """Issue 16, case 2: two jobs started together used to replace each other's outputs."""
    run = tmp_path / "run"
    extra = ["--checkpoint-every", 1] if checkpoints else []
    first = _popen(2, run, "--hidden", "256,256", "--iters", 60, *extra)
    assert _wait_rows(run, 1)
    second = run_admm(2, "train", *COMMON, "--hidden", "16", "--iters", 3, *extra, "--out", run, timeout=60)
    first.communicate(timeout=300)
    assert first.returncode == 0
    assert second.returncode == 2 and "in use by another job" in second.stderr, second.stderr
    assert "Traceback" not in second.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(1, 61))       # one job's rows, none torn
    assert _summary(run)["widths"][1:3] == [256, 256]


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_to_one_non_root_rank_stops_the_job_with_a_checkpoint(tmp_path, sig, code):
    """Issue 16, cases 3 and 14: only rank 0's flag was read; SIGINT gave a traceback."""
    from tests.test_faults import _python_ranks

    run = tmp_path / "run"
    proc = _popen(2, run, "--hidden", "256,256", "--iters", 400)
    assert _wait_rows(run, 3)
    ranks = _python_ranks(proc.pid)
    assert len(ranks) == 2, ranks
    os.kill(max(ranks), sig)                      # the rank started last: not the root
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"stopped by {sig.name}" in err and "Traceback" not in err
    latest = (run / "checkpoints" / "latest").read_text().strip()
    stopped_at = int(latest[5:11])
    assert (run / "checkpoints" / latest / "manifest.json").exists()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["iteration"] == stopped_at
    _train(2, run, "--hidden", "256,256", "--iters", stopped_at + 2, "--resume", "auto")
    _assert_resumed(run, stopped_at + 1, latest)


def test_sigterm_inside_a_minibatch_epoch_checkpoints_between_batches_and_resumes_bit_exactly(tmp_path):
    """Preemption at mini-batch granularity: the checkpoint names the epoch and the batches done;
    the resumed run skips those batches of the same permutation and equals the uninterrupted run."""
    run, full, marker = tmp_path / "run", tmp_path / "full", tmp_path / "in-epoch-2"
    args = ["--solver", "minibatch_am", "--batch-size", "20", "--hidden", "256,256", "--iters", 3]
    proc = subprocess.Popen([mpiexec(), "-n", "2", sys.executable, str(_pausing_script(tmp_path, run, marker, args))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate(timeout=60)
    proc.send_signal(signal.SIGTERM)               # to mpiexec, which forwards it to every rank
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "inside iteration 2" in err, err
    latest = (run / "checkpoints" / "latest").read_text().strip()
    assert latest.startswith("ckpt-000001-"), latest
    manifest = _manifest(run, latest)
    assert manifest["iteration"] == 1 and 0 < manifest["batches_done"] < 75
    _train(2, run, *args, "--resume", "auto")
    _assert_resumed(run, 2, latest)
    _train(2, full, *args)
    for W, W_ref in zip(_weights(run), _weights(full)):
        assert np.array_equal(W, W_ref)
    rows = [json.loads(line)["iteration"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3]


def test_a_run_resumed_then_stopped_inside_its_first_epoch_keeps_the_best_iterate(tmp_path):
    """The model selection is checkpointed: a resumed run stopped again before it evaluated
    anything still saves the best iterate of the run it continues, not an unevaluated one."""
    run, marker = tmp_path / "run", tmp_path / "paused"
    args = ["--solver", "minibatch_am", "--batch-size", "20", "--hidden", "256,256", "--validation-fraction", "0.2",
            "--keep", "best"]
    _train(2, run, *args, "--iters", 1, "--checkpoint-every", 1)
    best = _weights(run)
    assert _summary(run)["kept_iteration"] == 1
    script = _pausing_script(tmp_path, run, marker, [*args, "--iters", 3, "--resume", "auto"], pause_after=7)
    proc = subprocess.Popen([mpiexec(), "-n", "2", sys.executable, str(script)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate(timeout=60)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "inside iteration 2" in err, err
    summary = _summary(run)
    assert (summary["kept"], summary["kept_iteration"], summary["best_validation_iteration"]) == ("best", 1, 1)
    assert all(np.array_equal(a, b) for a, b in zip(_weights(run), best))


def _pausing_script(tmp_path, run, marker, args, pause_after=82):
    """Train; rank 0 pauses after the 82nd batch (``pause_after``; the 7th of epoch 2, 75 batches an epoch) and
    says so by creating ``marker``: a signal sent then lands inside epoch 2 however fast the
    machine is (a fixed sleep once let epoch 2 finish first)."""
    path = tmp_path / "pause.py"
    path.write_text(textwrap.dedent(f"""
        import sys, time
        from admm_mpi.solvers import minibatch_am
        from admm_mpi.cli import main

        original, count = minibatch_am.run_epoch, {{"n": 0}}
        def run_epoch(grid, state, batches, batch, stop_request):
            def pausing(local, n_batch):
                result = batch(local, n_batch)
                count["n"] += 1
                if count["n"] == {pause_after} and grid.rank == 0:
                    open(r"{marker}", "w").close()
                    time.sleep(5)
                return result
            return original(grid, state, batches, pausing, stop_request)
        minibatch_am.run_epoch = run_epoch
        sys.exit(main(["train", *{COMMON!r}, "--out", r"{run}", *{list(map(str, args))!r}]))
    """))
    return path


def _kill_before_commit_script(path, run, *, rank, stage):
    """Train with checkpoints; at the second checkpoint, SIGKILL one rank at ``stage``."""
    path.write_text(textwrap.dedent(f"""
        import os, signal, sys
        from admm_mpi import checkpoint
        from admm_mpi.cli import main

        calls = {{"n": 0}}
        original_write, original_commit = checkpoint._write_part, checkpoint._commit
        def write_part(*args, **kwargs):
            calls["n"] += 1
            record = original_write(*args, **kwargs)
            if calls["n"] == 2 and {stage!r} == "after part" and int(os.environ.get("PMI_RANK", 0)) == {rank}:
                os.kill(os.getpid(), signal.SIGKILL)
            return record
        def commit(*args, **kwargs):
            if calls["n"] == 2 and {stage!r} == "before manifest":
                os.kill(os.getpid(), signal.SIGKILL)
            return original_commit(*args, **kwargs)
        checkpoint._write_part, checkpoint._commit = write_part, commit
        sys.exit(main(["train", *{COMMON!r}, "--iters", "8", "--checkpoint-every", "2", "--out", r"{run}"]))
    """))
    return path


@pytest.mark.parametrize("rank, stage", [(1, "after part"), (0, "after part"), (0, "before manifest")])
def test_a_kill_between_the_part_writes_and_the_manifest_leaves_the_previous_checkpoint(tmp_path, rank, stage):
    run = tmp_path / "run"
    script = _kill_before_commit_script(tmp_path / "kill.py", run, rank=rank, stage=stage)
    proc = subprocess.run([mpiexec(), "-n", "2", sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, env=child_env())
    assert proc.returncode != 0
    assert not (run / "checkpoints" / "ckpt-000004" / "manifest.json").exists()
    assert (run / "checkpoints" / "latest").read_text().strip() == "ckpt-000002"
    _train(2, run, "--iters", 6, "--checkpoint-every", 2, "--resume", "auto")
    _assert_resumed(run, 3, "ckpt-000002")
    names = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("ckpt-"))
    assert names == ["ckpt-000004", "ckpt-000006"]              # the torn attempt was replaced
    assert all((run / "checkpoints" / n / "manifest.json").exists() for n in names)


def _small_filesystem(tmp_path, size="8m"):
    """A tiny tmpfs (a real ENOSPC) when this process may mount one, else None."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return None
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    return mount if proc.returncode == 0 else None


def test_a_full_disk_during_a_checkpoint_gives_one_line_and_keeps_the_previous(tmp_path):
    mount = _small_filesystem(tmp_path)
    if mount is None:
        pytest.skip("needs root and tmpfs to make a small file system")
    try:
        run = mount / "run"
        # Taylor 64,64 checkpoints of 1500 columns are ~5 MB: the first fits in 8 MB, the second not
        proc = run_admm(2, "train", *COMMON, "--hidden", "64,64", "--iters", 12, "--checkpoint-every", 2,
                        "--out", run, timeout=120)
        assert proc.returncode == 3, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("admm-mpi: error:")]
        assert len(errors) == 1 and "No space left on device" in errors[0], proc.stderr
        assert "Traceback" not in proc.stderr and "the previous checkpoint is kept" in errors[0]
        names = sorted(p.name for p in (run / "checkpoints").iterdir())
        assert not [n for n in names if n.endswith(".tmp")]
        complete = [n for n in names if (run / "checkpoints" / n / "manifest.json").exists()]
        assert complete and len(complete) == len([n for n in names if n.startswith("ckpt-")]), names
    finally:
        subprocess.run(["umount", str(mount)])
