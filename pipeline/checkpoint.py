"""Boosting checkpoints written to the output store during xgboost.dask training.

A module of its own because it subclasses XGBoost's callback at import time, and
``pipeline.train`` must stay importable without XGBoost (``mlpipe --help``).
"""

from __future__ import annotations

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
