"""mDLAM (Wang, Li, Zhao 2022; docs/design.md §5): alternating minimisation with box constraints.

    R(z_L; y) + (rho/2) sum_l ||z_l - W_l a_{l-1} - b_l||² + (mu/2) sum_l ||W_l||²
    s.t.  h(z_l) - eps <= a_l <= h(z_l) + eps        (l < L), no duals

``eps`` halves every iteration down to ``eps_min``. One iteration is a forward sweep
``W_l → b_l → z_l → a_l``: W and a take backtracked (projected) gradient steps from a Nesterov
extrapolated point, b is exact, hidden z is ``W a + b`` clamped into ``h⁻¹([a - eps, a + eps])``,
z_L is the loss prox. Unlike the published code the extrapolation really extrapolates (the
previous iterate is kept, ``t`` advances), and it is monotone: when a block's objective at the
extrapolated step is worse than at the current point, the step is redone from the current point
and that block's momentum restarts. ``w_steps`` W steps per block (1 in the paper) reuse the
reduced statistics, as dlADMM's do: no extra communication and no pass over the samples.
"""

from dataclasses import dataclass
from typing import ClassVar

import math

import numpy as np

from admm_mpi.backend import namespace, sum_all

from admm_mpi.ops.steps import (backtracking, exact_bias, power_iteration, split_stats, start_tau,
                                weight_gradient_rows)
from admm_mpi.solvers.common import forward_states, init_weights, step_by_rows
from admm_mpi.solvers.base import (FULL_BATCH_RUN_DEFAULTS, Solver, check_at_least, check_non_negative,
                                  check_positive, setting)
from admm_mpi.solvers.batches import MiniBatchParams


@dataclass
class MDLAMState:
    # per-sample variables (columns of this rank); the rest is global
    sample_fields: ClassVar[tuple] = ("a", "z", "prev_a")
    weights: list
    biases: list
    a: list
    z: list
    eps: float
    prev_weights: list    # W^{k-1}, for the extrapolation
    prev_a: list
    t_W: list             # Nesterov sequences, per block
    t_a: list
    tau_W: list
    tau_a: list


def _momentum(t):
    """Next Nesterov ``t`` and the extrapolation weight ``(t_old - 1)/t_new``."""
    t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
    return t_new, (t - 1) / t_new


def _worse(new, old):
    """``new > old`` beyond rounding: a tie must not flip between a serial and a distributed run."""
    return new > old + 1e-9 * (abs(old) + 1e-300)


def centred_weight_objective(stats, W, c, mu, rows=None):
    """``min_b (c/2)||T - W a - b||² + (mu/2)||W||²`` up to a constant (from reduced statistics).

    With ``rows = (start, stop)``, ``W`` holds those rows only and their share of the sum is returned.
    The centred statistics ``G - s_a s_aᵀ/N`` and ``C - s_T s_aᵀ/N`` enter through ``W s_a``: no
    k x k array is formed.
    """
    G, s_a, N, C, s_T = split_stats(stats)
    if rows is not None:
        C, s_T = C[rows[0]:rows[1], :], s_T[rows[0]:rows[1]]
    W_s = W @ s_a
    quadratic = sum_all((W @ G) * W) - sum_all(W_s * W_s) / N
    linear = sum_all(W * C) - sum_all(W_s * s_T) / N
    return 0.5 * c * (quadratic - 2 * linear) + 0.5 * mu * sum_all(W * W)


@dataclass(frozen=True)
class MDLAMParams(MiniBatchParams):
    rho: float = setting(1e-3, "penalty of the output constraint")
    mu: float = setting(1e-6, "weight decay (mu/2)||W||^2")
    eps: float = setting(100.0, "initial half-width of the box a in h(z) +- eps")
    eps_min: float = setting(1e-3, "smallest box half-width")
    w_steps: int = setting(1, "W steps per block on the same reduced statistics (paper: 1)")

    def validate(self):
        super().validate()
        check_positive(self, "rho", "eps")
        check_non_negative(self, "mu", "eps_min")
        check_at_least(self, 1, "w_steps")


class MDLAM(Solver):
    """mDLAM on this rank's columns."""

    name = "mdlam"
    Params = MDLAMParams
    default_loss = "cross_entropy"
    default_activation = "relu"
    run_defaults = FULL_BATCH_RUN_DEFAULTS

    def init_state(self, X, Y, rng):
        weights, biases = init_weights(self.spec.widths, rng, X)
        L = self.spec.n_layers
        xp = namespace(X)
        state = MDLAMState(weights, biases, None, None, self.eps, [xp.asarray(w, copy=True) for w in weights],
                           None, [1.0] * L, [1.0] * L, [None] * L, [None] * L)
        self.fresh_codes(state, X)
        return state

    def fresh_codes(self, state, X):
        """Per-sample variables of ``X``'s columns from the forward pass; their momentum restarts."""
        with self.grid.timer.phase("forward codes"):
            state.a, state.z = forward_states(state.weights, state.biases, X, self.spec.h.apply)
        state.prev_a = [namespace(x).asarray(x, copy=True) for x in state.a]
        state.t_a = [1.0] * self.spec.n_layers

    # -- blocks ---------------------------------------------------------------------------------
    def _update_weights(self, state, l):
        W, W_prev, b = state.weights[l], state.prev_weights[l], state.biases[l]

        def step_rows(stats, rows, *, sum_scalars, shared_value):
            # this rank's rows; momentum, step size and restart are decided alike on every rank
            start, stop = rows
            W_rows = W[start:stop, :]
            t_new, omega = _momentum(state.t_W[l])
            W_hat = W_rows + omega * (W_rows - W_prev[start:stop, :])
            options = dict(bias_eliminated=True, steps=self.w_steps, sum_scalars=sum_scalars,
                           shared_value=shared_value)
            W_new, tau, _, _ = weight_gradient_rows(stats, W_hat, b[start:stop], self.rho, self.mu, state.tau_W[l],
                                                    rows, **options)
            new, old = sum_scalars(np.array([centred_weight_objective(stats, X, self.rho, self.mu, rows)
                                             for X in (W_new, W_rows)]))
            if _worse(new, old):
                W_new, tau, _, _ = weight_gradient_rows(stats, W_rows, b[start:stop], self.rho, self.mu, tau, rows,
                                                        **options)
                t_new = 1.0  # restart the momentum of this block
            state.t_W[l], state.tau_W[l] = t_new, tau
            return namespace(W).concat([W_new, exact_bias(stats, W_new, rows)[:, None]], axis=1)

        state.prev_weights[l] = W
        state.weights[l], state.biases[l] = step_by_rows(self.grid, state.a[l], state.z[l], step_rows)

    def _update_z(self, state, l, Y):
        m = state.weights[l] @ state.a[l] + state.biases[l][:, None]
        if l == self.spec.n_layers - 1:
            state.z[l] = self.spec.loss_fn.prox(m, Y, namespace(m).zeros_like(m), self.rho / 2)
            return
        a = state.a[l + 1]
        lo, hi = self.spec.h.inverse_box(a - state.eps, a + state.eps)
        feasible = (lo <= hi) & (hi > -math.inf) & (lo < math.inf)
        # an empty box (a drifted out of h's range as eps shrank): take m; the a-step then
        # projects a back into the box around h(z)
        xp = namespace(m)
        state.z[l] = xp.where(feasible, xp.clip(m, min=lo, max=hi), m)

    def _update_a(self, state, l):
        """a[l] (input of layer l): projected step on (rho/2)||z_l - W_l a - b_l||² over the box."""
        W, b, T = state.weights[l], state.biases[l], state.z[l]
        h_z = self.spec.h.apply(state.z[l - 1])
        lo, hi = h_z - state.eps, h_z + state.eps
        t_new, omega = _momentum(state.t_a[l])
        a, a_prev = state.a[l], state.prev_a[l]
        xp = namespace(a)

        def phi_and_grad(x):
            r = T - W @ x - b[:, None]
            return r, -self.rho * (W.T @ r)

        t_sq = 0.5 * self.rho * sum_all(T * T)
        # residuals below a thousand ulps of T are rounding (fresh codes fit exactly)
        rounding = (1e3 * xp.finfo(a.dtype).eps) ** 2

        def take_step(start, tau):
            r, g = phi_and_grad(start)
            phi_start, scale = self.grid.allsum(np.array([0.5 * self.rho * sum_all(r * r), t_sq]))
            if phi_start <= rounding * (1 + scale):
                # already fitted to rounding: a search on rounding noise would only leave a
                # meaningless τ behind (and one that differs between layouts)
                return start, phi_start, tau

            def trial(tau_):
                cand = xp.clip(start - g / tau_, min=lo, max=hi)
                d = cand - start
                r_c = T - W @ cand - b[:, None]
                phi_c, inner, dist = self.grid.allsum(np.array(
                    [0.5 * self.rho * sum_all(r_c * r_c), sum_all(g * d), sum_all(d * d)]))
                return (cand, phi_c), phi_c, inner, dist

            tau0 = start_tau(tau, lambda: self.rho * power_iteration(lambda v: W.T @ (W @ v), W))
            result, tau, _ = backtracking(phi_start, tau0, trial)
            if result is None:
                return start, phi_start, tau
            return result[0], result[1], tau

        a_hat = xp.clip(a + omega * (a - a_prev), min=lo, max=hi)
        a_new, phi_new, tau = take_step(a_hat, state.tau_a[l])
        r_old = T - W @ a - b[:, None]
        phi_old = self.grid.allsum(np.array([0.5 * self.rho * sum_all(r_old * r_old)]))[0]
        if _worse(phi_new, phi_old):  # extrapolation hurt: step from the current point, restart momentum
            a_new, _, tau = take_step(xp.clip(a, min=lo, max=hi), tau)
            t_new = 1.0
        state.prev_a[l], state.a[l] = a, a_new
        state.t_a[l], state.tau_a[l] = t_new, tau

    def step(self, state, Y, iteration):
        L = self.spec.n_layers
        for l in range(L):
            self._update_weights(state, l)
            self._update_z(state, l, Y)
            if l + 1 < L:
                self._update_a(state, l + 1)
        state.eps = max(state.eps / 2, self.eps_min)

    def end_of_iteration(self, state, metrics):
        """mDLAM's only schedule, the shrinking box, advances inside ``step``."""

    def local_metrics(self, state, Y):
        W, b, a, z = state.weights, state.biases, state.a, state.z
        out = {}
        fit = 0.0
        for l in range(self.spec.n_layers):
            r = sum_all((z[l] - W[l] @ a[l] - b[l][:, None]) ** 2)
            fit += r
            if l < self.spec.n_layers - 1:
                out[f"residual_activation_{l}_sq"] = sum_all((a[l + 1] - self.spec.h.apply(z[l])) ** 2)
            else:
                out["residual_sq"] = r
        objective = self.spec.loss_fn.value(z[-1], Y) + 0.5 * self.rho * fit
        if self.grid.is_root:
            objective += 0.5 * self.mu * sum(sum_all(w * w) for w in W)
        out["objective"] = objective
        return out
