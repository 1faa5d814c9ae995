"""Time to a test-accuracy target: ADMM's validation-selected recipe against PyTorch SGD and Adam, tuned as hard.

    pip install -e ".[bench]"        # torch==2.13.0 (CPU), matplotlib, threadpoolctl
    python bench/time_to_accuracy.py --problems digits                 # the whole protocol on digits
    python bench/time_to_accuracy.py --problems mnist --widths recipe  # MNIST, the recipe's widths only
    python bench/time_to_accuracy.py --quick --out DIR                 # seconds: digits, tiny (CI)

Problems and targets: the bundled digits to 0.97, MNIST (../shared/data/mnist) to 0.97 and 0.98,
Fashion-MNIST (Debian's dataset-fashion-mnist) to 0.88, test accuracy; a data set whose files are
absent is skipped with the reason.

The same rows and the same cadence on both sides:

- the validation rows are those ADMM's recipe holds out (``admm_mpi.data.validation_rows`` at the
  recipe's validation fraction and seed: digits 10 %, MNIST and Fashion-MNIST 10 000 of 60 000);
  both sides train on the rest (the result records both sides' training rows, and the run stops if
  they differ);
- both are scored on the validation and test rows once per epoch (ADMM: once per iteration, an
  epoch of its mini-batches), outside the clock: the clock is training only (ADMM: the sum of
  metrics.jsonl ``step_seconds``; PyTorch: its optimiser loop);
- the same epoch budget (``max_epochs``: the recipe's iterations) on both sides.

ADMM runs its validation-selected recipe: ``configs/<data>-minibatch_am.toml`` (chosen by
bench/select_recipe.py, bench/results/selection_<data>.json); on digits the package's defaults
(chosen on the public suite by validation, bench/results/suite.md), each as ``mpiexec -n 2 admm-mpi
train ... --no-early-stopping --eval-test every`` (one BLAS thread per rank), run until both its
validation and its test accuracy reach the problem's highest target.

PyTorch (``torch.set_num_threads(--torch-threads)``, the same for selection and timing; default 2:
the two cores ADMM's two ranks use): SGD with momentum 0.9 and Adam, batches of 128,
cross-entropy, each with a constant learning rate and with the standard schedule (``+warmup_cosine``:
linear warm-up over the first ``WARMUP_EPOCHS`` epoch(s), then cosine decay to 0 at ``max_epochs``).
Per optimiser, schedule, network and target the learning rate is chosen on the validation rows: the
one that reaches the target in the fewest epochs (ties: the higher validation accuracy there; none
reaches it: the best validation accuracy). The grid starts at three rates half a decade apart and
is widened past whichever end holds a pick until every pick is interior (``--max-lrs`` at most;
``interior`` in the result). The selection runs never see the test rows; once every target has been
reached by some rate, a new rate stops after the epoch it would have to beat (``stop_after``: it can
no longer be a pick, so the picks are those of full runs).

Timing: ``--repeats`` (>= 3) rounds, interleaved in one invocation: in each round ADMM at every
candidate width, then every chosen (optimiser, schedule, lr) at every width, with seed = round.
Per target and method, the medians of the rounds' validation and test seconds. Two tables:

- same network: both at the recipe's widths; PyTorch's optimiser/schedule is the one with the
  smallest median validation seconds;
- each side's best network: the same small set of candidate widths (``PROBLEMS[...]["widths"]``)
  for both; per side the (width, optimiser) with the smallest median validation seconds.

Both report the ratio of the medians of test seconds (``ratio_of_medians``: ADMM / PyTorch). The
machine this runs on is shared with other jobs: the 1-minute load average is recorded at the start
of every run and (1, 5, 15-minute) before and after the invocation.

A problem that outlasts one sitting (MNIST: hours) takes ``--progress bench/progress``: every finished
learning-rate grid and timing round is kept there and the same command continues from it; the result
lists the invocations that made it (commit and load averages of each).

Writes results/time_to_accuracy.json (merged by problem), time_to_accuracy.md and
time_to_accuracy_<problem>.png; with --out DIR, the same files in DIR.
"""

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import (REPO, RESULTS, SOURCES, TORCH_BATCH, data_file, load_samples, mpiexec, portable, read_result,
                    run_record, selection_key, torch_accuracy, torch_mlp, widen_until_interior, write_result)
from common import learning_rate_factor as schedule_factor, write_progress

SOLVER = "minibatch_am"
PROBLEMS = {
    "digits": {"targets": (0.97,), "max_epochs": 60, "cap_seconds": 120,
               "widths": ((128, 128), (256, 256), (512, 512))},
    "mnist": {"targets": (0.97, 0.98), "max_epochs": 40, "cap_seconds": 1800,
              "widths": ((1000, 1000), (4000, 1000), (8000, 1000))},
    "fashion_mnist": {"targets": (0.88,), "max_epochs": 40, "cap_seconds": 1800,
                      "widths": ((1000, 1000), (4000, 1000), (8000, 1000))},
}
OPTIMISERS = ("sgd_momentum", "adam")
SCHEDULES = ("constant", "warmup_cosine")
LR_START = {"sgd_momentum": 0.1, "adam": 1e-3, "lbfgs": 1.0}  # the grid's first rate (widened from there)
WARMUP_EPOCHS = 1
EVALS_PER_EPOCH = 1  # ADMM's cadence: one evaluation per iteration (an epoch)
LBFGS_ITERATIONS_PER_STEP = 5  # full-batch iterations between two evaluations
QUICK = {"targets": (0.9,), "widths": ((32,),), "cap_seconds": 20, "max_lrs": 4, "admm_iters": 4}


def time_to_target(curve, target, key="test_accuracy"):
    """Training seconds at the first point of ``curve`` (dicts with ``seconds``) with ``key`` >= target."""
    point = first_at(curve, target, key)
    return None if point is None else point["seconds"]


def first_at(curve, target, key):
    return next((p for p in curve if p.get(key) is not None and p[key] >= target), None)


def load_averages():
    return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------- ADMM


def recipe(problem):
    """(config file or None, the resolved recipe): ``configs/<problem>-minibatch_am.toml``; digits: the defaults."""
    from admm_mpi.config import resolve

    config_file = None if problem == "digits" else REPO / "configs" / f"{problem}-{SOLVER}.toml"
    return config_file, resolve(file=config_file, cli={"solver": SOLVER}, environ={})


def admm_command(problem, data, out, hidden=None, iters=None):
    config_file, _ = recipe(problem)
    source = ["--config", str(config_file.relative_to(REPO))] if config_file else ["--solver", SOLVER]
    return [mpiexec(), "-n", "2", sys.executable, "-m", "admm_mpi", "train", *source, "--data", data,
            *(["--hidden", ",".join(map(str, hidden))] if hidden else []),
            *(["--iters", str(iters)] if iters else []),
            "--no-early-stopping", "--eval-test", "every", "--no-progress", "--out", str(out)]


def read_curve(metrics):
    """(epoch, training seconds so far, validation and test accuracy) of each row of a metrics.jsonl."""
    curve, clock = [], 0.0
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            row = json.loads(line)
            clock += row["step_seconds"]
            curve.append({"epoch": row["iteration"], "seconds": round(clock, 4),
                          "validation_accuracy": row.get("validation_accuracy"), "test_accuracy": row["test_accuracy"]})
    return curve


def reached_all(curve, target):
    return all(first_at(curve, target, key) for key in ("validation_accuracy", "test_accuracy"))


def run_admm(problem, data, tmp, stop_at, hidden=None, iters=None, timeout=6 * 3600):
    """One ADMM run under mpiexec (its own process group); stopped by SIGTERM (it finishes its batch and
    writes its summary) once both its validation and its test accuracy have reached ``stop_at``: the
    rest of the curve would not change a time to target."""
    out = Path(tempfile.mkdtemp(prefix=f"{problem}-admm-", dir=tmp)) / "run"  # a fresh directory per run
    cmd = admm_command(problem, data, out, hidden, iters)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               MPIEXEC_TIMEOUT=str(timeout))
    load, t0, stopped = load_averages()[0], time.perf_counter(), None
    with open(out.parent / "log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        while proc.poll() is None:
            time.sleep(0.5)
            curve = read_curve(out / "metrics.jsonl")
            if curve and reached_all(curve, stop_at):
                stopped = f"validation and test accuracy >= {stop_at} at epoch {curve[-1]['epoch']}"
            elif time.perf_counter() - t0 > timeout:
                stopped = f"wall-time limit {timeout} s"
            if stopped:
                os.killpg(proc.pid, signal.SIGTERM)  # the job's own group: mpiexec, its proxy, the ranks
                try:
                    proc.wait(timeout=600)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    summary = out / "summary.json"
    if not summary.exists():
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{(out.parent / 'log').read_text()[-3000:]}")
    command = " ".join(["OMP_NUM_THREADS=1", "mpiexec", *cmd[1:3], "admm-mpi", *cmd[6:-2]])
    return {"method": "ADMM " + SOLVER, "widths": list(hidden or recipe(problem)[1].hidden), "command": command,
            "n_train": json.loads(summary.read_text())["n_train"], "load_average_1min": load,
            "stopped": stopped or "iterations done", "curve": read_curve(out / "metrics.jsonl")}


# ---------------------------------------------------------------- PyTorch


def split_validation(arrays, fraction, seed):
    """{"train", "validation", "test"}: (X, y) each; the validation rows those admm-mpi holds out at
    ``--validation-fraction fraction --seed seed``."""
    from admm_mpi.data import validation_rows

    X, y, X_test, y_test = arrays
    held = validation_rows(y, fraction, seed)
    keep = np.setdiff1d(np.arange(X.shape[0]), held)
    return {"train": (X[keep], y[keep]), "validation": (X[held], y[held]), "test": (X_test, y_test)}


class TorchRun:
    """One optimiser at one learning rate: the clock (training only) and the evaluated curve."""

    def __init__(self, model, splits, stop_at, cap_seconds, keys, stop_after=None):
        self.model, self.splits, self.stop_at, self.cap, self.keys = model, splits, stop_at, cap_seconds, keys
        self.stop_after, self.clock, self.curve = stop_after, 0.0, []

    def evaluate(self, epoch):
        """Record a point (outside the clock); True when the run should stop (every scored split has
        reached ``stop_at``, the training-time cap, or epoch ``stop_after``)."""
        point = {"epoch": round(epoch, 4), "seconds": round(self.clock, 4)}
        for key in ("validation_accuracy", "test_accuracy"):
            split = key.split("_")[0]
            point[key] = torch_accuracy(self.model, *self.splits[split]) if key in self.keys else None
        self.curve.append(point)
        return all(first_at(self.curve, self.stop_at, key) for key in self.keys) or self.clock >= self.cap or \
            (self.stop_after is not None and epoch >= self.stop_after)


def learning_rate_factor(schedule, step, steps_per_epoch, max_epochs):
    """The multiplier of the base learning rate at ``step`` (from 1): constant, or linear warm-up over
    WARMUP_EPOCHS epochs then cosine decay to 0 at ``max_epochs``."""
    return schedule_factor(schedule, step, steps_per_epoch, max_epochs, WARMUP_EPOCHS)


def train_minibatch(run, optimiser, lr, max_epochs, seed, schedule="constant"):
    import torch

    X, y = run.splits["train"]
    opt = (torch.optim.Adam(run.model.parameters(), lr=lr) if optimiser == "adam"
           else torch.optim.SGD(run.model.parameters(), lr=lr, momentum=0.9))
    loss_fn = torch.nn.CrossEntropyLoss()
    n = X.shape[0]
    batches = -(-n // TORCH_BATCH)
    g = torch.Generator().manual_seed(seed)
    step = 0
    for epoch in range(max_epochs):
        perm = torch.randperm(n, generator=g)
        t0 = time.perf_counter()
        for k in range(batches):
            step += 1
            for group in opt.param_groups:
                group["lr"] = lr * learning_rate_factor(schedule, step, batches, max_epochs)
            idx = perm[k * TORCH_BATCH:(k + 1) * TORCH_BATCH]
            opt.zero_grad()
            loss_fn(run.model(X[idx]), y[idx]).backward()
            opt.step()
            if (k + 1) * EVALS_PER_EPOCH // batches > k * EVALS_PER_EPOCH // batches:  # evenly, the last batch too
                run.clock += time.perf_counter() - t0
                if run.evaluate(epoch + (k + 1) / batches):
                    return
                t0 = time.perf_counter()


def train_lbfgs(run, lr, max_iterations):
    import torch

    X, y = run.splits["train"]
    # Five iterations per step: at max_iter=1 torch's L-BFGS stalls (its step length became 0 after a
    # few steps on digits, loss 0.27 after 40 iterations; 0.019 at five per step).
    opt = torch.optim.LBFGS(run.model.parameters(), lr=lr, max_iter=LBFGS_ITERATIONS_PER_STEP, history_size=20,
                            line_search_fn="strong_wolfe")
    loss_fn = torch.nn.CrossEntropyLoss()

    def closure():
        opt.zero_grad()
        loss = loss_fn(run.model(X), y)
        loss.backward()
        return loss

    for _ in range(max_iterations // LBFGS_ITERATIONS_PER_STEP):
        t0 = time.perf_counter()
        opt.step(closure)
        run.clock += time.perf_counter() - t0
        if run.evaluate(opt.state[opt._params[0]]["n_iter"]):  # the "epoch" of an L-BFGS point: iterations
            return


def train_torch(widths, optimiser, lr, splits, stop_at, cap_seconds, max_epochs, seed=0, threads=2,
                schedule="constant", score_test=True, stop_after=None):
    """Train the MLP ``widths`` with one optimiser at one learning rate; returns its record. Without
    ``score_test`` (selection) the test rows are never evaluated; ``stop_after``: stop after that epoch
    (the schedule still spans ``max_epochs``)."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    tensors = {k: (torch.from_numpy(np.ascontiguousarray(X)), torch.from_numpy(np.asarray(y, np.int64)))
               for k, (X, y) in splits.items()}
    keys = ("validation_accuracy", "test_accuracy") if score_test else ("validation_accuracy",)
    load = load_averages()[0]
    run = TorchRun(torch_mlp(widths), tensors, stop_at, cap_seconds, keys, stop_after)
    if optimiser == "lbfgs":
        train_lbfgs(run, lr, max_epochs * 10)
    else:
        train_minibatch(run, optimiser, lr, max_epochs, seed, schedule)
    return {"optimiser": optimiser, "schedule": schedule, "lr": lr, "widths": list(widths), "threads": threads,
            "load_average_1min": load, "cap_seconds": cap_seconds, "cap_hit": run.clock >= cap_seconds,
            "stop_after": stop_after, "curve": run.curve}


def run_torch(problem, optimiser, arrays, seed=0):
    """bench/accuracy.py's PyTorch reference: ``problem["epochs"]`` epochs of ``optimiser`` at lr 1e-3
    on all training rows; [(seconds, test accuracy)] once per epoch."""
    X, y, X_test, y_test = arrays
    splits = {"train": (X, y), "validation": (X_test[:1], y_test[:1]), "test": (X_test, y_test)}
    widths = [X.shape[1], *problem["hidden"], int(y.max()) + 1]
    record = train_torch(widths, optimiser, 1e-3, splits, stop_at=2.0, cap_seconds=float("inf"),
                         max_epochs=problem["epochs"], seed=seed)
    return [(p["seconds"], p["test_accuracy"]) for p in record["curve"]]


def choose_lr(runs, target):
    """The run (one optimiser, schedule and network; several lrs) chosen on the validation rows, and how."""
    best = min(runs, key=lambda r: selection_key(r["curve"], target))  # min keeps the first of equals
    if selection_key(best["curve"], target)[0] == 0:
        return best, "fewest epochs to the target on the validation rows"
    return best, "best validation accuracy (no lr reached the target on the validation rows)"


def tune_lr(widths, optimiser, schedule, splits, spec, args):
    """The learning rate of one (optimiser, schedule, network) per target, on validation only: the grid
    widened until every target's pick is interior. Returns the selection record."""
    targets, stop_at = spec["targets"], max(spec["targets"])
    runs = []

    def run(lr):
        record = train_torch(widths, optimiser, lr, splits, stop_at, spec["cap_seconds"], spec["max_epochs"],
                             threads=args.torch_threads, schedule=schedule, score_test=False,
                             stop_after=prune_after(runs, targets))
        runs.append(record)
        print(f"  select {optimiser}+{schedule} {'-'.join(map(str, widths[1:-1]))} lr {lr:g}: epochs to "
              f"{[(first_at(record['curve'], t, 'validation_accuracy') or {}).get('epoch') for t in targets]} "
              f"load {record['load_average_1min']}", flush=True)

    grid, interior = widen_until_interior(run, lambda: [choose_lr(runs, t)[0]["lr"] for t in targets],
                                          LR_START[optimiser], max_points=args.max_lrs)
    picks = {}
    for target in targets:
        chosen, how = choose_lr(runs, target)
        point = first_at(chosen["curve"], target, "validation_accuracy")
        picks[str(target)] = {"lr": chosen["lr"], "chosen_by": how, "validation_epochs": point and point["epoch"]}
    return {"optimiser": optimiser, "schedule": schedule, "widths": list(widths), "lr_grid": grid,
            "interior": interior, "picks": picks,
            "runs": [{k: r[k] for k in ("lr", "cap_hit", "stop_after", "load_average_1min", "curve")} for r in runs]}


def prune_after(runs, targets):
    """The epoch after which a new learning rate can no longer be any target's pick: once every target has
    been reached on validation, the latest of their fewest epochs (None before: no pruning)."""
    firsts = [[p["epoch"] for r in runs if (p := first_at(r["curve"], t, "validation_accuracy"))] for t in targets]
    return max(min(f) for f in firsts) if all(firsts) else None


# ---------------------------------------------------------------- one problem


def problem_data(problem, cache):
    """The data file of ``problem`` (converted on first use), or (None, reason) when its files are absent."""
    if problem == "digits":
        return "digits", None
    path = data_file(problem, cache)
    return (path, None) if path else (None, f"its IDX files are not in {portable(str(SOURCES[problem]))}")


def method_name(widths, optimiser=None, schedule=None, lr=None):
    mlp = "-".join(map(str, widths))
    if optimiser is None:
        return f"ADMM {SOLVER} {mlp}"
    return f"PyTorch {optimiser}+{schedule} lr {lr:g} {mlp}"


def run_problem(problem, data, args, tmp):
    spec = dict(PROBLEMS[problem])
    _, config = recipe(problem)
    recipe_hidden = tuple(config.hidden)
    if args.quick:
        spec.update(QUICK)
        recipe_hidden = QUICK["widths"][0]
    elif args.widths == "recipe":
        spec["widths"] = (recipe_hidden,)
    elif args.widths != "candidates":
        spec["widths"] = tuple(tuple(int(n) for n in w.split("-")) for w in args.widths.split(","))
    if recipe_hidden not in spec["widths"]:
        spec["widths"] = (recipe_hidden, *spec["widths"])
    admm_iters = QUICK["admm_iters"] if args.quick else None
    spec["max_epochs"] = admm_iters or config.iters  # both sides: the recipe's epoch budget
    targets, stop_at = spec["targets"], max(spec["targets"])
    arrays = load_samples(data)
    splits = split_validation(arrays, config.validation_fraction, config.seed)
    n_in, n_out = arrays[0].shape[1], int(arrays[1].max()) + 1
    entry = {"problem": problem, "targets": list(targets), "recipe_widths": list(recipe_hidden),
             "candidate_widths": [list(w) for w in spec["widths"]], "max_epochs": spec["max_epochs"],
             "cap_seconds": spec["cap_seconds"], "validation_fraction": config.validation_fraction, "seed": config.seed,
             "torch_train_rows": int(splits["train"][1].size), "validation_rows": int(splits["validation"][1].size),
             "test_rows": int(splits["test"][1].size), "batch_size": TORCH_BATCH, "torch_threads": args.torch_threads,
             "evaluations_per_epoch": EVALS_PER_EPOCH, "warmup_epochs": WARMUP_EPOCHS,
             "load_averages_before": load_averages()}
    progress = Progress(args.progress and Path(args.progress) / f"time_to_accuracy-{problem}.json",
                        {**entry, "optimisers": args.optimisers, "schedules": args.schedules, "max_lrs": args.max_lrs})
    # selection: PyTorch's learning rates on validation, every (width, optimiser, schedule)
    entry["selection"] = [progress.selection([n_in, *w, n_out], o, s,
                                             lambda: tune_lr([n_in, *w, n_out], o, s, splits, spec, args))
                          for w in spec["widths"] for o in args.optimisers for s in args.schedules]
    chosen = sorted({(tuple(sel["widths"][1:-1]), sel["optimiser"], sel["schedule"], p["lr"])
                     for sel in entry["selection"] for p in sel["picks"].values()})
    # timing: interleaved rounds, seed = round
    rounds = progress.rounds
    for r in range(len(rounds), args.repeats):
        runs = {}
        for w in spec["widths"]:
            record = run_admm(problem, data, tmp, stop_at, w, admm_iters)
            if record["n_train"] != entry["torch_train_rows"]:
                raise RuntimeError(f"ADMM trained on {record['n_train']} rows, PyTorch on {entry['torch_train_rows']}")
            runs[method_name(w)] = times(record, targets)
        for w, optimiser, schedule, lr in chosen:
            record = train_torch([n_in, *w, n_out], optimiser, lr, splits, stop_at, spec["cap_seconds"],
                                 spec["max_epochs"], seed=r, threads=args.torch_threads, schedule=schedule)
            runs[method_name(w, optimiser, schedule, lr)] = times(record, targets)
        print(problem, "round", r, {m: v["test_seconds"] for m, v in runs.items()}, flush=True)
        progress.add_round(runs)
    entry["admm_command"] = record_command = admm_command(problem, data, "RUN", None, admm_iters)
    entry["admm_command"] = " ".join(["OMP_NUM_THREADS=1", "mpiexec", *record_command[1:3], "admm-mpi",
                                      *map(str, record_command[6:-2])])
    entry["rounds"] = rounds
    entry["load_averages_after"] = load_averages()
    entry["invocations"] = progress.invocations
    return summarise(entry)


class Progress:
    """What a long problem has finished so far, on disk (``--progress DIR``), so that a run stopped
    mid-way (a session's end, a reboot) is continued by the same command: each finished learning-rate
    grid and each finished timing round is written as it ends, with the commit and load averages of the
    invocation that made it (``invocations``, with its machine). The learning rates are chosen by epochs
    (only a run that hits the ``cap_seconds`` backstop depends on the machine: ``cap_hit``), so grids
    carry over between machines; seconds do not: rounds timed on another CPU, or on an unrecorded one,
    are set aside (``set_aside_rounds``) and the timing starts again. A file made under other settings (targets,
    widths, epoch budget, rows, threads) is refused, not mixed in. Without a directory nothing is kept."""

    SETTINGS = ("problem", "targets", "recipe_widths", "candidate_widths", "max_epochs", "cap_seconds",
                "validation_fraction", "seed", "torch_train_rows", "validation_rows", "test_rows", "batch_size",
                "torch_threads", "evaluations_per_epoch", "warmup_epochs", "optimisers", "schedules", "max_lrs")
    # read for a setting that a file written before it was recorded lacks: the value every run then had
    BEFORE_RECORDED = {"optimisers": list(OPTIMISERS), "schedules": list(SCHEDULES), "max_lrs": 7}

    def __init__(self, path, entry):
        self.path = path
        settings = {k: entry[k] for k in self.SETTINGS}
        self.state = {"settings": settings, "selection": [], "rounds": [], "invocations": []}
        if path and path.exists():
            state = json.loads(path.read_text())
            state["settings"] = {**self.BEFORE_RECORDED, **state["settings"]}
            if state["settings"] != settings:
                differ = sorted(k for k in settings if state["settings"].get(k) != settings[k])
                raise SystemExit(f"{portable(str(path))} was made under other settings ({', '.join(differ)}): "
                                 "move it away to start afresh")
            self.state = state
        record = run_record()
        cpu = record["machine"].get("cpu")
        if self.state["rounds"] and self.state.get("rounds_cpu") != cpu:
            # seconds are compared within a machine only: rounds timed on another one start again
            self.state.setdefault("set_aside_rounds", []).append(
                {"cpu": self.state.get("rounds_cpu"), "rounds": self.state["rounds"]})
            self.state["rounds"] = []
        self.state["rounds_cpu"] = cpu
        self.state["invocations"].append({"command": record["command"], "commit": record["commit"],
                                          "machine": record["machine"],
                                          "load_averages_before": entry["load_averages_before"],
                                          "selection_done": len(self.state["selection"]),
                                          "rounds_done": len(self.state["rounds"])})
        self._write()

    @property
    def rounds(self):
        return self.state["rounds"]

    @property
    def invocations(self):
        return self.state["invocations"]

    def selection(self, widths, optimiser, schedule, tune):
        for done in self.state["selection"]:
            if (done["widths"], done["optimiser"], done["schedule"]) == (list(widths), optimiser, schedule):
                return done
        record = tune()
        self.state["selection"].append(record)
        self._write()
        return record

    def add_round(self, runs):
        self.state["rounds"].append(runs)
        self._write()

    def _write(self):
        if self.path:
            write_progress(self.path, self.state)


def times(record, targets):
    """A timed run's seconds and epochs to each target on the validation and the test rows."""
    out = {"load_average_1min": record["load_average_1min"], "validation_seconds": {}, "test_seconds": {},
           "epochs": {}, "curve": record["curve"]}
    for t in targets:
        out["validation_seconds"][str(t)] = time_to_target(record["curve"], t, "validation_accuracy")
        out["test_seconds"][str(t)] = time_to_target(record["curve"], t)
        point = first_at(record["curve"], t, "test_accuracy")
        out["epochs"][str(t)] = point and point["epoch"]
    return out


def median_or_none(values):
    """The median over the rounds, a round that never reached the target counting as slower than any that
    did; None when the median itself is "never" (at least half of the rounds never reached it)."""
    if not values:
        return None
    middle = statistics.median(math.inf if v is None else v for v in values)
    return None if math.isinf(middle) else middle


def summarise(entry):
    """Per target and method the medians over the rounds; the two tables (same network, best network)."""
    methods = list(entry["rounds"][0])
    entry["summary"] = []
    recipe_mlp = "-".join(map(str, entry["recipe_widths"]))
    for target in map(str, entry["targets"]):
        medians = {m: {key: median_or_none([rnd[m][key][target] for rnd in entry["rounds"]])
                       for key in ("validation_seconds", "test_seconds", "epochs")} for m in methods}

        def fastest(names):
            """The method of ``names`` with the smallest median validation seconds (None: none reached it)."""
            timed = [(medians[m]["validation_seconds"], m) for m in names if medians[m]["validation_seconds"] is not None]
            return min(timed)[1] if timed else None

        admm = [m for m in methods if m.startswith("ADMM")]
        torch_ = [m for m in methods if m.startswith("PyTorch") and selected_for(entry, m, target)]
        tables = {}
        for table, pool in (("same_network", lambda m: m.endswith(" " + recipe_mlp)), ("best_network", lambda m: True)):
            a, p = fastest([m for m in admm if pool(m)]), fastest([m for m in torch_ if pool(m)])
            ta = a and medians[a]["test_seconds"]
            tp = p and medians[p]["test_seconds"]
            tables[table] = {"admm": a, "torch": p, "admm_median_test_seconds": ta, "torch_median_test_seconds": tp,
                             "ratio_of_medians": ta / tp if ta is not None and tp else None}
        entry["summary"].append({"target": float(target), "medians": {m: medians[m] for m in admm + torch_},
                                 **tables})
    return entry


def selected_for(entry, method, target):
    """Whether the PyTorch ``method`` (a name of method_name) is a pick of its selection for ``target``."""
    for sel in entry["selection"]:
        pick = sel["picks"][target]
        if method == method_name(sel["widths"][1:-1], sel["optimiser"], sel["schedule"], pick["lr"]):
            return True
    return False


# ---------------------------------------------------------------- results


def seconds(value):
    return "never" if value is None else f"{value:.2f} s"


def markdown(result):
    lines = ["# Time to accuracy: ADMM against PyTorch SGD and Adam, tuned on validation (2 cores)", "",
             "Generated by `python bench/time_to_accuracy.py` (each problem names its command and commit; "
             "protocol in the script's docstring). Every time is a median over interleaved rounds; the load "
             "averages before and after each problem are recorded (a 1-minute load above 0.5 before a problem: "
             "other jobs shared the 2 cores). Both sides train on the same rows (the ADMM recipe's validation rows held out), "
             "are scored once per epoch on validation and test outside the clock, with the same epoch budget; "
             "PyTorch's learning rate is chosen on validation per optimiser, schedule, network and target, on "
             "a grid widened until the pick is interior; the test rows only report.", ""]
    for entry in result["problems"]:
        lines += [f"## {entry['problem']}", ""]
        if entry.get("skipped"):
            lines += [f"skipped: {entry['skipped']}", ""]
            continue
        lines += [f"`{entry['command']}` at commit {entry['commit']}; ADMM: `{entry['admm_command']}` "
                  "(`--hidden` per candidate width).", "",
                  f"{entry['torch_train_rows']} training, {entry['validation_rows']} validation "
                  f"(admm-mpi's `--validation-fraction {entry['validation_fraction']:g}`, seed {entry['seed']}) and "
                  f"{entry['test_rows']} test rows; epoch budget {entry['max_epochs']}; PyTorch batch "
                  f"{entry['batch_size']}, {entry['torch_threads']} threads for selection and timing; candidate "
                  f"widths {', '.join('-'.join(map(str, w)) for w in entry['candidate_widths'])} (recipe: "
                  f"{'-'.join(map(str, entry['recipe_widths']))}). Load averages (1, 5, 15 min) before "
                  f"{entry['load_averages_before']}, after {entry['load_averages_after']}.", ""]
        for s in entry["summary"]:
            lines += [f"### target {s['target']:g} (test accuracy), medians of {len(entry['rounds'])} rounds", "",
                      "| table | ADMM (fastest on validation) | median test s | PyTorch (fastest on validation) | "
                      "median test s | ADMM / PyTorch (ratio of medians) |", "|---|---|---|---|---|---|"]
            for table in ("same_network", "best_network"):
                t = s[table]
                ratio = "—" if t["ratio_of_medians"] is None else f"**{t['ratio_of_medians']:.2f}×**"
                lines.append(f"| {table.replace('_', ' ')} | {t['admm']} | {seconds(t['admm_median_test_seconds'])} "
                             f"| {t['torch']} | {seconds(t['torch_median_test_seconds'])} | {ratio} |")
            lines += ["", "| method | median validation s | median test s | median epochs to target (test) |",
                      "|---|---|---|---|"]
            for m, v in s["medians"].items():
                epochs = "never" if v["epochs"] is None else f"{v['epochs']:g}"
                lines.append(f"| {m} | {seconds(v['validation_seconds'])} | {seconds(v['test_seconds'])} | {epochs} |")
            lines.append("")
        lines += ["Learning rates tried (selection on validation; the picks per target):", "",
                  "| network | optimiser + schedule | grid | picks (epochs to the target on validation) | interior |",
                  "|---|---|---|---|---|"]
        for sel in entry["selection"]:
            picks = "; ".join(f"{t}: lr {p['lr']:g} ({p['validation_epochs']})" for t, p in sel["picks"].items())
            lines.append(f"| {'-'.join(map(str, sel['widths']))} | {sel['optimiser']}+{sel['schedule']} | "
                         f"{', '.join(f'{lr:g}' for lr in sel['lr_grid'])} | {picks} | {'yes' if sel['interior'] else 'NO'} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(entry, directory):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    best = {entry["summary"][-1]["best_network"][side] for side in ("admm", "torch")} | \
        {entry["summary"][-1]["same_network"][side] for side in ("admm", "torch")}
    for method in sorted(m for m in best if m):
        curve = entry["rounds"][0][method]["curve"]
        ax.plot([p["seconds"] for p in curve], [p["test_accuracy"] for p in curve],
                linestyle="-" if method.startswith("ADMM") else "--", marker=".", label=method)
    for target in entry["targets"]:
        ax.axhline(target, color="grey", linestyle=":")
    ax.set_xscale("log")
    ax.set_ylim(max(0.0, min(entry["targets"]) - 0.15), 1.0)
    ax.set_xlabel("training seconds (2 cores, shared machine), round 0")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{entry['problem']}: time to accuracy (targets dotted)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)
    fig.tight_layout()
    path = Path(directory) / f"time_to_accuracy_{entry['problem']}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save(result, directory):
    """results/time_to_accuracy.json (with run_record: argv, commit, machine), .md and the PNGs.

    Merged by problem: the problems of an earlier run that this one did not run are kept (each
    problem records the command and commit that made it)."""
    directory = Path(directory)
    record = run_record()
    fresh = [{**e, "command": record["command"], "commit": record["commit"]} for e in result["problems"]]
    found = [p for p in (directory / "time_to_accuracy.json", directory / "time_to_accuracy.json.gz") if p.exists()]
    old = read_result(found[0]).get("problems", []) if found else []
    ran = {e["problem"] for e in fresh}
    keep = [e for e in old if e["problem"] not in ran and "rounds" in e]  # earlier protocols' entries are dropped
    problems = sorted(keep + fresh, key=lambda e: list(PROBLEMS).index(e["problem"]))
    result = portable({**result, "problems": problems, **record})
    path = write_result("time_to_accuracy", result, directory)  # gzipped when over 1 MiB
    (directory / "time_to_accuracy.md").write_text(markdown(result))
    return [path] + [plot(e, directory) for e in result["problems"] if not e.get("skipped")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="digits,mnist,fashion_mnist")
    parser.add_argument("--widths", default="candidates",
                        help="'candidates' (the problem's), 'recipe' (the recipe's widths only: the same-network "
                             "table alone) or a list such as 1000-1000,8000-1000 (the recipe's is always added)")
    parser.add_argument("--optimisers", default=",".join(OPTIMISERS), help="sgd_momentum, adam, lbfgs")
    parser.add_argument("--schedules", default=",".join(SCHEDULES), help="constant, warmup_cosine")
    parser.add_argument("--torch-threads", type=int, default=2,
                        help="torch.set_num_threads, for selection and timing alike (two: ADMM's two ranks' cores)")
    parser.add_argument("--max-lrs", type=int, default=7, help="learning rates per grid at most")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (medians; at least 3)")
    parser.add_argument("--quick", action="store_true", help="seconds: digits to 0.9, a 32-wide MLP, 4 epochs")
    parser.add_argument("--cache", default=str(REPO / "bench" / ".data"), help="converted data sets")
    parser.add_argument("--out", default=str(RESULTS), help="directory of the JSON, markdown and PNGs")
    parser.add_argument("--progress", default=None, metavar="DIR",
                        help="keep each finished grid and round in DIR/time_to_accuracy-<problem>.json and continue "
                             "from it: a long problem spread over several invocations (bench/progress)")
    args = parser.parse_args(argv)
    args.optimisers, args.schedules = args.optimisers.split(","), args.schedules.split(",")
    if args.widths not in ("candidates", "recipe") and \
            not all(w and all(n.isdigit() for n in w.split("-")) for w in args.widths.split(",")):
        parser.error(f"--widths: 'candidates', 'recipe' or widths such as 1000-1000,8000-1000, not {args.widths!r}")
    if args.repeats < 3:
        parser.error("--repeats: at least 3 (medians)")
    if "lbfgs" in args.optimisers and args.schedules != ["constant"]:
        parser.error("lbfgs takes --schedules constant")
    if args.quick:
        args.problems, args.max_lrs = "digits", QUICK["max_lrs"]
    import torch

    tmp = tempfile.mkdtemp(prefix="bench-tta-")
    result = {"benchmark": "time to accuracy", "torch": torch.__version__, "problems": []}
    paths = []
    for problem in args.problems.split(","):
        data, reason = problem_data(problem, args.cache)
        if data is None:
            print(f"skipping {problem}: {reason}", flush=True)
            result["problems"].append({"problem": problem, "skipped": reason})
            continue
        result["problems"].append(run_problem(problem, data, args, tmp))
        paths = save(result, args.out)  # after every problem: an interrupted run keeps what finished
    print("wrote", *map(str, paths))
    for e in result["problems"]:
        for s in e.get("summary", []):
            for table in ("same_network", "best_network"):
                t = s[table]
                print(f"{e['problem']} to {s['target']} ({table}): {t['admm']} {t['admm_median_test_seconds']} s, "
                      f"{t['torch']} {t['torch_median_test_seconds']} s, ratio {t['ratio_of_medians']}")


if __name__ == "__main__":
    main()
