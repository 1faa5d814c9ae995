"""Mini-batches of columns, and the mini-batch mode of the full-batch solvers.

Full-batch dlADMM, pdADMM, mDLAM and sigmoid-ADMM make one weight update (a few gradient steps)
per pass over the data and underfit MNIST in any affordable number of iterations (README, Accuracy).
Their mini-batch mode (``batch_size`` a number of columns or ``"auto"``) runs the *same* solver iteration on one mini-batch of
columns at a time, as the online alternating-minimisation papers do:

1. the batch's per-sample variables are rebuilt from the forward pass of the current weights
   (``a_l = h(z_l)``, ``z_l = W_l a_{l-1} + b_l``, duals zero) by the solver's ``fresh_codes``;
2. ``batch_sweeps`` iterations of the solver run on the batch, with the global state (weights,
   step sizes, momentum, schedules) carried from batch to batch;
3. the batch's per-sample variables are dropped.

So nothing per-sample is stored between batches (a checkpoint holds the global state only) and
the weights that are evaluated are those the codes came from. One iteration of the training loop
is one epoch. dlADMM's backward sweep and sigmoid-ADMM's backward pass carry the output's target
down to the first layer within one iteration. mDLAM's forward sweep and pdADMM's Jacobi iteration
move it back by one block per iteration: from codes that fit exactly, the weights of the layer
``L - k`` first move in sweep ``2k + 2``, so they need ``batch_sweeps`` above ``2L`` - with fewer,
the first layer keeps its random weights.

Batches are slices of a permutation of the *global* column indices drawn from the seed and the
epoch; each rank takes the batch's columns it holds, so any number of ranks runs the same batches
(distributed == serial) and a resumed run redraws the same permutation. On a layer grid the
columns are split over the data shards of each layer group, and every group takes the same batch.
"""

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from admm_mpi.backend import from_host, namespace, sum_all
from admm_mpi.errors import InputError
from admm_mpi.solvers.base import BATCH_STATE, Solver, SolverParams, check_at_least, setting


# the "auto" batch size: a twentieth of the training rows, at least 100 and at most 2000 columns
# (chosen on the public suite by validation accuracy, candidate ``batch-n20`` of bench/results/suite.md)
SCALED_BATCH_DIVISOR, SCALED_BATCH_MIN, SCALED_BATCH_MAX = 20, 100, 2000
FULL_BATCH = "full"    # one batch of every training row: the full-batch solver
SCALED_BATCH = "auto"  # scaled to the training rows: scaled_batch_size


def scaled_batch_size(n_train):
    """``n_train // 20`` clipped to [100, 2000]: the ``"auto"`` batch size for ``n_train`` rows.

    ``n_train`` is the global number of training rows (all ranks, after the validation rows are
    held out), so every rank count draws the same batches.
    """
    return min(max(n_train // SCALED_BATCH_DIVISOR, SCALED_BATCH_MIN), SCALED_BATCH_MAX)


class BatchSize:
    """The type of the ``batch_size`` setting: a positive number of columns per global batch, or
    a named size, ``"full"`` (every training row in one batch) or ``"auto"`` (scaled to the data:
    :func:`scaled_batch_size`)."""

    NAMES = (FULL_BATCH, SCALED_BATCH)
    describe = "a positive integer, 'full' (every training row) or 'auto' (scaled to the training rows)"

    @classmethod
    def coerce(cls, value, text_ok=True):
        """``value`` as a batch size (an int, or one of ``NAMES``), or None if it is none.
        Text is parsed only where settings arrive as text (``text_ok``); a name is text anywhere."""
        if isinstance(value, str):
            text = value.strip().lower()
            if text in cls.NAMES:
                return text
            if not text_ok:
                return None
            try:
                value = int(text)
            except ValueError:
                return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None

    @staticmethod
    def columns(value, n_train):
        """Global columns per batch for ``n_train`` training rows."""
        if value == FULL_BATCH:
            return n_train
        return scaled_batch_size(n_train) if value == SCALED_BATCH else value


def check_batch_size(params):
    if BatchSize.coerce(params.batch_size, text_ok=False) != params.batch_size:
        raise InputError(f"batch_size must be {BatchSize.describe}, got {params.batch_size!r}")


def batch_size_setting(default, help):
    """The ``batch_size`` setting: global columns per mini-batch (one iteration = one epoch)."""
    return setting(default, f"columns per global mini-batch, one iteration = one epoch: N, full (every training "
                            f"row in one batch) or auto (n_train // 20 clipped to [100, 2000], n_train the training "
                            f"rows after the validation split){help}", "N|full|auto")


@dataclass(frozen=True)
class MiniBatchParams(SolverParams):
    """The settings of the mini-batch mode, shared by the full-batch solvers that have it."""

    batch_size: BatchSize = batch_size_setting(FULL_BATCH, "")
    batch_sweeps: int = setting(1, "with a mini-batch size: solver iterations per mini-batch")

    def validate(self):
        check_batch_size(self)
        check_at_least(self, 1, "batch_sweeps")


def epoch_batches(shuffle_seed, epoch, n_total, batch_size, start, stop):
    """This rank's local column indices of every batch of ``epoch``, with the global batch size.

    ``[start, stop)`` is this rank's block of global columns.
    """
    order = np.random.default_rng([shuffle_seed, epoch]).permutation(n_total)
    for first in range(0, n_total, batch_size):
        batch = order[first:first + batch_size]
        mine = batch[(batch >= start) & (batch < stop)] - start
        yield np.sort(mine), batch.size


INTERRUPTED = "interrupted"  # what ``step`` returns when a stop request ended the epoch early


def run_epoch(grid, state, batches, do_batch, stop=None):
    """Run ``do_batch(local, n_batch) -> (loss, displacement)`` over the epoch's ``batches``.

    Starts after ``state.batches_done`` batches (a checkpoint taken inside the epoch) and sums
    the batches' losses into ``state.epoch_loss`` / ``state.epoch_displacement``. Between
    batches every rank's stop request is combined (``stop.agree``); when one is set the epoch
    ends early: the partial sums become global (held by the root), ``state.batches_done``
    records the position and ``INTERRUPTED`` is returned, so the loop can checkpoint mid-epoch.
    """
    if not state.batches_done or not grid.is_root:
        # fresh epoch; or resumed inside one, where the saved partial sums are global (the root's)
        state.epoch_loss = state.epoch_displacement = 0.0
    batches = list(batches)
    for k in range(state.batches_done, len(batches)):
        loss, displacement = do_batch(*batches[k])
        state.epoch_loss += loss
        state.epoch_displacement += displacement
        if stop is not None and k + 1 < len(batches) and stop.agree(grid):
            sums = grid.allsum(np.array([state.epoch_loss, state.epoch_displacement], dtype=np.float64))
            state.epoch_loss, state.epoch_displacement = (float(s) if grid.is_root else 0.0 for s in sums)
            state.batches_done = k + 1
            return INTERRUPTED
    state.batches_done = 0
    return None


def take_columns(x, local):
    """Columns ``local`` (host indices) of ``x``, on ``x``'s device."""
    xp = namespace(x)
    return xp.take(x, from_host(xp, local, like=x), axis=1)


@dataclass
class BatchedState:
    """The mini-batch mode's state: the inner solver's state, whose per-sample fields hold the
    current batch's codes only (so checkpoints leave them out: ``BATCH_STATE``), and the epoch's
    permutation seed, position and partial sums."""

    sample_fields: ClassVar[tuple] = ()
    inner: object = field(metadata={BATCH_STATE: True})
    shuffle_seed: int = 0
    epoch_loss: float = 0.0
    epoch_displacement: float = 0.0
    batches_done: int = 0  # batches of the current epoch done (a checkpoint inside an epoch)

    def __getattr__(self, name):
        # reads of the inner state's entries (weights, biases, step sizes) pass through, for
        # whoever inspects a finished run's state; writes stay explicit (``state.inner.x = ...``)
        if name == "inner":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


class MiniBatchMode(Solver):
    """Run a full-batch solver one mini-batch of columns at a time (one iteration = one epoch).

    ``inner`` is the solver; it provides ``init_state``, ``fresh_codes(state, X)`` (the per-sample
    variables of ``X``'s columns from the forward pass) and ``step``. The mode composes it: its
    state (:class:`BatchedState`) holds the inner solver's state, whose per-sample fields are
    rebuilt for every batch and dropped after the epoch; the inner solver is not modified.
    """

    def __init__(self, inner, batch_size, sweeps):
        self.inner, self.batch_size, self.sweeps = inner, batch_size, sweeps
        self.spec, self.grid, self.n_total, self.name = inner.spec, inner.grid, inner.n_total, inner.name
        # a layer grid splits the columns over the data shards of each layer group
        self.start, self.stop = getattr(self.grid, "data", self.grid).block_range(self.n_total)

    # evaluation, the saved model and checkpoint ownership are the inner solver's (pdADMM's
    # pipelined evaluation and layer groups)
    def evaluated(self, state):
        return self.inner.evaluated(state.inner)

    def outputs(self, model, X):
        return self.inner.outputs(model, X)

    def full_model(self, model):  # ``model``: what ``evaluated`` returned, or a copy of it
        return self.inner.full_model(model)

    def owns(self, name, index, per_sample):
        return self.inner.owns(name, index, per_sample)

    def needs(self, name, index):
        return self.inner.needs(name, index)

    def init_state(self, X, Y, rng):
        self.X = X  # the batches are drawn from it; not state (a checkpoint never copies the data)
        inner = self.inner.init_state(X[:, :0], Y[:, :0], rng)  # weights only: codes come per batch
        # the seed is drawn after the weights: same seed, same batches
        return BatchedState(inner, shuffle_seed=int(rng.integers(2**62)))

    def step(self, state, Y, iteration):
        """One epoch: ``sweeps`` solver iterations per mini-batch (``iteration`` counts epochs from 1).

        Returns ``INTERRUPTED`` when a stop request ended the epoch between two batches.
        """
        inner = state.inner

        def batch(local, n_batch):
            Yb = take_columns(Y, local)
            self.inner.fresh_codes(inner, take_columns(self.X, local))
            output = inner.z[-1]  # None on a layer group without the output layer: it counts 0
            loss = 0.0
            if output is not None:
                output = namespace(output).asarray(output, copy=True)
                loss = self.spec.loss_fn.value(output, Yb)
            batch_solver = self.inner.on_columns(n_batch)  # the problem the inner solver sees is the batch
            for _ in range(self.sweeps):
                batch_solver.step(inner, Yb, iteration)
            return loss, 0.0 if output is None else sum_all((inner.z[-1] - output) ** 2)

        batches = epoch_batches(state.shuffle_seed, iteration, self.n_total, self.batch_size, self.start, self.stop)
        outcome = run_epoch(self.grid, state, batches, batch, self.stop_request)
        for name in inner.sample_fields:  # free the last batch's codes
            setattr(inner, name, None)
        return outcome

    def local_metrics(self, state, Y):
        """The epoch's summed batch losses (at each batch's forward pass) and output displacement."""
        return {"objective": state.epoch_loss, "residual_sq": state.epoch_displacement}

    def end_of_iteration(self, state, metrics):
        """The inner schedules run per sweep inside ``step`` (mDLAM's box); none per epoch."""
