"""Searching what is said and what is written on screen beside the pictures (issues 14, 15: search).

One small library of real parts, built like ingest builds one: clip shards whose embeddings are
placed around the tiny test model's own embedding of the query (so the pictures' ranking is
known), ``transcripts`` (a speech segment with word timings, subtitle cues) and ``screen_text``
rows (as the OCR merge writes them: OCR ingest is another engineer's part) committed with the
clips, the FAISS and keyword indexes built by ``update_index``.

Checked: ``--in speech`` finds the spoken word at its word time and the subtitle at its cue,
``--in screen`` finds OCR text despite misread letters, fusion ranks a moment found by pictures
and words above moments found by one, every filter applies to the text modalities, the table
marks the matched words (escaping control characters), JSON and history keep modalities, scores
and snippets (an old history file stays readable), and a missing, corrupt, stale or behind
keyword index is answered exactly with a warning, changing no file of the library.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
from conftest import make_shard_tables, synthetic_model

from vidsearch.cli import main
from vidsearch.indexer import update_index
from vidsearch.library import Library
from vidsearch.schemas.text_tables import (
    ScreenTextRow,
    TranscriptSegment,
    Word,
    screen_text_table,
    segment_id,
    text_row_id,
    transcripts_table,
)
from vidsearch.search.searcher import Searcher
from vidsearch.search.types import Filters

QUERY = "sandcastle"
SPEECH = "The children built a large sandcastle"   # words every 0.5 s from 5.0 s: "sandcastle" 7.5-7.9
SUBTITLE = "Sandcastle! A sandcastle, said the lighthouse keeper"
ESCAPED = "Beware \x1b[2J of the tide"


def _video(i: int, path: str, clips: int, status: str = "done") -> dict[str, Any]:
    return {"video_id": f"{i:032x}", "path": path, "path_bytes": path.encode(), "size_bytes": 1000 + i,
            "mtime": dt.datetime(2024, 1, 1 + i, tzinfo=dt.UTC), "duration_s": clips * 4.0, "fps": 25.0,
            "frame_count": clips * 100, "width": 640, "height": 360, "codec": "h264",
            "container": "mov,mp4,m4a,3gp,3g2,mj2", "rotation": 0, "coverage": 1.0, "num_clips": clips,
            "status": status, "stage": None, "error_type": None, "error_message": None, "attempts": 1,
            "run_id": "run-1", "ingested_at": dt.datetime(2025, 1, 1, tzinfo=dt.UTC)}


def _words(text: str, start: float) -> tuple[Word, ...]:
    return tuple(Word(start + 0.5 * i, start + 0.5 * i + 0.4, " " + w, 0.9) for i, w in enumerate(text.split()))


def _subtitle(video_id: str, i: int, start: float, end: float, text: str) -> TranscriptSegment:
    return TranscriptSegment(video_id, segment_id(video_id, "subtitle", "sidecar:x.srt", i, start, end, None), i,
                             start, end, text, "subtitle", "sidecar:x.srt")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The library (read-only for the tests: copy it to change it) and its video ids by name."""
    from vidsearch.models import create_model

    model = create_model("internvideo2-tiny")
    q = np.asarray(model.encode_text([QUERY]).detach().numpy()[0], np.float32)
    q /= np.linalg.norm(q)
    videos = [_video(0, "/media/beach/talk.mp4", 3), _video(1, "/media/sea/subs.mp4", 2),
              _video(2, "/media/shop/sign.mp4", 3), _video(3, "/media/old/gone.mp4", 2, "replaced"),
              _video(4, "/media/beach/castle.mp4", 2)]
    counts = [v["num_clips"] for v in videos]
    rng = np.random.default_rng(5)
    vecs = []
    for n in counts:  # unrelated pictures: orthogonal to the query (cosine 0)
        v = rng.standard_normal((n, q.size))
        v -= (v @ q)[:, None] * q
        vecs.append((v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32))
    vecs[4][0] = q                                   # castle.mp4 0-4 s: the best picture (cosine 1)
    x = 0.9 * q + 0.3 * vecs[0][1]
    vecs[0][1] = x / np.linalg.norm(x)               # talk.mp4 4-8 s: the second (cosine 0.95)
    ids = {name: v["video_id"] for name, v in zip(("talk", "subs", "sign", "gone", "castle"), videos, strict=True)}
    t, s = ids["talk"], ids["subs"]
    segs = [TranscriptSegment(t, segment_id(t, "speech", "asr", 0, 5.0, 8.0, "m"), 0, 5.0, 8.0, SPEECH, "speech",
                              "asr", "en", "m", _words(SPEECH, 5.0)),
            _subtitle(s, 0, 1.0, 2.5, SUBTITLE), _subtitle(s, 1, 5.0, 6.0, ESCAPED),
            _subtitle(ids["gone"], 0, 1.0, 2.5, "sandcastle sandcastle sandcastle")]   # a replaced video
    g = ids["sign"]
    screen = [ScreenTextRow(g, text_row_id(g, "screen", 8000, 10000, "grand opening sale", "ocr"), 8.0, 10.0,
                            "GRAND 0PENING SALE", 0.9, (0.1, 0.1, 0.6, 0.2), "ocr")]
    root = tmp_path_factory.mktemp("modalities") / "lib"
    lib = Library(root)
    with lib.lock():
        lib.init(synthetic_model(q.size, model.fingerprint, "internvideo2-tiny"))
        clips, vids, clip_ids = make_shard_tables(videos, counts, vecs, model.fingerprint, q.size)
        lib.commit(clips, vids, run_id="run-1", tables={"transcripts": transcripts_table(segs, "run-1"),
                                                        "screen_text": screen_text_table(screen, "run-1")})
        assert update_index(lib).keyword["action"] == "built"
    return {"root": root, "ids": ids, "model": model, "clips": clip_ids}


@pytest.fixture
def lib(built: dict[str, Any], tmp_path: Path) -> Path:
    """A copy of the library this test may change."""
    shutil.copytree(built["root"], tmp_path / "lib")
    return tmp_path / "lib"


def search_json(capsys: pytest.CaptureFixture[str], root: Path, *args: str) -> dict[str, Any]:
    assert main(["-q", "search", *args, "--library", str(root), "--json", "--no-history"]) == 0, capsys.readouterr()
    return json.loads(capsys.readouterr().out)


def names(doc: dict[str, Any]) -> list[str]:
    return [Path(h["path"]).stem for h in doc["hits"]]


def test_speech_hit_spans_its_words_and_a_subtitle_its_cue(built: dict[str, Any],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    doc = search_json(capsys, built["root"], QUERY, "--in", "speech")
    assert doc["modalities"] == ["speech"] and doc["score_kind"] == "bm25"
    assert names(doc) == ["subs", "talk"]  # two matches beat one; the replaced video's lines never show
    subs, talk = doc["hits"]
    # The spoken word, not its 3 s segment; the subtitle's cue.
    assert (talk["start_s"], talk["end_s"], talk["play_s"]) == (7.5, 7.9, 7.5)
    assert (subs["start_s"], subs["end_s"]) == (1.0, 2.5)
    assert talk["modalities"] == ["speech"] and set(talk["scores"]) == {"speech"}
    assert talk["score"] == talk["scores"]["speech"] > 0
    sn = talk["snippet"]
    assert sn["source"] == "speech" and sn["text"] == SPEECH
    assert [sn["text"][a:b] for a, b in sn["marks"]] == ["sandcastle"]
    assert subs["snippet"]["source"] == "subtitle"
    assert [subs["snippet"]["text"][a:b] for a, b in subs["snippet"]["marks"]] == ["Sandcastle", "sandcastle"]
    # The clip a text hit lies in (talk.mp4 4-8 s), as the clip of the moment.
    assert talk["clip_id"] == str(built["clips"][1]) and talk["merged_clip_ids"] == [talk["clip_id"]]


def test_screen_text_is_found_despite_ocr_misreads(built: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    doc = search_json(capsys, built["root"], "grand opening", "--in", "screen")
    assert names(doc) == ["sign"]
    h = doc["hits"][0]
    assert (h["start_s"], h["end_s"], h["modalities"]) == (8.0, 10.0, ["screen"])
    assert h["snippet"]["source"] == "screen"
    assert [h["snippet"]["text"][a:b] for a, b in h["snippet"]["marks"]] == ["GRAND", "0PENING"]
    # Speech and subtitles do not answer --in screen, nor screen text --in speech.
    assert search_json(capsys, built["root"], "grand opening", "--in", "speech")["hits"] == []


def test_a_moment_found_by_pictures_and_words_ranks_above_one_found_by_either(
        built: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    # --min-score keeps the pictures' list to the two real matches (castle 1.0, talk 0.95): the
    # tiny test model has no calibrated threshold, and near-zero cosines would each add a rank.
    pictures = search_json(capsys, built["root"], QUERY, "--in", "visual", "--min-score", "0.5")
    assert names(pictures) == ["castle", "talk"] and pictures["score_kind"] == "cosine"
    words = search_json(capsys, built["root"], QUERY, "--in", "speech")
    assert names(words) == ["subs", "talk"]
    doc = search_json(capsys, built["root"], QUERY, "--min-score", "0.5")  # default: every modality it has
    assert doc["modalities"] == ["visual", "speech", "screen"] and doc["score_kind"] == "rrf"
    top = doc["hits"][0]
    # talk.mp4 is 2nd in both lists (2/62) and beats castle.mp4 and subs.mp4, 1st in one (1/61).
    assert Path(top["path"]).stem == "talk" and top["modalities"] == ["visual", "speech"]
    assert top["score"] == pytest.approx(2 / 62, abs=1e-6)
    assert top["scores"]["visual"] == pytest.approx(pictures["hits"][1]["score"], abs=1e-6)
    assert top["scores"]["speech"] == pytest.approx(words["hits"][1]["score"], abs=1e-6)
    # The picture's moment (4-8 s) holds the spoken word; playback starts at the word.
    assert (top["start_s"], top["end_s"], top["play_s"]) == (4.0, 8.0, 7.5)
    assert top["clip_id"] == pictures["hits"][1]["clip_id"] and top["snippet"]["source"] == "speech"
    assert sorted(names(doc)[1:]) == ["castle", "subs"]
    assert [h["score"] for h in doc["hits"][1:]] == pytest.approx([1 / 61] * 2, abs=1e-6)


@pytest.mark.parametrize("filters, expected", [
    ({}, ["subs", "talk"]),
    ({"folder": "sea"}, ["subs"]),
    ({"path_glob": "*/beach/*"}, ["talk"]),
    ({"from_s": 5.0}, ["talk"]),             # the subtitle (1-2.5 s) is before 5 s
    ({"to_s": 3.0}, ["subs"]),               # the spoken word (7.5 s) is after 3 s
    ({"from_s": 6.0, "to_s": 7.0}, []),      # the segment spans it, its matched word does not
    ({"min_duration_s": 10.0}, ["talk"]),    # talk.mp4 is 12 s, subs.mp4 8 s
    ({"date_to": dt.date(2024, 1, 1)}, ["talk"]),
    ({"where": "videos.path LIKE '%sea%'"}, ["subs"]),
    ({"where": "clips.start_s >= 4"}, ["talk"]),  # the subtitle lies in the clip 0-4 s only
])
def test_filters_apply_to_the_text_modalities(built: dict[str, Any], filters: dict[str, Any],
                                              expected: list[str]) -> None:
    with Searcher(Library(built["root"]), model=built["model"], record_history=False) as s:
        r = s.search(QUERY, k=10, filters=Filters(**filters), modalities=("speech",))
    assert [Path(h.path).stem for h in r.hits] == expected


def test_table_marks_the_matched_words_and_escapes_control_characters(built: dict[str, Any],
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "search", "tide", "--in", "speech", "--library", str(built["root"]), "--no-history"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    header, row, detail = out.splitlines()[:3]
    assert header.split()[:3] == ["rank", "score", "in"] and "speech" in row and "/media/sea/subs.mp4" in row
    assert detail.strip().startswith("speech ") and "subtitle: Beware \\x1b[2J of the «tide»" in detail
    # A pictures-only search prints the table it always did (no modality column, no second line).
    assert main(["-q", "search", QUERY, "--in", "visual", "--library", str(built["root"]), "--no-history",
                 "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "score", "start-end", "clip_id", "path"] and len(lines) == 3


def test_csv_and_parquet_carry_modalities_scores_and_snippet(built: dict[str, Any], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import csv
    import io

    import pyarrow.parquet as pq

    out = tmp_path / "hits.parquet"
    assert main(["-q", "search", QUERY, "--min-score", "0.5", "--library", str(built["root"]), "--no-history",
                 "--csv", "--parquet", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0]["modalities"] == "visual+speech" and float(rows[0]["play_s"]) == 7.5
    assert rows[0]["visual_score"] and rows[0]["speech_score"] and rows[0]["screen_score"] == ""
    assert rows[0]["snippet"] == SPEECH
    t = pq.read_table(out).to_pylist()
    assert t[0]["modalities"] == ["visual", "speech"] and t[0]["snippet"] == SPEECH and t[0]["screen_score"] is None


def test_history_keeps_modalities_and_snippets_and_old_files_stay_readable(lib: Path) -> None:
    from vidsearch.search.history import load_search
    from vidsearch.search.sandbox import open_sandbox

    library = Library(lib)
    # A history.duckdb of a vidsearch before modalities: its tables lack the new columns.
    with duckdb.connect(str(lib / "history.duckdb")) as con:
        con.execute("CREATE TABLE searches (search_id VARCHAR PRIMARY KEY, searched_at TIMESTAMPTZ NOT NULL, "
                    "query VARCHAR, like_clip_id BIGINT, k INTEGER NOT NULL, offset_ INTEGER NOT NULL, "
                    "per_video INTEGER, rerank INTEGER NOT NULL, filters VARCHAR NOT NULL, strategy VARCHAR NOT NULL, "
                    "n_results INTEGER NOT NULL, latency_ms DOUBLE NOT NULL, timings VARCHAR NOT NULL, "
                    "index_kind VARCHAR, library_generation BIGINT NOT NULL, model VARCHAR, model_fingerprint VARCHAR)")
        con.execute("CREATE TABLE search_results (search_id VARCHAR NOT NULL, rank INTEGER NOT NULL, "
                    "score DOUBLE NOT NULL, clip_id BIGINT NOT NULL, video_id VARCHAR NOT NULL, path VARCHAR NOT NULL, "
                    "start_s DOUBLE NOT NULL, end_s DOUBLE NOT NULL, merged_clip_ids BIGINT[] NOT NULL, "
                    "rerank_score DOUBLE)")
        con.execute("INSERT INTO searches VALUES ('aaaa0000', '2025-01-01', 'old', NULL, 5, 0, NULL, 0, '{}', 'ann', "
                    "1, 1.0, '{}', 'flat', 1, 'internvideo2-tiny', 'x')")
        con.execute("INSERT INTO search_results VALUES ('aaaa0000', 1, 0.5, 7, 'v', '/a.mp4', 0, 4, [7], NULL)")
    with open_sandbox(library) as con:
        old = load_search(con, "aaaa")
    assert old.hits[0].modalities == ("visual",) and old.hits[0].snippet is None and old.hits[0].score == 0.5
    with Searcher(library, model=_tiny(), record_history=True) as s:
        r = s.search(QUERY, k=3, min_score=0.5)
    with open_sandbox(library) as con:
        saved = load_search(con, r.search_id or "")
        again = load_search(con, "aaaa")  # the upgraded file still reads the old search
        row = con.execute("SELECT r.modalities, visual_score, speech_score, snippet, snippet_source, play_s, "
                          "score_kind FROM search_results r JOIN searches USING (search_id) "
                          "WHERE search_id = ? AND rank = 1",
                          [r.search_id]).fetchone()
    assert again.hits == old.hits
    assert [(h.modalities, h.snippet, h.play_s, h.scores) for h in saved.hits] == \
        [(h.modalities, h.snippet, h.play_s, h.scores) for h in r.hits]
    assert row[0] == ["visual", "speech"] and row[2] > 0 and row[3] == SPEECH and row[4:] == ("speech", 7.5, "rrf")


def _tiny() -> Any:
    from vidsearch.models import create_model

    return create_model("internvideo2-tiny")


def test_modality_choice_errors_are_one_line(built: dict[str, Any], synthetic_library: Any,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    root = str(built["root"])
    assert main(["search", QUERY, "--in", "smell", "--library", root]) == 1  # a usage error
    assert "unknown modality 'smell'" in capsys.readouterr().err
    clip = str(built["clips"][0])
    assert main(["search", "--like", clip, "--in", "speech", "--library", root, "--no-history"]) == 1
    err = capsys.readouterr().err
    assert "searches the pictures only" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    # A library without transcripts: --in speech is an error; the default searches the pictures.
    other = str(synthetic_library.lib.root)
    assert main(["search", "x", "--in", "speech", "--library", other, "--no-history"]) == 1
    assert "no speech transcripts or subtitles to search" in capsys.readouterr().err
    with Searcher(synthetic_library.lib, model=None, record_history=False) as s:
        assert s.modalities() == ("visual",)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _damage(lib: Path, how: str) -> str:
    """Damage the keyword index (or commit text it lacks); the words the warning must contain."""
    text = lib / "index" / "text"
    meta = json.loads((text / "keyword.json").read_text())
    if how == "missing":
        shutil.rmtree(text)
        return "no keyword index yet"
    if how == "corrupt":
        f = max((text / meta["folder"]).iterdir(), key=lambda p: p.stat().st_size)
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
        return "does not match its SHA-256"
    if how == "stale":  # it claims a text table the manifest does not list
        meta["covers"]["transcripts-000099"] = "0" * 64
        (text / "keyword.json").write_text(json.dumps(meta))
        return "stale"
    # behind: a later commit (an ingest between its commit and its index update) adds a subtitle
    library = Library(lib)
    vid = f"{1:032x}"
    empty_clips, empty_videos, _ = make_shard_tables([], [], [], "x", 32)
    with library.lock():
        library.commit(empty_clips, empty_videos, run_id="run-2", tables={"transcripts": transcripts_table(
            [_subtitle(vid, 5, 6.0, 7.0, "Another sandcastle sandcastle sandcastle")], "run-2")})
    return "not in the keyword index yet"


@pytest.mark.parametrize("how", ["missing", "corrupt", "stale", "behind"])
def test_a_damaged_or_lagging_keyword_index_is_answered_exactly_and_nothing_written(
        lib: Path, how: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = search_json(capsys, lib, QUERY, "--in", "speech")
    words = _damage(lib, how)
    digests = _digests(lib)
    doc = search_json(capsys, lib, QUERY, "--in", "speech")
    assert _digests(lib) == digests  # a read command writes nothing (the index is repaired by writers)
    warning = next(w for w in doc["warnings"] if "keyword index" in w)
    assert words in warning
    fix = "vidsearch index --library" if how in ("missing", "behind") else "vidsearch doctor --fix --library"
    assert fix in warning
    if how == "behind":  # the new line is found (its video's rows searched exactly), the rest as before
        assert doc["strategy"] == "keyword+exact-new"
        assert {(Path(h["path"]).stem, h["start_s"]) for h in doc["hits"]} == {("subs", 1.0), ("subs", 6.0),
                                                                              ("talk", 7.5)}
    else:  # the same hits, the same BM25 scores: the catalog's rows indexed in memory
        assert doc["strategy"] == "keyword-exact"
        key = ("path", "start_s", "end_s", "snippet")
        assert [[h[k] for k in key] for h in doc["hits"]] == [[h[k] for k in key] for h in before["hits"]]
        assert [h["score"] for h in doc["hits"]] == pytest.approx([h["score"] for h in before["hits"]], rel=1e-5)


def test_json_hits_read_back_as_hits(built: dict[str, Any]) -> None:
    """What a running server answers is read back into the same hits (vidsearch.search.remote)."""
    from vidsearch.search.output import hit_from_json, hit_json

    with Searcher(Library(built["root"]), model=built["model"], record_history=False) as s:
        r = s.search(QUERY, k=5, min_score=0.5)
    assert r.hits[0].snippet is not None and r.hits[0].play_s == 7.5
    back = [hit_from_json(json.loads(json.dumps(hit_json(h)))) for h in r.hits]
    key = ("rank", "clip_id", "video_id", "path", "start_s", "end_s", "clip_ids", "modalities", "snippet", "play_s")
    assert [[getattr(h, k) for k in key] for h in back] == [[getattr(h, k) for k in key] for h in r.hits]
    with pytest.raises(ValueError, match="marks"):
        hit_from_json({**hit_json(r.hits[0]), "snippet": {"text": "ab", "marks": [[1, 9]], "source": "speech"}})
