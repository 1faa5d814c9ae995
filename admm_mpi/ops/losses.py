"""Output losses, their values, predictions and the output z-update (a proximal step).

Every solver's output update is a proximal step

    argmin_z  loss(z, Y) + <lam, z> + beta * ||z - m||**2

(Taylor: Bregman multiplier ``lam``, penalty ``beta_L``; dlADMM: ``lam = u``, ``beta = rho/2``).
Targets ``Y`` are encoded once per run by ``Loss.targets`` (one-hot or 0/1 rows, samples as
columns) so the prox is pure element-wise/column-wise arithmetic.
"""

import numpy as np

from admm_mpi.backend import namespace


def hinge_prox(m, Y, lam, beta):
    """Element-wise minimiser of ``hinge(z, Y) + lam*z + beta*(z - m)**2`` for 0/1 targets ``Y``.

    ``hinge(z, 1) = max(1 - z, 0)`` (kink at 1, slopes -1 | 0) and ``hinge(z, 0) = max(z, 0)``
    (kink at 0, slopes 0 | 1). A convex piecewise quadratic: take the left piece's stationary
    point if it lies left of the kink, the right piece's if it lies right of it, else the kink.
    """
    xp = namespace(m, Y)
    kink = Y
    left = m - (lam - Y) / (2 * beta)        # stationary point with slope -Y left of the kink
    right = m - (lam + 1 - Y) / (2 * beta)   # stationary point with slope 1-Y right of it
    return xp.where(left < kink, left, xp.where(right > kink, right, kink))


def hinge_value(z, Y):
    xp = namespace(z, Y)
    return float(xp.sum(Y * xp.maximum(1 - z, 0.0) + (1 - Y) * xp.maximum(z, 0.0)))


def least_squares_prox(m, Y, lam, beta):
    """Minimiser of ``0.5*(z - Y)**2 + lam*z + beta*(z - m)**2``: ``(Y - lam + 2 beta m)/(1 + 2 beta)``."""
    return (Y - lam + 2 * beta * m) / (1 + 2 * beta)


def least_squares_value(z, Y):
    return float(0.5 * namespace(z, Y).sum((z - Y) ** 2))


def log_sum_exp(z):
    """Column-wise ``log(sum(exp(z)))``, shifted by the column maximum so it never overflows."""
    xp = namespace(z)
    top = xp.max(z, axis=0)
    return top + xp.log(xp.sum(xp.exp(z - top), axis=0))


def softmax(z):
    xp = namespace(z)
    e = xp.exp(z - xp.max(z, axis=0))
    return e / xp.sum(e, axis=0)


def cross_entropy_value(z, Y):
    """Softmax cross-entropy summed over columns: ``sum_j lse(z_j) - <Y_j, z_j>``."""
    xp = namespace(z, Y)
    return float(xp.sum(log_sum_exp(z)) - xp.sum(Y * z))


def cross_entropy_prox(m, Y, lam, beta, rtol=None, max_iter=60):
    """Column-wise minimiser of ``CE(z, Y) + <lam, z> + beta ||z - m||²``.

    Strongly convex and smooth: damped Newton from ``z = m``. The Hessian of a column,
    ``diag(p) - p pᵀ + 2 beta I`` (``p = softmax(z)``), is a diagonal plus a rank-one term, so
    the Newton direction costs O(classes) per column (Sherman-Morrison). Armijo backtracking per
    column keeps every step a descent step. A column stops once its Newton step is below
    ``rtol * (1 + ||z||)``: with quadratic convergence its remaining error is then far below
    rounding, so the result does not depend on where the iteration stopped (a serial and a
    distributed run agree to rounding even for tiny ``beta``).

    ``rtol`` (and the slack of the Armijo test) default to 1e-13 in float64, scaled by the working dtype's ``eps``
    (about 450 ``eps``). In float32 a fixed 1e-13 lies below the rounding of every step, so the
    iteration never stopped before ``max_iter`` and backtracked on rounding noise.
    """
    xp = namespace(m, Y)
    z = xp.asarray(m, copy=True)
    rounding = 1e-13 * float(xp.finfo(z.dtype).eps) / float(np.finfo(np.float64).eps)  # 5.4e-5 in float32
    rtol = rounding if rtol is None else rtol

    def column_objective(zz):
        return (log_sum_exp(zz) - xp.sum(Y * zz, axis=0) + xp.sum(lam * zz, axis=0)
                + xp.sum(beta * (zz - m) ** 2, axis=0))

    f = column_objective(z)
    active = xp.ones(z.shape[1], dtype=xp.bool)
    for _ in range(max_iter):
        p = softmax(z)
        g = p - Y + lam + 2 * beta * (z - m)
        D = p + 2 * beta
        Dg, Dp = g / D, p / D
        # Sherman-Morrison denominator 1 - sum p²/D written as sum 2 beta p / D: no cancellation
        # when p is nearly one-hot (saturated columns with small beta)
        direction = -(Dg + Dp * (xp.sum(p * Dg, axis=0) / xp.sum(2 * beta * Dp, axis=0)))
        size = xp.sqrt(xp.sum(direction * direction, axis=0))
        active &= size > rtol * (1 + xp.sqrt(xp.sum(z * z, axis=0)))
        if not bool(xp.any(active)):
            break
        slope = xp.sum(g * direction, axis=0)
        step = xp.ones_like(f)
        # near the minimum f changes by less than its rounding error, which scales with the
        # size of the terms that cancel in it (lse(z) - z_y), not with f itself
        slack = rounding * (xp.abs(f) + xp.sum(xp.abs(z), axis=0) + 1)
        for _ in range(30):  # Armijo: f(z + t d) <= f(z) + 1e-4 t <g, d>
            trial = z + step * direction
            f_trial = column_objective(trial)
            bad = active & (f_trial > f + 1e-4 * step * slope + slack)
            if not bool(xp.any(bad)):
                break
            step = xp.where(bad, 0.5 * step, step)
        z = xp.where(active, trial, z)
        f = xp.where(active, f_trial, f)
    return z


class Loss:
    """An output loss: target encoding, value, prox and prediction."""

    def __init__(self, name, value, prox, binary_output):
        self.name, self.value, self.prox = name, value, prox
        self.binary_output = binary_output

    def n_outputs(self, n_classes):
        return 1 if self.binary_output else n_classes

    def check_classes(self, n_classes):
        """Message if this loss cannot serve ``n_classes`` classes, else None."""
        if self.binary_output and n_classes != 2:
            return f"loss {self.name!r} needs exactly 2 classes, the data has {n_classes}"
        if n_classes < 2:
            return f"classification needs at least 2 classes, the data has {n_classes}"
        return None

    def targets(self, y, n_classes, dtype):
        """Targets as an ``outputs x n`` array: a 0/1 row (binary) or one-hot columns."""
        if self.binary_output:
            return np.asarray(y, dtype=dtype)[None, :]
        Y = np.zeros((n_classes, y.shape[0]), dtype=dtype)
        Y[y, np.arange(y.shape[0])] = 1
        return Y

    def predict(self, z):
        """Class labels from network outputs ``z`` (outputs x n)."""
        xp = namespace(z)
        if self.binary_output:
            return xp.astype(z[0, ...] > 0.5, xp.int64)
        return xp.argmax(z, axis=0)

    def __repr__(self):
        return f"Loss({self.name!r})"


LOSSES = {
    "binary_hinge": Loss("binary_hinge", hinge_value, hinge_prox, binary_output=True),
    "ova_hinge": Loss("ova_hinge", hinge_value, hinge_prox, binary_output=False),
    "least_squares": Loss("least_squares", least_squares_value, least_squares_prox, binary_output=False),
    "cross_entropy": Loss("cross_entropy", cross_entropy_value, cross_entropy_prox, binary_output=False),
}


def get_loss(name):
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}") from None
