"""``mlpipe submit / status / logs / cancel`` against real ``dask scheduler`` / ``dask worker``
processes on 127.0.0.1 (TLS), data and output on the S3 test server.

The cluster's one worker has ONE thread: the submitted driver secedes from it, so the job's
own tasks still get that thread (a driver that kept its slot would wait forever).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.cli import main
from tests.cluster.conftest import ProcCluster, Reference, lean_job

pytestmark = pytest.mark.integration


@pytest.fixture
def tls_config(tls_cluster: ProcCluster) -> Iterator[None]:
    """What `mlpipe status/logs/cancel` read their TLS files from: dask config (in a shell,
    DASK_DISTRIBUTED__COMM__TLS__CA_FILE, ...__TLS__CLIENT__CERT, ...__TLS__CLIENT__KEY)."""
    import dask

    certs = tls_cluster.certs
    with dask.config.set({"distributed.comm.tls.ca-file": certs.ca_file,
                          "distributed.comm.tls.client.cert": certs.cert_file,
                          "distributed.comm.tls.client.key": certs.key_file,
                          "distributed.comm.require-encryption": True}):
        yield


def wait_for(job_id: str, root: str, done: Any, timeout: float = 240) -> dict:
    """Poll the job's state file until ``done(state)``; a hard deadline."""
    from pipeline.jobs import JobStore

    store = JobStore(root)
    deadline = time.monotonic() + timeout
    while True:
        state = store.read(job_id)
        if done(state):
            return state
        assert time.monotonic() < deadline, f"job {job_id} still {state['state']}: {state}"
        time.sleep(0.2)


def finished(state: dict) -> bool:
    return state["state"] not in ("queued", "running")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_submit_then_status_and_logs_from_elsewhere(tls_cluster: ProcCluster, s3_demo: str,
                                                    reference: Reference, tls_config: None,
                                                    capsys: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_run import check_sample

    output = f"{s3_demo}/submitted"
    # the cluster chosen by cluster.scheduler_file; submit returns as soon as it is queued
    scheduler_file = tls_cluster.directory / "scheduler.json"
    assert main(["submit", str(reference.job_file), "--set", f"output={output}",
                 "--set", f"cluster.scheduler_file={scheduler_file}"]) == 0
    job_id = capsys.readouterr().out.strip()
    assert job_id.startswith("demo-")

    state = wait_for(job_id, output, finished)
    assert state["state"] == "succeeded", state["error"]
    assert state["scheduler"] == tls_cluster.address
    assert state["key"] == f"mlpipe-job-{job_id}"
    assert state["attempt"] == 1 and state["worker"].startswith("tls://127.0.0.1:")
    assert state["stage"] == "bundle"
    assert [name for name, _ in state["stages"]][:2] == ["plan", "load"]
    assert state["submitted_at"] <= state["started_at"] <= state["finished_at"]
    assert state["run_url"].startswith(f"{output}/runs/")
    assert state["error"] is None
    # the same job on the same cluster as `mlpipe run`: the same model, wherever its driver ran
    assert state["metrics"] == reference.headline
    check_sample(state["model_url"])  # the published model reproduces the run's predictions

    # status from the scheduler alone (DASK_SCHEDULER_ADDRESS): it remembers the job's output
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", tls_cluster.address)
    assert main(["status", job_id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "succeeded" and shown["driver"] is None  # released once done
    assert main(["status"]) == 0  # every job this scheduler was given
    assert job_id in capsys.readouterr().out
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS")

    # status and logs from the output store (the scheduler's address is in the state)
    assert main(["status", job_id, "--output", output]) == 0
    text = capsys.readouterr().out
    assert "state:     succeeded" in text and "roc_auc" in text and state["run_url"] in text
    assert main(["logs", job_id, "--output", output]) == 0
    text = capsys.readouterr().out
    assert f"==> driver: {output}/jobs/{job_id}.log" in text
    assert "bundle written" in text and f"job {job_id} succeeded" in text
    assert f"==> scheduler {tls_cluster.address}" in text
    assert "==> worker tls://127.0.0.1:" in text
    assert main(["status", "--output", output]) == 0
    assert job_id in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_cancel_stops_a_running_job_before_it_publishes(tls_cluster: ProcCluster, s3_demo: str,
                                                         reference: Reference, tls_config: None,
                                                         capsys: Any) -> None:
    import s3fs

    from pipeline.jobs import JobStore

    output = f"{s3_demo}/cancelled"
    assert main(["submit", str(reference.job_file), "--set", f"output={output}",
                 "--scheduler", tls_cluster.address]) == 0
    job_id = capsys.readouterr().out.strip()
    wait_for(job_id, output, lambda s: s["state"] == "running" and s["stage"])
    assert main(["cancel", job_id, "--scheduler", tls_cluster.address]) == 0
    assert "cancel requested" in capsys.readouterr().out
    assert JobStore(output).cancel_requested(job_id)
    state = wait_for(job_id, output, finished)
    assert state["state"] == "cancelled"
    assert state["stage"] in ("plan", "load", "preprocess")
    assert state["error"] == f"cancelled after stage {state['stage']!r}"
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    assert not fs.exists(f"{output}/models/demo/latest.json")
    assert not fs.glob(f"{output}/runs/*/manifest.json")
    # cancelling a finished job changes nothing
    assert main(["cancel", job_id, "--output", output]) == 0
    assert capsys.readouterr().out.strip() == f"{job_id}: cancelled"


def test_submit_needs_an_existing_cluster(tmp_path: Path, capsys: Any,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(lean_job(str(tmp_path / "data"), str(tmp_path / "out"))))
    assert main(["submit", str(job_file)]) == 2
    assert "needs an existing cluster" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_status_of_an_unknown_job_is_clear(tmp_path: Path, capsys: Any) -> None:
    assert main(["status", "nope-20260101T000000Z-0000", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no job 'nope-20260101T000000Z-0000'" in err and "Traceback" not in err


def test_a_job_whose_driver_is_gone_is_lost_and_can_be_cancelled(tls_cluster: ProcCluster,
                                                                  tmp_path: Path) -> None:
    from pipeline import jobs

    store = jobs.JobStore(str(tmp_path / "out"))
    job_id = jobs.new_job_id("ghost")
    store.write({"job_id": job_id, "name": "ghost", "state": "running", "stage": "load",
                 "submitted_at": "2026-01-01T00:00:00.000+00:00", "finished_at": None,
                 "scheduler": tls_cluster.address, "key": jobs.KEY_PREFIX + job_id})
    with tls_cluster.client() as client:
        state = jobs.status(job_id, store, client)
        assert state["state"] == "lost" and "no longer holds the job's driver" in state["error"]
        assert store.read(job_id)["state"] == "running"  # status only reports
        state = jobs.cancel(job_id, store, client)
    assert state["state"] == "cancelled" and state["error"] == "cancelled (its driver was lost)"
    assert store.read(job_id)["state"] == "cancelled"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_failing_job_records_one_paragraph_and_its_traceback(tls_cluster: ProcCluster,
                                                               s3_demo: str, tls_config: None,
                                                               tmp_path: Path,
                                                               capsys: Any) -> None:
    output = f"{s3_demo}/failing"
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(lean_job(
        f"{s3_demo}/no-such-data", output, cluster={"security": tls_cluster.certs.block()})))
    assert main(["submit", str(job_file), "--scheduler", tls_cluster.address]) == 0
    job_id = capsys.readouterr().out.strip()
    state = wait_for(job_id, output, finished, timeout=90)
    assert state["state"] == "failed" and state["stage"] is None
    assert f"{s3_demo}/no-such-data" in state["error"] and "\n" not in state["error"].strip()
    assert main(["logs", job_id, "--output", output]) == 0
    assert "Traceback" in capsys.readouterr().out  # the details are in the driver's log
