"""Preprocessing transformers that work the same on pandas and on dask DataFrames.

Every step is a scikit-learn transformer: ``__init__`` stores parameters, ``fit`` validates,
computes its statistics (on a dask frame: in one ``dask.compute``; exact quantiles take one
or two more passes) and ends learned state in ``_``. The steps of the shared prefix
(cleaner, clipper, encoder; :class:`~pipeline.features.KernelFeatures`) also have
``fit_passes``, the same fit as passes that :func:`pipeline.frames.run_fits` shares between
steps, and ``rewrites``, the columns their transform changes. ``transform`` is one pandas
function applied directly to a pandas frame or lazily with ``map_partitions`` to a dask frame
(see :mod:`pipeline.frames`). So scoring, serving and training run the same code, and the fitted
state holds only plain values and numpy arrays (saved with skops, never pickle).

The input policy (README.md), applied by :class:`InputSchema` and the encoders:

- a missing input column is an error naming it;
- extra columns are ignored (and reported by :meth:`InputSchema.report`);
- columns are put in training order and coerced to the training dtypes;
- a category never seen in training is treated as missing (or joins the pooled ``__rare__``
  level where a column pools rare levels), and counted.

Which steps a model gets is decided in :mod:`pipeline.steps`: a prefix shared by every
model family (schema, cleaning, declared features and encodings), then a tail for the family
(imputation where the family cannot take missing values, encoding of the remaining categorical
columns, scaling where the family needs it).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import Tags
from sklearn.utils.validation import check_array, check_is_fitted

from pipeline.frames import (
    INPUT,
    ROWS,
    EarlyRows,
    apply,
    compute,
    is_dask,
    meta_of,
    reduce_partitions,
    row_hash,
    run_passes,
    with_column,
)
from pipeline.frames import value_counts as _value_counts

#: the label given to pooled rare levels (native, ordinal, onehot).
RARE = "__rare__"


class SchemaError(ValueError):
    """Input data that does not match what the model was trained on."""


def is_categorical(dtype: Any) -> bool:
    """Text, categorical and boolean columns are encoded; the rest are numbers."""
    return (isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dtype)
            or pd.api.types.is_object_dtype(dtype) or pd.api.types.is_bool_dtype(dtype))


def numeric_columns(meta: pd.DataFrame) -> list[str]:
    return [c for c in meta.columns if not is_categorical(meta[c].dtype)
            and pd.api.types.is_numeric_dtype(meta[c].dtype)]


def categorical_columns(meta: pd.DataFrame) -> list[str]:
    return [c for c in meta.columns if is_categorical(meta[c].dtype)]


def as_text(values: pd.Series) -> pd.Series:
    """Levels as strings, missing kept missing (categoricals, numbers-as-codes, bools)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype(object)
    return values.astype("str").where(values.notna())


def codes_of(values: pd.Series, vocabulary: np.ndarray) -> np.ndarray:
    """Position of each value in ``vocabulary`` (int64; -1 for missing or unknown)."""
    return vocabulary_index(vocabulary).get_indexer(as_text(values)).astype(np.int64)


#: id(vocabulary) -> (vocabulary, its pandas Index): a fitted step's vocabularies are the same
#: arrays on every call, and building an Index's hash table (20,000 levels: ~1 ms) on every
#: transform was most of a one-row prediction's encoding time.
_INDEXES: dict[int, tuple[np.ndarray, pd.Index]] = {}


def vocabulary_index(vocabulary: np.ndarray) -> pd.Index:
    """The pandas Index of a fitted vocabulary, built once per array (its hash table too)."""
    hit = _INDEXES.get(id(vocabulary))
    if hit is not None and hit[0] is vocabulary:
        return hit[1]
    index = pd.Index(vocabulary)
    if len(_INDEXES) >= 1024:  # bounded: the oldest goes
        _INDEXES.pop(next(iter(_INDEXES)), None)
    _INDEXES[id(vocabulary)] = (vocabulary, index)  # holds the array: its id stays its own
    return index


def validate_frame(estimator: BaseEstimator, X: Any, *, reset: bool) -> Any:
    """``X`` as a pandas or dask DataFrame: scikit-learn's ``validate_data`` for our steps.

    A frame passes as it is; its columns are matched by name (the input policy above). A
    2-D array, what scikit-learn's own tools and checks pass, becomes a pandas frame read by
    position: columns ``x0, x1, ...`` (or, once fitted on named columns, those names), each
    with the dtype pandas infers, so an object array of numbers gives numeric columns. It
    must then have as many columns as in ``fit``: positions are all an array has. With
    ``reset`` (in ``fit``) the estimator records ``n_features_in_``, and ``feature_names_in_``
    when it was given a frame with string column names.

    Examples
    --------
    >>> schema = InputSchema().fit(np.array([[1.0, 2.0]]))
    >>> schema.n_features_in_, list(schema.columns_)
    (2, ['x0', 'x1'])
    """
    named = is_dask(X) or isinstance(X, pd.DataFrame)
    if not named:
        array = check_array(X, dtype=None, ensure_all_finite=False)  # 2-D, dense, not empty
        if reset:
            names = [f"x{i}" for i in range(array.shape[1])]
        else:
            n = estimator.n_features_in_
            if array.shape[1] != n:
                raise ValueError(f"X has {array.shape[1]} features, but "
                                 f"{type(estimator).__name__} is expecting {n} features as "
                                 "input (an array's columns are matched by position)")
            names = list(getattr(estimator, "feature_names_in_", [f"x{i}" for i in range(n)]))
        X = pd.DataFrame(array, columns=names).infer_objects()
    if reset:
        columns = list(meta_of(X).columns)
        estimator.n_features_in_ = len(columns)
        if named and all(isinstance(c, str) for c in columns):
            estimator.feature_names_in_ = np.array(columns, dtype=object)
        elif hasattr(estimator, "feature_names_in_"):
            del estimator.feature_names_in_
    return X


def learning_rows(estimator: BaseEstimator, early: EarlyRows | None,
                  reads: Callable[[pd.DataFrame], Iterable[str]]
                  ) -> Generator[Any, Any, tuple[Any, Any]]:
    """The rows a step's ``fit_passes`` learns from: ``early``'s frame when it holds every
    column ``reads(meta)`` names as the step's input will (:class:`EarlyRows`), else the
    step's own input (asked for as ROWS, validated). Returns ``(rows, X)``: ``X`` is the
    validated input when it was asked for, else ``None`` (ask with INPUT before finishing)."""
    if early is not None and early.covers(reads(meta_of(early.frame))):
        return early.frame, None
    X = validate_frame(estimator, (yield ROWS), reset=True)
    return X, X


def frame_tags(tags: Tags) -> Tags:
    """The scikit-learn tags of our steps: missing values and text are data, not errors."""
    tags.input_tags.allow_nan = True
    tags.input_tags.string = True
    return tags


# --------------------------------------------------------------------------- exact quantiles

_DIGIT_BITS = 16
_COLLECT = 20_000  # once a bucket holds at most this many values, fetch them and finish


def _orderable(x: np.ndarray) -> np.ndarray:
    """float64 -> uint64 keys with the same order (IEEE-754 sign-magnitude made monotone)."""
    bits = np.ascontiguousarray(x, dtype=np.float64).view(np.uint64)
    negative = (bits >> np.uint64(63)).astype(bool)
    return np.where(negative, ~bits, bits | np.uint64(1 << 63))


def exact_quantiles(X: Any, wanted: Mapping[str, Sequence[float]]) -> dict[str, np.ndarray]:
    """Exact quantiles (numpy's "linear" method) of numeric columns of a pandas or dask frame.

    Radix selection on the order-preserving 64-bit keys of the values: each pass counts the
    next 16 bits of the keys that share the already-known prefix (with the smallest and
    largest key under each count), in one ``dask.compute`` for every column and quantile
    together; a wanted order statistic is known once its bucket holds one distinct value, or
    fetched once the bucket has at most ``_COLLECT`` values. 2 passes over the (persisted)
    data for repeated values or small buckets, 3 or more where many distinct values crowd one
    bucket; nothing but digit counts and a few small buckets reach the driver. The result depends only on the values, never on the
    partitioning, so a dask fit equals a pandas fit. NaN are ignored; a column with no values
    gives NaN. :func:`quantile_passes` is the same as passes to share with other fits.

    Examples
    --------
    >>> df = pd.DataFrame({"a": [3.0, 1.0, 2.0, np.nan, 10.0]})
    >>> exact_quantiles(df, {"a": [0.0, 0.5, 1.0]})["a"].tolist()
    [1.0, 2.5, 10.0]
    """
    return run_passes(quantile_passes(X, wanted))


def quantile_passes(X: Any, wanted: Mapping[str, Sequence[float]]
                    ) -> Generator[dict[str, Any], dict[str, Any], dict[str, np.ndarray]]:
    """:func:`exact_quantiles` as passes (see :func:`pipeline.frames.run_fits`)."""
    columns = [c for c in wanted if len(wanted[c])]
    if not columns:
        return {}
    # the first pass: every column's top 16 bits; its total is the column's count
    top = tuple((c, 0, 0) for c in columns)
    first = yield {"hist": reduce_partitions(X[columns], lambda df: _histograms(df, top),
                                             _merge_histograms)}
    counts = {c: int(first["hist"][(c, 0, 0)][1].sum()) for c in columns}
    # per (column, rank): [prefix, known bits, rank inside the bucket, bucket size]
    state = {(c, r): [0, 0, r, counts[c]] for c in columns for r in _ranks(counts[c], wanted[c])}
    found: dict[tuple[str, int], float] = {}
    _descend(state, found, first)
    while len(found) < len(state):
        open_ = {k: v for k, v in state.items() if k not in found}
        collect = sorted({(c, p, b) for (c, _), (p, b, _, n) in open_.items() if n <= _COLLECT})
        histo = sorted({(c, p, b) for (c, _), (p, b, _, n) in open_.items() if n > _COLLECT})
        lazy = {}
        if histo:
            lazy["hist"] = reduce_partitions(
                X[sorted({c for c, _, _ in histo})],
                lambda df, h=tuple(histo): _histograms(df, h), _merge_histograms)
        if collect:
            lazy["values"] = reduce_partitions(
                X[sorted({c for c, _, _ in collect})],
                lambda df, v=tuple(collect): _bucket_values(df, v), _merge_values)
        got = yield lazy
        _descend(state, found, got)
    out = {}
    for c in columns:
        n = int(counts[c])
        values = []
        for q in wanted[c]:
            if not n:
                values.append(np.nan)
                continue
            h = (n - 1) * float(q)
            lo, hi = found[(c, int(np.floor(h)))], found[(c, int(np.ceil(h)))]
            frac = h - np.floor(h)
            values.append(lo if frac == 0 or lo == hi else lo + (hi - lo) * frac)
        out[c] = np.array(values, dtype=np.float64)
    return out


def _descend(state: dict, found: dict, got: Mapping[str, dict]) -> None:
    """One pass's answers: each open order statistic's value, or its next 16-bit bucket."""
    for key, (prefix, bits, rank, _) in list(state.items()):
        if key in found:
            continue
        request = (key[0], prefix, bits)
        if request in got.get("values", {}):
            found[key] = float(np.sort(got["values"][request])[rank])
            continue
        digits, cnt, low, high = got["hist"][request]
        cum = np.cumsum(cnt)
        i = int(np.searchsorted(cum, rank, side="right"))
        below = int(cum[i - 1]) if i else 0
        bits += _DIGIT_BITS
        prefix |= int(digits[i]) << (64 - bits)
        state[key] = [prefix, bits, rank - below, int(cnt[i])]
        if bits == 64 or low[i] == high[i]:  # the bucket holds one distinct value
            found[key] = float(_from_key(high[i:i + 1])[0])


def _ranks(n: int, quantiles: Sequence[float]) -> set[int]:
    """The order statistics (0-based) that linear interpolation at ``quantiles`` needs."""
    out: set[int] = set()
    for q in quantiles if n else ():
        h = (n - 1) * float(q)
        out |= {int(np.floor(h)), int(np.ceil(h))}
    return out


def _from_key(keys: np.ndarray) -> np.ndarray:
    top = (keys >> np.uint64(63)).astype(bool)
    bits = np.where(top, keys & ~np.uint64(1 << 63), ~keys)
    return bits.view(np.float64)


def _matching(values: pd.Series, prefix: int, bits: int) -> np.ndarray:
    x = values.to_numpy(dtype=np.float64, na_value=np.nan)
    keys = _orderable(x[~np.isnan(x)])
    if bits:
        keys = keys[(keys >> np.uint64(64 - bits)) == np.uint64(prefix >> (64 - bits))]
    return keys


def _histograms(df: pd.DataFrame, requests: tuple) -> dict:
    """Per request: the next 16-bit digits present, their counts, smallest and largest keys."""
    out = {}
    for c, prefix, bits in requests:
        keys = np.sort(_matching(df[c], prefix, bits))
        digits = ((keys >> np.uint64(64 - bits - _DIGIT_BITS)) & np.uint64(0xFFFF)).astype(
            np.int64)
        starts = np.flatnonzero(np.diff(digits, prepend=-1))  # sorted: each digit's first key
        ends = np.append(starts[1:], len(keys))[:len(starts)] - 1
        out[(c, prefix, bits)] = (digits[starts], ends - starts + 1, keys[starts], keys[ends])
    return out


def _merge_histograms(*parts: dict) -> dict:
    out: dict = {}
    for part in parts:
        for key, (digits, counts, low, high) in part.items():
            if key in out:
                d, c, lo, hi = out[key]
                digits, inverse = np.unique(np.concatenate([d, digits]), return_inverse=True)
                merged = np.zeros(len(digits), dtype=np.int64)
                np.add.at(merged, inverse, np.concatenate([c, counts]))
                smallest = np.full(len(digits), np.iinfo(np.uint64).max, dtype=np.uint64)
                np.minimum.at(smallest, inverse, np.concatenate([lo, low]))
                largest = np.zeros(len(digits), dtype=np.uint64)
                np.maximum.at(largest, inverse, np.concatenate([hi, high]))
                out[key] = (digits, merged, smallest, largest)
            else:
                out[key] = (digits, counts.astype(np.int64), low, high)
    return out


def _bucket_values(df: pd.DataFrame, requests: tuple) -> dict:
    out = {}
    for c, prefix, bits in requests:
        out[(c, prefix, bits)] = _from_key(_matching(df[c], prefix, bits))
    return out


def _merge_values(*parts: dict) -> dict:
    out: dict = {}
    for part in parts:
        for key, values in part.items():
            out[key] = np.concatenate([out[key], values]) if key in out else values
    return out


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
        meta = meta_of(validate_frame(self, X, reset=True))
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
            elif is_categorical(dtype):
                kinds.append("category")
            else:
                kinds.append("number")
        self.kinds_ = np.array(kinds, dtype=object)
        return self

    def transform(self, X: Any) -> Any:
        check_is_fitted(self, "columns_")
        X = validate_frame(self, X, reset=False)
        meta = meta_of(X)
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
                out[column] = values if values.dtype == bool else values.astype("boolean")
            elif kind == "datetime":
                out[column] = pd.to_datetime(values, errors="coerce")
            elif isinstance(values.dtype, pd.CategoricalDtype):
                out[column] = values
            else:
                out[column] = as_text(values)
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

    def __sklearn_tags__(self) -> Tags:
        return frame_tags(super().__sklearn_tags__())


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


# --------------------------------------------------------------------------- cleaning


class ColumnCleaner(TransformerMixin, BaseEstimator):
    """Drop columns that cannot help: all missing, or a single value. Every drop is recorded.

    Parameters
    ----------
    drop_constant, drop_all_missing
        Which kinds of useless columns to drop.
    protect
        Columns never dropped (those the job names in features or encodings).

    Attributes
    ----------
    dropped_ : list of {"column", "reason"}
        What was dropped and why (reported in metrics.json and the report).
    """

    def __init__(self, drop_constant: bool = True, drop_all_missing: bool = True,
                 protect: Sequence[str] = ()) -> None:
        self.drop_constant = drop_constant
        self.drop_all_missing = drop_all_missing
        self.protect = protect

    def fit(self, X: Any, y: Any = None) -> ColumnCleaner:
        run_passes(self.fit_passes(y), X)
        return self

    def fit_passes(self, y: Any = None, early: EarlyRows | None = None
                   ) -> Generator[Any, Any, Callable[[Any], Any]]:
        """:meth:`fit` as passes (:func:`pipeline.frames.run_fits`); returns the transform
        of the training rows."""
        X = validate_frame(self, (yield ROWS), reset=True)  # it reads every column
        meta = meta_of(X)
        numbers, texts = numeric_columns(meta), categorical_columns(meta)
        # one task per partition for every column (dask's own reductions: three per column)
        got = yield reduce_partitions(
            X, lambda df: _column_stats(df, numbers, texts), _merge_column_stats)
        dropped = []
        for c in meta.columns:
            if c in set(self.protect):  # named elsewhere in the job: keep, the job decides
                continue
            if self.drop_all_missing and int(got["count"][c]) == 0:
                dropped.append({"column": c, "reason": "all values missing"})
            elif self.drop_constant and c in got["min"] and got["min"][c] == got["max"][c]:
                dropped.append({"column": c, "reason": f"constant ({got['min'][c]})"})
            elif self.drop_constant and c in got["levels"] and len(got["levels"][c]) <= 1:
                dropped.append({"column": c, "reason": "a single level"})
        self.dropped_ = dropped
        drop = {d["column"] for d in dropped}
        self.columns_ = np.array([c for c in meta.columns if c not in drop], dtype=object)
        return self.transform

    def rewrites(self, meta: pd.DataFrame) -> set[str]:
        """Columns whose values the transform changes (see :class:`EarlyRows`): none."""
        return set()

    def transform(self, X: Any) -> Any:
        check_is_fitted(self, "columns_")
        columns = list(self.columns_)
        X = validate_frame(self, X, reset=False)
        if is_dask(X) and list(X.columns) == columns:
            return X  # nothing dropped: no task (persisted rows stay the same keys)
        return apply(X, lambda df: df[columns])

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self, "columns_")
        return self.columns_.copy()

    def __sklearn_tags__(self) -> Tags:
        return frame_tags(super().__sklearn_tags__())


def _column_stats(df: pd.DataFrame, numbers: list[str], texts: list[str]) -> dict[str, dict]:
    """Per column: values present; min and max of numbers; up to two levels of text."""
    return {"count": {c: int(n) for c, n in df.count().items()},
            "min": {c: float(v) for c, v in df[numbers].min().items()},
            "max": {c: float(v) for c, v in df[numbers].max().items()},
            "levels": {c: set(as_text(df[c]).dropna().unique()[:2]) for c in texts}}


def _merge_column_stats(*parts: dict[str, dict]) -> dict[str, dict]:
    first, *rest = parts
    out = {k: dict(v) for k, v in first.items()}
    for part in rest:
        for c, n in part["count"].items():
            out["count"][c] += n
        for c, v in part["min"].items():
            out["min"][c] = float(np.fmin(out["min"][c], v))
        for c, v in part["max"].items():
            out["max"][c] = float(np.fmax(out["max"][c], v))
        for c, levels in part["levels"].items():
            out["levels"][c] = set(sorted(out["levels"][c] | levels)[:2])
    return out


def as_text_lazy(series: Any) -> Any:
    """:func:`as_text` on a pandas or dask Series."""
    if is_dask(series):
        return series.map_partitions(as_text, meta=as_text(series._meta))
    return as_text(series)


class QuantileClipper(TransformerMixin, BaseEstimator):
    """Clip numeric columns at quantiles learned on the training data (exact quantiles).

    Parameters
    ----------
    lower, upper
        Quantiles, e.g. 0.001 and 0.999.
    columns
        Numeric columns to clip (``None``: all numeric columns).
    """

    def __init__(self, lower: float = 0.001, upper: float = 0.999,
                 columns: Sequence[str] | None = None) -> None:
        self.lower = lower
        self.upper = upper
        self.columns = columns

    def fit(self, X: Any, y: Any = None) -> QuantileClipper:
        run_passes(self.fit_passes(y), X)
        return self

    def fit_passes(self, y: Any = None, early: EarlyRows | None = None
                   ) -> Generator[Any, Any, Callable[[Any], Any]]:
        """:meth:`fit` as passes (:func:`pipeline.frames.run_fits`); on ``early`` rows when
        they hold its columns as its input will. Returns the transform of the training rows."""
        rows, X = yield from learning_rows(self, early, self._columns)
        columns = self._columns(meta_of(rows))
        require_columns(columns, meta_of(rows), "preprocess.clip.columns", numeric=True)
        q = yield from quantile_passes(rows, {c: [self.lower, self.upper] for c in columns})
        if X is None:
            X = validate_frame(self, (yield INPUT), reset=True)
        columns = self._columns(meta_of(X))  # early rows may have had more (cleaned away)
        require_columns(columns, meta_of(X), "preprocess.clip.columns", numeric=True)
        self.bounds_ = {c: (float(q[c][0]), float(q[c][1])) for c in columns}
        return self.transform

    def rewrites(self, meta: pd.DataFrame) -> set[str]:
        """Columns whose values the transform changes (see :class:`EarlyRows`)."""
        return set(self._columns(meta))

    def _columns(self, meta: pd.DataFrame) -> list[str]:
        return list(self.columns) if self.columns is not None else numeric_columns(meta)

    def transform(self, X: Any) -> Any:
        check_is_fitted(self, "bounds_")
        return apply(validate_frame(self, X, reset=False), self._transform)

    def _transform(self, df: pd.DataFrame) -> pd.DataFrame:
        out = df.copy()
        for c, (lo, hi) in self.bounds_.items():
            out[c] = df[c].clip(lo, hi)
        return out

    def __sklearn_tags__(self) -> Tags:
        return frame_tags(super().__sklearn_tags__())


def require_columns(columns: Sequence[str], meta: pd.DataFrame, where: str, *,
             numeric: bool | None = None) -> None:
    """Declared columns exist and have the right kind: errors before any compute."""
    for c in columns:
        if c not in meta.columns:
            from pipeline.errors import did_you_mean

            hint = did_you_mean(c, meta.columns)
            raise SchemaError(f"{where} names {c!r}, which is not a column here{hint}")
        if numeric is True and is_categorical(meta[c].dtype):
            raise SchemaError(f"{where} names {c!r}, a {meta[c].dtype} column; it needs a "
                              "numeric column")
        if numeric is False and not is_categorical(meta[c].dtype):
            raise SchemaError(f"{where} names {c!r}, a numeric ({meta[c].dtype}) column; an "
                              "encoding applies to categorical/text columns (cast it with "
                              "data.schema: {col: category} if its numbers are codes)")


# --------------------------------------------------------------------------- imputation


class Imputer(TransformerMixin, BaseEstimator):
    """Fill missing values by column kind, with per-column exceptions and indicators.

    Parameters
    ----------
    numeric
        ``mean``, ``median`` (exact), ``most_frequent``, ``constant`` or ``none``.
    categorical
        ``most_frequent``, ``constant`` or ``none``.
    fill_value
        The value of the ``constant`` strategies (numbers get it as a float, text as a string).
    columns
        ``{column: {"strategy": ..., "value": ...}}`` exceptions.
    indicators
        Add a ``<column>__missing`` 0/1 column for each column that had missing values in
        training.
    """

    def __init__(self, numeric: str = "median", categorical: str = "constant",
                 fill_value: Any = 0, columns: Mapping[str, Mapping[str, Any]] | None = None,
                 indicators: bool = False) -> None:
        self.numeric = numeric
        self.categorical = categorical
        self.fill_value = fill_value
        self.columns = columns
        self.indicators = indicators

    def _strategy(self, column: str, categorical: bool) -> tuple[str, Any]:
        declared = (self.columns or {}).get(column)
        if declared is not None:
            return declared["strategy"], declared.get("value")
        if categorical:
            value = self.fill_value if isinstance(self.fill_value, str) else "__missing__"
            return self.categorical, value
        return self.numeric, self.fill_value

    def fit(self, X: Any, y: Any = None) -> Imputer:
        X = validate_frame(self, X, reset=True)
        meta = meta_of(X)
        require_columns(list(self.columns or {}), meta, "preprocess.impute.columns")
        plan = {}
        for c in meta.columns:
            categorical = is_categorical(meta[c].dtype)
            strategy, value = self._strategy(c, categorical)
            if categorical and strategy in ("mean", "median"):
                raise SchemaError(f"preprocess.impute: {strategy} of {c!r}, a categorical "
                                  "column; use most_frequent or constant")
            plan[c] = (strategy, value)
        lazy: dict[str, Any] = {"missing": {c: X[c].isna().sum() for c in meta.columns}}
        lazy["mean"] = {c: X[c].mean() for c, (s, _) in plan.items() if s == "mean"}
        lazy["mode"] = {c: _value_counts(as_text_lazy(X[c]) if is_categorical(meta[c].dtype)
                                         else X[c])
                        for c, (s, _) in plan.items() if s == "most_frequent"}
        (got,) = compute(lazy)
        medians = exact_quantiles(X, {c: [0.5] for c, (s, _) in plan.items() if s == "median"})
        stats: dict[str, Any] = {}
        for c, (strategy, value) in plan.items():
            if strategy == "none" or int(got["missing"][c]) == 0 and strategy != "constant":
                continue
            if strategy == "mean":
                stats[c] = float(got["mean"][c])
            elif strategy == "median":
                stats[c] = float(medians[c][0])
            elif strategy == "most_frequent":
                counts = got["mode"][c]
                if len(counts) == 0:
                    continue
                top = counts.max()
                # ties broken by the smallest value, as scikit-learn's SimpleImputer does
                winner = sorted(counts[counts == top].index.tolist(), key=_order_key)[0]
                stats[c] = winner if is_categorical(meta[c].dtype) else float(winner)
            else:
                stats[c] = (str(value) if is_categorical(meta[c].dtype)
                            else float(value if value is not None else 0.0))
        self.statistics_ = {c: v for c, v in stats.items() if not _is_nan(v)}
        self.indicator_columns_ = np.array(
            [c for c in meta.columns if self.indicators and int(got["missing"][c]) > 0],
            dtype=object)
        return self

    def transform(self, X: Any) -> Any:
        check_is_fitted(self, "statistics_")
        return apply(validate_frame(self, X, reset=False), self._transform)

    def _transform(self, df: pd.DataFrame) -> pd.DataFrame:
        out = df.copy()
        for c in self.indicator_columns_:
            out[f"{c}__missing"] = df[c].isna().astype(np.uint8)
        for c, value in self.statistics_.items():
            if isinstance(df[c].dtype, pd.CategoricalDtype) and value not in \
                    df[c].cat.categories:
                out[c] = df[c].cat.add_categories([value]).fillna(value)
            else:
                out[c] = df[c].fillna(value)
        return out

    def __sklearn_tags__(self) -> Tags:
        return frame_tags(super().__sklearn_tags__())


def _order_key(value: Any) -> tuple:
    return (0, value) if isinstance(value, int | float) else (1, str(value))


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and np.isnan(value)


# --------------------------------------------------------------------------- scaling


class Scaler(TransformerMixin, BaseEstimator):
    """Scale numeric columns: ``standard`` (mean/std), ``minmax`` or ``robust`` (median/IQR).

    Constant columns are left centred (scale 1), as scikit-learn does.
    """

    def __init__(self, method: str = "standard", columns: Sequence[str] | None = None) -> None:
        self.method = method
        self.columns = columns

    def fit(self, X: Any, y: Any = None) -> Scaler:
        X = validate_frame(self, X, reset=True)
        meta = meta_of(X)
        columns = list(self.columns) if self.columns is not None else numeric_columns(meta)
        if self.method not in ("standard", "minmax", "robust"):
            raise ValueError(f"preprocess.scale: unknown method {self.method!r}")
        if self.method == "standard":
            (got,) = compute({"mean": {c: X[c].mean() for c in columns},
                              "std": {c: X[c].std(ddof=0) for c in columns}})
            center = {c: float(got["mean"][c]) for c in columns}
            scale = {c: float(got["std"][c]) for c in columns}
        elif self.method == "minmax":
            (got,) = compute({"min": {c: X[c].min() for c in columns},
                              "max": {c: X[c].max() for c in columns}})
            center = {c: float(got["min"][c]) for c in columns}
            scale = {c: float(got["max"][c]) - float(got["min"][c]) for c in columns}
        else:
            q = exact_quantiles(X, {c: [0.25, 0.5, 0.75] for c in columns})
            center = {c: float(q[c][1]) for c in columns}
            scale = {c: float(q[c][2] - q[c][0]) for c in columns}
        self.center_ = {c: (0.0 if np.isnan(v) else v) for c, v in center.items()}
        self.scale_ = {c: (1.0 if not np.isfinite(v) or v == 0 else v) for c, v in scale.items()}
        return self

    def transform(self, X: Any) -> Any:
        check_is_fitted(self, "scale_")
        return apply(validate_frame(self, X, reset=False), self._transform)

    def _transform(self, df: pd.DataFrame) -> pd.DataFrame:
        out = df.copy()
        for c, scale in self.scale_.items():
            out[c] = (df[c].astype(np.float64) - self.center_[c]) / scale
        return out

    def __sklearn_tags__(self) -> Tags:
        return frame_tags(super().__sklearn_tags__())


# --------------------------------------------------------------------------- encoding


class NativeCategorical(TransformerMixin, BaseEstimator):
    """Text/categorical columns as pandas categoricals with *known* categories (XGBoost native).

    Levels seen fewer than ``min_frequency`` times, or beyond the ``max_levels`` most frequent,
    are pooled into one ``__rare__`` level. A level never seen in training becomes missing
    (XGBoost's own behaviour, made explicit), or ``__rare__`` when the column pools, and is
    counted by :meth:`unseen`.
    """

    def __init__(self, columns: Sequence[str] | None = None, max_levels: int = 1000,
                 min_frequency: int = 1) -> None:
        self.columns = columns
        self.max_levels = max_levels
        self.min_frequency = min_frequency

    def fit(self, X: Any, y: Any = None) -> NativeCategorical:
        X = validate_frame(self, X, reset=True)
        meta = meta_of(X)
        columns = (list(self.columns) if self.columns is not None
                   else categorical_columns(meta))
        (counts,) = compute({c: _value_counts(as_text_lazy(X[c])) for c in columns})
        self.columns_ = np.array(columns, dtype=object)
        self.categories_ = {c: kept_levels(counts[c], self.max_levels, self.min_frequency)
                            for c in columns}
        return self

    def transform(self, X: Any) -> Any:
        check_is_fitted(self, "categories_")
        return apply(validate_frame(self, X, reset=False), self._transform)

    def _transform(self, df: pd.DataFrame) -> pd.DataFrame:
        out = df.copy()
        for c in self.columns_:
            out[c] = _categorical(df[c], self.categories_[c])
        return out

    def unseen(self, df: pd.DataFrame) -> dict[str, int]:
        """Rows per column whose level is outside the kept vocabulary."""
        check_is_fitted(self, "categories_")
        return {c: _outside(df[c], self.categories_[c]) for c in self.columns_}

    def __sklearn_tags__(self) -> Tags:
        return frame_tags(super().__sklearn_tags__())


def kept_levels(counts: pd.Series, max_levels: int, min_frequency: int) -> np.ndarray:
    """The ``max_levels`` most frequent levels seen ``min_frequency`` times or more, sorted,
    plus ``__rare__`` when anything was pooled."""
    frequent = by_frequency(counts[counts >= min_frequency])
    kept = sorted(frequent[:max_levels])
    if len(counts) > len(kept):
        kept.append(RARE)
    return np.array(kept, dtype=object)


def by_frequency(counts: pd.Series) -> list[str]:
    """Levels, most frequent first; ties by level (so the order never depends on partitions)."""
    return [str(k) for k, _ in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))]


def _outside(values: pd.Series, vocabulary: np.ndarray) -> int:
    """Values that are neither missing nor a level of ``vocabulary`` (the pooled level is
    not a level a value can have)."""
    text = as_text(values)
    found = vocabulary_index(vocabulary).get_indexer(text) >= 0
    known = text.isna().to_numpy() | (found & (text != RARE).to_numpy(dtype=bool, na_value=True))
    return int((~known).sum())


def _categorical(values: pd.Series, categories: np.ndarray) -> pd.Series:
    codes = _pooled_codes(values, categories)
    return pd.Series(pd.Categorical.from_codes(codes, categories=list(categories)),
                     index=values.index, name=values.name)


#: characters XGBoost refuses in feature names, and what stands for them in a column name
_UNSAFE = str.maketrans({"[": "(", "]": ")", "<": "lt"})


def onehot_columns(column: str, vocab: Sequence[Any]) -> list[str]:
    """The one-hot column names ``<column>=<level>``, one per level, unique and usable as
    XGBoost feature names (which may not hold ``[``, ``]`` or ``<``: a level such as
    ``<1H OCEAN`` becomes ``lt1H OCEAN``).

    Examples
    --------
    >>> onehot_columns("ocean", ["<1H OCEAN", "INLAND", "a[0]"])
    ['ocean=lt1H OCEAN', 'ocean=INLAND', 'ocean=a(0)']
    """
    names: list[str] = []
    for level in vocab:
        name = f"{column}={level}".translate(_UNSAFE)
        while name in names:  # two levels that differ only in those characters
            name += "_"
        names.append(name)
    return names


class CategoricalEncoder(TransformerMixin, BaseEstimator):
    """Per-column categorical encodings into numbers.

    Parameters
    ----------
    encodings
        ``{column: {"method": ..., options}}`` with method one of

        - ``onehot``: one 0/1 column per level kept (``max_levels`` most frequent, seen
          ``min_frequency`` times or more); rarer levels and levels never seen in training
          share one ``<col>=__rare__`` column when training had rare levels (otherwise an
          unseen level is all zeros); missing is all zeros;
        - ``ordinal``: the level's rank by training frequency (0 = most frequent), rare levels
          one shared code; unseen and missing become NaN;
        - ``count`` / ``frequency``: how often the level occurred in training (or its share);
          unseen and missing give 0 (numba kernel ``count_encode``);
        - ``target``: the level's mean target smoothed toward the prior,
          ``(sum + m * prior) / (count + m)``; during ``fit_transform`` each training row is
          encoded out-of-fold (its fold's own rows excluded, folds by row hash) so the target
          does not leak; multiclass gives one column per class (numba kernels
          ``target_stats_folds`` / ``target_encode_oof``);
        - ``hash``: the hashing trick, ``n_buckets`` 0/1 columns from MurmurHash3 of the text
          (numba kernel ``hash_bytes``); needs no vocabulary, so unseen levels just hash;
        - ``native``: pandas categorical with known categories (XGBoost's own handling).
    default
        A method for every categorical column not in ``encodings`` (``None``: leave them).
    n_classes
        Classes of the target for multiclass target encoding (``None``: numeric target).
    seed
        Seed of the out-of-fold assignment.
    """

    def __init__(self, encodings: Mapping[str, Mapping[str, Any]] | None = None,
                 default: str | None = None, n_classes: int | None = None,
                 seed: int = 0) -> None:
        self.encodings = encodings
        self.default = default
        self.n_classes = n_classes
        self.seed = seed

    # -- fit ---------------------------------------------------------------------------------

    def fit(self, X: Any, y: Any = None) -> CategoricalEncoder:
        run_passes(self.fit_passes(y), X)
        return self

    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> Any:
        """Fit, then encode the training rows themselves out-of-fold (target encoding)."""
        return run_passes(self.fit_passes(y), X)(X)

    def fit_passes(self, y: Any = None, early: EarlyRows | None = None
                   ) -> Generator[Any, Any, Callable[[Any], Any]]:
        """:meth:`fit` as passes (:func:`pipeline.frames.run_fits`): the vocabularies on
        ``early`` rows when they hold its columns as its input will, the target statistics on
        its input (the folds hash every column). Returns the transform of the training rows:
        target encodings out-of-fold."""
        rows, X = yield from learning_rows(self, early, self.rewrites)
        encodings = self._encodings(meta_of(rows))
        needs_vocab = [c for c, s in encodings.items() if s["method"] != "hash"]
        targets = [c for c, s in encodings.items() if s["method"] == "target"]
        if targets and y is None:
            raise ValueError(f"target encoding of {targets} needs the target: fit(X, y)")
        lazy: dict[str, Any] = {"counts": {c: _value_counts(as_text_lazy(rows[c]))
                                           for c in needs_vocab}}
        if targets:
            lazy["prior"] = _target_mean(y, self.n_classes)
        got = yield lazy
        if X is None:  # the target statistics read the input itself (folds hash every column)
            X = validate_frame(self, (yield ROWS if targets else INPUT), reset=True)
            encodings = self._encodings(meta_of(X))  # early rows may have had more columns
        self.vocabulary_ = {}
        self.tables_ = {}
        for c in needs_vocab:
            if c not in encodings:
                continue
            spec = encodings[c]
            counts = got["counts"][c]
            if spec["method"] in ("onehot", "ordinal", "native"):
                vocab = kept_levels(counts, spec.get("max_levels", 20 if spec["method"] ==
                                                     "onehot" else 1000),
                                    spec.get("min_frequency", 1))
                if spec["method"] == "ordinal":  # by frequency: frequent levels, small codes
                    text_counts = counts.rename(index=str)
                    ranked = by_frequency(text_counts[[v for v in vocab if v != RARE]])
                    vocab = np.array(ranked + ([RARE] if RARE in vocab else []), dtype=object)
            else:
                vocab = np.array(sorted(str(v) for v in counts.index), dtype=object)
            self.vocabulary_[c] = vocab
            if spec["method"] in ("count", "frequency"):
                self.tables_[c] = counts.reindex(vocab).fillna(0).to_numpy(dtype=np.int64)
        self.encodings_ = encodings
        methods = {s["method"] for s in encodings.values()}
        self.kernels_used_ = sorted(
            ({"count_encode"} if methods & {"count", "frequency"} else set())
            | ({"target_stats_folds", "target_encode", "target_encode_oof"}
               if "target" in methods else set())
            | ({"hash_bytes"} if "hash" in methods else set()))
        targets = [c for c in targets if c in encodings]
        if targets:
            total, rows_seen = got["prior"]
            self.prior_ = np.asarray(total, dtype=np.float64) / max(int(rows_seen), 1)
        else:
            self.prior_ = np.zeros(0)
        oof: dict[str, Any] = {}
        if targets:
            stats = yield _target_statistics(X, y, targets, self.vocabulary_, encodings,
                                             self.n_classes, self.seed)
            self.target_sums_ = {c: stats[c][0].sum(axis=0) for c in targets}
            self.target_counts_ = {c: stats[c][1].sum(axis=0) for c in targets}
            oof = {c: stats[c] for c in targets}
        else:
            self.target_sums_, self.target_counts_ = {}, {}
        self.feature_names_out_ = None
        if not oof:
            return self.transform
        return lambda frame: self._apply(validate_frame(self, frame, reset=False), y, oof)

    def rewrites(self, meta: pd.DataFrame) -> set[str]:
        """Columns whose values the transform changes (see :class:`EarlyRows`)."""
        return set(self.encodings or {}) | set(categorical_columns(meta) if self.default else ())

    def _encodings(self, meta: pd.DataFrame) -> dict[str, dict[str, Any]]:
        """Each encoded column's spec: the declared ones, then ``default`` for the rest."""
        encodings = {c: dict(spec) for c, spec in (self.encodings or {}).items()}
        require_columns(list(encodings), meta, "preprocess.encode", numeric=False)
        if self.default:
            for c in categorical_columns(meta):
                encodings.setdefault(c, {"method": self.default})
        return encodings

    # -- transform ---------------------------------------------------------------------------

    def transform(self, X: Any) -> Any:
        check_is_fitted(self, "encodings_")
        return self._apply(validate_frame(self, X, reset=False), None, {})

    def _apply(self, X: Any, y: Any, oof: Mapping[str, Any]) -> Any:
        if oof:
            return apply(with_column(X, "__target__", y),
                         lambda df: self._transform(df.drop(columns="__target__"), oof,
                                                    fold_source=df))
        return apply(X, lambda df: self._transform(df, {}, None))

    def _transform(self, df: pd.DataFrame, oof: Mapping[str, Any],
                   fold_source: pd.DataFrame | None) -> pd.DataFrame:
        import kernels

        out = {c: df[c] for c in df.columns if c not in self.encodings_}
        for c, spec in self.encodings_.items():
            method = spec["method"]
            if method == "hash":
                buckets = hash_buckets(df[c], spec.get("n_buckets", 32), self.seed)
                for b in range(spec.get("n_buckets", 32)):
                    out[f"{c}#h{b}"] = (buckets == b).astype(np.uint8)
                continue
            vocab = self.vocabulary_[c]
            if method == "native":
                out[c] = _categorical(df[c], vocab)
                continue
            codes = _pooled_codes(df[c], vocab)
            if method == "onehot":
                for i, name in enumerate(onehot_columns(c, vocab)):
                    out[name] = (codes == i).astype(np.uint8)
            elif method == "ordinal":
                out[c] = np.where(codes >= 0, codes, np.nan).astype(np.float64)
            elif method in ("count", "frequency"):
                out[f"{c}__{method}"] = kernels.count_encode(
                    codes, self.tables_[c], normalize=method == "frequency")
            elif method == "target":
                out.update(self._target_columns(c, spec, codes, oof.get(c), fold_source))
        return pd.DataFrame(out, index=df.index)

    def _target_columns(self, c: str, spec: Mapping[str, Any], codes: np.ndarray,
                        oof: Any, fold_source: pd.DataFrame | None) -> dict[str, np.ndarray]:
        import kernels

        smoothing = float(spec.get("smoothing", 10.0))
        sums, counts = self.target_sums_[c], self.target_counts_[c]
        names = _target_names(c, len(self.prior_))
        if oof is not None and fold_source is not None:
            folds = _folds(fold_source.drop(columns="__target__"), spec.get("folds", 5),
                           self.seed)
            fold_sums, fold_counts = oof
            return {name: kernels.target_encode_oof(
                codes, folds, np.ascontiguousarray(fold_sums[:, k]),
                np.ascontiguousarray(fold_counts), float(self.prior_[k]), smoothing)
                for k, name in enumerate(names)}
        return {name: kernels.target_encode(codes, np.ascontiguousarray(sums[k]), counts,
                                            float(self.prior_[k]), smoothing)
                for k, name in enumerate(names)}

    def unseen(self, df: pd.DataFrame) -> dict[str, int]:
        """Rows per column whose level is outside the training vocabulary."""
        check_is_fitted(self, "encodings_")
        return {c: _outside(df[c], self.vocabulary_[c]) for c in self.vocabulary_}

    def __getstate__(self) -> dict[str, Any]:
        # vocabularies kept as UTF-8 bytes and offsets: skops writes an object array element
        # by element (the demo's 21,000 levels were most of preprocessor.skops' save and load)
        state = dict(super().__getstate__())  # the instance's own __dict__ otherwise
        if "vocabulary_" in state:
            state["vocabulary_"] = {c: _packed(v) for c, v in state["vocabulary_"].items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "vocabulary_" in state:
            state["vocabulary_"] = {c: _unpacked(v) for c, v in state["vocabulary_"].items()}
        super().__setstate__(state)

    def __sklearn_tags__(self) -> Tags:
        return frame_tags(super().__sklearn_tags__())


def _packed(vocabulary: np.ndarray) -> dict[str, np.ndarray] | np.ndarray:
    """Text levels as ``{"utf8": the levels' bytes one after another, "ends": where each
    ends}`` (two plain arrays); anything else as it is."""
    if not all(isinstance(v, str) for v in vocabulary):
        return vocabulary
    encoded = [v.encode("utf-8", "surrogatepass") for v in vocabulary]
    return {"utf8": np.frombuffer(b"".join(encoded), dtype=np.uint8),
            "ends": np.cumsum([len(b) for b in encoded], dtype=np.int64)}


def _unpacked(stored: Mapping[str, np.ndarray] | np.ndarray) -> np.ndarray:
    """The object array of levels :func:`_packed` stored (bundles before it: as stored)."""
    if not isinstance(stored, Mapping):
        return np.asarray(stored, dtype=object)
    blob, ends = stored["utf8"].tobytes(), stored["ends"].tolist()
    out = np.empty(len(ends), dtype=object)
    out[:] = [blob[a:b].decode("utf-8", "surrogatepass") for a, b in zip([0, *ends], ends)]
    return out


def _pooled_codes(values: pd.Series, vocab: np.ndarray) -> np.ndarray:
    """Codes into ``vocab``; levels outside it go to ``__rare__`` when the vocabulary pools."""
    codes = codes_of(values, vocab)
    if len(vocab) and vocab[-1] == RARE:
        codes = np.where((codes < 0) & values.notna().to_numpy(), len(vocab) - 1, codes)
    return codes


def _target_names(column: str, n_outputs: int) -> list[str]:
    return [f"{column}__te"] if n_outputs == 1 else [f"{column}__te_{k}"
                                                     for k in range(n_outputs)]


def _target_matrix(y: np.ndarray, n_classes: int | None) -> np.ndarray:
    """(n, k): the target itself (binary/regression) or one-vs-rest indicators (multiclass)."""
    y = np.asarray(y, dtype=np.float64)
    if n_classes and n_classes > 2:
        return (y[:, None] == np.arange(n_classes)[None, :]).astype(np.float64)
    return y[:, None]


def _target_mean(y: Any, n_classes: int | None) -> Any:
    """(sum of the target matrix, rows): the prior is their ratio (lazy on dask)."""
    frame = y.to_frame("__y") if is_dask(y) else pd.DataFrame({"__y": np.asarray(y)})
    return reduce_partitions(
        frame, lambda df: (_target_matrix(df["__y"].to_numpy(), n_classes).sum(axis=0), len(df)),
        lambda *parts: (sum(p[0] for p in parts), sum(p[1] for p in parts)))


def _folds(df: pd.DataFrame, n_folds: int, seed: int) -> np.ndarray:
    return (row_hash(df, seed + 104729) % np.uint64(n_folds)).astype(np.int64)


def _target_statistics(X: Any, y: Any, columns: list[str], vocab: Mapping[str, np.ndarray],
                       encodings: Mapping[str, Mapping[str, Any]], n_classes: int | None,
                       seed: int) -> dict[str, Any]:
    """Per column: (sums[k_folds, k_out, n_levels], counts[k_folds, n_levels]), lazily."""
    import kernels

    frame = with_column(X, "__target__", y)

    def chunk(df: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
        spec = encodings[column]
        n_folds = int(spec.get("folds", 5))
        features = df.drop(columns="__target__")
        folds = _folds(features, n_folds, seed)
        codes = _pooled_codes(df[column], vocab[column])
        ymat = _target_matrix(df["__target__"].to_numpy(), n_classes)
        n_levels = len(vocab[column])
        sums = np.zeros((n_folds, ymat.shape[1], n_levels))
        counts = np.zeros((n_folds, n_levels), dtype=np.int64)
        for k in range(ymat.shape[1]):
            s, cnt = kernels.target_stats_folds(codes, np.ascontiguousarray(ymat[:, k]), folds,
                                                n_folds, n_levels)
            sums[:, k, :] = s
            counts = cnt
        return sums, counts

    def combine(*parts: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return sum(p[0] for p in parts), sum(p[1] for p in parts)

    out = {}
    for column in columns:
        out[column] = reduce_partitions(frame, lambda df, c=column: chunk(df, c), combine)
    return out


def hash_buckets(values: pd.Series, n_buckets: int, seed: int) -> np.ndarray:
    """MurmurHash3 bucket of each value's text (Arrow string buffers, no Python loop)."""
    import pyarrow as pa

    import kernels

    text = as_text(values)
    array = pa.array(text.to_numpy(dtype=object, na_value=None), type=pa.large_string())
    valid = ~np.asarray(text.isna().to_numpy(), dtype=bool)
    _, offsets, data = array.buffers()
    offsets = np.frombuffer(offsets, dtype=np.int64)[array.offset:array.offset + len(array) + 1]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    return kernels.hash_bytes(data, offsets, n_buckets, seed, valid=valid)
