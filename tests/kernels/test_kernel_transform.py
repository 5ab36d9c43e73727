import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernels import (
    box_cox,
    box_cox_lambda,
    pairwise,
    signed_log1p,
    yeo_johnson,
    yeo_johnson_lambda,
)
from tests.kernels import reference as ref
from tests.kernels.kernel_strategies import JIT, SETTINGS, N, float_arrays, rng

scipy_stats = pytest.importorskip("scipy.stats")
scipy_special = pytest.importorskip("scipy.special")

ULP = np.finfo(np.float64).eps


def _wide_range(n=N, seed=0):
    r = rng(seed)
    x = np.concatenate([
        r.normal(size=n),
        r.normal(size=n) * 1e6,
        np.exp(r.uniform(-745, 709, n)) * r.choice([-1, 1], n),  # every binade
        [0.0, -0.0, np.nan, np.inf, -np.inf, 5e-324, 1e-300, 2**-53, 2**-52, 2**-54, 1.0,
         np.sqrt(2) - 1, np.nextafter(np.sqrt(2) - 1, 1), 1e308, -1.7e308, 0.5, -0.5, 3.0],
    ])
    return x


# --------------------------------------------------------------------------- signed_log1p


def test_signed_log1p_within_two_ulp_of_numpy():
    x = _wide_range()
    got = signed_log1p(x)
    expected = np.sign(x) * np.log1p(np.abs(x))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    ok = np.isfinite(expected)
    np.testing.assert_allclose(got[ok], expected[ok], rtol=2 * ULP, atol=0)
    np.testing.assert_array_equal(got[~ok], expected[~ok])


def test_signed_log1p_matches_reference_and_is_odd():
    x = _wide_range(n=300)
    np.testing.assert_allclose(signed_log1p(x), ref.signed_log1p(x), rtol=2 * ULP)
    finite = x[np.isfinite(x)]
    np.testing.assert_array_equal(signed_log1p(-finite), -signed_log1p(finite))


def test_signed_log1p_accepts_ints_and_float32():
    np.testing.assert_allclose(signed_log1p(np.array([-3, 0, 3], dtype=np.int32)),
                               [-np.log(4), 0.0, np.log(4)], rtol=2 * ULP)
    np.testing.assert_allclose(signed_log1p(np.array([1.5], dtype=np.float32)),
                               [np.log1p(1.5)], rtol=2 * ULP)
    with pytest.raises(TypeError, match="x must be a numeric array"):
        signed_log1p(np.array(["1"]))
    with pytest.raises(TypeError, match=r"dtype object.*na_value=np.nan"):
        signed_log1p(np.array([1.0, None], dtype=object))


@SETTINGS
@given(x=float_arrays())
def test_signed_log1p_property(x):
    got = signed_log1p(x)
    expected = ref.signed_log1p(x)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, rtol=2 * ULP, atol=0)
    assert np.all(np.abs(got[np.isfinite(x)]) <= np.abs(x[np.isfinite(x)]))


# --------------------------------------------------------------------------- power transforms

LAMBDAS = [-3.0, -1.0, -0.5, 0.0, 1e-17, 0.3, 1.0, 2.0, 2.0 + 1e-17, 2.5, 4.0]


@pytest.mark.parametrize("lmbda", LAMBDAS)
def test_yeo_johnson_matches_scipy_and_reference(lmbda):
    x = rng(1).normal(scale=3.0, size=N)
    got = yeo_johnson(x, lmbda)
    np.testing.assert_allclose(got, scipy_stats.yeojohnson(x, lmbda), rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(got[:300], ref.yeo_johnson(x[:300], lmbda), rtol=1e-14)


def test_yeo_johnson_nan_and_overflow():
    got = yeo_johnson(np.array([np.nan, 1e300, -1e300, np.inf]), 3.0)
    assert np.isnan(got[0]) and got[1] == np.inf and got[3] == np.inf
    assert np.isfinite(got[2])  # (1 - x)**(2 - 3) is tiny: no overflow on the negative side


@pytest.mark.parametrize("lmbda", [-2.0, -0.5, 0.0, 1e-17, 0.5, 1.0, 3.0])
def test_box_cox_matches_scipy_and_reference(lmbda):
    x = rng(2).lognormal(size=N)
    got = box_cox(x, lmbda)
    np.testing.assert_allclose(got, scipy_special.boxcox(x, lmbda), rtol=1e-13)
    np.testing.assert_allclose(got[:300], ref.box_cox(x[:300], lmbda), rtol=1e-14)


def test_box_cox_requires_positive_values():
    with pytest.raises(ValueError, match=r"x must be > 0 for Box-Cox; found min -2.0 at row 2 "
                                         r"\(use yeo_johnson"):
        box_cox(np.array([1.0, np.nan, -2.0, 0.0]), 1.0)
    with pytest.raises(ValueError, match="found min 0.0 at row 1"):
        box_cox(np.array([1.0, 0.0]), 1.0)
    np.testing.assert_array_equal(box_cox(np.array([np.nan]), 1.0), [np.nan])
    with pytest.raises(ValueError, match="lmbda must be finite; got nan"):
        box_cox(np.array([1.0]), np.nan)


@SETTINGS
@given(x=float_arrays(), lmbda=st.sampled_from(LAMBDAS))
def test_yeo_johnson_property(x, lmbda):
    got = yeo_johnson(x, lmbda)
    expected = ref.yeo_johnson(x, lmbda)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    # (x + 1) ** 2 near 1e16 rounds differently from the reference's formula: 1.4e-14 relative
    np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-300)
    order = np.argsort(x[~np.isnan(x)], kind="stable")
    ordered = got[~np.isnan(x)][order]
    assert np.all(ordered[1:] >= ordered[:-1])  # monotone


@SETTINGS
@given(x=float_arrays(), lmbda=st.sampled_from(LAMBDAS))
def test_box_cox_property(x, lmbda):
    x = np.abs(x)
    x[x == 0] = 1.0
    got = box_cox(x, lmbda)
    expected = ref.box_cox(x, lmbda)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, rtol=1e-14, atol=1e-300)


# --------------------------------------------------------------------------- lambda fits

N_FIT = 2000 if JIT else 300


def _samples():
    r = rng(3)
    return {
        "lognormal": r.lognormal(size=N_FIT),
        "exponential": r.exponential(size=N_FIT),
        "normal": r.normal(5.0, 1.0, size=N_FIT),
        "chi2": r.chisquare(3, size=N_FIT),
        "uniform": r.uniform(1, 2, size=N_FIT),
        "weibull": r.weibull(4.0, size=N_FIT),  # skewed left
        "negative_lognormal": -r.lognormal(size=N_FIT),
    }


@pytest.mark.parametrize("name", list(_samples()))
def test_yeo_johnson_lambda_matches_scipy(name):
    x = _samples()[name]
    x = x - np.median(x) if name == "normal" else x  # some negative values
    got = yeo_johnson_lambda(x)
    expected = scipy_stats.yeojohnson_normmax(x)
    assert got == pytest.approx(expected, abs=1e-4)
    # at least as good as scipy's optimum
    assert ref.yeo_johnson_llf(x, got) >= ref.yeo_johnson_llf(x, expected) - 1e-8


@pytest.mark.parametrize("name", [k for k in _samples() if not k.startswith("negative")])
def test_box_cox_lambda_matches_scipy(name):
    x = _samples()[name]
    got = box_cox_lambda(x)
    expected = scipy_stats.boxcox_normmax(x, method="mle")
    assert got == pytest.approx(expected, abs=1e-4)
    assert ref.box_cox_llf(x, got) >= ref.box_cox_llf(x, expected) - 1e-8


def test_lambda_fits_ignore_nan_and_respect_bounds():
    x = rng(4).lognormal(size=N_FIT)
    with_nan = np.concatenate([x, [np.nan] * 10])
    assert box_cox_lambda(with_nan) == box_cox_lambda(x)
    assert yeo_johnson_lambda(with_nan) == yeo_johnson_lambda(x)
    # x = (1 + 10 y)**(1/10) with y normal: the Box-Cox optimum is near 10, beyond the bound
    extreme = (1.0 + 10.0 * rng(5).normal(scale=0.02, size=N_FIT)) ** 0.1
    assert box_cox_lambda(extreme) == pytest.approx(5.0, abs=1e-6)
    huge = np.array([1.0, 2.0, 1e300, 3.0])
    lo_hi = 336.9 / np.log(1e300)
    assert abs(box_cox_lambda(huge)) <= lo_hi + 1e-9
    assert np.isfinite(box_cox(huge, box_cox_lambda(huge))).all()


def test_lambda_fit_errors():
    with pytest.raises(ValueError, match="x needs at least 2 distinct non-NaN values to fit "
                                         "the Yeo-Johnson lambda; got 3 value"):
        yeo_johnson_lambda(np.array([1.0, 1.0, 1.0, np.nan]))
    with pytest.raises(ValueError, match="got 0 value"):
        box_cox_lambda(np.array([np.nan]))
    with pytest.raises(ValueError, match="x must be finite .* found inf"):
        yeo_johnson_lambda(np.array([1.0, np.inf]))
    with pytest.raises(ValueError, match="x must be > 0 for Box-Cox; found min -1.0"):
        box_cox_lambda(np.array([1.0, 2.0, -1.0]))


@SETTINGS
@given(x=float_arrays(min_size=2, allow_infinity=False))
def test_lambda_fit_property(x):
    finite = x[~np.isnan(x)]
    if finite.size < 2 or finite.min() == finite.max():
        with pytest.raises(ValueError):
            yeo_johnson_lambda(x)
        return
    lmbda = yeo_johnson_lambda(x)
    assert -5.0 <= lmbda <= 5.0
    pos = np.abs(finite) + 1e-3
    if pos.min() != pos.max():
        assert -5.0 <= box_cox_lambda(pos) <= 5.0


# --------------------------------------------------------------------------- pairwise

OPS = ["ratio", "product", "difference", "sum"]


@pytest.mark.parametrize("op", OPS)
def test_pairwise_matches_reference(op):
    a = _wide_range(n=200, seed=6)
    b = _wide_range(n=200, seed=7)
    b[::5] = 0.0
    np.testing.assert_array_equal(pairwise(a, b, op), ref.pairwise(a, b, op))


def test_pairwise_ratio_zero_denominator_is_nan():
    out = pairwise(np.array([1.0, -1.0, 0.0, 2.0]), np.array([0.0, -0.0, 0.0, 4.0]), "ratio")
    np.testing.assert_array_equal(out, [np.nan, np.nan, np.nan, 0.5])


def test_pairwise_errors():
    with pytest.raises(ValueError, match="op must be one of 'ratio', 'product', 'difference', "
                                         "'sum'; got 'div'"):
        pairwise(np.ones(2), np.ones(2), "div")
    with pytest.raises(ValueError, match="b must have the same length as a; got 3 and 2"):
        pairwise(np.ones(2), np.ones(3), "sum")


@SETTINGS
@given(data=st.data(), op=st.sampled_from(OPS))
def test_pairwise_property(data, op):
    a = data.draw(float_arrays())
    b = data.draw(float_arrays(min_size=a.size, max_size=a.size))
    np.testing.assert_array_equal(pairwise(a, b, op), ref.pairwise(a, b, op))
    if op == "ratio":
        assert not np.isinf(pairwise(a, b, op)[np.isfinite(a) & (b == 0)]).any()


def test_empty_inputs():
    for f in (signed_log1p, lambda x: yeo_johnson(x, 0.5), lambda x: box_cox(x, 0.5)):
        assert f(np.zeros(0)).shape == (0,)
    assert pairwise(np.zeros(0), np.zeros(0), "ratio").shape == (0,)
