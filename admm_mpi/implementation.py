"""How the weight solves are carried out: choices that change speed, not the method.

A run's choices come from its settings (``--factor-dtype``, ``--no-spread-solve``,
``--no-kernel-form``, ``--no-spread-weight-step``), are recorded in its summary with the other
settings, and reach the solves through the grid (``grid.implementation``): every solve takes the
grid, so no module keeps a switch of its own. The defaults are the fastest measured; the others
stay for comparisons (``bench/phase_profile.py``, ``bench/speed_minibatch_am.py``,
``bench/factor_precision.py``).
"""

from dataclasses import dataclass

import numpy as np

FACTOR_DTYPES = ("auto", "float32", "float64")


@dataclass(frozen=True)
class Implementation:
    """The implementation choices of a run.

    Parameters
    ----------
    factor_dtype : {"auto", "float32", "float64"}
        dtype of the weight solves' Cholesky factorisations; ``"auto"``: the working dtype. A
        float32 factor whose condition estimate bounds the solve's relative error above
        ``FLOAT32_MAX_ERROR`` (:mod:`admm_mpi.ops.linalg`) is factored again in float64.
    spread_solve : bool
        Every rank solves its block of the rows of a weight solve, then an allgather; False: the
        root solves every row and broadcasts.
    kernel_form : bool
        A mini-batch narrower than a layer's input solves through the batch's n x n kernel matrix
        when that is fewer flops; False: always through the k x k Gram.
    spread_weight_step : bool
        The same as ``spread_solve`` for the gradient weight steps (dlADMM, mDLAM, sigmoid-ADMM).
    """

    factor_dtype: str = "auto"
    spread_solve: bool = True
    kernel_form: bool = True
    spread_weight_step: bool = True

    def factor_dtype_for(self, working):
        """The dtype to factor in, for arrays of dtype ``working``."""
        return np.dtype(working) if self.factor_dtype == "auto" else np.dtype(self.factor_dtype)


DEFAULT = Implementation()
