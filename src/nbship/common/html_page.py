"""Building blocks of the project's self-contained HTML pages (model cards, the monitor
report, the dashboard): escaping, tables, badges, sections, and matplotlib figures as
inline SVG. Every text value is escaped here; `Html` marks markup already built."""

from __future__ import annotations

import html
import io
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

# matplotlib settings for every figure of a page
RC: dict[str, Any] = {
    # fixed salt: clip-path and marker ids are the same for the same figure, not random
    "svg.hashsalt": "nbship-model-card",
    # text as <text> elements, not glyph outlines: a few KB per figure, and selectable
    "svg.fonttype": "none",
    # "$" in a class or column name is text, not mathtext to parse
    "text.parse_math": False,
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 7,
    "legend.frameon": False,
}

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f;
       max-width: 1100px; margin: 0 auto; padding: 1rem 1.5rem 3rem; }
h1 { font-size: 1.6rem; margin: .5rem 0; }
h2 { font-size: 1.25rem; border-bottom: 2px solid #e3e3e8; padding-bottom: .2rem;
     margin-top: 2.2rem; }
h3 { font-size: 1.05rem; margin: 1.4rem 0 .4rem; }
nav a { margin-right: .9rem; }
code { font: 12px ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
       word-break: break-all; }
table { border-collapse: collapse; margin: .4rem 0 1rem; font-size: 13px; }
th, td { border: 1px solid #dcdce2; padding: .2rem .55rem; text-align: left;
         vertical-align: top; }
thead th { background: #f3f3f6; }
th[scope=row] { background: #fafafc; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: .2rem 0; }
.badge { display: inline-block; padding: 0 .5rem; border-radius: .7rem; font-size: 12px;
         font-weight: 700; letter-spacing: .02em; white-space: nowrap; }
.pass { background: #d9f2df; color: #14632b; }
.fail { background: #fbdcdc; color: #9b1c1c; }
.none { background: #ececf1; color: #4a4a55; }
.alias { background: #dde8fb; color: #1c3f8f; }
.better { color: #14632b; }
.worse { color: #9b1c1c; }
.figures { display: flex; flex-wrap: wrap; gap: 1.2rem; align-items: flex-start; }
figure { margin: .4rem 0 1rem; }
figure svg { max-width: 100%; height: auto; }
figcaption { font-size: 12px; color: #55555f; max-width: 32rem; }
.note { color: #55555f; font-size: 13px; }
footer { margin-top: 3rem; font-size: 12px; color: #77777f; }
"""


class Html(str):
    """Markup built from escaped parts: inserted as it is."""


class Num(Html):
    """Markup of a number: right-aligned in a table."""


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool | np.bool_)


def fmt(value: Any, digits: int = 4) -> str:
    """A value as short text: None as a dash, floats to `digits` significant figures,
    containers as JSON."""
    if value is None:
        return "—"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if is_number(value):
        return f"{float(value):.{digits}g}"
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _cell(value: Any) -> str:
    return value if isinstance(value, Html) else escape(fmt(value))


def _td(value: Any) -> str:
    numeric = is_number(value) or isinstance(value, Num)
    return f'<td class="num">{_cell(value)}</td>' if numeric else f"<td>{_cell(value)}</td>"


def table(
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    caption: str | None = None,
    table_id: str = "",
) -> Html:
    """A table; cells are escaped unless they are Html."""
    head = "".join(f'<th scope="col">{escape(h)}</th>' for h in header)
    body = "".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in rows)
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    ident = f' id="{escape(table_id)}"' if table_id else ""
    return Html(f"<table{ident}>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def kv(rows: Iterable[tuple[str, Any]]) -> Html:
    """A two-column table of label -> value."""
    body = "".join(f'<tr><th scope="row">{escape(k)}</th>{_td(v)}</tr>' for k, v in rows)
    return Html(f"<table><tbody>{body}</tbody></table>")


def code(value: Any) -> Html:
    return Html("—" if value is None else f"<code>{escape(value)}</code>")


def badge(text: str, kind: str) -> Html:
    return Html(f'<span class="badge {kind}">{escape(text)}</span>')


def section(anchor: str, title: str, body: Iterable[str]) -> str:
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>{"".join(body)}</section>'


def note(text: str) -> Html:
    return Html(f'<p class="note">{escape(text)}</p>')


_ID = re.compile(r'(?<=\s)id="([^"]+)"(?=[^<>]*>)')
_REF = re.compile(r'(href="#|url\(#)([^")]+)(?=[^<>]*>)')
_XMLNS = re.compile(r'\s+xmlns(?::xlink)?="[^"]*"')
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.DOTALL)


def _inline_svg(svg: str, prefix: str, label: str) -> str:
    """matplotlib's SVG file as an element for an HTML page.

    Drops the XML prolog, doctype and RDF metadata (it holds links), and the namespace
    declarations, which HTML does not need. Ids get `prefix` so that several figures on
    one page never share an id.
    """
    svg = _METADATA.sub("", svg[svg.index("<svg") :])
    ids = set(_ID.findall(svg))
    svg = _ID.sub(lambda m: f'id="{prefix}-{m.group(1)}"', svg)
    svg = _REF.sub(
        lambda m: f"{m.group(1)}{prefix}-{m.group(2)}" if m.group(2) in ids else m.group(0), svg
    )
    end = svg.index(">")
    root = _XMLNS.sub("", svg[:end]).replace(
        "<svg", f'<svg role="img" aria-label="{escape(label)}"'
    )
    return (root + svg[end:]).strip()


def svg(fig_id: str, label: str, size: tuple[float, float], draw: Callable[[Figure], None]) -> str:
    """The figure `draw` fills, as an inline <svg> element."""
    # matplotlib's stubs type rc keys as a Literal of every known key; RC is a plain dict
    with matplotlib.rc_context(RC):  # type: ignore[arg-type]
        # A bare Figure, not pyplot: no GUI backend is touched and nothing is registered
        # in pyplot's figure list, so there is no figure to close or leak.
        fig = Figure(figsize=size, layout="constrained")
        draw(fig)
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return _inline_svg(buf.getvalue(), fig_id, label)


def figure(fig_id: str, svg: str, caption: str | None = None) -> Html:
    cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return Html(f'<figure id="{escape(fig_id)}">{svg}{cap}</figure>')
