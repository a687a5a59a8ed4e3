"""Arrow schemas and catalog DDL of the zero-shot tag tables (``vidsearch tag``).

A tagging run commits its rows as extra per-commit tables (``Library.commit(..., tables=...)``,
a commit without clips or videos), so they live in manifest-listed Parquet with SHA-256 like
every other shard file and survive any rebuild of the catalog:

- ``tags-N.parquet`` (:data:`TAG_ROW_SCHEMA`): a clip's best labels, one row per (clip, label);
  ``tagset`` names the label set, prompts, model and cut they were computed with.
- ``tag_sets-N.parquet`` (:data:`TAG_SET_SCHEMA`): one row per tagging commit, saying what it
  applied and to which clip shards. The newest commit's ``tagset`` is the library's current
  label set.

In the catalog (``catalog.duckdb`` and readers' in-memory copies) they become the real tables
``tag_rows`` and ``tag_sets``, and readers see the view ``tags(clip_id, video_id, label, score,
rank)``: the current label set's rows of clips whose video is searchable (``done``/``partial``),
so tags of replaced or lost videos are not shown and a new label set replaces the old one at once.
"""

from __future__ import annotations

import pyarrow as pa  # type: ignore[import-untyped]

TAG_SCHEMA_VERSION = 1
_META = {b"vidsearch.schema_version": str(TAG_SCHEMA_VERSION).encode()}

TAG_ROW_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.int64(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),   # softmax over the label set (0..1)
        pa.field("rank", pa.int16(), nullable=False),      # 1 = the clip's best label
        pa.field("tagset", pa.string(), nullable=False),   # TAG_SET_SCHEMA.tagset of the run
    ],
    metadata=_META,
)

TAG_SET_SCHEMA = pa.schema(
    [
        pa.field("tagset", pa.string(), nullable=False),          # hash of everything below that shapes rows
        pa.field("labels", pa.string(), nullable=False),          # where the labels came from (file, builtin:NAME)
        pa.field("labels_sha256", pa.string(), nullable=False),   # of the label list as used
        pa.field("n_labels", pa.int32(), nullable=False),
        pa.field("templates", pa.string(), nullable=False),       # JSON list of prompt templates
        pa.field("logit_scale", pa.float64(), nullable=False),    # softmax temperature: scores = softmax(scale x cos)
        pa.field("top_k", pa.int32(), nullable=False),
        pa.field("min_score", pa.float64(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("model_fingerprint", pa.string(), nullable=False),
        pa.field("clips", pa.int64(), nullable=False),            # clips tagged by this commit
        # The clip shards whose every clip this commit tagged: a later run with the same tagset
        # tags only clips of shards no commit of it lists (clips below --min-score count as done).
        pa.field("clip_shards", pa.list_(pa.int32()), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata=_META,
)

# name -> schema of the tag tables a commit may carry (checked on every write and read).
TAG_TABLES: dict[str, pa.Schema] = {"tags": TAG_ROW_SCHEMA, "tag_sets": TAG_SET_SCHEMA}

TAG_CATALOG_DDL = """
CREATE TABLE IF NOT EXISTS tag_rows (
    clip_id BIGINT NOT NULL, video_id VARCHAR NOT NULL, label VARCHAR NOT NULL, score FLOAT NOT NULL,
    rank SMALLINT NOT NULL, tagset VARCHAR NOT NULL, shard_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tag_sets (
    tagset VARCHAR NOT NULL, labels VARCHAR NOT NULL, labels_sha256 VARCHAR NOT NULL, n_labels INTEGER NOT NULL,
    templates VARCHAR NOT NULL, logit_scale DOUBLE NOT NULL, top_k INTEGER NOT NULL, min_score DOUBLE NOT NULL,
    model VARCHAR NOT NULL, model_fingerprint VARCHAR NOT NULL, clips BIGINT NOT NULL, clip_shards INTEGER[] NOT NULL,
    run_id VARCHAR NOT NULL, created_at TIMESTAMPTZ NOT NULL, shard_id INTEGER NOT NULL
);
"""
