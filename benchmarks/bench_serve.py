"""``mlpipe serve`` against the same Predictor called in-process on the same rows.

The model: the demo job (``examples/demo.yaml``: clipping, target and frequency encodings,
feature kernels, 400 XGBoost rounds with early stopping) trained on 100,000 generated rows on a
LocalCluster of 2 single-threaded workers; ``MLPIPE_BENCH_MODEL=<model or run URL>`` uses an
existing bundle instead. The rows: 1,000 generated demo rows (another seed), without the target.

The server: ``mlpipe serve RUN_URL --port 0`` in its own process, with its defaults (1 worker,
one prediction thread per CPU, the access log on), and a second one with ``--batch-wait-ms 2``
for the small requests at concurrency 16. The client: one ``http.client`` keep-alive
connection per thread, bodies serialized before the clock starts (MLflow's
``dataframe_split``), each answer checked (status, row count); every server's answers to the 1,000 rows are first compared with
the in-process predictions, exactly. Client and servers share the machine's cores. The floor
and the servers take turns in rounds (:data:`ROUNDS`), so that all of them see the same load
on a shared machine.

Measured, for 1-row and 1,000-row requests, at concurrency 1 and 16: client-observed latency
p50/p99, the server's own time per request (its ``Server-Timing`` header: from the handler's
start, headers parsed, to the answer serialized), and throughput; against the floor measured in the same
run: ``Predictor.predict_frame`` on the same rows, in this process, from 1 and 16 threads.

Goals (issue 15): 1-row p50 within 1.5 ms of the in-process call; 1,000-row throughput at least
80 % of in-process.

MLflow: when ``MLPIPE_BENCH_MLFLOW`` names the ``python`` of a separate environment with MLflow
(``python -m venv /tmp/mlflow && /tmp/mlflow/bin/pip install mlflow-skinny``: about 30 s),
``mlflow models serve --env-manager local`` serves a pyfunc whose ``predict`` is the same
``Predictor.predict_frame`` (so both servers do the same work), given the same request bodies.
That environment imports mlpipe and its libraries from this one (``PYTHONPATH``); MLflow and
its own dependencies come from there. Without it the table says MLflow was not run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "demo.yaml"
TRAIN_ROWS = 100_000
REQUESTS = {1: 600, 1000: 60}  # per concurrency level and target, at scale 1.0
ROUNDS = 5  # the in-process floor and each server take turns, this many times


def run(scale: float = 1.0) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="mlpipe-bench-serve-"))
    try:
        model_url = os.environ.get("MLPIPE_BENCH_MODEL") or _train(work, scale)
        return _measure(model_url, work, scale)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- model and rows


def _train(work: Path, scale: float) -> str:
    import cluster
    from pipeline.config import load_job
    from pipeline.demo import make_partition
    from pipeline.workflow import run as run_job

    rows = max(20_000, int(TRAIN_ROWS * min(scale, 1.0)))
    data = work / "train"
    data.mkdir()
    for i in range(4):
        make_partition(i, rows // 4, seed=0).to_parquet(data / f"part-{i:05d}.parquet",
                                                        index=False)
    start = time.perf_counter()
    with cluster.connect({"n_workers": 2, "threads_per_worker": 1}) as client:
        result = run_job(load_job(EXAMPLE, [f"data.train={data}", f"output={work / 'mlpipe'}"]),
                         client=client)
    print(f"   trained the demo model on {rows:,} rows in {time.perf_counter() - start:.0f} s",
          flush=True)
    return result.run_url


def _rows(n: int = 1000) -> Any:
    from pipeline.demo import make_partition

    return make_partition(7, n, seed=1).drop(columns=["default", "applied_at"])


def _split_body(frame: Any) -> bytes:
    doc = frame.astype(object).where(frame.notna(), None).to_dict(orient="split")
    doc.pop("index")
    return json.dumps({"dataframe_split": doc}).encode()


# --------------------------------------------------------------------------- measuring


def _percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def _drive(call: Callable[[int], float | None], n: int, concurrency: int
           ) -> tuple[list[float], list[float], float]:
    """``n`` calls of ``call(i)`` from ``concurrency`` threads: (latencies, server times,
    wall seconds). ``call`` returns the server's own time in seconds, or None."""
    latencies: list[float] = []
    server: list[float] = []
    lock = threading.Lock()
    counter = iter(range(n))
    barrier = threading.Barrier(concurrency + 1)

    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        while not errors:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            start = time.perf_counter()
            try:
                own = call(i)
            except BaseException as exc:  # reported by the caller, not lost in a thread
                errors.append(exc)
                return
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                if own is not None:
                    server.append(own)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return latencies, server, time.perf_counter() - start


@contextlib.contextmanager
def _server(model_url: str, work: Path, *extra: str) -> Iterator[str]:
    import httpx

    log = work / f"server-{len(list(work.glob('server-*')))}.log"
    command = [sys.executable, "-m", "pipeline.cli", "serve", model_url, "--port", "0",
               "--poll", "0", *extra]
    with log.open("w") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 180
        url = None
        while url is None or not _up(httpx, url):
            found = re.search(r"at (http://127\.0\.0\.1:\d+)", log.read_text())
            url = found.group(1) if found else None
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlpipe serve did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _up(httpx: Any, url: str | None) -> bool:
    if url is None:
        return False
    try:
        return httpx.get(f"{url}/ready", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def _client_call(url: str, bodies: list[bytes], rows: int,
                 clients: dict[tuple[str, int], Any]) -> Callable[[int], float | None]:
    """POST ``/invocations`` over one keep-alive connection per thread and server, with the
    standard library's client (httpx costs ~0.5 ms more per request, which would be counted
    against the server)."""
    import http.client
    from urllib.parse import urlsplit

    where = urlsplit(url)
    headers = {"Content-Type": "application/json"}

    def call(i: int) -> float | None:
        key = (url, threading.get_ident())
        for attempt in (1, 2):
            connection = clients.get(key)
            if connection is None:
                connection = clients[key] = http.client.HTTPConnection(
                    where.hostname, where.port, timeout=120)
            try:
                connection.request("POST", "/invocations", body=bodies[i % len(bodies)],
                                   headers=headers)
                response = connection.getresponse()
                data = response.read()
                break
            except (http.client.HTTPException, ConnectionError):
                # the server closed a connection idle past its keep-alive timeout (5 s) while
                # the other targets had their turn: connect again, once
                connection.close()
                clients.pop(key, None)
                if attempt == 2:
                    raise
        if response.status != 200 or data.count(b'"proba"') != rows:
            raise AssertionError(f"{response.status}: {data[:300]!r}")
        timing = response.getheader("Server-Timing") or ""
        return float(timing.split("dur=")[1]) / 1000 if "dur=" in timing else None

    return call


def _measure(model_url: str, work: Path, scale: float) -> list[dict]:
    from pipeline import load_model

    predictor = load_model(model_url)
    frame = _rows()
    singles = [frame.iloc[i:i + 1] for i in range(len(frame))]
    counts = {size: max(ROUNDS * (4 if size == 1 else 2), int(n * scale))
              for size, n in REQUESTS.items()}
    inputs = {1: singles, 1000: [frame]}
    bodies = {1: [_split_body(s) for s in singles], 1000: [_split_body(frame)]}
    python = os.environ.get("MLPIPE_BENCH_MLFLOW")
    with contextlib.ExitStack() as stack:
        urls = {"default": stack.enter_context(_server(model_url, work)),
                "batched": stack.enter_context(_server(model_url, work, "--batch-wait-ms", "2"))}
        mlflow_note = "not run: MLPIPE_BENCH_MLFLOW is not set (the python of a separate " \
                      "environment with mlflow)"
        if python:
            try:
                urls["mlflow"] = stack.enter_context(_mlflow_server(python, model_url, work))
            except Exception as exc:  # optional: say why it is missing
                mlflow_note = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
        want = predictor.predict_frame(frame)["proba"].tolist()
        for label, url in urls.items():  # every server answers what the Predictor answers
            got = _post(url, bodies[1000][0])
            if [p["proba"] for p in got["predictions"]] != want:
                raise AssertionError(f"{label}: the predictions differ from in-process ones")
        measured: dict[tuple[str, int, int], tuple[list[float], list[float], float]] = {}
        for size in (1, 1000):
            for concurrency in (1, 16):
                targets: dict[str, Callable[[int], float | None]] = {
                    "floor": _in_process(predictor, inputs[size])}
                clients: dict[int, Any] = {}
                for label, url in urls.items():
                    if label != "batched" or (size, concurrency) == (1, 16):
                        targets[label] = _client_call(url, bodies[size], size, clients)
                for call in targets.values():
                    _drive(call, 2 * concurrency, concurrency)  # warm-up: connections, threads
                # rounds, each target in turn: all of them see the same load on the machine
                per_round = max(concurrency, counts[size] // ROUNDS)
                for _ in range(ROUNDS):
                    for label, call in targets.items():
                        lat, own, wall = _drive(call, per_round, concurrency)
                        before = measured.get((label, size, concurrency), ([], [], 0.0))
                        measured[(label, size, concurrency)] = (
                            before[0] + lat, before[1] + own, before[2] + wall)
                for http in clients.values():
                    http.close()
    rows = _rows_of(measured)
    if "mlflow" not in urls:
        rows.append(_mlflow_row(mlflow_note))
    return rows


def _in_process(predictor: Any, inputs: list) -> Callable[[int], None]:
    def call(i: int) -> None:
        predictor.predict_frame(inputs[i % len(inputs)])

    return call


def _post(url: str, body: bytes) -> dict:
    import httpx

    return httpx.post(f"{url}/invocations", content=body, timeout=120,
                      headers={"Content-Type": "application/json"}).json()


def _rows_of(measured: dict) -> list[dict]:
    out = []
    for (label, size, concurrency), (lat, own, wall) in measured.items():
        if label == "floor":
            continue
        n = len(lat)
        base_lat, _, base_wall = measured[("floor", size, concurrency)]
        what = f"{size:,}-row requests, concurrency {concurrency}"
        p50, p99 = _percentiles(lat)
        rate = size * n / wall
        if label == "mlflow":  # ours against MLflow's server, same requests, same rounds
            ours_lat, _, ours_wall = measured[("default", size, concurrency)]
            common = {"benchmark": "serve", "size": f"{n} requests", "goal": "-", "met": None,
                      "baseline_name": "mlflow models serve (pyfunc: the same Predictor)"}
            out.append({**common, "operation": f"vs MLflow: client p50, {what}",
                        "ours": _percentiles(ours_lat)[0], "baseline": p50, "unit": "ms",
                        "ratio": _percentiles(ours_lat)[0] / p50})
            ours_rate = size * n / ours_wall
            out.append({**common, "operation": f"vs MLflow: throughput, {what}",
                        "ours": ours_rate, "baseline": rate, "unit": "rows/s",
                        "ratio": ours_rate / rate})
            continue
        if label == "batched":
            what += ", --batch-wait-ms 2"
        own50, own99 = _percentiles(own) if own else (float("nan"), float("nan"))
        b50, b99 = _percentiles(base_lat)
        base_rate = size * n / base_wall
        common = {"benchmark": "serve", "size": f"{n} requests", "goal": "-", "met": None,
                  "baseline_name": f"Predictor.predict_frame in-process, {concurrency} "
                                   f"thread{'s' if concurrency > 1 else ''}"}
        latency = {**common, "operation": f"client p50 latency, {what}", "ours": p50,
                   "baseline": b50, "unit": "ms", "ratio": p50 / b50}
        if (size, concurrency, label) == (1, 1, "default"):
            latency.update(goal="<= in-process + 1.5 ms", met=p50 - b50 <= 1.5)
        out.append(latency)
        out.append({**common, "operation": f"client p99 latency, {what}", "ours": p99,
                    "baseline": b99, "unit": "ms", "ratio": p99 / b99})
        out.append({**common, "operation": f"server-side p50 latency, {what}", "ours": own50,
                    "baseline": b50, "unit": "ms", "ratio": own50 / b50})
        out.append({**common, "operation": f"server-side p99 latency, {what}", "ours": own99,
                    "baseline": b99, "unit": "ms", "ratio": own99 / b99})
        throughput = {**common, "operation": f"throughput, {what}", "ours": rate,
                      "baseline": base_rate, "unit": "rows/s", "ratio": rate / base_rate}
        if size == 1000:
            throughput.update(goal=">= 0.8x", met=rate / base_rate >= 0.8)
        out.append(throughput)
    return out


_MLFLOW_MODEL = """
import sys

import mlflow.pyfunc


class MlpipeModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from pipeline import load_model

        self.model = load_model(context.model_config["url"])

    def predict(self, context, model_input, params=None):
        return self.model.predict_frame(model_input)


mlflow.pyfunc.save_model(sys.argv[2], python_model=MlpipeModel(),
                         model_config={"url": sys.argv[1]})
"""


@contextlib.contextmanager
def _mlflow_server(python: str, model_url: str, work: Path) -> Iterator[str]:
    import site
    import socket

    import httpx

    here = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(here), *site.getsitepackages()]),
           "PATH": os.pathsep.join([str(Path(python).parent), os.environ.get("PATH", "")])}
    script = work / "save_mlflow_model.py"
    script.write_text(_MLFLOW_MODEL)
    subprocess.run([python, str(script), model_url, str(work / "mlflow-model")], env=env,
                   check=True, capture_output=True, timeout=300)
    with socket.socket() as probe:  # mlflow models serve takes no port 0
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = work / "mlflow.log"
    with log.open("w") as sink:
        proc = subprocess.Popen([python, "-m", "mlflow", "models", "serve", "-m",
                                 str(work / "mlflow-model"), "--env-manager", "local", "-h",
                                 "127.0.0.1", "-p", str(port)], stdout=sink,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/ping", timeout=5).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow models serve did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # it runs uvicorn in a child process
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _mlflow_row(note: str) -> dict:
    return {"benchmark": "serve", "operation": "mlflow models serve, same XGBoost model",
            "size": "-", "ours": "-", "baseline": "-", "baseline_name": note, "unit": "-",
            "ratio": "-", "goal": "-", "met": None}
