"""Training configuration: one frozen dataclass, checked explicitly.

Precedence: defaults < ``--config FILE.toml`` < ``ADMM_MPI_<FLAG>`` environment < command line.
Every rank resolves the same configuration from the same inputs, so every rank reaches the same
verdict on it without communicating.
"""

import dataclasses
import math
import os
from dataclasses import dataclass, fields

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

from admm_mpi.backend import DTYPES
from admm_mpi.errors import InputError
from admm_mpi.ops.activations import ACTIVATIONS
from admm_mpi.ops.losses import LOSSES

LAYOUTS = ("data",)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved with its outputs)."""

    data: str = "digits"
    solver: str = "taylor"
    layout: str = "data"
    hidden: tuple = (512, 512)
    activation: str = "relu"
    loss: str = "least_squares"
    iters: int = 60
    dtype: str = "float64"
    seed: int = 0
    out: str = "runs/latest"
    beta: float = 1.0
    gamma: float = 1.0
    ridge: float = 5e-5
    warm_start: int = 5
    tol: float = 0.0
    progress: bool = True

    def solver_params(self):
        """Keyword arguments of the solver's constructor."""
        return {"beta": self.beta, "gamma": self.gamma, "ridge": self.ridge, "warm_start": self.warm_start}

    def as_dict(self):
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d


FIELD_TYPES = {f.name: type(f.default) for f in fields(TrainConfig)}


def _parse_hidden(value):
    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [s for s in str(value).replace(" ", "").split(",") if s]
    try:
        widths = tuple(int(s) for s in items)
    except (TypeError, ValueError):
        raise InputError(f"hidden must be comma-separated positive integers, got {value!r}") from None
    return widths


def _coerce(name, value):
    """Convert a value from TOML, the environment or the command line to the field's type."""
    kind = FIELD_TYPES[name]
    if name == "hidden":
        return _parse_hidden(value)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        return kind(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be of type {kind.__name__}, got {value!r}") from None


def read_toml(path):
    """Settings from a TOML file (flat keys, or a ``[train]`` table)."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise InputError(f"config file {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"cannot read config file {path}: {exc}") from None
    doc = doc.get("train", doc)
    unknown = sorted(set(doc) - set(FIELD_TYPES))
    if unknown:
        raise InputError(f"config file {path}: unknown keys {unknown}; known: {sorted(FIELD_TYPES)}")
    return doc


def read_environment(environ=None):
    """Settings from ``ADMM_MPI_<NAME>`` variables (e.g. ``ADMM_MPI_ITERS=20``)."""
    environ = os.environ if environ is None else environ
    found = {}
    for name in FIELD_TYPES:
        key = f"ADMM_MPI_{name.upper()}"
        if key in environ:
            found[name] = environ[key]
    return found


def resolve(file=None, cli=None, environ=None):
    """Merge defaults, TOML file, environment and command line; validate; return TrainConfig."""
    merged = {}
    if file:
        merged.update(read_toml(file))
    merged.update(read_environment(environ))
    merged.update({k: v for k, v in (cli or {}).items() if v is not None})
    config = TrainConfig(**{k: _coerce(k, v) for k, v in merged.items()})
    validate(config)
    return config


def validate(config):
    """Raise InputError naming the first bad value."""
    from admm_mpi.solvers import SOLVERS

    checks = [
        (config.solver in SOLVERS, f"unknown solver {config.solver!r}; choose from {sorted(SOLVERS)}"),
        (config.layout in LAYOUTS, f"unknown layout {config.layout!r}; choose from {list(LAYOUTS)}"),
        (config.activation in ACTIVATIONS, f"unknown activation {config.activation!r}; choose from {sorted(ACTIVATIONS)}"),
        (config.loss in LOSSES, f"unknown loss {config.loss!r}; choose from {sorted(LOSSES)}"),
        (config.dtype in DTYPES, f"unknown dtype {config.dtype!r}; choose from {sorted(DTYPES)}"),
        (len(config.hidden) >= 1 and all(w >= 1 for w in config.hidden),
         f"hidden must list at least one positive layer width, got {list(config.hidden)}"),
        (config.iters >= 1, f"iters must be at least 1, got {config.iters}"),
        (config.beta > 0, f"beta must be positive, got {config.beta}"),
        (config.gamma > 0, f"gamma must be positive, got {config.gamma}"),
        (config.ridge >= 0, f"ridge must be non-negative, got {config.ridge}"),
        (config.warm_start >= 0, f"warm_start must be non-negative, got {config.warm_start}"),
        (config.tol >= 0, f"tol must be non-negative, got {config.tol}"),
        (config.seed >= 0, f"seed must be non-negative, got {config.seed}"),
    ]
    for name in ("beta", "gamma", "ridge", "tol"):
        value = getattr(config, name)
        checks.append((math.isfinite(value), f"{name} must be finite, got {value}"))
    for ok, message in checks:
        if not ok:
            raise InputError(message)
