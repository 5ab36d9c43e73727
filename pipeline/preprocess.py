"""Preprocessing transformers that work the same on pandas and on dask DataFrames.

Every step is a scikit-learn transformer: ``__init__`` stores parameters, ``fit`` validates,
computes its statistics (on a dask frame: in one ``dask.compute``) and ends learned state in
``_``; ``transform`` is one pandas function applied directly to a pandas frame or lazily with
``map_partitions`` to a dask frame, whose ``meta`` comes from running the same function on the
empty ``_meta`` frame. So scoring, serving and training run the same code, and the fitted
state holds only plain values and numpy arrays (saved with skops, never pickle).

The input policy (documented in README.md, applied by :class:`InputSchema` and the encoders):

- a missing input column is an error naming it;
- extra columns are ignored (and reported by :meth:`InputSchema.report`);
- columns are put in training order and coerced to the training dtypes;
- a category never seen in training is treated as missing (or joins the pooled ``__rare__``
  level where a column pools rare levels), and counted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

#: the label given to pooled rare levels (onehot, native).
RARE = "__rare__"


class SchemaError(ValueError):
    """Input data that does not match what the model was trained on."""


def is_dask(X: Any) -> bool:
    return hasattr(X, "map_partitions") and hasattr(X, "_meta")


def apply(X: Any, func: Callable[[pd.DataFrame], Any]) -> Any:
    """``func`` on a pandas frame, or lazily per partition of a dask frame.

    The dask ``meta`` is ``func`` run on the empty ``_meta`` frame, so it is exactly what the
    partitions will hold (every transform must accept an empty frame).
    """
    if is_dask(X):
        return X.map_partitions(func, meta=func(X._meta))
    return func(X)


def compute(*values: Any) -> tuple[Any, ...]:
    """One ``dask.compute`` for lazy values; pandas values pass through."""
    if any(is_dask(v) or hasattr(v, "dask") for v in _leaves(values)):
        import dask

        return dask.compute(*values)
    return values


def value_counts(series: Any) -> Any:
    """Level counts (missing excluded) of a pandas or dask Series.

    On dask, a tree reduction into one partition (``split_out=1``): level tables are small,
    and dask would otherwise pick a shuffle for them.
    """
    if is_dask(series):
        return series.value_counts(dropna=True, split_out=1)
    return series.value_counts(dropna=True)


def _leaves(values: Any) -> list[Any]:
    out = []
    for v in values:
        if isinstance(v, Mapping):
            out.extend(_leaves(list(v.values())))
        elif isinstance(v, list | tuple):
            out.extend(_leaves(v))
        else:
            out.append(v)
    return out


def _is_categorical(dtype: Any) -> bool:
    return (isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dtype)
            or pd.api.types.is_object_dtype(dtype) or pd.api.types.is_bool_dtype(dtype))


# --------------------------------------------------------------------------- input schema


class InputSchema(TransformerMixin, BaseEstimator):
    """Select, order and coerce the input columns; the first step of every preprocessor.

    Parameters
    ----------
    columns
        The feature columns, in order (``None``: every column seen in ``fit``).

    Examples
    --------
    >>> s = InputSchema().fit(pd.DataFrame({"a": [1.0], "b": ["x"]}))
    >>> list(s.transform(pd.DataFrame({"b": ["y"], "a": [2], "extra": [0]})).columns)
    ['a', 'b']
    """

    def __init__(self, columns: Sequence[str] | None = None) -> None:
        self.columns = columns

    def fit(self, X: Any, y: Any = None) -> InputSchema:
        meta = X._meta if is_dask(X) else X
        columns = list(self.columns) if self.columns is not None else list(meta.columns)
        missing = [c for c in columns if c not in meta.columns]
        if missing:
            raise SchemaError(f"columns {missing} are not in the training data")
        self.columns_ = np.array(columns, dtype=object)
        kinds = []
        for c in columns:
            dtype = meta[c].dtype
            if pd.api.types.is_bool_dtype(dtype):
                kinds.append("bool")
            elif pd.api.types.is_datetime64_any_dtype(dtype):
                kinds.append("datetime")
            elif _is_categorical(dtype):
                kinds.append("category")
            else:
                kinds.append("number")
        self.kinds_ = np.array(kinds, dtype=object)
        self.n_features_in_ = len(columns)
        return self

    def transform(self, X: Any) -> Any:
        check_is_fitted(self, "columns_")
        meta = X._meta if is_dask(X) else X
        missing = [c for c in self.columns_ if c not in meta.columns]
        if missing:
            raise SchemaError(
                f"input is missing column{'s' if len(missing) > 1 else ''} "
                f"{', '.join(repr(c) for c in missing)} that the model was trained on; "
                "add them (missing values are allowed, absent columns are not)")
        return apply(X, self._transform)

    def _transform(self, df: pd.DataFrame) -> pd.DataFrame:
        out = {}
        for column, kind in zip(self.columns_, self.kinds_):
            values = df[column]
            if kind == "number":
                out[column] = _to_float(values, column)
            elif kind == "bool":
                out[column] = values.astype("boolean") if values.dtype != bool else values
            elif kind == "datetime":
                out[column] = pd.to_datetime(values, errors="coerce")
            else:
                out[column] = values.astype("str").where(values.notna()) \
                    if not isinstance(values.dtype, pd.CategoricalDtype) else values
        return pd.DataFrame(out, index=df.index)

    def report(self, df: pd.DataFrame) -> dict[str, Any]:
        """Extra columns ignored, and missing values per expected column, of one frame."""
        check_is_fitted(self, "columns_")
        expected = set(self.columns_)
        return {
            "extra_columns": [c for c in df.columns if c not in expected],
            "missing_values": {c: int(df[c].isna().sum()) for c in self.columns_
                               if c in df.columns},
        }

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self, "columns_")
        return self.columns_.copy()


def _to_float(values: pd.Series, column: str) -> pd.Series:
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(
            values.dtype):
        return values.astype("float64")
    converted = pd.to_numeric(values, errors="coerce")
    bad = converted.isna() & values.notna()
    if bad.any():
        example = values[bad].iloc[0]
        raise SchemaError(f"column {column!r} must be numeric; found {example!r} "
                          f"(in {int(bad.sum())} rows)")
    return converted.astype("float64")


# --------------------------------------------------------------------------- native categoricals


class NativeCategorical(TransformerMixin, BaseEstimator):
    """Text/categorical columns as pandas categoricals with *known* categories (XGBoost native).

    Levels seen fewer than ``min_frequency`` times, or beyond the ``max_levels`` most frequent,
    are pooled into one ``__rare__`` level. A level never seen in training becomes missing
    (XGBoost's own behaviour, made explicit) and is counted by :meth:`unseen`.

    Parameters
    ----------
    columns
        Columns to encode (``None``: every text/categorical column).
    max_levels, min_frequency
        Pooling of rare levels.
    """

    def __init__(self, columns: Sequence[str] | None = None, max_levels: int = 1000,
                 min_frequency: int = 1) -> None:
        self.columns = columns
        self.max_levels = max_levels
        self.min_frequency = min_frequency

    def fit(self, X: Any, y: Any = None) -> NativeCategorical:
        meta = X._meta if is_dask(X) else X
        columns = (list(self.columns) if self.columns is not None
                   else [c for c in meta.columns if _is_categorical(meta[c].dtype)])
        (counts,) = compute({c: value_counts(X[c] if isinstance(meta[c].dtype,
                             pd.CategoricalDtype) else X[c].astype("str")) for c in columns})
        self.columns_ = np.array(columns, dtype=object)
        self.categories_ = {}
        for c in columns:
            self.categories_[c] = _kept_levels(counts[c], self.max_levels, self.min_frequency)
        return self

    def transform(self, X: Any) -> Any:
        check_is_fitted(self, "categories_")
        return apply(X, self._transform)

    def _transform(self, df: pd.DataFrame) -> pd.DataFrame:
        out = df.copy() if len(self.columns_) else df
        for c in self.columns_:
            out[c] = _categorical(df[c], self.categories_[c])
        return out

    def unseen(self, df: pd.DataFrame) -> dict[str, int]:
        """Rows per column whose level is outside the kept vocabulary.

        Such a level becomes missing, or joins ``__rare__`` where the column pools rare levels.
        """
        check_is_fitted(self, "categories_")
        out = {}
        for c in self.columns_:
            values = df[c].astype("str").where(df[c].notna())
            known = values.isna() | values.isin(set(self.categories_[c]) - {RARE})
            out[c] = int((~known).sum())
        return out


def _kept_levels(counts: pd.Series, max_levels: int, min_frequency: int) -> np.ndarray:
    counts = counts[counts >= min_frequency].sort_values(ascending=False, kind="stable")
    kept = sorted(str(v) for v in counts.index[:max_levels])
    if len(counts) > len(kept) or min_frequency > 1:
        kept.append(RARE)
    return np.array(kept, dtype=object)


def _categorical(values: pd.Series, categories: np.ndarray) -> pd.Series:
    text = values.astype("str").where(values.notna())
    cats = list(categories)
    if RARE in cats:
        text = text.where(text.isin(cats) | text.isna(), RARE)
    return pd.Series(pd.Categorical(text, categories=cats), index=values.index,
                     name=values.name)
