"""``mlpipe report``: render a run's report again from its bundle (click only at the top level)."""

from __future__ import annotations

from typing import Any

import click


@click.command("report")
@click.argument("run_url")
@click.option("-o", "--output", "output", metavar="FILE", default=None,
              help="Where to write the HTML (a path or an fsspec URL); default: "
                   "./report-<run_id>.html.")
def report(run_url: str, output: str | None) -> None:
    """Render the HTML report of RUN_URL (a run or a model URL) into FILE.

    The report is rebuilt from the bundle's files, each checked against the manifest. A
    published bundle never changes, so the page is written outside it.

    \b
    mlpipe report out/runs/20260101T000000.000Z-ab12cd34-ef56
    mlpipe report s3://bucket/mlpipe/models/demo -o demo.html
    """
    import fsspec

    from pipeline.artifacts import open_bundle
    from pipeline.report import bundle_docs, render

    bundle = open_bundle(run_url)
    html = render(bundle_docs(bundle, performance_report=_performance_link(bundle)))
    target = output or f"report-{bundle.run_id}.html"
    with fsspec.open(target, "wb") as f:
        f.write(html.encode("utf-8"))
    click.echo(f"report: {target}")


def _performance_link(bundle: Any) -> str | None:
    """Where a page written outside the bundle finds the bundle's Dask performance report.

    A local bundle gets a ``file://`` link a browser opens; on object storage the URL is
    shown as text (browsers do not open ``s3://``).
    """
    from pathlib import Path

    from pipeline.artifacts import join
    from pipeline.report import PERFORMANCE_REPORT

    if not bundle.has(PERFORMANCE_REPORT):
        return None
    protocol = bundle.fs.protocol
    protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
    if "file" in protocols or "local" in protocols:
        return Path(bundle.base, PERFORMANCE_REPORT).resolve().as_uri()
    return join(bundle.url, PERFORMANCE_REPORT)


COMMANDS = [report]
