"""The contract between a solver and the training loop.

A solver is one class deriving from :class:`Solver`. It declares its name, its settings (one
frozen :class:`SolverParams` dataclass, ``Params``: defaults, types, help and validation), its
default loss and activation, and whether it runs on a layer grid; the loop calls only the hooks
below, so nothing in ``train.py`` names a solver or probes for a method. The registry
(:func:`register`) makes a new solver reachable from ``admm-mpi train --solver NAME``, and its
settings from the configuration file, the ``ADMM_MPI_<NAME>`` environment and ``--name`` flags.
The solver is built as ``cls(spec, grid, n_total, **settings)``: :class:`Solver`'s constructor
makes its ``Params`` from the settings (defaults for those not given) and sets each as the
attribute of its name, so a solver never lists its settings again; it derives what it needs from
them in ``setup()``.

Hooks, in the order the loop uses them:

- ``init_state(X, Y, rng)``: the state (a dataclass with ``sample_fields``: the per-sample entries
  held as this rank's columns; every other field is global and identical on every rank; a field
  marked ``metadata={BATCH_STATE: True}`` holds another solver's state for one mini-batch, whose
  global fields count as this state's and whose per-sample fields are not checkpointed);
- ``step(state, Y, iteration)``: one iteration (for the mini-batch solvers one epoch); returns
  ``INTERRUPTED`` when a stop request ended it between two mini-batches, else None;
- ``fresh_codes(state, X)``: the per-sample variables of the columns ``X`` from a forward pass
  (mini-batch mode, and resuming from a ``global`` checkpoint);
- ``local_metrics(state, Y)``: this rank's sums (``objective``, ``residual_sq``), summed over ranks;
- ``end_of_iteration(state, metrics)``: schedules from the global metrics;
- ``evaluated(state)``: the network that is scored, selected and saved (``.weights``, ``.biases``);
- ``outputs(model, X)``: network outputs for this rank's columns ``X`` (evaluation);
- ``full_model(model)``: every layer's ``(weights, biases)`` on the root (the saved model), from
  the ``evaluated`` network that was kept;
- ``owns(name, index, per_sample)`` / ``needs(name, index)``: which entries of the state this rank
  writes to a checkpoint, and which it reads back.
"""

import copy
import math
from dataclasses import dataclass, field, fields
from typing import ClassVar

from admm_mpi.errors import InputError
from admm_mpi.model import forward

# dataclass field metadata of a state field that holds another solver's state for one mini-batch
# (the mini-batch mode): checkpoints save that state's global fields, not its per-sample ones
BATCH_STATE = "batch_state"

SOLVERS = {}

# The run defaults of the full-batch solvers (their ``run_defaults``): run every iteration and keep
# the last iterate, validation still reported. Chosen per solver on rows that no run saw
# (bench/solver_defaults.py): their iterations are cheap and noisy on a small validation split,
# where the best-scoring iterate is often a lucky one and early stopping ends a run that is still
# improving.
FULL_BATCH_RUN_DEFAULTS = {"early_stopping": False, "keep": "last"}


def setting(default, help, metavar=None):
    """A field of a solver's ``Params``: its default, its help text (``--help``, ``config
    --defaults``) and optionally the flag's metavar."""
    return field(default=default, metadata={"help": help, "metavar": metavar})


@dataclass(frozen=True)
class SolverParams:
    """Base of every solver's settings: a frozen dataclass whose fields are the settings."""

    def validate(self):
        """Raise InputError naming the first bad setting (nothing to check here)."""


def check_positive(params, *names):
    for name in names:
        value = getattr(params, name)
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"{name} must be positive, got {value}")


def check_non_negative(params, *names):
    for name in names:
        value = getattr(params, name)
        if not (math.isfinite(value) and value >= 0):
            raise InputError(f"{name} must be finite and non-negative, got {value}")


def check_at_least(params, minimum, *names):
    for name in names:
        value = getattr(params, name)
        if not (math.isfinite(value) and value >= minimum):
            raise InputError(f"{name} must be at least {minimum}, got {value}")


def register(cls):
    """Make ``cls`` (a :class:`Solver`) available by its ``name`` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Solver)) or not getattr(cls, "name", ""):
        raise TypeError(f"{cls!r} is not a Solver subclass with a name")
    if not (isinstance(cls.Params, type) and issubclass(cls.Params, SolverParams)):
        raise TypeError(f"{cls.name}: Params must be a SolverParams dataclass, not {cls.Params!r}")
    SOLVERS[cls.name] = cls
    return cls


class Solver:
    """Base class of every solver: the loop's hooks, with the data-parallel defaults."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = SolverParams  # its settings: a frozen dataclass (none here)
    default_loss: ClassVar[str] = "cross_entropy"
    default_activation: ClassVar[str] = "relu"
    layer_parallel: ClassVar[bool] = False  # True: runs on a layer-groups x data-shards grid
    # run settings (TrainConfig fields) this solver defaults differently, e.g. patience in its own
    # iterations; a value given by the user still wins
    run_defaults: ClassVar[dict] = {}

    stop_request = None  # the loop's StopRequest; mini-batch solvers check it between batches
    batch_size = None    # global columns per mini-batch, as run (None: full batch)

    def __init__(self, spec, grid, n_total, **settings):
        """The solver of network ``spec`` on ``grid``, for ``n_total`` columns over all ranks, with
        its ``Params`` given by name over their defaults (``settings``). Each setting becomes the
        attribute of its name (a mini-batch mode's ``batch_size`` and ``batch_sweeps`` belong to
        the mode, not to the solver); what a solver derives from them, it computes in :meth:`setup`."""
        from admm_mpi.solvers.batches import MiniBatchParams  # (batches builds on this module)

        params = self.Params(**settings)
        mode = {f.name for f in fields(MiniBatchParams)} if isinstance(params, MiniBatchParams) else set()
        self.spec, self.grid, self.n_total = spec, grid, n_total
        for f in fields(params):
            if f.name not in mode:
                setattr(self, f.name, getattr(params, f.name))
        self.setup()

    def setup(self):
        """Quantities derived from the settings and sizes (a scaled ridge, this rank's blocks): none here."""

    def init_state(self, X, Y, rng):
        raise NotImplementedError

    def step(self, state, Y, iteration):
        raise NotImplementedError

    def local_metrics(self, state, Y):
        raise NotImplementedError

    def fresh_codes(self, state, X):
        """Set ``state``'s per-sample variables for the columns ``X`` from a forward pass of its
        weights (multipliers zero). The mini-batch mode calls it for every batch, and a resume from
        a ``global`` checkpoint for the whole shard; a solver with per-sample state implements it."""
        raise NotImplementedError(f"solver {self.name!r} keeps no per-sample state to rebuild")

    def end_of_iteration(self, state, metrics):
        """Schedules that depend on the global metrics: none by default."""

    def evaluated(self, state):
        """The network the loop evaluates, selects and saves (``.weights``, ``.biases``): the
        current iterate here; a solver that averages its iterates returns the average."""
        return state

    def outputs(self, model, X):
        """Outputs of the network ``model`` (``.weights``, ``.biases``) for this rank's columns ``X``."""
        return forward(self.spec, model.weights, model.biases, X)

    def full_model(self, state):
        """Every layer's ``(weights, biases)`` on the root: every rank holds them all here."""
        return state.weights, state.biases

    def owns(self, name, index, per_sample):
        """Whether this rank writes entry ``name[index]`` to a checkpoint: its own columns of every
        per-sample entry; the global entries, identical on every rank, once, by the root."""
        return per_sample or self.grid.is_root

    def needs(self, name, index):
        """Whether this rank reads entry ``name[index]`` back from a checkpoint: all of them."""
        return True

    def on_columns(self, n_total):
        """This solver for a problem of ``n_total`` columns over all ranks (a mini-batch): a shallow
        copy whose per-sample scalings (``ridge * n``, ``rho * n``) follow the batch; ``self`` is
        left as it is."""
        batch_solver = copy.copy(self)
        batch_solver.n_total = n_total
        return batch_solver
