"""Search: query encoding, ANN + DuckDB filtering, moments, output, the SQL sandbox, history.

The web server reuses :class:`Searcher` (model, index and DuckDB loaded once)::

    from vidsearch.search import Filters, Searcher
    with Searcher(library) as s:
        result = s.search("dog playing in snow", k=10, filters=Filters(path_glob="*/pets/*"))
"""

from vidsearch.search.searcher import Searcher
from vidsearch.search.types import Filters, Hit, SearchError, SearchResult, parse_clip_id

__all__ = ["Filters", "Hit", "SearchError", "SearchResult", "Searcher", "parse_clip_id"]
