"""dlADMM (Wang et al., KDD 2019; docs/design.md §3).

Relaxed problem with one equality constraint at the output:

    R(z_L; y) + (mu/2) sum ||W_l||² + (nu/2) sum_{l<L} (||z_l - W_l a_{l-1} - b_l||² + ||a_l - h(z_l)||²)
    s.t. z_L = W_L a_{L-1} + b_L          (dual u, penalty rho)

One iteration (the order of the published code):

- backward, l = L..1:  z_l → b_l → W_l → a_{l-1}   (no a_0: it is the data)
- forward,  l = 1..L:  W_l → b_l → z_l → a_l       (no a_L)
- dual:  u ← u + rho (z_L - W_L a_{L-1} - b_L)

W and a take one backtracked step of a quadratic approximation (``ops.steps``), b is exact,
hidden z is the activation's exact z-update, z_L the loss prox. The output layer's terms are
``uᵀ(z_L - m) + (rho/2)||z_L - m||² = (rho/2)||z_L + u/rho - m||² + const``, so the W_L and
a_{L-1} steps use the target ``z_L + u/rho`` with weight ``rho``.

rho schedule (configurable; the published code's rule): start at ``rho``; when the objective has
risen in ``rho_patience`` consecutive iterations, multiply by ``rho_growth`` up to ``rho_max``.
``nu = 0`` ties nu to rho, as the published code does.

Two departures from the paper, both compared on digits (``bench/digits.py``): the W step is taken with b
minimised out (the centred Gram, much better conditioned for non-negative activations), and
``w_steps`` such steps are taken per block on the same reduced statistics (no extra
communication, no pass over the samples).
"""

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from admm_mpi.backend import namespace, sum_all

from admm_mpi.solvers.common import activation_step, forward_states, init_weights, weight_step
from admm_mpi.solvers.base import (FULL_BATCH_RUN_DEFAULTS, Solver, check_at_least, check_non_negative,
                                  check_positive, setting)
from admm_mpi.solvers.batches import MiniBatchParams


@dataclass
class DLADMMState:
    # per-sample variables (columns of this rank); the rest is global
    sample_fields: ClassVar[tuple] = ("a", "z", "u")
    weights: list
    biases: list
    a: list            # a_0 = X .. a_{L-1}
    z: list            # z_1 .. z_L
    u: np.ndarray      # dual of the output constraint
    rho: float
    tau_W: list        # per-layer step of the W search (the same on every rank)
    tau_a: list        # per-layer step of the a search
    objectives: list = field(default_factory=list)


@dataclass(frozen=True)
class DLADMMParams(MiniBatchParams):
    nu: float = setting(0.0, "penalty of the relaxed layer constraints (0: tied to rho)")
    rho: float = setting(1e-2, "initial penalty of the output constraint (grows up to rho_max)")
    rho_max: float = setting(0.1, "largest rho of the schedule")
    rho_growth: float = setting(10.0, "factor of a rho increase")
    rho_patience: int = setting(3, "rising-objective iterations before rho grows")
    mu: float = setting(0.0, "weight decay (mu/2)||W||^2")
    w_steps: int = setting(5, "W steps per block on the same reduced statistics (paper: 1)")

    def validate(self):
        super().validate()
        check_positive(self, "rho", "rho_max")
        check_non_negative(self, "nu", "mu", "rho_patience")
        check_at_least(self, 1, "rho_growth", "w_steps")


class DLADMM(Solver):
    """dlADMM on this rank's columns."""

    name = "dladmm"
    Params = DLADMMParams
    center = True
    default_loss = "cross_entropy"
    default_activation = "relu"
    run_defaults = FULL_BATCH_RUN_DEFAULTS

    def _nu(self, state):
        """nu = 0 ties the relaxation penalty to rho (as the published code does)."""
        return self.nu if self.nu > 0 else state.rho

    def init_state(self, X, Y, rng):
        weights, biases = init_weights(self.spec.widths, rng, X)
        L = self.spec.n_layers
        state = DLADMMState(weights, biases, None, None, None, self.rho, [None] * L, [None] * L)
        self.fresh_codes(state, X)
        return state

    def fresh_codes(self, state, X):
        """Per-sample variables of ``X``'s columns from the forward pass of the current weights."""
        with self.grid.timer.phase("forward codes"):
            state.a, state.z = forward_states(state.weights, state.biases, X, self.spec.h.apply)
        state.u = namespace(state.z[-1]).zeros_like(state.z[-1])

    # -- the blocks -------------------------------------------------------------------------
    def _target(self, state, l):
        """Target and weight of layer l's linear term: z_l with nu, or z_L + u/rho with rho."""
        if l == self.spec.n_layers - 1:
            return state.z[l] + state.u / state.rho, state.rho
        return state.z[l], self._nu(state)

    def _update_z(self, state, l, Y):
        W, b, a, z = state.weights, state.biases, state.a, state.z
        m = W[l] @ a[l] + b[l][:, None]
        if l == self.spec.n_layers - 1:
            z[l] = self.spec.loss_fn.prox(m, Y, state.u, state.rho / 2)
        else:
            z[l] = self.spec.h.z_update(a[l + 1], m, self._nu(state) / 2, self._nu(state) / 2)

    def _update_weights(self, state, l, bias_first):
        T, c = self._target(state, l)
        state.weights[l], state.biases[l], state.tau_W[l] = weight_step(
            self.grid, state.a[l], T, state.weights[l], state.biases[l], c, self.mu, state.tau_W[l],
            bias_first=bias_first, center=self.center, steps=self.w_steps)

    def _update_a(self, state, l):
        """a[l], the input of layer l (the output of layer l-1), for 1 <= l <= L-1."""
        T, c = self._target(state, l)
        target = self.spec.h.apply(state.z[l - 1])
        state.a[l], state.tau_a[l] = activation_step(
            self.grid, state.a[l], T, state.weights[l], state.biases[l], c, target, self._nu(state), state.tau_a[l])

    def step(self, state, Y, iteration):
        L = self.spec.n_layers
        for l in reversed(range(L)):             # backward: z_l, b_l, W_l, a_{l-1}
            self._update_z(state, l, Y)
            self._update_weights(state, l, bias_first=True)
            if l > 0:
                self._update_a(state, l)
        for l in range(L):                       # forward: W_l, b_l, z_l, a_l
            self._update_weights(state, l, bias_first=False)
            self._update_z(state, l, Y)
            if l < L - 1:
                self._update_a(state, l + 1)
        m = state.weights[-1] @ state.a[-1] + state.biases[-1][:, None]
        state.u += state.rho * (state.z[-1] - m)

    def end_of_iteration(self, state, metrics):
        """The rho schedule; ``metrics`` are the global (rank-identical) values."""
        state.objectives.append(metrics["objective"])
        recent = state.objectives[-(self.rho_patience + 1):]
        rising = self.rho_patience == 0 or (
            len(recent) == self.rho_patience + 1 and all(x < y for x, y in zip(recent, recent[1:])))
        if rising and state.rho < self.rho_max:
            state.rho = min(state.rho * self.rho_growth, self.rho_max)
            state.objectives.clear()

    # -- diagnostics --------------------------------------------------------------------------
    def local_metrics(self, state, Y):
        """This rank's sums: objective, augmented Lagrangian, primal residuals (squared)."""
        h = self.spec.h.apply
        W, b, a, z = state.weights, state.biases, state.a, state.z
        L = self.spec.n_layers
        out = {}
        penalty = 0.0
        for l in range(L - 1):
            lin = sum_all((z[l] - W[l] @ a[l] - b[l][:, None]) ** 2)
            act = sum_all((a[l + 1] - h(z[l])) ** 2)
            out[f"residual_linear_{l}_sq"], out[f"residual_activation_{l}_sq"] = lin, act
            penalty += lin + act
        r = z[-1] - W[-1] @ a[-1] - b[-1][:, None]
        loss = self.spec.loss_fn.value(z[-1], Y)
        objective = loss + 0.5 * self._nu(state) * penalty
        if self.grid.is_root and self.mu:  # weights are global: count their penalty once
            objective += 0.5 * self.mu * sum(sum_all(w * w) for w in W)
        out["objective"] = objective
        out["augmented_lagrangian"] = objective + sum_all(state.u * r) + 0.5 * state.rho * sum_all(r * r)
        out["residual_sq"] = sum_all(r * r)
        return out
