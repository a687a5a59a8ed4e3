"""docs/RELIABILITY.md §8.2, the library's storage faults: F8 (disk full), F10 (corrupt, missing or
foreign shard), F12 (search during ingest) and F15 (corrupt catalog or WAL).

Real parts only: the disk is "filled" by ``RLIMIT_FSIZE`` in a child process with SIGXFSZ
ignored (every write past the limit fails with EFBIG, as on a full disk), the WAL is one a real
DuckDB writer left when it was killed, and F12 runs the real CLI in separate processes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
from media_tools import TEST_MODEL
from reliability.fault_tools import REPO, env_with_repo
from reliability.invariants import assert_same_library, check_library

from vidsearch.library import Library
from vidsearch.pipeline.runner import IngestOptions, IngestSummary, run_ingest
from vidsearch.schemas.config import IngestCfg

_spec = importlib.util.spec_from_file_location("_synth_storage", Path(__file__).parents[1] / "unit" / "conftest.py")
synth = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = synth
_spec.loader.exec_module(synth)

CFG = IngestCfg(decode_workers=1, shard_rows=1, batch_size=4)  # one shard per video


@pytest.fixture(scope="session")
def corpus(fault_corpus: Path) -> Path:
    """The fault tests' shared corpus ``v0.mp4`` .. ``v3.mp4`` (tests/conftest.py)."""
    return fault_corpus


def ingest(inputs: Path, lib: Path, **kw: Any) -> IngestSummary:
    opts = IngestOptions(model=TEST_MODEL, executor="local", progress=False, **kw)
    return run_ingest([inputs], lib, CFG, opts)


@pytest.fixture(scope="session")
def clean_lib(clean_library: Path) -> Path:
    """The corpus ingested undisturbed, shared by the session (tests/conftest.py); copy it to change it."""
    return clean_library


# ---- F8: disk full ------------------------------------------------------------------------------

_FULL_DISK = """
import datetime, json, resource, signal, sys
sys.path.insert(0, {tests!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
import numpy as np
from vidsearch.indexer import update_index
from vidsearch.library import DiskFull, Library
import conftest as synth
lib, out = Library({root!r}), {{}}
rng = np.random.default_rng(1)
def tables(n, vid):
    video = dict({video!r}, ingested_at=datetime.datetime.now(datetime.UTC))
    video.update(video_id=vid, path=f"/media/full/{{vid}}.mp4", path_bytes=f"/media/full/{{vid}}.mp4".encode(),
                 num_clips=n)
    v = rng.standard_normal((n, {dim})).astype(np.float32)
    return synth.make_shard_tables([video], [n], [v / np.linalg.norm(v, axis=1, keepdims=True)],
                                   synth.SYNTH_FINGERPRINT, {dim})[:2]
with lib.lock():
    for step, action in (("shard", lambda: lib.commit(*tables(6000, "b" * 32), run_id="full")),
                         ("catalog", lambda: lib.commit(*tables(3, "c" * 32), run_id="full")),
                         ("index", lambda: update_index(lib))):
        try:
            action()
            out[step] = None
        except DiskFull as e:
            out[step] = str(e)
print(json.dumps(out))
"""


@pytest.mark.slow  # docs/RELIABILITY.md 8.4: slow tier (the unit DiskFull test is in tests/unit)
def test_f8_disk_full_during_shard_write_catalog_and_index(tmp_path: Path) -> None:
    from vidsearch.indexer import load_index, read_meta, update_index
    from vidsearch.search import Searcher

    s = synth.build_synthetic_library(tmp_path / "lib", 4000, dim=64, seed=3)
    with s.lib.lock():
        update_index(s.lib)
    lib = s.lib
    manifest_before = lib.manifest_path.read_bytes()
    meta_before = read_meta(lib)
    index_bytes = (lib.index_dir / meta_before.index_file).stat().st_size
    catalog_bytes = lib.catalog_path.stat().st_size
    limit = 512 * 1024
    # The limit sits below the big shard (6000 x 64 floats), the catalog copy and the index, and
    # above the manifest and the small shard: each step fails at a different file.
    assert catalog_bytes > limit and index_bytes > limit
    script = _FULL_DISK.format(tests=str(REPO / "tests" / "unit"), limit=limit, root=str(lib.root), dim=64,
                               video={k: v for k, v in s.videos[0].items() if k not in ("mtime", "ingested_at")})
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       env=env_with_repo())
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    # 1. Shard write: a clear error naming the file, nothing of the commit visible.
    assert out["shard"] and out["shard"].startswith(f"disk full writing {lib.tmp_dir}/part-"), out["shard"]
    assert "(6000 clips) was not written; the library keeps its 4000 committed clips" in out["shard"]
    # 2. A small shard fits but the catalog refresh does not: the shard is committed, the catalog is behind.
    assert out["catalog"] and "shard" in out["catalog"] and "is committed but the catalog is behind" in out["catalog"]
    assert "catalog" in out["catalog"].split(":")[0]
    # 3. The index: the previous one stays in force, and the new files of the attempt are gone.
    assert out["index"] and out["index"].startswith("disk full writing ")
    assert "the index was not updated" in out["index"]
    assert not any(lib.tmp_dir.iterdir()), list(lib.tmp_dir.iterdir())
    assert read_meta(lib) == meta_before
    on_disk = {p.relative_to(lib.index_dir).as_posix() for p in lib.index_dir.rglob("*") if p.is_file()}
    assert on_disk == {"index.json", meta_before.index_file} | {f for c in meta_before.shards
                                                               for f in (c.vectors_file, c.ids_file)}
    m = lib.read_manifest()
    assert m.total_clips == 4003 and manifest_before != lib.manifest_path.read_bytes()
    assert lib.verify() == []
    load_index(lib, m)  # the previous index still loads (its SHA-256 checked) and answers
    with Searcher(lib, record_history=False) as searcher:
        assert searcher.search(vector=s.vectors[17], k=3, merge=False).hits[0].clip_id == s.clip_ids[17]
    # Space freed: the same writer steps succeed and the library is whole.
    with lib.lock():
        lib.refresh_catalog()
        assert update_index(lib).vectors == 4003
    check_library(lib.root)


@pytest.mark.slow
def test_f8_ingest_cli_on_a_full_disk_says_so_and_resumes(corpus: Path, clean_lib: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    limit = 1 << 20  # the catalog (a few MB) does not fit; shards would

    def limited() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = [sys.executable, "-m", "vidsearch.cli", "-q", "ingest", str(corpus), "--library", str(lib),
           "--model", TEST_MODEL, "--executor", "local", "--decode-workers", "1", "--shard-rows", "3",
           "--batch-size", "4"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env_with_repo(), preexec_fn=limited)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert f"vidsearch: error: disk full writing {lib}" in r.stderr and "Free space and rerun" in r.stderr
    assert not any((lib / ".tmp").iterdir())
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env_with_repo())
    assert r.returncode == 0, r.stderr[-3000:]
    check_library(lib)
    assert_same_library(lib, clean_lib)


# ---- F10: corrupt, missing or foreign shard ---------------------------------------------------------

def _damage_shards(root: Path) -> tuple[Any, Any]:
    """Truncate the clips file of one shard, delete the videos file of another, add foreign files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    a, b = [s for s in Library(root).read_manifest().shards if s.clips_rows][:2]
    pa_ = root / a.clips_file
    pa_.write_bytes(pa_.read_bytes()[: pa_.stat().st_size // 2])
    (root / b.videos_file).unlink()
    pq.write_table(pa.table({"clip_id": [1, 2, 3], "embedding": [[0.0] * 4] * 3}), root / "shards" / "foreign.parquet")
    (root / "shards" / "garbage.parquet").write_bytes(b"PAR1" + os.urandom(300))
    return a, b


def test_f10_readers_answer_from_intact_shards_and_report_reduced_coverage(clean_lib: Path, tmp_path: Path) -> None:
    from vidsearch.commands.status import library_status
    from vidsearch.search import Searcher

    root = tmp_path / "lib"
    shutil.copytree(clean_lib, root)
    lib = Library(root)
    with duckdb.connect(str(lib.catalog_path), read_only=True) as con:
        all_clips = {r[0] for r in con.execute("SELECT clip_id FROM clips").fetchall()}
    a, b = _damage_shards(root)
    with duckdb.connect(str(lib.catalog_path), read_only=True) as con:
        lost_clips = {r[0] for r in con.execute("SELECT clip_id FROM clips WHERE shard_id IN (?, ?)",
                                                [a.shard_id, b.shard_id]).fetchall()}
    # Catalog and index gone too: every reader has to read the shards.
    lib.catalog_path.unlink()
    shutil.rmtree(lib.index_dir)
    with Searcher(lib, record_history=False) as searcher:
        res = searcher.search("anything", k=50, merge=False)
    assert {h.clip_id for h in res.hits} == all_clips - lost_clips  # k covers all: exactly the intact ones
    for s in (a, b):
        assert any(f"reduced coverage: the {s.clips_rows} clips of shard {s.shard_id} are not searched" in w
                   for w in res.warnings), res.warnings
    st = library_status(root)
    assert not st["health"]["ok"] and any("SHA-256 mismatch" in p for p in st["health"]["problems"])
    assert any("foreign.parquet (not in the manifest; ignored)" in p for p in st["health"]["problems"])


def test_f10_corrupt_and_missing_shards_are_quarantined_and_re_ingested(corpus: Path, clean_lib: Path,
                                                                         tmp_path: Path) -> None:
    from vidsearch.commands.status import library_status
    from vidsearch.search import Searcher

    root = tmp_path / "lib"
    shutil.copytree(clean_lib, root)
    lib = Library(root)
    a, b = _damage_shards(root)
    with duckdb.connect(str(lib.catalog_path), read_only=True) as con:
        lost = {r[0] for r in con.execute(
            "SELECT video_id FROM videos WHERE shard_id IN (?, ?) OR video_id IN "
            "(SELECT video_id FROM clips WHERE shard_id IN (?, ?))", [a.shard_id, b.shard_id] * 2).fetchall()}
    assert len(lost) == 2
    with Searcher(lib, record_history=False) as searcher:  # index and catalog intact: still answers
        assert searcher.search("anything", k=3).hits
    # The writer sets both pairs aside and marks their videos for re-ingest.
    with lib.lock():
        assert lib.quarantine_bad_shards() == sorted([a.shard_id, b.shard_id])
    assert {a.shard_id, b.shard_id}.isdisjoint(s.shard_id for s in lib.read_manifest().shards)
    kept = sorted(p.name.split("-", 1)[1] for p in lib.quarantine_dir.iterdir())
    # Every file of both shards that was still there, the extra per-commit tables (text_status) too.
    extra = [Path(t.file).name for s in (a, b) for t in s.tables.values()]
    assert extra and kept == sorted([Path(a.clips_file).name, Path(a.videos_file).name, Path(b.clips_file).name,
                                     *extra])
    with lib.connect_catalog() as con:
        rows = dict(con.execute("SELECT video_id, error_type FROM videos WHERE status = 'failed'").fetchall())
        assert con.execute("SELECT count(*) FROM clips WHERE shard_id IN (?, ?)",
                           [a.shard_id, b.shard_id]).fetchone() == (0,)
    assert rows == dict.fromkeys(lost, "ShardCorrupt")
    assert library_status(root)["failures_by_type"] == {"ShardCorrupt": 2}
    # The next ingest of the same folder redoes exactly those videos; foreign files stay ignored.
    s = ingest(corpus, root)
    assert (s.videos_done, s.videos_skipped, s.videos_failed) == (2, 2, 0)
    assert sorted(lib.verify()) == [f"stray file shards/{n}.parquet (not in the manifest; ignored)"
                                    for n in ("foreign", "garbage")]
    for n in ("foreign", "garbage"):
        (root / "shards" / f"{n}.parquet").unlink()
    check_library(root)
    assert_same_library(root, clean_lib)


def test_f10_ingest_sets_bad_shards_aside_itself(corpus: Path, clean_lib: Path, tmp_path: Path) -> None:
    root = tmp_path / "lib"
    shutil.copytree(clean_lib, root)
    a = Library(root).read_manifest().shards[-1]
    p = root / a.clips_file
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit: only the SHA-256 sees it
    p.write_bytes(bytes(data))
    s = ingest(corpus, root)
    assert (s.shards_quarantined, s.videos_done, s.videos_skipped) == (1, 1, 3)
    check_library(root)
    assert_same_library(root, clean_lib)


# ---- F15: corrupt catalog or WAL -----------------------------------------------------------------

_WAL_WRITER = """
import duckdb, os, signal
con = duckdb.connect({db!r})
con.execute("SET checkpoint_threshold = '1GB'")
con.execute("UPDATE videos SET path = 'EVIL' WHERE true")   # what a foreign writer would change
os.kill(os.getpid(), signal.SIGKILL)                        # killed before any checkpoint
"""


def _damage(lib: Library, how: str) -> None:
    if how.startswith("wal"):
        subprocess.run([sys.executable, "-c", _WAL_WRITER.format(db=str(lib.catalog_path))], timeout=60)
        wal = lib.catalog_wal_path
        assert wal.stat().st_size > 0
        if how == "wal_truncated":
            wal.write_bytes(wal.read_bytes()[: wal.stat().st_size // 2])
        elif how == "wal_random":
            wal.write_bytes(os.urandom(wal.stat().st_size))
    elif how == "db_random":
        lib.catalog_path.write_bytes(os.urandom(lib.catalog_path.stat().st_size))
    elif how == "db_truncated":
        lib.catalog_path.write_bytes(lib.catalog_path.read_bytes()[:100_000])


@pytest.mark.parametrize(("how", "writer"), [("wal", "search"), ("wal_truncated", "ingest"),
                                              ("wal_random", "search"), ("db_random", "ingest"),
                                              ("db_truncated", "search")])
def test_f15_corrupt_catalog_or_wal_is_set_aside_and_rebuilt(corpus: Path, clean_lib: Path, tmp_path: Path,
                                                              how: str, writer: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    from vidsearch.search import Searcher

    root = tmp_path / "lib"
    shutil.copytree(clean_lib, root)
    lib = Library(root)
    n_clips = lib.read_manifest().total_clips
    _damage(lib, how)
    # Readers never replay the WAL nor crash: they answer from the shards until a writer rebuilds.
    assert not lib.catalog_is_current()
    with lib.connect_catalog() as con:
        assert con.execute("SELECT count(*) FROM clips").fetchone() == (n_clips,)
        assert con.execute("SELECT count(*) FROM videos WHERE path = 'EVIL'").fetchone() == (0,)
    # A search answers around it and changes nothing (read commands do not write, rule 13); the
    # next writer (an ingest, or the refresh any writer does) moves it aside once.
    if writer == "ingest":
        s = ingest(corpus, root)
        assert (s.videos_skipped, s.exit_code) == (4, 0)
    else:
        damaged = {p.name: p.read_bytes() for p in (lib.catalog_path, lib.catalog_wal_path) if p.exists()}
        with Searcher(lib, record_history=False) as searcher:
            assert searcher.search("anything", k=3).hits
        assert {p.name: p.read_bytes() for p in (lib.catalog_path, lib.catalog_wal_path) if p.exists()} == damaged
        assert not lib.quarantine_dir.exists() or not any(lib.quarantine_dir.iterdir())
        with lib.lock():
            lib.refresh_catalog()
    assert any("moved aside" in r.getMessage() for r in caplog.records)
    assert not lib.catalog_wal_path.exists() and lib.catalog_is_current()
    aside = sorted(p.name.split("-", 2)[2] for p in lib.quarantine_dir.iterdir())
    assert aside == (["catalog.duckdb", "catalog.duckdb.wal"] if how.startswith("wal") else ["catalog.duckdb"])
    with duckdb.connect(str(lib.catalog_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM clips").fetchone() == (n_clips,)
        assert con.execute("SELECT count(*) FROM videos WHERE path = 'EVIL'").fetchone() == (0,)
    # No loop: the rebuilt catalog is trusted by the next writer.
    with lib.lock():
        lib.refresh_catalog()
    assert len(list(lib.quarantine_dir.iterdir())) == len(aside)
    check_library(root)
    assert_same_library(root, clean_lib)


# ---- F12: search in another process while an ingest commits ----------------------------------------

@pytest.mark.slow
def test_f12_cli_search_during_ingest_sees_only_committed_clips(corpus: Path, tmp_path: Path) -> None:
    lib = Library(tmp_path / "lib")
    # A long ingest (4 videos, ~12 s each, one commit per video): commits further apart than the
    # writer's 10 s catalog-refresh floor, so searches can see the clips grow between commits.
    env = {**env_with_repo(), "VIDSEARCH_TEST_DECODE_FAULT": "slow=12:.mp4"}
    ingest_p = subprocess.Popen(
        [sys.executable, "-m", "vidsearch.cli", "-q", "ingest", str(corpus), "--library", str(lib.root),
         "--model", TEST_MODEL, "--executor", "local", "--decode-workers", "1", "--shard-rows", "1",
         "--batch-size", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    committed: dict[int, set[int]] = {}

    def committed_ids() -> set[int]:
        """Clip ids in the shards the manifest lists now (shards are immutable: cached)."""
        for s in lib.read_manifest().shards:
            if s.shard_id not in committed:
                committed[s.shard_id] = set(lib.read_shard(s, "clips", columns=["clip_id"])
                                            .column("clip_id").to_pylist())
        return set().union(*committed.values())

    searches: list[tuple[int, int]] = []  # (generation after, hits)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (lib.exists() and lib.read_manifest().total_clips):
            time.sleep(0.2)
        while ingest_p.poll() is None and time.monotonic() < deadline:
            r = subprocess.run([sys.executable, "-m", "vidsearch.cli", "search", "test pattern", "--library",
                                str(lib.root), "--json", "-k", "50", "--no-merge", "--no-history"],
                               capture_output=True, text=True, timeout=120, env=env_with_repo())
            assert r.returncode == 0, r.stderr[-3000:]
            assert "lock" not in r.stderr.lower(), r.stderr[-3000:]
            hits = {int(h["clip_id"]) for h in json.loads(r.stdout)["hits"]}  # JSON ids are strings
            allowed = committed_ids()  # read after the search returned: an upper bound of what it saw
            assert hits and hits <= allowed, hits - allowed
            searches.append((lib.read_manifest().generation, len(hits)))
        out, err = ingest_p.communicate(timeout=240)
    finally:
        if ingest_p.poll() is None:
            ingest_p.kill()
    assert ingest_p.returncode == 0, err[-3000:]
    # A search CLI takes 5-10 s on the shared 2-core machine: a few of them, spanning commits.
    assert len({g for g, _ in searches}) >= 2, searches  # it saw the ingest progress
    assert len({n for _, n in searches}) >= 2, searches  # and more clips as commits landed
    check_library(lib.root)
