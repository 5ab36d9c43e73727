"""The default job never loses to a library's no-argument defaults, and says when a model is
suspicious (issue 14): boosting rounds from a proper scoring rule, CV on small data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.artifacts import load_model
from pipeline.config import load_job
from pipeline.workflow import run

pytestmark = pytest.mark.integration


def _case(name: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series]:
    """The two rows of issue 14: scikit-learn's wine, and a separable generated set."""
    from sklearn.datasets import load_wine, make_classification
    from sklearn.model_selection import train_test_split

    if name == "wine":
        X, y = load_wine(return_X_y=True, as_frame=True)
        test = 0.3
    else:
        X, y = make_classification(600, 20, n_informative=8, class_sep=2.0, random_state=1)
        X, y = pd.DataFrame(X, columns=[f"f{i}" for i in range(20)]), pd.Series(y)
        test = 0.25
    return train_test_split(X, y, test_size=test, stratify=y, random_state=0)


def _default_job(X: pd.DataFrame, y: pd.Series, folder: Path, **extra: object) -> object:
    """The shortest job: data, target, task, output (no models block: ``search: auto``)."""
    folder.mkdir(parents=True, exist_ok=True)
    X.assign(label=y.to_numpy()).to_csv(folder / "train.csv", index=False)
    task = "multiclass" if y.nunique() > 2 else "binary"
    return load_job({"name": "q", "output": str(folder / "out"),
                     "data": {"train": str(folder / "train.csv"), "target": "label",
                              "task": task}, **extra})


def _accuracy(result: object, X_test: pd.DataFrame, y_test: pd.Series) -> float:
    return float((load_model(result.model_url).predict(X_test) == y_test.to_numpy()).mean())


@pytest.mark.parametrize("name", ["wine", "make_classification_600"])
def test_the_default_job_is_as_good_as_xgbclassifier(client, tmp_path: Path, name: str) -> None:
    from xgboost import XGBClassifier

    X_train, X_test, y_train, y_test = _case(name)
    reference = float(XGBClassifier().fit(X_train, y_train).score(X_test, y_test))
    result = run(_default_job(X_train, y_train, tmp_path), client=client)
    assert result.leaderboard[0]["search"] == "auto"
    ours = _accuracy(result, X_test, y_test)
    # one test row either way is a tie (54 and 150 test rows: 1.9 and 0.7 points)
    assert ours >= reference - 1 / len(y_test), (ours, reference)
    assert result.metrics["warnings"] == []


def test_xgboost_alone_keeps_the_rounds_cv_chose(client, tmp_path: Path) -> None:
    """The job that named xgboost with our defaults: 6 trees kept before rounds came from a
    proper scoring rule by CV."""
    from xgboost import XGBClassifier

    X_train, X_test, y_train, y_test = _case("make_classification_600")
    reference = float(XGBClassifier().fit(X_train, y_train).score(X_test, y_test))
    result = run(_default_job(X_train, y_train, tmp_path, models={"xgboost": {}}),
                 client=client)
    assert _accuracy(result, X_test, y_test) >= reference - 1 / len(y_test)
    model = result.metrics["model"]
    assert model["trees"] >= 10  # was 6 trees, chosen on a saturating AUC
    assert model["rounds_from"].startswith("5-fold CV")
    assert result.metrics["warnings"] == []


def test_early_stopping_watches_a_proper_scoring_rule(client) -> None:
    """Separable classes: the validation AUC is 1.0 from the first rounds on, the log loss
    keeps falling; boosting must not stop after a handful of trees."""
    import dask.dataframe as dd

    from pipeline.train import eval_metrics, fit_xgboost

    assert [eval_metrics(t)[-1] for t in ("binary", "multiclass", "regression")] == \
        ["logloss", "mlogloss", "rmse"]
    rng = np.random.default_rng(0)
    n = 400
    X = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n)})
    y = pd.Series((X["a"] > 0).astype("int64"))
    X.loc[y == 1, "a"] += 3.0  # a wide margin: any split on a separates the classes
    train, valid = slice(0, 360), slice(360, None)
    parts = [dd.from_pandas(v, npartitions=1) for v in (X[train], y[train], X[valid], y[valid])]
    fit = fit_xgboost(*parts, params={"n_estimators": 200, "learning_rate": 0.1},
                      task="binary", n_classes=2, early_stopping_rounds=10, client=client)
    assert fit.history["valid"]["auc"][2] == 1.0
    assert fit.n_estimators > 50


def test_the_search_picks_a_checkpoint_by_the_loss(client) -> None:
    """With ROC AUC as the primary metric, the CV checkpoint is the lowest mean log loss, not
    the first round at which the AUC saturates."""
    from pipeline.select import search_family
    from tests.pipeline.test_select import pipeline_for

    rng = np.random.default_rng(1)
    n = 600
    X = pd.DataFrame({"a": rng.normal(size=n), "b": rng.exponential(size=n), "k": "p"})
    y = (X["a"] > 0).to_numpy().astype(int)
    X.loc[y == 1, "a"] += 3.0
    found = search_family("xgboost", pipeline_for("xgboost"), X, y,
                          params={"n_estimators": 150, "max_depth": [2, 3]}, task="binary",
                          primary="roc_auc", method="grid", cv=3, n_iter=1, factor=3, seed=0,
                          client=client)
    assert (found.cv_results["rounds"] > 50).all(), found.cv_results[["params", "rounds"]]
    assert found.cv_mean > 0.99


def test_a_model_no_better_than_a_constant_is_reported(client, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    X = pd.DataFrame({"a": rng.normal(size=3000), "b": rng.normal(size=3000)})
    y = pd.Series(rng.integers(0, 2, 3000))  # no signal at all
    result = run(_default_job(X, y, tmp_path, models={"xgboost": {}}), client=client)
    warnings = result.metrics["warnings"]
    assert warnings and any("no better than" in w or "tree(s) kept" in w for w in warnings)
    assert result.leaderboard[0]["warnings"] == warnings
    assert "warning: xgboost:" in result.leaderboard_table()
    metrics = json.loads((Path(result.run_url) / "metrics.json").read_text())
    assert metrics["warnings"] == warnings
    report = (Path(result.run_url) / "report.html").read_text()
    assert 'id="warnings"' in report and warnings[0].split(":")[0] in report


def test_below_refit_all_below_the_bundle_is_the_evaluated_recipe_on_every_row(
        client, tmp_path: Path, demo_dir: Path) -> None:
    """The validation-split path (train.cv_rounds_below: 0) on 20,000 rows: the bundle's model
    is the evaluated one refit on every row with the rounds it kept, while everything that
    scores the holdout (the metrics, the operating point, the reference profile) describes the
    evaluated model: the same as a run that ships that model itself (refit_all_below: 0)."""
    from pipeline.artifacts import open_bundle
    from tests.conftest import demo_job

    runs = {}
    for below in (0, 250_000):
        job = demo_job(str(demo_dir), str(tmp_path / f"out-{below}"),
                       models={"xgboost": {"n_estimators": 60, "max_depth": 4,
                                           "learning_rate": 0.3}},
                       evaluate={"min_precision": 0.5})
        job["train"] = {"cv_rounds_below": 0, "refit_all_below": below}
        runs[below] = run(load_job(job), client=client)
    shipped, refit = runs[0], runs[250_000]
    trees = shipped.metrics["model"]["trees"]
    assert refit.metrics["holdout"] == shipped.metrics["holdout"]  # chosen threshold included
    assert refit.metrics["threshold"] == shipped.metrics["threshold"]
    assert refit.metrics["model"]["trees"] == trees
    assert refit.metrics["model"]["refit"].startswith(f"the evaluated recipe ({trees:,} rounds)")
    assert refit.metrics["model"]["refit_seconds"] > 0 and "refit" not in shipped.metrics["model"]
    profiles = [open_bundle(r.model_url).json("profile.json") for r in (shipped, refit)]
    assert profiles[0]["outputs"] == profiles[1]["outputs"]
    models = [load_model(r.model_url) for r in (shipped, refit)]
    assert [m.model.num_boosted_rounds() for m in models] == [trees, trees]
    rows = pd.concat([pd.read_parquet(p) for p in sorted(demo_dir.glob("*.parquet"))])
    first, second = (m.predict_proba(rows.head(2000)) for m in models)
    assert not np.allclose(first, second)  # another model: it saw the holdout rows too
