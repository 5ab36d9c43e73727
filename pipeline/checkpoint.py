"""Callbacks that run inside xgboost.dask's training task on the workers: boosting
checkpoints written to the output store, and progress sent back to the client.

A module of its own because it subclasses XGBoost's callback at import time, and
``pipeline.train`` must stay importable without XGBoost (``mlpipe --help``).
"""

from __future__ import annotations

import time
from typing import Any

from xgboost import collective
from xgboost.callback import TrainingCallback

from pipeline.artifacts import atomic_write


class StoreCheckpoint(TrainingCallback):
    """Every ``every`` rounds, the booster to ``(filesystem, path)``, atomically.

    It runs inside xgboost.dask's training task on each worker; only rank 0 writes. The format
    is XGBoost's own UBJSON (``save_raw``), read back with ``Booster.load_model``: never
    pickle.
    """

    def __init__(self, target: tuple[Any, str], every: int) -> None:
        super().__init__()
        self.fs, self.path = target
        self.every = int(every)

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        if model.num_boosted_rounds() % self.every == 0 and collective.get_rank() == 0:
            atomic_write(self.fs, self.path, bytes(model.save_raw(raw_format="ubj")))
        return False


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
