"""Model families and hyperparameter search (grid, random, halving, full) on a real cluster."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import JobError, load_job
from pipeline.models import FAMILIES, make_estimator, training_mode
from pipeline.select import best_row, search_family, split_grid

pytestmark = pytest.mark.integration


def data(task: str = "binary", n: int = 1500, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"a": rng.normal(size=n), "b": rng.exponential(size=n),
                      "k": rng.choice(["p", "q", "r"], n)})
    X["k"] = X["k"].astype("str")
    signal = X["a"] + np.log1p(X["b"]) + (X["k"] == "q") + rng.normal(0, 0.7, n)
    if task == "regression":
        return X, signal.to_numpy()
    return X, (signal > signal.median()).to_numpy().astype(int)


def job(**models: dict) -> object:
    return load_job({"name": "t", "output": "/tmp/unused",
                     "data": {"train": "/tmp/unused", "target": "y", "task": "binary"},
                     "models": models or {"xgboost": {}}})


def pipeline_for(family: str, task: str = "binary", **fixed: object) -> object:
    from sklearn.pipeline import Pipeline

    from pipeline.steps import tail_steps

    spec = job()
    return Pipeline(tail_steps(spec, family)
                    + [("model", make_estimator(family, task, fixed, seed=0))])


def test_every_family_is_declared_honestly() -> None:
    assert set(FAMILIES) == {"xgboost", "random_forest", "decision_tree", "logistic_regression",
                             "linear_svm", "svm", "naive_bayes", "knn", "mlp"}
    for family, entry in FAMILIES.items():
        for task in entry["tasks"]:
            assert training_mode(family, task) in ("distributed", "incremental", "sample")
            make_estimator(family, task, {})  # every declared task builds
        assert entry["how"]


def test_a_family_that_cannot_do_the_task_fails_at_validation() -> None:
    with pytest.raises(JobError, match="models.naive_bayes: the naive_bayes family cannot do "
                                       "regression"):
        load_job({"name": "t", "output": "o", "models": {"naive_bayes": {}},
                  "data": {"train": "x", "target": "y", "task": "regression"}})


def test_unknown_parameter_and_bad_distribution() -> None:
    with pytest.raises(ValueError, match="unknown parameter 'n_neighbour'.*'n_neighbors'"):
        make_estimator("knn", "binary", {"n_neighbour": 3})
    with pytest.raises(JobError, match="loguniform needs low > 0"):
        job(svm={"C": {"loguniform": [0, 1]}})


def test_grid_search_picks_by_mean_cv_and_records_every_candidate(client) -> None:
    X, y = data()
    found = search_family("decision_tree", pipeline_for("decision_tree"), X, y,
                          params={"max_depth": [1, 4, 8], "min_samples_leaf": 5},
                          task="binary", primary="roc_auc", method="grid", cv=3, n_iter=5,
                          factor=3, seed=0, client=client)
    table = found.cv_results
    assert len(table) == 3 and found.candidates == 3
    assert {"mean_roc_auc", "std_roc_auc", "mean_accuracy", "mean_log_loss"} <= set(table)
    assert (table["mean_log_loss"] > 0).all()  # lower-is-better metrics stored positive
    best = table.loc[table["mean_roc_auc"].idxmax(), "params"]
    assert found.best_params == {**best, "min_samples_leaf": 5}
    assert found.cv_mean == pytest.approx(table["mean_roc_auc"].max())

    from sklearn.model_selection import StratifiedKFold, cross_val_score

    expected = cross_val_score(pipeline_for("decision_tree", max_depth=4, min_samples_leaf=5),
                               X, y, cv=StratifiedKFold(3, shuffle=True, random_state=0),
                               scoring="roc_auc").mean()
    row = table[table["params"].map(lambda p: p["max_depth"] == 4)].iloc[0]
    assert row["mean_roc_auc"] == pytest.approx(expected, rel=1e-9)


def test_random_search_is_deterministic_with_a_seed(client) -> None:
    X, y = data()
    runs = [search_family("logistic_regression", pipeline_for("logistic_regression"), X, y,
                          params={"C": {"loguniform": [1e-3, 10.0]}}, task="binary",
                          primary="log_loss", method="random", cv=2, n_iter=4, factor=3,
                          seed=seed, client=client) for seed in (7, 7, 8)]
    assert runs[0].best_params == runs[1].best_params
    pd.testing.assert_frame_equal(runs[0].cv_results.drop(columns="mean_fit_time"),
                                  runs[1].cv_results.drop(columns="mean_fit_time"))
    assert runs[0].cv_results["params"].tolist() != runs[2].cv_results["params"].tolist()
    assert runs[0].candidates == 4


def test_halving_continues_boosting_and_keeps_the_best(client) -> None:
    X, y = data(n=2000)
    grid = {"max_depth": [2, 3, 4], "learning_rate": [0.05, 0.3], "n_estimators": [81]}
    halving = search_family("xgboost", pipeline_for("xgboost"), X, y, params=grid,
                            task="binary", primary="roc_auc", method="halving", cv=2,
                            n_iter=10, factor=3, seed=0, client=client)
    full = search_family("xgboost", pipeline_for("xgboost"), X, y, params=grid,
                         task="binary", primary="roc_auc", method="grid", cv=2, n_iter=10,
                         factor=3, seed=0, client=client)
    table = halving.cv_results
    assert len(table) == 6
    last = table[table["rung"] == table["rung"].max()]
    assert (last["budget"] == 81).all() and len(last) <= 2  # survivors got the full budget
    assert (table["budget"] < 81).any()  # the others stopped early
    assert halving.cv_mean == pytest.approx(full.cv_mean, abs=0.02)


def test_boosting_is_scored_at_its_best_round_count(client) -> None:
    """The curve's score at ``rounds`` is plain k-fold CV of that many rounds."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    X, y = data(n=1500)
    found = search_family("xgboost", pipeline_for("xgboost"), X, y,
                          params={"max_depth": [2, 6], "learning_rate": 0.3,
                                  "n_estimators": 120},
                          task="binary", primary="log_loss", method="grid", cv=3, n_iter=2,
                          factor=3, seed=0, client=client)
    table = found.cv_results
    assert (table["budget"] == 120).all()  # a grid trains every candidate fully
    for _, row in table.iterrows():
        assert 0 < row["rounds"] <= 120
        expected = -cross_val_score(
            pipeline_for("xgboost", **row["params"], learning_rate=0.3,
                         n_estimators=int(row["rounds"])),
            X, y, cv=StratifiedKFold(3, shuffle=True, random_state=0),
            scoring="neg_log_loss").mean()
        assert row["mean_log_loss"] == pytest.approx(expected, rel=1e-5)
    deep = table[table["params"].map(lambda p: p["max_depth"] == 6)].iloc[0]
    assert deep["rounds"] < 120  # an overfitting candidate is scored before it overfits
    assert found.best_params["n_estimators"] == 120  # the refit early-stops on its own


@pytest.mark.parametrize(("primary", "task"), [
    ("roc_auc", "binary"), ("log_loss", "binary"), ("accuracy", "binary"),
    ("log_loss", "multiclass"), ("accuracy", "multiclass"),
    ("rmse", "regression"), ("mae", "regression"), ("r2", "regression")])
def test_xgboost_own_metric_is_scikit_learns(primary: str, task: str) -> None:
    """Checkpoints use XGBoost's eval metric: the same number as scikit-learn's scorer."""
    from pipeline.select import _NATIVE, _Boosting, scorers

    X, y = data("regression" if task == "regression" else "binary", n=1200)
    if task == "multiclass":
        y = np.digitize(X["a"] + X["b"], [0.5, 1.5])
    X = X.assign(k=X["k"].astype("category"))
    fold = (X.iloc[:800], y[:800], X.iloc[800:], y[800:])
    model = make_estimator("xgboost", task, {"n_estimators": 30, "max_depth": 3}, seed=0)
    boost = _Boosting(fold, scorers(task, primary), primary, 10, None, None)
    booster = boost.fit(model, None, 30)
    objective = "multi:softprob" if task == "multiclass" else model.get_xgb_params()["objective"]
    assert (primary, objective) in _NATIVE
    native = dict(boost.curve)  # 10 and 20 rounds by XGBoost, 30 (the end) by scikit-learn
    assert sorted(native) == [10, 20, 30] and native[10] != native[20]
    for rounds in (10, 20):
        expected = boost.score(booster, rounds, {primary: scorers(task, primary)[primary]})
        assert native[rounds] == pytest.approx(expected[primary], rel=1e-6, abs=1e-9)
        boost.native(booster[:rounds], rounds, _NATIVE[(primary, objective)][1])  # by XGBoost
        assert boost.curve[rounds] == pytest.approx(expected[primary], rel=1e-6, abs=1e-9)


def test_halving_stops_a_candidate_that_no_longer_improves(client) -> None:
    X, y = data(n=1500)
    params = {"max_depth": 8, "learning_rate": 1.0, "n_estimators": 200}
    runs = {patience: search_family("xgboost", pipeline_for("xgboost"), X, y, params=params,
                                    task="binary", primary="roc_auc", method="halving", cv=2,
                                    n_iter=1, factor=3, seed=0, client=client,
                                    patience=patience)
            for patience in (None, 10)}
    unstopped, stopped = (runs[p].cv_results.iloc[0] for p in (None, 10))
    assert unstopped["budget"] == 200
    assert stopped["rounds"] + 10 <= stopped["budget"] < 200
    # the peak came early (learning rate 1.0): stopping there loses nothing
    assert stopped["mean_roc_auc"] == pytest.approx(unstopped["mean_roc_auc"], abs=0.01)


def test_a_grid_cannot_enumerate_a_distribution() -> None:
    with pytest.raises(JobError, match="models.svm.C is a distribution, which a grid cannot "
                                       "enumerate"):
        job(svm={"C": {"loguniform": [0.01, 1]}})
    random = load_job({"name": "t", "output": "/tmp/unused", "search": {"method": "random"},
                       "data": {"train": "/tmp/unused", "target": "y", "task": "binary"},
                       "models": {"svm": {"C": {"loguniform": [0.01, 1]}}}})
    assert random.models["svm"]["C"] == {"loguniform": [0.01, 1]}


def test_halving_by_epochs_and_by_rows(client) -> None:
    X, y = data(n=1200)
    mlp = search_family("mlp", pipeline_for("mlp", max_iter=5), X, y,
                        params={"alpha": [1e-4, 1e-2, 1.0]}, task="binary",
                        primary="accuracy", method="halving", cv=2, n_iter=3, factor=3,
                        seed=0, client=client)
    assert mlp.cv_results["budget"].max() > mlp.cv_results["budget"].min()
    knn = search_family("knn", pipeline_for("knn"), X, y,
                        params={"n_neighbors": [3, 15, 45]}, task="binary",
                        primary="roc_auc", method="halving", cv=2, n_iter=3, factor=3,
                        seed=0, client=client)
    assert knn.cv_results["budget"].max() == int(len(X) * 1 / 2)  # all rows of a fold
    assert knn.best_params["n_neighbors"] in (3, 15, 45)


@pytest.mark.parametrize(("task", "primary", "close"), [
    ("binary", "roc_auc", 0.01), ("multiclass", "log_loss", 0.05), ("regression", "rmse", 0.05)])
def test_halving_boosting_by_rows(client, task: str, primary: str, close: float) -> None:
    """``budget: rows``: every rung trains afresh, all rounds, on more of each fold's rows."""
    X, y = data("regression" if task == "regression" else "binary", n=2700)
    if task == "multiclass":
        y = np.digitize(X["a"] + X["b"], [0.5, 1.5])
    grid = {"max_depth": [2, 4, 6], "min_child_weight": [1, 20, 60], "n_estimators": [60],
            "learning_rate": 0.3}
    pipe = pipeline_for("xgboost", task)
    rows = search_family("xgboost", pipe, X, y, params=grid, task=task, primary=primary,
                         method="halving", cv=3, n_iter=9, factor=3, seed=0, client=client,
                         patience=10, budget="rows")
    full = search_family("xgboost", pipe, X, y, params=grid, task=task, primary=primary,
                         method="grid", cv=3, n_iter=9, factor=3, seed=0, client=client)
    table = rows.cv_results
    assert sorted(table["budget"].unique()) == [600, 1800]  # a third of a fold's rows, all
    assert list(table.groupby("rung").size()) == [6, 3]  # the last rung each one reached
    assert table["rounds"].between(1, 60).all()  # scored at their best round count
    assert rows.cv_mean == pytest.approx(full.cv_mean, abs=close)


def test_a_fresh_fit_replaces_the_last_rungs_curve() -> None:
    """On a rows budget each rung fits afresh: its curve, not a mix with the smaller fit's."""
    from pipeline.select import _Record

    record = _Record("xgboost", {})
    small = {"scores": {"roc_auc": 0.9}, "seconds": 1.0, "curve": {10: 0.8, 20: 0.9, 30: 0.95}}
    record.add(0, small, continued=False)
    record.budget = 100
    record.add(0, {"scores": {"roc_auc": 0.85}, "seconds": 1.0, "curve": {10: 0.84, 20: 0.85}},
               continued=False)
    record.settle("roc_auc", 1, 300, patience=None, continued=False)
    assert record.best == (0.85, 0.0, 20)  # not 0.95 at 30 rounds from the smaller fit
    assert record.curves[0] == {10: 0.84, 20: 0.85}
    boosted = _Record("xgboost", {})
    boosted.add(0, small, continued=True)
    boosted.add(0, {"scores": {"roc_auc": 0.95}, "seconds": 1.0, "curve": {40: 0.95}},
                continued=True)  # rounds 31-40 of the same booster
    assert boosted.curves[0] == {10: 0.8, 20: 0.9, 30: 0.95, 40: 0.95}


def test_a_rows_budget_is_a_stratified_random_prefix() -> None:
    from pipeline.select import _shuffled

    y = np.array([0] * 900 + [1] * 100)  # sorted, as a time-ordered sample might be
    train = np.arange(1000) * 2
    order = _shuffled(train, y, "binary", np.random.default_rng(0))
    assert sorted(order) == list(train)  # a permutation
    positions = order // 2
    for prefix in (20, 100, 333):
        assert abs(y[positions[:prefix]].mean() - 0.1) <= 1 / prefix + 1e-9
    assert 300 < np.median(positions[:100]) < 700  # drawn from all over, not the start
    again = _shuffled(train, y, "regression", np.random.default_rng(0))
    assert sorted(again) == list(train) and list(again) != list(train)


def test_a_budget_the_family_does_not_have_fails_at_validation() -> None:
    spec = {"name": "t", "output": "/tmp/unused",
            "data": {"train": "/tmp/unused", "target": "y", "task": "binary"},
            "search": {"method": "halving", "budget": "rounds"},
            "models": {"xgboost": {"max_depth": [3, 6]}, "random_forest": {}}}
    with pytest.raises(JobError, match="search.budget rounds: models.random_forest has no "
                                       "rounds to give more of"):
        load_job(spec)
    assert load_job({**spec, "search": {"method": "halving", "budget": "rows"}}).search.budget \
        == "rows"


def test_best_row_ties_break_by_fit_time() -> None:
    table = pd.DataFrame({"mean_rmse": [1.0, 0.5, 0.5], "mean_fit_time": [1.0, 3.0, 2.0]})
    assert best_row(table, "rmse") == 2
    table = pd.DataFrame({"mean_roc_auc": [0.9, 0.9, np.nan], "mean_fit_time": [5, 1, 0]})
    assert best_row(table, "roc_auc") == 1


def test_split_grid() -> None:
    fixed, searched = split_grid({"a": 1, "b": [1, 2], "c": {"uniform": [0, 1]}})
    assert fixed == {"a": 1} and set(searched) == {"b", "c"}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_fits_and_survives_skops(family: str) -> None:
    from pipeline.artifacts import dumps_skops, loads_skops, model_bytes

    X, y = data(n=400)
    pipe = pipeline_for(family, **({"n_estimators": 5} if family in (
        "xgboost", "random_forest") else {}))
    Xt = pipe[:-1].fit_transform(X, y)
    model = pipe.named_steps["model"]
    if family in ("xgboost", "random_forest"):
        model.fit(Xt, y)
        name, raw = model_bytes(model.get_booster())
        assert name == "model.ubj"
        return
    model.fit(Xt.to_numpy(dtype="float64"), y)
    name, raw = model_bytes(model)
    assert name == "model.skops"
    loaded = loads_skops(raw, family)
    np.testing.assert_array_equal(loaded.predict_proba(Xt.to_numpy(dtype="float64")),
                                  model.predict_proba(Xt.to_numpy(dtype="float64")))
    del dumps_skops


ALL_BINARY = {
    "xgboost": {"n_estimators": [10, 20], "max_depth": 3},
    "random_forest": {"n_estimators": 10, "max_depth": 6},
    "decision_tree": {"max_depth": [3, 6]},
    "logistic_regression": {"C": [0.1, 1.0]},
    "linear_svm": {"alpha": 0.001},
    "svm": {"C": 1.0},
    "naive_bayes": {},
    "knn": {"n_neighbors": 15},
    "mlp": {"hidden_layer_sizes": [[16]], "max_iter": 30},
}


@pytest.mark.slow
def test_all_nine_families_end_to_end(client, tmp_path, demo_dir) -> None:
    from pipeline import load_model
    from pipeline.workflow import run
    from tests.conftest import demo_job
    from tests.test_run import check_sample

    job = load_job(demo_job(str(demo_dir), str(tmp_path / "out"), models=ALL_BINARY,
                            search={"sample_rows": 1500, "cv": 2},
                            features=[{"kernel": "log1p", "columns": ["income"]}]))
    result = run(job, client=client)
    board = {row["family"]: row for row in result.leaderboard}
    assert set(board) == set(ALL_BINARY)
    assert [row["family"] for row in result.leaderboard if row["chosen"]] == [result.family]
    assert board["logistic_regression"]["training"] == "distributed"
    assert board["naive_bayes"]["training"] == "incremental"
    assert board["svm"]["training"] == "sample"
    for row in board.values():
        assert 0.5 < row["holdout"]["roc_auc"] <= 1 and row["cv_mean"] is not None
        assert row["fit_seconds"] >= 0 and row["predict_rows_per_s"] > 0
    best = max(board.values(), key=lambda r: (r["cv_mean"], -r["fit_seconds"]))
    assert best["family"] == result.family  # the selection rule: best mean CV score
    model = load_model(result.model_url)
    assert model.family == result.family
    check_sample(result.model_url)
    cv = pd.read_parquet(f"{result.run_url}/cv_results.parquet")
    assert set(cv["family"]) == set(ALL_BINARY) and len(cv) == 12  # every candidate


@pytest.mark.slow
def test_regression_families_and_full_strategy(client, tmp_path) -> None:
    from pipeline.workflow import run
    from tests.conftest import HOUSING_CSV
    from tests.test_run import check_sample

    families = {"xgboost": {"n_estimators": [30, 60], "max_depth": 4},
                "linear_svm": {"alpha": 0.0001}, "mlp": {"hidden_layer_sizes": [[16]]},
                "knn": {"n_neighbors": 10}, "svm": {"C": 10.0},
                "random_forest": {"n_estimators": 20, "max_depth": 6},
                "decision_tree": {"max_depth": 6}}
    job = load_job({"name": "housing", "output": str(tmp_path / "out"),
                    "data": {"train": str(HOUSING_CSV), "target": "median_house_value",
                             "task": "regression"},
                    "models": families,
                    "search": {"strategy": "full", "sample_rows": 1500, "cv": 2}})
    result = run(job, client=client)
    board = {row["family"]: row for row in result.leaderboard}
    assert board["xgboost"]["search"] == "full" and board["xgboost"]["cv_std"] is None
    assert board["mlp"]["search"] == "grid"
    # a standardised target: the gradient-based regressors are in the right ballpark
    assert board["linear_svm"]["holdout"]["rmse"] < 100_000
    assert board["mlp"]["holdout"]["rmse"] < 100_000
    assert set(board) == set(families)  # the seven families that do regression
    assert board["random_forest"]["training"] == "distributed"
    assert board["decision_tree"]["training"] == "sample"
    for row in board.values():  # a mean predictor scores about 115,000
        assert row["holdout"]["rmse"] < 100_000 and row["holdout"]["r2"] > 0.2
    check_sample(result.model_url)
