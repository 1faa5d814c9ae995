"""The benchmark scripts run from bench/, which puts that folder first on ``sys.path``."""

import sys

from tests.helpers import REPO


def test_no_benchmark_script_shadows_a_standard_library_module():
    # bench/profile.py once shadowed the standard `profile`: torch.optim imports it lazily through
    # cProfile, so PyTorch's Adam baseline failed in bench/suite.py ("module 'profile' has no
    # attribute 'run'") while the CI, which has no torch, passed
    scripts = {path.stem for path in (REPO / "bench").glob("*.py")}
    assert not scripts & set(sys.stdlib_module_names)
