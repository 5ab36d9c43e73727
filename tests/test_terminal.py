"""What ``mlpipe run`` prints: stage lines and results, and none of the libraries' noise.

The noise of issue #19 is provoked for real: XGBoost trains with xgboost.dask
(``train.cv_rounds_below: 0``), so every worker's communicator logs "Task [xgboost.dask-N]
... got rank N" from libxgboost; a binary logistic regression trains with dask-glm, which sets
a deprecated dask config key (a FutureWarning); the LocalCluster's workers and nannies log
through distributed. Without ``-v`` none of it may reach the terminal; with ``-v`` the
tracker lines come through the ``xgboost`` logger (the proof that the run produced them).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.progress import Progress, stage_names, task_counter, task_counts
from tests.conftest import demo_job

NOISE = ("got rank", "[xgboost.dask", "distributed.", "FutureWarning", "fuse_ave_width",
         "Compute Failed", "Traceback", "Sizeof calculation", "tornado.", "\x1b[")


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def job_file(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("terminal")
    job = demo_job(str(demo_dir), str(out / "out"), features=[],
                   models={"xgboost": {"n_estimators": 10, "max_depth": 3},
                           "logistic_regression": {"C": 1.0}},
                   cluster={"n_workers": 2, "threads_per_worker": 1})
    job["train"] = {"cv_rounds_below": 0}  # xgboost.dask, not the in-memory CV-rounds path
    path = out / "job.yaml"
    path.write_text(yaml.safe_dump(job), encoding="utf-8")
    return path


@pytest.mark.integration
@pytest.mark.slow
def test_run_prints_stage_lines_and_no_noise(job_file: Path) -> None:
    done = run_cli(["run", str(job_file)], job_file.parent)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for noise in NOISE:
        assert noise not in output, f"{noise!r} leaked into mlpipe run's output:\n{output}"
    # one line per stage, then the results (no bar: the output is not a terminal)
    for line in (r"loaded [\d,]+ rows", r"split [\d,]+ train", r"xgboost \(distributed\): "
                 r"fitted", r"logistic_regression \(distributed\): fitted", r"chosen: \w+",
                 r"bundle written: "):
        assert re.search(r"^\[\s*[\d.]+s\] " + line, done.stderr, flags=re.M), (line, output)
    assert "chosen:" in done.stdout and "model:" in done.stdout


@pytest.mark.integration
@pytest.mark.slow
def test_verbose_run_shows_the_libraries(job_file: Path) -> None:
    job = yaml.safe_load(job_file.read_text(encoding="utf-8"))
    job["models"] = {"xgboost": job["models"]["xgboost"]}  # the tracker is what is checked
    verbose = job_file.with_name("verbose.yaml")
    verbose.write_text(yaml.safe_dump(job), encoding="utf-8")
    done = run_cli(["-v", "run", str(verbose)], job_file.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    # XGBoost's tracker lines were produced, and went through the log (logger "xgboost")
    assert re.search(r"xgboost - INFO - .*Task \[xgboost\.dask-\d\].* got rank \d",
                     done.stderr), done.stderr


def test_stage_names_label_the_next_stage() -> None:
    stages = stage_names(["xgboost", "knn"])
    assert stages[:3] == ["plan", "load", "preprocess"]
    assert stages.index("search:knn") < stages.index("train:xgboost") < stages.index("bundle")
    progress = Progress(stages, enabled=False)
    with progress:  # disabled (not a terminal): starts nothing, prints nothing
        progress.stage_done("preprocess")
        assert progress.next_stage == "search:xgboost"
        progress.stage_done("something new")
        assert progress.next_stage == "working"


@pytest.mark.integration
def test_task_counter_counts_the_cluster_tasks(client) -> None:
    import dask.array as da

    client.register_plugin(task_counter(), name="mlpipe-progress")
    before = client.run_on_scheduler(task_counts)
    da.ones(100, chunks=10).sum().compute()
    added, done = client.run_on_scheduler(task_counts)
    assert added - before[0] >= 10 and done - before[1] >= 10
