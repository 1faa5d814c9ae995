"""Atomic, layout-free checkpoints of a training run.

One HDF5 file per checkpoint, ``DIR/checkpoints/ckpt-<iteration>.h5``:

- ``/meta`` attributes: format version, iteration, solver, the resolved config (JSON), the data
  fingerprint, the number of ranks that wrote it;
- ``/global/<field>``: the solver's global state (weights, step sizes, schedules), as the root
  holds it;
- ``/samples/<field>``: every per-sample variable stored by *global* column, so a run on any
  number of ranks reads back its own columns (elastic resume).

Writing is atomic: the root writes ``ckpt-….h5.tmp``, fsyncs, renames it, then replaces the
``latest`` pointer the same way; the previous checkpoint is deleted only after that, so a crash
at any moment leaves a complete checkpoint behind.
"""

import dataclasses
import glob
import json
import os

import h5py
import numpy as np

from admm_mpi import __version__
from admm_mpi.backend import from_host, namespace, to_host
from admm_mpi.errors import InputError

FORMAT_VERSION = 1
DATA_MARKER = "__data__"  # a per-sample entry that is the input X itself (restored from the data)


def fingerprint(shard):
    """What must match for a checkpoint to continue on this data (computed on the root).

    Shapes, classes and a hash of the first rows' values: the file may move (another path on
    another cluster) but must hold the same samples.
    """
    import hashlib

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


def _fsync_replace(tmp, path):
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_global(group, name, value):
    if hasattr(value, "shape") and not isinstance(value, np.ndarray):  # a device array
        value = to_host(value)
    if isinstance(value, list):
        value = [to_host(v) if hasattr(v, "shape") else v for v in value]
    if isinstance(value, np.ndarray):
        group[name] = value
    elif isinstance(value, list) and any(isinstance(v, np.ndarray) for v in value):
        sub = group.create_group(name)
        sub.attrs["length"] = len(value)
        for i, v in enumerate(value):
            if isinstance(v, np.ndarray):
                sub[str(i)] = v
            else:
                sub.attrs[str(i)] = json.dumps(v)
    else:
        group.attrs[name] = json.dumps(value)


def _read_global(group, name):
    if name in group.attrs:
        return json.loads(group.attrs[name])
    item = group[name]
    if isinstance(item, h5py.Dataset):
        return item[...]
    return [item[str(i)][...] if str(i) in item else json.loads(item.attrs[str(i)])
            for i in range(int(item.attrs["length"]))]


def _entries(value):
    """``(index, item)`` pairs of a state field: list items by position, a single value as index None."""
    return list(enumerate(value)) if isinstance(value, list) else [(None, value)]


def save(run_dir, iteration, state, shard, config, grid, keep=2, owns=None):
    """Write a checkpoint of ``state`` after ``iteration`` (collective; the root writes).

    ``owns(field, index)`` says whether this rank's value of an entry is the one to save (on a
    layer grid each layer's values live on its layer group only; ``index`` is None for a field
    that is not a list). By default every rank owns its columns of every per-sample entry and the
    root owns the global state, which every rank holds identically.
    """
    if owns is None:
        def owns(name, index):
            return name in state.sample_fields or grid.is_root
    directory = os.path.join(run_dir, "checkpoints")
    samples, globals_ = {}, {}
    for name in state.sample_fields:
        value = getattr(state, name)
        local = {i: DATA_MARKER if item is shard.X else to_host(item)
                 for i, item in _entries(value) if item is not None and owns(name, i)}
        gathered = grid.gather_to_root((shard.start, local))  # every rank's columns of its entries
        if grid.is_root:
            items = []
            for i, _ in _entries(value):
                parts = [d[i] for _, d in sorted(gathered, key=lambda sd: sd[0]) if i in d]
                items.append(DATA_MARKER if any(isinstance(p, str) for p in parts)
                             else np.concatenate(parts, axis=-1))
            samples[name] = (isinstance(value, list), items)
    for field in dataclasses.fields(state):
        if field.name in state.sample_fields or field.name in getattr(state, "transient_fields", ()):
            continue
        value = getattr(state, field.name)
        local = {i: to_host(v) if hasattr(v, "shape") else v for i, v in _entries(value) if owns(field.name, i)}
        gathered = grid.gather_to_root(local)
        if grid.is_root:
            merged = {i: v for d in gathered for i, v in d.items()}
            globals_[field.name] = [merged.get(i) for i, _ in _entries(value)] if isinstance(value, list) \
                else merged[None]
    if not grid.is_root:
        return None
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"ckpt-{iteration:06d}.h5")
    tmp = path + ".tmp"
    with h5py.File(tmp, "w") as f:
        meta = f.create_group("meta")
        meta.attrs.update(format_version=FORMAT_VERSION, iteration=iteration, solver=config.solver,
                          config=json.dumps(config.as_dict()), data=json.dumps(fingerprint(shard)),
                          ranks=grid.size, admm_mpi_version=__version__)
        g = f.create_group("global")
        for name, value in globals_.items():
            _write_global(g, name, value)
        s = f.create_group("samples")
        for name, (is_list, items) in samples.items():
            sub = s.create_group(name)
            sub.attrs.update(is_list=is_list, length=len(items))
            for i, item in enumerate(items):
                if isinstance(item, str):
                    sub.attrs[f"data_{i}"] = True
                else:
                    sub[str(i)] = item
    _fsync_replace(tmp, path)
    pointer = os.path.join(directory, "latest")
    with open(pointer + ".tmp", "w") as f:
        f.write(os.path.basename(path) + "\n")
    _fsync_replace(pointer + ".tmp", pointer)
    for old in sorted(glob.glob(os.path.join(directory, "ckpt-*.h5")))[:-keep]:
        os.remove(old)
    return path


def latest(run_dir):
    """Path of the newest complete checkpoint in ``run_dir``, or None."""
    pointer = os.path.join(run_dir, "checkpoints", "latest")
    try:
        with open(pointer) as f:
            path = os.path.join(run_dir, "checkpoints", f.read().strip())
    except OSError:  # no pointer, or run_dir is not a directory at all
        return None
    return path if os.path.exists(path) else None


# settings that may change between the run that wrote a checkpoint and the one that resumes it
# (the data *path* may change; the data fingerprint checks the content)
RESUMABLE_CHANGES = {"iters", "out", "progress", "tol", "resume", "checkpoint_every", "data", "device", "layout",
                     "layer_groups"}


def check_compatible(path, config, shard):
    """Message if the checkpoint at ``path`` cannot continue this run, else None."""
    try:
        with h5py.File(path, "r") as f:
            meta = f["meta"].attrs
            if int(meta["format_version"]) != FORMAT_VERSION:
                return f"checkpoint {path} has format {meta['format_version']}, this admm-mpi reads {FORMAT_VERSION}"
            saved = json.loads(meta["config"])
            data = json.loads(meta["data"])
    except (OSError, KeyError) as exc:
        return f"cannot read checkpoint {path} ({exc})"
    current = config.as_dict()
    differ = sorted(k for k in set(saved) | set(current)
                    if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k))
    if differ:
        return (f"checkpoint {path} was written with another configuration ({', '.join(differ)} differ: "
                + ", ".join(f"{k}={saved.get(k)!r} there, {current.get(k)!r} here" for k in differ[:3]) + ")")
    here = fingerprint(shard)
    if not _same_data(data, here):
        brief = {k: v for k, v in data.items() if k != "first_rows"}
        return (f"checkpoint {path} belongs to another data set ({brief} there, "
                f"{ {k: v for k, v in here.items() if k != 'first_rows'} } here, or other sample values)")
    return None


def load(path, state, shard, grid, needs=None):
    """Fill ``state`` (freshly initialised) from the checkpoint; returns its iteration.

    Every rank reads the global state and its own columns of the per-sample state, so the
    checkpoint continues on any number of ranks. ``needs(field, index)`` picks the entries this
    rank keeps (a layer group: its layers and their boundaries); the others stay as they are.
    """
    needs = needs or (lambda name, index: True)
    start, stop = shard.start, shard.start + shard.X.shape[1]
    xp = namespace(shard.X)

    def on_device(v):
        return from_host(xp, v, like=shard.X) if isinstance(v, np.ndarray) else v

    with h5py.File(path, "r") as f:
        iteration = int(f["meta"].attrs["iteration"])
        g = f["global"]
        for field in dataclasses.fields(state):
            if field.name in state.sample_fields or field.name in getattr(state, "transient_fields", ()):
                continue
            value = _read_global(g, field.name)
            if isinstance(value, list):
                current = getattr(state, field.name)
                value = [on_device(v) if needs(field.name, i) else current[i] for i, v in enumerate(value)]
            else:
                value = on_device(value)
            setattr(state, field.name, value)
        for name in state.sample_fields:
            sub = f["samples"][name]
            is_list = bool(sub.attrs["is_list"])
            current = getattr(state, name)
            items = []
            for i in range(int(sub.attrs["length"])):
                index = i if is_list else None
                if not needs(name, index):
                    items.append(current[i] if is_list else current)
                elif sub.attrs.get(f"data_{i}", False):
                    items.append(shard.X)
                else:
                    items.append(on_device(np.ascontiguousarray(sub[str(i)][..., start:stop])))
            setattr(state, name, items if is_list else items[0])
    return iteration


def resolve_resume(resume, run_dir):
    """The checkpoint file to resume from: ``auto`` (the run's own, if any), a directory, a file."""
    if resume in (None, ""):
        return None
    if resume == "auto":
        return latest(run_dir)
    if os.path.isdir(resume):
        path = latest(resume)
        if path is None:
            raise InputError(f"no checkpoint in {resume}")
        return path
    if not os.path.exists(resume):
        raise InputError(f"checkpoint {resume} does not exist")
    return resume
