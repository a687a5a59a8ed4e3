"""Search: query encoding, ANN + DuckDB filtering, moments, output, the SQL sandbox, history.

The web server reuses :class:`Searcher` (model, index and DuckDB loaded once)::

    from vidsearch.search import Filters, Searcher
    with Searcher(library) as s:
        result = s.search("dog playing in snow", k=10, filters=Filters(path_glob="*/pets/*"))

``Searcher`` is imported on first use (PEP 562): ``vidsearch.search.types``, ``.remote`` and
``.output`` stay free of FAISS, DuckDB and torch, so a search sent to a running server starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vidsearch.search.types import Filters, Hit, SearchError, SearchResult, parse_clip_id

if TYPE_CHECKING:
    from vidsearch.search.searcher import Searcher

__all__ = ["Filters", "Hit", "SearchError", "SearchResult", "Searcher", "parse_clip_id"]


def __getattr__(name: str) -> Any:
    if name == "Searcher":
        from vidsearch.search.searcher import Searcher

        return Searcher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
