"""The library folder: commits, manifest, lock, recovery, catalog rebuild, crash points."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vidsearch.library import (
    CRASH_POINTS,
    SHARDS_OWNER,
    Library,
    LibraryError,
    LibraryLocked,
    ModelMismatch,
    normalize_shards_uri,
)
from vidsearch.library.shards import _explain
from vidsearch.schemas.ids import clip_id
from vidsearch.schemas.manifest import Manifest, ModelInfo
from vidsearch.schemas.tables import VIDEO_SCHEMA, clip_schema

DIM = 8
MODEL = ModelInfo(name="synthetic", fingerprint="fp-a", embed_dim=DIM, num_frames=4)


def make_tables(video_id: str, n: int, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    """n clips of one video plus its video row (status done)."""
    rng = np.random.default_rng(seed)
    rows = [
        {
            "clip_id": clip_id(video_id, 10 * i, 10 * i + 10, MODEL.fingerprint), "video_id": video_id,
            "path": f"/v/{video_id}.mp4", "clip_index": i, "start_s": float(i), "end_s": float(i + 1),
            "start_frame": 10 * i, "end_frame": 10 * i + 10, "frame_indices": [10 * i + j for j in range(4)],
            "frame_times_s": [i + j / 4 for j in range(4)], "padded": False, "segment": "fixed",
            "shot_index": None, "model": MODEL.name, "model_fingerprint": MODEL.fingerprint, "run_id": "r1",
            "embedding": rng.standard_normal(DIM).astype(np.float32).tolist(),
        }
        for i in range(n)
    ]
    video = {
        "video_id": video_id, "path": f"/v/{video_id}.mp4", "path_bytes": f"/v/{video_id}.mp4".encode(),
        "num_clips": n, "status": "done", "attempts": 1, "run_id": "r1",
        "ingested_at": dt.datetime.now(dt.UTC),
    }
    return pa.Table.from_pylist(rows, schema=clip_schema(DIM)), pa.Table.from_pylist([video], schema=VIDEO_SCHEMA)


def test_commit_lists_shards_and_builds_catalog(tmp_path: Path) -> None:
    lib = Library(tmp_path / "lib")
    with lib.lock():
        lib.init(MODEL)
        for k, vid in enumerate(["a", "b", "c"]):
            lib.commit(*make_tables(vid, 3 + k, seed=k), run_id="r1")
        lib.record_run({"run_id": "r1", "status": "done", "clips": 12})
    m = lib.read_manifest()
    assert [s.shard_id for s in m.shards] == [1, 2, 3]
    assert m.total_clips == 3 + 4 + 5
    assert lib.verify() == []
    assert lib.catalog_is_current()
    with lib.connect_catalog() as con:
        assert con.execute("SELECT count(*) FROM clips").fetchone() == (12,)
        assert con.execute("SELECT count(DISTINCT clip_id) FROM clips").fetchone() == (12,)
        assert con.execute("SELECT status FROM runs").fetchall() == [("done",)]
        # Each catalog row points back at its shard row: the embedding there belongs to it.
        cid, shard, row = con.execute(
            "SELECT clip_id, shard_id, row_in_shard FROM clips WHERE video_id = 'b' AND clip_index = 2"
        ).fetchone()
    table = lib.read_shard(m.shards[shard - 1], "clips", verify=True)
    assert table.column("clip_id")[row].as_py() == cid
    meta = pq.read_schema(lib.root / m.shards[0].clips_file).metadata
    assert meta[b"vidsearch.model_fingerprint"] == b"fp-a"


def test_commit_needs_lock(tmp_path: Path) -> None:
    lib = Library(tmp_path)
    with lib.lock():
        lib.init(MODEL)
    with pytest.raises(LibraryError, match="lock"):
        lib.commit(*make_tables("a", 1), run_id="r")


def test_other_model_is_refused_unless_asked(tmp_path: Path) -> None:
    lib = Library(tmp_path)
    with lib.lock():
        lib.init(MODEL)
        lib.commit(*make_tables("a", 2), run_id="r")
        other = ModelInfo(name="other", fingerprint="fp-b", embed_dim=DIM, num_frames=4)
        with pytest.raises(ModelMismatch, match="fp-a"):
            lib.init(other)
        lib.init(other, allow_new_model=True)
    m = lib.read_manifest()
    assert m.model.fingerprint == "fp-b" and m.shards == ()
    assert list((tmp_path / "shards").iterdir()) == []
    with lib.connect_catalog() as con:
        assert con.execute("SELECT count(*) FROM clips").fetchone() == (0,)


def test_lock_refuses_live_holder_and_takes_over_stale(tmp_path: Path) -> None:
    lib = Library(tmp_path)
    with lib.lock(), pytest.raises(LibraryLocked, match=str(os.getpid())), Library(tmp_path).lock():
        pass
    # A lock left by a process that no longer exists is stale.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    lib.lock_path.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "since": "x"}))
    with lib.lock():
        assert json.loads(lib.lock_path.read_text())["pid"] == os.getpid()
    assert not lib.lock_path.exists()


def test_corrupt_catalog_is_rebuilt_from_shards(tmp_path: Path) -> None:
    lib = Library(tmp_path)
    with lib.lock():
        lib.init(MODEL)
        lib.commit(*make_tables("a", 4), run_id="r")
        lib.record_run({"run_id": "r", "status": "done", "clips": 4})
    lib.catalog_path.write_bytes(b"not a duckdb file" * 100)
    # Readers never write: they fall back to an in-memory catalog built from the shards.
    with lib.connect_catalog() as con:
        assert con.execute("SELECT count(*) FROM clips").fetchone() == (4,)
        assert con.execute("SELECT run_id, clips FROM runs").fetchall() == [("r", 4)]
    assert not lib.catalog_is_current()
    with lib.lock():
        lib.refresh_catalog()
    assert lib.catalog_is_current()
    with duckdb.connect(str(lib.catalog_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM clips").fetchone() == (4,)


def test_verify_reports_corrupt_missing_and_stray(tmp_path: Path) -> None:
    lib = Library(tmp_path)
    with lib.lock():
        lib.init(MODEL)
        lib.commit(*make_tables("a", 2), run_id="r")
        lib.commit(*make_tables("b", 2), run_id="r")
    m = lib.read_manifest()
    p1 = lib.root / m.shards[0].clips_file
    p1.write_bytes(p1.read_bytes()[:-10])
    (lib.root / m.shards[1].videos_file).unlink()
    (lib.shards_dir / "foreign.parquet").write_bytes(b"x")
    problems = lib.verify()
    assert any("SHA-256 mismatch" in p and "part-000001" in p for p in problems)
    assert any("missing shard" in p and "videos-000002" in p for p in problems)
    assert any("foreign.parquet" in p for p in problems)
    with pytest.raises(LibraryError, match="SHA-256"):
        lib.read_shard(m.shards[0], "clips", verify=True)


_CRASH_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_library import MODEL, make_tables
from vidsearch.library import Library
lib = Library({root!r})
with lib.lock():
    lib.init(MODEL, shards_uri={shards_uri!r})
    lib.commit(*make_tables("a", 3), run_id="r")
    lib.commit(*make_tables("b", 3, seed=1), run_id="r")
"""


@pytest.mark.parametrize(("point", "remote"), [(p, False) for p in CRASH_POINTS
                          if p not in ("after_commit_catalog_behind", "after_manifest_before_index")]
                         + [("after_rename_before_manifest", True)])
def test_kill_at_each_crash_point_then_recover(tmp_path: Path, point: str, remote: bool) -> None:
    """SIGKILL inside the first commit; the library stays consistent and the next writer repairs it.

    ``remote``: shards at a ``file://`` URI (temp name + move there; the moved pair is unlisted).
    """
    root = tmp_path / "lib"
    env = {**os.environ, "VIDSEARCH_CRASH_AT": point}
    shards_uri = f"file://{tmp_path}/remote" if remote else None
    script = _CRASH_SCRIPT.format(tests=str(Path(__file__).parent), root=str(root), shards_uri=shards_uri)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    lib = Library(root)
    m = lib.read_manifest()
    committed = point == "after_manifest_before_catalog"
    assert len(m.shards) == (1 if committed else 0)
    if remote:
        assert {p.name for p in (tmp_path / "remote").iterdir()} == {
            SHARDS_OWNER, "part-000001.parquet", "videos-000001.parquet"}
    with lib.lock():  # stale lock of the killed pid is taken over; recover() runs
        pass
    if remote:
        assert {p.name for p in (tmp_path / "remote").iterdir()} == {SHARDS_OWNER}
    assert lib.verify() == []  # no stray, unlisted or half-written shard remains
    assert not any(lib.tmp_dir.iterdir())
    # Resuming finishes the job.
    env.pop("VIDSEARCH_CRASH_AT")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with lib.connect_catalog() as con:
        n = con.execute("SELECT count(*), count(DISTINCT clip_id) FROM clips").fetchone()
    assert n == (6, 6)


def test_disk_full_during_commit_leaves_the_library_as_it_was(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/RELIABILITY.md F8: ENOSPC while writing a shard -> a clear DiskFull, no temp files, nothing lost."""
    import errno

    from vidsearch.library import DiskFull
    from vidsearch.library import folder as library_mod

    lib = Library(tmp_path)
    with lib.lock():
        lib.init(MODEL)
        lib.commit(*make_tables("a", 3), run_id="r")
        before = (lib.manifest_path.read_bytes(), lib.verify())

        def no_space(table: pa.Table, where: Path, **kw: object) -> None:
            Path(where).write_bytes(b"PAR1 partial")  # a half-written temp file, as a full disk leaves
            raise OSError(errno.ENOSPC, "No space left on device", str(where))

        monkeypatch.setattr(library_mod.pq, "write_table", no_space)
        with pytest.raises(DiskFull, match=r"disk full writing .*\.tmp.*keeps its 3 committed clips"):
            lib.commit(*make_tables("b", 2, seed=1), run_id="r")
        assert not any(lib.tmp_dir.iterdir())
        assert (lib.manifest_path.read_bytes(), lib.verify()) == before
        monkeypatch.undo()
        lib.commit(*make_tables("b", 2, seed=1), run_id="r")  # space freed: the same commit succeeds
    with lib.connect_catalog() as con:
        assert con.execute("SELECT count(*) FROM clips").fetchone() == (5,)


def test_shards_at_a_uri_commit_read_verify_recover_and_model_change(tmp_path: Path) -> None:
    """Shards at a pyarrow URI (a local path: LocalFileSystem) go through the same Library calls."""
    lib, remote = Library(tmp_path / "lib"), tmp_path / "remote"
    with lib.lock():
        lib.init(MODEL, shards_uri=f"{remote}/")
        for k, vid in enumerate(["a", "b"]):
            lib.commit(*make_tables(vid, 2 + k, seed=k), run_id="r1")
    m = lib.read_manifest()
    assert (m.format, m.shards_uri) == (2, str(remote))
    assert [s.clips_file for s in m.shards] == ["part-000001.parquet", "part-000002.parquet"]
    assert {p.name for p in remote.iterdir()} == m.shard_file_names | {SHARDS_OWNER}
    assert not (lib.root / "shards").exists()
    assert lib.verify() == [] and lib.read_shard(m.shards[1], "clips", verify=True).num_rows == 3
    with lib.connect_catalog() as con:
        assert con.execute("SELECT count(*) FROM clips").fetchone() == (5,)
    # A reader in a fresh process finds the shards through the manifest alone.
    assert Library(tmp_path / "lib").read_shard(m.shards[0], "videos").num_rows == 1
    # Unlisted part-/videos- files (a killed commit) are removed by the next writer; others are reported only.
    (remote / "part-000003.parquet").write_bytes(b"half")
    (remote / "videos-000003.parquet.0123.tmp").write_bytes(b"half")
    (remote / "notes.txt").write_text("x")
    p1 = remote / "part-000001.parquet"
    p1.write_bytes(p1.read_bytes()[:-10])
    problems = lib.verify()
    assert f"SHA-256 mismatch in {remote}/part-000001.parquet" in problems
    assert f"stray file {remote}/notes.txt (not in the manifest; ignored)" in problems
    assert sum("stray file" in p for p in problems) == 3
    with pytest.raises(LibraryError, match="SHA-256"):
        lib.read_shard(m.shards[0], "clips", verify=True)
    with lib.lock():
        pass
    assert {p.name for p in remote.iterdir()} == m.shard_file_names | {SHARDS_OWNER, "notes.txt"}
    # The location is fixed once the library holds shards; a new model deletes the old shards there.
    with pytest.raises(LibraryError, match="fixed once it holds shards"), lib.lock():
        lib.open_shards(str(tmp_path / "elsewhere"))
    with lib.lock():
        lib.init(ModelInfo(name="other", fingerprint="fp-b", embed_dim=DIM, num_frames=4), allow_new_model=True)
    assert {p.name for p in remote.iterdir()} == {SHARDS_OWNER, "notes.txt"}
    assert lib.read_manifest().shards_uri == str(remote)


def test_a_shard_location_belongs_to_one_library(tmp_path: Path) -> None:
    remote = str(tmp_path / "remote")
    a, b = Library(tmp_path / "a"), Library(tmp_path / "b")
    with a.lock():
        a.init(MODEL, shards_uri=remote)
        a.commit(*make_tables("a", 2), run_id="r")
    with pytest.raises(LibraryError, match="already holds 2 shard file"), b.lock():
        b.init(MODEL, shards_uri=remote)
    assert not b.exists() and a.verify() == []
    with pytest.raises(LibraryError, match="inside the library folder"), b.lock():
        b.open_shards(str(tmp_path / "b" / "myshards"))


@pytest.mark.parametrize(("uri", "expected"), [
    ("s3://bucket/prefix/?region=eu-west-1", "s3://bucket/prefix?region=eu-west-1"),
    ("file:///data/shards", "file:///data/shards"),
    ("hdfs://user@namenode:9000/vids", "hdfs://user@namenode:9000/vids"),       # a user name, not a secret
    ("abfs://container@account.dfs.core.windows.net/p", "abfs://container@account.dfs.core.windows.net/p"),
    ("s3://AKIAEXAMPLE:wJalrS3KR1T@bucket/p", "embeds credentials"),
    ("s3://AKIAEXAMPLE@bucket/p", "embeds credentials"),                         # the user is the key id
    ("hdfs://user:pw@namenode:9000/p", "embeds credentials"),
    ("s3://bucket/p?secret_key=wJalrS3KR1T", "'secret_key' is a credential"),
    ("gs://bucket/p?access_token=ya29S3KR1T", "'access_token' is a credential"),
])
def test_shards_uri_is_normalised_and_never_stores_a_secret(uri: str, expected: str) -> None:
    if "://" in expected:
        assert normalize_shards_uri(uri) == expected
        return
    with pytest.raises(LibraryError, match=expected) as e:
        normalize_shards_uri(uri)
    assert "S3KR1T" not in str(e.value)


def test_local_manifest_has_no_shards_uri_and_format_pairs_with_it(tmp_path: Path) -> None:
    lib = Library(tmp_path)
    with lib.lock():
        lib.init(MODEL)
    raw = json.loads(lib.manifest_path.read_text())
    assert raw["format"] == 1 and "shards_uri" not in raw  # local libraries: bytes as before
    assert Manifest.from_json(json.dumps(raw)).shards_uri is None
    with pytest.raises(ValueError, match="shards_uri"):
        Manifest.from_json(json.dumps({**raw, "shards_uri": "s3://b/p"}))  # format 1 cannot have one
    with pytest.raises(ValueError, match="shards_uri"):
        Manifest.from_json(json.dumps({**raw, "format": 2}))


@pytest.mark.parametrize(("error", "kind"), [
    # pyarrow 26 / AWS SDK texts, as seen against a real S3 API (moto) and a closed port
    (OSError("When getting information for bucket 'b': AWS Error ACCESS_DENIED during HeadBucket operation: "
             "No response body."), "access denied"),
    (OSError("When listing objects under key 'p/' in bucket 'b': AWS Error NETWORK_CONNECTION during "
             "ListObjectsV2 operation: curlCode: 7, Could not connect to server"), "unreachable"),
    (PermissionError(13, "Permission denied"), "access denied"),
    (OSError("AWS Error NO_SUCH_BUCKET during PutObject operation (Request ID: X1)"), "no such bucket"),
])
def test_filesystem_errors_become_one_classified_line(error: OSError, kind: str) -> None:
    line = _explain(error)
    assert line.startswith(f"{kind} (") and "\n" not in line and "Request ID" not in line
