"""The files of a model bundle on any fsspec URL: write them, verify them, publish the
pointer to them, load them.

A bundle is one run's directory; this module writes its files (manifest last), flips the
model's pointer to it by compare-and-swap (:func:`publish`, :func:`set_current`), opens and
verifies it (:func:`open_bundle`: every file against the manifest's sha256 and size) and loads
the model from it (:func:`load_model`). The storage primitives every writer of ours shares live
here too (:func:`atomic_write`, :func:`filesystem`, :func:`is_local`, :func:`is_s3`). What the
versions of a model are, and changing which one is current (promote, rollback, cleanup), is
:mod:`pipeline.registry`.

Layout (ARCHITECTURE.md)::

    <root>/runs/<run_id>/...files..., manifest.json      (manifest written LAST, create-once)
    <root>/models/<name>/versions/<run_id>.json           (one per published run, create-once)
    <root>/models/<name>/latest.json                      (the current version: CAS-flipped)

A reader trusts only what a manifest lists, after checking each file's sha256 and size. A run
killed before its manifest exists leaves an unlisted ``runs/<run_id>/`` that no reader sees
(``mlpipe models cleanup`` removes it). Nothing is ever unpickled: XGBoost models are stored
in their native UBJSON format, scikit-learn objects with skops, and a skops file holding any type
outside scikit-learn's trusted set and our own transformers is refused.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import secrets
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pipeline.errors import StorageError

logger = logging.getLogger("pipeline")

FORMAT = "mlpipe-bundle/1"
MANIFEST = "manifest.json"
POINTER = "latest.json"

#: distributions recorded in every manifest.
RECORDED = ("mlpipe", "xgboost", "scikit-learn", "dask", "distributed", "dask-ml", "pandas",
            "numpy", "pyarrow", "numba", "skops", "fsspec", "s3fs")


class BundleError(RuntimeError):
    """A bundle that is incomplete, tampered with, or cannot be found."""


class ConflictError(BundleError):
    """A compare-and-swap of a pointer lost against a concurrent writer."""


# --------------------------------------------------------------------------- helpers


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in RECORDED:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utcnow() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def new_run_id(job_fingerprint: str) -> str:
    """``20261129T033012.123Z-<job hash>-<random>``: sortable by time, unique."""
    now = dt.datetime.now(dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z-{job_fingerprint}" \
           f"-{secrets.token_hex(2)}"


def filesystem(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    from fsspec.core import url_to_fs

    return url_to_fs(url, **dict(storage_options or {}))


def join(*parts: str) -> str:
    return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts) if p)


def is_local(fs: Any) -> bool:
    """Is ``fs`` the local file system (where directories exist and renames are atomic)?

    Examples
    --------
    >>> is_local(filesystem("/tmp/out")[0]), is_s3(filesystem("/tmp/out")[0])
    (True, False)
    """
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def is_s3(fs: Any) -> bool:
    """Is ``fs`` S3 (s3fs), whose conditional writes and multipart uploads we rely on?"""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("s3", "s3a")


def url_of(fs: Any, path: str) -> str:
    """The URL a user would write for ``path`` on ``fs`` (``s3://b/k``, ``/tmp/x``)."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


#: modules whose exceptions are storage failures (after their own retries)
_STORAGE_MODULES = ("botocore", "aiobotocore", "aiohttp", "s3fs", "fsspec", "gcsfs", "adlfs",
                    "urllib3", "requests")


def is_storage_failure(exc: BaseException) -> bool:
    """Is ``exc`` a failed storage request (I/O, network, the store's answer) rather than a
    missing or already existing object, or a bug of ours?"""
    if isinstance(exc, StorageError | FileExistsError | IsADirectoryError | NotADirectoryError):
        return False
    if isinstance(exc, OSError | TimeoutError):
        return True
    return type(exc).__module__.split(".")[0] in _STORAGE_MODULES


def storage_message(url: str, stage: str, exc: BaseException, can: str = "written") -> str:
    """The one paragraph of a :class:`~pipeline.errors.StorageError`: the stage, the URL, the
    store's answer, what to check (that the place exists and ``can`` be written or read)."""
    cause = " ".join(str(exc).split()) or type(exc).__name__
    return (f"{stage}: {url} failed after the storage client's retries ({type(exc).__name__}: "
            f"{cause[:300]}). Check that the bucket or directory exists and can be {can}, and "
            "the credentials and endpoint (AWS_ENDPOINT_URL_S3, storage_options); then rerun "
            "the same command: finished work is kept, and nothing partial was published")


@contextlib.contextmanager
def reading_data(url: str, stage: str) -> Iterator[None]:
    """Turn a storage failure while the cluster reads the data at ``url`` (a file that went
    away, a store that keeps failing) into a :class:`~pipeline.errors.StorageError` naming
    ``url`` and ``stage``; bad data itself (:class:`~pipeline.load.DataError`) passes."""
    try:
        yield
    except Exception as exc:
        if not is_storage_failure(exc):
            raise
        raise StorageError(storage_message(url, stage, exc, can="read")) from exc


@contextlib.contextmanager
def storage_stage(fs: Any, path: str, stage: str, *, missing_ok: bool = False
                  ) -> Iterator[None]:
    """Turn a storage failure inside the block into a :class:`~pipeline.errors.StorageError`
    naming the URL and the ``stage``. ``missing_ok``: a :class:`FileNotFoundError` passes
    through (a read that may find nothing); otherwise it is a failure too (a missing bucket
    on a write)."""
    try:
        yield
    except FileNotFoundError as exc:
        if missing_ok:
            raise
        raise StorageError(storage_message(url_of(fs, path), stage, exc)) from exc
    except Exception as exc:
        if not is_storage_failure(exc):
            raise
        raise StorageError(storage_message(url_of(fs, path), stage, exc)) from exc


def check_writable(url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Fail in the first second, naming ``url``, when the output cannot be written.

    Called before any compute (a run, a scoring job), so a missing bucket or a read-only
    directory is not found after loading and training. Local paths: the nearest existing
    directory must be writable (nothing is created). Object stores: a small probe object
    ``<url>/.tmp-write-check-<random>`` is written and removed.

    Raises
    ------
    StorageError
        The output cannot be written; the message names the URL.

    Examples
    --------
    >>> check_writable("/tmp")
    """
    fs, path = filesystem(url, storage_options)
    stage = "check that the output is writable (before any compute)"
    if is_local(fs):
        existing = os.path.abspath(path)
        while not os.path.exists(existing) and os.path.dirname(existing) != existing:
            existing = os.path.dirname(existing)
        if os.path.isdir(existing) and not os.access(existing, os.W_OK | os.X_OK):
            raise StorageError(storage_message(url, stage, PermissionError(
                f"{existing} is not writable by this user")))
        return
    probe = join(path, f".tmp-write-check-{secrets.token_hex(4)}")
    with storage_stage(fs, probe, stage):
        fs.pipe_file(probe, b"")
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(probe)


# --------------------------------------------------------------------------- storage retries
#
# botocore retries a failed S3 request (5 attempts, "legacy" mode) and s3fs retries a call
# that still fails with a transient error; neither says so above DEBUG. We count every failed
# attempt through botocore's "needs-retry" event, which fires after each attempt whoever
# retries next. aiohttp also resends an idempotent request once, silently, when a kept-alive
# connection drops; that retry happens below botocore and is not counted.

_COUNTS: collections.Counter = collections.Counter()
_COUNTS_LOCK = threading.Lock()
_HOOKED = False


def _on_attempt(response: Any = None, caught_exception: BaseException | None = None,
                **_: Any) -> None:
    cause = None
    if caught_exception is not None:
        cause = type(caught_exception).__name__
    elif response is not None:
        status = getattr(response[0], "status_code", 0)
        if status >= 500 or status == 429:
            code = (response[1] or {}).get("Error", {}).get("Code") if len(response) > 1 \
                else None
            cause = f"{status} {code}" if code and code != str(status) else str(status)
    with _COUNTS_LOCK:
        _COUNTS["requests"] += 1
        if cause is not None:
            _COUNTS["retries"] += 1
            _COUNTS[f"cause:{cause}"] += 1
    return None  # never a decision: botocore's retry handler decides


def storage_counts() -> dict[str, Any]:
    """This process's S3 requests and failed (retried) attempts so far; the first call starts
    counting (for every S3 client created from then on)."""
    global _HOOKED
    with _COUNTS_LOCK:
        if not _HOOKED:
            try:
                from botocore import handlers
            except ImportError:  # no S3 support installed: nothing to count
                pass
            else:
                # the handlers every new botocore session registers (aiobotocore's too)
                handlers.BUILTIN_HANDLERS.append(("needs-retry.s3", _on_attempt))
            _HOOKED = True
        return {"pid": os.getpid(), "host": platform.node(), **_COUNTS}


@dataclass
class StorageTally:
    """The storage requests and retries of one run or scoring job, over the driver and the
    workers (per-process counters read at the start and now; a concurrent job on the same
    cluster would be counted too)."""

    what: str
    client: Any = field(repr=False, default=None)
    start: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict, repr=False)

    @classmethod
    def begin(cls, what: str, client: Any = None) -> StorageTally:
        """Start counting for ``what`` ("run", "scoring job") on this process and every worker
        of ``client``."""
        tally = cls(what, client)
        tally.start = tally._read()
        return tally

    def _read(self) -> dict[tuple[str, int], dict[str, Any]]:
        snapshots = [storage_counts()]
        if self.client is not None:
            try:
                snapshots += list(self.client.run(storage_counts).values())
            except Exception as exc:  # counting is a courtesy; it never fails a job
                logger.debug("could not read the workers' storage counters: %s", exc)
        return {(s["host"], s["pid"]): s for s in snapshots}

    def counts(self) -> dict[str, Any]:
        """``{"requests", "retries", "causes": {cause: n}}`` since :meth:`begin`."""
        total: collections.Counter = collections.Counter()
        for key, now in self._read().items():
            before = self.start.get(key, {})
            for name, value in now.items():
                if name not in ("pid", "host"):
                    total[name] += value - before.get(name, 0)
        causes = {k.removeprefix("cause:"): v for k, v in sorted(total.items())
                  if k.startswith("cause:") and v}
        return {"requests": total["requests"], "retries": total["retries"], "causes": causes}

    def summary(self, counts: Mapping[str, Any] | None = None) -> str:
        """One line: ``storage: 1,204 requests, 12 retried (500 InternalError x5, ...)``."""
        counts = counts or self.counts()
        causes = ", ".join(f"{k} x{v}" for k, v in counts["causes"].items())
        return (f"storage ({self.what}): {counts['requests']:,} S3 requests, "
                f"{counts['retries']:,} retried" + (f" ({causes})" if causes else ""))


def _process_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: read once, at import: setting the umask to read it is not thread-safe.
_UMASK = _process_umask()


def atomic_write(fs: Any, path: str, data: bytes, *, create_once: bool = False,
                 stage: str | None = None) -> None:
    """Write ``data`` so that a reader sees either nothing or all of it.

    Local files: a temporary file in the same directory, fsync'ed, then renamed (or hard-linked
    for ``create_once``, which fails if the target exists). Object stores: one PUT (S3 shows an
    object only once it is complete), with ``If-None-Match: *`` for ``create_once``.

    A create-once write that finds the object already there reads it back: an equal one
    (same size and sha256) is this very write, whose response was lost and whose retry got
    "412 Precondition Failed", so the write is done; a different one raises
    :class:`FileExistsError`. A write that fails for good raises
    :class:`~pipeline.errors.StorageError` naming the URL and ``stage`` (default: "write
    <file name>").
    """
    with storage_stage(fs, path, stage or f"write {path.rstrip('/').rsplit('/', 1)[-1]}"):
        try:
            _write(fs, path, data, create_once)
        except FileExistsError:
            if not create_once or not _holds(fs, path, data):
                raise
            logger.info("%s was already written with the same content (a lost response "
                        "retried): done", url_of(fs, path))


def _write(fs: Any, path: str, data: bytes, create_once: bool) -> None:
    if is_local(fs):
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        try:
            # mkstemp makes the file readable by its owner only; a bundle file gets the mode
            # of any other file (the process umask), so a teammate can load the model
            os.fchmod(fd, 0o666 & ~_UMASK)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if create_once:
                os.link(tmp, path)  # atomic create-once: FileExistsError if it exists
            else:
                os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return
    if create_once:
        if is_s3(fs):
            try:
                fs.pipe_file(path, data, mode="create")
            except OSError as exc:
                if _precondition_failed(exc):
                    raise FileExistsError(path) from None
                raise
            return
        if fs.exists(path):
            raise FileExistsError(path)
    fs.pipe_file(path, data)


def _holds(fs: Any, path: str, data: bytes) -> bool:
    """Does the object at ``path`` hold exactly ``data`` (size, then sha256)?"""
    with contextlib.suppress(AttributeError):
        fs.invalidate_cache(path)
    try:
        existing = fs.cat_file(path)
    except FileNotFoundError:
        return False
    return len(existing) == len(data) and sha256(existing) == sha256(data)


def _precondition_failed(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc} {getattr(exc, '__cause__', '')}"
    return any(s in text for s in ("PreconditionFailed", "412", "ConditionalRequestConflict",
                                   "409", "At least one of the pre-conditions"))


# --------------------------------------------------------------------------- writing a run


def write_run(root: str, run_id: str, files: Mapping[str, bytes], *, meta: Mapping[str, Any],
              storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write a run's files, then its manifest (last, create-once). Returns the manifest.

    Until the manifest exists the run is invisible to every reader. The manifest records the
    sha256 and size of each file, library versions, and ``meta`` (job name, data fingerprint,
    headline metrics...).
    """
    fs, base = filesystem(join(root, "runs", run_id), storage_options)
    if MANIFEST in files:
        raise ValueError("manifest.json is written by write_run itself")
    # A version is immutable once its manifest exists: refuse before touching its files (the
    # create-once manifest write below only protects the manifest itself).
    with storage_stage(fs, base, "look for an earlier manifest of this run"):
        finished = fs.exists(join(base, MANIFEST))
    if finished:
        raise FileExistsError(f"{join(root, 'runs', run_id)} is a completed run (it has a "
                              "manifest); versions are immutable, write a new run")
    if is_local(fs):
        fs.makedirs(base, exist_ok=True)
    listed = {}
    for name, data in files.items():
        with storage_stage(fs, join(base, name), f"write the bundle file {name}"):
            fs.pipe_file(join(base, name), data)
        listed[name] = {"sha256": sha256(data), "size": len(data)}
    manifest = {
        "format": FORMAT,
        "run_id": run_id,
        "created_at": utcnow(),
        "files": listed,
        "versions": library_versions(),
        **dict(meta),
    }
    payload = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
    atomic_write(fs, join(base, MANIFEST), payload, create_once=True,
                 stage="publish the manifest (the run's last file)")
    manifest["_sha256"] = sha256(payload)
    return manifest


# --------------------------------------------------------------------------- pointers (CAS)


@dataclass
class Pointer:
    doc: dict[str, Any] | None
    token: Any = field(default=None, repr=False)  # ETag (S3) or the raw bytes (elsewhere)


def read_pointer(fs: Any, path: str) -> Pointer:
    with storage_stage(fs, path, "read the model's pointer", missing_ok=True):
        return _read_pointer(fs, path)


def _read_pointer(fs: Any, path: str) -> Pointer:
    try:
        if is_s3(fs):
            bucket, key, _ = fs.split_path(path)
            out = fs.call_s3("get_object", Bucket=bucket, Key=key)
            body = _read_body(fs, out["Body"])
            return Pointer(json.loads(body), out.get("ETag"))
        raw = fs.cat_file(path)
        return Pointer(json.loads(raw), raw)
    except FileNotFoundError:
        return Pointer(None, None)
    except OSError as exc:
        if "NoSuchKey" in str(exc) or "Not Found" in str(exc) or "404" in str(exc):
            return Pointer(None, None)
        raise


def _read_body(fs: Any, body: Any) -> bytes:
    from fsspec.asyn import sync

    async def _read() -> bytes:
        async with body:
            return await body.read()

    return sync(fs.loop, _read)


@contextlib.contextmanager
def _local_lock(path: str) -> Iterator[None]:
    import fcntl

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def swap_pointer(fs: Any, path: str, expected: Pointer, doc: Mapping[str, Any]) -> None:
    """Replace the pointer at ``path`` with ``doc`` only if it still is ``expected``.

    S3: ``PutObject`` with ``If-Match: <etag>`` (or ``If-None-Match: *`` when there was none).
    Local files: an exclusive lock, a comparison and an atomic rename. Other stores: compare
    then write (not atomic; documented). Raises :class:`ConflictError` when another writer won.
    """
    payload = json.dumps(doc, indent=2, sort_keys=True).encode()
    if is_s3(fs):
        bucket, key, _ = fs.split_path(path)
        condition = {"IfMatch": expected.token} if expected.token else {"IfNoneMatch": "*"}
        with storage_stage(fs, path, "flip the model's pointer (compare-and-swap)"):
            try:
                fs.call_s3("put_object", Bucket=bucket, Key=key, Body=payload, **condition)
            except OSError as exc:
                if not _precondition_failed(exc):
                    raise
                # the retry of a swap whose response was lost finds its own write: done
                if read_pointer(fs, path).doc != json.loads(payload):
                    raise ConflictError(f"{path} was changed by another writer") from None
                logger.info("%s already holds this swap (a lost response retried): done",
                            url_of(fs, path))
        fs.invalidate_cache(path)
        return
    if is_local(fs):
        with _local_lock(path):
            current = fs.cat_file(path) if os.path.exists(path) else None
            if current != expected.token:
                raise ConflictError(f"{path} was changed by another writer")
            atomic_write(fs, path, payload)
        return
    current = fs.cat_file(path) if fs.exists(path) else None
    if current != expected.token:
        raise ConflictError(f"{path} was changed by another writer")
    fs.pipe_file(path, payload)


def publish(root: str, name: str, manifest: Mapping[str, Any], *,
            storage_options: Mapping[str, Any] | None = None,
            summary: Mapping[str, Any] | None = None, attempts: int = 20) -> dict[str, Any]:
    """Register a completed run as a version of model ``name`` and make it current."""
    fs, models = filesystem(join(root, "models", name), storage_options)
    run_id = manifest["run_id"]
    record = {"name": name, "run_id": run_id, "manifest_sha256": manifest["_sha256"],
              "created_at": manifest["created_at"], **dict(summary or {})}
    if is_local(fs):
        fs.makedirs(join(models, "versions"), exist_ok=True)
    with contextlib.suppress(FileExistsError):
        atomic_write(fs, join(models, "versions", f"{run_id}.json"),
                     json.dumps(record, indent=2, sort_keys=True).encode(), create_once=True,
                     stage="register the version")
    return set_current(root, name, run_id, manifest_sha256=manifest["_sha256"],
                       storage_options=storage_options, attempts=attempts, reason="run")


def set_current(root: str, name: str, run_id: str, *, manifest_sha256: str,
                storage_options: Mapping[str, Any] | None = None, expected_run: Any = ...,
                attempts: int = 20, reason: str = "promote",
                history: list[str] | None = None) -> dict[str, Any]:
    """Flip ``models/<name>/latest.json`` to ``run_id`` by compare-and-swap.

    ``expected_run``: if given, the flip happens only while the current version is that run id
    (``None``: no current version); a concurrent change raises :class:`ConflictError`. Without
    it, the flip is retried on conflicts (last writer wins, no update lost).
    """
    import time

    fs, models = filesystem(join(root, "models", name), storage_options)
    path = join(models, POINTER)
    for attempt in range(attempts):
        current = read_pointer(fs, path)
        current_run = current.doc["run_id"] if current.doc else None
        if current.doc and current_run == run_id \
                and current.doc.get("manifest_sha256") == manifest_sha256:
            # already current (this call's own swap, or an earlier one): swapping again would
            # make the run its own predecessor in the history
            return current.doc
        if expected_run is not ... and current_run != expected_run:
            raise ConflictError(f"model {name!r} is at {current_run}, not {expected_run}; "
                                "someone else changed it: look and retry")
        previous = list(current.doc.get("history", [])) if current.doc else []
        if history is None:
            new_history = ([current_run] + previous) if current_run else previous
        else:
            new_history = history
        doc = {"name": name, "run_id": run_id, "manifest_sha256": manifest_sha256,
               "updated_at": utcnow(), "reason": reason, "history": new_history[:100]}
        try:
            swap_pointer(fs, path, current, doc)
            return doc
        except ConflictError:
            if expected_run is not ...:
                raise
            time.sleep(0.01 * (attempt + 1))
    raise ConflictError(f"could not update {path} after {attempts} attempts")


# --------------------------------------------------------------------------- reading


def split_url(url: str) -> tuple[str, str, str]:
    """``(root, kind, key)`` for ``<root>/runs/<run_id>`` or ``<root>/models/<name>``."""
    clean = url.rstrip("/")
    head, _, key = clean.rpartition("/")
    root, _, kind = head.rpartition("/")
    if kind not in ("runs", "models") or not key or not root:
        raise BundleError(f"{url} is neither a run URL (<root>/runs/<run_id>) nor a model URL "
                          "(<root>/models/<name>)")
    return root, kind, key


@dataclass
class Bundle:
    """A verified run: its manifest, and its files read on demand (each sha256-checked)."""

    root: str
    run_id: str
    manifest: dict[str, Any]
    fs: Any = field(repr=False)
    base: str = field(repr=False)

    @property
    def url(self) -> str:
        return join(self.root, "runs", self.run_id)

    def read(self, name: str) -> bytes:
        listed = self.manifest["files"].get(name)
        if listed is None:
            raise BundleError(f"{self.url} has no {name} in its manifest")
        try:
            with storage_stage(self.fs, join(self.base, name), f"read the bundle file {name}",
                               missing_ok=True):
                data = self.fs.cat_file(join(self.base, name))
        except FileNotFoundError:
            raise BundleError(f"{self.url}/{name} is listed in the manifest but missing") from None
        if len(data) != listed["size"] or sha256(data) != listed["sha256"]:
            raise BundleError(f"{self.url}/{name} does not match its manifest (sha256/size "
                              "differ): the bundle was changed after it was written; refusing "
                              "to load it")
        return data

    def json(self, name: str) -> Any:
        return json.loads(self.read(name))

    def verify(self) -> None:
        """Check every file the manifest lists (not only those a caller reads); raises
        :class:`BundleError` naming the first that is missing or changed."""
        from concurrent.futures import ThreadPoolExecutor

        names = list(self.manifest["files"])
        with ThreadPoolExecutor(max_workers=min(8, max(len(names), 1))) as pool:
            for _ in pool.map(self.read, names):  # object stores: the latency overlaps
                pass

    def has(self, name: str) -> bool:
        return name in self.manifest["files"]


def open_bundle(url: str, storage_options: Mapping[str, Any] | None = None) -> Bundle:
    """Open a run URL or a model URL (its current version) and read its manifest."""
    root, kind, key = split_url(url)
    fs, _ = filesystem(root, storage_options)
    if kind == "models":
        pointer = read_pointer(fs, fs._strip_protocol(join(root, "models", key, POINTER)))
        if pointer.doc is None:
            raise BundleError(f"model {key!r} has no current version at {root} "
                              f"(no models/{key}/latest.json); run a job or promote a run")
        run_id, expected_sha = pointer.doc["run_id"], pointer.doc.get("manifest_sha256")
    else:
        run_id, expected_sha = key, None
    base = fs._strip_protocol(join(root, "runs", run_id))
    try:
        with storage_stage(fs, join(base, MANIFEST), "read the run's manifest", missing_ok=True):
            raw = fs.cat_file(join(base, MANIFEST))
    except FileNotFoundError:
        raise BundleError(f"{join(root, 'runs', run_id)} has no manifest.json: the run did not "
                          "complete (or is still running); it is not a model") from None
    if expected_sha and sha256(raw) != expected_sha:
        raise BundleError(f"the manifest of {run_id} does not match the sha256 recorded in "
                          f"models/{key}/latest.json; refusing to load it")
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise BundleError(f"{join(root, 'runs', run_id)}/manifest.json is not valid JSON") \
            from None
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{join(root, 'runs', run_id)} is not an {FORMAT} bundle "
                          f"(format {manifest.get('format')!r})")
    manifest["_sha256"] = sha256(raw)
    return Bundle(root=root, run_id=run_id, manifest=manifest, fs=fs, base=base)


# --------------------------------------------------------------------------- skops


#: scikit-learn's internal data holders that skops does not trust by default but that hold
#: only arrays and numbers (no code): the fitted state of the model families we store.
SKLEARN_DATA_TYPES = (
    "sklearn.tree._tree.Tree",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
)


def trusted_types() -> list[str]:
    """Our own transformer classes and :data:`SKLEARN_DATA_TYPES`, trusted on load alongside
    skops' scikit-learn defaults."""
    import inspect

    from sklearn.base import BaseEstimator

    import pipeline.estimators as estimators
    import pipeline.features as features
    import pipeline.preprocess as preprocess

    modules = [preprocess, features, estimators]
    out = list(SKLEARN_DATA_TYPES)
    for module in modules:
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseEstimator) and obj.__module__ == module.__name__:
                out.append(f"{obj.__module__}.{obj.__qualname__}")
    return sorted(out)


def dumps_skops(obj: Any) -> bytes:
    import skops.io as sio

    data = sio.dumps(obj, compression=8)
    _check_types(data, "the object being saved")
    return data


def loads_skops(data: bytes, what: str) -> Any:
    """Load a skops file (``what`` names it: its URL) after refusing untrusted types; a file
    skops cannot read is a :class:`BundleError` naming it, never a library traceback."""
    import skops.io as sio

    try:
        _check_types(data, what)
        return sio.loads(data, trusted=trusted_types())
    except BundleError:
        raise
    except Exception as exc:
        raise BundleError(_not_a_model(what, "skops", exc)) from None


def _not_a_model(what: str, reader: str, exc: BaseException) -> str:
    # skops' answer is one readable line ("File is not a zip file"); XGBoost's is a C++
    # source location and stack: only its exception type is kept
    first = "" if reader == "XGBoost" else next(
        (line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return (f"{what} is not a valid model file ({reader} cannot read it: {type(exc).__name__}"
            f"{': ' + first[:200] if first else ''}); the bundle is damaged or was tampered "
            "with: use another version, or retrain")


def _check_types(data: bytes, what: str) -> None:
    import skops.io as sio

    untrusted = set(sio.get_untrusted_types(data=data)) - set(trusted_types())
    if untrusted:
        raise BundleError(f"{what} holds types outside the trusted set: {sorted(untrusted)}; "
                          "refusing to load it (skops, never pickle)")


# --------------------------------------------------------------------------- models


def json_bytes(doc: Any) -> bytes:
    """A bundle's JSON document: indented, numpy values as plain ones, NaN refused."""
    return json.dumps(doc, indent=2, default=_plain, allow_nan=False).encode()


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def parquet_bytes(frame: Any) -> bytes:
    """A pandas frame as Parquet bytes (without its index)."""
    import io

    buffer = io.BytesIO()
    frame.reset_index(drop=True).to_parquet(buffer, index=False)
    return buffer.getvalue()


def model_bytes(model: Any) -> tuple[str, bytes]:
    """(file name, bytes) of a fitted model: XGBoost natively, scikit-learn via skops."""
    if type(model).__module__.startswith("xgboost") and type(model).__name__ == "Booster":
        return "model.ubj", bytes(model.save_raw(raw_format="ubj"))
    return "model.skops", dumps_skops(model)


def model_files(model: Any) -> dict[str, bytes]:
    """A fitted model's files: ``model.ubj`` or ``model.skops`` (:func:`model_bytes`), or an
    ensemble's (:class:`pipeline.ensemble_predictor.Ensemble`): its ``ensemble.json`` and each
    member's model and preprocessing tail, stored the same way (``member-<family>.ubj``,
    ``member-<family>-tail.skops``)."""
    from pipeline.ensemble_predictor import SPEC, Ensemble

    if not isinstance(model, Ensemble):
        return dict([model_bytes(model)])
    files = {SPEC: json_bytes(model.spec())}
    for stem, part in model.parts().items():
        name, data = model_bytes(part)  # model.ubj / model.skops: the stem's suffix
        files[stem + name.removeprefix("model")] = data
    return files


def read_object(bundle: Bundle, stem: str = "model") -> Any:
    """The verified object stored as ``<stem>.ubj`` (an XGBoost booster) or ``<stem>.skops``
    (scikit-learn, our transformers)."""
    if bundle.has(f"{stem}.ubj"):
        return load_booster(bundle.read(f"{stem}.ubj"), f"{bundle.url}/{stem}.ubj")
    return loads_skops(bundle.read(f"{stem}.skops"), f"{bundle.url}/{stem}.skops")


def load_predictor(bundle: Bundle) -> Any:
    """The :class:`~pipeline.predictor.Predictor` of a bundle, after checking every file the
    manifest lists (a version is trusted whole or not at all); an ensemble's bundle gives an
    :class:`~pipeline.ensemble_predictor.EnsemblePredictor`."""
    from pipeline import ensemble_predictor
    from pipeline.predictor import Predictor

    bundle.verify()

    schema = bundle.json("schema.json")
    preprocessor = loads_skops(bundle.read("preprocessor.skops"),
                               f"{bundle.url}/preprocessor.skops")
    _check_kernels(bundle, schema)
    if bundle.has(ensemble_predictor.SPEC):  # several models averaged
        return ensemble_predictor.load(bundle.json(ensemble_predictor.SPEC), schema,
                                       preprocessor, lambda stem: read_object(bundle, stem),
                                       run_id=bundle.run_id)
    model = read_object(bundle)
    return Predictor(task=schema["task"], target=schema["target"], classes=schema["classes"],
                     preprocessor=preprocessor, model=model, threshold=schema["threshold"],
                     family=schema["family"], run_id=bundle.run_id)


def load_booster(data: bytes, what: str) -> Any:
    """An XGBoost Booster from its native bytes (``what``: their URL); bytes XGBoost cannot
    read are a :class:`BundleError` naming the file, not XGBoost's C++ stack."""
    import xgboost

    model = xgboost.Booster()
    try:
        model.load_model(bytearray(data))
    except xgboost.core.XGBoostError as exc:
        raise BundleError(_not_a_model(what, "XGBoost", exc)) from None
    model.set_param({"nthread": 1})  # scoring parallelism comes from Dask partitions
    return model


def _check_kernels(bundle: Bundle, schema: Mapping[str, Any]) -> None:
    recorded = schema.get("kernels") or {}
    if not recorded:
        return
    from kernels import kernel_fingerprints

    current = kernel_fingerprints()
    changed = sorted(k for k, v in recorded.items() if current.get(k) != v)
    if changed:
        raise BundleError(f"{bundle.url} was trained with other versions of the feature "
                          f"kernels {changed} than this installation has; score it with the "
                          f"mlpipe version it was trained with "
                          f"({bundle.manifest['versions'].get('mlpipe')}) or retrain")


def load_model(url: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    """Load a verified model from a run URL or a model URL (its current version).

    Every file the manifest lists is checked against its sha256 (a version is trusted
    whole or not at all); nothing is unpickled.

    Examples
    --------
    >>> model = load_model("s3://bucket/mlpipe/models/demo")       # doctest: +SKIP
    >>> model.predict(frame)                                       # doctest: +SKIP
    """
    return load_predictor(open_bundle(url, storage_options))
