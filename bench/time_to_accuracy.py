"""Time to a test-accuracy target: ADMM (admm-mpi) against PyTorch's Adam, SGD+momentum, L-BFGS.

    pip install -e ".[bench]"        # torch==2.13.0 (CPU), matplotlib, threadpoolctl
    python bench/time_to_accuracy.py [--mnist ../shared/data/mnist] [--skip-mnist]

The same MLP (ReLU, the same widths), the same data, the same two cores: ADMM runs as
``mpiexec -n 2 admm-mpi train`` with one BLAS thread per rank, PyTorch in one process with
``torch.set_num_threads(2)``. Clocks count training only: ADMM's per-iteration step seconds
(metrics.jsonl ``step_seconds``; not process start-up, data loading or the accuracy evaluation),
PyTorch's optimiser loop (the test accuracy is evaluated outside the clock, four times per epoch;
L-BFGS after every step of up to 20 full-batch iterations, for at most 300 training seconds).
A run's time to target is the training time at the first evaluation at or above the target.

Data sets: the bundled digits (64-1000-1000-10, target 0.97) and full MNIST from its IDX files
(784-1000-1000-10, target 0.94), skipped if the files are absent. Writes
results/time_to_accuracy.json and .png (test accuracy against seconds).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import mpiexec, save_plot, write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LBFGS_BUDGET_SECONDS = 300  # full-batch L-BFGS on 60 000 samples costs seconds per iteration
PROBLEMS = {
    "digits": {"data": "digits", "hidden": (1000, 1000), "target": 0.97, "epochs": 60, "dtype": "float64",
               "admm": [("taylor", ["--iters", "60"]), ("dladmm", ["--iters", "40"])]},
    "mnist": {"data": None, "hidden": (1000, 1000), "target": 0.94, "epochs": 4, "dtype": "float32",
              "admm": [("taylor", ["--iters", "30"])]},
}


def time_to_target(curve, target):
    for seconds, accuracy in curve:
        if accuracy >= target:
            return seconds
    return None


def run_admm(problem, solver, extra, tmp):
    out = os.path.join(tmp, f"admm-{solver}")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "admm_mpi", "train", "--data", problem["data"],
           "--solver", solver, "--hidden", ",".join(map(str, problem["hidden"])), "--dtype", problem["dtype"],
           *extra, "--eval-test", "every", "--no-progress", "--out", out]  # the test curve of every iteration
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=7200)
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    curve, clock = [], 0.0
    for r in rows:
        clock += r["step_seconds"]
        curve.append((clock, r["test_accuracy"]))
    return " ".join(cmd), curve


def load(data):
    from admm_mpi.data import load_shard
    from admm_mpi.grid import Grid

    shard = load_shard(data, Grid.serial(), np.float32)
    return shard.X.T, shard.y, shard.X_test.T, shard.y_test


def run_torch(problem, optimiser, arrays, seed=0):
    import torch

    torch.set_num_threads(2)
    torch.manual_seed(seed)
    X, y, Xt, yt = (torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)
    widths = (X.shape[1], *problem["hidden"], int(y.max()) + 1)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(torch.nn.Linear(n_in, n_out))
        if i < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    loss_fn = torch.nn.CrossEntropyLoss()

    def accuracy():
        with torch.no_grad():
            return float((model(Xt).argmax(1) == yt).float().mean())

    curve, clock = [], 0.0
    n = X.shape[0]
    if optimiser == "lbfgs":
        opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=20, history_size=20,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = loss_fn(model(X), y)
            loss.backward()
            return loss

        for _ in range(problem["epochs"] * 2):  # each step: up to 20 full-batch iterations
            t0 = time.perf_counter()
            opt.step(closure)
            clock += time.perf_counter() - t0
            curve.append((clock, accuracy()))
            if clock > LBFGS_BUDGET_SECONDS or curve[-1][1] >= problem["target"] + 0.01:
                break
        return curve
    opt = (torch.optim.Adam(model.parameters(), lr=1e-3) if optimiser == "adam"
           else torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    batch = 128
    checkpoints = max(1, n // batch // 4)
    g = torch.Generator().manual_seed(seed)
    for _ in range(problem["epochs"]):
        perm = torch.randperm(n, generator=g)
        t0 = time.perf_counter()
        for k, s in enumerate(range(0, n, batch)):
            idx = perm[s:s + batch]
            opt.zero_grad()
            loss_fn(model(X[idx]), y[idx]).backward()
            opt.step()
            if (k + 1) % checkpoints == 0:
                clock += time.perf_counter() - t0
                curve.append((clock, accuracy()))
                t0 = time.perf_counter()
        clock += time.perf_counter() - t0
    return curve


def mnist_file(mnist_dir, tmp):
    from admm_mpi.convert import convert

    d = Path(mnist_dir)
    path = os.path.join(tmp, "mnist.h5")
    convert(f"{d}/train-images-idx3-ubyte.gz,{d}/train-labels-idx1-ubyte.gz", path, fmt="idx",
            test_inputs=f"{d}/t10k-images-idx3-ubyte.gz,{d}/t10k-labels-idx1-ubyte.gz", scale=255.0)
    return path


def run(mnist_dir, skip_mnist):
    import torch

    tmp = tempfile.mkdtemp(prefix="bench-tta-")
    results = []
    for name, problem in PROBLEMS.items():
        if name == "mnist":
            if skip_mnist or not Path(mnist_dir, "train-images-idx3-ubyte.gz").exists():
                print(f"skipping MNIST: no IDX files in {mnist_dir}")
                continue
            problem = {**problem, "data": mnist_file(mnist_dir, tmp)}
        arrays = load(problem["data"])
        entry = {"problem": name, "target": problem["target"], "hidden": list(problem["hidden"]), "runs": []}
        for solver, extra in problem["admm"]:
            command, curve = run_admm(problem, solver, extra, tmp)
            entry["runs"].append({"method": f"ADMM {solver} (2 ranks)", "command": command, "curve": curve,
                                  "time_to_target": time_to_target(curve, problem["target"])})
            print(name, solver, entry["runs"][-1]["time_to_target"], curve[-1], flush=True)
        for optimiser in ("adam", "sgd_momentum", "lbfgs"):
            curve = run_torch(problem, optimiser, arrays)
            entry["runs"].append({"method": f"PyTorch {optimiser}", "curve": curve,
                                  "time_to_target": time_to_target(curve, problem["target"])})
            print(name, optimiser, entry["runs"][-1]["time_to_target"], curve[-1], flush=True)
        admm = [r["time_to_target"] for r in entry["runs"] if r["method"].startswith("ADMM") and r["time_to_target"]]
        torch_times = [r["time_to_target"] for r in entry["runs"]
                       if r["method"].startswith("PyTorch") and r["time_to_target"]]
        entry["best_admm_seconds"] = min(admm) if admm else None
        entry["best_torch_seconds"] = min(torch_times) if torch_times else None
        entry["ratio_admm_over_best_torch"] = (entry["best_admm_seconds"] / entry["best_torch_seconds"]
                                               if admm and torch_times else None)
        results.append(entry)
    return {"benchmark": "time to accuracy", "torch": torch.__version__, "problems": results}


def plot(result):
    paths = []
    for entry in result["problems"]:
        def draw(ax, entry=entry):
            for r in entry["runs"]:
                xs, ys = zip(*r["curve"])
                ax.plot(xs, ys, label=r["method"], marker="." if len(xs) < 80 else None)
            ax.axhline(entry["target"], color="grey", linestyle=":", label=f"target {entry['target']}")
            ax.set_xscale("log")
            ax.set_ylim(max(0.0, entry["target"] - 0.2), 1.0)
            ax.set_xlabel("training seconds (2 cores)")
            ax.set_ylabel("test accuracy")
            ax.set_title(f"{entry['problem']}: MLP {entry['hidden']}")
            ax.legend(fontsize=8)
        paths.append(save_plot(f"time_to_accuracy_{entry['problem']}", draw))
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", default=str(REPO.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--skip-mnist", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.mnist, args.skip_mnist)
    print("wrote", write_result("time_to_accuracy", result), *plot(result))
    for e in result["problems"]:
        print(f"{e['problem']}: best ADMM {e['best_admm_seconds']} s, best PyTorch {e['best_torch_seconds']} s, "
              f"ratio {e['ratio_admm_over_best_torch']}")


if __name__ == "__main__":
    main()
