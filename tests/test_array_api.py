"""The solvers run unchanged on an array library that is not numpy (array-api-strict).

array-api-strict implements the Python array API standard and nothing else: a numpy-only call
on one of its arrays raises, and it refuses to mix with numpy arrays. Every solver trains a few
iterations on it and must give the numpy run's numbers — what the GPU backend (cupy) relies on.
The cupy test runs where cupy and a GPU exist.
"""

import dataclasses

import numpy as np
import pytest

from admm_mpi.config import TrainConfig
from admm_mpi.data import Shard
from admm_mpi.grid import Grid
from admm_mpi.train import train

from tests.helpers import blobs

xp = pytest.importorskip("array_api_strict")

CASES = {
    "taylor": dict(solver="taylor", warm_start=2),
    "dladmm": dict(solver="dladmm"),
    "pdadmm": dict(solver="pdadmm"),
    "pdadmm-8bit": dict(solver="pdadmm", quantize=8),
    "mdlam": dict(solver="mdlam"),
    "sigmoid_admm": dict(solver="sigmoid_admm"),
    "sigmoid_admm-tanh-ce": dict(solver="sigmoid_admm", activation="tanh", loss="cross_entropy"),
    "taylor-hinge-hard_tanh": dict(solver="taylor", loss="ova_hinge", activation="hard_tanh"),
    "dladmm-leaky": dict(solver="dladmm", activation="leaky_relu", loss="least_squares"),
    "minibatch_am": dict(solver="minibatch_am", batch_size=13),
    "dladmm-batches": dict(solver="dladmm", batch_size=13, batch_sweeps=2),
    "mdlam-batches": dict(solver="mdlam", batch_size=13, batch_sweeps=3),
    "sigmoid_admm-batches": dict(solver="sigmoid_admm", batch_size=13),
}


def _shard(convert):
    X, y = blobs(90, 7, 3, seed=1)
    Xt, yt = blobs(20, 7, 3, seed=2)
    return Shard(X=convert(np.ascontiguousarray(X.T)), y=y, X_test=convert(np.ascontiguousarray(Xt.T)), y_test=yt,
                 n_total=90, n_test_total=20, n_features=7, n_classes=3, name="in-memory", start=0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_solver_on_array_api_strict_equals_numpy(case):
    config = TrainConfig.from_settings(hidden=(10, 6), iters=6, dtype="float64", progress=False, **CASES[case])
    reference = train(config, Grid.serial(), out=False, shard=_shard(lambda a: a))
    strict = train(config, Grid.serial(), out=False, shard=_shard(xp.asarray))
    weights, biases = strict.model
    assert all(type(w).__module__.startswith("array_api_strict") for w in weights + biases)
    for W, W_ref in zip(weights + biases, reference.model[0] + reference.model[1]):
        W = np.from_dlpack(W)
        assert np.allclose(W, W_ref, rtol=1e-10, atol=1e-12 * max(1.0, np.abs(W_ref).max())), case
    assert strict.summary["objective"] == pytest.approx(reference.summary["objective"], rel=1e-10)
    assert strict.summary["train_accuracy"] == reference.summary["train_accuracy"]
    # per-sample state stays on the array library too (nothing silently became numpy)
    for field in dataclasses.fields(strict.state):
        value = getattr(strict.state, field.name)
        for item in value if isinstance(value, list) else [value]:
            assert not isinstance(item, np.ndarray), field.name


def test_cupy_backend_equals_numpy_on_a_gpu():
    cupy = pytest.importorskip("cupy", reason="cupy is not installed (no GPU on this machine)")
    try:
        cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"no usable GPU: {exc}")
    config = TrainConfig.from_settings(solver="taylor", hidden=(10, 6), iters=6, dtype="float64", progress=False)
    reference = train(config, Grid.serial(), out=False, shard=_shard(lambda a: a))
    gpu = train(config, Grid.serial(), out=False, shard=_shard(cupy.asarray))
    assert gpu.summary["objective"] == pytest.approx(reference.summary["objective"], rel=1e-9)


def test_gpu_device_without_cupy_is_one_clear_error(tmp_path):
    import importlib.util

    from tests.helpers import run_admm

    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("cupy is installed here")
    proc = run_admm(2, "train", "--device", "gpu", "--iters", 1, "--no-progress", "--out", tmp_path / "run",
                    timeout=60)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("admm-mpi: error:")]
    assert len(errors) == 1 and "needs cupy" in errors[0] and "Traceback" not in proc.stderr
