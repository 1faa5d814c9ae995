"""Stop requests: a signal on any rank asks the whole job to checkpoint and stop."""

import numpy as np


class StopRequest:
    """Set by a signal handler (SIGTERM, SIGINT) on whichever ranks the signal reached.

    ``agree`` combines every rank's request (a collective), so a signal that reaches one rank
    only still stops the whole job cleanly; the training loop calls it once per iteration, the
    mini-batch solvers also between batches.
    """

    def __init__(self):
        self.signal = 0   # the first signal this rank received, 0: none
        self.agreed = 0   # the combined request after the last ``agree``

    def request(self, signum, frame=None):
        self.signal = self.signal or int(signum)

    def agree(self, grid):
        """Collective: the largest signal number any rank received (0: no rank was asked)."""
        self.agreed = int(grid.allmax(np.array([self.signal], dtype=np.int64))[0])
        return self.agreed
