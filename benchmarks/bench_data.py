"""Loading and preprocessing against single-process pyarrow and pandas (issue #18).

Loading: :func:`pipeline.load.plan_training` + :func:`pipeline.load.load_training` (find the
files, check headers, read every column into the cluster's memory, validate and summarize the
target, missing values and levels) of the Higgs-shaped set (:mod:`benchmarks.higgs`, 4M x 28
float32 at scale 1.0), against ``pyarrow.parquet.read_table`` of the same files in this process.
Reported as speed (baseline time / ours). Goal: >= 0.8x.

Preprocessing fit, numeric data that asks for none (the same 4M rows, the default
``preprocess:`` block): :func:`pipeline.steps.fit_prefix` on the persisted split, against one
pass over the same persisted rows (a row count: the least any fit can cost). Goal: within 2 s.

Preprocessing fit, the demo's steps (1M demo rows at scale 1.0: clip, log1p, ratios, count,
bin, target and frequency encodings): :func:`pipeline.steps.fit_prefix` on the persisted split,
against the same scikit-learn Pipeline fitted with pandas in this process on the same training
rows (already in memory). The number of graphs the fit gave the scheduler (computes and
persists) is reported with it. Goal: at most the pandas time.

All on a LocalCluster of 2 single-threaded workers started once; three interleaved rounds,
median, after an untimed warm-up (imports, numba compilation, page cache). The machine's load
average is reported next to the figures. ``MLPIPE_BENCH_DATA=<dir>`` keeps the generated files.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.higgs import LABEL, ROWS_PER_FILE, write_higgs

ROWS_HIGGS = 4_000_000
ROWS_DEMO = 1_000_000
ROUNDS = 3
DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.yaml"


def _rows(n: float) -> int:
    """Whole Parquet files, at least one."""
    return max(ROWS_PER_FILE, int(round(n / ROWS_PER_FILE)) * ROWS_PER_FILE)


def run(scale: float = 1.0) -> list[dict]:
    import cluster
    from benchmarks.bench_score import demo_data, subset

    higgs, demo = _rows(ROWS_HIGGS * scale), _rows(ROWS_DEMO * scale)
    keep = os.environ.get("MLPIPE_BENCH_DATA")
    work = Path(tempfile.mkdtemp(prefix="mlpipe-bench-data-"))
    root = Path(keep) if keep else work
    try:
        write_higgs(root / "higgs", higgs)
        higgs_dir = work / "higgs-input"
        higgs_dir.mkdir()
        for path in sorted((root / "higgs").glob("part-*.parquet"))[: higgs // ROWS_PER_FILE]:
            os.link(path, higgs_dir / path.name)
        with cluster.connect({"n_workers": 2, "threads_per_worker": 1}) as client:
            demo_dir = subset(demo_data(root, demo, client), demo, work / "demo-input")
            higgs_job = _job({"name": "higgs", "output": str(work / "out"),
                              "data": {"train": str(higgs_dir), "target": LABEL,
                                       "task": "binary"}})
            return [_loading(higgs_job, higgs_dir, higgs),
                    _no_preprocessing(client, higgs_job, higgs),
                    _demo_preprocessing(client, demo_dir, demo, work)]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _job(raw: dict) -> Any:
    from pipeline.config import load_job

    return load_job(raw)


def _loaded(job: Any) -> Any:
    from pipeline import load

    return load.load_training(job, load.plan_training(job))


def _loading(job: Any, data: Path, rows: int) -> dict:
    import pyarrow.parquet as pq

    files = [str(p) for p in sorted(data.glob("part-*.parquet"))]

    def ours() -> float:
        start = time.perf_counter()
        training = _loaded(job)
        elapsed = time.perf_counter() - start
        assert training.summary.rows == rows, training.summary.rows
        return elapsed

    def baseline() -> float:
        start = time.perf_counter()
        table = pq.read_table(files)
        elapsed = time.perf_counter() - start
        assert table.num_rows == rows
        return elapsed

    times = _interleaved(ours, baseline)
    return _row("load: find, read, persist, validate and summarize (Parquet)",
                f"{rows:,} x 28", times, "pyarrow.parquet.read_table, 1 process",
                ">= 0.8x", speed=True, limit=0.8)


def _split(job: Any) -> tuple[Any, Any]:
    from pipeline.split import split_job

    training = _loaded(job)
    parts = split_job(training.frame, job, training.summary.time_cutoff)
    training.release_rows()
    return training, parts


def _no_preprocessing(client: Any, job: Any, rows: int) -> dict:
    import dask

    from pipeline.steps import fit_prefix

    training, parts = _split(job)
    classes = training.summary.classes

    def ours() -> float:
        start = time.perf_counter()
        fit_prefix(job, parts, training.feature_columns, classes, client)
        return time.perf_counter() - start

    def baseline() -> float:
        start = time.perf_counter()
        dask.compute(parts.train.shape[0])
        return time.perf_counter() - start

    times = _interleaved(ours, baseline)
    row = _row("preprocessing fit, numeric data, no steps asked (default preprocess:)",
               f"{rows:,} x 28", times, "one pass over the persisted split (a row count)",
               "<= 2 s", limit=None)
    row["met"] = times["ours"] <= 2.0
    return row


def _demo_preprocessing(client: Any, data: Path, rows: int, work: Path) -> dict:
    import yaml
    from sklearn.base import clone
    from sklearn.pipeline import Pipeline

    from pipeline.steps import fit_prefix, prefix_steps, target

    raw = yaml.safe_load(DEMO.read_text())
    raw["data"]["train"] = str(data)
    raw["output"] = str(work / "out-demo")
    job = _job(raw)
    training, parts = _split(job)
    classes = training.summary.classes
    train = parts.train.compute()
    y = target(train, job, classes)
    steps = Pipeline(prefix_steps(job, training.feature_columns, len(classes)))
    computes: list[int] = []

    def ours() -> float:
        before = graphs(client)
        start = time.perf_counter()
        fit_prefix(job, parts, training.feature_columns, classes, client)
        elapsed = time.perf_counter() - start
        computes.append(graphs(client) - before)
        return elapsed

    def baseline() -> float:
        start = time.perf_counter()
        clone(steps).fit_transform(train, y)
        return time.perf_counter() - start

    times = _interleaved(ours, baseline)
    row = _row("preprocessing fit, the demo's steps (clip, features, encodings)",
               f"{len(train):,} training rows of {rows:,}", times,
               "the same Pipeline fitted with pandas, 1 process", "<= 1.0x", limit=1.0)
    row["computes"] = computes[-1]
    row["operation"] += f"; {computes[-1]} graphs"
    return row


def graphs(client: Any) -> int:
    """Graphs the scheduler has been given so far (each compute or persist is one)."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class Graphs(SchedulerPlugin):
        name = "bench-graphs"

        def __init__(self) -> None:
            self.count = 0

        def update_graph(self, scheduler: Any, **kwargs: Any) -> None:
            self.count += 1

    def count(dask_scheduler: Any) -> int:
        plugin = dask_scheduler.plugins.get(Graphs.name)
        return -1 if plugin is None else plugin.count

    if client.run_on_scheduler(count) < 0:
        client.register_plugin(Graphs())
    return client.run_on_scheduler(count)


def _interleaved(ours: Any, baseline: Any) -> dict[str, Any]:
    ours(), baseline()  # warm-up: imports, numba, page cache
    a, b = [], []
    for _ in range(ROUNDS):
        a.append(ours())
        b.append(baseline())
    return {"ours": statistics.median(a), "baseline": statistics.median(b),
            "all_ours": a, "all_baseline": b}


def _row(operation: str, size: str, times: dict, name: str, goal: str, *,
         limit: float | None, speed: bool = False) -> dict:
    ratio = times["baseline"] / times["ours"] if speed else times["ours"] / times["baseline"]
    load = os.getloadavg()[0]
    met = None if limit is None else (ratio >= limit if speed else ratio <= limit)
    return {"benchmark": "data", "operation": operation, "size": size,
            "ours": times["ours"], "baseline": times["baseline"],
            "baseline_name": f"{name} (load {load:.1f})", "unit": "s", "ratio": ratio,
            "goal": goal, "met": met,
            "runs": {"ours": times["all_ours"], "baseline": times["all_baseline"]}}
