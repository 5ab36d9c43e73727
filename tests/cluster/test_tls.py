"""TLS: a job runs through ``mlpipe run --scheduler tls://...`` on a TLS-only scheduler and
worker (real processes, a temporary CA; the session's ``reference`` run) using the job's
``cluster.security`` block, with data and output on the S3 test server; plain TCP and foreign
certificates are refused; plain TCP to a host that is not this one warns."""

from __future__ import annotations

from pathlib import Path

import pytest

import cluster
from cluster import ClusterError, InsecureClusterWarning
from tests.cluster.conftest import ProcCluster, Reference, make_certs
from tests.test_run import check_sample

pytestmark = pytest.mark.integration


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_run_on_a_tls_only_cluster_with_s3(tls_cluster: ProcCluster, reference: Reference,
                                           tmp_path: Path) -> None:
    from distributed import Client

    # `mlpipe run JOB --scheduler tls://...` with cluster.security, data and output on S3
    assert tls_cluster.address.startswith("tls://127.0.0.1:")
    assert reference.run_url.startswith(f"{reference.output}/runs/")
    assert f"model: {reference.output}/models/demo" in reference.stdout
    assert reference.headline["roc_auc"] > 0.7
    check_sample(f"{reference.output}/models/demo")

    # nothing but TLS with a certificate of our CA gets in
    port = tls_cluster.address.rsplit(":", 1)[1]
    with pytest.raises(ClusterError, match="could not connect to the scheduler"):
        with cluster.connect({"timeout": "3s"}, address=f"tcp://127.0.0.1:{port}"):
            pass
    stranger = make_certs(tmp_path / "stranger")
    with pytest.raises(OSError, match="TLS certificate does not match"):
        Client(tls_cluster.address, security=stranger.security(), timeout="3s")


def test_plain_tcp_to_another_host_warns_that_the_scheduler_runs_code() -> None:
    # 192.0.2.1 (TEST-NET-1) is never this machine and never answers
    with pytest.warns(InsecureClusterWarning, match="executes arbitrary code"):
        with pytest.raises(ClusterError, match="could not connect"):
            with cluster.connect({"timeout": "1s"}, address="tcp://192.0.2.1:8786"):
                pass


def test_missing_certificate_file_is_named(tmp_path: Path) -> None:
    block = {"ca_file": str(tmp_path / "ca.pem"), "cert_file": str(tmp_path / "c.pem"),
             "key_file": str(tmp_path / "k.pem")}
    with pytest.raises(ClusterError, match=r"cluster.security.ca_file: .*ca.pem does not exist"):
        with cluster.connect({"security": block, "timeout": "1s"},
                             address="tls://127.0.0.1:1"):
            pass
