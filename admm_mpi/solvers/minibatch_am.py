"""Mini-batch alternating minimisation with Taylor's sub-problems (online AM; docs/design.md §7).

Full-batch Taylor ADMM makes one weight update per pass over the data and keeps its
auxiliary variables ``a_l, z_l`` for the whole run; on MNIST it plateaus near 0.95 however its
penalties are set. This variant makes one weight update per mini-batch of columns, as the
online alternating-minimisation papers do, with the same sub-problem solvers:

1. codes from the forward pass of the batch: ``z_l = W_l a_{l-1} + b_l``, ``a_l = h(z_l)``;
2. output target by the loss prox, ``z*_L = argmin loss(z, Y) + beta ||z - z_L||²``;
3. backwards, Taylor's a-update ``a*_l = argmin beta ||z*_{l+1} - W_{l+1} a - b||² + gamma ||a - a_l||²``
   and z-update ``z*_l = argmin gamma ||a*_l - h(z)||² + beta ||z - z_l||²``;
4. every layer's weights by one transpose-reduced least-squares solve on the batch,
   ``argmin ||z*_l - W a_{l-1} - b||² + ridge n ||[W b]||² + rho n ||[W b] - [W b]_old||²``
   (``n`` the batch size): the proximal term makes it a step, the ridge a weight decay.

Codes start from the forward pass on every batch, so nothing per-sample is stored and a fixed
point has targets equal to the forward pass: no relaxation gap between the auxiliary variables
and the network that is evaluated.

Each batch's solve fits that batch's targets closely, so the iterate jumps from batch to batch.
The network that is evaluated, selected and saved is therefore a running average of the iterates
(Polyak averaging): a plain mean of the batches so far, then an exponential moving average over
the last ``average`` epochs' batches (``average = 0``: the last iterate). The default, half an
epoch, had the best mean validation accuracy on the public suite, level with the last iterate
(bench/results/suite.md, candidates ``average-0.5``, ``no-average``, ``average-1``, ``average-2``).

``step_decay`` makes the step shrink as training goes on, as a learning-rate decay does for SGD:
after ``t`` epochs (counted in batches, so it moves within an epoch) the proximal weight is
``rho (1 + step_decay t)``, an inverse-time decay of the step. It depends on the position in
training only, so a resumed run and any number of ranks see the same weights.

One iteration of the training loop is one epoch. Batches are slices of a permutation of the
*global* column indices drawn from the seed and the epoch, each rank taking the batch's columns
it holds, so any number of ranks runs the same batches and a resumed run the same permutation.
"""

from dataclasses import dataclass
from types import SimpleNamespace
from typing import ClassVar

from admm_mpi.backend import is_numpy, namespace, sum_all
from admm_mpi.errors import InputError
from admm_mpi.ops.linalg import (activation_solver, cg_weights, cross_terms_around, smooth_statistics,
                                 summed_normal_equations, transpose_reduce_weights, weights_from_statistics)
from admm_mpi.solvers.batches import (SCALED_BATCH, BatchSize, batch_size_setting, check_batch_size, epoch_batches,
                                      run_epoch, take_columns)
from admm_mpi.solvers.common import forward_states, init_weights
from admm_mpi.solvers.base import Solver, SolverParams, check_at_least, check_non_negative, check_positive, setting


@dataclass
class MiniBatchState:
    sample_fields: ClassVar[tuple] = ()  # codes are rebuilt per batch: no per-sample state
    weights: list
    biases: list
    shuffle_seed: int
    epoch_loss: float = 0.0          # this rank's sum of batch losses over the last epoch
    epoch_displacement: float = 0.0  # and of ||z*_L - z_L||² (how far the loss prox moved the outputs)
    batches_done: int = 0            # batches of the current epoch done (a checkpoint inside an epoch)
    average_weights: list = None     # the running average of the iterates (the evaluated network)
    average_biases: list = None
    averaged_batches: int = 0        # batches folded into the average so far
    memory_statistics: list = None   # per layer, the smoothed [A Aᵀ | A zᵀ] / n over batches (memory > 0)
    memory_batches: int = 0          # batches folded into them


WEIGHT_SOLVERS = ("exact", "cg")
MEMORY_FORMS = ("targets", "displacements")


@dataclass(frozen=True)
class MiniBatchAMParams(SolverParams):
    beta: float = setting(0.1, "penalty of the target problem z = W a + b (smaller: the output targets move further)")
    gamma: float = setting(1.0, "penalty on a = h(z)")
    rho: float = setting(1e-2, "proximal weight of the weight step per batch sample")
    step_decay: float = setting(0.0, "decay of the step per epoch: rho grows to rho (1 + step_decay t) after t "
                                     "epochs, an inverse-time decay (0: a constant step)")
    ridge: float = setting(1e-4, "weight decay per batch sample")
    average: float = setting(0.5, "horizon in epochs of the running average of the weights that is "
                                  "evaluated and saved (0: the last iterate)")
    batch_size: BatchSize = batch_size_setting(SCALED_BATCH, "")
    weight_solver: str = setting("exact", "how each layer's weight step is solved: exact (a Cholesky factorisation) "
                                          "or cg (cg_iters conjugate-gradient iterations from the current weights, "
                                          "an inexact step)", metavar="exact|cg")
    cg_iters: int = setting(3, "with weight_solver cg: conjugate-gradient iterations per weight step")
    memory: float = setting(0.0, "weight of the past batches in each weight step: the Gram and cross terms are "
                                 "smoothed over batches, S <- memory S + (1 - memory) S_batch (0: this batch only)")
    memory_form: str = setting("targets", "with memory: the cross term smoothed is that of the targets, z* Aᵀ "
                                          "(online AM's memory), or of their displacements from the forward "
                                          "pass, (z* - z) Aᵀ, rebuilt around the current weights at each step "
                                          "(stale batches then do not pull the weights back)",
                               metavar="targets|displacements")

    def validate(self):
        check_positive(self, "beta", "gamma", "rho")
        check_non_negative(self, "ridge", "average", "step_decay", "memory")
        check_batch_size(self)
        check_at_least(self, 1, "cg_iters")
        if self.weight_solver not in WEIGHT_SOLVERS:
            raise InputError(f"weight_solver must be one of {', '.join(WEIGHT_SOLVERS)}, got {self.weight_solver!r}")
        if self.memory_form not in MEMORY_FORMS:
            raise InputError(f"memory_form must be one of {', '.join(MEMORY_FORMS)}, got {self.memory_form!r}")
        if not self.memory < 1:
            raise InputError(f"memory must be below 1, got {self.memory}")


class MiniBatchAM(Solver):
    """Online alternating minimisation on mini-batches of this rank's columns.

    Parameters
    ----------
    beta, gamma : float
        Penalties of the target problems (``beta`` for ``z = W a + b``, ``gamma`` for ``a = h(z)``);
        a small ``beta`` moves the output targets further.
    rho : float
        Proximal weight per batch sample of the weight solve (a larger ``rho`` is a smaller step).
    step_decay : float
        Growth of ``rho`` per epoch of training: ``rho (1 + step_decay t)`` after ``t`` epochs.
    ridge : float
        Weight decay per batch sample.
    average : float
        Horizon in epochs of the running average of the iterates that is evaluated and saved:
        the mean of every batch's weights so far, then an exponential moving average over the last
        ``average`` epochs' batches; 0 keeps the last iterate.
    batch_size : int or str
        Columns per global mini-batch (the last batch of an epoch may be smaller); ``"full"``: every
        training row in one batch; ``"auto"`` scales it with the global training rows ``n_total``:
        :func:`~admm_mpi.solvers.batches.scaled_batch_size`.
    weight_solver : {"exact", "cg"}
        The weight step: the exact solve, or ``cg_iters`` conjugate-gradient iterations per row of
        ``[W b]`` warm-started from the current weights (ProxProp's inexact step).
    cg_iters : int
        Iterations of ``weight_solver = "cg"``.
    memory : float
        In ``[0, 1)``: each weight step solves against the exponential moving average of the
        batches' per-sample statistics ``[A Aᵀ | A zᵀ] / n`` (``memory`` the weight of the past),
        divided by its total weight ``1 - memory^t`` after ``t`` batches, so the step fits a
        window of batches; 0 fits this batch only.
    memory_form : {"targets", "displacements"}
        What the memory's cross term smooths: ``z* Aᵀ`` of the batches' targets, or ``(z* - z) Aᵀ``
        of their displacements from the forward pass, the cross term then being
        ``S_aa [W b]ᵀ + S_ad`` around the current weights (:func:`~admm_mpi.ops.linalg.cross_terms_around`).
    """

    name = "minibatch_am"
    Params = MiniBatchAMParams
    default_loss = "cross_entropy"
    default_activation = "relu"

    def setup(self):
        self.batch_size = BatchSize.columns(self.batch_size, self.n_total)  # global rows: the same batches at any rank count
        self.start, self.stop = self.grid.block_range(self.n_total)

    def init_state(self, X, Y, rng):
        if (self.memory or self.weight_solver != "exact") and not is_numpy(X):
            raise InputError("weight_solver cg and memory run on numpy arrays (device cpu) only")
        weights, biases = init_weights(self.spec.widths, rng, X)
        self.X = X  # the batches are drawn from it; not state (a checkpoint never copies the data)
        state = MiniBatchState(weights, biases, shuffle_seed=int(rng.integers(2**62)))
        if self.average:
            state.average_weights, state.average_biases = list(weights), list(biases)  # replaced by batch 1
        return state

    def batches(self, state, epoch):
        """This rank's local column indices of every batch of ``epoch``, with the global batch size."""
        return epoch_batches(state.shuffle_seed, epoch, self.n_total, self.batch_size, self.start, self.stop)

    def targets(self, W, b, a, z, Yb, n_batch=None):
        """Targets ``z*_l`` of every layer from the batch's forward codes (steps 2 and 3); ``n_batch``:
        the global batch size (the activation solves choose how to solve from it)."""
        beta, gamma, h = self.beta, self.gamma, self.spec.h
        xp = namespace(z[-1])
        target = self.spec.loss_fn.prox(z[-1], Yb, xp.zeros_like(z[-1]), beta)
        targets = [target]
        for l in range(len(W) - 1, 0, -1):
            # target - z_l = (target - b_l) - W_l a_l: the forward pass already holds W_l a_l + b_l
            solve = activation_solver(W[l], beta, gamma, self.grid, n_columns=n_batch)
            with self.grid.timer.phase("activation solves"):  # a batch's solves cost as much as forming them
                a_target = solve(target, a[l], WH=z[l])
            target = h.z_update(a_target, z[l - 1], gamma, beta)
            targets.append(target)
        return targets[::-1]

    def step(self, state, Y, iteration):
        """One epoch: a weight update per mini-batch (``iteration`` counts epochs from 1).

        Returns ``INTERRUPTED`` when a stop request ended the epoch between two batches.
        """
        X, W, b = self.X, state.weights, state.biases
        batches = list(self.batches(state, iteration))
        position = state.batches_done  # the batch about to run (a resumed epoch starts inside)

        def batch(local, n_batch):
            nonlocal position
            rho = self.rho_at(iteration - 1 + position / len(batches))
            position += 1
            Xb, Yb = take_columns(X, local), take_columns(Y, local)
            with self.grid.timer.phase("forward codes"):
                a, z = forward_states(W, b, Xb, self.spec.h.apply)
            targets = self.targets(W, b, a, z, Yb, n_batch)
            losses = self.spec.loss_fn.value(z[-1], Yb), sum_all((targets[-1] - z[-1]) ** 2)
            if self.memory:
                state.memory_batches += 1
            for l in range(len(W)):
                W[l], b[l] = self.weight_step(state, l, a[l], targets[l], z[l], n_batch, rho)
            self.fold_into_average(state, horizon)
            return losses

        horizon = max(1.0, self.average * len(batches))  # in batches
        return run_epoch(self.grid, state, batches, batch, self.stop_request)

    def weight_step(self, state, l, a, target, z, n_batch, rho):
        """Layer ``l``'s new ``(W, b)`` from the batch's inputs ``a``, targets and forward outputs ``z``:
        ``argmin ||target - W a - b||² + ridge n ||[W b]||² + rho n ||[W b] - [W b]_old||²``, solved
        exactly or by warm-started CG (``weight_solver``), on this batch (``memory = 0``) or on the
        smoothed statistics of the batches so far, per sample (penalties per sample, both scaled by
        the total weight ``1 - memory^t`` of the average instead of dividing it)."""
        anchor, iters = (state.weights[l], state.biases[l]), self.cg_iters if self.weight_solver == "cg" else 0
        if self.memory:
            displacements = self.memory_form == "displacements"
            stats = summed_normal_equations(self.grid, a, target - z if displacements else target)
            if state.memory_statistics is None:
                state.memory_statistics = [None] * len(state.weights)
            smoothed = state.memory_statistics[l] = smooth_statistics(state.memory_statistics[l], stats, n_batch,
                                                                      self.memory)
            if displacements:
                smoothed = cross_terms_around(smoothed, anchor)
            total = 1.0 - self.memory ** state.memory_batches
            return weights_from_statistics(self.grid, smoothed, self.ridge * total, anchor, rho * total,
                                           cg_iters=iters)
        if iters:
            return cg_weights(self.grid, a, target, self.ridge * n_batch, anchor, rho * n_batch, iters=iters,
                              n_columns=n_batch, anchor_output=z)
        return transpose_reduce_weights(self.grid, a, target, self.ridge * n_batch, anchor=anchor,
                                        anchor_weight=rho * n_batch, n_columns=n_batch, anchor_output=z)

    def rho_at(self, epochs_done):
        """The proximal weight per sample after ``epochs_done`` epochs (fractional: batches count)."""
        return self.rho * (1.0 + self.step_decay * epochs_done)

    def fold_into_average(self, state, horizon):
        """Fold the new iterate into the running average: weight ``1 / t`` for the ``t``-th batch
        (a plain mean) until ``t`` reaches ``horizon`` batches, then ``1 / horizon`` (an exponential
        moving average). Identical on every rank: the weights are."""
        if not self.average:
            return
        state.averaged_batches += 1
        w = 1.0 / min(state.averaged_batches, horizon)
        for average, new in ((state.average_weights, state.weights), (state.average_biases, state.biases)):
            for l, x in enumerate(new):
                if w == 1.0:  # the first batch: a copy the average then owns and updates in place
                    average[l] = namespace(x).asarray(x, copy=True)
                else:  # in place: one temporary per layer on this per-batch path
                    average[l] *= 1.0 - w
                    average[l] += w * x

    def evaluated(self, state):
        """The running average of the iterates (``average > 0``), else the last iterate."""
        if not self.average:
            return state
        return SimpleNamespace(weights=state.average_weights, biases=state.average_biases)

    def local_metrics(self, state, Y):
        """The epoch's summed batch losses (before each batch's update) and output displacement."""
        return {"objective": state.epoch_loss, "residual_sq": state.epoch_displacement}

    def end_of_iteration(self, state, metrics):
        """Nothing per epoch: ``rho``'s growth is applied per batch inside ``step``."""
