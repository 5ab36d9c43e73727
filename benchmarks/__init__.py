"""Benchmarks for mlpipe: `make bench` (``python -m benchmarks``).

Each ``benchmarks/bench_*.py`` module exposes ``run(scale: float) -> list[dict]``. A row is one
measured operation with the baseline measured *in the same run*, so ratios survive a noisy
machine::

    {"benchmark": "kernels", "operation": "count_encode apply", "size": "10,000,000 rows",
     "ours": 812.3e6, "baseline": 95.1e6, "baseline_name": "pandas map(value_counts)",
     "unit": "rows/s", "ratio": 8.54, "goal": ">= 1.0x", "met": True}

``ratio`` is ours / baseline for throughputs (higher is better) and baseline / ours for
durations, so a ratio above 1 always means mlpipe is faster.
"""
