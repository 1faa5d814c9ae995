"""Wall time per phase of a run (``admm-mpi train --profile``).

The grid's collectives, the weight solves, the forward passes and the training loop's parts each
open a named phase on the grid's timer (``grid.timer.phase(name)``). A run without ``--profile``
has :data:`NO_TIMER`, whose phases cost one call. With it, a :class:`PhaseTimer` adds up the
*exclusive* wall time of every stack of phases: entering a phase pauses the enclosing one, so
``step > weight solve > Reduce`` is the time in the reduction only, not in the solve around it.
``summary.json`` then holds every rank's ``{"seconds": {...}, "calls": {...}}`` keyed by those
stacks (``bench/phase_profile.py`` reads them).
"""

import contextlib
import functools
import time

SEP = " > "  # joins the nested phases of a key


class PhaseTimer:
    """Exclusive wall time and calls per stack of phases."""

    def __init__(self):
        self.seconds, self.calls, self._stack = {}, {}, []

    @contextlib.contextmanager
    def phase(self, name):
        now = time.perf_counter()
        if self._stack:
            self._add(now)
        self._stack.append([name, now])
        try:
            yield
        finally:
            now = time.perf_counter()
            self._add(now)
            key = SEP.join(n for n, _ in self._stack)
            self.calls[key] = self.calls.get(key, 0) + 1
            self._stack.pop()
            if self._stack:
                self._stack[-1][1] = now

    def _add(self, now):
        key = SEP.join(n for n, _ in self._stack)
        self.seconds[key] = self.seconds.get(key, 0.0) + now - self._stack[-1][1]
        self._stack[-1][1] = now

    def report(self):
        return {"seconds": {k: round(v, 6) for k, v in self.seconds.items()}, "calls": dict(self.calls)}


class _NoTimer:
    """The timer of a run without ``--profile``: every phase is the same empty context."""

    _NOTHING = contextlib.nullcontext()

    def phase(self, name):
        return self._NOTHING

    def report(self):
        return None


NO_TIMER = _NoTimer()


def timed(name):
    """Decorator: the call is phase ``name`` of the timer of its first argument, a grid."""
    def wrap(function):
        @functools.wraps(function)
        def run(grid, *args, **kwargs):
            with grid.timer.phase(name):
                return function(grid, *args, **kwargs)
        return run
    return wrap
