import pytest

from admm_mpi.config import TrainConfig, resolve
from admm_mpi.errors import InputError


def test_precedence_default_file_environment_cli(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('iters = 7\nbeta = 2.0\nhidden = [32, 16]\nloss = "ova_hinge"\n')
    env = {"ADMM_MPI_ITERS": "9", "ADMM_MPI_GAMMA": "3"}
    config = resolve(file=str(toml), cli={"iters": 11, "seed": None}, environ=env)
    assert config.iters == 11           # command line beats environment and file
    assert config.gamma == 3.0          # environment beats default
    assert config.beta == 2.0 and config.hidden == (32, 16) and config.loss == "ova_hinge"
    assert config.seed == TrainConfig().seed


def test_train_table_and_hidden_string(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('[train]\nhidden = "64,64,64"\n')
    assert resolve(file=str(toml), environ={}).hidden == (64, 64, 64)


@pytest.mark.parametrize(
    "cli, message",
    [
        ({"solver": "sgd"}, "unknown solver"),
        ({"layout": "diagonal"}, "unknown layout"),
        ({"activation": "swish"}, "unknown activation"),
        ({"loss": "l7"}, "unknown loss"),
        ({"dtype": "float16"}, "unknown dtype"),
        ({"iters": 0}, "iters must be at least 1"),
        ({"beta": -1.0}, "beta must be positive"),
        ({"gamma": float("nan")}, "gamma must be positive"),
        ({"ridge": -1e-3}, "ridge must be finite and non-negative"),
        ({"beta": float("inf")}, "beta must be positive"),
        ({"hidden": "10,0"}, "positive layer width"),
        ({"hidden": "ten"}, "comma-separated"),
    ],
)
def test_bad_values_name_the_setting(cli, message):
    with pytest.raises(InputError, match=message):
        resolve(cli=cli, environ={})


def test_unknown_key_and_missing_file(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text("iterations = 5\n")
    with pytest.raises(InputError, match="unknown keys"):
        resolve(file=str(toml), environ={})
    with pytest.raises(InputError, match="does not exist"):
        resolve(file=str(tmp_path / "none.toml"), environ={})


def test_committed_recipes_are_valid_and_named_after_their_dataset_and_solver():
    """configs/<dataset>-<solver>.toml: each resolves to a valid configuration of that solver."""
    from pathlib import Path

    from admm_mpi.config import resolve

    recipes = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))
    assert recipes, "no committed configs"
    for path in recipes:
        dataset, solver = path.stem.split("-")
        assert dataset in ("mnist", "fashion_mnist"), path
        config = resolve(file=str(path))
        assert config.solver == solver, path
        assert config.data == "digits"  # the data set is given on the command line, never a path in the recipe
