"""The text side of a search: what is said (speech, subtitles) and what is written on screen.

One :class:`TextSide` per searcher generation answers the ``speech`` and ``screen`` modalities of
``vidsearch search --in`` from the library's keyword index (:mod:`vidsearch.indexer.keyword`,
tantivy), and turns each matching text row into a :class:`TextHit` on the clips' timeline: the
span of the matched words (speech; Whisper's word times, trimmed by voice activity at ingest) or
of the row (subtitle cue, screen text), the clips it lies in, and a snippet with the matched
words marked.

Filters apply as they do to clips (:class:`~vidsearch.search.cliptable.ClipTable`): the per-video
part (status, path, folder, durations, dates) as a set of videos, the clip-level part (``--from``,
``--to``, ``--where``) as the clips a hit must overlap; a hit of a video that is not searchable
(replaced, failed) is never returned, as its clips are not.

Read commands never write (docs/RELIABILITY.md R1), and the keyword index is a cache like the
FAISS index, so:

* missing, corrupt (a file fails its SHA-256) or stale (it covers text tables the manifest no
  longer lists): the catalog's text rows are indexed *in memory* (tantivy's RAM directory, never
  written) and searched exactly as the index would be, with a warning naming the command that
  repairs it;
* behind (text committed since it was built: a running ingest, one killed before its index
  update): the index answers for the videos those commits do not touch, an in-memory index of the
  touched videos' current rows for the rest. BM25 of the two parts use their own term statistics;
  their hits are merged by score, an approximation limited to the videos the new commits touched.

tantivy is imported only when a text modality is searched: a pictures-only search stays as fast
as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]

from vidsearch.library import Library
from vidsearch.schemas.config import SearchCfg
from vidsearch.schemas.manifest import Manifest
from vidsearch.search.cliptable import ClipTable
from vidsearch.search.sandbox import run_query
from vidsearch.search.types import Filters, TextSnippet

_logger = logging.getLogger(__name__)

TEXT_MODALITIES = ("speech", "screen")
# A snippet longer than this is cut to a window around its first marked word (a subtitle cue may
# hold 2,000 characters, a speech segment a minute of words).
SNIPPET_CHARS = 200
# A text search asks the index for this many rows at most (tantivy's cap in KeywordIndex.search).
MAX_FETCH = 10_000


@dataclass(frozen=True)
class TextHit:
    """One matching text row as a timed hit of its video."""

    modality: str                 # speech | screen
    source: str                   # speech | subtitle | screen
    video_id: str
    start_s: float                # the matched words (speech with word times), else the row; ms
    end_s: float
    score: float                  # BM25, comparable only with this query's other text hits
    snippet: TextSnippet
    clip_id: int                  # the clip the hit starts in
    clip_ids: tuple[int, ...]     # the clips it overlaps, in time order


def cut_snippet(text: str, marks: Sequence[tuple[int, int]], max_chars: int = SNIPPET_CHARS,
                source: str = "speech") -> TextSnippet:
    """``text`` with its marks, cut to about ``max_chars`` around the first mark ("…" where cut)."""
    marks = tuple((int(a), int(b)) for a, b in marks)
    if len(text) <= max_chars:
        return TextSnippet(text, marks, source)
    first = marks[0][0] if marks else 0
    start = max(0, first - max_chars // 3)
    while 0 < start < first and not text[start - 1].isspace():  # start at a word
        start += 1
    end = min(len(text), start + max_chars)
    while start < end < len(text) and not text[end].isspace() and end > (marks[0][1] if marks else start):
        end -= 1  # end at a word, never inside the first mark
    pre, post = ("…" if start > 0 else ""), ("…" if end < len(text) else "")
    shift = len(pre) - start
    kept = tuple((a + shift, b + shift) for a, b in marks if a >= start and b <= end)
    return TextSnippet(pre + text[start:end] + post, kept, source)


class TextSide:
    """Keyword search of one library generation (see the module docstring); never writes.

    Args:
        library: the library.
        manifest: the generation's manifest.
        con: the generation's locked read-only sandbox (its ``transcripts`` / ``screen_text``).
        clips: the generation's clip table (filters, clips of a video).
        cfg: search settings (``keyword_min_match``).
    """

    def __init__(self, library: Library, manifest: Manifest, con: Any, clips: ClipTable, cfg: SearchCfg) -> None:
        self.library = library
        self.manifest = manifest
        self.con = con
        self.clips = clips
        self.cfg = cfg
        t = run_query(con, "SELECT (SELECT count(*) FROM transcripts) AS speech, "
                           "(SELECT count(*) FROM screen_text) AS screen", timeout_s=None).to_pylist()[0]
        self.rows: dict[str, int] = {"speech": int(t["speech"]), "screen": int(t["screen"])}
        self._opened = False
        self._index: Any = None          # the library's keyword index (None: not usable)
        self._extra: Any = None          # in-memory index of rows the library's index lacks
        self._exclude: list[str] = []    # videos the library's index must not answer for
        self.strategy = "keyword"
        self.warnings: list[str] = []
        self.open_ms = 0.0

    def available(self) -> tuple[str, ...]:
        """The text modalities this generation has rows for (``speech``: transcripts or subtitles)."""
        return tuple(m for m in TEXT_MODALITIES if self.rows[m] > 0)

    # ---- opening -----------------------------------------------------------------------------
    def _open(self) -> None:
        """Open (and verify) the keyword index, or index the catalog's rows in memory."""
        if self._opened:
            return
        from vidsearch.indexer.keyword import KeywordIndexCorrupt, KeywordIndexMissing
        from vidsearch.indexer.text import keyword_behind, keyword_covers, open_keyword_index

        t0 = time.perf_counter()
        root = self.library.root
        fix = f"Fix: `vidsearch doctor --fix --library {root}` (or `vidsearch index --rebuild --library {root}`)"
        problem = None
        index = None
        try:
            index = open_keyword_index(self.library, self.manifest, verify=True)
            if index is None:
                problem = ("the manifest lists no text tables although the catalog has text rows",
                           f"Fix: `vidsearch doctor --fix --library {root}`")
        except KeywordIndexMissing:
            problem = ("the library has no keyword index yet", f"Build it: `vidsearch index --library {root}`")
        except KeywordIndexCorrupt as e:
            problem = (f"the keyword index is damaged ({str(e).split(';')[0]})", fix)
        if index is not None:
            covers = keyword_covers(self.manifest)
            if any(covers.get(key) != digest for key, digest in index.meta.covers.items()):
                index, problem = None, ("the keyword index covers text tables the manifest no longer lists "
                                        "(stale)", fix)
        if index is None:
            assert problem is not None
            n = self.rows["speech"] + self.rows["screen"]
            self._extra = self._memory_index(None)
            self.strategy = "keyword-exact"
            self.warnings.append(f"{problem[0]}; speech and screen text searched exactly over the catalog's "
                                 f"{n:,} text rows instead (indexed in memory: slower). {problem[1]}")
        else:
            self._index = index
            behind = keyword_behind(index, self.manifest)
            if behind:
                self._exclude = self._touched_videos(behind)
                self._extra = self._memory_index(self._exclude) if self._exclude else None
                self.strategy = "keyword+exact-new"
                self.warnings.append(
                    f"text of {len(self._exclude)} video(s) in {len(behind)} commit(s) is not in the keyword index "
                    f"yet; searched exactly (run `vidsearch index --library {root}`)")
        for w in self.warnings:
            _logger.warning("%s", w)
        self.open_ms = (time.perf_counter() - t0) * 1e3
        self._opened = True

    def _touched_videos(self, shard_ids: list[int]) -> list[str]:
        """Videos with text rows or a text status in ``shard_ids`` (bound list): their documents in
        the library's index may be out of date (a newer status replaces older rows)."""
        t = run_query(self.con, "SELECT DISTINCT video_id FROM (SELECT video_id, shard_id FROM transcripts "
                                "UNION ALL SELECT video_id, shard_id FROM screen_text UNION ALL "
                                "SELECT video_id, shard_id FROM text_status) WHERE list_contains(?, shard_id) "
                                "ORDER BY video_id", [[int(s) for s in shard_ids]], timeout_s=None)
        return [str(v) for v in t.column(0).to_pylist()]

    def _memory_index(self, video_ids: list[str] | None) -> Any:
        """An in-memory keyword index of the catalog's current text rows (of ``video_ids`` only)."""
        from vidsearch.indexer.keyword import KeywordIndex
        from vidsearch.schemas.text_tables import SCREEN_TEXT_SCHEMA, TRANSCRIPT_SCHEMA, keyword_docs

        where = "" if video_ids is None else " WHERE list_contains(?, video_id)"
        params = None if video_ids is None else [list(video_ids)]
        tables: dict[str, pa.Table] = {}
        for name, schema in (("transcripts", TRANSCRIPT_SCHEMA), ("screen_text", SCREEN_TEXT_SCHEMA)):
            tables[name] = run_query(self.con, f"SELECT {', '.join(schema.names)} FROM {name}{where}", params,
                                     timeout_s=None)
        return KeywordIndex.from_docs(keyword_docs(transcripts=tables["transcripts"],
                                                   screen_text=tables["screen_text"]))

    # ---- searching ---------------------------------------------------------------------------
    def search(self, query: str, modalities: Sequence[str], filters: Filters, depth: int,
               clip_mask: np.ndarray | None) -> list[TextHit]:
        """The best ``depth`` text hits of ``query`` in ``modalities`` that pass ``filters``.

        Args:
            query: the user's text (phrases, ``+``/``-`` understood; a plain query needs
                ``SearchCfg.keyword_min_match`` of its words).
            modalities: ``speech`` and/or ``screen``.
            filters: the search's filters (already checked).
            depth: hits wanted.
            clip_mask: the clips matching the clip-level filters (``--from``/``--to``/``--where``)
                over clip positions, None without such filters: a hit must overlap one of them.
        """
        self._open()
        mods = [m for m in modalities if m in TEXT_MODALITIES]
        if not mods or depth <= 0:
            return []
        vmask = self.clips.video_mask(filters)
        video_ids = None
        if not filters.video_part().is_empty():
            codes = np.flatnonzero(vmask[:-1])
            if len(codes) == 0:
                return []
            if len(codes) <= 100_000:  # KeywordIndex.MAX_VIDEO_FILTER; past it, filtered below
                video_ids = [self.clips.video_ids[c] for c in codes.tolist()]
        kw = {"modalities": mods, "video_ids": video_ids, "min_match": self.cfg.keyword_min_match}
        fetch = min(max(2 * depth, 50), MAX_FETCH)
        while True:
            raw: list[Any] = []
            exhausted = True
            for index, exclude in ((self._index, self._exclude), (self._extra, None)):
                if index is None:
                    continue
                got = index.search(query, fetch, exclude_video_ids=exclude, **kw)
                exhausted &= len(got) < fetch
                raw += got
            raw.sort(key=lambda h: (-h.score, h.video_id, h.start_s, h.key))
            hits = [t for h in raw if (t := self._hit(h, vmask, filters, clip_mask)) is not None]
            if len(hits) >= depth or exhausted or fetch >= MAX_FETCH:
                return hits[:depth]
            fetch = min(fetch * 4, MAX_FETCH)

    def _hit(self, h: Any, vmask: np.ndarray, f: Filters, clip_mask: np.ndarray | None) -> TextHit | None:
        """``h`` (a KeywordHit) as a hit on its video's clips, or None when the filters leave it out."""
        c = self.clips
        code = c.code_of(h.video_id)
        if code < 0 or not vmask[code]:
            return None  # not searchable (replaced, failed) or outside the per-video filters
        a, b = round(float(h.start_s), 3), round(float(h.end_s), 3)
        if f.from_s is not None and not (b > f.from_s or a >= f.from_s):
            return None
        if f.to_s is not None and not a < f.to_s:
            return None
        pos = c.video_positions(code)
        if clip_mask is not None:
            pos = pos[clip_mask[pos]]
        st, en = c.start_s[pos], c.end_s[pos]
        over = (st < b) & (en > a) if b > a else (st <= a) & (a < en)
        sel = pos[over]
        if len(sel) == 0:
            if clip_mask is not None or len(pos) == 0:
                return None  # no clip that passes --from/--to/--where holds it
            # Text past the last clip (a subtitle running over the end) or between clips: the
            # nearest clip stands for it, as `--video --at` does.
            gap = np.maximum(np.maximum(st - b, a - en), 0.0)
            sel = pos[[int(np.argmin(gap))]]
        order = np.lexsort((c.ids[sel], c.start_s[sel]))
        sel = sel[order]
        inside = [p for p in sel.tolist() if c.start_s[p] <= a < c.end_s[p]]
        best = inside[0] if inside else int(sel[0])
        snip = cut_snippet(h.snippet.text, h.snippet.marks, source=h.source)
        return TextHit(modality=h.modality, source=h.source, video_id=h.video_id, start_s=a, end_s=b,
                       score=float(h.score), snippet=snip, clip_id=int(c.ids[best]),
                       clip_ids=tuple(int(x) for x in c.ids[sel]))
