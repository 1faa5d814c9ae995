"""What keeping freed memory between batches saves: the ``admm-mpi`` command's allocator settings
(``admm_mpi.cli._keep_freed_memory``) against glibc's defaults, on the public suite's sets with the
package defaults (bench/suite.py's common flags).

    python bench/allocator.py --repeats 3
    python bench/allocator.py --sets magic,letter --epochs 5

Each set runs ``mpiexec -n 2 admm-mpi train --data SET.h5 <suite flags> --iters E --no-early-stopping``
twice, interleaved: as the command runs by default (``keep``), and with ``GLIBC_TUNABLES=`` in the
environment (``glibc``: an empty tunables string, which sets nothing, and makes admm-mpi leave glibc's
defaults alone). One BLAS thread per rank. Both train the same weights; only where freed memory
goes differs. Reports per set the medians over repeats of the summed ``seconds`` of metrics.jsonl
(step and evaluation: the wall time the suite compares with scikit-learn's MLP), of the summed
``step_seconds``, and of the minor page faults of the whole job (mpiexec and its ranks:
``RUSAGE_CHILDREN``), and the ratios keep / glibc. Writes results/allocator.json.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import suite
from common import mpiexec, write_result

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"glibc": {"GLIBC_TUNABLES": ""}, "keep": {}}


def one_run(path, epochs, extra_env, out):
    """(summed metrics seconds, summed step seconds, minor page faults of the job)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra_env)
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "admm_mpi", "train", "--data", str(path), *suite.COMMON,
           "--iters", str(epochs), "--no-early-stopping", "--out", str(out)]
    faults0 = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=3600)
    faults = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - faults0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return sum(r["seconds"] for r in rows), sum(r["step_seconds"] for r in rows), faults


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", default="magic,letter,banana,higgs,mnist",
                   help="suite sets (default: small and large nets' inputs, few and many rows)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--image-rows", type=int, default=10000, help="as bench/suite.py: MNIST/Fashion training rows")
    p.add_argument("--data-dir", default=str(suite.DATA_DIR))
    args = p.parse_args()
    sets, skipped = suite.prepare_all(args.sets.split(","), args.image_rows, args.data_dir)
    keys = ("seconds", "step_seconds", "minor_faults")
    runs = {name: {v: {k: [] for k in keys} for v in VARIANTS} for name in sets}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, path in sets.items():
                for variant, extra in VARIANTS.items():
                    found = one_run(path, args.epochs, extra, Path(tmp) / f"{name}-{variant}-{repeat}")
                    for key, value in zip(keys, found):
                        runs[name][variant][key].append(round(value, 4))
                    print(json.dumps({"set": name, "variant": variant, "repeat": repeat, **dict(zip(keys, found)),
                                      "load_1min": os.getloadavg()[0]}), flush=True)
    medians = {n: {v: {k: statistics.median(r[v][k]) for k in keys} for v in VARIANTS} for n, r in runs.items()}
    ratios = {n: {k: round(m["keep"][k] / m["glibc"][k], 4) for k in keys if m["glibc"][k]} for n, m in medians.items()}
    write_result("allocator", {
        "benchmark": "admm-mpi's allocator settings (keep) against glibc's defaults (GLIBC_TUNABLES=): summed "
                     "metrics seconds, step seconds and the job's minor page faults, package defaults with "
                     "bench/suite.py's common flags, medians over interleaved repeats, 2 ranks, one BLAS thread each",
        "epochs": args.epochs, "repeats": args.repeats,
        "command_per_run": ["[GLIBC_TUNABLES=]", "mpiexec -n 2 admm-mpi train --data SET.h5", *suite.COMMON,
                            "--iters", str(args.epochs), "--no-early-stopping"],
        "load_1min_at_end": os.getloadavg()[0], "skipped": skipped,
        "medians": medians, "ratios_keep_over_glibc": ratios,
        "median_seconds_ratio_over_sets": statistics.median(r["seconds"] for r in ratios.values()) if ratios else None,
        "runs": runs})
    print(json.dumps({"medians": medians, "ratios": ratios}, indent=1))


if __name__ == "__main__":
    main()
