#!/usr/bin/env bash
# Smoke test on one machine: a short training run with 1, 2, 3 and 4 ranks on the bundled data.
# Usage: launch/local-smoke.sh [OUT_DIR]
set -euo pipefail
out=${1:-runs/smoke}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
for n in 1 2 3 4; do
  # 4 ranks on a 2-core laptop oversubscribe; MPICH's fork launcher handles that.
  mpiexec -n "$n" admm-mpi train --iters 10 --no-progress --out "$out/ranks-$n"
done
python3 - "$out" <<'PY'
import json, sys, pathlib
for p in sorted(pathlib.Path(sys.argv[1]).glob("ranks-*/summary.json")):
    s = json.loads(p.read_text())
    print(f"{s['ranks']} rank(s): test accuracy {s['test_accuracy']:.4f}, {s['seconds_per_iteration']:.3g} s/it, "
          f"{s['bytes_per_iteration']} bytes/it")
PY
