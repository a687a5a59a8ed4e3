"""The library's keyword index (``index/text/``): kept up to date with its text tables by ``update_index``.

The index (:mod:`vidsearch.indexer.keyword`, tantivy) is a cache of the catalog's ``transcripts``
and ``screen_text`` rows, like the FAISS index is of the clips. Its ``covers`` map names every
text table file of the manifest it was built from (``<table>-<shard id>`` -> SHA-256), so that:

* the same files -> nothing to do;
* more files (new commits) -> extended: the videos those commits touch (new rows, or a
  ``text_status`` row that replaced a video's earlier rows of a kind) lose their documents and
  get their current ones from the catalog; the rest of the index is hard-linked, not rebuilt;
* a covered file gone or changed (a shard set aside, ``--new-index``), a corrupt index or
  ``rebuild`` -> built again from the catalog.

Documents come from the catalog (writer only: it is made current first), so the superseding rule
of ``insert_shard_rows`` (a newer status of a kind replaces the older rows) is applied once, in
one place. Documents of videos that are not searchable (replaced, failed) stay in the index as
their rows stay in the catalog; searches filter by the video's status as they do for clips.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]

from vidsearch.library import Library
from vidsearch.schemas.manifest import Manifest
from vidsearch.schemas.text_tables import SCREEN_TEXT_SCHEMA, TRANSCRIPT_SCHEMA, keyword_docs

_logger = logging.getLogger(__name__)

# The manifest tables whose files the keyword index depends on.
KEYWORD_TABLES = ("transcripts", "screen_text", "text_status")


def keyword_dir(library: Library) -> Path:
    """``LIBRARY/index/text``: the keyword index's folder."""
    return library.index_dir / "text"


def has_text_rows(m: Manifest) -> bool:
    """Whether any commit of ``m`` wrote transcript or screen-text rows (else no index is needed:
    a library whose videos have no subtitles and no ``--speech`` has nothing to search by keyword)."""
    return any(name in ("transcripts", "screen_text") for s in m.shards for name in s.tables)


def keyword_covers(m: Manifest) -> dict[str, str]:
    """What an index built from manifest ``m``'s text tables covers: ``<table>-<shard id>`` -> SHA-256."""
    return {f"{name}-{s.shard_id:06d}": t.sha256 for s in m.shards for name, t in s.tables.items()
            if name in KEYWORD_TABLES}


@dataclass
class KeywordReport:
    """What :func:`update_keyword_index` did."""

    action: str                  # built / rebuilt / extended / unchanged / none (no text in the library)
    docs: int = 0                # documents in the index afterwards
    added: int = 0               # documents written by this call
    videos_refreshed: int = 0    # videos whose documents were replaced (extension)
    seconds: float = 0.0
    reason: str | None = None    # why it was (re)built

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        if self.action == "unchanged":
            return f"keyword index unchanged ({self.docs:,} documents)"
        if self.action == "none":
            return "keyword index: none (no transcript or screen-text rows)"
        return (f"keyword index {self.action}: {self.docs:,} documents ({self.added:,} written) in {self.seconds:.1f} s"
                + (f" ({self.reason})" if self.reason else ""))


def _text_rows(library: Library, video_ids: list[str] | None = None) -> pa.Table:
    """Keyword documents of the catalog's text rows (of ``video_ids`` only, if given), of searchable
    and non-searchable videos alike; the filter is a bound parameter, never SQL text."""
    tcols = ", ".join(TRANSCRIPT_SCHEMA.names)
    scols = ", ".join(SCREEN_TEXT_SCHEMA.names)
    where = "" if video_ids is None else " WHERE list_contains(?, video_id)"
    params = [] if video_ids is None else [video_ids]
    with library.connect_catalog() as con:
        transcripts = con.sql(f"SELECT {tcols} FROM transcripts{where}", params=params or None).to_arrow_table()
        screen = con.sql(f"SELECT {scols} FROM screen_text{where}", params=params or None).to_arrow_table()
    return keyword_docs(transcripts=transcripts, screen_text=screen)


def update_keyword_index(library: Library, *, rebuild: bool = False,
                         progress: Callable[[str], None] | None = None) -> KeywordReport:
    """Bring ``index/text`` up to date with the manifest's text tables (writer only; module docstring).

    Raises:
        LibraryError: no writer lock (from the catalog refresh).
        OSError: a write failed (the caller turns a full disk into DiskFull); ``keyword.json``
            still names the previous complete generation.
    """
    from vidsearch.indexer.keyword import (
        KeywordIndexCorrupt,
        KeywordIndexMissing,
        _verify_files,
        build_keyword_index,
        extend_keyword_index,
        read_meta,
    )

    say = progress or (lambda msg: _logger.info("%s", msg))
    t0 = time.perf_counter()
    m = library.read_manifest()
    covers = keyword_covers(m)
    dest = keyword_dir(library)
    old = None
    reason = "rebuild asked for" if rebuild else None
    if not rebuild:
        try:
            old = read_meta(dest)
            _verify_files(dest / old.folder, old)  # as the FAISS file is checked before it is extended
        except KeywordIndexMissing:
            if not has_text_rows(m):
                return KeywordReport("none")
        except KeywordIndexCorrupt as e:
            old, reason = None, str(e).split(";")[0]
    library.refresh_catalog(m)  # documents come from the catalog: make it current (no-op when it is)
    if old is not None and old.covers == covers:
        return KeywordReport("unchanged", docs=old.n_docs)
    if old is not None and set(old.covers.items()) <= set(covers.items()):
        new_ids = sorted({int(k.rsplit("-", 1)[1]) for k in covers if k not in old.covers})
        touched = _touched_videos(library, new_ids)
        docs = _text_rows(library, touched)
        say(f"extending the keyword index: {len(touched):,} videos, {docs.num_rows:,} documents")
        try:
            meta = extend_keyword_index(docs, dest, covers=covers, delete_video_ids=touched,
                                        tmp_root=library.tmp_dir)
            return KeywordReport("extended", docs=meta.n_docs, added=docs.num_rows, videos_refreshed=len(touched),
                                 seconds=time.perf_counter() - t0)
        except KeywordIndexCorrupt as e:  # a generation file failed its check while extending
            reason = str(e).split(";")[0]
    elif old is not None:
        reason = "text tables were set aside or replaced since it was built"
    docs = _text_rows(library)
    say(f"building the keyword index over {docs.num_rows:,} transcript and screen-text rows")
    meta = build_keyword_index(docs, dest, covers=covers, tmp_root=library.tmp_dir)
    action = "rebuilt" if (reason or rebuild) else "built"
    return KeywordReport(action, docs=meta.n_docs, added=docs.num_rows, seconds=time.perf_counter() - t0, reason=reason)


def _touched_videos(library: Library, shard_ids: list[int]) -> list[str]:
    """Videos with text rows or a text status in ``shard_ids``: their documents are rewritten."""
    with library.connect_catalog() as con:
        rows = con.execute(
            "SELECT video_id FROM transcripts WHERE list_contains(?, shard_id) UNION "
            "SELECT video_id FROM screen_text WHERE list_contains(?, shard_id) UNION "
            "SELECT video_id FROM text_status WHERE list_contains(?, shard_id)", [shard_ids] * 3).fetchall()
    return sorted(str(r[0]) for r in rows)


def keyword_problems(library: Library, m: Manifest) -> list[tuple[str, bool]]:
    """What is wrong with the keyword index, read only: [(message, needs the repair command)].

    A missing or behind index needs ``vidsearch index``; a corrupt one ``doctor --fix`` (or
    ``index --rebuild``).
    """
    from vidsearch.indexer.keyword import KeywordIndex, KeywordIndexCorrupt, KeywordIndexMissing

    covers = keyword_covers(m)
    try:
        idx = KeywordIndex.open(keyword_dir(library), verify=True)
    except KeywordIndexMissing:
        if not has_text_rows(m):
            return []
        return [(f"no keyword index yet ({len(covers)} text table file(s) to index)", False)]
    except KeywordIndexCorrupt as e:
        return [(str(e).split(";")[0], True)]
    assert idx.meta is not None  # opened from disk
    if idx.meta.covers == covers:
        return []
    if set(idx.meta.covers.items()) <= set(covers.items()):
        n = len(set(covers) - set(idx.meta.covers))
        return [(f"keyword index: {n} text table file(s) committed since it was built are not in it", False)]
    return [("keyword index: it covers text tables the manifest no longer lists (stale)", True)]


def open_keyword_index(library: Library, m: Manifest | None = None, *, verify: bool = True) -> Any:
    """The keyword index for a reader (never writes), or None when the library has no text rows.

    Returns:
        A :class:`~vidsearch.indexer.keyword.KeywordIndex`; ``keyword_behind(index, m)`` says
        whether text committed since it was built is missing from it (a running ingest, or one
        killed before its index update: exact text search over the catalog covers that part).

    Raises:
        KeywordIndexMissing: text rows exist but no index was built (``vidsearch index``).
        KeywordIndexCorrupt: ``keyword.json`` or a file fails its checks (``doctor --fix``).
    """
    from vidsearch.indexer.keyword import KeywordIndex, KeywordIndexMissing

    m = m or library.read_manifest()
    try:
        return KeywordIndex.open(keyword_dir(library), verify=verify)
    except KeywordIndexMissing:
        if not has_text_rows(m):
            return None
        raise


def keyword_behind(index: Any, m: Manifest) -> list[int]:
    """Shard ids whose text tables ``index`` does not cover (empty: current). A covered file the
    manifest no longer lists (a shard set aside) makes the index stale, not behind: see
    :func:`keyword_problems`."""
    return sorted({int(k.rsplit("-", 1)[1]) for k in keyword_covers(m) if k not in index.meta.covers})
