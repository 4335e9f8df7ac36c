"""A self-contained HTML report: figures embedded, interactive plotly, works offline.

Static figures are embedded as base64 PNG (with their PDF written beside the report),
interactive figures as plotly ``div`` elements sharing one inlined copy of plotly.js, so
the file opens with no network and no other files.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MISSING", "Report", "format_number"]

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em} h2{font-size:1.3em;margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
figure{margin:1.2em 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.92em;color:#444;margin-top:.4em}
.table{overflow-x:auto;max-width:100%;margin:1em 0}
table{border-collapse:collapse;font-size:.85em} th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}
td{white-space:nowrap;font-variant-numeric:tabular-nums} caption{text-align:left;font-size:.92em;color:#444;padding-bottom:.4em}
th{background:#f4f4f4;vertical-align:bottom} td:first-child,th:first-child{text-align:left}
.meta{font-size:.85em;color:#666} code{background:#f5f5f5;padding:0 .2em}
"""


@dataclass
class Report:
    """Collects sections, then writes one HTML file."""

    title: str
    subtitle: str = ""
    formats: Sequence[str] = ("png", "pdf")  # the files each saved figure is written as
    parts: list[str] = field(default_factory=list)
    _plotly_included: bool = False
    _n: int = 0

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def text(self, text: str) -> None:
        """A paragraph (plain text; blank lines separate paragraphs)."""
        for para in text.strip().split("\n\n"):
            self.parts.append(f"<p>{html.escape(para)}</p>")

    def figure(self, fig: Any, caption: str, *, save_as: Path | None = None) -> None:
        """Embed a matplotlib figure as PNG; also write it to ``save_as`` (a path stem) in each
        of :attr:`formats` (PNG always among them)."""
        if save_as is not None:
            # the saved PNG is the embedded one: one raster rendering per figure
            from basinscope.plotting.io import save_figure

            formats = ["png", *(f for f in self.formats if f != "png")]
            png = save_figure(fig, save_as, formats)[0]
            raw = png.read_bytes()
        else:
            from basinscope.plotting.io import timing_independent

            buf = io.BytesIO()
            with timing_independent():
                fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
            raw = buf.getvalue()
        data = base64.b64encode(raw).decode("ascii")
        self._n += 1
        self.parts.append(
            f'<figure id="fig{self._n}" class="static"><img alt="{html.escape(caption[:80])}" '
            f'src="data:image/png;base64,{data}"><figcaption><b>Figure {self._n}.</b> {html.escape(caption)}</figcaption></figure>'
        )

    def plotly(self, fig: Any, caption: str) -> None:
        """Embed an interactive plotly figure (plotly.js inlined once per report)."""
        div = fig.to_html(
            full_html=False, include_plotlyjs=not self._plotly_included, default_height="520px"
        )
        self._plotly_included = True
        self._n += 1
        self.parts.append(
            f'<figure id="fig{self._n}" class="interactive">{div}<figcaption><b>Figure {self._n}.</b> '
            f"{html.escape(caption)}</figcaption></figure>"
        )

    def table(
        self,
        rows: Sequence[dict[str, Any]],
        caption: str = "",
        columns: Sequence[str] | None = None,
        *,
        digits: int = 4,
        precision: float | None = None,
    ) -> None:
        """A table that scrolls sideways inside the page when it is wider than the page.
        Numbers are written by :func:`format_number` with ``digits`` significant digits and
        ``precision`` (say it in the caption); a missing value (None) is ``—``."""
        if not rows:
            return
        cols = list(columns or rows[0].keys())
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)

        def cell(v: Any) -> str:
            return html.escape(format_number(v, digits=digits, precision=precision))

        body = "".join(
            "<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows
        )
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self.parts.append(
            f'<div class="table"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}'
            "</tbody></table></div>"
        )

    def render(self) -> str:
        sub = f'<p class="meta">{html.escape(self.subtitle)}</p>' if self.subtitle else ""
        return (
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{html.escape(self.title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(self.title)}</h1>{sub}"
            + "\n".join(self.parts)
            + "</body></html>"
        )

    def write(self, path: str | Path) -> Path:
        """Write the page atomically (a reader never sees half a report)."""
        from basinscope.store import atomic_write_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(path, self.render(), "report")


#: What a table shows for a missing value.
MISSING = "—"


def format_number(v: Any, *, digits: int = 4, precision: float | None = None) -> str:
    """A table cell: a float with ``digits`` significant digits (``0.0431``, ``1.23e+04``),
    ``0`` when its magnitude is below ``precision`` (rounding noise such as ``6.9e-18``
    where the numbers are known to that precision), ``—`` for None and NaN, ``∞``/``−∞``
    for infinities; anything else as ``str``."""
    import math

    if v is None:
        return MISSING
    if isinstance(v, bool) or not isinstance(v, float):
        return str(v)
    if math.isnan(v):
        return MISSING
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    if precision is not None and abs(v) < precision:
        return "0"
    return f"{v:.{digits}g}"


def _fmt(v: Any) -> str:
    return format_number(v)
