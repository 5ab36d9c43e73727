import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernels import bin_counts, bin_index, quantile_edges, uniform_bin_counts
from tests.kernels import reference as ref
from tests.kernels.kernel_strategies import SETTINGS, N, float_arrays, rng


def _data(n=N, seed=0):
    x = rng(seed).standard_t(3, size=n)
    x[::11] = np.nan
    x[5::50] = np.round(x[5::50])  # some ties
    return x


# --------------------------------------------------------------------------- quantile edges


@pytest.mark.parametrize("n_bins", [1, 2, 3, 10, 64, 1000])
def test_quantile_edges_matches_reference_and_numpy(n_bins):
    x = _data()
    edges = quantile_edges(x, n_bins)
    np.testing.assert_array_equal(edges, ref.quantile_edges(x, n_bins))
    expected = np.unique(np.quantile(x[~np.isnan(x)], np.arange(1, n_bins) / n_bins))
    np.testing.assert_allclose(edges, expected, rtol=1e-13)


def test_quantile_edges_equal_frequency():
    x = rng(1).normal(size=N)
    counts, missing = bin_counts(x, quantile_edges(x, 8))
    assert missing == 0 and counts.size == 8
    assert counts.max() - counts.min() <= 2


def test_quantile_edges_edge_cases():
    assert quantile_edges(np.array([]), 4).size == 0
    assert quantile_edges(np.full(5, np.nan), 4).size == 0
    np.testing.assert_array_equal(quantile_edges(np.array([3.0]), 4), [3.0])
    np.testing.assert_array_equal(quantile_edges(np.array([2.0, 2.0, 2.0]), 4), [2.0])
    np.testing.assert_array_equal(quantile_edges(np.array([1.0, 5.0]), 1), [])
    np.testing.assert_array_equal(quantile_edges(np.array([-np.inf, 0.0, np.inf]), 4),
                                  [-np.inf, 0.0, np.inf])
    np.testing.assert_array_equal(quantile_edges(np.array([-1.7e308, 1.7e308]), 2), [0.0])
    np.testing.assert_array_equal(quantile_edges(np.array([0, 1, 2], dtype=np.int8), 2), [1.0])


def test_quantile_edges_errors():
    with pytest.raises(ValueError, match="n_bins must be >= 1; got 0"):
        quantile_edges(np.array([1.0]), 0)
    with pytest.raises(TypeError, match="values must be a numeric array"):
        quantile_edges(np.array(["a"]), 3)


@SETTINGS
@given(x=float_arrays(), n_bins=st.integers(1, 20))
def test_quantile_edges_property(x, n_bins):
    edges = quantile_edges(x, n_bins)
    np.testing.assert_array_equal(edges, ref.quantile_edges(x, n_bins))
    assert edges.size <= n_bins - 1
    assert not np.isnan(edges).any()
    assert np.all(np.diff(edges) > 0)
    finite = x[~np.isnan(x)]
    if edges.size:
        assert finite.min() <= edges[0] and edges[-1] <= finite.max()


# --------------------------------------------------------------------------- bin index / counts


# 256 edges is the largest count handled by the vectorised linear scan, then binary search.
EDGE_COUNTS = [0, 1, 2, 3, 4, 5, 16, 17, 255, 256, 257, 1000]


@pytest.mark.parametrize("n_edges", EDGE_COUNTS)
def test_bin_index_matches_searchsorted_and_reference(n_edges):
    x = _data()
    edges = np.sort(rng(2).normal(size=n_edges))
    out = bin_index(x, edges)
    assert out.dtype == np.int32
    expected = np.where(np.isnan(x), -1, np.searchsorted(edges, x, side="right"))
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out[:300], ref.bin_index(x[:300], edges))


def test_bin_index_values_on_edges_and_infinities():
    edges = np.array([-np.inf, 0.0, 1.0, np.inf])
    x = np.array([-np.inf, -1.0, 0.0, 0.5, 1.0, np.inf, np.nan])
    np.testing.assert_array_equal(bin_index(x, edges), [1, 1, 2, 2, 3, 4, -1])


@pytest.mark.parametrize("n_edges", EDGE_COUNTS)
def test_bin_counts_matches_reference_and_numpy(n_edges):
    x = _data()
    x[7] = np.inf
    x[8] = -np.inf
    edges = np.sort(rng(2).normal(size=n_edges))
    counts, missing = bin_counts(x, edges)
    rc, rm = ref.bin_counts(x, edges)
    np.testing.assert_array_equal(counts, rc)
    assert missing == rm == np.isnan(x).sum()
    assert counts.dtype == np.int64 and isinstance(missing, int)
    ok = ~np.isnan(x)
    np.testing.assert_array_equal(
        counts, np.bincount(np.searchsorted(edges, x[ok], side="right"),
                            minlength=edges.size + 1))


def test_bin_counts_is_mergeable():
    x = _data()
    edges = quantile_edges(x, 5)
    whole, missing = bin_counts(x, edges)
    parts = [bin_counts(p, edges) for p in np.array_split(x, 6)]
    np.testing.assert_array_equal(sum(p[0] for p in parts), whole)
    assert sum(p[1] for p in parts) == missing


def test_edges_errors():
    with pytest.raises(ValueError, match=r"edges must be strictly increasing; edges\[2\] = 1.0 "
                                         r"<= edges\[1\] = 1.0"):
        bin_index(np.array([1.0]), np.array([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="edges must not contain NaN; found at index 1"):
        bin_counts(np.array([1.0]), np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="edges must be a 1-D array"):
        bin_counts(np.array([1.0]), np.zeros((2, 2)))


@SETTINGS
@given(x=float_arrays(), raw_edges=float_arrays(max_size=12, allow_nan=False))
def test_bin_index_and_counts_property(x, raw_edges):
    edges = np.unique(raw_edges)
    out = bin_index(x, edges)
    np.testing.assert_array_equal(out, ref.bin_index(x, edges))
    counts, missing = bin_counts(x, edges)
    rc, rm = ref.bin_counts(x, edges)
    np.testing.assert_array_equal(counts, rc)
    assert missing == rm
    assert counts.sum() + missing == x.size


# --------------------------------------------------------------------------- uniform bins


@pytest.mark.parametrize("n_bins", [1, 2, 10, 100])
def test_uniform_bin_counts_matches_reference(n_bins):
    x = _data()
    counts, missing = uniform_bin_counts(x, -2.0, 3.0, n_bins)
    rc, rm = ref.uniform_bin_counts(x, -2.0, 3.0, n_bins)
    np.testing.assert_array_equal(counts, rc)
    assert missing == rm and counts.dtype == np.int64 and isinstance(missing, int)
    w = rng(3).uniform(size=x.size)
    wc, wm = uniform_bin_counts(x, -2.0, 3.0, n_bins, weights=w)
    rwc, rwm = ref.uniform_bin_counts(x, -2.0, 3.0, n_bins, weights=w)
    np.testing.assert_allclose(wc, rwc, rtol=1e-12)
    np.testing.assert_allclose(wm, rwm, rtol=1e-12)


def test_uniform_bin_counts_agrees_with_numpy_histogram_inside_range():
    x = rng(4).uniform(0.0, 1.0, size=N)
    counts, _ = uniform_bin_counts(x, 0.0, 1.0, 20)
    expected, _ = np.histogram(x, bins=20, range=(0.0, 1.0))
    assert np.abs(counts - expected).max() <= 1  # may differ by one rounding at an edge
    assert counts.sum() == expected.sum()


def test_uniform_bin_counts_clips_and_counts_missing():
    x = np.array([-np.inf, -1e300, 0.0, 0.49, 0.5, 1.0, 7.0, np.inf, np.nan])
    counts, missing = uniform_bin_counts(x, 0.0, 1.0, 2)
    np.testing.assert_array_equal(counts, [4, 4])
    assert missing == 1


def test_uniform_bin_counts_errors():
    x = np.array([1.0])
    with pytest.raises(ValueError, match="lo must be < hi; got lo=1.0, hi=1.0"):
        uniform_bin_counts(x, 1.0, 1.0, 3)
    with pytest.raises(ValueError, match="hi must be finite; got inf"):
        uniform_bin_counts(x, 0.0, np.inf, 3)
    with pytest.raises(ValueError, match="hi - lo must be finite"):
        uniform_bin_counts(x, -1.7e308, 1.7e308, 3)
    with pytest.raises(ValueError, match="n_bins / \\(hi - lo\\) must be finite"):
        uniform_bin_counts(x, 0.0, 5e-324, 3)
    with pytest.raises(ValueError, match="n_bins must be >= 1"):
        uniform_bin_counts(x, 0.0, 1.0, 0)
    with pytest.raises(ValueError, match="weights must have the same length as values"):
        uniform_bin_counts(x, 0.0, 1.0, 3, weights=np.ones(2))


@SETTINGS
@given(x=float_arrays(), lo=st.floats(-1e6, 1e6), width=st.floats(1e-6, 1e6),
       n_bins=st.integers(1, 50))
def test_uniform_bin_counts_property(x, lo, width, n_bins):
    hi = lo + width
    counts, missing = uniform_bin_counts(x, lo, hi, n_bins)
    rc, rm = ref.uniform_bin_counts(x, lo, hi, n_bins)
    np.testing.assert_array_equal(counts, rc)
    assert missing == rm
    assert counts.sum() + missing == x.size
