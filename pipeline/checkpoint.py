"""Callbacks that run inside xgboost.dask's training task on the workers: boosting
checkpoints written to the output store, and progress sent back to the client.

A module of its own because it subclasses XGBoost's callback at import time, and
``pipeline.train`` must stay importable without XGBoost (``mlpipe --help``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from xgboost import collective
from xgboost.callback import EarlyStopping, TrainingCallback

from pipeline.artifacts import atomic_write

#: the booster attribute that carries the evaluation history inside a checkpoint
HISTORY_ATTR = "mlpipe_history"

History = dict[str, dict[str, list[float]]]


class StoreCheckpoint(TrainingCallback):
    """Every ``every`` rounds, the booster to ``(filesystem, path)``, atomically.

    It runs inside xgboost.dask's training task on each worker; only rank 0 writes. The format
    is XGBoost's own UBJSON (``save_raw``), read back with ``Booster.load_model``: never
    pickle. The evaluation history so far (``prior``, the rounds before this training
    resumed, then this training's) travels inside it as the attribute :data:`HISTORY_ATTR`
    of a copy, so that a run resumed in another process continues early stopping and the
    learning curve exactly where the checkpoint left them (:func:`split_checkpoint`).
    """

    def __init__(self, target: tuple[Any, str], every: int,
                 prior: Mapping[str, Mapping[str, list[float]]] | None = None) -> None:
        super().__init__()
        self.fs, self.path = target
        self.every = int(every)
        self.prior = {n: {m: list(v) for m, v in c.items()} for n, c in (prior or {}).items()}

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        if model.num_boosted_rounds() % self.every == 0 and collective.get_rank() == 0:
            history = merged(self.prior, evals_log)
            copy = model.copy()
            copy.set_attr(**{HISTORY_ATTR: json.dumps(history)})
            atomic_write(self.fs, self.path, bytes(copy.save_raw(raw_format="ubj")))
        return False


def merged(prior: Mapping[str, Mapping[str, list[float]]], log: Any) -> History:
    """``prior`` followed by ``log`` (XGBoost's evals log), as plain floats."""
    out: History = {n: {m: [float(x) for x in v] for m, v in c.items()}
                    for n, c in prior.items()}
    for name, curves in (log or {}).items():
        for metric, values in curves.items():
            out.setdefault(name, {}).setdefault(metric, []).extend(float(v) for v in values)
    return out


def split_checkpoint(raw: bytes) -> tuple[Any, History]:
    """A checkpoint's booster (without the history attribute) and the history it carried."""
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(bytearray(raw))
    text = booster.attr(HISTORY_ATTR)
    booster.set_attr(**{HISTORY_ATTR: None})
    return booster, (json.loads(text) if text else {})


class ResumedStopping(EarlyStopping):
    """XGBoost's early stopping, continued from the scores of the rounds before a resume.

    XGBoost's own callback starts counting afresh on a resumed booster: its best score and
    its rounds without improvement would then differ from an uninterrupted run's, and so
    could the round it stops at. The scores of the earlier rounds (``prior``, the watched
    metric of the watched data, in round order) are replayed first, with XGBoost's own rule.
    """

    def __init__(self, *, prior: list[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.prior = [float(v) for v in prior]

    def before_training(self, model: Any) -> Any:
        model = super().before_training(model)
        # after_iteration adds starting_round to the epoch it is given: round i of the prior
        # scores is epoch i - len(prior) of this training
        for i in range(len(self.prior)):
            self.after_iteration(model, i - len(self.prior),
                                 {self.data: {self.metric_name: self.prior[: i + 1]}})
        return model


#: the distributed event topic of :class:`RoundProgress`
PROGRESS_TOPIC = "mlpipe-train-progress"


class RoundProgress(TrainingCallback):
    """At most every ``interval`` seconds (and at the last round), rank 0 sends
    ``{"round", "rounds", "metrics"}`` to the client as a distributed event
    (``Worker.log_event``; the client subscribes to :data:`PROGRESS_TOPIC`).

    The boosting loop runs inside one task per worker, so nothing else could tell the user
    how far it has got: Dask's progress bars see one long task.
    """

    def __init__(self, rounds: int, start: int = 0, interval: float = 10.0) -> None:
        super().__init__()
        self.rounds, self.start, self.interval = int(rounds), int(start), float(interval)
        self._last = time.monotonic()

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        now = time.monotonic()
        done = self.start + epoch + 1
        if collective.get_rank() == 0 and (now - self._last >= self.interval
                                           or done == self.rounds):
            self._last = now
            metrics = {f"{data}-{name}": float(values[-1])
                       for data, curves in (evals_log or {}).items()
                       for name, values in curves.items() if len(values)}
            try:
                from distributed import get_worker

                get_worker().log_event(PROGRESS_TOPIC, {"round": done, "rounds": self.rounds,
                                                        "metrics": metrics})
            except ValueError:  # not on a Dask worker (a local test): nobody to tell
                pass
        return False
