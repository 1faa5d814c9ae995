"""Activations ``h`` and the z-update of a hidden layer.

The hidden z-update of every solver has the form

    argmin_z  gamma * (a - h(z))**2 + beta * (z - m)**2        (element-wise)

(Taylor ADMM: ``gamma_l``, ``beta_l``; dlADMM: ``nu/2`` for both). Each activation provides the
exact minimiser where one exists.
"""

import numpy as np


def relu(z):
    return np.maximum(z, 0)


def relu_z_update(a, m, gamma, beta):
    """Exact minimiser of ``gamma*(a - relu(z))**2 + beta*(z - m)**2``, element-wise.

    Two branches: on ``z >= 0`` the objective is a quadratic with minimiser
    ``(gamma*a + beta*m)/(gamma + beta)`` clipped to ``z >= 0``; on ``z <= 0`` it is
    ``gamma*a**2 + beta*(z - m)**2`` with minimiser ``min(m, 0)``. Keep the lower objective.
    """
    z_pos = np.maximum((gamma * a + beta * m) / (gamma + beta), 0)
    z_neg = np.minimum(m, 0)
    f_pos = gamma * (a - z_pos) ** 2 + beta * (z_pos - m) ** 2
    f_neg = gamma * a**2 + beta * (z_neg - m) ** 2
    return np.where(f_pos <= f_neg, z_pos, z_neg)


class Activation:
    """An activation: ``apply(z)`` and ``z_update(a, m, gamma, beta)``."""

    def __init__(self, name, apply, z_update):
        self.name, self.apply, self.z_update = name, apply, z_update

    def __repr__(self):
        return f"Activation({self.name!r})"


ACTIVATIONS = {"relu": Activation("relu", relu, relu_z_update)}


def get_activation(name):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}") from None
