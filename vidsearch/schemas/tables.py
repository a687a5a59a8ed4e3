"""Arrow schemas of every table a library stores, and the DuckDB DDL of the catalog.

Shards are the source of truth: ``shards/part-N.parquet`` holds one row per clip (embedding
included, schema :func:`clip_schema`), ``shards/videos-N.parquet`` one row per video settled in
that commit (schema :data:`VIDEO_SCHEMA`, failures included). ``catalog.duckdb`` holds real tables
built from them (plus ``runs`` from the manifest) and can always be rebuilt.
"""

from __future__ import annotations

import pyarrow as pa

# Video status values. A video is "done" only when every clip is in a committed shard.
STATUS_DONE = "done"          # all clips committed, decode coverage >= threshold
STATUS_PARTIAL = "partial"    # clips committed for the decodable part only (coverage recorded)
STATUS_FAILED = "failed"      # no clips; error_type/error_message/stage say why
STATUS_REPLACED = "replaced"  # the path now has different content; these clips are stale
VIDEO_STATUSES = (STATUS_DONE, STATUS_PARTIAL, STATUS_FAILED, STATUS_REPLACED)
SEARCHABLE_STATUSES = (STATUS_DONE, STATUS_PARTIAL)

SCHEMA_VERSION = 1


def clip_schema(embed_dim: int) -> pa.Schema:
    """Schema of a clip shard row; the embedding is a fixed-size list of ``embed_dim`` float32."""
    if embed_dim <= 0:
        raise ValueError(f"embed_dim must be positive, got {embed_dim}")
    return pa.schema(
        [
            pa.field("clip_id", pa.int64(), nullable=False),       # FAISS id; ids.clip_id()
            pa.field("video_id", pa.string(), nullable=False),     # ids.video_fingerprint()
            pa.field("path", pa.string(), nullable=False),         # display path (ids.display_path)
            pa.field("clip_index", pa.int32(), nullable=False),    # 0-based order inside the video
            pa.field("start_s", pa.float64(), nullable=False),     # clip start, seconds (from pts)
            pa.field("end_s", pa.float64(), nullable=False),       # clip end, seconds, exclusive
            pa.field("start_frame", pa.int64(), nullable=False),   # first frame index, inclusive
            pa.field("end_frame", pa.int64(), nullable=False),     # last frame index, exclusive
            pa.field("frame_indices", pa.list_(pa.int64()), nullable=False),  # sampled frames
            pa.field("frame_times_s", pa.list_(pa.float64()), nullable=False),  # their pts, s
            pa.field("padded", pa.bool_(), nullable=False),        # frames repeated to reach T
            pa.field("segment", pa.string(), nullable=False),      # "fixed" or "shots"
            pa.field("shot_index", pa.int32(), nullable=True),     # shot number when segment=shots
            pa.field("model", pa.string(), nullable=False),        # model name
            pa.field("model_fingerprint", pa.string(), nullable=False),  # model+weights+preproc
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), embed_dim), nullable=False),
        ],
        metadata={b"vidsearch.schema_version": str(SCHEMA_VERSION).encode()},
    )


VIDEO_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),           # display path
        pa.field("path_bytes", pa.binary(), nullable=False),     # exact os.fsencode(path)
        pa.field("size_bytes", pa.int64(), nullable=True),
        pa.field("mtime", pa.timestamp("us", tz="UTC"), nullable=True),
        pa.field("duration_s", pa.float64(), nullable=True),
        pa.field("fps", pa.float64(), nullable=True),            # average frame rate
        pa.field("frame_count", pa.int64(), nullable=True),      # decodable frames
        pa.field("width", pa.int32(), nullable=True),            # display width (after rotation)
        pa.field("height", pa.int32(), nullable=True),           # display height
        pa.field("codec", pa.string(), nullable=True),
        pa.field("container", pa.string(), nullable=True),       # ffmpeg format_name
        pa.field("rotation", pa.int32(), nullable=True),         # degrees, 0/90/180/270
        pa.field("coverage", pa.float64(), nullable=True),       # decoded / expected frames
        pa.field("num_clips", pa.int32(), nullable=False),
        pa.field("status", pa.string(), nullable=False),         # one of VIDEO_STATUSES
        pa.field("stage", pa.string(), nullable=True),           # failing stage: probe/decode/...
        pa.field("error_type", pa.string(), nullable=True),      # stable name, e.g. NotAVideo
        pa.field("error_message", pa.string(), nullable=True),   # one human line naming the file
        pa.field("attempts", pa.int32(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("ingested_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata={b"vidsearch.schema_version": str(SCHEMA_VERSION).encode()},
)

# Columns of the catalog's ``clips`` table: the shard columns minus the embedding.
CLIP_CATALOG_COLUMNS = tuple(f.name for f in clip_schema(1) if f.name != "embedding")

CATALOG_DDL = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS videos (
    video_id VARCHAR PRIMARY KEY, path VARCHAR NOT NULL, path_bytes BLOB NOT NULL,
    size_bytes BIGINT, mtime TIMESTAMPTZ, duration_s DOUBLE, fps DOUBLE, frame_count BIGINT,
    width INTEGER, height INTEGER, codec VARCHAR, container VARCHAR, rotation INTEGER,
    coverage DOUBLE, num_clips INTEGER NOT NULL, status VARCHAR NOT NULL, stage VARCHAR,
    error_type VARCHAR, error_message VARCHAR, attempts INTEGER NOT NULL, run_id VARCHAR NOT NULL,
    ingested_at TIMESTAMPTZ NOT NULL, shard_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS clips (
    clip_id BIGINT PRIMARY KEY, video_id VARCHAR NOT NULL, path VARCHAR NOT NULL,
    clip_index INTEGER NOT NULL, start_s DOUBLE NOT NULL, end_s DOUBLE NOT NULL,
    start_frame BIGINT NOT NULL, end_frame BIGINT NOT NULL, frame_indices BIGINT[] NOT NULL,
    frame_times_s DOUBLE[] NOT NULL, padded BOOLEAN NOT NULL, segment VARCHAR NOT NULL,
    shot_index INTEGER, model VARCHAR NOT NULL, model_fingerprint VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL, shard_id INTEGER NOT NULL, row_in_shard INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    video_id VARCHAR, path VARCHAR NOT NULL, stage VARCHAR, error_type VARCHAR NOT NULL,
    error_message VARCHAR, attempts INTEGER NOT NULL, run_id VARCHAR NOT NULL,
    failed_at TIMESTAMPTZ NOT NULL, shard_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, started_at TIMESTAMPTZ, ended_at TIMESTAMPTZ, status VARCHAR,
    videos_seen BIGINT, videos_done BIGINT, videos_partial BIGINT, videos_failed BIGINT,
    videos_skipped BIGINT, clips BIGINT, clips_per_s DOUBLE, settings VARCHAR
);
"""
