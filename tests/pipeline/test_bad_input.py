"""The bad-input matrix of issue #17: each bad file or job, through the real CLI, ends in one
paragraph naming the file, the column or key and the line, exit code 2 (bad input), and
nothing published (no model pointer, no manifest, no ``_SUCCESS``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from pipeline.cli import main
from pipeline.errors import ExitCode

pytestmark = pytest.mark.integration

COLUMNS = ["application_id", "age", "income", "loan_amount", "credit_score", "state", "purpose",
           "default"]
SCHEMA = {"application_id": "int64", "age": "int64", "income": "float64",
          "loan_amount": "float64", "credit_score": "float64", "state": "category",
          "purpose": "category", "default": "int64"}


def clean(rows: int = 3000, seed: int = 0) -> pd.DataFrame:
    from pipeline.demo import make_partition

    return make_partition(seed, rows, seed=seed)[COLUMNS]


def write_job(folder: Path, data: Path, *, schema: bool = True,
              data_keys: dict | None = None, **extra: object) -> Path:
    job = {"name": "bad", "output": str(folder / "out"),
           "data": {"train": str(data), "target": "default", "task": "binary",
                    "id_columns": ["application_id"]},
           "models": {"xgboost": {"n_estimators": 5, "max_depth": 3}},
           "search": {"sample_rows": 1000, "cv": 2}}
    if schema:
        job["data"]["schema"] = SCHEMA
    job["data"].update(data_keys or {})  # type: ignore[union-attr]
    job.update(extra)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


# -- the bad files: each writes folder/data.csv and returns it --------------------------------


def text_in_numbers(folder: Path, rows: int = 3000, row: int = 2500) -> Path:
    frame = clean(rows).astype({"income": object})
    frame.loc[row, "income"] = "abc"
    frame.to_csv(folder / "data.csv", index=False)
    return folder / "data.csv"


def latin1(folder: Path) -> Path:
    frame = clean().astype({"state": object})
    frame.loc[2000, "state"] = "Montréal"
    frame.to_csv(folder / "data.csv", index=False, encoding="latin-1")
    return folder / "data.csv"


def infinite(value: float) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        frame = clean()
        frame.loc[1700, "income"] = value
        frame.to_csv(folder / "data.csv", index=False)
        return folder / "data.csv"

    return write


def extra_field(folder: Path, line: int = 1501) -> Path:
    lines = clean().to_csv(index=False).splitlines(keepends=True)
    lines[line - 1] = lines[line - 1].rstrip("\n") + ",EXTRA\n"
    (folder / "data.csv").write_text("".join(lines))
    return folder / "data.csv"


def good(folder: Path) -> Path:
    clean().to_csv(folder / "data.csv", index=False)
    return folder / "data.csv"


TRAINING = {
    # name: (write the data, job keys, the message's parts besides the file name)
    "text deep in a declared numeric column": (
        text_in_numbers, {}, ["column 'income'", "'abc'", "line 2502", "float64"]),
    "text past the typed rows of an undeclared column": (
        lambda f: text_in_numbers(f, rows=12_000, row=11_000), {"schema": False},
        ["column 'income'", "'abc'", "line 11002", "data.schema"]),
    "bytes that are not UTF-8": (
        latin1, {}, ["is not utf-8", "line 2002", "b'\\xe9'", "data.encoding"]),
    "infinity in a feature": (
        infinite(float("inf")), {}, ["column 'income'", "inf", "line 1702"]),
    "a number beyond float32": (
        infinite(1e308), {}, ["column 'income'", "1e+308", "line 1702"]),
    "a row with an extra field": (
        extra_field, {}, ["line 1501", "9 fields", "header has 8", "data.bad_lines"]),
    "NaN as a learning rate": (
        good, {"models": {"xgboost": {"learning_rate": float("nan")}}},
        ["models.xgboost.learning_rate", "line", "NaN"]),
}


def published(out: Path) -> list[Path]:
    """What a reader could take for a result: model pointers, manifests, _SUCCESS."""
    return [*out.glob("models/*/latest.json"), *out.glob("runs/*/manifest.json"),
            *out.glob("**/_SUCCESS")]


def paragraph(err: str) -> str:
    """The CLI's own message: from its last ``error:`` on."""
    assert "error: " in err, err
    return err[err.rindex("error: "):]


@pytest.mark.parametrize("case", list(TRAINING))
def test_bad_training_input(case: str, client, tmp_path: Path, capsys) -> None:
    write, keys, parts = TRAINING[case]
    data = write(tmp_path)
    keys = dict(keys)
    job = write_job(tmp_path, data, schema=keys.pop("schema", True), **keys)
    code = main(["run", str(job), "--scheduler", client.scheduler.address])
    message = paragraph(capsys.readouterr().err)
    assert code == ExitCode.BAD_INPUT, message
    where = str(job) if case.startswith("NaN") else str(data)
    for part in [where, *parts]:
        assert part in message, (part, message)
    assert "Traceback" not in message and message.count("\n") <= 3
    assert published(tmp_path / "out") == []


def test_nan_in_the_models_block_fails_validation_too(tmp_path: Path, capsys) -> None:
    job = write_job(tmp_path, good(tmp_path),
                    models={"xgboost": {"learning_rate": float("inf"), "max_depth": 3}})
    assert main(["config", "validate", str(job)]) == ExitCode.BAD_INPUT
    message = paragraph(capsys.readouterr().err)
    assert "models.xgboost.learning_rate: found inf" in message and str(job) in message


def test_skipped_bad_lines_are_counted(client, tmp_path: Path, capsys) -> None:
    job = write_job(tmp_path, extra_field(tmp_path), data_keys={"bad_lines": "skip"})
    code = main(["run", str(job), "--scheduler", client.scheduler.address])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "skipped 1 malformed line(s)" in err
    (run,) = (tmp_path / "out" / "runs").iterdir()
    summary = json.loads((run / "data_summary.json").read_text())
    assert summary["bad_lines"] == 1 and summary["rows"] == 2999


@pytest.fixture(scope="module")
def model(client, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A model trained on clean CSV data (the scoring cases' bundle)."""
    from pipeline import run
    from pipeline.config import load_job

    folder = tmp_path_factory.mktemp("model")
    result = run(load_job(write_job(folder, good(folder))), client=client)
    return SimpleNamespace(url=result.model_url)


SCORING = {
    "text in a numeric column": (
        text_in_numbers, ["column 'income'", "'abc'", "line 2502", "trained on numbers"]),
    "bytes that are not UTF-8": (latin1, ["is not utf-8", "line 2002", "iconv"]),
    "infinity in a feature": (infinite(float("inf")), ["column 'income'", "line 1702"]),
    "a row with an extra field": (extra_field, ["line 1501", "9 fields"]),
}


@pytest.mark.parametrize("case", list(SCORING))
def test_bad_scoring_input(case: str, client, model: SimpleNamespace, tmp_path: Path,
                           capsys) -> None:
    write, parts = SCORING[case]
    data = write(tmp_path)
    out = tmp_path / "scores"
    code = main(["score", model.url, str(data), str(out), "--scheduler",
                 client.scheduler.address])
    message = paragraph(capsys.readouterr().err)
    assert code == ExitCode.BAD_INPUT, message
    for part in [str(data), *parts]:
        assert part in message, (part, message)
    assert "Traceback" not in message
    assert not (out / "_SUCCESS").exists() and not (out / "_manifest.json").exists()
