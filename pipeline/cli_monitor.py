"""``mlpipe monitor`` and ``mlpipe retrain`` (click only at the top level: fast ``--help``).

Exit codes of ``monitor``: 0 nothing flagged, 3 drift, 4 quality decay (4 when both), 2 bad
input (a model without a reference profile, missing columns, a URL that does not read).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import click

from pipeline.cli_common import cluster_options, cluster_overrides, cluster_spec

logger = logging.getLogger("pipeline")

#: exit code of bad input (click's own usage errors use it too).
BAD_INPUT = 2


def _bad_input() -> tuple[type[BaseException], ...]:
    from pipeline.artifacts import BundleError
    from pipeline.config import JobError
    from pipeline.load import DataError
    from pipeline.monitor import MonitorInputError

    return (BundleError, JobError, DataError, MonitorInputError, FileNotFoundError)


def _scored(data: str) -> Any:
    """The verified ``_drift.json`` when DATA is a ``mlpipe score`` output, else None."""
    from pipeline import artifacts
    from pipeline.scoring import SUCCESS, read_drift

    fs, path = artifacts.filesystem(data)
    try:
        is_output = fs.exists(artifacts.join(path, SUCCESS))
    except OSError:
        return None
    return read_drift(data) if is_output else None


@click.command("monitor")
@click.argument("model")
@click.argument("data")
@click.option("--labels", default=None, metavar="COLUMN",
              help="The column of true labels (in DATA, or in --labels-from): quality too.")
@click.option("--labels-from", default=None, metavar="URL",
              help="Labels in another dataset, joined to DATA on --id-column.")
@click.option("--id-column", default=None, metavar="COLUMN",
              help="The column that joins DATA and --labels-from.")
@click.option("--by", default=None, metavar="COLUMN",
              help="A time column: every check per chunk of --freq as well.")
@click.option("--freq", type=click.Choice(["D", "W", "M"]), default="M", show_default=True,
              help="Chunk length with --by: day, week or month.")
@click.option("--format", "fmt", type=click.Choice(["auto", "csv", "parquet"]),
              default="auto", show_default=True, help="Format of DATA.")
@click.option("--out", default=None, metavar="URL",
              help="Where monitor.json and monitor.html go (default: "
                   "<root>/monitoring/<name>/<UTC time>/).")
@click.option("--retrain-job", default=None, metavar="JOB_FILE",
              help="When drift or decay is flagged, retrain this job (the gate decides; the "
                   "same job on the same data never trains twice).")
@click.option("--retrain-set", "retrain_set", multiple=True, metavar="KEY=VALUE",
              help="Overrides of --retrain-job (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print monitor.json.")
@cluster_options
@click.pass_context
def monitor(ctx: click.Context, model: str, data: str, labels: str | None,
            labels_from: str | None, id_column: str | None, by: str | None, freq: str,
            fmt: str, out: str | None, retrain_job: str | None, retrain_set: tuple[str, ...],
            as_json: bool, scheduler: str | None, n_workers: int | None,
            threads_per_worker: int | None) -> None:
    """Check DATA against MODEL: drift of every input column and of the predictions, and with
    --labels the holdout metrics on DATA against the model's baseline (with a confidence
    interval, so that noise on a small chunk is no alarm).

    MODEL is <root>/models/<name> or <root>/runs/<run_id>; DATA is CSV/Parquet (new data, a
    `mlpipe serve --log-to` prediction log) or a `mlpipe score` output (its _drift.json is
    read; labels then come from --labels-from). Writes monitor.json and monitor.html.
    Exit code: 0 fine, 3 drift, 4 quality decay, 2 bad input.

    \b
    mlpipe monitor out/models/demo data/december/ --labels default --by applied_at --freq M
    mlpipe monitor out/models/demo out/scores/2026-12 --labels default \\
        --labels-from s3://b/outcomes/ --id-column application_id
    """
    import cluster
    from pipeline.monitor import monitor_data

    try:
        scored = _scored(data)
        with cluster.connect(cluster_spec(n_workers, threads_per_worker),
                             address=scheduler) as client:
            logger.info("dashboard: %s", client.dashboard_link)
            result = monitor_data(model, data, labels=labels, labels_from=labels_from,
                                  id_column=id_column, by=by, freq=freq, fmt=fmt,
                                  scored=scored, out=out, client=client)
            decision = None
            if retrain_job and result.exit_code in (3, 4):
                decision = _retrain(retrain_job, retrain_set, client=client)
    except _bad_input() as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(BAD_INPUT)
    if as_json:
        click.echo(json.dumps(result.doc, indent=2, default=str))
    else:
        _summary(result)
    if decision is not None:
        _decision(decision)
    ctx.exit(result.exit_code)


def _summary(result: Any) -> None:
    doc = result.doc
    overall = doc["overall"]
    click.echo("")
    click.echo(f"model:   {doc['model']['run_id']}")
    click.echo(f"data:    {doc['data']['url']} ({doc['data']['kind']}, "
               f"{doc['data']['rows']:,} rows)")
    drift = overall.get("drift")
    if drift:
        flagged = [*doc["drifted"], *(f"output {c}" for c in doc["outputs_drifted"])]
        click.echo(f"drift:   {', '.join(flagged) if flagged else 'none'} "
                   f"({len(drift['columns'])} inputs, {len(drift['outputs'])} outputs checked)")
        for name in doc["drifted"][:10]:
            checks = (drift["columns"].get(name) or {}).get("checks", {})
            shown = ", ".join(f"{k} {v['statistic']:.3g}" for k, v in checks.items()
                              if v["flag"])
            if shown:
                click.echo(f"         {name}: {shown}")
    quality = overall.get("quality")
    if quality:
        for name, row in quality["metrics"].items():
            ci = row.get("interval")
            band = f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""
            value = "n/a" if row.get("value") is None else f"{row['value']:.4f}"
            base = "n/a" if row.get("baseline") is None else f"{row['baseline']:.4f}"
            click.echo(f"quality: {name} {value}{band} vs baseline {base}"
                       f"{'  DECAY' if row.get('decay') else ''}")
    else:
        click.echo("quality: no labels given (--labels)")
    if doc.get("chunks"):
        click.echo(f"chunks:  {len(doc['chunks'])} by {doc['by']} ({doc['freq']}); flagged: "
                   f"{', '.join(doc['flagged_chunks']) or 'none'}")
    if result.url:
        click.echo(f"report:  {result.url}/monitor.html")
    click.echo(f"status:  {['fine', '', '', 'drift', 'quality decay'][result.exit_code]} "
               f"(exit {result.exit_code})")


def _retrain(job_file: str, overrides: tuple[str, ...], *, client: Any = None,
             address: str | None = None, dry_run: bool = False, force: bool = False,
             warm_start: bool = False) -> dict[str, Any]:
    from pipeline.config import load_job
    from pipeline.refine import retrain
    from pipeline.workflow import run

    job = load_job(job_file, list(overrides))
    return retrain(job, run=run, client=client, address=address, dry_run=dry_run,
                   force=force, warm_start=warm_start)


def _decision(decision: dict[str, Any]) -> None:
    click.echo("")
    if decision.get("skipped"):
        click.echo(f"retrain: skipped: this job was already trained on this data "
                   f"(run {decision['run_id']}: {decision.get('outcome')})")
        return
    click.echo(f"retrain: {decision.get('run_id')}: {decision.get('outcome')}"
               f" (compared with {decision.get('champion') or 'no current version'})")
    metrics = decision.get("metrics") or {}
    for side in ("champion", "challenger"):
        if metrics.get(side):
            shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics[side].items()
                              if isinstance(v, float))
            click.echo(f"  {side:<10} {shown}")
    for reason in decision.get("reasons", []):
        click.echo(f"  - {reason}")


@click.command("retrain")
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a job key, e.g. --set data.train=data/through-december/.")
@click.option("--dry-run", is_flag=True,
              help="Train and decide, never promote (the version is registered).")
@click.option("--force", is_flag=True,
              help="Train even if this job was already trained on this data.")
@click.option("--warm-start", is_flag=True,
              help="Continue the current version's XGBoost booster on the new rows (its "
                   "preprocessing kept as it is) instead of training afresh.")
@cluster_options
def retrain_command(job_file: str, overrides: tuple[str, ...], dry_run: bool, force: bool,
                    warm_start: bool, scheduler: str | None, n_workers: int | None,
                    threads_per_worker: int | None) -> None:
    """Train JOB_FILE as a challenger to its model's current version: both are evaluated on
    the same holdout rows of the new data, and the job's refine: rules decide; a passing
    challenger is promoted by compare-and-swap against the champion it was compared with.
    The decision is recorded (mlpipe models show).

    \b
    mlpipe retrain examples/demo.yaml --set data.train=data/through-december/
    mlpipe retrain examples/demo.yaml --set data.train=data/december/ --warm-start
    mlpipe retrain examples/demo.yaml --dry-run
    """
    decision = _retrain(job_file, (*overrides, *cluster_overrides(n_workers, threads_per_worker)),
                        address=scheduler, dry_run=dry_run, force=force, warm_start=warm_start)
    _decision(decision)


#: registered by pipeline.cli (COMMAND_MODULES)
COMMANDS = [monitor, retrain_command]
