"""The library manifest: the source of truth of what a library holds.

``manifest.json`` lists every committed shard with its row count and SHA-256, the model that made
the embeddings (name + fingerprint, so embedding spaces never mix), the runs, and a generation
number that grows by one at every commit. It is replaced atomically; readers trust only what it
lists (docs/RELIABILITY.md rules 4 and 5).

A library folder may come from anyone (copied, downloaded, mounted), so :meth:`Manifest.from_json`
checks every field's type and range before any of it is used (docs/RELIABILITY.md S1): integers are
integers (a JSON ``true`` is not one), counts are non-negative and bounded, file names match the
shard-name pattern and the shard id, digests are 64 hex digits, shard ids are unique, and a library
with shards names its model. A bad value raises :class:`ManifestInvalid` naming the field.

A library whose shard files live at a pyarrow filesystem URI (``shards_uri``, e.g. ``s3://b/p``)
writes format 2, so that a vidsearch that predates remote shards refuses it instead of looking for
its shards in ``shards/``; a local library keeps format 1 and writes no ``shards_uri`` key.

A shard entry may carry extra per-commit tables (``tables``: name -> file, rows, SHA-256), committed
atomically with the clips and videos of the same commit. An entry without extra tables is written
exactly as before, so existing libraries read and write the same bytes.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

MANIFEST_FORMAT = 1
MANIFEST_FORMAT_REMOTE_SHARDS = 2

# Every shard file is named <table>-<shard id, 6+ digits>.parquet; clips are table "part".
CLIPS_TABLE, VIDEOS_TABLE = "part", "videos"
SHARD_FILE_RE = re.compile(r"(?P<table>[a-z][a-z0-9_]{0,31})-(?P<id>[0-9]{6,10})\.parquet")
TABLE_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_RESERVED_TABLES = frozenset({CLIPS_TABLE, VIDEOS_TABLE, "clips"})
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+-]{0,127}")   # library ids, fingerprints, run ids

MAX_SHARD_ID = 2**31 - 1          # the catalog's shard_id column is an INTEGER
MAX_ROWS = 2**40                  # far above any real shard, far below int64 overflow
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def shard_file_name(table: str, shard_id: int) -> str:
    """The file name of ``table``'s file in shard ``shard_id`` (e.g. ``part-000001.parquet``)."""
    return f"{table}-{shard_id:06d}.parquet"


class ManifestInvalid(ValueError):
    """A manifest field has the wrong type or an out-of-range value; the message names the field."""


@dataclass(frozen=True)
class TableFile:
    """One extra table file of a shard (e.g. transcripts), listed like the clips and videos files."""

    file: str               # as clips_file: "shards/transcripts-000001.parquet" or a base name
    rows: int
    sha256: str


@dataclass(frozen=True)
class ShardEntry:
    """One committed shard: the clip rows and the video rows settled in the same commit."""

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
    tables: Mapping[str, TableFile] = field(default_factory=dict)   # extra per-commit tables

    def files(self) -> dict[str, tuple[str, str]]:
        """Every file of this shard: {table: (file, sha256)}, clips ("part") and videos first."""
        return {CLIPS_TABLE: (self.clips_file, self.clips_sha256),
                VIDEOS_TABLE: (self.videos_file, self.videos_sha256),
                **{name: (t.file, t.sha256) for name, t in self.tables.items()}}


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
        """Base names of every listed shard file (all tables): all that ``shards/`` may hold."""
        return {f.rsplit("/", 1)[-1] for s in self.shards for f, _ in s.files().values()}

    def to_json(self) -> str:
        d = asdict(self)
        if d["shards_uri"] is None:
            del d["shards_uri"]  # local libraries: the same bytes as before remote shards existed
        for s in d["shards"]:
            if not s["tables"]:
                del s["tables"]  # likewise for shards without extra tables
        return json.dumps(d, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse and validate every field.

        Raises:
            ManifestInvalid: not JSON, an unknown format, or a field of the wrong type or range
                (the message names the field, e.g. ``shards[2].clips_rows``).
        """
        try:
            raw = json.loads(text, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
            raise ManifestInvalid(f"not valid JSON ({str(e)[:200]})") from None
        return _parse(_Obj(raw, "manifest"))


# ---- validation -------------------------------------------------------------------------------
def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


_MISSING = object()


class _Obj:
    """A JSON object being validated; every getter names the field path in its error.

    A getter's ``default`` is what a missing key reads as (no default: the key is required);
    ``nullable`` lets an explicit ``null`` through as None.
    """

    def __init__(self, raw: Any, where: str) -> None:
        if not isinstance(raw, dict):
            raise ManifestInvalid(f"{where}: expected an object, got {_kind(raw)}")
        self.raw: dict[str, Any] = raw
        self.where = where

    def at(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where != "manifest" else key

    def _value(self, key: str, default: Any) -> tuple[bool, Any]:
        """(present, value); a missing key without a default is an error."""
        if key in self.raw:
            return True, self.raw[key]
        if default is _MISSING:
            raise ManifestInvalid(f"{self.at(key)}: missing")
        return False, default

    def integer(self, key: str, lo: int, hi: int, default: Any = _MISSING, *, nullable: bool = False) -> Any:
        present, v = self._value(key, default)
        if not present or (v is None and nullable):
            return v
        # bool is a subclass of int in Python, but `true` is not a count in a manifest.
        if not isinstance(v, int) or isinstance(v, bool):
            raise ManifestInvalid(f"{self.at(key)}: expected an integer, got {_kind(v)}")
        if not lo <= v <= hi:
            raise ManifestInvalid(f"{self.at(key)}: {v} is out of range [{lo}, {hi}]")
        return v

    def text(self, key: str, pattern: re.Pattern[str] | None = None, default: Any = _MISSING,
             max_len: int = 1024, *, nullable: bool = False) -> Any:
        present, v = self._value(key, default)
        if not present or (v is None and nullable):
            return v
        if not isinstance(v, str):
            raise ManifestInvalid(f"{self.at(key)}: expected a string, got {_kind(v)}")
        if len(v) > max_len:
            raise ManifestInvalid(f"{self.at(key)}: longer than {max_len} characters")
        if pattern is not None and not pattern.fullmatch(v):
            raise ManifestInvalid(f"{self.at(key)}: {_shown(v)} does not match {pattern.pattern}")
        if any(ord(c) < 32 or ord(c) == 127 for c in v):
            raise ManifestInvalid(f"{self.at(key)}: contains control characters")
        return v

    def timestamp(self, key: str, *, nullable: bool = False) -> Any:
        v = self.text(key, max_len=64, nullable=nullable)
        if v is None:
            return None
        try:
            dt.datetime.fromisoformat(v)
        except ValueError:
            raise ManifestInvalid(f"{self.at(key)}: {_shown(v)} is not an ISO 8601 time") from None
        return v

    def mapping(self, key: str, default: Any = _MISSING) -> Any:
        present, v = self._value(key, default)
        if not present or (v is None and default is None):
            return v
        if not isinstance(v, dict):
            raise ManifestInvalid(f"{self.at(key)}: expected an object, got {_kind(v)}")
        return v

    def items(self, key: str) -> list[Any]:
        present, v = self._value(key, [])
        if not isinstance(v, list):
            raise ManifestInvalid(f"{self.at(key)}: expected a list, got {_kind(v)}")
        return v

    def flag(self, key: str, default: bool) -> bool:
        present, v = self._value(key, default)
        if not isinstance(v, bool):
            raise ManifestInvalid(f"{self.at(key)}: expected true or false, got {_kind(v)}")
        return v

    def only(self, *keys: str) -> None:
        extra = sorted(set(self.raw) - set(keys))
        if extra:
            raise ManifestInvalid(f"{self.where}: unknown field {_shown(extra[0])}")


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"the boolean {str(v).lower()}"
    if isinstance(v, (int, float, str)):
        return f"{type(v).__name__} {_shown(v)}"
    return type(v).__name__


def _shown(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def _parse(o: _Obj) -> Manifest:
    fmt = o.raw.get("format")
    if fmt not in (MANIFEST_FORMAT, MANIFEST_FORMAT_REMOTE_SHARDS) or isinstance(fmt, bool):
        raise ManifestInvalid(f"unsupported manifest format {_shown(fmt)}")
    shards_uri = o.text("shards_uri", default=None, max_len=4096)
    if (shards_uri is not None) != (fmt == MANIFEST_FORMAT_REMOTE_SHARDS):
        raise ManifestInvalid(f"format {fmt} with shards_uri {_shown(shards_uri)}")
    model_raw = o.mapping("model", default=None)
    model = _model(_Obj(model_raw, "model")) if model_raw else None
    shards = tuple(_shard(_Obj(s, f"shards[{i}]"), remote=shards_uri is not None)
                   for i, s in enumerate(o.items("shards")))
    if shards and model is None:
        raise ManifestInvalid("model: missing, but the manifest lists shards (whose embedding space is unknown)")
    seen: set[int] = set()
    names: set[str] = set()
    for i, s in enumerate(shards):
        if s.shard_id in seen:
            raise ManifestInvalid(f"shards[{i}].shard_id: {s.shard_id} is listed twice")
        seen.add(s.shard_id)
        for f, _ in s.files().values():
            if f in names:
                raise ManifestInvalid(f"shards[{i}]: file {f} is listed twice")
            names.add(f)
    return Manifest(
        library_id=o.text("library_id", _ID_RE),
        generation=o.integer("generation", 0, INT64_MAX, default=0),
        model=model,
        shards=shards,
        runs=tuple(_run(_Obj(r, f"runs[{i}]")) for i, r in enumerate(o.items("runs"))),
        ingest_settings=dict(o.mapping("ingest_settings", default={})),
        updated_at=o.text("updated_at", default="", max_len=64),
        format=fmt,
        shards_uri=shards_uri,
    )


def _model(o: _Obj) -> ModelInfo:
    o.only("name", "fingerprint", "embed_dim", "num_frames", "preprocess", "is_test_model")
    return ModelInfo(
        name=o.text("name", max_len=256),
        fingerprint=o.text("fingerprint", _ID_RE),
        embed_dim=o.integer("embed_dim", 1, 65536),
        num_frames=o.integer("num_frames", 1, 4096),
        preprocess=dict(o.mapping("preprocess", default={})),
        is_test_model=o.flag("is_test_model", False),
    )


def _file(o: _Obj, key: str, table: str, shard_id: int, remote: bool) -> str:
    name = shard_file_name(table, shard_id)
    expected = name if remote else f"shards/{name}"
    v = o.text(key, max_len=64)
    if v != expected:
        # Only the name the writer gives this shard's file: no other folder, no "..", no other shard's file.
        raise ManifestInvalid(f"{o.at(key)}: {_shown(v)} is not this shard's file name ({expected})")
    return v


def _shard(o: _Obj, remote: bool) -> ShardEntry:
    o.only("shard_id", "clips_file", "clips_rows", "clips_sha256", "videos_file", "videos_rows",
           "videos_sha256", "run_id", "created_at", "min_clip_id", "max_clip_id", "tables")
    sid = o.integer("shard_id", 1, MAX_SHARD_ID)
    clips_rows = o.integer("clips_rows", 0, MAX_ROWS)
    lo = o.integer("min_clip_id", INT64_MIN, INT64_MAX, default=None, nullable=True)
    hi = o.integer("max_clip_id", INT64_MIN, INT64_MAX, default=None, nullable=True)
    if lo is not None and hi is not None and lo > hi:
        raise ManifestInvalid(f"{o.where}: min_clip_id {lo} is above max_clip_id {hi}")
    tables: dict[str, TableFile] = {}
    for name, t in (o.mapping("tables", default={}) or {}).items():
        where = f"{o.where}.tables.{name}"
        if not TABLE_NAME_RE.fullmatch(name) or name in _RESERVED_TABLES:
            raise ManifestInvalid(f"{o.where}.tables: {_shown(name)} is not an allowed table name")
        to = _Obj(t, where)
        to.only("file", "rows", "sha256")
        tables[name] = TableFile(file=_file(to, "file", name, sid, remote), rows=to.integer("rows", 0, MAX_ROWS),
                                 sha256=to.text("sha256", _SHA256_RE))
    return ShardEntry(
        shard_id=sid,
        clips_file=_file(o, "clips_file", CLIPS_TABLE, sid, remote),
        clips_rows=clips_rows,
        clips_sha256=o.text("clips_sha256", _SHA256_RE),
        videos_file=_file(o, "videos_file", VIDEOS_TABLE, sid, remote),
        videos_rows=o.integer("videos_rows", 0, MAX_ROWS),
        videos_sha256=o.text("videos_sha256", _SHA256_RE),
        run_id=o.text("run_id", _ID_RE),
        created_at=o.timestamp("created_at"),
        min_clip_id=lo,
        max_clip_id=hi,
        tables=tables,
    )


_RUN_COUNTS = ("videos_seen", "videos_done", "videos_partial", "videos_failed", "videos_skipped", "clips")
_RUN_STATUS_RE = re.compile(r"[a-z_]{1,32}")


def _run(o: _Obj) -> dict[str, Any]:
    """A run record: the fields the catalog's ``runs`` table takes are checked; others are kept as is."""
    run = dict(o.raw)
    run["run_id"] = o.text("run_id", _ID_RE)
    run["status"] = o.text("status", _RUN_STATUS_RE, default=None, nullable=True)
    for key in ("started_at", "ended_at"):
        if key in o.raw:
            run[key] = o.timestamp(key, nullable=True)
    for key in _RUN_COUNTS:
        if key in o.raw:
            run[key] = o.integer(key, 0, INT64_MAX, nullable=True)
    if "clips_per_s" in o.raw:
        v = o.raw["clips_per_s"]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                              or v < 0):
            raise ManifestInvalid(f"{o.at('clips_per_s')}: expected a non-negative number, got {_kind(v)}")
    if "settings" in o.raw:
        o.mapping("settings")
    return run
