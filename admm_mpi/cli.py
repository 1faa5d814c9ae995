"""The ``admm-mpi`` command: ``train | tune | evaluate | predict | info``.

The same command runs as one process or under ``mpiexec -n P``. Bad input is reported once, by
rank 0, and every rank exits with status 2. Any other exception on any rank prints its traceback
(prefixed by the rank) and aborts the whole MPI job, so no rank is left waiting in a collective.
"""

import argparse
import json
import os
import sys
import warnings

from admm_mpi import __version__
from admm_mpi.errors import InputError, TrainingError

EXIT_INPUT_ERROR = 2
EXIT_TRAINING_ERROR = 3
# a job stopped by a signal exits with 128 + the signal number, as a shell reports it (143: SIGTERM,
# 130: SIGINT), after writing a checkpoint


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing, so the message is printed once, by rank 0."""

    quiet = False  # set on ranks other than 0, so --help and --version print once

    def error(self, message):
        raise InputError(f"{self.prog}: {message}")

    def _print_message(self, message, file=None):
        if not _Parser.quiet:
            super()._print_message(message, file)


# run settings with a flag of their own shape; every other run setting is ``--name-with-dashes VALUE``
_SWITCHES = {"progress": [("--no-progress", False, "no progress bar")],
             "early_stopping": [("--early-stopping", True, None), ("--no-early-stopping", False, "run all iterations")],
             "spread_solve": [("--no-spread-solve", False, None)],
             "kernel_form": [("--no-kernel-form", False, None)],
             "spread_weight_step": [("--no-spread-weight-step", False, None)],
             "profile": [("--profile", True, None)]}
_GROUPS = (("run", ("data", "solver", "layout", "layer_groups", "hidden", "activation", "loss", "iters", "dtype",
                    "device", "seed", "out", "tol", "progress")),
           ("checkpoints", ("checkpoint_every", "resume", "checkpoint_state")),
           ("validation, model selection and evaluation",
            ("validation_fraction", "early_stopping", "patience", "keep", "eval_test", "eval_train", "eval_every")),
           ("implementation (speed, not the method) and profiling",
            ("factor_dtype", "spread_solve", "kernel_form", "spread_weight_step", "profile")))


def _help_solver(argv):
    """The solver whose settings ``train --help`` shows: ``--solver`` on the command line, else
    the config file's or the environment's, else the default (an unknown name: the default)."""
    from admm_mpi.config import read_toml
    from admm_mpi.solvers import DEFAULT_SOLVER, SOLVERS

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--solver")
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    name = known.solver or os.environ.get("ADMM_MPI_SOLVER")
    if not name and known.config:
        try:
            name = read_toml(known.config).get("solver")
        except InputError:
            name = None  # train reports the bad file itself
    return name if name in SOLVERS else DEFAULT_SOLVER


def _add_train_arguments(p, solver):
    """``train``'s flags, generated from the run settings (:class:`~admm_mpi.config.TrainConfig`)
    and the solvers' ``Params``: each help text is the setting's own, with ``solver``'s default."""
    from admm_mpi.config import TrainConfig, run_defaults, run_help

    defaults = run_defaults(solver)
    metadata = TrainConfig.__dataclass_fields__
    p.add_argument("--config", metavar="FILE.toml", help="TOML file with any of the settings below")
    for title, names in _GROUPS:
        group = p if title == "run" else p.add_argument_group(title)
        for name in names:
            text = run_help(name).replace("%", "%%")
            for flag, const, switch_help in _SWITCHES.get(name, []):
                shown = switch_help or f"{text} (default: {'on' if defaults[name] else 'off'})"
                group.add_argument(flag, dest=name, action="store_const", const=const, help=shown)
            if name not in _SWITCHES:
                group.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar=metadata[name].metadata["metavar"],
                                   help=f"{text} (default: {_shown(defaults[name])})")
        if title == "run":
            _add_solver_arguments(p, solver)


def _shown(value):
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return repr(value) if value == "" else str(value)


def _add_solver_arguments(p, solver):
    """One flag per setting of every registered solver; ``solver``'s own are listed, with its
    meaning and default, the others accepted but hidden (the configuration then refuses them in
    one line: that solver has no such setting). Values are text, converted with the chosen
    solver's types."""
    from dataclasses import fields

    from admm_mpi.config import solver_run_defaults
    from admm_mpi.solvers import SOLVERS

    cls = SOLVERS[solver]
    others = sorted(set(SOLVERS) - {solver})
    overrides = ", ".join(f"{name} {_shown(value)}" for name, value in solver_run_defaults(solver).items())
    group = p.add_argument_group(
        f"settings of solver {solver} (loss {cls.default_loss}, activation {cls.default_activation}"
        + (f"; its run defaults: {overrides}" if overrides else "") + ")",
        f"Other solvers' settings: admm-mpi train --solver NAME --help ({', '.join(others)}).")
    own = set()
    for f in fields(cls.Params):
        own.add(f.name)
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, metavar=f.metadata.get("metavar"),
                           help=f"{f.metadata.get('help', '')} (default: {_shown(f.default)})".replace("%", "%%"))
    for other in others:
        for f in fields(SOLVERS[other].Params):
            if f.name not in own:
                own.add(f.name)
                group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, help=argparse.SUPPRESS)


def make_parser(argv=None):
    """The ``admm-mpi`` parser; ``train --help`` shows the settings of the solver that ``argv``
    chooses (``--solver``, the config file, ``ADMM_MPI_SOLVER``; else the default solver)."""
    parser = _Parser(prog="admm-mpi", description="Train neural networks by ADMM over MPI ranks.")
    parser.add_argument("--version", action="version", version=f"admm-mpi {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    solver = _help_solver(sys.argv[1:] if argv is None else argv)
    _add_train_arguments(sub.add_parser("train", help="train a network"), solver)
    from admm_mpi.tune import add_parser as add_tune_parser

    add_tune_parser(sub, solver)
    ev = sub.add_parser("evaluate", help="accuracy of a saved model on a data set")
    ev.add_argument("--model", required=True, help="model.h5 written by train")
    ev.add_argument("--data", default="digits", help="HDF5 data set, or a raw table (CSV, TSV, Parquet) with the label "
                                                     "column, encoded as the model's training table (default: digits)")
    pr = sub.add_parser("predict", help="predicted labels of a saved model")
    pr.add_argument("--model", required=True, help="model.h5 written by train")
    pr.add_argument("--data", default="digits", help="HDF5 data set, or a raw table (CSV, TSV, Parquet) encoded as the "
                                                     "model's training table (default: digits)")
    pr.add_argument("--split", default="test", help="HDF5 data: train | test (default: test)")
    pr.add_argument("--output", help="file for the labels, one per line, under a header line for a model trained on a "
                                     "table (default: standard output)")
    sub.add_parser("info", help="versions, MPI library, BLAS and thread settings")
    data = sub.add_parser("data", help="convert data sets to the admm-mpi HDF5 format, inspect them")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    cv = data_sub.add_parser("convert", help="tables (CSV, TSV, Parquet), NPZ, LIBSVM, IDX or HDF5 to admm-mpi HDF5, "
                                             "streamed in chunks")
    cv.add_argument("input", help="input file; for IDX give IMAGES,LABELS")
    cv.add_argument("--out", required=True, help="output HDF5 file")
    cv.add_argument("--format", help=f"{' | '.join(_input_formats())} (default: from the file name; delimited "
                                     "text with a header row, text or empty cells is read as a table)")
    cv.add_argument("--test", help="a separate test file (same format)")
    cv.add_argument("--test-fraction", type=float, default=0.0,
                    help="hold out this fraction of every class as the test split")
    cv.add_argument("--validation-fraction", type=float, default=0.0,
                    help="write this fraction of every class's training rows as the validation split (X_val, "
                         "y_val): the rows train --validation-fraction F --seed S would hold out")
    cv.add_argument("--standardize", action="store_true",
                    help="rescale features to zero mean, unit variance (training rows' statistics)")
    cv.add_argument("--scale", type=float, default=1.0, help="divide features by this (e.g. 255 for pixels)")
    cv.add_argument("--chunk-rows", type=int, default=10000, help="rows per chunk (default: 10000)")
    cv.add_argument("--label", "--label-column", dest="label", metavar="NAME|INDEX",
                    help="text and tables: the label column, by name or index (negative from the end; default: 0)")
    cv.add_argument("--delimiter", help="text and tables: field separator (default: whitespace for numeric text, "
                                        "sniffed for tables)")
    cv.add_argument("--seed", type=int, default=0, help="seed of the test and validation splits (default: 0)")
    cv.add_argument("--name", help="data set name stored in the file")
    cv.add_argument("--allow-virtual", dest="allow_virtual", action="store_true",
                    help="hdf5: accept virtual datasets once every source file is found (their values are copied "
                         "into the output); external raw storage is always refused")
    tb = cv.add_argument_group("tables (CSV/TSV with a header row or text columns, Parquet; any of these reads "
                               "delimited text as a table; COLS: comma-separated names or indices)")
    header = tb.add_mutually_exclusive_group()
    header.add_argument("--header", dest="header", action="store_const", const=True,
                        help="the first row names the columns (default: detected)")
    header.add_argument("--no-header", dest="header", action="store_const", const=False,
                        help="the first row is data; columns are named 0, 1, ...")
    tb.add_argument("--categorical", metavar="COLS", help="one-hot encode these columns even if numeric (text columns "
                                                           "are one-hot by default)")
    tb.add_argument("--ordinal", metavar="COLS", help="code these text columns 0..k-1 instead of one-hot: NAME (levels "
                                                       "in sorted order) or NAME=LOW<MID<HIGH")
    tb.add_argument("--drop", metavar="COLS", help="ignore these columns")
    tb.add_argument("--keep", metavar="COLS", help="encode these identifier-like columns (a different value in every "
                                                    "row; dropped by default)")
    tb.add_argument("--missing", metavar="mean|median|constant|drop",
                    help="missing numeric cells take the training rows' mean or median, or --fill-value; drop: drop "
                         "every row with a missing cell (default: mean; text: a category of its own; a missing "
                         "label is an error unless drop)")
    tb.add_argument("--fill-value", dest="fill_value", type=float, metavar="X",
                    help="--missing constant: the value of a missing numeric cell (default: 0)")
    tb.add_argument("--max-categories", dest="max_categories", type=int, metavar="K",
                    help="more distinct texts in a column is an error (default: 1000)")
    ag = data_sub.add_parser("augment", help="graph-augmented features [A^K X, ..., AX, X] (pdADMM-G)")
    ag.add_argument("input", help="admm-mpi HDF5 data set (graph nodes: training rows, then test rows)")
    ag.add_argument("--adjacency", required=True, help="scipy.sparse .npz (or .npz with one dense array)")
    ag.add_argument("--hops", type=int, default=2, help="K, the highest power of A (default: 2)")
    ag.add_argument("--out", required=True, help="output HDF5 file")
    di = data_sub.add_parser("info", help="shapes, classes and class balance of an HDF5 data set")
    di.add_argument("path")
    pl = sub.add_parser("plot", help="PNG of objective, residuals and accuracy from metrics.jsonl")
    pl.add_argument("runs", nargs="+", help="run directories (or metrics.jsonl files) to compare")
    pl.add_argument("--out", help="output PNG (default: RUN/metrics.png of the first run)")
    pl.add_argument("--labels", help="comma-separated legend labels (default: directory names)")
    bn = sub.add_parser("bench", help="run a benchmark of the source checkout's bench/ (JSON + PNG in bench/results)")
    bn.add_argument("name", help=" | ".join(_benchmarks()) or "a script of the source checkout's bench/")
    bn.add_argument("options", nargs=argparse.REMAINDER, help="options passed to the benchmark (see its --help)")
    cf = sub.add_parser("config", help="print the configuration file format")
    cf.add_argument("--defaults", action="store_true", required=True,
                    help="print a complete, commented TOML file with every default")
    return parser


def _limit_blas_threads(grid):
    """Share the node's cores between its ranks unless the user set the thread count."""
    if grid.size == 1 or any(os.environ.get(v) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")):
        return
    import scipy.linalg  # noqa: F401  (scipy brings its own OpenBLAS: load it so the limit reaches it too)
    from threadpoolctl import threadpool_limits

    threads = max(1, (os.cpu_count() or 1) // grid.local_size())
    threadpool_limits(threads)
    if grid.is_root:
        warnings.warn(f"OMP_NUM_THREADS is not set: using {threads} BLAS thread(s) per rank", RuntimeWarning, stacklevel=2)


# glibc's mallopt parameters (malloc.h) and the values set by _keep_freed_memory
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20   # blocks up to this size come from the heap (glibc's ceiling for it on 64-bit)
TRIM_THRESHOLD = 128 << 20  # freed memory at the heap's top that stays with the process


def _keep_freed_memory():
    """Let freed memory serve the next mini-batch's arrays instead of going back to the OS (glibc).

    Every batch allocates and frees the same temporaries of a few MB. Under glibc's defaults a
    freed block can go back to the OS (its mmap threshold adapts, but the heap's top is trimmed
    past 128 KiB), so the next batch page-faults the same memory in again. In 10 epochs of the
    suite's magic set at 2 ranks these settings cut the job's minor faults from 252 000 to 40 000
    and its wall time by 11 % (bench/results/allocator.json). Each rank keeps up to TRIM_THRESHOLD of
    freed heap. A MALLOC_* variable in the environment (glibc's own tunables) means the user
    chose: nothing is changed then, nor on other C libraries.
    """
    if sys.platform != "linux" or any(name.startswith(("MALLOC_", "GLIBC_TUNABLES")) for name in os.environ):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter already uses
        from os import confstr

        if not (confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return False
    except (AttributeError, OSError, ValueError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def _cmd_train(args, grid):
    from admm_mpi import config as cfg
    from admm_mpi.train import train

    cli = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    config = cfg.resolve(file=args.config, cli=cli)
    import signal

    from admm_mpi.stopping import StopRequest

    # Slurm pre-emption and scancel send SIGTERM, Ctrl-C sends SIGINT: finish the iteration (or
    # the mini-batch), checkpoint, exit cleanly. A second Ctrl-C interrupts at once.
    stop = StopRequest()

    def on_signal(signum, frame):
        stop.request(signum)
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    summary = train(config, grid, stop=stop).summary
    if summary.get("finished_earlier"):
        if grid.is_root:
            print(f"admm-mpi: the run in {config.out} has already finished, nothing to do (its outputs are "
                  f"unchanged): {summary['line']}", flush=True)
        return
    if summary.get("preempted"):
        signum = summary["stopped_by_signal"]
        if grid.is_root:
            inside = summary["stopped_inside_iteration"]
            where = f"inside iteration {inside}" if inside else f"after iteration {summary['iterations']}"
            print(f"admm-mpi: stopped by {signal.Signals(signum).name} {where}; checkpoint "
                  f"{summary['checkpoint']}; continue with --resume auto --out {config.out}", file=sys.stderr)
        raise SystemExit(128 + signum)
    if grid.is_root:
        print(_train_line(summary, config), flush=True)


def _train_line(summary, config):
    """The one line ``train`` prints: why it stopped, which iterate it kept, its accuracies."""
    from admm_mpi.train import summary_line

    return f"admm-mpi: {summary_line(summary, config)}"


def _cmd_evaluate(args, grid):
    from admm_mpi.train import evaluate

    if _raw_table(args.data):
        result = _on_root(grid, lambda: _evaluate_table(args.model, args.data))
    else:
        result = evaluate(args.model, args.data, grid)
    if grid.is_root:
        print(json.dumps(result, indent=2, ensure_ascii=False))


def _raw_table(path):
    """Whether ``--data`` of predict or evaluate names a raw table (CSV, TSV, Parquet), not HDF5."""
    from admm_mpi.convert import FORMATS

    name = os.path.basename(os.fspath(path)).lower().removesuffix(".gz")
    return name.endswith(FORMATS["csv"].suffixes + FORMATS["table"].suffixes)


def _on_root(grid, work):
    """``work()`` on the root only (a raw table is read serially); its InputError reaches every rank."""
    result = problem = None
    if grid.is_root:
        try:
            result = work()
        except InputError as exc:
            problem = str(exc)
    grid.agree(problem)
    return result


def _model_encoding(path, data):
    """``(Encoding, storage dtype)`` of a model trained on a converted table, or None; for a raw
    table ``data`` one is required."""
    import h5py

    from admm_mpi.data import ENCODING_GROUP

    with h5py.File(path, "r") as f:  # load_model has checked the file
        stored = ENCODING_GROUP in f
    if not stored:
        if data is not None:
            raise InputError(f"{path} holds no table encoding (its training data was not converted from a table), "
                             f"so the raw rows of {data} cannot be encoded as its training rows were; convert them "
                             "to HDF5 as the training data was")
        return None
    from admm_mpi.convert import tables_module

    return tables_module().read_encoding(path)


def _table_run(model_path, data, labels):
    """The model's predictions on a raw table: ``(table, encoding, [(Encoded, predicted)], TransformReport)``."""
    from admm_mpi.model import load_model, table_predictions
    from admm_mpi.tables import TransformReport

    spec, weights, biases = load_model(model_path)
    encoding, storage_dtype = _model_encoding(model_path, data)
    table, chunks = table_predictions(data, spec, weights, biases, encoding, storage_dtype, labels=labels)
    results = list(chunks)
    report = TransformReport()
    for encoded, _ in results:
        report.add(encoded.report)
    return table, encoding, results, report


def _table_notes(report):
    """What encoding the raw rows did, beyond the expected: for a report line."""
    notes = []
    if report.ignored_columns:
        notes.append(f"ignored columns {report.ignored_columns}")
    if report.unknown:
        notes.append(f"categories unseen in training (all-zero code) {report.unknown}")
    if report.missing:
        notes.append(f"missing cells filled {report.missing}")
    if report.missing_cells:
        notes.append(f"{report.missing_cells} rows with a missing cell not predicted (--missing drop)")
    return notes


def _evaluate_table(model_path, data):
    from admm_mpi.tables import missing_label_problem

    table, encoding, results, report = _table_run(model_path, data, labels=True)
    problem = missing_label_problem(table, encoding, report.missing_label)
    if problem:
        raise InputError(problem)
    import numpy as np

    y = np.concatenate([encoded.y for encoded, _ in results]) if results else np.empty(0, np.int64)
    predicted = np.concatenate([p for _, p in results]) if results else np.empty(0, np.int64)
    if y.size == 0:
        raise InputError(f"{data} holds no row to evaluate")
    counts = np.bincount(y, minlength=len(encoding.classes))
    return {"model": model_path, "data": data, "accuracy": float(np.mean(predicted == y)), "n_rows": int(y.size),
            "class_counts": {str(n): int(c) for n, c in zip(encoding.classes, counts)},
            "encoding": {"rows_read": report.rows_in, "rows_dropped_missing_label": report.missing_label,
                         "rows_dropped_missing_cells": report.missing_cells, "ignored_columns": report.ignored_columns,
                         "unknown_categories": report.unknown, "missing_cells_filled": report.missing}}


def _predict_table(model_path, data):
    """Rows of predicted class names for a raw table (one per data row, empty where a row was
    dropped), and one report line."""
    table, encoding, results, report = _table_run(model_path, data, labels=False)
    names = [""] * report.rows_in
    for encoded, predicted in results:
        for row, k in zip(encoded.rows, predicted):
            names[row] = encoding.classes[k]
    line = f"admm-mpi: predicted {report.rows_out} rows of {data} with the model's table encoding"
    notes = _table_notes(report)
    return _label_lines(encoding.label, names), line + ("; " + "; ".join(notes) if notes else "")


def _label_lines(label, names):
    """CSV text: a header line naming the label column, then one class name per line."""
    import csv
    import io

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([label])
    writer.writerows([n] for n in names)
    return text.getvalue()


def _cmd_predict(args, grid):
    import numpy as np

    from admm_mpi.data import load_shard
    from admm_mpi.model import load_model, predict

    if args.output:  # before any work: an unwritable path must not cost the predictions
        _check_writable(args.output, grid)
    if _raw_table(args.data):
        text, line = _on_root(grid, lambda: _predict_table(args.model, args.data)) or (None, None)
        if grid.is_root:
            print(line, file=sys.stderr)
            if args.output:
                _write_text(args.output, text)
            else:
                sys.stdout.write(text)
        return
    if args.split not in ("train", "test"):
        raise InputError(f"--split must be 'train' or 'test', got {args.split!r}")
    spec, weights, biases = load_model(args.model)
    encoding = _model_encoding(args.model, None)
    shard = load_shard(args.data, grid, weights[0].dtype, read_validation=False)
    if shard.n_features != spec.widths[0]:
        raise InputError(f"model expects {spec.widths[0]} features, {args.data} has {shard.n_features}")
    if args.split == "test" and shard.n_test_total == 0:
        raise InputError(f"{args.data} has no test split (no X_test and y_test); use --split train")
    X = shard.X if args.split == "train" else shard.X_test
    parts = grid.gather_to_root(predict(spec, weights, biases, X))
    if grid.is_root:
        labels = np.concatenate(parts)
        if encoding is None:
            text = "".join(f"{int(v)}\n" for v in labels)
        else:  # trained on a converted table: the class names, as for raw rows
            text = _label_lines(encoding[0].label, [encoding[0].classes[int(v)] for v in labels])
        if args.output:
            _write_text(args.output, text)
        else:
            sys.stdout.write(text)


def _check_writable(path, grid):
    """Rank 0 creates and removes ``path``'s temporary file; every rank raises if that failed."""
    from admm_mpi.files import create_file, write_problem

    problem = None
    if grid.is_root:
        if os.path.isdir(path):
            problem = f"cannot write {path}: it is a directory"
        else:
            try:
                create_file(f"{path}.tmp").close()
                os.remove(f"{path}.tmp")
            except OSError as exc:
                problem = write_problem(path, exc)
    grid.agree(problem)


def _probe_writable(path):
    """Root only (commands that run on rank 0 alone): InputError naming why ``path`` cannot be written."""
    from admm_mpi.files import create_file, write_problem

    if os.path.isdir(path):
        raise InputError(f"cannot write {path}: it is a directory")
    try:
        create_file(f"{path}.tmp").close()
        os.remove(f"{path}.tmp")
    except OSError as exc:
        raise InputError(write_problem(path, exc)) from None


def _write_text(path, text):
    """Write ``text`` to ``path`` through a temporary file; on failure remove it and say why."""
    from admm_mpi.files import create_file, write_problem

    tmp = f"{path}.tmp"
    try:
        with create_file(tmp) as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.isfile(tmp) and not os.path.islink(tmp):  # ours, partly written
            os.remove(tmp)
        raise InputError(write_problem(path, exc)) from None


def _cmd_info(args, grid):
    from admm_mpi.devices import gpu_report_lines

    gpu_lines = gpu_report_lines(grid)  # collective: every rank reports its own GPU side
    if not grid.is_root:
        return
    import h5py
    import numpy as np
    import scipy

    from admm_mpi.grid import mpi_library

    lines = [f"admm-mpi {__version__}", f"python {sys.version.split()[0]}", f"numpy {np.__version__}",
             f"scipy {scipy.__version__}", f"h5py {h5py.__version__} (parallel HDF5: {h5py.get_config().mpi})"]
    lines.append(mpi_library())
    lines.append(f"world size {grid.size}")
    try:
        from threadpoolctl import threadpool_info

        for pool in threadpool_info():
            lines.append(f"{pool['user_api']}: {pool['internal_api']} {pool.get('version')}, "
                         f"{pool['num_threads']} threads")
    except ImportError:
        pass
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        lines.append(f"{var}={os.environ.get(var, '(unset)')}")
    lines.extend(gpu_lines)
    print("\n".join(lines))


def _cmd_data(args, grid):
    """Data commands are serial: rank 0 does the work, other ranks have nothing to do."""
    if not grid.is_root:
        return
    from admm_mpi import convert

    if args.data_command == "info":
        print(json.dumps(convert.info(args.path), indent=2, ensure_ascii=False))
        return
    if args.data_command == "augment":
        from admm_mpi.graph import augment

        _probe_writable(args.out)
        print(json.dumps(augment(args.input, args.adjacency, args.out, args.hops), indent=2))
        return
    if args.chunk_rows < 1:
        raise InputError(f"--chunk-rows must be at least 1, got {args.chunk_rows}")
    if not (args.scale > 0 and args.scale != float("inf")):
        raise InputError(f"--scale must be a finite positive number, got {args.scale}")
    if args.allow_virtual and (args.format or convert.detect_format(args.input)) != "hdf5":
        raise InputError("--allow-virtual applies to HDF5 input only")
    options = {"allow_virtual": True} if args.allow_virtual else {}
    summary = convert.convert(args.input, args.out, fmt=args.format, test_inputs=args.test,
                              test_fraction=args.test_fraction, validation_fraction=args.validation_fraction,
                              standardize=args.standardize, chunk=args.chunk_rows, seed=args.seed, name=args.name,
                              scale=args.scale, label=args.label, delimiter=args.delimiter, header=args.header,
                              table=_table_settings(args), **options)
    if "table" in summary:  # every encoding decision, readable (the JSON below has them too)
        from admm_mpi.tables import report_lines

        print("\n".join(f"admm-mpi: {line}" for line in report_lines(summary["table"])), file=sys.stderr)
    print(json.dumps(summary, indent=2, ensure_ascii=False))


def _input_formats():
    from admm_mpi.convert import FORMATS

    return list(FORMATS)


def _columns(text):
    return tuple(c.strip() for c in text.split(",") if c.strip()) if text else ()


def _table_settings(args):
    """The ``TableSpec`` settings given on the command line (None for those not given)."""
    ordinal = _columns(args.ordinal)
    if any("=" in item for item in ordinal):  # NAME=LOW<MID<HIGH: levels in the order given
        ordinal = {name.strip(): [v.strip() for v in levels.split("<")] if sep else None
                   for name, sep, levels in (item.partition("=") for item in ordinal)}
        unordered = [n for n, levels in ordinal.items() if levels is None]
        if unordered:
            raise InputError(f"--ordinal: give the levels of every column when one has them (NAME=A<B<C): "
                             f"{unordered} have none")
    return {"categorical": _columns(args.categorical), "ordinal": ordinal, "drop": _columns(args.drop),
            "keep": _columns(args.keep), "missing": args.missing, "fill_value": args.fill_value,
            "max_categories": args.max_categories}


def _cmd_plot(args, grid):
    if not grid.is_root:
        return
    from admm_mpi.plot import plot_runs

    first = args.runs[0]
    out = args.out or os.path.join(first if os.path.isdir(first) else os.path.dirname(first) or ".", "metrics.png")
    labels = args.labels.split(",") if args.labels else None
    if labels and len(labels) != len(args.runs):
        raise InputError(f"--labels names {len(labels)} runs but {len(args.runs)} were given")
    _probe_writable(out)
    print(plot_runs(args.runs, out, labels))


def _bench_directory():
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "bench"


def _benchmarks():
    """Every benchmark script of the source checkout's bench/ (none in an installed wheel)."""
    bench = _bench_directory()
    return sorted(p.stem for p in bench.glob("*.py") if p.stem != "common") if bench.exists() else []


def _cmd_bench(args, grid):
    """Benchmarks launch their own mpiexec jobs: run them from one process only."""
    if grid.size > 1:
        raise InputError("run `admm-mpi bench` without mpiexec: the benchmarks start their own MPI jobs")
    import subprocess

    bench = _bench_directory()
    script = bench / f"{args.name}.py"
    if args.name == "common" or not script.exists():
        known = _benchmarks()
        raise InputError(f"no benchmark {args.name!r}" + (f"; choose from {known}" if known else
                         " (the bench/ scripts live in the source checkout: pip install -e .)"))
    completed = subprocess.run([sys.executable, str(script), *args.options])
    if completed.returncode:
        raise SystemExit(completed.returncode)


def _cmd_tune(args, grid):
    from admm_mpi.tune import cmd_tune

    cmd_tune(args, grid)


def _cmd_config(args, grid):
    if grid.is_root:
        from admm_mpi.config import defaults_toml

        sys.stdout.write(defaults_toml())


COMMANDS = {"plot": _cmd_plot, "config": _cmd_config, "bench": _cmd_bench, "train": _cmd_train, "tune": _cmd_tune, "evaluate": _cmd_evaluate, "predict": _cmd_predict, "info": _cmd_info,
            "data": _cmd_data}


def main(argv=None):
    from admm_mpi.grid import Grid

    grid = Grid()
    grid.warn_if_launcher_disagrees()
    _Parser.quiet = not grid.is_root
    try:
        args = make_parser(argv).parse_args(argv)
        _limit_blas_threads(grid)
        _keep_freed_memory()
        COMMANDS[args.command](args, grid)
    except InputError as exc:
        # Every rank raised the same agreed error: one message, clean exit everywhere.
        if grid.is_root:
            print(f"admm-mpi: error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except TrainingError as exc:
        if grid.is_root:
            print(f"admm-mpi: error: {exc}", file=sys.stderr)
        return EXIT_TRAINING_ERROR
    except SystemExit as exc:  # --help / --version
        return exc.code if isinstance(exc.code, int) else 0
    except BrokenPipeError:
        # the reader of our output went away (`admm-mpi data info F | head -1`): stop quietly, as
        # Unix tools do, with the status of a SIGPIPE; Python must not complain at exit either
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return 141
    except MemoryError:
        # a network or data set too large for this node: one line, and the whole job ends (other
        # ranks may be waiting in a collective)
        print(f"admm-mpi: error: out of memory on rank {grid.rank} (try narrower --hidden, more ranks, "
              "or --dtype float32)", file=sys.stderr, flush=True)
        if grid.size > 1:
            grid.abort(EXIT_TRAINING_ERROR)
        return EXIT_TRAINING_ERROR
    except BaseException as exc:
        # Only this rank failed: print why, then end the whole job instead of leaving the
        # other ranks waiting in a collective forever.
        import traceback

        code = 130 if isinstance(exc, KeyboardInterrupt) else 1
        prefix = f"admm-mpi: rank {grid.rank}: " if grid.size > 1 else "admm-mpi: "
        print(f"{prefix}unexpected error, aborting the job: {type(exc).__name__}: {exc}", file=sys.stderr)
        traceback.print_exc()
        if grid.size > 1:
            grid.abort(code)
        return code
    finally:
        grid.close()
    return 0
