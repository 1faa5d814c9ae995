"""Activations ``h`` and the z-update of a hidden layer.

The hidden z-update of every solver has the form

    argmin_z  gamma * (a - h(z))**2 + beta * (z - m)**2        (element-wise)

(Taylor ADMM: ``gamma_l``, ``beta_l``; dlADMM: ``nu/2`` for both). Piecewise-linear activations
(ReLU, leaky ReLU, hard tanh) have an exact minimiser: the best of the per-piece quadratic
minimisers. Smooth activations (sigmoid, tanh) use a safeguarded scalar solver: the minimiser
lies within ``sqrt(gamma/beta) |a - h(m)|`` of ``m`` (because ``beta (z*-m)² <= f(z*) <= f(m)``),
so a coarse grid on that interval picks the basin and a bracketed Newton/bisection polishes it.

Each activation also gives ``inverse_box(lo, hi)``: the interval of ``z`` with
``lo <= h(z) <= hi`` (mDLAM's box constraint), as ``(z_lo, z_hi)`` arrays.
"""

import math

from admm_mpi.backend import namespace

INF = math.inf


# ---- piecewise-linear activations: exact z-update ---------------------------------------------
def piecewise_linear_z_update(a, m, gamma, beta, pieces):
    """Exact minimiser of ``gamma*(a - h(z))**2 + beta*(z - m)**2`` for piecewise-linear ``h``.

    ``pieces`` lists ``(lo, hi, slope, intercept)``: ``h(z) = slope*z + intercept`` on
    ``[lo, hi]``. On each piece the objective is a quadratic whose minimiser is
    ``(gamma*slope*(a - intercept) + beta*m) / (gamma*slope**2 + beta)`` clipped to the piece;
    the answer is the piece minimiser with the lowest objective (ties go to the first piece).
    """
    xp = namespace(a, m)
    best_z = best_f = None
    for lo, hi, slope, intercept in pieces:
        z = (gamma * slope * (a - intercept) + beta * m) / (gamma * slope**2 + beta)
        z = xp.clip(z, min=lo if lo > -INF else None, max=hi if hi < INF else None)
        f = gamma * (a - slope * z - intercept) ** 2 + beta * (z - m) ** 2
        if best_z is None:
            best_z, best_f = z, f
        else:
            better = f < best_f
            best_z = xp.where(better, z, best_z)
            best_f = xp.where(better, f, best_f)
    return best_z


RELU_PIECES = ((-INF, 0.0, 0.0, 0.0), (0.0, INF, 1.0, 0.0))
HARD_TANH_PIECES = ((-INF, -1.0, 0.0, -1.0), (-1.0, 1.0, 1.0, 0.0), (1.0, INF, 0.0, 1.0))


def leaky_relu_pieces(slope):
    return ((-INF, 0.0, slope, 0.0), (0.0, INF, 1.0, 0.0))


def relu(z):
    return namespace(z).maximum(z, 0.0)


def relu_z_update(a, m, gamma, beta):
    """ReLU z-update: ``p = (gamma a + beta m)/(gamma + beta)`` if ``p > 0`` and it is better, else ``min(m, 0)``.

    The same answer as :func:`piecewise_linear_z_update` with the two ReLU pieces, in closed
    form and with few temporaries (it runs on every hidden element every iteration): on the
    positive piece the objective at ``p`` is ``gamma beta (a - m)² / (gamma + beta)``, on the
    negative piece it is ``gamma a² + beta max(m, 0)²``; ties go to the negative piece.
    """
    xp = namespace(a, m)
    total = gamma + beta
    p = gamma * a
    p += beta * m
    p /= total
    f_plus = a - m
    f_plus *= f_plus
    f_plus *= gamma * beta / total
    m_pos = xp.maximum(m, 0.0)
    m_pos *= m_pos
    m_pos *= beta
    f_minus = a * a
    f_minus *= gamma
    f_minus += m_pos
    take_p = f_plus < f_minus
    take_p &= p > 0
    return xp.where(take_p, p, xp.minimum(m, 0.0))


def proximal_z_update(activation, a, m, z_old, weight):
    """pdADMM's hidden z-update: ``argmin (w/2)(z - m)² + (w/2)(a - h(z))² + (w/2)(z - z_old)²``.

    The two quadratics in ``z`` merge into ``w (z - (m + z_old)/2)²``, so this is the plain
    z-update at the midpoint with weights ``w/2`` (fit of ``a``) and ``w``. For ReLU the two
    branches are ``min((m + z_old)/2, 0)`` and ``max((m + z_old + a)/3, 0)``, and the better one is
    chosen by this whole objective — proximal term included (the published code drops it from
    the comparison and picks the wrong branch for a sizeable share of the elements).
    """
    return activation.z_update(a, 0.5 * (m + z_old), 0.5 * weight, weight)


# ---- smooth activations: safeguarded scalar solver --------------------------------------------
def smooth_z_update(a, m, gamma, beta, h, dh, d2h, n_grid=33, n_polish=40):
    """Global minimiser of ``gamma*(a - h(z))**2 + beta*(z - m)**2`` for smooth bounded ``h``.

    1. The minimiser lies in ``[m - r, m + r]``, ``r = sqrt(gamma/beta)|a - h(m)|``.
    2. A grid of ``n_grid`` points on it picks the best basin ``[z_{k-1}, z_{k+1}]``.
    3. Newton steps on ``f'`` inside that bracket, falling back to bisection whenever a step
       leaves the bracket or the curvature is not positive; the bracket shrinks every step.
    """
    xp = namespace(a, m)
    a, m = xp.broadcast_arrays(a, m)  # gamma, beta: numbers or arrays of the same shape

    def f(z):
        return gamma * (a - h(z)) ** 2 + beta * (z - m) ** 2

    def df(z):
        return 2 * beta * (z - m) - 2 * gamma * (a - h(z)) * dh(z)

    def d2f(z):
        return 2 * beta + 2 * gamma * (dh(z) ** 2 - (a - h(z)) * d2h(z))

    r = (gamma / beta) ** 0.5 * xp.abs(a - h(m)) + 1e-12
    best_z, best_f = xp.asarray(m, copy=True), f(m)
    for k in range(n_grid):  # a loop over grid points keeps memory at the size of the input
        zk = m + (-1.0 + 2.0 * k / (n_grid - 1)) * r
        fk = f(zk)
        better = fk < best_f
        best_z, best_f = xp.where(better, zk, best_z), xp.where(better, fk, best_f)
    step = 2 * r / (n_grid - 1)
    lo = xp.maximum(best_z - step, m - r)
    hi = xp.minimum(best_z + step, m + r)
    z = best_z
    for _ in range(n_polish):
        g = df(z)
        # keep the bracket around the stationary point: f' < 0 left of it, > 0 right of it
        lo = xp.where(g < 0, z, lo)
        hi = xp.where(g > 0, z, hi)
        curvature = d2f(z)
        newton = z - g / xp.where(curvature > 0, curvature, 1.0)
        ok = (curvature > 0) & (newton > lo) & (newton < hi)
        z_next = xp.where(ok, newton, 0.5 * (lo + hi))
        z_next = xp.where(g == 0, z, z_next)
        if bool(xp.all(xp.abs(z_next - z) <= 1e-15 * (1 + xp.abs(z)))):
            z = z_next
            break
        z = z_next
    # never return something worse than the best grid point (e.g. a bracket edge minimum)
    return xp.where(f(z) <= best_f, z, best_z)


def sigmoid(z):
    # written with exp(-|z|) so large |z| neither overflows nor loses precision
    xp = namespace(z)
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _dsigmoid(z):
    s = sigmoid(z)
    return s * (1 - s)


def _d2sigmoid(z):
    s = sigmoid(z)
    return s * (1 - s) * (1 - 2 * s)


def _tanh(z):
    return namespace(z).tanh(z)


def _dtanh(z):
    return 1 - namespace(z).tanh(z) ** 2


def _d2tanh(z):
    t = namespace(z).tanh(z)
    return -2 * t * (1 - t**2)


def _atanh(y):
    xp = namespace(y)
    y = xp.clip(y, min=-1.0, max=1.0)
    # atanh(±1) = ±inf exactly (numpy's arctanh warns there)
    safe = xp.atanh(xp.where(xp.abs(y) < 1, y, 0.0))
    return xp.where(xp.abs(y) < 1, safe, xp.where(y > 0, INF, -INF))


def _logit(p):
    xp = namespace(p)
    p = xp.clip(p, min=0.0, max=1.0)
    inside = (p > 0) & (p < 1)
    q = xp.where(inside, p, 0.5)
    return xp.where(inside, xp.log(q) - xp.log1p(-q), xp.where(p >= 1, INF, -INF))


def _leaky_relu(z):
    return namespace(z).where(z >= 0, z, LEAKY_SLOPE * z)


def _hard_tanh(z):
    return namespace(z).clip(z, min=-1.0, max=1.0)


def _relu_box(lo, hi):
    xp = namespace(lo, hi)
    return xp.where(lo > 0, lo, -INF), xp.where(hi >= 0, hi, -INF)


def _leaky_relu_box(lo, hi):
    xp = namespace(lo, hi)
    return xp.where(lo >= 0, lo, lo / LEAKY_SLOPE), xp.where(hi >= 0, hi, hi / LEAKY_SLOPE)


def _hard_tanh_box(lo, hi):
    xp = namespace(lo, hi)
    return (xp.where(lo > -1, xp.where(lo > 1, INF, lo), -INF),
            xp.where(hi < 1, xp.where(hi < -1, -INF, hi), INF))


def _indicator(condition, dtype):
    return namespace(condition).astype(condition, dtype)


# ---- registry ---------------------------------------------------------------------------------
class Activation:
    """An activation: ``apply(z)``, ``z_update(a, m, gamma, beta)``, ``inverse_box(lo, hi)``."""

    def __init__(self, name, apply, z_update, inverse_box, derivative=None):
        self.name, self.apply, self.z_update, self.inverse_box = name, apply, z_update, inverse_box
        self.derivative = derivative

    def __repr__(self):
        return f"Activation({self.name!r})"


def _piecewise(name, apply, pieces, inverse_box, derivative):
    return Activation(name, apply, lambda a, m, g, b: piecewise_linear_z_update(a, m, g, b, pieces),
                      inverse_box, derivative)


def _smooth(name, apply, dh, d2h, inverse_box):
    return Activation(name, apply, lambda a, m, g, b: smooth_z_update(a, m, g, b, apply, dh, d2h),
                      inverse_box, dh)


LEAKY_SLOPE = 0.01

ACTIVATIONS = {
    "relu": Activation("relu", relu, relu_z_update, _relu_box, lambda z: _indicator(z > 0, z.dtype)),
    "leaky_relu": _piecewise(
        "leaky_relu", _leaky_relu, leaky_relu_pieces(LEAKY_SLOPE), _leaky_relu_box,
        lambda z: _indicator(z >= 0, z.dtype) * (1 - LEAKY_SLOPE) + LEAKY_SLOPE),
    "hard_tanh": _piecewise(
        "hard_tanh", _hard_tanh, HARD_TANH_PIECES, _hard_tanh_box,
        lambda z: _indicator(namespace(z).abs(z) < 1, z.dtype)),
    "sigmoid": _smooth("sigmoid", sigmoid, _dsigmoid, _d2sigmoid, lambda lo, hi: (_logit(lo), _logit(hi))),
    "tanh": _smooth("tanh", _tanh, _dtanh, _d2tanh, lambda lo, hi: (_atanh(lo), _atanh(hi))),
}


def get_activation(name):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}") from None
