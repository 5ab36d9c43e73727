"""Preprocessing: fitted on dask equals fitted on pandas; agrees with scikit-learn; exact."""

from __future__ import annotations

from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.artifacts import dumps_skops, loads_skops
from pipeline.features import KernelFeatures
from pipeline.preprocess import (
    RARE,
    CategoricalEncoder,
    ColumnCleaner,
    Imputer,
    InputSchema,
    NativeCategorical,
    QuantileClipper,
    Scaler,
    SchemaError,
    exact_quantiles,
    quantile_passes,
)


@pytest.fixture(autouse=True)
def threads():
    # dask would turn pandas' str columns into string[pyarrow] on from_pandas; keep the
    # pandas frame's own dtypes so outputs compare exactly
    with dask.config.set({"scheduler": "threads", "dataframe.convert-string": False}):
        yield


def frame(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "x": rng.normal(10, 3, n),
        "big": np.exp(rng.normal(8, 2, n)),
        "count": rng.poisson(3, n).astype(float),
        "k": rng.choice(["a", "b", "c", "d", "e"], n, p=[0.5, 0.2, 0.15, 0.1, 0.05]),
        "many": np.char.add("L", rng.integers(0, 300, n).astype(str)),
        "const": 1.0,
        "empty": np.nan,
    })
    df.loc[rng.random(n) < 0.1, "x"] = np.nan
    df.loc[rng.random(n) < 0.05, "k"] = None
    df["k"] = df["k"].astype("str")
    df["many"] = df["many"].astype("str")
    return df


def fitted_state(est: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(est).items() if k.endswith("_") and not k.startswith("_")}


def assert_same_state(a: Any, b: Any) -> None:
    sa, sb = fitted_state(a), fitted_state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        _assert_equal(sa[key], sb[key], key)


def _assert_equal(a: Any, b: Any, where: str) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray) and a.dtype.kind == "f":
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=0, err_msg=where)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-12, nan_ok=True), where
    else:
        assert a == b, where


def dask_equals_pandas(make: Any, df: pd.DataFrame, y: np.ndarray | None = None,
                       npartitions: int = 7, fit_transform: bool = False) -> Any:
    """Fit on pandas and on dask; same fitted state, same output. Returns the pandas one."""
    local, remote = make(), make()
    ddf = dd.from_pandas(df, npartitions=npartitions)
    if fit_transform:
        out_local = local.fit_transform(df, y)
        dy = dd.from_pandas(pd.Series(y, index=df.index, name="y"), npartitions=npartitions)
        out_remote = remote.fit_transform(ddf, dy).compute()
    else:
        out_local = local.fit(df, y).transform(df)
        out_remote = remote.fit(ddf, y).transform(ddf).compute()
    assert_same_state(local, remote)
    pd.testing.assert_frame_equal(out_local, out_remote, check_exact=False, rtol=1e-12)
    return local


# --------------------------------------------------------------------------- exact quantiles


@pytest.mark.parametrize("n", [20_000, 70_000])  # the second descends by histograms first
def test_exact_quantiles_match_numpy_on_dask_and_pandas(n: int) -> None:
    df = frame(n)
    df["ties"] = np.round(df["x"], 0)  # heavy ties: selection goes deep into the keys
    df["neg"] = -df["big"]
    qs = [0.0, 0.001, 0.25, 0.5, 0.75, 0.999, 1.0]
    cols = ["x", "big", "count", "ties", "neg"]
    local = exact_quantiles(df, {c: qs for c in cols})
    remote = exact_quantiles(dd.from_pandas(df, npartitions=9), {c: qs for c in cols})
    for c in cols:
        expected = np.nanquantile(df[c].to_numpy(), qs)
        np.testing.assert_array_equal(local[c], remote[c])
        np.testing.assert_allclose(local[c], expected, rtol=1e-15, atol=0)


def test_exact_quantiles_edge_cases() -> None:
    df = pd.DataFrame({"empty": [np.nan] * 4, "one": [np.nan, 2.5, np.nan, np.nan],
                       "inf": [-np.inf, 0.0, 1.0, np.inf], "zeros": [0.0, -0.0, 0.0, 0.0]})
    q = exact_quantiles(df, {"empty": [0.5], "one": [0.1, 0.9], "inf": [0.0, 1.0],
                             "zeros": [0.5]})
    assert np.isnan(q["empty"][0])
    assert q["one"].tolist() == [2.5, 2.5]
    assert q["inf"].tolist() == [-np.inf, np.inf]
    assert q["zeros"][0] == 0.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=False, width=64), min_size=1,
                max_size=60), st.floats(0, 1))
def test_exact_quantiles_property(values: list[float], q: float) -> None:
    x = np.array(values)
    got = exact_quantiles(pd.DataFrame({"v": x}), {"v": [q]})["v"][0]
    finite = x[~np.isnan(x)]
    if len(finite) == 0:
        assert np.isnan(got)
    else:
        # interpolation rounds to an ulp of the values (q near 1 between 0 and -3: 4e-16)
        assert got == pytest.approx(float(np.quantile(finite, q)), rel=1e-12,
                                    abs=1e-15 * max(1.0, float(np.abs(finite).max())))


def test_exact_quantiles_need_more_than_one_pass_on_big_buckets() -> None:
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"v": 1.0 + rng.random(200_000) * 1e-9})  # one exponent, one bucket
    got = exact_quantiles(dd.from_pandas(df, npartitions=4), {"v": [0.5, 0.9]})["v"]
    np.testing.assert_allclose(got, np.quantile(df["v"], [0.5, 0.9]), rtol=1e-15)



def _passes(df: pd.DataFrame, wanted: dict) -> tuple[int, dict]:
    """The passes :func:`quantile_passes` asks for, and its answer (pandas: no cluster)."""
    passes, request, reply = 0, None, None
    run = quantile_passes(df, wanted)
    try:
        while True:
            request = run.send(reply)
            passes, reply = passes + 1, request  # on pandas, each request is already computed
    except StopIteration as stop:
        return passes, stop.value


def test_exact_quantiles_of_repeated_values_take_two_passes() -> None:
    # 200,000 whole-number scores: each 16-bit bucket spans many values, far over the
    # collect limit, but the second pass sees each value alone under its digit
    rng = np.random.default_rng(5)
    df = pd.DataFrame({"score": rng.integers(300, 851, 200_000).astype(float)})
    qs = list(np.linspace(0, 1, 21)[1:-1])
    passes, got = _passes(df, {"score": qs})
    assert passes == 2
    np.testing.assert_array_equal(got["score"], np.quantile(df["score"], qs))
    wide = pd.DataFrame({"v": 1.0 + rng.random(200_000) * 1e-9})
    passes, got = _passes(wide, {"v": [0.5]})
    assert passes > 2  # distinct values: the bucket is fetched once it is small enough
    assert got["v"][0] == np.quantile(wide["v"], 0.5)

# --------------------------------------------------------------------------- transformers


def test_input_schema_policy() -> None:
    df = frame(50)
    schema = InputSchema(columns=["x", "k"]).fit(df)
    out = schema.transform(df.assign(extra=1)[["extra", "k", "x"]])
    assert list(out.columns) == ["x", "k"]
    with pytest.raises(SchemaError, match="missing column 'x'"):
        schema.transform(df[["k"]])
    with pytest.raises(SchemaError, match="column 'x' must be numeric; found 'oops'"):
        schema.transform(df.assign(x="oops"))
    assert schema.report(df.assign(extra=1))["extra_columns"] == [
        c for c in df.columns if c not in ("x", "k")] + ["extra"]


def test_cleaner_records_every_drop() -> None:
    cleaner = dask_equals_pandas(lambda: ColumnCleaner(), frame())
    assert {d["column"]: d["reason"] for d in cleaner.dropped_} == {
        "const": "constant (1.0)", "empty": "all values missing"}
    kept = dask_equals_pandas(lambda: ColumnCleaner(protect=["const"]), frame())
    assert "const" in kept.columns_


def test_clipper_uses_exact_quantiles() -> None:
    df = frame()
    clip = dask_equals_pandas(lambda: QuantileClipper(0.01, 0.99, ["big"]), df)
    lo, hi = np.quantile(df["big"], [0.01, 0.99])
    assert clip.bounds_["big"] == (lo, hi)


@pytest.mark.parametrize("strategy", ["mean", "median", "most_frequent", "constant"])
def test_imputer_matches_sklearn(strategy: str) -> None:
    from sklearn.impute import SimpleImputer

    df = frame()[["x", "count"]]
    ours = dask_equals_pandas(lambda: Imputer(numeric=strategy, fill_value=-1.0), df)
    theirs = SimpleImputer(strategy=strategy, fill_value=-1.0).fit(df)
    out = ours.transform(df)
    np.testing.assert_allclose(out.to_numpy(), theirs.transform(df), rtol=1e-12)


def test_imputer_categorical_indicators_and_columns() -> None:
    df = frame()[["x", "k"]]
    imp = dask_equals_pandas(lambda: Imputer(categorical="most_frequent", indicators=True,
                                             columns={"x": {"strategy": "constant",
                                                            "value": 99.0}}), df)
    out = imp.transform(df)
    assert out["k"].isna().sum() == 0 and (out.loc[df["k"].isna(), "k"] == "a").all()
    assert (out.loc[df["x"].isna(), "x"] == 99.0).all()
    assert out["x__missing"].sum() == df["x"].isna().sum()
    with pytest.raises(SchemaError, match="median of 'k'"):
        Imputer(categorical="median").fit(df)


@pytest.mark.parametrize("method, cls", [("standard", "StandardScaler"),
                                         ("minmax", "MinMaxScaler"),
                                         ("robust", "RobustScaler")])
def test_scaler_matches_sklearn(method: str, cls: str) -> None:
    import sklearn.preprocessing as skp

    df = frame()[["x", "big", "count"]].fillna(0.0)
    ours = dask_equals_pandas(lambda: Scaler(method), df)
    theirs = getattr(skp, cls)().fit(df)
    np.testing.assert_allclose(ours.transform(df).to_numpy(), theirs.transform(df),
                               rtol=1e-9, atol=1e-12)


def test_onehot_with_cap_rare_and_unknown() -> None:
    df = frame()
    enc = dask_equals_pandas(lambda: CategoricalEncoder(
        {"k": {"method": "onehot", "max_levels": 3}}), df[["k", "x"]])
    assert list(enc.vocabulary_["k"]) == ["a", "b", "c", RARE]
    new = pd.DataFrame({"k": ["a", "d", "zzz", None], "x": [1.0, 2, 3, 4]})
    out = enc.transform(new)
    assert out.filter(like="k=").to_numpy().tolist() == [
        [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0]]
    assert enc.unseen(new) == {"k": 2}


def test_onehot_names_are_valid_xgboost_feature_names() -> None:
    import xgboost

    df = pd.DataFrame({"ocean": ["<1H OCEAN", "INLAND", "a[0]", "a(0)", "<1H OCEAN"],
                       "y": [1.0, 2, 3, 4, 5]})
    enc = CategoricalEncoder({"ocean": {"method": "onehot"}}).fit(df[["ocean"]])
    out = enc.transform(df[["ocean"]])
    assert out["ocean=lt1H OCEAN"].tolist() == [1, 0, 0, 0, 1]
    assert out["ocean=INLAND"].tolist() == [0, 1, 0, 0, 0]
    # 'a[0]' and 'a(0)' would share a name: the later level gets a suffix, none is lost
    assert {"ocean=a(0)", "ocean=a(0)_"} <= set(out.columns) and out.shape == (5, 4)
    assert out.sum(axis=1).tolist() == [1] * 5
    xgboost.DMatrix(out, label=df["y"])  # XGBoost refuses '[', ']' and '<' in names


def test_ordinal_frequency_count_hash() -> None:
    df = frame()[["k", "many", "x"]]
    enc = dask_equals_pandas(lambda: CategoricalEncoder({
        "k": {"method": "ordinal"}, "many": {"method": "frequency"}}), df)
    out = enc.transform(df)
    counts = df["k"].value_counts()
    assert out.loc[df["k"] == counts.index[0], "k"].eq(0).all()  # most frequent -> 0
    assert out["k"].isna().sum() == df["k"].isna().sum()
    share = df["many"].map(df["many"].value_counts(normalize=True))
    np.testing.assert_allclose(out["many__frequency"], share, rtol=1e-12)
    hashed = dask_equals_pandas(lambda: CategoricalEncoder(
        {"many": {"method": "hash", "n_buckets": 8}}), df)
    h = hashed.transform(df).filter(like="many#h")
    assert h.shape[1] == 8 and (h.sum(axis=1) == 1).all()
    from sklearn.utils import murmurhash3_32

    expected = [murmurhash3_32(v.encode(), 0, positive=True) % 8 for v in df["many"][:20]]
    assert h.to_numpy()[:20].argmax(axis=1).tolist() == expected


@pytest.mark.parametrize("n_classes", [None, 2, 3])
def test_target_encoding_is_out_of_fold_and_smoothed(n_classes: int | None) -> None:
    from pipeline.preprocess import _folds

    df = frame()[["k", "x"]]
    rng = np.random.default_rng(1)
    y = (rng.integers(0, n_classes, len(df)) if n_classes else rng.normal(size=len(df)))
    spec = {"k": {"method": "target", "smoothing": 5.0, "folds": 4}}
    enc = dask_equals_pandas(lambda: CategoricalEncoder(spec, n_classes=n_classes), df, y,
                             fit_transform=True)
    out = enc.fit_transform(df, y)
    folds = _folds(df, 4, 0)
    names = [c for c in out.columns if c.startswith("k__te")]
    assert len(names) == (3 if n_classes == 3 else 1)
    ymat = (y[:, None] == np.arange(3)).astype(float) if n_classes == 3 else y[:, None]
    # the naive out-of-fold computation, row by row for a few rows
    for i in [0, 5, 17, 123]:
        level, fold = df["k"].iloc[i], folds[i]
        other = (folds != fold) & (df["k"] == level).to_numpy()
        for k, name in enumerate(names):
            prior = ymat[:, k].mean()
            expected = (ymat[other, k].sum() + 5.0 * prior) / (other.sum() + 5.0)
            if pd.isna(level):
                expected = prior
            assert out[name].iloc[i] == pytest.approx(expected, rel=1e-12)
    # later transforms (scoring) use all training rows
    scored = enc.transform(df.head(3))
    level = df["k"].iloc[0]
    rows = (df["k"] == level).to_numpy()
    assert scored[names[0]].iloc[0] == pytest.approx(
        (ymat[rows, 0].sum() + 5 * ymat[:, 0].mean()) / (rows.sum() + 5), rel=1e-12)


def test_native_categorical_pools_and_counts_unseen() -> None:
    df = frame()[["many", "k"]]
    nat = dask_equals_pandas(lambda: NativeCategorical(max_levels=50), df)
    kept = nat.categories_["many"][0]
    new = pd.DataFrame({"many": [kept, "nope"], "k": ["a", "q"]})
    out = nat.transform(new)
    assert out["many"].iloc[0] == kept and out["many"].iloc[1] == RARE
    assert pd.isna(out["k"].iloc[1])
    assert nat.unseen(new) == {"many": 1, "k": 1}


def test_encoding_a_numeric_column_is_refused_before_compute() -> None:
    def boom(_: int) -> pd.DataFrame:
        raise AssertionError("computed")

    lazy = dd.from_map(boom, [0], meta=frame(0))
    with pytest.raises(SchemaError, match="numeric.*an encoding applies to categorical"):
        CategoricalEncoder({"x": {"method": "onehot"}}).fit(lazy)
    with pytest.raises(SchemaError, match="'kk', which is not a column here; did you mean 'k'"):
        CategoricalEncoder({"kk": {"method": "onehot"}}).fit(lazy)


def test_fitted_pipeline_survives_skops() -> None:
    from sklearn.pipeline import Pipeline

    df = frame()
    y = (df["x"].fillna(0) > 10).astype(int).to_numpy()
    pipe = Pipeline([
        ("schema", InputSchema()), ("clean", ColumnCleaner()),
        ("features", KernelFeatures([{"kernel": "log1p", "columns": ["big"]},
                                     {"kernel": "count", "columns": ["many"]}])),
        ("encode", CategoricalEncoder({"many": {"method": "target"},
                                       "k": {"method": "onehot"}}, n_classes=2)),
        ("impute", Imputer()), ("scale", Scaler()),
    ])
    pipe.fit_transform(df, y)
    loaded = loads_skops(dumps_skops(pipe), "test")
    pd.testing.assert_frame_equal(pipe.transform(df.head(100)), loaded.transform(df.head(100)))


def test_vocabularies_are_saved_as_plain_arrays_and_come_back_exactly() -> None:
    """skops writes an object array level by level (slow to save, audit and load): the
    levels go into the file as UTF-8 bytes and offsets, and come back as the same text."""
    import io
    import zipfile

    odd = ["", "é", "x\x00", "日本"]  # empty, accents, a trailing NUL, wide characters
    df = pd.DataFrame({"c": [*odd, *(f"level-{i}" for i in range(3000))] * 2})
    y = np.arange(len(df)) % 2
    enc = CategoricalEncoder({"c": {"method": "target"}}, n_classes=2).fit(df, y)
    data = dumps_skops(enc)
    schema = zipfile.ZipFile(io.BytesIO(data)).read("schema.json")
    assert b"level-2999" not in schema  # not one node per level
    loaded = loads_skops(data, "test")
    assert loaded.vocabulary_["c"].dtype == object
    assert loaded.vocabulary_["c"].tolist() == enc.vocabulary_["c"].tolist()
    assert set(odd) <= set(loaded.vocabulary_["c"].tolist())
    assert enc.vocabulary_["c"].dtype == object  # saving left the fitted step as it was
    pd.testing.assert_frame_equal(loaded.transform(df), enc.transform(df))
