"""The ensemble of ``search.ensemble: true`` (issue 14): Caruana's greedy weights on
out-of-fold predictions, and one pickle-free bundle that loads, and scores, like any model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, roc_auc_score

from pipeline.ensemble import caruana, metric


def _binary_members(seed: int = 0, n: int = 2000) -> tuple[np.ndarray, list[np.ndarray]]:
    """A target and two members' P(positive) with independent errors, the second noisier."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(scale=2.0, size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return y, [1 / (1 + np.exp(-(logit + rng.normal(scale=s, size=n)))) for s in (1.0, 1.5)]


def test_caruana_weights_the_better_member_most_and_drops_noise() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(scale=5.0, size=2000)
    # unbiased members with independent errors (sd 1 and 1.5), and one of pure noise (the
    # target shuffled): the best blend is about 0.69 / 0.31 / 0
    members = [y + rng.normal(scale=1.0, size=y.size), y + rng.normal(scale=1.5, size=y.size),
               rng.permutation(y)]

    def mse(p: np.ndarray) -> float:
        return float(np.mean((p - y) ** 2))

    weights = caruana(members, mse)
    assert weights.sum() == pytest.approx(1.0)
    assert (weights >= 0).all()
    assert weights[0] > weights[1] > 0 and weights[2] == 0
    assert weights[0] == pytest.approx(0.69, abs=0.1)
    blended = sum(w * p for w, p in zip(weights, members))
    assert mse(blended) < min(mse(p) for p in members)  # strictly: independent errors
    np.testing.assert_array_equal(caruana(members, mse), weights)  # deterministic


def test_caruana_blends_probabilities_on_log_loss() -> None:
    y, members = _binary_members()

    def loss(p: np.ndarray) -> float:
        return log_loss(y, p, labels=[0, 1])

    weights = caruana(members, loss)
    assert weights[0] > weights[1] > 0 and weights.sum() == pytest.approx(1.0)
    assert loss(sum(w * p for w, p in zip(weights, members))) < loss(members[0])


def test_caruana_keeps_the_best_member_alone_when_nothing_helps() -> None:
    y, members = _binary_members(seed=1)

    def auc(p: np.ndarray) -> float:
        return -roc_auc_score(y, p)

    noise = np.random.default_rng(2).permutation(members[0])
    np.testing.assert_array_equal(caruana([noise, members[0]], auc), [0.0, 1.0])


def test_caruana_averages_values_for_regression() -> None:
    y = np.linspace(0.0, 10.0, 50)

    def mse(p: np.ndarray) -> float:
        return float(np.mean((p - y) ** 2))

    weights = caruana([y + 2.0, y - 2.0, y + 5.0], mse)
    np.testing.assert_allclose(weights, [0.5, 0.5, 0.0])  # opposite biases cancel


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), members=st.integers(1, 5),
       iterations=st.integers(1, 30))
def test_caruana_is_never_worse_than_its_best_member(seed: int, members: int,
                                                     iterations: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60)
    outputs = [rng.random(60) for _ in range(members)]

    def loss(p: np.ndarray) -> float:
        return log_loss(y, np.clip(p, 1e-6, 1 - 1e-6), labels=[0, 1])

    weights = caruana(outputs, loss, iterations=iterations)
    assert weights.sum() == pytest.approx(1.0)
    blended = sum(w * p for w, p in zip(weights, outputs))
    assert loss(blended) <= min(loss(p) for p in outputs) + 1e-12


def test_metric_is_the_search_scorer() -> None:
    y, members = _binary_members(n=300)
    p = members[0]
    assert metric(p, y, "roc_auc", "binary", 2) == pytest.approx(roc_auc_score(y, p))
    assert metric(p, y, "log_loss", "binary", 2) == pytest.approx(log_loss(y, p))
    proba = np.column_stack([1 - p, p * 0.5, p * 0.5])
    y3 = np.where(np.arange(len(y)) % 3 == 0, 2, y)
    assert metric(proba, y3, "log_loss", "multiclass", 3) == pytest.approx(log_loss(y3, proba))
    assert metric(p * 3, p * 3 + 1, "rmse", "regression", None) == pytest.approx(1.0)


# --------------------------------------------------------------------------- a whole run


def _mixed(n: int = 700, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """A linear signal in four columns and an interaction in two more: a booster and a
    nearest-neighbour model each miss part of it, so their average beats both."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 8))
    logit = X[:, :4] @ np.array([1.0, -1.0, 0.8, 0.6]) + 2.0 * np.sign(X[:, 4] * X[:, 5])
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return pd.DataFrame(X, columns=[f"x{i}" for i in range(8)]), pd.Series(y, name="label")


def _by_hand(url: str, frame: pd.DataFrame) -> np.ndarray:
    """P(positive) of an ensemble's bundle computed from its files, without the ensemble's
    own code: the shared prefix, then each member's tail and model, weighted."""
    import xgboost

    from pipeline.artifacts import loads_skops, open_bundle

    bundle = open_bundle(url)
    spec = bundle.json("ensemble.json")
    prefix = loads_skops(bundle.read("preprocessor.skops"), "prefix").transform(frame)
    total = np.zeros(len(frame))
    for member in spec["members"]:
        stem = f"member-{member['family']}"
        Xt = loads_skops(bundle.read(f"{stem}-tail.skops"), "tail").transform(prefix)
        if bundle.has(f"{stem}.ubj"):
            booster = xgboost.Booster()
            booster.load_model(bytearray(bundle.read(f"{stem}.ubj")))
            p = booster.inplace_predict(Xt, validate_features=False)
        else:
            model = loads_skops(bundle.read(f"{stem}.skops"), "model")
            p = model.predict_proba(Xt.to_numpy(dtype=np.float64))[:, 1]
        total += member["weight"] * np.asarray(p, dtype=np.float64)
    return total


@pytest.mark.integration
def test_an_ensemble_run_is_one_bundle_that_loads_and_scores(client, tmp_path: Path) -> None:
    from sklearn.model_selection import train_test_split

    from pipeline.artifacts import BundleError, load_model, open_bundle
    from pipeline.config import load_job
    from pipeline.ensemble_predictor import EnsemblePredictor
    from pipeline.scoring import score_to
    from pipeline.workflow import run

    X, y = _mixed()
    X_train, X_test, y_train, _ = train_test_split(X, y, test_size=0.2, stratify=y,
                                                   random_state=0)
    X_train.assign(label=y_train.to_numpy()).to_csv(tmp_path / "train.csv", index=False)
    job = load_job({
        "name": "blend", "output": str(tmp_path / "out"),
        "data": {"train": str(tmp_path / "train.csv"), "target": "label", "task": "binary"},
        "models": {"xgboost": {"n_estimators": 100, "max_depth": 3, "learning_rate": 0.1},
                   "knn": {"n_neighbors": 25}},
        "search": {"ensemble": True, "scoring": "log_loss"}})
    result = run(job, client=client)

    rows = {row["family"]: row for row in result.leaderboard}
    assert list(rows) == ["xgboost", "knn", "ensemble"]
    ensemble = rows["ensemble"]
    assert ensemble["search"] == "caruana"
    assert set(ensemble["params"]) == {"xgboost", "knn"}  # both members weigh
    assert sum(ensemble["params"].values()) == pytest.approx(1.0)
    # out of fold, the average beats each family's best candidate: it wins the run
    assert ensemble["cv_mean"] < min(rows[f]["cv_mean"] for f in ("xgboost", "knn"))
    assert result.family == "ensemble" and ensemble["chosen"]
    scores = result.metrics["model"]["out_of_fold"]["scores"]
    assert scores["ensemble"] <= min(scores["xgboost"], scores["knn"])
    assert ensemble["holdout"]["log_loss"] > 0 and ensemble["train"]["log_loss"] > 0

    model = load_model(result.model_url)
    assert isinstance(model, EnsemblePredictor) and model.family == "ensemble"
    proba = model.predict_proba(X_test)[:, 1]
    np.testing.assert_allclose(proba, _by_hand(result.model_url, X_test), rtol=1e-6,
                               atol=1e-9)
    assert set(model.predict(X_test)) <= {0, 1}

    bundle = open_bundle(result.model_url)
    files = set(bundle.manifest["files"])
    assert {"ensemble.json", "member-xgboost.ubj", "member-xgboost-tail.skops",
            "member-knn.skops", "member-knn-tail.skops"} <= files
    assert not files & {"model.ubj", "model.skops"}
    for name in files:  # pickle-free: UBJSON, skops (zip), JSON, Parquet, YAML, HTML
        assert not name.endswith((".pkl", ".pickle", ".joblib"))
        assert not bundle.read(name).startswith(b"\x80"), name  # a pickle's protocol byte

    X_test.assign(row_id=np.arange(len(X_test))).to_csv(tmp_path / "new.csv", index=False)
    scored = score_to(result.model_url, str(tmp_path / "new.csv"), str(tmp_path / "scores"),
                      id_columns=["row_id"], client=client)
    assert scored.rows_out == len(X_test)
    out = pd.concat(pd.read_parquet(p) for p in sorted((tmp_path / "scores").glob(
        "part-*.parquet"))).sort_values("row_id")
    np.testing.assert_allclose(out["proba"].to_numpy(), proba, rtol=1e-6, atol=1e-9)

    # the manifest covers the members' files: a changed member is refused
    member = Path(bundle.base) / "member-knn.skops"
    data = member.read_bytes()
    member.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(BundleError, match="member-knn.skops"):
        load_model(result.model_url)
