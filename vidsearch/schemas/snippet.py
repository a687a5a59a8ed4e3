"""A hit's matched text with the spans of its matched words (standard library only: the search
layer's hand-off types use it without pyarrow)."""

from __future__ import annotations

import html
from dataclasses import dataclass


@dataclass(frozen=True)
class Snippet:
    """Text of a hit with the matched words' character spans (render with «» in text, <mark> in HTML)."""

    text: str
    marks: tuple[tuple[int, int], ...] = ()

    def render(self, left: str = "«", right: str = "»") -> str:
        """The text with each mark wrapped in ``left``/``right``."""
        out, pos = [], 0
        for a, b in self.marks:
            out += [self.text[pos:a], left, self.text[a:b], right]
            pos = b
        out.append(self.text[pos:])
        return "".join(out)

    def html(self) -> str:
        """HTML-escaped text with ``<mark>`` around matches."""
        out, pos = [], 0
        for a, b in self.marks:
            out += [html.escape(self.text[pos:a]), "<mark>", html.escape(self.text[a:b]), "</mark>"]
            pos = b
        out.append(html.escape(self.text[pos:]))
        return "".join(out)
