"""Issue 16 from the command line: `search --export`, `vidsearch export SEARCH_ID`, `vidsearch eval`.

One small real library (ffmpeg-made videos at 25, 10 and 29.97 fps, one with a start timecode and
one whose file name is not UTF-8), ingested once with the test model. The exports are read back
with OpenTimelineIO, xml.etree and csv (the formats themselves are tested at every rate in
tests/unit/test_export.py); what is checked here is the command's part: the ranked hits of the
search, at their exact file paths, within a frame of their spans, in the right place, and nothing
written into the library.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes, urlparse

import av
import numpy as np
import opentimelineio as otio
import pytest
from media_tools import TEST_MODEL, ffmpeg, lavfi_video

from vidsearch.cli import main
from vidsearch.library import Library

QUERY = "a test pattern"
NON_UTF8 = b"b_\xff\xfe.mp4"


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def hitlib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A library of three videos (25 fps; 10 fps under a non-UTF-8 name; 29.97 fps .mov with a
    start timecode), ingested with the test model."""
    from vidsearch.pipeline.runner import IngestOptions, run_ingest
    from vidsearch.schemas.config import IngestCfg

    root = tmp_path_factory.mktemp("hits_cli")
    vids = root / "videos"
    vids.mkdir()
    lavfi_video(vids / "a_25fps.mp4", rate=25, seconds=6, extra=("-g", "25"))
    tmp = lavfi_video(root / "b.mp4", rate=10, seconds=5, src="smptebars")
    os.rename(tmp, os.path.join(os.fsencode(vids), NON_UTF8))
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x64:rate=30000/1001:duration=5", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", "-timecode", "01:00:00;00", vids / "c_2997_tc.mov")
    s = run_ingest([vids], root / "lib", IngestCfg(decode_workers=1, clip_seconds=2.0, stride=2.0),
                   IngestOptions(model=TEST_MODEL, executor="local", progress=False))
    assert s.videos_done == 3
    return root / "lib"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["-q", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _hits(capsys: pytest.CaptureFixture[str], lib: Path, *extra: str) -> list[dict[str, Any]]:
    rc, out, _ = _run(capsys, "search", QUERY, "--library", str(lib), "-k", "4", "--json", "--no-history",
                      "--no-server", *extra)
    assert rc == 0
    hits = json.loads(out)["hits"]
    assert len(hits) >= 2
    return hits


def _exact_paths(lib: Path) -> dict[str, bytes]:
    with Library(lib).open_catalog_readonly() as r:
        return {v: bytes(b) for v, b in r.con.execute("SELECT video_id, path_bytes FROM videos").fetchall()}


def _url_bytes(url: str) -> bytes:
    return unquote_to_bytes(urlparse(url).path)


def test_search_export_every_format_reads_back(hitlib: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    before = _tree(hitlib)
    hits = _hits(capsys, hitlib)
    exact = _exact_paths(hitlib)
    # every video among the hits: the non-UTF-8 name and the timecoded .mov are exported too
    assert {exact[h["video_id"]] for h in hits} == set(exact.values())
    assert NON_UTF8 in {os.path.basename(p) for p in exact.values()}
    for ext in ("otio", "edl", "xml", "fcpxml", "csv"):
        out = tmp_path / f"hits.{ext}"
        rc, stdout, err = _run(capsys, "search", QUERY, "--library", str(hitlib), "-k", "4", "--no-history",
                               "--no-server", "--export", str(out))
        assert rc == 0, err
        assert f"exported {len(hits)} hits to {out}" in stdout
        if ext == "otio":
            clips = list(otio.adapters.read_from_file(str(out)).find_clips())
            assert [c.metadata["vidsearch"]["rank"] for c in clips] == [h["rank"] for h in hits]
            for h, c in zip(hits, clips, strict=True):
                assert c.metadata["vidsearch"]["clip_id"] == h["clip_id"]
                assert _url_bytes(c.media_reference.target_url) == exact[h["video_id"]]  # the exact bytes
                rate = c.source_range.start_time.rate
                off = (c.source_range.start_time - c.media_reference.available_range.start_time).to_seconds()
                assert abs(off - h["start_s"]) <= 0.5 / rate + 1e-9
                assert abs(c.source_range.duration.to_seconds() - (h["end_s"] - h["start_s"])) <= 1 / rate + 1e-9
                if exact[h["video_id"]].endswith(b".mov"):  # the container's start timecode is kept:
                    # 01:00:00;00 drop-frame is frame 107892 (60 min x 1800 - 108 dropped labels) at 30000/1001
                    assert c.media_reference.available_range.start_time.value == 107892
                    assert c.media_reference.available_range.start_time.to_seconds() == pytest.approx(
                        107892 * 1001 / 30000)
        elif ext == "edl":
            tl = otio.adapters.read_from_file(str(out), rate=25)
            assert len(list(tl.find_clips())) == len(hits)
            text = out.read_text()
            assert text.startswith(f"TITLE: {QUERY}\nFCM: ")
            assert [int(line.split()[3]) for line in text.splitlines() if line.startswith("* VIDSEARCH RANK")] == \
                [h["rank"] for h in hits]
        elif ext == "xml":
            assert len(list(otio.adapters.read_from_file(str(out)).find_clips())) == len(hits)
            urls = [_url_bytes(e.text or "") for e in ET.parse(out).iter("pathurl")]
            assert set(urls) == {exact[h["video_id"]] for h in hits}
        elif ext == "fcpxml":
            root = ET.parse(out).getroot()
            clips = root.findall("./library/event/project/sequence/spine/asset-clip")
            assets = {a.get("id"): a for a in root.iter("asset")}
            assert [_url_bytes(assets[c.get("ref")].get("src") or "") for c in clips] == \
                [exact[h["video_id"]] for h in hits]
            assert [m.get("value") for c in clips for m in c.findall("marker")] == \
                [f"#{h['rank']} {h['score']:.3f}" for h in hits]
        else:
            with open(out, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            assert [int(r["#"]) for r in rows] == [h["rank"] for h in hits]
    assert _tree(hitlib) == before  # a read command: nothing in the library changed


def test_search_export_clips_says_copy_or_reencode(hitlib: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    hits = _hits(capsys, hitlib, "--no-merge")
    folder = tmp_path / "clips"
    rc, stdout, err = _run(capsys, "search", QUERY, "--library", str(hitlib), "-k", "4", "--no-history",
                           "--no-server", "--no-merge", "--export", f"{folder}/", "--json")
    assert rc == 0, err
    assert json.loads(stdout)["hits"] == hits  # stdout stays pure JSON; the export lines went to stderr
    files = sorted(folder.iterdir())
    assert [f.name for f in files] == [f"hit-{h['rank']:03d}-{h['clip_id']}.mp4" for h in hits]
    for h, f in zip(hits, files, strict=True):
        line = next(line for line in err.splitlines() if f.name in line)
        assert ("copy:" in line) or ("re-encode:" in line)
        with av.open(str(f)) as c:
            dur = float(c.streams.video[0].duration * c.streams.video[0].time_base)
        assert dur == pytest.approx(h["end_s"] - h["start_s"], abs=0.25)
    assert not [f for f in folder.iterdir() if f.name.startswith(".")]  # no temp file left


def test_export_saved_search_equals_search_export(hitlib: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    lib = tmp_path / "lib"
    shutil.copytree(hitlib, lib)
    rc, out, _ = _run(capsys, "search", QUERY, "--library", str(lib), "-k", "4", "--json", "--no-server",
                      "--export", str(tmp_path / "direct.otio"))
    assert rc == 0
    search_id = json.loads(out)["search_id"]
    before = {k: v for k, v in _tree(lib).items() if not k.startswith("history.duckdb")}
    for how in (search_id, search_id[:8], "last"):
        rc, out, err = _run(capsys, "export", how, "--library", str(lib), "--out", str(tmp_path / "saved.otio"))
        assert rc == 0, err
        assert (tmp_path / "saved.otio").read_bytes() == (tmp_path / "direct.otio").read_bytes()
    rc, out, _ = _run(capsys, "export", "last", "--library", str(lib), "--out", str(tmp_path / "saved"),
                      "--format", "mp4")
    assert rc == 0 and len(list((tmp_path / "saved").glob("hit-*.mp4"))) == len(json.loads(
        (tmp_path / "direct.otio").read_text())["tracks"]["children"][0]["children"])
    assert {k: v for k, v in _tree(lib).items() if not k.startswith("history.duckdb")} == before
    for bad, words in (("zz", "not a search id"), ("abcdef0123", "no saved search"),
                       ("x' OR '1'='1", "not a search id")):
        rc, _, err = _run(capsys, "export", bad, "--library", str(lib), "--out", str(tmp_path / "y.edl"))
        assert rc == 1 and words in err and len(err.strip().splitlines()) == 1


def test_export_leaves_out_replaced_videos_and_serves_server_answers(hitlib: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A saved search whose video was replaced since exports the rest, with a warning; a search a
    running server answered gets its exact paths from the catalog here."""
    import pyarrow as pa

    import vidsearch.commands.search as search_cmd
    from vidsearch.schemas.tables import VIDEO_SCHEMA, clip_schema
    from vidsearch.search.searcher import Searcher

    lib = tmp_path / "lib"
    shutil.copytree(hitlib, lib)
    rc, out, _ = _run(capsys, "search", QUERY, "--library", str(lib), "-k", "4", "--json", "--no-server")
    hits = json.loads(out)["hits"]
    gone = hits[0]
    library = Library(lib)
    with library.open_catalog_readonly() as r:
        t = r.con.sql("SELECT * EXCLUDE (shard_id) FROM videos WHERE video_id = ?",
                      params=[gone["video_id"]]).to_arrow_table()
    row = dict(t.to_pylist()[0], status="replaced")
    m = library.read_manifest()
    assert m.model is not None
    with library.lock():  # what ingest commits when the file at that path changed
        library.commit(clip_schema(m.model.embed_dim).empty_table(), pa.Table.from_pylist([row], schema=VIDEO_SCHEMA),
                       run_id="replace")
    rc = main(["export", "last", "--library", str(lib), "--out", str(tmp_path / "rest.otio")])  # not -q: warnings
    err = capsys.readouterr().err
    assert rc == 0 and "warning: hit 1:" in err and "replaced" in err
    clips = list(otio.adapters.read_from_file(str(tmp_path / "rest.otio")).find_clips())
    assert [c.metadata["vidsearch"]["rank"] for c in clips] == [h["rank"] for h in hits[1:]]
    # A server's answer (remote_search) carries display paths only: the export looks the files up.
    with Searcher(Library(hitlib), record_history=False) as s:
        answer = s.search(QUERY, k=4)
    monkeypatch.setattr(search_cmd, "_remote_eligible", lambda args: True)
    monkeypatch.setattr(search_cmd, "_try_server", lambda args, f, m: answer)
    rc, out, err = _run(capsys, "search", QUERY, "--library", str(hitlib), "-k", "4", "--export",
                        str(tmp_path / "remote.otio"))
    assert rc == 0, err
    exact = _exact_paths(hitlib)
    clips = list(otio.adapters.read_from_file(str(tmp_path / "remote.otio")).find_clips())
    assert [_url_bytes(c.media_reference.target_url) for c in clips] == [exact[h.video_id] for h in answer.hits]


def test_export_destinations_are_checked_before_searching(hitlib: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    before = _tree(hitlib)
    link = tmp_path / "link_to_index"
    link.symlink_to(hitlib / "index")
    cases = [
        (str(hitlib / "index" / "x.edl"), "index/"),
        (f"{hitlib / 'shards'}/", "shards/"),
        (str(hitlib / "catalog.duckdb.otio"), None),  # a new name in the library's root is the user's
        (str(link / "x.otio"), "index/"),             # links are resolved first
        (str(hitlib / "manifest.json"), "unknown export extension"),
        (str(tmp_path / "missing" / "x.edl"), "no such folder"),
        (str(tmp_path / "x.mp3"), "unknown export extension"),
        (str(tmp_path), None),                         # an existing folder: clips go there
    ]
    for target, words in cases:
        rc, _, err = _run(capsys, "search", QUERY, "--library", str(hitlib), "-k", "2", "--no-history",
                          "--no-server", "--export", target)
        if words is None:
            assert rc == 0, err
            continue
        assert rc == 1 and words in err and len(err.strip().splitlines()) == 1, err
    rc, _, err = _run(capsys, "export", "last", "--library", str(hitlib), "--out", str(hitlib / "history.duckdb"),
                      "--format", "csv")
    assert rc == 1 and "history.duckdb" in err
    os.remove(hitlib / "catalog.duckdb.otio")
    assert _tree(hitlib) == before


# ---- vidsearch eval ---------------------------------------------------------------------------------
def _queries(hitlib: Path, tmp_path: Path) -> Path:
    exact = sorted(_exact_paths(hitlib).values())
    lines = [
        {"query": QUERY, "path": os.fsdecode(exact[0]), "start_s": 0.5, "end_s": 2.5},
        {"query": "colour bars", "path": os.fsdecode(exact[1])},  # the non-UTF-8 name, whole video
        {"query": "a clock", "path": os.fsdecode(exact[2]), "start_s": 3.0, "end_s": 5.0},
        {"query": "moving shapes", "path": os.fsdecode(exact[2]), "start_s": 0.0, "end_s": 1.0,
         "also": [{"path": os.fsdecode(exact[0]), "start_s": 4.0, "end_s": 6.0}]},
        {"query": "nowhere", "path": str(tmp_path / "not_in_library.mp4"), "start_s": 0, "end_s": 1},
    ]
    q = tmp_path / "queries.jsonl"
    # JSON is UTF-8: the non-UTF-8 name travels as Python's surrogate escapes ("\udcff").
    q.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return q


def _first_right(hits: list[dict[str, Any]], targets: list[tuple[bytes, float | None, float | None]],
                 exact: dict[str, bytes]) -> int | None:
    for h in hits:
        for path, a, b in targets:
            if exact[h["video_id"]] == path and (a is None or (h["start_s"] < b and h["end_s"] > a)):
                return int(h["rank"])
    return None


@pytest.mark.parametrize("extra", [(), ("--path", "*a_25fps*"), ("--min-score", "0.99")])
def test_eval_agrees_with_counting_search_json(hitlib: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               extra: tuple[str, ...]) -> None:
    qfile = _queries(hitlib, tmp_path)
    before = _tree(hitlib)
    rc, out, err = _run(capsys, "eval", str(qfile), "--library", str(hitlib), "--json", *extra)
    assert _tree(hitlib) == before  # a read command (no history either)
    assert rc == 0, err
    doc = json.loads(out)
    exact = _exact_paths(hitlib)
    ranks = []
    for line in qfile.read_text(encoding="utf-8").splitlines():
        q = json.loads(line)
        targets = [(os.fsencode(t["path"]), t.get("start_s"), t.get("end_s")) for t in [q, *q.get("also", [])]]
        rc, o, _ = _run(capsys, "search", q["query"], "--library", str(hitlib), "-k", "10", "--json",
                        "--no-history", "--no-server", *extra)
        assert rc == 0
        ranks.append(_first_right(json.loads(o)["hits"], targets, exact))
    n = len(ranks)
    assert doc["n_queries"] == n and [p["rank"] for p in doc["per_query"]] == ranks
    assert doc["recall_at_1"] == sum(r == 1 for r in ranks) / n
    assert doc["recall_at_5"] == sum(r is not None and r <= 5 for r in ranks) / n
    assert doc["recall_at_10"] == sum(r is not None for r in ranks) / n
    assert doc["mrr"] == pytest.approx(sum(1 / r for r in ranks if r) / n)
    assert doc["targets_not_in_library"] == 1
    if not extra:
        assert len(set(ranks)) >= 2  # the comparison means something
    rc, out, _ = _run(capsys, "eval", str(qfile), "--library", str(hitlib), *extra)
    assert rc == 0 and f"recall@1           {doc['recall_at_1']:.3f}" in out


def test_eval_refuses_bad_input(hitlib: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIDSEARCH_LIBRARY", raising=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "x", "path": "a.mp4", "start_s": 0, "end_s": 1}\n{"query": "y"}\n')
    for argv, words in ((["eval", str(bad), "--library", str(hitlib)], f"{bad}:2"),
                        (["eval", "--library", str(hitlib)], "QUERIES.jsonl file or --msrvtt"),
                        (["eval", str(bad)], "give --library DIR (or set VIDSEARCH_LIBRARY)"),
                        (["eval", str(bad), "--msrvtt", str(tmp_path)], "one of them"),
                        (["eval", str(bad), "--library", str(hitlib), "-k", "5"], "at least 10")):
        rc, _, err = _run(capsys, *argv)
        assert rc == 1 and words in err, err


def test_eval_msrvtt_on_a_fake_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The 1k-A layout (CLIP4Clip's csv + MSRVTT/videos/all), ingested one clip per video with
    middle sampling; the ranks are the cosine ranking of the official-cleaned captions."""
    root = tmp_path / "msrvtt"
    vids = root / "MSRVTT" / "videos" / "all"
    vids.mkdir(parents=True)
    for i, src in enumerate(("testsrc2", "smptebars", "rgbtestsrc", "testsrc")):
        lavfi_video(vids / f"video{7010 + i}.mp4", seconds=3 + i, rate=15, src=src)
    sentences = ["A man is talking about a car!", '"colour bars", on a TV-screen', "a fractal zooms in",
                 "<person> plays with/a ball"]
    (root / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\n" + "".join(
            f'ret{i},msr{7010 + i},video{7010 + i},"{s.replace(chr(34), chr(34) * 2)}"\n'
            for i, s in enumerate(sentences)))
    argv = ["eval", "--msrvtt", str(root), "--model", TEST_MODEL, "--executor", "local", "--json"]
    rc, out, err = _run(capsys, *argv)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["n_queries"] == 4 and doc["protocol"]["sampling"] == "middle"
    assert doc["published_r1_internvideo2_s2_1b"] == {"with ITM re-ranking": 51.9, "dual encoder": 47.0}
    lib = Library(root / ".vidsearch-lib")
    m = lib.read_manifest()
    assert m.model is not None and m.model.preprocess["sampling"] == "middle"
    assert m.model.preprocess["interpolation"] == "bicubic"
    # One clip per video, its 4 frames at the middles of 4 equal segments (official get_frame_indices).
    clips = pa_concat([lib.read_shard(s, "clips") for s in m.shards])
    assert clips.num_rows == 4
    for path, idx in zip(clips.column("path").to_pylist(), clips.column("frame_indices").to_pylist(), strict=True):
        n = 15 * (3 + int(Path(path).stem[-1]))
        edges = np.linspace(0, n, 5).astype(int)
        assert idx == [(a + b - 1) // 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
    # The independent ranking: the same text encoder on pre_text'd captions, cosine against the shards.
    from vidsearch.search.evaluate import official_pre_text
    from vidsearch.search.searcher import load_text_encoder

    enc = load_text_encoder(m.model)
    emb = np.asarray(clips.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False),
                     np.float32).reshape(4, -1)
    names = [Path(p).stem for p in clips.column("path").to_pylist()]
    t = np.asarray(enc.encode_text([official_pre_text(s) for s in sentences]), np.float32)
    ranks = []
    for i in range(4):
        order = [names[j] for j in np.argsort(-(emb @ t[i]), kind="stable")]
        ranks.append(order.index(f"video{7010 + i}") + 1)
    assert [p["rank"] for p in doc["per_query"]] == ranks
    assert doc["per_query"][3]["query"] == "person plays with a ball"
    # A rerun ingests nothing again.
    rc, out2, _ = _run(capsys, *argv)
    assert rc == 0 and json.loads(out2)["per_query"] == doc["per_query"]
    assert len(lib.read_manifest().shards) == len(m.shards)


def pa_concat(tables: list[Any]) -> Any:
    import pyarrow as pa

    return pa.concat_tables(tables)
