"""Array namespace and dtype policy.

Solvers take ``xp`` from here instead of importing numpy directly, so a GPU run swaps numpy for
cupy without touching the maths. Only numpy is exercised on this project's machines.
"""

import numpy as np

DTYPES = {"float32": np.float32, "float64": np.float64}


def array_namespace(device="cpu"):
    """Return the array module for ``device`` (``"cpu"`` → numpy, ``"gpu"`` → cupy)."""
    if device == "cpu":
        return np
    if device == "gpu":
        try:
            import cupy
        except ImportError as exc:  # pragma: no cover - no GPU here
            raise RuntimeError("device 'gpu' needs cupy: pip install 'admm-mpi[gpu]'") from exc
        return cupy
    raise ValueError(f"unknown device {device!r}; expected 'cpu' or 'gpu'")


def to_numpy(x):
    """Host copy of an array from any backend (for I/O and MPI buffers)."""
    get = getattr(x, "get", None)
    return get() if callable(get) else np.asarray(x)
