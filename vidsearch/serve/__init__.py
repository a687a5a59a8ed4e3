"""``vidsearch serve``: an HTTP API and a search page over one library.

::

    from vidsearch.library import Library
    from vidsearch.serve import LibraryService, create_app

    service = LibraryService(Library("~/vlib"))
    service.start()                 # model loaded once, text encoder warm
    app = create_app(service)       # FastAPI; run with uvicorn

Needs the ``serve`` extra (fastapi, uvicorn); the rest of vidsearch does not import this package.
"""

from vidsearch.serve.app import create_app
from vidsearch.serve.service import BadRequest, LibraryService, NotFound, SearchParams, ServeError, Unavailable

__all__ = ["BadRequest", "LibraryService", "NotFound", "SearchParams", "ServeError", "Unavailable", "create_app"]
