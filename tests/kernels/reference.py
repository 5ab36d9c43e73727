"""Slow, obvious references for every kernel: Python loops over plain values.

Each function follows the formula in the kernel's docstring as literally as possible, so that a
disagreement points at the kernel. Exact arithmetic (``fractions``/``statistics``) is used
where the kernel promises a numerically careful result.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy as np

# --------------------------------------------------------------------------- encoding


def count_table(codes, n_levels):
    counts = [0] * n_levels
    for c in codes:
        c = int(c)
        if c >= n_levels:
            raise ValueError("code out of range")
        if c >= 0:
            counts[c] += 1
    return np.array(counts, dtype=np.int64)


def count_encode(codes, table, normalize=False):
    table = [float(t) for t in table]
    total = sum(table)
    out = []
    for c in codes:
        c = int(c)
        if 0 <= c < len(table):
            out.append(table[c] / total if normalize and total > 0 else
                       (0.0 if normalize else table[c]))
        else:
            out.append(0.0)
    return np.array(out, dtype=np.float64)


def target_stats(codes, y, n_levels):
    sums = [0.0] * n_levels
    counts = [0] * n_levels
    for c, v in zip(codes, y):
        c, v = int(c), float(v)
        if c >= n_levels:
            raise ValueError("code out of range")
        if c >= 0 and not math.isnan(v):
            sums[c] += v
            counts[c] += 1
    return np.array(sums), np.array(counts, dtype=np.int64)


def target_stats_folds(codes, y, folds, n_folds, n_levels):
    sums = np.zeros((n_folds, n_levels))
    counts = np.zeros((n_folds, n_levels), dtype=np.int64)
    for c, v, f in zip(codes, y, folds):
        c, v, f = int(c), float(v), int(f)
        if c >= 0 and not math.isnan(v):
            sums[f, c] += v
            counts[f, c] += 1
    return sums, counts


def _smoothed(s, n, prior, m):
    return (s + m * prior) / (n + m) if n + m > 0 else prior


def target_encode(codes, sums, counts, prior, smoothing):
    out = []
    for c in codes:
        c = int(c)
        if 0 <= c < len(sums):
            out.append(_smoothed(float(sums[c]), float(counts[c]), prior, smoothing))
        else:
            out.append(prior)
    return np.array(out, dtype=np.float64)


def target_encode_oof(codes, folds, fold_sums, fold_counts, prior, smoothing):
    k, n_levels = np.shape(fold_sums)
    out = []
    for c, f in zip(codes, folds):
        c, f = int(c), int(f)
        if not 0 <= c < n_levels:
            out.append(prior)
            continue
        s = 0.0
        n = 0.0
        for g in range(k):
            if g != f:
                s += float(fold_sums[g][c])
                n += float(fold_counts[g][c])
        out.append(_smoothed(s, n, prior, smoothing))
    return np.array(out, dtype=np.float64)


def murmur3_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3 x86_32 (Austin Appleby's reference C code), on Python ints."""
    mask = 0xFFFFFFFF

    def rotl(x, r):
        return ((x << r) | (x >> (32 - r))) & mask

    c1, c2 = 0xCC9E2D51, 0x1B873593
    h = seed & mask
    n_blocks = len(data) // 4
    for b in range(n_blocks):
        k = int.from_bytes(data[4 * b:4 * b + 4], "little")
        k = (k * c1) & mask
        k = rotl(k, 15)
        k = (k * c2) & mask
        h ^= k
        h = rotl(h, 13)
        h = (h * 5 + 0xE6546B64) & mask
    tail = data[4 * n_blocks:]
    if tail:
        k = int.from_bytes(tail, "little")
        k = (k * c1) & mask
        k = rotl(k, 15)
        k = (k * c2) & mask
        h ^= k
    h ^= len(data) & mask
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & mask
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & mask
    h ^= h >> 16
    return h


def hash_strings(strings: Sequence[str | bytes | None], n_buckets: int, seed: int = 0):
    out = []
    for s in strings:
        if s is None:
            out.append(-1)
        else:
            b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
            out.append(murmur3_32(b, seed) % n_buckets)
    return np.array(out, dtype=np.int64)


def splitmix64(state: int) -> int:
    """The splitmix64 output for a given state (Steele, Lea & Flood 2014; Vigna's C code)."""
    mask = (1 << 64) - 1
    z = (state + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def hash_int64(values, n_buckets, seed=0, valid=None):
    out = []
    for i, v in enumerate(values):
        if valid is not None and not valid[i]:
            out.append(-1)
        else:
            state = (int(v) + seed * 0x9E3779B97F4A7C15) % 2**64
            out.append(splitmix64(state) % n_buckets)
    return np.array(out, dtype=np.int64)


# --------------------------------------------------------------------------- binning


def _lerp(a, b, t):
    """numpy's "linear" interpolation formula; a convex combination where b - a overflows."""
    if t == 0 or a == b:
        return a
    if math.isinf(a) or math.isinf(b):
        if a == -math.inf and b == math.inf:
            return a if t < 0.5 else b
        return a if math.isinf(a) else b
    d = b - a
    if math.isinf(d):
        return a * (1 - t) + b * t
    return a + d * t if t < 0.5 else b - d * (1 - t)


def quantile_edges(values, n_bins):
    v = sorted(float(x) for x in values if not math.isnan(x))
    n = len(v)
    edges = []
    if n == 0:
        return np.array(edges, dtype=np.float64)
    for i in range(1, n_bins):
        h = (i / n_bins) * (n - 1)
        lo = math.floor(h)
        hi = min(lo + 1, n - 1)
        q = _lerp(v[lo], v[hi], h - lo)
        if not edges or q > edges[-1]:
            edges.append(q)
    return np.array(edges, dtype=np.float64)


def bin_index(values, edges):
    out = []
    for x in values:
        x = float(x)
        out.append(-1 if math.isnan(x) else sum(1 for e in edges if e <= x))
    return np.array(out, dtype=np.int32)


def bin_counts(values, edges):
    counts = [0] * (len(edges) + 1)
    missing = 0
    for b in bin_index(values, edges):
        if b < 0:
            missing += 1
        else:
            counts[b] += 1
    return np.array(counts, dtype=np.int64), missing


def uniform_bin_counts(values, lo, hi, n_bins, weights=None):
    counts = [0.0 if weights is not None else 0] * n_bins
    missing = 0.0 if weights is not None else 0
    scale = n_bins / (hi - lo)
    for i, x in enumerate(values):
        x = float(x)
        w = 1 if weights is None else float(weights[i])
        if math.isnan(x):
            missing += w
            continue
        t = (x - lo) * scale
        b = 0 if t < 1 else (n_bins - 1 if t >= n_bins else int(t))
        counts[b] += w
    return np.array(counts), missing


# --------------------------------------------------------------------------- window


def _window_rows(keys, i, window, closed):
    start = i
    while start > 0 and keys[start - 1] == keys[i]:
        start -= 1
    if closed == "left":
        lo, hi = i - window, i
    elif closed == "right":
        lo, hi = i - window + 1, i + 1
    else:
        lo, hi = i - window, i + 1
    return range(max(lo, start), hi)


def group_rolling(keys, values, window, min_periods=1, closed="left"):
    """Mean and sample std from exact rational arithmetic (statistics.mean/stdev)."""
    n = len(keys)
    mean = np.full(n, np.nan)
    std = np.full(n, np.nan)
    count = np.zeros(n, dtype=np.int64)
    for i in range(n):
        xs = [float(values[j]) for j in _window_rows(keys, i, window, closed)
              if not math.isnan(values[j])]
        count[i] = len(xs)
        if any(math.isinf(x) for x in xs):
            with np.errstate(all="ignore"):
                s = np.sum(np.array(xs))
            if len(xs) >= max(min_periods, 1):
                mean[i] = s / len(xs)
            continue
        if len(xs) >= max(min_periods, 1):
            mean[i] = statistics.mean(xs)
        if len(xs) >= max(min_periods, 2):
            try:
                std[i] = statistics.stdev(xs)
            except OverflowError:  # the true std exceeds the float range
                std[i] = math.inf
    return mean, std, count


def group_lag(keys, values, lag=1):
    n = len(keys)
    out = np.full(n, np.nan)
    for i in range(n):
        j = i - lag
        if j >= 0 and all(keys[t] == keys[i] for t in range(j, i)):
            out[i] = values[j]
    return out


# --------------------------------------------------------------------------- transform


def signed_log1p(x):
    out = []
    for v in x:
        v = float(v)
        if math.isnan(v):
            out.append(math.nan)
        else:
            out.append(math.copysign(math.log1p(abs(v)), v) if v != 0 else 0.0)
    return np.array(out)


def _safe(f, *args):
    try:
        return f(*args)
    except OverflowError:
        return math.inf


def yeo_johnson(x, lmbda):
    eps = np.finfo(np.float64).eps
    out = []
    for v in x:
        v = float(v)
        if math.isnan(v):
            out.append(math.nan)
        elif v >= 0:
            out.append(math.log1p(v) if abs(lmbda) < eps
                       else _safe(math.expm1, lmbda * math.log1p(v)) / lmbda)
        else:
            out.append(-math.log1p(-v) if abs(lmbda - 2) <= eps
                       else -_safe(math.expm1, (2 - lmbda) * math.log1p(-v)) / (2 - lmbda))
    return np.array(out)


def box_cox(x, lmbda):
    eps = np.finfo(np.float64).eps
    out = []
    for v in x:
        v = float(v)
        if math.isnan(v):
            out.append(math.nan)
        else:
            out.append(math.log(v) if abs(lmbda) < eps
                       else _safe(math.expm1, lmbda * math.log(v)) / lmbda)
    return np.array(out)


def yeo_johnson_llf(x, lmbda):
    y = yeo_johnson(x, lmbda)
    jac = sum(math.copysign(math.log1p(abs(v)), v) for v in x)
    return -len(x) / 2 * math.log(np.var(y)) + (lmbda - 1) * jac


def box_cox_llf(x, lmbda):
    y = box_cox(x, lmbda)
    return -len(x) / 2 * math.log(np.var(y)) + (lmbda - 1) * sum(math.log(v) for v in x)


def pairwise(a, b, op):
    out = []
    for u, v in zip(a, b):
        u, v = float(u), float(v)
        if op == "ratio":
            out.append(math.nan if v == 0 else u / v)
        elif op == "product":
            out.append(u * v)
        elif op == "difference":
            out.append(u - v)
        else:
            out.append(u + v)
    return np.array(out)


# --------------------------------------------------------------------------- drift


def psi(e, a, eps=1e-6):
    te, ta = sum(e), sum(a)
    total = 0.0
    for x, y in zip(e, a):
        p = max(x / te, eps)
        q = max(y / ta, eps)
        total += (q - p) * math.log(q / p)
    return total


def ks_from_counts(e, a):
    te, ta = sum(e), sum(a)
    ce = ca = 0.0
    best = 0.0
    for x, y in zip(e, a):
        ce += x
        ca += y
        best = max(best, abs(ce / te - ca / ta))
    return best


def chi_square(e, a):
    te, ta = sum(e), sum(a)
    n = te + ta
    stat = 0.0
    used = 0
    for x, y in zip(e, a):
        col = x + y
        if col == 0:
            continue
        used += 1
        for obs, row in ((x, te), (y, ta)):
            exp = col * row / n
            stat += (obs - exp) ** 2 / exp
    return stat, max(used - 1, 0)
