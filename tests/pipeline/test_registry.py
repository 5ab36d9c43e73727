"""The registry on file:// and on a real S3 server: versions, promotion and rollback by
compare-and-swap (concurrent promotions: exactly one wins), immutable versions, cleanup."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from pathlib import Path

import pytest

from pipeline import artifacts
from pipeline.artifacts import BundleError, ConflictError
from pipeline.cli import main
from pipeline.errors import ExitCode
from pipeline.registry import cleanup, list_models, parse_age, promote, rollback, show_model


@pytest.fixture(params=["file", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return str(tmp_path / "registry")
    bucket = request.getfixturevalue("bucket")
    return f"{bucket}/mlpipe"


def make_run(root: str, run_id: str, name: str = "m", auc: float = 0.8) -> dict:
    files = {"model.ubj": f"model of {run_id}".encode(), "schema.json": b"{}"}
    return artifacts.write_run(root, run_id, files,
                               meta={"name": name, "task": "binary", "family": "xgboost",
                                     "headline": {"roc_auc": auc}})


def current(root: str, name: str = "m") -> dict | None:
    fs, path = artifacts.filesystem(artifacts.join(root, "models", name, "latest.json"))
    return artifacts.read_pointer(fs, path).doc


def test_versions_promotion_and_rollback(root: str) -> None:
    for i, auc in enumerate((0.71, 0.72, 0.73), start=1):
        make_run(root, f"r{i}", auc=auc)
    artifacts.publish(root, "m", make_run(root, "r0", auc=0.70),
                      summary={"headline": {"roc_auc": 0.70}})
    promote(root, "m", "r1")
    promote(root, "m", "r2")
    doc = promote(root, "m", "r3")
    assert doc["run_id"] == "r3" and doc["history"] == ["r2", "r1", "r0"]
    assert artifacts.open_bundle(artifacts.join(root, "models", "m")).run_id == "r3"

    [listed] = list_models(root)
    assert listed == {**listed, "name": "m", "versions": 4, "current": "r3",
                      "metrics": {"roc_auc": 0.73}}
    shown = show_model(root, "m")
    assert shown["current"] == "r3" and shown["history"] == ["r2", "r1", "r0"]
    assert [v["run_id"] for v in shown["versions"]] == ["r0", "r1", "r2", "r3"]
    detail = show_model(root, "m", "r2")
    assert detail["run_id"] == "r2" and not detail["current"]
    assert detail["headline"] == {"roc_auc": 0.72} and detail["files"]["model.ubj"] > 0
    assert show_model(root, "m", "current")["run_id"] == "r3"
    with pytest.raises(BundleError, match="not a version of model 'm'"):
        show_model(root, "m", "r9")

    assert rollback(root, "m")["run_id"] == "r2"
    assert rollback(root, "m")["run_id"] == "r1"
    assert current(root)["history"] == ["r0"]
    assert rollback(root, "m")["run_id"] == "r0"
    with pytest.raises(BundleError, match="no previous version"):
        rollback(root, "m")
    assert promote(root, "m", "r0")["run_id"] == "r0"  # already current: nothing changes
    assert current(root)["reason"] == "rollback"


def test_only_complete_untampered_runs_of_the_model_are_promoted(root: str) -> None:
    make_run(root, "good")
    make_run(root, "other", name="another-model")
    fs, base = artifacts.filesystem(artifacts.join(root, "runs", "half"))
    if artifacts.is_local(fs):
        fs.makedirs(base, exist_ok=True)
    fs.pipe_file(artifacts.join(base, "model.ubj"), b"partial")
    with pytest.raises(BundleError, match="did not complete"):
        promote(root, "m", "half")
    with pytest.raises(BundleError, match="is a run of model 'another-model'"):
        promote(root, "m", "other")
    make_run(root, "tampered")
    fs.pipe_file(artifacts.join(root, "runs", "tampered", "model.ubj"), b"changed")
    with pytest.raises(BundleError, match="model.ubj does not match its manifest"):
        promote(root, "m", "tampered")
    assert current(root) is None
    promote(root, "m", "good")
    assert current(root)["run_id"] == "good"


def test_versions_are_immutable(root: str) -> None:
    make_run(root, "r1")
    with pytest.raises(FileExistsError, match="versions are immutable"):
        artifacts.write_run(root, "r1", {"model.ubj": b"something else"}, meta={"name": "m"})
    bundle = artifacts.open_bundle(artifacts.join(root, "runs", "r1"))
    assert bundle.read("model.ubj") == b"model of r1"  # untouched


def race(root: str, candidates: list[str], expected: str) -> dict[str, object]:
    """Promote every candidate at once, each expecting ``expected``: {run_id: doc or error}."""
    barrier = threading.Barrier(len(candidates))
    outcome: dict[str, object] = {}

    def contend(run_id: str) -> None:
        barrier.wait()
        try:
            outcome[run_id] = promote(root, "m", run_id, expected_run=expected)
        except ConflictError as exc:
            outcome[run_id] = exc

    threads = [threading.Thread(target=contend, args=(c,)) for c in candidates]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return outcome


def test_concurrent_promotions_exactly_one_wins(root: str) -> None:
    artifacts.publish(root, "m", make_run(root, "base"))
    expected = "base"
    for round_ in range(3):  # the race, three times over, from each winner
        candidates = [f"c{round_}-{i}" for i in range(6)]
        for run_id in candidates:
            make_run(root, run_id)
        outcome = race(root, candidates, expected)
        winners = [r for r, o in outcome.items() if isinstance(o, dict)]
        assert len(outcome) == len(candidates) and len(winners) == 1, (round_, outcome)
        doc = current(root)
        assert doc["run_id"] == winners[0]
        assert doc["history"][0] == expected  # nobody slipped in between
        assert all("changed" in str(o) or "not " + expected in str(o)
                   for r, o in outcome.items() if r != winners[0])
        expected = winners[0]


def test_cli_promote_conflict_and_rollback(root: str, capsys: pytest.CaptureFixture) -> None:
    artifacts.publish(root, "m", make_run(root, "r1", auc=0.75),
                      summary={"headline": {"roc_auc": 0.75}})
    make_run(root, "r2", auc=0.81)
    assert main(["models", "promote", root, "m", "r2", "--expect", "r0"]) == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    assert "model 'm' is at r1, not r0" in err and "Traceback" not in err
    assert main(["models", "promote", root, "m", "r2"]) == 0
    assert "m: current version r2" in capsys.readouterr().out
    assert main(["models", "list", root]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "VERSIONS", "CURRENT", "METRICS"]
    assert out[1].split() == ["m", "2", "r2", "roc_auc=0.81"]
    assert main(["models", "show", root, "m"]) == 0
    assert "history:  r1" in capsys.readouterr().out
    assert main(["models", "show", root, "m", "r1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["headline"] == {"roc_auc": 0.75}
    assert main(["models", "rollback", root, "m"]) == 0
    assert "m: current version r1 (rolled back)" in capsys.readouterr().out
    assert main(["models", "rollback", root, "m"]) == ExitCode.BAD_INPUT
    assert "no previous version" in capsys.readouterr().err


def test_cleanup(root: str, capsys: pytest.CaptureFixture) -> None:
    make_run(root, "done")
    fs, base = artifacts.filesystem(root)
    for run_id in ("killed", "running"):
        if artifacts.is_local(fs):
            fs.makedirs(artifacts.join(base, "runs", run_id), exist_ok=True)
        fs.pipe_file(artifacts.join(base, "runs", run_id, "model.ubj"), b"partial")
    local = artifacts.is_local(fs)
    if local:  # an old killed run; the "running" one was written just now
        old = time.time() - 3 * 86400
        os.utime(artifacts.join(base, "runs", "killed", "model.ubj"), (old, old))
        Path(base, "runs", "done", ".tmp-abc").write_bytes(b"x")
        os.utime(Path(base, "runs", "done", ".tmp-abc"), (old, old))
        older_than = dt.timedelta(hours=24)
    else:  # S3 stamps objects itself: age them by asking for everything older than now
        bucket, key, _ = fs.split_path(artifacts.join(base, "runs", "done", "model.ubj"))
        upload = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key + ".big")
        fs.call_s3("upload_part", Bucket=bucket, Key=key + ".big", PartNumber=1,
                   UploadId=upload["UploadId"], Body=b"x" * 1024)
        older_than = dt.timedelta(0)

    report = cleanup(root, older_than=older_than, dry_run=True)
    expected_runs = ["killed"] if local else ["killed", "running"]
    assert [r.rsplit("/", 1)[-1] for r in report["runs"]] == expected_runs
    assert fs.exists(artifacts.join(base, "runs", "killed", "model.ubj"))  # dry run
    if not local:
        assert len(report["multipart_uploads"]) == 1
        assert fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads")

    code = main(["models", "cleanup", root, "--older-than",
                 "24h" if local else "0"])
    out = capsys.readouterr().out
    assert code == 0 and "unfinished run" in out
    fs.invalidate_cache()
    assert not fs.exists(artifacts.join(base, "runs", "killed"))
    assert fs.exists(artifacts.join(base, "runs", "running", "model.ubj")) == local
    assert artifacts.open_bundle(artifacts.join(root, "runs", "done")).read("model.ubj")
    if local:
        assert not Path(base, "runs", "done", ".tmp-abc").exists()
        assert "temp file" in out
    else:
        assert "aborted multipart upload" in out
        assert not fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads")


def test_parse_age() -> None:
    assert parse_age("24h") == dt.timedelta(hours=24)
    assert parse_age("0") == dt.timedelta(0)
    assert parse_age("1.5d") == dt.timedelta(hours=36)
    with pytest.raises(ValueError, match="cannot read the age"):
        parse_age("yesterday")


def test_promote_expect_names_the_version_that_must_be_current(
        root: str, capsys: pytest.CaptureFixture) -> None:
    """#17 item 6: ``promote V1 --expect V1`` while V2 is current is a conflict (it used to
    return early, logging "V1 is already the current version", without reading the pointer)."""
    artifacts.publish(root, "m", make_run(root, "v1"))
    artifacts.publish(root, "m", make_run(root, "v2"))
    before = current(root)
    assert before["run_id"] == "v2" and before["history"] == ["v1"]
    with pytest.raises(ConflictError, match="model 'm' is at v2, not v1"):
        promote(root, "m", "v1", expected_run="v1")
    assert main(["models", "promote", root, "m", "v1", "--expect", "v1"]) == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    assert "model 'm' is at v2, not v1" in err and "Traceback" not in err
    assert current(root) == before  # the pointer is untouched
    # --expect naming the true current version promotes; promoting the current one is a no-op
    assert main(["models", "promote", root, "m", "v1", "--expect", "v2"]) == 0
    assert current(root)["run_id"] == "v1" and current(root)["history"] == ["v2", "v1"]
    after = current(root)
    assert promote(root, "m", "v1", expected_run="v1") == after
    assert current(root) == after
