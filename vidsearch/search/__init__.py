"""Search: query encoding, ANN + DuckDB filtering, moments, output, the SQL sandbox, history.

The web server reuses :class:`Searcher` (model, index and DuckDB loaded once)::

    from vidsearch.search import Filters, Searcher
    with Searcher(library) as s:
        result = s.search("dog playing in snow", k=10, filters=Filters(path_glob="*/pets/*"))
"""

from vidsearch.search.searcher import Filters, Hit, Searcher, SearchError, SearchResult

__all__ = ["Filters", "Hit", "SearchError", "SearchResult", "Searcher"]
