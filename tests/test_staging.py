"""Host staging without a GPU: the grid's collectives and a data-parallel training step on arrays
of a library that is not numpy (array-api-strict), under real ``mpiexec``, against numpy.

On a GPU whose MPI is not CUDA-aware every buffer the grid hands to MPI goes device → host
buffer → MPI → device (``Grid._buffer``, ``Grid._like``, ``_handed_back``, ``BoundaryExchange``).
array-api-strict stands in for cupy, as heat and pylops-mpi test their GPU paths in CPU-only CI:
its arrays are not numpy arrays, and those on its second device (``device1``) refuse to become
numpy implicitly (``np.asarray`` raises, as on cupy) and to mix with arrays of another device (an
array handed back on the wrong device fails at its next use). A collective that skipped the
staging, or handed back a numpy array or an array on the wrong device, fails here.

The ranks run this module (``python -m tests.test_staging collectives|train``); each rank checks
its own results, the root prints every rank's failures, and the job exits 1 if there were any.
"""

import subprocess
import sys
import traceback

import numpy as np
import pytest

from tests.helpers import REPO, blobs, child_env, mpiexec

try:
    import array_api_strict as xp
except ImportError:  # tests/test_gpu.py uses this module's helpers without it
    xp = None
pytestmark = pytest.mark.skipif(xp is None, reason="array-api-strict is not installed (pip install -e '.[test]')")

COLLECTIVES = ("allsum", "allsum_in_place", "bcast_from_root", "bcast_from_root non-contiguous", "allgather_rows",
               "allgather_rows ranges", "sum_to_root", "allmax", "boundary exchange", "boundary exchange 8 bits")


def launch(ranks, *args, module="tests.test_staging", timeout=180, **env):
    """``mpiexec -n ranks python -m module ARGS`` for real (a hang fails by timeout)."""
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", module, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env(**env), cwd=REPO)


def checked(proc, ranks):
    """The checks every rank reported as passed (``checked NAME`` lines), by name."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line.split(" ", 2) for line in proc.stdout.splitlines() if line.startswith("rank ")]
    names = {}
    for _, rank, rest in lines:
        assert rest.startswith("checked "), rest
        names.setdefault(rest[len("checked "):], set()).add(int(rank))
    return {name for name, who in names.items() if who == set(range(ranks))}


# 3 ranks in 2 pseudo-nodes: the node-aware sums (within the node, then over the leaders) stage too
@pytest.mark.parametrize("ranks, env", [(2, {}), (3, {"ADMM_MPI_PSEUDO_NODES": "2"})], ids=["2-ranks", "3-ranks-2-nodes"])
def test_collectives_on_array_api_strict_equal_numpy_bit_for_bit(ranks, env):
    proc = launch(ranks, "collectives", **env)
    for dtype in ("float64", "float32"):
        assert {f"{name} {dtype}" for name in COLLECTIVES} <= checked(proc, ranks), proc.stdout


def test_training_steps_on_array_api_strict_at_2_ranks_equal_numpy():
    proc = launch(2, "train", timeout=300)
    assert {f"train {case}" for case in TRAIN_CASES} <= checked(proc, 2), proc.stdout


# ---- the ranks' side ---------------------------------------------------------------------------------

DEVICE = "device1"  # array-api-strict's non-default device: no implicit numpy, no mixing with CPU arrays


def _strict(a, device=DEVICE):
    return xp.asarray(np.array(a, copy=True), device=xp.Device(device))


def differs(strict, reference, like=None):
    """Why ``strict`` is not an array-api-strict array on ``like``'s device with ``reference``'s bits (None if it is)."""
    if type(strict).__module__.split(".")[0] != "array_api_strict":
        return f"came back as {type(strict).__module__}.{type(strict).__name__}"
    if like is not None and strict.device != like.device:
        return f"came back on {strict.device}, not {like.device}"
    host = np.from_dlpack(strict)
    if host.dtype != reference.dtype or host.shape != reference.shape or not np.array_equal(host, reference):
        return f"{host.dtype}{host.shape} differs from numpy's {reference.dtype}{reference.shape}"
    return None


class Checks:
    """This rank's verdicts; a failed check is recorded (not raised) so no rank leaves a collective early."""

    def __init__(self, rank):
        self.rank, self.passed, self.failures = rank, [], []

    def same(self, name, strict, reference, like=None):
        self.record(name, differs(strict, reference, like))

    def record(self, name, problem):
        if problem:
            self.failures.append(f"rank {self.rank}: {name}: {problem}")
        else:
            self.passed.append(f"rank {self.rank} checked {name}")


def _collectives(grid, checks):
    from admm_mpi.grid import ProcessGrid

    rank, size = grid.rank, grid.size
    for dtype in (np.float64, np.float32):
        tag = np.dtype(dtype).name
        rng = np.random.default_rng(rank)
        local = rng.standard_normal((5, 7)).astype(dtype)

        strict_local = _strict(local)
        checks.same(f"allsum {tag}", grid.allsum(strict_local), grid.allsum(local.copy()), like=strict_local)
        checks.same(f"allsum {tag} left its input alone", strict_local, local)

        summed = grid.sum_to_root(_strict(local))
        reference = grid.sum_to_root(local.copy())
        if grid.is_root:
            checks.same(f"sum_to_root {tag}", summed, reference)
        else:
            checks.record(f"sum_to_root {tag}", None if summed is None else "a non-root rank got a sum")

        buf = _strict(local)
        checks.same(f"allsum_in_place {tag}", grid.allsum_in_place(buf), grid.allsum_in_place(local.copy()), like=buf)

        buf = _strict(local)
        numpy_buf = local.copy()
        grid.bcast_from_root(numpy_buf)  # numpy: in place
        checks.same(f"bcast_from_root {tag}", grid.bcast_from_root(buf), numpy_buf, like=buf)
        # a non-contiguous view (the transpose) is staged through a contiguous copy and handed back
        wide = rng.standard_normal((7, 4)).astype(dtype)
        numpy_view = wide.copy().T
        grid.bcast_from_root(numpy_view)
        strict_view = _strict(wide).T
        checks.same(f"bcast_from_root non-contiguous {tag}", grid.bcast_from_root(strict_view), numpy_view,
                    like=strict_view)

        rows = np.zeros((11, 3), dtype)
        start, stop = grid.block_range(11)
        rows[start:stop] = rng.standard_normal((stop - start, 3))
        checks.same(f"allgather_rows {tag}", grid.allgather_rows(_strict(rows)), grid.allgather_rows(rows.copy()))
        ranges = [(0, 1)] + [(1 + 9 * r // (size - 1), 1 + 9 * (r + 1) // (size - 1)) for r in range(size - 1)]
        ranges[-1] = (ranges[-1][0], 11)  # uneven blocks, the first rank's one row long
        rows = np.zeros((11, 3), dtype)
        rows[ranges[rank][0]:ranges[rank][1]] = rank + 1
        checks.same(f"allgather_rows ranges {tag}", grid.allgather_rows(_strict(rows), ranges),
                    grid.allgather_rows(rows.copy(), ranges))

        small = rng.standard_normal(3).astype(dtype)
        checks.same(f"allmax {tag}", grid.allmax(_strict(small)), grid.allmax(small.copy()))

        # every rank its own layer group: a chain 0 -> 1 -> ... (forward) and back (backward)
        procs = ProcessGrid(grid, size)
        for bits, name in ((0, f"boundary exchange {tag}"), (8, f"boundary exchange 8 bits {tag}")):
            problems = []
            for to_next in (True, False):
                x = rng.standard_normal((6, 4)).astype(dtype)
                got = {}
                for kind, value in (("numpy", x.copy()), ("strict", _strict(x))):
                    exchange = procs.boundary_exchange(to_next, tag=10 + bits + to_next, bits=bits)
                    receiving = exchange.receive_from is not None
                    incoming = exchange.receive(6, value) if receiving else None
                    sending, kept = exchange.send(value) if exchange.send_to is not None else (None, value)
                    got[kind] = (kept, incoming.wait() if receiving else None)
                    if sending is not None:
                        sending.wait()
                for index, what in ((0, "kept"), (1, "received")):
                    if got["numpy"][index] is not None:
                        problem = differs(got["strict"][index], got["numpy"][index], like=_strict(x))
                        problems += [f"{what} ({'forward' if to_next else 'backward'}): {problem}"] if problem else []
            checks.record(name, "; ".join(problems))
        procs.close()


# (solver, its settings): every solver, two of them in the mini-batch mode
TRAIN_CASES = {
    "taylor": dict(solver="taylor", warm_start=1),
    "dladmm": dict(solver="dladmm"),
    "pdadmm-layers": dict(solver="pdadmm", layout="layer"),  # boundary exchanges between the 2 ranks
    "pdadmm-data": dict(solver="pdadmm", layout="data"),
    "pdadmm-8bit": dict(solver="pdadmm", quantize=8),
    "mdlam": dict(solver="mdlam"),
    "sigmoid_admm": dict(solver="sigmoid_admm"),
    "minibatch_am": dict(solver="minibatch_am", batch_size=13),
    "dladmm-batches": dict(solver="dladmm", batch_size=13, batch_sweeps=2),
}
# the arrays live on the library's default device here: several solvers allocate their work arrays
# without a device (harmless on cupy, whose current device is the rank's GPU; array-api-strict's
# device1 would refuse to mix them), so the training check is about the collectives, not placement
TRAIN_DEVICE = "CPU_DEVICE"


def _shard(grid, convert):
    from admm_mpi.data import Shard

    X, y = blobs(90, 7, 3, seed=1)
    Xt, yt = blobs(20, 7, 3, seed=2)
    start, stop = grid.block_range(90)
    t0, t1 = grid.block_range(20)
    return Shard(X=convert(np.ascontiguousarray(X[start:stop].T)), y=y[start:stop],
                 X_test=convert(np.ascontiguousarray(Xt[t0:t1].T)), y_test=yt[t0:t1],
                 n_total=90, n_test_total=20, n_features=7, n_classes=3, name="in-memory", start=start)


def model_problems(result, reference, library, bound=1e-10):
    """Why the trained ``result`` (arrays of ``library``) is not ``reference`` (numpy) within ``bound``."""
    from admm_mpi.backend import to_host

    problems = []
    # the layer layout assembles the model on the root only, (None, None) elsewhere
    if (result.model[0] is None) != (reference.model[0] is None):
        problems.append("one run has a model on this rank, the other not")
    models = zip(*result.model, *reference.model) if result.model[0] and reference.model[0] else ()
    for layer, (W, b, W_ref, b_ref) in enumerate(models):
        if {type(W).__module__.split(".")[0], type(b).__module__.split(".")[0]} != {library}:
            problems.append(f"layer {layer} came back as {type(W).__module__}, not {library}")
            continue
        # [W | b] of a layer as one: some biases are zero up to rounding (1e-15), so alone their
        # relative error says nothing
        Wb = np.concatenate([to_host(W), to_host(b)[:, None]], axis=1)
        Wb_ref = np.concatenate([W_ref, b_ref[:, None]], axis=1)
        rel = np.linalg.norm(Wb - Wb_ref) / np.linalg.norm(Wb_ref)
        if not rel <= bound:
            problems.append(f"layer {layer}: [W | b] differs from numpy's by {rel:.2e} (relative)")
    if not result.summary["objective"] == pytest.approx(reference.summary["objective"], rel=bound):
        problems.append(f"objective {result.summary['objective']!r} != numpy's {reference.summary['objective']!r}")
    return problems


def _train(grid, checks):
    from admm_mpi.config import TrainConfig
    from admm_mpi.train import process_grid, train

    for case, settings in TRAIN_CASES.items():
        config = TrainConfig.from_settings(hidden=(10, 6), iters=2, dtype="float64", progress=False,
                                           validation_fraction=0.0, early_stopping=False, keep="last", **settings)
        part = process_grid(config, grid).data  # the ranks that split the samples (one: the layer layout)
        reference = train(config, grid, out=False, shard=_shard(part, lambda a: a))
        strict = train(config, grid, out=False, shard=_shard(part, lambda a: _strict(a, TRAIN_DEVICE)))
        checks.record(f"train {case}", "; ".join(model_problems(strict, reference, "array_api_strict")))


def run_checks(check, *args):
    """(on every rank) ``check(grid, checks, *args)``; the root prints every rank's verdicts. Exit status."""
    from admm_mpi.grid import Grid

    grid = Grid()
    checks = Checks(grid.rank)
    try:
        check(grid, checks, *args)
    except Exception:  # a rank that fails inside a collective would leave the others waiting: end the job
        traceback.print_exc()
        grid.abort(1)
    # the root prints every rank's verdicts (ranks printing at once would interleave their lines)
    verdicts = grid.gather_to_root((checks.passed, checks.failures))
    if grid.is_root:
        print("\n".join(line for passed, _ in verdicts for line in passed), flush=True)
        print("\n".join("FAILED " + line for _, failures in verdicts for line in failures), flush=True)
    bad = grid.bcast_decision(any(failures for _, failures in verdicts) if grid.is_root else None)
    grid.close()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(run_checks({"collectives": _collectives, "train": _train}[sys.argv[1]]))
