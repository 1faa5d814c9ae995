"""A cost model of data-parallel ADMM and of data-parallel SGD: checked at 1-4 ranks here, projected to 64-4 096.

    python bench/cost_model.py [--samples 60000] [--repeats 3] [--iters 3] [--collectives results/collectives.json]

Parameters, all measured on this machine (the collectives by ``bench/collectives.py``):

- compute: the GEMM rate of one BLAS thread and the cost per element of the element-wise work
  (the ReLU z-update and the passes around it), timed on a 1000 x 10 000 block;
- the weight solves (Cholesky + inverse of each layer's (n_in+1)² Gram and of the a-update
  matrices), timed at the check's shape and scaled by Σ k³ for other shapes;
- the collectives: ``results/collectives.json`` (or ``--collectives``), a model of the point-to-point
  algorithms MPICH runs (rounds x latency + bytes copied x copy + bytes reduced x reduce + the costs of
  where the bytes live: 4 KB pages, DRAM, temporaries that fault in; see ``bench/collectives.py``).

One Taylor step on P ranks, N samples (one thread per rank):

    t(P) = [flops(N/P) / rate + elements(N/P) c_elem] x max(1, P/cores) + t_solve
           + Σ_layers Reduce(P, stats_l) + Bcast(P, [W|b]_l)

checked against ``mpiexec -n P admm-mpi train`` at P = 1, 2 and 4 (4 is oversubscribed).
Projections (``projections`` in the JSON, ``results/cost_model.md``): strong and weak scaling of a
Taylor iteration and a ``minibatch_am`` epoch for the MNIST recipes and a HIGGS-sized problem, the
root's serial share, the same model for data-parallel SGD, and where ADMM's epoch beats SGD's,
on nodes of ``RANKS_PER_NODE`` ranks joined by the InfiniBand-class network of ``NETWORK``.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from collectives import cluster_seconds, git_commit, model_seconds
from common import ALL_ROWS, RESULTS, machine, median_seconds, mpiexec, read_result, save_plot, synthetic_mnist, write_result

WIDTHS = (784, 1000, 1000, 10)  # the step check's network
ITEMSIZE = 4  # float32
# HIGGS (UCI): 11 M events x 28 features. Widths of Baldi, Sadowski & Whiteson, "Searching for exotic
# particles in high-energy physics with deep learning", Nature Communications 5, 4308 (2014): five
# hidden layers of 300 units (their deep network on these data), one output (binary).
HIGGS = (28, 300, 300, 300, 300, 300, 1)
PROBLEMS = {  # name -> (widths, samples, batch of minibatch_am or None for a full-batch Taylor iteration)
    "MNIST taylor (configs/mnist-taylor.toml)": ((784, 4000, 10), 60_000, None),
    # the recipe's MLP when this model was fitted (results/cost_model.md); the config has held
    # 8000-1000 since (README, Accuracy), not yet projected
    "MNIST minibatch_am (configs/mnist-minibatch_am.toml)": ((784, 4000, 1000, 10), 60_000, 2000),
    "HIGGS taylor": (HIGGS, 11_000_000, None),
    "HIGGS minibatch_am": (HIGGS, 11_000_000, 100_000),
}
# The network: Microsoft Azure, "HBv4-series VM sizes performance and scalability"
# (learn.microsoft.com/azure/virtual-machines/hbv4-performance): RDMA latency < 2 µs (1 byte),
# 400 Gb/s one way (NDR InfiniBand). Latency 2 µs, 50 GB/s per node.
NETWORK = {"alpha": 2e-6, "beta": 1 / 50e9,
           "source": "Azure HBv4-series performance page (learn.microsoft.com/azure/virtual-machines/hbv4-performance): "
                     "< 2 us 1-byte RDMA latency, 400 Gb/s one-way"}
RANKS_PER_NODE = 64  # our assumption: one rank per core of a 64-core node, one NIC per node
NODE_CACHE = 256 * 2**20  # our assumption: the node's last-level cache (4 MB per core, as 64-core EPYC parts)
SGD_BATCH_PER_RANK = 128  # data-parallel SGD: 128 samples per rank and step (global batch 128 P)
SGD_GLOBAL_BATCH = 8192  # and with a fixed global batch (128 per rank at 64 ranks)
# Per-core rates for the projections: the quietest measurement of this machine on record (measure_compute
# in bench/results/cost_model.json of commit a90b739, load not recorded: GEMM 113.5 GFLOP/s, 9.42 ns per element,
# spd inverses 5.08e-11 s per k³ = 7/3 k³ flops), the SGD element-wise cost scaled from it by the ratio measured
# in this run. (At the load of 25-30 of this run no repetition had a core: GEMM 9.8 GFLOP/s at the fastest.)
# For comparison, Azure's HBv4 page gives HPL 7.6 TF FP64 on 144 cores: 53 GFLOP/s per core (46 here).
QUIET_RATES = {"gemm_flops_per_second": 113.45e9, "seconds_per_element": 9.415e-9,
               "lapack_seconds_per_flop": 5.0793e-11 * 3 / 7, "source": "bench/results/cost_model.json at commit a90b739 (its measure_compute)"}
RANKS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
TABLE_RANKS = (64, 256, 1024, 4096)


# ---- compute ----------------------------------------------------------------------------------
def kernel_layers(widths, batch, spread=True):
    """Per layer: whether the weight solve takes the kernel form (a mini-batch of ``batch`` columns
    narrower than the layer's input; the code's rule, ``ops/linalg.kernel_form_cheaper``). Only the
    spread plan (the current code) has it; the root plan is the solve as it was before."""
    from admm_mpi.ops.linalg import kernel_form_cheaper

    return [batch is not None and spread and kernel_form_cheaper(n_in + 1, batch, n_out)
            for n_in, n_out in zip(widths[:-1], widths[1:])]


def layer_terms(widths, n, kernel=None, batch=None):
    """(GEMM flops, element-wise elements, bytes reduced + broadcast) of one step on n columns per rank.

    A ``kernel`` layer (of a mini-batch of ``batch`` columns over all ranks) computes its share
    ``batch x n`` of the batch's kernel matrix instead of its columns' (n_in+1)² Gram."""
    flops = elements = 0.0
    comm = []
    L = len(widths) - 1
    kernel = kernel or [False] * L
    for l in range(L):
        n_in, n_out = widths[l], widths[l + 1]
        gram = batch * (n_in + 1) if kernel[l] else n_in * n_in
        flops += gram * n + 4 * n_in * n_out * n          # syrk Gram (or kernel share), z aᵀ (or D Aᵀ), m = W a
        comm.append(((n_in + 1) * (n_in + 1 + n_out) + n_out * (n_in + 1)))  # stats up, [W|b] down
        if l < L - 1:
            n_next = widths[l + 2]
            flops += 2 * n_next * n_out * n
            flops += (4 * n_next * n_out + 2 * n_next**2) * n if n_next < n_out else 2 * n_out**2 * n
            elements += n_out * n                                 # one z-update block per hidden layer
    return flops, elements, comm


def solve_seconds(params, widths, P=1, spread=False, kernel=None, batch=None):
    """The solves of one step (float64 LAPACK, at the rate measured by ``measure_compute``).

    Every layer's [W | b] (transpose_reduce_weights): a Cholesky factor of the (n_in+1)² Gram,
    k³/3 flops, and triangular solves for n_out right-hand sides, 2 k² n_out; on the root, or spread
    (every rank factors and solves its 1/P of the rows). Each hidden layer's a-update operator
    (activation_solver: an spd inverse of min(n_l, n_l+1)², 7/3 q³) is formed on every rank either way.
    """
    flop = params["lapack_seconds_per_flop"]
    seconds = 0.0
    kernel = kernel or [False] * (len(widths) - 1)
    for l in range(len(widths) - 1):
        k, n_out = (batch if kernel[l] else widths[l] + 1), widths[l + 1]  # the kernel form factors batch²
        seconds += flop * (k**3 / 3 + 2 * k * k * n_out / (P if spread else 1))
        if l < len(widths) - 2:
            seconds += flop * 7 / 3 * min(widths[l + 1], widths[l + 2]) ** 3
    return seconds


def compute_seconds(params, widths, columns):
    """GEMMs and element-wise work of one Taylor step (or minibatch_am batch) on ``columns`` samples."""
    flops, elements, _ = layer_terms(widths, columns)
    return flops / params["gemm_flops_per_second"] + elements * params["seconds_per_element"]


def layer_bytes(widths):
    """Per layer: (bytes of the reduced statistics [A Aᵀ | A Zᵀ], bytes of the broadcast [W | b])."""
    return [((n_in + 1) * (n_in + 1 + n_out) * ITEMSIZE, n_out * (n_in + 1) * ITEMSIZE)
            for n_in, n_out in zip(widths[:-1], widths[1:])]


def communication_seconds(coll, widths, P, here=None, spread=False, kernel=None, batch=None):
    """The step's collectives: Reduce + Bcast per layer (root solve), or Reduce_scatter + Allgather of
    the statistics and Allgather of the rows of [W | b] (spread solve). ``here``: cores of this
    machine (one node, oversubscribed beyond them); else the cluster of RANKS_PER_NODE-rank nodes."""
    if P == 1:
        return 0.0

    def one(name, n):
        if here:
            return model_seconds(coll, name, P, n, cores=here)
        return cluster_seconds(coll, name, P, n, RANKS_PER_NODE, NETWORK, NODE_CACHE)

    ops = (("reduce_scatter", "allgather"), ("allgather",)) if spread else (("reduce",), ("bcast",))
    kernel = kernel or [False] * (len(widths) - 1)
    total = 0.0
    for l, (stats, weights) in enumerate(layer_bytes(widths)):
        if kernel[l]:  # allgathers of the batch's [a;1] and targets (as rows), the kernel matrix, [W|b]
            total += one("allgather", batch * (widths[l] + 1 + widths[l + 1] + batch) * ITEMSIZE) + one("allgather", weights)
        else:
            total += sum(one(name, stats) for name in ops[0]) + sum(one(name, weights) for name in ops[1])
    return total


def core_share_slowdown(P, cores, load_run=None, load_measured=None):
    """How much slower a rank computes in a run of P ranks than the rate measurement did.

    Linux gives each runnable process an equal share of the cores: cores / max(cores, runnable).
    With the 1-minute load averages of the run and of the rate measurement (each counting its own
    processes) the ratio of the shares; without them, P ranks alone on the cores (P / cores).
    """
    if load_run is None or load_measured is None:
        return max(1.0, P / cores)
    return max(cores, load_run, P) / max(cores, load_measured)


def predict_here(params, coll, widths, n, P, cores, slowdown=None):
    """Seconds of one Taylor step on P ranks of this machine (ranks beyond the cores share them)."""
    slowdown = max(1.0, P / cores) if slowdown is None else slowdown  # waiting ranks poll: the root's solve shares too
    compute = compute_seconds(params, widths, n / P) + solve_seconds(params, widths)
    return compute * slowdown + communication_seconds(coll, widths, P, here=cores)


def admm_epoch(params, coll, widths, N, batch, P, spread=False):
    """(seconds, serial seconds) of a Taylor iteration (batch None) or a minibatch_am epoch on P ranks."""
    batches = 1 if batch is None else math.ceil(N / batch)
    columns = N if batch is None else batch
    kernel = kernel_layers(widths, batch, spread)
    solve = solve_seconds(params, widths, P, spread, kernel, batch)
    flops, elements, _ = layer_terms(widths, columns / P, kernel, batch)
    compute = flops / params["gemm_flops_per_second"] + elements * params["seconds_per_element"]
    per_batch = compute + solve + communication_seconds(coll, widths, P, spread=spread, kernel=kernel, batch=batch)
    return batches * per_batch, batches * solve


def sgd_epoch(params, coll, widths, N, P, global_batch=None):
    """Seconds of an epoch of data-parallel SGD: steps of 128 samples per rank (or of ``global_batch``
    samples split over the ranks), each step one Allreduce of all gradients."""
    weights = sum((n_in + 1) * n_out for n_in, n_out in zip(widths[:-1], widths[1:]))
    per_sample = 6 * (weights - sum(widths[1:]))  # forward 2, backward 4 flops per weight
    elements = sum(widths[1:-1])  # ReLU and its derivative's mask per hidden unit and sample
    per_rank = global_batch / P if global_batch else SGD_BATCH_PER_RANK
    step = per_rank * (per_sample / params["gemm_flops_per_second"] + elements * params["sgd_seconds_per_element"])
    allreduce = cluster_seconds(coll, "allreduce", P, weights * ITEMSIZE, RANKS_PER_NODE, NETWORK, NODE_CACHE) \
        if P > 1 else 0.0
    return math.ceil(N / (per_rank * P)) * (step + allreduce)


# ---- measurements ---------------------------------------------------------------------------
def _timed(fn, repeats):
    """(median, fastest) seconds of ``fn`` over ``repeats`` runs after a warm-up."""
    median, times = median_seconds(fn, repeats=repeats)
    return median, min(times)


def measure_compute(dtype=np.float32, repeats=7):
    """Per-core rates (one BLAS thread): at the median repetition, what a run sees now on this shared
    machine (for the step check), and at the fastest, the core's own speed (``uncontended``, for the
    projections to dedicated nodes)."""
    import scipy.linalg
    from threadpoolctl import threadpool_limits

    from admm_mpi.ops.activations import relu, relu_z_update
    from admm_mpi.ops.linalg import gram

    rng = np.random.default_rng(0)
    W = rng.standard_normal((1000, 1000)).astype(dtype)
    A = rng.random((1000, 10000)).astype(dtype)
    Z = rng.standard_normal((1000, 10000)).astype(dtype)
    b = rng.standard_normal(1000).astype(dtype)
    G = gram(rng.random((1001, 2000))) + np.eye(1001)  # float64, as the solves run

    def elementwise():  # the element-wise work of one hidden layer of a Taylor step
        H = relu(Z)
        T = Z - b[:, None]
        T *= 1.0
        T += H
        relu_z_update(H, Z + b[:, None], 1.0, 1.0)

    def sgd_elementwise():  # an SGD step's element-wise work on a hidden layer: ReLU and its mask
        H = np.maximum(Z, 0)
        H *= Z > 0

    with threadpool_limits(1):
        timed = {"gemm": _timed(lambda: W @ A, repeats), "element": _timed(elementwise, repeats),
                 "sgd_element": _timed(sgd_elementwise, repeats),
                 "factor": _timed(lambda: scipy.linalg.cho_factor(G, lower=True, check_finite=False), repeats)}

    def rates(i):
        return {"gemm_flops_per_second": 2 * 1000 * 1000 * 10000 / timed["gemm"][i],
                "seconds_per_element": timed["element"][i] / Z.size,
                "sgd_seconds_per_element": timed["sgd_element"][i] / Z.size,
                "lapack_seconds_per_flop": timed["factor"][i] / (1001**3 / 3)}

    return {**rates(0), "uncontended": rates(1), "load": os.getloadavg()[0]}


def measured_step(P, data, out, iters):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [mpiexec(), "-n", str(P), sys.executable, "-m", "admm_mpi", "train", "--data", data, "--solver", "taylor",
           *ALL_ROWS, "--hidden", "1000,1000", "--dtype", "float32", "--iters", str(iters), "--no-progress", "--out", out]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=3600)
    return json.loads((Path(out) / "summary.json").read_text())["step_seconds_per_iteration"]


def measure_steps(n, repeats, iters, tmp):
    """Seconds of a Taylor step (784-1000-1000-10, float32) at 1, 2 and 4 ranks: every run, and the load."""
    from admm_mpi.data import write_dataset

    X, y = synthetic_mnist(n, np.float32)
    data = os.path.join(tmp, "data.h5")
    write_dataset(data, X.T, y, X[:, :1000].T, y[:1000], name="mnist-shaped synthetic", n_classes=10)
    del X
    found = {}
    for P in (1, 2, 4):  # the rates are measured again just before each rank count's runs: the load drifts
        rates = measure_compute()
        times = [measured_step(P, data, os.path.join(tmp, f"run{P}-{r}"), iters) for r in range(repeats)]
        found[str(P)] = {"all_measured": times, "load": os.getloadavg()[0], "compute": rates}
        print(f"P={P}: {statistics.median(times):.3f} s per step", flush=True)
    return found


def layer_evaluation(repeats, iters, tmp):
    """A layer-layout pdADMM iteration at 2 ranks with --eval-every 1 and 10: mean seconds of the step and of
    the whole iteration (step + pipelined evaluation); 8 layers as bench/layer_parallel.py, but 784-500x7-10 on
    3 000 samples (a quarter of its flops: this shared machine runs at a tenth of its cores)."""
    from admm_mpi.data import write_dataset

    X, y = synthetic_mnist(3000, np.float32)
    data = os.path.join(tmp, "deep.h5")
    write_dataset(data, X.T, y, X[:, :1000].T, y[:1000], name="mnist-shaped synthetic", n_classes=10)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    found = {"1": [], "10": []}
    for r in range(repeats):
        for every in found:  # alternating, so the machine's load hits both alike
            out = os.path.join(tmp, f"deep-{every}-{r}")
            cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "admm_mpi", "train", "--data", data, "--solver", "pdadmm",
                   "--layout", "layer", "--hidden", ",".join(["500"] * 7), "--loss", "cross_entropy", "--dtype",
                   "float32", "--iters", str(iters), "--eval-every", every, "--no-progress", "--out", out]
            subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=3600)
            rows = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines() if line.strip()]
            found[every].append({"iteration": statistics.mean(r["seconds"] for r in rows),
                                 "step": statistics.mean(r["step_seconds"] for r in rows)})
    return {every: {"runs": runs, "iteration": statistics.median(r["iteration"] for r in runs),
                    "step": statistics.median(r["step"] for r in runs)} for every, runs in found.items()}


def step_checks(params, coll, n, measured):
    """Measured against modelled seconds of a Taylor step at 1, 2 and 4 ranks of this machine."""
    checks = []
    for P, found in measured.items():
        P = int(P)
        median = statistics.median(found["all_measured"])
        params = found.get("compute", params)  # the rates measured just before these runs
        slowdown = core_share_slowdown(P, os.cpu_count(), found["load"], params["load"])
        predicted = predict_here(params, coll, WIDTHS, n, P, os.cpu_count(), slowdown)
        alone = predict_here(params, coll, WIDTHS, n, P, os.cpu_count())
        checks.append({"ranks": P, "measured": median, "all_measured": found["all_measured"], "predicted": predicted,
                       "error": predicted / median - 1, "load": found["load"], "core_share_slowdown": slowdown,
                       "predicted_without_load": alone, "error_without_load": alone / median - 1})
    return checks


def scaling_rows(params, coll, name, widths, N, batch):
    """Strong and weak scaling of one problem over RANKS, root and spread solves, and SGD on the same MLP.

    Strong: the problem as it is; efficiency t(1) / (P t(P)) against the same solve's serial time.
    Weak: samples (and the minibatch_am batch) grow with P from the problem at 64 ranks; t(64) / t(P).
    """
    rows, base_P = [], TABLE_RANKS[0]
    serial = {spread: admm_epoch(params, coll, widths, N, batch, 1, spread)[0] for spread in (False, True)}
    weak_base = {spread: admm_epoch(params, coll, widths, N, batch, base_P, spread)[0] for spread in (False, True)}
    for P in RANKS:
        row = {"problem": name, "ranks": P, "columns_per_rank": (batch or N) / P}
        for spread in (False, True):
            seconds, solve = admm_epoch(params, coll, widths, N, batch, P, spread)
            weak_batch = None if batch is None else batch * P / base_P
            weak, _ = admm_epoch(params, coll, widths, N * P / base_P, weak_batch, P, spread)
            row["spread" if spread else "root"] = {
                "seconds": seconds, "serial_share": solve / seconds, "strong_efficiency": serial[spread] / (P * seconds),
                "weak_seconds": weak, "weak_efficiency": weak_base[spread] / weak}
        row["sgd_seconds"] = sgd_epoch(params, coll, widths, N, P)
        row["sgd_global_batch_exceeds_data"] = SGD_BATCH_PER_RANK * P > N
        row["sgd_fixed_batch_seconds"] = sgd_epoch(params, coll, widths, N, P, SGD_GLOBAL_BATCH)
        rows.append(row)
    return rows


def first_rank(rows, test, least=1):
    """The smallest rank count (>= ``least``) whose row passes ``test``, or None."""
    return next((r["ranks"] for r in rows if r["ranks"] >= least and test(r)), None)


def summaries(projections):
    """Per problem: where strong efficiency falls below 50 %, and where ADMM's epoch beats SGD's."""
    found = {}
    for name in PROBLEMS:
        rows = [r for r in projections if r["problem"] == name]
        found[name] = {f"{key}_strong_below_50": first_rank(rows, lambda r, k=key: r[k]["strong_efficiency"] < 0.5)
                       for key in ("root", "spread")}
        found[name].update({f"{key}_weak_below_50": first_rank(rows, lambda r, k=key: r[k]["weak_efficiency"] < 0.5,
                                                               TABLE_RANKS[0]) for key in ("root", "spread")})
        found[name].update({f"{key}_beats_sgd_fixed_batch": first_rank(
            rows, lambda r, k=key: r[k]["seconds"] < r["sgd_fixed_batch_seconds"]) for key in ("root", "spread")})
        found[name].update({f"{key}_beats_sgd": first_rank(rows, lambda r, k=key: r[k]["seconds"] < r["sgd_seconds"]
                                                            and not r["sgd_global_batch_exceeds_data"])
                            for key in ("root", "spread")})
    return found


def collective_errors(errors):
    """The collective model's error per size at 2 and 4 ranks, sizes >= 64 KB (from collectives.json)."""
    rows = [r for r in errors if r["ranks"] in (2, 4) and r["bytes"] >= 64 * 1024]
    worst = max(abs(r["error"]) for r in rows) if rows else None
    return {"rows": rows, "worst_abs_error": worst}


def probe_conditions(coll_result):
    """Per rank count of the collectives' probe: sweeps and the 1-minute load before and after."""
    return {P: {"sweeps": probe.get("sweep_count"), "load_before": probe["load_before"][0],
                "load_after": probe["load_after"][0]} for P, probe in coll_result["probes"].items()}


def measure(n, repeats, iters):
    tmp = tempfile.mkdtemp(prefix="bench-cost-")
    return {"compute": measure_compute(), "steps": measure_steps(n, repeats, iters, tmp),
            "layer_evaluation": layer_evaluation(2, 10, tmp), "load_after": os.getloadavg()}


def projection_core_rates(params):
    """QUIET_RATES, with the SGD element-wise cost scaled by this run's ratio of the two element-wise costs."""
    fastest = params["uncontended"]
    ratio = fastest["sgd_seconds_per_element"] / fastest["seconds_per_element"]
    rates = {k: v for k, v in QUIET_RATES.items() if k != "source"}
    return {**rates, "sgd_seconds_per_element": rates["seconds_per_element"] * ratio}


def portable_argv():
    """sys.argv with absolute paths cut to their file names (no paths of this machine in the results)."""
    return [os.path.basename(a) if os.path.isabs(a) else a for a in sys.argv]


def node_aware_rows(coll_result):
    """Grid.allsum flat against faked nodes, per rank count and size (from collectives.json)."""
    rows = []
    for P, probe in coll_result["probes"].items():
        found = probe.get("node_aware", {})
        for nodes, times in found.items():
            if nodes == "1":
                continue
            for n, flat, split in zip(probe["sizes"], found["1"], times):
                rows.append({"ranks": int(P), "nodes": int(nodes), "bytes": n, "flat": flat, "node_aware": split,
                             "ratio": split / flat})
    return rows


def run(n, repeats, iters, collectives_path, reuse=None):
    """Measure (or take an earlier run's measurements, ``reuse``), then check and project."""
    coll_result = read_result(collectives_path)
    coll_here, coll_cluster = coll_result["params"], coll_result["params_uncontended"]
    earlier = read_result(reuse) if reuse else None
    n = earlier["samples"] if reuse else n  # the step check compares with steps measured on that many samples
    measured = earlier["measurements"] if reuse else measure(n, repeats, iters)
    params = measured["compute"]
    projection_rates = projection_core_rates(params)
    projections = [row for name, (widths, N, batch) in PROBLEMS.items()
                   for row in scaling_rows(projection_rates, coll_cluster, name, widths, N, batch)]
    return {"benchmark": "cost model", "solver": "taylor", "shape": "784-1000-1000-10", "samples": n,
            "dtype": "float32", "params": params, "measurements": measured,
            "projection_core_rates": {**projection_rates, "source": QUIET_RATES["source"]},
            "collectives": {"params_here": coll_here, "params_cluster": coll_cluster, "commit": coll_result.get("commit"),
                            "file": os.path.basename(collectives_path), "probes": probe_conditions(coll_result),
                            "holdout_file": coll_result.get("holdout_file"),
                            "error_summary_64KB_up": coll_result.get("error_summary_64KB_up"),
                            "errors_2_4_ranks_64KB_up": collective_errors(coll_result["errors"]),
                            "errors_uncontended_2_4_ranks_64KB_up": collective_errors(coll_result["errors_uncontended"])},
            "checks": step_checks(params, coll_here, n, measured["steps"]), "layer_evaluation": measured["layer_evaluation"],
            "problems": {k: {"widths": w, "samples": N, "batch": b} for k, (w, N, b) in PROBLEMS.items()},
            "network": NETWORK, "ranks_per_node": RANKS_PER_NODE, "sgd_batch_per_rank": SGD_BATCH_PER_RANK,
            "projections": projections, "summaries": summaries(projections),
            "node_aware": node_aware_rows(coll_result), "argv": portable_argv(), "commit": git_commit(), "machine": machine(),
            "measurements_from": measurements_origin(earlier)}


def measurements_origin(earlier):
    """Where the measurements were made: "this run", or the command and commit of the run that measured them
    (a reused file that itself reused keeps naming the run that measured)."""
    if earlier is None:
        return "this run"
    origin = earlier.get("measurements_from")
    return origin if isinstance(origin, dict) else {key: earlier.get(key) for key in ("command", "commit")}


def _pct(x):
    return f"{100 * x:.0f}%"


def _rates_text(p):
    return (f"GEMM {p['gemm_flops_per_second'] / 1e9:.1f} GFLOP/s, element-wise {p['seconds_per_element'] * 1e9:.2f} ns "
            f"per element of a hidden layer of a Taylor step ({p['sgd_seconds_per_element'] * 1e9:.2f} ns for an SGD "
            f"step's ReLU and mask), float64 Cholesky {1e-9 / p['lapack_seconds_per_flop']:.1f} GFLOP/s")


def _error_rows(rows, ranks):
    sizes = sorted({r["bytes"] for r in rows if r["operation"] == "reduce"})
    lines = ["| operation | ranks | " + " | ".join(f"{s / 2**20:g} MB" for s in sizes) + " |",
             "|---|---|" + "---|" * len(sizes)]
    for op in ("reduce", "bcast", "allreduce", "reduce_scatter", "allgather", "reduce_bcast"):
        for P in ranks:
            cells = [r for r in rows if r["operation"] == op and r["ranks"] == P]
            lines.append(f"| {op} | {P} | " + " | ".join(f"{100 * r['error']:+.0f}%" for r in cells) + " |")
    return lines


def _loads_text(coll, sweeps=True):
    """'2 ranks: 3 sweeps, load 0.4 -> 0.5; 4 ranks: ...' from the probe conditions of the collectives file."""
    return "; ".join(f"{P} ranks: " + (f"{c['sweeps']} sweeps, " if sweeps else "")
                     + f"load {c['load_before']:.1f} -> {c['load_after']:.1f}" for P, c in coll["probes"].items())


HOLDOUT_ROWS = (("in_sample", "in sample (the fit's own data)"),
                ("leave_one_size_out", "each size from a fit without it"),
                ("sweeps", "each sweep from a fit to the median of the others"),
                ("sweeps_unmodelled", "each sweep from the median of the others, no model (the sweeps' spread)"),
                ("ranks_beyond_cores", "oversubscribed ranks from a fit at the ranks that fit the cores"),
                ("other_run", "another run's medians"))


def markdown_collective_model(coll):
    errors = coll["errors_2_4_ranks_64KB_up"]
    worst = {P: max(abs(r["error"]) for r in errors["rows"] if r["ranks"] == P) for P in (2, 4)}
    lines = ["## The collective model", "",
             "What MPICH (5.0.2 here) runs: mpi4py asks for MPI_THREAD_MULTIPLE, and MPICH selects its shared-memory "
             "release-gather algorithms only single-threaded (`maint/tuning/coll/ch4/posix_generic.json` in "
             "github.com/pmodels/mpich), so every operation is one of MPIR's point-to-point algorithms "
             "(`maint/tuning/coll/mpir/generic.json`): Bcast a binomial tree (from 8 ranks, above 12 KB, scatter + "
             "allgather), Reduce and Allreduce Rabenseifner's reduce-scatter + gather / allgather, Reduce_scatter "
             "recursive halving or pairwise exchange, Allgather recursive doubling or ring; messages of 8 KB and more "
             "are copied once, through Linux CMA. Across nodes MPICH composes Reduce, Bcast and Allreduce node-aware: "
             "inside each node as here, MPIR among the node leaders. Time = rounds x latency + rounds of >= 8 KB x "
             "rendezvous + bytes copied x copy + bytes CMA copies out of 4 KB pages x page + bytes copied from DRAM x "
             "memory + bytes reduced x reduce + bytes of fresh temporaries x fault, times P / cores and plus rounds x "
             "switch when ranks outnumber cores. A temporary MPICH mallocs of 32 MiB or more (glibc's cap on its mmap "
             "threshold) is a new mapping every call, so its pages fault in each time; numpy arrays of 32 MiB or more "
             "sit in huge pages, smaller ones in 4 KB heap pages; the DRAM share is the ranks' working set beyond the "
             "last-level cache. page, memory and fault take one value for the machine, latency, rendezvous, copy and "
             "switch one per operation, reduce is measured apart; one robust fit over 8 B - 64 MB and all rank counts "
             f"of `{coll['file']}` ({_loads_text(coll)}).", "",
             f"Error at 2 and 4 ranks, sizes >= 64 KB, fit to the medians: worst **{_pct(worst[2])}** at 2 ranks, "
             f"**{_pct(worst[4])}** at 4 ranks (target 25 %). Per size (model / measured - 1):", ""]
    lines += _error_rows(errors["rows"], (2, 4))
    summary = coll.get("error_summary_64KB_up") or {}
    if summary:
        lines += ["", f"The same fit on data it did not see (`errors_holdout` in `{coll['file']}`"
                  + (f"; another run: `{coll['holdout_file']}`" if coll.get("holdout_file") else "")
                  + "), sizes >= 64 KB: cells within 25 % / cells, worst error.", "",
                  "| check | 2 ranks | 4 ranks |", "|---|---|---|"]
        for key, label in HOLDOUT_ROWS:
            cells = [f"{s['within_target']}/{s['cells']}, {_pct(s['worst_abs_error'])}" if s else "-"
                     for s in (summary.get(key, {}).get(P) for P in ("2", "4"))]
            if key in summary:
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def markdown_header(result):
    p, coll = result["params"], result["collectives"]
    lines = ["# Cost model of data-parallel ADMM and SGD", "",
             f"Measured here, one BLAS thread, at the median repetition (load {p['load']:.0f} on {os.cpu_count()} cores; "
             "the step check measures them again before each rank count's runs, `measurements.steps` in the JSON): "
             f"{_rates_text(p)}; at the fastest of 7 repetitions: "
             f"{_rates_text(p['uncontended'])}. The projections use this machine's quietest rates on record "
             f"({_rates_text(result['projection_core_rates'])}; {result['projection_core_rates']['source']}, "
             "the SGD element-wise cost scaled by this run's ratio). Collectives: `bench/collectives.py` "
             f"(`results/{coll['file']}`, its own table of errors per size and rank count).", ""]
    lines += markdown_collective_model(coll)
    uncontended = coll["errors_uncontended_2_4_ranks_64KB_up"]
    lines += ["", "Fit to the fastest repetitions at 2 ranks (the intra-node model of the projections), error per size "
              f"against those minima (worst {_pct(max(abs(r['error']) for r in uncontended['rows'] if r['ranks'] == 2))} "
              "at 2 ranks):", ""] + _error_rows(uncontended["rows"], (2,))
    lines += ["", f"## Step check ({result['shape']}, N = {result['samples']}, float32, 1 thread per rank)", "",
              "| ranks | measured s/step (runs) | predicted | error | load (1 min) | error if the machine were idle |",
              "|---|---|---|---|---|---|"]
    for c in result["checks"]:
        runs = ", ".join(f"{t:.2f}" for t in c["all_measured"])
        lines.append(f"| {c['ranks']} | {c['measured']:.3f} ({runs}) | {c['predicted']:.3f} | {100 * c['error']:+.0f}% | "
                     f"{c['load']:.1f} | {100 * c['error_without_load']:+.0f}% |")
    lines += ["", "The machine is shared: a rank's share of the cores is cores / max(cores, runnable processes) "
              "(Linux's fair scheduler), so the model takes the compute and the solves "
              "max(cores, load of the run, P) / max(cores, load of the rate measurement) times slower than the "
              "measured rates, with the 1-minute load averages recorded (`core_share_slowdown` in the JSON; "
              "`error_without_load` is the error with P / cores alone, the model for an otherwise idle machine). "
              "The collectives are the fitted model at P ranks."]
    return lines


def markdown_assumptions(result):
    net = result["network"]
    lines = ["", "## Assumptions of the projections", "", "| what | value | from |", "|---|---|---|",
             f"| network latency, bandwidth per node | {net['alpha'] * 1e6:.1f} µs, {1 / net['beta'] / 1e9:.0f} GB/s | {net['source']} |",
             f"| ranks per node | {result['ranks_per_node']} (one per core, one NIC per node), last-level cache "
             f"{NODE_CACHE // 2**20} MB per node | our assumption |",
             "| per-core compute | this machine's quietest rates on record (above) | measured; Azure HBv4's HPL, "
             "7.6 TF FP64 on 144 cores, is 53 GFLOP/s per core against 46 here |",
             "| intra-node collectives | this machine's uncontended fit (`params_uncontended` of "
             f"{result['collectives']['file']}) | measured |",
             "| HIGGS | 11 M x 28, widths 28-300-300-300-300-300-1 | Baldi, Sadowski, Whiteson, Nature Comm. 5, 4308 (2014): five hidden layers of 300 |",
             "| MNIST recipes | taylor 784-4000-10 full batch; minibatch_am 784-4000-1000-10, batches of 2000 | configs/mnist-*.toml |",
             "| HIGGS minibatch_am batch | 100 000 columns (110 per epoch) | our choice: large enough to split over 4 096 ranks |",
             f"| SGD | {result['sgd_batch_per_rank']} samples per rank and step (global batch 128 P), or a fixed global batch "
             "of 8192, one Allreduce of all "
             "gradients per step (node-aware as MPICH composes it: reduce inside each node, the leaders' Rabenseifner "
             "allreduce, bcast inside each node), "
             "6 flops per weight and sample at the same GEMM rate | usual data-parallel SGD |",
             "| ADMM collectives | root solve: Reduce of [A Aᵀ \\| A Zᵀ] + Bcast of [W \\| b] per layer (node-aware, as MPICH "
             "composes them); spread solve: Reduce_scatter + Allgather of the statistics over all ranks (not node-aware: "
             "every rank's share crosses the NIC) and Allgather of the rows of [W \\| b]; a mini-batch layer narrower than "
             "its input (minibatch_am's 4001-wide layer, batches of 2000) takes the kernel form in the spread plan: "
             "Allgathers of the batch's [a;1] and targets, of the batch x batch kernel matrix (each rank computing "
             "1/P of it) and of [W \\| b], a batch³/3 factorisation on every rank | admm_mpi/ops/linalg.py "
             "(transpose_reduce_weights, kernel_form_weights, reduce_solve_broadcast) |",
             "| weak scaling | samples (and the minibatch_am batch) grow with P from the problem's size at 64 ranks | |",
             "| not modelled | epochs to a given accuracy (large SGD batches need more), the cross-entropy prox, "
             "evaluation, I/O, stragglers | |"]
    return lines


def markdown_problem(result, name):
    rows = [r for r in result["projections"] if r["problem"] == name and r["ranks"] in (1,) + TABLE_RANKS]
    widths, N, batch = (result["problems"][name][k] for k in ("widths", "samples", "batch"))
    what = "one Taylor iteration (one pass)" if batch is None else f"one minibatch_am epoch ({math.ceil(N / batch)} batches of {batch})"
    lines = ["", f"### {name}: {'-'.join(map(str, widths))}, N = {N:,}, {what}", "",
             "| ranks | columns per rank | root solve: s/epoch | serial share | strong eff. | weak eff. | spread solve: s/epoch "
             "| serial share | strong eff. | weak eff. | SGD 128/rank: s/epoch | SGD batch 8192: s/epoch |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, b = r["root"], r["spread"]
        sgd = f"({r['sgd_seconds']:.3g})" if r["sgd_global_batch_exceeds_data"] else f"{r['sgd_seconds']:.4g}"
        columns = f"{r['columns_per_rank']:,.0f}" if r["columns_per_rank"] >= 10 else f"{r['columns_per_rank']:.1f}"
        weak = [_pct(x["weak_efficiency"]) if r["ranks"] >= TABLE_RANKS[0] else "-" for x in (a, b)]
        lines.append(f"| {r['ranks']} | {columns} | {a['seconds']:.4g} | {_pct(a['serial_share'])} | "
                     f"{_pct(a['strong_efficiency'])} | {weak[0]} | {b['seconds']:.4g} | "
                     f"{_pct(b['serial_share'])} | {_pct(b['strong_efficiency'])} | {weak[1]} | {sgd} | "
                     f"{r['sgd_fixed_batch_seconds']:.4g} |")
    s = result["summaries"][name]

    def at(P):
        return f"{P} ranks" if P else f"not up to {RANKS[-1]} ranks"

    lines += ["", f"Strong efficiency below 50 %: root solve at {at(s['root_strong_below_50'])}, spread solve at "
              f"{at(s['spread_strong_below_50'])}; weak efficiency below 50 %: root {at(s['root_weak_below_50'])}, "
              f"spread {at(s['spread_weak_below_50'])}. ADMM's epoch shorter than SGD's (128 per rank): root solve from "
              f"{at(s['root_beats_sgd'])}, spread solve from {at(s['spread_beats_sgd'])}; than SGD's with a global batch "
              f"of 8192: root from {at(s['root_beats_sgd_fixed_batch'])}, spread from {at(s['spread_beats_sgd_fixed_batch'])}."]
    return lines


def markdown_layer_evaluation(result):
    found = result["layer_evaluation"]
    one, ten = found["1"], found["10"]
    share = 1 - one["step"] / one["iteration"]
    return ["", "## Layer layout: the pipelined evaluation (`--eval-every`)", "",
            "pdADMM, layer layout, 2 ranks, 784-500x7-10 (8 layers), 3 000 samples, 10 iterations, float32; mean "
            "seconds per iteration over the run's iterations (summary's metrics.jsonl), median of 2 runs each, "
            "the two settings alternating:", "",
            "| --eval-every | step s | iteration s (step + evaluation) | evaluation share |", "|---|---|---|---|",
            f"| 1 | {one['step']:.3f} | {one['iteration']:.3f} | {_pct(share)} |",
            f"| 10 | {ten['step']:.3f} | {ten['iteration']:.3f} | {_pct(1 - ten['step'] / ten['iteration'])} |",
            "", f"An iteration with --eval-every 10 takes {ten['iteration'] / one['iteration']:.2f} x the time of one "
            "with --eval-every 1 (the last iteration is always evaluated). What remains between the step and the "
            "iteration with --eval-every 10 is not evaluation: every iteration still computes the objective and "
            "residuals (pdadmm's local_metrics forms z - W p - b for every owned layer: one GEMM per layer, as "
            "large as the forward pass's; read from the code, not timed apart) and takes the stop decisions."]


def markdown_node_aware(result):
    rows = [r for r in result["node_aware"] if r["bytes"] >= 64 * 1024]
    lines = ["", "## Node-aware sums on one machine (`Grid(nodes=k)`, `ADMM_MPI_PSEUDO_NODES=k`)", "",
             "Grid.allsum (Reduce + Bcast of float32) with the world split into k faked nodes of consecutive ranks, "
             "against the flat collectives, same probe (`bench/collectives.py --node-aware`); time node-aware / flat:", "",
             "| ranks | faked nodes | " + " | ".join(f"{n / 2**20:g} MB" for n in sorted({r['bytes'] for r in rows})) + " |",
             "|---|---|" + "---|" * len({r["bytes"] for r in rows})]
    for P, k in sorted({(r["ranks"], r["nodes"]) for r in rows}):
        cells = [r for r in rows if r["ranks"] == P and r["nodes"] == k]
        lines.append(f"| {P} | {k} | " + " | ".join(f"{r['ratio']:.2f}" for r in cells) + " |")
    ratios = [r["ratio"] for r in rows]
    verdict = ("the split is slower at every size" if min(ratios) > 1 else "the split is faster at every size"
               if max(ratios) < 1 else "no consistent gain or loss")
    coll = result["collectives"]
    lines += ["", f"Each cell is the median of one pass of the probe on this machine ({_loads_text(coll, sweeps=False)}"
              f"; `{coll['file']}`): ratios {min(ratios):.2f} - {max(ratios):.2f}, {verdict}. "
              "On one machine the split adds a second collective and a second pass over the data, and MPICH's own "
              "Reduce already reduces inside a node first (its composition), so the option stays off unless "
              "asked for (`ADMM_MPI_NODE_AWARE=1` for real nodes, for MPIs that do not compose like MPICH). "
              "Rounding: the sum is associated as Σ_nodes(Σ_ranks of the node), which changes the last bits against "
              "the flat sum (whole numbers stay exact, other sums within 1e-13 relative: tests/test_scale.py); every "
              "rank still gets the root's bits, and distributed == serial holds to 1e-9 at 8 and 16 ranks with faked "
              "nodes."]
    return lines


def markdown(result):
    lines = markdown_header(result) + markdown_assumptions(result)
    lines += ["", "## Projections", "",
              "Serial share: the solves (the same at any P: the root's factor and solve, or with the spread solve "
              "the factor every rank repeats, and the a-update operators) over the epoch. Strong efficiency: "
              "t(1) / (P t(P)) of the same solve layout at a fixed problem; weak: t(64) / t(P) with the samples "
              "(and the minibatch_am batch) growing with P. SGD in parentheses: its global batch 128 P exceeds the "
              "data (one step per epoch); such rows do not count for the crossover."]
    for name in PROBLEMS:
        lines += markdown_problem(result, name)
    lines += markdown_node_aware(result) + markdown_layer_evaluation(result)
    return "\n".join(lines) + "\n"


def plot(result):
    def draw(axes):
        for name in PROBLEMS:
            rows = [r for r in result["projections"] if r["problem"] == name]
            axes[0].loglog([r["ranks"] for r in rows], [r["root"]["seconds"] for r in rows], label=f"{name}, ADMM")
            axes[0].loglog([r["ranks"] for r in rows], [r["sgd_seconds"] for r in rows], "--", label=f"{name}, SGD")
            axes[1].semilogx([r["ranks"] for r in rows], [r["root"]["strong_efficiency"] for r in rows], label=name)
        axes[0].set_xlabel("ranks")
        axes[0].set_ylabel("seconds per epoch (model)")
        axes[0].legend(fontsize=6)
        axes[1].axhline(0.5, color="grey", lw=0.5)
        axes[1].set_xlabel("ranks")
        axes[1].set_ylabel("strong efficiency (root solve)")
        axes[1].legend(fontsize=6)
    return save_plot("cost_model", draw, panels=2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--collectives", default=str(RESULTS / "collectives.json"))
    parser.add_argument("--measure-only", metavar="JSON", help="only measure, into JSON (for a later --reuse)")
    parser.add_argument("--reuse", metavar="JSON", help="take the measurements of an earlier run (its JSON)")
    args = parser.parse_args(argv)
    if args.measure_only:
        Path(args.measure_only).write_text(json.dumps({"measurements": measure(args.samples, args.repeats, args.iters),
                                                       "argv": sys.argv}))
        return
    result = run(args.samples, args.repeats, args.iters, args.collectives, args.reuse)
    write_result("cost_model", result)
    (RESULTS / "cost_model.md").write_text(markdown(result))
    print(markdown(result))
    print("wrote", RESULTS / "cost_model.json", plot(result))


if __name__ == "__main__":
    main()
