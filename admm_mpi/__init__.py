"""admm-mpi: train fully connected networks by ADMM instead of backpropagation, over MPI.

Layout of the package (one job per module):

Entry points

- ``cli``         the ``admm-mpi`` command (``python -m admm_mpi`` runs it: ``__main__``)
- ``estimator``   scikit-learn estimators ``ADMMClassifier`` and ``ADMMRegressor``

Training

- ``train``       the training loop: setup, iteration, decision, evaluation, checkpoint policy
- ``config``      ``TrainConfig``: every setting, its defaults and help, TOML/environment/CLI precedence
- ``model``       network spec, forward pass, prediction, model files
- ``solvers``     the ADMM algorithms as pure maths on local arrays, the ``Solver`` contract, the registry
- ``ops``         activations, losses and their proximal steps, weight solves, backtracking, quantisation
- ``stopping``    stop requests (signals on any rank) combined over the ranks
- ``checkpoint``  sharded checkpoints: per-rank parts, manifest commit, verification, re-sharded load
- ``rundir``      the run directory: created, checked and locked by the root for the job's life
- ``tune``        ``admm-mpi tune``: a search over groups of ranks, Optuna driven by a coordinator on rank 0
- ``search_space`` search spaces in TOML (ranges, choices, conditionals), checked before any training;
                  ``spaces`` holds the built-in space of each solver

Data

- ``data``        HDF5 datasets, each rank reading only its own slab of rows; the validation split
- ``convert``     NPZ, CSV, LIBSVM, IDX and HDF5 to the admm-mpi HDF5 format, in chunks
- ``tables``      users' tables (CSV, TSV, Parquet, DataFrames) encoded as float features
- ``graph``       graph-augmented inputs for pdADMM-G
- ``files``       one-line read/write errors, room checked before HDF5 writes

Parallel machinery

- ``grid``        the process grids (data-parallel; layer groups x data shards): the only module
                  that talks to MPI
- ``partition``   pure block-layout arithmetic, no MPI
- ``backend``     array namespace of the inputs (array API: numpy, cupy), host <-> device
- ``devices``     which GPU each rank takes, and what ``admm-mpi info`` says about it
- ``implementation`` how the weight solves are carried out (factor dtype, spread or root solves,
                  kernel form): run settings the grid carries to every solve
- ``timing``      the phase timer of ``--profile`` that the grid, the solvers and the loop call

Other

- ``errors``      exceptions that reach the user as one clear message
- ``plot``        figures from ``metrics.jsonl``
- ``datasets``    the bundled digits data set

Documentation: ``docs/`` (build with ``sphinx-build -W -b html docs docs/_build/html``).
"""

__version__ = "0.1.0"


def __getattr__(name):
    # the estimators need scikit-learn, which the trainer itself does not: import on demand
    if name in ("ADMMClassifier", "ADMMRegressor"):
        from admm_mpi import estimator

        return getattr(estimator, name)
    raise AttributeError(f"module 'admm_mpi' has no attribute {name!r}")
