"""Typed, frozen configuration objects of the ingest, index and search stages.

Model architecture and preprocessing configs live in :mod:`vidsearch.schemas.model_config`.
CLI flags override these defaults; the resolved ingest config is written into the manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class IngestCfg:
    """How videos become clips. Changing a field that affects clip spans changes clip_ids."""

    # Segmentation: fixed windows, or shots cut at scene changes then split/merged by the window.
    segment: Literal["fixed", "shots"] = "fixed"
    # Window length and step in seconds. stride < clip_seconds overlaps clips; > leaves gaps.
    clip_seconds: float = 4.0
    stride: float = 4.0
    # ffmpeg scene score above which a frame starts a new shot (segment="shots" only).
    scene_threshold: float = 0.3
    # Shots shorter than this are merged into their neighbour (segment="shots"); with fixed
    # windows, a last window shorter than this joins the one before it (no 0.1 s tail clips).
    min_shot_seconds: float = 1.0
    # Drop clips whose sampled frames barely change and repeat the previous clip (near-static).
    skip_static: bool = False
    # Mean absolute pixel difference (0-255, at 64x64 grey) below which a clip counts as static.
    static_threshold: float = 2.0
    # Wall-clock limit for decoding one video in its worker process; past it: DecodeTimeout.
    decode_timeout_s: float = 300.0
    # Retries of a decode job whose read failed with a transient OSError (EIO, ESTALE: network
    # filesystems), waiting io_retry_backoff_s * 2**k between them; then an IOError failure row.
    # Too few turn a brief NFS hiccup into failed videos; too many stall a worker on a dead mount.
    io_retries: int = 3
    io_retry_backoff_s: float = 0.5
    # Decoded/expected frame ratio under which a video is "partial", never "done" (rule 2).
    min_coverage: float = 0.95
    # Probe limits (docs/RELIABILITY.md B13/B23/S7): refuse a file (TooLarge / TooManyFrames /
    # TooManyStreams) rather than exhaust memory or time on it. Pixels of one frame: 8K UHD
    # decodes in well under 1 GB (decode_max_pixels); above it the decoder's own reference frames
    # alone approach a GB. Frames of one video: the probe keeps one timestamp per frame (about 70
    # bytes each while probing); 1,000,000 is 9 h at 30 fps. Streams: every stream costs ffmpeg a
    # decoder context while it opens the file; real files have a handful (subtitle-heavy disc
    # rips a few dozen), hence a generous total and a tight video-stream count.
    max_pixels: int = 7680 * 4320
    max_frames: int = 1_000_000
    max_streams: int = 64
    max_video_streams: int = 8
    # Frames larger than this many pixels are shrunk by the decoder (swscale, area averaging) to
    # fit inside it before the model's resize, so that no full-resolution RGB copy of an 8K frame
    # is made. At or below it frames reach the model's resize untouched (bit-exact with
    # preprocess_frames); 4096x2160 covers every 4K format.
    decode_max_pixels: int = 4096 * 2160
    # Under --decode auto, videos with fewer pixels per frame than this stay on the CPU decode
    # workers; NVDEC takes the larger ones. Measured on one H200 + 16 cores (2-s clips, 4 frames):
    # at 360p the CPU workers decoded 206 clips/s against NVDEC's 53, and giving half the videos
    # to NVDEC cut the end-to-end rate from 118 to 72 clips/s (its sessions run in the embed
    # worker's process and slow the embedder); at 1080p the CPU decoded 27-33 clips/s, NVDEC
    # 39-53, and both together ran end to end at 56 against 32 for the CPU alone. 0: every video
    # NVDEC can take goes to whichever side has room (--decode gpu always ignores this).
    gpu_decode_min_pixels: int = 1280 * 720
    # Writable memory (RLIMIT_DATA, MiB; 0 = no cap) a decode child may add to its start-up
    # (~0.25 GB of imports). A file that needs more fails as TooLarge instead of taking the
    # host's memory (S7). An 8K video needs ~0.35 GB.
    decode_memory_mb: int = 4096
    # Container formats the probe accepts (ffmpeg format_name parts). Playlists (hls, concat)
    # are refused: decoders follow references inside them (rule 3).
    allowed_formats: tuple[str, ...] = (
        "mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi", "mpegts",
        "mpeg", "flv", "asf", "ogg", "gif", "h264", "hevc", "m4v", "mpegvideo", "mxf", "nut",
    )
    # File extensions discovery picks up in folders; other files are kept only by content sniff.
    extensions: tuple[str, ...] = (
        ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts",
        ".m2ts", ".flv", ".wmv", ".3gp", ".ogv", ".gif",
    )
    # Clips per embed batch (GPU actors fill batches across videos).
    batch_size: int = 32
    # Clip rows per shard; a commit also happens at the end of the run.
    shard_rows: int = 4096
    # Commit at least this often (seconds) so that a kill loses little work.
    commit_interval_s: float = 60.0
    # Decode worker processes (CPU actors); None = number of CPUs.
    decode_workers: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class IndexCfg:
    """How the FAISS index is chosen and built (vidsearch.indexer)."""

    # A FAISS factory string overrides the automatic choice ("Flat", "IVF4096,Flat", "HNSW32").
    factory: str | None = None
    # Memory budget for the index in bytes; drives the choice between Flat/IVF/IVF-PQ.
    memory_budget_bytes: int = 4 << 30
    # Use GPU FAISS when present.
    use_gpu: bool = True
    # Up to this many vectors the index is exact (Flat): brute force is fast enough and perfect.
    flat_max_vectors: int = 50_000
    # Up to this many vectors HNSW is chosen (no training, best CPU latency); build time grows
    # roughly linearly, so past this IVF builds much faster on few cores.
    hnsw_max_vectors: int = 300_000
    # recall@10 against exact search that nprobe / efSearch are tuned to reach.
    target_recall: float = 0.95
    # nprobe / efSearch must also reach target_recall on the top-`tune_depth` list (search
    # over-fetches before filtering and merging); 10 = tune on recall@10 alone.
    tune_depth: int = 20
    # Held-out clip embeddings used as queries by the quality report (recall, latency).
    quality_queries: int = 200
    # Suggest `--rebuild` when vectors added since training exceed this multiple of trained_n
    # (IVF centroids fitted on a small library become unbalanced as it grows).
    rebuild_ratio: float = 1.0
    # Vectors sampled to train IVF centroids / PQ codebooks (FAISS wants 39..256 per centroid:
    # the sample is raised to 40 x nlist when that is larger, e.g. 655k for IVF16384).
    max_train_vectors: int = 256 * 1024
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchCfg:
    """Defaults of a search (vidsearch.search)."""

    k: int = 10
    # Merge hits of the same video closer than this gap (s) into one moment...
    merge_gap_s: float = 2.0
    # ...but never into a moment longer than this (no chaining of separate events).
    max_moment_s: float = 30.0
    # ...and only hits scoring within this (cosine) of the moment's best clip: a clip straddling
    # a cut scores lower than the clips inside the scene and must not stretch the moment.
    merge_score_margin: float | None = 0.05
    per_video: int | None = None
    # Filters matching fewer than `overfetch_min_selectivity` of the library and at most this many
    # clips are answered by exact search over exactly those clips (scored from the index's vector
    # cache, split over threads): exact, and faster than the ID selector. Measured on 2 cores:
    # ~12 ms for 50k clips of 512-d in runs (a path filter), ~26 ms for 250k, ~0.4 us per clip
    # when scattered. Past it an IVF/HNSW ID selector is used, whose recall drops when the
    # filtered neighbours lie outside the query's probed lists (measured 0.57 for a 5% path
    # filter on 10M synthetic clips, and 0.38 at 5% of 1M).
    exact_subset_max: int = 2_000_000
    # Filters matching at least this fraction of the library are answered by over-fetching ANN
    # results and dropping the non-matching ones; in between, a FAISS ID selector is used.
    overfetch_min_selectivity: float = 0.2
    # First ANN fetch = (k + offset) * this; widened x4 until enough moments survive.
    overfetch: int = 4
    # Over-fetch keeps ~selectivity of the ANN candidates, whose true neighbours then lie
    # 1/selectivity deeper than k: nprobe / efSearch are widened by this / selectivity (at most
    # x16). Measured for a 50% filter, recall@10 / cached p50 on a 2-core 24 GB machine, 10M
    # synthetic clips, IVF4096,PQ128 (nprobe 64): 1: 0.936 / 28 ms, 2: 0.949 / 48 ms, 3: 0.952 /
    # 71 ms; at 1M (IVF4096,PQ128, nprobe 8) 1: 0.954, 2: 0.957, both ~2.5 ms of ANN. The misses
    # left are clips of unrelated videos scoring ~0.18, outside the probed lists.
    overfetch_boost: float = 2.0
    # Wall-clock limit (s) of the user's SQL (`vidsearch sql`, `--where`); interrupted past it.
    sql_timeout_s: float = 30.0
    # Memory and threads the user-SQL sandbox may use.
    sql_memory_limit: str = "2GB"
    sql_threads: int = 2
    # Searches of several modalities (`--in visual,speech,screen`): each modality's ranked list is
    # cut at this many moments before reciprocal rank fusion (k=60). Deeper lists cost more and
    # matter little: rank 100 adds 1/160 to a moment, rank 1 adds 1/61.
    fusion_depth: int = 100
    # A plain text query (no quotes, +/- or operators) finds a transcript or screen-text row only
    # when the row has at least this share of the query's words, stop words aside ("the", "in");
    # 1.0: all of them (an explicit OR, "kids OR children", still finds either). Fusion votes by
    # rank alone, so a line sharing a few words of the query ("moving down, a red cross" for "a red
    # triangle moving down") would vote as much as the right picture. Measured on three demo worlds
    # (bench/fusion_demo.py, 554 caption queries, pictures alone recall@1 0.944 / MRR 0.970): fused
    # 0.677 / 0.831 at 0.5, 0.874 / 0.934 at 2/3, 0.937 / 0.967 at 0.8, 0.964 / 0.980 at 1.0.
    # Screen rows match on letter trigrams instead (half of them: OCR misreads letters).
    keyword_min_match: float = 1.0
