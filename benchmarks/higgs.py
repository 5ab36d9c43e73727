"""A Higgs-shaped synthetic set for the performance benchmarks (issue #18): 28 float32 features
(21 "low-level" ones with log-normal, normal and uniform-angle marginals, 7 "high-level"
nonlinear combinations of them) and a binary label drawn from a nonlinear logit (about 45 %
positive; XGBoost defaults reach a holdout AUC near 0.75). Deterministic: part ``i`` is the
same whatever the total.

>>> frame = higgs_frame(1000, seed=0)          # pandas, 28 features + "label"
>>> paths = write_higgs("/tmp/higgs", 1_000_000)   # 250,000-row Parquet files  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROWS_PER_FILE = 250_000
FEATURES = [f"f{i:02d}" for i in range(28)]
LABEL = "label"


def higgs_arrays(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` x 28 float32 features and the int8 label, from ``seed``."""
    rng = np.random.default_rng(seed)
    pt = rng.lognormal(mean=0.0, sigma=0.5, size=(rows, 7))  # transverse momenta
    eta = rng.normal(0.0, 1.1, size=(rows, 7))  # pseudo-rapidities
    phi = rng.uniform(-np.pi, np.pi, size=(rows, 7))  # angles
    low = np.concatenate([pt, eta, phi], axis=1)
    px, py = pt * np.cos(phi), pt * np.sin(phi)
    high = np.stack([
        np.log1p(np.hypot(px[:, 0] + px[:, 1], py[:, 0] + py[:, 1])),
        np.hypot(px[:, 2:4].sum(1), py[:, 2:4].sum(1)) / (pt[:, 2] + pt[:, 3]),
        np.abs(eta[:, 0] - eta[:, 1]),
        np.cos(phi[:, 0] - phi[:, 1]),
        np.sqrt(2 * pt[:, 0] * pt[:, 1] * (np.cosh(eta[:, 0] - eta[:, 1]) - np.cos(phi[:, 0] - phi[:, 1]))),
        pt[:, :4].sum(1),
        np.log(pt[:, 4] * pt[:, 5] + 1e-3),
    ], axis=1)
    logit = (0.9 * high[:, 0] - 1.2 * high[:, 2] + 0.8 * high[:, 3] * high[:, 1]
             + 0.6 * np.tanh(high[:, 4] - 1.5) - 0.4 * (pt[:, 6] - 1.0) ** 2 + 0.3 * eta[:, 2] * eta[:, 3]
             + 0.35)
    label = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)
    return np.concatenate([low, high], axis=1).astype(np.float32), label


def higgs_frame(rows: int, seed: int = 0):  # -> pandas.DataFrame
    import pandas as pd

    x, y = higgs_arrays(rows, seed)
    frame = pd.DataFrame(x, columns=FEATURES)
    frame[LABEL] = y
    return frame


def write_higgs(directory: str | Path, rows: int, rows_per_file: int = ROWS_PER_FILE) -> list[Path]:
    """Parquet files of ``rows_per_file`` rows (one row group each) under ``directory``; files that
    already exist are kept, so a larger set extends a smaller one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for part, start in enumerate(range(0, rows, rows_per_file)):
        path = out / f"part-{part:05d}.parquet"
        if not path.exists():
            frame = higgs_frame(min(rows_per_file, rows - start), seed=part)
            tmp = path.with_suffix(".tmp")
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp,
                           row_group_size=rows_per_file)
            tmp.rename(path)
        paths.append(path)
    return paths
