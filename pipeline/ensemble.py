"""The ensemble of a run (``search.ensemble: true``): each family's best model, averaged with
weights fitted on out-of-fold predictions.

As H2O AutoML's "best of family" stacked ensemble and AutoGluon's weighted ensemble do:

1. :func:`out_of_fold`: every family's best candidate, its pipeline built as the search builds
   it, predicts each row of the search sample from a model that did not see it (the search's
   own k-fold splitter and seed; folds x families as tasks on the cluster, one gather).
   XGBoost takes the round count of its refitted model (chosen by CV on small data, by early
   stopping on the validation rows on large data), with its refit learning rate.
2. :func:`caruana`: greedy forward selection with replacement (Caruana et al., "Ensemble
   selection from libraries of models", ICML 2004; AutoGluon's ``EnsembleSelection``): start
   from the best single model; at each step add (again, maybe) the member whose addition
   gives the best average on the primary metric (its mean over the folds, as the search
   scores a candidate, so the ensemble's ``cv_mean`` compares with the families'); keep the
   best step. Weights are the counts over the steps kept, so they sum to one and the
   ensemble is never worse than its best member on the out-of-fold predictions.
3. :func:`build`: the ensemble of the families' refitted models
   (:class:`~pipeline.ensemble_predictor.EnsemblePredictor`), evaluated on the holdout with
   the members as they were evaluated (a small-data XGBoost is refit on the holdout rows
   after its evaluation: :attr:`pipeline.train.FamilyFit.evaluated`), as a
   :class:`~pipeline.train.FamilyFit` whose leaderboard row is the family ``ensemble``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.ensemble_predictor import FAMILY, average

if TYPE_CHECKING:
    from distributed import Client

    from pipeline.config import JobSpec
    from pipeline.select import SearchResult
    from pipeline.split import Parts
    from pipeline.train import FamilyFit

logger = logging.getLogger("pipeline")

#: steps of the greedy selection (AutoGluon's default ensemble size is 25 too).
ITERATIONS = 25


@dataclass
class OutOfFold:
    """The search sample's out-of-fold predictions of each member, and the folds."""

    predictions: dict[str, np.ndarray]  # family -> (n,) or (n, k): every row predicted once
    y: np.ndarray  # the sample's target: class codes or values
    folds: list[np.ndarray]  # each fold's test rows (positions in the sample)
    seconds: float


def member_params(found: SearchResult, fit: FamilyFit) -> dict[str, Any]:
    """A family's parameters for its out-of-fold fits: its best candidate's, and for XGBoost
    the round count of its refitted model (``n_estimators`` is a cap early stopping ends;
    the refit's learning rate can differ from the search's, so its rounds go with it)."""
    params = dict(found.best_params)
    trees = fit.refit.details.get("trees")
    if found.family == "xgboost" and trees:
        params["n_estimators"] = int(trees)
    return params


def out_of_fold(job: JobSpec, searches: Mapping[str, SearchResult],
                fits: Mapping[str, FamilyFit], sample: pd.DataFrame,
                feature_columns: Sequence[str], classes: Sequence[Any] | None,
                client: Client) -> OutOfFold:
    """Each family's out-of-fold predictions on the search ``sample`` (see the module
    docstring); the folds are the search's (:func:`pipeline.models.cv_splitter`).

    A family the search caps below the sample (kernel SVM, kNN: :func:`family_rows`) trains
    each fold on a random share of the fold's rows, and predicts every held-out row.
    """
    from sklearn.pipeline import Pipeline

    from pipeline.models import cv_splitter, family_rows, make_estimator
    from pipeline.steps import build_preprocessor, target

    start = time.perf_counter()
    task, search = job.data.task, job.search
    y = np.asarray(target(sample, job, classes))
    X = sample[list(feature_columns)]
    n_classes = len(classes) if classes else None
    splits = list(cv_splitter(task, search.cv, search.seed).split(X, y))
    [data] = client.scatter([(X, y)], broadcast=True, hash=False)
    tasks = {}
    for family, found in searches.items():
        model = make_estimator(family, task, member_params(found, fits[family]), search.seed)
        pipeline = Pipeline(build_preprocessor(job, feature_columns, family, n_classes).steps
                            + [("model", model)])
        rows = family_rows(family, search.sample_rows)
        for f, (train, test) in enumerate(splits):
            tasks[(family, f)] = client.submit(_fold_predictions, data, pipeline, train, test,
                                               task, n_classes, rows, search.seed, pure=False)
    done = dict(zip(tasks, client.gather(list(tasks.values()))))
    client.cancel([data])
    predictions = {}
    for family in searches:
        out = np.zeros((len(y), n_classes) if task == "multiclass" else len(y))
        for f, (_, test) in enumerate(splits):
            out[test] = done[(family, f)]
        predictions[family] = out
    return OutOfFold(predictions, y, [test for _, test in splits],
                     time.perf_counter() - start)


def _fold_predictions(data: tuple[pd.DataFrame, np.ndarray], pipeline: Any, train: np.ndarray,
                      test: np.ndarray, task: str, n_classes: int | None, rows: int,
                      seed: int) -> np.ndarray:
    """One family on one fold (a task): fitted on the fold's training rows, its output on
    the test rows (P(positive), class probabilities in code order, or values)."""
    from sklearn.base import clone

    X, y = data
    if rows < len(train):
        train = np.sort(np.random.default_rng(seed).permutation(train)[:rows])
    fitted = clone(pipeline).fit(X.iloc[train], y[train])
    if task == "regression":
        return np.asarray(fitted.predict(X.iloc[test]), dtype=np.float64)
    proba = np.zeros((len(test), int(n_classes or 2)))
    # a class missing from the fold's training rows gets probability 0
    proba[:, np.asarray(fitted.classes_, dtype=np.int64)] = fitted.predict_proba(X.iloc[test])
    if task == "binary":
        return proba[:, 1]
    # rows summing to one in float64 (XGBoost's are float32), as the scorers check
    return proba / proba.sum(axis=1, keepdims=True)


def metric(predictions: np.ndarray, y: np.ndarray, name: str, task: str,
           n_classes: int | None) -> float:
    """Metric ``name`` of fixed ``predictions`` against ``y``, with the search's scikit-learn
    scorer (:data:`pipeline.models.SCORERS`); lower-is-better metrics stay positive.

    Examples
    --------
    >>> metric(np.array([0.2, 0.9, 0.6]), np.array([0, 1, 1]), "roc_auc", "binary", 2)
    1.0
    """
    from sklearn.metrics import check_scoring

    from pipeline.estimators import fixed_predictions
    from pipeline.models import GREATER_IS_BETTER, SCORERS

    stand_in = fixed_predictions(predictions, None if task == "regression"
                                 else np.arange(n_classes or 2))
    value = float(check_scoring(stand_in, scoring=SCORERS[name])(stand_in, None, y))
    return value if GREATER_IS_BETTER[name] else -value


def caruana(predictions: Sequence[np.ndarray], loss: Callable[[np.ndarray], float],
            iterations: int = ITERATIONS) -> np.ndarray:
    """Weights of Caruana's greedy ensemble selection with replacement.

    At each of ``iterations`` steps the member whose addition to the running average gives
    the lowest ``loss`` is added (ties: the first member), the first step so picking the best
    single member; the steps are then cut after the best one (as AutoGluon does), so the
    weighted average's loss is never above the best member's. Weights are each member's
    count over the kept steps: non-negative, summing to one. Deterministic.

    Examples
    --------
    >>> y = np.array([0.0, 1.0, 2.0])
    >>> mse = lambda p: float(np.mean((p - y) ** 2))
    >>> caruana([y + 1.0, y - 1.0, y + 3.0], mse, iterations=4)
    array([0.5, 0.5, 0. ])
    """
    if not len(predictions):
        raise ValueError("ensemble selection needs at least one member")
    total = np.zeros_like(np.asarray(predictions[0], dtype=np.float64))
    chosen: list[int] = []
    trajectory: list[float] = []
    for step in range(iterations):
        trials = [loss((total + p) / (step + 1)) for p in predictions]
        best = int(np.argmin(trials))  # the first of equals
        chosen.append(best)
        trajectory.append(trials[best])
        total = total + predictions[best]
    kept = chosen[:int(np.argmin(trajectory)) + 1]
    return np.bincount(kept, minlength=len(predictions)) / len(kept)


def fold_scores(prediction: np.ndarray, oof: OutOfFold, name: str, task: str,
                n_classes: int | None) -> list[float]:
    """``name`` on each fold's held-out rows (as the search scores a candidate)."""
    return [metric(prediction[test], oof.y[test], name, task, n_classes) for test in oof.folds]


def build(job: JobSpec, searches: Mapping[str, SearchResult], fits: Mapping[str, FamilyFit],
          sample: pd.DataFrame, parts: Parts, train_rows: Any,
          feature_columns: Sequence[str], classes: Sequence[Any] | None,
          client: Client) -> FamilyFit:
    """The run's ensemble of its families' best models, as a leaderboard entry.

    ``searches`` and ``fits``: each family's search and refit (:func:`pipeline.select.
    search_families`, :func:`pipeline.train.refit_family`); ``sample``: the search sample;
    ``parts``, ``train_rows``: the holdout and the overfit check's training rows.

    Returns a :class:`~pipeline.train.FamilyFit` of the family ``ensemble``: its ``search``
    is a :class:`~pipeline.select.SearchResult` (method ``caruana``, ``best_params`` the
    weights, ``cv_mean`` / ``cv_std`` the weighted average's score over the search's folds,
    out of fold, as comparable to each family's as the families' are to one another), its
    ``predictor`` the ensemble of the refitted members, its holdout metrics those of the
    members as they were evaluated.

    Examples
    --------
    >>> fit = build(job, searches, fits, sample, parts, train_rows, features, classes,
    ...             client)                                           # doctest: +SKIP
    >>> fit.search.best_params                                        # doctest: +SKIP
    {'xgboost': 0.64, 'logistic_regression': 0.36}
    """
    from pipeline.models import GREATER_IS_BETTER

    if len(searches) < 2 or sample is None:
        raise ValueError(f"search.ensemble averages several families' models; the job has "
                         f"{len(searches)} ({', '.join(searches)}): add families under models:"
                         " or set search.ensemble: false")
    start = time.perf_counter()
    task, primary = job.data.task, job.primary_metric
    n_classes = len(classes) if classes else None
    oof = out_of_fold(job, searches, fits, sample, feature_columns, classes, client)
    families = list(searches)
    sign = -1.0 if GREATER_IS_BETTER[primary] else 1.0

    # the search's score of a candidate: the metric's mean over the folds
    def score(p: np.ndarray) -> float:
        return float(np.mean(fold_scores(p, oof, primary, task, n_classes)))

    weights = caruana([oof.predictions[f] for f in families], lambda p: sign * score(p))
    members = [f for f, w in zip(families, weights) if w > 0]
    kept = [float(w) for w in weights if w > 0]
    blend = average([oof.predictions[f] for f in members], kept)
    scores = fold_scores(blend, oof, primary, task, n_classes)
    means = {**{f: score(oof.predictions[f]) for f in families}, FAMILY: float(np.mean(scores))}
    seconds = time.perf_counter() - start
    logger.info("ensemble: %s; out-of-fold %s %.4f (best member %.4f)",
                ", ".join(f"{f} {w:.2f}" for f, w in zip(members, kept)), primary,
                means[FAMILY], sign * min(sign * means[f] for f in families))
    details = {
        # each member's and the ensemble's score, out of fold, mean over the folds
        "out_of_fold": {"metric": primary, "rows": len(oof.y), "scores": means},
        "selection": f"Caruana's greedy selection with replacement, {ITERATIONS} steps, on "
                     f"out-of-fold predictions of the search sample ({job.search.cv} folds)",
    }
    return _entry(job, searches, fits, dict(zip(members, kept)), scores, details, seconds,
                  parts, train_rows, client)


def _entry(job: JobSpec, searches: Mapping[str, SearchResult], fits: Mapping[str, FamilyFit],
           chosen: dict[str, float], scores: list[float], details: dict[str, Any],
           seconds: float, parts: Parts, train_rows: Any, client: Client) -> FamilyFit:
    """The ensemble's :class:`~pipeline.train.FamilyFit`: shipped with the refitted members,
    evaluated with the members as evaluated."""
    from pipeline.ensemble_predictor import from_predictors
    from pipeline.evaluate import evaluate_predictor
    from pipeline.select import SearchResult
    from pipeline.steps import tail_steps
    from pipeline.train import FamilyFit, Refit

    threshold = job.evaluate.threshold
    members, weights = list(chosen), list(chosen.values())
    tails = [len(tail_steps(job, f)) for f in members]
    shipped = from_predictors([fits[f].predictor for f in members], weights, tails,
                              threshold=threshold)
    evaluated = from_predictors([fits[f].as_evaluated for f in members], weights, tails,
                                threshold=threshold)
    clock = time.perf_counter()
    metrics = evaluate_predictor(evaluated, {"holdout": (parts.holdout, True),
                                             "train": (train_rows, False)}, job, client)
    predict_seconds = time.perf_counter() - clock
    found = SearchResult(
        family=FAMILY, method="caruana", best_params=chosen,
        cv_mean=float(np.mean(scores)), cv_std=float(np.std(scores)),
        # every family is fitted to choose the weights: on a tie, a family wins
        fit_seconds=float(sum(found.fit_seconds for found in searches.values())),
        candidates=len(searches), cv_results=pd.DataFrame(), seconds=seconds)
    details = {"members": {f: {"weight": w, "training": fits[f].refit.training,
                               "params": fits[f].refit.params} for f, w in chosen.items()},
               **details}
    refit = Refit(FAMILY, FAMILY, shipped.model, chosen,
                  float(sum(fits[f].refit.seconds for f in members)) + seconds,
                  rows=max(fits[f].refit.rows for f in members), details=details)
    return FamilyFit(found, refit, shipped, metrics["holdout"], metrics["train"],
                     peak_memory=None, predict_seconds=predict_seconds,
                     evaluated=evaluated if any(fits[f].evaluated is not None
                                                 for f in members) else None)
