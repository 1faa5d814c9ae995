"""Cluster-scale batches: epochs and bytes to a validation target at global batches of 2 048-32 768.

    pip install -e ".[bench]"      # torch==2.13.0 (CPU)
    python bench/large_batch.py --datasets mnist --batches 8192 --methods admm      # one cell (or several)
    python bench/large_batch.py --assemble                                          # the tables from every cell
    python bench/large_batch.py --restore-cells results/large_batch.json --assemble  # a fresh checkout's cells
    python bench/large_batch.py --quick --out DIR                                   # seconds: digits, tiny

Data-parallel SGD on P ranks uses a global batch of 128·P (8 192 at 64 ranks, 32 768 at 256). For
each data set (MNIST to 0.98, Fashion-MNIST to 0.88: validation accuracy) and global batch B:

- ``admm``: ``minibatch_am`` with its batch at B, its validation-selected recipe otherwise
  (``configs/<data>-minibatch_am.toml``: widths, loss, beta, gamma, rho, ridge, average, its early
  stopping after ``patience`` epochs without a better validation accuracy), only the batch size and
  the epoch cap changed: ``OMP_NUM_THREADS=1 mpiexec -n 2 admm-mpi train --config ... --batch-size B
  --iters CAP --eval-test every``. The run is stopped (SIGTERM: it finishes its batch, writes its
  summary) once its validation accuracy reaches the target. Bytes sent per epoch: ``bytes_per_iteration``
  of its ``summary.json`` (every rank's, summed; measured at 2 ranks).
- ``sgd_momentum`` (momentum 0.9) and ``adam``: PyTorch, the recipe's MLP (same widths, ReLU,
  cross-entropy, float32, one thread), the linear scaling rule with gradient warm-up of Goyal et al.
  2017 (lr = base_lr · B / 256, ramped linearly per step from base_lr · B / 256 / steps over the first
  ``WARMUP_EPOCHS`` epochs, then constant: no decay), the same early stopping as the recipe (patience
  epochs). Tuned on validation at each B: a grid of base learning rates spaced by ``LR_FACTOR``, run
  from its centre outwards and widened until the pick is interior (``--max-lrs`` at most). The pick
  is the rate that reaches the target in the fewest epochs on the validation rows (ties: the higher
  validation accuracy at that epoch); none reaches it: the best validation accuracy. A rate that
  diverged or collapsed (its last validation accuracy below half its best) ranks after every stable
  one, and among such rates the smallest ranks first: when every rate tried is unstable the grid
  widens downwards. A run stops at
  the target, and once another rate has reached it in e epochs, after epoch e (it can no longer be the
  pick: ``pruned``). Bytes per epoch are modelled: a ring allreduce of the float32 gradient per step,
  2 (P-1)/P · 4 · n_params bytes per rank, ceil(n / B) steps.

Every method trains on the same rows and is selected on the same validation rows: those that
``admm-mpi train --validation-fraction VALIDATION_FRACTION --seed 0`` holds out (stratified,
``admm_mpi.data.validation_rows``; 10 000 of MNIST's 60 000). The test split is read only to report:
PyTorch scores the pick's kept network once (the epoch it reached the target, else its best validation
epoch); ``admm-mpi`` evaluates its test rows every epoch and only the kept epoch's figure is read.
The epoch cap is the same for every method (``--cap``).

Each cell (data set, method, batch) is written as it finishes to ``--cells`` (one JSON each, with its
own command and commit), so cells can run as separate jobs; ``--progress DIR`` keeps each PyTorch
grid's finished rates so that a grid stopped part way continues (:class:`GridProgress`); every
invocation then assembles all cells there into ``results/large_batch.json`` and ``.md`` with the cost model of
``bench/cost_model.py`` (its cluster, its per-core rates and fitted collectives from
``results/cost_model.json``): per B, P = B / 128 ranks, modelled seconds per epoch of a
``minibatch_am`` epoch (spread solve, the current code) and of a data-parallel SGD epoch, and the
modelled time to accuracy = epochs to the target x seconds per epoch.
"""

import argparse
import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import cost_model
from common import (RESULTS, SOURCES, data_file, load_samples, mpiexec, portable, run_record, torch_accuracy,
                    selection_key, torch_mlp, widen_until_interior, write_progress)

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"mnist": 0.98, "fashion_mnist": 0.88, "digits": 0.9}
BATCHES = (2048, 8192, 32768)
METHODS = ("admm", "sgd_momentum", "adam")
SGD_BATCH_PER_RANK = 128  # global batch 128 P
BASE_BATCH = 256  # Goyal et al.: lr = base_lr * B / 256
WARMUP_EPOCHS = 5
VALIDATION_FRACTION = 0.16667  # the recipes' (10 000 of 60 000)
LR_FACTOR = 10 ** 0.5  # the grid's spacing (half a decade)
CENTRES = {"sgd_momentum": 0.1, "adam": 3e-4}  # the first base lr tried at each batch (widened from there)
ITEMSIZE = 4  # float32 gradients
QUICK = {"dataset": "digits", "batches": (128, 512), "cap": 4, "hidden": [32], "max_lrs": 4}


# ---------------------------------------------------------------- shared


def recipe(dataset):
    """The minibatch_am recipe's config file and hidden widths for ``dataset`` (digits: MNIST's)."""
    from admm_mpi.config import read_toml

    path = REPO / "configs" / f"{'mnist' if dataset == 'digits' else dataset}-minibatch_am.toml"
    config = read_toml(path)
    return path, list(config["hidden"]), int(config.get("patience", 5)), int(config.get("seed", 0))


def epochs_to_target(curve, target):
    """The first epoch of ``curve`` ([{"epoch", "validation_accuracy"}]) at or above ``target``."""
    return next((p["epoch"] for p in curve if p["validation_accuracy"] is not None
                 and p["validation_accuracy"] >= target), None)


def kept_epoch(curve, target):
    """The epoch kept for reporting: the first at the target, else the best validation epoch (first of equals)."""
    reached = epochs_to_target(curve, target)
    if reached is not None:
        return reached
    return max(curve, key=lambda p: p["validation_accuracy"])["epoch"] if curve else None


def n_params(widths):
    return sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:]))


def sgd_bytes_per_epoch(widths, n, batch, ranks):
    """Ring allreduce of the float32 gradient per step: (per rank, all ranks) bytes sent per epoch."""
    steps = math.ceil(n / batch)
    per_rank = 2 * (ranks - 1) / ranks * ITEMSIZE * n_params(widths) * steps
    return {"ranks": ranks, "steps_per_epoch": steps, "per_rank": per_rank, "all_ranks": per_rank * ranks}


def data_path(dataset, cache):
    if dataset == "digits":
        return "digits", None
    path = data_file(dataset, cache)
    return (path, None) if path else (None, f"its IDX files are not in {portable(str(SOURCES[dataset]))}")


# ---------------------------------------------------------------- ADMM


def admm_command(config, data, batch, cap, out, hidden=None):
    return [mpiexec(), "-n", "2", sys.executable, "-m", "admm_mpi", "train", "--config", str(config),
            "--data", str(data), "--batch-size", str(batch), "--iters", str(cap),
            *(["--hidden", ",".join(map(str, hidden))] if hidden else []),
            "--validation-fraction", str(VALIDATION_FRACTION), "--eval-test", "every", "--no-progress",
            "--out", str(out)]


def source_commit(source):
    """The commit a ``git archive`` tree came from (its ``git get-tar-commit-id`` is not kept: the
    directory's name ends with it, ``src-<commit>``)."""
    name = Path(source).name
    return name.rsplit("-", 1)[-1] if "-" in name else name


def read_metrics(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_admm(dataset, data, batch, cap, target, runs_dir, hidden=None, timeout=6 * 3600, source=None):
    """minibatch_am at global batch ``batch``; stopped by SIGTERM once validation reaches ``target``.

    ``source``: run admm-mpi from this source tree (``git archive COMMIT | tar -x -C DIR``: a commit's
    library, not a working tree that is being edited) instead of the checkout."""
    config, recipe_hidden, patience, _ = recipe(dataset)
    source = Path(source).resolve() if source else REPO
    out = Path(runs_dir) / f"{dataset}-admm-{batch}"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = admm_command(config.relative_to(REPO), data, batch, cap, out, hidden)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               MPIEXEC_TIMEOUT=str(timeout))
    if source != REPO:
        env["PYTHONPATH"] = str(source)
    t0, stopped, seen = time.perf_counter(), None, 0
    with open(str(out) + ".log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=source, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        while proc.poll() is None:
            time.sleep(2.0)
            rows = read_metrics(out / "metrics.jsonl")
            if stopped is None and rows and (rows[-1].get("validation_accuracy") or 0) >= target:
                stopped = f"validation accuracy {rows[-1]['validation_accuracy']:.4f} >= {target} at epoch " \
                          f"{rows[-1]['iteration']}: stopped by SIGTERM (the run finishes its batch and its summary)"
                os.killpg(proc.pid, signal.SIGTERM)  # the job's own group: mpiexec, its proxy, the ranks
            if len(rows) > seen:
                seen = len(rows)
                print(f"{dataset} admm batch {batch} epoch {seen}: validation {rows[-1]['validation_accuracy']}",
                      flush=True)
    if not (out / "summary.json").exists():
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{Path(str(out) + '.log').read_text()[-3000:]}")
    cell = admm_cell(out, cmd, cap, target, patience, source, stopped)
    cell["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return cell


def admm_cell(out, cmd, cap, target, patience, source, stopped=None):
    """The cell of a finished (or SIGTERM-stopped) admm-mpi run directory ``out``."""
    summary = json.loads((Path(out) / "summary.json").read_text())
    rows = read_metrics(Path(out) / "metrics.jsonl")
    curve = [{"epoch": r["iteration"], "validation_accuracy": r["validation_accuracy"]} for r in rows]
    kept = kept_epoch(curve, target)
    kept_row = next((r for r in rows if r["iteration"] == kept), {})
    command = " ".join(["OMP_NUM_THREADS=1", "mpiexec", "-n", "2", "admm-mpi", *[portable(str(c)) for c in cmd[6:]]])
    return {"method": "admm", "solver": "minibatch_am", "command": command, "ranks": summary["ranks"],
            "admm_mpi_source": "the checkout" if source == REPO else f"git archive of commit {source_commit(source)}",
            "admm_mpi_version": summary["versions"]["admm_mpi"],
            "batch": summary["batch_size"], "widths": summary["widths"], "n_train": summary["n_train"],
            "n_validation": summary["n_validation"], "n_test": summary["n_test"], "cap": cap, "patience": patience,
            "stopped": stopped or summary["stopped"], "epochs_run": len(rows),
            "epochs_to_target": epochs_to_target(curve, target), "kept_epoch": kept,
            "validation_accuracy_at_kept": kept_row.get("validation_accuracy"),
            "test_accuracy_at_kept": kept_row.get("test_accuracy"), "validation_curve": curve,
            "bytes_per_epoch": {"ranks": summary["ranks"], "all_ranks": summary["bytes_per_iteration"],
                                "per_rank": summary["bytes_per_iteration_per_rank"],
                                "how": "measured: summary.json bytes_per_iteration (median over the epochs run, "
                                       "each rank's bytes handed to MPI, summed)"}}


def admm_from_run(dataset, data, out, cap, target, stopped, hidden=None):
    """The cell of an earlier run directory of this script's ADMM command (``--admm-run``), with why it stopped."""
    config, _, patience, _ = recipe(dataset)
    summary = json.loads((Path(out) / "summary.json").read_text())
    cmd = admm_command(config.relative_to(REPO), data, summary["batch_size"], cap, out, hidden)
    cell = admm_cell(out, cmd, cap, target, patience, REPO, stopped)
    cell["from_run_directory"] = portable(str(out))
    return cell


def torch_from_log(log, dataset, data, optimiser, batch, cap, target, note):
    """A PyTorch cell interrupted before its grid finished, from its progress lines (``--salvage``):
    every rate's validation curve as printed; no pick is scored on test (``partial``)."""
    import re

    _, hidden, patience, _ = recipe(dataset)
    epoch_line = re.compile(rf"^  {optimiser} base lr (\S+) \(lr (\S+)\) batch {batch} epoch (\d+): validation (\S+)")
    done_line = re.compile(rf"^{dataset} {optimiser} batch {batch} base lr (\S+): \S+ epochs to \S+ \((.*)\)$")
    runs, finished = {}, {}
    for line in Path(log).read_text().splitlines():
        if m := epoch_line.match(line):
            base = float(m[1])
            run = runs.setdefault(base, {"base_lr": base, "lr": float(m[2]), "validation_curve": []})
            run["validation_curve"].append({"epoch": int(m[3]), "validation_accuracy": float(m[4])})
        elif m := done_line.match(line):
            finished[float(m[1])] = m[2]
    for base, run in runs.items():
        curve = run["validation_curve"]
        run.update(stopped=finished.get(base, f"interrupted: {note}"), epochs_run=len(curve),
                   epochs_to_target=epochs_to_target(curve, target), kept_epoch=kept_epoch(curve, target))
    grid = sorted(runs)
    pick = None
    for base in grid:
        if runs[base]["validation_curve"] and better(runs[base], pick, target):
            pick = runs[base]
    from admm_mpi.data import validation_rows

    _, y, X_test, _ = load_samples(data)
    n_validation = validation_rows(y, VALIDATION_FRACTION, recipe(dataset)[3]).size
    n = y.size - n_validation
    widths = [X_test.shape[1], *hidden, int(y.max()) + 1]
    kept = pick["kept_epoch"] if pick else None
    return {"method": optimiser, "partial": note, "widths": widths, "batch": batch, "threads": 1,
            "n_train": n, "n_validation": n_validation, "n_test": len(X_test), "cap": cap, "patience": patience,
            "warmup_epochs": WARMUP_EPOCHS, "base_batch": BASE_BATCH,
            "lr_rule": f"lr = base_lr * {batch} / {BASE_BATCH}, linear warm-up per step over {WARMUP_EPOCHS} epochs, "
                       "then constant", "lr_grid": grid, "lr_pick": pick and pick["base_lr"],
            "lr_pick_scaled": pick and pick["lr"], "pick_interior": bool(pick) and grid[0] < pick["base_lr"] < grid[-1],
            "runs": [runs[b] for b in grid], "epochs_to_target": pick and pick["epochs_to_target"],
            "epochs_run": pick and pick["epochs_run"], "kept_epoch": kept,
            "validation_accuracy_at_kept": pick and pick["validation_curve"][kept - 1]["validation_accuracy"],
            "test_accuracy_at_kept": None, "validation_curve": pick and pick["validation_curve"],
            "from_log": portable(str(log)),
            "bytes_per_epoch": {"modelled_2_ranks": sgd_bytes_per_epoch(widths, n, batch, 2),
                                "modelled_cluster": sgd_bytes_per_epoch(widths, n, batch, batch // SGD_BATCH_PER_RANK),
                                "how": "ring allreduce of the float32 gradient per step: 2 (P-1)/P x 4 bytes x "
                                       f"{n_params(widths)} parameters per rank, ceil({n} / {batch}) steps"}}


# ---------------------------------------------------------------- PyTorch


def torch_splits(data, seed):
    """Training and validation rows (the rows admm-mpi holds out) as tensors; the test rows apart."""
    import torch
    from admm_mpi.data import validation_rows

    X, y, X_test, y_test = load_samples(data)
    held = validation_rows(y, VALIDATION_FRACTION, seed)
    keep = np.setdiff1d(np.arange(y.size), held)

    def as_torch(X, y):
        return torch.from_numpy(np.ascontiguousarray(X)), torch.from_numpy(np.asarray(y, np.int64))

    return {"train": as_torch(X[keep], y[keep]), "validation": as_torch(X[held], y[held]),
            "test": as_torch(X_test, y_test)}, int(y.max()) + 1


def train_one(widths, splits, optimiser, base_lr, batch, cap, target, patience, stop_after=None, seed=0):
    """One base learning rate: the validation curve per epoch and the kept epoch's weights."""
    import torch

    torch.manual_seed(seed)
    model = torch_mlp(widths)
    lr = base_lr * batch / BASE_BATCH
    opt = (torch.optim.Adam(model.parameters(), lr=lr) if optimiser == "adam"
           else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9))
    loss_fn = torch.nn.CrossEntropyLoss()
    X, y = splits["train"]
    n = len(y)
    steps_per_epoch = math.ceil(n / batch)
    warmup = WARMUP_EPOCHS * steps_per_epoch
    generator = torch.Generator().manual_seed(seed)
    curve, best, kept_state, stopped, step = [], -1.0, None, "cap", 0
    for epoch in range(1, cap + 1):
        for idx in torch.randperm(n, generator=generator).split(batch):
            step += 1
            for group in opt.param_groups:  # Goyal et al.: linear warm-up per step, then the scaled rate
                group["lr"] = lr * min(1.0, step / warmup)
            opt.zero_grad()
            loss = loss_fn(model(X[idx]), y[idx])
            if not torch.isfinite(loss):
                break
            loss.backward()
            opt.step()
        if not torch.isfinite(loss.detach()):
            curve.append({"epoch": epoch, "validation_accuracy": torch_accuracy(model, *splits["validation"])})
            stopped = "diverged (non-finite loss)"
            break
        curve.append({"epoch": epoch, "validation_accuracy": torch_accuracy(model, *splits["validation"]),
                      "train_loss": round(float(loss.detach()), 5)})
        print(f"  {optimiser} base lr {base_lr:g} (lr {lr:g}) batch {batch} epoch {epoch}: validation "
              f"{curve[-1]['validation_accuracy']:.4f}", flush=True)
        if epochs_to_target(curve, target) == epoch:
            kept_state, stopped = copy.deepcopy(model.state_dict()), "target reached"
            break
        if curve[-1]["validation_accuracy"] > best:
            best, kept_state = curve[-1]["validation_accuracy"], copy.deepcopy(model.state_dict())
        elif epoch - max(curve, key=lambda p: p["validation_accuracy"])["epoch"] >= patience:
            stopped = f"early stopping (no better validation accuracy in {patience} epochs)"
            break
        if stop_after is not None and epoch >= stop_after:
            stopped = f"pruned: another rate reached the target in {stop_after} epochs"
            break
    model.load_state_dict(kept_state if kept_state is not None else model.state_dict())
    return {"base_lr": base_lr, "lr": lr, "stopped": stopped, "epochs_run": len(curve),
            "epochs_to_target": epochs_to_target(curve, target), "kept_epoch": kept_epoch(curve, target),
            "validation_curve": curve}, model


def unstable(record):
    """Whether a run diverged or collapsed: its loss became non-finite, or its last validation accuracy
    fell below half its best (at large batches the warm-up raises a too large rate after a first good
    epoch, and the network falls back to chance)."""
    accuracies = [p["validation_accuracy"] for p in record["validation_curve"]]
    return record.get("stopped", "").startswith("diverged") or accuracies[-1] < 0.5 * max(accuracies)


def better(a, b, target):
    """Whether run ``a`` is a better pick than ``b`` (None: no pick yet).

    A stable run beats an unstable one (:func:`unstable`); between stable runs common.selection_key
    decides; between unstable ones the smaller base rate wins, so a grid whose every rate diverged
    or collapsed widens towards smaller rates (its smallest is the pick, at the grid's edge) instead
    of picking the collapsed run with the best first epoch."""
    if b is None:
        return True
    if unstable(a) != unstable(b):
        return not unstable(a)
    if unstable(a):
        return a["base_lr"] < b["base_lr"]
    return selection_key(a["validation_curve"], target) < selection_key(b["validation_curve"], target)


class GridProgress:
    """The finished rates of one PyTorch cell's grid on disk (``--progress DIR``), so a grid stopped
    mid-way (a session's end) continues with the same command: a rate found there with the same bound
    (``stop_after``) is read back instead of trained. Only validation curves are kept; if the pick is
    a rate read back, its kept network is trained again (same seed) to be scored on test (``replayed``);
    a replay whose curve differs from the recorded one stops the run (the grid's choices rested on it).
    A file made under other settings is refused."""

    def __init__(self, directory, name, settings):
        self.path = Path(directory) / f"large_batch-{name}.json" if directory else None
        self.state = {"settings": settings, "runs": []}
        if self.path and self.path.exists():
            state = json.loads(self.path.read_text())
            if state["settings"] != settings:
                differ = sorted(k for k in settings if state["settings"].get(k) != settings[k])
                raise SystemExit(f"{portable(str(self.path))} was made under other settings ({', '.join(differ)}): "
                                 "move it away to start afresh")
            self.state = state
        self.state.setdefault("invocations", []).append(
            {k: run_record()[k] for k in ("command", "commit")} | {"rates_done": len(self.state["runs"])})
        self._write()

    def find(self, base, stop_after):
        return next((r["record"] for r in self.state["runs"]
                     if r["record"]["base_lr"] == base and r["stop_after"] == stop_after), None)

    def add(self, record, stop_after):
        self.state["runs"].append({"record": record, "stop_after": stop_after})
        self._write()

    def _write(self):
        if self.path:
            write_progress(self.path, self.state)


def tune_torch(dataset, data, optimiser, batch, cap, target, hidden=None, max_lrs=6, centre=None, threads=1,
               progress=None):
    """The base-lr grid at one batch, widened until the pick is interior; the pick's test accuracy."""
    import torch

    torch.set_num_threads(threads)
    _, recipe_hidden, patience, seed = recipe(dataset)
    splits, classes = torch_splits(data, seed)
    widths = [splits["train"][0].shape[1], *(hidden or recipe_hidden), classes]
    centre = centre or CENTRES[optimiser]
    saved = GridProgress(progress, f"{dataset}-{optimiser}-{batch}",
                         {"widths": widths, "cap": cap, "patience": patience, "seed": seed, "target": target,
                          "centre": centre, "max_lrs": max_lrs, "threads": threads, "n_train": len(splits["train"][1])})
    runs, models, bounds, pick = {}, {}, {}, None

    def run(base):
        nonlocal pick
        bound = pick["epochs_to_target"] if pick else None
        record = saved.find(base, bound)
        if record is None:
            record, models[base] = train_one(widths, splits, optimiser, base, batch, cap, target, patience,
                                             stop_after=bound, seed=seed)
            saved.add(record, bound)
        runs[base], bounds[base] = record, bound
        if better(record, pick, target):
            pick = record
        print(f"{dataset} {optimiser} batch {batch} base lr {base:g}: {record['epochs_to_target']} epochs to "
              f"{target} ({record['stopped']}{', read back' if base not in models else ''})", flush=True)

    grid, interior = widen_until_interior(run, lambda: [pick["base_lr"]], centre, LR_FACTOR, max_lrs)
    replayed = None
    if pick["base_lr"] not in models:  # read back: its kept network again, from the same seed
        base = pick["base_lr"]
        record, models[base] = train_one(widths, splits, optimiser, base, batch, cap, target, patience,
                                         stop_after=bounds[base], seed=seed)
        replayed = {"base_lr": base, "same_curve": record["validation_curve"] == pick["validation_curve"]}
        if not replayed["same_curve"]:  # the grid's choices rest on the recorded curve: they no longer hold
            raise SystemExit(f"large_batch: the pick (base lr {base:g}) trained again does not repeat its recorded "
                             f"curve, so the choices of its grid no longer hold: move "
                             f"{portable(str(saved.path))} away and run the grid again")
    test = torch_accuracy(models[pick["base_lr"]], *splits["test"])  # the test rows, once: the pick's kept network
    kept = pick["kept_epoch"]
    n = len(splits["train"][1])
    return {"method": optimiser, "widths": widths, "batch": batch, "threads": threads, "torch": torch.__version__,
            "n_train": n, "n_validation": len(splits["validation"][1]), "n_test": len(splits["test"][1]),
            "cap": cap, "patience": patience, "warmup_epochs": WARMUP_EPOCHS, "base_batch": BASE_BATCH,
            "lr_rule": f"lr = base_lr * {batch} / {BASE_BATCH}, linear warm-up per step over {WARMUP_EPOCHS} epochs, "
                       "then constant", "lr_grid": grid, "lr_pick": pick["base_lr"], "lr_pick_scaled": pick["lr"],
            "pick_interior": interior, "runs": [runs[b] for b in grid], "replayed": replayed,
            "epochs_to_target": pick["epochs_to_target"], "epochs_run": pick["epochs_run"], "kept_epoch": kept,
            "validation_accuracy_at_kept": pick["validation_curve"][kept - 1]["validation_accuracy"],
            "test_accuracy_at_kept": test, "validation_curve": pick["validation_curve"],
            "bytes_per_epoch": {"modelled_2_ranks": sgd_bytes_per_epoch(widths, n, batch, 2),
                                "modelled_cluster": sgd_bytes_per_epoch(widths, n, batch, batch // SGD_BATCH_PER_RANK),
                                "how": "ring allreduce of the float32 gradient per step: 2 (P-1)/P x 4 bytes x "
                                       f"{n_params(widths)} parameters per rank, ceil({n} / {batch}) steps"}}


# ---------------------------------------------------------------- assembling


def cost_model_inputs():
    """The cost model's per-core rates and cluster collectives (results/cost_model.json) and its commit."""
    saved = json.loads((RESULTS / "cost_model.json").read_text())
    params = {k: v for k, v in saved["projection_core_rates"].items() if k != "source"}
    return params, saved["collectives"]["params_cluster"], saved


def modelled_seconds(widths, n, batch):
    """Seconds per epoch on P = batch / 128 ranks of the cost model's cluster: minibatch_am (spread and
    root solve) and data-parallel SGD (128 per rank, one allreduce of the gradients per step)."""
    params, coll, _ = cost_model_inputs()
    P = batch // SGD_BATCH_PER_RANK
    spread, spread_serial = cost_model.admm_epoch(params, coll, tuple(widths), n, batch, P, spread=True)
    root, _ = cost_model.admm_epoch(params, coll, tuple(widths), n, batch, P, spread=False)
    return {"ranks": P, "admm_spread_solve": spread, "admm_root_solve": root,
            "sgd": cost_model.sgd_epoch(params, coll, tuple(widths), n, P, global_batch=batch)}


def assemble(cells_dir, out_dir, quick=False, notes=()):
    cells = [json.loads(p.read_text()) for p in sorted(Path(cells_dir).glob("*.json"))]
    result = {"benchmark": "large batches: epochs and bytes to a validation target",
              "validation": f"the rows `admm-mpi train --validation-fraction {VALIDATION_FRACTION} --seed 0` holds out "
                            "(stratified, admm_mpi.data.validation_rows), the same for every method; the rest train",
              "targets": TARGETS, "sgd_batch_per_rank": SGD_BATCH_PER_RANK, "warmup_epochs": WARMUP_EPOCHS,
              "base_batch": BASE_BATCH, "lr_factor": LR_FACTOR,
              "selection": "per method and batch: fewest epochs to the target on validation (the kept epoch), else "
                           "the best validation epoch; the test split read once, at the kept epoch",
              "sgd_bytes_model": "data-parallel SGD: a ring allreduce of the float32 gradient per step, "
                                 "2 (P-1)/P x 4 bytes x n_params per rank, ceil(n / B) steps per epoch",
              "notes": list(notes), "datasets": {}}
    _, _, saved = cost_model_inputs()
    result["cost_model"] = {"file": "bench/results/cost_model.json", "commit": saved.get("commit"),
                            "network": saved["network"], "ranks_per_node": saved["ranks_per_node"],
                            "per_core_rates": saved["projection_core_rates"],
                            "functions": "bench/cost_model.py admm_epoch (spread solve: the current code; root "
                                         "solve beside it) and sgd_epoch (global batch B on B/128 ranks)",
                            "adam": "modelled as SGD (the optimiser's element-wise update is not in the model)"}
    for cell in cells:
        entry = result["datasets"].setdefault(cell["dataset"], {"target": cell["target"], "batches": {}})
        if cell.get("skipped"):
            entry["skipped"] = cell["skipped"]
            continue
        entry["batches"].setdefault(str(cell["batch"]), {})[cell["method"]] = cell
    for dataset, entry in result["datasets"].items():
        for batch, methods in entry["batches"].items():
            some = next(iter(methods.values()))
            widths, n = some["widths"], some["n_train"]
            seconds = modelled_seconds(widths, n, int(batch))
            for method, cell in methods.items():
                per_epoch = None if seconds is None else (
                    seconds["admm_spread_solve"] if method == "admm" else seconds["sgd"])
                cell["modelled"] = None if seconds is None else {
                    "ranks": seconds["ranks"], "seconds_per_epoch": per_epoch,
                    "seconds_to_target": None if cell["epochs_to_target"] is None else
                    cell["epochs_to_target"] * per_epoch,
                    **({"root_solve_seconds_per_epoch": seconds["admm_root_solve"]} if method == "admm" else {})}
        entry["crossover"] = crossover(entry)
    result["cells_commands"] = sorted({c["command"] for c in cells if c.get("command") and c["method"] != "admm"} |
                                      {c.get("script_command") for c in cells if c.get("script_command")})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = run_record()
    result = portable({**result, **record})
    for name, text in (("large_batch.json", json.dumps(result, indent=2) + "\n"), ("large_batch.md", markdown(result))):
        tmp = out_dir / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out_dir / name)
    return result


def epochs_lower_bound(cell):
    """Epochs a cell that never reached its target would need at least: more than it ran (ADMM), or than the
    shortest of its rates' runs that did not diverge (PyTorch; all diverged: the cap)."""
    if cell["epochs_to_target"] is not None:
        return None
    if cell["method"] == "admm":
        return cell["epochs_run"]
    alive = [r["epochs_run"] for r in cell["runs"] if not r["stopped"].startswith("diverged")]
    return min(alive) if alive else cell["cap"]


def crossover(entry):
    """Per batch: modelled seconds to the target of ADMM and of the faster PyTorch optimiser, who is faster.

    A side that never reached the target needs more than ``epochs_lower_bound`` epochs: it is slower only
    when the other side's time is below that bound's seconds; otherwise the order is undetermined."""
    rows = []
    for batch in sorted(entry["batches"], key=int):
        methods = entry["batches"][batch]
        times, bounds = {}, {}
        for m, c in methods.items():
            if not c.get("modelled"):
                continue
            times[m] = c["modelled"]["seconds_to_target"]
            if times[m] is None:
                bounds[m] = epochs_lower_bound(c) * c["modelled"]["seconds_per_epoch"]
        torch_reached = {m: t for m, t in times.items() if m != "admm" and t is not None}
        best_torch = min(torch_reached.items(), key=lambda kv: kv[1]) if torch_reached else None
        a = times.get("admm")
        torch_bound = min((b for m, b in bounds.items() if m != "admm"), default=None)
        if "admm" not in times or len(times) < 2:
            faster = "not compared (a side was not run)"
        elif a is None and best_torch is None:
            faster = "neither reached the target"
        elif a is None:
            faster = best_torch[0] if best_torch[1] < bounds["admm"] else \
                f"undetermined ({best_torch[0]} {best_torch[1]:.3g} s; ADMM did not reach it, > {bounds['admm']:.3g} s)"
        elif best_torch is None:
            faster = "admm" if a < torch_bound else \
                f"undetermined (ADMM {a:.3g} s; PyTorch did not reach it, > {torch_bound:.3g} s)"
        else:
            faster = "admm" if a < best_torch[1] else best_torch[0]
        rows.append({"batch": int(batch), "ranks": int(batch) // SGD_BATCH_PER_RANK, "admm_seconds_to_target": a,
                     "admm_seconds_lower_bound": bounds.get("admm"), "torch_seconds_lower_bound": torch_bound,
                     "best_torch": best_torch and {"method": best_torch[0], "seconds_to_target": best_torch[1]},
                     "faster": faster})
    wins = [r["batch"] for r in rows if r["faster"] == "admm"]
    losses = [r["batch"] for r in rows if r["faster"] in ("sgd_momentum", "adam")]
    statement = (f"ADMM's modelled time to the target is below the PyTorch optimisers' at global batch "
                 f"{', '.join(map(str, wins))}" if wins else
                 "ADMM's modelled time to the target is below the PyTorch optimisers' at no global batch measured")
    if losses:
        statement += f"; above the faster optimiser's at {', '.join(map(str, losses))}"
    return {"rows": rows, "admm_faster_at_batches": wins, "torch_faster_at_batches": losses,
            "statement": statement}


def fmt_bytes(b):
    return "—" if b is None else f"{b / 1e9:.3g} GB" if b >= 1e9 else f"{b / 1e6:.3g} MB"


def fmt_s(s):
    return "—" if s is None else f"{s:.3g} s"


def markdown(result):
    lines = ["# Large batches: epochs and bytes to a validation target", "",
             f"Assembled by `{result['command']}` at commit {result['commit']}; each cell names its own command.",
             f"Validation rows: {result['validation']}. {result['selection']}. PyTorch: the recipe's MLP, linear "
             f"scaling rule (lr = base_lr · B / {result['base_batch']}) with linear warm-up per step over "
             f"{result['warmup_epochs']} epochs, then constant; base lr grid spaced by √10, widened until the pick is "
             "interior. Global batch B = 128·P: the cluster has P = B / 128 ranks.",
             f"Bytes per epoch: ADMM measured at 2 ranks (summary.json `bytes_per_iteration`, all ranks); "
             f"{result['sgd_bytes_model']}, given at 2 ranks and at P ranks (all ranks).",
             f"Modelled seconds: `{result['cost_model']['functions']}`, with the per-core rates and fitted collectives "
             f"of `{result['cost_model']['file']}` (commit {str(result['cost_model']['commit'])[:7]}): "
             f"{result['cost_model']['ranks_per_node']} ranks per node, {result['cost_model']['network']['source']}. "
             f"Adam is {result['cost_model']['adam']}.", ""]
    if result.get("notes"):
        lines += ["## Scope: what ran and what was cut", "", *[f"- {n}" for n in result["notes"]], ""]
    for dataset, entry in result["datasets"].items():
        lines += [f"## {dataset}: validation accuracy {entry['target']}", ""]
        if entry.get("skipped"):
            lines += [f"skipped: {entry['skipped']}", ""]
            continue
        some = next(iter(next(iter(entry["batches"].values())).values()), {})
        lines += [f"MLP {'-'.join(map(str, some.get('widths', [])))}, {some.get('n_train')} training, "
                  f"{some.get('n_validation')} validation, {some.get('n_test')} test rows; epoch cap "
                  f"{some.get('cap')}, early stopping after {some.get('patience')} epochs without a better "
                  "validation accuracy (the recipe's).", "",
                  "| global batch (P) | method | epochs to target (validation) | kept epoch: validation / test | "
                  "base lr grid → pick (scaled lr) | bytes/epoch, 2 ranks | bytes/epoch, P ranks | modelled s/epoch "
                  "| modelled s to target |", "|---|---|---|---|---|---|---|---|---|"]
        for batch in sorted(entry["batches"], key=int):
            for method in METHODS:
                cell = entry["batches"][batch].get(method)
                if cell is None:
                    lines.append(f"| {batch} ({int(batch) // 128}) | {method} | not run | | | | | | |")
                    continue
                e = cell["epochs_to_target"]
                reached = f"**{e}**" if e is not None else f"not in {cell['epochs_run']} (cap {cell['cap']})"
                if cell.get("partial") or cell.get("from_run_directory"):
                    reached += " †"
                kept = (f"{cell['kept_epoch']}: {cell['validation_accuracy_at_kept']:.4f} / "
                        f"{cell['test_accuracy_at_kept']:.4f}" if cell.get("test_accuracy_at_kept") is not None else "—")
                if method == "admm":
                    grid, two, cluster = "—", fmt_bytes(cell["bytes_per_epoch"]["all_ranks"]), "not modelled"
                else:
                    runs = ", ".join(f"{r['base_lr']:g}" + ("" if r["epochs_to_target"] is None else
                                                           f" ({r['epochs_to_target']})") for r in cell["runs"])
                    grid = (f"{runs} → **{cell['lr_pick']:g}** ({cell['lr_pick_scaled']:g})"
                            + ("" if cell["pick_interior"] else " (grid interrupted: not interior)"
                               if cell.get("partial") else " (edge: widening capped)"))
                    two = fmt_bytes(cell["bytes_per_epoch"]["modelled_2_ranks"]["all_ranks"])
                    cluster = fmt_bytes(cell["bytes_per_epoch"]["modelled_cluster"]["all_ranks"])
                m = cell.get("modelled") or {}
                lines.append(f"| {batch} ({int(batch) // 128}) | {method} | {reached} | {kept} | {grid} | {two} | "
                             f"{cluster} | {fmt_s(m.get('seconds_per_epoch'))} | {fmt_s(m.get('seconds_to_target'))} |")
        notes = [f"- {dataset}, B = {c['batch']}, {c['method']}: {c.get('partial') or c.get('stopped')}"
                 for methods in entry["batches"].values() for c in methods.values()
                 if c.get("partial") or c.get("from_run_directory")]
        lines += ["", "In the grid column each base lr is followed by its epochs to the target where it reached it. "
                  "A rate stopped after another reached the target in e epochs is `pruned` in the JSON.", ""]
        if notes:
            lines += ["† Cells cut short (their curves are what ran; a PyTorch cell cut short has no pick scored on "
                      "test):", "", *notes, ""]
        lines += ["Modelled time to accuracy on the cluster: " + entry["crossover"]["statement"] + ".", ""]
        for r in entry["crossover"]["rows"]:
            best = r["best_torch"]
            admm_text = fmt_s(r["admm_seconds_to_target"]) if r["admm_seconds_lower_bound"] is None else \
                f"not reached (> {fmt_s(r['admm_seconds_lower_bound'])})"
            torch_text = fmt_s(best["seconds_to_target"]) if best else \
                "not reached" + (f" (> {fmt_s(r['torch_seconds_lower_bound'])})" if r["torch_seconds_lower_bound"] else "")
            lines.append(f"- B = {r['batch']} (P = {r['ranks']}): ADMM {admm_text}, best PyTorch {torch_text}"
                         f"{' (' + best['method'] + ')' if best else ''}; faster: {r['faster']}.")
        lines.append("")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


def save_cell(cells_dir, cell):
    Path(cells_dir).mkdir(parents=True, exist_ok=True)
    record = run_record()
    cell = portable({**cell, "script_command": record["command"], "commit": record["commit"]})
    path = cell_path(cells_dir, cell)
    path.write_text(json.dumps(cell, indent=2) + "\n")
    return path


def cell_path(cells_dir, cell):
    return Path(cells_dir) / f"{cell['dataset']}-{cell['method']}-{cell.get('batch', 'all')}.json"


def restore_cells(results, cells_dir):
    """Write each cell of an assembled results file back to ``cells_dir`` unless a cell of the same data
    set, method and batch is there: the cells as they were saved, without the model figures of assembly."""
    saved = json.loads(Path(results).read_text())
    Path(cells_dir).mkdir(parents=True, exist_ok=True)
    for entry in saved["datasets"].values():
        for methods in entry["batches"].values():
            for cell in methods.values():
                path = cell_path(cells_dir, cell)
                if not path.exists():
                    cell = {k: v for k, v in cell.items() if k != "modelled"}
                    path.write_text(json.dumps(cell, indent=2) + "\n")
                    print("restored", portable(str(path)), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="mnist,fashion_mnist")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--cap", type=int, default=20, help="epoch cap, the same for every method")
    parser.add_argument("--max-lrs", type=int, default=6, help="base learning rates at most per optimiser and batch")
    parser.add_argument("--sgd-centre", type=float, default=CENTRES["sgd_momentum"], help="first SGD base lr tried")
    parser.add_argument("--adam-centre", type=float, default=CENTRES["adam"], help="first Adam base lr tried")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--admm-source", metavar="DIR",
                        help="run admm-mpi from this source tree, named src-<commit> (git archive <commit> | tar -x "
                             "-C DIR) instead of the checkout")
    parser.add_argument("--hidden", help="override the recipe's hidden widths (quick mode, tests)")
    parser.add_argument("--progress", metavar="DIR", help="keep each PyTorch grid's finished rates in DIR and "
                                                          "continue from them (a grid spread over sittings)")
    parser.add_argument("--assemble", action="store_true", help="only assemble the cells into the results")
    parser.add_argument("--restore-cells", metavar="JSON", help="first write each cell of this results file that "
                        "--cells lacks (the cells live under runs/, which a fresh checkout does not have)")
    parser.add_argument("--admm-run", metavar="DIR", help="make the ADMM cell of --datasets/--batches from this "
                                                         "earlier run directory of the same command (with --why)")
    parser.add_argument("--salvage", metavar="LOG", help="make the --methods cell of --datasets/--batches from the "
                                                        "progress lines of an interrupted run's LOG (with --why)")
    parser.add_argument("--note", action="append", default=[], help="a line of the results' scope section "
                                                                      "(what ran, what was cut; repeatable)")
    parser.add_argument("--why", default="", help="why --admm-run or --salvage was needed (recorded)")
    parser.add_argument("--quick", action="store_true", help="seconds: digits, two tiny batches, 4 epochs, 32 units")
    parser.add_argument("--cache", default=str(REPO / "bench" / ".data"), help="converted data sets (not committed)")
    parser.add_argument("--cells", default=str(REPO / "runs" / "large_batch" / "cells"), help="one JSON per cell")
    parser.add_argument("--runs", default=str(REPO / "runs" / "large_batch"), help="ADMM run directories")
    parser.add_argument("--out", default=str(RESULTS), help="directory of large_batch.json and .md")
    args = parser.parse_args(argv)
    if args.quick:
        args.datasets, args.batches = QUICK["dataset"], ",".join(map(str, QUICK["batches"]))
        args.cap, args.hidden, args.max_lrs = QUICK["cap"], args.hidden or ",".join(map(str, QUICK["hidden"])), \
            QUICK["max_lrs"]
        if args.cells == parser.get_default("cells"):
            args.cells, args.runs = str(Path(args.out) / "cells"), str(Path(args.out) / "runs")
    hidden = [int(h) for h in args.hidden.split(",")] if args.hidden else None
    methods = args.methods.split(",")
    centres = {"sgd_momentum": args.sgd_centre, "adam": args.adam_centre}
    if args.restore_cells:
        restore_cells(args.restore_cells, args.cells)
    if args.admm_run or args.salvage:
        dataset, batch = args.datasets, int(args.batches)
        data, _ = data_path(dataset, args.cache)
        cell = (admm_from_run(dataset, data, Path(args.admm_run), args.cap, TARGETS[dataset], args.why, hidden)
                if args.admm_run else torch_from_log(args.salvage, dataset, data, args.methods, batch, args.cap,
                                                     TARGETS[dataset], args.why))
        cell.update(dataset=dataset, target=TARGETS[dataset], batch=batch)
        save_cell(args.cells, cell)
        args.assemble = True
    if not args.assemble:
        try:
            import torch  # noqa: F401
            has_torch = True
        except ImportError:
            has_torch = False
        for dataset in args.datasets.split(","):
            target = TARGETS[dataset]
            data, reason = data_path(dataset, args.cache)
            if data is None:
                print(f"skipping {dataset}: {reason}", flush=True)
                save_cell(args.cells, {"dataset": dataset, "method": "all", "target": target, "skipped": reason})
                continue
            for batch in (int(b) for b in args.batches.split(",")):
                for method in methods:
                    if method == "admm":
                        cell = run_admm(dataset, data, batch, args.cap, target, args.runs, hidden,
                                        source=args.admm_source)
                    elif not has_torch:
                        print(f"skipping {method}: torch is not installed (pip install -e '.[bench]')", flush=True)
                        continue
                    else:
                        cell = tune_torch(dataset, data, method, batch, args.cap, target, hidden, args.max_lrs,
                                          centres[method], args.torch_threads, args.progress)
                        cell["command"] = run_record()["command"]
                    cell.update(dataset=dataset, target=target, batch=batch)
                    print(f"{dataset} {method} batch {batch}: {cell['epochs_to_target']} epochs to {target}, kept "
                          f"epoch {cell['kept_epoch']}, test {cell['test_accuracy_at_kept']}", flush=True)
                    save_cell(args.cells, cell)
    result = assemble(args.cells, args.out, quick=args.quick, notes=args.note)
    print("wrote", Path(args.out) / "large_batch.json", Path(args.out) / "large_batch.md")
    return result


if __name__ == "__main__":
    main()
