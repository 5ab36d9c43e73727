"""Distributed equals local: xgboost.dask on a 1-worker cluster predicts as XGBClassifier."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.train import fit_xgboost, xgb_params

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def one_worker():
    import cluster

    with cluster.connect({"n_workers": 1, "threads_per_worker": 2}) as client:
        yield client


def data(task: str, n: int = 4000, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"a": rng.normal(size=n), "b": rng.exponential(size=n),
                      "c": pd.Categorical(rng.choice(list("pqrs"), n))})
    signal = X["a"] * 2 + np.log1p(X["b"]) + (X["c"] == "q") * 1.5 + rng.normal(0, 0.5, n)
    if task == "regression":
        return X, signal.to_numpy()
    if task == "binary":
        return X, (signal > signal.median()).to_numpy().astype(int)
    return X, np.digitize(signal, np.quantile(signal, [0.33, 0.66]))


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_dask_training_matches_single_process(one_worker, task: str) -> None:
    import dask.dataframe as dd
    import xgboost

    X, y = data(task)
    params = {"n_estimators": 25, "max_depth": 4, "learning_rate": 0.3, "tree_method": "hist"}
    n_classes = 3 if task == "multiclass" else 2
    ddf = one_worker.persist(dd.from_pandas(X.assign(__y=y), npartitions=1))
    fit = fit_xgboost(ddf[["a", "b", "c"]], ddf["__y"], None, None, params=params, task=task,
                      n_classes=n_classes, early_stopping_rounds=None, seed=0,
                      client=one_worker)
    ours = fit.booster.inplace_predict(X)

    cls = xgboost.XGBRegressor if task == "regression" else xgboost.XGBClassifier
    local = cls(**params, enable_categorical=True, random_state=0).fit(X, y)
    theirs = local.predict(X) if task == "regression" else local.predict_proba(X)
    if task == "binary":
        theirs = theirs[:, 1]
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert fit.n_estimators == 25

    # our training step is xgboost.dask's own: its sklearn-style estimator agrees too
    from xgboost import dask as dxgb

    dcls = dxgb.DaskXGBRegressor if task == "regression" else dxgb.DaskXGBClassifier
    wrapped = dcls(**params, enable_categorical=True, random_state=0)
    wrapped.client = one_worker
    wrapped.fit(ddf[["a", "b", "c"]], ddf["__y"])
    dpred = (wrapped.predict(ddf[["a", "b", "c"]]) if task == "regression"
             else wrapped.predict_proba(ddf[["a", "b", "c"]])).compute()
    if task == "binary":
        dpred = np.asarray(dpred)[:, 1]
    np.testing.assert_allclose(ours, np.asarray(dpred), atol=1e-5)


def test_one_partition_with_categoricals_on_two_workers(client) -> None:
    # a small CSV is one partition: validation rows on the other worker used to fail with
    # "A worker cannot have empty input when a dataframe with categorical features is used"
    import dask.dataframe as dd

    X, y = data("regression", n=2000)
    train = dd.from_pandas(X.iloc[:1500].assign(__y=y[:1500]), npartitions=1)
    valid = dd.from_pandas(X.iloc[1500:].assign(__y=y[1500:]), npartitions=1)
    workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
    assert len(workers) == 2
    train = client.persist(train, workers=workers[:1])
    valid = client.persist(valid, workers=workers[1:])  # the placement that failed
    fit = fit_xgboost(train[["a", "b", "c"]], train["__y"], valid[["a", "b", "c"]],
                      valid["__y"], params={"n_estimators": 10, "max_depth": 3},
                      task="regression", n_classes=None, early_stopping_rounds=5, seed=0,
                      client=client)
    assert fit.booster.num_boosted_rounds() >= 1 and "valid" in fit.history


def test_boosting_progress_reaches_the_client(one_worker, client) -> None:
    # one_worker is not the default client here (the session's `client` is newer):
    # xgboost.dask on a non-default client used to deadlock
    import time

    import dask.dataframe as dd

    from pipeline.checkpoint import PROGRESS_TOPIC

    X, y = data("binary", n=1000)
    ddf = one_worker.persist(dd.from_pandas(X.assign(__y=y), npartitions=1))
    fit_xgboost(ddf[["a", "b", "c"]], ddf["__y"], ddf[["a", "b", "c"]], ddf["__y"],
                params={"n_estimators": 12, "max_depth": 2}, task="binary", n_classes=2,
                early_stopping_rounds=None, seed=0, client=one_worker)
    deadline = time.monotonic() + 30
    while True:  # the last round is always reported; events travel asynchronously
        events = [msg for _, msg in one_worker.get_events(PROGRESS_TOPIC)]
        last = [m for m in events if m["round"] == m["rounds"] == 12]
        if last:
            break
        assert time.monotonic() < deadline, events
        time.sleep(0.05)
    assert {"train-logloss", "valid-logloss"} <= set(last[0]["metrics"])


def test_xgb_params_translate_sklearn_names() -> None:
    params, rounds = xgb_params({"n_estimators": 40, "learning_rate": 0.05, "n_jobs": 8,
                                 "max_depth": 3}, task="multiclass", n_classes=4, seed=7)
    assert rounds == 40
    assert params["objective"] == "multi:softprob" and params["num_class"] == 4
    assert params["learning_rate"] == 0.05 and params["max_depth"] == 3
    assert params["random_state"] == 7
    assert "nthread" not in params and "n_jobs" not in params  # the worker's threads decide


def test_unknown_parameter_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="models.xgboost"):
        xgb_params({"n_estimators": "many"}, task="binary", n_classes=2, seed=0)


def test_misspelled_parameter_suggests() -> None:
    with pytest.raises(ValueError, match="unknown parameter 'max_dept'.*did you mean 'max_depth'"):
        xgb_params({"max_dept": 4}, task="binary", n_classes=2, seed=0)


def test_bad_value_fails_before_training() -> None:
    with pytest.raises(ValueError, match="XGBoost refuses these parameters"):
        xgb_params({"max_depth": -3}, task="regression", n_classes=None, seed=0)


def test_a_kept_family_stage_holds_the_evaluated_model_beside_the_refit_one() -> None:
    """A resumed run must score the holdout with the model as evaluated, as the uninterrupted
    run does (train.refit_all_below): the resume store keeps both boosters."""
    import copy
    from types import SimpleNamespace

    import xgboost
    from sklearn.pipeline import Pipeline

    from pipeline.config import load_job
    from pipeline.predictor import Predictor
    from pipeline.train import FamilyFit, Refit, load_family

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
    y = (X["a"] > 0).astype(int)

    def booster(rounds: int) -> xgboost.Booster:
        return xgboost.train({"objective": "binary:logistic"}, xgboost.DMatrix(X, y), rounds)

    job = load_job({"name": "t", "output": "/tmp/unused", "models": {"xgboost": {}},
                    "data": {"train": "/tmp/unused", "target": "y", "task": "binary"}})
    predictor = Predictor(task="binary", target="y", classes=[0, 1],
                          preprocessor=Pipeline([("keep", "passthrough")]), model=booster(5),
                          threshold=0.5, family="xgboost")
    evaluated = copy.copy(predictor)
    predictor.model = booster(9)  # the refit on every row
    refit = Refit("xgboost", "distributed", predictor.model, {}, 1.0, 200, {"trees": 5})
    fit = FamilyFit(None, refit, predictor, {"n": 1}, {"n": 1}, None, 0.1, evaluated)
    found = SimpleNamespace(family="xgboost")
    back = load_family(fit.files(), found, job, [0, 1])
    assert back.predictor.model.num_boosted_rounds() == 9
    assert back.as_evaluated.model.num_boosted_rounds() == 5
    assert load_family(FamilyFit(None, refit, predictor, {"n": 1}, {"n": 1}, None, 0.1).files(),
                       found, job, [0, 1]).evaluated is None
