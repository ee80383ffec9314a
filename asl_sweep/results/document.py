"""A tiny document model: headings, paragraphs, tables and images, rendered to Markdown and
to a self-contained HTML page (images inlined)."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# A "<" that may open HTML in Markdown (a tag, a comment): a class folder named "<i>x" reached
# the rendered page as an <i> tag, the text after it in italics.
_OPENS_HTML = re.compile(r"<(?=[A-Za-z/!?])")


def _text(text: str) -> str:
    """Text as Markdown shows it, never as HTML."""
    return _OPENS_HTML.sub("&lt;", text)


def _row(cells: list[str]) -> str:
    """One Markdown table row; a "|" or a line break in a cell (a class folder, a stage or a
    person named by the user) would otherwise split the row."""
    return "| " + " | ".join(" ".join(_text(c).replace("|", "\\|").split("\n"))
                             for c in cells) + " |"


@dataclass
class Doc:
    """Headings, paragraphs, tables and images, rendered to Markdown and to HTML."""

    folder: Path
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", (header, rows)))

    def img(self, path: Path | None, alt: str) -> None:
        if path is not None and path.exists():
            self.blocks.append(("img", (path, alt)))

    def images(self) -> list[Path]:
        return [data[0] for kind, data in self.blocks if kind == "img"]

    def markdown(self) -> str:
        out = []
        for kind, data in self.blocks:
            if kind == "h":
                out.append("#" * data[0] + " " + _text(data[1]))
            elif kind == "p":
                out.append(_text(data))
            elif kind == "table":
                header, rows = data
                out.append("\n".join([_row(header), "|" + "---|" * len(header),
                                      *(_row(r) for r in rows)]))
            else:
                path, alt = data
                out.append(f"![{_text(alt)}]({path.relative_to(self.folder)})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
               "</title><style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;"
               "padding:0 1em}table{border-collapse:collapse;font-size:90%}td,th{border:1px "
               "solid #ccc;padding:3px 8px;text-align:left}img{max-width:100%}</style></head>"
               "<body>"]
        for kind, data in self.blocks:
            if kind == "h":
                out.append(f"<h{data[0]}>{html.escape(data[1])}</h{data[0]}>")
            elif kind == "p":
                out.append(f"<p>{html.escape(data)}</p>")
            elif kind == "table":
                header, rows = data
                out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in header)
                           + "</tr>" + "".join("<tr>" + "".join(
                               f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
                           + "</table>")
            else:
                path, alt = data
                encoded = base64.b64encode(path.read_bytes()).decode()
                out.append(f"<p><img alt='{html.escape(alt)}' "
                           f"src='data:image/png;base64,{encoded}'></p>")
        return "\n".join(out) + "</body></html>\n"
