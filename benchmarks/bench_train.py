"""mlpipe's training against single-process XGBoost, and ``mlpipe run`` end to end (issue #18).

Fit: the Higgs-shaped set (:mod:`benchmarks.higgs`, 28 float32 features) at 1M and 4M rows
(at scale 1.0), 90 % training / 10 % validation rows, 100 rounds, ``hist``, depth 6, learning
rate 0.1, 256 bins, AUC and log loss on the validation rows every round, no early stopping.
Ours: :func:`pipeline.train.fit_xgboost` on a LocalCluster of 2 single-threaded workers, the
frames already persisted on the cluster (what the workflow hands it); timed from the call to
the booster: placement, the quantile matrices, boosting, the learning curve's training sample.
Baseline: ``xgboost.train`` in this process with ``nthread=2`` on the same rows (already in
memory), timed from the ``QuantileDMatrix`` to the booster. Three interleaved rounds, median.
Goal: <= 1.05x.

End to end: ``mlpipe run`` (one xgboost family with those parameters, no search grid, 20 %
holdout, 10 % validation) on the Parquet files, against one process that reads them with
pyarrow, splits the same fractions, trains the same way (``nthread=2``), computes the holdout
AUC and saves the model. Best of two. Goal: <= 1.2x.

``MLPIPE_BENCH_DATA=<dir>`` keeps the generated Parquet files between runs. The machine's load
average is reported next to the figures: the ratios are only meaningful on an idle machine.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.higgs import FEATURES, LABEL, ROWS_PER_FILE, write_higgs

SIZES = (1_000_000, 4_000_000)
ROWS_END_TO_END = 4_000_000
ROUNDS = 100
PARAMS = {"max_depth": 6, "learning_rate": 0.1, "max_bin": 256, "tree_method": "hist"}
ROUNDS_REPEATED = 3


def _rows(n: float) -> int:
    """Whole Parquet files, at least one."""
    return max(ROWS_PER_FILE, int(round(n / ROWS_PER_FILE)) * ROWS_PER_FILE)


def run(scale: float = 1.0) -> list[dict]:
    import cluster

    sizes = [_rows(n * scale) for n in SIZES]
    e2e = _rows(ROWS_END_TO_END * scale)
    keep = os.environ.get("MLPIPE_BENCH_DATA")
    work = Path(tempfile.mkdtemp(prefix="mlpipe-bench-train-"))
    root = Path(keep) / "higgs" if keep else work / "higgs"
    try:
        write_higgs(root, max(max(sizes), e2e))
        rows = []
        with cluster.connect({"n_workers": 2, "threads_per_worker": 1}) as client:
            for n in sizes:
                rows.append(_fit(client, root, n))
            rows.append(_end_to_end(client, root, e2e, work))
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _files(root: Path, rows: int) -> list[Path]:
    return sorted(root.glob("part-*.parquet"))[: rows // ROWS_PER_FILE]


def _load(root: Path, rows: int) -> Any:
    import pyarrow.parquet as pq

    return pq.ParquetDataset([str(p) for p in _files(root, rows)]).read().to_pandas()


def _fit(client: Any, root: Path, rows: int) -> dict:
    import dask.dataframe as dd
    import xgboost as xgb

    from pipeline.train import fit_xgboost

    frame = _load(root, rows)
    cut = int(len(frame) * 0.9)
    train, valid = frame.iloc[:cut], frame.iloc[cut:]
    parts = max(2, rows // ROWS_PER_FILE)
    dtrain = dd.from_pandas(train, npartitions=parts).persist()
    dvalid = dd.from_pandas(valid, npartitions=max(1, parts // 8)).persist()

    def ours() -> float:
        start = time.perf_counter()
        fit_xgboost(dtrain[FEATURES], dtrain[LABEL], dvalid[FEATURES], dvalid[LABEL],
                    params={**PARAMS, "n_estimators": ROUNDS}, task="binary", n_classes=2,
                    early_stopping_rounds=None, client=client)
        return time.perf_counter() - start

    def baseline() -> float:
        start = time.perf_counter()
        m_train = xgb.QuantileDMatrix(train[FEATURES], train[LABEL], max_bin=PARAMS["max_bin"])
        m_valid = xgb.QuantileDMatrix(valid[FEATURES], valid[LABEL], ref=m_train)
        xgb.train({**PARAMS, "objective": "binary:logistic", "eval_metric": ["auc", "logloss"],
                   "nthread": 2}, m_train, ROUNDS, evals=[(m_valid, "valid")],
                  verbose_eval=False)
        return time.perf_counter() - start

    times = _interleaved(ours, baseline)
    return _row("xgboost fit, 100 rounds, hist, validation evaluated each round",
                f"{rows:,} x 28", times, "xgboost.train, 1 process, nthread=2", "<= 1.05x", 1.05)


def _end_to_end(client: Any, root: Path, rows: int, work: Path) -> dict:
    import yaml

    from pipeline.workflow import run as mlpipe_run

    data = work / f"e2e-{rows}"
    data.mkdir()
    for path in _files(root, rows):
        os.link(path, data / path.name)
    job = {"name": "higgs", "output": str(work / "out"),
           "data": {"train": str(data), "target": LABEL, "task": "binary",
                    "split": {"holdout": 0.2, "validation": 0.1, "seed": 0}},
           "models": {"xgboost": {**PARAMS, "n_estimators": ROUNDS}},
           "train": {"early_stopping_rounds": ROUNDS}}
    job_file = work / "higgs.yaml"
    job_file.write_text(yaml.safe_dump(job))

    def ours() -> float:
        start = time.perf_counter()
        mlpipe_run(str(job_file), client=client)
        return time.perf_counter() - start

    def baseline() -> float:
        start = time.perf_counter()
        _single_process(data, work / "baseline.ubj")
        return time.perf_counter() - start

    times = _interleaved(ours, baseline, rounds=2, pick=min)
    return _row("mlpipe run end to end (load, split, preprocess, train, evaluate, bundle)",
                f"{rows:,} x 28", times,
                "1 process: pyarrow read, split, xgboost.train nthread=2, AUC, save",
                "<= 1.2x", 1.2)


def _single_process(data: Path, model: Path) -> float:
    import numpy as np
    import pyarrow.parquet as pq
    import xgboost as xgb
    from sklearn.metrics import roc_auc_score

    frame = pq.read_table(str(data)).to_pandas()
    rng = np.random.default_rng(0)
    u = rng.random(len(frame))
    holdout, valid, train = frame[u < 0.2], frame[(u >= 0.2) & (u < 0.3)], frame[u >= 0.3]
    m_train = xgb.QuantileDMatrix(train[FEATURES], train[LABEL], max_bin=PARAMS["max_bin"])
    m_valid = xgb.QuantileDMatrix(valid[FEATURES], valid[LABEL], ref=m_train)
    booster = xgb.train({**PARAMS, "objective": "binary:logistic",
                         "eval_metric": ["auc", "logloss"], "nthread": 2}, m_train, ROUNDS,
                        evals=[(m_valid, "valid")], verbose_eval=False)
    auc = roc_auc_score(holdout[LABEL], booster.inplace_predict(holdout[FEATURES]))
    booster.save_model(str(model))
    return float(auc)


def _interleaved(ours: Any, baseline: Any, rounds: int = ROUNDS_REPEATED,
                 pick: Any = statistics.median) -> dict[str, float]:
    a, b = [], []
    for _ in range(rounds):
        a.append(ours())
        b.append(baseline())
    return {"ours": pick(a), "baseline": pick(b), "all_ours": a, "all_baseline": b}


def _row(operation: str, size: str, times: dict, name: str, goal: str, limit: float) -> dict:
    ratio = times["ours"] / times["baseline"]
    load = os.getloadavg()[0]
    return {"benchmark": "train", "operation": operation, "size": size,
            "ours": times["ours"], "baseline": times["baseline"],
            "baseline_name": f"{name} (load {load:.1f})", "unit": "s", "ratio": ratio,
            "goal": goal, "met": ratio <= limit,
            "runs": {"ours": times["all_ours"], "baseline": times["all_baseline"]}}
