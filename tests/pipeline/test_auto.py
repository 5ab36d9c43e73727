"""``search: auto`` (issue 14): the default of a job without ``models:``, each family's
practitioner space searched by successive halving in brackets within a time budget."""

from __future__ import annotations

import time

import pytest

from pipeline.config import JobError, load_job
from pipeline.models import AUTO, FAMILIES, auto_space, check_params
from pipeline.select import (
    BRACKET,
    CANDIDATES_PER_PARAMETER,
    PROBE_ROWS,
    SLOWER_MAX_ROUNDS,
    TimeBudget,
    search_auto,
    slower_boosting,
    split_grid,
    time_budget,
)
from tests.pipeline.test_select import data, pipeline_for


def spec(task: str = "binary", **extra: object) -> object:
    return load_job({"name": "t", "output": "/tmp/unused",
                     "data": {"train": "/tmp/unused", "target": "y", "task": task}, **extra})


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_a_job_without_models_searches_auto_over_the_tasks_families(task: str) -> None:
    job = spec(task)
    assert job.search.method == "auto"
    assert list(job.models) == list(AUTO[task])
    assert all(task in FAMILIES[f]["tasks"] for f in AUTO[task])


def test_auto_is_asked_for_or_left_out() -> None:
    short = spec(search="auto", models={"xgboost": {"max_depth": 4}})
    assert short.search.method == "auto" and short.models == {"xgboost": {"max_depth": 4}}
    assert spec(search={"cv": 5}).search.method == "auto"  # no models, no method: auto
    assert spec(models={"xgboost": {}}).search.method == "grid"  # models given: as before
    assert spec(search={"method": "halving"}, models={"xgboost": {}}).search.method == "halving"
    with pytest.raises(JobError, match="search.method auto runs on the in-memory sample"):
        spec(search={"method": "auto", "strategy": "full"})
    with pytest.raises(JobError, match="time_budget"):
        spec(search={"method": "auto", "time_budget": 0})


def test_every_auto_space_is_a_valid_parameter_block() -> None:
    for task, families in AUTO.items():
        for family in families:
            space = auto_space(family, {})
            check_params(family, space, task)
            _, searched = split_grid(space)
            assert searched, family  # something to search in every auto family
    # the job's own values win over the space
    assert auto_space("xgboost", {"max_depth": 3})["max_depth"] == 3


def test_the_budget_grows_with_the_rows_and_can_be_set() -> None:
    job = spec()
    assert time_budget(job, 500) == pytest.approx(5.0 + 0.375 + 0.09)
    assert time_budget(job, 20_000) == pytest.approx(23.6)
    assert time_budget(job, 1_000_000) == pytest.approx(200.0)
    assert time_budget(job, 10**9) == 3600.0
    assert time_budget(spec(search={"time_budget": 7.5}), 10**6) == 7.5


def test_boosting_keeps_its_share_when_a_family_before_it_overran() -> None:
    """The first bracket of a family always runs, so a slow one can overrun its allowance
    (a random forest on California housing: 42 s of a 19 s budget); XGBoost, searched last,
    still gets its 60 %."""
    job = spec(models={"logistic_regression": {}, "random_forest": {}, "xgboost": {}},
               search={"method": "auto", "time_budget": 10})
    clock = TimeBudget(job, 1000)
    assert clock.order == ["logistic_regression", "random_forest", "xgboost"]
    assert clock.allowance("logistic_regression") == pytest.approx(2.0)
    clock.spend("logistic_regression", 1.0)  # 1 s left over: the next family gets it
    assert clock.allowance("random_forest") == pytest.approx(9.0 * 0.2 / 0.8)
    clock.spend("random_forest", 20.0)  # overran
    assert clock.allowance("xgboost") == pytest.approx(6.0)


def test_a_boosting_winner_is_refit_slower_with_room_for_its_rounds() -> None:
    out = slower_boosting({"learning_rate": 0.2, "n_estimators": 2000, "max_depth": 5}, 400)
    assert out == {"learning_rate": 0.1, "n_estimators": 2000, "max_depth": 5}
    assert slower_boosting({"learning_rate": 0.015}, 10)["learning_rate"] == 0.01
    # a winner that already needs many rounds keeps its rate (doubled rounds: > 1,000)
    out = slower_boosting({"learning_rate": 0.2, "n_estimators": 2000}, 900)
    assert out == {"learning_rate": 0.2, "n_estimators": 2700}
    assert slower_boosting({"learning_rate": 0.2}, 500)["learning_rate"] == 0.1


def _auto_job(budget: float) -> object:
    return spec(search={"time_budget": budget, "cv": 3})


def test_one_bracket_when_the_budget_is_spent_and_it_starts_from_the_defaults(client) -> None:
    X, y = data("binary", n=600)
    job = _auto_job(0.01)
    found = search_auto("logistic_regression", pipeline_for("logistic_regression"), X, y,
                        job=job, seconds=0.01, client=client)
    table = found.cv_results
    assert found.method == "auto" and found.candidates == BRACKET == len(table)
    assert set(table["bracket"]) == {0}
    assert table.loc[0, "params"] == {}  # the family's defaults are the first candidate
    assert found.budget == 0.01
    assert found.cv_mean == pytest.approx(max(table.loc[table["rung"] == table["rung"].max(),
                                                        "mean_roc_auc"]))


def test_brackets_continue_while_time_is_left_up_to_a_cap(client) -> None:
    X, y = data("binary", n=600)
    job = _auto_job(600)
    start = time.perf_counter()
    found = search_auto("logistic_regression", pipeline_for("logistic_regression"), X, y,
                        job=job, seconds=600, client=client)
    table = found.cv_results
    most = CANDIDATES_PER_PARAMETER * len(split_grid(auto_space("logistic_regression", {}))[1])
    assert found.candidates == most == len(table)  # stopped by the cap, not the clock
    assert table["bracket"].nunique() == -(-most // BRACKET)
    assert found.seconds <= time.perf_counter() - start
    # each bracket draws new candidates
    drawn = [p["C"] for p in table["params"] if "C" in p]
    assert len(set(drawn)) == len(drawn)


def test_auto_xgboost_keeps_cv_rounds_and_refits_slower(client) -> None:
    X, y = data("binary", n=800)
    job = _auto_job(0.01)
    found = search_auto("xgboost", pipeline_for("xgboost"), X, y, job=job, seconds=0.01,
                        client=client)
    table = found.cv_results
    best = table.loc[table["mean_roc_auc"].where(
        table["rung"] == table["rung"].max()).idxmax()]
    rate = best["params"].get("learning_rate", FAMILIES["xgboost"]["defaults"]["learning_rate"])
    slower = max(0.01, rate / 2) if 2 * int(best["rounds"]) <= SLOWER_MAX_ROUNDS else rate
    assert found.best_params["learning_rate"] == pytest.approx(slower)
    assert found.best_params["n_estimators"] >= 3 * int(best["rounds"])
    assert int(best["rounds"]) < 2000  # CV early stopping ended the fits, not the cap


def test_max_candidates_replaces_the_clock(client) -> None:
    """A time budget depends on the machine; ``max_candidates`` does not: the same job gives
    the same candidates and the same winner on a fast or a busy machine."""
    X, y = data("binary", n=600)
    job = spec(search={"max_candidates": 12, "time_budget": 0.01, "cv": 3})
    runs = [search_auto("logistic_regression", pipeline_for("logistic_regression"), X, y,
                        job=job, seconds=0.01, client=client) for _ in range(2)]
    assert [r.candidates for r in runs] == [12, 12]  # two brackets, though no time was left
    assert runs[0].cv_results["params"].tolist() == runs[1].cv_results["params"].tolist()
    assert runs[0].best_params == runs[1].best_params


def test_a_brackets_work_counts_each_rung_at_its_budget() -> None:
    """In units of one candidate's full budget: 9 at 1/3, then 3 at the full budget, which go
    on from their first third (rounds, epochs) or start afresh (rows)."""
    from pipeline.select import _bracket_work

    assert _bracket_work(9, 3, resumed=True) == pytest.approx(9 / 3 + 3 * 2 / 3)
    assert _bracket_work(9, 3, resumed=False) == pytest.approx(9 / 3 + 3)
    assert _bracket_work(27, 3, resumed=True) == pytest.approx(27 / 9 + 9 * 2 / 9 + 3 * 2 / 3)
    assert _bracket_work(1, 3, resumed=False) == 1.0


def test_a_rung_that_would_end_after_the_deadline_is_not_started(client) -> None:
    from pipeline.select import _search

    X, y = data("binary", n=600)
    settings = [{"C": c} for c in (0.01, 0.1, 1.0, 10.0, 100.0, 0.03, 0.3, 3.0, 30.0)]
    common = {"method": "halving", "task": "binary", "primary": "roc_auc", "cv": 3,
              "factor": 3, "seed": 0, "patience": None, "client": client}
    pipeline = pipeline_for("logistic_regression")
    late = _search("logistic_regression", pipeline, X, y, settings,
                   deadline=time.perf_counter(), **common)
    assert set(late.cv_results["rung"]) == {0}  # the first rung runs; the last is not started
    whole = _search("logistic_regression", pipeline, X, y, settings,
                    deadline=time.perf_counter() + 3600, **common)
    assert whole.cv_results["rung"].max() == 1


def test_a_family_the_budget_cannot_afford_is_only_probed(client) -> None:
    """Above PROBE_ROWS the budget holds: with no time at all, the search is the probe (the
    defaults, cross-validated on PROBE_ROWS rows) and says so."""
    X, y = data("binary", n=PROBE_ROWS + 3000)
    found = search_auto("random_forest", pipeline_for("random_forest"), X, y,
                        job=_auto_job(0.01), seconds=0.01, client=client)
    assert found.candidates == 1 and found.cv_results["params"].tolist() == [{}]
    assert found.rows == PROBE_ROWS
    assert found.to_json()["rows"] == PROBE_ROWS


def test_a_family_with_time_to_spare_searches_every_sample_row(client) -> None:
    X, y = data("binary", n=PROBE_ROWS + 3000)
    found = search_auto("logistic_regression", pipeline_for("logistic_regression"), X, y,
                        job=_auto_job(600), seconds=600, client=client)
    assert found.rows is None  # the whole sample
    assert found.candidates == CANDIDATES_PER_PARAMETER
