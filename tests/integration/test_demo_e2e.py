"""End to end on the generated demo world: real CLI ingest (Ray) -> FAISS index -> search.

Uses the shipped demo model ``internvideo2-demo`` on H.264 files written by the demo generator, so
every stage runs for real: decode, fixed-window segmentation, frame sampling, embedding, shards,
catalog, index, text/example search, DuckDB filters, moment merging. The world has a fixed seed
that the demo model never saw (training renders scenes from other seed streams).

Asserts the issue-5 targets: text->moment R@1 >= 0.8 and R@5 >= 0.95 with the canonical captions
and with held-out paraphrases; the right moment brackets its scene within one clip; query by
example returns the same kind of scene first; a path filter combined with text returns only
matching, correctly ranked hits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vidsearch.cli import main
from vidsearch.demo.captions import Attributes, CaptionStyle, sample_caption
from vidsearch.demo.model import load_demo_model, weights_path
from vidsearch.demo.run import DEMO_CLIP_SECONDS, DEMO_STRIDE, DemoQuery, check_result, scene_at
from vidsearch.demo.world import SceneTruth, VideoTruth, World, generate_world
from vidsearch.library import Library
from vidsearch.search.searcher import Filters, Searcher

pytestmark = pytest.mark.ray

SEED = 20240611  # a world the demo model never saw
N_VIDEOS = 20
W = str(weights_path())


@pytest.fixture(scope="module")
def demo(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("demo_e2e")
    world = generate_world(root / "world", n_videos=N_VIDEOS, seed=SEED)
    lib = root / "lib"
    rc = main(["-q", "ingest", str(world.root / "videos"), "--library", str(lib), "--model", "internvideo2-demo",
               "--checkpoint", W, "--clip-seconds", str(DEMO_CLIP_SECONDS), "--stride", str(DEMO_STRIDE),
               "--decode-workers", "1"])
    assert rc == 0
    searcher = Searcher(Library(lib), model=load_demo_model(), record_history=False)
    yield {"world": world, "lib": lib, "searcher": searcher}
    searcher.close()


def _unique_scenes(world: World) -> list[tuple[VideoTruth, SceneTruth]]:
    """One scene per distinct attribute set (a query is about a kind of scene)."""
    seen: set[Attributes] = set()
    out = []
    for v, s in world.scenes():
        if s.attributes not in seen:
            seen.add(s.attributes)
            out.append((v, s))
    return out


def _queries(world: World, style: CaptionStyle) -> list[DemoQuery]:
    rng = np.random.default_rng(SEED)
    return [DemoQuery(sample_caption(s.attributes, rng, style), s.attributes, style)
            for _, s in _unique_scenes(world)]


@pytest.mark.parametrize("style", ["canonical", "paraphrase"])
def test_text_search_recall(demo: dict[str, Any], style: CaptionStyle) -> None:
    world, lib, searcher = demo["world"], demo["lib"], demo["searcher"]
    qs = _queries(world, style)
    assert len(qs) >= 60
    # Ranking alone: no min_score cut (test_default_min_score_* measures the cut).
    first = [check_result(world, lib, q, searcher.search(q.text, k=5, use_default_min_score=False).hits).first_correct
             for q in qs]
    r1 = np.mean([f == 1 for f in first])
    r5 = np.mean([f is not None for f in first])
    print(f"{style}: {len(qs)} queries over {Library(lib).read_manifest().total_clips} clips: "
          f"R@1 {r1:.3f} R@5 {r5:.3f}")
    assert r1 >= 0.8 and r5 >= 0.95


def _bracketed(hit_start: float, hit_end: float, s: SceneTruth) -> bool:
    return abs(hit_start - s.start_s) <= DEMO_CLIP_SECONDS and abs(hit_end - s.end_s) <= DEMO_CLIP_SECONDS


def test_right_moment_brackets_its_scene_within_one_clip(demo: dict[str, Any],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """For scenes of a kind that occurs once, the right moment's edges are within one clip of the cuts."""
    world, lib, searcher = demo["world"], demo["lib"], demo["searcher"]
    counts: dict[Attributes, int] = {}
    for _, s in world.scenes():
        counts[s.attributes] = counts.get(s.attributes, 0) + 1
    unique = [(v, s) for v, s in world.scenes() if counts[s.attributes] == 1]
    found = bracketed = covered = 0
    for v, s in unique:
        path = str((world.root / v.relpath).resolve())
        for h in searcher.search(s.caption, k=5, use_default_min_score=False).hits:
            if str(Path(h.path).resolve()) == path and h.start_s < s.end_s and h.end_s > s.start_s:
                found += 1
                ok = _bracketed(h.start_s, h.end_s, s)
                bracketed += ok
                covered += h.start_s <= s.start_s + DEMO_CLIP_SECONDS and h.end_s >= s.end_s - DEMO_CLIP_SECONDS
                if not ok:
                    with capsys.disabled():
                        print(f"not bracketed: {s.caption} scene {s.start_s}-{s.end_s} moment {h.start_s}-{h.end_s}")
                break
    with capsys.disabled():
        print(f"{found}/{len(unique)} unique scenes found in the top 5, {bracketed} bracketed within one clip, "
              f"{covered} covered")
    # Measured on this seed: 80/80 found, 79 bracketed, 79 covered. Without the merge score margin
    # (SearchCfg.merge_score_margin) it was 69 bracketed: clips straddling a cut were merged in.
    assert found >= 0.95 * len(unique) and covered >= 0.95 * found and bracketed >= 0.95 * found
    # The same through the CLI for one scene found at rank 1.
    for v, s in unique:
        capsys.readouterr()
        assert main(["search", s.caption, "--library", str(lib), "--checkpoint", W, "--json", "-k", "3",
                     "--no-history", "--min-score", "off"]) == 0
        hit = json.loads(capsys.readouterr().out)["hits"][0]
        if Path(hit["path"]).resolve() == (world.root / v.relpath).resolve():
            assert _bracketed(hit["start_s"], hit["end_s"], s)
            break
    else:
        pytest.fail("no unique scene was found at rank 1 through the CLI")


def test_query_by_example_returns_the_same_kind_of_scene(demo: dict[str, Any],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    world, lib, searcher = demo["world"], demo["lib"], demo["searcher"]
    with Library(lib).connect_catalog() as con:
        clips = con.execute("SELECT clip_id, path, video_id, start_s, end_s FROM clips "
                            "ORDER BY path, start_s").fetchall()
    # Example clips lying wholly inside a scene of at least 4 s (so it has other clips).
    examples = []
    for clip_id, path, video_id, a, b in clips:
        s = scene_at(world, path, a)
        if s is not None and b <= s.end_s and s.end_s - s.start_s >= 4:
            examples.append((clip_id, video_id, s))
    examples = examples[:: max(1, len(examples) // 20)][:20]
    assert len(examples) >= 15
    same = close = close3 = 0
    for clip_id, video_id, s in examples:
        q = DemoQuery("", s.attributes, "canonical")
        res = searcher.search(like_clip_id=clip_id, k=3)  # the example clip itself is left out
        same += check_result(world, lib, q, res.hits).first_correct == 1
        # In other videos (almost every attribute set is unique in a world of ~1100 kinds), the
        # nearest scene still shares at least two of the four attributes.
        other = searcher.search(like_clip_id=clip_id, k=1,
                                filters=Filters(where=f"videos.video_id <> '{video_id}'")).hits[0]
        h = check_result(world, lib, q, [other]).hits[0]
        t = scene_at(world, h.path, 0.5 * (h.clip_start_s + h.clip_end_s))
        assert t is not None
        shared = sum(x == y for x, y in zip(t.attributes.key, s.attributes.key, strict=True))
        close += shared >= 2
        close3 += shared >= 3
    with capsys.disabled():
        print(f"query by example: {same}/{len(examples)} same kind first; in other videos {close} share >= 2 "
              f"attributes, {close3} >= 3")
    assert same >= 0.75 * len(examples) and close >= 0.75 * len(examples)
    capsys.readouterr()
    clip_id, _, s = examples[0]
    assert main(["search", "--like", str(clip_id), "--library", str(lib), "--json", "-k", "1", "--no-history"]) == 0
    hit = json.loads(capsys.readouterr().out)["hits"][0]
    assert scene_at(world, hit["path"], 0.5 * (hit["start_s"] + hit["end_s"])).attributes == s.attributes


def test_path_filter_with_text_returns_only_matching_hits_in_order(demo: dict[str, Any],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    world, lib, searcher = demo["world"], demo["lib"], demo["searcher"]
    studio = [(v, s) for v, s in world.scenes() if "/studio/" in v.relpath]
    v, s = studio[len(studio) // 2]
    capsys.readouterr()
    assert main(["search", s.caption, "--library", str(lib), "--checkpoint", W, "--path", "*/studio/*",
                 "--min-score", "off", "--json", "-k", "5", "--no-history"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 5
    assert all("/studio/" in h["path"] for h in hits)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    top = hits[0]
    assert scene_at(world, top["path"], 0.5 * (top["start_s"] + top["end_s"])).attributes == s.attributes
    # Correctly ranked: brute force over every studio clip agrees on the best clip and its score.
    with Library(lib).connect_catalog() as con:
        ids = [r[0] for r in con.execute("SELECT clip_id FROM clips WHERE path GLOB '*/studio/*'").fetchall()]
    q = np.asarray(searcher.encode_text(s.caption), np.float32).ravel()
    brute = {i: float(np.dot(q, searcher.vector_of(i))) for i in ids}
    best = max(brute, key=brute.__getitem__)
    assert int(top["clip_id"]) == best  # ids are decimal strings in JSON
    for h in hits:
        assert h["score"] == pytest.approx(brute[int(h["clip_id"])], abs=1e-4)


@pytest.mark.parametrize("style", ["canonical", "paraphrase"])
def test_default_min_score_keeps_the_right_answers(demo: dict[str, Any], style: CaptionStyle) -> None:
    """The demo model's min_score (0.9, measured by bench/min_score.py on the seed-0 world) checked
    on this world it never saw: the right hit of nearly every answerable query clears it."""
    world, lib, searcher = demo["world"], demo["lib"], demo["searcher"]
    qs = _queries(world, style)
    results = [searcher.search(q.text, k=5) for q in qs]
    assert all(r.min_score == pytest.approx(0.9) for r in results)
    kept = np.mean([check_result(world, lib, q, r.hits).first_correct is not None
                    for q, r in zip(qs, results, strict=True)])
    print(f"{style}: right hit kept above min_score for {kept:.3f} of {len(qs)} queries")
    assert kept >= 0.95


def test_demo_folder_suggestion_has_an_answer(demo: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from vidsearch.demo.captions import canonical_caption
    from vidsearch.demo.run import folder_example

    world, lib = demo["world"], demo["lib"]
    suggestion = folder_example(world, 0)
    assert suggestion is not None
    text, folder = suggestion
    kinds = {s.attributes for v, s in world.scenes()
             if Path(v.relpath).parent.name == folder and canonical_caption(s.attributes) == text}
    assert kinds  # a scene of that folder shows it
    capsys.readouterr()
    assert main(["search", text, "--library", str(lib), "--checkpoint", W, "--folder", folder, "--json", "-k", "3",
                 "--no-history"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert not doc["no_good_match"] and doc["hits"]
    top = doc["hits"][0]
    assert f"/{folder}/" in top["path"]
    assert scene_at(world, top["path"], 0.5 * (top["start_s"] + top["end_s"])).attributes in kinds


def test_vidsearch_demo_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The local executor: the default tier's Ray run is test_ingest.py (the `demo` fixture above
    # ingests on Ray in the slow tier); everything else is the command a newcomer runs first.
    assert main(["demo", "--library", str(tmp_path / "d"), "--videos", "6", "--queries", "3", "--seed", "3",
                 "--executor", "local"]) == 0
    out = capsys.readouterr().out
    assert "NOT the real InternVideo2" in out and "vidsearch search" in out and "vidsearch weights download" in out
    assert out.count("✓ 1.") >= 2  # at least two of three searches right at rank 1
    import re

    assert re.search(r"✓ 1\. \d\d:\d\d:\d\d\.\d{3}-\d\d:\d\d:\d\d\.\d{3}  ", out)  # the one time format
    assert re.search(r"vidsearch search '[a-z ]+' --library .* --folder [a-z]+\n", out)  # a suggestion with an answer
    assert (tmp_path / "d" / "world" / "world.json").is_file()
    # The ground truth as a queries file, and the figures printed are vidsearch eval's on it: the
    # pictures alone (the demo model), and apart from them every modality fused (the narrator).
    qfile = tmp_path / "d" / "world" / "queries.jsonl"
    assert len(qfile.read_text().splitlines()) == 3
    m = re.search(r"vidsearch eval of these 3 queries .*, the pictures alone \(--in visual: the demo model\): "
                  r"recall@1 ([0-9.]+) \(\d/3\), recall@5 ([0-9.]+)", out)
    assert m is not None and f"vidsearch eval {qfile} --library {tmp_path / 'd'} --in visual" in out
    assert main(["-q", "eval", str(qfile), "--library", str(tmp_path / "d"), "--in", "visual", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (f"{doc['recall_at_1']:.2f}", f"{doc['recall_at_5']:.2f}") == m.groups()
    assert doc["recall_at_1"] >= 2 / 3
    fused = re.search(r"With what is said fused in \(--in visual,speech, the default;.*\): recall@1 ([0-9.]+), "
                      r"recall@5 ([0-9.]+)", out)
    assert fused is not None
    assert main(["-q", "eval", str(qfile), "--library", str(tmp_path / "d"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (f"{doc['recall_at_1']:.2f}", f"{doc['recall_at_5']:.2f}") == fused.groups()
    # A query only words answer (the narrator says where a video was recorded): found by speech,
    # at the narrated line, and suggested with --in speech.
    said = re.search(r'  "recorded in the ([a-z]+)" .*\n    ✓ 1\. (\S+)-(\S+)  world/videos/([a-z]+)/\S+ .*\[speech\]\n'
                     r'         «Recorded» in the «\1»', out)
    assert said is not None and said.group(4) == said.group(1), out
    assert f"vidsearch search 'recorded in the {said.group(1)}' --library" in out and "--in speech" in out
