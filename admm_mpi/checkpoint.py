"""Sharded, atomic, re-shardable checkpoints of a training run.

One directory per checkpoint, ``RUN/checkpoints/ckpt-<iteration>[-<batch>]/``:

- ``part-<rank>.h5``, written by every rank: the entries of the state that rank owns.
  ``/global/<field>[/<index>]`` holds global entries (weights, step sizes, schedules; in the
  data layout the root owns all of them, on a layer grid each layer group its own layers);
  ``/samples/<field>[/<index>]`` holds this rank's columns ``[start, stop)`` of the per-sample
  entries (codes, multipliers). Nothing per-sample passes through the root.
- ``manifest.json``, written last by the root: iteration, configuration, data fingerprint, and
  for every part its size, CRC-32, column range and the entries it holds.

Commit protocol: every rank writes and fsyncs its part and computes its CRC; the root gathers
the part records (or any rank's failure), writes ``manifest.json.tmp``, fsyncs and renames it.
A checkpoint exists only when its manifest does, so a job killed at any moment leaves the
previous checkpoint whole. ``latest`` is a convenience pointer; resuming scans the directories
newest first, verifies every part's CRC (spread over the ranks) and falls back to the previous
checkpoint with a warning when one is torn or corrupted.

Restore is re-sharded: each rank reads only the column ranges it needs, from the parts that
overlap them, so a checkpoint written at P ranks (any layout) continues at P' ranks.
"""

import dataclasses
import glob
import hashlib
import json
import os
import re
import shutil
import warnings
import zlib

import h5py
import numpy as np

from admm_mpi import __version__
from admm_mpi.backend import from_host, namespace, to_host
from admm_mpi.errors import TrainingError
from admm_mpi.solvers.base import BATCH_STATE

FORMAT = "admm-mpi checkpoint"
FORMAT_VERSION = 2
_NAME = re.compile(r"^ckpt-(\d{6,})(?:-(\d+))?$")


class CheckpointError(TrainingError):
    """A checkpoint could not be written (disk full, permissions); the previous one is intact."""


# ---- what a state holds ---------------------------------------------------------------------

def field_owners(state):
    """The state's checkpointed entries as ``(global, per_sample)`` lists of ``(name, owner)``.

    A dataclass field is per-sample if ``state.sample_fields`` names it, else global. A field
    marked ``metadata={BATCH_STATE: True}`` holds another solver's state for the current
    mini-batch only (the mini-batch mode): that state's global entries are this state's, under
    their own names, and its per-sample entries (one batch's codes) are not saved.
    """
    global_entries, sample_entries = [], []
    for f in dataclasses.fields(state):
        if f.metadata.get(BATCH_STATE):
            global_entries += field_owners(getattr(state, f.name))[0]
        elif f.name in state.sample_fields:
            sample_entries.append((f.name, state))
        else:
            global_entries.append((f.name, state))
    return global_entries, sample_entries


def _checkpointed(state, extra):
    """:func:`field_owners` of ``state``, with every field of ``extra`` (a dataclass of global
    entries kept beside the solver's state: the run's model selection) among the global ones."""
    global_entries, sample_entries = field_owners(state)
    if extra is not None:
        added = [(f.name, extra) for f in dataclasses.fields(extra)]
        clash = {name for name, _ in added} & {name for name, _ in global_entries + sample_entries}
        assert not clash, f"{type(extra).__name__} fields {sorted(clash)} clash with the solver's state"
        global_entries = global_entries + added
    return global_entries, sample_entries


def _entries(value):
    """``(key suffix, index, item)`` of a field: list items by position, a single value as index None."""
    if isinstance(value, list):
        return [(f"/{i}", i, item) for i, item in enumerate(value)]
    return [("", None, value)]


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---- fingerprint and compatibility ------------------------------------------------------------

def fingerprint(shard):
    """What must match for a checkpoint to continue on this data (computed on the root).

    Shapes, classes and a hash of the first rows' values: the file may move (another path on
    another cluster) but must hold the same samples.
    """
    first = to_host(shard.X[:, :16])
    head = [hashlib.sha1(np.ascontiguousarray(first[:, j], dtype=np.float64).tobytes()).hexdigest()[:16]
            for j in range(first.shape[1])]  # the root holds rows 0, 1, ... on any grid
    return {"n_total": shard.n_total, "n_features": shard.n_features, "n_classes": shard.n_classes,
            "n_test_total": shard.n_test_total, "first_rows": head}


def _same_data(saved, current):
    """Equal shapes and classes, and the first rows both runs' roots hold are equal."""
    common = min(len(saved["first_rows"]), len(current["first_rows"]))
    return ({k: v for k, v in saved.items() if k != "first_rows"}
            == {k: v for k, v in current.items() if k != "first_rows"}
            and common > 0 and saved["first_rows"][:common] == current["first_rows"][:common])


# settings that may change between the run that wrote a checkpoint and the one that resumes it
# (the data *path* may change; the data fingerprint checks the content)
RESUMABLE_CHANGES = {"iters", "out", "progress", "tol", "resume", "checkpoint_every", "data", "device", "layout",
                     "layer_groups", "checkpoint_state", "eval_every", "eval_test", "keep", "early_stopping",
                     "patience"}


def check_compatible(manifest, config, shard):
    """Message if the checkpoint described by ``manifest`` cannot continue this run, else None."""
    path = manifest["path"]
    saved, current = manifest["config"], config.as_dict()
    differ = sorted(k for k in set(saved) | set(current)
                    if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k))
    if differ:
        return (f"checkpoint {path} was written with another configuration ({', '.join(differ)} differ: "
                + ", ".join(f"{k}={saved.get(k)!r} there, {current.get(k)!r} here" for k in differ[:3]) + ")")
    here = fingerprint(shard)
    if not _same_data(manifest["data"], here):
        brief = {k: v for k, v in manifest["data"].items() if k != "first_rows"}
        return (f"checkpoint {path} belongs to another data set ({brief} there, "
                f"{ {k: v for k, v in here.items() if k != 'first_rows'} } here, or other sample values)")
    return None


# ---- files ----------------------------------------------------------------------------------

def _crc32(path, chunk=1 << 24):
    crc = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                return f"{crc:08x}"
            crc = zlib.crc32(block, crc)


def _fsync_path(path):
    """fsync a file, or a directory (so a rename inside it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomically(path, obj):
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_path(os.path.dirname(path) or ".")


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _reason(exc):
    """One line for an I/O error: the OS's text, also when HDF5 wraps it in its own report."""
    text = str(exc)
    errno = re.search(r"errno = (\d+)", text)
    if errno:
        return os.strerror(int(errno.group(1)))
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.splitlines()[0]
    return text.splitlines()[0] if text else type(exc).__name__


def checkpoint_name(iteration, batches_done=0):
    return f"ckpt-{iteration:06d}" + (f"-{batches_done:06d}" if batches_done else "")


def _position(name):
    """``(iteration, batches)`` of a checkpoint directory name, or None."""
    match = _NAME.match(name)
    return None if match is None else (int(match.group(1)), int(match.group(2) or 0))


def list_checkpoints(run_dir):
    """Every checkpoint directory of ``run_dir`` (complete or not), newest first."""
    directory = os.path.join(run_dir, "checkpoints")
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    found = [(_position(n), os.path.join(directory, n)) for n in names
             if _position(n) is not None and os.path.isdir(os.path.join(directory, n))]
    return [path for _, path in sorted(found, reverse=True)]


def legacy_checkpoints(run_dir):
    """Single-file checkpoints of the format before 2 (``ckpt-*.h5``)."""
    return sorted(glob.glob(os.path.join(run_dir, "checkpoints", "ckpt-*.h5")))


def has_checkpoints(run_dir):
    """Whether ``run_dir`` holds any checkpoint at all (whatever ``latest`` says)."""
    return bool(list_checkpoints(run_dir) or legacy_checkpoints(run_dir))


# ---- save -----------------------------------------------------------------------------------

def _write_part(path, rank, columns, global_items, sample_items):
    """This rank's part file; returns its record for the manifest (size, CRC, entries)."""
    data_keys = []
    try:
        with h5py.File(path, "w") as f:
            f.attrs.update(rank=rank, start=columns[0], stop=columns[1])
            g = f.create_group("global")
            for key, value in global_items:
                if isinstance(value, np.ndarray):
                    g[key] = value
                else:
                    g.attrs[key] = json.dumps(_jsonable(value))
            s = f.create_group("samples")
            for key, value in sample_items:
                if value is None:
                    data_keys.append(key)  # the input X itself: restored from the data
                else:
                    s[key] = value
        _fsync_path(path)
        crc = _crc32(path)
    except BaseException:
        _remove(path)
        raise
    return {"file": os.path.basename(path), "bytes": os.path.getsize(path), "crc32": crc,
            "columns": list(columns), "global": [k for k, _ in global_items],
            "samples": [k for k, v in sample_items if v is not None], "data": data_keys}


def _part_bytes(global_items, sample_items):
    """A generous estimate of a part file's size (arrays plus HDF5's per-dataset overhead)."""
    arrays = [v for _, v in global_items + sample_items if isinstance(v, np.ndarray)]
    return sum(a.nbytes for a in arrays) + 4096 * (len(global_items) + len(sample_items)) + 65536


def _check_space(directory, part_bytes):
    """Root: a message when the file system holding ``directory`` cannot take every part."""
    try:
        stats = os.statvfs(directory)
    except OSError:
        return None  # no statistics: try, and let a failed write speak
    needed, free = sum(part_bytes), stats.f_bavail * stats.f_frsize
    if needed <= free:
        return None
    return (f"cannot write checkpoint {directory}: No space left on device (it needs about "
            f"{needed / 1e6:.1f} MB, {free / 1e6:.1f} MB are free)")


def _owned_items(state, shard, owns, samples=True, extra=None):
    """This rank's (key, host value) pairs: global entries and per-sample columns it owns
    (none with ``samples=False``: a checkpoint of the global state only)."""
    global_items, sample_items = [], []
    global_entries, sample_entries = _checkpointed(state, extra)
    for name, owner in global_entries:
        for suffix, index, item in _entries(getattr(owner, name)):
            if owns(name, index, False):
                global_items.append((name + suffix, to_host(item) if hasattr(item, "shape") else item))
    for name, owner in sample_entries if samples else ():
        for suffix, index, item in _entries(getattr(owner, name)):
            if item is not None and owns(name, index, True):
                sample_items.append((name + suffix, None if item is shard.X else to_host(item)))
    return global_items, sample_items


def _field_shapes(state, extra=None):
    """Which fields are lists and how long (the manifest's record of the state's structure)."""
    out = {}
    for kind, entries in zip(("global", "samples"), _checkpointed(state, extra)):
        for name, owner in entries:
            value = getattr(owner, name)
            out[name] = {"kind": kind, "list": isinstance(value, list),
                         "length": len(value) if isinstance(value, list) else None}
    return out


def _kind(config):
    """What a checkpoint of this run holds: "full" (every variable) or "global" (no per-sample state)."""
    return getattr(config, "checkpoint_state", "full")


def save(run_dir, iteration, state, shard, config, grid, keep=2, owns=None, batches_done=0, extra=None):
    """Write a checkpoint of ``state`` after ``iteration`` (collective: every rank writes its part).

    ``owns(field, index, per_sample)`` says whether this rank's value of an entry is the one to
    save (on a layer grid each layer's values live on its layer group only; ``index`` is None for
    a field that is not a list). By default every rank owns its columns of every per-sample entry and the
    root owns the global state, which every rank holds identically. ``batches_done`` > 0 marks a
    checkpoint taken inside an epoch of a mini-batch solver. ``config.checkpoint_state`` "global"
    leaves the per-sample entries out (a resumed run rebuilds them; see ``load``). ``extra``: a
    dataclass of more global entries saved beside the state (the run's model selection). Raises
    :class:`CheckpointError` on every rank if any rank cannot write (the partial checkpoint is
    removed, the previous kept).
    """
    if owns is None:
        def owns(name, index, per_sample):
            return per_sample or grid.is_root
    directory = os.path.join(run_dir, "checkpoints", checkpoint_name(iteration, batches_done))
    problem = None
    if grid.is_root:
        try:
            _discard(directory)  # a torn or rejected attempt at this same position
            os.makedirs(directory)
        except OSError as exc:
            problem = f"cannot create checkpoint directory {directory}: {_reason(exc)}"
    problem = grid.bcast_decision(problem)
    if problem:
        raise CheckpointError(problem)
    global_items, sample_items = _owned_items(state, shard, owns, samples=_kind(config) == "full", extra=extra)
    sizes = grid.gather_to_root(_part_bytes(global_items, sample_items))
    problem = grid.bcast_decision(_check_space(directory, sizes) if grid.is_root else None)
    if problem:  # before anyone writes: a full disk never reaches HDF5 in the common case
        if grid.is_root:
            shutil.rmtree(directory, ignore_errors=True)
        raise CheckpointError(problem + "; the previous checkpoint is kept")
    try:
        start = shard.start
        record = _write_part(os.path.join(directory, f"part-{grid.rank:05d}.h5"), grid.rank,
                             (start, start + shard.X.shape[1]), global_items, sample_items)
    except OSError as exc:
        record = f"rank {grid.rank} cannot write its checkpoint part in {directory}: {_reason(exc)}"
    records = grid.gather_to_root(record)
    problem = None
    if grid.is_root:
        failed = [r for r in records if isinstance(r, str)]
        if failed:
            problem = failed[0]
        else:
            problem = _commit(run_dir, directory, records, iteration, batches_done, _field_shapes(state, extra),
                              shard, config, grid, keep)
        if problem:
            _discard(directory)  # the manifest may be in place when only ``latest`` failed
    problem = grid.bcast_decision(problem)
    if problem:
        raise CheckpointError(problem + "; the previous checkpoint is kept")
    return directory


def _commit(run_dir, directory, records, iteration, batches_done, fields, shard, config, grid, keep):
    """Root: write the manifest (the commit), move ``latest``, prune; a message on failure."""
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "iteration": iteration,
                "batches_done": batches_done, "solver": config.solver, "config": config.as_dict(),
                "data": fingerprint(shard), "ranks": grid.size, "admm_mpi_version": __version__,
                "state": _kind(config), "fields": fields, "parts": records}
    try:
        _write_json_atomically(os.path.join(directory, "manifest.json"), manifest)
        pointer = os.path.join(run_dir, "checkpoints", "latest")
        with open(pointer + ".tmp", "w") as f:
            f.write(os.path.basename(directory) + "\n")
        os.replace(pointer + ".tmp", pointer)
    except OSError as exc:
        _remove(os.path.join(run_dir, "checkpoints", "latest.tmp"))
        return f"cannot write the checkpoint manifest in {directory}: {_reason(exc)}"
    _prune(run_dir, directory, keep)
    return None


def _discard(path):
    """Remove a checkpoint directory, its manifest first: a job killed while removing it leaves
    a torn directory (skipped and later pruned), never a manifest whose parts are gone."""
    _remove(os.path.join(path, "manifest.json"))
    shutil.rmtree(path, ignore_errors=True)


def _prune(run_dir, newest, keep):
    """Keep the ``keep`` newest complete checkpoints; drop older ones and torn leftovers."""
    complete = 0
    for path in list_checkpoints(run_dir):
        if path == newest or os.path.exists(os.path.join(path, "manifest.json")):
            complete += 1
            if complete <= keep:
                continue
        _discard(path)


# ---- find and verify --------------------------------------------------------------------------

def read_manifest(directory):
    """The manifest of a checkpoint directory (with its ``path``), or a message why not."""
    path = os.path.join(directory, "manifest.json")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        return f"checkpoint {directory} is incomplete (no manifest: the job stopped while writing it)"
    except (OSError, ValueError) as exc:
        return f"checkpoint {directory} has an unreadable manifest ({_reason(exc)})"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return f"checkpoint {directory} has no admm-mpi manifest"
    if manifest.get("format_version") != FORMAT_VERSION:
        return (f"checkpoint {directory} has format {manifest.get('format_version')}, "
                f"this admm-mpi reads {FORMAT_VERSION}")
    manifest["path"] = directory
    return manifest


def _verify_parts(manifest, grid):
    """Collective: every part's size and CRC, the parts spread over the ranks. Message or None."""
    problem = None
    for i, part in enumerate(manifest["parts"]):
        if i % grid.size != grid.rank:
            continue
        path = os.path.join(manifest["path"], part["file"])
        try:
            if os.path.getsize(path) != part["bytes"] or _crc32(path) != part["crc32"]:
                problem = f"{path} fails its checksum"
        except OSError as exc:
            problem = f"cannot read {path} ({_reason(exc)})"
        if problem:
            break
    problems = [p for p in grid.gather_to_root(problem) or [] if p]
    return grid.bcast_decision(problems[0] if problems else None)


def find_valid(candidates, grid):
    """Collective: the manifest of the first candidate directory that is complete and intact.

    Torn or corrupted candidates are skipped with a warning on the root, so a run continues
    from the newest checkpoint it can trust. Returns None when none is.
    """
    for directory in candidates:
        manifest = read_manifest(directory) if grid.is_root else None
        manifest = grid.bcast_decision(manifest)
        problem = manifest if isinstance(manifest, str) else _verify_parts(manifest, grid)
        if problem is None:
            return manifest
        if grid.is_root:
            warnings.warn(f"{problem}; trying the previous checkpoint", RuntimeWarning, stacklevel=2)
    return None


def _legacy_message(path):
    return (f"{path} is a single-file checkpoint of an earlier admm-mpi (format 1); this version "
            f"reads sharded checkpoints (format {FORMAT_VERSION}) only: finish that run with the "
            "version that wrote it, or start afresh in another --out")


def resolve_resume(resume, run_dir, grid):
    """Collective: the manifest to resume from, or None (``auto`` on a run without checkpoints).

    ``resume`` is ``auto`` (this run's own), a run directory, or a checkpoint directory (or its
    manifest). Raises InputError on every rank when nothing usable is found.
    """
    problem, candidates = None, []
    if grid.is_root:
        target = run_dir if resume == "auto" else resume
        if os.path.basename(target) == "manifest.json":
            target = os.path.dirname(target)
        if resume != "auto" and not os.path.exists(target):
            problem = f"checkpoint {resume} does not exist"
        elif _position(os.path.basename(os.path.normpath(target))) and os.path.isdir(target):
            candidates = [target]
        elif os.path.isfile(target):
            problem = _legacy_message(target) if target.endswith(".h5") else f"{target} is not a checkpoint"
        else:
            candidates = list_checkpoints(target)
            if not candidates and legacy_checkpoints(target):
                problem = _legacy_message(legacy_checkpoints(target)[-1])
            elif not candidates and resume != "auto":
                problem = f"no checkpoint in {resume}"
    grid.agree(problem)
    candidates = grid.bcast_decision(candidates)
    if not candidates:
        return None
    manifest = find_valid(candidates, grid)
    never_committed = grid.bcast_decision(
        grid.is_root and not any(os.path.exists(os.path.join(c, "manifest.json")) for c in candidates))
    if manifest is None and resume == "auto" and never_committed:
        # killed while writing its first checkpoint: nothing was saved, so start afresh (as a
        # requeued job must; the torn directories are pruned by the first save)
        if grid.is_root:
            warnings.warn(f"no checkpoint of {run_dir} was complete; starting afresh", RuntimeWarning, stacklevel=2)
        return None
    grid.agree(None if manifest is not None else
               f"no intact checkpoint in {resume if resume != 'auto' else run_dir} "
               f"(tried {len(candidates)}; see the warnings above)")
    return manifest


# ---- load -----------------------------------------------------------------------------------

class _Parts:
    """The part files of one checkpoint, opened on demand."""

    def __init__(self, manifest):
        self.manifest, self.files = manifest, {}

    def open(self, part):
        name = part["file"]
        if name not in self.files:
            self.files[name] = h5py.File(os.path.join(self.manifest["path"], name), "r")
        return self.files[name]

    def close(self):
        for f in self.files.values():
            f.close()

    def global_value(self, key):
        for part in self.manifest["parts"]:
            if key in part["global"]:
                g = self.open(part)["global"]
                return g[key][...] if key in g else json.loads(g.attrs[key])
        raise KeyError(f"no part of {self.manifest['path']} holds {key}")

    def is_data(self, key):
        return any(key in part["data"] for part in self.manifest["parts"])

    def columns(self, key, start, stop):
        """Global columns ``[start, stop)`` of a per-sample entry, read from the overlapping parts."""
        pieces, covered = [], start
        holders = sorted((p for p in self.manifest["parts"] if key in p["samples"]), key=lambda p: p["columns"][0])
        for part in holders:
            first, last = part["columns"]
            lo, hi = max(start, first), min(stop, last)
            if lo >= hi:
                continue
            if lo != covered:
                break
            pieces.append(self.open(part)["samples"][key][..., lo - first:hi - first])
            covered = hi
        if covered != stop and start != stop:
            raise KeyError(f"the parts of {self.manifest['path']} do not cover columns {start}..{stop} of {key}")
        if not pieces:  # no columns here: an empty block shaped like the stored ones
            if not holders:
                raise KeyError(f"no part of {self.manifest['path']} holds {key}")
            stored = self.open(holders[0])["samples"][key]
            return np.zeros((*stored.shape[:-1], 0), dtype=stored.dtype)
        return np.ascontiguousarray(np.concatenate(pieces, axis=-1))


def load(manifest, state, shard, grid, needs=None, samples=True, extra=None):
    """Fill ``state`` (freshly initialised) from the checkpoint; returns ``(iteration, batches_done)``.

    Every rank reads the global entries it needs and its own columns of the per-sample entries,
    so the checkpoint continues on any number of ranks and any layout. ``needs(field, index)``
    picks the entries this rank keeps (a layer group: its layers and their boundaries); the
    others stay as they are. ``samples=False`` (or a checkpoint without per-sample state) keeps
    the freshly initialised per-sample entries. ``extra``: the dataclass given to :func:`save`,
    filled too (a checkpoint written without it leaves it as it is).
    """
    needs = needs or (lambda name, index: True)
    start, stop = shard.start, shard.start + shard.X.shape[1]
    xp = namespace(shard.X)
    fields = manifest["fields"]

    def on_device(v):
        return from_host(xp, v, like=shard.X) if isinstance(v, np.ndarray) else v

    parts = _Parts(manifest)
    try:
        global_entries, sample_entries = _checkpointed(state, extra)
        for name, owner in global_entries:
            if name not in fields:
                continue
            setattr(owner, name, _read_field(name, fields[name], getattr(owner, name), needs,
                                             lambda key: on_device(parts.global_value(key))))
        for name, owner in sample_entries if samples and manifest.get("state", "full") == "full" else ():
            def read(key):
                return shard.X if parts.is_data(key) else on_device(parts.columns(key, start, stop))
            setattr(owner, name, _read_field(name, fields[name], getattr(owner, name), needs, read))
    except (OSError, KeyError) as exc:
        problem = f"cannot read checkpoint {manifest['path']}: {_reason(exc)}"
    else:
        problem = None
    finally:
        parts.close()
    grid.agree(problem)
    return int(manifest["iteration"]), int(manifest.get("batches_done", 0))


def _read_field(name, shape, current, needs, read):
    """A field's value: every needed entry read through ``read(key)``, the others kept."""
    if not shape["list"]:
        return read(name) if needs(name, None) else current
    return [read(f"{name}/{i}") if needs(name, i) else (current[i] if current is not None else None)
            for i in range(shape["length"])]
