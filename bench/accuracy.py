"""Accuracy on real data: every committed config in configs/ against PyTorch Adam on the same MLP.

    pip install -e ".[bench]"      # torch==2.13.0 (CPU) and matplotlib, for the Adam reference and plots
    python bench/accuracy.py                       # every config, both data sets, Adam, the ablation
    python bench/accuracy.py --only mnist-minibatch_am --skip-adam --skip-ablation

Each config ``configs/<dataset>-<solver>.toml`` runs as

    mpiexec -n 2 admm-mpi train --config configs/<dataset>-<solver>.toml --data <dataset>.h5

with one BLAS thread per rank (the two cores of this machine), exactly as recorded in the result.
The data sets are converted once from their IDX files (MNIST: ../shared/data/mnist; Fashion-MNIST:
Debian's dataset-fashion-mnist, /usr/share/datasets/fashion-mnist) into --cache; a data set whose
files are absent is skipped with a message. The reported accuracy is the *last* iteration's on the
official 10 000 test images (no best-of-curve picking). PyTorch Adam (lr 1e-3, batch 128, the
config's widths, ReLU, cross-entropy, torch.set_num_threads(2)) is the reference.

Writes results/accuracy.json (merged by run name, so a partial run updates its entries only),
results/accuracy.png (test accuracy against iteration and against training seconds) and
results/accuracy.md (the ablation: what each ingredient of the best recipe adds on MNIST).

Those runs' recipes were chosen on test accuracy (each entry says so in ``selected_on``).
``python bench/accuracy.py --fold-selections`` adds the validation-selected ones: every
``results/selection_*.json`` of ``bench/select_recipe.py`` (a config's candidates, or Adam's
learning rates, chosen on 10 000 held-out training images; the test split read once, by the pick)
becomes an entry of ``selected`` with its validation and test accuracy.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import ALL_ROWS, RESULTS, SOURCES, data_file, git_commit, load_samples, mpiexec, save_plot, write_result
from time_to_accuracy import run_torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
ADAM_EPOCHS = 10
# The ablation: from full-batch Taylor ADMM to the committed mini-batch recipe, one ingredient added
# per row (short runs; the committed recipe's own run is the last row). (label, config, overrides)
# The config has changed since (validation rows, the weight average, the hinge, 8000-1000): these
# flags give back the recipe as the ablation ran it (7545a51), so a rerun repeats the recorded rows.
AS_RUN = [*ALL_ROWS, "--hidden", "4000,1000", "--loss", "cross_entropy", "--average", "0"]
SMALL = [*AS_RUN, "--hidden", "1000,1000", "--iters", "4"]
ABLATION = [
    ("full-batch Taylor ADMM, least squares, 1000-1000, 20 iterations", "mnist-taylor",
     [*ALL_ROWS, "--hidden", "1000,1000", "--iters", "20"]),
    ("mini-batch AM, least-squares output (beta 1), no weight decay, 1000-1000, 4 epochs", "mnist-minibatch_am",
     [*SMALL, "--loss", "least_squares", "--beta", "1", "--ridge", "0"]),
    ("+ cross-entropy output by its exact prox (beta 0.1)", "mnist-minibatch_am", [*SMALL, "--ridge", "0"]),
    ("+ weight decay ridge 1e-4 per sample", "mnist-minibatch_am", SMALL),
    ("+ a 4000-wide first layer (4000-1000)", "mnist-minibatch_am", [*AS_RUN, "--iters", "4"]),
]


def run_config(name, data, out_root, ranks=2, extra=()):
    """Train one config under mpiexec; returns the result entry (command, accuracy, curve, cost)."""
    out = Path(out_root) / name
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "admm_mpi", "train",
           "--config", str((CONFIGS / f"{name.split('+')[0]}.toml").relative_to(REPO)), "--data", data,
           *extra, "--eval-test", "every", "--no-progress", "--out", str(out)]  # the test curve of every iteration
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=6 * 3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    clock, curve = 0.0, []
    for r in rows:
        clock += r["seconds"]
        curve.append({"iteration": r["iteration"], "seconds": round(clock, 3),
                      "test_accuracy": r["test_accuracy"], "train_accuracy": r["train_accuracy"]})
    return {
        "name": name, "dataset": name.split("-")[0], "solver": summary["solver"],
        "command": " ".join(["OMP_NUM_THREADS=1", "mpiexec", *cmd[1:3], "admm-mpi", *cmd[6:]]),
        "test_accuracy": summary["test_accuracy"], "train_accuracy": summary["train_accuracy"],
        "iterations": summary["iterations"], "seconds_per_iteration": summary["seconds_per_iteration"],
        "ranks": summary["ranks"], "widths": summary["widths"], "config": summary["config"],
        "peak_memory_bytes_per_rank": summary["peak_memory_bytes_per_rank"],
        "wall_seconds": round(time.perf_counter() - t0, 1), "commit": git_commit(), "curve": curve,
    }


def run_adam(dataset, data, hidden, epochs=ADAM_EPOCHS):
    """PyTorch Adam on the same MLP, data and cores (time_to_accuracy's loop); a point per epoch."""
    import torch

    arrays = load_samples(data)
    problem = {"hidden": tuple(hidden), "epochs": epochs, "target": 1.0}
    curve = run_torch(problem, "adam", arrays)
    per_epoch = len(curve) / epochs
    return {"name": f"{dataset}-pytorch_adam", "dataset": dataset, "solver": f"PyTorch {torch.__version__} Adam",
            "test_accuracy": curve[-1][1], "iterations": epochs, "widths": [arrays[0].shape[1], *hidden, 10],
            "command": f"python bench/accuracy.py (run_adam: lr 1e-3, batch 128, {epochs} epochs, 2 threads)",
            "curve": [{"iteration": (k + 1) / per_epoch, "seconds": round(s, 3), "test_accuracy": a}
                      for k, (s, a) in enumerate(curve)]}


SELECTED_ON = ("validation: 10 000 of the 60 000 official training images held out "
               "(--validation-fraction 0.16667, stratified, seed 0); the test images read once, by the pick")
TEST_SELECTED = "test: the recipe was chosen by looking at test accuracy (recorded before validation selection)"


def selection_entry(path):
    """accuracy.json's record of one ``bench/select_recipe.py`` result: the validation-selected pick of
    a config (``selection_<config>.json``) or PyTorch's (``selection_<data set>-adam.json``, ``-sgd.json``)."""
    result = json.loads(Path(path).read_text())
    common = {"source": Path(path).name, "commit": result.get("commit"), "selected_on": SELECTED_ON,
              "n_test": result.get("n_test")}
    if "torch" in result:
        torch_ = result["torch"]
        dataset = Path(result["config"]).stem.split("-")[0]
        pick = next(c for c in torch_["candidates"] if c["tag"] == torch_["pick"])
        optimisers = "+".join(sorted({c["optimiser"] for c in torch_["candidates"]}))
        return {**common, "name": f"{dataset}-pytorch_{optimisers}", "dataset": dataset,
                "solver": f"PyTorch {torch_['torch']} {optimisers}", "hidden": pick["hidden"],
                "n_test": torch_["n_test"], "kept_epoch": pick["kept_epoch"], "epochs_run": pick["epochs_run"],
                "candidates": [{k: c[k] for k in ("tag", "optimiser", "lr", "schedule", "hidden", "iters",
                                                  "validation_accuracy", "kept_epoch")} for c in torch_["candidates"]],
                "pick": f"{pick['tag']} (lr {pick['lr']:g}, {pick['schedule']})",
                "validation_accuracy": torch_["pick_validation_accuracy"], "test_accuracy": torch_["pick_test_accuracy"]}
    pick = next(c for c in result["candidates"] if c["tag"] == result["pick"])
    return {**common, "name": Path(result["config"]).stem, "dataset": Path(result["config"]).stem.split("-")[0],
            "solver": pick["settings"]["solver"], "config": result["config"], "pick": result["pick"],
            "hidden": pick["settings"]["hidden"],
            "pick_flags": pick["flags"], "kept_epoch": pick["kept_epoch"], "epochs_run": pick["epochs_run"],
            "train_seconds": round(pick["train_seconds"], 1),
            "candidates": [{"tag": c["tag"], "flags": c["flags"], "validation_accuracy": c["validation_accuracy"],
                            "kept_epoch": c["kept_epoch"]} for c in result["candidates"]],
            "validation_accuracy": result["pick_validation_accuracy"], "test_accuracy": result["pick_test_accuracy"]}


def fold_selections():
    """Every ``results/selection_*.json`` into accuracy.json's ``selected`` list; the earlier runs
    (``runs``) are labelled as chosen on test."""
    path = RESULTS / "accuracy.json"
    result = json.loads(path.read_text())
    result["selected"] = [selection_entry(p) for p in sorted(RESULTS.glob("selection_*.json"))]
    for entry in result["runs"]:
        entry.setdefault("selected_on", TEST_SELECTED)
    write_result("accuracy", result)
    (RESULTS / "accuracy_selected.md").write_text(selected_markdown(result["selected"]))
    for e in result["selected"]:
        print(f"{e['name']:28s} pick {e['pick']:12s} validation {e['validation_accuracy']:.4f} "
              f"test {e['test_accuracy']:.4f}")
    return result


def selected_markdown(entries):
    """The validation-selected recipes as a table (README, *Accuracy on MNIST and Fashion-MNIST*)."""
    lines = ["| data set | method (recipe) | hidden widths | candidates: validation accuracy (kept epoch) | pick | "
             "validation accuracy | test accuracy, read once | results file |", "|---|---|---|---|---|---|---|---|"]
    order = {"mnist": 0, "fashion_mnist": 1}
    for e in sorted(entries, key=lambda e: (order.get(e["dataset"], 2), "PyTorch" in e["solver"],
                                            -e["validation_accuracy"])):
        tried = " / ".join(f"{c['tag']}: {c['validation_accuracy']:.4f} ({c['kept_epoch']})" for c in e["candidates"])
        method = e["solver"] if "PyTorch" in e["solver"] else f"`{e['solver']}` (`{e['config']}`)"
        mlp = "-".join(map(str, e["hidden"]))
        lines.append(f"| {e['dataset']} | {method} | {mlp} | {tried} | {e['pick']} | {e['validation_accuracy']:.4f} | "
                     f"**{e['test_accuracy']:.4f}** | `{e['source']}` ({(e.get('commit') or '')[:7]}) |")
    return "\n".join(lines) + "\n"


def merge(entries):
    path = RESULTS / "accuracy.json"
    old = json.loads(path.read_text()) if path.exists() else {"runs": [], "ablation": []}
    for key in ("runs", "ablation"):
        fresh = {e["name"]: e for e in entries.get(key, [])}
        old[key] = [fresh.pop(e["name"], e) for e in old[key]] + list(fresh.values())
    old["benchmark"] = "accuracy on real data"
    old.pop("command_of_last_update", None)  # write_result records the last update's argv, commit, machine
    write_result("accuracy", old)
    return old


def plot(result):
    datasets = sorted({r["dataset"] for r in result["runs"]})
    for dataset in datasets:
        runs = [r for r in result["runs"] if r["dataset"] == dataset]

        def draw(axes, runs=runs, dataset=dataset):
            for r in runs:
                it = [p["iteration"] for p in r["curve"]]
                secs = [p["seconds"] for p in r["curve"]]
                acc = [p["test_accuracy"] for p in r["curve"]]
                style = dict(label=f"{r['solver']} ({r['test_accuracy']:.4f})",
                             linestyle="--" if "PyTorch" in r["solver"] else "-")
                axes[0].plot(it, acc, **style)
                axes[1].plot(secs, acc, **style)
            for ax, xlabel in zip(axes, ("iteration (epoch for mini-batch runs and Adam)", "seconds (2 cores)")):
                ax.set_ylim(0.8 if dataset == "mnist" else 0.7, 1.0)
                ax.set_xlabel(xlabel)
                ax.set_ylabel("test accuracy")
                ax.grid(alpha=0.3)
            axes[1].set_xscale("log")
            axes[0].set_title(f"{dataset}: test accuracy")
            axes[0].legend(fontsize=7)

        save_plot(f"accuracy_{dataset}", draw, panels=2)


def ablation_markdown(result):
    lines = ["# What each ingredient adds (MNIST, 784-…-10, 2 ranks)", "",
             "Generated by `python bench/accuracy.py`; each row is one run of the committed config with the",
             "overrides shown, last-iteration test accuracy on the official 10 000 test images.", "",
             "| run | overrides | iterations | test accuracy | change |", "|---|---|---|---|---|"]
    previous = None
    final = next((r for r in result["runs"] if r["name"] == "mnist-minibatch_am"), None)
    rows = result["ablation"] + ([{**final, "label": "+ 10 epochs: the committed recipe", "overrides": []}]
                                 if final else [])
    for r in rows:
        change = "" if previous is None else f"{r['test_accuracy'] - previous:+.4f}"
        lines.append(f"| {r['label']} | `{' '.join(r['overrides']) or '(none)'}` | {r['iterations']} | "
                     f"{r['test_accuracy']:.4f} | {change} |")
        previous = r["test_accuracy"]
    lines += mode_table(result)
    (RESULTS / "accuracy.md").write_text("\n".join(lines) + "\n")


def mode_table(result):
    """Full batch against the mini-batch mode, per solver on MNIST: what the mode added.

    ``result["full_batch"]`` keeps the full-batch runs of the solvers whose committed recipe is now
    in mini-batch mode (recorded by this script with the earlier full-batch recipes).
    """
    current = {r["name"]: r for r in result["runs"]}
    rows = [(old, current.get(old["name"])) for old in result.get("full_batch", [])]
    if not rows:
        return []
    lines = ["", "## Full batch against the mini-batch mode (MNIST, 2 ranks)", "",
             "Each solver's own iteration; the mini-batch mode runs it per batch from forward-pass codes",
             "(README, *Mini-batch mode*). Last-iteration test accuracy; seconds per iteration of the loop",
             "(an epoch in mini-batch mode).", "",
             "| solver | full batch: MLP, iterations | test accuracy | s/iteration | mini-batch mode: MLP, batch, sweeps, epochs "
             "| test accuracy | s/epoch | change |", "|---|---|---|---|---|---|---|---|"]
    for old, new in rows:
        def mlp(r):
            return "-".join(str(w) for w in r["widths"])
        left = f"| {old['solver']} | {mlp(old)}, {old['iterations']} | {old['test_accuracy']:.4f} | " \
               f"{old['seconds_per_iteration']:.1f} |"
        if new is None or not new["config"].get("batch_size"):
            lines.append(left + " (not run) | | | |")
            continue
        c = new["config"]
        lines.append(left + f" {mlp(new)}, {c['batch_size']}, {c.get('batch_sweeps', 1)}, {new['iterations']} | "
                     f"{new['test_accuracy']:.4f} | {new['seconds_per_iteration']:.1f} | "
                     f"{new['test_accuracy'] - old['test_accuracy']:+.4f} |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="run these config names only (repeatable)")
    parser.add_argument("--skip-adam", action="store_true")
    parser.add_argument("--skip-ablation", action="store_true")
    parser.add_argument("--ablation-only", action="store_true")
    parser.add_argument("--cache", default=str(REPO / "bench" / ".data"), help="converted data sets")
    parser.add_argument("--out", default=str(REPO / "runs" / "accuracy"), help="run directories")
    parser.add_argument("--fold-selections", action="store_true",
                        help="only fold results/selection_*.json (bench/select_recipe.py) into accuracy.json")
    args = parser.parse_args(argv)
    if args.fold_selections:
        fold_selections()
        return
    entries = {"runs": [], "ablation": []}
    names = sorted(p.stem for p in CONFIGS.glob("*.toml"))
    if args.only:
        names = [n for n in names if n in args.only]
    for dataset in SOURCES:
        data = data_file(dataset, args.cache)
        if data is None:
            print(f"skipping {dataset}: its IDX files are not in {SOURCES[dataset]}")
            continue
        if not args.ablation_only:
            for name in (n for n in names if n.split("-")[0] == dataset):
                entry = run_config(name, data, args.out)
                entries["runs"].append(entry)
                print(f"{name}: test {entry['test_accuracy']:.4f} after {entry['iterations']} iterations, "
                      f"{entry['seconds_per_iteration']:.2f} s/iteration", flush=True)
                merge({"runs": [entry]})
            if not args.skip_adam:
                recorded = merge({})["runs"]  # this run's and earlier runs' results
                best = max((e for e in recorded if e["dataset"] == dataset and "PyTorch" not in e["solver"]),
                           key=lambda e: e["test_accuracy"], default=None)
                hidden = best["widths"][1:-1] if best else [1000, 1000]
                entry = run_adam(dataset, data, hidden)
                print(f"{dataset} Adam: test {entry['test_accuracy']:.4f}", flush=True)
                merge({"runs": [entry]})
        if dataset == "mnist" and not args.skip_ablation:
            for k, (label, config, overrides) in enumerate(ABLATION):
                entry = run_config(f"{config}+ablation{k}", data, args.out, extra=overrides)
                entry.update(label=label, overrides=overrides)
                print(f"ablation {label}: {entry['test_accuracy']:.4f}", flush=True)
                merge({"ablation": [entry]})
    result = merge({})
    plot(result)
    if result["ablation"]:
        ablation_markdown(result)


if __name__ == "__main__":
    main()
