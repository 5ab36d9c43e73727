"""mlpipe: the whole machine-learning workflow as one distributed Dask job.

>>> from pipeline import load_job, run, load_model      # doctest: +SKIP
>>> result = run(load_job("examples/demo.yaml"))        # doctest: +SKIP
>>> model = load_model(result.model_url)                # doctest: +SKIP

The heavy libraries (dask, xgboost, scikit-learn) are imported on first use, so importing this
package, and ``mlpipe --help``, stay fast.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("mlpipe")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["load_job", "run", "load_model", "score", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "load_job":
        from pipeline.config import load_job

        return load_job
    if name == "run":
        from pipeline.workflow import run

        return run
    if name == "load_model":
        from pipeline.artifacts import load_model

        return load_model
    if name == "score":
        from pipeline.scoring import score

        return score
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
