import pytest

from admm_mpi.config import TrainConfig, resolve, settings_difference
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


@pytest.mark.parametrize("solver, setting, value, message", [
    ("sigmoid_admm", "rho", "0", None),                         # sigmoid_admm's rho is an optional anchor
    ("dladmm", "rho", "0", "rho must be positive, got 0.0"),   # everywhere else a penalty
    ("pdadmm", "quantize", "8", None),
    ("pdadmm", "quantize", "1", "quantize must be 0 \\(off\\) or 2..16 bits, got 1"),
    ("pdadmm", "quantize", "17", "quantize must be 0 \\(off\\) or 2..16 bits, got 17"),
    ("dladmm", "rho_growth", "0.5", "rho_growth must be at least 1, got 0.5"),
    ("mdlam", "w_steps", "0", "w_steps must be at least 1, got 0"),
    ("mdlam", "eps", "0", "eps must be positive"),
    ("taylor", "warm_start", "-1", "warm_start must be finite and non-negative, got -1"),
    ("dladmm", "nu", "0", None),                                # nu = 0: tied to rho
    ("minibatch_am", "batch_size", "-1", "batch_size must be a positive integer, 'full' .* or 'auto' .*, got '-1'"),
    ("minibatch_am", "batch_size", "0", "batch_size must be a positive integer"),  # no number means "full" or "auto"
    ("minibatch_am", "batch_size", "auto", None),               # scaled with the training rows
    ("minibatch_am", "batch_size", "full", None),               # one batch of every training row
    ("minibatch_am", "step_decay", "-0.5", "step_decay must be finite and non-negative, got -0.5"),
    ("sigmoid_admm", "batch_size", "0", "batch_size must be a positive integer"),
    ("sigmoid_admm", "batch_size", "full", None),
    ("sigmoid_admm", "batch_size", "auto", None),
    ("sigmoid_admm", "batch_sweeps", "0", "batch_sweeps must be at least 1, got 0"),
])
def test_each_solver_checks_its_own_settings(solver, setting, value, message):
    """The rules live in each solver's Params.validate; the same flag can follow different rules."""
    cli = {"solver": solver, setting: value}
    if message is None:
        assert getattr(resolve(cli=cli, environ={}).params, setting) == type(getattr(
            resolve(cli={"solver": solver}, environ={}).params, setting))(value)
    else:
        with pytest.raises(InputError, match=message):
            resolve(cli=cli, environ={})


def test_settings_are_typed_by_the_chosen_solver_and_refused_by_the_others():
    config = resolve(environ={"ADMM_MPI_SOLVER": "pdadmm", "ADMM_MPI_QUANTIZE": "8", "ADMM_MPI_RHO": "2"})
    assert type(config.params).__name__ == "PDADMMParams"
    assert (config.params.quantize, config.params.rho) == (8, 2.0) and isinstance(config.params.rho, float)
    with pytest.raises(InputError, match=r"solver 'taylor' has no setting quantize; its settings are "
                                         r"\['beta', 'gamma', 'ridge', 'warm_start'\]"):
        resolve(cli={"solver": "taylor", "quantize": "8"}, environ={})
    with pytest.raises(InputError, match="quantize must be of type int, got '8.5'"):
        resolve(cli={"solver": "pdadmm", "quantize": "8.5"}, environ={})


def test_from_settings_is_resolve_without_the_environment():
    flat = dict(solver="dladmm", hidden=(16, 8), iters=5, rho=0.5, batch_size=32)
    config = TrainConfig.from_settings(**flat)
    assert config == resolve(cli={**flat, "hidden": "16,8"}, environ={"ADMM_MPI_RHO": "9"})
    assert (config.params.rho, config.params.batch_size, config.params.mu) == (0.5, 32, 0.0)  # mu: the default
    with pytest.raises(InputError, match="solver 'dladmm' has no setting ridge"):
        TrainConfig.from_settings(solver="dladmm", ridge=1.0)
    with pytest.raises(InputError, match="unknown solver 'sgd'"):
        TrainConfig.from_settings(solver="sgd")


def test_as_dict_is_flat_run_settings_plus_the_solvers_resolved_settings():
    """The dict checkpoints compare and summary.json records: no nesting, every default resolved."""
    from dataclasses import fields

    from admm_mpi.solvers import SOLVERS

    config = TrainConfig.from_settings(solver="sigmoid_admm", rho=0.25, iters=3)
    d = config.as_dict()
    run = [f.name for f in fields(TrainConfig) if f.name not in ("params", "given")]
    solver_settings = [f.name for f in fields(SOLVERS["sigmoid_admm"].Params)]
    assert sorted(d) == sorted(run + solver_settings) and "params" not in d
    assert (d["rho"], d["mu"], d["batch_size"], d["iters"]) == (0.25, 1e-4, "full", 3)
    assert (d["activation"], d["loss"], d["hidden"]) == ("sigmoid", "least_squares", [256, 256])


def test_every_solver_declares_typed_documented_frozen_settings():
    import dataclasses
    import typing

    from admm_mpi.solvers import SOLVERS, SolverParams

    for name, cls in SOLVERS.items():
        assert issubclass(cls.Params, SolverParams) and cls.Params.__dataclass_params__.frozen, name
        hints = typing.get_type_hints(cls.Params)
        for f in dataclasses.fields(cls.Params):
            assert f.metadata["help"], (name, f.name)
            kind = hints[f.name]
            if hasattr(kind, "coerce"):  # a setting type of its own: the default is one of its values
                assert kind.coerce(f.default, text_ok=False) == f.default, (name, f.name)
            else:
                assert isinstance(f.default, kind), (name, f.name)
        cls.Params().validate()  # the defaults are valid
        with pytest.raises(dataclasses.FrozenInstanceError):
            cls.Params().__setattr__(dataclasses.fields(cls.Params)[0].name, 1)


def test_config_cli_and_train_name_no_solver():
    """Everything they know of a solver comes from the registry."""
    import ast
    import re
    from pathlib import Path

    from admm_mpi.solvers import SOLVERS

    package = Path(__file__).resolve().parents[1] / "admm_mpi"
    pattern = re.compile(r"\b(" + "|".join(SOLVERS) + r")\b")
    for module in ("config.py", "cli.py", "train.py"):
        tree = ast.parse((package / module).read_text())
        named = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
                 and isinstance(node.value, str) and pattern.search(node.value)]
        assert named == [], (module, named)


@pytest.mark.parametrize("source, value, expected", [
    ("cli", "500", 500), ("cli", " AUTO ", "auto"), ("toml", 500, 500), ("toml", "full", "full"),
    ("toml", 500.0, 500), ("toml", "500", None), ("toml", True, None), ("cli", "1.5", None), ("cli", "", None),
])
def test_batch_size_is_a_number_of_columns_or_a_named_size(tmp_path, source, value, expected):
    """One meaning per value: a positive number of columns, "full" or "auto"; a TOML number must
    be a number (quoted digits are text, refused as for every numeric setting)."""
    if source == "cli":
        settings = {"cli": {"solver": "dladmm", "batch_size": value}}
    else:
        path = tmp_path / "c.toml"
        path.write_text(f'solver = "dladmm"\nbatch_size = {value!r}\n'.replace("'", '"').replace("True", "true"))
        settings = {"file": str(path)}
    if expected is None:
        with pytest.raises(InputError, match="batch_size must be a positive integer, 'full' .* or 'auto'"):
            resolve(environ={}, **settings)
    else:
        assert resolve(environ={}, **settings).params.batch_size == expected


def test_a_setting_missing_from_a_record_reads_as_its_solvers_default():
    """Records written before a setting existed (sweep.json, finished.json, checkpoints)."""
    now = TrainConfig.from_settings(solver="pdadmm", iters=5).as_dict()
    old = {k: v for k, v in now.items() if k not in ("eval_train", "patience", "rho")}
    assert settings_difference(old, now) == []
    assert settings_difference(old, {**now, "eval_train": "never", "rho": now["rho"] * 2}) == ["eval_train", "rho"]
    assert settings_difference(old, {**now, "eval_train": "never"}, may_change={"eval_train"}) == []
    assert settings_difference({**old, "iters": 6}, now) == ["iters"]
    assert settings_difference(now, {k: v for k, v in now.items() if k != "rho"}) == ["rho"]  # a setting gone since
