"""`vidsearch search` end to end: text via the tiny model, outputs, history, model refusal."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
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
    with duckdb.connect(str(tiny_library.lib.root / "history.duckdb"), read_only=True) as con:
        assert con.execute("SELECT query, n_results FROM searches").fetchall() == [("dog playing in snow", 5)]
        assert con.execute("SELECT count(*) FROM search_results WHERE search_id = ?",
                           [doc["search_id"]]).fetchone() == (5,)
    # The history is open to SQL.
    assert main(["sql", "SELECT s.query, count(*) AS n FROM searches s JOIN search_results r USING (search_id) "
                 "GROUP BY 1", "--library", lib, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"query": "dog playing in snow", "n": 5}]


def test_outputs_csv_parquet_open(tiny_library: SyntheticLibrary, tmp_path: Path,
                                  capsys: pytest.CaptureFixture) -> None:
    lib = str(tiny_library.lib.root)
    out = tmp_path / "hits.parquet"
    assert main(["search", "a cat", "--library", lib, "-k", "3", "--csv", "--parquet", str(out),
                 "--no-history"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("rank,score") and len(lines) == 4
    t = pq.read_table(out)
    assert t.num_rows == 3 and t.column("rank").to_pylist() == [1, 2, 3]
    assert main(["search", "a cat", "--library", lib, "-k", "1", "--parquet", str(tmp_path)]) == 1
    assert "directory" in capsys.readouterr().err
    assert main(["search", "a cat", "--library", lib, "-k", "2", "--open", "ffplay", "--no-history"]) == 0
    text = capsys.readouterr().out
    assert "ffplay -ss" in text and "rank" in text.splitlines()[0]
    assert not (tiny_library.lib.root / "history.duckdb").exists()


def test_like_and_video_at(tiny_library: SyntheticLibrary, capsys: pytest.CaptureFixture) -> None:
    lib = str(tiny_library.lib.root)
    cid = str(tiny_library.clip_ids[3])
    assert main(["search", "--like", cid, "--library", lib, "-k", "3", "--json", "--no-history"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["like_clip_id"] == int(cid) and int(cid) not in [c for h in doc["hits"] for c in h["merged_clip_ids"]]
    assert main(["search", "--like", "123", "--library", lib]) == 1
    assert "not in" in capsys.readouterr().err
    assert main(["search", "--library", lib]) == 1  # no query at all


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
