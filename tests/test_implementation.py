"""Implementation choices are run settings that reach the solves through the grid, and the phase
profile is the library's own timer: no bench script flips a library switch or patches a phase."""

import ast
import importlib
import importlib.util
import json
import pkgutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import admm_mpi
from admm_mpi.config import TrainConfig, resolve, validate
from admm_mpi.errors import InputError
from admm_mpi.grid import Grid
from admm_mpi.implementation import Implementation
from admm_mpi.timing import NO_TIMER, PhaseTimer
from admm_mpi.train import train
from tests.helpers import run_admm

REPO = Path(__file__).resolve().parents[1]


def _library_modules():
    for info in pkgutil.walk_packages(admm_mpi.__path__, "admm_mpi."):
        if not info.name.endswith("__main__"):
            yield info.name, importlib.import_module(info.name)


def _assigned_library_attributes(path):
    """``(module, attribute)`` of every ``alias.ATTR = ...`` and ``setattr(alias, "ATTR", ...)`` in a
    script, where ``alias`` is an imported admm_mpi module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("admm_mpi") and a.asname:
                    aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("admm_mpi"):
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if _is_package(node.module) and importlib.util.find_spec(full) is not None:
                    aliases[a.asname or a.name] = full
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = [t for target in node.targets for t in (target.elts if isinstance(target, ast.Tuple) else [target])]
        for t in targets:
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in aliases:
                found.append((aliases[t.value.id], t.attr))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr"
                and isinstance(node.args[0], ast.Name) and node.args[0].id in aliases
                and isinstance(node.args[1], ast.Constant)):
            found.append((aliases[node.args[0].id], node.args[1].value))
    return found


def _is_package(name):
    spec = importlib.util.find_spec(name)
    return spec is not None and spec.submodule_search_locations is not None


def test_the_scanner_finds_a_switch_set_by_a_script(tmp_path):
    script = tmp_path / "flip.py"
    script.write_text("from admm_mpi.ops import linalg\nimport admm_mpi.solvers.common as common\n"
                      "linalg.FLOAT32_MAX_ERROR = 1.0\nsetattr(common, 'X', 0)\n")
    assert sorted(_assigned_library_attributes(script)) == [("admm_mpi.ops.linalg", "FLOAT32_MAX_ERROR"),
                                                          ("admm_mpi.solvers.common", "X")]


@pytest.mark.parametrize("script", sorted((REPO / "bench").glob("*.py")), ids=lambda p: p.name)
def test_no_bench_script_sets_a_library_setting(script):
    """A script may wrap a library function to measure it (bench/factor_precision.py records every
    solve's error); it never sets a value the library reads as a switch."""
    for module, attribute in _assigned_library_attributes(script):
        value = getattr(importlib.import_module(module), attribute, None)
        assert callable(value), f"{script.name} sets {module}.{attribute}, a library switch"


def test_no_library_module_has_a_switch():
    switches = [f"{name}.{key}" for name, module in _library_modules() for key, value in vars(module).items()
                if key.isupper() and isinstance(value, bool)]
    assert switches == []
    for old in ("FACTOR_DTYPE", "SPREAD_SOLVE", "KERNEL_FORM"):
        assert not hasattr(importlib.import_module("admm_mpi.ops.linalg"), old)
    assert not hasattr(importlib.import_module("admm_mpi.solvers.common"), "SPREAD_WEIGHT_STEP")


def test_settings_make_the_implementation_and_are_checked():
    config = resolve(cli={"factor_dtype": "float64", "spread_solve": "off", "kernel_form": "0"})
    assert config.implementation == Implementation("float64", False, False, True)
    assert TrainConfig().implementation == Implementation()
    assert Implementation().factor_dtype_for(np.float32) == np.float32
    assert Implementation("float64").factor_dtype_for(np.float32) == np.float64
    with pytest.raises(InputError, match="unknown factor_dtype 'float16'"):
        validate(TrainConfig.from_settings(factor_dtype="float16"))


def test_a_sub_grid_has_its_parents_implementation_and_timer():
    grid = Grid.serial()
    assert grid.implementation == Implementation() and grid.timer is NO_TIMER
    group, _, _ = grid.split_groups(1)
    grid.implementation, grid.timer = Implementation(spread_solve=False), PhaseTimer()
    child = Grid(serial=True, parent=grid)
    assert child.implementation.spread_solve is False and child.timer is grid.timer


def test_the_timer_counts_nested_phases_exclusively():
    timer = PhaseTimer()
    with timer.phase("step"):
        with timer.phase("weight solve"):
            with timer.phase("Reduce"):
                pass
        with timer.phase("weight solve"):
            pass
    report = timer.report()
    assert report["calls"] == {"step > weight solve > Reduce": 1, "step > weight solve": 2, "step": 1}
    assert all(v >= 0 for v in report["seconds"].values())


def _weights(path):
    with h5py.File(path, "r") as f:
        return [f["layers"][layer][name][...] for layer in sorted(f["layers"], key=int) for name in ("W", "b")]


@pytest.mark.parametrize("solver,flags,both", [
    ("taylor", ["--no-spread-solve"], []),
    ("mdlam", ["--no-spread-weight-step"], []),
    ("minibatch_am", ["--no-kernel-form"], ["--batch-size", "64"]),
    ("minibatch_am", ["--factor-dtype", "float32"], ["--batch-size", "64"]),
])
def test_each_choice_reaches_the_solves_and_changes_no_result_beyond_rounding(tmp_path, solver, flags, both):
    """Two ranks, float64: the other implementation gives the default run's weights to rounding
    (float32 factors: to float32 rounding), and where it moves other bytes its traffic differs, so
    the choice was taken."""
    common = ["train", "--solver", solver, "--hidden", "96", "--iters", "3", "--dtype", "float64",
              "--validation-fraction", "0", "--no-progress", *both]
    runs = {}
    for name, extra in (("default", []), ("other", flags)):
        done = run_admm(2, *common, *extra, "--out", tmp_path / name, timeout=300)
        assert done.returncode == 0, done.stderr
        runs[name] = json.loads((tmp_path / name / "summary.json").read_text())
    config = runs["other"]["config"]
    assert {"--no-spread-solve": config["spread_solve"] is False, "--no-spread-weight-step":
            config["spread_weight_step"] is False, "--no-kernel-form": config["kernel_form"] is False,
            "--factor-dtype": config["factor_dtype"] == "float32"}[flags[0]]
    tolerance = 1e-4 if "float32" in flags else 1e-9
    for a, b in zip(_weights(tmp_path / "default" / "model.h5"), _weights(tmp_path / "other" / "model.h5")):
        assert np.max(np.abs(a - b)) <= tolerance * max(1.0, np.max(np.abs(a)))
    if "--factor-dtype" not in flags:
        assert runs["default"]["bytes_per_iteration_per_rank"] != runs["other"]["bytes_per_iteration_per_rank"]


@pytest.mark.parametrize("solver,layout", [("taylor", "data"), ("pdadmm", "layer")])
def test_profile_records_every_ranks_phases(tmp_path, solver, layout):
    done = run_admm(2, "train", "--solver", solver, "--layout", layout, "--hidden", "32,32", "--iters", "2",
                    "--no-progress", "--profile", "--checkpoint-every", "1", "--out", tmp_path / "run", timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["config"]["profile"] is True and len(summary["phase_seconds"]) == 2
    for rank in summary["phase_seconds"]:
        keys = set(rank["calls"])
        assert {"step", "evaluation", "I/O"} <= keys, keys
        assert rank["calls"]["step"] == 2
        assert any(k.startswith("step > ") and k.endswith("other collectives") for k in keys) or layout == "data"
        if solver == "taylor":
            assert {"step > weight solve", "step > activation solves", "forward codes"} <= keys, keys  # codes: at start
        assert set(rank["seconds"]) == keys and all(v >= 0 for v in rank["seconds"].values())
    plain = run_admm(1, "train", "--iters", "1", "--no-progress", "--out", tmp_path / "plain", timeout=300)
    assert plain.returncode == 0, plain.stderr
    assert json.loads((tmp_path / "plain" / "summary.json").read_text())["phase_seconds"] is None


def test_a_run_in_process_leaves_the_callers_grid_as_it_was():
    grid = Grid.serial()
    config = TrainConfig.from_settings(hidden=(8,), iters=1, spread_solve=False, profile=True, progress=False)
    result = train(config, grid, out=False)
    assert result.summary["phase_seconds"][0]["calls"]["step"] == 1
    assert grid.implementation == Implementation() and grid.timer is NO_TIMER
