"""docs/RELIABILITY.md R1: read commands never change the library, whatever state it is in.

Each test damages a copy of one indexed library the way the field does (a catalog a killed
writer left behind, a corrupt or foreign catalog, a write-ahead log nobody wrote, a corrupt or
missing index, a read-only folder), then runs every kind of search the CLI and the web server
do, plus ``sql`` and ``status``. The searches must answer, with a warning naming the repair, and
every file of the library must be byte-identical afterwards: only ``history.duckdb`` and
``thumbs/`` may change. (As root, ``chmod -R a-w`` does not stop writes; the snapshot catches any.)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vidsearch.cli import main
from vidsearch.indexer import read_meta, update_index

_spec = importlib.util.spec_from_file_location("_synth_ro", Path(__file__).parents[1] / "unit" / "conftest.py")
synth = importlib.util.module_from_spec(_spec)
sys.modules["_synth_ro"] = synth
_spec.loader.exec_module(synth)  # type: ignore[union-attr]

ALLOWED = ("history.duckdb", "history.duckdb.wal", "thumbs")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from vidsearch.models import create_text_encoder

    fp = create_text_encoder("internvideo2-tiny").fingerprint
    s = synth.build_synthetic_library(tmp_path_factory.mktemp("ro") / "lib", 800, seed=21, fingerprint=fp,
                                      model_name="internvideo2-tiny")
    with s.lib.lock():
        update_index(s.lib)
    return s


@pytest.fixture
def s(built: Any, tmp_path: Path) -> Iterator[Any]:
    lib = synth.copy_synthetic(built, tmp_path / "lib")
    yield lib
    for p in [lib.lib.root, *lib.lib.root.rglob("*")]:  # undo chmod -R a-w so tmp_path can be removed
        if not p.is_symlink():
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


def snapshot(root: Path) -> dict[str, str]:
    """Every path under the library (files by SHA-256, folders and links by kind), except what a
    read command may write."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel.split("/")[0] in ALLOWED:
            continue
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def new_shard(s: Any) -> tuple[np.ndarray, np.ndarray]:
    """Commit one more video whose catalog refresh never happened (a writer killed before it)."""
    rng = np.random.default_rng(77)
    centre = rng.standard_normal(s.dim)
    vecs = (centre / np.linalg.norm(centre) + 0.1 * rng.standard_normal((5, s.dim)) / np.sqrt(s.dim))
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)  # one tight cluster
    video = {**s.videos[0], "video_id": "e" * 32, "path": "/media/late/new.mp4", "path_bytes": b"/media/late/new.mp4",
             "num_clips": 5, "duration_s": 20.0}
    m = s.lib.read_manifest()
    clips, vids, ids = synth.make_shard_tables([video], [5], [vecs], m.model.fingerprint, s.dim)
    with s.lib.lock():
        s.lib.commit(clips, vids, run_id="run-2", refresh_catalog=False)
    return ids, vecs


def damage(s: Any, how: str) -> tuple[str, np.ndarray | None]:
    """Damage the library; returns a phrase every search must warn with, and new clip ids."""
    root = s.lib.root
    if how == "stale catalog":
        ids, _ = new_shard(s)
        return "catalog.duckdb is behind the manifest", ids
    if how == "corrupt catalog":
        data = bytearray(s.lib.catalog_path.read_bytes())
        data[: len(data) // 2] = os.urandom(len(data) // 2)
        s.lib.catalog_path.write_bytes(bytes(data))
        return "catalog.duckdb is unreadable", None
    if how == "foreign wal":
        s.lib.catalog_wal_path.write_bytes(os.urandom(4096))
        return "write-ahead log", None
    if how == "corrupt index":
        p = s.lib.index_dir / read_meta(s.lib).index_file
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0x20
        p.write_bytes(bytes(data))
        return "doctor --fix", None
    if how == "missing index":
        ids, _ = new_shard(s)  # a first ingest killed before its index: shards only
        for p in sorted(s.lib.index_dir.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        s.lib.index_dir.rmdir()
        return "no FAISS index", ids
    if how == "read-only":
        for p in sorted(root.rglob("*"), reverse=True):
            if not p.is_symlink():
                p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        root.chmod(root.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        return "", None
    raise AssertionError(how)


def run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, (argv, err)
    return json.loads(out)


@pytest.mark.parametrize("how", ["stale catalog", "corrupt catalog", "foreign wal", "corrupt index",
                                 "missing index", "read-only"])
def test_searches_answer_around_damage_and_change_nothing(s: Any, how: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from vidsearch.library import Library
    from vidsearch.search.types import Filters
    from vidsearch.serve.service import LibraryService, SearchParams

    root = s.lib.root
    warn, new_ids = damage(s, how)
    before = snapshot(root)
    lib = str(root)

    def warned(doc: dict[str, Any]) -> None:
        assert not warn or any(warn in w for w in doc["warnings"]), (how, doc["warnings"])

    # CLI: text (the tiny model), by example, with a path filter and with a --where filter.
    doc = run_json(["search", "a red circle", "--library", lib, "-k", "5", "--json"], capsys)
    assert len(doc["hits"]) == 5
    warned(doc)
    like = str(new_ids[0]) if new_ids is not None else str(s.clip_ids[3])
    doc = run_json(["search", "--like", like, "--library", lib, "-k", "5", "--json", "--no-merge"], capsys)
    assert len(doc["hits"]) == 5 and like not in {h["clip_id"] for h in doc["hits"]}
    warned(doc)
    if new_ids is not None:  # committed clips the catalog or index lacks are found (D9)
        assert {int(h["clip_id"]) for h in doc["hits"]} >= set(new_ids[1:].tolist())
    doc = run_json(["search", "--like", like, "--library", lib, "-k", "3", "--json", "--path", "/media/pets/*",
                    "--where", "clips.clip_index % 2 = 0"], capsys)
    assert doc["hits"] and all(h["path"].startswith("/media/pets/") for h in doc["hits"])
    # Other read commands.
    assert main(["sql", "SELECT count(*) AS n FROM clips", "--library", lib, "--json"]) == 0
    n = json.loads(capsys.readouterr().out)[0]["n"]
    assert n == s.n + (len(new_ids) if new_ids is not None else 0)
    assert main(["status", "--library", lib, "--json"]) in (0, 2)
    capsys.readouterr()

    # The web server's service: start (warm model, vector-cache check), search, metadata, status.
    svc = LibraryService(Library(root), record_history=True)
    try:
        svc.start()
        r, _ = svc.search(SearchParams(query="a blue square", k=4, filters=Filters(folder="media")))
        assert r.hits and (not warn or any(warn in w for w in r.warnings)), r.warnings
        hit = r.hits[0]
        assert svc.clip(hit.clip_id)["video_id"] == hit.video_id
        assert svc.video(hit.video_id)["clips"]
        st = svc.status()
        assert st["ready"] and st["clips"] == n
    finally:
        svc.close()

    assert snapshot(root) == before, f"{how}: a read command changed the library"


def _vidsearch_on_read_only_mount(root: Path, *args: str) -> Any:
    """``vidsearch ARGS`` with ``root`` mounted read-only (EROFS) in a private mount namespace
    (as tests/unit/test_doctor.py does); skipped where no namespace can be made."""
    import shutil
    import subprocess

    if not shutil.which("unshare") or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("no user/mount namespaces here: cannot mount the library read-only")
    script = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && shift && exec "$@"'
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(root), sys.executable, "-m", "vidsearch",
                           *args], capture_output=True, text=True, timeout=600)


def test_search_on_a_read_only_mount(s: Any) -> None:
    """D3 and R1 on a real read-only file system (EROFS): searches answer, --thumbnails is one
    line naming the folder that cannot be written (exit 1), nothing changes."""
    root = s.lib.root
    before = snapshot(root)
    lib = str(root)
    r = _vidsearch_on_read_only_mount(root, "search", "a red circle", "--library", lib, "-k", "3", "--json")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["hits"]) == 3 and "Traceback" not in r.stderr
    r = _vidsearch_on_read_only_mount(root, "search", "--like", str(s.clip_ids[5]), "--library", lib, "--json",
                                      "--where", "clips.clip_index % 2 = 1", "--no-history")
    assert r.returncode == 0 and json.loads(r.stdout)["hits"], r.stderr
    r = _vidsearch_on_read_only_mount(root, "search", "--like", str(s.clip_ids[5]), "--library", lib,
                                      "--thumbnails", "--no-history")
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1 and len(err) == 1, r.stderr
    assert err[0].startswith("vidsearch: error: --thumbnails: cannot create ") and str(root / "thumbs") in err[0]
    assert "Read-only file system" in err[0]
    assert snapshot(root) == before and not (root / "history.duckdb").exists()
