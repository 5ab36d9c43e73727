"""The job file: good and bad; every bad case names the key (and line) at fault."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.config import JobError, JobSpec, load_job, parse_override

GOOD = """\
name: flights
data:
  train: data/flights
  target: late
  task: binary
  schema: {carrier: category, distance: float64, late: int64}
  split: {holdout: 0.25, seed: 3}
preprocess: {impute: median, encode: {carrier: onehot}}
features:
  - {kernel: log1p, columns: [distance]}
models:
  xgboost: {max_depth: 4, n_estimators: 50}
output: out
dask: {distributed.scheduler.no-workers-timeout: 30s}
"""


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(JobError) as info:
        load_job(write(tmp_path, text), overrides)
    return str(info.value)


def test_good_job_loads_with_defaults_and_resolved_paths(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, GOOD))
    assert job.name == "flights"
    assert job.data.task == "binary"
    assert job.data.split.holdout == 0.25 and job.data.split.seed == 3
    assert job.data.split.validation == 0.1  # default
    assert job.data.schema_ == {"carrier": "category", "distance": "float64", "late": "int64"}
    # relative paths in the file resolve against the file's directory
    assert job.data.train == str(tmp_path / "data" / "flights")
    assert job.output == str(tmp_path / "out")
    assert job.preprocess.impute.numeric == "median"
    assert job.preprocess.encode["carrier"].method == "onehot"
    assert job.features[0].kernel == "log1p"
    assert job.dask == {"distributed.scheduler.no-workers-timeout": "30s"}
    assert job.primary_metric == "roc_auc"


def test_job_is_frozen(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, GOOD))
    with pytest.raises(ValidationError):
        job.name = "other"  # type: ignore[misc]


def test_overrides_parse_yaml_and_resolve_against_cwd(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, GOOD)
    job = load_job(path, ["data.train=s3://bucket/x", "output=elsewhere",
                          "models.xgboost.max_depth=8", "data.split.holdout=0.3",
                          "dask.distributed.comm.retry.count=5", "cluster.n_workers=3"])
    assert job.data.train == "s3://bucket/x"
    assert job.output == str(tmp_path / "elsewhere")
    assert job.models["xgboost"]["max_depth"] == 8
    assert job.data.split.holdout == 0.3
    assert job.dask["distributed.comm.retry.count"] == 5
    assert job.cluster.n_workers == 3


def test_name_defaults_to_the_file_name(tmp_path: Path) -> None:
    text = GOOD.replace("name: flights\n", "")
    job = load_job(write(tmp_path, text, "my job.yaml"))
    assert job.name == "my-job"


def test_unknown_key_names_path_line_and_suggests(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("  target: late", "  targt: late"))
    assert "data.targt" in message
    assert "did you mean 'target'" in message
    assert "line 4" in message
    assert "data.target: required key is missing" in message


def test_unknown_nested_key_in_a_list_item(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("{kernel: log1p, columns: [distance]}",
                                              "{kernel: log1p, colums: [distance]}"))
    assert "features.0.colums" in message and "did you mean 'columns'" in message


def test_unknown_kernel_suggests(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("kernel: log1p", "kernel: logp1"))
    assert "unknown kernel 'logp1'" in message and "log1p" in message


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_nan_and_inf_are_refused(tmp_path: Path, value: str) -> None:
    message = error_of(tmp_path, GOOD.replace("holdout: 0.25", f"holdout: {value}"))
    assert "data.split.holdout" in message


def test_out_of_range_number(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("holdout: 0.25", "holdout: 1.5"))
    assert "data.split.holdout" in message and "less than 1" in message


def test_strings_are_not_silently_numbers(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("seed: 3", "seed: '3'"))
    assert "data.split.seed" in message


def test_secrets_in_storage_options_are_refused(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD + "storage_options: {key: AKIA, client_kwargs: {}}\n")
    assert "storage_options" in message and "secrets never live in the job file" in message


def test_unknown_dtype_in_schema(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("distance: float64", "distance: flaot64"))
    assert "data.schema" in message and "did you mean 'float64'" in message


def test_schema_must_declare_the_target(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace(", late: int64", ""))
    assert "['late']" in message


def test_unknown_model_family(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("  xgboost: {", "  xgbost: {"))
    assert "models" in message and "did you mean 'xgboost'" in message


def test_bad_task(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("task: binary", "task: classification"))
    assert "data.task" in message and "'binary'" in message


def test_bad_scheduler_address(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD + "cluster: {address: 'localhost:8786'}\n")
    assert "cluster.address" in message and "tcp://host:port" in message


def test_scoring_must_fit_the_task(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD + "search: {scoring: rmse}\n")
    assert "search.scoring" in message and "not a binary metric" in message


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="does not exist"):
        load_job(tmp_path / "nope.yaml")
    with pytest.raises(JobError, match="not valid YAML"):
        load_job(write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(JobError, match="must be a mapping"):
        load_job(write(tmp_path, "- a\n- b\n"))


def test_bad_override(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="expected key=value"):
        load_job(write(tmp_path, GOOD), ["output"])
    message = error_of(tmp_path, GOOD, ("data.trian=x",))
    assert "data.trian" in message and "did you mean 'train'" in message


def test_parse_override_keeps_dask_dots() -> None:
    assert parse_override("dask.a.b-c=1s") == (["dask", "a.b-c"], "1s")
    assert parse_override("models.xgboost.max_depth=[4, 6]") == (
        ["models", "xgboost", "max_depth"], [4, 6])


def test_fingerprint_is_stable_and_changes_with_the_job(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    a, b = load_job(path), load_job(path)
    assert a.fingerprint() == b.fingerprint()
    assert load_job(path, ["data.split.seed=4"]).fingerprint() != a.fingerprint()


def test_mapping_input() -> None:
    job = load_job({"data": {"train": "s3://b/x", "target": "y", "task": "regression"},
                    "output": "s3://b/out", "name": "m"})
    assert isinstance(job, JobSpec) and job.primary_metric == "rmse"


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_nan_in_the_free_form_blocks_names_key_and_line(tmp_path: Path, value: str) -> None:
    message = error_of(tmp_path, GOOD.replace("max_depth: 4", f"learning_rate: {value}"))
    assert "line 12: models.xgboost.learning_rate: found" in message
    message = error_of(tmp_path, GOOD, ("models.xgboost.eta=[0.1, .nan]",))
    assert "models.xgboost.eta.1: found nan" in message
    # the model itself refuses it too (a mapping validated without load_job)
    with pytest.raises(ValidationError, match=r"models\.xgboost\.gamma is inf"):
        JobSpec.model_validate({"name": "x", "output": "o", "models": {
            "xgboost": {"gamma": float("inf")}},
            "data": {"train": "t", "target": "y", "task": "binary"}})


def test_csv_encoding_and_bad_lines_keys(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, GOOD), ["data.encoding=latin-1", "data.bad_lines=skip"])
    assert (job.data.encoding, job.data.bad_lines) == ("latin-1", "skip")
    assert load_job(write(tmp_path, GOOD)).data.encoding == "utf-8"
    assert "unknown text encoding 'latin-9000'" in error_of(tmp_path, GOOD,
                                                            ("data.encoding=latin-9000",))
    assert "data.bad_lines" in error_of(tmp_path, GOOD, ("data.bad_lines=ignore",))
