"""The process grid: the one object that talks to MPI.

Maths modules never import mpi4py; they call the grid by meaning (``sum_to_root``,
``bcast_from_root``, ``allsum``, ``agree``). A size-1 grid makes every call a no-op, so the serial
run and the distributed run are the same code. If mpi4py is missing or MPI cannot start, the grid
falls back to a serial grid with no communicator at all.

Every buffer this rank hands to MPI is counted in ``bytes_sent``, so ``bytes_per_iteration`` in the
run summary is measured, not estimated.
"""

import os
import sys
import time
import warnings

import numpy as np

from admm_mpi.backend import from_host, is_numpy, namespace, to_host
from admm_mpi.errors import InputError
from admm_mpi.implementation import DEFAULT as DEFAULT_IMPLEMENTATION
from admm_mpi.partition import balanced_blocks, block_range
from admm_mpi.timing import NO_TIMER, timed


def _world_comm():
    """COMM_WORLD if MPI can start here, else None (serial fallback)."""
    if os.environ.get("ADMM_MPI_NO_MPI"):
        return None
    try:
        from mpi4py import MPI
    except Exception:  # ImportError, or RuntimeError when libmpi cannot be loaded
        return None
    return MPI.COMM_WORLD


def mpi_library():
    """One line naming mpi4py and the MPI library it runs on (for ``admm-mpi info``)."""
    try:
        import mpi4py
        from mpi4py import MPI

        return f"mpi4py {mpi4py.__version__}; MPI library: {MPI.Get_library_version().splitlines()[0]}"
    except Exception as exc:  # MPI missing or broken: say so, do not fail
        return f"mpi4py unavailable ({exc}); running serially"


def _launcher_size():
    """Number of processes the launcher says it started (0 when not under a launcher)."""
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_NTASKS"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def _inherited(name, default):
    """A grid attribute set per grid, else its parent's (a sub-grid runs the same job), else ``default``."""
    own = f"_{name}"

    def get(self):
        value = getattr(self, own)
        if value is not None:
            return value
        return getattr(self._parent, name) if self._parent is not None else default

    def put(self, value):
        setattr(self, own, value)

    return property(get, put)


class Grid:
    """A data-parallel process grid over an MPI communicator.

    Parameters
    ----------
    comm : mpi4py communicator or None
        The communicator to work on; it is duplicated so the trainer's traffic never mixes with
        the caller's. ``None`` means COMM_WORLD when MPI is available, else a serial grid.
    serial : bool
        Force a serial size-1 grid without MPI.
    nodes : None, int or "shared"
        Node-aware sums (``sum_to_root``, ``bcast_from_root``, hence ``allsum``): reduce within
        each node first, then across the node leaders (and broadcast back the same way).
        ``"shared"`` takes the nodes from ``Split_type(COMM_TYPE_SHARED)``; a number ``k`` fakes
        at most ``k`` nodes of consecutive ranks (rank // ceil(size / k)), for testing on one
        machine. ``None`` (default) reads ``ADMM_MPI_PSEUDO_NODES=k`` or ``ADMM_MPI_NODE_AWARE=1``
        from the environment; without them the sums are flat (one MPI collective each).

    Attributes
    ----------
    implementation : :class:`~admm_mpi.implementation.Implementation`
        How the weight solves on this grid are carried out (a run sets its own; a sub-grid has
        its parent's).
    timer : :class:`~admm_mpi.timing.PhaseTimer` or :data:`~admm_mpi.timing.NO_TIMER`
        The phases of the run (``--profile``); the collectives below time themselves on it.
    """

    def __init__(self, comm=None, *, serial=False, parent=None, nodes=None):
        base = None if serial else (comm if comm is not None else _world_comm())
        self._comm = base.Dup() if base is not None and base.Get_size() > 1 else None
        self.rank = base.Get_rank() if self._comm is not None else 0
        self.size = base.Get_size() if self._comm is not None else 1
        self.bytes_sent = 0
        self._parent = parent  # a sub-grid also counts its traffic in the grid it was split from
        self._nodes = nodes
        self._levels = None  # (node comm, leaders comm or None) of a node-aware grid, () if flat; made at first use
        self._implementation = self._timer = None  # None: the parent's, else the defaults

    implementation = _inherited("implementation", DEFAULT_IMPLEMENTATION)
    timer = _inherited("timer", NO_TIMER)

    def _count(self, nbytes):
        self.bytes_sent += nbytes
        if self._parent is not None:
            self._parent._count(nbytes)

    # ---- device arrays: MPI sees host buffers, or device buffers when the MPI is CUDA-aware --
    @staticmethod
    def _buffer(x):
        """A contiguous buffer MPI can use for ``x`` (numpy as is; a device array staged or passed)."""
        if is_numpy(x):
            return np.ascontiguousarray(x)
        if _cuda_aware() and hasattr(x, "__cuda_array_interface__"):
            import cupy

            cupy.cuda.get_current_stream().synchronize()  # the kernels that wrote x must be done
            return cupy.ascontiguousarray(x)
        return np.ascontiguousarray(to_host(x))

    @staticmethod
    def _like(buffer, x):
        """``buffer`` as an array of ``x``'s kind (itself for numpy and device buffers)."""
        if is_numpy(x) or not is_numpy(buffer):
            return buffer
        return from_host(namespace(x), buffer, like=x)

    @classmethod
    def serial(cls):
        """A size-1 grid that never touches MPI."""
        return cls(serial=True)

    @property
    def is_root(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self._comm is not None

    # ---- layout -------------------------------------------------------------------------
    # A data-parallel grid is the 1 x P case of the layer grid: one layer group of P data shards.
    groups = 1

    @property
    def shards(self):
        return self.size

    @property
    def data(self):
        """The grid over which the samples are split: this one."""
        return self

    def block_range(self, n):
        """This rank's rows ``[start, stop)`` of ``n`` rows."""
        return block_range(n, self.size, self.rank)

    # ---- buffer collectives (counted) -----------------------------------------------------
    @timed("Reduce")
    def sum_to_root(self, local):
        """Sum a contiguous array over ranks; the result is valid on the root only."""
        if self._comm is None:
            return local
        from mpi4py import MPI

        send = self._buffer(local)
        if self._node_levels():
            out = self._sum_to_root_by_node(send)
            return self._like(out, local) if self.is_root else None
        out = send.copy() if self.is_root else None  # same kind and shape as the send buffer
        self._count(send.nbytes)
        self._comm.Reduce(send, out, op=MPI.SUM, root=0)
        return self._like(out, local) if self.is_root else None

    @timed("Bcast")
    def bcast_from_root(self, buf):
        """Broadcast the root's contiguous array into ``buf`` on every rank (in place)."""
        if self._comm is not None:
            data = self._buffer(buf)
            if self._node_levels():
                self._bcast_by_node(data)
            else:
                if self.is_root:
                    self._count(data.nbytes)
                self._comm.Bcast(data, root=0)
            if data is not buf:  # staged (device array, or a non-contiguous view): hand it back
                if is_numpy(buf) or not is_numpy(data):
                    buf[...] = data
                else:
                    return self._like(data, buf)
        return buf

    def allsum(self, local):
        """Sum an array over ranks, result bit-identical on every rank.

        Reduce to the root, then broadcast the root's sum: MPI does not promise that an
        Allreduce of floats yields the same bits everywhere, and step sizes or stopping
        decisions derived from these sums must not differ between ranks.
        """
        if self._comm is None:
            return _copy(local)
        out = self.sum_to_root(local)
        if out is None:
            out = _copy(local)
        return self.bcast_from_root(out)

    @timed("Reduce")
    def allsum_in_place(self, buf):
        """:meth:`allsum` into ``buf`` itself, without copies: for the large weight-solve statistics.

        Reduce-scatter (each rank sums one block of the elements), then allgather of the blocks:
        every block is summed once, on one rank, and its bytes are copied to the others, so the
        result is bit-identical on every rank, as with ``allsum``'s Reduce + Bcast, for half the
        traffic, and the additions are shared. Returns the summed array (``buf`` unless it had
        to be staged, e.g. a device array).
        """
        if self._comm is None:
            return buf
        from mpi4py import MPI

        data = self._buffer(buf)
        flat = data.reshape(-1)
        ranges = [block_range(flat.size, self.size, r) for r in range(self.size)]
        counts = [stop - start for start, stop in ranges]
        start, stop = ranges[self.rank]
        self._count(data.nbytes - counts[self.rank] * data.itemsize)
        self._comm.Reduce_scatter(MPI.IN_PLACE, flat, recvcounts=counts, op=MPI.SUM)
        flat[start:stop] = flat[:stop - start]  # MPI leaves this rank's sums at the front (no overlap: start >= stop - start)
        self._count(counts[self.rank] * data.itemsize)
        self._comm.Allgatherv(MPI.IN_PLACE, [flat, (counts, [s for s, _ in ranges])])
        return self._handed_back(data, buf)

    @timed("Allgather")
    def allgather_rows(self, buf, ranges=None):
        """Every rank's block of rows of ``buf`` to every rank, in place.

        The blocks are ``block_range(len(buf))``, or ``ranges[r] = (start, stop)`` of rank ``r``
        (contiguous and in rank order). Each rank has filled its own rows; afterwards every rank
        holds the same bytes in every row (the rows are copied, not recomputed). Returns the
        array (``buf`` unless staged).
        """
        if self._comm is None:
            return buf
        data = self._buffer(buf)
        n = data.shape[0]
        row = data.size // n if n else 0
        if ranges is None:
            ranges = [block_range(n, self.size, r) for r in range(self.size)]
        counts = [(stop - start) * row for start, stop in ranges]
        displacements = [start * row for start, _ in ranges]
        self._count(counts[self.rank] * data.itemsize)
        from mpi4py import MPI

        self._comm.Allgatherv(MPI.IN_PLACE, [data, (counts, displacements)])
        return self._handed_back(data, buf)

    def _handed_back(self, data, buf):
        """``data`` (a staged MPI buffer of ``buf``) as ``buf``'s kind, written into ``buf`` when it can be."""
        if data is buf:
            return buf
        if is_numpy(buf) or not is_numpy(data):
            buf[...] = data
            return buf
        return self._like(data, buf)

    # ---- node-aware sums: within each node, then across the node leaders ------------------
    def _node_levels(self):
        """(node comm, leaders comm or None) when the sums are node-aware, () when flat."""
        if self._levels is None:
            nodes = _node_setting(self._nodes)
            self._levels = self._split_nodes(nodes) if nodes not in (None, 1) else ()
        return self._levels

    def _split_nodes(self, nodes):
        """Split into nodes (world rank 0 leads node 0 and is rank 0 of the leaders); () if pointless."""
        from mpi4py import MPI

        if nodes == "shared":
            node = self._comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        else:
            node = self._comm.Split(color=self.rank // -(-self.size // nodes), key=self.rank)
        leader = node.Get_rank() == 0
        leaders = self._comm.Split(color=0 if leader else MPI.UNDEFINED, key=self.rank)
        if node.Get_size() == self.size or node.Get_size() == 1 and leaders.Get_size() == self.size:
            node.Free()  # one node, or one rank per node: the flat collective already is this
            if leader:
                leaders.Free()
            return ()
        return node, (leaders if leader else None)

    def _sum_to_root_by_node(self, send):
        """Sum to each node's leader, then over the leaders to rank 0 (the root's sum, else None).

        Rounding: the sum is associated as Σ_nodes (Σ_ranks of the node) instead of MPI's order
        over all ranks; every rank still ends with the root's bits after ``bcast_from_root``.
        """
        from mpi4py import MPI

        node, leaders = self._levels
        out = send.copy() if leaders is not None else None
        self._count(send.nbytes)
        node.Reduce(MPI.IN_PLACE if leaders is not None else send, out, op=MPI.SUM, root=0)
        if leaders is not None and not self.is_root:
            self._count(out.nbytes)
            leaders.Reduce(out, None, op=MPI.SUM, root=0)
        elif self.is_root:
            leaders.Reduce(MPI.IN_PLACE, out, op=MPI.SUM, root=0)
        return out if self.is_root else None

    def _bcast_by_node(self, data):
        """The root's ``data`` to the node leaders, then within every node (in place)."""
        node, leaders = self._levels
        if leaders is not None:
            if self.is_root:
                self._count(data.nbytes)
            leaders.Bcast(data, root=0)
            self._count(data.nbytes)
        node.Bcast(data, root=0)

    @timed("other collectives")
    def allmax(self, local):
        """Element-wise maximum over ranks of a small array."""
        if self._comm is None:
            return _copy(local)
        from mpi4py import MPI

        send = self._buffer(local)
        out = send.copy()
        self._count(send.nbytes)
        self._comm.Allreduce(send, out, op=MPI.MAX)
        return self._like(out, local)

    # ---- control decisions (small pickled objects) ---------------------------------------
    @timed("other collectives")
    def bcast_decision(self, value):
        """Root's value (a flag, a small dict) handed to every rank, so all ranks act alike."""
        if self._comm is None:
            return value
        return self._comm.bcast(value, root=0)

    def gather_to_root(self, value):
        """List of every rank's small object on the root, None elsewhere."""
        if self._comm is None:
            return [value]
        return self._comm.gather(value, root=0)

    def gather_to_all(self, value):
        """List of every rank's small object, on every rank."""
        if self._comm is None:
            return [value]
        return self._comm.allgather(value)

    def agree(self, message):
        """Collective verdict on local checks: raise InputError on every rank if any rank failed.

        ``message`` is this rank's problem (None when fine). The lowest failing rank's message
        is raised everywhere, so one clear message reaches the user and no rank is left behind.
        """
        if self._comm is None:
            messages = [message]
        else:
            messages = self._comm.allgather(message)
        for rank, text in enumerate(messages):
            if text:
                prefix = f"rank {rank}: " if self.size > 1 and len(set(filter(None, messages))) > 1 else ""
                raise InputError(prefix + text)

    def barrier(self):
        if self._comm is not None:
            self._comm.Barrier()

    def idle_barrier(self, poll=0.01):
        """A barrier that waits asleep (non-blocking barrier tested every ``poll`` seconds): for
        ranks with nothing to do while others still work, so they leave the cores to them."""
        if self._comm is None:
            return
        request = self._comm.Ibarrier()
        while not request.Test():
            time.sleep(poll)

    # ---- sub-communicators: independent groups of ranks (e.g. one tuning trial per group) ---
    def split_groups(self, size):
        """``(group grid, group index, number of groups)``: consecutive blocks of ``size`` ranks.

        Rank ``r`` joins group ``r // size`` as its rank ``r % size``. The group's grid is made
        as ``Grid(comm)`` would make one on a world of ``size`` ranks (a serial grid for one
        rank), so a job run on it computes what it computes alone on ``size`` ranks. Collective.
        """
        if not (isinstance(size, int) and size >= 1 and self.size % size == 0):
            raise InputError(f"groups of {size} ranks do not divide the {self.size} ranks evenly")
        index, n_groups = self.rank // size, self.size // size
        if size == 1:
            return Grid(serial=True), index, n_groups
        split = self._comm.Split(color=index, key=self.rank)
        group = Grid(split, parent=self)
        split.Free()
        return group, index, n_groups

    # ---- point-to-point requests to one serving rank (small pickled objects) ----------------
    # A serving rank answers requests from any rank while its own main work goes on (e.g. in a
    # thread); waits poll asleep, so a waiting rank does not spin on a shared core.
    REQUEST_TAG, REPLY_TAG = 7101, 7102

    def threads_may_communicate(self):
        """Whether MPI was started with MPI_THREAD_MULTIPLE (mpi4py asks for it by default), so a
        thread may send and receive while another one works."""
        if self._comm is None:
            return True
        from mpi4py import MPI

        return MPI.Query_thread() == MPI.THREAD_MULTIPLE

    def request(self, server, message, poll=0.001):
        """Send ``message`` to rank ``server`` and return its reply (sent by :meth:`reply`)."""
        if self._comm is None:
            raise RuntimeError("requests need a distributed grid")
        sent = self._comm.isend(message, dest=server, tag=self.REQUEST_TAG)
        while True:
            incoming = self._comm.improbe(source=server, tag=self.REPLY_TAG)
            if incoming is not None:
                break
            time.sleep(poll)
        answer = incoming.recv()
        sent.wait()
        return answer

    def next_request(self):
        """``(source rank, message)`` of a request waiting for this rank, or None (does not wait)."""
        from mpi4py import MPI

        status = MPI.Status()
        incoming = self._comm.improbe(tag=self.REQUEST_TAG, status=status)
        return None if incoming is None else (status.Get_source(), incoming.recv())

    def reply(self, rank, message):
        """Answer the request of ``rank``."""
        self._comm.send(message, dest=rank, tag=self.REPLY_TAG)

    def local_size(self):
        """Number of ranks of this grid on this node (for sharing the node's cores)."""
        return self._node()[1]

    def local_rank(self):
        """This rank's index among the ranks on its node (for choosing a GPU)."""
        return self._node()[0]

    def _node(self):
        if self._comm is None:
            return 0, 1
        from mpi4py import MPI

        node = self._comm.Split_type(MPI.COMM_TYPE_SHARED)
        try:
            return node.Get_rank(), node.Get_size()
        finally:
            node.Free()

    def warn_if_launcher_disagrees(self):
        """Catch the classic 'wrong mpiexec': every process thinks it is rank 0 of 1."""
        started = _launcher_size()
        if self.size == 1 and started > 1:
            warnings.warn(
                f"the launcher started {started} processes but MPI reports a world of size 1: "
                "the mpiexec on PATH probably belongs to another MPI than mpi4py's "
                "(check with `admm-mpi info`)",
                RuntimeWarning,
                stacklevel=2,
            )

    def abort(self, code=1):
        """End every rank of the job now (used when one rank fails unexpectedly)."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self._comm is not None:
            from mpi4py import MPI

            # Abort tears the job down at once; on a loaded node the launcher may not yet have
            # forwarded this rank's last lines (the reason for the abort) from its pipe.
            time.sleep(0.5)
            MPI.COMM_WORLD.Abort(code)
        os._exit(code)

    def close(self):
        """Free the duplicated communicator (safe to call twice or after MPI finalised)."""
        if self._comm is not None:
            from mpi4py import MPI

            if not MPI.Is_finalized():
                for comm in self._levels or ():
                    if comm is not None:
                        comm.Free()
                self._comm.Free()
            self._comm = None
            self._levels = None


def _node_setting(nodes):
    """The node split asked for: ``nodes`` itself, else ADMM_MPI_PSEUDO_NODES / ADMM_MPI_NODE_AWARE."""
    if nodes is None:
        text = os.environ.get("ADMM_MPI_PSEUDO_NODES", "").strip()
        if text:
            nodes = int(text) if text.isdigit() else text
            if nodes == 0 or not isinstance(nodes, int):
                raise InputError(f"ADMM_MPI_PSEUDO_NODES must be a whole number of nodes >= 1, got {text!r}")
        elif os.environ.get("ADMM_MPI_NODE_AWARE", "") not in ("", "0"):
            nodes = "shared"
    if nodes is not None and nodes != "shared" and not (isinstance(nodes, int) and nodes >= 1):
        raise InputError(f"nodes must be a whole number >= 1 or 'shared', got {nodes!r}")
    return nodes


def _copy(x):
    """A copy of an array of any backend."""
    return np.array(x, copy=True) if is_numpy(x) else namespace(x).asarray(x, copy=True)


def _cuda_aware():
    """Whether device buffers may go to MPI directly (ADMM_MPI_CUDA_AWARE=1, or MPI says so)."""
    return cuda_aware()[0]


def cuda_aware():
    """``(whether device buffers go to MPI directly, why)``: ADMM_MPI_CUDA_AWARE when set (``0`` or
    empty: no), else the MPI library's own answer (:func:`mpi_cuda_support`); unknown means no,
    the buffers are staged through the host."""
    flag = os.environ.get("ADMM_MPI_CUDA_AWARE")
    if flag is not None:
        return flag not in ("", "0"), f"ADMM_MPI_CUDA_AWARE={flag}"
    answer, source = mpi_cuda_support()
    return bool(answer), source


_CUDA_SUPPORT = None  # the library's answer, asked once (the grid asks before every device buffer)


def mpi_cuda_support():
    """``(True, False or None, source)``: whether the running MPI library accepts CUDA device buffers.

    mpi4py (4.1) has no binding for the libraries' ``MPIX_Query_cuda_support`` (MPICH >= 4,
    Open MPI; the answer covers how the library was built and run, e.g. MPICH's
    ``MPIR_CVAR_ENABLE_GPU``, Open MPI's ``--mca opal_cuda_support``), so it is called in the
    loaded libmpi through ctypes; ``MPI.Query_cuda_support`` is used should mpi4py gain it.
    None when MPI is not running here or the library has no such query.
    """
    global _CUDA_SUPPORT
    if _CUDA_SUPPORT is not None:
        return _CUDA_SUPPORT
    MPI = sys.modules.get("mpi4py.MPI")  # only the MPI already in use: asking must not start one
    if MPI is None or not MPI.Is_initialized() or MPI.Is_finalized():
        return None, "MPI is not running"
    query = getattr(MPI, "Query_cuda_support", None)
    if query is not None:
        _CUDA_SUPPORT = bool(query()), "MPI.Query_cuda_support"
        return _CUDA_SUPPORT
    import ctypes

    function = None
    for path in _loaded_libmpi():
        try:
            function = getattr(ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY), "MPIX_Query_cuda_support")
            break
        except (OSError, AttributeError):  # not loadable here, or a library without the query
            continue
    if function is None:
        _CUDA_SUPPORT = None, "the MPI library has no MPIX_Query_cuda_support"
        return _CUDA_SUPPORT
    function.restype, function.argtypes = ctypes.c_int, []
    _CUDA_SUPPORT = bool(function()), "MPIX_Query_cuda_support"
    return _CUDA_SUPPORT


def _loaded_libmpi():
    """Paths of the libmpi* shared libraries this process has loaded (Linux; none elsewhere)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/libmpi" in line}
    except OSError:
        return []
    return sorted(p for p in paths if os.path.basename(p).startswith("libmpi") and ".so" in p)


class ProcessGrid:
    """The 2-D process grid: ``groups`` layer groups × ``shards`` data shards (pdADMM's layouts).

    World rank ``r`` is layer group ``r // shards``, data shard ``r % shards`` (row-major, as
    ``Create_cart((groups, shards))`` would number them; the data communicator of each group is
    one ``Split`` by group, the cartesian sub-communicator's equivalent). Layer group ``g``
    owns a contiguous block of layers; inside it the ranks split the samples and reduce the
    statistics of the weight solves over ``data`` (a :class:`Grid`). Neighbouring layer groups
    exchange boundary variables point-to-point, between matching data shards only.

    ``groups = 1`` is the data-parallel layout, ``shards = 1`` the layer-parallel one; on a
    size-1 world both are the serial run, with every exchange a local hand-over.
    """

    def __init__(self, world, groups):
        if groups < 1 or world.size % groups:
            raise InputError(f"{groups} layer groups do not divide {world.size} ranks evenly")
        self.world = world
        self.groups = groups
        self.shards = world.size // groups
        self.group, self.shard = divmod(world.rank, self.shards)
        if self.shards == world.size:
            self.data = world
        elif self.shards == 1:
            self.data = Grid(serial=True)
        else:
            split = world._comm.Split(color=self.group, key=self.shard)
            self.data = Grid(split, parent=world)
            split.Free()
        self.prev_rank = world.rank - self.shards if self.group > 0 else None
        self.next_rank = world.rank + self.shards if self.group < groups - 1 else None

    # the world's face: decisions, validation and metrics involve every rank
    @property
    def rank(self):
        return self.world.rank

    @property
    def size(self):
        return self.world.size

    @property
    def is_root(self):
        return self.world.is_root

    @property
    def bytes_sent(self):
        return self.world.bytes_sent

    # the world's collectives, each named: the loop's decisions, metrics and outputs involve every
    # rank (the solvers' reductions over samples go to ``data``; nothing else is forwarded)
    def agree(self, message):
        return self.world.agree(message)

    def bcast_decision(self, value):
        return self.world.bcast_decision(value)

    def allsum(self, local):
        return self.world.allsum(local)

    def allmax(self, local):
        return self.world.allmax(local)

    def gather_to_root(self, value):
        return self.world.gather_to_root(value)

    def gather_to_all(self, value):
        return self.world.gather_to_all(value)

    def barrier(self):
        return self.world.barrier()

    def abort(self, code=1):
        return self.world.abort(code)

    def local_size(self):
        return self.world.local_size()

    def local_rank(self):
        return self.world.local_rank()

    @property
    def implementation(self):
        return self.world.implementation

    @property
    def timer(self):
        return self.world.timer

    def layers(self, n_layers, costs=None):
        """This group's layers ``[first, stop)`` of ``n_layers``: contiguous blocks, balanced by
        ``costs`` (one per layer, the same on every rank) when given, else by count."""
        if costs is None:
            return block_range(n_layers, self.groups, self.group)
        return balanced_blocks(costs, self.groups)[self.group]

    # ---- neighbour exchange (planned, non-blocking, counted) --------------------------------
    def boundary_exchange(self, to_next, tag, bits=0):
        """The planned exchange of one boundary variable with the next (``to_next``) or previous
        layer group: see :class:`BoundaryExchange`."""
        return BoundaryExchange(self, to_next, tag, bits)

    def close(self):
        """Free the split communicator of the data shards (the world is the caller's to close)."""
        if self.data is not self.world:
            self.data.close()


class Pending:
    """Messages in flight; ``wait()`` completes them and returns the received value (or None)."""

    def __init__(self, requests, finish=None, timer=NO_TIMER):
        self._requests, self._finish, self._timer = requests, finish, timer

    def wait(self):
        with self._timer.phase("other collectives"):
            for request in self._requests:
                request.Wait()
        self._requests = []
        return self._finish() if self._finish is not None else None


class BoundaryExchange:
    """One boundary variable's messages between neighbouring layer groups, planned once.

    The sender calls :meth:`send` (it returns the :class:`Pending` send and the value the sender
    keeps), the receiver :meth:`receive` (its ``wait()`` returns the array). Unquantised, the
    array travels as it is. With ``bits``, both sides use the same grid of ``2**bits`` levels
    spanning the variable's range over the whole layer group (agreed over its data shards, so
    the serial run's grid), and codes and range travel as one packed message. Receive buffers
    are allocated once per shape and used in turn by two messages, so the value a ``wait()``
    returned stays valid while the next message arrives.
    """

    def __init__(self, grid, to_next, tag, bits):
        self.grid, self.to_next, self.tag, self.bits = grid, to_next, tag, bits
        # the variable flows one way: sent to the next group and received from the previous one, or back
        self.send_to = grid.next_rank if to_next else grid.prev_rank
        self.receive_from = grid.prev_rank if to_next else grid.next_rank
        self._buffers, self._turn = {}, 0

    def _levels(self, x):
        from admm_mpi.ops import quantize as quant

        xp = namespace(x)
        local = [float(xp.max(x)), -float(xp.min(x))] if x.size else [-np.inf, -np.inf]
        hi, neg_lo = self.grid.data.allmax(np.array(local))
        return quant.uniform_levels(-neg_lo, hi, self.bits, x.dtype)

    def project(self, x):
        """``x`` as the receiver will see it (its value on the shared quantisation grid)."""
        from admm_mpi.ops import quantize as quant

        if not self.bits:
            return x
        levels = self._levels(x)
        return quant.decode(quant.encode(x, levels, self.bits), levels, x.dtype)

    def send(self, x):
        """Start sending ``x``; returns ``(Pending, the value this side keeps)``."""
        from admm_mpi.ops import quantize as quant

        if not self.bits:
            data = Grid._buffer(x)
            kept = x
        else:
            levels = self._levels(x)
            codes = quant.encode(x, levels, self.bits)
            kept = quant.decode(codes, levels, x.dtype)
            codes = np.ascontiguousarray(to_host(codes))
            data = np.empty(codes.nbytes + levels.nbytes, np.uint8)
            data[:codes.nbytes] = codes.reshape(-1).view(np.uint8)
            data[codes.nbytes:] = levels.view(np.uint8)
        self.grid.world._count(data.nbytes)
        return Pending([self.grid.world._comm.Isend(data, dest=self.send_to, tag=self.tag)], timer=self.grid.timer), kept

    def receive(self, rows, like):
        """Start receiving a ``rows x like.shape[1]`` array of ``like``'s dtype and kind."""
        from admm_mpi.backend import dtype_name
        from admm_mpi.ops import quantize as quant

        shape, dtype = (rows, like.shape[1]), np.dtype(dtype_name(like.dtype))
        code_type = np.dtype(quant.code_dtype(self.bits)) if self.bits else None
        nbytes = rows * like.shape[1] * (code_type.itemsize if self.bits else dtype.itemsize) + \
            (2 * dtype.itemsize if self.bits else 0)
        pair = self._buffers.setdefault((shape, dtype.str), (np.empty(nbytes, np.uint8), np.empty(nbytes, np.uint8)))
        buf, self._turn = pair[self._turn], 1 - self._turn
        xp = namespace(like)

        def finish():
            if not self.bits:
                return from_host(xp, buf.view(dtype).reshape(shape), like=like)
            n_codes = rows * like.shape[1] * code_type.itemsize
            codes = buf[:n_codes].view(code_type).reshape(shape)
            return quant.decode(from_host(xp, codes, like=like), buf[n_codes:].view(dtype), like.dtype)

        return Pending([self.grid.world._comm.Irecv(buf, source=self.receive_from, tag=self.tag)], finish,
                       timer=self.grid.timer)
