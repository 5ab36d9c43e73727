"""``mlpipe serve``: real uvicorn server processes on free loopback ports, a real HTTP client.

The bundles are the two real runs of ``test_score``'s ``trained`` fixture (the second is
current). Expected predictions come from the loaded Predictor itself, or from ``score_to``'s
Parquet output, compared exactly. Waits are polls with deadlines; nothing asserts on time.

Servers started here:
- ``server``: a file:// copy of the registry, a bearer token, micro-batching, the prediction log
  on S3; every endpoint and format, the bad-input matrix, then (last test) promote / rollback
  under load and a tampered version refused;
- one per S3 test: the registry on the moto server, 2 worker processes, promote / rollback
  under load.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from pipeline import artifacts
from pipeline.cli import main
from pipeline.registry import promote, rollback
from pipeline.serve import (
    ServeConfig,
    count_unseen,
    is_loopback,
    load_version,
    parse_size,
    security_warnings,
)
from tests.pipeline import test_score

#: test_score's fixture (module-scoped here too): two real runs of the demo model, the second
#: current; and its helpers
trained = test_score.trained
loaded, demo_frame = test_score.loaded, test_score.demo_frame

pytestmark = pytest.mark.integration

TOKEN = "s3cr3t-" + uuid.uuid4().hex
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 2 * 10**6
MAX_ROWS = 2000
IDS = ["application_id", "customer_id"]


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def running(args: list[str], log: Path, env: dict[str, str] | None = None
            ) -> Iterator[SimpleNamespace]:
    """``mlpipe serve ARGS --port 0`` in its own process; yields its URL once /health answers.
    Stopped with SIGTERM (graceful: in-flight requests finish, the prediction log flushes)."""
    import httpx

    command = [sys.executable, "-m", "pipeline.cli", "serve", *args, "--port", "0"]
    with log.open("w") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None:
            found = re.search(r"serving run \S+ .* at (http://127\.0\.0\.1:\d+)", log.read_text())
            url = found.group(1) if found else None
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield SimpleNamespace(url=url, proc=proc, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def records(frame: pd.DataFrame) -> list[dict]:
    """Rows as JSON-able records (missing -> None; floats keep every bit through json)."""
    return json.loads(json.dumps(frame.astype(object).where(frame.notna(), None)
                                 .to_dict(orient="records")))


def split(frame: pd.DataFrame) -> dict:
    doc = frame.astype(object).where(frame.notna(), None).to_dict(orient="split")
    doc.pop("index")
    return doc


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, value = line.rsplit(" ", 1)
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', head))
        if head.split("{")[0] == name and all(found.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


def wait_for(condition: Callable[[], object], what: str, timeout: float = 60) -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def frame_of(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame.from_records(rows)


@pytest.fixture(scope="module")
def rows(demo_dir: Path) -> pd.DataFrame:
    """The demo data without its target and timestamp (what a client sends)."""
    return demo_frame(demo_dir).drop(columns=["default", "applied_at"])


@pytest.fixture(scope="module")
def root(trained: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file:// copy of the registry: the served model, promoted and rolled back here."""
    out = tmp_path_factory.mktemp("serve") / "registry"
    shutil.copytree(trained.root, out)
    return out


@pytest.fixture(scope="module")
def log_bucket(s3_server: str) -> str:
    """A bucket name for the prediction log, *not created yet*: writes fail (and are retried)
    until the log test creates it."""
    return f"predictions-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def server(root: Path, log_bucket: str, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[SimpleNamespace]:
    import httpx

    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    args = [str(root / "models" / "demo"), "--poll", "0.2", "--token-env", "MLPIPE_TEST_TOKEN",
            "--batch-wait-ms", "20", "--max-body", str(MAX_BODY), "--max-rows", str(MAX_ROWS),
            "--log-to", f"s3://{log_bucket}/predictions/demo", "--log-every", "0.3"]
    with running(args, log, env={"MLPIPE_TEST_TOKEN": TOKEN}) as srv:
        with httpx.Client(base_url=srv.url, headers=HEADERS, timeout=60) as http:
            srv.http = http
            yield srv


# --------------------------------------------------------------------------- endpoints


def test_predictions_equal_mlpipe_score_output(client, trained: SimpleNamespace,
                                               server: SimpleNamespace, rows: pd.DataFrame,
                                               demo_dir: Path, tmp_path: Path) -> None:
    from pipeline.scoring import score_to

    out = tmp_path / "scored"
    score_to(trained.model_url, str(demo_dir), str(out), id_columns=IDS, client=client)
    scored = (pd.concat([pd.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))])
              .set_index("application_id").sort_index())
    for start in range(0, 5000, 1000):  # 1,000-row requests: the thread-pool path
        chunk = rows.iloc[start:start + 1000]
        r = server.http.post("/invocations", json={"dataframe_split": split(chunk)})
        assert r.status_code == 200, r.text
        assert r.headers["x-mlpipe-run-id"] == trained.second.run_id
        got = pd.DataFrame(r.json()["predictions"]).set_index("application_id")
        want = scored.loc[chunk["application_id"]]
        assert list(got.columns) == ["customer_id", "label", "proba"]
        assert (got["customer_id"] == want["customer_id"]).all()
        assert (got["label"].to_numpy() == want["label"].to_numpy()).all()
        assert (got["proba"].to_numpy() == want["proba"].to_numpy()).all()  # exactly


def test_every_request_format_gives_the_same_predictions(
        trained: SimpleNamespace, server: SimpleNamespace, rows: pd.DataFrame) -> None:
    chunk = rows.iloc[100:140]
    model = loaded(trained.second.run_url)
    want = model.predict_frame(chunk)
    recs = records(chunk)
    features = [c for c in chunk.columns if c not in IDS]
    bodies = {
        "dataframe_split": {"json": {"dataframe_split": split(chunk)}},
        "dataframe_records": {"json": {"dataframe_records": recs}},
        "instances": {"json": {"instances": recs}},
        "inputs (columns)": {"json": {"inputs": {c: [r[c] for r in recs] for c in recs[0]}}},
        "csv": {"content": chunk.to_csv(index=False), "headers": {"Content-Type": "text/csv"}},
    }
    for name, body in bodies.items():
        r = server.http.post("/invocations", **body)
        assert r.status_code == 200, (name, r.text)
        got = r.json()["predictions"]
        assert [p["label"] for p in got] == want["label"].tolist(), name
        assert [p["proba"] for p in got] == want["proba"].tolist(), name  # exactly
        assert [p["application_id"] for p in got] == chunk["application_id"].tolist(), name
    # the typed endpoint: every input column, strictly typed
    typed = [{c: r[c] for c in features} for r in recs]
    r = server.http.post("/predict", json={"rows": typed})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["run_id"] == trained.second.run_id == r.headers["x-mlpipe-run-id"]
    assert [p["proba"] for p in doc["predictions"]] == want["proba"].tolist()
    # single rows: through the micro-batcher, concurrently
    singles = [{"dataframe_records": [rec]} for rec in recs[:16]]
    before = server.http.get("/metrics").text
    answers: list = [None] * len(singles)
    barrier = threading.Barrier(len(singles))

    def one(i: int) -> None:
        barrier.wait()
        answers[i] = server.http.post("/invocations", json=singles[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(singles))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [a.status_code for a in answers] == [200] * len(singles)
    assert [a.json()["predictions"][0]["proba"] for a in answers] == \
        want["proba"].tolist()[:16]
    after = server.http.get("/metrics").text
    assert metric(after, "mlpipe_serve_batched_requests_total") - \
        metric(before, "mlpipe_serve_batched_requests_total") == len(singles)
    batches = metric(after, "mlpipe_serve_batches_total") - \
        metric(before, "mlpipe_serve_batches_total")
    assert 1 <= batches <= len(singles)


def test_model_health_metrics_docs(trained: SimpleNamespace, server: SimpleNamespace) -> None:
    http = server.http
    assert http.get("/health").json() == {"status": "ok"}
    assert http.get("/ready").json() == {"ready": True, "run_id": trained.second.run_id}
    assert http.get("/ping").status_code == 200 and "mlpipe" in http.get("/version").json()
    info = http.get("/model").json()
    model = loaded(trained.second.run_url)
    assert info["run_id"] == trained.second.run_id and info["follows"] is True
    assert (info["family"], info["task"]) == ("xgboost", "binary")
    assert info["headline"]["roc_auc"] > 0.5 and info["loaded_at"]
    assert list(info["schema"]["columns"]) == model.feature_columns
    assert info["schema"]["outputs"] == ["label", "proba"] and info["refused"] == []
    text = http.get("/metrics").text
    assert "# TYPE mlpipe_serve_request_seconds histogram" in text
    assert metric(text, "mlpipe_serve_model_info", run_id=trained.second.run_id) == 1
    assert metric(text, "mlpipe_serve_requests_total", endpoint="/health", code="200") >= 1
    assert metric(text, "mlpipe_serve_request_seconds_count", endpoint="/health") >= 1
    assert http.get("/docs").status_code == 200
    spec = http.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    row = schemas["Row"]
    assert set(model.feature_columns) <= set(row["properties"])
    assert set(row["required"]) == set(model.feature_columns)
    assert row["properties"]["income"]["anyOf"][0]["type"] == "number"
    assert row["properties"]["state"]["anyOf"][0]["type"] == "string"
    assert {"label", "proba"} <= set(schemas["Prediction"]["properties"])
    assert spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert "text/csv" in spec["paths"]["/invocations"]["post"]["requestBody"]["content"]


def test_token_is_required_everywhere_but_health_and_never_shown(
        server: SimpleNamespace) -> None:
    import httpx

    for path in ("/model", "/metrics", "/ready", "/openapi.json", "/docs"):
        assert httpx.get(server.url + path).status_code == 401, path
        assert httpx.get(server.url + path, headers={"Authorization": "Bearer nope"}
                         ).status_code == 401, path
    r = httpx.post(server.url + "/invocations", json={"dataframe_records": []})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(server.url + "/health").status_code == 200
    assert httpx.get(server.url + "/ready", headers={"Authorization": f"bearer {TOKEN}"}
                     ).status_code == 200
    assert server.http.post("/invocations", json={"dataframe_records": []}).json() == \
        {"predictions": []}
    for path in ("/model", "/metrics", "/openapi.json"):
        assert TOKEN not in server.http.get(path).text
    assert TOKEN not in server.log.read_text()
    assert metric(server.http.get("/metrics").text, "mlpipe_serve_errors_total",
                  kind="unauthorized") >= 11


def test_bad_input_is_refused_and_costs_nothing(trained: SimpleNamespace,
                                                server: SimpleNamespace,
                                                rows: pd.DataFrame) -> None:
    http = server.http
    chunk = rows.iloc[:3]
    recs = records(chunk)
    features = [c for c in chunk.columns if c not in IDS]

    def with_value(column: str, row: int, value: object) -> list[dict]:
        out = [dict(r) for r in recs]
        out[row][column] = value
        return out

    bad_split = split(chunk)
    bad_split["data"][1] = bad_split["data"][1][:-1]
    bad_csv = chunk.astype({"income": object})
    bad_csv.iloc[2, bad_csv.columns.get_loc("income")] = "lots"
    big = b'{"dataframe_records": [' + b"0," * (MAX_BODY // 2) + b"0]}"
    cases = [  # (what, request, status, words the message must hold)
        ("missing column", dict(json={"dataframe_records": [
            {k: v for k, v in r.items() if k != "income"} for r in recs]}),
         422, ["'income'"]),
        ("not a number", dict(json={"dataframe_records": with_value("income", 2, "n/a")}),
         422, ["'income'", "row 2", "'n/a'"]),
        ("too big a number", dict(json={"dataframe_records": with_value("age", 1, 10**400)}),
         422, ["'age'", "row 1"]),
        ("a list as a level", dict(json={"dataframe_records": with_value("state", 1, ["CA"])}),
         422, ["'state'", "row 1"]),
        ("split row too short", dict(json={"dataframe_split": bad_split}), 422, ["row 1"]),
        ("csv: not a number", dict(content=bad_csv.to_csv(index=False),
                                   headers={"Content-Type": "text/csv"}),
         422, ["'income'", "row 2", "lots"]),
        ("csv: malformed", dict(content="a,b\n1,2\n3,4,5,6,7\n",
                                headers={"Content-Type": "text/csv"}),
         400, ["CSV"]),
        ("malformed json", dict(content=b'{"dataframe_records": [{"income": 1,}',
                                headers={"Content-Type": "application/json"}), 400, ["JSON"]),
        ("deeply nested json", dict(content=b"[" * 100_000 + b"]" * 100_000,
                                    headers={"Content-Type": "application/json"}),
         400, ["JSON"]),
        ("unknown key", dict(json={"data": recs}), 422, ["dataframe_split"]),
        ("not an object", dict(json=[1, 2]), 422, ["JSON object"]),
        ("unsupported type", dict(content=b"x", headers={"Content-Type": "text/plain"}),
         415, ["text/plain"]),
        ("body over --max-body", dict(content=big, headers={"Content-Type":
                                                            "application/json"}),
         413, ["--max-body"]),
        ("rows over --max-rows", dict(json={"dataframe_records": [{}] * (MAX_ROWS + 1)}),
         413, ["--max-rows", f"{MAX_ROWS + 1:,}"]),
    ]
    typed = [{c: r[c] for c in features} for r in recs]
    typed_cases = [
        ("typed: text for a number", [dict(t, income="52000") if i == 1 else t
                                      for i, t in enumerate(typed)], 422,
         ["'income'", "row 1"]),
        ("typed: missing column", [{k: v for k, v in t.items() if k != "state"}
                                   for t in typed], 422, ["'state'", "row 0"]),
        ("typed: unknown column", [dict(t, incme=1.0) for t in typed], 422,
         ["'incme'", "did you mean 'income'"]),
        ("typed: number for a level", [dict(t, state=7) for t in typed], 422, ["'state'"]),
    ]
    before = http.get("/metrics").text
    for what, request, status, words in cases:
        r = http.post("/invocations", **request)
        assert r.status_code == status, (what, r.status_code, r.text)
        assert all(w in r.json()["message"] for w in words), (what, r.json())
    for what, body, status, words in typed_cases:
        r = http.post("/predict", json={"rows": body})
        assert r.status_code == status, (what, r.status_code, r.text)
        assert all(w in r.json()["message"] for w in words), (what, r.json())
    r = http.post("/invocations", json={"dataframe_records": with_value("state", 0, {"a": 1})})
    assert (r.status_code, r.json()["column"], r.json()["row"]) == (422, "state", 0)

    # missing values and infinities follow the model's policy, unseen levels are counted
    model = loaded(trained.second.run_url)
    odd = chunk.copy()
    odd["income"] = [np.nan, np.inf, -np.inf]
    odd["state"] = ["Atlantis", None, "Atlantis"]
    odd["employer"] = [None, "never-seen-employer", None]
    body = json.dumps({"dataframe_records": records(odd)})  # NaN as null, inf as Infinity
    assert "Infinity" in body and "NaN" not in body
    r = http.post("/invocations", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert [p["proba"] for p in r.json()["predictions"]] == \
        model.predict_frame(odd)["proba"].tolist()

    after = http.get("/metrics").text
    unseen = model.report(odd)["unseen_categories"]
    for column in ("state", "employer"):
        assert metric(after, "mlpipe_serve_unseen_categories_total", column=column) - \
            metric(before, "mlpipe_serve_unseen_categories_total", column=column) == \
            unseen[column] > 0
    for kind, n in (("missing_column", 2), ("bad_value", 7), ("malformed_json", 2),
                    ("malformed_csv", 1), ("body_too_large", 1), ("too_many_rows", 1),
                    ("unsupported_media_type", 1), ("bad_format", 3)):
        assert metric(after, "mlpipe_serve_errors_total", kind=kind) - \
            metric(before, "mlpipe_serve_errors_total", kind=kind) == n, kind
    # nothing cost the server: no 500, and the next good request is answered normally
    assert metric(after, "mlpipe_serve_requests_total", code="500") == 0
    assert http.get("/health").status_code == 200
    r = http.post("/invocations", json={"dataframe_records": recs})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 3


def test_unseen_counts_match_the_predictor_report(trained: SimpleNamespace,
                                                  rows: pd.DataFrame) -> None:
    from pipeline.serve import parse_invocations

    version = load_version(artifacts.open_bundle(trained.second.run_url))
    chunk = rows.iloc[:50].copy()
    chunk.loc[chunk.index[::3], "state"] = "Atlantis"
    chunk.loc[chunk.index[::4], "employer"] = "nobody-we-know"
    chunk.loc[chunk.index[::5], "purpose"] = None
    parsed = parse_invocations(json.dumps({"dataframe_records": records(chunk)}).encode(),
                               "application/json", version, 100)
    want = {c: n for c, n in version.predictor.report(chunk)["unseen_categories"].items() if n}
    assert count_unseen(version, parsed) == want and want["state"] == 17


def test_prediction_log_is_retried_then_lands_on_s3(trained: SimpleNamespace,
                                                    server: SimpleNamespace, rows: pd.DataFrame,
                                                    log_bucket: str) -> None:
    import s3fs

    chunk = rows.iloc[200:205]
    request_id = "log-check-" + uuid.uuid4().hex[:8]
    r = server.http.post("/invocations", json={"dataframe_records": records(chunk)},
                         headers={"X-Request-Id": request_id})
    assert r.status_code == 200
    # the bucket does not exist yet: writes fail, are counted, and the rows are kept
    wait_for(lambda: metric(server.http.get("/metrics").text,
                            "mlpipe_serve_log_write_failures_total") >= 2, "failed log writes")
    assert metric(server.http.get("/metrics").text, "mlpipe_serve_log_rows_buffered") >= 5
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(log_bucket)

    def logged() -> list[pd.DataFrame]:
        fs.invalidate_cache()
        parts = fs.glob(f"{log_bucket}/predictions/demo/date=*/part-*.parquet")
        frames = []
        for part in parts:
            with fs.open(part, "rb") as f:
                frames.append(pd.read_parquet(f))
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        if "__request_id" in frame and (frame["__request_id"] == request_id).sum() == 5:
            return [frame]
        return []

    [frame] = wait_for(logged, "the prediction log on S3")
    mine = frame[frame["__request_id"] == request_id].reset_index(drop=True)
    assert (mine["__run_id"] == trained.second.run_id).all()
    assert mine["application_id"].tolist() == chunk["application_id"].tolist()
    assert np.array_equal(mine["income"].to_numpy(), chunk["income"].to_numpy(),
                          equal_nan=True)
    assert mine["state"].tolist() == chunk["state"].astype(object).tolist()
    assert mine["__pred_proba"].tolist() == [p["proba"] for p in r.json()["predictions"]]
    assert mine["__pred_label"].tolist() == [p["label"] for p in r.json()["predictions"]]
    assert str(mine["__served_at"].dtype).startswith("datetime64")
    text = server.http.get("/metrics").text
    assert metric(text, "mlpipe_serve_log_rows_dropped_total") == 0
    assert metric(text, "mlpipe_serve_log_rows_written_total") >= 5


# --------------------------------------------------------------------------- small pieces


def test_prediction_log_keeps_failed_parts_and_bounds_them(tmp_path: Path) -> None:
    from pipeline.serve import LogEntry, Metrics, PredictionLog, Rows

    blocked = tmp_path / "log"
    blocked.write_text("a file where the log's directory should be: every write fails")
    metrics = Metrics()
    log = PredictionLog(str(blocked), every=3600, rows=10, metrics=metrics, max_rows_kept=25)

    def entry(i: int) -> LogEntry:
        rows = Rows(n=10, columns={"x": np.arange(10.0) + i, "c": np.array(["a"] * 10,
                                                                          dtype=object)},
                    ids={"id": list(range(i, i + 10))})
        return LogEntry("run-1", time.time(), f"r{i}", rows, {"proba": [0.5] * 10})

    log.add(entry(0))
    log.add(entry(10))
    assert log.flush() == 0 and metrics.counters["log_write_failures"] == 1
    log.add(entry(20))  # 30 rows would be waiting: over the bound, dropped and counted
    assert metrics.counters["log_rows_dropped"] == 10
    blocked.unlink()
    assert log.flush() == 20 and log.flush() == 0  # the kept part, then nothing
    log.add(entry(30))
    log.close()
    frame = pd.concat(pd.read_parquet(p) for p in sorted(blocked.glob("date=*/part-*.parquet")))
    assert sorted(frame["id"]) == [*range(0, 20), *range(30, 40)]
    assert set(frame.columns) == {"__served_at", "__run_id", "__request_id", "id", "x", "c",
                                  "__pred_proba"}
    assert metrics.counters["log_rows_written"] == 30


def test_settings_and_warnings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert (parse_size("10MB"), parse_size("2 KiB"), parse_size("1e6")) == (10**7, 2048, 10**6)
    with pytest.raises(ValueError, match="not a size"):
        parse_size("ten")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    model = str(tmp_path / "models" / "m")
    assert security_warnings(ServeConfig(model)) == []
    assert security_warnings(ServeConfig(model, host="0.0.0.0", token_env="T")) == []
    [warning] = security_warnings(ServeConfig(model, host="0.0.0.0"))
    assert "without a token" in warning
    config = ServeConfig(model, workers=3, batch_wait_ms=2)
    assert ServeConfig.from_json(config.to_json()) == config
    with pytest.raises(artifacts.BundleError, match="neither a run URL"):
        ServeConfig(str(tmp_path))

    # the CLI warns, then fails in one paragraph on a model that is not there
    code = main(["serve", model, "--host", "0.0.0.0", "--port", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "without a token" in err and "has no current version" in err
    assert "Traceback" not in err
    code = main(["serve", model, "--token-env", "MLPIPE_TEST_UNSET_VARIABLE"])
    err = capsys.readouterr().err
    assert code == 1 and "MLPIPE_TEST_UNSET_VARIABLE is not set" in err
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--poll", "--token-env", "--workers", "--batch-wait-ms", "--max-body",
                   "--max-rows", "--log-to", "/invocations", "/metrics"):
        assert option in out


# --------------------------------------------------------------------------- promote under load


class Load:
    """A bounded load loop: ``clients`` threads, each sending one-row requests in sequence over
    its own connection until stopped; every answer's status and run id is recorded, and its
    probability checked against what that run's model predicts for the row (``expected``)."""

    def __init__(self, url: str, body: dict, expected: dict[str, float], clients: int = 4,
                 headers: dict | None = None, limit: int = 20_000) -> None:
        self.url, self.body, self.headers, self.limit = url, body, headers or {}, limit
        self.expected = expected
        self.seen: list[list[str]] = [[] for _ in range(clients)]
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def _run(self, i: int) -> None:
        import httpx

        with httpx.Client(base_url=self.url, headers=self.headers, timeout=60) as http:
            while not self.stop.is_set() and len(self.seen[i]) < self.limit:
                try:
                    r = http.post("/invocations", json=self.body)
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                if r.status_code != 200 or len(r.json()["predictions"]) != 1:
                    self.failures.append(f"{r.status_code}: {r.text[:200]}")
                    continue
                run_id = r.headers["x-mlpipe-run-id"]
                if r.json()["predictions"][0]["proba"] != self.expected.get(run_id):
                    self.failures.append(f"the answer is not {run_id}'s: {r.text[:200]}")
                    continue
                self.seen[i].append(run_id)

    @property
    def requests(self) -> int:
        return sum(map(len, self.seen)) + len(self.failures)

    def settled_on(self, run_id: str, last: int = 5) -> bool:
        """Every client's last ``last`` answers came from ``run_id``."""
        return all(len(s) >= last and set(s[-last:]) == {run_id} for s in self.seen)

    def mark(self) -> list[int]:
        return [len(s) for s in self.seen]


def one_row_load(url: str, trained: SimpleNamespace, rows: pd.DataFrame,
                 headers: dict | None = None) -> Load:
    row = rows.iloc[:1]
    expected = {run.run_id: loaded(run.run_url).predict_frame(row)["proba"].iloc[0]
                for run in (trained.first, trained.second)}
    assert len(set(expected.values())) == 2  # the two versions answer differently
    return Load(url, {"dataframe_records": records(row)}, expected, headers=headers)


def swap_under_load(load: Load, change: Callable[[], object], run_id: str,
                    done: Callable[[], object] = lambda: True) -> None:
    """``change`` the registry while the load runs; wait until every client is answered by
    ``run_id`` and ``done()``, then for 10 more answers per client."""
    change()
    mark = load.mark()
    wait_for(lambda: load.settled_on(run_id) and done(), f"every client answered by {run_id}")
    wait_for(lambda: all(len(s) >= m + 10 for s, m in zip(load.seen, mark)), "more requests")


def tampered_version(root: str, run_id: str, name: str = "demo") -> str:
    """A complete new version (a copy of ``run_id``, its own manifest), made current, whose
    model file is then changed: the pointer and the manifest agree, the file does not."""
    source = artifacts.open_bundle(artifacts.join(root, "runs", run_id))
    new = f"{run_id}-tampered"
    manifest = artifacts.write_run(
        root, new, {f: source.read(f) for f in source.manifest["files"]},
        meta={k: source.manifest[k] for k in ("name", "task", "family", "headline")})
    fs, base = artifacts.filesystem(artifacts.join(root, "runs", new))
    data = bytearray(fs.cat_file(artifacts.join(base, "model.ubj")))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(artifacts.join(base, "model.ubj"), bytes(data))
    artifacts.set_current(root, name, new, manifest_sha256=manifest["_sha256"])
    return new


@pytest.mark.slow
def test_promote_and_rollback_under_load_on_s3(trained: SimpleNamespace,
                                               bucket: str, rows: pd.DataFrame,
                                               tmp_path: Path) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.put(trained.root + "/", f"{bucket}/mlpipe/", recursive=True)
    root = f"{bucket}/mlpipe"
    first, second = trained.first.run_id, trained.second.run_id
    args = [f"{root}/models/demo", "--poll", "0.2", "--workers", "2", "--no-access-log"]
    with running(args, tmp_path / "s3-server.log") as srv:
        def swapped(run_id: str, times: int) -> Callable[[], bool]:
            # both workers swapped (a client's connection stays with one of them)
            return lambda: srv.log.read_text().count(f"now serving run {run_id} ") == times

        with one_row_load(srv.url, trained, rows) as load:
            wait_for(lambda: load.settled_on(second), "the first answers")
            swap_under_load(load, lambda: rollback(root, "demo"), first, swapped(first, 2))
            swap_under_load(load, lambda: promote(root, "demo", second), second,
                            swapped(second, 2))
    print(f"S3, 2 workers: {load.requests} requests, {len(load.failures)} failed, run ids "
          f"{sorted(set().union(*load.seen))}")
    assert load.failures == []
    assert set().union(*load.seen) == {first, second}


@pytest.mark.slow
def test_promote_rollback_and_a_tampered_version_under_load(
        trained: SimpleNamespace, server: SimpleNamespace, root: Path,
        rows: pd.DataFrame) -> None:
    """Last in this file: it leaves the registry's pointer on a tampered version."""
    first, second = trained.first.run_id, trained.second.run_id
    with one_row_load(server.url, trained, rows, HEADERS) as load:
        wait_for(lambda: load.settled_on(second), "the first answers")
        swap_under_load(load, lambda: rollback(str(root), "demo"), first)
        swap_under_load(load, lambda: promote(str(root), "demo", second), second)
        bad = tampered_version(str(root), second)
        wait_for(lambda: server.http.get("/model").json()["refused"], "the refusal")
        mark = load.mark()
        wait_for(lambda: all(len(s) >= m + 20 for s, m in zip(load.seen, mark)),
                 "requests after the refusal")
    print(f"file://, 1 worker: {load.requests} requests, {len(load.failures)} failed, run ids "
          f"{sorted(set().union(*load.seen))}")
    assert load.failures == []
    assert set().union(*load.seen) == {first, second}
    for seen in load.seen:  # one client's answers: second, then first, then second; no mixing
        changes = [i for i in range(1, len(seen)) if seen[i] != seen[i - 1]]
        assert len(changes) == 2 and seen[0] == seen[-1] == second, changes
    [refused] = server.http.get("/model").json()["refused"]
    assert refused["run_id"] == bad and "does not match its manifest" in refused["reason"]
    assert server.http.get("/model").json()["run_id"] == second
    text = server.http.get("/metrics").text
    assert metric(text, "mlpipe_serve_model_refused_total") == 1
    assert metric(text, "mlpipe_serve_model_swaps_total") == 2
    assert f"refused version {bad}" in server.log.read_text()
