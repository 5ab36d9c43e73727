"""What every CLI command module shares (click only: importing this must stay fast)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click


def cluster_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The cluster options every cluster-using command takes (they override the job's).

    Adds ``scheduler``, ``n_workers`` and ``threads_per_worker`` keyword arguments.
    """

    @click.option("--scheduler", "scheduler", metavar="ADDRESS", default=None,
                  help="Use the existing Dask cluster at this address (tcp://host:8786).")
    @click.option("--n-workers", type=int, default=None,
                  help="Workers of the local cluster (default: sized to this machine).")
    @click.option("--threads-per-worker", type=int, default=None,
                  help="Threads per local worker.")
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper


def cluster_overrides(n_workers: int | None, threads: int | None) -> list[str]:
    """The options as ``--set`` overrides of a job's ``cluster:`` block."""
    out = []
    if n_workers:
        out.append(f"cluster.n_workers={n_workers}")
    if threads:
        out.append(f"cluster.threads_per_worker={threads}")
    return out


def cluster_spec(n_workers: int | None, threads: int | None) -> dict[str, Any]:
    """The options as a ``cluster:`` block, for commands that take no job file."""
    return {"n_workers": n_workers, "threads_per_worker": threads}
