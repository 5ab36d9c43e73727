"""SQL sources (issue #19): ``data.train: sqlite:///path.db?table=loans&index=id``, read in
partitions with dask's ``read_sql_table``, under the same schema contract and messages as
files. A real SQLite database file, written with the standard library's sqlite3."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline import load, load_model
from pipeline.cli import main
from pipeline.errors import ExitCode
from pipeline.load import DataError
from pipeline.scoring import read_manifest

pytest.importorskip("sqlalchemy")

COLUMNS = ["application_id", "age", "income", "loan_amount", "credit_score", "state", "purpose",
           "default"]


def database(path: Path, rows: int = 3000) -> pd.DataFrame:
    from pipeline.demo import make_partition

    frame = make_partition(0, rows, seed=0)[COLUMNS]
    with sqlite3.connect(path) as conn:
        frame.to_sql("loans", conn, index=False)
        conn.execute("CREATE UNIQUE INDEX loans_id ON loans (application_id)")
    return frame


def test_a_table_reads_in_partitions_under_the_contract(tmp_path: Path) -> None:
    want = database(tmp_path / "loans.db")
    url = f"sqlite:///{tmp_path / 'loans.db'}?table=loans&index=application_id&partitions=3"
    src = load.find_files(url)
    assert (src.format, src.files) == ("sql", (url,))
    schema = {"application_id": "int64", "age": "int64", "income": "float64",
              "loan_amount": "float64", "credit_score": "float64", "state": "category",
              "purpose": "category", "default": "int64"}
    columns = load.check_headers(load.read_headers(src), schema=schema, required=["default"])
    ddf = load.read(src, columns, schema=schema)
    assert ddf.npartitions == 3 and dict(ddf.dtypes.astype(str)) == schema
    got = ddf.compute(scheduler="sync").sort_values("application_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(got.astype({"state": str, "purpose": str}),
                                  want.astype({"state": str, "purpose": str}),
                                  check_dtype=False)
    assert load.find_files(url).fingerprint == src.fingerprint


def test_sql_errors_name_the_table_and_column(tmp_path: Path) -> None:
    database(tmp_path / "loans.db", rows=100)
    base = f"sqlite:///{tmp_path / 'loans.db'}"
    with pytest.raises(DataError, match=r"needs \?table=NAME&index=COLUMN"):
        load.find_files(base + "?table=loans")
    with pytest.raises(DataError, match=r"no table 'loan'"):
        load.find_files(base + "?table=loan&index=application_id")
    with pytest.raises(DataError, match=r"index column 'aplication_id'.*did you mean "
                                        r"'application_id'"):
        load.find_files(base + "?table=loans&index=aplication_id")
    src = load.find_files(base + "?table=loans&index=application_id")
    with pytest.raises(DataError, match=r"column 'target' is not in the data"):
        load.check_headers(load.read_headers(src), schema=None, required=["target"])


@pytest.mark.integration
def test_a_query_reads_in_partitions_under_the_contract(tmp_path: Path) -> None:
    """``?query=`` (URL-encoded): a filtered, computed SELECT read with dask's
    ``read_sql_query``, partitioned by its index column like a table."""
    want = database(tmp_path / "loans.db")
    query = ("SELECT application_id, income, loan_amount / income AS ratio, state, \"default\" "
             "FROM loans WHERE age >= 30;")
    url = (f"sqlite:///{tmp_path / 'loans.db'}?query={quote(query)}&index=application_id"
           "&partitions=4")
    src = load.find_files(url)
    assert src.format == "sql" and src.sql.columns == (
        "application_id", "income", "ratio", "state", "default")
    kept = want[want["age"] >= 30]
    assert src.sql.rows == len(kept)
    schema = {"application_id": "int64", "income": "float64", "ratio": "float64",
              "state": "category", "default": "int64"}
    columns = load.check_headers(load.read_headers(src), schema=schema, required=["default"])
    ddf = load.read(src, columns, schema=schema)
    assert ddf.npartitions == 4 and dict(ddf.dtypes.astype(str))["state"] == "category"
    got = ddf.compute(scheduler="sync").sort_values("application_id").reset_index(drop=True)
    np.testing.assert_allclose(got["ratio"], (kept["loan_amount"] / kept["income"]).to_numpy())
    assert got["application_id"].tolist() == kept["application_id"].tolist()
    # the same rows, cut for scoring into ranges of the index (the last one open above)
    pieces = load.sql_pieces(src, 500)
    assert len(pieces) >= 3 and pieces[-1].stop is None
    assert "application_id >= " in pieces[1].describe("sql")
    frames = [load.read_piece(p, "sql", ["application_id", "ratio"]) for p in pieces]
    assert sorted(pd.concat(frames)["application_id"]) == kept["application_id"].tolist()


def test_query_errors_name_the_query_and_hide_the_password(tmp_path: Path) -> None:
    database(tmp_path / "loans.db", rows=100)
    base = f"sqlite:///{tmp_path / 'loans.db'}"
    with pytest.raises(DataError, match=r"one of table and query"):
        load.find_files(base + "?table=loans&query=SELECT%201&index=application_id")
    with pytest.raises(DataError, match=r"cannot read the query at .*no such column: nope"):
        load.find_files(base + "?query=SELECT%20nope%20FROM%20loans&index=application_id")
    with pytest.raises(DataError, match=r"index column 'application_id' is not in the query"):
        load.find_files(base + "?query=SELECT%20age%20FROM%20loans&index=application_id")
    with pytest.raises(DataError, match="partitions must be a positive integer"):
        load.find_files(base + "?table=loans&index=application_id&partitions=0")
    with pytest.raises(DataError) as refused:
        load.find_files("mysql://analyst:s3cr3t@127.0.0.1:1/db?table=loans&index=id")
    assert "s3cr3t" not in str(refused.value) and "analyst:***@127.0.0.1" in str(refused.value)


def test_train_from_sqlite_through_the_cli(client, tmp_path: Path, capsys) -> None:
    database(tmp_path / "loans.db")
    job = {"name": "sql", "output": str(tmp_path / "out"),
           "data": {"train": f"sqlite:///{tmp_path / 'loans.db'}?table=loans"
                             "&index=application_id",
                    "target": "default", "task": "binary", "id_columns": ["application_id"]},
           "models": {"xgboost": {"n_estimators": 5, "max_depth": 3}},
           "search": {"sample_rows": 1000, "cv": 2}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    code = main(["run", str(tmp_path / "job.yaml"), "--scheduler", client.scheduler.address])
    err = capsys.readouterr().err
    assert code == ExitCode.OK, err
    assert list((tmp_path / "out").glob("models/sql/latest.json"))

    # scoring input from the same database: a query, cut into index ranges, resumable
    query = quote("SELECT * FROM loans WHERE state <> 'CA'")
    source = f"sqlite:///{tmp_path / 'loans.db'}?query={query}&index=application_id"
    out, model = tmp_path / "scores", str(tmp_path / "out" / "models" / "sql")
    argv = ["score", model, source, str(out), "--id-column", "application_id",
            "--partition-rows", "700", "--scheduler", client.scheduler.address]
    assert main(argv) == ExitCode.OK, capsys.readouterr().err
    manifest = read_manifest(str(out))
    with sqlite3.connect(tmp_path / "loans.db") as conn:
        rows = pd.read_sql("SELECT * FROM loans WHERE state <> 'CA'", conn)
    assert manifest["rows_in"] == manifest["rows_out"] == len(rows)
    assert manifest["input"]["format"] == "sql" and len(manifest["parts"]) >= 3
    got = (pd.concat([pd.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))])
           .sort_values("application_id").reset_index(drop=True))
    want = load_model(model).predict_frame(rows, ["application_id"])
    pd.testing.assert_frame_equal(got, want.sort_values("application_id")
                                  .reset_index(drop=True), check_dtype=False)
    assert main(argv) == ExitCode.OK  # the same command again: every part verified, kept
    assert read_manifest(str(out))["skipped_parts"] == len(manifest["parts"])
