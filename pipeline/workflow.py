"""``run(job)``: the whole workflow as a list of stage calls. The Dask graph is the only DAG.

check -> load -> split -> shared preprocessing -> search -> refit and evaluate each family ->
choose -> operating point -> leaderboard -> bundle. Each stage lives in the module named after
it; this file only calls them in order and times them. Completed stages of an interrupted run
of the same job on the same data are kept (:mod:`pipeline.resume`) and skipped on a rerun.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import JobSpec, load_job

if TYPE_CHECKING:
    from distributed import Client

    from pipeline.resume import StageStore

logger = logging.getLogger("pipeline")


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
    leaderboard: list[dict[str, Any]] = field(default_factory=list)
    family: str = "xgboost"
    #: the champion/challenger gate's decision (pipeline.monitor.settle): outcome, reasons
    decision: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """The headline holdout metrics as a small text table."""
        from pipeline.evaluate import fmt_metric

        width = max([len("metric"), *(len(k) for k in self.headline)])
        rows = [f"{'metric'.ljust(width)}  {'holdout':>12}", f"{'-' * width}  {'-' * 12}"]
        for name, value in self.headline.items():
            rows.append(f"{name.ljust(width)}  {fmt_metric(value):>12}")
        return "\n".join(rows)

    def leaderboard_table(self) -> str:
        """One line per family: how it trained, CV score, every headline holdout metric, the
        overfitting gap of the primary metric, and the cost."""
        if not self.leaderboard:
            return ""
        from pipeline.evaluate import HEADLINE, fmt_metric

        metric = self.leaderboard[0]["metric"]
        names = HEADLINE[self.task]
        short = {"precision": "prec", "recall": "rec", "log_loss": "logloss",
                 "roc_auc": "auc", "roc_auc_ovr": "auc_ovr", "f1_weighted": "f1_w",
                 "f1_macro": "f1_m", "accuracy": "acc"}
        head = (f"{'family':<20} {'trained':<11} {'cv ' + metric:>16} "
                + " ".join(f"{short.get(n, n):>9}" for n in names)
                + f" {'gap':>8} {'fit s':>7} {'rows/s':>10} {'peak MB':>8}")
        lines = [head, "-" * len(head)]
        for row in self.leaderboard:
            cv = "n/a" if row["cv_mean"] is None else (
                f"{_short(row['cv_mean'])}±{_short(row['cv_std'] or 0)}")
            name = ("* " if row["chosen"] else "  ") + row["family"]
            peak = "n/a" if row["peak_memory_bytes"] is None else \
                f"{row['peak_memory_bytes'] / 2**20:,.0f}"
            gap = "n/a" if row["gap"] is None else _short(row["gap"], sign=True)
            lines.append(f"{name:<20} {row['training']:<11} {cv:>16} "
                         + " ".join(f"{fmt_metric(row['holdout'].get(n)):>9}" for n in names)
                         + f" {gap:>8} {row['fit_seconds']:>7.1f} "
                         f"{row['predict_rows_per_s']:>10,} {peak:>8}")
        lines += [f"warning: {row['family']}: {text}"
                  for row in self.leaderboard for text in row.get("warnings", [])]
        return "\n".join(lines)


class Stopwatch:
    """Stage timings, logged as they end; ``on_stage(name)`` is called after each."""

    def __init__(self, on_stage: Callable[[str], None] | None = None) -> None:
        self.start = time.perf_counter()
        self.stages: dict[str, float] = {}
        self._last = self.start
        self.on_stage = on_stage

    def lap(self, stage: str, message: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = round(now - self._last, 3)
        self._last = now
        logger.info("[%6.1fs] %s", now - self.start, message)
        if self.on_stage is not None:
            self.on_stage(stage)  # e.g. a submitted job checking whether it was cancelled


def run(job: JobSpec | str | Path, *, overrides: Sequence[str] = (), client: Client | None = None,
        address: str | None = None,
        on_stage: Callable[[str], None] | None = None, publish: bool = True) -> RunResult:
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
    on_stage
        Called with each stage's name when it ends (progress reporting, cooperative
        cancellation: an exception raised there stops the run before anything is published).
    publish
        Let the gate promote the run when it passes (``refine:``); False decides and records
        without promoting (a dry run). The version is written and registered either way.

    Examples
    --------
    >>> result = run("examples/demo.yaml")        # doctest: +SKIP
    >>> result.headline["roc_auc"]                # doctest: +SKIP
    0.87
    """
    if not isinstance(job, JobSpec):
        job = load_job(job, overrides)
    if client is not None:
        return _run(job, client, on_stage, publish)
    import cluster

    spec = job.cluster.model_dump(by_alias=True)
    with cluster.connect(spec, address=address, dask_config=job.dask) as client:
        logger.info("dashboard: %s", client.dashboard_link)
        return _run(job, client, on_stage, publish)


def _run(job: JobSpec, client: Client,
         on_stage: Callable[[str], None] | None = None, publish: bool = True) -> RunResult:
    """The Dask performance report covers the whole run; it ends before the bundle."""
    import contextlib
    import tempfile

    from distributed import performance_report

    from pipeline.report import PERFORMANCE_REPORT

    with tempfile.TemporaryDirectory(prefix="mlpipe-") as tmp, \
            contextlib.ExitStack() as perf:
        path = os.path.join(tmp, PERFORMANCE_REPORT)
        # inline: the page carries bokeh's JavaScript, so it opens offline (cdn: blank)
        perf.enter_context(performance_report(filename=path, mode="inline"))

        def report() -> bytes:
            perf.close()
            return Path(path).read_bytes()

        return _stages(job, client, Stopwatch(on_stage), report, publish)


def _stages(job: JobSpec, client: Client, watch: Stopwatch,
            performance_report: Callable[[], bytes], publish: bool = True) -> RunResult:
    import cluster
    from pipeline import artifacts, bundle, evaluate, load, monitor, select, split, steps, train
    from pipeline.resume import StageStore, stage_key

    data = job.data
    cluster.refuse_memory_urls(client, {"data.train": data.train, "output": job.output})
    artifacts.check_writable(job.output, job.storage_options)  # before any compute
    storage = artifacts.StorageTally.begin("run", client)  # retries, for metrics.json
    select.check_models(job)  # parameter names and values: fail before any data is read
    train.check_devices(job, client)  # a GPU the workers cannot see: refused here too
    training = load.plan_training(job)
    steps.check_declarations(job, training.frame._meta, training.feature_columns)
    watch.lap("plan", _planned(training, data.train))
    training = load.load_training(job, training)
    watch.lap("load", _loaded(training))
    store = StageStore(job.output, stage_key(job, training.source.fingerprint),
                       job.storage_options)
    classes = training.summary.classes
    parts = split.split_job(training.frame, job, training.summary.time_cutoff)
    training.release_rows()  # the persisted sides hold them now
    prefix = steps.fit_prefix(job, parts, training.feature_columns, classes, client)
    rows = prefix.rows
    watch.lap("preprocess", f"split {rows['train']:,} train / {rows['valid']:,} validation / "
                            f"{rows['holdout']:,} holdout rows; {len(prefix.X_train.columns)} "
                            "columns after the shared preprocessing")
    sample = select.search_sample(job, parts.train, rows["train"])
    searches = _cached(store, "search", watch, "search: done", partial(
        select.search_families, job, sample, prefix, training.feature_columns, classes, client,
        watch.lap), select.search_files, select.load_searches)
    train_rows = evaluate.overfit_rows(parts.train, rows["train"], rows["holdout"],
                                       data.split.seed)
    fits = {}
    for family, found in searches.items():
        fits[family] = _cached(
            store, f"family:{family}", watch, f"{family}: trained and evaluated",
            partial(_refit, job, found, prefix, sample, parts, train_rows, classes, client,
                    store, watch),
            train.FamilyFit.files, partial(train.load_family, found=found, job=job,
                                           classes=classes))
    del prefix  # release the training matrices on the workers
    if job.search.ensemble:
        from pipeline import ensemble

        fits[ensemble.FAMILY] = ensemble.build(job, searches, fits, sample, parts, train_rows,
                                               training.feature_columns, classes, client)
        searches = {**searches, ensemble.FAMILY: fits[ensemble.FAMILY].search}
        watch.lap("ensemble", f"ensemble: {fits[ensemble.FAMILY].search.best_params}")
    winner = select.choose(searches, job.primary_metric)
    chosen = fits[winner] = evaluate.operating_point(job, fits[winner], parts, train_rows,
                                                     client)
    board = evaluate.leaderboard(fits, winner, job)
    _warn(board)
    watch.lap("evaluate", f"chosen: {winner}; holdout {job.primary_metric} = "
                          f"{evaluate.fmt_metric(chosen.holdout.get(job.primary_metric))}")
    profile = monitor.reference_profile(job, parts, chosen.as_evaluated, chosen.holdout,
                                        client, sample)
    verdict = monitor.challenge(job, chosen.holdout, parts.holdout, profile, client,
                                training.source.fingerprint)
    watch.lap("gate", f"gate: {'pass' if verdict.promote else 'no promotion'} "
                      f"({'; '.join(verdict.reasons)})")
    published = bundle.write(job, training, rows, winner, chosen, searches, board,
                             parts.holdout, watch.stages, client, performance_report,
                             profile=profile, gate=verdict.to_json(), publish=False,
                             storage=storage.counts())
    store.clear()  # written: nothing left to resume
    watch.lap("bundle", f"bundle written: {published.run_url}")
    decision = monitor.settle(job, published.run_id, verdict, publish=publish,
                              data_fingerprint=training.source.fingerprint)
    logger.info(storage.summary())
    from pipeline import tracking  # imports MLflow only when tracking is on

    tracking.log_run(job, published, decision)
    return RunResult(run_id=published.run_id, run_url=published.run_url,
                     model_url=published.model_url, task=data.task,
                     metrics=published.metrics, headline=published.metrics["headline"],
                     manifest=published.manifest, timings=watch.stages, leaderboard=board,
                     family=winner, decision=decision)


def _refit(job: JobSpec, found: Any, prefix: Any, sample: Any, parts: Any, train_rows: Any,
           classes: Any, client: Client, store: StageStore, watch: Stopwatch) -> Any:
    """One family's refit and evaluation, timed."""
    from pipeline import evaluate, train

    fit = train.refit_family(job, found, prefix, sample, parts.holdout, train_rows, classes,
                             client, checkpoint=store.path(f"checkpoints/{found.family}.ubj"))
    watch.lap(f"train:{found.family}",
              f"{found.family} ({fit.refit.training}): fitted in {fit.refit.seconds:.1f} s, "
              f"holdout {job.primary_metric} = "
              f"{evaluate.fmt_metric(fit.holdout.get(job.primary_metric))}")
    return fit


def _cached(store: StageStore, stage: str, watch: Stopwatch, done: str,
            make: Callable[[], Any], dump: Callable[[Any], dict[str, bytes]],
            load: Callable[[dict[str, bytes]], Any]) -> Any:
    """A stage's result: kept by an earlier, interrupted run of this job on this data (then
    ``done`` is logged), or made now (and kept until this run's bundle is published)."""
    files = store.get(stage)
    if files is not None:
        watch.lap(stage.replace("family:", "train:"),
                  f"{done} by an earlier run of this job (stage kept)")
        return load(files)
    value = make()
    store.put(stage, dump(value))
    return value


def _warn(board: list[dict[str, Any]]) -> None:
    for row in board:
        for text in row["warnings"]:
            logger.warning("%s: %s", row["family"], text)


def _planned(training: Any, url: str) -> str:
    source = training.source
    return (f"{len(source.files)} {source.format} file(s), {len(training.columns)} columns, "
            f"{source.bytes / 1e6:,.1f} MB at {url}")


def _loaded(training: Any) -> str:
    summary, frame = training.summary, training.frame
    balance = (", classes " + ", ".join(f"{k}: {v:,}" for k, v in summary.class_counts.items())
               if summary.class_counts else "")
    removed = (f"; {training.duplicates:,} duplicate rows removed"
               if training.duplicates else "")
    return (f"loaded {summary.rows:,} rows x {len(training.feature_columns)} features in "
            f"{frame.npartitions} partitions{balance}{removed}")


def _short(value: float, sign: bool = False) -> str:
    """4 decimals for scores, whole numbers for figures in the target's unit (RMSE $)."""
    spec = ("+" if sign else "") + (",.0f" if abs(value) >= 100 else ".4f")
    return format(value, spec)
