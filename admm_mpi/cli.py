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


def _add_train_arguments(p):
    from admm_mpi.config import TrainConfig, layer_parallel_solvers
    from admm_mpi.solvers import SOLVERS

    p.add_argument("--config", metavar="FILE.toml", help="TOML file with any of the settings below")
    p.add_argument("--data", help="HDF5 data set (default: the bundled 'digits')")
    p.add_argument("--solver", help=f"ADMM solver: {' | '.join(SOLVERS)} (default: {TrainConfig.solver})")
    p.add_argument("--layout", help=f"data | layer | hybrid (layer and hybrid: {', '.join(layer_parallel_solvers())}; "
                                    "default: data)")
    p.add_argument("--layer-groups", dest="layer_groups", type=int,
                   help="hybrid layout: layer groups G of the G x P/G process grid")
    p.add_argument("--hidden", help="hidden layer widths (default: 512,512)")
    p.add_argument("--activation", help="relu | leaky_relu | hard_tanh | sigmoid | tanh (default: the solver's)")
    p.add_argument("--loss", help="least_squares | cross_entropy | ova_hinge | binary_hinge "
                                 "(default: the solver's)")
    p.add_argument("--iters", type=int, help="iterations, epochs for the mini-batch solvers; an upper bound with "
                                             "early stopping (default: 60)")
    p.add_argument("--dtype", help="float32 | float64 (default: float32)")
    p.add_argument("--device", help="cpu | gpu (default: cpu; gpu needs cupy)")
    p.add_argument("--seed", type=int, help="seed of the initial weights (default: 0)")
    p.add_argument("--out", help="output directory (default: runs/latest)")
    p.add_argument("--tol", type=float, help="stop when ||z_L - W_L a_{L-1} - b_L|| <= tol*sqrt(N) (default: 0, off)")
    _add_solver_arguments(p.add_argument_group("solver settings (default: the chosen solver's own)"))
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int,
                   help="write a checkpoint every K iterations (default: 0, only on SIGTERM)")
    p.add_argument("--resume", help="continue from a checkpoint: auto | RUN_DIR | FILE")
    p.add_argument("--checkpoint-state", dest="checkpoint_state", metavar="full|global",
                   help="what a checkpoint holds: full (default; bit-exact resume) or global (weights and "
                        "schedules only; a full-batch solver resumes from forward-pass codes, multipliers at 0)")
    p.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                   help="no progress bar")
    _add_validation_arguments(p.add_argument_group("validation, model selection and evaluation"))


def _add_solver_arguments(group):
    """One flag per solver setting (from the registered solvers' ``Params``); its help gives each
    solver's meaning and default. The value is text, converted with the chosen solver's type."""
    from admm_mpi.config import solver_settings

    for name, (metavar, meanings) in solver_settings().items():
        parts = []
        for meaning, users in meanings.items():
            if len({repr(default) for _, default in users}) == 1:
                defaults = repr(users[0][1])
            else:
                defaults = ", ".join(f"{solver} {default!r}" for solver, default in users)
            parts.append(f"{', '.join(solver for solver, _ in users)}: {meaning} (default {defaults})")
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar=metavar,
                           help="; ".join(parts).replace("%", "%%"))


def _add_validation_arguments(v):
    v.add_argument("--validation-fraction", dest="validation_fraction", type=float, metavar="F",
                   help="hold out this fraction of each class's training rows for validation, drawn from --seed "
                        "(default: 0.1; 0: none; a data file's X_val, y_val are used instead when present)")
    v.add_argument("--early-stopping", dest="early_stopping", action="store_const", const=True,
                   help="stop when validation accuracy has not improved for --patience evaluations (default: on; "
                        "without validation rows off, unless given, which is then an error)")
    v.add_argument("--no-early-stopping", dest="early_stopping", action="store_const", const=False,
                   help="run all --iters iterations")
    v.add_argument("--patience", type=int, metavar="K",
                   help="evaluations without a better validation accuracy before --early-stopping stops (default: 10)")
    v.add_argument("--keep", metavar="best|last",
                   help="iterate written to model.h5 and summarised: last, or best validation accuracy (default: "
                        "best; without validation rows last, unless given, which is then an error)")
    v.add_argument("--eval-test", dest="eval_test", metavar="never|end|every",
                   help="test split: never read, evaluated once on the kept model at the end, or at every "
                        "evaluation (default: end)")
    v.add_argument("--eval-every", dest="eval_every", type=int, metavar="K",
                   help="evaluate train and validation accuracy every K iterations and at the last (default: 1)")


def make_parser():
    parser = _Parser(prog="admm-mpi", description="Train neural networks by ADMM over MPI ranks.")
    parser.add_argument("--version", action="version", version=f"admm-mpi {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train_arguments(sub.add_parser("train", help="train a network"))
    from admm_mpi.tune import add_parser as add_tune_parser

    add_tune_parser(sub)
    ev = sub.add_parser("evaluate", help="accuracy of a saved model on a data set")
    ev.add_argument("--model", required=True, help="model.h5 written by train")
    ev.add_argument("--data", default="digits", help="HDF5 data set (default: digits)")
    pr = sub.add_parser("predict", help="predicted labels of a saved model")
    pr.add_argument("--model", required=True, help="model.h5 written by train")
    pr.add_argument("--data", default="digits", help="HDF5 data set (default: digits)")
    pr.add_argument("--split", default="test", help="train | test (default: test)")
    pr.add_argument("--output", help="file for the labels, one per line (default: standard output)")
    sub.add_parser("info", help="versions, MPI library, BLAS and thread settings")
    data = sub.add_parser("data", help="convert data sets to the admm-mpi HDF5 format, inspect them")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    cv = data_sub.add_parser("convert", help="NPZ, CSV, LIBSVM, IDX or HDF5 to admm-mpi HDF5, streamed in chunks")
    cv.add_argument("input", help="input file; for IDX give IMAGES,LABELS")
    cv.add_argument("--out", required=True, help="output HDF5 file")
    cv.add_argument("--format", help="npz | csv | libsvm | idx | hdf5 (default: from the file name)")
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
    cv.add_argument("--label-column", type=int, default=0, help="csv: column of the label (default: 0)")
    cv.add_argument("--delimiter", help="csv: field separator (default: whitespace)")
    cv.add_argument("--seed", type=int, default=0, help="seed of the test and validation splits (default: 0)")
    cv.add_argument("--name", help="data set name stored in the file")
    cv.add_argument("--allow-virtual", dest="allow_virtual", action="store_true",
                    help="hdf5: accept virtual datasets once every source file is found (their values are copied "
                         "into the output); external raw storage is always refused")
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

    result = evaluate(args.model, args.data, grid)
    if grid.is_root:
        print(json.dumps(result, indent=2))


def _cmd_predict(args, grid):
    import numpy as np

    from admm_mpi.data import load_shard
    from admm_mpi.model import load_model, predict

    if args.split not in ("train", "test"):
        raise InputError(f"--split must be 'train' or 'test', got {args.split!r}")
    spec, weights, biases = load_model(args.model)
    if args.output:  # before any work: an unwritable path must not cost the predictions
        _check_writable(args.output, grid)
    shard = load_shard(args.data, grid, weights[0].dtype, read_validation=False)
    if shard.n_features != spec.widths[0]:
        raise InputError(f"model expects {spec.widths[0]} features, {args.data} has {shard.n_features}")
    if args.split == "test" and shard.n_test_total == 0:
        raise InputError(f"{args.data} has no test split (no X_test and y_test); use --split train")
    X = shard.X if args.split == "train" else shard.X_test
    parts = grid.gather_to_root(predict(spec, weights, biases, X))
    if grid.is_root:
        labels = np.concatenate(parts)
        text = "".join(f"{int(v)}\n" for v in labels)
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
        print(json.dumps(convert.info(args.path), indent=2))
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
    options = {}
    fmt = args.format or convert.detect_format(args.input.split(",")[0])
    if fmt == "csv":
        options = {"label_column": args.label_column, "delimiter": args.delimiter}
    elif fmt == "hdf5":
        options = {"allow_virtual": args.allow_virtual}
    elif args.allow_virtual:
        raise InputError("--allow-virtual applies to HDF5 input only")
    summary = convert.convert(args.input, args.out, fmt=args.format, test_inputs=args.test,
                              test_fraction=args.test_fraction, validation_fraction=args.validation_fraction,
                              standardize=args.standardize,
                              chunk=args.chunk_rows, seed=args.seed, name=args.name, scale=args.scale,
                              **options)
    print(json.dumps(summary, indent=2))


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
        args = make_parser().parse_args(argv)
        _limit_blas_threads(grid)
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
