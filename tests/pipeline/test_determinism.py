"""The same data, seed and cluster shape train the same model bytes (issue #17 item 1): on
fresh clusters, into the same output, and resumed from a checkpoint."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import demo_job

pytestmark = [pytest.mark.integration]

PARAMS = {"n_estimators": 120, "max_depth": 4, "learning_rate": 0.1}


def frames(n: int = 30_000, parts: int = 5):
    """Training and validation frames; from_pandas leaves the partitions wherever the
    scheduler puts them, which used to decide what each xgboost.dask rank trained on."""
    import dask.dataframe as dd

    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(n, 6)), columns=[f"x{i}" for i in range(6)])
    y = (X.x0 * X.x1 + X.x2 - X.x3 + rng.normal(size=n) > 0).astype("int64")
    ddf = dd.from_pandas(X.assign(y=y), npartitions=parts + 1).persist()
    train, valid = ddf.partitions[:parts], ddf.partitions[parts:]
    cols = list(X.columns)
    return train[cols], train["y"], valid[cols], valid["y"]


def digest(booster) -> str:
    return hashlib.sha256(bytes(booster.save_raw("ubj"))).hexdigest()


def fit(client, checkpoint=None, **params):
    from pipeline.train import fit_xgboost

    return fit_xgboost(*frames(), params={**PARAMS, **params}, task="binary", n_classes=2,
                       early_stopping_rounds=10, client=client, checkpoint=checkpoint,
                       checkpoint_every=10)


@pytest.mark.timeout(600)
def test_same_data_same_model_on_fresh_clusters() -> None:
    import cluster

    digests, placements = [], []
    for _ in range(3):
        with cluster.connect({"n_workers": 2, "threads_per_worker": 1}) as client:
            result = fit(client)
            digests.append(digest(result.booster))
            placements.append(result.n_estimators)
    assert len(set(digests)) == 1, digests
    assert len(set(placements)) == 1


@pytest.mark.timeout(600)
def test_resumed_from_a_checkpoint_equals_uninterrupted(client, tmp_path: Path) -> None:
    from fsspec.implementations.local import LocalFileSystem

    whole = fit(client)
    assert whole.n_estimators > 30, "early stopping came too soon for this test"
    target = (LocalFileSystem(), str(tmp_path / "xgboost.ubj"))
    # a run killed after round 30 leaves this checkpoint (with its evaluation history)
    fit(client, checkpoint=target, n_estimators=30)
    resumed = fit(client, checkpoint=target)
    assert resumed.attempts[0]["resumed_from"] == 30
    assert resumed.n_estimators == whole.n_estimators
    assert resumed.history == whole.history
    assert digest(resumed.booster) == digest(whole.booster)


def mlpipe_run(job_file: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(job_file)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def models(out: Path) -> list[str]:
    return sorted(hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in out.glob("runs/*/model.ubj"))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_same_job_same_model_fresh_same_output_and_after_a_kill(tmp_path: Path,
                                                                 demo_dir: Path) -> None:
    """`mlpipe run` of one job: into a fresh output, again into the same output, and after
    a run killed during training (the rerun resumes its checkpoint): one model."""
    def job_file(out: Path) -> Path:
        job = demo_job(str(demo_dir), str(out), features=[],
                       models={"xgboost": {"n_estimators": 300, "max_depth": 3,
                                           "learning_rate": 0.05}},
                       cluster={"n_workers": 2, "threads_per_worker": 1})
        # the distributed path (xgboost.dask) even on these few rows, checkpoints often
        job["train"] = {"cv_rounds_below": 0, "checkpoint_every": 5,
                        "early_stopping_rounds": 20}
        path = tmp_path / f"{out.name}.yaml"
        path.write_text(yaml.safe_dump(job))
        return path

    first, second = tmp_path / "first", tmp_path / "second"
    for n in range(2):  # fresh output, then the same output again
        run = mlpipe_run(job_file(first), tmp_path / f"first-{n}.log")
        assert run.wait(timeout=300) == 0, (tmp_path / f"first-{n}.log").read_text()[-3000:]
    killed = mlpipe_run(job_file(second), tmp_path / "killed.log")
    try:
        deadline = time.monotonic() + 300
        while not list(second.glob("stages/*/checkpoints/xgboost.ubj")):
            assert killed.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint was ever written"
            time.sleep(0.02)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=60)
    finally:
        if killed.poll() is None:
            killed.kill()
    rerun = mlpipe_run(job_file(second), tmp_path / "rerun.log")
    assert rerun.wait(timeout=300) == 0, (tmp_path / "rerun.log").read_text()[-3000:]

    assert len(models(first)) == 2 and len(models(second)) == 1
    assert len(set(models(first) + models(second))) == 1, (models(first), models(second))
