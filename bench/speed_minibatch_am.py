"""The minibatch_am MNIST recipe's epoch: this checkout against another (today's main), 2 ranks and 1.

    git worktree add --detach ../wt-base e216405
    python bench/speed_minibatch_am.py --base ../wt-base --repeats 3
    python bench/speed_minibatch_am.py --config configs/mnist-dladmm.toml --repeats 3   # a mini-batch mode, 1 vs 2 ranks
    python bench/speed_minibatch_am.py --config configs/mnist-pdadmm.toml --extra "--layout data"   # and other flags

Runs ``mpiexec -n P admm-mpi train --config configs/mnist-minibatch_am.toml --iters 1`` (one
epoch, one BLAS thread per rank) on the first ``--train`` MNIST training samples (the recipe's
batches of 2000, so ``--train 10000`` is 5 batches of the 30 of a full epoch; the official 10 000
test images are evaluated after the epoch, as in the recipe), for every variant and rank count,
interleaved (variant by variant within each repeat) so that the machine's load falls on all alike.
Variants: ``base`` (the --base checkout), ``this`` (this checkout), and ``this+FLAGS`` for each
``--variant FLAGS``: more train flags, e.g. ``--variant=--no-kernel-form`` or
``--variant='--factor-dtype float32'`` (the implementation settings).

Reports medians of the solver's step seconds per epoch (``step_seconds`` of metrics.jsonl; the
evaluation after it is someone else's), of the whole iteration (``seconds``), their ratios
measured in the same run, and the 1-minute load average before each run. Writes
results/speed_minibatch_am.json.
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from common import machine, mpiexec, write_result

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "configs/mnist-minibatch_am.toml"


def subset(cache, n_train):
    """MNIST with its first ``n_train`` training samples (and the whole test split), made once in ``cache``."""
    import h5py

    from common import data_file
    from admm_mpi.data import write_dataset

    full = data_file("mnist", cache)
    path = Path(cache) / f"mnist-first{n_train}.h5"
    if not path.exists():
        with h5py.File(full, "r") as f:
            write_dataset(str(path) + ".tmp", f["X"][:n_train], f["y"][:n_train], f["X_test"][:], f["y_test"][:],
                          name=f"mnist-first{n_train}", n_classes=int(f.attrs["n_classes"]))
        os.replace(str(path) + ".tmp", path)
    return str(path)


def every_row(checkout, config):
    """Flags that train on every row of the subset, as the figures recorded before the recipes held out
    validation rows (a checkout whose config holds none gets none, so older commits run unchanged)."""
    settings = tomllib.loads((Path(checkout) / config).read_text())
    if not settings.get("validation_fraction", 0):
        return []
    return ["--validation-fraction", "0", "--no-early-stopping", "--keep", "last"]


def run(checkout, flags, ranks, data, out, config=DEFAULT_CONFIG, extra=()):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(checkout))
    train = ["train", "--config", config, *every_row(checkout, config), *extra, *shlex.split(flags), "--iters", "1",
             "--data", data, "--no-progress", "--out", str(out)]
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "admm_mpi", *train]
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, env=env, cwd=checkout, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    row = json.loads((Path(out) / "metrics.jsonl").read_text().splitlines()[-1])
    summary = json.loads((Path(out) / "summary.json").read_text())
    return {"step_seconds": round(row["step_seconds"], 2), "seconds": round(row["seconds"], 2),
            "test_accuracy": summary["test_accuracy"], "load_1min_before": round(load, 2)}


def git_commit(repo):
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def summarise(runs, variants):
    medians = {v: {r: {key: statistics.median(x[key] for x in rows) for key in ("step_seconds", "seconds")}
                   for r, rows in runs[v].items()} for v in variants}
    ratios = {}
    for v in variants:
        for key in ("step_seconds", "seconds"):
            if "base" in medians and v != "base" and "2" in medians[v]:
                ratios[f"base / {v}, 2 ranks, {key}"] = round(medians["base"]["2"][key] / medians[v]["2"][key], 2)
            if "1" in medians[v] and "2" in medians[v]:
                ratios[f"{v}: 1 rank / 2 ranks, {key}"] = round(medians[v]["1"][key] / medians[v]["2"][key], 2)
    return medians, ratios


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", help="the checkout to compare with (e.g. main at e216405); none: this checkout only")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help="the recipe (e.g. configs/mnist-dladmm.toml for a mini-batch mode); results go to "
                        "results/speed_<recipe>.json unless it is the default")
    p.add_argument("--variant", action="append", default=[], help="more train flags: another variant of this checkout, e.g. --variant=--no-kernel-form")
    p.add_argument("--variants-at-2-ranks-only", action="store_true", help="run the --variant ones at 2 ranks only")
    p.add_argument("--extra", default="", help="flags added to the recipe's (e.g. '--layout data'); "
                   "the results file's name gets them as a suffix")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ranks", type=int, nargs="+", default=[2, 1])
    p.add_argument("--train", type=int, default=10000, help="first N training samples (60000: a full epoch)")
    p.add_argument("--cache", default=str(REPO / "bench" / ".data"))
    args = p.parse_args()
    data = subset(args.cache, args.train)
    base = Path(args.base).resolve() if args.base else None
    variants = {"base": (base, "")} if base else {}
    variants["this"] = (REPO, "")
    variants.update({f"this+{v}": (REPO, v) for v in args.variant})
    ranks_of = {v: [r for r in args.ranks if r == 2 or not (args.variants_at_2_ranks_only and v.startswith("this+"))]
                for v in variants}
    runs = {v: {str(r): [] for r in ranks_of[v]} for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for ranks in args.ranks:
                for name, (checkout, settings) in variants.items():
                    if ranks not in ranks_of[name]:
                        continue
                    result = run(checkout, settings, ranks, data, Path(tmp) / f"{name}-{ranks}-{repeat}".replace("/", "_"),
                                 args.config, shlex.split(args.extra))
                    runs[name][str(ranks)].append(result)
                    print(json.dumps({"variant": name, "ranks": ranks, "repeat": repeat, **result}), flush=True)
    medians, ratios = summarise(runs, list(variants))
    argv = [os.path.relpath(a, REPO) if os.path.isabs(a) else a for a in sys.argv[1:]]
    batch = tomllib.loads((REPO / args.config).read_text()).get("batch_size", 2000)
    name = "speed_minibatch_am" if args.config == DEFAULT_CONFIG else f"speed_{Path(args.config).stem}"
    if args.extra:
        name += "_" + "_".join(a.lstrip("-") for a in shlex.split(args.extra))
    write_result(name, {
        "benchmark": f"{args.config}, one epoch on a training subset; medians of step seconds "
                     "(solver) and seconds (step + evaluation) per epoch",
        "argv": ["python", "bench/speed_minibatch_am.py", *argv],
        "commits": {"this": git_commit(REPO), "base": git_commit(base) if base else None},
        "command": f"mpiexec -n P admm-mpi train --config {args.config} {args.extra} --iters 1 "
                   f"--data mnist-first{args.train}.h5 (OMP_NUM_THREADS=1)",
        "train_samples": args.train, "batches_per_epoch": -(-args.train // batch), "machine": machine(),
        "medians": medians, "ratios": ratios, "runs": runs})
    print(json.dumps({"medians": medians, "ratios": ratios}, indent=1))


if __name__ == "__main__":
    main()
