"""Kernels against the idiomatic pandas/numpy/scipy way of computing the same thing.

Every figure is rows per second (higher is better), best of 3 after a warm-up call (so JIT
compilation is excluded), on single-threaded code: our kernels run one partition per thread
under Dask. Ours and the baseline are timed alternately (ours, baseline, ours, ...) so that a
change in machine load hits both. The machine's memory bandwidth (a numpy copy into a
preallocated array, bytes read + written) is measured in the same loop, next to each streaming
kernel; an extra row gives the fraction of it the kernel reaches, counting the bytes it must
read and write (its output allocation and first touch included, as a caller pays them).

Goals: no kernel slower than its pandas/numpy equivalent (ratio >= 1); the rolling window
>= 20x pandas' ``groupby().rolling()``; streaming kernels >= 30 % of memory bandwidth.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

import kernels as K

ROWS = 10_000_000
N_LEVELS = 100_000
N_KEYS = 100_000
WINDOW = 30
N_FOLDS = 5
N_BUCKETS = 2**20


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class _Bench:
    def __init__(self, n: int) -> None:
        self.n = n
        self.rows: list[dict] = []
        self._src = np.random.default_rng(1).random(n)
        self._dst = np.empty_like(self._src)
        np.copyto(self._dst, self._src)  # touch the pages once

    def _copy(self) -> None:
        np.copyto(self._dst, self._src)

    def compare(self, operation: str, ours: Callable[[], object], warm: Callable[[], object],
                baseline: Callable[[], object], baseline_name: str, goal: float = 1.0,
                size: int | None = None, bytes_per_row: float | None = None,
                repeat: int = 3) -> None:
        size = size or self.n
        warm()  # compiles the same signature on a small slice
        t_ours = t_base = t_copy = float("inf")
        for _ in range(repeat):
            t_ours = min(t_ours, _timed(ours))
            t_base = min(t_base, _timed(baseline))
            if bytes_per_row is not None:
                t_copy = min(t_copy, _timed(self._copy), _timed(self._copy))
        ratio = t_base / t_ours
        self.rows.append({
            "benchmark": "kernels", "operation": operation, "size": f"{size:,} rows",
            "ours": size / t_ours, "baseline": size / t_base, "baseline_name": baseline_name,
            "unit": "rows/s", "ratio": round(ratio, 2), "goal": f">= {goal:g}x",
            "met": bool(ratio >= goal)})
        if bytes_per_row is not None:
            bandwidth = 2 * self._src.nbytes / t_copy / 1e9
            achieved = bytes_per_row * size / t_ours / 1e9
            fraction = achieved / bandwidth
            self.rows.append({
                "benchmark": "kernels", "operation": f"{operation}: memory bandwidth",
                "size": f"{size:,} rows, {bytes_per_row:g} B/row", "ours": achieved,
                "baseline": bandwidth, "baseline_name": "numpy copy (read+write)",
                "unit": "GB/s", "ratio": round(fraction, 2),
                "goal": ">= 30% of memory bandwidth", "met": bool(fraction >= 0.30)})


def _strings_arrow_layout(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """'user-<id>' strings as an object array and as Arrow's (values, offsets) buffers."""
    strings = np.array([f"user-{i}" for i in ids.tolist()], dtype=object)
    encoded = [s.encode() for s in strings]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return strings, np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def _bench_hash_bytes(b: _Bench, ids: np.ndarray) -> None:
    import pandas as pd

    strings, data, offsets = _strings_arrow_layout(ids)
    b.compare("hash_bytes (Arrow strings)", lambda: K.hash_bytes(data, offsets, N_BUCKETS),
              lambda: K.hash_bytes(data, offsets[:1001], N_BUCKETS),
              lambda: pd.util.hash_array(strings) % N_BUCKETS,
              "pd.util.hash_array(object strings) % n")


def run(scale: float = 1.0) -> list[dict]:
    import pandas as pd
    import scipy.special
    import scipy.stats

    n = max(int(ROWS * scale), 10_000)
    rng = np.random.default_rng(0)
    b = _Bench(n)
    few = slice(0, 1000)

    # ---------------------------------------------------------------- encoding
    codes = rng.integers(-1, N_LEVELS, n)
    y = rng.normal(size=n)
    folds = rng.integers(0, N_FOLDS, n)
    s_codes = pd.Series(codes)
    table = K.count_table(codes, N_LEVELS)
    b.compare("count_table", lambda: K.count_table(codes, N_LEVELS),
              lambda: K.count_table(codes[few], N_LEVELS),
              lambda: np.bincount(codes[codes >= 0], minlength=N_LEVELS),
              "np.bincount(codes[codes >= 0])")
    b.compare("count_encode (table + apply)",
              lambda: K.count_encode(codes, K.count_table(codes, N_LEVELS)),
              lambda: K.count_encode(codes[few], table),
              lambda: s_codes.map(s_codes.value_counts()), "pandas s.map(s.value_counts())")
    lut = np.append(table.astype(np.float64), 0.0)  # index -1 -> the appended 0
    b.compare("count_encode apply", lambda: K.count_encode(codes, table),
              lambda: K.count_encode(codes[few], table), lambda: lut[codes],
              "numpy lut[codes] (fancy indexing)", bytes_per_row=16)

    df = pd.DataFrame({"c": codes, "y": y, "f": folds})
    b.compare("target_stats", lambda: K.target_stats(codes, y, N_LEVELS),
              lambda: K.target_stats(codes[few], y[few], N_LEVELS),
              lambda: df.groupby("c")["y"].agg(["sum", "count"]),
              "pandas groupby(c).y.agg([sum, count])")
    b.compare("target_stats_folds", lambda: K.target_stats_folds(codes, y, folds, N_FOLDS,
                                                                  N_LEVELS),
              lambda: K.target_stats_folds(codes[few], y[few], folds[few], N_FOLDS, N_LEVELS),
              lambda: df.groupby(["f", "c"])["y"].agg(["sum", "count"]),
              "pandas groupby([fold, c]).y.agg([sum, count])")
    sums, counts = K.target_stats(codes, y, N_LEVELS)
    enc = pd.Series((sums + 10 * 0.0) / (counts + 10))
    b.compare("target_encode apply", lambda: K.target_encode(codes, sums, counts, 0.0, 10.0),
              lambda: K.target_encode(codes[few], sums, counts, 0.0, 10.0),
              lambda: s_codes.map(enc).fillna(0.0), "pandas s.map(encoding).fillna(prior)")
    fold_sums, fold_counts = K.target_stats_folds(codes, y, folds, N_FOLDS, N_LEVELS)

    def pandas_oof() -> object:
        out = np.empty(n)
        for f in range(N_FOLDS):
            rows = (df["f"] == f).to_numpy()
            st = df[~rows].groupby("c")["y"].agg(["sum", "count"])
            e = (st["sum"] + 10 * 0.0) / (st["count"] + 10)
            out[rows] = df.loc[rows, "c"].map(e).fillna(0.0).to_numpy()
        return out

    b.compare("target_stats_folds + target_encode_oof",
              lambda: K.target_encode_oof(codes, folds, *K.target_stats_folds(
                  codes, y, folds, N_FOLDS, N_LEVELS), 0.0, 10.0),
              lambda: K.target_encode_oof(codes[few], folds[few], fold_sums, fold_counts,
                                          0.0, 10.0),
              pandas_oof, "pandas: per fold, groupby of the other folds + map")

    ids = rng.integers(0, 2**40, n)
    _bench_hash_bytes(b, ids)  # in a function: the 10M Python strings are freed after it
    b.compare("hash_int64", lambda: K.hash_int64(ids, N_BUCKETS),
              lambda: K.hash_int64(ids[few], N_BUCKETS),
              lambda: pd.util.hash_array(ids) % N_BUCKETS, "pd.util.hash_array(int64) % n")

    # ---------------------------------------------------------------- binning
    x = rng.standard_t(4, size=n)
    x[::50] = np.nan
    edges = K.quantile_edges(x, 16)
    p = np.arange(1, 16) / 16
    b.compare("quantile_edges (16 bins)", lambda: K.quantile_edges(x, 16),
              lambda: K.quantile_edges(x[few], 16),
              lambda: np.unique(np.nanquantile(x, p)), "np.unique(np.nanquantile(x, p))")
    b.compare("bin_index (15 edges)", lambda: K.bin_index(x, edges),
              lambda: K.bin_index(x[few], edges),
              lambda: np.where(np.isnan(x), -1, np.searchsorted(edges, x, side="right")),
              "np.where(isnan, -1, np.searchsorted)")

    def numpy_bin_counts() -> object:
        ok = ~np.isnan(x)
        return (np.bincount(np.searchsorted(edges, x[ok], side="right"),
                            minlength=edges.size + 1), int(n - ok.sum()))

    b.compare("bin_counts (15 edges)", lambda: K.bin_counts(x, edges),
              lambda: K.bin_counts(x[few], edges), numpy_bin_counts,
              "np.searchsorted + np.bincount", bytes_per_row=8)
    b.compare("uniform_bin_counts (64 bins)", lambda: K.uniform_bin_counts(x, -5.0, 5.0, 64),
              lambda: K.uniform_bin_counts(x[few], -5.0, 5.0, 64),
              lambda: np.histogram(x, bins=64, range=(-5.0, 5.0)),
              "np.histogram(bins=64, range=...)", bytes_per_row=8)

    # ---------------------------------------------------------------- window
    keys = np.sort(rng.integers(0, N_KEYS, n))
    v = rng.normal(size=n)
    v[::37] = np.nan
    dfk = pd.DataFrame({"k": keys, "v": v})

    def pandas_rolling() -> object:
        roll = dfk.groupby("k")["v"].rolling(WINDOW, min_periods=1, closed="left")
        return roll.mean(), roll.std()

    b.compare(f"group_rolling mean+std+count (window {WINDOW})",
              lambda: K.group_rolling(keys, v, WINDOW),
              lambda: K.group_rolling(keys[few], v[few], WINDOW), pandas_rolling,
              "pandas groupby(k).v.rolling(w, closed=left).mean() and .std()", goal=20.0)
    b.compare("group_lag", lambda: K.group_lag(keys, v, 1),
              lambda: K.group_lag(keys[few], v[few], 1),
              lambda: dfk.groupby("k")["v"].shift(1), "pandas groupby(k).v.shift(1)")

    # ---------------------------------------------------------------- transforms
    t = rng.normal(scale=3.0, size=n)
    pos = np.exp(rng.normal(size=n))
    b.compare("signed_log1p", lambda: K.signed_log1p(t), lambda: K.signed_log1p(t[few]),
              lambda: np.sign(t) * np.log1p(np.abs(t)), "np.sign(x) * np.log1p(np.abs(x))",
              bytes_per_row=16)
    b.compare("yeo_johnson (lambda 0.5)", lambda: K.yeo_johnson(t, 0.5),
              lambda: K.yeo_johnson(t[few], 0.5),
              lambda: scipy.stats.yeojohnson(t, lmbda=0.5), "scipy.stats.yeojohnson(x, 0.5)")
    b.compare("box_cox (lambda 0.5)", lambda: K.box_cox(pos, 0.5),
              lambda: K.box_cox(pos[few], 0.5),
              lambda: scipy.stats.boxcox(pos, lmbda=0.5), "scipy.stats.boxcox(x, 0.5)")
    m = min(n, 1_000_000)
    b.compare("yeo_johnson_lambda (fit)", lambda: K.yeo_johnson_lambda(t[:m]),
              lambda: K.yeo_johnson_lambda(t[few]),
              lambda: scipy.stats.yeojohnson_normmax(t[:m]), "scipy.stats.yeojohnson_normmax",
              size=m)
    b.compare("box_cox_lambda (fit)", lambda: K.box_cox_lambda(pos[:m]),
              lambda: K.box_cox_lambda(pos[few]),
              lambda: scipy.stats.boxcox_normmax(pos[:m], method="mle"),
              "scipy.stats.boxcox_normmax(method=mle)", size=m)
    den = rng.normal(size=n)
    den[::10] = 0.0

    def numpy_ratio() -> object:
        return np.divide(t, den, out=np.full(n, np.nan), where=den != 0)

    b.compare("pairwise ratio", lambda: K.pairwise(t, den, "ratio"),
              lambda: K.pairwise(t[few], den[few], "ratio"), numpy_ratio,
              "np.divide(a, b, out=nan, where=b != 0)", bytes_per_row=24)
    return b.rows
