"""The final fit of each family's best candidate on the training rows, its own way.

XGBoost (and XGBoost random forests) train with ``xgboost.dask`` on the cluster: a
``DaskQuantileDMatrix`` built from the persisted, preprocessed partitions (it keeps only the
quantised matrix, not a float copy), early stopping on the validation fold, native
categoricals. Parameters keep scikit-learn's names (``max_depth``, ``learning_rate``,
``n_estimators``) so that a winner of an in-memory search with ``XGBClassifier`` refits here
unchanged: ``XGBModel.get_xgb_params`` does the translation.

Other families refit as :mod:`pipeline.models` says (:func:`refit`): dask-ml's logistic
regression on all rows, ``partial_fit`` over every partition, or scikit-learn on a sample. The
fitted model is always a plain scikit-learn estimator or an XGBoost booster, so it is stored
with skops or natively, never pickled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from distributed import Client

    from pipeline.config import JobSpec
    from pipeline.steps import Prefix

logger = logging.getLogger(__name__)

#: parameters we manage ourselves; a user value would be ignored or conflict.
_MANAGED = {"n_jobs", "nthread", "enable_categorical", "early_stopping_rounds", "objective",
            "num_class", "eval_metric", "callbacks"}


@dataclass
class XGBFit:
    """A trained booster and how it was trained."""

    booster: Any
    params: dict[str, Any]
    n_estimators: int
    best_iteration: int
    history: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    seconds: float = 0.0
    #: one entry per training attempt: {attempt, resumed_from, ok, error?, lost?}
    attempts: list[dict[str, Any]] = field(default_factory=list)


def eval_metrics(task: str) -> list[str]:
    """XGBoost's eval metrics per task; the LAST one drives early stopping.

    It is a proper scoring rule (log loss, multi-class log loss, RMSE): it keeps improving
    while the model does. A saturating metric (AUC, error rate) reaches its best after a few
    rounds on a small validation set and would stop boosting there (1 to 6 trees kept).
    """
    return {"binary": ["auc", "logloss"], "multiclass": ["merror", "mlogloss"],
            "regression": ["mae", "rmse"]}[task]


def xgb_params(params: Mapping[str, Any], *, task: str, n_classes: int | None,
               seed: int, family: str = "xgboost") -> tuple[dict[str, Any], int]:
    """Booster parameters and the number of rounds, from scikit-learn style parameters.

    Examples
    --------
    >>> p, n = xgb_params({"max_depth": 4, "n_estimators": 50}, task="binary",
    ...                   n_classes=2, seed=0)
    >>> p["objective"], p["max_depth"], n
    ('binary:logistic', 4, 50)
    """
    from pipeline.errors import did_you_mean
    from pipeline.models import estimator_class

    given = {k: v for k, v in params.items() if k not in _MANAGED}
    given.setdefault("random_state", seed)
    cls = estimator_class(family, task)  # XGB(RF)Classifier / XGB(RF)Regressor
    known = set(cls().get_params())
    for name in given:
        if name not in known:
            hint = did_you_mean(name, sorted(known))
            raise ValueError(f"models.{family}: unknown parameter {name!r}{hint} (parameters "
                             f"of {cls.__name__}: {', '.join(sorted(known))})")
    model = cls(**given)
    try:
        booster = model.get_xgb_params()
        # a random forest is one round of n_estimators parallel trees (num_parallel_tree)
        n_rounds = int(model.get_num_boosting_rounds())
    except (TypeError, ValueError):
        raise ValueError(f"models.{family}.n_estimators must be an integer, got "
                         f"{model.n_estimators!r}") from None
    # keep only what was set; XGBoost's defaults apply to the rest
    booster = {k: v for k, v in booster.items() if v is not None}
    booster["objective"] = {"binary": "binary:logistic", "multiclass": "multi:softprob",
                            "regression": "reg:squarederror"}[task]
    if task == "multiclass":
        booster["num_class"] = int(n_classes or 3)
    booster["eval_metric"] = eval_metrics(task)
    # xgboost.dask takes each worker's thread count when nthread is unset: never more
    # threads than the worker has, so training does not oversubscribe the cores.
    booster.pop("nthread", None)
    booster.pop("n_jobs", None)
    booster.pop("enable_categorical", None)
    _try(booster, task)
    return booster, n_rounds


def _try(booster: Mapping[str, Any], task: str) -> None:
    """One round on four rows: bad values fail here, before any cluster work."""
    import warnings

    import numpy as np
    import xgboost

    label = np.array([0.0, 1.0, 0.0, 1.0]) if task != "multiclass" else np.array(
        [0.0, 1.0, 2.0, 0.0])
    matrix = xgboost.DMatrix(np.arange(8.0).reshape(4, 2), label=label)
    try:
        with warnings.catch_warnings():  # "No visible GPU": check_device's job, on the workers
            warnings.simplefilter("ignore")
            xgboost.train({**booster, "nthread": 1}, matrix, 1)
    except xgboost.core.XGBoostError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"models: XGBoost refuses these parameters: {first}") from None


def check_devices(job: JobSpec, client: Client) -> None:
    """Refuse, before any data is read, an XGBoost ``device`` of the job (fixed or searched)
    that asks for a GPU the workers do not have (:func:`check_device`)."""
    for family, device in _devices(job):
        check_device(client, device, f"remove models.{family}.device from the job")


def boosting_device(job: JobSpec) -> str:
    """The XGBoost ``device`` the job's boosting trains on (the first one it names, else
    ``cpu``): ``schema.json`` records it, and scoring predicts there unless told otherwise."""
    return next((device for _, device in _devices(job)), "cpu")


def _devices(job: JobSpec) -> list[tuple[str, str]]:
    """(family, device) for every ``device`` value of the job's XGBoost families."""
    out = []
    for family, params in job.models.items():
        value = params.get("device") if family in ("xgboost", "random_forest") else None
        out += [(family, str(v)) for v in (value if isinstance(value, list) else [value])
                if v is not None]
    return out


def on_gpu(device: str) -> bool:
    """Whether an XGBoost ``device`` value asks for a GPU (``cuda``, ``cuda:1``, ``gpu``)."""
    return str(device).split(":")[0].lower() in ("cuda", "gpu")


def check_device(client: Client, device: str, undo: str) -> None:
    """Refuse a GPU ``device`` that some worker of ``client`` cannot use.

    XGBoost 3.2 does not fail when asked for a GPU it cannot see: it logs "No visible GPU is
    found, setting device to CPU" and trains (or predicts) on the CPU, hours slower and
    silently (``fail_on_invalid_gpu_id`` does not change that). So every worker trains one
    round on four rows with ``device`` and reports the device XGBoost really used
    (``Booster.save_config``); a worker that fell back to the CPU is a
    :class:`cluster.ClusterError` (exit 5) naming it and ``undo``, what to change instead.
    """
    import cluster

    if not on_gpu(device):
        return
    used = client.run(_device_used, device)
    cpu = sorted(worker for worker, seen in used.items() if not on_gpu(seen))
    if cpu:
        raise cluster.ClusterError(
            f"device {device!r} asks XGBoost for a GPU, but {len(cpu)} of {len(used)} Dask "
            f"worker(s) see none ({', '.join(cpu[:3])}{', ...' if len(cpu) > 3 else ''}); "
            "XGBoost would fall back to the CPU without an error. Start GPU workers (for "
            "example cluster.spec: {module: dask_cuda, class: LocalCUDACluster}) or " + undo)


def _device_used(device: str) -> str:
    """On a worker: the device XGBoost trains on when asked for ``device``."""
    import json
    import warnings

    import xgboost

    matrix = xgboost.DMatrix(np.arange(8.0).reshape(4, 2), label=[0.0, 1.0, 0.0, 1.0])
    with warnings.catch_warnings():  # "No visible GPU is found": the answer, not a problem
        warnings.simplefilter("ignore")
        booster = xgboost.train({"device": device, "nthread": 1}, matrix, 1)
    return json.loads(booster.save_config())["learner"]["generic_param"]["device"]


class TrainingError(RuntimeError):
    """Training failed (after the allowed retries); nothing from it is published."""


def fit_xgboost(X_train: Any, y_train: Any, X_valid: Any, y_valid: Any, *,
                params: Mapping[str, Any], task: str, n_classes: int | None,
                early_stopping_rounds: int | None, seed: int = 0,
                client: Any = None, family: str = "xgboost", retries: int = 0,
                checkpoint: tuple[Any, str] | None = None,
                checkpoint_every: int = 50, min_delta: float = 0.0) -> XGBFit:
    """Train with ``xgboost.dask`` on the cluster; returns the booster cut at its best round.

    ``X_*`` are dask DataFrames (categoricals with known categories), ``y_*`` dask Series of
    class codes / values, all from the same persisted collection (aligned partitions).

    Early stopping watches the validation rows' loss (:func:`eval_metrics`): boosting stops
    after ``early_stopping_rounds`` rounds in which it did not drop by more than ``min_delta``.

    xgboost.dask cannot survive a lost worker ("Ring Allreduce failed"; dmlc/xgboost#9419), so
    a failed attempt during which the cluster lost a worker is retried, up to ``retries``
    times: the matrices are rebuilt (Dask recomputes lost input partitions by lineage) and,
    with ``checkpoint`` = ``(filesystem, path)``, training resumes from the last booster saved
    every ``checkpoint_every`` rounds rather than from round 0. A checkpoint left by an earlier
    run of the same job and data is resumed from as well.
    """
    from distributed import get_client

    client = client or get_client()
    booster_params, n_rounds = xgb_params(params, task=task, n_classes=n_classes, seed=seed,
                                          family=family)
    if n_rounds == 1:  # a random forest: one round, nothing to stop early
        early_stopping_rounds = None
    if X_valid is None:
        early_stopping_rounds = None
    start = time.perf_counter()
    history: dict[str, dict[str, list[float]]] = {}
    attempts: list[dict[str, Any]] = []
    for attempt in range(retries + 1):
        resume, saved = _read_checkpoint(checkpoint)
        done = _rounds(resume)
        # the scores of the rounds before the resume: carried by the checkpoint (a rerun in
        # another process, or a retry here), so early stopping and the learning curve go on
        # exactly as an uninterrupted training would have
        history = {n: {m: list(v[:done]) for m, v in c.items()}
                   for n, c in (saved or history).items()} if done else {}
        workers = set(client.scheduler_info(n_workers=-1)["workers"])
        try:
            output = _train_once(client, booster_params, X_train, y_train, X_valid, y_valid,
                                 rounds=n_rounds - done, resume=resume,
                                 stopping=_early_stopping(early_stopping_rounds, task,
                                                          min_delta, history),
                                 checkpoint=checkpoint, every=checkpoint_every,
                                 prior=history)
            attempts.append({"attempt": attempt + 1, "resumed_from": done, "ok": True})
            break
        except Exception as exc:
            now = set(client.scheduler_info(n_workers=-1)["workers"])
            lost = sorted(workers - now)
            attempts.append({"attempt": attempt + 1, "resumed_from": done, "ok": False,
                             "error": f"{type(exc).__name__}: {exc}"[:300], "lost": lost})
            if not lost and not _looks_like_lost_worker(exc):
                raise  # a real error (bad data, bad parameters): retrying cannot help
            if attempt == retries:
                raise TrainingError(
                    f"{family} training failed after {attempt + 1} attempt(s): the cluster "
                    f"lost worker(s) {lost or '(unknown)'} ({type(exc).__name__}: {exc}). Add "
                    "workers or memory, or raise train.retries") from exc
            logger.warning("%s training lost worker(s) %s at attempt %d: retrying from round "
                           "%d", family, lost or "(unknown)", attempt + 1,
                           _rounds(_read_checkpoint(checkpoint)[0]))
            _wait_for_workers(client, max(1, len(workers)))
    booster = output["booster"]
    for name, curves in output["history"].items():
        for metric, values in curves.items():
            history.setdefault(name, {}).setdefault(metric, []).extend(float(v) for v in values)
    best = booster.best_iteration if early_stopping_rounds else None
    best = int(best if best is not None else booster.num_boosted_rounds() - 1)
    if best + 1 < booster.num_boosted_rounds():
        booster = booster[: best + 1]  # the saved model is exactly the one evaluated
    seconds = time.perf_counter() - start
    logger.debug("%s: %d rounds (best %d) in %.1f s", family, n_rounds, best + 1, seconds)
    return XGBFit(booster=booster, params={**dict(params), "n_estimators": n_rounds},
                  n_estimators=best + 1, best_iteration=best, history=history,
                  seconds=seconds, attempts=attempts)


def fit_xgboost_cv(X: Any, y: Any, *, params: Mapping[str, Any], task: str,
                   n_classes: int | None, folds: int, early_stopping_rounds: int | None,
                   min_delta: float = 0.0, seed: int = 0, client: Any = None,
                   family: str = "xgboost") -> XGBFit:
    """Small data: the boosting rounds chosen by k-fold CV, then one fit on all the rows.

    ``X``, ``y``: every training row (train + validation; dask or pandas), few enough
    (``train.cv_rounds_below``) to hold in memory. As ``xgboost.cv`` does, each fold trains on
    the other folds and records its held-out loss (:func:`eval_metrics`) per round; the folds
    run in parallel as tasks on the cluster. A fold stops after ``2 * early_stopping_rounds``
    rounds without improvement (twice the patience, so the mean curve is known well past each
    fold's best). The round count is the best round of the mean held-out loss over the rounds
    every fold ran; the model is then fitted on all rows with it (a single-validation split of
    a few dozen rows would choose it by noise, and keep those rows out of the model).
    """
    import dask
    from distributed import get_client

    from pipeline.models import cv_splitter

    client = client or get_client()
    start = time.perf_counter()
    booster_params, n_rounds = xgb_params(params, task=task, n_classes=n_classes, seed=seed,
                                          family=family)
    X, y = dask.compute(X, y)
    y = np.asarray(y)
    metric = eval_metrics(task)[-1]
    splits = list(cv_splitter(task, folds, seed).split(np.zeros(len(y)), y))
    [X_all, y_all] = client.scatter([X, y], broadcast=True)
    patience = 2 * early_stopping_rounds if early_stopping_rounds else None
    curves = client.gather([client.submit(
        _boost_rows, X_all, y_all, train, test, booster_params, n_rounds, patience, min_delta,
        metric, pure=False) for train, test in splits])
    common = min(len(c["test"]) for c in curves)
    test = np.mean([c["test"][:common] for c in curves], axis=0)
    train = np.mean([c["train"][:common] for c in curves], axis=0)
    best = int(np.argmin(test)) + 1 if early_stopping_rounds else n_rounds
    booster = _booster(client.submit(_boost_rows, X_all, y_all, None, None, booster_params,
                                     best, None, 0.0, metric, pure=False).result())
    client.cancel([X_all, y_all])
    return XGBFit(booster=booster, params={**dict(params), "n_estimators": n_rounds},
                  n_estimators=best, best_iteration=best - 1,
                  history={"train": {metric: train.tolist()}, "valid": {metric: test.tolist()}},
                  seconds=time.perf_counter() - start,
                  attempts=[{"attempt": 1, "resumed_from": 0, "ok": True}])


def fit_xgboost_rows(X: Any, y: Any, *, params: Mapping[str, Any], rounds: int, task: str,
                     n_classes: int | None, seed: int = 0, client: Any = None,
                     family: str = "xgboost") -> Any:
    """A booster of ``rounds`` rounds fitted on every row of ``X``, ``y`` (small data: one
    task on the cluster)."""
    import dask
    from distributed import get_client

    client = client or get_client()
    booster_params, _ = xgb_params(params, task=task, n_classes=n_classes, seed=seed,
                                   family=family)
    X, y = dask.compute(X, y)
    return _booster(client.submit(_boost_rows, X, np.asarray(y), None, None, booster_params,
                                  rounds, None, 0.0, eval_metrics(task)[-1], pure=False).result())


def _booster(result: Mapping[str, Any]) -> Any:
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(bytearray(result["booster"]))
    return booster


def _boost_rows(X: Any, y: np.ndarray, train: np.ndarray | None, test: np.ndarray | None,
                params: Mapping[str, Any], rounds: int, patience: int | None,
                min_delta: float, metric: str) -> dict[str, Any]:
    """One CV fold (its held-out loss per round) or, without ``train``, the fit on all rows;
    runs as a task, with the worker's threads."""
    import xgboost as xgb
    from distributed import get_worker

    params = {**params, "nthread": get_worker().state.nthreads}
    if train is None:
        matrix = xgb.QuantileDMatrix(X, y, enable_categorical=True,
                                     max_bin=params.get("max_bin", 256))
        # the model as UBJSON bytes: a Booster in a task's result defeats Dask's sizeof
        # (a warning per task) and is not what a store would keep anyway
        return {"booster": xgb.train(params, matrix, rounds, verbose_eval=False).save_raw("ubj")}
    fit = xgb.QuantileDMatrix(X.iloc[train], y[train], enable_categorical=True,
                              max_bin=params.get("max_bin", 256))
    held = xgb.QuantileDMatrix(X.iloc[test], y[test], enable_categorical=True, ref=fit)
    log: dict[str, Any] = {}
    stop = ([xgb.callback.EarlyStopping(rounds=patience, metric_name=metric, data_name="test",
                                        maximize=False, min_delta=min_delta)]
            if patience else [])
    xgb.train(params, fit, rounds, evals=[(fit, "train"), (held, "test")], evals_result=log,
              callbacks=stop, verbose_eval=False)
    return {"train": log["train"][metric], "test": log["test"][metric]}


def _early_stopping(rounds: int | None, task: str, min_delta: float,
                    prior: Mapping[str, Mapping[str, list[float]]] | None = None) -> Any:
    """XGBoost's early stopping on the validation rows' loss, or None; continued from the
    ``prior`` scores of the rounds before a resume (:class:`~pipeline.checkpoint.ResumedStopping`)."""
    if not rounds:
        return None
    from pipeline.checkpoint import ResumedStopping

    metric = eval_metrics(task)[-1]
    return ResumedStopping(rounds=rounds, metric_name=metric, data_name="valid",
                           maximize=False, min_delta=min_delta, save_best=False,
                           prior=list((prior or {}).get("valid", {}).get(metric, [])))


def _train_once(client: Any, params: Mapping[str, Any], X_train: Any, y_train: Any,
                X_valid: Any, y_valid: Any, *, rounds: int, resume: Any,
                stopping: Any, checkpoint: tuple[Any, str] | None,
                every: int, prior: Mapping[str, Any] | None = None) -> dict[str, Any]:
    # xgboost.dask waits on its futures with distributed.wait, which uses the *default*
    # client: with another Client alive in this process (a notebook, a test session) that
    # deadlocks, so the given client is made the current one for the whole step
    with client.as_current():
        return _train_on(client, params, X_train, y_train, X_valid, y_valid, rounds=rounds,
                         resume=resume, stopping=stopping, checkpoint=checkpoint, every=every,
                         prior=prior)


#: the training metric of the learning curve comes from at most this many training rows (a
#: fixed, evenly spaced sample): evaluating every training row each round cost 0.6-0.7x of
#: the fit itself at 4M rows (issue #18); 50,000 rows give the curve to about +-0.003 AUC.
CURVE_ROWS = 50_000


def _train_on(client: Any, params: Mapping[str, Any], X_train: Any, y_train: Any,
              X_valid: Any, y_valid: Any, *, rounds: int, resume: Any,
              stopping: Any, checkpoint: tuple[Any, str] | None,
              every: int, prior: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from xgboost import dask as dxgb

    from pipeline.checkpoint import PROGRESS_TOPIC, RoundProgress, StoreCheckpoint

    placed = place_training(client, X_train, y_train, X_valid, y_valid)
    dtrain = dxgb.DaskQuantileDMatrix(client, placed.X_train, placed.y_train,
                                      enable_categorical=True)
    _check_placement(dtrain, placed.plan)
    evals = []
    if placed.X_curve is placed.X_train:
        evals.append((dtrain, "train"))
    else:  # the same bins as the training rows (ref=): built from dtrain's quantiles
        evals.append((dxgb.DaskQuantileDMatrix(client, placed.X_curve, placed.y_curve,
                                               ref=dtrain, enable_categorical=True), "train"))
    if placed.X_valid is not None:
        evals.append((dxgb.DaskQuantileDMatrix(client, placed.X_valid, placed.y_valid,
                                               ref=dtrain, enable_categorical=True), "valid"))

    if rounds <= 0:  # a checkpoint of the whole training: nothing left to do
        return {"booster": resume, "history": {}}
    done = _rounds(resume)
    # a random forest is one round of parallel trees: its fit line says it all
    callbacks = [RoundProgress(done + rounds, start=done)] if done + rounds > 1 else []
    if checkpoint and every:
        callbacks.append(StoreCheckpoint(checkpoint, every, prior=prior))
    if stopping is not None and placed.X_valid is not None:
        callbacks.append(stopping)

    def progress(event: tuple[float, Mapping[str, Any]]) -> None:
        msg = event[1]
        logger.info("           boosting round %s/%s%s", f"{msg['round']:,}",
                    f"{msg['rounds']:,}", "".join(f", {k} {v:.4g}"
                                                  for k, v in msg["metrics"].items()))

    client.subscribe_topic(PROGRESS_TOPIC, progress)
    try:
        return dxgb.train(client, dict(params), dtrain, num_boost_round=rounds, evals=evals,
                          verbose_eval=False, xgb_model=resume, callbacks=callbacks,
                          coll_cfg=collective_config(client))
    finally:
        client.unsubscribe_topic(PROGRESS_TOPIC)


def collective_config(client: Any) -> Any:
    """XGBoost's collective configuration for training on ``client``'s cluster.

    Without an address, xgboost.dask starts its tracker (the process every training worker
    first connects to) on the address it guesses for this host: the machine's network
    address, reachable from the whole network, although the scheduler and the workers of a
    local cluster listen on 127.0.0.1 only (issue #17). When the scheduler and every worker
    are on loopback addresses, all of them are on this machine, so the tracker is bound to
    127.0.0.1. On any other cluster (a user's remote scheduler), xgboost.dask's own choice is
    kept (``None``): the tracker must be reachable from remote workers.

    XGBoost 3.2's workers still bind their ring and error-notice listeners to every
    interface (``RabitComm::Bootstrap`` calls ``TCPSocket::BindHost``, INADDR_ANY, with no
    option; dmlc/xgboost#11551): one listener per worker, for the duration of the
    training only. mlpipe cannot change that from Python.

    Examples
    --------
    >>> collective_config(client).tracker_host_ip          # doctest: +SKIP
    '127.0.0.1'
    """
    from xgboost.collective import Config

    info = client.scheduler_info(n_workers=-1)
    addresses = [info.get("address") or client.scheduler.address, *info.get("workers", {})]
    if addresses and all(_is_local(a) for a in addresses):
        return Config(tracker_host_ip="127.0.0.1")
    return None


def _is_local(address: str) -> bool:
    import ipaddress

    from distributed.comm import get_address_host, parse_address

    scheme, _ = parse_address(address)
    if scheme == "inproc":  # a threaded cluster in this very process
        return True
    host = get_address_host(address).strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Placement:
    """The training, learning-curve and validation rows pinned to workers for xgboost.dask.

    ``plan``: the worker of each training partition, in partition order (empty partitions
    left out); the frames are the same rows, each partition a future on its worker.
    """

    X_train: Any
    y_train: Any
    X_curve: Any
    y_curve: Any
    X_valid: Any
    y_valid: Any
    plan: list[str]


def place_training(client: Any, X_train: Any, y_train: Any, X_valid: Any,
                   y_valid: Any) -> Placement:
    """Pin every partition to a worker chosen by its position, so the same data trains the
    same model (issue #17).

    xgboost.dask trains each worker on the partitions it happens to hold, concatenated, and
    allreduces the workers' histograms in rank order. Where Dask put each partition depends
    on timing (which worker was free, work stealing), so the rows each rank saw, and with
    them the quantile sketch, the floating-point sums and the sampled rows, changed from run
    to run: 7 identical runs gave 4 different models. Here the non-empty training partitions
    are cut into contiguous runs of about equal rows, one run per worker in xgboost.dask's
    rank order (it ranks workers by name, then address), and each is moved there (a copy
    only for the partitions that were elsewhere). The validation rows go the same way over
    the workers that hold training rows (a worker with validation rows but no training rows
    fails with categorical features, and idles otherwise), and the learning curve's sample
    of training rows (:data:`CURVE_ROWS`) is taken on each partition where it lies.

    The placement depends only on the data, the partitioning and the workers' names: the
    same job on a cluster of the same shape (a LocalCluster names its workers 0, 1, ...)
    gives the same model bytes.
    """
    workers = ranked_workers(client)
    X_train, y_train, plan, rows = _pin(client, X_train, y_train, workers)
    used = [w for w in workers if w in set(plan)] or workers
    if X_valid is None:
        X_val = y_val = None
    elif getattr(X_valid, "_name", None) == getattr(X_train, "_name", object()):
        X_val, y_val = X_train, y_train  # evaluated on its own rows
    else:
        X_val, y_val, _, _ = _pin(client, X_valid, y_valid, used)
    X_curve, y_curve = _curve_sample(client, X_train, y_train, rows)
    return Placement(X_train, y_train, X_curve, y_curve, X_val, y_val, plan)


def ranked_workers(client: Any) -> list[str]:
    """The cluster's workers in xgboost.dask's rank order.

    xgboost.dask gives each training worker the task id ``[xgboost.dask-NAME]:ADDRESS`` and
    its tracker ranks them sorted by it (``sortby="task"``).
    """
    info = client.scheduler_info(n_workers=-1)["workers"]
    return sorted(info, key=lambda a: f"[xgboost.dask-{info[a].get('name', a)}]:{a}")


def _pin(client: Any, X: Any, y: Any,
         workers: list[str]) -> tuple[Any, Any, list[str], int]:
    """``X``, ``y`` with partition i (of the non-empty ones) on the worker of its row run;
    the plan (a worker per partition) and the number of rows."""
    import dask.dataframe as dd
    from distributed import wait

    X, y = client.persist([X, y])
    wait([X, y])
    x_parts, y_parts = _futures(X), _futures(y)
    if len(x_parts) != len(y_parts):
        raise ValueError(f"training features and target have different partitions "
                         f"({len(x_parts)} vs {len(y_parts)}): build both from one persisted "
                         "frame")
    lengths = client.gather(client.map(len, x_parts, pure=False))
    keep = [i for i, n in enumerate(lengths) if n] or [0]
    owners = _runs([lengths[i] for i in keep], len(workers))
    plan = [workers[o] for o in owners]

    def pin(parts: list[Any]) -> list[Any]:
        return [client.submit(_same, parts[i], workers=[w], allow_other_workers=False,
                              pure=False) for i, w in zip(keep, plan, strict=True)]

    xs, ys = pin(x_parts), pin(y_parts)
    wait(xs + ys)
    X = dd.from_delayed(xs, meta=X._meta, verify_meta=False)
    y = dd.from_delayed(ys, meta=y._meta, verify_meta=False)
    return X, y, plan, sum(lengths)


def _futures(frame: Any) -> list[Any]:
    """A persisted collection's futures, in partition order (keys are ``(name, index)``)."""
    from distributed import futures_of

    parts = futures_of(frame)
    if len({f.key[0] for f in parts}) != 1 or len(parts) != frame.npartitions:
        raise ValueError(f"expected one future per partition of a persisted frame, got keys "
                         f"{sorted({str(f.key[0]) for f in parts})[:3]}")
    return sorted(parts, key=lambda f: f.key[1])


def _runs(lengths: list[int], n_workers: int) -> list[int]:
    """The worker index of each partition: contiguous runs of about ``total / n_workers``
    rows (each partition goes to the run its middle row falls in).

    >>> _runs([10, 10, 10, 10], 2), _runs([10, 10, 10], 2), _runs([5], 3)
    ([0, 0, 1, 1], [0, 1, 1], [1])
    """
    total = sum(lengths) or 1
    out, start = [], 0
    for n in lengths:
        out.append(min(n_workers - 1, int(n_workers * (start + n / 2) / total)))
        start += n
    return out


def _same(part: Any) -> Any:
    return part


def _every(part: Any, step: int) -> Any:
    return part.iloc[::step]


def _curve_sample(client: Any, X: Any, y: Any, rows: int) -> tuple[Any, Any]:
    """At most about :data:`CURVE_ROWS` evenly spaced training rows, each partition's on its
    worker (a task reads only its own partition, so it runs where that lies)."""
    from distributed import wait

    if rows <= CURVE_ROWS:
        return X, y
    step = -(-rows // CURVE_ROWS)
    Xs = X.map_partitions(_every, step, meta=X._meta)
    ys = y.map_partitions(_every, step, meta=y._meta)
    Xs, ys = client.persist([Xs, ys])
    wait([Xs, ys])
    return Xs, ys


def _check_placement(dtrain: Any, plan: list[str]) -> None:
    """Warn when xgboost.dask's matrix does not sit where :func:`place_training` put it
    (then this model may not be reproducible)."""
    from collections import Counter

    held = {w: len(parts) for w, parts in dtrain.worker_map.items()}
    if held != dict(Counter(plan)):
        logger.warning("xgboost.dask holds the training partitions on %s, not as placed (%s): "
                       "this model may differ from another run's", held, dict(Counter(plan)))


def _looks_like_lost_worker(exc: BaseException) -> bool:
    """Errors xgboost.dask / distributed raise when a worker goes away mid-training."""
    text = f"{type(exc).__name__} {exc}"
    return any(s in text for s in ("Allreduce", "allreduce", "Missing required workers",
                                   "CommClosedError", "KilledWorker", "lost dependencies",
                                   "Connection reset", "Socket", "socket"))


def _wait_for_workers(client: Any, n: int, timeout: float = 120.0) -> None:
    """Nannies restart killed workers; wait (bounded) for the cluster to be whole again."""
    try:
        client.wait_for_workers(n, timeout=timeout)
    except TimeoutError:
        client.wait_for_workers(1, timeout=timeout)  # carry on with fewer, or fail clearly


def _read_checkpoint(target: tuple[Any, str] | None) -> tuple[Any, dict[str, Any]]:
    """The checkpointed booster and the evaluation history it carries, or ``(None, {})``."""
    if target is None:
        return None, {}
    from pipeline.checkpoint import split_checkpoint

    fs, path = target
    try:
        raw = fs.cat_file(path)
    except FileNotFoundError:
        return None, {}
    return split_checkpoint(raw)


def _rounds(booster: Any) -> int:
    return booster.num_boosted_rounds() if booster is not None else 0


# --------------------------------------------------------------------------- every family


@dataclass
class Refit:
    """A family's model refitted for the leaderboard (and, for the winner, the bundle)."""

    family: str
    training: str
    model: Any  # an xgboost.Booster or a fitted scikit-learn estimator
    params: dict[str, Any]
    seconds: float
    rows: int
    details: dict[str, Any] = field(default_factory=dict)


def refit(family: str, task: str, params: Mapping[str, Any], *, X_train: Any, y_train: Any,
          X_valid: Any, y_valid: Any, sample: tuple[Any, Any] | None, n_classes: int | None,
          early_stopping_rounds: int | None, seed: int, client: Any, retries: int = 0,
          checkpoint: tuple[Any, str] | None = None, checkpoint_every: int = 0,
          min_delta: float = 0.0, cv_folds: int | None = None) -> Refit:
    """Fit ``family`` with ``params`` on the training rows the way the family scales.

    ``X_*``/``y_*`` are the preprocessed dask collections (persisted, aligned); ``sample`` is
    the same preprocessing applied to the in-memory sample (pandas), used by ``sample``
    families. ``retries``/``checkpoint``: see :func:`fit_xgboost` (XGBoost families).
    ``cv_folds``: small data, XGBoost's rounds are chosen by CV on train + validation rows
    (:func:`fit_xgboost_cv`).
    """
    from pipeline.models import FAMILIES, defaults, make_estimator, training_mode

    mode = training_mode(family, task)
    start = time.perf_counter()
    if family in ("xgboost", "random_forest"):
        params = {**defaults(family, task), **params}
        if cv_folds and family == "xgboost":
            import dask.dataframe as dd

            fit = fit_xgboost_cv(dd.concat([X_train, X_valid]), dd.concat([y_train, y_valid]),
                                 params=params, task=task, n_classes=n_classes, folds=cv_folds,
                                 early_stopping_rounds=early_stopping_rounds,
                                 min_delta=min_delta, seed=seed, client=client, family=family)
        else:
            fit = fit_xgboost(X_train, y_train, X_valid, y_valid, params=params, task=task,
                              n_classes=n_classes, early_stopping_rounds=early_stopping_rounds,
                              seed=seed, client=client, family=family, retries=retries,
                              checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                              min_delta=min_delta)
        details = {"trees": fit.n_estimators, "learning_curve": fit.history,
                   "attempts": fit.attempts,
                   "rounds_from": (f"{cv_folds}-fold CV on the training and validation rows"
                                   if cv_folds and family == "xgboost" else
                                   "early stopping on the validation rows")}
        return Refit(family, mode, fit.booster, fit.params, fit.seconds,
                     rows=-1, details=details)
    estimator = make_estimator(family, task, params, seed)
    if mode == "sample":
        X, y = sample
        estimator.fit(X.to_numpy(dtype="float64"), np.asarray(y))
        rows = len(X)
    elif mode == "distributed":  # dask-glm logistic regression (binary)
        estimator, rows = _fit_dask_glm(estimator, X_train, y_train, client)
    else:
        estimator, rows = _fit_incremental(estimator, X_train, y_train, n_classes,
                                           int(FAMILIES[family].get("epochs", 1)), seed)
    return Refit(family, mode, estimator, dict(params), time.perf_counter() - start, rows)


def _arrays(X: Any, y: Any) -> tuple[Any, Any, int]:
    """Dask arrays with known chunks (one pass to learn partition lengths), persisted."""
    from distributed import wait

    Xa = X.astype("float64").to_dask_array(lengths=True)
    ya = y.to_dask_array(lengths=True)
    Xa, ya = Xa.persist(), ya.persist()
    wait([Xa, ya])
    return Xa, ya, int(Xa.shape[0])


def _fit_dask_glm(estimator: Any, X: Any, y: Any, client: Any) -> tuple[Any, int]:
    """dask-ml's LogisticRegression on all rows, returned as scikit-learn's (for skops)."""
    import inspect

    from dask_ml.linear_model import LogisticRegression as DaskLR

    params = estimator.get_params()
    kwargs = {k: params[k] for k in ("C", "max_iter", "tol", "fit_intercept") if k in params}
    penalty = params.get("penalty")
    if penalty in (None, "deprecated"):  # scikit-learn >= 1.8 says it with l1_ratio
        ratio = params.get("l1_ratio") or 0.0
        penalty = "l2" if ratio == 0 else "l1" if ratio == 1 else "elastic_net"
    assert set(kwargs) <= set(inspect.signature(DaskLR.__init__).parameters)
    Xa, ya, rows = _arrays(X, y)
    # lbfgs needs a smooth penalty; admm handles l1 / elastic net
    solver = "lbfgs" if penalty == "l2" else "admm"
    model = DaskLR(solver=solver, penalty=penalty, **kwargs).fit(Xa, ya)
    estimator.classes_ = np.array([0, 1])
    estimator.coef_ = np.asarray(model.coef_, dtype=np.float64).reshape(1, -1)
    estimator.intercept_ = np.atleast_1d(np.asarray(model.intercept_, dtype=np.float64))
    estimator.n_features_in_ = estimator.coef_.shape[1]
    estimator.n_iter_ = np.array([estimator.max_iter])
    return estimator, rows


def _fit_incremental(estimator: Any, X: Any, y: Any, n_classes: int | None, epochs: int,
                     seed: int) -> tuple[Any, int]:
    """``partial_fit`` over every block, ``epochs`` passes (blocks shuffled per pass)."""
    from dask_ml.wrappers import Incremental
    from sklearn.base import is_classifier

    Xa, ya, rows = _arrays(X, y)
    if hasattr(estimator, "regressor"):  # a standardised target: its exact mean and scale
        import dask

        mean, std = dask.compute(ya.mean(), ya.std())
        estimator.set_params(mean=float(mean), scale=float(std))
    wrapper = Incremental(estimator, shuffle_blocks=True, random_state=seed)
    extra = {"classes": np.arange(n_classes or 2)} if is_classifier(estimator) else {}
    for _ in range(epochs):
        wrapper.partial_fit(Xa, ya, **extra)
    return wrapper.estimator_, rows


# --------------------------------------------------------------------------- a job's family


@dataclass
class FamilyFit:
    """One family's best candidate refitted on all training rows, and how it did."""

    search: Any  # the family's pipeline.select.SearchResult
    refit: Refit
    predictor: Any  # pipeline.predictor.Predictor: the whole preprocessing + the model
    holdout: dict[str, Any]  # metrics (pipeline.evaluate), with the job's slices
    train: dict[str, Any]  # metrics on the overfit check's training rows
    peak_memory: int | None  # the cluster's peak process memory while fitting
    predict_seconds: float  # scoring holdout + training rows (one compute)
    #: the Predictor as evaluated on the holdout, when ``predictor`` was then refit on every
    #: row (``train.refit_all_below``): see :attr:`as_evaluated`
    evaluated: Any = None

    @property
    def as_evaluated(self) -> Any:
        """The Predictor the holdout metrics describe: :attr:`evaluated` when the bundle's
        was refit on every row afterwards, else :attr:`predictor`. Whatever scores the
        holdout again (an operating point, the reference profile, an ensemble) uses it: the
        refit model was trained on those rows."""
        return self.evaluated if self.evaluated is not None else self.predictor

    @property
    def predicted_rows(self) -> int:
        return int(self.holdout.get("n") or 0) + int(self.train.get("n") or 0)

    def files(self) -> dict[str, bytes]:
        """The fit as files for the resume store (:func:`load_family` reads them back)."""
        from pipeline.artifacts import dumps_skops, json_bytes, model_bytes

        refit = self.refit
        name, data = model_bytes(refit.model)
        doc = {"fit": {"training": refit.training, "params": refit.params,
                       "seconds": refit.seconds, "rows": refit.rows, "details": refit.details},
               "holdout": self.holdout, "train": self.train,
               "peak_memory": self.peak_memory, "predict_seconds": self.predict_seconds}
        files = {name: data, "preprocessor.skops": dumps_skops(self.predictor.preprocessor),
                 "entry.json": json_bytes(doc)}
        if self.evaluated is not None:  # the model before its refit on every row
            name, data = model_bytes(self.evaluated.model)
            files[f"evaluated-{name}"] = data
        return files


def load_family(files: Mapping[str, bytes], found: Any, job: JobSpec,
                classes: Any) -> FamilyFit:
    """A :class:`FamilyFit` written by :meth:`FamilyFit.files`."""
    import json

    from pipeline.artifacts import loads_skops
    from pipeline.predictor import Predictor

    def model(name: str) -> Any:
        if f"{name}.ubj" in files:
            import xgboost

            booster = xgboost.Booster()
            booster.load_model(bytearray(files[f"{name}.ubj"]))
            return booster
        return loads_skops(files[f"{name}.skops"], f"stage {found.family}")

    doc = json.loads(files["entry.json"])
    fit = doc["fit"]
    refit = Refit(found.family, fit["training"], model("model"), fit["params"], fit["seconds"],
                  fit["rows"], fit["details"])
    predictor = Predictor(task=job.data.task, target=job.data.target, classes=classes,
                          preprocessor=loads_skops(files["preprocessor.skops"],
                                                   f"stage {found.family}"),
                          model=refit.model, threshold=job.evaluate.threshold,
                          family=found.family)
    evaluated = None
    if any(name.startswith("evaluated-") for name in files):
        import copy

        evaluated = copy.copy(predictor)
        evaluated.model = model("evaluated-model")
    return FamilyFit(found, refit, predictor, doc["holdout"], doc["train"],
                     doc["peak_memory"], doc["predict_seconds"], evaluated)


def refit_family(job: JobSpec, found: Any, prefix: Prefix, sample: Any, holdout: Any,
                 train_rows: Any, classes: Any, client: Client,
                 checkpoint: tuple[Any, str] | None = None) -> FamilyFit:
    """Refit a family's best candidate (``found``) on all training rows, its own way, and
    evaluate it on the holdout and on ``train_rows`` in one compute.

    ``prefix``: the shared preprocessing fitted on the training rows (its outputs persisted);
    the family's tail is fitted here on them. ``sample``: the in-memory sample of raw
    training rows (``sample`` families train on it). ``checkpoint``: where boosting
    checkpoints go (:func:`fit_xgboost`).
    """
    from sklearn.pipeline import Pipeline

    from pipeline.evaluate import evaluate_predictor
    from pipeline.models import family_rows, training_mode
    from pipeline.predictor import Predictor
    from pipeline.steps import tail_steps, target

    family, task = found.family, job.data.task
    tail = Pipeline(tail_steps(job, family))
    X_train = tail.fit_transform(prefix.X_train, prefix.y_train)
    X_valid = tail.transform(prefix.X_valid)
    sample_Xy = None
    if training_mode(family, task) == "sample":
        rows = sample.head(family_rows(family, job.search.sample_rows))
        sample_Xy = (tail.transform(prefix.pipeline.transform(rows)),
                     np.asarray(target(rows, job, classes)))
    # small data: boosting rounds from CV; up to medium data: the evaluated recipe refit on
    # every row, holdout included (:func:`refit_every_row`)
    fitted_rows = prefix.rows["train"] + prefix.rows["valid"]
    small = family == "xgboost" and fitted_rows < job.train.cv_rounds_below
    every = (family == "xgboost"
             and fitted_rows + prefix.rows["holdout"] < job.train.refit_all_below)
    with _PeakMemory(client) as peak:
        fitted = refit(family, task, found.best_params, X_train=X_train,
                       y_train=prefix.y_train, X_valid=X_valid, y_valid=prefix.y_valid,
                       sample=sample_Xy, n_classes=len(classes) if classes else None,
                       early_stopping_rounds=job.train.early_stopping_rounds,
                       seed=job.search.seed, client=client, retries=job.train.retries,
                       checkpoint=checkpoint, checkpoint_every=job.train.checkpoint_every,
                       min_delta=job.train.min_delta,
                       cv_folds=job.train.cv_rounds_folds if small else None)
    predictor = Predictor(task=task, target=job.data.target, classes=classes,
                          preprocessor=Pipeline(prefix.pipeline.steps + tail.steps),
                          model=fitted.model, threshold=job.evaluate.threshold, family=family)
    clock = time.perf_counter()
    metrics = evaluate_predictor(predictor, {"holdout": (holdout, True),
                                             "train": (train_rows, False)}, job, client)
    seconds = time.perf_counter() - clock
    evaluated = None
    if every:
        import copy

        import dask.dataframe as dd

        evaluated = copy.copy(predictor)  # keeps the evaluated booster
        X_holdout = tail.transform(prefix.pipeline.transform(holdout))
        fitted.model = predictor.model = refit_every_row(
            dd.concat([X_train, X_valid, X_holdout]),
            dd.concat([prefix.y_train, prefix.y_valid, target(holdout, job, classes)]),
            job=job, fitted=fitted, n_classes=len(classes) if classes else None,
            in_memory=small, client=client)
    return FamilyFit(found, fitted, predictor, metrics["holdout"], metrics["train"],
                     peak.bytes, seconds, evaluated)


def refit_every_row(X: Any, y: Any, *, job: JobSpec, fitted: Refit, n_classes: int | None,
                    in_memory: bool, client: Client) -> Any:
    """The evaluated XGBoost recipe (``fitted``: its parameters and the rounds it kept) fitted
    again on every row, holdout included (``train.refit_all_below``): the bundle's model.

    The holdout metrics stay those of the evaluated model, which never saw the holdout; this
    one sees 1 / (1 - split.holdout) times the rows. Its time is added to the family's fit
    time (``details["refit_seconds"]`` is its share). ``in_memory``: small data, one task
    (:func:`fit_xgboost_rows`); else xgboost.dask on the whole cluster (:func:`fit_xgboost`),
    with the job's retries after a lost worker.
    """
    start, trees = time.perf_counter(), int(fitted.details["trees"])
    if in_memory:
        model = fit_xgboost_rows(X, y, params=fitted.params, rounds=trees, task=job.data.task,
                                 n_classes=n_classes, seed=job.search.seed, client=client,
                                 family=fitted.family)
    else:
        model = fit_xgboost(X, y, None, None, params={**fitted.params, "n_estimators": trees},
                            task=job.data.task, n_classes=n_classes,
                            early_stopping_rounds=None, seed=job.search.seed, client=client,
                            family=fitted.family, retries=job.train.retries).booster
    fitted.details["refit"] = (f"the evaluated recipe ({trees:,} rounds) refit on every row "
                               "(train, validation and holdout)")
    seconds = time.perf_counter() - start
    fitted.details["refit_seconds"] = round(seconds, 3)
    fitted.seconds += seconds  # the family's fit time: both fits
    return model


class _PeakMemory:
    """The cluster's peak process memory while the block runs (distributed's sampler)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.bytes: int | None = None

    def __enter__(self) -> _PeakMemory:
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
