"""GPU pass-through: ``models.xgboost.device`` reaches the booster, the bundle and scoring,
and a GPU the workers cannot see is refused (XGBoost 3.2 would fall back to the CPU with a
log line only). No GPU runs here: on this CPU-only cluster every request for one is refused.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import cluster
from pipeline.config import load_job
from pipeline.select import check_models
from pipeline.train import boosting_device, check_device, on_gpu, xgb_params
from pipeline.workflow import run
from tests.conftest import demo_job


def test_the_device_reaches_the_booster_parameters() -> None:
    params, rounds = xgb_params({"device": "cuda", "n_estimators": 5}, task="binary",
                                n_classes=2, seed=0)
    assert (params["device"], rounds) == ("cuda", 5)


def test_a_device_xgboost_does_not_know_is_refused_with_its_reason(tmp_path: Path) -> None:
    job = load_job(demo_job(str(tmp_path), str(tmp_path / "out"),
                            models={"xgboost": {"device": "cudaa"}}))
    with pytest.raises(ValueError, match=r"XGBoost refuses these parameters.*device"):
        check_models(job)


def test_the_bundle_records_the_device_the_boosting_asked_for(tmp_path: Path) -> None:
    def job(models: dict) -> object:
        return load_job(demo_job(str(tmp_path), str(tmp_path / "out"), models=models))

    assert boosting_device(job({"xgboost": {"n_estimators": 5}})) == "cpu"
    assert boosting_device(job({"logistic_regression": {},
                                "xgboost": {"device": "cuda:1"}})) == "cuda:1"
    assert [on_gpu(d) for d in ("cpu", "cuda", "cuda:1", "gpu", "GPU:0")] == [
        False, True, True, True, True]


@pytest.mark.integration
def test_check_device_names_the_workers_without_a_gpu(client) -> None:
    check_device(client, "cpu", "never raised")  # nothing to check
    with pytest.raises(cluster.ClusterError) as refused:
        check_device(client, "cuda:0", "do this instead")
    message = str(refused.value)
    assert "device 'cuda:0'" in message and "2 of 2 Dask worker(s) see none" in message
    assert "fall back to the CPU" in message and message.endswith("do this instead")
    assert all(worker in message for worker in client.scheduler_info()["workers"])


@pytest.mark.integration
def test_a_job_asking_for_a_gpu_is_refused_before_any_data_is_read(client,
                                                                   tmp_path: Path) -> None:
    """The training data does not even exist: the refusal comes before loading it."""
    out = tmp_path / "out"
    job = load_job(demo_job(str(tmp_path / "no-such-data"), str(out),
                            models={"xgboost": {"device": "cuda", "n_estimators": 5}}))
    with pytest.raises(cluster.ClusterError, match=r"remove models\.xgboost\.device"):
        run(job, client=client)
    assert not (out / "models").exists() and not (out / "runs").exists()
