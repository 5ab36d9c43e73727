"""The loaded ensemble: several models' predictions averaged with fixed weights, behind the
:class:`~pipeline.predictor.Predictor` interface (scoring, serving and evaluation call it as
they call any model).

The members share the run's preprocessing prefix (schema, cleaning, declared features and
encodings), applied once per batch; each keeps its own tail (imputation, encoding, scaling as
its family needs) and its model. Classifiers are averaged on their class probabilities,
regressors on their values; the weights sum to one (:func:`pipeline.ensemble.caruana` fits
them). :mod:`pipeline.ensemble` builds an ensemble during a run; this module is what a bundle
loads, so it imports nothing that trains.

In a bundle (pickle-free, every file listed in the manifest)::

    preprocessor.skops                  the shared prefix (as in every bundle)
    ensemble.json                       task, classes, members and weights (:meth:`Ensemble.spec`)
    member-<family>-tail.skops          a member's preprocessing tail
    member-<family>.ubj                 its XGBoost booster, or member-<family>.skops

(flat names: a bundle is one directory on every store)

:func:`pipeline.artifacts.model_files` writes the files (:meth:`Ensemble.parts`),
:func:`pipeline.artifacts.load_predictor` reads them back through :func:`load`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipeline.predictor import Predictor

#: the ensemble's description in a bundle; its presence makes a bundle an ensemble's.
SPEC = "ensemble.json"
#: ``family`` of an ensemble's predictor and leaderboard row.
FAMILY = "ensemble"


class Ensemble:
    """The model of an :class:`EnsemblePredictor`: members and their weights.

    Parameters
    ----------
    members
        One :class:`~pipeline.predictor.Predictor` per member whose ``preprocessor`` is the
        member's tail only: it takes the shared prefix's output.
    weights
        One weight per member, non-negative, summing to one.

    Examples
    --------
    >>> ensemble = Ensemble([booster_member, linear_member], [0.6, 0.4])  # doctest: +SKIP
    >>> ensemble.raw(prefix.transform(frame))                             # doctest: +SKIP
    """

    def __init__(self, members: Sequence[Predictor], weights: Sequence[float]) -> None:
        weights = np.asarray(weights, dtype=np.float64)
        if len(members) != len(weights) or not len(members):
            raise ValueError(f"an ensemble needs one weight per member: {len(members)} "
                             f"member(s), {len(weights)} weight(s)")
        if (weights < 0).any() or not np.isclose(weights.sum(), 1.0):
            raise ValueError(f"ensemble weights must be non-negative and sum to 1, got "
                             f"{weights.tolist()}")
        families = [m.family for m in members]
        if len(set(families)) != len(families):
            raise ValueError(f"an ensemble takes each family once, got {families}")
        self.members = list(members)
        self.weights = weights

    @property
    def families(self) -> list[str]:
        return [m.family for m in self.members]

    def member_raw(self, Xt: pd.DataFrame) -> list[np.ndarray]:
        """Each member's output on the prefix's output ``Xt``: P(positive) (binary), class
        probabilities (multiclass) or values (regression)."""
        out = []
        for member in self.members:
            if member.task == "regression":
                out.append(np.asarray(member.predict(Xt), dtype=np.float64))
            else:
                proba = member.predict_proba(Xt)
                out.append(proba[:, 1] if member.task == "binary" else proba)
        return out

    def raw(self, Xt: pd.DataFrame) -> np.ndarray:
        """The weighted average of :meth:`member_raw`."""
        return average(self.member_raw(Xt), self.weights)

    def spec(self) -> dict[str, Any]:
        """``ensemble.json``: what :func:`load` needs besides the stored objects."""
        first = self.members[0]
        return {"task": first.task, "classes": first.classes,
                "members": [{"family": m.family, "weight": float(w)}
                            for m, w in zip(self.members, self.weights)]}

    def parts(self) -> dict[str, Any]:
        """The objects to store, by file stem (``member-<family>`` for the model,
        ``member-<family>-tail`` for its preprocessing tail)."""
        out: dict[str, Any] = {}
        for member in self.members:
            out[stem(member.family)] = member.model
            out[f"{stem(member.family)}-tail"] = member.preprocessor
        return out


def stem(family: str) -> str:
    """The file stem of a member's model in a bundle (``member-<family>``)."""
    return f"member-{family}"


def average(outputs: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """``sum(w * output)``: the ensemble's output from its members' (same shapes)."""
    total = np.zeros_like(np.asarray(outputs[0], dtype=np.float64))
    for output, weight in zip(outputs, weights):
        total += float(weight) * np.asarray(output, dtype=np.float64)
    return total


class EnsemblePredictor(Predictor):
    """A :class:`~pipeline.predictor.Predictor` whose model is an :class:`Ensemble`.

    ``preprocessor`` is the members' shared prefix (its first step the
    :class:`~pipeline.preprocess.InputSchema`), so :meth:`transform` gives the prefix's
    output, which every member's tail takes.

    Examples
    --------
    >>> model = load_model("out/models/demo")       # an ensemble's bundle  # doctest: +SKIP
    >>> model.model.families, model.model.weights                          # doctest: +SKIP
    (['xgboost', 'logistic_regression'], array([0.64, 0.36]))
    """

    def __init__(self, *, task: str, target: str, classes: Sequence[Any] | None,
                 preprocessor: Any, model: Ensemble, threshold: float = 0.5,
                 run_id: str | None = None) -> None:
        super().__init__(task=task, target=target, classes=classes, preprocessor=preprocessor,
                         model=model, threshold=threshold, family=FAMILY, run_id=run_id)

    def __repr__(self) -> str:
        members = ", ".join(f"{f}: {w:.2f}" for f, w in zip(self.model.families,
                                                            self.model.weights))
        return (f"EnsemblePredictor(task={self.task!r}, members={{{members}}}, "
                f"run_id={self.run_id!r}, features={len(self.feature_columns)})")

    def on(self, device: str) -> EnsemblePredictor:
        """As :meth:`Predictor.on`: every member moved to ``device``."""
        moved = copy.copy(self)
        moved.device = device
        moved.model = Ensemble([m.on(device) for m in self.model.members], self.model.weights)
        return moved

    def _raw(self, Xt: pd.DataFrame) -> np.ndarray:
        if len(Xt) == 0:
            return super()._raw(Xt)  # the empty output of the task's shape
        return self.model.raw(Xt)

    def report(self, df: pd.DataFrame) -> dict[str, Any]:
        """As :meth:`Predictor.report`, with the levels the members' tails have not seen
        (per column, the most any member's tail counts: each reads the same rows)."""
        out = super().report(df)
        tails: dict[str, int] = {}
        for member in self.model.members:
            for _, step in member.preprocessor.steps:
                if hasattr(step, "unseen"):
                    for column, n in step.unseen(df).items():
                        tails[column] = max(tails.get(column, 0), n)
        unseen = out["unseen_categories"]
        for column, n in tails.items():
            unseen[column] = unseen.get(column, 0) + n
        return out


def from_predictors(predictors: Sequence[Predictor], weights: Sequence[float],
                    tails: Sequence[int], *, threshold: float) -> EnsemblePredictor:
    """An :class:`EnsemblePredictor` of whole predictors (each with the shared prefix and its
    own tail of ``tails[i]`` steps): the prefix kept once (the first member's), the tails in
    the members."""
    first = predictors[0]
    steps = len(first.preprocessor.steps) - tails[0]
    members = []
    for predictor, tail in zip(predictors, tails):
        if len(predictor.preprocessor.steps) - tail != steps:
            raise ValueError(f"{predictor.family}: its preprocessing does not start with the "
                             f"prefix the other members share ({steps} steps)")
        members.append(Predictor(task=predictor.task, target=predictor.target,
                                 classes=predictor.classes,
                                 preprocessor=predictor.preprocessor[steps:],
                                 model=predictor.model, threshold=threshold,
                                 family=predictor.family))
    return EnsemblePredictor(task=first.task, target=first.target, classes=first.classes,
                             preprocessor=first.preprocessor[:steps],
                             model=Ensemble(members, weights), threshold=threshold)


def load(spec: Mapping[str, Any], schema: Mapping[str, Any], preprocessor: Any,
         read: Callable[[str], Any], run_id: str | None = None) -> EnsemblePredictor:
    """The :class:`EnsemblePredictor` of a bundle: ``spec`` is its ``ensemble.json``,
    ``schema`` its ``schema.json``, ``preprocessor`` its (verified) shared prefix, and
    ``read(stem)`` returns the verified object stored under a stem of :meth:`Ensemble.parts`
    (:func:`pipeline.artifacts.read_model`)."""
    if spec.get("task") != schema["task"] or not spec.get("members"):
        raise ValueError(f"{SPEC} describes a {spec.get('task')!r} ensemble of "
                         f"{len(spec.get('members') or [])} member(s) but schema.json a "
                         f"{schema['task']!r} model: the bundle is inconsistent")
    members = [Predictor(task=schema["task"], target=schema["target"],
                         classes=schema["classes"],
                         preprocessor=read(f"{stem(m['family'])}-tail"),
                         model=read(stem(m["family"])),
                         threshold=schema["threshold"], family=m["family"])
               for m in spec["members"]]
    return EnsemblePredictor(task=schema["task"], target=schema["target"],
                             classes=schema["classes"], preprocessor=preprocessor,
                             model=Ensemble(members, [m["weight"] for m in spec["members"]]),
                             threshold=schema["threshold"], run_id=run_id)
