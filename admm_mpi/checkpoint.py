"""Sharded, atomic, re-shardable checkpoints of a training run.

One directory per checkpoint, ``RUN/checkpoints/ckpt-<iteration>[-<batch>]/``:

- ``part-<rank>.h5``, written by every rank: the entries of the state that rank owns.
  ``/global/<field>[/<index>]`` holds global entries (weights, step sizes, schedules; in the
  data layout the root owns all of them, on a layer grid each layer group its own layers);
  ``/samples/<field>[/<index>]`` holds this rank's columns ``[start, stop)`` of the per-sample
  entries (codes, multipliers). Nothing per-sample passes through the root.
- ``manifest.json``, written last by the root: iteration, configuration, run identity, data
  fingerprint (a hash of the whole content), and for every part its size, CRC-32, column range
  and the entries it holds.
- ``owner.json``, written by the root right after it creates the directory: the run identity.

Ownership: a run touches only checkpoint directories that carry its own run identity. Pruning,
a retried save and cleanup never remove a directory of another run, or one admm-mpi did not
write (no ``owner.json``); an empty directory is the only other thing removed. Files are
created and read without following symbolic links (``files.create_file``, ``files.hdf5_file``),
and a manifest names its parts as ``part-NNNNN.h5`` inside its own directory, nothing else.

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
import stat
import warnings
import zlib

import numpy as np

from admm_mpi import __version__
from admm_mpi.backend import from_host, namespace, to_host
from admm_mpi.config import recorded_settings, settings_difference
from admm_mpi.data import fingerprint_difference
from admm_mpi.errors import TrainingError
from admm_mpi.files import NOFOLLOW, create_file, hdf5_file, indirect_storage, open_nofollow
from admm_mpi.solvers.base import BATCH_STATE

FORMAT = "admm-mpi checkpoint"
FORMAT_VERSION = 3
READABLE_VERSIONS = (2, 3)  # 2: before run identities and content fingerprints (still resumable)
OWNER_FILE = "owner.json"
_NAME = re.compile(r"^ckpt-(\d{6,})(?:-(\d+))?$")
_PART = re.compile(r"^part-\d{5,}\.h5$")
LEGACY = "format 2"  # the owner of a format-2 checkpoint directory (written before run identities)
EMPTY = "empty"     # an empty checkpoint-named directory: owned by nobody, removable by anyone


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

def _legacy_same_data(saved, shard):
    """Format 2 recorded shapes and a hash of the first rows' first 16 features (on the root)."""
    first = to_host(shard.X[:, :16])
    head = [hashlib.sha1(np.ascontiguousarray(first[:, j], dtype=np.float64).tobytes()).hexdigest()[:16]
            for j in range(first.shape[1])]
    shapes = {"n_total": shard.n_total, "n_features": shard.n_features, "n_classes": shard.n_classes,
              "n_test_total": shard.n_test_total}
    common = min(len(saved.get("first_rows", [])), len(head))
    return (all(saved.get(k) == v for k, v in shapes.items()) and common > 0
            and saved["first_rows"][:common] == head[:common])


# settings that may change between the run that wrote a checkpoint and the one that resumes it
# (the data *path* may change; the data fingerprint checks the content)
RESUMABLE_CHANGES = {"iters", "out", "progress", "tol", "resume", "checkpoint_every", "data", "device", "layout",
                     "layer_groups", "checkpoint_state", "eval_every", "eval_test", "eval_train", "keep", "early_stopping",
                     "patience"}


def config_difference(saved, current):
    """The settings that differ between two ``TrainConfig.as_dict()`` and may not change on a
    resume, in words, or None."""
    differ = settings_difference(saved, current, may_change=RESUMABLE_CHANGES)
    if not differ:
        return None
    saved = recorded_settings(saved, current)
    return (f"{', '.join(differ)} differ: "
            + ", ".join(f"{k}={saved.get(k)!r} there, {current.get(k)!r} here" for k in differ[:3]))


def check_compatible(manifest, config, shard, data):
    """Message if the checkpoint described by ``manifest`` cannot continue this run, else None.

    ``data`` is this run's :func:`admm_mpi.data.data_fingerprint`: the whole content of the
    training and validation rows must be the one the checkpoint was trained on.
    """
    path = manifest["path"]
    differ = config_difference(manifest["config"], config.as_dict())
    if differ:
        return f"checkpoint {path} was written with another configuration ({differ})"
    if manifest["format_version"] == 2:
        if not _legacy_same_data(manifest["data"], shard):
            return f"checkpoint {path} belongs to another data set (its shapes or first rows differ)"
        return None
    differ = fingerprint_difference(manifest["data"], data)
    if differ:
        return f"checkpoint {path} was trained on other data: {differ} differ from this run's"
    return None


# ---- files ----------------------------------------------------------------------------------

def _crc32(path, chunk=1 << 24):
    crc = 0
    with open_nofollow(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                return f"{crc:08x}"
            crc = zlib.crc32(block, crc)


def _fsync_path(path):
    """fsync a file, or a directory (so a rename inside it is durable)."""
    fd = os.open(path, os.O_RDONLY | NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomically(path, obj):
    tmp = path + ".tmp"
    try:
        with create_file(tmp) as f:
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
    """Remove a file name (a link is removed, never followed); nothing if it is not there."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
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


def _is_real_directory(path):
    """A directory that is not a symbolic link."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def checkpoint_entries(run_dir):
    """Every name under ``run_dir/checkpoints`` that looks like a checkpoint (``ckpt-*``: a
    directory, a link, a file of the single-file format 1, anything), newest position first."""
    directory = os.path.join(run_dir, "checkpoints")
    if not _is_real_directory(directory):
        return []
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    found = [(_position(n) or (-1, -1), n) for n in names if n.startswith("ckpt-")]
    return [os.path.join(directory, n) for _, n in sorted(found, reverse=True)]


def list_checkpoints(run_dir):
    """Every checkpoint directory of ``run_dir`` (complete or not; real directories, never
    links), newest first."""
    return [p for p in checkpoint_entries(run_dir)
            if _position(os.path.basename(p)) is not None and _is_real_directory(p)]


def legacy_checkpoints(run_dir):
    """Single-file checkpoints of the format before 2 (``ckpt-*.h5``)."""
    return sorted(glob.glob(os.path.join(run_dir, "checkpoints", "ckpt-*.h5")))


def has_checkpoints(run_dir):
    """Whether ``run_dir`` holds anything named like a checkpoint (whatever ``latest`` says)."""
    return bool(checkpoint_entries(run_dir))


def owner(path):
    """Who wrote the checkpoint directory ``path``: its run identity (``owner.json``), ``LEGACY``
    for a format-2 directory with its manifest, ``EMPTY`` for an empty directory, or None: not a
    directory admm-mpi wrote (a link, a file, someone else's directory)."""
    if not _is_real_directory(path):
        return None
    try:
        with open_nofollow(os.path.join(path, OWNER_FILE)) as f:
            record = json.load(f)
        if isinstance(record, dict) and record.get("format") == FORMAT and isinstance(record.get("run_id"), str):
            return record["run_id"]
        return None
    except (OSError, ValueError):
        pass
    manifest = read_manifest(path)
    if isinstance(manifest, dict) and manifest["format_version"] == 2:
        return LEGACY
    try:
        return EMPTY if not os.listdir(path) else None
    except OSError:
        return None


def foreign_checkpoints(run_dir, run_id):
    """The names under ``run_dir/checkpoints`` that look like checkpoints and are not run
    ``run_id``'s, nor empty directories, nor format-2 checkpoints (written before run identities:
    never pruned, so never at risk)."""
    return [p for p in checkpoint_entries(run_dir) if owner(p) not in (run_id, EMPTY, LEGACY)]


def ownership_problem(run_dir, run_id, what):
    """One line refusing ``run_dir`` when it holds checkpoints of another run, else None."""
    foreign = foreign_checkpoints(run_dir, run_id)
    if not foreign:
        return None
    names = ", ".join(os.path.basename(p) for p in foreign[:3]) + (" ..." if len(foreign) > 3 else "")
    return (f"{run_dir} holds checkpoints that are not {what}'s ({names}); admm-mpi never prunes or "
            "overwrites them: choose another --out, or move them away")


# ---- save -----------------------------------------------------------------------------------

def _write_part(path, rank, columns, global_items, sample_items):
    """This rank's part file; returns its record for the manifest (size, CRC, entries)."""
    data_keys = []
    try:
        with hdf5_file(path, "w") as f:
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


def save(run_dir, iteration, state, shard, config, grid, keep=2, owns=None, batches_done=0, extra=None,
         run_id="", data=None):
    """Write a checkpoint of ``state`` after ``iteration`` (collective: every rank writes its part).

    ``owns(field, index, per_sample)`` says whether this rank's value of an entry is the one to
    save (on a layer grid each layer's values live on its layer group only; ``index`` is None for
    a field that is not a list). By default every rank owns its columns of every per-sample entry and the
    root owns the global state, which every rank holds identically. ``batches_done`` > 0 marks a
    checkpoint taken inside an epoch of a mini-batch solver. ``config.checkpoint_state`` "global"
    leaves the per-sample entries out (a resumed run rebuilds them; see ``load``). ``extra``: a
    dataclass of more global entries saved beside the state (the run's model selection).
    ``run_id`` is the run's identity (``owner.json`` and the manifest); ``data`` its data
    fingerprint (:func:`admm_mpi.data.data_fingerprint`). Raises :class:`CheckpointError` on every
    rank if any rank cannot write (the partial checkpoint is removed, the previous kept).
    """
    if owns is None:
        def owns(name, index, per_sample):
            return per_sample or grid.is_root
    directory = os.path.join(run_dir, "checkpoints", checkpoint_name(iteration, batches_done))
    problem = _create_directory(directory, run_id) if grid.is_root else None
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
                              config, grid, keep, run_id, data)
        if problem:
            _discard(directory)  # the manifest may be in place when only ``latest`` failed
    problem = grid.bcast_decision(problem)
    if problem:
        raise CheckpointError(problem + "; the previous checkpoint is kept")
    return directory


def _create_directory(directory, run_id):
    """Root: a new checkpoint directory marked as run ``run_id``'s; a message if it cannot be.

    A directory already at this position is replaced only if it is this run's own (a torn or
    rejected attempt at the same position) or empty; another run's is left as it is.
    """
    if os.path.lexists(directory):
        found = owner(directory)
        if found not in (run_id, EMPTY):
            return (f"cannot write checkpoint {directory}: a checkpoint of that name exists and is not this "
                    "run's (left as it is)")
        _discard(directory)
    try:
        parent = os.path.dirname(directory)
        if not os.path.lexists(parent):
            os.mkdir(parent)
        if not _is_real_directory(parent):
            return f"cannot write checkpoint {directory}: {parent} is not a directory (a symbolic link?)"
        os.mkdir(directory)
        with create_file(os.path.join(directory, OWNER_FILE)) as f:
            json.dump({"format": FORMAT, "run_id": run_id}, f)
            f.write("\n")
    except OSError as exc:
        return f"cannot create checkpoint directory {directory}: {_reason(exc)}"
    return None


def _commit(run_dir, directory, records, iteration, batches_done, fields, config, grid, keep, run_id, data):
    """Root: write the manifest (the commit), move ``latest``, prune; a message on failure."""
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "iteration": iteration,
                "batches_done": batches_done, "solver": config.solver, "config": config.as_dict(),
                "run_id": run_id, "data": data, "ranks": grid.size, "admm_mpi_version": __version__,
                "state": _kind(config), "fields": fields, "parts": records}
    pointer = os.path.join(run_dir, "checkpoints", "latest")
    try:
        _write_json_atomically(os.path.join(directory, "manifest.json"), manifest)
        with create_file(pointer + ".tmp") as f:
            f.write(os.path.basename(directory) + "\n")
        os.replace(pointer + ".tmp", pointer)
    except OSError as exc:
        _remove(pointer + ".tmp")
        return f"cannot write the checkpoint manifest in {directory}: {_reason(exc)}"
    _prune(run_dir, directory, keep, run_id)
    return None


def _discard(path):
    """Remove a checkpoint directory (the caller checked it is this run's), its manifest first: a
    job killed while removing it leaves a torn directory (skipped and later pruned), never a
    manifest whose parts are gone. A link is never followed (``shutil.rmtree`` refuses one and
    removes the links inside a directory, not their targets)."""
    if not _is_real_directory(path):
        return
    _remove(os.path.join(path, "manifest.json"))
    shutil.rmtree(path, ignore_errors=True)


def _prune(run_dir, newest, keep, run_id):
    """Keep run ``run_id``'s ``keep`` newest complete checkpoints; drop its older ones and its
    torn leftovers, and empty checkpoint directories. Nothing else is touched."""
    complete = 0
    for path in list_checkpoints(run_dir):
        found = owner(path)
        if found == EMPTY:
            try:
                os.rmdir(path)  # removes an empty directory only: nothing is lost
            except OSError:
                pass
            continue
        if found != run_id or found == LEGACY:
            continue
        if path == newest or os.path.lexists(os.path.join(path, "manifest.json")):
            complete += 1
            if complete <= keep:
                continue
        _discard(path)


# ---- find and verify --------------------------------------------------------------------------

def read_manifest(directory):
    """The manifest of a checkpoint directory (with its ``path``), or a message why not.

    A manifest that is valid JSON but lacks a key, or holds one of the wrong type, is as damaged
    as a torn one (the caller falls back to the previous checkpoint): every key the loader uses
    is checked here, and every part must be a ``part-NNNNN.h5`` of this directory.
    """
    path = os.path.join(directory, "manifest.json")
    try:
        with open_nofollow(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        return f"checkpoint {directory} is incomplete (no manifest: the job stopped while writing it)"
    except (OSError, ValueError) as exc:
        return f"checkpoint {directory} has an unreadable manifest ({_reason(exc)})"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return f"checkpoint {directory} has no admm-mpi manifest"
    if manifest.get("format_version") not in READABLE_VERSIONS:
        return (f"checkpoint {directory} has format {manifest.get('format_version')}, "
                f"this admm-mpi reads {', '.join(map(str, READABLE_VERSIONS))}")
    problem = _manifest_problem(manifest, os.path.basename(os.path.normpath(directory)))
    if problem:
        return f"checkpoint {directory} has a damaged manifest ({problem})"
    manifest.setdefault("batches_done", 0)
    manifest.setdefault("state", "full")
    manifest.setdefault("run_id", LEGACY)
    manifest["path"] = directory
    return manifest


def _is_int(value, low=0):
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_names(value):
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _manifest_problem(manifest, name):
    """What is wrong with a manifest's keys and types, or None (``name``: its directory's name)."""
    checks = [
        ("iteration", _is_int(manifest.get("iteration"))),
        ("batches_done", _is_int(manifest.get("batches_done", 0))),
        ("config", isinstance(manifest.get("config"), dict)),
        ("data", isinstance(manifest.get("data"), dict)),
        ("state", manifest.get("state", "full") in ("full", "global")),
        ("fields", isinstance(manifest.get("fields"), dict) and all(
            isinstance(v, dict) and v.get("kind") in ("global", "samples") and isinstance(v.get("list"), bool)
            and (not v["list"] or _is_int(v.get("length"))) for v in manifest["fields"].values())),
        ("parts", isinstance(manifest.get("parts"), list) and manifest["parts"] and all(
            isinstance(p, dict) and isinstance(p.get("file"), str) and _PART.match(p["file"])
            and _is_int(p.get("bytes")) and isinstance(p.get("crc32"), str)
            and isinstance(p.get("columns"), list) and len(p["columns"]) == 2
            and all(_is_int(c) for c in p["columns"]) and p["columns"][0] <= p["columns"][1]
            and _is_names(p.get("global")) and _is_names(p.get("samples")) and _is_names(p.get("data"))
            for p in manifest["parts"])),
    ]
    if manifest.get("format_version") != 2:
        checks.append(("run_id", isinstance(manifest.get("run_id"), str) and manifest["run_id"] != ""))
    bad = [key for key, ok in checks if not ok]
    if bad:
        return f"missing or malformed {', '.join(bad)}"
    if len({p["file"] for p in manifest["parts"]}) != len(manifest["parts"]):
        return "a part is listed twice"
    position = _position(name)
    if position is not None and position != (manifest["iteration"], manifest["batches_done"]):
        return f"it records iteration {manifest['iteration']}, batch {manifest['batches_done']}, not its directory's"
    return None


def _verify_parts(manifest, grid):
    """Collective: every part's size and CRC, the parts spread over the ranks. Message or None."""
    problem = None
    for i, part in enumerate(manifest["parts"]):
        if i % grid.size != grid.rank:
            continue
        path = os.path.join(manifest["path"], part["file"])
        try:
            if os.lstat(path).st_size != part["bytes"] or _crc32(path) != part["crc32"]:
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


def source_run_directory(resume, run_dir):
    """The run directory that a ``--resume`` value continues: ``run_dir`` itself for ``auto``,
    the directory holding ``checkpoints/`` for a checkpoint (or its manifest), else the value."""
    target = run_dir if resume == "auto" else resume
    if os.path.basename(target) == "manifest.json":
        target = os.path.dirname(target)
    if _position(os.path.basename(os.path.normpath(target))) is not None:
        return os.path.dirname(os.path.dirname(os.path.normpath(target))) or "."
    return target


def resolve_resume(resume, run_dir, grid):
    """Collective: ``(manifest, run id)`` to resume from; ``(None, run id or None)`` when ``auto``
    finds nothing to continue (a fresh start, under the identity of the run whose first checkpoint
    was torn, if any).

    ``resume`` is ``auto`` (this run's own), a run directory, or a checkpoint directory (or its
    manifest). ``run_dir`` (the output directory) must hold no checkpoint of another run: its
    pruning would delete them. Raises InputError on every rank when nothing usable is found.
    """
    problem, candidates = None, []
    if grid.is_root:
        target = run_dir if resume == "auto" else resume
        if os.path.basename(target) == "manifest.json":
            target = os.path.dirname(target)
        if resume != "auto" and not os.path.lexists(target):
            problem = f"checkpoint {resume} does not exist"
        elif _position(os.path.basename(os.path.normpath(target))) is not None:
            candidates = [target] if _is_real_directory(target) else []
            if not candidates:
                problem = (_legacy_message(target) if target.endswith(".h5") and os.path.isfile(target)
                           else f"{target} is not a checkpoint directory")
        elif os.path.isfile(target) or os.path.islink(target):
            problem = f"{target} is not a checkpoint"
        else:
            candidates = list_checkpoints(target)
            if not candidates and legacy_checkpoints(target):
                problem = _legacy_message(legacy_checkpoints(target)[-1])
            elif not candidates and resume != "auto":
                problem = f"no checkpoint in {resume}"
    grid.agree(problem)
    candidates = grid.bcast_decision(candidates)
    if not candidates:
        grid.agree(ownership_problem(run_dir, None, "this run") if grid.is_root else None)
        return None, None
    manifest = find_valid(candidates, grid)
    if manifest is None and resume == "auto":
        # killed while writing its first checkpoint: nothing was saved, so start afresh (as a
        # requeued job must), as the run whose torn directories these are (its first save prunes
        # them); directories admm-mpi did not write are another matter
        run_ids = {owner(c) for c in candidates} - {EMPTY} if grid.is_root else None
        fresh = grid.bcast_decision(grid.is_root and len(run_ids) <= 1 and None not in run_ids and LEGACY not in run_ids
                                    and not any(os.path.lexists(os.path.join(c, "manifest.json")) for c in candidates))
        if fresh:
            run_id = grid.bcast_decision(next(iter(run_ids), None) if grid.is_root else None)
            grid.agree(ownership_problem(run_dir, run_id, "this run") if grid.is_root else None)
            if grid.is_root:
                warnings.warn(f"no checkpoint of {run_dir} was complete; starting afresh", RuntimeWarning,
                              stacklevel=2)
            return None, run_id
    grid.agree(None if manifest is not None else
               f"no intact checkpoint in {resume if resume != 'auto' else run_dir} "
               f"(tried {len(candidates)}; see the warnings above)")
    grid.agree(ownership_problem(run_dir, manifest["run_id"], "the resumed run") if grid.is_root else None)
    return manifest, manifest["run_id"]


# ---- load -----------------------------------------------------------------------------------

class _Parts:
    """The part files of one checkpoint, opened on demand."""

    def __init__(self, manifest):
        self.manifest, self.files = manifest, {}

    def open(self, part):
        name = part["file"]  # part-NNNNN.h5 (read_manifest): a file of this directory, opened without links
        if name not in self.files:
            path = os.path.join(self.manifest["path"], name)
            self.files[name] = handle = hdf5_file(path, "r")
            indirect = indirect_storage(handle.file, path)
            if indirect:
                raise KeyError(indirect)
        return self.files[name].file

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
    except (OSError, KeyError, ValueError, TypeError) as exc:
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
