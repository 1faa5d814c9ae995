"""Files: one clear line when reading or writing fails, and room checked before an HDF5 write."""

import errno
import os
import re

import h5py

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
    reason = os.strerror(exc.errno) if getattr(exc, "errno", None) else hdf5_reason(exc)
    return f"cannot write {path}: {reason}"


def reserve_space(path, nbytes):
    """Raise OSError (ENOSPC, EFBIG, EROFS, ...) unless ``nbytes`` (plus a margin) fit beside ``path``.

    HDF5 handles a write that fails while the file is closed badly (h5py can even crash on the
    failed flush), so a writer first allocates its file's estimated size as a plain file, removed
    at once: a full disk or a file-size limit then fails here, with a plain OSError.
    """
    if not hasattr(os, "posix_fallocate"):  # not on every platform: the write itself then fails
        return
    reserve = f"{path}.reserve"
    fd = os.open(reserve, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.posix_fallocate(fd, 0, int(nbytes * 1.05) + RESERVE_MARGIN)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):  # those: cannot tell here
            raise
    finally:
        os.close(fd)
        os.remove(reserve)
