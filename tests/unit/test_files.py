"""vidsearch.files: the one SHA-256 and atomic-write layer (library, models, demo, search)."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from vidsearch.files import (
    atomic_output,
    atomic_write_bytes,
    atomic_write_text,
    failed_path,
    is_disk_full,
    is_read_only,
    sha256_file,
)


def test_sha256_matches_hashlib_and_the_cache_sees_a_changed_file(tmp_path: Path) -> None:
    p = tmp_path / "w.bin"
    p.write_bytes(os.urandom(5 << 20))
    assert sha256_file(p) == sha256_file(p, cache=True) == hashlib.sha256(p.read_bytes()).hexdigest()
    p.write_bytes(b"other")  # new size and mtime: not the remembered digest
    assert sha256_file(p, cache=True) == hashlib.sha256(b"other").hexdigest()


def test_atomic_output_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    final = tmp_path / "out.mp4"
    final.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(final, suffix=".mp4") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.mp4.") and tmp.suffix == ".mp4"
        tmp.write_bytes(b"half")
        raise RuntimeError("the encoder died")
    assert final.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]
    atomic_write_text(final, "new", tmp_dir=tmp_path / ".tmp")
    assert final.read_text() == "new" and not any((tmp_path / ".tmp").iterdir())


def test_atomic_write_with_mode_is_never_readable_by_others(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "record.json", b"{}", mode=0o600)
    assert stat.S_IMODE((tmp_path / "record.json").stat().st_mode) == 0o600


def test_os_errors_classified() -> None:
    assert is_disk_full(OSError(errno.ENOSPC, "x")) and is_disk_full(OSError(errno.EFBIG, "x"))
    assert is_disk_full(RuntimeError('Could not write file "a": No space left on device'))
    assert is_read_only(OSError(errno.EROFS, "x")) and not is_read_only(OSError(errno.ENOSPC, "x"))
    assert failed_path(RuntimeError('IO Error: Could not write file "/l/x.duckdb": full'), "d") == "/l/x.duckdb"


def test_importable_without_duckdb_or_pyarrow() -> None:
    """models/ uses it: importing it must not pull the data stack."""
    code = "import sys, vidsearch.files; print(sorted(m for m in ('duckdb', 'pyarrow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert out.stdout.strip() == "[]"
