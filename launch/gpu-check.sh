#!/usr/bin/env bash
# Does the GPU path work on this node, and how fast is it? One command, from the repository:
#   pip install -e ".[gpu-cuda12,test]"      (the extra of the CUDA major nvidia-smi shows: docs/gpu.md)
#   launch/gpu-check.sh
# 1. the GPU side of every rank (what `admm-mpi info` reports), at 2 ranks;
# 2. the gpu-marked tests (tests/test_gpu.py): every solver on cupy against numpy at 1e-10 in
#    float64 at 1 and 2 ranks, host staging forced on (ADMM_MPI_CUDA_AWARE=0) and off (=1, skipped
#    unless the MPI library says it is CUDA-aware), checkpoints written on the GPU resumed on the
#    CPU and the reverse;
# 3. bench/gpu.py: one Taylor iteration and one minibatch_am epoch, MNIST-shaped, GPU against CPU
#    in the same run -> bench/results/gpu.json.
# Meant to finish in under 8 minutes on one modern GPU. Without a GPU it says so in one line and
# exits 0. PYTHON picks the interpreter (default: python on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
if ! problem=$("$python" -c "import admm_mpi.devices" 2>&1); then
  echo "gpu-check: $python cannot import admm_mpi (${problem##*$'\n'}): pip install -e \".[gpu-cuda12,test]\"" >&2
  exit 2
fi
# the one question asked before anything runs: is there a GPU that cupy can use?
if ! reason=$("$python" -c '
from admm_mpi.devices import gpu_facts
facts = gpu_facts(0)
if not facts["devices"]:
    print(facts["problem"] or "cupy sees 0 GPUs")
    raise SystemExit(1)
' 2>&1); then
  echo "gpu-check: no GPU here (${reason##*$'\n'}); nothing to check"
  exit 0
fi
mpiexec=$(dirname "$(command -v "$python")")/mpiexec
[ -x "$mpiexec" ] || mpiexec=mpiexec
start=$SECONDS
echo "== the GPU side of each rank (2 ranks)"
"$mpiexec" -n 2 "$python" -c '
from admm_mpi.devices import gpu_report_lines
from admm_mpi.grid import Grid
grid = Grid()
lines = gpu_report_lines(grid)
print("\n".join(lines), flush=True)
grid.close()
'
echo "== gpu tests"
"$python" -m pytest -q -m gpu -rs tests/test_gpu.py
echo "== bench/gpu.py"
"$python" bench/gpu.py
echo "gpu-check: done in $(( SECONDS - start )) s"
