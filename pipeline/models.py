"""Model families: one plain dict, like fsspec's ``known_implementations``.

Each entry says which tasks the family does, how it trains on data larger than one machine
(``training``), what preprocessing it needs, and where its estimators live (dotted paths,
imported only when a job uses them, so ``mlpipe --help`` stays fast).

``training`` is honest about scale:

- ``distributed``: fitted on all rows across the cluster (xgboost.dask, dask-glm);
- ``incremental``: fitted over all partitions in turn with ``partial_fit``;
- ``sample``: fitted in memory on a sample of ``search.sample_rows`` rows; prediction is
  parallelised over partitions.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

FAMILIES: dict[str, dict[str, Any]] = {
    "xgboost": {
        "tasks": ("binary", "multiclass", "regression"),
        "training": "distributed",
        "needs": {"impute": False, "scale": False, "numeric_only": False},
        "estimator": {"classification": "xgboost.XGBClassifier",
                      "regression": "xgboost.XGBRegressor"},
        "distributed": {"classification": "xgboost.dask.DaskXGBClassifier",
                        "regression": "xgboost.dask.DaskXGBRegressor"},
        "defaults": {"n_estimators": 300, "learning_rate": 0.1, "max_depth": 6,
                     "tree_method": "hist"},
    },
}

#: metric names per task, in the order they are shown; the first is not the default.
METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("roc_auc", "pr_auc", "accuracy", "precision", "recall", "f1", "log_loss",
               "brier"),
    "multiclass": ("accuracy", "f1_macro", "f1_weighted", "roc_auc_ovr", "log_loss"),
    "regression": ("rmse", "mae", "r2", "mse"),
}

#: the primary metric of a task when ``search.scoring`` is not given.
DEFAULT_METRIC = {"binary": "roc_auc", "multiclass": "log_loss", "regression": "rmse"}

#: Direction of every metric reported (True: higher is better).
GREATER_IS_BETTER: dict[str, bool] = {
    "accuracy": True, "precision": True, "recall": True, "f1": True, "roc_auc": True,
    "pr_auc": True, "log_loss": False, "brier": False,
    "precision_macro": True, "recall_macro": True, "f1_macro": True,
    "precision_weighted": True, "recall_weighted": True, "f1_weighted": True,
    "roc_auc_ovr": True, "roc_auc_ovr_weighted": True,
    "mse": False, "rmse": False, "mae": False, "r2": True, "mape": False, "max_error": False,
}


def check_params(family: str, params: Mapping[str, Any], task: str) -> None:
    """Validate the shape of a family's parameter block (names are checked when it is built).

    Each value is a scalar (fixed) or a non-empty list of candidates.
    """
    for name, value in params.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"models.{family}: {name!r} is not a parameter name")
        if isinstance(value, list) and not value:
            raise ValueError(f"models.{family}.{name}: an empty list has no candidate to try")
        if isinstance(value, dict):
            raise ValueError(f"models.{family}.{name}: give a value or a list of values, "
                             "not a mapping")


def estimator_class(family: str, task: str, *, distributed: bool = False) -> type:
    """Import and return the estimator class of ``family`` for ``task``."""
    entry = FAMILIES[family]
    kind = "regression" if task == "regression" else "classification"
    path = (entry["distributed"] if distributed else entry["estimator"])[kind]
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)
