"""Hypothesis settings and strategies shared by the kernel tests."""

from __future__ import annotations

import numba
import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

#: Under NUMBA_DISABLE_JIT every kernel is a Python loop: fewer and smaller examples.
JIT = not numba.config.DISABLE_JIT
N = 4000 if JIT else 600  # rows of the random-data comparisons

SETTINGS = settings(
    max_examples=60 if JIT else 12,
    deadline=None,  # first calls include JIT compilation
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
)

MAX_LEN = 60

#: Values that break naive code: extremes, tiny, subnormal, signed zero, infinities.
SPECIAL = [0.0, -0.0, 1.0, -1.0, 1e300, -1e300, 1e-300, -1e-300, 5e-324, 1.7e308, -1.7e308,
           np.inf, -np.inf]


def floats(allow_nan: bool = True, allow_infinity: bool = True) -> st.SearchStrategy[float]:
    special = [v for v in SPECIAL if allow_infinity or np.isfinite(v)]
    base = st.floats(allow_nan=allow_nan, allow_infinity=allow_infinity, width=64)
    choices = [base, st.sampled_from(special), st.floats(-10, 10)]
    if allow_nan:
        choices.append(st.just(float("nan")))
    return st.one_of(*choices)


def float_arrays(min_size: int = 0, max_size: int = MAX_LEN, **kw) -> st.SearchStrategy:
    return hnp.arrays(np.float64, st.integers(min_size, max_size), elements=floats(**kw))


def code_arrays(n_levels: int, min_size: int = 0, max_size: int = MAX_LEN,
                dtype=np.int64) -> st.SearchStrategy:
    return hnp.arrays(dtype, st.integers(min_size, max_size),
                      elements=st.integers(-1, n_levels - 1))


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)
