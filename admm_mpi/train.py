"""The training loop: data, solver, schedule, stopping, metrics and outputs.

Every rank runs this same loop. Rank 0 owns the decisions (stop, diverged) and broadcasts them,
writes every file, and is the only rank that prints.
"""

import json
import math
import os
import platform
import resource
import statistics
import sys
import time
import types
import uuid
import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from admm_mpi import __version__
from admm_mpi import checkpoint
from admm_mpi.backend import DTYPES, device_namespace, from_host, is_numpy, namespace, to_host
from admm_mpi.config import without_validation
from admm_mpi.data import data_fingerprint, fingerprint_difference, load_shard, resolve_path
from admm_mpi.errors import InputError, TrainingError
from admm_mpi.files import create_file, open_nofollow
from admm_mpi.model import ModelSpec, predict, save_model
from admm_mpi.solvers import make_solver
from admm_mpi.solvers.batches import INTERRUPTED
from admm_mpi.stopping import StopRequest
from admm_mpi.timing import NO_TIMER, PhaseTimer


def open_out_dir(config, grid):
    """Create, lock and check the run directory (collective); the root keeps the lock."""
    from admm_mpi.rundir import RunDirectory

    return RunDirectory(config.out).open(grid, resuming=bool(config.resume))


def count_correct(spec, weights, biases, X, y):
    """Correctly classified columns (0 without labels, e.g. for regression); labels stay on the host."""
    return int(np.sum(to_host(predict(spec, weights, biases, X)) == y)) if y is not None and y.size else 0


def to_device(shard, device, grid):
    """The shard's arrays on ``device`` ("cpu": as read; "gpu": cupy arrays on this rank's GPU).

    Ranks on one node take the node's GPUs round-robin by their rank on the node.
    """
    if device == "cpu":
        return shard
    xp = device_namespace(device)
    from admm_mpi.devices import device_for

    xp.cuda.Device(device_for(grid.local_rank(), xp.cuda.runtime.getDeviceCount())).use()
    shard.X, shard.X_test = xp.asarray(shard.X), xp.asarray(shard.X_test)
    if shard.X_val is not None:
        shard.X_val = xp.asarray(shard.X_val)
    if shard.Y is not None:
        shard.Y = xp.asarray(shard.Y)
    return shard


def _write_json(path, obj):
    tmp = f"{path}.tmp"
    try:
        with create_file(tmp) as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except OSError:
        if os.path.isfile(tmp) and not os.path.islink(tmp):
            os.remove(tmp)
        raise


class _Progress:
    """tqdm bar on the root only; silent elsewhere and when disabled."""

    def __init__(self, enabled, total):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="admm-mpi", unit="it", dynamic_ncols=True)

    def update(self, row):
        if self.bar is not None:
            shown = {"obj": f"{row['objective']:.4g}", "res": f"{row['residual']:.3g}"}
            for key, split in (("train", "train_accuracy"), ("val", "validation_accuracy"), ("test", "test_accuracy")):
                if row.get(split) is not None:  # evaluated at this iteration
                    shown[key] = f"{row[split]:.4f}"
            self.bar.set_postfix(shown)
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def process_grid(config, grid):
    """The grid the solver works on: the world itself, or a layer groups x data shards grid."""
    if not config.solver_class().layer_parallel:
        return grid
    from admm_mpi.grid import ProcessGrid

    groups = {"data": 1, "layer": grid.size, "hybrid": config.layer_groups}[config.layout]
    grid.agree(None if grid.size % groups == 0 else
               f"{groups} layer groups do not divide {grid.size} ranks; the hybrid grid is G x P/G")
    return ProcessGrid(grid, groups)


def build(config, grid, shard=None):
    """Load this rank's data (unless given); build the model spec and solver.

    Returns ``(config, shard, spec, solver)``: ``config`` is the one to run, without early
    stopping and keeping the last iterate when the data has no validation rows and those were
    defaults (:func:`~admm_mpi.config.without_validation`).
    """
    dtype = DTYPES[config.dtype]
    if config.device == "gpu":
        problem = None
        try:
            device_namespace("gpu").cuda.runtime.getDeviceCount()
        except Exception as exc:  # no cupy, no driver, no device
            problem = f"--device gpu needs cupy and a CUDA GPU on every rank ({exc})"
        grid.agree(problem)
    procs = process_grid(config, grid)
    if shard is None:
        with grid.timer.phase("I/O"):
            shard = load_shard(config.data, grid, dtype, part=procs.data,
                                     validation_fraction=config.validation_fraction, seed=config.seed,
                                     read_test=config.eval_test != "never",
                               validation_optional="validation_fraction" not in config.given)
        shard = to_device(shard, config.device, grid)
        if shard.validation_source == "file" and "validation_fraction" in config.given and grid.is_root:
            print(f"admm-mpi: warning: {config.data} has its own validation split (X_val, y_val), which is "
                  f"used: validation_fraction {config.validation_fraction} holds nothing out", file=sys.stderr,
                  flush=True)
    if not shard.n_val_total:
        config = without_validation(config)
    warn_if_not_standardised(shard, procs.data, grid.is_root)
    from admm_mpi.ops.losses import get_loss

    loss = get_loss(config.resolved_loss())
    if shard.Y is None:
        grid.agree(loss.check_classes(shard.n_classes))
    spec = ModelSpec(
        widths=(shard.n_features, *config.hidden, loss.n_outputs(shard.n_classes)),
        activation=config.resolved_activation(),
        loss=loss.name,
        n_classes=shard.n_classes,
    )
    solver = make_solver(config.solver, spec, procs, shard.n_total, config.solver_params())
    return config, shard, spec, solver


FEATURE_SCALE_LIMIT = 10.0  # warn when a feature column's |mean| or std exceeds this (digits: at most 0.76)
FEATURE_SCALE_FLOOR = 0.1   # or when even the widest column's std is below this


def feature_scale_problem(sums, squares, n):
    """Why features with per-column ``sums`` and ``squares`` (sums of squares) over ``n`` rows are
    far from standardised (zero mean, unit variance), or None; the thresholds are loose on purpose:
    data scaled to [0, 1] (the bundled digits) passes, raw pixels in [0, 255] do not."""
    mean = sums / n
    std = np.sqrt(np.maximum(squares / n - mean**2, 0.0))
    largest_mean, largest_std = float(np.max(np.abs(mean))), float(np.max(std))
    if largest_mean > FEATURE_SCALE_LIMIT or largest_std > FEATURE_SCALE_LIMIT:
        return (f"training features are far from standardised (largest column |mean| {largest_mean:.3g}, "
                f"std {largest_std:.3g})")
    if largest_std < FEATURE_SCALE_FLOOR:
        return f"training features hardly vary (largest column std {largest_std:.3g})"
    return None


def warn_if_not_standardised(shard, data_grid, is_root):
    """One ``admm-mpi: warning:`` line on the root when the training features are far from standardised.

    The column sums are reduced over ``data_grid``, the ranks that split the training rows.
    """
    d, n_local, block = shard.n_features, shard.X.shape[1], 4096
    local = np.zeros(2 * d)
    for first in range(0, n_local, block):  # in float64, without copying the whole shard
        columns = to_host(shard.X[:, first:min(first + block, n_local)]).astype(np.float64)
        local[:d] += columns.sum(axis=1)
        local[d:] += np.einsum("ij,ij->i", columns, columns)
    sums = data_grid.allsum(local)
    problem = feature_scale_problem(sums[:d], sums[d:], shard.n_total)
    if problem and is_root:
        print(f"admm-mpi: warning: {problem}; the default settings expect zero mean and unit variance "
              "(admm-mpi data convert --standardize)", file=sys.stderr, flush=True)


SCORES = ("train_accuracy", "validation_accuracy", "validation_loss", "test_accuracy")


def _split_sums(solver, spec, model, X, y, Y=None):
    """``[correct predictions, summed loss]`` on this rank's columns (loss only with targets ``Y``)."""
    out = solver.outputs(model, X)  # None on a layer group without the output layer
    if out is None or y is None or not y.size:
        return [0.0, 0.0]
    correct = float(np.sum(to_host(spec.loss_fn.predict(out)) == y))
    return [correct, float(spec.loss_fn.value(out, Y)) if Y is not None else 0.0]


def evaluate_model(solver, spec, model, shard, grid, splits, Y_val=None):
    """Accuracies of ``model`` (weights, biases) on ``splits`` and the validation loss per row.

    ``splits`` names some of train, validation, test; every rank must ask for the same. A split
    that is not asked for, or has no rows or labels, scores None. The counts of correct
    predictions are exact integers, bit-identical on every rank (``Grid.allsum``), so every rank
    reaches the same stopping and selection decisions from them without another broadcast.
    """
    data = {"train": (shard.X, None if shard.Y is not None else shard.y, shard.n_total, None),
            "validation": (shard.X_val, shard.y_val, shard.n_val_total, Y_val),
            "test": (shard.X_test, shard.y_test, shard.n_test_total, None)}
    asked = [s for s in splits if data[s][2] and data[s][0] is not None and (s != "train" or shard.Y is None)]
    local = [v for s in asked for v in _split_sums(solver, spec, model, data[s][0], data[s][1], data[s][3])]
    totals = grid.allsum(np.array(local, dtype=np.float64)) if asked else []
    scores = dict.fromkeys(SCORES)
    for k, split in enumerate(asked):
        n = data[split][2]
        scores[f"{split}_accuracy"] = totals[2 * k] / n
        if split == "validation":
            scores["validation_loss"] = totals[2 * k + 1] / n
    return scores


def _copy_model(state):
    """A copy of the current weights and biases (None where a layer grid keeps a layer elsewhere)."""
    copy = [[None if a is None else namespace(a).asarray(a, copy=True) for a in arrays]
            for arrays in (state.weights, state.biases)]
    return types.SimpleNamespace(weights=copy[0], biases=copy[1])


@dataclass
class Selection:
    """Best validation accuracy so far, its iteration and metrics row, a copy of its weights (when
    kept), and the evaluations since it last improved (for early stopping).

    Checkpointed beside the solver's state (global entries): a resumed run keeps the best iterate
    and the early-stopping count of the run it continues, so it selects and stops as that run
    would have without the interruption.
    """
    sample_fields: ClassVar[tuple] = ()
    best_accuracy: float = None
    best_iteration: int = None
    best_row: dict = None
    best_weights: list = None
    best_biases: list = None
    evaluations_since_best: int = 0

    def update(self, iteration, accuracy, model, keep_copy):
        """Record an evaluation; a strictly better accuracy becomes the best (the first one wins ties)."""
        if accuracy is None:
            return
        if self.best_accuracy is None or accuracy > self.best_accuracy:
            self.best_accuracy, self.best_iteration, self.evaluations_since_best = float(accuracy), int(iteration), 0
            if keep_copy:
                copy = _copy_model(model)
                self.best_weights, self.best_biases = copy.weights, copy.biases
            else:  # never another iterate's weights under this row
                self.best_weights = self.best_biases = None
        else:
            self.evaluations_since_best += 1

    @property
    def model(self):
        """The best iterate's weights and biases, or None (not kept, or nothing evaluated yet)."""
        if self.best_weights is None:
            return None
        return types.SimpleNamespace(weights=self.best_weights, biases=self.best_biases)


def _evaluate_iteration(config, solver, spec, state, shard, grid, Y_val, iteration, decision, selection):
    """This iteration's scores (None where not evaluated) and the loop's decision after them.

    Evaluated every ``eval_every`` iterations, at the last one and whenever the loop is about
    to stop; the training and test rows only as ``eval_train`` and ``eval_test`` ask (``end``:
    here only when the last iterate is the one kept; else :meth:`Run.kept`). Early stopping:
    ``patience`` evaluations without a better validation accuracy. The training and test scores
    never reach ``selection`` or a decision.
    """
    due = decision is not None or iteration % config.eval_every == 0 or iteration == config.iters
    if decision == "diverged" or not due:
        return dict.fromkeys(SCORES), decision
    model = solver.evaluated(state)
    every = tuple(s for s, when in (("train", config.eval_train), ("validation", "every")) if when == "every")
    scores = evaluate_model(solver, spec, model, shard, grid, every, Y_val)
    selection.update(iteration, scores["validation_accuracy"], model, keep_copy=config.keep == "best")
    if decision is None and config.early_stopping and selection.evaluations_since_best >= config.patience:
        decision = "early_stopped"
    final = decision is not None or iteration == config.iters
    # the test rows asked for at every evaluation, and either split asked for at the end of a run
    # that keeps its last iterate (the training rows asked for every time were scored above)
    later = tuple(s for s, when in (("train", config.eval_train), ("test", config.eval_test))
                  if (s == "test" and when == "every") or (when == "end" and config.keep == "last" and final))
    if later:
        found = evaluate_model(solver, spec, model, shard, grid, later)
        scores.update({f"{s}_accuracy": found[f"{s}_accuracy"] for s in later})
    return scores, decision


@dataclass
class ResumePoint:
    """Where a run starts: its first iteration, the checkpoint it continues (None: afresh), its run
    identity (None: a new one), and the record of a run that already finished here (then nothing
    is to be done)."""
    first: int = 1
    checkpoint: str = None
    run_id: str = None
    finished: dict = None


FINISHED_FORMAT = "admm-mpi finished run"


def _finished_record(path):
    """The ``finished.json`` at ``path`` (a dict), None if there is none, or a message if damaged."""
    try:
        with open_nofollow(path) as f:
            record = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return f"{path} is unreadable ({exc})"
    fields = {"run_id": str, "stopped": str, "line": str, "config": dict, "data": dict}
    if not isinstance(record, dict) or record.get("format") != FINISHED_FORMAT or any(
            not isinstance(record.get(k), kind) for k, kind in fields.items()):
        return f"{path} is damaged (not a finished-run record)"
    return record


def finished_here(config, grid, data):
    """Collective: the record of the run that finished in ``config.out``, when ``--resume`` would
    continue that very run (``auto``, the run directory, or one of its checkpoints); else None.

    Finished means stopped early, converged or diverged, or ran its ``--iters``: the same command
    again (a Slurm requeue) changes nothing. Only a larger ``--iters`` than the run had continues
    a run that ran its budget.

    Its configuration and data must be this run's, as a checkpoint's must: a resumed command that
    differs is refused, never answered with another run's outcome.
    """
    record = None
    if grid.is_root:
        source = checkpoint.source_run_directory(config.resume, config.out)
        try:
            in_place = os.path.samefile(source, config.out)
        except OSError:
            in_place = False
        if in_place:
            record = _finished_record(os.path.join(config.out, "finished.json"))
            if isinstance(record, str):
                warnings.warn(f"{record}; ignored: resuming from the checkpoints", RuntimeWarning, stacklevel=2)
                record = None
    record = grid.bcast_decision(record)
    if record is None or (record["stopped"] == "iterations" and config.iters > record["config"].get("iters", 0)):
        return None  # not finished, or ran its budget and is asked for more iterations: continue it
    problem = None
    if grid.is_root:
        differ = checkpoint.config_difference(record["config"], config.as_dict())
        data_differ = fingerprint_difference(record["data"], data)
        if differ:
            problem = f"{config.out} holds a finished run with another configuration ({differ}); choose another --out"
        elif data_differ:
            problem = f"{config.out} holds a finished run trained on other data ({data_differ} differ); choose another --out"
    grid.agree(problem)
    return record


def write_finished(config, grid, run_id, data, stopped, line):
    """Root: record in ``finished.json`` that the run in ``config.out`` ended (never on a stop by a
    signal), so a resumed command reports it instead of training on."""
    if not grid.is_root:
        return
    record = {"format": FINISHED_FORMAT, "run_id": run_id, "stopped": stopped, "line": line,
              "config": config.as_dict(), "data": data}
    try:
        _write_json(os.path.join(config.out, "finished.json"), record)
    except OSError as exc:
        print(f"admm-mpi: warning: cannot write {os.path.join(config.out, 'finished.json')} ({exc.strerror or exc}); "
              "a resumed command will not know this run finished", file=sys.stderr, flush=True)


def resume(config, grid, solver, state, shard, selection=None, data=None):
    """Continue from a checkpoint if asked (collective); returns a :class:`ResumePoint`.

    A run that already finished in ``config.out`` is reported, not continued. Otherwise the
    checkpoint is found by scanning (newest intact one first), checked against this run's
    configuration and data (``data``: this run's data fingerprint), and read back re-sharded onto
    this run's ranks, with the model ``selection`` saved beside the state.
    """
    if not config.resume:
        return ResumePoint()
    finished = finished_here(config, grid, data)
    if finished is not None:
        return ResumePoint(finished=finished, run_id=finished["run_id"])
    manifest, run_id = checkpoint.resolve_resume(config.resume, config.out, grid)
    if manifest is None:  # --resume auto on a run without checkpoints: a fresh start
        return ResumePoint(run_id=run_id)
    grid.agree(checkpoint.check_compatible(manifest, config, shard, data) if grid.is_root else None)
    iteration, batches_done = checkpoint.load(manifest, state, shard, grid, needs=solver.needs, extra=selection)
    if manifest.get("state", "full") == "global" and state.sample_fields:
        # weights and schedules only: the per-sample state restarts from the forward pass of the
        # loaded weights (multipliers at 0), as the mini-batch mode starts every batch
        solver.fresh_codes(state, shard.X)
    first = iteration + 1  # a checkpoint inside an epoch continues that epoch after its batches
    grid.agree(None if first <= config.iters else
               f"checkpoint {manifest['path']} is already at iteration {iteration}; ask for more --iters")
    run_id = None if manifest["run_id"] == checkpoint.LEGACY else manifest["run_id"]
    return ResumePoint(first, manifest["path"], run_id)


@dataclass
class TrainResult:
    """What a training job returns on every rank: the summary (the JSON of summary.json) apart
    from the live objects."""

    summary: dict            # JSON-ready; the lists gathered over ranks are on the root only
    state: object            # the solver's final state (this rank's columns of the per-sample fields)
    model: tuple             # (weights, biases) of every layer, on the root (a layer grid spreads them)
    spec: object             # the ModelSpec (widths, activation, loss)
    objective_history: list  # the objective of every iteration of this run


def train(config, grid, *, out=True, shard=None, stop=None, on_evaluation=None):
    """Run a training job; returns its :class:`TrainResult` (on every rank).

    With ``out=False`` nothing is written (the estimator and the tests that compare weights in
    memory); the final state is then in the result's ``state``. ``shard`` replaces reading
    ``config.data`` (in-memory data, e.g. from the scikit-learn estimator). ``stop`` is the
    :class:`~admm_mpi.stopping.StopRequest` the signal handlers set (None: nothing stops the run).
    ``on_evaluation(iteration, scores)`` is called on every rank after each evaluation of the
    validation split (``scores``: the accuracies of :func:`evaluate_model`); when it returns True
    the run stops there as ``pruned`` (a tuner's pruner). It must return the same on every rank.
    """
    run_dir = open_out_dir(config, grid) if out else None
    before = grid.implementation, grid.timer
    grid.implementation, grid.timer = config.implementation, PhaseTimer() if config.profile else NO_TIMER
    try:
        return _train(config, grid, out, shard, stop or StopRequest(), on_evaluation)
    finally:
        grid.implementation, grid.timer = before
        if run_dir is not None:
            run_dir.close()


def earlier_rows(path, run_id, first):
    """The rows of the metrics file ``path`` that run ``run_id`` wrote before iteration ``first``
    (None: rows of a run before run identities are taken as its own). A torn or unreadable line
    (a job killed while writing it) is dropped with a warning; another run's rows are dropped."""
    rows, torn = [], 0
    try:
        with open_nofollow(path) as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    torn += 1
                    continue
                if (isinstance(row, dict) and isinstance(row.get("iteration"), int) and row["iteration"] < first
                        and row.get("run_id", run_id) == run_id):
                    rows.append(row)
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        warnings.warn(f"cannot read {path} ({exc}); the rows before iteration {first} are lost", RuntimeWarning,
                      stacklevel=2)
        return []
    if torn:
        warnings.warn(f"{path}: {torn} torn line(s) dropped (a job stopped while writing them)", RuntimeWarning,
                      stacklevel=2)
    return rows


class MetricsSink:
    """``metrics.jsonl`` (root only, when writing outputs) and the progress bar.

    A resumed run keeps its own rows before its first iteration, read from the run directory
    it continues, so the file never repeats one nor holds another run's.
    """

    def __init__(self, config, grid, out, first, source=None, run_id=None):
        self.file = None
        if out and grid.is_root:
            path = os.path.join(config.out, "metrics.jsonl")
            kept = earlier_rows(os.path.join(source, "metrics.jsonl"), run_id, first) if first > 1 and source else []
            self.file = create_file(path)
            self.file.writelines(json.dumps(row) + "\n" for row in kept)
        self.progress = _Progress(out and grid.is_root and config.progress, config.iters)

    def write(self, row):
        if self.file is not None:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
        self.progress.update(row)

    def close(self):
        self.progress.close()
        if self.file is not None:
            self.file.close()


class _Run:
    """One training job's parts: setup, one iteration, the decision, the checkpoint policy, the
    summary. Every rank runs the same calls; rank 0 decides and every rank follows."""

    def __init__(self, config, grid, out, shard, stop, on_evaluation=None):
        self.grid, self.out, self.stop, self.on_evaluation = grid, out, stop, on_evaluation
        self.config, self.shard, self.spec, self.solver = build(config, grid, shard)
        config = self.config  # without early stopping and keep best when the data has no validation rows
        self.solver.stop_request = stop
        shard, spec = self.shard, self.spec
        dtype = to_host(shard.X[:1, :1]).dtype
        Y = shard.Y if shard.Y is not None else spec.loss_fn.targets(shard.y, shard.n_classes, dtype)
        self.Y = from_host(namespace(shard.X), Y, like=shard.X) if is_numpy(Y) else Y  # on the data's device
        self.state = self.solver.init_state(shard.X, self.Y, np.random.default_rng(config.seed))
        self.Y_val = None
        if shard.n_val_total:
            Y_val = spec.loss_fn.targets(shard.y_val, shard.n_classes, dtype)
            self.Y_val = from_host(namespace(shard.X), Y_val, like=shard.X)
        self.selection = Selection()
        # what checkpoints record and a resume checks: the whole content of the rows this run trains on
        self.data = data_fingerprint(shard, self.solver.grid.data) if out else None
        point = resume(config, grid, self.solver, self.state, shard, self.selection, self.data)
        self.first, self.resumed_from, self.finished = point.first, point.checkpoint, point.finished
        self.run_id = grid.bcast_decision(point.run_id or (uuid.uuid4().hex if grid.is_root else None))
        if out and point.finished is None and grid.is_root and config.resume:
            from admm_mpi.rundir import RunDirectory

            RunDirectory(config.out).mark_unfinished()  # this directory now holds a run that has not ended
        if config.keep == "best" and self.selection.best_iteration is not None and self.selection.model is None:
            # resumed with --keep best from a run with --keep last: its best iterate's weights are gone
            if grid.is_root:
                print(f"admm-mpi: warning: the checkpoint kept no copy of its best iterate (iteration "
                      f"{self.selection.best_iteration}; it ran with --keep last), so the search for the best "
                      f"iterate starts again at iteration {self.first}", file=sys.stderr, flush=True)
            self.selection = Selection()
        self.seconds, self.step_seconds, self.objectives = [], [], []
        self.bytes_per_iteration, self.evaluation_bytes = [], []
        self.row, self.decision, self.saved, self.inside = None, None, None, None
        self.iteration = self.first - 1

    def summed_metrics(self):
        """The solver's metrics summed over ranks; sums of squares become norms."""
        local = self.solver.local_metrics(self.state, self.Y)
        sums = self.grid.allsum(np.array(list(local.values()), dtype=np.float64))
        metrics = {}
        for name, value in zip(local, sums):
            if name.endswith("_sq"):
                metrics[name[:-3]] = math.sqrt(value) if value >= 0 else float("nan")
            else:
                metrics[name] = float(value)
        return metrics

    def decide(self, metrics):
        """Rank 0's verdict on the metrics and the combined stop request, given to every rank."""
        self.stop.agree(self.grid)  # any rank's signal stops every rank
        decision = None
        if self.grid.is_root:
            if not all(math.isfinite(v) for v in metrics.values()):
                decision = "diverged"
            elif self.config.tol > 0 and metrics["residual"] <= self.config.tol * math.sqrt(self.shard.n_total):
                decision = "converged"
            elif self.stop.agreed:
                decision = "preempted"
        return self.grid.bcast_decision(decision)

    def iteration_step(self, iteration):
        """One iteration; returns its metrics row, or None when a stop request ended it early."""
        t0, sent0 = time.perf_counter(), self.grid.bytes_sent
        # overflow in the iterates is reported once, as "training diverged" by decide() (the
        # metrics are checked every iteration), not as numpy warnings from wherever it began
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            with self.grid.timer.phase("step"):
                interrupted = self.solver.step(self.state, self.Y, iteration) == INTERRUPTED
            if not interrupted:
                self.step_seconds.append(time.perf_counter() - t0)
                sent1 = self.grid.bytes_sent
                metrics = self.summed_metrics()
        if interrupted:  # between two batches
            self.saved = self.checkpoint(iteration - 1, self.state.batches_done)
            self.inside, self.decision, self.iteration = iteration, "preempted", iteration - 1
            return None
        decision = self.decide(metrics)
        with self.grid.timer.phase("evaluation"):
            scores, self.decision = _evaluate_iteration(self.config, self.solver, self.spec, self.state, self.shard,
                                                        self.grid, self.Y_val, iteration, decision, self.selection)
        if self.on_evaluation is not None and scores["validation_accuracy"] is not None:
            if self.on_evaluation(iteration, scores) and self.decision is None:
                self.decision = "pruned"
        self.solver.end_of_iteration(self.state, metrics)  # schedules: same global values on every rank
        self.bytes_per_iteration.append(sent1 - sent0)  # the training's traffic; metrics counted apart
        self.evaluation_bytes.append(self.grid.bytes_sent - sent1)
        self.seconds.append(time.perf_counter() - t0)
        row = {"iteration": iteration, "objective": metrics.pop("objective"), "residual": metrics.pop("residual"),
               **scores, "seconds": self.seconds[-1], "step_seconds": self.step_seconds[-1], **metrics,
               "run_id": self.run_id}
        if self.selection.best_iteration == iteration:
            self.selection.best_row = row
        self.objectives.append(row["objective"])
        return row

    def checkpoint(self, iteration, batches_done=0):
        if not self.out:
            return None
        with self.grid.timer.phase("I/O"):
            return checkpoint.save(self.config.out, iteration, self.state, self.shard, self.config, self.grid,
                                   owns=self.solver.owns, batches_done=batches_done, extra=self.selection,
                                   run_id=self.run_id, data=self.data)

    def loop(self):
        """Iterate until the budget, convergence, early stopping or a stop request."""
        source = os.path.dirname(os.path.dirname(self.resumed_from)) if self.resumed_from else None
        sink = MetricsSink(self.config, self.grid, self.out, self.first, source, self.run_id)
        try:
            for iteration in range(self.first, self.config.iters + 1):
                row = self.iteration_step(iteration)
                if row is None:
                    return
                self.row, self.iteration = row, iteration
                sink.write(row)
                if self.decision == "diverged":
                    message = f"training diverged at iteration {iteration}: the objective is not finite"
                    if self.out:
                        write_finished(self.config, self.grid, self.run_id, self.data, "diverged", message)
                    raise TrainingError(f"{message} (try a larger ridge or smaller beta/gamma)")
                every = self.config.checkpoint_every
                if self.decision == "preempted" or (every and iteration % every == 0):
                    self.saved = self.checkpoint(iteration)
                if self.decision is not None:
                    return
        finally:
            sink.close()

    def kept(self):
        """The iterate that becomes the model, which one it is ("best" or "last": ``--keep best``
        keeps the last iterate until a first evaluation), its metrics row and its test accuracy.

        The training and test accuracies that the row lacks are evaluated here, once, unless
        ``never``: always with ``end``, and with ``every`` where the kept row was not scored on them
        (a best row restored from a checkpoint written under ``end``, or a run stopped by a signal
        inside an epoch after an iteration that ``eval_every`` skipped)."""
        if self.config.keep == "best" and self.selection.model is not None:
            model, row, which = self.selection.model, self.selection.best_row, "best"
        else:  # a run stopped inside its first epoch has no metrics row
            model, row, which = self.solver.evaluated(self.state), self.row or {}, "last"
        test_accuracy = row.get("test_accuracy")
        at_end = tuple(s for s, when in (("train", self.config.eval_train), ("test", self.config.eval_test))
                       if when != "never" and row.get(f"{s}_accuracy") is None)
        if at_end:  # the kept iterate, once
            with self.grid.timer.phase("evaluation"):
                found = evaluate_model(self.solver, self.spec, model, self.shard, self.grid, at_end)
            if "train" in at_end:
                row = {**row, "train_accuracy": found["train_accuracy"]}  # a copy: metrics.jsonl is written
            if "test" in at_end:
                test_accuracy = found["test_accuracy"]
        return model, row, which, test_accuracy

    def summary(self, kept_row, kept, test_accuracy):
        """The run's summary (JSON-ready; lists gathered on the root)."""
        config, grid, shard, decision = self.config, self.grid, self.shard, self.decision
        per_rank_bytes = grid.gather_to_root(_median(self.bytes_per_iteration) or 0)
        per_rank_eval_bytes = grid.gather_to_root(_median(self.evaluation_bytes) or 0)
        peak_memory = grid.gather_to_root(peak_memory_bytes())
        phases = grid.gather_to_root(grid.timer.report()) if config.profile else None
        on_root = grid.is_root
        return {
            "run_id": self.run_id,
            "solver": config.solver, "layout": config.layout, "layer_groups": self.solver.grid.groups,
            "data_shards": self.solver.grid.shards, "ranks": grid.size, "iterations": self.iteration,
            "first_iteration": self.first, "resumed_from": self.resumed_from,
            "stopped": {None: "iterations", "converged": "converged", "preempted": "preempted",
                        "early_stopped": "early_stopping", "pruned": "pruned"}[decision],
            "kept": kept, "kept_iteration": kept_row.get("iteration"),
            "best_validation_iteration": self.selection.best_iteration,
            "train_accuracy": kept_row.get("train_accuracy"),
            "validation_accuracy": kept_row.get("validation_accuracy"),
            "validation_loss": kept_row.get("validation_loss"), "test_accuracy": test_accuracy,
            "seconds_per_iteration": _median(self.seconds),
            "bytes_per_iteration": int(sum(per_rank_bytes)) if on_root else None,
            "bytes_per_iteration_per_rank": [int(b) for b in per_rank_bytes] if on_root else None,
            "evaluation_bytes_per_iteration_per_rank": [int(b) for b in per_rank_eval_bytes] if on_root else None,
            "step_seconds_per_iteration": _median(self.step_seconds),
            "peak_memory_bytes_per_rank": [int(m) for m in peak_memory] if on_root else None,
            # --profile: every rank's exclusive seconds and calls per stack of phases (admm_mpi.timing)
            "phase_seconds": phases if on_root else None,
            "objective": kept_row.get("objective"), "residual": kept_row.get("residual"),
            "converged": decision == "converged", "preempted": decision == "preempted",
            "stopped_by_signal": self.stop.agreed if decision == "preempted" else None,
            "stopped_inside_iteration": self.inside,  # a mini-batch solver stopped between batches of it
            "checkpoint": self.saved,
            "data": resolve_path(config.data) if shard.name != "in-memory" else "in-memory",
            "n_train": shard.n_total, "n_test": shard.n_test_total, "n_validation": shard.n_val_total,
            "validation_source": shard.validation_source, "widths": list(self.spec.widths),
            "batch_size": self.solver.batch_size,  # as run: minibatch_am's default scales with n_train
            "config": config.as_dict(),
            "versions": {"admm_mpi": __version__, "numpy": np.__version__, "python": platform.python_version()},
        }


def _train(config, grid, out, shard, stop, on_evaluation=None):
    run = _Run(config, grid, out, shard, stop, on_evaluation)
    if run.finished is not None:  # nothing to do: its outputs stay as they are
        if run.solver.grid is not grid:
            run.solver.grid.close()
        return TrainResult({"finished_earlier": True, **run.finished}, run.state, None, run.spec, [])
    run.loop()
    model, kept_row, kept, test_accuracy = run.kept()
    weights, biases = run.solver.full_model(model)
    summary = run.summary(kept_row, kept, test_accuracy)
    if out:
        write_outputs(config, grid, run.spec, weights, biases, summary)
        if not summary["preempted"]:
            write_finished(run.config, grid, run.run_id, run.data, summary["stopped"], summary_line(summary, run.config))
    if run.solver.grid is not grid:
        run.solver.grid.close()  # a layer grid's split communicator
    return TrainResult(summary, run.state, (weights, biases), run.spec, run.objectives)


def summary_line(summary, config):
    """The one line that tells how a run ended: why it stopped, which iterate it kept, its accuracies."""
    stopped = {"early_stopping": f" (early stopping: no better validation accuracy in {config.patience} "
                                 "evaluations)", "converged": f" (converged: residual below --tol {config.tol})",
               "pruned": " (pruned by its tuner)"}
    kept = (f"kept iteration {summary['kept_iteration']} (best validation accuracy)"
            if summary["kept"] == "best" else "")
    figures = [f"{name} accuracy {summary[key]:.4f}" for name, key in (
        ("train", "train_accuracy"), ("validation", "validation_accuracy"), ("test", "test_accuracy"))
        if summary[key] is not None]
    return (f"{summary['iterations']} iterations on {summary['ranks']} rank(s)"
            f"{stopped.get(summary['stopped'], '')}: " + ", ".join(([kept] if kept else []) + figures)
            + f", {summary['seconds_per_iteration']:.3g} s/iteration; outputs in {config.out}")


def _median(values):
    return statistics.median(values) if values else None


def write_outputs(config, grid, spec, weights, biases, summary):
    """model.h5 and summary.json, atomically, by the root; one clear error on every rank if not."""
    problem = None
    if grid.is_root:
        try:
            save_model(os.path.join(config.out, "model.h5"), spec, [to_host(w) for w in weights],
                       [to_host(b) for b in biases], extra={"solver": config.solver, "data": summary["data"]},
                       data=None if summary["data"] == "in-memory" else summary["data"])
            _write_json(os.path.join(config.out, "summary.json"), summary)
        except (OSError, InputError) as exc:  # save_model names the file and the cause
            problem = str(exc) if isinstance(exc, InputError) else \
                f"cannot write {os.path.join(config.out, 'summary.json')}: {exc.strerror or exc}"
            problem += (f"; the last checkpoint is {summary['checkpoint']}" if summary.get("checkpoint")
                        else "; no checkpoint was written (see --checkpoint-every)")
    problem = grid.bcast_decision(problem)
    if problem:
        raise checkpoint.CheckpointError(problem)


def peak_memory_bytes():
    """This process's peak resident memory so far (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def evaluate(model_path, data_path, grid):
    """Accuracy of a saved model on the train and test splits of a data set (sharded over ranks)."""
    from admm_mpi.model import load_model

    spec, weights, biases = load_model(model_path)
    shard = load_shard(data_path, grid, weights[0].dtype, read_validation=False)
    if shard.n_features != spec.widths[0]:
        raise InputError(f"model expects {spec.widths[0]} features, {data_path} has {shard.n_features}")
    counts = grid.allsum(np.array([
        count_correct(spec, weights, biases, shard.X, shard.y),
        count_correct(spec, weights, biases, shard.X_test, shard.y_test),
    ], dtype=np.float64))
    result = {"model": model_path, "data": resolve_path(data_path), "train_accuracy": counts[0] / shard.n_total,
              "n_train": shard.n_total}
    if shard.n_test_total:
        result.update(test_accuracy=counts[1] / shard.n_test_total, n_test=shard.n_test_total)
    return result
