"""Time to a test-accuracy target: every ADMM solver's best recipe against PyTorch SGD, Adam, L-BFGS.

    pip install -e ".[bench]"        # torch==2.13.0 (CPU), matplotlib, threadpoolctl
    python bench/time_to_accuracy.py                      # minibatch_am on every problem, the others on digits
    python bench/time_to_accuracy.py --solvers all        # every solver's MNIST / Fashion-MNIST recipe too
    python bench/time_to_accuracy.py --quick --out DIR    # seconds: digits, minibatch_am, one lr each
    python bench/time_to_accuracy.py --problems mnist --torch-from bench/results/time_to_accuracy.json \
        --repeats 3                                       # the chosen runs again, 3 interleaved rounds: medians

Problems and targets: the bundled digits to 0.97 (test accuracy), MNIST (../shared/data/mnist) to
0.97 and 0.98, Fashion-MNIST (Debian's dataset-fashion-mnist) to 0.88; a data set whose files are
absent is skipped with the reason. The IDX files are converted once into --cache (bench/accuracy.py's
data_file and cache).

ADMM: each solver's recipe, ``minibatch_am`` first, as ``mpiexec -n 2 admm-mpi train --config
configs/<data>-<solver>.toml --data <data>.h5 --eval-test every`` (digits: the solver's defaults),
one BLAS thread per rank. Its clock is the sum of metrics.jsonl ``step_seconds`` (the solver step:
no start-up, data loading or evaluation); the job is stopped once the test accuracy reaches the
problem's highest target.

PyTorch: the MLP of the problem's ``minibatch_am`` recipe (same widths, ReLU, cross-entropy),
float32, ``torch.set_num_threads(--torch-threads)`` (default 2, the two cores; on this shared machine
at load 5 two threads took 420-560 ms per MNIST step against 124-140 ms for one, so the recorded run
used 1): SGD with momentum 0.9 and Adam on batches of 128, full-batch L-BFGS (strong Wolfe line
search, five iterations per step). Each trains on the training rows minus a
validation split (MNIST and Fashion-MNIST: the last 10 000 of the 60 000; digits: 10 %, stratified,
admm_mpi.data.validation_rows) and is evaluated on the validation and test rows (outside the clock)
four times per epoch (L-BFGS: every five iterations). Per target and optimiser, the learning rate of
the grid that reaches the target first on the validation rows is chosen (none reaches it: the best
validation accuracy), and that run's test time to the target is reported. A run stops when both
its validation and test accuracy have reached the highest target, or at the training-time cap
(``cap_hit`` in the result).

Writes results/time_to_accuracy.json (every curve, the 1-minute load average at the start of each
run, the ratio ADMM-best / PyTorch-best per target: None when a side never reaches it),
time_to_accuracy.md and time_to_accuracy_<problem>.png; with --out DIR, the same files in DIR.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, mpiexec, portable, run_record  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SOLVERS = ("minibatch_am", "taylor", "dladmm", "mdlam", "pdadmm", "sigmoid_admm")  # the best recipe first
PROBLEMS = {
    "digits": {"targets": (0.97,), "validation": "stratified 10 %", "max_epochs": 300, "cap_seconds": 60},
    "mnist": {"targets": (0.97, 0.98), "validation": "last 10000", "max_epochs": 40, "cap_seconds": 240},
    "fashion_mnist": {"targets": (0.88,), "validation": "last 10000", "max_epochs": 40, "cap_seconds": 150},
}
LEARNING_RATES = {"sgd_momentum": (0.01, 0.03, 0.1), "adam": (3e-4, 1e-3, 3e-3), "lbfgs": (1.0, 0.3)}
QUICK_LEARNING_RATES = {"sgd_momentum": (0.1,), "adam": (1e-3,), "lbfgs": (1.0,)}
GOALS = {("digits", 0.97): 2.0, ("mnist", 0.97): 3.0, ("mnist", 0.98): 5.0}  # issue 18: ADMM / PyTorch at most
BATCH = 128
EVALS_PER_EPOCH = 4
LBFGS_ITERATIONS_PER_STEP = 5  # full-batch iterations between two evaluations


def time_to_target(curve, target, key="test_accuracy"):
    """Training seconds at the first point of ``curve`` (dicts with ``seconds``) with ``key`` >= target."""
    for point in curve:
        if point[key] is not None and point[key] >= target:
            return point["seconds"]
    return None


def load_average():
    return round(os.getloadavg()[0], 2)


# ---------------------------------------------------------------- ADMM


def admm_command(problem, solver, data, out, extra=()):
    # a recipe trains on every training row and runs until stopped at the target, as recorded
    # (the configs now hold out validation rows and stop early: their selection is bench/select_recipe.py)
    recipe = (["--solver", solver] if problem == "digits" else
              ["--config", f"configs/{problem}-{solver}.toml", "--validation-fraction", "0", "--no-early-stopping",
               "--keep", "last"])
    return [mpiexec(), "-n", "2", sys.executable, "-m", "admm_mpi", "train", *recipe, "--data", data, *extra,
            "--eval-test", "every", "--no-progress", "--out", str(out)]


def read_curve(metrics):
    """(iteration, training seconds so far, test accuracy) of each row of a metrics.jsonl."""
    curve, clock = [], 0.0
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            row = json.loads(line)
            clock += row["step_seconds"]
            curve.append({"iteration": row["iteration"], "seconds": round(clock, 4),
                          "test_accuracy": row["test_accuracy"]})
    return curve


def run_admm(problem, solver, data, tmp, stop_at, extra=(), timeout=6 * 3600):
    """One ADMM run under mpiexec (its own process group); killed once the test accuracy reaches
    ``stop_at`` (the rest of the curve would not change a time to target)."""
    # a fresh directory per run: a repeat polling the previous run's metrics.jsonl would stop at once
    out = Path(tempfile.mkdtemp(prefix=f"{problem}-{solver}-", dir=tmp)) / "run"
    cmd = admm_command(problem, solver, data, out, extra)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               MPIEXEC_TIMEOUT=str(timeout))  # a whole MNIST recipe takes longer than a test's limit
    load, t0 = load_average(), time.perf_counter()
    with open(out.parent / "log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        stopped = None
        while proc.poll() is None:
            time.sleep(1.0)
            curve = read_curve(out / "metrics.jsonl")
            if curve and curve[-1]["test_accuracy"] is not None and curve[-1]["test_accuracy"] >= stop_at:
                stopped = f"test accuracy {curve[-1]['test_accuracy']:.4f} >= {stop_at} at iteration " \
                          f"{curve[-1]['iteration']}"
            elif time.perf_counter() - t0 > timeout:
                stopped = f"wall-time limit {timeout} s"
            if stopped:
                os.killpg(proc.pid, signal.SIGKILL)  # the job's own group: mpiexec, its proxy, the ranks
                proc.wait()
    if proc.returncode != 0 and not stopped:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{(out.parent / 'log').read_text()[-3000:]}")
    command = " ".join(["OMP_NUM_THREADS=1", "mpiexec", *cmd[1:3], "admm-mpi", *cmd[6:]])
    return {"method": f"ADMM {solver}", "solver": solver, "command": command, "load_average_1min": load,
            "wall_seconds": round(time.perf_counter() - t0, 1), "stopped": stopped or "iterations done",
            "curve": read_curve(out / "metrics.jsonl")}


def recipe_widths(problem, solver="minibatch_am"):
    """The hidden widths of ``solver``'s recipe for ``problem`` (its TOML; digits: the defaults)."""
    from admm_mpi.config import resolve

    config_file = None if problem == "digits" else REPO / "configs" / f"{problem}-{solver}.toml"
    return list(resolve(file=config_file, cli={"solver": solver}, environ={}).hidden)


# ---------------------------------------------------------------- PyTorch


def load(data):
    """(X, y, X_test, y_test) of a data set, samples as rows, float32 (used by bench/accuracy.py too)."""
    from admm_mpi.data import load_shard
    from admm_mpi.grid import Grid

    shard = load_shard(data, Grid.serial(), np.float32)
    return shard.X.T, shard.y, shard.X_test.T, shard.y_test


def split_validation(arrays, how):
    """{"train", "validation", "test"}: (X, y) each; the validation rows carved from the training rows."""
    from admm_mpi.data import validation_rows

    X, y, X_test, y_test = arrays
    if how == "last 10000":
        held = np.arange(X.shape[0] - 10000, X.shape[0])
    else:  # stratified 10 %, the rows admm-mpi itself holds out with --validation-fraction 0.1 --seed 0
        held = validation_rows(y, 0.1, 0)
    keep = np.setdiff1d(np.arange(X.shape[0]), held)
    return {"train": (X[keep], y[keep]), "validation": (X[held], y[held]), "test": (X_test, y_test)}


def mlp(widths):
    import torch

    layers = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(torch.nn.Linear(n_in, n_out))
        if i < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def accuracy(model, X, y):
    import torch

    with torch.no_grad():
        return float((model(X).argmax(1) == y).float().mean())


class TorchRun:
    """One optimiser at one learning rate: the clock (training only) and the evaluated curve."""

    def __init__(self, model, splits, stop_at, cap_seconds):
        self.model, self.splits, self.stop_at, self.cap = model, splits, stop_at, cap_seconds
        self.clock, self.curve = 0.0, []

    def evaluate(self, epoch):
        """Record a point (outside the clock); True when the run should stop."""
        point = {"epoch": round(epoch, 4), "seconds": round(self.clock, 4),
                 "validation_accuracy": accuracy(self.model, *self.splits["validation"]),
                 "test_accuracy": accuracy(self.model, *self.splits["test"])}
        self.curve.append(point)
        reached = all(time_to_target(self.curve, self.stop_at, key) is not None
                      for key in ("validation_accuracy", "test_accuracy"))
        return reached or self.clock >= self.cap


def train_minibatch(run, optimiser, lr, max_epochs, seed):
    import torch

    X, y = run.splits["train"]
    opt = (torch.optim.Adam(run.model.parameters(), lr=lr) if optimiser == "adam"
           else torch.optim.SGD(run.model.parameters(), lr=lr, momentum=0.9))
    loss_fn = torch.nn.CrossEntropyLoss()
    n = X.shape[0]
    batches = -(-n // BATCH)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(max_epochs):
        perm = torch.randperm(n, generator=g)
        t0 = time.perf_counter()
        for k in range(batches):
            idx = perm[k * BATCH:(k + 1) * BATCH]
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


def train_torch(widths, optimiser, lr, splits, stop_at, cap_seconds, max_epochs, seed=0, threads=2):
    """Train the MLP ``widths`` with one optimiser at one learning rate; returns its record."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    tensors = {k: (torch.from_numpy(np.ascontiguousarray(X)), torch.from_numpy(np.asarray(y, np.int64)))
               for k, (X, y) in splits.items()}
    load = load_average()
    run = TorchRun(mlp(widths), tensors, stop_at, cap_seconds)
    if optimiser == "lbfgs":
        train_lbfgs(run, lr, max_epochs * 10)
    else:
        train_minibatch(run, optimiser, lr, max_epochs, seed)
    return {"optimiser": optimiser, "lr": lr, "threads": threads, "load_average_1min": load, "cap_seconds": cap_seconds,
            "cap_hit": run.clock >= cap_seconds, "curve": run.curve}


def run_torch(problem, optimiser, arrays, seed=0):
    """bench/accuracy.py's PyTorch reference: ``problem["epochs"]`` epochs of ``optimiser`` at its
    middle learning rate (Adam 1e-3) on all training rows; [(seconds, test accuracy)] four times per epoch."""
    X, y, X_test, y_test = arrays
    splits = {"train": (X, y), "validation": (X_test[:1], y_test[:1]), "test": (X_test, y_test)}
    widths = [X.shape[1], *problem["hidden"], int(y.max()) + 1]
    record = train_torch(widths, optimiser, LEARNING_RATES[optimiser][1], splits, stop_at=2.0,
                         cap_seconds=float("inf"), max_epochs=problem["epochs"], seed=seed)
    return [(p["seconds"], p["test_accuracy"]) for p in record["curve"]]


def choose_lr(runs, target):
    """The run (one optimiser, several lrs) that reaches ``target`` first on the validation rows;
    none reaches it: the best validation accuracy. Returns (run, how it was chosen)."""
    timed = [(time_to_target(r["curve"], target, "validation_accuracy"), r) for r in runs]
    reached = [(t, r) for t, r in timed if t is not None]
    if reached:
        return min(reached, key=lambda tr: tr[0])[1], "fastest to the target on the validation rows"
    best = max(runs, key=lambda r: max(p["validation_accuracy"] for p in r["curve"]))
    return best, "best validation accuracy (no lr reached the target on the validation rows)"


# ---------------------------------------------------------------- one problem, the summary


def problem_data(problem, cache):
    """The data file of ``problem`` (converted on first use), or (None, reason) when its files are absent."""
    if problem == "digits":
        return "digits", None
    from accuracy import SOURCES, data_file

    path = data_file(problem, cache)
    return (path, None) if path else (None, f"its IDX files are not in {SOURCES[problem]}")


def torch_inputs(problem, data, args):
    """PyTorch's side of ``problem``: the training/validation/test splits, the MLP's widths (the
    ``minibatch_am`` recipe's), the training-time cap and the epoch budget."""
    spec = PROBLEMS[problem]
    arrays = load(data)
    splits = split_validation(arrays, spec["validation"])
    widths = [arrays[0].shape[1], *recipe_widths(problem), int(arrays[1].max()) + 1]
    return splits, widths, args.cap_seconds or spec["cap_seconds"], args.max_epochs or spec["max_epochs"]


def admm_extra(args):
    return ["--iters", str(args.admm_iters)] if args.admm_iters else []


def earlier_entry(path, problem):
    """``problem``'s entry in an earlier results file."""
    return next(e for e in json.loads(Path(path).read_text())["problems"] if e["problem"] == problem)


def run_problem(problem, data, solvers, learning_rates, args, tmp):
    spec = PROBLEMS[problem]
    targets, stop_at = spec["targets"], max(spec["targets"])
    entry = {"problem": problem, "targets": list(targets), "admm": [], "torch": []}
    for solver in solvers:
        record = run_admm(problem, solver, data, tmp, stop_at, admm_extra(args))
        entry["admm"].append(record)
        print(problem, solver, {t: time_to_target(record["curve"], t) for t in targets},
              f"load {record['load_average_1min']}", flush=True)
    if args.admm_from:  # another solver's runs (and repeats) of an earlier results file kept beside these
        earlier = earlier_entry(args.admm_from, problem)
        ran = {r["solver"] for r in entry["admm"]}
        entry["admm"] = [r for r in earlier["admm"] if r["solver"] not in ran] + entry["admm"]
        entry["admm_from"] = {"solvers": sorted({r["solver"] for r in earlier["admm"]} - ran),
                              **{key: earlier.get(key) for key in ("command", "commit")}}
        repeated = {m.removeprefix("ADMM ") for m in earlier.get("repeats", {}).get("rounds", [{}])[0]
                    if m.startswith("ADMM ")}
        if repeated and not ran & repeated:  # the repeats name their solver: still true beside new solvers
            entry["repeats"] = earlier["repeats"]
    if args.torch_from:  # the PyTorch runs of an earlier results file (the ADMM side re-measured alone)
        earlier = earlier_entry(args.torch_from, problem)
        entry.update({key: earlier[key] for key in ("torch", "widths", "validation", "torch_train_rows",
                                                    "validation_rows", "batch_size") if key in earlier})
        # where the runs were made: an earlier file may itself have taken them from another
        entry["torch_from"] = earlier.get("torch_from") or {key: earlier.get(key) for key in ("command", "commit")}
        return summarise(entry)
    if learning_rates is None:
        entry["torch_skipped"] = "torch is not installed (pip install -e '.[bench]')"
        return summarise(entry)
    splits, widths, cap, max_epochs = torch_inputs(problem, data, args)
    entry.update(widths=widths, validation=spec["validation"], torch_train_rows=int(splits["train"][1].size),
                 validation_rows=int(splits["validation"][1].size), batch_size=BATCH)
    for optimiser, lrs in learning_rates.items():
        for lr in lrs:
            record = train_torch(widths, optimiser, lr, splits, stop_at, cap, max_epochs, threads=args.torch_threads)
            entry["torch"].append(record)
            last = record["curve"][-1]
            print(problem, optimiser, lr, {t: time_to_target(record["curve"], t) for t in targets},
                  f"last {last}", "cap hit" if record["cap_hit"] else "", f"load {record['load_average_1min']}",
                  flush=True)
    return summarise(entry)


def summarise(entry):
    """Per target: each ADMM run's and each optimiser's (chosen lr's) test time, the bests, the ratio."""
    entry["summary"] = []
    for target in entry["targets"]:
        admm = {r["solver"]: time_to_target(r["curve"], target) for r in entry["admm"]}
        torch_times = {}
        for optimiser in dict.fromkeys(r["optimiser"] for r in entry["torch"]):
            run, how = choose_lr([r for r in entry["torch"] if r["optimiser"] == optimiser], target)
            torch_times[optimiser] = {"lr": run["lr"], "chosen_by": how,
                                      "validation_seconds": time_to_target(run["curve"], target, "validation_accuracy"),
                                      "test_seconds": time_to_target(run["curve"], target)}
        admm_reached = [t for t in admm.values() if t is not None]
        torch_reached = [o["test_seconds"] for o in torch_times.values() if o["test_seconds"] is not None]
        best_admm = min(admm_reached) if admm_reached else None
        best_torch = min(torch_reached) if torch_reached else None
        entry["summary"].append({
            "target": target, "admm_seconds": admm, "torch": torch_times,
            "best_admm_seconds": best_admm, "best_torch_seconds": best_torch,
            "ratio_admm_over_torch": best_admm / best_torch if best_admm is not None and best_torch else None,
            "goal_ratio": GOALS.get((entry["problem"], target))})
    return entry


def fastest_solver(entry, target):
    """The ADMM solver of ``entry`` that reached ``target`` first on the test rows (None: none did)."""
    timed = [(time_to_target(r["curve"], target), r["solver"]) for r in entry["admm"]]
    timed = [(t, solver) for t, solver in timed if t is not None]
    return min(timed)[1] if timed else None


def repeat_timings(problem, data, entry, args, tmp):
    """``args.repeats`` rounds, interleaved, of the fastest ADMM solver and of each optimiser's chosen
    learning rate (the ones that reached a target on the test rows; an optimiser that never reaches
    it cannot be the best): per target, the median test seconds of each side and their ratio."""
    import statistics

    spec = PROBLEMS[problem]
    targets, stop_at = spec["targets"], max(spec["targets"])
    solvers = sorted({solver for target in targets if (solver := fastest_solver(entry, target))})
    chosen = sorted({(o, v["lr"]) for s in entry["summary"] for o, v in s["torch"].items()
                     if v["test_seconds"] is not None})
    splits, widths, cap, max_epochs = torch_inputs(problem, data, args)
    rounds = []
    for r in range(args.repeats):
        runs = {}
        for solver in solvers:
            record = run_admm(problem, solver, data, tmp, stop_at, admm_extra(args))
            runs[f"ADMM {solver}"] = {t: time_to_target(record["curve"], t) for t in targets} | {
                "load_average_1min": record["load_average_1min"]}
        for optimiser, lr in chosen:
            record = train_torch(widths, optimiser, lr, splits, stop_at, cap, max_epochs, seed=r,
                                 threads=args.torch_threads)
            runs[f"PyTorch {optimiser} lr {lr:g}"] = {t: time_to_target(record["curve"], t) for t in targets} | {
                "load_average_1min": record["load_average_1min"], "threads": args.torch_threads}
        print(problem, "round", r, runs, flush=True)
        rounds.append(runs)
    medians = []
    for target in targets:
        per_method = {}
        for method in rounds[0]:
            times = [run[method][target] for run in rounds]
            per_method[method] = statistics.median(times) if None not in times else None
        admm = [t for m, t in per_method.items() if m.startswith("ADMM") and t is not None]
        torch_ = [t for m, t in per_method.items() if m.startswith("PyTorch") and t is not None]
        medians.append({"target": target, "median_test_seconds": per_method,
                        "ratio_of_medians": min(admm) / min(torch_) if admm and torch_ else None,
                        "goal_ratio": GOALS.get((problem, target))})
    entry["repeats"] = {"rounds": rounds, "medians": medians, "torch_threads": args.torch_threads,
                        "how": f"{args.repeats} rounds; in each, the ADMM solver(s) then each chosen learning rate "
                               "(PyTorch seed = round)"}
    return entry


def seconds(value):
    return "never" if value is None else f"{value:.2f} s"


def ratio_cells(ratio, goal):
    """The markdown cells of a ratio ADMM / PyTorch and of its goal (met or not)."""
    shown = "—" if ratio is None else f"**{ratio:.2f}×**"
    if goal is None:
        return shown, ""
    return shown, f"≤ {goal:g}× " + ("met" if ratio is not None and ratio <= goal else "not met")


def markdown(result):
    lines = ["# Time to accuracy: ADMM against PyTorch (2 cores)", "",
             "Generated by `python bench/time_to_accuracy.py` (each problem names its command and commit).",
             "Training seconds to the first evaluation at or above the target on the official test rows (ADMM:",
             "once per iteration, an epoch for the mini-batch recipes; PyTorch: four times per epoch, L-BFGS",
             "every five iterations).",
             "PyTorch's learning rate per target is the one of its grid that reached the target first on the",
             "validation rows; its runs train without those rows. 1-minute load averages at the start of",
             "each run: " + ", ".join(f"{x:g}" for x in result["load_averages"]) + " (2 cores shared with other jobs).",
             ""]
    for entry in result["problems"]:
        lines += [f"## {entry['problem']}", "", f"`{entry.get('command')}` at commit {entry.get('commit')}", ""]
        if entry.get("torch_from"):
            lines += [f"PyTorch runs taken from `{entry['torch_from']['command']}` at commit "
                      f"{entry['torch_from']['commit']}; the ADMM runs are this command's"
                      f"{' (but those named next)' if entry.get('admm_from') else ''}.", ""]
        if entry.get("admm_from"):
            lines += [f"ADMM runs of {', '.join(entry['admm_from']['solvers'])} (and their repeats) taken from "
                      f"`{entry['admm_from']['command']}` at commit {entry['admm_from']['commit']}.", ""]
        if entry.get("skipped"):
            lines += [f"skipped: {entry['skipped']}", ""]
            continue
        if entry.get("widths"):
            lines += [f"MLP {'-'.join(map(str, entry['widths']))} (PyTorch; the `minibatch_am` recipe's widths), "
                      f"PyTorch batch {entry['batch_size']}, {entry['torch_train_rows']} training and "
                      f"{entry['validation_rows']} validation rows ({entry['validation']}).", ""]
        lines += ["| target | " + " | ".join(f"ADMM {r['solver']}" for r in entry["admm"]) + " | PyTorch "
                  + " | PyTorch ".join(entry["summary"][0]["torch"]) + " | ADMM best / PyTorch best | goal |",
                  "|---" * (len(entry["admm"]) + len(entry["summary"][0]["torch"]) + 3) + "|"]
        for s in entry["summary"]:
            ratio, goal = ratio_cells(s["ratio_admm_over_torch"], s["goal_ratio"])
            lines.append(f"| {s['target']} | " + " | ".join(seconds(t) for t in s["admm_seconds"].values()) + " | "
                         + " | ".join(f"{seconds(o['test_seconds'])} (lr {o['lr']:g})" for o in s["torch"].values())
                         + f" | {ratio} | {goal} |")
        caps = [f"{r['optimiser']} lr {r['lr']:g}" for r in entry["torch"] if r["cap_hit"]]
        lines += ["", "Training-time caps hit: " + (", ".join(caps) if caps else "none") + ".", ""]
        if entry.get("repeats"):
            rep = entry["repeats"]
            methods = list(rep["medians"][0]["median_test_seconds"])
            lines += [f"Medians of {len(rep['rounds'])} rounds in one run ({rep['how']}; PyTorch with "
                      f"{rep['torch_threads']} threads):", "",
                      "| target | " + " | ".join(methods) + " | ratio of medians | goal |", "|---" * (len(methods) + 3) + "|"]
            for m in rep["medians"]:
                ratio, goal = ratio_cells(m["ratio_of_medians"], m["goal_ratio"])
                lines.append(f"| {m['target']} | " + " | ".join(seconds(t) for t in m["median_test_seconds"].values())
                             + f" | {ratio} | {goal} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def plot(entry, directory):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in entry["admm"]:
        ax.plot([p["seconds"] for p in r["curve"]], [p["test_accuracy"] for p in r["curve"]], marker=".",
                label=f"ADMM {r['solver']} (2 ranks)")
    chosen = {(o, v["lr"]) for s in entry["summary"] for o, v in s["torch"].items()}
    for r in entry["torch"]:
        if (r["optimiser"], r["lr"]) in chosen:
            ax.plot([p["seconds"] for p in r["curve"]], [p["test_accuracy"] for p in r["curve"]], linestyle="--",
                    label=f"PyTorch {r['optimiser']} lr {r['lr']:g}")
    for target in entry["targets"]:
        ax.axhline(target, color="grey", linestyle=":")
    ax.set_xscale("log")
    ax.set_ylim(max(0.0, min(entry["targets"]) - 0.15), 1.0)
    ax.set_xlabel("training seconds (2 cores)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{entry['problem']}: time to accuracy (targets dotted)")
    ax.legend(fontsize=7)
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
    directory.mkdir(parents=True, exist_ok=True)
    record = run_record()
    fresh = [{**e, "command": record["command"], "commit": record["commit"]} for e in result["problems"]]
    path = directory / "time_to_accuracy.json"
    old = json.loads(path.read_text())["problems"] if path.exists() else []
    ran = {e["problem"] for e in fresh}
    problems = sorted([e for e in old if e["problem"] not in ran] + fresh,
                      key=lambda e: list(PROBLEMS).index(e["problem"]))
    loads = [r["load_average_1min"] for e in problems for r in e.get("admm", []) + e.get("torch", [])
             + [run for rnd in e.get("repeats", {}).get("rounds", []) for run in rnd.values()]]
    result = portable({**result, "problems": problems, "load_averages": loads, **record})
    (directory / "time_to_accuracy.json").write_text(json.dumps(result, indent=2) + "\n")
    (directory / "time_to_accuracy.md").write_text(markdown(result))
    return [directory / "time_to_accuracy.json"] + [plot(e, directory) for e in result["problems"]
                                                      if not e.get("skipped")]


def torch_learning_rates(quick):
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    return QUICK_LEARNING_RATES if quick else LEARNING_RATES


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="digits,mnist,fashion_mnist")
    parser.add_argument("--solvers", default="default",
                        help="'default': minibatch_am everywhere, the others on digits; 'all'; or a comma list")
    parser.add_argument("--cap-seconds", type=float, default=0, help="PyTorch training cap per lr (0: per problem)")
    parser.add_argument("--max-epochs", type=int, default=0, help="PyTorch epochs at most (0: per problem)")
    parser.add_argument("--torch-threads", type=int, default=2, help="torch.set_num_threads (the two cores)")
    parser.add_argument("--admm-iters", type=int, default=0, help="override every ADMM recipe's iterations")
    parser.add_argument("--torch-from", metavar="JSON",
                        help="take the PyTorch runs from an earlier results file (recorded as torch_from) and "
                             "run only the ADMM side")
    parser.add_argument("--admm-from", metavar="JSON",
                        help="keep the ADMM runs (and repeats) of an earlier results file for the solvers not run "
                             "now (recorded as admm_from): add solvers to a problem without re-timing the others")
    parser.add_argument("--repeats", type=int, default=0,
                        help="then time the fastest ADMM solver and each optimiser's chosen lr this many times, "
                             "interleaved (medians and their ratio per target)")
    parser.add_argument("--quick", action="store_true",
                        help="seconds: digits, minibatch_am 3 iterations, one lr per optimiser, 3 s caps")
    parser.add_argument("--cache", default=str(REPO / "bench" / ".data"), help="converted data sets")
    parser.add_argument("--out", default=str(RESULTS), help="directory of the JSON, markdown and PNGs")
    args = parser.parse_args(argv)
    if args.quick:
        args.problems, args.solvers = "digits", args.solvers if args.solvers != "default" else "minibatch_am"
        args.admm_iters, args.cap_seconds, args.max_epochs = args.admm_iters or 3, args.cap_seconds or 3, 30
    learning_rates = torch_learning_rates(args.quick)
    tmp = tempfile.mkdtemp(prefix="bench-tta-")
    result = {"benchmark": "time to accuracy", "problems": []}
    if learning_rates is not None:
        import torch

        result["torch"] = torch.__version__
    for problem in args.problems.split(","):
        data, reason = problem_data(problem, args.cache)
        if data is None:
            print(f"skipping {problem}: {reason}", flush=True)
            result["problems"].append({"problem": problem, "skipped": reason})
            continue
        solvers = (SOLVERS if args.solvers == "all" or (args.solvers == "default" and problem == "digits")
                   else ("minibatch_am",) if args.solvers == "default" else args.solvers.split(","))
        entry = run_problem(problem, data, solvers, learning_rates, args, tmp)
        if args.repeats:
            entry = repeat_timings(problem, data, entry, args, tmp)
        result["problems"].append(entry)
        paths = save(result, args.out)  # after every problem: an interrupted run keeps what finished
    print("wrote", *map(str, paths))
    for e in result["problems"]:
        for s in e.get("summary", []):
            print(f"{e['problem']} to {s['target']}: best ADMM {s['best_admm_seconds']} s, best PyTorch "
                  f"{s['best_torch_seconds']} s, ratio {s['ratio_admm_over_torch']}")


if __name__ == "__main__":
    main()
