"""Run every benchmark module and print one table (also written as JSON).

Usage: ``python -m benchmarks [--scale 1.0] [--only kernels,score] [--json bench.json]``
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import platform
import sys
import time
from pathlib import Path

import benchmarks


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e6:
            return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)


def _table(rows: list[dict]) -> str:
    cols = ["benchmark", "operation", "size", "ours", "baseline", "baseline_name", "unit",
            "ratio", "goal", "met"]
    cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
              for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every benchmark size (0.1 for a quick look)")
    parser.add_argument("--only", default="", help="comma-separated module names (without bench_)")
    parser.add_argument("--json", default="bench-results.json", help="where to write the rows")
    args = parser.parse_args(argv)

    only = {s.strip() for s in args.only.split(",") if s.strip()}
    names = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__)
                   if m.name.startswith("bench_"))
    rows: list[dict] = []
    for name in names:
        short = name.removeprefix("bench_")
        if only and short not in only:
            continue
        print(f"== {short} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        module = importlib.import_module(f"benchmarks.{name}")
        rows.extend(module.run(scale=args.scale))
        print(f"   {short} took {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    print(_table(rows))
    meta = {"python": platform.python_version(), "machine": platform.machine(),
            "cpus": __import__("os").cpu_count(), "scale": args.scale}
    Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str))
    print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
