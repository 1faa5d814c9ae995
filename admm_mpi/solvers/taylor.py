"""Taylor et al. (2016) ADMM with Bregman iteration on the output layer (docs/design.md §2).

Minimises, over weights ``W_l, b_l``, activations ``a_l`` and pre-activations ``z_l``,

    loss(z_L, Y) + <z_L, lam> + beta ||z_L - W_L a_{L-1} - b_L||²
        + sum_{l<L} gamma ||a_l - h(z_l)||² + beta ||z_l - W_l a_{l-1} - b_l||²

One iteration, layers in order: ``W_l`` by transpose reduction (the only communication),
``a_l`` by one small SPD solve applied to every local column, ``z_l`` element-wise; then the
output ``W_L``, ``z_L`` (loss prox) and, after the warm start, the Bregman update of ``lam``.
Biases are the last column of ``[W | b]`` acting on ``[a; 1]``.
"""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from admm_mpi.backend import namespace, sum_all

from admm_mpi.ops.blocks import blas_threads, for_each_block
from admm_mpi.ops.linalg import activation_solver, transpose_reduce_weights
from admm_mpi.solvers.common import forward_states, init_weights
from admm_mpi.solvers.base import (FULL_BATCH_RUN_DEFAULTS, Solver, SolverParams, check_non_negative,
                                  check_positive, setting)


@dataclass
class TaylorState:
    # per-sample variables (columns of this rank); the rest is global
    sample_fields: ClassVar[tuple] = ("a", "z", "m", "lam")
    weights: list   # W_l, n_l x n_{l-1}, identical on every rank
    biases: list    # b_l, n_l
    a: list         # a_0 = X, a_1 .. a_{L-1}   (local columns)
    z: list         # z_1 .. z_L                 (local columns)
    m: list         # W_l a_{l-1} + b_l, kept from the last z-update for the objective
    lam: np.ndarray  # Bregman multiplier of the output layer (local columns)


@dataclass(frozen=True)
class TaylorParams(SolverParams):
    beta: float = setting(1.0, "penalty on the linear constraints z = W a + b")
    gamma: float = setting(1.0, "penalty on a = h(z)")
    ridge: float = setting(5e-5, "weight ridge per sample (ridge * N is added to the Gram matrix)")
    warm_start: int = setting(5, "iterations before the Bregman updates start")

    def validate(self):
        check_positive(self, "beta", "gamma")
        check_non_negative(self, "ridge", "warm_start")


class TaylorADMM(Solver):
    """Taylor ADMM on this rank's columns; ``grid`` supplies the transpose reduction.

    Parameters
    ----------
    spec : ModelSpec
    grid : Grid
    n_total : int
        Number of training samples over all ranks (the ridge is scaled with it).
    beta, gamma : float
        Penalties on ``z = W a + b`` and ``a = h(z)``.
    ridge : float
        Weight-solve regulariser per sample: ``eps = ridge * n_total`` is added to the Gram
        matrix. A real regulariser, not only numerical safety (docs/design.md §11).
    warm_start : int
        Iterations run with ``lam`` frozen at 0 before the Bregman updates begin.
    """

    name = "taylor"
    Params = TaylorParams
    default_loss = "least_squares"
    default_activation = "relu"
    run_defaults = FULL_BATCH_RUN_DEFAULTS

    def setup(self):
        self.eps = self.ridge * self.n_total

    def init_state(self, X, Y, rng):
        weights, biases = init_weights(self.spec.widths, rng, X)
        state = TaylorState(weights, biases, None, None, None, None)
        self.fresh_codes(state, X)
        return state

    def fresh_codes(self, state, X):
        """Per-sample variables of ``X``'s columns from the forward pass of the current weights:
        ``m = z`` (every constraint holds) and the Bregman multiplier at 0."""
        with self.grid.timer.phase("forward codes"):
            state.a, state.z = forward_states(state.weights, state.biases, X, self.spec.h.apply)
        state.m = [namespace(zl).asarray(zl, copy=True) for zl in state.z]
        state.lam = namespace(state.z[-1]).zeros_like(state.z[-1])

    def step(self, state, Y, iteration):
        """One ADMM iteration (``iteration`` counts from 1)."""
        beta, gamma, h = self.beta, self.gamma, self.spec.h
        W, b, a, z, m = state.weights, state.biases, state.a, state.z, state.m
        L = self.spec.n_layers
        threads = blas_threads()
        for l in range(L - 1):  # hidden layer l+1 in the paper's numbering
            W[l], b[l] = transpose_reduce_weights(self.grid, a[l], z[l], self.eps)
            solve = activation_solver(W[l + 1], beta, gamma, self.grid, n_columns=self.n_total)  # blocks: one way

            def hidden_block(cols, l=l, solve=solve):
                # a_{l+1} from the old z_{l+1} and z_l, then m_l and z_l: column-separable
                a[l + 1][:, cols] = solve(z[l + 1][:, cols] - b[l + 1][:, None], h.apply(z[l][:, cols]))
                m_block = W[l] @ a[l][:, cols]
                m_block += b[l][:, None]
                m[l][:, cols] = m_block
                z[l][:, cols] = h.z_update(a[l + 1][:, cols], m_block, gamma, beta)

            for_each_block(hidden_block, a[l].shape[1], threads)
        W[-1], b[-1] = transpose_reduce_weights(self.grid, a[-1], z[-1], self.eps)
        bregman = iteration > self.warm_start

        def output_block(cols):
            m_block = W[-1] @ a[-1][:, cols]
            m_block += b[-1][:, None]
            m[-1][:, cols] = m_block
            z[-1][:, cols] = self.spec.loss_fn.prox(m_block, Y[:, cols], state.lam[:, cols], beta)
            if bregman:
                state.lam[:, cols] += beta * (z[-1][:, cols] - m_block)

        for_each_block(output_block, a[-1].shape[1], threads)

    def local_metrics(self, state, Y):
        """This rank's sums: the objective and the squared output residual."""
        h = self.spec.h.apply
        z, m, a = state.z, state.m, state.a
        total = self.spec.loss_fn.value(z[-1], Y) + sum_all(state.lam * z[-1])
        residual_sq = sum_all((z[-1] - m[-1]) ** 2)
        total += self.beta * residual_sq
        for l in range(self.spec.n_layers - 1):
            total += self.gamma * sum_all((a[l + 1] - h(z[l])) ** 2)
            total += self.beta * sum_all((z[l] - m[l]) ** 2)
        return {"objective": total, "residual_sq": residual_sq}

    def end_of_iteration(self, state, metrics):
        """Taylor ADMM has no adaptive schedule (the warm start is fixed)."""
