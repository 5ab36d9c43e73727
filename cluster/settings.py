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
    # Dask sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which also freezes glibc's mmap
    # threshold at 128 KiB: every larger array is then a fresh mmap, and the heap's free top is
    # handed back at once, so each partition's column temporaries are page-faulted and zeroed
    # again on every allocation. Measured on the demo's partitions: the fold hash takes 0.057 s
    # in a plain process, 0.097 s in a worker. With both thresholds at 32 MiB (glibc's largest
    # mmap threshold; a plain process drifts to about that on its own) freed arrays are reused:
    # the demo's preprocessing fit 2.45-2.72 -> 1.70-2.04 s, loading 4M rows 1.22-1.39 -> 1.00-
    # 1.10 s, scoring them 4.35-4.81 -> 4.20-4.32 s; the cost is resident memory, +100-200 MiB
    # at the peak and +250 MiB at rest per worker on those jobs. A job's dask: block (or the
    # environment) sets them back: MALLOC_TRIM_THRESHOLD_: 65536, MALLOC_MMAP_THRESHOLD_: null.
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 32 * 1024 * 1024,
    "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": 32 * 1024 * 1024,
    # Retry flaky connects (object stores, cloud networks) a few times before failing.
    "distributed.comm.retry.count": 3,
}

#: Distributions whose versions must match between the client and every worker: ours and the
#: libraries whose objects we send over the wire (models, frames, fitted transformers).
VERSION_CHECKED = ("mlpipe", "dask", "distributed", "xgboost", "scikit-learn", "pandas",
                   "numpy", "pyarrow", "numba", "skops", "dask-ml")
