"""docs/RELIABILITY.md §8.2 faults: decoder crash/hang (F1, F2), kills at every crash point and at a
random moment (F6), Ctrl-C (F7), the writer lock (F14), a different model (F16).

Kills need a real separate driver process, so those tests run ``python -m vidsearch.cli ingest``
as a subprocess and then check the library invariants and equality with a clean run.

Where the other rows are tested (``slow``: only with ``-m slow``):

* F3 (decode actor killed), F4 (embed actor killed; out of memory), F5 (repeated kills), F17
  (weights), F18 (EIO): ``test_faults_workers.py``; F4 also ``test_embedder_halves_on_runtime_oom``.
* F8 (disk full), F10 (bad shards), F12 (search during ingest), F15 (catalog/WAL):
  ``test_faults_storage.py``; F8 also ``tests/unit/test_library.py``, F12 also
  ``tests/integration/test_serve_api.py`` (the HTTP API during an ingest).
* F9, F11, F13 (index): ``test_index_faults.py``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from media_tools import TEST_MODEL
from reliability.invariants import assert_same_library, check_library

from vidsearch.library import CRASH_POINTS, Library, LibraryLocked, ModelMismatch
from vidsearch.pipeline.runner import IngestOptions, run_ingest
from vidsearch.schemas.config import IngestCfg


def cli(*args: str | os.PathLike[str], env: dict[str, str] | None = None, timeout: float = 180,
        ) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "vidsearch.cli", "-q", "ingest", *map(str, args), "--model", TEST_MODEL]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def popen(*args: str | os.PathLike[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "vidsearch.cli", "-q", "ingest", *map(str, args), "--model", TEST_MODEL]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def corpus(fault_corpus: Path) -> Path:
    """The fault tests' shared corpus ``v0.mp4`` .. ``v3.mp4`` (tests/conftest.py)."""
    return fault_corpus


COMMON = ("--executor", "local", "--decode-workers", "1", "--shard-rows", "3", "--batch-size", "4")


@pytest.fixture(scope="session")
def clean_lib(clean_library: Path) -> Path:
    """The corpus ingested undisturbed, shared by the session (tests/conftest.py); copy it to change it."""
    return clean_library


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_f6_kill_at_each_crash_point_then_resume(point: str, corpus: Path, clean_lib: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    r = cli(corpus, "--library", lib, *COMMON, env={"VIDSEARCH_CRASH_AT": point})
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    committed = {s.shard_id: s.clips_sha256 for s in Library(lib).read_manifest().shards}
    r = cli(corpus, "--library", lib, *COMMON)
    assert r.returncode == 0, r.stderr[-2000:]
    m = Library(lib).read_manifest()
    # Committed shards are unchanged, byte for byte (nothing lost), and nothing is left in .tmp.
    assert all(any(s.shard_id == k and s.clips_sha256 == v for s in m.shards) for k, v in committed.items())
    assert not any(Library(lib).tmp_dir.iterdir())
    check_library(lib)
    assert_same_library(lib, clean_lib)


@pytest.mark.ray
def test_f6_random_kill_of_a_ray_run_then_resume(corpus: Path, clean_lib: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    rng = random.Random(1234)
    p = popen(corpus, "--library", lib, "--decode-workers", "1", "--shard-rows", "3", "--batch-size", "4")
    # Kill -9 once the run has committed something, after a random extra delay.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and p.poll() is None:
        if Library(lib).exists() and Library(lib).read_manifest().shards:
            break
        time.sleep(0.1)
    time.sleep(rng.uniform(0, 0.5))
    p.kill()
    p.wait()
    r = cli(corpus, "--library", lib, "--decode-workers", "1", "--shard-rows", "3", "--batch-size", "4")
    assert r.returncode == 0, r.stderr[-2000:]
    check_library(lib)
    assert_same_library(lib, clean_lib)


def test_f7_sigint_stops_cleanly_and_resumes(corpus: Path, clean_lib: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    # v3 (the last) hangs in its decoder, so the run is certainly still going when Ctrl-C arrives.
    env = {"VIDSEARCH_TEST_DECODE_FAULT": "hang:v3.mp4"}
    p = popen(corpus, "--library", lib, *COMMON, "--shard-rows", "1", env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if Library(lib).exists() and len(Library(lib).read_manifest().shards) >= 2:
            break
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err[-2000:]
    assert "interrupted" in out
    check_library(lib)
    r = cli(corpus, "--library", lib, *COMMON)
    assert r.returncode == 0, r.stderr[-2000:]
    check_library(lib)
    assert_same_library(lib, clean_lib)


@pytest.mark.ray
def test_f1_f2_decoder_segfault_and_hang_fail_one_video_each(corpus: Path, tmp_path: Path, ray_session: None,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "in"
    d.mkdir()
    for name in ("v0.mp4", "v2.mp4", "v3.mp4"):
        shutil.copy(corpus / name, d / name.replace("v0", "crash").replace("v2", "hang"))
    monkeypatch.setenv("VIDSEARCH_TEST_DECODE_FAULT", "segv:crash.mp4|hang:hang.mp4")
    t0 = time.monotonic()
    s = run_ingest([d], tmp_path / "lib", IngestCfg(decode_workers=1, decode_timeout_s=4),
                   IngestOptions(model=TEST_MODEL, executor="ray", build_index=False, progress=False))
    elapsed = time.monotonic() - t0
    assert (s.videos_done, s.videos_failed, s.exit_code) == (1, 2, 2)
    by_type = {f["error_type"]: f for f in s.failures}
    assert "signal=SIGSEGV" in by_type["DecoderCrash"]["error_message"]
    assert "crash.mp4" in by_type["DecoderCrash"]["error_message"]
    assert "hang.mp4" in by_type["DecodeTimeout"]["error_message"]
    assert elapsed < 60
    check_library(tmp_path / "lib")
    # F2: quarantined after 2 attempts (a crash counts too).
    for _ in range(2):
        s = run_ingest([d], tmp_path / "lib", IngestCfg(decode_workers=1, decode_timeout_s=4),
                       IngestOptions(model=TEST_MODEL, executor="local", build_index=False, progress=False))
    assert (s.videos_failed, s.videos_quarantined) == (0, 2)


def test_f14_second_writer_refused_stale_lock_recovered(corpus: Path, tmp_path: Path) -> None:
    lib = Library(tmp_path / "lib")
    with lib.lock():
        r = cli(corpus / "v2.mp4", "--library", lib.root, *COMMON)
        assert r.returncode == 1
        assert "locked by pid" in r.stderr and str(os.getpid()) in r.stderr
        with pytest.raises(LibraryLocked):
            run_ingest([corpus / "v2.mp4"], lib.root, IngestCfg(),
                       IngestOptions(model=TEST_MODEL, executor="local", progress=False))
    # The lock is a kernel lock (flock, D2): a holder record left behind by a dead writer, or
    # naming a live process that does not hold the lock, blocks nobody.
    lib.lock_path.write_text(json.dumps({"pid": 1, "host": socket.gethostname(), "since": "x"}))
    assert cli(corpus / "v2.mp4", "--library", lib.root, *COMMON).returncode == 0
    assert not lib.lock_path.exists()
    # --break-lock is still accepted, and harmless.
    assert cli(corpus / "v2.mp4", "--library", lib.root, *COMMON, "--break-lock").returncode == 0
    assert not lib.lock_path.exists()


def test_f16_different_model_refused_unless_new_index(corpus: Path, tmp_path: Path) -> None:
    from vidsearch.models import add_model_config
    from vidsearch.models.factory import get_model_config

    cfg = get_model_config(TEST_MODEL).to_dict()
    cfg["name"] = "internvideo2-tiny-f16"
    cfg["encoder"]["init_seed"] = 99  # other weights -> another fingerprint
    path = tmp_path / "internvideo2-tiny-f16.json"
    path.write_text(json.dumps(cfg))
    add_model_config(path)
    lib = tmp_path / "lib"
    opts: dict[str, Any] = {"executor": "local", "build_index": False, "progress": False}
    icfg = IngestCfg(decode_workers=1)
    run_ingest([corpus / "v2.mp4"], lib, icfg, IngestOptions(model=TEST_MODEL, **opts))
    before = Library(lib).read_manifest()
    with pytest.raises(ModelMismatch, match="--new-index"):
        run_ingest([corpus / "v2.mp4"], lib, icfg, IngestOptions(model="internvideo2-tiny-f16", **opts))
    assert Library(lib).read_manifest().shards == before.shards
    s = run_ingest([corpus / "v2.mp4"], lib, icfg,
                   IngestOptions(model="internvideo2-tiny-f16", new_index=True, **opts))
    assert s.videos_done == 1
    m = Library(lib).read_manifest()
    assert m.model is not None and m.model.name == "internvideo2-tiny-f16"
    check_library(lib)
