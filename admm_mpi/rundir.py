"""The run directory: created, checked and locked by the root for the job's whole life.

An exclusive lock (``RUN/.lock``, a POSIX record lock, which also works on NFS and Lustre) keeps
two jobs from writing into the same directory: the second is refused before it writes anything.
The kernel drops the lock when the process ends, however it ends, so a killed job never leaves
a stale lock behind.
"""

import fcntl
import os
import socket

from admm_mpi import checkpoint


class RunDirectory:
    """The root's handle on ``path``: ``open`` checks and locks it, ``close`` releases it."""

    def __init__(self, path):
        self.path = path
        self._lock = None

    def open(self, grid, resuming):
        """Collective: create, lock and check the directory; InputError on every rank if it fails.

        A fresh run refuses a directory that holds checkpoints of an earlier run (whatever its
        ``latest`` pointer says): its pruning would delete them.
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
        problem = self._acquire()
        if problem:
            return problem
        if not resuming and checkpoint.has_checkpoints(self.path):
            self.close()
            return (f"{self.path} holds checkpoints of an earlier run: pass --resume auto to continue it, "
                    "or choose another --out")
        return None

    def _acquire(self):
        lock_path = os.path.join(self.path, ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            return f"output directory {self.path} is not writable ({exc.strerror or exc})"
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
