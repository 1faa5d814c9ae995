"""The benchmark pages of the documentation, written from ``bench/results`` at build time.

Every results file (``NAME.json``, or ``NAME.json.gz``) gets a section on the page of its family:
what it measured, the command, the commit and machine it ran on, its tables and its plots
(``NAME.png``, ``NAME_*.png``). Where the benchmark script wrote a report beside it (``NAME.md``)
the report is shown; otherwise the file's flat fields and lists of records become tables. The
headline figures (``headlines``) are read from the files here and nowhere else: the README's
results table is checked against them (``tests/test_docs.py``).
"""

import gzip
import json
import re
import statistics
from pathlib import Path

FOLDER = "benchmarks"  # docs/benchmarks (generated, ignored by git)

# the public-suite candidate that is the package's default run (bench/results/suite.md says how
# it was chosen)
SUITE_DEFAULT_CANDIDATE = "admm:batch-n20"

FAMILIES = [
    # (page, title, what the page is about, stems of its results files)
    ("accuracy", "Accuracy on MNIST and Fashion-MNIST",
     "Every recipe in `configs/` chosen on validation rows held out of the training images, then scored "
     "once on the official test images; PyTorch Adam on the same MLP, selected the same way; reruns of "
     "each recipe from its committed configuration; and the earlier, test-selected runs (labelled).",
     lambda s: s == "accuracy" or s.startswith("selection_") or s == "reproduce"),
    ("suite", "Public suite of tabular and image data sets",
     "The package defaults and their candidates on 20 public data sets nobody tuned on, against "
     "scikit-learn's `MLPClassifier`, logistic regression and PyTorch Adam, every method with the same "
     "validation rows; the defaults are the candidate with the best mean validation accuracy.",
     lambda s: s.startswith("suite")),
    ("time_to_accuracy", "Time to accuracy against PyTorch",
     "Training seconds until the test accuracy first reaches a target: each solver's recipe against "
     "PyTorch SGD with momentum, Adam and L-BFGS on the same MLP.",
     lambda s: s.startswith("time_to_accuracy")),
    ("solver_defaults", "Validation defaults per solver",
     "How each full-batch solver's early stopping and kept iterate were chosen: every candidate scored "
     "on a tenth of the training rows that no run saw, on digits and five small suite sets.",
     lambda s: s == "solver_defaults"),
    ("digits", "Digits",
     "The bundled digits data set (1 500 training and 297 test images): the default run over seeds, "
     "every solver under its defaults beside its recipe, Taylor ADMM's ridge sweep and layer-parallel pdADMM.",
     lambda s: s == "digits"),
    ("speed", "Speed and scaling",
     "Seconds per iteration, GEMM efficiency, data- and layer-parallel scaling at 1 and 2 ranks, and "
     "comparisons of the code against earlier commits.",
     lambda s: s in ("scaling", "gemm_efficiency", "dladmm_iteration", "compare_commits", "spread_solve",
                     "factor_precision", "profile", "call_overhead", "eval_train_cost", "allocator")
                     or s.startswith(("speed_", "layer_parallel", "activation_solve"))),
    ("checkpoint", "Checkpoints",
     "What a checkpoint costs (memory and seconds) and what a warm restart from a light checkpoint "
     "costs in accuracy.",
     lambda s: s.startswith("checkpoint")),
    ("communication", "Collectives and the cost model",
     "MPI collectives measured over message sizes and rank counts, the fitted cost model, and its "
     "projections to larger problems and clusters; epochs and bytes to a target at cluster-scale batches.",
     lambda s: s.startswith(("collectives", "cost_model", "large_batch"))),
]
OTHER = ("other", "Other results", "Results files of no family above.", lambda s: True)


# ---------------------------------------------------------------------------------------------
# reading


def stem_of(path):
    name = Path(path).name
    for suffix in (".json.gz", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def results_files(results):
    """``{stem: path}`` of every results file in ``results`` (``NAME.json`` or ``NAME.json.gz``)."""
    found = {}
    for path in sorted(Path(results).glob("*.json*")):
        if path.name.endswith((".json", ".json.gz")):
            found.setdefault(stem_of(path), path)
    return found


def load(path):
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def family_of(stem):
    for family in FAMILIES:
        if family[3](stem):
            return family
    return OTHER


# ---------------------------------------------------------------------------------------------
# Markdown helpers

SPECIAL = re.compile(r"([\\`*_\[\]<>|{}#~$])")


def esc(text):
    return SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def code(text):
    text = " ".join(str(text).split())
    fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def fmt(value):
    """A cell: numbers as they are recorded (floats to 4 significant decimals), text escaped."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, str)) for v in value) and len(value) <= 8:
        return esc(", ".join(fmt(v) if isinstance(v, float) else str(v) for v in value))
    text = str(value)
    return esc(text if len(text) <= 200 else text[:197] + "...")


def table(header, rows):
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(rows_cell for rows_cell in row) + " |" for row in rows]
    return lines


def short(commit):
    return str(commit)[:7] if commit else "—"


def machine_line(machine):
    if not isinstance(machine, dict):
        return fmt(machine)
    parts = []
    if machine.get("cpu"):
        parts.append(f"{machine['cpu']} ({machine.get('cpus', '?')} cpus)")
    for key in ("python", "numpy", "mpi4py", "mpich"):
        if machine.get(key):
            parts.append(f"{key} {machine[key]}")
    if machine.get("blas"):
        blas = machine["blas"]
        parts.append(", ".join(blas) if isinstance(blas, list) else str(blas))
    return esc(", ".join(parts)) if parts else fmt(machine)


def shift_headings(text, by):
    """``text`` (Markdown) with every heading ``by`` levels deeper (at most level 6)."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and re.match(r"#{1,6} ", line):
            hashes = len(line) - len(line.lstrip("#"))
            line = "#" * min(6, hashes + by) + line[hashes:]
        out.append(line)
    return "\n".join(out)


def flatten(value, prefix="", depth=0):
    """``[(key path, scalar)]`` of a nested dict (lists of scalars count as scalars)."""
    if isinstance(value, dict) and depth < 3:
        items = []
        for key, sub in value.items():
            items += flatten(sub, f"{prefix} / {key}" if prefix else str(key), depth + 1)
        return items
    if isinstance(value, (dict, list)) and not (isinstance(value, list) and all(
            isinstance(v, (int, float, str, bool)) or v is None for v in value) and len(value) <= 8):
        return []
    return [(prefix, value)]


def records_table(records, max_rows=40, max_columns=10):
    """A table of a list of flat records (their scalar fields), or [] when it is not one."""
    if not records or not all(isinstance(r, dict) for r in records):
        return []
    columns = []
    for record in records:
        for key, value in record.items():
            if key not in columns and (value is None or isinstance(value, (int, float, str, bool))):
                if not (isinstance(value, str) and len(value) > 120):
                    columns.append(key)
    columns = columns[:max_columns]
    if not columns:
        return []
    rows = [[fmt(r.get(c)) for c in columns] for r in records[:max_rows]]
    lines = table(columns, rows)
    if len(records) > max_rows:
        lines += ["", f"({len(records) - max_rows} more rows in the file.)"]
    return lines


# ---------------------------------------------------------------------------------------------
# headline figures


TORCH_OPTIMISERS = {"sgd_momentum": "SGD with momentum", "adam": "Adam", "lbfgs": "L-BFGS"}
SELECTED_BASELINES = ("adam", "sgd")  # PyTorch's selection_<data>-<stem>.json


def torch_pick(selection):
    """The picked candidate's record of a PyTorch selection (``selection_*.json``'s ``torch``)."""
    return next(c for c in selection["candidates"] if c["tag"] == selection["pick"])


def admm_pick(selection):
    """The picked candidate's record of an ADMM ``selection_*.json``."""
    return next(c for c in selection["candidates"] if c["tag"] == selection["pick"])


def _optimiser_name(method):
    """``PyTorch sgd_momentum+warmup_cosine lr 0.1 512-512`` as ``PyTorch SGD with momentum, warm-up and
    cosine decay (lr 0.1), MLP 512-512``."""
    names = TORCH_OPTIMISERS
    schedules = {"constant": "", "warmup_cosine": ", warm-up and cosine decay"}
    match = re.fullmatch(r"PyTorch (\S+?)\+(\S+) lr (\S+) (\S+)", method or "")
    if not match:
        return method
    return f"PyTorch {names.get(match[1], match[1])}{schedules.get(match[2], ' ' + match[2])} (lr {match[3]}), " \
           f"MLP {match[4]}"


def time_ratio(data, problem_name, target, table="same_network"):
    """(ADMM median, PyTorch median, ratio of medians, ADMM method, PyTorch method) of one of the two
    tables of time_to_accuracy.json (``same_network`` or ``best_network``), or None."""
    for problem in data.get("problems", []):
        if problem.get("problem") != problem_name:
            continue
        for summary in problem.get("summary") or []:
            t = summary.get(table) or {}
            if summary.get("target") == target and t.get("ratio_of_medians") is not None:
                return (t["admm_median_test_seconds"], t["torch_median_test_seconds"], t["ratio_of_medians"],
                        t["admm"], t["torch"])
    return None


def suite_means(data, method, against):
    """Mean test accuracy of ``method`` and of ``against`` over the sets where both ran."""
    pairs = []
    for record in data.get("sets", {}).values():
        methods = record.get("methods", {})
        if method in methods and against in methods:
            pairs.append((methods[method]["test_accuracy"], methods[against]["test_accuracy"]))
    if not pairs:
        return None
    return (sum(p[0] for p in pairs) / len(pairs), sum(p[1] for p in pairs) / len(pairs), len(pairs))


SUITE_LARGE = 5000  # rows: the sets that carry the wall-time target (bench/suite.py LARGE)


def suite_times(data, method):
    """(sets not slower than the MLP, sets, median time ratio) of ``method`` on the suite's sets of at
    least ``SUITE_LARGE`` rows where both ran, or None."""
    ratios = [record["methods"][method]["train_seconds"] / record["methods"]["sklearn_mlp"]["train_seconds"]
              for name, record in data.get("sets", {}).items()
              if record.get("rows", 0) >= SUITE_LARGE and not name.endswith("+raw")
              and "train_seconds" in record.get("methods", {}).get(method, {})
              and "train_seconds" in record.get("methods", {}).get("sklearn_mlp", {})]
    if not ratios:
        return None
    return sum(r <= 1 for r in ratios), len(ratios), statistics.median(ratios)


def large_batch_pairs(data, dataset):
    """Per global batch of ``dataset`` in large_batch.json: (batch, ADMM's cell, the PyTorch cell
    with the fewest epochs to the target, else the best validation accuracy), where ADMM and at least
    one PyTorch optimiser ran to the end (no cell cut short)."""
    pairs = []
    for batch, methods in sorted((data.get("datasets", {}).get(dataset, {}).get("batches") or {}).items(),
                                 key=lambda item: int(item[0])):
        admm = methods.get("admm")
        torch = [c for m, c in methods.items() if m != "admm" and not c.get("partial")]
        if admm and not admm.get("partial") and not admm.get("from_run_directory") and torch:
            best = min(torch, key=lambda c: (c["epochs_to_target"] is None, c["epochs_to_target"] or 0,
                                             -(c.get("validation_accuracy_at_kept") or 0)))
            pairs.append((int(batch), admm, best))
    return pairs


def _count(n, noun):
    """"1 candidate", "5 candidates"."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _epochs_text(cell):
    """"9 epochs, 70.9 s modelled", or "not in 20 epochs" (a cell of large_batch.json)."""
    if cell["epochs_to_target"] is None:
        return f"not in {cell.get('epochs_run') or cell.get('cap')} epochs"
    seconds = (cell.get("modelled") or {}).get("seconds_to_target")
    return f"{cell['epochs_to_target']} epochs" + (f", {seconds:.3g} s modelled" if seconds is not None else "")


def headlines(results):
    """The headline results: ``[{"result", "admm", "baseline", "page", "file"}]``, every figure read
    from a results file (rows whose file is missing are left out)."""
    files = results_files(results)
    rows = []

    def get(stem):
        return load(files[stem]) if stem in files else None

    for name, label in (("mnist", "MNIST"), ("fashion_mnist", "Fashion-MNIST")):
        admm = get(f"selection_{name}")
        found = [get(f"selection_{name}-{stem}") for stem in SELECTED_BASELINES]
        baselines = [(TORCH_OPTIMISERS[torch_pick(f["torch"])["optimiser"]], f["torch"])
                     for f in found if f and "torch" in f]
        if admm and baselines:
            widths = "-".join(str(w) for w in admm_pick(admm)["settings"]["hidden"])
            budget = len(admm.get("candidates", []))
            rows.append({
                "result": f"{label} test accuracy, settings chosen on validation (ADMM: MLP 784-{widths}-10, "
                          f"{_count(budget, 'candidate')})",
                "admm": f"{admm['pick_test_accuracy']:.4f}",
                "baseline": ", ".join(f"PyTorch {opt} {torch_['pick_test_accuracy']:.4f} "
                                      f"({_count(len(torch_['candidates']), 'candidate')})"
                                      for opt, torch_ in baselines),
                "page": "accuracy", "file": files[f"selection_{name}"].name})
    suite = get("suite")
    if suite:
        mlp = suite_means(suite, SUITE_DEFAULT_CANDIDATE, "sklearn_mlp")
        adam = suite_means(suite, SUITE_DEFAULT_CANDIDATE, "adam")
        tuned = suite_means(suite, SUITE_DEFAULT_CANDIDATE, "sklearn_mlp_tuned")
        tuned = f", tuned on validation {tuned[1]:.4f}" if tuned and mlp and tuned[2] == mlp[2] else ""
        if mlp and adam and mlp[2] == adam[2]:
            rows.append({
                "result": f"Mean test accuracy over {mlp[2]} public data sets, package defaults",
                "admm": f"{mlp[0]:.4f}",
                "baseline": f"scikit-learn MLPClassifier {mlp[1]:.4f}{tuned}, PyTorch Adam {adam[1]:.4f}",
                "page": "suite", "file": files["suite"].name})
    quiet = get("suite_quiet")
    timed = quiet and suite_times(quiet, "admm:current")
    if timed:
        rows.append({
            "result": f"Public sets of at least {SUITE_LARGE} rows on which the package defaults train no slower "
                      "than scikit-learn's MLP, same run, 2 cores",
            "admm": f"{timed[0]} of {timed[1]} (median time ratio {timed[2]:.1f}×)",
            "baseline": "scikit-learn MLPClassifier, same widths, early stopping",
            "page": "suite", "file": files["suite_quiet"].name})
    large = get("large_batch")
    for dataset, label in (("mnist", "MNIST"), ("fashion_mnist", "Fashion-MNIST")) if large else ():
        for batch, admm_cell, torch_cell in large_batch_pairs(large, dataset):
            rows.append({
                "result": f"Epochs to {admm_cell['target']:.0%} validation accuracy on {label} at a global batch of "
                          f"{batch} ({batch // 128} ranks of 128), modelled seconds on that cluster",
                "admm": _epochs_text(admm_cell),
                "baseline": f"PyTorch {TORCH_OPTIMISERS.get(torch_cell['method'], torch_cell['method'])} (base lr "
                            f"{torch_cell['lr_pick']:g}, linear scaling, warm-up): {_epochs_text(torch_cell)}",
                "page": "communication", "file": files["large_batch"].name})
    tta = get("time_to_accuracy")
    if tta:
        for problem, target, label in (("mnist", 0.98, "MNIST"), ("fashion_mnist", 0.88, "Fashion-MNIST"),
                                       ("digits", 0.97, "digits")):
            for table, network in (("same_network", "same MLP"), ("best_network", "each side's best MLP")):
                found = time_ratio(tta, problem, target, table)
                if found and table == "best_network" and found == time_ratio(tta, problem, target):
                    continue  # one candidate width only (--widths recipe): the same row again
                if found:
                    a, t, ratio, _, torch_method = found
                    rounds = next(len(p["rounds"]) for p in tta["problems"] if p.get("problem") == problem)
                    rows.append({
                        "result": f"Seconds to {target:.0%} test accuracy on {label}, 2 cores, {network} "
                                  f"(medians of {rounds} runs)",
                        "admm": f"{a:.3g} s ({ratio:.2f}× PyTorch)",
                        "baseline": f"{_optimiser_name(torch_method)}: {t:.3g} s",
                        "page": "time_to_accuracy", "file": files["time_to_accuracy"].name})
    speed = get("speed_minibatch_am")
    if speed:
        ratio = speed.get("ratios", {}).get("this: 1 rank / 2 ranks, step_seconds")
        if ratio:
            rows.append({"result": "Speed-up of a `minibatch_am` MNIST epoch from 1 to 2 ranks",
                         "admm": f"{ratio:.2f}×", "baseline": "ideal 2×",
                         "page": "speed", "file": files["speed_minibatch_am"].name})
    scaling = get("scaling")
    if scaling and scaling.get("speedup_2_ranks"):
        rows.append({"result": f"Speed-up of a Taylor ADMM iteration ({scaling.get('shape')}, "
                               f"{scaling.get('samples')} samples) from 1 to 2 ranks",
                     "admm": f"{scaling['speedup_2_ranks']:.2f}×", "baseline": "ideal 2×",
                     "page": "speed", "file": files["scaling"].name})
    return rows


def headline_table(results, page_link, file_link):
    """The headline table in Markdown; ``page_link(page)`` and ``file_link(name)`` make the links."""
    lines = ["| result | admm-mpi | baseline | details |", "|---|---|---|---|"]
    for row in headlines(results):
        lines.append(f"| {row['result']} | **{row['admm']}** | {row['baseline']} | "
                     f"[page]({page_link(row['page'])}), [{row['file']}]({file_link(row['file'])}) |")
    return lines


# ---------------------------------------------------------------------------------------------
# the selection table (from selection_*.json)


def selection_rows(files):
    rows = []
    for stem, path in files.items():
        if not stem.startswith("selection_"):
            continue
        data = load(path)
        name = stem[len("selection_"):]
        dataset, _, method = name.partition("-")
        if "torch" in data:
            torch_ = data["torch"]
            candidates = torch_.get("candidates", [])
            pick = next((c for c in candidates if c.get("tag") == torch_.get("pick")), {})
            listed = " / ".join(f"{esc(c.get('tag'))}: {c['validation_accuracy']:.4f} ({c.get('kept_epoch')})"
                                for c in candidates if c.get("validation_accuracy") is not None)
            optimisers = sorted({TORCH_OPTIMISERS.get(c.get("optimiser"), str(c.get("optimiser"))) for c in candidates})
            rows.append([esc(dataset), esc(f"PyTorch {torch_.get('torch', '')} {', '.join(optimisers)}"),
                         esc("-".join(str(w) for w in pick.get("hidden", []))), listed or "—",
                         esc(f"{torch_.get('pick')} (lr {pick.get('lr')}, {pick.get('schedule')})"),
                         f"{torch_['pick_validation_accuracy']:.4f}", f"**{torch_['pick_test_accuracy']:.4f}**",
                         code(path.name), short(data.get("commit"))])
            continue
        candidates = data.get("candidates", [])
        pick = next((c for c in candidates if c.get("tag") == data.get("pick")), {})
        hidden = (pick.get("settings") or {}).get("hidden") or []
        solver = (pick.get("settings") or {}).get("solver") or method or "minibatch_am"
        listed = " / ".join(f"{esc(c.get('tag'))}: {c['validation_accuracy']:.4f} ({c.get('kept_epoch')})"
                            for c in candidates if c.get("validation_accuracy") is not None)
        rows.append([esc(dataset), f"{code(solver)} ({code(data.get('config', ''))})",
                     esc("-".join(str(h) for h in hidden)), listed or "—", esc(data.get("pick")),
                     f"{data['pick_validation_accuracy']:.4f}", f"**{data['pick_test_accuracy']:.4f}**",
                     code(path.name), short(data.get("commit"))])
    rows.sort(key=lambda r: (r[0] != "mnist", r[0], -float(r[6].strip("*"))))
    header = ["data set", "method (recipe)", "hidden widths", "candidates: validation accuracy (kept epoch)",
              "pick", "validation accuracy", "test accuracy, read once", "results file", "commit"]
    return table(header, rows) if rows else []


def time_to_accuracy_tables(data):
    lines = []
    for problem in data.get("problems", []):
        name = problem.get("problem")
        lines += [f"### {esc(name)}", "",
                  f"Command: {code(problem.get('command', ''))} at commit {short(problem.get('commit'))}.", ""]
        rows = []
        for summary in problem.get("summary") or []:
            for network in ("same_network", "best_network"):
                t = summary.get(network) or {}
                ratio = t.get("ratio_of_medians")
                rows.append([fmt(summary.get("target")), network.replace("_", " "), esc(t.get("admm") or "—"),
                             esc(t.get("torch") or "—"), f"{ratio:.2f}×" if ratio is not None else "—"])
        if rows:
            lines += [*table(["target", "table", "ADMM", "PyTorch", "ADMM / PyTorch (ratio of medians)"], rows), ""]
    return lines


def suite_candidates_table(data):
    methods = []
    for record in data.get("sets", {}).values():
        for method in record.get("methods", {}):
            if method not in methods:
                methods.append(method)
    rows = []
    for method in methods:
        val, test, n = [], [], 0
        for record in data["sets"].values():
            r = record.get("methods", {}).get(method)
            if r and r.get("test_accuracy") is not None:
                n += 1
                test.append(r["test_accuracy"])
                if r.get("validation_accuracy") is not None:
                    val.append(r["validation_accuracy"])
        mlp = suite_means(data, method, "sklearn_mlp")
        rows.append((statistics.mean(val) if val else float("nan"), [
            code(method) + (" (the defaults)" if method == SUITE_DEFAULT_CANDIDATE else ""), str(n),
            f"{statistics.mean(val):.4f}" if val else "—", f"{statistics.mean(test):.4f}" if test else "—",
            f"{mlp[1]:.4f}" if mlp else "—"]))
    rows.sort(key=lambda r: -r[0] if r[0] == r[0] else 1)
    return table(["method", "sets", "mean validation accuracy", "mean test accuracy",
                  "MLP mean test accuracy, same sets"], [r[1] for r in rows])


# ---------------------------------------------------------------------------------------------
# pages


def file_section(stem, path, results, doc_dir):
    data = load(path)
    rel = Path("../..") / "bench" / "results"  # from docs/benchmarks/ to bench/results
    lines = [f"## `{path.name}`", ""]
    facts = []
    if isinstance(data, dict):
        if data.get("benchmark"):
            facts.append(f"- what: {esc(data['benchmark'])}")
        command = data.get("command") or data.get("command_of_last_update")
        if command:
            facts.append(f"- command: {code(command)}")
        commit = data.get("commit") or data.get("git_commit_of_last_update") or data.get("recorded_in_commit")
        if commit:
            facts.append(f"- commit: {code(short(commit))}")
        if data.get("machine"):
            facts.append(f"- machine: {machine_line(data['machine'])}")
        if data.get("provenance_note"):
            facts.append(f"- provenance: {esc(data['provenance_note'])}")
    lines += facts + ([""] if facts else [])
    report = Path(results) / f"{stem}.md"
    if stem == "time_to_accuracy" and isinstance(data, dict):
        lines += time_to_accuracy_tables(data)
    elif stem == "suite" and isinstance(data, dict):
        lines += ["Candidates, by mean validation accuracy over the sets each ran on:", "",
                  *suite_candidates_table(data), ""]
    if report.exists():
        lines += [f"Report written by the benchmark script ({code(report.name)}):", "",
                  shift_headings(report.read_text(encoding="utf-8"), 2), ""]
    elif stem not in ("time_to_accuracy", "suite") and isinstance(data, dict):
        scalars = [(k, v) for k, v in data.items() if k not in ("benchmark", "command", "commit", "machine",
                                                                 "provenance_note", "argv")]
        flat = []
        for key, value in scalars:
            flat += flatten(value, key)
        if flat:
            rows = [[code(k), fmt(v)] for k, v in flat[:60]]
            lines += table(["field", "value"], rows) + [""]
        for key, value in data.items():
            if isinstance(value, list):
                records = records_table(value)
                if records:
                    lines += [f"`{key}`:", "", *records, ""]
    for png in sorted(Path(results).glob(f"{stem}*.png")):
        if png.stem == stem or png.stem.startswith(stem + "_"):
            lines += [f"![{png.stem}]({(rel / png.name).as_posix()})", ""]
    return lines


def pages(results, out_dir):
    """``{path: text}`` of every benchmark page under ``out_dir``."""
    results, out_dir = Path(results), Path(out_dir)
    files = results_files(results)
    by_family = {}
    for stem, path in files.items():
        by_family.setdefault(family_of(stem), []).append((stem, path))
    texts = {}
    order = [f for f in FAMILIES + [OTHER] if f in by_family]
    for family in order:
        slug, title, about, _ = family
        lines = [f"# {title}", "", "```{note}", "This page is generated from the results files in "
                 "`bench/results` when the documentation is built; do not edit it.", "```", "", about, ""]
        if slug == "accuracy":
            selection = selection_rows(files)
            if selection:
                lines += ["## Recipes chosen on validation", "", *selection, ""]
        for stem, path in by_family[family]:
            lines += file_section(stem, path, results, out_dir)
        texts[out_dir / f"{slug}.md"] = "\n".join(lines).rstrip() + "\n"
    index = ["# Benchmarks", "",
             "```{note}", "These pages are generated from the results files in `bench/results` when the "
             "documentation is built; do not edit them.", "```", "",
             "Every figure here comes from a results file that a script in `bench/` wrote: "
             "`admm-mpi bench NAME` (or `python bench/NAME.py`) runs it again and rewrites the file. Each "
             "file records its command, the commit it ran at and the machine. The machine is a shared "
             "virtual machine with 2 cores: seconds say which runs take minutes and which take hours, and "
             "ratios measured in one run (interleaved) compare fairly; absolute seconds of different runs "
             "do not.", "", "## Headline results", "",
             *headline_table(results, lambda page: f"{page}.md",
                             lambda name: f"{family_of(stem_of(name))[0]}.md"),
             "", "## Every results file", ""]
    rows = []
    for stem, path in files.items():
        data = load(path)
        what = data.get("benchmark", "") if isinstance(data, dict) else ""
        commit = (data.get("commit") or data.get("git_commit_of_last_update") or data.get("recorded_in_commit")
                  if isinstance(data, dict) else None)
        slug = family_of(stem)[0]
        rows.append([f"[{esc(path.name)}]({slug}.md)", esc(what), code(short(commit))])
    index += table(["file", "what it measured", "commit"], rows)
    index += ["", "```{toctree}", ":maxdepth: 1", "", *[f[0] for f in order], "/history", "```", ""]
    texts[out_dir / "index.md"] = "\n".join(index)
    return texts
