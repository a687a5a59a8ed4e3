"""The demo's narrator: narrated videos carry their lines as a mov_text track (and a voice when
espeak-ng is installed) at the times ``narration.json`` says; others get a sidecar ``.srt``; a
rerun keeps what is there."""

from __future__ import annotations

import os
import re

import pytest
from speech_tools import ESPEAK, whisper_test_model

from vidsearch.demo.narrate import load_narration, narrate_world
from vidsearch.demo.world import generate_world
from vidsearch.pipeline.subtitles import read_subtitles


@pytest.fixture(scope="module")
def narrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object]:
    world = generate_world(tmp_path_factory.mktemp("narrated") / "world", n_videos=3, seed=5, scenes=(3, 3),
                           scene_seconds=(3.0, 3.5))
    return world, narrate_world(world, seed=5)


def test_narrated_and_subtitled_videos(narrated: tuple) -> None:
    world, n = narrated
    videos = sorted(v.relpath for v in world.videos)
    assert n.videos("speech") == {videos[0]} and n.videos("subtitle") == {videos[2]}
    assert n.spoken == (ESPEAK is not None) and bool(n.notes) == (ESPEAK is None)
    lines = [ln for ln in n.lines if ln.relpath == videos[0]]
    scenes = world.video(videos[0]).scenes
    assert lines[0].text == f"Recorded in the {videos[0].split('/')[-2]}."
    assert [ln.text for ln in lines[1:]] == [f"Here, {s.caption}." for s in scenes[1:3]]
    assert all(s.start_s < ln.start_s < ln.end_s <= s.end_s for ln, s in zip(lines, scenes, strict=True))
    # The video's own subtitle track says the same at the same times; the sidecar is read too.
    r = read_subtitles(os.fsencode(world.root / videos[0]), "v0")
    assert [(round(s.start_s, 2), round(s.end_s, 2), s.text) for s in r.segments] == [
        (round(ln.start_s, 2), round(ln.end_s, 2), ln.text) for ln in lines]
    assert {s.track for s in r.segments} == {f"stream:{2 if n.spoken else 1}:mov_text"}  # after the voice
    r = read_subtitles(os.fsencode(world.root / videos[2]), "v2")
    assert [s.text for s in r.segments] == [ln.text for ln in n.lines if ln.relpath == videos[2]]
    assert load_narration(world.root).lines == n.lines
    # A rerun keeps the narrated file as it is.
    before = (world.root / videos[0]).stat().st_mtime_ns
    assert narrate_world(world, seed=5).lines == n.lines
    assert (world.root / videos[0]).stat().st_mtime_ns == before


def test_the_narrator_is_heard(narrated: tuple) -> None:
    if ESPEAK is None:
        pytest.skip("espeak-ng is not installed")
    from vidsearch.pipeline.speech import Transcriber
    from vidsearch.schemas.speech_config import SpeechCfg

    world, n = narrated
    first = sorted(n.videos("speech"))[0]
    t = Transcriber(SpeechCfg(model=str(whisper_test_model()), cpu_threads=2, device="cpu", language="en"))
    r = t.process(os.fsencode(world.root / first), "v0")
    assert r.status == "ok"
    # Whisper tiny.en mishears a word or two of espeak-ng's voice ("record it in the park", "to red
    # heart"), so the words are compared by their first four letters, and most must be heard.
    heard = {w[:4] for w in re.findall(r"[a-z]+", " ".join(s.text.lower() for s in r.segments))}
    lines = [ln for ln in n.lines if ln.relpath == first]
    script = {w[:4] for ln in lines for w in re.findall(r"[a-z]+", ln.text.lower())}
    assert first.split("/")[-2][:4] in heard  # the folder of "Recorded in the <folder>."
    assert len(script & heard) >= 0.75 * len(script), (sorted(script - heard), [s.text for s in r.segments])
    assert abs(r.segments[0].start_s - lines[0].start_s) < 1.0
