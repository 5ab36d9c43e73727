"""pipeline.report: the HTML report of real bundles (binary, multiclass, regression).

Three small jobs run once for the module on the session's LocalCluster; every test renders
from their published bundles. The page is parsed with ``html.parser``; every inline SVG must
parse as XML, nothing may point outside the page, and a few numbers are checked against
metrics.json.
"""

from __future__ import annotations

import copy
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from pipeline.artifacts import open_bundle
from pipeline.cli import main
from pipeline.config import load_job
from pipeline.report import bundle_docs, render, render_bundle
from tests.conftest import HOUSING_CSV, demo_job

COMMON = {"summary", "run", "job", "data", "leaderboard", "model", "metrics", "importance",
          "learning-curve", "slices", "overfit", "notes", "performance-report", "columns",
          "cleaning"}
SECTIONS = {
    "binary": COMMON | {"roc", "pr", "calibration", "confusion", "confusion-matrix",
                        "thresholds", "class-balance", "slice-grade"},
    "multiclass": COMMON | {"confusion", "confusion-matrix", "per-class", "class-balance",
                            "slice-channel"},
    "regression": COMMON | {"residuals", "residual-quantiles", "slice-ocean_proximity"},
}


# --------------------------------------------------------------------------- parsing


class Page(HTMLParser):
    """Ids, resource references, and the text of every element carrying ``data-metric``."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: list[str] = []
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.tags: list[str] = []
        self.metrics: list[tuple[dict[str, str], str]] = []
        self._open: list[list[Any]] = []  # [tag, attrs, depth, text parts]
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        if "id" in a:
            self.ids.append(a["id"])
        for key in ("src", "href", "xlink:href", "action", "poster", "data"):
            if key in a:
                self.refs.append((tag, key, a[key]))
        for entry in self._open:
            if entry[0] == tag:
                entry[2] += 1
        if "data-metric" in a:
            self._open.append([tag, a, 0, []])

    def handle_endtag(self, tag: str) -> None:
        for entry in list(self._open):
            if entry[0] == tag:
                if entry[2] == 0:
                    self._open.remove(entry)
                    self.metrics.append((entry[1], " ".join("".join(entry[3]).split())))
                else:
                    entry[2] -= 1

    def handle_data(self, data: str) -> None:
        for entry in self._open:
            entry[3].append(data)


def section(html: str, ident: str) -> str:
    match = re.search(rf'<section id="{ident}">(.*?)</section>', html, flags=re.S)
    assert match, f"no section {ident!r}"
    return match.group(1)


def shown(fragment: str, metric: str) -> list[tuple[float, str]]:
    """(data-value, displayed text) of the elements showing ``metric`` in a fragment."""
    return [(float(a["data-value"]), text) for a, text in Page(fragment).metrics
            if a.get("data-metric") == metric and a.get("data-value")]


def counts(fragment: str) -> list[int]:
    return [int(v) for v in re.findall(r'data-count="(\d+)"', fragment)]


def check_page(html: str, task: str, *, performance_report: str | None = None) -> Page:
    """What every report must satisfy: sections, parseable SVG, no outside resource."""
    page = Page(html)
    assert html.startswith("<!DOCTYPE html>")
    missing = SECTIONS[task] - set(page.ids)
    assert not missing, f"sections missing from the {task} report: {sorted(missing)}"
    assert len(page.ids) == len(set(page.ids)), "duplicate ids on the page"
    svgs = re.findall(r"<svg\b.*?</svg>", html, flags=re.S)
    assert len(svgs) >= 4
    svg_ids: list[str] = []
    for svg in svgs:
        root = ET.fromstring(svg)  # raises on malformed XML
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        svg_ids += [el.get("id") for el in root.iter() if el.get("id")]
    assert len(svg_ids) == len(set(svg_ids)), "figures share element ids"
    assert "<?xml" not in html and "<!DOCTYPE svg" not in html
    # no script, no stylesheet or font from elsewhere, no outside reference at all
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert "@import" not in html and not re.search(r"url\(\s*['\"]?(?!#)", html)
    for tag, attr, value in page.refs:
        if value == performance_report:
            continue
        assert not re.match(r"^[a-z][a-z0-9+.-]*:", value, flags=re.I), (tag, attr, value)
        assert value.startswith("#"), (tag, attr, value)
    return page


# --------------------------------------------------------------------------- bundles


@pytest.fixture(scope="module")
def bundles(client: Any, demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One published run per task (few trees: the report, not the model, is under test)."""
    from pipeline.workflow import run

    out = tmp_path_factory.mktemp("report-runs")
    jobs = {
        # no feature kernels: their first compile on the workers costs more than the rest
        "binary": load_job(demo_job(str(demo_dir), str(out), features=[],
                                    evaluate={"slices": ["grade"], "min_precision": 0.4})),
        "multiclass": load_job(
            demo_job(str(demo_dir), str(out), name="grades", features=[], preprocess={},
                     models={"xgboost": {"n_estimators": 8, "max_depth": 3}},
                     evaluate={"slices": ["channel"]}),
            ["data.target=grade", "data.task=multiclass",
             "data.drop=[applied_at, credit_score, interest_rate]"]),
        "regression": load_job({
            "name": "housing",
            "data": {"train": str(HOUSING_CSV), "target": "median_house_value",
                     "task": "regression"},
            "models": {"xgboost": {"n_estimators": 15, "max_depth": 4}},
            "evaluate": {"slices": ["ocean_proximity"]},
            "output": str(out),
        }),
    }
    return {task: run(job, client=client).run_url for task, job in jobs.items()}


@pytest.fixture(scope="module")
def pages(bundles: dict) -> dict[str, str]:
    return {task: render_bundle(url) for task, url in bundles.items()}


def metrics_of(url: str) -> dict:
    return open_bundle(url).json("metrics.json")


# --------------------------------------------------------------------------- tests


@pytest.mark.integration
@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_every_section_and_figure(bundles: dict, pages: dict, task: str) -> None:
    html = pages[task]
    check_page(html, task, performance_report="dask-report.html")  # next to it in the bundle
    metrics = metrics_of(bundles[task])
    # the headline cards show the run's headline metrics, the primary one first-class
    cards = {a["data-metric"]: float(a["data-value"]) for a, _ in Page(
        html.split("</header>")[0]).metrics if a.get("data-value")}
    assert cards == pytest.approx({k: v for k, v in metrics["headline"].items()
                                   if v is not None}, rel=0, abs=0)
    assert 'class="card primary"' in html
    # job, data and run facts
    assert "<pre class=\"yaml\">name: " in html
    manifest = open_bundle(bundles[task]).manifest
    assert manifest["data"]["fingerprint"] in section(html, "run")
    assert manifest["versions"]["xgboost"] in section(html, "run")
    # one learning curve per eval metric, feature importance, the slice bar chart
    curve = metrics["model"]["learning_curve"]["valid"]
    assert section(html, "learning-curve").count("<svg") == len(curve)
    assert section(html, "importance").count("<svg") == 1
    assert section(html, "slices").count("<svg") == 1
    board = section(html, "leaderboard")  # one family: one row, starred as chosen
    assert "xgboost" in board and "Not available" not in board


@pytest.mark.integration
def test_binary_figures_match_metrics(bundles: dict, pages: dict) -> None:
    html, metrics = pages["binary"], metrics_of(bundles["binary"])
    holdout = metrics["holdout"]
    [(value, text)] = shown(section(html, "roc"), "roc_auc")
    assert value == holdout["roc_auc"] and text == f"{holdout['roc_auc']:.4f}"
    assert "AUC " + f"{holdout['roc_auc']:.4f}" in section(html, "roc")  # the legend
    [(value, _)] = shown(section(html, "pr"), "pr_auc")
    assert value == holdout["pr_auc"]
    confusion = section(html, "confusion")
    cells = counts(confusion)
    assert len(cells) == 4 and sum(cells) == metrics["rows"]["holdout"] == holdout["n"]
    chosen = holdout["chosen_threshold"]
    assert cells == [holdout["thresholds"][str(chosen)][k] for k in ("tn", "fp", "fn", "tp")]
    thresholds = section(html, "thresholds")
    assert thresholds.count('class="chosen"') == 1 and 'data-key="f1_optimal"' in thresholds
    f1 = shown(thresholds, "f1")
    assert holdout["thresholds"]["f1_optimal"]["f1"] in [v for v, _ in f1]
    assert section(html, "calibration").count("<svg") == 1
    assert thresholds.count("<svg") == 2  # metrics by threshold, scores by class
    balance = counts(section(html, "data").split('id="class-balance"')[1])
    assert sum(balance[:2]) == metrics["rows"]["total"]


@pytest.mark.integration
def test_operating_point_is_chosen_on_validation_rows(bundles: dict, pages: dict) -> None:
    from pipeline.artifacts import load_model

    holdout = metrics_of(bundles["binary"])["holdout"]
    chosen = holdout["chosen_threshold"]
    assert holdout["chosen_threshold_source"] == "min_precision"
    assert holdout["chosen_threshold_split"] == "validation"
    # the headline figures are the holdout's at the deployed threshold, not at 0.5
    at_chosen = holdout["thresholds"][str(chosen)]
    assert chosen != 0.5 and holdout["precision"] == at_chosen["precision"]
    assert holdout["confusion"] == {k: at_chosen[k] for k in ("tn", "fp", "fn", "tp")}
    assert load_model(bundles["binary"]).threshold == chosen
    assert "min_precision target on the validation rows" in section(pages["binary"], "confusion")


@pytest.mark.integration
def test_multiclass_confusion_and_classes(bundles: dict, pages: dict) -> None:
    html, metrics = pages["multiclass"], metrics_of(bundles["multiclass"])
    holdout = metrics["holdout"]
    cells = counts(section(html, "confusion"))
    assert len(cells) == 25 and sum(cells) == metrics["rows"]["holdout"]
    assert cells == [v for row in holdout["confusion"] for v in row]
    per_class = section(html, "per-class")
    assert [v for v, _ in shown(per_class, "f1")] == [holdout["per_class"][c]["f1"]
                                                      for c in "ABCDE"]
    assert section(html, "confusion").count("<svg") == 1


@pytest.mark.integration
def test_regression_residuals(bundles: dict, pages: dict) -> None:
    html, metrics = pages["regression"], metrics_of(bundles["regression"])
    residuals = section(html, "residuals")
    assert residuals.count("<svg") == 1
    quantiles = metrics["holdout"]["residual_quantiles"]
    for key in ("p5", "p50", "p95"):
        [(value, _)] = shown(residuals, f"residual_{key}")
        assert value == quantiles[key]
    [(value, text)] = shown(section(html, "metrics"), "rmse")
    assert value == metrics["holdout"]["rmse"] and text == f"{value:,.1f}"
    # the scatter plots draw the sample's rows
    assert "1,000 holdout sample rows" in residuals


@pytest.mark.integration
def test_leaderboard_cleaning_and_performance_link(bundles: dict) -> None:
    docs = bundle_docs(open_bundle(bundles["binary"]))
    docs["metrics"] = metrics = copy.deepcopy(docs["metrics"])
    head = metrics["headline"]
    metrics["leaderboard"] = [
        {"family": "xgboost", "training": "distributed", "cv_mean": 0.84, "cv_std": 0.004,
         "metric": "roc_auc", "holdout": head, "gap": 0.01, "fit_seconds": 3.2,
         "predict_rows_per_s": 850_000.0, "peak_memory_bytes": 2**30,
         "params": {"max_depth": 4, "learning_rate": 0.3}, "chosen": True},
        {"family": "logistic_regression", "training": "sample", "cv_mean": 0.71,
         "cv_std": 0.01, "metric": "roc_auc", "holdout": {**head, "roc_auc": 0.7123},
         "gap": 0.002, "fit_seconds": 0.4, "predict_rows_per_s": 4e6,
         "peak_memory_bytes": 2**28, "params": {"C": 1.0}, "chosen": False},
    ]
    metrics["preprocess"] = {"dropped": [{"column": "applied_at", "reason": "constant (1)"}]}
    docs["performance_report"] = "dask-report.html"
    html = render(docs)
    check_page(html, "binary", performance_report="dask-report.html")
    board = section(html, "leaderboard")
    assert "Not available" not in board
    assert 'class="chosen" data-family="xgboost"' in board
    assert 'data-family="logistic_regression"' in board
    assert [v for v, _ in shown(board, "roc_auc")] == [head["roc_auc"], 0.7123]
    assert "in memory on a sample" in board and "1.0 GiB" in board
    assert "constant (1)" in section(html, "data")
    link = Page(section(html, "run")).refs
    assert ("a", "href", "dask-report.html") in link


@pytest.mark.integration
def test_cli_report(bundles: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    capsys: pytest.CaptureFixture) -> None:
    url = bundles["regression"]
    target = tmp_path / "r.html"
    assert main(["report", url, "-o", str(target)]) == 0
    html = target.read_text(encoding="utf-8")
    # re-rendered outside the bundle, the page links to the bundle's performance report
    check_page(html, "regression", performance_report=f"file://{url}/dask-report.html")
    assert sorted(p.name for p in Path(url).iterdir()) == sorted(
        [*open_bundle(url).manifest["files"], "manifest.json"])  # nothing written into it
    # default name: ./report-<run_id>.html; a model URL renders its current version
    monkeypatch.chdir(tmp_path)
    model_url = url.split("/runs/")[0] + "/models/housing"
    assert main(["report", model_url]) == 0
    run_id = url.rstrip("/").rsplit("/", 1)[1]
    assert (tmp_path / f"report-{run_id}.html").read_text(encoding="utf-8") == html
    assert f"report-{run_id}.html" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "runs" / "missing")]) == 1


@pytest.mark.integration
def test_run_writes_the_report(bundles: dict) -> None:
    bundle = open_bundle(bundles["binary"])
    assert bundle.has("report.html") and bundle.has("dask-report.html")
    # the Dask performance report opens offline: bokeh's JavaScript inline, no CDN script
    dask_page = bundle.read("dask-report.html").decode("utf-8")
    assert "Bokeh" in dask_page
    assert not re.search(r"<script[^>]+src=[\"']https?://", dask_page)
    check_page(bundle.read("report.html").decode("utf-8"), "binary",
               performance_report="dask-report.html")


def test_missing_documents_say_not_available() -> None:
    html = render({"job": {"name": "x", "data": {"task": "binary"}}})
    page = Page(html)
    assert {"run", "job", "data", "leaderboard", "model", "metrics", "importance",
            "learning-curve", "slices", "overfit", "notes"} <= set(page.ids)
    assert html.count("Not available") >= 8
    assert "<svg" not in html


def degenerate_docs(task: str) -> dict[str, Any]:
    """Documents of a run whose figures have little or nothing to draw."""
    import numpy as np
    import pandas as pd

    from pipeline.evaluate import evaluate_predictions, headline, overfit_check

    rng = np.random.default_rng(0)
    n = 200
    segment = pd.Series(rng.choice(["a", "b"], n), dtype="str")
    if task == "binary":  # a single class: no ROC/PR curve, no F1-optimal threshold
        frame = pd.DataFrame({"y_true": np.zeros(n, int), "proba": rng.random(n)})
        names = ["no", "yes"]
    elif task == "multiclass":  # class "c" never predicted
        proba = rng.dirichlet([1, 1, 1], n)
        proba[:, 2] = 0.0
        frame = pd.DataFrame(proba / proba.sum(axis=1, keepdims=True),
                             columns=["proba_0", "proba_1", "proba_2"])
        frame.insert(0, "y_true", rng.integers(0, 3, n))
        names = ["a", "b", "c"]
    else:  # a constant target: R² undefined
        frame = pd.DataFrame({"y_true": np.ones(n), "y_pred": rng.normal(1, 0.1, n)})
        names = None
    frame["segment"] = segment
    holdout = evaluate_predictions(frame, task, class_names=names, slices=["segment"])
    return {
        "job": {"name": "edge", "data": {"task": task, "target": "y"}},
        "metrics": {"task": task, "primary_metric": "log_loss", "holdout": holdout,
                    "headline": headline(holdout, task),
                    "overfit": overfit_check(holdout, holdout, 0.05),
                    "model": {"family": "xgboost", "importance": {"x": 0.0},
                              "learning_curve": {"train": {"m": [0.5]}, "valid": {}},
                              "trees": 1}},
        "schema": {"task": task, "target": "y", "classes": names},
        "sample": pd.DataFrame({"y": pd.Series([], dtype="float64")}),
    }


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_degenerate_metrics_render(task: str) -> None:
    html = render(degenerate_docs(task))  # no error, no warning (warnings fail the suite)
    page = Page(html)
    assert {"metrics", "overfit", "slices", "importance", "learning-curve"} <= set(page.ids)
    for svg in re.findall(r"<svg\b.*?</svg>", html, flags=re.S):
        ET.fromstring(svg)
    if task == "binary":
        assert "Not available: the ROC curve is undefined" in html
