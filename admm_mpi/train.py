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

import numpy as np

from admm_mpi import __version__
from admm_mpi import checkpoint
from admm_mpi.backend import DTYPES, device_namespace, from_host, is_numpy, namespace, to_host
from admm_mpi.data import load_shard, resolve_path
from admm_mpi.errors import InputError, TrainingError
from admm_mpi.model import ModelSpec, predict, save_model
from admm_mpi.solvers import make_solver
from admm_mpi.solvers.batches import INTERRUPTED
from admm_mpi.stopping import StopRequest


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
    xp.cuda.Device(grid.local_rank() % xp.cuda.runtime.getDeviceCount()).use()
    shard.X, shard.X_test = xp.asarray(shard.X), xp.asarray(shard.X_test)
    if shard.Y is not None:
        shard.Y = xp.asarray(shard.Y)
    return shard


def _write_json(path, obj):
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except OSError:
        if os.path.isfile(tmp):
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
            self.bar.set_postfix(obj=f"{row['objective']:.4g}", res=f"{row['residual']:.3g}",
                                 train=f"{row['train_accuracy']:.4f}", test=f"{row['test_accuracy']:.4f}")
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def process_grid(config, grid):
    """The grid the solver works on: the world itself, or a layer groups x data shards grid."""
    if config.solver_class().name != "pdadmm":
        return grid
    from admm_mpi.grid import LayerGrid

    groups = {"data": 1, "layer": grid.size, "hybrid": config.layer_groups}[config.layout]
    grid.agree(None if grid.size % groups == 0 else
               f"{groups} layer groups do not divide {grid.size} ranks; the hybrid grid is G x P/G")
    return LayerGrid(grid, groups)


def build(config, grid, shard=None):
    """Load this rank's data (unless given) and build the model spec and solver."""
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
        shard = to_device(load_shard(config.data, grid, dtype, part=getattr(procs, "data", grid)), config.device, grid)
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
    return shard, spec, solver


def _count_correct(solver, spec, state, X, y):
    if hasattr(solver, "count_correct"):  # layer-parallel: a pipelined forward pass
        return solver.count_correct(state, X, y)
    return count_correct(spec, state.weights, state.biases, X, y)


def resume(config, grid, solver, state, shard):
    """Continue from a checkpoint if asked (collective): ``(first iteration, checkpoint path)``.

    The checkpoint is found by scanning (newest intact one first), checked against this run's
    configuration and data, and read back re-sharded onto this run's ranks.
    """
    if not config.resume:
        return 1, None
    manifest = checkpoint.resolve_resume(config.resume, config.out, grid)
    if manifest is None:  # --resume auto on a run without checkpoints: a fresh start
        return 1, None
    grid.agree(checkpoint.check_compatible(manifest, config, shard) if grid.is_root else None)
    iteration, batches_done = checkpoint.load(manifest, state, shard, grid, needs=getattr(solver, "needs", None))
    first = iteration + 1  # a checkpoint inside an epoch continues that epoch after its batches
    grid.agree(None if first <= config.iters else
               f"checkpoint {manifest['path']} is already at iteration {iteration}; ask for more --iters")
    return first, manifest["path"]


def write_checkpoint(config, grid, solver, state, shard, iteration, batches_done=0):
    return checkpoint.save(config.out, iteration, state, shard, config, grid,
                           owns=getattr(solver, "owns", None), batches_done=batches_done)


def train(config, grid, *, out=True, shard=None, stop=None):
    """Run a training job; returns the summary dict (on every rank).

    With ``out=False`` nothing is written (the estimator and the tests that compare weights in
    memory); the final state is then in ``summary["state"]``. ``shard`` replaces reading
    ``config.data`` (in-memory data, e.g. from the scikit-learn estimator). ``stop`` is the
    :class:`~admm_mpi.stopping.StopRequest` the signal handlers set (None: nothing stops the run).
    """
    run_dir = open_out_dir(config, grid) if out else None
    try:
        return _train(config, grid, out, shard, stop or StopRequest())
    finally:
        if run_dir is not None:
            run_dir.close()


def _train(config, grid, out, shard, stop):
    shard, spec, solver = build(config, grid, shard)
    solver.stop_request = stop
    regression = shard.Y is not None
    Y = shard.Y if regression else spec.loss_fn.targets(shard.y, shard.n_classes, to_host(shard.X[:1, :1]).dtype)
    Y = from_host(namespace(shard.X), Y, like=shard.X) if is_numpy(Y) else Y  # on the data's device
    state = solver.init_state(shard.X, Y, np.random.default_rng(config.seed))

    first, resume_from = resume(config, grid, solver, state, shard)

    metrics_file = None
    if out and grid.is_root:
        metrics_path = os.path.join(config.out, "metrics.jsonl")
        kept = []
        if first > 1 and os.path.exists(metrics_path):  # keep the rows up to the checkpoint
            with open(metrics_path) as f:
                kept = [line for line in f if line.strip() and json.loads(line)["iteration"] < first]
        metrics_file = open(metrics_path, "w")
        metrics_file.writelines(kept)
    progress = _Progress(out and grid.is_root and config.progress, config.iters)
    seconds, step_seconds, row, objectives = [], [], None, []
    bytes_per_iteration, evaluation_bytes = [], []
    converged = preempted = False
    saved = inside = None
    iteration = first - 1
    try:
        for iteration in range(first, config.iters + 1):
            t0 = time.perf_counter()
            sent0 = grid.bytes_sent
            if solver.step(state, Y, iteration) == INTERRUPTED:  # a stop request between two batches
                saved = write_checkpoint(config, grid, solver, state, shard, iteration - 1, state.batches_done) \
                    if out else None
                preempted, inside = True, iteration
                iteration -= 1
                break
            step_seconds.append(time.perf_counter() - t0)
            sent1 = grid.bytes_sent
            local = solver.local_metrics(state, Y)
            names = list(local)
            sums = grid.allsum(np.array([local[n] for n in names] + [
                _count_correct(solver, spec, state, shard.X, None if regression else shard.y),
                _count_correct(solver, spec, state, shard.X_test, shard.y_test),
            ], dtype=np.float64))
            metrics = {}
            for name, value in zip(names, sums):  # sums of squares become norms
                if name.endswith("_sq"):
                    metrics[name[:-3]] = math.sqrt(value) if value >= 0 else float("nan")
                else:
                    metrics[name] = float(value)
            correct, correct_test = sums[-2], sums[-1]
            stop.agree(grid)  # any rank's signal stops every rank
            # Rank 0 decides; everyone follows, so all ranks leave the loop together.
            decision = None
            if grid.is_root:
                if not all(math.isfinite(v) for v in metrics.values()):
                    decision = "diverged"
                elif config.tol > 0 and metrics["residual"] <= config.tol * math.sqrt(shard.n_total):
                    decision = "converged"
                elif stop.agreed:
                    decision = "preempted"
            decision = grid.bcast_decision(decision)
            solver.end_of_iteration(state, metrics)  # schedules: same global values on every rank
            bytes_per_iteration.append(sent1 - sent0)  # the training's traffic; metrics counted apart
            evaluation_bytes.append(grid.bytes_sent - sent1)
            seconds.append(time.perf_counter() - t0)
            row = {
                "iteration": iteration,
                "objective": metrics.pop("objective"),
                "residual": metrics.pop("residual"),
                "train_accuracy": None if regression else correct / shard.n_total,
                "test_accuracy": correct_test / shard.n_test_total if shard.n_test_total else None,
                "seconds": seconds[-1],
                "step_seconds": step_seconds[-1],
                **metrics,
            }
            objectives.append(row["objective"])
            if metrics_file is not None:
                metrics_file.write(json.dumps(row) + "\n")
                metrics_file.flush()
            progress.update({**row, "train_accuracy": row["train_accuracy"] or 0.0,
                             "test_accuracy": row["test_accuracy"] or 0.0})
            if decision == "diverged":
                raise TrainingError(f"training diverged at iteration {iteration}: the objective is not finite "
                                    "(try a larger ridge or smaller beta/gamma)")
            if out and (decision == "preempted" or (
                    config.checkpoint_every and iteration % config.checkpoint_every == 0)):
                saved = write_checkpoint(config, grid, solver, state, shard, iteration)
            if decision == "converged":
                converged = True
                break
            if decision == "preempted":
                preempted = True
                break
    finally:
        progress.close()
        if metrics_file is not None:
            metrics_file.close()

    row = row or {}  # a run stopped inside its first epoch has no metrics row
    per_rank_bytes = grid.gather_to_root(_median(bytes_per_iteration) or 0)
    per_rank_eval_bytes = grid.gather_to_root(_median(evaluation_bytes) or 0)
    peak_memory = grid.gather_to_root(peak_memory_bytes())
    weights, biases = solver.full_model(state) if hasattr(solver, "full_model") else (state.weights, state.biases)
    summary = {
        "solver": config.solver,
        "layout": config.layout,
        "layer_groups": getattr(solver.grid, "groups", 1),
        "data_shards": getattr(solver.grid, "shards", grid.size),
        "ranks": grid.size,
        "iterations": iteration,
        "first_iteration": first,
        "resumed_from": resume_from,
        "train_accuracy": row.get("train_accuracy"),
        "test_accuracy": row.get("test_accuracy"),
        "seconds_per_iteration": _median(seconds),
        "bytes_per_iteration": int(sum(per_rank_bytes)) if grid.is_root else None,
        "bytes_per_iteration_per_rank": [int(b) for b in per_rank_bytes] if grid.is_root else None,
        "evaluation_bytes_per_iteration_per_rank": [int(b) for b in per_rank_eval_bytes] if grid.is_root else None,
        "step_seconds_per_iteration": _median(step_seconds),
        "peak_memory_bytes_per_rank": [int(m) for m in peak_memory] if grid.is_root else None,
        "objective": row.get("objective"),
        "residual": row.get("residual"),
        "converged": converged,
        "preempted": preempted,
        "stopped_by_signal": stop.agreed if preempted else None,
        "stopped_inside_iteration": inside,  # a mini-batch solver stopped between batches of it
        "checkpoint": saved,
        "data": resolve_path(config.data) if shard.name != "in-memory" else "in-memory",
        "n_train": shard.n_total,
        "n_test": shard.n_test_total,
        "widths": list(spec.widths),
        "config": config.as_dict(),
        "versions": {"admm_mpi": __version__, "numpy": np.__version__, "python": platform.python_version()},
    }
    if out:
        write_outputs(config, grid, spec, weights, biases, summary)
    summary["state"] = state
    summary["model"] = (weights, biases)  # every layer, on the root (a layer grid spreads them)
    summary["spec"] = spec
    summary["objective_history"] = objectives
    return summary


def _median(values):
    return statistics.median(values) if values else None


def write_outputs(config, grid, spec, weights, biases, summary):
    """model.h5 and summary.json, atomically, by the root; one clear error on every rank if not."""
    problem = None
    if grid.is_root:
        try:
            save_model(os.path.join(config.out, "model.h5"), spec, [to_host(w) for w in weights],
                       [to_host(b) for b in biases], extra={"solver": config.solver, "data": summary["data"]})
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
    shard = load_shard(data_path, grid, weights[0].dtype)
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
