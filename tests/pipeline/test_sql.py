"""SQL sources (issue #19): ``data.train: sqlite:///path.db?table=loans&index=id``, read in
partitions with dask's ``read_sql_table``, under the same schema contract and messages as
files. A real SQLite database file, written with the standard library's sqlite3."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline import load
from pipeline.cli import main
from pipeline.errors import ExitCode
from pipeline.load import DataError

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
