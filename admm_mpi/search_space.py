"""Search spaces of ``admm-mpi tune``: ranges and choices of training settings, read from TOML.

A space names settings exactly as a configuration file does (``beta``, ``hidden``,
``batch_size``), each in ``[space]`` with either a range or choices::

    [space]
    hidden = { choices = ["64", "256,256"] }         # choices: any values the setting takes
    beta = { low = 0.01, high = 1.0, log = true }    # a range: float, or int for int settings
    batch_size = { choices = [128, 512] }
    solver = { choices = ["minibatch_am", "taylor"] }
    warm_start = { low = 1, high = 10, when = { solver = "taylor" } }   # only for these choices

A setting with ``when`` is drawn only when every named choice setting took one of the listed
values (conditionals per solver, for example); it may name only settings without a ``when``.
Every drawn value goes through the normal configuration resolution
(:func:`admm_mpi.config.resolve`), as if given on the command line; the space itself is checked
before any rank trains: unknown settings, empty ranges, log ranges through 0, a ``when`` on a
missing choice, and values the settings refuse are one error line.

Without a file, the solver's built-in space (``admm_mpi/spaces/<solver>.toml``) is used.
"""

import math
import os
from dataclasses import dataclass, field

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

from admm_mpi.config import resolve, setting_types
from admm_mpi.errors import InputError

# run settings a search may not vary: where the data and outputs are, and what defines the
# validation split the trials are compared on (drawn from the seed)
FIXED = ("data", "out", "resume", "progress", "checkpoint_every", "checkpoint_state", "validation_fraction",
         "seed", "eval_test", "eval_train", "eval_every", "device", "iters")
SPEC_KEYS = ("low", "high", "log", "step", "choices", "when")


@dataclass(frozen=True)
class Dimension:
    """One searched setting: a range (``low``, ``high``, ``log``, ``step``; int or float) or ``choices``."""

    name: str
    kind: type = float                  # int or float for a range
    low: float = None
    high: float = None
    log: bool = False
    step: float = None
    choices: tuple = None
    when: dict = field(default_factory=dict)  # setting -> allowed choices

    def active(self, drawn):
        """Whether this setting is drawn, given the values ``drawn`` so far."""
        return all(drawn.get(name) in allowed for name, allowed in self.when.items())

    def describe(self):
        if self.choices is not None:
            return f"one of {list(self.choices)}"
        scale = "log " if self.log else ""
        return f"{self.kind.__name__} in [{self.low}, {self.high}] ({scale}uniform)"


@dataclass(frozen=True)
class SearchSpace:
    dimensions: tuple
    source: str  # the file, or "built-in <solver>"

    def draw(self, suggest):
        """The settings of one trial: ``suggest(dimension)`` returns a value for each active one."""
        drawn = {}
        for dimension in self.dimensions:
            if dimension.active(drawn):
                drawn[dimension.name] = suggest(dimension)
        return drawn

    def as_dict(self):
        return {d.name: d.describe() + (f" when {d.when}" if d.when else "") for d in self.dimensions}


def builtin_path(solver):
    return os.path.join(os.path.dirname(__file__), "spaces", f"{solver}.toml")


def load_space(path, base_cli, config_file=None):
    """The space of ``path`` (None: the built-in space of the base configuration's solver), checked.

    ``base_cli`` and ``config_file`` are the settings every trial starts from (as ``resolve``
    takes them); each bound and choice is resolved over them, so a value the setting refuses is
    reported now, before any training.
    """
    base = resolve(file=config_file, cli=base_cli)
    source = path or builtin_path(base.solver)
    if path is None and not os.path.exists(source):
        raise InputError(f"no built-in search space for solver {base.solver!r}; give --space FILE")
    try:
        with open(source, "rb") as f:
            document = tomllib.load(f)
    except FileNotFoundError:
        raise InputError(f"search space {source} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"cannot read search space {source}: {exc}") from None
    label = source if path else f"built-in space of {base.solver} ({source})"
    outside = sorted(set(document) - {"space"})
    if outside or not isinstance(document.get("space"), dict) or not document["space"]:
        raise InputError(f"{label}: a search space is one [space] table of settings" +
                         (f" (unknown keys {outside})" if outside else ""))
    dimensions = tuple(_dimension(label, name, spec) for name, spec in document["space"].items())
    _check_conditions(label, dimensions)
    _check_values(label, dimensions, base, base_cli, config_file)
    return SearchSpace(dimensions, label)


def _dimension(label, name, spec):
    known = setting_types()
    if name not in known:
        raise InputError(f"{label}: unknown setting {name!r}")
    if name in FIXED:
        raise InputError(f"{label}: {name} cannot be searched (it is fixed for the whole sweep: give it on the "
                         "command line)")
    if not isinstance(spec, dict):
        raise InputError(f"{label}: {name} must be a table with low and high, or choices, got {spec!r}")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise InputError(f"{label}: {name} has unknown keys {unknown}; known: {list(SPEC_KEYS)}")
    when = _when(label, name, spec.get("when", {}))
    if "choices" in spec:
        if set(spec) & {"low", "high", "log", "step"}:
            raise InputError(f"{label}: {name} has both choices and a range")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise InputError(f"{label}: {name}: choices must be a non-empty list, got {choices!r}")
        if name == "hidden":  # widths as text, the form every search engine can store
            choices = [",".join(str(w) for w in c) if isinstance(c, list) else c for c in choices]
        bad = [c for c in choices if not isinstance(c, (bool, int, float, str))]
        if bad:
            raise InputError(f"{label}: {name}: choices must be numbers, text or booleans, got {bad[0]!r}")
        if len(set(map(repr, choices))) != len(choices):
            raise InputError(f"{label}: {name}: choices repeat a value")
        return Dimension(name, choices=tuple(choices), when=when)
    kind = known[name]
    if kind not in (int, float):
        raise InputError(f"{label}: {name} is not a number: give choices, not a range")
    if "low" not in spec or "high" not in spec:
        raise InputError(f"{label}: {name} needs low and high, or choices")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    for key, value in (("low", low), ("high", high)) + ((("step", step),) if step is not None else ()):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(f"{label}: {name}: {key} must be a finite number, got {value!r}")
        if kind is int and not float(value).is_integer():
            raise InputError(f"{label}: {name} is a whole number: {key} {value!r} is not")
    if not isinstance(log, bool):
        raise InputError(f"{label}: {name}: log must be true or false, got {log!r}")
    if low > high:
        raise InputError(f"{label}: {name}: empty range (low {low} > high {high})")
    if log and low <= 0:
        raise InputError(f"{label}: {name}: a log range must lie above 0, got low {low}")
    if step is not None and (step <= 0 or log):
        raise InputError(f"{label}: {name}: step must be positive, and not with log")
    cast = int if kind is int else float
    return Dimension(name, kind, cast(low), cast(high), log, None if step is None else cast(step), when=when)


def _when(label, name, when):
    if not isinstance(when, dict):
        raise InputError(f"{label}: {name}: when must be a table of settings and choices, got {when!r}")
    return {key: tuple(value) if isinstance(value, list) else (value,) for key, value in when.items()}


def _check_conditions(label, dimensions):
    by_name = {d.name: d for d in dimensions}
    for d in dimensions:
        for key, allowed in d.when.items():
            other = by_name.get(key)
            if other is None or other.choices is None:
                raise InputError(f"{label}: {d.name} is conditional on {key}, which is not a setting with choices "
                                 "in the space")
            if other.when:
                raise InputError(f"{label}: {d.name} is conditional on {key}, which is conditional itself")
            missing = [v for v in allowed if v not in other.choices]
            if missing:
                raise InputError(f"{label}: {d.name} is conditional on {key} = {missing[0]!r}, which is not one of "
                                 f"its choices {list(other.choices)}")


def _check_values(label, dimensions, base, base_cli, config_file):
    """Resolve every bound and choice under every solver it can meet: a refused value is an error now."""
    solver_dim = next((d for d in dimensions if d.name == "solver"), None)
    solvers = solver_dim.choices if solver_dim else (base.solver,)
    for d in dimensions:
        if d.name == "solver":
            continue
        values = d.choices if d.choices is not None else (d.low, d.high)
        for solver in solvers:
            if "solver" in d.when and solver not in d.when["solver"]:
                continue
            for value in values:
                try:
                    resolve(file=config_file, cli={**base_cli, "solver": solver, d.name: value})
                except InputError as exc:
                    raise InputError(f"{label}: {d.name} = {value!r} with solver {solver}: {exc}") from None
    if solver_dim:
        for solver in solvers:
            try:
                resolve(file=config_file, cli={**base_cli, "solver": solver})
            except InputError as exc:
                raise InputError(f"{label}: solver = {solver!r}: {exc}") from None
