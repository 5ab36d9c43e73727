"""Batch scoring of large data: partition by partition, in bounded memory, to Parquet.

Two ways in:

- :func:`score` (Python API): a model and a dask DataFrame in, a *lazy* dask DataFrame of
  predictions out, for users who compose the graph themselves;
- :func:`score_to` (what ``mlpipe score`` calls): a model URL, an input URL and an output URL;
  every input partition becomes one output part, and the output is published last.

The output of :func:`score_to`::

    <output>/part-00000.parquet ...   one part per input partition; ids + predictions
    <output>/_drift.json              drift of the input and the predictions against the
                                      model's reference profile (pipeline.monitor)
    <output>/_manifest.json           model, input fingerprint, rows in/out, data report, parts,
                                      the sha256 of _drift.json
    <output>/_SUCCESS                 written last: the output is complete and verified

Drift costs no extra pass: the task that scores a partition also sketches it (bin counts of
every input column and of the predictions, with the bundle's ``profile.json`` bins); only the
sketch goes back to the driver (and into the part's footer, so a resumed job keeps it), where
the sketches are added up and compared with the reference (:func:`pipeline.monitor.drift_report`).

How it stays correct when something fails:

- the input partitioning is a pure function of the input listing (sorted files; Parquet row
  groups, CSV byte ranges), so partition ``i`` is the same rows on every run;
- each task reads its partition, predicts and writes ``part-<i>`` itself, all in memory, and a
  part becomes visible only complete (a local rename, or a single S3 PUT / completed multipart
  upload); only a tiny stats row goes back to the driver;
- every part carries in its Parquet footer what it is (the job key: model run and manifest
  sha256, input fingerprint, partitioning, id columns; its partition and row count, and its
  data report), so a rerun reads footers only, keeps the parts that match, and rewrites the
  rest: a killed job resumes, a finished one is not redone, and a part from another model or
  input is replaced, never mixed in;
- ``_SUCCESS`` is removed when a job starts and written only after every part is verified and
  stale parts are gone: a reader that waits for it never sees a half-done output.

Memory: nothing is persisted; read, predict and write of one partition are one task
(:func:`distributed.Client.map` over the pieces) whose result is a small stats record, so a
worker holds at most ``threads`` partitions at a time whatever the input size. The driver
builds no dask DataFrame for it (no ``dask.dataframe`` import: 0.7 s of a cold job).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import StorageError, did_you_mean
from pipeline.load import PARTITION_ROWS, DataError, Piece, read_piece
from pipeline.monitor import DRIFT, PROFILE, binnings, drift_report, merge, sketch_frame

logger = logging.getLogger("pipeline")

FORMAT = "mlpipe-score/1"
SUCCESS = "_SUCCESS"
MANIFEST = "_manifest.json"
#: Parquet key-value metadata key of every part (JSON: what the part is, see module doc).
PART_KEY = b"mlpipe.score"
#: CSV input: bytes per partition (split at line ends).
BLOCKSIZE = 64 * 2**20

_PART = re.compile(r"^part-(\d+)\.parquet$")
_OURS = re.compile(r"^(part-\d+\.parquet|_SUCCESS|_manifest\.json|_drift\.json|\.tmp-.*)$")


class ScoreError(DataError):
    """Scoring failed on some partition; the message names the file, the rows and the cause."""


# --------------------------------------------------------------------------- the Python API


def score(model: Any, ddf: Any, *, id_columns: Sequence[str] = (), client: Any = None,
          storage_options: Mapping[str, Any] | None = None) -> Any:
    """Predictions for a dask DataFrame, lazily: one ``map_partitions``, nothing computed.

    The model is sent to every worker once (``scatter(broadcast=True)``), not with every task.
    Each partition goes through the model's input schema, its preprocessor and the model
    (:meth:`~pipeline.predictor.Predictor.predict_frame`); empty partitions give empty frames.

    Parameters
    ----------
    model
        A :class:`~pipeline.predictor.Predictor` or a model/run URL (as :func:`load_model`
        takes: ``<root>/models/<name>`` or ``<root>/runs/<run_id>``).
    ddf
        The input; it must hold the model's feature columns (extra columns are ignored).
    id_columns
        Input columns passed through to the output, in front of the predictions.
    client
        The ``distributed.Client`` to broadcast the model to (default: the current one, if
        any; without one the model travels inside the graph, fine for the local schedulers).

    Returns
    -------
    dask.dataframe.DataFrame
        ``id_columns`` then ``prediction`` (regression), ``label, proba`` (binary: P(positive);
        the label uses the bundle's threshold) or ``label, proba_<class>...`` (multiclass),
        with the partitions and index of ``ddf``.

    Examples
    --------
    >>> import dask.dataframe as dd                                   # doctest: +SKIP
    >>> frame = dd.read_parquet("s3://bucket/applications/")          # doctest: +SKIP
    >>> pred = score("s3://bucket/mlpipe/models/demo", frame,
    ...              id_columns=["application_id"])                   # doctest: +SKIP
    >>> pred[pred.proba > 0.9].to_parquet("s3://bucket/high-risk/")   # doctest: +SKIP
    """
    predictor = _as_predictor(model, storage_options)
    id_columns = list(id_columns)
    known = list(ddf.columns)
    missing = [c for c in [*id_columns, *predictor.feature_columns] if c not in known]
    if missing:
        raise DataError(f"the input has no column {missing[0]!r}, which the model "
                        f"{predictor.run_id} needs"
                        f"{' (as an id column)' if missing[0] in id_columns else ''}; "
                        f"found columns {known}{did_you_mean(missing[0], known)}")
    meta = predictor.predict_frame(ddf._meta, id_columns)
    return ddf.map_partitions(_predict_partition, _broadcast(predictor, client), id_columns,
                              meta=meta)


def _predict_partition(df: Any, predictor: Any, id_columns: list[str]) -> Any:
    return predictor.predict_frame(df, id_columns)


def _warm_worker(model: _Model) -> None:
    """A scoring task's first-time costs, paid ahead (:func:`cluster.warm`): the imports of
    the predictor, its preprocessing classes, XGBoost and the Parquet writer (1.4 s on a
    fresh worker), numba's load of the drift sketch's compiled kernel (0.6 s), and the model
    itself, loaded and verified from its bundle (:func:`_worker_predictor`)."""
    import numpy as np
    import pyarrow.parquet  # noqa: F401
    import xgboost  # noqa: F401

    from kernels import bin_counts

    _worker_predictor(model)
    bin_counts(np.zeros(1), np.zeros(1))  # the float64 signature sketch_frame calls


@dataclass(frozen=True)
class _Model:
    """The model a scoring job's workers load for themselves: one version of a bundle."""

    url: str  # the run's URL (a version never changes once its manifest exists)
    manifest_sha256: str
    storage_options: dict[str, Any]
    device: str


_LOADING = threading.Lock()
_LOADED: dict[tuple[str, str, str], Any] = {}


def _worker_predictor(model: _Model) -> Any:
    """The predictor of ``model`` in this (worker) process, read and verified from the
    bundle once per version and device, then kept (up to 4): a version never changes once its
    manifest exists, and loading a large preprocessor from skops takes seconds that a
    long-lived worker should pay once. Workers load it themselves, so the driver never
    imports scikit-learn, skops or XGBoost, and nothing large is shipped."""
    from pipeline import artifacts

    key = (model.url, model.manifest_sha256, model.device)
    with _LOADING:  # a worker's threads wait for the one load
        if key not in _LOADED:
            bundle = artifacts.open_bundle(model.url, model.storage_options)
            if bundle.manifest["_sha256"] != model.manifest_sha256:
                raise artifacts.BundleError(
                    f"{model.url} changed while it was being scored: its manifest is not the "
                    "one the job started with")
            predictor = artifacts.load_predictor(bundle)
            while len(_LOADED) >= 4:
                _LOADED.pop(next(iter(_LOADED)))
            _LOADED[key] = predictor.on(model.device) if model.device != "cpu" else predictor
        return _LOADED[key]


def _as_predictor(model: Any, storage_options: Mapping[str, Any] | None) -> Any:
    if isinstance(model, str):
        from pipeline.artifacts import load_model

        return load_model(model, storage_options)
    if not hasattr(model, "predict_frame"):
        raise TypeError(f"model must be a Predictor (load_model) or a model URL, "
                        f"not {type(model).__name__}")
    return model


def _broadcast(predictor: Any, client: Any) -> Any:
    """A future of the predictor on every worker, or the predictor itself without a client."""
    if client is None:
        try:
            from distributed import get_client

            client = get_client()
        except (ImportError, ValueError):  # no distributed client: local schedulers
            return predictor
    # hash=False: a fresh key, so a new model is never confused with an older scattered one
    [remote] = client.scatter([predictor], broadcast=True, hash=False)
    return remote


# --------------------------------------------------------------------------- planning


@dataclass
class Plan:
    """Everything decided before any task runs (cheap: listings, headers, footers)."""

    model_url: str
    run_id: str
    manifest_sha256: str
    model_name: str | None
    task: str
    source: Any  # load.Source
    pieces: list[Piece]
    read_columns: list[str]
    id_columns: list[str]
    prediction_columns: list[str]
    csv_dtypes: dict[str, str]
    csv_sep: str
    extra_columns: list[str]
    output: str
    key: str
    partition_rows: int
    blocksize: int
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)
    drift: bool = False  # the bundle has a reference profile: every part carries its sketch
    device: str = "cpu"  # XGBoost's device for the predictions (score_to decides)

    @property
    def width(self) -> int:
        return max(5, len(str(max(len(self.pieces) - 1, 0))))

    def part_name(self, index: int) -> str:
        return f"part-{index:0{self.width}d}.parquet"


def plan_score(model_url: str, input_url: str, output_url: str, *,
               id_columns: Sequence[str] = (), fmt: str = "auto",
               partition_rows: int = PARTITION_ROWS, blocksize: int | str = BLOCKSIZE,
               storage_options: Mapping[str, Any] | None = None, bundle: Any = None) -> Plan:
    """Check the model, the input and the output, and cut the input into partitions.

    Reads only listings, headers, Parquet footers and the bundle's ``schema.json`` (the model
    itself is loaded by the workers). Raises :class:`DataError` (or
    :class:`~pipeline.artifacts.BundleError`) naming what is wrong before any task runs.

    Examples
    --------
    >>> plan = plan_score("out/models/demo", "data/demo", "out/scores")   # doctest: +SKIP
    >>> len(plan.pieces), plan.pieces[0].describe("parquet")             # doctest: +SKIP
    (4, 'partition 0 (data/demo/part-00000.parquet, row group 0)')
    """
    from pipeline import artifacts, load
    from pipeline.predictor import prediction_columns

    options = dict(storage_options or {})
    if partition_rows < 1:
        raise ValueError(f"partition_rows must be at least 1, got {partition_rows}")
    blocksize = _parse_bytes(blocksize)
    bundle = bundle or artifacts.open_bundle(model_url, options)
    schema = bundle.json("schema.json")
    features = list(schema["columns"])  # the model's input columns, in training order
    id_columns = list(dict.fromkeys(id_columns))
    source = load.find_files(input_url, options, fmt)
    _check_output(output_url, source, options)
    headers = load.read_headers(source)
    load.check_headers(headers, schema=None, required=[*id_columns, *features])
    columns = list(dict.fromkeys([*id_columns, *features]))
    extra = [c for c in next(iter(headers.values())) if c not in columns]
    dtypes: dict[str, str] = {}  # Parquet and SQL: typed by the source
    if source.format == "parquet":
        pieces = load.parquet_pieces(source, partition_rows)
    elif source.format == "sql":
        pieces = load.sql_pieces(source, partition_rows)
    else:
        pieces = load.csv_pieces(source, blocksize, headers)
        # features: as the model's schema declares them; id columns: as the data holds them
        dtypes = load.csv_dtypes(source, columns, schema.get("columns", {}), infer=id_columns)
    sep = load.csv_separator(source.files[0])
    identity = {
        "format": FORMAT, "run_id": bundle.run_id,
        "manifest_sha256": bundle.manifest["_sha256"], "input": source.fingerprint,
        "input_format": source.format, "id_columns": id_columns,
        "partitioning": {"parquet": ["row_groups", partition_rows], "csv": ["bytes", blocksize],
                         "sql": ["index_ranges", partition_rows]}[source.format],
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    return Plan(model_url=model_url, run_id=bundle.run_id,
                manifest_sha256=bundle.manifest["_sha256"],
                model_name=bundle.manifest.get("name"), task=schema["task"], source=source,
                pieces=pieces, read_columns=columns, id_columns=id_columns,
                prediction_columns=prediction_columns(schema["task"], schema.get("classes")),
                csv_dtypes=dtypes,
                csv_sep=sep, extra_columns=extra, output=output_url, key=key,
                partition_rows=partition_rows, blocksize=blocksize, storage_options=options,
                drift=bundle.has(PROFILE))


def _parse_bytes(value: int | str) -> int:
    if isinstance(value, int):
        out = value
    else:
        from dask.utils import parse_bytes

        out = int(parse_bytes(value))
    if out < 1:
        raise ValueError(f"blocksize must be positive, got {value!r}")
    return out


def _check_output(output_url: str, source: Any, options: Mapping[str, Any]) -> None:
    """The output must not overlap the input, and may hold only a previous score output."""
    from pipeline import artifacts

    fs, out = artifacts.filesystem(output_url, options)
    out_protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if {out_protocol, source.protocol} <= {"file", "local"} or out_protocol == source.protocol:
        out_dir = out.rstrip("/") + "/"
        # our parts inside the input would be read back as input by the next run
        if _input_would_list(source, out_dir + "part-00000.parquet") or any(
                source.fs._strip_protocol(f).startswith(out_dir) for f in source.files):
            raise DataError(f"the output {output_url} overlaps the input {source.url}; write "
                            "the predictions outside the input")
    fs.invalidate_cache(out)
    try:
        entries = fs.ls(out, detail=False) if fs.isdir(out) else []
    except FileNotFoundError:
        entries = []
    if not entries and fs.isfile(out):
        raise DataError(f"the output {output_url} is a file; give a directory (it gets one "
                        "part per input partition)")
    others = [e for e in entries if not _OURS.match(e.rstrip("/").rsplit("/", 1)[-1])]
    if others:
        raise DataError(f"the output {output_url} holds files that are not a score output "
                        f"(e.g. {others[0]}); scoring replaces the parts of its output "
                        "directory, so give a new or empty directory, or a previous score "
                        "output")


def _input_would_list(source: Any, path: str) -> bool:
    """Would :func:`load.find_files` on the input URL list ``path``?"""
    import posixpath
    from pathlib import PurePosixPath

    pattern = source.fs._strip_protocol(source.url).rstrip("/")
    glob = [pattern.index(ch) for ch in "*?[" if ch in pattern]
    if glob and "**" not in pattern:
        return PurePosixPath(path).match(pattern)
    base = posixpath.dirname(pattern[:min(glob)]) if glob else pattern
    return path.startswith(base.rstrip("/") + "/")


# --------------------------------------------------------------------------- reading


def _read_piece(piece: Piece, plan: Mapping[str, Any]) -> Any:
    """One input partition as pandas (the scoring task's first step)."""
    try:
        frame = read_piece(piece, plan["format"], plan["columns"], dtypes=plan["csv_dtypes"],
                           sep=plan["csv_sep"], storage_options=plan["storage_options"])
    except DataError:
        raise  # names its file, column and line already
    except Exception as exc:
        from pipeline.artifacts import is_storage_failure, storage_message

        if is_storage_failure(exc):
            where = f"read {piece.describe(plan['format'])}"
            raise StorageError(storage_message(piece.file, where, exc, can="read")) from exc
        raise ScoreError(f"cannot read {piece.describe(plan['format'])}: "
                         f"{type(exc).__name__}: {exc}") from exc
    return frame


# --------------------------------------------------------------------------- scoring one part


def _score_part(piece: Piece, model: _Model, plan: Mapping[str, Any],
                bins: Any = None) -> dict[str, Any]:
    """Read one partition, predict it, write its part (complete or not at all), and return
    its stats: partition, rows in and out, bytes written, data report and drift sketch.

    ``bins``: the (inputs, outputs) :class:`pipeline.monitor.Binning` of the model's reference
    profile; the partition's drift sketch rides in the stats and the part's footer."""
    df = _read_piece(piece, plan)
    where = piece.describe(plan["format"])
    try:
        predictor = _worker_predictor(model)
        report = predictor.report(df)
        out = predictor.predict_frame(df, plan["id_columns"])
        if len(out) != len(df):
            raise RuntimeError(f"{len(df)} rows in, {len(out)} predictions out")
        # extra columns are a property of the files (plan_score), not of a partition
        report = {"missing_values": {k: int(v) for k, v in report["missing_values"].items() if v},
                  "unseen_categories": {k: int(v) for k, v in
                                        report["unseen_categories"].items() if v}}
        drift = None if bins is None else {"inputs": sketch_frame(df, bins[0]),
                                           "outputs": sketch_frame(out, bins[1])}
        info = {"job": plan["key"], "partition": piece.index, "rows": len(out),
                "rows_in": len(df), "source": where, "model_run_id": plan["run_id"],
                "manifest_sha256": plan["manifest_sha256"],
                "input_fingerprint": plan["fingerprint"], "report": report, "drift": drift}
        data = _parquet_bytes(out, info)
        _write_part(plan, _name(plan, piece.index), data)
    except ScoreError:
        raise
    except Exception as exc:  # name the partition; keep the cause for -v
        raise ScoreError(f"scoring failed on {where}: {type(exc).__name__}: {exc}") from exc
    return {"partition": piece.index, "rows_in": len(df), "rows_out": len(out),
            "bytes": len(data), "report": report, "drift": drift}


def _name(plan: Mapping[str, Any], index: int) -> str:
    return f"part-{index:0{plan['width']}d}.parquet"


def _parquet_bytes(frame: Any, info: Mapping[str, Any]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    metadata = {**(table.schema.metadata or {}), PART_KEY: json.dumps(info).encode()}
    sink = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(metadata), sink, compression="snappy")
    return sink.getvalue().to_pybytes()


def _write_part(plan: Mapping[str, Any], name: str, data: bytes) -> None:
    """All or nothing: a local temp file renamed into place, or one S3 (multipart) upload."""
    from pipeline import artifacts

    fs, out = artifacts.filesystem(plan["output"], plan["storage_options"])
    artifacts.atomic_write(fs, artifacts.join(out, name), data)


# --------------------------------------------------------------------------- resume


def _verified_parts(plan: Plan) -> dict[int, dict[str, Any]]:
    """{partition: its footer info + size} for the existing parts this job would write as is."""
    from pipeline import artifacts

    fs, out = artifacts.filesystem(plan.output, plan.storage_options)
    fs.invalidate_cache(out)  # workers wrote there; this process's listing cache is stale
    try:
        listing = {e["name"].rsplit("/", 1)[-1]: e for e in fs.ls(out, detail=True)}
    except FileNotFoundError:
        return {}
    wanted = {plan.part_name(p.index): p for p in plan.pieces}
    present = [(name, wanted[name], listing[name]) for name in wanted if name in listing]
    if not present:
        return {}

    def check(item: tuple[str, Piece, dict]) -> tuple[int, dict[str, Any] | None]:
        name, piece, entry = item
        info = _footer_info(fs, artifacts.join(out, name))
        if info is None or info.get("job") != plan.key or info.get("partition") != piece.index:
            return piece.index, None
        if piece.rows is not None and info.get("rows_in") != piece.rows:
            return piece.index, None
        if plan.drift and not info.get("drift"):  # written without its sketch: redo it
            return piece.index, None
        info["bytes"] = int(entry.get("size") or 0)
        return piece.index, info

    with ThreadPoolExecutor(max_workers=min(32, len(present))) as pool:
        return {i: info for i, info in pool.map(check, present) if info is not None}


def _footer_info(fs: Any, path: str) -> dict[str, Any] | None:
    """The part's own description, if its footer reads and agrees with its row count."""
    import pyarrow.parquet as pq

    try:
        with fs.open(path, "rb") as f:
            meta = pq.read_metadata(f)
        info = json.loads((meta.metadata or {}).get(PART_KEY, b"null"))
    except Exception:  # unreadable or foreign: not ours to keep, it is rewritten
        return None
    if not isinstance(info, dict) or info.get("rows") != meta.num_rows:
        return None
    return info


# --------------------------------------------------------------------------- the job


@dataclass
class ScoreResult:
    """What :func:`score_to` did."""

    output: str
    rows_in: int
    rows_out: int
    parts: int
    written: int
    skipped: int
    rows_scored: int  # rows of the parts written by this call (a resumed run skips the rest)
    seconds: float
    manifest: dict[str, Any] = field(repr=False)

    @property
    def rows_per_second(self) -> float:
        """Rows scored by this call per second of it (NaN when every part was skipped)."""
        if not self.rows_scored or self.seconds <= 0:
            return float("nan")
        return self.rows_scored / self.seconds


def score_to(model_url: str, input_url: str, output_url: str, *,
             id_columns: Sequence[str] = (), fmt: str = "auto",
             partition_rows: int = PARTITION_ROWS, blocksize: int | str = BLOCKSIZE,
             storage_options: Mapping[str, Any] | None = None, client: Any = None,
             progress_every: float = 5.0, device: str | None = None) -> ScoreResult:
    """Score every row at ``input_url`` with a model and write Parquet parts to ``output_url``.

    Resumable and idempotent: parts already written by the same job (same model version,
    same input, same options) are verified from their footers and skipped; anything else in
    the output is replaced or removed. ``_SUCCESS`` is written last, after the score manifest.

    Parameters
    ----------
    model_url
        ``<root>/models/<name>`` (its current version) or ``<root>/runs/<run_id>``.
    input_url
        Any fsspec URL of CSV or Parquet files (a file, a directory or a glob), or a SQL
        source (``sqlite:///x.db?table=loans&index=id``, ``?query=SELECT...&index=id``).
    output_url
        A new or empty directory, or the output of a previous score.
    id_columns
        Input columns copied into the output, in front of the predictions.
    fmt
        ``auto`` (from the file names), ``csv`` or ``parquet``.
    partition_rows
        Parquet: row groups of one file are grouped into partitions of up to this many rows
        (a row group is never split). SQL: ranges of the index column of about this many rows.
    blocksize
        CSV: bytes per partition (``"64MiB"``); compressed files are one partition each.
    client
        The ``distributed.Client`` to run on (default: the current one).
    device
        XGBoost's device for the predictions (``cpu``, ``cuda``); default: the device the
        model trained on (``schema.json``). A GPU that some worker cannot see is refused
        (:func:`pipeline.train.check_device`) rather than silently replaced by the CPU.

    Examples
    --------
    >>> result = score_to("s3://b/mlpipe/models/demo", "s3://b/applications/",
    ...                   "s3://b/scores/2026-11-29/", id_columns=["application_id"])
    ...                                                                  # doctest: +SKIP
    >>> result.rows_out, result.output                                   # doctest: +SKIP
    (100000000, 's3://b/scores/2026-11-29/')
    """
    from distributed import as_completed, get_client

    import cluster
    from pipeline import artifacts
    from pipeline.train import check_device

    client = client or get_client()
    artifacts.check_writable(output_url, storage_options)  # before any compute
    storage = artifacts.StorageTally.begin("scoring job", client)
    started = time.perf_counter()
    started_at = artifacts.utcnow()
    bundle = artifacts.open_bundle(model_url, storage_options)
    device = device or bundle.json("schema.json").get("device", "cpu")
    model = _Model(bundle.url, bundle.manifest["_sha256"], dict(storage_options or {}), device)
    warming = cluster.warm(client, _warm_worker, model)  # while this process plans
    plan = plan_score(model_url, input_url, output_url, id_columns=id_columns, fmt=fmt,
                      partition_rows=partition_rows, blocksize=blocksize,
                      storage_options=storage_options, bundle=bundle)
    cluster.refuse_memory_urls(client, {"output": output_url})
    plan.device = device
    check_device(client, plan.device, "score on the CPU: mlpipe score --device cpu")
    fs, out = artifacts.filesystem(output_url, plan.storage_options)
    _unpublish(fs, out)
    done = _verified_parts(plan)
    todo = [p for p in plan.pieces if p.index not in done]
    logger.info("scoring %s (%s %s file(s), %s partitions) with model run %s -> %s%s",
                input_url, len(plan.source.files), plan.source.format, len(plan.pieces),
                plan.run_id, output_url,
                f"; {len(done)} part(s) already written and verified: skipped" if done else "")

    stats: dict[int, dict[str, Any]] = {}
    profile = bundle.json(PROFILE) if plan.drift else None  # read once: bins, then the report
    if todo:
        bins = binnings(profile) if plan.drift else None
        stats = _run_parts(client, model, plan, todo, started, progress_every,
                           as_completed, bins, warming)
    for index, info in done.items():
        stats[index] = {"rows_in": info["rows_in"], "rows_out": info["rows"],
                        "bytes": info["bytes"], "report": info.get("report", {}),
                        "drift": info.get("drift")}
    _remove_stale(fs, out, plan)
    seconds = time.perf_counter() - started
    manifest = _manifest(plan, stats, done, started_at, seconds)
    drift = _drift(profile, plan, stats)
    drift_payload = json.dumps(drift, indent=2, sort_keys=True, default=str).encode()
    artifacts.atomic_write(fs, artifacts.join(out, DRIFT), drift_payload)
    manifest["drift"] = {"file": DRIFT, "sha256": artifacts.sha256(drift_payload),
                         "drift": drift.get("drift"), "drifted": drift.get("drifted", []),
                         "outputs_drifted": drift.get("outputs_drifted", [])}
    manifest["storage"] = storage.counts()  # S3 requests and retried attempts so far
    payload = json.dumps(manifest, indent=2, sort_keys=True).encode()
    artifacts.atomic_write(fs, artifacts.join(out, MANIFEST), payload)
    artifacts.atomic_write(fs, artifacts.join(out, SUCCESS), json.dumps(
        {"manifest_sha256": artifacts.sha256(payload), "rows": manifest["rows_out"],
         "finished_at": manifest["finished_at"]}).encode())
    result = ScoreResult(output=output_url, rows_in=manifest["rows_in"],
                         rows_out=manifest["rows_out"], parts=len(plan.pieces),
                         written=len(todo), skipped=len(done),
                         rows_scored=manifest["rows_scored"], seconds=seconds,
                         manifest=manifest)
    logger.info("[%6.1fs] %s rows in %s part(s) at %s: %s rows scored now (%s rows/s), "
                "%s part(s) kept from before", seconds, f"{result.rows_out:,}", result.parts,
                output_url, f"{result.rows_scored:,}", f"{result.rows_per_second:,.0f}",
                result.skipped)
    logger.info(storage.summary())
    client.cancel(warming)  # done, or never waited on (every part was kept from before)
    return result


def _unpublish(fs: Any, out: str) -> None:
    """The output is about to change: a reader must not take it for complete meanwhile."""
    from pipeline import artifacts

    for name in (SUCCESS, MANIFEST, DRIFT):
        path = artifacts.join(out, name)
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if "NoSuchKey" not in str(exc) and "Not Found" not in str(exc):
                raise
    if artifacts.is_local(fs):
        fs.makedirs(out, exist_ok=True)


def _plan_for_tasks(plan: Plan) -> dict[str, Any]:
    """The small, picklable part of the plan every task needs (no per-piece data)."""
    return {"format": plan.source.format, "columns": plan.read_columns,
            "id_columns": plan.id_columns, "csv_dtypes": plan.csv_dtypes,
            "csv_sep": plan.csv_sep, "output": plan.output, "key": plan.key,
            "run_id": plan.run_id, "manifest_sha256": plan.manifest_sha256,
            "fingerprint": plan.source.fingerprint, "width": plan.width,
            "storage_options": plan.storage_options}


def _run_parts(client: Any, model: _Model, plan: Plan, todo: list[Piece], started: float,
               progress_every: float, as_completed: Any, bins: Any = None,
               warming: Sequence[Any] = ()) -> dict[int, dict[str, Any]]:
    import uuid

    # nothing goes to the workers before they have loaded the model: a failed load is raised
    # as it is, and a message unpickled while a worker is still importing pandas could meet
    # a half-imported module
    client.gather(list(warming))
    # the bins hold every training level of the category columns: sent to each worker once
    remote_bins = None if bins is None else _broadcast(bins, client)
    job = uuid.uuid4().hex[:8]  # keys of this job only: a piece may be scored again later
    futures = client.map(_score_part, todo, model=model, plan=_plan_for_tasks(plan),
                         bins=remote_bins,
                         key=[f"mlpipe-score-{job}-{piece.index}" for piece in todo])
    stats: dict[int, dict[str, Any]] = {}
    rows = 0
    last_log = time.perf_counter()
    try:
        for future, part in as_completed(futures, with_results=True):
            stats[part.pop("partition")] = part
            rows += part["rows_in"]
            now = time.perf_counter()
            if now - last_log >= progress_every or len(stats) == len(todo):
                last_log = now
                logger.info("[%6.1fs] %s/%s parts written, %s rows, %s rows/s%s",
                            now - started, len(stats), len(todo), f"{rows:,}",
                            f"{rows / max(now - started, 1e-9):,.0f}", _memory(client))
            future.release()
    except BaseException:
        client.cancel(futures)
        raise
    return stats


def _memory(client: Any) -> str:
    """'; worker memory up to X GiB' from the scheduler's heartbeats (no extra worker calls)."""
    try:
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
        peak = max((w.get("metrics", {}).get("memory", 0) for w in workers.values()), default=0)
    except Exception:  # progress is a courtesy; never fail the job for it
        return ""
    return f"; worker memory up to {peak / 2**30:.2f} GiB" if peak else ""


def _remove_stale(fs: Any, out: str, plan: Plan) -> None:
    """Parts this job does not produce (an older, longer input) and temp files of killed
    writers: removed before the output is published."""
    from pipeline import artifacts

    wanted = {plan.part_name(p.index) for p in plan.pieces}
    stale = []
    fs.invalidate_cache(out)  # the workers' writes are not in this process's listing cache
    for name in fs.ls(out, detail=False):
        base = name.rstrip("/").rsplit("/", 1)[-1]
        if (_PART.match(base) and base not in wanted) or base.startswith(".tmp-"):
            stale.append(artifacts.join(out, base))
    for path in stale:
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass
    if stale:
        logger.info("removed %s stale file(s) from the output", len(stale))


def _manifest(plan: Plan, stats: Mapping[int, Mapping[str, Any]],
              done: Mapping[int, Any], started_at: str, seconds: float) -> dict[str, Any]:
    from pipeline import artifacts

    missing_parts = [p.index for p in plan.pieces if p.index not in stats]
    if missing_parts:
        raise ScoreError(f"partitions {missing_parts[:5]} of {plan.output} were not written; "
                         "rerun the same command to finish (written parts are kept)")
    missing: dict[str, int] = {}
    unseen: dict[str, int] = {}
    parts = []
    for piece in plan.pieces:
        s = stats[piece.index]
        if s["rows_in"] != s["rows_out"]:
            raise ScoreError(f"{piece.describe(plan.source.format)}: {s['rows_in']} rows in, "
                             f"{s['rows_out']} out; the output is not published")
        for column, n in s["report"].get("missing_values", {}).items():
            missing[column] = missing.get(column, 0) + int(n)
        for column, n in s["report"].get("unseen_categories", {}).items():
            unseen[column] = unseen.get(column, 0) + int(n)
        parts.append({"name": plan.part_name(piece.index), "partition": piece.index,
                      "rows": s["rows_out"], "bytes": s["bytes"],
                      "source": piece.describe(plan.source.format),
                      "skipped": piece.index in done})
    rows_in = sum(s["rows_in"] for s in stats.values())
    rows_out = sum(s["rows_out"] for s in stats.values())
    scored = sum(s["rows_in"] for i, s in stats.items() if i not in done)
    return {
        "format": FORMAT,
        "key": plan.key,
        "model": {"url": plan.model_url, "name": plan.model_name, "run_id": plan.run_id,
                  "manifest_sha256": plan.manifest_sha256, "task": plan.task,
                  "device": plan.device},
        "input": {"url": plan.source.url, "format": plan.source.format,
                  "fingerprint": plan.source.fingerprint, "files": len(plan.source.files),
                  "bytes": plan.source.bytes, "partitions": len(plan.pieces),
                  "partitioning": {
                      "parquet": {"row_groups_up_to_rows": plan.partition_rows},
                      "sql": {"index_ranges_of_about_rows": plan.partition_rows},
                      "csv": {"blocksize": plan.blocksize}}[plan.source.format]},
        "output": plan.output,
        "id_columns": plan.id_columns,
        "columns": [*plan.id_columns, *plan.prediction_columns],
        "rows_in": rows_in,
        "rows_out": rows_out,
        "missing_values": dict(sorted(missing.items())),
        "unseen_categories": dict(sorted(unseen.items())),
        "extra_columns": plan.extra_columns,
        "parts": parts,
        "written_parts": len(plan.pieces) - len(done),
        "skipped_parts": len(done),
        "started_at": started_at,
        "finished_at": artifacts.utcnow(),
        "seconds": round(seconds, 3),
        "rows_scored": scored,
        "rows_per_second": round(scored / seconds, 1) if scored and seconds > 0 else None,
        "versions": artifacts.library_versions(),
    }


def _drift(profile: Any, plan: Plan, stats: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """``_drift.json``: the merged sketches of every part against the model's profile."""
    model = {"run_id": plan.run_id, "manifest_sha256": plan.manifest_sha256,
             "url": plan.model_url}
    if not plan.drift:
        return {"format": "mlpipe-drift/1", "drift": None, "model": model,
                "note": f"model run {plan.run_id} has no {PROFILE} (it was trained before "
                        "mlpipe monitored drift): no drift was computed; retrain it to get one"}
    current = merge(*(s["drift"] for _, s in sorted(stats.items())))
    report = drift_report(profile, current)
    flagged = report["drifted"] + [f"output {c}" for c in report["outputs_drifted"]]
    if flagged:
        logger.warning("drift against the training data of %s in %s (details: %s)",
                       plan.run_id, ", ".join(flagged), DRIFT)
    else:
        logger.info("no drift against the training data of %s (%s columns checked)",
                    plan.run_id, len(report["columns"]) + len(report["outputs"]))
    return {**report, "model": model, "input": plan.source.url}


def read_drift(output_url: str, storage_options: Mapping[str, Any] | None = None
               ) -> dict[str, Any]:
    """``_drift.json`` of a *published* score output, checked against its manifest's sha256.

    Examples
    --------
    >>> read_drift("s3://b/scores/2026-11-29")["drifted"]             # doctest: +SKIP
    ['income']
    """
    from pipeline import artifacts

    manifest = read_manifest(output_url, storage_options)
    listed = manifest.get("drift")
    if not listed:
        raise ScoreError(f"{output_url} was scored by an mlpipe without drift monitoring (its "
                         f"manifest lists no {DRIFT}); score it again")
    fs, out = artifacts.filesystem(output_url, storage_options)
    raw = fs.cat_file(artifacts.join(out, DRIFT))
    if artifacts.sha256(raw) != listed["sha256"]:
        raise ScoreError(f"{output_url}/{DRIFT} does not match its manifest; the output was "
                         "changed after it was published")
    return json.loads(raw)


def read_manifest(output_url: str, storage_options: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
    """The score manifest of a *published* output (``_SUCCESS`` present and matching).

    Examples
    --------
    >>> read_manifest("s3://b/scores/2026-11-29")["rows_out"]         # doctest: +SKIP
    100000000
    """
    from pipeline import artifacts

    fs, out = artifacts.filesystem(output_url, storage_options)
    try:
        marker = json.loads(fs.cat_file(artifacts.join(out, SUCCESS)))
    except FileNotFoundError:
        raise ScoreError(f"{output_url} has no {SUCCESS}: the scoring did not finish (rerun "
                         "the same command to complete it)") from None
    raw = fs.cat_file(artifacts.join(out, MANIFEST))
    if artifacts.sha256(raw) != marker.get("manifest_sha256"):
        raise ScoreError(f"{output_url}/{MANIFEST} does not match its {SUCCESS}; the output "
                         "was changed after it was published")
    return json.loads(raw)
