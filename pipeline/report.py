"""The run report: one self-contained HTML file that a data scientist reads first.

:func:`render` turns the documents of a run (the resolved job, ``metrics.json``,
``schema.json``, ``data_summary.json``, the manifest and the holdout sample) into one HTML page:
inline SVG figures drawn with matplotlib's object-oriented API (no pyplot state, no display
needed), CSS inside the page, no script, and no reference to anything outside it, so it opens
offline, from object storage or an e-mail attachment, and prints cleanly.
:func:`render_bundle` does the same for a published bundle, reading each file through the
manifest's sha256 check; ``mlpipe report RUN_URL`` is its command line.

Every section is built from what the documents hold. A section whose data is absent (no
leaderboard in a run without model search, no performance report) says so in one line, so the
report of an older or smaller run still renders. Numbers are shown as the documents hold them:
the page computes no metric of its own except a few read straight off the stored counts (rates
of a confusion matrix, shares) and the sample-based plots, which say they use the sample.
"""

from __future__ import annotations

import functools
import io
import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["PERFORMANCE_REPORT", "REPORT", "bundle_docs", "render", "render_bundle",
           "template_environment"]

#: the report's name inside a bundle.
REPORT = "report.html"
#: the Dask performance report's name inside a bundle (linked when the manifest lists it).
PERFORMANCE_REPORT = "dask-report.html"

_TEMPLATE = "report.html.j2"

#: matplotlib settings for every figure: text stays text (small files, searchable, crisp at any
#: zoom), the hash salt makes element ids (and so the whole file) reproducible.
_RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "mlpipe-report",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.titleweight": "bold",
    "axes.labelsize": 9.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e6e6e6",
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,
    "legend.fontsize": 8.0,
    "legend.frameon": False,
    "xtick.labelsize": 8.0,
    "ytick.labelsize": 8.0,
    "path.simplify": True,
}

_BLUE, _ORANGE, _GREEN, _RED, _GREY, _PURPLE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#7f7f7f", "#9467bd")

#: how the metrics are called on the page.
_LABELS = {
    "roc_auc": "ROC AUC", "pr_auc": "PR AUC (average precision)", "log_loss": "log loss",
    "brier": "Brier score", "accuracy": "accuracy", "precision": "precision", "recall": "recall",
    "f1": "F1", "prevalence": "prevalence", "f1_macro": "F1 (macro)",
    "f1_weighted": "F1 (weighted)", "precision_macro": "precision (macro)",
    "precision_weighted": "precision (weighted)", "recall_macro": "recall (macro)",
    "recall_weighted": "recall (weighted)", "roc_auc_ovr": "ROC AUC (one-vs-rest, macro)",
    "roc_auc_ovr_weighted": "ROC AUC (one-vs-rest, weighted)", "rmse": "RMSE", "mae": "MAE",
    "mse": "MSE", "r2": "R²", "mape": "MAPE", "max_error": "max error",
    "logloss": "log loss", "auc": "ROC AUC", "mlogloss": "log loss", "merror": "error rate",
}

#: what each ``training`` value of a leaderboard row means.
_TRAINING = {
    "distributed": "on all training rows, across the cluster",
    "incremental": "on all training rows, partition by partition (partial_fit)",
    "sample": "in memory on a sample of the training rows",
}

#: the scalar metrics of the holdout table, per task, in order.
_HOLDOUT = {
    "binary": ("roc_auc", "pr_auc", "log_loss", "brier", "accuracy", "precision", "recall",
               "f1", "prevalence"),
    "multiclass": ("accuracy", "log_loss", "roc_auc_ovr", "roc_auc_ovr_weighted", "f1_macro",
                   "f1_weighted", "precision_macro", "precision_weighted", "recall_macro",
                   "recall_weighted"),
    "regression": ("rmse", "mae", "r2", "mse", "mape", "max_error"),
}

_MAX_CURVE_POINTS = 200
_TOP_FEATURES = 20
_MAX_HEATMAP_CLASSES = 30  # beyond this a heatmap is unreadable: the table is kept


# --------------------------------------------------------------------------- public API


def render(docs: Mapping[str, Any]) -> str:
    """The report of one run as a self-contained HTML page.

    Parameters
    ----------
    docs
        The run's documents: ``job`` (the resolved job as a dict), ``metrics``
        (``metrics.json``), ``schema`` (``schema.json``), ``data_summary``
        (``data_summary.json``), ``manifest`` (run_id, created_at, versions, data, cluster,
        name, task, family, headline; ``files`` is not needed), ``sample`` (the holdout sample
        as a pandas DataFrame, with ``__pred_*`` prediction columns) and, optionally,
        ``performance_report``: where the Dask performance report lies, relative to the page
        (a file name such as ``"dask-report.html"``) or as a URL. Any of them may be missing
        or None: the sections that need it then say "not available".

    Returns
    -------
    str
        The HTML page (UTF-8 text; no external resource, no script).

    Examples
    --------
    >>> html = render({"job": job, "metrics": metrics, "schema": schema,   # doctest: +SKIP
    ...                "data_summary": summary, "manifest": manifest, "sample": sample})
    >>> Path("report.html").write_text(html, encoding="utf-8")          # doctest: +SKIP
    """
    import matplotlib

    context = _context(docs)
    with matplotlib.rc_context(_RC):
        context["figures"] = _Figures(context).draw()
    return _environment().get_template(_TEMPLATE).render(**context)


def bundle_docs(bundle: Any, *, performance_report: str | None = None) -> dict[str, Any]:
    """The documents :func:`render` takes, read from an opened bundle (each sha256-checked).

    Parameters
    ----------
    bundle
        An :class:`pipeline.artifacts.Bundle` (from :func:`pipeline.artifacts.open_bundle`).
    performance_report
        The link to the Dask performance report when the manifest lists one; by default its
        file name, right for a page saved next to it inside the bundle.
    """
    import pandas as pd
    import yaml

    docs: dict[str, Any] = {"manifest": {k: v for k, v in bundle.manifest.items()
                                         if not k.startswith("_")}}
    if bundle.has("job.yaml"):
        docs["job"] = yaml.safe_load(bundle.read("job.yaml"))
    for key, name in (("metrics", "metrics.json"), ("schema", "schema.json"),
                      ("data_summary", "data_summary.json")):
        if bundle.has(name):
            docs[key] = bundle.json(name)
    if bundle.has("sample.parquet"):
        docs["sample"] = pd.read_parquet(io.BytesIO(bundle.read("sample.parquet")))
    if bundle.has(PERFORMANCE_REPORT):
        docs["performance_report"] = performance_report or PERFORMANCE_REPORT
    return docs


def render_bundle(url: str, storage_options: Mapping[str, Any] | None = None, *,
                  performance_report: str | None = None) -> str:
    """The report of a published run, rendered again from its verified files.

    Parameters
    ----------
    url
        A run URL (``<root>/runs/<run_id>``) or a model URL (``<root>/models/<name>``: its
        current version).
    storage_options
        fsspec options for the bundle's filesystem.
    performance_report
        The link to the Dask performance report (see :func:`bundle_docs`).

    Examples
    --------
    >>> html = render_bundle("s3://bucket/mlpipe/models/demo")   # doctest: +SKIP
    """
    from pipeline.artifacts import open_bundle

    bundle = open_bundle(url, storage_options)
    return render(bundle_docs(bundle, performance_report=performance_report))


# --------------------------------------------------------------------------- template


def template_environment(**filters: Any) -> Any:
    """The jinja2 environment of our HTML pages (``pipeline/templates``: autoescaped, strict
    about undefined names), with ``filters`` added."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
        lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(filters)
    return env


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    return template_environment(num=_num, pct=_pct, nbytes=_bytes, seconds=_seconds,
                                exact=_exact, label=_label, plain=_plain, whole=_whole)


def _label(name: Any) -> str:
    return _LABELS.get(str(name), str(name).replace("_", " "))


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _num(value: Any, digits: int = 4) -> str:
    """A metric for the eye: 4 decimals in [0.001, 1000), thousands separated above."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    x = _number(value)
    if x is None:
        return "n/a" if value is None or isinstance(value, float) else str(value)
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.1f}" if abs(x) < 1e7 else f"{x:,.0f}" if abs(x) < 1e15 else f"{x:.4g}"
    if abs(x) >= 0.001:
        return f"{x:.{digits}f}"
    return f"{x:.2e}"


def _whole(value: Any) -> str:
    x = _number(value)
    return "n/a" if x is None else f"{round(x):,}"


def _exact(value: Any) -> str:
    """The exact value for a ``data-value`` attribute (round-trips through ``float``)."""
    x = _number(value)
    return "" if x is None else repr(x)


def _pct(value: Any, digits: int = 1) -> str:
    x = _number(value)
    if x is None:
        return "n/a"
    if 0 < abs(x) < 0.5 * 10 ** -(digits + 2):
        return f"<{10 ** -digits:g} %"
    return f"{100 * x:.{digits}f} %"


def _bytes(value: Any) -> str:
    x = _number(value)
    if x is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(x) < 1024 or unit == "TiB":
            return f"{x:,.0f} {unit}" if unit == "B" else f"{x:,.1f} {unit}"
        x /= 1024
    return f"{x:,.1f} TiB"  # pragma: no cover (the loop returns)


def _seconds(value: Any) -> str:
    x = _number(value)
    if x is None:
        return "n/a"
    if x >= 120:
        return f"{int(x // 60)} min {x % 60:04.1f} s"
    if x < 0.0005:
        return "< 1 ms"
    return f"{x:.1f} s" if x >= 1 else f"{x * 1000:.0f} ms"


def _plain(value: Any) -> str:
    """A parameter value as text (lists and dicts compact, floats short)."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_plain(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_plain(v)}" for k, v in value.items()) + "}"
    return "null" if value is None else str(value)


# --------------------------------------------------------------------------- context


def _get(doc: Any, *path: Any, default: Any = None) -> Any:
    """``doc[path[0]][path[1]]...`` or ``default`` where any step is missing."""
    for key in path:
        if isinstance(doc, Mapping) and key in doc:
            doc = doc[key]
        elif isinstance(doc, list | tuple) and isinstance(key, int) and -len(doc) <= key < len(doc):
            doc = doc[key]
        else:
            return default
    return default if doc is None else doc


def _context(docs: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the template shows, as plain values (the template only lays it out)."""
    job = docs.get("job") or {}
    metrics = docs.get("metrics") or {}
    schema = docs.get("schema") or {}
    summary = docs.get("data_summary") or {}
    manifest = docs.get("manifest") or {}
    task = (metrics.get("task") or manifest.get("task") or schema.get("task")
            or _get(job, "data", "task") or "")
    holdout = metrics.get("holdout") or {}
    primary = metrics.get("primary_metric") or ""
    sample = docs.get("sample")
    if sample is not None and not len(getattr(sample, "columns", ())):
        sample = None
    ctx: dict[str, Any] = {
        "task": task,
        "name": manifest.get("name") or job.get("name") or "",
        "run_id": manifest.get("run_id") or "",
        "created_at": manifest.get("created_at") or "",
        "family": (manifest.get("family") or _get(metrics, "model", "family")
                   or schema.get("family") or ""),
        "primary": primary,
        "headline": _headline(metrics, manifest, primary),
        "job_yaml": _job_yaml(job),
        "run": _run_facts(job, metrics, manifest),
        "performance_report": _performance_link(docs.get("performance_report")),
        "data": _data(job, metrics, schema, summary, task),
        "leaderboard": _leaderboard(metrics.get("leaderboard"), task),
        "model": _model(job, metrics, manifest),
        "holdout": _holdout_table(holdout, _train_values(metrics), task),
        "overfit": _overfit(metrics.get("overfit")),
        "slices": _slices(holdout, primary, task),
        "importance": _importance_kind(
            manifest.get("family") or _get(metrics, "model", "family") or "",
            _get(job, "preprocess", "scale", default="standard")),
        "notes": _notes(holdout),
        "warnings": list(metrics.get("warnings") or []),
        "sample_rows": int(len(sample)) if sample is not None else 0,
        "binary": None, "multiclass": None, "regression": None,
    }
    if task == "binary" and holdout:
        ctx["binary"] = _binary(holdout, _number(_get(job, "evaluate", "threshold", default=0.5)))
    elif task == "multiclass" and holdout:
        ctx["multiclass"] = _multiclass(holdout)
    elif task == "regression" and holdout:
        ctx["regression"] = _regression(holdout)
    # the raw material of the figures; not used by the template directly
    ctx["_docs"] = {"metrics": metrics, "schema": schema, "job": job, "sample": sample}
    ctx["sections"] = _sections(ctx)
    return ctx


def _headline(metrics: Mapping[str, Any], manifest: Mapping[str, Any],
              primary: str) -> list[dict[str, Any]]:
    from pipeline.models import GREATER_IS_BETTER

    head = metrics.get("headline") or manifest.get("headline") or {}
    return [{"name": k, "label": _label(k), "value": v, "primary": k == primary,
             "direction": ("higher is better" if GREATER_IS_BETTER.get(k) else
                           "lower is better" if k in GREATER_IS_BETTER else "")}
            for k, v in head.items()]


def _job_yaml(job: Mapping[str, Any]) -> str:
    if not job:
        return ""
    import yaml

    return yaml.safe_dump(dict(job), sort_keys=False, default_flow_style=False,
                          allow_unicode=True).rstrip()


def _run_facts(job: Mapping[str, Any], metrics: Mapping[str, Any],
               manifest: Mapping[str, Any]) -> dict[str, Any]:
    cluster = manifest.get("cluster") or {}
    data = manifest.get("data") or {}
    split = _get(job, "data", "split", default={})
    params = _get(metrics, "model", "params", default={})
    search_seed = _get(job, "search", "seed")
    facts: list[tuple[str, Any, str]] = []  # (label, value, kind)

    def add(label: str, value: Any, kind: str = "text") -> None:
        if value is not None and value != "":
            facts.append((label, value, kind))

    add("run id", manifest.get("run_id"), "code")
    add("created", manifest.get("created_at"))
    add("job name", manifest.get("name") or job.get("name"))
    add("data", data.get("url") or _get(job, "data", "train"), "code")
    if data.get("files") is not None:
        add("data files", f"{int(data['files']):,} ({_bytes(data.get('bytes'))})")
    elif data.get("bytes") is not None:
        add("data size", _bytes(data["bytes"]))
    add("data fingerprint", data.get("fingerprint"), "code")
    add("output", job.get("output"), "code")
    if cluster:
        add("cluster scheduler", cluster.get("scheduler"), "code")
        workers = cluster.get("workers")
        if workers is not None:
            add("workers", f"{int(workers):,} workers, {int(cluster.get('threads') or 0):,} "
                           f"threads, {_bytes(cluster.get('memory_bytes'))} memory")
    seeds = []
    if split.get("seed") is not None:
        seeds.append(f"split {split['seed']}")
    if isinstance(params, Mapping) and params.get("random_state") is not None:
        seeds.append(f"model {params['random_state']}")
    elif search_seed is not None:
        # xgboost's random_state defaults to search.seed (pipeline.train.xgb_params)
        seeds.append(f"model / search {search_seed}")
    add("seeds", ", ".join(seeds))
    if split:
        how = [f"holdout {_pct(split.get('holdout'), 0)}"]
        if split.get("validation"):
            how.append(f"validation {_pct(split.get('validation'), 0)} of the rest")
        if split.get("by"):
            how.append(f"by time column {split['by']}")
        elif split.get("stratify") and _get(job, "data", "task") != "regression":
            how.append("stratified by class")
        add("split", ", ".join(how))
    timings = metrics.get("timings") or {}
    rows = _timings(timings, metrics.get("leaderboard") or [])
    total = sum(r["seconds"] for r in rows)
    for row in rows:
        row["share"] = row["seconds"] / total if total else 0.0
    versions = manifest.get("versions") or {}
    return {
        "facts": facts,
        "timings": rows,
        "total_seconds": total if timings else None,
        "versions": sorted(((k, v) for k, v in versions.items() if v), key=lambda kv: kv[0]),
    }


#: what the workflow's stage names (pipeline.workflow.Stopwatch) cover, for the timings table.
_STAGES = {
    "plan": ("plan", "list the input files, read their headers and a sample, check the job"),
    "load": ("load", "read and validate every partition, the data summary"),
    "preprocess": ("split and preprocess", "the train / validation / holdout split and the "
                                           "shared preprocessing fitted on the training rows"),
    # the chosen family's operating point and the leaderboard; each family's evaluation is
    # timed with its refit ("train:<family>"), so this stage is short
    "evaluate": ("choose the winner", "the selection rule, the operating point "
                                      "(evaluate.min_precision / min_recall) and the leaderboard"),
    "choose": ("choose the winner", "the selection rule, the operating point "
                                    "(evaluate.min_precision / min_recall) and the leaderboard"),
    "gate": ("champion / challenger gate", "the reference profile for drift and the comparison "
                                           "with the current version"),
    "bundle": ("write the bundle", "every file of the bundle, the manifest last"),
}


def _timings(timings: Mapping[str, Any], board: Sequence[Mapping[str, Any]]
             ) -> list[dict[str, Any]]:
    """The stage timings as table rows (label, seconds, what the stage covers).

    A family's stage (``train:<family>``) is its refit *and* its evaluation on the holdout
    and training rows: it is split into the two with the refit's own time from the
    leaderboard, so the evaluation's cost is not hidden inside "train" while a near-empty
    stage reads "evaluate 0 ms". A stage kept by an earlier, interrupted run (shorter than the
    refit it stands for) is shown whole.
    """
    fit = {str(r.get("family")): _number(r.get("fit_seconds")) for r in board}
    rows: list[dict[str, Any]] = []
    for stage, value in timings.items():
        seconds = _number(value)
        if seconds is None:
            continue
        kind, _, family = str(stage).partition(":")
        if kind == "train" and family:
            refit = fit.get(family)
            if refit is not None and 0 <= refit <= seconds:
                rows.append({"stage": f"{family}: refit", "seconds": refit,
                             "title": f"{family} refitted on the training rows"})
                rows.append({"stage": f"{family}: evaluate", "seconds": seconds - refit,
                             "title": "metrics on the holdout and training rows, the "
                                      "predictor, and keeping the stage for a resumed run"})
            else:
                rows.append({"stage": f"{family}: refit and evaluate", "seconds": seconds,
                             "title": "refit and evaluation (or both kept by an earlier run "
                                      "of this job on this data)"})
        elif kind == "search" and family:
            rows.append({"stage": f"{family}: search", "seconds": seconds,
                         "title": "candidates x folds on the search sample"})
        else:
            label, title = _STAGES.get(str(stage), (str(stage), ""))
            rows.append({"stage": label, "seconds": seconds, "title": title})
    return rows


def _performance_link(value: Any) -> dict[str, Any] | None:
    if not value:
        return None
    text = str(value)
    scheme = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", text)
    # a browser opens a relative path, file:// and http(s)://; s3:// and the like are shown
    # as text for the reader to fetch
    openable = scheme is None or scheme.group(1).lower() in ("file", "http", "https")
    return {"href": text, "openable": openable}


def _data(job: Mapping[str, Any], metrics: Mapping[str, Any], schema: Mapping[str, Any],
          summary: Mapping[str, Any], task: str) -> dict[str, Any]:
    target = schema.get("target") or _get(job, "data", "target") or ""
    ids = set(schema.get("id_columns") or _get(job, "data", "id_columns", default=[]))
    dropped_by_job = list(_get(job, "data", "drop", default=[]))
    time_column = _get(job, "data", "split", "by")
    features = set((schema.get("columns") or {}).keys())
    cleaning = _get(metrics, "preprocess", "dropped")
    cleaned = {str(d.get("column")): str(d.get("reason", "")) for d in cleaning or []
               if isinstance(d, Mapping)}
    rows = summary.get("rows")
    columns = []
    levels = summary.get("levels") or {}
    missing = summary.get("missing") or {}
    for column, dtype in (summary.get("columns") or {}).items():
        if column == target:
            role = "target"
        elif column in ids:
            role = "id"
        elif column in cleaned:
            role = "dropped (cleaning)"
        elif column in dropped_by_job:
            role = "dropped (job)"
        elif column == time_column:
            role = "time"
        elif not features or column in features:
            role = "feature"
        else:
            role = "not used"
        n_missing = missing.get(column)
        share = (float(n_missing) / rows) if (n_missing is not None and rows) else None
        column_levels = levels.get(column) or {}
        if "top" in column_levels:  # {n_levels, top: {level: count}} (load.Summary.to_json)
            n_levels, column_levels = column_levels.get("n_levels"), column_levels["top"]
        else:
            n_levels = len(column_levels) or None
        top = None
        if column_levels:
            level, count = max(column_levels.items(), key=lambda kv: kv[1])
            top = {"level": level, "share": (count / rows) if rows else None}
        columns.append({"name": column, "dtype": dtype, "role": role, "missing": n_missing,
                        "missing_share": share, "levels": n_levels, "top": top})
    balance = []
    counts = summary.get("class_counts") or {}
    if counts:
        total = sum(int(v) for v in counts.values())
        order = [str(c) for c in (summary.get("classes") or [])] or list(counts)
        for cls in order + [c for c in counts if c not in order]:
            if cls in counts:
                balance.append({"cls": cls, "count": int(counts[cls]),
                                "share": int(counts[cls]) / total if total else None})
    stats = summary.get("target_stats") or {}
    split_rows = metrics.get("rows") or {}
    classes = schema.get("classes") or summary.get("classes") or []
    return {
        "available": bool(summary),
        "positive": str(classes[1]) if task == "binary" and len(classes) == 2 else None,
        "rows": rows,
        "n_columns": len(summary.get("columns") or {}),
        "n_features": len(features) if features else None,
        "target": target,
        "id_columns": sorted(ids),
        "dropped_by_job": dropped_by_job,
        "cleaning": (None if cleaning is None else
                     [{"column": c, "reason": r} for c, r in cleaned.items()]),
        "columns": columns,
        "balance": balance,
        "target_stats": [(k, stats[k]) for k in ("min", "mean", "std", "max") if k in stats],
        "split_rows": [(k, split_rows[k]) for k in ("train", "valid", "holdout")
                       if k in split_rows],
        "time_cutoff": summary.get("time_cutoff"),
        "task": task,
    }


def _leaderboard(rows: Any, task: str) -> dict[str, Any] | None:
    from pipeline.evaluate import HEADLINE

    if not rows:
        return None
    metric_names: list[str] = []
    for row in rows:
        for name in (row.get("holdout") or {}):
            if name not in metric_names:
                metric_names.append(name)
    order = list(HEADLINE.get(task, ()))
    metric_names.sort(key=lambda m: (order.index(m) if m in order else len(order), m))
    cv_metrics = {row.get("metric") for row in rows if row.get("metric")}
    out = []
    for rank, row in enumerate(_best_first(rows), 1):
        holdout = row.get("holdout") or {}
        out.append({
            "rank": rank, "family": row.get("family", ""), "chosen": bool(row.get("chosen")),
            "training": row.get("training", ""),
            "training_text": _TRAINING.get(str(row.get("training")), ""),
            "cv_mean": row.get("cv_mean"), "cv_std": row.get("cv_std"),
            "metric": row.get("metric"),
            "holdout": [holdout.get(m) for m in metric_names],
            "gap": row.get("gap"), "fit_seconds": row.get("fit_seconds"),
            "predict_rows_per_s": row.get("predict_rows_per_s"),
            "peak_memory_bytes": row.get("peak_memory_bytes"),
            "params": ", ".join(f"{k}={_plain(v)}" for k, v in (row.get("params") or {}).items()),
            "warnings": list(row.get("warnings") or []),
        })
    cv_metric = next(iter(cv_metrics)) if len(cv_metrics) == 1 else None
    return {"rows": out, "metrics": metric_names, "cv_metric": cv_metric,
            "order": _order_text(cv_metric),
            "trainings": [(k, v) for k, v in _TRAINING.items()
                          if any(r["training"] == k for r in out)]}


def _best_first(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The leaderboard's rows, best first by the primary metric in its direction: the CV mean
    (what chose the winner), then, for rows without one, the holdout value; ties keep the
    documents' order."""
    from pipeline.models import GREATER_IS_BETTER

    def key(row: Mapping[str, Any]) -> tuple[int, float]:
        metric = str(row.get("metric") or "")
        sign = -1.0 if GREATER_IS_BETTER.get(metric, True) else 1.0
        cv = _number(row.get("cv_mean"))
        if cv is not None:
            return 0, sign * cv
        holdout = _number((row.get("holdout") or {}).get(metric))
        return (1, sign * holdout) if holdout is not None else (2, 0.0)

    return sorted(rows, key=key)


def _order_text(metric: str | None) -> str:
    from pipeline.models import GREATER_IS_BETTER

    if not metric:
        return "best first by each row's CV score"
    direction = "higher" if GREATER_IS_BETTER.get(metric, True) else "lower"
    return f"best first: sorted by the CV {_label(metric)} ({direction} is better)"


def _model(job: Mapping[str, Any], metrics: Mapping[str, Any],
           manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    model = metrics.get("model") or {}
    if not model:
        return None
    family = model.get("family") or manifest.get("family") or ""
    curve = model.get("learning_curve") or {}
    rounds = max((len(v) for s in curve.values() for v in (s or {}).values()), default=0)
    facts: list[tuple[str, Any]] = [("family", family)]
    chosen = next((r for r in metrics.get("leaderboard") or [] if r.get("chosen")), None)
    training = (chosen or {}).get("training") or _family_training(family)
    if training:
        facts.append(("training", f"{training}: {_TRAINING.get(training, '')}".rstrip(": ")))
    if model.get("trees") is not None:
        kept = f"{int(model['trees']):,}"
        if rounds and rounds != model["trees"]:
            kept += f" of {rounds:,} rounds run (cut at the best validation round)"
        facts.append(("trees kept", kept))
    if model.get("rounds_from"):
        facts.append(("rounds chosen by", model["rounds_from"]))
    if model.get("refit"):
        facts.append(("bundled model", model["refit"]))
    stop = _get(job, "train", "early_stopping_rounds")
    if stop and curve:
        facts.append(("early stopping", f"after {stop} rounds without improvement on the "
                                        "validation rows"))
    if model.get("fit_seconds") is not None:
        facts.append(("fit time", _seconds(model["fit_seconds"])))
    if metrics.get("threshold") is not None and metrics.get("task") == "binary":
        facts.append(("decision threshold", _num(metrics["threshold"])))
    return {"facts": facts, "params": list((model.get("params") or {}).items())}


def _importance_kind(family: str, scale: Any) -> dict[str, str]:
    """What ``metrics.model.importance`` measures for this family's model
    (:func:`pipeline.bundle.importance`): XGBoost's total gain, a scikit-learn tree's
    impurity decrease, or a linear model's |coefficient| on its scaled inputs; the figure's
    title, axis and caption say which."""
    from pipeline.models import FAMILIES

    paths = FAMILIES.get(family, {}).get("estimator", {}).values()
    if any(str(p).startswith("xgboost.") for p in paths):
        return {"kind": "gain", "title": "total gain over all trees",
                "axis": "share of total gain (%)",
                "caption": "Total gain: the loss reduction from every split on the input, over "
                           "all trees. It ranks what the model uses, not what causes the "
                           "target; correlated inputs share credit."}
    if any(str(p).startswith("sklearn.tree.") for p in paths):
        return {"kind": "impurity", "title": "impurity decrease over the tree's splits",
                "axis": "share of total impurity decrease (%)",
                "caption": "Mean decrease in impurity: how much the splits on the input reduce "
                           "the tree's impurity, weighted by the rows they split. It ranks what "
                           "the tree uses, not what causes the target."}
    if any(str(p).startswith("sklearn.linear_model.") for p in paths):
        scaled = {"standard": "standardised", "minmax": "min-max scaled",
                  "robust": "robust-scaled"}.get(str(scale), "scaled")
        return {"kind": "coefficient",
                "title": f"|coefficient| on the {scaled} inputs",
                "axis": "share of the sum of |coefficients| (%)",
                "caption": f"The absolute coefficient of each input of the linear model, on "
                           f"the {scaled} inputs (summed over classes where there are several): "
                           "how strongly a change of the input moves the model's score. Signs "
                           "are not shown; encoded categories appear as their encoded "
                           "columns; correlated inputs share or swap weight."}
    return {"kind": "", "title": "importance", "axis": "share of the total (%)",
            "caption": "Feature importance as recorded in metrics.json."}


def _family_training(family: str) -> str | None:
    from pipeline.models import FAMILIES

    return FAMILIES.get(family, {}).get("training")


def _holdout_table(holdout: Mapping[str, Any], train: Mapping[str, Any],
                   task: str) -> dict[str, Any] | None:
    if not holdout:
        return None
    rows = [{"name": m, "label": _label(m), "value": holdout.get(m), "train": train.get(m)}
            for m in _HOLDOUT.get(task, ()) if m in holdout]
    return {"rows": rows, "n": holdout.get("n"), "has_train": any(r["train"] is not None
                                                                   for r in rows)}


def _train_values(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Training-rows metrics: the headline ones, plus any the overfitting check compared."""
    out = {m: row.get("train") for m, row in _get(metrics, "overfit", "metrics",
                                                   default={}).items()}
    out.update({k: v for k, v in (metrics.get("train") or {}).items() if v is not None})
    return out


def _overfit(overfit: Any) -> dict[str, Any] | None:
    if not overfit or not overfit.get("metrics"):
        return None
    rows = []
    for m, row in overfit["metrics"].items():
        train, gap = _number(row.get("train")), _number(row.get("gap"))
        relative = gap / abs(train) if gap is not None and train else None
        rows.append({"name": m, "label": _label(m), **row, "relative": relative})
    return {"bound": overfit.get("bound"), "rows": rows,
            "flagged": list(overfit.get("flagged") or []),
            "overfit": bool(overfit.get("overfit"))}


def _slice_metric(levels: Mapping[str, Any], primary: str, task: str) -> str | None:
    names = [k for row in levels.values() for k in row if k not in ("n", "positives")]
    fallback = {"binary": "roc_auc", "multiclass": "accuracy", "regression": "rmse"}.get(task)
    for name in (primary, fallback, *names):
        if name and any(_number(row.get(name)) is not None for row in levels.values()):
            return name
    return None


def _slices(holdout: Mapping[str, Any], primary: str, task: str) -> list[dict[str, Any]]:
    out = []
    n_total = holdout.get("n") or 0
    for column, levels in (holdout.get("slices") or {}).items():
        if not levels:
            continue
        names = []
        for row in levels.values():
            for k in row:
                if k != "n" and k not in names:
                    names.append(k)
        metric = _slice_metric(levels, primary, task)
        rows = [{"level": lev, "n": row.get("n"),
                 "share": (row.get("n") or 0) / n_total if n_total else None,
                 "cells": [row.get(k) for k in names]} for lev, row in levels.items()]
        out.append({"column": column, "id": "slice-" + _slug(column), "metrics": names,
                    "metric": metric, "overall": holdout.get(metric) if metric else None,
                    "rows": rows})
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(text)).strip("-") or "x"


def _notes(holdout: Mapping[str, Any]) -> dict[str, Any]:
    approx = holdout.get("approximation") or {}
    return {"notes": list(holdout.get("notes") or []),
            "approximation": [(k, v) for k, v in approx.items()]}


def _point_key(thresholds: Mapping[str, Any], value: float) -> str | None:
    for key, point in thresholds.items():
        if point and _number(point.get("threshold")) == value:
            return key
    return None


def _binary(holdout: Mapping[str, Any], job_threshold: float | None) -> dict[str, Any]:
    thresholds = holdout.get("thresholds") or {}
    chosen = _number(holdout.get("chosen_threshold"))
    source = holdout.get("chosen_threshold_source") or "threshold"
    # chosen on the validation split: the holdout's own search for the same target is shown
    # for comparison, but the operating point is the fixed threshold evaluated at it
    on_holdout = holdout.get("chosen_threshold_split") != "validation"
    chosen_key = source if on_holdout and source in thresholds and thresholds[source] else (
        _point_key(thresholds, chosen) if chosen is not None else None)
    chosen_point = thresholds.get(chosen_key) if chosen_key else None
    if chosen_point is None and holdout.get("confusion"):
        chosen_point = {"threshold": chosen, **holdout["confusion"]}
    n = holdout.get("n") or 0
    positives = holdout.get("positives")
    rows = []
    names = {"f1_optimal": "F1-optimal", "min_precision": "best recall at the job's "
             "min_precision", "min_recall": "best precision at the job's min_recall"}
    for key, point in thresholds.items():
        if not point:
            continue
        t = _number(point.get("threshold"))
        if key in names:
            what = names[key]
        elif t == job_threshold:
            what = "the job's threshold" + (" (the default)" if t == 0.5 else "")
        else:
            what = "0.5 (the default)" if t == 0.5 else "fixed"
        flagged = (point.get("tp") or 0) + (point.get("fp") or 0)
        rows.append({"key": key, "what": what, "chosen": key == chosen_key, **point,
                     "flagged_share": flagged / n if n else None})
    # the job's own threshold first, then 0.5, then the searched ones
    rank = {"f1_optimal": 2, "min_precision": 3, "min_recall": 4}
    rows.sort(key=lambda r: rank.get(r["key"], 0 if r["what"].startswith("the job") else 1))
    confusion = None
    if chosen_point is not None:
        tn, fp, fn, tp = (int(chosen_point.get(k) or 0) for k in ("tn", "fp", "fn", "tp"))
        neg, pos = tn + fp, fn + tp
        confusion = {
            "threshold": chosen_point.get("threshold"), "source": source,
            "split": "holdout" if on_holdout else "validation",
            "cells": [[{"name": "TN", "count": tn, "share": tn / neg if neg else None},
                       {"name": "FP", "count": fp, "share": fp / neg if neg else None}],
                      [{"name": "FN", "count": fn, "share": fn / pos if pos else None},
                       {"name": "TP", "count": tp, "share": tp / pos if pos else None}]],
            "total": tn + fp + fn + tp, "negatives": neg, "positives": pos,
            "predicted": [tn + fn, fp + tp],
        }
    names_cls = holdout.get("class_names") or ["0", "1"]
    curves = holdout.get("curves") or {}
    return {"thresholds": rows, "chosen": chosen, "source": source, "confusion": confusion,
            "class_names": names_cls, "positives": positives, "n": n,
            "has_roc": bool(curves.get("roc")), "has_pr": bool(curves.get("pr")),
            "has_calibration": bool(_get(curves, "calibration", "count")),
            "roc_auc": holdout.get("roc_auc"), "pr_auc": holdout.get("pr_auc"),
            "brier": holdout.get("brier"), "log_loss": holdout.get("log_loss"),
            "prevalence": holdout.get("prevalence")}


def _multiclass(holdout: Mapping[str, Any]) -> dict[str, Any]:
    names = [str(c) for c in holdout.get("class_names") or []]
    conf = holdout.get("confusion") or []
    per_class = holdout.get("per_class") or {}
    n = holdout.get("n") or 0
    rows = [{"cls": c, **(per_class.get(c) or {}),
             "share": (per_class.get(c, {}).get("support") or 0) / n if n else None}
            for c in names]
    matrix = []
    for i, row in enumerate(conf):
        total = sum(row)
        matrix.append({"cls": names[i] if i < len(names) else str(i), "total": total,
                       "cells": [{"count": int(v), "share": v / total if total else None}
                                 for v in row]})
    averages = [(avg, {m: holdout.get(f"{m}_{avg}") for m in ("precision", "recall", "f1")})
                for avg in ("macro", "weighted")]
    return {"classes": names, "per_class": rows, "matrix": matrix, "n": n,
            "total": sum(r["total"] for r in matrix), "averages": averages,
            "heatmap": 0 < len(names) <= _MAX_HEATMAP_CLASSES}


def _regression(holdout: Mapping[str, Any]) -> dict[str, Any]:
    quantiles = holdout.get("residual_quantiles") or {}
    rows = []
    if holdout.get("residual_min") is not None:
        rows.append(("min", holdout["residual_min"]))
    rows += [(k, v) for k, v in quantiles.items()]
    if holdout.get("residual_max") is not None:
        rows.append(("max", holdout["residual_max"]))
    return {"quantiles": rows}


def _sections(ctx: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(id, title) of every section on the page, in order: the table of contents."""
    out = [("summary", "Summary"), ("run", "Run"), ("job", "Job"), ("data", "Data"),
           ("leaderboard", "Leaderboard"), ("model", "Model"), ("metrics", "Holdout metrics")]
    if ctx["binary"]:
        out += [("roc", "ROC curve"), ("pr", "Precision-recall"),
                ("calibration", "Calibration"), ("confusion", "Confusion matrix"),
                ("thresholds", "Thresholds")]
    if ctx["multiclass"]:
        out += [("confusion", "Confusion matrix"), ("per-class", "Per class")]
    if ctx["regression"]:
        out += [("residuals", "Residuals")]
    out += [("importance", "Feature importance"), ("learning-curve", "Learning curve"),
            ("slices", "Slices"), ("overfit", "Overfitting check"), ("notes", "Notes")]
    return out


# --------------------------------------------------------------------------- figures


class _Figures:
    """Draws every figure of one page; each becomes inline SVG with ids unique on the page."""

    def __init__(self, ctx: Mapping[str, Any]) -> None:
        self.ctx = ctx
        self.docs = ctx["_docs"]
        self.metrics = self.docs["metrics"]
        self.holdout = self.metrics.get("holdout") or {}
        self._ids = itertools.count(1)

    def draw(self) -> dict[str, Any]:
        figs: dict[str, Any] = {}
        steps: list[tuple[str, Any]] = []
        if self.ctx["binary"]:
            steps += [("roc", self.roc), ("pr", self.pr), ("calibration", self.calibration),
                      ("thresholds", self.threshold_curves), ("scores", self.scores)]
        if self.ctx["multiclass"] and self.ctx["multiclass"]["heatmap"]:
            steps.append(("confusion", self.multiclass_confusion))
        if self.ctx["regression"]:
            steps.append(("residuals", self.residuals))
        steps += [("importance", self.importance), ("learning_curve", self.learning_curves)]
        for key, step in steps:
            figs[key] = step()
        figs["slices"] = {s["column"]: self.slice_bars(s) for s in self.ctx["slices"]}
        return figs

    # -- plumbing -----------------------------------------------------------------------------

    @staticmethod
    def _figure(width: float, height: float, **kwargs: Any) -> Any:
        from matplotlib.figure import Figure

        return Figure(figsize=(width, height), layout="constrained", **kwargs)

    def _svg(self, fig: Any, label: str) -> Any:
        """The figure as an inline ``<svg>`` element (Markup), ids prefixed to stay unique."""
        from markupsafe import Markup, escape

        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None,
                                                    "Format": None, "Type": None})
        svg = buffer.getvalue()
        svg = svg[svg.index("<svg"):]  # drop the XML prolog and DOCTYPE: not allowed inline
        svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, count=1, flags=re.S)
        # the page's CSS carries this rule once, for every figure
        svg = re.sub(r"\s*<defs>\s*<style type=\"text/css\">[^<]*</style>\s*</defs>", "", svg,
                     count=1)
        prefix = f"f{next(self._ids)}-"
        svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}{m.group(1)}"', svg)
        svg = re.sub(r'href="#([^"]+)"', lambda m: f'href="#{prefix}{m.group(1)}"', svg)
        svg = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}{m.group(1)})", svg)
        svg = svg.replace("<svg ", f'<svg class="fig" role="img" aria-label="{escape(label)}" ',
                          1)
        head_end = svg.index(">") + 1
        svg = f"{svg[:head_end]}\n <title>{escape(label)}</title>{svg[head_end:]}"
        return Markup(svg.strip())

    # -- binary ------------------------------------------------------------------------------

    def _operating_points(self) -> list[tuple[str, dict[str, Any], str, str]]:
        """(label, point, colour, marker): the chosen threshold and the F1-optimal one."""
        b = self.ctx["binary"]
        out = []
        for row in b["thresholds"]:
            if row["chosen"]:
                out.append((f"chosen threshold {_num(row['threshold'], 3)}", row, _RED, "o"))
        for row in b["thresholds"]:
            if row["key"] == "f1_optimal" and not row["chosen"]:
                out.append((f"F1-optimal {_num(row['threshold'], 3)}", row, _GREEN, "D"))
        return out

    def roc(self) -> Any:
        roc = _get(self.holdout, "curves", "roc")
        if not roc:
            return None
        fpr, tpr = _thin(roc["fpr"], roc["tpr"])
        fig = self._figure(4.6, 4.0)
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], color=_GREY, lw=0.8, ls="--", label="chance")
        auc = self.holdout.get("roc_auc")
        ax.plot(fpr, tpr, color=_BLUE, lw=1.6, label=f"model (AUC {_num(auc)})")
        P, N = self.holdout.get("positives") or 0, self.holdout.get("negatives") or 0
        for label, pt, colour, marker in self._operating_points():
            if P and N:
                ax.plot([pt["fp"] / N], [pt["tp"] / P], marker=marker, color=colour, ls="none",
                        ms=6, label=label)
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate",
               ylabel="true positive rate (recall)", title="ROC curve (holdout)")
        ax.set_aspect("equal")
        _legend(ax, loc="lower right")
        return self._svg(fig, f"ROC curve, AUC {_num(auc)}")

    def pr(self) -> Any:
        pr = _get(self.holdout, "curves", "pr")
        if not pr:
            return None
        recall, precision = _thin(pr["recall"], pr["precision"])
        fig = self._figure(4.6, 4.0)
        ax = fig.add_subplot()
        prevalence = self.holdout.get("prevalence")
        if prevalence is not None:
            ax.axhline(prevalence, color=_GREY, lw=0.8, ls="--",
                       label=f"prevalence {_num(prevalence, 3)}")
        ap = self.holdout.get("pr_auc")
        ax.plot(recall, precision, color=_BLUE, lw=1.6, label=f"model (AP {_num(ap)})")
        for label, pt, colour, marker in self._operating_points():
            if pt.get("precision") is not None and pt.get("recall") is not None:
                ax.plot([pt["recall"]], [pt["precision"]], marker=marker, color=colour,
                        ls="none", ms=6, label=label)
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision",
               title="Precision-recall curve (holdout)")
        ax.set_aspect("equal")
        _legend(ax, loc="upper right")
        return self._svg(fig, f"precision-recall curve, average precision {_num(ap)}")

    def calibration(self) -> Any:
        cal = _get(self.holdout, "curves", "calibration")
        if not cal or not cal.get("count"):
            return None
        import numpy as np

        mean_p = np.asarray(cal["mean_predicted"], dtype=float)
        frac = np.asarray(cal["fraction_positive"], dtype=float)
        count = np.asarray(cal["count"], dtype=float)
        n_bins = int(cal.get("n_bins") or 10)
        fig = self._figure(4.6, 4.6)
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1.2])
        top.plot([0, 1], [0, 1], color=_GREY, lw=0.8, ls="--", label="perfectly calibrated")
        top.plot(mean_p, frac, marker="o", ms=4, color=_BLUE, lw=1.4, label="model")
        top.set(xlim=(0, 1), ylim=(0, 1.01), ylabel="observed fraction positive",
                title=f"Reliability diagram ({n_bins} bins, holdout)")
        _legend(top, loc="upper left")
        # the bin of each point: its mean prediction lies inside it
        bins = np.clip(np.floor(mean_p * n_bins), 0, n_bins - 1)
        width = 1.0 / n_bins
        bottom.bar((bins + 0.5) * width, count, width=width * 0.9, color=_BLUE, alpha=0.6)
        bottom.set_yscale("log")
        bottom.set(xlabel="mean predicted probability", ylabel="rows (log)")
        return self._svg(fig, "calibration: reliability diagram and rows per bin")

    def threshold_curves(self) -> Any:
        pr = _get(self.holdout, "curves", "pr")
        if not pr or not pr.get("threshold"):
            return None
        import numpy as np

        t = np.asarray(pr["threshold"], dtype=float)
        p = np.asarray(pr["precision"], dtype=float)
        r = np.asarray(pr["recall"], dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
        order = np.argsort(t, kind="stable")
        t, p, r, f1 = t[order], p[order], r[order], f1[order]
        fig = self._figure(4.6, 3.8)
        ax = fig.add_subplot()
        ax.plot(t, p, color=_BLUE, lw=1.4, label="precision")
        ax.plot(t, r, color=_ORANGE, lw=1.4, label="recall")
        ax.plot(t, f1, color=_PURPLE, lw=1.4, label="F1")
        for label, pt, colour, _ in self._operating_points():
            ax.axvline(pt["threshold"], color=colour, lw=1.0, ls="--", label=label)
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="threshold (predict positive when "
               "score ≥ threshold)", ylabel="holdout value",
               title="Precision, recall and F1 by threshold")
        _legend(fig, loc="outside lower center", ncols=3)
        return self._svg(fig, "precision, recall and F1 against the threshold")

    def scores(self) -> Any:
        """Score distribution per true class, from the holdout sample."""
        sample = self.docs["sample"]
        schema = self.docs["schema"]
        target = schema.get("target") or _get(self.docs["job"], "data", "target")
        classes = schema.get("classes") or []
        if (sample is None or target not in sample.columns or "__pred_proba" not in sample
                or len(classes) != 2):
            return None
        import numpy as np

        proba = sample["__pred_proba"].to_numpy(dtype=float, na_value=np.nan)
        positive = (sample[target].astype(str) == str(classes[1])).to_numpy()
        ok = ~np.isnan(proba)
        fig = self._figure(4.6, 3.0)
        ax = fig.add_subplot()
        edges = np.linspace(0, 1, 41)
        for mask, label, colour in ((~positive, f"actual {classes[0]}", _BLUE),
                                    (positive, f"actual {classes[1]}", _ORANGE)):
            values = proba[mask & ok]
            if len(values):
                ax.hist(values, bins=edges, histtype="stepfilled", alpha=0.35, color=colour,
                        label=f"{label} ({len(values):,})")
                ax.hist(values, bins=edges, histtype="step", color=colour, lw=1.0)
        chosen = self.ctx["binary"]["chosen"]
        if chosen is not None:
            ax.axvline(chosen, color=_RED, lw=1.0, ls="--",
                       label=f"chosen threshold {_num(chosen, 3)}")
        ax.set(xlim=(0, 1), xlabel="predicted probability of the positive class",
               ylabel="rows", title=f"Scores by actual class ({int(ok.sum()):,} sample rows)")
        _legend(ax, loc="upper right")
        return self._svg(fig, "predicted probability by actual class, holdout sample")

    # -- multiclass --------------------------------------------------------------------------

    def multiclass_confusion(self) -> Any:
        mc = self.ctx["multiclass"]
        if not mc["matrix"]:
            return None
        import numpy as np

        counts = np.array([[c["count"] for c in row["cells"]] for row in mc["matrix"]],
                          dtype=float)
        totals = counts.sum(axis=1, keepdims=True)
        share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
        k = len(mc["classes"])
        size = min(7.5, max(3.6, 0.55 * k + 1.8))
        fig = self._figure(size + 0.8, size)
        ax = fig.add_subplot()
        # pcolormesh, not imshow: vector cells (imshow would embed a PNG in the SVG)
        image = ax.pcolormesh(share, cmap="Blues", vmin=0.0, vmax=1.0, edgecolors="white",
                              linewidth=0.5)
        ax.set_aspect("equal")
        ax.invert_yaxis()
        ax.grid(False)
        ticks = [i + 0.5 for i in range(k)]
        ax.set_xticks(ticks, mc["classes"], rotation=45 if k > 6 else 0,
                      ha="right" if k > 6 else "center")
        ax.set_yticks(ticks, mc["classes"])
        if k <= 15:
            for i in range(k):
                for j in range(k):
                    ax.text(j + 0.5, i + 0.5, f"{int(counts[i, j]):,}", ha="center",
                            va="center",
                            fontsize=7 if k > 8 else 8,
                            color="white" if share[i, j] > 0.55 else "black")
        ax.set(xlabel="predicted class", ylabel="actual class",
               title="Confusion matrix (holdout)")
        ax.spines[:].set_visible(False)
        bar = fig.colorbar(image, ax=ax, shrink=0.8, label="share of actual class (recall)")
        bar.solids.set_rasterized(False)  # matplotlib rasterises long colorbars to a PNG
        return self._svg(fig, "multiclass confusion matrix")

    # -- regression --------------------------------------------------------------------------

    def residuals(self) -> Any:
        sample = self.docs["sample"]
        schema = self.docs["schema"]
        target = schema.get("target") or _get(self.docs["job"], "data", "target")
        if sample is None or target not in sample.columns or "__pred_prediction" not in sample:
            return None
        import numpy as np

        y = sample[target].to_numpy(dtype=float, na_value=np.nan)
        yhat = sample["__pred_prediction"].to_numpy(dtype=float, na_value=np.nan)
        ok = np.isfinite(y) & np.isfinite(yhat)
        y, yhat = y[ok], yhat[ok]
        if not len(y):
            return None
        r = y - yhat
        fig = self._figure(9.6, 3.4)
        a, b, c = fig.subplots(1, 3, width_ratios=[1, 1, 0.8])
        lo, hi = float(min(y.min(), yhat.min())), float(max(y.max(), yhat.max()))
        a.plot([lo, hi], [lo, hi], color=_GREY, lw=0.8, ls="--", label="predicted = actual")
        a.scatter(yhat, y, s=5, alpha=0.45, color=_BLUE, linewidths=0)
        a.set(xlabel="predicted", ylabel="actual", title="Actual vs predicted")
        _legend(a, loc="upper left")
        b.axhline(0.0, color=_GREY, lw=0.8, ls="--")
        b.scatter(yhat, r, s=5, alpha=0.45, color=_BLUE, linewidths=0)
        b.set(xlabel="predicted", ylabel="residual (actual − predicted)",
              title="Residuals vs predicted")
        c.hist(r, bins=40, color=_BLUE, alpha=0.6)
        quantiles = self.holdout.get("residual_quantiles") or {}
        marks = c.get_xaxis_transform()  # x in data, y in axes units
        for key, colour in (("p5", _ORANGE), ("p50", _RED), ("p95", _ORANGE)):
            if quantiles.get(key) is not None:
                c.axvline(quantiles[key], color=colour, lw=1.0, ls="--")
                c.text(quantiles[key], 1.0, key, transform=marks, ha="center", va="bottom",
                       fontsize=7, color=colour)
        c.set(xlabel="residual", ylabel="rows")
        c.set_title("Residual distribution", pad=12)
        _compact_axis(a, "both", y)
        _compact_axis(b, "both", y)
        _compact_axis(c, "x", r)
        fig.suptitle(f"Regression diagnostics on {len(y):,} holdout sample rows",
                     fontsize=10, fontweight="bold")
        return self._svg(fig, "actual vs predicted, residuals vs predicted, residual histogram")

    # -- every task --------------------------------------------------------------------------

    def importance(self) -> Any:
        gains = _get(self.metrics, "model", "importance", default={})
        values = [(str(k), float(v)) for k, v in gains.items() if _number(v) is not None]
        if not values:
            return None
        total = sum(v for _, v in values)
        top = sorted(values, key=lambda kv: -kv[1])[:_TOP_FEATURES]
        names = [k for k, _ in top][::-1]
        shares = [100.0 * v / total if total else 0.0 for _, v in top][::-1]
        fig = self._figure(5.6, 0.8 + 0.24 * len(top))
        ax = fig.add_subplot()
        bars = ax.barh(range(len(top)), shares, color=_BLUE, alpha=0.8, height=0.7)
        ax.set_yticks(list(range(len(top))), names)
        ax.bar_label(bars, labels=[f"{s:.1f} %" for s in shares], padding=2, fontsize=7)
        ax.grid(axis="y", visible=False)
        ax.set_xlim(0, max(shares) * 1.15 or 1.0)
        more = f", top {len(top)} of {len(values)}" if len(values) > len(top) else ""
        kind = self.ctx["importance"]
        ax.set(xlabel=kind["axis"], title=f"Feature importance\n({kind['title']}{more})")
        return self._svg(fig, f"feature importance, {kind['axis']}")

    def learning_curves(self) -> list[dict[str, Any]]:
        import numpy as np

        curve = _get(self.metrics, "model", "learning_curve", default={})
        best = _get(self.metrics, "model", "trees")
        metrics: list[str] = []
        for series in curve.values():
            for name in series or {}:
                if name not in metrics:
                    metrics.append(name)
        out = []
        colours = {"train": _BLUE, "valid": _ORANGE}
        for name in metrics:
            fig = self._figure(4.6, 3.2)
            ax = fig.add_subplot()
            drawn = False
            for split, series in curve.items():
                values = np.asarray((series or {}).get(name) or [], dtype=float)
                if not len(values):
                    continue
                rounds = np.arange(1, len(values) + 1)
                keep = _even(len(values), 300, must=[int(best) - 1] if best else [])
                ax.plot(rounds[keep], values[keep], lw=1.3, color=colours.get(split, _GREY),
                        label={"valid": "validation"}.get(split, split))
                drawn = True
            if not drawn:
                continue
            if best:
                ax.axvline(int(best), color=_RED, lw=1.0, ls="--",
                           label=f"best round {int(best):,}")
            ax.set(xlabel="boosting round", ylabel=_label(name),
                   title=f"Learning curve: {_label(name)}")
            _compact_axis(ax, "y", ax.get_ylim())
            _legend(ax, loc="best")
            # XGBoost's early stopping watches the last eval metric (pipeline.train)
            note = (f"; early stopping watched the validation {_label(name)}"
                    if name == metrics[-1] and best else "")
            out.append({"svg": self._svg(fig, f"learning curve of {_label(name)}"),
                        "caption": f"{_label(name)} on the training and validation rows per "
                                   f"boosting round{note}."})
        return out

    def slice_bars(self, block: Mapping[str, Any]) -> Any:
        """The slice metric per level as dots against the all-rows value, on an axis fitted
        to the values (a 0-1 axis would hide differences of a few points): dots, not bars,
        since a bar's length would mean nothing on an axis that does not start at 0."""
        metric = block["metric"]
        if not metric:
            return None
        index = block["metrics"].index(metric)
        rows = [(str(r["level"]), _number(r["cells"][index]), r["n"]) for r in block["rows"]]
        rows = [r for r in rows if r[1] is not None]
        if not rows:
            return None
        fig = self._figure(5.6, 1.3 + 0.28 * len(rows))
        ax = fig.add_subplot()
        labels = [f"{lev} (n={n:,})" if isinstance(n, int) else lev for lev, _, n in rows]
        values = [v for _, v, _ in rows]
        y = list(range(len(rows)))[::-1]
        overall = _number(block["overall"])
        lo, hi = _value_range([*values, *([overall] if overall is not None else [])])
        if overall is not None:
            ax.axvline(overall, color=_RED, lw=1.0, ls="--",
                       label=f"all holdout rows: {_compact(overall)}")
            ax.hlines(y, [overall] * len(y), values, color=_BLUE, lw=1.2, alpha=0.5)
        ax.plot(values, y, "o", color=_BLUE, ms=6)
        for yi, v in zip(y, values):
            ax.annotate(_compact(v), (v, yi), xytext=(0, 6), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7)
        ax.set_yticks(y, labels)
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.set_xlim(lo, hi)
        ax.grid(axis="y", visible=False)
        _compact_axis(ax, "x", values)
        ax.set(xlabel=f"{_label(metric)} (holdout; the axis spans the values, not 0 to 1)"
               if _bounded(metric) else f"{_label(metric)} (holdout)",
               title=f"{_label(metric)} by {block['column']}")
        _legend(fig, loc="outside lower center")
        return self._svg(fig, f"{_label(metric)} per level of {block['column']}")


def _legend(owner: Any, **kwargs: Any) -> None:
    """A legend on an axes or figure, only when something is labelled (else matplotlib warns)."""
    axes = owner.axes if hasattr(owner, "get_axes") else [owner]
    if any(ax.get_legend_handles_labels()[0] for ax in axes):
        owner.legend(**kwargs)


def _value_range(values: Sequence[float]) -> tuple[float, float]:
    """An axis range around ``values`` with room for labels: 15 % of their spread on each
    side (at least a small step, so equal values still get an axis)."""
    lo, hi = min(values), max(values)
    pad = max(0.15 * (hi - lo), 0.01 * max(abs(lo), abs(hi)), 1e-3)
    return lo - pad, hi + pad


def _bounded(metric: str) -> bool:
    """Metrics whose natural range is 0 to 1 (the reader would expect that axis)."""
    from pipeline.models import GREATER_IS_BETTER

    return bool(GREATER_IS_BETTER.get(metric)) and metric != "r2" or metric == "brier"


def _compact(value: Any) -> str:
    """A number for a figure label: 44.6k rather than 44,604.6."""
    x = _number(value)
    if x is not None and abs(x) >= 1e4:
        return f"{x / 1e6:,.2f}M" if abs(x) >= 1e6 else f"{x / 1e3:,.1f}k"
    return _num(value)


def _compact_axis(ax: Any, which: str, data: Any) -> None:
    """Tick labels such as 250k instead of matplotlib's 2.5 with a 1e5 offset, for big data."""
    import numpy as np
    from matplotlib.ticker import FuncFormatter

    values = np.asarray(data, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values) or np.abs(values).max() < 1e4:
        return

    def tick(x: float, _pos: int) -> str:
        if x == 0:
            return "0"
        if abs(x) >= 1e6:
            return f"{x / 1e6:g}M"
        return f"{x / 1e3:g}k"

    for axis in ([ax.xaxis, ax.yaxis] if which == "both" else
                 [ax.xaxis] if which == "x" else [ax.yaxis]):
        axis.set_major_formatter(FuncFormatter(tick))


def _thin(x: Sequence[float], y: Sequence[float]) -> tuple[list[float], list[float]]:
    """At most ``_MAX_CURVE_POINTS`` points (evaluate.py already downsamples; older docs)."""
    keep = _even(len(x), _MAX_CURVE_POINTS)
    return [x[i] for i in keep], [y[i] for i in keep]


def _even(n: int, k: int, must: Iterable[int] = ()) -> list[int]:
    """At most about ``k`` indices of ``range(n)``, evenly spaced, ends and ``must`` kept."""
    if n <= k:
        return list(range(n))
    step = (n - 1) / (k - 1)
    keep = {round(i * step) for i in range(k)} | {i for i in must if 0 <= i < n}
    return sorted(keep)
