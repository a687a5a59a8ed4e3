"""``ingest --speech`` end to end with real parts: espeak-ng speech muxed at known times into
ffmpeg-made videos, a sidecar ``.srt``, an embedded ``mov_text`` track, a cp1252 ``.srt``, a video
without audio, a silence-only one; the offline Whisper model of the dev extra; the local executor.

Checked: ``transcripts`` holds each spoken and subtitled line at the right time (within 1 s), each
video's text status (ok / silent / no_audio; subtitles ok / none), ``vidsearch sql`` and
``vidsearch status`` see them, the keyword index finds each phrase in the right video at the right
time, so does ``vidsearch search --in speech`` (and fused with the pictures), a rerun redoes
nothing, and adding ``--speech`` to a library ingested without it transcribes without embedding
anything again (its clip shards untouched) and gives the same transcripts.
A failed transcription is a failure of the speech stage only, retried by the next run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from media_tools import TEST_MODEL, ffmpeg, lavfi_video
from speech_tools import need_espeak, speech_video, whisper_test_model

from vidsearch.cli import main
from vidsearch.indexer.keyword import KeywordIndex
from vidsearch.indexer.text import keyword_dir
from vidsearch.library import Library
from vidsearch.pipeline.runner import IngestOptions, IngestSummary, run_ingest
from vidsearch.schemas.config import IngestCfg

LINES = [(1.0, "The children built a large sandcastle on the beach."),
         (9.0, "A small airplane landed safely in the field.")]


def ingest(src: Path, lib: Path, *, speech: bool = True, commit_interval_s: float = 60.0, **opts: Any) -> IngestSummary:
    return run_ingest([str(src)], lib, IngestCfg(decode_workers=1, batch_size=8, commit_interval_s=commit_interval_s),
                      IngestOptions(model=TEST_MODEL, executor="local", progress=False, speech=speech,
                                    speech_model=str(whisper_test_model()) if speech else None, **opts))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    need_espeak()
    whisper_test_model()
    root = tmp_path_factory.mktemp("speech_corpus")
    d = root / "videos"
    d.mkdir()
    spans = speech_video(d / "talk.mp4", LINES, seconds=14, workdir=root)
    lavfi_video(d / "subs.mp4", seconds=5, rate=10)  # no audio; a sidecar
    (d / "subs.srt").write_text("1\n00:00:01,000 --> 00:00:02,500\nThe lighthouse keeper waves\n\n", encoding="utf-8")
    lavfi_video(d / "latin.mp4", seconds=4, rate=10, size="80x48")
    (d / "latin.fr.srt").write_bytes("1\n00:00:02,000 --> 00:00:03,000\nCafé crème à Genève\n\n".encode("cp1252"))
    (root / "in.srt").write_text("1\n00:00:03,000 --> 00:00:04,500\nEmbedded caption about penguins\n\n")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10:duration=6", "-i", root / "in.srt", "-map", "0",
           "-map", "1", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:s", "mov_text", d / "movtext.mp4")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=72x48:rate=10:duration=4", "-f", "lavfi", "-i",
           "anullsrc=r=44100:cl=stereo", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-t", "4",
           d / "quiet.mp4")
    return {"dir": d, "spans": spans}


@pytest.fixture(scope="module")
def speech_lib(corpus: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    lib = tmp_path_factory.mktemp("speech_lib") / "lib"
    s = ingest(corpus["dir"], lib)
    return {"lib": lib, "summary": s}


def catalog(lib: Path, sql: str) -> list[tuple[Any, ...]]:
    with Library(lib).connect_catalog() as con:
        return con.execute(sql).fetchall()


def by_name(lib: Path) -> dict[str, str]:
    return {os.path.basename(p): v for v, p in catalog(lib, "SELECT video_id, path FROM videos")}


def text_snapshot(lib: Path) -> list[tuple[Any, ...]]:
    """Run-independent transcripts (ids, times to the ms, text, source, track, model)."""
    return sorted(catalog(lib, "SELECT video_id, segment_id, round(start_s, 3), round(end_s, 3), text, source, track, "
                               "language, model FROM transcripts"))


def test_transcripts_hold_speech_and_subtitles_at_the_right_times(speech_lib: dict[str, Any],
                                                                  corpus: dict[str, Any]) -> None:
    s = speech_lib["summary"]
    assert s.exit_code == 0 and s.videos_done == 5
    assert (s.speech_videos, s.speech_silent, s.speech_no_audio, s.speech_failed) == (1, 1, 3, 0)
    assert (s.subtitle_videos, s.subtitle_segments) == (3, 3) and 17.5 < s.speech_audio_s < 18.5  # 14 s + 4 s
    lib, ids = speech_lib["lib"], by_name(speech_lib["lib"])
    rows = catalog(lib, "SELECT video_id, start_s, end_s, text, source, track, language FROM transcripts")
    subs = {(r[0], r[3]): r for r in rows if r[4] == "subtitle"}
    assert subs[(ids["subs.mp4"], "The lighthouse keeper waves")][1:3] == pytest.approx((1.0, 2.5), abs=1e-6)
    assert subs[(ids["latin.mp4"], "Café crème à Genève")][1:] == pytest.approx(
        (2.0, 3.0, "Café crème à Genève", "subtitle", "sidecar:latin.fr.srt", "fr"))
    pen = subs[(ids["movtext.mp4"], "Embedded caption about penguins")]
    assert pen[1] == pytest.approx(3.0, abs=0.05) and pen[2] == pytest.approx(4.5, abs=0.05)
    assert pen[5].endswith(":mov_text")
    speech = sorted(r for r in rows if r[4] == "speech")
    assert [r[0] for r in speech] == [ids["talk.mp4"]] * 2
    for (start, end, _line), r in zip(corpus["spans"], speech, strict=True):
        assert start - 1 <= r[1] <= r[2] <= end + 1 and r[5] == "asr" and r[6] == "en"
    text = " ".join(r[3] for r in speech).lower()
    assert "sandcastle" in text and "airplane" in text
    # Word timings: the word "sandcastle" inside the first line's span.
    words = catalog(lib, "SELECT w.word, w.start_s, w.end_s FROM (SELECT unnest(words) AS w FROM transcripts "
                         "WHERE source = 'speech')")
    hit = [w for w in words if "sandcastle" in w[0].lower()]
    assert hit and corpus["spans"][0][0] - 1 <= hit[0][1] <= hit[0][2] <= corpus["spans"][0][1] + 1


def test_text_status_per_video(speech_lib: dict[str, Any]) -> None:
    lib, ids = speech_lib["lib"], by_name(speech_lib["lib"])
    st = {(v, k): (s, n, notes) for v, k, s, n, notes in
          catalog(lib, "SELECT video_id, kind, status, segments, notes FROM text_status")}
    assert len(st) == 10  # two stages of five videos, one row each
    assert {name: st[(v, "speech")][0] for name, v in ids.items()} == {
        "talk.mp4": "ok", "quiet.mp4": "silent", "subs.mp4": "no_audio", "latin.mp4": "no_audio",
        "movtext.mp4": "no_audio"}
    assert {name: st[(v, "subtitle")][:2] for name, v in ids.items()} == {
        "talk.mp4": ("none", 0), "quiet.mp4": ("none", 0), "subs.mp4": ("ok", 1), "latin.mp4": ("ok", 1),
        "movtext.mp4": ("ok", 1)}
    assert "decoded as cp1252" in st[(ids["latin.mp4"], "subtitle")][2]
    model = catalog(lib, "SELECT DISTINCT model FROM text_status WHERE kind = 'speech' AND status <> 'no_audio'")
    assert model == [(speech_lib["summary"].speech_model,)] and model[0][0].startswith("local:")
    assert catalog(lib, "SELECT count(*) FROM failures") == [(0,)]


def test_sql_and_status_see_the_transcripts(speech_lib: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    lib = str(speech_lib["lib"])
    assert main(["sql", "SELECT source, count(*) AS n FROM transcripts GROUP BY source ORDER BY source",
                 "--library", lib, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"source": "speech", "n": 2}, {"source": "subtitle", "n": 3}]
    assert main(["sql", "SELECT kind, status FROM text_status WHERE status = 'silent'", "--library", lib,
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"kind": "speech", "status": "silent"}]
    assert main(["status", "--library", lib]) == 0
    out = capsys.readouterr().out
    assert "speech  1 video with speech (2 segments), 1 silent, 3 without audio" in out
    assert "subtitles 3 videos with subtitles (3 segments), 2 without" in out


def test_keyword_index_finds_each_phrase_in_its_video(speech_lib: dict[str, Any], corpus: dict[str, Any]) -> None:
    lib, ids = speech_lib["lib"], by_name(speech_lib["lib"])
    assert "keyword index built" in (speech_lib["summary"].index or "")
    index = KeywordIndex.open(keyword_dir(Library(lib)))
    (s0, e0, _), (s1, e1, _) = corpus["spans"]
    for query, video, lo, hi, source in [("sandcastle", "talk.mp4", s0, e0, "speech"),
                                         ('"small airplane"', "talk.mp4", s1, e1, "speech"),
                                         ("lighthouse", "subs.mp4", 1.0, 2.5, "subtitle"),
                                         ("penguins", "movtext.mp4", 3.0, 4.5, "subtitle"),
                                         ("Genève", "latin.mp4", 2.0, 3.0, "subtitle")]:
        hits = index.search(query, 3)
        assert hits, query
        assert (hits[0].video_id, hits[0].source) == (ids[video], source), query
        assert lo - 1 <= hits[0].start_s <= hits[0].end_s <= hi + 1, (query, hits[0])


def test_search_in_speech_finds_each_spoken_and_subtitled_phrase_at_its_time(
        speech_lib: dict[str, Any], corpus: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """`vidsearch search --in speech` (issue 14, search): the right video, within 1 s, the matched words."""
    lib = str(speech_lib["lib"])
    (s0, e0, _), (s1, e1, _) = corpus["spans"]
    for query, video, lo, hi, source, word in [("sandcastle", "talk.mp4", s0, e0, "speech", "sandcastle"),
                                               ("small airplane", "talk.mp4", s1, e1, "speech", "airplane"),
                                               ("lighthouse keeper", "subs.mp4", 1.0, 2.5, "subtitle", "keeper"),
                                               ("penguins", "movtext.mp4", 3.0, 4.5, "subtitle", "penguins"),
                                               ("Genève", "latin.mp4", 2.0, 3.0, "subtitle", "Genève")]:
        assert main(["-q", "search", query, "--in", "speech", "--library", lib, "--json", "--no-history"]) == 0
        h = json.loads(capsys.readouterr().out)["hits"][0]
        assert (os.path.basename(h["path"]), h["snippet"]["source"]) == (video, source), (query, h)
        assert lo - 1 <= h["start_s"] <= h["play_s"] <= h["end_s"] <= hi + 1, (query, h)
        marked = [h["snippet"]["text"][a:b].lower() for a, b in h["snippet"]["marks"]]
        assert word.lower() in marked, (query, h["snippet"])
    # A spoken hit spans its words, not the whole sentence: "sandcastle" is one word of ~3 s of speech.
    assert main(["-q", "search", "sandcastle", "--in", "speech", "--library", lib, "--json", "--no-history"]) == 0
    h = json.loads(capsys.readouterr().out)["hits"][0]
    assert h["end_s"] - h["start_s"] < 1.5 < e0 - s0
    # By default every modality the library has, fused: the spoken moment comes first, found by both
    # its picture (the tiny model ranks every clip) and its words.
    assert main(["-q", "search", "sandcastle", "--library", lib, "--json", "--no-history"]) == 0
    doc = json.loads(capsys.readouterr().out)
    top = doc["hits"][0]
    assert doc["modalities"] == ["visual", "speech"] and os.path.basename(top["path"]) == "talk.mp4"
    assert set(top["modalities"]) == {"visual", "speech"} and s0 - 1 <= top["play_s"] <= e0 + 1


def test_rerun_redoes_nothing(speech_lib: dict[str, Any], corpus: dict[str, Any], tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    shutil.copytree(speech_lib["lib"], lib)
    shards = Library(lib).read_manifest().shards
    s = ingest(corpus["dir"], lib)
    assert s.exit_code == 0 and s.videos_skipped == 5 and s.embed_calls == 0
    assert (s.speech_videos, s.speech_done_before, s.text_only_videos, s.speech_audio_s) == (0, 5, 0, 0.0)
    assert Library(lib).read_manifest().shards == shards  # not one commit
    assert text_snapshot(lib) == text_snapshot(speech_lib["lib"])


def test_speech_added_later_transcribes_without_re_embedding(speech_lib: dict[str, Any], corpus: dict[str, Any],
                                                            tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    plain = ingest(corpus["dir"], lib, speech=False)
    assert plain.exit_code == 0 and plain.subtitle_videos == 3  # subtitles need no flag
    assert catalog(lib, "SELECT DISTINCT source FROM transcripts") == [("subtitle",)]
    m = Library(lib).read_manifest()
    clip_files = {s.clips_file: (s.clips_sha256, (lib / s.clips_file).stat().st_mtime_ns) for s in m.shards}
    s = ingest(corpus["dir"], lib)
    assert s.exit_code == 0 and s.embed_calls == 0 and s.clips == 0 and s.videos_skipped == 5
    assert (s.text_only_videos, s.speech_videos, s.speech_silent, s.speech_no_audio) == (5, 1, 1, 3)
    m2 = Library(lib).read_manifest()
    new = m2.shards[len(m.shards):]
    assert new and all(e.clips_rows == 0 and e.videos_rows == 0 for e in new)  # transcripts + status only
    assert all(set(e.tables) <= {"transcripts", "text_status"} for e in new)
    assert {f: (sha, (lib / f).stat().st_mtime_ns) for f, (sha, _) in clip_files.items()} == clip_files
    # The same transcripts as transcribing during the first ingest (same model, deterministic ids).
    assert text_snapshot(lib) == text_snapshot(speech_lib["lib"])


def test_a_failed_transcription_fails_the_speech_stage_only(corpus: dict[str, Any], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "v"
    src.mkdir()
    for name in ("talk.mp4", "subs.mp4", "subs.srt"):
        shutil.copy(corpus["dir"] / name, src / name)
    lib = tmp_path / "lib"
    monkeypatch.setenv("VIDSEARCH_TEST_SPEECH_FAULT", "fail:talk.mp4")
    s = ingest(src, lib)
    assert s.exit_code == 2 and s.videos_done == 2 and s.videos_failed == 0 and s.speech_failed == 1
    assert [(f["stage"], f["error_type"]) for f in s.failures] == [("speech", "TranscribeError")]
    ids = by_name(lib)
    assert catalog(lib, "SELECT video_id, stage, error_type FROM failures") == [
        (ids["talk.mp4"], "speech", "TranscribeError")]
    assert catalog(lib, f"SELECT status, num_clips > 0 FROM videos WHERE video_id = '{ids['talk.mp4']}'") == [
        ("done", True)]  # the clips stay
    assert catalog(lib, "SELECT source FROM transcripts") == [("subtitle",)]
    monkeypatch.delenv("VIDSEARCH_TEST_SPEECH_FAULT")
    s = ingest(src, lib)  # retried under the attempt policy; nothing re-embedded
    assert s.exit_code == 0 and s.embed_calls == 0 and s.speech_videos == 1 and s.text_only_videos == 1
    assert catalog(lib, "SELECT status, attempts FROM text_status WHERE kind = 'speech' AND video_id = "
                        f"'{ids['talk.mp4']}'") == [("ok", 2)]
    assert len(catalog(lib, "SELECT * FROM transcripts WHERE source = 'speech'")) == 2


def test_missing_speech_model_offline_is_one_clear_error_before_anything_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "v").mkdir()
    lavfi_video(tmp_path / "v" / "a.mp4", seconds=2, rate=10)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    lib = tmp_path / "lib"
    rc = main(["ingest", str(tmp_path / "v"), "--library", str(lib), "--model", TEST_MODEL, "--executor", "local",
               "--speech", "--speech-model", "small"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert "speech model small not found" in err and "hf download Systran/faster-whisper-small" in err
    assert "huggingface-cli" not in err  # the installed huggingface_hub ships only `hf`
    assert "--speech-model PATH" in err
    assert not lib.exists()  # checked before the lock, the executor or the folder
    assert main(["ingest", str(tmp_path / "v"), "--library", str(lib), "--language", "en"]) == 1
    assert "--language needs --speech" in capsys.readouterr().err


def test_clips_go_ahead_of_a_late_transcript_and_it_follows(speech_lib: dict[str, Any], corpus: dict[str, Any],
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A speech pool behind the embedder: embedded videos do not wait for their transcript past
    the limit (here 0); it follows in a later commit of the same run, and the tables end the same."""
    from vidsearch.pipeline import driver

    monkeypatch.setattr(driver, "_HELD_MAX", 0)
    monkeypatch.setenv("VIDSEARCH_TEST_SPEECH_FAULT", "slow=5:talk.mp4")  # its clips are embedded first
    lib = tmp_path / "lib"
    s = ingest(corpus["dir"], lib, commit_interval_s=0.0)  # a commit per settled video
    assert s.exit_code == 0 and s.speech_held_out >= 1 and s.speech_videos == 1
    talk = by_name(lib)["talk.mp4"]
    with Library(lib).connect_catalog() as con:
        (clips_shard,) = con.execute("SELECT shard_id FROM videos WHERE video_id = ?", [talk]).fetchone()
        speech_shards = {r[0] for r in con.execute("SELECT shard_id FROM transcripts WHERE video_id = ? AND "
                                                   "source = 'speech'", [talk]).fetchall()}
    assert speech_shards and min(speech_shards) > clips_shard
    assert text_snapshot(lib) == text_snapshot(speech_lib["lib"])
