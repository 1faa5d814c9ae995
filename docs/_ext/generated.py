"""Pages written at build time from the code and the results files, never by hand.

A Sphinx extension (``extensions = ["generated"]`` in ``conf.py``). On ``builder-inited`` it writes

- ``generated/cli.md``: every command and subcommand of ``admm_mpi.cli.make_parser()``, each
  option with its help, as the parser says them at build time;
- ``generated/config.md``: the run settings of ``TrainConfig`` and every solver's ``Params``
  (type, default, flag, environment variable, help), and ``admm-mpi config --defaults``;
- ``generated/settings/<solver>.md``: one solver's settings table (included by its solver page);
- ``benchmarks/*.md``: the benchmark pages, from ``bench/results`` (see ``benchmarks.py``).

Both folders are ignored by git. A file is rewritten only when its text changes, so Sphinx
rebuilds only what changed. Run as a script (``python docs/_ext/generated.py``) to write them
without building.

It also drops entries of a toctree that name an optional page (``OPTIONAL_PAGES``) which does not
exist yet, so that pages other people are still writing join the site once they are there.
"""

import argparse
import contextlib
import dataclasses
import io
import os
import re
import sys
import typing
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent
REPO = DOCS.parent
GENERATED = "generated"  # folder of docs/ (ignored by git)

# toctree entries that are kept only if the page exists when the docs are built
OPTIONAL_PAGES = ("gpu", "run-directory")

NOTE = ("```{{note}}\nThis page is generated from {source} when the documentation is built; "
        "do not edit it.\n```\n")

MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|{}#~$])")


def md_escape(text):
    """``text`` as literal Markdown inline text (every special character escaped)."""
    return MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def code(text):
    """``text`` as an inline code span (any backticks inside are fenced by longer ones)."""
    text = str(text)
    fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def write_if_changed(path, text):
    """Write ``text`` to ``path`` unless it already holds it (atomically: temporary file, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return True


@contextlib.contextmanager
def help_width(columns=100):
    """argparse wraps usage lines to ``$COLUMNS``: the same width on every machine."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(columns)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


# ---------------------------------------------------------------------------------------------
# CLI reference, from the parser


def subcommands(parser):
    """``(name, subparser, help)`` of every subcommand of ``parser``, in the parser's order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, sub, helps.get(name)


def walk(parser, path=("admm-mpi",), help=None):
    """``(path, parser, help)`` of ``parser`` and of every subcommand under it, depth first."""
    yield path, parser, help
    for name, sub, sub_help in subcommands(parser):
        yield from walk(sub, path + (name,), sub_help)


def _parser_for(argv):
    """The parser object that answers ``admm-mpi ARGV`` (ARGV ends in ``--help``), however the
    command builds it: ``admm_mpi.cli.main`` runs serially and the help action hands its parser
    over instead of printing."""
    from admm_mpi import cli

    captured = {}
    original = argparse._HelpAction.__call__

    def grab(self, parser, namespace, values, option_string=None):
        captured["parser"] = parser
        parser.exit()

    old_env = os.environ.get("ADMM_MPI_NO_MPI")
    os.environ["ADMM_MPI_NO_MPI"] = "1"
    argparse._HelpAction.__call__ = grab
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            cli.main(list(argv))
    finally:
        argparse._HelpAction.__call__ = original
        if old_env is None:
            os.environ.pop("ADMM_MPI_NO_MPI", None)
        else:
            os.environ["ADMM_MPI_NO_MPI"] = old_env
    return captured.get("parser")


def _options(parser):
    return {s for action in parser._actions for s in action.option_strings}


def _solver_parsers():
    """``[(solver, parser)]`` of ``admm-mpi train --solver X --help`` for every solver when that
    help differs from ``admm-mpi train --help`` (each solver's own settings); else ``[]``."""
    from admm_mpi.solvers import SOLVERS

    plain = _parser_for(["train", "--help"])
    found = [(solver, _parser_for(["train", "--solver", solver, "--help"])) for solver in SOLVERS]
    if plain is None or any(parser is None for _, parser in found):
        return []
    if all(_options(parser) == _options(plain) and parser.format_help() == plain.format_help()
           for _, parser in found):
        return []
    return found


def _parser_section(path, parser, help, depth, label=None):
    """One command's section: what it does, its usage and its options with their help."""
    label = label or " ".join(path)
    lines = [f"<!-- command: {label} -->", "", f"{'#' * depth} `{label}`", ""]
    if help:
        lines += [md_escape(help[0].upper() + help[1:]) + ".", ""]
    if parser.description:
        lines += [md_escape(parser.description), ""]
    formatter = parser._get_formatter()
    lines += ["```text", parser.format_usage().strip(), "```", ""]
    for group in parser._action_groups:
        items = []
        for action in group._group_actions:
            if action.help == argparse.SUPPRESS:
                continue
            if isinstance(action, argparse._SubParsersAction):
                for name, _, sub_help in subcommands(parser):
                    items.append(f"- {code(' '.join(path + (name,)))}: {md_escape(sub_help or '')}")
                continue
            invocation = formatter._format_action_invocation(action)
            text = formatter._expand_help(action) if action.help else ""
            if action.required and action.option_strings:
                text = f"{text} (required)" if text else "required"
            items.append(f"- {code(invocation)}: {md_escape(text)}" if text else f"- {code(invocation)}")
        if items:
            lines += [f"**{md_escape(group.title[0].upper() + group.title[1:])}**", "", *items, ""]
    return lines


def cli_reference():
    """The text of ``generated/cli.md``."""
    from admm_mpi.cli import make_parser

    lines = ["# Command-line reference", "", NOTE.format(source="`admm_mpi.cli.make_parser()`"),
             "Every command runs the same as one process or under `mpiexec -n P` (or `mpirun`, `srun`). "
             "Settings of `train` can also come from a TOML file (`--config`) and from `ADMM_MPI_<NAME>` "
             "environment variables: see the [configuration reference](config.md).", ""]
    with help_width():
        for path, parser, help in walk(make_parser()):
            lines += _parser_section(path, parser, help, depth=max(2, len(path)))
        per_solver = _solver_parsers()
        if per_solver:
            # a section of its own, so that the options named here are not counted as the previous command's
            lines += ["<!-- command: per-solver index -->", "", "## `admm-mpi train --solver NAME`", "",
                      "`admm-mpi train --solver NAME --help` lists that solver's settings only:", ""]
            for solver, parser in per_solver:
                lines += _parser_section(("admm-mpi", "train"), parser, None, depth=3,
                                         label=f"admm-mpi train --solver {solver}")
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------
# configuration reference, from TrainConfig and the solvers' Params


def _type_name(kind):
    if isinstance(kind, type):
        return kind.__name__
    return str(kind).replace("typing.", "")


def _flags_by_dest():
    """Option strings of ``admm-mpi train`` by destination (setting name)."""
    from admm_mpi.cli import make_parser

    train = dict((name, sub) for name, sub, _ in subcommands(make_parser())).get("train")
    flags = {}
    for action in (train._actions if train else []):
        if action.option_strings and action.dest != "help":
            flags.setdefault(action.dest, []).extend(s for s in action.option_strings if s.startswith("--"))
    return flags


def _run_help(name, field):
    """The help of run setting ``name``: the config module's own text, wherever it keeps it."""
    from admm_mpi import config

    for getter in ("run_help", "field_help", "setting_help"):
        function = getattr(config, getter, None)
        if callable(function):
            with contextlib.suppress(Exception):
                text = function(name)
                if text:
                    return text
    help_table = getattr(config, "FIELD_HELP", {})
    return help_table.get(name) or field.metadata.get("help", "")


def _default_text(value):
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, str) and value == "":
        return '""'
    return repr(value) if not isinstance(value, (int, float)) or isinstance(value, bool) else str(value)


def _cell(text):
    return md_escape(text)


def run_settings_table():
    from admm_mpi.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    flags = _flags_by_dest()
    rows = ["| setting | flag | type | default | meaning |", "|---|---|---|---|---|"]
    for field in dataclasses.fields(TrainConfig):
        if field.name in ("params", "given") or not field.init:
            continue
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else "")
        flag = " ".join(code(f) for f in flags.get(field.name, [])) or "—"
        rows.append(f"| {code(field.name)} | {flag} | {_cell(_type_name(hints.get(field.name, type(default))))} | "
                    f"{code(_default_text(default))} | {_cell(_run_help(field.name, field))} |")
    return rows


def solver_settings_table(solver):
    """The settings table of ``solver`` (its ``Params`` fields)."""
    from admm_mpi.solvers import SOLVERS

    cls = SOLVERS[solver]
    params = cls.Params
    hints = typing.get_type_hints(params)
    flags = _flags_by_dest()
    rows = ["| setting | flag | type | default | meaning |", "|---|---|---|---|---|"]
    for field in dataclasses.fields(params):
        flag = " ".join(code(f) for f in flags.get(field.name, [])) or code("--" + field.name.replace("_", "-"))
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        rows.append(f"| {code(field.name)} | {flag} | {_cell(_type_name(hints.get(field.name, type(default))))} | "
                    f"{code(_default_text(default))} | {_cell(field.metadata.get('help', ''))} |")
    if len(rows) == 2:
        rows = ["This solver has no settings of its own."]
    facts = []
    for attribute, label in (("default_loss", "default loss"), ("default_activation", "default activation")):
        value = getattr(cls, attribute, None)
        if value:
            facts.append(f"{label} {code(value)}")
    if getattr(cls, "layer_parallel", False):
        facts.append("runs the `layer` and `hybrid` layouts too")
    head = [f"Settings of `{solver}` (`{cls.__module__}.{cls.__qualname__}.Params`)"
            + (f"; {', '.join(facts)}" if facts else "") + ":", ""]
    return head + rows


def config_reference():
    """The text of ``generated/config.md``."""
    from admm_mpi import config
    from admm_mpi.solvers import SOLVERS

    lines = ["# Configuration reference", "",
             NOTE.format(source="`admm_mpi.config.TrainConfig` and every solver's `Params`"),
             "A run's settings come from, in increasing precedence: the defaults below, a TOML file "
             "(`admm-mpi train --config FILE.toml`; flat keys or a `[train]` table, named as below), "
             "environment variables `ADMM_MPI_<NAME>` (for example `ADMM_MPI_ITERS=20`) and the command "
             "line (`--name-with-dashes`). `admm-mpi config --defaults` prints a complete file (below). "
             "The configuration a run resolved is saved in its `summary.json`.", ""]
    lines += ["## Run settings", "", "Settings of every run, whatever the solver "
              "(`admm_mpi.config.TrainConfig`):", "", *run_settings_table(), "",
              "## Solver settings", "",
              "Each solver has its own settings (the fields of its `Params` dataclass). Give only those of the "
              "chosen solver: a setting it does not have is refused. The same name can mean different things "
              "in different solvers; each table gives the meaning and default for that solver. The "
              "[solver guide](../solvers/index.md) explains them.", ""]
    for solver in SOLVERS:
        lines += [f"### `{solver}`", "", *solver_settings_table(solver), ""]
    if callable(getattr(config, "defaults_toml", None)):
        lines += ["## A complete configuration file", "",
                  "The output of `admm-mpi config --defaults` (`admm_mpi.config.defaults_toml()`):", "",
                  "```toml", config.defaults_toml().rstrip(), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------


def generate(docs=DOCS):
    """Write every generated page under ``docs``; returns the paths written or left unchanged."""
    from admm_mpi.solvers import SOLVERS

    import benchmarks

    docs = Path(docs)
    out = docs / GENERATED
    pages = {out / "cli.md": cli_reference(), out / "config.md": config_reference()}
    for solver in SOLVERS:
        pages[out / "settings" / f"{solver}.md"] = "\n".join(solver_settings_table(solver)) + "\n"
    pages.update(benchmarks.pages(REPO / "bench" / "results", docs / benchmarks.FOLDER))
    for path, text in pages.items():
        write_if_changed(path, text)
    # pages of an earlier build that are no longer generated (a results file removed)
    for folder in (out, docs / benchmarks.FOLDER):
        for path in folder.rglob("*.md"):
            if path not in pages:
                path.unlink()
    return sorted(pages)


def _on_builder_inited(app):
    generate(Path(app.srcdir))


def _drop_missing_optional_pages(app, docname, source):
    """Remove toctree lines naming an optional page that does not exist (yet)."""
    srcdir = Path(app.srcdir)
    kept = []
    for line in source[0].splitlines(keepends=True):
        entry = line.strip()
        name = entry.lstrip("/")
        if name in OPTIONAL_PAGES and not any((srcdir / f"{name}{suffix}").exists() for suffix in (".md", ".rst")):
            continue
        kept.append(line)
    source[0] = "".join(kept)


def _module_docstring_as_text(app, what, name, obj, options, lines):
    """Module docstrings are laid out as plain text (aligned columns, formulas): show them as such."""
    if what == "module" and lines:
        text = [line.rstrip() for line in lines]
        lines[:] = ["::", ""] + [f"    {line}" if line else "" for line in text] + [""]


def setup(app):
    app.connect("builder-inited", _on_builder_inited)
    app.connect("autodoc-process-docstring", _module_docstring_as_text)
    app.connect("source-read", _drop_missing_optional_pages)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    for written in generate():
        print(written)
