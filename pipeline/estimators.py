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
from sklearn.base import BaseEstimator, RegressorMixin, clone
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
