"""``run(job)``: the whole workflow, straight-line. The Dask graph is the only DAG.

load -> validate -> split -> preprocess (fit on the train fold) -> train -> evaluate -> bundle
-> publish. Each stage is a plain function call; progress goes to the ``pipeline`` logger.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import JobSpec, load_job

logger = logging.getLogger("pipeline")

#: holdout rows (raw input + the run's predictions) kept in the bundle, so a loaded model can
#: be checked to reproduce the run's predictions exactly.
SAMPLE_ROWS = 1000


@dataclass
class RunResult:
    """What a run produced (also returned by the Python API)."""

    run_id: str
    run_url: str
    model_url: str
    task: str
    metrics: dict[str, Any]
    headline: dict[str, Any]
    manifest: dict[str, Any] = field(repr=False)
    timings: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        """The headline holdout metrics as a small text table."""
        width = max([len("metric"), *(len(k) for k in self.headline)])
        rows = [f"{'metric'.ljust(width)}  {'holdout':>12}", f"{'-' * width}  {'-' * 12}"]
        for name, value in self.headline.items():
            rows.append(f"{name.ljust(width)}  {_fmt(value):>12}")
        return "\n".join(rows)


class Stopwatch:
    """Stage timings, logged as they end."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.stages: dict[str, float] = {}
        self._last = self.start

    def lap(self, stage: str, message: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = round(now - self._last, 3)
        self._last = now
        logger.info("[%6.1fs] %s", now - self.start, message)


def run(job: JobSpec | str | Path, *, overrides: Sequence[str] = (), client: Any = None,
        address: str | None = None) -> RunResult:
    """Run a job end to end and publish its model bundle.

    Parameters
    ----------
    job
        A :class:`JobSpec` or the path of a job file.
    overrides
        ``key=value`` strings applied when ``job`` is a path.
    client
        A ``distributed.Client`` to use; by default a cluster is chosen from the job
        (``cluster:``) and ``address``, as :func:`cluster.connect` does.

    Examples
    --------
    >>> result = run("examples/demo.yaml")        # doctest: +SKIP
    >>> result.headline["roc_auc"]                # doctest: +SKIP
    0.87
    """
    if not isinstance(job, JobSpec):
        job = load_job(job, overrides)
    if client is not None:
        return _run(job, client)
    import cluster

    spec = job.cluster.model_dump(by_alias=True)
    with cluster.connect(spec, address=address, dask_config=job.dask) as client:
        logger.info("dashboard: %s", client.dashboard_link)
        return _run(job, client)


def _run(job: JobSpec, client: Any) -> RunResult:
    import dask
    from distributed import wait

    from pipeline import artifacts, evaluate, load, split
    from pipeline.predictor import Predictor
    from pipeline.preprocess import build_preprocessor
    from pipeline.train import fit_xgboost, xgb_params

    watch = Stopwatch()
    data = job.data
    options = dict(job.storage_options)
    refuse_memory_urls(client, {"data.train": data.train, "output": job.output})
    params = resolve_params(job, "xgboost")
    xgb_params(params, task=data.task, n_classes=None, seed=job.search.seed)  # fail early

    # -- load and validate ----------------------------------------------------------------
    source = load.find_files(data.train, options, data.format)
    headers = load.read_headers(source)
    # key and time of window features are inputs even when they are ids or dropped columns
    context = [c for f in job.features if f.kernel in ("rolling", "lag") for c in (f.key, f.time)]
    required = [data.target, *data.id_columns, *([data.split.by] if data.split.by else []),
                *job.evaluate.slices, *context]
    columns = load.check_headers(headers, schema=data.schema_, required=required)
    raw = load.read(source, columns, schema=data.schema_,
                    drop=[c for c in data.drop if c not in context],
                    storage_options=options, blocksize=data.blocksize)
    feature_columns = [c for c in raw.columns
                       if c not in {data.target, *data.id_columns, *data.drop} or c in context]
    check_declarations(job, raw._meta, feature_columns)
    watch.lap("plan", f"{len(source.files)} {source.format} file(s), {len(columns)} columns, "
                      f"{source.bytes / 1e6:,.1f} MB at {data.train}")

    window_keys = {f.key for f in job.features if f.kernel in ("rolling", "lag")}
    if window_keys:  # every row of a key in one partition: window features see its history
        raw = raw.shuffle(on=next(iter(window_keys)))
    raw = raw.persist()
    wait(raw)
    duplicates = 0
    if job.preprocess.dedupe:
        before = raw.shape[0]
        raw = raw.drop_duplicates().persist()
        wait(raw)
        before, after = dask.compute(before, raw.shape[0])
        duplicates = int(before - after)
    summary = load.summarize(raw, target=data.target, task=data.task, source=data.train,
                             positive=data.positive, time_column=data.split.by,
                             holdout=data.split.holdout, exclude_levels=data.id_columns)
    balance = (", classes " + ", ".join(f"{k}: {v:,}" for k, v in summary.class_counts.items())
               if summary.class_counts else "")
    watch.lap("load", f"loaded {summary.rows:,} rows x {len(feature_columns)} features "
                      f"in {raw.npartitions} partitions{balance}"
                      + (f"; {duplicates:,} duplicate rows removed" if duplicates else ""))

    # -- split ----------------------------------------------------------------------------
    framed = split.assign_folds(raw, target=data.target, task=data.task,
                                holdout=data.split.holdout, validation=data.split.validation,
                                seed=data.split.seed, stratify=data.split.stratify,
                                time_column=data.split.by, cutoff=summary.time_cutoff)
    parts = {name: framed[framed[split.FOLD] == code].drop(columns=[split.FOLD])
             for name, code in (("train", split.TRAIN), ("valid", split.VALID),
                                ("holdout", split.HOLDOUT))}

    # -- preprocess -----------------------------------------------------------------------
    classes = summary.classes
    n_classes = len(classes) if classes else None
    prep = build_preprocessor(job, feature_columns, "xgboost", n_classes)

    def target(frame: Any) -> Any:
        if data.task == "regression":
            return frame[data.target].astype("float64")
        return frame[data.target].map_partitions(_encode_partition, classes,
                                                 meta=(data.target, "int64"))

    # fit_transform: target encodings of the training rows themselves are out-of-fold
    y_train, y_valid = target(parts["train"]), target(parts["valid"])
    X_train = prep.fit_transform(parts["train"], y_train)
    X_valid = prep.transform(parts["valid"])
    X_train, y_train, X_valid, y_valid = client.persist([X_train, y_train, X_valid, y_valid])
    wait([X_train, y_train, X_valid, y_valid])
    n_train, n_valid, n_holdout = dask.compute(X_train.shape[0], X_valid.shape[0],
                                               parts["holdout"].shape[0])
    watch.lap("preprocess", f"split {n_train:,} train / {n_valid:,} validation / "
                            f"{n_holdout:,} holdout rows; {X_train.shape[1]} model inputs")

    # -- train ----------------------------------------------------------------------------
    fitted = fit_xgboost(X_train, y_train, X_valid, y_valid, params=params, task=data.task,
                         n_classes=n_classes,
                         early_stopping_rounds=job.train.early_stopping_rounds,
                         seed=job.search.seed, client=client)
    del X_train, y_train, X_valid, y_valid  # release the training matrix on the workers
    watch.lap("train", f"xgboost: {fitted.n_estimators} trees (early stopping on "
                       f"validation) in {fitted.seconds:.1f} s")

    # -- evaluate -------------------------------------------------------------------------
    predictor = Predictor(task=data.task, target=data.target, classes=classes,
                          preprocessor=prep, model=fitted.booster,
                          threshold=job.evaluate.threshold, family="xgboost")
    holdout_metrics = _evaluate(client, predictor, parts["holdout"], job, slices=True)
    train_metrics = _evaluate(client, predictor, parts["train"], job, slices=False)
    if data.task == "binary":
        predictor.threshold = float(holdout_metrics.get("chosen_threshold")
                                    or job.evaluate.threshold)
    head = evaluate.headline(holdout_metrics, data.task)
    overfit = evaluate.overfit_check(train_metrics, holdout_metrics, job.evaluate.overfit_bound)
    watch.lap("evaluate", f"holdout {job.primary_metric} = "
                          f"{_fmt(holdout_metrics.get(job.primary_metric))}")

    # -- bundle ---------------------------------------------------------------------------
    import cluster

    sample = parts["holdout"].head(SAMPLE_ROWS, npartitions=-1, compute=True)
    sample_pred = predictor.predict_frame(sample)
    run_id = artifacts.new_run_id(job.fingerprint())
    metrics_doc = {
        "task": data.task, "primary_metric": job.primary_metric, "headline": head,
        "holdout": holdout_metrics, "train": evaluate.headline(train_metrics, data.task),
        "overfit": overfit,
        "rows": {"total": summary.rows, "train": n_train, "valid": n_valid,
                 "holdout": n_holdout},
        "model": {"family": "xgboost", "params": fitted.params, "trees": fitted.n_estimators,
                  "fit_seconds": round(fitted.seconds, 3), "learning_curve": fitted.history,
                  "importance": _importance(fitted.booster)},
        "threshold": predictor.threshold,
        "preprocess": {"steps": [name for name, _ in prep.steps],
                       "dropped": _dropped(prep), "duplicates_removed": duplicates},
        "timings": watch.stages,
    }
    schema_doc = {
        "task": data.task, "target": data.target, "classes": classes,
        "threshold": predictor.threshold, "family": "xgboost",
        "columns": {c: str(raw.dtypes[c]) for c in feature_columns},
        "id_columns": list(data.id_columns),
        "categories": {c: list(v) for c, v in _categories(prep).items()},
        "model_inputs": [str(c) for c in fitted.booster.feature_names or []],
        "kernels": _kernel_fingerprints(prep),
    }
    model_name, model_data = artifacts.model_bytes(fitted.booster)
    files = {
        "job.yaml": job.to_yaml().encode(),
        "preprocessor.skops": artifacts.dumps_skops(prep),
        model_name: model_data,
        "schema.json": _json(schema_doc),
        "metrics.json": _json(metrics_doc),
        "sample.parquet": _parquet(sample.assign(**{f"__pred_{c}": sample_pred[c]
                                                   for c in sample_pred.columns})),
        "data_summary.json": _json(summary.to_json()),
    }
    meta = {
        "name": job.name, "task": data.task, "family": "xgboost",
        "data": {"url": data.train, "fingerprint": source.fingerprint, "files":
                 len(source.files), "bytes": source.bytes, "rows": summary.rows},
        "headline": head, "cluster": cluster.describe(client),
    }
    manifest = artifacts.write_run(job.output, run_id, files, meta=meta,
                                   storage_options=options)
    artifacts.publish(job.output, job.name, manifest, storage_options=options,
                      summary={"headline": head, "family": "xgboost"})
    run_url = artifacts.join(job.output, "runs", run_id)
    model_url = artifacts.join(job.output, "models", job.name)
    watch.lap("bundle", f"bundle written: {run_url}")
    return RunResult(run_id=run_id, run_url=run_url, model_url=model_url, task=data.task,
                     metrics=metrics_doc, headline=head, manifest=manifest,
                     timings=watch.stages)


# --------------------------------------------------------------------------- helpers


def refuse_memory_urls(client: Any, urls: Mapping[str, str]) -> None:
    """``memory://`` with process workers silently writes nothing the client can see."""
    import os

    memory = {k: v for k, v in urls.items() if v.startswith("memory://")}
    if not memory:
        return
    pids = set(client.run(os.getpid).values())
    if pids != {os.getpid()}:
        key, url = next(iter(memory.items()))
        raise ValueError(
            f"{key} is {url}, but this cluster's workers are separate processes: each would "
            "read and write its own private memory, and nothing would reach you. Use a file:// "
            "or s3:// URL, or a threaded cluster (cluster.processes: false)")


def check_declarations(job: JobSpec, meta: Any, feature_columns: Sequence[str]) -> None:
    """Columns the job names that are missing or of the wrong kind: errors before any compute.

    (The transformers check again when fitted; this runs on the empty ``meta`` frame.)
    """
    from pipeline.features import check_features
    from pipeline.load import DataError, _close
    from pipeline.preprocess import _require

    known = list(meta.columns)
    for column in job.evaluate.slices:
        if column not in known:
            raise DataError(f"evaluate.slices names {column!r}, not a column of the data"
                            f"{_close(column, known)}")
    inputs = meta[list(feature_columns)]
    check_features([f.model_dump() for f in job.features], inputs)
    _require(list(job.preprocess.encode), inputs, "preprocess.encode", numeric=False)
    _require(list(job.preprocess.impute.columns), inputs, "preprocess.impute.columns")
    if job.preprocess.clip is not None and job.preprocess.clip.columns:
        _require(job.preprocess.clip.columns, inputs, "preprocess.clip.columns", numeric=True)


def resolve_params(job: JobSpec, family: str) -> dict[str, Any]:
    """The family's parameters (its defaults under the job's)."""
    from pipeline.models import FAMILIES

    given = dict(job.models.get(family, {}))
    lists = sorted(k for k, v in given.items() if isinstance(v, list))
    if lists:
        raise ValueError(f"models.{family}: {lists} list several candidates; hyperparameter "
                         "search is not available in this version: give one value each")
    return {**FAMILIES[family]["defaults"], **given}


def _evaluate(client: Any, predictor: Any, frame: Any, job: JobSpec, *, slices: bool) -> dict:
    from pipeline import evaluate

    keep = list(job.evaluate.slices) if slices else []
    [remote] = client.scatter([predictor], broadcast=True, hash=False)
    meta = predictor.evaluation_frame(frame._meta, keep=keep)
    pred = frame.map_partitions(_evaluation_partition, remote, keep, meta=meta)
    return evaluate.evaluate_predictions(
        pred, job.data.task, class_names=[str(c) for c in predictor.classes or []] or None,
        threshold=job.evaluate.threshold, min_precision=job.evaluate.min_precision,
        min_recall=job.evaluate.min_recall, slices=keep, top_levels=job.evaluate.top_levels)


def _encode_partition(labels: Any, classes: list[Any]) -> Any:
    import pandas as pd

    from pipeline.predictor import encode_labels

    return pd.Series(encode_labels(labels, classes), index=labels.index, name=labels.name)


def _evaluation_partition(df: Any, predictor: Any, keep: list[str]) -> Any:
    return predictor.evaluation_frame(df, keep=keep)


def _importance(booster: Any) -> dict[str, float]:
    """Total gain per model input, largest first (XGBoost's own measure)."""
    gain = booster.get_score(importance_type="total_gain")
    return {k: float(v) for k, v in sorted(gain.items(), key=lambda kv: -kv[1])}


def _categories(prep: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for _, step in prep.steps:
        for column, levels in getattr(step, "categories_", {}).items():
            out[column] = [str(v) for v in levels]
    return out


def _kernel_fingerprints(prep: Any) -> dict[str, str]:
    """Code fingerprints of the kernels this preprocessor calls (checked when loading)."""
    from pipeline.preprocess import kernels_used

    used = kernels_used(prep)
    if not used:
        return {}
    from kernels import kernel_fingerprints

    prints = kernel_fingerprints()
    return {name: prints[name] for name in used}


def _dropped(prep: Any) -> list[dict[str, str]]:
    return [d for _, step in prep.steps for d in getattr(step, "dropped_", [])]


def _json(doc: Any) -> bytes:
    return json.dumps(doc, indent=2, default=_default, allow_nan=False).encode()


def _default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _parquet(frame: Any) -> bytes:
    buffer = io.BytesIO()
    frame.reset_index(drop=True).to_parquet(buffer, index=False)
    return buffer.getvalue()


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4f}"
