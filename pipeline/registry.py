"""The registry: the versions of each model, which one is current, promotion, rollback, and
cleanup of what failed runs and killed uploads leave behind.

It reads and changes the layout :mod:`pipeline.artifacts` writes (the bundle files and the
pointer live there; nothing else is stored)::

    <root>/runs/<run_id>/manifest.json                 a version: immutable once this exists
    <root>/models/<name>/versions/<run_id>.json        one record per registered version
    <root>/models/<name>/latest.json                   the current version and its history

Every change of ``latest.json`` is a compare-and-swap (:func:`artifacts.set_current`: S3
``If-Match`` on the ETag, a lock + compare + rename on local files) against the version the
caller saw, so of two concurrent promotions exactly one wins and the other gets
:class:`~pipeline.artifacts.ConflictError`; nothing is ever lost silently.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline import artifacts
from pipeline.artifacts import MANIFEST, POINTER, BundleError, ConflictError

logger = logging.getLogger("pipeline")

#: ``expected_run`` default: compare against the version read when the call starts.
_READ = object()


def _models_dir(root: str, name: str | None = None) -> str:
    return artifacts.join(root, "models", name) if name else artifacts.join(root, "models")


def _base(entry: str) -> str:
    return entry.rstrip("/").rsplit("/", 1)[-1]


def _ls(fs: Any, path: str, detail: bool = False) -> list[Any]:
    try:
        return fs.ls(path, detail=detail) if fs.isdir(path) else []
    except FileNotFoundError:
        return []


def _current(fs: Any, path: str) -> dict[str, Any] | None:
    return artifacts.read_pointer(fs, artifacts.join(path, POINTER)).doc


def _records(fs: Any, path: str) -> dict[str, dict[str, Any]]:
    """{run_id: version record} of one model, read in one batch."""
    files = [e for e in _ls(fs, artifacts.join(path, "versions")) if e.endswith(".json")]
    if not files:
        return {}
    out = {}
    for key, raw in fs.cat(files).items():
        try:
            doc = json.loads(raw)
        except ValueError:  # a record is written in one PUT/rename; garbage is someone else's
            logger.warning("ignoring unreadable version record %s", key)
            continue
        out[doc.get("run_id") or _base(key).removesuffix(".json")] = doc
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------- reading


def list_models(root: str, storage_options: Mapping[str, Any] | None = None
                ) -> list[dict[str, Any]]:
    """Every model under ``root``: its name, number of versions, current version, metrics.

    Examples
    --------
    >>> [m["name"] for m in list_models("s3://bucket/mlpipe")]        # doctest: +SKIP
    ['demo', 'housing']
    """
    fs, models = artifacts.filesystem(_models_dir(root), storage_options)
    names = sorted(_base(e) for e in _ls(fs, models) if fs.isdir(e))

    def one(name: str) -> dict[str, Any]:
        path = artifacts.join(models, name)
        records = _records(fs, path)
        current = _current(fs, path)
        run_id = current["run_id"] if current else None
        record = records.get(run_id, {}) if run_id else {}
        return {"name": name, "versions": len(records), "current": run_id,
                "updated_at": current.get("updated_at") if current else None,
                "metrics": record.get("headline", {})}

    if not names:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(names))) as pool:
        return list(pool.map(one, names))


def show_model(root: str, name: str, version: str | None = None, *,
               storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A model's current version, history and versions; or one version in detail.

    With ``version`` (a run id, or ``current``), the version's record and the summary of its
    manifest (files, data, metrics, library versions), after checking the manifest against the
    sha256 the registry recorded.

    Examples
    --------
    >>> show_model("s3://bucket/mlpipe", "demo")["current"]           # doctest: +SKIP
    '20261129T033012.123Z-1a2b3c4d-9f8e'
    """
    fs, path = artifacts.filesystem(_models_dir(root, name), storage_options)
    current = _current(fs, path)
    records = _records(fs, path)
    if current is None and not records:
        known = [m["name"] for m in list_models(root, storage_options)]
        raise BundleError(f"there is no model {name!r} at {root} (no models/{name}/); "
                          f"models there: {known or 'none'}")
    if version is None:
        return {"name": name, "current": current["run_id"] if current else None,
                "updated_at": current.get("updated_at") if current else None,
                "reason": current.get("reason") if current else None,
                "history": list(current.get("history", [])) if current else [],
                "versions": list(records.values()),
                "decisions": decisions(root, name, storage_options=storage_options)}
    if version == "current":
        if current is None:
            raise BundleError(f"model {name!r} has no current version at {root}")
        version = current["run_id"]
    record = records.get(version)
    if record is None:
        raise BundleError(f"{version} is not a version of model {name!r} at {root}; its "
                          f"versions: {list(records) or 'none'}")
    bundle = _open_version(root, version, record, storage_options)
    manifest = bundle.manifest
    return {"name": name, "run_id": version,
            "current": bool(current and current["run_id"] == version),
            "record": record,
            "created_at": manifest.get("created_at"), "task": manifest.get("task"),
            "family": manifest.get("family"), "headline": manifest.get("headline", {}),
            "data": manifest.get("data", {}),
            "files": {k: v["size"] for k, v in manifest.get("files", {}).items()},
            "versions": manifest.get("versions", {}), "url": bundle.url,
            "decision": next((d for d in decisions(root, name, storage_options=storage_options)
                              if d.get("run_id") == version), None)}


# --------------------------------------------------------------------------- changing


def promote(root: str, name: str, run_id: str, *, expected_run: Any = _READ,
            storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Make ``run_id`` the current version of ``name`` (compare-and-swap).

    The run must be complete: its manifest exists and every file it lists matches its
    sha256, and it must be a run of this model. It is registered as a version if it was not
    (create-once), then the pointer is flipped only if the current version still is
    ``expected_run`` (by default: the one read when this call starts).

    Raises
    ------
    ConflictError
        Another writer changed the current version first; look (``show``) and retry.

    Examples
    --------
    >>> promote("s3://bucket/mlpipe", "demo", "20261129T033012.123Z-1a2b3c4d-9f8e")
    ...                                                                 # doctest: +SKIP
    """
    fs, path = artifacts.filesystem(_models_dir(root, name), storage_options)
    current = _current(fs, path)
    current_run = current["run_id"] if current else None
    if expected_run is _READ:
        expected_run = current_run
    elif expected_run != current_run:  # --expect names the version that must be current
        raise ConflictError(f"model {name!r} is at {current_run}, not {expected_run} (the "
                            f"expected current version); nothing was changed: look (mlpipe "
                            "models show) and retry")
    bundle = _verified_run(root, name, run_id, storage_options)
    if current_run == run_id:
        logger.info("%s is already the current version of %r", run_id, name)
        return current or {}
    _register(fs, path, name, bundle)
    doc = artifacts.set_current(root, name, run_id, manifest_sha256=bundle.manifest["_sha256"],
                                storage_options=storage_options, expected_run=expected_run,
                                reason="promote")
    logger.info("model %r: %s -> %s", name, expected_run, run_id)
    return doc


def rollback(root: str, name: str, *, expected_run: Any = _READ,
             storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Make the previous current version of ``name`` current again (compare-and-swap).

    The previous version is the first entry of the pointer's history; it is checked (manifest
    present and matching its version record) before the flip. Rolling back twice goes two
    versions back.

    Examples
    --------
    >>> rollback("s3://bucket/mlpipe", "demo")["run_id"]              # doctest: +SKIP
    '20261128T210001.000Z-1a2b3c4d-0c0c'
    """
    fs, path = artifacts.filesystem(_models_dir(root, name), storage_options)
    current = _current(fs, path)
    if current is None:
        raise BundleError(f"model {name!r} has no current version at {root}; nothing to roll "
                          "back")
    if expected_run is _READ:
        expected_run = current["run_id"]
    history = [r for r in current.get("history", []) if r != current["run_id"]]
    if not history:
        raise BundleError(f"model {name!r} has no previous version to roll back to (its "
                          f"history is empty; current: {current['run_id']})")
    previous = history[0]
    records = _records(fs, path)
    bundle = _open_version(root, previous, records.get(previous, {}), storage_options)
    doc = artifacts.set_current(root, name, previous, manifest_sha256=bundle.manifest["_sha256"],
                                storage_options=storage_options, expected_run=expected_run,
                                reason="rollback", history=history[1:])
    logger.info("model %r rolled back: %s -> %s", name, current["run_id"], previous)
    return doc


def _open_version(root: str, run_id: str, record: Mapping[str, Any],
                  storage_options: Mapping[str, Any] | None) -> Any:
    """The bundle of a registered version, its manifest checked against the version record."""
    bundle = artifacts.open_bundle(artifacts.join(root, "runs", run_id), storage_options)
    recorded = record.get("manifest_sha256")
    if recorded and recorded != bundle.manifest["_sha256"]:
        raise BundleError(f"the manifest of {run_id} does not match the sha256 in its version "
                          "record: the version was changed after it was registered; refusing "
                          "to use it")
    return bundle


def _verified_run(root: str, name: str, run_id: str,
                  storage_options: Mapping[str, Any] | None) -> Any:
    bundle = artifacts.open_bundle(artifacts.join(root, "runs", run_id), storage_options)
    owner = bundle.manifest.get("name")
    if owner is not None and owner != name:
        raise BundleError(f"run {run_id} is a run of model {owner!r}, not {name!r}; promote it "
                          f"as {owner!r}")
    bundle.verify()  # raises BundleError naming the file that does not match
    return bundle


def _register(fs: Any, path: str, name: str, bundle: Any) -> None:
    manifest = bundle.manifest
    record = {"name": name, "run_id": bundle.run_id, "manifest_sha256": manifest["_sha256"],
              "created_at": manifest.get("created_at"), "headline": manifest.get("headline", {}),
              "family": manifest.get("family")}
    if artifacts.is_local(fs):
        fs.makedirs(artifacts.join(path, "versions"), exist_ok=True)
    try:
        artifacts.atomic_write(fs, artifacts.join(path, "versions", f"{bundle.run_id}.json"),
                               json.dumps(record, indent=2, sort_keys=True).encode(),
                               create_once=True)
    except FileExistsError:
        pass  # registered before (records are create-once, never rewritten)
    # (an equal record written by this call's lost-response retry is no FileExistsError)


def register(root: str, name: str, run_id: str, *,
             storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Register a completed run as a version of ``name`` without making it current (a
    challenger the gate did not promote). Verified first, like :func:`promote`; registering
    twice is a no-op. Returns the version record.

    Examples
    --------
    >>> register("s3://bucket/mlpipe", "demo", "20261129T033012.123Z-1a2b3c4d-9f8e")["run_id"]
    ...                                                                 # doctest: +SKIP
    '20261129T033012.123Z-1a2b3c4d-9f8e'
    """
    fs, path = artifacts.filesystem(_models_dir(root, name), storage_options)
    bundle = _verified_run(root, name, run_id, storage_options)
    _register(fs, path, name, bundle)
    return _records(fs, path).get(run_id, {})


#: one file per challenger the gate judged: ``models/<name>/decisions/<run_id>.json``
DECISIONS = "decisions"


def record_decision(root: str, name: str, record: Mapping[str, Any], *,
                    storage_options: Mapping[str, Any] | None = None) -> None:
    """Keep the gate's decision on a run (create-once: a decision is never rewritten)."""
    fs, path = artifacts.filesystem(_models_dir(root, name), storage_options)
    if artifacts.is_local(fs):
        fs.makedirs(artifacts.join(path, DECISIONS), exist_ok=True)
    target = artifacts.join(path, DECISIONS, f"{record['run_id']}.json")
    try:
        artifacts.atomic_write(fs, target, json.dumps(record, indent=2, sort_keys=True,
                                                      default=str).encode(), create_once=True)
    except FileExistsError:
        logger.warning("a decision on %s was already recorded; kept the first", record["run_id"])


def decisions(root: str, name: str, *, storage_options: Mapping[str, Any] | None = None
              ) -> list[dict[str, Any]]:
    """The gate's decisions on the versions of ``name``, newest first."""
    fs, path = artifacts.filesystem(_models_dir(root, name), storage_options)
    files = [e for e in _ls(fs, artifacts.join(path, DECISIONS)) if e.endswith(".json")]
    out = []
    for key, raw in (fs.cat(files).items() if files else []):
        try:
            out.append(json.loads(raw))
        except ValueError:
            logger.warning("ignoring unreadable decision record %s", key)
    return sorted(out, key=lambda d: str(d.get("decided_at", "")), reverse=True)


# --------------------------------------------------------------------------- cleanup


def cleanup(root: str, *, older_than: dt.timedelta = dt.timedelta(hours=24),
            dry_run: bool = False, storage_options: Mapping[str, Any] | None = None
            ) -> dict[str, Any]:
    """Remove what failed or killed writers left under ``root``; report what was (or would be)
    removed.

    - ``runs/<run_id>/`` without a manifest whose newest file is older than ``older_than``
      (a run still being written is younger, and is kept);
    - temporary files of interrupted atomic writes (``.tmp-*``) older than ``older_than``;
    - on S3: incomplete multipart uploads under ``root`` started before ``older_than`` (a
      killed upload is invisible but billed until aborted).

    Completed runs (with a manifest) are never touched: versions are immutable.

    Examples
    --------
    >>> cleanup("s3://bucket/mlpipe", dry_run=True)["runs"]             # doctest: +SKIP
    ['s3://bucket/mlpipe/runs/20261129T033012.123Z-1a2b3c4d-9f8e']
    """
    fs, base = artifacts.filesystem(root, storage_options)
    cutoff = dt.datetime.now(dt.timezone.utc) - older_than
    runs_dir = artifacts.join(base, "runs")
    doomed_runs: list[str] = []
    for entry in _ls(fs, runs_dir):
        if not fs.isdir(entry):
            continue
        files = fs.find(entry, detail=True, withdirs=False)
        if any(_base(f) == MANIFEST for f in files):
            continue
        newest = max((_modified(fs, f, info) for f, info in files.items()),
                     default=_modified(fs, entry, {}))
        if newest is None or newest < cutoff:
            doomed_runs.append(entry)
    temps = []
    for directory in (runs_dir, artifacts.join(base, "models")):
        if not fs.isdir(directory):
            continue
        for f, info in fs.find(directory, detail=True).items():
            if _base(f).startswith(".tmp-"):
                modified = _modified(fs, f, info)
                if modified is None or modified < cutoff:
                    temps.append(f)
    uploads = _stale_uploads(fs, base, cutoff) if artifacts.is_s3(fs) else []
    if not dry_run:
        for entry in doomed_runs:
            fs.rm(entry, recursive=True)
        for f in temps:
            fs.rm_file(f)
        for upload in uploads:
            fs.call_s3("abort_multipart_upload", Bucket=upload["bucket"], Key=upload["key"],
                       UploadId=upload["upload_id"])
        fs.invalidate_cache(base)
    verb = "would remove" if dry_run else "removed"
    logger.info("cleanup %s: %s %s unfinished run(s), %s temp file(s), %s multipart "
                "upload(s)", root, verb, len(doomed_runs), len(temps), len(uploads))
    return {"root": root, "dry_run": dry_run, "older_than_s": older_than.total_seconds(),
            "runs": [_url(fs, e) for e in doomed_runs], "temp_files": [_url(fs, f) for f in temps],
            "multipart_uploads": [{"key": u["key"], "upload_id": u["upload_id"],
                                   "initiated": u["initiated"]} for u in uploads]}


def _url(fs: Any, path: str) -> str:
    return path if artifacts.is_local(fs) else fs.unstrip_protocol(path)


def _modified(fs: Any, path: str, info: Mapping[str, Any]) -> dt.datetime | None:
    """Last modification time of a file (UTC), from its listing where possible."""
    stamp = info.get("LastModified") or info.get("mtime") or info.get("last_modified")
    if stamp is None:
        try:
            stamp = fs.modified(path)
        except (NotImplementedError, FileNotFoundError, OSError):
            return None
    if isinstance(stamp, int | float):
        return dt.datetime.fromtimestamp(stamp, dt.timezone.utc)
    if isinstance(stamp, str):
        stamp = dt.datetime.fromisoformat(stamp)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.timezone.utc)
    return stamp.astimezone(dt.timezone.utc)


def _stale_uploads(fs: Any, base: str, cutoff: dt.datetime) -> list[dict[str, Any]]:
    bucket, prefix, _ = fs.split_path(base)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    out: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    while True:
        page = fs.call_s3("list_multipart_uploads", **kwargs)
        for upload in page.get("Uploads", []) or []:
            initiated = upload["Initiated"]
            if initiated.tzinfo is None:
                initiated = initiated.replace(tzinfo=dt.timezone.utc)
            if initiated < cutoff:
                out.append({"bucket": bucket, "key": upload["Key"],
                            "upload_id": upload["UploadId"],
                            "initiated": initiated.astimezone(dt.timezone.utc).isoformat()})
        if not page.get("IsTruncated"):
            return out
        kwargs.update(KeyMarker=page.get("NextKeyMarker"),
                      UploadIdMarker=page.get("NextUploadIdMarker"))


def parse_age(text: str) -> dt.timedelta:
    """``"24h"``, ``"30m"``, ``"7d"``, ``"90s"``, ``"0"`` -> a timedelta.

    Examples
    --------
    >>> parse_age("36h")
    datetime.timedelta(days=1, seconds=43200)
    """
    value = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    unit = value[-1] if value and value[-1] in units else "s"
    number = value[:-1] if value and value[-1] in units else value
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise ValueError(f"cannot read the age {text!r}; use a number with s, m, h, d or w "
                         "(e.g. 24h, 7d, 0)") from None
    if seconds < 0:
        raise ValueError(f"the age {text!r} is negative")
    return dt.timedelta(seconds=seconds)


__all__ = ["list_models", "show_model", "promote", "register", "rollback", "cleanup",
           "parse_age", "decisions", "record_decision", "ConflictError", "BundleError"]
