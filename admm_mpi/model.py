"""The network: widths, activation, loss; forward pass, prediction and model files."""

import hashlib
import json
import os
from dataclasses import dataclass

import h5py
import numpy as np

from admm_mpi import __version__
from admm_mpi.data import ENCODING_GROUP
from admm_mpi.errors import InputError
from admm_mpi.files import hdf5_file, hdf5_open_problem, indirect_storage, reserve_space, write_problem
from admm_mpi.ops.activations import ACTIVATIONS, get_activation
from admm_mpi.ops.losses import LOSSES, get_loss

# 2: a SHA-256 checksum of the spec and weights is stored (1: none; still readable, see load_model)
MODEL_FORMAT_VERSION = 2


@dataclass(frozen=True)
class ModelSpec:
    """Layer widths ``n_0 .. n_L`` (input, hidden..., outputs), activation and loss names."""

    widths: tuple
    activation: str
    loss: str
    n_classes: int

    @property
    def n_layers(self):
        return len(self.widths) - 1

    @property
    def h(self):
        return get_activation(self.activation)

    @property
    def loss_fn(self):
        return get_loss(self.loss)


def forward(spec, weights, biases, X):
    """Network output ``z_L`` for inputs ``X`` (features x samples)."""
    a = X
    h = spec.h.apply
    for layer, (W, b) in enumerate(zip(weights, biases)):
        z = W @ a + b[:, None]
        a = h(z) if layer < spec.n_layers - 1 else z
    return a


def predict(spec, weights, biases, X):
    """Class labels for inputs ``X`` (features x samples)."""
    return spec.loss_fn.predict(forward(spec, weights, biases, X))


def model_checksum(spec, weights, biases):
    """SHA-256 (hex) over the spec and every layer's ``W`` and ``b``: dtype, shape and bytes, in order."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"widths": [int(n) for n in spec.widths], "activation": spec.activation,
                              "loss": spec.loss, "n_classes": int(spec.n_classes)}, sort_keys=True).encode())
    for W, b in zip(weights, biases):
        for array in (np.ascontiguousarray(W), np.ascontiguousarray(b)):
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def save_model(path, spec, weights, biases, extra=None, data=None):
    """Write ``model.h5`` atomically: ``/layers/<l>/W``, ``/layers/<l>/b``, spec and checksum as attributes.

    ``data``: the HDF5 data file trained on; its table encoding (group ``encoding``, written by
    ``admm-mpi data convert`` from a table) is copied, so ``predict`` and ``evaluate`` can encode
    raw rows as the training rows were. A failed write (e.g. a full disk) removes the partial
    ``.tmp`` and leaves an existing file as it was.
    """
    tmp = f"{path}.tmp"
    try:
        reserve_space(tmp, sum(a.nbytes for a in (*weights, *biases)))
        with hdf5_file(tmp, "w") as f:
            f.attrs["format"] = "admm-mpi model"
            f.attrs["format_version"] = MODEL_FORMAT_VERSION
            f.attrs["admm_mpi_version"] = __version__
            f.attrs["widths"] = np.asarray(spec.widths, dtype=np.int64)
            f.attrs["activation"] = spec.activation
            f.attrs["loss"] = spec.loss
            f.attrs["n_classes"] = spec.n_classes
            f.attrs["extra"] = json.dumps(extra or {})
            f.attrs["sha256"] = model_checksum(spec, weights, biases)
            for layer, (W, b) in enumerate(zip(weights, biases)):
                group = f.create_group(f"layers/{layer}")
                group["W"] = W
                group["b"] = b
            if data is not None:
                with h5py.File(data, "r") as source:
                    if ENCODING_GROUP in source:
                        source.copy(source[ENCODING_GROUP], f, ENCODING_GROUP)
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.isfile(tmp) and not os.path.islink(tmp):  # ours, partly written
            os.remove(tmp)
        raise InputError(write_problem(path, exc)) from None


def _whole(value):
    """``value`` as an int if it is a whole number (not a bool), else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and np.isfinite(value) and float(value).is_integer():
        return int(value)
    return None


def _read_spec(f):
    """The spec from the file's attributes, or raise ValueError naming the bad one."""
    widths = np.asarray(f.attrs.get("widths", []))
    if widths.ndim != 1 or widths.size < 2 or widths.dtype.kind not in "iu" or widths.min() < 1:
        raise ValueError(f"widths attribute {widths.tolist()} is not a list of at least 2 positive integers")
    activation, loss = f.attrs.get("activation"), f.attrs.get("loss")
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r} (known: {sorted(ACTIVATIONS)})")
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r} (known: {sorted(LOSSES)})")
    n_classes = _whole(f.attrs.get("n_classes"))
    if n_classes is None or n_classes < 1:
        raise ValueError(f"n_classes attribute {f.attrs.get('n_classes')!r} is not a positive integer")
    return ModelSpec(widths=tuple(int(n) for n in widths), activation=str(activation), loss=str(loss),
                     n_classes=n_classes)


def _read_layers(f, spec):
    """Every layer's ``W`` and ``b``, or raise ValueError naming a missing or surplus one."""
    found = sorted(f["layers"].keys(), key=lambda k: (len(k), k)) if "layers" in f else []
    expected = [str(layer) for layer in range(spec.n_layers)]
    if found != expected:
        raise ValueError(f"widths {list(spec.widths)} need layers {expected}, the file has {found}")
    for layer in expected:
        if "W" not in f["layers"][layer] or "b" not in f["layers"][layer]:
            raise ValueError(f"layer {layer} has no W or no b")
    weights = [f[f"layers/{layer}/W"][...] for layer in expected]
    biases = [f[f"layers/{layer}/b"][...] for layer in expected]
    return weights, biases


def check_model(spec, weights, biases):
    """Problem with a model's arrays against its spec (shapes, dtype, finite values, classes), or None."""
    dtypes = {array.dtype for array in (*weights, *biases)}
    if len(dtypes) != 1 or next(iter(dtypes)).kind != "f":
        return f"weights must all have one floating-point dtype, found {sorted(map(str, dtypes))}"
    for layer, (W, b) in enumerate(zip(weights, biases)):
        shape_W, shape_b = (spec.widths[layer + 1], spec.widths[layer]), (spec.widths[layer + 1],)
        if W.shape != shape_W or b.shape != shape_b:
            return (f"layer {layer} has W {W.shape} and b {b.shape}, but widths {list(spec.widths)} "
                    f"give W {shape_W} and b {shape_b}")
        for name, array in (("W", W), ("b", b)):
            if not np.all(np.isfinite(array)):
                return f"layer {layer} {name} contains NaN or Inf"
    loss = get_loss(spec.loss)
    problem = loss.check_classes(spec.n_classes)
    if problem is None and spec.widths[-1] != loss.n_outputs(spec.n_classes):
        problem = (f"output width {spec.widths[-1]} does not fit {spec.n_classes} classes with loss "
                   f"{spec.loss!r} (it needs {loss.n_outputs(spec.n_classes)} outputs)")
    return problem


def load_model(path):
    """Read and verify a model file written by :func:`save_model`; returns ``(spec, weights, biases)``.

    The checksum stored at save time must match (a flipped bit anywhere in the weights or the spec
    is refused). Files of format version 1, written before checksums existed, have none: they
    still load, with every other check (shapes against the widths, finite values, classes).
    """
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != "admm-mpi model":
                raise InputError(f"{path} is not an admm-mpi model file")
            indirect = indirect_storage(f, path)
            if indirect:
                raise InputError(indirect)
            version = _whole(f.attrs.get("format_version"))
            stored = f.attrs.get("sha256")
            spec = _read_spec(f)
            weights, biases = _read_layers(f, spec)
    except FileNotFoundError:
        raise InputError(f"model file {path} does not exist") from None
    except OSError as exc:
        raise InputError(f"model file: {hdf5_open_problem(path, exc)}") from None
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError(f"model file {path} is damaged: {exc}") from None
    if stored is None and (version is None or version >= 2):
        raise InputError(f"model file {path} is damaged: format version {version} but no checksum")
    if stored is not None and stored != model_checksum(spec, weights, biases):
        raise InputError(f"model file {path} is damaged: its checksum does not match its contents "
                         f"(changed or corrupted after it was written)")
    problem = check_model(spec, weights, biases)
    if problem:
        raise InputError(f"model file {path} is damaged: {problem}")
    return spec, weights, biases


def table_predictions(path, spec, weights, biases, encoding, storage_dtype, *, labels=False, chunk=10000):
    """``(table, chunks)``: the raw table file at ``path`` (CSV, TSV, Parquet) and, per ``chunk``
    rows, ``(Encoded, predicted class indices)`` -- rows encoded with the model's stored table
    encoding (:mod:`admm_mpi.tables`), ``Encoded.rows`` their row numbers in the file.
    ``labels=True`` maps the label column to class indices too (``Encoded.y``)."""
    from admm_mpi import tables

    table = tables.open_raw_table(path, encoding)

    def chunks():
        start = 0
        for frame in table.frames(chunk):
            encoded = encoding.transform(frame, labels=labels, storage_dtype=storage_dtype,
                                         rows=np.arange(start, start + len(frame)))
            encoded.rows += start
            start += len(frame)
            X = np.ascontiguousarray(encoded.X.T, dtype=weights[0].dtype)
            yield encoded, predict(spec, weights, biases, X) if X.shape[1] else np.empty(0, np.int64)

    return table, chunks()
