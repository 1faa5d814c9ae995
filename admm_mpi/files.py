"""Files: one clear line when reading or writing fails, room checked before an HDF5 write, and
files created and read without following symbolic links.

Runs live in shared scratch space, where a name the tool writes may have been replaced by a link
to someone else's file. Every file the tool creates is therefore a new inode: whatever had the
name (a link, a hard link, a stale file) is unlinked first, which never touches the data it
pointed to, and the file is created with ``O_EXCL | O_NOFOLLOW``. Files read back from a run
directory are opened with ``O_NOFOLLOW``. HDF5 files go through these descriptors too (h5py
reads and writes Python file objects), so the HDF5 library never resolves a path itself.
"""

import errno
import os
import re
import stat

import h5py

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)

RESERVE_MARGIN = 1 << 20  # bytes beyond the estimate: HDF5's own metadata


def hdf5_reason(exc):
    """The cause in HDF5's error text, without its timestamp, descriptor and buffer address."""
    text = str(exc)
    found = re.search(r"error message = '([^']*)'", text)
    if found:
        return found.group(1)
    found = re.search(r"\(([^(),=]+)\)", text)
    return found.group(1) if found else re.sub(r"\[Errno \d+\] ", "", text.splitlines()[0] if text else "")


def hdf5_open_problem(path, exc):
    """One line naming why ``path`` could not be opened as HDF5, the same text on every rank.

    HDF5's own message holds a timestamp, a file descriptor and a buffer address, which differ
    between ranks and runs: name the cause from the file itself instead.
    """
    if not os.path.exists(path):
        return f"{path} does not exist"
    if os.path.isdir(path):
        return f"cannot read {path}: it is a directory, not an HDF5 file"
    if not os.access(path, os.R_OK):
        return f"cannot read {path}: permission denied"
    if os.path.getsize(path) == 0:
        return f"cannot read {path}: the file is empty (0 bytes), not an HDF5 file"
    try:
        signature = h5py.is_hdf5(path)
    except Exception:  # is_hdf5 itself failed to read: the same verdict
        signature = False
    if not signature:
        return f"cannot read {path}: not an HDF5 file (no HDF5 signature)"
    return f"cannot read {path}: damaged HDF5 file ({hdf5_reason(exc)})"


def write_problem(path, exc):
    """One line for a failed write (full disk, read-only file system, missing directory)."""
    if getattr(exc, "errno", None) == errno.ELOOP:
        return f"cannot write {path}: it is a symbolic link (admm-mpi never writes through one)"
    reason = os.strerror(exc.errno) if getattr(exc, "errno", None) else hdf5_reason(exc)
    return f"cannot write {path}: {reason}"


def unlink_entry(path):
    """Remove the name ``path`` if it is a file or a link (never what a link points to); a
    directory there raises IsADirectoryError, a missing name is fine."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        os.unlink(path)
    except FileNotFoundError:
        pass


def create_file(path, mode="w"):
    """A new regular file at ``path``, open for writing (``mode`` "w", "wb" or "w+b").

    Whatever had that name before is unlinked first (see the module docstring): a planted link or
    hard link is dropped, and what it pointed to is neither truncated nor written.
    """
    unlink_entry(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o644)
    return os.fdopen(fd, mode)


def open_nofollow(path, mode="r"):
    """``path`` opened for reading ("r" or "rb"); OSError (ELOOP) if it is a symbolic link."""
    return os.fdopen(os.open(path, os.O_RDONLY | NOFOLLOW), mode)


class hdf5_file:
    """An h5py File on a descriptor this module opened (never a path HDF5 resolves itself).

    ``mode`` "r" reads a file that is not a symbolic link, "w" creates one as :func:`create_file`
    does. Use as a context manager; both the h5py file and the descriptor are closed on exit.
    """

    def __init__(self, path, mode="r"):
        self._raw = open_nofollow(path, "rb") if mode == "r" else create_file(path, "w+b")
        try:
            self.file = h5py.File(self._raw, mode)
        except BaseException:
            self._raw.close()
            raise

    def __enter__(self):
        return self.file

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.file.close()
        finally:
            self._raw.close()


def indirect_storage(f, path):
    """One line naming the first dataset of the open HDF5 file ``f`` whose values live outside
    it (a virtual dataset, or external raw storage), or None.

    Such a dataset reads another file's bytes (or zeros, for a missing virtual source) under
    this file's name, so data, model and checkpoint files with them are refused.
    """
    found = []

    def visit(name, item):
        if isinstance(item, h5py.Dataset) and not found:
            if item.is_virtual:
                sources = sorted({source.file_name for source in item.virtual_sources()})
                found.append(f"{path}: dataset {name!r} is virtual (its values come from {', '.join(sources)}); "
                             "admm-mpi reads only self-contained HDF5 files (copy the values in, e.g. with "
                             "admm-mpi data convert --allow-virtual)")
            elif item.external:
                found.append(f"{path}: dataset {name!r} keeps its values in external files "
                             f"({', '.join(str(e[0]) for e in item.external)}); admm-mpi reads only "
                             "self-contained HDF5 files")

    f.visititems(visit)
    return found[0] if found else None


def reserve_space(path, nbytes):
    """Raise OSError (ENOSPC, EFBIG, EROFS, ...) unless ``nbytes`` (plus a margin) fit beside ``path``.

    HDF5 handles a write that fails while the file is closed badly (h5py can even crash on the
    failed flush), so a writer first allocates its file's estimated size as a plain file, removed
    at once: a full disk or a file-size limit then fails here, with a plain OSError.
    """
    if not hasattr(os, "posix_fallocate"):  # not on every platform: the write itself then fails
        return
    reserve = f"{path}.reserve"
    unlink_entry(reserve)
    fd = os.open(reserve, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o600)
    try:
        os.posix_fallocate(fd, 0, int(nbytes * 1.05) + RESERVE_MARGIN)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):  # those: cannot tell here
            raise
    finally:
        os.close(fd)
        os.remove(reserve)
