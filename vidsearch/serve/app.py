"""The HTTP API and the search page of ``vidsearch serve`` (FastAPI; OpenAPI at ``/openapi.json``).

Endpoints (all JSON unless noted; errors are ``{"error": "..."}`` with 400/403/404/422/503)::

    GET /                                  the search page (static HTML/JS/CSS, no build step)
    GET /api/search?q=...|like=CLIP_ID     ranked moments; in=visual,speech,screen; filters, per_video,
                                           k/offset paging
    GET /api/clips/{clip_id}               clip metadata
    GET /api/clips/{clip_id}/thumbnail     JPEG (cached in LIBRARY/thumbs/<clip_id>.jpg)
    GET /api/videos/{video_id}             video metadata and its clips
    GET /api/videos/{video_id}/file        the video file, HTTP range requests (206/416) for seeking
                                           (also HEAD)
    GET /api/status                        generation, model, counts, index, running writer,
                                           example queries for the page

Ids are the catalog's: ``clip_id`` a positive int64 (sent as a decimal string in JSON, because a
JavaScript number holds 53 bits), ``video_id`` 32 hex characters. No parameter is a path: files
are looked up by id in the catalog (docs/RELIABILITY.md S4).

What the server defends against (docs/RELIABILITY.md S3, S4) and what it does not:

- other web pages: a request under ``/api/`` that a browser marks ``Sec-Fetch-Site: cross-site``
  or ``same-site`` (another port of localhost), or that carries an ``Origin`` other than the
  server's own, gets 403 before anything runs; a foreign ``Host`` (DNS rebinding) gets 400;
- content sniffing and stored XSS: every response carries ``X-Content-Type-Options: nosniff``;
  a video is sent as the ``video/*`` type of its probed container (never one guessed from its
  name), else as a download; video files and thumbnails carry ``Content-Security-Policy:
  sandbox``; the page has its own strict CSP;
- heavy user SQL (``where``): run in a sandbox worker process, killed at the timeout, memory
  capped, outside the service lock;
- not: anyone who can reach the port. There is no authentication; the default bind is
  127.0.0.1, and any other address exposes the library's videos to that network.

Range requests are Starlette's ``FileResponse`` (>= 0.39: 206 with Content-Range, 416 with
``bytes */size``, multipart for several ranges, If-Range), checked by tests/integration/test_serve_api.py.
"""

from __future__ import annotations

import datetime as dt
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vidsearch import __version__
from vidsearch.search.output import result_json
from vidsearch.search.timefmt import TimeFormatError, parse_time
from vidsearch.search.types import BadClipId, Filters, SearchError, parse_clip_id, parse_modalities
from vidsearch.serve.service import BadRequest, LibraryService, SearchParams, ServeError

_logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parents[1] / "search" / "static"
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
MAX_K = 200

# The page loads nothing from elsewhere and runs no inline script: a file name that smuggles
# markup into the DOM could not run anything even if the page escaped it wrongly.
PAGE_CSP = ("default-src 'self'; img-src 'self' data:; media-src 'self'; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")

# Video files and thumbnails are data, never a document: even opened on their own (or sniffed by
# an old browser) they get a unique origin with no script, no forms, no plugins.
FILE_CSP = "sandbox"

CLIP_ID = Annotated[str, PathParam(pattern=r"^[0-9]{1,19}$", description="clip id (decimal int64)")]
VIDEO_ID = Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$", description="video id (32 hex characters)")]


class ErrorOut(BaseModel):
    error: str = Field(description="what was wrong, in one line")


class SnippetOut(BaseModel):
    text: str = Field(description="the matched row's text (cut around the match when long)")
    marks: list[list[int]] = Field(description="[start, end) of each matched word in text, in Unicode code points")
    source: str = Field(description="speech, subtitle or screen")


class HitOut(BaseModel):
    """The fields of ``vidsearch search --json`` hits, plus the page's."""

    rank: int
    score: float
    rerank_score: float | None = Field(description="ITM re-ranking score (null: not re-ranked)")
    clip_id: str = Field(description="best clip of the moment (decimal int64)")
    video_id: str
    path: str
    start_s: float = Field(description="seconds, rounded to ms")
    end_s: float
    start: str = Field(description="HH:MM:SS.mmm")
    end: str = Field(description="HH:MM:SS.mmm")
    merged_clip_ids: list[str] = Field(description="merged clips in time order (decimal int64)")
    modalities: list[str] = Field(description="which modalities found the moment (visual, speech, screen), "
                                              "best contribution first")
    scores: dict[str, float] = Field(description="each modality's own score (cosine, BM25): never compared "
                                                 "with each other")
    snippet: SnippetOut | None = Field(description="the matched words (speech, subtitles, screen text)")
    play_s: float = Field(description="where playback starts: a speech hit's first matched word, else start_s")
    name: str = Field(description="file name")
    folder: str
    thumbnail_url: str
    video_url: str


class SearchOut(BaseModel):
    """The fields of ``vidsearch search --json``, plus ``has_more``."""

    query: str | None
    like_clip_id: str | None = Field(description="the example clip (decimal int64)")
    k: int
    offset: int
    has_more: bool = Field(description="a next page (offset + k) has results")
    strategy: str
    matched: int | None = Field(description="clips matching the filters (null: no filter)")
    generation: int = Field(description="library generation that answered")
    index: str | None
    model: str | None
    modalities: list[str] = Field(description="what was searched")
    score_kind: str = Field(description="what a hit's score is: cosine (pictures only), bm25 (one text "
                                        "modality) or rrf (reciprocal rank fusion of several)")
    min_score: float | None = Field(description="picture hits scoring below it were left out")
    best_score: float | None = Field(description="the best score found, also when below min_score")
    no_good_match: bool = Field(description="something was found, but nothing cleared min_score")
    timings_ms: dict[str, float]
    warnings: list[str]
    search_id: str | None = Field(description="always null here: the server records its history in the background")
    server: str | None
    hits: list[HitOut]


def _clip_id(text: str) -> int:
    try:
        return parse_clip_id(text)  # the CLI's parser: 1 .. 2**63-1
    except BadClipId as e:
        raise BadRequest(str(e)) from None


def _seconds(name: str, text: str | None) -> float | None:
    if text is None or text.strip() == "":
        return None
    try:
        return parse_time(text)
    except TimeFormatError as e:
        raise BadRequest(f"{name}: {e}") from None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x not in ("query", "path", "body")]
        parts.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def cross_site_reason(headers: Headers) -> str | None:
    """Why a request must be refused as coming from another site, or None.

    Browsers mark every request with ``Sec-Fetch-Site``; ``same-origin`` (the page itself) and
    ``none`` (typed into the address bar, a bookmark) pass, ``cross-site`` and ``same-site``
    (another port of this host is the same *site*) do not. Older browsers send ``Origin`` on
    cross-origin requests: it must be this server's own. Clients without either header (curl,
    scripts) are not a browser someone else steers, and pass.
    """
    site = headers.get("sec-fetch-site")
    if site in ("cross-site", "same-site"):
        return f"refused a {site} request: the vidsearch API answers its own page only (Sec-Fetch-Site)"
    origin = headers.get("origin")
    if origin is not None:
        host = headers.get("host", "")
        if origin.lower() not in (f"http://{host}".lower(), f"https://{host}".lower()):
            return "refused a request from another origin: the vidsearch API answers its own page only (Origin)"
    return None


class SiteGuard:
    """ASGI middleware: ``nosniff`` on every response; cross-site ``/api/`` requests get 403.

    Outermost, so that it also covers errors of the other layers (a foreign Host, a 404).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = scope["path"].startswith("/api/")

        async def send_guarded(message: Message) -> None:
            if message["type"] == "http.response.start":
                h = MutableHeaders(scope=message)
                h["X-Content-Type-Options"] = "nosniff"
                if api:  # our data is for our page: no other origin may embed it
                    h["Cross-Origin-Resource-Policy"] = "same-origin"
            await send(message)

        why = cross_site_reason(Headers(scope=scope)) if api else None
        if why is not None:
            await _error(403, why)(scope, receive, send_guarded)
            return
        await self.app(scope, receive, send_guarded)


def create_app(service: LibraryService, *, allowed_hosts: list[str] | None = None) -> FastAPI:
    """The FastAPI application serving ``service``'s library.

    Args:
        service: the library service (started by the lifespan handler, closed at shutdown).
        allowed_hosts: accepted ``Host`` headers; default loopback names only, which stops a DNS
            rebinding page from reading the API through the user's browser. ``["*"]`` for any.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202 - the type is Starlette's
        yield
        service.close()

    app = FastAPI(title="vidsearch", version=__version__, lifespan=lifespan,
                  description="Search a vidsearch video library by text or example clip; "
                              "metadata, thumbnails and video files (by id only).")
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or LOOPBACK_HOSTS)
    app.add_middleware(SiteGuard)  # added last: the outermost layer
    app.state.service = service
    err: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorOut} for code in (400, 403, 404, 422, 503)}

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return _error(exc.status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                            headers={"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff",
                                     "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/api/search", response_model=SearchOut, responses=err, summary="Search by text or example clip")
    def search(
        q: Annotated[str | None, Query(max_length=1000, description="text query")] = None,
        like: Annotated[str | None, Query(pattern=r"^[0-9]{1,19}$", description="clip id: more like this")] = None,
        k: Annotated[int, Query(ge=1, le=MAX_K, description="results per page")] = 24,
        offset: Annotated[int, Query(ge=0, le=100_000, description="skip this many results")] = 0,
        per_video: Annotated[int | None, Query(ge=1, le=1000, description="at most N results per video")] = None,
        merge: Annotated[bool, Query(description="merge adjacent clips into moments")] = True,
        path: Annotated[str | None, Query(max_length=1000, description="GLOB over the video path")] = None,
        folder: Annotated[str | None, Query(max_length=1000, description="videos under this folder")] = None,
        min_duration: Annotated[str | None, Query(description="video at least this long (s or HH:MM:SS)")] = None,
        max_duration: Annotated[str | None, Query(description="video at most this long")] = None,
        from_: Annotated[str | None, Query(alias="from", description="clips after this time in the video")] = None,
        to: Annotated[str | None, Query(description="clips before this time in the video")] = None,
        date_from: Annotated[dt.date | None, Query(description="file date (mtime, UTC) on or after, YYYY-MM-DD")]
        = None,
        date_to: Annotated[dt.date | None, Query(description="file date on or before, YYYY-MM-DD")] = None,
        where: Annotated[str | None, Query(max_length=2000, description="SQL predicate over clips/videos "
                                                                         "columns (checked, sandboxed)")] = None,
        min_score: Annotated[float | None, Query(ge=-1, le=1, description="leave out picture hits scoring "
                                                 "below this cosine (default: the model's min_score for text "
                                                 "queries); speech and screen-text hits are not cut")] = None,
        in_: Annotated[str | None, Query(alias="in", max_length=100, pattern=r"^[a-z, ]*$",
                                         description="what to search, comma-separated: visual, speech, screen "
                                                     "(default: every one the library has)")] = None,
    ) -> dict[str, Any]:
        if q is not None and not q.strip() and like:
            q = None  # the page sends an empty q with like=
        try:
            modalities = parse_modalities(in_)
        except SearchError as e:
            raise BadRequest(f"in: {e}") from None
        f = Filters(path_glob=path or None, folder=folder or None,
                    min_duration_s=_seconds("min_duration", min_duration),
                    max_duration_s=_seconds("max_duration", max_duration), date_from=date_from, date_to=date_to,
                    from_s=_seconds("from", from_), to_s=_seconds("to", to),
                    where=where.strip() or None if where else None)
        params = SearchParams(query=q, like_clip_id=_clip_id(like) if like else None, k=k, offset=offset,
                              per_video=per_video, merge=merge, filters=f, min_score=min_score,
                              modalities=modalities)
        r, more = service.search(params)
        return {**result_json(r), "has_more": more, "hits": [service.hit_record(h) for h in r.hits]}

    @app.get("/api/clips/{clip_id}", responses=err, summary="Clip metadata")
    def clip(clip_id: CLIP_ID) -> dict[str, Any]:
        return service.clip(_clip_id(clip_id))

    @app.get("/api/clips/{clip_id}/thumbnail", responses={**err, 200: {"content": {"image/jpeg": {}}}},
             response_class=FileResponse, summary="Thumbnail (JPEG) of a clip")
    def thumbnail(clip_id: CLIP_ID) -> FileResponse:
        return FileResponse(service.thumbnail(_clip_id(clip_id)), media_type="image/jpeg",
                            headers={"Cache-Control": "max-age=3600", "Content-Security-Policy": FILE_CSP})

    @app.get("/api/videos/{video_id}", responses=err, summary="Video metadata and its clips")
    def video(video_id: VIDEO_ID) -> dict[str, Any]:
        return service.video(video_id)

    def file_response(video_id: str) -> FileResponse:
        f = service.video_file(video_id)
        # stat_result from the regular-file check: FileResponse does not stat again, and the
        # length it announces is the one checked. A container without a video/* type is a
        # download named by its id (never its own name: a saved "x.html" opened later would run).
        return FileResponse(f.path, media_type=f.media_type, stat_result=f.stat, filename=f.attachment,
                            content_disposition_type="attachment",
                            headers={"Cache-Control": "no-cache", "Content-Security-Policy": FILE_CSP})

    file_responses: dict[int | str, dict[str, Any]] = {
        **err, 200: {"content": {"video/*": {}, "application/octet-stream": {}}},
        206: {"description": "partial content (Range)"}, 416: {"description": "range not satisfiable"}}

    # GET and HEAD as two routes: one route with both methods gives both the same OpenAPI
    # operation id, which FastAPI warns about on every /openapi.json.
    @app.get("/api/videos/{video_id}/file", response_class=FileResponse, responses=file_responses,
             summary="The video file, with HTTP range requests")
    def video_file(video_id: VIDEO_ID) -> FileResponse:
        return file_response(video_id)

    @app.head("/api/videos/{video_id}/file", response_class=FileResponse, responses=file_responses,
              summary="Size and type of the video file")
    def video_file_head(video_id: VIDEO_ID) -> FileResponse:
        return file_response(video_id)

    @app.get("/api/status", responses=err, summary="Library status")
    def status() -> dict[str, Any]:
        return service.status()

    return app
