"""Error-message helpers shared by every room of ``pipeline``.

A leaf module: it imports nothing from ``pipeline`` (difflib only), so the light modules that
``mlpipe --help`` imports (config) and the stages alike can use it without an import circle.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Iterable


def did_you_mean(word: str, choices: Iterable[object]) -> str:
    """The hint ``"; did you mean 'x'?"`` for the choice closest to ``word``, or ``""``.

    The one "did you mean" of the project: append it right after the clause that names the
    unknown ``word``. Choices are compared as strings (column labels need not be str); a mapping
    offers its keys. Closeness is :func:`difflib.get_close_matches` with its default cutoff 0.6.

    Parameters
    ----------
    word : str
        The unknown name the user wrote.
    choices : iterable
        The names that would have been valid.

    Returns
    -------
    str
        ``"; did you mean 'closest'?"``, or ``""`` when no choice is close enough.

    Examples
    --------
    >>> did_you_mean("taget", ["target", "train"])
    "; did you mean 'target'?"
    >>> did_you_mean("zzz", ["target", "train"])
    ''
    """
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


class StorageError(OSError):
    """A read or write of a bundle or data file failed for good (after its retries).

    Its message names the URL and the stage (``"publish the manifest"``, ``"write part 12"``)
    and what to check; ``mlpipe`` exits with the storage-failure code for it.
    """


class ClusterLostError(RuntimeError):
    """The Dask scheduler went away in the middle of a command (its work in memory with it);
    ``mlpipe`` exits with the cluster code for it."""


class ExitCode(enum.IntEnum):
    """``mlpipe``'s exit codes: one per kind of failure a script may want to tell apart.

    :data:`EXIT_CODES` says what each means; ``mlpipe --help`` and the README print it, and
    :func:`pipeline.cli.main` maps an exception to its code with :func:`exit_code`.
    """

    OK = 0
    ERROR = 1
    BAD_INPUT = 2
    DRIFT = 3
    DECAY = 4
    CLUSTER = 5
    STORAGE = 6
    INTERRUPTED = 130


#: what each exit code means, in the words of ``mlpipe --help``
EXIT_CODES: dict[ExitCode, str] = {
    ExitCode.OK: "success (monitor: nothing flagged)",
    ExitCode.ERROR: "unexpected error (a bug: report it with the -v output)",
    ExitCode.BAD_INPUT: "bad input: job file, command line, data or model bundle",
    ExitCode.DRIFT: "monitor: drift flagged",
    ExitCode.DECAY: "monitor: quality decay flagged (also when drift is)",
    ExitCode.CLUSTER: "Dask cluster unreachable, without workers (or the GPUs asked for), or lost mid-command",
    ExitCode.STORAGE: "storage failure after retries (nothing partial published)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


def exit_code(exc: BaseException, bad_input: tuple[type[BaseException], ...] = (),
              cluster: tuple[type[BaseException], ...] = ()) -> ExitCode:
    """The exit code of a command that raised ``exc``.

    The rule, in order: interrupted; storage (:class:`StorageError` anywhere in the chain:
    a storage failure wrapped by a stage is still one); the cluster (:class:`ClusterLostError`
    or one of ``cluster``); bad input (one of ``bad_input``: the callers pass the error
    types of the job file, the data and the bundles, which live in upper modules); else 1.

    Examples
    --------
    >>> int(exit_code(StorageError("put s3://b/x failed")))
    6
    >>> int(exit_code(KeyError("x")))
    1
    """
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    chain = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    if any(isinstance(e, StorageError) for e in chain):
        return ExitCode.STORAGE
    if isinstance(exc, (ClusterLostError, *cluster)):
        return ExitCode.CLUSTER
    if isinstance(exc, bad_input):
        return ExitCode.BAD_INPUT
    return ExitCode.ERROR


def exit_codes_text() -> str:
    """The exit codes as lines ``"  2  bad input: ..."`` (``mlpipe --help``, README)."""
    return "\n".join(f"  {int(code):<3d} {meaning}" for code, meaning in EXIT_CODES.items())
