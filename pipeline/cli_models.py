"""``mlpipe models ...``: the registry's commands (click only at the top level: fast ``--help``).

Each command calls one function of :mod:`pipeline.registry`.
"""

from __future__ import annotations

import json
from typing import Any

import click


@click.group("models")
def models() -> None:
    """The model registry: versions, the current version, promotion, rollback, cleanup."""


def _echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True, default=str))


def _metrics(headline: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in headline.items()) or "-"


@models.command("list")
@click.argument("root")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models_list(root: str, as_json: bool) -> None:
    """The models under ROOT: name, versions, current version, its metrics."""
    from pipeline.registry import list_models

    rows = list_models(root)
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo(f"no models under {root}")
        return
    table = [("NAME", "VERSIONS", "CURRENT", "METRICS")]
    table += [(r["name"], str(r["versions"]), r["current"] or "-", _metrics(r["metrics"]))
              for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[3])


@models.command("show")
@click.argument("root")
@click.argument("name")
@click.argument("version", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models_show(root: str, name: str, version: str | None, as_json: bool) -> None:
    """Model NAME under ROOT: current version, history, versions; or one VERSION (a run id,
    or 'current') in detail."""
    from pipeline.registry import show_model

    doc = show_model(root, name, version)
    if as_json:
        _echo_json(doc)
        return
    if version is None:
        click.echo(f"model:    {doc['name']}")
        click.echo(f"current:  {doc['current'] or '-'}  ({doc['reason'] or '-'}, "
                   f"{doc['updated_at'] or '-'})")
        click.echo(f"history:  {', '.join(doc['history'][:5]) or '-'}"
                   f"{' ...' if len(doc['history']) > 5 else ''}")
        click.echo(f"versions: {len(doc['versions'])}")
        for record in reversed(doc["versions"]):
            mark = "*" if record["run_id"] == doc["current"] else " "
            click.echo(f"  {mark} {record['run_id']}  {record.get('created_at') or '':<29} "
                       f"{_metrics(record.get('headline', {}))}")
        if doc.get("decisions"):
            click.echo(f"decisions: {len(doc['decisions'])} (the gate, newest first)")
            for decision in doc["decisions"][:10]:
                click.echo(f"  {decision['run_id']}  {decision.get('outcome')}  vs "
                           f"{decision.get('champion') or '-'}: "
                           f"{'; '.join(decision.get('reasons', []))}")
        return
    click.echo(f"model:    {doc['name']}")
    click.echo(f"version:  {doc['run_id']}{'  (current)' if doc['current'] else ''}")
    click.echo(f"created:  {doc['created_at']}")
    click.echo(f"task:     {doc['task']} ({doc['family']})")
    click.echo(f"metrics:  {_metrics(doc['headline'])}")
    data = doc.get("data") or {}
    if data:
        click.echo(f"data:     {data.get('url')} ({data.get('rows', '?'):,} rows, "
                   f"fingerprint {data.get('fingerprint')})")
    click.echo(f"files:    {', '.join(f'{k} ({v:,} B)' for k, v in doc['files'].items())}")
    click.echo(f"url:      {doc['url']}")
    decision = doc.get("decision")
    if decision:
        click.echo(f"decision: {decision.get('outcome')} ({decision.get('decided_at')}), "
                   f"compared with {decision.get('champion') or '-'}: "
                   f"{'; '.join(decision.get('reasons', []))}")
        for side in ("champion", "challenger"):
            if (decision.get("metrics") or {}).get(side):
                click.echo(f"  {side:<10}  {_metrics(decision['metrics'][side])}")


@models.command("promote")
@click.argument("root")
@click.argument("name")
@click.argument("run_id")
@click.option("--expect", "expect", default=None, metavar="RUN_ID",
              help="Only if the current version is RUN_ID ('none': no current version). "
                   "Default: the version read when the command starts.")
def models_promote(root: str, name: str, run_id: str, expect: str | None) -> None:
    """Make RUN_ID the current version of NAME (compare-and-swap; verified first)."""
    from pipeline.registry import promote

    kwargs = {} if expect is None else {"expected_run": None if expect == "none" else expect}
    doc = promote(root, name, run_id, **kwargs)
    click.echo(f"{name}: current version {doc.get('run_id')}")


@models.command("rollback")
@click.argument("root")
@click.argument("name")
@click.option("--expect", "expect", default=None, metavar="RUN_ID",
              help="Only if the current version is RUN_ID. Default: the version read when "
                   "the command starts.")
def models_rollback(root: str, name: str, expect: str | None) -> None:
    """Make the previous current version of NAME current again (compare-and-swap)."""
    from pipeline.registry import rollback

    doc = rollback(root, name, **({} if expect is None else {"expected_run": expect}))
    click.echo(f"{name}: current version {doc['run_id']} (rolled back)")


@models.command("cleanup")
@click.argument("root")
@click.option("--older-than", default="24h", show_default=True, metavar="AGE",
              help="Only what is older than this (e.g. 30m, 24h, 7d, 0).")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
def models_cleanup(root: str, older_than: str, dry_run: bool) -> None:
    """Remove runs that never got a manifest, temp files of interrupted writes, and (S3)
    incomplete multipart uploads under ROOT, older than --older-than."""
    from pipeline.registry import cleanup, parse_age

    report = cleanup(root, older_than=parse_age(older_than), dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for run in report["runs"]:
        click.echo(f"{verb} unfinished run {run}")
    for temp in report["temp_files"]:
        click.echo(f"{verb} temp file {temp}")
    for upload in report["multipart_uploads"]:
        click.echo(f"{'would abort' if dry_run else 'aborted'} multipart upload "
                   f"{upload['key']} ({upload['upload_id'][:12]}..., started "
                   f"{upload['initiated']})")
    click.echo(f"{verb}: {len(report['runs'])} run(s), {len(report['temp_files'])} temp "
               f"file(s), {len(report['multipart_uploads'])} multipart upload(s)")


#: registered by pipeline.cli (COMMAND_MODULES)
COMMANDS = [models]
