"""``mlpipe score`` (click only at the top level: fast ``--help``)."""

from __future__ import annotations

import logging

import click

from pipeline.cli_common import cluster_options, cluster_spec

logger = logging.getLogger("pipeline")


@click.command("score")
@click.argument("model")
@click.argument("input_url", metavar="INPUT")
@click.argument("output_url", metavar="OUTPUT")
@click.option("--id-column", "id_columns", multiple=True, metavar="COL",
              help="Input column copied into the output next to the predictions (repeatable).")
@click.option("--format", "fmt", type=click.Choice(["auto", "csv", "parquet"]), default="auto",
              show_default=True, help="Input format (auto: from the file names).")
@click.option("--partition-rows", type=click.IntRange(min=1), default=None,
              help="Parquet: rows per partition, whole row groups (default 500,000).")
@click.option("--blocksize", default=None, metavar="BYTES",
              help="CSV: bytes per partition, e.g. 64MiB (the default).")
@click.option("--device", default=None, metavar="DEVICE",
              help="XGBoost device for the predictions: cpu, cuda, cuda:1 (default: the one "
                   "the model trained on; a GPU the workers cannot see is refused).")
@cluster_options
def score(model: str, input_url: str, output_url: str, id_columns: tuple[str, ...], fmt: str,
          partition_rows: int | None, blocksize: str | None, device: str | None,
          scheduler: str | None, n_workers: int | None,
          threads_per_worker: int | None) -> None:
    """Score every row of INPUT with MODEL; write Parquet parts to OUTPUT.

    MODEL is <root>/models/<name> (its current version) or <root>/runs/<run_id>; INPUT and
    OUTPUT are fsspec URLs (INPUT: CSV or Parquet files, a directory or a glob, or a SQL
    source: sqlite:///x.db?table=T&index=ID or ?query=SELECT...&index=ID). OUTPUT gets
    one part per input partition, a _manifest.json and, last, _SUCCESS. Rerunning the same
    command resumes a killed run (finished parts are verified and skipped) and never
    duplicates a row.

    \b
    mlpipe score out/models/demo data/new/ out/scores/today --id-column application_id
    mlpipe score s3://b/mlpipe/models/demo s3://b/applications/ s3://b/scores/2026-11-29 \\
        --id-column application_id --scheduler tcp://scheduler:8786
    """
    import cluster
    from pipeline.scoring import BLOCKSIZE, PARTITION_ROWS, score_to

    with cluster.connect(cluster_spec(n_workers, threads_per_worker),
                         address=scheduler) as client:
        logger.info("dashboard: %s", client.dashboard_link)
        result = score_to(model, input_url, output_url, id_columns=id_columns, fmt=fmt,
                          partition_rows=partition_rows or PARTITION_ROWS,
                          blocksize=blocksize or BLOCKSIZE, client=client, device=device)
    manifest = result.manifest
    click.echo("")
    click.echo(f"rows:    {result.rows_in:,} in, {result.rows_out:,} out "
               f"({result.parts} parts: {result.written} written, {result.skipped} skipped)")
    if result.rows_scored:
        click.echo(f"speed:   {result.rows_per_second:,.0f} rows/s ({result.rows_scored:,} rows "
                   f"scored in {result.seconds:,.1f} s)")
    else:
        click.echo(f"speed:   nothing left to score: every part was already written and "
                   f"verified ({result.seconds:,.1f} s)")
    click.echo(f"model:   {manifest['model']['run_id']}")
    for label, key in (("missing", "missing_values"), ("unseen", "unseen_categories")):
        if manifest[key]:
            click.echo(f"{label}: " + ", ".join(f"{c} {n:,}" for c, n in manifest[key].items()))
    click.echo(f"output:  {result.output}")


#: registered by pipeline.cli (COMMAND_MODULES)
COMMANDS = [score]
