"""Monitoring end to end on a real LocalCluster, on file:// and on a real S3 server: the
reference profile in every bundle, ``_drift.json`` in every score output (verified, and equal
to the same statistics computed with pandas on the computed input), ``mlpipe monitor`` and its
exit codes, and the retrain gate (a better challenger promoted, a worse one refused, both
recorded; a concurrent promotion fails the retrain and leaves ``latest.json`` alone)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from pipeline import artifacts, registry
from pipeline.cli import main
from pipeline.config import load_job
from pipeline.demo import make_partition
from pipeline.workflow import run
from tests.conftest import demo_job

pytestmark = pytest.mark.integration

IDS = ["application_id"]


def lean_job(train: str, output: str, **extra: object) -> dict:
    """The demo job without its encoders and kernels, and a small model: fast to train."""
    models = extra.pop("models", {"xgboost": {"n_estimators": 30, "max_depth": 4,
                                              "learning_rate": 0.3}})
    return demo_job(train, output, preprocess={}, features=[], models=models, **extra)


def write_parts(where: Path | str, frames: list[pd.DataFrame], fs: object = None) -> str:
    """Parquet parts at a local directory or an S3 prefix."""
    for i, frame in enumerate(frames):
        name = f"{where}/part-{i:05d}.parquet"
        if fs is None:
            Path(where).mkdir(parents=True, exist_ok=True)
            frame.to_parquet(name, index=False)
        else:
            with fs.open(name, "wb") as f:
                frame.to_parquet(f, index=False)
    return str(where)


def pointer(root: str, name: str = "demo") -> dict | None:
    fs, path = artifacts.filesystem(artifacts.join(root, "models", name, "latest.json"))
    return artifacts.read_pointer(fs, path).doc


@pytest.fixture(scope="module", params=["file", "s3"])
def model(request: pytest.FixtureRequest, client, demo_dir: Path,
          tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A lean demo model trained on the demo data, and new data with known drift, on
    file:// or on the S3 server."""
    fs = None
    if request.param == "s3":
        import uuid

        import s3fs

        request.getfixturevalue("s3_server")
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        base = f"s3://test-{uuid.uuid4().hex[:12]}"
        fs.mkdir(base)
        fs.put(str(demo_dir) + "/", f"{base}/train/", recursive=True)
        train = f"{base}/train"
    else:
        base = str(tmp_path_factory.mktemp("monitor"))
        train = str(demo_dir)
    data = {kind: write_parts(f"{base}/new-{kind or 'same'}", [
        make_partition(50 + i, 3000, seed=0, drift=kind, start="2024-01") for i in range(2)], fs)
        for kind in (None, "covariate", "concept")}
    result = run(load_job(lean_job(train, f"{base}/out")), client=client)
    return SimpleNamespace(base=base, fs=fs, result=result, data=data, kind=request.param)


def test_every_bundle_has_a_reference_profile(model: SimpleNamespace) -> None:
    bundle = artifacts.open_bundle(model.result.model_url)
    profile = bundle.json("profile.json")
    assert bundle.has("profile.json")  # listed in the manifest, so verified on every read
    assert set(profile["inputs"]) == set(load_model_columns(model))
    income = profile["inputs"]["income"]
    assert income["kind"] == "numeric" and len(income["counts"]) == len(income["edges"]) + 1
    assert sum(income["counts"]) + income["missing"] == profile["reference"]["rows"]
    assert profile["reference"]["rows"] == model.result.metrics["rows"]["train"]
    employer = profile["inputs"]["employer"]
    assert employer["kind"] == "categorical" and len(employer["levels"]) == 20
    assert employer["n_levels"] == len(employer["known"]) > employer["singletons"] > 0
    assert set(profile["outputs"]["columns"]) == {"label", "proba"}
    assert profile["outputs"]["rows"] == model.result.metrics["rows"]["holdout"]
    assert profile["baseline"]["metrics"]["roc_auc"] == model.result.headline["roc_auc"]
    assert profile["holdout_drift"]["drift"] is False
    assert model.result.decision["outcome"] == "promoted"


def load_model_columns(model: SimpleNamespace) -> list[str]:
    return artifacts.load_model(model.result.model_url).feature_columns


def test_scoring_writes_a_verified_drift_report(client, model: SimpleNamespace) -> None:
    from pipeline.monitor import binnings, check_column, sketch_frame
    from pipeline.scoring import ScoreError, read_drift, read_manifest, score_to

    out = f"{model.base}/scores/covariate"
    score_to(model.result.model_url, model.data["covariate"], out, id_columns=IDS,
             client=client, partition_rows=1000)
    drift = read_drift(out)
    manifest = read_manifest(out)
    assert manifest["drift"]["drifted"] == drift["drifted"]
    assert {"income", "credit_score", "utilization", "purpose", "channel"} <= set(
        drift["drifted"])
    assert {"age", "state", "term_months"}.isdisjoint(drift["drifted"])
    # the same statistics computed with pandas on the whole input, in this process
    profile = artifacts.open_bundle(model.result.model_url).json("profile.json")
    frame = pd.concat([make_partition(50 + i, 3000, seed=0, drift="covariate",
                                      start="2024-01") for i in range(2)], ignore_index=True)
    inputs, _ = binnings(profile)
    whole = sketch_frame(frame, inputs)
    for column, ref in profile["inputs"].items():
        mine = check_column(ref, whole[column], profile["thresholds"])["checks"]
        theirs = drift["columns"][column]["checks"]
        assert mine.keys() == theirs.keys(), column
        for name, check in mine.items():
            assert abs(check["statistic"] - theirs[name]["statistic"]) < 1e-9, (column, name)
            assert abs(check["p_value"] - theirs[name]["p_value"]) < 1e-9, (column, name)
    # a rerun keeps every part (their footers hold their sketches) and the same report
    again = score_to(model.result.model_url, model.data["covariate"], out, id_columns=IDS,
                     client=client, partition_rows=1000)
    assert again.skipped == again.parts and read_drift(out)["columns"] == drift["columns"]
    # a changed report is refused
    fs, path = artifacts.filesystem(out)
    fs.pipe_file(artifacts.join(path, "_drift.json"), json.dumps({**drift, "drifted": []})
                 .encode())
    with pytest.raises(ScoreError, match="does not match its manifest"):
        read_drift(out)


def test_monitor_exit_codes_and_report(client, model: SimpleNamespace, capsys) -> None:
    url = model.result.model_url
    base = ["--scheduler", client.scheduler.address]
    codes = {}
    for kind in (None, "covariate", "concept"):
        out = f"{model.base}/monitoring/{kind or 'same'}"
        codes[kind] = main(["monitor", url, model.data[kind], "--labels", "default",
                            "--by", "applied_at", "--freq", "M", "--out", out, *base])
        printed = capsys.readouterr()
        assert codes[kind] in (0, 3, 4), printed.err
        fs, path = artifacts.filesystem(out)
        doc = json.loads(fs.cat_file(artifacts.join(path, "monitor.json")))
        page = fs.cat_file(artifacts.join(path, "monitor.html")).decode()
        assert doc["exit_code"] == codes[kind] and "<svg" in page
        assert len(doc["chunks"]) == 24  # two years of months
        if kind == "covariate":
            assert "income" in doc["drifted"] and not doc["decay"]
            # drift starts in 2024-01: the earlier months are clean
            early = [c for c in doc["chunks"] if c["chunk"] < "2024-01"]
            assert early and not any(c["drift"]["drift"] for c in early)
        if kind == "concept":
            assert doc["decayed"] == ["roc_auc"] and not doc["drifted"]
            assert "DECAY" in printed.out
    assert codes == {None: 0, "covariate": 3, "concept": 4}
    # bad input: a column the model needs is not there
    frame = make_partition(0, 100).drop(columns=["income"])
    bad = write_parts(f"{model.base}/bad", [frame], model.fs)
    assert main(["monitor", url, bad, *base]) == 2
    assert "income" in capsys.readouterr().err


def test_monitor_reads_a_score_output_with_labels_from_elsewhere(client,
                                                                 model: SimpleNamespace) -> None:
    from pipeline.monitor import monitor_data
    from pipeline.scoring import read_drift, score_to

    out = f"{model.base}/scores/concept"
    score_to(model.result.model_url, model.data["concept"], out, id_columns=IDS, client=client)
    frame = pd.concat([make_partition(50 + i, 3000, seed=0, drift="concept", start="2024-01")
                       for i in range(2)], ignore_index=True)
    labels = write_parts(f"{model.base}/outcomes",
                         [frame[["application_id", "default", "applied_at"]]], model.fs)
    result = monitor_data(model.result.run_url, out, labels="default", labels_from=labels,
                          id_column="application_id", by="applied_at", scored=read_drift(out),
                          client=client, write=False)
    assert result.doc["data"]["kind"] == "score output"
    assert result.exit_code == 4 and result.doc["decayed"] == ["roc_auc"]
    assert result.doc["overall"]["metrics"]["n"] == len(frame)
    early = [c for c in result.doc["chunks"] if c["chunk"] < "2024-01"]
    assert early and not any(c["quality"]["decay"] for c in early)


# --------------------------------------------------------------------------- the gate


def copy_version(run_url: str, suffix: str) -> str:
    """The same bundle written again as another run (a second complete version, cheaply)."""
    bundle = artifacts.open_bundle(run_url)
    files = {name: bundle.read(name) for name in bundle.manifest["files"]}
    meta = {k: v for k, v in bundle.manifest.items()
            if k not in ("format", "run_id", "created_at", "files", "versions", "_sha256")}
    run_id = f"{bundle.run_id}-{suffix}"
    artifacts.write_run(bundle.root, run_id, files, meta=meta)
    return run_id


def shuffled_before_holdout(demo_dir: Path, where: Path) -> str:
    """The demo data with its labels shuffled in the first 80 % of the time (the training
    side of a time split) and kept in the last 20 % (its holdout)."""
    frames = [pd.read_parquet(p) for p in sorted(demo_dir.glob("*.parquet"))]
    whole = pd.concat(frames, ignore_index=True)
    cutoff = whole["applied_at"].quantile(0.8)
    rng = np.random.default_rng(0)
    early = whole["applied_at"] <= cutoff
    whole.loc[early, "default"] = rng.permutation(whole.loc[early, "default"].to_numpy())
    return write_parts(where, [whole])


@pytest.mark.slow
def test_retrain_promotes_a_better_challenger_and_refuses_a_worse_one(
        client, demo_dir: Path, tmp_path: Path, capsys) -> None:
    from pipeline.refine import retrain

    root = str(tmp_path / "out")
    weak = run(load_job(lean_job(str(demo_dir), root, models={
        "xgboost": {"n_estimators": 1, "max_depth": 1}})), client=client)
    assert weak.decision["outcome"] == "promoted" and pointer(root)["run_id"] == weak.run_id
    better = retrain(load_job(lean_job(str(demo_dir), root)), run=run, client=client)
    assert better["outcome"] == "promoted" and better["champion"] == weak.run_id
    assert better["metrics"]["challenger"]["roc_auc"] > better["metrics"]["champion"]["roc_auc"]
    assert pointer(root)["run_id"] == better["run_id"]
    shuffled = shuffled_before_holdout(demo_dir, tmp_path / "shuffled")
    worse = retrain(load_job(lean_job(shuffled, root, data={
        **demo_job("", "")["data"], "train": shuffled, "drop": [],
        "id_columns": ["application_id", "customer_id", "applied_at"],
        "split": {"holdout": 0.2, "by": "applied_at", "seed": 0}})), run=run, client=client)
    assert worse["outcome"] == "not promoted" and worse["champion"] == better["run_id"]
    assert worse["metrics"]["challenger"]["roc_auc"] < 0.6 \
        < worse["metrics"]["champion"]["roc_auc"]
    # the champion was refit on every row of demo_dir, this holdout's rows among them: said
    assert any("refit on every row" in r and "flattered" in r for r in worse["reasons"])
    assert pointer(root)["run_id"] == better["run_id"]  # unchanged
    # both decisions are in the registry, the refused version is registered, unpromoted
    shown = registry.show_model(root, "demo")
    assert {d["run_id"]: d["outcome"] for d in shown["decisions"]} == {
        weak.run_id: "promoted", better["run_id"]: "promoted",
        worse["run_id"]: "not promoted"}
    assert worse["run_id"] in {v["run_id"] for v in shown["versions"]}
    assert main(["models", "show", root, "demo"]) == 0
    out = capsys.readouterr().out
    assert f"{worse['run_id']}  not promoted" in out
    assert main(["models", "show", root, "demo", worse["run_id"]]) == 0
    assert "decision: not promoted" in capsys.readouterr().out
    # the challenger's own report shows the comparison
    page = (Path(root) / "runs" / worse["run_id"] / "report.html").read_text()
    assert 'id="gate"' in page and "not promoted" in page
    # the same job on the same data is not trained again
    again = retrain(load_job(lean_job(str(demo_dir), root)), run=run, client=client)
    assert again["skipped"] and again["run_id"] == better["run_id"]


@pytest.mark.slow
@pytest.mark.parametrize("store", ["file", "s3"])
def test_a_concurrent_promotion_fails_the_retrain(client, demo_dir: Path, tmp_path: Path,
                                                  store: str, request) -> None:
    from pipeline.artifacts import ConflictError
    from pipeline.refine import retrain

    root = str(tmp_path / "out")
    train = str(demo_dir)
    if store == "s3":
        import s3fs

        bucket = request.getfixturevalue("bucket")
        s3fs.S3FileSystem(skip_instance_cache=True).put(str(demo_dir) + "/", f"{bucket}/d/",
                                                        recursive=True)
        root, train = f"{bucket}/out", f"{bucket}/d"
    weak = {"xgboost": {"n_estimators": 1, "max_depth": 1}}
    champion = run(load_job(lean_job(train, root, models=weak)), client=client)
    other = copy_version(champion.run_url, "other")  # a complete version, not current
    assert pointer(root)["run_id"] == champion.run_id

    def promote_meanwhile(stage: str) -> None:
        if stage == "bundle":  # compared with the champion; now someone promotes another
            registry.promote(root, "demo", other)

    with pytest.raises(ConflictError, match="changed while run"):
        retrain(load_job(lean_job(train, root)), run=run, client=client,
                on_stage=promote_meanwhile)
    assert pointer(root)["run_id"] == other  # the concurrent change stands
    decisions = registry.decisions(root, "demo")
    assert decisions[0]["outcome"] == "conflict: not promoted"
    assert decisions[0]["champion"] == champion.run_id


@pytest.mark.slow
def test_warm_start_continues_the_champions_booster(client, demo_dir: Path,
                                                    tmp_path: Path) -> None:
    from pipeline.refine import retrain

    root = str(tmp_path / "out")
    champion = run(load_job(lean_job(str(demo_dir), root)), client=client)
    new = write_parts(tmp_path / "new", [make_partition(60 + i, 3000, seed=0, drift="concept")
                                         for i in range(3)])
    decision = retrain(load_job(lean_job(new, root)), run=run, client=client, warm_start=True)
    assert decision["warm_start"] and decision["champion"] == champion.run_id
    assert decision["outcome"] in ("promoted", "not promoted")
    bundle = artifacts.open_bundle(decision["run_url"])
    model = bundle.json("metrics.json")["model"]
    assert model["training"] == "warm start" and model["warm_start"]["from"] == champion.run_id
    grown = model["warm_start"]["rounds_before"]
    assert model["trees"] >= grown == artifacts.load_model(champion.run_url) \
        .model.num_boosted_rounds()
    # the champion's preprocessing is kept: the same fitted steps
    loaded = artifacts.load_model(decision["run_url"])
    rows = make_partition(0, 50)
    pd.testing.assert_frame_equal(loaded.transform(rows),
                                  artifacts.load_model(champion.run_url).transform(rows))
    assert loaded.predict_frame(rows).shape == (50, 2)
    # a family that cannot be continued is refused, before any data is read
    other = str(tmp_path / "other")
    small = write_parts(tmp_path / "small", [make_partition(0, 2000)])
    run(load_job(lean_job(small, other, models={"naive_bayes": {}})), client=client)
    with pytest.raises(ValueError, match="naive_bayes model, which cannot be continued"):
        retrain(load_job(lean_job(new, other)), run=run, client=client, warm_start=True)
