"""The shared prefix fitted in shared passes (pipeline.steps.fit_prefix, pipeline.frames.run_fits)
equals the same steps fitted one by one, and takes a few graphs instead of one per pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from benchmarks.bench_data import graphs
from pipeline.frames import INPUT, ROWS, run_fits, together
from tests.conftest import demo_job
from tests.pipeline.test_preprocess import assert_same_state


def _fit(log: list, name: str, passes: int, ask: Any = None):
    """A fit that asks for ``passes`` passes, then (optionally) for its input."""
    got = []
    for k in range(passes):
        log.append((name, "pass", k))
        got.append((yield {name: k}))
    if ask is not None:
        frame = yield ask
        log.append((name, "input", frame))
    return name, got


def test_run_fits_shares_passes_and_gives_inputs_in_order(monkeypatch) -> None:
    import pipeline.frames as frames

    computes: list[dict] = []

    def compute(lazy: dict) -> tuple[dict]:
        computes.append(lazy)
        return ({i: {k: f"{k}={v}" for k, v in r.items()} for i, r in lazy.items()},)

    monkeypatch.setattr(frames, "compute", compute)
    log: list = []
    asked: list = []

    def input_of(i: int, done: list, rows: bool) -> str:
        asked.append((i, [d[0] for d in done], rows))
        return f"frame{i}"

    fits = [_fit(log, "a", 2), _fit(log, "b", 1, ask=ROWS), _fit(log, "c", 3, ask=INPUT)]
    results = run_fits(fits, input_of)
    # every round answers all waiting fits at once: as many computes as the longest fit
    assert len(computes) == 3
    assert computes[0] == {0: {"a": 0}, 1: {"b": 0}, 2: {"c": 0}}
    # b's input only once a has returned; c's once a and b have
    assert asked == [(1, ["a"], True), (2, ["a", "b"], False)]
    assert results == [("a", [{"a": "a=0"}, {"a": "a=1"}]), ("b", [{"b": "b=0"}]),
                       ("c", [{"c": "c=0"}, {"c": "c=1"}, {"c": "c=2"}])]
    assert ("b", "input", "frame1") in log and ("c", "input", "frame2") in log


def test_together_merges_passes_of_parts() -> None:
    log: list = []
    run = together([_fit(log, "a", 1), _fit(log, "b", 2)])
    assert next(run) == {0: {"a": 0}, 1: {"b": 0}}
    assert run.send({0: "x", 1: "y"}) == {1: {"b": 1}}
    with pytest.raises(StopIteration) as stop:
        run.send({1: "z"})
    assert stop.value.value == [("a", ["x"]), ("b", ["y", "z"])]


@pytest.mark.parametrize("bin_clipped", [False, True], ids=["early", "features-wait"])
def test_prefix_fitted_together_equals_steps_one_by_one(
        client: Any, demo_dir: Path, tmp_path: Path, bin_clipped: bool) -> None:
    from sklearn.pipeline import Pipeline

    from pipeline import load
    from pipeline.config import load_job
    from pipeline.split import split_job
    from pipeline.steps import fit_prefix, prefix_steps, target

    raw = demo_job(str(demo_dir), str(tmp_path / "out"))
    if bin_clipped:  # a bin on a clipped column: the features learn on the clipper's output
        raw["features"].append({"kernel": "bin", "columns": ["savings"], "n_bins": 5})
    job = load_job(raw)
    training = load.load_training(job, load.plan_training(job))
    parts = split_job(training.frame, job, training.summary.time_cutoff)
    classes = training.summary.classes
    before = graphs(client)
    prefix = fit_prefix(job, parts, training.feature_columns, classes, client)
    given = graphs(client) - before

    # the reference: every step fitted on its own, in order, on the computed rows
    train = parts.train.compute()
    y = target(train, job, classes)
    reference = Pipeline(prefix_steps(job, training.feature_columns, len(classes)))
    X = train
    for _, step in reference.steps:
        X = step.fit_transform(X, y)
    for (name, ours), (_, theirs) in zip(prefix.pipeline.steps, reference.steps):
        assert_same_state(ours, theirs), name
    pd.testing.assert_frame_equal(prefix.X_train.compute(), X, check_exact=False, rtol=1e-12)
    valid = parts.valid.compute()
    pd.testing.assert_frame_equal(prefix.X_valid.compute(), reference.transform(valid),
                                  check_exact=False, rtol=1e-12)
    assert prefix.rows == {"train": len(train), "valid": len(valid),
                           "holdout": len(parts.holdout.compute())}
    # the schema's rows persisted; pass 1 (every step's first statistics), pass 2 (quantile
    # buckets); the encoder's input persisted and read (its folds hash every column); the
    # result persisted; the row counts. Features waiting for the clipper add a persist of
    # their input and their own two passes.
    assert given <= (10 if bin_clipped else 7), given
    edges = prefix.pipeline.named_steps["features"].edges_
    assert np.all(np.diff(edges["credit_score"]) > 0)
