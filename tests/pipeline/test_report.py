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
    assert main(["report", str(tmp_path / "runs" / "missing")]) == 2  # bad input


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


# --------------------------------------------------------------------------- issue #19


def two_class_docs(family: str = "xgboost", primary: str = "roc_auc") -> dict[str, Any]:
    """Documents of a small binary run with two classes, slices, a leaderboard and timings."""
    import numpy as np
    import pandas as pd

    from pipeline.evaluate import evaluate_predictions, headline, overfit_check

    rng = np.random.default_rng(1)
    n = 4000
    segment = pd.Series(rng.choice(["a", "b", "c"], n), dtype="str")
    y = rng.integers(0, 2, n)
    # informative scores, a little better on segment "c": slice metrics differ by a few points
    noise = np.where(segment == "c", 0.8, 1.0)
    proba = 1 / (1 + np.exp(-(1.6 * (y - 0.5) + rng.normal(0, noise, n))))
    frame = pd.DataFrame({"y_true": y, "proba": proba, "segment": segment})
    holdout = evaluate_predictions(frame, "binary", class_names=["no", "yes"],
                                   slices=["segment"])
    head = headline(holdout, "binary")

    def row(fam: str, cv: float | None, auc: float, chosen: bool = False) -> dict[str, Any]:
        return {"family": fam, "training": "distributed", "cv_mean": cv, "cv_std": 0.01,
                "metric": primary, "holdout": {**head, "roc_auc": auc, "log_loss": 1 - auc},
                "gap": 0.01, "fit_seconds": 6.0, "predict_rows_per_s": 1e5,
                "peak_memory_bytes": 2**30, "chosen": chosen,
                "params": {"a_rather_long_parameter_name": [1, 2, 3],
                           "another_long_parameter_name": "some_long_value_here"}}

    better = (lambda a, b: a > b) if primary == "roc_auc" else (lambda a, b: a < b)
    cvs = {"knn": 0.70, "xgboost": 0.84, "logistic_regression": 0.80}
    if primary == "log_loss":
        cvs = {"knn": 0.50, "xgboost": 0.35, "logistic_regression": 0.40}
    winner = min(cvs, key=cvs.get) if primary == "log_loss" else max(cvs, key=cvs.get)
    assert better(cvs[winner], cvs["knn"])
    board = [row("knn", cvs["knn"], 0.70), row("decision_tree", None, 0.60),
             row("logistic_regression", cvs["logistic_regression"], 0.80),
             row("xgboost", cvs["xgboost"], 0.84, chosen=winner == "xgboost")]
    return {
        "job": {"name": "t", "data": {"task": "binary", "target": "y"},
                "preprocess": {"scale": "standard"}},
        "metrics": {"task": "binary", "primary_metric": primary, "holdout": holdout,
                    "headline": head, "overfit": overfit_check(holdout, holdout, 0.05),
                    "leaderboard": board,
                    "timings": {"plan": 0.5, "load": 2.0, "preprocess": 3.0,
                                "search:xgboost": 4.0, "train:xgboost": 10.0,
                                "train:knn": 1.0, "evaluate": 0.0, "gate": 1.5},
                    "model": {"family": family,
                              "importance": {"income": 3.0, "age": 1.0, "grade_B": 0.5}}},
        "manifest": {"family": family, "name": "t", "run_id": "r1"},
        "schema": {"task": "binary", "target": "y", "classes": ["no", "yes"]},
    }


@pytest.mark.parametrize(("family", "says", "never"), [
    ("xgboost", "total gain over all trees", "coefficient"),
    ("random_forest", "total gain over all trees", "coefficient"),
    ("decision_tree", "impurity decrease", "total gain"),
    ("logistic_regression", "|coefficient| on the standardised inputs", "gain"),
    ("linear_svm", "|coefficient|", "gain"),
])
def test_importance_is_titled_by_model_kind(family: str, says: str, never: str) -> None:
    html = render(two_class_docs(family))
    part = section(html, "importance")
    assert part.count("<svg") == 1
    assert says in part and never not in part.lower()


def test_importance_of_a_model_without_one_says_so() -> None:
    docs = two_class_docs("knn")
    docs["metrics"]["model"]["importance"] = {}
    part = section(render(docs), "importance")
    assert "<svg" not in part and "a knn model has no split gains or coefficients" in part


@pytest.mark.parametrize("primary", ["roc_auc", "log_loss"])
def test_leaderboard_is_sorted_best_first_in_the_metric_direction(primary: str) -> None:
    html = render(two_class_docs(primary=primary))
    board = section(html, "leaderboard")
    order = re.findall(r'data-family="([^"]+)" data-rank="(\d+)"', board)
    # the CV score decides (lower log loss is better); no CV score: after the others
    assert [f for f, _ in order] == ["xgboost", "logistic_regression", "knn", "decision_tree"]
    assert [int(r) for _, r in order] == [1, 2, 3, 4]
    direction = "higher" if primary == "roc_auc" else "lower"
    assert f"({direction} is better)" in board
    # parameters live under the family name, not in a column of their own that widens the
    # table past the page (the right-hand columns were cut off at 1280 px)
    assert ">parameters<" not in board
    assert board.count('<div class="params mono">') == 4


def test_slice_axis_spans_the_values() -> None:
    docs = two_class_docs()
    html = render(docs)
    [svg] = re.findall(r"<svg\b.*?</svg>", section(html, "slices"), flags=re.S)
    root = ET.fromstring(svg)
    texts = ["".join(t.itertext()).strip() for t in root.iter("{http://www.w3.org/2000/svg}text")]
    levels = docs["metrics"]["holdout"]["slices"]["segment"]
    values = [row["roc_auc"] for row in levels.values()]
    ticks = [float(t) for t in texts if re.fullmatch(r"-?\d+\.\d+", t)]
    # tick labels lie around the slices' values (not 0 to 1), and the axis says so
    lo, hi = min(values), max(values)
    spread = hi - lo
    assert ticks and min(ticks) >= lo - spread and max(ticks) <= hi + spread
    assert 0.0 not in ticks and 1.0 not in ticks
    assert any("the axis spans the values, not 0 to 1" in t for t in texts)


def test_timings_split_refit_from_evaluation() -> None:
    html = render(two_class_docs())
    run = section(html, "run")
    stages = dict(re.findall(r'data-stage="([^"]+)" data-seconds="([^"]*)"', run))
    # train:xgboost (10 s) = refit (6 s, the leaderboard's fit time) + evaluation (4 s)
    assert float(stages["xgboost: refit"]) == 6.0
    assert float(stages["xgboost: evaluate"]) == 4.0
    # a stage shorter than its recorded refit (kept by an earlier run) is shown whole
    assert float(stages["knn: refit and evaluate"]) == 1.0
    assert float(stages["xgboost: search"]) == 4.0
    # the near-empty "evaluate" stage (choose the winner) is named for what it does
    assert "evaluate" not in stages and float(stages["choose the winner"]) == 0.0
    assert not re.search(r">\s*0 ms<", run) and "&lt; 1 ms" in run


def _chromium() -> str | None:
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="needs headless Chromium (apt-get install "
                                                "chromium)")
@pytest.mark.parametrize("width", [1280, 1920])
def test_leaderboard_fits_the_page_in_a_browser(tmp_path: Path, width: int) -> None:
    """Laid out by a real browser: no table of the page is wider than its box at 1280 and
    1920 px (a script added to a copy of the page measures it and writes the result)."""
    import subprocess

    html = render(two_class_docs())
    probe = ("<script>document.title = JSON.stringify([...document.querySelectorAll("
             "'.scroll')].filter(e => e.scrollWidth > e.clientWidth + 1).map("
             "e => (e.querySelector('table') || e).id || 'table'));</script></body>")
    page = tmp_path / "page.html"
    page.write_text(html.replace("</body>", probe), encoding="utf-8")
    out = subprocess.run(
        [_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu",
         f"--window-size={width},900", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True).stdout
    title = re.findall(r"<title>(.*?)</title>", out, flags=re.S)[0]  # the page's, not an SVG's
    assert title == "[]", f"tables wider than the page at {width} px: {title}"
