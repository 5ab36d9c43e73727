"""The one place where numba options live.

Every kernel core is decorated with :func:`jit`. The options are:

``nogil=True``
    Dask runs several tasks per worker in threads; a kernel must not hold the GIL.
``cache=True`` (when a writable directory exists, see below)
    First-call compilation costs 0.1-0.7 s per kernel and signature; workers restart often.
``error_model="numpy"``
    Float division by zero gives inf/nan instead of raising, so division loops vectorize.
    Every kernel that divides guards the zero case itself, so results do not depend on this
    and the ``NUMBA_DISABLE_JIT=1`` path (plain Python, where ``1.0 / 0.0`` raises) agrees.
``fastmath`` off
    Reassociation would make results depend on the vector width; no test shows it is safe.
No ``parallel=True``
    Kernels run single-threaded: Dask provides the parallelism (``NUMBA_NUM_THREADS=1``).

Cache directory
---------------
numba reads ``NUMBA_CACHE_DIR`` into ``numba.config.CACHE_DIR`` when numba is imported, and
re-reads all ``NUMBA_*`` variables before each compilation, but only if one of them changed.
The cache *locator* of a function is chosen once, when it is decorated (``njit(cache=True)``),
trying in order: ``config.CACHE_DIR`` (if set), ``__pycache__`` next to the source file, the
user-wide ``~/.cache/numba``. If none is writable, decoration raises ``RuntimeError: cannot
cache function ...: no locator available``, i.e. ``import kernels`` would crash on a Dask
worker whose site-packages and home are read-only (a common container setup). So before the
first decoration we check the same candidates; if none is writable we point both
``numba.config.CACHE_DIR`` (read by the locators now) and ``os.environ["NUMBA_CACHE_DIR"]``
(so that a later config reload and child processes agree) to a per-user directory under the
temporary directory. If even that is not writable, caching is switched off: kernels still
work, they compile on first call in every process.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

__all__ = ["CACHE_DIR", "CACHE_ENABLED", "JIT_OPTIONS", "NUMERIC_OPTIONS", "f64_bits", "jit",
           "bits_f64"]

_PACKAGE_PYCACHE = Path(__file__).resolve().parent / "__pycache__"


def _is_writable_dir(path: str | os.PathLike[str]) -> bool:
    """Same test numba's locators use: create the directory, then a temporary file in it."""
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


def _numba_user_cache_dir() -> str | None:
    try:
        from numba.misc.appdirs import AppDirs  # numba's own choice for its user-wide cache
    except ImportError:  # pragma: no cover - internal module moved
        return None
    return AppDirs(appname="numba", appauthor=False).user_cache_dir


def _fallback_cache_dir() -> str:
    try:
        user = str(os.getuid())
    except AttributeError:  # pragma: no cover - Windows
        user = os.environ.get("USERNAME", "user")
    return os.path.join(tempfile.gettempdir(), f"mlpipe-numba-cache-{user}")


def pick_cache_dir(
    configured: str,
    candidates: Iterable[str | os.PathLike[str] | None],
    fallback: str,
    is_writable: Callable[[str | os.PathLike[str]], bool] = _is_writable_dir,
) -> tuple[bool, str]:
    """Decide how numba should cache: ``(enabled, directory_to_force)``.

    ``directory_to_force`` is ``""`` when numba's own locator order already finds a writable
    directory (``configured`` = ``numba.config.CACHE_DIR``, then ``candidates``); otherwise it
    is ``fallback`` when that is writable. ``(False, "")`` means no caching at all.
    """
    for path in (configured, *candidates):
        if path and is_writable(path):
            return True, ""
    if is_writable(fallback):
        return True, fallback
    return False, ""


def _configure_cache() -> tuple[bool, str]:
    enabled, forced = pick_cache_dir(
        numba.config.CACHE_DIR, [_PACKAGE_PYCACHE, _numba_user_cache_dir()],
        _fallback_cache_dir())
    if forced:
        numba.config.CACHE_DIR = forced
        os.environ["NUMBA_CACHE_DIR"] = forced
    return enabled, (forced or numba.config.CACHE_DIR or "")


#: Whether compiled kernels are cached on disk, and the directory forced for it ("" when
#: numba's own choice works: NUMBA_CACHE_DIR, else __pycache__ next to the source, else
#: ~/.cache/numba).
CACHE_ENABLED, CACHE_DIR = _configure_cache()

#: Options that can change results. They are part of every kernel fingerprint.
NUMERIC_OPTIONS: dict[str, object] = {"fastmath": False, "error_model": "numpy"}
JIT_OPTIONS: dict[str, object] = {**NUMERIC_OPTIONS, "nogil": True, "cache": CACHE_ENABLED}

#: Maps every object returned by :func:`jit` to the Python function it compiles, so that
#: ``kernels.kernel_fingerprints`` can find the cores and helpers a public function calls.
JITTED: dict[int, Callable[..., object]] = {}


def jit(func: Callable[..., object]) -> Callable[..., object]:
    """Compile ``func`` with the project's numba options (``numba.njit(**JIT_OPTIONS)``).

    Under ``NUMBA_DISABLE_JIT=1`` the function runs as Python on numpy scalars, which warn on
    overflow or ``inf - inf`` where compiled code silently gives inf/NaN; it then runs under
    ``np.errstate(all="ignore")`` so that both paths behave alike.
    """
    if numba.config.DISABLE_JIT:
        @functools.wraps(func)
        def compiled(*args: object) -> object:
            with np.errstate(all="ignore"):
                return func(*args)
    else:
        compiled = numba.njit(**JIT_OPTIONS)(func)
    JITTED[id(compiled)] = func
    return compiled


# Bit casts between float64 and uint64. Kernels use them to split a float into exponent and
# mantissa with integer operations, which (unlike a call to libm's frexp/log1p) LLVM can
# vectorize. Under NUMBA_DISABLE_JIT the numpy scalar views do the same.
if numba.config.DISABLE_JIT:

    def f64_bits(x: float) -> np.uint64:
        """The IEEE-754 bits of ``x``."""
        return np.float64(x).view(np.uint64)

    def bits_f64(b: int) -> np.float64:
        """The float64 whose IEEE-754 bits are ``b``."""
        return np.uint64(b).view(np.float64)

else:
    from llvmlite import ir

    @intrinsic
    def f64_bits(typingctx, x):  # noqa: ARG001 - numba's intrinsic signature
        """The IEEE-754 bits of ``x``."""
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.IntType(64))
        return types.uint64(types.float64), codegen

    @intrinsic
    def bits_f64(typingctx, b):  # noqa: ARG001
        """The float64 whose IEEE-754 bits are ``b``."""
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.DoubleType())
        return types.float64(types.uint64), codegen
