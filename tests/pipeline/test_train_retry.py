"""A worker killed during xgboost.dask training: the step retries from its last checkpoint."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest

from pipeline.train import TrainingError, fit_xgboost

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARAMS = {"n_estimators": 400, "max_depth": 5, "learning_rate": 0.05, "tree_method": "hist"}


@pytest.fixture
def own_cluster():
    """Two worker processes with nannies (a killed worker is restarted), just for this test."""
    import cluster

    with cluster.connect({"n_workers": 2, "threads_per_worker": 1}) as client:
        yield client


def frames(client, n: int = 150_000):
    import dask.dataframe as dd

    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(n, 12)), columns=[f"x{i}" for i in range(12)])
    logit = X["x0"] * 1.5 - X["x1"] + np.sin(3 * X["x2"]) + X["x3"] * X["x4"]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    ddf = dd.from_pandas(X.assign(y=y), npartitions=8).persist()
    return ddf.drop(columns="y"), ddf["y"], X.iloc[:5000], y[:5000]


def checkpoint_rounds(fs, path) -> int:
    import xgboost

    try:
        raw = fs.cat_file(path)
    except FileNotFoundError:
        return 0
    booster = xgboost.Booster()
    booster.load_model(bytearray(raw))
    return booster.num_boosted_rounds()


@pytest.mark.timeout(600)
def test_killed_worker_resumes_from_checkpoint(own_cluster, tmp_path) -> None:
    from fsspec.implementations.local import LocalFileSystem
    from sklearn.metrics import roc_auc_score

    client = own_cluster
    X, y, X_check, y_check = frames(client)
    fs = LocalFileSystem()

    start = time.perf_counter()
    calm = fit_xgboost(X, y, None, None, params=PARAMS, task="binary", n_classes=2,
                       early_stopping_rounds=None, client=client,
                       checkpoint=(fs, str(tmp_path / "calm.ubj")), checkpoint_every=25)
    calm_seconds = time.perf_counter() - start

    target = (fs, str(tmp_path / "killed.ubj"))
    killed: dict[str, object] = {}

    def kill_late() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if checkpoint_rounds(*target) >= 150:
                pids = client.run(os.getpid)
                address, pid = sorted(pids.items())[-1]
                os.kill(pid, signal.SIGKILL)
                killed.update(address=address, at=checkpoint_rounds(*target))
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_late, daemon=True)
    watcher.start()
    start = time.perf_counter()
    hurt = fit_xgboost(X, y, None, None, params=PARAMS, task="binary", n_classes=2,
                       early_stopping_rounds=None, client=client, retries=2,
                       checkpoint=target, checkpoint_every=25)
    hurt_seconds = time.perf_counter() - start
    watcher.join(timeout=10)

    assert killed, "the worker was never killed: training ended before round 150"
    assert [a["ok"] for a in hurt.attempts] == [False, True]
    resumed = hurt.attempts[1]["resumed_from"]
    assert resumed >= 150 and resumed % 25 == 0  # near where it died, not round 0
    assert hurt.booster.num_boosted_rounds() == calm.booster.num_boosted_rounds() == 400
    auc_calm = roc_auc_score(y_check, calm.booster.inplace_predict(X_check))
    auc_hurt = roc_auc_score(y_check, hurt.booster.inplace_predict(X_check))
    assert abs(auc_calm - auc_hurt) < 0.005
    print(f"\nundisturbed {calm_seconds:.1f} s; killed at round {killed['at']}, resumed from "
          f"{resumed}, {hurt_seconds:.1f} s; AUC {auc_calm:.4f} vs {auc_hurt:.4f}")


@pytest.mark.timeout(300)
def test_a_real_error_is_not_retried(own_cluster) -> None:
    X, y, _, _ = frames(own_cluster, n=2000)
    bad = y.map_partitions(lambda s: s * 0 - 5, meta=y._meta)  # labels outside [0, 1]
    with pytest.raises(Exception) as info:
        fit_xgboost(X, bad, None, None, params={"n_estimators": 5}, task="binary",
                    n_classes=2, early_stopping_rounds=None, client=own_cluster, retries=3)
    # XGBoost's own error, raised at once: no worker was lost, so no retry was attempted
    assert not isinstance(info.value, TrainingError)
    assert "base_score" in str(info.value) or "label" in str(info.value).lower()
