"""``mlpipe serve``: an HTTP API (FastAPI on uvicorn) over a model bundle, hot-swapped on promotion.

What a request goes through::

    body (<= --max-body)  ->  rows, column by column, checked against the bundle's input schema
                              (a missing column, a value that is not a number... : 422 naming
                              the column and the row; malformed JSON: 400; too big: 413)
                          ->  the same Predictor that ``mlpipe score`` ships to its workers
                              (predict_frame: the same output columns, the same numbers)
                          ->  {"predictions": [{"label": 1, "proba": 0.83}, ...]}

The model: a model URL (``<root>/models/<name>``) follows the registry's ``latest.json``: a
background thread reads the pointer every ``poll`` seconds and, when it names another version,
loads it and checks every file against the manifest (:func:`~pipeline.artifacts.load_predictor`)
off the request path, then replaces one reference. A request takes that reference once when it
starts, so it finishes on the version it started with, and says which one in the
``X-Mlpipe-Run-Id`` header. A version that fails verification is refused (logged, counted in
``/metrics``, listed in ``/model``) and the old one keeps serving. A run URL
(``<root>/runs/<run_id>``) is pinned.

Concurrency: predictions run in a thread pool (XGBoost releases the GIL; pandas mostly does
not), ``--workers N`` starts N processes that each load the model once (uvicorn needs an import
string for that: :func:`app_from_env`), and ``--batch-wait-ms`` groups concurrent small requests
into one predict call (the fixed per-call cost of the preprocessor is then paid once per batch).

The prediction log (``--log-to URL``): inputs as the model saw them, outputs, run id and time,
buffered in memory and written as Parquet parts (one PUT / one rename each) by a background
thread every N seconds or rows. A request only appends to the buffer; a failed write is kept
and retried, counted, and rows are dropped only past a bound, loudly.

Security: 127.0.0.1 unless ``--host`` says otherwise (a non-loopback address without a token
is warned about); ``--token-env VAR`` names the environment variable holding a bearer token
checked on every endpoint except ``/health``; the token is never logged or returned; no
endpoint takes a URL: the model is fixed when the server starts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hmac
import io
import ipaddress
import json
import logging
import os
import secrets
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.requests import ClientDisconnect

from pipeline import artifacts
from pipeline.artifacts import POINTER, BundleError
from pipeline.errors import did_you_mean

logger = logging.getLogger("pipeline")

#: the response header naming the version that answered
RUN_HEADER = "X-Mlpipe-Run-Id"
#: environment variable holding a :class:`ServeConfig` as JSON (how ``--workers`` processes,
#: or ``uvicorn --factory pipeline.serve:app_from_env``, get their settings)
ENV_CONFIG = "MLPIPE_SERVE_CONFIG"
#: the input keys of MLflow's scoring protocol (``/invocations``)
INPUT_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
#: micro-batching: requests of at most this many rows are grouped...
BATCH_REQUEST_ROWS = 32
#: ...into predict calls of at most this many rows
BATCH_MAX_ROWS = 512
#: a body over --max-body is read and discarded up to this multiple of the limit (so that the
#: client, still sending, gets the 413 rather than a reset connection), then the connection closes
DRAIN_FACTOR = 8
#: latency histogram buckets (seconds)
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_ENDPOINTS = ("/invocations", "/predict", "/health", "/ready", "/ping", "/model", "/metrics",
              "/version", "/docs", "/openapi.json")


class InputError(Exception):
    """A request the server refuses: an HTTP status, a kind (for ``/metrics``) and a message
    naming the column and row where there is one."""

    def __init__(self, status: int, kind: str, message: str, *, column: str | None = None,
                 row: int | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.column, self.row = column, row

    def body(self) -> dict[str, Any]:
        code = {400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 413: "REQUEST_TOO_LARGE",
                415: "UNSUPPORTED_MEDIA_TYPE", 503: "UNAVAILABLE"}.get(
            self.status, "INVALID_PARAMETER_VALUE")
        out: dict[str, Any] = {"error_code": code, "kind": self.kind, "message": self.message}
        if self.column is not None:
            out["column"] = self.column
        if self.row is not None:
            out["row"] = self.row
        return out


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``mlpipe serve`` takes; JSON-able, so that worker processes get it too.

    Parameters
    ----------
    model
        A model URL (``<root>/models/<name>``: follows its current version) or a run URL
        (``<root>/runs/<run_id>``: pinned).
    host, port
        Where to listen (port 0: any free port, printed when the server starts).
    poll
        Seconds between two reads of ``latest.json`` (model URLs; 0 turns following off).
    token_env
        Name of the environment variable holding the bearer token (never the token itself).
    workers, threads
        Processes, and prediction threads per process.
    batch_wait_ms
        Micro-batching: how long a small request waits for others to share its predict call
        (0: off).
    max_body, max_rows
        Bytes per request body, rows per request.
    log_to, log_every, log_rows
        Prediction log: fsspec URL, and flush every ``log_every`` seconds or ``log_rows`` rows.
    access_log
        uvicorn's one line per request (method, path, status; never headers or bodies).
    """

    model: str
    host: str = "127.0.0.1"
    port: int = 8080
    poll: float = 10.0
    token_env: str | None = None
    workers: int = 1
    threads: int = 0  # 0: the number of CPUs
    batch_wait_ms: float = 0.0
    max_body: int = 10 * 10**6
    max_rows: int = 100_000
    log_to: str | None = None
    log_every: float = 60.0
    log_rows: int = 10_000
    access_log: bool = True

    def __post_init__(self) -> None:
        artifacts.split_url(self.model)  # BundleError: neither a run nor a model URL
        for name in ("poll", "batch_wait_ms", "log_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}")
        for name in ("workers", "max_body", "max_rows", "log_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535; got {self.port}")

    @property
    def n_threads(self) -> int:
        return self.threads or max(2, os.cpu_count() or 2)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        doc = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ValueError(f"{ENV_CONFIG} has unknown keys {unknown}; known: {sorted(known)}")
        return cls(**doc)


def parse_size(text: str | int) -> int:
    """Bytes from ``10MB``, ``512KiB``, ``1e6`` or ``1048576``.

    Examples
    --------
    >>> parse_size("10MB"), parse_size("1KiB"), parse_size(5)
    (10000000, 1024, 5)
    """
    if isinstance(text, int):
        return text
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10,
             "mib": 2**20, "gib": 2**30, "k": 10**3, "m": 10**6, "g": 10**9}
    raw = text.strip().lower().replace(" ", "")
    number = raw.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = raw[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or value < 0:
        raise ValueError(f"{text!r} is not a size; expected e.g. 10MB, 512KiB or 1000000")
    return int(value * units[unit])


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine.

    Examples
    --------
    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to is reachable from elsewhere


def security_warnings(config: ServeConfig) -> list[str]:
    """What ``mlpipe serve`` warns about before it starts (nothing secret is in them)."""
    out = []
    if not is_loopback(config.host) and not config.token_env:
        out.append(f"serving on {config.host}, which other machines can reach, without a token: "
                   "anyone who can connect can use the model and read /model and /metrics. "
                   "Pass --token-env VAR (a bearer token in that environment variable), or "
                   "--host 127.0.0.1 behind a proxy that authenticates")
    return out


def read_token(config: ServeConfig) -> bytes | None:
    """The bearer token from ``config.token_env`` (``None`` without one)."""
    if not config.token_env:
        return None
    value = os.environ.get(config.token_env, "")
    if not value.strip():
        raise ValueError(f"--token-env {config.token_env}: the environment variable "
                         f"{config.token_env} is not set or is empty; set it to the token "
                         "clients must send as 'Authorization: Bearer <token>'")
    return value.strip().encode()


# --------------------------------------------------------------------------- the loaded model


@dataclass(frozen=True)
class Column:
    """One input column: its name, how it is read (``number``, ``category``, ``bool``,
    ``datetime``, as the model's input schema reads it) and its training dtype."""

    name: str
    kind: str
    dtype: str


@dataclass(frozen=True)
class Loaded:
    """One verified version, ready to predict; replaced whole on a swap, never changed."""

    predictor: Any
    run_id: str
    url: str
    manifest: dict[str, Any] = field(repr=False)
    schema: dict[str, Any] = field(repr=False)
    columns: tuple[Column, ...] = field(repr=False)
    id_columns: tuple[str, ...]
    outputs: tuple[str, ...]
    loaded_at: str
    load_seconds: float
    #: column -> the known levels of each encoder that counts unseen levels of that column
    vocabularies: dict[str, list[frozenset]] = field(repr=False)
    #: encoders whose vocabulary is not a plain {column: levels} mapping: asked via unseen()
    other_unseen: tuple[Any, ...] = field(repr=False)
    predict_types: Any = field(repr=False)  # pydantic TypeAdapter of the /predict body

    @property
    def manifest_sha256(self) -> str:
        return self.manifest["_sha256"]

    @property
    def feature_columns(self) -> list[str]:
        return [c.name for c in self.columns]

    def describe(self) -> dict[str, Any]:
        """What ``GET /model`` shows of this version."""
        return {
            "run_id": self.run_id, "url": _public_url(self.url), "name": self.manifest.get("name"),
            "family": self.schema.get("family"), "task": self.schema.get("task"),
            "created_at": self.manifest.get("created_at"),
            "headline": self.manifest.get("headline", {}),
            "loaded_at": self.loaded_at, "load_seconds": round(self.load_seconds, 3),
            "manifest_sha256": self.manifest_sha256,
            "schema": {"columns": {c.name: c.dtype for c in self.columns},
                       "kinds": {c.name: c.kind for c in self.columns},
                       "id_columns": list(self.id_columns),
                       "target": self.schema.get("target"), "classes": self.schema.get("classes"),
                       "threshold": self.schema.get("threshold"), "outputs": list(self.outputs)},
        }


def load_version(bundle: artifacts.Bundle) -> Loaded:
    """Verify and load one version of a bundle for serving.

    Every file the manifest lists is checked (:func:`~pipeline.artifacts.load_predictor`);
    raises :class:`~pipeline.artifacts.BundleError` when one does not match.

    Examples
    --------
    >>> loaded = load_version(artifacts.open_bundle("out/models/demo"))   # doctest: +SKIP
    >>> loaded.run_id, loaded.outputs                                     # doctest: +SKIP
    ('20261204T155558.161Z-99e6b92f-7c90', ('label', 'proba'))
    """
    start = time.perf_counter()
    predictor = artifacts.load_predictor(bundle)
    schema = bundle.json("schema.json")
    declared = schema.get("columns", {})
    kinds = list(predictor.schema.kinds_)
    columns = tuple(Column(name, str(kind), str(declared.get(name, kind)))
                    for name, kind in zip(predictor.feature_columns, kinds))
    vocabularies, other = _vocabularies(predictor, {c.name for c in columns})
    outputs = tuple(predictor.prediction_columns())
    _warm_up(predictor, columns)
    ids = tuple(c for c in schema.get("id_columns", []) if c not in {x.name for x in columns})
    return Loaded(predictor=predictor, run_id=bundle.run_id, url=bundle.url,
                  manifest=bundle.manifest, schema=schema, columns=columns, id_columns=ids,
                  outputs=outputs, loaded_at=artifacts.utcnow(),
                  load_seconds=time.perf_counter() - start, vocabularies=vocabularies,
                  other_unseen=tuple(other),
                  predict_types=_predict_types(columns, ids, outputs, predictor.classes))


def _warm_up(predictor: Any, columns: Sequence[Column]) -> None:
    """Predict one row of missing values, so that the first request does not pay for
    compiling the feature kernels (numba, 0.1-0.7 s each) and the booster's first call."""
    frame = pd.DataFrame({c.name: np.array([np.nan]) if c.kind == "number"
                          else np.array([None], dtype=object) for c in columns})
    try:
        predictor.predict_frame(frame)
    except Exception as exc:  # e.g. a family that refuses missing values: requests will tell
        logger.debug("warm-up prediction failed: %s: %s", type(exc).__name__, exc)


def _vocabularies(predictor: Any, columns: set[str]) -> tuple[dict[str, list[frozenset]],
                                                                list[Any]]:
    """The known levels per column of every encoder that reports unseen levels.

    Why not ``step.unseen(frame)`` per request: it rebuilds the vocabulary set on each call
    (~100 ms for the demo model's employer column, 4x the prediction itself). The sets are
    built once here; the counting rule is the encoders' own (``preprocess._outside``: a level
    is unseen when it is not missing and not in the vocabulary, ``__rare__`` excluded), and a
    test checks the counts against ``Predictor.report``.
    """
    from pipeline.preprocess import RARE

    out: dict[str, list[frozenset]] = defaultdict(list)
    other = []
    for _, step in predictor.preprocessor.steps[1:]:
        if not hasattr(step, "unseen"):
            continue
        vocab = getattr(step, "vocabulary_", None)
        if not isinstance(vocab, Mapping):
            vocab = getattr(step, "categories_", None)
        if not isinstance(vocab, Mapping):
            other.append(step)
            continue
        for column, levels in vocab.items():
            if column in columns:
                out[column].append(frozenset(str(v) for v in levels) - {RARE})
    return dict(out), other


def _predict_types(columns: Sequence[Column], ids: Sequence[str], outputs: Sequence[str],
                   classes: Sequence[Any] | None) -> Any:
    """The typed ``/predict`` body (strict: numbers are JSON numbers, levels JSON strings,
    every column present, no unknown key) and its response, as pydantic types."""
    from typing import Annotated

    from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model
    from typing_extensions import NotRequired, TypedDict

    python = {"number": float, "category": str, "bool": bool, "datetime": dt.datetime}
    row: dict[str, Any] = {}
    for c in columns:
        strict = c.kind != "datetime"  # datetimes arrive as ISO strings
        row[c.name] = Annotated[python.get(c.kind, str) | None, Field(
            strict=strict, description=f"{c.kind} (training dtype {c.dtype}); null = missing")]
    for name in ids:
        row[name] = NotRequired[Annotated[int | str | None, Field(
            description="id column: passed through to the prediction")]]
    Row = TypedDict("Row", row)  # noqa: N806 (a type; functional form: any column name)
    Row.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]

    label = float
    if classes:
        if all(isinstance(c, bool) for c in classes):
            label = bool
        elif all(isinstance(c, int) for c in classes):
            label = int
        else:
            label = str
    fields: dict[str, Any] = {name: (int | str | None, Field(
        None, description="id column, when the request has it")) for name in ids}
    for name in outputs:
        if name == "label":
            fields[name] = (label, Field(description=f"the predicted class; one of {classes}"))
        elif name == "proba":
            fields[name] = (float | None, Field(
                description=f"P({classes[-1] if classes else 'positive'}); the label uses the "
                            "bundle's threshold"))
        elif name.startswith("proba_"):
            fields[name] = (float | None, Field(description=f"P({name[6:]})"))
        else:
            fields[name] = (float | None, Field(description="the predicted value"))
    Prediction = create_model("Prediction", **fields)  # noqa: N806

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        rows: list[Row] = Field(description="one object per row, every input column in it")

    class PredictResponse(BaseModel):
        run_id: str = Field(description="the version that answered")
        predictions: list[Prediction]  # type: ignore[valid-type]

    class InvocationsResponse(BaseModel):
        predictions: list[Prediction]  # type: ignore[valid-type]

    return dataclasses.make_dataclass("PredictTypes", ["request", "rows", "response",
                                                       "invocations"])(
        PredictRequest, TypeAdapter(list[Row]), PredictResponse, InvocationsResponse)


# --------------------------------------------------------------------------- hot swap


class ModelHolder:
    """The version being served, and the thread that follows the registry.

    ``current`` is a single reference, replaced (never mutated) when a newer version has been
    loaded and verified; readers take it once per request.

    Examples
    --------
    >>> holder = ModelHolder("s3://b/mlpipe/models/demo", poll=10)     # doctest: +SKIP
    >>> holder.load().run_id                                          # doctest: +SKIP
    >>> holder.start()          # follow latest.json in the background  # doctest: +SKIP
    """

    def __init__(self, url: str, *, poll: float = 10.0, metrics: Metrics | None = None,
                 storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.poll = poll
        self.metrics = metrics or Metrics()
        self.storage_options = dict(storage_options or {})
        self.root, kind, self.key = artifacts.split_url(url)
        self.follows = kind == "models"
        self._current: Loaded | None = None
        self._refused: dict[tuple[str, str | None], dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pointer: tuple[Any, str] | None = None
        self._last_problem: str | None = None
        self.last_check: str | None = None

    @property
    def current(self) -> Loaded | None:
        return self._current

    def load(self) -> Loaded:
        """Load the configured URL's version now (raises if it cannot be loaded)."""
        loaded = load_version(artifacts.open_bundle(self.url, self.storage_options))
        self._current = loaded
        self.metrics.model_loaded(loaded)
        logger.info("loaded %s: run %s (%s, %s), every file verified, in %.1f s",
                    _public_url(self.url), loaded.run_id, loaded.schema.get("family"),
                    loaded.schema.get("task"), loaded.load_seconds)
        return loaded

    def check(self) -> str:
        """Read the pointer once; load, verify and swap in a new version. Returns
        ``pinned``, ``unchanged``, ``swapped``, ``refused`` or ``error``."""
        if not self.follows:
            return "pinned"
        self.last_check = artifacts.utcnow()
        if self._pointer is None:
            fs, models = artifacts.filesystem(artifacts.join(self.root, "models", self.key),
                                              self.storage_options)
            self._pointer = (fs, artifacts.join(models, POINTER))
        fs, path = self._pointer
        doc = artifacts.read_pointer(fs, path).doc
        if doc is None:
            self._problem(f"{_public_url(self.url)}/{POINTER} has disappeared; still serving "
                          f"{self._current.run_id if self._current else 'nothing'}")
            return "unchanged"
        run_id, sha = doc["run_id"], doc.get("manifest_sha256")
        current = self._current
        if current is not None and current.run_id == run_id and sha in (None,
                                                                       current.manifest_sha256):
            self._last_problem = None
            return "unchanged"
        if (run_id, sha) in self._refused:
            return "refused"
        start = time.perf_counter()
        try:
            bundle = artifacts.open_bundle(artifacts.join(self.root, "runs", run_id),
                                           self.storage_options)
            if sha and bundle.manifest["_sha256"] != sha:
                raise BundleError(f"the manifest of {run_id} does not match the sha256 in "
                                  f"{POINTER}")
            loaded = load_version(bundle)
        except BundleError as exc:
            reason = str(exc)
            self._refused[(run_id, sha)] = {"run_id": run_id, "reason": reason,
                                            "at": artifacts.utcnow()}
            self.metrics.count("model_refused")
            logger.error("refused version %s of %s: %s; still serving %s", run_id,
                         _public_url(self.url), reason, current.run_id if current else "nothing")
            return "refused"
        except Exception as exc:  # storage unreachable, ...: try again at the next poll
            self.metrics.count("model_load_errors")
            self._problem(f"could not load version {run_id} of {_public_url(self.url)} "
                          f"({type(exc).__name__}: {exc}); will retry in {self.poll:g} s")
            return "error"
        self._current = loaded  # the swap: requests that took the old reference finish on it
        self.metrics.model_loaded(loaded)
        self.metrics.count("model_swaps")
        self._last_problem = None
        logger.info("now serving run %s of %s (was %s): loaded and verified in %.1f s",
                    run_id, _public_url(self.url), current.run_id if current else "nothing",
                    time.perf_counter() - start)
        return "swapped"

    def refused(self) -> list[dict[str, Any]]:
        return list(self._refused.values())

    def start(self) -> None:
        """Follow the pointer in a daemon thread (model URLs with ``poll > 0``)."""
        if not self.follows or self.poll <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._follow, name="mlpipe-serve-poll",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _follow(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self.check()
            except Exception as exc:  # never let the thread die: the old version keeps serving
                self._problem(f"could not read {_public_url(self.url)}/{POINTER} "
                              f"({type(exc).__name__}: {exc}); will retry in {self.poll:g} s")

    def _problem(self, message: str) -> None:
        if message != self._last_problem:  # once per distinct problem, not every poll
            logger.warning(message)
            self._last_problem = message


def _public_url(url: str) -> str:
    """``url`` without user info or query (where credentials could hide)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.scheme and parts.netloc and ("@" in parts.netloc or parts.query):
        netloc = parts.netloc.rsplit("@", 1)[-1]
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return url


# --------------------------------------------------------------------------- reading rows


@dataclass
class Rows:
    """A request's rows, column by column, already converted to what the model reads:
    float64 numbers, levels as ``str`` (``None``: missing), bools, datetimes."""

    n: int
    columns: dict[str, np.ndarray]
    ids: dict[str, list[Any]]


def parse_invocations(body: bytes, content_type: str, loaded: Loaded, max_rows: int) -> Rows:
    """Rows from an MLflow scoring-protocol request (``/invocations``).

    JSON with exactly one of ``dataframe_split`` (``{"columns": [...], "data": [[...]]}``),
    ``dataframe_records`` (``[{column: value}]``), ``instances`` or ``inputs`` (records, or
    ``{column: [values]}``), or a CSV body (``text/csv``, a header line first).

    Examples
    --------
    >>> parse_invocations(b'{"dataframe_records": [{"income": 52000, ...}]}',
    ...                   "application/json", loaded, 1000).n                 # doctest: +SKIP
    1
    """
    media = content_type.split(";")[0].strip().lower()
    if media in ("text/csv", "application/csv"):
        return _from_csv(body, loaded, max_rows)
    if media not in ("", "application/json") and not media.endswith("+json"):
        raise InputError(415, "unsupported_media_type",
                         f"Content-Type {media!r} is not supported; send application/json "
                         "(dataframe_split, dataframe_records, instances or inputs) or text/csv")
    doc = _json(body)
    if not isinstance(doc, dict):
        raise InputError(422, "bad_format", "the body must be a JSON object with one of the "
                                            f"keys {', '.join(INPUT_KEYS)}")
    keys = [k for k in INPUT_KEYS if k in doc]
    unknown = sorted(set(doc) - set(INPUT_KEYS) - {"params"})
    if len(keys) != 1 or unknown:
        found = sorted(doc)
        raise InputError(422, "bad_format", f"the body must hold exactly one of "
                                            f"{', '.join(INPUT_KEYS)}; found keys {found}")
    if doc.get("params"):
        raise InputError(422, "bad_format", "'params' are not supported by mlpipe models")
    key, value = keys[0], doc[keys[0]]
    if key == "dataframe_split":
        return _from_split(value, loaded, max_rows)
    if key == "dataframe_records" or (isinstance(value, list) and value
                                      and isinstance(value[0], dict)):
        return _from_records(value, loaded, max_rows, key)
    if isinstance(value, list) and not value:
        return _from_records(value, loaded, max_rows, key)
    if isinstance(value, dict):
        return _from_columns(value, loaded, max_rows, key)
    raise InputError(422, "bad_format", f"{key!r} must be a list of records "
                                        "([{column: value}]) or an object of columns "
                                        "({column: [values]}); lists of values need column "
                                        "names: use dataframe_split")


def parse_predict(body: bytes, loaded: Loaded, max_rows: int) -> Rows:
    """Rows from a typed ``/predict`` request: ``{"rows": [{column: value, ...}]}`` checked
    against the version's generated schema (strict types, every column, no unknown key)."""
    from pydantic import ValidationError

    doc = _json(body)
    if not isinstance(doc, dict) or set(doc) != {"rows"} or not isinstance(doc["rows"], list):
        raise InputError(422, "bad_format", 'the body must be {"rows": [{column: value, ...}]}')
    rows = doc["rows"]
    _check_rows(len(rows), max_rows)
    try:
        valid = loaded.predict_types.rows.validate_python(rows)
    except ValidationError as exc:
        raise _validation_error(exc, loaded) from None
    return _from_records(valid, loaded, max_rows, "rows")


def _validation_error(exc: Any, loaded: Loaded) -> InputError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = list(first["loc"])
    row = loc[0] if loc and isinstance(loc[0], int) else None
    column = str(loc[1]) if len(loc) > 1 else None
    if first["type"] == "missing" and column is not None:
        kind = "missing_column"
        text = f"row {row}: column {column!r} is missing (every input column is required; " \
               "send null for a missing value)"
    elif first["type"] == "extra_forbidden" and column is not None:
        kind = "unknown_column"
        text = f"row {row}: {column!r} is not an input column of this model" \
               f"{did_you_mean(column, loaded.feature_columns)}"
    else:
        kind = "bad_value"
        value = first.get("input")
        text = f"column {column!r}, row {row}: {first['msg'].lower()}; got {_show(value)}"
    more = f" ({len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" \
        if len(errors) > 1 else ""
    return InputError(422, kind, text + more, column=column, row=row)


def _json(body: bytes) -> Any:
    """The parsed body: orjson (4x faster than json on a 1,000-row body), else the standard
    library, which also reads what MLflow clients may send and orjson refuses (``NaN``,
    ``Infinity``, integers beyond 64 bits) and words its errors with line and column."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise InputError(400, "malformed_json", f"the body is not valid JSON: {exc.msg} at line "
                                                f"{exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:  # bad UTF-8, an integer of 5,000 digits...
        raise InputError(400, "malformed_json", f"the body is not valid JSON: "
                                                f"{type(exc).__name__}: {str(exc)[:200]}") \
            from None


def _check_rows(n: int, max_rows: int) -> None:
    if n > max_rows:
        raise InputError(413, "too_many_rows", f"{n:,} rows in one request; this server takes "
                                               f"at most {max_rows:,} (--max-rows): split it")


def _from_split(value: Any, loaded: Loaded, max_rows: int) -> Rows:
    if not isinstance(value, dict) or not isinstance(value.get("data"), list):
        raise InputError(422, "bad_format", 'dataframe_split must be {"columns": [...], '
                                            '"data": [[...], ...]}')
    columns, data = value.get("columns"), value["data"]
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise InputError(422, "bad_format", "dataframe_split.columns must be a list of column "
                                            "names")
    if len(set(columns)) != len(columns):
        dup = next(c for c in columns if columns.count(c) > 1)
        raise InputError(422, "bad_format", f"column {dup!r} appears twice in "
                                            "dataframe_split.columns", column=dup)
    _check_rows(len(data), max_rows)
    width = len(columns)
    try:  # the usual case without a Python loop: every row a list of the right length
        fine = set(map(type, data)) <= {list} and set(map(len, data)) <= {width}
    except TypeError:
        fine = False
    for i, row in enumerate(() if fine else data):
        if not isinstance(row, list) or len(row) != width:
            got = f"{len(row)} values" if isinstance(row, list) else _show(row)
            raise InputError(422, "bad_format", f"dataframe_split.data row {i} has {got}; "
                                                f"expected a list of {width} (one per column)",
                             row=i)
    transposed = list(zip(*data)) if data else [()] * width
    return _convert(dict(zip(columns, transposed)), len(data), loaded)


def _from_records(records: Any, loaded: Loaded, max_rows: int, key: str) -> Rows:
    if not isinstance(records, list):
        raise InputError(422, "bad_format", f"{key} must be a list of objects")
    _check_rows(len(records), max_rows)
    present: set[str] = set()
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise InputError(422, "bad_format", f"{key}[{i}] is {_show(record)}; expected an "
                                                "object {column: value}", row=i)
        present.update(record)
    wanted = [*loaded.feature_columns, *loaded.id_columns]
    columns = {c: [r.get(c) for r in records] for c in wanted if c in present}
    if not records:
        columns = {c: [] for c in loaded.feature_columns}
    return _convert(columns, len(records), loaded)


def _from_columns(value: dict[str, Any], loaded: Loaded, max_rows: int, key: str) -> Rows:
    lists = {c: v if isinstance(v, list) else [v] for c, v in value.items()}
    lengths = {len(v) for v in lists.values()}
    if len(lengths) > 1:
        raise InputError(422, "bad_format", f"the columns of {key} have different lengths "
                                            f"{sorted(lengths)}")
    n = lengths.pop() if lengths else 0
    _check_rows(n, max_rows)
    return _convert(lists, n, loaded)


def _from_csv(body: bytes, loaded: Loaded, max_rows: int) -> Rows:
    # levels are read as text, as batch scoring reads declared string columns ("02134" stays)
    text_columns = {c.name: object for c in loaded.columns if c.kind != "number"}
    try:
        frame = pd.read_csv(io.BytesIO(body), dtype=text_columns)
    except pd.errors.EmptyDataError:
        raise InputError(400, "malformed_csv", "the CSV body is empty; send a header line "
                                               "with the column names, then the rows") from None
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(400, "malformed_csv", f"the CSV body could not be parsed: "
                                               f"{str(exc).strip()[:300]}") from None
    _check_rows(len(frame), max_rows)
    wanted = [*loaded.feature_columns, *loaded.id_columns]
    columns = {c: frame[c].tolist() for c in wanted if c in frame.columns}
    return _convert(columns, len(frame), loaded)


def _convert(columns: Mapping[str, Sequence[Any]], n: int, loaded: Loaded) -> Rows:
    missing = [c for c in loaded.feature_columns if c not in columns]
    if missing:
        extra = [c for c in columns if c not in set(loaded.feature_columns)]
        names = ", ".join(repr(c) for c in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise InputError(422, "missing_column",
                         f"the input has no column {names} (the model needs every input "
                         "column: send null for a missing value; GET /model lists them)"
                         f"{did_you_mean(missing[0], extra)}", column=missing[0])
    out = {}
    for c in loaded.columns:
        values = columns[c.name]
        if c.kind == "number":
            out[c.name] = _numbers(c.name, values)
        elif c.kind == "bool":
            out[c.name] = _bools(c.name, values)
        elif c.kind == "datetime":
            out[c.name] = _datetimes(c.name, values)
        else:
            out[c.name] = _levels(c.name, values)
    ids = {c: list(columns[c]) for c in loaded.id_columns if c in columns}
    return Rows(n=n, columns=out, ids=ids)


def _numbers(name: str, values: Sequence[Any]) -> np.ndarray:
    """float64; null -> NaN (missing); numeric strings and bools convert as in batch scoring."""
    try:
        array = np.asarray(values, dtype=np.float64)
        if array.ndim == 1:
            return array
    except (TypeError, ValueError, OverflowError):
        pass
    for i, v in enumerate(values):
        if v is None or (isinstance(v, (int, float, str)) and _is_float(v)):
            continue
        raise InputError(422, "bad_value", f"column {name!r}, row {i}: {_show(v)} is not a "
                                           "number (null is a missing value)", column=name, row=i)
    raise InputError(422, "bad_value", f"column {name!r}: the values are not numbers",
                     column=name)


def _is_float(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError, OverflowError):
        return False


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and v != v)


def _levels(name: str, values: Sequence[Any]) -> np.ndarray:
    """Levels as text (``str(value)``, as ``preprocess.as_text`` makes them); missing: None."""
    if set(map(type, values)) <= {str, type(None)}:  # the usual case, without a Python loop
        return np.array(values, dtype=object).reshape(len(values))
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        if type(v) is str:
            out[i] = v
        elif _missing(v):
            out[i] = None
        elif isinstance(v, (bool, int, float, np.generic)):
            out[i] = str(v)
        else:
            raise InputError(422, "bad_value", f"column {name!r}, row {i}: {_show(v)} is not a "
                                               "level (a string or a number)", column=name, row=i)
    return out


_TRUE = {"true": True, "false": False, "1": True, "0": False}


def _bools(name: str, values: Sequence[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        if isinstance(v, (bool, np.bool_)):
            out[i] = bool(v)
        elif _missing(v):
            out[i] = None
        elif isinstance(v, (int, str)) and str(v).strip().lower() in _TRUE:
            out[i] = _TRUE[str(v).strip().lower()]
        else:
            raise InputError(422, "bad_value", f"column {name!r}, row {i}: {_show(v)} is not "
                                               "true or false", column=name, row=i)
    return out


def _datetimes(name: str, values: Sequence[Any]) -> np.ndarray:
    raw = pd.Series(list(values), dtype=object)
    try:
        parsed = pd.to_datetime(raw, errors="coerce")
    except (TypeError, ValueError):
        parsed = pd.Series([pd.to_datetime(v, errors="coerce") for v in raw])
    bad = parsed.isna().to_numpy() & raw.notna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(422, "bad_value", f"column {name!r}, row {i}: {_show(raw.iloc[i])} is "
                                           "not a date/time", column=name, row=i)
    return parsed.to_numpy()


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------- predicting


@dataclass
class Answer:
    """One request's predictions: records for the response, columns for the log."""

    records: list[dict[str, Any]]
    outputs: dict[str, list[Any]]
    unseen: dict[str, int]


def predict(loaded: Loaded, parts: Sequence[Rows]) -> list[Answer]:
    """Predict several requests' rows in one call of the version's Predictor; one
    :class:`Answer` per part, in order. Raises what the Predictor raises."""
    if len(parts) == 1:
        columns = parts[0].columns
    else:
        columns = {c: np.concatenate([p.columns[c] for p in parts]) for c in parts[0].columns}
    frame = pd.DataFrame(columns, copy=False)
    out = loaded.predictor.predict_frame(frame)
    outputs = {}
    for name in out.columns:
        values = out[name].to_numpy()
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            outputs[name] = [None if not np.isfinite(v) else float(v) for v in values]
        else:
            outputs[name] = values.tolist()
    answers, start = [], 0
    names = list(outputs)
    for part in parts:
        stop = start + part.n
        cols = [outputs[k][start:stop] for k in names]
        keys = [*part.ids, *names]
        values = [*part.ids.values(), *cols]
        records = [dict(zip(keys, row)) for row in zip(*values)] if part.n else []
        answers.append(Answer(records=records, outputs={k: c for k, c in zip(names, cols)},
                              unseen=count_unseen(loaded, part)))
        start = stop
    return answers


def count_unseen(loaded: Loaded, rows: Rows) -> dict[str, int]:
    """Per column, the rows whose level no encoder of the version saw in training (summed over
    encoders, as :meth:`Predictor.report` counts them)."""
    out: dict[str, int] = {}
    for column, sets in loaded.vocabularies.items():
        values = rows.columns.get(column)
        if values is None:
            continue
        levels = values.tolist()
        distinct = set(levels)
        distinct.discard(None)
        n = 0
        for known in sets:
            new = distinct - known  # set operations: no Python loop over the rows
            if new:
                n += sum(1 for v in levels if v in new)
        if n:
            out[column] = n
    if loaded.other_unseen:
        frame = pd.DataFrame(rows.columns, copy=False)
        for step in loaded.other_unseen:
            for column, n in step.unseen(frame).items():
                if n:
                    out[column] = out.get(column, 0) + int(n)
    return out


# --------------------------------------------------------------------------- metrics


class Metrics:
    """Counters and a latency histogram, rendered in the Prometheus text format.

    Per process: with ``--workers N`` each worker counts its own requests (a scrape reaches
    one of them; the ``pid`` label says which).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str]] = Counter()
        self.rows: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.unseen: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self.hist: dict[str, list[float]] = {}
        self.gauges: dict[str, float] = {}
        self.loaded: Loaded | None = None

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, str(status))] += 1
            hist = self.hist.get(endpoint)
            if hist is None:
                hist = self.hist[endpoint] = [0.0] * (len(BUCKETS) + 2)
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    hist[i] += 1
                    break
            else:
                hist[len(BUCKETS)] += 1
            hist[-1] += seconds

    def answered(self, endpoint: str, rows: int, unseen: Mapping[str, int]) -> None:
        with self._lock:
            self.rows[endpoint] += rows
            self.unseen.update(unseen)

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] += 1

    def count(self, name: str, n: float = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def gauge(self, name: str, value: float) -> None:
        self.gauges[name] = value

    def model_loaded(self, loaded: Loaded) -> None:
        self.loaded = loaded

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        with self._lock:
            requests, rows = dict(self.requests), dict(self.rows)
            errors, unseen = dict(self.errors), dict(self.unseen)
            counters, gauges = dict(self.counters), dict(self.gauges)
            hist = {k: list(v) for k, v in self.hist.items()}
        pid = str(os.getpid())
        lines: list[str] = []

        def family(name: str, kind: str, text: str, samples: list[tuple[dict[str, str],
                                                                          float]]) -> None:
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                lines.append(f"{name}{_labels({**labels, 'pid': pid})} {_number(value)}")

        family("mlpipe_serve_requests_total", "counter", "Requests answered, by endpoint and "
               "HTTP status.", [({"endpoint": e, "code": c}, v)
                                for (e, c), v in sorted(requests.items())])
        family("mlpipe_serve_rows_total", "counter", "Rows predicted, by endpoint.",
               [({"endpoint": e}, v) for e, v in sorted(rows.items())])
        family("mlpipe_serve_errors_total", "counter", "Requests refused or failed, by kind "
               "(missing_column, bad_value, malformed_json, body_too_large, too_many_rows, "
               "unauthorized, internal, ...).",
               [({"kind": k}, v) for k, v in sorted(errors.items())])
        family("mlpipe_serve_unseen_categories_total", "counter", "Input levels never seen in "
               "training (treated as missing or pooled, per the model's input policy), by "
               "column.", [({"column": c}, v) for c, v in sorted(unseen.items())])
        lines.append("# HELP mlpipe_serve_request_seconds Time to answer a request (server "
                     "side), by endpoint.")
        lines.append("# TYPE mlpipe_serve_request_seconds histogram")
        for endpoint, h in sorted(hist.items()):
            cumulative = 0.0
            for bound, n in zip([*BUCKETS, float("inf")], h[:-1]):
                cumulative += n
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(f"mlpipe_serve_request_seconds_bucket"
                             f"{_labels({'endpoint': endpoint, 'le': le, 'pid': pid})} "
                             f"{_number(cumulative)}")
            tags = _labels({"endpoint": endpoint, "pid": pid})
            lines.append(f"mlpipe_serve_request_seconds_sum{tags} {h[-1]:.6f}")
            lines.append(f"mlpipe_serve_request_seconds_count{tags} {_number(cumulative)}")
        for name, text in (
                ("model_swaps", "Versions swapped in after verification."),
                ("model_refused", "New versions refused (verification failed)."),
                ("model_load_errors", "Attempts to load a new version that failed for another "
                                      "reason (retried at the next poll)."),
                ("batches", "Micro-batches predicted (--batch-wait-ms)."),
                ("batched_requests", "Requests answered through a micro-batch."),
                ("log_rows_written", "Prediction log rows written."),
                ("log_parts_written", "Prediction log parts written."),
                ("log_write_failures", "Prediction log writes that failed (each is retried)."),
                ("log_rows_dropped", "Prediction log rows dropped after the buffer bound was "
                                     "reached while writes kept failing.")):
            family(f"mlpipe_serve_{name}_total", "counter", text,
                   [({}, counters.get(name, 0))])
        for name, text in (("log_rows_buffered", "Prediction log rows waiting to be written."),):
            family(f"mlpipe_serve_{name}", "gauge", text, [({}, gauges.get(name, 0))])
        loaded = self.loaded
        if loaded is not None:
            family("mlpipe_serve_model_info", "gauge", "The version being served (value 1).",
                   [({"run_id": loaded.run_id, "family": str(loaded.schema.get("family")),
                      "task": str(loaded.schema.get("task"))}, 1)])
            stamp = dt.datetime.fromisoformat(loaded.loaded_at).timestamp()
            family("mlpipe_serve_model_loaded_timestamp_seconds", "gauge", "When the version "
                   "being served was loaded (Unix time).", [({}, stamp)])
        return "\n".join(lines) + "\n"


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# --------------------------------------------------------------------------- prediction log


@dataclass
class LogEntry:
    """One request's rows for the prediction log."""

    run_id: str
    served_at: float
    request_id: str
    rows: Rows
    outputs: dict[str, list[Any]]


class PredictionLog:
    """Inputs, outputs, run id and time of every prediction, written as Parquet parts.

    ``add`` appends to a buffer (it never waits on storage); a daemon thread writes the buffer
    every ``every`` seconds, or sooner once ``rows`` rows are waiting, as
    ``<url>/date=YYYY-MM-DD/part-<time>-<pid>-<token>-<n>.parquet`` (one part per version),
    each visible only complete (:func:`~pipeline.artifacts.atomic_write`). A part whose write
    fails is kept and retried at the next flush and counted; only when more than
    ``max_rows_kept`` rows are waiting are the oldest dropped, counted and logged as an error.

    Columns: ``__served_at`` (UTC), ``__run_id``, ``__request_id``, the id columns sent, every
    input column as the model read it, and ``__pred_<output>`` per output (as ``sample.parquet``
    in a bundle names them).
    """

    def __init__(self, url: str, *, every: float = 60.0, rows: int = 10_000,
                 metrics: Metrics | None = None, max_rows_kept: int | None = None,
                 storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.every = every
        self.rows = rows
        self.metrics = metrics or Metrics()
        self.max_rows_kept = max_rows_kept or max(100 * rows, 1_000_000)
        self.fs, self.base = artifacts.filesystem(url, storage_options)
        self._lock = threading.Lock()
        self._buffer: list[LogEntry] = []
        self._buffered = 0
        self._pending: list[tuple[str, bytes, int]] = []
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._token = f"{os.getpid()}-{secrets.token_hex(3)}"
        self._seq = 0
        self._failing_since: float | None = None
        self._pending_count = 0  # rows in self._pending
        self._dropping = False

    def add(self, entry: LogEntry) -> None:
        """Buffer one request's rows (constant time; never touches storage). Past
        ``max_rows_kept`` rows waiting (storage failing or stuck), the rows are dropped,
        counted and logged instead."""
        with self._lock:
            waiting = self._buffered + self._pending_count
            keep = waiting + entry.rows.n <= self.max_rows_kept
            if keep:
                self._buffer.append(entry)
                self._buffered += entry.rows.n
            full = self._buffered >= self.rows
        if not keep:
            self.metrics.count("log_rows_dropped", entry.rows.n)
            if not self._dropping:
                self._dropping = True
                logger.error("prediction log: %s rows are waiting for %s; dropping new rows "
                             "until writes catch up", f"{waiting:,}", _public_url(self.url))
        self.metrics.gauge("log_rows_buffered", self._buffered + self._pending_count)
        if full:
            self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mlpipe-serve-log",
                                            daemon=True)
            self._thread.start()

    def close(self, attempts: int = 3) -> None:
        """Stop the thread and write what is buffered (retrying a failed write a few times)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        for attempt in range(attempts):
            self.flush()
            if not self._pending:
                return
            time.sleep(0.2 * (attempt + 1))
        lost = self._pending_count
        logger.error("prediction log: %s rows could not be written to %s before shutdown",
                     f"{lost:,}", _public_url(self.url))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.every)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.flush()
            except Exception:  # never let the thread die; the buffer is kept
                logger.exception("prediction log: flush failed")

    def flush(self) -> int:
        """Write what is buffered and retry what failed before; returns rows written."""
        with self._flush_lock:
            with self._lock:
                entries, self._buffer, self._buffered = self._buffer, [], 0
            if entries:
                self._pending.extend(self._parts(entries))
            written, still = 0, []
            for path, data, n in self._pending:
                if still:  # keep the order: once one fails, the rest wait for the next flush
                    still.append((path, data, n))
                    continue
                try:
                    artifacts.atomic_write(self.fs, path, data)  # local: makes the directory
                except Exception as exc:
                    self.metrics.count("log_write_failures")
                    if self._failing_since is None:
                        self._failing_since = time.monotonic()
                        logger.warning("prediction log: writing %s failed (%s: %s); kept in "
                                       "memory and retried", path, type(exc).__name__, exc)
                    still.append((path, data, n))
                    continue
                written += n
                self.metrics.count("log_rows_written", n)
                self.metrics.count("log_parts_written")
                if self._failing_since is not None:
                    logger.info("prediction log: writing works again")
                    self._failing_since = None
            self._pending = self._bound(still)
            self._pending_count = sum(n for _, _, n in self._pending)
            if self._dropping and self._buffered + self._pending_count < self.max_rows_kept:
                self._dropping = False
            self.metrics.gauge("log_rows_buffered", self._buffered + self._pending_count)
            return written

    def _bound(self, pending: list[tuple[str, bytes, int]]) -> list[tuple[str, bytes, int]]:
        total = sum(n for _, _, n in pending)
        dropped = 0
        while pending and total > self.max_rows_kept:
            _, _, n = pending.pop(0)
            total -= n
            dropped += n
        if dropped:
            self.metrics.count("log_rows_dropped", dropped)
            logger.error("prediction log: dropped the oldest %s rows: writes to %s have been "
                         "failing and more than %s rows were waiting", f"{dropped:,}",
                         _public_url(self.url), f"{self.max_rows_kept:,}")
        return pending

    def _parts(self, entries: list[LogEntry]) -> list[tuple[str, bytes, int]]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        groups: dict[str, list[LogEntry]] = defaultdict(list)
        for entry in entries:
            if entry.rows.n:
                groups[entry.run_id].append(entry)
        out = []
        for run_id, group in groups.items():
            n = sum(e.rows.n for e in group)
            served = np.concatenate([np.full(e.rows.n, e.served_at) for e in group])
            columns: dict[str, Any] = {
                "__served_at": pa.array((served * 1000).astype("int64"),
                                        pa.timestamp("ms", tz="UTC")),
                "__run_id": pa.array([run_id] * n, pa.string()),
                "__request_id": pa.array([e.request_id for e in group for _ in range(e.rows.n)],
                                         pa.string()),
            }
            ids = [c for c in dict.fromkeys(k for e in group for k in e.rows.ids)]
            for c in ids:
                values = [v for e in group for v in e.rows.ids.get(c, [None] * e.rows.n)]
                columns[c] = _arrow(values)
            for c in group[0].rows.columns:
                values = np.concatenate([e.rows.columns[c] for e in group])
                columns[c] = pa.array(values, from_pandas=True) if values.dtype != object \
                    else _arrow(values.tolist())
            for c in group[0].outputs:
                columns[f"__pred_{c}"] = _arrow([v for e in group for v in e.outputs[c]])
            table = pa.table(columns)
            table = table.replace_schema_metadata({b"mlpipe.serve": json.dumps({
                "run_id": run_id, "rows": n, "written_at": artifacts.utcnow()}).encode()})
            sink = io.BytesIO()
            pq.write_table(table, sink)
            now = dt.datetime.now(dt.timezone.utc)
            self._seq += 1
            name = (f"part-{now:%Y%m%dT%H%M%S}.{now.microsecond:06d}Z-{self._token}-"
                    f"{self._seq:06d}.parquet")
            path = artifacts.join(self.base, f"date={now:%Y-%m-%d}", name)
            out.append((path, sink.getvalue(), n))
        return out


def _arrow(values: list[Any]) -> Any:
    import pyarrow as pa

    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types (ids as numbers and text)
        return pa.array([None if v is None else str(v) for v in values], pa.string())


# --------------------------------------------------------------------------- micro-batching


@dataclass
class _Job:
    loaded: Loaded
    rows: Rows
    future: asyncio.Future


class MicroBatcher:
    """Groups concurrent small requests into one predict call per version.

    A batch starts with the first waiting request, takes whatever arrives within ``wait``
    seconds (up to :data:`BATCH_MAX_ROWS` rows), and is predicted in the thread pool; at most
    ``slots`` batches run at once, so under load requests queue here and the next batch
    takes them all. A batch whose combined predict call fails is retried request by request,
    so one bad request never fails the others.
    """

    def __init__(self, wait: float, pool: ThreadPoolExecutor, slots: int,
                 metrics: Metrics) -> None:
        self.wait = wait
        self.pool = pool
        self.metrics = metrics
        self._slots = slots
        self._queue: asyncio.Queue[_Job] | None = None  # made in the server's event loop
        self._semaphore: asyncio.Semaphore | None = None
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()

    async def submit(self, loaded: Loaded, rows: Rows) -> Answer:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._semaphore = asyncio.Semaphore(self._slots)
            self._task = asyncio.get_running_loop().create_task(self._collect())
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(loaded, rows, future))
        return await future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._running, return_exceptions=True)

    async def _collect(self) -> None:
        assert self._queue is not None and self._semaphore is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._semaphore.acquire()
            batch = [await self._queue.get()]
            rows = batch[0].rows.n
            deadline = loop.time() + self.wait
            while rows < BATCH_MAX_ROWS:
                try:
                    job = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(self._queue.get(), left)
                    except (asyncio.TimeoutError, TimeoutError):
                        break
                batch.append(job)
                rows += job.rows.n
            task = loop.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        try:
            groups: dict[int, list[_Job]] = defaultdict(list)
            for job in batch:  # each request is predicted by the version it was checked against
                groups[id(job.loaded)].append(job)
            for jobs in groups.values():
                try:
                    answers = await loop.run_in_executor(
                        self.pool, predict, jobs[0].loaded, [j.rows for j in jobs])
                except Exception:
                    answers = []
                    for job in jobs:
                        try:
                            answers.extend(await loop.run_in_executor(
                                self.pool, predict, job.loaded, [job.rows]))
                        except Exception as exc:
                            if not job.future.done():
                                job.future.set_exception(exc)
                            answers.append(None)
                self.metrics.count("batches")
                self.metrics.count("batched_requests", len(jobs))
                for job, answer in zip(jobs, answers):
                    if answer is not None and not job.future.done():
                        job.future.set_result(answer)
        finally:
            assert self._semaphore is not None
            self._semaphore.release()
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(RuntimeError("the batch was cancelled"))


# --------------------------------------------------------------------------- the application


class _Service:
    """The state one server process shares between requests."""

    def __init__(self, config: ServeConfig, holder: ModelHolder | None) -> None:
        self.config = config
        self.metrics = holder.metrics if holder is not None else Metrics()
        self.holder = holder or ModelHolder(config.model, poll=config.poll,
                                            metrics=self.metrics)
        self.token = read_token(config)
        self.pool = ThreadPoolExecutor(max_workers=config.n_threads,
                                       thread_name_prefix="mlpipe-predict")
        self.batcher = (MicroBatcher(config.batch_wait_ms / 1000, self.pool, config.n_threads,
                                     self.metrics) if config.batch_wait_ms > 0 else None)
        self.log = (PredictionLog(config.log_to, every=config.log_every, rows=config.log_rows,
                                  metrics=self.metrics) if config.log_to else None)
        self._openapi: tuple[str, dict[str, Any]] | None = None

    def start(self) -> None:
        if self.holder.current is None:
            self.holder.load()
        self.holder.start()
        if self.log is not None:
            self.log.start()

    async def stop(self) -> None:
        self.holder.stop()
        if self.batcher is not None:
            await self.batcher.close()
        self.pool.shutdown(wait=True)
        if self.log is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.log.close)

    # -- requests ------------------------------------------------------------------------

    async def predict(self, request: Request, endpoint: str) -> Response:
        start = time.perf_counter()
        loaded = self.holder.current
        if loaded is None:
            return self._error(InputError(503, "not_ready", "no model is loaded yet"), None)
        try:
            body = await self._body(request)
            media = request.headers.get("content-type", "")
            if self.batcher is not None and len(body) <= 64 * 1024:
                rows = self._parse(endpoint, body, media, loaded)
                if rows.n <= BATCH_REQUEST_ROWS and rows.n:
                    answer = await self.batcher.submit(loaded, rows)
                else:
                    answer = await self._in_pool(self._predict_rows, loaded, rows)
            else:
                rows, answer = await self._in_pool(self._parse_and_predict, endpoint, body,
                                                   media, loaded)
        except InputError as exc:
            return self._error(exc, loaded)
        except ClientDisconnect:  # nobody is left to answer
            self.metrics.error("client_disconnected")
            return Response(status_code=499)
        except ValueError as exc:  # raised by the model's own input checks: the input's fault
            return self._error(InputError(422, "model_input", f"the model refused the input: "
                                                              f"{exc}"), loaded)
        except Exception:
            logger.exception("internal error while answering %s", endpoint)
            self.metrics.error("internal")
            return JSONResponse({"error_code": "INTERNAL_ERROR", "kind": "internal",
                                 "message": "internal error; the server log has the details"},
                                status_code=500, headers={RUN_HEADER: loaded.run_id})
        self.metrics.answered(endpoint, rows.n, answer.unseen)
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        if self.log is not None:
            self.log.add(LogEntry(loaded.run_id, time.time(), request_id[:64], rows,
                                answer.outputs))
        doc: dict[str, Any] = {"predictions": answer.records}
        if endpoint == "/predict":
            doc = {"run_id": loaded.run_id, **doc}
        try:
            payload = orjson.dumps(doc)
        except TypeError:  # an id column holding an integer beyond 64 bits, echoed as sent
            payload = json.dumps(doc, separators=(",", ":")).encode()
        return Response(payload, media_type="application/json", headers={
            RUN_HEADER: loaded.run_id, "X-Request-Id": request_id[:64],
            "Server-Timing": f"app;dur={(time.perf_counter() - start) * 1000:.3f}"})

    def _parse(self, endpoint: str, body: bytes, media: str, loaded: Loaded) -> Rows:
        if endpoint == "/predict":
            return parse_predict(body, loaded, self.config.max_rows)
        return parse_invocations(body, media, loaded, self.config.max_rows)

    @staticmethod
    def _predict_rows(loaded: Loaded, rows: Rows) -> Answer:
        return predict(loaded, [rows])[0]

    def _parse_and_predict(self, endpoint: str, body: bytes, media: str,
                           loaded: Loaded) -> tuple[Rows, Answer]:
        rows = self._parse(endpoint, body, media, loaded)
        return rows, predict(loaded, [rows])[0]

    async def _in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def _body(self, request: Request) -> bytes:
        """The body, at most --max-body bytes. A larger one is read and discarded up to
        DRAIN_FACTOR times the limit, so that a client still sending gets the 413."""
        limit = self.config.max_body
        cap = DRAIN_FACTOR * limit
        declared = request.headers.get("content-length")
        size = 0
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise InputError(400, "bad_request", "Content-Length is not a number") from None
        too_big = InputError(413, "body_too_large", f"the body is over {limit:,} bytes, the "
                                                    "most this server takes (--max-body)")
        if size > cap:
            raise too_big  # not worth reading: the connection closes after the answer
        chunks: list[bytes] = []
        total, over = 0, size > limit
        async for chunk in request.stream():
            total += len(chunk)
            if over or total > limit:
                over, chunks = True, []
                if total > cap:
                    break
                continue
            chunks.append(chunk)
        if over:
            raise too_big
        return b"".join(chunks)

    def _error(self, exc: InputError, loaded: Loaded | None) -> Response:
        self.metrics.error(exc.kind)
        headers = {RUN_HEADER: loaded.run_id} if loaded is not None else {}
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    # -- OpenAPI -------------------------------------------------------------------------

    def openapi(self, app: FastAPI) -> dict[str, Any]:
        """The OpenAPI document, with the ``/predict`` and ``/invocations`` bodies of the
        version being served (rebuilt after a swap)."""
        from fastapi.openapi.utils import get_openapi

        loaded = self.holder.current
        key = loaded.run_id if loaded is not None else ""
        if self._openapi is not None and self._openapi[0] == key:
            return self._openapi[1]
        doc = get_openapi(title=app.title, version=app.version, description=app.description,
                          routes=app.routes)
        if loaded is not None:
            _document_bodies(doc, loaded)
        self._openapi = (key, doc)
        return doc


def _document_bodies(doc: dict[str, Any], loaded: Loaded) -> None:
    types = loaded.predict_types
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    ref = "#/components/schemas/{model}"
    for model in (types.request, types.response, types.invocations):
        schema = model.model_json_schema(ref_template=ref)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    row_ref = {"$ref": "#/components/schemas/Row"}

    def body(schema: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": schema},
                                              **(extra or {})}}

    def answer(name: str) -> dict[str, Any]:
        return {"description": "one prediction per row, in order; the X-Mlpipe-Run-Id header "
                               "names the version",
                "content": {"application/json": {"schema": {
                    "$ref": f"#/components/schemas/{name}"}}}}

    errors = {"400": {"description": "malformed JSON or CSV"},
              "401": {"description": "missing or wrong bearer token"},
              "413": {"description": "over --max-body bytes or --max-rows rows"},
              "415": {"description": "unsupported Content-Type"},
              "422": {"description": "a missing column or a value that cannot be read; the "
                                     "message names the column and the row"}}
    post = doc["paths"]["/predict"]["post"]
    post["requestBody"] = body({"$ref": "#/components/schemas/PredictRequest"})
    post["responses"] = {"200": answer("PredictResponse"), **errors}
    split = {"type": "object", "required": ["columns", "data"], "properties": {
        "columns": {"type": "array", "items": {"type": "string"}},
        "data": {"type": "array", "items": {"type": "array"}}}}
    columns = {"type": "object", "description": "{column: [values]}",
               "additionalProperties": {"type": "array"}}
    records = {"type": "array", "items": row_ref}
    invocation = {"type": "object", "description": "MLflow's scoring protocol: exactly one of "
                                                  "the keys", "properties": {
        "dataframe_split": split, "dataframe_records": records,
        "instances": {"anyOf": [records, columns]}, "inputs": {"anyOf": [records, columns]}}}
    post = doc["paths"]["/invocations"]["post"]
    post["requestBody"] = body(invocation, {"text/csv": {"schema": {
        "type": "string", "description": "a header line with the column names, then one line "
                                         "per row"}}})
    post["responses"] = {"200": answer("InvocationsResponse"), **errors}


class _Guard:
    """Pure ASGI middleware: the bearer token (every path but /health) and the request
    metrics. Cheaper per request than Starlette's BaseHTTPMiddleware."""

    def __init__(self, app: Any, service: _Service) -> None:
        self.app = app
        self.service = service
        self.expected = service.token

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope["path"]
        endpoint = path if path in _ENDPOINTS else "other"
        metrics = self.service.metrics
        if self.expected is not None and path != "/health":
            given = b""
            for name, value in scope["headers"]:
                if name == b"authorization":
                    scheme, _, given = value.strip().partition(b" ")
                    if scheme.lower() != b"bearer":  # the scheme is case-insensitive
                        given = b""
                    break
            if not hmac.compare_digest(given.strip(), self.expected):
                metrics.error("unauthorized")
                metrics.observe(endpoint, 401, time.perf_counter() - start)
                response = JSONResponse(
                    {"error_code": "UNAUTHENTICATED", "kind": "unauthorized",
                     "message": "send 'Authorization: Bearer <token>' (the token in the "
                                "server's --token-env variable)"},
                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        status = [500]

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            metrics.observe(endpoint, status[0], time.perf_counter() - start)


def create_app(config: ServeConfig, holder: ModelHolder | None = None) -> FastAPI:
    """The FastAPI application of one server process.

    ``holder``: a :class:`ModelHolder` already loaded (``mlpipe serve`` with one worker loads
    before it binds); without one, the model is loaded when the application starts.

    Examples
    --------
    >>> import uvicorn                                                    # doctest: +SKIP
    >>> uvicorn.run(create_app(ServeConfig("out/models/demo")), port=8080)  # doctest: +SKIP
    """
    from pipeline import __version__

    service = _Service(config, holder)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="mlpipe serve", version=__version__, lifespan=lifespan, redoc_url=None,
                  description="Predictions of an mlpipe model bundle. `POST /invocations` "
                              "takes MLflow's scoring protocol; `POST /predict` a typed body "
                              "generated from the bundle's schema. Every response names the "
                              f"version that answered in `{RUN_HEADER}`.")
    app.state.service = service
    app.openapi = lambda: service.openapi(app)  # type: ignore[method-assign]

    @app.post("/invocations", summary="Predict (MLflow scoring protocol)")
    async def invocations(request: Request) -> Response:
        """JSON with one of `dataframe_split`, `dataframe_records`, `instances`, `inputs`, or
        a `text/csv` body; answers `{"predictions": [...]}`, one object per row."""
        return await service.predict(request, "/invocations")

    @app.post("/predict", summary="Predict (typed body)")
    async def predict_typed(request: Request) -> Response:
        """`{"rows": [{column: value, ...}]}`, every input column in every row."""
        return await service.predict(request, "/predict")

    @app.get("/health", summary="The process is alive")
    async def health() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/ready", summary="A verified model is loaded")
    async def ready() -> Response:
        loaded = service.holder.current
        if loaded is None:
            return JSONResponse({"ready": False}, status_code=503)
        return JSONResponse({"ready": True, "run_id": loaded.run_id},
                            headers={RUN_HEADER: loaded.run_id})

    @app.get("/ping", summary="As /ready (MLflow and SageMaker health checks)")
    async def ping() -> Response:
        return await ready()

    @app.get("/version", summary="mlpipe's version")
    async def version() -> Response:
        loaded = service.holder.current
        return JSONResponse({"mlpipe": __version__},
                            headers={RUN_HEADER: loaded.run_id} if loaded else {})

    @app.get("/model", summary="The version being served")
    async def model() -> Response:
        loaded = service.holder.current
        if loaded is None:
            return JSONResponse({"ready": False}, status_code=503)
        holder = service.holder
        doc = {**loaded.describe(), "model_url": _public_url(config.model),
               "follows": holder.follows, "poll_seconds": config.poll if holder.follows else None,
               "last_check": holder.last_check, "refused": holder.refused(), "pid": os.getpid()}
        return JSONResponse(doc, headers={RUN_HEADER: loaded.run_id})

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        loaded = service.holder.current
        return PlainTextResponse(service.metrics.render(),
                                 media_type="text/plain; version=0.0.4; charset=utf-8",
                                 headers={RUN_HEADER: loaded.run_id} if loaded else {})

    app.add_middleware(_Guard, service=service)
    return app


def app_from_env() -> FastAPI:
    """The application, configured from the :data:`ENV_CONFIG` environment variable (JSON of
    a :class:`ServeConfig`): what each ``--workers`` process runs.

    Examples
    --------
    ``MLPIPE_SERVE_CONFIG='{"model": "s3://b/mlpipe/models/demo"}' uvicorn --factory \\
    pipeline.serve:app_from_env --workers 4``
    """
    raw = os.environ.get(ENV_CONFIG)
    if not raw:
        raise RuntimeError(f"{ENV_CONFIG} is not set: start the server with `mlpipe serve`, or "
                           "set it to the JSON of a pipeline.serve.ServeConfig")
    pipeline_log = logging.getLogger("pipeline")
    if not pipeline_log.handlers:  # a worker process: nobody configured our logger
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        pipeline_log.addHandler(handler)
        pipeline_log.setLevel(logging.INFO)
        pipeline_log.propagate = False
    return create_app(ServeConfig.from_json(raw))


# --------------------------------------------------------------------------- running


def serve(config: ServeConfig) -> None:
    """Load, verify and serve ``config.model`` until interrupted (what ``mlpipe serve`` runs).

    The model is verified (and, with one worker, loaded) before the port is bound, so a wrong
    URL or a tampered bundle fails here, with one message. With ``workers > 1`` this process
    only checks every file of the version and supervises; each worker loads the model once
    (:func:`app_from_env`).

    Examples
    --------
    >>> serve(ServeConfig("out/models/demo", port=8080))                  # doctest: +SKIP
    """
    import socket

    import uvicorn

    for warning in security_warnings(config):
        logger.warning("warning: %s", warning)
    read_token(config)  # fail now, not in every worker
    holder = ModelHolder(config.model, poll=config.poll)
    if config.workers == 1:
        run_id = holder.load().run_id
    else:
        bundle = artifacts.open_bundle(config.model)
        bundle.verify()
        run_id = bundle.run_id

    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP;
    # without it every answer waits ~40 ms for the client's delayed ACK (Nagle)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {config.host}:{config.port}: {exc.strerror}; choose "
                      "another --port (0: any free port)") from None
    sock.set_inheritable(True)
    port = sock.getsockname()[1]
    shown = f"[{config.host}]" if ":" in config.host else config.host
    mode = (f"follows {_public_url(config.model)}/{POINTER} every {config.poll:g} s"
            if holder.follows and config.poll > 0 else "pinned")
    options = dict(access_log=config.access_log, server_header=False, proxy_headers=False,
                   timeout_graceful_shutdown=30, log_level="info")
    logger.info("serving run %s (%s) at http://%s:%s with %s worker%s; docs at /docs",
                run_id, mode, shown, port, config.workers,
                "s" if config.workers > 1 else "")
    if config.workers == 1:
        server = uvicorn.Server(uvicorn.Config(create_app(config, holder), **options))
        server.run(sockets=[sock])
        return
    from uvicorn.supervisors import Multiprocess

    os.environ[ENV_CONFIG] = config.to_json()
    uv_config = uvicorn.Config("pipeline.serve:app_from_env", factory=True,
                               workers=config.workers, **options)
    Multiprocess(uv_config, sockets=[sock]).run()
