"""The feature pipeline through Dask on 2 workers vs the same kernels on the whole arrays.

Ours: ``KernelFeatures.transform`` (log1p, a ratio, count encoding, quantile bins, hashing)
applied per partition with ``map_partitions`` on a LocalCluster of 2 single-threaded workers,
over data already persisted on the workers (the way training uses it), reduced to one small
number per column so no output travels. Baseline, in the same run: the same kernels called
directly on the whole numpy arrays in this process (one core), with the same fitted tables.
Goal: the Dask pipeline within 1.2x of the direct calls (ratio >= 0.83).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

SPECS = [
    {"kernel": "log1p", "columns": ["amount"]},
    {"kernel": "ratio", "columns": ["amount", "income"], "pairs": [("amount", "income")]},
    {"kernel": "count", "columns": ["code"]},
    {"kernel": "bin", "columns": ["score"], "n_bins": 20},
]


def _data(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 5000, n)
    return pd.DataFrame({
        "amount": np.exp(rng.normal(8, 1, n)),
        "income": np.exp(rng.normal(10, 0.5, n)),
        "score": rng.normal(650, 60, n),
        "code": pd.Categorical.from_codes(codes, categories=[f"c{i}" for i in range(5000)]),
    })


def _direct(df: pd.DataFrame, fitted) -> float:
    """The kernels on the whole arrays, one process: the floor for the same work."""
    import kernels

    start = time.perf_counter()
    amount = np.ascontiguousarray(df["amount"].to_numpy())
    logged = kernels.signed_log1p(amount)
    ratio = kernels.pairwise(logged, np.ascontiguousarray(df["income"].to_numpy()), "ratio")
    vocab, table = fitted.tables_["code"]
    codes = np.ascontiguousarray(df["code"].cat.codes.to_numpy(dtype=np.int64))
    counted = kernels.count_encode(codes, table)
    bins = kernels.bin_index(np.ascontiguousarray(df["score"].to_numpy()), fitted.edges_["score"])
    _ = logged.sum() + ratio.sum() + counted.sum() + bins.sum()
    return time.perf_counter() - start


def run(scale: float = 1.0) -> list[dict]:
    import dask
    import dask.dataframe as dd
    from distributed import wait

    import cluster
    from pipeline.features import KernelFeatures

    n = max(100_000, int(10_000_000 * scale))
    df = _data(n)
    fitted = KernelFeatures(SPECS).fit(df.head(200_000))
    # the same tables for both sides: fitted once, the direct path reads them too
    _direct(df.head(1000), fitted)  # JIT warm-up
    direct = min(_direct(df, fitted) for _ in range(3))

    rows = []
    with cluster.connect({"n_workers": 2, "threads_per_worker": 1}) as client:
        ddf = dd.from_pandas(df, npartitions=16).persist()
        wait(ddf)
        [remote] = client.scatter([fitted], broadcast=True, hash=False)

        def reduce(part: pd.DataFrame, transformer) -> pd.DataFrame:
            out = transformer.transform(part)
            return out.select_dtypes("number").sum().to_frame().T

        meta = reduce(df.head(10), fitted)
        graph = ddf.map_partitions(reduce, remote, meta=meta)
        dask.compute(graph)  # warm-up: JIT and imports on the workers
        timings = []
        for _ in range(3):
            start = time.perf_counter()
            dask.compute(graph)
            timings.append(time.perf_counter() - start)
        ours = min(timings)
    rows.append({
        "benchmark": "features", "operation": "KernelFeatures via Dask (2 workers)",
        "size": f"{n:,} rows, 4 features", "ours": n / ours, "baseline": n / direct,
        "baseline_name": "same kernels on whole arrays, 1 process", "unit": "rows/s",
        "ratio": direct / ours, "goal": ">= 0.83 (within 1.2x)", "met": direct / ours >= 1 / 1.2,
    })
    return rows
