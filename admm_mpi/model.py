"""The network: widths, activation, loss; forward pass, prediction and model files."""

import json
import os
from dataclasses import dataclass

import h5py
import numpy as np

from admm_mpi import __version__
from admm_mpi.errors import InputError
from admm_mpi.ops.activations import get_activation
from admm_mpi.ops.losses import get_loss

MODEL_FORMAT_VERSION = 1


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


def save_model(path, spec, weights, biases, extra=None):
    """Write ``model.h5`` atomically: ``/layers/<l>/W``, ``/layers/<l>/b``, spec as attributes."""
    tmp = f"{path}.tmp"
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = "admm-mpi model"
        f.attrs["format_version"] = MODEL_FORMAT_VERSION
        f.attrs["admm_mpi_version"] = __version__
        f.attrs["widths"] = np.asarray(spec.widths, dtype=np.int64)
        f.attrs["activation"] = spec.activation
        f.attrs["loss"] = spec.loss
        f.attrs["n_classes"] = spec.n_classes
        f.attrs["extra"] = json.dumps(extra or {})
        for layer, (W, b) in enumerate(zip(weights, biases)):
            group = f.create_group(f"layers/{layer}")
            group["W"] = W
            group["b"] = b
    os.replace(tmp, path)


def load_model(path):
    """Read a model file written by :func:`save_model`; returns ``(spec, weights, biases)``."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != "admm-mpi model":
                raise InputError(f"{path} is not an admm-mpi model file")
            spec = ModelSpec(
                widths=tuple(int(n) for n in f.attrs["widths"]),
                activation=str(f.attrs["activation"]),
                loss=str(f.attrs["loss"]),
                n_classes=int(f.attrs["n_classes"]),
            )
            weights = [f[f"layers/{layer}/W"][...] for layer in range(spec.n_layers)]
            biases = [f[f"layers/{layer}/b"][...] for layer in range(spec.n_layers)]
    except FileNotFoundError:
        raise InputError(f"model file {path} does not exist") from None
    except (OSError, KeyError) as exc:
        raise InputError(f"cannot read model file {path}: {exc}") from None
    return spec, weights, biases
