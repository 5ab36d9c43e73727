"""Experiment tracking: every run logged to MLflow, once its bundle is published.

MLflow has no autologging for xgboost.dask or dask-ml (mlflow/mlflow#3514, #4569), and our
families are fitted by several libraries on several paths, so this module is the integration:
it logs what the run's bundle already says, after the fact, through ``MlflowClient`` (no
fluent API: no global active run, no change to the caller's MLflow state).

One MLflow run per mlpipe run, named after the run id, in the experiment ``tracking.mlflow.
experiment`` (default: the job's name):

- params: the resolved job, flattened (``models.xgboost.max_depth = [4, 6]``), and the chosen
  family's fitted parameters (``chosen.max_depth = 6``);
- metrics: the chosen model's holdout and training metrics (``holdout_roc_auc``,
  ``train_roc_auc``), its CV mean and std, fit and scoring cost, stage times (``time_load``);
- one nested run per family of the leaderboard, with the same metric names, its parameters
  and whether it was chosen;
- tags: the bundle's URL, the model's URL, the run id, the gate's decision, the fingerprints;
- artifacts: ``report.html``, ``metrics.json``, ``job.yaml``, ``schema.json`` (read from the
  bundle and checked against its manifest) and ``leaderboard.json``;
- a dataset input: the training data's URL and fingerprint (the digest), with its files,
  bytes, rows and column types.

Tracking is turned on by ``tracking.mlflow`` in the job or by ``MLFLOW_TRACKING_URI`` in the
environment; otherwise nothing here runs and MLflow is never imported. With the variable set
but MLflow not installed, a run logs one warning and is not tracked (a job that asks for
tracking is refused at validation instead, :class:`pipeline.config.MlflowSpec`).

A tracking failure (server down, store not writable) never fails the run: the bundle is
published before and stays the record of the run. It is logged as a warning naming the
tracking URI and the bundle, the MLflow run (if one was started) is marked FAILED, and
:func:`log_run` returns None.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import MLFLOW_EXTRA

if TYPE_CHECKING:
    from pipeline.artifacts import Bundle
    from pipeline.bundle import Published
    from pipeline.config import JobSpec

logger = logging.getLogger("pipeline")

#: the environment variable that turns tracking on without a ``tracking`` block.
ENV = "MLFLOW_TRACKING_URI"
#: bundle files logged as artifacts of the parent run (each read verified).
ARTIFACTS = ("report.html", "metrics.json", "job.yaml", "schema.json")
#: MLflow's limit on a parameter's value (longer values are cut, with a note).
MAX_PARAM = 6000
#: pandas dtype (prefix) -> MLflow column type, for the dataset input's schema.
COLUMN_TYPES = {"bool": "boolean", "int": "long", "uint": "long", "Int": "long",
                "float": "double", "Float": "double", "datetime": "datetime"}


@dataclass(frozen=True)
class Target:
    """Where a run is tracked."""

    uri: str
    experiment: str


def target(job: JobSpec) -> Target | None:
    """Where ``job``'s runs are tracked, or None when tracking is off.

    The job's ``tracking.mlflow.uri``, else ``MLFLOW_TRACKING_URI``; the experiment is
    ``tracking.mlflow.experiment`` or the job's name.

    Examples
    --------
    >>> from pipeline.config import load_job
    >>> job = load_job({"name": "demo", "output": "out", "data": {"train": "d.csv",
    ...                 "target": "y", "task": "binary"},
    ...                 "tracking": {"mlflow": {"uri": "file:///tmp/mlruns"}}})
    >>> target(job)
    Target(uri='file:///tmp/mlruns', experiment='demo')
    """
    spec = job.tracking.mlflow
    uri = (spec.uri if spec is not None else None) or os.environ.get(ENV) or None
    if uri is None:
        if spec is not None:  # validated where the job was loaded; this process has no URI
            logger.warning("tracking: %s is not set here and tracking.mlflow.uri is not "
                           "given: this run is not tracked", ENV)
        return None
    if spec is None and not _installed():
        logger.warning("tracking: %s is set but MLflow is not installed (%s): this run is "
                       "not tracked", ENV, MLFLOW_EXTRA)
        return None
    return Target(uri=uri, experiment=(spec.experiment if spec is not None else None)
                  or job.name)


def log_run(job: JobSpec, published: Published,
            decision: Mapping[str, Any] | None = None) -> str | None:
    """Log a published run to MLflow when tracking is on; returns the MLflow run id.

    Parameters
    ----------
    job
        The run's job.
    published
        Its bundle (:class:`pipeline.bundle.Published`): URLs, ``metrics.json``, manifest.
    decision
        The gate's record (:func:`pipeline.monitor.settle`): its ``outcome`` becomes a tag.

    Returns None when tracking is off or failed (a warning says why; the run does not fail).

    Examples
    --------
    >>> run_id = log_run(job, published, decision)          # doctest: +SKIP
    >>> MlflowClient(uri).get_run(run_id).data.tags["mlpipe.run_url"]  # doctest: +SKIP
    'out/runs/20261201T120000Z-3f2a9c1e'
    """
    where = target(job)
    if where is None:
        return None
    try:
        run_id = _log(where, job, published, dict(decision or {}))
    except Exception as exc:  # the bundle is published and stays the record: warn, go on
        hint = f" ({MLFLOW_EXTRA})" if isinstance(exc, ImportError) else ""
        logger.warning("tracking: run %s was not logged to MLflow at %s: %s: %s%s. Its bundle "
                       "is published at %s", published.run_id, where.uri,
                       type(exc).__name__, exc, hint, published.run_url)
        return None
    logger.info("tracking: logged to MLflow at %s, experiment %r, run %s", where.uri,
                where.experiment, run_id)
    return run_id


def _installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("mlflow") is not None


def _log(where: Target, job: JobSpec, published: Published, decision: dict[str, Any]) -> str:
    from mlflow import MlflowClient

    from pipeline.artifacts import open_bundle

    bundle = open_bundle(published.run_url, job.storage_options)  # verified reads
    client = MlflowClient(tracking_uri=where.uri)
    experiment_id = _experiment(client, where.experiment)
    metrics = published.metrics
    board = metrics.get("leaderboard", [])
    chosen = next((row for row in board if row["chosen"]), None)
    run = client.create_run(experiment_id, run_name=published.run_id,
                            tags=_tags(job, published, decision))
    run_id, status = run.info.run_id, "FAILED"
    try:
        params = flatten(job.model_dump(mode="json", by_alias=True))
        params.update(flatten({"chosen": {"family": metrics["model"]["family"],
                                          **metrics["model"]["params"]}}))
        values = {**(family_metrics(chosen) if chosen else {}),
                  **_prefixed("holdout", metrics["headline"]),
                  **_prefixed("train", metrics.get("train", {})),
                  **_prefixed("time", metrics.get("timings", {})),
                  **_prefixed("rows", metrics.get("rows", {}))}
        _log_batch(client, run_id, params, values)
        client.log_inputs(run_id, [_dataset(published, bundle)])
        _log_files(client, run_id, bundle, board)
        for row in board:
            _log_family(client, experiment_id, run_id, row)
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    return run_id


def _experiment(client: Any, name: str) -> str:
    """The experiment's id; created when missing (another run may create it meanwhile)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name)
        except MlflowException:
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        raise RuntimeError(f"MLflow experiment {name!r} is deleted: restore it (mlflow "
                           "experiments restore) or set tracking.mlflow.experiment")
    return found.experiment_id


def _tags(job: JobSpec, published: Published, decision: Mapping[str, Any]) -> dict[str, str]:
    metrics, data = published.metrics, published.manifest.get("data", {})
    headline = ", ".join(f"{k} {v:.4g}" for k, v in metrics["headline"].items()
                         if isinstance(v, (int, float)))
    tags = {
        "mlpipe.run_id": published.run_id, "mlpipe.run_url": published.run_url,
        "mlpipe.model_url": published.model_url, "mlpipe.job": job.name,
        "mlpipe.task": metrics["task"], "mlpipe.family": metrics["model"]["family"],
        "mlpipe.primary_metric": metrics["primary_metric"],
        "mlpipe.job_fingerprint": job.fingerprint(),
        "mlpipe.data_fingerprint": str(data.get("fingerprint", "")),
        "mlpipe.manifest_sha256": str(published.manifest.get("_sha256", "")),
        "mlflow.note.content": (f"{metrics['model']['family']}: {headline}. Bundle: "
                                f"{published.run_url}"),
    }
    if decision.get("outcome"):
        tags["mlpipe.decision"] = str(decision["outcome"])
    if job.source:
        tags["mlflow.source.name"] = job.source
    return tags


def family_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of one leaderboard row, under the names the parent run uses too.

    Examples
    --------
    >>> family_metrics({"metric": "roc_auc", "cv_mean": 0.8, "cv_std": 0.01, "gap": 0.02,
    ...                 "holdout": {"roc_auc": 0.79}, "train": {"roc_auc": 0.81},
    ...                 "fit_seconds": 1.5})
    ... # doctest: +NORMALIZE_WHITESPACE
    {'cv_roc_auc_mean': 0.8, 'cv_roc_auc_std': 0.01, 'gap_roc_auc': 0.02,
     'fit_seconds': 1.5, 'holdout_roc_auc': 0.79, 'train_roc_auc': 0.81}
    """
    metric = row["metric"]
    values = {f"cv_{metric}_mean": row.get("cv_mean"), f"cv_{metric}_std": row.get("cv_std"),
              f"gap_{metric}": row.get("gap")}
    for name in ("fit_seconds", "search_seconds", "predict_rows_per_s", "peak_memory_bytes"):
        values[name] = row.get(name)
    values.update(_prefixed("holdout", row.get("holdout", {})))
    values.update(_prefixed("train", row.get("train", {})))
    return {k: float(v) for k, v in values.items() if _number(v)}


def _log_family(client: Any, experiment_id: str, parent: str, row: Mapping[str, Any]) -> None:
    """One nested run: a family of the leaderboard."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    tags = {MLFLOW_PARENT_RUN_ID: parent, "mlpipe.family": row["family"],
            "mlpipe.chosen": str(bool(row["chosen"])).lower(),
            "mlpipe.training": str(row.get("training", "")),
            "mlpipe.search": str(row.get("search", ""))}
    if row.get("warnings"):
        tags["mlpipe.warnings"] = "; ".join(row["warnings"])
    child = client.create_run(experiment_id, run_name=row["family"], tags=tags)
    status = "FAILED"
    try:
        params = flatten(row.get("params") or {})
        params["candidates"] = str(row.get("candidates"))
        _log_batch(client, child.info.run_id, params, family_metrics(row))
        status = "FINISHED"
    finally:
        client.set_terminated(child.info.run_id, status)


def _log_batch(client: Any, run_id: str, params: Mapping[str, str],
               values: Mapping[str, float]) -> None:
    """Params and metrics in batches (the client splits them into MLflow's request limits)."""
    import time

    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    client.log_batch(run_id,
                     params=[Param(_key(k), v) for k, v in params.items()],
                     metrics=[Metric(_key(k), v, now, 0) for k, v in values.items()])


def _dataset(published: Published, bundle: Bundle) -> Any:
    """The training data as an MLflow dataset input: its URL, fingerprint (the digest) and
    size; its column types from the run's schema."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    data = published.manifest.get("data", {})
    url = str(data.get("url", ""))
    source_type, source = _source(url)
    profile = {k: data[k] for k in ("files", "bytes", "rows") if k in data}
    dataset = Dataset(name=url.rstrip("/").rsplit("/", 1)[-1] or url,
                      digest=str(data.get("fingerprint", ""))[:36], source_type=source_type,
                      source=source, schema=_schema(bundle), profile=json.dumps(profile))
    return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])


def _source(url: str) -> tuple[str, str]:
    """MLflow's dataset source for a data URL (local path, s3://, gs://, http...); the URL as
    an opaque source where MLflow knows no reader for its scheme."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.exceptions import MlflowException

    try:
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": MLflow
            warnings.simplefilter("ignore", UserWarning)  # registers its local source twice
            source = resolve_dataset_source(url)
    except MlflowException:
        return "external", json.dumps({"uri": url})
    return source._get_source_type(), source.to_json()


def _schema(bundle: Bundle) -> str | None:
    """The model's input columns (``schema.json``) as an MLflow column-spec schema (JSON)."""
    if not bundle.has("schema.json"):
        return None
    columns = bundle.json("schema.json").get("columns", {})
    return json.dumps({"mlflow_colspec": [{"name": name, "type": column_type(dtype)}
                                          for name, dtype in columns.items()]})


def column_type(dtype: str) -> str:
    """MLflow's column type for a pandas dtype name.

    Examples
    --------
    >>> [column_type(t) for t in ("float32", "Int64", "bool", "category", "datetime64[ns]")]
    ['double', 'long', 'boolean', 'string', 'datetime']
    """
    for prefix, kind in COLUMN_TYPES.items():
        if dtype.startswith(prefix):
            return kind
    return "string"


def _log_files(client: Any, run_id: str, bundle: Bundle,
               board: list[dict[str, Any]]) -> None:
    """The bundle's report, metrics, job and schema (each checked against the manifest) and
    the leaderboard, as artifacts of the run."""
    from pipeline.artifacts import json_bytes

    with tempfile.TemporaryDirectory(prefix="mlpipe-tracking-") as tmp:
        for name in ARTIFACTS:
            if bundle.has(name):
                Path(tmp, name).write_bytes(bundle.read(name))
        Path(tmp, "leaderboard.json").write_bytes(json_bytes(board))
        client.log_artifacts(run_id, tmp)


def flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested document as MLflow params: dotted keys, leaves as JSON text (strings as they
    are), values longer than MLflow's limit cut with a note.

    Examples
    --------
    >>> flatten({"search": {"cv": 3, "scoring": None}, "models": {"xgboost": {"max_depth":
    ...          [4, 6]}}, "name": "demo"})
    {'search.cv': '3', 'search.scoring': 'null', 'models.xgboost.max_depth': '[4, 6]', \
'name': 'demo'}
    """
    out: dict[str, str] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if len(text) > MAX_PARAM:
            note = f"... ({len(text):,} characters; see job.yaml)"
            text = text[:MAX_PARAM - len(note)] + note
        out[name] = text
    return out


def _prefixed(prefix: str, values: Mapping[str, Any]) -> dict[str, float]:
    """``{prefix}_{name}`` for each number in ``values`` (nested documents and text skipped)."""
    return {f"{prefix}_{k}": float(v) for k, v in values.items() if _number(v)}


def _number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _key(name: str) -> str:
    """A param or metric name MLflow accepts everywhere (Windows too: no colons)."""
    return re.sub(r"[^\w.\- /]", "_", name)[:250]
