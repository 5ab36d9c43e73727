"""``monitor.html``: the page of one ``mlpipe monitor`` check, and the gate's comparison section
of a challenger's ``report.html``.

Self-contained like ``report.html`` (:mod:`pipeline.report`): CSS inside the page, figures
as inline SVG drawn here directly (bars and lines need no plotting library, and the page stays
byte-for-byte reproducible), no script, no URL outside the page. Everything shown is read from
the ``monitor.json`` document (:func:`pipeline.monitor.monitor_data`); nothing is computed here
but shares of the stored counts.
"""

from __future__ import annotations

import functools
import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["render", "with_comparison"]

_TEMPLATE = "monitor.html.j2"
_REF, _CUR, _WARN, _GREY = "#1f77b4", "#ff7f0e", "#c62828", "#7f7f7f"
#: histograms drawn at most (drifted columns first, then the most shifted by PSI)
_MAX_HISTOGRAMS = 24


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    from pipeline.report import template_environment

    return template_environment(num=_num, pct=_pct, p=_p)


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    return f"{value:.{digits}f}"


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.2f} %"


def _p(value: Any) -> str:
    if value is None:
        return "–"
    return "< 1e-12" if value < 1e-12 else f"{value:.2g}"


def render(doc: Mapping[str, Any]) -> str:
    """The page of a ``monitor.json`` document.

    Examples
    --------
    >>> html = render(result.doc)                      # doctest: +SKIP
    >>> "Drift per column" in html                     # doctest: +SKIP
    True
    """
    from markupsafe import Markup

    overall = doc.get("overall", {})
    drift = overall.get("drift")
    columns = _rows(drift.get("columns", {})) if drift else []
    outputs = _rows(drift.get("outputs", {})) if drift else []
    hist = []
    if drift:
        ranked = sorted([*drift["columns"].items(), *drift["outputs"].items()],
                        key=lambda kv: (not kv[1]["drifted"],
                                        -kv[1]["checks"].get("psi", {}).get("statistic", 0.0)))
        for name, column in ranked[:_MAX_HISTOGRAMS]:
            if column["drifted"] or len(hist) < 6:
                hist.append({"name": name, "drifted": column["drifted"],
                             "svg": Markup(histogram_svg(name, column))})
    quality = overall.get("quality")
    chunks = doc.get("chunks", [])
    names = list((quality or {}).get("metrics", {})) or [doc.get("primary_metric")]
    lines = []
    if chunks and any(c.get("quality") for c in chunks):
        for metric in names:
            svg = chunk_svg(metric, chunks, (quality or {}).get("metrics", {}).get(metric, {}))
            if svg:
                lines.append({"metric": metric, "svg": Markup(svg)})
    psi_line = chunk_psi_svg(chunks) if chunks and any(c.get("drift") for c in chunks) else ""
    context = {
        "doc": doc, "model": doc.get("model", {}), "data": doc.get("data", {}),
        "columns": columns, "outputs": outputs, "histograms": hist, "quality": quality,
        "chunks": [_chunk_row(c, names) for c in chunks], "metric_names": names,
        "lines": lines, "psi_line": Markup(psi_line) if psi_line else None,
        "thresholds": doc.get("thresholds", {}),
    }
    return _environment().get_template(_TEMPLATE).render(**context)


def _rows(columns: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, column in columns.items():
        checks = column["checks"]
        out.append({
            "name": name, "kind": column["kind"], "drifted": column["drifted"],
            "rows": column["rows"],
            "psi": checks.get("psi"), "ks": checks.get("ks"), "chi2": checks.get("chi2"),
            "missing": checks.get("missing_share"), "unseen": checks.get("unseen_share"),
        })
    return sorted(out, key=lambda r: (not r["drifted"], r["name"]))


def _chunk_row(chunk: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    drift = chunk.get("drift") or {}
    quality = (chunk.get("quality") or {}).get("metrics", {})
    return {"chunk": chunk["chunk"], "rows": chunk.get("rows"),
            "drifted": [*drift.get("drifted", []),
                        *(f"output {c}" for c in drift.get("outputs_drifted", []))],
            "metrics": [quality.get(n) for n in names],
            "decay": bool((chunk.get("quality") or {}).get("decay"))}


# --------------------------------------------------------------------------- figures


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _bin_labels(column: Mapping[str, Any]) -> list[str]:
    ref = column["reference"]
    if "edges" in ref:
        edges = ref["edges"]
        if not edges:
            return ["all"]
        short = [_short(e) for e in edges]
        return [f"< {short[0]}", *(f"{a}–{b}" for a, b in zip(short, short[1:])),
                f"≥ {short[-1]}"]
    return [*ref["levels"], "(other)"]


def _short(value: float) -> str:
    a = abs(value)
    if a >= 1e15:  # times in ns
        import datetime as dt

        return dt.datetime.fromtimestamp(value / 1e9, dt.timezone.utc).strftime("%Y-%m-%d")
    if a >= 1e6:
        return f"{value / 1e6:.3g}M"
    if a >= 1e3:
        return f"{value / 1e3:.3g}k"
    return f"{value:.3g}"


def histogram_svg(name: str, column: Mapping[str, Any]) -> str:
    """Reference vs current share of every bin of one column (present values only)."""
    ref = [float(v) for v in column["reference"]["counts"]]
    cur = [float(v) for v in column["current"]["counts"]]
    tr, tc = sum(ref) or 1.0, sum(cur) or 1.0
    ref, cur = [v / tr for v in ref], [v / tc for v in cur]
    labels = _bin_labels(column)
    k = len(ref)
    width, height, left, bottom, top = 640, 230, 44, 70, 22
    plot_w, plot_h = width - left - 10, height - top - bottom
    peak = max([*ref, *cur, 1e-9])
    step = plot_w / max(k, 1)
    bar = step * 0.38
    parts = [f'<svg class="fig" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{_esc(name)}: reference vs current">',
             f'<text x="{left}" y="14" font-size="12" font-weight="bold">{_esc(name)}</text>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
             f'stroke="{_GREY}" stroke-width="0.8"/>']
    for frac in (0.5, 1.0):
        y = top + plot_h - frac * plot_h
        parts.append(f'<text x="{left - 4}" y="{y + 3:.1f}" font-size="9" text-anchor="end">'
                     f'{100 * frac * peak:.0f}%</text>')
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
                     f'stroke="#e6e6e6" stroke-width="0.6"/>')
    for i in range(k):
        x = left + i * step + step * 0.1
        for j, (share, color) in enumerate(((ref[i], _REF), (cur[i], _CUR))):
            h = share / peak * plot_h
            parts.append(f'<rect x="{x + j * bar:.1f}" y="{top + plot_h - h:.1f}" '
                         f'width="{bar:.1f}" height="{h:.1f}" fill="{color}">'
                         f'<title>{_esc(labels[i] if i < len(labels) else i)}: '
                         f'{"reference" if j == 0 else "current"} {100 * share:.2f}%</title>'
                         '</rect>')
        if k <= 30 and i < len(labels):
            cx = left + i * step + step / 2
            parts.append(f'<text x="{cx:.1f}" y="{top + plot_h + 8}" font-size="8" '
                         f'text-anchor="end" transform="rotate(-45 {cx:.1f} '
                         f'{top + plot_h + 8})">{_esc(labels[i][:18])}</text>')
    parts.append(f'<rect x="{width - 170}" y="6" width="9" height="9" fill="{_REF}"/>'
                 f'<text x="{width - 157}" y="14" font-size="9">reference</text>'
                 f'<rect x="{width - 95}" y="6" width="9" height="9" fill="{_CUR}"/>'
                 f'<text x="{width - 82}" y="14" font-size="9">current</text>')
    parts.append("</svg>")
    return "".join(parts)


def _line_frame(title: str, xs: Sequence[str], low: float, high: float
                ) -> tuple[list[str], Any, Any]:
    width, height, left, bottom, top = 640, 220, 52, 46, 22
    plot_w, plot_h = width - left - 12, height - top - bottom
    span = (high - low) or 1.0
    n = len(xs)

    def x_of(i: int) -> float:
        return left + (plot_w * (i + 0.5) / n)

    def y_of(v: float) -> float:
        return top + plot_h - (v - low) / span * plot_h

    parts = [f'<svg class="fig" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{_esc(title)}">',
             f'<text x="{left}" y="14" font-size="12" font-weight="bold">{_esc(title)}</text>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
             f'stroke="{_GREY}" stroke-width="0.8"/>']
    for frac in (0.0, 0.5, 1.0):
        v = low + frac * span
        parts.append(f'<text x="{left - 4}" y="{y_of(v) + 3:.1f}" font-size="9" '
                     f'text-anchor="end">{_short(v)}</text>')
    every = max(1, n // 16)
    for i, label in enumerate(xs):
        if i % every == 0:
            parts.append(f'<text x="{x_of(i):.1f}" y="{top + plot_h + 8}" font-size="8" '
                         f'text-anchor="end" transform="rotate(-45 {x_of(i):.1f} '
                         f'{top + plot_h + 8})">{_esc(label)}</text>')
    return parts, x_of, y_of


def chunk_svg(metric: str, chunks: Sequence[Mapping[str, Any]],
              overall: Mapping[str, Any]) -> str:
    """A metric per chunk with its interval, against the baseline and the decay limit."""
    points = [(c["chunk"], (c.get("quality") or {}).get("metrics", {}).get(metric))
              for c in chunks]
    points = [(k, q) for k, q in points if q and q.get("value") is not None]
    if not points:
        return ""
    base = overall.get("baseline") or points[0][1].get("baseline")
    values = [q["value"] for _, q in points]
    lows = [(q.get("interval") or [q["value"]])[0] for _, q in points]
    highs = [(q.get("interval") or [None, q["value"]])[-1] for _, q in points]
    limit = None
    if base is not None and points[0][1].get("tolerance") is not None:
        from pipeline.evaluate import GREATER_IS_BETTER

        sign = 1 if GREATER_IS_BETTER.get(metric, True) else -1
        limit = base - sign * points[0][1]["tolerance"]
    extremes = [*lows, *highs, *([base] if base is not None else []),
                *([limit] if limit is not None else [])]
    low, high = min(extremes), max(extremes)
    pad = (high - low) * 0.08 or 0.01
    parts, x_of, y_of = _line_frame(f"{metric} per chunk", [k for k, _ in points],
                                    low - pad, high + pad)
    for label, value, color, dash in ((f"baseline {_short(base)}" if base is not None else "",
                                       base, _GREY, "4 3"),
                                      ("decay limit", limit, _WARN, "2 3")):
        if value is None:
            continue
        y = y_of(value)
        parts.append(f'<line x1="{x_of(0) - 8:.1f}" y1="{y:.1f}" '
                     f'x2="{x_of(len(points) - 1) + 8:.1f}" y2="{y:.1f}" stroke="{color}" '
                     f'stroke-dasharray="{dash}" stroke-width="1"/>'
                     f'<text x="{x_of(len(points) - 1) + 6:.1f}" y="{y - 3:.1f}" font-size="8" '
                     f'text-anchor="end" fill="{color}">{_esc(label)}</text>')
    for i, (lo, hi) in enumerate(zip(lows, highs)):
        parts.append(f'<line x1="{x_of(i):.1f}" y1="{y_of(lo):.1f}" x2="{x_of(i):.1f}" '
                     f'y2="{y_of(hi):.1f}" stroke="{_REF}" stroke-width="1.2" opacity="0.6"/>')
    path = " ".join(f"{x_of(i):.1f},{y_of(v):.1f}" for i, v in enumerate(values))
    parts.append(f'<polyline points="{path}" fill="none" stroke="{_REF}" stroke-width="1.5"/>')
    for i, (label, q) in enumerate(points):
        color = _WARN if q.get("decay") else _REF
        parts.append(f'<circle cx="{x_of(i):.1f}" cy="{y_of(q["value"]):.1f}" r="3" '
                     f'fill="{color}"><title>{_esc(label)}: {q["value"]:.4f}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def chunk_psi_svg(chunks: Sequence[Mapping[str, Any]]) -> str:
    """The largest PSI of any input column per chunk, against the PSI threshold."""
    points = []
    threshold = None
    for c in chunks:
        drift = c.get("drift")
        if not drift:
            continue
        threshold = drift["thresholds"]["psi_threshold"]
        psis = [v["checks"]["psi"]["statistic"] for v in drift["columns"].values()
                if "psi" in v["checks"]]
        if psis:
            points.append((c["chunk"], max(psis), bool(drift["drift"])))
    if not points or threshold is None:
        return ""
    high = max([p for _, p, _ in points] + [threshold]) * 1.1
    parts, x_of, y_of = _line_frame("largest PSI of any input column, per chunk",
                                    [k for k, _, _ in points], 0.0, high)
    y = y_of(threshold)
    parts.append(f'<line x1="{x_of(0) - 8:.1f}" y1="{y:.1f}" '
                 f'x2="{x_of(len(points) - 1) + 8:.1f}" y2="{y:.1f}" stroke="{_WARN}" '
                 f'stroke-dasharray="2 3"/>')
    path = " ".join(f"{x_of(i):.1f},{y_of(v):.1f}" for i, (_, v, _) in enumerate(points))
    parts.append(f'<polyline points="{path}" fill="none" stroke="{_CUR}" stroke-width="1.5"/>')
    for i, (label, v, flagged) in enumerate(points):
        parts.append(f'<circle cx="{x_of(i):.1f}" cy="{y_of(v):.1f}" r="3" '
                     f'fill="{_WARN if flagged else _CUR}"><title>{_esc(label)}: PSI '
                     f'{v:.3f}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------- the gate


def comparison_html(gate: Mapping[str, Any]) -> str:
    """The "Champion vs challenger" section of a challenger's report."""
    metrics = gate.get("metrics") or {}
    champion, challenger = metrics.get("champion") or {}, metrics.get("challenger") or {}
    names = list(dict.fromkeys([*challenger, *champion]))
    status = ("promoted" if gate.get("promote") else "not promoted") \
        if gate.get("champion") else "first version"
    rows = "".join(
        f"<tr><td>{_esc(n)}</td><td class=\"num\">{_num(champion.get(n))}</td>"
        f"<td class=\"num\">{_num(challenger.get(n))}</td></tr>" for n in names)
    rules = "".join(
        f"<tr class=\"{'' if r.get('passed') else 'flagged'}\"><td>{_esc(r.get('rule'))}</td>"
        f"<td>{'pass' if r.get('passed') else 'fail'}</td><td>{_esc(r.get('detail', ''))}</td>"
        "</tr>" for r in gate.get("rules", []))
    reasons = "".join(f"<li>{_esc(r)}</li>" for r in gate.get("reasons", []))
    table = (f"<table><thead><tr><th>metric (same holdout rows)</th><th class=\"num\">champion"
             f"</th><th class=\"num\">challenger</th></tr></thead><tbody>{rows}</tbody></table>"
             if champion else "")
    rule_table = (f"<table><thead><tr><th>rule</th><th>result</th><th>detail</th></tr></thead>"
                  f"<tbody>{rules}</tbody></table>" if rules else "")
    return (f'<section id="gate"><h2><a class="anchor" href="#gate">Champion vs challenger'
            f'</a></h2><p>Policy <code>{_esc(gate.get("policy"))}</code>; compared with '
            f'<code>{_esc(gate.get("champion") or "none")}</code>: <span class="badge '
            f'{"ok" if gate.get("promote") else "warn"}">{_esc(status)}</span> (the gate\'s '
            f'decision; the registry records what happened)</p>{table}{rule_table}'
            f'<ul class="notes">{reasons}</ul></section>\n')


def with_comparison(page: str, gate: Mapping[str, Any]) -> str:
    """``page`` (a report.html) with the gate's comparison section at the end of its body."""
    section = comparison_html(gate)
    marker = "</main>"
    if marker in page:
        head, _, tail = page.rpartition(marker)
        return head + section + marker + tail
    return page.replace("</body>", section + "</body>")
