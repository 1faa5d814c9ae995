"""Array namespace, devices and the host boundary.

The maths (``ops/``, ``solvers/``, ``model.forward``) is written against the Python array API:
every function takes its namespace from its inputs (``xp = namespace(x)``), so numpy arrays run
on the CPU, cupy arrays on a GPU, and any other array-API library — the tests use
``array-api-strict``, which refuses everything outside the standard — without a change.
Only a few things have no array-API spelling and are dispatched here: the small float64
factorisations (scipy on numpy, ``xp.linalg`` elsewhere) and the hand-over to MPI and I/O
(``to_host`` / ``from_host``).
"""

import numpy as np

DTYPES = {"float32": np.float32, "float64": np.float64}


def namespace(*arrays):
    """The array-API namespace of ``arrays`` (numpy's own for numpy arrays)."""
    from array_api_compat import array_namespace

    return array_namespace(*arrays)


def is_numpy(x):
    return isinstance(x, np.ndarray)


def device_namespace(device="cpu"):
    """Array module for ``device`` (``"cpu"`` → numpy, ``"gpu"`` → cupy)."""
    if device == "cpu":
        return np
    if device == "gpu":
        try:
            import cupy
        except ImportError as exc:  # pragma: no cover - no GPU here
            raise RuntimeError("device 'gpu' needs cupy and a CUDA GPU: pip install 'admm-mpi[gpu]'") from exc
        return cupy
    raise ValueError(f"unknown device {device!r}; expected 'cpu' or 'gpu'")


def to_host(x):
    """A numpy view or copy of any backend's array (for MPI buffers, files, printing)."""
    if isinstance(x, np.ndarray):
        return x
    get = getattr(x, "get", None)  # cupy
    if callable(get):
        return get()
    return np.from_dlpack(x)


def from_host(xp, host, like=None):
    """``host`` (numpy) as an array of namespace ``xp`` (on ``like``'s device if given)."""
    if xp is np or getattr(xp, "__name__", "") == "numpy":
        return host
    device = getattr(like, "device", None) if like is not None else None
    return xp.asarray(host, device=device) if device is not None else xp.asarray(host)


def dtype_of(xp, name_or_dtype):
    """``xp``'s float dtype of the same name as a numpy dtype or a string."""
    return getattr(xp, np.dtype(name_or_dtype).name)


def scalar(x):
    """A 0-d array or number as a Python float."""
    return float(x)


def sum_all(x):
    """The sum of every element of an array, as a Python float (host-side decisions use these)."""
    return float(namespace(x).sum(x))


def dtype_name(dtype):
    """``"float32"`` for numpy's, any array-API library's float32, or the string."""
    try:
        return np.dtype(dtype).name
    except TypeError:  # another library's dtype object, e.g. array_api_strict.float32
        return str(dtype).rsplit(".", 1)[-1]
