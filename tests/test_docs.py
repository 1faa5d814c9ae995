"""The documentation: it builds with warnings as errors, its examples run, its generated
references say what the code says, and the README stays a short page whose figures come from the
results files.

The Sphinx builds need the ``docs`` extra (``pip install -e ".[docs]"``, which CI installs); without
it those tests are skipped.
"""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README = REPO / "README.md"
OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")
SPHINX_TIMEOUT = 110  # seconds, per build


def _sphinx_missing():
    try:
        import myst_parser  # noqa: F401
        import sphinx  # noqa: F401
    except ImportError as error:
        return f"sphinx or myst-parser not installed ({error.name}); pip install -e '.[docs]'"
    return None


needs_sphinx = pytest.mark.skipif(_sphinx_missing() is not None, reason=str(_sphinx_missing()))


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", ADMM_MPI_NO_MPI="1", COLUMNS="10000")
    env.update(extra)
    return env


def _sphinx(builder, out):
    return subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", builder, str(DOCS),
                           str(out / builder), "-d", str(out / f"doctrees-{builder}")],
                          capture_output=True, text=True, timeout=SPHINX_TIMEOUT, env=_env(), cwd=REPO)


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    """The HTML site, built once for this module (warnings are errors)."""
    out = tmp_path_factory.mktemp("docs")
    proc = _sphinx("html", out)
    assert proc.returncode == 0, f"sphinx-build -W -b html failed:\n{proc.stdout}\n{proc.stderr}"
    return out / "html"


@needs_sphinx
def test_the_docs_build_with_warnings_as_errors(html):
    for page in ["index", "quickstart", "guide/cluster", "guide/data", "guide/validation", "guide/checkpoints",
                 "guide/python", "solvers/index", "solvers/minibatch_am", "generated/cli", "generated/config",
                 "reference/api", "benchmarks/index", "benchmarks/accuracy", "history", "design", "operations",
                 "architecture"]:
        assert (html / f"{page}.html").is_file(), f"{page}.html missing from the built site"
    api = (html / "reference" / "api.html").read_text(encoding="utf-8")
    for documented in ["admm_mpi.estimator.ADMMClassifier", "admm_mpi.estimator.ADMMRegressor",
                       "admm_mpi.train.train", "admm_mpi.data.write_dataset", "admm_mpi.checkpoint.save",
                       "admm_mpi.solvers.base.Solver"]:
        assert f'id="{documented}"' in api, f"{documented} is not in the API reference"
    # the plots of bench/results are embedded
    assert list((html / "_images").glob("*.png")), "no benchmark plot in the built site"


@needs_sphinx
def test_the_examples_run_as_doctests(tmp_path):
    proc = _sphinx("doctest", tmp_path)
    report = (tmp_path / "doctest" / "output.txt").read_text(encoding="utf-8") if (
        tmp_path / "doctest" / "output.txt").exists() else ""
    assert proc.returncode == 0, f"doctests failed:\n{report}\n{proc.stdout}\n{proc.stderr}"
    ran = sum(int(n) for n in re.findall(r"^\s*(\d+) tests?\b", report, re.M))
    assert ran >= 5, f"only {ran} doctest examples ran:\n{report}"
    assert "0 failures in tests" in report


def _help(*args):
    proc = subprocess.run([sys.executable, "-m", "admm_mpi", *args, "--help"], capture_output=True, text=True,
                          timeout=60, env=_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _commands(path=()):
    """Every command path, found by reading ``--help`` (the ``{a,b,c}`` choices of each level)."""
    text = _help(*path)
    yield path, text
    usage = text.split("\n\n")[0]
    choices = re.search(r"\{([\w,-]+)\}", usage)
    for name in (choices.group(1).split(",") if choices else []):
        yield from _commands(path + (name,))


def _sections(page):
    """``{command label: its section}`` of the generated CLI page."""
    parts = re.split(r"<!-- command: (.+?) -->", page)
    return {label.strip(): body for label, body in zip(parts[1::2], parts[2::2])}


@needs_sphinx
def test_the_cli_reference_says_what_help_says(html):
    """Every subcommand (and nested data subcommand) has a section on the generated page with the
    same options, and the same option names in its help texts, as ``admm-mpi ... --help``."""
    page = (DOCS / "generated" / "cli.md").read_text(encoding="utf-8")
    sections = _sections(page)
    commands = list(_commands())
    assert len(commands) >= 12  # admm-mpi, 8 commands, 3 data commands
    for path, text in commands:
        label = " ".join(("admm-mpi",) + path)
        assert label in sections, f"no section for {label!r} in the CLI reference"
        in_help = set(OPTION.findall(text))
        in_page = set(OPTION.findall(sections[label].replace("\\", "")))
        assert in_help, label
        assert in_help == in_page, (f"{label}: only in --help {sorted(in_help - in_page)}, "
                                    f"only in the page {sorted(in_page - in_help)}")
    for label in sections:  # per-solver sections, when --solver X --help lists X's settings only
        match = re.fullmatch(r"admm-mpi train --solver (\w+)", label)
        if match:
            text = _help("train", "--solver", match.group(1))
            assert set(OPTION.findall(text)) == set(OPTION.findall(sections[label].replace("\\", ""))), label
    assert "Command-line reference" in (html / "generated" / "cli.html").read_text(encoding="utf-8")


@needs_sphinx
def test_the_configuration_reference_lists_every_setting_with_its_default(html):
    import dataclasses

    from admm_mpi.config import TrainConfig
    from admm_mpi.solvers import SOLVERS

    page = (DOCS / "generated" / "config.md").read_text(encoding="utf-8")
    for field in dataclasses.fields(TrainConfig):
        if field.name not in ("params", "given"):
            assert f"| `{field.name}` |" in page, f"run setting {field.name} missing"
    for name, cls in SOLVERS.items():
        solver_page = (html / "solvers" / f"{name}.html").read_text(encoding="utf-8")
        section = page.split(f"### `{name}`", 1)[1].split("\n### ", 1)[0]
        for field in dataclasses.fields(cls.Params):
            assert f"| `{field.name}` |" in section, f"{name}.{field.name} missing from the configuration reference"
            row = next(line for line in section.splitlines() if line.startswith(f"| `{field.name}` |"))
            assert repr(field.default) in row or str(field.default) in row, row
            assert f"<code class=\"docutils literal notranslate\"><span class=\"pre\">{field.name}</span>" in solver_page, (
                f"{name}.{field.name} missing from the solver's page")


def _benchmarks_extension():
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        import benchmarks
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    return benchmarks


def _headline_rows():
    return _benchmarks_extension().headline_table(REPO / "bench" / "results", lambda page: f"docs/_build/html/benchmarks/{page}.html",
                                     lambda name: f"bench/results/{name}")


def test_the_readme_headline_figures_are_read_from_the_results_files():
    """The README's results table is the one the docs generate from bench/results, row for row."""
    rows = _headline_rows()[2:]
    assert len(rows) >= 5
    readme = README.read_text(encoding="utf-8")
    for row in rows:
        assert row in readme, f"README results row differs from the results files:\n{row}"
    table = readme.split("## Results", 1)[1].split("\n## ", 1)[0]
    assert sum(1 for line in table.splitlines() if line.startswith("| ") and "**" in line) == len(rows)


def test_a_large_batch_headline_needs_both_sides_run_to_the_end_and_takes_the_faster_optimiser():
    benchmarks = _benchmarks_extension()

    def cell(method, epochs, partial=None, accuracy=0.97):
        return {"method": method, "epochs_to_target": epochs, "partial": partial, "validation_accuracy_at_kept": accuracy}

    batches = {
        "2048": {"admm": cell("admm", 9), "sgd_momentum": cell("sgd_momentum", 9), "adam": cell("adam", 8)},
        "8192": {"admm": cell("admm", 20), "sgd_momentum": cell("sgd_momentum", None, partial="cut for time")},
        "512": {"admm": cell("admm", None), "sgd_momentum": cell("sgd_momentum", None, accuracy=0.95),
                "adam": cell("adam", None, accuracy=0.96)},
        "32768": {"admm": cell("admm", 17, partial="stopped")},
    }
    pairs = benchmarks.large_batch_pairs({"datasets": {"mnist": {"batches": batches}}}, "mnist")
    assert [(b, a["method"], t["method"]) for b, a, t in pairs] == [(512, "admm", "adam"), (2048, "admm", "adam")]


def test_the_suite_time_headline_counts_the_large_sets_only():
    benchmarks = _benchmarks_extension()

    def record(rows, admm, mlp):
        return {"rows": rows, "methods": {"admm:current": {"train_seconds": admm}, "sklearn_mlp": {"train_seconds": mlp}}}

    data = {"sets": {"a": record(6000, 1.0, 2.0), "b": record(9000, 3.0, 1.0), "c": record(20000, 4.0, 1.0),
                     "small": record(400, 0.1, 1.0), "a+raw": record(6000, 0.1, 1.0)}}
    assert benchmarks.suite_times(data, "admm:current") == (1, 3, 3.0)


@needs_sphinx
def test_the_readme_links_resolve(html):
    readme = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    assert links
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        if link.startswith("docs/_build/html/"):
            assert (html / link[len("docs/_build/html/"):]).is_file(), f"README links to {link}, not built"
        else:
            assert (REPO / link).exists(), f"README links to {link}, which does not exist"


def test_the_readme_is_a_short_page_without_history():
    readme = README.read_text(encoding="utf-8")
    lines = readme.splitlines()
    assert len(lines) <= 250, f"README has {len(lines)} lines"
    assert not re.findall(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b", readme), "commit hashes"
    assert not re.search(r"\bload(?: average)? \d", readme), "load averages"
    assert "Earlier runs" not in readme and "superseded" not in readme.lower()
    assert not re.search(r"\d+ passed|\d+ minutes on", readme), "test-suite timings"
    # the two commands, unchanged, and the test command is what CI runs
    install = ('python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[mpich,test]" '
               "&& mpiexec -n 2 admm-mpi train")
    assert install in lines
    assert "python -m pytest -v --durations=25" in lines
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert 'pip install -e ".[mpich,test]"' in ci and 'pip install -e ".[docs]"' in ci
    assert "python -m pytest -v --durations=25" in ci
    assert 'pip install -e ".[docs]" && sphinx-build -W -b html docs docs/_build/html' in readme


@pytest.mark.parametrize("page", ["gpu", "run-directory"])
@needs_sphinx
def test_pages_written_beside_the_docs_join_the_site(html, page):
    if not (DOCS / f"{page}.md").exists():
        pytest.skip(f"docs/{page}.md is not written yet")
    built = html / f"{page}.html"
    assert built.is_file()
    index = (html / "index.html").read_text(encoding="utf-8")
    assert f'href="{page}.html"' in index, f"{page} is not in the table of contents"


def test_the_package_docstring_names_every_module():
    package = REPO / "admm_mpi"
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text(encoding="utf-8")))
    modules = {p.stem for p in package.glob("*.py") if p.stem not in ("__init__",)}
    modules |= {p.name for p in package.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
    missing = sorted(m for m in modules if f"``{m}``" not in doc)
    assert not missing, f"admm_mpi/__init__.py does not describe {missing}"


def test_a_count_of_one_takes_the_singular():
    benchmarks = _benchmarks_extension()
    assert [benchmarks._count(n, "candidate") for n in (0, 1, 5)] == ["0 candidates", "1 candidate", "5 candidates"]
