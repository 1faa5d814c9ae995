import pytest

from admm_mpi.config import TrainConfig, resolve
from admm_mpi.errors import InputError


def test_precedence_default_file_environment_cli(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('iters = 7\nbeta = 2.0\nhidden = [32, 16]\nloss = "ova_hinge"\n')
    env = {"ADMM_MPI_ITERS": "9", "ADMM_MPI_GAMMA": "3"}
    config = resolve(file=str(toml), cli={"iters": 11, "seed": None}, environ=env)
    assert config.iters == 11           # command line beats environment and file
    assert config.params.gamma == 3.0          # environment beats default
    assert config.params.beta == 2.0 and config.hidden == (32, 16) and config.loss == "ova_hinge"
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


@pytest.mark.parametrize(
    "line, message",
    [
        ("iters = true", "iters must be of type int, got True"),       # bool is not a number
        ("iters = 5.5", "iters must be of type int"),
        ('iters = "5"', "iters must be of type int"),                  # quoted number in TOML
        ('beta = "2"', "beta must be of type float"),
        ("beta = true", "beta must be of type float"),
        ("progress = 1", "progress must be of type bool"),
        ("solver = 3", "solver must be of type str"),
        ("hidden = [64.5]", "hidden must be comma-separated positive integers"),
        ("hidden = [true, 8]", "hidden must be comma-separated positive integers"),
        ('hidden = ["64"]', "hidden must be comma-separated positive integers"),
    ],
)
def test_toml_values_must_have_the_field_type(tmp_path, line, message):
    toml = tmp_path / "run.toml"
    toml.write_text(line + "\n")
    with pytest.raises(InputError, match=message):
        resolve(file=str(toml), environ={})


def test_whole_floats_in_toml_and_text_from_the_environment_still_parse(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text("iters = 7.0\nhidden = [32.0, 16]\nbeta = 2\n")
    config = resolve(file=str(toml), environ={"ADMM_MPI_SEED": "4", "ADMM_MPI_GAMMA": "0.5",
                                              "ADMM_MPI_PROGRESS": "off"})
    assert (config.iters, config.hidden, config.params.beta) == (7, (32, 16), 2.0)
    assert (config.seed, config.params.gamma, config.progress) == (4, 0.5, False)
    assert isinstance(config.iters, int) and isinstance(config.params.beta, float)


@pytest.mark.parametrize("env, message", [({"ADMM_MPI_ITERS": "true"}, "iters must be of type int"),
                                          ({"ADMM_MPI_ITERS": "2.5"}, "iters must be of type int"),
                                          ({"ADMM_MPI_PROGRESS": "maybe"}, "progress must be of type bool"),
                                          ({"ADMM_MPI_HIDDEN": "64.5"}, "hidden must be")])
def test_bad_text_from_the_environment_is_refused(env, message):
    with pytest.raises(InputError, match=message):
        resolve(environ=env)
