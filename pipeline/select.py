"""Hyperparameter search on the cluster, and the choice of a winner.

Three methods, all on an in-memory sample of the training rows (``search.sample_rows``; each
family may cap it lower, e.g. kernel SVMs), with k-fold CV, all on one engine of distributed
futures (:func:`_search`):

- ``grid`` / ``random``: every candidate (the whole grid, or ``n_iter`` drawn with the seed)
  on every fold, candidates x folds as parallel tasks. Each fold's preprocessing prefix is
  fitted once, in a task of its own, and shared by every candidate's fit on that fold.
- ``halving``: successive halving. Every candidate starts with a small budget; at each rung
  the best ``1/factor`` continue with ``factor`` times more. The budget (``search.budget``)
  is by default the family's own: boosting rounds for XGBoost (continued with ``xgb_model``,
  not restarted, with cross-validated early stopping), ``partial_fit`` epochs for SGD / MLP,
  training rows for the rest; ``rows`` works for every family (a stratified random share of
  each fold, bigger at each rung). (dask-ml's HyperbandSearchCV / SuccessiveHalvingSearchCV
  fail on dask >= 2025.3, dask/dask-ml#1016.)

Why not dask-ml's GridSearchCV, which merges the shared prefixes too: its graph hangs every
task off the one key that holds the data, so every fold's preprocessing runs on that one
worker while the others wait, and it scores each metric by running the whole fitted pipeline
on the test fold again. Measured on ``benchmarks/bench_search.py`` (100,000 rows, 6 candidates
x 3 folds, 2 workers) it was 1.13-1.32x scikit-learn's GridSearchCV(n_jobs=2); this engine is
faster (the figures are in the benchmark's output). Every metric is scored in one pass.

With ``search.strategy: full``, XGBoost candidates are instead each trained with xgboost.dask
on all training rows with early stopping and scored on the validation fold (one at a time:
every candidate already uses every worker, and two concurrent xgboost.dask trainings on
single-threaded workers would each wait for the other's slots).

Selection rule: the best mean CV score on the primary metric; ties broken by the lower mean
fit time.
"""

from __future__ import annotations

import logging
import math
import operator
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.models import FAMILIES, GREATER_IS_BETTER, SCORERS, cv_splitter, family_rows

if TYPE_CHECKING:
    from collections.abc import Callable

    from distributed import Client

    from pipeline.config import JobSpec
    from pipeline.steps import Prefix

logger = logging.getLogger("pipeline")

#: extra metrics scored in CV next to the primary one (cheap to score, useful to compare).
CV_METRICS = {"binary": ("roc_auc", "accuracy", "f1", "log_loss"),
              "multiclass": ("accuracy", "f1_macro", "log_loss"),
              "regression": ("rmse", "mae", "r2")}


@dataclass
class SearchResult:
    """One family's search: its best candidate and every candidate's CV scores."""

    family: str
    method: str
    best_params: dict[str, Any]
    cv_mean: float | None
    cv_std: float | None
    fit_seconds: float
    candidates: int
    cv_results: pd.DataFrame = field(repr=False)
    seconds: float = 0.0
    #: search: auto: the seconds this family was allowed (its share of search.time_budget)
    budget: float | None = None
    #: search: auto: the sample rows it searched, when its budget afforded fewer than all
    rows: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"family": self.family, "method": self.method, "best_params": self.best_params,
                "cv_mean": self.cv_mean, "cv_std": self.cv_std,
                "fit_seconds": self.fit_seconds, "candidates": self.candidates,
                "seconds": round(self.seconds, 3), "budget": self.budget, "rows": self.rows}


def split_grid(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fixed parameters, searched ones: lists or distributions)."""
    fixed = {k: v for k, v in params.items() if not isinstance(v, list | dict)}
    searched = {k: v for k, v in params.items() if isinstance(v, list | dict)}
    return fixed, searched


def _distribution(spec: Mapping[str, Sequence[float]]) -> Any:
    from scipy import stats

    (kind, (low, high)), = spec.items()
    if kind == "uniform":
        return stats.uniform(low, high - low)
    if kind == "loguniform":
        return stats.loguniform(low, high)
    return stats.randint(int(low), int(high) + 1)


def scorers(task: str, primary: str) -> dict[str, str]:
    """{our metric name: scikit-learn scorer}, the primary metric first."""
    names = [primary] + [m for m in CV_METRICS[task] if m != primary]
    return {name: SCORERS[name] for name in names}


# --------------------------------------------------------------------------- grid / random


def search_family(family: str, pipeline: Any, X: pd.DataFrame, y: np.ndarray, *,
                  params: Mapping[str, Any], task: str, primary: str, method: str, cv: int,
                  n_iter: int, factor: int, seed: int, client: Any,
                  patience: int | None = None, budget: str | None = None) -> SearchResult:
    """Search one family's candidates with k-fold CV on the sample ``X``, ``y``.

    ``pipeline`` is the unfitted Pipeline whose last step, ``model``, is the family's
    estimator; the fixed (scalar) ``params`` are set on it, the lists and distributions
    searched. ``patience``: boosting rounds without a better fold score after which a
    boosting fit stops (halving only; None: never stopped early). ``budget``: what halving
    gives more of at each rung (``rounds``, ``epochs`` or ``rows``; None or ``auto``: the
    family's own, see :data:`pipeline.models.FAMILIES`).
    """
    from sklearn.base import clone

    from pipeline.models import param_prefix

    start = time.perf_counter()
    fixed, searched = split_grid(params)
    inner = param_prefix(family, task)
    pipeline = clone(pipeline).set_params(**{f"model__{inner}{k}": _value(v)
                                             for k, v in fixed.items()})
    result = _search(family, pipeline, X, y, candidates(method, searched, n_iter, seed),
                     method=method, task=task, primary=primary, cv=cv, factor=factor,
                     seed=seed, patience=patience, client=client, budget=budget)
    result.best_params = {**fixed, **result.best_params}
    result.seconds = time.perf_counter() - start
    return result


def candidates(method: str, searched: Mapping[str, Any], n_iter: int,
               seed: int) -> list[dict[str, Any]]:
    """The parameter settings to try: the whole grid, or ``n_iter`` drawn with ``seed``.

    ``grid`` takes the whole grid, ``random`` draws; ``halving`` and ``full`` take the whole
    grid when every searched parameter is a list, else draw.
    """
    from sklearn.model_selection import ParameterGrid, ParameterSampler

    space = {k: [_value(v) for v in vals] if isinstance(vals, list) else _distribution(vals)
             for k, vals in searched.items()}
    if not space:
        return [{}]
    size = _grid_size(space)
    if method == "grid" or (method != "random" and size is not None):
        if size is None:
            raise ValueError("a grid cannot enumerate a distribution: give lists of values, "
                             "or use search.method random or halving")
        return [dict(p) for p in ParameterGrid(space)]
    return [dict(p) for p in ParameterSampler(space, min(n_iter, size or n_iter),
                                              random_state=seed)]


def _grid_size(grid: Mapping[str, Any]) -> int | None:
    if any(not isinstance(v, list) for v in grid.values()):
        return None
    return math.prod(len(v) for v in grid.values())


def _value(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v  # e.g. hidden_layer_sizes [64, 32]


def selection_key(score: float | None, fit_seconds: float, primary: str) -> tuple[float, float]:
    """The selection rule, as a sort key: the best mean score on the primary metric first,
    ties broken by the lower fit time; a candidate without a score ranks last."""
    if score is None or math.isnan(score):
        return (math.inf, fit_seconds)
    return (-score if GREATER_IS_BETTER[primary] else score, fit_seconds)


def best_row(table: pd.DataFrame, primary: str) -> Any:
    """The index of the best row of a CV table (:func:`selection_key`; first of equals)."""
    scores = table[f"mean_{primary}"].astype(float)
    return min(table.index, key=lambda i: selection_key(
        float(scores[i]), float(table.at[i, "mean_fit_time"]), primary))


def _plain_params(params: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in params.items():
        name = k.removeprefix("model__").removeprefix("estimator__").removeprefix(
            "regressor__")
        if isinstance(v, tuple):
            v = list(v)
        elif isinstance(v, np.generic):
            v = v.item()
        out[name] = v
    return out


def _float(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


# --------------------------------------------------------------------------- full data


def search_full(job: JobSpec, params: Mapping[str, Any], prefix: Prefix,
                n_classes: int | None, client: Client) -> SearchResult:
    """XGBoost candidates each trained with xgboost.dask on all training rows.

    Early stopping on the validation fold, which also scores the candidate (one score: the
    ``cv_std`` is None). One candidate at a time, each on every worker (see module docstring).
    """
    from sklearn.pipeline import Pipeline

    from pipeline.evaluate import evaluate_predictions
    from pipeline.frames import with_column
    from pipeline.models import defaults
    from pipeline.steps import tail_steps
    from pipeline.train import fit_xgboost

    start = time.perf_counter()
    task, primary, search = job.data.task, job.primary_metric, job.search
    y_train, y_valid = prefix.y_train, prefix.y_valid
    tail = Pipeline(tail_steps(job, "xgboost"))
    T_train = tail.fit_transform(prefix.X_train, y_train)
    T_valid = tail.transform(prefix.X_valid)
    fixed, searched = split_grid(params)
    rows = []
    for candidate in candidates("full", searched, search.n_iter, search.seed):
        chosen = {**defaults("xgboost", task), **fixed, **candidate}
        fit = fit_xgboost(T_train, y_train, T_valid, y_valid, params=chosen, task=task,
                          n_classes=n_classes,
                          early_stopping_rounds=job.train.early_stopping_rounds,
                          seed=search.seed, client=client)
        [booster] = client.scatter([fit.booster], broadcast=True, hash=False)
        frame = with_column(T_valid, "__y__", y_valid)
        scored = frame.map_partitions(_score_partition, booster, task, n_classes,
                                      meta=_score_partition(frame._meta, fit.booster, task,
                                                            n_classes))
        metrics = evaluate_predictions(scored, task)
        rows.append({"family": "xgboost",
                     "params": {**fixed, **_plain_params(candidate),
                                "n_estimators": fit.n_estimators},
                     "mean_fit_time": fit.seconds, f"mean_{primary}": metrics.get(primary),
                     f"std_{primary}": np.nan})
    table = pd.DataFrame(rows)
    best = best_row(table, primary)
    return SearchResult(family="xgboost", method="full", best_params=table.loc[best, "params"],
                        cv_mean=_float(table.loc[best, f"mean_{primary}"]), cv_std=None,
                        fit_seconds=float(table.loc[best, "mean_fit_time"]),
                        candidates=len(table), cv_results=table,
                        seconds=time.perf_counter() - start)


def _score_partition(df: pd.DataFrame, booster: Any, task: str,
                     n_classes: int | None) -> pd.DataFrame:
    """The evaluation frame (``y_true`` + scores) of one validation partition."""
    X = df.drop(columns="__y__")
    raw = (np.asarray(booster.inplace_predict(X, validate_features=False), dtype=np.float64)
           if len(X) else np.empty((0, n_classes) if task == "multiclass" else 0))
    out = pd.DataFrame({"y_true": df["__y__"].to_numpy()}, index=df.index)
    if task == "regression":
        out["y_pred"] = raw
    elif task == "binary":
        out["proba"] = raw
    else:
        for k in range(int(n_classes or 0)):
            out[f"proba_{k}"] = raw[:, k]
    return out


# --------------------------------------------------------------------------- the search engine


def _search(family: str, pipeline: Any, X: pd.DataFrame, y: np.ndarray,
            settings: list[dict[str, Any]], *, method: str, task: str, primary: str, cv: int,
            factor: int, seed: int, patience: int | None, client: Any,
            budget: str | None = None, deadline: float | None = None) -> SearchResult:
    """Every method's CV on futures: fold preprocessing once, candidate x fold fits as tasks.

    The sample goes to every worker once; each fold's preprocessing (``pipeline[:-1]``) is one
    task, on whichever worker is free, and every candidate's fit on that fold reuses its output.
    A grid or random search is one rung at each candidate's full budget. Successive halving runs
    ``n -> n/factor -> ...`` rungs down to at most ``factor`` candidates on the full budget
    (compared fully, not on a single survivor's word); a rung's fits continue from the
    previous rung's models where the budget allows it (XGBoost rounds via ``xgb_model``,
    ``partial_fit`` epochs), and the models stay on the workers between rungs.

    Boosting candidates are scored at several round counts (checkpoints) of each fit, and a
    candidate's score is its best checkpoint's mean over the folds (its ``rounds`` column):
    cross-validated early stopping, as ``xgboost.cv`` does, so a candidate that overfits is
    not judged on rounds it should not have had. With halving, a fold's fit stops once its
    score has not improved for ``patience`` rounds, and such a candidate gets no more rounds
    but stays in the ranking. (Halving on rounds still favours fast learners at its small
    budgets: deep trees and high learning rates lead early, and a shallow candidate that
    would win at the full budget can be dropped at the first rung. ``budget="rows"`` trains
    every rung afresh, all rounds, on a bigger share of the fold, and leans the other way:
    little data favours simple models.)

    ``deadline`` (a ``time.perf_counter()`` value): a rung after the first starts only when
    the last rung's seconds, scaled by the work each asks for (:func:`_rung_work`), say it
    ends in time; otherwise the candidates are ranked where they are.
    """
    boosted = FAMILIES[family]["budget"] == "rounds"
    if method != "halving":
        budget = "rounds" if boosted else "fit"  # every candidate at its full budget
    else:
        budget = _halving_budget(family, budget)
    model = pipeline.steps[-1][1]
    splits = list(cv_splitter(task, cv, seed).split(X, y))
    if budget == "rows":  # each rung trains on a bigger random (stratified) prefix
        rng = np.random.default_rng(seed)
        splits = [(_shuffled(train, y[train], task, rng), test) for train, test in splits]
    own = [_own_budget(budget, model, c, family, splits) for c in settings]
    n = len(settings)
    rungs = _rungs(n, factor) if method == "halving" else 1
    full = max(own)
    min_budget = max(1, int(full / factor ** (rungs - 1)))
    step = max(1, min(25, max(_own_budget("rounds", model, c, family, splits)
                              for c in settings) // 27)) if boosted else 1  # resolution
    scoring = scorers(task, primary)

    [data] = client.scatter([(X, y)], broadcast=True, hash=False)
    prep = pipeline[:-1] if len(pipeline) > 1 else None
    folds = [client.submit(_prepare_fold, data, prep, train, test, pure=False)
             for train, test in splits]
    records = [_Record(family, _plain_params(c)) for c in settings]
    states: dict[tuple[int, int], Any] = {}
    alive = list(range(n))
    resumed = budget in ("rounds", "epochs")  # a rung's fits go on from the last rung's
    last: tuple[float, float] | None = None  # the last rung's (seconds, work)
    for rung in range(rungs):
        reach = full if rung == rungs - 1 else min(full, min_budget * factor ** rung)
        todo = [i for i in alive if not records[i].done]
        work = _rung_work([records[i].budget for i in todo], [min(own[i], reach) for i in todo],
                          resumed)
        if deadline is not None and last is not None and last[1] > 0 and (
                time.perf_counter() + last[0] * work / last[1] > deadline):
            logger.debug("search %s: rung %d would end after the deadline", family, rung)
            break
        clock = time.perf_counter()
        pending = {}
        for i in todo:
            amount = records[i].budget = min(own[i], reach)
            for f in range(len(splits)):
                both = client.submit(_rung_fit, folds[f], model, settings[i], budget, amount,
                                     states.get((i, f)), scoring, primary, step,
                                     patience if method == "halving" else None, boosted,
                                     pure=False)
                pending[(i, f)] = client.submit(operator.itemgetter(0), both, pure=False)
                states[(i, f)] = client.submit(operator.itemgetter(1), both, pure=False)
        for (i, f), summary in zip(pending, client.gather(list(pending.values()))):
            records[i].add(f, summary, budget == "rounds")
        for i in alive:
            records[i].rung = rung
            if i in todo:
                records[i].settle(primary, len(splits), own[i], patience, budget == "rounds")
        keep = max(1, math.ceil(len(alive) / factor)) if rung < rungs - 1 else len(alive)
        ranked = sorted(alive, key=lambda i: records[i].order(primary))
        for i in ranked[keep:]:  # out: free their models on the workers
            for f in range(len(splits)):
                states.pop((i, f), None)
        alive = ranked[:keep]
        last = (time.perf_counter() - clock, work)
        logger.debug("search %s: rung %d, up to %d, %d -> %d candidates", family, rung, reach,
                     len(ranked), len(alive))
    table = pd.DataFrame([r.row(scoring, budget) for r in records])
    best = best_row(table.loc[alive], primary)
    return SearchResult(
        family=family, method=method, best_params=table.loc[best, "params"],
        cv_mean=_float(table.loc[best, f"mean_{primary}"]),
        cv_std=_float(table.loc[best, f"std_{primary}"]),
        fit_seconds=float(table.loc[best, "mean_fit_time"]), candidates=len(table),
        cv_results=table)


def _halving_budget(family: str, budget: str | None) -> str:
    """What successive halving gives ``family`` more of: ``budget`` (``rows``, or the family's
    own), or the family's own for None / ``auto``."""
    own = FAMILIES[family]["budget"]
    budget = own if budget in (None, "auto") else budget
    if budget not in ("rows", own):
        raise ValueError(f"{family} cannot take {budget} as its halving budget: use rows, or "
                         f"{own} (its own)")
    return budget


def _rungs(n: int, factor: int) -> int:
    """The rungs of a halving bracket of ``n`` candidates: ``n -> n/factor -> ...`` down to at
    most ``factor`` candidates on the full budget (at least two rungs for two candidates)."""
    return 1 if n == 1 else max(2, int(math.floor(math.log(n, factor) + 1e-9)))


def _rung_work(done: Sequence[int], reach: Sequence[int], resumed: bool) -> int:
    """The budget units a rung trains: each candidate's reach, less what it already had when
    its fits go on from the last rung's models (boosting rounds, epochs)."""
    return sum(r - d if resumed else r for d, r in zip(done, reach))


def _bracket_work(n: int, factor: int, resumed: bool) -> float:
    """A halving bracket of ``n`` candidates in units of one candidate's full budget (as
    :func:`_search` runs it: ``n -> n/factor -> ...``, the last rung at the full budget)."""
    rungs = _rungs(n, factor)
    reach = [1.0 if r == rungs - 1 else factor ** (r - rungs + 1) for r in range(rungs)]
    alive = [n]
    for _ in range(rungs - 1):
        alive.append(max(1, math.ceil(alive[-1] / factor)))
    return sum(k * (reach[r] - (reach[r - 1] if resumed and r else 0.0))
               for r, k in enumerate(alive))


def _shuffled(train: np.ndarray, y: np.ndarray, task: str,
              rng: np.random.Generator) -> np.ndarray:
    """``train`` in a random order whose every prefix holds the classes in their proportions
    (for a classifier), so a rung's first rows are a stratified random subset."""
    order = rng.permutation(len(train))
    if task != "regression":  # spread each class evenly over the order
        key = np.empty(len(train))
        for label in np.unique(y):
            mine = order[y[order] == label]
            key[mine] = (np.arange(len(mine)) + rng.random(len(mine))) / len(mine)
        order = np.argsort(key, kind="stable")
    return train[order]


def _own_budget(budget: str, model: Any, setting: Mapping[str, Any], family: str,
                splits: list) -> int:
    """A candidate's full budget: its own rounds, the family's epochs, or a fold's rows."""
    if budget == "rounds":
        return int(setting.get("n_estimators", model.get_params()["n_estimators"]))
    if budget == "epochs":
        return max(1, int(FAMILIES[family].get("epochs", 3)) * 3)
    return min(len(train) for train, _ in splits)  # rows; and "fit" ignores it


class _Record:
    """One candidate's progress: fold scores, boosting curves, budget, whether it stopped."""

    def __init__(self, family: str, params: dict[str, Any]) -> None:
        self.family, self.params = family, params
        self.rung, self.budget, self.fit_seconds = 0, 0, 0.0
        self.scores: dict[int, dict[str, float]] = {}
        self.curves: dict[int, dict[int, float]] = {}
        self.losses: dict[int, dict[int, float]] = {}  # boosting: the loss at each checkpoint
        self.done = False
        self.best: tuple[float, float, int | None] = (math.nan, math.nan, None)

    def add(self, fold: int, summary: Mapping[str, Any], continued: bool) -> None:
        """A fold's fit at this rung. ``continued``: it went on from the last rung's model,
        so its boosting curve extends that one's (else it is a new fit, with a curve of its
        own: on a rows budget, the last rung's curve came from fewer rows)."""
        self.scores[fold] = summary["scores"]
        if continued:
            self.curves.setdefault(fold, {}).update(summary["curve"])
            self.losses.setdefault(fold, {}).update(summary.get("losses", {}))
        else:
            self.curves[fold] = dict(summary["curve"])
            self.losses[fold] = dict(summary.get("losses", {}))
        self.fit_seconds += summary["seconds"]

    def settle(self, primary: str, folds: int, own: int, patience: int | None,
               continued: bool) -> None:
        """This rung's score: the mean over folds (at the best checkpoint, for boosting).

        For boosting, the best checkpoint is the one with the lowest mean loss over the folds
        (log loss, multi-class log loss or RMSE, as the final fit's early stopping watches), and
        the score is the primary metric's mean there: a saturating primary metric (AUC at 1.0
        after a few rounds on a small fold) would otherwise pick a handful of trees.
        ``continued``: the budget is boosting rounds, so a candidate whose fits stopped early
        (or stalled for ``patience`` rounds) has had all the rounds it can use.
        """
        self.done = self.budget >= own
        if self.curves.get(0):
            rounds = sorted(set.intersection(*(set(c) for c in self.curves.values())))
            means = [np.mean([self.curves[f][r] for f in range(folds)]) for r in rounds]
            if all(set(rounds) <= set(self.losses.get(f, {})) for f in range(folds)):
                k = int(np.argmin([np.mean([self.losses[f][r] for f in range(folds)])
                                   for r in rounds]))
            else:
                sign = 1.0 if GREATER_IS_BETTER[primary] else -1.0
                k = int(np.argmax([sign * m for m in means]))
            spread = float(np.std([self.curves[f][rounds[k]] for f in range(folds)]))
            self.best = (float(means[k]), spread, rounds[k])
            if continued:
                stopped = min(max(c) for c in self.curves.values()) < self.budget
                stalled = patience is not None and rounds[k] + patience <= rounds[-1]
                self.done = self.done or stopped or stalled
        else:
            values = [self.scores[f][primary] for f in range(folds)]
            self.best = (float(np.mean(values)), float(np.std(values)), None)

    def order(self, primary: str) -> tuple[float, float]:
        return selection_key(self.best[0], self.fit_seconds, primary)

    def row(self, scoring: Mapping[str, str], budget: str) -> dict[str, Any]:
        folds = max(len(self.scores), 1)
        row: dict[str, Any] = {"family": self.family, "params": self.params,
                               "rung": self.rung, "budget": self.budget,
                               "mean_fit_time": self.fit_seconds / folds}
        if budget == "rounds":  # rounds trained (early stopping may end a fit short)
            row["budget"] = max(max(c) for c in self.curves.values())
        if self.best[2] is not None:  # boosting: the best round count
            row["rounds"] = self.best[2]
        primary = next(iter(scoring))
        for metric in scoring:
            values = [s[metric] for s in self.scores.values()]
            row[f"mean_{metric}"] = float(np.mean(values)) if values else np.nan
            row[f"std_{metric}"] = float(np.std(values)) if values else np.nan
        row[f"mean_{primary}"], row[f"std_{primary}"] = self.best[:2]
        return row


def _prepare_fold(data: tuple[pd.DataFrame, np.ndarray], prep: Any, train: np.ndarray,
                  test: np.ndarray) -> tuple[Any, np.ndarray, Any, np.ndarray]:
    """One fold's preprocessed matrices, shared by every candidate.

    ``fit_transform`` gives the training rows out-of-fold target encodings (``transform`` of
    the same rows would leak their own targets); the test rows get ``transform``.
    """
    from sklearn.base import clone

    X, y = data
    if prep is None:
        return X.iloc[train], y[train], X.iloc[test], y[test]
    fitted = clone(prep)
    Xt_train = fitted.fit_transform(X.iloc[train], y[train])
    return Xt_train, y[train], fitted.transform(X.iloc[test]), y[test]


def _rung_fit(fold: tuple[Any, np.ndarray, Any, np.ndarray], model: Any,
              params: Mapping[str, Any], budget: str, amount: int, state: Any,
              scoring: Mapping[str, str], primary: str, step: int,
              patience: int | None, boosted: bool = False) -> tuple[dict[str, Any], Any]:
    """One candidate on one fold at one rung: ``({scores, curve, seconds}, state)``.

    ``amount`` is this rung's budget: rounds, epochs or training rows (the first ``amount``
    of the fold's, which come in a random order). ``state`` is what the previous rung left
    to continue from (None at the first, and for budgets that cannot continue). ``scores``
    are every metric at the end of the fit; ``curve`` is ``{rounds: primary score}`` at the
    checkpoints of a boosting fit (``boosted``: an XGBoost model, trained by
    :class:`_Boosting` whatever the budget).
    """
    from sklearn.base import clone, is_classifier

    from pipeline.models import inner_estimator

    Xt_train, y_train, Xt_test, y_test = fold
    start = time.perf_counter()
    if state is None or boosted:
        inner = next((f"{n}__" for n in ("estimator", "regressor")
                      if getattr(model, n, None) is inner_estimator(model)), "")
        fitted = clone(model).set_params(**{f"{inner}{k}": v for k, v in params.items()})
    else:
        fitted = state[0]
    if boosted:  # state: (booster, best score and rounds); None on a rows budget
        rounds = amount if budget == "rounds" else int(fitted.get_params()["n_estimators"])
        boost = _Boosting(fold, scoring, primary, step, patience, state and state[1],
                          rows=amount if budget == "rows" else None)
        booster = boost.fit(fitted, state and state[0], rounds)
        summary = {"scores": boost.scores, "curve": boost.curve, "losses": boost.losses,
                   "seconds": time.perf_counter() - start - boost.scoring_seconds}
        return summary, (booster, boost.best) if budget == "rounds" else None
    if budget == "rows":  # a bigger training set: nothing to continue, fit afresh
        Xt_train, y_train = Xt_train.iloc[:amount], y_train[:amount]
    if budget == "epochs":
        extra = {"classes": np.unique(np.concatenate([y_train, y_test]))} \
            if is_classifier(fitted) else {}
        for _ in range(amount - (state[1] if state else 0)):
            fitted.partial_fit(Xt_train, y_train, **extra)
    else:
        fitted.fit(Xt_train, y_train)
    seconds = time.perf_counter() - start
    summary = {"scores": _score_all(fitted, Xt_test, y_test, scoring), "curve": {},
               "seconds": seconds}
    return summary, (fitted, amount) if budget == "epochs" else None


def _checkpoints(done: int, amount: int, step: int, most: int | None = 6) -> list[int]:
    """Round counts in ``(done, amount]`` to score a fit at: multiples of ``step`` (at most
    ``most`` of them, evenly spread; None: all), always ending at ``amount``."""
    marks = list(range((done // step + 1) * step, amount, step)) + [amount]
    if most is not None and len(marks) > most:
        stride = math.ceil(len(marks) / most)
        marks = marks[::-1][::stride][::-1]
    return marks


def _score_all(estimator: Any, X: Any, y: np.ndarray,
               scoring: Mapping[str, str]) -> dict[str, float]:
    """Every metric in one pass (scikit-learn's multi-metric scorer predicts once per kind),
    lower-is-better metrics back to positive."""
    from sklearn.metrics import check_scoring

    raw = check_scoring(estimator, scoring=dict(scoring))(estimator, X, y)
    return {m: float(v if GREATER_IS_BETTER[m] else -v) for m, v in raw.items()}


class _Boosting:
    """Boosting rounds on one fold, scored at checkpoints while they train.

    Trains with ``xgboost.train`` on the fold's QuantileDMatrix, built once per fold and
    worker and shared by every candidate there (through scikit-learn's ``fit`` each candidate
    and each continuation would build its own, more than a short rung's training costs). A
    training callback scores the primary metric on the test fold after each checkpoint's
    rounds and, with ``patience``, stops the fit once that many rounds have passed without a
    lower loss (:data:`_LOSS`: a proper scoring rule, as the final fit's early stopping
    watches; the primary metric where the objective has none). At a checkpoint the score is
    XGBoost's own metric where it has the primary
    one (:data:`_NATIVE`: computed in C++ on predictions it updates tree by tree, where a
    scikit-learn scorer costs more than a short rung's training); the end of the fit is scored
    on every metric with scikit-learn's scorers (the booster's predictions through a stand-in
    estimator). ``best`` (score, rounds) carries over between rungs with the booster.
    """

    def __init__(self, fold: tuple[Any, np.ndarray, Any, np.ndarray],
                 scoring: Mapping[str, str], primary: str, step: int, patience: int | None,
                 best: tuple[float, int] | None, rows: int | None = None) -> None:
        self.fold, self.scoring, self.primary, self.rows = fold, scoring, primary, rows
        self.step, self.patience, self.best = step, patience, best
        self.curve: dict[int, float] = {}
        self.losses: dict[int, float] = {}
        self.scores: dict[str, float] = {}
        self.scoring_seconds = 0.0

    def fit(self, estimator: Any, booster: Any, amount: int) -> Any:
        """Boost ``estimator``'s parameters up to ``amount`` rounds, from ``booster`` if given;
        returns the booster."""
        import xgboost as xgb
        from sklearn.base import is_classifier

        _, y_train, _, _ = self.fold
        params = {k: v for k, v in estimator.get_xgb_params().items() if v is not None}
        self.classes = None
        if is_classifier(estimator):
            self.classes = np.unique(y_train)
            if len(self.classes) > 2:
                params.update(objective="multi:softprob", num_class=len(self.classes))
        self.train_matrix, self.test_matrix = _fold_matrices(
            self.fold, params.get("max_bin", 256), self.rows)
        native = _NATIVE.get((self.primary, params.get("objective")))
        self.native_metric = native and native[0]
        self.loss = _LOSS.get(params.get("objective"))
        params["eval_metric"] = [m for m in (self.native_metric, self.loss) if m]
        done = booster.num_boosted_rounds() if booster is not None else 0
        marks = set(_checkpoints(done, amount, self.step,  # every step where it is cheap
                                 most=None if self.patience or native else 6))
        outer = self

        class Checkpoints(xgb.callback.TrainingCallback):
            def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
                rounds = epoch + 1
                if rounds not in marks or rounds == amount:
                    return False
                if native:
                    outer.native(model, rounds, native[1])
                else:
                    outer.score(model, rounds, {outer.primary: outer.scoring[outer.primary]})
                return bool(outer.patience) and rounds - outer.best[1] >= outer.patience

        booster = xgb.train(params, self.train_matrix, num_boost_round=amount - done,
                            xgb_model=booster, callbacks=[Checkpoints()], verbose_eval=False)
        self.scores = self.score(booster, booster.num_boosted_rounds(), self.scoring)
        return booster

    def _evaluate(self, booster: Any, rounds: int) -> dict[str, float]:
        """XGBoost's eval metrics of the first ``rounds`` rounds on the test fold; records the
        loss at that checkpoint."""
        text = booster.eval_set([(self.test_matrix, "test")], rounds - 1)
        values = {part.split(":")[0].removeprefix("test-"): float(part.rsplit(":", 1)[1])
                  for part in text.split()[1:]}
        if self.loss:
            self.losses[rounds] = values[self.loss]
        return values

    def score(self, booster: Any, rounds: int, scoring: Mapping[str, str]) -> dict[str, float]:
        """``scoring``'s metrics of the first ``rounds`` rounds, with scikit-learn."""
        from pipeline.estimators import fixed_predictions

        start = time.perf_counter()
        out = booster.predict(self.test_matrix, iteration_range=(0, rounds))
        scores = _score_all(fixed_predictions(out, self.classes), None, self.fold[3], scoring)
        if self.loss:
            self._evaluate(booster, rounds)
        self._point(rounds, scores[self.primary], start)
        return scores

    def native(self, booster: Any, rounds: int, convert: Any) -> None:
        """The primary metric of ``booster`` as it is (``rounds`` rounds), by XGBoost."""
        start = time.perf_counter()
        value = self._evaluate(booster, rounds)[self.native_metric]
        self._point(rounds, convert(value, self.fold[3]), start)

    def _point(self, rounds: int, value: float, start: float) -> None:
        """The checkpoint's primary score; ``best`` (for patience) follows the loss."""
        self.curve[rounds] = value
        if self.loss:
            better = -self.losses[rounds]
        else:
            better = value if GREATER_IS_BETTER[self.primary] else -value
        if self.best is None or better > self.best[0]:
            self.best = (better, rounds)
        self.scoring_seconds += time.perf_counter() - start


def _same(value: float, y: np.ndarray) -> float:
    return value


#: XGBoost objective -> its eval metric that is a proper scoring rule: what boosting's
#: early stopping and the choice of a checkpoint watch (pipeline.train.eval_metrics).
_LOSS = {"binary:logistic": "logloss", "multi:softprob": "mlogloss",
         "reg:squarederror": "rmse"}


#: (our metric, XGBoost objective) -> (XGBoost's eval metric, its value to ours given the
#: test fold's labels); where XGBoost computes the same number scikit-learn does
_NATIVE = {
    ("roc_auc", "binary:logistic"): ("auc", _same),
    ("log_loss", "binary:logistic"): ("logloss", _same),
    ("accuracy", "binary:logistic"): ("error", lambda v, y: 1.0 - v),
    ("log_loss", "multi:softprob"): ("mlogloss", _same),
    ("accuracy", "multi:softprob"): ("merror", lambda v, y: 1.0 - v),
    ("rmse", "reg:squarederror"): ("rmse", _same),
    ("mae", "reg:squarederror"): ("mae", _same),
    ("r2", "reg:squarederror"): ("rmse", lambda v, y: 1.0 - v * v / float(np.var(y))),
}


#: this worker's QuantileDMatrix / DMatrix of each fold it holds, dropped with the fold
_MATRICES: dict[tuple[Any, ...], tuple[Any, Any]] = {}


def _fold_matrices(fold: tuple[Any, np.ndarray, Any, np.ndarray], max_bin: int,
                   rows: int | None = None) -> tuple:
    """The fold's (training QuantileDMatrix of its first ``rows`` rows, or all; test DMatrix),
    the test one shared by every ``max_bin`` and ``rows``."""
    import xgboost as xgb

    Xt_train, y_train, Xt_test, y_test = fold
    train = _cached(Xt_train, ("train", int(max_bin), rows), lambda: xgb.QuantileDMatrix(
        Xt_train.iloc[:rows], y_train[:rows], enable_categorical=True, max_bin=int(max_bin),
        nthread=1))
    test = _cached(Xt_train, ("test",), lambda: xgb.DMatrix(
        Xt_test, y_test, enable_categorical=True, nthread=1))
    return train, test


def _cached(owner: Any, what: tuple, build: Any) -> Any:
    """``build()``, kept in :data:`_MATRICES` while ``owner`` (the fold's data) lives."""
    import weakref

    key = (id(owner), *what)
    hit = _MATRICES.get(key)
    if hit is None or hit[0]() is not owner:
        hit = _MATRICES[key] = (weakref.ref(owner, lambda _: _MATRICES.pop(key, None)),
                                build())
    return hit[1]


# --------------------------------------------------------------------------- a job's search


def check_models(job: JobSpec) -> None:
    """Every family's parameter names and values, checked before any data is read."""
    from pipeline.models import defaults, inner_estimator, make_estimator
    from pipeline.train import xgb_params

    for family, params in job.models.items():
        fixed, searched = split_grid(params)
        first = {k: v[0] for k, v in searched.items() if isinstance(v, list)}
        if family in ("xgboost", "random_forest"):
            xgb_params({**defaults(family, job.data.task), **fixed, **first},
                       task=job.data.task, n_classes=None, seed=job.search.seed, family=family)
            continue
        estimator = inner_estimator(make_estimator(family, job.data.task, {**fixed, **first}))
        if hasattr(type(estimator), "_parameter_constraints"):
            try:  # scikit-learn's own parameter constraints, without fitting
                estimator._validate_params()
            except (ValueError, TypeError) as exc:
                raise ValueError(f"models.{family}: {exc}") from None


# --------------------------------------------------------------------------- search: auto

#: the boosting family's share of the auto search's time; the other families split the rest
#: (they are searched first, and what they leave unused goes to boosting).
BOOSTING_SHARE = 0.6
#: candidates per bracket of the auto search (successive halving: 9 -> 3).
BRACKET = 9
#: an auto search of a family stops after this many candidates per searched parameter.
CANDIDATES_PER_PARAMETER = 10
#: the auto search halves a boosting winner's learning rate only while its rounds, doubled,
#: stay within this (:func:`slower_boosting`).
SLOWER_MAX_ROUNDS = 1_000
#: above this many sample rows a family's auto search is timed before its first bracket
#: (:func:`_affordable_rows`); below, a bracket takes seconds and always runs whole.
PROBE_ROWS = 5_000


def time_budget(job: JobSpec, n_train: int) -> float:
    """Seconds the auto search may take: ``search.time_budget``, or 5 s, rising to 20 s at
    20,000 training rows, plus 3 minutes per million training rows, at most an hour.

    Each family's first bracket runs whatever the budget: on a few hundred rows that bracket
    finds what longer searches find (the quality benchmark), so a small file is done in
    seconds; the budget grows with what more candidates can still learn from the data.
    """
    if job.search.time_budget is not None:
        return float(job.search.time_budget)
    return min(3600.0, 5.0 + 15.0 * min(1.0, n_train / 20_000) + 180.0 * n_train / 1e6)


def search_auto(family: str, pipeline: Any, X: pd.DataFrame, y: np.ndarray, *,
                job: JobSpec, seconds: float, client: Any) -> SearchResult:
    """``search: auto`` for one family: successive halving in brackets of :data:`BRACKET`
    candidates drawn from the family's space (:func:`pipeline.models.auto_space`) until
    ``seconds`` are spent.

    The first bracket starts from the family's defaults (so the search can only improve on
    them) and always runs; a further bracket, with new draws, starts only while the time left
    is at least what the last bracket took, and up to :data:`CANDIDATES_PER_PARAMETER`
    candidates per searched parameter. Above :data:`PROBE_ROWS` rows the budget holds: the
    first bracket searches the share of the sample it can afford (:func:`_affordable_rows`;
    when that is less than the probe's rows, the probe, a CV of the defaults, is the search)
    and a rung that would end after the deadline is not started. ``search.max_candidates``
    replaces all of that: exactly that many candidates on the whole sample, whatever the time
    (reproducible on any machine). Every bracket's candidates are in the CV table; the best
    over all brackets wins (:func:`selection_key`).
    """
    from sklearn.base import clone

    from pipeline.models import auto_space, param_prefix

    search, task = job.search, job.data.task
    start = time.perf_counter()
    fixed, searched = split_grid(auto_space(family, job.models[family]))
    inner = param_prefix(family, task)
    pipeline = clone(pipeline).set_params(**{f"model__{inner}{k}": _value(v)
                                             for k, v in fixed.items()})
    most = search.max_candidates or max(1, CANDIDATES_PER_PARAMETER * len(searched))
    timed = search.max_candidates is None and len(X) > PROBE_ROWS
    engine = {"task": task, "primary": job.primary_metric, "cv": search.cv,
              "factor": search.factor, "seed": search.seed,
              "patience": job.train.early_stopping_rounds, "client": client,
              "budget": search.budget}
    rows, tables, last, tried = None, [], 0.0, 0
    if timed:  # the probe's rows, then the bracket's, are prefixes of one stratified order
        order = _shuffled(np.arange(len(X)), y, task, np.random.default_rng(search.seed))
        probe, rows = _affordable_rows(family, pipeline, X, y, np.sort(order[:PROBE_ROWS]),
                                       seconds, engine)
        if rows < PROBE_ROWS:  # not even a bracket on the probe's rows: the probe is all
            tables, tried, rows = [probe.cv_results.assign(bracket=0)], most, PROBE_ROWS
        elif rows < len(X):
            keep = np.sort(order[:rows])
            X, y = X.iloc[keep], y[keep]
        else:
            rows = None
    while tried < most:
        left = seconds - (time.perf_counter() - start)
        if tables and left < last and search.max_candidates is None:
            break
        clock = time.perf_counter()
        draws = candidates("random", searched, BRACKET, search.seed + len(tables))
        settings = ([{}] if not tables else []) + draws  # the defaults first
        settings = settings[:max(1, min(BRACKET, most - tried))]
        found = _search(family, pipeline, X, y, settings, method="halving",
                        deadline=start + seconds if timed else None, **engine)
        tables.append(found.cv_results.assign(bracket=len(tables)))
        tried += len(settings)
        last = time.perf_counter() - clock
        if not searched:
            break
    table = pd.concat(tables, ignore_index=True)
    primary = job.primary_metric
    best = best_row(table[table["rung"] == table.groupby("bracket")["rung"].transform("max")],
                    primary)
    params = {**fixed, **table.loc[best, "params"]}
    if "rounds" in table and pd.notna(table.loc[best, "rounds"]):
        params = slower_boosting(params, int(table.loc[best, "rounds"]))
    return SearchResult(
        family=family, method="auto", best_params=params,
        cv_mean=_float(table.loc[best, f"mean_{primary}"]),
        cv_std=_float(table.loc[best, f"std_{primary}"]),
        fit_seconds=float(table.loc[best, "mean_fit_time"]), candidates=len(table),
        cv_results=table, seconds=time.perf_counter() - start, budget=round(seconds, 3),
        rows=rows)


def _affordable_rows(family: str, pipeline: Any, X: pd.DataFrame, y: np.ndarray,
                     probe_rows: np.ndarray, seconds: float,
                     engine: Mapping[str, Any]) -> tuple[SearchResult, int]:
    """The probe, and the rows of ``X`` a first bracket can search within ``seconds``.

    The probe cross-validates the family's defaults on ``probe_rows`` (:data:`PROBE_ROWS`
    positions, a stratified random share); the bracket's cost is the probe's wall time times
    the bracket's work (:func:`_bracket_work`) times the rows, taken as linear in the rows
    (histogram trees and linear models are; the probe's fixed costs make the guess err on the
    small side)."""
    start = time.perf_counter()
    found = _search(family, pipeline, X.iloc[probe_rows], y[probe_rows], [{}],
                    method="halving", **engine)
    probe = time.perf_counter() - start
    budget = _halving_budget(family, engine["budget"])
    work = _bracket_work(BRACKET, engine["factor"], budget in ("rounds", "epochs"))
    rows = int(PROBE_ROWS * max(0.0, seconds - probe) / (work * max(probe, 1e-3)))
    logger.debug("search %s: probe %.1f s on %d rows, a bracket affords %d of %d rows",
                 family, probe, PROBE_ROWS, rows, len(X))
    return found, min(len(X), rows)


class TimeBudget:
    """The auto search's time split between families: boosting gets :data:`BOOSTING_SHARE`
    and goes last, the others share the rest; what a family leaves unused passes on.

    Boosting's share is reserved: a family searched before it whose first bracket (which
    always runs) overran its allowance does not eat it (California housing: a random forest
    bracket of 42 s against a 19 s budget left XGBoost nothing).
    """

    def __init__(self, job: JobSpec, n_train: int) -> None:
        boosting = [f for f in job.models if FAMILIES[f]["budget"] == "rounds"]
        others = [f for f in job.models if f not in boosting]
        self.order = others + boosting
        self.left = time_budget(job, n_train)
        share = BOOSTING_SHARE if boosting and others else 1.0
        self.shares = {**{f: (1 - share) / len(others) for f in others},
                       **{f: share / len(boosting) for f in boosting}}
        self.reserved = {f: self.left * self.shares[f] for f in boosting}
        logger.info("search: auto over %s, time budget %.0f s (search.time_budget)",
                    ", ".join(self.order), self.left)

    def allowance(self, family: str) -> float:
        waiting = sum(self.shares.values())
        return max(self.reserved.get(family, 0.0), self.left * self.shares[family] / waiting)

    def spend(self, family: str, seconds: float) -> None:
        self.left -= seconds
        del self.shares[family]


def slower_boosting(params: Mapping[str, Any], rounds: int) -> dict[str, Any]:
    """A boosting winner's parameters as the auto search refits them: half the learning rate
    (at least 0.01) while that keeps its ``rounds`` (the search's CV choice) within
    :data:`SLOWER_MAX_ROUNDS` once doubled, and room for the rounds the refit needs (CV or the
    validation split chooses them): the usual last step of tuning a booster. A winner that
    already needs more rounds keeps its rate: halving it would double the cost of the final
    fits (a 90,000-row set kept 3,118 trees at half the rate, and those fits took most of the
    run)."""
    rate = float(params.get("learning_rate", 0.1))
    if 2 * rounds <= SLOWER_MAX_ROUNDS:
        rate = max(0.01, rate / 2)
    return {**params, "learning_rate": rate,
            "n_estimators": max(int(params.get("n_estimators", 300)), 3 * rounds)}


def _candidate_count(params: Mapping[str, Any], n_iter: int) -> int:
    if any(isinstance(v, dict) for v in params.values()):
        return n_iter
    return math.prod(len(v) for v in params.values() if isinstance(v, list))


def needs_search(job: JobSpec) -> bool:
    """A choice to make: several families, or a family with several candidates."""
    if job.search.method == "auto":
        return True
    counts = [_candidate_count(p, job.search.n_iter) for p in job.models.values()]
    return len(counts) > 1 or counts[0] > 1


def search_sample(job: JobSpec, train: Any, n_train: int) -> pd.DataFrame | None:
    """The in-memory sample of training rows the search and the ``sample`` families use
    (``search.sample_rows``), or None when nothing needs one."""
    from pipeline.models import training_mode
    from pipeline.split import sample_rows

    if not needs_search(job) and all(training_mode(f, job.data.task) != "sample"
                                     for f in job.models):
        return None
    return sample_rows(train, min(job.search.sample_rows, n_train), job.data.split.seed)


def search_families(job: JobSpec, sample: pd.DataFrame | None, prefix: Prefix,
                    feature_columns: Sequence[str], classes: Sequence[Any] | None,
                    client: Client, lap: Callable[[str, str], None] | None = None
                    ) -> dict[str, SearchResult]:
    """Each family's best candidate (no CV at all when there is nothing to choose between).

    Families search the in-memory ``sample`` with k-fold CV (:func:`search_family`), except
    XGBoost under ``search.strategy: full`` (:func:`search_full` on the ``prefix``'s rows).
    ``lap(stage, message)`` is called as each family's search ends.
    """
    from sklearn.pipeline import Pipeline

    from pipeline.evaluate import fmt_metric
    from pipeline.models import make_estimator
    from pipeline.steps import build_preprocessor, target

    task, search = job.data.task, job.search
    if not needs_search(job):
        family = next(iter(job.models))
        return {family: SearchResult(
            family=family, method="none", best_params=dict(job.models[family]), cv_mean=None,
            cv_std=None, fit_seconds=0.0, candidates=1, cv_results=pd.DataFrame())}
    y = np.asarray(target(sample, job, classes))
    X = sample[list(feature_columns)]
    n_classes = len(classes) if classes else None
    clock = TimeBudget(job, prefix.rows["train"]) if search.method == "auto" else None
    out = {}
    for family in clock.order if clock else job.models:
        params = job.models[family]
        if search.strategy == "full" and family == "xgboost":
            found = search_full(job, params, prefix, n_classes, client)
        else:
            fixed, _ = split_grid(params)
            pipeline = Pipeline(build_preprocessor(job, feature_columns, family, n_classes).steps
                                + [("model", make_estimator(family, task, fixed, search.seed))])
            rows = family_rows(family, search.sample_rows)
            # a family capped below the sample (kernel SVM, kNN) gets a random share of it,
            # not its first rows (the sample is in partition order: often time order)
            take = (np.sort(np.random.default_rng(search.seed).permutation(len(X))[:rows])
                    if rows < len(X) else slice(None))
            X_family, y_family = X.iloc[take], y[take]
            if clock:
                found = search_auto(family, pipeline, X_family, y_family, job=job,
                                    seconds=clock.allowance(family), client=client)
                clock.spend(family, found.seconds)
            else:
                found = search_family(
                    family, pipeline, X_family, y_family, params=params, task=task,
                    primary=job.primary_metric, method=search.method, cv=search.cv,
                    n_iter=search.n_iter, factor=search.factor, seed=search.seed,
                    client=client, patience=job.train.early_stopping_rounds,
                    budget=search.budget)
        spread = f" ± {found.cv_std:.4f}" if found.cv_std is not None else ""
        spent = ""
        if found.budget is not None:  # search: auto: how its share of the time went
            share = f", on {found.rows:,} of {len(X_family):,} rows" if found.rows else ""
            spent = f" ({found.seconds:.0f} s of its {found.budget:.0f} s{share})"
        if lap is not None:
            lap(f"search:{family}", f"{family}: {found.candidates} candidate(s), {found.method} "
                f"search{spent}, best {job.primary_metric} = {fmt_metric(found.cv_mean)}"
                f"{spread}")
        out[family] = found
    return out


def choose(searches: Mapping[str, SearchResult], primary: str) -> str:
    """The winning family: :func:`selection_key` on each family's best CV score."""
    return min(searches, key=lambda family: selection_key(
        searches[family].cv_mean, searches[family].fit_seconds, primary))


def cv_table(searches: Mapping[str, SearchResult]) -> pd.DataFrame:
    """Every family's CV results in one table (parameters as JSON text)."""
    import json

    tables = [found.cv_results.assign(params=lambda d: d["params"].map(
        lambda p: json.dumps(p, sort_keys=True, default=str)))
        for found in searches.values() if len(found.cv_results)]
    if not tables:
        return pd.DataFrame({"family": pd.Series(dtype="str"),
                             "params": pd.Series(dtype="str")})
    return pd.concat(tables, ignore_index=True)


def search_files(searches: Mapping[str, SearchResult]) -> dict[str, bytes]:
    """The search stage as files (for the resume store); :func:`load_searches` reads them."""
    from pipeline.artifacts import json_bytes, parquet_bytes

    return {"search.json": json_bytes({f: r.to_json() for f, r in searches.items()}),
            "cv_results.parquet": parquet_bytes(cv_table(searches))}


def load_searches(files: Mapping[str, bytes]) -> dict[str, SearchResult]:
    """The search stage written by :func:`search_files`."""
    import io
    import json

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
            seconds=doc["seconds"], budget=doc.get("budget"), rows=doc.get("rows"))
    return out
