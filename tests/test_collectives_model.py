"""bench/collectives.py's model of MPICH's collectives: the memory effects it rests on, the traffic of the
algorithms MPICH runs, and that its fit recovers the coefficients of measurements it generated itself."""

import json
import math

import numpy as np
import pytest

from tests.helpers import bench_module

MiB = 2**20
CORES = 2


@pytest.fixture(scope="module")
def coll():
    return bench_module("collectives")


def known_params(coll):
    """Coefficients of the size this machine's fit finds, different per operation."""
    params = {}
    for i, name in enumerate(coll.OPERATIONS):
        params[name] = {"latency": (2 + i) * 1e-6, "rendezvous": (3 - 0.3 * i) * 1e-6, "copy": (2 + i) * 1e-11,
                        "switch": (6 - i) * 1e-6, "page": 5e-11, "memory": 2e-11, "fault": 4e-10, "reduce": 6e-11}
    return {**params, "cache_bytes": 32 * MiB}


def synthetic_probes(coll, params, ranks=(2, 4), sweeps=3):
    """Probes as ``probe`` records them, every time the model's own."""
    sizes = coll.sizes_up_to(64 * MiB)
    probes = {}
    for P in ranks:
        times = {name: [coll.model_seconds(params, name, P, n, cores=CORES) for n in sizes] for name in coll.OPERATIONS}
        probes[P] = {"sizes": sizes, "bytes": {name: list(sizes) for name in coll.OPERATIONS}, "times": times,
                     "fastest": times, "sweeps": {name: [times[name]] * sweeps for name in coll.OPERATIONS}}
    return probes


def test_a_temporary_is_a_fresh_mapping_from_glibcs_32_mib_cap(coll):
    assert not coll.fresh_mapping(16 * MiB)
    assert not coll.fresh_mapping(32 * MiB - 64)
    assert coll.fresh_mapping(32 * MiB)
    assert coll.fresh_mapping(64 * MiB)


def test_numpy_arrays_sit_in_huge_pages_only_as_fresh_mappings(coll):
    assert coll.huge_page_share(8 * MiB) == 0.0  # madvised, but served from heap pages mapped at 4 KB
    assert coll.huge_page_share(32 * MiB) == pytest.approx(30 / 32)  # as /proc/self/smaps shows for a new array
    assert coll.huge_page_share(32 * MiB) < coll.huge_page_share(64 * MiB) < 1.0


def test_the_dram_share_is_zero_in_cache_and_grows_smoothly_beyond(coll):
    cache = 32 * MiB
    assert coll.beyond_cache(16 * MiB, cache) == coll.beyond_cache(cache, cache) == 0.0
    shares = [coll.beyond_cache(w * MiB, cache) for w in (33, 48, 64, 256, 4096)]
    assert all(0.0 < a < b < 1.0 for a, b in zip(shares, shares[1:]))
    assert shares[0] < 0.05  # no step at the cache's size


def test_rounds_are_those_of_mpichs_algorithms(coll):
    assert coll.structure("bcast", 4, MiB).stages == 2  # binomial
    assert coll.structure("bcast", 16, MiB).stages == 4 + 15  # scatter + ring allgather
    assert coll.structure("allgather", 4, 64 * 1024).stages == 2  # recursive doubling
    assert coll.structure("allgather", 4, MiB).stages == 3  # ring
    assert coll.structure("reduce_scatter", 4, 64 * 1024).stages == 2  # recursive halving
    assert coll.structure("reduce_scatter", 4, MiB).stages == 3  # pairwise
    assert coll.structure("reduce", 4, MiB).stages == coll.structure("allreduce", 4, MiB).stages == 4  # Rabenseifner
    assert coll.structure("reduce", 3, MiB).stages == 3  # one more round for the rank beyond a power of 2
    assert coll.structure("bcast", 2, 4096).rendezvous == 0
    assert coll.structure("bcast", 2, 8192).rendezvous == 1  # CMA from 8 KB


def test_temporaries_fault_in_where_mpich_mallocs_32_mib_or_more(coll):
    assert coll.structure("reduce_scatter", 2, 32 * MiB).fresh == 0  # pairwise: one temporary of n / P
    assert coll.structure("reduce_scatter", 2, 64 * MiB).fresh == 32 * MiB
    assert coll.structure("reduce_scatter", 4, 64 * MiB).fresh == 0
    assert coll.structure("reduce", 2, 8 * MiB).fresh == 0
    assert coll.structure("reduce", 2, 32 * MiB).fresh == 32 * MiB + 16 * MiB  # result buffer + received half
    assert coll.structure("allreduce", 2, 64 * MiB).fresh == 32 * MiB  # the received half of its temporary
    assert coll.structure("bcast", 2, 64 * MiB).fresh == coll.structure("allgather", 2, 64 * MiB).fresh == 0


def test_only_cma_copies_out_of_small_pages_pay_the_page_term(coll):
    small, large = coll.structure("bcast", 2, 2 * MiB), coll.structure("bcast", 2, 64 * MiB)
    assert small.small_pages == small.moved  # a user array under 32 MiB: 4 KB heap pages
    assert large.small_pages == pytest.approx(large.moved * 2 / 64)  # only its unaligned ends
    reduce = coll.structure("reduce", 2, 2 * MiB)
    assert reduce.small_pages == reduce.moved - 2 * MiB  # its local copy of the input pins nothing


def test_switch_and_the_share_of_a_core_only_when_ranks_outnumber_cores(coll):
    inside, beyond = coll.model_terms("allreduce", 2, MiB, cores=2), coll.model_terms("allreduce", 4, MiB, cores=2)
    assert inside["switch"] == 0.0 and beyond["switch"] == coll.structure("allreduce", 4, MiB).stages
    assert beyond["copy"] == 2 * coll.structure("allreduce", 4, MiB).moved


def test_the_fit_recovers_the_coefficients_that_made_the_measurements(coll):
    truth = known_params(coll)
    fitted = coll.fit(synthetic_probes(coll, truth), CORES, reduce_per_byte=6e-11, cache=32 * MiB)
    for name in coll.OPERATIONS:
        for term in coll.TERMS:
            assert fitted[name][term] == pytest.approx(truth[name][term], rel=1e-3), (name, term)
    assert fitted["bcast"]["page"] == fitted["allgather"]["page"]  # one value for the machine


def test_without_oversubscribed_ranks_switch_is_zero_not_arbitrary(coll):
    fitted = coll.fit(synthetic_probes(coll, known_params(coll), ranks=(2,)), CORES, reduce_per_byte=6e-11)
    assert all(fitted[name]["switch"] == 0.0 for name in coll.OPERATIONS)


def test_one_size_blown_up_by_load_barely_moves_the_fit(coll):
    truth = known_params(coll)
    probes = synthetic_probes(coll, truth)
    probes[2]["times"]["reduce"][9] *= 3  # 2 MB: another job took a core
    fitted = coll.fit(probes, CORES, reduce_per_byte=6e-11, cache=32 * MiB)
    rows = coll.error_table(synthetic_probes(coll, truth), fitted, CORES)
    assert max(abs(r["error"]) for r in rows) < 0.04  # least squares would move it 7 %


def test_held_out_errors_vanish_on_data_the_model_made(coll):
    found = coll.holdout_errors(synthetic_probes(coll, known_params(coll)), CORES, 6e-11, 32 * MiB)
    assert set(found) == {"sweeps", "sweeps_unmodelled", "leave_one_size_out", "ranks_beyond_cores"}
    assert len(found["sweeps"]) == 3 * 2 * len(coll.OPERATIONS) * 13
    for key in ("sweeps", "sweeps_unmodelled", "leave_one_size_out"):
        assert max(abs(r["error"]) for r in found[key]) < 1e-3, key
    # fitted at 2 ranks, the 4-rank prediction lacks only the per-round switch: short, never over
    beyond = found["ranks_beyond_cores"]
    assert beyond and all(r["ranks"] == 4 and r["error"] < 1e-6 for r in beyond)
    assert max(abs(r["error"]) for r in beyond if r["bytes"] == 64 * MiB) < 1e-3
    summary = coll.error_summary(found["leave_one_size_out"])
    assert summary["2"]["within_target"] == summary["2"]["cells"] == 6 * len(coll.OPERATIONS)


def test_error_summary_counts_cells_from_64_kb_beyond_the_target(coll):
    rows = [{"operation": "bcast", "ranks": 2, "bytes": n, "error": e}
            for n, e in ((8, 5.0), (65536, 0.1), (2**20, -0.3), (2**26, 0.26))]
    summary = coll.error_summary(rows)["2"]
    assert (summary["cells"], summary["within_target"]) == (3, 1)
    assert summary["worst_abs_error"] == pytest.approx(0.3)
    assert [m["bytes"] for m in summary["beyond_target"]] == [2**20, 2**26]


def test_cluster_seconds_inside_one_node_is_the_node_model(coll):
    params = known_params(coll)
    network = {"alpha": 2e-6, "beta": 1 / 50e9}
    for name in ("reduce_scatter", "allgather"):
        assert coll.cluster_seconds(params, name, 8, MiB, 64, network) == coll.model_seconds(params, name, 8, MiB)
    across = coll.cluster_seconds(params, "allreduce", 256, MiB, 64, network, 256 * MiB)
    assert math.isfinite(across) and across > coll.cluster_seconds(params, "allreduce", 64, MiB, 64, network, 256 * MiB)
    assert np.isfinite(coll.cluster_seconds(params, "bcast", 4096, 64 * MiB, 64, network, 256 * MiB))


def test_every_sweep_runs_every_cell_once_in_an_order_of_its_own(coll):
    orders = coll.sweep_orders(78, 7, [0, 2])
    assert len(orders) == 7 and all(sorted(order) == list(range(78)) for order in orders)
    assert len({tuple(order) for order in orders}) == 7  # not one order repeated
    assert orders != [list(range(78))] * 7  # not the ascending order
    assert coll.sweep_orders(78, 7, [0, 2]) == orders  # every rank draws the same
    assert coll.sweep_orders(78, 7, [0, 4]) != orders


def test_timed_sweeps_warm_every_cell_first_then_file_each_timing_under_its_own_size(coll):
    names, sizes = ("reduce", "bcast"), [8, 64, 512]
    log = []

    def warm(name, n):
        log.append(("warm", name, n))

    def measure(name, n):
        log.append(("time", name, n))
        return 1000 * names.index(name) + n + 0.5, 1000 * names.index(name) + n  # (median, minimum)

    orders = [[5, 0, 3, 1, 4, 2], [2, 4, 0, 5, 1, 3]]
    medians, minima, loads, stamps = coll.timed_sweeps(names, sizes, orders, measure, warm,
                                                       stamp=lambda: log.append(("stamp",)) or len(log))
    cells = [(name, n) for name in names for n in sizes]
    assert log[:6] == [("warm", *cell) for cell in cells]  # the untimed pass, ascending, before any timing
    # then each sweep in its own order, stamped before each and after the last
    assert log[6:13] == [("stamp",)] + [("time", *cells[k]) for k in orders[0]]
    assert log[13:] == [("stamp",)] + [("time", *cells[k]) for k in orders[1]] + [("stamp",)]
    assert stamps == [7, 14, 21]
    for s in range(2):
        assert medians["reduce"][s] == [8.5, 64.5, 512.5] and medians["bcast"][s] == [1008.5, 1064.5, 1512.5]
        assert minima["bcast"][s] == [1008, 1064, 1512]
    assert len(loads) == 2
    with pytest.raises(ValueError):
        coll.timed_sweeps(names, sizes, [[0, 0, 1, 2, 3, 4]], measure, warm)


def test_sweep_spread_is_robust_to_one_slow_sweep_and_counts_it(coll):
    sweeps = [[1.0, 2.0]] * 6 + [[2.0, 2.2]]
    spread = coll.sweep_spread(sweeps)
    assert spread["mad"] == [0.0, 0.0]
    assert spread["range"] == pytest.approx([1.0, 0.1])
    assert spread["beyond_25pct"] == pytest.approx([1 / 7, 0.0])


def test_spread_summary_names_the_cells_whose_sweeps_disagree(coll):
    probes = synthetic_probes(coll, known_params(coll), sweeps=5)
    assert all(s["median_mad"] == 0.0 and not s["uncertain"] for s in coll.spread_summary(probes).values())
    i = probes[2]["sizes"].index(8 * MiB)
    rows = probes[2]["sweeps"]["bcast"] = [list(row) for row in probes[2]["sweeps"]["bcast"]]
    for s, factor in enumerate((1.0, 1.1, 0.9, 2.0, 2.0)):
        rows[s][i] *= factor  # jitter, and two sweeps of five on a busy core
    summary = coll.spread_summary(probes)
    assert summary["2"]["cells"] == 6 * len(coll.OPERATIONS) and summary["2"]["sweeps"] == 5
    assert [(c["operation"], c["bytes"]) for c in summary["2"]["uncertain"]] == [("bcast", 8 * MiB)]
    assert summary["2"]["worst_mad"]["operation"] == "bcast"
    assert summary["2"]["worst_mad"]["mad"] == pytest.approx(0.2 / 1.1)
    assert summary["4"]["median_mad"] == 0.0 and not summary["4"]["uncertain"]


class _FakeComm:
    """Records the buffers handed to Bcast; rank 0 of ``size``."""

    def __init__(self, size=2):
        self.size, self.sent = size, []

    def Get_size(self):
        return self.size

    def Get_rank(self):
        return 0

    def Bcast(self, buffer, root=0):
        self.sent.append(buffer.copy())

    def Reduce(self, send, out, op=None, root=0):
        pass


def test_the_root_broadcasts_data_it_holds_not_untouched_pages(coll):
    pytest.importorskip("mpi4py")
    for name in ("bcast", "reduce_bcast"):
        comm = _FakeComm()
        call, nbytes = coll._operation(name, comm, 64 * MiB)
        call()
        assert nbytes == 64 * MiB and len(comm.sent) == 1
        assert np.all(comm.sent[0] == 1.0), name  # np.empty would hand over (zero) pages never written


def test_sweep_conditions_are_the_counters_differences_over_each_sweep(coll):
    def ranks(steal, *per_rank):
        return [{"cpu": cpu, "migrations": m, "involuntary": v, "steal": steal if i == 0 else None, "huge_pages": 0}
                for i, (cpu, m, v) in enumerate(per_rank)]

    stamps = [ranks(10.0, (0, 5, 1), (1, 7, 2)), ranks(10.5, (1, 6, 1), (1, 7, 9)), ranks(10.5, (1, 6, 1), (0, 9, 9))]
    rows = coll.sweep_conditions(stamps)
    assert rows == [{"cpus": [0, 1], "huge_pages": [0, 0], "migrations": [1, 0], "involuntary": [0, 7],
                     "steal_seconds": 0.5},
                    {"cpus": [1, 1], "huge_pages": [0, 0], "migrations": [0, 2], "involuntary": [0, 0],
                     "steal_seconds": 0.0}]
    here = coll.scheduler_counters()
    assert set(here) == {"cpu", "migrations", "involuntary", "steal", "huge_pages"}


def test_a_refit_keeps_naming_the_run_that_measured(coll, tmp_path):
    assert coll.measured_by() == "this run"
    first = tmp_path / "first.json"
    first.write_text('{"command": "python bench/collectives.py --ranks 2,4", "commit": "abc", "machine": {"cpus": 2}}')
    origin = coll.measured_by(first)
    assert origin == {"command": "python bench/collectives.py --ranks 2,4", "commit": "abc", "machine": {"cpus": 2}}
    second = tmp_path / "second.json"
    second.write_text(json.dumps({"command": "python bench/collectives.py --refit first.json", "commit": "def",
                                  "measured_by": origin}))
    assert coll.measured_by(second) == origin
