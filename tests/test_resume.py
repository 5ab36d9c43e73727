"""The scheduler killed mid-run: the run fails in bounded time; the rerun resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import demo_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class SubprocessCluster:
    """``dask scheduler`` + ``dask worker`` processes on 127.0.0.1 that a test can kill."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []

    def start(self) -> str:
        bin_dir = Path(sys.executable).parent
        file = self.tmp / f"scheduler-{len(self.procs)}.json"
        log = (self.tmp / f"cluster-{len(self.procs)}.log").open("w")
        self.scheduler = subprocess.Popen(
            [str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(file)], stdout=log,
            stderr=subprocess.STDOUT)
        self.procs.append(self.scheduler)
        deadline = time.monotonic() + 60
        while not (file.exists() and file.read_text().strip()):
            assert time.monotonic() < deadline and self.scheduler.poll() is None
            time.sleep(0.1)
        address = json.loads(file.read_text())["address"]
        self.worker = subprocess.Popen(
            [str(bin_dir / "dask"), "worker", address, "--host", "127.0.0.1", "--nworkers", "1",
             "--nthreads", "2", "--no-dashboard", "--death-timeout", "20"], stdout=log,
            stderr=subprocess.STDOUT)
        self.procs.append(self.worker)
        return address

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


@pytest.fixture
def cluster_procs(tmp_path: Path):
    procs = SubprocessCluster(tmp_path)
    try:
        yield procs
    finally:
        procs.stop()


def mlpipe(*args: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


@pytest.mark.timeout(900)
def test_scheduler_killed_then_rerun_resumes(cluster_procs, tmp_path: Path,
                                             demo_dir: Path) -> None:
    out = tmp_path / "out"
    job = demo_job(str(demo_dir), str(out), features=[],
                   models={"xgboost": {"n_estimators": [20, 40], "max_depth": 3},
                           "decision_tree": {"max_depth": 4},
                           "naive_bayes": {}},
                   search={"sample_rows": 1500, "cv": 2})
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))

    address = cluster_procs.start()
    first = mlpipe("run", str(job_file), "--scheduler", address, log=tmp_path / "first.log")
    deadline = time.monotonic() + 600
    done = []
    while not done:  # the first family trained and kept: kill the scheduler now
        assert first.poll() is None, (tmp_path / "first.log").read_text()
        assert time.monotonic() < deadline
        done = list(out.glob("stages/*/family-xgboost/manifest.json"))
        time.sleep(0.2)
    cluster_procs.scheduler.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    rc = first.wait(timeout=300)
    took = time.monotonic() - killed
    text = (tmp_path / "first.log").read_text()
    assert rc != 0 and took < 120, (took, text[-2000:])
    assert "lost the connection to the Dask scheduler" in text and "Traceback" not in text
    assert not (out / "models").exists()  # nothing published
    cluster_procs.worker.kill()

    address = cluster_procs.start()
    second = mlpipe("run", str(job_file), "--scheduler", address, log=tmp_path / "second.log")
    assert second.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-3000:]
    text = (tmp_path / "second.log").read_text()
    assert "search: done by an earlier run of this job" in text
    assert "xgboost: trained and evaluated by an earlier run" in text
    assert (out / "models" / "demo" / "latest.json").exists()
    assert not list(out.glob("stages/*"))  # published: the kept stages are gone
    print(f"\nscheduler killed -> exit {rc} after {took:.1f} s")
