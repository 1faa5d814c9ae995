"""bench/results holds no raw dump over 1 MiB as it is: larger results files are written gzipped,
and every reader takes either form."""

import gzip
import json

import pytest

from tests.helpers import REPO, bench_module

RESULTS = REPO / "bench" / "results"


@pytest.mark.parametrize("path", sorted(RESULTS.iterdir()), ids=lambda p: p.name)
def test_no_results_file_is_a_raw_dump_over_a_mebibyte(path):
    assert path.stat().st_size <= 1 << 20, f"{path.name}: {path.stat().st_size} bytes (compress it: .json.gz)"
    if path.name.endswith(".json.gz"):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            record = json.load(f)
        assert {"argv", "commit", "machine"} & set(record), path.name  # still a results file with its provenance


def test_write_result_gzips_a_large_result_and_read_result_finds_either(tmp_path, monkeypatch):
    common = bench_module("common")
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    big = {"values": list(range(300_000))}  # about 2 MB of JSON
    path = common.write_result("dump", big)
    assert path.name == "dump.json.gz" and not (tmp_path / "dump.json").exists()
    assert common.read_result(tmp_path / "dump.json")["values"] == big["values"]  # the .json name finds the twin
    small = common.write_result("dump", {"values": [1, 2]})
    assert small.name == "dump.json" and not (tmp_path / "dump.json.gz").exists()  # one file per result
    assert common.read_result(small)["values"] == [1, 2]
