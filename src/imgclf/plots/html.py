"""One self-contained HTML page: figures are embedded as base64 PNGs, so the file can be mailed alone."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

from ..fsutil import atomic_write_text
from .tables import Table

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
nav a { margin-right: 1em; } .muted { color: #666; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; } th { background: #f4f4f4; }
td:first-child, th:first-child, table.text td { text-align: left; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 13px; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 12px; }
"""


class HtmlReport:
    """Sections of headings, text, tables and figures, rendered into one page."""

    def __init__(self, title: str, subtitle: str = "") -> None:
        self.title, self.subtitle = title, subtitle
        self._body: list[str] = []
        self._sections: list[tuple[str, str]] = []

    def section(self, title: str) -> None:
        anchor = f"s{len(self._sections) + 1}"
        self._sections.append((anchor, title))
        self._body.append(f'<h2 id="{anchor}">{html.escape(title)}</h2>')

    def text(self, text: str, muted: bool = False) -> None:
        self._body.append(f"<p{' class=muted' if muted else ''}>{html.escape(text)}</p>")

    def pre(self, text: str) -> None:
        self._body.append(f"<pre>{html.escape(text)}</pre>")

    def table(self, table: Table) -> None:
        """Numbers align right; a table without headers is a list of (name, text) lines, aligned left."""
        if table.title:
            self.text(table.title)
        headers = table.headers
        head = (
            "<thead><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in headers) + "</tr></thead>"
            if headers
            else ""
        )
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in table.rows)
        self._body.append(f"<table{'' if headers else ' class=text'}>{head}<tbody>{body}</tbody></table>")

    def figure(self, png: str | os.PathLike, caption: str = "") -> None:
        """Embed a PNG file; a missing one is named in the page rather than shown broken."""
        png = Path(png)
        if not png.is_file():
            self.text(f"({png.name} is missing)", muted=True)
            return
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        alt = html.escape(caption or png.stem)
        caption_html = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self._body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">{caption_html}</figure>')

    def render(self) -> str:
        nav = " ".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in self._sections)
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>"
            f'<p class="muted">{html.escape(self.subtitle)}</p><nav>{nav}</nav>\n'
            + "\n".join(self._body)
            + "\n</body></html>\n"
        )

    def write(self, path: str | os.PathLike) -> Path:
        atomic_write_text(path, self.render())
        return Path(path)
