"""admm-mpi plot (pixels, not only a file) and admm-mpi config --defaults (a loadable file)."""

import json

import numpy as np
import pytest

from admm_mpi.config import TrainConfig, resolve

from tests.helpers import run_admm


def _metrics(path, n, decay, acc):
    path.mkdir()
    with open(path / "metrics.jsonl", "w") as f:
        for i in range(1, n + 1):
            f.write(json.dumps({"iteration": i, "objective": 100 * decay**i, "residual": 10 * decay**i,
                                "train_accuracy": min(1.0, acc * i / n + 0.1), "test_accuracy": acc * i / n,
                                "seconds": 0.1, "residual_linear_0": decay**i}) + "\n")


def _pixels(path):
    import matplotlib.image

    return matplotlib.image.imread(str(path))


def test_plot_png_depends_on_the_metrics(tmp_path):
    _metrics(tmp_path / "a", 30, 0.9, 0.9)
    _metrics(tmp_path / "b", 80, 0.7, 0.5)
    for runs, out in ((["a"], "one.png"), (["b"], "two.png"), (["a", "b"], "both.png")):
        proc = run_admm(1, "plot", *[tmp_path / r for r in runs], "--out", tmp_path / out)
        assert proc.returncode == 0, proc.stderr
    one, two, both = (_pixels(tmp_path / n) for n in ("one.png", "two.png", "both.png"))
    assert one.shape == two.shape and one.shape[0] > 400 and one.shape[1] > 600
    drawn = np.mean(np.any(one[..., :3] < 0.9, axis=-1))  # share of pixels that are not background
    assert 0.02 < drawn < 0.6
    assert np.mean(np.abs(one - two)) > 1e-3                 # other metrics, other picture
    assert np.mean(np.any(both[..., :3] < 0.9, axis=-1)) > drawn  # two runs draw more than one
    assert (tmp_path / "one.png").stat().st_size != (tmp_path / "two.png").stat().st_size


def test_plot_of_a_missing_run_is_an_error(tmp_path):
    proc = run_admm(1, "plot", tmp_path / "nothing")
    assert proc.returncode == 2 and "no metrics file" in proc.stderr


def test_config_defaults_is_a_complete_loadable_file(tmp_path):
    proc = run_admm(1, "config", "--defaults")
    assert proc.returncode == 0, proc.stderr
    path = tmp_path / "defaults.toml"
    path.write_text(proc.stdout)
    assert resolve(file=str(path), environ={}) == TrainConfig()
    for name in ("ridge", "rho", "eps_min", "omega", "w_steps"):  # every solver setting is documented
        assert f"#   {name} = " in proc.stdout


@pytest.mark.parametrize("key", ["nu", "rho"])
def test_config_names_the_bad_key(tmp_path, key):
    path = tmp_path / "bad.toml"
    path.write_text(f'solver = "dladmm"\n{key} = -1.0\n')
    proc = run_admm(1, "train", "--config", path, "--out", tmp_path / "o")
    assert proc.returncode == 2 and key in proc.stderr
