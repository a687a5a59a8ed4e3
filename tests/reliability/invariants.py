"""The library-invariants checker of docs/RELIABILITY.md §8 (used at the end of every ingest test).

:func:`check_library` asserts:

* every manifest shard exists with a matching SHA-256 (``Library.verify``);
* no stray files are visible outside ``.tmp/`` (only the documented names at the top level, and
  only manifest-listed files in ``shards/``, or at the shards URI beside its owner record; a
  library with a shards URI has no shard files in its own folder);
* the clip_ids in shards are unique;
* ``index.ntotal`` (``index/index.json``) equals the number of rows covered, when an index exists;
* every ``failures`` row has a stage and an error type;
* every video is in exactly one state (done, partial, failed, replaced; quarantined = failed at
  the attempt limit) and every clip belongs to a video whose row says how many clips it has.

:func:`library_snapshot` returns what "equal to a clean run" compares: clip rows without run ids
and embeddings by clip_id, video states by video_id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from vidsearch.library import Library
from vidsearch.schemas.tables import VIDEO_STATUSES

TOP_LEVEL = {"manifest.json", "shards", "catalog.duckdb", "index", "thumbs", ".tmp", ".lock",
             "history.duckdb", "quarantine", "logs"}  # logs/: crash logs of writer commands (cli.py)


def _all_clips(lib: Library) -> pa.Table:
    m = lib.read_manifest()
    tables = [lib.read_shard(s, "clips", verify=True) for s in m.shards]
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return pa.table({"clip_id": pa.array([], pa.int64())})
    return pa.concat_tables(tables)


def check_library(root: str | Path) -> dict[str, Any]:
    """Assert every invariant; returns counts for further checks."""
    lib = Library(root)
    m = lib.read_manifest()
    problems = lib.verify()
    assert not problems, problems
    stray = sorted(p.name for p in lib.root.iterdir() if p.name not in TOP_LEVEL)
    assert not stray, f"stray files at the library top level: {stray}"
    if m.shards_uri is not None:
        assert all("/" not in s.clips_file and "/" not in s.videos_file for s in m.shards)
        local = sorted(p.name for p in lib.shards_dir.iterdir()) if lib.shards_dir.is_dir() else []
        assert not local, f"shard files in the local folder of a library whose shards are at {m.shards_uri}: {local}"
    clips = _all_clips(lib)
    ids = clips.column("clip_id").to_pylist()
    assert len(ids) == len(set(ids)), "duplicate clip_id in shards"
    index_json = lib.index_dir / "index.json"
    if index_json.is_file():
        meta = json.loads(index_json.read_text())
        n = meta.get("ntotal", meta.get("n"))
        if n is not None:
            assert n == len(ids), f"index covers {n} vectors, shards hold {len(ids)}"
    with lib.connect_catalog() as con:
        bad = con.execute("SELECT count(*) FROM failures WHERE stage IS NULL OR error_type IS NULL").fetchone()[0]
        assert bad == 0, "failures rows without stage or error_type"
        statuses = {s for (s,) in con.execute("SELECT DISTINCT status FROM videos").fetchall()}
        assert statuses <= set(VIDEO_STATUSES), statuses
        n_rows, n_ids = con.execute("SELECT count(*), count(DISTINCT video_id) FROM videos").fetchone()
        assert n_rows == n_ids
        orphans = con.execute("SELECT count(*) FROM clips c LEFT JOIN videos v USING (video_id) "
                              "WHERE v.video_id IS NULL").fetchone()[0]
        assert orphans == 0, "clips without a video row"
        mismatch = con.execute(
            "SELECT v.path, v.num_clips, count(c.clip_id) FROM videos v LEFT JOIN clips c USING (video_id) "
            "WHERE v.status IN ('done', 'partial') GROUP BY v.path, v.num_clips "
            "HAVING count(c.clip_id) <> v.num_clips").fetchall()
        assert not mismatch, f"videos whose clip count differs from their row: {mismatch}"
        failed_with_clips = con.execute(
            "SELECT count(*) FROM clips c JOIN videos v USING (video_id) WHERE v.status = 'failed'").fetchone()[0]
        assert failed_with_clips == 0
        n_videos = n_rows
    assert m.total_clips == len(ids)
    return {"clips": len(ids), "videos": n_videos, "generation": m.generation}


def library_snapshot(root: str | Path) -> dict[str, Any]:
    """Run-independent content of a library: clips (no run_id), embeddings, video states."""
    lib = Library(root)
    clips = _all_clips(lib)
    out: dict[str, Any] = {"clips": {}, "emb": {}, "videos": {}}
    if clips.num_rows:
        rows = clips.drop_columns(["run_id", "embedding"]).to_pylist()
        embs = clips.column("embedding").to_pylist()
        for r, e in zip(rows, embs, strict=True):
            out["clips"][r["clip_id"]] = r
            out["emb"][r["clip_id"]] = np.asarray(e, np.float32)
    with lib.connect_catalog() as con:
        for vid, status, n, et in con.execute(
                "SELECT video_id, status, num_clips, error_type FROM videos").fetchall():
            out["videos"][vid] = (status, n, et)
    return out


def assert_same_library(a: str | Path, b: str | Path, atol: float = 1e-5) -> None:
    """The two libraries hold the same clips, embeddings (allclose) and video states."""
    sa, sb = library_snapshot(a), library_snapshot(b)
    assert sa["videos"] == sb["videos"]
    assert sa["clips"].keys() == sb["clips"].keys()
    for k, row in sa["clips"].items():
        assert row == sb["clips"][k], (row, sb["clips"][k])
        np.testing.assert_allclose(sa["emb"][k], sb["emb"][k], atol=atol)
