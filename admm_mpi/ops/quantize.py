"""Uniform quantisation of exchanged boundary variables (pdADMM-G-Q; docs/design.md §4).

A tensor is mapped onto ``2**bits`` evenly spaced levels between its minimum ``lo`` and maximum
``hi``: ``code = rint((x - lo) / scale)``, ``x̂ = lo + code * scale``. Rounding finds the nearest
level in O(size) — no search over the levels — and only the integer codes plus ``(lo, scale)``
travel on the wire. Sender and receiver both use ``x̂ = decode(encode(x))``, so the two copies of a
boundary variable stay bit-identical.
"""

import numpy as np

from admm_mpi.backend import dtype_name, namespace


def code_dtype(bits):
    """Smallest unsigned integer type that holds ``bits``-bit codes."""
    if not 1 <= bits <= 16:
        raise ValueError(f"quantisation needs 1..16 bits, got {bits}")
    return np.uint8 if bits <= 8 else np.uint16


def uniform_levels(lo, hi, bits, dtype):
    """``(lo, scale)`` of the grid with ``2**bits`` levels spanning ``[lo, hi]``, as a host array of
    ``dtype`` (numpy's of the same name): it travels beside the codes."""
    dtype = np.dtype(dtype_name(dtype))
    lo, hi = dtype.type(lo), dtype.type(hi)
    scale = (hi - lo) / dtype.type(2**bits - 1)
    if not scale > 0:  # a constant tensor: every code is 0, any positive scale decodes it exactly
        scale = dtype.type(1)
    return np.array([lo, scale], dtype=dtype)


def encode(x, levels, bits):
    """Integer codes of the levels nearest to ``x`` (values outside ``[lo, hi]`` clip to the ends)."""
    xp = namespace(x)
    lo, scale = float(levels[0]), float(levels[1])
    codes = xp.clip(xp.round((x - lo) / scale), min=0.0, max=float(2**bits - 1))
    return xp.astype(codes, getattr(xp, np.dtype(code_dtype(bits)).name))


def decode(codes, levels, dtype):
    """The values ``lo + code * scale`` the codes stand for."""
    xp = namespace(codes)
    dtype = getattr(xp, dtype_name(dtype))
    return float(levels[0]) + xp.astype(codes, dtype) * float(levels[1])
