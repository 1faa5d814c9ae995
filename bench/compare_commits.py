"""Run benchmark scripts of two checkouts alternately, in one run, and report the ratios.

    git worktree add --detach ../wt-base 8d10e12
    python bench/compare_commits.py --base ../wt-base --rounds 3

A refactor is judged by "no slower than before", and on this shared machine a figure recorded
last week is no baseline. So each round runs every benchmark once with the base checkout's own
script and package, then once with this checkout's (the order alternates between rounds, so a
burst of background load hits both alike), and reads the numbers each run wrote to its
checkout's ``bench/results``. Reported: every headline number per checkout and round, their
medians over rounds, and ``base / this`` (above 1: this checkout is faster).

Benchmarks and their headline numbers (seconds; lower is better):
- ``scaling``: the median ADMM step of 784-1000-1000-10 Taylor, float32, N = 60 000, through
  ``mpiexec -n P admm-mpi train`` at 1 rank × 1 thread, 2 ranks × 1 thread, 1 rank × 2 threads;
- ``gemm_efficiency``: the median in-process Taylor iteration of the same network with both
  threads, float32 and float64.
Each checkout's script writes its results file in its own ``bench/results``; this one restores
its own files afterwards and writes ``bench/results/compare_commits.json``.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, git_commit, write_result


def scaling_numbers(result):
    return {f"step {k} (ranks x threads)": v for k, v in result["step_seconds"].items()}


def gemm_numbers(result):
    return {f"iteration {row['dtype']}, {row['threads']} threads": row["median_seconds"] for row in result["rows"]}


BENCHMARKS = {
    "scaling": (["--repeats", "1", "--iters", "3"], scaling_numbers),
    "gemm_efficiency": (["--repeats", "3"], gemm_numbers),
}


def commit_of(checkout):
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True, timeout=30)
    return out.stdout.strip() or None


def run_once(checkout, name):
    """Run ``checkout``'s ``bench/<name>.py`` with its own package; its headline numbers and load."""
    args, numbers = BENCHMARKS[name]
    env = dict(os.environ, PYTHONPATH=str(checkout))
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(checkout / "bench" / f"{name}.py"), *args], cwd=checkout, env=env,
                   check=True, capture_output=True, timeout=3600)
    result = json.loads((checkout / "bench" / "results" / f"{name}.json").read_text())
    return {"numbers": numbers(result), "load_before": round(load, 2),
            "load_after": round(os.getloadavg()[0], 2), "wall_seconds": round(time.perf_counter() - t0, 1)}


def compare(base, names, rounds):
    checkouts = {"base": base, "this": REPO}
    saved = {n: (REPO / "bench" / "results" / f"{n}{ext}") for n in names for ext in (".json", ".png")}
    saved = {p: p.read_bytes() for p in saved.values() if p.exists()}
    runs = {n: {c: [] for c in checkouts} for n in names}
    try:
        for r in range(rounds):
            order = ["base", "this"] if r % 2 == 0 else ["this", "base"]
            for name in names:
                for which in order:
                    runs[name][which].append(run_once(checkouts[which], name))
                    print(name, which, r, runs[name][which][-1], flush=True)
    finally:
        for path, data in saved.items():
            path.write_bytes(data)
    return runs


def summarise(runs):
    table = {}
    for name, by_checkout in runs.items():
        for key in by_checkout["this"][0]["numbers"]:
            med = {c: statistics.median(run["numbers"][key] for run in rs) for c, rs in by_checkout.items()}
            table[f"{name}: {key}"] = {"base_median": med["base"], "this_median": med["this"],
                                       "base_over_this": round(med["base"] / med["this"], 3)}
    return table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="a checkout of the commit to compare with")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", action="append", choices=sorted(BENCHMARKS), help="one benchmark (repeatable)")
    args = p.parse_args(argv)
    base = Path(args.base).resolve()
    names = args.only or list(BENCHMARKS)
    runs = compare(base, names, args.rounds)
    table = summarise(runs)
    for key, row in table.items():
        print(f"{key}: base {row['base_median']:.3f} s, this {row['this_median']:.3f} s, "
              f"base/this {row['base_over_this']:.3f}")
    result = {"benchmark": "compare_commits", "commits": {"base": commit_of(base), "this": git_commit()},
              "rounds": args.rounds, "benchmark_args": {n: BENCHMARKS[n][0] for n in names},
              "ratios": table, "runs": runs}
    print("wrote", write_result("compare_commits", result))


if __name__ == "__main__":
    main()
