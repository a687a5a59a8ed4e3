"""The library manifest: the source of truth of what a library holds.

``manifest.json`` lists every committed shard with its row count and SHA-256, the model that made
the embeddings (name + fingerprint, so embedding spaces never mix), the runs, and a generation
number that grows by one at every commit. It is replaced atomically; readers trust only what it
lists (RELIABILITY.md rules 4 and 5).

A library whose shard files live at a pyarrow filesystem URI (``shards_uri``, e.g. ``s3://b/p``)
writes format 2, so that a vidsearch that predates remote shards refuses it instead of looking for
its shards in ``shards/``; a local library keeps format 1 and writes no ``shards_uri`` key.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

MANIFEST_FORMAT = 1
MANIFEST_FORMAT_REMOTE_SHARDS = 2


@dataclass(frozen=True)
class ShardEntry:
    """One committed shard pair: the clip rows and the video rows settled in the same commit."""

    shard_id: int           # 1, 2, ...: also the number in the file names
    clips_file: str         # relative to the library root, e.g. "shards/part-000001.parquet"
    #                         (with shards_uri: relative to it, e.g. "part-000001.parquet")
    clips_rows: int
    clips_sha256: str
    videos_file: str        # e.g. "shards/videos-000001.parquet"
    videos_rows: int
    videos_sha256: str
    run_id: str
    created_at: str         # ISO 8601 UTC
    min_clip_id: int | None = None
    max_clip_id: int | None = None


@dataclass(frozen=True)
class ModelInfo:
    """The embedding space of a library: every shard must carry the same fingerprint."""

    name: str
    fingerprint: str
    embed_dim: int
    num_frames: int
    preprocess: dict[str, Any] = field(default_factory=dict)
    is_test_model: bool = False


@dataclass(frozen=True)
class Manifest:
    """Parsed ``manifest.json``."""

    library_id: str
    generation: int = 0
    model: ModelInfo | None = None
    shards: tuple[ShardEntry, ...] = ()
    runs: tuple[dict[str, Any], ...] = ()
    ingest_settings: dict[str, Any] = field(default_factory=dict)
    updated_at: str = ""
    format: int = MANIFEST_FORMAT
    shards_uri: str | None = None   # pyarrow filesystem URI of the shard files; None = LIBRARY/shards

    @property
    def total_clips(self) -> int:
        return sum(s.clips_rows for s in self.shards)

    @property
    def shard_file_names(self) -> set[str]:
        """Base names of every listed shard file (clips and videos): all that ``shards/`` may hold."""
        return {n.rsplit("/", 1)[-1] for s in self.shards for n in (s.clips_file, s.videos_file)}

    def to_json(self) -> str:
        d = asdict(self)
        if d["shards_uri"] is None:
            del d["shards_uri"]  # local libraries: the same bytes as before remote shards existed
        return json.dumps(d, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse and validate; raises ValueError on an unknown format or a malformed file."""
        raw = json.loads(text)
        if not isinstance(raw, dict) or raw.get("format") not in (MANIFEST_FORMAT, MANIFEST_FORMAT_REMOTE_SHARDS):
            raise ValueError(f"unsupported manifest format {raw.get('format') if isinstance(raw, dict) else raw!r}")
        shards_uri = raw.get("shards_uri")
        if (shards_uri is not None) != (raw["format"] == MANIFEST_FORMAT_REMOTE_SHARDS):
            raise ValueError(f"format {raw['format']} with shards_uri {shards_uri!r}")
        model = ModelInfo(**raw["model"]) if raw.get("model") else None
        shards = tuple(ShardEntry(**s) for s in raw.get("shards", []))
        return cls(
            library_id=raw["library_id"],
            generation=int(raw.get("generation", 0)),
            model=model,
            shards=shards,
            runs=tuple(raw.get("runs", [])),
            ingest_settings=dict(raw.get("ingest_settings", {})),
            updated_at=raw.get("updated_at", ""),
            format=raw["format"],
            shards_uri=shards_uri,
        )
