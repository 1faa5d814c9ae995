"""``admm-mpi tune``: a hyper-parameter search that turns an allocation of ranks into trials.

The world is split into groups of ``--ranks-per-trial`` ranks (:meth:`Grid.split_groups`); each
group trains one trial at a time with :func:`admm_mpi.train.train` on its own grid, exactly as
``admm-mpi train`` would on a world of that size, into ``DIR/trials/NNNN`` (a run directory with
its checkpoints). World rank 0 also runs the coordinator, in a thread: it drives the search
engine (Optuna by ask and tell, its study in a journal file ``DIR/journal.log``; without Optuna a
plain random search with its own journal), hands trials to the groups as they free up, and
answers the validation accuracy each group reports after every evaluation with the pruner's
verdict. The group roots talk to it by point-to-point requests (:meth:`Grid.request`).

Outputs: ``DIR/trials.csv`` (rewritten after every trial), a progress line per finished trial,
``DIR/best.toml`` (``admm-mpi train --config DIR/best.toml`` reruns the best trial),
``DIR/best/model.h5`` and ``DIR/trials.png``. SIGTERM checkpoints the running trials and exits
143; ``--resume`` keeps the finished trials, resumes the running ones from their checkpoints and
continues the search.
"""

import csv
import io
import json
import os
import shutil
import signal
import sys
import threading
import time
import warnings

from admm_mpi.config import settings_difference
from admm_mpi.errors import InputError, TrainingError

JOURNAL = "journal.log"
SWEEP = "sweep.json"            # the sweep's base settings and space: a resumed sweep must be the same
STATES = ("running", "complete", "pruned", "failed")
TUNE_ONLY = ("command", "config", "space", "trials", "ranks_per_trial", "resume", "sampler", "pruner", "seconds")
# what a trial's config.toml and best.toml leave out: where the run writes, how it resumes, its bar
NOT_IN_CONFIG = ("out", "resume", "progress")


def add_parser(sub, solver):
    """The ``tune`` subcommand: ``train``'s flags (``solver``'s settings listed), and the sweep's
    own (``--resume`` becomes a switch)."""
    from admm_mpi.cli import _add_train_arguments

    p = sub.add_parser("tune", help="search training settings over groups of ranks (Optuna), preemption-safe",
                       conflict_handler="resolve")
    _add_train_arguments(p, solver)
    t = p.add_argument_group("the search (train's flags above fix the settings the space does not vary)")
    t.add_argument("--out", required=True, metavar="DIR",
                   help="sweep directory: trials.csv, best.toml, best/model.h5, trials/NNNN (one run each)")
    t.add_argument("--space", metavar="FILE.toml",
                   help="search space (default: the solver's built-in space, see the tuning guide)")
    t.add_argument("--trials", type=int, default=20, metavar="N", help="trials of the whole sweep (default: 20)")
    t.add_argument("--seconds", type=float, default=0.0, metavar="S",
                   help="start no new trial after S seconds of this job (default: 0, no limit)")
    t.add_argument("--ranks-per-trial", dest="ranks_per_trial", type=int, default=1, metavar="G",
                   help="ranks of each group; the world splits into P/G groups, one trial each (default: 1)")
    t.add_argument("--resume", action="store_true",
                   help="continue the sweep in DIR: keep finished trials, resume running ones from their checkpoints")
    t.add_argument("--sampler", default="tpe", metavar="tpe|random",
                   help="Optuna sampler, seeded by --seed (default: tpe; without Optuna: random)")
    t.add_argument("--pruner", default="median", metavar="median|halving|hyperband|none",
                   help="Optuna pruner acting on the validation accuracy of every evaluation (default: median)")
    return p


# ---- the search engines (coordinator only) --------------------------------------------------
def journal_backend(path):
    """Optuna's journal file, which only the coordinator writes (a second sweep on the folder is
    refused), synced to disk (fsync) at every change that is not an intermediate value.

    Optuna's own backend syncs every line, and an intermediate value comes with every evaluation
    of every running trial: measured in one run, a trial of 60 reports cost the coordinator 30–46 ms
    that way and 16–30 ms this way (bench/results/tune.md). Here an intermediate value is written and closed, not synced: it
    survives the end of any process (SIGTERM, scancel, a requeue), and the next change of a trial's
    state syncs it with the rest of the file. Only a crash of the node itself can lose the values
    written since; that trial's curve then has a gap, which the pruner reads past.
    """
    from optuna.storages.journal import JournalFileBackend

    try:
        from optuna.storages.journal._storage import JournalOperation

        intermediate = int(JournalOperation.SET_TRIAL_INTERMEDIATE_VALUE)
    except (ImportError, AttributeError):  # another Optuna layout: its own backend, a sync per line
        return JournalFileBackend(path)

    class CoordinatorJournal(JournalFileBackend):
        def append_logs(self, logs):
            if any(log.get("op_code") != intermediate for log in logs):
                return super().append_logs(logs)
            with open(path, "ab") as f:
                f.write(("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode())

    return CoordinatorJournal(path)


class OptunaEngine:
    """An Optuna study in ``DIR/journal.log`` (JournalStorage on a JournalFileBackend), by ask and tell."""

    def __init__(self, out, sampler, pruner, seed, iters, sync_every_line=False):
        """``sync_every_line``: Optuna's own journal backend, a disk sync per line (for comparisons,
        bench/tune.py), instead of :func:`journal_backend`."""
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna, self.seed = optuna, seed
        self.sampler = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}[sampler]
        pruners = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2),
                   "halving": lambda: optuna.pruners.SuccessiveHalvingPruner(),
                   "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=iters),
                   "none": lambda: optuna.pruners.NopPruner()}
        storage = JournalStorage((JournalFileBackend if sync_every_line else journal_backend)(os.path.join(out, JOURNAL)))
        self.study = optuna.create_study(study_name="admm-mpi-tune", storage=storage, direction="maximize",
                                         sampler=self.sampler(seed=seed), pruner=pruners[pruner](),
                                         load_if_exists=True)
        self.live = {}  # trial number -> optuna Trial

    def ask(self, space):
        # a sampler seeded by (seed, trial number): the draws depend on the seed and the trials so
        # far, not on how often the sweep was stopped and resumed (a new sampler starts a new stream)
        import numpy as np

        number = self.count()
        self.study.sampler = self.sampler(seed=int(np.random.SeedSequence([self.seed, number]).generate_state(1)[0]))
        trial = self.study.ask()
        self.live[trial.number] = trial

        def suggest(d):
            if d.choices is not None:
                return trial.suggest_categorical(d.name, list(d.choices))
            if d.kind is int:
                return trial.suggest_int(d.name, d.low, d.high, step=d.step or 1, log=d.log)
            return trial.suggest_float(d.name, d.low, d.high, step=d.step, log=d.log)

        return trial.number, space.draw(suggest)

    def interrupted(self):
        """``[(number, settings, user attributes)]`` of the trials left running by a stopped sweep."""
        found = []
        for frozen in self.study.get_trials(deepcopy=False, states=(self.optuna.trial.TrialState.RUNNING,)):
            # a Trial handle on an existing trial (Optuna's ask and tell use the same constructor)
            self.live[frozen.number] = self.optuna.trial.Trial(self.study, frozen._trial_id)
            found.append((frozen.number, dict(frozen.params), dict(frozen.user_attrs)))
        return found

    def count(self):
        return len(self.study.get_trials(deepcopy=False))

    def report(self, number, step, value):
        """Record the validation accuracy of evaluation ``step``; whether the pruner stops the trial."""
        trial = self.live[number]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a step reported before a preemption keeps its first value
            trial.report(value, step)
        return trial.should_prune()

    def set_attributes(self, number, attributes):
        for key, value in attributes.items():
            self.live[number].set_user_attr(key, value)

    def tell(self, number, state, value):
        TrialState = self.optuna.trial.TrialState
        trial = self.live.pop(number)
        if state == "complete":
            self.study.tell(trial, value)
        else:
            self.study.tell(trial, state=TrialState.PRUNED if state == "pruned" else TrialState.FAIL)

    def records(self):
        """Every trial as a dict: number, state, value, params, curve {step: accuracy}, attributes."""
        names = {"RUNNING": "running", "COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed",
                 "WAITING": "waiting"}
        return [{"number": t.number, "state": names[t.state.name], "value": t.value if t.state.name == "COMPLETE"
                 else None, "params": dict(t.params), "curve": dict(t.intermediate_values), **t.user_attrs}
                for t in self.study.get_trials(deepcopy=False)]


class RandomEngine:
    """Random search without Optuna: every draw and outcome appended to ``DIR/journal.log`` as JSON lines.

    No pruner (every trial runs to its own stopping rule); the draws come from ``seed`` and the
    trial number, so a resumed sweep draws what an uninterrupted one would.
    """

    def __init__(self, out, seed):
        self.path, self.seed, self.trials = os.path.join(out, JOURNAL), seed, {}
        if os.path.exists(self.path):
            with open(self.path) as f:
                for line in f:
                    try:
                        event = json.loads(line)
                    except ValueError:  # a line torn by a kill: the event did not happen
                        continue
                    self._apply(event)

    def _apply(self, event):
        trial = self.trials.setdefault(event["number"], {"number": event["number"], "state": "running",
                                                         "value": None, "params": {}, "curve": {}})
        trial.update({k: v for k, v in event.items() if k != "curve"})
        trial["curve"].update({int(k): v for k, v in event.get("curve", {}).items()})

    def _write(self, event):
        with open(self.path, "a") as f:
            f.write(json.dumps(event) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._apply(event)

    def ask(self, space):
        import numpy as np

        number = len(self.trials)
        rng = np.random.default_rng([self.seed, number])

        def suggest(d):
            if d.choices is not None:
                return d.choices[int(rng.integers(len(d.choices)))]
            if d.log:
                value = float(np.exp(rng.uniform(np.log(d.low), np.log(d.high))))
            else:
                value = float(rng.uniform(d.low, d.high))
            if d.step:
                value = d.low + round((value - d.low) / d.step) * d.step
            return int(round(value)) if d.kind is int else value

        params = space.draw(suggest)
        self._write({"number": number, "state": "running", "value": None, "params": params, "curve": {}})
        return number, params

    def interrupted(self):
        return [(t["number"], dict(t["params"]), {k: v for k, v in t.items()
                                                  if k not in ("number", "state", "value", "params", "curve")})
                for t in self.trials.values() if t["state"] == "running"]

    def count(self):
        return len(self.trials)

    def report(self, number, step, value):
        self._write({"number": number, "curve": {step: value}})
        return False

    def set_attributes(self, number, attributes):
        self._write({"number": number, **attributes})

    def tell(self, number, state, value):
        self._write({"number": number, "state": state, "value": value if state == "complete" else None})

    def records(self):
        return [dict(t) for _, t in sorted(self.trials.items())]


def make_engine(out, args, seed, iters):
    """Optuna when installed, else the random search (said once); ``seed`` seeds the sampler."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        if args.sampler != "random" or args.pruner != "none":
            print("admm-mpi tune: Optuna is not installed (pip install 'admm-mpi[tune]'): random search "
                  "without pruning", file=sys.stderr, flush=True)
        return RandomEngine(out, seed)
    return OptunaEngine(out, args.sampler, args.pruner, seed, iters)


# ---- the coordinator (world rank 0, in a thread) ---------------------------------------------
class Coordinator:
    """Hands out trials, relays reports to the pruner, records outcomes and writes trials.csv.

    Requests (from the group roots, rank 0's own group included):

    - ``("next", group, outcome, signal)``: the group's last trial ended (``outcome``, None at
      first); the answer is its next trial ``{"number", "settings"}`` or None (no more work);
    - ``("report", number, step, accuracy)``: answered ``"prune"``, ``"stop"`` (the sweep is
      stopping: checkpoint now) or ``"continue"``.
    """

    def __init__(self, engine, space, out, budget, seconds, stop, resuming):
        self.engine, self.space, self.out, self.stop = engine, space, out, stop
        self.budget, self.deadline = budget, time.monotonic() + seconds if seconds > 0 else None
        self.signal = 0
        self.seconds_before, self.pending = {}, []
        if resuming:
            for number, settings, attributes in engine.interrupted():
                self.pending.append({"number": number, "settings": settings})
                self.seconds_before[number] = attributes.get("seconds", 0.0)
        self.preempted = []

    def stopping(self):
        return self.signal or self.stop.signal

    def handle(self, message):
        if message[0] == "report":
            _, number, step, accuracy = message
            if self.stopping():
                return "stop"
            return "prune" if self.engine.report(number, step, accuracy) else "continue"
        _, group, outcome, signum = message
        self.signal = self.signal or signum
        if outcome is not None:
            self.record(outcome)
        if self.stopping() or self.preempted:
            return None
        if self.pending:
            return self.pending.pop(0)
        if self.engine.count() >= self.budget or (self.deadline and time.monotonic() > self.deadline):
            return None
        number, settings = self.engine.ask(self.space)
        self.seconds_before[number] = 0.0
        return {"number": number, "settings": settings}

    def record(self, outcome):
        number, state = outcome["number"], outcome["state"]
        seconds = self.seconds_before.get(number, 0.0) + outcome["seconds"]
        self.engine.set_attributes(number, {"seconds": seconds, "ranks": outcome["ranks"], "group": outcome["group"],
                                            "kept_epoch": outcome.get("kept_epoch"), "epochs": outcome.get("epochs"),
                                            "message": outcome.get("message", "")})
        if state == "preempted":
            self.preempted.append(number)
            self.signal = self.signal or outcome.get("signal", signal.SIGTERM)
            return
        self.engine.tell(number, state, outcome.get("value"))
        records = self.engine.records()
        write_trials_csv(self.out, records, self.space)
        print(progress_line(number, state, outcome, seconds, records, self.budget), flush=True)


def progress_line(number, state, outcome, seconds, records, budget):
    done = sum(r["state"] in ("complete", "pruned", "failed") for r in records)
    best = max((r for r in records if r["state"] == "complete"), key=lambda r: r["value"], default=None)
    if state == "complete":
        what = f"validation {outcome['value']:.4f} at epoch {outcome['kept_epoch']}"
    else:
        what = f"pruned after epoch {outcome['epochs']}" if state == "pruned" else f"failed ({outcome['message']})"
    best_text = f"best {best['value']:.4f} (trial {best['number']})" if best else "no complete trial yet"
    return (f"admm-mpi tune: trial {number} {what}, {seconds:.3g} s on {outcome['ranks']} rank(s); "
            f"{best_text}; {done}/{budget} trials done")


def serve(world, coordinator, n_groups):
    """The coordinator's loop (a thread of rank 0): answer requests until every group has left."""
    groups_left = n_groups
    try:
        while groups_left:
            request = world.next_request()
            if request is None:
                time.sleep(0.002)
                continue
            source, message = request
            answer = coordinator.handle(message)
            world.reply(source, answer)
            if message[0] == "next" and answer is None:
                groups_left -= 1
    except BaseException as exc:  # the groups wait on this thread: end the job rather than hang it
        import traceback

        print(f"admm-mpi: rank 0: the tuning coordinator failed, aborting the job: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        traceback.print_exc()
        world.abort(1)


# ---- the groups: one trial at a time ---------------------------------------------------------
def trial_directory(out, number):
    return os.path.join(out, "trials", f"{number:04d}")


def trial_config(args, base_cli, settings, out, number):
    """The configuration of trial ``number``: the sweep's settings, the trial's, its own run directory."""
    from admm_mpi.config import resolve

    cli = {**base_cli, **settings, "out": trial_directory(out, number), "resume": "auto", "progress": False,
           "eval_test": "never"}  # the test split is read once, for the best trial
    return resolve(file=args.config, cli=cli)


def config_toml(config, **changes):
    """A flat TOML file of ``config`` (run and solver settings) that ``admm-mpi train --config`` reads."""
    from admm_mpi.config import _toml_value

    settings = {**config.as_dict(), **changes}
    if os.path.exists(settings["data"]):  # a file: found again from any working directory
        settings["data"] = os.path.abspath(settings["data"])
    lines = ["# admm-mpi train --config THIS_FILE --out RUN_DIR reruns this trial (written by admm-mpi tune)",
             "[train]"]
    lines += [f"{name} = {_toml_value(value)}" for name, value in settings.items() if name not in NOT_IN_CONFIG]
    return "\n".join(lines) + "\n"


def run_trial(assignment, args, base_cli, ask, group, index, stop):
    """Train one trial on ``group`` (collective in the group); the outcome dict (on the group root)."""
    from admm_mpi.train import train

    number, t0 = assignment["number"], time.perf_counter()
    outcome = {"number": number, "ranks": group.size, "group": index}
    try:
        config = trial_config(args, base_cli, assignment["settings"], args.out, number)
    except InputError as exc:
        return {**outcome, "state": "failed", "message": str(exc), "seconds": 0.0}

    def on_evaluation(iteration, scores):
        answer = None
        if group.is_root:
            answer = ask(("report", number, iteration, scores["validation_accuracy"]))
        answer = group.bcast_decision(answer)
        if answer == "stop":  # the sweep is stopping: checkpoint as on SIGTERM
            stop.request(signal.SIGTERM)
        return answer == "prune"

    try:
        if group.is_root:
            os.makedirs(config.out, exist_ok=True)
            with open(os.path.join(config.out, "config.toml"), "w") as f:
                f.write(config_toml(config))
        summary = train(config, group, stop=stop, on_evaluation=on_evaluation).summary
    except (InputError, TrainingError) as exc:  # raised on every rank of the group alike
        return {**outcome, "state": "failed", "message": str(exc), "seconds": time.perf_counter() - t0}
    if summary.get("finished_earlier"):  # finished before the sweep stopped, not yet recorded
        with open(os.path.join(config.out, "summary.json")) as f:
            summary = json.load(f)
    outcome.update(seconds=time.perf_counter() - t0, kept_epoch=summary.get("kept_iteration"),
                   epochs=summary.get("iterations"), value=summary.get("validation_accuracy"))
    if summary.get("preempted"):
        return {**outcome, "state": "preempted", "signal": summary["stopped_by_signal"]}
    if summary["stopped"] == "pruned":
        return {**outcome, "state": "pruned"}
    if outcome["value"] is None:
        return {**outcome, "state": "failed", "message": "no validation rows: tune selects on validation "
                                                          "accuracy (give --validation-fraction F)"}
    return {**outcome, "state": "complete"}


def work(args, base_cli, ask, group, index, stop):
    """A group's loop (every rank of it): ask the coordinator for a trial, train it, until none is left.

    ``ask(message)`` (group root only) sends a request to the coordinator and returns its answer.
    """
    outcome = None
    while True:
        signum = stop.agree(group)
        assignment = ask(("next", index, outcome, signum)) if group.is_root else None
        assignment = group.bcast_decision(assignment)
        if assignment is None:
            return
        outcome = run_trial(assignment, args, base_cli, ask, group, index, stop)


# ---- outputs (rank 0) -------------------------------------------------------------------------
def _write_atomic(path, text):
    from admm_mpi.files import create_file

    with create_file(f"{path}.tmp") as f:
        f.write(text)
    os.replace(f"{path}.tmp", path)


def write_trials_csv(out, records, space):
    """``DIR/trials.csv``: one row per trial, its settings, outcome and validation curve."""
    names = [d.name for d in space.dimensions]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["trial", "state", "validation_accuracy", "kept_epoch", "epochs", "seconds", "ranks", "group",
                     *names, "validation_by_epoch", "message"])
    for r in sorted(records, key=lambda r: r["number"]):
        curve = " ".join(f"{int(step)}:{value:.6g}" for step, value in sorted(r["curve"].items(),
                                                                               key=lambda kv: int(kv[0])))
        seconds = r.get("seconds")
        writer.writerow([r["number"], r["state"], "" if r["value"] is None else f"{r['value']:.6g}",
                         _blank(r.get("kept_epoch")), _blank(r.get("epochs")),
                         "" if seconds is None else f"{seconds:.3f}", _blank(r.get("ranks")), _blank(r.get("group")),
                         *[_blank(r["params"].get(n)) for n in names], curve, r.get("message", "")])
    _write_atomic(os.path.join(out, "trials.csv"), buffer.getvalue())


def _blank(value):
    return "" if value is None else value


def write_best(out, records, base):
    """``DIR/best.toml`` and ``DIR/best/`` (model.h5, summary.json) of the best complete trial; its record."""
    complete = [r for r in records if r["state"] == "complete"]
    if not complete:
        return None
    best = max(complete, key=lambda r: (r["value"], -r["number"]))  # the first of equals
    from admm_mpi.config import resolve

    source = trial_directory(out, best["number"])
    # the trial did not read the test split; the rerun does as the sweep's settings say
    trial = resolve(file=os.path.join(source, "config.toml"))
    _write_atomic(os.path.join(out, "best.toml"), config_toml(trial, eval_test=base.eval_test))
    os.makedirs(os.path.join(out, "best"), exist_ok=True)
    for name in ("model.h5", "summary.json"):
        shutil.copyfile(os.path.join(source, name), os.path.join(out, "best", f"{name}.tmp"))
        os.replace(os.path.join(out, "best", f"{name}.tmp"), os.path.join(out, "best", name))
    return best


def plot_trials(out, records, space):
    """``DIR/trials.png``: validation accuracy against trial number and against each searched setting."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = 1 + len(space.dimensions)
    columns = min(panels, 3)
    rows = -(-panels // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    colors = {"complete": "C0", "pruned": "C1", "failed": "C3", "running": "C7"}

    def accuracy(r):  # a pruned trial: its last reported accuracy
        if r["value"] is not None:
            return r["value"]
        return r["curve"][max(r["curve"], key=int)] if r["curve"] else None

    shown = [r for r in records if accuracy(r) is not None]
    ax = axes.flat[0]
    for state, color in colors.items():
        points = [(r["number"], accuracy(r)) for r in shown if r["state"] == state]
        if points:
            ax.scatter(*zip(*points), color=color, label=state, s=18)
    ax.set(xlabel="trial", ylabel="validation accuracy", title="validation accuracy by trial")
    ax.legend(fontsize=7)
    for ax, d in zip(list(axes.flat)[1:], space.dimensions):
        for state, color in colors.items():
            points = [(r["params"][d.name], accuracy(r)) for r in shown if r["state"] == state and d.name in r["params"]]
            if points:
                xs, ys = zip(*points)
                if d.choices is not None:  # choices at 0, 1, 2, ... labelled by their values
                    xs = [[str(c) for c in d.choices].index(str(x)) for x in xs]
                ax.scatter(xs, ys, color=color, s=18)
        ax.set(xlabel=d.name, ylabel="validation accuracy", xscale="log" if d.log else "linear")
        if d.choices is not None:
            ax.set_xticks(range(len(d.choices)))
            ax.set_xticklabels([str(c) for c in d.choices], fontsize=7, rotation=30)
    for ax in list(axes.flat)[panels:]:
        ax.set_visible(False)
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = os.path.join(out, "trials.png")
    from admm_mpi.files import create_file

    with create_file(f"{path}.tmp", "wb") as f:
        fig.savefig(f, dpi=90, format="png")
    os.replace(f"{path}.tmp", path)
    plt.close(fig)
    return path


# ---- the command ------------------------------------------------------------------------------
def _check_sweep(out, resuming, description):
    """Root: a problem with the sweep directory's state, or None (writes sweep.json for a new sweep)."""
    journal, record = os.path.join(out, JOURNAL), os.path.join(out, SWEEP)
    if not resuming and (os.path.exists(journal) or os.path.exists(record)):
        return f"{out} holds a sweep: pass --resume to continue it, or choose another --out"
    if os.path.exists(record):
        with open(record) as f:
            earlier = json.load(f)
        differ = sorted(k for k in set(earlier) | set(description)
                        if k != "settings" and earlier.get(k) != description.get(k))
        differ += settings_difference(earlier.get("settings", {}), description["settings"])
        if differ:
            return (f"{out} holds a sweep with other settings ({', '.join(differ)} differ); "
                    "resume it with the same command, or choose another --out")
        return None
    _write_atomic(record, json.dumps(description, indent=2) + "\n")
    return None


def _data_problem(base):
    """Root: why the sweep's data cannot serve (unreadable, or no validation rows to compare on), or None."""
    from admm_mpi.data import _read_meta, resolve_path

    meta, problem = _read_meta(resolve_path(base.data))
    if problem is None and not meta[3] and base.validation_fraction == 0:
        problem = ("admm-mpi tune compares trials on validation accuracy: give --validation-fraction F > 0, or "
                   "X_val and y_val in the data file")
    return problem


def _stop_on_signals():
    """SIGTERM and SIGINT ask every running trial to checkpoint and stop (as ``admm-mpi train``)."""
    from admm_mpi.stopping import StopRequest

    stop = StopRequest()

    def on_signal(signum, frame):
        stop.request(signum)
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def cmd_tune(args, world):
    from admm_mpi.config import resolve
    from admm_mpi.rundir import RunDirectory
    from admm_mpi.search_space import load_space

    if args.trials < 1:
        raise InputError(f"--trials must be at least 1, got {args.trials}")
    if args.sampler not in ("tpe", "random"):
        raise InputError(f"--sampler must be tpe or random, got {args.sampler!r}")
    if args.pruner not in ("median", "halving", "hyperband", "none"):
        raise InputError(f"--pruner must be median, halving, hyperband or none, got {args.pruner!r}")
    base_cli = {k: v for k, v in vars(args).items() if k not in TUNE_ONLY and v is not None}
    base = resolve(file=args.config, cli=base_cli)
    space = load_space(args.space, base_cli, args.config)  # every rank: a bad space ends the job before training
    if world.distributed and not world.threads_may_communicate():
        raise InputError("admm-mpi tune needs an MPI library with MPI_THREAD_MULTIPLE (its coordinator is a "
                         "thread of rank 0); MPICH and Open MPI built with it have it")
    world.agree(_data_problem(base) if world.is_root else None)  # once, not in every trial
    group, index, n_groups = world.split_groups(args.ranks_per_trial)
    sweep_dir = RunDirectory(args.out).open(world, resuming=args.resume)  # refuses a second sweep on DIR
    try:
        # what a resumed sweep must share with the one it continues (--trials and --seconds may grow)
        description = json.loads(json.dumps({
            "settings": {k: v for k, v in base.as_dict().items() if k not in NOT_IN_CONFIG},
            "space": space.as_dict(), "ranks_per_trial": args.ranks_per_trial, "sampler": args.sampler,
            "pruner": args.pruner}))
        world.agree(_check_sweep(args.out, args.resume, description) if world.is_root else None)
        stop = _stop_on_signals()
        server = coordinator = None
        if world.is_root:
            coordinator = Coordinator(make_engine(args.out, args, base.seed, base.iters), space, args.out, args.trials,
                                      args.seconds, stop, args.resume)
            print(f"admm-mpi tune: {args.trials} trials on {n_groups} group(s) of {group.size} rank(s); space: "
                  f"{space.source}; sweep in {args.out}", flush=True)
            if world.distributed:  # the coordinator answers every group root, its own included, from a thread
                server = threading.Thread(target=serve, args=(world, coordinator, n_groups), name="tune-coordinator",
                                          daemon=True)
                server.start()
        ask = (lambda message: world.request(0, message)) if world.distributed else coordinator.handle
        work(args, base_cli, ask, group, index, stop)
        summary = None
        if world.is_root:
            if server is not None:
                server.join()
            summary = _finish(args, base, space, coordinator)
        world.idle_barrier()  # every group has left; the test split below is read by every rank
        summary = world.bcast_decision(summary)
        if summary["best"] is not None and base.eval_test != "never" and not summary["signal"]:
            from admm_mpi.train import evaluate

            result = evaluate(os.path.join(args.out, "best", "model.h5"), base.data, world)
            if world.is_root and "test_accuracy" in result:
                print(f"admm-mpi tune: best trial {summary['best']}: test accuracy {result['test_accuracy']:.4f} "
                      "(the test split, read once)", flush=True)
        if summary["signal"]:
            if world.is_root:
                print(f"admm-mpi tune: stopped by {signal.Signals(summary['signal']).name}; running trials "
                      f"checkpointed; continue with --resume --out {args.out}", file=sys.stderr, flush=True)
            raise SystemExit(128 + summary["signal"])
    finally:
        group.close()
        sweep_dir.close()


def _finish(args, base, space, coordinator):
    """Root, after every group has left: trials.csv, best.toml, best/model.h5, the plot; the final line."""
    records = coordinator.engine.records()
    write_trials_csv(args.out, records, space)
    best = write_best(args.out, records, base)
    plot_trials(args.out, records, space)
    counts = {state: sum(r["state"] == state for r in records) for state in STATES}
    text = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    if best is not None:
        print(f"admm-mpi tune: {text}; best trial {best['number']}: validation accuracy {best['value']:.4f}; "
              f"{args.out}/best.toml, {args.out}/best/model.h5, {args.out}/trials.csv", flush=True)
    else:
        print(f"admm-mpi tune: {text}; no trial completed", flush=True)
    return {"best": None if best is None else best["number"], "signal": int(coordinator.stopping() or 0)}
