"""Categorical encodings: count tables, count and target encoding, stable feature hashing.

Categories arrive as integer codes ``0 .. n_levels - 1`` (e.g. pandas ``cat.codes``); ``-1``
(any negative code) means missing. Statistics (``count_table``, ``target_stats``,
``target_stats_folds``) are *mergeable*: compute them per partition and add the results, then
apply the encoders per partition with the merged tables.
"""

from __future__ import annotations

import numpy as np

from kernels._jit import jit
from kernels._validate import (
    bool_array,
    float_array,
    float_scalar,
    int_array,
    int_scalar,
    same_length,
)

__all__ = ["count_encode", "count_table", "hash_bytes", "hash_int64", "target_encode",
           "target_encode_oof", "target_stats", "target_stats_folds"]


def _raise_bad_code(codes: np.ndarray, row: int, n_levels: int, name: str = "codes") -> None:
    raise ValueError(
        f"{name}[{row}] = {codes[row]} is outside [0, n_levels) with n_levels={n_levels}; "
        f"codes must be -1 (missing) or a level index below n_levels")


@jit
def _first_outside(values, lo, hi):
    for i in range(values.size):
        v = values[i]
        if v < lo or v >= hi:
            return i
    return -1


# --------------------------------------------------------------------------- counts


@jit
def _count_table(codes, n_levels):
    counts = np.zeros(n_levels, np.int64)
    for i in range(codes.size):
        c = codes[i]
        if c < 0:
            continue
        if c >= n_levels:
            return counts, i
        counts[c] += 1
    return counts, -1


def count_table(codes: np.ndarray, n_levels: int) -> np.ndarray:
    """Count how often each level occurs.

    ``counts[l] = #{i : codes[i] == l}`` for ``l`` in ``0 .. n_levels - 1``. Negative codes
    (missing) are not counted. Tables of different partitions add up to the table of their
    union.

    Parameters
    ----------
    codes : (n,) integer array
        Level of each row; ``-1`` = missing.
    n_levels : int
        Number of levels, > 0.

    Returns
    -------
    counts : (n_levels,) int64 array

    Raises
    ------
    ValueError
        If a code is ``>= n_levels`` (the message names the first such row).

    Examples
    --------
    >>> count_table(np.array([0, 2, 2, -1]), n_levels=3)
    array([1, 0, 2])
    """
    codes = int_array(codes, "codes")
    n_levels = int_scalar(n_levels, "n_levels", minimum=1)
    counts, bad = _count_table(codes, n_levels)
    if bad >= 0:
        _raise_bad_code(codes, bad, n_levels)
    return counts


@jit
def _count_encode(codes, lut, out):
    n_levels = lut.size
    for i in range(codes.size):
        c = codes[i]
        out[i] = lut[c] if (c >= 0 and c < n_levels) else 0.0


def count_encode(codes: np.ndarray, table: np.ndarray, normalize: bool = False) -> np.ndarray:
    """Replace each code by the count (or frequency) of its level.

    ``out[i] = table[codes[i]]``, or ``table[codes[i]] / sum(table)`` when ``normalize``.
    A missing code (``< 0``) or a code unknown to ``table`` (``>= len(table)``) gives ``0.0``:
    a level never seen when the table was built has count 0. An all-zero table gives 0.0
    everywhere.

    Parameters
    ----------
    codes : (n,) integer array
        Level of each row; ``-1`` = missing.
    table : (n_levels,) array of non-negative counts
        Usually the (merged) result of :func:`count_table`.
    normalize : bool
        Divide by the table total.

    Returns
    -------
    (n,) float64 array

    Examples
    --------
    >>> count_encode(np.array([0, 2, -1]), np.array([1, 0, 3]), normalize=True)
    array([0.25, 0.75, 0.  ])
    """
    codes = int_array(codes, "codes")
    table = float_array(table, "table")
    if not isinstance(normalize, (bool, np.bool_)):
        raise TypeError(f"normalize must be a bool; got {normalize!r}")
    if table.size and not np.all(table >= 0):  # also rejects NaN
        raise ValueError(f"table must hold non-negative counts; got min {np.nanmin(table)}"
                         f"{' and NaN' if np.isnan(table).any() else ''}")
    lut = table
    if normalize:
        total = float(table.sum())
        lut = table / total if total > 0 else np.zeros_like(table)
    out = np.empty(codes.size, np.float64)
    _count_encode(codes, lut, out)
    return out


# --------------------------------------------------------------------------- target stats


@jit
def _target_stats(codes, y, n_levels):
    sums = np.zeros(n_levels, np.float64)
    counts = np.zeros(n_levels, np.int64)
    for i in range(codes.size):
        c = codes[i]
        if c < 0:
            continue
        if c >= n_levels:
            return sums, counts, i
        v = y[i]
        if v != v:  # NaN target: row does not count
            continue
        sums[c] += v
        counts[c] += 1
    return sums, counts, -1


def target_stats(codes: np.ndarray, y: np.ndarray,
                 n_levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum and count of the target per level.

    ``sums[l] = sum(y[i] for codes[i] == l)``, ``counts[l] = #{i : codes[i] == l}``, both over
    rows whose code is not missing (``>= 0``) and whose target is not NaN. Sums and counts of
    partitions add up to those of their union.

    Parameters
    ----------
    codes : (n,) integer array
        Level of each row; ``-1`` = missing.
    y : (n,) numeric array
        Target (bool and integer targets are converted to float64); NaN = missing.
    n_levels : int
        Number of levels, > 0.

    Returns
    -------
    sums : (n_levels,) float64 array
    counts : (n_levels,) int64 array

    Examples
    --------
    >>> target_stats(np.array([0, 1, 1, -1]), np.array([1.0, 0.0, 1.0, 1.0]), n_levels=2)
    (array([1., 1.]), array([1, 2]))
    """
    codes = int_array(codes, "codes")
    y = float_array(y, "y")
    same_length(("codes", codes), ("y", y))
    n_levels = int_scalar(n_levels, "n_levels", minimum=1)
    sums, counts, bad = _target_stats(codes, y, n_levels)
    if bad >= 0:
        _raise_bad_code(codes, bad, n_levels)
    return sums, counts


@jit
def _target_stats_folds(codes, y, folds, n_folds, n_levels):
    sums = np.zeros((n_folds, n_levels), np.float64)
    counts = np.zeros((n_folds, n_levels), np.int64)
    for i in range(codes.size):
        c = codes[i]
        if c < 0:
            continue
        if c >= n_levels:
            return sums, counts, i
        v = y[i]
        if v != v:
            continue
        f = folds[i]
        sums[f, c] += v
        counts[f, c] += 1
    return sums, counts, -1


def _check_folds(folds: np.ndarray, n_folds: int) -> None:
    bad = _first_outside(folds, 0, n_folds)
    if bad >= 0:
        raise ValueError(f"folds[{bad}] = {folds[bad]} is outside [0, n_folds) with "
                         f"n_folds={n_folds}; every row needs a fold in 0 .. n_folds - 1")


def target_stats_folds(codes: np.ndarray, y: np.ndarray, folds: np.ndarray, n_folds: int,
                       n_levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-fold sum and count of the target per level (see :func:`target_stats`).

    ``sums[f, l] = sum(y[i] for folds[i] == f and codes[i] == l)`` and likewise ``counts``,
    skipping missing codes and NaN targets. Mergeable across partitions by adding.

    Parameters
    ----------
    codes : (n,) integer array
        Level of each row; ``-1`` = missing.
    y : (n,) numeric array
        Target; NaN = missing.
    folds : (n,) integer array
        Fold of each row, in ``0 .. n_folds - 1``.
    n_folds, n_levels : int
        Both > 0.

    Returns
    -------
    sums : (n_folds, n_levels) float64 array
    counts : (n_folds, n_levels) int64 array

    Examples
    --------
    >>> s, c = target_stats_folds(np.array([0, 0, 1]), np.array([1.0, 3.0, 5.0]),
    ...                           np.array([0, 1, 1]), n_folds=2, n_levels=2)
    >>> s
    array([[1., 0.],
           [3., 5.]])
    """
    codes = int_array(codes, "codes")
    y = float_array(y, "y")
    folds = int_array(folds, "folds", what="fold numbers")
    same_length(("codes", codes), ("y", y), ("folds", folds))
    n_folds = int_scalar(n_folds, "n_folds", minimum=1)
    n_levels = int_scalar(n_levels, "n_levels", minimum=1)
    _check_folds(folds, n_folds)
    sums, counts, bad = _target_stats_folds(codes, y, folds, n_folds, n_levels)
    if bad >= 0:
        _raise_bad_code(codes, bad, n_levels)
    return sums, counts


# --------------------------------------------------------------------------- target encoding


@jit
def _smoothed(s, n, prior, m):
    d = n + m
    return (s + m * prior) / d if d > 0 else prior


@jit
def _target_encode(codes, sums, counts, prior, m, out):
    n_levels = sums.size
    lut = np.empty(n_levels, np.float64)
    for c in range(n_levels):
        lut[c] = _smoothed(sums[c], counts[c], prior, m)
    for i in range(codes.size):
        c = codes[i]
        out[i] = lut[c] if (c >= 0 and c < n_levels) else prior
    return out


def _check_stats(sums: np.ndarray, counts: np.ndarray, ndim: int,
                 names: tuple[str, str] = ("sums", "counts")) -> tuple[np.ndarray, np.ndarray]:
    s_name, c_name = names
    sums = float_array(sums, s_name, ndim=ndim)
    counts = float_array(counts, c_name, ndim=ndim)
    if sums.shape != counts.shape:
        raise ValueError(f"{s_name} and {c_name} must have the same shape; got {sums.shape} "
                         f"and {counts.shape}")
    if counts.size and not np.all(counts >= 0):
        raise ValueError(f"{c_name} must be non-negative; got min {np.nanmin(counts)}")
    return sums, counts


def target_encode(codes: np.ndarray, sums: np.ndarray, counts: np.ndarray, prior: float,
                  smoothing: float) -> np.ndarray:
    """Smoothed mean target of each row's level.

    ``out[i] = (sums[l] + m * prior) / (counts[l] + m)`` with ``l = codes[i]`` and
    ``m = smoothing`` (an m-estimate: the level mean shrunk towards ``prior`` with the weight
    of ``m`` pseudo-rows). A missing code, a code ``>= len(sums)`` or a level with
    ``counts + m == 0`` gives ``prior``.

    Parameters
    ----------
    codes : (n,) integer array
        Level of each row; ``-1`` = missing.
    sums, counts : (n_levels,) arrays
        From :func:`target_stats` (merged over partitions).
    prior : float
        Finite; usually the global target mean.
    smoothing : float
        ``m >= 0``.

    Returns
    -------
    (n,) float64 array

    Examples
    --------
    >>> target_encode(np.array([0, 1, -1]), np.array([3.0, 0.0]), np.array([3, 1]),
    ...               prior=0.5, smoothing=1.0)
    array([0.875, 0.25 , 0.5  ])
    """
    codes = int_array(codes, "codes")
    sums, counts = _check_stats(sums, counts, ndim=1)
    prior = float_scalar(prior, "prior")
    smoothing = float_scalar(smoothing, "smoothing", minimum=0.0)
    out = np.empty(codes.size, np.float64)
    _target_encode(codes, sums, counts, prior, smoothing, out)
    return out


@jit
def _target_encode_oof(codes, folds, fold_sums, fold_counts, prior, m, out):
    n_folds, n_levels = fold_sums.shape
    # Out-of-fold statistics are summed over the other folds rather than computed as
    # total - own fold: same value, but no cancellation when one fold dominates the total.
    lut = np.empty((n_folds, n_levels), np.float64)
    for f in range(n_folds):
        for c in range(n_levels):
            s = 0.0
            n = 0.0
            for g in range(n_folds):
                if g != f:
                    s += fold_sums[g, c]
                    n += fold_counts[g, c]
            lut[f, c] = _smoothed(s, n, prior, m)
    for i in range(codes.size):
        c = codes[i]
        out[i] = lut[folds[i], c] if (c >= 0 and c < n_levels) else prior


def target_encode_oof(codes: np.ndarray, folds: np.ndarray, fold_sums: np.ndarray,
                      fold_counts: np.ndarray, prior: float, smoothing: float) -> np.ndarray:
    """Out-of-fold target encoding: each row sees only the statistics of the *other* folds.

    With ``f = folds[i]`` and ``l = codes[i]``::

        S = sum(fold_sums[g, l] for g != f),  N = sum(fold_counts[g, l] for g != f)
        out[i] = (S + m * prior) / (N + m)

    so a training row is never encoded with its own target. Missing or unknown codes, and
    ``N + m == 0``, give ``prior``. Rows to be scored (no fold) use :func:`target_encode` with
    the totals ``fold_sums.sum(0)``, ``fold_counts.sum(0)``.

    Parameters
    ----------
    codes : (n,) integer array
        Level of each row; ``-1`` = missing.
    folds : (n,) integer array
        Fold of each row, in ``0 .. n_folds - 1``.
    fold_sums, fold_counts : (n_folds, n_levels) arrays
        From :func:`target_stats_folds` (merged over partitions).
    prior : float
        Finite.
    smoothing : float
        ``m >= 0``.

    Returns
    -------
    (n,) float64 array

    Examples
    --------
    >>> sums = np.array([[1.0], [3.0]]); counts = np.array([[1], [3]])
    >>> target_encode_oof(np.array([0, 0]), np.array([0, 1]), sums, counts, 0.0, 0.0)
    array([1., 1.])
    """
    codes = int_array(codes, "codes")
    folds = int_array(folds, "folds", what="fold numbers")
    same_length(("codes", codes), ("folds", folds))
    fold_sums, fold_counts = _check_stats(fold_sums, fold_counts, ndim=2,
                                          names=("fold_sums", "fold_counts"))
    if fold_sums.shape[0] == 0:
        raise ValueError(f"fold_sums must have at least one fold (row); got shape "
                         f"{fold_sums.shape}")
    prior = float_scalar(prior, "prior")
    smoothing = float_scalar(smoothing, "smoothing", minimum=0.0)
    _check_folds(folds, fold_sums.shape[0])
    out = np.empty(codes.size, np.float64)
    _target_encode_oof(codes, folds, fold_sums, fold_counts, prior, smoothing, out)
    return out


# --------------------------------------------------------------------------- hashing
# All hash arithmetic is done in uint64 with explicit masks: numba widens uint32 products to
# 64 bits and would turn uint64-op-int64 into float64, so every constant is a np.uint64.

_M32 = np.uint64(0xFFFFFFFF)
_C1 = np.uint64(0xCC9E2D51)
_C2 = np.uint64(0x1B873593)
_N1 = np.uint64(0xE6546B64)
_F1 = np.uint64(0x85EBCA6B)
_F2 = np.uint64(0xC2B2AE35)
_U5 = np.uint64(5)
_S8 = np.uint64(8)
_S13 = np.uint64(13)
_S15 = np.uint64(15)
_S16 = np.uint64(16)
_S17 = np.uint64(17)
_S19 = np.uint64(19)
_S24 = np.uint64(24)
_GOLDEN = 0x9E3779B97F4A7C15
_SM1 = np.uint64(0xBF58476D1CE4E5B9)
_SM2 = np.uint64(0x94D049BB133111EB)
_S27 = np.uint64(27)
_S30 = np.uint64(30)
_S31 = np.uint64(31)


@jit
def _murmur3_32(data, start, end, seed):
    """MurmurHash3 x86_32 of data[start:end]; returns a uint64 below 2**32."""
    h = seed
    n_blocks = (end - start) // 4
    for b in range(n_blocks):
        j = start + 4 * b
        k = (np.uint64(data[j]) | (np.uint64(data[j + 1]) << _S8)
             | (np.uint64(data[j + 2]) << _S16) | (np.uint64(data[j + 3]) << _S24))
        k = (k * _C1) & _M32
        k = ((k << _S15) | (k >> _S17)) & _M32
        k = (k * _C2) & _M32
        h ^= k
        h = ((h << _S13) | (h >> _S19)) & _M32
        h = (h * _U5 + _N1) & _M32
    j = start + 4 * n_blocks
    rem = end - j
    if rem > 0:
        k = np.uint64(0)
        if rem == 3:
            k ^= np.uint64(data[j + 2]) << _S16
        if rem >= 2:
            k ^= np.uint64(data[j + 1]) << _S8
        k ^= np.uint64(data[j])
        k = (k * _C1) & _M32
        k = ((k << _S15) | (k >> _S17)) & _M32
        k = (k * _C2) & _M32
        h ^= k
    h ^= np.uint64(end - start) & _M32
    h ^= h >> _S16
    h = (h * _F1) & _M32
    h ^= h >> _S13
    h = (h * _F2) & _M32
    h ^= h >> _S16
    return h


@jit
def _hash_bytes(data, offsets, n_buckets, seed, valid, has_valid, out):
    for i in range(offsets.size - 1):
        if has_valid and not valid[i]:
            out[i] = -1
        else:
            h = _murmur3_32(data, offsets[i], offsets[i + 1], seed)
            out[i] = np.int64(h % n_buckets)


@jit
def _first_decrease(offsets):
    for i in range(1, offsets.size):
        if offsets[i] < offsets[i - 1]:
            return i
    return -1


def _as_bytes(data: object) -> np.ndarray:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    arr = np.asarray(data)
    if arr.dtype not in (np.uint8, np.int8):
        raise TypeError(f"data must be a uint8 array (Arrow values buffer) or bytes; got dtype "
                        f"{arr.dtype} and shape {arr.shape}")
    if arr.ndim != 1:
        raise ValueError(f"data must be a 1-D array; got shape {arr.shape}")
    return np.ascontiguousarray(arr).view(np.uint8)


def _hash_seed(seed: object, bits: int) -> int:
    return int_scalar(seed, "seed", minimum=0, maximum=2**bits - 1)


def hash_bytes(data: np.ndarray | bytes, offsets: np.ndarray, n_buckets: int, seed: int = 0,
               valid: np.ndarray | None = None) -> np.ndarray:
    """Bucket of each string, from Arrow's string layout, with a stable hash.

    String ``i`` is ``data[offsets[i]:offsets[i + 1]]`` (its UTF-8 bytes), as in an Arrow
    ``string``/``large_string`` array (``arr.buffers()[2]`` and ``[1]``, or
    ``pyarrow.compute`` on chunks). Its bucket is::

        murmurhash3_x86_32(bytes, seed) mod n_buckets

    MurmurHash3 x86_32 of the bytes, as an unsigned 32-bit integer (the same function as
    ``sklearn.utils.murmurhash3_32(b, seed, positive=True)``). It is defined on bytes only, so
    the result is identical across processes, platforms, Python versions and runs (unlike
    Python's salted ``hash()``).

    Parameters
    ----------
    data : (m,) uint8 array or bytes
        Concatenated UTF-8 bytes.
    offsets : (n + 1,) int32 or int64 array
        Non-decreasing, ``0 <= offsets[0]``, ``offsets[-1] <= m``.
    n_buckets : int
        ``1 <= n_buckets <= 2**32``.
    seed : int
        ``0 <= seed < 2**32``.
    valid : (n,) bool array, optional
        False marks a null string; its bucket is ``-1``. (Arrow's bit-packed validity bitmap:
        ``arr.is_valid().to_numpy()``.)

    Returns
    -------
    (n,) int64 array of buckets in ``0 .. n_buckets - 1`` (or -1 for nulls).

    Examples
    --------
    >>> data = np.frombuffer("hellocafé".encode(), dtype=np.uint8)
    >>> hash_bytes(data, np.array([0, 5, 10]), n_buckets=2**32)
    array([613153351, 605818632])
    """
    data = _as_bytes(data)
    offsets_arr = np.asarray(offsets)
    if offsets_arr.dtype not in (np.int32, np.int64):
        raise TypeError(f"offsets must be an int32 or int64 array (Arrow offsets); got dtype "
                        f"{offsets_arr.dtype} and shape {offsets_arr.shape}")
    if offsets_arr.ndim != 1 or offsets_arr.size == 0:
        raise ValueError(f"offsets must be a 1-D array of n + 1 >= 1 positions; got shape "
                         f"{offsets_arr.shape}")
    offsets_arr = np.ascontiguousarray(offsets_arr)
    n_buckets = int_scalar(n_buckets, "n_buckets", minimum=1, maximum=2**32)
    seed = _hash_seed(seed, 32)
    if offsets_arr[0] < 0 or offsets_arr[-1] > data.size:
        raise ValueError(f"offsets must lie in [0, len(data)] = [0, {data.size}]; got first "
                         f"{offsets_arr[0]} and last {offsets_arr[-1]}")
    bad = _first_decrease(offsets_arr)
    if bad >= 0:
        raise ValueError(f"offsets must be non-decreasing; offsets[{bad}] = {offsets_arr[bad]} "
                         f"< offsets[{bad - 1}] = {offsets_arr[bad - 1]}")
    n = offsets_arr.size - 1
    if valid is None:
        valid_arr, has_valid = np.ones(0, np.bool_), False
    else:
        valid_arr, has_valid = bool_array(valid, "valid"), True
        if valid_arr.size != n:
            raise ValueError(f"valid must have one entry per string (len(offsets) - 1 = {n}); "
                             f"got {valid_arr.size}")
    out = np.empty(n, np.int64)
    _hash_bytes(data, offsets_arr, np.uint64(n_buckets), np.uint64(seed), valid_arr, has_valid,
                out)
    return out


@jit
def _hash_int64(bits, n_buckets, offset, valid, has_valid, out):
    for i in range(bits.size):
        if has_valid and not valid[i]:
            out[i] = -1
            continue
        z = bits[i] + offset
        z = (z ^ (z >> _S30)) * _SM1
        z = (z ^ (z >> _S27)) * _SM2
        z ^= z >> _S31
        out[i] = np.int64(z % n_buckets)


def hash_int64(values: np.ndarray, n_buckets: int, seed: int = 0,
               valid: np.ndarray | None = None) -> np.ndarray:
    """Bucket of each 64-bit integer, with the splitmix64 mixer.

    With ``z = (values[i] + (seed + 1) * 0x9E3779B97F4A7C15) mod 2**64`` (values taken as
    unsigned 64-bit)::

        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB
        bucket = (z ^ (z >> 31)) mod n_buckets

    i.e. the splitmix64 output for state ``values[i] + seed * 0x9E3779B97F4A7C15``. Stable
    across processes and platforms. These are raw identifiers, not codes: ``-1`` is hashed like
    any other value; use ``valid`` for nulls.

    Parameters
    ----------
    values : (n,) integer array
        Converted to int64.
    n_buckets : int
        ``1 <= n_buckets <= 2**63 - 1``.
    seed : int
        ``0 <= seed < 2**64``.
    valid : (n,) bool array, optional
        False marks a null; its bucket is ``-1``.

    Returns
    -------
    (n,) int64 array

    Examples
    --------
    >>> hash_int64(np.array([0, 1, -1]), n_buckets=1000)
    array([535, 465, 936])
    """
    arr = _asarray_int64(values)
    n_buckets = int_scalar(n_buckets, "n_buckets", minimum=1, maximum=2**63 - 1)
    seed = _hash_seed(seed, 64)
    offset = np.uint64(((seed + 1) * _GOLDEN) % 2**64)
    if valid is None:
        valid_arr, has_valid = np.ones(0, np.bool_), False
    else:
        valid_arr, has_valid = bool_array(valid, "valid"), True
        same_length(("values", arr), ("valid", valid_arr))
    out = np.empty(arr.size, np.int64)
    _hash_int64(arr.view(np.uint64), np.uint64(n_buckets), offset, valid_arr, has_valid, out)
    return out


def _asarray_int64(values: object) -> np.ndarray:
    arr = int_array(values, "values", what="integers")
    return np.ascontiguousarray(arr, dtype=np.int64)
