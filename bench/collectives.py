"""The collectives of a data-parallel step, measured over 8 B - 64 MB at 2, 3, 4 and 8 ranks, and modelled.

    python bench/collectives.py [--ranks 2,3,4,8] [--max-bytes 67108864] [--min-repeats 5] [--sweeps 7] [--seed 0]
                                [--node-aware] [--bind] [--name collectives]
    python bench/collectives.py --refit bench/results/collectives.json [--holdout OTHER.json]   (fits, measures nothing)
    (either writes bench/results/collectives.json, or with ``--name NAME`` bench/results/NAME.json)

Each rank count runs ``mpiexec -n P python bench/collectives.py --probe`` (one BLAS thread per
rank). The probe's communicator first makes 8 collectives (past MPICH's
``MPIR_CVAR_POSIX_NUM_COLLS_THRESHOLD`` = 5, from which a single-threaded MPICH would use its
shared-memory release-gather algorithms, as a training run's communicator would from its first
iteration on). An untimed pass calls every operation at every size (in ascending order) twice, leaving glibc's
malloc in the state a training run's is in after its first iterations (``timed_sweeps``); then ``--sweeps`` passes
each time every operation and size once, in an order of their own (random, ``--seed``), so that a burst of load or
a drift hits random cells rather than one size or one operation in every pass. Each cell is called twice more,
then timed ``repeats_for`` times: a repetition is a Barrier, then the operation; its time is the slowest rank's.
Per sweep the median and the minimum over the repetitions are kept; ``times`` is the median over the sweeps,
``fastest`` the minimum, ``spread`` how the sweeps scatter around that median (``sweep_spread``); the load
average is recorded per sweep, and ``sweep_conditions`` the ranks' CPUs, migrations, involuntary switches and bytes
in transparent huge pages and the hypervisor's stolen time (``scheduler_counters``). ``--bind`` pins the ranks to
cores (``mpiexec -bind-to core``); by default the scheduler places them, as in a training run.

Operations (float32 SUM, ``n`` bytes per rank): ``Reduce`` to rank 0, ``Bcast`` from rank 0,
``Allreduce``, ``Reduce_scatter_block`` (n bytes in, n/P out), ``Allgather`` (n/P in, n out: with
Reduce_scatter, the spread weight solve's pair) and ``Reduce+Bcast`` (``Grid.allsum``, the root
solve's pair). The step gathers no arrays to one rank (only small pickled objects), so Gather is
not measured. With ``--node-aware`` the probe also times ``Grid.allsum`` with faked nodes
(``Grid(nodes=k)``) against the flat one.

The model (used by ``cost_model.py``; what MPICH runs and why is the comment above ``MMAP_THRESHOLD_MAX``).
mpi4py asks for MPI_THREAD_MULTIPLE, and threaded MPICH does not select its release-gather algorithms:
every operation is one of MPIR's point-to-point algorithms (binomial, Rabenseifner, pairwise, ring),
messages of >= 8 KB copied once through Linux CMA. Per operation, from the rounds and bytes of that
algorithm on the slowest rank's critical path:

    time = rounds x latency + rounds of >= 8 KB x rendezvous + bytes copied x copy
           + bytes CMA copies out of 4 KB pages x page + bytes copied from DRAM x memory
           + bytes reduced x reduce + bytes of fresh temporaries x fault,

times P / cores when ranks outnumber the cores, plus rounds x switch. Where the bytes live decides the
per-byte cost: a temporary MPICH mallocs per call is a fresh mapping from 32 MiB on (glibc's cap on its
mmap threshold), so its pages fault in every call (``fault``); numpy's arrays of >= 32 MiB are fresh
mappings in transparent huge pages, smaller ones reuse heap pages of 4 KB, which CMA pins one by one
(``page``); the share of the ranks' working set beyond the last-level cache comes from DRAM
(``memory``, a smooth share: 0 up to the cache, towards 1 beyond). The reduction's cost per byte is
measured apart (MPI's float32 SUM on one rank, ``Op.Reduce_local``, in cache); ``page``, ``memory``
and ``fault`` are properties of the machine, one value for every operation; latency, rendezvous, copy
and switch are fitted per operation. One robust fit (soft-L1 on relative errors) over all operations,
rank counts and sizes, once to the medians of every rank count (``params``) and once to the minima
at the rank counts that fit the cores (``params_uncontended``: a node with a core per rank). Held-out
checks (``errors_holdout``): each sweep predicted from a fit to the others (beside the same comparison
with no model, the measurement's own reproducibility), each size from a fit without it, the
oversubscribed rank counts from a fit to the others, and with ``--holdout`` another run's medians.
The machine has 2 cores: 3, 4 and 8 ranks are oversubscribed and their times include the
scheduler's; it is also shared with other jobs, whose load (``os.getloadavg`` before and after each
probe) is recorded.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import namedtuple
from pathlib import Path

import numpy as np

from common import machine, mpiexec, read_result, write_result

WARMUP = 2  # calls of each operation and size before timing (the communicator is warmed up once, in probe)
NOTE = ("2 cores: 3, 4 and 8 ranks are oversubscribed and their times include the scheduler's; the machine is "
        "shared with other jobs (load_before / load_after per probe, sweep_loads per sweep), so an operation longer "
        "than a time slice may wait for a descheduled partner. Protocol (probes with 'warmup_pass'): one untimed "
        "pass over every operation and size, then 'sweep_count' sweeps, each over every cell in its own random "
        "order ('orders', 'seed'); 'times' are medians over the sweeps of the per-sweep medians, 'fastest' the minima "
        "over every repetition, 'spread' per cell the sweeps' scatter (relative MAD, range, share beyond 25 %); "
        "'params' fit the medians, 'params_uncontended' the minima at ranks <= cores; 'errors_holdout': the median "
        "fit's errors on measurements it did not see (held-out sweeps, sizes, rank counts, another run), with "
        "'sweeps_unmodelled' the sweeps' own spread; 'error_summary_64KB_up' summarises each at >= 64 KB, "
        "'sweep_spread_64KB_up' the spread.")
OPERATIONS = ("reduce", "bcast", "allreduce", "reduce_scatter", "allgather", "reduce_bcast")


# ---- the model --------------------------------------------------------------------------------
# What runs. mpi4py starts MPI at MPI_THREAD_MULTIPLE (mpi4py.rc.thread_level "multiple"; the pip MPICH 5.0.2
# grants it), and MPICH's ch4 POSIX selection (maint/tuning/coll/ch4/posix_generic.json in github.com/pmodels/mpich,
# compiled into libmpi) offers its shared-memory release-gather Bcast, Reduce and Allreduce only under
# "is_multi_threaded=no": threaded, the search finds nothing and src/mpid/ch4/shm/posix/posix_coll.h falls back to
# MPIR's point-to-point algorithms (maint/tuning/coll/mpir/generic.json, src/mpi/coll/*), on one node:
# - Bcast: binomial tree below 8 ranks; from 8 ranks binomial up to 12 KB, else scatter + allgather (recursive
#   doubling below 512 KB for a power of 2, else ring);
# - Reduce (root 0; ch4's composition alpha hands it to the node communicator): binomial up to 2 KB, else
#   Rabenseifner's recursive-halving reduce-scatter + binomial gather;
# - Allreduce: recursive doubling up to 8 B, else Rabenseifner's reduce-scatter + allgather;
# - Reduce_scatter_block: recursive halving below 512 KB in total, else pairwise exchange;
# - Allgather: recursive doubling (power of 2) below 512 KB, Bruck (other P) below 80 KB, else ring.
# Messages of >= 8 KB go single-copy through Linux CMA (MPIR_CVAR_CH4_IPC_CMA_P2P_THRESHOLD): after a handshake
# the receiver copies straight from the sender's pages (process_vm_readv); smaller ones through shared cells.
# Two effects of the C library shape the large sizes. glibc's malloc serves a chunk from its heap once its dynamic
# mmap threshold has risen above it, but that threshold never rises above 32 MiB (DEFAULT_MMAP_THRESHOLD_MAX), so
# - a temporary of >= 32 MiB, which MPIR's Rabenseifner and pairwise algorithms malloc per call, is a fresh mapping
#   every call: its pages fault in (zeroed by the kernel) every time;
# - numpy asks for transparent huge pages (madvise) on arrays >= 4 MiB, but only pages that fault in afterwards get
#   them: smaller arrays reuse heap pages already mapped at 4 KB; arrays >= 32 MiB are fresh mappings and sit in
#   2 MB pages but for their unaligned ends (/proc/self/smaps: 30 of 32 MB). A copy through 4 KB pages pays a page
#   walk and a pin per page (CMA pins the sender's pages), through 2 MB pages hardly any.
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc: 4 Mi x sizeof(long)
MALLOC_OVERHEAD = 16  # bytes glibc adds to a chunk (header, alignment)
HUGE_PAGE = 2 * 2**20
CMA_THRESHOLD = 8192
LARGE = 512 * 1024  # MPIR's switch to pairwise / ring (and Bcast's to ring from 8 ranks)
TERMS = ("latency", "rendezvous", "copy", "page", "memory", "reduce", "fault", "switch")
# seconds per: message round on the critical path; round of >= 8 KB (the CMA handshake); byte copied on the
# critical path; byte CMA copies out of 4 KB pages (pinned one by one); byte copied from DRAM (the working set's
# share beyond the cache); byte reduced; byte of a fresh temporary faulting in; round on oversubscribed cores
# (a waiting rank yields its core to the one it waits for)
SHARED = ("page", "memory", "fault")  # properties of the machine and its kernel: one value for every operation
PER_OPERATION = ("latency", "rendezvous", "copy", "switch")  # "reduce" is measured apart (reduction_seconds_per_byte)
Traffic = namedtuple("Traffic", "stages rendezvous moved small_pages reduced fresh buffers")
# on the critical path of the slowest rank: message rounds, those of >= 8 KB, bytes copied (locally and by CMA),
# bytes CMA copies out of 4 KB pages (a local memcpy pins nothing), bytes reduced, bytes of fresh temporaries
# touched; buffers: n-byte buffers a rank touches (its working set / n)


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


def fresh_mapping(nbytes):
    """Whether malloc(nbytes) maps new pages on every call: its chunk is beyond glibc's 32 MiB cap on the
    dynamic mmap threshold, so the heap never serves it and free() unmaps it."""
    return nbytes + MALLOC_OVERHEAD > MMAP_THRESHOLD_MAX


def huge_page_share(nbytes):
    """Share of a numpy array of nbytes in 2 MB pages: a fresh mapping (see fresh_mapping) loses one huge page
    to its unaligned ends on average; a smaller array sits in heap pages mapped at 4 KB before numpy's madvise."""
    return max(0.0, 1.0 - HUGE_PAGE / nbytes) if fresh_mapping(nbytes) else 0.0


def beyond_cache(working_set, cache):
    """Share of a working set that does not fit the last-level cache (0 up to the cache, towards 1 beyond)."""
    return max(0.0, 1.0 - cache / working_set) if working_set > 0 else 0.0


def _log2(P):
    return math.ceil(math.log2(P))


def _pof2(P):
    """Largest power of 2 <= P (Rabenseifner's core; the other ranks first hand their data to a partner)."""
    return 1 << (P.bit_length() - 1)


def _rounds(count, message):
    """(rounds, rounds through CMA) of ``count`` message rounds whose smallest message has ``message`` bytes."""
    return count, (count if message >= CMA_THRESHOLD else 0)


def _bcast(P, n):
    """In the user's buffer: binomial tree, or from 8 ranks above 12 KB scatter + allgather."""
    user = 1.0 - huge_page_share(n)
    if P < 8 or n <= 12288:
        rounds = _log2(P)
        return Traffic(*_rounds(rounds, n), rounds * n, rounds * n * user, 0.0, 0.0, 1)
    allgather = _log2(P) if P & (P - 1) == 0 and n < LARGE else P - 1
    moved = 2 * (P - 1) / P * n
    return Traffic(*_rounds(_log2(P) + allgather, n / P), moved, moved * user, 0.0, 0.0, 1)


def _allgather(P, n):
    """n/P bytes in, n out (user buffers): a rank copies its own block and receives the P - 1 others."""
    pow2 = P & (P - 1) == 0
    rounds = _log2(P) if (n < LARGE if pow2 else n < 81920) else P - 1
    received = (P - 1) / P * n
    return Traffic(*_rounds(rounds, n / P), n, received * (1.0 - huge_page_share(n)), 0.0, 0.0, 1 + 1 / P)


def _reduce_scatter(P, n):
    """n bytes in, n/P out. Recursive halving: input copied into a temporary, halves exchanged and reduced,
    the result copied out. Pairwise: P - 1 rounds of n/P bytes from the others' inputs into one temporary
    of n/P bytes, reduced into the output."""
    share = (P - 1) / P * n
    if n < LARGE:
        extra = n * (P != _pof2(P))
        moved = n + share + n / P + extra
        return Traffic(*_rounds(_log2(_pof2(P)) + (P != _pof2(P)), n / P), moved, share + extra, share + extra, 0.0,
                       3 + 1 / P)
    moved = n / P + share
    fresh = n / P if fresh_mapping(n / P + 1) else 0.0
    return Traffic(*_rounds(P - 1, n / P), moved, share * (1.0 - huge_page_share(n)), share, fresh, 1 + 2 / P)


def _recursive_small(P, n):
    """Reduce or Allreduce of a small message: log2 P rounds of the whole message (binomial tree or recursive
    doubling), each copied and reduced once, no temporaries of note."""
    rounds = _log2(P)
    return Traffic(rounds, 0, rounds * n, rounds * n, rounds * n, 0.0, 2)


def _reduce(P, n):
    """To root 0. Rabenseifner: each rank copies its input into a result buffer (a temporary of n bytes off the
    root), halves are exchanged into a second temporary of n bytes and reduced, the pieces gathered to the root;
    what CMA copies comes out of temporaries (4 KB pages). From 32 MiB a non-root faults in its whole result
    buffer and the received part of the other."""
    if n <= 2048:
        return _recursive_small(P, n)
    q = _pof2(P)
    extra = n * (P != q)
    share = (q - 1) / q * n
    moved = n + 2 * share + extra
    fresh = n + share + extra if fresh_mapping(n) else 0.0
    return Traffic(*_rounds(2 * _log2(q) + (P != q), n / q), moved, moved - n, share + extra, fresh, 3)


def _allreduce(P, n):
    """Rabenseifner: input copied into the user's output, reduce-scatter through a temporary of n bytes (from
    32 MiB its received part faults in), allgather in the output; CMA copies out of the users' outputs."""
    if n <= 8:
        return _recursive_small(P, n)
    q = _pof2(P)
    extra = n * (P != q)
    share = (q - 1) / q * n
    moved = n + 2 * share + 2 * extra
    fresh = share + extra if fresh_mapping(n) else 0.0
    return Traffic(*_rounds(2 * _log2(q) + 2 * (P != q), n / q), moved, (moved - n) * (1.0 - huge_page_share(n)),
                   share + extra, fresh, 3)


def structure(name, P, n):
    """The Traffic of ``name`` with n bytes per rank on P ranks of one node, as MPICH's algorithm there does it."""
    if name == "reduce_bcast":
        reduce, bcast = _reduce(P, n), _bcast(P, n)
        return Traffic(*(a + b for a, b in zip(reduce[:-1], bcast[:-1])), max(reduce.buffers, bcast.buffers))
    algorithms = {"reduce": _reduce, "bcast": _bcast, "allreduce": _allreduce,
                  "reduce_scatter": _reduce_scatter, "allgather": _allgather}
    if name not in algorithms:
        raise ValueError(name)
    return algorithms[name](P, n)


def oversubscription(P, cores):
    """Ranks beyond the cores share them: their time is taken as P / cores times longer."""
    return max(1.0, P / cores) if cores else 1.0


def model_terms(name, P, n, cores=None, cache=None):
    """Multipliers of the TERMS coefficients for ``name``, n bytes per rank, P ranks on ``cores`` cores of one node
    (None: a core per rank) whose last-level cache holds ``cache`` bytes."""
    traffic = structure(name, P, n)
    over = oversubscription(P, cores)
    dram = beyond_cache(P * traffic.buffers * n, cache or LLC)
    per_rank = {"latency": traffic.stages, "rendezvous": traffic.rendezvous, "copy": traffic.moved,
                "page": traffic.small_pages, "memory": traffic.moved * dram, "reduce": traffic.reduced,
                "fault": traffic.fresh}
    terms = {term: value * over for term, value in per_rank.items()}
    terms["switch"] = float(traffic.stages) if over > 1 else 0.0
    return terms


def model_seconds(params, name, P, n, cores=None, cache=None):
    """Modelled seconds of one collective on one node (``params[name]``: a coefficient per TERMS)."""
    coefficients = params[name]
    terms = model_terms(name, P, n, cores, cache or params.get("cache_bytes"))
    return sum(terms[t] * coefficients.get(t, 0.0) for t in TERMS)


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

    Reduce, Bcast, Allreduce: node-aware as MPICH composes them (this machine's model of MPIR's algorithms
    inside each node, with ``cache`` bytes of last-level cache per node; MPIR among the leaders over
    ``network``). Reduce_scatter and Allgather run flat over all P ranks: every rank's off-node share
    crosses its node's one NIC.
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
    nic = structure(name, P, n).stages * alpha + c * (nodes - 1) / nodes * n * beta
    return nic + ((P - 1) / P * n * gamma if name == "reduce_scatter" else 0.0)


def _relative_rows(probes, cores, key, cache):
    """Per measurement: (operation, {term: multiplier / measured seconds}): a fit of these fits relative errors."""
    rows = []
    for P, found in probes.items():
        for name in OPERATIONS:
            for n, t in zip(found["bytes"][name], found[key][name]):
                rows.append((name, {k: v / t for k, v in model_terms(name, P, n, cores, cache).items()}))
    return rows


def fit(probes, cores, key="times", ranks=None, reduce_per_byte=0.0, cache=None):
    """Every operation's coefficients, fitted to the medians (``key="times"``) or to the fastest repetitions
    (``"fastest"``: what the algorithms cost when no other job takes the cores) of every rank count (or ``ranks``).

    One fit over all operations, rank counts and sizes of the relative errors, non-negative, robust (soft-L1:
    a size that other jobs' load blew up weighs like one bad point, not like its squared error). The SHARED
    coefficients (page walks, DRAM, page faults) take one value for all operations, the others one per operation;
    ``reduce_per_byte``, measured apart (``reduction_seconds_per_byte``), fixes the reduction's (the bytes moved
    and reduced grow together and could not be told apart); a term no measurement exercises (``switch`` without
    oversubscribed ranks) is 0.
    """
    from scipy.optimize import least_squares, nnls

    cache = cache or LLC
    probes = {P: found for P, found in probes.items() if ranks is None or P in ranks}
    rows = _relative_rows(probes, cores, key, cache)
    columns = [(None, t) for t in SHARED] + [(name, t) for name in OPERATIONS for t in PER_OPERATION]
    raw = np.array([[terms[t] if op in (None, name) else 0.0 for op, t in columns] for name, terms in rows])
    target = np.array([1.0 - terms["reduce"] * reduce_per_byte for _, terms in rows])
    used = raw.max(axis=0) > 0
    scale = raw[:, used].max(axis=0)  # columns of equal size: the solver's tolerances mean the same for each
    A = raw[:, used] / scale
    start, _ = nnls(A, target)
    solution = least_squares(lambda x: A @ x - target, start, bounds=(0, np.inf), loss="soft_l1", f_scale=0.25)
    values = np.zeros(len(columns))
    values[used] = solution.x / scale
    params = {name: {"reduce": reduce_per_byte} for name in OPERATIONS}
    for (op, term), value in zip(columns, values):
        for name in (OPERATIONS if op is None else (op,)):
            params[name][term] = float(value)
    return {**params, "cache_bytes": cache, "reduce_per_byte_measured": reduce_per_byte, "shared_terms": list(SHARED)}


def _subset(probes, sizes=None, sweeps=None):
    """The probes restricted to the size indices ``sizes`` and with ``times`` the median of the ``sweeps`` given."""
    out = {}
    for P, found in probes.items():
        keep = range(len(found["sizes"])) if sizes is None else sizes
        times = {name: np.median([found["sweeps"][name][s] for s in sweeps], axis=0) if sweeps
                 else found["times"][name] for name in OPERATIONS}
        out[P] = {"sizes": [found["sizes"][i] for i in keep],
                  "bytes": {name: [found["bytes"][name][i] for i in keep] for name in OPERATIONS},
                  "times": {name: [float(times[name][i]) for i in keep] for name in OPERATIONS}}
    return out


def holdout_errors(probes, cores, reduce_per_byte, cache=None):
    """The median model's errors on measurements its fit did not see.

    ``sweeps``: fitted to the median of all sweeps but one, checked on that one, each in turn; ``sweeps_unmodelled``
    the same comparison with the median of the other sweeps in the model's place (the measurement's own
    reproducibility: no model of the medians predicts a single sweep better). ``leave_one_size_out``: fitted
    without one size (every operation and rank count), checked there, each size in turn. ``ranks_beyond_cores``:
    fitted at the rank counts that fit the cores, checked at the oversubscribed ones (their per-round switch is 0).
    """
    found = {"sweeps": [], "sweeps_unmodelled": [], "leave_one_size_out": [], "ranks_beyond_cores": []}
    count = min(len(f["sweeps"][OPERATIONS[0]]) for f in probes.values())
    for left in range(count if count > 1 else 0):
        others = [s for s in range(count) if s != left]
        params = fit(_subset(probes, sweeps=others), cores, reduce_per_byte=reduce_per_byte, cache=cache)
        found["sweeps"] += error_table(_subset(probes, sweeps=[left]), params, cores, sweep=left)
        found["sweeps_unmodelled"] += _unmodelled(probes, others, left)
    sizes = range(min(len(f["sizes"]) for f in probes.values()))
    for i in sizes:
        rest = [j for j in sizes if j != i]
        params = fit(_subset(probes, sizes=rest), cores, reduce_per_byte=reduce_per_byte, cache=cache)
        found["leave_one_size_out"] += error_table(_subset(probes, sizes=[i]), params, cores)
    inside = [P for P in probes if P <= cores]
    if inside and len(inside) < len(probes):
        params = fit(probes, cores, ranks=inside, reduce_per_byte=reduce_per_byte, cache=cache)
        found["ranks_beyond_cores"] = error_table({P: f for P, f in probes.items() if P > cores}, params, cores)
    return found


def _unmodelled(probes, others, left):
    """Rows as error_table's, the median of the ``others`` sweeps standing in for the model of sweep ``left``."""
    rows = []
    for P, found in probes.items():
        for name in OPERATIONS:
            for i, n in enumerate(found["bytes"][name]):
                t = found["sweeps"][name][left][i]
                guess = float(np.median([found["sweeps"][name][s][i] for s in others]))
                rows.append({"operation": name, "ranks": P, "bytes": n, "measured": t, "predicted": guess,
                             "error": guess / t - 1, "sweep": left})
    return rows


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
    # written, not np.empty: Bcast's root only reads ``out``, and an untouched buffer may be pages never faulted in,
    # which CMA then reads through the kernel's one zero page (no DRAM, no page walk of real pages), where a step
    # broadcasts data it has just written
    out = np.ones_like(send)
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


def sweep_orders(cells, sweeps, seed):
    """Per sweep, a random order of the ``cells`` (indices 0 .. cells - 1), each once; the same on every rank
    for one ``seed`` (every rank must call the same collective next)."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(cells).tolist() for _ in range(sweeps)]


def timed_sweeps(names, sizes, orders, measure, warm, stamp=None):
    """``warm(name, n)`` once for every operation and size in ascending order, then one sweep per order in
    ``orders`` (indices into the cells ``(name, size index)``, operations outer) with ``measure(name, n)`` ->
    (median, minimum) per cell; per sweep the load average when it starts.

    The warm-up pass leaves glibc's malloc as a training run's is after its first iterations: its dynamic mmap
    threshold has risen past every temporary and array below 32 MiB (from then on served by the heap, in pages
    already mapped), which the first timed sweep of the old protocol still saw rise (its 8 MB cells were fresh
    mappings). Per sweep the cells run in a random order, so a burst of load or a drift hits random cells, not
    one size or one operation of every sweep. Returns (medians, minima, loads, stamps): ``medians[name]`` a list
    per sweep of the per-size values in size order, as ``probe`` records them; ``stamps`` what ``stamp()`` returns
    before each sweep and after the last (none without ``stamp``)."""
    cells = [(name, i) for name in names for i in range(len(sizes))]
    for name, i in cells:
        warm(name, sizes[i])
    medians = {name: [] for name in names}
    minima = {name: [] for name in names}
    loads, stamps = [], []
    for order in orders:
        if sorted(order) != list(range(len(cells))):
            raise ValueError("an order must run every cell once")
        loads.append(os.getloadavg()[0])
        if stamp:
            stamps.append(stamp())
        found = {}
        for k in order:
            name, i = cells[k]
            found[name, i] = measure(name, sizes[i])
        for name in names:
            medians[name].append([found[name, i][0] for i in range(len(sizes))])
            minima[name].append([found[name, i][1] for i in range(len(sizes))])
    if stamp and orders:
        stamps.append(stamp())
    return medians, minima, loads, stamps


def scheduler_counters():
    """This process's CPU, migrations between CPUs and involuntary context switches (Linux /proc/self/sched), its
    bytes in transparent huge pages (/proc/self/smaps_rollup: khugepaged collapses madvised ranges, the heap's
    too, while the probe runs), and the machine's stolen time (seconds the hypervisor ran something else on this
    VM's CPUs, /proc/stat)."""
    found = {"cpu": None, "migrations": None, "involuntary": None, "steal": None, "huge_pages": None}
    try:
        found["cpu"] = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[36])
        for line in Path("/proc/self/sched").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("se.nr_migrations", "nr_involuntary_switches"):
                found["migrations" if key == "se.nr_migrations" else "involuntary"] = int(float(value))
        found["steal"] = int(Path("/proc/stat").read_text().split("\n", 1)[0].split()[8]) / os.sysconf("SC_CLK_TCK")
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("AnonHugePages:"):
                found["huge_pages"] = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return found


def sweep_conditions(stamps):
    """Per sweep, from the per-rank ``scheduler_counters`` before and after it: each rank's CPU and bytes in huge
    pages at its start, the ranks' migrations and involuntary switches during it, and the seconds stolen by the
    hypervisor (rank 0's view of the machine)."""
    rows = []
    for before, after in zip(stamps, stamps[1:]):
        def delta(key):
            return [None if a[key] is None or b[key] is None else b[key] - a[key] for a, b in zip(before, after)]

        steal = delta("steal")[0]
        rows.append({"cpus": [r["cpu"] for r in before], "huge_pages": [r.get("huge_pages") for r in before],
                     "migrations": delta("migrations"), "involuntary": delta("involuntary"), "steal_seconds": steal})
    return rows


def sweep_spread(sweeps):
    """Per size, over the sweeps' medians (``sweeps``: a list per sweep of per-size seconds): the relative median
    absolute deviation (MAD / median), the relative range ((max - min) / median) and the share of sweeps more
    than 25 % from the median."""
    values = np.asarray(sweeps, dtype=float)
    median = np.median(values, axis=0)
    deviation = np.abs(values - median)
    return {"mad": (np.median(deviation, axis=0) / median).tolist(),
            "range": ((values.max(axis=0) - values.min(axis=0)) / median).tolist(),
            "beyond_25pct": ((deviation > 0.25 * median).mean(axis=0)).tolist()}


def probe(out, max_bytes, min_repeats, node_aware, sweeps, seed=0):
    """Run under mpiexec: a warm-up pass, then ``sweeps`` passes over every operation and size, each pass in its
    own random order (``timed_sweeps``); rank 0 writes JSON.

    The passes interleave in time, so a burst of load on this shared machine hits one pass of
    a size, not all of them: the median over the passes is kept (``sweeps`` keeps each pass).
    """
    from mpi4py import MPI

    comm = MPI.COMM_WORLD.Dup()
    for _ in range(8):  # past MPIR_CVAR_POSIX_NUM_COLLS_THRESHOLD (5): the release-gather algorithms from here on
        comm.Bcast(np.zeros(1), root=0)
    load_before = os.getloadavg()
    sizes = sizes_up_to(max_bytes)
    seed = [seed, comm.Get_size()]  # each rank count its own orders
    orders = comm.bcast(sweep_orders(len(OPERATIONS) * len(sizes), sweeps, seed), root=0)  # rank 0's, for certain
    result = {"ranks": comm.Get_size(), "sizes": sizes, "sweep_count": sweeps, "min_repeats": min_repeats,
              "repeats": [repeats_for(n, min_repeats) for n in sizes], "warmup_pass": True, "seed": seed,
              "orders": orders, "timer_resolution": time.get_clock_info("perf_counter").resolution,
              "bytes": {name: [_operation(name, comm, n)[1] for n in sizes] for name in OPERATIONS}}

    def measure(name, n):
        return time_collective(comm, _operation(name, comm, n)[0], repeats_for(n, min_repeats))

    def warm(name, n):
        call = _operation(name, comm, n)[0]
        for _ in range(WARMUP):
            call()

    def stamp():
        return comm.allgather(scheduler_counters())

    started = time.perf_counter()
    result["sweeps"], result["sweep_minima"], result["sweep_loads"], stamps = timed_sweeps(
        OPERATIONS, sizes, orders, measure, warm, stamp)
    result["sweep_seconds"] = time.perf_counter() - started
    result["sweep_conditions"] = sweep_conditions(stamps)
    result["times"] = {name: np.median(result["sweeps"][name], axis=0).tolist() for name in OPERATIONS}
    result["fastest"] = {name: np.min(result["sweep_minima"][name], axis=0).tolist() for name in OPERATIONS}
    result["spread"] = {name: sweep_spread(result["sweeps"][name]) for name in OPERATIONS}
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


def run_probe(P, max_bytes, min_repeats, node_aware, sweeps, tmp, seed=0, bind=False):
    path = os.path.join(tmp, f"coll{P}.json")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [mpiexec(), "-n", str(P)] + (["-bind-to", "core"] if bind else []) + [
           sys.executable, __file__, "--probe", path, "--max-bytes", str(max_bytes),
           "--min-repeats", str(min_repeats), "--sweeps", str(sweeps), "--seed", str(seed)] + (
        ["--node-aware"] if node_aware else [])
    subprocess.run(cmd, check=True, env=env, timeout=7200, capture_output=True)
    return json.loads(Path(path).read_text())


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def error_table(probes, params, cores, key="times", sweep=None):
    """Per operation, rank count and size: measured, modelled, relative error (and the held-out ``sweep``)."""
    rows = []
    for P, found in probes.items():
        for name in OPERATIONS:
            for nbytes, t in zip(found["bytes"][name], found[key][name]):
                predicted = model_seconds(params, name, P, nbytes, cores=cores)
                row = {"operation": name, "ranks": P, "bytes": nbytes, "measured": t, "predicted": predicted,
                       "error": predicted / t - 1}
                rows.append(row if sweep is None else {**row, "sweep": sweep})
    return rows


def error_summary(rows, min_bytes=64 * 1024, target=0.25):
    """Per rank count, over the cells of >= ``min_bytes``: how many are within ``target``, the worst absolute
    error, and the cells beyond the target."""
    summary = {}
    for P in sorted({r["ranks"] for r in rows}):
        cells = [r for r in rows if r["ranks"] == P and r["bytes"] >= min_bytes]
        if not cells:
            continue
        misses = [{k: r[k] for k in ("operation", "bytes", "error", "sweep") if k in r}
                  for r in cells if abs(r["error"]) > target]
        summary[str(P)] = {"cells": len(cells), "within_target": len(cells) - len(misses),
                           "worst_abs_error": max(abs(r["error"]) for r in cells), "beyond_target": misses}
    return summary


def spread_summary(probes, min_bytes=64 * 1024):
    """Per rank count, over the cells of >= ``min_bytes``: how the sweeps' medians scatter around the cell's median
    (``sweep_spread``): the median and the worst relative MAD, and the cells where more than a quarter of the
    sweeps lie more than 25 % from the median (there the median itself is uncertain at the target's scale)."""
    summary = {}
    for P, found in sorted(probes.items()):
        cells = []
        for name in OPERATIONS:
            spread = sweep_spread(found["sweeps"][name])
            cells += [{"operation": name, "bytes": n, **{k: v[i] for k, v in spread.items()}}
                      for i, n in enumerate(found["bytes"][name]) if n >= min_bytes]
        if not cells:
            continue
        worst = max(cells, key=lambda c: c["mad"])
        summary[str(P)] = {"cells": len(cells), "sweeps": len(found["sweeps"][OPERATIONS[0]]),
                           "median_mad": float(np.median([c["mad"] for c in cells])),
                           "worst_mad": {k: worst[k] for k in ("operation", "bytes", "mad")},
                           "uncertain": [c for c in cells if c["beyond_25pct"] > 0.25]}
    return summary


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


def _refit_inputs(path):
    """(probes, cores, last-level cache, reduction seconds per byte) recorded in an earlier results file: a refit
    models the machine that measured, with the reduction cost measured then (measured now if not recorded)."""
    earlier = read_result(path)
    gamma = earlier.get("params", {}).get("reduce_per_byte_measured")
    return ({int(P): v for P, v in earlier["probes"].items()}, earlier.get("cores") or os.cpu_count(),
            earlier.get("last_level_cache_bytes") or LLC, gamma or reduction_seconds_per_byte())


def measured_by(path=None):
    """Who measured the probes: "this run", or (a refit of ``path``) the command, commit and machine of the run
    that measured them, kept through refits of refits."""
    if path is None:
        return "this run"
    earlier = read_result(path)
    origin = earlier.get("measured_by")
    return origin if isinstance(origin, dict) else {key: earlier.get(key) for key in ("command", "commit", "machine")}


def fitted_result(probes, cores, cache, gamma, holdout=None):
    """The fits, their errors in sample and held out (and on another run's medians: ``holdout``, a results file)."""
    params = fit(probes, cores, reduce_per_byte=gamma, cache=cache)
    inside = [P for P in probes if P <= cores]
    fastest = fit(probes, cores, "fastest", inside, reduce_per_byte=gamma, cache=cache)
    errors_holdout = holdout_errors(probes, cores, gamma, cache)
    if holdout:
        other = {int(P): v for P, v in read_result(holdout)["probes"].items()}
        errors_holdout["other_run"] = error_table(other, params, cores)
    errors = error_table(probes, params, cores)
    summaries = {"in_sample": error_summary(errors), **{k: error_summary(v) for k, v in errors_holdout.items()}}
    return {"cores": cores, "oversubscribed_ranks": [P for P in probes if P > cores], "note": NOTE,
            "last_level_cache_bytes": cache, "params": params, "params_uncontended": fastest, "errors": errors,
            "errors_uncontended": error_table({P: probes[P] for P in inside}, fastest, cores, "fastest"),
            "errors_holdout": errors_holdout, "holdout_file": holdout and os.path.basename(holdout),
            "error_summary_64KB_up": summaries, "sweep_spread_64KB_up": spread_summary(probes)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="2,3,4,8")
    parser.add_argument("--max-bytes", type=int, default=64 * 2**20)
    parser.add_argument("--min-repeats", type=int, default=5)
    parser.add_argument("--sweeps", type=int, default=7, help="interleaved passes over the sizes (median kept)")
    parser.add_argument("--seed", type=int, default=0, help="of the random order of the cells in each sweep")
    parser.add_argument("--bind", action="store_true", help="mpiexec -bind-to core (Hydra): ranks pinned to cores")
    parser.add_argument("--node-aware", action="store_true", help="also time Grid.allsum over faked nodes")
    parser.add_argument("--refit", metavar="JSON", help="fit an earlier results file's probes again")
    parser.add_argument("--holdout", metavar="JSON", help="also check the fit on another results file's medians")
    parser.add_argument("--name", default="collectives", help="results file: bench/results/NAME.json")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        probe(args.probe, args.max_bytes, args.min_repeats, args.node_aware, args.sweeps, args.seed)
        return
    if args.refit:
        probes, cores, cache, gamma = _refit_inputs(args.refit)
    else:
        tmp = tempfile.mkdtemp(prefix="bench-coll-")
        print("probes in", tmp, flush=True)
        probes, cores, cache = {}, os.cpu_count(), LLC
        for P in map(int, args.ranks.split(",")):
            probes[P] = run_probe(P, args.max_bytes, args.min_repeats, args.node_aware, args.sweeps, tmp, args.seed,
                                  args.bind)
            probes[P]["bound_to_cores"] = args.bind
            print(f"P={P}: load {probes[P]['load_before'][0]:.1f} -> {probes[P]['load_after'][0]:.1f}", flush=True)
            Path(tmp, "probes.json").write_text(json.dumps({"probes": probes}))
        gamma = reduction_seconds_per_byte()
    argv = [os.path.basename(a) if os.path.isabs(a) else a for a in sys.argv]  # no paths of this machine
    result = {"benchmark": "collectives", "argv": argv, "commit": git_commit(), "machine": machine(),
              "measured_by": measured_by(args.refit),
              **fitted_result(probes, cores, cache, gamma, args.holdout),
              "probes": {str(P): v for P, v in probes.items()}}
    path = write_result(args.name, result)
    print(error_markdown(result["errors"]))
    print(error_markdown(result["errors_uncontended"]))
    print(json.dumps(result["error_summary_64KB_up"], indent=1))
    print(json.dumps(result["sweep_spread_64KB_up"], indent=1))
    print("wrote", path)


if __name__ == "__main__":
    main()
