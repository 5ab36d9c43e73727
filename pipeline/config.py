"""The job file: YAML into frozen pydantic models, with errors that point into the file.

A job file describes one whole workflow (see ``examples/demo.yaml``). :func:`load_job` reads it,
applies ``--set key=value`` overrides, resolves relative paths and validates it into a
:class:`JobSpec`. Every model here forbids unknown keys (with a "did you mean"), refuses NaN and
infinity, and is frozen, so a running job cannot change under the stages.

This module is imported by ``mlpipe --help`` and ``mlpipe config``: it must stay light (pydantic
and yaml only; no dask, no xgboost).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.errors import did_you_mean

Task = Literal["binary", "multiclass", "regression"]

#: dtypes a schema contract may declare (pandas names). ``str``/``string`` are text columns,
#: ``category`` a categorical one.
DTYPES = (
    "bool", "boolean", "int8", "int16", "int32", "int64", "Int8", "Int16", "Int32", "Int64",
    "uint8", "uint16", "uint32", "uint64", "float32", "float64", "Float32", "Float64",
    "category", "str", "string", "object", "datetime64[ns]", "datetime64[us]", "datetime64[ms]",
)

#: keys of storage_options that carry secrets; they belong in the environment or fsspec config.
SECRET_KEYS = {
    "key", "secret", "token", "password", "session_token", "aws_access_key_id",
    "aws_secret_access_key", "aws_session_token", "account_key", "sas_token",
    "client_secret", "credentials",
}


class JobError(ValueError):
    """A job file that cannot be run. The message names the file, the key and what to do."""


class _Spec(BaseModel):
    # strict: no silent "3" -> 3 coercion; --set values are parsed as YAML before validation.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True,
                              populate_by_name=True)


# --------------------------------------------------------------------------- data


class SplitSpec(_Spec):
    """How the holdout set is carved out of the training data."""

    holdout: float = Field(0.2, gt=0.0, lt=1.0)
    #: a time column: the latest ``holdout`` share of rows (by this column) becomes the holdout.
    by: str | None = None
    #: share of the training rows kept aside for early stopping.
    validation: float = Field(0.1, gt=0.0, lt=1.0)
    seed: int = 0
    #: stratify the random split on the target (classification only).
    stratify: bool = True


class DataSpec(_Spec):
    """Where the training data is and what it means."""

    train: str = Field(min_length=1)
    target: str = Field(min_length=1)
    task: Task
    format: Literal["auto", "csv", "parquet"] = "auto"
    #: optional contract {column: dtype}; every file's header is checked against it before any
    #: compute, and columns are coerced to these dtypes. Inferred when absent.
    schema_: dict[str, str] | None = Field(None, alias="schema")
    split: SplitSpec = SplitSpec()
    #: columns passed through (e.g. to scoring output) but never used as features.
    id_columns: list[str] = []
    #: columns ignored entirely.
    drop: list[str] = []
    #: the label that counts as positive in a binary task (default: the larger of the two).
    positive: str | int | bool | None = None
    #: CSV partition size (bytes per partition, e.g. 64MiB).
    blocksize: str = "64MiB"
    #: CSV text encoding (a Python codec name: utf-8, latin-1, cp1252, ...).
    encoding: str = Field("utf-8", min_length=1)
    #: a CSV row with more fields than the header: error (name file and line) or skip
    #: (drop it; the count is logged and kept in metrics.json's data summary).
    bad_lines: Literal["error", "skip"] = "error"

    @field_validator("schema_")
    @classmethod
    def _known_dtypes(cls, schema: dict[str, str] | None) -> dict[str, str] | None:
        for column, dtype in (schema or {}).items():
            if dtype not in DTYPES:
                hint = did_you_mean(dtype, DTYPES)
                raise ValueError(f"column {column!r} has unknown dtype {dtype!r}{hint}; "
                                 f"use one of: {', '.join(DTYPES)}")
        return schema

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, encoding: str) -> str:
        import codecs

        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ValueError(f"unknown text encoding {encoding!r}; use a Python codec name "
                             "such as utf-8, latin-1 or cp1252") from None
        return encoding

    @model_validator(mode="after")
    def _consistent(self) -> DataSpec:
        used = {self.target, *(self.id_columns), *(self.drop)}
        if self.target in self.id_columns or self.target in self.drop:
            raise ValueError(f"the target {self.target!r} cannot also be an id or dropped column")
        if self.split.by and self.split.by == self.target:
            raise ValueError("split.by names the target; it must be a time column")
        if self.schema_ is not None:
            missing = sorted(c for c in used if c not in self.schema_)
            if missing:
                raise ValueError(f"the schema contract does not declare {missing}; "
                                 "add them to data.schema")
        return self


# --------------------------------------------------------------------------- preprocess

Encoding = Literal["native", "onehot", "ordinal", "frequency", "count", "target", "hash"]


class EncodingSpec(_Spec):
    """How one categorical column becomes numbers."""

    method: Encoding
    #: onehot: at most this many levels get their own column; rarer ones are pooled.
    max_levels: int = Field(20, ge=1)
    #: onehot/ordinal: levels seen fewer times than this are pooled as rare.
    min_frequency: int = Field(1, ge=1)
    #: hash: number of buckets.
    n_buckets: int = Field(32, ge=2)
    #: target: smoothing weight m in (sum + m * prior) / (count + m).
    smoothing: float = Field(10.0, ge=0.0)
    #: target: out-of-fold folds on the training data.
    folds: int = Field(5, ge=2)


class ImputeColumn(_Spec):
    strategy: Literal["mean", "median", "most_frequent", "constant"]
    value: float | int | str | bool | None = None


class ImputeSpec(_Spec):
    """Missing values, by dtype with per-column exceptions."""

    numeric: Literal["mean", "median", "most_frequent", "constant", "none"] = "median"
    categorical: Literal["most_frequent", "constant", "none"] = "constant"
    #: value used by the "constant" strategies.
    fill_value: float | int | str = 0
    columns: dict[str, ImputeColumn] = {}
    #: add a ``<col>__missing`` 0/1 column for every imputed column that had missing values.
    indicators: bool = False
    #: "needed": only for model families that cannot take missing values; "always": for all.
    apply: Literal["needed", "always"] = "needed"


class ClipSpec(_Spec):
    """Clip numeric outliers at quantiles learned on the training data."""

    lower: float = Field(0.001, ge=0.0, lt=0.5)
    upper: float = Field(0.999, gt=0.5, le=1.0)
    columns: list[str] | None = None


class PreprocessSpec(_Spec):
    """Cleaning, imputation, scaling and encoding (applied identically when scoring)."""

    dedupe: bool = False
    drop_constant: bool = True
    drop_all_missing: bool = True
    clip: ClipSpec | None = None
    impute: ImputeSpec = ImputeSpec()
    scale: Literal["standard", "minmax", "robust", "none"] = "standard"
    #: {column: method | {method: ..., options}}; categorical columns not listed use
    #: ``default_encoding`` (``native`` = XGBoost's own categoricals, one-hot for other families).
    encode: dict[str, EncodingSpec] = {}
    default_encoding: Literal["auto", "onehot", "ordinal", "frequency", "hash"] = "auto"

    @field_validator("encode", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: ({"method": v} if isinstance(v, str) else v) for k, v in value.items()}
        return value

    @field_validator("impute", mode="before")
    @classmethod
    def _impute_shorthand(cls, value: Any) -> Any:
        return {"numeric": value} if isinstance(value, str) else value


# --------------------------------------------------------------------------- features


class _Feature(_Spec):
    columns: list[str] = Field(min_length=1)


class Log1pFeature(_Feature):
    """sign(x) * log1p(|x|), replacing the column."""

    kernel: Literal["log1p"]


class PowerFeature(_Feature):
    """Yeo-Johnson (any sign) or Box-Cox (x > 0) with lambda fitted on the training data."""

    kernel: Literal["yeo_johnson", "box_cox"]


class CountFeature(_Feature):
    """Count (or frequency) of each row's level in the training data, as a new column."""

    kernel: Literal["count"]
    normalize: bool = False


class PairwiseFeature(_Feature):
    """ratio / product / difference / sum of every listed pair (or of consecutive columns)."""

    kernel: Literal["ratio", "product", "difference", "sum"]
    #: explicit pairs; default: every ordered pair of ``columns`` for ratio, unordered otherwise.
    pairs: list[tuple[str, str]] | None = None

    @field_validator("pairs", mode="before")
    @classmethod
    def _pairs_as_tuples(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [tuple(v) if isinstance(v, list) else v for v in value]
        return value


class BinFeature(_Feature):
    """Quantile bin index (edges learned on the training data)."""

    kernel: Literal["bin"]
    n_bins: int = Field(10, ge=2, le=1000)


class HashFeature(_Feature):
    """Stable hash of a text/categorical column into ``n_buckets`` (a new integer column)."""

    kernel: Literal["hash"]
    n_buckets: int = Field(1024, ge=2)


class WindowFeature(_Feature):
    """Per-group rolling statistics / lags of earlier rows (ordered by ``time``)."""

    kernel: Literal["rolling", "lag"]
    key: str
    time: str
    window: int = Field(3, ge=1)
    lag: int = Field(1, ge=1)
    stats: list[Literal["mean", "std", "count"]] = ["mean"]


FeatureSpec = Annotated[
    Log1pFeature | PowerFeature | CountFeature | PairwiseFeature | BinFeature | HashFeature | WindowFeature,
    Field(discriminator="kernel"),
]


# --------------------------------------------------------------------------- models and search


class SearchSpec(_Spec):
    """How hyperparameters are searched and a winner chosen."""

    strategy: Literal["sample", "full"] = "sample"
    #: auto (the default when the job has no ``models:`` block; ``search: auto`` for short):
    #: each family's practitioner search space (``pipeline.models.auto_space``) under those the
    #: job fixes, searched by successive halving in brackets until ``time_budget`` is spent.
    method: Literal["auto", "grid", "random", "halving"] = "grid"
    #: seconds the auto search may spend (null: 5 s, rising to 20 s at 20,000 training rows,
    #: plus 3 minutes per million training rows, at most an hour; printed when it starts). Checked between brackets: a bracket
    #: starts only when the time left is at least what the last one took.
    time_budget: float | None = Field(None, gt=0)
    #: the auto search tries exactly this many candidates per family instead (brackets of 9),
    #: whatever the time: the same job gives the same model on a faster or a busier machine,
    #: which a time budget cannot promise (H2O AutoML's max_models).
    max_candidates: int | None = Field(None, ge=1)
    #: also fit a weighted average of the families' best models (Caruana's greedy selection
    #: on their out-of-fold predictions); it competes with the families for the win.
    ensemble: bool = False
    sample_rows: int = Field(200_000, ge=100)
    cv: int = Field(3, ge=2, le=20)
    #: primary metric (default: roc_auc for binary, log_loss for multiclass, rmse for regression)
    scoring: str | None = None
    n_iter: int = Field(10, ge=1)
    #: successive halving: keep the best 1/factor at each rung.
    factor: int = Field(3, ge=2)
    #: successive halving: what a rung gives more of. auto: the family's own (boosting
    #: rounds for xgboost, partial_fit epochs for the incremental families, training rows
    #: for the rest); rows works for every family.
    budget: Literal["auto", "rows", "rounds", "epochs"] = "auto"
    seed: int = 0


class TrainSpec(_Spec):
    """The final distributed fit."""

    #: boosting rounds without improvement of the validation loss (log loss, multi-class log
    #: loss or RMSE: a proper scoring rule, never a saturating metric such as AUC) after
    #: which boosting stops; null: never stop early.
    early_stopping_rounds: int | None = Field(20, ge=1)
    #: an improvement is a drop of the validation loss by more than this (0: any drop).
    min_delta: float = Field(0.0, ge=0.0)
    #: below this many training + validation rows, an XGBoost family's boosting rounds are
    #: chosen by k-fold CV on those rows (folds trained in parallel on the cluster) and the
    #: model is refit on all of them; from this size on, a validation split stops boosting.
    cv_rounds_below: int = Field(50_000, ge=0)
    #: folds of that CV.
    cv_rounds_folds: int = Field(5, ge=2, le=20)
    #: below this many rows in all (training + validation + holdout), an XGBoost family is
    #: evaluated on the holdout, then the same recipe (parameters and round count) is refit on
    #: every row for the bundle: the holdout's rows are worth having in the model, and one
    #: more fit is cheap at this size. 0: the bundle's model is the one evaluated.
    refit_all_below: int = Field(250_000, ge=0)
    #: retries of the whole training step after a lost worker.
    retries: int = Field(2, ge=0, le=10)
    #: write a boosting checkpoint every N rounds (0: never).
    checkpoint_every: int = Field(50, ge=0)


class EvaluateSpec(_Spec):
    """Holdout evaluation choices."""

    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    min_precision: float | None = Field(None, gt=0.0, le=1.0)
    min_recall: float | None = Field(None, gt=0.0, le=1.0)
    slices: list[str] = []
    top_levels: int = Field(10, ge=1)
    overfit_bound: float = Field(0.05, ge=0.0)

    @model_validator(mode="after")
    def _one_constraint(self) -> EvaluateSpec:
        if self.min_precision is not None and self.min_recall is not None:
            raise ValueError("give min_precision or min_recall, not both")
        return self


class MonitorSpec(_Spec):
    """Drift and quality checks of new data against the bundle's reference profile
    (``profile.json``): every ``mlpipe score``, ``mlpipe monitor`` and the retrain gate.

    A check is flagged when its effect size reaches its threshold AND its p-value is below
    ``alpha``: a large shift seen on a handful of rows is noise, and a tiny shift that is
    significant only because there are 100M rows is not worth an alarm.
    """

    #: equal-frequency bins per numeric column (edges: training quantiles).
    bins: int = Field(20, ge=2, le=1000)
    #: population stability index at or above which a column has drifted.
    psi_threshold: float = Field(0.2, gt=0.0)
    #: Kolmogorov-Smirnov distance (on the binned CDFs) at or above which a number drifted.
    ks_threshold: float = Field(0.1, gt=0.0, le=1.0)
    #: Cramer's V of the chi-square test at or above which a category column drifted.
    cramers_v_threshold: float = Field(0.1, gt=0.0, le=1.0)
    #: change of the missing share, or unseen share above the expected one, that is drift.
    share_threshold: float = Field(0.05, gt=0.0, lt=1.0)
    #: significance level of one check run (drift and decay), shared among its tests
    #: (Bonferroni over the columns, checks, metrics and time chunks).
    alpha: float = Field(0.01, gt=0.0, lt=0.5)
    #: levels of a category column kept apart in its histogram (the rest pooled).
    top_levels: int = Field(20, ge=1, le=1000)
    #: training rows the numeric bin edges are computed from (counts use every row).
    sample_rows: int = Field(100_000, ge=1000)
    #: quality decay: the worsening of a metric (absolute for metrics in [0, 1], relative
    #: to the baseline for log loss, RMSE, MAE, ...) that is decay, once it is beyond the
    #: confidence interval.
    max_decay: float = Field(0.02, ge=0.0)
    #: metrics whose decay is judged (default: the job's primary metric).
    metrics: list[str] | None = None


class RefineSpec(_Spec):
    """The champion/challenger gate of every run of a model that already has a current
    version (``mlpipe run`` and ``mlpipe retrain``)."""

    #: if_better: promote only a challenger that passes the gate; always: promote anyway
    #: (the comparison is still recorded); never: register it, never promote it.
    promote: Literal["if_better", "always", "never"] = "if_better"
    #: the least improvement of the primary metric over the champion, on the same holdout
    #: rows (absolute, in the metric's unit; 0: at least as good).
    min_improvement: float = Field(0.0, ge=0.0)
    #: {metric: tolerance}: metrics that may not get worse than the champion's by more
    #: than the tolerance (absolute).
    guards: dict[str, float] = {}
    #: refuse a challenger whose own holdout drifted from its training rows.
    drift_check: bool = True


# --------------------------------------------------------------------------- cluster


class ClassSpec(_Spec):
    """A cluster class by dotted path, e.g. dask_jobqueue.SLURMCluster."""

    module: str = Field(pattern=r"^[A-Za-z_][\w.]*$")
    class_: str = Field(alias="class", pattern=r"^[A-Za-z_]\w*$")
    kwargs: dict[str, Any] = {}
    scale: int | None = Field(None, ge=1)
    adapt: dict[str, int] | None = None

    @model_validator(mode="after")
    def _scale_or_adapt(self) -> ClassSpec:
        if self.scale is not None and self.adapt is not None:
            raise ValueError("give scale or adapt, not both")
        if self.adapt is not None:
            unknown = set(self.adapt) - {"minimum", "maximum"}
            if unknown:
                raise ValueError(f"adapt takes minimum and maximum, not {sorted(unknown)}")
        return self


class SecuritySpec(_Spec):
    """TLS for a remote scheduler (files only; never inline keys)."""

    ca_file: str
    cert_file: str
    key_file: str
    require_encryption: bool = True


class ClusterSpec(_Spec):
    """Which Dask cluster runs the job (first match wins, see ARCHITECTURE.md)."""

    address: str | None = None
    scheduler_file: str | None = None
    spec: ClassSpec | None = None
    n_workers: int | None = Field(None, ge=1)
    threads_per_worker: int | None = Field(None, ge=1)
    memory_limit: str | None = None
    processes: bool = True
    security: SecuritySpec | None = None
    #: how long to wait for the scheduler and the first workers.
    timeout: str = "60s"

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(tcp|tls|ws|wss|inproc|ucx)://", value):
            raise ValueError(f"{value!r} is not a scheduler address; expected tcp://host:port "
                             "or tls://host:port")
        return value


# --------------------------------------------------------------------------- tracking

#: how to install what ``tracking.mlflow`` needs (MLflow's client, ``mlflow-skinny``).
MLFLOW_EXTRA = "pip install -e '.[mlflow]'"
#: tracking URI schemes that are a database (MLflow's SQLAlchemy store).
MLFLOW_DATABASES = ("sqlite", "postgresql", "mysql", "mssql")


class MlflowSpec(_Spec):
    """Where every run is logged in MLflow (:mod:`pipeline.tracking`)."""

    #: tracking URI: a server (http://host:5000), a local database (sqlite:///path/mlflow.db;
    #: artifacts then go to ./mlruns unless the experiment says otherwise) or ``databricks``;
    #: default: the MLFLOW_TRACKING_URI environment variable.
    uri: str | None = Field(None, min_length=1)
    #: experiment name (created when missing); default: the job's name.
    experiment: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _usable(self) -> MlflowSpec:
        import importlib.util

        if importlib.util.find_spec("mlflow") is None:
            raise ValueError(f"tracking.mlflow needs MLflow's client, which is not installed: "
                             f"{MLFLOW_EXTRA} (or pip install mlflow), or remove the tracking "
                             "block")
        uri = self.uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            raise ValueError("tracking.mlflow.uri is not given and MLFLOW_TRACKING_URI is not "
                             "set: give the tracking server (http://host:5000) or a local store "
                             "(sqlite:///path/to/mlflow.db)")
        scheme = uri.split(":", 1)[0].split("+", 1)[0]
        if scheme in MLFLOW_DATABASES and not all(
                importlib.util.find_spec(m) for m in ("sqlalchemy", "alembic")):
            raise ValueError(f"tracking URI {uri!r} is a database store, which needs "
                             f"sqlalchemy and alembic: {MLFLOW_EXTRA} installs them, or use a "
                             "tracking server (http://...)")
        return self


class TrackingSpec(_Spec):
    """Experiment tracking of every run (MLFLOW_TRACKING_URI alone also turns it on)."""

    mlflow: MlflowSpec | None = None


# --------------------------------------------------------------------------- the job


class JobSpec(_Spec):
    """One whole workflow."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    data: DataSpec
    preprocess: PreprocessSpec = PreprocessSpec()
    features: list[FeatureSpec] = []
    #: {family: {parameter: value or [values to search]}}; see ``pipeline.models.FAMILIES``.
    models: dict[str, dict[str, Any]] = {"xgboost": {}}
    search: SearchSpec = SearchSpec()
    train: TrainSpec = TrainSpec()
    evaluate: EvaluateSpec = EvaluateSpec()
    output: str = Field(min_length=1)
    #: fsspec storage options for every URL of the job (no secrets: use the environment).
    storage_options: dict[str, Any] = {}
    cluster: ClusterSpec = ClusterSpec()
    monitor: MonitorSpec = MonitorSpec()
    refine: RefineSpec = RefineSpec()
    #: experiment tracking (pipeline/tracking.py): {mlflow: {uri, experiment}}
    tracking: TrackingSpec = TrackingSpec()
    #: passed to dask.config.set as is, e.g. {distributed.scheduler.no-workers-timeout: 60s}
    dask: dict[str, Any] = {}
    #: where the job file was read from (not part of the file).
    source: str | None = Field(None, exclude=True)

    @field_validator("storage_options")
    @classmethod
    def _no_secrets(cls, options: dict[str, Any]) -> dict[str, Any]:
        found = _secret_keys(options)
        if found:
            raise ValueError(
                f"storage_options holds secrets ({', '.join(found)}); secrets never live in the "
                "job file: use the AWS credential chain / environment (AWS_ACCESS_KEY_ID, ...) "
                "or fsspec's config instead")
        return options

    @model_validator(mode="before")
    @classmethod
    def _auto_search(cls, data: Any) -> Any:
        """``search: auto`` for short; and the default search of a job without ``models:``:
        the auto search over the families that suit its task (``pipeline.models.AUTO``)."""
        if not isinstance(data, dict):
            return data
        search = data.get("search")
        if search == "auto":
            data = {**data, "search": {"method": "auto"}}
        elif "models" not in data and (search is None or (
                isinstance(search, dict) and "method" not in search)):
            data = {**data, "search": {**(search or {}), "method": "auto"}}
        task = data.get("data", {}).get("task") if isinstance(data.get("data"), dict) else None
        method = data["search"].get("method") if isinstance(data.get("search"), dict) else None
        if "models" not in data and method == "auto":
            from pipeline.models import AUTO

            data = {**data, "models": {f: {} for f in AUTO.get(task, ("xgboost",))}}
        return data

    @field_validator("models")
    @classmethod
    def _known_families(cls, models: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from pipeline.models import FAMILIES  # a light module: names and metadata only

        if not models:
            raise ValueError("no model family given; add at least one, e.g. {xgboost: {}}")
        for family in models:
            if family not in FAMILIES:
                raise ValueError(f"unknown model family {family!r}"
                                 f"{did_you_mean(family, FAMILIES)}; "
                                 f"known: {', '.join(FAMILIES)}")
        return models

    @field_validator("models", "dask", "storage_options")
    @classmethod
    def _finite(cls, value: dict[str, Any], info: Any) -> dict[str, Any]:
        # the typed keys refuse NaN and infinity themselves (allow_inf_nan=False); these
        # free-form blocks go to XGBoost, scikit-learn and dask as they are
        found = non_finite(value, info.field_name)
        if found:
            key, number = found[0]
            raise ValueError(f"{key} is {number}: {_FINITE}")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> JobSpec:
        from pipeline.models import FAMILIES, check_params

        task = self.data.task
        for family, params in self.models.items():
            if task not in FAMILIES[family]["tasks"]:
                raise ValueError(f"models.{family}: the {family} family cannot do {task}; "
                                 f"it does {', '.join(FAMILIES[family]['tasks'])}. Remove it "
                                 "or change data.task")
            check_params(family, params, task)
        scoring = self.search.scoring
        if scoring is not None:
            from pipeline.models import METRICS

            if scoring not in METRICS[task]:
                raise ValueError(f"search.scoring {scoring!r} is not a {task} metric"
                                 f"{did_you_mean(scoring, METRICS[task])}; "
                                 f"use one of: {', '.join(METRICS[task])}")
        if task != "binary" and (self.evaluate.min_precision or self.evaluate.min_recall):
            raise ValueError("evaluate.min_precision / min_recall apply to binary tasks only")
        if self.search.method == "grid" and self.search.strategy == "sample":
            for family, params in self.models.items():
                ranged = [k for k, v in params.items() if isinstance(v, dict)]
                if ranged:
                    raise ValueError(
                        f"models.{family}.{ranged[0]} is a distribution, which a grid cannot "
                        "enumerate: give a list of values, or use search.method random or "
                        "halving (they sample search.n_iter candidates)")
        budget = self.search.budget
        if budget not in ("auto", "rows"):
            cannot = [f for f in self.models if FAMILIES[f]["budget"] != budget]
            if cannot:
                raise ValueError(
                    f"search.budget {budget}: models.{cannot[0]} has no {budget} to give more "
                    f"of (the families that have: "
                    f"{', '.join(f for f in FAMILIES if FAMILIES[f]['budget'] == budget)}); "
                    "use auto (each family its own) or rows")
        if self.search.ensemble and len(self.models) < 2:
            raise ValueError("search.ensemble averages several families' models: name at least "
                             "two under models: (or leave models: out for search: auto)")
        if self.search.method in ("halving", "auto") and self.search.strategy == "full":
            raise ValueError(f"search.method {self.search.method} runs on the in-memory "
                             "sample; use strategy: sample with it")
        from pipeline.models import METRICS as TASK_METRICS

        for where, names in (("monitor.metrics", self.monitor.metrics or []),
                             ("refine.guards", list(self.refine.guards))):
            for name in names:
                if name not in TASK_METRICS[task]:
                    raise ValueError(f"{where}: {name!r} is not a {task} metric"
                                     f"{did_you_mean(name, TASK_METRICS[task])}; use one of: "
                                     f"{', '.join(TASK_METRICS[task])}")
        for column in self.preprocess.encode:
            if column == self.data.target:
                raise ValueError(f"preprocess.encode names the target {column!r}")
        return self

    # -- helpers used by the stages ------------------------------------------------------

    @property
    def primary_metric(self) -> str:
        from pipeline.models import DEFAULT_METRIC

        return self.search.scoring or DEFAULT_METRIC[self.data.task]

    @property
    def window_columns(self) -> list[str]:
        """Key and time columns of window features: inputs even when ids or dropped."""
        return [c for f in self.features if f.kernel in ("rolling", "lag")
                for c in (f.key, f.time)]

    def fingerprint(self) -> str:
        """Short stable hash of the resolved job (part of the run id)."""
        text = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True), sort_keys=False)


# --------------------------------------------------------------------------- loading


def load_job(path: str | os.PathLike[str] | Mapping[str, Any],
             overrides: Sequence[str] = ()) -> JobSpec:
    """Read, override and validate a job file.

    Parameters
    ----------
    path
        A YAML file, or an already-parsed mapping (paths then resolve against the cwd).
    overrides
        ``"a.b=c"`` strings; values are parsed as YAML (``--set models.xgboost.max_depth=[4,6]``).
        Keys under ``dask`` keep their dots (``--set dask.distributed.comm.retry.count=3``).

    Relative local paths in the file (``data.train``, ``output``) are resolved against the job
    file's directory; relative paths given with ``--set`` against the current directory.

    Examples
    --------
    >>> job = load_job("examples/demo.yaml", ["output=/tmp/mlpipe"])  # doctest: +SKIP
    >>> job.data.task                                                  # doctest: +SKIP
    'binary'
    """
    lines: dict[tuple, int] = {}
    if isinstance(path, Mapping):
        raw: Any = _deepcopy(dict(path))
        source, base = "<mapping>", Path.cwd()
    else:
        file = Path(path)
        source, base = str(file), file.resolve().parent
        try:
            text = file.read_text()
        except FileNotFoundError:
            raise JobError(f"job file {source} does not exist") from None
        except OSError as exc:
            raise JobError(f"job file {source} cannot be read: {exc}") from None
        try:
            raw = yaml.safe_load(text)
            lines = _line_numbers(yaml.compose(text))
        except yaml.YAMLError as exc:
            raise JobError(f"job file {source} is not valid YAML: {exc}") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise JobError(f"job file {source} must be a mapping of keys (name, data, ...), "
                           f"found a {type(raw).__name__}")
        raw.setdefault("name", re.sub(r"[^A-Za-z0-9_.-]", "-", file.stem) or "job")
    _resolve_paths(raw, base)
    for item in overrides:
        _apply_override(raw, item, source)
    _resolve_paths(raw, Path.cwd())
    raw["source"] = None if source == "<mapping>" else source
    _refuse_non_finite(raw, source, lines)
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise JobError(_explain(exc, source, lines)) from None


_FINITE = "NaN and infinity are not allowed; give a finite number"


def non_finite(value: Any, prefix: str = "") -> list[tuple[str, float]]:
    """Every (dotted key, number) under ``value`` that is NaN or infinite (YAML ``.nan``,
    ``.inf``, ``1e999``).

    Examples
    --------
    >>> non_finite({"xgboost": {"learning_rate": float("nan"), "max_depth": 4}}, "models")
    [('models.xgboost.learning_rate', nan)]
    """
    if isinstance(value, float):
        return [] if value == value and abs(value) != float("inf") else [(prefix, value)]
    if isinstance(value, Mapping):
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return []
    out = []
    for key, child in items:
        out.extend(non_finite(child, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _refuse_non_finite(raw: Any, source: str, lines: dict[tuple, int]) -> None:
    """NaN or infinity anywhere in the document: one line per key, with its file line."""
    found = non_finite(raw)
    if not found:
        return
    out = []
    for key, number in found:
        path = tuple(int(p) if p.isdigit() else p for p in key.split("."))
        line = next((lines[path[:n]] for n in range(len(path), 0, -1) if path[:n] in lines),
                    None)
        where = f"{source}, line {line}" if line else source
        out.append(f"  - {where}: {key}: found {number}; {_FINITE}")
    head = (f"job file {source} is not valid ({len(out)} problem"
            f"{'s' if len(out) > 1 else ''}):")
    raise JobError("\n".join([head, *out]))


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=c"`` -> (["a", "b"], parsed c)."""
    if "=" not in item:
        raise JobError(f"--set {item!r}: expected key=value, e.g. --set output=s3://bucket/out")
    key, _, value = item.partition("=")
    parts = key.strip().split(".")
    if parts[0] == "dask" and len(parts) > 1:
        parts = ["dask", ".".join(parts[1:])]
    if not all(parts):
        raise JobError(f"--set {item!r}: empty key part in {key!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return parts, parsed


def _apply_override(raw: dict, item: str, source: str) -> None:
    parts, value = parse_override(item)
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise JobError(f"--set {item!r}: {where} in {source} is a "
                           f"{type(child).__name__}, not a mapping")
        node = child
    node[parts[-1]] = value


_PATH_KEYS = (("data", "train"), ("output",), ("cluster", "scheduler_file"),
              ("cluster", "security", "ca_file"), ("cluster", "security", "cert_file"),
              ("cluster", "security", "key_file"))


def _resolve_paths(raw: dict, base: Path) -> None:
    """Make relative local paths absolute (URLs with a protocol are left alone)."""
    for keys in _PATH_KEYS:
        node: Any = raw
        for key in keys[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        value = node.get(keys[-1])
        if isinstance(value, str) and value and "://" not in value and not value.startswith("/"):
            node[keys[-1]] = str((base / os.path.expanduser(value)).resolve())


def _line_numbers(node: yaml.Node | None, prefix: tuple = ()) -> dict[tuple, int]:
    """Map each key path of a composed YAML document to its 1-based line."""
    out: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = prefix + (key.value,)
            out[path] = key.start_mark.line + 1
            out.update(_line_numbers(value, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            out[prefix + (i,)] = value.start_mark.line + 1
            out.update(_line_numbers(value, prefix + (i,)))
    return out


def _explain(exc: ValidationError, source: str, lines: dict[tuple, int]) -> str:
    """One line per problem: where (file, line, key path), what, and what to do."""
    out = []
    for err in exc.errors():
        tagged = tuple(err["loc"])
        loc = tuple("schema" if p == "schema_" else p for p in tagged if p not in _UNION_TAGS)
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
        where = f"{source}, line {line}" if line else source
        kind = err["type"]
        if kind == "extra_forbidden":
            allowed = _allowed_keys(tagged[:-1])
            hint = did_you_mean(str(loc[-1]), allowed)
            msg = f"unknown key{hint}"
            if allowed and not hint:
                msg += f"; allowed here: {', '.join(allowed)}"
        elif kind == "missing":
            msg = "required key is missing"
        elif kind == "union_tag_invalid":
            msg = (f"unknown kernel {err['input'].get('kernel')!r}"
                   f"{did_you_mean(str(err['input'].get('kernel')), _kernel_names())}; "
                   f"known: {', '.join(_kernel_names())}")
        elif kind == "union_tag_not_found":
            msg = f"each feature needs a 'kernel' key (one of: {', '.join(_kernel_names())})"
        elif kind in ("finite_number",):
            msg = "NaN and infinity are not allowed; give a finite number"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if "input" in err and kind not in ("value_error", "assertion_error") \
                    and not isinstance(err["input"], dict | list):
                msg += f" (found {err['input']!r})"
        out.append(f"{where}: {dotted}: {msg}")
    head = f"job file {source} is not valid ({len(out)} problem{'s' if len(out) > 1 else ''}):"
    return "\n".join([head, *("  - " + line for line in out)])


_UNION_TAGS = {"log1p", "yeo_johnson", "box_cox", "count", "ratio", "product", "difference",
               "sum", "bin", "hash", "rolling", "lag"}


def _kernel_names() -> list[str]:
    return sorted(_UNION_TAGS)


def _allowed_keys(loc: tuple) -> list[str]:
    """Key names allowed at ``loc`` (with union tags still in it), for "did you mean"."""
    tp: Any = JobSpec
    for part in loc:
        tp = _step(tp, part)
        if tp is None:
            return []
    tp = _unwrap(tp)
    if not _is_model(tp):
        return []
    return sorted(f.alias or name for name, f in tp.model_fields.items() if not f.exclude)


def _unwrap(tp: Any) -> Any:
    """Strip Annotated[...] and Optional[...] down to the one type inside."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _step(tp: Any, part: Any) -> Any:
    """The type one key (or list index, or union tag) below ``tp``."""
    tp = _unwrap(tp)
    if _is_model(tp):
        for name, field in tp.model_fields.items():
            if part in (name, field.alias):
                return field.annotation
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (dict, Mapping) and len(args) == 2:
        return args[1]
    if origin in (list, tuple) and args:
        return args[0]
    if origin in (Union, types.UnionType):  # a discriminated union: ``part`` is the tag
        for member in args:
            kernel = getattr(member, "model_fields", {}).get("kernel")
            if kernel is not None and part in typing.get_args(kernel.annotation):
                return member
    return None


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _secret_keys(options: Mapping[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key, value in options.items():
        if str(key).lower() in SECRET_KEYS:
            found.append(prefix + str(key))
        if isinstance(value, Mapping):
            found.extend(_secret_keys(value, prefix + f"{key}."))
    return found


def _deepcopy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deepcopy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deepcopy(v) for v in value]
    return value


__all__ = ["JobSpec", "JobError", "load_job", "parse_override", "DataSpec", "ClusterSpec",
           "PreprocessSpec", "SearchSpec", "TrainSpec", "EvaluateSpec", "FeatureSpec"]
