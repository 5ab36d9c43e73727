"""The documents of a run's bundle, assembled from the stages' results, written and published.

A bundle (``<output>/runs/<run_id>/``) holds the resolved job, the fitted preprocessor and
model, ``schema.json`` (what the model takes), ``metrics.json`` (holdout metrics, leaderboard,
search, timings), a sample of holdout rows with the run's predictions (a loaded model must
reproduce them), the data summary, the CV results and the reports. :mod:`pipeline.artifacts`
writes the files with the manifest last, then flips the model's pointer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from distributed import Client

    from pipeline.config import JobSpec
    from pipeline.load import Training
    from pipeline.predictor import Predictor
    from pipeline.select import SearchResult
    from pipeline.train import FamilyFit

#: holdout rows (raw input + the run's predictions) kept in the bundle, so a loaded model can
#: be checked to reproduce the run's predictions exactly.
SAMPLE_ROWS = 1000


@dataclass
class Published:
    """Where a run's bundle went, and what it says."""

    run_id: str
    run_url: str
    model_url: str
    metrics: dict[str, Any]
    manifest: dict[str, Any] = field(repr=False)


def write(job: JobSpec, training: Training, rows: Mapping[str, int], winner: str,
          chosen: FamilyFit, searches: Mapping[str, SearchResult],
          board: list[dict[str, Any]], holdout: Any, timings: dict[str, float],
          client: Client, performance_report: Callable[[], bytes], *,
          profile: Mapping[str, Any] | None = None, gate: Mapping[str, Any] | None = None,
          publish: bool = True, storage: Mapping[str, Any] | None = None) -> Published:
    """Assemble the bundle of a run, write it under ``<output>/runs/<run_id>/`` and (with
    ``publish``) make it the model's current version.

    ``performance_report`` is called once everything else is computed: it ends the Dask
    performance report of the run and returns its HTML. ``profile`` becomes ``profile.json``
    (the drift reference, :func:`pipeline.monitor.reference_profile`); ``gate`` is the
    champion/challenger decision (:class:`pipeline.monitor.Verdict`), kept in
    ``metrics.json`` and shown in the report. ``publish=False`` writes the version without
    registering it (the gate's :func:`pipeline.monitor.settle` does that). ``storage``: the
    run's storage requests and retries (:class:`pipeline.artifacts.StorageTally`), kept in
    ``metrics.json``.
    """
    import cluster
    from pipeline import artifacts
    from pipeline.evaluate import headline, model_warnings, overfit_check
    from pipeline.report import PERFORMANCE_REPORT
    from pipeline.select import cv_table

    task, predictor, refit = job.data.task, chosen.predictor, chosen.refit
    sample = holdout.head(SAMPLE_ROWS, npartitions=-1, compute=True)
    predicted = sample.assign(**{f"__pred_{c}": v
                                 for c, v in predictor.predict_frame(sample).items()})
    head = headline(chosen.holdout, task)
    prep = predictor.preprocessor
    metrics = {
        "task": task, "primary_metric": job.primary_metric, "headline": head,
        "holdout": chosen.holdout, "train": headline(chosen.train, task),
        "overfit": overfit_check(chosen.train, chosen.holdout, job.evaluate.overfit_bound),
        "rows": {"total": training.summary.rows, **rows},
        "model": {"family": winner, "training": refit.training, "params": refit.params,
                  "fit_seconds": round(refit.seconds, 3), **refit.details,
                  "importance": importance(predictor, sample)},
        "leaderboard": board,
        "warnings": model_warnings(chosen, task),
        "search": {family: found.to_json() for family, found in searches.items()},
        "threshold": predictor.threshold,
        "preprocess": {"steps": [name for name, _ in prep.steps],
                       "dropped": [d for _, step in prep.steps
                                   for d in getattr(step, "dropped_", [])],
                       "duplicates_removed": training.duplicates},
        "timings": timings,
    }
    if gate is not None:
        metrics["gate"] = dict(gate)
    if storage is not None:  # the run's S3 requests and retried attempts so far
        metrics["storage"] = dict(storage)
    schema = schema_doc(job, training, winner, predictor, sample)
    source = training.source
    meta = {
        "name": job.name, "task": task, "family": winner,
        "data": {"url": job.data.train, "fingerprint": source.fingerprint,
                 "files": len(source.files), "bytes": source.bytes,
                 "rows": training.summary.rows},
        "headline": head, "cluster": cluster.describe(client),
    }
    run_id = artifacts.new_run_id(job.fingerprint())
    performance = performance_report()
    files = {
        "job.yaml": job.to_yaml().encode(),
        "preprocessor.skops": artifacts.dumps_skops(prep),
        **artifacts.model_files(refit.model),  # an ensemble: its members' files
        "schema.json": artifacts.json_bytes(schema),
        "metrics.json": artifacts.json_bytes(metrics),
        "sample.parquet": artifacts.parquet_bytes(predicted),
        "data_summary.json": artifacts.json_bytes(training.summary.to_json()),
        "cv_results.parquet": artifacts.parquet_bytes(cv_table(searches)),
        "report.html": _report(job, metrics, schema, training, meta, run_id,
                               predicted).encode(),
        PERFORMANCE_REPORT: performance,
    }
    if profile is not None:
        from pipeline.monitor import PROFILE

        files[PROFILE] = artifacts.json_bytes(profile)
    options = job.storage_options
    manifest = artifacts.write_run(job.output, run_id, files, meta=meta,
                                   storage_options=options)
    if publish:
        artifacts.publish(job.output, job.name, manifest, storage_options=options,
                          summary={"headline": head, "family": winner})
    return Published(run_id=run_id, run_url=artifacts.join(job.output, "runs", run_id),
                     model_url=artifacts.join(job.output, "models", job.name),
                     metrics=metrics, manifest=manifest)


def schema_doc(job: JobSpec, training: Training, family: str, predictor: Predictor,
               sample: pd.DataFrame) -> dict[str, Any]:
    """``schema.json``: the inputs the model takes (columns, dtypes, categories, kernels)."""
    from pipeline.train import boosting_device

    prep = predictor.preprocessor
    dtypes = training.frame.dtypes
    return {
        "task": job.data.task, "target": job.data.target, "classes": predictor.classes,
        "threshold": predictor.threshold, "family": family,
        "device": boosting_device(job),  # where scoring predicts unless told otherwise
        "columns": {c: str(dtypes[c]) for c in training.feature_columns},
        "id_columns": list(job.data.id_columns),
        "categories": {column: [str(v) for v in levels]
                       for _, step in prep.steps
                       for column, levels in getattr(step, "categories_", {}).items()},
        "model_inputs": [str(c) for c in predictor.transform(sample.head(1)).columns],
        "kernels": kernel_fingerprints(prep),
    }


def kernel_fingerprints(prep: Any) -> dict[str, str]:
    """Code fingerprints of the kernels a fitted preprocessor calls (checked when loading)."""
    from pipeline.steps import kernels_used

    used = kernels_used(prep)
    if not used:
        return {}
    from kernels import kernel_fingerprints as fingerprints

    prints = fingerprints()
    return {name: prints[name] for name in used}


def importance(predictor: Predictor, sample: pd.DataFrame) -> dict[str, float]:
    """Feature importance, largest first: XGBoost's total gain, a tree's impurity decrease,
    or a linear model's |coefficient| on the scaled inputs; empty where none is defined."""
    import numpy as np

    model = predictor.model
    if type(model).__name__ == "Booster":
        gain = model.get_score(importance_type="total_gain")
        return {k: float(v) for k, v in sorted(gain.items(), key=lambda kv: -kv[1])}
    names = list(predictor.transform(sample.head(1)).columns)
    values = getattr(model, "feature_importances_", None)
    if values is None and getattr(model, "coef_", None) is not None:
        values = np.abs(np.atleast_2d(model.coef_)).sum(axis=0)
    if values is None or len(values) != len(names):
        return {}
    pairs = sorted(zip(names, map(float, values)), key=lambda kv: -kv[1])
    return {k: v for k, v in pairs if v > 0}


def _report(job: JobSpec, metrics: Mapping[str, Any], schema: Mapping[str, Any],
            training: Training, meta: Mapping[str, Any], run_id: str,
            predicted: pd.DataFrame) -> str:
    """The self-contained report.html of this run (pipeline/report.py)."""
    import yaml

    from pipeline import report
    from pipeline.artifacts import json_bytes, library_versions, utcnow

    docs = {
        "job": yaml.safe_load(job.to_yaml()), "metrics": json.loads(json_bytes(metrics)),
        "schema": json.loads(json_bytes(schema)), "data_summary": training.summary.to_json(),
        "manifest": {**json.loads(json_bytes(dict(meta))), "run_id": run_id,
                     "created_at": utcnow(), "versions": library_versions()},
        "sample": predicted,
        "performance_report": report.PERFORMANCE_REPORT,
    }
    html = report.render(docs)
    if metrics.get("gate"):
        from pipeline.monitor_report import with_comparison

        html = with_comparison(html, metrics["gate"])
    return html
