"""Checkpoint cost and warm restarts (issue 21): sharded parts against the single-file format of e216405.

    python bench/checkpoint.py                         # both parts, 3 repetitions
    python bench/checkpoint.py --skip-warm --reps 5    # the MNIST cost only
    python bench/checkpoint.py --skip-cost --warm-mnist

**Cost.** Full MNIST (converted once from ../shared/data/mnist into --cache, as bench/accuracy.py
does) with ``configs/mnist-taylor.toml`` (784-4000-10), ``mpiexec -n 2``, ONE iteration, with
``--checkpoint-every 0`` and ``--checkpoint-every 1``, for this checkout and for a checkout of the
base commit (``--base``, default ../wt-ckpt-base: ``git worktree add --detach ../wt-ckpt-base
e216405`` with its own venv). The four cases run interleaved, ``--reps`` times each, in one run of
this script; medians and ratios come from that same run. Each rank runs ``python
bench/checkpoint.py --worker ...``, which times ``admm_mpi.checkpoint.save`` (and, where they exist,
its steps: part write, CRC read-back, fsync, commit) and then runs the ordinary ``admm-mpi train``.
Recorded per run: the wall time of the whole ``mpiexec``, seconds inside ``save`` per rank, peak
resident memory per rank (the summary's ``peak_memory_bytes_per_rank``) and the bytes each rank
wrote (manifest part sizes; the base commit's single file is written by rank 0 alone).

**Warm restarts.** ``--checkpoint-state global`` saves weights and schedules only; a resumed
full-batch solver rebuilds its per-sample state from a forward pass, multipliers at 0. On digits
(2 ranks, each full-batch solver's defaults, 60 iterations): the uninterrupted run against runs
stopped at iteration 30 with a full and with a global checkpoint and resumed to 60; last-iteration
test accuracy. ``--warm-mnist`` adds the MNIST Taylor recipe (20 iterations, stopped at 10).

Writes results/checkpoint.json and results/checkpoint.md.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
FULL_BATCH_SOLVERS = ("taylor", "dladmm", "mdlam", "sigmoid_admm", "pdadmm")
# steps of admm_mpi.checkpoint timed in the worker when the module has them (the base commit has none)
STEPS = ("_owned_items", "_write_part", "_crc32", "_fsync_path", "_commit", "_check_space", "_prune")


# ---- the worker: one rank of a timed training run --------------------------------------------

def worker(timings_prefix, train_args):
    """Run ``admm-mpi train`` on this rank with ``checkpoint.save`` and its steps timed."""
    from admm_mpi import checkpoint
    from admm_mpi.cli import main

    seconds = {}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
        return wrapper

    for name in ("save",) + STEPS:
        if hasattr(checkpoint, name):
            setattr(checkpoint, name, timed(name, getattr(checkpoint, name)))
    try:
        code = main(["train", *train_args])
    finally:
        rank = os.environ.get("PMI_RANK", "0")
        Path(f"{timings_prefix}.{rank}.json").write_text(json.dumps(seconds))
    return code


# ---- helpers ----------------------------------------------------------------------------------

def git_commit(path):
    return subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def load_average():
    return [round(x, 2) for x in os.getloadavg()]


def venv_python(checkout):
    """The Python of ``checkout``'s own venv (the base commit needs its own install), else this one."""
    local = Path(checkout) / ".venv" / "bin" / "python"
    return str(local) if local.exists() else sys.executable


def mpiexec_of(python):
    local = Path(python).with_name("mpiexec")
    return str(local) if local.exists() else "mpiexec"


def child_env():
    return dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
                HYDRA_LAUNCHER="fork")


def written_bytes(out):
    """Bytes each rank wrote into the newest checkpoint: ``(file bytes, per-sample bytes)`` by rank."""
    import h5py

    checkpoints = Path(out) / "checkpoints"
    single = sorted(checkpoints.glob("ckpt-*.h5"))
    if single:  # the base commit: one file, written by the root
        with h5py.File(single[-1], "r") as f:
            samples = _dataset_bytes(f["samples"])
        return {"0": (single[-1].stat().st_size, samples)}
    newest = sorted(p for p in checkpoints.iterdir() if (p / "manifest.json").exists())[-1]
    manifest = json.loads((newest / "manifest.json").read_text())
    out_bytes = {}
    for part in manifest["parts"]:
        with h5py.File(newest / part["file"], "r") as f:
            rank = str(f.attrs["rank"])
            out_bytes[rank] = (part["bytes"], _dataset_bytes(f["samples"]))
    return out_bytes


def _dataset_bytes(group):
    import h5py

    total = 0

    def visit(_, obj):
        nonlocal total
        if isinstance(obj, h5py.Dataset):
            total += obj.size * obj.dtype.itemsize

    group.visititems(visit)
    return total


# ---- cost on MNIST ----------------------------------------------------------------------------

def run_once(code, python, data, every, scratch, extra=()):
    """One ``mpiexec -n 2`` training run of one iteration; its measurements."""
    out = Path(scratch) / f"{code}-every{every}"
    shutil.rmtree(out, ignore_errors=True)
    timings = Path(scratch) / f"timings-{code}-{every}"
    train_args = ["--config", "configs/mnist-taylor.toml", "--data", str(data), "--iters", "1",
                  "--checkpoint-every", str(every), "--no-progress", "--out", str(out), *extra]
    cmd = [mpiexec_of(python), "-n", "2", python, str(REPO / "bench" / "checkpoint.py"), "--worker", str(timings),
           "--", *train_args]
    load = load_average()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    per_rank = [json.loads(Path(f"{timings}.{r}.json").read_text()) for r in range(2)]
    run = {"code": code, "checkpoint_every": every, "wall_seconds": round(wall, 2), "load_before": load,
           "seconds_per_iteration": summary["seconds_per_iteration"],
           "peak_memory_bytes_per_rank": summary["peak_memory_bytes_per_rank"],
           "save_seconds_per_rank": [round(t.get("save", 0.0), 3) for t in per_rank],
           "steps_seconds_per_rank": [{k: round(v, 3) for k, v in t.items() if k != "save"} for t in per_rank]}
    if every:
        run["bytes_written_per_rank"] = {r: {"file": b[0], "per_sample": b[1]}
                                         for r, b in sorted(written_bytes(out).items())}
    shutil.rmtree(out, ignore_errors=True)
    return run


def cost(args, data):
    codes = {"current": venv_python(REPO), "e216405": venv_python(args.base)}
    base_commit = git_commit(args.base)
    if not base_commit or not "e216405".startswith(base_commit[:7]):
        raise SystemExit(f"--base {args.base} is not a checkout of e216405 (it is at {base_commit or 'nothing'})")
    runs = []
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    cases = [(code, every) for every in (0, 1) for code in codes]
    for rep in range(args.reps):
        order = cases if rep % 2 == 0 else cases[::-1]  # alternate, so a drift in load hits every case
        for code, every in order:
            run = run_once(code, codes[code], data, every, scratch)
            run["repetition"] = rep
            runs.append(run)
            print(json.dumps({k: run[k] for k in ("code", "checkpoint_every", "wall_seconds",
                                                  "save_seconds_per_rank", "peak_memory_bytes_per_rank")}),
                  flush=True)
    return {"runs": runs, "medians": cost_medians(runs)}


def cost_medians(runs):
    """Medians per (code, checkpoint_every), and the ratios the issue sets targets for."""
    med = {}
    for code in sorted({r["code"] for r in runs}):
        for every in (0, 1):
            group = [r for r in runs if r["code"] == code and r["checkpoint_every"] == every]
            med[f"{code}/every{every}"] = {
                "wall_seconds": statistics.median(r["wall_seconds"] for r in group),
                "save_seconds_root": statistics.median(r["save_seconds_per_rank"][0] for r in group),
                "save_seconds_slowest_rank": statistics.median(max(r["save_seconds_per_rank"]) for r in group),
                "peak_memory_bytes_root": statistics.median(r["peak_memory_bytes_per_rank"][0] for r in group),
                "peak_memory_bytes_rank1": statistics.median(r["peak_memory_bytes_per_rank"][1] for r in group),
                "repetitions": len(group),
            }
    cur, old = med["current/every1"], med["e216405/every1"]
    written = next(r["bytes_written_per_rank"] for r in runs if r["code"] == "current" and r["checkpoint_every"])
    per_sample = [written[r]["per_sample"] for r in sorted(written)]
    ratios = {
        "root_peak_with_over_without_checkpoint": cur["peak_memory_bytes_root"]
        / med["current/every0"]["peak_memory_bytes_root"],
        "base_root_peak_with_over_without_checkpoint": old["peak_memory_bytes_root"]
        / med["e216405/every0"]["peak_memory_bytes_root"],
        "save_seconds_current_over_base": cur["save_seconds_slowest_rank"] / old["save_seconds_slowest_rank"],
        "checkpoint_wall_current_over_base": (cur["wall_seconds"] - med["current/every0"]["wall_seconds"])
        / (old["wall_seconds"] - med["e216405/every0"]["wall_seconds"]),
        "per_sample_share_per_rank": [b / sum(per_sample) for b in per_sample],
    }
    targets = {
        "root peak with a checkpoint <= 1.1x without": ratios["root_peak_with_over_without_checkpoint"] <= 1.1,
        "checkpoint time <= 0.5x e216405's (seconds inside save, slowest rank)":
            ratios["save_seconds_current_over_base"] <= 0.5,
        "each rank writes ~1/P of the per-sample bytes (within 10%)":
            all(abs(s - 1 / len(per_sample)) <= 0.1 / len(per_sample) for s in ratios["per_sample_share_per_rank"]),
    }
    return {"by_case": med, "ratios": ratios, "targets_met": targets}


# ---- warm restarts ----------------------------------------------------------------------------

def train(python, out, args, ranks=2):
    cmd = [mpiexec_of(python), "-n", str(ranks), python, "-m", "admm_mpi", "train", *map(str, args),
           "--no-progress", "--out", str(out)]
    proc = subprocess.run(cmd, env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=6 * 3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads((Path(out) / "summary.json").read_text())


def warm_restart(case, solver_args, iters, stop_at, scratch):
    """Uninterrupted run vs stopped at ``stop_at`` with a full / global checkpoint and resumed."""
    python = sys.executable
    root = Path(scratch) / f"warm-{case}"
    shutil.rmtree(root, ignore_errors=True)
    common = [*solver_args, "--eval-test", "end"]
    entry = {"case": case, "iterations": iters, "stopped_at": stop_at,
             "command": "mpiexec -n 2 admm-mpi train " + " ".join(map(str, common))}
    whole = train(python, root / "whole", [*common, "--iters", iters])
    entry["uninterrupted"] = _accuracies(whole)
    entry["n_test"] = whole["n_test"]
    for state in ("full", "global"):
        out = root / state
        train(python, out, [*common, "--iters", stop_at, "--checkpoint-every", stop_at, "--checkpoint-state", state])
        resumed = train(python, out, [*common, "--iters", iters, "--resume", "auto"])
        assert resumed["first_iteration"] == stop_at + 1, resumed
        entry[f"resumed_{state}"] = {**_accuracies(resumed), "first_iteration": resumed["first_iteration"]}
        with open(out / "metrics.jsonl") as f:
            rows = [json.loads(line) for line in f]
        entry[f"resumed_{state}"]["objective_after_restart"] = rows[stop_at]["objective"]
        entry[f"resumed_{state}"]["objective_before_restart"] = rows[stop_at - 1]["objective"]
    shutil.rmtree(root, ignore_errors=True)
    return entry


def _accuracies(summary):
    return {"test_accuracy": summary["test_accuracy"], "train_accuracy": summary["train_accuracy"],
            "objective": summary["objective"]}


def warm(args, data):
    entries = []
    for solver in FULL_BATCH_SOLVERS:
        entry = warm_restart(f"digits-{solver}", ["--solver", solver, "--data", "digits"], 60, 30, args.scratch)
        entries.append(entry)
        print(json.dumps(entry), flush=True)
    if args.warm_mnist:
        entry = warm_restart("mnist-taylor", ["--config", "configs/mnist-taylor.toml", "--data", data], 20, 10,
                             args.scratch)
        entry["command"] = entry["command"].replace(str(data), "mnist.h5")
        entries.append(entry)
        print(json.dumps(entry), flush=True)
    return entries


# ---- report -----------------------------------------------------------------------------------

def markdown(result):
    def origin(part):
        run = result.get(f"{part}_from", result)
        return (f"`{run['command']}` at commit {run['commit']}"
                + (f" against base {run['base_commit']}" if part == "cost" else "")
                + f"; load average (1, 5, 15 min) {run.get('load_average_start')} at the start, "
                f"{run.get('load_average_end')} at the end (2 cores, shared with other jobs)")

    lines = ["# Checkpoint cost and warm restarts", "", "Generated by `python bench/checkpoint.py` "
             "(results/checkpoint.json holds every run).", ""]
    if "cost" in result:
        med, ratios = result["cost"]["medians"]["by_case"], result["cost"]["medians"]["ratios"]
        lines += ["## MNIST, configs/mnist-taylor.toml (784-4000-10), 2 ranks, one iteration", "",
                  f"Run: {origin('cost')}. Medians of {med['current/every0']['repetitions']} interleaved "
                  "repetitions per case; 'in save' is the time inside `checkpoint.save`.", "",
                  "| code | --checkpoint-every | root peak (GB) | rank 1 peak (GB) | wall (s) | in save, slowest rank (s) "
                  "| written by rank 0 / rank 1 (GB) |", "|---|---|---|---|---|---|---|"]
        written = {}
        for r in result["cost"]["runs"]:
            if r["checkpoint_every"]:
                written[r["code"]] = r["bytes_written_per_rank"]
        for key, m in med.items():
            code, every = key.split("/every")
            w = written.get(code, {}) if every == "1" else {}
            shares = " / ".join(f"{w.get(r, {'file': 0})['file'] / 1e9:.2f}" for r in ("0", "1")) if w else "-"
            lines.append(f"| {code} | {every} | {m['peak_memory_bytes_root'] / 1e9:.2f} | "
                         f"{m['peak_memory_bytes_rank1'] / 1e9:.2f} | {m['wall_seconds']:.1f} | "
                         f"{m['save_seconds_slowest_rank']:.1f} | {shares} |")
        lines += ["", f"- root peak with / without a checkpoint: {ratios['root_peak_with_over_without_checkpoint']:.3f} "
                      f"(e216405: {ratios['base_root_peak_with_over_without_checkpoint']:.3f}); target <= 1.1",
                  f"- seconds in save, current / e216405: {ratios['save_seconds_current_over_base']:.3f}; "
                  f"target <= 0.5 (added wall time, current / e216405: "
                  f"{ratios['checkpoint_wall_current_over_base']:.3f})",
                  "- per-sample bytes written by each rank, as a share of the total: "
                  + ", ".join(f"{s:.3f}" for s in ratios["per_sample_share_per_rank"]) + " (1/P = 0.5)", ""]
        lines += [f"- {name}: {'met' if ok else 'MISSED'}" for name, ok in result["cost"]["medians"]["targets_met"].items()]
        steps = [r["steps_seconds_per_rank"][0] for r in result["cost"]["runs"]
                 if r["code"] == "current" and r["checkpoint_every"]]
        if steps:
            def step(name):
                return statistics.median(s.get(name, 0.0) for s in steps)
            lines += ["", f"Where the current save's time goes (root, medians): writing its part "
                      f"{step('_write_part'):.1f} s, of which the CRC-32 read-back {step('_crc32'):.1f} s and the "
                      f"fsync {step('_fsync_path'):.1f} s; the manifest commit {step('_commit'):.2f} s."]
    if result.get("warm_restarts"):
        lines += ["", "## Warm restart from `--checkpoint-state global` (2 ranks)", "",
                  f"Run: {origin('warm_restarts')}. Each solver's defaults; stopped at the iteration shown "
                  "with a full or a global checkpoint and resumed; last-iteration test accuracy "
                  f"(digits: {_digits_test_size()} test images, so one image is "
                  f"{1 / _digits_test_size():.4f}).", "",
                  "| case | iterations, stopped at | uninterrupted | resumed, full state | resumed, global state "
                  "| change | objective at the stop; first resumed iteration, full / global |",
                  "|---|---|---|---|---|---|---|"]
        for e in result["warm_restarts"]:
            u, f, g = (e["uninterrupted"]["test_accuracy"], e["resumed_full"]["test_accuracy"],
                       e["resumed_global"]["test_accuracy"])
            lines.append(f"| {e['case']} | {e['iterations']}, {e['stopped_at']} | {u:.4f} | {f:.4f} | {g:.4f} "
                         f"| {g - u:+.4f} | {e['resumed_full']['objective_before_restart']:.4g}; "
                         f"{e['resumed_full']['objective_after_restart']:.4g} / "
                         f"{e['resumed_global']['objective_after_restart']:.4g} |")
    return "\n".join(lines) + "\n"


def _digits_test_size():
    import h5py

    with h5py.File(REPO / "admm_mpi" / "datasets" / "digits.h5", "r") as f:
        return f["y_test"].shape[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each cost case")
    parser.add_argument("--base", default=str(REPO.parent / "wt-ckpt-base"), help="checkout of e216405 with a .venv")
    parser.add_argument("--cache", default=str(REPO / "bench" / ".data"), help="converted data sets")
    parser.add_argument("--scratch", default=str(REPO / "runs" / "bench-checkpoint"), help="run directories")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-warm", action="store_true")
    parser.add_argument("--warm-mnist", action="store_true", help="also the MNIST Taylor warm restart (slow)")
    parser.add_argument("--cost-from", help="with --skip-cost: take the cost part from this results file")
    args = parser.parse_args(argv)
    from accuracy import data_file
    from common import RESULTS, machine, write_result

    data = data_file("mnist", args.cache)
    if data is None and not (args.skip_cost and not args.warm_mnist):
        raise SystemExit("the MNIST IDX files are not in ../shared/data/mnist")
    result = {"benchmark": "checkpoint cost and warm restarts (issue 21)",
              "command": "python bench/checkpoint.py " + " ".join(
                  os.path.relpath(a, REPO) if os.path.isabs(a) else a for a in sys.argv[1:]),
              "argv": [os.path.relpath(a, REPO) if os.path.isabs(a) else a for a in sys.argv],
              "commit": git_commit(REPO), "base_commit": git_commit(args.base) if not args.skip_cost else None,
              "dirty": bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "admm_mpi", "bench"],
                                           capture_output=True, text=True).stdout.strip()),
              "machine": {**machine(), "system": platform.system()}, "load_average_start": load_average()}
    if not args.skip_cost:
        result["cost"] = cost(args, data)
    if not args.skip_warm:
        result["warm_restarts"] = warm(args, data)
    # a part not run now is kept from the last results (or taken from --cost-from), with its origin
    for part, skipped in (("cost", args.skip_cost), ("warm_restarts", args.skip_warm)):
        previous = Path(args.cost_from) if part == "cost" and args.cost_from else RESULTS / "checkpoint.json"
        old = json.loads(previous.read_text()) if previous.exists() else {}
        if skipped and part in old:
            result[part] = old[part]
            result[f"{part}_from"] = old.get(f"{part}_from", {key: old[key] for key in (
                "command", "commit", "base_commit", "load_average_start", "load_average_end") if key in old})
    result["load_average_end"] = load_average()
    write_result("checkpoint", result)
    (RESULTS / "checkpoint.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        sys.argv.remove("--") if "--" in sys.argv else None
        sys.exit(worker(sys.argv[2], sys.argv[3:]))
    main()
