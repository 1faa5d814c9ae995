"""Rerun a selected recipe from its committed config and compare with the recorded accuracy.

    python bench/reproduce.py --selection bench/results/selection_mnist-taylor.json --data ../cache/mnist.h5

runs the recipe as a user would, from the config alone,

    OMP_NUM_THREADS=1 mpiexec -n 2 admm-mpi train --config CONFIG --data DATA --eval-test end <extra>

(the config holds the pick and the selection's settings: validation fraction, budget, early
stopping, keep best), then compares its validation and test accuracy with the selection file's
pick, and its settings as run with the pick's settings as recorded. A rerun reproduces when both
accuracies are within ``--tolerance`` (0.002) and the settings differ only where ``--extra`` asked.
``--run DIR`` reads back a run directory that already finished (the same command, run earlier)
instead of training (``--run-commit`` records the commit it ran at). Results merge into ``results/reproduce.json``, one entry per selection file,
and ``results/reproduce.md`` tabulates them (``--table``: only rewrite that table from the JSON).
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, RESULTS, git_commit, machine_line, mpiexec, portable, run_record

# settings that say where and how loudly a run goes, or whether it reads test, not what it computes
NOT_RECIPE = ("data", "out", "progress", "eval_test", "resume", "checkpoint_every")


def config_path(recorded):
    """The selection's config path as recorded (portable: relative to the repository, ``$TMPDIR/``, ``~/``)."""
    path = Path(recorded.replace("$TMPDIR/", tempfile.gettempdir() + os.sep, 1)).expanduser()
    return str(path if path.is_absolute() else REPO / path)


def train_arguments(selection, data, extra):
    """``admm-mpi train``'s arguments: the config alone (it holds the pick), test read at the end."""
    return ["--config", config_path(selection["config"]), "--data", data, "--eval-test", "end", "--no-progress", *extra]


def pick_record(selection):
    (pick,) = [c for c in selection["candidates"] if c["tag"] == selection["pick"]]
    return pick


def compare(selection, summary, tolerance):
    """The rerun's accuracies and settings against the selection's pick."""
    pick = pick_record(selection)
    ran = {k: v for k, v in summary["config"].items() if k not in NOT_RECIPE}
    recorded = {k: v for k, v in pick["settings"].items() if k not in NOT_RECIPE}
    changed = {k: {"recorded": recorded.get(k), "rerun": ran.get(k)} for k in sorted(set(ran) | set(recorded))
               if ran.get(k) != recorded.get(k)}
    delta_validation = summary["validation_accuracy"] - selection["pick_validation_accuracy"]
    delta_test = summary["test_accuracy"] - selection["pick_test_accuracy"]
    return {"recorded": {"validation_accuracy": selection["pick_validation_accuracy"],
                         "test_accuracy": selection["pick_test_accuracy"], "kept_epoch": pick["kept_epoch"]},
            "rerun": {"validation_accuracy": summary["validation_accuracy"], "test_accuracy": summary["test_accuracy"],
                      "kept_epoch": summary["kept_iteration"], "epochs_run": summary["iterations"],
                      "ranks": summary["ranks"]},
            "delta_validation": delta_validation, "delta_test": delta_test, "settings_changed": changed,
            "reproduced": abs(delta_validation) <= tolerance and abs(delta_test) <= tolerance}


def markdown(merged):
    """A table of every rerun in ``merged`` (the contents of reproduce.json), one row per selection."""
    lines = ["# Reruns of the selected recipes", "",
             "Each row: `python bench/reproduce.py --selection bench/results/<selection>.json --data <set>.h5` "
             "reran the recipe from its committed config alone (`train command`) and compared the accuracies of "
             "the kept iterate with the selection's pick (read back: a finished run of the same command was read "
             "instead of training again).", "",
             "Machines: " + "; ".join(sorted({machine_line(r.get("machine", {})) for r in merged["runs"].values()}))
             + ". Each rerun's argv, commit and machine are in reproduce.json.", "",
             "| selection | validation: recorded / rerun | test: recorded / rerun | kept epoch: recorded / rerun "
             "| settings changed | reproduced (tolerance) | run commit | train command |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in sorted(merged["runs"].items()):
        recorded, rerun = r["recorded"], r["rerun"]
        changed = ", ".join(f"{k}: {v['recorded']} → {v['rerun']}" for k, v in sorted(r["settings_changed"].items()))
        lines.append(
            f"| `{name}` | {recorded['validation_accuracy']:.4f} / {rerun['validation_accuracy']:.4f} "
            f"| {recorded['test_accuracy']:.4f} / {rerun['test_accuracy']:.4f} "
            f"| {recorded['kept_epoch']} / {rerun['kept_epoch']} | {changed or 'none'} "
            f"| {'yes' if r['reproduced'] else '**no**'} ({r['tolerance']}) "
            f"| {_short_commit(r['run_commit'])}{' (read back)' if r['read_back'] else ''} | `{r['train_command']}` |")
    return "\n".join(lines) + "\n"


def _short_commit(commit):
    """The first 7 hex digits, keeping a ``+uncommitted`` mark; "unknown" when none was recorded."""
    if not commit:
        return "unknown"
    return commit.split("+")[0][:7] + ("+uncommitted" if commit.endswith("+uncommitted") else "")


def write_results(path, merged):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown(merged))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--selection", help="a results/selection_*.json file (required unless --table)")
    parser.add_argument("--data", help="the data set the selection ran on (HDF5; required unless --table)")
    parser.add_argument("--extra", default="", help="flags added to the config's (for example '--layout data')")
    parser.add_argument("--run", help="a finished run directory of this command (read back, not trained)")
    parser.add_argument("--run-commit", help="with --run: the commit that run was made at (recorded)")
    parser.add_argument("--runs", default=str(REPO / "bench" / ".runs"), help="where a fresh run goes")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--tolerance", type=float, default=0.002)
    parser.add_argument("--timeout", type=float, default=6 * 3600)
    parser.add_argument("--out", default=str(RESULTS / "reproduce.json"))
    parser.add_argument("--table", action="store_true", help="only rewrite the table (--out with .md) from --out")
    args = parser.parse_args(argv)
    if args.table:
        write_results(Path(args.out), json.loads(Path(args.out).read_text()))
        return 0
    if not (args.selection and args.data):
        parser.error("--selection and --data are required (unless --table)")
    selection_path = Path(args.selection)
    selection = json.loads(selection_path.read_text())
    extra = shlex.split(args.extra)
    out = Path(args.run) if args.run else Path(args.runs) / f"reproduce-{selection_path.stem}"
    arguments = train_arguments(selection, args.data, extra)
    if not args.run:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        command = [mpiexec(), "-n", str(args.ranks), sys.executable, "-m", "admm_mpi", "train", *arguments,
                   "--out", str(out)]
        subprocess.run(command, check=True, env=env, timeout=args.timeout, cwd=REPO)
    summary = json.loads((out / "summary.json").read_text())
    result = {"selection": selection_path.name, "selection_commit": selection.get("commit"),
              "train_command": "OMP_NUM_THREADS=1 " + shlex.join(["mpiexec", "-n", str(args.ranks), "admm-mpi",
                                                                 "train", *arguments]),
              "read_back": bool(args.run), "run_commit": args.run_commit if args.run else git_commit(),
              "tolerance": args.tolerance,
              **compare(selection, summary, args.tolerance), **run_record()}
    path = Path(args.out)
    merged = json.loads(path.read_text()) if path.exists() else {"benchmark": "reruns of selected recipes", "runs": {}}
    merged["runs"][selection_path.stem] = portable(result)
    write_results(path, merged)
    r = result
    print(f"{selection_path.stem}: validation {r['rerun']['validation_accuracy']:.4f} (recorded "
          f"{r['recorded']['validation_accuracy']:.4f}), test {r['rerun']['test_accuracy']:.4f} (recorded "
          f"{r['recorded']['test_accuracy']:.4f}); settings changed: {sorted(r['settings_changed']) or 'none'}; "
          f"{'reproduced' if r['reproduced'] else 'NOT reproduced'} within {args.tolerance}")
    return 0 if r["reproduced"] else 1


if __name__ == "__main__":
    sys.exit(main())
