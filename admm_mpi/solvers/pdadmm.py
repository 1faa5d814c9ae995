"""pdADMM (Wang et al., 2020; docs/design.md §4): layer-parallel ADMM, optionally quantised.

Every layer boundary is split into the output ``q_l`` of layer l and the input ``p_{l+1}`` of
layer l+1, tied by ``p_{l+1} = q_l`` with dual ``u_l`` and penalty ``rho``:

    R(z_L; y) + (nu/2) (sum_l ||z_l - W_l p_l - b_l||² + sum_{l<L} ||q_l - h(z_l)||²)
              + sum_{l<L} (u_lᵀ(p_{l+1} - q_l) + (rho/2)||p_{l+1} - q_l||²),      p_1 = X.

One iteration updates every layer at once (Jacobi), each from its own values and its neighbours'
values of the previous iteration, in phases:

1. ``p_l`` (l >= 2): backtracked gradient step on
   ``(nu/2)||z_l - W_l p - b_l||² + (rho/2)||p - (q_{l-1} - u_{l-1}/rho)||²``;
   then ``p_l`` goes back to the previous layer group;
2. ``W_l``, ``b_l``: gradient step (b minimised out, as in dlADMM) and exact ``b``;
3. ``z_l``: hidden layers ``argmin (nu/2)||z - m||² + (nu/2)||q_l - h(z)||² + (nu/2)||z - z_old||²``,
   i.e. the activation's z-update at ``(m + z_old)/2`` with weights ``nu/2`` (fit) and ``nu``
   (the two quadratics): the branch is chosen by the objective *with* the proximal term;
   output ``z_L``: the loss prox at ``m`` with weight ``nu/2``;
4. ``q_l = (rho p_{l+1} + u_l + nu h(z_l)) / (rho + nu)``; ``q_l`` goes forward to the next group;
5. ``u_l += rho (p_{l+1} - q_l)``.

Layers live on layer groups of a :class:`~admm_mpi.grid.ProcessGrid`; only the boundary ``p`` (back)
and ``q`` (forward) travel. ``u_l`` is kept by both groups of its boundary and updated by both
from the same numbers, so it never travels and its two copies stay bit-identical. With
``quantize = BITS`` every ``p`` and ``q`` is projected onto a uniform ``BITS``-bit grid (pdADMM-G-Q)
and boundary values travel as integer codes. Inside a layer group the samples are split over
its data shards and the weight steps use the transpose reduction of the other solvers.

Per-sample lists are indexed by global layer and hold ``None`` where this rank keeps nothing.
"""

from dataclasses import dataclass
from typing import ClassVar

from admm_mpi.backend import namespace, sum_all

from admm_mpi.errors import InputError
from admm_mpi.grid import ProcessGrid
from admm_mpi.ops.activations import proximal_z_update
from admm_mpi.solvers.common import activation_step, init_weights, weight_step
from admm_mpi.solvers.base import (FULL_BATCH_RUN_DEFAULTS, Solver, check_at_least, check_non_negative,
                                  check_positive, setting)
from admm_mpi.solvers.batches import MiniBatchParams

TAG_P, TAG_Q, TAG_FORWARD = 11, 12, 13


def layer_costs(widths):
    """Each layer's share of an iteration's work, for splitting the layers over layer groups: its
    weights and bias, ``(n_in + 1) * n_out`` (every product of a layer's updates, the W steps and
    the p, q and z updates, is with its W or Wᵀ)."""
    return [(n_in + 1) * n_out for n_in, n_out in zip(widths[:-1], widths[1:])]


@dataclass
class PDADMMState:
    # per-sample variables (columns of this rank); the rest is global
    sample_fields: ClassVar[tuple] = ("p", "z", "q", "u")
    weights: list      # W_l of the layers this rank owns, None elsewhere
    biases: list
    p: list            # p_l, l in [first, stop] (p_0 = X; p_stop is the next group's, received)
    z: list            # z_l, owned layers
    q: list            # q_l, l in [first - 1, stop) (q_{first-1} is the previous group's, received)
    u: list            # u_l on the same boundaries as q
    tau_W: list
    tau_p: list


@dataclass(frozen=True)
class PDADMMParams(MiniBatchParams):
    nu: float = setting(1.0, "penalty of the relaxed layer constraints")
    rho: float = setting(1.0, "penalty of the layer-boundary constraints")
    mu: float = setting(0.0, "weight decay (mu/2)||W||^2")
    w_steps: int = setting(5, "W steps per block on the same reduced statistics (paper: 1)")
    quantize: int = setting(0, "send boundary variables as BITS-bit codes (0: off; 8 as in pdADMM-G-Q)", "BITS")

    def validate(self):
        super().validate()
        check_positive(self, "rho")
        check_non_negative(self, "nu", "mu")
        check_at_least(self, 1, "w_steps")
        if self.quantize != 0 and not 2 <= self.quantize <= 16:
            raise InputError(f"quantize must be 0 (off) or 2..16 bits, got {self.quantize}")


class PDADMM(Solver):
    """pdADMM on this rank's layers and columns."""

    name = "pdadmm"
    layer_parallel = True
    Params = PDADMMParams
    default_loss = "cross_entropy"
    default_activation = "relu"
    run_defaults = FULL_BATCH_RUN_DEFAULTS

    def setup(self):
        if not isinstance(self.grid, ProcessGrid):
            self.grid = ProcessGrid(self.grid, 1)
        L = self.spec.n_layers
        if self.grid.groups > L:
            raise InputError(f"{self.grid.groups} layer groups for a network of {L} layers: "
                             "use at most one layer group per layer")
        self.first, self.stop = self.grid.layers(L, layer_costs(self.spec.widths))
        self._exchanges = {}

    @property
    def owned(self):
        return range(self.first, self.stop)

    @property
    def boundaries(self):
        """Boundaries ``l`` (``p_{l+1} = q_l``) whose ``q_l, u_l`` this rank keeps."""
        return range(max(self.first - 1, 0), min(self.stop, self.spec.n_layers - 1))

    def init_state(self, X, Y, rng):
        L = self.spec.n_layers
        weights, biases = init_weights(self.spec.widths, rng, X)  # same seed: same weights everywhere
        keep = set(self.owned)
        state = PDADMMState(
            weights=[w if l in keep else None for l, w in enumerate(weights)],
            biases=[b if l in keep else None for l, b in enumerate(biases)],
            p=None, z=None, q=None, u=None, tau_W=[None] * L, tau_p=[None] * L)
        self.fresh_codes(state, X)
        return state

    def fresh_codes(self, state, X):
        """Per-sample variables of ``X``'s columns from the (pipelined) forward pass; duals zero.

        Every boundary starts consistent: ``q_l = p_{l+1} = h(z_l)``, projected onto the
        quantisation grid when the exchange is quantised.
        """
        L = self.spec.n_layers
        inputs, pre, out = self._forward(state, X, keep=True)
        xp = namespace(X)
        state.p, state.z, state.q, state.u = [None] * L, [None] * L, [None] * (L - 1), [None] * (L - 1)
        for l in self.owned:
            state.p[l], state.z[l] = inputs[l], pre[l]
        if self.stop < L:
            state.p[self.stop] = out  # the next group's input, as this group sends it
        for l in self.boundaries:
            state.q[l] = xp.asarray(state.p[l + 1], copy=True)
            state.u[l] = xp.zeros_like(state.q[l])
        if self.quantize:
            for l in range(max(self.first, 1), min(self.stop + 1, L)):
                state.p[l] = self._project(state.p[l])
            for l in self.boundaries:
                state.q[l] = self._project(state.q[l])

    def _forward(self, state, X, keep=False):
        """The forward pass through the layer groups: each applies its layers to what the previous
        group sends (unquantised) and passes the result on.

        Returns ``(inputs, pre, out)``: with ``keep``, this group's layer inputs and pre-activations
        by layer (else empty), and the group's output (the network's output on the last group).
        """
        g, L = self.grid, self.spec.n_layers
        if g.prev_rank is None:
            a = X
        else:  # a copy: the exchange's buffers are reused by later passes
            a = namespace(X).asarray(self._exchange("forward").receive(self.spec.widths[self.first], X).wait(),
                                     copy=True)
        inputs, pre = {}, {}
        for l in self.owned:
            z = state.weights[l] @ a + state.biases[l][:, None]
            if keep:
                inputs[l], pre[l] = a, z
            a = self.spec.h.apply(z) if l < L - 1 else z
        if g.next_rank is not None:
            self._exchange("forward").send(a)[0].wait()
        return inputs, pre, a

    # -- exchanges with the neighbouring layer groups (planned once, on the grid) ------------------
    def _exchange(self, name):
        """The planned exchange ``name``: p goes back, q goes forward, the forward pass forward."""
        if name not in self._exchanges:
            to_next, tag, bits = {"p": (False, TAG_P, self.quantize), "q": (True, TAG_Q, self.quantize),
                                  "forward": (True, TAG_FORWARD, 0)}[name]
            self._exchanges[name] = self.grid.boundary_exchange(to_next, tag, bits)
        return self._exchanges[name]

    def _project(self, x):
        """``x`` on the quantisation grid of the exchanges (itself when they are not quantised)."""
        return self._exchange("q").project(x)

    # -- one iteration ----------------------------------------------------------------------------
    def step(self, state, Y, iteration):
        g, L, h = self.grid, self.spec.n_layers, self.spec.h
        nu, rho = self.nu, self.rho
        W, b, p, z, q, u = state.weights, state.biases, state.p, state.z, state.q, state.u
        like = z[self.first]

        # 1. p (from the previous q, u), then p_first goes back
        for l in range(max(self.first, 1), self.stop):
            p[l], state.tau_p[l] = activation_step(g.data, p[l], z[l], W[l], b[l], nu, q[l - 1] - u[l - 1] / rho,
                                                   rho, state.tau_p[l])
            if l != self.first or g.prev_rank is None:
                p[l] = self._project(p[l])
        sent_p = received_p = None
        if g.prev_rank is not None:
            sent_p, p[self.first] = self._exchange("p").send(p[self.first])
        if g.next_rank is not None:
            received_p = self._exchange("p").receive(self.spec.widths[self.stop], like)

        # 2.-3. W, b, z of every owned layer, while the p exchange is in flight
        for l in self.owned:
            W[l], b[l], state.tau_W[l] = weight_step(g.data, p[l], z[l], W[l], b[l], nu, self.mu, state.tau_W[l],
                                                     bias_first=False, center=True, steps=self.w_steps)
            m = W[l] @ p[l] + b[l][:, None]
            if l == L - 1:
                z[l] = self.spec.loss_fn.prox(m, Y, 0.0, nu / 2)
            else:
                z[l] = proximal_z_update(h, q[l], m, z[l], nu)
        if sent_p is not None:
            sent_p.wait()
        if received_p is not None:
            p[self.stop] = received_p.wait()

        # 4. q (from the new p), then q_{stop-1} goes forward
        for l in range(self.first, min(self.stop, L - 1)):
            q[l] = (rho * p[l + 1] + u[l] + nu * h.apply(z[l])) / (rho + nu)
            if l != self.stop - 1 or g.next_rank is None:
                q[l] = self._project(q[l])
        sent_q = received_q = None
        if g.next_rank is not None:
            sent_q, q[self.stop - 1] = self._exchange("q").send(q[self.stop - 1])
        if g.prev_rank is not None:
            received_q = self._exchange("q").receive(self.spec.widths[self.first], like)
        if sent_q is not None:
            sent_q.wait()
        if received_q is not None:
            q[self.first - 1] = received_q.wait()

        # 5. u on every boundary this rank keeps (both sides compute the same numbers)
        for l in self.boundaries:
            u[l] = u[l] + rho * (p[l + 1] - q[l])

    # -- checkpoints: which entries of the state are this rank's ----------------------------------
    def owns(self, name, index, per_sample):
        """Whether this rank's value of ``name[index]`` is the one a checkpoint stores: its layer
        group's layers, per-sample entries by every data shard (its columns), global ones by shard 0."""
        if index is None:
            return self.grid.is_root
        L = self.spec.n_layers
        mine = self.first <= index < (min(self.stop, L - 1) if name in ("q", "u") else self.stop)
        return mine if per_sample else mine and self.grid.shard == 0

    def needs(self, name, index):
        """Whether this rank keeps ``name[index]`` (its layers, plus the neighbours' boundary copies)."""
        if index is None:
            return True
        if name == "p":
            return self.first <= index <= self.stop and index < self.spec.n_layers
        if name in ("q", "u"):
            return index in self.boundaries
        return self.first <= index < self.stop

    # -- outputs -------------------------------------------------------------------------------------
    def outputs(self, state, X):
        """The network's outputs for this rank's columns ``X`` on the last layer group, None on the
        others (a pipelined forward pass of ``state.weights``, ``state.biases``: every rank calls it)."""
        _, _, out = self._forward(state, X)
        return out if self.grid.next_rank is None else None

    def full_model(self, state):
        """All layers' ``(weights, biases)`` on the world root (None elsewhere)."""
        g = self.grid
        if g.groups == 1:
            return state.weights, state.biases
        mine = {l: (state.weights[l], state.biases[l]) for l in self.owned} if g.shard == 0 else {}
        parts = g.world.gather_to_root(mine)
        if not g.is_root:
            return None, None
        layers = {l: wb for part in parts for l, wb in part.items()}
        return [layers[l][0] for l in range(self.spec.n_layers)], [layers[l][1] for l in range(self.spec.n_layers)]

    # -- diagnostics --------------------------------------------------------------------------------
    def local_metrics(self, state, Y):
        """This rank's sums over its layers and columns (every rank lists every layer's keys)."""
        h, L = self.spec.h.apply, self.spec.n_layers
        W, b, p, z, q, u = state.weights, state.biases, state.p, state.z, state.q, state.u
        out = {}
        linear = activation = coupling = lagrange = loss = weight_sq = 0.0
        for l in range(L):
            lin = act = coup = 0.0
            if l in self.owned:
                lin = sum_all((z[l] - W[l] @ p[l] - b[l][:, None]) ** 2)
                if self.grid.data.is_root:  # weights are global in the group: count once
                    weight_sq += sum_all(W[l] * W[l])
                if l < L - 1:
                    act = sum_all((q[l] - h(z[l])) ** 2)
                    r = p[l + 1] - q[l]
                    coup = sum_all(r * r)
                    lagrange += sum_all(u[l] * r)
                else:
                    loss = self.spec.loss_fn.value(z[l], Y)
            out[f"residual_linear_{l}_sq"] = lin
            if l < L - 1:
                out[f"residual_activation_{l}_sq"], out[f"residual_coupling_{l}_sq"] = act, coup
            linear, activation, coupling = linear + lin, activation + act, coupling + coup
        objective = loss + 0.5 * self.nu * (linear + activation) + 0.5 * self.mu * weight_sq
        out["objective"] = objective
        out["augmented_lagrangian"] = objective + lagrange + 0.5 * self.rho * coupling
        out["residual_sq"] = coupling
        return out
