"""admm-mpi: train fully connected networks by ADMM instead of backpropagation, over MPI.

Layout of the package (one job per module):

- ``backend``   array namespace of the inputs (array API: numpy, cupy), host <-> device
- ``partition`` pure block-layout arithmetic, no MPI
- ``grid``      the process grids (data-parallel; layer groups x data shards): the only module
                that talks to MPI
- ``data``      HDF5 datasets, each rank reading only its own slab of rows
- ``model``     network spec, forward pass, prediction, model files
- ``ops``       activations, losses and their proximal steps, weight solves
- ``solvers``   the ADMM algorithms as pure maths on local arrays
- ``graph``     graph-augmented inputs for pdADMM-G
- ``train``     the training loop: schedule, stopping, metrics, outputs
- ``cli``       the ``admm-mpi`` command
"""

__version__ = "0.1.0"


def __getattr__(name):
    # the estimators need scikit-learn, which the trainer itself does not: import on demand
    if name in ("ADMMClassifier", "ADMMRegressor"):
        from admm_mpi import estimator

        return getattr(estimator, name)
    raise AttributeError(f"module 'admm_mpi' has no attribute {name!r}")
