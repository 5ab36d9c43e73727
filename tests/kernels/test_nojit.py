"""The whole kernel suite again with NUMBA_DISABLE_JIT=1: the cores are plain Python, so
coverage tools and debuggers see them, and a kernel cannot depend on numba-only behaviour."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_suite_passes_without_jit():
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/kernels", "-q", "-p", "no:cacheprovider", "-x",
         "-k", "not nojit"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
