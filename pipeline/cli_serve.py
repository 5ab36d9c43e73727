"""``mlpipe serve`` (click only at the top level: fast ``--help``)."""

from __future__ import annotations

import click


class _Size(click.ParamType):
    name = "SIZE"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        from pipeline.serve import parse_size

        try:
            return parse_size(value if isinstance(value, int) else str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.command("serve")
@click.argument("model")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but a loopback address without "
                   "--token-env prints a warning.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port (0: any free port; the address is printed).")
@click.option("--poll", type=click.FloatRange(min=0), default=10.0, show_default=True,
              metavar="SECONDS",
              help="Model URLs: read latest.json this often; a new version is loaded and "
                   "verified in the background, then swapped in (0: never).")
@click.option("--token-env", metavar="VAR", default=None,
              help="Require 'Authorization: Bearer <token>' on every endpoint but /health, the "
                   "token read from environment variable VAR (never from the command line).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Server processes; each loads the model once.")
@click.option("--threads", type=click.IntRange(min=0), default=0,
              help="Prediction threads per process (default: the number of CPUs).")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=0.0, show_default=True,
              metavar="MS",
              help="Micro-batching: a request of up to 32 rows waits this long for others to "
                   "share one predict call (0: off).")
@click.option("--max-body", type=_Size(), default="10MB", show_default=True,
              help="Largest request body (413 above it).")
@click.option("--max-rows", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Most rows in one request (413 above it).")
@click.option("--log-to", metavar="URL", default=None,
              help="Prediction log: inputs, outputs, run id and time as Parquet parts under "
                   "this fsspec URL (for drift monitoring).")
@click.option("--log-every", type=click.FloatRange(min=0.05), default=60.0, show_default=True,
              metavar="SECONDS", help="Write the prediction log this often...")
@click.option("--log-rows", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="...or as soon as this many rows are waiting.")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="One line per request (method, path, status).")
def serve(model: str, host: str, port: int, poll: float, token_env: str | None, workers: int,
          threads: int, batch_wait_ms: float, max_body: int, max_rows: int,
          log_to: str | None, log_every: float, log_rows: int, access_log: bool) -> None:
    """Serve MODEL over HTTP until interrupted.

    MODEL is <root>/models/<name> (follows its current version: `mlpipe models promote` and
    `rollback` switch the server, no request fails; a version that fails verification is
    refused and the old one keeps serving) or <root>/runs/<run_id> (pinned). The model is
    loaded and every file checked against its manifest before the port opens.

    \b
    POST /invocations  MLflow's scoring protocol: JSON with dataframe_split,
                       dataframe_records, instances or inputs, or a text/csv body;
                       answers {"predictions": [{"label": .., "proba": ..}, ...]}
                       (the fields of `mlpipe score`'s output columns)
    POST /predict      {"rows": [{column: value, ...}]}, typed from the bundle's
                       schema (see /docs and /openapi.json)
    GET  /health       alive (no token needed)
    GET  /ready        a verified model is loaded
    GET  /model        run id, family, task, metrics, schema, loaded-at, refused versions
    GET  /metrics      Prometheus text: requests, rows, latency, errors by kind,
                       unseen categories, the run id being served

    \b
    Every answer names its version in the X-Mlpipe-Run-Id header. Bad input never costs
    the server: a missing column or a value that cannot be read is a 422 naming the
    column and the row, malformed JSON a 400, a body over --max-body or more rows than
    --max-rows a 413.

    \b
    mlpipe serve out/models/demo
    curl -s localhost:8080/invocations -H 'Content-Type: application/json' \\
         -d '{"dataframe_records": [{"income": 52000, "employer": "acme", ...}]}'
    API_TOKEN=... mlpipe serve s3://b/mlpipe/models/demo --host 0.0.0.0 \\
         --token-env API_TOKEN --workers 4 --log-to s3://b/mlpipe/predictions/demo
    """
    from pipeline.serve import ServeConfig
    from pipeline.serve import serve as run_server

    run_server(ServeConfig(model=model, host=host, port=port, poll=poll, token_env=token_env,
                           workers=workers, threads=threads, batch_wait_ms=batch_wait_ms,
                           max_body=max_body, max_rows=max_rows, log_to=log_to,
                           log_every=log_every, log_rows=log_rows, access_log=access_log))


COMMANDS = [serve]
