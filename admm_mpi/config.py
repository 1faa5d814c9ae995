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

LAYOUTS = ("data", "layer", "hybrid")
KEEP = ("last", "best")
EVAL_TEST = ("never", "end", "every")
CHECKPOINT_STATE = ("full", "global")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved with its outputs).

    Solver hyper-parameters left at ``None`` take the chosen solver's own default (each
    solver's class lists its ``defaults``), so one file format serves every solver.
    """

    data: str = "digits"
    solver: str = "taylor"
    layout: str = "data"
    layer_groups: int = 0         # hybrid layout: layer groups (each with size/layer_groups data shards)
    hidden: tuple = (512, 512)
    activation: str = ""          # "" = the solver's default (relu; sigmoid for sigmoid_admm)
    loss: str = ""                # "" = the solver's default
    iters: int = 60
    dtype: str = "float32"       # float32 | float64 (the small factorisations are float64 either way)
    device: str = "cpu"           # cpu | gpu (cupy arrays; one GPU per rank)
    seed: int = 0
    out: str = "runs/latest"
    tol: float = 0.0
    progress: bool = True
    checkpoint_every: int = 0     # iterations between checkpoints (0: none, except on SIGTERM)
    resume: str = ""              # "auto" (the run's own latest checkpoint), a run directory or a file
    checkpoint_state: str = "full"  # full | global (weights and schedules only; per-sample state rebuilt)
    # validation, selection and evaluation
    validation_fraction: float = 0.0  # rows of each class held out of X for validation (0: none)
    early_stopping: bool = False  # stop when validation accuracy stops improving
    patience: int = 10            # evaluations without improvement before early stopping
    keep: str = "last"            # the iterate that becomes model.h5: last | best (validation accuracy)
    eval_test: str = "end"        # never | end (the kept model, once) | every (each evaluation)
    eval_every: int = 1           # iterations between evaluations (and the last iteration)
    # solver hyper-parameters (None: the solver's default)
    beta: float = None
    gamma: float = None
    ridge: float = None
    warm_start: int = None
    nu: float = None
    rho: float = None
    rho_max: float = None
    rho_growth: float = None
    rho_patience: int = None
    mu: float = None
    eps: float = None
    eps_min: float = None
    omega: float = None
    w_steps: int = None
    quantize: int = None
    batch_size: int = None
    batch_sweeps: int = None

    def solver_class(self):
        from admm_mpi.solvers import get_solver

        return get_solver(self.solver)

    def solver_params(self):
        """The solver's defaults overridden by every setting given for it."""
        defaults = self.solver_class().defaults
        return {k: (getattr(self, k) if getattr(self, k) is not None else v) for k, v in defaults.items()}

    def resolved_activation(self):
        return self.activation or self.solver_class().default_activation

    def resolved_loss(self):
        return self.loss or self.solver_class().default_loss

    def as_dict(self):
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        if self.solver in _solver_names():
            d.update(self.solver_params(), activation=self.resolved_activation(), loss=self.resolved_loss())
        return {k: v for k, v in d.items() if v is not None}


def _solver_names():
    from admm_mpi.solvers import SOLVERS

    return SOLVERS


SOLVER_FIELDS = {"beta": float, "gamma": float, "ridge": float, "warm_start": int, "nu": float, "rho": float,
                 "rho_max": float, "rho_growth": float, "rho_patience": int, "mu": float, "eps": float,
                 "eps_min": float, "omega": float, "w_steps": int, "quantize": int,
                 "batch_size": int, "batch_sweeps": int}
FIELD_TYPES = {f.name: SOLVER_FIELDS.get(f.name, type(f.default)) for f in fields(TrainConfig)}


def _whole_number(value, text_ok):
    """``value`` as an int, or None if it is not a whole number of the right kind.

    bool is not a number here (TOML ``iters = true`` is a mistake, not 1); a float is accepted only
    when it is whole (``5.0``); text only where settings arrive as text (environment, command line).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and text_ok:
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _parse_hidden(value, text_ok=True):
    """Hidden widths from a list of whole numbers or a comma-separated string."""
    if isinstance(value, (list, tuple)):
        items, text_ok = list(value), False  # TOML list items must be numbers, not text
    elif isinstance(value, str):
        items, text_ok = [s for s in value.replace(" ", "").split(",") if s], True
    else:
        items = None
    widths = None if items is None else [_whole_number(item, text_ok) for item in items]
    if widths is None or None in widths:
        raise InputError(f"hidden must be comma-separated positive integers, got {value!r}")
    return tuple(widths)


def _coerce(name, value, text_ok=True):
    """Convert a value to the field's type, strictly.

    ``text_ok``: the value may be text to parse (environment variables and command-line flags
    are text); values from a TOML file already carry a type, and it must be the field's.
    """
    kind = FIELD_TYPES[name]
    if name == "hidden":
        return _parse_hidden(value, text_ok)
    result = None
    if kind is bool:
        if isinstance(value, bool):
            result = value
        elif isinstance(value, str) and text_ok:
            result = {"1": True, "true": True, "yes": True, "on": True,
                      "0": False, "false": False, "no": False, "off": False}.get(value.strip().lower())
    elif kind is int:
        result = _whole_number(value, text_ok)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            result = float(value)
        elif isinstance(value, str) and text_ok:
            try:
                result = float(value)
            except ValueError:
                result = None
    elif isinstance(value, kind):
        result = value
    if result is None:
        where = "" if text_ok else " (a TOML value needs that type, e.g. no quotes around numbers)"
        raise InputError(f"{name} must be of type {kind.__name__}, got {value!r}{where}")
    return result


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
        merged.update({k: _coerce(k, v, text_ok=False) for k, v in read_toml(file).items()})
    merged.update({k: _coerce(k, v) for k, v in read_environment(environ).items()})
    merged.update({k: _coerce(k, v) for k, v in (cli or {}).items() if v is not None})
    config = TrainConfig(**merged)
    validate(config)
    return config


def validate(config):
    """Raise InputError naming the first bad value."""
    from admm_mpi.solvers import SOLVERS

    checks = [
        (config.solver in SOLVERS, f"unknown solver {config.solver!r}; choose from {sorted(SOLVERS)}"),
        (config.layout in LAYOUTS, f"unknown layout {config.layout!r}; choose from {list(LAYOUTS)}"),
        (not config.activation or config.activation in ACTIVATIONS,
         f"unknown activation {config.activation!r}; choose from {sorted(ACTIVATIONS)}"),
        (not config.loss or config.loss in LOSSES, f"unknown loss {config.loss!r}; choose from {sorted(LOSSES)}"),
        (config.dtype in DTYPES, f"unknown dtype {config.dtype!r}; choose from {sorted(DTYPES)}"),
        (config.device in ("cpu", "gpu"), f"unknown device {config.device!r}; choose cpu or gpu"),
        (len(config.hidden) >= 1 and all(w >= 1 for w in config.hidden),
         f"hidden must list at least one positive layer width, got {list(config.hidden)}"),
        (config.iters >= 1, f"iters must be at least 1, got {config.iters}"),
        (math.isfinite(config.validation_fraction) and 0 <= config.validation_fraction < 1,
         f"validation_fraction must lie in [0, 1), got {config.validation_fraction}"),
        (config.patience >= 1, f"patience must be at least 1, got {config.patience}"),
        (config.keep in KEEP, f"unknown keep {config.keep!r}; choose from {list(KEEP)}"),
        (config.eval_test in EVAL_TEST, f"unknown eval_test {config.eval_test!r}; choose from {list(EVAL_TEST)}"),
        (config.eval_every >= 1, f"eval_every must be at least 1, got {config.eval_every}"),
        (config.seed >= 0, f"seed must be non-negative, got {config.seed}"),
        (config.checkpoint_every >= 0, f"checkpoint_every must be non-negative, got {config.checkpoint_every}"),
        (config.checkpoint_state in CHECKPOINT_STATE,
         f"unknown checkpoint_state {config.checkpoint_state!r}; choose from {list(CHECKPOINT_STATE)}"),
        (math.isfinite(config.tol) and config.tol >= 0, f"tol must be finite and non-negative, got {config.tol}"),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(message)
    # sigmoid_admm's rho is an optional anchor (0: off); everywhere else rho is a penalty
    positive = ("beta", "gamma", "rho", "rho_max", "eps", "omega")
    non_negative = ("ridge", "mu", "eps_min", "nu")  # nu = 0: tied to rho (dladmm)
    if config.solver == "sigmoid_admm":
        positive, non_negative = tuple(n for n in positive if n != "rho"), non_negative + ("rho",)
    for name in positive:
        value = getattr(config, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise InputError(f"{name} must be positive, got {value}")
    for name in non_negative:
        value = getattr(config, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise InputError(f"{name} must be finite and non-negative, got {value}")
    if config.rho_growth is not None and not (math.isfinite(config.rho_growth) and config.rho_growth >= 1):
        raise InputError(f"rho_growth must be at least 1, got {config.rho_growth}")
    if config.quantize is not None and config.quantize != 0 and not 2 <= config.quantize <= 16:
        raise InputError(f"quantize must be 0 (off) or 2..16 bits, got {config.quantize}")
    if config.layout != "data" and config.solver != "pdadmm":
        raise InputError(f"layout {config.layout!r} needs the layer-parallel solver pdadmm, not {config.solver!r}")
    if config.layout == "hybrid" and config.layer_groups < 1:
        raise InputError("layout 'hybrid' needs --layer-groups G (at least 1)")
    if config.layout != "hybrid" and config.layer_groups:
        raise InputError(f"layer_groups applies to layout 'hybrid' only (the layout is {config.layout!r})")
    if config.batch_size is not None and config.batch_size < (1 if config.solver == "minibatch_am" else 0):
        raise InputError(f"batch_size must be at least 1 (0: full batch, where the solver has both), "
                         f"got {config.batch_size}")
    if config.batch_sweeps is not None and config.batch_sweeps < 1:
        raise InputError(f"batch_sweeps must be at least 1, got {config.batch_sweeps}")
    if config.w_steps is not None and config.w_steps < 1:
        raise InputError(f"w_steps must be at least 1, got {config.w_steps}")
    for name in ("warm_start", "rho_patience"):
        value = getattr(config, name)
        if value is not None and value < 0:
            raise InputError(f"{name} must be non-negative, got {value}")
    unused = sorted(k for k in SOLVER_FIELDS if getattr(config, k) is not None
                    and k not in SOLVERS[config.solver].defaults)
    if unused:
        raise InputError(f"solver {config.solver!r} has no setting {', '.join(unused)}; "
                         f"its settings are {sorted(SOLVERS[config.solver].defaults)}")


FIELD_HELP = {
    "data": "HDF5 data set, or 'digits' for the bundled one",
    "solver": "taylor | dladmm | pdadmm | mdlam | sigmoid_admm | minibatch_am",
    "layout": "parallel layout: data | layer (pdadmm: one layer group per rank) | hybrid (pdadmm: layer groups x data shards)",
    "layer_groups": "hybrid layout: number of layer groups G (the ranks form a G x P/G grid)",
    "hidden": "hidden layer widths",
    "activation": "relu | leaky_relu | hard_tanh | sigmoid | tanh; empty: the solver's default",
    "loss": "least_squares | cross_entropy | ova_hinge | binary_hinge; empty: the solver's default",
    "iters": "iterations",
    "dtype": "float32 | float64",
    "device": "cpu | gpu (cupy; arrays stay on the GPU, MPI buffers are staged unless the MPI is CUDA-aware)",
    "seed": "seed of the initial weights",
    "out": "output directory",
    "tol": "stop when ||z_L - W_L a_{L-1} - b_L|| <= tol * sqrt(N); 0 runs all iterations",
    "progress": "progress bar on rank 0",
    "checkpoint_every": "write a checkpoint every this many iterations (0: only on SIGTERM)",
    "resume": "continue from a checkpoint: auto (this run's own, if any), a run directory or a file",
    "checkpoint_state": "what a checkpoint holds: full (every variable: bit-exact resume) | global (weights and "
                        "schedules; a resumed full-batch solver rebuilds its per-sample state from a forward pass)",
    "validation_fraction": "fraction of each class's training rows held out for validation, drawn from the seed "
                           "(0: none; a file's X_val, y_val are used instead when present)",
    "early_stopping": "stop when validation accuracy has not improved for `patience` evaluations",
    "patience": "evaluations without a better validation accuracy before early stopping",
    "keep": "the iterate written to model.h5 and summarised: last | best (best validation accuracy)",
    "eval_test": "test split evaluated: never | end (the kept model, once) | every (at each evaluation)",
    "eval_every": "evaluate train and validation accuracy every this many iterations (and at the last)",
}


def defaults_toml():
    """A complete commented TOML file: every setting with its default (per solver for theirs)."""
    from admm_mpi.solvers import SOLVERS

    lines = ["# admm-mpi training configuration (admm-mpi train --config FILE.toml).",
             "# Precedence: these values < ADMM_MPI_<NAME> environment variables < command-line flags.", "",
             "[train]"]
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        if f.name in SOLVER_FIELDS:
            continue
        value = getattr(defaults, f.name)
        text = ("[" + ", ".join(str(v) for v in value) + "]" if isinstance(value, tuple)
                else str(value).lower() if isinstance(value, bool)
                else f'"{value}"' if isinstance(value, str) else repr(value))
        lines.append(f"# {FIELD_HELP.get(f.name, '')}")
        lines.append(f"{f.name} = {text}")
    lines += ["", "# Solver settings: give only those of the chosen solver. Defaults per solver:"]
    for name, cls in SOLVERS.items():
        lines.append(f"# {name} (loss {cls.default_loss}, activation {cls.default_activation}):")
        for key, value in cls.defaults.items():
            lines.append(f"#   {key} = {value!r}")
    return "\n".join(lines) + "\n"
