"""What the workers of the clusters mlpipe starts print on the terminal.

The workers of a :class:`~distributed.LocalCluster` share the terminal of the process that
started them, so their log records and native-library prints would interleave with the
command's own output. Two sources matter:

- distributed's own records (``distributed.sizeof`` warnings, the "Compute Failed ...
  Traceback" block of a task that failed, which mlpipe reports as one paragraph anyway): the
  cluster's ``silence_logs`` level, :func:`worker_level`;
- tornado's records in the workers (a heartbeat racing the close: "ConnectionPool is
  closed" with its traceback), at the same level;
- XGBoost's native log lines ("[12:00:00] Task [xgboost.dask-0]:tcp://... got rank 0"):
  libxgboost writes them with ``LOG(CONSOLE)`` when a worker joins the training's
  communicator (``RabitComm::Bootstrap``). XGBoost's log callback registry is thread-local:
  the Python callback that ``import xgboost`` registers only covers the importing thread, so in
  distributed's executor threads the lines fall through to the native default,
  ``std::cerr``, straight onto the terminal. :class:`RouteXGBoostLog` registers a callback in
  the thread that opens the communicator, sending them to the ``xgboost`` logger instead.

``mlpipe`` without ``-v`` sets :func:`set_worker_level` to CRITICAL; with ``-v``, INFO. The
Python API keeps distributed's default (WARNING).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

_LEVEL = {"level": logging.WARNING}

#: XGBoost's native log messages, in the worker processes.
XGBOOST_LOGGER = "xgboost"


def set_worker_level(level: int) -> None:
    """The level at which workers of clusters we start from now on log (see module doc)."""
    _LEVEL["level"] = int(level)


def worker_level() -> int:
    """The level set by :func:`set_worker_level` (WARNING, distributed's default, if unset)."""
    return _LEVEL["level"]


def route_xgboost_log_in_this_thread() -> None:
    """Send libxgboost's native log lines from the calling thread to the ``xgboost`` logger
    (WARNING for its warnings, INFO for the rest) instead of ``std::cerr``."""
    from xgboost import core

    core._LIB.XGBRegisterLogCallback(_native_callback())


def _native_callback() -> Any:
    # one ctypes function object per process, kept alive here: libxgboost holds its pointer
    callback = _CALLBACK.get("fn")
    if callback is None:
        import ctypes

        def log(msg: bytes) -> None:
            text = msg.decode("utf-8", "replace").rstrip()
            logger = logging.getLogger(XGBOOST_LOGGER)
            logger.log(logging.WARNING if "WARNING:" in text else logging.INFO, "%s", text)

        callback = _CALLBACK["fn"] = ctypes.CFUNCTYPE(None, ctypes.c_char_p)(log)
    return callback


_CALLBACK: dict[str, Any] = {}


def _wrap_communicator(collective: Any) -> None:
    """Make ``xgboost.collective.init`` (called by ``CommunicatorContext`` in the worker
    thread that trains) register our callback in that thread first. Once per process."""
    init = collective.init
    if getattr(init, "_mlpipe_routed", False):
        return

    def routed_init(*args: Any, **kwargs: Any) -> Any:
        route_xgboost_log_in_this_thread()
        return init(*args, **kwargs)

    routed_init._mlpipe_routed = True  # type: ignore[attr-defined]
    collective.init = routed_init


def worker_plugin(level: int) -> Any:
    """A :class:`distributed.WorkerPlugin` for the workers of a cluster we start: XGBoost's
    native log lines go to the ``xgboost`` logger, shown at ``level`` and above.

    XGBoost is not imported for it (a few seconds per worker): the communicator is wrapped
    as soon as a task has imported ``xgboost.collective``, checked on each task's transition
    into memory or execution (one dictionary lookup).
    """
    from distributed import WorkerPlugin

    class RouteXGBoostLog(WorkerPlugin):
        name = "mlpipe-xgboost-log"

        def __init__(self, level: int) -> None:
            self.level = level
            self.done = False

        def setup(self, worker: Any) -> None:
            logger = logging.getLogger(XGBOOST_LOGGER)
            logger.setLevel(self.level)
            if not logger.handlers:  # the worker's stderr, in distributed's format
                handler = logging.StreamHandler(sys.stderr)
                handler.setFormatter(logging.Formatter(
                    "%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
                logger.addHandler(handler)
            logger.propagate = False
            # a worker's heartbeat racing the cluster's close logs through tornado, which
            # distributed configures apart from its own loggers (silence_logs misses it)
            for name in ("tornado", "tornado.application"):
                logging.getLogger(name).setLevel(max(self.level, logging.ERROR))
            self._wrap()

        def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
            if not self.done:
                self._wrap()

        def _wrap(self) -> None:
            collective = sys.modules.get("xgboost.collective")
            if collective is not None:
                _wrap_communicator(collective)
                self.done = True

    return RouteXGBoostLog(level)


def quiet_workers(client: Any) -> None:
    """Apply :func:`worker_plugin` at :func:`worker_level` to the workers of ``client``'s
    cluster (one we started), now and when a worker restarts."""
    client.register_plugin(worker_plugin(worker_level()))
