"""ADMM solvers: pure maths on this rank's columns, talking to other ranks only via the grid."""

from admm_mpi.solvers.base import SOLVERS, Solver, SolverParams, register, setting
from admm_mpi.solvers.batches import FULL_BATCH, BatchSize, MiniBatchMode, MiniBatchParams
from admm_mpi.solvers.dladmm import DLADMM
from admm_mpi.solvers.mdlam import MDLAM
from admm_mpi.solvers.minibatch_am import MiniBatchAM
from admm_mpi.solvers.pdadmm import PDADMM
from admm_mpi.solvers.sigmoid_admm import SigmoidADMM
from admm_mpi.solvers.taylor import TaylorADMM

for _cls in (TaylorADMM, DLADMM, PDADMM, MDLAM, SigmoidADMM, MiniBatchAM):
    register(_cls)
DEFAULT_SOLVER = MiniBatchAM.name  # chosen on the public suite by validation accuracy (bench/results/suite.md)

__all__ = ["DEFAULT_SOLVER", "SOLVERS", "Solver", "SolverParams", "MiniBatchParams", "setting", "register", "get_solver",
           "make_solver"]


def get_solver(name):
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; choose from {sorted(SOLVERS)}") from None


def make_solver(name, spec, grid, n_total, params):
    """The solver ``name`` with ``params`` (its settings by name); in its mini-batch mode when its
    ``Params`` have that mode (:class:`MiniBatchParams`) and ``batch_size`` is not ``"full"``."""
    cls = get_solver(name)
    if not issubclass(cls.Params, MiniBatchParams):  # no mini-batch mode, or its own (minibatch_am)
        return cls(spec, grid, n_total, **params)
    params = dict(params)
    batch_size, sweeps = params.pop("batch_size"), params.pop("batch_sweeps")
    solver = cls(spec, grid, n_total, **params)
    if batch_size == FULL_BATCH:
        return solver
    return MiniBatchMode(solver, BatchSize.columns(batch_size, n_total), sweeps)
