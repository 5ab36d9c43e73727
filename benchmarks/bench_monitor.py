"""What drift monitoring costs ``mlpipe score``: the same scoring job with and without it.

Every ``mlpipe score`` sketches each partition in the task that scores it (bin counts of every
input column and of the predictions, against the bundle's ``profile.json``) and writes
``_drift.json``. Here the same demo model is scored twice over the same 4M rows x 31 columns of
demo Parquet (at scale 1.0) on a LocalCluster of 2 single-threaded workers: once from its
bundle, and once from a copy of the bundle without ``profile.json`` (scoring then computes no
drift; everything else is the same). Best of three runs each, alternated, after an untimed
warm-up that scores a part on every worker with both bundles (numba compiles the binning
kernels once per worker process). Goal: drift costs at most 10 % of the scoring time
(ratio <= 1.10).

The model is the demo job (``examples/demo.yaml``) trained on 500,000 rows. The data is made
with :func:`pipeline.demo.write_demo_data`; ``MLPIPE_BENCH_DATA=<dir>`` keeps it between runs
(the same directory ``bench_score`` uses).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_score import ROWS_PER_PART, demo_data, subset

ROWS = 4_000_000
ROWS_TRAIN = 500_000
#: timed runs of each, alternating which goes first (the machine's load drifts)
ATTEMPTS = 3
IDS = ["application_id"]
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "demo.yaml"


def run(scale: float = 1.0) -> list[dict]:
    import cluster

    rows = max(ROWS_PER_PART, int(round(ROWS * scale / ROWS_PER_PART)) * ROWS_PER_PART)
    train_rows = min(ROWS_TRAIN, rows)
    keep = os.environ.get("MLPIPE_BENCH_DATA")
    work = Path(tempfile.mkdtemp(prefix="mlpipe-bench-monitor-"))
    root = Path(keep) if keep else work
    try:
        with cluster.connect({"n_workers": 2, "threads_per_worker": 1}) as client:
            full = demo_data(root, rows, client)
            data = subset(full, rows, work / "input")
            model = train(subset(full, train_rows, work / "train"), work / "mlpipe", client)
            plain = without_profile(model)
            return [measure(client, model, plain, data, rows, work)]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def train(data: Path, output: Path, client: Any) -> str:
    from pipeline.config import load_job
    from pipeline.workflow import run as run_job

    job = load_job(EXAMPLE, [f"data.train={data}", f"output={output}"])
    start = time.perf_counter()
    result = run_job(job, client=client)
    print(f"   trained the demo model in {time.perf_counter() - start:.0f} s", flush=True)
    return result.run_url


def without_profile(run_url: str) -> str:
    """A copy of the run as another version, without ``profile.json``: scoring it computes
    no drift."""
    from pipeline import artifacts

    bundle = artifacts.open_bundle(run_url)
    files = {name: bundle.read(name) for name in bundle.manifest["files"]
             if name != "profile.json"}
    meta = {k: v for k, v in bundle.manifest.items()
            if k not in ("format", "run_id", "created_at", "files", "versions", "_sha256")}
    run_id = bundle.run_id + "-noprofile"
    artifacts.write_run(bundle.root, run_id, files, meta=meta)
    return artifacts.join(bundle.root, "runs", run_id)


def measure(client: Any, model: str, plain: str, data: Path, rows: int, work: Path) -> dict:
    from pipeline.scoring import read_drift, score_to

    warm = work / "warm"
    warm.mkdir()
    for part in sorted(data.glob("part-*.parquet"))[:2]:  # a part for each worker
        os.link(part, warm / part.name)
    for url in (model, plain):  # imports, numba compilation, the page cache, both models
        score_to(url, str(warm), str(work / f"warm-{len(url)}"), id_columns=IDS,
                 client=client)
    seconds: dict[str, list[float]] = {"with": [], "without": []}
    order = [("with", model), ("without", plain)]
    for attempt in range(ATTEMPTS):
        for label, url in order if attempt % 2 == 0 else order[::-1]:
            out = work / f"{label}-{attempt}"
            start = time.perf_counter()
            result = score_to(url, str(data), str(out), id_columns=IDS, client=client,
                              progress_every=60)
            seconds[label].append(time.perf_counter() - start)
            assert result.rows_out == rows, result.rows_out
            drift = read_drift(str(out))
            assert (drift["drift"] is None) == (label == "without"), drift.get("note")
            shutil.rmtree(out)
        print(f"   attempt {attempt + 1}: with drift {seconds['with'][-1]:.1f} s, without "
              f"{seconds['without'][-1]:.1f} s", flush=True)
    ours, base = min(seconds["with"]), min(seconds["without"])
    ratio = ours / base
    return {"benchmark": "monitor", "operation": "mlpipe score with drift sketches and "
            "_drift.json vs without", "size": f"{rows:,} rows x 31 cols",
            "ours": ours, "baseline": base,
            "baseline_name": "the same scoring job, bundle without profile.json (no drift)",
            "unit": "s", "ratio": ratio, "goal": "<= 1.10 (drift <= 10 %)",
            "met": ratio <= 1.10}
