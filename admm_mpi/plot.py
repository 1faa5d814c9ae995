"""Figures from ``metrics.jsonl``: objective and residual (log axes), accuracy against iteration
and against seconds; several runs on one figure to compare them. Needs matplotlib
(``pip install 'admm-mpi[plot]'``)."""

import json
import os

from admm_mpi.errors import InputError


def read_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl") if os.path.isdir(run_dir) else run_dir
    try:
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        raise InputError(f"no metrics file at {path}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not JSON lines ({exc})") from None
    if not rows:
        raise InputError(f"{path} holds no iterations")
    return rows


def plot_runs(run_dirs, out, labels=None):
    """Write a 2x2 PNG comparing the runs in ``run_dirs``; returns the output path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("admm-mpi plot needs matplotlib: pip install 'admm-mpi[plot]'") from None
    labels = labels or [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    (ax_obj, ax_res), (ax_it, ax_sec) = axes
    for i, (run_dir, label) in enumerate(zip(run_dirs, labels)):
        color = f"C{i % 10}"  # one colour per run in every panel
        rows = read_metrics(run_dir)
        it = [r["iteration"] for r in rows]
        elapsed, total = [], 0.0
        for r in rows:
            total += r.get("seconds", 0.0)
            elapsed.append(total)
        ax_obj.plot(it, [abs(r["objective"]) for r in rows], color=color, label=label)
        ax_res.plot(it, [r["residual"] for r in rows], color=color, label=f"{label}: output")
        for key in sorted(k for k in rows[0] if k.startswith("residual_")):
            ax_res.plot(it, [r[key] for r in rows], color=color, linestyle=":", alpha=0.6,
                        label=f"{label}: {key[9:]}")
        for split, style in (("train_accuracy", "--"), ("validation_accuracy", ":"), ("test_accuracy", "-")):
            # only the evaluated iterations (--eval-every, --eval-test end: one point)
            points = [(i, t, r[split]) for i, t, r in zip(it, elapsed, rows) if r.get(split) is not None]
            if points:
                name, marker = f"{label} {split.split('_')[0]}", "o" if len(points) == 1 else None
                ax_it.plot([p[0] for p in points], [p[2] for p in points], style, marker=marker, color=color,
                           label=name)
                ax_sec.plot([p[1] for p in points], [p[2] for p in points], style, marker=marker, color=color,
                            label=name)
    ax_obj.set(yscale="log", xlabel="iteration", title="|objective|")
    ax_res.set(yscale="log", xlabel="iteration", title="primal residuals")
    ax_it.set(xlabel="iteration", ylabel="accuracy", title="accuracy by iteration")
    ax_sec.set(xlabel="seconds", ylabel="accuracy", title="accuracy by time")
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    from admm_mpi.files import create_file, write_problem

    try:  # a new file, renamed into place: never written through a link (files.create_file)
        with create_file(f"{out}.tmp", "wb") as f:
            fig.savefig(f, dpi=100, format="png")
        os.replace(f"{out}.tmp", out)
    except OSError as exc:
        raise InputError(write_problem(out, exc)) from None
    finally:
        plt.close(fig)
    return out
