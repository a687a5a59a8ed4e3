"""Test tiers, and session-wide fixtures: ffmpeg-generated videos and one Ray runtime.

Tiers (docs/RELIABILITY.md §8.4; README "Tests"): ``python -m pytest`` runs the fast default
tier; ``python -m pytest -m "not gpu"`` the full one. Which test belongs to the ``reliability``
or ``slow`` tier is decided here, in :data:`TIERS`, not by markers in the test modules, so that
moving a test between tiers is one line in one file.

Every video is generated once per test session with the ffmpeg binary of ``imageio-ffmpeg`` and
``lavfi`` sources (docs/RELIABILITY.md §8 conventions), small enough for 2 CPU cores:

* :func:`media_videos` — good videos of several codecs, sizes and frame rates, a VFR one, rotated
  ones, a 1-frame one, a 0.5 s one and one with known scene cuts (:data:`CUTS_S`), keyed by name.
* :func:`bad_inputs` — the bad-input rows of docs/RELIABILITY.md §8.1 (B1-B19, B22) in one folder,
  keyed by row id.
* :func:`fault_corpus` — four small videos ``v0.mp4`` .. ``v3.mp4`` (1-3 clips each), the corpus
  of the fault tests, and :func:`clean_library` — that corpus ingested once, undisturbed (the
  library every faulted run must end up equal to). Read-only: copy it to change it.
* :func:`ray_session` — ``ray.init`` once for the whole session (2 CPUs, no dashboard).

Use ``media_tools.ffmpeg`` / ``media_tools.lavfi_video`` to make more (import them from
``media_tools``, not from ``conftest``: several conftest modules exist). Other engineers' tests
may use these fixtures; names are stable.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from media_tools import CUTS_S, DEMO_VIDEO, TEST_MODEL, ffmpeg, ffmpeg_exe, lavfi_video  # noqa: F401

TESTS = Path(__file__).resolve().parent

# Tier of each test, by the longest matching pattern: a folder ("reliability/"), a file, a test
# ("file.py::test_x") or one parametrization ("file.py::test_x[param]"). Tests that match
# nothing are in the default tier; a test module's own ``slow``/``gpu`` markers still apply.
# The default tier must stay meaningful on its own: ingest (local and one Ray run), index, search,
# SQL, serve and the page, security basics (S1-S10), one CLI crash point.
TIERS: dict[str, str] = {
    # The fault and bad-input matrix: minutes of ingests, kills and timeouts.
    "reliability/": "reliability",
    # ...but these stay in the default tier: seconds each, on synthetic libraries.
    "reliability/test_security.py": "default",
    "reliability/test_index_faults.py": "default",
    # One CLI crash point (kill -9 between shard rename and manifest, then resume); the others
    # and the random Ray kill are in the reliability tier.
    "reliability/test_faults.py::test_f6_kill_at_each_crash_point_then_resume[after_rename_before_manifest]":
        "default",
    # Library-level crash points: the remote store's recovery stays (it deletes unlisted objects);
    # the local points are covered by the CLI crash point above.
    "unit/test_library.py::test_kill_at_each_crash_point_then_recover": "reliability",
    "unit/test_library.py::test_kill_at_each_crash_point_then_recover[after_rename_before_manifest-True]": "default",
    # Faults on an object store (F6, F10), beside the feature tests of test_remote_shards.py.
    "integration/test_remote_shards.py::test_kill_after_upload_before_manifest_then_rerun_recovers": "reliability",
    "integration/test_remote_shards.py::test_f10_corrupt_object_is_set_aside_and_its_videos_re_ingested":
        "reliability",
    # A failed transcription and its retry (two ingests); the default tier keeps speech ingest,
    # rerun and speech added later (test_ingest_speech.py), the kills are in reliability/.
    "integration/test_ingest_speech.py::test_a_failed_transcription_fails_the_speech_stage_only": "reliability",
    "integration/test_ingest_speech.py::test_clips_go_ahead_of_a_late_transcript_and_it_follows": "reliability",
    # Likewise a failed OCR and its retry; the default tier keeps ingest --ocr, rerun and OCR added
    # later (test_ingest_ocr.py), the kills and the slow-pool cases are in reliability/.
    "integration/test_ingest_ocr.py::test_a_failed_ocr_fails_the_ocr_stage_only": "reliability",
    # A second Ray run (a `vidsearch ingest` child starts its own Ray): the default tier keeps one,
    # test_ingest.py's; this one checks Ray's progress output without a terminal.
    "integration/test_ingest_cli.py::test_ray_ingest_says_what_it_does_and_shows_progress_without_a_terminal":
        "slow",
    # Likewise the GPU-decode path through Ray (the embed actor's NVDEC group, PyAV standing in):
    # the default tier runs the same path with the local executor (test_mixed_corpus_gpu_path_...).
    "integration/test_ingest_gpu_decode.py::test_ray_executor_gpu_path_equals_cpu_path": "slow",
    # OCR videos under GPU decode go to the CPU path (a third ingest of the OCR corpus, ~7 s); the
    # default tier keeps ingest --ocr, its search, rerun and OCR added later.
    "integration/test_ingest_ocr.py::test_videos_with_ocr_are_decoded_on_the_cpu_path": "slow",
    # F12 over HTTP: an ingest while the server answers (also a CLI F12 test in test_faults_storage).
    "integration/test_serve_api.py::test_search_keeps_answering_during_an_ingest": "reliability",
    # The demo model's retrieval quality on a 20-video world (~2 min of ingest and queries); the
    # default tier runs `vidsearch demo` itself (test_vidsearch_demo_command).
    "integration/test_demo_e2e.py::test_text_search_recall": "slow",
    "integration/test_demo_e2e.py::test_right_moment_brackets_its_scene_within_one_clip": "slow",
    "integration/test_demo_e2e.py::test_query_by_example_returns_the_same_kind_of_scene": "slow",
    "integration/test_demo_e2e.py::test_path_filter_with_text_returns_only_matching_hits_in_order": "slow",
    "integration/test_demo_e2e.py::test_default_min_score_keeps_the_right_answers": "slow",
    "integration/test_demo_e2e.py::test_demo_folder_suggestion_has_an_answer": "slow",
    # Zero-shot tags and eval on a demo world (~1-2 min: a 10-video ingest with the demo model); the
    # default tier keeps the CLI tests of issue 16 on a small library (test_hits_cli.py).
    "integration/test_tags_eval_demo.py": "slow",
    # Read commands change nothing (R1): one damage in the default tier (a lagging catalog, D9 too).
    "reliability/test_read_commands.py::test_searches_answer_around_damage_and_change_nothing[stale catalog]":
        "default",
}


def tier_of(test_id: str) -> str:
    """The tier of a test id relative to ``tests/`` (``"unit/test_x.py::test_y[p]"``)."""
    best, tier = -1, "default"
    for pattern, t in TIERS.items():
        hit = (test_id.startswith(pattern) if pattern.endswith("/") else
               test_id == pattern or test_id.startswith((pattern + "::", pattern + "[")))
        if hit and len(pattern) > best:
            best, tier = len(pattern), t
    return tier


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            rel = item.path.resolve().relative_to(TESTS).as_posix()
        except ValueError:
            continue
        tier = tier_of(rel + item.nodeid[item.nodeid.index("::"):] if "::" in item.nodeid else rel)
        if tier != "default":
            item.add_marker(tier)


@pytest.fixture(scope="session")
def media_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good videos (name -> path) in one folder; the folder is ``media_videos['h264'].parent``."""
    d = tmp_path_factory.mktemp("media")
    v: dict[str, Path] = {}
    v["h264"] = lavfi_video(d / "h264_96x64_30fps.mp4", seconds=5)
    v["mpeg4"] = lavfi_video(d / "mpeg4_128x72_25fps.avi", size="128x72", rate=25, seconds=9, codec="mpeg4")
    v["vp9"] = lavfi_video(d / "vp9_80x48_24fps.webm", size="80x48", rate=24, seconds=3,
                           codec="libvpx-vp9", extra=("-deadline", "realtime", "-cpu-used", "8"))
    # VFR: frame times N*40 ms + 20 ms on every third frame -> deltas of 20, 40 and 60 ms. The
    # times are set in a 1 ms time base and encoded in one: with the source's 1/25 s (ffmpeg n9)
    # every frame came out 40 ms apart, a constant rate (test_b15 checks the deltas).
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25:duration=4",
           "-vf", "settb=1/1000,setpts='N*40+20*eq(mod(N\\,3)\\,0)'", "-fps_mode", "vfr",
           "-enc_time_base", "1/1000", "-c:v", "libx264", "-pix_fmt", "yuv420p", d / "vfr.mp4")
    v["vfr"] = d / "vfr.mp4"
    v["rot90"] = d / "rot90.mp4"
    ffmpeg("-display_rotation", "90", "-i", v["h264"], "-c", "copy", v["rot90"])
    v["one_frame"] = lavfi_video(d / "one_frame.mp4", seconds=1, extra=("-frames:v", "1"))
    v["short"] = lavfi_video(d / "short_0.5s.mp4", seconds=0.5)
    cuts = d / "cuts.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25:duration=2",
           "-f", "lavfi", "-i", "color=c=red:size=96x64:rate=25:duration=3",
           "-f", "lavfi", "-i", "mandelbrot=size=96x64:rate=25:end_pts=2",
           "-filter_complex", "[0:v][1:v][2:v]concat=n=3:v=1:a=0[v]", "-map", "[v]", "-t", "7",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", cuts)
    v["cuts"] = cuts
    return v


@pytest.fixture(scope="session")
def shared_demo_video() -> Path:
    """The official InternVideo2 demo video (MPEG-4 Part 2, 640x480, 5 fps, 8 s) in ``tests/data/``."""
    return DEMO_VIDEO


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory, media_videos: dict[str, Path]) -> dict[str, Path]:
    """docs/RELIABILITY.md §8.1 bad inputs in one folder (row id -> path; folder = ``['dir']``).

    Also holds ``good`` (a normal video) so tests can check the rest is ingested.
    """
    d = tmp_path_factory.mktemp("bad")
    b: dict[str, Path] = {"dir": d}
    good = media_videos["h264"].read_bytes()
    b["good"] = d / "good.mp4"
    b["good"].write_bytes(good)
    b["B1"] = d / "b01_empty.mp4"
    b["B1"].write_bytes(b"")
    moov_end = lavfi_video(d.parent / "moov_end.mp4", seconds=4, size="128x96").read_bytes()
    b["B2"] = d / "b02_truncated_moov_at_end.mp4"
    b["B2"].write_bytes(moov_end[: len(moov_end) // 2])
    fast = lavfi_video(d.parent / "fast.mp4", seconds=4, size="128x96", extra=("-movflags", "+faststart"))
    data = fast.read_bytes()
    b["B3"] = d / "b03_truncated_faststart.mp4"
    b["B3"].write_bytes(data[: len(data) // 2])
    z = bytearray(data)
    n = len(z)
    z[n // 2: n // 2 + n // 10] = bytes(n // 10)
    b["B4"] = d / "b04_zeroed.mp4"
    b["B4"].write_bytes(bytes(z))
    b["B5"] = d / "b05_random.mp4"
    b["B5"].write_bytes(os.urandom(50_000))
    b["B6"] = d / "b06_text.mp4"
    b["B6"].write_text("this is not a video\n" * 20)
    b["B7_txt"] = d / "b07_real_video.txt"
    lavfi_video(d.parent / "b07.mp4", seconds=2, size="64x48")
    b["B7_txt"].write_bytes((d.parent / "b07.mp4").read_bytes())
    b["B7_noext"] = d / "b07_noext"
    lavfi_video(d.parent / "b07n.mp4", seconds=2, size="72x48")
    b["B7_noext"].write_bytes((d.parent / "b07n.mp4").read_bytes())
    b["B8"] = d / "b08_png.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48", "-frames:v", "1", "-f", "image2", "-c:v", "png", b["B8"])
    b["B9"] = d / "b09_audio_only.m4a"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:a", "aac", b["B9"])
    b["B10_av1"] = lavfi_video(d / "b10_av1.mp4", seconds=2, size="64x48", codec="libsvtav1",
                               extra=("-preset", "12"))
    b["B10_hevc"] = lavfi_video(d / "b10_hevc.mp4", seconds=2, size="64x48", codec="libx265",
                                extra=("-x265-params", "log-level=none"))
    b["B10_vp9"] = lavfi_video(d / "b10_vp9.webm", seconds=2, size="64x48", codec="libvpx-vp9",
                               extra=("-deadline", "realtime", "-cpu-used", "8"))
    b["B11"] = d / "b11_one_frame.mp4"
    shutil.copy(media_videos["one_frame"], b["B11"])
    b["B12"] = d / "b12_short.mp4"
    shutil.copy(media_videos["short"], b["B12"])
    b["B15"] = d / "b15_vfr.mp4"
    shutil.copy(media_videos["vfr"], b["B15"])
    for deg in (90, 180, 270):
        b[f"B16_{deg}"] = d / f"b16_rot{deg}.mp4"
        ffmpeg("-display_rotation", str(deg), "-i", media_videos["h264"], "-c", "copy", b[f"B16_{deg}"])
        # distinct content per rotation: the display matrix differs, so the bytes differ.
    lavfi_video(d.parent / "b17.mp4", seconds=2, size="48x32")
    b17 = (d.parent / "b17.mp4").read_bytes()
    nonutf8 = os.path.join(os.fsencode(d), b"b17_\xff\xfe.mp4")
    with open(nonutf8, "wb") as f:
        f.write(b17)
    b["B17_bytes"] = Path(os.fsdecode(nonutf8))
    b["B17_newline"] = d / "b17_new\nline.mp4"
    lavfi_video(d.parent / "b17n.mp4", seconds=2, size="48x40")
    b["B17_newline"].write_bytes((d.parent / "b17n.mp4").read_bytes())
    b["B17_dash"] = d / "-b17_dash.mp4"
    lavfi_video(d.parent / "b17d.mp4", seconds=2, size="56x32")
    b["B17_dash"].write_bytes((d.parent / "b17d.mp4").read_bytes())
    (d / "sub").mkdir()
    b["B18_loop"] = d / "sub" / "self"
    os.symlink("..", b["B18_loop"])
    b["B18_dangling"] = d / "b18_dangling.mp4"
    os.symlink(d / "does_not_exist.mp4", b["B18_dangling"])
    b["B18_alias"] = d / "sub" / "b18_alias.mp4"
    os.symlink(b["good"], b["B18_alias"])
    b["B19_copy"] = d / "sub" / "b19_same_content.mp4"
    b["B19_copy"].write_bytes(good)
    b["B22_fifo"] = d / "b22_fifo.mp4"
    os.mkfifo(b["B22_fifo"])
    b["B22_devzero"] = d / "b22_devzero.mp4"
    os.symlink("/dev/zero", b["B22_devzero"])
    b["B22_dir"] = d / "b22_dir.mp4"
    b["B22_dir"].mkdir()
    b["B22_unreadable"] = d / "b22_unreadable.mp4"
    lavfi_video(d.parent / "b22u.mp4", seconds=2, size="40x32")
    b["B22_unreadable"].write_bytes((d.parent / "b22u.mp4").read_bytes())
    os.chmod(b["B22_unreadable"], 0)
    return b


@pytest.fixture(scope="session")
def fault_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four small 10 fps videos ``v0.mp4`` .. ``v3.mp4`` of 6, 9, 3 and 5 s (4 s clips: 2, 3, 1, 2)."""
    d = tmp_path_factory.mktemp("fault_corpus")
    for i, (size, secs) in enumerate([("64x48", 6), ("80x48", 9), ("48x48", 3), ("64x64", 5)]):
        lavfi_video(d / f"v{i}.mp4", size=size, seconds=secs, rate=10)
    return d


def _tree_digest(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def clean_library(fault_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``fault_corpus`` ingested once, undisturbed: one shard per video, with its FAISS index.

    Shared by every test that compares a faulted run with a clean one, so it must never change:
    copy it (``shutil.copytree``) to damage it. Teardown fails if any test changed a file in it.
    """
    from vidsearch.library import Library
    from vidsearch.pipeline.runner import IngestOptions, run_ingest
    from vidsearch.schemas.config import IngestCfg

    lib = tmp_path_factory.mktemp("clean_library") / "lib"
    s = run_ingest([fault_corpus], lib, IngestCfg(decode_workers=1, shard_rows=1, batch_size=4),
                   IngestOptions(model=TEST_MODEL, executor="local", progress=False))
    assert (s.videos_done, s.videos_failed) == (4, 0)
    assert len(Library(lib).read_manifest().shards) == 4
    before = _tree_digest(lib)
    yield lib
    assert _tree_digest(lib) == before, "a test changed the shared clean_library; copy it instead"


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray runtime for the whole test session (started on first use)."""
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        started = True
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def _private_runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Per-user state goes to folders of this session, not the user's (children inherit them):
    servers started by tests advertise themselves to `vidsearch search` there
    (VIDSEARCH_RUNTIME_DIR, vidsearch.search.remote), and the user cache (VIDSEARCH_CACHE_DIR:
    NumPy text towers converted by searches, remembered checkpoint digests, read commands' crash
    logs) lives there."""
    names = ("VIDSEARCH_RUNTIME_DIR", "VIDSEARCH_CACHE_DIR")
    old = {n: os.environ.get(n) for n in names}
    os.environ["VIDSEARCH_RUNTIME_DIR"] = str(tmp_path_factory.mktemp("runtime"))
    os.environ["VIDSEARCH_CACHE_DIR"] = str(tmp_path_factory.mktemp("user_cache"))
    yield
    for n, v in old.items():
        if v is None:
            os.environ.pop(n, None)
        else:
            os.environ[n] = v
