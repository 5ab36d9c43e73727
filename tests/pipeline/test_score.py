"""Batch scoring: real bundles, a real LocalCluster, outputs on file:// and on a real S3 server.

Every expected prediction comes from the loaded model itself (``Predictor.predict_frame`` on
the same rows, computed in this process), so the tests check that the distributed path scores
exactly what the model scores, no row lost or duplicated.
"""

from __future__ import annotations

import functools
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline import load_model
from pipeline.cli import main
from pipeline.config import load_job
from pipeline.load import DataError
from pipeline.scoring import DRIFT, MANIFEST, PART_KEY, SUCCESS, read_manifest, score, score_to
from pipeline.workflow import run
from tests.conftest import demo_job

pytestmark = pytest.mark.integration

IDS = ["application_id"]


@pytest.fixture(scope="module")
def trained(client, demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Two real runs of the demo model in one registry root; the second is current."""
    root = tmp_path_factory.mktemp("mlpipe")
    # the first version: a plain preprocessor; the second: the demo's encoders and kernels
    first = run(load_job(demo_job(str(demo_dir), str(root), preprocess={}, features=[],
                                  models={"xgboost": {"n_estimators": 6, "max_depth": 3}})),
                client=client)
    second = run(load_job(demo_job(str(demo_dir), str(root))), client=client)
    return SimpleNamespace(root=str(root), first=first, second=second,
                           model_url=second.model_url)


def demo_frame(demo_dir: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(demo_dir.glob("*.parquet"))],
                     ignore_index=True)


@functools.cache
def loaded(run_url: str) -> object:
    """A model loaded once per run URL (a run never changes; loading takes seconds)."""
    return load_model(run_url)


def expected(run_url: str, frame: pd.DataFrame) -> pd.DataFrame:
    """What the model itself predicts for ``frame``: the reference for every output."""
    assert "/runs/" in run_url
    return loaded(run_url).predict_frame(frame, IDS).reset_index(drop=True)


def output_frame(path: str | Path, fs: object = None) -> pd.DataFrame:
    """Every row of a score output (parts only), sorted by id."""
    import fsspec

    fs = fs or fsspec.filesystem("file")
    parts = sorted(p for p in fs.ls(str(path), detail=False) if p.endswith(".parquet"))
    frames = []
    for p in parts:
        with fs.open(p, "rb") as f:
            frames.append(pd.read_parquet(f))
    return (pd.concat(frames, ignore_index=True).sort_values("application_id")
            .reset_index(drop=True))


def assert_same_rows(got: pd.DataFrame, want: pd.DataFrame) -> None:
    want = want.sort_values("application_id").reset_index(drop=True)
    assert not got["application_id"].duplicated().any()
    assert len(got) == len(want)
    pd.testing.assert_frame_equal(got[list(want.columns)], want, check_dtype=False, atol=1e-7)


def stamps(path: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in path.glob("part-*")}


# --------------------------------------------------------------------------- the Python API


def test_score_is_lazy_broadcasts_once_and_handles_empty_partitions(
        client, trained: SimpleNamespace, demo_dir: Path) -> None:
    import dask.dataframe as dd

    ddf = dd.read_parquet(str(demo_dir), index=False)
    kept = ddf[ddf.application_id < 2 * 10**9]  # the last two files' partitions are empty
    pred = score(trained.model_url, kept, id_columns=IDS, client=client)
    assert isinstance(pred, dd.DataFrame) and pred.npartitions == kept.npartitions
    assert list(pred.columns) == ["application_id", "label", "proba"]
    # the model went to the cluster once, as data, not inside each task (scattered to every
    # worker; the scheduler's memory manager may drop idle replicas a few seconds later)
    holders = {k: w for k, w in client.who_has().items() if str(k).startswith("Predictor-")}
    assert holders and all(w for w in holders.values())
    sizes = pred.map_partitions(len).compute().tolist()
    assert 0 in sizes  # empty partitions went through the model
    got = pred.compute().sort_values("application_id").reset_index(drop=True)
    frame = demo_frame(demo_dir)
    kept_rows = frame[frame.application_id < 2 * 10**9]
    assert_same_rows(got, expected(trained.second.run_url, kept_rows))


def test_score_names_a_missing_column_before_any_compute(trained: SimpleNamespace,
                                                          demo_dir: Path) -> None:
    import dask.dataframe as dd

    ddf = dd.read_parquet(str(demo_dir), index=False).drop(columns=["income"])
    with pytest.raises(DataError, match="no column 'income'"):
        score(loaded(trained.second.run_url), ddf)
    with pytest.raises(DataError, match="'order_id'.*as an id column"):
        score(loaded(trained.second.run_url), ddf.assign(income=1.0), id_columns=["order_id"])


# --------------------------------------------------------------------------- score_to on file://


def test_score_to_files_then_rerun_is_idempotent(client, trained: SimpleNamespace,
                                                 demo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores"
    result = score_to(trained.model_url, str(demo_dir), str(out), id_columns=IDS,
                      client=client)
    assert (result.parts, result.written, result.skipped) == (4, 4, 0)
    assert result.rows_in == result.rows_out == 20_000
    frame = demo_frame(demo_dir)
    assert_same_rows(output_frame(out), expected(trained.second.run_url, frame))
    assert sorted(p.name for p in out.iterdir()) == sorted([
        MANIFEST, SUCCESS, DRIFT, *(f"part-{i:05d}.parquet" for i in range(4))])

    manifest = read_manifest(str(out))
    assert manifest["model"]["run_id"] == trained.second.run_id
    assert manifest["model"]["device"] == "cpu"  # the device the model trained on
    assert manifest["rows_in"] == manifest["rows_out"] == 20_000
    assert [p["rows"] for p in manifest["parts"]] == [5000] * 4
    assert sum(p["bytes"] for p in manifest["parts"]) == sum(
        (out / p["name"]).stat().st_size for p in manifest["parts"])
    report = loaded(trained.second.run_url).report(frame)
    assert manifest["missing_values"] == {c: n for c, n in report["missing_values"].items() if n}
    assert manifest["unseen_categories"] == {
        c: n for c, n in report["unseen_categories"].items() if n}
    assert manifest["missing_values"]["income"] == int(frame["income"].isna().sum())
    assert manifest["input"]["fingerprint"] and manifest["finished_at"]
    assert "default" in manifest["extra_columns"] and "application_id" not in \
        manifest["extra_columns"]
    footer = json.loads(pq.read_metadata(out / "part-00002.parquet").metadata[PART_KEY])
    assert footer["partition"] == 2 and footer["rows"] == 5000
    assert footer["model_run_id"] == trained.second.run_id

    before = stamps(out)
    again = score_to(trained.model_url, str(demo_dir), str(out), id_columns=IDS,
                     client=client)
    assert (again.written, again.skipped, again.rows_scored) == (0, 4, 0)
    assert stamps(out) == before  # nothing rewritten
    assert read_manifest(str(out))["rows_out"] == 20_000
    assert_same_rows(output_frame(out), expected(trained.second.run_url, frame))


def test_a_gpu_the_workers_cannot_see_is_refused_before_anything_is_written(
        client, trained: SimpleNamespace, demo_dir: Path, tmp_path: Path) -> None:
    """XGBoost would predict on the CPU instead, silently; mlpipe refuses (exit 5) and says
    how to score on the CPU, with nothing in the output."""
    import cluster

    out = tmp_path / "scores"
    with pytest.raises(cluster.ClusterError, match=r"device 'cuda'.* 2 of 2 Dask worker\(s\) "
                       r"see none.*--device cpu"):
        score_to(trained.model_url, str(demo_dir), str(out), id_columns=IDS, client=client,
                 device="cuda")
    assert not out.exists() or not any(out.iterdir())


def test_a_predictor_moves_to_a_device_as_a_copy(trained: SimpleNamespace,
                                                  demo_dir: Path) -> None:
    """``on`` copies the booster and applies the device where it predicts; without a GPU
    XGBoost predicts on the CPU (its fallback), so the predictions stay the same."""
    import warnings

    model = loaded(trained.second.run_url)
    moved = model.on("cuda")
    assert (model.device, moved.device) == ("cpu", "cuda")
    assert moved.model is not model.model and moved.preprocessor is model.preprocessor
    frame = demo_frame(demo_dir).head(500)
    with warnings.catch_warnings():  # XGBoost: "No visible GPU is found"
        warnings.simplefilter("ignore")
        pd.testing.assert_frame_equal(moved.predict_frame(frame, IDS),
                                      model.predict_frame(frame, IDS))
    schema = json.loads((Path(trained.second.run_url) / "schema.json").read_text())
    assert schema["device"] == "cpu"


def test_rerun_replaces_damaged_foreign_and_stale_parts(client, trained: SimpleNamespace,
                                                        demo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores"
    score_to(trained.model_url, str(demo_dir), str(out), id_columns=IDS, client=client)
    (out / "part-00001.parquet").write_bytes((out / "part-00001.parquet").read_bytes()[:500])
    (out / "part-00002.parquet").unlink()
    shutil.copy(out / "part-00003.parquet", out / "part-00000.parquet")  # valid, but not part 0
    shutil.copy(out / "part-00003.parquet", out / "part-00009.parquet")  # beyond the input
    (out / ".tmp-killed-writer").write_bytes(b"half")
    result = score_to(trained.model_url, str(demo_dir), str(out), id_columns=IDS,
                      client=client)
    assert (result.written, result.skipped) == (3, 1)
    assert sorted(p.name for p in out.iterdir()) == sorted([
        MANIFEST, SUCCESS, DRIFT, *(f"part-{i:05d}.parquet" for i in range(4))])
    assert_same_rows(output_frame(out), expected(trained.second.run_url, demo_frame(demo_dir)))

    # another model version: every part is replaced, none is mixed in
    other = score_to(trained.first.run_url, str(demo_dir), str(out), id_columns=IDS,
                     client=client)
    assert (other.written, other.skipped) == (4, 0)
    assert read_manifest(str(out))["model"]["run_id"] == trained.first.run_id
    assert_same_rows(output_frame(out), expected(trained.first.run_url, demo_frame(demo_dir)))

    # a smaller input: the parts it does not produce are removed before publishing
    two = score_to(trained.first.run_url, str(demo_dir / "part-0000[01].parquet"), str(out),
                   id_columns=IDS, client=client)
    assert two.parts == 2 and two.rows_out == 10_000
    assert sorted(p.name for p in out.glob("part-*")) == ["part-00000.parquet",
                                                          "part-00001.parquet"]


def test_row_group_partitions_and_csv_input(client, trained: SimpleNamespace, demo_dir: Path,
                                            tmp_path: Path) -> None:
    frame = demo_frame(demo_dir)
    want = expected(trained.second.run_url, frame)
    data = tmp_path / "grouped"
    data.mkdir()
    frame.iloc[:12_000].to_parquet(data / "a.parquet", index=False, row_group_size=1000)
    frame.iloc[12_000:].to_parquet(data / "b.parquet", index=False, row_group_size=3000)
    out = tmp_path / "from-groups"
    result = score_to(trained.model_url, str(data), str(out), id_columns=IDS,
                      partition_rows=2500, client=client)
    # a.parquet: 12 groups of 1000 -> 6 partitions of 2; b.parquet: groups of 3000 -> 3 of 1
    assert result.parts == 9
    manifest = read_manifest(str(out))
    assert [p["rows"] for p in manifest["parts"]] == [2000] * 6 + [3000, 3000, 2000]
    assert "row groups 2-3" in manifest["parts"][1]["source"]
    assert_same_rows(output_frame(out), want)

    csv = tmp_path / "csv"
    csv.mkdir()
    frame.iloc[:7000].to_csv(csv / "a.csv", index=False)
    frame.iloc[7000:].to_csv(csv / "b.csv", index=False)
    out = tmp_path / "from-csv"
    result = score_to(trained.model_url, str(csv), str(out), id_columns=IDS,
                      blocksize="300KiB", client=client)
    assert result.parts > 4 and result.rows_out == 20_000
    got = output_frame(out)
    assert got["application_id"].dtype.kind == "i"
    assert_same_rows(got, want)


# --------------------------------------------------------------------------- S3


def test_score_on_s3(client, trained: SimpleNamespace, demo_dir: Path, bucket: str) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.put(str(demo_dir) + "/", f"{bucket}/input/", recursive=True)
    fs.put(trained.root + "/", f"{bucket}/mlpipe/", recursive=True)  # a bundle is relocatable
    model_url = f"{bucket}/mlpipe/models/demo"
    out = f"{bucket}/scores/today"
    result = score_to(model_url, f"{bucket}/input", out, id_columns=IDS, client=client)
    assert (result.written, result.rows_out) == (4, 20_000)
    fs.invalidate_cache()
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(out))
    assert names == sorted([MANIFEST, SUCCESS, DRIFT, *(f"part-{i:05d}.parquet" for i in range(4))])
    assert read_manifest(out)["model"]["run_id"] == trained.second.run_id
    assert_same_rows(output_frame(out, fs), expected(trained.second.run_url, demo_frame(demo_dir)))
    assert not fs.call_s3("list_multipart_uploads", Bucket=bucket[5:]).get("Uploads")

    fs.rm(f"{out}/part-00001.parquet")
    again = score_to(model_url, f"{bucket}/input", out, id_columns=IDS, client=client)
    assert (again.written, again.skipped) == (1, 3)
    fs.invalidate_cache()
    assert_same_rows(output_frame(out, fs), expected(trained.second.run_url, demo_frame(demo_dir)))


# --------------------------------------------------------------------------- the CLI


def test_cli_score(client, trained: SimpleNamespace, demo_dir: Path, tmp_path: Path,
                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    code = main(["score", trained.model_url, str(demo_dir), str(out), "--id-column",
                 "application_id", "--scheduler", client.scheduler.address])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err.splitlines()[0].startswith("dashboard: http")
    assert "parts written" in captured.err  # progress
    assert "rows:    20,000 in, 20,000 out (4 parts: 4 written, 0 skipped)" in captured.out
    assert f"output:  {out}" in captured.out and "rows/s" in captured.out
    assert (out / SUCCESS).exists()


def test_the_driver_never_loads_the_model(client, trained: SimpleNamespace, demo_dir: Path,
                                          tmp_path: Path) -> None:
    """The workers read and verify the bundle themselves: the scoring driver imports neither
    scikit-learn, skops nor XGBoost, and ships no model."""
    out = tmp_path / "driver"
    script = (
        "import json, sys\n"
        "from pipeline.cli import main\n"
        f"code = main(['score', {trained.model_url!r}, {str(demo_dir)!r}, {str(out)!r},\n"
        f"             '--scheduler', {client.scheduler.address!r}])\n"
        "print(json.dumps({'code': code, 'loaded': sorted(m for m in ('sklearn', 'skops',\n"
        "      'xgboost') if m in sys.modules)}))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[2])
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"code": 0, "loaded": []}, done.stderr[-2000:]
    assert read_manifest(str(out))["rows_out"] == 20_000


def test_cli_score_errors_publish_nothing(client, trained: SimpleNamespace, demo_dir: Path,
                                          tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    frame = demo_frame(demo_dir)
    scheduler = ["--scheduler", client.scheduler.address]

    no_income = tmp_path / "no-income"
    no_income.mkdir()
    frame.drop(columns=["income"]).to_parquet(no_income / "x.parquet", index=False)
    code = main(["score", trained.model_url, str(no_income), str(tmp_path / "o1"), *scheduler])
    err = capsys.readouterr().err
    assert code == 2 and "column 'income' is not in the data" in err and "Traceback" not in err
    assert not (tmp_path / "o1").exists()

    code = main(["score", str(tmp_path), str(demo_dir), str(tmp_path / "o2"), *scheduler])
    err = capsys.readouterr().err
    assert code == 2 and "neither a run URL" in err

    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        part = frame.iloc[i * 1000:(i + 1) * 1000].copy()
        if i == 2:
            part["income"] = part["income"].astype("str")
            part.loc[part.index[7], "income"] = "n/a (refused)"
        part.to_parquet(bad / f"p{i}.parquet", index=False)
    code = main(["score", trained.model_url, str(bad), str(tmp_path / "o3"), *scheduler])
    err = capsys.readouterr().err
    assert code == 2, err  # bad input (pipeline.errors.ExitCode.BAD_INPUT)
    assert "p2.parquet" in err and "income" in err and "n/a (refused)" in err
    assert not (tmp_path / "o3" / SUCCESS).exists()

    code = main(["score", trained.model_url, str(demo_dir), str(demo_dir / "scores"),
                 *scheduler])
    err = capsys.readouterr().err
    assert code == 2 and "overlaps the input" in err and not (demo_dir / "scores").exists()

    (tmp_path / "o4").mkdir()
    (tmp_path / "o4" / "keep-me.csv").write_text("a\n1\n")
    code = main(["score", trained.model_url, str(demo_dir), str(tmp_path / "o4"), *scheduler])
    err = capsys.readouterr().err
    assert code == 2 and "not a score output" in err
    assert (tmp_path / "o4" / "keep-me.csv").exists()


# --------------------------------------------------------------------------- kill and rerun


@pytest.mark.slow
def test_killed_scoring_resumes_to_exactly_the_rows_of_a_clean_run(
        client, trained: SimpleNamespace, demo_dir: Path, tmp_path: Path) -> None:
    frame = demo_frame(demo_dir)
    data = tmp_path / "many"
    data.mkdir()
    for i in range(4):  # 20 partitions of 1000 rows: the job runs long enough to be killed
        frame.iloc[i * 5000:(i + 1) * 5000].to_parquet(data / f"p{i}.parquet", index=False,
                                                       row_group_size=1000)
    out = tmp_path / "killed"
    # `mlpipe score` in its own process on the session's cluster, SIGKILLed midway: the
    # scheduler drops its queued tasks, the tasks already running finish on their own
    command = [sys.executable, "-m", "pipeline.cli", "score", trained.model_url, str(data),
               str(out), "--id-column", "application_id", "--partition-rows", "1000",
               "--scheduler", client.scheduler.address]
    log = tmp_path / "killed.log"
    clients = client.run_on_scheduler(_busy)[0]
    with log.open("w") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while len(list(out.glob("part-*.parquet"))) < 2:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "no parts appeared"
                time.sleep(0.002)
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
    deadline = time.monotonic() + 60
    while (client.run_on_scheduler(_busy) != (clients, 0, 0)  # the scheduler forgot the job,
           or any(client.run(_running).values())):           # and no thread still runs it
        assert time.monotonic() < deadline, "the killed job's tasks did not finish"
        time.sleep(0.05)
    written_before = stamps(out)
    assert 2 <= len(written_before) < 20, "the job was not killed midway"
    assert not (out / SUCCESS).exists()

    resumed = score_to(trained.model_url, str(data), str(out), id_columns=IDS,
                       partition_rows=1000, client=client)
    assert resumed.skipped == len(written_before)
    assert resumed.written == 20 - len(written_before)
    assert resumed.rows_scored == 1000 * resumed.written
    after = stamps(out)
    assert all(after[name] == stamp for name, stamp in written_before.items())
    assert not list(out.glob(".tmp-*"))

    clean = tmp_path / "clean"
    score_to(trained.model_url, str(data), str(clean), id_columns=IDS, partition_rows=1000,
             client=client)
    got, want = output_frame(out), output_frame(clean)
    assert len(got) == 20_000 and not got["application_id"].duplicated().any()
    pd.testing.assert_frame_equal(got, want)
    assert read_manifest(str(out))["rows_out"] == read_manifest(str(clean))["rows_out"]
    np.testing.assert_array_equal(got["application_id"],
                                  np.sort(frame["application_id"].to_numpy()))


def _running(dask_worker: object) -> int:
    """Tasks occupying a worker thread, including those the scheduler cancelled."""
    return len(dask_worker.state.executing)


def _busy(dask_scheduler: object) -> tuple[int, int, int]:
    """(clients, queued tasks, processing tasks) of the scheduler."""
    return (len(dask_scheduler.clients), len(dask_scheduler.queued),
            sum(len(ws.processing) for ws in dask_scheduler.workers.values()))


# --------------------------------------------------------------------------- the registry


def test_promotion_and_rollback_change_what_is_scored(client, trained: SimpleNamespace,
                                                      demo_dir: Path, tmp_path: Path) -> None:
    from pipeline.registry import promote, rollback

    root = tmp_path / "registry"
    shutil.copytree(trained.root, root)
    model_url = str(root / "models" / "demo")
    out = tmp_path / "scores"
    first = score_to(model_url, str(demo_dir), str(out), id_columns=IDS, client=client)
    assert first.manifest["model"]["run_id"] == trained.second.run_id

    assert rollback(str(root), "demo")["run_id"] == trained.first.run_id
    back = score_to(model_url, str(demo_dir), str(out), id_columns=IDS, client=client)
    assert back.manifest["model"]["run_id"] == trained.first.run_id and back.written == 4
    assert_same_rows(output_frame(out), expected(trained.first.run_url, demo_frame(demo_dir)))

    promote(str(root), "demo", trained.second.run_id)
    assert load_model(model_url).run_id == trained.second.run_id
