"""Bundles: manifest last, every file verified, pointers flipped by compare-and-swap."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from pipeline import artifacts
from pipeline.artifacts import BundleError, ConflictError


@pytest.fixture(params=["file", "memory", pytest.param("s3", marks=pytest.mark.integration)])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return str(tmp_path / "registry")
    if request.param == "s3":  # the moto server: conditional PUTs over real HTTP
        return request.getfixturevalue("bucket") + "/registry"
    import uuid

    return f"memory://registry-{uuid.uuid4().hex[:8]}"


def write(root: str, run_id: str = "r1", files: dict | None = None) -> dict:
    files = files or {"a.txt": b"hello", "b.bin": bytes(range(256))}
    return artifacts.write_run(root, run_id, files, meta={"name": "m"})


def test_round_trip(root: str) -> None:
    manifest = write(root)
    assert manifest["files"]["a.txt"]["size"] == 5
    bundle = artifacts.open_bundle(artifacts.join(root, "runs", "r1"))
    assert bundle.read("a.txt") == b"hello" and bundle.read("b.bin") == bytes(range(256))
    assert bundle.manifest["versions"]["mlpipe"]
    artifacts.publish(root, "m", manifest)
    via_model = artifacts.open_bundle(artifacts.join(root, "models", "m"))
    assert via_model.run_id == "r1"


def test_tampered_file_is_refused(root: str) -> None:
    write(root)
    fs, base = artifacts.filesystem(artifacts.join(root, "runs", "r1"))
    fs.pipe_file(artifacts.join(base, "a.txt"), b"hellO")
    bundle = artifacts.open_bundle(artifacts.join(root, "runs", "r1"))
    with pytest.raises(BundleError, match="does not match its manifest"):
        bundle.read("a.txt")
    assert bundle.read("b.bin")  # the untouched file still verifies
    with pytest.raises(BundleError, match="a.txt does not match"):
        bundle.verify()  # what load_model does first: the whole version, or nothing


def test_tampered_manifest_is_refused_through_the_pointer(root: str) -> None:
    artifacts.publish(root, "m", write(root))
    fs, base = artifacts.filesystem(artifacts.join(root, "runs", "r1"))
    doc = json.loads(fs.cat_file(artifacts.join(base, "manifest.json")))
    doc["files"]["a.txt"]["sha256"] = artifacts.sha256(b"other")
    fs.pipe_file(artifacts.join(base, "manifest.json"), json.dumps(doc).encode())
    with pytest.raises(BundleError, match="does not match the sha256 recorded"):
        artifacts.open_bundle(artifacts.join(root, "models", "m"))


def test_a_run_without_manifest_is_not_a_model(root: str) -> None:
    fs, base = artifacts.filesystem(artifacts.join(root, "runs", "half"))
    fs.makedirs(base, exist_ok=True)
    fs.pipe_file(artifacts.join(base, "model.ubj"), b"partial")
    with pytest.raises(BundleError, match="did not complete"):
        artifacts.open_bundle(artifacts.join(root, "runs", "half"))
    with pytest.raises(BundleError, match="no current version"):
        artifacts.open_bundle(artifacts.join(root, "models", "m"))


def test_manifest_is_create_once(root: str) -> None:
    write(root)
    with pytest.raises(FileExistsError):
        write(root)


def test_bad_urls() -> None:
    with pytest.raises(BundleError, match="neither a run URL"):
        artifacts.open_bundle("/tmp/somewhere/else")


def test_publish_keeps_history_and_expected_run_guards(root: str) -> None:
    for run_id in ("r1", "r2", "r3"):
        artifacts.publish(root, "m", write(root, run_id))
    fs, path = artifacts.filesystem(artifacts.join(root, "models", "m", "latest.json"))
    doc = artifacts.read_pointer(fs, path).doc
    assert doc["run_id"] == "r3" and doc["history"] == ["r2", "r1"]
    sha = artifacts.open_bundle(artifacts.join(root, "runs", "r1")).manifest["_sha256"]
    with pytest.raises(ConflictError, match="is at r3, not r2"):
        artifacts.set_current(root, "m", "r1", manifest_sha256=sha, expected_run="r2")
    artifacts.set_current(root, "m", "r1", manifest_sha256=sha, expected_run="r3")
    assert artifacts.open_bundle(artifacts.join(root, "models", "m")).run_id == "r1"


def test_concurrent_local_flips_lose_no_update(tmp_path: Path) -> None:
    root = str(tmp_path / "reg")
    manifests = [write(root, f"r{i}") for i in range(8)]
    threads = [threading.Thread(target=artifacts.publish, args=(root, "m", m))
               for m in manifests]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fs, path = artifacts.filesystem(artifacts.join(root, "models", "m", "latest.json"))
    doc = artifacts.read_pointer(fs, path).doc
    # every flip saw the one before it: the current run plus a history of all others
    assert sorted([doc["run_id"], *doc["history"]]) == sorted(f"r{i}" for i in range(8))


def _double(x: object) -> object:
    return x * 2  # type: ignore[operator]


def test_skops_refuses_untrusted_types() -> None:
    import numpy as np
    from sklearn.preprocessing import FunctionTransformer

    # an arbitrary function is code that skops would have to import and call: refused
    with pytest.raises(BundleError, match="outside the trusted set"):
        artifacts.dumps_skops(FunctionTransformer(func=_double).fit(np.ones((2, 1))))


def test_atomic_write_local(tmp_path: Path) -> None:
    fs, path = artifacts.filesystem(str(tmp_path / "d" / "f.json"))
    artifacts.atomic_write(fs, path, b"1", create_once=True)
    with pytest.raises(FileExistsError):
        artifacts.atomic_write(fs, path, b"2", create_once=True)
    artifacts.atomic_write(fs, path, b"3")
    assert Path(path).read_bytes() == b"3"
    assert [p.name for p in Path(path).parent.iterdir()] == ["f.json"]  # no temp left


def test_atomic_write_create_once(root: str) -> None:
    # on S3 this is a conditional PUT (If-None-Match: *), not an exists() check: a racing
    # writer cannot slip in between
    fs, path = artifacts.filesystem(artifacts.join(root, "once", "f.json"))
    artifacts.atomic_write(fs, path, b"1", create_once=True)
    with pytest.raises(FileExistsError):
        artifacts.atomic_write(fs, path, b"2", create_once=True)
    assert fs.cat_file(path) == b"1"


@pytest.mark.integration
def test_create_once_race_on_s3(bucket: str) -> None:
    fs, path = artifacts.filesystem(f"{bucket}/race/record.json")
    outcomes: list[str] = []

    def write(i: int) -> None:
        try:
            artifacts.atomic_write(fs, path, str(i).encode(), create_once=True)
            outcomes.append(f"won:{i}")
        except FileExistsError:
            outcomes.append("lost")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    won = [o for o in outcomes if o.startswith("won")]
    assert len(outcomes) == 6 and len(won) == 1
    assert fs.cat_file(path) == won[0].split(":")[1].encode()


def test_bundle_files_follow_the_umask(tmp_path) -> None:
    """manifest.json, latest.json, versions/*.json: readable by a teammate, like any file the
    process writes (they were 0600: mkstemp's mode)."""
    import os

    from pipeline.artifacts import atomic_write, filesystem

    fs, base = filesystem(str(tmp_path))
    reference = tmp_path / "plain.txt"
    reference.write_bytes(b"x")
    assert reference.stat().st_mode & 0o044  # a umask that lets others read (CI: 022)
    atomic_write(fs, os.path.join(base, "doc.json"), b"{}")
    atomic_write(fs, os.path.join(base, "once.json"), b"{}", create_once=True)
    for name in ("doc.json", "once.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == reference.stat().st_mode & 0o777


def test_a_create_once_write_finding_its_own_bytes_is_done(root: str) -> None:
    """#17 item 3: the retry of a create-once write whose response was lost finds an object;
    an equal one (size + sha256) is this write: success. A different one stays an error."""
    fs, path = artifacts.filesystem(artifacts.join(root, "once", "record.json"))
    artifacts.atomic_write(fs, path, b'{"run_id": "r1"}', create_once=True)
    artifacts.atomic_write(fs, path, b'{"run_id": "r1"}', create_once=True)
    with pytest.raises(FileExistsError):
        artifacts.atomic_write(fs, path, b'{"run_id": "r2"}', create_once=True)
    assert fs.cat_file(path) == b'{"run_id": "r1"}'


def test_a_pointer_already_holding_the_run_is_not_swapped_again(root: str) -> None:
    """#17 item 3b: publishing a run the pointer already holds (the retry of a swap whose
    response was lost) must not make the run its own predecessor."""
    from pipeline.registry import rollback

    artifacts.publish(root, "m", write(root, "r1"))
    manifest = write(root, "r2")
    first = artifacts.publish(root, "m", manifest)
    assert artifacts.publish(root, "m", manifest) == first
    fs, path = artifacts.filesystem(artifacts.join(root, "models", "m", "latest.json"))
    assert artifacts.read_pointer(fs, path).doc == first and first["history"] == ["r1"]
    assert rollback(root, "m")["run_id"] == "r1"


def _bundle_files(model: bytes | None = None, preprocessor: bytes | None = None) -> dict:
    import numpy as np
    import xgboost
    from sklearn.preprocessing import StandardScaler

    X = np.arange(8, dtype=float).reshape(4, 2)
    booster = xgboost.train({"nthread": 1}, xgboost.DMatrix(X, label=[0, 1, 0, 1]), 1)
    schema = {"task": "binary", "target": "y", "classes": [0, 1], "threshold": 0.5,
              "family": "xgboost", "kernels": {}}
    return {"schema.json": json.dumps(schema).encode(),
            "preprocessor.skops": preprocessor or artifacts.dumps_skops(StandardScaler().fit(X)),
            "model.ubj": model or bytes(booster.save_raw(raw_format="ubj"))}


@pytest.mark.parametrize("name", ["preprocessor.skops", "model.ubj"])
def test_a_tampered_model_file_is_not_a_valid_model_file(tmp_path: Path, name: str) -> None:
    """#17 item 5: a file swapped (with its manifest entry) for a pickle: refused with one
    sentence naming the file and its URL, not BadZipFile or XGBoost's C++ stack."""
    import pickle

    root = str(tmp_path / "registry")
    artifacts.write_run(root, "ok", _bundle_files(), meta={"name": "m"})
    assert artifacts.load_model(artifacts.join(root, "runs", "ok")).run_id == "ok"
    evil = pickle.dumps({"payload": list(range(50))})
    artifacts.write_run(root, "bad", _bundle_files(**{name.split(".")[0]: evil}),
                        meta={"name": "m"})
    with pytest.raises(BundleError) as refused:
        artifacts.load_model(artifacts.join(root, "runs", "bad"))
    text = str(refused.value)
    assert text.startswith(f"{root}/runs/bad/{name} is not a valid model file"), text
    assert "Traceback" not in text and "\n" not in text and ".cc" not in text
