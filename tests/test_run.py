"""End to end: the demo job on real clusters, with data and output on a real S3 endpoint."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from distributed.diagnostics.plugin import SchedulerPlugin

from pipeline import load_model
from pipeline.artifacts import BundleError
from pipeline.cli import main
from pipeline.config import load_job
from pipeline.workflow import run
from tests.conftest import HOUSING_CSV, demo_job

pytestmark = pytest.mark.integration


def check_sample(result_url: str, storage_options: dict | None = None) -> None:
    """The loaded model reproduces the predictions made during the run, exactly."""
    import fsspec

    model = load_model(result_url, storage_options)
    with fsspec.open(f"{model_run_url(result_url)}/sample.parquet", "rb") as f:
        sample = pd.read_parquet(f)
    pred = model.predict_frame(sample)
    for column in pred.columns:
        expected = sample[f"__pred_{column}"].to_numpy()
        if pred[column].dtype.kind == "f":
            np.testing.assert_allclose(pred[column].to_numpy(), expected, rtol=0, atol=1e-7)
        else:
            assert (pred[column].to_numpy() == expected).all()


def model_run_url(url: str) -> str:
    from pipeline.artifacts import open_bundle

    return open_bundle(url).url


def test_demo_job_on_s3(client, bucket: str, demo_dir: Path) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.put(str(demo_dir) + "/", f"{bucket}/demo/", recursive=True)
    job = load_job(demo_job(f"{bucket}/demo", f"{bucket}/mlpipe"))
    result = run(job, client=client)
    assert result.run_url.startswith(f"{bucket}/mlpipe/runs/")
    assert result.headline["roc_auc"] > 0.7
    assert fs.exists(f"{result.run_url}/manifest.json")
    check_sample(result.model_url)
    check_sample(result.run_url)
    model = load_model(result.model_url)
    assert model.run_id == result.run_id
    sample = pd.read_parquet(demo_dir / "part-00000.parquet").head(50)
    proba = model.predict_proba(sample)
    assert proba.shape == (50, 2) and np.allclose(proba.sum(axis=1), 1)
    with pytest.raises(ValueError, match="missing column 'income'"):
        model.predict(sample.drop(columns=["income"]))


def test_cli_run_through_scheduler_address(dask_processes: str, demo_dir: Path,
                                           tmp_path: Path, capsys) -> None:
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(demo_job(str(demo_dir), str(tmp_path / "out"))))
    code = main(["run", str(job_file), "--scheduler", dask_processes,
                 "--set", "models.xgboost.n_estimators=10"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "roc_auc" in out.out and f"model: {tmp_path / 'out'}/models/demo" in out.out
    check_sample(str(tmp_path / "out" / "models" / "demo"))


def test_bad_data_fails_clearly_and_publishes_nothing(client, tmp_path: Path, capsys) -> None:
    from pipeline.demo import make_partition

    data = tmp_path / "one_class.parquet"

    make_partition(0, 500).assign(default=1).to_parquet(data, index=False)
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(demo_job(str(data), str(tmp_path / "out"))))
    code = main(["run", str(job_file), "--n-workers", "1"])
    err = capsys.readouterr().err
    assert code == 2  # bad input (pipeline.errors.ExitCode)
    assert "single class" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "models").exists()
    assert not list((tmp_path / "out").glob("runs/*/manifest.json"))


def test_bad_job_file_exits_non_zero(tmp_path: Path, capsys) -> None:
    job_file = tmp_path / "job.yaml"
    job_file.write_text("name: x\ndata: {train: a, target: y, task: binery}\noutput: o\n")
    assert main(["run", str(job_file)]) == 2  # bad input
    err = capsys.readouterr().err
    assert "data.task" in err and "Traceback" not in err


def test_memory_urls_need_a_threaded_cluster(client, tmp_path: Path, demo_dir: Path) -> None:
    job = load_job(demo_job(str(demo_dir), "memory://mlpipe-out"))
    with pytest.raises(ValueError, match="separate processes"):
        run(job, client=client)
    threaded = load_job(demo_job(str(demo_dir), "memory://mlpipe-out",
                                 cluster={"n_workers": 1, "processes": False}))
    result = run(threaded)
    check_sample(result.model_url)


def test_tampered_model_is_refused(client, tmp_path: Path, demo_dir: Path) -> None:
    job = load_job(demo_job(str(demo_dir), str(tmp_path / "out"),
                            models={"xgboost": {"n_estimators": 5}}))
    result = run(job, client=client)
    model_file = Path(result.run_url) / "model.ubj"
    raw = bytearray(model_file.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    model_file.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="does not match its manifest"):
        load_model(result.model_url)


def test_multiclass_job(client, tmp_path: Path, demo_dir: Path) -> None:
    job = load_job(demo_job(str(demo_dir), str(tmp_path / "out"), name="grades",
                            features=[{"kernel": "log1p", "columns": ["income"]}]),
                   ["data.target=grade", "data.task=multiclass",
                                             "data.drop=[applied_at, credit_score, interest_rate]"])
    result = run(job, client=client)
    assert result.headline["accuracy"] > 0.3
    model = load_model(result.model_url)
    assert model.classes == ["A", "B", "C", "D", "E"]
    check_sample(result.model_url)


EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_is_a_valid_job(path: Path) -> None:
    job = load_job(path)
    assert job.models and Path(job.data.train).is_absolute()  # relative to the job file


def test_california_housing_example_as_shipped(client, tmp_path: Path) -> None:
    # the example file itself (its preprocessing, features and the shared CSV), fewer trees
    example = Path(__file__).resolve().parents[1] / "examples" / "california_housing.yaml"
    job = load_job(example, [f"output={tmp_path / 'out'}", "models.xgboost.n_estimators=80",
                             "models.xgboost.learning_rate=0.2"])
    assert Path(job.data.train) == HOUSING_CSV.resolve()
    result = run(job, client=client)
    assert result.headline["rmse"] < 60_000  # a mean predictor scores about 115,000
    metrics = json.loads((Path(result.run_url) / "metrics.json").read_text())
    assert metrics["rows"]["total"] == 20_640
    schema = json.loads((Path(result.run_url) / "schema.json").read_text())
    assert "total_rooms__ratio__households" in schema["model_inputs"]
    check_sample(result.model_url)


def test_window_features_end_to_end(client, tmp_path: Path, demo_dir: Path) -> None:
    job = load_job(demo_job(str(demo_dir), str(tmp_path / "out"), features=[
        {"kernel": "rolling", "columns": ["loan_amount"], "key": "customer_id",
         "time": "applied_at", "window": 3, "stats": ["mean", "count"]},
        {"kernel": "lag", "columns": ["late_payments_2y"], "key": "customer_id",
         "time": "applied_at"}]))
    result = run(job, client=client)
    schema = json.loads((Path(result.run_url) / "schema.json").read_text())
    assert "loan_amount__roll3_mean" in schema["model_inputs"]
    assert "customer_id" not in schema["model_inputs"]  # context only: an id column
    assert set(schema["kernels"]) >= {"group_rolling", "group_lag"}
    check_sample(result.model_url)


@pytest.mark.parametrize("change, message", [
    ({"features": [{"kernel": "log1p", "columns": ["state"]}]},
     r"features\[0\] \(log1p\) names 'state', a (str|string) column; it needs a numeric"),
    ({"features": [{"kernel": "count", "columns": ["incme"]}]},
     "'incme', which is not a column here; did you mean 'income'"),
    ({"preprocess": {"encode": {"income": "onehot"}}},
     r"preprocess.encode names 'income', a numeric \(float64\) column"),
])
def test_bad_declarations_fail_before_any_compute(client, tmp_path: Path, demo_dir: Path,
                                                  change: dict, message: str) -> None:
    from pipeline.preprocess import SchemaError

    job = load_job(demo_job(str(demo_dir), str(tmp_path / "out"), **change))
    with CountTasks(client) as counted, pytest.raises(SchemaError) as info:
        run(job, client=client)
    assert re.search(message, str(info.value))
    assert counted.tasks == 0  # refused from the declarations alone: no data was read
    assert not (tmp_path / "out").exists()


class CountTasks:
    """How many tasks started running on the cluster while the block ran.

    A scheduler plugin counts transitions to ``processing`` (releases of earlier tests'
    data, which happen lazily, are not counted).
    """

    def __init__(self, client) -> None:
        self.client = client
        self.tasks = 0

    def __enter__(self) -> CountTasks:
        self.client.register_plugin(_Started(), name="count-started")
        return self

    def __exit__(self, *exc: object) -> None:
        self.tasks = self.client.run_on_scheduler(_started_and_remove)


def _started_and_remove(dask_scheduler=None) -> int:
    plugin = dask_scheduler.plugins.pop("count-started")
    return plugin.started


class _Started(SchedulerPlugin):
    """Counts tasks that start processing."""

    name = "count-started"

    def __init__(self) -> None:
        self.started = 0

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if finish == "processing":
            self.started += 1
