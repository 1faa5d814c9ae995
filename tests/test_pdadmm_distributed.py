"""pdADMM on layer, hybrid and data grids gives the serial run's numbers (1-4 ranks)."""

import numpy as np
import pytest

from admm_mpi.config import TrainConfig
from admm_mpi.grid import Grid
from admm_mpi.train import train

from tests.helpers import NO_VALIDATION
from tests.test_distributed import _dataset

# (layout, layer_groups, hidden widths, quantize bits)
CASES = {
    "layer-L4": ("layer", 0, (12, 10, 8), 0),          # one layer per rank up to 4 ranks
    "layer-L6": ("layer", 0, (12, 10, 9, 8, 7), 0),    # more layers than ranks: blocks of layers
    "layer-uneven": ("layer", 0, (40, 4, 4), 0),       # blocks by cost, not count: the wide layer alone
    "layer-L4-8bit": ("layer", 0, (12, 10, 8), 8),
    "hybrid-2": ("hybrid", 2, (12, 10, 8), 0),         # 2 layer groups x size/2 data shards
    "hybrid-2-8bit": ("hybrid", 2, (12, 10, 8), 8),
    "data": ("data", 0, (12, 10, 8), 0),               # pdadmm data-parallel
    # the mini-batch mode: codes from the pipelined forward pass, batches split over data shards
    "layer-L4-batches": ("layer", 0, (12, 10, 8), 0, dict(batch_size=29, batch_sweeps=3, iters=3)),
    "hybrid-2-8bit-batches": ("hybrid", 2, (12, 10, 8), 8, dict(batch_size=29, batch_sweeps=2, iters=3)),
}


@pytest.mark.mpi(ranks=[1, 2, 3, 4], timeout=180)
@pytest.mark.parametrize("case", sorted(CASES))
def test_pdadmm_grid_equals_serial(comm, shared_tmp, case):
    layout, groups, hidden, bits, *extra = CASES[case]
    if layout == "hybrid" and comm.size % groups:
        pytest.skip(f"{groups} layer groups need an even number of ranks")
    config = TrainConfig.from_settings(data=_dataset(shared_tmp, comm), solver="pdadmm", layout=layout,
                                       layer_groups=groups, hidden=hidden, quantize=bits, dtype="float64", progress=False,
                                       **NO_VALIDATION, **{"iters": 15, **(extra or [{}])[0]})
    grid = Grid(comm)
    distributed = train(config, grid, out=False)
    serial = train(config.__class__(**{**config.__dict__, "layout": "data", "layer_groups": 0}),
                   Grid.serial(), out=False)
    assert distributed.summary["ranks"] == comm.size
    expected_groups = {"layer": min(comm.size, len(hidden) + 1), "hybrid": groups, "data": 1}[layout]
    if layout != "layer" or comm.size <= len(hidden) + 1:
        assert distributed.summary["layer_groups"] == expected_groups
    if comm.rank == 0:
        weights, biases = distributed.model
        ref_w, ref_b = serial.model
        for W, b, W_ref, b_ref in zip(weights, biases, ref_w, ref_b):
            # the layer's affine map [W | b] as a whole: the first biases are ~1e-5 of W, so a
            # relative error of b alone would measure rounding in a number that is nearly 0
            layer, ref = np.column_stack([W, b]), np.column_stack([W_ref, b_ref])
            rel = np.linalg.norm(layer - ref) / np.linalg.norm(ref)
            assert rel < 1e-10, rel
    assert distributed.summary["objective"] == pytest.approx(serial.summary["objective"], rel=1e-10)
    assert distributed.summary["residual"] == pytest.approx(serial.summary["residual"], rel=1e-9)
    assert distributed.summary["train_accuracy"] == serial.summary["train_accuracy"]
    assert distributed.summary["test_accuracy"] == serial.summary["test_accuracy"]
    grid.close()


RESUME = {  # (layout and groups that write the checkpoint) -> (layout and groups that resume it)
    "layer->layer": (("layer", 0), ("layer", 0)),
    "layer->data": (("layer", 0), ("data", 0)),
    "hybrid->layer": (("hybrid", 2), ("layer", 0)),
}


@pytest.mark.mpi(ranks=[1, 2, 3, 4], timeout=180)
@pytest.mark.parametrize("case", sorted(RESUME))
def test_pdadmm_checkpoint_resumes_on_any_layout(comm, shared_tmp, case):
    """Each layer group writes its own layers' state; a resume on another layout (the state is
    stored layout-free, by layer and global column) continues the serial run to 1e-10."""
    (layout, groups), (layout2, groups2) = RESUME[case]
    if comm.size % max(groups, 1) or comm.size % max(groups2, 1):
        pytest.skip("the hybrid grid needs an even number of ranks")
    base = dict(data=_dataset(shared_tmp, comm), solver="pdadmm", hidden=(12, 10, 8), quantize=8,
                dtype="float64", progress=False, out=str(shared_tmp / "run"), **NO_VALIDATION)
    grid = Grid(comm)
    train(TrainConfig.from_settings(**base, layout=layout, layer_groups=groups, iters=5, checkpoint_every=5), grid)
    resumed = train(TrainConfig.from_settings(**base, layout=layout2, layer_groups=groups2, iters=9, resume="auto"),
                    grid)
    serial = train(TrainConfig.from_settings(**{**base, "out": "unused"}, iters=9), Grid.serial(), out=False)
    if comm.rank == 0:
        for W, b, W_ref, b_ref in zip(*resumed.model, *serial.model):
            layer, ref = np.column_stack([W, b]), np.column_stack([W_ref, b_ref])
            assert np.linalg.norm(layer - ref) / np.linalg.norm(ref) < 1e-10
    assert resumed.summary["objective"] == pytest.approx(serial.summary["objective"], rel=1e-10)
    assert resumed.summary["iterations"] == 9 and resumed.summary["first_iteration"] == 6  # it did continue iteration 5
    assert resumed.summary["resumed_from"].endswith("ckpt-000005")
    grid.close()
