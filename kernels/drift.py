"""Drift statistics between two histograms over the same bins.

Inputs are counts per bin (e.g. :func:`kernels.bin_counts` of the training data, "expected",
and of recent data, "actual", with the same edges; append the missing count as one more bin
to monitor missingness too). Counts are summed over partitions first, so these run on small
arrays on the driver.
"""

from __future__ import annotations

import math

import numpy as np

from kernels._jit import jit
from kernels._validate import float_array, float_scalar

__all__ = ["chi_square", "ks_from_counts", "psi"]


def _check_counts(expected: object, actual: object) -> tuple[np.ndarray, np.ndarray]:
    e = float_array(expected, "expected_counts")
    a = float_array(actual, "actual_counts")
    if e.size != a.size:
        raise ValueError(f"expected_counts and actual_counts must have the same bins; got "
                         f"lengths {e.size} and {a.size}")
    if e.size == 0:
        raise ValueError("expected_counts and actual_counts must have at least one bin; got 0")
    for name, arr in (("expected_counts", e), ("actual_counts", a)):
        if not np.all((arr >= 0) & (arr < np.inf)):
            i = int(np.flatnonzero(~((arr >= 0) & (arr < np.inf)))[0])
            raise ValueError(f"{name} must be finite and >= 0; got {arr[i]} in bin {i}")
        if not arr.sum() > 0:
            raise ValueError(f"{name} must have a positive total; got all zeros")
    return e, a


@jit
def _psi(e, a, eps):
    te = e.sum()
    ta = a.sum()
    total = 0.0
    for i in range(e.size):
        p = max(e[i] / te, eps)
        q = max(a[i] / ta, eps)
        total += (q - p) * math.log(q / p)
    return total


def psi(expected_counts: np.ndarray, actual_counts: np.ndarray, eps: float = 1e-6) -> float:
    """Population stability index.

    With ``p_i = max(expected_i / sum(expected), eps)`` and
    ``q_i = max(actual_i / sum(actual), eps)``::

        PSI = sum((q_i - p_i) * ln(q_i / p_i))

    ``eps`` keeps empty bins finite. Common reading: < 0.1 stable, 0.1-0.25 moderate shift,
    > 0.25 major shift.

    Parameters
    ----------
    expected_counts, actual_counts : (k,) arrays
        Non-negative, finite, each with a positive total.
    eps : float
        > 0.

    Returns
    -------
    float, >= 0

    Examples
    --------
    >>> round(psi(np.array([50, 50]), np.array([25, 75])), 4)
    0.2747
    """
    e, a = _check_counts(expected_counts, actual_counts)
    eps = float_scalar(eps, "eps", minimum=0.0, exclusive=True)
    return float(_psi(e, a, eps))


@jit
def _ks_from_counts(e, a):
    te = e.sum()
    ta = a.sum()
    ce = 0.0
    ca = 0.0
    best = 0.0
    for i in range(e.size):
        ce += e[i]
        ca += a[i]
        d = abs(ce / te - ca / ta)
        if d > best:
            best = d
    return best


def ks_from_counts(expected_counts: np.ndarray, actual_counts: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance between two binned distributions.

    ``D = max_i |E_i - A_i|`` with ``E_i``, ``A_i`` the cumulative fractions up to bin ``i``:
    the two-sample KS statistic evaluated at the bin edges only (a lower bound of the
    statistic on the raw data).

    Parameters
    ----------
    expected_counts, actual_counts : (k,) arrays
        Non-negative, finite, each with a positive total; bins in increasing order.

    Returns
    -------
    float in [0, 1]

    Examples
    --------
    >>> ks_from_counts(np.array([50, 50]), np.array([25, 75]))
    0.25
    """
    e, a = _check_counts(expected_counts, actual_counts)
    return float(_ks_from_counts(e, a))


@jit
def _chi_square(e, a):
    te = e.sum()
    ta = a.sum()
    total = te + ta
    stat = 0.0
    used = 0
    for i in range(e.size):
        col = e[i] + a[i]
        if col == 0:
            continue
        used += 1
        ee = col * te / total
        ea = col * ta / total
        stat += (e[i] - ee) ** 2 / ee + (a[i] - ea) ** 2 / ea
    return stat, max(used - 1, 0)


def chi_square(expected_counts: np.ndarray, actual_counts: np.ndarray) -> tuple[float, int]:
    """Chi-square test of homogeneity of two histograms (2 x k contingency table).

    With row totals ``T_e``, ``T_a``, column totals ``C_i = e_i + a_i`` and ``N = T_e + T_a``,
    the expected cell counts are ``C_i T_r / N`` and::

        stat = sum over both rows r and bins i of (observed - expected)**2 / expected
        dof  = (number of bins with C_i > 0) - 1

    Bins empty in both histograms are left out. Equals
    ``scipy.stats.chi2_contingency(np.vstack([e, a]), correction=False)``'s statistic and dof;
    the p-value is ``scipy.stats.chi2.sf(stat, dof)``.

    Parameters
    ----------
    expected_counts, actual_counts : (k,) arrays
        Non-negative, finite, each with a positive total.

    Returns
    -------
    stat : float
    dof : int

    Examples
    --------
    >>> chi_square(np.array([50, 50]), np.array([25, 75]))
    (13.333333333333334, 1)
    """
    e, a = _check_counts(expected_counts, actual_counts)
    stat, dof = _chi_square(e, a)
    return float(stat), int(dof)
