"""Real ``dask scheduler`` / ``dask worker`` subprocesses on 127.0.0.1, plain or TLS.

Every process a test starts (and every worker process a nanny spawns or restarts) is stopped
at teardown within a hard deadline, and the test fails if any of them outlives it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
#: environment variable set on every process of one test cluster (and inherited by workers)
TAG = "MLPIPE_TEST_CLUSTER"


def lean_job(train: str, output: str, **extra: object) -> dict:
    """The demo job cut to what the cluster tests exercise: loading, two feature kernels, a
    small XGBoost model (fast on a loaded 2-core machine)."""
    from tests.conftest import demo_job

    job = demo_job(train, output,
                   preprocess={"encode": {"branch": {"method": "frequency"}},
                               "default_encoding": "ordinal"},
                   features=[{"kernel": "log1p", "columns": ["income", "loan_amount"]},
                             {"kernel": "count", "columns": ["state"]}],
                   models={"xgboost": {"n_estimators": 10, "max_depth": 4}})
    job.update(extra)
    return job


@dataclass
class Certs:
    """A temporary CA and one certificate/key it signed (for 127.0.0.1 and localhost)."""

    ca_file: str
    cert_file: str
    key_file: str

    def cli_args(self) -> list[str]:
        return ["--tls-ca-file", self.ca_file, "--tls-cert", self.cert_file,
                "--tls-key", self.key_file]

    def security(self) -> object:
        from distributed.security import Security

        return Security(tls_ca_file=self.ca_file, tls_client_cert=self.cert_file,
                        tls_client_key=self.key_file, require_encryption=True)

    def block(self) -> dict[str, str]:
        """The job's ``cluster.security`` block."""
        return {"ca_file": self.ca_file, "cert_file": self.cert_file, "key_file": self.key_file}


def make_certs(directory: Path) -> Certs:
    """Generate a CA and a leaf certificate (server and client auth) with ``cryptography``."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("mlpipe test CA"))
          .issuer_name(name("mlpipe test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1"))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    paths = Certs(str(directory / "ca.pem"), str(directory / "cert.pem"),
                  str(directory / "key.pem"))
    Path(paths.ca_file).write_bytes(ca.public_bytes(pem))
    Path(paths.cert_file).write_bytes(cert.public_bytes(pem))
    Path(paths.key_file).write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(paths.key_file, 0o600)
    return paths


@dataclass
class ProcCluster:
    """A scheduler subprocess and ``dask worker`` subprocesses (each a nanny + its workers)."""

    address: str
    directory: Path
    env: dict[str, str]
    certs: Certs | None
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen] = field(default_factory=list)
    _seen: set = field(default_factory=set)

    def add_workers(self, n: int = 1, nthreads: int = 1) -> subprocess.Popen:
        """One ``dask worker`` command (a nanny per worker) with ``n`` worker processes."""
        log = (self.directory / f"worker-{len(self.workers)}.log").open("w")
        proc = subprocess.Popen(
            [str(BIN / "dask"), "worker", self.address, "--host", "127.0.0.1",
             "--nworkers", str(n), "--nthreads", str(nthreads), "--no-dashboard",
             "--local-directory", str(self.directory / "workers"),
             *(self.certs.cli_args() if self.certs else [])],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=str(ROOT))
        log.close()
        self.workers.append(proc)
        return proc

    def client(self, **kwargs: object) -> object:
        from distributed import Client

        security = self.certs.security() if self.certs else None
        return Client(self.address, security=security, timeout="30s", **kwargs)

    def wait_for_workers(self, n: int, timeout: float = 60) -> None:
        with self.client() as c:
            c.wait_for_workers(n, timeout=timeout)

    def processes(self) -> set:
        """Every process we started and their descendants (restarted workers included)."""
        import psutil

        for proc in [self.scheduler, *self.workers]:
            try:
                parent = psutil.Process(proc.pid)
                self._seen.add(parent)
                self._seen.update(parent.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        return set(self._seen)

    def tagged(self) -> set:
        """Live processes carrying this cluster's environment tag (orphans included)."""
        import psutil

        found = set()
        for p in psutil.process_iter():
            try:
                if p.environ().get(TAG) == self.env[TAG]:
                    found.add(p)
            except (psutil.Error, OSError):
                pass
        return found

    def stop(self, timeout: float = 30) -> list[str]:
        """SIGTERM (clean shutdown), then SIGKILL after ``timeout``; returns survivors."""
        import psutil

        everything = self.processes() | self.tagged()
        deadline = time.monotonic() + timeout
        # workers first, while the scheduler still answers their goodbyes, then the scheduler
        for group in (self.workers, [self.scheduler]):
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in group:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        _, alive = psutil.wait_procs(list(everything | self.tagged()),
                                     timeout=max(0.1, deadline - time.monotonic()))
        survivors = []
        for p in alive:
            try:
                survivors.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
                p.kill()
            except psutil.NoSuchProcess:
                pass
        return survivors

    def log(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}"
                         for p in sorted(self.directory.glob("*.log")))


def start_scheduler(directory: Path, *, env: dict[str, str] | None = None,
                    certs: Certs | None = None) -> ProcCluster:
    directory.mkdir(parents=True, exist_ok=True)
    scheduler_file = directory / "scheduler.json"
    from cluster.settings import DEFAULTS

    # what cluster.connect gives the workers of a LocalCluster; PYTHONPATH: test plugins
    # pickled by reference must import on the workers; TAG: find every process we caused
    spawn = {k.rsplit(".", 1)[1]: str(v) for k, v in DEFAULTS.items()
             if k.startswith("distributed.nanny.pre-spawn-environ.")}
    full_env = {**os.environ, **spawn, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT),
                TAG: uuid.uuid4().hex, **(env or {})}
    log = (directory / "scheduler.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
         "--no-dashboard", "--scheduler-file", str(scheduler_file),
         *(["--protocol", "tls", *certs.cli_args()] if certs else [])],
        stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=str(ROOT))
    log.close()
    deadline = time.monotonic() + 60
    while not (scheduler_file.exists() and scheduler_file.read_text().strip()):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("dask scheduler did not start:\n"
                               + (directory / "scheduler.log").read_text())
        time.sleep(0.05)
    address = json.loads(scheduler_file.read_text())["address"]
    return ProcCluster(address, directory, full_env, certs, proc)


@pytest.fixture
def proc_cluster(tmp_path: Path) -> Iterator[Callable[..., ProcCluster]]:
    """Factory: ``proc_cluster(workers=2, nthreads=1, env=..., certs=...)`` -> ProcCluster.

    At teardown every process is stopped (hard deadline) and none may survive.
    """
    started: list[ProcCluster] = []

    def start(workers: int = 1, nthreads: int = 1, env: dict[str, str] | None = None,
              certs: Certs | None = None, wait: bool = True) -> ProcCluster:
        pc = start_scheduler(tmp_path / f"cluster-{len(started)}", env=env, certs=certs)
        started.append(pc)
        if workers:
            pc.add_workers(workers, nthreads)
            if wait:
                pc.wait_for_workers(workers)
        return pc

    yield start
    survivors = [s for pc in started for s in pc.stop()]
    assert not survivors, f"processes outlived the test: {survivors}"


@pytest.fixture(scope="session")
def tls_cluster(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcCluster]:
    """A TLS-only scheduler and ONE worker process with ONE thread, shared by the TLS, submit
    and worker-kill tests (started after the S3 env is set, so the worker reaches the test S3
    server). At the end of the session nothing it started may be left.

    One thread: a submitted job's driver secedes from it, so the job's own tasks still get it.
    One worker: xgboost.dask's model depends on which worker holds which partition (its
    quantile sketch is merged across workers); after a kill Dask recomputes the same partitions
    by lineage, bit for bit, but may place them differently among several workers, and the
    model then differs slightly. With one worker, the whole result must be identical.
    """
    directory = tmp_path_factory.mktemp("tls-cluster")
    pc = start_scheduler(directory, certs=make_certs(directory / "certs"))
    try:
        pc.add_workers(1, 1)
        pc.wait_for_workers(1)
        yield pc
    finally:
        survivors = pc.stop()
    assert not survivors, f"processes outlived the tests: {survivors}"


@pytest.fixture(scope="session")
def s3_demo(s3_server: str, demo_dir: Path) -> str:
    """The demo parts in a bucket of their own, under ``s3://<bucket>/demo/``."""
    import s3fs

    bucket = f"s3://cluster-{uuid.uuid4().hex[:8]}"
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(bucket)
    fs.put(str(demo_dir) + "/", f"{bucket}/demo/", recursive=True)
    return bucket


@dataclass
class Reference:
    """``mlpipe run JOB --scheduler tls://...`` of :func:`lean_job` on the shared cluster."""

    job_file: Path
    output: str
    stdout: str
    run_url: str
    headline: dict
    predictions: object  # the bundle's sample.parquet, its __pred_* columns


def predictions_of(run_url: str) -> object:
    import pandas as pd

    from pipeline.artifacts import filesystem

    fs, path = filesystem(run_url)
    with fs.open(f"{path}/sample.parquet", "rb") as f:
        sample = pd.read_parquet(f)
    return sample[[c for c in sample.columns if c.startswith("__pred_")]]


@pytest.fixture(scope="session")
def reference(tls_cluster: ProcCluster, s3_demo: str,
              tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The undisturbed result the TLS, fault and submit tests compare with."""
    import contextlib
    import io

    import yaml

    from pipeline.artifacts import filesystem
    from pipeline.cli import main

    output = f"{s3_demo}/reference"
    job_file = tmp_path_factory.mktemp("reference") / "job.yaml"
    job_file.write_text(yaml.safe_dump(lean_job(
        f"{s3_demo}/demo", output, cluster={"security": tls_cluster.certs.block()})))
    stdout = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(stdout):
        code = main(["run", str(job_file), "--scheduler", tls_cluster.address])
    assert code == 0, stdout.getvalue()
    print(f"\nundisturbed reference run: {time.perf_counter() - start:.1f} s")  # fault tests compare
    text = stdout.getvalue()
    run_url = next(line.split()[1] for line in text.splitlines() if line.startswith("run:"))
    fs, path = filesystem(run_url)
    headline = json.loads(fs.cat_file(f"{path}/metrics.json"))["headline"]
    return Reference(job_file, output, text, run_url, headline, predictions_of(run_url))
