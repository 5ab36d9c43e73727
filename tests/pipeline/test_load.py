"""Loading: file discovery, the schema contract on every header, and data validation."""

from __future__ import annotations

from pathlib import Path

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from pipeline import load
from pipeline.load import DataError


def frame(n: int = 100, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "x": rng.normal(size=n),
        "k": rng.choice(["a", "b", "c"], n),
        "y": rng.integers(0, 2, n),
    })


@pytest.fixture
def parquet_dir(tmp_path: Path) -> Path:
    for i in range(3):
        frame(50, i).to_parquet(tmp_path / f"part-{i}.parquet", index=False)
    (tmp_path / "_SUCCESS").write_text("")
    return tmp_path


def test_find_files_directory_glob_and_single(parquet_dir: Path) -> None:
    src = load.find_files(str(parquet_dir))
    assert src.format == "parquet" and len(src.files) == 3  # _SUCCESS skipped
    assert load.find_files(str(parquet_dir / "part-1.parquet")).files == (
        str(parquet_dir / "part-1.parquet"),)
    assert len(load.find_files(str(parquet_dir / "part-[01].parquet")).files) == 2


def test_fingerprint_changes_when_a_file_changes(parquet_dir: Path) -> None:
    before = load.find_files(str(parquet_dir)).fingerprint
    assert load.find_files(str(parquet_dir)).fingerprint == before
    frame(60, 9).to_parquet(parquet_dir / "part-1.parquet", index=False)
    assert load.find_files(str(parquet_dir)).fingerprint != before


def test_no_files_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no data files at"):
        load.find_files(str(tmp_path / "missing"))


def test_contract_mismatch_names_file_and_column(parquet_dir: Path) -> None:
    bad = frame(10).assign(x=lambda d: d["x"].astype(str))
    bad.to_parquet(parquet_dir / "part-2.parquet", index=False)
    src = load.find_files(str(parquet_dir))
    headers = load.read_headers(src)
    with pytest.raises(DataError) as info:
        load.check_headers(headers, schema={"x": "float64", "k": "category", "y": "int64"},
                           required=["y"])
    assert "column 'x'" in str(info.value) and "part-2.parquet" in str(info.value)
    assert "expected float64" in str(info.value)


def test_contract_missing_column_names_file(parquet_dir: Path) -> None:
    frame(10).drop(columns=["k"]).to_parquet(parquet_dir / "part-1.parquet", index=False)
    headers = load.read_headers(load.find_files(str(parquet_dir)))
    with pytest.raises(DataError, match=r"column 'k' .* missing from .*part-1\.parquet"):
        load.check_headers(headers, schema={"x": "float64", "k": "category", "y": "int64"},
                           required=["y"])


def test_without_contract_files_must_agree(parquet_dir: Path) -> None:
    frame(10).assign(extra=1).to_parquet(parquet_dir / "part-1.parquet", index=False)
    headers = load.read_headers(load.find_files(str(parquet_dir)))
    with pytest.raises(DataError, match=r"part-1\.parquet has other columns"):
        load.check_headers(headers, schema=None, required=["y"])


def test_missing_target_suggests(parquet_dir: Path) -> None:
    headers = load.read_headers(load.find_files(str(parquet_dir)))
    with pytest.raises(DataError, match=r"column 'yy' is not in the data .*did you mean 'y'"):
        load.check_headers(headers, schema=None, required=["yy"])


def test_csv_duplicate_columns_and_unreadable(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x,x,y\n1,2,0\n")
    with pytest.raises(DataError, match=r"a\.csv has duplicated column names \['x'\]"):
        load.read_headers(load.find_files(str(tmp_path / "a.csv")))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"cannot read the header of .*bad\.parquet"):
        load.read_headers(load.find_files(str(tmp_path / "bad.parquet")))


def test_csv_read_applies_the_contract(tmp_path: Path) -> None:
    frame(40).to_csv(tmp_path / "a.csv", index=False)
    frame(40, 1).to_csv(tmp_path / "b.csv", index=False)
    src = load.find_files(str(tmp_path))
    assert src.format == "csv"
    schema = {"x": "float64", "k": "category", "y": "int64"}
    columns = load.check_headers(load.read_headers(src), schema=schema, required=["y"])
    ddf = load.read(src, columns, schema=schema)
    assert dict(ddf.dtypes.astype(str)) == schema
    assert len(ddf.compute()) == 80


def test_csv_sample_checks_declared_types_before_any_compute(tmp_path: Path) -> None:
    schema = {"x": "float64", "k": "category", "y": "int64"}
    frame(40).to_csv(tmp_path / "a.csv", index=False)
    bad = frame(40, 1).astype({"x": object})
    bad.loc[[3, 7], "x"] = ["", "n/a"]  # missing values are fine, 'n/a' is NA to pandas too
    bad.loc[12, "x"] = "12,5"           # a decimal comma is not
    bad.to_csv(tmp_path / "b.csv", index=False)
    src = load.find_files(str(tmp_path))
    with pytest.raises(DataError, match=r"column 'x' of .*b\.csv holds '12,5' on line 14, "
                                        r"which is not a float64 value"):
        load.check_csv_sample(src, schema)
    load.check_csv_sample(src, {"x": "str", "k": "category"})  # text may hold anything
    load.check_csv_sample(load.find_files(str(tmp_path / "a.csv")), schema)


def test_a_bad_csv_value_past_the_sample_names_column_and_file(tmp_path: Path) -> None:
    schema = {"x": "float64", "k": "category", "y": "int64"}
    frame(40).to_csv(tmp_path / "a.csv", index=False)
    bad = frame(3000, 1).astype({"x": object})
    bad.loc[2500, "x"] = "oops"
    bad.to_csv(tmp_path / "b.csv", index=False)
    src = load.find_files(str(tmp_path))
    load.check_csv_sample(src, schema)  # the first 1,000 rows are clean
    columns = load.check_headers(load.read_headers(src), schema=schema, required=[])
    # small blocks: the bad row is in a later partition, whose line is counted from the file
    for blocksize in ("64MiB", "8KiB"):
        ddf = load.read(src, columns, schema=schema, blocksize=blocksize)
        assert dict(ddf.dtypes.astype(str)) == schema
        with pytest.raises(DataError, match=r"column 'x' of .*b\.csv holds 'oops' on line "
                                            r"2502, which is not a float64 value"):
            ddf.compute(scheduler="sync")
    assert len(load.read(load.find_files(str(tmp_path / "a.csv")), ["x", "k", "y"],
                         schema=schema).compute(scheduler="sync")) == 40


def summarize(df: pd.DataFrame, task: str = "binary", **kw: object) -> load.Summary:
    ddf = dd.from_pandas(df, npartitions=2)
    return load.summarize(ddf, target="y", task=task, source="test.parquet", **kw)


def test_summary_counts_rows_missing_classes_and_levels() -> None:
    df = frame(200)
    df.loc[:9, "x"] = np.nan
    s = summarize(df)
    assert s.rows == 200 and s.missing["x"] == 10
    assert s.classes == [0, 1] and sum(s.class_counts.values()) == 200
    assert set(s.levels["k"]) == {"a", "b", "c"}


def test_positive_class_goes_last() -> None:
    df = frame(50).assign(y=lambda d: np.where(d["y"] == 1, "yes", "no"))
    assert summarize(df).classes == ["no", "yes"]
    assert summarize(df, positive="no").classes == ["yes", "no"]
    with pytest.raises(DataError, match="data.positive 'maybe' is not a class"):
        summarize(df, positive="maybe")


@pytest.mark.parametrize("case, message", [
    ("empty", "zero rows"),
    ("nan_label", r"missing in 3 of 100 rows .*e\.g\. the row"),
    ("inf_label", "infinite in 1 rows"),
    ("one_class", "single class"),
    ("three_classes", "use task: multiclass"),
])
def test_bad_data_is_refused(case: str, message: str) -> None:
    df = frame(100).assign(y=lambda d: d["y"].astype(float))
    if case == "empty":
        df = df.iloc[:0]
    elif case == "nan_label":
        df.loc[[3, 50, 70], "y"] = np.nan
    elif case == "inf_label":
        df.loc[5, "y"] = np.inf
    elif case == "one_class":
        df["y"] = 1.0
    elif case == "three_classes":
        df.loc[:10, "y"] = 2.0
    with pytest.raises(DataError, match=message):
        summarize(df)


def test_regression_target_must_be_numeric_and_vary() -> None:
    with pytest.raises(DataError, match="must be numeric"):
        summarize(frame(20).assign(y="a"), task="regression")
    with pytest.raises(DataError, match="has one value"):
        summarize(frame(20).assign(y=3.0), task="regression")
    s = summarize(frame(20).assign(y=np.arange(20.0)), task="regression")
    assert s.target_stats["min"] == 0 and s.target_stats["max"] == 19


@pytest.mark.parametrize("task", ["regression", "multiclass"])
def test_the_summary_merged_from_partitions_equals_pandas_on_the_whole_frame(task: str) -> None:
    """One task per partition and a tree of merges (empty partitions and uneven ones among
    them) give what pandas computes on the whole frame."""
    rng = np.random.default_rng(3)
    df = frame(3000, seed=3).assign(
        y=rng.normal(50.0, 7.0, 3000) if task == "regression" else rng.integers(0, 4, 3000),
        c=pd.Categorical(rng.choice(["p", "q"], 3000), categories=["p", "q", "r"]))
    df.loc[df.index % 11 == 0, "x"] = np.nan
    df.loc[df.index % 13 == 0, "k"] = None
    parts = [df.iloc[:0], df.iloc[:7], df.iloc[7:1500], df.iloc[1500:1500], df.iloc[1500:]]
    ddf = dd.from_delayed([dask.delayed(p) for p in parts], meta=df.iloc[:0])
    s = load.summarize(ddf, target="y", task=task, source="t.parquet")
    assert s.rows == 3000
    assert s.missing == {c: int(v) for c, v in df.isna().sum().items()}
    assert s.levels["k"] == {str(k): int(v) for k, v in df["k"].value_counts().items()}
    assert s.levels["c"] == {"p": int((df["c"] == "p").sum()), "q": int((df["c"] == "q").sum()),
                             "r": 0}
    if task == "regression":
        expected = {"min": df["y"].min(), "max": df["y"].max(), "mean": df["y"].mean(),
                    "std": df["y"].std()}
        assert s.target_stats == pytest.approx(expected, rel=1e-12)
    else:
        assert s.class_counts == {str(k): int(v) for k, v in df["y"].value_counts().items()}
        assert s.classes == [0, 1, 2, 3]


def test_a_pandas_index_written_to_parquet_is_not_a_column(tmp_path: Path) -> None:
    """``df[mask].to_parquet(...)`` stores the index as ``__index_level_0__``: row labels,
    which the loader leaves out (reading them as a column failed with a KeyError)."""
    frame = pd.DataFrame({"x": np.arange(10.0), "y": np.arange(10) % 2})
    frame[frame["x"] > 2].to_parquet(tmp_path / "part.parquet")
    source = load.find_files(str(tmp_path))
    columns = load.check_headers(load.read_headers(source), schema=None, required=["y"])
    assert columns == ["x", "y"]
    got = load.read(source, columns).compute()
    assert list(got.columns) == ["x", "y"] and len(got) == 7


def test_parquet_partitions_are_what_dask_read_parquet_gives(tmp_path: Path) -> None:
    """The loader reads :func:`load.parquet_pieces` itself (faster than ``dd.read_parquet``);
    each partition still holds what ``dd.read_parquet(index=False)`` gives, dtype for dtype:
    nullable and tz-aware columns, dask's pyarrow strings, categoricals, stored indexes (a
    range, row labels) left out, a file of three row groups and a file of no rows."""
    rng = np.random.default_rng(0)
    n = 600
    df = pd.DataFrame({
        "i": pd.array(rng.integers(0, 5, n), dtype="Int64"),
        "f": rng.normal(size=n).astype("float32"),
        "s": rng.choice(["a", "b", None], n),
        "c": pd.Categorical(rng.choice(["u", "v"], n)),
        "t": pd.date_range("2020-01-01", periods=n, freq="h", tz="UTC"),
        "b": pd.array(rng.choice([True, False, None], n), dtype="boolean"),
        "y": rng.integers(0, 2, n)})
    df.iloc[:300].to_parquet(tmp_path / "a.parquet", row_group_size=100, index=False)
    df.iloc[300:450].iloc[::-1].to_parquet(tmp_path / "b.parquet")  # a stored range index
    df.iloc[:0].to_parquet(tmp_path / "c.parquet", index=False)
    df.iloc[450:].sample(frac=1.0, random_state=0).to_parquet(tmp_path / "d.parquet")  # labels
    source = load.find_files(str(tmp_path))
    columns = ["i", "s", "c", "t", "b", "y"]
    ours = load.read(source, columns)
    theirs = dd.read_parquet(list(source.files), columns=columns, index=False)
    assert ours.npartitions == theirs.npartitions == 4
    pd.testing.assert_frame_equal(ours._meta, theirs._meta)
    for i in (0, 1, 3):
        pd.testing.assert_frame_equal(ours.partitions[i].compute(scheduler="sync"),
                                      theirs.partitions[i].compute(scheduler="sync"))
    # an empty partition is the meta (map_partitions gives it for an empty result)
    empty = ours.partitions[2].compute(scheduler="sync")
    assert empty.empty and list(empty.columns) == columns


def test_csv_encoding_is_read_from_the_source(tmp_path: Path) -> None:
    data = frame(300).astype({"k": object})
    data.loc[250, "k"] = "Montréal"
    data.to_csv(tmp_path / "a.csv", index=False, encoding="latin-1")
    with pytest.raises(DataError, match=r"a\.csv is not utf-8 text: line 252 holds the "
                                        r"byte\(s\) b'\\xe9'.*data\.encoding"):
        src = load.find_files(str(tmp_path / "a.csv"))
        load.read(src, list(load.read_headers(src)[src.files[0]])).compute(scheduler="sync")
    src = load.find_files(str(tmp_path / "a.csv"), encoding="latin-1")
    got = load.read(src, list(load.read_headers(src)[src.files[0]])).compute(scheduler="sync")
    assert got["k"].iloc[250] == "Montréal" and len(got) == 300


def test_malformed_lines_error_or_are_skipped_and_counted(tmp_path: Path) -> None:
    lines = frame(3000).to_csv(index=False).splitlines(keepends=True)
    for line in (1501, 2900):
        lines[line - 1] = lines[line - 1].rstrip("\n") + ",9\n"
    (tmp_path / "a.csv").write_text("".join(lines))
    src = load.find_files(str(tmp_path / "a.csv"))
    columns = list(load.read_headers(src)[src.files[0]])
    for blocksize in ("64MiB", "8KiB"):  # the second: the bad lines in later partitions
        with pytest.raises(DataError, match=r"a\.csv, line (1501|2900): 4 fields where the "
                                            r"header has 3"):
            load.read(src, columns, blocksize=blocksize).compute(scheduler="sync")
        got, skipped = dask.compute(*load.read_counted(src, columns, blocksize=blocksize,
                                                       bad_lines="skip"), scheduler="sync")
        assert (len(got), skipped) == (2998, 2)


@pytest.mark.parametrize("dtype", ["float32", "float64", "Float32", "Float64"])
def test_the_finite_check_reads_every_float_type(dtype: str) -> None:
    """numpy floats are checked in their own type (a view), pandas' nullable ones via float64:
    infinity is refused in each, a missing value and the float32 limit are not."""
    big = float(np.finfo(np.float32).max)
    values = pd.Series([1.0, None, big, -big], dtype=dtype)
    load._check_finite(values, "x", "a.parquet", None)
    with pytest.raises(DataError, match=r"column 'x' of a\.parquet holds -?inf \(row 4 of a "
                                        r"partition\) \(1 such value"):
        load._check_finite(pd.concat([values, pd.Series([-np.inf], dtype=dtype)],
                                     ignore_index=True), "x", "a.parquet", None)
