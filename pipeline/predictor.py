"""The loaded model: schema enforcement + the fitted preprocessor + the model, on pandas frames.

A :class:`Predictor` is what :func:`pipeline.load_model` returns, what scoring ships to every
worker once (it is small: a booster and fitted statistics), and what serving calls per request.
Training evaluates the holdout through the same object, so the numbers in ``metrics.json`` are
those of the code that scores later.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from pipeline.preprocess import InputSchema


class Predictor:
    """Predict with a trained bundle on pandas DataFrames.

    Parameters
    ----------
    task
        ``binary``, ``multiclass`` or ``regression``.
    classes
        Class labels in code order (binary: the positive class last).
    preprocessor
        Fitted scikit-learn Pipeline whose first step is an :class:`InputSchema`.
    model
        An ``xgboost.Booster`` or a fitted scikit-learn estimator.
    threshold
        Binary tasks: P(positive) at or above which the label is the positive class.
    device
        XGBoost's device for predictions (``cpu``, ``cuda``, ``cuda:1``); scikit-learn
        models ignore it. :meth:`on` gives a copy on another device.

    Examples
    --------
    >>> model = load_model("s3://bucket/mlpipe/models/demo")      # doctest: +SKIP
    >>> model.predict_proba(frame)[:, 1]                          # doctest: +SKIP
    """

    def __init__(self, *, task: str, target: str, classes: Sequence[Any] | None,
                 preprocessor: Any, model: Any, threshold: float = 0.5,
                 family: str = "xgboost", run_id: str | None = None,
                 device: str = "cpu") -> None:
        self.task = task
        self.target = target
        self.classes = list(classes) if classes is not None else None
        self.preprocessor = preprocessor
        self.model = model
        self.threshold = float(threshold)
        self.family = family
        self.run_id = run_id
        self.device = device

    def on(self, device: str) -> Predictor:
        """A copy of this predictor that predicts on XGBoost ``device`` (its boosters copied).

        The device is applied where the copy predicts, not here: a driver without a GPU
        would turn ``cuda`` into ``cpu`` at once (XGBoost's fallback), before the copy
        reaches a GPU worker.
        """
        moved = copy.copy(self)
        moved.device = device
        if _is_booster(self.model):
            moved.model = self.model.copy()
        return moved

    def __repr__(self) -> str:
        return (f"Predictor(task={self.task!r}, family={self.family!r}, run_id={self.run_id!r},"
                f" features={len(self.feature_columns)})")

    # -- inputs ----------------------------------------------------------------------------

    @property
    def schema(self) -> InputSchema:
        return self.preprocessor.steps[0][1]

    @property
    def feature_columns(self) -> list[str]:
        return list(self.schema.columns_)

    def transform(self, df: pd.DataFrame) -> pd.DataFrame:
        """The model's input matrix for ``df`` (schema enforced, preprocessed)."""
        return self.preprocessor.transform(df)

    def report(self, df: pd.DataFrame) -> dict[str, Any]:
        """Extra columns, missing values and unseen categories in ``df`` (for scoring)."""
        out = self.schema.report(df)
        unseen: dict[str, int] = {}
        for _, step in self.preprocessor.steps[1:]:
            if hasattr(step, "unseen"):
                for column, n in step.unseen(df).items():
                    unseen[column] = unseen.get(column, 0) + n
        out["unseen_categories"] = unseen
        return out

    # -- outputs ---------------------------------------------------------------------------

    def _raw(self, Xt: pd.DataFrame) -> np.ndarray:
        """binary: P(positive) (n,); multiclass: (n, k); regression: values (n,)."""
        if len(Xt) == 0:
            k = len(self.classes) if self.task == "multiclass" else 0
            return np.empty((0, k) if k else (0,), dtype=np.float64)
        if _is_booster(self.model):
            if self.device != "cpu":  # where it predicts: see on()
                self.model.set_param({"device": self.device})
            out = self.model.inplace_predict(Xt, validate_features=False)
            return np.asarray(out, dtype=np.float64)
        X = Xt.to_numpy(dtype=np.float64)  # scikit-learn families were fitted on arrays
        if self.task == "regression":
            return np.asarray(self.model.predict(X), dtype=np.float64)
        proba = np.asarray(self.model.predict_proba(X), dtype=np.float64)
        return proba[:, 1] if self.task == "binary" else proba

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        """Class probabilities, shape (n, n_classes), columns in ``classes`` order."""
        if self.task == "regression":
            raise TypeError("predict_proba is for classification; this model does regression")
        raw = self._raw(self.transform(df))
        if self.task == "binary":
            return np.column_stack([1.0 - raw, raw])
        return raw

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """Labels (classification, with the stored threshold for binary) or values."""
        raw = self._raw(self.transform(df))
        return self._labels(raw)

    def _labels(self, raw: np.ndarray) -> np.ndarray:
        if self.task == "regression":
            return raw
        classes = np.asarray(self.classes, dtype=object)
        if self.task == "binary":
            codes = (raw >= self.threshold).astype(np.int64)
        else:
            codes = raw.argmax(axis=1) if len(raw) else np.empty(0, dtype=np.int64)
        return _typed(classes[codes], self.classes)

    def prediction_columns(self) -> list[str]:
        return prediction_columns(self.task, self.classes)

    def predict_frame(self, df: pd.DataFrame, id_columns: Sequence[str] = ()) -> pd.DataFrame:
        """Id columns (passed through) then the prediction columns, one row per input row.

        Columns: regression ``prediction``; binary ``label``, ``proba`` (P(positive));
        multiclass ``label``, ``proba_<class>`` per class.
        """
        raw = self._raw(self.transform(df))
        out = pd.DataFrame(index=df.index)
        for column in id_columns:
            out[column] = df[column]
        if self.task == "regression":
            out["prediction"] = raw
        elif self.task == "binary":
            out["label"] = self._labels(raw)
            out["proba"] = raw
        else:
            out["label"] = self._labels(raw)
            for i, c in enumerate(self.classes):
                out[f"proba_{c}"] = raw[:, i] if len(raw) else np.empty(0)
        return out

    def evaluation_frame(self, df: pd.DataFrame, keep: Sequence[str] = ()) -> pd.DataFrame:
        """``y_true`` (class code / value), the model's scores and the ``keep`` columns (for
        slices), as :func:`pipeline.evaluate.evaluate_predictions` takes them."""
        raw = self._raw(self.transform(df))
        out = pd.DataFrame(index=df.index)
        out["y_true"] = self.encode_target(df[self.target])
        if self.task == "regression":
            out["y_pred"] = raw
        elif self.task == "binary":
            out["proba"] = raw
        else:
            for i in range(len(self.classes)):
                out[f"proba_{i}"] = raw[:, i] if len(raw) else np.empty(0)
        for column in keep:
            out[column] = df[column]
        return out

    def encode_target(self, y: pd.Series) -> np.ndarray:
        """Class labels -> codes 0..k-1 (classification); float values (regression)."""
        if self.task == "regression":
            return y.to_numpy(dtype=np.float64)
        return encode_labels(y, self.classes)


def encode_labels(y: pd.Series, classes: Sequence[Any]) -> np.ndarray:
    """Map labels to codes in ``classes`` order; a label not in ``classes`` is an error."""
    codes = pd.Index(list(classes)).get_indexer(y.to_numpy()).astype(np.int64)
    if (codes < 0).any():  # e.g. labels read as text for classes stored as numbers
        codes = pd.Index([str(c) for c in classes]).get_indexer(
            y.astype("str").to_numpy()).astype(np.int64)
    if (codes < 0).any():
        bad = y.to_numpy()[codes < 0][0]
        raise ValueError(f"label {bad!r} of {y.name!r} is not one of the classes {list(classes)}")
    return codes


def _typed(values: np.ndarray, classes: Sequence[Any]) -> np.ndarray:
    if classes and all(isinstance(c, bool) for c in classes):
        return values.astype(bool)
    if classes and all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return values.astype(np.int64)
    return values


def _is_booster(model: Any) -> bool:
    return type(model).__name__ == "Booster" and type(model).__module__.startswith("xgboost")


def prediction_columns(task: str, classes: Sequence[Any] | None) -> list[str]:
    """The columns :meth:`Predictor.predict_frame` adds after the id columns."""
    if task == "regression":
        return ["prediction"]
    if task == "binary":
        return ["label", "proba"]
    return ["label", *(f"proba_{c}" for c in classes or ())]
