"""``mlpipe``: the command line. Heavy imports happen inside the commands that need them."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

from pipeline.cli_common import cluster_options, cluster_overrides, cluster_spec
from pipeline.config import JobError
from pipeline.errors import ClusterLostError, ExitCode, StorageError, exit_code, exit_codes_text

logger = logging.getLogger("pipeline")

#: errors that are the user's to fix: one paragraph, no traceback (unless -v).
_EXPECTED: tuple[type[BaseException], ...] = (JobError, ValueError, FileNotFoundError,
                                               PermissionError, TimeoutError, RuntimeError,
                                               StorageError)

#: (module, class) of the errors that mean bad input (exit 2), looked up only in modules
#: already imported: an error class whose module was never loaded cannot have been raised,
#: and importing it on the way out would cost seconds.
BAD_INPUT_ERRORS = (("pipeline.config", "JobError"), ("pipeline.load", "DataError"),
                    ("pipeline.artifacts", "BundleError"),
                    ("pipeline.monitor", "MonitorInputError"))
#: the same for "the cluster could not be reached or had no workers" (exit 5)
CLUSTER_ERRORS = (("cluster", "ClusterError"),)
#: and for "the scheduler went away while a command ran" (cluster.connect; exit 5 too)
LOST_ERRORS = (("cluster", "SchedulerLostError"),)


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (tests and notebooks swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class _Libraries(_Stderr):
    """The root logger's handler: what other libraries (distributed) log."""


class _NoTraceback(logging.Formatter):
    """One line per record: the traceback is left out (``-v`` shows it)."""

    def formatException(self, ei: Any) -> str:  # noqa: N802 (logging's name)
        return ""


#: distributed's own log format (``distributed.admin.log-format``)
_DISTRIBUTED_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


def _setup_logging(verbose: bool) -> None:
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("pipeline", "cluster"):
        log = logging.getLogger(name)
        log.handlers[:] = [handler]
        log.setLevel(logging.DEBUG if verbose else logging.INFO)
        log.propagate = False
    # distributed logs a lost scheduler or a failed task with its whole traceback, which
    # would bury the one paragraph the CLI prints. distributed adds a handler of its own at
    # import only when the root logger has none; with ours on the root, its records
    # propagate here instead (and a distributed imported earlier gets our format).
    formatter = (logging.Formatter if verbose else _NoTraceback)(_DISTRIBUTED_FORMAT)
    root = logging.getLogger()
    libraries = next((h for h in root.handlers if isinstance(h, _Libraries)), None)
    if libraries is None:
        libraries = _Libraries()
        root.addHandler(libraries)
    libraries.setFormatter(formatter)
    libraries.setLevel(logging.INFO if verbose else logging.WARNING)  # their chatter: -v
    # without -v, distributed's own warnings and errors (sizeof failures, a nanny killing a
    # worker at close, a failed task) are left out too: what they mean reaches the user as
    # our stage lines or one error paragraph
    libraries.filters[:] = [] if verbose else [_quiet_distributed]
    for h in logging.getLogger("distributed").handlers:
        h.setFormatter(formatter)
    _quiet_libraries(verbose)


def _quiet_distributed(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.CRITICAL or not record.name.startswith(("distributed",
                                                                              "tornado"))


def _quiet_libraries(verbose: bool) -> None:
    """What the libraries and the workers of clusters we start may print (-v: everything)."""
    import warnings

    from cluster import logs

    logs.set_worker_level(logging.INFO if verbose else logging.CRITICAL)
    if not verbose:  # e.g. dask-glm's deprecated dask config key: for its developers
        for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
            warnings.filterwarnings("ignore", category=category,
                                    module=r"(?!pipeline|kernels|cluster)")


@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             epilog="\b\nExit codes:\n" + exit_codes_text())
@click.option("-v", "--verbose", is_flag=True, help="Debug logging and full tracebacks.")
@click.version_option(package_name="mlpipe", prog_name="mlpipe")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """mlpipe: the whole ML workflow as one distributed Dask job.

    \b
    mlpipe run examples/demo.yaml                       # on a LocalCluster
    mlpipe run job.yaml --scheduler tcp://host:8786     # on an existing cluster
    mlpipe run job.yaml --set output=s3://bucket/mlpipe
    """
    ctx.obj = {"verbose": verbose}
    _setup_logging(verbose)


# --------------------------------------------------------------------------- run


@cli.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a job key, e.g. --set data.train=s3://b/x (repeatable).")
@cluster_options
def run(job_file: str, overrides: tuple[str, ...], scheduler: str | None,
        n_workers: int | None, threads_per_worker: int | None) -> None:
    """Run JOB_FILE end to end and publish the model bundle."""
    from pipeline.config import load_job
    from pipeline.progress import Progress, stage_names
    from pipeline.workflow import run as run_job

    job = load_job(job_file, [*overrides, *cluster_overrides(n_workers, threads_per_worker)])
    try:
        with Progress(stage_names(list(job.models))) as progress:  # a bar on a terminal
            result = run_job(job, address=scheduler, on_stage=progress.stage_done)
    except Exception as exc:
        # a cluster that could not be reached says so itself (cluster.ClusterError)
        if lost_scheduler(exc) and not isinstance(exc, _loaded_types(CLUSTER_ERRORS)):
            raise ClusterLostError(
                f"lost the connection to the Dask scheduler ({type(exc).__name__}: {exc}); the "
                "scheduler or its machine went away, and the work in the cluster's memory with "
                "it. Rerun the same command once the cluster is back: stages that completed "
                f"are kept under {job.output}/stages/ and are skipped") from exc
        raise
    board = result.leaderboard_table()
    if board:
        click.echo("")
        click.echo(board)
    click.echo("")
    click.echo(f"chosen: {result.family}")
    click.echo(result.table())
    click.echo("")
    click.echo(f"run:   {result.run_url}")
    click.echo(f"model: {result.model_url}")


def lost_scheduler(exc: BaseException) -> bool:
    """Errors distributed raises when the client's scheduler goes away mid-run."""
    import asyncio

    chain = _chain(exc)
    names = {type(e).__name__ for e in chain}
    text = " ".join(str(e) for e in chain).lower()
    if "CommClosedError" in names or any(
            isinstance(e, (asyncio.CancelledError, *_loaded_types(LOST_ERRORS))) for e in chain):
        return True
    return ("FutureCancelledError" in names and ("connection" in text or "scheduler" in text)) \
        or ("not running" in text and "client" in text)


def _chain(exc: BaseException | None) -> list[BaseException]:
    out = []
    while exc is not None and len(out) < 10:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


# --------------------------------------------------------------------------- config


@cli.group()
def config() -> None:
    """Check and show job files."""


@config.command("validate")
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
def config_validate(job_file: str, overrides: tuple[str, ...]) -> None:
    """Validate JOB_FILE (no cluster, no data read)."""
    from pipeline.config import load_job

    job = load_job(job_file, overrides)
    click.echo(f"{job_file}: valid ({job.data.task} job {job.name!r}, "
               f"{len(job.models)} model famil{'y' if len(job.models) == 1 else 'ies'})")


@config.command("show")
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--scheduler", default=None, metavar="ADDRESS")
def config_show(job_file: str, overrides: tuple[str, ...], scheduler: str | None) -> None:
    """Print the resolved job (defaults filled in) and the cluster it would use."""
    import cluster
    from pipeline.config import load_job

    job = load_job(job_file, overrides)
    click.echo(job.to_yaml().rstrip())
    choice = cluster.resolve(job.cluster.model_dump(by_alias=True), address=scheduler)
    click.echo(f"# cluster that would be used: {choice}")


# --------------------------------------------------------------------------- demo data


@cli.command("demo-data")
@click.argument("out")
@click.option("--rows", type=int, default=1_000_000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--rows-per-part", type=int, default=250_000, show_default=True)
@click.option("--drift", type=click.Choice(["covariate", "concept"]), default=None,
              help="Data with known drift: covariate (other applicants, same risk given what "
                   "they are) or concept (same applicants, other reasons to default).")
@click.option("--strength", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="How much of the drift (0: none, 1: all of it).")
@click.option("--start-month", default=None, metavar="YYYY-MM",
              help="The first month (by applied_at, 2023-01 .. 2024-12) that drifts; "
                   "default: every row.")
@cluster_options
def demo_data(out: str, rows: int, seed: int, rows_per_part: int, drift: str | None,
              strength: float, start_month: str | None, scheduler: str | None,
              n_workers: int | None, threads_per_worker: int | None) -> None:
    """Generate the demo loan dataset (Parquet) at OUT, in parallel on the cluster."""
    import re

    if start_month is not None and not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", start_month):
        raise click.BadParameter(f"expected YYYY-MM, e.g. 2024-07; got {start_month!r}",
                                 param_hint="--start-month")
    import time

    import cluster
    from pipeline.demo import write_demo_data

    with cluster.connect(cluster_spec(n_workers, threads_per_worker),
                         address=scheduler) as client:
        logger.info("dashboard: %s", client.dashboard_link)
        start = time.perf_counter()
        info = write_demo_data(out, rows, seed=seed, rows_per_part=rows_per_part, drift=drift,
                               strength=strength, start=start_month)
        logger.info("[%6.1fs] wrote %s rows in %s parts", time.perf_counter() - start,
                    f"{info['rows']:,}", info["parts"])
    click.echo(json.dumps(info))


# --------------------------------------------------------------------------- more commands


def _add_commands() -> None:
    """Commands defined in their own modules (click only at their top level: fast --help)."""
    import importlib

    for module in COMMAND_MODULES:
        for command in importlib.import_module(module).COMMANDS:
            cli.add_command(command)


#: modules with a ``COMMANDS`` list of click commands.
COMMAND_MODULES: list[str] = ["pipeline.cli_report", "pipeline.cli_score", "pipeline.cli_models",
                              "pipeline.cli_jobs", "pipeline.cli_serve", "pipeline.cli_monitor"]
_add_commands()


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one paragraph per error and a non-zero exit, no traceback."""
    args = sys.argv[1:] if argv is None else argv
    verbose = any(a in ("-v", "--verbose") for a in args)
    try:
        # a command's ctx.exit(code) comes back here as the return value (mlpipe monitor's
        # 3 and 4); a command that returns normally gives None
        code = cli.main(args=args, prog_name="mlpipe", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return ExitCode.INTERRUPTED
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return ExitCode.INTERRUPTED
    except Exception as exc:
        code = int(exit_code(exc, _loaded_types(BAD_INPUT_ERRORS) + (FileNotFoundError,),
                             _loaded_types(CLUSTER_ERRORS + LOST_ERRORS)))
        if verbose:
            import traceback

            traceback.print_exc()
        click.echo(_paragraph(exc), err=True)
        return code
    return code if isinstance(code, int) else 0


def _loaded_types(names: tuple[tuple[str, str], ...]) -> tuple[type[BaseException], ...]:
    return tuple(getattr(sys.modules[module], name) for module, name in names
                 if module in sys.modules and hasattr(sys.modules[module], name))


def _paragraph(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if not isinstance(exc, _EXPECTED) or type(exc) in (RuntimeError, ValueError):
        kind = type(exc).__name__
        text = f"{kind}: {text}" if type(exc) not in (ValueError,) else text
    return f"error: {text}\n(run with -v for the full traceback)"


if __name__ == "__main__":
    raise SystemExit(main())
