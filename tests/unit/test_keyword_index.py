"""Keyword index (tantivy): BM25 with phrases and stemming, filters, hostile queries, integrity, updates."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pytest

from vidsearch.indexer.keyword import (
    KeywordIndex,
    KeywordIndexCorrupt,
    KeywordIndexMissing,
    build_keyword_index,
    extend_keyword_index,
    read_meta,
)
from vidsearch.schemas.text_tables import KEYWORD_DOC_SCHEMA

SENT = "Please remember to water the tomato plants"


def _words(text: str, start: float, step: float = 0.4) -> list[dict]:
    return [dict(start_s=start + i * step, end_s=start + i * step + 0.3, word=" " + w, prob=0.9)
            for i, w in enumerate(text.split())]


def _docs() -> pa.Table:
    rows = [
        dict(key=1, video_id="a", source="speech", start_s=1.0, end_s=4.0, text=SENT, words=_words(SENT, 1.0)),
        dict(key=2, video_id="b", source="subtitle", start_s=5.0, end_s=7.0, text="The tomato is red", words=None),
        dict(key=3, video_id="c", source="screen", start_s=2.0, end_s=3.0, text="GRAND 0PENING T0MAT0 SALE",
             words=None),
        dict(key=4, video_id="d", source="speech", start_s=0.0, end_s=2.0, text="Running dogs in the park",
             words=_words("Running dogs in the park", 0.0)),
    ]
    return pa.Table.from_pylist(rows, schema=KEYWORD_DOC_SCHEMA)


@pytest.fixture()
def index_dir(tmp_path: Path) -> Path:
    build_keyword_index(_docs(), tmp_path / "text", covers={"transcripts-1": "aa"}, tmp_root=tmp_path / "tmp")
    return tmp_path / "text"


def _ids(hits: list) -> list[str]:
    return [h.video_id for h in hits]


def test_bm25_stemming_phrases_and_word_spans(index_dir: Path) -> None:
    ki = KeywordIndex.open(index_dir)
    assert ki.n_docs == 4 and ki.meta.n_docs == 4
    hits = ki.search("tomato plant", 10, modalities=["speech"])
    assert _ids(hits) == ["a", "b"]  # both words beat one; "plant" finds "plants"
    a = hits[0]
    assert (a.source, a.modality, a.key) == ("speech", "speech", 1)
    # the hit spans the matched words (tomato at 3.0, plants ends at 3.7), not the segment 1..4 s
    assert (a.start_s, a.end_s, a.segment_start_s, a.segment_end_s) == (3.0, 3.7, 1.0, 4.0)
    assert a.snippet.render() == "Please remember to water the «tomato» «plants»"
    assert a.snippet.html() == "Please remember to water the <mark>tomato</mark> <mark>plants</mark>"
    assert a.matched_terms == ("tomato", "plant")
    assert _ids(ki.search('"water the tomato"', 10)) == ["a"]  # the phrase, not any of its words
    assert _ids(ki.search("run dog", 10)) == ["d"]
    assert _ids(ki.search("tomato -red", 10, modalities=["speech"])) == ["a"]


def test_filters(index_dir: Path) -> None:
    ki = KeywordIndex.open(index_dir)
    assert _ids(ki.search("tomato", 10, sources=["subtitle"])) == ["b"]
    assert _ids(ki.search("tomato", 10, video_ids=["b", "zzz"])) == ["b"]
    assert ki.search("tomato", 10, video_ids=[]) == []
    assert ki.search("tomato", 10, modalities=["visual"]) == []
    assert ki.search("tomato", 0) == []


def test_screen_text_matches_ocr_misreads(index_dir: Path) -> None:
    ki = KeywordIndex.open(index_dir)
    hits = ki.search("tomato opening", 10, modalities=["screen"])
    assert _ids(hits) == ["c"]
    assert hits[0].snippet.render() == "GRAND «0PENING» «T0MAT0» SALE"
    assert ki.search("tomato opening", 10, modalities=["screen"], mode="exact") == []
    # trigrams are for screen text only: a misspelt query does not fuzzily hit speech rows
    assert "a" not in _ids(ki.search("tomatto", 10))


@pytest.mark.parametrize("query", [
    '"unclosed phrase', "((((", "AND OR NOT", "video_id:a", "key:1", "text:[a TO z]", "\x00\x1b[2J", "*", "~~~",
    "tomato^1000", "x" * 10_000, " ".join(["tomato"] * 500), "", "   ", "-tomato", r"\\\"", "ünïcödé 日本語",
])
def test_hostile_queries_never_raise(index_dir: Path, query: str) -> None:
    hits = KeywordIndex.open(index_dir).search(query, 10)
    assert isinstance(hits, list)
    if query in ("video_id:a", "key:1"):
        assert hits == []  # field prefixes are neutralised: no field is addressable by users


def test_reader_never_writes(index_dir: Path) -> None:
    def snapshot() -> dict[str, tuple[int, int]]:
        return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in index_dir.rglob("*")}

    before = snapshot()
    ki = KeywordIndex.open(index_dir)
    ki.search("tomato", 10)
    ki.search('"water the"', 10, modalities=["screen"])
    assert snapshot() == before


def test_missing_and_corrupt(index_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(KeywordIndexMissing, match="vidsearch index"):
        KeywordIndex.open(tmp_path / "nothing")
    meta = read_meta(index_dir)
    victim = max((index_dir / meta.folder).iterdir(), key=lambda p: p.stat().st_size if p.is_file() else -1)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    with pytest.raises(KeywordIndexCorrupt, match="does not match its SHA-256.*--rebuild"):
        KeywordIndex.open(index_dir)
    victim.unlink()
    with pytest.raises(KeywordIndexCorrupt, match="is missing"):
        KeywordIndex.open(index_dir)


@pytest.mark.parametrize(("field", "value"), [
    ("folder", "../../etc"), ("folder", "gen-000001/../../x"), ("n_docs", True), ("generation", -1),
    ("files", {"../x": "0" * 64}), ("files", {"a": "nothex"}), ("covers", {"a": 1}), ("format", 99),
])
def test_bad_meta_is_refused(index_dir: Path, field: str, value: object) -> None:
    p = index_dir / "keyword.json"
    d = json.loads(p.read_text())
    d[field] = value
    p.write_text(json.dumps(d))
    with pytest.raises(KeywordIndexCorrupt, match="keyword.json"):
        KeywordIndex.open(index_dir)


def test_extend_adds_deletes_and_keeps_the_previous_generation(index_dir: Path, tmp_path: Path) -> None:
    old = KeywordIndex.open(index_dir)
    assert old.is_current({"transcripts-1": "aa"}) and not old.is_current({"transcripts-1": "aa", "t2": "bb"})
    new_docs = pa.Table.from_pylist([dict(key=9, video_id="e", source="subtitle", start_s=0.0, end_s=1.0,
                                          text="tomato soup recipe", words=None)], schema=KEYWORD_DOC_SCHEMA)
    meta = extend_keyword_index(new_docs, index_dir, covers={"transcripts-1": "aa", "t2": "bb"},
                                delete_video_ids=["b"], tmp_root=tmp_path / "tmp")
    assert (meta.generation, meta.n_docs) == (2, 4)
    assert sorted(p.name for p in index_dir.iterdir() if p.name.startswith("gen-")) == ["gen-000001", "gen-000002"]
    new = KeywordIndex.open(index_dir)
    assert new.is_current({"transcripts-1": "aa", "t2": "bb"})
    assert sorted(_ids(new.search("tomato", 10))) == ["a", "c", "e"]
    # a searcher opened on the old generation keeps answering after the swap
    assert sorted(_ids(old.search("tomato", 10))) == ["a", "b", "c"]
    # unchanged segment files were hard-linked, not copied
    m1 = json.loads((index_dir / "keyword.json").read_text())
    shared = set(m1["files"]) & {p.name for p in (index_dir / "gen-000001").iterdir()}
    assert any((index_dir / "gen-000002" / n).stat().st_ino == (index_dir / "gen-000001" / n).stat().st_ino
               for n in shared)
    # a third generation removes the first
    extend_keyword_index(new_docs.slice(0, 0), index_dir, covers={"x": "y"}, tmp_root=tmp_path / "tmp")
    assert sorted(p.name for p in index_dir.iterdir() if p.name.startswith("gen-")) == ["gen-000002", "gen-000003"]
    assert not any((tmp_path / "tmp").iterdir())


def test_build_refuses_bad_documents(tmp_path: Path) -> None:
    bad = _docs().set_column(2, "source", pa.array(["speech", "radio", "screen", "speech"]))
    with pytest.raises(ValueError, match="unknown source"):
        build_keyword_index(bad, tmp_path / "t")
    with pytest.raises(ValueError, match="missing column"):
        build_keyword_index(_docs().drop_columns(["text"]), tmp_path / "t")
    assert not (tmp_path / "t" / "keyword.json").exists()


def test_rebuild_over_a_corrupt_index(index_dir: Path) -> None:
    (index_dir / "keyword.json").write_text("{not json")
    meta = build_keyword_index(_docs(), index_dir)
    assert meta.generation == 2  # never reuses a generation folder that may exist
    assert KeywordIndex.open(index_dir).n_docs == 4
    assert os.path.isdir(index_dir / "gen-000002")


def test_min_match_needs_most_of_the_words_and_ignores_stop_words(index_dir: Path) -> None:
    """What `vidsearch search` asks (SearchCfg.keyword_min_match): a row with one word of a
    two-word query, or only the stop words of a long one, is no match; marks skip stop words."""
    ki = KeywordIndex.open(index_dir)
    # "b" has "tomato" only (screen rows match by trigrams, half of them, as measured for OCR text)
    assert _ids(ki.search("tomato plant", 10, min_match=2 / 3, modalities=["speech"])) == ["a"]
    assert sorted(_ids(ki.search("the tomato", 10, min_match=2 / 3, modalities=["speech"]))) == ["a", "b"]
    assert ki.search("in the", 10, min_match=2 / 3) != []  # only stop words: they are the query
    hit = ki.search("the plants", 10, min_match=2 / 3)[0]
    assert hit.snippet.render() == "Please remember to water the tomato «plants»"
    assert (hit.start_s, hit.end_s) == (3.4, 3.7)  # "plants", not from "the" (2.6 s)
    assert ki.search("the plants", 10)[0].start_s == 2.6  # without min_match "the" is a matched word
    # Operators keep tantivy's parser: a phrase is a phrase whatever min_match says.
    assert _ids(ki.search('"water the tomato"', 10, min_match=2 / 3)) == ["a"]


def test_filters_add_nothing_to_the_score_and_videos_can_be_excluded(index_dir: Path) -> None:
    ki = KeywordIndex.open(index_dir)
    plain = {h.video_id: h.score for h in ki.search("tomato", 10)}
    narrowed = {h.video_id: h.score for h in ki.search("tomato", 10, sources=["speech", "subtitle"],
                                                       video_ids=["a", "b"])}
    assert narrowed == pytest.approx({v: plain[v] for v in ("a", "b")})
    assert _ids(ki.search("tomato", 10, exclude_video_ids=["a"], modalities=["speech"])) == ["b"]


def test_an_index_built_in_memory_answers_as_the_one_on_disk(index_dir: Path, tmp_path: Path) -> None:
    before = sorted(p.name for p in tmp_path.rglob("*"))
    mem = KeywordIndex.from_docs(_docs())
    disk = KeywordIndex.open(index_dir)
    assert mem.meta is None and mem.n_docs == 4 and not mem.is_current({})
    for q in ("tomato plant", "tomato opening", '"water the tomato"', "run dog"):
        a, b = mem.search(q, 10), disk.search(q, 10)
        assert [(h.video_id, h.start_s, h.end_s, h.snippet) for h in a] == \
            [(h.video_id, h.start_s, h.end_s, h.snippet) for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b])
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written
    with pytest.raises(ValueError, match="missing column"):
        KeywordIndex.from_docs(_docs().drop_columns(["text"]))
