"""The GPU side: extras that install wheels, the per-rank GPU report, and (``-m gpu``, on a GPU
node: ``launch/gpu-check.sh``) every solver on cupy against numpy, host staging forced on and off,
and checkpoints moving between GPU and CPU.

Without a GPU the ``gpu`` tests skip with the reason; the report's cupy branch is tested here with
a fake cupy module, and the staging path with array-api-strict (tests/test_staging.py).
"""

import configparser
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from packaging.requirements import Requirement

from admm_mpi import devices
from admm_mpi.grid import Grid

from tests.helpers import NO_VALIDATION, NO_VALIDATION_FLAGS, REPO, blobs, child_env, run_admm
from tests.test_staging import checked, launch, model_problems, run_checks

# cupy's binary-wheel packages on PyPI, one per CUDA major (checked with
# `pip install --dry-run --only-binary=:all: --no-deps NAME`: cupy-cuda13x and cupy-cuda12x 14.2.0,
# cupy-cuda11x 13.6.0, the last release for CUDA 11). Bare `cupy` is a source distribution only.
WHEEL_PACKAGES = {"cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x"}
WHEEL_EXTRAS = {"ctk"}  # cupy's own extra: the CUDA libraries as nvidia-* wheels (CuPy >= 14)


def _gpu_extras():
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    extras = parser["options.extras_require"]
    return {name: [line.strip() for line in value.splitlines() if line.strip()]
            for name, value in extras.items() if name.startswith("gpu")}


def test_every_gpu_extra_names_only_wheel_published_cupy_packages():
    extras = _gpu_extras()
    assert {"gpu", "gpu-cuda13", "gpu-cuda12", "gpu-cuda11"} <= set(extras)  # the names docs/gpu.md gives
    for name, lines in extras.items():
        assert lines, f"extra {name} is empty"
        for line in lines:
            requirement = Requirement(line)
            assert requirement.name in WHEEL_PACKAGES, f"extra {name}: {line} is not a wheel-published cupy package"
            assert requirement.extras <= WHEEL_EXTRAS and requirement.url is None, f"extra {name}: {line}"
    # the plain extra is the CUDA 12 wheel (it runs on every driver that shows CUDA 12.x or 13.x)
    assert extras["gpu"] == extras["gpu-cuda12"]
    assert Requirement(extras["gpu-cuda13"][0]).name == "cupy-cuda13x"
    assert Requirement(extras["gpu-cuda11"][0]).name == "cupy-cuda11x"


# ---- the GPU report -------------------------------------------------------------------------------

def fake_cupy(devices=2, error=None):
    """A stand-in cupy module: ``devices`` GPUs, or ``getDeviceCount`` raising ``error``."""
    def count():
        if error is not None:
            raise error
        return devices

    runtime = types.SimpleNamespace(getDeviceCount=count, runtimeGetVersion=lambda: 12090,
                                    driverGetVersion=lambda: 13000,
                                    getDeviceProperties=lambda i: {"name": f"Fake GPU {i}".encode()})
    module = types.ModuleType("cupy")
    module.__version__ = "99.0.0"
    module.cuda = types.SimpleNamespace(runtime=runtime)
    return module


def test_a_rank_takes_its_node_rank_modulo_the_gpus_it_sees():
    assert [devices.device_for(local, 2) for local in range(5)] == [0, 1, 0, 1, 0]
    assert [devices.device_for(local, 1) for local in range(3)] == [0, 0, 0]  # srun --gpus-per-task=1
    with pytest.raises(ValueError, match="no GPU"):
        devices.device_for(0, 0)


def test_report_without_cupy_says_not_importable(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError, even where it is installed
    monkeypatch.setenv("ADMM_MPI_CUDA_AWARE", "0")
    (line,) = devices.gpu_report_lines(Grid.serial())
    assert line.startswith("GPU, rank 0 (rank 0 on its node): cupy: not importable (ModuleNotFoundError:"), line
    assert line.endswith("MPI CUDA-aware: no (ADMM_MPI_CUDA_AWARE=0 overrides the library): host staging"), line


def test_report_with_a_cupy_of_two_gpus(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(devices=2))
    monkeypatch.setenv("ADMM_MPI_CUDA_AWARE", "1")
    monkeypatch.setattr(Grid, "local_rank", lambda self: 3)  # the 4th rank of its node
    (line,) = devices.gpu_report_lines(Grid.serial())
    assert line == ("GPU, rank 0 (rank 3 on its node): cupy 99.0.0 (CUDA runtime 12.9, driver 13.0), 2 GPUs "
                    "visible, takes GPU 1 (Fake GPU 1); MPI CUDA-aware: yes (ADMM_MPI_CUDA_AWARE=1 overrides "
                    "the library): device buffers go to MPI directly")


def test_report_with_cupy_but_no_usable_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(error=RuntimeError("cudaErrorNoDevice: no CUDA-capable device")))
    (line,) = devices.gpu_report_lines(Grid.serial())
    assert "cupy 99.0.0, but no usable GPU (RuntimeError: cudaErrorNoDevice: no CUDA-capable device)" in line, line


@pytest.mark.parametrize("fake", [True, False], ids=["fake-cupy-2-gpus", "as-installed"])
def test_report_at_2_ranks_under_mpiexec(fake):
    proc = launch(2, "report", int(fake), module="tests.test_gpu", timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["GPU, rank 0 (rank 0 on its node)",
                                                       "GPU, rank 1 (rank 1 on its node)"], proc.stdout
    for rank, line in enumerate(lines):
        if fake:
            assert f"2 GPUs visible, takes GPU {rank} (Fake GPU {rank})" in line, line
        elif _cupy_importable():
            assert "cupy " in line and "not importable" not in line, line
        else:
            assert "cupy: not importable" in line, line
        # MPICH (>= 4) and Open MPI both answer MPIX_Query_cuda_support; the pip MPICH wheel says no
        assert "MPI CUDA-aware: yes (MPIX_Query_cuda_support): device buffers go to MPI directly" in line or \
            "MPI CUDA-aware: no (MPIX_Query_cuda_support): host staging" in line, line


def _cupy_importable():
    try:
        import cupy  # noqa: F401
    except Exception:
        return False
    return True


def _report(fake):
    """(on every rank) print the report the root gets."""
    os.environ.pop("ADMM_MPI_CUDA_AWARE", None)  # the library's own answer, whatever the caller's setting
    if fake:
        sys.modules["cupy"] = fake_cupy(devices=2)
    grid = Grid()
    lines = devices.gpu_report_lines(grid)  # the root's; [] elsewhere
    if lines:
        print("\n".join(lines), flush=True)
    grid.close()
    return 0


# ---- the one-command check, where there is no GPU --------------------------------------------------

def test_gpu_check_without_a_gpu_says_so_in_one_line_and_writes_nothing():
    result = REPO / "bench" / "results" / "gpu.json"
    before = result.stat().st_mtime_ns if result.exists() else None
    env = child_env(CUDA_VISIBLE_DEVICES="")  # hides every GPU, so this runs the no-GPU branch anywhere
    for cmd in (["bash", str(REPO / "launch" / "gpu-check.sh")], [sys.executable, str(REPO / "bench" / "gpu.py")]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
        assert proc.returncode == 0, proc.stderr
        assert len(proc.stdout.splitlines()) == 1 and "no GPU" in proc.stdout and proc.stderr == "", proc
    assert (result.stat().st_mtime_ns if result.exists() else None) == before


# ---- on a GPU (pytest -m gpu; launch/gpu-check.sh) -----------------------------------------------

@pytest.fixture
def gpu():
    cupy = pytest.importorskip("cupy", reason="cupy is not installed (pip install -e '.[gpu-cuda12]' on a GPU node)")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, no device
        pytest.skip(f"no usable GPU: {exc}")
    if count < 1:
        pytest.skip("no GPU visible")
    return cupy


# every solver, pdADMM in both layouts (its boundary exchanges), two mini-batch modes
GPU_CASES = {
    "taylor": dict(solver="taylor", warm_start=3),
    "dladmm": dict(solver="dladmm"),
    "pdadmm-data": dict(solver="pdadmm"),
    "pdadmm-layer": dict(solver="pdadmm", layout="layer"),
    "pdadmm-8bit": dict(solver="pdadmm", layout="layer", quantize=8),
    "mdlam": dict(solver="mdlam"),
    "sigmoid_admm": dict(solver="sigmoid_admm"),
    "minibatch_am": dict(solver="minibatch_am", batch_size=29),
    "dladmm-batches": dict(solver="dladmm", batch_size=29, batch_sweeps=2),
}


def _dataset(path):
    from admm_mpi.data import write_dataset

    X, y = blobs(203, 10, 3, seed=5)
    Xt, yt = blobs(31, 10, 3, seed=6)
    write_dataset(str(path), X, y, Xt, yt, name="blobs", n_classes=3)
    return path


@pytest.mark.gpu
@pytest.mark.parametrize("ranks, cuda_aware", [(1, "0"), (2, "0"), (2, "1")],
                         ids=["1-rank", "2-ranks-host-staging", "2-ranks-device-buffers"])
def test_every_solver_on_cupy_equals_numpy(gpu, tmp_path, ranks, cuda_aware):
    proc = launch(ranks, "solvers", _dataset(tmp_path / "blobs.h5"), module="tests.test_gpu", timeout=600,
                  ADMM_MPI_CUDA_AWARE=cuda_aware)
    if proc.returncode == 0 and proc.stdout.startswith("SKIP: "):
        pytest.skip(proc.stdout.splitlines()[0][len("SKIP: "):])
    assert {f"gpu {case}" for case in GPU_CASES} <= checked(proc, ranks), proc.stdout


def _solvers(grid, checks, data):
    """(on every rank) every case trained on the CPU and on the GPU, the same data, compared."""
    from admm_mpi.config import TrainConfig
    from admm_mpi.grid import cuda_aware, mpi_cuda_support
    from admm_mpi.train import train

    direct, source = cuda_aware()
    for case, settings in GPU_CASES.items():
        config = dict(data=data, hidden=(12, 8), iters=6, dtype="float64", progress=False, **NO_VALIDATION, **settings)
        cpu = train(TrainConfig.from_settings(**config), grid, out=False)
        gpu = train(TrainConfig.from_settings(**config, device="gpu"), grid, out=False)
        checks.record(f"gpu {case}", "; ".join(model_problems(gpu, cpu, "cupy")))
    checks.record(f"buffers {'direct' if direct else 'staged'} ({source}, library: {mpi_cuda_support()})", None)


def _solvers_or_skip(data):
    """Device buffers handed to an MPI that is not CUDA-aware crash it: skip that case, saying why."""
    from admm_mpi.grid import Grid as WorldGrid, mpi_cuda_support

    if os.environ.get("ADMM_MPI_CUDA_AWARE") == "1":
        probe = WorldGrid()
        answer, source = mpi_cuda_support()
        probe.close()
        if not answer:
            if probe.is_root:
                print(f"SKIP: the MPI library is not CUDA-aware ({source}: {answer}); device buffers "
                      "cannot go to it directly (docs/gpu.md)", flush=True)
            return 0
    return run_checks(_solvers, data)


def _weights(run):
    import h5py

    with h5py.File(run / "model.h5", "r") as f:
        layers = sorted(f["layers"], key=int)
        return [np.concatenate([f[f"layers/{l}/W"][...], f[f"layers/{l}/b"][...][:, None]], axis=1) for l in layers]


@pytest.mark.gpu
@pytest.mark.parametrize("solver", [["--solver", "taylor"], ["--solver", "minibatch_am", "--batch-size", "300"]],
                         ids=["taylor", "minibatch_am"])
@pytest.mark.parametrize("first, then", [("gpu", "cpu"), ("cpu", "gpu")], ids=["gpu-to-cpu", "cpu-to-gpu"])
def test_a_checkpoint_written_on_one_device_resumes_on_the_other(gpu, tmp_path, solver, first, then):
    common = [*solver, *NO_VALIDATION_FLAGS, "--hidden", "32,32", "--no-progress", "--dtype", "float64"]
    full, part = tmp_path / "full", tmp_path / "part"

    def train(*args):
        proc = run_admm(2, "train", *common, *args, timeout=300)
        assert proc.returncode == 0, proc.stderr

    train("--device", then, "--iters", 12, "--out", full)
    train("--device", first, "--iters", 7, "--checkpoint-every", 5, "--out", part)
    train("--device", then, "--iters", 12, "--resume", "auto", "--out", part)
    summary = json.loads((part / "summary.json").read_text())
    assert summary["first_iteration"] == 6 and summary["resumed_from"].endswith("ckpt-000005"), summary
    for layer, (Wb, Wb_full) in enumerate(zip(_weights(part), _weights(full), strict=True)):
        rel = np.linalg.norm(Wb - Wb_full) / np.linalg.norm(Wb_full)
        assert rel < 1e-10, (layer, rel)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "report":
        sys.exit(_report(int(sys.argv[2])))
    sys.exit(_solvers_or_skip(sys.argv[2]))
