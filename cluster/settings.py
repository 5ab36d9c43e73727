"""Our dask.config defaults, one place, with a comment per key (like distributed.yaml).

They are applied inside :func:`cluster.connect` (``dask.config.set``), under the job's own
``dask:`` block, which wins. Settings that live on the scheduler (e.g. the no-workers timeout)
only take effect on clusters we start; a remote scheduler keeps its own configuration.
"""

from __future__ import annotations

import os
import tempfile

DEFAULTS: dict[str, object] = {
    # A task that stays unrunnable this long (no workers left, e.g. workers that exited
    # cleanly and were not restarted) fails instead of waiting forever. Dask's default is null.
    "distributed.scheduler.no-workers-timeout": "60s",
    # Dask pins OMP/MKL/OpenBLAS threads to 1 in worker processes but not numba's
    # (dask/distributed#9075); our kernels are single-threaded and Dask is the parallelism.
    "distributed.nanny.pre-spawn-environ.NUMBA_NUM_THREADS": 1,
    # numba's cache=True needs a writable directory on every worker; the package directory
    # of an installed wheel is often read-only.
    "distributed.nanny.pre-spawn-environ.NUMBA_CACHE_DIR": os.environ.get(
        "NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "mlpipe-numba-cache")),
    # Retry flaky connects (object stores, cloud networks) a few times before failing.
    "distributed.comm.retry.count": 3,
}

#: Distributions whose versions must match between the client and every worker: ours and the
#: libraries whose objects we send over the wire (models, frames, fitted transformers).
VERSION_CHECKED = ("mlpipe", "dask", "distributed", "xgboost", "scikit-learn", "pandas",
                   "numpy", "pyarrow", "numba", "skops", "dask-ml")
