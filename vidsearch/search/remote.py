"""Let a one-shot ``vidsearch search`` use a ``vidsearch serve`` that already has the library open.

A command-line search pays seconds to import torch and build the text encoder before its first
result; a running server has both warm and answers in milliseconds. So ``vidsearch serve``
advertises itself, and ``vidsearch search`` asks it when it can.

The advertisement is runtime state, not library data: it lives outside the library (read
commands do not write there, and a read-only library must work), in the user's own runtime
folder, ``$XDG_RUNTIME_DIR/vidsearch/servers/`` (else ``~/.cache/vidsearch/servers/``), one
file per library named by a hash of its real path, mode 0600 in a 0700 folder. Each record says
which process serves which library at which URL.

Nothing in the record is trusted on its own word: the client uses a server only if the process
is alive on this host, and the server's ``/api/status`` names the same library folder, the same
``library_id`` and model fingerprint as the library's own manifest. A stale record (a killed
server) costs one failed ``kill(pid, 0)``; an unreachable server one refused connection. Any
doubt means a local search, never an error.

This module imports nothing beyond the standard library: the point is to answer before torch,
DuckDB or FAISS are loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidsearch.files import atomic_write_text
from vidsearch.search.types import Filters, SearchError, SearchResult

_logger = logging.getLogger(__name__)

RECORD_VERSION = 1
# A local server answers /api/status in a few ms; a hung one must not delay the fallback much.
STATUS_TIMEOUT_S = 1.0
SEARCH_TIMEOUT_S = 60.0
# What the web API accepts (vidsearch/serve/app.py); larger requests are answered locally.
MAX_K, MAX_OFFSET, MAX_WHERE, MAX_QUERY = 200, 100_000, 2000, 1000


def servers_dir() -> Path:
    """Where servers advertise themselves (created 0700 on first use); ``$VIDSEARCH_RUNTIME_DIR``
    overrides it (tests keep their servers to themselves with it)."""
    override = os.environ.get("VIDSEARCH_RUNTIME_DIR")
    if override:
        return Path(override) / "servers"
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and Path(base).is_dir():
        return Path(base) / "vidsearch" / "servers"
    return Path.home() / ".cache" / "vidsearch" / "servers"


def _record_path(library_root: str | os.PathLike[str]) -> Path:
    real = os.path.realpath(library_root)
    return servers_dir() / f"{hashlib.sha256(real.encode('utf-8', 'surrogateescape')).hexdigest()[:24]}.json"


@dataclass(frozen=True)
class ServerInfo:
    """A running ``vidsearch serve`` of one library, as advertised and then verified."""

    url: str               # http://127.0.0.1:PORT
    pid: int
    library: str           # real path of the library folder
    library_id: str
    model_fingerprint: str | None


def local_url(host: str, port: int) -> str:
    """The URL a client on this machine uses for a server bound to ``host``:``port``."""
    h = host.strip("[]")
    if h in ("", "0.0.0.0"):
        h = "127.0.0.1"
    elif h == "::":
        h = "::1"
    return f"http://[{h}]:{port}" if ":" in h else f"http://{h}:{port}"


@contextlib.contextmanager
def advertise(library_root: str | os.PathLike[str], url: str, library_id: str,
              model_fingerprint: str | None) -> Iterator[Path | None]:
    """Advertise a server of ``library_root`` at ``url`` while the block runs.

    Failing to write the record (no home, a read-only file system) is logged and ignored: the
    server works without it. The record is removed at exit if it is still this process's.
    """
    path = _record_path(library_root)
    record = {"version": RECORD_VERSION, "pid": os.getpid(), "host": socket.gethostname(), "url": url,
              "library": os.path.realpath(library_root), "library_id": library_id,
              "model_fingerprint": model_fingerprint, "started_at": time.time()}
    written: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write_text(path, json.dumps(record), mode=0o600)
        written = path
    except OSError as e:
        _logger.info("not advertising this server to `vidsearch search` (%s: %s)", path.parent, e.strerror or e)

    def withdraw() -> None:
        if written is not None:
            with contextlib.suppress(OSError, ValueError):
                if json.loads(written.read_text()).get("pid") == os.getpid():
                    written.unlink()

    # uvicorn ends a graceful SIGTERM shutdown by raising the signal again with the handler it
    # found installed; with the default one the process dies inside the server and no finally
    # runs. So that handler withdraws the record first, then dies the same way.
    previous = None

    def on_term(signum: int, frame: Any) -> None:
        withdraw()
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    with contextlib.suppress(ValueError):  # not the main thread: no handler, the pid check covers it
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield written
    finally:
        withdraw()
        if previous is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, previous)


def _manifest_identity(library_root: str | os.PathLike[str]) -> tuple[str, str | None] | None:
    """(library_id, model fingerprint) from the library's manifest, without importing the library
    package (compared for equality only; the server validated its own copy)."""
    try:
        m = json.loads((Path(library_root) / "manifest.json").read_text())
        model = m.get("model") or {}
        lid, fp = m.get("library_id"), model.get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(lid, str) or not (fp is None or isinstance(fp, str)):
        return None
    return lid, fp


def _alive_here(pid: Any, host: Any) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: not ours to talk to
        return False
    return True


def _get(url: str, timeout: float) -> Any:
    # No proxies: the server is on this machine, and an HTTP(S)_PROXY must not see the query.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    with opener.open(req, timeout=timeout) as r:
        return json.loads(r.read().decode())


def find_server(library_root: str | os.PathLike[str]) -> ServerInfo | None:
    """The verified running server of this library, or None (never raises for a bad record)."""
    if os.environ.get("VIDSEARCH_NO_SERVER"):
        return None
    path = _record_path(library_root)
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("version") != RECORD_VERSION:
        return None
    url = rec.get("url")
    if not isinstance(url, str) or not _alive_here(rec.get("pid"), rec.get("host")):
        return None
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "http" or not parsed.hostname or parsed.path not in ("", "/"):
        return None
    ident = _manifest_identity(library_root)
    if ident is None:
        return None
    try:
        st = _get(url.rstrip("/") + "/api/status", STATUS_TIMEOUT_S)
    except (OSError, ValueError, urllib.error.URLError) as e:
        _logger.debug("server %s of %s does not answer (%s); searching locally", url, library_root, e)
        return None
    real = os.path.realpath(library_root)
    model = st.get("model") if isinstance(st, dict) else None
    same = (isinstance(st, dict) and st.get("ready") is True and isinstance(st.get("library"), str)
            and os.path.realpath(st["library"]) == real and st.get("library_id") == ident[0]
            and isinstance(model, dict) and model.get("fingerprint") == ident[1])
    if not same:
        _logger.debug("server %s does not serve %s as its manifest says; searching locally", url, real)
        return None
    return ServerInfo(url=url.rstrip("/"), pid=int(rec["pid"]), library=real, library_id=ident[0],
                      model_fingerprint=ident[1])


def can_ask(*, k: int, offset: int, query: str | None, where: str | None) -> bool:
    """Whether the web API accepts a search of this size (else it is answered locally)."""
    return (k <= MAX_K and offset <= MAX_OFFSET and (query is None or len(query) <= MAX_QUERY)
            and (where is None or len(where) <= MAX_WHERE))


def remote_search(server: ServerInfo, *, query: str | None, like_clip_id: int | None, k: int, offset: int,
                  filters: Filters, per_video: int | None, merge: bool,
                  min_score: float | None, modalities: Sequence[str] | None = None) -> SearchResult:
    """The same search as :meth:`Searcher.search`, answered by ``server``.

    Raises:
        OSError, ValueError: the server failed or answered something else than a result (the
            caller searches locally then).
    """
    t0 = time.perf_counter()
    params: dict[str, str] = {"k": str(k), "offset": str(offset), "merge": "true" if merge else "false"}
    if query is not None:
        params["q"] = query
    if like_clip_id is not None:
        params["like"] = str(like_clip_id)
    if per_video is not None:
        params["per_video"] = str(per_video)
    if min_score is not None:
        params["min_score"] = repr(float(min_score))
    if modalities is not None:
        params["in"] = ",".join(modalities)
    f = filters
    for name, value in (("path", f.path_glob), ("folder", f.folder), ("min_duration", f.min_duration_s),
                        ("max_duration", f.max_duration_s), ("from", f.from_s), ("to", f.to_s),
                        ("date_from", f.date_from), ("date_to", f.date_to), ("where", f.where)):
        if value is not None:
            params[name] = value.isoformat() if hasattr(value, "isoformat") else str(value)
    if f.video_id is not None:
        raise ValueError("the web API has no video filter")
    url = f"{server.url}/api/search?{urllib.parse.urlencode(params)}"
    try:
        doc = _get(url, SEARCH_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        try:  # the server's one-line reason ({"error": "..."}), e.g. a refused --where
            msg = json.loads(e.read().decode()).get("error")
        except (OSError, ValueError, AttributeError):
            msg = None
        if e.code in (400, 404, 422) and isinstance(msg, str):
            raise SearchError(msg) from None
        raise OSError(f"{server.url} answered {e.code}: {msg or e.reason}") from None
    from vidsearch.search.output import hit_from_json

    hits = [hit_from_json(h) for h in doc["hits"]]
    timings = {str(k_): float(v) for k_, v in (doc.get("timings_ms") or {}).items()}
    timings["server_total"] = timings.pop("total", 0.0)
    timings["total"] = (time.perf_counter() - t0) * 1e3
    like = doc.get("like_clip_id")
    best = doc.get("best_score")
    return SearchResult(
        hits=hits, query=doc.get("query"), like_clip_id=None if like is None else int(like), k=int(doc["k"]),
        offset=int(doc["offset"]), per_video=per_video, rerank=0, filters=filters, strategy=str(doc["strategy"]),
        matched=doc.get("matched"), total_moments=len(hits), timings_ms=timings,
        warnings=[str(w) for w in doc.get("warnings") or []], index_kind=doc.get("index"),
        generation=int(doc.get("generation") or 0), model_name=doc.get("model"),
        model_fingerprint=server.model_fingerprint, search_id=doc.get("search_id"),
        min_score=doc.get("min_score"), best_score=None if best is None else float(best), server=server.url,
        modalities=tuple(str(m) for m in doc.get("modalities") or ("visual",)),
        score_kind=str(doc.get("score_kind") or "cosine"))
