"""KernelFeatures: fitted on dask equals fitted on pandas, per kernel; lazy; a plain estimator."""

from __future__ import annotations

from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from pipeline.features import KernelFeatures
from pipeline.preprocess import SchemaError
from tests.pipeline.test_preprocess import assert_same_state, dask_equals_pandas, frame


@pytest.fixture(autouse=True)
def threads():
    # as in test_preprocess: keep pandas' own str dtype on from_pandas, so outputs compare exactly
    with dask.config.set({"scheduler": "threads", "dataframe.convert-string": False}):
        yield


def keyed_frame(n: int = 3000) -> pd.DataFrame:
    """:func:`frame` with an integer key and a time, sorted by (key, time) and indexed by the
    key: ``dd.from_pandas`` then keeps every key in one partition, as window features need."""
    df = frame(n)
    rng = np.random.default_rng(4)
    df["cust"] = rng.integers(0, 40, n)
    df["t"] = rng.permutation(n).astype(float)
    df = df.sort_values(["cust", "t"], kind="stable")
    return df.set_index(pd.Index(df["cust"].to_numpy(), name="part"))


# one spec per kernel kind (and option that changes the fitted state or the output)
KINDS = {
    "log1p": {"kernel": "log1p", "columns": ["x", "big"]},
    "yeo_johnson": {"kernel": "yeo_johnson", "columns": ["x", "count"]},
    "box_cox": {"kernel": "box_cox", "columns": ["big"]},
    "count": {"kernel": "count", "columns": ["many", "k", "cust"]},
    "frequency": {"kernel": "count", "columns": ["many"], "normalize": True},
    "ratio": {"kernel": "ratio", "columns": ["x", "count"]},
    "product": {"kernel": "product", "columns": ["x", "count", "big"]},
    "difference": {"kernel": "difference", "columns": ["x", "big"]},
    "sum": {"kernel": "sum", "columns": ["x", "big"], "pairs": [("big", "x")]},
    "bin": {"kernel": "bin", "columns": ["big", "x"], "n_bins": 8},
    "hash": {"kernel": "hash", "columns": ["k", "cust"], "n_buckets": 16},
    "rolling": {"kernel": "rolling", "columns": ["x"], "key": "cust", "time": "t",
                "window": 4, "stats": ["mean", "std", "count"]},
    "lag": {"kernel": "lag", "columns": ["x", "big"], "key": "cust", "time": "t", "lag": 2},
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kernel_dask_equals_pandas(kind: str) -> None:
    df = keyed_frame()
    kf = dask_equals_pandas(lambda: KernelFeatures([KINDS[kind]]), df)
    out = kf.transform(df)
    added = [c for c in out.columns if c not in df.columns]
    assert len(out) == len(df) and (added or kind in ("log1p", "yeo_johnson", "box_cox"))
    assert out[added].notna().any().all()  # every new column holds values, not only NaN


def test_kernel_features_dask_equals_pandas_and_references() -> None:
    df = frame()
    df["cust"] = np.random.default_rng(2).integers(0, 40, len(df))
    df["t"] = np.arange(len(df))
    specs = [
        {"kernel": "log1p", "columns": ["big"]},
        {"kernel": "yeo_johnson", "columns": ["x"]},
        {"kernel": "count", "columns": ["many"], "normalize": False},
        {"kernel": "ratio", "columns": ["x", "count"], "pairs": [("x", "count")]},
        {"kernel": "bin", "columns": ["big"], "n_bins": 10},
        {"kernel": "hash", "columns": ["k"], "n_buckets": 16},
    ]
    kf = dask_equals_pandas(lambda: KernelFeatures(specs), df)
    out = kf.transform(df)
    np.testing.assert_allclose(out["big"], np.log1p(df["big"]), rtol=1e-12)
    assert (out["many__count"] == df["many"].map(df["many"].value_counts())).all()
    from scipy import stats

    lmbda = stats.yeojohnson_normmax(df["x"].dropna().to_numpy())
    assert kf.lambdas_["x"] == pytest.approx(lmbda, rel=1e-3)
    # features apply in order: the ratio sees the transformed x, the bins log1p(big)
    x_yj = stats.yeojohnson(df["x"].to_numpy(), kf.lambdas_["x"])
    ratio = x_yj / df["count"].replace(0, np.nan)
    np.testing.assert_allclose(out["x__ratio__count"], ratio, rtol=1e-9)
    logged = np.log1p(df["big"])
    edges = np.unique(np.quantile(logged, np.linspace(0, 1, 11)[1:-1]))
    # the same order statistics; numpy's linear interpolation may round the last bit apart
    np.testing.assert_allclose(kf.edges_["big"], edges, rtol=4 * np.finfo(float).eps, atol=0)
    assert (out["big__bin"] == np.searchsorted(kf.edges_["big"], logged, side="right")).all()
    assert kf.kernels_used_ == sorted({"signed_log1p", "yeo_johnson", "yeo_johnson_lambda",
                                       "count_encode", "pairwise", "bin_index", "hash_bytes"})


def test_window_features_match_pandas_rolling() -> None:
    rng = np.random.default_rng(5)
    n = 600
    df = pd.DataFrame({"cust": rng.integers(0, 30, n), "t": rng.permutation(n).astype(float),
                       "v": rng.normal(size=n)})
    kf = KernelFeatures([{"kernel": "rolling", "columns": ["v"], "key": "cust", "time": "t",
                          "window": 3, "stats": ["mean", "std", "count"]},
                         {"kernel": "lag", "columns": ["v"], "key": "cust", "time": "t",
                          "lag": 2}], drop=["cust", "t"]).fit(df)
    out = kf.transform(df)
    assert "cust" not in out.columns
    ordered = df.sort_values(["cust", "t"])
    shifted = ordered.groupby("cust")["v"].shift(1)
    roll = shifted.groupby(ordered["cust"]).rolling(3, min_periods=1)
    np.testing.assert_allclose(out.loc[ordered.index, "v__roll3_mean"],
                               roll.mean().droplevel(0).loc[ordered.index], rtol=1e-10)
    np.testing.assert_allclose(out.loc[ordered.index, "v__roll3_std"],
                               roll.std().droplevel(0).loc[ordered.index], rtol=1e-8)
    np.testing.assert_allclose(out.loc[ordered.index, "v__lag2"],
                               ordered.groupby("cust")["v"].shift(2), rtol=0)


def _forbidden(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("computed")


def test_transform_is_lazy_with_the_meta_of_its_output() -> None:
    df = keyed_frame()
    kf = KernelFeatures(list(KINDS.values()), drop=["t"]).fit(df)
    ddf = dd.from_pandas(df, npartitions=5)
    with dask.config.set(scheduler=_forbidden):  # building the graph computes nothing
        lazy = kf.transform(ddf)
    assert isinstance(lazy, dd.DataFrame) and lazy.npartitions == 5
    out = lazy.compute()
    assert list(lazy.columns) == list(out.columns)
    assert lazy.dtypes.to_dict() == out.dtypes.to_dict()
    pd.testing.assert_frame_equal(out, kf.transform(df))


def test_a_text_column_for_a_numeric_kernel_is_refused_before_compute() -> None:
    def boom(_: int) -> pd.DataFrame:
        raise AssertionError("computed")

    lazy = dd.from_map(boom, [0], meta=frame(0))
    with pytest.raises(SchemaError, match="a str column; it needs a numeric column"):
        KernelFeatures([{"kernel": "log1p", "columns": ["k"]}]).fit(lazy)


def test_params_round_trip_and_clone_is_unfitted() -> None:
    df = keyed_frame(500)
    specs = [dict(KINDS["bin"]), dict(KINDS["count"])]
    kf = KernelFeatures(specs, drop=["t"])
    assert kf.get_params() == {"features": specs, "drop": ["t"]}
    again = KernelFeatures().set_params(**kf.get_params())
    assert again.get_params() == kf.get_params()
    kf.fit(df)
    assert kf.features == specs and kf.features[0] is specs[0]  # fit changes no parameter
    twin = clone(kf)
    assert twin.get_params() == kf.get_params() and not hasattr(twin, "specs_")
    assert_same_state(twin.fit(df), kf)
    pd.testing.assert_frame_equal(twin.transform(df), kf.transform(df))
    fewer = clone(kf).set_params(features=specs[:1]).fit(df)
    assert "many__count" not in fewer.transform(df).columns
