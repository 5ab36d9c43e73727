"""``mlpipe score`` against the plain single-process loop, and its memory at two input sizes.

Throughput (4M rows x 31 columns of demo Parquet at scale 1.0): end-to-end rows/s of
:func:`pipeline.scoring.score_to` (plan, read, schema + preprocessor + kernels + model, write
every part, manifest, ``_SUCCESS``) on a LocalCluster of 2 single-threaded workers, against a
loop in one process over the same Parquet row groups: pyarrow read, the same stored
preprocessor, the booster's ``inplace_predict`` (2 threads), one Parquet file per row group.
Both load the model inside the timing; best of two each, after an untimed warm-up (imports,
numba compilation, page cache). Goal: >= 0.9x the loop.

Numeric model (the issue #18 row): the Higgs-shaped set (:mod:`benchmarks.higgs`, 4M x 28
float32 at scale 1.0, 250,000-row files) scored with an XGBoost model of 100 rounds trained by
mlpipe on its first 1M rows, against the bare loop a user would write: pyarrow read ->
``inplace_predict`` (2 threads) -> Parquet write of label and probability, no mlpipe code.
Two ways, best of two each, interleaved: *cold* is ``mlpipe score`` (a fresh CLI process that
starts its LocalCluster, whose workers load and verify the bundle) against the loop as a fresh
``python`` process, each timed around its subprocess; *warm* is :func:`pipeline.scoring.score_to` on
the bench's running cluster against the loop in this process with the booster loaded.
Goal: >= 1.0x. mlpipe's side also checks the schema and sketches drift; the loop does neither.

Memory: the peak RSS of the largest worker (sampled every 20 ms inside each worker process) while
scoring 10M and 100M rows (at scale 1.0), each on freshly restarted workers. Goal: the peak at
100M within 1.2x of the peak at 10M (nothing grows with the input).

The data is generated once, for the largest size, with :func:`pipeline.demo.write_demo_data`;
the smaller inputs are hard links to its first parts (the demo generator makes part ``i`` the same
whatever the total). ``MLPIPE_BENCH_DATA=<dir>`` keeps it between runs (generating 100M rows
takes about 15 minutes on 2 cores); otherwise it lives in a temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROWS_THROUGHPUT = 4_000_000
ROWS_MEMORY = (10_000_000, 100_000_000)
ROWS_TRAIN = 500_000
ROWS_PER_PART = 250_000  # write_demo_data's default: one row group per part
IDS = ["application_id"]
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "demo.yaml"


def _rows(n: float) -> int:
    """Whole demo parts, at least one."""
    return max(ROWS_PER_PART, int(round(n / ROWS_PER_PART)) * ROWS_PER_PART)


def run(scale: float = 1.0) -> list[dict]:
    import cluster

    sizes = {"throughput": _rows(ROWS_THROUGHPUT * scale),
             "small": _rows(ROWS_MEMORY[0] * scale), "large": _rows(ROWS_MEMORY[1] * scale),
             "train": _rows(min(ROWS_TRAIN, ROWS_THROUGHPUT * scale))}
    keep = os.environ.get("MLPIPE_BENCH_DATA")
    work = Path(tempfile.mkdtemp(prefix="mlpipe-bench-score-"))
    data_root = Path(keep) if keep else work
    try:
        with cluster.connect({"n_workers": 2, "threads_per_worker": 1}) as client:
            full = demo_data(data_root, max(sizes.values()), client)
            inputs = {k: subset(full, n, work / f"input-{k}") for k, n in sizes.items()}
            model_url = _train(inputs["train"], work / "mlpipe", client)
            rows = [_throughput(client, model_url, inputs["throughput"], sizes["throughput"],
                                work)]
            rows += _numeric(client, data_root, sizes["throughput"], work)
            rows += _memory(client, model_url, inputs["small"], inputs["large"],
                            sizes["small"], sizes["large"], work)
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- data and model


def demo_data(root: Path, rows: int, client: Any) -> Path:
    """The demo data, ``rows`` rows at least: a kept dataset under ``root``, or written now."""
    from pipeline.demo import write_demo_data

    for done in sorted(root.glob("demo-*/_DONE")):  # any kept dataset at least this large
        info = json.loads(done.read_text())
        if info.get("rows", 0) >= rows and info.get("rows_per_part") == ROWS_PER_PART:
            return done.parent
    out = root / f"demo-{rows}"
    start = time.perf_counter()
    info = write_demo_data(str(out), rows, rows_per_part=ROWS_PER_PART)
    (out / "_DONE").write_text(json.dumps({**info, "rows_per_part": ROWS_PER_PART}))
    print(f"   generated {rows:,} demo rows in {time.perf_counter() - start:.0f} s", flush=True)
    return out


def subset(full: Path, rows: int, where: Path) -> Path:
    """The first ``rows`` rows of the demo data, as hard links to its first parts."""
    return subset_files(sorted(full.glob("part-*.parquet"))[: rows // ROWS_PER_PART], where)


def _train(data: Path, output: Path, client: Any) -> str:
    from pipeline.config import load_job
    from pipeline.workflow import run as run_job

    job = load_job(EXAMPLE, [f"data.train={data}", f"output={output}"])
    start = time.perf_counter()
    result = run_job(job, client=client)
    print(f"   trained the demo model ({result.metrics['model']['trees']} trees) in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    return result.model_url


# --------------------------------------------------------------------------- throughput


def _throughput(client: Any, model_url: str, data: Path, rows: int, work: Path) -> dict:
    from pipeline.scoring import score_to

    files = sorted(data.glob("part-*.parquet"))
    warm = work / "warm"
    warm.mkdir()
    os.link(files[0], warm / files[0].name)
    score_to(model_url, str(warm), str(work / "warm-out"), id_columns=IDS, client=client)
    _baseline(model_url, files[:1], work / "warm-baseline")

    ours, base = [], []
    for attempt in range(2):
        out = work / f"ours-{attempt}"
        start = time.perf_counter()
        result = score_to(model_url, str(data), str(out), id_columns=IDS, client=client)
        ours.append(time.perf_counter() - start)
        _verify(result.manifest, rows)
        start = time.perf_counter()
        _baseline(model_url, files, work / f"baseline-{attempt}")
        base.append(time.perf_counter() - start)
        _same_predictions(out, work / f"baseline-{attempt}")
        shutil.rmtree(out)
        shutil.rmtree(work / f"baseline-{attempt}")
    ours_rate, base_rate = rows / min(ours), rows / min(base)
    ratio = ours_rate / base_rate
    return {"benchmark": "score", "operation": "mlpipe score end to end (read, preprocess, "
            "predict, write)", "size": f"{rows:,} rows x 31 cols",
            "ours": ours_rate, "baseline": base_rate,
            "baseline_name": "1 process, 2 threads: pyarrow row groups + preprocessor + "
                             "inplace_predict + Parquet write",
            "unit": "rows/s", "ratio": ratio, "goal": ">= 0.9x", "met": ratio >= 0.9}


def _baseline(model_url: str, files: list[Path], out: Path) -> None:
    """The loop a user would write without mlpipe: same data, same model, same cores."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline import load_model

    model = load_model(model_url)
    booster = model.model
    booster.set_param({"nthread": 2})
    columns = list(dict.fromkeys([*IDS, *model.feature_columns]))
    out.mkdir()
    for i, name in enumerate(files):
        pf = pq.ParquetFile(name)
        for group in range(pf.num_row_groups):
            df = pf.read_row_group(group, columns=columns).to_pandas()
            proba = booster.inplace_predict(model.transform(df), validate_features=False)
            frame = pd.DataFrame({"application_id": df["application_id"].to_numpy(),
                                  "label": (proba >= model.threshold).astype(np.int64),
                                  "proba": proba.astype(np.float64)})
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False),
                           out / f"part-{i:05d}-{group:03d}.parquet")


def _same_predictions(ours: Path, baseline: Path, ids: tuple[str, ...] = tuple(IDS)) -> None:
    """Both sides did the same work: the first part's predictions agree."""
    import numpy as np
    import pandas as pd

    a = pd.read_parquet(sorted(ours.glob("part-*.parquet"))[0])
    b = pd.read_parquet(sorted(baseline.glob("part-*.parquet"))[0])
    assert len(a) == len(b) and all((a[c].to_numpy() == b[c].to_numpy()).all() for c in ids)
    np.testing.assert_allclose(a["proba"].to_numpy(), b["proba"].to_numpy(), atol=1e-6)


def _verify(manifest: dict, rows: int) -> None:
    if not manifest["rows_in"] == manifest["rows_out"] == rows:
        raise AssertionError(f"scored {manifest['rows_in']:,} rows in, "
                             f"{manifest['rows_out']:,} out; expected {rows:,}")


# --------------------------------------------------------------------------- numeric model


def _numeric(client: Any, data_root: Path, rows: int, work: Path) -> list[dict]:
    import subprocess
    import sys

    from benchmarks.higgs import write_higgs
    from pipeline.config import load_job
    from pipeline.scoring import score_to
    from pipeline.workflow import run as run_job

    files = write_higgs(data_root / "higgs", rows)
    train = subset_files(files[: max(1, len(files) // 4)], work / "higgs-train")
    data = subset_files(files, work / "higgs-input")
    result = run_job(load_job({"name": "higgs", "output": str(work / "higgs-model"),
                               "data": {"train": str(train), "target": "label",
                                        "task": "binary"},
                               "models": {"xgboost": {"n_estimators": 100}}}), client=client)
    model_url, run = result.model_url, result.run_url
    repo = Path(__file__).resolve().parents[1]

    def shell(*args: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=repo, check=True, capture_output=True)
        return time.perf_counter() - start

    def fresh(name: str) -> str:
        shutil.rmtree(work / name, ignore_errors=True)
        return str(work / name)

    loop = "from benchmarks.bench_score import bare_loop; import sys; bare_loop(*sys.argv[1:])"
    score_to(model_url, str(data), fresh("higgs-warm"), client=client)  # warm-up
    bare_loop(run, str(data), fresh("higgs-loop"))
    times: dict[str, list[float]] = {"cold": [], "cold_loop": [], "warm": [], "warm_loop": []}
    for _ in range(2):
        times["cold"].append(shell("-m", "pipeline.cli", "score", model_url, str(data),
                                   fresh("higgs-cold")))
        times["cold_loop"].append(shell("-c", loop, run, str(data), fresh("higgs-loop")))
        start = time.perf_counter()
        score_to(model_url, str(data), fresh("higgs-ours"), client=client)
        times["warm"].append(time.perf_counter() - start)
        start = time.perf_counter()
        bare_loop(run, str(data), fresh("higgs-loop"))
        times["warm_loop"].append(time.perf_counter() - start)
    _same_predictions(work / "higgs-ours", work / "higgs-loop", ids=())
    out = []
    for way, what in (("cold", "mlpipe score CLI (cluster start, bundle load) vs a fresh "
                               "python process"),
                      ("warm", "score_to on a running cluster vs the loop in this process")):
        ours, base = rows / min(times[way]), rows / min(times[f"{way}_loop"])
        out.append({"benchmark": "score", "operation": f"numeric model, {what}",
                    "size": f"{rows:,} rows x 28 float32", "ours": ours, "baseline": base,
                    "baseline_name": "pyarrow read -> inplace_predict (2 threads) -> write",
                    "unit": "rows/s", "ratio": ours / base, "goal": ">= 1.0x",
                    "met": ours >= base})
    return out


def subset_files(files: list[Path], where: Path) -> Path:
    """``files`` hard-linked (or symlinked) into a new directory ``where``."""
    where.mkdir(parents=True)
    for part in files:
        try:
            os.link(part, where / part.name)
        except OSError:  # another filesystem: a symlink reads the same
            os.symlink(part, where / part.name)
    return where


def bare_loop(run: str, data: str, out: str) -> None:
    """The loop without mlpipe: read each file, predict with the booster, write label and
    probability (the issue #18 baseline; the model file comes from the bundle's run)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(str(Path(run) / "model.ubj"))
    booster.set_param({"nthread": 2})
    Path(out).mkdir()
    for i, name in enumerate(sorted(Path(data).glob("*.parquet"))):
        frame = pq.read_table(name, columns=booster.feature_names).to_pandas()
        proba = booster.inplace_predict(frame, validate_features=False)
        result = pd.DataFrame({"label": (proba >= 0.5).astype(np.int64), "proba": proba})
        pq.write_table(pa.Table.from_pandas(result, preserve_index=False),
                       Path(out) / f"part-{i:05d}.parquet")


# --------------------------------------------------------------------------- memory


def _memory(client: Any, model_url: str, small: Path, large: Path, n_small: int,
            n_large: int, work: Path) -> list[dict]:
    from pipeline.scoring import score_to

    measured = {}
    for label, data, rows in (("small", small, n_small), ("large", large, n_large)):
        client.restart()  # both sizes start from fresh worker processes
        client.run(_start_sampler)
        start = time.perf_counter()
        result = score_to(model_url, str(data), str(work / f"memory-{label}"), id_columns=IDS,
                          client=client, progress_every=30)
        seconds = time.perf_counter() - start
        peaks = client.run(_stop_sampler)
        _verify(result.manifest, rows)
        measured[label] = {"peak": max(peaks.values()), "rate": rows / seconds}
        print(f"   scored {rows:,} rows in {seconds:.0f} s ({rows / seconds:,.0f} rows/s); "
              f"worker peak RSS {max(peaks.values()) / 2**20:,.0f} MiB", flush=True)
        shutil.rmtree(work / f"memory-{label}")
    small_mib = measured["small"]["peak"] / 2**20
    large_mib = measured["large"]["peak"] / 2**20
    growth = large_mib / small_mib
    return [
        {"benchmark": "score", "operation": "worker peak RSS, large vs small input",
         "size": f"{n_small:,} / {n_large:,} rows", "ours": large_mib, "baseline": small_mib,
         "baseline_name": f"the same job on {n_small:,} rows", "unit": "MiB",
         "ratio": small_mib / large_mib, "goal": "large <= 1.2x small",
         "met": growth <= 1.2},
        {"benchmark": "score", "operation": "mlpipe score throughput, large input",
         "size": f"{n_large:,} rows", "ours": measured["large"]["rate"],
         "baseline": measured["small"]["rate"], "baseline_name": f"the same on {n_small:,} rows",
         "unit": "rows/s", "ratio": measured["large"]["rate"] / measured["small"]["rate"],
         "goal": "-", "met": None},
    ]


_SAMPLER: dict[str, Any] = {}


def _start_sampler(interval: float = 0.02) -> None:
    """In a worker process: record the process's peak RSS until :func:`_stop_sampler`."""
    import psutil

    process = psutil.Process()
    state = {"peak": process.memory_info().rss, "stop": threading.Event()}

    def sample() -> None:
        while not state["stop"].wait(interval):
            state["peak"] = max(state["peak"], process.memory_info().rss)

    thread = threading.Thread(target=sample, name="mlpipe-rss-sampler", daemon=True)
    thread.start()
    _SAMPLER.update(state=state, thread=thread)


def _stop_sampler() -> int:
    state = _SAMPLER["state"]
    state["stop"].set()
    _SAMPLER["thread"].join()
    return int(state["peak"])
