"""The job's declarations, checked and turned into scikit-learn Pipeline steps.

A model's preprocessing is a prefix shared by every model family (schema, cleaning, declared
features and encodings: :func:`prefix_steps`), then a tail for the family (imputation where
the family cannot take missing values, encoding of the remaining categorical columns, scaling
where it needs it: :func:`tail_steps`). The prefix is fitted once on all training rows
(:func:`fit_prefix`) and shared by every family's refit; the search fits it per fold.

:func:`check_declarations` checks the columns the job names on the empty ``meta`` frame, so
a typo fails before any data is read (the transformers check again when fitted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.features import KernelFeatures, check_features
from pipeline.preprocess import (
    CategoricalEncoder,
    ColumnCleaner,
    Imputer,
    InputSchema,
    NativeCategorical,
    QuantileClipper,
    Scaler,
    require_columns,
)

if TYPE_CHECKING:
    import pandas as pd
    from distributed import Client
    from sklearn.pipeline import Pipeline

    from pipeline.config import JobSpec
    from pipeline.split import Parts


def check_declarations(job: JobSpec, meta: pd.DataFrame, feature_columns: Sequence[str]) -> None:
    """Columns the job names that are missing or of the wrong kind: errors before any compute.

    Examples
    --------
    >>> check_declarations(job, raw._meta, ["income", "state"])        # doctest: +SKIP
    """
    from pipeline.errors import did_you_mean
    from pipeline.load import DataError

    known = list(meta.columns)
    for column in job.evaluate.slices:
        if column not in known:
            raise DataError(f"evaluate.slices names {column!r}, not a column of the data"
                            f"{did_you_mean(column, known)}")
    inputs = meta[list(feature_columns)]
    check_features([f.model_dump() for f in job.features], inputs)
    prep = job.preprocess
    require_columns(list(prep.encode), inputs, "preprocess.encode", numeric=False)
    require_columns(list(prep.impute.columns), inputs, "preprocess.impute.columns")
    if prep.clip is not None and prep.clip.columns:
        require_columns(prep.clip.columns, inputs, "preprocess.clip.columns", numeric=True)


def build_preprocessor(job: JobSpec, feature_columns: Sequence[str], family: str,
                       n_classes: int | None = None) -> Pipeline:
    """The scikit-learn Pipeline for ``family``: the shared prefix, then the family's tail."""
    from sklearn.pipeline import Pipeline

    return Pipeline(prefix_steps(job, feature_columns, n_classes) + tail_steps(job, family))


def prefix_steps(job: JobSpec, feature_columns: Sequence[str],
                 n_classes: int | None = None) -> list[tuple[str, Any]]:
    """Steps every model family shares: schema, cleaning, declared features and encodings."""
    prep = job.preprocess
    declared = {c for f in job.features for c in _feature_columns(f)} | set(prep.encode)
    steps: list[tuple[str, Any]] = [("schema", InputSchema(columns=list(feature_columns)))]
    if prep.drop_constant or prep.drop_all_missing:
        steps.append(("clean", ColumnCleaner(prep.drop_constant, prep.drop_all_missing,
                                             protect=sorted(declared))))
    if prep.clip is not None:
        steps.append(("clip", QuantileClipper(prep.clip.lower, prep.clip.upper,
                                              prep.clip.columns)))
    if job.features:
        # window keys/times that are ids or dropped columns only give context: gone after
        drop = sorted(set(job.window_columns) & (set(job.data.id_columns) | set(job.data.drop)))
        steps.append(("features", KernelFeatures([f.model_dump() for f in job.features],
                                                 drop=drop)))
    if prep.encode:
        encodings = {c: e.model_dump() for c, e in prep.encode.items()}
        steps.append(("encode", CategoricalEncoder(encodings, n_classes=n_classes,
                                                   seed=job.data.split.seed)))
    return steps


def tail_steps(job: JobSpec, family: str) -> list[tuple[str, Any]]:
    """Steps for one family: imputation, the remaining categoricals, scaling, as it needs."""
    from pipeline.models import FAMILIES

    needs = FAMILIES[family]["needs"]
    prep = job.preprocess
    impute = prep.impute
    steps: list[tuple[str, Any]] = []
    if (needs["impute"] or impute.apply == "always") and (
            impute.numeric != "none" or impute.categorical != "none" or impute.columns):
        steps.append(("impute", Imputer(
            numeric=impute.numeric, categorical=impute.categorical,
            fill_value=impute.fill_value,
            columns={c: v.model_dump() for c, v in impute.columns.items()},
            indicators=impute.indicators)))
    default = prep.default_encoding
    if default == "auto":
        default = "onehot" if needs["numeric_only"] else "native"
    if default == "native":
        steps.append(("categorical", NativeCategorical()))
    else:
        steps.append(("categorical", CategoricalEncoder(default=default,
                                                        seed=job.data.split.seed)))
    if needs["scale"] and prep.scale != "none":
        steps.append(("scale", Scaler(prep.scale)))
    return steps


def _feature_columns(feature: Any) -> list[str]:
    out = list(feature.columns)
    for name in ("key", "time"):
        if getattr(feature, name, None):
            out.append(getattr(feature, name))
    return out


def kernels_used(pipeline: Pipeline) -> list[str]:
    """Names of the numba kernels a fitted preprocessor calls."""
    return sorted({k for _, step in pipeline.steps for k in getattr(step, "kernels_used_", [])})


def target(frame: Any, job: JobSpec, classes: Sequence[Any] | None) -> Any:
    """The model's target of a pandas or dask frame: class codes, or float64 values."""
    from pipeline.frames import is_dask

    labels = frame[job.data.target]
    if job.data.task == "regression":
        return labels.astype("float64")
    if is_dask(labels):
        return labels.map_partitions(_codes, list(classes), meta=(labels.name, "int64"))
    return _codes(labels, list(classes))


def _codes(labels: pd.Series, classes: list[Any]) -> pd.Series:
    import pandas as pd

    from pipeline.predictor import encode_labels

    return pd.Series(encode_labels(labels, classes), index=labels.index, name=labels.name)


@dataclass
class Prefix:
    """The shared prefix fitted on all training rows, and its outputs (persisted)."""

    pipeline: Pipeline
    X_train: Any
    y_train: Any
    X_valid: Any
    y_valid: Any
    rows: dict[str, int]  # train, valid, holdout


def fit_prefix(job: JobSpec, parts: Parts, feature_columns: Sequence[str],
               classes: Sequence[Any] | None, client: Client) -> Prefix:
    """Fit the shared prefix on the training rows; transform and persist train and valid.

    The schema's output is persisted (the rows every step learns from), then the steps are
    fitted together (:func:`pipeline.frames.run_fits`): each step gathers its statistics in
    the same passes as the steps before it wherever it reads columns they leave unchanged
    (:class:`~pipeline.frames.EarlyRows`: the cleaner's column statistics, the clipper's
    quantiles, the features' tables and the encoders' vocabularies usually share the first
    pass), and waits for its own input (the earlier steps' transforms, lazily) where it does
    not (the target encodings' out-of-fold statistics hash every column). The training rows
    come out of each step's training transform (target encodings out-of-fold). Memory: the
    training rows, their schema copy (let go once a later step's input is persisted, unless a
    step still to be fitted holds it as early rows), that input, and the result.
    """
    import dask
    from distributed import wait
    from sklearn.pipeline import Pipeline

    from pipeline.frames import EarlyRows, meta_of, run_fits

    prefix = Pipeline(prefix_steps(job, feature_columns, len(classes) if classes else None))
    y_train, y_valid = target(parts.train, job, classes), target(parts.valid, job, classes)
    (_, schema), *rest = prefix.steps
    base = client.persist(schema.fit_transform(parts.train))
    wait(base)
    fits, rewritten = [], set()
    for _, step in rest:
        fits.append(step.fit_passes(y_train, EarlyRows(base, frozenset(rewritten))))
        rewritten |= step.rewrites(meta_of(base))
    # step i's input: the training transforms of the steps before it, from the latest input
    # kept; only the steps still holding their early rows keep the schema copy besides
    inputs = {0: base}
    del base

    def training(i: int, done: list[Any], rows: bool) -> Any:
        start = max(k for k in inputs if k <= i)
        X = inputs[start]
        for transform in done[start:i]:
            X = transform(X)
        if rows and i not in inputs:  # read, then transformed: computed once, kept
            X = client.persist(X)
            wait(X)
            for k in list(inputs):  # later inputs start from this one
                del inputs[k]
            inputs[i] = X
        return X

    X_train = training(len(fits), run_fits(fits, training), rows=False)
    X_valid = prefix.transform(parts.valid)
    X_train, y_train, X_valid, y_valid = client.persist([X_train, y_train, X_valid, y_valid])
    wait([X_train, y_train, X_valid, y_valid])
    n_train, n_valid, n_holdout = dask.compute(X_train.shape[0], X_valid.shape[0],
                                               parts.holdout.shape[0])
    return Prefix(prefix, X_train, y_train, X_valid, y_valid,
                  rows={"train": int(n_train), "valid": int(n_valid), "holdout": int(n_holdout)})
