"""ADMM solvers: pure maths on this rank's columns, talking to other ranks only via the grid."""

from admm_mpi.solvers.dladmm import DLADMM
from admm_mpi.solvers.mdlam import MDLAM
from admm_mpi.solvers.minibatch_am import MiniBatchAM
from admm_mpi.solvers.pdadmm import PDADMM
from admm_mpi.solvers.sigmoid_admm import SigmoidADMM
from admm_mpi.solvers.taylor import TaylorADMM

SOLVERS = {"taylor": TaylorADMM, "dladmm": DLADMM, "pdadmm": PDADMM, "mdlam": MDLAM, "sigmoid_admm": SigmoidADMM,
           "minibatch_am": MiniBatchAM}


def get_solver(name):
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; choose from {sorted(SOLVERS)}") from None
