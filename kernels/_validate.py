"""Argument checks and conversions shared by the public kernel wrappers.

Each helper names the argument, says what was expected and what was found, so that an error
raised deep inside a Dask task still tells the caller what to fix.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

_INT64_MAX = np.iinfo(np.int64).max


def _describe(arr: np.ndarray) -> str:
    return f"dtype {arr.dtype} and shape {arr.shape}"


def _asarray(x: Any, name: str) -> np.ndarray:
    if isinstance(x, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be a numpy array; got {type(x).__name__}")
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be convertible to a numpy array: {exc}") from exc


def _check_ndim(arr: np.ndarray, name: str, ndim: int) -> None:
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array; got {_describe(arr)}")


def float_array(x: Any, name: str, ndim: int = 1) -> np.ndarray:
    """``x`` as a C-contiguous float64 array (bool, integer and float inputs are accepted)."""
    arr = _asarray(x, name)
    if arr.dtype.kind not in "biuf":
        hint = (" (a pandas nullable column? use .to_numpy(dtype='float64', na_value=np.nan))"
                if arr.dtype.kind == "O" else "")
        raise TypeError(f"{name} must be a numeric array (NaN = missing); got "
                        f"{_describe(arr)}{hint}")
    _check_ndim(arr, name, ndim)
    return np.ascontiguousarray(arr, dtype=np.float64)


def int_array(x: Any, name: str, what: str = "integer codes (-1 = missing)") -> np.ndarray:
    """``x`` as a C-contiguous signed integer array.

    Signed integer dtypes of any width are kept as they are (the kernels compile one version
    per width, so int8 category codes are not copied); unsigned ones are converted to int64.
    """
    arr = _asarray(x, name)
    if arr.dtype.kind == "f":
        raise TypeError(
            f"{name} must be an array of {what}; got {_describe(arr)}. "
            f"Replace NaN by -1 and convert with .astype(np.int64)")
    if arr.dtype.kind not in "iu":
        hint = (" (a pandas nullable column? use .to_numpy(dtype='int64', na_value=-1))"
                if arr.dtype.kind == "O" else "")
        raise TypeError(f"{name} must be an array of {what}; got {_describe(arr)}{hint}")
    _check_ndim(arr, name, 1)
    if arr.dtype.kind == "u":
        if arr.dtype.itemsize == 8 and arr.size and int(arr.max()) > _INT64_MAX:
            raise ValueError(f"{name} has values above the int64 maximum; got max {arr.max()}")
        return np.ascontiguousarray(arr, dtype=np.int64)
    return np.ascontiguousarray(arr)


def bool_array(x: Any, name: str) -> np.ndarray:
    arr = _asarray(x, name)
    if arr.dtype != np.bool_:
        raise TypeError(f"{name} must be a boolean array; got {_describe(arr)}")
    _check_ndim(arr, name, 1)
    return np.ascontiguousarray(arr)


def int_scalar(value: Any, name: str, minimum: int | None = None,
               maximum: int | None = None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer; got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}; got {value}")
    return value


def float_scalar(value: Any, name: str, minimum: float | None = None,
                 exclusive: bool = False) -> float:
    """A finite real number (optionally ``>= minimum``, or ``> minimum`` when ``exclusive``)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")
    if minimum is not None and (value <= minimum if exclusive else value < minimum):
        raise ValueError(f"{name} must be {'>' if exclusive else '>='} {minimum}; got {value}")
    return value


def same_length(*named: tuple[str, np.ndarray]) -> int:
    """Check that all arrays have the same length; return it."""
    first_name, first = named[0]
    for name, arr in named[1:]:
        if len(arr) != len(first):
            raise ValueError(
                f"{name} must have the same length as {first_name}; "
                f"got {len(arr)} and {len(first)}")
    return len(first)


def choice(value: Any, name: str, options: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")
    return value
