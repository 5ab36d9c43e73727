"""Drift sketches, drift statistics, the quality interval and the gate's rules, on pandas data
(no cluster): every statistic against scipy / numpy on the same data, the false-alarm and
detection rates over seeds on demo data with known drift, the config of the monitor: and
refine: blocks, and the monitor page.

The distributed paths (scoring with drift, ``mlpipe monitor``, retrain) are in
``test_monitor_flow.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from kernels import quantile_edges
from pipeline.config import JobError, MonitorSpec, load_job
from pipeline.demo import make_partition
from pipeline.monitor import (
    Binning,
    Levels,
    check_column,
    drift_report,
    interval,
    merge,
    moments,
    quality,
    reference_columns,
    sketch_frame,
)
from tests.conftest import demo_job

THRESHOLDS = MonitorSpec().model_dump(mode="json")
#: the demo's input columns (ids, time and target left out, as the demo job does)
FEATURES = [c for c in make_partition(0, 1).columns
            if c not in ("application_id", "customer_id", "applied_at", "default")]
#: the columns the demo's covariate drift changes
SHIFTED = {"income", "credit_score", "utilization", "purpose", "channel"}


def numeric(frame: pd.DataFrame, column: str) -> bool:
    return pd.api.types.is_numeric_dtype(frame[column].dtype)


def profile_of(reference: pd.DataFrame, columns: list[str], bins: int = 20,
               top: int = 20) -> dict:
    """A profile's inputs built the way reference_profile builds them, on one pandas frame."""
    binning = Binning({c: quantile_edges(reference[c].to_numpy(dtype=float), bins)
                       for c in columns if numeric(reference, c)},
                      {c: None for c in columns if not numeric(reference, c)})
    inputs = reference_columns(sketch_frame(reference, binning), binning, top)
    return {"thresholds": THRESHOLDS, "inputs": inputs, "outputs": {"columns": {}},
            "reference": {"rows": len(reference)}}


def current_of(profile: dict, frame: pd.DataFrame) -> dict:
    from pipeline.monitor import binnings

    inputs, _ = binnings(profile)
    return {"inputs": sketch_frame(frame, inputs), "outputs": {}}


# --------------------------------------------------------------------------- the statistics


def test_statistics_agree_with_scipy_and_numpy() -> None:
    rng = np.random.default_rng(3)
    x = np.where(rng.random(5000) < 0.03, np.nan, rng.normal(0, 1, 5000))
    y = np.where(rng.random(2000) < 0.08, np.nan, rng.normal(0.6, 1.2, 2000))
    edges = quantile_edges(x, 10)
    ref = reference_columns(sketch_frame(pd.DataFrame({"x": x}), Binning({"x": edges})),
                            Binning({"x": edges}), 20)["x"]
    cur = sketch_frame(pd.DataFrame({"x": y}), Binning({"x": edges}))["x"]
    # the counts: numpy's searchsorted on the present values
    e = np.bincount(np.searchsorted(edges, x[~np.isnan(x)], side="right"),
                    minlength=edges.size + 1).astype(float)
    a = np.bincount(np.searchsorted(edges, y[~np.isnan(y)], side="right"),
                    minlength=edges.size + 1).astype(float)
    assert ref["counts"] == e.astype(int).tolist() and cur["counts"] == a.astype(int).tolist()
    checks = check_column(ref, cur, THRESHOLDS)["checks"]
    floor = 0.5 / min(e.sum(), a.sum())
    p, q = np.maximum(e / e.sum(), floor), np.maximum(a / a.sum(), floor)
    psi = float(np.sum((q - p) * np.log(q / p)))
    assert abs(checks["psi"]["statistic"] - psi) < 1e-9
    chi2, p_value, _, _ = stats.chi2_contingency(np.vstack([e, a]), correction=False)
    assert abs(checks["psi"]["p_value"] - p_value) < 1e-9
    d = float(np.max(np.abs(np.cumsum(e) / e.sum() - np.cumsum(a) / a.sum())))
    assert abs(checks["ks"]["statistic"] - d) < 1e-9
    n = e.sum() * a.sum() / (e.sum() + a.sum())
    assert abs(checks["ks"]["p_value"] - stats.kstwobign.sf(d * math.sqrt(n))) < 1e-9
    # the missing share: the pooled two-proportion z-test
    m1, m2 = np.isnan(x).mean(), np.isnan(y).mean()
    pooled = (np.isnan(x).sum() + np.isnan(y).sum()) / (x.size + y.size)
    z = (m2 - m1) / math.sqrt(pooled * (1 - pooled) * (1 / x.size + 1 / y.size))
    assert abs(checks["missing_share"]["statistic"] - (m2 - m1)) < 1e-12
    assert abs(checks["missing_share"]["p_value"] - 2 * stats.norm.sf(abs(z))) < 1e-9
    assert checks["missing_share"]["flag"] is False  # 5 points is not reached
    assert checks["psi"]["flag"] and checks["ks"]["flag"]  # 0.6 sd and 1.2x the spread


def test_category_statistics_agree_with_scipy_and_pandas() -> None:
    rng = np.random.default_rng(5)
    levels = np.array(list("abcdefghij"), dtype=object)
    ref_values = pd.Series(rng.choice(levels, 8000, p=np.r_[[0.3, 0.2], [0.0625] * 8]))
    cur_values = pd.Series(rng.choice(np.r_[levels, ["new"]], 3000,
                                      p=np.r_[[0.2, 0.2], [0.055] * 8, [0.16]]))
    ref_values[rng.random(8000) < 0.02] = None
    binning = Binning({}, {"c": None})
    ref = reference_columns(sketch_frame(pd.DataFrame({"c": ref_values}), binning), binning,
                            top_levels=4)["c"]
    top = ref_values.value_counts().sort_index().sort_values(ascending=False, kind="stable")
    assert ref["levels"] == top.index[:4].tolist()
    assert ref["counts"] == [*top.iloc[:4].tolist(), int(top.iloc[4:].sum())]
    cur = sketch_frame(pd.DataFrame({"c": cur_values}),
                       Binning({}, {"c": Levels(tuple(ref["levels"]),
                                                pd.Index(ref["known"], dtype=object))}))["c"]
    assert cur["unseen"] == int((cur_values == "new").sum())
    checks = check_column(ref, cur, THRESHOLDS)["checks"]
    table = np.vstack([ref["counts"], cur["counts"]]).astype(float)
    chi2, p_value, dof, _ = stats.chi2_contingency(table, correction=False)
    assert abs(checks["chi2"]["statistic"] - chi2) < 1e-9
    assert abs(checks["chi2"]["p_value"] - p_value) < 1e-9 and checks["chi2"]["dof"] == dof
    assert abs(checks["chi2"]["effect"] - math.sqrt(chi2 / table.sum())) < 1e-12
    share = (cur_values == "new").sum() / cur_values.notna().sum()
    assert abs(checks["unseen_share"]["current"] - share) < 1e-12
    assert checks["unseen_share"]["flag"] and checks["chi2"]["flag"]


def test_sketches_of_partitions_merge_into_the_sketch_of_the_whole() -> None:
    frame = pd.concat([make_partition(i, 700, seed=1) for i in range(3)], ignore_index=True)
    profile = profile_of(frame, FEATURES)
    whole = current_of(profile, frame)
    parts = [current_of(profile, frame.iloc[i:i + 500]) for i in range(0, len(frame), 500)]
    assert merge(*parts) == whole
    empty = current_of(profile, frame.iloc[:0])
    assert merge(whole, empty) == whole


# --------------------------------------------------------------------------- rates over seeds


SEEDS = range(12)


def rates(drift: str | None, strength: float = 1.0) -> dict[str, float]:
    """Per column, the share of seeds at which it was flagged: the reference is 20,000 demo
    rows, the current data 5,000 fresh rows of the same generator (or drifted)."""
    flagged = {c: 0 for c in FEATURES}
    for seed in SEEDS:
        reference = pd.concat([make_partition(i, 5000, seed=seed) for i in range(4)],
                              ignore_index=True)
        current = make_partition(100 + seed, 5000, seed=seed, drift=drift, strength=strength)
        profile = profile_of(reference, FEATURES)
        report = drift_report(profile, current_of(profile, current))
        for column in report["drifted"]:
            flagged[column] += 1
    return {c: n / len(SEEDS) for c, n in flagged.items()}


def test_no_false_alarms_on_the_same_distribution() -> None:
    false = rates(None)
    print("\nfalse-alarm rate per column over", len(SEEDS), "seeds:",
          {c: r for c, r in false.items() if r}, "(every other column 0)")
    assert max(false.values()) <= 0.05


def test_a_random_split_of_one_sample_raises_no_alarm() -> None:
    for seed in SEEDS:
        frame = pd.concat([make_partition(i, 6000, seed=seed) for i in range(4)],
                          ignore_index=True)
        side = np.random.default_rng(seed).random(len(frame)) < 0.2
        profile = profile_of(frame[~side], FEATURES)
        assert drift_report(profile, current_of(profile, frame[side]))["drifted"] == []


def test_covariate_shift_is_detected_and_only_where_it_is() -> None:
    detected = rates("covariate", strength=1.0)
    weaker = rates("covariate", strength=0.5)
    print("\ndetection rate, covariate shift at strength 1:",
          {c: detected[c] for c in sorted(SHIFTED)}, "at 0.5:",
          {c: weaker[c] for c in sorted(SHIFTED)})
    assert all(detected[c] == 1.0 for c in SHIFTED)
    # columns computed from the shifted ones move too (grade from the credit score...);
    # the independent ones do not
    for column in ("age", "term_months", "num_dependents", "state", "home_ownership",
                   "years_at_address", "account_age_days"):
        assert detected[column] <= 0.05, column


def test_concept_shift_leaves_the_inputs_alone() -> None:
    assert max(rates("concept").values()) <= 0.05


# --------------------------------------------------------------------------- quality


def binary_frame(n: int, seed: int, noise: float = 1.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    score = rng.normal(0, 1, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(score * 2 + rng.normal(0, noise, n))))).astype(int)
    return pd.DataFrame({"y_true": y, "proba": 1 / (1 + np.exp(-score))})


def metrics_of(frame: pd.DataFrame) -> tuple[dict, dict]:
    from pipeline.evaluate import evaluate_predictions

    return evaluate_predictions(frame, "binary"), moments(frame, "binary")


def test_intervals_are_the_analytic_ones() -> None:
    frame = binary_frame(4000, 0)
    metrics, sums = metrics_of(frame)
    p = np.clip(frame["proba"].to_numpy(), np.finfo(float).eps, 1 - np.finfo(float).eps)
    y = frame["y_true"].to_numpy()
    loss = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    assert abs(sums["log_loss"][0] / sums["n"] - metrics["log_loss"]) < 1e-12
    assert abs(interval("log_loss", metrics, sums) - loss.std(ddof=1) / math.sqrt(len(loss))) \
        < 1e-12
    a, n1, n0 = metrics["roc_auc"], metrics["positives"], metrics["negatives"]
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    hanley = math.sqrt((a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a))
                       / (n1 * n0))
    assert abs(interval("roc_auc", metrics, sums) - hanley) < 1e-12
    acc = metrics["accuracy"]
    assert abs(interval("accuracy", metrics, sums) - math.sqrt(acc * (1 - acc) / 4000)) < 1e-12
    assert interval("f1", metrics, sums) is None


def test_decay_needs_more_than_noise() -> None:
    base_metrics, base_sums = metrics_of(binary_frame(20000, 1))
    from pipeline.monitor import baseline

    reference = baseline(base_metrics, base_sums, "binary", "roc_auc")
    worse = binary_frame(20000, 2, noise=3.0)  # a real drop of ROC AUC
    small = worse.sample(60, random_state=0)
    same = binary_frame(20000, 3)
    for frame, decayed in ((worse, True), (small, False), (same, False)):
        m, s = metrics_of(frame)
        out = quality(m, s, reference, THRESHOLDS, ["roc_auc", "log_loss", "f1"])
        drop = reference["metrics"]["roc_auc"] - m["roc_auc"]
        assert out["metrics"]["roc_auc"]["decay"] is decayed, (len(frame), drop)
        assert out["metrics"]["f1"]["decay"] is False  # no interval: never flagged
    assert drop < 0.01  # the last one: the same distribution


# --------------------------------------------------------------------------- the job file


def test_monitor_and_refine_blocks_are_checked(tmp_path) -> None:
    job = load_job(demo_job("data", str(tmp_path), monitor={"metrics": ["roc_auc", "log_loss"]},
                            refine={"promote": "never", "guards": {"log_loss": 0.01}}))
    assert job.refine.promote == "never" and job.monitor.alpha == 0.01
    with pytest.raises(JobError, match="refine.guards: 'rmse' is not a binary metric"):
        load_job(demo_job("data", str(tmp_path), refine={"guards": {"rmse": 1.0}}))
    with pytest.raises(JobError, match="did you mean 'roc_auc'"):
        load_job(demo_job("data", str(tmp_path), monitor={"metrics": ["roc_acu"]}))
    with pytest.raises(JobError, match="promote"):
        load_job(demo_job("data", str(tmp_path), refine={"promote": "sometimes"}))


def test_demo_drift_leaves_earlier_rows_alone() -> None:
    plain = make_partition(0, 4000)
    before = plain["applied_at"] < np.datetime64("2024-07-01")
    for drift in ("covariate", "concept"):
        drifted = make_partition(0, 4000, drift=drift, start="2024-07")
        pd.testing.assert_frame_equal(plain[before], drifted[before])
        assert not plain[~before].equals(drifted[~before])
    assert make_partition(0, 100, drift="covariate", strength=0.0).equals(make_partition(0, 100))


# --------------------------------------------------------------------------- the page


def test_monitor_page_is_self_contained() -> None:
    from pipeline.monitor_report import render

    reference = pd.concat([make_partition(i, 3000) for i in range(2)], ignore_index=True)
    profile = profile_of(reference, FEATURES)
    report = drift_report(profile, current_of(profile, make_partition(9, 3000,
                                                                      drift="covariate")))
    doc = {"overall": {"chunk": "all", "drift": report, "rows": report["rows"]}, "chunks": [],
           "drift": report["drift"], "drifted": report["drifted"], "outputs_drifted": [],
           "decay": False, "decayed": [], "flagged_chunks": [], "exit_code": 3,
           "model": {"name": "demo", "run_id": "r1", "task": "binary", "family": "xgboost",
                     "url": "out/models/demo"},
           "data": {"url": "data/new", "kind": "data", "rows": 3000, "labels": None,
                    "labels_from": None, "id_column": None},
           "thresholds": THRESHOLDS, "created_at": "2026-12-04T00:00:00Z", "by": None,
           "freq": None, "primary_metric": "roc_auc"}
    page = render(doc)
    assert "<script" not in page and "http" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert page.count("<svg") >= len(report["drifted"])
    for column in report["drifted"]:
        assert f'data-column="{column}"' in page


# --------------------------------------------------------------------------- the gate's rules


def champion_of(tmp_path, job, holdout: dict) -> str:
    """A registered, current version of ``job``'s model trained on the same data and split
    (so the gate reads its recorded holdout metrics: no cluster needed)."""
    from pipeline import artifacts

    files = {"job.yaml": job.to_yaml().encode(),
             "metrics.json": artifacts.json_bytes({"holdout": holdout})}
    manifest = artifacts.write_run(job.output, "champion", files,
                                   meta={"name": job.name, "data": {"fingerprint": "fp"}})
    artifacts.publish(job.output, job.name, manifest)
    return "champion"


@pytest.mark.parametrize("refine, challenger, drift, promote, failed", [
    ({}, {"roc_auc": 0.81, "log_loss": 0.40}, False, True, []),
    ({}, {"roc_auc": 0.79, "log_loss": 0.38}, False, False, ["min_improvement"]),
    ({"min_improvement": 0.02}, {"roc_auc": 0.81, "log_loss": 0.40}, False, False,
     ["min_improvement"]),
    ({"guards": {"log_loss": 0.01}}, {"roc_auc": 0.82, "log_loss": 0.43}, False, False,
     ["guard"]),
    ({"guards": {"log_loss": 0.05}}, {"roc_auc": 0.82, "log_loss": 0.43}, False, True, []),
    ({}, {"roc_auc": 0.85, "log_loss": 0.35}, True, False, ["holdout drift"]),
    ({"drift_check": False}, {"roc_auc": 0.85, "log_loss": 0.35}, True, True, []),
    ({"promote": "always"}, {"roc_auc": 0.70, "log_loss": 0.50}, False, True,
     ["min_improvement"]),
    ({"promote": "never"}, {"roc_auc": 0.90, "log_loss": 0.30}, False, False, []),
])
def test_the_gate_rules(tmp_path, refine: dict, challenger: dict, drift: bool, promote: bool,
                        failed: list) -> None:
    from pipeline.monitor import challenge

    job = load_job(demo_job(str(tmp_path / "data"), str(tmp_path / "out"), refine=refine))
    champion_of(tmp_path, job, {"roc_auc": 0.80, "log_loss": 0.40, "n": 1000})
    profile = {"holdout_drift": {"drift": drift, "drifted": ["income"] if drift else []}}
    verdict = challenge(job, {**challenger, "n": 1000}, None, profile, None,
                        data_fingerprint="fp")
    assert verdict.champion == "champion" and verdict.promote is promote
    assert [r["rule"] for r in verdict.rules if not r["passed"]] == failed
    assert verdict.metrics["champion"]["roc_auc"] == 0.80
    assert any("recorded holdout metrics" in r for r in verdict.reasons)
