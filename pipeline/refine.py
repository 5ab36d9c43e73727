"""Retraining: a challenger trained on new data and judged by the gate (:mod:`pipeline.monitor`).

:func:`retrain` is a run (:func:`pipeline.workflow.run`, passed in by its caller: no stage imports
the workflow) of a job whose model already has a current version; the gate inside every run
compares the two on the same holdout rows and promotes by compare-and-swap, or not. The same
job on the same data is not trained twice (the registry keeps every decision with the job's
and the data's fingerprints).

``warm_start=True`` continues the champion's XGBoost booster on the new rows instead
(:func:`continue_champion`): the champion's fitted preprocessing is kept as it is (its
encoders and kernels made the features the booster was grown on), the new training rows go
through it, and up to ``models.xgboost.n_estimators`` rounds are added with early stopping on
the new validation rows (``xgb_model``, through the same retrying, checkpointing trainer as a
run: the champion's booster is its starting checkpoint). Families other than XGBoost cannot
be continued and are refused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed import Client

    from pipeline.config import JobSpec

logger = logging.getLogger("pipeline")

__all__ = ["continue_champion", "retrain"]


def retrain(job: JobSpec, *, run: Callable[..., Any], client: Client | None = None,
            address: str | None = None, dry_run: bool = False, force: bool = False,
            warm_start: bool = False,
            on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train a challenger on the job's data and let the gate decide; returns the decision
    (``outcome``: promoted, not promoted, dry run: not promoted; ``skipped`` when this job
    was already trained on this data and ``force`` is not set).

    Examples
    --------
    >>> from pipeline.workflow import run
    >>> decision = retrain(load_job("examples/demo.yaml", ["data.train=data/dec"]), run=run)
    ...                                                                 # doctest: +SKIP
    >>> decision["outcome"]                                             # doctest: +SKIP
    'promoted'
    """
    from pipeline import registry
    from pipeline.load import find_files

    fingerprint = find_files(job.data.train, job.storage_options, job.data.format).fingerprint
    mode = "warm start" if warm_start else "run"
    if not force:
        for record in registry.decisions(job.output, job.name,
                                         storage_options=job.storage_options):
            if record.get("job_fingerprint") == job.fingerprint() \
                    and record.get("data_fingerprint") == fingerprint \
                    and bool(record.get("warm_start")) == warm_start \
                    and not str(record.get("outcome", "")).startswith("conflict"):
                logger.info("retrain: %s was already trained on this data (%s, run %s: %s); "
                            "nothing to do (--force to train again)", job.name,
                            job.data.train, record["run_id"], record.get("outcome"))
                return {**record, "skipped": True}
    if warm_start:
        return {**_warm(job, client, address, dry_run, on_stage), "skipped": False}
    logger.info("retrain %s (%s) on %s", job.name, mode, job.data.train)
    result = run(job, client=client, address=address, on_stage=on_stage, publish=not dry_run)
    return {**(result.decision or {}), "skipped": False, "run_url": result.run_url}


def _warm(job: JobSpec, client: Client | None, address: str | None, dry_run: bool,
          on_stage: Callable[[str], None] | None) -> dict[str, Any]:
    if client is not None:
        return continue_champion(job, client, publish=not dry_run, on_stage=on_stage)
    import cluster

    with cluster.connect(job.cluster.model_dump(by_alias=True), address=address,
                         dask_config=job.dask) as client:
        logger.info("dashboard: %s", client.dashboard_link)
        return continue_champion(job, client, publish=not dry_run, on_stage=on_stage)


def _champion(job: JobSpec) -> tuple[Any, Any]:
    """The current version's bundle and predictor; refused unless its model is a booster."""
    from pipeline import artifacts
    from pipeline.monitor import current_version

    pointer = current_version(job)
    if pointer is None:
        raise ValueError(f"--warm-start continues the current version of {job.name!r}, and "
                         f"it has none at {job.output}; train it first (mlpipe run)")
    bundle = artifacts.open_bundle(artifacts.join(job.output, "runs", pointer["run_id"]),
                                   job.storage_options)
    predictor = artifacts.load_predictor(bundle)
    if type(predictor.model).__name__ != "Booster" or predictor.family != "xgboost":
        raise ValueError(f"--warm-start continues an XGBoost booster (xgb_model); the current "
                         f"version of {job.name!r} ({bundle.run_id}) is a {predictor.family} "
                         "model, which cannot be continued on new rows: retrain it without "
                         "--warm-start")
    return bundle, predictor


def continue_champion(job: JobSpec, client: Client, *, publish: bool = True,
                      on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Continue the champion's booster on the job's (new) data, then the gate and the bundle,
    as a run does. Returns the gate's decision."""
    import dataclasses
    import tempfile
    from pathlib import Path

    from pipeline import artifacts, bundle, evaluate, load, monitor, split, train
    from pipeline.predictor import Predictor

    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(stage: str, message: str) -> None:
        timings[stage] = round(time.perf_counter() - started - sum(timings.values()), 3)
        logger.info("[%6.1fs] %s", time.perf_counter() - started, message)
        if on_stage is not None:
            on_stage(stage)

    champion_bundle, champion = _champion(job)
    training = load.load_training(job, load.plan_training(job))
    classes = training.summary.classes
    parts = split.split_job(training.frame, job, training.summary.time_cutoff)
    training.release_rows()  # the persisted sides hold them now
    lap("load", f"warm start of {champion_bundle.run_id} on {training.summary.rows:,} rows of "
                f"{job.data.train}")
    X_train, y_train, X_valid, y_valid, rows = _features(champion, job, parts, classes, client)
    params = dict(job.models.get("xgboost", {}))
    extra = int(params.get("n_estimators", 100))
    grown = champion.model.num_boosted_rounds()
    with tempfile.TemporaryDirectory(prefix="mlpipe-warm-") as tmp:
        # the champion's booster is the trainer's starting checkpoint: fit_xgboost resumes
        # from it (xgb_model) and adds the rounds it lacks
        path = str(Path(tmp) / "champion.ubj")
        champion.model.save_model(path)
        fs, _ = artifacts.filesystem(tmp)
        fit = train.fit_xgboost(
            X_train, y_train, X_valid, y_valid, params={**params, "n_estimators": grown + extra},
            task=job.data.task, n_classes=len(classes) if classes else None,
            early_stopping_rounds=job.train.early_stopping_rounds, seed=job.search.seed,
            client=client, retries=job.train.retries, checkpoint=(fs, path),
            checkpoint_every=0)
    predictor = Predictor(task=job.data.task, target=job.data.target, classes=classes,
                          preprocessor=champion.preprocessor, model=fit.booster,
                          threshold=champion.threshold, family="xgboost")
    train_rows = evaluate.overfit_rows(parts.train, rows["train"], rows["holdout"],
                                       job.data.split.seed)
    metrics = evaluate.evaluate_predictor(predictor, {"holdout": (parts.holdout, True),
                                                      "train": (train_rows, False)}, job, client)
    lap("train:xgboost", f"continued {grown} rounds to {fit.n_estimators}; holdout "
                         f"{job.primary_metric} = "
                         f"{evaluate.fmt_metric(metrics['holdout'].get(job.primary_metric))}")
    refit = train.Refit("xgboost", "warm start", fit.booster, fit.params, fit.seconds,
                        rows["train"], {"trees": fit.n_estimators, "learning_curve": fit.history,
                                        "attempts": fit.attempts,
                                        "warm_start": {"from": champion_bundle.run_id,
                                                       "rounds_before": grown}})
    chosen = train.FamilyFit(None, refit, predictor, metrics["holdout"], metrics["train"],
                             None, 0.0)
    profile = monitor.reference_profile(job, parts, predictor, chosen.holdout, client)
    verdict = monitor.challenge(job, chosen.holdout, parts.holdout, profile, client,
                                training.source.fingerprint)
    verdict = dataclasses.replace(verdict, warm_start=True)
    lap("gate", f"gate: {'pass' if verdict.promote else 'no promotion'}")
    published = bundle.write(job, training, rows, "xgboost", chosen, {}, [], parts.holdout,
                             timings, client, _no_performance_report, profile=profile,
                             gate=verdict.to_json(), publish=False)
    lap("bundle", f"bundle written: {published.run_url}")
    decision = monitor.settle(job, published.run_id, verdict, publish=publish,
                              data_fingerprint=training.source.fingerprint)
    return {**decision, "run_url": published.run_url}


def _features(champion: Any, job: JobSpec, parts: Any, classes: Any,
              client: Client) -> tuple[Any, Any, Any, Any, dict[str, int]]:
    """The new rows through the champion's fitted preprocessing (its features are the
    booster's), with their targets: lazy, one ``map_partitions`` each over the same split
    frames (aligned); the trainer persists them where it trains."""
    import dask

    from pipeline.steps import target

    prep = champion.preprocessor
    X_train, X_valid = prep.transform(parts.train), prep.transform(parts.valid)
    y_train, y_valid = target(parts.train, job, classes), target(parts.valid, job, classes)
    n_train, n_valid, n_holdout = dask.compute(parts.train.shape[0], parts.valid.shape[0],
                                               parts.holdout.shape[0])
    rows = {"train": int(n_train), "valid": int(n_valid), "holdout": int(n_holdout)}
    return X_train, y_train, X_valid, y_valid, rows


def _no_performance_report() -> bytes:
    return (b"<!DOCTYPE html><title>no performance report</title><p>A warm start records no "
            b"Dask performance report.</p>")
