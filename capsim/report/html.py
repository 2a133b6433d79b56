"""``report.html``: one self-contained page of a plan — the recommendation, the ranked table,
why the others lost, the full text report and every plot, embedded (no other file needed).

>>> page = plan_html({"scenario": "demo", "model": "m", "recommendation": None, "ranked": [],
...                   "lost": [], "trace": []}, "capsim plan: demo", [])
>>> "<title>capsim plan: demo</title>" in page and "No configuration meets the SLO" in page
True
"""

from __future__ import annotations

import base64
from html import escape
from typing import Any

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222 }
table { border-collapse: collapse; margin: 0.5em 0 1.5em } td, th { padding: 3px 10px;
border-bottom: 1px solid #ddd; text-align: left } th { background: #f3f3f3 }
.rec { background: #eef7ee; border-left: 4px solid #3a3; padding: 0.6em 1em }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 12px }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0 }
"""

#: Sets ``data-images-ok`` on <body> to the number of plots the browser decoded (a headless
#: browser test reads it back from the DOM).
CHECK_IMAGES = """
window.addEventListener("load", function () {
  var ok = Array.from(document.images).filter(function (i) {
    return i.complete && i.naturalWidth > 0;
  });
  document.body.setAttribute("data-images-ok", String(ok.length));
});
"""


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _row(cells: list[Any], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{escape(str(c))}</{tag}>" for c in cells) + "</tr>"


def _label(r: dict) -> str:
    tp = f" tp{r['tp']}" if r.get("tp", 1) != 1 else ""
    return f"{r['gpu']} {r['precision']}{tp}"


def ranked_table(ranked: list[dict]) -> str:
    """The feasible configurations, cheapest first."""
    head = ["#", "config", "replicas", "SLO metric", "p ms [95% CI]", "target ms", "$/hour"]
    rows = [_row(head, "th")]
    for i, r in enumerate(ranked, 1):
        b = r["best"]
        ci = f"{_ms(b['p_ms'])} [{_ms(b['p_ci_low_ms'])}, {_ms(b['p_ci_high_ms'])}]"
        metric = f"p{b['slo_percentile']:g} {b['slo_metric']}"
        cost = f"{b['usd_per_hour']:.2f}"
        rows.append(_row([i, _label(r), b["replicas"], metric, ci, _ms(b["target_ms"]), cost]))
    return "<table>" + "".join(rows) + "</table>"


def lost_table(lost: list[dict]) -> str:
    """Every other configuration with its status and the reason it lost."""
    rows = [_row(["config", "status", "reason"], "th")]
    rows += [_row([_label(r), r["status"], r["reason"]]) for r in lost]
    return "<table>" + "".join(rows) + "</table>"


def plan_html(d: dict, text: str, images: list[tuple[str, bytes]]) -> str:
    """The page for ``d`` (:func:`capsim.report.text.plan_dict`), the text report ``text`` and
    the PNG ``images`` (title, bytes), embedded as data URIs."""
    title = f"capsim plan: {d['scenario']}"
    rec = d.get("recommendation")
    if rec is not None and rec.get("best"):
        b = rec["best"]
        head = (
            f"<p class='rec'><b>Recommendation:</b> {b['replicas']} x {escape(_label(rec))} at "
            f"${b['usd_per_hour']:.2f}/h (p{b['slo_percentile']:g} {escape(b['slo_metric'])} "
            f"{_ms(b['p_ms'])} ms, upper 95% limit {_ms(b['p_ci_high_ms'])} ms &lt;= target "
            f"{_ms(b['target_ms'])} ms)</p>"
        )
    else:
        head = "<p class='rec'><b>No configuration meets the SLO.</b></p>"
    figs = "".join(
        f"<h3>{escape(name)}</h3><img alt='{escape(name)}' "
        f"src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>"
        for name, png in images
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>{STYLE}</style>"
        f"<script>{CHECK_IMAGES}</script></head><body>"
        f"<h1>{escape(title)}</h1><p>model {escape(str(d.get('model', '')))}</p>{head}"
        + "".join(f"<p><small>{escape(t)}</small></p>" for t in d.get("trace", []))
        + "<h2>Feasible configurations, cheapest first</h2>"
        + ranked_table(d.get("ranked", []))
        + "<h2>Why the others lost</h2>"
        + lost_table(d.get("lost", []))
        + f"<h2>Plots</h2>{figs}<h2>The full report</h2><pre>{escape(text)}</pre>"
        + "</body></html>\n"
    )
