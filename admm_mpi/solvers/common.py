"""Pieces every solver's state shares: initial weights and the forward pass that fills a and z."""

import numpy as np


def init_weights(widths, rng, dtype):
    """He-normal weights and zero biases, drawn from ``rng``.

    Every rank draws from the same seed, so the weights start identical without communication.
    """
    weights, biases = [], []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        weights.append((rng.standard_normal((n_out, n_in)) * np.sqrt(2.0 / n_in)).astype(dtype))
        biases.append(np.zeros(n_out, dtype=dtype))
    return weights, biases


def forward_states(weights, biases, X, h):
    """Pre-activations ``z_l`` and activations ``a_l`` of every layer (``a[0] = X``)."""
    a, z = [X], []
    for layer, (W, b) in enumerate(zip(weights, biases)):
        z.append(W @ a[-1] + b[:, None])
        if layer < len(weights) - 1:
            a.append(h(z[-1]))
    return a, z
