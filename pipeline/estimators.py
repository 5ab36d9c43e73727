"""Small estimators of our own where scikit-learn's do not fit the way we train.

:class:`ScaledTargetRegressor` standardises a regression target (gradient-based and kernel
regressors learn badly on a target in dollars) like scikit-learn's
``TransformedTargetRegressor``, but also supports ``partial_fit``, which incremental training
over partitions needs: the target's mean and scale are given up front (computed exactly on all
training rows) or learned from the first batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, clone
from sklearn.utils import Tags, get_tags
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_array, check_is_fitted


class ScaledTargetRegressor(RegressorMixin, BaseEstimator):
    """Fit ``regressor`` on ``(y - mean) / scale``; predict back in the target's unit.

    Parameters
    ----------
    regressor
        The regressor to wrap (cloned when fitted).
    mean, scale
        The target's mean and standard deviation; ``None``: learned from ``fit``'s ``y`` or the
        first ``partial_fit`` batch.

    Examples
    --------
    >>> from sklearn.linear_model import LinearRegression
    >>> X = np.arange(20.0).reshape(-1, 1); y = 1000.0 * X[:, 0] + 5e5
    >>> model = ScaledTargetRegressor(LinearRegression()).fit(X, y)
    >>> round(float(model.predict(X[:1])[0])), model.scale_ > 1000
    (500000, True)
    """

    def __init__(self, regressor: Any = None, mean: float | None = None,
                 scale: float | None = None) -> None:
        self.regressor = regressor
        self.mean = mean
        self.scale = scale

    def _learn_scale(self, y: np.ndarray) -> None:
        if self.mean is not None and self.scale is not None:
            self.mean_, self.scale_ = float(self.mean), float(self.scale)
        else:
            self.mean_ = float(np.mean(y)) if len(y) else 0.0
            self.scale_ = float(np.std(y)) if len(y) else 1.0
        if not np.isfinite(self.scale_) or self.scale_ == 0:
            self.scale_ = 1.0

    def fit(self, X: Any, y: Any) -> ScaledTargetRegressor:
        y = _target(self, y)
        self._learn_scale(y)
        self.regressor_ = clone(self.regressor).fit(X, (y - self.mean_) / self.scale_)
        self._inputs_seen()
        return self

    @available_if(lambda self: hasattr(self.regressor, "partial_fit"))
    def partial_fit(self, X: Any, y: Any) -> ScaledTargetRegressor:
        y = _target(self, y)
        if not hasattr(self, "regressor_"):
            self._learn_scale(y)
            self.regressor_ = clone(self.regressor)
        self.regressor_.partial_fit(X, (y - self.mean_) / self.scale_)
        self._inputs_seen()
        return self

    def _inputs_seen(self) -> None:
        """``n_features_in_`` / ``feature_names_in_`` as the regressor (which checks X) saw them."""
        for name in ("n_features_in_", "feature_names_in_"):
            if hasattr(self.regressor_, name):
                setattr(self, name, getattr(self.regressor_, name))

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "regressor_")
        return np.asarray(self.regressor_.predict(X), dtype=np.float64) * self.scale_ + self.mean_

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        if self.regressor is not None:  # X goes to the regressor as it is
            inner = get_tags(self.regressor)
            tags.input_tags.sparse = inner.input_tags.sparse
            tags.input_tags.allow_nan = inner.input_tags.allow_nan
        return tags


def _target(estimator: BaseEstimator, y: Any) -> np.ndarray:
    """``y`` as finite float64 numbers (the regressor would only see them scaled)."""
    if y is None:
        raise ValueError(f"{type(estimator).__name__} requires y to be passed, but the target "
                         "y is None")
    return check_array(y, dtype=np.float64, ensure_2d=False, ensure_min_samples=0,
                       input_name="y")


class FixedPredictions(BaseEstimator):
    """A stand-in model whose ``predict`` returns ``values``, whatever ``X`` is.

    Use :func:`fixed_predictions`: it gives a fitted classifier or regressor. ``fit`` learns
    nothing from ``X`` or ``y``: it only takes ``values`` as the model.
    """

    def __init__(self, values: np.ndarray | None = None) -> None:
        self.values = values

    def fit(self, X: Any = None, y: Any = None) -> FixedPredictions:
        self.values_ = np.asarray(self.values)
        return self

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "values_")
        return self.values_

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.no_validation = True  # X and y are never read, so any X will do
        tags.input_tags.sparse = True
        return tags


class FixedRegressorPredictions(RegressorMixin, FixedPredictions):
    pass


class FixedClassifierPredictions(ClassifierMixin, FixedPredictions):
    """``values`` are class probabilities (one column per class of ``classes``)."""

    def __init__(self, values: np.ndarray | None = None, classes: Any = None) -> None:
        self.values, self.classes = values, classes

    def fit(self, X: Any = None, y: Any = None) -> FixedClassifierPredictions:
        super().fit(X, y)
        self.classes_ = np.asarray(self.classes)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "values_")
        return self.values_

    def predict(self, X: Any) -> np.ndarray:
        proba = self.predict_proba(X)  # first: NotFittedError before fit
        return self.classes_[np.argmax(proba, axis=1)]


def fixed_predictions(out: np.ndarray, classes: Any = None) -> FixedPredictions:
    """A stand-in for a fitted model that predicted ``out``: a booster's raw output.

    With ``classes``: a classifier, ``out`` being P(class 1) (binary) or one column per class;
    without: a regressor.
    """
    if classes is None:
        return FixedRegressorPredictions(out).fit()
    proba = np.column_stack([1.0 - out, out]) if out.ndim == 1 else out
    return FixedClassifierPredictions(proba, classes).fit()
