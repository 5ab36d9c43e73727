"""pipeline.evaluate: every metric against scikit-learn on the computed data.

The dask side runs on the default threaded scheduler except in the one test that starts a
``distributed.Client``; the references are computed from the very same pandas frame.
"""

from __future__ import annotations

import json
import math
import pickle

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from dask.delayed import Delayed
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from pipeline import evaluate as ev
from pipeline.evaluate import evaluate_predictions, headline, overfit_check

EXACT = dict(rel=1e-9, abs=1e-12)  # floating sums in another order, nothing more
HIST = 1e-4  # the promised histogram error against scikit-learn


# --- data -----------------------------------------------------------------------------------------
def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def binary_frame(n: int, *, prevalence_shift: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """Realistic scores: a noisy logistic model of a normal latent variable."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = (rng.random(n) < _sigmoid(2.0 * x + prevalence_shift)).astype(np.int64)
    proba = _sigmoid(2.0 * x + prevalence_shift + rng.normal(scale=0.7, size=n))
    segment = rng.choice(
        np.array(list("abcdefghijklmn")),
        size=n,
        p=np.linspace(2, 0.2, 14) / np.linspace(2, 0.2, 14).sum(),
    )
    segment = pd.Series(segment, dtype="str").mask(rng.random(n) < 0.03)
    region = pd.Categorical(rng.choice(["north", "south", "east"], size=n))
    return pd.DataFrame({"y_true": y, "proba": proba, "segment": segment, "region": region})


def multiclass_frame(n: int, k: int = 4, *, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = rng.choice(k, size=n, p=np.arange(1, k + 1) / np.arange(1, k + 1).sum())
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    frame = pd.DataFrame(proba, columns=[f"proba_{c}" for c in range(k)])
    frame.insert(0, "y_true", y)
    frame["segment"] = pd.Series(rng.choice(list("pqrs"), size=n), dtype="str")
    return frame


def regression_frame(n: int, *, seed: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = rng.lognormal(mean=3.0, sigma=0.5, size=n) * rng.choice([-1, 1], size=n, p=[0.1, 0.9])
    y_pred = y + rng.standard_t(df=4, size=n) * 2.0
    segment = pd.Series(rng.choice(list("uvwxyz"), size=n), dtype="str").mask(rng.random(n) < 0.05)
    return pd.DataFrame({"y_true": y, "y_pred": y_pred, "segment": segment})


def to_dask(frame: pd.DataFrame, npartitions: int = 7) -> dd.DataFrame:
    return dd.from_pandas(frame, npartitions=npartitions, sort=False)


def assert_json_clean(metrics: dict) -> None:
    # allow_nan=False fails on NaN/inf; default=None-less dumps fails on numpy scalars/arrays
    json.dumps(metrics, allow_nan=False)


# --- binary ---------------------------------------------------------------------------------------
def check_binary(m: dict, frame: pd.DataFrame, threshold: float = 0.5) -> None:
    y, p = frame["y_true"].to_numpy(), frame["proba"].to_numpy()
    yhat = (p >= threshold).astype(int)
    assert m["n"] == len(y) and m["positives"] == int(y.sum())
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, yhat), **EXACT)
    assert m["precision"] == pytest.approx(skm.precision_score(y, yhat), **EXACT)
    assert m["recall"] == pytest.approx(skm.recall_score(y, yhat), **EXACT)
    assert m["f1"] == pytest.approx(skm.f1_score(y, yhat), **EXACT)
    tn, fp, fn, tp = skm.confusion_matrix(y, yhat).ravel()
    assert m["confusion"] == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p), **EXACT)
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p), **EXACT)
    auc, ap = skm.roc_auc_score(y, p), skm.average_precision_score(y, p)
    assert abs(m["roc_auc"] - auc) <= min(HIST, m["approximation"]["roc_auc_max_error"] + 1e-12)
    assert abs(m["pr_auc"] - ap) <= min(HIST, m["approximation"]["pr_auc_max_error"] + 1e-12)
    frac_pos, mean_pred = calibration_curve(y, p, n_bins=10)
    cal = m["curves"]["calibration"]
    np.testing.assert_allclose(cal["fraction_positive"], frac_pos, rtol=1e-9)
    np.testing.assert_allclose(cal["mean_predicted"], mean_pred, rtol=1e-9)
    assert sum(cal["count"]) == len(y)
    for name in ("roc", "pr"):
        curve = m["curves"][name]
        assert all(len(v) <= 200 for v in curve.values())
    # every curve point is exact for its threshold (bin edges are exact thresholds)
    roc = m["curves"]["roc"]
    assert roc["threshold"][0] is None and (roc["fpr"][0], roc["tpr"][0]) == (0.0, 0.0)
    thr = np.array(roc["threshold"][1:])[:, None]
    np.testing.assert_allclose(roc["fpr"][1:], (p[y == 0] >= thr).mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(roc["tpr"][1:], (p[y == 1] >= thr).mean(axis=1), rtol=1e-12)
    assert roc["fpr"][-1] == roc["tpr"][-1] == 1.0
    pr = m["curves"]["pr"]
    thr = np.array(pr["threshold"])[:, None]
    np.testing.assert_allclose(pr["recall"], (p[y == 1] >= thr).mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(
        pr["precision"], (y * (p >= thr)).sum(axis=1) / (p >= thr).sum(axis=1), rtol=1e-12
    )
    assert_json_clean(m)


@pytest.mark.parametrize(
    ("shift", "min_pos_rate"),
    [(0.0, 0.4), (-6.5, 0.005)],  # balanced; ~1 % positives
    ids=["balanced", "imbalanced-1pct"],
)
def test_binary_matches_sklearn(shift: float, min_pos_rate: float) -> None:
    frame = binary_frame(60_000, prevalence_shift=shift)
    assert min_pos_rate <= frame["y_true"].mean() <= 0.6
    if shift:
        assert frame["y_true"].mean() < 0.02
    m = evaluate_predictions(to_dask(frame), "binary", class_names=["ok", "late"])
    check_binary(m, frame)
    assert m["class_names"] == ["ok", "late"]
    assert m["chosen_threshold"] == 0.5 and m["chosen_threshold_source"] == "threshold"
    assert m["thresholds"]["0.5"]["f1"] == m["f1"]


def test_binary_other_threshold_and_pandas_input() -> None:
    frame = binary_frame(20_000, seed=3)
    m = evaluate_predictions(frame, "binary", threshold=0.3)  # pandas: one partition
    check_binary(m, frame, threshold=0.3)
    assert set(m["thresholds"]) >= {"0.3", "0.5", "f1_optimal"}
    y, p = frame["y_true"], frame["proba"]
    assert m["thresholds"]["0.5"]["recall"] == pytest.approx(skm.recall_score(y, p >= 0.5), **EXACT)
    # a one-partition dask frame gives the very same dict
    assert evaluate_predictions(to_dask(frame, 1), "binary", threshold=0.3) == m


def test_empty_partitions() -> None:
    frame = binary_frame(30_000, seed=4)
    ddf = to_dask(frame.assign(row=np.arange(len(frame))), 10)
    ddf = ddf[ddf.row < 9_000]  # partitions 3.. are empty after the filter
    lengths = ddf.map_partitions(len, meta=("n", "int64")).compute().tolist()
    assert lengths.count(0) >= 5 and len(lengths) == 10
    kept = frame.iloc[:9_000]
    m = evaluate_predictions(ddf, "binary", slices=["segment"])
    check_binary(m, kept)
    reg = regression_frame(5_000)
    rddf = to_dask(reg.assign(row=np.arange(len(reg))), 6)
    rddf = rddf[rddf.row < 1_000]
    r = evaluate_predictions(rddf, "regression", slices=["segment"])
    assert r["n"] == 1_000
    assert r["rmse"] == pytest.approx(
        skm.root_mean_squared_error(reg["y_true"][:1000], reg["y_pred"][:1000]), **EXACT
    )
    multi = multiclass_frame(6_000)
    mddf = to_dask(multi.assign(row=np.arange(len(multi))), 6)
    mddf = mddf[mddf.row < 2_000]  # partitions 2.. are empty
    mm = evaluate_predictions(mddf.drop(columns="row"), "multiclass", slices=["segment"])
    kept = multi.iloc[:2_000]
    proba = kept[[c for c in kept.columns if c.startswith("proba_")]].to_numpy()
    assert mm["n"] == 2_000
    assert mm["accuracy"] == pytest.approx(
        skm.accuracy_score(kept["y_true"], proba.argmax(axis=1)), **EXACT)
    assert mm["f1_macro"] == pytest.approx(
        skm.f1_score(kept["y_true"], proba.argmax(axis=1), average="macro"), **EXACT)
    assert mm["log_loss"] == pytest.approx(skm.log_loss(kept["y_true"], proba), **EXACT)


def test_all_partitions_empty() -> None:
    frame = binary_frame(1_000)
    ddf = to_dask(frame, 3)
    m = evaluate_predictions(ddf[ddf.proba > 2], "binary", slices=["segment"])
    assert m["n"] == 0 and m["roc_auc"] is None and m["accuracy"] is None
    assert any("no rows" in note for note in m["notes"])
    assert_json_clean(m)


def test_auc_ap_agree_with_sklearn_at_1m_rows() -> None:
    frame = binary_frame(1_000_000, seed=5)[["y_true", "proba"]]
    y, p = frame["y_true"].to_numpy(), frame["proba"].to_numpy()
    m = evaluate_predictions(to_dask(frame, 8), "binary")
    auc_err = abs(m["roc_auc"] - skm.roc_auc_score(y, p))
    ap_err = abs(m["pr_auc"] - skm.average_precision_score(y, p))
    assert auc_err < HIST and ap_err < HIST
    # the reported worst case bounds the observed error and is itself below the promise
    assert auc_err <= m["approximation"]["roc_auc_max_error"] < HIST
    assert ap_err <= m["approximation"]["pr_auc_max_error"] < HIST
    # float32 scores (what xgboost returns) tie exactly; ties are half credit on both sides
    p32 = p.astype(np.float32)
    m32 = evaluate_predictions(to_dask(pd.DataFrame({"y_true": y, "proba": p32}), 8), "binary")
    assert abs(m32["roc_auc"] - skm.roc_auc_score(y, p32)) < HIST
    assert abs(m32["pr_auc"] - skm.average_precision_score(y, p32)) < HIST


def test_rare_event_scores_near_zero() -> None:
    # a 0.5 %-prevalence model whose scores all sit below ~0.05: the logit half of the grid
    rng = np.random.default_rng(6)
    n = 200_000
    z = rng.normal(size=n)
    y = (rng.random(n) < _sigmoid(2 * z - 6.5)).astype(int)
    p = _sigmoid(2 * z - 6.5 + rng.normal(scale=0.5, size=n))
    m = evaluate_predictions(to_dask(pd.DataFrame({"y_true": y, "proba": p}), 4), "binary")
    assert abs(m["roc_auc"] - skm.roc_auc_score(y, p)) < HIST
    assert abs(m["pr_auc"] - skm.average_precision_score(y, p)) < HIST


def test_thresholds() -> None:
    frame = binary_frame(50_000, seed=7)
    y, p = frame["y_true"].to_numpy(), frame["proba"].to_numpy()
    m = evaluate_predictions(to_dask(frame), "binary", min_precision=0.8, min_recall=0.9)
    prec, rec, _ = skm.precision_recall_curve(y, p)
    with np.errstate(invalid="ignore"):
        f1_all = np.nan_to_num(2 * prec * rec / (prec + rec))

    best = m["thresholds"]["f1_optimal"]
    # the reported metrics are exact for the reported threshold ...
    assert best["f1"] == pytest.approx(skm.f1_score(y, p >= best["threshold"]), **EXACT)
    assert best["precision"] == pytest.approx(
        skm.precision_score(y, p >= best["threshold"]), **EXACT
    )
    # ... and the grid threshold is as good as the best over every distinct score
    assert f1_all.max() - 1e-4 <= best["f1"] <= f1_all.max() + 1e-12

    mp = m["thresholds"]["min_precision"]
    assert skm.precision_score(y, p >= mp["threshold"]) >= 0.8
    assert mp["recall"] == pytest.approx(skm.recall_score(y, p >= mp["threshold"]), **EXACT)
    assert rec[prec >= 0.8].max() - 1e-3 <= mp["recall"] <= rec[prec >= 0.8].max() + 1e-12

    mr = m["thresholds"]["min_recall"]
    assert skm.recall_score(y, p >= mr["threshold"]) >= 0.9
    assert prec[rec >= 0.9].max() - 1e-3 <= mr["precision"] <= prec[rec >= 0.9].max() + 1e-12

    assert (
        m["chosen_threshold"] == mp["threshold"] and m["chosen_threshold_source"] == "min_precision"
    )
    # top-level operating point stays the job's `threshold`
    assert m["precision"] == pytest.approx(skm.precision_score(y, p >= 0.5), **EXACT)


def test_unreachable_min_precision() -> None:
    frame = pd.DataFrame({"y_true": [0, 1, 0, 1, 0], "proba": [0.99, 0.8, 0.7, 0.6, 0.1]})
    m = evaluate_predictions(frame, "binary", min_precision=1.0, threshold=0.65)
    assert m["thresholds"]["min_precision"] is None
    assert m["chosen_threshold"] == 0.65 and m["chosen_threshold_source"] == "threshold"
    assert any("precision >= 1.0" in note for note in m["notes"])
    assert_json_clean(m)


def test_single_class_nan_and_out_of_range() -> None:
    frame = pd.DataFrame({"y_true": [0, 0, 0, None, 0], "proba": [0.2, -0.1, 1.3, 0.5, np.nan]})
    frame["y_true"] = frame["y_true"].astype("Int64")
    m = evaluate_predictions(frame, "binary")
    assert m["n"] == 3 and m["roc_auc"] is None and m["pr_auc"] is None and m["recall"] is None
    notes = " | ".join(m["notes"])
    assert "2 rows skipped" in notes and "clipped" in notes and "single class" in notes
    # clipped scores count as 0 and 1 everywhere, e.g. in the Brier score
    assert m["brier"] == pytest.approx((0.2**2 + 0.0 + 1.0) / 3)
    assert_json_clean(m)


def test_bad_labels_and_arguments() -> None:
    with pytest.raises(ValueError, match="not 0/1"):
        evaluate_predictions(pd.DataFrame({"y_true": [0, 2], "proba": [0.1, 0.9]}), "binary")
    with pytest.raises(ValueError, match="lacks columns \\['proba'\\]"):
        evaluate_predictions(pd.DataFrame({"y_true": [0, 1], "p": [0.1, 0.9]}), "binary")
    with pytest.raises(ValueError, match="proba_0 .. proba_"):
        evaluate_predictions(
            pd.DataFrame({"y_true": [0], "proba_0": [1.0], "proba_2": [0.0]}), "multiclass"
        )
    with pytest.raises(ValueError, match="class_names has 3 names"):
        evaluate_predictions(binary_frame(10), "binary", class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="slices \\['nope'\\]"):
        evaluate_predictions(binary_frame(10), "binary", slices=["nope"])
    with pytest.raises(ValueError, match="task="):
        evaluate_predictions(binary_frame(10), "ranking")


# --- multiclass -----------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [4, 12], ids=["k4-full-grid", "k12-coarsened-grid"])
def test_multiclass_matches_sklearn(k: int) -> None:
    frame = multiclass_frame(80_000 if k == 4 else 30_000, k)
    names = ["cat", "dog", "eel", "fox"] if k == 4 else [f"class-{c}" for c in range(k)]
    m = evaluate_predictions(to_dask(frame), "multiclass", class_names=names)
    y = frame["y_true"].to_numpy()
    proba = frame[[f"proba_{c}" for c in range(k)]].to_numpy()
    yhat = proba.argmax(axis=1)
    assert m["n"] == len(y) and m["n_classes"] == k
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, yhat), **EXACT)
    for avg in ("macro", "weighted"):
        assert m[f"precision_{avg}"] == pytest.approx(
            skm.precision_score(y, yhat, average=avg), **EXACT
        )
        assert m[f"recall_{avg}"] == pytest.approx(skm.recall_score(y, yhat, average=avg), **EXACT)
        assert m[f"f1_{avg}"] == pytest.approx(skm.f1_score(y, yhat, average=avg), **EXACT)
    assert (
        abs(m["roc_auc_ovr"] - skm.roc_auc_score(y, proba, multi_class="ovr", average="macro"))
        < HIST
    )
    assert (
        abs(
            m["roc_auc_ovr_weighted"]
            - skm.roc_auc_score(y, proba, multi_class="ovr", average="weighted")
        )
        < HIST
    )
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, proba), **EXACT)
    assert m["confusion"] == skm.confusion_matrix(y, yhat).tolist()
    p, r, f, s = skm.precision_recall_fscore_support(y, yhat)
    for c, name in enumerate(names):
        pc = m["per_class"][name]
        assert (pc["precision"], pc["recall"], pc["f1"]) == pytest.approx(
            (p[c], r[c], f[c]), **EXACT
        )
        assert pc["support"] == s[c]
        assert abs(pc["roc_auc"] - skm.roc_auc_score(y == c, proba[:, c])) < HIST
        assert m["class_balance"][name]["count"] == s[c]
        assert m["class_balance"][name]["fraction"] == pytest.approx(s[c] / len(y))
    assert_json_clean(m)


def test_multiclass_class_never_predicted() -> None:
    # class 2 is in y_true but never the argmax: precision undefined, averaged as 0 like sklearn
    y = np.array([0, 1, 2, 2, 1, 0])
    proba = np.array(
        [
            [0.7, 0.2, 0.1],
            [0.2, 0.7, 0.1],
            [0.5, 0.2, 0.3],
            [0.2, 0.5, 0.3],
            [0.1, 0.8, 0.1],
            [0.6, 0.3, 0.1],
        ]
    )
    frame = pd.DataFrame(proba, columns=["proba_0", "proba_1", "proba_2"]).assign(y_true=y)
    m = evaluate_predictions(frame, "multiclass")
    yhat = proba.argmax(axis=1)
    assert m["per_class"]["2"]["precision"] is None
    assert any("never predicted" in note for note in m["notes"])
    with pytest.warns(skm._classification.UndefinedMetricWarning):
        ref = skm.precision_score(y, yhat, average="macro")
    assert m["precision_macro"] == pytest.approx(ref, **EXACT)
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, yhat, average="macro"), **EXACT)
    assert_json_clean(m)


# --- regression -----------------------------------------------------------------------------------
def test_regression_matches_sklearn() -> None:
    frame = regression_frame(100_000)
    m = evaluate_predictions(to_dask(frame), "regression")
    y, yp = frame["y_true"].to_numpy(), frame["y_pred"].to_numpy()
    assert m["n"] == len(y)
    assert m["mse"] == pytest.approx(skm.mean_squared_error(y, yp), **EXACT)
    assert m["rmse"] == pytest.approx(skm.root_mean_squared_error(y, yp), **EXACT)
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, yp), **EXACT)
    assert m["r2"] == pytest.approx(skm.r2_score(y, yp), **EXACT)
    assert m["mape"] == pytest.approx(skm.mean_absolute_percentage_error(y, yp), **EXACT)
    assert m["max_error"] == pytest.approx(skm.max_error(y, yp), **EXACT)
    residual = y - yp
    for q in (5, 25, 50, 75, 95):
        exact = np.quantile(residual, q / 100, method="lower")
        got = m["residual_quantiles"][f"p{q}"]
        assert abs(got - exact) <= ev.RESIDUAL_RELATIVE_ACCURACY * abs(exact) * (1 + 1e-9)
    assert_json_clean(m)


def test_regression_r2_without_cancellation_and_zero_targets() -> None:
    # a huge offset with a small spread: sum(y**2) - n*mean**2 would lose every digit
    rng = np.random.default_rng(8)
    y = 1e9 + rng.normal(size=20_000)
    yp = y + rng.normal(scale=0.5, size=y.size)
    m = evaluate_predictions(to_dask(pd.DataFrame({"y_true": y, "y_pred": yp}), 5), "regression")
    assert m["r2"] == pytest.approx(skm.r2_score(y, yp), rel=1e-6)

    frame = pd.DataFrame({"y_true": [0.0, 1.0, 2.0, 2.0], "y_pred": [0.5, 1.0, 1.0, 3.0]})
    m = evaluate_predictions(frame, "regression")
    assert m["mape"] is None and any("y_true == 0" in note for note in m["notes"])
    flat = evaluate_predictions(
        pd.DataFrame({"y_true": [3.0, 3.0], "y_pred": [2.0, 4.0]}), "regression"
    )
    assert flat["r2"] is None and any("constant" in note for note in flat["notes"])
    assert_json_clean(m)
    assert_json_clean(flat)


# --- slices ---------------------------------------------------------------------------------------
def test_binary_slices_match_sklearn_on_filtered_data() -> None:
    frame = binary_frame(60_000, seed=9)
    m = evaluate_predictions(to_dask(frame), "binary", slices=["segment", "region"], top_levels=5)
    seg = m["slices"]["segment"]
    counts = frame["segment"].value_counts()
    top = list(counts.index[:5])
    assert list(seg) == [*top, "__other__", "__missing__"]
    masks = {lev: frame["segment"] == lev for lev in top}
    masks["__other__"] = frame["segment"].notna() & ~frame["segment"].isin(top)
    masks["__missing__"] = frame["segment"].isna()
    for lev, mask in masks.items():
        sub = frame[mask]
        y, p = sub["y_true"], sub["proba"]
        got = seg[lev]
        assert got["n"] == len(sub) and got["positives"] == int(y.sum())
        assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, p >= 0.5), **EXACT)
        assert got["precision"] == pytest.approx(skm.precision_score(y, p >= 0.5), **EXACT)
        assert got["recall"] == pytest.approx(skm.recall_score(y, p >= 0.5), **EXACT)
        assert got["f1"] == pytest.approx(skm.f1_score(y, p >= 0.5), **EXACT)
        # slice histograms use every 16th edge: coarser, still far below 1e-3 here
        assert abs(got["roc_auc"] - skm.roc_auc_score(y, p)) < 1e-3
    assert set(m["slices"]["region"]) == {"north", "south", "east"}
    assert sum(v["n"] for v in m["slices"]["region"].values()) == len(frame)
    assert any("pooled" in note for note in m["notes"])
    assert_json_clean(m)


def test_multiclass_and_regression_slices() -> None:
    frame = multiclass_frame(20_000, 3)
    m = evaluate_predictions(to_dask(frame, 5), "multiclass", slices=["segment"])
    for lev, got in m["slices"]["segment"].items():
        sub = frame[frame["segment"] == lev]
        yhat = sub[["proba_0", "proba_1", "proba_2"]].to_numpy().argmax(axis=1)
        assert got["n"] == len(sub)
        assert got["accuracy"] == pytest.approx(skm.accuracy_score(sub["y_true"], yhat), **EXACT)
        assert got["f1_macro"] == pytest.approx(
            skm.f1_score(sub["y_true"], yhat, average="macro"), **EXACT
        )

    reg = regression_frame(30_000)
    r = evaluate_predictions(to_dask(reg, 6), "regression", slices=["segment"], top_levels=3)
    counts = reg["segment"].value_counts()
    top = list(counts.index[:3])
    assert list(r["slices"]["segment"]) == [*top, "__other__", "__missing__"]
    masks = {lev: reg["segment"] == lev for lev in top}
    masks["__other__"] = reg["segment"].notna() & ~reg["segment"].isin(top)
    masks["__missing__"] = reg["segment"].isna()
    for lev, mask in masks.items():
        sub = reg[mask]
        got = r["slices"]["segment"][lev]
        assert got["n"] == len(sub)
        assert got["rmse"] == pytest.approx(
            skm.root_mean_squared_error(sub["y_true"], sub["y_pred"]), **EXACT
        )
        assert got["mae"] == pytest.approx(
            skm.mean_absolute_error(sub["y_true"], sub["y_pred"]), **EXACT
        )
        assert got["r2"] == pytest.approx(skm.r2_score(sub["y_true"], sub["y_pred"]), rel=1e-9)


# --- overfit check, headline ----------------------------------------------------------------------
def test_overfit_check_and_headline() -> None:
    train = {"accuracy": 0.95, "roc_auc": 0.99, "log_loss": 0.10, "f1": 0.9, "precision": None}
    holdout = {"accuracy": 0.94, "roc_auc": 0.90, "log_loss": 0.30, "f1": 0.95, "precision": 0.8}
    out = overfit_check(train, holdout, bound=0.05)
    assert out["metrics"]["roc_auc"]["gap"] == pytest.approx(0.09)
    assert out["metrics"]["log_loss"]["gap"] == pytest.approx(0.20)  # lower is better: sign flipped
    assert out["metrics"]["f1"]["gap"] == pytest.approx(-0.05)  # better on holdout: negative
    assert "precision" not in out["metrics"]  # undefined on one side
    assert out["flagged"] == ["roc_auc", "log_loss"] and out["overfit"] is True
    assert overfit_check(train, train, 0.0)["overfit"] is False
    # metrics in the target's unit are judged relative to the train value
    money = overfit_check({"rmse": 40_000.0, "r2": 0.90}, {"rmse": 41_000.0, "r2": 0.88}, 0.05)
    assert money["metrics"]["rmse"]["relative_gap"] == pytest.approx(0.025)
    assert money["flagged"] == []
    assert overfit_check({"rmse": 40_000.0}, {"rmse": 48_000.0}, 0.05)["flagged"] == ["rmse"]
    with pytest.raises(ValueError, match="bound"):
        overfit_check(train, holdout, float("nan"))

    frame = binary_frame(5_000)
    m = evaluate_predictions(frame, "binary")
    h = headline(m, "binary")
    assert list(h) == ["accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"]
    assert all(isinstance(v, float) for v in h.values())
    mc = evaluate_predictions(multiclass_frame(3_000, 3), "multiclass")
    assert list(headline(mc, "multiclass")) == [
        "accuracy",
        "f1_macro",
        "f1_weighted",
        "roc_auc_ovr",
        "log_loss",
    ]
    assert set(ev.PRIMARY) == set(ev.TASKS) and all(
        v in ev.GREATER_IS_BETTER for v in ev.PRIMARY.values()
    )
    assert overfit_check(headline(m, "binary"), headline(m, "binary"), 0.01)["flagged"] == []


# --- how it runs ----------------------------------------------------------------------------------
def test_one_compute_and_small_partials(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_compute = dask.compute

    def spy(*args, **kwargs):
        calls.append(args)
        return real_compute(*args, **kwargs)

    monkeypatch.setattr(dask, "compute", spy)
    frame = binary_frame(40_000)
    m = evaluate_predictions(to_dask(frame, 8), "binary", slices=["segment"])
    # exactly one compute, of one Delayed: the final task's dict is all that reaches the driver
    assert len(calls) == 1 and len(calls[0]) == 1
    assert isinstance(calls[0][0], Delayed)
    assert len(json.dumps(m)) < 100_000
    monkeypatch.undo()

    # a partition's partial has a fixed size: it does not grow with the partition's rows ...
    def partial_bytes(rows: int, slices: tuple[str, ...]) -> int:
        spec = ev._build_spec(
            list(frame.columns),
            "binary",
            class_names=None,
            threshold=0.5,
            min_precision=None,
            min_recall=None,
            slices=slices,
            top_levels=10,
            n_bins=10,
            curve_points=200,
        )
        return len(pickle.dumps(ev._chunk(binary_frame(rows), spec)))

    assert abs(partial_bytes(200_000, ()) - partial_bytes(2_000, ())) < 10_000
    # ... and slice cells are bounded by levels x coarse bins (here ~1.8 MB vs ~13 MB of rows)
    assert partial_bytes(200_000, ("segment",)) < 4 * 2**20
    big_multi = ev._build_spec(
        [f"proba_{c}" for c in range(50)] + ["y_true"],
        "multiclass",
        class_names=None,
        threshold=0.5,
        min_precision=None,
        min_recall=None,
        slices=(),
        top_levels=10,
        n_bins=10,
        curve_points=200,
    )
    assert 50 * -(-ev.N_SCORE_BINS // big_multi.mc_coarsen) <= 2**18


def test_with_distributed_client() -> None:
    distributed = pytest.importorskip("distributed")
    frame = binary_frame(30_000, seed=11)
    local = evaluate_predictions(to_dask(frame, 6), "binary", slices=["segment"])
    with distributed.Client(
        processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None
    ):
        remote = evaluate_predictions(to_dask(frame, 6), "binary", slices=["segment"])
        reg = evaluate_predictions(to_dask(regression_frame(5_000), 3), "regression")
    # same partials, same merge tree: the very same dict
    assert remote == local
    ref = regression_frame(5_000)
    assert math.isclose(reg["r2"], skm.r2_score(ref["y_true"], ref["y_pred"]), rel_tol=1e-9)
