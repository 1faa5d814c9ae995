"""Per-call overhead of the library's seams: this checkout against another, on runs made of many
small calls (digits, small batches), where a cost per collective or per solve would show.

    git worktree add --detach ../wt-base <commit before the change>
    python bench/call_overhead.py --base ../wt-base --repeats 5
    python bench/call_overhead.py --base ../wt-base --only ring-defaults,magic-defaults   # the suite's small nets

Each case runs ``mpiexec -n 2 admm-mpi train <case flags> --data digits`` from both checkouts (the
``<set>-defaults`` cases: the package defaults on a public-suite set, as bench/suite.py runs them,
5 epochs),
interleaved (base, this, base, this, ...) so that the machine's load falls on both alike, with
one BLAS thread per rank. Reports the median over repeats of the summed ``step_seconds`` of
metrics.jsonl (the solver's steps only) and the ratio this / base of those medians. Writes
results/call_overhead.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import git_commit, machine, mpiexec, write_result

REPO = Path(__file__).resolve().parents[1]
COMMON = ["--hidden", "512,512", "--validation-fraction", "0", "--no-early-stopping", "--keep", "last",
          "--eval-test", "never", "--no-progress"]
CASES = {  # many calls each: 30 batches per epoch of minibatch_am; Taylor's full-batch solves per layer
    "minibatch_am-batch50": ["--solver", "minibatch_am", "--batch-size", "50", "--iters", "5"],
    "taylor": ["--solver", "taylor", "--iters", "20"],
    "dladmm-batch100": ["--solver", "dladmm", "--batch-size", "100", "--iters", "3"],
}
SUITE_SETS = ("ring", "twonorm", "magic", "letter", "banana", "higgs", "mnist")
SUITE_COMMON = ["--hidden", "256,256", "--validation-fraction", "0.1", "--keep", "best", "--eval-test", "never",
                "--iters", "5", "--no-early-stopping", "--no-progress"]


def case_flags(case, suite_data):
    """The case's admm-mpi train flags after ``train`` (its data included)."""
    if case in CASES:
        return [*CASES[case], *COMMON, "--data", "digits"]
    import suite

    path = suite.prepare(case.removesuffix("-defaults"), 10000, suite_data)  # MNIST: the suite's 10 000 rows
    if path is None:
        raise SystemExit(f"call_overhead: the files of {case} are absent; leave it out of --only")
    return [*SUITE_COMMON, "--data", str(path)]


def step_seconds(checkout, flags, out):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(checkout))
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "admm_mpi", "train", *flags, "--out", str(out)]
    proc = subprocess.run(cmd, env=env, cwd=checkout, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return sum(r["step_seconds"] for r in rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="the checkout to compare with")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--only", default=",".join(CASES), help="comma-separated cases: "
                   + ", ".join([*CASES, *(f"{s}-defaults" for s in SUITE_SETS)]))
    p.add_argument("--name", default="call_overhead", help="results/<name>.json")
    p.add_argument("--suite-data-dir", default=str(REPO / "bench" / ".data" / "suite"), help="the suite's HDF5 files")
    args = p.parse_args()
    base = Path(args.base).resolve()
    checkouts = {"base": base, "this": REPO}
    cases = {case: case_flags(case, args.suite_data_dir) for case in args.only.split(",")}
    runs = {case: {name: [] for name in checkouts} for case in cases}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for case, flags in cases.items():
                for name, checkout in checkouts.items():
                    seconds = step_seconds(checkout, flags, Path(tmp) / f"{case}-{name}-{repeat}")
                    runs[case][name].append(round(seconds, 4))
                    print(json.dumps({"case": case, "checkout": name, "repeat": repeat, "step_seconds": seconds}),
                          flush=True)
    medians = {case: {name: statistics.median(v) for name, v in r.items()} for case, r in runs.items()}
    ratios = {case: round(m["this"] / m["base"], 4) for case, m in medians.items()}
    # each repeat's pair ran back to back: the median of their ratios is less exposed to the load's drift
    paired = {case: round(statistics.median(t / b for b, t in zip(r["base"], r["this"])), 4) for case, r in runs.items()}
    write_result(args.name, {
        "benchmark": "summed step seconds of runs made of many small calls, this checkout against --base "
                     "(medians over interleaved repeats, 2 ranks, one BLAS thread each)",
        "commits": {"this": git_commit(), "base": subprocess.run(
            ["git", "-C", str(base), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()},
        "cases": {case: ["mpiexec -n 2 admm-mpi train", *flags] for case, flags in cases.items()},
        "load_1min_at_end": os.getloadavg()[0], "machine": machine(),
        "medians": medians, "ratios_this_over_base": ratios, "paired_ratio_medians": paired,
        "timed_collective_overhead_ns": timed_call_overhead_ns(), "runs": runs})
    print(json.dumps({"medians": medians, "ratios": ratios, "paired": paired}, indent=1))


def timed_call_overhead_ns():
    """This checkout's cost of a timed grid call without --profile: a serial grid's ``allsum_in_place``
    against the same method unwrapped (best of 5 x 100 000 calls)."""
    import timeit

    import numpy as np

    from admm_mpi.grid import Grid

    grid, x = Grid.serial(), np.zeros(4)
    timed = min(timeit.repeat(lambda: grid.allsum_in_place(x), number=100_000, repeat=5))
    bare = min(timeit.repeat(lambda: Grid.allsum_in_place.__wrapped__(grid, x), number=100_000, repeat=5))
    return round((timed - bare) / 100_000 * 1e9)


if __name__ == "__main__":
    main()
