"""Choose a recipe on a validation split, then read the test split once.

    python bench/select_recipe.py --config configs/mnist-minibatch_am.toml --data ../cache/mnist.h5 \\
        --validation-fraction 0.16667 --candidate "avg1=--average 1" --candidate "avg0=--average 0"

Each candidate runs as

    OMP_NUM_THREADS=1 mpiexec -n 2 admm-mpi train --config CONFIG --data DATA --validation-fraction F \\
        --iters N --early-stopping --patience K --keep best --eval-test never <candidate's flags>

so no candidate's training reads the test split (``--eval-test never``): MNIST's and Fashion-MNIST's
validation rows (``F = 0.16667``: 10 000 of the 60 000 official training images, stratified, drawn
from the seed) are carved from the training rows. The candidate with the best validation accuracy
(ties: the first listed) is the pick; its saved model (its best validation epoch, ``--keep best``)
is then scored once on the official test images with ``admm-mpi evaluate``. The other candidates
are never scored on test.

``--torch-candidate "TAG=OPTIMISER lr=LR [hidden=W,...] [iters=N] [schedule=S]"`` (repeatable) gives
PyTorch the same treatment on the same rows, under the same budget (as many candidates, the same
epoch budgets, widths among them): SGD with momentum 0.9 (``sgd_momentum``) or Adam, a constant rate
or ``warmup_cosine`` (linear warm-up over the first epoch, cosine decay to 0 at the candidate's epoch
budget), ReLU, cross-entropy, batches of 128, two threads; one run per candidate on the training rows
left after the validation rows are held out (``admm_mpi.data.validation_rows``, the rows ``admm-mpi
train --validation-fraction F`` holds out at the config's seed), validation accuracy after every
epoch, early stopping with the same patience, the best epoch's weights kept. The candidate with the
best validation accuracy is the pick; only its kept network is scored on test. Candidates added one
invocation at a time (``--reuse-from`` the same file) read the test split each time the pick
changes; the file lists every such read (``test_reads``), never used to choose. ``--adam-lr
LR`` is short for ``--torch-candidate adam-lrLR=adam lr=LR``. ADMM and PyTorch candidates go in
separate files (``selection_<data>-adam.json``, ``selection_<data>-sgd.json``). Needs torch (``pip
install -e ".[bench]"``).

Writes ``results/selection_<name>.json``: every candidate's flags, settings as run, validation curve
and seconds; the pick; its test accuracy. ``--reuse`` reads back a candidate whose run directory
already holds a finished run (its ``summary.json`` records the settings it ran with) instead of
running it again. ``--reuse-from FILE`` takes every candidate record of an earlier selection file
as it ran then (its flags and settings, which may differ from the config's today) and runs only the
``--candidate`` ones beside them: candidates can be added without rerunning the earlier ones. If the
pick is an earlier record, its test accuracy is the one that file read (the test split is not read
again); an earlier record that was not that file's pick cannot be the pick (its model is not kept).
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import RESULTS, TORCH_BATCH, load_samples, mpiexec, portable, run_record, torch_accuracy, torch_mlp


def train_command(args, flags, out):
    return [mpiexec(), "-n", str(args.ranks), sys.executable, "-m", "admm_mpi", "train", "--config", args.config,
            "--data", args.data, "--validation-fraction", str(args.validation_fraction), "--iters", str(args.iters),
            "--early-stopping", "--patience", str(args.patience), "--keep", "best", "--eval-test", "never",
            "--no-progress", "--out", str(out), *flags]


def run_candidate(args, tag, flags):
    """Train one candidate (or read it back with --reuse): its validation record, no test figure."""
    out = Path(args.runs) / f"{args.name}-{tag}"
    summary_path = out / "summary.json"
    reused = args.reuse and summary_path.exists()
    if not reused:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(train_command(args, flags, out), check=True, env=env, timeout=args.timeout)
    summary = json.loads(summary_path.read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["config"]["eval_test"] == "never" and summary["test_accuracy"] is None
    return {"tag": tag, "flags": flags, "reused": reused, "out": str(out),
            "settings": {k: v for k, v in summary["config"].items() if k not in ("data", "out")},  # no paths
            "n_train": summary["n_train"], "n_validation": summary["n_validation"],
            "validation_accuracy": summary["validation_accuracy"], "kept_epoch": summary["kept_iteration"],
            "epochs_run": summary["iterations"],
            "curve": [[r["iteration"], r["validation_accuracy"], r["seconds"]] for r in rows],
            "train_seconds": sum(r["seconds"] for r in rows)}


def test_accuracy(args, model):
    """The pick's model scored once on the data set's test split."""
    cmd = [mpiexec(), "-n", str(args.ranks), sys.executable, "-m", "admm_mpi", "evaluate", "--model", str(model),
           "--data", args.data]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=args.timeout,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
    result = json.loads(out)
    return result["test_accuracy"], result["n_test"]


TORCH_OPTIMISERS = ("adam", "sgd_momentum")
TORCH_SCHEDULES = ("constant", "warmup_cosine")


def torch_candidate(text, args, hidden):
    """``TAG=OPTIMISER lr=LR [hidden=W1,W2] [iters=N] [schedule=S]`` as a candidate: the config's widths
    and ``--iters`` unless given."""
    tag, _, spec = text.partition("=")
    words = spec.split()
    if not tag or not words or words[0] not in TORCH_OPTIMISERS:
        sys.exit(f"select_recipe: --torch-candidate {text!r}: TAG=OPTIMISER lr=LR [hidden=W,...] [iters=N] "
                 f"[schedule=S], OPTIMISER one of {', '.join(TORCH_OPTIMISERS)}")
    fields = dict(word.partition("=")[::2] for word in words[1:])
    unknown = sorted(set(fields) - {"lr", "hidden", "iters", "schedule"})
    schedule = fields.get("schedule", "constant")
    if unknown or "lr" not in fields or schedule not in TORCH_SCHEDULES:
        sys.exit(f"select_recipe: --torch-candidate {text!r}: lr=LR is required; hidden, iters and schedule "
                 f"({', '.join(TORCH_SCHEDULES)}) are optional{'; unknown: ' + ', '.join(unknown) if unknown else ''}")
    return {"tag": tag, "optimiser": words[0], "lr": float(fields["lr"]), "schedule": schedule,
            "hidden": [int(w) for w in fields["hidden"].split(",")] if "hidden" in fields else list(hidden),
            "iters": int(fields.get("iters", args.iters))}


def torch_epochs(model, splits, candidate, args):
    """One PyTorch candidate up to its epoch budget, early stopping on validation: (curve, best state)."""
    import torch

    from common import learning_rate_factor

    X, y = splits["train"]
    lr, iters = candidate["lr"], candidate["iters"]
    opt = (torch.optim.Adam(model.parameters(), lr=lr) if candidate["optimiser"] == "adam"
           else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9))
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = -(-X.shape[0] // TORCH_BATCH)
    curve, best, best_state, clock, step = [], -1.0, None, 0.0, 0
    for epoch in range(1, iters + 1):
        t0 = time.perf_counter()
        for idx in torch.randperm(X.shape[0], generator=generator).split(TORCH_BATCH):
            step += 1
            for group in opt.param_groups:
                group["lr"] = lr * learning_rate_factor(candidate["schedule"], step, steps_per_epoch, iters)
            opt.zero_grad()
            loss_fn(model(X[idx]), y[idx]).backward()
            opt.step()
        clock += time.perf_counter() - t0
        curve.append([epoch, torch_accuracy(model, *splits["validation"]), round(clock, 3)])
        print(f"{candidate['tag']} epoch {epoch}: validation {curve[-1][1]:.4f}, {clock:.0f} s", flush=True)
        if curve[-1][1] > best:
            best, best_state = curve[-1][1], {k: v.clone() for k, v in model.state_dict().items()}
        elif epoch - max(curve, key=lambda point: point[1])[0] >= args.patience:
            break
    return curve, best_state


def torch_splits(args):
    """The training rows left once the validation rows are held out, the validation rows and the test rows,
    as tensors (the rows ``admm-mpi train --validation-fraction F`` holds out at the config's seed)."""
    import torch
    from admm_mpi.data import validation_rows

    X, y, X_test, y_test = load_samples(args.data)
    held = validation_rows(y, args.validation_fraction, args.seed)
    keep = np.setdiff1d(np.arange(y.size), held)
    as_torch = lambda X, y: (torch.from_numpy(np.ascontiguousarray(X)), torch.from_numpy(np.asarray(y, np.int64)))
    return {"train": as_torch(X[keep], y[keep]), "validation": as_torch(X[held], y[held]),
            "test": as_torch(X_test, y_test)}


SAME_ROWS = ("config", "data", "validation_fraction", "patience")  # what an earlier file must share to join


def earlier_torch_records(path, new_tags, args):
    """The PyTorch candidate records of an earlier selection file (``torch``, or the older ``adam`` of
    ``--adam-lr`` runs, as constant-rate Adam candidates), each marked with where it came from, and its
    pick with every test read so far (``test_reads``). A file of other rows or patience is refused."""
    earlier = json.loads(Path(path).read_text())
    if "torch" not in earlier and "adam" not in earlier:
        sys.exit(f"select_recipe: {path} holds no PyTorch candidates: --reuse-from takes a file of the same method")
    differ = [k for k in SAME_ROWS if earlier.get(k) != getattr(args, k) and
              not (k in ("config", "data") and Path(str(earlier.get(k))).name == Path(getattr(args, k)).name)]
    if differ:
        sys.exit(f"select_recipe: {path} was selected with other {', '.join(differ)}: its validation figures "
                 "cannot be compared with these")
    source = {"file": Path(path).name, "commit": earlier.get("commit")}
    if "torch" in earlier:
        records, pick = earlier["torch"]["candidates"], earlier["torch"]
    else:
        adam = earlier["adam"]
        records = [{"tag": f"adam-lr{r['lr']:g}", "optimiser": "adam", "lr": r["lr"], "schedule": "constant",
                    "hidden": adam["widths"][1:-1], "iters": earlier["iters"],
                    **{k: r[k] for k in ("curve", "validation_accuracy", "kept_epoch", "epochs_run", "train_seconds")}}
                   for r in adam["runs"]]
        pick = {"pick": f"adam-lr{adam['pick_lr']:g}", "pick_test_accuracy": adam["pick_test_accuracy"],
                "n_test": adam["n_test"]}
    records = [{**r, "reused_from": r.get("reused_from", source)} for r in records]
    clash = sorted({r["tag"] for r in records} & set(new_tags))
    if clash:
        sys.exit(f"select_recipe: {path} already holds candidate(s) {', '.join(clash)}: give new tags")
    reads = pick.get("test_reads") or [{"tag": pick["pick"], "test_accuracy": pick["pick_test_accuracy"],
                                        "commit": earlier.get("commit")}]
    return records, {"pick": pick["pick"], "pick_test_accuracy": pick["pick_test_accuracy"], "n_test": pick["n_test"],
                     "test_reads": reads}


def parse_torch_candidates(args, hidden):
    """The new PyTorch candidates of this invocation (no torch needed); a tag given twice is refused."""
    candidates = [torch_candidate(text, args, hidden) for text in args.torch_candidate]
    candidates += [torch_candidate(f"adam-lr{lr:g}=adam lr={lr}", args, hidden) for lr in args.adam_lr]
    tags = [c["tag"] for c in candidates]
    twice = sorted({t for t in tags if tags.count(t) > 1})
    if twice:
        sys.exit(f"select_recipe: candidate tag(s) {', '.join(twice)} given twice: every candidate needs its own tag")
    return candidates


def select_torch(args, hidden):
    """PyTorch candidates (optimiser, learning rate, schedule, widths, epoch budget) chosen on the validation
    rows, under the budget the ADMM recipe had; only the pick's kept network meets the test rows."""
    candidates = parse_torch_candidates(args, hidden)
    records, earlier = (earlier_torch_records(args.reuse_from, [c["tag"] for c in candidates], args)
                        if args.reuse_from else ([], {}))
    import torch

    torch.set_num_threads(args.torch_threads)
    splits = torch_splits(args)
    n_in, n_out = splits["train"][0].shape[1], int(splits["train"][1].max()) + 1
    models = {}
    for candidate in candidates:
        torch.manual_seed(args.seed)
        model = torch_mlp([n_in, *candidate["hidden"], n_out])
        curve, state = torch_epochs(model, splits, candidate, args)
        best = max(curve, key=lambda point: point[1])  # max keeps the first of equals
        records.append({**candidate, "curve": curve, "validation_accuracy": best[1], "kept_epoch": best[0],
                        "epochs_run": len(curve), "train_seconds": curve[-1][2]})
        models[candidate["tag"]] = (model, state)
        print(f"{candidate['tag']}: validation {best[1]:.4f} (epoch {best[0]} of {len(curve)})", flush=True)
    pick = max(records, key=lambda r: r["validation_accuracy"])
    reads = list(earlier.get("test_reads", []))
    if pick["tag"] in models:
        model, state = models[pick["tag"]]
        model.load_state_dict(state)
        test, n_test = torch_accuracy(model, *splits["test"]), int(splits["test"][1].numel())
        reads.append({"tag": pick["tag"], "test_accuracy": test, "commit": run_record()["commit"]})
    elif earlier.get("pick") == pick["tag"]:
        test, n_test = earlier["pick_test_accuracy"], earlier["n_test"]
    else:
        sys.exit(f"select_recipe: the pick {pick['tag']} is an earlier record that was not scored on test "
                 f"and whose model is not kept; rerun it as a --torch-candidate")
    for r in records:
        print(f"{r['tag']:24s} validation {r['validation_accuracy']:.4f} (epoch {r['kept_epoch']} of "
              f"{r['epochs_run']}){'  <- pick' if r is pick else ''}")
    print(f"pick {pick['tag']}: test accuracy {test:.4f} on {n_test} images "
          f"({'read once' if len(reads) == 1 else f'the test split read {len(reads)} times over the chain'})")
    return {"torch": torch.__version__, "batch": TORCH_BATCH, "threads": args.torch_threads,
            "n_train": int(splits["train"][1].numel()), "n_validation": int(splits["validation"][1].numel()),
            "candidates": records, "pick": pick["tag"], "pick_validation_accuracy": pick["validation_accuracy"],
            "pick_test_accuracy": test, "n_test": n_test, "test_reads": reads}


def earlier_records(path, new_tags):
    """The candidate records of an earlier selection file, each marked with where it came from."""
    earlier = json.loads(Path(path).read_text())
    if "candidates" not in earlier:
        sys.exit(f"select_recipe: {path} holds no ADMM candidates: --reuse-from takes a file of the same method")
    source = {"file": Path(path).name, "commit": earlier.get("commit")}
    # a record the earlier file had itself read back keeps its first source
    records = [{**record, "reused_from": record.get("reused_from", source)} for record in earlier.get("candidates", [])]
    clash = sorted({r["tag"] for r in records} & set(new_tags))
    if clash:
        sys.exit(f"select_recipe: {path} already holds candidate(s) {', '.join(clash)}: give new tags")
    return records, earlier


def pick_test_accuracy(args, best, earlier):
    """The pick's test accuracy: scored now from its model, or as the earlier file read it once."""
    if "reused_from" not in best:
        return test_accuracy(args, Path(best["out"]) / "model.h5")
    if earlier.get("pick") != best["tag"]:
        sys.exit(f"select_recipe: the pick {best['tag']} is an earlier record that was not scored on test "
                 f"and whose model is not kept; rerun it as a --candidate")
    return earlier["pick_test_accuracy"], earlier["n_test"]


def select_admm(args):
    """The ADMM candidates' runs, the pick by validation and its test accuracy (read once)."""
    candidates = [item.partition("=") for item in args.candidate]
    tags = [tag for tag, _, _ in candidates]
    if len(set(tags)) < len(tags):
        sys.exit(f"select_recipe: candidate tag(s) {', '.join(sorted({t for t in tags if tags.count(t) > 1}))} "
                 "given twice: every candidate needs its own tag")
    records, earlier = earlier_records(args.reuse_from, [t for t, _, _ in candidates]) if args.reuse_from else ([], {})
    records += [run_candidate(args, tag, shlex.split(flags)) for tag, _, flags in candidates]
    best = max(records, key=lambda r: r["validation_accuracy"])  # max keeps the first of equals
    accuracy, n_test = pick_test_accuracy(args, best, earlier)
    for r in records:
        r["out"] = Path(r["out"]).name
        print(f"{r['tag']:24s} validation {r['validation_accuracy']:.4f} (epoch {r['kept_epoch']} of "
              f"{r['epochs_run']}){'  <- pick' if r is best else ''}")
    print(f"pick {best['tag']}: test accuracy {accuracy:.4f} on {n_test} images (read once)")
    return {"candidates": records, "pick": best["tag"], "pick_validation_accuracy": best["validation_accuracy"],
            "pick_test_accuracy": accuracy, "n_test": n_test,
            "train_command": "OMP_NUM_THREADS=1 " + shlex.join(["mpiexec", "-n", str(args.ranks), "admm-mpi"]
                                                              + train_command(args, ["<flags>"], "<run>")[6:])}


def config_settings(path):
    """The config's hidden widths and seed (what Adam copies from it)."""
    from admm_mpi.config import read_toml

    config = read_toml(path)
    return config["hidden"], config.get("seed", 0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--candidate", action="append", default=[], metavar="TAG=FLAGS",
                        help="a candidate: its tag and its flags added to the config's (repeatable)")
    parser.add_argument("--validation-fraction", type=float, default=0.16667)
    parser.add_argument("--iters", type=int, default=20, help="epoch budget of every candidate")
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--name", help="results/selection_<name>.json and the run directories' prefix "
                                       "(default: the config's name)")
    parser.add_argument("--runs", default="runs/selection", help="run directories")
    parser.add_argument("--reuse", action="store_true", help="read back finished runs instead of rerunning them")
    parser.add_argument("--reuse-from", metavar="FILE",
                        help="an earlier selection file whose candidate records join the new candidates")
    parser.add_argument("--timeout", type=float, default=4 * 3600)
    parser.add_argument("--out", help="the results file (default: results/selection_<name>.json)")
    parser.add_argument("--torch-candidate", action="append", default=[],
                        metavar="TAG=OPTIMISER lr=LR [hidden=W,...] [iters=N] [schedule=S]",
                        help="a PyTorch candidate on the same rows (repeatable): adam or sgd_momentum (momentum 0.9), "
                             "schedule constant or warmup_cosine; the config's widths and --iters unless given")
    parser.add_argument("--adam-lr", type=float, action="append", default=[], metavar="LR",
                        help="short for --torch-candidate adam-lrLR=adam lr=LR (repeatable)")
    parser.add_argument("--torch-threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch_side = args.torch_candidate or args.adam_lr or (
        args.reuse_from and not args.candidate and any(k in json.loads(Path(args.reuse_from).read_text())
                                                       for k in ("torch", "adam")))
    if not args.candidate and not torch_side:
        parser.error("give at least one --candidate, --torch-candidate or --adam-lr")
    if args.candidate and torch_side:
        parser.error("ADMM (--candidate) and PyTorch (--torch-candidate, --adam-lr) candidates go in separate "
                     "selection files: one method per file")
    args.name = args.name or Path(args.config).stem
    hidden, args.seed = config_settings(args.config)
    result = {"benchmark": "recipe chosen on validation accuracy, then the test split read once",
              "config": args.config, "data": Path(args.data).name, "ranks": args.ranks,
              "validation_fraction": args.validation_fraction, "iters": args.iters, "patience": args.patience}
    if args.candidate:
        result.update(select_admm(args))
    else:
        result["torch"] = select_torch(args, hidden)
    path = Path(args.out or RESULTS / f"selection_{args.name}.json")
    path.write_text(json.dumps(portable({**result, **run_record()}), indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
