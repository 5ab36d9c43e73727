"""A realistic demo dataset, generated in parallel on the cluster, of any size.

A consumer-loan book: one row per loan application, 30 columns — numeric features on very
different scales (income in dollars, utilisation in [0, 1], counts, durations), categoricals with
few levels (``purpose``, ``home_ownership``) and with many (``branch``: 2,000 levels with a Zipf
popularity, ``employer``: 20,000), a customer id and an application time (for time splits and
per-customer window features), missing values that depend on other columns, and a binary target
``default`` drawn from a non-linear, interacting, noisy function of the features (base rate about
18 %), so a good model reaches a ROC AUC around 0.8 while a linear one does visibly worse.

Every partition is generated independently from ``(seed, partition number)``: the data is the
same for the same arguments on any cluster, and 100M+ rows never sit in memory at once.

Drift of a known kind, for monitoring demos and tests (``drift``, ``strength`` in [0, 1] and
``start``, the first month it applies to, by ``applied_at``): ``covariate`` changes who
applies (higher incomes, lower credit scores, fuller credit lines, more small-business loans
and broker applications) while the way they default given what they are stays the same;
``concept`` keeps the applicants and changes why they default (the effects of debt, credit
score and utilisation turn around). Rows before ``start`` are the undrifted data, row for row.
"""

from __future__ import annotations

from typing import Any

import numpy as np

STATES = ["CA", "TX", "FL", "NY", "PA", "IL", "OH", "GA", "NC", "MI", "NJ", "VA", "WA", "AZ",
          "MA", "TN", "IN", "MO", "MD", "WI", "CO", "MN", "SC", "AL", "LA", "KY", "OR", "OK",
          "CT", "UT", "IA", "NV", "AR", "MS", "KS", "NM", "NE", "ID", "WV", "HI", "NH", "ME",
          "MT", "RI", "DE", "SD", "ND", "AK", "VT", "WY"]
PURPOSES = ["debt_consolidation", "credit_card", "home_improvement", "car", "medical",
            "small_business", "vacation", "education"]
PURPOSE_RISK = np.array([0.0, -0.15, -0.25, -0.2, 0.35, 0.6, 0.25, 0.3])
HOME = ["rent", "mortgage", "own", "other"]
HOME_RISK = np.array([0.25, -0.15, -0.2, 0.4])
EMPLOYMENT = ["salaried", "self_employed", "contract", "retired", "student", "unemployed"]
EMPLOYMENT_RISK = np.array([-0.1, 0.2, 0.25, -0.05, 0.4, 0.9])
CHANNELS = ["web", "branch", "broker"]
GRADES = ["A", "B", "C", "D", "E"]
N_BRANCHES = 2000
N_EMPLOYERS = 20000
N_CUSTOMERS = 200_000
START = np.datetime64("2023-01-01T00:00:00", "s")
SPAN_S = 2 * 365 * 24 * 3600

COLUMNS = [
    "application_id", "customer_id", "applied_at", "age", "income", "loan_amount", "term_months",
    "interest_rate", "credit_score", "debt_to_income", "utilization", "num_accounts",
    "num_open_lines", "inquiries_6m", "late_payments_2y", "months_employed", "years_at_address",
    "savings", "monthly_payment", "num_dependents", "revolving_balance", "account_age_days",
    "state", "purpose", "home_ownership", "employment", "channel", "grade", "branch", "employer",
    "default",
]


def _branch_effect(rng_seed: int) -> np.ndarray:
    """A fixed risk offset per branch (same for every partition)."""
    return np.random.default_rng([rng_seed, 10**6]).normal(0.0, 0.35, N_BRANCHES)


DRIFTS = ("covariate", "concept")


def make_partition(number: int, rows: int, seed: int = 0, drift: str | None = None,
                   strength: float = 1.0, start: str | None = None) -> Any:
    """One partition of the demo data as a pandas DataFrame (deterministic).

    ``drift`` (``covariate`` or ``concept``), ``strength`` and ``start`` (``YYYY-MM``: the
    first drifted month; None: every row) are described in the module docstring.
    """
    import pandas as pd

    if rows == 0:  # the empty frame with the right dtypes (dask's meta)
        return make_partition(number, 1, seed).iloc[:0]
    if drift is not None and drift not in DRIFTS:
        raise ValueError(f"drift must be one of {DRIFTS} or None, not {drift!r}")
    rng = np.random.default_rng([seed, number])
    n = rows
    age = np.clip(rng.normal(42, 13, n), 18, 90).round().astype(np.int64)
    log_income = rng.normal(10.9, 0.55, n) + 0.01 * (age - 42) - 0.0002 * (age - 42) ** 2
    income = np.exp(log_income).round(2)
    term = rng.choice([12, 24, 36, 48, 60], n, p=[0.1, 0.2, 0.4, 0.15, 0.15])
    purpose = rng.choice(len(PURPOSES), n, p=[0.35, 0.2, 0.12, 0.1, 0.06, 0.07, 0.05, 0.05])
    loan = np.exp(rng.normal(9.3, 0.7, n) + 0.3 * (purpose == 5)).round(-1)
    credit = np.clip(rng.normal(690, 60, n) + 25 * (log_income - 10.9), 300, 850).round()
    grade = np.digitize(-credit, [-760, -720, -680, -630])
    rate = np.clip(0.05 + 0.035 * grade + rng.normal(0, 0.01, n), 0.03, 0.3).round(4)
    debt = np.clip(rng.gamma(2.0, 0.09, n) + 0.1 * loan / income, 0, 1.5).round(4)
    util = np.clip(rng.beta(2, 3, n) + 0.1 * (grade - 2) / 4, 0, 1).round(4)
    accounts = rng.poisson(8, n)
    open_lines = np.minimum(accounts, rng.poisson(4, n))
    inquiries = rng.poisson(0.6 + 0.3 * grade, n)
    late = rng.poisson(np.where(credit < 620, 1.5, 0.2), n)
    employment = rng.choice(len(EMPLOYMENT), n, p=[0.62, 0.12, 0.1, 0.08, 0.05, 0.03])
    months_employed = np.where(employment >= 4, 0, rng.gamma(2.0, 30, n)).round()
    years_address = rng.exponential(5, n).round(1)
    savings = np.maximum(0, np.exp(rng.normal(8.5, 1.5, n)) * (income / 55000)).round(2)
    payment = (loan * (rate / 12) / (1 - (1 + rate / 12) ** (-term))).round(2)
    dependents = rng.poisson(1.0, n)
    revolving = (util * rng.gamma(3, 4000, n)).round(2)
    account_age = rng.integers(30, 365 * 25, n)
    home = rng.choice(len(HOME), n, p=[0.38, 0.42, 0.17, 0.03])
    state = rng.choice(len(STATES), n, p=_zipf(len(STATES), 0.8))
    branch = rng.choice(N_BRANCHES, n, p=_zipf(N_BRANCHES, 1.05))
    employer = rng.choice(N_EMPLOYERS, n, p=_zipf(N_EMPLOYERS, 1.1))
    channel = rng.choice(len(CHANNELS), n, p=[0.55, 0.3, 0.15])
    customer = rng.integers(0, N_CUSTOMERS, n)
    applied = START + np.sort(rng.integers(0, SPAN_S, n)).astype("timedelta64[s]")
    shifted = np.zeros(n, dtype=bool) if drift is None else (
        applied >= np.datetime64(f"{start}-01", "s") if start else np.ones(n, dtype=bool))
    if drift == "covariate" and shifted.any():
        # other applicants; their risk given what they are is computed below as before
        other = np.random.default_rng([seed, number, 7919])
        income = np.where(shifted, (income * (1 + 0.6 * strength)).round(2), income)
        credit = np.where(shifted, np.clip(credit - 45 * strength, 300, 850), credit)
        util = np.where(shifted, np.clip(util + 0.15 * strength, 0, 1).round(4), util)
        purpose = np.where(shifted & (other.random(n) < 0.3 * strength), 5, purpose)
        channel = np.where(shifted & (other.random(n) < 0.3 * strength), 2, channel)

    # the risk: non-linear in the numbers, interacting with the categories, plus noise
    dti_payment = payment / (income / 12)
    logit = (-1.9 + 2.2 * np.tanh(3 * (debt - 0.35)) + 1.6 * dti_payment
             - 0.012 * (credit - 690) + 1.3 * (util > 0.8) * (1 + 0.5 * (home == 0))
             + 0.35 * np.minimum(inquiries, 6) + 0.45 * np.minimum(late, 4)
             - 0.25 * np.log1p(savings / 1000) + PURPOSE_RISK[purpose] + HOME_RISK[home]
             + EMPLOYMENT_RISK[employment] * (1 + (months_employed < 6))
             + 0.25 * (channel == 2) + 0.8 * (rate - 0.12) * 10
             + _branch_effect(seed)[branch] + 0.015 * np.abs(age - 45) ** 0.5
             + rng.normal(0, 0.8, n))
    if drift == "concept" and shifted.any():
        # the same applicants, other reasons to default: debt, credit score and utilisation
        # act the other way round
        turned = (-1.9 - 2.2 * np.tanh(3 * (debt - 0.35)) + 0.012 * (credit - 690)
                  - 1.3 * (util > 0.8) + 0.35 * np.minimum(inquiries, 6)
                  + 0.6 * (channel == 1)
                  + np.random.default_rng([seed, number, 7919]).normal(0, 0.8, n))
        logit = np.where(shifted, (1 - strength) * logit + strength * turned, logit)
    default = rng.random(n) < 1 / (1 + np.exp(-logit))

    frame = pd.DataFrame({
        "application_id": np.int64(number) * 10**9 + np.arange(n, dtype=np.int64),
        "customer_id": customer,
        "applied_at": applied,
        "age": age,
        "income": _missing(rng, income, 0.05 + 0.05 * (employment == 1)),
        "loan_amount": loan,
        "term_months": term,
        "interest_rate": rate,
        "credit_score": _missing(rng, credit, 0.02),
        "debt_to_income": debt,
        "utilization": util,
        "num_accounts": accounts,
        "num_open_lines": open_lines,
        "inquiries_6m": inquiries,
        "late_payments_2y": late,
        "months_employed": _missing(rng, months_employed, 0.08),
        "years_at_address": years_address,
        "savings": _missing(rng, savings, 0.12),
        "monthly_payment": payment,
        "num_dependents": dependents,
        "revolving_balance": revolving,
        "account_age_days": account_age,
        "state": np.asarray(STATES, dtype=object)[state],
        "purpose": np.asarray(PURPOSES, dtype=object)[purpose],
        "home_ownership": np.asarray(HOME, dtype=object)[home],
        "employment": _missing_labels(rng, np.asarray(EMPLOYMENT, dtype=object)[employment],
                                      0.03),
        "channel": np.asarray(CHANNELS, dtype=object)[channel],
        "grade": np.asarray(GRADES, dtype=object)[grade],
        "branch": np.char.add("B", np.char.zfill(branch.astype(str), 4)).astype(object),
        "employer": np.char.add("E", np.char.zfill(employer.astype(str), 5)).astype(object),
        "default": default.astype(np.int64),
    })
    for column in ("state", "purpose", "home_ownership", "employment", "channel", "grade",
                   "branch", "employer"):
        frame[column] = frame[column].astype("str")
    return frame[COLUMNS]


def _zipf(k: int, s: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, k + 1) ** s
    return weights / weights.sum()


def _missing(rng: np.random.Generator, values: np.ndarray, share: Any) -> np.ndarray:
    out = values.astype(np.float64)
    out[rng.random(len(out)) < share] = np.nan
    return out


def _missing_labels(rng: np.random.Generator, values: np.ndarray, share: float) -> np.ndarray:
    out = values.copy()
    out[rng.random(len(out)) < share] = None
    return out


def write_demo_data(url: str, rows: int, *, seed: int = 0, rows_per_part: int = 250_000,
                    storage_options: dict[str, Any] | None = None, drift: str | None = None,
                    strength: float = 1.0, start: str | None = None) -> dict:
    """Generate ``rows`` rows as Parquet parts under ``url``, in parallel on the current cluster.

    Parts are named ``part-00000.parquet`` ... and the directory is replaced as a whole: old
    parts are removed first, so a smaller rerun leaves no stale part behind. With ``drift``
    the rows are new ones (not those of the undrifted data of the same seed), drifted from
    ``start`` on.

    Examples
    --------
    >>> write_demo_data("data/demo", 1_000_000)        # doctest: +SKIP
    {'url': 'data/demo', 'rows': 1000000, 'parts': 4}
    """
    import dask.dataframe as dd
    from fsspec.core import url_to_fs

    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    sizes = [rows_per_part] * (rows // rows_per_part)
    if rows % rows_per_part:
        sizes.append(rows % rows_per_part)
    fs, path = url_to_fs(url, **dict(storage_options or {}))
    if fs.exists(path):
        fs.rm(path, recursive=True)
    meta = make_partition(0, 0, seed)
    # drifted data are new rows of the same generator: their partitions are numbered from
    # 10,000, so they never repeat the rows of the undrifted data of the same seed
    first = 10_000 if drift else 0
    ddf = dd.from_map(make_partition, range(first, first + len(sizes)), sizes, seed=seed,
                      drift=drift, strength=strength, start=start, meta=meta,
                      divisions=[None] * (len(sizes) + 1), enforce_metadata=False)
    ddf.to_parquet(url, storage_options=dict(storage_options or {}), write_index=False,
                   name_function=lambda i: f"part-{i:05d}.parquet", write_metadata_file=False)
    return {"url": url, "rows": rows, "parts": len(sizes)}
