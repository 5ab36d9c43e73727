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
from sklearn.utils.validation import check_is_fitted


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
        y = np.asarray(y, dtype=np.float64)
        self._learn_scale(y)
        self.regressor_ = clone(self.regressor).fit(X, (y - self.mean_) / self.scale_)
        return self

    def partial_fit(self, X: Any, y: Any) -> ScaledTargetRegressor:
        y = np.asarray(y, dtype=np.float64)
        if not hasattr(self, "regressor_"):
            self._learn_scale(y)
            self.regressor_ = clone(self.regressor)
        self.regressor_.partial_fit(X, (y - self.mean_) / self.scale_)
        return self

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "regressor_")
        return np.asarray(self.regressor_.predict(X), dtype=np.float64) * self.scale_ + self.mean_


class FixedPredictions(BaseEstimator):
    """A stand-in model whose ``predict`` returns ``values``, whatever ``X`` is.

    Use :func:`fixed_predictions`: it gives a classifier or a regressor.
    """

    def __init__(self, values: np.ndarray | None = None) -> None:
        self.values = values

    def fit(self, X: Any = None, y: Any = None) -> FixedPredictions:
        return self  # already "fitted": scorers only ask that there is a fit

    def predict(self, X: Any) -> np.ndarray:
        return self.values


class FixedRegressorPredictions(RegressorMixin, FixedPredictions):
    pass


class FixedClassifierPredictions(ClassifierMixin, FixedPredictions):
    """``values`` are class probabilities (one column per class of ``classes``)."""

    def __init__(self, values: np.ndarray | None = None, classes: Any = None) -> None:
        self.values, self.classes = values, classes

    @property
    def classes_(self) -> np.ndarray:
        return np.asarray(self.classes)

    def predict_proba(self, X: Any) -> np.ndarray:
        return self.values

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[np.argmax(self.values, axis=1)]


def fixed_predictions(out: np.ndarray, classes: Any = None) -> FixedPredictions:
    """A stand-in for a fitted model that predicted ``out``: a booster's raw output.

    With ``classes``: a classifier, ``out`` being P(class 1) (binary) or one column per class;
    without: a regressor.
    """
    if classes is None:
        return FixedRegressorPredictions(out)
    proba = np.column_stack([1.0 - out, out]) if out.ndim == 1 else out
    return FixedClassifierPredictions(proba, classes)
