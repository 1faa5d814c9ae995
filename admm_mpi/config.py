"""Training configuration: one frozen dataclass, checked explicitly.

Precedence: defaults < ``--config FILE.toml`` < ``ADMM_MPI_<FLAG>`` environment < command line.
Every rank resolves the same configuration from the same inputs, so every rank reaches the same
verdict on it without communicating.
"""

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field, fields

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

from admm_mpi.backend import DTYPES
from admm_mpi.errors import InputError
from admm_mpi.implementation import FACTOR_DTYPES, Implementation
from admm_mpi.ops.activations import ACTIVATIONS
from admm_mpi.ops.losses import LOSSES
from admm_mpi.solvers import DEFAULT_SOLVER, SOLVERS, SolverParams, get_solver

LAYOUTS = ("data", "layer", "hybrid")
KEEP = ("last", "best")
EVAL_TEST = ("never", "end", "every")
CHECKPOINT_STATE = ("full", "global")


def run_setting(default, help, metavar=None):
    """A field of :class:`TrainConfig`: its default and its help text, written once here and shown
    by ``admm-mpi train --help``, ``admm-mpi config --defaults`` and the configuration reference."""
    return field(default=default, metadata={"help": help, "metavar": metavar})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved with its outputs).

    The run settings are fields; the chosen solver's settings are one more field, ``params``: an
    instance of the solver's ``Params`` dataclass (``TaylorADMM.Params``), its defaults when not
    given. Files, the environment and the command line name every setting flat (``beta = 0.5``);
    :meth:`from_settings` builds a configuration the same way, with the chosen solver's own
    defaults for the run settings that it sets differently (``Solver.run_defaults``).
    """

    data: str = run_setting("digits", "HDF5 data set, or 'digits' for the bundled one", "FILE")
    solver: str = run_setting(DEFAULT_SOLVER, "", "NAME")           # help from the registry: run_help
    layout: str = run_setting("data", "", "data|layer|hybrid")      # help from the registry: run_help
    layer_groups: int = run_setting(0, "hybrid layout: number of layer groups G (the ranks form a G x P/G grid)", "G")
    # the default widths: the best mean validation accuracy of the widths compared on the public suite
    hidden: tuple = run_setting((256, 256), "hidden layer widths, comma-separated", "W1,W2,...")
    activation: str = run_setting("", "relu | leaky_relu | hard_tanh | sigmoid | tanh; empty: the solver's default",
                                  "NAME")
    loss: str = run_setting("", "least_squares | cross_entropy | ova_hinge | binary_hinge; empty: the solver's "
                                "default", "NAME")
    iters: int = run_setting(60, "iterations (epochs for the mini-batch solvers); an upper bound with early stopping",
                             "N")
    dtype: str = run_setting("float32", "float32 | float64 (the small factorisations are float64 either way)",
                             "float32|float64")
    device: str = run_setting("cpu", "cpu | gpu (cupy arrays, one GPU per rank; MPI buffers are staged through "
                                     "the host unless the MPI is CUDA-aware)", "cpu|gpu")
    seed: int = run_setting(0, "seed of the initial weights, the validation split and the batch order", "S")
    out: str = run_setting("runs/latest", "output directory", "DIR")
    tol: float = run_setting(0.0, "stop when ||z_L - W_L a_{L-1} - b_L|| <= tol * sqrt(N); 0 runs all iterations",
                             "T")
    progress: bool = run_setting(True, "progress bar on rank 0")
    # checkpoints
    checkpoint_every: int = run_setting(0, "write a checkpoint every this many iterations (0: only on SIGTERM)", "K")
    resume: str = run_setting("", "continue from a checkpoint: auto (this run's own, if any), a run directory "
                                  "or a file", "auto|RUN_DIR|FILE")
    checkpoint_state: str = run_setting("full", "what a checkpoint holds: full (every variable: bit-exact resume) | "
                                                "global (weights and schedules; a resumed full-batch solver "
                                                "rebuilds its per-sample state from a forward pass)", "full|global")
    # validation, selection and evaluation (per-solver defaults: Solver.run_defaults)
    validation_fraction: float = run_setting(
        0.1, "fraction of each class's training rows held out for validation, drawn from the seed (0: none; a "
             "file's X_val, y_val are used instead when present)", "F")
    early_stopping: bool = run_setting(
        True, "stop when validation accuracy has not improved for `patience` evaluations (without validation "
              "rows: off, unless set explicitly, which is then an error)")
    patience: int = run_setting(10, "evaluations without a better validation accuracy before early stopping", "K")
    keep: str = run_setting("best", "the iterate written to model.h5 and summarised: last | best (best validation "
                                    "accuracy; without validation rows: last, unless set explicitly, which is then "
                                    "an error)", "best|last")
    eval_test: str = run_setting("end", "test split evaluated: never | end (the kept model, once) | every (at each "
                                        "evaluation)", "never|end|every")
    eval_train: str = run_setting("end", "training rows' accuracy evaluated: never | end (the kept model, once) | "
                                         "every (at each evaluation: a forward pass over every training row)",
                                  "never|end|every")
    eval_every: int = run_setting(1, "evaluate validation accuracy (and the splits asked for at every evaluation) "
                                     "every this many iterations (and at the last)", "K")
    # implementation choices (speed, not the method: admm_mpi.implementation) and profiling
    factor_dtype: str = run_setting("auto", "dtype of the weight solves' Cholesky factorisations: auto (the working "
                                            "dtype) | float32 | float64 (a float32 factor too ill-conditioned for "
                                            "its solve is redone in float64)", "auto|float32|float64")
    spread_solve: bool = run_setting(True, "each rank solves its block of the rows of every weight solve, then an "
                                           "allgather (off: the root solves every row and broadcasts)")
    kernel_form: bool = run_setting(True, "a mini-batch narrower than a layer's input solves through the batch's "
                                          "n x n kernel matrix when that is fewer flops (off: always the k x k Gram)")
    spread_weight_step: bool = run_setting(True, "each rank takes its block of rows of the gradient weight steps "
                                                 "(the solvers with gradient weight steps; off: the root takes them)")
    profile: bool = run_setting(False, "record every rank's wall time per phase (collectives, weight solves, "
                                       "forward passes, evaluation, I/O) in summary.json, as phase_seconds")
    params: SolverParams = None   # the chosen solver's settings (None: its defaults)
    # the run settings given by a file, the environment or the command line (the rest are defaults):
    # a default that needs validation rows gives way when there are none, a setting asked for does not
    given: frozenset = field(default=frozenset(), compare=False, repr=False)

    def __post_init__(self):
        if self.params is None and self.solver in SOLVERS:
            object.__setattr__(self, "params", SOLVERS[self.solver].Params())

    @classmethod
    def from_settings(cls, **settings):
        """A configuration from flat settings, named as in a TOML file or on the command line
        (``solver=NAME, iters=5, beta=0.5``), without the environment; not validated."""
        run = {name: value for name, value in settings.items() if name in RUN_TYPES}
        solver = run.get("solver", cls.solver)
        return cls(**{**solver_run_defaults(solver), **run},
                   params=make_params(solver, {k: v for k, v in settings.items() if k not in run}),
                   given=frozenset(run))

    def solver_class(self):
        return get_solver(self.solver)

    @property
    def implementation(self):
        """The run's :class:`~admm_mpi.implementation.Implementation` (how its solves are carried out)."""
        return Implementation(self.factor_dtype, self.spread_solve, self.kernel_form, self.spread_weight_step)

    def solver_params(self):
        """The solver's settings by name (its defaults overridden by every setting given)."""
        return dataclasses.asdict(self.params)

    def resolved_activation(self):
        return self.activation or self.solver_class().default_activation

    def resolved_loss(self):
        return self.loss or self.solver_class().default_loss

    def as_dict(self):
        """The run settings, the solver's settings and the resolved activation and loss, flat."""
        d = {name: getattr(self, name) for name in RUN_TYPES}
        d["hidden"] = list(self.hidden)
        if self.solver in SOLVERS:
            d.update(self.solver_params(), activation=self.resolved_activation(), loss=self.resolved_loss())
        return d


RUN_TYPES = {f.name: type(f.default) for f in fields(TrainConfig) if f.name not in ("params", "given")}


def solver_run_defaults(solver):
    """The run settings that ``solver`` defaults differently from :class:`TrainConfig` (its
    ``run_defaults``: for example patience in its own iterations), or {} for an unknown solver."""
    overrides = dict(getattr(SOLVERS.get(solver), "run_defaults", {}))
    unknown = sorted(set(overrides) - set(RUN_TYPES))
    if unknown:
        raise TypeError(f"{solver}: run_defaults names {unknown}, which are not run settings")
    return overrides


def run_defaults(solver):
    """Every run setting's default for ``solver``: TrainConfig's, with the solver's own over them."""
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.name in RUN_TYPES}
    return {**defaults, **solver_run_defaults(solver)}
VALIDATION_SETTINGS = {"early_stopping": ("--early-stopping", True, "--no-early-stopping"),
                       "keep": ("--keep best", "best", "--keep last")}


def recorded_settings(saved, names):
    """A run's recorded settings (``as_dict()``) for every name in ``names`` and in the record.

    A record written before a setting existed ran with that setting's default for its solver, so
    the setting reads as that default, not as a difference from every later command.
    """
    solver = saved.get("solver", DEFAULT_SOLVER)
    defaults = TrainConfig.from_settings(solver=solver).as_dict() if solver in SOLVERS else {}
    return {k: saved[k] if k in saved else defaults.get(k) for k in set(saved) | set(names)}


def settings_difference(saved, current, may_change=()):
    """The names, sorted, of the settings whose recorded value (``saved``, read by
    :func:`recorded_settings`) differs from ``current``, but for those in ``may_change``."""
    saved = recorded_settings(saved, current)
    return sorted(k for k in saved if k not in may_change and saved[k] != current.get(k))


def without_validation(config):
    """The configuration to run when the data has no validation rows, or InputError.

    Early stopping and ``keep = "best"`` monitor the validation accuracy. As defaults they give
    way to no early stopping and the last iterate; given explicitly (file, environment, command
    line) they are an error, as the run could not do what was asked.
    """
    asked = [(flag, off) for name, (flag, value, off) in VALIDATION_SETTINGS.items()
             if getattr(config, name) == value and name in config.given]
    if asked:
        flag, off = asked[0]
        raise InputError(f"{flag} needs a validation split: --validation-fraction F, or X_val and y_val "
                         f"in the data file (or {off})")
    return dataclasses.replace(config, early_stopping=False, keep="last")


def param_types(params_class):
    """A solver's settings and their types (from the annotations of its ``Params``)."""
    hints = typing.get_type_hints(params_class)
    types = {f.name: hints[f.name] for f in fields(params_class)}
    clash = sorted(set(types) & set(RUN_TYPES))
    if clash:  # the flat names (file, environment, flags) would be ambiguous
        raise TypeError(f"{params_class.__name__}: {clash} are run settings, not solver settings")
    return types


def setting_types():
    """Every setting's type: the run settings, then those of every registered solver."""
    types = dict(RUN_TYPES)
    for cls in SOLVERS.values():
        for name, kind in param_types(cls.Params).items():
            types.setdefault(name, kind)
    return types


def _solver(name):
    """The registered solver ``name``, or InputError."""
    if name not in SOLVERS:
        raise InputError(f"unknown solver {name!r}; choose from {sorted(SOLVERS)}")
    return SOLVERS[name]


def _check_settings_of(solver, names):
    known = param_types(_solver(solver).Params)
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise InputError(f"solver {solver!r} has no setting {', '.join(unknown)}; its settings are {sorted(known)}")
    return known


def make_params(solver, settings):
    """The ``Params`` of ``solver`` with ``settings`` (by name) over its defaults; not validated."""
    _check_settings_of(solver, settings)
    return _solver(solver).Params(**settings)


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
        items, text_ok = value.replace(" ", "").split(","), True  # an empty item ("16,,16") is an error
    else:
        items = None
    widths = None if items is None else [_whole_number(item, text_ok) for item in items]
    if widths is None or None in widths:
        raise InputError(f"hidden must be comma-separated positive integers, got {value!r}")
    return tuple(widths)


def _coerce(name, value, kind, text_ok=True):
    """Convert a value to the setting's type ``kind``, strictly.

    ``text_ok``: the value may be text to parse (environment variables and command-line flags
    are text); values from a TOML file already carry a type, and it must be the setting's.
    """
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
    elif hasattr(kind, "coerce"):  # a setting type of its own (BatchSize)
        result = kind.coerce(value, text_ok)
    elif isinstance(value, kind):
        result = value
    if result is None:
        where = "" if text_ok else " (a TOML value needs that type, e.g. no quotes around numbers)"
        raise InputError(f"{name} must be {getattr(kind, 'describe', f'of type {kind.__name__}')}, got {value!r}{where}")
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
    if "train" in doc:  # a [train] table: every setting lives in it, nothing beside it
        if not isinstance(doc["train"], dict):
            raise InputError(f"config file {path}: 'train' must be a table ([train]), got {doc['train']!r}")
        outside = sorted(set(doc) - {"train"})
        if outside:
            raise InputError(f"config file {path}: keys {outside} lie outside the [train] table, where they "
                             "would be ignored; move them into it")
        doc = doc["train"]
    known = setting_types()
    unknown = sorted(set(doc) - set(known))
    if unknown:
        raise InputError(f"config file {path}: unknown keys {unknown}; known: {sorted(known)}")
    return doc


def read_environment(environ=None):
    """Settings from ``ADMM_MPI_<NAME>`` variables (e.g. ``ADMM_MPI_ITERS=20``)."""
    environ = os.environ if environ is None else environ
    found = {}
    for name in setting_types():
        key = f"ADMM_MPI_{name.upper()}"
        if key in environ:
            found[name] = environ[key]
    return found


def resolve(file=None, cli=None, environ=None):
    """Merge defaults, TOML file, environment and command line; validate; return TrainConfig.

    Settings are flat (``beta = 0.5``, ``ADMM_MPI_BETA``, ``--beta``): the run settings are
    converted first, then those of the chosen solver, with the types of its ``Params``.
    """
    sources = [(read_toml(file), False)] if file else []
    sources += [(read_environment(environ), True), ({k: v for k, v in (cli or {}).items() if v is not None}, True)]
    merged = {}  # name -> (value, whether it is text to parse)
    for settings, text_ok in sources:
        merged.update({name: (value, text_ok) for name, value in settings.items()})
    run = {name: _coerce(name, value, RUN_TYPES[name], text_ok)
           for name, (value, text_ok) in merged.items() if name in RUN_TYPES}
    solver = run.get("solver", TrainConfig.solver)
    given = {name: entry for name, entry in merged.items() if name not in RUN_TYPES}
    types = _check_settings_of(solver, given)
    params = {name: _coerce(name, value, types[name], text_ok) for name, (value, text_ok) in given.items()}
    config = TrainConfig(**{**solver_run_defaults(solver), **run}, params=make_params(solver, params),
                         given=frozenset(run))
    validate(config)
    return config


def _run_checks(config):
    """(condition, message) of every run setting's rule."""
    return [
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
        (config.eval_train in EVAL_TEST, f"unknown eval_train {config.eval_train!r}; choose from {list(EVAL_TEST)}"),
        (config.eval_every >= 1, f"eval_every must be at least 1, got {config.eval_every}"),
        (config.seed >= 0, f"seed must be non-negative, got {config.seed}"),
        (config.checkpoint_every >= 0, f"checkpoint_every must be non-negative, got {config.checkpoint_every}"),
        (config.checkpoint_state in CHECKPOINT_STATE,
         f"unknown checkpoint_state {config.checkpoint_state!r}; choose from {list(CHECKPOINT_STATE)}"),
        (math.isfinite(config.tol) and config.tol >= 0, f"tol must be finite and non-negative, got {config.tol}"),
        (config.factor_dtype in FACTOR_DTYPES,
         f"unknown factor_dtype {config.factor_dtype!r}; choose from {list(FACTOR_DTYPES)}"),
    ]


def validate(config):
    """Raise InputError naming the first bad value: the run settings', then the solver's own rules."""
    cls = _solver(config.solver)
    for ok, message in _run_checks(config):
        if not ok:
            raise InputError(message)
    if not isinstance(config.params, cls.Params):
        raise InputError(f"the settings of solver {config.solver!r} must be a {cls.Params.__name__}, "
                         f"not {type(config.params).__name__}")
    config.params.validate()
    if config.layout != "data" and not cls.layer_parallel:
        raise InputError(f"layout {config.layout!r} needs a layer-parallel solver "
                         f"({', '.join(layer_parallel_solvers())}), not {config.solver!r}")
    if config.layout == "hybrid" and config.layer_groups < 1:
        raise InputError("layout 'hybrid' needs --layer-groups G (at least 1)")
    if config.layout != "hybrid" and config.layer_groups:
        raise InputError(f"layer_groups applies to layout 'hybrid' only (the layout is {config.layout!r})")


def layer_parallel_solvers():
    return sorted(name for name, cls in SOLVERS.items() if cls.layer_parallel)


def run_help(name):
    """The help text of run setting ``name`` (the solver choices come from the registry)."""
    if name == "solver":
        return " | ".join(SOLVERS)
    if name == "layout":
        return (f"parallel layout: data | layer (one layer group per rank) | hybrid (layer groups x data "
                f"shards); layer and hybrid need a layer-parallel solver: {', '.join(layer_parallel_solvers())}")
    return TrainConfig.__dataclass_fields__[name].metadata.get("help", "") if name in RUN_TYPES else ""


def solver_settings():
    """Every registered solver's settings for the help texts, in order of first appearance:
    name -> (metavar, {help text: [(solver, default), ...]})."""
    found = {}
    for solver, cls in SOLVERS.items():
        param_types(cls.Params)  # no clash with a run setting
        for f in fields(cls.Params):
            metavar, meanings = found.setdefault(f.name, (f.metadata.get("metavar"), {}))
            meanings.setdefault(f.metadata.get("help", ""), []).append((solver, f.default))
    return found


def _toml_value(value):
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return f'"{value}"' if isinstance(value, str) else repr(value)


def defaults_toml():
    """A complete commented TOML file: every setting with its default (per solver for theirs)."""
    lines = ["# admm-mpi training configuration (admm-mpi train --config FILE.toml).",
             "# Precedence: these values < ADMM_MPI_<NAME> environment variables < command-line flags.", "",
             "[train]"]
    defaults = run_defaults(DEFAULT_SOLVER)
    for name in RUN_TYPES:
        lines.append(f"# {run_help(name)}")
        lines.append(f"{name} = {_toml_value(defaults[name])}")
    lines += ["", "# Solver settings: give only those of the chosen solver. Defaults per solver (and the run",
              "# settings a solver defaults differently from the values above):"]
    for name, cls in SOLVERS.items():
        lines.append(f"# {name} (loss {cls.default_loss}, activation {cls.default_activation}):")
        for setting, value in solver_run_defaults(name).items():
            lines.append(f"#   {setting} = {_toml_value(value)}  # run setting: this solver's default")
        for f in fields(cls.Params):
            lines.append(f"#   {f.name} = {_toml_value(f.default)}  # {f.metadata.get('help', '')}")
    return "\n".join(lines) + "\n"
