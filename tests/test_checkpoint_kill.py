"""Random SIGKILL trials during sharded checkpoint saves (issue 21).

A 2-rank (and 3-rank) job checkpoints after every iteration on a model whose per-sample state is
large next to its iteration cost, so a save is most of the loop's time. Each trial SIGKILLs one
rank, chosen by a seeded RNG, at a moment drawn from the same RNG, and then checks that:

- the job ends (no hang);
- every checkpoint directory that has a manifest verifies (every part's size and CRC-32);
- ``--resume auto`` continues from the newest complete checkpoint (``first_iteration`` and
  ``resumed_from``), or starts afresh when the kill came before any checkpoint was complete;
- the resumed run's weights equal an uninterrupted run's bit for bit (same rank count).

The trials where the kill landed inside a save (a torn directory, without manifest, was left)
are counted, and some must be, so the test cannot pass by always killing between saves.
"""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from admm_mpi.data import write_dataset
from tests.helpers import NO_VALIDATION_FLAGS, blobs, child_env, mpiexec, run_admm
from tests.test_faults import _descendants

ITERS = 6
# narrow layers over many columns: saving a, z, m, lam (~20 MB per rank) costs more than an iteration
MODEL = ["--solver", "taylor", *NO_VALIDATION_FLAGS, "--hidden", "48,48,48", "--dtype", "float64", "--no-progress",
         "--iters", ITERS, "--eval-every", ITERS]
TRIALS = [2] * 14 + [3] * 6
SEED = 2021


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    X, y = blobs(12000, 16, 4, seed=3)
    path = tmp_path_factory.mktemp("kill") / "blobs.h5"
    write_dataset(str(path), X, y, X[:200], y[:200], name="blobs", n_classes=4)
    return path


def _weights(run):
    with h5py.File(run / "model.h5", "r") as f:
        return [f[f"layers/{l}/{k}"][...] for l in range(4) for k in ("W", "b")]


def _summary(run):
    return json.loads((run / "summary.json").read_text())


def _start(ranks, data, run, *extra):
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "admm_mpi", "train", *map(str, MODEL),
           "--data", str(data), "--out", str(run), *map(str, extra)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())


def _wait_for_first_row(proc, run, timeout=120):
    """Block until the job has finished its first iteration (about to write its first checkpoint)."""
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.stat().st_size > 0:
            return time.time()   # wall clock: compared with file modification times
        time.sleep(0.005)
    proc.kill()
    _, err = proc.communicate(timeout=60)
    raise AssertionError(f"the job wrote no metrics row (exit {proc.returncode}): {err[-2000:]}")


def _rank_pids(proc):
    """``{rank: pid}`` of the job's Python processes (their PMI_RANK)."""
    pids = {}
    for pid in _descendants(proc.pid):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        rank = [e.split(b"=", 1)[1] for e in env if e.startswith(b"PMI_RANK=")]
        if rank and b"admm_mpi" in cmdline:
            pids[int(rank[0])] = pid
    return pids


def _crc32(path):
    crc = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            crc = zlib.crc32(block, crc)
    return f"{crc:08x}"


def _complete_checkpoints(run):
    """``(complete, torn)`` checkpoint directories; every complete one is verified here."""
    directories = sorted(p for p in (run / "checkpoints").glob("ckpt-*") if p.is_dir()) \
        if (run / "checkpoints").exists() else []
    complete = [p for p in directories if (p / "manifest.json").exists()]
    for directory in complete:
        manifest = json.loads((directory / "manifest.json").read_text())
        for part in manifest["parts"]:
            path = directory / part["file"]
            assert path.stat().st_size == part["bytes"], f"{path}: size differs from its manifest"
            assert _crc32(path) == part["crc32"], f"{path}: CRC-32 differs from its manifest"
    return complete, [p for p in directories if p not in complete]


def _reference(ranks, data, run):
    """An uninterrupted run with a checkpoint after every iteration; the seconds from its first
    metrics row to its last checkpoint's commit (the window in which the trials kill)."""
    proc = _start(ranks, data, run, "--checkpoint-every", 1)
    started = _wait_for_first_row(proc, run)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    last = run / "checkpoints" / f"ckpt-{ITERS:06d}" / "manifest.json"
    return _weights(run), last.stat().st_mtime - started


def _checkpoint_weights(directory):
    with h5py.File(directory / "part-00000.h5", "r") as f:   # the root's part holds the global state
        return [f[f"global/{k}/{l}"][...] for l in range(4) for k in ("weights", "biases")]


def _trial(rng, ranks, data, run, window):
    """One kill and its checks; returns ``(killed, torn, weights at the end)``."""
    proc = _start(ranks, data, run, "--checkpoint-every", 1)
    started = _wait_for_first_row(proc, run)
    victim, delay = rng.randrange(ranks), rng.uniform(0.0, window)
    pids = _rank_pids(proc)
    assert sorted(pids) == list(range(ranks)), pids
    time.sleep(max(0.0, started + delay - time.time()))
    try:
        os.kill(pids[victim], signal.SIGKILL)
        killed = True
    except ProcessLookupError:  # the job had already finished
        killed = False
    proc.communicate(timeout=60)   # the job ends: no rank waits forever for the killed one
    complete, torn = _complete_checkpoints(run)
    newest = complete[-1] if complete else None
    done = int(newest.name[5:11]) if newest else 0
    if done == ITERS:  # killed after the last checkpoint: it holds the final weights
        return killed, bool(torn), _checkpoint_weights(newest)
    resumed = run_admm(ranks, "train", *MODEL, "--data", data, "--out", run, "--resume", "auto", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    summary = _summary(run)
    assert summary["first_iteration"] == done + 1, (summary["first_iteration"], newest, torn)
    if newest is None:   # killed before the first checkpoint was complete: a fresh start
        assert summary["resumed_from"] is None, summary
    else:
        assert summary["resumed_from"] is not None and summary["resumed_from"].endswith(newest.name), summary
    return killed, bool(torn), _weights(run)


@pytest.mark.timeout(1800)  # ~70 CPU-seconds over all its processes; 6 min measured at load 28 on 2 cores
def test_random_sigkills_during_sharded_saves_never_tear_a_checkpoint(tmp_path, data):
    rng = random.Random(SEED)
    references = {}
    for ranks in sorted(set(TRIALS)):
        references[ranks] = _reference(ranks, data, tmp_path / f"reference-{ranks}")
    landed_in_save, outcomes = 0, []
    for k, ranks in enumerate(TRIALS):
        run = tmp_path / f"trial-{k:02d}"
        weights, loop_seconds = references[ranks]
        killed, torn, final = _trial(rng, ranks, data, run, window=loop_seconds)
        outcomes.append((ranks, killed, torn))
        landed_in_save += torn
        for W, W_ref in zip(final, weights):
            assert np.array_equal(W, W_ref), f"trial {k}: the resumed weights differ from the uninterrupted run"
    print(f"{landed_in_save} of {len(TRIALS)} kills landed inside a save (ranks, killed, torn): {outcomes}")
    assert landed_in_save >= 3, f"only {landed_in_save} of {len(TRIALS)} kills landed inside a save: {outcomes}"


def test_a_kill_during_the_first_save_lets_resume_auto_start_afresh(tmp_path, data):
    """Only a torn checkpoint (no manifest) is left: nothing was saved, so ``--resume auto`` (which
    a requeued Slurm job always passes) starts afresh instead of refusing the run directory."""
    run, whole = tmp_path / "run", tmp_path / "whole"
    script = tmp_path / "kill.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys
        from admm_mpi import checkpoint
        from admm_mpi.cli import main

        original = checkpoint._write_part
        def write_part(*args, **kwargs):
            record = original(*args, **kwargs)
            if int(os.environ.get("PMI_RANK", 0)) == 1:   # rank 1 dies after writing its part
                os.kill(os.getpid(), signal.SIGKILL)
            return record
        checkpoint._write_part = write_part
        sys.exit(main(["train", *{[str(a) for a in MODEL]!r}, "--data", r"{data}", "--checkpoint-every", "1",
                       "--out", r"{run}"]))
    """))
    proc = subprocess.run([mpiexec(), "-n", "2", sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, env=child_env())
    assert proc.returncode != 0
    complete, torn = _complete_checkpoints(run)
    assert complete == [] and [p.name for p in torn] == ["ckpt-000001"]
    resumed = run_admm(2, "train", *MODEL, "--data", data, "--checkpoint-every", 2, "--out", run, "--resume", "auto",
                       timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "no checkpoint of" in resumed.stderr and "starting afresh" in resumed.stderr
    summary = _summary(run)
    assert summary["first_iteration"] == 1 and summary["resumed_from"] is None
    assert not (run / "checkpoints" / "ckpt-000001").exists()     # the torn attempt was pruned
    proc = run_admm(2, "train", *MODEL, "--data", data, "--out", whole, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for W, W_ref in zip(_weights(run), _weights(whole)):
        assert np.array_equal(W, W_ref)


def test_pruning_killed_midway_never_leaves_a_manifest_without_its_parts(tmp_path, monkeypatch):
    """A checkpoint is removed manifest first: a kill inside the removal leaves a torn directory
    (skipped on resume), not a 'complete' one whose parts are gone."""
    from admm_mpi import checkpoint

    run = tmp_path / "run"
    for iteration in (1, 2, 3):
        directory = run / "checkpoints" / checkpoint.checkpoint_name(iteration)
        directory.mkdir(parents=True)
        (directory / "part-00000.h5").write_bytes(b"part")
        (directory / "manifest.json").write_text("{}")
        (directory / checkpoint.OWNER_FILE).write_text(json.dumps({"format": checkpoint.FORMAT, "run_id": "r1"}))

    def killed_while_removing(path, ignore_errors=False):
        for part in Path(path).glob("part-*"):   # the parts go first, then the process dies
            part.unlink()
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed_while_removing)
    with pytest.raises(KeyboardInterrupt):
        checkpoint._prune(str(run), str(run / "checkpoints" / "ckpt-000003"), keep=2, run_id="r1")
    for directory in (run / "checkpoints").iterdir():
        if (directory / "manifest.json").exists():
            assert list(directory.glob("part-*")), f"{directory.name} has a manifest but no parts"
