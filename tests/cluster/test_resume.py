"""The scheduler killed mid-run: the run fails in bounded time; the rerun resumes and
publishes the model an uninterrupted run of the same job trains (issue #17)."""

from __future__ import annotations

import hashlib
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


def mlpipe(*args: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def model_files(root: Path) -> dict[str, str]:
    """{file name: sha256} of the published version's model files (model.ubj / .skops)."""
    [run] = root.glob("runs/*")
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.glob("model.*")}


@pytest.mark.timeout(600)
def test_scheduler_killed_then_rerun_resumes(proc_cluster, tmp_path: Path,
                                             demo_dir: Path) -> None:
    out = tmp_path / "out"
    job = demo_job(str(demo_dir), str(out), features=[],
                   models={"xgboost": {"n_estimators": [20, 40], "max_depth": 3},
                           "decision_tree": {"max_depth": 4},
                           "naive_bayes": {}},
                   search={"sample_rows": 1500, "cv": 2})
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))

    running: list[subprocess.Popen] = []
    try:
        first_cluster = proc_cluster(workers=1, nthreads=2)
        first_started = time.monotonic()
        first = mlpipe("run", str(job_file), "--scheduler", first_cluster.address,
                       log=tmp_path / "first.log")
        running.append(first)
        deadline = time.monotonic() + 240
        done = []
        while not done:  # the first family trained and kept: kill the scheduler now
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "the first family never finished"
            done = list(out.glob("stages/*/family-xgboost/manifest.json"))
            time.sleep(0.2)
        first_cluster.scheduler.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        rc = first.wait(timeout=150)
        took = time.monotonic() - killed
        text = (tmp_path / "first.log").read_text()
        assert rc != 0 and took < 120, (took, text[-2000:])
        assert "lost the connection to the Dask scheduler" in text and "Traceback" not in text, text[-3000:]
        assert not (out / "models").exists()  # nothing published
        assert not first_cluster.stop(), "processes of the killed cluster outlived it"

        second_cluster = proc_cluster(workers=1, nthreads=2)
        started = time.monotonic()
        second = mlpipe("run", str(job_file), "--scheduler", second_cluster.address,
                        log=tmp_path / "second.log")
        running.append(second)
        assert second.wait(timeout=240) == 0, (tmp_path / "second.log").read_text()[-3000:]
        rerun = time.monotonic() - started
        # the same job, uninterrupted, on a cluster of the same shape: the same model
        clean = tmp_path / "clean.yaml"
        clean.write_text(yaml.safe_dump({**job, "output": str(tmp_path / "clean")}))
        third = mlpipe("run", str(clean), "--scheduler", second_cluster.address,
                       log=tmp_path / "clean.log")
        running.append(third)
        assert third.wait(timeout=240) == 0, (tmp_path / "clean.log").read_text()[-3000:]
    finally:
        for proc in running:  # never leave a driver behind, whatever failed above
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    text = (tmp_path / "second.log").read_text()
    assert "search: done by an earlier run of this job" in text
    assert "xgboost: trained and evaluated by an earlier run" in text
    assert (out / "models" / "demo" / "latest.json").exists()
    assert not list(out.glob("stages/*"))  # published: the kept stages are gone
    resumed, uninterrupted = model_files(out), model_files(tmp_path / "clean")
    assert resumed and resumed == uninterrupted
    print(f"\nscheduler killed {killed - first_started:.1f} s into the run -> exit {rc} after "
          f"{took:.1f} s; the rerun resumed and published in {rerun:.1f} s")
