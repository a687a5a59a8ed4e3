"""Keyword index over transcript and screen text: tantivy (BM25, phrases, stemming) as a rebuildable cache.

Why tantivy: DuckDB's ``fts`` extension cannot be installed offline, and a hand-written inverted
index would have to re-invent BM25, positions and segment merging. tantivy (the Rust engine
behind Quickwit) ships as a self-contained wheel (``tantivy`` on PyPI).

Documents are :data:`~vidsearch.schemas.text_tables.KEYWORD_DOC_SCHEMA` rows: one per transcript
segment (speech, subtitle) or screen-text row. Fields:

* ``text``: words -> lower case -> ASCII folding -> English stemming (``running`` finds ``run``),
  with positions, so ``"quoted phrases"`` work;
* ``text_ngram``: character trigrams of the normalised text (lower case, punctuation -> space),
  for OCR text, where a misread letter (``0PEN``, ``Sh0p``) loses the exact word but keeps most of
  its trigrams (issue 15; ``bench/keyword_ocr_match.py`` measures it);
* ``key`` (segment_id / text_id), ``video_id``, ``source``, the span and the word timings (stored),
  so a hit becomes a timed moment without a catalog lookup.

On disk (a cache like the FAISS index, with the same integrity rules)::

    index/text/keyword.json      what is current: generation folder, doc count, what it covers
                                 (caller's map, e.g. text table name -> SHA-256), SHA-256 of
                                 every file; replaced atomically (the commit point)
    index/text/gen-000007/       tantivy's files of that generation

A build writes a new generation in a temporary folder, fsyncs it, renames it into place and
then replaces ``keyword.json``; the previous generation is kept (a reader that read the old
``keyword.json`` may still be opening it) and older ones are removed. An update
(:func:`extend_keyword_index`) hard-links the current generation's immutable segment files into
the new folder and adds only the new documents. Readers (:class:`KeywordIndex`) check every
file's SHA-256 before tantivy reads it (a flipped bit would otherwise be searched silently, as
with FAISS) and never write: a corrupt or missing index is :class:`KeywordIndexCorrupt` /
:class:`KeywordIndexMissing` with the rebuild command in the message.

Queries are a stranger's input: capped in length, ``field:`` prefixes neutralised, and parsed
with tantivy's lenient parser, which turns bad syntax into a best-effort query, never an error.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import shutil
import time
import unicodedata
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa  # type: ignore[import-untyped]

from vidsearch.library import atomic_write_bytes, sha256_file
from vidsearch.schemas.snippet import Snippet
from vidsearch.schemas.text_tables import KEYWORD_DOC_SCHEMA, SOURCE_MODALITY, TEXT_SOURCES, conform

_logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_NAME = "keyword.json"
MAX_QUERY_CHARS = 512
MAX_QUERY_TERMS = 64
MAX_VIDEO_FILTER = 100_000
_TEXT_ANALYZER = "vs_text"
_NGRAM_ANALYZER = "vs_ngram"
_LOCK_FILES = frozenset({".tantivy-meta.lock", ".tantivy-writer.lock"})
_GEN_RE = re.compile(r"^gen-(\d{6,})$")
# How the ngram field joins the query (screen text): the exact query, and trigram matching with
# at least this share of the query's trigrams present.
NGRAM_MIN_SHOULD = 0.5
MatchMode = Literal["exact", "ngram", "both"]


class KeywordIndexMissing(FileNotFoundError):
    """No keyword index has been built (``vidsearch index`` builds it)."""


class KeywordIndexCorrupt(RuntimeError):
    """The keyword index's files do not match ``keyword.json``; rebuild it (``vidsearch index --rebuild``)."""


# ----------------------------------------------------------------------------------------------
# Analysis


def _analyzers() -> dict[str, Any]:
    from tantivy import Filter, TextAnalyzerBuilder, Tokenizer

    text = (TextAnalyzerBuilder(Tokenizer.simple()).filter(Filter.remove_long(40)).filter(Filter.lowercase())
            .filter(Filter.ascii_fold()).filter(Filter.stemmer("english")).build())
    ngram = TextAnalyzerBuilder(Tokenizer.ngram(3, 3, False)).filter(Filter.lowercase()).build()
    return {_TEXT_ANALYZER: text, _NGRAM_ANALYZER: ngram}


_ANALYZERS: dict[str, Any] | None = None


def analyzers() -> dict[str, Any]:
    """The two analyzers of the index (built once per process)."""
    global _ANALYZERS
    if _ANALYZERS is None:
        _ANALYZERS = _analyzers()
    return _ANALYZERS


# Characters OCR confuses, folded to one letter in the trigram field only (the exact field keeps
# them): "T0MAT0" and "tomato", "SALE 50%" and "SALE SO%" share their trigrams.
_OCR_FOLD = str.maketrans({"0": "o", "1": "l", "i": "l", "|": "l", "5": "s", "8": "b"})


def ngram_text(text: str) -> str:
    """What the trigram field indexes: NFKD without accents, lower case, OCR-confusable characters
    folded, runs of non-alphanumerics -> one space (padded, so word edges make trigrams)."""
    t = unicodedata.normalize("NFKD", text)
    t = "".join(c for c in t if not unicodedata.combining(c)).lower().translate(_OCR_FOLD)
    return " " + " ".join(re.findall(r"\w+", t)) + " "


def terms(text: str) -> list[str]:
    """Index terms of ``text`` (the ``text`` field's analysis)."""
    return list(analyzers()[_TEXT_ANALYZER].analyze(text))


_CONTENT_ANALYZER: Any = None


def content_terms(text: str) -> list[str]:
    """:func:`terms` of ``text`` without English stop words ("the", "in", "a"...): the words a
    query's matching is judged on (a line sharing only "the" with the query is no match). The
    index keeps stop words (phrases need them); the same stemmer makes the same terms."""
    global _CONTENT_ANALYZER
    if _CONTENT_ANALYZER is None:
        from tantivy import Filter, TextAnalyzerBuilder, Tokenizer

        _CONTENT_ANALYZER = (TextAnalyzerBuilder(Tokenizer.simple()).filter(Filter.remove_long(40))
                             .filter(Filter.lowercase()).filter(Filter.stopword("english"))
                             .filter(Filter.ascii_fold()).filter(Filter.stemmer("english")).build())
    return list(_CONTENT_ANALYZER.analyze(text))


@functools.lru_cache(maxsize=1 << 16)
def _word_terms(word: str) -> tuple[str, ...]:
    """:func:`terms` of one word, cached: marking the matched words of 100 hits analyses thousands."""
    return tuple(analyzers()[_TEXT_ANALYZER].analyze(word))


def trigrams(text: str) -> list[str]:
    """Trigrams of ``text`` (the ``text_ngram`` field's analysis), unique, in order."""
    return list(dict.fromkeys(analyzers()[_NGRAM_ANALYZER].analyze(ngram_text(text))))


def _schema() -> Any:
    from tantivy import SchemaBuilder

    sb = SchemaBuilder()
    sb.add_integer_field("key", stored=True, indexed=True, fast=True)
    sb.add_text_field("video_id", stored=True, tokenizer_name="raw")
    sb.add_text_field("source", stored=True, tokenizer_name="raw")
    sb.add_float_field("start_s", stored=True)
    sb.add_float_field("end_s", stored=True)
    sb.add_text_field("text", stored=True, tokenizer_name=_TEXT_ANALYZER, index_option="position")
    sb.add_text_field("text_ngram", stored=False, tokenizer_name=_NGRAM_ANALYZER, index_option="freq")
    sb.add_bytes_field("words", stored=True)  # JSON [[start_s, end_s, word], ...] or empty
    return sb.build()


def _open_tantivy(path: Path) -> Any:
    import tantivy

    index = tantivy.Index.open(str(path))
    for name, analyzer in analyzers().items():
        index.register_tokenizer(name, analyzer)
    index.reload()
    return index


# ----------------------------------------------------------------------------------------------
# Meta


@dataclass(frozen=True)
class KeywordIndexMeta:
    """Contents of ``keyword.json``."""

    generation: int
    folder: str                      # "gen-000007"
    n_docs: int
    covers: dict[str, str]           # caller's map of what the index holds (e.g. table -> SHA-256)
    files: dict[str, str]            # file name in the folder -> SHA-256
    built_at: float
    format: int = FORMAT_VERSION
    tantivy: str = ""

    def to_json(self) -> bytes:
        return json.dumps({
            "format": self.format, "generation": self.generation, "folder": self.folder, "n_docs": self.n_docs,
            "covers": self.covers, "files": self.files, "built_at": self.built_at, "tantivy": self.tantivy,
        }, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, where: Path) -> KeywordIndexMeta:
        """Parse and check ``keyword.json`` (untrusted: every field's type and shape)."""
        try:
            d = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise KeywordIndexCorrupt(f"{where}: not valid JSON ({e}); {_REBUILD}") from None

        def bad(what: str) -> KeywordIndexCorrupt:
            return KeywordIndexCorrupt(f"{where}: {what}; {_REBUILD}")

        if not isinstance(d, dict):
            raise bad("not a JSON object")
        if d.get("format") != FORMAT_VERSION:
            raise bad(f"format {d.get('format')!r} is not {FORMAT_VERSION}")
        gen, folder, n = d.get("generation"), d.get("folder"), d.get("n_docs")
        if type(gen) is not int or gen < 0:
            raise bad("generation must be a non-negative integer")
        if not isinstance(folder, str) or not _GEN_RE.match(folder):
            raise bad("folder must be gen-NNNNNN")
        if type(n) is not int or n < 0:
            raise bad("n_docs must be a non-negative integer")
        covers, files = d.get("covers"), d.get("files")
        if not isinstance(covers, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in covers.items()):
            raise bad("covers must map strings to strings")
        if not isinstance(files, dict) or not files:
            raise bad("files must be a non-empty object")
        for name, digest in files.items():
            if (not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", name) or name.startswith("..")
                    or not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest)):
                raise bad(f"bad file entry {str(name)[:80]!r}")
        built = d.get("built_at")
        if not isinstance(built, int | float) or isinstance(built, bool):
            raise bad("built_at must be a number")
        return cls(generation=gen, folder=folder, n_docs=n, covers=dict(covers), files=dict(files),
                   built_at=float(built), tantivy=str(d.get("tantivy", "")))


_REBUILD = "rebuild it with `vidsearch index --rebuild` (the keyword index is a cache of the text tables)"


def read_meta(dest: Path) -> KeywordIndexMeta:
    """``dest/keyword.json``, checked. Raises KeywordIndexMissing / KeywordIndexCorrupt."""
    p = Path(dest) / META_NAME
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise KeywordIndexMissing(f"no keyword index at {dest} (build it with `vidsearch index`)") from None
    if len(data) > 64 << 20:
        raise KeywordIndexCorrupt(f"{p}: larger than 64 MiB; {_REBUILD}")
    return KeywordIndexMeta.from_json(data, p)


# ----------------------------------------------------------------------------------------------
# Building


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _words_blob(words: list[dict[str, Any]] | None) -> bytes:
    if not words:
        return b""
    return json.dumps([[round(w["start_s"], 3), round(w["end_s"], 3), w["word"]] for w in words],
                      ensure_ascii=False, separators=(",", ":")).encode()


def _add_docs(writer: Any, docs: pa.Table, batch: int = 20_000) -> int:
    from tantivy import Document

    n = 0
    for rb in docs.to_batches(max_chunksize=batch):
        for r in rb.to_pylist():
            writer.add_document(Document(
                key=int(r["key"]), video_id=r["video_id"], source=r["source"], start_s=float(r["start_s"]),
                end_s=float(r["end_s"]), text=r["text"], text_ngram=ngram_text(r["text"]),
                words=_words_blob(r["words"]),
            ))
            n += 1
    return n


def _hash_files(folder: Path, reuse: Mapping[str, tuple[int, str]] | None = None) -> dict[str, str]:
    """SHA-256 of every tantivy file; files hard-linked from the previous generation (same inode) reuse its hash."""
    out = {}
    for p in sorted(folder.iterdir()):
        if p.name in _LOCK_FILES or not p.is_file():
            continue
        known = (reuse or {}).get(p.name)
        out[p.name] = known[1] if known is not None and known[0] == p.stat().st_ino else sha256_file(p)
    return out


def _publish(dest: Path, staged: Path, meta_fields: dict[str, Any], keep_previous: str | None) -> KeywordIndexMeta:
    """Rename the staged folder into place, then write keyword.json (the commit point), then clean up."""
    import tantivy

    gen = meta_fields["generation"]
    folder = f"gen-{gen:06d}"
    final = dest / folder
    if final.exists():  # left by a build killed after its rename but before keyword.json: never current
        shutil.rmtree(final)
    _fsync_tree(staged)
    os.rename(staged, final)
    meta = KeywordIndexMeta(folder=folder, built_at=time.time(),
                            tantivy=str(getattr(tantivy, "__version__", "")), **meta_fields)
    atomic_write_bytes(dest / META_NAME, meta.to_json())
    for p in dest.iterdir():
        m = _GEN_RE.match(p.name)
        if m and p.name not in (folder, keep_previous):
            shutil.rmtree(p, ignore_errors=True)
    return meta


def _staging(dest: Path, tmp_root: Path | None) -> Path:
    root = Path(tmp_root) if tmp_root is not None else dest / ".tmp"
    root.mkdir(parents=True, exist_ok=True)
    staged = root / f"kw-{uuid.uuid4().hex}"
    staged.mkdir()
    return staged


def _writer(index: Any, threads: int | None) -> Any:
    n = threads or max(1, min(4, os.cpu_count() or 1))
    return index.writer(heap_size=64_000_000 * n, num_threads=n)


def build_keyword_index(docs: pa.Table, dest: str | os.PathLike[str], *, covers: Mapping[str, str] | None = None,
                        tmp_root: str | os.PathLike[str] | None = None, threads: int | None = None) -> KeywordIndexMeta:
    """Build a new keyword index generation from all of ``docs`` and make it current.

    Args:
        docs: :data:`KEYWORD_DOC_SCHEMA` rows (``text_tables.keyword_docs`` makes them).
        dest: the index folder (``LIBRARY/index/text``); created if missing.
        covers: what the index holds, recorded for staleness checks (e.g. text table -> SHA-256).
        tmp_root: where to stage the build (``LIBRARY/.tmp``); must be on the same filesystem.
        threads: indexing threads (default min(4, cores)).

    Raises:
        ValueError: ``docs`` does not fit the schema (names the column).
    """
    import tantivy

    docs = conform(docs, KEYWORD_DOC_SCHEMA, "keyword documents")
    _check_sources(docs)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        current = read_meta(dest)
        prev: str | None = current.folder
        gen = max(current.generation, _next_free_generation(dest) - 1) + 1
    except (KeywordIndexMissing, KeywordIndexCorrupt):
        prev, gen = None, _next_free_generation(dest)
    staged = _staging(dest, Path(tmp_root) if tmp_root is not None else None)
    try:
        index = tantivy.Index(_schema(), path=str(staged), reuse=False)
        for name, analyzer in analyzers().items():
            index.register_tokenizer(name, analyzer)
        writer = _writer(index, threads)
        n = _add_docs(writer, docs)
        writer.commit()
        writer.wait_merging_threads()
        del writer, index
        files = _hash_files(staged)
        return _publish(dest, staged, {"generation": gen, "n_docs": n, "covers": dict(covers or {}),
                                       "files": files}, keep_previous=prev)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _next_free_generation(dest: Path) -> int:
    gens = [int(m.group(1)) for p in dest.iterdir() if (m := _GEN_RE.match(p.name))]
    return max(gens, default=0) + 1


def _check_sources(docs: pa.Table) -> None:
    bad = set(docs.column("source").unique().to_pylist()) - set(TEXT_SOURCES)
    if bad:
        raise ValueError(f"keyword documents: unknown source(s) {sorted(map(str, bad))}")


def extend_keyword_index(docs: pa.Table, dest: str | os.PathLike[str], *, covers: Mapping[str, str],
                         delete_video_ids: Iterable[str] = (), tmp_root: str | os.PathLike[str] | None = None,
                         threads: int | None = None) -> KeywordIndexMeta:
    """A new generation = the current one + ``docs`` - documents of ``delete_video_ids``.

    The current generation's segment files are hard-linked (tantivy never modifies a segment
    file), so the cost is that of the new documents, not of the library. Without a usable current
    index this is a full build of ``docs`` (the caller should then pass every document).

    Args:
        docs: documents to add (:data:`KEYWORD_DOC_SCHEMA`).
        dest: the index folder.
        covers: the complete new coverage map (replaces the old one).
        delete_video_ids: videos whose documents are removed first (replaced or re-transcribed).
        tmp_root: staging folder on the same filesystem.
        threads: indexing threads.
    """
    import tantivy

    dest = Path(dest)
    try:
        old = read_meta(dest)
        _verify_files(dest / old.folder, old)
    except (KeywordIndexMissing, KeywordIndexCorrupt) as e:
        _logger.warning("keyword index not extendable (%s); building from the given documents", e)
        return build_keyword_index(docs, dest, covers=covers, tmp_root=tmp_root, threads=threads)
    docs = conform(docs, KEYWORD_DOC_SCHEMA, "keyword documents")
    _check_sources(docs)
    staged = _staging(dest, Path(tmp_root) if tmp_root is not None else None)
    try:
        src = dest / old.folder
        inodes: dict[str, tuple[int, str]] = {}
        for name, digest in old.files.items():
            try:
                os.link(src / name, staged / name)
            except OSError:
                shutil.copy2(src / name, staged / name)  # a filesystem without hard links
            inodes[name] = ((staged / name).stat().st_ino, digest)
        index = tantivy.Index(_schema(), path=str(staged), reuse=True)
        for name, analyzer in analyzers().items():
            index.register_tokenizer(name, analyzer)
        writer = _writer(index, threads)
        for vid in sorted(set(delete_video_ids)):
            writer.delete_documents_by_term("video_id", vid)
        _add_docs(writer, docs)
        writer.commit()
        writer.wait_merging_threads()
        # Merges that ended after the commit leave the merged-away segment files behind: a second
        # writer's garbage collection drops them before the files are hashed.
        gc = _writer(index, 1)
        gc.garbage_collect_files()
        gc.wait_merging_threads()
        del writer, gc
        index.reload()
        n = int(index.searcher().num_docs)
        del index
        files = _hash_files(staged, inodes)
        return _publish(dest, staged, {"generation": old.generation + 1, "n_docs": n, "covers": dict(covers),
                                       "files": files}, keep_previous=old.folder)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _verify_files(folder: Path, meta: KeywordIndexMeta) -> None:
    for name, digest in meta.files.items():
        p = folder / name
        try:
            ok = sha256_file(p) == digest
        except FileNotFoundError:
            raise KeywordIndexCorrupt(f"{p} is missing; {_REBUILD}") from None
        if not ok:
            raise KeywordIndexCorrupt(f"{p} does not match its SHA-256 in {META_NAME}; {_REBUILD}")


# ----------------------------------------------------------------------------------------------
# Searching


@dataclass(frozen=True)
class KeywordHit:
    """One matching text row. ``score`` is BM25 (comparable only with other keyword hits of one query).

    ``start_s``/``end_s`` span the matched words where word timings exist (speech), else the
    segment or screen-text row; ``segment_start_s``/``segment_end_s`` are the whole row.
    """

    key: int
    video_id: str
    source: str
    score: float
    start_s: float
    end_s: float
    segment_start_s: float
    segment_end_s: float
    snippet: Snippet
    matched_terms: tuple[str, ...] = ()

    @property
    def modality(self) -> str:
        return SOURCE_MODALITY[self.source]


@dataclass
class _ParsedQuery:
    text: str                     # capped, neutralised
    positive_terms: list[str] = field(default_factory=list)   # analysed terms to highlight
    positive_words: list[str] = field(default_factory=list)   # the same words as typed (fuzzy marking)
    content_terms: list[str] = field(default_factory=list)    # positive terms without stop words
    plain: bool = True            # no quotes, +/- or boolean operators: a bag of words


_NEG_RE = re.compile(r'(?:(?<=\s)|^)-(?:"[^"]*"|\S+)')


def sanitize_query(query: str) -> _ParsedQuery:
    """Cap and neutralise a user query; the analysed terms that should be highlighted.

    ``field:`` prefixes are turned into plain words (the fields are ours, not the user's to
    address), control characters into spaces; quotes, ``+``/``-`` and ``~`` keep their meaning.
    """
    q = "".join(" " if (unicodedata.category(c)[0] == "C") else c for c in query[:MAX_QUERY_CHARS])
    q = q.replace(":", " ").replace("^", " ").replace("\\", " ")
    words = q.split()
    if len(words) > MAX_QUERY_TERMS:
        q = " ".join(words[:MAX_QUERY_TERMS])
    if q.count('"') % 2:
        q = q.replace('"', " ")  # an unclosed quote would swallow the rest as a phrase
    positive = _NEG_RE.sub(" ", q)
    positive = re.sub(r"\b(AND|OR|NOT|TO|IN)\b", " ", positive)
    plain = '"' not in q and not re.search(r"(?:^|\s)[+-]\S|\b(AND|OR|NOT)\b", q)
    return _ParsedQuery(text=q.strip(), positive_terms=list(dict.fromkeys(terms(positive))),
                        positive_words=list(dict.fromkeys(re.findall(r"\w+", positive.lower()))),
                        content_terms=list(dict.fromkeys(content_terms(positive))), plain=bool(plain))


def _filter(query: Any) -> Any:
    """``query`` as a pure filter: it must match, and adds nothing to the score (a term-set clause
    adds 1 and a term clause its own BM25 otherwise, so a hit's score would depend on the filters)."""
    from tantivy import Query

    return Query.const_score_query(query, 0.0)


def _word_spans(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"\w+", text)]


@functools.lru_cache(maxsize=1 << 16)
def _trigram_set(word: str) -> frozenset[str]:
    return frozenset(trigrams(word))


def _trigram_sim(a: str, b: str) -> float:
    ga, gb = _trigram_set(a), _trigram_set(b)
    return len(ga & gb) / len(ga | gb) if ga and gb else 0.0


class KeywordIndex:
    """A read-only keyword index generation. Open with :meth:`open`; never writes to the library."""

    def __init__(self, dest: Path | None, meta: KeywordIndexMeta | None, index: Any) -> None:
        self.dest = dest
        self.meta = meta  # None: built in memory (from_docs), covering what its caller gave it
        self._index = index
        self._searcher = index.searcher()
        self._schema = index.schema

    @classmethod
    def from_docs(cls, docs: pa.Table, *, threads: int | None = None) -> KeywordIndex:
        """An index of ``docs`` built in memory (tantivy's RAM directory): nothing is written
        anywhere. What a reader searches when the library's index is missing, corrupt or stale
        (read commands never repair it), and over rows committed after the index was built.

        Raises:
            ValueError: ``docs`` does not fit :data:`KEYWORD_DOC_SCHEMA`.
        """
        import tantivy

        docs = conform(docs, KEYWORD_DOC_SCHEMA, "keyword documents")
        _check_sources(docs)
        index = tantivy.Index(_schema())  # no path: in memory
        for name, analyzer in analyzers().items():
            index.register_tokenizer(name, analyzer)
        writer = _writer(index, threads or 1)
        _add_docs(writer, docs)
        writer.commit()
        writer.wait_merging_threads()
        del writer
        index.reload()
        return cls(None, None, index)

    @classmethod
    def open(cls, dest: str | os.PathLike[str], *, verify: bool = True) -> KeywordIndex:
        """Open the current generation under ``dest`` (``LIBRARY/index/text``).

        Args:
            dest: the index folder.
            verify: check every file's SHA-256 first (a flipped bit is otherwise searched silently).

        Raises:
            KeywordIndexMissing: nothing built yet.
            KeywordIndexCorrupt: ``keyword.json`` is bad, a file is missing or does not match.
        """
        dest = Path(dest)
        meta = read_meta(dest)
        folder = dest / meta.folder
        if not folder.is_dir() or folder.is_symlink():
            raise KeywordIndexCorrupt(f"{folder} is missing; {_REBUILD}")
        if verify:
            _verify_files(folder, meta)
        try:
            index = _open_tantivy(folder)
        except Exception as e:  # noqa: BLE001 - tantivy reports every damaged file as ValueError/OSError
            raise KeywordIndexCorrupt(f"{folder} does not open ({type(e).__name__}: {str(e)[:200]}); {_REBUILD}") from e
        return cls(dest, meta, index)

    @property
    def n_docs(self) -> int:
        return int(self._searcher.num_docs)

    def is_current(self, covers: Mapping[str, str]) -> bool:
        """True when the index was built from exactly ``covers`` (else it is stale: extend or rebuild)."""
        return self.meta is not None and dict(covers) == self.meta.covers

    def _exact_query(self, parsed: _ParsedQuery, min_match: float | None) -> Any:
        """The stemmed-words half: tantivy's lenient parser (OR of the words, phrases, +/-); with
        ``min_match`` and a plain query, its content words with at least that share matching."""
        from tantivy import Occur, Query

        if min_match is None or not parsed.plain or not parsed.content_terms:
            return self._index.parse_query_lenient(parsed.text, ["text"])[0]
        words = parsed.content_terms
        need = max(1, math.ceil(min_match * len(words) - 1e-9))
        should = [(Occur.Should, Query.term_query(self._schema, "text", t)) for t in words]
        return Query.boolean_query(should, minimum_number_should_match=need) if len(should) > 1 else should[0][1]

    def _query(self, parsed: _ParsedQuery, mode: MatchMode, min_match: float | None = None) -> Any:
        from tantivy import Occur, Query

        if not parsed.text:
            return None
        exact = None
        if mode in ("exact", "both"):
            exact = self._exact_query(parsed, min_match)
        if mode == "exact":
            return exact
        negatives = [m.group(0)[1:].strip('"') for m in _NEG_RE.finditer(parsed.text)]
        grams = trigrams(_NEG_RE.sub(" ", parsed.text).replace('"', " "))
        if not grams:
            return exact
        should = [(Occur.Should, Query.term_query(self._schema, "text_ngram", g)) for g in grams]
        need = max(1, math.ceil(NGRAM_MIN_SHOULD * len(grams)))
        clauses = [(Occur.Must, Query.boolean_query(should, minimum_number_should_match=need))]
        if negatives:  # "-word" excludes on the exact field whichever way the rest matched
            neg, _errors = self._index.parse_query_lenient(" ".join(negatives), ["text"])
            clauses.append((Occur.MustNot, neg))
        if exact is None:
            return Query.boolean_query(clauses)
        # "both": trigrams for screen text, exact words for speech and subtitles. OCR misreads
        # letters, so trigrams find more screen rows and rank them better (bench/keyword_ocr_match.py:
        # recall@1 0.977 vs 0.833 exact, 0.933 with exact boosted over trigrams); speech and
        # subtitle text is spelled right, and trigram overlap there would loosen phrases and "-word".
        # BM25 values of the two halves are not compared by fusion (it ranks per modality).
        clauses.append((Occur.Must, _filter(Query.term_query(self._schema, "source", "screen"))))
        spoken = Query.boolean_query([(Occur.Must, exact),
                                      (Occur.MustNot, Query.term_query(self._schema, "source", "screen"))])
        return Query.boolean_query([(Occur.Should, spoken), (Occur.Should, Query.boolean_query(clauses))])

    def search(self, query: str, k: int = 100, *, modalities: Sequence[str] | None = None,
               sources: Sequence[str] | None = None, video_ids: Iterable[str] | None = None,
               exclude_video_ids: Iterable[str] | None = None,
               mode: MatchMode | Literal["auto"] = "auto", min_match: float | None = None) -> list[KeywordHit]:
        """Top-``k`` text rows for ``query`` by BM25.

        Args:
            query: user text; ``"phrases"``, ``+must`` and ``-not`` are understood; never raises on syntax.
            k: hits to return.
            modalities: only rows answering these (``speech`` = speech + subtitle, ``screen``).
            sources: only these sources (narrower than ``modalities``).
            video_ids: only these videos (e.g. the result of a metadata filter).
            exclude_video_ids: never these videos (e.g. those answered from newer rows elsewhere).
            mode: ``exact`` (stemmed words), ``ngram`` (trigrams), ``both``; ``auto`` = exact,
                plus trigrams when screen text is searched (OCR misreads letters).
            min_match: for a plain query (no quotes, ``+``/``-`` or operators), the share of its
                words other than stop words that a row must contain (``vidsearch search``: all of
                them, ``SearchCfg.keyword_min_match``); None: any word (tantivy's OR), stop words
                included. Marked words and the
                span of a hit then leave stop words out too.
        """
        from tantivy import Occur, Query

        if k <= 0:
            return []
        allowed = set(TEXT_SOURCES)
        if modalities is not None:
            allowed &= {s for s in TEXT_SOURCES if SOURCE_MODALITY[s] in set(modalities)}
        if sources is not None:
            allowed &= set(sources)
        if not allowed:
            return []
        if mode == "auto":
            mode = "both" if "screen" in allowed else "exact"
        parsed = sanitize_query(query)
        if min_match is not None and parsed.plain and parsed.content_terms:
            parsed.positive_terms = parsed.content_terms  # "the" is neither marked nor timed
        q = self._query(parsed, mode, min_match)
        if q is None:
            return []
        must = [(Occur.Must, q)]
        if allowed != set(TEXT_SOURCES):
            must.append((Occur.Must, _filter(Query.term_set_query(self._schema, "source", sorted(allowed)))))
        if video_ids is not None:
            vids = sorted(set(video_ids))
            if not vids:
                return []
            if len(vids) > MAX_VIDEO_FILTER:
                raise ValueError(f"video filter of {len(vids)} ids is over {MAX_VIDEO_FILTER}; search unfiltered")
            must.append((Occur.Must, _filter(Query.term_set_query(self._schema, "video_id", vids))))
        if exclude_video_ids is not None and (gone := sorted(set(exclude_video_ids))):
            must.append((Occur.MustNot, Query.term_set_query(self._schema, "video_id", gone)))
        final = must[0][1] if len(must) == 1 else Query.boolean_query(must)
        result = self._searcher.search(final, min(k, 10_000), count=False)
        hits = []
        memo: dict[tuple[str, bool], bool] = {}  # word -> matched, shared by this query's hits
        for score, addr in result.hits:
            d = self._searcher.doc(addr).to_dict()
            # fuzzy marking only where trigrams matched: screen text (or an explicit ngram search)
            fuzzy = mode == "ngram" or (mode == "both" and d["source"][0] == "screen")
            hits.append(self._hit(d, float(score), parsed, fuzzy, memo))
        return hits

    def _hit(self, d: dict[str, list[Any]], score: float, parsed: _ParsedQuery, fuzzy: bool,
             memo: dict[tuple[str, bool], bool]) -> KeywordHit:
        text: str = d["text"][0]
        qterms = set(parsed.positive_terms)
        words_blob: bytes = d.get("words", [b""])[0] if d.get("words") else b""
        seg_start, seg_end = float(d["start_s"][0]), float(d["end_s"][0])
        spans = _word_spans(text)

        def matches(word: str) -> bool:
            m = memo.get((word, fuzzy))
            if m is None:
                m = any(t in qterms for t in _word_terms(word.strip())) or (
                    fuzzy and any(_trigram_sim(word, w) >= 0.5 for w in parsed.positive_words))
                memo[(word, fuzzy)] = m
            return m

        marks = [(a, b) for a, b in spans if matches(text[a:b])]
        start, end = seg_start, seg_end
        if words_blob:
            try:
                words = json.loads(words_blob)
                timed = [(float(w[0]), float(w[1])) for w in words if matches(str(w[2]))]
            except (ValueError, TypeError, IndexError):
                timed = []  # damaged stored words: the whole segment is the span
            if timed:
                start, end = min(t[0] for t in timed), max(t[1] for t in timed)
        matched = tuple(dict.fromkeys(t for a, b in marks for t in _word_terms(text[a:b]) if t in qterms))
        return KeywordHit(key=int(d["key"][0]), video_id=d["video_id"][0], source=d["source"][0], score=score,
                          start_s=start, end_s=end, segment_start_s=seg_start, segment_end_s=seg_end,
                          snippet=Snippet(text, tuple(marks)), matched_terms=matched)
