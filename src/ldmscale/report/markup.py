"""HTML pieces: escaping, tables, figures, and the page shell (inline CSS and the script the
tests read)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from ldmscale.frontier import Point


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _table(records: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    if not records:
        return "<p class='note'>(none)</p>"
    columns = list(columns or records[0].keys())
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "\n".join(
        "<tr>"
        + "".join(f"<td{_num_class(r.get(c))}>{_esc(_cell(r.get(c)))}</td>" for c in columns)
        + "</tr>"
        for r in records
    )
    return f"<table>\n<tr>{head}</tr>\n{body}\n</table>"


def _num_class(v: Any) -> str:
    return " class='num'" if isinstance(v, int | float) and not isinstance(v, bool) else ""


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10_000:
        return f"{v:,}"
    return str(v)


def _score_of(f: dict) -> str:
    p = Point("", None, None, 0.0, "", 0, 0.0, 0.0, "", f["value"], f.get("lo"), f.get("hi"))
    return p.score()


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
details{margin:.5em 0}summary{cursor:pointer;color:#235}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.9em;color:#444;margin-top:.3em}
.verdict{font-size:1.1em;font-weight:600}.note{color:#555;font-size:.9em}
.grids{display:flex;flex-wrap:wrap;gap:1em}.grids figure{flex:1 1 280px;max-width:360px}
"""

# Marks every <img> with data-loaded="1"/"0" once the page has loaded (used by the tests).
_JS = """
window.addEventListener('load', function () {
  var ok = 0, imgs = document.images;
  for (var i = 0; i < imgs.length; i++) {
    var good = imgs[i].complete && imgs[i].naturalWidth > 0;
    imgs[i].setAttribute('data-loaded', good ? '1' : '0');
    if (good) ok++;
  }
  document.body.setAttribute('data-images-loaded', String(ok));
  document.body.setAttribute('data-images-total', String(imgs.length));
});
"""


def _figure(rel: str, caption: str, alt: str) -> str:
    return (
        f"<figure><img src='{_esc(rel)}' alt='{_esc(alt)}'>"
        f"<figcaption>{_esc(caption)}</figcaption></figure>"
    )


def _page(title: str, parts: Sequence[str]) -> str:
    """The whole page: ``title`` as its title and heading, then ``parts`` one per line."""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        f"<h1>{_esc(title)}</h1>\n"
        + "\n".join(parts)
        + f"\n<script>{_JS}</script>\n</body></html>\n"
    )
