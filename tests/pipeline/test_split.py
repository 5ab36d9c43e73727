"""The split: seeded, partition-independent, stratified, and time-based on request."""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from pipeline.split import FOLD, HOLDOUT, TRAIN, VALID, assign_folds


def data(n: int = 20_000, positives: float = 0.05, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"x": rng.normal(size=n), "g": rng.integers(0, 1000, n),
                         "t": np.arange(n), "y": (rng.random(n) < positives).astype(int)})


def folds(df: pd.DataFrame, npartitions: int = 7, **kw: object) -> pd.DataFrame:
    args = {"target": "y", "task": "binary", "holdout": 0.2, "validation": 0.1, "seed": 0}
    args.update(kw)
    return assign_folds(dd.from_pandas(df, npartitions=npartitions), **args).compute()


def test_shares_and_stratification() -> None:
    df = data()
    out = folds(df)
    share = (out[FOLD] == HOLDOUT).mean()
    assert abs(share - 0.2) < 0.002
    valid_share = (out[FOLD] == VALID).sum() / (out[FOLD] != HOLDOUT).sum()
    assert abs(valid_share - 0.1) < 0.002
    # stratified: per partition and class, at most one row away from the exact share
    pos = df["y"].sum()
    held_pos = out.loc[out[FOLD] == HOLDOUT, "y"].sum()
    assert abs(held_pos - 0.2 * pos) <= 7 * 1 + 1  # 7 partitions x 1 row
    assert set(out[FOLD].unique()) == {TRAIN, VALID, HOLDOUT}


def test_a_rare_class_is_stratified() -> None:
    df = data(n=5000, positives=0.02)
    strat = folds(df, seed=1)
    pos = df["y"].sum()
    err_strat = abs(strat.loc[strat[FOLD] == HOLDOUT, "y"].sum() - 0.2 * pos)
    assert err_strat <= 8


def test_same_seed_same_split_regardless_of_partitioning() -> None:
    df = data(5000)
    a = folds(df, npartitions=1, stratify=False)
    b = folds(df, npartitions=9, stratify=False)
    pd.testing.assert_series_equal(a[FOLD], b[FOLD])
    c = folds(df, npartitions=9, stratify=False, seed=1)
    assert (c[FOLD] != a[FOLD]).any()


def test_deterministic_with_stratification() -> None:
    df = data(5000)
    pd.testing.assert_series_equal(folds(df)[FOLD], folds(df)[FOLD])


def test_time_split_holds_out_the_future() -> None:
    df = data(1000)
    out = folds(df, time_column="t", cutoff=799)
    assert (out.loc[out[FOLD] == HOLDOUT, "t"] > 799).all()
    assert (out.loc[out[FOLD] != HOLDOUT, "t"] <= 799).all()


def test_regression_is_not_stratified_but_splits() -> None:
    df = data(4000).assign(y=lambda d: d["x"] * 2)
    out = folds(df, task="regression")
    assert abs((out[FOLD] == HOLDOUT).mean() - 0.2) < 0.03


def test_empty_partitions_are_fine() -> None:
    df = data(100)
    ddf = dd.from_pandas(df, npartitions=4)
    ddf = ddf[ddf["x"] > 10]  # every partition empty
    out = assign_folds(ddf, target="y", task="binary", holdout=0.2, validation=0.1).compute()
    assert len(out) == 0 and FOLD in out.columns


@pytest.mark.parametrize("share", [0.01, 0.5, 0.99])
def test_extreme_shares(share: float) -> None:
    out = folds(data(3000), holdout=share, stratify=False)
    assert abs((out[FOLD] == HOLDOUT).mean() - share) < 0.03
