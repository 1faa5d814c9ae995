"""The run directory: created, checked and locked by the root for the job's whole life.

An exclusive lock (``RUN/.lock``, a POSIX record lock, which also works on NFS and Lustre) keeps
two jobs from writing into the same directory: the second is refused before it writes anything.
The kernel drops the lock when the process ends, however it ends, so a killed job never leaves
a stale lock behind.

Runs live in shared scratch space, so the directory is checked before anything is written:

- a name the trainer writes (``OUTPUTS`` and their temporary files, ``checkpoints/`` and what is
  in it) that is a symbolic link refuses the run: nothing is written through a link;
- a fresh run refuses a directory that holds anything named like a checkpoint: its pruning
  must never meet another run's checkpoints (a resumed run checks they are its own:
  :func:`admm_mpi.checkpoint.resolve_resume`).
"""

import fcntl
import os
import socket
import stat

from admm_mpi import checkpoint
from admm_mpi.files import NOFOLLOW

# what train writes in RUN/ (each also as NAME.tmp, and model.h5 as model.h5.tmp.reserve)
OUTPUTS = (".lock", "metrics.jsonl", "model.h5", "summary.json", "finished.json", "metrics.png")
FINISHED = "finished.json"


def _tool_paths(path):
    """Every name under the run directory ``path`` that the trainer writes or reads back."""
    names = [n for name in OUTPUTS for n in (name, f"{name}.tmp")] + ["model.h5.tmp.reserve", "checkpoints",
                                                                        "checkpoints/latest",
                                                                        "checkpoints/latest.tmp"]
    found = [os.path.join(path, n) for n in names]
    for entry in checkpoint.checkpoint_entries(path):
        found.append(entry)
        if checkpoint.owner(entry) is not None:  # a directory: what the trainer reads in it
            try:
                found += [os.path.join(entry, n) for n in os.listdir(entry)]
            except OSError:
                pass
    return found


def symlink_problem(path):
    """One line naming a symbolic link where the trainer writes under ``path``, or None."""
    for name in _tool_paths(path):
        if os.path.islink(name):
            return (f"{name} is a symbolic link; admm-mpi never writes or reads through links in a run directory: "
                    "remove it, or choose another --out")
    checkpoints = os.path.join(path, "checkpoints")
    if os.path.lexists(checkpoints) and not stat.S_ISDIR(os.lstat(checkpoints).st_mode):
        return f"{checkpoints} is not a directory; remove it, or choose another --out"
    return None


class RunDirectory:
    """The root's handle on ``path``: ``open`` checks and locks it, ``close`` releases it."""

    def __init__(self, path):
        self.path = path
        self._lock = None

    def open(self, grid, resuming):
        """Collective: create, lock and check the directory; InputError on every rank if it fails.

        A fresh run refuses a directory that holds checkpoints of an earlier run (whatever its
        ``latest`` pointer says): its pruning would delete them. It also removes the previous
        run's ``finished.json``: this directory now holds a run that has not finished.
        """
        problem = None
        if grid.is_root:
            problem = self._open_on_root(resuming)
        grid.agree(problem)
        return self

    def _open_on_root(self, resuming):
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            return f"output directory {self.path} is not writable ({exc.strerror or exc})"
        problem = symlink_problem(self.path) or self._acquire()
        if problem:
            return problem
        if not resuming and checkpoint.has_checkpoints(self.path):
            self.close()
            foreign = [os.path.basename(p) for p in checkpoint.checkpoint_entries(self.path)
                       if checkpoint.owner(p) is None and p not in checkpoint.legacy_checkpoints(self.path)]
            if foreign:
                return (f"{self.path}/checkpoints holds {', '.join(foreign[:3])}, which admm-mpi did not write; "
                        "move it away or choose another --out")
            return (f"{self.path} holds checkpoints of an earlier run: pass --resume auto to continue it, "
                    "or choose another --out")
        if not resuming:
            self.mark_unfinished()
        return None

    def mark_unfinished(self):
        """Root: remove the ``finished.json`` of the run that was here (a link is removed, not followed)."""
        finished = os.path.join(self.path, FINISHED)
        if os.path.lexists(finished):
            os.unlink(finished)

    def _acquire(self):
        lock_path = os.path.join(self.path, ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o644)
        except OSError as exc:
            return f"output directory {self.path} is not writable ({exc.strerror or exc})"
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)  # a hard link to another file: truncating it would destroy that file
            return (f"{lock_path} is not a plain file of its own (it has {info.st_nlink} names); remove it, "
                    "or choose another --out")
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            return (f"{self.path} is in use by another job ({holder}); wait for it to end "
                    "or choose another --out")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._lock = fd
        return None

    def close(self):
        """Release the lock (also released by the kernel when the process ends)."""
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor drops its POSIX lock
            self._lock = None
