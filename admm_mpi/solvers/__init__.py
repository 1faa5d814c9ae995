"""ADMM solvers: pure maths on this rank's columns, talking to other ranks only via the grid."""

from admm_mpi.solvers.taylor import TaylorADMM

SOLVERS = {"taylor": TaylorADMM}


def get_solver(name):
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; choose from {sorted(SOLVERS)}") from None
