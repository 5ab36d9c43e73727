"""``run(job)``: the whole workflow, straight-line. The Dask graph is the only DAG.

load -> validate -> split -> preprocess (fit on the train fold) -> train -> evaluate -> bundle
-> publish. Each stage is a plain function call; progress goes to the ``pipeline`` logger.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import JobSpec, load_job

logger = logging.getLogger("pipeline")

#: holdout rows (raw input + the run's predictions) kept in the bundle, so a loaded model can
#: be checked to reproduce the run's predictions exactly.
SAMPLE_ROWS = 1000

#: training rows scored for the overfit check (train vs holdout), at most.
TRAIN_EVAL_ROWS = 100_000

#: the Dask performance report of the run, next to report.html in the bundle.
PERFORMANCE_REPORT = "dask-report.html"


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

    def table(self) -> str:
        """The headline holdout metrics as a small text table."""
        width = max([len("metric"), *(len(k) for k in self.headline)])
        rows = [f"{'metric'.ljust(width)}  {'holdout':>12}", f"{'-' * width}  {'-' * 12}"]
        for name, value in self.headline.items():
            rows.append(f"{name.ljust(width)}  {_fmt(value):>12}")
        return "\n".join(rows)

    def leaderboard_table(self) -> str:
        """One line per family: how it trained, CV score, every headline holdout metric, the
        overfitting gap of the primary metric, and the cost."""
        if not self.leaderboard:
            return ""
        from pipeline.evaluate import HEADLINE

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
                         + " ".join(f"{_fmt(row['holdout'].get(n)):>9}" for n in names)
                         + f" {gap:>8} {row['fit_seconds']:>7.1f} "
                         f"{row['predict_rows_per_s']:>10,} {peak:>8}")
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


def run(job: JobSpec | str | Path, *, overrides: Sequence[str] = (), client: Any = None,
        address: str | None = None,
        on_stage: Callable[[str], None] | None = None) -> RunResult:
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

    Examples
    --------
    >>> result = run("examples/demo.yaml")        # doctest: +SKIP
    >>> result.headline["roc_auc"]                # doctest: +SKIP
    0.87
    """
    if not isinstance(job, JobSpec):
        job = load_job(job, overrides)
    if client is not None:
        return _run(job, client, on_stage)
    import cluster

    spec = job.cluster.model_dump(by_alias=True)
    with cluster.connect(spec, address=address, dask_config=job.dask) as client:
        logger.info("dashboard: %s", client.dashboard_link)
        return _run(job, client, on_stage)


def _run(job: JobSpec, client: Any, on_stage: Callable[[str], None] | None = None) -> RunResult:
    """The Dask performance report covers the whole run; it closes before the bundle."""
    import tempfile

    from distributed import performance_report

    with tempfile.TemporaryDirectory(prefix="mlpipe-") as tmp, \
            contextlib.ExitStack() as perf:
        path = os.path.join(tmp, PERFORMANCE_REPORT)
        perf.enter_context(performance_report(filename=path))
        return _stages(job, client, perf, path, on_stage)


def _stages(job: JobSpec, client: Any, perf: contextlib.ExitStack, perf_path: str,
            on_stage: Callable[[str], None] | None) -> RunResult:
    import dask
    from distributed import wait

    from pipeline import artifacts, evaluate, load, select, split
    from pipeline.predictor import Predictor
    from pipeline.preprocess import prefix_steps, tail_steps

    watch = Stopwatch(on_stage)
    data = job.data
    options = dict(job.storage_options)
    refuse_memory_urls(client, {"data.train": data.train, "output": job.output})
    check_models(job)  # parameter names and values: fail before any data is read

    # -- load and validate ----------------------------------------------------------------
    source = load.find_files(data.train, options, data.format)
    headers = load.read_headers(source)
    # key and time of window features are inputs even when they are ids or dropped columns
    context = [c for f in job.features if f.kernel in ("rolling", "lag") for c in (f.key, f.time)]
    required = [data.target, *data.id_columns, *([data.split.by] if data.split.by else []),
                *job.evaluate.slices, *context]
    columns = load.check_headers(headers, schema=data.schema_, required=required)
    load.check_csv_sample(source, data.schema_)
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

    # completed stages of an earlier, interrupted run of this job on this data are skipped
    from pipeline.stages import StageStore, stage_key

    stages = StageStore(job.output, stage_key(job, source.fingerprint), options)

    # -- split ----------------------------------------------------------------------------
    framed = split.assign_folds(raw, target=data.target, task=data.task,
                                holdout=data.split.holdout, validation=data.split.validation,
                                seed=data.split.seed, stratify=data.split.stratify,
                                time_column=data.split.by, cutoff=summary.time_cutoff)
    parts = {name: framed[framed[split.FOLD] == code].drop(columns=[split.FOLD])
             for name, code in (("train", split.TRAIN), ("valid", split.VALID),
                                ("holdout", split.HOLDOUT))}

    # -- preprocess: the prefix every family shares, fitted once on all training rows ------
    from sklearn.pipeline import Pipeline

    classes = summary.classes
    n_classes = len(classes) if classes else None

    def target(frame: Any) -> Any:
        if data.task == "regression":
            return frame[data.target].astype("float64")
        return frame[data.target].map_partitions(_encode_partition, classes,
                                                 meta=(data.target, "int64"))

    prefix = Pipeline(prefix_steps(job, feature_columns, n_classes))
    # fit_transform: target encodings of the training rows themselves are out-of-fold
    y_train, y_valid = target(parts["train"]), target(parts["valid"])
    P_train = prefix.fit_transform(parts["train"], y_train)
    P_valid = prefix.transform(parts["valid"])
    P_train, y_train, P_valid, y_valid = client.persist([P_train, y_train, P_valid, y_valid])
    wait([P_train, y_train, P_valid, y_valid])
    n_train, n_valid, n_holdout = dask.compute(P_train.shape[0], P_valid.shape[0],
                                               parts["holdout"].shape[0])
    watch.lap("preprocess", f"split {n_train:,} train / {n_valid:,} validation / "
                            f"{n_holdout:,} holdout rows; {len(P_train.columns)} columns "
                            "after the shared preprocessing")

    # -- search: candidates x folds on an in-memory sample of the training rows -----------
    from pipeline.models import training_mode

    sample = None  # computed to the driver only when a search or a sample family needs it
    if _needs_search(job) or any(training_mode(f, data.task) == "sample" for f in job.models):
        sample = _sample(parts["train"], min(job.search.sample_rows, n_train),
                         data.split.seed)
    searches = _load_searches(stages.get("search"))
    if searches is None:
        searches = _search(job, sample, feature_columns, classes, client, watch,
                           full=(prefix, P_train, y_train, P_valid, y_valid))
        stages.put("search", _search_files(searches))
    else:
        watch.lap("search", "search: done by an earlier run of this job (stage kept)")

    # -- train and evaluate each family's best on all rows, its own way --------------------
    import numpy as np

    from pipeline import train

    train_eval = parts["train"]
    eval_rows = min(n_holdout, TRAIN_EVAL_ROWS)
    if n_train > eval_rows:  # the train side of the overfit check needs only a sample
        train_eval = train_eval.sample(frac=eval_rows / n_train, random_state=data.split.seed)
    entries: dict[str, dict[str, Any]] = {}
    for family, found in searches.items():
        cached = stages.get(f"family:{family}")
        if cached is not None:
            entries[family] = _load_entry(cached, found, job, classes)
            watch.lap(f"train:{family}", f"{family}: trained and evaluated by an earlier run "
                                         "of this job (stage kept)")
            continue
        tail = Pipeline(tail_steps(job, family))
        T_train = tail.fit_transform(P_train, y_train)
        T_valid = tail.transform(P_valid)
        sample_Xy = None
        if training_mode(family, data.task) == "sample":
            rows = sample.head(select.family_rows(family, job.search.sample_rows))
            sample_Xy = (tail.transform(prefix.transform(rows)),
                         _encode_partition(rows[data.target], classes) if classes
                         else rows[data.target].to_numpy(dtype=np.float64))
        with _peak_memory(client) as peak:
            fitted = train.refit(family, data.task, found.best_params, X_train=T_train,
                                 y_train=y_train, X_valid=T_valid, y_valid=y_valid,
                                 sample=sample_Xy, n_classes=n_classes,
                                 early_stopping_rounds=job.train.early_stopping_rounds,
                                 seed=job.search.seed, client=client,
                                 retries=job.train.retries,
                                 checkpoint=stages.path(f"checkpoints/{family}.ubj"),
                                 checkpoint_every=job.train.checkpoint_every)
        predictor = Predictor(task=data.task, target=data.target, classes=classes,
                              preprocessor=Pipeline(prefix.steps + tail.steps),
                              model=fitted.model, threshold=job.evaluate.threshold,
                              family=family)
        clock = time.perf_counter()
        holdout_metrics = _evaluate(client, predictor, parts["holdout"], job, slices=True)
        predict_seconds = time.perf_counter() - clock
        train_metrics = _evaluate(client, predictor, train_eval, job, slices=False)
        entries[family] = {"search": found, "fit": fitted, "predictor": predictor,
                           "holdout": holdout_metrics, "train": train_metrics,
                           "peak_memory": peak.bytes, "predict_seconds": predict_seconds}
        stages.put(f"family:{family}", _entry_files(entries[family]))
        watch.lap(f"train:{family}", f"{family} ({fitted.training}): fitted in "
                                     f"{fitted.seconds:.1f} s, holdout {job.primary_metric} = "
                                     f"{_fmt(holdout_metrics.get(job.primary_metric))}")
    del P_train, P_valid  # release the training matrices on the workers

    # -- choose: the best mean CV score; ties by the lower fit cost -----------------------
    winner = choose(searches, job.primary_metric)
    chosen = entries[winner]
    predictor, holdout_metrics = chosen["predictor"], chosen["holdout"]
    if data.task == "binary" and (job.evaluate.min_precision or job.evaluate.min_recall):
        # the operating point is chosen on the validation rows, so that the holdout figures
        # at it are an honest estimate (chosen on the holdout, they would flatter it)
        on_valid = _evaluate(client, predictor, parts["valid"], job, slices=False)
        predictor.threshold = float(on_valid["chosen_threshold"])
        holdout_metrics = _evaluate(client, predictor, parts["holdout"], job, slices=True,
                                    threshold=predictor.threshold)
        holdout_metrics.update(chosen_threshold=predictor.threshold,
                               chosen_threshold_source=on_valid["chosen_threshold_source"],
                               chosen_threshold_split="validation")
        # the leaderboard and the overfitting check compare train and holdout at the
        # operating point the bundle scores with
        chosen["holdout"] = holdout_metrics
        chosen["train"] = _evaluate(client, predictor, train_eval, job, slices=False,
                                    threshold=predictor.threshold)
    head = evaluate.headline(holdout_metrics, data.task)
    overfit = evaluate.overfit_check(chosen["train"], holdout_metrics,
                                     job.evaluate.overfit_bound)
    board = leaderboard(entries, winner, job, n_holdout)
    watch.lap("evaluate", f"chosen: {winner}; holdout {job.primary_metric} = "
                          f"{_fmt(holdout_metrics.get(job.primary_metric))}")
    fitted = chosen["fit"]
    prep = predictor.preprocessor

    # -- bundle ---------------------------------------------------------------------------
    import cluster

    sample = parts["holdout"].head(SAMPLE_ROWS, npartitions=-1, compute=True)
    sample_pred = predictor.predict_frame(sample)
    run_id = artifacts.new_run_id(job.fingerprint())
    metrics_doc = {
        "task": data.task, "primary_metric": job.primary_metric, "headline": head,
        "holdout": holdout_metrics, "train": evaluate.headline(chosen["train"], data.task),
        "overfit": overfit,
        "rows": {"total": summary.rows, "train": n_train, "valid": n_valid,
                 "holdout": n_holdout},
        "model": {"family": winner, "training": fitted.training, "params": fitted.params,
                  "fit_seconds": round(fitted.seconds, 3), **fitted.details,
                  "importance": _importance(fitted.model, predictor, sample)},
        "leaderboard": board,
        "search": {family: found.to_json() for family, found in searches.items()},
        "threshold": predictor.threshold,
        "preprocess": {"steps": [name for name, _ in prep.steps],
                       "dropped": _dropped(prep), "duplicates_removed": duplicates},
        "timings": watch.stages,
    }
    schema_doc = {
        "task": data.task, "target": data.target, "classes": classes,
        "threshold": predictor.threshold, "family": winner,
        "columns": {c: str(raw.dtypes[c]) for c in feature_columns},
        "id_columns": list(data.id_columns),
        "categories": {c: list(v) for c, v in _categories(prep).items()},
        "model_inputs": [str(c) for c in predictor.transform(sample.head(1)).columns],
        "kernels": _kernel_fingerprints(prep),
    }
    model_name, model_data = artifacts.model_bytes(fitted.model)
    meta = {
        "name": job.name, "task": data.task, "family": winner,
        "data": {"url": data.train, "fingerprint": source.fingerprint, "files":
                 len(source.files), "bytes": source.bytes, "rows": summary.rows},
        "headline": head, "cluster": cluster.describe(client),
    }
    perf.close()  # writes the Dask performance report of everything above
    report_html = _report(job, metrics_doc, schema_doc, summary, meta, run_id, sample,
                          sample_pred)
    files = {
        "job.yaml": job.to_yaml().encode(),
        "preprocessor.skops": artifacts.dumps_skops(prep),
        model_name: model_data,
        "schema.json": _json(schema_doc),
        "metrics.json": _json(metrics_doc),
        "sample.parquet": _parquet(sample.assign(**{f"__pred_{c}": sample_pred[c]
                                                   for c in sample_pred.columns})),
        "data_summary.json": _json(summary.to_json()),
        "cv_results.parquet": _parquet(_cv_table(searches)),
        "report.html": report_html.encode(),
        PERFORMANCE_REPORT: Path(perf_path).read_bytes(),
    }
    manifest = artifacts.write_run(job.output, run_id, files, meta=meta,
                                   storage_options=options)
    artifacts.publish(job.output, job.name, manifest, storage_options=options,
                      summary={"headline": head, "family": winner})
    stages.clear()  # published: nothing left to resume
    run_url = artifacts.join(job.output, "runs", run_id)
    model_url = artifacts.join(job.output, "models", job.name)
    watch.lap("bundle", f"bundle written: {run_url}")
    return RunResult(run_id=run_id, run_url=run_url, model_url=model_url, task=data.task,
                     metrics=metrics_doc, headline=head, manifest=manifest,
                     timings=watch.stages, leaderboard=board, family=winner)


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


def check_models(job: JobSpec) -> None:
    """Every family's parameter names and values, checked before any data is read."""
    from pipeline.models import inner_estimator, make_estimator
    from pipeline.select import split_grid
    from pipeline.train import xgb_params

    for family, params in job.models.items():
        fixed, searched = split_grid(params)
        first = {k: v[0] for k, v in searched.items() if isinstance(v, list)}
        if family in ("xgboost", "random_forest"):
            xgb_params({**_defaults(family, job), **fixed, **first}, task=job.data.task,
                       n_classes=None, seed=job.search.seed, family=family)
            continue
        estimator = inner_estimator(make_estimator(family, job.data.task, {**fixed, **first}))
        if hasattr(type(estimator), "_parameter_constraints"):
            try:  # scikit-learn's own parameter constraints, without fitting
                estimator._validate_params()
            except (ValueError, TypeError) as exc:
                raise ValueError(f"models.{family}: {exc}") from None


def _defaults(family: str, job: JobSpec) -> dict[str, Any]:
    from pipeline.models import defaults

    return defaults(family, job.data.task)


def _candidates(params: Mapping[str, Any], n_iter: int) -> int:
    import math

    lists = [len(v) for v in params.values() if isinstance(v, list)]
    if any(isinstance(v, dict) for v in params.values()):
        return n_iter
    return math.prod(lists) if lists else 1


def _needs_search(job: JobSpec) -> bool:
    """A choice to make: several families, or a family with several candidates."""
    counts = [_candidates(p, job.search.n_iter) for p in job.models.values()]
    return len(counts) > 1 or counts[0] > 1


def _search(job: JobSpec, sample: Any, feature_columns: Sequence[str], classes: Any,
            client: Any, watch: Stopwatch, full: tuple) -> dict[str, Any]:
    """Each family's best candidate (no CV at all when there is nothing to choose between)."""
    import numpy as np
    import pandas as pd
    from sklearn.pipeline import Pipeline

    from pipeline import select
    from pipeline.models import make_estimator
    from pipeline.preprocess import prefix_steps, tail_steps

    task, search = job.data.task, job.search
    if not _needs_search(job):
        family = next(iter(job.models))
        return {family: select.SearchResult(
            family=family, method="none", best_params=dict(job.models[family]), cv_mean=None,
            cv_std=None, fit_seconds=0.0, candidates=1, cv_results=pd.DataFrame())}
    y = np.asarray(_encode_partition(sample[job.data.target], classes) if classes
                   else sample[job.data.target].to_numpy(dtype="float64"))
    X = sample[list(feature_columns)]
    n_classes = len(classes) if classes else None
    out = {}
    for family, params in job.models.items():
        if search.strategy == "full" and family == "xgboost":
            found = select.search_full(job, params, full, n_classes, client)
        else:
            fixed, _ = select.split_grid(params)
            pipeline = Pipeline(prefix_steps(job, feature_columns, n_classes)
                                + tail_steps(job, family)
                                + [("model", make_estimator(family, task, fixed,
                                                            search.seed))])
            rows = select.family_rows(family, search.sample_rows)
            # a family capped below the sample (kernel SVM, kNN) gets a random share of it,
            # not its first rows (the sample is in partition order: often time order)
            take = (np.sort(np.random.default_rng(search.seed).permutation(len(X))[:rows])
                    if rows < len(X) else slice(None))
            found = select.search_family(
                family, pipeline, X.iloc[take], y[take], params=params, task=task,
                primary=job.primary_metric, method=search.method, cv=search.cv,
                n_iter=search.n_iter, factor=search.factor, seed=search.seed, client=client,
                patience=job.train.early_stopping_rounds, budget=search.budget)
        spread = f" ± {found.cv_std:.4f}" if found.cv_std is not None else ""
        watch.lap(f"search:{family}", f"{family}: {found.candidates} candidate(s), "
                                      f"{found.method} search, best {job.primary_metric} = "
                                      f"{_fmt(found.cv_mean)}{spread}")
        out[family] = found
    return out


def _sample(frame: Any, rows: int, seed: int) -> Any:
    """About ``rows`` training rows, chosen by content hash (the same on any partitioning)."""
    import numpy as np

    from pipeline.frames import compute, reduce_partitions, row_hash

    (n,) = compute(frame.shape[0])
    share = min(1.0, rows / max(int(n), 1))
    threshold = np.uint64(min(int(share * 2**64), 2**64 - 1))

    def keep(df: Any) -> Any:
        if share >= 1:
            return df
        return df[row_hash(df, seed + 31) <= threshold]

    import pandas as pd

    (sample,) = compute(reduce_partitions(frame, keep, lambda *p: pd.concat(p)))
    # a stable order (by hash) so "the first n rows" of a family's smaller sample are random
    order = np.argsort(row_hash(sample, seed + 37), kind="stable")
    return sample.iloc[order].reset_index(drop=True)


class _peak_memory:
    """The cluster's peak process memory while the block runs (distributed's sampler)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.bytes: int | None = None

    def __enter__(self) -> _peak_memory:
        from distributed.diagnostics import MemorySampler

        self._sampler = MemorySampler()
        self._context = self._sampler.sample("fit", client=self.client, measure="process",
                                             interval=0.25)
        self._context.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._context.__exit__(*exc)
        series = self._sampler.to_pandas()
        self.bytes = int(series.max().max()) if len(series) else None


def choose(searches: Mapping[str, Any], primary: str) -> str:
    """The selection rule across families: best mean CV score, ties by lower fit time."""
    from pipeline.models import GREATER_IS_BETTER

    def key(family: str) -> tuple:
        found = searches[family]
        score = found.cv_mean
        if score is None:
            return (float("inf"), found.fit_seconds)
        return (-score if GREATER_IS_BETTER[primary] else score, found.fit_seconds)

    return min(searches, key=key)


def leaderboard(entries: Mapping[str, Mapping[str, Any]], winner: str, job: JobSpec,
                n_holdout: int) -> list[dict[str, Any]]:
    """One row per family: CV, holdout, overfit gap, cost, and how it was trained."""
    from pipeline import evaluate
    from pipeline.models import FAMILIES

    primary = job.primary_metric
    rows = []
    for family, entry in entries.items():
        found, fitted = entry["search"], entry["fit"]
        holdout = evaluate.headline(entry["holdout"], job.data.task)
        train = evaluate.headline(entry["train"], job.data.task)
        gap = evaluate.overfit_check(entry["train"], entry["holdout"],
                                     job.evaluate.overfit_bound)
        rows.append({
            "family": family, "chosen": family == winner, "training": fitted.training,
            "how": FAMILIES[family]["how"], "metric": primary,
            "cv_mean": found.cv_mean, "cv_std": found.cv_std, "candidates": found.candidates,
            "search": found.method, "params": fitted.params, "holdout": holdout,
            "train": train, "gap": gap.get("metrics", {}).get(primary, {}).get("gap"),
            "overfit": bool(gap.get("overfit")), "fit_seconds": round(fitted.seconds, 3),
            "search_seconds": round(found.seconds, 3),
            "predict_rows_per_s": round(n_holdout / max(entry["predict_seconds"], 1e-9)),
            "peak_memory_bytes": entry["peak_memory"],
        })
    return rows


def _search_files(searches: Mapping[str, Any]) -> dict[str, bytes]:
    return {"search.json": _json({f: r.to_json() for f, r in searches.items()}),
            "cv_results.parquet": _parquet(_cv_table(searches))}


def _load_searches(files: Mapping[str, bytes] | None) -> dict[str, Any] | None:
    """The search stage of an earlier run, as SearchResults (None: not done)."""
    if files is None:
        return None
    import pandas as pd

    from pipeline.select import SearchResult

    docs = json.loads(files["search.json"])
    table = pd.read_parquet(io.BytesIO(files["cv_results.parquet"]))
    out = {}
    for family, doc in docs.items():
        rows = table[table["family"] == family].copy() if "family" in table else table.iloc[:0]
        if len(rows):
            rows["params"] = rows["params"].map(json.loads)
        out[family] = SearchResult(
            family=family, method=doc["method"], best_params=doc["best_params"],
            cv_mean=doc["cv_mean"], cv_std=doc["cv_std"], fit_seconds=doc["fit_seconds"],
            candidates=doc["candidates"], cv_results=rows.reset_index(drop=True),
            seconds=doc["seconds"])
    return out


def _entry_files(entry: Mapping[str, Any]) -> dict[str, bytes]:
    """A family's trained model, preprocessor and evaluation, for the stage store."""
    from pipeline import artifacts

    fitted = entry["fit"]
    name, data = artifacts.model_bytes(fitted.model)
    doc = {"fit": {"training": fitted.training, "params": fitted.params,
                   "seconds": fitted.seconds, "rows": fitted.rows, "details": fitted.details},
           "holdout": entry["holdout"], "train": entry["train"],
           "peak_memory": entry["peak_memory"], "predict_seconds": entry["predict_seconds"]}
    return {name: data, "preprocessor.skops": artifacts.dumps_skops(
        entry["predictor"].preprocessor), "entry.json": _json(doc)}


def _load_entry(files: Mapping[str, bytes], found: Any, job: JobSpec,
                classes: Any) -> dict[str, Any]:
    from pipeline import artifacts
    from pipeline.predictor import Predictor
    from pipeline.train import Refit

    doc = json.loads(files["entry.json"])
    if "model.ubj" in files:
        import xgboost

        model = xgboost.Booster()
        model.load_model(bytearray(files["model.ubj"]))
    else:
        model = artifacts.loads_skops(files["model.skops"], f"stage {found.family}")
    fit = doc["fit"]
    fitted = Refit(found.family, fit["training"], model, fit["params"], fit["seconds"],
                   fit["rows"], fit["details"])
    predictor = Predictor(task=job.data.task, target=job.data.target, classes=classes,
                          preprocessor=artifacts.loads_skops(files["preprocessor.skops"],
                                                             f"stage {found.family}"),
                          model=model, threshold=job.evaluate.threshold, family=found.family)
    return {"search": found, "fit": fitted, "predictor": predictor, "holdout": doc["holdout"],
            "train": doc["train"], "peak_memory": doc["peak_memory"],
            "predict_seconds": doc["predict_seconds"]}


def _cv_table(searches: Mapping[str, Any]) -> Any:
    import json

    import pandas as pd

    tables = [found.cv_results.assign(params=lambda d: d["params"].map(
        lambda p: json.dumps(p, sort_keys=True, default=str)))
        for found in searches.values() if len(found.cv_results)]
    if not tables:
        return pd.DataFrame({"family": pd.Series(dtype="str"),
                             "params": pd.Series(dtype="str")})
    return pd.concat(tables, ignore_index=True)


def _evaluate(client: Any, predictor: Any, frame: Any, job: JobSpec, *, slices: bool,
              threshold: float | None = None) -> dict:
    """Metrics of ``predictor`` on ``frame``; ``threshold`` (default: the job's) labels rows."""
    from pipeline import evaluate

    keep = list(job.evaluate.slices) if slices else []
    [remote] = client.scatter([predictor], broadcast=True, hash=False)
    meta = predictor.evaluation_frame(frame._meta, keep=keep)
    pred = frame.map_partitions(_evaluation_partition, remote, keep, meta=meta)
    return evaluate.evaluate_predictions(
        pred, job.data.task, class_names=[str(c) for c in predictor.classes or []] or None,
        threshold=job.evaluate.threshold if threshold is None else threshold,
        min_precision=job.evaluate.min_precision,
        min_recall=job.evaluate.min_recall, slices=keep, top_levels=job.evaluate.top_levels)


def _encode_partition(labels: Any, classes: list[Any]) -> Any:
    import pandas as pd

    from pipeline.predictor import encode_labels

    return pd.Series(encode_labels(labels, classes), index=labels.index, name=labels.name)


def _evaluation_partition(df: Any, predictor: Any, keep: list[str]) -> Any:
    return predictor.evaluation_frame(df, keep=keep)


def _importance(model: Any, predictor: Any, sample: Any) -> dict[str, float]:
    """Feature importance, largest first: XGBoost's total gain, a tree's impurity decrease,
    or a linear model's |coefficient| on the scaled inputs; empty where none is defined."""
    import numpy as np

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


def _report(job: JobSpec, metrics: Mapping[str, Any], schema: Mapping[str, Any],
            summary: Any, meta: Mapping[str, Any], run_id: str, sample: Any,
            predictions: Any) -> str:
    """The self-contained report.html of this run (pipeline/report.py)."""
    import yaml

    from pipeline import report

    docs = {
        "job": yaml.safe_load(job.to_yaml()), "metrics": json.loads(_json(metrics)),
        "schema": json.loads(_json(schema)), "data_summary": summary.to_json(),
        "manifest": {**json.loads(_json(dict(meta))), "run_id": run_id,
                     "created_at": _utcnow(), "versions": _versions()},
        "sample": sample.assign(**{f"__pred_{c}": predictions[c]
                                   for c in predictions.columns}),
        "performance_report": PERFORMANCE_REPORT,
    }
    return report.render(docs)


def _utcnow() -> str:
    from pipeline.artifacts import utcnow

    return utcnow()


def _versions() -> dict[str, Any]:
    from pipeline.artifacts import library_versions

    return library_versions()


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


def _short(value: float, sign: bool = False) -> str:
    """4 decimals for scores, whole numbers for figures in the target's unit (RMSE $)."""
    spec = ("+" if sign else "") + (",.0f" if abs(value) >= 100 else ".4f")
    return format(value, spec)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4f}"
