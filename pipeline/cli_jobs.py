"""``mlpipe submit / status / logs / cancel``: jobs whose driver runs on the cluster.

(click only at the top level: fast ``--help``; see :mod:`pipeline.jobs` for the design.)
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import click

logger = logging.getLogger("pipeline")

_OUTPUT = click.option(
    "--output", "output", metavar="ROOT", default=None,
    help="The job's output root (its `output:`), e.g. s3://bucket/mlpipe. Default: asked of "
         "the scheduler, which remembers the jobs it was given until it restarts.")
_SCHEDULER = click.option(
    "--scheduler", "scheduler", metavar="ADDRESS", default=None,
    help="The scheduler (tcp:// or tls://; TLS files from dask config, e.g. "
         "DASK_DISTRIBUTED__COMM__TLS__CA_FILE). Default: DASK_SCHEDULER_ADDRESS, else the "
         "address recorded in the job's state.")


@click.command("submit")
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a job key, e.g. --set data.train=s3://b/x (repeatable).")
@click.option("--scheduler", "scheduler", metavar="ADDRESS", default=None,
              help="The existing Dask cluster to run on (tcp://host:8786 or tls://...).")
def submit(job_file: str, overrides: tuple[str, ...], scheduler: str | None) -> None:
    """Run JOB_FILE on an existing cluster, with its driver on the cluster; print the job id.

    Returns at once: the job goes on after this machine disconnects. Its state, log and
    cancel marker live under <output>/jobs/. Follow it with `mlpipe status JOB_ID`,
    `mlpipe logs JOB_ID`, stop it with `mlpipe cancel JOB_ID` (from any machine that reaches
    the scheduler or the output store).

    \b
    JOB=$(mlpipe submit job.yaml --scheduler tls://scheduler:8786)
    mlpipe status "$JOB" --scheduler tls://scheduler:8786
    """
    import cluster
    from pipeline import jobs
    from pipeline.config import load_job

    job = load_job(job_file, overrides)
    spec = job.cluster.model_dump(by_alias=True)
    choice = cluster.resolve(spec, address=scheduler)
    if choice.kind in ("spec", "local"):
        raise click.UsageError(
            f"mlpipe submit needs an existing cluster, and this job would start one "
            f"({choice}), which would stop when this command returns. Give --scheduler "
            "ADDRESS, cluster.address, cluster.scheduler_file or DASK_SCHEDULER_ADDRESS, or "
            "use `mlpipe run`")
    if job.output.startswith("memory://"):
        raise click.UsageError("output is memory://; a submitted job's driver and workers "
                               "are other processes: use a shared store (s3://, a shared "
                               "filesystem)")
    with cluster.connect(spec, address=scheduler, dask_config=job.dask) as client:
        state = jobs.submit(job, client)
    logger.info("submitted %s to %s; state: %s", state["job_id"], state["scheduler"],
                jobs.JobStore(job.output).path(state["job_id"], ".json"))
    logger.info("follow it: mlpipe status %s --output %s", state["job_id"], job.output)
    click.echo(state["job_id"])


@click.command("status")
@click.argument("job_id", required=False)
@_OUTPUT
@_SCHEDULER
@click.option("--json", "as_json", is_flag=True, help="Print the whole state as JSON.")
def status(job_id: str | None, output: str | None, scheduler: str | None,
           as_json: bool) -> None:
    """Show a submitted job's state (or, without JOB_ID, every job under --output / known to
    the scheduler)."""
    from pipeline import jobs

    if job_id is None:
        _list(output, scheduler, as_json)
        return
    with _job(job_id, output, scheduler) as (store, client):
        state = jobs.status(job_id, store, client)
    if as_json:
        click.echo(json.dumps(state, indent=2, sort_keys=True, default=str))
        return
    click.echo(_describe(state))
    if client is None:
        click.echo("(scheduler not reached: the state is the job's own record)")


@click.command("logs")
@click.argument("job_id")
@_OUTPUT
@_SCHEDULER
def logs(job_id: str, output: str | None, scheduler: str | None) -> None:
    """Print a submitted job's driver log, then the scheduler's and workers' log lines from
    the job's time window."""
    from pipeline import jobs

    with _job(job_id, output, scheduler) as (store, client):
        click.echo(jobs.logs(job_id, store, client), nl=False)


@click.command("cancel")
@click.argument("job_id")
@_OUTPUT
@_SCHEDULER
def cancel(job_id: str, output: str | None, scheduler: str | None) -> None:
    """Cancel a submitted job: it stops at its next stage boundary and publishes nothing."""
    from pipeline import jobs

    with _job(job_id, output, scheduler) as (store, client):
        state = jobs.cancel(job_id, store, client)
    if state.get("cancel_requested"):
        click.echo(f"{job_id}: cancel requested; the job stops after its current stage "
                   f"({state.get('stage') or 'starting'})")
    else:
        click.echo(f"{job_id}: {state['state']}")


COMMANDS = [submit, status, logs, cancel]


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _job(job_id: str, output: str | None, scheduler: str | None) -> Iterator[tuple[Any, Any]]:
    """The job's store and, when the scheduler answers, a client (else ``None``)."""
    from pipeline import jobs

    store = jobs.JobStore(output) if output else None
    recorded = store.read(job_id).get("scheduler") if store is not None else None
    address = _address(scheduler) or recorded
    if address is None:
        raise click.UsageError("give --output ROOT (the job's output root) or --scheduler "
                               "ADDRESS (or set DASK_SCHEDULER_ADDRESS)")
    with _client(address, required=store is None) as client:
        if store is None:
            store = jobs.locate(job_id, client)
        yield store, client


def _address(scheduler: str | None) -> str | None:
    import cluster

    choice = cluster.resolve({}, address=scheduler)
    return choice.target if choice.kind in ("address", "environment") else None


@contextlib.contextmanager
def _client(address: str, *, required: bool) -> Iterator[Any]:
    """A client of the scheduler (no wait for workers); ``None`` if it does not answer and
    the job's own record will do."""
    import cluster

    with contextlib.ExitStack() as stack:
        try:
            client = stack.enter_context(cluster.connect(
                {"timeout": "10s"}, address=address, check_versions=False,
                wait_for_workers=False))
        except cluster.ClusterError:
            if required:
                raise
            logger.warning("the scheduler at %s does not answer; showing the job's own record",
                           address)
            client = None
        yield client


def _list(output: str | None, scheduler: str | None, as_json: bool) -> None:
    from pipeline import jobs

    if output:
        states = jobs.JobStore(output).list()
    else:
        address = _address(scheduler)
        if address is None:
            raise click.UsageError("give --output ROOT or --scheduler ADDRESS to list jobs")
        with _client(address, required=True) as client:
            states = []
            for job_id, where in jobs.known_jobs(client).items():
                with contextlib.suppress(jobs.JobNotFound):
                    states.append(jobs.JobStore(where["output"],
                                                where.get("storage_options") or {}).read(job_id))
    if as_json:
        click.echo(json.dumps(states, indent=2, sort_keys=True, default=str))
        return
    for state in states:
        click.echo(f"{state['job_id']:<48} {state['state']:<10} "
                   f"{state.get('stage') or '-':<16} {state.get('submitted_at')}")


def _describe(state: dict[str, Any]) -> str:
    lines = [f"job:       {state['job_id']} ({state['name']})",
             f"state:     {state['state']}"
             + (" (cancel requested)" if state.get("cancel_requested") else ""),
             f"stage:     {state.get('stage') or '-'}",
             f"submitted: {state.get('submitted_at')}",
             f"started:   {state.get('started_at') or '-'}",
             f"finished:  {state.get('finished_at') or '-'}",
             f"scheduler: {state.get('scheduler')} (driver {state.get('key')}"
             + (f" on {state['worker']}" if state.get("worker") else "") + ")"]
    if state.get("attempt", 0) > 1:
        lines.append(f"attempts:  {state['attempt']}")
    if state.get("run_url"):
        lines.append(f"run:       {state['run_url']}")
        lines.append(f"model:     {state['model_url']}")
    for name, value in (state.get("metrics") or {}).items():
        lines.append(f"  {name:<12} {value:.4f}" if isinstance(value, float)
                     else f"  {name:<12} {value}")
    if state.get("error"):
        lines.append(f"error:     {state['error']}")
    return "\n".join(lines)
