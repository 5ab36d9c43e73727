"""Cluster selection order, the local cluster's settings, and clear failures."""

from __future__ import annotations

import os
import warnings
from types import SimpleNamespace

import pytest

import cluster
from cluster import ClusterError, InsecureClusterWarning


@pytest.fixture(autouse=True)
def no_env_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    import dask

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with dask.config.set({"scheduler-address": None}):
        yield


SPEC = {"module": "distributed", "class": "LocalCluster", "kwargs": {"n_workers": 1}}


def test_selection_order(monkeypatch: pytest.MonkeyPatch) -> None:
    full = {"address": "tcp://10.1.1.1:8786", "scheduler_file": "/x.json", "spec": SPEC}
    assert cluster.resolve(full, address="tcp://127.0.0.1:1").target == "tcp://127.0.0.1:1"
    assert cluster.resolve(full).target == "tcp://10.1.1.1:8786"
    assert cluster.resolve({**full, "address": None}).kind == "scheduler_file"
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:2")
    choice = cluster.resolve({"spec": SPEC})
    assert choice.kind == "environment" and choice.target == "tcp://127.0.0.1:2"
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS")
    assert cluster.resolve({"spec": SPEC}).kind == "spec"
    local = cluster.resolve({})
    assert local.kind == "local" and local.kwargs["n_workers"] >= 1


def test_local_sizing_respects_the_job() -> None:
    assert cluster.resolve({"n_workers": 3}).kwargs["n_workers"] == 3
    choice = cluster.resolve({"n_workers": 2, "threads_per_worker": 4})
    assert (choice.kwargs["n_workers"], choice.kwargs["threads_per_worker"]) == (2, 4)


def test_local_cluster_is_loopback_with_numba_settings() -> None:
    with cluster.connect({"n_workers": 1, "threads_per_worker": 1}) as client:
        info = cluster.describe(client)
        assert info["scheduler"].startswith("tcp://127.0.0.1:")
        assert "127.0.0.1" in info["dashboard"]
        env = client.run(lambda: (os.environ.get("NUMBA_NUM_THREADS"),
                                  os.environ.get("NUMBA_CACHE_DIR")))
        (threads, cache_dir), = env.values()
        assert threads == "1" and cache_dir and os.access(cache_dir, os.W_OK)
        import dask

        assert dask.config.get("distributed.scheduler.no-workers-timeout") == "60s"


def _page_faults_of_temporaries(mib: int = 1, times: int = 40) -> int:
    """Minor page faults while numpy allocates and frees the same large array again and again
    (what every partition task does with its column temporaries; run as a task: tasks run in
    the worker's executor threads, whose malloc arenas are not the main thread's). 1 MiB:
    numpy asks for huge pages from 4 MiB up, which would hide the faults, not their cost."""
    import resource

    import numpy as np

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(times):
        np.ones(mib * 1024 * 1024 // 8).sum()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.parametrize("ours", [True, False])
def test_local_workers_reuse_freed_arrays(ours: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not ours:  # Dask's own setting (the environment wins over the config, as in Dask)
        monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
        monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    with cluster.connect({"n_workers": 1, "threads_per_worker": 1}) as client:
        faults = [client.submit(_page_faults_of_temporaries, pure=False).result()
                  for _ in range(3)]
    # measured: 0-350 per call with ours; ~10,300 when every array is a fresh mmap (256 pages
    # each, 40 arrays)
    assert (max(faults) < 3_000) if ours else (min(faults) > 7_000), faults


def test_warm_runs_once_on_every_worker(client: object) -> None:
    futures = cluster.warm(client, os.getpid)
    pids = client.gather(futures)
    assert sorted(pids) == sorted(client.run(os.getpid).values())
    assert len({future.key for future in futures}) == len(futures)  # fresh keys every call


def test_job_dask_config_wins_over_defaults() -> None:
    import dask

    with cluster.connect({"n_workers": 1, "processes": False},
                         dask_config={"distributed.scheduler.no-workers-timeout": "5s"}):
        assert dask.config.get("distributed.scheduler.no-workers-timeout") == "5s"


def test_cluster_spec_by_dotted_path() -> None:
    spec = {"spec": {"module": "distributed", "class": "LocalCluster",
                     "kwargs": {"n_workers": 0, "processes": False,
                                "dashboard_address": "127.0.0.1:0"}, "scale": 1}}
    with cluster.connect(spec) as client:
        assert len(client.scheduler_info()["workers"]) == 1


def test_bad_spec_module_is_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # as if the extra were missing
    with pytest.raises(ClusterError, match=r"cannot be imported.*mlpipe\[jobqueue\]"):
        with cluster.connect({"spec": {"module": "dask_jobqueue", "class": "SLURMCluster"}}):
            pass


def test_unreachable_scheduler_fails_fast() -> None:
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ClusterError, match="could not connect to the scheduler"):
        with cluster.connect({"timeout": "2s"}, address=f"tcp://127.0.0.1:{port}"):
            pass


def test_scheduler_without_workers_fails_within_timeout() -> None:
    from distributed import LocalCluster

    with LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address="127.0.0.1:0") as lc:
        with pytest.raises(ClusterError, match="has no workers after 2s"):
            with cluster.connect({"timeout": "2s"}, address=lc.scheduler_address):
                pass


def test_plain_tcp_to_a_remote_host_warns() -> None:
    with pytest.warns(InsecureClusterWarning, match="executes arbitrary code"):
        cluster._warn_if_exposed("tcp://10.20.30.40:8786", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cluster._warn_if_exposed("tcp://127.0.0.1:8786", None)
        cluster._warn_if_exposed("tls://10.20.30.40:8786", None)


def test_version_mismatch_names_worker_and_package() -> None:
    ours = {"mlpipe": "0.1.0", "xgboost": "3.2.0"}
    fake = SimpleNamespace(get_versions=lambda packages: {
        "client": {"packages": ours},
        "workers": {"tcp://w1:1": {"packages": {**ours, "xgboost": "2.0.0"}},
                    "tcp://w2:1": {"packages": ours}}})
    with pytest.raises(ClusterError, match=r"tcp://w1:1: xgboost 2\.0\.0 \(here: 3\.2\.0\)"):
        cluster.check_package_versions(fake, packages=("mlpipe", "xgboost"))
    cluster.check_package_versions(fake, packages=("mlpipe",))


def test_versions_of_a_real_cluster_match() -> None:
    with cluster.connect({"n_workers": 1, "threads_per_worker": 1}) as client:
        cluster.check_package_versions(client)
