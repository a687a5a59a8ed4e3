"""Speech stage with real speech: espeak-ng sentences at known times, transcribed by a real offline Whisper.

Also the path from transcripts to search: keyword index over speech + subtitle rows, hits within
+-1 s of where the words were said, fused with a visual hit list.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from media_tools import ffmpeg, lavfi_video
from speech_tools import need_espeak, speech_video, whisper_test_model

from vidsearch.indexer.keyword import KeywordIndex, build_keyword_index
from vidsearch.pipeline.speech import (
    SpeechError,
    SpeechModelNotFoundError,
    Transcriber,
    clip_words,
    resolve_speech_model,
)
from vidsearch.pipeline.subtitles import read_subtitles
from vidsearch.schemas.speech_config import SpeechCfg
from vidsearch.schemas.text_tables import Word, keyword_docs, transcript_segments, transcripts_table
from vidsearch.search.fusion import ModalityHit, fuse, keyword_hits_to_modality

# Sentences the test model transcribes well (it misses e.g. "water" and "violin" in espeak's voice).
LINES = [(1.0, "The children built a large sandcastle on the beach."),
         (9.0, "A small airplane landed safely in the field.")]


def _norm(t: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", t.lower()).split()


def _wer(ref: str, hyp: str) -> float:
    a, b = _norm(ref), _norm(hyp)
    d = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, d[0] = d[:], i
        for j, y in enumerate(b, 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (x != y))
    return d[-1] / len(a)


@pytest.fixture(scope="module")
def transcriber() -> Transcriber:
    t = Transcriber(SpeechCfg(model=str(whisper_test_model()), cpu_threads=2, device="cpu"))
    t.setup()
    return t


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    need_espeak()
    d = tmp_path_factory.mktemp("speech")
    spans = speech_video(d / "talk.mp4", LINES, seconds=16, workdir=d)
    (d / "talk.wav0").mkdir()  # stray folder beside the video: never read
    lavfi_video(d / "mute.mp4", seconds=3, rate=10)
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x64:rate=10:duration=4", "-f", "lavfi", "-i",
           "anullsrc=r=44100:cl=stereo", "-c:v", "libx264", "-c:a", "aac", "-t", "4", d / "quiet.mp4")
    return {"dir": d, "talk": d / "talk.mp4", "spans": spans, "mute": d / "mute.mp4", "quiet": d / "quiet.mp4"}


def test_transcribes_espeak_speech_at_the_right_times(transcriber: Transcriber, videos: dict) -> None:
    r = transcriber.process(os.fsencode(videos["talk"]), "talk")
    assert r.status == "ok" and r.language == "en"
    assert 15.5 < r.audio_s < 16.5 and 0 < r.speech_s < 12
    text = " ".join(s.text for s in r.segments)
    ref = " ".join(t for _, t in LINES)
    assert _wer(ref, text) < 0.35, text
    words = [w for s in r.segments for w in s.words or ()]
    for key, (start, end, _line) in zip(("sandcastle", "airplane"), videos["spans"], strict=True):
        hit = [w for w in words if key in w.word.lower()]
        assert hit, f"{key!r} not in {text!r}"
        assert start - 0.5 <= hit[0].start_s <= end + 0.5
        assert hit[0].end_s <= end + 0.5
    for s in r.segments:
        assert s.source == "speech" and s.track == "asr" and s.model == transcriber.model_id
        assert s.start_s <= s.end_s and all(s.start_s <= w.start_s <= w.end_s <= s.end_s for w in s.words or ())
    # One row per utterance (Whisper saw both glued together), and the last word of each stops
    # near where the voice did, not in the pause after it.
    assert len(r.segments) == 2
    for (start, end, _line), seg in zip(videos["spans"], r.segments, strict=True):
        assert start - 0.5 <= seg.start_s and seg.end_s <= end + 0.5
    # Same input, same rows (ids deterministic): a rerun rewrites nothing.
    again = transcriber.process(os.fsencode(videos["talk"]), "talk")
    assert [s.segment_id for s in again.segments] == [s.segment_id for s in r.segments]
    # The table round-trips (probabilities are stored as float32).
    def key(segs: list) -> list:
        return [(s.segment_id, s.start_s, s.end_s, s.text, s.language, [(w.start_s, w.end_s, w.word) for w in s.words],
                 round(s.avg_logprob, 5), round(s.words[0].prob, 5)) for s in segs]

    assert key(transcript_segments(transcripts_table(r.segments, "run1"))) == key(r.segments)


def test_no_audio_and_silence_are_not_failures(transcriber: Transcriber, videos: dict) -> None:
    r = transcriber.process(os.fsencode(videos["mute"]), "mute")
    assert (r.status, r.segments) == ("no_audio", [])
    r = transcriber.process(os.fsencode(videos["quiet"]), "quiet")
    assert (r.status, r.segments, r.speech_s) == ("silent", [], 0.0)
    assert 3.9 < r.audio_s < 4.2


def test_unreadable_audio_is_a_speech_error(transcriber: Transcriber, tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    with pytest.raises(SpeechError) as e:
        transcriber.process(os.fsencode(bad), "bad")
    assert e.value.error_type == "AudioDecodeError" and e.value.stage == "speech"


def test_search_finds_spoken_and_subtitled_phrases(transcriber: Transcriber, videos: dict, tmp_path: Path) -> None:
    talk = transcriber.process(os.fsencode(videos["talk"]), "talk")
    # a second video whose words exist only as subtitles
    srt = videos["dir"] / "mute.srt"
    srt.write_text("1\n00:00:01,200 --> 00:00:02,400\nThe lighthouse keeper waves\n")
    try:
        subs = read_subtitles(os.fsencode(videos["mute"]), "mute")
    finally:
        srt.unlink()
    table = transcripts_table([*talk.segments, *subs.segments], "run1")
    build_keyword_index(keyword_docs(table), tmp_path / "text", covers={"transcripts-1": "x"})
    index = KeywordIndex.open(tmp_path / "text")
    (t_start, t_end, _), (o_start, o_end, _) = videos["spans"]
    hits = index.search("sandcastle", 5)
    assert hits and hits[0].video_id == "talk" and hits[0].source == "speech"
    assert t_start - 1 <= hits[0].start_s <= hits[0].end_s <= t_end + 1
    assert hits[0].end_s - hits[0].start_s < 1.5  # the matched word, not the whole sentence
    assert "«" in hits[0].snippet.render()
    hits = index.search('"small airplane"', 5)
    assert hits and hits[0].video_id == "talk" and o_start - 1 <= hits[0].start_s <= o_end + 1
    hits = index.search("lighthouse", 5, modalities=["speech"])
    assert [(h.video_id, h.source, h.start_s, h.end_s) for h in hits] == [("mute", "subtitle", 1.2, 2.4)]
    # fused with a visual list: the moment found by both comes first
    visual = [ModalityHit("visual", "other", 0.0, 4.0, 0.31), ModalityHit("visual", "talk", 0.0, 4.0, 0.29)]
    fused = fuse({"visual": visual, **keyword_hits_to_modality(index.search("sandcastle", 5))}, k=5)
    assert fused[0].video_id == "talk" and set(fused[0].modalities) == {"visual", "speech"}
    assert fused[0].play_s == pytest.approx(hits_start := index.search("sandcastle", 1)[0].start_s) and hits_start > 0


def test_clip_words_to_voice_activity() -> None:
    words = [Word(1.0, 1.4, " Hello", 0.9), Word(1.4, 4.8, " there.", 0.8), Word(6.0, 6.3, " Next", 0.9),
             Word(9.5, 9.9, " stray", 0.5)]
    regions = [(0.9, 2.0), (5.9, 7.0)]
    out = clip_words(words, regions)
    assert [(w.start_s, w.end_s) for w in out] == [(1.0, 1.4), (1.4, 2.0), (6.0, 6.3), (7.0, 7.0)]
    assert clip_words(words, []) == words


def test_model_resolution_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(SpeechModelNotFoundError, match="missing model.bin, tokenizer.json, vocabulary.txt"):
        resolve_speech_model(str(tmp_path / "half"))
    with pytest.raises(SpeechModelNotFoundError, match="does not exist"):
        resolve_speech_model(str(tmp_path / "nowhere" / "x"))
    with pytest.raises(SpeechModelNotFoundError, match="unknown speech model 'tiniest'"):
        resolve_speech_model("tiniest")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(SpeechModelNotFoundError, match=r"hf download Systran/faster-whisper-small"):
        resolve_speech_model("small")


def test_local_model_id_is_stable() -> None:
    p = whisper_test_model()
    a, b = resolve_speech_model(str(p)), resolve_speech_model(str(p))
    assert a == b and a.model_id.startswith("local:model@")
