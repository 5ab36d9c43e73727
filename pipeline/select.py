"""Hyperparameter search on the cluster, and the choice of a winner.

Three methods, all on an in-memory sample of the training rows (``search.sample_rows``; each
family may cap it lower, e.g. kernel SVMs), with k-fold CV:

- ``grid`` / ``random``: ``dask_ml.model_selection.GridSearchCV`` / ``RandomizedSearchCV``.
  Candidates x folds run as parallel tasks on the cluster, and because the searched object is
  the whole Pipeline (preprocessing prefix, the family's tail, the model), dask-ml fits each
  fold's preprocessing once and shares it between all candidates (it merges identical pipeline
  prefixes in one graph). Multi-metric scoring; the primary metric decides.
- ``halving``: successive halving on distributed futures (dask-ml's own HyperbandSearchCV /
  SuccessiveHalvingSearchCV fail on dask >= 2025.3, dask/dask-ml#1016). Every candidate starts
  with a small budget; at each rung the best ``1/factor`` continue with ``factor`` times more.
  The budget is the family's: boosting rounds for XGBoost (continued with ``xgb_model``, not
  restarted), ``partial_fit`` epochs for SGD / MLP, training rows for the rest.

With ``search.strategy: full``, XGBoost candidates are instead each trained with xgboost.dask
on all training rows with early stopping and scored on the validation fold (one at a time:
every candidate already uses every worker, and two concurrent xgboost.dask trainings on
single-threaded workers would each wait for the other's slots).

Selection rule: the best mean CV score on the primary metric; ties broken by the lower mean
fit time.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipeline.models import FAMILIES, GREATER_IS_BETTER, SCORERS

logger = logging.getLogger("pipeline")

#: extra metrics scored in CV next to the primary one (cheap to score, useful to compare).
CV_METRICS = {"binary": ("roc_auc", "accuracy", "f1", "log_loss"),
              "multiclass": ("accuracy", "f1_macro", "log_loss"),
              "regression": ("rmse", "mae", "r2")}


@dataclass
class SearchResult:
    """One family's search: its best candidate and every candidate's CV scores."""

    family: str
    method: str
    best_params: dict[str, Any]
    cv_mean: float | None
    cv_std: float | None
    fit_seconds: float
    candidates: int
    cv_results: pd.DataFrame = field(repr=False)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"family": self.family, "method": self.method, "best_params": self.best_params,
                "cv_mean": self.cv_mean, "cv_std": self.cv_std,
                "fit_seconds": self.fit_seconds, "candidates": self.candidates,
                "seconds": round(self.seconds, 3)}


def split_grid(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fixed parameters, searched ones: lists or distributions)."""
    fixed = {k: v for k, v in params.items() if not isinstance(v, list | dict)}
    searched = {k: v for k, v in params.items() if isinstance(v, list | dict)}
    return fixed, searched


def _distribution(spec: Mapping[str, Sequence[float]]) -> Any:
    from scipy import stats

    (kind, (low, high)), = spec.items()
    if kind == "uniform":
        return stats.uniform(low, high - low)
    if kind == "loguniform":
        return stats.loguniform(low, high)
    return stats.randint(int(low), int(high) + 1)


def scorers(task: str, primary: str) -> dict[str, str]:
    """{our metric name: scikit-learn scorer}, the primary metric first."""
    names = [primary] + [m for m in CV_METRICS[task] if m != primary]
    return {name: SCORERS[name] for name in names}


def cv_splitter(task: str, folds: int, seed: int) -> Any:
    from sklearn.model_selection import KFold, StratifiedKFold

    if task == "regression":
        return KFold(folds, shuffle=True, random_state=seed)
    return StratifiedKFold(folds, shuffle=True, random_state=seed)


def family_rows(family: str, sample_rows: int) -> int:
    return min(sample_rows, FAMILIES[family].get("max_rows", sample_rows))


# --------------------------------------------------------------------------- grid / random


def search_family(family: str, pipeline: Any, X: pd.DataFrame, y: np.ndarray, *,
                  params: Mapping[str, Any], task: str, primary: str, method: str, cv: int,
                  n_iter: int, factor: int, seed: int, client: Any) -> SearchResult:
    """Search one family's candidates with k-fold CV on the sample ``X``, ``y``.

    ``pipeline`` is the unfitted Pipeline whose last step, ``model``, is the family's
    estimator; the fixed (scalar) ``params`` are set on it, the lists and distributions
    searched.
    """
    from sklearn.base import clone

    from pipeline.models import param_prefix

    start = time.perf_counter()
    fixed, searched = split_grid(params)
    inner = param_prefix(family, task)
    pipeline = clone(pipeline).set_params(**{f"model__{inner}{k}": _value(v)
                                             for k, v in fixed.items()})
    if method == "halving":
        result = halving_search(family, pipeline, X, y, searched=searched, task=task,
                                primary=primary, cv=cv, factor=factor, n_iter=n_iter,
                                seed=seed, client=client)
    else:
        result = _dask_ml_search(family, pipeline, X, y, searched=searched, task=task,
                                 primary=primary, method=method, cv=cv, n_iter=n_iter,
                                 seed=seed, client=client)
    result.best_params = {**fixed, **result.best_params}
    result.seconds = time.perf_counter() - start
    return result


def _dask_ml_search(family: str, pipeline: Any, X: pd.DataFrame, y: np.ndarray, *,
                    searched: Mapping[str, Any], task: str, primary: str, method: str, cv: int,
                    n_iter: int, seed: int, client: Any) -> SearchResult:
    from dask_ml.model_selection import GridSearchCV, RandomizedSearchCV

    from pipeline.models import param_prefix

    scoring = scorers(task, primary)
    inner = param_prefix(family, task)
    grid = {f"model__{inner}{k}": [_value(v) for v in vals] if isinstance(vals, list)
            else _distribution(vals) for k, vals in searched.items()}
    common = {"scoring": scoring, "refit": False, "cv": cv_splitter(task, cv, seed),
              "scheduler": client, "error_score": "raise", "return_train_score": False}
    if method == "random" and grid:
        total = _grid_size(grid)
        search = RandomizedSearchCV(pipeline, grid, n_iter=min(n_iter, total or n_iter),
                                    random_state=seed, **common)
    else:
        search = GridSearchCV(pipeline, grid, **common)
    search.fit(X, y)
    results = pd.DataFrame(search.cv_results_)
    return _summarise(family, method, results, list(scoring), primary)


def _grid_size(grid: Mapping[str, Any]) -> int | None:
    if any(not isinstance(v, list) for v in grid.values()):
        return None
    return math.prod(len(v) for v in grid.values())


def _value(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v  # e.g. hidden_layer_sizes [64, 32]


def _summarise(family: str, method: str, results: pd.DataFrame, metrics: list[str],
               primary: str) -> SearchResult:
    """Our metric names and signs (lower-is-better metrics back to positive)."""
    table = pd.DataFrame({"family": family,
                          "params": [_plain_params(p) for p in results["params"]],
                          "mean_fit_time": results["mean_fit_time"]})
    for metric in metrics:
        sign = 1.0 if GREATER_IS_BETTER[metric] else -1.0
        table[f"mean_{metric}"] = sign * results[f"mean_test_{metric}"]
        table[f"std_{metric}"] = results[f"std_test_{metric}"]
    best = best_row(table, primary)
    return SearchResult(
        family=family, method=method, best_params=table.loc[best, "params"],
        cv_mean=_float(table.loc[best, f"mean_{primary}"]),
        cv_std=_float(table.loc[best, f"std_{primary}"]),
        fit_seconds=float(table.loc[best, "mean_fit_time"]), candidates=len(table),
        cv_results=table)


def best_row(table: pd.DataFrame, primary: str) -> Any:
    """The selection rule: best mean primary metric, ties by the lower mean fit time."""
    score = table[f"mean_{primary}"].astype(float)
    key = -score if GREATER_IS_BETTER[primary] else score
    order = pd.DataFrame({"key": key.fillna(np.inf), "cost": table["mean_fit_time"]})
    return order.sort_values(["key", "cost"], kind="stable").index[0]


def _plain_params(params: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in params.items():
        name = k.removeprefix("model__").removeprefix("estimator__").removeprefix(
            "regressor__")
        if isinstance(v, tuple):
            v = list(v)
        elif isinstance(v, np.generic):
            v = v.item()
        out[name] = v
    return out


def _float(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


# --------------------------------------------------------------------------- full data


def search_full(job: Any, params: Mapping[str, Any], full: tuple, n_classes: int | None,
                client: Any) -> SearchResult:
    """XGBoost candidates each trained with xgboost.dask on all training rows.

    Early stopping on the validation fold, which also scores the candidate (one score: the
    ``cv_std`` is None). One candidate at a time, each on every worker (see module docstring).
    """
    from sklearn.model_selection import ParameterGrid, ParameterSampler
    from sklearn.pipeline import Pipeline

    from pipeline.evaluate import evaluate_predictions
    from pipeline.models import defaults
    from pipeline.preprocess import tail_steps
    from pipeline.train import fit_xgboost

    start = time.perf_counter()
    task, primary, search = job.data.task, job.primary_metric, job.search
    _, P_train, y_train, P_valid, y_valid = full
    tail = Pipeline(tail_steps(job, "xgboost"))
    T_train, T_valid = tail.fit_transform(P_train, y_train), None
    T_valid = tail.transform(P_valid)
    fixed, searched = split_grid(params)
    if searched and all(isinstance(v, list) for v in searched.values()):
        candidates = [dict(p) for p in ParameterGrid(searched)]
    else:
        space = {k: v if isinstance(v, list) else _distribution(v) for k, v in searched.items()}
        candidates = [dict(p) for p in ParameterSampler(space, search.n_iter,
                                                        random_state=search.seed)]
    rows = []
    for candidate in candidates or [{}]:
        chosen = {**defaults("xgboost", task), **fixed, **candidate}
        fit = fit_xgboost(T_train, y_train, T_valid, y_valid, params=chosen, task=task,
                          n_classes=n_classes,
                          early_stopping_rounds=job.train.early_stopping_rounds,
                          seed=search.seed, client=client)
        [booster] = client.scatter([fit.booster], broadcast=True, hash=False)
        frame = T_valid.assign(__y__=y_valid)
        scored = frame.map_partitions(_score_partition, booster, task, n_classes,
                                      meta=_score_partition(frame._meta, fit.booster, task,
                                                            n_classes))
        metrics = evaluate_predictions(scored, task)
        rows.append({"family": "xgboost",
                     "params": {**fixed, **_plain_params(candidate),
                                "n_estimators": fit.n_estimators},
                     "mean_fit_time": fit.seconds, f"mean_{primary}": metrics.get(primary),
                     f"std_{primary}": np.nan})
    table = pd.DataFrame(rows)
    best = best_row(table, primary)
    return SearchResult(family="xgboost", method="full", best_params=table.loc[best, "params"],
                        cv_mean=_float(table.loc[best, f"mean_{primary}"]), cv_std=None,
                        fit_seconds=float(table.loc[best, "mean_fit_time"]),
                        candidates=len(table), cv_results=table,
                        seconds=time.perf_counter() - start)


def _score_partition(df: pd.DataFrame, booster: Any, task: str,
                     n_classes: int | None) -> pd.DataFrame:
    """The evaluation frame (``y_true`` + scores) of one validation partition."""
    X = df.drop(columns="__y__")
    raw = (np.asarray(booster.inplace_predict(X, validate_features=False), dtype=np.float64)
           if len(X) else np.empty((0, n_classes) if task == "multiclass" else 0))
    out = pd.DataFrame({"y_true": df["__y__"].to_numpy()}, index=df.index)
    if task == "regression":
        out["y_pred"] = raw
    elif task == "binary":
        out["proba"] = raw
    else:
        for k in range(int(n_classes or 0)):
            out[f"proba_{k}"] = raw[:, k]
    return out


# --------------------------------------------------------------------------- halving


def halving_search(family: str, pipeline: Any, X: pd.DataFrame, y: np.ndarray, *,
                   searched: Mapping[str, Any], task: str, primary: str, cv: int, factor: int,
                   n_iter: int, seed: int, client: Any) -> SearchResult:
    """Successive halving with each rung's candidate x fold fits as futures on the cluster.

    The preprocessing does not depend on the candidate, so each fold's is fitted once, on the
    cluster, and every candidate's fits on that fold share it (as dask-ml's grid search does).
    A rung's fits continue from the previous rung's models where the budget allows it (XGBoost
    rounds via ``xgb_model``, ``partial_fit`` epochs), so a survivor never starts over. Rungs:
    ``n -> n/factor -> ...`` down to at most ``factor`` candidates on the full budget (they are
    compared fully, not on a single survivor's word).
    """
    from sklearn.model_selection import ParameterGrid, ParameterSampler

    if searched and all(isinstance(v, list) for v in searched.values()):
        candidates = [dict(p) for p in ParameterGrid(
            {k: [_value(v) for v in vals] for k, vals in searched.items()})]
    else:
        space = {k: ([_value(v) for v in vals] if isinstance(vals, list) else _distribution(vals))
                 for k, vals in searched.items()}
        candidates = [dict(p) for p in ParameterSampler(space, n_iter, random_state=seed)]
    candidates = candidates or [{}]
    budget = FAMILIES[family]["budget"]
    model = pipeline.named_steps["model"]
    splits = list(cv_splitter(task, cv, seed).split(X, y))
    if budget == "rounds":
        full = int(max(c.get("n_estimators", model.get_params()["n_estimators"])
                       for c in candidates))
    elif budget == "epochs":
        full = max(1, int(FAMILIES[family].get("epochs", 3)) * 3)
    else:  # rows: all of a fold's training rows
        full = min(len(train) for train, _ in splits)
    n = len(candidates)
    rungs = 1 if n == 1 else max(2, int(math.floor(math.log(n, factor) + 1e-9)))
    min_budget = max(1, int(full / factor ** (rungs - 1)))
    [data] = client.scatter([(X, y)], broadcast=True, hash=False)
    folds = [client.submit(_prepare_fold, data, pipeline[:-1], train, test, pure=False)
             for train, test in splits]
    scoring = scorers(task, primary)

    alive = list(range(n))
    states: dict[tuple[int, int], Any] = {}
    records: dict[int, dict[str, Any]] = {
        i: {"family": family, "params": _plain_params(c), "rung": 0, "budget": 0,
            "mean_fit_time": 0.0} for i, c in enumerate(candidates)}
    for rung in range(rungs):
        amount = full if rung == rungs - 1 else min(full, min_budget * factor ** rung)
        futures = {(i, f): client.submit(_rung_fit, folds[f], model, candidates[i], budget,
                                         amount, states.get((i, f)), scoring, pure=False)
                   for i in alive for f in range(len(splits))}
        results = dict(zip(futures, client.gather(list(futures.values()))))
        for (i, f), (scores, state, seconds) in results.items():
            states[(i, f)] = state
            record = records[i]
            record["rung"], record["budget"] = rung, amount
            record["mean_fit_time"] += seconds / len(splits)
            for metric, value in scores.items():
                record.setdefault(f"_folds_{metric}", {})[f] = value
        means = {i: np.mean(list(records[i][f"_folds_{primary}"].values())) for i in alive}
        keep = max(1, math.ceil(len(alive) / factor)) if rung < rungs - 1 else len(alive)
        ranked = sorted(alive, key=lambda i: (-means[i] if GREATER_IS_BETTER[primary]
                                               else means[i], records[i]["mean_fit_time"]))
        alive = ranked[:keep]
        logger.debug("halving %s: rung %d, budget %s, %d -> %d candidates", family, rung,
                     amount, len(ranked), len(alive))
    rows = []
    for record in records.values():
        row = {k: v for k, v in record.items() if not k.startswith("_folds_")}
        for metric in scoring:
            scores = list(record.get(f"_folds_{metric}", {}).values())
            row[f"mean_{metric}"] = float(np.mean(scores)) if scores else np.nan
            row[f"std_{metric}"] = float(np.std(scores)) if scores else np.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    final = table[table["rung"] == table["rung"].max()]
    best = best_row(final, primary)
    return SearchResult(
        family=family, method="halving", best_params=table.loc[best, "params"],
        cv_mean=_float(table.loc[best, f"mean_{primary}"]),
        cv_std=_float(table.loc[best, f"std_{primary}"]),
        fit_seconds=float(table.loc[best, "mean_fit_time"]), candidates=len(table),
        cv_results=table)


def _prepare_fold(data: tuple[pd.DataFrame, np.ndarray], prep: Any, train: np.ndarray,
                  test: np.ndarray) -> tuple[Any, np.ndarray, Any, np.ndarray]:
    """One fold's preprocessed matrices, shared by every candidate.

    ``fit_transform`` gives the training rows out-of-fold target encodings (``transform`` of
    the same rows would leak their own targets); the test rows get ``transform``.
    """
    from sklearn.base import clone

    X, y = data
    fitted = clone(prep)
    Xt_train = fitted.fit_transform(X.iloc[train], y[train])
    return Xt_train, y[train], fitted.transform(X.iloc[test]), y[test]


def _rung_fit(fold: tuple[Any, np.ndarray, Any, np.ndarray], model: Any,
              params: Mapping[str, Any], budget: str, amount: int, state: Any,
              scoring: Mapping[str, str]) -> tuple[dict[str, float], Any, float]:
    """One candidate on one fold at one rung; returns (scores, state to continue, seconds).

    ``state`` is ``(fitted model, budget spent)`` from the previous rung, or None.
    """
    from sklearn.base import clone, is_classifier
    from sklearn.metrics import get_scorer

    from pipeline.models import inner_estimator

    Xt_train, y_train, Xt_test, y_test = fold
    start = time.perf_counter()
    if budget == "rows":  # a bigger training set: nothing to continue, fit afresh
        Xt_train, y_train, state = Xt_train.iloc[:amount], y_train[:amount], None
    if state is None:
        inner = next((f"{n}__" for n in ("estimator", "regressor")
                      if getattr(model, n, None) is inner_estimator(model)), "")
        fitted = clone(model).set_params(**{f"{inner}{k}": v for k, v in params.items()})
        done = 0
    else:
        fitted, done = state
    if budget == "rounds" and done:
        fitted.set_params(n_estimators=amount - done)
        fitted.fit(Xt_train, y_train, xgb_model=fitted.get_booster())
    elif budget == "rounds":
        fitted.set_params(n_estimators=amount)
        fitted.fit(Xt_train, y_train)
    elif budget == "epochs":
        extra = {"classes": np.unique(np.concatenate([y_train, y_test]))} \
            if is_classifier(fitted) else {}
        for _ in range(amount - done):
            fitted.partial_fit(Xt_train, y_train, **extra)
    else:
        fitted.fit(Xt_train, y_train)
    seconds = time.perf_counter() - start
    scores = {}
    for metric, name in scoring.items():
        value = get_scorer(name)(fitted, Xt_test, y_test)
        scores[metric] = float(value if GREATER_IS_BETTER[metric] else -value)
    return scores, (fitted, amount), seconds
