"""Quality: the default job against XGBoost's no-argument defaults and a hand-tuned XGBoost.

For each public dataset (scikit-learn's bundled sets and generators, California housing and
agaricus from ../shared/data, 50,000 rows of the demo's loan data at scale 1): one train/test
split (seed 0, stratified for classification);
``mlpipe run`` of the shortest job (data, target, task, output: no ``models:`` block, so
``search: auto`` with its default time budget) on the training rows, its bundle loaded with
``load_model`` and scored on the test rows; in the same
run, on the same training rows, ``XGBClassifier()`` / ``XGBRegressor()`` with no arguments,
and a hand-tuned XGBoost (learning rate 0.05, depth 6, rounds by 5-fold ``xgboost.cv`` early
stopping on the log loss / RMSE). Goal: the default job at least as good as the defaults,
within the test set's noise (the binomial standard error of an accuracy; for RMSE, the
standard error of the squared errors' mean, carried to the RMSE). The detail column says
which family won, how many candidates the search tried and the run's wall time.

One more row runs ``examples/california_housing.yaml`` (its features, preprocessing and split)
as shipped, with its hand-written ``models:`` and ``train:`` blocks, against the same job with
both blocks removed (``search: auto``, default budget): the holdout RMSE of each run. Goal
(issue #14): the auto job below 42,000 and no worse than the hand-written one.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "california_housing.yaml"


def _datasets(scale: float) -> dict:
    from sklearn.datasets import (
        load_breast_cancer,
        load_diabetes,
        load_iris,
        load_wine,
        make_classification,
    )

    def frame(X, y, prefix="f"):
        X = pd.DataFrame(X, columns=[f"{prefix}{i}" for i in range(X.shape[1])])
        return X, pd.Series(y)

    out = {
        "wine": (*load_wine(return_X_y=True, as_frame=True), "multiclass", 0.3),
        "iris": (*load_iris(return_X_y=True, as_frame=True), "multiclass", 0.3),
        "breast_cancer": (*load_breast_cancer(return_X_y=True, as_frame=True), "binary", 0.3),
        "diabetes": (*load_diabetes(return_X_y=True, as_frame=True), "regression", 0.3),
        "make_classification_600_sep2": (*frame(*make_classification(
            600, 20, n_informative=8, class_sep=2.0, random_state=1)), "binary", 0.25),
        "make_classification_5000_sep0.7": (*frame(*make_classification(
            5000, 20, n_informative=6, class_sep=0.7, flip_y=0.05, random_state=2)),
            "binary", 0.25),
    }
    big = int(120_000 * scale)
    if big >= 20_000:  # above train.cv_rounds_below: the validation-split path
        out[f"make_classification_{big}_sep0.5"] = (*frame(*make_classification(
            big, 30, n_informative=10, class_sep=0.5, flip_y=0.05, random_state=3)),
            "binary", 0.25)
    housing = SHARED / "california_housing_geron" / "housing.csv"
    if housing.exists():
        data = pd.read_csv(housing)
        data["ocean_proximity"] = data["ocean_proximity"].astype("category")
        out["california_housing"] = (data.drop(columns="median_house_value"),
                                     data["median_house_value"], "regression", 0.2)
    out[f"demo_{int(50_000 * scale)}"] = (*_demo(int(50_000 * scale)), "binary", 0.25)
    agaricus = SHARED / "agaricus_xgboost" / "agaricus.txt.train"
    if agaricus.exists():
        from sklearn.datasets import load_svmlight_file

        X, y = load_svmlight_file(str(agaricus), n_features=127)
        out["agaricus"] = (*frame(X.toarray()[:, 1:], y.astype(int), "x"), "binary", 0.3)
    return out


def _demo(rows: int):
    """The demo's loan data (pipeline.demo), without the columns examples/demo.yaml leaves out
    (the two ids, the application time), text as categories (what XGBoost takes)."""
    from pipeline.demo import make_partition

    data = make_partition(0, rows).drop(columns=["application_id", "customer_id", "applied_at"])
    for column in data.columns:
        if pd.api.types.is_string_dtype(data[column]):
            data[column] = data[column].astype("category")
    return data.drop(columns="default"), data["default"]


def _split(X, y, task, test):
    from sklearn.model_selection import train_test_split

    return train_test_split(X, y, test_size=test, random_state=0,
                            stratify=y if task != "regression" else None)


def _score(task, y_true, pred) -> tuple[float, float]:
    """(accuracy or RMSE, its standard error on these test rows)."""
    y_true, pred = np.asarray(y_true), np.asarray(pred)
    if task == "regression":
        sq = (y_true - pred) ** 2
        rmse = math.sqrt(sq.mean())
        return rmse, sq.std(ddof=1) / math.sqrt(len(sq)) / (2 * rmse)
    acc = float((y_true == pred).mean())
    return acc, math.sqrt(max(acc * (1 - acc), 1 / len(y_true)) / len(y_true))


def _hand_tuned(X, y, task):
    import xgboost as xgb

    classes = np.unique(y) if task != "regression" else None
    label = np.searchsorted(classes, y) if classes is not None else np.asarray(y)
    params = {"learning_rate": 0.05, "max_depth": 6, "tree_method": "hist", "seed": 0,
              "enable_categorical": True}
    params.update({"binary": {"objective": "binary:logistic", "eval_metric": "logloss"},
                   "multiclass": {"objective": "multi:softprob", "eval_metric": "mlogloss",
                                  "num_class": len(classes) if classes is not None else 0},
                   "regression": {"objective": "reg:squarederror", "eval_metric": "rmse"}}[task])
    params.pop("enable_categorical")
    matrix = xgb.DMatrix(X, label, enable_categorical=True)
    cv = xgb.cv(params, matrix, 3000, nfold=5, early_stopping_rounds=50, seed=0,
                stratified=task != "regression")
    booster = xgb.train(params, matrix, len(cv))

    def predict(X_test):
        raw = booster.predict(xgb.DMatrix(X_test, enable_categorical=True))
        if task == "regression":
            return raw
        index = (raw > 0.5).astype(int) if task == "binary" else raw.argmax(axis=1)
        return classes[index]
    return predict


def run(scale: float = 1.0) -> list[dict]:
    import cluster
    from pipeline.artifacts import load_model
    from pipeline.config import load_job
    from pipeline.workflow import run as run_job

    rows = []
    with cluster.connect({"n_workers": 2, "threads_per_worker": 1}) as client, \
            tempfile.TemporaryDirectory(prefix="mlpipe-quality-") as tmp:
        for name, (X, y, task, test) in _datasets(scale).items():
            X_train, X_test, y_train, y_test = _split(X, y, task, test)
            folder = Path(tmp) / name
            folder.mkdir()
            X_train.assign(__label=np.asarray(y_train)).to_parquet(folder / "train.parquet")
            job = load_job({"name": name, "output": str(folder / "out"),
                            "data": {"train": str(folder / "train.parquet"),
                                     "target": "__label", "task": task}})
            start = time.perf_counter()
            result = run_job(job, client=client)
            seconds = time.perf_counter() - start
            ours, noise = _score(task, y_test, load_model(result.model_url).predict(X_test))
            from xgboost import XGBClassifier, XGBRegressor

            if task == "regression":
                default = XGBRegressor(enable_categorical=True).fit(X_train, y_train)
                ref, _ = _score(task, y_test, default.predict(X_test))
            else:
                classes = np.unique(y_train)
                default = XGBClassifier(enable_categorical=True).fit(
                    X_train, np.searchsorted(classes, y_train))
                ref, _ = _score(task, y_test, classes[default.predict(X_test)])
            tuned, _ = _score(task, y_test, _hand_tuned(X_train, y_train, task)(X_test))
            unit = "RMSE" if task == "regression" else "accuracy"
            size = f"{len(X_train):,} train / {len(X_test):,} test"
            model = result.metrics["model"]
            tried = sum(row["candidates"] for row in result.leaderboard)
            detail = (f"{result.family}, {tried} candidates"
                      + (f", {model['trees']} trees" if model.get("trees") else "")
                      + f", {seconds:.0f} s")
            for base, base_name in ((ref, "XGB*() defaults"), (tuned, "hand-tuned XGBoost")):
                rows.append({"benchmark": "quality", "operation": f"{name}: default job",
                             "size": size, "ours": round(ours, 4), "baseline": round(base, 4),
                             "baseline_name": base_name, "unit": unit,
                             "ratio": round(ours / base, 4) if base else None,
                             "goal": f"within ±{noise:.4f} (test SE)",
                             "met": bool(ours <= base + noise if task == "regression"
                                         else ours >= base - noise), "detail": detail})
        rows += _example_rows(client, Path(tmp))
    return rows


def _example_rows(client, tmp: Path) -> list[dict]:
    """The housing example as shipped against the same job with ``search: auto``."""
    from pipeline.config import load_job
    from pipeline.workflow import run as run_job

    spec = yaml.safe_load(EXAMPLE.read_text())
    spec["data"]["train"] = str((EXAMPLE.parent / spec["data"]["train"]).resolve())
    if not Path(spec["data"]["train"]).exists():
        return []
    auto = {key: value for key, value in spec.items() if key not in ("models", "train")}
    results = {}
    for name, job in (("hand-written", spec), ("auto", auto)):
        start = time.perf_counter()
        result = run_job(load_job({**job, "output": str(tmp / f"example-{name}")}),
                         client=client)
        results[name] = (result, time.perf_counter() - start)
    (auto_run, seconds), (hand_run, _) = results["auto"], results["hand-written"]
    ours, hand = auto_run.metrics["holdout"]["rmse"], hand_run.metrics["holdout"]["rmse"]
    rows = auto_run.metrics["rows"]
    return [{"benchmark": "quality", "operation": "california_housing example: auto job",
             "size": f"{rows['train']:,} train / {rows['holdout']:,} holdout",
             "ours": round(ours, 1), "baseline": round(hand, 1),
             "baseline_name": "the shipped example's models: block", "unit": "RMSE",
             "ratio": round(ours / hand, 4), "goal": "< 42,000 and <= the shipped example",
             "met": bool(ours < 42_000 and ours <= hand),
             "detail": f"{auto_run.family}, {seconds:.0f} s"}]
