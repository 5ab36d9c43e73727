"""The only place a Dask cluster or a Client is made.

:func:`connect` chooses a cluster, first match wins (ARCHITECTURE.md):

1. an explicit address (``--scheduler`` / ``cluster.address``) or ``cluster.scheduler_file``;
2. ``DASK_SCHEDULER_ADDRESS`` / dask config ``scheduler-address``;
3. ``cluster.spec: {module, class, kwargs, scale | adapt}`` (dask-jobqueue, dask-kubernetes...);
4. a :class:`~distributed.LocalCluster` sized to this machine, bound to 127.0.0.1.

Everything else in mlpipe takes ``client=None`` and uses :func:`distributed.get_client`.
"""

from __future__ import annotations

import contextlib
import importlib
import ipaddress
import logging
import os
import socket
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from cluster import logs
from cluster.settings import DEFAULTS, VERSION_CHECKED

logger = logging.getLogger(__name__)


class ClusterError(RuntimeError):
    """The cluster could not be reached, has no workers, or runs other package versions."""


class SchedulerLostError(ConnectionError):
    """The connection to the scheduler closed while work inside :func:`connect` ran."""


class InsecureClusterWarning(UserWarning):
    """A plain-TCP connection to a scheduler that is not on this machine."""


@dataclass(frozen=True)
class Choice:
    """Which cluster :func:`connect` would use, and why."""

    kind: str  # "address" | "scheduler_file" | "environment" | "spec" | "local"
    target: str
    reason: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.kind}: {self.target} ({self.reason})"


def resolve(spec: Mapping[str, Any] | None = None, *, address: str | None = None) -> Choice:
    """Decide which cluster to use, without starting or contacting anything.

    Parameters
    ----------
    spec
        The job's ``cluster:`` block as a plain dict (``ClusterSpec.model_dump(by_alias=True)``).
    address
        ``--scheduler`` from the command line; wins over everything.

    Examples
    --------
    >>> resolve({"n_workers": 2}).kind
    'local'
    >>> resolve({}, address="tcp://10.0.0.5:8786").target
    'tcp://10.0.0.5:8786'
    """
    spec = dict(spec or {})
    if address:
        return Choice("address", address, "given with --scheduler")
    if spec.get("address"):
        return Choice("address", spec["address"], "cluster.address in the job")
    if spec.get("scheduler_file"):
        return Choice("scheduler_file", spec["scheduler_file"], "cluster.scheduler_file in the job")
    import dask

    env = os.environ.get("DASK_SCHEDULER_ADDRESS") or dask.config.get("scheduler-address", None)
    if env:
        return Choice("environment", env, "DASK_SCHEDULER_ADDRESS / dask config scheduler-address")
    if spec.get("spec"):
        cls = spec["spec"]
        path = f"{cls['module']}.{cls.get('class') or cls.get('class_')}"
        return Choice("spec", path, "cluster.spec in the job", dict(cls))
    n_workers, threads = _local_size(spec)
    kwargs = {
        "n_workers": n_workers,
        "threads_per_worker": threads,
        "processes": spec.get("processes", True),
        "memory_limit": spec.get("memory_limit") or "auto",
    }
    target = f"LocalCluster({n_workers} workers x {threads} threads, 127.0.0.1)"
    return Choice("local", target, "no address, scheduler file or cluster spec given", kwargs)


def _local_size(spec: Mapping[str, Any]) -> tuple[int, int]:
    from dask.system import CPU_COUNT
    from distributed.deploy.utils import nprocesses_nthreads

    n_workers, threads = nprocesses_nthreads(CPU_COUNT)
    if spec.get("n_workers") and not spec.get("threads_per_worker"):
        n_workers = spec["n_workers"]
        threads = max(1, CPU_COUNT // n_workers)
    elif spec.get("threads_per_worker") and not spec.get("n_workers"):
        threads = spec["threads_per_worker"]
        n_workers = max(1, CPU_COUNT // threads)
    elif spec.get("n_workers"):
        n_workers, threads = spec["n_workers"], spec["threads_per_worker"]
    return int(n_workers), int(threads)


@contextlib.contextmanager
def connect(spec: Mapping[str, Any] | None = None, *, address: str | None = None,
            dask_config: Mapping[str, Any] | None = None,
            check_versions: bool = True, wait_for_workers: bool = True) -> Iterator[Any]:
    """Open the chosen cluster and yield a :class:`distributed.Client` for it.

    Our defaults (:mod:`cluster.settings`) and then ``dask_config`` are set for the whole
    context. A cluster we started (local or from a spec) is closed on exit; an existing one is
    only disconnected from. On a cluster we did not start, package versions of every worker
    are compared with ours and a mismatch is an error naming the worker and the package
    (``wait_for_workers=False``: return as soon as the scheduler answers, e.g. to ask it
    about a submitted job).

    A failure inside the block that is the cluster's (every worker gone, see :func:`explain`)
    comes out as a :class:`ClusterError` that says so.

    Examples
    --------
    >>> with connect({"n_workers": 2}) as client:       # doctest: +SKIP
    ...     print(client.dashboard_link)
    """
    import dask
    from distributed import Client

    spec = dict(spec or {})
    choice = resolve(spec, address=address)
    timeout = spec.get("timeout") or "60s"
    settings = {**DEFAULTS, **dict(dask_config or {})}
    with dask.config.set(settings), contextlib.ExitStack() as stack:
        security = _security(spec.get("security"))
        if choice.kind in ("address", "environment"):
            _warn_if_exposed(choice.target, security)
            client = _client(lambda: Client(choice.target, security=security, timeout=timeout),
                             choice)
        elif choice.kind == "scheduler_file":
            client = _client(lambda: Client(scheduler_file=choice.target, security=security,
                                            timeout=timeout), choice)
        elif choice.kind == "spec":
            cluster = _cluster_from_spec(choice.kwargs)
            stack.callback(cluster.close)
            client = _client(lambda: Client(cluster, security=security, timeout=timeout),
                             choice)
        else:
            from distributed import LocalCluster

            if choice.kwargs.get("processes", True):
                check_main_guard()
            os.makedirs(str(settings["distributed.nanny.pre-spawn-environ.NUMBA_CACHE_DIR"]),
                        exist_ok=True)
            # threads only: the in-process transport, nothing listens but the dashboard
            where = {"host": "127.0.0.1"} if choice.kwargs.get("processes", True) else {}
            # its workers share our terminal: their logs at our level (cluster/logs.py)
            cluster = LocalCluster(dashboard_address="127.0.0.1:0", **where, **choice.kwargs,
                                   silence_logs=logs.worker_level())
            stack.callback(cluster.close)
            client = Client(cluster)
            logs.quiet_workers(client)
        stack.callback(client.close)
        logger.debug("cluster: %s; dashboard: %s", choice, client.dashboard_link)
        if choice.kind != "local" and wait_for_workers:
            _wait_for_workers(client, timeout, choice)
            if check_versions:
                check_package_versions(client)
        try:
            yield client
        except Exception as exc:
            clear = explain(exc, choice.target) or _lost(client, exc, choice)
            if clear is None:
                raise
            raise clear from exc


def check_main_guard() -> None:
    """Refuse to start local worker processes from a script's unguarded top level.

    Worker processes are started with ``spawn``: each imports the ``__main__`` script again
    (as ``__mp_main__``), so a script that calls mlpipe at its top level, outside
    ``if __name__ == "__main__":``, would start the job again in every worker and hang. This
    looks at the calling line of the script (a REPL, a notebook or ``python -c`` have none)
    and raises :class:`ClusterError` before any process starts.
    """
    import ast
    import sys

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_globals is getattr(main, "__dict__", None)
                                     and frame.f_code.co_name == "<module>"):
        frame = frame.f_back
    if path is None or frame is None or not os.path.isfile(path):
        return
    line = frame.f_lineno
    try:
        with open(path, encoding="utf-8") as source:
            tree = ast.parse(source.read(), path)
    except (OSError, SyntaxError, ValueError):
        return
    if any(isinstance(node, ast.If) and _tests_main(node.test)
           and node.lineno <= line <= (node.end_lineno or node.lineno) for node in tree.body):
        return
    raise ClusterError(
        f"{path}, line {line}, starts mlpipe at the script's top level. The local Dask cluster "
        "starts worker processes that import the script again, so each of them would start "
        "the job again and the script would hang. Put the calls under "
        "`if __name__ == \"__main__\":` (as in the README's Python example), or run on a "
        "threaded cluster (cluster: {processes: false}) or an existing one (--scheduler / "
        "cluster.address).")


def _tests_main(test: Any) -> bool:
    """``__name__ == "__main__"`` (either way round)."""
    import ast

    if not (isinstance(test, ast.Compare) and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    return ({type(s) for s in sides} == {ast.Name, ast.Constant}
            and {getattr(s, "id", None) or getattr(s, "value", None) for s in sides}
            == {"__name__", "__main__"})


def _client(make: Any, choice: Choice) -> Any:
    try:
        return make()
    except OSError as exc:  # distributed raises OSError / TimeoutError on connect failures
        raise ClusterError(
            f"could not connect to the scheduler at {choice.target} ({choice.reason}): {exc}. "
            "Check the address and that the scheduler is running and reachable "
            "(e.g. `dask scheduler` on that host)") from None


#: optional extras that provide cluster classes, by top-level module (pyproject.toml).
EXTRAS = {"dask_jobqueue": "jobqueue", "dask_kubernetes": "kubernetes"}


def validate_spec(cls_spec: Mapping[str, Any]) -> type:
    """Check a ``cluster.spec`` block without building anything; return the cluster class.

    The module must import (a missing optional extra is named: ``pip install
    'mlpipe[kubernetes]'``), the class must exist, and ``kwargs`` must fit its signature
    (keywords a class forwards through ``**kwargs``, like dask-jobqueue's job options, are
    checked by the class itself in :func:`build_spec`).

    Examples
    --------
    >>> validate_spec({"module": "distributed", "class": "LocalCluster"}).__name__
    'LocalCluster'
    """
    import inspect

    module_name, class_name = cls_spec["module"], _class_name(cls_spec)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = EXTRAS.get(module_name.split(".")[0])
        hint = (f"; it comes with the optional extra {extra!r}: pip install 'mlpipe[{extra}]'"
                if extra else "; install the package that provides it")
        raise ClusterError(f"cluster.spec.module {module_name!r} cannot be imported "
                           f"({exc}){hint}") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        known = sorted(n for n, v in vars(module).items()
                       if isinstance(v, type) and n.endswith("Cluster"))
        raise ClusterError(f"cluster.spec: {module_name} has no class {class_name!r}"
                           + (f"; it has {', '.join(known)}" if known else ""))
    kwargs = dict(cls_spec.get("kwargs") or {})
    try:
        inspect.signature(cls).bind_partial(**kwargs)
    except TypeError as exc:
        raise ClusterError(f"cluster.spec.kwargs do not fit {module_name}.{class_name}: "
                           f"{exc}") from None
    except ValueError:  # no signature to inspect (a C type): the constructor will tell
        pass
    return cls


def build_spec(cls_spec: Mapping[str, Any]) -> Any:
    """Construct the cluster object of a ``cluster.spec`` block, without scaling it.

    Nothing is submitted yet (a dask-jobqueue cluster starts only its local scheduler), so
    the object can be inspected, e.g. ``build_spec(spec).job_script()``; :func:`connect`
    then applies ``scale`` / ``adapt``. The caller closes it.

    Examples
    --------
    >>> spec = {"module": "dask_jobqueue", "class": "SLURMCluster",      # doctest: +SKIP
    ...         "kwargs": {"cores": 8, "memory": "32GiB", "walltime": "02:00:00"}}
    >>> print(build_spec(spec).job_script())                             # doctest: +SKIP
    """
    cls = validate_spec(cls_spec)
    try:
        return cls(**dict(cls_spec.get("kwargs") or {}))
    except (TypeError, ValueError) as exc:
        module = cls_spec["module"]
        extra = EXTRAS.get(module.split(".")[0])
        where = f" (installed with pip install 'mlpipe[{extra}]')" if extra else ""
        raise ClusterError(f"cluster.spec {module}.{_class_name(cls_spec)} refused its "
                           f"kwargs: {exc}\nSee the documentation of {module}{where} for "
                           "the kwargs it takes") from None


def _class_name(cls_spec: Mapping[str, Any]) -> str:
    return cls_spec.get("class") or cls_spec["class_"]


def _cluster_from_spec(cls_spec: Mapping[str, Any]) -> Any:
    cluster = build_spec(cls_spec)
    try:
        if cls_spec.get("adapt"):
            cluster.adapt(**cls_spec["adapt"])
        elif cls_spec.get("scale"):
            cluster.scale(cls_spec["scale"])
    except BaseException:
        cluster.close()
        raise
    return cluster


def _security(block: Mapping[str, Any] | None) -> Any:
    if not block:
        return None
    from distributed.security import Security

    for key in ("ca_file", "cert_file", "key_file"):
        if not os.path.exists(block[key]):
            raise ClusterError(f"cluster.security.{key}: {block[key]} does not exist")
    return Security(tls_ca_file=block["ca_file"], tls_client_cert=block["cert_file"],
                    tls_client_key=block["key_file"],
                    require_encryption=block.get("require_encryption", True))


def _warn_if_exposed(address: str, security: Any) -> None:
    parsed = urlparse(address)
    if parsed.scheme != "tcp" or not parsed.hostname:
        return
    if not _is_loopback(parsed.hostname):
        warnings.warn(
            f"connecting to {address} over plain TCP: a Dask scheduler executes arbitrary code "
            "for anyone who can reach it. Do not expose it on a network; use tls:// with a "
            "cluster.security block", InsecureClusterWarning, stacklevel=3)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except OSError:
            return False


def _wait_for_workers(client: Any, timeout: str, choice: Choice) -> None:
    from dask.utils import parse_timedelta

    try:
        client.wait_for_workers(1, timeout=parse_timedelta(timeout))
    except TimeoutError:
        raise ClusterError(
            f"the scheduler at {choice.target} has no workers after {timeout}; start some "
            f"(`dask worker {choice.target}`) or raise cluster.timeout") from None


def explain(exc: BaseException, target: str = "unnamed") -> ClusterError | None:
    """A clear :class:`ClusterError` for a failure that is the cluster's, else ``None``.

    Today: distributed's ``NoWorkerError`` (every worker left, e.g. exited cleanly and was not
    restarted, and ``distributed.scheduler.no-workers-timeout`` passed), anywhere in the
    exception's chain. Used by :func:`connect` and by submitted jobs (``pipeline.jobs``).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if type(current).__name__ == "NoWorkerError" or (
                "waiting without any running workers" in str(current)):
            timeout = getattr(current, "timeout", None)
            after = f" within {timeout:g} s" if isinstance(timeout, (int, float)) else ""
            return ClusterError(
                f"no workers left: every worker of the cluster ({target}) exited and none "
                f"came back{after} (distributed.scheduler.no-workers-timeout), so the job "
                "stopped instead of waiting forever. Start workers (`dask worker ADDRESS`) or "
                "see why they exited (their logs, the scheduler's log), then run it again")
        current = current.__cause__ or current.__context__
    return None


def _lost(client: Any, exc: BaseException, choice: Choice) -> SchedulerLostError | None:
    """The error to raise when ``exc`` came after the client lost its scheduler, else None.

    Only our own exit closes the client, so a client not running inside the block lost its
    scheduler (it tried to reconnect for ``cluster.timeout``, then closed itself). What
    failed then is whatever asked for the client next, with a message that need not mention
    the scheduler (``No global client found``): the client's state is the evidence.
    """
    if client.status == "running":
        return None
    return SchedulerLostError(
        f"the client's connection to the scheduler ({choice}) closed while the work ran "
        f"(client {client.status}; then {type(exc).__name__}: {exc})")


def check_package_versions(client: Any, packages: tuple[str, ...] = VERSION_CHECKED) -> None:
    """Fail when a worker runs other versions of the packages whose objects we exchange."""
    versions = client.get_versions(packages=list(packages))
    ours = versions["client"]["packages"]
    problems = []
    for worker, info in versions["workers"].items():
        theirs = (info or {}).get("packages", {})
        for pkg in packages:
            if ours.get(pkg) != theirs.get(pkg):
                problems.append(f"{worker}: {pkg} {theirs.get(pkg) or 'missing'} "
                                f"(here: {ours.get(pkg) or 'missing'})")
    if problems:
        raise ClusterError(
            "the cluster's workers run other package versions than this client:\n  "
            + "\n  ".join(problems)
            + "\nInstall the same versions on the workers (e.g. the same image or lock file).")


def describe(client: Any) -> dict[str, Any]:
    """A JSON-able summary of the cluster (for the report and the bundle)."""
    info = client.scheduler_info(n_workers=-1)
    workers = info.get("workers", {})
    return {
        "scheduler": info.get("address"),
        "dashboard": client.dashboard_link,
        "workers": len(workers),
        "threads": sum(w.get("nthreads", 0) for w in workers.values()),
        "memory_bytes": sum(w.get("memory_limit", 0) or 0 for w in workers.values()),
    }


def refuse_memory_urls(client: Any, urls: Mapping[str, str]) -> None:
    """Refuse ``memory://`` URLs when the workers are other processes than this one.

    With process workers each one reads and writes its own private memory, so nothing a task
    writes reaches the client. ``urls`` maps the job key (``output``, ``data.train``) to its URL.

    Examples
    --------
    >>> refuse_memory_urls(client, {"output": "memory://out"})   # doctest: +SKIP
    """
    memory = {k: v for k, v in urls.items() if v.startswith("memory://")}
    if not memory:
        return
    pids = set(client.run(os.getpid).values())
    if pids != {os.getpid()}:
        key, url = next(iter(memory.items()))
        raise ValueError(
            f"{key} is {url}, but this cluster's workers are separate processes: each would "
            "read and write its own private memory, and nothing would reach you. Use a file:// "
            "or s3:// URL, or a threaded cluster (cluster.processes: false)")


def warm(client: Any, function: Any, *args: Any) -> list[Any]:
    """Run ``function(*args)`` once on every worker now, in the background; return the futures.

    A fresh worker process pays its imports (and numba's load of its compiled kernels) in
    the first task that needs them: for a scoring job, 1.5-2 s per worker. Started first,
    that work overlaps the driver's own planning. Gather the futures before sending the
    workers anything whose unpickling imports the same modules: a message unpickled while
    the warm-up is half-way through importing pandas fails ("partially initialized module").
    Release or cancel them when done.

    Examples
    --------
    >>> warming = warm(client, importlib.import_module, "xgboost")   # doctest: +SKIP
    """
    workers = list(client.scheduler_info(n_workers=-1).get("workers", {}))
    return [client.submit(function, *args, workers=[worker], allow_other_workers=True,
                          pure=False, key=f"mlpipe-warm-{i}-{os.urandom(4).hex()}")
            for i, worker in enumerate(workers)]


__all__ = ["connect", "resolve", "describe", "refuse_memory_urls", "warm", "check_package_versions",
           "validate_spec", "build_spec", "explain", "Choice", "ClusterError", "InsecureClusterWarning", "EXTRAS"]
