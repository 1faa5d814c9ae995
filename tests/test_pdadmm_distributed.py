"""pdADMM on layer, hybrid and data grids gives the serial run's numbers (1-4 ranks)."""

import numpy as np
import pytest

from admm_mpi.config import TrainConfig
from admm_mpi.grid import Grid
from admm_mpi.train import train

from tests.test_distributed import _dataset

# (layout, layer_groups, hidden widths, quantize bits)
CASES = {
    "layer-L4": ("layer", 0, (12, 10, 8), 0),          # one layer per rank up to 4 ranks
    "layer-L6": ("layer", 0, (12, 10, 9, 8, 7), 0),    # more layers than ranks: blocks of layers
    "layer-L4-8bit": ("layer", 0, (12, 10, 8), 8),
    "hybrid-2": ("hybrid", 2, (12, 10, 8), 0),         # 2 layer groups x size/2 data shards
    "hybrid-2-8bit": ("hybrid", 2, (12, 10, 8), 8),
    "data": ("data", 0, (12, 10, 8), 0),               # pdadmm data-parallel
}


@pytest.mark.mpi(ranks=[1, 2, 3, 4], timeout=180)
@pytest.mark.parametrize("case", sorted(CASES))
def test_pdadmm_grid_equals_serial(comm, shared_tmp, case):
    layout, groups, hidden, bits = CASES[case]
    if layout == "hybrid" and comm.size % groups:
        pytest.skip(f"{groups} layer groups need an even number of ranks")
    config = TrainConfig(data=_dataset(shared_tmp, comm), solver="pdadmm", layout=layout, layer_groups=groups,
                         hidden=hidden, quantize=bits, iters=15, dtype="float64", progress=False)
    grid = Grid(comm)
    distributed = train(config, grid, out=False)
    serial = train(config.__class__(**{**config.__dict__, "layout": "data", "layer_groups": 0}),
                   Grid.serial(), out=False)
    assert distributed["ranks"] == comm.size
    expected_groups = {"layer": min(comm.size, len(hidden) + 1), "hybrid": groups, "data": 1}[layout]
    if layout != "layer" or comm.size <= len(hidden) + 1:
        assert distributed["layer_groups"] == expected_groups
    if comm.rank == 0:
        weights, biases = distributed["model"]
        ref_w, ref_b = serial["model"]
        for W, b, W_ref, b_ref in zip(weights, biases, ref_w, ref_b):
            # the layer's affine map [W | b] as a whole: the first biases are ~1e-5 of W, so a
            # relative error of b alone would measure rounding in a number that is nearly 0
            layer, ref = np.column_stack([W, b]), np.column_stack([W_ref, b_ref])
            rel = np.linalg.norm(layer - ref) / np.linalg.norm(ref)
            assert rel < 1e-10, rel
    assert distributed["objective"] == pytest.approx(serial["objective"], rel=1e-10)
    assert distributed["residual"] == pytest.approx(serial["residual"], rel=1e-9)
    assert distributed["train_accuracy"] == serial["train_accuracy"]
    assert distributed["test_accuracy"] == serial["test_accuracy"]
    grid.close()
