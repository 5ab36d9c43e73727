import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernels import bin_counts, chi_square, ks_from_counts, psi, quantile_edges
from tests.kernels import reference as ref
from tests.kernels.kernel_strategies import SETTINGS, rng


def _hist_pair(shift=0.3, seed=0):
    r = rng(seed)
    train = r.normal(size=5000)
    recent = r.normal(loc=shift, size=3000)
    edges = quantile_edges(train, 10)
    return bin_counts(train, edges)[0], bin_counts(recent, edges)[0], train, recent


def test_psi_matches_reference():
    e, a, _, _ = _hist_pair()
    assert psi(e, a) == pytest.approx(ref.psi(list(e), list(a)), rel=1e-12)
    assert psi(e, a, eps=1e-3) == pytest.approx(ref.psi(list(e), list(a), 1e-3), rel=1e-12)
    assert psi(e, e) == 0.0
    assert psi(e, a) > psi(*_hist_pair(shift=0.05)[:2])


def test_psi_empty_bins_stay_finite():
    assert np.isfinite(psi(np.array([10, 0, 5]), np.array([0, 7, 5])))


def test_ks_from_counts_matches_reference_and_scipy_on_bins():
    scipy_stats = pytest.importorskip("scipy.stats")
    e, a, train, recent = _hist_pair()
    assert ks_from_counts(e, a) == pytest.approx(ref.ks_from_counts(list(e), list(a)),
                                                 rel=1e-12)
    # binned KS is a lower bound of the KS statistic on the raw data
    assert ks_from_counts(e, a) <= scipy_stats.ks_2samp(train, recent).statistic + 1e-12
    assert ks_from_counts(e, e * 3) == 0.0


def test_chi_square_matches_scipy_contingency():
    scipy_stats = pytest.importorskip("scipy.stats")
    e, a, _, _ = _hist_pair()
    stat, dof = chi_square(e, a)
    res = scipy_stats.chi2_contingency(np.vstack([e, a]), correction=False)
    assert stat == pytest.approx(res.statistic, rel=1e-12)
    assert dof == res.dof == 9
    assert (stat, dof) == pytest.approx(ref.chi_square(list(e), list(a)), rel=1e-12)


def test_chi_square_drops_bins_empty_in_both():
    stat, dof = chi_square(np.array([5, 0, 5]), np.array([5, 0, 10]))
    s2, d2 = chi_square(np.array([5, 5]), np.array([5, 10]))
    assert dof == d2 == 1 and stat == pytest.approx(s2)
    assert chi_square(np.array([3]), np.array([4])) == (0.0, 0)


def test_drift_errors():
    with pytest.raises(ValueError, match="expected_counts and actual_counts must have the same "
                                         "bins; got lengths 2 and 3"):
        psi(np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match="actual_counts must be finite and >= 0; got -1.0 in "
                                         "bin 1"):
        ks_from_counts(np.ones(2), np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="expected_counts must be finite and >= 0; got nan"):
        chi_square(np.array([1.0, np.nan]), np.ones(2))
    with pytest.raises(ValueError, match="expected_counts must have a positive total"):
        psi(np.zeros(2), np.ones(2))
    with pytest.raises(ValueError, match="at least one bin"):
        psi(np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="eps must be > 0.0; got 0.0"):
        psi(np.ones(2), np.ones(2), eps=0.0)


counts = st.lists(st.integers(0, 10**6), min_size=1, max_size=30)


@SETTINGS
@given(data=st.data())
def test_drift_property(data):
    e = data.draw(counts)
    a = data.draw(st.lists(st.integers(0, 10**6), min_size=len(e), max_size=len(e)))
    if sum(e) == 0 or sum(a) == 0:
        with pytest.raises(ValueError):
            psi(e, a)
        return
    e_arr, a_arr = np.array(e), np.array(a)
    assert psi(e_arr, a_arr) == pytest.approx(ref.psi(e, a), rel=1e-9, abs=1e-12)
    assert psi(e_arr, a_arr) >= 0.0
    assert 0.0 <= ks_from_counts(e_arr, a_arr) <= 1.0 + 1e-15
    assert ks_from_counts(e_arr, a_arr) == pytest.approx(ref.ks_from_counts(e, a), abs=1e-15)
    stat, dof = chi_square(e_arr, a_arr)
    rstat, rdof = ref.chi_square(e, a)
    assert dof == rdof and stat == pytest.approx(rstat, rel=1e-9, abs=1e-9)
