"""Uniform quantisation of exchanged boundary variables (pdADMM-G-Q, DESIGN.md §3).

A tensor is mapped onto ``2**bits`` evenly spaced levels between its minimum ``lo`` and maximum
``hi``: ``code = rint((x - lo) / scale)``, ``x̂ = lo + code * scale``. Rounding finds the nearest
level in O(size) — no search over the levels — and only the integer codes plus ``(lo, scale)``
travel on the wire. Sender and receiver both use ``x̂ = decode(encode(x))``, so the two copies of a
boundary variable stay bit-identical.
"""

import numpy as np


def code_dtype(bits):
    """Smallest unsigned integer type that holds ``bits``-bit codes."""
    if not 1 <= bits <= 16:
        raise ValueError(f"quantisation needs 1..16 bits, got {bits}")
    return np.uint8 if bits <= 8 else np.uint16


def uniform_levels(lo, hi, bits, dtype):
    """``(lo, scale)`` of the grid with ``2**bits`` levels spanning ``[lo, hi]`` (as ``dtype``)."""
    lo, hi = dtype.type(lo), dtype.type(hi)
    scale = (hi - lo) / dtype.type(2**bits - 1)
    if not scale > 0:  # a constant tensor: every code is 0, any positive scale decodes it exactly
        scale = dtype.type(1)
    return np.array([lo, scale], dtype=dtype)


def encode(x, levels, bits):
    """Integer codes of the levels nearest to ``x`` (values outside ``[lo, hi]`` clip to the ends)."""
    lo, scale = levels
    codes = np.rint((x - lo) / scale)
    np.clip(codes, 0, 2**bits - 1, out=codes)
    return codes.astype(code_dtype(bits))


def decode(codes, levels, dtype):
    """The values ``lo + code * scale`` the codes stand for."""
    lo, scale = levels
    return (lo + codes.astype(dtype) * scale).astype(dtype, copy=False)
