"""Drift and quality of new data against a bundle's reference, and the champion/challenger gate.

The reference (``profile.json`` in every bundle, :func:`reference_profile`)
---------------------------------------------------------------------------
For each input column of the model, a histogram of the *training rows* (the train side of
the run's split): numbers over ``monitor.bins`` equal-frequency bins (interior edges: exact
quantiles of a uniform sample of at most ``monitor.sample_rows`` training rows, by
:func:`kernels.quantile_edges`; counts over every training row, by :func:`kernels.bin_counts`),
categories as the counts of their ``monitor.top_levels`` most frequent levels plus the rest
pooled (``__other__``), the set of levels seen (to count *unseen* ones later) and the number of
levels seen once (Good-Turing: the share of new rows expected to hold a level the training
rows never had). Missing values are counted apart. For the model's output (``proba``,
``proba_<class>``, ``prediction``, ``label``) the same sketch is taken on the *holdout* rows:
scores on rows the model never saw are what new data's scores look like, while in-sample
scores of a boosted model are sharper and would be flagged as drift on day one. The holdout
pass also keeps the quality baseline: the holdout metrics and the per-row loss moments their
confidence intervals need.

Sketches are computed per partition and added (every count is exact and mergeable); nothing
but the small sketches reaches the driver. One ``dask.compute`` takes the training and
holdout passes together.

Drift (:func:`drift_report`)
----------------------------
The same sketch is taken of new data (per partition while ``mlpipe score`` scores it, or by
``mlpipe monitor``) and compared with the reference:

* numbers: PSI (:func:`kernels.psi`) and the KS distance on the binned CDFs
  (:func:`kernels.ks_from_counts`);
* categories: the chi-square test of homogeneity (:func:`kernels.chi_square`) with Cramér's V
  as its effect size, and PSI;
* every column: the change of the missing share (two-proportion z-test), and for categories
  the share of unseen levels against the share the reference expects (one-sided z-test).

A check is flagged when its effect size reaches its threshold (the job's ``monitor:`` block)
AND its p-value is below ``monitor.alpha`` shared among every check of the run (Bonferroni:
over the columns, the checks and the time chunks), so that a large difference on a handful of
rows (noise), a negligible one on 100M rows (significant, but harmless), and one chance
finding among the hundreds of checks of 24 monthly chunks are all left alone.
p-values: PSI and chi-square from the chi-square test of homogeneity of the two histograms
(on the same bins; robust to empty bins, unlike PSI's own asymptotic law
``PSI / (1/n_ref + 1/n_new) ~ chi2(k - 1)``, which an empty bin of a small chunk breaks); KS
from the Kolmogorov distribution of ``D sqrt(n_ref n_new / (n_ref + n_new))`` (the binned D is
a lower bound of the raw one, so the p-value is conservative); shares by z-tests. PSI floors
every share at half a row of the smaller side (``kernels.psi``'s ``eps``), the resolution the
counts have.

Quality (:func:`quality`)
-------------------------
With labels, the holdout metrics are recomputed on the new data by
:func:`pipeline.evaluate.evaluation_graph` (mergeable partials) and compared with the bundle's
baseline. The confidence interval is *analytic* (normal approximation), not a bootstrap over
partitions: partitions are few and of any size (a month may be one partition, and three
partitions give no interval at all), while the analytic bounds need only sums that merge
exactly in the same pass. Per metric: ROC AUC by Hanley & McNeil (1982); accuracy, precision
and recall as binomial proportions; log loss, Brier score, MSE and MAE as means of per-row
losses (their variance from merged sums of squares); RMSE by the delta method from MSE.
A metric decays when its worsening against the baseline, less ``z(1 - alpha)`` standard errors
of the difference (the baseline's own error counted too), still exceeds ``monitor.max_decay``
(absolute for metrics in [0, 1]; relative to the baseline for log loss and the metrics in the
target's unit). Metrics without an analytic interval (F1, PR AUC, R², one-vs-rest AUC) are
reported, never flagged.

The gate (:func:`challenge`, :func:`settle`)
-------------------------------------------
Every run of a model that already has a current version is a challenger: the champion (the
current version) is evaluated on the challenger's holdout rows, and the ``refine:`` block
decides: the primary metric must improve by ``min_improvement`` (0: at least as good), each
``guards`` metric may not get worse by more than its tolerance, and the challenger's own
holdout may not have drifted from its training rows. A passing challenger is promoted by
compare-and-swap against the very champion it was compared with (a concurrent promotion makes
it fail, never overwrite); a failing one stays a registered, unpromoted version. The decision,
both sets of metrics and the reasons are recorded in the registry
(``models/<name>/decisions/<run_id>.json``) and in the challenger's ``metrics.json`` and report.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    from distributed import Client

    from pipeline.config import JobSpec
    from pipeline.predictor import Predictor
    from pipeline.split import Parts

logger = logging.getLogger("pipeline")

__all__ = [
    "DRIFT", "PROFILE", "Binning", "Levels", "MonitorResult", "Verdict", "binnings",
    "challenge", "drift_report", "merge", "monitor_data", "quality", "reference_columns",
    "reference_profile", "settle", "sketch_frame",
]

#: the reference profile's name inside a bundle.
PROFILE = "profile.json"
#: the drift report's name inside a score output (next to ``_manifest.json``).
DRIFT = "_drift.json"
PROFILE_FORMAT = "mlpipe-profile/1"
DRIFT_FORMAT = "mlpipe-drift/1"
MONITOR_FORMAT = "mlpipe-monitor/1"
#: the pooled bin of a category column's histogram (levels outside its top levels).
OTHER = "__other__"
#: a category column with more levels than this keeps no level set: unseen levels are then
#: not counted (the profile says so).
MAX_KNOWN_LEVELS = 100_000
#: rows of the training sample whose predictions give the output bin edges.
OUTPUT_EDGE_ROWS = 20_000
#: metrics whose decay is judged relative to the baseline (unbounded, or in the target's unit)
RELATIVE = frozenset({"mse", "rmse", "mae", "max_error", "mape", "log_loss"})
_EPS = float(np.finfo(np.float64).eps)  # the probability clip of evaluate's log loss


# =========================================================================== sketches


@dataclass(frozen=True)
class Levels:
    """How a category column is counted: its top levels apart, the rest pooled, and the
    levels known to the reference (None: unseen levels are not counted)."""

    top: tuple[str, ...]
    known: Any = None  # a pandas Index of the reference's levels, or None

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Levels:
        import pandas as pd

        known = doc.get("known")
        return cls(tuple(doc["levels"]), None if known is None else pd.Index(known, dtype=object))


@dataclass(frozen=True)
class Binning:
    """What :func:`sketch_frame` counts: numeric columns over their bin edges, category
    columns over their :class:`Levels` (``None``: every level, for the reference pass)."""

    numeric: dict[str, np.ndarray] = field(default_factory=dict)
    categorical: dict[str, Levels | None] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    def __bool__(self) -> bool:
        return bool(self.numeric or self.categorical)


def binnings(profile: Mapping[str, Any]) -> tuple[Binning, Binning]:
    """(inputs, outputs) binnings of a reference profile: what new data is sketched with.

    Examples
    --------
    >>> inputs, outputs = binnings(bundle.json("profile.json"))       # doctest: +SKIP
    >>> sketch_frame(frame, inputs)["income"]["counts"][:3]           # doctest: +SKIP
    [5021, 4987, 5002]
    """
    def one(columns: Mapping[str, Any]) -> Binning:
        numeric = {c: np.asarray(d["edges"], dtype=np.float64)
                   for c, d in columns.items() if d["kind"] == "numeric"}
        categorical = {c: Levels.from_doc(d) for c, d in columns.items()
                       if d["kind"] == "categorical"}
        return Binning(numeric, categorical)

    return one(profile["inputs"]), one(profile["outputs"]["columns"])


def as_float(values: pd.Series) -> np.ndarray:
    """A column as float64 with NaN for missing: numbers as they are, times as ns since the
    epoch, anything else parsed as a number (unreadable text is missing)."""
    import pandas as pd

    dtype = values.dtype
    if pd.api.types.is_datetime64_any_dtype(dtype):
        stamps = values.to_numpy(dtype="datetime64[ns]")
        out = stamps.astype(np.int64).astype(np.float64)
        out[np.isnat(stamps)] = np.nan
        return out
    if dtype == np.float64:  # the common case: no copy
        return values.to_numpy()
    if pd.api.types.is_bool_dtype(dtype) or not pd.api.types.is_numeric_dtype(dtype):
        values = pd.to_numeric(values, errors="coerce")
    return values.to_numpy(dtype=np.float64, na_value=np.nan)


def is_numeric(dtype: Any) -> bool:
    """Numbers and times are binned; text, categories and booleans are counted by level."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(dtype):
        return False
    return bool(pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_datetime64_any_dtype(dtype))


def sketch_frame(df: pd.DataFrame, binning: Binning) -> dict[str, dict[str, Any]]:
    """The sketch of one pandas frame (a partition): small, JSON-able and mergeable
    (:func:`merge`).

    Numbers: ``{"counts": [per bin], "missing", "rows"}``; categories counted over
    :class:`Levels`: ``{"counts": [per top level..., other], "missing", "unseen", "rows"}``;
    categories with ``None``: ``{"levels": {level: count}, "missing", "rows"}``.

    Examples
    --------
    >>> import pandas as pd
    >>> frame = pd.DataFrame({"x": [0.5, 1.5, None], "c": ["a", "b", "a"]})
    >>> sketch = sketch_frame(frame, Binning({"x": np.array([1.0])},
    ...                                      {"c": Levels(("a",), pd.Index(["a"]))}))
    >>> sketch["x"], sketch["c"]
    ({'counts': [1, 1], 'missing': 1, 'rows': 3}, {'counts': [2, 1], 'missing': 0, 'unseen': 1, 'rows': 3})
    """
    from kernels import bin_counts

    rows = int(len(df))
    out: dict[str, dict[str, Any]] = {}
    for column, edges in binning.numeric.items():
        counts, missing = bin_counts(as_float(df[column]), edges)
        out[column] = {"counts": counts.tolist(), "missing": int(missing), "rows": rows}
    for column, levels in binning.categorical.items():
        values = df[column]
        counts = _level_counts(values)
        missing = rows - int(counts.sum())
        if levels is None:
            out[column] = {"levels": {k: int(v) for k, v in counts.items()},
                           "missing": missing, "rows": rows}
            continue
        top = counts.reindex(list(levels.top), fill_value=0).to_numpy(dtype=np.int64)
        other = rows - missing - int(top.sum())
        doc: dict[str, Any] = {"counts": [*top.tolist(), other], "missing": missing,
                               "unseen": None, "rows": rows}
        if levels.known is not None:
            doc["unseen"] = int(counts[~counts.index.isin(levels.known)].sum())
        out[column] = doc
    return out


def _level_counts(values: pd.Series) -> pd.Series:
    """Rows per level (as text), missing left out."""
    import pandas as pd

    counts = values.value_counts(dropna=True, sort=False)
    counts = counts[counts.to_numpy() > 0]  # a categorical dtype lists its unused levels
    if not len(counts):
        return pd.Series([], dtype=np.int64, index=pd.Index([], dtype=object))
    if pd.api.types.is_string_dtype(counts.index.dtype) and \
            not pd.api.types.is_object_dtype(counts.index.dtype):
        return pd.Series(counts.to_numpy(dtype=np.int64),
                         index=pd.Index(counts.index.to_numpy(dtype=object), dtype=object))
    index = counts.index.map(str)
    out = pd.Series(counts.to_numpy(dtype=np.int64), index=pd.Index(index, dtype=object))
    if not out.index.is_unique:  # 1 and "1" in one object column: the same text level
        out = out.groupby(level=0).sum()
    return out


def merge(*sketches: Mapping[str, Any]) -> dict[str, Any]:
    """The sum of sketches (per column: counts, level counts, missing, unseen, rows; nested
    dicts merged key by key). Associative and commutative, so partitions merge in any tree.

    Examples
    --------
    >>> merge({"x": {"counts": [1, 2], "missing": 0, "rows": 3}},
    ...       {"x": {"counts": [0, 1], "missing": 2, "rows": 3}})
    {'x': {'counts': [1, 3], 'missing': 2, 'rows': 6}}
    """
    out: dict[str, Any] = {}
    for sketch in sketches:
        for key, value in sketch.items():
            out[key] = value if key not in out else _add(out[key], value)
    return out


def _add(a: Any, b: Any) -> Any:
    if a is None or b is None:  # not counted in one of them (no level set): unknown
        return None
    if isinstance(a, dict):
        out = dict(a)
        for key, value in b.items():
            out[key] = value if key not in out else _add(out[key], value)
        return out
    if isinstance(a, list):
        if len(a) != len(b):
            raise ValueError(f"cannot merge sketches with {len(a)} and {len(b)} bins: they "
                             "were made with different reference profiles")
        return [x + y for x, y in zip(a, b)]
    return a + b


def _tree(values: list[Any], combine: Callable[..., Any], split_every: int = 8) -> Any:
    """Delayed pairwise reduction (``split_every`` at a time) down to one value."""
    import dask

    step = dask.delayed(combine, pure=True)
    if not values:
        return dask.delayed(dict)()
    while len(values) > 1:
        values = [step(*values[i:i + split_every]) for i in range(0, len(values), split_every)]
    return values[0]


# =========================================================================== the reference


def _reference_part(df: pd.DataFrame, binning: Binning) -> dict[str, Any]:
    return sketch_frame(df, binning)


def _holdout_part(df: pd.DataFrame, predictor: Predictor, inputs: Binning,
                  outputs: Binning) -> dict[str, Any]:
    """Sketch of one holdout partition: its inputs, the model's outputs and the per-row loss
    moments of the quality baseline (the rows transformed and predicted once)."""
    evaluation = predictor.evaluation_frame(df)
    return {"inputs": sketch_frame(df, inputs),
            "outputs": sketch_frame(_predictions(evaluation, predictor), outputs),
            "moments": moments(evaluation, predictor.task)}


def reference_profile(job: JobSpec, parts: Parts, predictor: Predictor, holdout: Mapping[str, Any],
                      client: Client, sample: pd.DataFrame | None = None) -> dict[str, Any]:
    """``profile.json`` of a run: the reference of every input column (training rows) and of
    the model's output (holdout rows), the quality baseline, and the drift of the holdout
    from the training rows (the gate reads it).

    ``holdout`` is the chosen model's holdout metrics; ``sample`` an in-memory uniform sample
    of training rows if the run has one (the search's), else one is drawn.

    Examples
    --------
    >>> profile = reference_profile(job, parts, fit.predictor, fit.holdout, client)
    ...                                                               # doctest: +SKIP
    >>> profile["inputs"]["income"]["edges"][:2]                       # doctest: +SKIP
    [28113.4, 34010.0]
    """
    import dask

    from kernels import quantile_edges
    from pipeline.split import sample_rows

    options = job.monitor
    columns = list(predictor.feature_columns)
    dtypes = parts.train._meta.dtypes
    if sample is None or not len(sample):
        sample = sample_rows(parts.train, options.sample_rows, job.data.split.seed)
    sample = sample.head(options.sample_rows)
    numeric = [c for c in columns if is_numeric(dtypes[c])]
    inputs = Binning({c: quantile_edges(as_float(sample[c]), options.bins) for c in numeric},
                     {c: None for c in columns if c not in numeric})
    outputs = _output_binning(predictor, sample.head(OUTPUT_EDGE_ROWS), options.bins)
    [remote] = client.scatter([predictor], broadcast=True, hash=False)
    train_parts = [dask.delayed(_reference_part, pure=True)(p, inputs)
                   for p in parts.train[columns].to_delayed()]
    holdout_parts = [dask.delayed(_holdout_part, pure=True)(p, remote, inputs, outputs)
                     for p in parts.holdout.to_delayed()]
    train, held = dask.compute(_tree(train_parts, merge), _tree(holdout_parts, merge))
    reference = reference_columns(train, inputs, options.top_levels)
    profile = {
        "format": PROFILE_FORMAT,
        "reference": {"rows": int(next(iter(train.values()))["rows"]) if train else 0,
                      "rows_from": "the training rows (the train side of the split)",
                      "edges_from": f"a uniform sample of {len(sample):,} training rows"},
        "thresholds": options.model_dump(mode="json"),
        "inputs": reference,
        "outputs": {"rows": int(held.get("moments", {}).get("n", 0)),
                    "rows_from": "the holdout rows (out of sample, like new data)",
                    "columns": {c: _output_column(c, held["outputs"][c], outputs)
                                for c in outputs.columns}},
        "baseline": baseline(holdout, held.get("moments", {}), job.data.task,
                             job.primary_metric),
    }
    current = {"inputs": {c: _as_top(held["inputs"][c], reference[c]) for c in columns},
               "outputs": {}}
    report = drift_report(profile, current, inputs_only=True)
    profile["holdout_drift"] = {"drift": report["drift"], "drifted": report["drifted"],
                                "columns": {c: _brief(v) for c, v in report["columns"].items()}}
    return profile


def _output_binning(predictor: Predictor, rows: pd.DataFrame, bins: int) -> Binning:
    from kernels import quantile_edges

    pred = predictor.predict_frame(rows)
    numeric = {c: quantile_edges(as_float(pred[c]), bins) for c in pred.columns
               if c != "label"}
    categorical = {}
    if "label" in pred.columns:
        classes = [str(c) for c in predictor.classes or []]
        import pandas as pd

        categorical["label"] = Levels(tuple(classes), pd.Index(classes, dtype=object))
    return Binning(numeric, categorical)


def reference_columns(sketch: Mapping[str, Any], binning: Binning,
                      top_levels: int) -> dict[str, dict[str, Any]]:
    """The reference of each column (``profile.json``'s ``inputs``) from the merged sketch of
    the reference rows, taken with ``binning`` (category columns counted level by level).

    Examples
    --------
    >>> import pandas as pd
    >>> bins = Binning({"x": np.array([1.0])}, {"c": None})
    >>> ref = reference_columns(sketch_frame(pd.DataFrame({"x": [0, 2], "c": ["a", "b"]}),
    ...                                      bins), bins, top_levels=1)
    >>> ref["c"]["levels"], ref["c"]["counts"], ref["c"]["singletons"]
    (['a'], [1, 1], 2)
    """
    return {c: _reference_column(c, sketch[c], binning, top_levels) for c in binning.columns}


def _reference_column(column: str, sketch: Mapping[str, Any], binning: Binning,
                      top_levels: int) -> dict[str, Any]:
    if column in binning.numeric:
        return {"kind": "numeric", "edges": binning.numeric[column].tolist(), **sketch}
    levels = sketch["levels"]
    ordered = sorted(levels.items(), key=lambda kv: (-kv[1], kv[0]))
    top = [k for k, _ in ordered[:top_levels]]
    counts = [levels[k] for k in top]
    other = sum(v for _, v in ordered[top_levels:])
    return {"kind": "categorical", "levels": top, "counts": [*counts, other],
            "missing": sketch["missing"], "rows": sketch["rows"], "n_levels": len(levels),
            "singletons": sum(1 for v in levels.values() if v == 1),
            "known": sorted(levels) if len(levels) <= MAX_KNOWN_LEVELS else None}


def _output_column(column: str, sketch: Mapping[str, Any], binning: Binning) -> dict[str, Any]:
    if column in binning.numeric:
        return {"kind": "numeric", "edges": binning.numeric[column].tolist(), **sketch}
    levels = binning.categorical[column]
    return {"kind": "categorical", "levels": list(levels.top), "counts": sketch["counts"],
            "missing": sketch["missing"], "rows": sketch["rows"], "n_levels": len(levels.top),
            "singletons": 0, "known": list(levels.top)}


def _as_top(sketch: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, Any]:
    """A full-level sketch counted the way the reference counts (top levels, other, unseen)."""
    if "levels" not in sketch:
        return dict(sketch)
    levels = sketch["levels"]
    top = [int(levels.get(k, 0)) for k in reference["levels"]]
    present = sketch["rows"] - sketch["missing"]
    known = reference.get("known")
    if known is not None:
        known = set(known)  # once: a text column can have 100,000s of levels
    unseen = None if known is None else sum(v for k, v in levels.items() if k not in known)
    return {"counts": [*top, present - sum(top)], "missing": sketch["missing"],
            "unseen": unseen, "rows": sketch["rows"]}


# =========================================================================== drift


def drift_report(profile: Mapping[str, Any], current: Mapping[str, Any], *,
                 inputs_only: bool = False, family: int = 1) -> dict[str, Any]:
    """Every drift check of ``current`` (``{"inputs": sketch, "outputs": sketch}``, counted
    with :func:`binnings` of ``profile``) against the reference, with the profile's thresholds.

    Returns ``{"drift", "drifted", "outputs_drifted", "rows", "columns": {column: {"kind",
    "checks": {name: {"statistic", "p_value", "effect", "threshold", "flag"}}, "drifted",
    "reference", "current"}}, "outputs": {...}, "thresholds"}``.

    Examples
    --------
    >>> report = drift_report(profile, {"inputs": merged, "outputs": merged_out})
    ...                                                               # doctest: +SKIP
    >>> report["drifted"]                                             # doctest: +SKIP
    ['income', 'credit_score']
    """
    thresholds = dict(profile["thresholds"])
    columns = {c: check_column(ref, current["inputs"][c], thresholds)
               for c, ref in profile["inputs"].items() if c in current.get("inputs", {})}
    outputs = {} if inputs_only else {
        c: check_column(ref, current["outputs"][c], thresholds)
        for c, ref in profile["outputs"]["columns"].items() if c in current.get("outputs", {})}
    # Bonferroni over every check of this report (and of the ``family`` of reports it is one
    # of, the chunks of one monitoring run): noise somewhere among hundreds of checks is
    # still noise
    tests = sum(len(v["checks"]) for v in [*columns.values(), *outputs.values()])
    alpha = float(thresholds["alpha"]) / max(1, tests * family)
    for column in [*columns.values(), *outputs.values()]:
        _flag(column, alpha)
    drifted = [c for c, v in columns.items() if v["drifted"]]
    out_drifted = [c for c, v in outputs.items() if v["drifted"]]
    rows = max((v["rows"] for v in current.get("inputs", {}).values()), default=0)
    return {"format": DRIFT_FORMAT, "drift": bool(drifted or out_drifted),
            "drifted": drifted, "outputs_drifted": out_drifted, "rows": int(rows),
            "reference_rows": profile["reference"]["rows"], "thresholds": thresholds,
            "alpha_per_check": alpha, "columns": columns, "outputs": outputs}


def check_column(reference: Mapping[str, Any], current: Mapping[str, Any],
                 thresholds: Mapping[str, Any], alpha: float | None = None) -> dict[str, Any]:
    """The drift checks of one column (see the module docstring); each check is flagged when
    its effect reaches its threshold and its p-value is below ``alpha`` (default: the
    thresholds' own, i.e. this column checked alone; :func:`drift_report` divides it among
    every check it makes)."""
    from kernels import chi_square, ks_from_counts, psi

    alpha = float(thresholds["alpha"] if alpha is None else alpha)
    e = np.asarray(reference["counts"], dtype=np.float64)
    a = np.asarray(current["counts"], dtype=np.float64)
    if e.size != a.size:
        raise ValueError(f"a sketch with {a.size} bins cannot be compared with a reference of "
                         f"{e.size}: it was made with another profile")
    n_e, n_a = float(e.sum()), float(a.sum())
    checks: dict[str, Any] = {}
    numeric = reference["kind"] == "numeric"
    if n_e > 0 and n_a > 0:
        keep = (e + a) > 0
        # a share below half a row of the smaller side cannot be told from zero: the floor
        # keeps an empty bin of a small chunk from blowing PSI up
        value = psi(e[keep], a[keep], eps=max(1e-6, 0.5 / min(n_e, n_a)))
        stat, dof = chi_square(e, a)
        homogeneity = _chi2_sf(stat, dof)
        checks["psi"] = _check(value, homogeneity, value, thresholds["psi_threshold"], alpha)
        if numeric:
            d = ks_from_counts(e, a)
            checks["ks"] = _check(d, _ks_sf(d * math.sqrt(n_e * n_a / (n_e + n_a))), d,
                                  thresholds["ks_threshold"], alpha)
        else:
            v = math.sqrt(stat / (n_e + n_a)) if n_e + n_a else 0.0
            checks["chi2"] = {**_check(stat, homogeneity, v,
                                       thresholds["cramers_v_threshold"], alpha), "dof": dof,
                              "effect_name": "cramers_v"}
    ref_rows, cur_rows = reference["rows"], current["rows"]
    if ref_rows and cur_rows:
        p_ref, p_cur = reference["missing"] / ref_rows, current["missing"] / cur_rows
        checks["missing_share"] = {
            **_check(p_cur - p_ref, _two_proportions(p_ref, ref_rows, p_cur, cur_rows),
                     abs(p_cur - p_ref), thresholds["share_threshold"], alpha),
            "reference": p_ref, "current": p_cur}
    if not numeric and current.get("unseen") is not None and reference.get("known") is not None \
            and n_a > 0:
        expected = reference.get("singletons", 0) / max(n_e, 1.0)  # Good-Turing
        share = current["unseen"] / n_a
        se = math.sqrt(max(share * (1 - share), expected * (1 - expected), 1e-12) / n_a)
        p = 0.5 * math.erfc((share - expected) / se / math.sqrt(2))
        checks["unseen_share"] = {**_check(share - expected, p, share - expected,
                                           thresholds["share_threshold"], alpha),
                                  "expected": expected, "current": share}
    return {"kind": reference["kind"], "rows": int(cur_rows),
            "checks": checks, "drifted": any(c["flag"] for c in checks.values()),
            "reference": {"counts": reference["counts"], "missing": reference["missing"],
                          "rows": ref_rows,
                          **({"edges": reference["edges"]} if numeric
                             else {"levels": reference["levels"]})},
            "current": {"counts": list(current["counts"]), "missing": current["missing"],
                        "rows": cur_rows, "unseen": current.get("unseen")}}


def _flag(column: dict[str, Any], alpha: float) -> dict[str, Any]:
    """``column`` with every check flagged again at ``alpha``."""
    for check in column["checks"].values():
        check["flag"] = bool(check["effect"] >= check["threshold"] and check["p_value"] < alpha)
    column["drifted"] = any(c["flag"] for c in column["checks"].values())
    return column


def _check(statistic: float, p_value: float, effect: float, threshold: float,
           alpha: float) -> dict[str, Any]:
    statistic, effect = float(statistic), float(effect)
    return {"statistic": statistic, "p_value": float(p_value), "effect": effect,
            "threshold": float(threshold),
            "flag": bool(effect >= threshold and p_value < alpha)}


# scipy.special, not scipy.stats: the same functions (chi2.sf, kstwobign.sf and norm.ppf call
# them), without 0.4 s more of imports on the driver of every scoring job that checks drift


def _chi2_sf(x: float, dof: int) -> float:
    from scipy.special import chdtrc

    return float(chdtrc(max(dof, 1), x))


def _ks_sf(x: float) -> float:
    from scipy.special import kolmogorov

    return float(kolmogorov(x))


def _two_proportions(p1: float, n1: int, p2: float, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test."""
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0 if p1 == p2 else 0.0
    return math.erfc(abs(p2 - p1) / se / math.sqrt(2))


def _brief(column: Mapping[str, Any]) -> dict[str, Any]:
    """A column's checks without its histograms."""
    return {"drifted": column["drifted"],
            "checks": {k: {"statistic": v["statistic"], "p_value": v["p_value"],
                           "flag": v["flag"]} for k, v in column["checks"].items()}}


# =========================================================================== quality


def moments(frame: pd.DataFrame, task: str) -> dict[str, Any]:
    """Mergeable per-row loss sums of an evaluation frame (``y_true`` and the scores, as
    :meth:`Predictor.evaluation_frame` makes it): ``{"n", name: [sum, sum of squares]}``.

    binary: log loss and Brier per row; multiclass: log loss; regression: squared error
    (``[sum e^2, sum e^4]``) and absolute error (``[sum |e|, sum e^2]``).
    """
    y = frame["y_true"].to_numpy(dtype=np.float64)
    ok = ~np.isnan(y)
    if task == "binary":
        p = frame["proba"].to_numpy(dtype=np.float64)
        ok &= ~np.isnan(p)
        y, p = y[ok], np.clip(p[ok], _EPS, 1 - _EPS)
        loss = -(y * np.log(p) + (1 - y) * np.log1p(-p))
        brier = (p - y) ** 2
        return {"n": int(ok.sum()), "log_loss": _sums(loss), "brier": _sums(brier)}
    if task == "multiclass":
        scores = frame[[c for c in frame.columns if c.startswith("proba_")]]
        P = scores.to_numpy(dtype=np.float64)
        ok &= ~np.isnan(P).any(axis=1)
        codes = y[ok].astype(np.int64)
        p = np.clip(P[ok][np.arange(len(codes)), codes], _EPS, 1.0)
        return {"n": int(ok.sum()), "log_loss": _sums(-np.log(p))}
    pred = frame["y_pred"].to_numpy(dtype=np.float64)
    ok &= ~np.isnan(pred)
    e = y[ok] - pred[ok]
    return {"n": int(ok.sum()), "se": _sums(e ** 2), "ae": _sums(np.abs(e))}


def _sums(values: np.ndarray) -> list[float]:
    return [float(values.sum()), float((values ** 2).sum())]


def baseline(metrics: Mapping[str, Any], sums: Mapping[str, Any], task: str,
             primary: str) -> dict[str, Any]:
    """The quality baseline: the metrics :func:`interval` needs, and their loss moments."""
    from pipeline.evaluate import HEADLINE

    names = dict.fromkeys([primary, *HEADLINE[task], "brier", "mse"])
    keep = {k: metrics.get(k) for k in names if metrics.get(k) is not None}
    for key in ("n", "positives", "negatives", "confusion"):
        if key in metrics:
            keep[key] = metrics[key]
    return {"metrics": keep, "moments": dict(sums), "primary": primary}


def interval(name: str, metrics: Mapping[str, Any], sums: Mapping[str, Any]) -> float | None:
    """The standard error of metric ``name`` (analytic; see the module docstring), or None
    where there is none."""
    value = metrics.get(name)
    n = metrics.get("n") or sums.get("n") or 0
    if value is None or not n:
        return None
    if name == "roc_auc" and "positives" in metrics:
        n1 = metrics["positives"]
        n0 = metrics.get("negatives", n - n1)
        if not n1 or not n0:
            return None
        a = float(value)
        q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
        var = (a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a)) / (n1 * n0)
        return math.sqrt(max(var, 0.0))
    if name in ("accuracy", "precision", "recall"):
        confusion = metrics.get("confusion") or {}
        if name == "precision":
            n = confusion.get("tp", 0) + confusion.get("fp", 0)
        elif name == "recall":
            n = confusion.get("tp", 0) + confusion.get("fn", 0)
        if not n:
            return None
        p = float(value)
        return math.sqrt(max(p * (1 - p), 0.0) / n)
    key = {"log_loss": "log_loss", "brier": "brier", "mse": "se", "rmse": "se",
           "mae": "ae"}.get(name)
    if key is None or key not in sums:
        return None
    m = sums["n"]
    if m < 2:
        return None
    total, squares = sums[key]
    if name == "mae":  # sums["ae"] = [sum |e|, sum e^2]
        var = (squares - total * total / m) / (m - 1)
    else:
        var = (squares - total * total / m) / (m - 1)
    se = math.sqrt(max(var, 0.0) / m)
    if name == "rmse":  # delta method: d sqrt(x) = dx / (2 sqrt(x))
        return se / (2 * float(value)) if value else None
    return se


def quality(metrics: Mapping[str, Any], sums: Mapping[str, Any], reference: Mapping[str, Any],
            thresholds: Mapping[str, Any], names: Sequence[str],
            family: int = 1) -> dict[str, Any]:
    """Metrics of new data against the baseline: per metric the value, its interval, the
    worsening and whether it is decay (see the module docstring).

    Examples
    --------
    >>> q = quality(new_metrics, new_moments, profile["baseline"], profile["thresholds"],
    ...             ["roc_auc"])                                          # doctest: +SKIP
    >>> q["decay"], q["metrics"]["roc_auc"]["interval"]                  # doctest: +SKIP
    (True, [0.701, 0.733])
    """
    from scipy.special import ndtri

    from pipeline.evaluate import GREATER_IS_BETTER

    alpha = float(thresholds["alpha"])
    # the decay test: one-sided, Bonferroni over the metrics and the ``family`` of chunks;
    # the interval shown: two-sided at 1 - alpha
    z1 = float(ndtri(1 - alpha / max(1, len(names) * family)))
    z2 = float(ndtri(1 - alpha / 2))
    base_metrics, base_sums = reference["metrics"], reference.get("moments", {})
    rows: dict[str, Any] = {}
    for name in names:
        value, base = metrics.get(name), base_metrics.get(name)
        if value is None or base is None:
            rows[name] = {"value": value, "baseline": base, "decay": False,
                          "note": "undefined on this data" if value is None
                          else "no baseline for it in the bundle"}
            continue
        sign = 1.0 if GREATER_IS_BETTER.get(name, True) else -1.0
        worse = (float(base) - float(value)) * sign
        tolerance = float(thresholds["max_decay"]) * (abs(float(base)) if name in RELATIVE
                                                      else 1.0)
        se, se_base = interval(name, metrics, sums), interval(name, base_metrics, base_sums)
        row = {"value": float(value), "baseline": float(base), "worsening": worse,
               "tolerance": tolerance, "n": metrics.get("n") or sums.get("n")}
        if se is None:
            row.update(decay=False, interval=None,
                       note="no analytic interval for this metric: reported, never flagged")
        else:
            both = math.sqrt(se ** 2 + (se_base or 0.0) ** 2)
            row.update(se=se, interval=[float(value) - z2 * se, float(value) + z2 * se],
                       worsening_lower=worse - z1 * both,
                       decay=bool(worse - z1 * both > tolerance))
        rows[name] = row
    return {"metrics": rows, "decay": any(r["decay"] for r in rows.values()),
            "decayed": [k for k, r in rows.items() if r["decay"]]}


# =========================================================================== the gate


@dataclass
class Verdict:
    """The gate's decision on a challenger (what :func:`settle` then does)."""

    policy: str
    promote: bool
    reasons: list[str]
    champion: str | None = None
    champion_sha256: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # {"champion": ..., "challenger": ...}
    rules: list[dict[str, Any]] = field(default_factory=list)
    primary: str | None = None
    warm_start: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "promote": self.promote, "reasons": self.reasons,
                "champion": self.champion, "champion_manifest_sha256": self.champion_sha256,
                "primary_metric": self.primary, "metrics": self.metrics, "rules": self.rules,
                "passed": all(r["passed"] for r in self.rules), "warm_start": self.warm_start}


def current_version(job: JobSpec) -> dict[str, Any] | None:
    """The model's current pointer document (``latest.json``), or None."""
    from pipeline import artifacts

    fs, path = artifacts.filesystem(artifacts.join(job.output, "models", job.name,
                                                   artifacts.POINTER), job.storage_options)
    return artifacts.read_pointer(fs, path).doc


def challenge(job: JobSpec, holdout_metrics: Mapping[str, Any], holdout: Any,
              profile: Mapping[str, Any], client: Client,
              data_fingerprint: str | None = None) -> Verdict:
    """The gate: the challenger (``holdout_metrics`` on ``holdout``) against the model's
    current version evaluated on the same holdout rows, under the job's ``refine:`` rules.

    When the champion was trained on the very same data with the same split (a rerun), its
    own recorded holdout metrics are those rows' already, and are used as they are: its final
    model may have been refit on every row, holdout included (``train.refit_all_below``), and
    would be flattered by scoring rows it was trained on.

    Examples
    --------
    >>> verdict = challenge(job, fit.holdout, parts.holdout, profile, client)  # doctest: +SKIP
    >>> verdict.promote, verdict.reasons                                        # doctest: +SKIP
    (False, ['roc_auc 0.7712 is 0.0341 worse than the champion's 0.8053 (needed >= +0)'])
    """
    from pipeline.evaluate import headline

    refine, task, primary = job.refine, job.data.task, job.primary_metric
    pointer = current_version(job)
    challenger = headline(holdout_metrics, task) | {primary: holdout_metrics.get(primary)}
    if pointer is None:
        return Verdict(refine.promote, refine.promote != "never",
                       ["first version of the model: nothing to compare with"],
                       metrics={"challenger": challenger}, primary=primary)
    champion_id = pointer["run_id"]
    verdict = Verdict(refine.promote, False, [], champion_id, pointer.get("manifest_sha256"),
                      primary=primary)
    try:
        theirs, note = _champion_holdout(job, champion_id, holdout, client, data_fingerprint)
    except Exception as exc:  # a champion that cannot score the new data is no match
        reason = (f"the champion {champion_id} could not be evaluated on the challenger's "
                  f"holdout rows ({type(exc).__name__}: {exc}); no comparison was made: "
                  "promote the challenger by hand (mlpipe models promote) if it should "
                  "replace it")
        verdict.metrics = {"challenger": challenger, "champion": None}
        verdict.rules = [{"rule": "champion evaluated", "passed": False, "detail": reason}]
        verdict.reasons = [reason]
        verdict.promote = refine.promote == "always"
        return verdict
    verdict.reasons = [note] if note else []
    champ = headline(theirs, task) | {primary: theirs.get(primary)}
    for metric in refine.guards:
        champ.setdefault(metric, theirs.get(metric))
        challenger.setdefault(metric, holdout_metrics.get(metric))
    verdict.metrics = {"champion": champ, "challenger": challenger,
                       "rows": int(holdout_metrics.get("n") or 0)}
    rules = [_rule("min_improvement", primary, refine.min_improvement, challenger, champ),
             *(_rule("guard", m, tolerance, challenger, champ)
               for m, tolerance in refine.guards.items())]
    if refine.drift_check:
        drift = profile.get("holdout_drift", {})
        rules.append({"rule": "holdout drift", "passed": not drift.get("drift", False),
                      "detail": ("the challenger's holdout drifted from its training rows in "
                                 f"{', '.join(drift.get('drifted', []))}")
                      if drift.get("drift") else "the challenger's holdout matches its "
                                                 "training rows"})
    verdict.rules = rules
    passed = all(r["passed"] for r in rules)
    verdict.promote = refine.promote == "always" or (refine.promote == "if_better" and passed)
    failed = [r["detail"] for r in rules if not r["passed"]]
    verdict.reasons = (failed or [r["detail"] for r in rules[:1]]) + verdict.reasons
    if refine.promote == "always" and failed:
        verdict.reasons.append("promoted anyway: refine.promote is always")
    if refine.promote == "never":
        verdict.reasons.append("not promoted: refine.promote is never")
    return verdict


def _champion_holdout(job: JobSpec, champion_id: str, holdout: Any, client: Client,
                      data_fingerprint: str | None) -> tuple[dict[str, Any], str | None]:
    """The champion's metrics on the challenger's holdout rows, and a note on where from (or
    on a champion refit on every row of its data: ``train.refit_all_below``)."""
    from pipeline import artifacts
    from pipeline.evaluate import evaluate_predictor

    bundle = artifacts.open_bundle(artifacts.join(job.output, "runs", champion_id),
                                   job.storage_options)
    if _same_holdout(bundle, job, data_fingerprint):
        return (bundle.json("metrics.json")["holdout"],
                "the champion was trained on the same data with the same split: its "
                "recorded holdout metrics are on these rows")
    champion = artifacts.load_predictor(bundle)
    refit = (bundle.json("metrics.json").get("model") or {}).get("refit")
    note = (f"the champion's model is {refit} of its own data: where these holdout rows were "
            "among them, its figures here are flattered, and the gate leans toward keeping "
            "it" if refit else None)
    return evaluate_predictor(champion, {"holdout": (holdout, False)}, job,
                              client)["holdout"], note


def _rule(kind: str, metric: str, limit: float, challenger: Mapping[str, Any],
          champion: Mapping[str, Any]) -> dict[str, Any]:
    """One rule of the gate: ``min_improvement`` (the challenger better by at least
    ``limit``) or ``guard`` (not worse by more than ``limit``), in the metric's direction."""
    from pipeline.evaluate import GREATER_IS_BETTER

    mine, theirs = challenger.get(metric), champion.get(metric)
    if mine is None or theirs is None:
        return {"rule": kind, "metric": metric, "passed": False,
                "detail": f"{metric} is undefined for "
                          f"{'the challenger' if mine is None else 'the champion'}"}
    sign = 1.0 if GREATER_IS_BETTER.get(metric, True) else -1.0
    gain = (float(mine) - float(theirs)) * sign
    need = limit if kind == "min_improvement" else -limit
    return {"rule": kind, "metric": metric, "champion": float(theirs),
            "challenger": float(mine), "improvement": gain, "limit": limit,
            "passed": bool(gain >= need),
            "detail": f"{metric}: challenger {float(mine):.4f} vs champion {float(theirs):.4f}, "
                      f"improvement {gain:+.4f} (needed >= {need:+.4g})"}


def _same_holdout(bundle: Any, job: JobSpec, data_fingerprint: str | None) -> bool:
    """Were the champion's holdout rows exactly the challenger's (same data, same split)?"""
    import yaml

    if not data_fingerprint or bundle.manifest.get("data", {}).get("fingerprint") \
            != data_fingerprint or not bundle.has("job.yaml"):
        return False
    theirs = yaml.safe_load(bundle.read("job.yaml")) or {}
    data = theirs.get("data", {})
    mine = job.model_dump(mode="json", by_alias=True)
    return (data.get("split") == mine["data"]["split"]
            and data.get("target") == job.data.target
            and theirs.get("preprocess", {}).get("dedupe") == job.preprocess.dedupe)


def settle(job: JobSpec, run_id: str, verdict: Verdict, *, publish: bool = True,
           data_fingerprint: str | None = None) -> dict[str, Any]:
    """Carry out the gate's decision on a written run: promote it by compare-and-swap against
    the champion it was compared with, or register it unpromoted; record the decision in the
    registry. ``publish=False`` (a dry run) decides and records, never promotes.

    Raises :class:`~pipeline.artifacts.ConflictError` when another writer changed the current
    version since the comparison (the run stays registered, unpromoted; the record says so).
    """
    from pipeline import artifacts, registry

    root, name, options = job.output, job.name, job.storage_options
    record = {"run_id": run_id, "decided_at": artifacts.utcnow(), **verdict.to_json(),
              "job_fingerprint": job.fingerprint(), "data_fingerprint": data_fingerprint}
    promote = verdict.promote and publish
    try:
        if promote:
            registry.promote(root, name, run_id, expected_run=verdict.champion,
                             storage_options=options)
            record["outcome"] = "promoted"
        else:
            registry.register(root, name, run_id, storage_options=options)
            record["outcome"] = "dry run: not promoted" if verdict.promote else "not promoted"
    except artifacts.ConflictError as exc:
        record["outcome"] = "conflict: not promoted"
        record["reasons"] = [*record["reasons"], f"the current version changed during the "
                             f"run ({exc}); nothing was overwritten"]
        registry.record_decision(root, name, record, storage_options=options)
        raise artifacts.ConflictError(
            f"model {name!r} changed while run {run_id} was being compared with "
            f"{verdict.champion}: {exc}. The run is kept as an unpromoted version; compare "
            f"again (mlpipe retrain) or promote it by hand (mlpipe models promote)") from None
    registry.record_decision(root, name, record, storage_options=options)
    verb = {"promoted": "promoted to current version"}.get(record["outcome"],
                                                          record["outcome"])
    logger.info("gate (%s): %s %s; %s", verdict.policy, run_id, verb,
                "; ".join(verdict.reasons))
    return record


# =========================================================================== monitoring data

#: ``--freq``: pandas period aliases of the time chunks.
FREQUENCIES = {"D": "D", "W": "W", "M": "M"}
#: the chunk of every row (``monitor --by``); "all" is the whole data.
ALL = "all"
_CHUNK = "__mlpipe_chunk__"


@dataclass
class MonitorResult:
    """What :func:`monitor_data` found (``doc`` is ``monitor.json``) and where it went."""

    doc: dict[str, Any] = field(repr=False)
    url: str | None
    drift: bool
    decay: bool

    @property
    def exit_code(self) -> int:
        """0 fine, 3 drift, 4 quality decay (decay wins when both)."""
        return 4 if self.decay else 3 if self.drift else 0


def _chunks(values: pd.Series, freq: str | None) -> pd.Series:
    """The time chunk of each row (``2026-12`` for ``M``), as text; missing times: ``none``."""
    import pandas as pd

    if freq is None:
        return pd.Series(ALL, index=values.index, dtype=object)
    stamps = pd.to_datetime(values, errors="coerce", utc=False)
    if getattr(stamps.dt, "tz", None) is not None:
        stamps = stamps.dt.tz_localize(None)
    out = stamps.dt.to_period(FREQUENCIES[freq]).astype(str)
    return out.where(stamps.notna(), "none").astype(object)


def _monitor_part(df: pd.DataFrame, predictor: Predictor, bins: tuple[Binning, Binning],
                  by: str | None, freq: str | None, labels: str | None,
                  drift: bool = True) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One partition of new data: per time chunk, the drift sketch (inputs and predictions)
    and the loss moments; and the evaluation frame (labels, scores, chunk) for the metrics."""
    import pandas as pd

    chunk = _chunks(df[by], freq) if by else pd.Series(ALL, index=df.index, dtype=object)
    if labels and labels != predictor.target:
        df = df.drop(columns=[predictor.target], errors="ignore").rename(
            columns={labels: predictor.target})
    evaluation = None
    if labels:
        evaluation = predictor.evaluation_frame(df)
        evaluation[_CHUNK] = chunk.to_numpy()
        pred = _predictions(evaluation, predictor)
    else:
        pred = predictor.predict_frame(df)
    sketches: dict[str, Any] = {}
    groups = chunk.groupby(chunk, sort=False).groups.items() if by else [(ALL, None)]
    for key, rows in groups:
        doc: dict[str, Any] = {}
        if drift:
            doc["inputs"] = sketch_frame(df if rows is None else df.loc[rows], bins[0])
            doc["outputs"] = sketch_frame(pred if rows is None else pred.loc[rows], bins[1])
        if evaluation is not None:
            doc["moments"] = moments(evaluation if rows is None else evaluation.loc[rows],
                                     predictor.task)
        sketches[str(key)] = doc
    if by:  # the whole data too, so that one merge gives both
        whole: dict[str, Any] = {}
        for doc in sketches.values():
            whole = merge(whole, doc)
        sketches[ALL] = whole
    return (evaluation if evaluation is not None else pd.DataFrame(), sketches)


def _predictions(evaluation: pd.DataFrame, predictor: Predictor) -> pd.DataFrame:
    """The model's output columns (as scoring writes them) from an evaluation frame."""
    import pandas as pd

    out = pd.DataFrame(index=evaluation.index)
    if predictor.task == "regression":
        out["prediction"] = evaluation["y_pred"]
        return out
    classes = np.asarray([str(c) for c in predictor.classes], dtype=object)
    if predictor.task == "binary":
        p = evaluation["proba"].to_numpy(dtype=np.float64)
        out["label"] = classes[(p >= predictor.threshold).astype(np.int64)]
        out["proba"] = p
        return out
    P = evaluation[[f"proba_{i}" for i in range(len(classes))]].to_numpy(dtype=np.float64)
    out["label"] = classes[P.argmax(axis=1)] if len(P) else np.empty(0, dtype=object)
    for i, c in enumerate(predictor.classes):
        out[f"proba_{c}"] = P[:, i]
    return out


def _scored_part(df: pd.DataFrame, predictor: Predictor, labels: str, by: str | None,
                 freq: str | None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One partition of a score output joined with its labels: the evaluation frame built from
    the stored predictions (no model call), and the loss moments per chunk."""
    import pandas as pd

    from pipeline.predictor import encode_labels

    out = pd.DataFrame(index=df.index)
    task = predictor.task
    if task == "regression":
        out["y_true"] = df[labels].to_numpy(dtype=np.float64)
        out["y_pred"] = df["prediction"].to_numpy(dtype=np.float64)
    else:
        out["y_true"] = encode_labels(df[labels], predictor.classes)
        if task == "binary":
            out["proba"] = df["proba"].to_numpy(dtype=np.float64)
        else:
            for i, c in enumerate(predictor.classes):
                out[f"proba_{i}"] = df[f"proba_{c}"].to_numpy(dtype=np.float64)
    chunk = _chunks(df[by], freq) if by else pd.Series(ALL, index=df.index, dtype=object)
    out[_CHUNK] = chunk.to_numpy()
    groups = chunk.groupby(chunk, sort=False).groups.items() if by else [(ALL, None)]
    sketches = {str(k): {"moments": moments(out if rows is None else out.loc[rows], task)}
                for k, rows in groups}
    if by:
        whole: dict[str, Any] = {}
        for doc in sketches.values():
            whole = merge(whole, doc)
        sketches[ALL] = whole
    return out, sketches


class MonitorInputError(ValueError):
    """The data or the model cannot be monitored as asked (exit code 2)."""


def monitor_data(model_url: str, data_url: str, *, labels: str | None = None,
                 labels_from: str | None = None, id_column: str | None = None,
                 by: str | None = None, freq: str = "M", fmt: str = "auto",
                 scored: Mapping[str, Any] | None = None, out: str | None = None,
                 write: bool = True, storage_options: Mapping[str, Any] | None = None,
                 client: Client | None = None) -> MonitorResult:
    """Drift of new data against a model's reference and, with labels, its quality against
    the holdout baseline; overall and per time chunk. Writes ``monitor.json`` and
    ``monitor.html`` under ``out`` (default ``<root>/monitoring/<name>/<UTC time>/``).

    Two passes at most: one reads, predicts and sketches every partition (and keeps the
    small evaluation frame of labelled rows in the cluster's memory); the other computes the
    metrics of every chunk from it. Nothing but sketches and metrics reaches the driver.

    Parameters
    ----------
    model_url
        ``<root>/models/<name>`` (its current version) or ``<root>/runs/<run_id>``.
    data_url
        CSV/Parquet files with the model's input columns (new data, a serving prediction log;
        other columns are ignored), or a ``mlpipe score`` output (then pass ``scored``).
    labels
        The column of true labels (in ``data_url``, or in ``labels_from``).
    labels_from, id_column
        Labels in another dataset, joined on ``id_column``.
    by, freq
        A time column and ``D``, ``W`` or ``M``: every check per chunk as well.
    scored
        The verified ``_drift.json`` of a score output at ``data_url``
        (:func:`pipeline.scoring.read_drift`): its sketches are used, the inputs are not
        re-read (quality then needs ``labels_from``; chunks need ``by`` in the labels).

    Examples
    --------
    >>> result = monitor_data("out/models/demo", "data/december", labels="default",
    ...                       by="applied_at", freq="M")                    # doctest: +SKIP
    >>> result.exit_code, result.doc["drifted"]                              # doctest: +SKIP
    (3, ['income', 'credit_score'])
    """
    from pipeline import artifacts

    if freq not in FREQUENCIES:
        raise MonitorInputError(f"freq must be one of {', '.join(FREQUENCIES)}; got {freq!r}")
    if labels_from and not (labels and id_column):
        raise MonitorInputError("labels from another dataset need --labels (their column) "
                                "and --id-column (the column to join them on)")
    client = client or _client()
    options = dict(storage_options or {})
    bundle = artifacts.open_bundle(model_url, options)
    if not bundle.has(PROFILE):
        raise MonitorInputError(
            f"{bundle.url} has no {PROFILE}: it was trained before mlpipe kept a reference "
            "profile, so there is nothing to compare new data with; retrain it (mlpipe "
            "retrain JOB) and monitor the new version")
    profile = bundle.json(PROFILE)
    predictor = artifacts.load_predictor(bundle)
    started = artifacts.utcnow()
    ask = _Ask(data_url, fmt, labels, labels_from, id_column, by, freq, options)
    if scored is not None:
        current = _scored_sketches(scored, bundle.run_id, data_url)
        passes = _score_output_passes(ask, predictor, client)
    else:
        passes = _data_passes(ask, bundle, predictor, binnings(profile), client)
    kind = "score output" if scored is not None else "data"
    quality_tasks, sketch_tasks, meta = passes
    if meta is not None:  # what the metrics need to know, riding on the meta
        meta.attrs.update(task=predictor.task, threshold=predictor.threshold,
                          class_names=[str(c) for c in predictor.classes or []] or None)
    metrics, sums = _quality(quality_tasks, sketch_tasks, meta, by)
    drift_sketches = sums.pop("__sketches__", {})
    if scored is None:
        current = drift_sketches
    sketches = _combine(current, sums)
    rows = int(max((v["rows"] for v in sketches.get(ALL, {}).get("inputs", {}).values()),
                   default=0))
    thresholds = profile["thresholds"]
    names = thresholds.get("metrics") or [profile["baseline"]["primary"]]
    doc = _monitor_doc(profile, sketches, metrics, names, by)
    doc.update({
        "format": MONITOR_FORMAT, "created_at": started,
        "model": {"url": model_url, "run_id": bundle.run_id, "name": bundle.manifest.get("name"),
                  "task": predictor.task, "family": predictor.family},
        "data": {"url": data_url, "kind": kind, "rows": rows, "labels": labels,
                 "labels_from": labels_from, "id_column": id_column},
        "by": by, "freq": freq if by else None, "thresholds": thresholds,
        "primary_metric": profile["baseline"]["primary"],
    })
    result = MonitorResult(doc, None, doc["drift"], doc["decay"])
    doc["exit_code"] = result.exit_code
    if write:
        stamp = started.replace(":", "").replace("-", "").replace("+0000", "")[:19]
        result.url = write_report(doc, out or artifacts.join(
            bundle.root, "monitoring", str(bundle.manifest.get("name") or "model"),
            stamp + "Z"), options)
    return result


@dataclass(frozen=True)
class _Ask:
    """What :func:`monitor_data` was asked to read."""

    data_url: str
    fmt: str
    labels: str | None
    labels_from: str | None
    id_column: str | None
    by: str | None
    freq: str
    options: Mapping[str, Any]


def _score_output_passes(ask: _Ask, predictor: Predictor,
                         client: Client) -> tuple[list[Any], list[Any], Any]:
    """A score output's stored predictions joined with their labels (no drift pass: the
    output's sketches are used)."""
    import dask

    from pipeline import load

    if not ask.labels_from:
        return [], [], None
    source = load.find_files(ask.data_url, ask.options)
    preds = load.read(source, list(load.read_headers(source)[source.files[0]]),
                      storage_options=ask.options)
    joined = preds.merge(_labels(ask.labels_from, ask.options, ask.id_column, ask.labels,
                                 ask.by if ask.by not in preds.columns else None),
                         on=ask.id_column, how="inner")
    [remote] = client.scatter([predictor], broadcast=True, hash=False)
    tasks = [dask.delayed(_scored_part, pure=True)(p, remote, ask.labels, ask.by, ask.freq)
             for p in joined.to_delayed()]
    return tasks, [], _scored_part(joined._meta, predictor, ask.labels, ask.by, ask.freq)[0]


def _data_passes(ask: _Ask, bundle: Any, predictor: Predictor, bins: tuple[Binning, Binning],
                 client: Client) -> tuple[list[Any], list[Any], Any]:
    """(quality tasks, sketch tasks, meta of the evaluation frames) over new data: one task
    per partition reads, predicts and sketches it; with labels in the data the same tasks
    give the evaluation frames, with labels elsewhere a join does."""
    import dask

    elsewhere = bool(ask.labels_from)
    frame, by_in_data = _read_inputs(bundle, predictor, ask.data_url, ask.fmt, ask.options,
                                     None if elsewhere else ask.labels, ask.by,
                                     ask.id_column if elsewhere else None)
    [remote] = client.scatter([predictor], broadcast=True, hash=False)
    [remote_bins] = client.scatter([bins], broadcast=True, hash=False)
    inline = None if elsewhere else ask.labels
    chunked = ask.by if by_in_data else None
    sketch_tasks = [dask.delayed(_monitor_part, pure=True)(
        p, remote, remote_bins, chunked, ask.freq, inline) for p in frame.to_delayed()]
    if inline:
        meta = _monitor_part(frame._meta, predictor, bins, chunked, ask.freq, inline)[0]
        return sketch_tasks, sketch_tasks, meta
    if not elsewhere:
        return [], sketch_tasks, None
    joined = frame.merge(_labels(ask.labels_from, ask.options, ask.id_column, ask.labels,
                                 None if by_in_data else ask.by),
                         on=ask.id_column, how="inner")
    tasks = [dask.delayed(_monitor_part, pure=True)(p, remote, remote_bins, ask.by, ask.freq,
                                                    ask.labels, False)
             for p in joined.to_delayed()]
    meta = _monitor_part(joined._meta, predictor, bins, ask.by, ask.freq, ask.labels, False)[0]
    return tasks, sketch_tasks, meta


def _client() -> Client:
    from distributed import get_client

    return get_client()


def _labels(url: str, options: Mapping[str, Any], id_column: str, labels: str,
            by: str | None) -> Any:
    """The lazy frame of labels (and the time column, when the data has none) to join."""
    from pipeline import load

    source = load.find_files(url, options)
    load.check_headers(load.read_headers(source), schema=None,
                       required=[id_column, labels, *([by] if by else [])])
    return load.read(source, list(dict.fromkeys([id_column, labels, *([by] if by else [])])),
                     storage_options=options)


def _scored_sketches(scored: Mapping[str, Any], run_id: str, data_url: str) -> dict[str, Any]:
    """The merged sketches a score output's ``_drift.json`` holds."""
    scored_by = scored.get("model", {}).get("run_id")
    if scored_by != run_id:
        raise MonitorInputError(f"{data_url} was scored by model run {scored_by}, not {run_id}; "
                                "its sketches use that run's bins: monitor it with that run's "
                                "URL (<root>/runs/<run_id>)")
    if scored.get("drift") is None:
        raise MonitorInputError(f"{data_url} has no drift sketches: {scored.get('note')}")
    return {ALL: {"inputs": {c: v["current"] for c, v in scored["columns"].items()},
                  "outputs": {c: v["current"] for c, v in scored["outputs"].items()}}}


def _read_inputs(bundle: Any, predictor: Predictor, data_url: str, fmt: str,
                 options: Mapping[str, Any], labels: str | None, by: str | None,
                 id_column: str | None) -> tuple[Any, bool]:
    """The lazy frame of what monitoring reads (the model's inputs, and the label, time and
    id columns asked for; the inputs typed as the model's schema declares them), and whether
    the time column is in it (with labels from elsewhere it may come with them)."""
    from pipeline import load

    features = list(predictor.feature_columns)
    source = load.find_files(data_url, options, fmt)
    headers = load.read_headers(source)
    present = set(next(iter(headers.values())))
    by_in_data = bool(by) and (by in present or not id_column)
    required = [*features, *([id_column] if id_column else []), *([labels] if labels else []),
                *([by] if by_in_data else [])]
    try:
        load.check_headers(headers, schema=None, required=required)
    except load.DataError as exc:
        raise MonitorInputError(str(exc)) from None
    declared = bundle.json("schema.json").get("columns", {})
    frame = load.read(source, list(dict.fromkeys(required)),
                      schema={c: declared[c] for c in features if c in declared},
                      storage_options=options)
    return frame, by_in_data


def _second(pair: tuple[Any, Any]) -> Any:
    return pair[1]


def _first(pair: tuple[Any, Any]) -> Any:
    return pair[0]


def _quality(quality_tasks: list[Any], sketch_tasks: list[Any], meta: Any,
             by: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the passes: ``({chunk: metrics}, {chunk: {"moments"}, "__sketches__": {chunk:
    drift sketches}})``.

    The first pass reads, predicts and sketches every partition, and persists the evaluation
    frames of the labelled rows (a few numbers per row); the chunks it found then get their
    metrics from :func:`pipeline.evaluate.evaluation_graph` in one compute.
    """
    import dask
    import dask.dataframe as dd

    from pipeline.evaluate import evaluation_graph

    shared = quality_tasks is sketch_tasks
    if not quality_tasks:
        (sketches,) = dask.compute(_tree([dask.delayed(_second, pure=True)(t)
                                          for t in sketch_tasks], merge))
        return {}, {"__sketches__": sketches}
    task = meta.attrs.get("task")
    frames = [dask.delayed(_first, pure=True)(t) for t in quality_tasks]
    found = _tree([dask.delayed(_second, pure=True)(t) for t in quality_tasks], merge)
    drift = found if shared else _tree([dask.delayed(_second, pure=True)(t)
                                        for t in sketch_tasks], merge)
    # one persist: each partition is read and predicted once for the sketches and the frames
    *frames, found, drift = dask.persist(*frames, found, drift)
    found, drift = dask.compute(found, drift)
    pred = dd.from_delayed(frames, meta=meta, verify_meta=False)
    chunks = sorted(k for k in found if k != ALL) if by else []
    settings = {"class_names": meta.attrs.get("class_names"),
                "threshold": meta.attrs.get("threshold", 0.5)}
    graphs = {key: evaluation_graph(pred if key == ALL else pred[pred[_CHUNK] == key],
                                    task, **settings)
              for key in [ALL, *chunks]}
    (metrics,) = dask.compute(graphs)
    del pred, frames  # the persisted evaluation frames leave the cluster's memory
    sums = {k: {"moments": v.get("moments", {})} for k, v in found.items()}
    sums["__sketches__"] = {} if not sketch_tasks else {
        k: {key: v[key] for key in ("inputs", "outputs") if key in v} for k, v in drift.items()}
    return metrics, sums


def _combine(current: Mapping[str, Any], sums: Mapping[str, Any]) -> dict[str, Any]:
    """{chunk: {"inputs", "outputs", "moments"}} from the drift and the quality passes."""
    out: dict[str, Any] = {k: dict(v) for k, v in current.items()}
    for key, value in sums.items():
        out.setdefault(key, {}).update(value)
    return out


def _monitor_doc(profile: Mapping[str, Any], sketches: Mapping[str, Any],
                 metrics: Mapping[str, Any], names: Sequence[str],
                 by: str | None) -> dict[str, Any]:
    """``monitor.json``'s findings: the whole data, then each chunk."""
    def one(key: str) -> dict[str, Any]:
        sketch = sketches.get(key, {})
        entry: dict[str, Any] = {"chunk": key}
        if sketch.get("inputs"):
            entry["drift"] = drift_report(profile, sketch, family=family)
            entry["rows"] = entry["drift"]["rows"]
        if key in metrics:
            entry["metrics"] = {k: v for k, v in metrics[key].items()
                                if k not in ("curves", "thresholds", "slices")}
            entry["quality"] = quality(metrics[key], sketch.get("moments", {}),
                                       profile["baseline"], profile["thresholds"], names,
                                       family)
            entry.setdefault("rows", int(metrics[key].get("n") or 0))
        return entry

    keys = sorted(k for k in sketches if k != ALL) if by else []
    family = 1 + len(keys)  # the whole data and each chunk: one family of checks
    overall = one(ALL)
    chunks = [one(k) for k in keys]
    entries = [overall, *chunks]
    drifted = sorted({c for e in entries for c in e.get("drift", {}).get("drifted", [])})
    out_drifted = sorted({c for e in entries
                          for c in e.get("drift", {}).get("outputs_drifted", [])})
    decayed = sorted({m for e in entries for m in e.get("quality", {}).get("decayed", [])})
    return {"overall": overall, "chunks": chunks, "drift": bool(drifted or out_drifted),
            "drifted": drifted, "outputs_drifted": out_drifted, "decay": bool(decayed),
            "decayed": decayed,
            "flagged_chunks": [e["chunk"] for e in chunks
                               if e.get("drift", {}).get("drift")
                               or e.get("quality", {}).get("decay")]}


def write_report(doc: Mapping[str, Any], url: str,
                 storage_options: Mapping[str, Any] | None = None) -> str:
    """``monitor.json`` and ``monitor.html`` under ``url`` (each written whole or not at all).
    Returns ``url``."""
    from pipeline import artifacts
    from pipeline.monitor_report import render

    fs, base = artifacts.filesystem(url, storage_options)
    artifacts.atomic_write(fs, artifacts.join(base, "monitor.json"),
                           artifacts.json_bytes(doc))
    artifacts.atomic_write(fs, artifacts.join(base, "monitor.html"), render(doc).encode())
    return url
