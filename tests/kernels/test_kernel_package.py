"""The package contract: registry, fingerprints, conventions, docstring examples, caching."""

import ast
import doctest
import importlib
import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numba
import numpy as np
import pytest

import kernels
from kernels import KERNELS, _jit, kernel_fingerprints

KERNEL_DIR = Path(kernels.__file__).resolve().parent
MODULES = ["kernels.encoding", "kernels.binning", "kernels.window", "kernels.transform",
           "kernels.drift", "kernels"]
FORBIDDEN = {"dask", "pandas", "sklearn", "distributed", "pyarrow", "scipy"}


def test_registry_lists_every_public_kernel():
    exported = set()
    for name in MODULES[:-1]:
        exported |= set(importlib.import_module(name).__all__)
    assert set(KERNELS) == exported
    assert all(KERNELS[name].__name__ == name for name in KERNELS)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_follows_house_style(name):
    func = KERNELS[name]
    module = sys.modules[func.__module__]
    core = getattr(module, f"_{name}", None)
    assert core is not None and id(core) in _jit.JITTED, f"no jitted core _{name}"
    doc = inspect.getdoc(func)
    for section in ("Parameters", "Returns", "Examples"):
        assert section in doc, f"{name} docstring lacks {section}"
    sig = inspect.signature(func)
    assert sig.return_annotation is not inspect.Signature.empty
    assert all(p.annotation is not inspect.Parameter.empty for p in sig.parameters.values())


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module):
    mod = importlib.import_module(module)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(mod, globs={"np": np, **vars(mod)}):
        runner.run(test)
    assert runner.failures == 0


def test_no_forbidden_imports_in_kernels():
    for path in KERNEL_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in FORBIDDEN, f"{path.name} imports {n}"


def test_no_parallel_or_fastmath():
    assert _jit.JIT_OPTIONS.get("parallel", False) is False
    assert _jit.JIT_OPTIONS["fastmath"] is False and _jit.JIT_OPTIONS["nogil"] is True
    for path in KERNEL_DIR.glob("*.py"):
        src = path.read_text()
        if path.name != "_jit.py":
            assert "import numba" not in src and "from numba" not in src, \
                f"{path.name}: numba options belong in _jit.py"
            assert "parallel" not in src and "prange" not in src, path.name


def test_fingerprints_cover_cores_and_helpers():
    fp = kernel_fingerprints()
    assert set(fp) == set(KERNELS)
    assert all(len(v) == 64 and int(v, 16) >= 0 for v in fp.values())
    assert fp == kernel_fingerprints()  # deterministic
    assert len(set(fp.values())) == len(fp)
    from kernels import _compiled_callees
    callees = _compiled_callees(KERNELS["hash_bytes"])
    assert {"kernels.encoding._hash_bytes", "kernels.encoding._murmur3_32",
            "kernels.encoding._first_decrease"} <= set(callees)
    assert "kernels.transform._log1p_nonneg" in _compiled_callees(KERNELS["signed_log1p"])
    assert "kernels.window._recompute" in _compiled_callees(KERNELS["group_rolling"])


def test_fingerprints_are_the_same_in_a_fresh_process_and_without_jit():
    code = "import json, kernels; print(json.dumps(kernels.kernel_fingerprints()))"
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, timeout=120)
    import json
    assert json.loads(out.stdout) == kernel_fingerprints()


def test_pick_cache_dir_logic():
    writable = {"/ok", "/fallback"}
    pick = _jit.pick_cache_dir
    assert pick("", ["/ro", "/ok"], "/fallback", writable.__contains__) == (True, "")
    assert pick("/ok", ["/ro"], "/fallback", writable.__contains__) == (True, "")
    assert pick("", ["/ro", None], "/fallback", writable.__contains__) == (True, "/fallback")
    assert pick("/ro", ["/ro2"], "/nope", writable.__contains__) == (False, "")


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="caching needs the JIT")
def test_import_works_when_package_and_home_are_read_only(tmp_path):
    # Simulate a Dask worker image: the package's __pycache__ and the home cache cannot be
    # created (a file is in the way; chmod does not stop root), only the temp dir is writable.
    pkg = tmp_path / "site" / "kernels"
    pkg.mkdir(parents=True)
    for src in KERNEL_DIR.glob("*.py"):
        (pkg / src.name).write_text(src.read_text())
    (pkg / "__pycache__").write_text("not a directory")
    blocker = tmp_path / "home_is_a_file"
    blocker.write_text("")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    env.update(PYTHONPATH=str(tmp_path / "site"), HOME=str(blocker),
               XDG_CACHE_HOME=str(blocker / "cache"), TMPDIR=str(tmp),
               PYTHONDONTWRITEBYTECODE="1")
    code = textwrap.dedent("""
        import numpy as np, kernels
        from kernels import _jit
        print(_jit.CACHE_ENABLED, _jit.CACHE_DIR, kernels.__file__)
        print(kernels.count_table(np.array([0, 1, 1]), 2))
    """)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    enabled, cache_dir, location = out.stdout.splitlines()[0].split()
    assert location.startswith(str(pkg))
    assert enabled == "True" and cache_dir.startswith(str(tmp))
    assert any(Path(cache_dir).rglob("*.nbi")), "nothing was cached"
