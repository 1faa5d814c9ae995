# admm-mpi with the MPICH runtime from PyPI, run as a non-root user.
#   docker build -t admm-mpi .
#   docker run --rm admm-mpi                      # admm-mpi --help
#   docker run --rm --entrypoint mpiexec admm-mpi -n 2 admm-mpi train --out /tmp/run
FROM python:3.11-slim

RUN useradd --create-home --uid 1000 admm
WORKDIR /home/admm/admm-mpi
COPY --chown=1000:1000 . .
# The package itself, from this checkout, with the same extras as the README's Docker section.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[mpich]"

USER 1000:1000
ENV OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 HYDRA_LAUNCHER=fork
ENTRYPOINT ["admm-mpi"]
CMD ["--help"]
