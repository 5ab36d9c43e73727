"""Every estimator and transformer of ours passes scikit-learn's own contract checks.

Each instance is configured so the generic checks make sense on their data (small numeric
arrays, columns read by position as ``x0, x1, ...``); each expected failure sits next to its
instance with the reason the check cannot apply. ``xfail_strict``: a mark that stops failing
fails the suite, so the marks stay minimal. Pandas in, pandas out: no Dask cluster is needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import SGDRegressor
from sklearn.utils.estimator_checks import parametrize_with_checks

from pipeline.estimators import (
    FixedClassifierPredictions,
    FixedRegressorPredictions,
    ScaledTargetRegressor,
)
from pipeline.features import KernelFeatures
from pipeline.preprocess import (
    CategoricalEncoder,
    ColumnCleaner,
    Imputer,
    InputSchema,
    NativeCategorical,
    QuantileClipper,
    Scaler,
)

# our transformers return a DataFrame (pandas in, pandas out), whose dtypes are per column
FRAME_OUT = {"check_transformer_preserve_dtypes":
             "returns a DataFrame (one dtype per column); the check reads one array .dtype"}

# a stand-in whose predictions are given, not learned from X: checks of what a model makes of
# X cannot apply (score and predict return len(values) rows whatever X holds)
GIVEN = "predict returns the given values whatever X is (a scoring stand-in, not a model of X)"
FIXED = {check: GIVEN for check in (
    "check_fit_score_takes_y", "check_pipeline_consistency", "check_estimator_sparse_array",
    "check_estimator_sparse_matrix", "check_methods_sample_order_invariance",
    "check_methods_subset_invariance")}

CASES: list[tuple[Any, dict[str, str]]] = [
    (InputSchema(), FRAME_OUT),
    (ColumnCleaner(), FRAME_OUT),
    (QuantileClipper(0.05, 0.95), FRAME_OUT),
    (Imputer(), FRAME_OUT),
    (Scaler(), {
        **FRAME_OUT,
        "check_estimator_sparse_array": "the check calls set_params(with_mean=False) on any "
                                        "class named Scaler; ours has no with_mean",
        "check_estimator_sparse_matrix": "the check calls set_params(with_mean=False) on any "
                                         "class named Scaler; ours has no with_mean",
    }),
    # the checks' data is numeric: both encoders pass numbers through (they encode text
    # columns, refused as numbers), and encode the object column of check_dtype_object
    (NativeCategorical(), FRAME_OUT),
    (CategoricalEncoder(default="onehot"), FRAME_OUT),
    # x0 only: check_fit2d_1feature gives one column; the bins learn on yeo_johnson(x0)
    (KernelFeatures([{"kernel": "yeo_johnson", "columns": ["x0"]},
                     {"kernel": "bin", "columns": ["x0"], "n_bins": 4}]), FRAME_OUT),
    # SGD, as the linear_svm family wraps it: it has partial_fit, so those checks run too
    (ScaledTargetRegressor(SGDRegressor(random_state=0)), {}),
    (FixedRegressorPredictions(np.zeros(3)), {
        **FIXED,
        "check_regressors_train": GIVEN,
        "check_regressors_train(readonly_memmap=True)": GIVEN,
        "check_regressors_train(readonly_memmap=True,X_dtype=float32)": GIVEN,
        "check_supervised_y_no_nan": "y is never read, so a NaN in it is not refused",
    }),
    (FixedClassifierPredictions(np.full((3, 2), 0.5), [0, 1]), {
        **FIXED,
        "check_classifiers_train": GIVEN,
        "check_classifiers_train(readonly_memmap=True)": GIVEN,
        "check_classifiers_train(readonly_memmap=True,X_dtype=float32)": GIVEN,
        "check_classifiers_one_label": GIVEN,
        "check_classifiers_classes": "classes_ are the given classes, not those of y",
    }),
]
EXPECTED_FAILURES = dict(CASES)


@parametrize_with_checks(list(EXPECTED_FAILURES), expected_failed_checks=EXPECTED_FAILURES.get,
                         xfail_strict=True)
def test_scikit_learn_contract(estimator: Any, check: Any) -> None:
    check(estimator)
