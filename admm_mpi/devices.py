"""The GPU side of a run: which GPU each rank takes, and what ``admm-mpi info`` says about it.

Ranks take their node's GPUs round-robin by their rank on the node (:func:`device_for`), so
``mpiexec -n 4`` on a node with 4 GPUs gives every rank its own, and ``srun --gpus-per-task=1``
(each task sees one GPU) gives every rank device 0 of its own. Nothing here needs a GPU: without
cupy, or without a driver, the report says so and why.
"""

from admm_mpi.grid import cuda_aware


def device_for(local_rank, device_count):
    """The GPU index a rank takes: its rank on the node modulo the GPUs it sees."""
    if device_count < 1:
        raise ValueError(f"no GPU to choose from (device count {device_count})")
    return local_rank % device_count


def _version(number):
    """CUDA's 12090 as ``"12.9"``."""
    return f"{number // 1000}.{number % 1000 // 10}"


def gpu_facts(local_rank):
    """This process's GPU side as a small dict (picklable: it is gathered to the root).

    ``cupy`` (its version, or None with ``problem``), ``devices`` (the count this process sees),
    ``device`` (the one it would take) and ``name``, ``runtime``/``driver`` (CUDA versions), and
    ``cuda_aware`` (whether MPI gets device buffers directly) with ``cuda_aware_source``.
    """
    aware, source = cuda_aware()
    facts = {"cupy": None, "problem": None, "devices": None, "device": None, "name": None, "runtime": None,
             "driver": None, "cuda_aware": aware, "cuda_aware_source": source}
    try:
        import cupy
    except Exception as exc:  # ImportError, or cupy installed for a CUDA this node lacks
        facts["problem"] = f"{type(exc).__name__}: {exc}"
        return facts
    facts["cupy"] = getattr(cupy, "__version__", "?")
    runtime = cupy.cuda.runtime
    try:
        facts["devices"] = runtime.getDeviceCount()
        facts["runtime"], facts["driver"] = _version(runtime.runtimeGetVersion()), _version(runtime.driverGetVersion())
    except Exception as exc:  # no driver, no device, or a driver older than the wheel's CUDA
        facts["problem"] = f"{type(exc).__name__}: {exc}"
        return facts
    if facts["devices"]:
        facts["device"] = device_for(local_rank, facts["devices"])
        try:
            name = runtime.getDeviceProperties(facts["device"])["name"]
            facts["name"] = name.decode() if isinstance(name, bytes) else str(name)
        except Exception:  # the name is a nicety; the count and index above are what matter
            pass
    return facts


def describe(rank, local_rank, facts):
    """One rank's line of the report."""
    head = f"GPU, rank {rank} (rank {local_rank} on its node): "
    if facts["cupy"] is None:
        gpu = f"cupy: not importable ({facts['problem']}); --device gpu is unavailable"
    elif facts["devices"] is None:
        gpu = f"cupy {facts['cupy']}, but no usable GPU ({facts['problem']})"
    elif facts["devices"] == 0:
        gpu = f"cupy {facts['cupy']} (CUDA runtime {facts['runtime']}, driver {facts['driver']}), 0 GPUs visible"
    else:
        name = f" ({facts['name']})" if facts["name"] else ""
        gpu = (f"cupy {facts['cupy']} (CUDA runtime {facts['runtime']}, driver {facts['driver']}), "
               f"{facts['devices']} GPU{'s' if facts['devices'] > 1 else ''} visible, takes GPU {facts['device']}{name}")
    source = facts["cuda_aware_source"]
    if source.startswith("ADMM_MPI_CUDA_AWARE"):
        source += " overrides the library"
    if facts["cuda_aware"]:
        staging = f"yes ({source}): device buffers go to MPI directly"
    elif source in ("MPIX_Query_cuda_support", "MPI.Query_cuda_support") or source.startswith("ADMM_MPI"):
        staging = f"no ({source}): host staging"
    else:  # the library cannot say (or MPI is not running): staged, which is always safe
        staging = f"unknown: host staging ({source})"
    return f"{head}{gpu}; MPI CUDA-aware: {staging}"

def gpu_report_lines(grid):
    """The GPU side of every rank, one line each, on the root (an empty list elsewhere).

    Collective: every rank of ``grid`` must call it (it asks each rank's node rank and gathers).
    """
    local_rank = grid.local_rank()
    everyone = grid.gather_to_root((grid.rank, local_rank, gpu_facts(local_rank)))
    if not grid.is_root:
        return []
    return [describe(rank, local, facts) for rank, local, facts in everyone]
