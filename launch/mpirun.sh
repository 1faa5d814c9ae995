#!/usr/bin/env bash
# admm-mpi with mpirun/mpiexec outside a batch system.
#   launch/mpirun.sh RANKS [admm-mpi train flags]
# MPICH (the pip `mpich` wheel, Intel MPI):  mpiexec -n RANKS admm-mpi train …
# Open MPI:  mpirun -n RANKS --oversubscribe admm-mpi train …  (as root also --allow-run-as-root,
#            or OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1)
# Use the launcher of the MPI that mpi4py was built with: `admm-mpi info` names it.
set -euo pipefail
ranks=${1:?usage: launch/mpirun.sh RANKS [train flags]}; shift
cores=$(nproc)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( cores / ranks > 0 ? cores / ranks : 1 ))}
export OPENBLAS_NUM_THREADS=$OMP_NUM_THREADS
if mpiexec --version 2>&1 | grep -qi "open mpi"; then
  exec mpiexec -n "$ranks" --oversubscribe ${OMPI_EXTRA:-} admm-mpi train "$@"
else
  exec mpiexec -n "$ranks" admm-mpi train "$@"
fi
