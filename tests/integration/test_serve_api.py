"""``vidsearch serve`` API against a real server on loopback over a tiny-model library.

One library and one server per module (ingest ~10 s, server start ~10 s on 2 cores). Semantic
quality is not asserted (the tiny model has random weights); mechanics are: the API returns what
the library's own :class:`Searcher` returns, filters/paging/like behave, files are served only by
id with correct HTTP ranges, bad parameters get a 4xx JSON error, and search keeps answering
while an ingest commits (docs/RELIABILITY.md F12). The last test changes the library; keep it last.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

_spec = importlib.util.spec_from_file_location("_serve_harness", Path(__file__).parents[1] / "browser" / "harness.py")
harness = importlib.util.module_from_spec(_spec)  # shared with the browser test
sys.modules[_spec.name] = harness  # dataclasses look their module up there
_spec.loader.exec_module(harness)

pytest.importorskip("fastapi", reason="vidsearch serve needs fastapi + uvicorn (the serve extra)")
pytest.importorskip("uvicorn", reason="vidsearch serve needs fastapi + uvicorn (the serve extra)")


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return harness.make_library(tmp_path_factory.mktemp("serve_api"))


@pytest.fixture(scope="module")
def server(lib: Any) -> Iterator[Any]:
    with harness.serving(lib.root) as s:
        yield s


def api(server: Any, endpoint: str, /, **params: Any) -> Any:
    """GET ``endpoint`` with query parameters (``from_`` -> ``from``)."""
    qs = urllib.parse.urlencode({k.rstrip("_"): v for k, v in params.items() if v is not None})
    return harness.get(f"{server.url}{endpoint}" + (f"?{qs}" if qs else ""))


def catalog(lib: Any, sql: str, *params: Any) -> list[tuple]:
    with duckdb.connect(str(lib.root / "catalog.duckdb"), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def video_id(lib: Any, name: str) -> str:
    return catalog(lib, "SELECT video_id FROM videos WHERE path = ?", str(lib.videos[name]))[0][0]


# ---- search ------------------------------------------------------------------------------------

def test_status_reports_the_served_library(server: Any, lib: Any) -> None:
    r = api(server, "/api/status")
    assert r.status == 200
    st = r.json()
    n_clips = catalog(lib, "SELECT count(*) FROM clips JOIN videos USING (video_id) "
                           "WHERE status IN ('done', 'partial')")[0][0]
    assert st["ready"] and st["clips"] == n_clips > 0
    assert st["model"]["name"] == "internvideo2-tiny" and st["model_loaded"]
    assert st["videos"]["done"] == 3 and st["videos"]["failed"] == 1
    assert st["writer"] is None


def test_text_search_returns_what_the_searcher_returns(server: Any, lib: Any) -> None:
    from vidsearch.library import Library
    from vidsearch.search import Searcher

    r = api(server, "/api/search", q="a dog running", k=5)
    assert r.status == 200, r.body
    body = r.json()
    with Searcher(Library(lib.root), record_history=False) as s:
        want = s.search("a dog running", k=5)
    assert [h["clip_id"] for h in body["hits"]] == [str(h.clip_id) for h in want.hits]
    assert [h["score"] for h in body["hits"]] == pytest.approx([h.score for h in want.hits], abs=1e-5)
    h0, w0 = body["hits"][0], want.hits[0]
    assert (h0["video_id"], h0["start_s"], h0["end_s"]) == (w0.video_id, w0.start_s, w0.end_s)
    assert h0["name"] == Path(w0.path).name and h0["path"] == w0.path
    assert h0["merged_clip_ids"] == [str(c) for c in w0.clip_ids]
    assert h0["start"].count(":") == 2 and h0["thumbnail_url"] == f"/api/clips/{h0['clip_id']}/thumbnail"
    assert h0["video_url"] == f"/api/videos/{h0['video_id']}/file"
    assert body["query"] == "a dog running" and body["k"] == 5 and body["generation"] >= 1


def test_like_excludes_the_example_and_unknown_clip_is_404(server: Any, lib: Any) -> None:
    clip = catalog(lib, "SELECT clip_id FROM clips JOIN videos USING (video_id) WHERE videos.path = ? "
                        "ORDER BY start_s LIMIT 1 OFFSET 2", str(lib.videos["dog"]))[0][0]
    r = api(server, "/api/search", like=clip, k=10, merge="false")
    assert r.status == 200, r.body
    hits = r.json()["hits"]
    assert hits and all(str(clip) not in h["merged_clip_ids"] for h in hits)
    assert r.json()["like_clip_id"] == str(clip)
    assert api(server, "/api/search", like=123, k=3).status == 404
    assert "not in this library" in api(server, "/api/search", like=123).json()["error"]


def test_paging_is_disjoint_and_consistent(server: Any) -> None:
    full = api(server, "/api/search", q="bars", k=6, merge="false").json()
    p1 = api(server, "/api/search", q="bars", k=3, offset=0, merge="false").json()
    p2 = api(server, "/api/search", q="bars", k=3, offset=3, merge="false").json()
    ids = [h["clip_id"] for h in full["hits"]]
    assert [h["clip_id"] for h in p1["hits"]] == ids[:3]
    assert [h["clip_id"] for h in p2["hits"]] == ids[3:6]
    assert p1["has_more"] is True
    last = api(server, "/api/search", q="bars", k=3, offset=1000, merge="false").json()
    assert last["hits"] == [] and last["has_more"] is False


def test_filters(server: Any, lib: Any) -> None:
    def hits(**kw: Any) -> list[dict]:
        r = api(server, "/api/search", q="something", k=50, merge="false", **kw)
        assert r.status == 200, r.body
        return r.json()["hits"]

    everything = hits()
    assert {h["name"] for h in everything} == {"dog.mp4", "beach.mp4", "sky.mp4"}
    assert {h["name"] for h in hits(folder="pets")} == {"dog.mp4"}
    assert {h["name"] for h in hits(folder=str(lib.media / "travel"))} == {"beach.mp4", "sky.mp4"}
    assert {h["name"] for h in hits(path="*/sky.mp4")} == {"sky.mp4"}
    assert {h["name"] for h in hits(min_duration="00:00:11")} == {"dog.mp4"}
    assert {h["name"] for h in hits(max_duration="5")} == {"sky.mp4"}
    late = hits(from_="4", to="00:00:06")
    assert late and all(h["end_s"] > 4 and h["start_s"] < 6 for h in late)
    assert hits(date_from="2999-01-01") == []
    assert len(hits(date_from="2000-01-01", date_to="2999-12-31")) == len(everything)
    assert {h["name"] for h in hits(where="videos.duration_s < 5 AND codec = 'h264'")} == {"sky.mp4"}
    per = hits(per_video=1)
    assert len(per) == 3 and len({h["video_id"] for h in per}) == 3
    # A glob character in a folder name is a literal, not a wildcard.
    assert hits(folder="p*") == []


@pytest.mark.parametrize("params, status, words", [
    ({"q": "x", "k": 0}, 422, "k:"),
    ({"q": "x", "k": 100000}, 422, "k:"),
    ({"q": "x", "offset": -1}, 422, "offset:"),
    ({}, 400, "exactly one"),
    ({"q": "   "}, 400, "q is empty"),
    ({"q": "x", "like": "5"}, 400, "exactly one"),
    ({"like": "12ab"}, 422, "like:"),
    ({"like": "99999999999999999999"}, 422, "like:"),
    ({"like": "9223372036854775808"}, 400, "not a clip id"),
    ({"q": "x", "min_duration": "abc"}, 400, "min_duration"),
    ({"q": "x", "min_duration": "10", "max_duration": "5"}, 400, "min_duration > max_duration"),
    ({"q": "x", "from": "-3"}, 400, "from"),
    ({"q": "x", "date_from": "2024-13-01"}, 422, "date_from"),
    ({"q": "x", "date_from": "2024-02-01", "date_to": "2024-01-01"}, 400, "date_from > date_to"),
    ({"q": "x", "per_video": 0}, 422, "per_video"),
    ({"q": "x", "path": "*", "folder": "a"}, 400, "not both"),
    ({"q": "x", "where": "1=1; DROP TABLE clips"}, 400, "';' is not allowed"),
    ({"q": "x", "where": "1=1) UNION SELECT 1 --"}, 400, "unbalanced"),
    ({"q": "x", "where": "(SELECT count(*) FROM read_text('/etc/passwd')) > 0"}, 400, "disabled"),
    ({"q": "x", "where": "no_such_column = 1"}, 400, "no_such_column"),
])
def test_bad_parameters_get_a_clear_json_error(server: Any, params: dict, status: int, words: str) -> None:
    qs = urllib.parse.urlencode(params)
    r = harness.get(f"{server.url}/api/search?{qs}")
    assert r.status == status, (params, r.status, r.body)
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert isinstance(err, str) and err and words in err, err


def test_server_survives_bad_requests(server: Any) -> None:
    # Self-contained: send bad requests of every kind here, then check the server still answers.
    bad = ["/api/search?k=abc&q=x", "/api/search?q=x&date_from=yesterday", "/api/search?q=x&where=" + "(" * 500,
           "/api/search?q=x&where=1%3D1%3B%20DROP%20TABLE%20clips", "/api/clips/" + "9" * 40,
           "/api/videos/%00/file", "/api/search?" + "&".join(f"p{i}=1" for i in range(300))]
    for path in bad:
        r = harness.get(server.url + path)
        assert 400 <= r.status < 500, (path, r.status, r.body)
    r = api(server, "/api/search", q="still fine", k=1)
    assert r.status == 200 and len(r.json()["hits"]) == 1
    assert api(server, "/api/status").json()["ready"]


def test_searches_are_recorded_in_the_history(server: Any, lib: Any) -> None:
    assert api(server, "/api/search", q="remember me", k=2).status == 200
    deadline = time.monotonic() + 20
    while True:  # written by a background thread; it holds the file for a moment per search
        try:
            with duckdb.connect(str(lib.root / "history.duckdb"), read_only=True) as con:
                rows = con.execute("SELECT k, n_results FROM searches WHERE query = 'remember me'").fetchall()
            if rows:
                break
        except duckdb.Error:
            pass
        assert time.monotonic() < deadline, "search not recorded in history.duckdb"
        time.sleep(0.2)
    assert rows == [(2, 2)]
    # The page offers the library's recent searches as examples (newest first).
    assert api(server, "/api/status").json()["examples"][0] == "remember me"


# ---- metadata, thumbnails --------------------------------------------------------------------------

def test_clip_and_video_metadata(server: Any, lib: Any) -> None:
    vid = video_id(lib, "dog")
    r = api(server, f"/api/videos/{vid}")
    assert r.status == 200
    v = r.json()
    assert v["path"] == str(lib.videos["dog"]) and v["name"] == "dog.mp4"
    assert v["duration_s"] == pytest.approx(12, abs=0.1)
    assert v["status"] == "done" and len(v["clips"]) == 6 and v["file_url"] == f"/api/videos/{vid}/file"
    c = v["clips"][1]
    r = api(server, f"/api/clips/{c['clip_id']}")
    assert r.status == 200
    clip = r.json()
    assert clip["video_id"] == vid and clip["start_s"] == c["start_s"] and clip["start"] == "00:00:02.000"
    assert "path_bytes" not in clip


@pytest.mark.parametrize("path, status", [
    ("/api/clips/1", 404),
    ("/api/clips/abc", 422),
    ("/api/clips/-5", 422),
    ("/api/videos/" + "0" * 32, 404),
    ("/api/videos/XYZ", 422),
    ("/api/videos/" + "0" * 32 + "/file", 404),
    ("/api/clips/1/thumbnail", 404),
    ("/api/nothing", 404),
])
def test_unknown_ids_are_4xx_json(server: Any, path: str, status: int) -> None:
    r = harness.get(server.url + path)
    assert r.status == status and r.json()["error"]


def test_failed_video_is_not_served(server: Any, lib: Any) -> None:
    vid = video_id(lib, "broken")
    assert catalog(lib, "SELECT status FROM videos WHERE video_id = ?", vid)[0][0] == "failed"
    assert api(server, f"/api/videos/{vid}").status == 404
    assert api(server, f"/api/videos/{vid}/file").status == 404


def test_thumbnail_is_a_jpeg_cached_by_clip_id(server: Any, lib: Any) -> None:
    hit = api(server, "/api/search", q="thumb", k=1).json()["hits"][0]
    r = harness.get(server.url + hit["thumbnail_url"])
    assert r.status == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.body[:3] == b"\xff\xd8\xff"
    cached = lib.root / "thumbs" / f"{hit['clip_id']}.jpg"
    assert cached.read_bytes() == r.body
    assert harness.get(server.url + hit["thumbnail_url"]).body == r.body


# ---- files: ids only, HTTP ranges ------------------------------------------------------------------

def test_video_file_full_and_ranges(server: Any, lib: Any) -> None:
    data = lib.videos["dog"].read_bytes()
    n = len(data)
    url = f"{server.url}/api/videos/{video_id(lib, 'dog')}/file"
    full = harness.get(url)
    assert full.status == 200 and full.body == data
    assert full.headers["accept-ranges"] == "bytes" and full.headers["content-type"] == "video/mp4"
    r = harness.get(url, {"Range": "bytes=100-199"})
    assert r.status == 206 and r.body == data[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{n}" and r.headers["content-length"] == "100"
    r = harness.get(url, {"Range": f"bytes={n - 10}-"})
    assert r.status == 206 and r.body == data[-10:] and r.headers["content-range"] == f"bytes {n - 10}-{n - 1}/{n}"
    r = harness.get(url, {"Range": "bytes=-50"})
    assert r.status == 206 and r.body == data[-50:]
    r = harness.get(url, {"Range": f"bytes=0-{n + 1000}"})  # end past the file: clamped
    assert r.status == 206 and r.body == data
    r = harness.get(url, {"Range": f"bytes={n}-"})
    assert r.status == 416 and r.headers["content-range"] == f"bytes */{n}"
    r = harness.get(url, {"Range": "bytes=0-9,20-29"})
    assert r.status == 206 and r.headers["content-type"].startswith("multipart/byteranges")
    assert data[0:10] in r.body and data[20:30] in r.body
    head = harness.get(url, method="HEAD")
    assert head.status == 200 and head.headers["content-length"] == str(n) and head.body == b""


@pytest.mark.parametrize("path", [
    "/api/videos/..%2F..%2F..%2Fetc%2Fpasswd/file",
    "/api/videos/%2Fetc%2Fpasswd/file",
    "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/static/../../library.py",
    "/api/videos/file?path=/etc/passwd",
])
def test_no_path_reaches_files_outside_the_catalog(server: Any, path: str) -> None:
    r = harness.get(server.url + path)
    assert r.status in (404, 422), (path, r.status)
    assert b"root:" not in r.body and b"import" not in r.body


def test_foreign_host_header_is_refused(server: Any) -> None:
    # DNS rebinding: a web page on evil.example resolving to 127.0.0.1 must not read the API.
    r = harness.get(server.url + "/api/status", {"Host": "evil.example:8000"})
    assert r.status == 400


def test_openapi_and_page(server: Any) -> None:
    spec = api(server, "/openapi.json").json()
    for p in ("/api/search", "/api/clips/{clip_id}", "/api/clips/{clip_id}/thumbnail", "/api/videos/{video_id}",
              "/api/videos/{video_id}/file", "/api/status"):
        assert p in spec["paths"], p
    assert {p["name"] for p in spec["paths"]["/api/search"]["get"]["parameters"]} >= {
        "q", "like", "k", "offset", "per_video", "folder", "min_duration", "date_from", "from", "where"}
    page = harness.get(server.url + "/")
    assert page.status == 200 and b'role="search"' in page.body
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert harness.get(server.url + asset).status == 200


def test_openapi_operation_ids_are_unique(tmp_path: Path) -> None:
    """One route serving GET and HEAD gave both one operation id: FastAPI warned about it on
    every /openapi.json (issue 11 item 18)."""
    import warnings

    from vidsearch.library import Library
    from vidsearch.serve import LibraryService, create_app

    app = create_app(LibraryService(Library(tmp_path / "lib"), record_history=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = app.openapi()
    ops = [op["operationId"] for item in spec["paths"].values() for op in item.values()]
    assert len(ops) == len(set(ops)) and {"get", "head"} <= set(spec["paths"]["/api/videos/{video_id}/file"])


# ---- the page's example queries: from the library, read as untrusted files ---------------------------

def test_demo_captions_are_examples_and_world_json_is_untrusted(tmp_path: Path) -> None:
    from vidsearch.library import Library
    from vidsearch.serve.service import MAX_EXAMPLE_CHARS, demo_captions

    lib = Library(tmp_path / "lib")
    world = lib.root / "world"
    world.mkdir(parents=True)
    assert demo_captions(lib) == []  # no world.json: not a demo library
    scenes = [{"caption": "a red circle moving left"}, {"caption": 7}, {"caption": "x" * (MAX_EXAMPLE_CHARS + 1)},
              {"caption": "bell\x07"}, "not a scene", {"caption": "  a   blue square\ngrowing "},
              {"caption": "a red circle moving left"}]
    (world / "world.json").write_text(json.dumps({"videos": [{"scenes": scenes}, {"scenes": "no"}, 3]}))
    assert demo_captions(lib) == ["a red circle moving left", "a blue square growing"]
    for junk in ("[1, 2]", "{", '{"videos": {"scenes": []}}'):
        (world / "world.json").write_text(junk)
        assert demo_captions(lib) == []


def test_recent_queries_read_the_history_locked(tmp_path: Path) -> None:
    """A crafted history.duckdb whose searches table is a view over a file gives no examples
    (and reads nothing); a real one gives its latest distinct queries."""
    from vidsearch.library import Library
    from vidsearch.search.sandbox import HISTORY_DDL, recent_queries

    lib = Library(tmp_path / "lib")
    lib.root.mkdir()
    assert recent_queries(lib) == []
    with duckdb.connect(str(lib.root / "history.duckdb")) as con:
        con.execute(HISTORY_DDL)
        for i, q in enumerate(["old", "cats", "dogs", "cats", None]):
            con.execute("INSERT INTO searches (search_id, searched_at, query, k, offset_, rerank, filters, strategy, "
                        "n_results, latency_ms, timings, library_generation) VALUES (?, TIMESTAMPTZ '2025-01-01' + "
                        "to_seconds(?), ?, 10, 0, 0, '{}', 'ann', 1, 1.0, '{}', 1)", [f"s{i}", i, q])
    assert recent_queries(lib, 2) == ["cats", "dogs"]
    secret = tmp_path / "secret.csv"
    secret.write_text("query\nmy password\n")
    with duckdb.connect(str(lib.root / "history.duckdb")) as con:
        con.execute("DROP TABLE searches")
        con.execute(f"CREATE VIEW searches AS SELECT query, now() AS searched_at FROM read_csv('{secret}')")
    assert recent_queries(lib) == []


# ---- what is said (issue 14): `in`, hits with modalities, scores and snippets -------------------------

def test_status_names_what_the_library_can_be_searched_in(server: Any) -> None:
    assert api(server, "/api/status").json()["modalities"] == ["visual", "speech"]  # sky.mp4 has a subtitle


def test_in_speech_finds_the_subtitle_with_its_marked_words(server: Any, lib: Any) -> None:
    from vidsearch.library import Library
    from vidsearch.search import Searcher
    from vidsearch.search.output import hit_json

    r = api(server, "/api/search", q="lighthouse keeper", in_="speech")
    assert r.status == 200, r.body
    body = r.json()
    assert body["modalities"] == ["speech"] and body["score_kind"] == "bm25"
    (h,) = body["hits"]
    assert h["name"] == "sky.mp4" and (h["start_s"], h["end_s"], h["play_s"]) == (*harness.SUBTITLE_SPAN, 1.0)
    assert h["modalities"] == ["speech"] and list(h["scores"]) == ["speech"] and h["score"] == h["scores"]["speech"]
    assert h["snippet"] == {"text": harness.SUBTITLE_TEXT, "marks": [[4, 14], [15, 21]], "source": "subtitle"}
    # What the library's own searcher answers, field for field (one JSON shape for CLI and API).
    with Searcher(Library(lib.root), record_history=False) as s:
        want = hit_json(s.search("lighthouse keeper", k=24, modalities=("speech",)).hits[0])
    assert {k: h[k] for k in want} == want


def test_default_search_fuses_the_pictures_and_the_words(server: Any) -> None:
    body = api(server, "/api/search", q="lighthouse keeper", k=5).json()
    assert body["modalities"] == ["visual", "speech"] and body["score_kind"] == "rrf"
    top = body["hits"][0]  # the only moment both lists hold
    assert top["name"] == "sky.mp4" and sorted(top["modalities"]) == ["speech", "visual"]
    assert top["play_s"] == 1.0 and top["snippet"]["source"] == "subtitle"
    assert top["start_s"] <= 1.0 and top["end_s"] >= 3.0
    assert all(h["modalities"] == ["visual"] and h["snippet"] is None for h in body["hits"][1:])
    # Queries whose words no line holds rank the pictures alone, by their cosine.
    body = api(server, "/api/search", q="a dog running", k=3).json()
    assert body["score_kind"] == "cosine" and all(h["scores"] == {"visual": h["score"]} for h in body["hits"])


def test_bad_modalities_get_a_clear_json_error(server: Any, lib: Any) -> None:
    r = api(server, "/api/search", q="x", in_="smell")
    assert r.status == 400 and "unknown modality 'smell'" in r.json()["error"]
    assert api(server, "/api/search", q="x", in_="<script>").status == 422
    clip = catalog(lib, "SELECT clip_id FROM clips LIMIT 1")[0][0]
    r = api(server, "/api/search", like=clip, in_="speech")
    assert r.status == 400 and "pictures only" in r.json()["error"]


def test_cli_search_in_speech_through_the_server_is_the_local_answer(server: Any, lib: Any,
                                                                      capsys: pytest.CaptureFixture) -> None:
    from vidsearch.cli import main

    argv = ["search", "lighthouse keeper", "--in", "speech", "--library", str(lib.root), "--json"]
    assert main(argv) == 0
    remote = json.loads(capsys.readouterr().out)
    assert main([*argv, "--no-server", "--no-history"]) == 0
    here = json.loads(capsys.readouterr().out)
    assert remote["server"] == server.url and here["server"] is None
    key = ("clip_id", "start_s", "end_s", "play_s", "modalities", "snippet", "scores")
    assert [[h[k] for k in key] for h in remote["hits"]] == [[h[k] for k in key] for h in here["hits"]]
    assert remote["modalities"] == here["modalities"] == ["speech"]


# ---- concurrent ingest (F12): keep last, it changes the library ---------------------------------------

# ---- `vidsearch search` through the running server (vidsearch.search.remote) --------------------

def test_cli_search_is_answered_by_the_running_server(server: Any, lib: Any,
                                                       capsys: pytest.CaptureFixture) -> None:
    from vidsearch.cli import main

    argv = ["search", "a dog running", "--library", str(lib.root), "-k", "4", "--json", "--no-merge"]
    assert main(argv) == 0
    remote = json.loads(capsys.readouterr().out)
    assert remote["server"] == server.url  # the server advertised itself and was verified
    assert main([*argv, "--no-server", "--no-history"]) == 0
    here = json.loads(capsys.readouterr().out)
    assert here["server"] is None
    # The same answer either way: same ids, spans and scores (the same model and index).
    key = ("clip_id", "merged_clip_ids", "start", "end", "path")
    assert [[h[k] for k in key] for h in remote["hits"]] == [[h[k] for k in key] for h in here["hits"]]
    assert [h["score"] for h in remote["hits"]] == pytest.approx([h["score"] for h in here["hits"]], abs=1e-5)
    # What the web API cannot express is answered in this process.
    assert main([*argv, "--merge-gap", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["server"] is None
    # The server's refusal is the user's error, in one line, as a local search gives it.
    assert main(["search", "x", "--library", str(lib.root), "--where", "no_such_column = 1"]) == 1
    err = capsys.readouterr().err
    assert "no_such_column" in err and "Traceback" not in err


def test_advertised_server_is_verified_before_use(server: Any, lib: Any, tmp_path: Path) -> None:
    import os
    import shutil
    import socket

    from vidsearch.search import remote

    assert remote.find_server(lib.root) is not None
    # A copy of the library (same library_id and model) is not the library that server serves.
    copy = tmp_path / "copy"
    shutil.copytree(lib.root, copy)
    with remote.advertise(copy, server.url, json.loads((copy / "manifest.json").read_text())["library_id"], None):
        assert remote.find_server(copy) is None
    # A record of a dead process, or of a port nobody listens on: no server, at once.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    rec = remote._record_path(copy)
    for pid, url in ((2**22 + 12345, server.url), (os.getpid(), closed)):
        rec.write_text(json.dumps({"version": 1, "pid": pid, "host": socket.gethostname(), "url": url,
                                   "library": str(copy)}))
        t0 = time.monotonic()
        assert remote.find_server(copy) is None and time.monotonic() - t0 < 5


def test_search_keeps_answering_during_an_ingest(server: Any, lib: Any, tmp_path: Path) -> None:
    gen0 = api(server, "/api/status").json()["generation"]
    new = harness.make_video(lib.media / "garden" / "cat.mp4", "rgbtestsrc", 6)
    statuses: list[int] = []
    errors: list[str] = []
    crashed: list[BaseException] = []  # an assert in a thread cannot fail the test: re-raised below
    done = threading.Event()

    def hammer() -> None:
        try:
            while not done.is_set():
                r = api(server, "/api/search", q="cat", k=5)
                statuses.append(r.status)
                if r.status != 200:
                    errors.append(r.body.decode(errors="replace"))
                else:
                    # Never an uncommitted clip: every hit's video is served from a committed catalog.
                    for h in r.json()["hits"]:
                        v = api(server, f"/api/videos/{h['video_id']}")
                        if v.status != 200:
                            errors.append(f"hit {h['clip_id']}: video {h['video_id']} -> {v.status}")
                time.sleep(0.05)  # a steady user, not a flood: the 2 CI cores also run the ingest
        except BaseException as e:
            crashed.append(e)

    t = threading.Thread(target=hammer)
    t.start()
    try:
        r = harness.ingest([new], lib.root)
    finally:
        done.set()
        t.join(timeout=60)
    assert not t.is_alive(), "the search thread did not stop"
    if crashed:
        raise crashed[0]
    assert r.returncode == 0, r.stderr
    assert statuses and not errors, errors[:3]
    st = api(server, "/api/status").json()
    assert st["generation"] > gen0 and st["videos"]["done"] == 4
    hits = api(server, "/api/search", q="cat", folder="garden", k=5).json()["hits"]
    assert hits and {h["name"] for h in hits} == {"cat.mp4"}
    assert json.loads(harness.get(f"{server.url}/api/videos/{hits[0]['video_id']}").body)["name"] == "cat.mp4"


def test_non_finite_catalog_values_are_null_in_json(tmp_path: Path) -> None:
    """A shard (damaged or crafted) with NaN / infinite metadata: the API answers strict JSON
    with nulls (Starlette refuses NaN: it was a 500)."""
    import datetime as dt
    import math

    import numpy as np

    from vidsearch.library import Library
    from vidsearch.serve import LibraryService

    spec = importlib.util.spec_from_file_location("_synth", Path(__file__).parents[1] / "unit" / "conftest.py")
    synth = sys.modules.get("_synth") or importlib.util.module_from_spec(spec)
    if "_synth" not in sys.modules:
        sys.modules["_synth"] = synth
        spec.loader.exec_module(synth)
    lib = Library(tmp_path / "lib")
    video = {"video_id": "ab" * 16, "path": "/media/odd.mp4", "path_bytes": b"/media/odd.mp4", "size_bytes": 1,
             "mtime": dt.datetime(2024, 1, 1, tzinfo=dt.UTC), "duration_s": math.nan, "fps": 25.0,
             "frame_count": 200, "width": 64, "height": 48, "codec": "h264", "container": "mov",
             "rotation": 0, "coverage": math.inf, "num_clips": 2, "status": "done", "stage": None,
             "error_type": None, "error_message": None, "attempts": 1, "run_id": "run-1",
             "ingested_at": dt.datetime(2025, 1, 1, tzinfo=dt.UTC)}
    vecs = np.eye(2, synth.SYNTH_DIM, dtype=np.float32)
    clips, videos, ids = synth.make_shard_tables([video], [2], [vecs], synth.SYNTH_FINGERPRINT, synth.SYNTH_DIM)
    with lib.lock():
        lib.init(synth.synthetic_model())
        lib.commit(clips, videos, run_id="run-1")
    service = LibraryService(lib, record_history=False)
    try:
        v = service.video("ab" * 16)
        c = service.clip(int(ids[0]))
    finally:
        service.close()
    assert v["duration_s"] is None and v["coverage"] is None and v["fps"] == 25.0
    json.dumps([v, c], allow_nan=False)  # what Starlette does
