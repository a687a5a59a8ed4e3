"""`vidsearch search` end to end: text via the tiny model, outputs, history, model refusal."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import SyntheticLibrary

from vidsearch.cli import main
from vidsearch.indexer import update_index


@pytest.fixture(scope="module")
def tiny_fingerprint() -> str:
    from vidsearch.models import create_model

    return create_model("internvideo2-tiny").fingerprint


@pytest.fixture
def tiny_library(synthetic_library_factory, tiny_fingerprint: str) -> SyntheticLibrary:  # type: ignore[no-untyped-def]
    s = synthetic_library_factory(600, fingerprint=tiny_fingerprint, model_name="internvideo2-tiny", seed=11)
    with s.lib.lock():
        update_index(s.lib)
    return s


def test_text_query_json_and_history(tiny_library: SyntheticLibrary, capsys: pytest.CaptureFixture) -> None:
    lib = str(tiny_library.lib.root)
    assert main(["search", "dog playing in snow", "--library", lib, "-k", "5", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)  # stdout is pure JSON; logs went to stderr
    assert len(doc["hits"]) == 5 and [h["rank"] for h in doc["hits"]] == [1, 2, 3, 4, 5]
    scores = [h["score"] for h in doc["hits"]]
    assert scores == sorted(scores, reverse=True)
    h = doc["hits"][0]
    assert h["start"].count(":") == 2 and h["end_s"] > h["start_s"] and h["clip_id"] in h["merged_clip_ids"]
    assert "load" in doc["timings_ms"] and "encode" in doc["timings_ms"]  # model load apart from encoding
    with duckdb.connect(str(tiny_library.lib.root / "history.duckdb"), read_only=True) as con:
        assert con.execute("SELECT query, n_results FROM searches").fetchall() == [("dog playing in snow", 5)]
        assert con.execute("SELECT count(*) FROM search_results WHERE search_id = ?",
                           [doc["search_id"]]).fetchone() == (5,)
    # The history is open to SQL.
    assert main(["sql", "SELECT s.query, count(*) AS n FROM searches s JOIN search_results r USING (search_id) "
                 "GROUP BY 1", "--library", lib, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"query": "dog playing in snow", "n": 5}]


def test_outputs_csv_parquet(tiny_library: SyntheticLibrary, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lib = str(tiny_library.lib.root)
    out = tmp_path / "hits.parquet"
    assert main(["search", "a cat", "--library", lib, "-k", "3", "--csv", "--parquet", str(out),
                 "--no-history"]) == 0
    text = capsys.readouterr().out
    lines = text.strip().split("\n")
    assert lines[0].startswith("rank,score") and len(lines) == 4 and "\r" not in text
    t = pq.read_table(out)
    assert t.num_rows == 3 and t.column("rank").to_pylist() == [1, 2, 3]
    assert t.schema.field("clip_id").type == "int64"  # exact in Parquet; strings only in JSON
    assert main(["search", "a cat", "--library", lib, "-k", "1", "--parquet", str(tmp_path)]) == 1
    assert "directory" in capsys.readouterr().err
    assert not (tiny_library.lib.root / "history.duckdb").exists()


def test_open_needs_a_player(tiny_library: SyntheticLibrary, tmp_path: Path, capsys: pytest.CaptureFixture,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    lib = str(tiny_library.lib.root)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))  # neither mpv nor ffplay
    for how in ([], ["mpv"], ["ffplay"]):
        assert main(["search", "a cat", "--library", lib, "--no-history", "--open", *how]) == 1
        err = capsys.readouterr().err
        assert "no video player found" in err and "Traceback" not in err
    player = bin_dir / "ffplay"
    player.write_text("#!/bin/sh\nexit 0\n")
    player.chmod(0o755)
    assert main(["search", "a cat", "--library", lib, "-k", "2", "--open", "--no-history"]) == 0
    text = capsys.readouterr().out
    assert text.count("ffplay -ss 00:00:") == 2 and "rank" in text.splitlines()[0]


def test_like_and_video_at(tiny_library: SyntheticLibrary, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lib = str(tiny_library.lib.root)
    cid = str(tiny_library.clip_ids[3])
    assert main(["search", "--like", cid, "--library", lib, "-k", "3", "--json", "--no-history"]) == 0
    doc = json.loads(capsys.readouterr().out)
    # Ids are strings in JSON (jq and JavaScript keep 53 bits of a number).
    assert doc["like_clip_id"] == cid and cid not in [c for h in doc["hits"] for c in h["merged_clip_ids"]]
    assert all(isinstance(c, str) for h in doc["hits"] for c in [h["clip_id"], *h["merged_clip_ids"]])
    assert {int(h["clip_id"]) for h in doc["hits"]} <= {int(c) for c in tiny_library.clip_ids}
    assert main(["search", "--like", "123", "--library", lib]) == 1
    assert "not in" in capsys.readouterr().err
    assert main(["search", "--like", "0", "--library", lib]) == 1  # 0 is never a clip id (as in the web API)
    assert "not a clip id" in capsys.readouterr().err
    assert main(["search", "--library", lib]) == 1  # no query at all

    # --video FILE --at T: a file of the library found by its content fingerprint.
    from conftest import make_shard_tables

    from vidsearch.schemas.ids import video_fingerprint

    video = tmp_path / "ten_seconds.mp4"
    video.write_bytes(np.random.default_rng(3).bytes(50_000))
    s = tiny_library
    row = {**s.videos[0], "video_id": video_fingerprint(video), "path": str(video),
           "path_bytes": str(video).encode(), "num_clips": 3, "duration_s": 10.0}
    rng = np.random.default_rng(4)
    vecs = rng.standard_normal((3, s.dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    m = s.lib.read_manifest()
    assert m.model is not None
    clips, vids, new_ids = make_shard_tables([row], [3], [vecs], m.model.fingerprint, s.dim)
    with s.lib.lock():
        s.lib.commit(clips, vids, run_id="run-2")
    assert main(["search", "--video", str(video), "--at", "5", "--library", lib, "--json", "--no-history"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["like_clip_id"] == str(new_ids[1]) and not any("past the end" in w for w in doc["warnings"])
    # Past the end of a 10 s video: the last clip is used, and the result says so.
    assert main(["search", "--video", str(video), "--at", "99", "--library", lib, "--json", "--no-history"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["like_clip_id"] == str(new_ids[2])
    assert any("00:01:39.000 is past the end of" in w and "(00:00:10.000)" in w for w in doc["warnings"])
    assert main(["search", "--video", str(video), "--at", "99", "--library", lib, "--no-history"]) == 0
    assert "warning: 00:01:39.000 is past the end" in capsys.readouterr().err


def test_min_score_says_no_good_match(tiny_library: SyntheticLibrary, capsys: pytest.CaptureFixture) -> None:
    lib = str(tiny_library.lib.root)
    assert main(["search", "a cat", "--library", lib, "-k", "3", "--json", "--no-history"]) == 0
    doc = json.loads(capsys.readouterr().out)
    best = doc["hits"][0]["score"]
    assert doc["min_score"] is None and not doc["no_good_match"]  # the tiny test model has no min_score
    # The test model is random: every result says so.
    assert any("TEST MODEL" in w for w in doc["warnings"])
    assert main(["search", "a cat", "--library", lib, "--min-score", f"{best - 1e-4:.6f}", "--json",
                 "--no-history"]) == 0
    kept = json.loads(capsys.readouterr().out)
    assert kept["hits"] and all(h["score"] >= best - 1e-4 for h in kept["hits"])
    assert main(["search", "a cat", "--library", lib, "--min-score", f"{min(best + 0.01, 1):.6f}", "--json",
                 "--no-history"]) == 0
    none = json.loads(capsys.readouterr().out)
    assert none["hits"] == [] and none["no_good_match"] and none["best_score"] == pytest.approx(best, abs=1e-6)
    assert any(w.startswith("no good match") for w in none["warnings"])
    assert main(["search", "a cat", "--library", lib, "--min-score", f"{min(best + 0.01, 1):.6f}",
                 "--no-history"]) == 0
    assert capsys.readouterr().out.startswith("no good match (the best score")
    assert main(["search", "a cat", "--library", lib, "--min-score", "2"]) == 1  # not a cosine


def test_model_of_another_embedding_space_is_refused(synthetic_library: SyntheticLibrary,
                                                     capsys: pytest.CaptureFixture) -> None:
    from vidsearch.search import Searcher, SearchError

    s = synthetic_library

    class OtherModel:
        name, fingerprint = "other", "not-the-library-fingerprint"

        def encode_text(self, texts: list[str]) -> None:  # pragma: no cover - never reached
            raise AssertionError

    with s.lib.lock():
        update_index(s.lib)
    with Searcher(s.lib, model=OtherModel(), record_history=False) as searcher, \
            pytest.raises(SearchError, match="not-the-library-fingerprint.*synthetic-fp-1"):
        searcher.search("dogs")


def test_control_characters_escaped_in_table(synthetic_library_factory, capsys: pytest.CaptureFixture) -> None:  # type: ignore[no-untyped-def]
    s = synthetic_library_factory(0, paths=["/v/\x1b[2Jevil\rname\n.mp4", "/v/ok.mp4"])
    with s.lib.lock():
        update_index(s.lib)
    assert main(["search", "--like", str(s.clip_ids[0]), "--library", str(s.lib.root), "--no-merge",
                 "--no-history"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and "\\x1b[2Jevil\\rname\\n.mp4" in out
    assert main(["search", "--like", str(s.clip_ids[0]), "--library", str(s.lib.root), "--json",
                 "--no-history"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert any(h["path"] == "/v/\x1b[2Jevil\rname\n.mp4" for h in doc["hits"])


def test_times_are_rounded_to_ms_everywhere(tiny_library: SyntheticLibrary, capsys: pytest.CaptureFixture) -> None:
    """Float noise of stored times (0.1 + 0.2 = 0.30000000000000004) never reaches an output."""
    import pyarrow as pa
    from conftest import make_shard_tables

    from vidsearch.serve.service import LibraryService

    s = tiny_library
    rng = np.random.default_rng(8)
    vecs = rng.standard_normal((3, s.dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    row = {**s.videos[0], "video_id": "d" * 32, "path": "/media/noisy/v.mp4", "path_bytes": b"/media/noisy/v.mp4",
           "num_clips": 3, "duration_s": 12.0 + 0.1 + 0.2}
    m = s.lib.read_manifest()
    assert m.model is not None
    clips, vids, ids = make_shard_tables([row], [3], [vecs], m.model.fingerprint, s.dim)
    noisy = [i * 4.0 + 0.1 + 0.2 for i in range(3)]  # 0.30000000000000004, 4.3, 8.3
    clips = clips.set_column(clips.schema.get_field_index("start_s"), "start_s", pa.array(noisy, pa.float64()))
    with s.lib.lock():
        s.lib.commit(clips, vids, run_id="run-3")
    assert main(["search", "--like", str(ids[0]), "--library", str(s.lib.root), "--json", "--no-history",
                 "--no-merge", "--folder", "/media/noisy", "-k", "3"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert all(len(repr(h[k]).partition(".")[2]) <= 3 for h in hits for k in ("start_s", "end_s"))
    starts = {h["clip_id"]: h["start_s"] for h in hits}
    assert starts[str(ids[1])] == 4.3 and starts[str(ids[2])] == 8.3
    svc = LibraryService(s.lib, record_history=False)
    try:
        clip = svc.clip(int(ids[0]))
        assert clip["start_s"] == 0.3 and clip["start"] == "00:00:00.300"
        video = svc.video("d" * 32)
        assert video["duration_s"] == 12.3 and [c["start_s"] for c in video["clips"]] == [0.3, 4.3, 8.3]
    finally:
        svc.close()
