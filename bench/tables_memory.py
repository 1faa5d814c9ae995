"""Peak memory of converting a large mixed-type table in chunks (admm_mpi.tables, issue 36).

Writes a CSV of ``--rows`` rows x 20 columns (a unique text id, 7 float and 4 integer columns with
missing cells, 6 text columns of 3 to 200 categories with missing cells, an ordinal text column,
a text label), then converts it in a fresh Python process as ``admm-mpi data convert`` will:
the label pass (:func:`read_labels`), a stratified 10 % test split, the fit on the training rows
(:func:`fit_encoding`), the encoded chunks appended to float32 HDF5 datasets. The child reports
its peak resident set (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), and so does a child that
only imports the same modules (the floor).

    python bench/tables_memory.py                  # 1 000 000 rows, --chunk-rows 10000, missing=mean
    python bench/tables_memory.py --missing median

Results: bench/results/tables_memory.json (with bench/common.run_record()).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import write_result

BOUND_MIB = 400   # the stated bound on the converting process's peak RSS

CHILD = r"""
import json, resource, sys, time
import h5py, numpy as np
t0 = time.perf_counter()
from admm_mpi import tables
path, out, chunk, missing, only_imports = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"
result = {}
if not only_imports:
    table = tables.open_table(path)
    spec = tables.TableSpec(label="churn", ordinal=["grade"], missing=missing)
    labels = tables.read_labels(table, spec, chunk)
    y = labels.codes[0]
    t1 = time.perf_counter()
    rng = np.random.default_rng(0)
    test = np.zeros(y.size, bool)
    for c in range(len(labels.classes)):   # stratified, as convert's _label_pass
        members = np.flatnonzero(y == c)
        test[rng.choice(members, size=int(round(0.1 * members.size)), replace=False)] = True
    encoding, report = tables.fit_encoding(table, spec, chunk=chunk, train_rows=~test, classes=labels)
    t2 = time.perf_counter()
    counts = tables.TransformReport()
    offset = 0
    with h5py.File(out, "w") as f:
        d = encoding.n_features
        for key in ("X", "X_test"):
            f.create_dataset(key, shape=(0, d), maxshape=(None, d), dtype=np.float32, chunks=(min(chunk, 4096), d))
            f.create_dataset(key.replace("X", "y"), shape=(0,), maxshape=(None,), dtype=np.int64)
        for X, yb in tables.encoded_chunks(table, encoding, chunk, counts):
            where = test[offset:offset + X.shape[0]]
            offset += X.shape[0]
            for key, rows in (("X", ~where), ("X_test", where)):
                dx, dy = f[key], f[key.replace("X", "y")]
                n = dx.shape[0]
                dx.resize(n + rows.sum(), axis=0); dy.resize(n + rows.sum(), axis=0)
                dx[n:] = X[rows]; dy[n:] = yb[rows]
        encoding.save(f.create_group(tables.ENCODING_GROUP))
        shapes = {k: list(f[k].shape) for k in ("X", "X_test")}
    t3 = time.perf_counter()
    result = {"seconds": {"label_pass": round(t1 - t0, 2), "fit": round(t2 - t1, 2), "encode_and_write": round(t3 - t2, 2)},
              "shapes": shapes, "n_features": encoding.n_features, "rows": report.rows,
              "dropped_columns": [c.name for c in encoding.columns if c.kind == "dropped"],
              "transform_missing": counts.missing, "transform_unknown": counts.unknown}
usage = resource.getrusage(resource.RUSAGE_SELF)
result["peak_rss_mib"] = round(usage.ru_maxrss / 1024, 1)
result["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 1)  # the machine may be shared: wall time is not CPU time
print(json.dumps(result))
"""


def write_table(path, rows, seed=0, block=100_000):
    """The benchmark table, written ``block`` rows at a time (the writer's memory stays small)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    cities = np.array([f"city{i:03d}" for i in range(200)])
    for start in range(0, rows, block):
        n = min(block, rows - start)
        columns = {"id": [f"u{start + i:08d}" for i in range(n)]}
        for k in range(7):
            values = rng.normal(k * 10, 1 + k, n).round(4)
            values[rng.random(n) < 0.01] = np.nan
            columns[f"f{k}"] = values
        for k in range(4):
            columns[f"i{k}"] = pd.array(rng.integers(0, 100 * (k + 1), n), dtype="Int64")
            columns[f"i{k}"][rng.random(n) < 0.005] = pd.NA
        for k, width in enumerate((3, 5, 12, 30, 60)):
            values = rng.choice([f"t{k}_{j}" for j in range(width)], n).astype(object)
            values[rng.random(n) < 0.01] = None
            columns[f"t{k}"] = values
        columns["city"] = rng.choice(cities, n)
        columns["grade"] = rng.choice(["low", "mid", "high"], n)
        columns["churn"] = rng.choice(["No", "Yes"], n, p=[0.7, 0.3])
        pd.DataFrame(columns).to_csv(path, mode="a" if start else "w", header=not start, index=False)


def child(path, out, chunk, missing, only_imports=False):
    completed = subprocess.run([sys.executable, "-c", CHILD, str(path), str(out), str(chunk), missing,
                                "1" if only_imports else "0"], capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=10_000)
    parser.add_argument("--missing", default="mean")
    parser.add_argument("--name", default="tables_memory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "table.csv", Path(tmp) / "table.h5"
        t0 = time.perf_counter()
        write_table(path, args.rows)
        written = time.perf_counter() - t0
        size_mib = os.path.getsize(path) / 2**20
        floor = child(path, out, args.chunk_rows, args.missing, only_imports=True)
        t0 = time.perf_counter()
        run = child(path, out, args.chunk_rows, args.missing)
        seconds = time.perf_counter() - t0
        output_mib = os.path.getsize(out) / 2**20
    result = {"rows": args.rows, "columns": 20, "chunk_rows": args.chunk_rows, "missing": args.missing,
              "csv_mib": round(size_mib, 1), "output_h5_mib": round(output_mib, 1),
              "seconds_to_write_csv": round(written, 1), "seconds_to_convert": round(seconds, 1),
              "peak_rss_mib": run.pop("peak_rss_mib"), "import_only_peak_rss_mib": floor["peak_rss_mib"],
              "bound_mib": BOUND_MIB, **run}
    result["within_bound"] = result["peak_rss_mib"] <= BOUND_MIB
    path = write_result(args.name, result)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    if not result["within_bound"]:
        raise SystemExit(f"peak RSS {result['peak_rss_mib']} MiB exceeds the bound {BOUND_MIB} MiB")


if __name__ == "__main__":
    main()
