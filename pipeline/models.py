"""Model families: one plain dict, like fsspec's ``known_implementations``.

Each entry says which tasks the family does, what preprocessing it needs, which scikit-learn
style estimator the search tries candidates with (on an in-memory sample), and how the winner is
refitted on data larger than one machine (``training``), honestly:

- ``distributed``: fitted on all training rows across the cluster (xgboost.dask, XGBoost random
  forests, dask-glm logistic regression);
- ``incremental``: fitted over all training partitions in turn with ``partial_fit``
  (``dask_ml.wrappers.Incremental``), ``epochs`` passes;
- ``sample``: fitted in memory on a sample of at most ``max_rows`` training rows; prediction is
  parallelised over partitions with the model sent to each worker once.

The in-memory estimator and the full-data refit share parameter names (``XGBClassifier`` and
``xgboost.dask``; ``LogisticRegression`` and dask-ml's; the same ``SGDClassifier``), so a
winner's parameters refit unchanged. Estimators are dotted paths, imported only when a job uses
them, so this module (and ``mlpipe --help``) stays light.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

_TREES = {"impute": False, "scale": False, "numeric_only": False}
# gradient-based and kernel regressors learn badly on a target in dollars: standardise it
# (ours, not TransformedTargetRegressor: incremental training needs partial_fit)
_SCALED_TARGET = {"regression": {"path": "pipeline.estimators.ScaledTargetRegressor",
                                 "inner": "regressor", "kwargs": {}}}
_SKLEARN_TREES = {"impute": True, "scale": False, "numeric_only": True}
_LINEAR = {"impute": True, "scale": True, "numeric_only": True}

FAMILIES: dict[str, dict[str, Any]] = {
    "xgboost": {
        "tasks": ("binary", "multiclass", "regression"),
        "training": "distributed",
        "needs": _TREES,
        "estimator": {"classification": "xgboost.XGBClassifier",
                      "regression": "xgboost.XGBRegressor"},
        "defaults": {"n_estimators": 300, "learning_rate": 0.1, "max_depth": 6,
                     "tree_method": "hist"},
        "budget": "rounds",  # successive halving: boosting rounds, warm-started
        # search: auto. The ranges of FLAML's and AutoGluon's XGBoost spaces, narrowed to
        # where tabular winners sit; rounds come from CV early stopping, not the space.
        "space": {"learning_rate": {"loguniform": [0.02, 0.3]},
                  "max_depth": {"randint": [3, 10]},
                  "min_child_weight": {"loguniform": [0.5, 20.0]},
                  "subsample": {"uniform": [0.6, 1.0]},
                  "colsample_bytree": {"uniform": [0.5, 1.0]},
                  "reg_lambda": {"loguniform": [0.1, 10.0]},
                  "reg_alpha": {"loguniform": [0.001, 1.0]}},
        "auto_fixed": {"n_estimators": 2000},  # a cap: CV early stopping ends each fit
        "how": "xgboost.dask on all rows, early stopping on the validation fold",
    },
    "random_forest": {
        "tasks": ("binary", "multiclass", "regression"),
        "training": "distributed",
        "needs": _TREES,
        "estimator": {"classification": "xgboost.XGBRFClassifier",
                      "regression": "xgboost.XGBRFRegressor"},
        "defaults": {"n_estimators": 100, "max_depth": 8, "subsample": 0.8,
                     "colsample_bynode": 0.8, "tree_method": "hist"},
        "budget": "rows",
        "space": {"max_depth": {"randint": [6, 16]},
                  "colsample_bynode": {"uniform": [0.3, 1.0]},
                  "min_child_weight": {"loguniform": [0.5, 10.0]}},
        "how": "an XGBoost random forest (one round of n_estimators parallel trees) trained "
               "with xgboost.dask on all rows",
    },
    "decision_tree": {
        "tasks": ("binary", "multiclass", "regression"),
        "training": "sample",
        "needs": _SKLEARN_TREES,
        "estimator": {"classification": "sklearn.tree.DecisionTreeClassifier",
                      "regression": "sklearn.tree.DecisionTreeRegressor"},
        "defaults": {"max_depth": 8, "min_samples_leaf": 20},
        "max_rows": 1_000_000,
        "budget": "rows",
        "how": "scikit-learn on a sample; prediction parallel over partitions",
    },
    "logistic_regression": {
        "tasks": ("binary", "multiclass"),
        "training": {"binary": "distributed", "multiclass": "sample"},
        "needs": _LINEAR,
        "estimator": {"classification": "sklearn.linear_model.LogisticRegression"},
        "distributed": {"binary": "dask_ml.linear_model.LogisticRegression"},
        "defaults": {"C": 1.0, "max_iter": 200},
        "space": {"C": {"loguniform": [0.001, 100.0]}},
        "max_rows": 1_000_000,
        "budget": "rows",
        "how": "binary: dask-ml (dask-glm) on all rows; multiclass: scikit-learn on a sample "
               "(dask-glm has no multinomial model)",
    },
    "linear_svm": {
        "tasks": ("binary", "multiclass", "regression"),
        "training": "incremental",
        "needs": _LINEAR,
        # modified_huber: the hinge loss smoothed, so the linear SVM gives probabilities
        "estimator": {"classification": "sklearn.linear_model.SGDClassifier",
                      "regression": "sklearn.linear_model.SGDRegressor"},
        "defaults": {"classification": {"loss": "modified_huber", "alpha": 1e-4},
                     "regression": {"loss": "epsilon_insensitive", "alpha": 1e-4}},
        "epochs": 10,
        "budget": "epochs",
        "space": {"alpha": {"loguniform": [1e-6, 1e-2]}},
        "wrap": _SCALED_TARGET,
        "how": "SGD with a (smoothed) hinge loss, partial_fit over every partition",
    },
    "svm": {
        "tasks": ("binary", "multiclass", "regression"),
        "training": "sample",
        "needs": _LINEAR,
        "estimator": {"classification": "sklearn.svm.SVC", "regression": "sklearn.svm.SVR"},
        # probabilities by Platt scaling on held-out folds (SVC(probability=True) is going)
        "wrap": {"classification": {"path": "sklearn.calibration.CalibratedClassifierCV",
                                    "inner": "estimator",
                                    "kwargs": {"method": "sigmoid", "cv": 3,
                                               "ensemble": False}},
                 **_SCALED_TARGET},
        "defaults": {"kernel": "rbf", "C": 1.0},
        # kernel SVMs cost O(rows^2) memory and more in time: a sample is the only honest way
        "max_rows": 10_000,
        "budget": "rows",
        "how": "scikit-learn kernel SVM on a sample of at most 10,000 rows",
    },
    "naive_bayes": {
        "tasks": ("binary", "multiclass"),
        "training": "incremental",
        "needs": {"impute": True, "scale": False, "numeric_only": True},
        "estimator": {"classification": "sklearn.naive_bayes.GaussianNB"},
        "defaults": {},
        "epochs": 1,  # its statistics are sums: one pass is the exact full-data model
        "budget": "rows",
        "how": "Gaussian naive Bayes, partial_fit over every partition (exact)",
    },
    "knn": {
        "tasks": ("binary", "multiclass", "regression"),
        "training": "sample",
        "needs": _LINEAR,
        "estimator": {"classification": "sklearn.neighbors.KNeighborsClassifier",
                      "regression": "sklearn.neighbors.KNeighborsRegressor"},
        "defaults": {"n_neighbors": 25},
        # a neighbour search touches every stored row per prediction
        "max_rows": 20_000,
        "budget": "rows",
        "how": "scikit-learn k-nearest neighbours on a sample of at most 20,000 rows",
    },
    "mlp": {
        "tasks": ("binary", "multiclass", "regression"),
        "training": "incremental",
        "needs": _LINEAR,
        "estimator": {"classification": "sklearn.neural_network.MLPClassifier",
                      "regression": "sklearn.neural_network.MLPRegressor"},
        "defaults": {"hidden_layer_sizes": [64, 32], "alpha": 1e-4,
                     "learning_rate_init": 1e-3, "max_iter": 200},
        "epochs": 5,
        "budget": "epochs",
        "wrap": _SCALED_TARGET,
        "how": "scikit-learn MLP, partial_fit over every partition",
    },
}

#: the families ``search: auto`` tries when the job names none, per task: gradient boosting
#: (the usual winner on tables), a linear model (the usual winner on few rows or linear
#: signal) and a random forest (robust, little to tune), as H2O AutoML and AutoGluon start.
AUTO: dict[str, tuple[str, ...]] = {
    "binary": ("xgboost", "logistic_regression", "random_forest"),
    "multiclass": ("xgboost", "logistic_regression", "random_forest"),
    "regression": ("xgboost", "random_forest", "linear_svm"),
}

#: metric names per task, in the order they are shown.
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

#: our metric name -> scikit-learn scorer name (negated scorers for lower-is-better metrics).
SCORERS = {
    "roc_auc": "roc_auc", "pr_auc": "average_precision", "accuracy": "accuracy",
    "precision": "precision", "recall": "recall", "f1": "f1", "log_loss": "neg_log_loss",
    "brier": "neg_brier_score", "f1_macro": "f1_macro", "f1_weighted": "f1_weighted",
    "roc_auc_ovr": "roc_auc_ovr", "rmse": "neg_root_mean_squared_error",
    "mae": "neg_mean_absolute_error", "r2": "r2", "mse": "neg_mean_squared_error",
}

#: random-search distributions a parameter may be given as ``{name: [low, high]}``.
DISTRIBUTIONS = ("uniform", "loguniform", "randint")


def cv_splitter(task: str, folds: int, seed: int) -> Any:
    """The k-fold splitter of every CV of ours: stratified for classification, shuffled."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if task == "regression":
        return KFold(folds, shuffle=True, random_state=seed)
    return StratifiedKFold(folds, shuffle=True, random_state=seed)


def training_mode(family: str, task: str) -> str:
    """``distributed``, ``incremental`` or ``sample`` for this family and task."""
    mode = FAMILIES[family]["training"]
    return mode[task] if isinstance(mode, Mapping) else mode


def family_rows(family: str, sample_rows: int) -> int:
    """Rows of the search sample a family takes: ``sample_rows``, or its cap (kernel SVM,
    kNN) when lower."""
    return min(sample_rows, FAMILIES[family].get("max_rows", sample_rows))


def defaults(family: str, task: str) -> dict[str, Any]:
    """The family's default parameters for ``task``."""
    entry = FAMILIES[family]["defaults"]
    kind = "regression" if task == "regression" else "classification"
    if kind in entry and isinstance(entry[kind], Mapping):
        return dict(entry[kind])
    return dict(entry)


def auto_space(family: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters ``search: auto`` searches for ``family``: its practitioner space and its
    fixed auto settings, under the job's own ``params`` (a value the job gives wins)."""
    entry = FAMILIES[family]
    return {**entry.get("space", {}), **entry.get("auto_fixed", {}), **dict(params)}


def check_params(family: str, params: Mapping[str, Any], task: str) -> None:
    """Validate the shape of a family's parameter block (names are checked when it is built).

    Each value is a scalar (fixed), a non-empty list of candidates, or, for random search, a
    distribution ``{uniform|loguniform|randint: [low, high]}``.
    """
    for name, value in params.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"models.{family}: {name!r} is not a parameter name")
        if isinstance(value, list) and not value:
            raise ValueError(f"models.{family}.{name}: an empty list has no candidate to try")
        if isinstance(value, dict):
            if len(value) != 1 or next(iter(value)) not in DISTRIBUTIONS:
                raise ValueError(f"models.{family}.{name}: give a value, a list of values, or "
                                 f"one distribution {{{'|'.join(DISTRIBUTIONS)}: [low, high]}}")
            low_high = next(iter(value.values()))
            if not (isinstance(low_high, list) and len(low_high) == 2
                    and all(isinstance(v, int | float) for v in low_high)
                    and low_high[0] < low_high[1]):
                raise ValueError(f"models.{family}.{name}: a distribution takes [low, high] "
                                 f"with low < high, got {low_high!r}")
            if next(iter(value)) == "loguniform" and low_high[0] <= 0:
                raise ValueError(f"models.{family}.{name}: loguniform needs low > 0")


def import_path(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def estimator_class(family: str, task: str) -> type:
    """The in-memory (scikit-learn API) estimator class of ``family`` for ``task``."""
    kind = "regression" if task == "regression" else "classification"
    paths = FAMILIES[family]["estimator"]
    if kind not in paths:
        raise ValueError(f"the {family} family cannot do {task}")
    return import_path(paths[kind])


def make_estimator(family: str, task: str, params: Mapping[str, Any], seed: int = 0) -> Any:
    """An unfitted estimator with the family's defaults under ``params``.

    Unknown parameter names are an error with a "did you mean".
    """
    from pipeline.errors import did_you_mean

    cls = estimator_class(family, task)
    merged = {**defaults(family, task), **dict(params)}
    if "hidden_layer_sizes" in merged and isinstance(merged["hidden_layer_sizes"], list):
        merged["hidden_layer_sizes"] = tuple(merged["hidden_layer_sizes"])
    known = set(cls().get_params())
    for name in merged:
        if name not in known:
            hint = did_you_mean(name, sorted(known))
            raise ValueError(f"models.{family}: unknown parameter {name!r}{hint} "
                             f"(parameters of {cls.__name__}: {', '.join(sorted(known))})")
    if "random_state" in known and "random_state" not in merged:
        merged["random_state"] = seed
    if family in ("xgboost", "random_forest"):
        merged.setdefault("n_jobs", 1)  # candidates run side by side: one thread each
        merged["enable_categorical"] = True
    estimator = cls(**merged)
    wrap = FAMILIES[family].get("wrap", {}).get(_kind(task))
    if wrap:
        estimator = import_path(wrap["path"])(**{wrap["inner"]: estimator}, **wrap["kwargs"])
    return estimator


def param_prefix(family: str, task: str) -> str:
    """Where the family's own parameters sit inside its estimator (wrapped ones are nested)."""
    wrap = FAMILIES[family].get("wrap", {}).get(_kind(task))
    return f"{wrap['inner']}__" if wrap else ""


def inner_estimator(estimator: Any) -> Any:
    """The family's own estimator inside a wrapper (calibration, target scaling)."""
    for name in ("estimator", "regressor"):
        inner = getattr(estimator, name, None)
        if inner is not None and hasattr(inner, "get_params"):
            return inner
    return estimator


def _kind(task: str) -> str:
    return "regression" if task == "regression" else "classification"
