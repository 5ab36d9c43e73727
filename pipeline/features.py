"""Feature engineering with the numba kernels, per partition, the same at training and scoring.

:class:`KernelFeatures` takes the job's ``features:`` block. Stateful features learn their
tables in ``fit`` (all in the same passes: one, or two with bin edges; see ``fit_passes``) and
carry them in the fitted transformer, which travels to each worker once; ``transform`` calls the
kernels on each partition's numpy arrays.

=============  ====================================================  ========================
kernel         what it adds                                          learned in fit
=============  ====================================================  ========================
log1p          sign(x) log1p(|x|), replacing the column              nothing
yeo_johnson    Yeo-Johnson transform, replacing the column           lambda (on a sample)
box_cox        Box-Cox transform (x > 0), replacing the column       lambda (on a sample)
count          ``<col>__count`` (or ``__freq``): training count      level counts
ratio ...      ``<a>__ratio__<b>`` (product, difference, sum)        nothing
bin            ``<col>__bin``: quantile bin index                    exact quantile edges
hash           ``<col>__hash``: MurmurHash3 bucket of the text       nothing
rolling        ``<col>__roll<w>_<stat>``: previous ``w`` rows of     nothing
               the same key, in time order (mean, std, count)
lag            ``<col>__lag<k>``: the value ``k`` rows earlier       nothing
               for the same key, in time order
=============  ====================================================  ========================

Window features (rolling, lag) look at *earlier rows of the same key*; each partition is
sorted by (key, time) inside the transform and the results put back in the input order. They
are right when every row of a key is in the same partition: training shuffles the data by the
key first (``workflow.py``), and scoring or serving must pass each key's history together.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from itertools import combinations, permutations
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import Tags
from sklearn.utils.validation import check_is_fitted

from pipeline.frames import (
    INPUT,
    EarlyRows,
    apply,
    meta_of,
    reduce_partitions,
    row_hash,
    run_passes,
    together,
)
from pipeline.frames import value_counts as _value_counts
from pipeline.preprocess import (
    SchemaError,
    as_text_lazy,
    codes_of,
    frame_tags,
    learning_rows,
    quantile_passes,
    require_columns,
    validate_frame,
)

#: rows of the sample on which power-transform lambdas are fitted (about 40 passes each).
POWER_SAMPLE_ROWS = 200_000

#: the kernels each feature calls (recorded with their code fingerprints in the bundle).
KERNELS_OF = {
    "log1p": ["signed_log1p"], "yeo_johnson": ["yeo_johnson", "yeo_johnson_lambda"],
    "box_cox": ["box_cox", "box_cox_lambda"], "count": ["count_encode"],
    "ratio": ["pairwise"], "product": ["pairwise"], "difference": ["pairwise"],
    "sum": ["pairwise"], "bin": ["bin_index"], "hash": ["hash_bytes"],
    "rolling": ["group_rolling"], "lag": ["group_lag"],
}

_NUMERIC_KERNELS = {"log1p", "yeo_johnson", "box_cox", "ratio", "product", "difference",
                    "sum", "bin", "rolling", "lag"}
_STATEFUL = {"yeo_johnson", "box_cox", "count", "bin"}
_IN_PLACE = {"log1p", "yeo_johnson", "box_cox"}
_PAIRWISE = {"ratio", "product", "difference", "sum"}


def learns(spec: Mapping[str, Any]) -> bool:
    """Whether the feature learns from the training rows (see the table above)."""
    return spec["kernel"] in _STATEFUL


class KernelFeatures(TransformerMixin, BaseEstimator):
    """Apply the job's feature kernels (see the module docstring for the table).

    Parameters
    ----------
    features
        The job's ``features:`` block, as plain dicts (``{"kernel": ..., "columns": [...],
        options}``).
    drop
        Columns removed after the features are computed (context only, e.g. the key and time
        of window features when they are not features themselves).

    Examples
    --------
    >>> df = pd.DataFrame({"a": [1.0, 10.0, 100.0], "b": [2.0, 0.0, 4.0]})
    >>> kf = KernelFeatures([{"kernel": "log1p", "columns": ["a"]},
    ...                      {"kernel": "ratio", "columns": ["a", "b"], "pairs": [("a", "b")]}])
    >>> kf.fit_transform(df).round(3).to_dict("list")
    {'a': [0.693, 2.398, 4.615], 'b': [2.0, 0.0, 4.0], 'a__ratio__b': [0.347, nan, 1.154]}
    """

    def __init__(self, features: Sequence[Mapping[str, Any]] = (),
                 drop: Sequence[str] = ()) -> None:
        self.features = features
        self.drop = drop

    def fit(self, X: Any, y: Any = None) -> KernelFeatures:
        run_passes(self.fit_passes(y), X)
        return self

    def fit_passes(self, y: Any = None, early: EarlyRows | None = None
                   ) -> Generator[Any, Any, Callable[[Any], Any]]:
        """:meth:`fit` as passes (:func:`pipeline.frames.run_fits`); on ``early`` rows when
        they hold the columns the stateful features read as the input will. Returns the
        transform of the training rows."""
        specs = [dict(f) for f in self.features]
        todo = [i for i, s in enumerate(specs) if learns(s)]
        rows, X = yield from learning_rows(
            self, early, lambda meta: set().union(*(_reads(specs[i]) for i in todo)))
        check_features([specs[i] for i in todo] if X is None else specs, meta_of(rows))
        self.specs_ = specs
        self.tables_: dict[str, Any] = {}
        self.edges_: dict[str, np.ndarray] = {}
        self.lambdas_: dict[str, float] = {}
        # Features apply in order, so a stateful feature learns on its input as the earlier
        # features leave it (bins of log1p(x) are learned on log1p(x)). Stateful features that
        # do not read a column rewritten by another unfitted one are fitted together, in the
        # same passes: usually all of them.
        while todo:
            ready = [i for i in todo
                     if not any(j < i and _writes(specs[j]) & _reads(specs[i]) for j in todo)]
            yield from together([self._learn(i, self._learning_input(rows, i, set(todo)))
                                 for i in ready])
            todo = [i for i in todo if i not in ready]
        if X is None:
            X = validate_frame(self, (yield INPUT), reset=True)
            check_features(specs, meta_of(X))
        self.kernels_used_ = sorted({k for s in specs for k in KERNELS_OF[s["kernel"]]})
        return self.transform

    def rewrites(self, meta: pd.DataFrame) -> set[str]:
        """Columns whose values the transform changes (see :class:`EarlyRows`)."""
        return set().union(*(_writes(dict(f)) for f in self.features))

    def _learning_input(self, X: Any, i: int, unfitted: set[int]) -> Any:
        """The columns feature ``i`` reads, as the fitted features before it leave them: only
        those rewriting them in place are applied (none, usually: then no transform at all)."""
        columns, chain = set(_reads(self.specs_[i])), set()
        for j in range(i - 1, -1, -1):
            if j not in unfitted and _writes(self.specs_[j]) & columns:
                chain.add(j)
                columns |= _reads(self.specs_[j])
        rows = X[[c for c in meta_of(X).columns if c in columns]]
        if not chain:
            return rows
        skipped = set(range(i)) - chain
        return apply(rows, lambda df: self._transform(df, upto=i, skip=skipped))

    def _learn(self, i: int, X: Any) -> Generator[Any, Any, None]:
        """Feature ``i``'s table, as passes over its input ``X``."""
        spec = self.specs_[i]
        if spec["kernel"] == "count":
            got = yield {c: _value_counts(as_text_lazy(X[c])) for c in spec["columns"]}
            for c in spec["columns"]:
                vocab = np.array(sorted(str(v) for v in got[c].index), dtype=object)
                counts = got[c].rename(index=str).reindex(vocab)
                self.tables_[c] = (vocab, counts.to_numpy(dtype=np.int64))
        elif spec["kernel"] == "bin":
            n_bins = int(spec.get("n_bins", 10))
            q = list(np.linspace(0, 1, n_bins + 1)[1:-1])
            found = yield from quantile_passes(X, {c: q for c in spec["columns"]})
            self.edges_.update({c: _edges(v) for c, v in found.items()})
        elif spec["kernel"] in ("yeo_johnson", "box_cox"):
            lambdas = yield from _power_lambdas(X, spec, list(spec["columns"]))
            self.lambdas_.update(lambdas)

    def transform(self, X: Any) -> Any:
        check_is_fitted(self, "specs_")
        X = validate_frame(self, X, reset=False)
        check_features(self.specs_, meta_of(X))
        return apply(X, self._transform)

    def __sklearn_tags__(self) -> Tags:
        return frame_tags(super().__sklearn_tags__())

    def _transform(self, df: pd.DataFrame, upto: int | None = None,
                   skip: set[int] = frozenset()) -> pd.DataFrame:  # type: ignore[assignment]
        """The features in order (``upto``/``skip``: the partial frames ``fit`` learns on)."""
        import kernels

        out = df.copy()
        for index, spec in enumerate(self.specs_[:upto]):
            if index in skip:
                continue
            kind, columns = spec["kernel"], spec["columns"]
            if kind == "log1p":
                for c in columns:
                    out[c] = kernels.signed_log1p(_floats(out[c]))
            elif kind in ("yeo_johnson", "box_cox"):
                transform = kernels.yeo_johnson if kind == "yeo_johnson" else kernels.box_cox
                for c in columns:
                    x = _floats(out[c])
                    if kind == "box_cox" and (x[~np.isnan(x)] <= 0).any():
                        bad = float(np.nanmin(x))
                        raise SchemaError(f"box_cox of {c!r} needs positive values; found "
                                          f"{bad} (use yeo_johnson for any sign)")
                    out[c] = transform(x, self.lambdas_[c])
            elif kind == "count":
                suffix = "freq" if spec.get("normalize") else "count"
                for c in columns:
                    vocab, table = self.tables_[c]
                    out[f"{c}__{suffix}"] = kernels.count_encode(
                        codes_of(df[c], vocab), table, normalize=bool(spec.get("normalize")))
            elif kind in _PAIRWISE:
                for a, b in pairs_of(spec):
                    out[f"{a}__{kind}__{b}"] = kernels.pairwise(_floats(out[a]), _floats(out[b]),
                                                                kind)
            elif kind == "bin":
                for c in columns:
                    index = kernels.bin_index(_floats(out[c]), self.edges_[c])
                    out[f"{c}__bin"] = np.where(index >= 0, index, np.nan)
            elif kind == "hash":
                from pipeline.preprocess import hash_buckets

                for c in columns:
                    out[f"{c}__hash"] = hash_buckets(df[c], int(spec.get("n_buckets", 1024)),
                                                      0)
            else:
                out = _window(out, spec)
        if upto is not None:
            return out
        return out.drop(columns=list(self.drop)) if self.drop else out


def check_features(specs: Sequence[Mapping[str, Any]], meta: pd.DataFrame) -> None:
    """Every declared column exists and has the kind its kernel needs (before any compute)."""
    from pipeline.preprocess import is_categorical

    keys = {s["key"] for s in specs if s["kernel"] in ("rolling", "lag")}
    if len(keys) > 1:
        raise SchemaError(f"features: window features use different keys {sorted(keys)}; "
                          "use one key (the data is grouped by it)")
    for i, spec in enumerate(specs):
        where = f"features[{i}] ({spec['kernel']})"
        kind = spec["kernel"]
        require_columns(spec["columns"], meta, where,
                 numeric=True if kind in _NUMERIC_KERNELS else None)
        if kind in ("rolling", "lag"):
            require_columns([spec["key"]], meta, f"{where}.key")
            require_columns([spec["time"]], meta, f"{where}.time")
        if kind in ("count", "hash"):
            for c in spec["columns"]:
                if not is_categorical(meta[c].dtype) and not pd.api.types.is_integer_dtype(
                        meta[c].dtype):
                    raise SchemaError(f"{where} names {c!r}, a {meta[c].dtype} column; count "
                                      "and hash apply to categorical, text or integer codes")
        for a, b in pairs_of(spec) if kind in ("ratio", "product", "difference", "sum") \
                else ():
            require_columns([a, b], meta, f"{where}.pairs", numeric=True)


def pairs_of(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Declared pairs, or all ordered pairs (ratio, difference) / unordered ones (others)."""
    if spec.get("pairs"):
        return [tuple(p) for p in spec["pairs"]]  # type: ignore[misc]
    columns = list(spec["columns"])
    ordered = spec["kernel"] in ("ratio", "difference")
    return list(permutations(columns, 2) if ordered else combinations(columns, 2))


def _floats(values: pd.Series) -> np.ndarray:
    return np.ascontiguousarray(values.to_numpy(dtype=np.float64, na_value=np.nan))


def _edges(quantiles: np.ndarray) -> np.ndarray:
    q = quantiles[~np.isnan(quantiles)]
    return np.unique(q)  # strictly increasing; ties collapse into one edge


def _power_lambdas(X: Any, spec: Mapping[str, Any], columns: list[str]
                   ) -> Generator[Any, Any, dict[str, float]]:
    """MLE lambdas on a content-hashed sample (the same rows whatever the partitioning)."""
    import kernels

    rows = yield X.shape[0]
    share = min(1.0, POWER_SAMPLE_ROWS / max(int(rows), 1))
    threshold = np.uint64(min(int(share * 2**64), 2**64 - 1))

    def take(df: pd.DataFrame) -> pd.DataFrame:
        keep = row_hash(df[columns], 7) <= threshold if share < 1 else np.ones(len(df), bool)
        return df.loc[keep, columns]

    sample = yield reduce_partitions(X[columns], take, lambda *p: pd.concat(p))
    out = {}
    for c in columns:
        x = _floats(sample[c])
        x = x[~np.isnan(x)]
        if len(np.unique(x)) < 2:
            out[c] = 1.0  # nothing to fit: lambda 1 is (up to a shift) the identity
        elif spec["kernel"] == "box_cox":
            if (x <= 0).any():
                raise SchemaError(f"box_cox of {c!r} needs positive values; the training data "
                                  f"has {float(x.min())} (use yeo_johnson)")
            out[c] = float(kernels.box_cox_lambda(x))
        else:
            out[c] = float(kernels.yeo_johnson_lambda(x))
    return out


def _reads(spec: Mapping[str, Any]) -> set[str]:
    out = set(spec["columns"])
    for a, b in pairs_of(spec) if spec["kernel"] in _PAIRWISE else ():
        out |= {a, b}
    return out | {spec[k] for k in ("key", "time") if k in spec}


def _writes(spec: Mapping[str, Any]) -> set[str]:
    """Input columns a feature rewrites in place (new columns cannot be read by others)."""
    return set(spec["columns"]) if spec["kernel"] in _IN_PLACE else set()


def _window(df: pd.DataFrame, spec: Mapping[str, Any]) -> pd.DataFrame:
    """Rolling / lag features of one partition, computed in (key, time) order."""
    import kernels

    key, time = spec["key"], spec["time"]
    keys = pd.factorize(df[key])[0]  # missing keys form one group (-1)
    order = np.lexsort((df[time].to_numpy(), keys)).astype(np.int64)
    sorted_keys = np.ascontiguousarray(keys[order].astype(np.int64))
    out = df.copy()
    for c in spec["columns"]:
        values = np.ascontiguousarray(_floats(df[c])[order])
        if spec["kernel"] == "lag":
            lag = int(spec.get("lag", 1))
            result = np.empty(len(df))
            result[order] = kernels.group_lag(sorted_keys, values, lag)
            out[f"{c}__lag{lag}"] = result
            continue
        window = int(spec.get("window", 3))
        mean, std, count = kernels.group_rolling(sorted_keys, values, window, min_periods=1,
                                                 closed="left")
        for stat, values_ in (("mean", mean), ("std", std), ("count", count)):
            if stat in spec.get("stats", ["mean"]):
                result = np.empty(len(df))
                result[order] = values_
                out[f"{c}__roll{window}_{stat}"] = result
    return out
