import statistics

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernels import group_lag, group_rolling
from tests.kernels import reference as ref
from tests.kernels.kernel_strategies import JIT, SETTINGS, floats, rng

N_ROLL = 1500 if JIT else 400  # the reference uses exact rational arithmetic: slow


def _grouped(n=N_ROLL, n_keys=40, seed=0, nan_every=9):
    r = rng(seed)
    keys = np.sort(r.integers(0, n_keys, n))
    values = r.normal(loc=3.0, size=n)
    values[::nan_every] = np.nan
    return keys, values


def _assert_rolling_close(got, expected, values):
    mean, std, count = got
    rmean, rstd, rcount = expected
    np.testing.assert_array_equal(count, rcount)
    finite = values[np.isfinite(values)]
    scale = np.abs(finite).max() if finite.size else 1.0
    np.testing.assert_allclose(mean, rmean, rtol=1e-10, atol=1e-12 * scale)
    np.testing.assert_allclose(std, rstd, rtol=1e-9, atol=0)
    np.testing.assert_array_equal(np.isnan(mean), np.isnan(rmean))
    np.testing.assert_array_equal(np.isnan(std), np.isnan(rstd))


@pytest.mark.parametrize("closed", ["left", "right", "both"])
@pytest.mark.parametrize("window", [1, 2, 7, 50])
def test_group_rolling_matches_reference(closed, window):
    keys, values = _grouped()
    got = group_rolling(keys, values, window, closed=closed)
    _assert_rolling_close(got, ref.group_rolling(keys, values, window, 1, closed), values)


@pytest.mark.parametrize("min_periods", [0, 2, 4])
def test_group_rolling_min_periods(min_periods):
    keys, values = _grouped(n=400)
    got = group_rolling(keys, values, 4, min_periods=min_periods, closed="right")
    _assert_rolling_close(got, ref.group_rolling(keys, values, 4, min_periods, "right"),
                          values)


def test_group_rolling_matches_pandas():
    pd = pytest.importorskip("pandas")
    keys, values = _grouped(n=3000 if JIT else 500)
    df = pd.DataFrame({"k": keys, "v": values})
    for closed in ("left", "right", "both"):
        roll = df.groupby("k")["v"].rolling(5, min_periods=1, closed=closed)
        mean, std, count = group_rolling(keys, values, 5, closed=closed)
        np.testing.assert_allclose(mean, roll.mean().to_numpy(), rtol=1e-9)
        np.testing.assert_allclose(std, roll.std().to_numpy(), rtol=1e-7)
        np.testing.assert_array_equal(count, np.nan_to_num(roll.count().to_numpy()))


def test_group_rolling_left_excludes_current_row():
    keys = np.zeros(4, np.int64)
    values = np.array([1.0, 2.0, 3.0, 100.0])
    mean, _, count = group_rolling(keys, values, 2)
    np.testing.assert_array_equal(mean, [np.nan, 1.0, 1.5, 2.5])  # no row sees its own value
    np.testing.assert_array_equal(count, [0, 1, 2, 2])


@pytest.mark.parametrize("window", [1, 3, 10])
@pytest.mark.parametrize("closed", ["left", "both"])
def test_group_rolling_chunked_with_context_equals_whole(window, closed):
    keys, values = _grouped(n=3000 if JIT else 500, n_keys=15)
    whole = group_rolling(keys, values, window, closed=closed)
    bounds = [0, 1, 2, 40, 41, 333, 1000, 1001, 2500, len(keys)]
    bounds = sorted({min(b, len(keys)) for b in bounds})
    parts = ([], [], [])
    for start, stop in zip(bounds[:-1], bounds[1:]):
        ctx = max(0, start - window)  # the `window` rows before the chunk, as context
        got = group_rolling(keys[ctx:stop], values[ctx:stop], window, closed=closed,
                            skip=start - ctx)
        for part, g in zip(parts, got):
            part.append(g)
    mean, std, count = (np.concatenate(p) for p in parts)
    np.testing.assert_array_equal(count, whole[2])
    np.testing.assert_array_equal(np.isnan(mean), np.isnan(whole[0]))
    np.testing.assert_array_equal(np.isnan(std), np.isnan(whole[1]))
    # Not bit-identical: the O(1) update may be resynchronised at different rows (see the
    # comment in kernels/window.py); both agree with the exact result to ~1e-13.
    np.testing.assert_allclose(mean, whole[0], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(std, whole[1], rtol=1e-11)


def test_group_rolling_is_numerically_stable():
    n = 20_000 if JIT else 2_000
    r = rng(5)
    values = 1e9 + r.normal(scale=1e-3, size=n)  # huge mean, tiny spread
    values[n // 2:] += 1e12  # a level shift
    values[n // 4] = 1e15  # a huge outlier that leaves the window again
    values[3 * n // 4: 3 * n // 4 + 100] = 7.0  # a constant stretch
    keys = np.zeros(n, np.int64)
    mean, std, _ = group_rolling(keys, values, 30, closed="right")
    rows = np.r_[np.arange(1, 100), np.arange(n // 4 - 5, n // 4 + 60), n // 2 + np.arange(60),
                 3 * n // 4 + np.arange(150), np.arange(n - 100, n)]
    for i in rows:
        # exact rational reference: np.std itself is off by ~1e-3 here (its mean is off by
        # a few ulp of 1e12, comparable to the spread)
        w = [float(v) for v in values[max(0, i - 29): i + 1]]
        assert mean[i] == pytest.approx(statistics.mean(w), rel=1e-14)
        assert std[i] == pytest.approx(statistics.stdev(w), rel=1e-12, abs=1e-300)
    assert np.all(std[3 * n // 4 + 29: 3 * n // 4 + 100] == 0.0)


def test_group_rolling_infinities_and_huge_values():
    keys = np.zeros(6, np.int64)
    values = np.array([1.0, np.inf, 2.0, 3.0, -1e300, 1e300])
    mean, std, _ = group_rolling(keys, values, 2, closed="right")
    np.testing.assert_array_equal(mean[:4], [1.0, np.inf, np.inf, 2.5])
    assert np.isnan(std[1]) and np.isnan(std[2]) and std[3] == pytest.approx(np.sqrt(0.5))
    assert mean[5] == 0.0 and std[5] == pytest.approx(np.sqrt(2) * 1e300)  # no overflow


def test_group_rolling_unsorted_but_grouped_keys_are_fine():
    keys = np.array([5, 5, 2, 2, 9])
    values = np.arange(5.0)
    mean, _, _ = group_rolling(keys, values, 3, closed="right")
    np.testing.assert_array_equal(mean, [0.0, 0.5, 2.0, 2.5, 4.0])


def test_group_rolling_errors():
    keys = np.array([1, 1, 2, 2, 1, 3, 2])
    with pytest.raises(ValueError, match=r"keys\[4\] = 1 starts a second run of that key "
                                         r"\(an earlier run starts at row 0\); sort the rows"):
        group_rolling(keys, np.zeros(7), 2)
    with pytest.raises(ValueError, match=r"keys\[4\] = 1 starts a second run"):
        group_lag(keys, np.zeros(7))
    ok = np.zeros(3, np.int64)
    with pytest.raises(ValueError, match="window must be >= 1; got 0"):
        group_rolling(ok, np.zeros(3), 0)
    with pytest.raises(ValueError, match="min_periods must be <= 3; got 4"):
        group_rolling(ok, np.zeros(3), 3, min_periods=4)
    group_rolling(ok, np.zeros(3), 3, min_periods=4, closed="both")  # window + 1 rows
    with pytest.raises(ValueError, match="closed must be one of 'left', 'right', 'both'; "
                                         "got 'neither'"):
        group_rolling(ok, np.zeros(3), 3, closed="neither")
    with pytest.raises(ValueError, match="skip must be <= 3; got 4"):
        group_rolling(ok, np.zeros(3), 3, skip=4)
    with pytest.raises(TypeError, match="keys must be an array of integer keys"):
        group_rolling(np.zeros(3), np.zeros(3), 3)
    with pytest.raises(ValueError, match="values must have the same length as keys"):
        group_rolling(ok, np.zeros(2), 3)
    with pytest.raises(ValueError, match="lag must be >= 1; got 0"):
        group_lag(ok, np.zeros(3), lag=0)


@st.composite
def grouped_data(draw, allow_infinity=True):
    n = draw(st.integers(0, 60))
    n_keys = draw(st.integers(1, 60))
    keys = np.sort(np.array(draw(st.lists(st.integers(0, n_keys - 1), min_size=n,
                                          max_size=n)), dtype=np.int64))
    values = np.array(draw(st.lists(floats(allow_infinity=allow_infinity), min_size=n,
                                    max_size=n)), dtype=np.float64)
    return keys, values


@SETTINGS
@given(data=grouped_data(allow_infinity=False), window=st.integers(1, 8),
       closed=st.sampled_from(["left", "right", "both"]), min_periods=st.integers(0, 3))
def test_group_rolling_property(data, window, closed, min_periods):
    keys, values = data
    min_periods = min(min_periods, window)
    mean, std, count = group_rolling(keys, values, window, min_periods, closed)
    rmean, rstd, rcount = ref.group_rolling(keys, values, window, min_periods, closed)
    np.testing.assert_array_equal(count, rcount)
    np.testing.assert_array_equal(np.isnan(mean), np.isnan(rmean))
    np.testing.assert_array_equal(np.isnan(std), np.isnan(rstd))
    for i in range(len(keys)):
        w = np.abs(values[list(ref._window_rows(keys, i, window, closed))])
        scale = np.nanmax(w) if np.any(~np.isnan(w)) else 1.0
        # relative to the result, plus rounding relative to the largest value in the window
        for got, exp in ((mean[i], rmean[i]), (std[i], rstd[i])):
            if np.isfinite(exp):
                assert abs(got - exp) <= 1e-9 * abs(exp) + 1e-13 * scale, (i, got, exp)
            else:
                assert got == exp or (np.isnan(got) and np.isnan(exp)), (i, got, exp)


@SETTINGS
@given(data=grouped_data(), window=st.integers(1, 4))
def test_group_rolling_infinite_values_property(data, window):
    keys, values = data
    mean, std, count = group_rolling(keys, values, window, closed="right")
    rmean, rstd, rcount = ref.group_rolling(keys, values, window, 1, "right")
    np.testing.assert_array_equal(count, rcount)
    has_inf = np.array([np.isinf(values[list(ref._window_rows(keys, i, window, "right"))]).any()
                        for i in range(len(keys))], dtype=bool)
    np.testing.assert_array_equal(mean[has_inf], rmean[has_inf])
    assert np.all(np.isnan(std[has_inf]))


# --------------------------------------------------------------------------- lag


@pytest.mark.parametrize("lag", [1, 2, 5, 1000])
def test_group_lag_matches_reference(lag):
    keys, values = _grouped(n=800)
    np.testing.assert_array_equal(group_lag(keys, values, lag), ref.group_lag(keys, values, lag))


def test_group_lag_matches_pandas_shift():
    pd = pytest.importorskip("pandas")
    keys, values = _grouped(n=2000)
    expected = pd.Series(values).groupby(keys).shift(3).to_numpy()
    np.testing.assert_array_equal(group_lag(keys, values, 3), expected)


@pytest.mark.parametrize("lag", [1, 4])
def test_group_lag_chunked_with_context_equals_whole(lag):
    keys, values = _grouped(n=1000, n_keys=30)
    whole = group_lag(keys, values, lag)
    parts = []
    bounds = [0, 3, 100, 101, 555, 1000]
    for start, stop in zip(bounds[:-1], bounds[1:]):
        ctx = max(0, start - lag)
        parts.append(group_lag(keys[ctx:stop], values[ctx:stop], lag, skip=start - ctx))
    np.testing.assert_array_equal(np.concatenate(parts), whole)


@SETTINGS
@given(data=grouped_data(), lag=st.integers(1, 5))
def test_group_lag_property(data, lag):
    keys, values = data
    np.testing.assert_array_equal(group_lag(keys, values, lag), ref.group_lag(keys, values, lag))


def test_many_groups_and_empty():
    n = 10_000 if JIT else 1_000
    keys = np.arange(n)  # every row its own key
    mean, std, count = group_rolling(keys, np.ones(n), 5)
    assert np.isnan(mean).all() and (count == 0).all()
    assert np.isnan(group_lag(keys, np.ones(n))).all()
    mean, std, count = group_rolling(np.zeros(0, np.int64), np.zeros(0), 3)
    assert mean.shape == std.shape == count.shape == (0,)
    assert group_lag(np.zeros(0, np.int64), np.zeros(0)).shape == (0,)


def test_grouping_check_names_the_earliest_second_run():
    keys = np.array([3, 3, 1, 2, 2, 1, 3, 9, 2])  # 1 again at row 5, 3 at row 6, 2 at row 8
    with pytest.raises(ValueError, match=r"keys\[5\] = 1 starts a second run of that key "
                                         r"\(an earlier run starts at row 2\)"):
        group_lag(keys, np.zeros(9))
    group_lag(np.array([5, 5, 1, 1, 7]), np.zeros(5))  # grouped, not sorted: fine
