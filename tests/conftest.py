"""Shared fixtures: a real S3 endpoint (moto server over HTTP), a real LocalCluster of worker
processes, and small demo datasets. Everything binds 127.0.0.1 and is stopped afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
HOUSING_CSV = SHARED_DATA / "california_housing_geron" / "housing.csv"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server on a free loopback port; AWS_* env points every client at it.

    Session-scoped and started before any cluster, so worker processes inherit the env.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in _AWS_ENV}
    os.environ.update({
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    })
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_AWS_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION")


@pytest.fixture
def bucket(s3_server: str) -> str:
    """A fresh, empty bucket: ``s3://<name>``."""
    import s3fs

    name = f"test-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(name)
    s3fs.S3FileSystem.clear_instance_cache()
    return f"s3://{name}"


@pytest.fixture(scope="session")
def client(s3_server: str) -> Iterator[object]:
    """A LocalCluster with 2 worker processes (1 thread each), shared by the session."""
    import cluster

    with cluster.connect({"n_workers": 2, "threads_per_worker": 1}) as c:
        yield c


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20,000 rows of demo data as 4 Parquet parts (written with pandas, no cluster)."""
    from pipeline.demo import make_partition

    out = tmp_path_factory.mktemp("demo")
    for i in range(4):
        make_partition(i, 5000, seed=0).to_parquet(out / f"part-{i:05d}.parquet", index=False)
    return out


def demo_job(train: str, output: str, **extra: object) -> dict:
    """A small, fast demo job as a mapping (for load_job)."""
    job = {
        "name": "demo",
        "data": {"train": train, "target": "default", "task": "binary",
                 "id_columns": ["application_id", "customer_id"], "drop": ["applied_at"],
                 "split": {"holdout": 0.2, "validation": 0.1, "seed": 0}},
        "preprocess": {
            "clip": {"columns": ["income", "savings"]},
            "encode": {"employer": {"method": "target"}, "branch": {"method": "frequency"},
                       "purpose": {"method": "onehot", "max_levels": 5}},
            "default_encoding": "ordinal",
        },
        "features": [
            {"kernel": "log1p", "columns": ["income", "loan_amount"]},
            {"kernel": "ratio", "columns": ["loan_amount", "income"],
             "pairs": [["loan_amount", "income"]]},
            {"kernel": "count", "columns": ["state"]},
            {"kernel": "bin", "columns": ["credit_score"], "n_bins": 8},
            {"kernel": "hash", "columns": ["employer"], "n_buckets": 64},
        ],
        "models": {"xgboost": {"n_estimators": 20, "max_depth": 4, "learning_rate": 0.3}},
        "output": output,
    }
    for key, value in extra.items():
        job[key] = value
    return job


@pytest.fixture
def dask_processes(tmp_path: Path) -> Iterator[str]:
    """A real ``dask scheduler`` and ``dask worker`` (subprocesses) on 127.0.0.1.

    Yields the scheduler address; both processes are stopped (then killed) afterwards.
    """
    import json
    import subprocess
    import sys
    import time

    bin_dir = Path(sys.executable).parent
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    logs = (tmp_path / "scheduler.log").open("w"), (tmp_path / "worker.log").open("w")
    procs = [subprocess.Popen(
        [str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
         "--no-dashboard", "--scheduler-file", str(scheduler_file)],
        stdout=logs[0], stderr=subprocess.STDOUT, env=env)]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            if time.monotonic() > deadline or procs[0].poll() is not None:
                raise RuntimeError("dask scheduler did not start: "
                                   + (tmp_path / "scheduler.log").read_text())
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        procs.append(subprocess.Popen(
            [str(bin_dir / "dask"), "worker", address, "--host", "127.0.0.1",
             "--nworkers", "1", "--nthreads", "2", "--no-dashboard"],
            stdout=logs[1], stderr=subprocess.STDOUT, env=env))
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for log in logs:
            log.close()


@pytest.fixture
def fault_proxy(s3_server: str) -> Iterator[object]:
    """A fault-injecting HTTP proxy (tests/faultproxy.py) in front of the moto server, on a
    free loopback port: no faults until the test asks (``set_rate``, ``fail_next``). Point a
    client at it with ``storage_options={"client_kwargs": {"endpoint_url": proxy.url}}``."""
    from tests.faultproxy import FaultProxy

    with FaultProxy(s3_server) as proxy:
        yield proxy
