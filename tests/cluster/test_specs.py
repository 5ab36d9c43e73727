"""Cluster classes by dotted path (``cluster.spec``), checked without Slurm or Kubernetes:
a ``dask_jobqueue.SLURMCluster`` is built (not scaled: nothing is submitted) and its job
script inspected; a ``dask_kubernetes`` spec is validated, and a missing extra is named."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import cluster
from cluster import ClusterError
from pipeline.config import load_job
from tests.conftest import demo_job

SLURM = {
    "module": "dask_jobqueue", "class": "SLURMCluster",
    "kwargs": {"cores": 8, "processes": 2, "memory": "32GiB", "queue": "gpu",
               "account": "ml-team", "walltime": "02:00:00",
               "job_script_prologue": ["source /opt/mlpipe/bin/activate"],
               # the test's scheduler stays on this machine; a real one listens where the
               # compute nodes can reach it (scheduler_options / interface)
               "scheduler_options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}},
    "scale": 4,
}

KUBE = {
    "module": "dask_kubernetes.operator", "class": "KubeCluster",
    "kwargs": {"name": "mlpipe", "image": "ghcr.io/example/mlpipe:0.1.0", "n_workers": 0,
               "resources": {"requests": {"memory": "8Gi", "cpu": "2"}}},
    "adapt": {"minimum": 1, "maximum": 10},
}


def _spec(tmp_path: Path, spec: dict) -> dict:
    job = load_job(demo_job(str(tmp_path / "data"), str(tmp_path / "out"),
                            cluster={"spec": spec}))
    return job.cluster.model_dump(by_alias=True)


def test_slurm_spec_builds_the_job_script_it_would_submit(tmp_path: Path) -> None:
    pytest.importorskip("dask_jobqueue")
    spec = _spec(tmp_path, SLURM)
    choice = cluster.resolve(spec)
    assert (choice.kind, choice.target) == ("spec", "dask_jobqueue.SLURMCluster")
    slurm = cluster.build_spec(spec["spec"])
    try:
        script = slurm.job_script()
        assert not slurm.workers  # built, not scaled: nothing was submitted
        address = slurm.scheduler_address
    finally:
        slurm.close()
    lines = script.splitlines()
    for directive in ("#SBATCH -p gpu", "#SBATCH -A ml-team", "#SBATCH --cpus-per-task=8",
                      "#SBATCH --mem=32G", "#SBATCH -t 02:00:00",
                      "source /opt/mlpipe/bin/activate"):
        assert directive in lines, script
    worker = next(line for line in lines if "distributed.cli.dask_worker" in line)
    assert address in worker and "--nworkers 2" in worker and "--nthreads 4" in worker
    assert "--memory-limit 16.00GiB" in worker


def test_slurm_spec_with_a_misspelt_keyword_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("dask_jobqueue")
    kwargs = {**SLURM["kwargs"], "walltme": "01:00:00"}
    kwargs.pop("walltime")
    spec = _spec(tmp_path, {**SLURM, "kwargs": kwargs})["spec"]
    with pytest.raises(ClusterError, match=r"(?s)walltme.*mlpipe\[jobqueue\]"):
        cluster.build_spec(spec)


def test_unknown_class_lists_the_module_s_clusters() -> None:
    pytest.importorskip("dask_jobqueue")
    with pytest.raises(ClusterError, match=r"no class 'SlurmCluster'; it has .*SLURMCluster"):
        cluster.validate_spec({"module": "dask_jobqueue", "class": "SlurmCluster"})


def test_kubernetes_spec_is_validated_without_kubernetes(tmp_path: Path) -> None:
    spec = _spec(tmp_path, KUBE)  # the job file itself is valid
    choice = cluster.resolve(spec)
    assert (choice.kind, choice.target) == ("spec", "dask_kubernetes.operator.KubeCluster")
    assert choice.kwargs["adapt"] == {"minimum": 1, "maximum": 10}
    if importlib.util.find_spec("dask_kubernetes") is None:
        with pytest.raises(ClusterError, match=(
                r"cluster.spec.module 'dask_kubernetes.operator' cannot be imported .*"
                r"optional extra 'kubernetes': pip install 'mlpipe\[kubernetes\]'")):
            cluster.validate_spec(spec["spec"])
    else:  # the extra is installed: the class and its keywords are checked, nothing started
        assert cluster.validate_spec(spec["spec"]).__name__ == "KubeCluster"


def test_keywords_a_class_does_not_take_are_refused_before_building() -> None:
    with pytest.raises(ClusterError, match=r"do not fit distributed.SpecCluster: .*'nonsense'"):
        cluster.validate_spec({"module": "distributed", "class": "SpecCluster",
                               "kwargs": {"nonsense": 1}})

