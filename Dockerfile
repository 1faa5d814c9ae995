# admm-mpi with the MPICH runtime from PyPI, run as a non-root user.
#   docker build -t admm-mpi .
#   docker run --rm admm-mpi                      # admm-mpi --help
#   docker run --rm --entrypoint mpiexec admm-mpi -n 2 admm-mpi train
FROM python:3.11-slim

RUN useradd --create-home --uid 1000 admm
WORKDIR /home/admm/admm-mpi
COPY --chown=admm:admm . .
RUN pip install --no-cache-dir ".[mpich]"

USER admm
ENV OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 HYDRA_LAUNCHER=fork
ENTRYPOINT ["admm-mpi"]
CMD ["--help"]
