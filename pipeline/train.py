"""The final distributed fit on all training rows.

XGBoost trains with ``xgboost.dask`` on the cluster: a ``DaskQuantileDMatrix`` built from the
persisted, preprocessed partitions (it keeps only the quantised matrix, not a float copy),
early stopping on the validation fold, native categoricals. Parameters keep scikit-learn's
names (``max_depth``, ``learning_rate``, ``n_estimators``) so that a winner of an in-memory
search with ``XGBClassifier`` refits here unchanged: ``XGBModel.get_xgb_params`` does the
translation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

#: parameters we manage ourselves; a user value would be ignored or conflict.
_MANAGED = {"n_jobs", "nthread", "enable_categorical", "early_stopping_rounds", "objective",
            "num_class", "eval_metric", "callbacks"}


@dataclass
class XGBFit:
    """A trained booster and how it was trained."""

    booster: Any
    params: dict[str, Any]
    n_estimators: int
    best_iteration: int
    history: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    seconds: float = 0.0


def eval_metrics(task: str) -> list[str]:
    """XGBoost's eval metrics per task; the LAST one drives early stopping."""
    return {"binary": ["logloss", "auc"], "multiclass": ["merror", "mlogloss"],
            "regression": ["mae", "rmse"]}[task]


def xgb_params(params: Mapping[str, Any], *, task: str, n_classes: int | None,
               seed: int) -> tuple[dict[str, Any], int]:
    """Booster parameters and the number of rounds, from scikit-learn style parameters.

    Examples
    --------
    >>> p, n = xgb_params({"max_depth": 4, "n_estimators": 50}, task="binary",
    ...                   n_classes=2, seed=0)
    >>> p["objective"], p["max_depth"], n
    ('binary:logistic', 4, 50)
    """
    import difflib

    import xgboost

    given = {k: v for k, v in params.items() if k not in _MANAGED}
    given.setdefault("random_state", seed)
    cls = xgboost.XGBRegressor if task == "regression" else xgboost.XGBClassifier
    known = set(cls().get_params())
    for name in given:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"models.xgboost: unknown parameter {name!r}{hint} (parameters "
                             f"of {cls.__name__}: {', '.join(sorted(known))})")
    model = cls(**given)
    booster = model.get_xgb_params()
    try:
        n_rounds = int(model.n_estimators or 100)
    except (TypeError, ValueError):
        raise ValueError(f"models.xgboost.n_estimators must be an integer, got "
                         f"{model.n_estimators!r}") from None
    # keep only what was set; XGBoost's defaults apply to the rest
    booster = {k: v for k, v in booster.items() if v is not None}
    booster["objective"] = {"binary": "binary:logistic", "multiclass": "multi:softprob",
                            "regression": "reg:squarederror"}[task]
    if task == "multiclass":
        booster["num_class"] = int(n_classes or 3)
    booster["eval_metric"] = eval_metrics(task)
    # xgboost.dask takes each worker's thread count when nthread is unset: never more
    # threads than the worker has, so training does not oversubscribe the cores.
    booster.pop("nthread", None)
    booster.pop("n_jobs", None)
    booster.pop("enable_categorical", None)
    _try(booster, task)
    return booster, n_rounds


def _try(booster: Mapping[str, Any], task: str) -> None:
    """One round on four rows: bad values fail here, before any cluster work."""
    import numpy as np
    import xgboost

    label = np.array([0.0, 1.0, 0.0, 1.0]) if task != "multiclass" else np.array(
        [0.0, 1.0, 2.0, 0.0])
    matrix = xgboost.DMatrix(np.arange(8.0).reshape(4, 2), label=label)
    try:
        xgboost.train({**booster, "nthread": 1}, matrix, 1)
    except xgboost.core.XGBoostError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"models.xgboost: XGBoost refuses these parameters: {first}") \
            from None


def fit_xgboost(X_train: Any, y_train: Any, X_valid: Any, y_valid: Any, *,
                params: Mapping[str, Any], task: str, n_classes: int | None,
                early_stopping_rounds: int | None, seed: int = 0,
                client: Any = None) -> XGBFit:
    """Train with ``xgboost.dask`` on the cluster; returns the booster cut at its best round.

    ``X_*`` are dask DataFrames (categoricals with known categories), ``y_*`` dask Series of
    class codes / values, all from the same persisted collection (aligned partitions).
    """
    from distributed import get_client
    from xgboost import dask as dxgb

    client = client or get_client()
    booster_params, n_rounds = xgb_params(params, task=task, n_classes=n_classes, seed=seed)
    start = time.perf_counter()
    dtrain = dxgb.DaskQuantileDMatrix(client, X_train, y_train, enable_categorical=True)
    evals = [(dtrain, "train")]
    if X_valid is not None:
        dvalid = dxgb.DaskQuantileDMatrix(client, X_valid, y_valid, ref=dtrain,
                                          enable_categorical=True)
        evals.append((dvalid, "valid"))
    output = dxgb.train(client, booster_params, dtrain, num_boost_round=n_rounds, evals=evals,
                        early_stopping_rounds=early_stopping_rounds if X_valid is not None
                        else None, verbose_eval=False)
    booster = output["booster"]
    best = booster.best_iteration if early_stopping_rounds and X_valid is not None \
        else booster.num_boosted_rounds() - 1
    best = int(best if best is not None else booster.num_boosted_rounds() - 1)
    if best + 1 < booster.num_boosted_rounds():
        booster = booster[: best + 1]  # the saved model is exactly the one evaluated
    history = {name: {metric: [float(v) for v in values] for metric, values in curves.items()}
               for name, curves in output["history"].items()}
    seconds = time.perf_counter() - start
    logger.debug("xgboost: %d rounds (best %d) in %.1f s", len(next(iter(
        next(iter(history.values())).values()), [])), best + 1, seconds)
    return XGBFit(booster=booster, params={**dict(params), "n_estimators": n_rounds},
                  n_estimators=best + 1, best_iteration=best, history=history, seconds=seconds)
