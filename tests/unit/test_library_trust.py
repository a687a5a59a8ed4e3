"""A library folder is input from a stranger (docs/RELIABILITY.md S1, D2, D3, D7, D8, D9).

Real parts only: manifests edited as a user could, shards rewritten with pyarrow, writers in
child processes killed with SIGKILL, a real full disk (``RLIMIT_FSIZE``) and a real read-only
mount (a private mount namespace, where the machine allows one).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_library import MODEL, make_tables

from vidsearch.library import (
    Library,
    LibraryError,
    LibraryLocked,
    LibraryReadOnly,
    NeedsWriterLock,
    ShardInvalid,
)
from vidsearch.library.catalog import READER_TABLES
from vidsearch.schemas.manifest import Manifest
from vidsearch.schemas.text_tables import TranscriptSegment, transcripts_table

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests" / "unit"),
                                                    os.environ.get("PYTHONPATH", "")])}


def cli(*args: Any, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vidsearch.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=ENV)


def snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (a read command must leave them all unchanged)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def small_library(root: Path, shards: int = 2) -> Library:
    lib = Library(root)
    with lib.lock():
        lib.init(MODEL)
        for i in range(shards):
            lib.commit(*make_tables(f"{i:032x}", 3, seed=i), run_id="r1")
    return lib


def edit_manifest(lib: Library, fn: Any) -> None:
    d = json.loads(lib.manifest_path.read_text())
    fn(d)
    lib.manifest_path.write_text(json.dumps(d))


# ---- S1: a crafted manifest --------------------------------------------------------------------

@pytest.mark.reliability
def test_s1_reproduction_crafted_shard_id_runs_no_sql(tmp_path: Path) -> None:
    """The review's reproduction: catalog deleted (a rebuildable cache), SQL in shard_id. Read
    commands (the web service too: it refuses to start) and writers refuse the manifest with one
    line naming the field; nothing is written anywhere."""
    lib = small_library(tmp_path / "evil")
    pwned = tmp_path / "PWNED.txt"
    lib.catalog_path.unlink()
    payload = f"1, row_in_shard FROM _clips; COPY (SELECT 'owned') TO '{pwned}' (HEADER false); --"
    edit_manifest(lib, lambda d: d["shards"][0].__setitem__("shard_id", payload))
    before = snapshot(lib.root)
    for args in (("sql", "SELECT 1"), ("status",), ("search", "x"), ("serve", "--port", "0"),
                 ("index",)):
        r = cli(*args, "--library", lib.root)
        assert r.returncode == 1, (args, r.stderr[-2000:])
        assert "manifest.json: malformed manifest (shards[0].shard_id: expected an integer" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    assert not pwned.exists()
    assert snapshot(lib.root) == before


@pytest.mark.parametrize(("edit", "field"), [
    (lambda d: d["shards"][0].__setitem__("clips_rows", "3"), "shards[0].clips_rows: expected an integer"),
    (lambda d: d["shards"][0].__setitem__("clips_rows", -1), "shards[0].clips_rows: -1 is out of range"),
    (lambda d: d["shards"][0].__setitem__("clips_rows", True), "shards[0].clips_rows: expected an integer, got the b"),
    (lambda d: d["shards"][0].__setitem__("videos_rows", 2**64), "shards[0].videos_rows: 18446744073709551616 is out"),
    (lambda d: d["shards"][1].__setitem__("shard_id", 2**40), "shards[1].shard_id: 1099511627776 is out of range"),
    (lambda d: d["shards"][0].__setitem__("clips_file", "shards/../../x/part-000001.parquet"), "shards[0].clips_file"),
    (lambda d: d["shards"][0].__setitem__("clips_file", "/etc/part-000001.parquet"), "shards[0].clips_file"),
    (lambda d: d["shards"][0].__setitem__("videos_file", "shards\\videos-000001.parquet"), "shards[0].videos_file"),
    (lambda d: d["shards"][0].__setitem__("clips_file", "shards/part-000002.parquet"), "shards[0].clips_file"),
    (lambda d: d["shards"][0].__setitem__("clips_sha256", "abc"), "shards[0].clips_sha256"),
    (lambda d: d["shards"][0].__setitem__("clips_sha256", "A" * 64), "shards[0].clips_sha256"),
    (lambda d: d["shards"].append(dict(d["shards"][0])), "shards[2].shard_id: 1 is listed twice"),
    (lambda d: d.pop("model"), "model: missing, but the manifest lists shards"),
    (lambda d: d["model"].__setitem__("embed_dim", "8"), "model.embed_dim: expected an integer"),
    (lambda d: d["model"].__setitem__("embed_dim", 0), "model.embed_dim: 0 is out of range"),
    (lambda d: d.__setitem__("generation", 1.0), "generation: expected an integer, got float"),
    (lambda d: d.__setitem__("library_id", "x'; DROP TABLE clips; --"), "library_id"),
    (lambda d: d["shards"][0].__setitem__("run_id", "r\n1"), "shards[0].run_id"),
    (lambda d: d["shards"][0].__setitem__("created_at", "yesterday"), "shards[0].created_at"),
    (lambda d: d["shards"][0].__setitem__("min_clip_id", 2**63), "shards[0].min_clip_id"),
    (lambda d: d["shards"][0].__setitem__("extra", 1), "shards[0]: unknown field 'extra'"),
    (lambda d: d["shards"][0].__setitem__("tables", {"../x": {}}), "shards[0].tables: '../x' is not an allowed"),
    (lambda d: d["runs"][0].__setitem__("clips", "12"), "runs[0].clips: expected an integer"),
    (lambda d: d["runs"][0].__setitem__("started_at", "2024' --"), "runs[0].started_at"),
    (lambda d: d.__setitem__("runs", {"a": 1}), "runs: expected a list"),
    (lambda d: d.__setitem__("format", True), "unsupported manifest format"),
])
def test_s1_every_manifest_field_is_checked(tmp_path: Path, edit: Any, field: str) -> None:
    lib = small_library(tmp_path / "lib")
    with lib.lock():
        lib.record_run({"run_id": "r1", "status": "ok", "clips": 6, "started_at": "2025-01-01T00:00:00+00:00"})
    edit_manifest(lib, edit)
    with pytest.raises(LibraryError) as e:
        Library(lib.root).read_manifest()
    assert str(e.value).startswith(f"{lib.manifest_path}: malformed manifest (")
    assert field in str(e.value), str(e.value)


def test_s1_non_finite_numbers_and_deep_nesting_refused(tmp_path: Path) -> None:
    lib = small_library(tmp_path / "lib", shards=0)
    text = lib.manifest_path.read_text()
    nan = re.sub(r'"generation": [0-9]+', '"generation": NaN', text)
    assert nan != text
    for bad in (nan, "[" * 100_000 + "]" * 100_000):
        lib.manifest_path.write_text(bad)
        with pytest.raises(LibraryError, match="malformed manifest"):
            Library(lib.root).read_manifest()


def test_s1_existing_manifests_read_and_write_the_same_bytes(tmp_path: Path) -> None:
    """Backward compatible: a manifest without the newer optional keys opens, and one written
    before this check round-trips byte for byte."""
    lib = small_library(tmp_path / "lib")
    text = lib.manifest_path.read_text()
    assert Manifest.from_json(text).to_json() == text
    d = json.loads(text)
    for s in d["shards"]:
        del s["min_clip_id"], s["max_clip_id"]
    m = Manifest.from_json(json.dumps(d))
    assert [s.min_clip_id for s in m.shards] == [None, None] and m.total_clips == 6


def test_s1_catalog_loads_on_a_locked_connection_without_sql_from_data(tmp_path: Path) -> None:
    """Readers' in-memory catalog uses registered Arrow tables and bound values only, so it works on
    a connection whose file access is already off and configuration locked."""
    lib = small_library(tmp_path / "lib", shards=3)
    lib.catalog_path.unlink()
    con = duckdb.connect(":memory:")
    for stmt in ("SET enable_external_access = false", "SET lock_configuration = true"):
        con.execute(stmt)
    load = lib.load_catalog_into(con)
    assert load.source == "shards" and load.shards_read == (1, 2, 3) and not load.left_out_shards
    assert con.execute("SELECT count(*), count(DISTINCT shard_id) FROM clips").fetchone() == (9, 3)
    assert con.execute("SELECT count(*) FROM videos").fetchone() == (3,)
    with pytest.raises(duckdb.PermissionException):
        con.execute("SELECT * FROM read_csv('/etc/hostname')")
    assert not lib.catalog_path.exists()


# ---- D7: a shard with a valid SHA-256 but another schema ---------------------------------------

def _string_ids(t: pa.Table) -> pa.Table:
    i = t.schema.get_field_index("clip_id")
    return t.set_column(i, "clip_id", pa.array([str(x) for x in t.column("clip_id").to_pylist()]))


def _no_path(t: pa.Table) -> pa.Table:
    return t.drop_columns(["path"])


def _short_embedding(t: pa.Table) -> pa.Table:
    i = t.schema.get_field_index("embedding")
    emb = pa.array([e[:4] for e in t.column("embedding").to_pylist()], pa.list_(pa.float32(), 4))
    return t.set_column(i, "embedding", emb)


def _not_parquet(t: pa.Table) -> bytes:
    return b"PAR1 this is not parquet PAR1"


def _parquet_bytes(t: pa.Table) -> bytearray:
    sink = pa.BufferOutputStream()
    pq.write_table(t, sink)
    return bytearray(sink.getvalue().to_pybytes())


def _garbled_footer(t: pa.Table) -> bytes:
    """Magic and footer length intact, the footer's Thrift bytes not (pyarrow: a plain OSError)."""
    data = _parquet_bytes(t)
    n = int.from_bytes(data[-8:-4], "little")
    data[-8 - n:-8] = b"\xff" * n
    return bytes(data)


def _garbled_page_header(t: pa.Table) -> bytes:
    """The footer and schema intact, the first data page's header not: fails only when read."""
    data = _parquet_bytes(t)
    off = pq.ParquetFile(pa.BufferReader(bytes(data))).metadata.row_group(0).column(0).data_page_offset
    data[off:off + 8] = b"\xff" * 8
    return bytes(data)


@pytest.mark.parametrize("damage", [_string_ids, _no_path, _short_embedding, _not_parquet, _garbled_footer])
def test_d7_wrong_schema_shard_is_left_out_by_readers_and_set_aside_by_writers(tmp_path: Path, damage: Any) -> None:
    lib = small_library(tmp_path / "lib", shards=3)
    m = lib.read_manifest()
    bad = m.shards[1]
    path = lib.root / bad.clips_file
    out = damage(pq.read_table(path))
    if isinstance(out, bytes):
        path.write_bytes(out)
    else:
        pq.write_table(out, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    edit_manifest(lib, lambda d: d["shards"][1].__setitem__("clips_sha256", digest))  # a valid SHA-256
    lib.catalog_path.unlink()  # readers build it from the shards
    before = snapshot(lib.root)
    with pytest.raises(ShardInvalid, match=r"part-000002.parquet: (wrong schema|not a readable Parquet)"):
        Library(lib.root).read_shard(lib.read_manifest().shards[1], "clips", verify=True)
    reader = Library(lib.root)
    with reader.open_catalog_readonly() as cat:
        assert cat.con.execute("SELECT count(*) FROM clips").fetchone() == (6,)  # the two intact shards
        assert list(cat.load.left_out_shards) == [2]
    assert reader.left_out_shards.keys() == {2}
    problems = Library(lib.root).verify()
    assert len(problems) == 1 and "part-000002.parquet" in problems[0]
    assert snapshot(lib.root) == before  # readers wrote nothing
    with lib.lock():
        assert lib.quarantine_bad_shards() == [2]
    m = lib.read_manifest()
    assert [s.shard_id for s in m.shards] == [1, 3, 4] and Library(lib.root).verify() == []
    assert any(p.name.endswith("part-000002.parquet") for p in lib.quarantine_dir.iterdir())
    with lib.connect_catalog() as con:
        assert con.execute("SELECT status, error_type FROM videos WHERE video_id = ?",
                           [f"{1:032x}"]).fetchone() == ("failed", "ShardCorrupt")


def test_d7_garbled_data_page_is_a_shard_invalid_and_left_out_by_readers(tmp_path: Path) -> None:
    """pyarrow reports an undecodable page as a plain OSError (no errno): it is the file's fault,
    so readers leave the shard out with a warning instead of crashing. (Writers' start-up check
    reads footers only, so with a matching SHA-256 this damage is found when a shard is read.)"""
    lib = small_library(tmp_path / "lib", shards=3)
    path = lib.root / lib.read_manifest().shards[1].clips_file
    path.write_bytes(_garbled_page_header(pq.read_table(path)))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    edit_manifest(lib, lambda d: d["shards"][1].__setitem__("clips_sha256", digest))
    lib.catalog_path.unlink()
    before = snapshot(lib.root)
    with pytest.raises(ShardInvalid, match=r"part-000002.parquet: not a readable Parquet file \(Couldn't deser"):
        Library(lib.root).read_shard(lib.read_manifest().shards[1], "clips", verify=True)
    with Library(lib.root).open_catalog_readonly() as cat:
        assert cat.con.execute("SELECT count(*) FROM clips").fetchone() == (6,)
        assert list(cat.load.left_out_shards) == [2]
    assert snapshot(lib.root) == before


def test_d7_an_os_error_reading_a_shard_is_no_verdict_on_the_file(tmp_path: Path) -> None:
    """Only errors about the bytes make a shard invalid; one the OS reports (here: the file is gone
    between listing and reading) propagates, so a writer never sets a good shard aside for it."""
    from vidsearch.library.shards import footer_schema, read_parquet

    with pytest.raises(FileNotFoundError):
        footer_schema(str(tmp_path / "gone.parquet"))
    with pytest.raises(FileNotFoundError):
        read_parquet(str(tmp_path / "gone.parquet"), "shards/gone.parquet", None, None)
    t = pa.table({"clip_id": [1, 2, 3]})
    assert "Couldn't deserialize thrift" in str(footer_schema(pa.BufferReader(_garbled_footer(t))))


# ---- D2: the writer lock is a kernel lock ------------------------------------------------------

_HOLDER = """
import resource, signal, sys, time
if {no_space}:  # every write fails as on a full disk (EFBIG), the holder record included
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
from vidsearch.library import Library
lib = Library({root!r})
with lib.lock():
    print("locked", flush=True)
    time.sleep(120)
"""


def _start_holder(root: Path, no_space: bool = False) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", _HOLDER.format(root=str(root), no_space=no_space)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    assert p.stdout is not None and p.stdout.readline().strip() == "locked", p.stderr.read() if p.stderr else ""
    return p


@pytest.mark.parametrize("no_space", [False, True])
def test_d2_a_killed_writer_never_locks_the_library_out(tmp_path: Path, no_space: bool) -> None:
    lib = small_library(tmp_path / "lib", shards=1)
    holder = _start_holder(lib.root, no_space)
    try:
        who = lib.writer()
        assert who is not None
        if no_space:  # no record could be written: still locked, with a message that says so
            assert who["pid"] is None and lib.lock_path.stat().st_size == 0
            match = "locked by another process \\(its holder record is unreadable\\)"
        else:
            assert who["pid"] == holder.pid
            match = f"locked by pid {holder.pid} on "
        with pytest.raises(LibraryLocked, match=match), lib.lock():
            pass
        with pytest.raises(LibraryLocked, match="--break-lock cannot take the lock from a running process"), \
                lib.lock(break_lock=True):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lib.lock_path.exists()  # left behind by the killed holder: a record, not a lock
    assert lib.writer() is None
    t0 = time.monotonic()
    with lib.lock():
        assert lib.holds_lock and Library(lib.root).holds_lock  # any Library object of this process
        assert json.loads(lib.lock_path.read_text())["pid"] == os.getpid()
    assert time.monotonic() - t0 < 5
    assert not lib.lock_path.exists() and lib.writer() is None


def test_d2_writer_only_operations_need_the_lock(tmp_path: Path) -> None:
    lib = small_library(tmp_path / "lib", shards=1)
    before = snapshot(lib.root)
    for call in (lib.recover, lib.refresh_catalog, lib.quarantine_bad_shards,
                 lambda: lib.commit(*make_tables("f" * 32, 1), run_id="r"),
                 lambda: lib.record_run({"run_id": "r9", "status": "ok"}), lambda: lib.init(MODEL)):
        with pytest.raises(NeedsWriterLock, match="needs the writer lock"):
            call()
    assert snapshot(lib.root) == before


# ---- D8: runs left "running" ----------------------------------------------------------------------

_DIES_RUNNING = """
import os, signal
from test_library import MODEL, make_tables
from vidsearch.library import Library
lib = Library({root!r})
with lib.lock():
    lib.init(MODEL)
    lib.record_run({{"run_id": "r-dead", "status": "running", "started_at": "2025-01-01T00:00:00+00:00"}})
    lib.commit(*make_tables("a" * 32, 2), run_id="r-dead")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_d8_a_killed_run_is_reported_dead_by_readers_and_closed_by_the_next_writer(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    r = subprocess.run([sys.executable, "-c", _DIES_RUNNING.format(root=str(root))], env=ENV, timeout=120)
    assert r.returncode == -signal.SIGKILL
    lib = Library(root)
    shard_time = lib.read_manifest().shards[0].created_at
    assert [x["status"] for x in lib.read_manifest().runs] == ["running"]
    before = snapshot(root)
    # Readers: dead, with its last activity as its end; nothing written.
    (run,) = lib.runs()
    assert (run["status"], run["ended_at"]) == ("interrupted", shard_time)
    with lib.connect_catalog() as con:
        assert con.execute("SELECT status, ended_at IS NOT NULL FROM runs").fetchall() == [("interrupted", True)]
    st = cli("status", "--json", "--library", root)
    assert st.returncode in (0, 2) and json.loads(st.stdout)["runs"][-1]["status"] == "interrupted"
    assert snapshot(root) == before
    # The next writer records it.
    with lib.lock():
        pass
    (run,) = lib.read_manifest().runs
    assert (run["status"], run["ended_at"]) == ("interrupted", shard_time)


@pytest.mark.parametrize(("error", "status"), [(RuntimeError("boom"), "failed"), (KeyboardInterrupt(), "interrupted")])
def test_d8_a_writer_that_fails_closes_its_own_run(tmp_path: Path, error: BaseException, status: str) -> None:
    lib = small_library(tmp_path / "lib", shards=1)
    with pytest.raises(type(error)), lib.lock():
        lib.record_run({"run_id": "r2", "status": "running", "started_at": "2025-01-01T00:00:00+00:00"})
        raise error
    run = next(r for r in lib.read_manifest().runs if r["run_id"] == "r2")
    assert run["status"] == status and run["ended_at"] is not None


# ---- D9: a first ingest that ran out of disk ------------------------------------------------------

_FULL_FIRST_INGEST = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
from test_library import MODEL, make_tables
from vidsearch.library import DiskFull, Library
lib = Library({root!r})
with lib.lock():
    lib.init(MODEL)
    lib.record_run({{"run_id": "r1", "status": "running", "started_at": "2025-01-01T00:00:00+00:00"}})
    # What the first catalog (0 shards) is made of; the next copy of it cannot be written.
    resource.setrlimit(resource.RLIMIT_FSIZE, (lib.catalog_path.stat().st_size // 2,) * 2)
    for i in range(3):  # deferred refreshes, as a long run does
        lib.commit(*make_tables(f"{{i:032x}}", 3, seed=i), run_id="r1", refresh_catalog=False)
    try:
        lib.refresh_catalog()  # the end-of-run refresh
    except DiskFull as e:
        print("DiskFull", e, flush=True)
"""


@pytest.mark.reliability
def test_d9_committed_shards_are_searchable_after_a_disk_full_first_ingest(tmp_path: Path) -> None:
    from vidsearch.search import Searcher

    root = tmp_path / "lib"
    r = subprocess.run([sys.executable, "-c", _FULL_FIRST_INGEST.format(root=str(root))], env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("DiskFull disk full writing"), r.stderr[-2000:]
    lib = Library(root)
    m = lib.read_manifest()
    assert m.total_clips == 9 and not lib.catalog_is_current()
    with duckdb.connect(str(lib.catalog_path), read_only=True) as con:  # the file is the empty first one
        assert con.execute("SELECT count(*) FROM clips").fetchone() == (0,)
    before = snapshot(root)
    with lib.open_catalog_readonly() as cat:
        assert cat.stale is not None and "behind the manifest" in cat.stale
        assert cat.load.source == "catalog+shards" and cat.load.shards_read == (1, 2, 3)
        assert cat.con.execute("SELECT count(*) FROM clips").fetchone() == (9,)
        assert {t for (t,) in cat.con.execute("SELECT table_name FROM duckdb_tables() UNION "
                                               "SELECT view_name FROM duckdb_views()").fetchall()} >= set(READER_TABLES)
    st = cli("status", "--json", "--library", root)
    assert json.loads(st.stdout)["clips"] == 9, st.stderr[-2000:]
    sql = cli("sql", "SELECT count(*) AS n FROM clips", "--json", "--library", root)
    assert sql.returncode == 0 and '"n": 9' in sql.stdout.replace('"n":9', '"n": 9'), sql.stdout + sql.stderr[-2000:]
    target = pq.read_table(lib.root / m.shards[2].clips_file)
    vec = target.column("embedding")[0].values.to_numpy()
    with Searcher(lib, record_history=False) as searcher:
        hit = searcher.search(vector=vec, k=1, merge=False).hits[0]
    assert hit.clip_id == target.column("clip_id")[0].as_py() and hit.path.endswith(f"{2:032x}.mp4")
    assert snapshot(root) == before


# ---- D3: a read-only library ----------------------------------------------------------------------

def _can_mount_private() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.reliability
@pytest.mark.skipif(not _can_mount_private(), reason="needs a private mount namespace (unshare -m) for a ro bind mount")
def test_d3_read_only_library_writers_fail_in_one_line_readers_work(tmp_path: Path) -> None:
    lib = small_library(tmp_path / "lib", shards=2)
    (tmp_path / "v.mp4").write_bytes(b"")
    before = snapshot(lib.root)
    script = " ; ".join(
        [f"mount --bind {lib.root} {lib.root} && mount -o remount,bind,ro {lib.root} || exit 99"]
        + [f"{sys.executable} -m vidsearch.cli {args} --library {lib.root} "
           f"> {tmp_path}/{name}.out 2> {tmp_path}/{name}.err; echo $? > {tmp_path}/{name}.rc"
           for name, args in (("ingest", f"ingest {tmp_path}/v.mp4 --model internvideo2-tiny --new-index "
                                         "--executor local"),
                              ("index", "index"), ("status", "status --json"),
                              ("sql", "sql 'SELECT count(*) AS n FROM clips' --json"))])
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode != 99, r.stderr

    def out(name: str) -> tuple[int, str, str]:
        return (int((tmp_path / f"{name}.rc").read_text()), (tmp_path / f"{name}.out").read_text(),
                (tmp_path / f"{name}.err").read_text())

    for writer in ("ingest", "index"):
        rc, _, err = out(writer)
        lines = [x for x in err.splitlines() if not x.startswith("WARNING")]
        assert rc == 1 and "Traceback" not in err, err
        assert len(lines) == 1 and "read-only filesystem" in lines[0] and str(lib.root) in lines[0], err
    rc, so, err = out("status")
    assert rc == 0 and json.loads(so)["clips"] == 6, err
    rc, so, err = out("sql")
    assert rc == 0 and "6" in so, err
    assert snapshot(lib.root) == before


def test_d3_read_only_errors_are_library_errors() -> None:
    assert issubclass(LibraryReadOnly, LibraryError) and issubclass(ShardInvalid, LibraryError)


# ---- extra per-commit tables (for transcripts, screen text, tags) --------------------------------

def test_commit_carries_extra_tables_listed_hashed_and_recovered(tmp_path: Path) -> None:
    lib = small_library(tmp_path / "lib", shards=1)
    extra = transcripts_table([TranscriptSegment("b" * 32, 1, 0, 0.0, 1.0, "hello", "subtitle", "sidecar:b.srt")], "r")
    with lib.lock():
        entry = lib.commit(*make_tables("b" * 32, 2), run_id="r", tables={"transcripts": extra})
        with pytest.raises(ValueError, match="not an allowed extra table name"):
            lib.commit(*make_tables("c" * 32, 1), run_id="r", tables={"../x": extra})
    assert entry.tables["transcripts"].file == "shards/transcripts-000002.parquet"
    assert entry.tables["transcripts"].rows == 1
    m = lib.read_manifest()
    assert m.shards[-1] == entry and "shards/transcripts-000002.parquet" in json.loads(lib.manifest_path.read_text()
                                                                                   )["shards"][1]["tables"]["transcripts"]["file"]
    assert "tables" not in json.loads(lib.manifest_path.read_text())["shards"][0]  # old entries unchanged
    assert lib.read_shard(entry, "transcripts", verify=True).equals(extra.replace_schema_metadata(None)) or \
        lib.read_shard(entry, "transcripts", verify=True).column("text").to_pylist() == ["hello"]
    with pytest.raises(ShardInvalid, match="wrong schema"):
        lib.read_shard(entry, "transcripts", schema=pa.schema([("text", pa.int64())]))
    # Verified and quarantined with its shard; an unlisted one (a kill before the manifest) is removed.
    (lib.shards_dir / "transcripts-000009.parquet").write_bytes(b"x")
    (lib.root / entry.tables["transcripts"].file).write_bytes(b"corrupt")
    assert any("transcripts-000002.parquet" in p for p in lib.verify())
    with lib.lock():
        assert not (lib.shards_dir / "transcripts-000009.parquet").exists()
        assert lib.quarantine_bad_shards() == [2]
    assert Library(lib.root).verify() == []
