"""admm-mpi tune (issue 34): groups of ranks, trials equal to runs alone, preemption and resume,
the best config, pruning, bad search spaces. Real mpiexec jobs on the bundled digits, tiny widths."""

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from tests.helpers import REPO, child_env, mpiexec, run_admm
from tests.test_launch import _job_state, _wait, slurm  # noqa: F401  (slurm: the private cluster fixture)

try:
    import optuna  # noqa: F401
    OPTUNA = None
except ImportError:
    OPTUNA = "Optuna is not installed (pip install -e '.[tune]', as CI does)"
needs_optuna = pytest.mark.skipif(OPTUNA is not None, reason=str(OPTUNA))

SMALL_SPACE = """
[space]
hidden = { choices = ["8", "16"] }
beta = { low = 0.03, high = 0.3, log = true }
ridge = { low = 1e-5, high = 1e-3, log = true }
batch_size = { choices = [128, 256] }
"""
SWEEP = ["--solver", "minibatch_am", "--iters", 3, "--sampler", "random", "--pruner", "none", "--no-progress"]


def _space(tmp_path, text=SMALL_SPACE, name="space.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _weights(run):
    with h5py.File(run / "model.h5", "r") as f:
        return [f[f"layers/{layer}/{k}"][...] for layer in sorted(f["layers"], key=int) for k in ("W", "b")]


def _same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    return len(wa) == len(wb) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(wa, wb))


def _trials(out):
    with open(out / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


# ---- the grid's split -------------------------------------------------------------------------
SPLIT_SCRIPT = """
import json, sys
import numpy as np
from admm_mpi.grid import Grid
from admm_mpi.errors import InputError

world = Grid()
out = {}
for size in (1, 2, 4):
    group, index, n_groups = world.split_groups(size)
    total = group.allsum(np.array([float(world.rank)]))[0]   # a sum inside the group only
    out[size] = [group.rank, group.size, index, n_groups, total, group.distributed]
    group.close()
try:
    world.split_groups(3)
except InputError as exc:
    out["3"] = str(exc)
with open(f"{sys.argv[1]}/rank{world.rank}.json", "w") as f:  # one file per rank: printed lines may interleave
    json.dump({"rank": world.rank, **{str(k): v for k, v in out.items()}}, f)
"""


def test_split_groups_makes_blocks_of_consecutive_ranks_that_sum_among_themselves(tmp_path):
    script = tmp_path / "split.py"
    script.write_text(SPLIT_SCRIPT)
    _ok(subprocess.run([mpiexec(), "-n", "4", sys.executable, str(script), str(tmp_path)], capture_output=True,
                       text=True, timeout=120, env=child_env()))
    rows = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(4)]
    for r in rows:
        rank = r["rank"]
        assert r["1"] == [0, 1, rank, 4, rank, False]              # a serial grid, as on a world of 1
        group = rank // 2
        assert r["2"] == [rank % 2, 2, group, 2, 4 * group + 1, True]  # ranks 0+1 and 2+3
        assert r["4"] == [rank, 4, 0, 1, 6, True]
        assert r["3"] == "groups of 3 ranks do not divide the 4 ranks evenly"


# ---- every trial equals the same config trained alone, and best.toml reruns the best ---------
@needs_optuna
@pytest.mark.parametrize("ranks, group", [(4, 2), (2, 1)])
def test_every_trial_equals_its_config_trained_alone_and_best_toml_reruns_the_best(tmp_path, ranks, group):
    out = tmp_path / "sweep"
    proc = _ok(run_admm(ranks, "tune", *SWEEP, "--space", _space(tmp_path), "--trials", ranks // group,
                        "--ranks-per-trial", group, "--out", out, timeout=300))
    rows = _trials(out)
    assert [r["state"] for r in rows] == ["complete"] * (ranks // group), rows
    assert {r["ranks"] for r in rows} == {str(group)}
    assert {r["group"] for r in rows} == {str(g) for g in range(ranks // group)}  # every group trained
    assert proc.stdout.count("admm-mpi tune: trial ") == len(rows)              # a line per finished trial
    for r in rows:
        trial = out / "trials" / f"{int(r['trial']):04d}"
        alone = tmp_path / f"alone-{r['trial']}"
        _ok(run_admm(group, "train", "--config", trial / "config.toml", "--no-progress", "--out", alone))
        assert _same_weights(trial, alone), r
        summary = json.loads((trial / "summary.json").read_text())
        assert summary["ranks"] == group
        assert float(r["validation_accuracy"]) == pytest.approx(summary["validation_accuracy"], abs=1e-6)
        assert int(r["kept_epoch"]) == summary["kept_iteration"]
        assert len(r["validation_by_epoch"].split()) == 3
    best = max(rows, key=lambda r: (float(r["validation_accuracy"]), -int(r["trial"])))
    assert f"best trial {best['trial']}:" in proc.stdout
    rerun = tmp_path / "rerun-best"
    _ok(run_admm(group, "train", "--config", out / "best.toml", "--no-progress", "--out", rerun))
    assert _same_weights(out / "best", rerun)
    assert json.loads((rerun / "summary.json").read_text())["test_accuracy"] is not None  # the sweep's eval_test
    assert (out / "trials.png").stat().st_size > 0


# ---- preemption: SIGTERM mid-trial, --resume -------------------------------------------------
PAUSING = """
import pathlib, sys, time
from admm_mpi import train as T
from admm_mpi.cli import main

original = T._Run.iteration_step
def iteration_step(self, iteration):
    row = original(self, iteration)
    if self.config.out.endswith("0001") and iteration >= 2:   # trial 1, after its second epoch
        pathlib.Path(r"{marker}").touch()
        time.sleep(0.3)
    return row
T._Run.iteration_step = iteration_step
sys.exit(main({argv!r}))
"""


@needs_optuna
def test_a_sweep_stopped_by_sigterm_mid_trial_resumes_to_the_uninterrupted_sweep(tmp_path):
    space, marker = _space(tmp_path), tmp_path / "in-trial-1"
    common = [*map(str, SWEEP), "--iters", "8", "--space", str(space), "--trials", "3", "--ranks-per-trial", "2"]
    killed, full = tmp_path / "killed", tmp_path / "full"
    script = tmp_path / "pausing.py"
    script.write_text(PAUSING.format(marker=marker, argv=["tune", *common, "--out", str(killed)]))
    proc = subprocess.Popen([mpiexec(), "-n", "2", sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env())
    deadline = time.monotonic() + 180
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert marker.exists(), proc.communicate(timeout=60)
    proc.send_signal(signal.SIGTERM)  # to mpiexec, which forwards it to every rank
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stdout + stderr
    assert "stopped by SIGTERM" in stderr and "--resume" in stderr and "Traceback" not in stderr
    before = _trials(killed)
    assert [r["state"] for r in before] == ["complete", "running"], before
    assert (killed / "trials" / "0001" / "checkpoints" / "latest").exists()

    _ok(run_admm(2, "tune", *common, "--resume", "--out", killed, timeout=300))
    _ok(run_admm(2, "tune", *common, "--out", full, timeout=300))
    after, reference = _trials(killed), _trials(full)
    assert after[0] == before[0]                                    # the finished trial is kept as it was
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in after] == \
           [{k: v for k, v in r.items() if k not in drop} for r in reference]
    resumed = json.loads((killed / "trials" / "0001" / "summary.json").read_text())
    assert resumed["first_iteration"] > 2 and resumed["resumed_from"]  # continued from its checkpoint
    for number in ("0000", "0001", "0002"):
        assert _same_weights(killed / "trials" / number, full / "trials" / number), number
    assert _same_weights(killed / "best", full / "best")


def test_a_second_sweep_on_one_directory_is_refused(tmp_path):
    out = tmp_path / "sweep"
    _ok(run_admm(1, "tune", *SWEEP, "--iters", 1, "--space", _space(tmp_path), "--trials", 1, "--out", out))
    again = run_admm(1, "tune", *SWEEP, "--iters", 1, "--space", _space(tmp_path), "--trials", 1, "--out", out)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"admm-mpi: error: {out} holds a sweep: pass --resume to continue it, or choose another --out"]
    # a running sweep holds the directory's lock: a second one is refused before it trains
    from admm_mpi.grid import Grid
    from admm_mpi.rundir import RunDirectory

    held = RunDirectory(str(out)).open(Grid.serial(), resuming=True)
    try:
        busy = run_admm(1, "tune", *SWEEP, "--space", _space(tmp_path), "--resume", "--out", out)
    finally:
        held.close()
    assert busy.returncode == 2 and "is in use by another job" in busy.stderr, busy.stderr
    assert len(_trials(out)) == 1


def test_a_sweep_recorded_before_a_setting_existed_resumes_and_other_settings_are_refused(tmp_path):
    """sweep.json from an older version lacks a setting added since: it ran with that setting's
    default, so resuming with the default continues it; any other difference is named and refused."""
    out = tmp_path / "sweep"
    space = _space(tmp_path)
    _ok(run_admm(1, "tune", *SWEEP, "--iters", 1, "--space", space, "--trials", 1, "--out", out))
    record = json.loads((out / "sweep.json").read_text())
    del record["settings"]["eval_train"]  # as written before --eval-train existed
    (out / "sweep.json").write_text(json.dumps(record))
    _ok(run_admm(1, "tune", *SWEEP, "--iters", 1, "--space", space, "--trials", 2, "--resume", "--out", out))
    assert len(_trials(out)) == 2
    other = run_admm(1, "tune", *SWEEP, "--iters", 1, "--eval-train", "never", "--space", space, "--trials", 3,
                     "--resume", "--out", out)
    assert other.returncode == 2 and other.stderr.strip().splitlines() == [
        f"admm-mpi: error: {out} holds a sweep with other settings (eval_train differ); resume it with the same "
        "command, or choose another --out"], other.stderr
    assert len(_trials(out)) == 2


# ---- pruning -----------------------------------------------------------------------------------
@needs_optuna
def test_pruning_decisions_are_recorded_in_the_trials_table(tmp_path):
    """Width 1 cannot separate ten digits: the median pruner stops those trials at its first
    step after warm-up, once two trials have completed, and the table says so."""
    out = tmp_path / "sweep"
    space = _space(tmp_path, '[space]\nhidden = { choices = ["16", "1"] }\n')
    _ok(run_admm(1, "tune", "--solver", "minibatch_am", "--iters", 4, "--sampler", "random", "--pruner", "median",
                 "--seed", 3, "--no-progress", "--space", space, "--trials", 8, "--out", out, timeout=300))
    rows = _trials(out)
    assert any(r["state"] == "pruned" for r in rows), rows
    completed = {"16": 0, "1": 0}  # complete trials so far, by width
    for r in rows:
        trial = json.loads((out / "trials" / f"{int(r['trial']):04d}" / "summary.json").read_text())
        if r["state"] == "pruned":
            assert trial["stopped"] == "pruned" and int(r["epochs"]) == trial["iterations"] < 4
            assert r["validation_accuracy"] == "" and len(r["validation_by_epoch"].split()) == int(r["epochs"])
            assert r["hidden"] == "1" and sum(completed.values()) >= 2  # MedianPruner(n_startup_trials=2)
        else:
            assert r["state"] == "complete" and trial["iterations"] == 4
            # below the median of the complete trials, a width-1 trial must have been stopped
            assert not (r["hidden"] == "1" and completed["16"] > completed["1"] >= 0 and
                        sum(completed.values()) >= 2), f"a width-1 trial ran to the end: {rows}"
            completed[r["hidden"]] += 1


def test_on_evaluation_returning_true_stops_a_run_as_pruned(tmp_path):
    from admm_mpi.config import TrainConfig
    from admm_mpi.grid import Grid
    from admm_mpi.train import train

    seen = []

    def on_evaluation(iteration, scores):
        seen.append((iteration, scores["validation_accuracy"]))
        return iteration == 2

    config = TrainConfig.from_settings(hidden=(8,), iters=5, out=str(tmp_path / "run"), progress=False)
    summary = train(config, Grid.serial(), on_evaluation=on_evaluation).summary
    assert [i for i, _ in seen] == [1, 2] and all(0 < a <= 1 for _, a in seen)
    assert summary["stopped"] == "pruned" and summary["iterations"] == 2
    assert json.loads((tmp_path / "run" / "finished.json").read_text())["stopped"] == "pruned"


# ---- bad search spaces: one line, exit 2, nothing trained -------------------------------------
BAD_SPACES = {
    "unknown setting": ('[space]\nbetta = { low = 0.1, high = 1.0 }\n', "unknown setting 'betta'"),
    "empty range": ('[space]\nbeta = { low = 1.0, high = 0.1 }\n', "beta: empty range (low 1.0 > high 0.1)"),
    "log through 0": ('[space]\nridge = { low = 0.0, high = 0.1, log = true }\n',
                      "ridge: a log range must lie above 0, got low 0.0"),
    "conditional on a missing choice": (
        '[space]\nsolver = { choices = ["minibatch_am", "taylor"] }\n'
        'warm_start = { low = 1, high = 5, when = { solver = "dladmm" } }\n',
        "warm_start is conditional on solver = 'dladmm', which is not one of its choices"),
    "setting of another solver": ('[space]\nwarm_start = { low = 1, high = 5 }\n', "has no setting warm_start"),
    "value the setting refuses": ('[space]\nbatch_size = { choices = [128, -5] }\n', "batch_size = -5"),
    "not TOML": ('[space\n', "cannot read search space"),
    "fixed setting": ('[space]\nseed = { low = 0, high = 3 }\n', "seed cannot be searched"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPACES))
def test_a_bad_space_file_is_one_line_and_exit_2_before_any_training(tmp_path, case, capsys):
    from admm_mpi.cli import main

    text, message = BAD_SPACES[case]
    out = tmp_path / "sweep"
    assert main(["tune", "--space", str(_space(tmp_path, text)), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("admm-mpi: error: ") and message in err[0], err
    assert not (out / "trials").exists()


def test_a_bad_space_ends_every_rank_of_a_job_with_one_line(tmp_path):
    text, message = BAD_SPACES["empty range"]
    proc = run_admm(2, "tune", "--space", _space(tmp_path, text), "--out", tmp_path / "sweep", "--no-progress")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"admm-mpi: error: {tmp_path / 'space.toml'}: {message}"]
    assert not (tmp_path / "sweep").exists()


def test_the_built_in_spaces_are_valid_for_every_solver():
    from admm_mpi.search_space import load_space
    from admm_mpi.solvers import SOLVERS

    for solver in SOLVERS:
        space = load_space(None, {"solver": solver})
        names = {d.name for d in space.dimensions}
        assert "hidden" in names and names & {"ridge", "mu"}, (solver, names)


def test_without_optuna_a_random_search_runs_and_resumes_from_its_journal(tmp_path):
    """The fallback: Optuna made unimportable; the draws come from the seed and the trial number."""
    shim = tmp_path / "shim" / "optuna"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text('raise ImportError("optuna hidden by the test")\n')
    env = child_env(PYTHONPATH=f"{tmp_path / 'shim'}:{child_env().get('PYTHONPATH', '')}")
    out, space = tmp_path / "sweep", _space(tmp_path)
    first = _ok(run_admm(2, "tune", *SWEEP, "--space", space, "--trials", 2, "--out", out, env=env, timeout=300))
    assert "Optuna is not installed" not in first.stderr  # --sampler random --pruner none: nothing is lost
    more = _ok(run_admm(2, "tune", "--solver", "minibatch_am", "--iters", 3, "--no-progress", "--space", space,
                        "--trials", 3, "--resume", "--out", out, "--sampler", "random", "--pruner", "none",
                        env=env, timeout=300))
    rows = _trials(out)
    assert [r["state"] for r in rows] == ["complete"] * 3 and "trial 2 " in more.stdout
    assert [r["trial"] for r in rows] == ["0", "1", "2"]
    assert len({(r["hidden"], r["beta"], r["ridge"]) for r in rows}) == 3  # three different draws
    events = [json.loads(line) for line in (out / "journal.log").read_text().splitlines()]
    assert {e["number"] for e in events} == {0, 1, 2}  # the fallback's journal, not Optuna's
    best = max(rows, key=lambda r: (float(r["validation_accuracy"]), -int(r["trial"])))
    assert _same_weights(out / "best", out / "trials" / f"{int(best['trial']):04d}")


def test_the_guide_s_example_space_is_valid(tmp_path):
    import re

    from admm_mpi.search_space import load_space

    guide = (REPO / "docs" / "guide" / "tune.md").read_text()
    example = re.search(r"```toml\n(\[space\].*?)```", guide, re.S).group(1)
    space = load_space(str(_space(tmp_path, example)), {})
    assert [d.name for d in space.dimensions if d.when] == ["batch_size", "step_decay", "warm_start"]


# ---- Slurm: launch/tune.sbatch, requeued mid-sweep --------------------------------------------
def test_tune_sbatch_requeued_mid_sweep_resumes_and_finishes(slurm, tmp_path):
    """A private one-node Slurm (tests/test_launch.py): the sweep is requeued while trials run;
    the requeued job resumes the interrupted ones from their checkpoints and finishes the sweep."""
    if OPTUNA is not None:
        pytest.skip(OPTUNA)
    sweep = tmp_path / "sweep"
    env = dict(slurm, ADMM_TUNE_DIR=str(sweep))
    args = ["--space", str(_space(tmp_path)), "--trials", "4", "--iters", "40", "--no-early-stopping",
            "--sampler", "random", "--pruner", "none"]
    job = subprocess.run(["sbatch", "--parsable", str(REPO / "launch" / "tune.sbatch"), *args], cwd=tmp_path,
                         capture_output=True, text=True, env=env, check=True).stdout.strip().split(";")[0]
    log = tmp_path / f"admm-mpi-tune-{job}.out"
    started = sweep / "trials" / "0001" / "metrics.jsonl"
    assert _wait(lambda: started.exists() and len(started.read_text().splitlines()) >= 2, 180)
    subprocess.run(["scontrol", "requeue", job], check=True, env=env)  # as pre-emption does
    assert _wait(lambda: "restart 1" in log.read_text(), 240, step=2) or \
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env).returncode == 0 and \
        _wait(lambda: "restart 1" in log.read_text(), 240, step=2)
    assert _wait(lambda: _job_state(job, env) in ("COMPLETED", "FAILED", "GONE"), 400, step=2)
    text = log.read_text()
    assert _job_state(job, env) in ("COMPLETED", "GONE"), text
    rows = _trials(sweep)
    assert [r["state"] for r in rows] == ["complete"] * 4, text
    summaries = [json.loads((sweep / "trials" / f"{n:04d}" / "summary.json").read_text()) for n in range(4)]
    assert any(s["resumed_from"] for s in summaries), text  # continued from a checkpoint, not restarted
    assert all(s["iterations"] == 40 for s in summaries)
    assert (sweep / "best" / "model.h5").exists()


FAILING = """
import sys
from admm_mpi import train as T
from admm_mpi.cli import main
from admm_mpi.errors import TrainingError

original = T._Run.iteration_step
def iteration_step(self, iteration):
    if self.config.out.endswith("0001") and iteration == 2:
        raise TrainingError("training diverged at iteration 2 (injected)")
    return original(self, iteration)
T._Run.iteration_step = iteration_step
sys.exit(main({argv!r}))
"""


@needs_optuna
def test_a_failed_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    out, script = tmp_path / "sweep", tmp_path / "failing.py"
    script.write_text(FAILING.format(argv=["tune", *map(str, SWEEP), "--space", str(_space(tmp_path)),
                                           "--trials", "3", "--out", str(out)]))
    proc = _ok(subprocess.run([mpiexec(), "-n", "2", sys.executable, str(script)], capture_output=True, text=True,
                              timeout=300, env=child_env()))
    rows = _trials(out)
    assert [r["state"] for r in rows].count("failed") == 1 and len(rows) == 3, rows
    failed = next(r for r in rows if r["state"] == "failed")
    assert failed["trial"] == "1" and "injected" in failed["message"]
    assert "trial 1 failed (training diverged at iteration 2 (injected))" in proc.stdout


@pytest.mark.parametrize("flags, message", [
    (["--data", "/nonexistent/set.h5"], "data file /nonexistent/set.h5 does not exist"),
    (["--validation-fraction", "0"], "admm-mpi tune compares trials on validation accuracy"),
])
def test_data_that_cannot_serve_a_sweep_is_one_line_before_any_trial(tmp_path, flags, message):
    out = tmp_path / "sweep"
    proc = run_admm(2, "tune", *flags, "--space", _space(tmp_path), "--out", out, "--no-progress")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (out / "trials").exists()


@needs_optuna
def test_the_journal_syncs_state_changes_not_each_intermediate_value(tmp_path, monkeypatch):
    from admm_mpi.search_space import load_space
    from admm_mpi.tune import OptunaEngine

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    engine = OptunaEngine(str(tmp_path), "random", "median", 0, 10)
    space = load_space(None, {"solver": "minibatch_am"})
    number, _ = engine.ask(space)
    after_ask = len(synced)
    assert after_ask >= 1  # the new trial and its parameters are on disk
    for step in range(1, 11):
        engine.report(number, step, 0.5 + step / 100)
    assert len(synced) == after_ask  # ten intermediate values: written, not synced
    engine.tell(number, "complete", 0.6)
    assert len(synced) > after_ask
    # another engine on the same folder (a resumed sweep) reads every value back
    (trial,) = OptunaEngine(str(tmp_path), "random", "median", 0, 10).study.get_trials()
    assert trial.intermediate_values == {step: 0.5 + step / 100 for step in range(1, 11)} and trial.value == 0.6
