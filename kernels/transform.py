"""Element-wise transforms of float features: signed log, power transforms, pairwise ops.

NaN means missing and stays NaN in every output. Lambda fits ignore NaN.
"""

from __future__ import annotations

import math

import numpy as np

from kernels._jit import bits_f64, f64_bits, jit
from kernels._validate import choice, float_array, float_scalar, same_length

__all__ = ["box_cox", "box_cox_lambda", "pairwise", "signed_log1p", "yeo_johnson",
           "yeo_johnson_lambda"]

_EPS = float(np.finfo(np.float64).eps)

# --------------------------------------------------------------------------- log1p
# libm's log1p is a scalar call that LLVM cannot vectorize (~15 ns per value here). This is
# fdlibm's log (error < 1 ulp) on 1 + u, with the rounding error of 1 + u added back
# (log1p(u) = log(1 + u) + (u - ((1 + u) - 1)) / (1 + u)); exponent and mantissa come from the
# float's bits, so the whole loop vectorizes (tests: within 2 ulp of numpy's log1p).
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_LG1 = 6.666666666666735130e-01
_LG2 = 3.999999999940941908e-01
_LG3 = 2.857142874366239149e-01
_LG4 = 2.222219843214978396e-01
_LG5 = 1.818357216161805012e-01
_LG6 = 1.531383769920937332e-01
_LG7 = 1.479819860511658591e-01
_MANTISSA = np.uint64(0x000FFFFFFFFFFFFF)
_EXP_ONE = np.uint64(0x3FF0000000000000)  # exponent bits of [1, 2)
_EXP_HALF = np.uint64(0x3FE0000000000000)  # exponent bits of [0.5, 1)
_SQRT2_MANTISSA = np.uint64(0x6A09E667F3BCD)
_TWO52_BITS = np.uint64(0x4330000000000000)  # 2**52: or-ing a small integer gives 2**52 + i
_ONE_U = np.uint64(1)
_SHIFT52 = np.uint64(52)


@jit
def _log1p_nonneg(u):
    """log1p(u) for u >= 0, +inf or NaN."""
    y = 1.0 + u
    corr = (u - (y - 1.0)) / y
    bits = f64_bits(y)
    mant = bits & _MANTISSA
    high = mant > _SQRT2_MANTISSA  # reduce the mantissa to [sqrt(2)/2, sqrt(2))
    biased = (bits >> _SHIFT52) + _ONE_U if high else bits >> _SHIFT52
    k = (bits_f64(biased | _TWO52_BITS) - 4503599627370496.0) - 1023.0
    f = bits_f64(mant | (_EXP_HALF if high else _EXP_ONE)) - 1.0
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    r = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7))) + w * (_LG2 + w * (_LG4 + w * _LG6))
    hfsq = 0.5 * f * f
    # For u < 2**-53, y == 1: f = k = s = 0 and this is exactly corr = u. NaN propagates.
    out = k * _LN2_HI - ((hfsq - (s * (hfsq + r) + (k * _LN2_LO + corr))) - f)
    return u if u == np.inf else out


@jit
def _signed_log1p(x, out):
    for i in range(x.size):
        v = x[i]
        a = _log1p_nonneg(abs(v))
        out[i] = -a if v < 0.0 else a


def signed_log1p(x: np.ndarray) -> np.ndarray:
    """Signed log: ``sign(x) * log1p(|x|)``, a monotone squash of heavy tails.

    Defined for all reals, odd, ``0 -> 0``, ``±inf -> ±inf``, NaN stays NaN (``-0.0`` gives
    ``0.0``). Within 2 ulp of ``np.sign(x) * np.log1p(np.abs(x))``.

    Parameters
    ----------
    x : (n,) numeric array

    Returns
    -------
    (n,) float64 array

    Examples
    --------
    >>> signed_log1p(np.array([-(np.e - 1), 0.0, np.e ** 2 - 1, np.nan]))
    array([-1.,  0.,  2., nan])
    """
    x = float_array(x, "x")
    out = np.empty(x.size, np.float64)
    _signed_log1p(x, out)
    return out


# --------------------------------------------------------------------------- power transforms
# np.log1p/np.expm1/np.log (not math.*) so that the plain-Python path (NUMBA_DISABLE_JIT)
# returns inf/NaN like compiled code instead of raising OverflowError/ValueError (compiled,
# both are the same libm calls).


@jit
def _yj_one(x, lmbda):
    if x >= 0.0:
        if abs(lmbda) < _EPS:
            return np.log1p(x)
        return np.expm1(lmbda * np.log1p(x)) / lmbda
    if abs(lmbda - 2.0) > _EPS:
        return -np.expm1((2.0 - lmbda) * np.log1p(-x)) / (2.0 - lmbda)
    return -np.log1p(-x)


@jit
def _yeo_johnson(x, lmbda, out):
    for i in range(x.size):
        v = x[i]
        out[i] = v if v != v else _yj_one(v, lmbda)


def yeo_johnson(x: np.ndarray, lmbda: float) -> np.ndarray:
    """Yeo-Johnson power transform with parameter ``lmbda``.

    ::

        ((x + 1)**l - 1) / l                    x >= 0, l != 0
        log(x + 1)                              x >= 0, l == 0
        -((1 - x)**(2 - l) - 1) / (2 - l)       x < 0,  l != 2
        -log(1 - x)                             x < 0,  l == 2

    computed as ``expm1(l * log1p(x)) / l`` etc. (as ``scipy.stats.yeojohnson``). NaN stays
    NaN; results that overflow are ±inf.

    Parameters
    ----------
    x : (n,) numeric array
    lmbda : float
        Finite, e.g. from :func:`yeo_johnson_lambda`.

    Returns
    -------
    (n,) float64 array

    Examples
    --------
    >>> yeo_johnson(np.array([-1.0, 0.0, 3.0]), lmbda=0.5)
    array([-1.21895142,  0.        ,  2.        ])
    """
    x = float_array(x, "x")
    lmbda = float_scalar(lmbda, "lmbda")
    out = np.empty(x.size, np.float64)
    _yeo_johnson(x, lmbda, out)
    return out


@jit
def _bc_one(x, lmbda):
    if abs(lmbda) < _EPS:
        return np.log(x)
    return np.expm1(lmbda * np.log(x)) / lmbda


@jit
def _box_cox(x, lmbda, out):
    for i in range(x.size):
        v = x[i]
        out[i] = v if v != v else _bc_one(v, lmbda)


@jit
def _nan_argmin(x):
    best = -1
    for i in range(x.size):
        v = x[i]
        if v == v and (best < 0 or v < x[best]):
            best = i
    return best


def _check_positive(x: np.ndarray) -> None:
    i = _nan_argmin(x)
    if i >= 0 and not x[i] > 0:
        raise ValueError(f"x must be > 0 for Box-Cox; found min {x[i]} at row {i} "
                         f"(use yeo_johnson for data with zeros or negative values)")


def box_cox(x: np.ndarray, lmbda: float) -> np.ndarray:
    """Box-Cox power transform of positive data with parameter ``lmbda``.

    ::

        (x**l - 1) / l      l != 0
        log(x)              l == 0

    computed as ``expm1(l * log(x)) / l``. NaN stays NaN.

    Parameters
    ----------
    x : (n,) numeric array
        Every non-NaN value must be > 0 (the error names the minimum and its row).
    lmbda : float
        Finite, e.g. from :func:`box_cox_lambda`.

    Returns
    -------
    (n,) float64 array

    Examples
    --------
    >>> box_cox(np.array([1.0, 4.0, np.nan]), lmbda=0.5)
    array([ 0.,  2., nan])
    """
    x = float_array(x, "x")
    lmbda = float_scalar(lmbda, "lmbda")
    _check_positive(x)
    out = np.empty(x.size, np.float64)
    _box_cox(x, lmbda, out)
    return out


# --------------------------------------------------------------------------- lambda fits
_YJ = 0
_BC = 1
_LAMBDA_BOUND = 5.0


@jit
def _log_var(y):
    """log of the population variance of y, scaled so that squares cannot overflow."""
    n = y.size
    total = 0.0
    for i in range(n):
        total += y[i]
    mean = total / n
    big = 0.0
    for i in range(n):
        d = abs(y[i] - mean)
        if d > big:
            big = d
    if not big > 0.0 or not big < np.inf:
        return -np.inf if big == 0.0 else np.inf
    ss = 0.0
    for i in range(n):
        d = (y[i] - mean) / big
        ss += d * d
    return 2.0 * np.log(big) + np.log(ss / n)


@jit
def _neg_llf(kind, x, lmbda, log_jacobian, work):
    # Log-likelihood of a normal fit to the transformed data, up to a constant (as scipy's
    # yeojohnson_llf / boxcox_llf): -n/2 log(var(t(x))) + (l - 1) sum(log-jacobian terms).
    for i in range(x.size):
        work[i] = _yj_one(x[i], lmbda) if kind == _YJ else _bc_one(x[i], lmbda)
    lv = _log_var(work)
    if not lv > -np.inf or not lv < np.inf:
        return np.inf  # degenerate or overflowing transform: never the optimum
    return 0.5 * x.size * lv - (lmbda - 1.0) * log_jacobian


@jit
def _fit_lambda(kind, x, lo, hi):
    # Brent's bounded minimisation (golden section + parabolic steps), as scipy.optimize's
    # fminbound, with its tolerance (xatol = 1.48e-8).
    work = np.empty(x.size, np.float64)
    log_jacobian = 0.0
    for i in range(x.size):
        v = x[i]
        if kind == _YJ:
            log_jacobian += np.log1p(v) if v >= 0 else -np.log1p(-v)
        else:
            log_jacobian += np.log(v)
    xatol = 1.48e-8
    sqrt_eps = math.sqrt(2.2e-16)
    golden_mean = 0.5 * (3.0 - math.sqrt(5.0))
    a = lo
    b = hi
    fulc = a + golden_mean * (b - a)
    nfc = fulc
    xf = fulc
    rat = 0.0
    e = 0.0
    fx = _neg_llf(kind, x, xf, log_jacobian, work)
    ffulc = fx
    fnfc = fx
    xm = 0.5 * (a + b)
    tol1 = sqrt_eps * abs(xf) + xatol / 3.0
    tol2 = 2.0 * tol1
    for _ in range(500):
        if abs(xf - xm) <= tol2 - 0.5 * (b - a):
            break
        golden = True
        if abs(e) > tol1:
            golden = False
            r = (xf - nfc) * (fx - ffulc)
            q = (xf - fulc) * (fx - fnfc)
            p = (xf - fulc) * q - (xf - nfc) * r
            q = 2.0 * (q - r)
            if q > 0.0:
                p = -p
            q = abs(q)
            r = e
            e = rat
            if abs(p) < abs(0.5 * q * r) and p > q * (a - xf) and p < q * (b - xf):
                rat = p / q
                u = xf + rat
                if (u - a) < tol2 or (b - u) < tol2:
                    rat = tol1 if xm >= xf else -tol1
            else:
                golden = True
        if golden:
            e = (a - xf) if xf >= xm else (b - xf)
            rat = golden_mean * e
        step = max(abs(rat), tol1)
        u = xf + (step if rat >= 0.0 else -step)
        fu = _neg_llf(kind, x, u, log_jacobian, work)
        if fu <= fx:
            if u >= xf:
                a = xf
            else:
                b = xf
            fulc = nfc
            ffulc = fnfc
            nfc = xf
            fnfc = fx
            xf = u
            fx = fu
        else:
            if u < xf:
                a = u
            else:
                b = u
            if fu <= fnfc or nfc == xf:
                fulc = nfc
                ffulc = fnfc
                nfc = u
                fnfc = fu
            elif fu <= ffulc or fulc == xf or fulc == nfc:
                fulc = u
                ffulc = fu
        xm = 0.5 * (a + b)
        tol1 = sqrt_eps * abs(xf) + xatol / 3.0
        tol2 = 2.0 * tol1
    return xf


@jit
def _yeo_johnson_lambda(x, lo, hi):
    return _fit_lambda(_YJ, x, lo, hi)


@jit
def _box_cox_lambda(x, lo, hi):
    return _fit_lambda(_BC, x, lo, hi)


def _fit_input(x: np.ndarray, what: str) -> np.ndarray:
    x = float_array(x, "x")
    x = x[~np.isnan(x)]
    if not np.all(np.isfinite(x)):
        i = int(np.flatnonzero(~np.isfinite(x))[0])
        raise ValueError(f"x must be finite (NaN is ignored) to fit the {what} lambda; found "
                         f"{x[i]} at non-NaN position {i}")
    if x.size < 2 or x.min() == x.max():
        raise ValueError(f"x needs at least 2 distinct non-NaN values to fit the {what} lambda;"
                         f" got {x.size} value(s){' all equal' if x.size else ''}")
    return x


def _bounds(log_max: float) -> tuple[float, float]:
    # Also keep l * log(x) within half the float exponent range, so that transformed values
    # and their squares stay finite (as scipy's yeojohnson_normmax does).
    limit = (math.log(np.finfo(np.float64).max) + math.log(_EPS)) / 2 / max(log_max, 1e-300)
    return max(-_LAMBDA_BOUND, -limit), min(_LAMBDA_BOUND, limit)


def yeo_johnson_lambda(x: np.ndarray) -> float:
    """Maximum-likelihood Yeo-Johnson lambda, bounded to ``[-5, 5]``.

    Maximises ``llf(l) = -n/2 log(var(yeo_johnson(x, l))) + (l - 1) sum(sign(x) log1p(|x|))``
    (the normal log-likelihood of the transformed data, as ``scipy.stats.yeojohnson_llf``)
    with Brent's bounded method. The bounds shrink for huge ``|x|`` so that
    ``|l log1p(|x|)|`` stays below ~337 (no overflow). NaN values are ignored; the cost is
    about 40 passes over ``x``, so fit on a sample.

    Parameters
    ----------
    x : (n,) numeric array
        At least 2 distinct non-NaN values, all finite.

    Returns
    -------
    float

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> round(yeo_johnson_lambda(rng.lognormal(size=2000)), 2)
    -0.86
    """
    x = _fit_input(x, "Yeo-Johnson")
    lo, hi = _bounds(math.log1p(float(np.abs(x).max())))
    return float(_yeo_johnson_lambda(x, lo, hi))


def box_cox_lambda(x: np.ndarray) -> float:
    """Maximum-likelihood Box-Cox lambda, bounded to ``[-5, 5]``.

    Maximises ``llf(l) = -n/2 log(var(box_cox(x, l))) + (l - 1) sum(log(x))`` (as
    ``scipy.stats.boxcox_llf``; ``scipy.stats.boxcox_normmax(x, method="mle")``) with Brent's
    bounded method; bounds shrink for extreme ``x`` so that ``|l log(x)|`` stays below ~337.
    NaN values are ignored.

    Parameters
    ----------
    x : (n,) numeric array
        Every non-NaN value > 0 and finite; at least 2 distinct values.

    Returns
    -------
    float

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> round(box_cox_lambda(rng.lognormal(size=2000)), 2)
    0.02
    """
    x = _fit_input(x, "Box-Cox")
    _check_positive(x)
    lo, hi = _bounds(float(np.abs(np.log(x)).max()))
    return float(_box_cox_lambda(x, lo, hi))


# --------------------------------------------------------------------------- pairwise
_OPS = {"ratio": 0, "product": 1, "difference": 2, "sum": 3}


@jit
def _pairwise(a, b, op, out):
    if op == 0:
        for i in range(a.size):
            d = b[i]
            out[i] = a[i] / d if d != 0.0 else np.nan
    elif op == 1:
        for i in range(a.size):
            out[i] = a[i] * b[i]
    elif op == 2:
        for i in range(a.size):
            out[i] = a[i] - b[i]
    else:
        for i in range(a.size):
            out[i] = a[i] + b[i]


def pairwise(a: np.ndarray, b: np.ndarray, op: str) -> np.ndarray:
    """Element-wise combination of two features.

    ``"ratio"``: ``a / b``, NaN where ``b == 0`` (not ±inf: a zero denominator is "undefined",
    not "huge"); ``"product"``: ``a * b``; ``"difference"``: ``a - b``; ``"sum"``: ``a + b``.
    NaN in either input gives NaN; other IEEE rules apply (``inf - inf`` is NaN,
    ``1 / inf`` is 0).

    Parameters
    ----------
    a, b : (n,) numeric arrays
    op : {"ratio", "product", "difference", "sum"}

    Returns
    -------
    (n,) float64 array

    Examples
    --------
    >>> pairwise(np.array([1.0, 1.0, np.nan]), np.array([4.0, 0.0, 1.0]), "ratio")
    array([0.25,  nan,  nan])
    """
    a = float_array(a, "a")
    b = float_array(b, "b")
    same_length(("a", a), ("b", b))
    op = choice(op, "op", tuple(_OPS))
    out = np.empty(a.size, np.float64)
    _pairwise(a, b, _OPS[op], out)
    return out
