"""MLflow tracking (pipeline/tracking.py) against a real local tracking store: one small run of
two families is logged to a sqlite store in a temporary directory, and MlflowClient reads back
what was logged (params, metrics, nested family runs, tags, artifacts, the dataset input)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline import tracking
from pipeline.artifacts import open_bundle
from pipeline.bundle import Published
from pipeline.config import JobError, load_job
from pipeline.workflow import RunResult, run
from tests.conftest import demo_job

pytestmark = pytest.mark.integration
mlflow = pytest.importorskip("mlflow")  # a dev dependency; the guard keeps the file importable

TRACKING = {"mlflow": {"uri": "", "experiment": "loans"}}
MODELS = {"xgboost": {"n_estimators": 10, "max_depth": [2, 3], "learning_rate": 0.3},
          "logistic_regression": {"C": 1.0}}


def store_uri(tmp: Path, experiment: str) -> str:
    """A sqlite tracking store under ``tmp`` with ``experiment`` keeping its artifacts there."""
    uri = f"sqlite:///{tmp}/mlflow.db"
    mlflow.MlflowClient(tracking_uri=uri).create_experiment(
        experiment, artifact_location=(tmp / "artifacts").as_uri())
    return uri


@dataclass
class Tracked:
    result: RunResult
    uri: str
    parent: object  # mlflow.entities.Run
    children: list  # the nested runs
    store: object  # mlflow.MlflowClient


@pytest.fixture(scope="module")
def tracked(client, demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Tracked:
    """One run of the demo job with two families, logged to a sqlite store (its experiment
    made beforehand, to keep the artifacts in the temporary directory)."""
    tmp = tmp_path_factory.mktemp("tracking")
    uri = store_uri(tmp, "loans")
    job = load_job(demo_job(str(demo_dir), str(tmp / "out"), models=MODELS,
                            search={"cv": 2, "sample_rows": 4000},
                            tracking={"mlflow": {**TRACKING["mlflow"], "uri": uri}}))
    result = run(job, client=client)
    store = mlflow.MlflowClient(tracking_uri=uri)
    experiment = store.get_experiment_by_name("loans")
    runs = store.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")
                == parents[0].info.run_id]
    return Tracked(result, uri, parents[0], children, store)


def test_the_run_is_named_and_tagged_after_its_bundle(tracked: Tracked) -> None:
    result, parent = tracked.result, tracked.parent
    tags = parent.data.tags
    assert parent.info.run_name == result.run_id
    assert parent.info.status == "FINISHED"
    assert tags["mlpipe.run_url"] == result.run_url
    assert tags["mlpipe.model_url"] == result.model_url
    assert tags["mlpipe.family"] == result.family
    assert tags["mlpipe.decision"] == result.decision["outcome"] == "promoted"
    assert tags["mlpipe.data_fingerprint"] == result.manifest["data"]["fingerprint"]
    assert result.run_url in tags["mlflow.note.content"]


def test_params_are_the_resolved_job_flattened(tracked: Tracked) -> None:
    params = tracked.parent.data.params
    assert params["name"] == "demo"
    assert params["data.target"] == "default"
    assert params["search.cv"] == "2"
    assert params["models.xgboost.max_depth"] == "[2, 3]"  # the grid that was searched
    assert params["tracking.mlflow.experiment"] == "loans"
    assert params["chosen.family"] == tracked.result.family
    for name, value in tracked.result.metrics["model"]["params"].items():
        assert params[f"chosen.{name}"] == (value if isinstance(value, str)
                                            else json.dumps(value))


def test_the_chosen_models_metrics(tracked: Tracked) -> None:
    result, metrics = tracked.result, tracked.parent.data.metrics
    for name, value in result.headline.items():
        assert metrics[f"holdout_{name}"] == pytest.approx(value), name
    chosen = next(row for row in result.leaderboard if row["chosen"])
    assert metrics["cv_roc_auc_mean"] == pytest.approx(chosen["cv_mean"])
    assert metrics["train_roc_auc"] == pytest.approx(result.metrics["train"]["roc_auc"])
    assert metrics["rows_holdout"] == result.metrics["rows"]["holdout"]
    assert metrics["time_load"] == pytest.approx(result.timings["load"])


def test_one_nested_run_per_family_with_its_cv_and_holdout_metrics(tracked: Tracked) -> None:
    board = {row["family"]: row for row in tracked.result.leaderboard}
    children = {r.info.run_name: r for r in tracked.children}
    assert set(children) == set(board) == {"xgboost", "logistic_regression"}
    for family, child in children.items():
        row, metrics = board[family], child.data.metrics
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlpipe.chosen"] == str(row["chosen"]).lower()
        assert child.data.tags["mlpipe.training"] == row["training"]
        assert metrics["cv_roc_auc_mean"] == pytest.approx(row["cv_mean"])
        assert metrics["cv_roc_auc_std"] == pytest.approx(row["cv_std"])
        for name, value in row["holdout"].items():
            if value is not None:
                assert metrics[f"holdout_{name}"] == pytest.approx(value), (family, name)
    assert children["logistic_regression"].data.params["C"] == "1.0"
    assert children["xgboost"].data.params["max_depth"] in ("2", "3")


def test_the_report_and_documents_are_artifacts(tracked: Tracked, tmp_path: Path) -> None:
    run_id = tracked.parent.info.run_id
    names = {a.path for a in tracked.store.list_artifacts(run_id)}
    assert names == {"report.html", "metrics.json", "job.yaml", "schema.json",
                     "leaderboard.json"}
    local = Path(tracked.store.download_artifacts(run_id, "report.html", str(tmp_path)))
    bundle = open_bundle(tracked.result.run_url)
    assert local.read_bytes() == bundle.read("report.html")
    board = json.loads(Path(tracked.store.download_artifacts(
        run_id, "leaderboard.json", str(tmp_path))).read_text())
    assert [row["family"] for row in board] == [r["family"] for r in tracked.result.leaderboard]


def test_the_training_data_is_a_dataset_input(tracked: Tracked, demo_dir: Path) -> None:
    inputs = tracked.parent.inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    data = tracked.result.manifest["data"]
    assert dataset.digest == data["fingerprint"]
    assert str(demo_dir) in dataset.source
    assert dataset.source_type == "local"
    assert json.loads(dataset.profile) == {"files": 4, "bytes": data["bytes"],
                                           "rows": 20_000}
    columns = {c["name"]: c["type"] for c in json.loads(dataset.schema)["mlflow_colspec"]}
    assert columns["income"] == "double" and columns["employer"] == "string"
    assert {t.key: t.value for t in inputs[0].tags} == {"mlflow.data.context": "training"}


def test_a_tracking_failure_keeps_the_bundle_and_warns(tracked: Tracked, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A store that cannot be written (its directory is a file): the run's bundle stays
    published and loadable, log_run returns None and the warning names the URI and bundle."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    uri = f"sqlite:///{blocker}/mlflow.db"
    result = tracked.result
    job = load_job(demo_job("data", str(tmp_path / "out"),
                            tracking={"mlflow": {"uri": uri}}))
    published = Published(run_id=result.run_id, run_url=result.run_url,
                          model_url=result.model_url, metrics=result.metrics,
                          manifest=result.manifest)
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert tracking.log_run(job, published, result.decision) is None
    assert uri in caplog.text and result.run_url in caplog.text
    open_bundle(result.run_url).verify()


def test_a_failure_halfway_marks_the_mlflow_run_failed(tracked: Tracked, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """The bundle's report changed after it was written: the verified read refuses it, the
    MLflow run already started ends FAILED, and nothing is raised."""
    import shutil

    result = tracked.result
    copy = tmp_path / "out"
    shutil.copytree(Path(result.run_url).parents[1], copy)
    run_url = str(copy / "runs" / result.run_id)
    (Path(run_url) / "report.html").write_text("changed")
    uri = store_uri(tmp_path, "x")
    job = load_job(demo_job("data", str(copy), tracking={"mlflow": {"uri": uri,
                                                                     "experiment": "x"}}))
    published = Published(run_id=result.run_id, run_url=run_url, model_url="",
                          metrics=result.metrics, manifest=result.manifest)
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert tracking.log_run(job, published) is None
    assert "does not match its manifest" in caplog.text
    store = mlflow.MlflowClient(tracking_uri=uri)
    runs = store.search_runs([store.get_experiment_by_name("x").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_the_environment_variable_turns_tracking_on(monkeypatch: pytest.MonkeyPatch) -> None:
    job = load_job(demo_job("data", "out"))
    monkeypatch.delenv(tracking.ENV, raising=False)
    assert tracking.target(job) is None
    monkeypatch.setenv(tracking.ENV, "file:///tmp/mlruns")
    assert tracking.target(job) == tracking.Target("file:///tmp/mlruns", "demo")


def test_nothing_changes_without_tracking() -> None:
    """No tracking configured: MLflow is never imported, by the workflow or by log_run."""
    code = (
        "import os, sys\n"
        "os.environ.pop('MLFLOW_TRACKING_URI', None)\n"
        "from pipeline import tracking, workflow\n"
        "from pipeline.config import load_job\n"
        "from tests.conftest import demo_job\n"
        "job = load_job(demo_job('data', 'out'))\n"
        "assert tracking.log_run(job, published=None) is None\n"
        "assert 'mlflow' not in sys.modules, 'mlflow was imported'\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_tracking_without_mlflow_is_refused_at_validation(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed: not importable
    with pytest.raises(JobError, match=r"pip install -e '\.\[mlflow\]'"):
        load_job(demo_job("data", "out", tracking={"mlflow": {"uri": "file:///tmp/x"}}))
    # the environment variable alone: one warning, the run is not tracked
    monkeypatch.setenv(tracking.ENV, "file:///tmp/mlruns")
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert tracking.target(load_job(demo_job("data", "out"))) is None
    assert "MLflow is not installed" in caplog.text and "[mlflow]" in caplog.text


def test_tracking_needs_a_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(tracking.ENV, raising=False)
    with pytest.raises(JobError, match="MLFLOW_TRACKING_URI is not set"):
        load_job(demo_job("data", "out", tracking={"mlflow": {"experiment": "x"}}))
    monkeypatch.setenv(tracking.ENV, "http://127.0.0.1:5000")
    job = load_job(demo_job("data", "out", tracking={"mlflow": {"experiment": "x"}}))
    assert tracking.target(job) == tracking.Target("http://127.0.0.1:5000", "x")


def test_a_database_store_without_sqlalchemy_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "alembic", None)
    with pytest.raises(JobError, match="needs sqlalchemy and alembic"):
        load_job(demo_job("data", "out", tracking={"mlflow": {"uri": "sqlite:///m.db"}}))


def test_unknown_tracking_keys_are_refused() -> None:
    with pytest.raises(JobError, match="experiment"):
        load_job(demo_job("data", "out", tracking={"mlflow": {"uri": "file:///x",
                                                              "experimnt": "x"}}))


def test_flatten_and_column_types() -> None:
    assert tracking.flatten({"a": {"b": [1, 2], "c": {}}, "d": "x" * 7000})["a.b"] == "[1, 2]"
    assert tracking.flatten({"a": {"c": {}}}) == {"a.c": "{}"}
    assert len(tracking.flatten({"d": "x" * 7000})["d"]) == tracking.MAX_PARAM
    assert tracking.column_type("uint8") == "long"
    assert tracking.column_type("str") == "string"
