"""GPU against CPU in one run: one Taylor iteration and one minibatch_am epoch, MNIST-shaped.

    python bench/gpu.py [--dtype float32]          (launch/gpu-check.sh runs it after the gpu tests)

Shapes: Taylor ADMM 784-1000-1000-10 on 60 000 synthetic MNIST-shaped samples
(``common.synthetic_mnist``), and one epoch of minibatch_am with the MNIST recipe's network and
settings (configs/mnist-minibatch_am.toml: 784-8000-1000-10, batches of 2000, so 30 batches) on
the same samples. Each runs on the CPU (numpy, this process's BLAS threads) and on the GPU (cupy,
device 0 as this process sees it), one process, no MPI traffic. Before its timed step on the GPU
each solver takes one step on the first 4 000 samples, recorded apart (``gpu_warm_up_seconds``):
it compiles cupy's kernels (cached on disk afterwards) and sets up cuBLAS. The GPU is
synchronised before the clock stops. The weights after the timed step are compared across the devices (their
relative difference; float32 rounding differs between the devices' BLAS).

Writes results/gpu.json: the device's name, CUDA runtime and driver, cupy, whether MPI was
CUDA-aware (the grid's answer, ``ADMM_MPI_CUDA_AWARE`` or the library's query), the timings and
``common.run_record()``. Without cupy or a GPU it prints one line and exits 0, writing nothing.
"""

import argparse
import sys
import time

import numpy as np

from common import REPO, synthetic_mnist, write_result

SAMPLES = 60_000
WARM_UP_SAMPLES = 4_000
CASES = {  # name: (settings, what one step is)
    "taylor 784-1000-1000-10": (dict(solver="taylor", hidden=(1000, 1000)), "iteration"),
    "minibatch_am 784-8000-1000-10": (None, "epoch"),  # None: configs/mnist-minibatch_am.toml
}


def gpu_or_reason():
    """(cupy, None) with this process on its GPU, or (None, why there is no GPU here)."""
    from admm_mpi.devices import device_for, gpu_facts

    facts = gpu_facts(0)
    if facts["cupy"] is None:
        return None, f"cupy is not importable ({facts['problem']})"
    if not facts["devices"]:
        return None, facts["problem"] or "cupy sees 0 GPUs"
    import cupy

    cupy.cuda.Device(device_for(0, facts["devices"])).use()
    return cupy, None


def solver_for(case, n, xp, dtype):
    """(solver, X, Y, state) of ``case`` on the first ``n`` synthetic samples, arrays of ``xp``."""
    from admm_mpi.config import TrainConfig, read_toml
    from admm_mpi.grid import Grid
    from admm_mpi.model import ModelSpec
    from admm_mpi.ops.losses import get_loss
    from admm_mpi.solvers import make_solver

    settings = CASES[case][0] or read_toml(REPO / "configs" / "mnist-minibatch_am.toml")
    config = TrainConfig.from_settings(**settings)
    loss = get_loss(config.resolved_loss())
    spec = ModelSpec(widths=(784, *config.hidden, loss.n_outputs(10)), activation=config.resolved_activation(),
                     loss=loss.name, n_classes=10)
    X, y = synthetic_mnist(SAMPLES, dtype)
    X, y = np.ascontiguousarray(X[:, :n]), y[:n]
    Y = spec.loss_fn.targets(y, 10, dtype)
    X, Y = xp.asarray(X), xp.asarray(Y)
    solver = make_solver(config.solver, spec, Grid.serial(), n, config.solver_params())
    return solver, X, Y, solver.init_state(X, Y, np.random.default_rng(config.seed))


def timed_step(case, n, xp, dtype, sync):
    """Seconds of the first step of ``case`` on ``n`` samples, and the weights after it (on the host)."""
    from admm_mpi.backend import to_host

    solver, _, Y, state = solver_for(case, n, xp, dtype)
    sync()
    t0 = time.perf_counter()
    solver.step(state, Y, 1)
    sync()
    seconds = time.perf_counter() - t0
    weights, _ = solver.full_model(solver.evaluated(state))
    return seconds, [to_host(W) for W in weights]


def run(cupy, dtype):
    from admm_mpi.devices import gpu_facts
    from admm_mpi.grid import Grid, cuda_aware

    world = Grid()  # starts MPI (one process): whether it is CUDA-aware is the library's answer
    aware, source = cuda_aware()
    world.close()
    facts = gpu_facts(0)
    devices = {"cpu": (np, lambda: None), "gpu": (cupy, cupy.cuda.Device().synchronize)}
    rows = []
    for case in CASES:
        row = {"case": case, "step": CASES[case][1], "samples": SAMPLES, "dtype": dtype}
        weights = {}
        for device, (xp, sync) in devices.items():
            if device == "gpu":  # the first cupy step compiles kernels: not what a run's steps cost
                row["gpu_warm_up_seconds"] = round(timed_step(case, WARM_UP_SAMPLES, xp, dtype, sync)[0], 3)
            seconds, weights[device] = timed_step(case, SAMPLES, xp, dtype, sync)
            row[f"{device}_seconds"] = round(seconds, 3)
            print(f"{case} on the {device}: one {row['step']} {seconds:.2f} s", flush=True)
        row["speedup_gpu_over_cpu"] = round(row["cpu_seconds"] / row["gpu_seconds"], 2)
        row["weights_relative_difference"] = max(
            float(np.linalg.norm(G - C) / np.linalg.norm(C)) for G, C in zip(weights["gpu"], weights["cpu"]))
        rows.append(row)
    return {"benchmark": "gpu", "device": facts["name"], "cuda_runtime": facts["runtime"],
            "cuda_driver": facts["driver"], "cupy": facts["cupy"], "mpi_cuda_aware": aware,
            "mpi_cuda_aware_source": source, "rows": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                        help="working precision (float32: the package's default)")
    args = parser.parse_args()
    cupy, reason = gpu_or_reason()
    if cupy is None:
        print(f"bench/gpu.py: no GPU here ({reason}); nothing measured, nothing written")
        return 0
    result = run(cupy, args.dtype)
    for row in result["rows"]:
        print(f"{row['case']}: GPU {row['speedup_gpu_over_cpu']}x the CPU "
              f"(weights differ by {row['weights_relative_difference']:.1e})")
    print("wrote", write_result("gpu", result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
