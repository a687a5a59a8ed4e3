"""``vidsearch doctor``: reports without changing a byte; ``--fix`` repairs under the writer lock."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from vidsearch.cli import main
from vidsearch.indexer import load_index, read_meta, update_index
from vidsearch.indexer.doctor import diagnose


def _snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (and the set of names: a new or removed file counts)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.fixture
def lib(synthetic_library):  # type: ignore[no-untyped-def]
    with synthetic_library.lib.lock():
        update_index(synthetic_library.lib)
    return synthetic_library


def _damage(s) -> None:  # type: ignore[no-untyped-def]
    """A corrupt index file, a stale catalog, a temp file a killed writer left, a corrupt shard."""
    p = s.lib.index_dir / read_meta(s.lib).index_file
    p.write_bytes(p.read_bytes()[:200])
    s.lib.catalog_path.unlink()
    s.lib.tmp_dir.mkdir(exist_ok=True)
    (s.lib.tmp_dir / "part-000099.parquet.tmp").write_bytes(b"half a shard")
    shard = s.lib.read_manifest().shards[1]
    f = s.lib.root / shard.clips_file
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))


def test_doctor_without_fix_reports_and_changes_nothing(lib, capsys) -> None:  # type: ignore[no-untyped-def]
    _damage(lib)
    before = _snapshot(lib.lib.root)
    assert main(["doctor", "--library", str(lib.lib.root)]) == 1
    out = capsys.readouterr().out
    assert "SHA-256" in out and "catalog.duckdb" in out
    assert main(["doctor", "--library", str(lib.lib.root), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and len(report["problems"]) >= 3
    assert _snapshot(lib.lib.root) == before  # byte-identical: nothing added, removed or changed
    # Every fix is a real command: no "..." to fill in, the library path and the model named.
    fix = f"vidsearch doctor --fix --library {shlex.quote(str(lib.lib.root))}"
    assert all("..." not in p["fix"] for p in report["problems"])
    assert any(p["fix"].startswith(fix) for p in report["problems"])
    shard_fix = next(p["fix"] for p in report["problems"] if "part-000002" in p["message"])
    assert re.search(r"then vidsearch ingest (/(media|archive)/\w+ )+--library \S+ --model synthetic$", shard_fix)


def test_doctor_fix_repairs_everything(lib, capsys) -> None:  # type: ignore[no-untyped-def]
    _damage(lib)
    lost = lib.lib.read_manifest().shards[1]
    assert main(["doctor", "--library", str(lib.lib.root), "--fix"]) == 0
    out = capsys.readouterr().out
    assert "set aside 1" in out and "rebuilt catalog.duckdb" in out and "index rebuilt" in out
    assert re.search(r"re-embed them with: vidsearch ingest (/(media|archive)/\w+ )+--library", out)
    assert diagnose(lib.lib) == []
    m = lib.lib.read_manifest()
    assert lost.shard_id not in {s.shard_id for s in m.shards}
    assert any(p.name.endswith(Path(lost.clips_file).name) for p in lib.lib.quarantine_dir.iterdir())
    assert load_index(lib.lib).ntotal == m.total_clips == lib.n - lost.clips_rows
    assert not (lib.lib.tmp_dir / "part-000099.parquet.tmp").exists()
    # A healthy library: --fix does nothing and says ok.
    before = _snapshot(lib.lib.root)
    assert main(["doctor", "--library", str(lib.lib.root), "--fix"]) == 0
    assert capsys.readouterr().out.strip().endswith(": ok")
    assert _snapshot(lib.lib.root) == before


def test_doctor_fix_adds_unindexed_shards_and_reports_json(lib, capsys) -> None:  # type: ignore[no-untyped-def]
    import sys

    import numpy as np

    synth = sys.modules[type(lib).__module__]  # this folder's conftest.py (synthetic libraries)
    v = np.random.default_rng(3).standard_normal((5, lib.dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    video = dict(lib.videos[0], video_id="f" * 32, path="/media/late/new.mp4", num_clips=5)
    clips, vids, _ = synth.make_shard_tables([video], [5], [v], synth.SYNTH_FINGERPRINT, lib.dim)
    with lib.lib.lock():
        lib.lib.commit(clips, vids, run_id="run-2")  # an ingest stopped before updating the index
    assert [p.fix for p in diagnose(lib.lib)] == [f"vidsearch index --library {shlex.quote(str(lib.lib.root))}"]
    assert main(["doctor", "--library", str(lib.lib.root), "--fix", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["repaired"]["index"]["action"] == "extended" and out["repaired"]["index"]["added"] == 5
    assert any("not in the index" in p["message"] for p in out["found"])
    assert diagnose(lib.lib) == [] and load_index(lib.lib).ntotal == lib.n + 5


def _run_on_read_only_copy(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``vidsearch ARGS`` with ``root`` mounted read-only (EROFS) in a private mount namespace,
    or, where no namespace can be made, made unwritable by permissions (EACCES, non-root)."""
    import os
    import shutil
    import sys

    cmd = [sys.executable, "-m", "vidsearch", *args]
    if shutil.which("unshare") and subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0:
        script = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && shift && exec "$@"'
        return subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(root), *cmd],
                              capture_output=True, text=True, timeout=300)
    if os.geteuid() == 0:
        pytest.skip("cannot make a read-only library here (no user namespaces, and root ignores permissions)")
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    finally:
        for p in [root, *root.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)


@pytest.mark.parametrize("args", [["index"], ["index", "--rebuild"], ["doctor", "--fix"]])
def test_d3_writer_commands_on_a_read_only_library_say_so_in_one_line(lib, args: list[str]) -> None:  # type: ignore[no-untyped-def]
    root = lib.lib.root
    if args == ["doctor", "--fix"]:
        (lib.lib.index_dir / read_meta(lib.lib).index_file).write_bytes(b"damaged")  # something to fix
    before = _snapshot(root)
    r = _run_on_read_only_copy(root, *args, "--library", str(root))
    assert r.returncode == 1, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert ("read-only" in lines[0] or "not writable" in lines[0]) and str(root) in lines[0]
    assert _snapshot(root) == before


def test_doctor_reads_a_read_only_library(lib) -> None:  # type: ignore[no-untyped-def]
    r = _run_on_read_only_copy(lib.lib.root, "doctor", "--library", str(lib.lib.root))
    assert r.returncode == 0 and r.stdout.strip().endswith(": ok"), r.stdout + r.stderr
