"""A progress bar for the stage that is running, from the cluster's own task counts.

``mlpipe run`` prints one line per stage as it ends (the workflow's
:class:`pipeline.workflow.Stopwatch`); between two lines, on a terminal, a bar shows the tasks
the cluster has finished out of those submitted since the last stage ended, labelled with the
stage that runs now. The stages need no code of their own for it: the counts come from a small
scheduler plugin (every task that reaches the scheduler, every task that finishes), read a few
times a second, and the label from the stage names the Stopwatch reports through
``on_stage``. When the output is not a terminal (a log file, CI, a pipe) nothing but the stage
lines is printed.

Why rich and not tqdm: rich's live display redirects ``sys.stdout`` / ``sys.stderr`` while the
bar is up, so the stage lines (logging to ``sys.stderr``) and ``click.echo`` appear above the
bar, unchanged, with no handler of ours; tqdm needs every writer to go through
``tqdm.write``. Without rich installed the bar is left out, never the work.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any

#: the scheduler plugin's name (one per scheduler; several clients share it harmlessly).
PLUGIN = "mlpipe-progress"


def stage_names(families: Sequence[str]) -> list[str]:
    """The stage names :func:`pipeline.workflow.run` reports, in order, for a job searching
    ``families`` (used only to label the bar of the stage that runs next)."""
    return ["plan", "load", "preprocess", *(f"search:{f}" for f in families),
            *(f"train:{f}" for f in families), "evaluate", "gate", "bundle"]


def label(stage: str) -> str:
    """A stage name as the bar shows it: ``train:xgboost`` -> ``xgboost: refit and
    evaluate``."""
    kind, _, family = stage.partition(":")
    if family:
        return f"{family}: " + {"search": "search", "train": "refit and evaluate"}.get(kind,
                                                                                       kind)
    return {"evaluate": "choose the winner", "gate": "champion / challenger gate",
            "bundle": "write the bundle", "preprocess": "split and preprocess"}.get(stage, stage)


def task_counts(dask_scheduler: Any) -> tuple[int, int]:
    """(tasks submitted, tasks finished) since the plugin was added; run on the scheduler."""
    plugin = dask_scheduler.plugins.get(PLUGIN)
    return (plugin.added, plugin.done) if plugin is not None else (0, 0)


def task_counter() -> Any:
    """The scheduler plugin counting tasks (:func:`task_counts` reads it)."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class TaskCounter(SchedulerPlugin):
        """Counts, cumulatively, tasks entering the graph and tasks finishing (in memory or
        erred); a recomputed task counts again on both sides."""

        name = PLUGIN

        def __init__(self) -> None:
            self.added = 0
            self.done = 0

        def transition(self, key: Any, start: str, finish: str, *args: Any,
                       **kwargs: Any) -> None:
            if start == "released" and finish in ("waiting", "queued", "no-worker"):
                self.added += 1
            elif start == "processing" and finish in ("memory", "erred"):
                self.done += 1

    return TaskCounter()


class Progress:
    """``with Progress(stages) as progress: run(job, on_stage=progress.stage_done)``.

    Parameters
    ----------
    stages
        The stage names expected in order (:func:`stage_names`); a stage that ends out of
        that order relabels the bar with whatever follows it, or "working".
    enabled
        Show a bar; by default when standard output is a terminal and rich is installed.
    interval
        Seconds between two reads of the scheduler's counts.

    Examples
    --------
    >>> with Progress(stage_names(["xgboost"])) as progress:      # doctest: +SKIP
    ...     result = run(job, on_stage=progress.stage_done)
    """

    def __init__(self, stages: Sequence[str] = (), *, enabled: bool | None = None,
                 interval: float = 0.25) -> None:
        self.stages = list(stages)
        self.enabled = sys.stdout.isatty() if enabled is None else enabled
        self.interval = interval
        self._next = self.stages[0] if self.stages else "working"
        self._base: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._bar: Any = None
        self._task: Any = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Progress:
        if not self.enabled:
            return self
        try:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import Progress as Bar
        except ImportError:  # no bar, same output otherwise
            self.enabled = False
            return self
        self._bar = Bar(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TextColumn("tasks"), TimeElapsedColumn(),
                        transient=True, redirect_stdout=True, redirect_stderr=True)
        self._bar.start()
        self._task = self._bar.add_task(label(self._next), total=None)
        self._thread = threading.Thread(target=self._poll, name="mlpipe-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._bar is not None:
            self._bar.stop()

    @property
    def next_stage(self) -> str:
        """The stage the bar is labelled with: the one expected to run now."""
        return self._next

    def stage_done(self, stage: str) -> None:
        """The Stopwatch's ``on_stage``: ``stage`` ended; the bar restarts for the next."""
        if stage in self.stages:
            at = self.stages.index(stage) + 1
            self._next = self.stages[at] if at < len(self.stages) else "working"
        else:
            self._next = "working"
        with self._lock:
            self._base = None  # counted afresh from the next read
            if self._bar is not None:
                self._bar.reset(self._task, total=None, description=label(self._next))

    # ------------------------------------------------------------------------ the poller

    def _poll(self) -> None:
        client = None
        while not self._stop.wait(self.interval):
            try:
                if client is None:
                    client = self._client()
                    if client is None:
                        continue
                added, done = client.run_on_scheduler(task_counts)
            except Exception:  # the cluster went away or refused the plugin: no bar
                return
            with self._lock:
                if self._base is None:
                    self._base = (added, done)
                total, completed = added - self._base[0], done - self._base[1]
                if total > 0:
                    self._bar.update(self._task, total=total, completed=min(completed, total))

    @staticmethod
    def _client() -> Any:
        """The client the run made (its default client), with our counter on its scheduler;
        None until there is one."""
        from distributed.client import default_client

        try:
            client = default_client()
        except ValueError:
            return None
        client.register_plugin(task_counter(), name=PLUGIN)
        return client
