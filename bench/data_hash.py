"""The cost of the data fingerprint that guards ``--resume``, against one training epoch.

    python bench/data_hash.py --data mnist.h5 [--ranks 2] [--repeats 5]

Runs ``mpiexec -n RANKS`` workers that load the data set as ``train`` does (the MNIST recipe's
validation split), time :func:`admm_mpi.data.data_fingerprint` (the streaming content hash of X,
y, X_val and y_val, each rank over its own columns, summed across ranks), then train one epoch
of ``configs/mnist-minibatch_am.toml`` and take its step seconds: both in the same job, so the
ratio holds on a loaded machine. A run hashes its data once (at its start, when it writes
outputs). Writes ``results/data_hash.json``.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, mpiexec, write_result


def worker(data, repeats):
    from admm_mpi.config import resolve
    from admm_mpi.grid import Grid
    from admm_mpi.train import build, train

    grid = Grid()
    config = resolve(file=str(REPO / "configs" / "mnist-minibatch_am.toml"),
                     cli={"data": data, "iters": 1, "progress": False, "eval_test": "never"})
    config, shard, spec, solver = build(config, grid)
    from admm_mpi.data import data_fingerprint

    seconds = []
    for _ in range(repeats):
        grid.barrier()
        t0 = time.perf_counter()
        fingerprint = data_fingerprint(shard, grid)
        seconds.append(max(grid.gather_to_all(time.perf_counter() - t0)))
    result = train(config, grid, out=False, shard=shard)
    if grid.is_root:
        print(json.dumps({"hash_seconds": seconds, "epoch_step_seconds": result.summary["step_seconds_per_iteration"],
                          "n_train": shard.n_total, "n_validation": shard.n_val_total,
                          "fingerprint": {k: v for k, v in fingerprint.items() if isinstance(v, str)}}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="MNIST as admm-mpi HDF5 (admm-mpi data convert)")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.data, args.repeats)
    proc = subprocess.run([mpiexec(), "-n", str(args.ranks), sys.executable, __file__, "--worker", "--data", args.data,
                           "--repeats", str(args.repeats)], capture_output=True, text=True, check=False)
    if proc.returncode:
        sys.exit(f"data_hash: the worker failed:\n{proc.stderr}")
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    median = statistics.median(measured["hash_seconds"])
    result = {"ranks": args.ranks, "data": Path(args.data).name, **measured, "hash_seconds_median": median,
              "hash_share_of_epoch": median / measured["epoch_step_seconds"]}
    print(f"data fingerprint: median {median:.3f} s at {args.ranks} ranks; one epoch {measured['epoch_step_seconds']:.1f} s; "
          f"{100 * result['hash_share_of_epoch']:.2f} % of an epoch")
    print(write_result("data_hash", result))


if __name__ == "__main__":
    main()
