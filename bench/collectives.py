"""The collectives of a data-parallel step, measured over 8 B - 64 MB at 2, 3, 4 and 8 ranks, and modelled.

    python bench/collectives.py [--ranks 2,3,4,8] [--max-bytes 67108864] [--min-repeats 5] [--sweeps 3] [--node-aware]

Each rank count runs ``mpiexec -n P python bench/collectives.py --probe`` (one BLAS thread per
rank). The probe's communicator first makes 8 collectives: MPICH switches its intra-node Reduce,
Bcast and Allreduce to the shared-memory "release-gather" algorithms only after
``MPIR_CVAR_POSIX_NUM_COLLS_THRESHOLD`` = 5 collectives on a communicator, and a training run is
in that steady state from its first iteration on; then each operation and size is called twice
before it is timed. A repetition is a Barrier, then the operation; its time is the slowest
rank's. Per sweep the median and the minimum over the repetitions are kept; ``--sweeps`` passes
over all operations and sizes interleave in time, and ``times`` is the median over the passes,
``fastest`` the minimum.

Operations (float32 SUM, ``n`` bytes per rank): ``Reduce`` to rank 0, ``Bcast`` from rank 0,
``Allreduce``, ``Reduce_scatter_block`` (n bytes in, n/P out), ``Allgather`` (n/P in, n out: with
Reduce_scatter, the spread weight solve's pair) and ``Reduce+Bcast`` (``Grid.allsum``, the root
solve's pair). The step gathers no arrays to one rank (only small pickled objects), so Gather is
not measured. With ``--node-aware`` the probe also times ``Grid.allsum`` with faked nodes
(``Grid(nodes=k)``) against the flat one.

The model (below, used by ``cost_model.py``): per operation, time = stages x latency + 8 KB cells x
cell + bytes moved x copy + bytes reduced x reduce + bytes moved from DRAM x memory, with the
stages, cells and bytes of the algorithm MPICH selects (see the comment above ``structure``),
the reduce coefficient measured apart (MPI's float32 SUM on one rank, ``Op.Reduce_local``, in
cache) and the others fitted per operation to all rank counts and sizes (robust, on relative
errors), once to the
medians of every rank count (``params``) and once to the minima at the rank counts that fit the
cores (``params_uncontended``: a node with a core per rank). The machine has 2 cores:
3, 4 and 8 ranks are oversubscribed and their times include the scheduler's; it is also shared
with other jobs, whose load (``os.getloadavg`` before and after each probe) is recorded.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, mpiexec, write_result  # noqa: E402

WARMUP = 2  # calls of each operation and size before timing (the communicator is warmed up once, in probe)
NOTE = ("2 cores: 3, 4 and 8 ranks are oversubscribed and their times include the scheduler's; the machine is "
        "shared with other jobs (load_before / load_after per probe), so an operation longer than a time slice "
        "may wait for a descheduled partner: 'times' are medians over the sweeps of the per-sweep medians, "
        "'fastest' the minima over every repetition; 'params' fit the medians, 'params_uncontended' the minima at "
        "ranks <= cores.")
OPERATIONS = ("reduce", "bcast", "allreduce", "reduce_scatter", "allgather", "reduce_bcast")


# ---- the model --------------------------------------------------------------------------------
# What MPICH 4-5 (ch4) runs, from its selection files (github.com/pmodels/mpich:
# maint/tuning/coll/ch4/generic.json, ch4/posix_generic.json, mpir/generic.json) and
# doc/mpich/tuning_parameters.md, section 2.6 ("Intra-node collective algorithms", Table IV):
# - a communicator on several nodes (or one node with several ranks: "comm_hierarchy=parent")
#   reduces above 2 KB by MPIDI_Reduce_intra_composition_alpha: the shared-memory reduce of each
#   node (release-gather, Jain et al. SC18: a k-ary tree of radix MPIR_CVAR_REDUCE_INTRANODE_TREE_KVAL
#   = 4 over cells of 32 KB / 4 = 8 KB, pipelined), then the node leaders' MPIR reduce (binomial
#   up to 2 KB, else reduce-scatter + gather, Rabenseifner);
# - Bcast inside a node: release-gather, radix 64 (flat below 65 ranks): the root copies each cell
#   in, every other rank copies it out; across nodes: binomial below 12 KB, else scatter +
#   allgather (recursive doubling or ring);
# - Allreduce on one node: release-gather (reduce then bcast through the same cells);
# - Reduce_scatter (commutative): recursive halving below 512 KB in total, else pairwise
#   exchange; Allgather: recursive doubling (power-of-2 ranks, < 512 KB), Bruck (< 80 KB), else
#   ring; both point to point (through shared memory on one node).
REDUCE_RADIX, BCAST_RADIX = 4, 64
LARGE = 512 * 1024
TERMS = ("latency", "cell", "copy", "reduce", "memory")  # seconds per stage, per 8 KB cell of a shared-memory
# tree pass (release-gather pipelines its data through cells of 32 KB / 4), per byte moved, per byte reduced, per
# byte moved from DRAM
CELL = 8192
WORKING_SET = 3  # buffers of n bytes per rank an operation touches (send, receive, shared cells or temporaries)


def last_level_cache():
    """Bytes of this machine's last-level cache (Linux sysfs), 32 MB if unknown."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    sizes = []
    for index in base.glob("index*"):
        try:
            text = (index / "size").read_text().strip()
            sizes.append(int(text[:-1]) * {"K": 2**10, "M": 2**20}[text[-1]])
        except (OSError, ValueError, KeyError):
            continue
    return max(sizes, default=32 * 2**20)


LLC = last_level_cache()


def outside_cache(P, n, cache=None):
    """Fraction of the ranks' working set (P x WORKING_SET x n bytes) that does not fit the last-level cache."""
    return max(0.0, 1.0 - (cache or LLC) / (WORKING_SET * P * n)) if n else 0.0


def tree_depth(P, radix):
    """Levels below the root of a k-ary tree over P ranks."""
    depth, reach = 0, 1
    while reach < P:
        depth += 1
        reach += radix**depth
    return depth


def p2p_stages(P, n):
    """Point-to-point stages of MPIR's reduce-scatter / allgather: recursive halving or doubling
    (log2 P, one more when P is not a power of 2) below 512 KB in total, else pairwise or ring (P - 1)."""
    if n >= LARGE:
        return P - 1
    return math.ceil(math.log2(P)) + (P & (P - 1) != 0)


def structure(name, P, n):
    """(stages, bytes moved on the critical path, bytes reduced on it) of ``name`` with n bytes per rank
    on P ranks of one node, as MPICH's algorithm there does it."""
    share = (P - 1) / P
    reduce_tree = (tree_depth(P, REDUCE_RADIX), n, min(P - 1, REDUCE_RADIX) * n)  # children fill cells, parent adds them
    bcast_tree = (tree_depth(P, BCAST_RADIX), 2 * n, 0)  # root copies each cell in, the others copy it out
    if name == "reduce":
        return reduce_tree
    if name == "bcast":
        return bcast_tree
    if name in ("allreduce", "reduce_bcast"):
        return tuple(a + b for a, b in zip(reduce_tree, bcast_tree))
    if name == "reduce_scatter":
        return (p2p_stages(P, n), share * n, share * n)
    if name == "allgather":
        return (p2p_stages(P, n), share * n, 0)
    raise ValueError(name)


def oversubscription(P, cores):
    """Ranks beyond the cores share them: their time is taken as P / cores times longer."""
    return max(1.0, P / cores) if cores else 1.0


def model_terms(name, P, n, cache=None):
    """Multipliers of the TERMS coefficients: stages, cells, bytes moved, bytes reduced, bytes moved from DRAM."""
    stages, moved, reduced = structure(name, P, n)
    passes = {"reduce": 1, "bcast": 1, "allreduce": 2, "reduce_bcast": 2}.get(name, 0)  # release-gather tree passes
    return stages, passes * -(-n // CELL), moved, reduced, moved * outside_cache(P, n, cache)


def model_seconds(params, name, P, n, cores=None, cache=None):
    """Modelled seconds of one collective on one node (``params[name]``: a coefficient per TERMS)."""
    coefficients = params[name]
    terms = model_terms(name, P, n, cache or params.get("cache_bytes"))
    return sum(k * coefficients[t] for k, t in zip(terms, TERMS)) * oversubscription(P, cores)


def _leaders(name, N, n, alpha, beta, gamma):
    """MPIR's algorithm among N node leaders (one per node, one NIC each): seconds."""
    if N == 1:
        return 0.0
    log, share = math.ceil(math.log2(N)), (N - 1) / N
    if name in ("reduce", "allreduce"):
        if n <= 2048:  # binomial tree / recursive doubling
            return log * (alpha + n * beta + n * gamma)
        return 2 * log * alpha + 2 * share * n * beta + share * n * gamma  # Rabenseifner
    if name == "bcast":
        if n < 12288:
            return log * (alpha + n * beta)
        stages = 2 * log if N & (N - 1) == 0 and n < LARGE else log + N - 1  # scatter + doubling or ring allgather
        return stages * alpha + 2 * share * n * beta
    raise ValueError(name)


def cluster_seconds(params, name, P, n, per_node, network, cache=None):
    """Modelled seconds of ``name`` (n bytes per rank) on P ranks, nodes of ``per_node`` ranks on as many cores.

    Reduce, Bcast, Allreduce: node-aware as MPICH composes them (this machine's shared-memory model
    inside each node, MPIR among the leaders over ``network``). Reduce_scatter and Allgather run
    flat over all P ranks: every rank's off-node share crosses its node's one NIC.
    """
    c = min(P, per_node)
    nodes = -(-P // c)
    alpha, beta = network["alpha"], network["beta"]
    gamma = params["reduce_scatter"]["reduce"]
    inside = {op: model_seconds(params, op, c, n, cache=cache) if c > 1 else 0.0 for op in ("reduce", "bcast")}
    if name in ("reduce", "bcast"):
        return inside[name] + _leaders(name, nodes, n, alpha, beta, gamma)
    if name == "allreduce":
        return inside["reduce"] + _leaders("allreduce", nodes, n, alpha, beta, gamma) + inside["bcast"]
    if nodes == 1:
        return model_seconds(params, name, P, n, cache=cache)
    nic = p2p_stages(P, n) * alpha + c * (nodes - 1) / nodes * n * beta
    return nic + ((P - 1) / P * n * gamma if name == "reduce_scatter" else 0.0)


def fit_operation(probes, name, cores, key="times", cache=None, reduce_per_byte=None):
    """One operation's coefficients (non-negative) by a robust fit of the relative errors over every P and size:
    (coefficients, the fit's cost). Soft-L1, so the sizes that other jobs' load blew up by a time slice
    weigh like one bad point each, not like their squared error. ``reduce_per_byte``, measured apart
    (``reduction_seconds_per_byte``), fixes the reduce coefficient: with few rank counts the bytes moved
    and the bytes reduced grow together and could not be told apart."""
    from scipy.optimize import least_squares, nnls

    free = [t for t in TERMS if not (t == "reduce" and reduce_per_byte is not None)]
    rows, targets = [], []
    for P, found in probes.items():
        for n, t in zip(found["bytes"][name], found[key][name]):
            terms = dict(zip(TERMS, (k * oversubscription(P, cores) / t for k in model_terms(name, P, n, cache))))
            rows.append([terms[f] for f in free])
            targets.append(1.0 - (terms["reduce"] * reduce_per_byte if reduce_per_byte is not None else 0.0))
    A, targets = np.array(rows), np.array(targets)
    scale = A.max(axis=0)
    scale[scale == 0] = 1.0
    A = A / scale
    start, _ = nnls(A, targets)
    solution = least_squares(lambda x: A @ x - targets, start, bounds=(0, np.inf), loss="soft_l1", f_scale=0.25)
    found = dict(zip(free, map(float, solution.x / scale)))
    return {t: found.get(t, reduce_per_byte) for t in TERMS}, float(solution.cost)


def fit(probes, cores, key="times", ranks=None, reduce_per_byte=None):
    """Coefficients of every operation, fitted to the medians (``key="times"``) or to the fastest
    repetitions (``"fastest"``: what the algorithms cost when no other job takes the cores), and the
    cache the ranks effectively have (``cache_bytes``: on a shared machine other jobs hold part of the
    last-level cache), chosen among 1 MB .. the LLC for the least error."""
    best = None
    probes = {P: found for P, found in probes.items() if ranks is None or P in ranks}
    for cache in [2**k for k in range(20, LLC.bit_length()) if 2**k <= LLC]:
        fitted = {name: fit_operation(probes, name, cores, key, cache, reduce_per_byte) for name in OPERATIONS}
        error = sum(residual for _, residual in fitted.values())
        if best is None or error < best[0]:
            best = (error, cache, {name: coefficients for name, (coefficients, _) in fitted.items()})
    return {**best[2], "cache_bytes": best[1], "reduce_per_byte_measured": reduce_per_byte}


def reduction_seconds_per_byte(nbytes=2**20, repeats=21):
    """MPI's own float32 SUM (``Op.Reduce_local``) on one rank, in cache: the fastest repetition's seconds per byte."""
    from mpi4py import MPI

    a, b = np.ones(nbytes // 4, np.float32), np.ones(nbytes // 4, np.float32)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        MPI.SUM.Reduce_local(a, b)
        times.append(time.perf_counter() - t0)
    return min(times) / nbytes


def sizes_up_to(max_bytes):
    """8 B, 32 B, ... (x4) up to max_bytes, plus max_bytes itself."""
    sizes, n = [], 8
    while n < max_bytes:
        sizes.append(n)
        n *= 4
    return sizes + [max_bytes]


def repeats_for(nbytes, min_repeats):
    return int(min(200, max(min_repeats, 2**24 // nbytes)))


def _operation(name, comm, nbytes):
    """A zero-argument callable doing one ``name`` of ``nbytes`` per rank, and its exact byte count."""
    from mpi4py import MPI

    size, rank = comm.Get_size(), comm.Get_rank()
    count = max(2, nbytes // 4)
    if name in ("reduce_scatter", "allgather"):
        count = max(1, count // size) * size
    send = np.ones(count, np.float32)
    out = np.empty_like(send)
    calls = {
        "reduce": lambda: comm.Reduce(send, out if rank == 0 else None, op=MPI.SUM, root=0),
        "bcast": lambda: comm.Bcast(out, root=0),
        "allreduce": lambda: comm.Allreduce(send, out, op=MPI.SUM),
        "reduce_scatter": lambda: comm.Reduce_scatter_block(send, out[:count // size], op=MPI.SUM),
        "allgather": lambda: comm.Allgather(send[:count // size], out),
        "reduce_bcast": lambda: (comm.Reduce(send, out if rank == 0 else None, op=MPI.SUM, root=0),
                                 comm.Bcast(out, root=0)),
    }
    return calls[name], send.nbytes


def _node_aware_operation(grid, nbytes):
    send = np.ones(max(2, nbytes // 4), np.float32)
    return lambda: grid.allsum(send), send.nbytes


def time_collective(comm, call, repeats):
    """(median, minimum) over repetitions of the slowest rank's seconds (a Barrier before each)."""
    from mpi4py import MPI

    for _ in range(WARMUP):
        call()
    local = np.empty(repeats)
    for r in range(repeats):
        comm.Barrier()
        t0 = time.perf_counter()
        call()
        local[r] = time.perf_counter() - t0
    slowest = np.empty_like(local)
    comm.Allreduce(local, slowest, op=MPI.MAX)
    return float(np.median(slowest)), float(slowest.min())


def probe(out, max_bytes, min_repeats, node_aware, sweeps):
    """Run under mpiexec: ``sweeps`` passes over every operation and size; rank 0 writes JSON.

    The passes interleave in time, so a burst of load on this shared machine hits one pass of
    a size, not all of them: the median over the passes is kept (``sweeps`` keeps each pass).
    """
    from mpi4py import MPI

    comm = MPI.COMM_WORLD.Dup()
    for _ in range(8):  # past MPIR_CVAR_POSIX_NUM_COLLS_THRESHOLD (5): the release-gather algorithms from here on
        comm.Bcast(np.zeros(1), root=0)
    load_before = os.getloadavg()
    sizes = sizes_up_to(max_bytes)
    result = {"ranks": comm.Get_size(), "sizes": sizes, "sweep_count": sweeps, "min_repeats": min_repeats,
              "sweeps": {name: [] for name in OPERATIONS},
              "sweep_minima": {name: [] for name in OPERATIONS},
              "bytes": {name: [_operation(name, comm, n)[1] for n in sizes] for name in OPERATIONS}}
    for _ in range(sweeps):
        for name in OPERATIONS:
            found = [time_collective(comm, _operation(name, comm, n)[0], repeats_for(n, min_repeats)) for n in sizes]
            result["sweeps"][name].append([median for median, _ in found])
            result["sweep_minima"][name].append([least for _, least in found])
    result["times"] = {name: np.median(result["sweeps"][name], axis=0).tolist() for name in OPERATIONS}
    result["fastest"] = {name: np.min(result["sweep_minima"][name], axis=0).tolist() for name in OPERATIONS}
    if node_aware:
        result["node_aware"] = node_aware_probe(comm, sizes, min_repeats)
    result["load_before"], result["load_after"] = load_before, os.getloadavg()
    if comm.Get_rank() == 0:
        Path(out).write_text(json.dumps(result))
    comm.Free()


def node_aware_probe(comm, sizes, min_repeats):
    """Grid.allsum flat (nodes=1) and over faked nodes of 2 ranks (nodes=P/2), same sizes."""
    from admm_mpi.grid import Grid

    size = comm.Get_size()
    found = {}
    for nodes in sorted({1, 2, size // 2} & set(range(1, size // 2 + 1))):
        grid = Grid(comm, nodes=nodes)
        found[str(nodes)] = [time_collective(comm, _node_aware_operation(grid, n)[0], repeats_for(n, min_repeats))[0]
                             for n in sizes]
        grid.close()
    return found


def run_probe(P, max_bytes, min_repeats, node_aware, sweeps, tmp):
    path = os.path.join(tmp, f"coll{P}.json")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [mpiexec(), "-n", str(P), sys.executable, __file__, "--probe", path, "--max-bytes", str(max_bytes),
           "--min-repeats", str(min_repeats), "--sweeps", str(sweeps)] + (["--node-aware"] if node_aware else [])
    subprocess.run(cmd, check=True, env=env, timeout=7200, capture_output=True)
    return json.loads(Path(path).read_text())


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def error_table(probes, params, cores, key="times"):
    """Per operation, rank count and size: measured, modelled, relative error."""
    rows = []
    for P, found in probes.items():
        for name in OPERATIONS:
            for nbytes, t in zip(found["bytes"][name], found[key][name]):
                predicted = model_seconds(params, name, P, nbytes, cores=cores)
                rows.append({"operation": name, "ranks": P, "bytes": nbytes, "measured": t,
                             "predicted": predicted, "error": predicted / t - 1})
    return rows


def error_markdown(rows, ranks=None, min_bytes=0):
    """Table: per operation and rank count, the model's error (%) at each size."""
    sizes = sorted({r["bytes"] for r in rows if r["operation"] == "reduce" and r["bytes"] >= min_bytes})
    lines = ["| operation | ranks | " + " | ".join(_size_label(n) for n in sizes) + " |",
             "|---|---|" + "---|" * len(sizes)]
    for name in OPERATIONS:
        for P in sorted({r["ranks"] for r in rows}):
            if ranks and P not in ranks:
                continue
            cells = [r for r in rows if r["operation"] == name and r["ranks"] == P and r["bytes"] >= min_bytes]
            lines.append(f"| {name} | {P} | " + " | ".join(f"{100 * r['error']:+.0f}" for r in cells) + " |")
    return "\n".join(lines)


def _size_label(n):
    for unit, scale in (("MB", 2**20), ("KB", 2**10)):
        if n >= scale:
            return f"{n / scale:.0f} {unit}"
    return f"{n} B"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="2,3,4,8")
    parser.add_argument("--max-bytes", type=int, default=64 * 2**20)
    parser.add_argument("--min-repeats", type=int, default=5)
    parser.add_argument("--sweeps", type=int, default=3, help="interleaved passes over the sizes (median kept)")
    parser.add_argument("--node-aware", action="store_true", help="also time Grid.allsum over faked nodes")
    parser.add_argument("--refit", metavar="JSON", help="fit the probes of an earlier results file again")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        probe(args.probe, args.max_bytes, args.min_repeats, args.node_aware, args.sweeps)
        return
    tmp = tempfile.mkdtemp(prefix="bench-coll-")
    print("probes in", tmp, flush=True)
    cores = os.cpu_count()
    probes = {}
    if args.refit:
        probes = {int(P): v for P, v in json.loads(Path(args.refit).read_text())["probes"].items()}
    for P in [] if args.refit else map(int, args.ranks.split(",")):
        probes[P] = run_probe(P, args.max_bytes, args.min_repeats, args.node_aware, args.sweeps, tmp)
        print(f"P={P}: load {probes[P]['load_before'][0]:.1f} -> {probes[P]['load_after'][0]:.1f}", flush=True)
        Path(tmp, "probes.json").write_text(json.dumps({"probes": probes}))
    # the uncontended fit (for nodes with a core per rank) from the rank counts that fit the cores
    gamma = reduction_seconds_per_byte()
    params = fit(probes, cores, reduce_per_byte=gamma)
    fastest = fit(probes, cores, "fastest", [P for P in probes if P <= cores], reduce_per_byte=gamma)
    argv = [os.path.basename(a) if os.path.isabs(a) else a for a in sys.argv]  # no paths of this machine
    result = {"benchmark": "collectives", "argv": argv, "commit": git_commit(), "machine": machine(),
              "cores": cores, "oversubscribed_ranks": [P for P in probes if P > cores],
              "note": NOTE, "last_level_cache_bytes": LLC, "params": params, "params_uncontended": fastest,
              "errors": error_table(probes, params, cores),
              "errors_uncontended": error_table(probes, fastest, cores, "fastest"),
              "probes": {str(P): v for P, v in probes.items()}}
    write_result("collectives", result)
    print(error_markdown(result["errors"]))
    print(error_markdown(result["errors_uncontended"]))
    print("wrote", RESULTS / "collectives.json")


if __name__ == "__main__":
    main()
