"""Error-message helpers shared by every room of ``pipeline``.

A leaf module: it imports nothing from ``pipeline`` (difflib only), so the light modules that
``mlpipe --help`` imports (config) and the stages alike can use it without an import circle.
"""

from __future__ import annotations

import difflib
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
