"""``mlpipe``'s exit codes (issue #19): one per kind of failure, from pipeline.errors.ExitCode.

Bad input (2) is covered case by case in tests/pipeline/test_bad_input.py; here: the codes'
documentation, a storage failure, an unreachable cluster and an interrupted run."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.errors import EXIT_CODES, ClusterLostError, ExitCode, StorageError, exit_code
from tests.conftest import demo_job


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_codes_are_distinct_and_documented(capsys) -> None:
    assert len({int(c) for c in EXIT_CODES}) == len(EXIT_CODES) == len(ExitCode)
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for code, meaning in EXIT_CODES.items():
        assert f"{int(code):<3d} {meaning}" in out
        assert f"| {int(code)} | {meaning} |" in readme
    # mlpipe monitor's documented codes are the same numbers
    assert (ExitCode.BAD_INPUT, ExitCode.DRIFT, ExitCode.DECAY) == (2, 3, 4)


def test_the_rule() -> None:
    wrapped = RuntimeError("publish failed")
    wrapped.__cause__ = StorageError("put s3://b/x failed")
    assert exit_code(wrapped) == ExitCode.STORAGE
    assert exit_code(ClusterLostError("gone")) == ExitCode.CLUSTER
    assert exit_code(KeyboardInterrupt()) == ExitCode.INTERRUPTED
    assert exit_code(ValueError("x"), bad_input=(ValueError,)) == ExitCode.BAD_INPUT
    assert exit_code(KeyError("x")) == ExitCode.ERROR


def test_a_scheduler_lost_by_any_command_exits_with_the_cluster_code(monkeypatch,
                                                                    capsys) -> None:
    """cluster.connect's SchedulerLostError: exit 5 from every command, not only `run`."""
    import contextlib

    import cluster

    @contextlib.contextmanager
    def lost(*args: object, **kwargs: object):
        raise cluster.SchedulerLostError("the client's connection to the scheduler closed")
        yield

    monkeypatch.setattr(cluster, "connect", lost)
    assert main(["score", "out/models/demo", "in/", "out/scores"]) == ExitCode.CLUSTER
    assert "connection to the scheduler closed" in capsys.readouterr().err


@pytest.mark.integration
def test_unreachable_storage_exits_with_the_storage_code(client, tmp_path: Path, demo_dir: Path,
                                                         capsys) -> None:
    job = demo_job(str(demo_dir), "s3://nowhere/mlpipe",
                   storage_options={"client_kwargs": {
                       "endpoint_url": f"http://127.0.0.1:{closed_port()}"}},
                   dask={"distributed.comm.retry.count": 0})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    code = main(["run", str(tmp_path / "job.yaml"), "--scheduler", client.scheduler.address])
    err = capsys.readouterr().err
    assert code == ExitCode.STORAGE, err
    assert "s3://nowhere/mlpipe" in err[err.rindex("error: "):]


@pytest.mark.integration
def test_unreachable_cluster_exits_with_the_cluster_code(tmp_path: Path, demo_dir: Path,
                                                         capsys) -> None:
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(demo_job(str(demo_dir),
                                                               str(tmp_path / "out"))))
    address = f"tcp://127.0.0.1:{closed_port()}"
    code = main(["run", str(tmp_path / "job.yaml"), "--scheduler", address,
                 "--set", "cluster.timeout=2s"])
    message = capsys.readouterr().err
    assert code == ExitCode.CLUSTER, message
    assert f"could not connect to the scheduler at {address}" in message
    assert "lost the connection" not in message  # it was never reached, not lost


@pytest.mark.integration
def test_interrupted_run_exits_130(client, tmp_path: Path, demo_dir: Path) -> None:
    job = demo_job(str(demo_dir), str(tmp_path / "out"),
                   models={"xgboost": {"n_estimators": [50, 100], "max_depth": [3, 4, 5]}})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    log = (tmp_path / "err.log").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run",
                             str(tmp_path / "job.yaml"), "--scheduler",
                             client.scheduler.address], stderr=log, stdout=subprocess.DEVNULL,
                            # a suite started in the background (`pytest &` in a script) ignores
                            # SIGINT, and its children inherit that: give the run the default
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while "loaded" not in (tmp_path / "err.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "err.log").read_text()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == ExitCode.INTERRUPTED, (tmp_path / "err.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert not list((tmp_path / "out").glob("models/*/latest.json"))
