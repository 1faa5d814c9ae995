"""sigmoid-ADMM (Zeng, Lin, Yao, Zhou, "On ADMM in Deep Learning: Convergence and
Saturation-Avoidance", JMLR 2021; docs/design.md §6).

ADMM on the *nonlinearly* constrained problem, with a multiplier on every layer's constraint:

    loss(V_L, Y) + (mu/2) sum_l ||W_l||²
    s.t.  V_l = h(W_l V_{l-1} + b_l)  (l < L),   V_L = W_L V_{L-1} + b_L,   V_0 = X

    AL = loss + (mu/2) sum ||W||² + sum_l <Λ_l, g_l - V_l> + (beta/2) ||g_l - V_l||²,
    g_l = h(W_l V_{l-1} + b_l) (linear for l = L)

One iteration, backward from the output:

- ``V_L``: exact (the loss prox of ``loss(V) - <Λ_L, V> + (beta/2)||m - V||²``);
- ``W_L, b_L``: exact ridge least squares by transpose reduction (target ``V_L - Λ_L/beta``),
  optionally anchored: ``rho n ||[W_L b_L] - [W_L b_L]_old||²`` added (``n`` samples; 0 in the
  paper). In mini-batch mode the exact solve otherwise fits each batch afresh and forgets the
  others (with as many inputs as batch columns it interpolates the batch);
- for ``l = L-1 .. 1``: ``V_l`` by a linearised proximal step — the terms of layer ``l+1`` are
  linearised at the current ``V_l`` with proximal weight ``ω``, the terms of layer ``l`` (a
  quadratic in ``V_l``) are kept exactly — then ``[W_l b_l]`` by a linearised proximal step on
  layer ``l``'s terms. ``ω`` is found by the shared backtracking (sufficient decrease of the
  linearised block), which is what keeps the method stable without tuning;
- every multiplier: ``Λ_l ← Λ_l + beta (g_l - V_l)``.

No published code was available to compare with; this follows the paper's scheme (prox-linear
updates of W and V, duals on the nonlinear constraints) as described in docs/design.md §6.
"""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from admm_mpi.backend import namespace, sum_all

from admm_mpi.ops.linalg import transpose_reduce_weights, with_ones_row
from admm_mpi.ops.steps import backtracking, power_iteration, start_tau
from admm_mpi.solvers.common import forward_states, init_weights
from admm_mpi.solvers.base import FULL_BATCH_RUN_DEFAULTS, Solver, check_non_negative, check_positive, setting
from admm_mpi.solvers.batches import MiniBatchParams


@dataclass
class SigmoidADMMState:
    # per-sample variables (columns of this rank); the rest is global
    sample_fields: ClassVar[tuple] = ("a", "z", "lam")
    weights: list
    biases: list
    a: list          # V_0 = X .. V_{L-1}
    z: list          # pre-activations W_l V_{l-1} + b_l (kept for h'), and V_L = z[-1]
    lam: list        # Λ_1 .. Λ_L
    tau_V: list
    tau_W: list


@dataclass(frozen=True)
class SigmoidADMMParams(MiniBatchParams):
    beta: float = setting(1.0, "penalty on the linear constraints z = W a + b")
    mu: float = setting(1e-4, "weight decay (mu/2)||W||^2")
    omega: float = setting(1.0, "proximal weight of the linearised steps")
    rho: float = setting(0.0, "proximal weight of the output layer's solve, an optional anchor (0: off)")

    def validate(self):
        super().validate()
        check_positive(self, "beta", "omega")
        check_non_negative(self, "mu", "rho")


class SigmoidADMM(Solver):
    """sigmoid-ADMM on this rank's columns."""

    name = "sigmoid_admm"
    Params = SigmoidADMMParams
    default_loss = "least_squares"
    default_activation = "sigmoid"
    run_defaults = FULL_BATCH_RUN_DEFAULTS

    def init_state(self, X, Y, rng):
        weights, biases = init_weights(self.spec.widths, rng, X)
        L = self.spec.n_layers
        state = SigmoidADMMState(weights, biases, None, None, None, [None] * L, [None] * L)
        self.fresh_codes(state, X)
        return state

    def fresh_codes(self, state, X):
        """Per-sample variables of ``X``'s columns from the forward pass of the current weights."""
        with self.grid.timer.phase("forward codes"):
            state.a, state.z = forward_states(state.weights, state.biases, X, self.spec.h.apply)
        state.lam = [namespace(zl).zeros_like(zl) for zl in state.z]

    def _g(self, state, l, W=None, b=None, V=None):
        """Layer l's constraint function and pre-activation at (W, b, V)."""
        W = state.weights[l] if W is None else W
        b = state.biases[l] if b is None else b
        V = state.a[l] if V is None else V
        pre = W @ V + b[:, None]
        return (pre if l == self.spec.n_layers - 1 else self.spec.h.apply(pre)), pre

    def _layer_terms(self, state, l, g):
        """<Λ_l, g - V_l> + (beta/2)||g - V_l||² (local sum), and its gradient wrt g."""
        target = state.z[-1] if l == self.spec.n_layers - 1 else state.a[l + 1]
        d = g - target
        value = sum_all(state.lam[l] * d) + 0.5 * self.beta * sum_all(d * d)
        return value, state.lam[l] + self.beta * d

    def _grad_pre(self, state, l, g, pre):
        """Gradient of layer l's terms wrt its pre-activation."""
        _, dg = self._layer_terms(state, l, g)
        return dg if l == self.spec.n_layers - 1 else dg * self.spec.h.derivative(pre)

    # -- blocks -----------------------------------------------------------------------------------
    def _update_output(self, state, Y):
        m = state.weights[-1] @ state.a[-1] + state.biases[-1][:, None]
        state.z[-1] = self.spec.loss_fn.prox(m, Y, -state.lam[-1], self.beta / 2)
        T = state.z[-1] - state.lam[-1] / self.beta
        # n_columns: a mini-batch narrower than the layer's input is solved through its kernel matrix
        state.weights[-1], state.biases[-1] = transpose_reduce_weights(
            self.grid, state.a[-1], T, self.mu / self.beta, anchor=(state.weights[-1], state.biases[-1]),
            anchor_weight=self.rho * self.n_total, n_columns=self.n_total, anchor_output=m)

    def _update_V(self, state, l):
        """V_l = a[l] (input of layer l, output of layer l-1)."""
        V = state.a[l]
        g_next, pre_next = self._g(state, l)
        grad_next = state.weights[l].T @ self._grad_pre(state, l, g_next, pre_next)   # linearised part
        g_own = self.spec.h.apply(state.z[l - 1])      # layer l-1's constraint value (fixed in V)
        lam_own = state.lam[l - 1]

        def smooth_value(x):
            g, _ = self._g(state, l, V=x)
            return self._layer_terms(state, l, g)[0]

        def own_terms(x):
            d = g_own - x
            return sum_all(lam_own * d) + 0.5 * self.beta * sum_all(d * d)

        own_V = own_terms(V)
        phi0 = self.grid.allsum(np.array([smooth_value(V) + own_V]))[0]

        def trial(omega):
            # argmin <grad, x> + (omega/2)||x - V||² + <Λ_own, g_own - x> + (beta/2)||g_own - x||²
            x = (omega * V - grad_next + lam_own + self.beta * g_own) / (omega + self.beta)
            d = x - V
            own_x = own_terms(x)
            # sufficient decrease of the linearised (smooth) part; the exact own terms sit on both sides
            phi, inner, dist = self.grid.allsum(np.array(
                [smooth_value(x) + own_x, sum_all(grad_next * d) + own_x - own_V, sum_all(d * d)]))
            return x, phi, inner, dist

        W = state.weights[l]
        scale = 0.25 if self.spec.activation == "sigmoid" else 1.0
        tau0 = start_tau(state.tau_V[l], lambda: self.omega * self.beta * scale ** 2 * power_iteration(
            lambda v: W.T @ (W @ v), W))
        x, tau, _ = backtracking(phi0, tau0, trial)
        if x is not None:
            state.a[l] = x
        state.tau_V[l] = tau
        if l < self.spec.n_layers - 1:  # keep the hidden pre-activation in step with the new input
            state.z[l] = state.weights[l] @ state.a[l] + state.biases[l][:, None]

    def _update_W(self, state, l):
        """[W_l b_l] for a hidden layer: linearised proximal step with backtracked ω.

        The trial step is ``W - D/(ω+μ)`` with ``D = μ W + G`` fixed for the whole search, so the
        trials need neither a product with the data nor a pass over W: the new pre-activation is
        ``pre - (D V)/(ω+μ) + (b_new - b)`` (``D V`` formed once) and the step's inner products and
        norms follow from five sums over ``W``, ``D``, ``G`` and the bias gradient taken once. (Splitting
        those sums over the ranks by rows was measured: no gain at 2 ranks, so they stay whole.)
        """
        W, b = state.weights[l], state.biases[l]
        g, pre = self._g(state, l)
        A = with_ones_row(state.a[l])
        grad_local = self._grad_pre(state, l, g, pre) @ A.T
        xp = namespace(W)
        value = xp.asarray([self._layer_terms(state, l, g)[0]], dtype=grad_local.dtype,
                           device=getattr(W, "device", None))
        reduced = self.grid.allsum_in_place(xp.concat([xp.reshape(grad_local, (-1,)), value]))
        grad = xp.reshape(reduced[:-1], grad_local.shape)
        G, g_b = grad[:, :-1], grad[:, -1]
        D = self.mu * W + G
        DV = D @ state.a[l]
        w_sq, d_sq, w_d, g_d, gb_sq = (sum_all(x * y) for x, y in ((W, W), (D, D), (W, D), (G, D), (g_b, g_b)))
        phi0 = float(reduced[-1]) + 0.5 * self.mu * w_sq

        def trial(omega):
            # argmin (mu/2)||W||² + <grad, Θ> + (omega/2)||Θ - Θ_k||²  (no decay on b)
            s = omega + self.mu
            db = -g_b / omega
            pre_new = pre - DV / s + db[:, None]
            g_new = self.spec.h.apply(pre_new)  # a hidden layer: _update_output solves the last one
            value = self.grid.allsum(np.array([self._layer_terms(state, l, g_new)[0]]))[0]
            decay_change = -2.0 * w_d / s + d_sq / s**2      # ||W_new||² - ||W||²
            value += 0.5 * self.mu * (w_sq + decay_change)
            inner = -g_d / s - gb_sq / omega + 0.5 * self.mu * decay_change
            return omega, value, inner, d_sq / s**2 + gb_sq / omega**2

        tau0 = start_tau(state.tau_W[l], lambda: self.omega * self.beta * float(self.n_total))
        omega, tau, _ = backtracking(phi0, tau0, trial)
        if omega is not None:
            state.weights[l] = W - D / (omega + self.mu)
            state.biases[l] = b - g_b / omega
        state.tau_W[l] = tau
        state.z[l] = state.weights[l] @ state.a[l] + state.biases[l][:, None]

    def step(self, state, Y, iteration):
        L = self.spec.n_layers
        self._update_output(state, Y)
        for l in reversed(range(L - 1)):   # hidden layer l: its output V = a[l+1], then W_l
            self._update_V(state, l + 1)
            self._update_W(state, l)
        for l in range(L):
            g, _ = self._g(state, l)
            target = state.z[-1] if l == L - 1 else state.a[l + 1]
            state.lam[l] += self.beta * (g - target)

    def end_of_iteration(self, state, metrics):
        """Fixed beta: the method's claim is stability without a schedule."""

    def local_metrics(self, state, Y):
        L = self.spec.n_layers
        out = {}
        al = 0.0
        for l in range(L):
            g, _ = self._g(state, l)
            value, _ = self._layer_terms(state, l, g)
            al += value
            target = state.z[-1] if l == L - 1 else state.a[l + 1]
            name = "residual_sq" if l == L - 1 else f"residual_activation_{l}_sq"
            out[name] = sum_all((g - target) ** 2)
        objective = self.spec.loss_fn.value(state.z[-1], Y)
        if self.grid.is_root:
            objective += 0.5 * self.mu * sum(sum_all(w * w) for w in state.weights)
        out["objective"] = objective
        out["augmented_lagrangian"] = objective + al
        return out
