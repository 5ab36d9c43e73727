"""Hyperparameter search: ours against scikit-learn, and successive halving against the grid.

1. Grid search with shared preprocessing: the same Pipeline (feature kernels, out-of-fold
   target encoding, imputation, one-hot, scaling, then a logistic regression), the same grid
   and folds. Ours: ``pipeline.select`` on a LocalCluster of 2 single-threaded workers, which
   fits each fold's preprocessing once for all candidates. Baseline: scikit-learn's
   GridSearchCV(n_jobs=2), which refits it for every candidate. Goal: >= 1.5x faster.
   Second baseline: dask-ml's GridSearchCV on the same cluster, which merges the shared
   prefixes into one graph too; the row is the evidence for pipeline/select.py running its
   own engine (its docstring says why): goal > 1x, the same best score.
2. Successive halving vs the full grid on XGBoost (27 candidates of tree shape and row
   sampling, 243 rounds), both ours: goal >= 3x faster with a best CV score within 0.002.
   Both scores are CV scores at each candidate's best round count. Halving runs with each
   budget XGBoost has: boosting rounds (the default; survivors continued, early stopping
   after the job default of 20 rounds without a better fold score) and training rows (every
   rung trained afresh on a bigger share of the fold, all rounds, the same early stopping).
3. The same two budgets on two more datasets (scikit-learn's make_hastie_10_2 and california
   housing), without a goal: which budget keeps the grid's winner depends on the data.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def _job():
    from pipeline.config import load_job

    return load_job({
        "name": "bench", "output": "/tmp/unused",
        "data": {"train": "/tmp/unused", "target": "default", "task": "binary"},
        "preprocess": {"encode": {"employer": {"method": "target"},
                                  "branch": {"method": "frequency"}},
                       "impute": {"numeric": "median", "indicators": True}},
        "features": [{"kernel": "log1p", "columns": ["income", "loan_amount", "savings"]},
                     {"kernel": "bin", "columns": ["credit_score"], "n_bins": 20},
                     {"kernel": "count", "columns": ["state"]}],
    })


def _data(rows: int):
    import pandas as pd

    from pipeline.demo import make_partition

    parts = [make_partition(i, min(50_000, rows - i * 50_000))
             for i in range((rows + 49_999) // 50_000)]
    frame = pd.concat(parts, ignore_index=True)
    y = frame.pop("default").to_numpy()
    X = frame.drop(columns=["application_id", "customer_id", "applied_at"])
    return X, y


def _pipeline(job, columns, family: str, **fixed):
    from sklearn.pipeline import Pipeline

    from pipeline.models import make_estimator
    from pipeline.steps import prefix_steps, tail_steps

    return Pipeline(prefix_steps(job, columns, 2) + tail_steps(job, family)
                    + [("model", make_estimator(family, "binary", fixed, seed=0))])


def run(scale: float = 1.0) -> list[dict]:
    import cluster

    job = _job()
    with cluster.connect({"n_workers": 2, "threads_per_worker": 1}) as client:
        # -- 1. shared preprocessing: ours vs scikit-learn and dask-ml --------------------
        rows, X, y = grid_search(job, client, scale)
        columns = list(X.columns)

        # -- 2. successive halving vs the full grid ---------------------------------------
        n = max(5_000, int(40_000 * scale))
        X, y = X.head(n), y[:n]
        # tree shape and sampling at a fixed learning rate: the usual grid. Halving on rounds
        # ranks fast learners first: after 27 rounds the deep trees lead, while on this data
        # the shallow ones win after 150 (their learning curves cross), which costs halving
        # on rounds some of its best score here; a grid over the learning rate is worse still.
        # Halving on rows has the opposite lean (little data favours simple models).
        grid = {"max_depth": [3, 5, 7], "min_child_weight": [1, 10, 50],
                "subsample": [0.6, 0.8, 1.0], "learning_rate": 0.1, "n_estimators": [243]}
        rows += _halving(_pipeline(job, columns, "xgboost"), X, y, "binary", "roc_auc",
                         grid, client, f"{n:,} demo rows", goal=True)

        # -- 3. the same on two more datasets: which budget suits which data ----------------
        for name, pipe, X, y, task, primary in _more_data(scale):
            rows += _halving(pipe, X, y, task, primary, grid, client, name, goal=False)
    return rows


def grid_search(job, client, scale: float = 1.0) -> tuple[list[dict], object, np.ndarray]:
    """Section 1: one grid (a logistic regression's C, 6 candidates x 3 folds, the job's
    shared preprocessing) searched by ours, scikit-learn's GridSearchCV(n_jobs=2) and
    dask-ml's GridSearchCV on ``client``'s cluster; two rows, and the data (X, y)."""
    from dask_ml.model_selection import GridSearchCV as DaskGridSearchCV
    from sklearn.model_selection import GridSearchCV

    from pipeline.models import cv_splitter
    from pipeline.select import search_family

    rows = []
    n = max(5_000, int(100_000 * scale))
    X, y = _data(n)
    columns = list(X.columns)
    grid = {"C": [0.001, 0.01, 0.1, 1.0, 10.0, 100.0]}
    pipe = _pipeline(job, columns, "logistic_regression", max_iter=100)
    search_family("logistic_regression", pipe, X.head(2000), y[:2000], params=grid,
                  task="binary", primary="roc_auc", method="grid", cv=3, n_iter=6,
                  factor=3, seed=0, client=client)  # warm-up: imports, JIT on workers
    start = time.perf_counter()
    ours = search_family("logistic_regression", pipe, X, y, params=grid, task="binary",
                         primary="roc_auc", method="grid", cv=3, n_iter=6, factor=3,
                         seed=0, client=client)
    ours_s = time.perf_counter() - start
    size = f"{n:,} rows, 6 candidates x 3 folds"
    spelled = {f"model__{k}": v for k, v in grid.items()}
    sk = GridSearchCV(pipe, spelled, cv=cv_splitter("binary", 3, 0), scoring="roc_auc",
                      n_jobs=2, refit=False)
    rows.append(_baseline_row(sk, X, y, ours.cv_mean, ours_s, size, 1.5, ">=",
                              "sklearn GridSearchCV(n_jobs=2)"))
    # dask-ml: the same pipeline, grid and folds, on the same 2 workers (its scheduler is
    # the client); refit=False like the others, so each times the search alone
    dm = DaskGridSearchCV(pipe, spelled, cv=cv_splitter("binary", 3, 0), scoring="roc_auc",
                          refit=False, scheduler=client)
    rows.append(_baseline_row(dm, X, y, ours.cv_mean, ours_s, size, 1.0, ">",
                              "dask-ml GridSearchCV (same 2 workers)"))
    return rows, X, y


def _baseline_row(search: Any, X: Any, y: Any, best: float, ours_s: float, size: str,
                  goal: float, compare: str, name: str) -> dict:
    """Time a library's grid search on the same pipeline, grid and folds, and the table row
    against ours: a ratio ``compare`` ``goal`` with the same best score."""
    start = time.perf_counter()
    search.fit(X, y)
    seconds = time.perf_counter() - start
    same = abs(float(np.max(search.cv_results_["mean_test_score"])) - best)
    ratio = seconds / ours_s
    return {"benchmark": "search", "operation": "grid search, shared preprocessing",
            "size": size, "ours": ours_s, "baseline": seconds, "baseline_name": name,
            "unit": "s", "ratio": ratio,
            "goal": f"{compare} {goal:g}x (same best score: |diff| = {same:.1e})",
            "met": (ratio >= goal if compare == ">=" else ratio > goal) and same < 1e-4}


def _halving(pipe, X, y, task: str, primary: str, grid: dict, client, name: str,
             goal: bool) -> list[dict]:
    """Halving on each of XGBoost's budgets against the full grid: a row for each budget."""
    from pipeline.models import GREATER_IS_BETTER
    from pipeline.select import search_family

    timings, results = {}, {}
    for method, budget in (("grid", None), ("halving", "rounds"), ("halving", "rows")):
        start = time.perf_counter()
        results[budget] = search_family("xgboost", pipe, X, y, params=grid, task=task,
                                        primary=primary, method=method, cv=3, n_iter=27,
                                        factor=3, seed=0, client=client, patience=20,
                                        budget=budget)
        timings[budget] = time.perf_counter() - start
    out = []
    for budget in ("rounds", "rows"):
        gap = results[None].cv_mean - results[budget].cv_mean  # > 0: halving's best is worse
        if not GREATER_IS_BETTER[primary]:
            gap = -gap
        ratio = timings[None] / timings[budget]
        out.append({
            "benchmark": "search",
            "operation": f"successive halving ({budget} budget) vs full grid (xgboost)",
            "size": f"{name}, 27 candidates x 3 folds, 243 rounds",
            "ours": timings[budget], "baseline": timings[None],
            "baseline_name": "full grid (ours, every candidate 243 rounds)", "unit": "s",
            "ratio": ratio,
            "goal": (f">= 3x, best within 0.002 (gap {gap:+.4f})" if goal
                     else f"- (best {primary} {gap:+.4f} worse)"),
            "met": ratio >= 3 and gap <= 0.002 if goal else None,
        })
    return out


def _more_data(scale: float):
    """(name, pipeline, X, y, task, primary): make_hastie_10_2 (binary, scikit-learn's
    generator) and california housing (regression, the shared copy; skipped if absent)."""
    from pathlib import Path

    import pandas as pd
    from sklearn.datasets import make_hastie_10_2
    from sklearn.pipeline import Pipeline

    from pipeline.models import make_estimator

    n = max(5_000, int(20_000 * scale))
    X, y = make_hastie_10_2(n, random_state=0)
    yield (f"{n:,} rows of make_hastie_10_2", Pipeline([("model", make_estimator(
        "xgboost", "binary", {}, seed=0))]), pd.DataFrame(X).add_prefix("x"),
        (y > 0).astype(int), "binary", "roc_auc")
    housing = Path(__file__).resolve().parents[2] / "shared/data/california_housing_geron"
    if (housing / "housing.csv").exists():
        frame = pd.read_csv(housing / "housing.csv").drop(columns="ocean_proximity")
        y = frame.pop("median_house_value").to_numpy(float) / 1e5
        yield (f"{len(frame):,} rows of california housing (rmse, $100k)", Pipeline([(
            "model", make_estimator("xgboost", "regression", {}, seed=0))]), frame, y,
            "regression", "rmse")
