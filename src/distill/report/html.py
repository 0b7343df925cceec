"""A self-contained ``report.html``: the table, the plot (and the runs' training curves) inlined as base64
PNG, notes and the machine."""

from __future__ import annotations

import base64
from html import escape

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td { color: #a00; }
img { max-width: 100%; }
footer { color: #666; font-size: 0.9em; }
"""


def render_html(
    title: str,
    header: list[str],
    cells: list[list[str]],
    failed: list[bool],
    plot_png: bytes,
    notes: str,
    machine: str,
    images: list[tuple[str, bytes]] | None = None,
) -> str:
    """One HTML page with no outside references (styles and the plot are inline); ``images`` are more
    ``(caption, PNG bytes)`` figures, shown after the notes under a "Training curves" heading."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for row, bad in zip(cells, failed, strict=True):
        tds = "".join(f"<td{' class=num' if i else ''}>{escape(c)}</td>" for i, c in enumerate(row))
        body.append(f"<tr{' class=failed' if bad else ''}>{tds}</tr>")
    image = base64.b64encode(plot_png).decode("ascii")
    paragraphs = "".join(f"<p>{escape(p)}</p>" for p in notes.split("\n\n") if p.strip())
    figures = "".join(
        f'<figure><img alt="{escape(caption)}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode("ascii")}"><figcaption>{escape(caption)}</figcaption></figure>'
        for caption, png in images or []
    )
    if figures:
        figures = f"<h2>Training curves</h2>{figures}"
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1><table><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
        f'<img alt="accuracy vs latency" src="data:image/png;base64,{image}">'
        f"{paragraphs}{figures}<footer>{escape(machine)}</footer></body></html>\n"
    )
