"""Wall time per phase of one iteration (one epoch for the mini-batch modes) of each solver, per rank.

    python bench/phase_profile.py                          # every case at 1 and 2 ranks
    python bench/phase_profile.py --only digits-taylor --ranks 2
    python bench/phase_profile.py --repo ../wt-base --label "main e216405"   # another checkout (with --profile)
    python bench/phase_profile.py --flags=--no-spread-solve --label root-solves  # an implementation choice
    python bench/phase_profile.py --only magic-defaults,letter-defaults --ranks 2   # the suite's small nets

Each case runs ``mpiexec -n P admm-mpi train --profile <args>`` with one BLAS thread per rank:
the library times its own phases (``admm_mpi.timing``; nothing is wrapped or patched here) and
``summary.json`` holds every rank's *exclusive* seconds per stack of phases (time in a nested
phase counts for the inner one only), which this script groups as:

- forward codes:  the forward passes of the solvers (the codes of a batch or of the data)
- local Grams:    this rank's ``[A Aᵀ | A zᵀ]`` of a weight solve
- Reduce, Bcast, Allgather:  the grid's collectives (a rank that waits for another's solve waits here);
                  Reduce is the statistics' reduction (``sum_to_root``, or ``allsum_in_place``)
- weight solve:   the weight solves and gradient weight steps
- activation solves: forming the a-update's operator (``activation_solver``)
- targets & updates: the rest of the solver's step (loss prox, a- and z-updates, element-wise work)
- evaluation:     train, validation and test accuracy after each iteration; the metrics rows'
                  ``seconds - step_seconds`` is recorded beside it
- I/O:            reading the shard and writing checkpoints (not the final model and summary)

Phases inside the solver step are divided by the number of iterations (per-iteration means);
evaluation likewise; I/O is per run. Writes results/profile.json (merged by label and case, so
before/after runs sit side by side) and results/profile.png (stacked bars, one per rank).
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, data_file, machine, mpiexec, write_result

REPO = Path(__file__).resolve().parents[1]
SOLVERS = ["minibatch_am", "taylor", "dladmm", "pdadmm", "mdlam", "sigmoid_admm"]
# case name -> (data set, admm-mpi train arguments); digits: the default network
CASES = {f"digits-{s}": ("digits", ["--solver", s, "--iters", "5"]) for s in SOLVERS}
CASES.update({f"digits-{s}-batches": ("digits", ["--solver", s, "--iters", "2", "--batch-size", "200"])
              for s in ["dladmm", "mdlam", "sigmoid_admm", "pdadmm"]})
CASES["mnist-minibatch_am"] = ("mnist", ["--config", "configs/mnist-minibatch_am.toml", "--iters", "1"])
# the other solvers' MNIST mini-batch recipes, one epoch on the first 10 000 training images (the file
# bench/speed_minibatch_am.py makes in the cache)
CASES.update({f"mnist10k-{s}": ("mnist-first10000", ["--config", f"configs/mnist-{s}.toml", "--iters", "1"])
              for s in ["dladmm", "mdlam", "sigmoid_admm", "pdadmm"]})
# the package defaults on public-suite sets, as bench/suite.py runs them (small tabular nets), 10 epochs
SUITE_FLAGS = ["--hidden", "256,256", "--validation-fraction", "0.1", "--keep", "best", "--eval-test", "end",
               "--iters", "10", "--no-early-stopping"]
CASES.update({f"{s}-defaults": (f"suite:{s}", SUITE_FLAGS) for s in ["magic", "letter", "higgs", "banana", "mnist"]})
PHASES = ["forward codes", "targets & updates", "activation solves", "local Grams", "Reduce",
          "weight solve", "Bcast", "Allgather", "other collectives", "evaluation", "I/O"]
SEP = " > "  # joins the nested phases of a timer key
COLORS = ["#4c72b0", "#55a868", "#8fbc8f", "#c44e52", "#8172b2", "#ccb974", "#64b5cd", "#937860",
          "#bbbbbb", "#da8bc3", "#333333"]

def phase_of(path):
    """The reported phase of a timer key such as ``step > Reduce`` or ``evaluation > Reduce``."""
    parts = path.split(SEP)
    if parts[0] == "step":
        return "targets & updates" if len(parts) == 1 else parts[-1]
    if parts[0] in ("evaluation", "I/O"):
        return parts[0]
    return "other collectives" if parts[0] in ("Reduce", "Bcast", "other collectives") else parts[0]


def summarise(raw, wall, iterations):
    """Seconds per phase of one rank's ``phase_seconds``: per iteration for the step phases and
    evaluation, per run for I/O."""
    phases = {}
    for path, seconds in raw["seconds"].items():
        phase = phase_of(path)
        phases[phase] = phases.get(phase, 0.0) + seconds
    per_iteration = {p: round(s / (1 if p == "I/O" else iterations), 4) for p, s in phases.items()}
    step = sum(v for p, v in per_iteration.items() if p not in ("evaluation", "I/O", "other collectives"))
    return {"phases": per_iteration, "step_seconds": round(step, 4), "wall_seconds": round(wall, 2)}


def run_case(case, ranks, data, repo, workdir, flags=()):
    dataset, args = CASES[case]
    out = Path(workdir) / f"{case}-{ranks}"
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = str(repo)  # the checkout to profile (ahead of the editable install)
    train_args = [*args, *flags, "--data", data, "--no-progress", "--profile", "--out", str(out)]
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "admm_mpi", "train", *train_args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=repo, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    iterations = len(rows)
    summary = json.loads((out / "summary.json").read_text())
    per_rank = [summarise(raw, wall, iterations) for raw in summary["phase_seconds"]]
    evaluation = sum(r["seconds"] - r["step_seconds"] for r in rows) / iterations
    return {"case": case, "ranks": ranks, "iterations": iterations,
            "command": f"mpiexec -n {ranks} admm-mpi train {' '.join([*args, *flags])} --data {dataset} --no-progress "
                       "--profile",
            "step_seconds_per_iteration": round(sum(r["step_seconds"] for r in rows) / iterations, 4),
            "evaluation_seconds_per_iteration_from_metrics": round(evaluation, 4),
            "test_accuracy": summary["test_accuracy"], "per_rank": per_rank}


def git_commit(repo):
    out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "")


def data_path(dataset, cache, suite_data):
    if dataset == "digits":
        return "digits"
    if dataset.startswith("suite:"):
        import suite

        path = suite.prepare(dataset.split(":", 1)[1], 10000, suite_data)  # MNIST: the suite's 10 000 rows
        if path is None:
            raise SystemExit(f"profile: the files of {dataset} are absent; skip it with --only")
        return str(path)
    if dataset == "mnist-first10000":
        path = Path(cache) / "mnist-first10000.h5"
        if not path.exists():
            raise SystemExit(f"profile: {path} is absent; make it with bench/speed_minibatch_am.py --cache {cache}")
        return str(path)
    path = data_file(dataset, cache)
    if path is None:
        raise SystemExit(f"profile: the {dataset} IDX files are absent; skip it with --only")
    return path


def plot(result):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(c for run in result["runs"].values() for c in run))
    fig, axes = plt.subplots(1, len(cases), figsize=(3.2 * len(cases) + 1, 4.8), squeeze=False)
    for ax, case in zip(axes[0], cases):
        labels, bottoms = [], []
        for label, run in result["runs"].items():
            for entry in run.get(case, {}).values():
                for r, rank in enumerate(entry["per_rank"]):
                    labels.append(f"{label}\n{entry['ranks']}r: rank {r}")
                    bottoms.append(rank["phases"])
        x = range(len(labels))
        base = [0.0] * len(labels)
        for phase, color in zip(PHASES, COLORS):
            heights = [p.get(phase, 0.0) for p in bottoms]
            if any(heights):
                ax.bar(x, heights, bottom=base, color=color, label=phase if case == cases[0] else None)
                base = [b + h for b, h in zip(base, heights)]
        ax.set_xticks(list(x), labels, rotation=90, fontsize=7)
        ax.set_title(case, fontsize=9)
        ax.set_ylabel("seconds per iteration (I/O: per run)" if case == cases[0] else "")
    fig.legend(loc="upper center", ncol=6, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    RESULTS.mkdir(exist_ok=True)
    fig.savefig(RESULTS / "profile.png", dpi=100)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="comma-separated case names (default: all)")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repo", default=str(REPO), help="the checkout to profile (default: this one)")
    p.add_argument("--label", default=None, help="name of this profile in the JSON (default: the commit)")
    p.add_argument("--flags", default="", help="more admm-mpi train flags for every case, e.g. "
                   "--flags=--no-spread-solve or --flags='--factor-dtype float64'")
    p.add_argument("--cache", default=str(REPO / "bench" / ".data"), help="converted data sets")
    p.add_argument("--suite-data-dir", default=str(REPO / "bench" / ".data" / "suite"),
                   help="bench/suite.py's converted sets (the *-defaults cases)")
    args = p.parse_args()
    repo = Path(args.repo).resolve()
    label = args.label or git_commit(repo)
    cases = args.only.split(",") if args.only else list(CASES)
    path = RESULTS / "profile.json"
    result = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    run = result["runs"].setdefault(label, {})
    load = []
    with tempfile.TemporaryDirectory() as workdir:
        for case in cases:
            data = data_path(CASES[case][0], args.cache, args.suite_data_dir)
            for ranks in args.ranks:
                load.append(os.getloadavg()[0])
                entry = run_case(case, ranks, data, repo, workdir, shlex.split(args.flags))
                run.setdefault(case, {})[str(ranks)] = entry
                print(json.dumps({k: entry[k] for k in ("case", "ranks", "step_seconds_per_iteration")}), flush=True)
    result.update(benchmark="wall time per phase of one iteration, per rank", machine=machine())
    argv = [os.path.relpath(a, REPO) if os.path.isabs(a) else a for a in sys.argv[1:]]  # no paths of this machine
    result.setdefault("commands", {})[label] = {"argv": ["python", "bench/phase_profile.py", *argv],
                                                "commit": git_commit(repo), "load_average_1min": load}
    write_result("profile", result)
    plot(result)


if __name__ == "__main__":
    main()
