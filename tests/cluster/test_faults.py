"""Faults on real process clusters: a worker SIGKILLed while loading or computing features
(the run completes with the undisturbed result: Dask recomputes by lineage), and a cluster
whose workers all exit cleanly (the run fails within no-workers-timeout, saying why).

Each test has a hard deadline. A kill test fails if the killed process is not reaped or any
process of the cluster is orphaned (the session's cluster is checked for survivors when it
stops); the no-workers test fails if any process it started outlives it. Kills during XGBoost
training belong to the training retries' tests.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from distributed import WorkerPlugin

import cluster
from tests.cluster.conftest import ProcCluster, Reference, lean_job, predictions_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class KillOnce(WorkerPlugin):
    """SIGKILL this worker's own process when a chosen task starts executing, once per test
    (the first worker to create ``marker`` does it; the restarted worker gets the plugin too).

    ``when``: ``"load"`` (a ``read_parquet`` task, :func:`pipeline.load.read_piece` under
    the label of dask's own reader) or ``"features"`` (a task that runs ``KernelFeatures``,
    the numba feature kernels).
    """

    def __init__(self, when: str, marker: str) -> None:
        self.when, self.marker = when, marker

    def setup(self, worker: Any) -> None:
        self.worker = worker

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if finish != "executing" or not self._chosen(key):
            return
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, f"{os.getpid()} {key}\n".encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)

    def _chosen(self, key: Any) -> bool:
        from dask.utils import key_split

        if self.when == "load":
            return key_split(key) == "read_parquet"
        task = self.worker.state.tasks.get(key)
        return task is not None and "KernelFeatures" in _owners(task.run_spec)


def _owners(spec: Any, depth: int = 0) -> set[str]:
    """Class names of the bound methods a task calls (map_partitions passes ``_func``)."""
    found: set[str] = set()
    if depth > 8:
        return found
    for value in _children(spec):
        owner = getattr(value, "__self__", None)
        if callable(value) and owner is not None:
            found.add(type(owner).__name__)
        found |= _owners(value, depth + 1)
    return found


def _children(spec: Any) -> list[Any]:
    out: list[Any] = []
    for attr in ("func", "args", "kwargs", "value"):
        value = getattr(spec, attr, None)
        if isinstance(value, dict):
            out.extend(value.values())
        elif isinstance(value, (list, tuple)):
            out.extend(value)
        elif value is not None and attr in ("func", "value"):
            out.append(value)
    return out


@pytest.mark.timeout(240)
@pytest.mark.parametrize("when", ["load", "features"])
def test_worker_killed_during_loading_or_features_gives_the_same_result(
        when: str, tls_cluster: ProcCluster, reference: Reference, s3_demo: str,
        tmp_path: Path) -> None:
    """On the session's one-worker cluster (see ``tls_cluster``), against its reference run."""
    import psutil

    from pipeline.config import load_job
    from pipeline.workflow import run

    marker = tmp_path / "killed"
    job = load_job(reference.job_file, [f"output={s3_demo}/killed-{when}"])
    with tls_cluster.client() as client:
        client.register_plugin(KillOnce(when, str(marker)), name="kill-once")
        start = time.perf_counter()
        try:
            result = run(job, client=client)
        finally:
            client.unregister_worker_plugin("kill-once")
        seconds = time.perf_counter() - start
        client.wait_for_workers(1, timeout=60)  # the nanny's restart is back
    assert marker.exists(), f"no worker was killed during {when}:\n{tls_cluster.log()}"
    pid, key = marker.read_text().split(" ", 1)
    assert result.headline == reference.headline
    pd.testing.assert_frame_equal(predictions_of(result.run_url), reference.predictions,
                                  check_exact=True)
    # nothing left behind: the killed process is reaped, and every process of the cluster is
    # still a child of the scheduler or worker command (no orphan)
    assert not psutil.pid_exists(int(pid))
    orphans = tls_cluster.tagged() - tls_cluster.processes()
    assert not orphans, f"processes outside the cluster's tree: {orphans}"
    print(f"killed {pid} at {key.strip()}: {seconds:.1f} s")


@pytest.mark.timeout(120)
def test_no_workers_left_fails_within_the_timeout(demo_dir: Path, tmp_path: Path) -> None:
    """Every worker exits cleanly after loading (a LocalCluster scaled to 0: its nanny does not
    restart it): the run fails within the job's ``no-workers-timeout``, saying so."""
    import psutil

    from pipeline.config import load_job
    from pipeline.workflow import run

    before = _descendants()
    job = load_job(lean_job(str(demo_dir), str(tmp_path / "out"),
                            cluster={"n_workers": 1, "threads_per_worker": 1},
                            dask={"distributed.scheduler.no-workers-timeout": "3s"}))
    gone = {}

    def workers_exit(stage: str) -> None:
        if stage != "load":
            return
        lc.scale(0)  # a clean close: the nanny does not restart the worker
        deadline = time.monotonic() + 60
        while client.scheduler_info(n_workers=-1)["workers"]:
            assert time.monotonic() < deadline, "the workers did not exit"
            time.sleep(0.05)
        gone["at"] = time.monotonic()

    # what run(job) does without a client, but keeping the cluster object to scale it down
    with pytest.raises(cluster.ClusterError, match=r"^no workers left: .* within 3 s") as info:
        with cluster.connect(job.cluster.model_dump(by_alias=True),
                             dask_config=job.dask) as client:
            lc = client.cluster
            run(job, client=client, on_stage=workers_exit)
    waited = time.monotonic() - gone["at"]
    assert "no-workers-timeout" in str(info.value)
    assert waited < 60, f"failed {waited:.0f} s after the last worker left"
    print(f"failed {waited:.1f} s after the last worker exited (timeout 3 s)")
    _, alive = psutil.wait_procs(list(_descendants() - before), timeout=30)
    assert not alive, f"processes outlived the test: {alive}"


@pytest.mark.timeout(120)
def test_a_lost_scheduler_is_named_whatever_fails_next(proc_cluster) -> None:
    """Killed between two stages: the client reconnects for ``cluster.timeout``, then closes
    itself, and the next stage fails with whatever its first call raises on a closed client
    (in CI: ``get_client()``'s "No global client found", after the gate). ``connect`` says
    what happened: the scheduler was lost."""
    pc = proc_cluster(workers=1, nthreads=1)
    with pytest.raises(cluster.SchedulerLostError, match="closed while the work ran") as info:
        with cluster.connect({"timeout": "3s"}, address=pc.address) as client:
            pc.scheduler.send_signal(signal.SIGKILL)
            pc.scheduler.wait(timeout=30)
            deadline = time.monotonic() + 60
            while client.status != "closed" and time.monotonic() < deadline:
                time.sleep(0.2)
            raise ValueError("No global client found and no address provided")
    assert "client closed; then ValueError: No global client found" in str(info.value)
    from pipeline.cli import lost_scheduler

    assert lost_scheduler(info.value)

    with pytest.raises(ValueError, match="not the cluster's"):  # a running client: as it is
        with cluster.connect({"timeout": "3s"}, address=proc_cluster(workers=1).address):
            raise ValueError("not the cluster's")


def _descendants() -> set:
    """This process's descendants, but not multiprocessing's shared helper processes (its
    resource tracker and forkserver live as long as the test session)."""
    import psutil

    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            line = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "resource_tracker" not in line and "forkserver" not in line:
            out.add(p)
    return out
