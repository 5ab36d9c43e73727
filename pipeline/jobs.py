"""Submitted jobs: the job's driver runs on the cluster, its state lives next to its bundles.

``mlpipe submit JOB`` sends one long-running task, the *driver*, to an existing cluster and
returns a job id at once; the laptop may then disconnect. The driver secedes from its
worker's thread pool (so even a cluster of one-thread workers still has every slot for the
job's own tasks), takes the worker's client and calls :func:`pipeline.workflow.run` with it.

Everything a later ``status`` / ``logs`` / ``cancel`` needs is in two places, so any machine
that reaches the scheduler *or* the output store can answer:

``<output>/jobs/<job_id>.json``
    the job's state (written with :func:`pipeline.artifacts.atomic_write`): ``state`` (queued,
    running, succeeded, failed, cancelled), the submitted/started/finished times, the
    scheduler's address and the driver's task key, the stage reached (``stages``: each with
    the time it ended), the run URL and the headline metrics on success, one paragraph of
    error on failure.
``<output>/jobs/<job_id>.log``
    the driver's log (the ``pipeline`` logger, flushed after every stage and at the end).
``<output>/jobs/<job_id>.cancel``
    written by ``cancel``; the driver checks it after every stage and stops before
    anything is published.

The scheduler also remembers ``job_id -> output`` (``Client.set_metadata``), so ``status JOB_ID
--scheduler ADDR`` works without ``--output`` while that scheduler lives.

Job ids are ``<name>-<UTC time>-<4 hex>``, e.g. ``demo-20261129T033012Z-9f2c``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.artifacts import atomic_write, filesystem, join, utcnow

logger = logging.getLogger("pipeline")

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
#: scheduler metadata under which submitted jobs are remembered: [METADATA, job_id].
METADATA = "mlpipe-jobs"
#: the driver's task key is KEY_PREFIX + job_id.
KEY_PREFIX = "mlpipe-job-"


class JobCancelled(Exception):
    """Raised in the driver (from ``on_stage``) when the job's cancel marker exists."""


class JobNotFound(FileNotFoundError):
    """No state file for this job id under the given output root."""


# --------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class JobStore:
    """The ``<output>/jobs/`` folder of one output root (any fsspec URL)."""

    root: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    def _fs(self) -> Any:
        fs, _ = filesystem(self.root, self.storage_options)
        return fs

    def path(self, job_id: str, suffix: str) -> str:
        return join(self.root, "jobs", f"{job_id}{suffix}")

    def _read(self, path: str) -> bytes | None:
        fs = self._fs()
        fs.invalidate_cache(path)  # another machine may have written it since
        try:
            return fs.cat_file(path)
        except FileNotFoundError:
            return None

    def read(self, job_id: str) -> dict[str, Any]:
        raw = self._read(self.path(job_id, ".json"))
        if raw is None:
            raise JobNotFound(f"no job {job_id!r} under {join(self.root, 'jobs')} (its state "
                              f"file {self.path(job_id, '.json')} does not exist); check the "
                              "job id and --output")
        return json.loads(raw)

    def write(self, state: Mapping[str, Any]) -> None:
        atomic_write(self._fs(), self.path(state["job_id"], ".json"),
                     json.dumps(state, indent=2, sort_keys=True, default=str).encode())

    def read_log(self, job_id: str) -> str:
        raw = self._read(self.path(job_id, ".log"))
        return "" if raw is None else raw.decode()

    def write_log(self, job_id: str, text: str) -> None:
        atomic_write(self._fs(), self.path(job_id, ".log"), text.encode())

    def request_cancel(self, job_id: str) -> None:
        atomic_write(self._fs(), self.path(job_id, ".cancel"), utcnow().encode())

    def cancel_requested(self, job_id: str) -> bool:
        return self._read(self.path(job_id, ".cancel")) is not None

    def list(self) -> list[dict[str, Any]]:
        """Every job's state under this root, newest first."""
        fs = self._fs()
        folder = join(self.root, "jobs")
        fs.invalidate_cache(folder)
        try:
            names = sorted(p for p in fs.ls(folder, detail=False) if p.endswith(".json"))
        except FileNotFoundError:
            return []
        states = [json.loads(fs.cat_file(p)) for p in names]
        return sorted(states, key=lambda s: s.get("submitted_at") or "", reverse=True)


def new_job_id(name: str) -> str:
    """``<name>-<UTC time>-<4 hex>``: readable, sortable, unique, a valid Dask key part."""
    now = dt.datetime.now(dt.timezone.utc)
    return f"{name}-{now:%Y%m%dT%H%M%S}Z-{secrets.token_hex(2)}"


# --------------------------------------------------------------------------- submit


def submit(job: Any, client: Any) -> dict[str, Any]:
    """Start ``job`` (a :class:`~pipeline.config.JobSpec`) on the cluster of ``client``.

    Returns the job's first state (``queued``) once the scheduler holds the driver task; the
    task is kept with :func:`distributed.fire_and_forget`, so ``client`` may close at once.

    Examples
    --------
    >>> with cluster.connect(address="tls://scheduler:8786") as client:   # doctest: +SKIP
    ...     state = submit(load_job("job.yaml"), client)
    >>> state["job_id"]                                                    # doctest: +SKIP
    'demo-20261129T033012Z-9f2c'
    """
    import yaml
    from distributed import fire_and_forget

    job_id = new_job_id(job.name)
    key = KEY_PREFIX + job_id
    store = JobStore(job.output, dict(job.storage_options))
    state: dict[str, Any] = {
        "job_id": job_id, "name": job.name, "state": "queued", "submitted_at": utcnow(),
        "started_at": None, "finished_at": None, "scheduler": client.scheduler.address,
        "key": key, "output": job.output, "stage": None, "stages": [], "attempt": 0,
        "worker": None, "run_id": None, "run_url": None, "model_url": None, "family": None,
        "metrics": None, "error": None,
    }
    store.write(state)  # before the driver exists: it reads this first
    client.set_metadata([METADATA, job_id], {"output": job.output,
                                             "storage_options": dict(job.storage_options)})
    doc = yaml.safe_load(job.to_yaml())
    future = client.submit(drive, doc, job_id, job.output, dict(job.storage_options),
                           key=key, pure=False)
    fire_and_forget(future)
    _wait_until_held(client, key)
    return state


def _wait_until_held(client: Any, key: str, timeout: float = 30) -> None:
    """Return once the scheduler holds the driver for the fire-and-forget client (so closing
    our client right after cannot lose the task)."""
    import time

    deadline = time.monotonic() + timeout
    while not client.run_on_scheduler(_held, key):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the scheduler at {client.scheduler.address} did not accept "
                               f"the job's driver task {key} within {timeout:g} s")
        time.sleep(0.05)


def _held(key: str, dask_scheduler: Any = None) -> bool:
    ts = dask_scheduler.tasks.get(key)
    return ts is not None and any(c.client_key == "fire-and-forget" for c in ts.who_wants)


# --------------------------------------------------------------------------- the driver


def drive(job_doc: Mapping[str, Any], job_id: str, root: str,
          storage_options: Mapping[str, Any]) -> dict[str, Any]:
    """The driver task: runs the whole job on the cluster it runs on (see the module doc).

    It never raises for a failed job: the failure is the job's state. If its worker dies,
    Dask runs it again elsewhere (``attempt`` counts the starts); a job already finished or
    cancelled is not run again.
    """
    from distributed import get_client, get_worker, secede

    # Release this thread's slot: the job's own tasks may need it (one-thread workers).
    secede()
    store = JobStore(root, dict(storage_options))
    state = store.read(job_id)
    if state["state"] in TERMINAL:
        return {"job_id": job_id, "state": state["state"]}
    state.update(state="running", started_at=utcnow(), worker=get_worker().address,
                 attempt=int(state.get("attempt") or 0) + 1, stage=None, stages=[], error=None)
    with _DriverLog(store, job_id, state["attempt"], state["worker"]) as log:
        try:
            if store.cancel_requested(job_id):
                raise JobCancelled("cancelled before it started")
            store.write(state)
            result = _run(job_doc, job_id, store, state, log, get_client())
            state.update(state="succeeded", run_id=result.run_id, run_url=result.run_url,
                         model_url=result.model_url, metrics=result.headline,
                         family=result.family)
            logger.info("job %s succeeded: %s", job_id, result.run_url)
        except JobCancelled as exc:
            state.update(state="cancelled", error=str(exc))
            logger.warning("job %s %s", job_id, exc)
        except Exception as exc:
            state.update(state="failed", error=error_paragraph(exc, state.get("scheduler")))
            logger.error("job %s failed: %s", job_id, state["error"], exc_info=True)
        finally:
            state["finished_at"] = utcnow()
            store.write(state)
    return {"job_id": job_id, "state": state["state"]}


def _run(job_doc: Mapping[str, Any], job_id: str, store: JobStore, state: dict[str, Any],
         log: _DriverLog, client: Any) -> Any:
    from pipeline.config import load_job
    from pipeline.workflow import run

    job = load_job(job_doc)

    def on_stage(stage: str) -> None:
        state["stage"] = stage
        state["stages"].append([stage, utcnow()])
        store.write(state)
        log.save()
        if store.cancel_requested(job_id):
            raise JobCancelled(f"cancelled after stage {stage!r}")

    logger.info("job %s: driver on %s (attempt %d)", job_id, state["worker"], state["attempt"])
    return run(job, client=client, on_stage=on_stage)


def error_paragraph(exc: BaseException, scheduler: str | None = None) -> str:
    """One paragraph for the state file: the cluster's own explanation when there is one."""
    import cluster

    clear = cluster.explain(exc, scheduler or "unnamed")
    if clear is not None:
        exc = clear
    text = str(exc).strip() or type(exc).__name__
    from pipeline.config import JobError

    if not isinstance(exc, (JobError, cluster.ClusterError)) and type(exc) is not ValueError:
        text = f"{type(exc).__name__}: {text}"
    return text[:4000]


class _DriverLog(logging.Handler):
    """The driver thread's ``pipeline`` and ``cluster`` records, mirrored to the job's log."""

    LOGGERS = ("pipeline", "cluster")
    _lock = threading.Lock()
    _active = 0
    _saved: dict[str, int] = {}

    def __init__(self, store: JobStore, job_id: str, attempt: int, worker: str) -> None:
        super().__init__(logging.INFO)
        self.store, self.job_id = store, job_id
        self.thread = threading.get_ident()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        earlier = store.read_log(job_id)
        self.lines: list[str] = [earlier.rstrip("\n")] if earlier else []
        self.lines.append(f"--- {utcnow()} attempt {attempt} on {worker}")

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:  # other jobs' drivers may share this worker
            self.lines.append(self.format(record))

    def save(self) -> None:
        try:
            self.store.write_log(self.job_id, "\n".join(self.lines) + "\n")
        except Exception:  # a log that cannot be written must not fail the job
            logger.debug("could not write the log of job %s", self.job_id, exc_info=True)

    def __enter__(self) -> _DriverLog:
        with self._lock:
            if _DriverLog._active == 0:  # worker processes leave these loggers at WARNING
                _DriverLog._saved = {n: logging.getLogger(n).level for n in self.LOGGERS}
                for name in self.LOGGERS:
                    if logging.getLogger(name).getEffectiveLevel() > logging.INFO:
                        logging.getLogger(name).setLevel(logging.INFO)
            _DriverLog._active += 1
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)
        with self._lock:
            _DriverLog._active -= 1
            if _DriverLog._active == 0:
                for name, level in _DriverLog._saved.items():
                    logging.getLogger(name).setLevel(level)
        self.save()


# --------------------------------------------------------------------------- status, logs


def locate(job_id: str, client: Any) -> JobStore:
    """The output store of a job the scheduler of ``client`` ran (from its metadata)."""
    found = client.get_metadata([METADATA, job_id], default=None)
    if not found:
        raise JobNotFound(
            f"the scheduler at {client.scheduler.address} does not know job {job_id!r} (a "
            "scheduler forgets its jobs when it restarts); give the job's output root with "
            "--output")
    return JobStore(found["output"], found.get("storage_options") or {})


def known_jobs(client: Any) -> dict[str, dict[str, Any]]:
    """``{job_id: {output, storage_options}}`` of every job this scheduler was given."""
    return dict(client.get_metadata([METADATA], default=None) or {})


def driver_state(client: Any, key: str) -> dict[str, Any] | None:
    """The driver task as the scheduler sees it (``None``: the scheduler does not hold it)."""
    return client.run_on_scheduler(_task_info, key)


def _task_info(key: str, dask_scheduler: Any = None) -> dict[str, Any] | None:
    ts = dask_scheduler.tasks.get(key)
    if ts is None:
        return None
    worker = ts.processing_on.address if ts.processing_on is not None else None
    return {"state": ts.state, "worker": worker,
            "exception": ts.exception_text or None}


def status(job_id: str, store: JobStore, client: Any = None) -> dict[str, Any]:
    """The job's state file, checked against the scheduler when ``client`` is given.

    A job whose file says queued or running but whose driver the scheduler no longer holds
    is reported as ``lost`` (the scheduler restarted, or the driver's workers all died); the
    file is left as the driver wrote it.
    """
    seen = driver_state(client, KEY_PREFIX + job_id) if client is not None else None
    state = store.read(job_id)  # after asking the scheduler: a driver writes before it ends
    state["cancel_requested"] = state["state"] not in TERMINAL and store.cancel_requested(job_id)
    if client is not None:
        state["driver"] = seen
        if state["state"] not in TERMINAL and (seen is None or seen["state"] == "erred"):
            why = (error_paragraph(_Text(seen["exception"]), state.get("scheduler"))
                   if seen and seen.get("exception") else
                   "the scheduler no longer holds the job's driver (it restarted, or the "
                   "driver's task failed with its workers)")
            state.update(state="lost", error=why)
    return state


class _Text(Exception):
    """A remote exception's text, so :func:`cluster.explain` can read it."""


def cancel(job_id: str, store: JobStore, client: Any = None) -> dict[str, Any]:
    """Ask the job to stop; returns its state.

    The cancel marker is written first, so a driver running or about to start stops at its
    next stage boundary (before anything is published). A driver that is not running (still
    queued on the scheduler, or lost) is cancelled on the scheduler and the job is marked
    ``cancelled`` here.
    """
    state = store.read(job_id)
    if state["state"] in TERMINAL:
        return state
    store.request_cancel(job_id)
    seen = driver_state(client, state["key"]) if client is not None else None
    if client is not None and (seen is None or seen["state"] != "processing"):
        if seen is not None:
            from distributed import Future

            client.cancel([Future(state["key"], client)], force=True,
                          reason="mlpipe cancel")
        state = store.read(job_id)
        if state["state"] not in TERMINAL:
            state.update(state="cancelled", finished_at=utcnow(),
                         error="cancelled before its driver started"
                         if seen is not None else "cancelled (its driver was lost)")
            store.write(state)
    else:
        state = store.read(job_id)
    state["cancel_requested"] = state["state"] not in TERMINAL
    return state


def logs(job_id: str, store: JobStore, client: Any = None) -> str:
    """The driver's log, then (with ``client``) the scheduler's and each worker's log lines
    from the job's time window (``started_at`` to ``finished_at``, or now)."""
    state = store.read(job_id)
    out = [f"==> driver: {store.path(job_id, '.log')}", store.read_log(job_id).rstrip()
           or "(nothing logged yet)"]
    if client is None:
        return "\n".join(out) + "\n"
    start = _epoch(state.get("started_at") or state["submitted_at"]) - 1
    end = _epoch(state["finished_at"]) + 1 if state.get("finished_at") else None
    scheduler = client.run_on_scheduler(_node_logs, start, end)
    workers = client.run(_node_logs, start, end, on_error="ignore")
    out += [f"==> scheduler {client.scheduler.address}", _lines(scheduler)]
    for address in sorted(workers):
        out += [f"==> worker {address}", _lines(workers[address])]
    return "\n".join(out) + "\n"


def _node_logs(start: float, end: float | None, dask_worker: Any = None,
               dask_scheduler: Any = None) -> list[tuple[float, str, str]]:
    node = dask_worker if dask_worker is not None else dask_scheduler
    rows = node.get_logs(start=start, timestamps=True)  # newest first
    return [r for r in reversed(rows) if end is None or r[0] <= end]


def _lines(rows: Any) -> str:
    if not isinstance(rows, list) or not rows:
        return "(no log lines in the job's time window)"
    return "\n".join(text for _, _, text in rows)


def _epoch(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp).timestamp()


__all__ = ["submit", "drive", "status", "cancel", "logs", "locate", "known_jobs", "JobStore",
           "JobCancelled", "JobNotFound", "new_job_id", "STATES", "TERMINAL"]
