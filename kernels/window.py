"""Per-key rolling statistics and lags over rows sorted by key, then time.

Rows of one key must form one contiguous run (sort by key, then time; the time order inside a
run cannot be checked and is the caller's promise). Windows count *rows* of the same key.

Partition boundaries: a Dask partition does not see the rows before it. Prepend the last
``window`` (for :func:`group_rolling`) or ``lag`` (for :func:`group_lag`) rows of the data
before the partition and pass their number as ``skip``: the kernel uses them as context and
returns results for the partition's own rows only, equal to what a single pass over all rows
gives (exactly for counts and lags; mean and std to ~1e-10 relative, see below).
"""

from __future__ import annotations

import math

import numpy as np

from kernels._jit import jit
from kernels._validate import choice, float_array, int_array, int_scalar, same_length

__all__ = ["group_lag", "group_rolling"]

_CLOSED = {"left": 0, "right": 1, "both": 2}


# --------------------------------------------------------------------------- grouping check


@jit
def _first_descent(keys):
    for i in range(1, keys.size):
        if keys[i] < keys[i - 1]:
            return i
    return -1


def _check_grouped(keys: np.ndarray) -> None:
    if _first_descent(keys) < 0:  # the common case: sorted keys, one O(n) pass
        return
    # Unsorted keys may still be grouped: compare the keys that start runs (O(r log r)).
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    order = np.argsort(keys[starts], kind="stable")  # equal keys stay in row order
    run_keys = keys[starts][order]
    again = np.flatnonzero(run_keys[1:] == run_keys[:-1])  # order[again + 1]: a later run
    if again.size:
        j = again[np.argmin(starts[order[again + 1]])]
        row, earlier = int(starts[order[j + 1]]), int(starts[order[j]])
        raise ValueError(
            f"keys must be grouped (each key in one contiguous run of rows): keys[{row}] = "
            f"{keys[row]} starts a second run of that key (an earlier run starts at row "
            f"{earlier}); sort the rows by key, then time")


def _check_keys_values(keys: object, values: object) -> tuple[np.ndarray, np.ndarray]:
    keys = int_array(keys, "keys", what="integer keys (e.g. category codes)")
    values = float_array(values, "values")
    same_length(("keys", keys), ("values", values))
    return keys, values


# --------------------------------------------------------------------------- rolling
# Numerical method. For each window we keep the count and, in units scaled by a power of two
# c (exact, and it keeps squares of huge or tiny values in range), the sums
#     s1 = sum(x*c - k),  s2 = sum((x*c - k)**2)
# around a shift k = c * (mean of the window when the state was last recomputed). Moving the
# window adds one value and removes one: O(1) per row, and unlike Welford's add/remove no
# division in the loop-carried dependency (1/n comes from a table).
# mean = (k + s1/n)/c, var = (s2 - s1**2/n)/(n-1).
# Add/remove rounding accumulates and the shift can drift away from the mean, so the state is
# recomputed exactly (two-pass over the window: scale, shifted mean, squared deviations) when
#   - max(4 * window, 256) rows have passed since the last recompute (bounds accumulated
#     rounding),
#   - s2 - s1**2/n fell below _CANCEL * (largest s2 since the last recompute), or the mean
#     k + s1/n below _CANCEL * |k|: a catastrophic cancellation (level shift, or a huge value
#     just left the window),
#   - a sum is no longer finite (inf in the window, or overflow),
#   - s2 is below _TINY_S2 although a deviation was nonzero but below _TINY_D: the squares
#     underflowed (values far below the current scale, e.g. 1e-300 after a run of zeros).
# Each recompute costs O(window); the periodic one is amortised to < 1 operation per row. The
# relative error of the variance stays below ~(rows between recomputes) * 2.2e-16 / _CANCEL
# (~1e-10; measured ~1e-15 against exact rational arithmetic, see the tests). Re-summing every
# window would make results depend on the window's values only (bit-identical across
# partition splits) but costs O(window) per row; here the rows where recomputes happen depend
# on where a pass starts, so a partition with context agrees with a single pass to ~1e-13,
# not bit for bit.
_CANCEL = 1e-3
_TINY_D = 1e-140
_TINY_S2 = 1e-280


@jit
def _recompute(values, lo, hi):
    """Exact window state over values[lo:hi]: (count, c, k, s1, s2)."""
    n = 0
    amax = 0.0
    for j in range(lo, hi):
        v = values[j]
        if v == v:
            n += 1
            a = abs(v)
            if a > amax:
                amax = a
    if n == 0:
        return 0, 1.0, 0.0, 0.0, 0.0
    if not amax < np.inf:
        # An infinite value: mean is +-inf or NaN (from the plain sum), std NaN. The NaN s2
        # makes the next row recompute again, until the infinite value has left the window.
        total = 0.0
        for j in range(lo, hi):
            v = values[j]
            if v == v:
                total += v
        return n, 1.0, 0.0, total, np.nan
    e = math.frexp(amax)[1]
    c = math.ldexp(1.0, -min(max(e, -1000), 1023))  # 1/c stays finite
    total = 0.0
    for j in range(lo, hi):
        v = values[j]
        if v == v:
            total += v * c
    k = total / n
    s1 = 0.0
    s2 = 0.0
    for j in range(lo, hi):
        v = values[j]
        if v == v:
            d = v * c - k
            s1 += d
            s2 += d * d
    return n, c, k, s1, s2


@jit
def _group_rolling(keys, values, window, min_periods, closed, skip, mean, std, count):
    back = window - 1 if closed == 1 else window  # rows before the current one
    inc = 0 if closed == 0 else 1  # 1 if the current row is in its window
    min_mean = max(min_periods, 1)
    min_std = max(min_periods, 2)
    resync = max(4 * window, 256)
    # 1/n and 1/(n - 1) from tables: no division in the per-row work.
    inv = np.zeros(window + 2, np.float64)
    for j in range(1, window + 2):
        inv[j] = 1.0 / j
    run_start = 0
    lo = 0
    hi = 0
    n = 0
    c = 1.0
    inv_c = 1.0
    k = 0.0
    s1 = 0.0
    s2 = 0.0
    peak = 0.0
    since = 0
    tiny = False
    for i in range(keys.size):
        if i == 0 or keys[i] != keys[i - 1]:
            run_start = i
            lo = i
            hi = i
            n = 0
            c = 1.0
            inv_c = 1.0
            k = 0.0
            s1 = 0.0
            s2 = 0.0
            peak = 0.0
            since = 0
            tiny = False
        new_hi = i + inc
        new_lo = max(run_start, i - back)
        while hi < new_hi:
            v = values[hi]
            if v == v:
                d = v * c - k
                s1 += d
                s2 += d * d
                n += 1
                tiny |= 0.0 < abs(d) < _TINY_D
            hi += 1
        while lo < new_lo:
            v = values[lo]
            if v == v:
                d = v * c - k
                s1 -= d
                s2 -= d * d
                n -= 1
            lo += 1
        since += 1
        if n == 0:
            c = 1.0
            inv_c = 1.0
            k = 0.0
            s1 = 0.0
            s2 = 0.0
            peak = 0.0
            since = 0
            tiny = False
        else:
            if s2 > peak:
                peak = s2
            offset = s1 * inv[n]
            spread = s2 - s1 * offset if n >= 2 else s2
            if (since >= resync or not abs(s1) < np.inf or not s2 < np.inf
                    or not spread >= _CANCEL * peak or not abs(k + offset) >= _CANCEL * abs(k)
                    or (tiny and s2 < _TINY_S2)):
                n, c, k, s1, s2 = _recompute(values, lo, hi)
                inv_c = 1.0 / c
                peak = s2
                since = 0
                tiny = False
        if i >= skip:
            o = i - skip
            count[o] = n
            mean[o] = (k + s1 * inv[n]) * inv_c if n >= min_mean else np.nan
            if n >= min_std:
                var = (s2 - s1 * s1 * inv[n]) * inv[n - 1]
                std[o] = math.sqrt(var) * inv_c if var > 0.0 else (0.0 if var <= 0.0 else np.nan)
            else:
                std[o] = np.nan


def group_rolling(keys: np.ndarray, values: np.ndarray, window: int, min_periods: int = 1,
                  closed: str = "left",
                  skip: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rolling mean, sample std and count over the previous rows of the same key.

    For row ``i`` in a run of its key starting at row ``s``, the window is, as in pandas'
    ``groupby(key).rolling(window, closed=...)``:

    - ``closed="left"`` (default): rows ``max(s, i - window) .. i - 1``, the ``window`` rows
      before ``i``, *excluding* row ``i``: no target leakage when used as a feature;
    - ``"right"``: rows ``max(s, i - window + 1) .. i`` (``window`` rows ending at ``i``);
    - ``"both"``: rows ``max(s, i - window) .. i`` (up to ``window + 1`` rows).

    Over the non-NaN values ``x_1 .. x_n`` of the window (NaN values are skipped)::

        count = n
        mean  = sum(x) / n                             if n >= max(min_periods, 1) else NaN
        std   = sqrt(sum((x - mean)**2) / (n - 1))     if n >= max(min_periods, 2) else NaN

    A window containing ±inf has mean ±inf (NaN if both signs) and std NaN, like pandas.
    The sums are updated in O(1) per row and recomputed exactly when rounding could matter
    (see the comment in the source), so mean and std agree with a two-pass computation to
    ~1e-10 relative (exactly on the rows where the state was recomputed).

    Parameters
    ----------
    keys : (n,) integer array
        Group of each row; each key must occupy one contiguous run (checked in O(n); the
        first offending row is named).
    values : (n,) numeric array
        NaN = missing.
    window : int
        Number of rows, >= 1.
    min_periods : int
        Minimum number of non-NaN values for a result, ``0 <= min_periods <=`` rows in a
        window (``window``, or ``window + 1`` for ``"both"``).
    closed : {"left", "right", "both"}
    skip : int
        The first ``skip`` rows are context only (e.g. the last ``window`` rows of the
        previous partition); results are returned for rows ``skip .. n - 1``.

    Returns
    -------
    mean, std : (n - skip,) float64 arrays
    count : (n - skip,) int64 array

    Examples
    --------
    >>> keys = np.array([1, 1, 1, 1, 2, 2])
    >>> values = np.array([1.0, 2.0, 4.0, np.nan, 10.0, 20.0])
    >>> mean, std, count = group_rolling(keys, values, window=2)
    >>> mean
    array([ nan,  1. ,  1.5,  3. ,  nan, 10. ])
    >>> count
    array([0, 1, 2, 2, 0, 1])
    """
    keys, values = _check_keys_values(keys, values)
    window = int_scalar(window, "window", minimum=1)
    closed = choice(closed, "closed", tuple(_CLOSED))
    max_rows = window + 1 if closed == "both" else window
    min_periods = int_scalar(min_periods, "min_periods", minimum=0, maximum=max_rows)
    skip = int_scalar(skip, "skip", minimum=0, maximum=len(keys))
    _check_grouped(keys)
    n_out = len(keys) - skip
    mean, std = np.empty(n_out, np.float64), np.empty(n_out, np.float64)
    count = np.empty(n_out, np.int64)
    _group_rolling(keys, values, window, min_periods, _CLOSED[closed], skip, mean, std, count)
    return mean, std, count


# --------------------------------------------------------------------------- lag


@jit
def _group_lag(keys, values, lag, skip, out):
    run_start = 0
    for i in range(keys.size):
        if i > 0 and keys[i] != keys[i - 1]:
            run_start = i
        if i >= skip:
            out[i - skip] = values[i - lag] if i - lag >= run_start else np.nan


def group_lag(keys: np.ndarray, values: np.ndarray, lag: int = 1, skip: int = 0) -> np.ndarray:
    """Value ``lag`` rows earlier in the same key: ``out[i] = values[i - lag]``, else NaN.

    NaN when row ``i - lag`` belongs to another key (or does not exist); a NaN value stays
    NaN. Equals pandas' ``groupby(key).shift(lag)`` on rows sorted by key, then time.

    Parameters
    ----------
    keys : (n,) integer array
        Group of each row; each key must occupy one contiguous run (checked).
    values : (n,) numeric array
        NaN = missing.
    lag : int
        >= 1 (only past rows: no leakage).
    skip : int
        The first ``skip`` rows are context only (the last ``lag`` rows of the previous
        partition); results are returned for rows ``skip .. n - 1``.

    Returns
    -------
    (n - skip,) float64 array

    Examples
    --------
    >>> group_lag(np.array([1, 1, 1, 2]), np.array([1.0, 2.0, 3.0, 4.0]))
    array([nan,  1.,  2., nan])
    """
    keys, values = _check_keys_values(keys, values)
    lag = int_scalar(lag, "lag", minimum=1)
    skip = int_scalar(skip, "skip", minimum=0, maximum=len(keys))
    _check_grouped(keys)
    out = np.empty(len(keys) - skip, np.float64)
    _group_lag(keys, values, lag, skip, out)
    return out
