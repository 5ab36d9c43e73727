"""Holdout metrics at cluster scale: per-partition partials merged by tree reduction.

Why this module exists: ``dask_ml.metrics`` has no precision, recall, F1 or ROC AUC, and
MLflow's ``evaluate`` works on pandas only (on Spark it silently keeps the first 10,000 rows).
Here every metric is computed from *mergeable partials*: each partition is reduced to a small,
fixed-size summary (confusion counts, sums, score histograms, a residual sketch), the summaries
are summed pairwise on the cluster (tree reduction, ``split_every`` at a time) and one final task
turns the merged summary into a JSON-able dict. The driver receives that dict and nothing else:
no prediction, score or residual ever crosses to it.

How exact each metric is
------------------------
* Counts, accuracy, precision, recall, F1, confusion matrices, log loss, Brier score, MSE, RMSE,
  MAE, R², MAPE, max error and the calibration curve are exact (floating-point sums; R² uses
  Chan's parallel variance merge, so no ``sum(y**2) - n*mean**2`` cancellation).
* ROC AUC and average precision come from merged score histograms on a fixed grid of
  ``N_SCORE_BINS`` (63,224) bins: the union of 2**15 bins uniform in the score and 2**15 bins
  uniform in logit(score) over [-36, 36]. The grid is fine in the middle (width <= 3.1e-5) *and*
  near 0 and 1 (relative width <= 0.22 %), where rare-event models put most of their scores.
  Pairs of scores in different bins are ordered exactly; pairs in the same bin count as ties
  (half credit, the trapezoid rule, which is also what scikit-learn does for exact ties). The
  worst-case error is therefore ``sum_b pos_b * neg_b / (2 P N)``; it is computed from the merged
  histogram and reported as ``approximation.roc_auc_max_error`` (~1e-5 at 1M rows of a
  realistic model). The observed error is far smaller, since a within-bin pair is almost a coin
  flip: ~1e-8 at 1M rows. Average precision gets the analogous per-bin bound
  (``approximation.pr_auc_max_error``, ~3e-5; observed ~1e-5). When a bound exceeds 1e-4 (scores
  crowded into a few bins, e.g. all within 1e-5 of each other) the result carries a note.
  Slice AUCs use every 16th edge; multiclass one-vs-rest grids are coarsened by a power of two
  once ``k`` exceeds 4 (bins per class reported as ``approximation.score_bins_per_class``).
* Operating-point thresholds found from the histogram (F1-optimal, ``min_precision``,
  ``min_recall``) are bin edges, and the counts at a bin edge are exact, so the metrics reported
  for them are exact for that threshold; only the *choice* is restricted to the grid.
* Residual quantiles come from a mergeable log-bucket sketch (DDSketch-style) with relative
  accuracy ``RESIDUAL_RELATIVE_ACCURACY`` (0.1 %) against the order statistic
  ``numpy.quantile(r, q, method="lower")``.

Memory: a binary partial is ~1 MiB (two int64 histograms), a multiclass partial at most ~4 MiB
(the per-class grid is coarsened as the number of classes grows), a regression partial a few
hundred KiB at most. A merge task holds ``split_every`` (8) of them, so the cluster's memory for
evaluation does not grow with the number of rows or partitions beyond one partial per running
task, and the histograms are tiny next to a typical 100 MB partition.

Conventions: class 1 is positive; a row is predicted positive when ``proba >= threshold`` (the
same rule as :func:`sklearn.metrics.precision_recall_curve`); multiclass predictions are the
``argmax`` of ``proba_0 .. proba_{k-1}`` (first class wins ties, as ``numpy.argmax``); the
regression residual is ``y_true - y_pred`` (positive = under-prediction).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

# The metric vocabulary (directions, defaults) lives in pipeline.models, which the job file's
# validation imports without numpy or pandas.
from pipeline.models import DEFAULT_METRIC as PRIMARY
from pipeline.models import GREATER_IS_BETTER

if TYPE_CHECKING:
    from distributed import Client

    from pipeline.config import JobSpec
    from pipeline.predictor import Predictor
    from pipeline.split import Parts

__all__ = [
    "GREATER_IS_BETTER",
    "HEADLINE",
    "N_SCORE_BINS",
    "PRIMARY",
    "RESIDUAL_RELATIVE_ACCURACY",
    "SCORE_EDGES",
    "evaluate_predictions",
    "evaluate_predictor",
    "evaluation_graph",
    "fmt_metric",
    "headline",
    "leaderboard",
    "model_warnings",
    "operating_point",
    "overfit_check",
    "overfit_rows",
]

TASKS = ("binary", "multiclass", "regression")

#: The few metrics shown in tables (leaderboard, overfit check), per task.
HEADLINE: dict[str, tuple[str, ...]] = {
    "binary": ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"),
    "multiclass": ("accuracy", "f1_macro", "f1_weighted", "roc_auc_ovr", "log_loss"),
    "regression": ("rmse", "mae", "r2"),
}

MISSING = "__missing__"
OTHER = "__other__"

# --- score grid --------------------------------------------------------------------------------
_HALF_GRID = 2**15
_LOGIT_LIMIT = 36.0  # sigmoid(-36) ~ 2.3e-16: below that float64 probabilities are ~0 anyway


def _score_edges() -> np.ndarray:
    # Uniform bins alone are too coarse near 0/1 for rare-event models (all scores < 1e-3 would
    # share ~30 bins); logit bins alone are coarse around 0.5. Their union is fine everywhere.
    uniform = np.linspace(0.0, 1.0, _HALF_GRID + 1)
    z = np.linspace(-_LOGIT_LIMIT, _LOGIT_LIMIT, _HALF_GRID + 1)
    logit = 1.0 / (1.0 + np.exp(-z))
    edges = np.unique(np.concatenate([uniform, logit, [0.0, 1.0]]))
    edges.flags.writeable = False
    return edges


#: Lower edges of the score bins (plus 1.0 last); bin ``b`` holds ``edges[b] <= s < edges[b+1]``
#: and the last bin also holds 1.0. ``s >= edges[b]`` exactly when ``bin(s) >= b``.
SCORE_EDGES: np.ndarray = _score_edges()
N_SCORE_BINS: int = len(SCORE_EDGES) - 1
_SLICE_COARSEN = 16  # slice histograms: every 16th edge (3,952 bins) so levels stay cheap
_MC_CELL_BUDGET = 2**18  # multiclass: classes x bins per class stays under this (~4 MiB int64)

#: Relative accuracy of the residual quantile sketch.
RESIDUAL_RELATIVE_ACCURACY = 1e-3
_GAMMA = (1 + RESIDUAL_RELATIVE_ACCURACY) / (1 - RESIDUAL_RELATIVE_ACCURACY)
_LOG_GAMMA = math.log(_GAMMA)
_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)

_EPS = float(np.finfo(np.float64).eps)  # the clip scikit-learn's log_loss applies to float64
_MAX_SLICE_LEVELS = 5000  # per column; slices are for low-cardinality columns
_CROWDING_NOTE = 1e-4  # histogram error bound above which the result carries a note


@functools.lru_cache(maxsize=16)
def _coarse_edges(coarsen: int) -> np.ndarray:
    """Every ``coarsen``-th edge of :data:`SCORE_EDGES` (1.0 kept last): nested, coarser bins."""
    edges = SCORE_EDGES[::coarsen]
    if edges[-1] != 1.0:
        edges = np.append(edges, 1.0)
    edges.flags.writeable = False
    return edges


def _bin_index(p: np.ndarray, coarsen: int = 1) -> np.ndarray:
    """Bin of each score in ``[0, 1]``: ``bin(p) >= b`` exactly when ``p >= edges[b]``.

    With ``coarsen=f`` this equals ``_bin_index(p) // f``, found in the short edge array
    (searchsorted in a 2k-edge array is several times faster than in the 65k one).
    """
    edges = _coarse_edges(coarsen) if coarsen > 1 else SCORE_EDGES
    idx = np.searchsorted(edges, p, side="right") - 1
    return np.clip(idx, 0, len(edges) - 2).astype(np.int64, copy=False)


@dataclass(frozen=True)
class _Spec:
    """Everything a partition task and the final task need to know (small, picklable)."""

    task: str
    proba_cols: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()
    threshold: float = 0.5
    fixed_thresholds: tuple[float, ...] = (0.5,)
    min_precision: float | None = None
    min_recall: float | None = None
    slices: tuple[str, ...] = ()
    top_levels: int = 10
    n_bins: int = 10
    curve_points: int = 200
    mc_coarsen: int = 1
    needed: tuple[str, ...] = field(default=())

    @property
    def k(self) -> int:
        return len(self.proba_cols)


# --- per-partition partials ----------------------------------------------------------------------
def _as_float(s: pd.Series) -> np.ndarray:
    # to_numpy(na_value=) turns pandas NA (nullable ints, Arrow) into NaN instead of object arrays
    return s.to_numpy(dtype=np.float64, na_value=np.nan)


def _level_codes(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer code per row and the level label (str) of each code; missing -> ``MISSING``."""
    codes, uniques = pd.factorize(col, use_na_sentinel=True)
    labels = np.array([str(u) for u in uniques] + [MISSING], dtype=object)
    codes = np.where(codes < 0, len(uniques), codes).astype(np.int64)
    return codes, labels


def _level_frame(
    codes: np.ndarray, labels: np.ndarray, columns: Mapping[str, np.ndarray]
) -> pd.DataFrame:
    """Per-level sums as a DataFrame indexed by level label (levels with rows only)."""
    n_lev = len(labels)
    n = np.bincount(codes, minlength=n_lev)
    data = {"n": n.astype(np.float64)}
    for name, values in columns.items():
        data[name] = np.bincount(codes, weights=values, minlength=n_lev)
    present = n > 0
    return pd.DataFrame(
        {k: v[present] for k, v in data.items()}, index=pd.Index(labels[present], dtype=object)
    )


def _level_cells(
    codes: np.ndarray, labels: np.ndarray, cells: np.ndarray, n_cells: int
) -> pd.Series:
    """Sparse counts of (level, cell) pairs: slice histograms / confusion matrices."""
    key = codes * n_cells + cells
    uniq, counts = np.unique(key, return_counts=True)
    index = pd.MultiIndex.from_arrays(
        [pd.Index(labels[uniq // n_cells], dtype=object), pd.Index(uniq % n_cells, dtype=np.int64)]
    )
    return pd.Series(counts.astype(np.int64), index=index)


def _chunk(part: pd.DataFrame, spec: _Spec) -> dict[str, Any]:
    """Reduce one partition to a small, fixed-size partial (see the module docstring)."""
    if spec.task == "binary":
        return _binary_chunk(part, spec)
    if spec.task == "multiclass":
        return _multiclass_chunk(part, spec)
    return _regression_chunk(part, spec)


def _binary_chunk(part: pd.DataFrame, spec: _Spec) -> dict[str, Any]:
    y = _as_float(part["y_true"])
    p = _as_float(part["proba"])
    valid = ~(np.isnan(y) | np.isnan(p))
    bad = valid & (y != 0) & (y != 1)
    keep = valid & ~bad
    y, p = y[keep], p[keep]
    n_clipped = int(np.count_nonzero((p < 0) | (p > 1)))
    p = np.clip(p, 0.0, 1.0)
    yi = y.astype(np.int64)
    b = _bin_index(p)
    pos = yi == 1
    p_true = np.clip(np.where(pos, p, 1.0 - p), _EPS, 1 - _EPS)
    calib_id = np.searchsorted(np.linspace(0.0, 1.0, spec.n_bins + 1)[1:-1], p)
    out: dict[str, Any] = {
        "n": int(len(y)),
        "n_dropped": int(np.count_nonzero(~valid)),
        "n_bad_label": int(np.count_nonzero(bad)),
        "n_clipped": n_clipped,
        "hist": np.bincount(2 * b + yi, minlength=2 * N_SCORE_BINS),
        "thr_tp": np.array(
            [np.count_nonzero(pos & (p >= t)) for t in spec.fixed_thresholds], dtype=np.int64
        ),
        "thr_fp": np.array(
            [np.count_nonzero(~pos & (p >= t)) for t in spec.fixed_thresholds], dtype=np.int64
        ),
        "log_loss_sum": float(-np.log(p_true).sum()),
        "brier_sum": float(((p - y) ** 2).sum()),
        "calib_count": np.bincount(calib_id, minlength=spec.n_bins),
        "calib_sum_p": np.bincount(calib_id, weights=p, minlength=spec.n_bins),
        "calib_sum_y": np.bincount(calib_id, weights=y, minlength=spec.n_bins),
    }
    if spec.slices:
        predicted = p >= spec.threshold
        cells = (b // _SLICE_COARSEN) * 2 + yi
        n_cells = 2 * -(-N_SCORE_BINS // _SLICE_COARSEN)
        out["slices"] = {}
        for name in spec.slices:
            codes, labels = _level_codes(part[name])
            codes = codes[keep]
            stats = _level_frame(
                codes,
                labels,
                {
                    "pos": y,
                    "tp": (pos & predicted).astype(np.float64),
                    "fp": (~pos & predicted).astype(np.float64),
                },
            )
            out["slices"][name] = {
                "stats": stats,
                "cells": _level_cells(codes, labels, cells, n_cells),
            }
    return out


def _multiclass_chunk(part: pd.DataFrame, spec: _Spec) -> dict[str, Any]:
    k = spec.k
    y = _as_float(part["y_true"])
    proba = part[list(spec.proba_cols)].to_numpy(dtype=np.float64, na_value=np.nan)
    valid = ~(np.isnan(y) | np.isnan(proba).any(axis=1))
    bad = valid & ((y < 0) | (y >= k) | (y != np.floor(y)))
    keep = valid & ~bad
    y, proba = y[keep].astype(np.int64), proba[keep]
    n_clipped = int(np.count_nonzero((proba < 0) | (proba > 1)))
    proba = np.clip(proba, 0.0, 1.0)
    pred = np.argmax(proba, axis=1) if len(y) else np.zeros(0, dtype=np.int64)
    p_true = np.clip(proba[np.arange(len(y)), y], _EPS, 1 - _EPS)
    bins_per_class = -(-N_SCORE_BINS // spec.mc_coarsen)
    hist = np.zeros(k * bins_per_class * 2, dtype=np.int64)
    width = 2 * bins_per_class
    for c in range(k):
        # one-vs-rest histogram of proba_c: cell = bin * 2 + (y == c)
        cells = _bin_index(proba[:, c], spec.mc_coarsen) * 2 + (y == c)
        hist[c * width : (c + 1) * width] = np.bincount(cells, minlength=width)
    out: dict[str, Any] = {
        "n": int(len(y)),
        "n_dropped": int(np.count_nonzero(~valid)),
        "n_bad_label": int(np.count_nonzero(bad)),
        "n_clipped": n_clipped,
        "confusion": np.bincount(y * k + pred, minlength=k * k),
        "log_loss_sum": float(-np.log(p_true).sum()),
        "hist": hist,
    }
    if spec.slices:
        out["slices"] = {}
        for name in spec.slices:
            codes, labels = _level_codes(part[name])
            codes = codes[keep]
            stats = _level_frame(codes, labels, {"correct": (y == pred).astype(np.float64)})
            out["slices"][name] = {
                "stats": stats,
                "cells": _level_cells(codes, labels, y * k + pred, k * k),
            }
    return out


def _sketch(x: np.ndarray) -> dict[str, Any]:
    """Log-bucket sketch of ``x``: bucket ``key`` holds ``gamma**(key-1) < |x| <= gamma**key``."""
    out: dict[str, Any] = {"zero": int(np.count_nonzero(x == 0))}
    for sign, values in (("pos", x[x > 0]), ("neg", -x[x < 0])):
        keys = np.ceil(np.log(values) / _LOG_GAMMA).astype(np.int64)
        uniq, counts = np.unique(keys, return_counts=True)
        out[sign] = (uniq, counts.astype(np.int64))
    return out


def _regression_chunk(part: pd.DataFrame, spec: _Spec) -> dict[str, Any]:
    y = _as_float(part["y_true"])
    yhat = _as_float(part["y_pred"])
    valid = np.isfinite(y) & np.isfinite(yhat)
    y, yhat = y[valid], yhat[valid]
    r = y - yhat
    abs_r = np.abs(r)
    nonzero = y != 0
    n = len(y)
    mean = float(y.mean()) if n else 0.0
    out: dict[str, Any] = {
        "n": int(n),
        "n_dropped": int(np.count_nonzero(~valid)),
        "y_sum": float(y.sum()),
        "y_m2": float(((y - mean) ** 2).sum()),
        "sse": float((r**2).sum()),
        "sae": float(abs_r.sum()),
        # scikit-learn's mean_absolute_percentage_error divides by max(|y|, eps)
        "ape_sum": float((abs_r[nonzero] / np.maximum(np.abs(y[nonzero]), _EPS)).sum()),
        "n_zero_y": int(np.count_nonzero(~nonzero)),
        "abs_err_max": float(abs_r.max()) if n else 0.0,
        "res_max": float(r.max()) if n else -math.inf,
        "res_min": float(r.min()) if n else math.inf,
        "sketch": _sketch(r),
    }
    if spec.slices:
        out["slices"] = {}
        for name in spec.slices:
            codes, labels = _level_codes(part[name])
            codes = codes[valid]
            n_lev = np.bincount(codes, minlength=len(labels))
            sum_y = np.bincount(codes, weights=y, minlength=len(labels))
            lev_mean = sum_y / np.maximum(n_lev, 1)
            stats = _level_frame(
                codes,
                labels,
                {"sse": r**2, "sae": abs_r, "sum_y": y, "m2": (y - lev_mean[codes]) ** 2},
            )
            out["slices"][name] = {"stats": stats, "cells": None}
    return out


# --- merging ------------------------------------------------------------------------------------
def _merge_levels(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Sum per-level stats; ``m2`` (sum of squares about the level mean) merges by Chan's rule."""
    df = pd.concat(frames)
    if "m2" in df.columns and len(df):
        g = df.groupby(level=0, sort=False)
        grand_mean = g["sum_y"].transform("sum") / g["n"].transform("sum")
        df = df.assign(m2=df["m2"] + df["n"] * (df["sum_y"] / df["n"] - grand_mean) ** 2)
    return df.groupby(level=0, sort=False).sum()


def _merge_cells(series: Sequence[pd.Series | None]) -> pd.Series | None:
    present = [s for s in series if s is not None]
    if not present:
        return None
    return pd.concat(present).groupby(level=[0, 1], sort=False).sum()


def _merge_sparse(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    keys = np.concatenate([k for k, _ in pairs])
    counts = np.concatenate([c for _, c in pairs])
    uniq, inverse = np.unique(keys, return_inverse=True)
    return uniq, np.bincount(inverse, weights=counts, minlength=len(uniq)).astype(np.int64)


def _merge(*parts: dict[str, Any]) -> dict[str, Any]:
    """Merge partials (n-ary, associative): the combine step of the tree reduction."""
    if len(parts) == 1:
        return parts[0]
    out: dict[str, Any] = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        if key == "slices":
            out[key] = {}
            for name in values[0]:
                stats = _merge_levels([v[name]["stats"] for v in values])
                if len(stats) > _MAX_SLICE_LEVELS:
                    raise ValueError(
                        f"slice column {name!r} has more than {_MAX_SLICE_LEVELS} distinct levels; "
                        "slices are meant for low-cardinality columns: bucket the column first or "
                        "leave it out of `slices`"
                    )
                out[key][name] = {
                    "stats": stats,
                    "cells": _merge_cells([v[name]["cells"] for v in values]),
                }
        elif key == "sketch":
            out[key] = {
                "zero": sum(v["zero"] for v in values),
                "pos": _merge_sparse([v["pos"] for v in values]),
                "neg": _merge_sparse([v["neg"] for v in values]),
            }
        elif key == "y_m2":
            # Chan et al.: M2 = sum(M2_i + n_i (mean_i - mean)^2); sums of squares would cancel
            n_tot = sum(p["n"] for p in parts)
            if n_tot == 0:
                out[key] = 0.0
                continue
            grand = sum(p["y_sum"] for p in parts) / n_tot
            out[key] = float(
                sum(
                    p["y_m2"] + p["n"] * (p["y_sum"] / p["n"] - grand) ** 2 for p in parts if p["n"]
                )
            )
        elif key.endswith("_max"):
            out[key] = max(values)
        elif key.endswith("_min"):
            out[key] = min(values)
        else:
            out[key] = sum(values[1:], start=values[0])
    return out


def _tree_reduce(parts: list[Any], split_every: int = 8) -> Any:
    """Merge delayed partials ``split_every`` at a time until one remains (on the cluster)."""
    import dask

    merge = dask.delayed(_merge, pure=True)
    while len(parts) > 1:
        parts = [merge(*parts[i : i + split_every]) for i in range(0, len(parts), split_every)]
    return parts[0]


# --- turning merged partials into metrics --------------------------------------------------------
def _num(x: float | int | None) -> float | None:
    """Plain float, or None for undefined (NaN/inf) values: JSON has no NaN."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _div(a: float, b: float) -> float | None:
    return float(a) / float(b) if b else None


class _Notes(list):
    def add(self, text: str) -> None:
        if text not in self:
            self.append(text)


def _common_notes(acc: Mapping[str, Any], notes: _Notes, task: str) -> None:
    if acc.get("n_bad_label"):
        expected = "0/1" if task == "binary" else "integer codes 0..k-1"
        raise ValueError(
            f"column 'y_true' holds {acc['n_bad_label']} values that are not {expected} "
            f"({task} task); encode the target as codes and pass the labels as class_names"
        )
    if acc.get("n_dropped"):
        what = (
            "y_true or y_pred missing/infinite"
            if task == "regression"
            else "y_true or a probability missing"
        )
        notes.add(f"{acc['n_dropped']} rows skipped: {what}")
    if acc.get("n_clipped"):
        notes.add(f"{acc['n_clipped']} probabilities outside [0, 1] were clipped into it")
    if acc["n"] == 0:
        notes.add("no rows to evaluate: every metric is undefined")


def _roc_auc_hist(pos: np.ndarray, neg: np.ndarray) -> tuple[float | None, float | None]:
    """ROC AUC from per-bin class counts (ascending score bins) and its worst-case error."""
    P, N = float(pos.sum()), float(neg.sum())
    if P == 0 or N == 0:
        return None, None
    pos, neg = pos.astype(np.float64), neg.astype(np.float64)
    neg_below = np.cumsum(neg) - neg
    auc = float((pos * (neg_below + 0.5 * neg)).sum() / (P * N))
    return auc, float(0.5 * (pos * neg).sum() / (P * N))


def _desc_counts(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bins in descending score order with data: (bin index, cumulative TP, cumulative FP)."""
    idx = np.flatnonzero((pos + neg) > 0)[::-1]
    return idx, np.cumsum(pos[idx]).astype(np.float64), np.cumsum(neg[idx]).astype(np.float64)


def _average_precision_hist(pos: np.ndarray, neg: np.ndarray) -> tuple[float | None, float | None]:
    """Average precision (scikit-learn's step-wise definition) and its worst-case binning error.

    Within a bin holding ``tp`` positives and ``fp`` negatives after ``TP0``/``FP0`` above it,
    the exact precision at any of its positives lies in ``[(TP0+1)/(TP0+1+FP0+fp),
    (TP0+tp)/(TP0+tp+FP0)]``; the histogram uses ``(TP0+tp)/(TP0+tp+FP0+fp)``.
    """
    P = float(pos.sum())
    if P == 0:
        return None, None
    idx, tp, fp = _desc_counts(pos, neg)
    d_tp = pos[idx].astype(np.float64)
    d_fp = neg[idx].astype(np.float64)
    has = d_tp > 0
    tp, fp, d_tp, d_fp = tp[has], fp[has], d_tp[has], d_fp[has]
    prec = tp / (tp + fp)
    tp0, fp0 = tp - d_tp, fp - d_fp
    hi = tp / (tp + fp0)
    lo = (tp0 + 1) / (tp0 + 1 + fp)
    err = (d_tp / P) * np.maximum(hi - prec, prec - lo)
    return float((d_tp / P * prec).sum()), float(err.sum())


def _point(
    tp: float, fp: float, P: float, N: float, threshold: float | None = None
) -> dict[str, Any]:
    """Metrics at one operating point from its confusion counts (None where undefined)."""
    n = P + N
    tn, fn = N - fp, P - tp
    out: dict[str, Any] = {} if threshold is None else {"threshold": _num(threshold)}
    out.update(
        accuracy=_div(tp + tn, n),
        precision=_div(tp, tp + fp),
        recall=_div(tp, P),
        f1=_div(2 * tp, 2 * tp + fp + fn),
        tn=int(tn),
        fp=int(fp),
        fn=int(fn),
        tp=int(tp),
    )
    return out


def _point_notes(pt: Mapping[str, Any], where: str, notes: _Notes) -> None:
    if pt["precision"] is None:
        notes.add(f"precision {where} is undefined: no row is predicted positive")
    if pt["recall"] is None:
        notes.add(f"recall {where} is undefined: no positive rows")


def _downsample(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """At most ``k`` indices, evenly spaced along the curve's length, both ends kept."""
    if len(x) <= k:
        return np.arange(len(x))
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))])
    if arc[-1] == 0:
        return np.array([0, len(x) - 1])
    idx = np.searchsorted(arc, np.linspace(0.0, arc[-1], k))
    return np.unique(np.clip(idx, 0, len(x) - 1))


def _lst(a: np.ndarray) -> list[float]:
    return [float(v) for v in a]


def _binary_operating_points(
    pos: np.ndarray, neg: np.ndarray, spec: _Spec, notes: _Notes
) -> tuple[dict[str, Any], dict[str, Any]]:
    """F1-optimal / min_precision / min_recall thresholds on the grid, and the curves."""
    P, N = float(pos.sum()), float(neg.sum())
    idx, tp, fp = _desc_counts(pos, neg)
    thr = SCORE_EDGES[idx]
    out: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    if P == 0 or len(idx) == 0:
        notes.add("no positive rows: threshold search and ROC/PR curves are undefined")
        out["f1_optimal"] = None
        if spec.min_precision is not None:
            out["min_precision"] = None
        if spec.min_recall is not None:
            out["min_recall"] = None
        return out, {"roc": None, "pr": None}
    precision = tp / (tp + fp)  # tp + fp > 0 on bins with data
    recall = tp / P
    f1 = 2 * tp / (tp + fp + P)
    best = int(np.argmax(f1))  # ties: the highest threshold (fewest positives flagged)
    out["f1_optimal"] = _point(tp[best], fp[best], P, N, thr[best])
    if spec.min_precision is not None:
        ok = np.flatnonzero(precision >= spec.min_precision)
        if len(ok):
            # recall only grows as the threshold falls: best recall = last qualifying threshold
            i = ok[np.lexsort((precision[ok], recall[ok]))[-1]]
            out["min_precision"] = _point(tp[i], fp[i], P, N, thr[i])
        else:
            out["min_precision"] = None
            notes.add(f"no threshold reaches precision >= {spec.min_precision}")
    if spec.min_recall is not None:
        ok = np.flatnonzero(recall >= spec.min_recall)
        if len(ok):
            i = ok[np.lexsort((recall[ok], precision[ok]))[-1]]
            out["min_recall"] = _point(tp[i], fp[i], P, N, thr[i])
        else:  # unreachable in practice: threshold 0 gives recall 1
            out["min_recall"] = None
            notes.add(f"no threshold reaches recall >= {spec.min_recall}")

    fpr = np.concatenate([[0.0], fp / N]) if N else np.concatenate([[0.0], np.zeros_like(fp)])
    tpr = np.concatenate([[0.0], recall])
    roc_thr = np.concatenate([[np.nan], thr])
    keep = _downsample(fpr, tpr, spec.curve_points)
    curves["roc"] = {
        "fpr": _lst(fpr[keep]),
        "tpr": _lst(tpr[keep]),
        "threshold": [_num(t) for t in roc_thr[keep]],
    }
    keep = _downsample(recall, precision, spec.curve_points)
    curves["pr"] = {
        "precision": _lst(precision[keep]),
        "recall": _lst(recall[keep]),
        "threshold": _lst(thr[keep]),
    }
    return out, curves


def _crowding_note(name: str, bound: float | None, notes: _Notes) -> None:
    # realistic scores stay far below this; only scores crowded into a few bins (e.g. all
    # within 1e-5 of each other) get here, and then the caller should know
    if bound is not None and bound > _CROWDING_NOTE:
        notes.add(
            f"{name} may be off by up to {bound:.1e}: the scores crowd into few of the "
            f"{N_SCORE_BINS} histogram bins (worst case; the typical error is far smaller)"
        )


def _finalize_binary(acc: dict[str, Any], spec: _Spec) -> dict[str, Any]:
    notes = _Notes()
    _common_notes(acc, notes, "binary")
    hist = acc["hist"].reshape(-1, 2)
    neg, pos = hist[:, 0], hist[:, 1]
    n = acc["n"]
    P, N = int(pos.sum()), int(neg.sum())
    out: dict[str, Any] = {
        "task": "binary",
        "n": n,
        "positives": P,
        "negatives": N,
        "prevalence": _div(P, n),
    }
    if spec.class_names:
        out["class_names"] = list(spec.class_names)

    points = {
        str(t): _point(tp, fp, P, N, t)
        for t, tp, fp in zip(spec.fixed_thresholds, acc["thr_tp"], acc["thr_fp"], strict=True)
    }
    job = points[str(spec.threshold)]
    _point_notes(job, f"at threshold {spec.threshold}", notes)
    for name in ("accuracy", "precision", "recall", "f1"):
        out[name] = job[name]
    out["confusion"] = {k: job[k] for k in ("tn", "fp", "fn", "tp")}

    auc, auc_err = _roc_auc_hist(pos, neg)
    ap, ap_err = _average_precision_hist(pos, neg)
    if auc is None:
        notes.add("roc_auc is undefined: y_true holds a single class")
    if ap is None:
        notes.add("pr_auc is undefined: no positive rows")
    out["roc_auc"], out["pr_auc"] = auc, ap
    out["log_loss"] = _div(acc["log_loss_sum"], n)
    out["brier"] = _div(acc["brier_sum"], n)

    searched, curves = _binary_operating_points(pos, neg, spec, notes)
    out["thresholds"] = {**points, **searched}
    chosen, source = spec.threshold, "threshold"
    for name in ("min_precision", "min_recall"):
        if searched.get(name) is not None:
            chosen, source = searched[name]["threshold"], name
            break
    out["chosen_threshold"] = chosen
    out["chosen_threshold_source"] = source

    count = acc["calib_count"]
    has = count > 0
    curves["calibration"] = {
        "mean_predicted": _lst(acc["calib_sum_p"][has] / count[has]),
        "fraction_positive": _lst(acc["calib_sum_y"][has] / count[has]),
        "count": [int(c) for c in count[has]],
        "n_bins": spec.n_bins,
    }
    out["curves"] = curves
    out["approximation"] = {
        "score_bins": N_SCORE_BINS,
        "roc_auc_max_error": auc_err,
        "pr_auc_max_error": ap_err,
    }
    _crowding_note("roc_auc", auc_err, notes)
    _crowding_note("pr_auc", ap_err, notes)
    if spec.slices:
        out["slices"] = _finalize_slices(acc["slices"], spec, notes)
    out["notes"] = list(notes)
    return out


def _class_scores(conf: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision/recall/F1 (NaN where undefined) and supports from a confusion matrix."""
    tp = np.diag(conf).astype(np.float64)
    support = conf.sum(axis=1).astype(np.float64)
    predicted = conf.sum(axis=0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / predicted
        recall = tp / support
        f1 = 2 * tp / (support + predicted)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support,
        "predicted": predicted,
    }


def _averages(scores: Mapping[str, np.ndarray]) -> dict[str, float | None]:
    """Macro/weighted averages as scikit-learn's defaults compute them.

    Like ``labels=None``: classes absent from both y_true and the predictions are left out;
    an undefined precision/recall counts as 0 (``zero_division="warn"`` behaves as 0).
    """
    present = (scores["support"] + scores["predicted"]) > 0
    w = scores["support"][present]
    out: dict[str, float | None] = {}
    for name in ("precision", "recall", "f1"):
        v = np.nan_to_num(scores[name][present], nan=0.0)
        out[f"{name}_macro"] = float(v.mean()) if len(v) else None
        out[f"{name}_weighted"] = float((v * w).sum() / w.sum()) if w.sum() else None
    return out


def _finalize_multiclass(acc: dict[str, Any], spec: _Spec) -> dict[str, Any]:
    notes = _Notes()
    _common_notes(acc, notes, "multiclass")
    k = spec.k
    names = list(spec.class_names) if spec.class_names else [str(c) for c in range(k)]
    conf = acc["confusion"].reshape(k, k)
    n = acc["n"]
    scores = _class_scores(conf)
    out: dict[str, Any] = {"task": "multiclass", "n": n, "n_classes": k, "class_names": names}
    out["accuracy"] = _div(np.trace(conf), n)
    out.update(_averages(scores))

    hist = acc["hist"].reshape(k, -1, 2)
    aucs = np.full(k, np.nan)
    errs = np.zeros(k)
    for c in range(k):
        auc, err = _roc_auc_hist(hist[c, :, 1], hist[c, :, 0])
        if auc is not None:
            aucs[c], errs[c] = auc, err
    defined = ~np.isnan(aucs)
    if not defined.all() and n:
        missing = [names[c] for c in np.flatnonzero(~defined)]
        notes.add(
            f"one-vs-rest roc_auc undefined for classes {missing} (absent or alone in y_true); "
            "averages use the other classes"
        )
    support = scores["support"]
    out["roc_auc_ovr"] = float(aucs[defined].mean()) if defined.any() else None
    out["roc_auc_ovr_weighted"] = (
        float((aucs[defined] * support[defined]).sum() / support[defined].sum())
        if defined.any()
        else None
    )
    out["log_loss"] = _div(acc["log_loss_sum"], n)

    per_class = {}
    for c, name in enumerate(names):
        per_class[name] = {
            "precision": _num(scores["precision"][c]),
            "recall": _num(scores["recall"][c]),
            "f1": _num(scores["f1"][c]),
            "roc_auc": _num(aucs[c]),
            "support": int(support[c]),
        }
        if scores["predicted"][c] == 0 and n:
            notes.add(f"precision of class {name!r} is undefined (never predicted); averaged as 0")
    out["per_class"] = per_class
    out["confusion"] = [[int(v) for v in row] for row in conf]
    out["class_balance"] = {
        name: {"count": int(support[c]), "fraction": _div(support[c], n)}
        for c, name in enumerate(names)
    }
    bins_per_class = hist.shape[1]
    out["approximation"] = {
        "score_bins_per_class": bins_per_class,
        "roc_auc_max_error": float(errs[defined].max()) if defined.any() else None,
    }
    _crowding_note("roc_auc_ovr", out["approximation"]["roc_auc_max_error"], notes)
    if spec.slices:
        out["slices"] = _finalize_slices(acc["slices"], spec, notes)
    out["notes"] = list(notes)
    return out


def _sketch_quantiles(
    sketch: Mapping[str, Any], n: int, lo: float, hi: float
) -> dict[str, float | None]:
    if n == 0:
        return {f"p{int(q * 100)}": None for q in _QUANTILES}
    pos_k, pos_c = sketch["pos"]
    neg_k, neg_c = sketch["neg"]
    # ascending residual order: large negatives first, then zeros, then positives
    est = 2.0 * _GAMMA ** np.concatenate([neg_k[::-1], pos_k]).astype(np.float64) / (_GAMMA + 1.0)
    values = np.concatenate([-est[: len(neg_k)], [0.0], est[len(neg_k) :]])
    counts = np.concatenate([neg_c[::-1], [sketch["zero"]], pos_c])
    cum = np.cumsum(counts)
    out = {}
    for q in _QUANTILES:
        i = int(np.searchsorted(cum, q * (n - 1), side="right"))
        out[f"p{int(q * 100)}"] = float(np.clip(values[min(i, len(values) - 1)], lo, hi))
    return out


def _finalize_regression(acc: dict[str, Any], spec: _Spec) -> dict[str, Any]:
    notes = _Notes()
    _common_notes(acc, notes, "regression")
    n = acc["n"]
    out: dict[str, Any] = {"task": "regression", "n": n}
    mse = _div(acc["sse"], n)
    out["mse"] = mse
    out["rmse"] = math.sqrt(mse) if mse is not None else None
    out["mae"] = _div(acc["sae"], n)
    if n and acc["y_m2"] > 0:
        out["r2"] = 1.0 - acc["sse"] / acc["y_m2"]
    else:
        out["r2"] = None
        if n:
            notes.add("r2 is undefined: y_true is constant")
    if acc["n_zero_y"]:
        out["mape"] = None
        notes.add(f"mape is undefined: {acc['n_zero_y']} rows have y_true == 0")
    else:
        out["mape"] = _div(acc["ape_sum"], n)
    out["max_error"] = acc["abs_err_max"] if n else None
    out["residual_quantiles"] = _sketch_quantiles(acc["sketch"], n, acc["res_min"], acc["res_max"])
    out["residual_min"] = _num(acc["res_min"]) if n else None
    out["residual_max"] = _num(acc["res_max"]) if n else None
    out["approximation"] = {
        "residual": "y_true - y_pred",
        "residual_quantile_relative_error": RESIDUAL_RELATIVE_ACCURACY,
    }
    if spec.slices:
        out["slices"] = _finalize_slices(acc["slices"], spec, notes)
    out["notes"] = list(notes)
    return out


def _slice_metrics(stats: pd.Series, cells: pd.Series | None, spec: _Spec) -> dict[str, Any]:
    """Headline metrics of one slice level from its merged stats row and cells."""
    n = float(stats["n"])
    if spec.task == "binary":
        P = float(stats["pos"])
        pt = _point(float(stats["tp"]), float(stats["fp"]), P, n - P)
        hist = np.zeros((-(-N_SCORE_BINS // _SLICE_COARSEN), 2), dtype=np.int64)
        if cells is not None and len(cells):
            hist.reshape(-1)[cells.index.to_numpy(dtype=np.int64)] = cells.to_numpy()
        auc, _ = _roc_auc_hist(hist[:, 1], hist[:, 0])
        return {
            "n": int(n),
            "positives": int(P),
            "accuracy": pt["accuracy"],
            "precision": pt["precision"],
            "recall": pt["recall"],
            "f1": pt["f1"],
            "roc_auc": auc,
        }
    if spec.task == "multiclass":
        k = spec.k
        conf = np.zeros(k * k, dtype=np.int64)
        if cells is not None and len(cells):
            conf[cells.index.to_numpy(dtype=np.int64)] = cells.to_numpy()
        avg = _averages(_class_scores(conf.reshape(k, k)))
        return {
            "n": int(n),
            "accuracy": _div(float(stats["correct"]), n),
            "f1_macro": avg["f1_macro"],
        }
    m2 = float(stats["m2"])
    return {
        "n": int(n),
        "rmse": math.sqrt(float(stats["sse"]) / n),
        "mae": float(stats["sae"]) / n,
        "r2": 1.0 - float(stats["sse"]) / m2 if m2 > 0 else None,
    }


def _finalize_slices(slices: Mapping[str, Any], spec: _Spec, notes: _Notes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, merged in slices.items():
        stats: pd.DataFrame = merged["stats"]
        cells: pd.Series | None = merged["cells"]
        labels = [lev for lev in stats.index if lev != MISSING]
        # deterministic order: by count, then label
        labels.sort(key=lambda lev: (-stats.at[lev, "n"], lev))
        top = labels[: spec.top_levels]
        rest = labels[spec.top_levels :]
        mapping = {lev: OTHER for lev in rest}
        if rest:
            notes.add(
                f"slice {name!r}: {len(labels)} levels, {len(rest)} least frequent pooled as {OTHER!r}"
            )
            stats = _merge_levels([stats.rename(index=mapping)])
            if cells is not None:
                cells = _merge_cells([cells.rename(index=mapping, level=0)])
        order = top + ([OTHER] if rest else []) + ([MISSING] if MISSING in stats.index else [])
        per_level = {}
        for lev in order:
            lev_cells = (
                cells.xs(lev, level=0)
                if cells is not None and lev in cells.index.get_level_values(0)
                else None
            )
            per_level[lev] = _slice_metrics(stats.loc[lev], lev_cells, spec)
        out[name] = per_level
    return out


def _finalize(acc: dict[str, Any], spec: _Spec) -> dict[str, Any]:
    """The last task of the graph: merged partial -> JSON-able metrics dict."""
    if spec.task == "binary":
        return _finalize_binary(acc, spec)
    if spec.task == "multiclass":
        return _finalize_multiclass(acc, spec)
    return _finalize_regression(acc, spec)


# --- public API ---------------------------------------------------------------------------------
def _build_spec(
    columns: Sequence[str],
    task: str,
    *,
    class_names: Sequence[Any] | None,
    threshold: float,
    min_precision: float | None,
    min_recall: float | None,
    slices: Iterable[str],
    top_levels: int,
    n_bins: int,
    curve_points: int,
) -> _Spec:
    """Validate the arguments against the frame's columns (no data is read)."""
    columns = [str(c) for c in columns]
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not one of {TASKS}")
    expected = {
        "binary": ["y_true", "proba"],
        "regression": ["y_true", "y_pred"],
        "multiclass": ["y_true"],
    }[task]
    proba_cols: tuple[str, ...] = ()
    if task == "multiclass":
        codes = sorted(int(m.group(1)) for c in columns if (m := re.fullmatch(r"proba_(\d+)", c)))
        if len(codes) < 2 or codes != list(range(len(codes))):
            raise ValueError(
                f"multiclass prediction frame needs columns proba_0 .. proba_{{k-1}} (k >= 2); "
                f"found {[f'proba_{c}' for c in codes] or 'none'} among {columns}"
            )
        proba_cols = tuple(f"proba_{c}" for c in codes)
    missing = [c for c in expected if c not in columns]
    if missing:
        raise ValueError(
            f"prediction frame for task {task!r} lacks columns {missing}; it has {columns}"
        )
    slices = tuple(slices)
    absent = [s for s in slices if s not in columns]
    if absent:
        raise ValueError(f"slices {absent} are not columns of the prediction frame {columns}")
    k = len(proba_cols) if task == "multiclass" else 2
    if class_names is not None and task != "regression" and len(class_names) != k:
        raise ValueError(
            f"class_names has {len(class_names)} names but the {task} frame has {k} classes"
        )
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold={threshold} must be in (0, 1]")
    for name, v in (("min_precision", min_precision), ("min_recall", min_recall)):
        if v is not None and not 0.0 < v <= 1.0:
            raise ValueError(f"{name}={v} must be in (0, 1] or None")
    if top_levels < 1 or n_bins < 1 or curve_points < 2:
        raise ValueError(
            f"need top_levels >= 1, n_bins >= 1, curve_points >= 2; got {top_levels}, {n_bins}, {curve_points}"
        )
    # coarsen per-class grids by a power of two so classes x bins stays under the budget
    coarsen = 1
    while task == "multiclass" and k * -(-N_SCORE_BINS // coarsen) > _MC_CELL_BUDGET:
        coarsen *= 2
    needed = tuple(dict.fromkeys([*expected, *proba_cols, *slices]))
    return _Spec(
        task=task,
        proba_cols=proba_cols,
        class_names=tuple(str(c) for c in class_names) if class_names is not None else (),
        threshold=float(threshold),
        fixed_thresholds=tuple(dict.fromkeys([float(threshold), 0.5])),
        min_precision=min_precision,
        min_recall=min_recall,
        slices=slices,
        top_levels=int(top_levels),
        n_bins=int(n_bins),
        curve_points=int(curve_points),
        mc_coarsen=coarsen,
        needed=needed,
    )


def evaluation_graph(
    pred: Any,
    task: str,
    *,
    class_names: Sequence[Any] | None = None,
    threshold: float = 0.5,
    min_precision: float | None = None,
    min_recall: float | None = None,
    slices: Iterable[str] = (),
    top_levels: int = 10,
    n_bins: int = 10,
    curve_points: int = 200,
    split_every: int = 8,
) -> Any:
    """Lazy version of :func:`evaluate_predictions`: one ``Delayed`` yielding the metrics dict.

    Use it to evaluate several prediction frames (a leaderboard, train and holdout) in the
    same ``dask.compute`` call. Arguments are those of :func:`evaluate_predictions`, plus
    ``split_every``, the fan-in of the tree reduction.

    Returns
    -------
    dask.delayed.Delayed
        Partition tasks -> merge tasks (``split_every`` partials each) -> one final task.

    Examples
    --------
    >>> import dask, pandas as pd
    >>> frame = pd.DataFrame({"y_true": [0, 1, 1, 0], "proba": [0.2, 0.9, 0.6, 0.4]})
    >>> holdout, train = dask.compute(evaluation_graph(frame, "binary"),
    ...                               evaluation_graph(frame, "binary"))
    >>> holdout["roc_auc"]
    1.0
    """
    import dask
    import dask.dataframe as dd

    if isinstance(pred, pd.DataFrame):
        pred = dd.from_pandas(pred, npartitions=1, sort=False)
    if not isinstance(pred, dd.DataFrame):
        raise TypeError(f"pred must be a dask or pandas DataFrame; got {type(pred).__name__}")
    spec = _build_spec(
        list(pred.columns),
        task,
        class_names=class_names,
        threshold=threshold,
        min_precision=min_precision,
        min_recall=min_recall,
        slices=slices,
        top_levels=top_levels,
        n_bins=n_bins,
        curve_points=curve_points,
    )
    # project first so a Parquet source reads only the columns the metrics need
    parts = pred[list(spec.needed)].to_delayed()
    chunk = dask.delayed(_chunk, pure=True)
    partials = [chunk(part, spec) for part in parts]
    return dask.delayed(_finalize, pure=True)(_tree_reduce(partials, split_every), spec)


def evaluate_predictions(
    pred: Any,
    task: str,
    *,
    class_names: Sequence[Any] | None = None,
    threshold: float = 0.5,
    min_precision: float | None = None,
    min_recall: float | None = None,
    slices: Iterable[str] = (),
    top_levels: int = 10,
    n_bins: int = 10,
    curve_points: int = 200,
) -> dict[str, Any]:
    """Metrics of a prediction frame, computed on the cluster in one ``dask.compute``.

    Each partition becomes a small partial (confusion counts, sums, score histograms, a
    residual sketch); partials are merged by tree reduction and one final task builds the
    result, so only the returned dict reaches the driver. See the module docstring for which
    metrics are exact and the error bounds of the others.

    Parameters
    ----------
    pred : dask.dataframe.DataFrame or pandas.DataFrame
        Row-aligned predictions. binary: ``y_true`` (0/1), ``proba`` (P(class 1));
        multiclass: ``y_true`` (codes 0..k-1), ``proba_0`` .. ``proba_{k-1}``;
        regression: ``y_true``, ``y_pred``. Other columns may serve as ``slices``.
        A pandas frame is one partition. Rows with a missing label/score are skipped (noted).
    task : {"binary", "multiclass", "regression"}
    class_names : sequence, optional
        Original label of each code (index = code), used as keys in the output.
    threshold : float, default 0.5
        Decision threshold: a row is positive when ``proba >= threshold``. The top-level
        accuracy/precision/recall/f1/confusion (and the slices) use it.
    min_precision, min_recall : float, optional
        Also search the threshold with the best recall at precision >= ``min_precision``
        (best precision at recall >= ``min_recall``); it becomes ``chosen_threshold``
        (``min_precision`` wins when both are given). None with a note if unreachable.
    slices : iterable of str
        Columns to slice by; per level the headline metrics, for the ``top_levels`` most
        frequent levels, the rest pooled as ``"__other__"``, missing as ``"__missing__"``.
    top_levels : int, default 10
    n_bins : int, default 10
        Uniform bins of the calibration curve (as ``sklearn.calibration.calibration_curve``).
    curve_points : int, default 200
        Maximum points per ROC/PR curve (evenly spaced along the curve).

    Returns
    -------
    dict
        JSON-able (plain floats/ints/str/lists, None where undefined, reasons in ``notes``).
        binary: ``n, positives, accuracy, precision, recall, f1, roc_auc, pr_auc, log_loss,
        brier, confusion, thresholds, chosen_threshold, curves, approximation``;
        multiclass: ``n, accuracy, {precision,recall,f1}_{macro,weighted}, roc_auc_ovr,
        roc_auc_ovr_weighted, log_loss, per_class, confusion, class_balance``;
        regression: ``n, mse, rmse, mae, r2, mape, max_error, residual_quantiles``;
        plus ``slices`` when asked, and ``notes``.

    Raises
    ------
    ValueError
        Missing columns, bad arguments, or (when computed) labels that are not codes.

    Examples
    --------
    >>> import pandas as pd
    >>> frame = pd.DataFrame({"y_true": [0, 0, 1, 1], "proba": [0.1, 0.6, 0.4, 0.8]})
    >>> m = evaluate_predictions(frame, "binary")
    >>> m["roc_auc"], m["accuracy"], m["confusion"]
    (0.75, 0.5, {'tn': 1, 'fp': 1, 'fn': 1, 'tp': 1})
    >>> m["thresholds"]["f1_optimal"]["f1"]
    0.8
    """
    import dask

    graph = evaluation_graph(
        pred,
        task,
        class_names=class_names,
        threshold=threshold,
        min_precision=min_precision,
        min_recall=min_recall,
        slices=slices,
        top_levels=top_levels,
        n_bins=n_bins,
        curve_points=curve_points,
    )
    (result,) = dask.compute(graph)
    return result


def headline(metrics: Mapping[str, Any], task: str) -> dict[str, float | None]:
    """The few metrics for a table (leaderboard, overfit check), None where undefined.

    Examples
    --------
    >>> headline({"rmse": 2.0, "mae": 1.5, "r2": 0.9, "mse": 4.0}, "regression")
    {'rmse': 2.0, 'mae': 1.5, 'r2': 0.9}
    """
    if task not in HEADLINE:
        raise ValueError(f"task={task!r} is not one of {TASKS}")
    return {name: _num(metrics.get(name)) for name in HEADLINE[task]}


#: metrics whose overfit gap is judged relative to the train value (unbounded, or in the
#: target's unit).
RELATIVE_GAP = frozenset({"mse", "rmse", "mae", "max_error", "mape", "log_loss"})


def overfit_check(
    train: Mapping[str, Any], holdout: Mapping[str, Any], bound: float
) -> dict[str, Any]:
    """Train-vs-holdout gap of every metric both dicts report, flagged when above ``bound``.

    The gap is sign-normalised so that positive means *worse on holdout*: ``train - holdout``
    for metrics where higher is better, ``holdout - train`` where lower is better (see
    :data:`GREATER_IS_BETTER`). Metrics bounded in [0, 1] (accuracy, AUC, F1, R², Brier...)
    are flagged on the absolute gap; those in the target's own unit or unbounded (RMSE, MAE,
    MSE, max error, MAPE, log loss) on the gap relative to the train value
    (``relative_gap``), so one ``bound`` (e.g. 0.05) means something for both.

    Parameters
    ----------
    train, holdout : dict
        Outputs of :func:`evaluate_predictions` or :func:`headline`.
    bound : float
        Largest acceptable gap.

    Returns
    -------
    dict
        ``{"bound", "metrics": {name: {"train", "holdout", "gap", "flag"}}, "flagged", "overfit"}``;
        metrics undefined on either side are left out.

    Examples
    --------
    >>> out = overfit_check({"roc_auc": 0.95, "log_loss": 0.20}, {"roc_auc": 0.85, "log_loss": 0.21}, 0.05)
    >>> out["flagged"], round(out["metrics"]["log_loss"]["relative_gap"], 2)
    (['roc_auc'], 0.05)
    """
    if not (isinstance(bound, int | float) and math.isfinite(bound) and bound >= 0):
        raise ValueError(f"bound={bound!r} must be a finite number >= 0")
    rows: dict[str, Any] = {}
    for name, greater in GREATER_IS_BETTER.items():
        a, b = _num(train.get(name)), _num(holdout.get(name))
        if a is None or b is None:
            continue
        gap = a - b if greater else b - a
        row = {"train": a, "holdout": b, "gap": gap}
        if name in RELATIVE_GAP:
            row["relative_gap"] = gap / abs(a) if a else (0.0 if gap == 0 else math.inf)
            row["flag"] = row["relative_gap"] > bound
        else:
            row["flag"] = gap > bound
        rows[name] = row
    flagged = [name for name, row in rows.items() if row["flag"]]
    return {"bound": float(bound), "metrics": rows, "flagged": flagged, "overfit": bool(flagged)}


# --------------------------------------------------------------------------- a job's models

#: training rows scored for the overfit check (train vs holdout), at most.
TRAIN_EVAL_ROWS = 100_000


def overfit_rows(train: Any, n_train: int, n_holdout: int, seed: int) -> Any:
    """The training rows scored for the overfit check: as many as the holdout has, at most
    :data:`TRAIN_EVAL_ROWS` (a random share of ``train``, a dask frame)."""
    rows = min(n_holdout, TRAIN_EVAL_ROWS)
    if n_train <= rows:
        return train
    return train.sample(frac=rows / n_train, random_state=seed)


def evaluate_predictor(predictor: Predictor, frames: Mapping[str, tuple[Any, bool]],
                       job: JobSpec, client: Client) -> dict[str, dict[str, Any]]:
    """Metrics of ``predictor`` on several dask frames, in ONE ``dask.compute``.

    ``frames`` maps a name to ``(frame, slices)``: the raw rows (with the target) and whether
    the job's ``evaluate.slices`` are broken out for it. Rows are labelled at the predictor's
    threshold. The predictor is sent to every worker once.

    Examples
    --------
    >>> out = evaluate_predictor(predictor, {"holdout": (holdout, True),
    ...                                      "train": (train_rows, False)}, job, client)
    ...                                                                   # doctest: +SKIP
    >>> out["holdout"]["roc_auc"]                                         # doctest: +SKIP
    0.87
    """
    import dask

    options = job.evaluate
    [remote] = client.scatter([predictor], broadcast=True, hash=False)
    graphs = []
    for frame, slices in frames.values():
        keep = list(options.slices) if slices else []
        pred = frame.map_partitions(_evaluation_partition, remote, keep,
                                    meta=predictor.evaluation_frame(frame._meta, keep=keep))
        graphs.append(evaluation_graph(
            pred, job.data.task,
            class_names=[str(c) for c in predictor.classes or []] or None,
            threshold=predictor.threshold, min_precision=options.min_precision,
            min_recall=options.min_recall, slices=keep, top_levels=options.top_levels))
    return dict(zip(frames, dask.compute(*graphs)))


def _evaluation_partition(df: pd.DataFrame, predictor: Predictor,
                          keep: list[str]) -> pd.DataFrame:
    return predictor.evaluation_frame(df, keep=keep)


def operating_point(job: JobSpec, fit: Any, parts: Parts, train_rows: Any,
                    client: Client) -> Any:
    """The chosen model (a :class:`pipeline.train.FamilyFit`) at the job's operating point
    (``evaluate.min_precision`` / ``min_recall``, binary tasks), or ``fit`` as it is when the
    job asks for none.

    The threshold is chosen on the validation rows, so that the holdout figures at it are an
    honest estimate (chosen on the holdout, they would flatter it); holdout and training rows
    are then evaluated again at it, so that the leaderboard and the overfitting check compare
    them at the threshold the bundle scores with. Both are scored with the model as evaluated
    (``fit.as_evaluated``): a bundle's model refit on every row has seen the holdout.
    """
    import dataclasses

    options = job.evaluate
    if job.data.task != "binary" or not (options.min_precision or options.min_recall):
        return fit
    predictor = fit.as_evaluated
    on_valid = evaluate_predictor(predictor, {"valid": (parts.valid, False)}, job,
                                  client)["valid"]
    predictor.threshold = fit.predictor.threshold = float(on_valid["chosen_threshold"])
    out = evaluate_predictor(predictor, {"holdout": (parts.holdout, True),
                                         "train": (train_rows, False)}, job, client)
    out["holdout"].update(chosen_threshold=predictor.threshold,
                          chosen_threshold_source=on_valid["chosen_threshold_source"],
                          chosen_threshold_split="validation")
    return dataclasses.replace(fit, holdout=out["holdout"], train=out["train"])


def leaderboard(fits: Mapping[str, Any], winner: str, job: JobSpec) -> list[dict[str, Any]]:
    """One row per family (``fits``: family -> :class:`pipeline.train.FamilyFit`): CV score,
    holdout metrics, overfit gap, cost, and how it was trained."""
    from pipeline.models import FAMILIES

    primary, task = job.primary_metric, job.data.task
    rows = []
    for family, fit in fits.items():
        found, refit = fit.search, fit.refit
        gap = overfit_check(fit.train, fit.holdout, job.evaluate.overfit_bound)
        rows.append({
            "family": family, "chosen": family == winner, "training": refit.training,
            "how": FAMILIES.get(family, {}).get("how") or refit.details.get("selection"),
            "metric": primary,
            "cv_mean": found.cv_mean, "cv_std": found.cv_std, "candidates": found.candidates,
            "search": found.method, "params": refit.params,
            "holdout": headline(fit.holdout, task), "train": headline(fit.train, task),
            "gap": gap.get("metrics", {}).get(primary, {}).get("gap"),
            "overfit": bool(gap.get("overfit")), "fit_seconds": round(refit.seconds, 3),
            "search_seconds": round(found.seconds, 3),
            "search_budget_seconds": found.budget,  # search: auto: this family's share
            "search_rows": found.rows,  # search: auto: the sample rows its budget afforded
            "predict_rows_per_s": round(fit.predicted_rows / max(fit.predict_seconds, 1e-9)),
            "peak_memory_bytes": fit.peak_memory,
            "warnings": model_warnings(fit, task),
        })
    return rows


def fmt_metric(value: float | None) -> str:
    """A metric for a terminal line: 4 decimals, or 1 for figures in the thousands."""
    if value is None:
        return "n/a"
    return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4f}"


#: a boosted model that kept fewer trees than this is reported (early stopping stopped it
#: almost at once: the validation rows were too few, or the features say nothing).
FEW_TREES = 10


def model_warnings(fit: Any, task: str) -> list[str]:
    """What is suspicious about a family's model (a :class:`pipeline.train.FamilyFit`):
    boosting kept fewer than :data:`FEW_TREES` trees, or on the holdout the model is no better
    than a constant prediction (the holdout's own class shares or mean, the best constant
    there is) or predicts one class for every row.

    Examples
    --------
    >>> from types import SimpleNamespace as NS
    >>> fit = NS(search=NS(family="xgboost"), refit=NS(details={"trees": 1}),
    ...          holdout={"n": 4, "positives": 2,
    ...          "log_loss": 0.6, "roc_auc": 0.9, "confusion": {"tn": 2, "fp": 0, "fn": 2,
    ...          "tp": 0}})
    >>> [w.split(":")[0] for w in model_warnings(fit, "binary")]
    ['only 1 tree(s) kept', 'one class for every row']
    """
    from pipeline.models import FAMILIES

    out = []
    trees = fit.refit.details.get("trees")
    family = getattr(fit.search, "family", None)  # None: a warm-started booster
    boosted = family is None or FAMILIES.get(family, {}).get("budget") == "rounds"  # no forest
    if boosted and trees is not None and trees < FEW_TREES:
        out.append(f"only {trees} tree(s) kept: boosting stopped almost at once; too few "
                   "validation rows, or the features say little about the target")
    holdout = fit.holdout
    loss, constant = holdout.get("log_loss"), _constant_log_loss(holdout, task)
    if loss is not None and constant is not None and loss >= constant:
        out.append(f"holdout log loss {loss:.4f} is no better than a constant prediction of "
                   f"the class shares ({constant:.4f})")
    if task == "binary" and holdout.get("roc_auc") is not None and holdout["roc_auc"] <= 0.5:
        out.append(f"holdout ROC AUC {holdout['roc_auc']:.4f}: no better than chance")
    if task == "regression" and holdout.get("r2") is not None and holdout["r2"] <= 0:
        out.append(f"holdout R² {holdout['r2']:.4f}: no better than predicting the mean")
    if task != "regression" and _one_class(holdout.get("confusion")):
        out.append("one class for every row: the model predicts the same class for every "
                   "holdout row")
    return out


def _constant_log_loss(holdout: Mapping[str, Any], task: str) -> float | None:
    """The log loss of predicting the holdout's own class shares for every row."""
    if task == "binary" and holdout.get("n"):
        shares = [holdout["positives"] / holdout["n"]]
        shares.append(1.0 - shares[0])
    elif task == "multiclass" and holdout.get("class_balance"):
        shares = [c["fraction"] for c in holdout["class_balance"].values()]
    else:
        return None
    return float(-sum(p * math.log(p) for p in shares if p > 0))


def _one_class(confusion: Any) -> bool:
    if isinstance(confusion, dict):  # binary: predicted positive never, or always
        return confusion.get("tp", 0) + confusion.get("fp", 0) == 0 or \
            confusion.get("tn", 0) + confusion.get("fn", 0) == 0
    if isinstance(confusion, list) and confusion:  # multiclass: rows true, columns predicted
        predicted = np.asarray(confusion).sum(axis=0)
        return int((predicted > 0).sum()) <= 1
    return False
