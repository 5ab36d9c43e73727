"""Import helpers for the kernel tests.

- ``reference`` and ``kernel_strategies`` (next to this file) must be importable whatever
  pytest's import mode.
- ``tests/conftest.py`` makes pytest put ``tests/`` on ``sys.path``; ``tests/kernels`` (no
  ``__init__.py``) would then be found as a namespace package ``kernels`` before the editable
  install's finder runs, shadowing the real package. Putting the repository root first makes
  ``import kernels`` find ``<root>/kernels/__init__.py``.
"""

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parents[1]
for _path in (str(_HERE), str(_ROOT)):
    if _path in sys.path:
        sys.path.remove(_path)
    sys.path.insert(0, _path)
_mod = sys.modules.get("kernels")
if _mod is not None and getattr(_mod, "__file__", None) is None:  # a namespace shadow
    del sys.modules["kernels"]
