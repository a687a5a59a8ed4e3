"""docs/RELIABILITY.md 8.3 against real DuckDB files, real shards and real ingests (DuckDB 2.0.0).

S5 is in tests/unit/test_models_weights.py; S7's resource bombs run with the other probe limits in
test_bad_inputs.py (they share its generated files).
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from media_tools import TEST_MODEL, lavfi_video
from reliability.invariants import check_library

from vidsearch.cli import main
from vidsearch.library import sha256_file
from vidsearch.pipeline.readers import DECODER_ENV

_spec = importlib.util.spec_from_file_location("_synth", Path(__file__).parents[1] / "unit" / "conftest.py")
synth = importlib.util.module_from_spec(_spec)  # the synthetic-library builder of tests/unit
sys.modules["_synth"] = synth
_spec.loader.exec_module(synth)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    s = synth.build_synthetic_library(tmp_path_factory.mktemp("sec") / "lib", 400, seed=2)
    assert main(["index", "--library", str(s.lib.root)]) == 0
    return s


def digests(s) -> dict[str, str]:  # type: ignore[no-untyped-def]
    root = s.lib.root
    files = sorted((root / "shards").iterdir()) + [root / "catalog.duckdb", root / "manifest.json"]
    return {p.name: sha256_file(p) for p in files}


def search_json(s, *extra: str) -> list[int]:  # type: ignore[no-untyped-def]
    out = _run(["search", "--like", str(s.clip_ids[0]), "--library", str(s.lib.root), "--json",
                "--no-merge", "-k", "20", "--no-history", *extra])
    return [int(h["clip_id"]) for h in json.loads(out)["hits"]]


def _run(argv: list[str]) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    assert rc == 0, argv
    return buf.getvalue()


def test_s1_injection_through_typed_flags_stays_literal(library, capsys: pytest.CaptureFixture) -> None:  # type: ignore[no-untyped-def]
    before = digests(library)
    assert search_json(library, "--path", "x' OR '1'='1") == []  # a literal glob that matches nothing
    assert search_json(library, "--path", "*' OR '1'='1") == []
    benign = search_json(library, "--path", "/media/pets/*")
    assert benign and search_json(library, "--path", "/media/pets/*") == benign
    for flag, payload in (("--min-duration", "1; DROP TABLE clips"), ("--from", "2024' --"),
                          ("-k", "5; DROP TABLE clips")):
        # A usage error (exit 1, as docs/RELIABILITY.md S1 asks): the payload never reaches SQL.
        assert main(["search", "--like", "1", "--library", str(library.lib.root), flag, payload]) == 1
    assert digests(library) == before
    assert json.loads(_run(["sql", "SELECT count(*) AS n FROM clips", "--library", str(library.lib.root),
                            "--json"])) == [{"n": library.n}]


@pytest.mark.parametrize("pred,msg", [
    ("1=1) UNION SELECT clip_id FROM clips WHERE (1=1", "unbalanced"),
    ("1=1; DROP TABLE clips", "';'"),
    ("1=1 -- comment", "comments"),
    ("(SELECT count(*) FROM read_text('/etc/passwd')) > 0", "disabled"),
    ("video_id IN (SELECT column0 FROM read_csv('~/.ssh/id_rsa'))", "disabled"),
    ("clip_id IN (SELECT 1 FROM read_parquet('https://example.com/x.parquet'))", "disabled"),
])
def test_s2_where_abuse_refused(library, capsys: pytest.CaptureFixture, pred: str, msg: str) -> None:  # type: ignore[no-untyped-def]
    before = digests(library)
    rc = main(["search", "--like", str(library.clip_ids[0]), "--library", str(library.lib.root),
               "--where", pred, "--no-history"])
    err = capsys.readouterr().err
    assert rc == 1 and msg in err and err.count("\n") == 1  # one clear line
    assert digests(library) == before


def test_s2_where_benign_predicate_works(library) -> None:  # type: ignore[no-untyped-def]
    hits = search_json(library, "--where", "codec = 'h264' AND width >= 640")
    assert hits


ATTACKS = [
    "COPY clips TO 'shards/part-000001.parquet' (USE_TMP_FILE false)",
    "COPY (SELECT * FROM clips) TO '{shard}'",
    "ATTACH '{root}/catalog.duckdb' AS rw",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "PRAGMA enable_profiling",
    "CALL pragma_version()",
    "DETACH catalog",
    "CREATE TABLE x AS SELECT 1",
    "DROP TABLE clips",
    "SELECT 1; DROP TABLE clips",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_parquet('{shard}')",
    "SELECT * FROM read_parquet('https://example.com/x.parquet')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM query('DETACH catalog')",
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_s3_s10_sql_attacks_refused_and_shards_unchanged(library, capsys: pytest.CaptureFixture, attack: str) -> None:  # type: ignore[no-untyped-def]
    before = digests(library)
    shard = str(library.lib.root / "shards" / "part-000001.parquet")
    sql = attack.format(shard=shard, root=library.lib.root)
    rc = main(["sql", sql, "--library", str(library.lib.root)])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("vidsearch: error:")
    assert digests(library) == before  # SHA-256 of every shard, catalog and manifest unchanged


def test_s3_runaway_query_interrupted(library, capsys: pytest.CaptureFixture) -> None:  # type: ignore[no-untyped-def]
    rc = main(["sql", "SELECT count(*) FROM range(1000000000000) a", "--library", str(library.lib.root),
               "--timeout", "0.5"])
    assert rc == 1 and "timeout" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Issue 10 S1 (sandbox part): nothing is read or built in the sandbox before it is locked.
# ---------------------------------------------------------------------------------------------
def test_s1_sandbox_is_locked_before_the_catalog_is_loaded(library, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Whatever the in-memory catalog loader executes (a manifest value pasted into SQL was the
    hole) runs on a connection that can no longer touch files."""
    import duckdb

    from vidsearch.library import Library
    from vidsearch.search.sandbox import open_sandbox

    s = synth.copy_synthetic(library, tmp_path / "lib")
    (s.lib.root / "catalog.duckdb").unlink()  # a rebuildable cache: readers load it from the shards
    marker = tmp_path / "PWNED.txt"

    class Injected(Library):
        def load_catalog_into(self, con: duckdb.DuckDBPyConnection, *args: Any, **kw: Any) -> Any:
            con.execute(f"COPY (SELECT 'owned') TO '{marker}' (HEADER false)")

    with pytest.raises(duckdb.PermissionException):
        open_sandbox(Injected(s.lib.root)).close()
    assert not marker.exists()
    # The real loader works on the locked connection.
    con = open_sandbox(Library(s.lib.root))
    try:
        assert con.execute("SELECT count(*) FROM clips").fetchone() == (library.n,)
        with pytest.raises(duckdb.Error, match="lock|configuration"):
            con.execute("SET enable_external_access = true")
    finally:
        con.close()


def test_s1_crafted_catalog_views_read_no_file(library, tmp_path: Path,  # type: ignore[no-untyped-def]
                                               capsys: pytest.CaptureFixture) -> None:
    """A catalog.duckdb whose tables are views over files (a folder handed over by someone
    else) binds with file access already off: it is unusable, and the tables come from the
    shards instead."""
    import duckdb

    s = synth.copy_synthetic(library, tmp_path / "lib")
    secret = tmp_path / "secret.csv"
    secret.write_text("clip_id\n123\n")
    with duckdb.connect(str(s.lib.root / "catalog.duckdb")) as con:
        con.execute("DROP TABLE clips")
        con.execute(f"CREATE VIEW clips AS SELECT * FROM read_csv('{secret}')")
    out = _run(["sql", "SELECT count(*) AS n, max(clip_id) AS top FROM clips", "--library", str(s.lib.root),
                "--json"])
    row = json.loads(out)[0]
    assert row["n"] == library.n and int(row["top"]) == int(library.clip_ids.max())


# ---------------------------------------------------------------------------------------------
# Issue 10 S4 / D1: user SQL is bounded for single expressions, and spills privately.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("query", ["SELECT len(range(40000000))", "SELECT length(repeat('x', 1000000000))"])
def test_s4_single_expression_stopped_at_the_timeout(library, capsys: pytest.CaptureFixture,  # type: ignore[no-untyped-def]
                                                     query: str) -> None:
    """One expression that DuckDB's interrupt() cannot stop (it returned a result after 23-57 s
    with --timeout 1) is ended with the worker process."""
    rc = main(["sql", query, "--library", str(library.lib.root), "--timeout", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and "timeout" in err and err.count("\n") == 1


def test_s4_stopped_query_says_one_line_on_a_terminal(library) -> None:  # type: ignore[no-untyped-def]
    """On a terminal DuckDB draws a progress bar on stderr for queries past 2 s; the worker's
    stderr is the user's terminal, so the sandbox turns it off: one line, the timeout."""
    import pty
    import select
    import subprocess

    main_fd, tty_fd = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "vidsearch.cli", "sql", "SELECT count(*) FROM range(1000000000000)",
                             "--library", str(library.lib.root), "--timeout", "4"], stdout=tty_fd, stderr=tty_fd)
    os.close(tty_fd)
    chunks = []
    while select.select([main_fd], [], [], 120)[0]:
        try:
            data = os.read(main_fd, 65536)
        except OSError:  # EIO: the terminal's other side closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(main_fd)
    assert proc.wait(timeout=60) == 1
    out = b"".join(chunks).decode(errors="replace")
    assert out.startswith("vidsearch: error: query stopped after the 4 s timeout") and out.count("\n") == 1, out


@pytest.mark.parametrize("when", ["between_requests", "mid_query"])
def test_s4_worker_leaves_with_its_killed_parent(library, tmp_path: Path, when: str) -> None:  # type: ignore[no-untyped-def]
    """A parent killed with SIGKILL cannot stop its SQL worker: the worker leaves, and removes
    its private folder before it exits. Between requests, its input ends; in the middle of a
    query (the request is in its input before the kill), it notices it is orphaned. The test
    waits for the worker's exit; the folder must be gone by then (it once outlived the worker:
    a parent killed between requests left the removal to nobody)."""
    import signal
    import subprocess

    code = ("import sys, json\n"
            "from vidsearch.library import Library\n"
            "from vidsearch.search.sandbox import SqlWorker\n"
            "w = SqlWorker(Library(sys.argv[1]))\n"
            "w.start()\n"
            "w.request({'op': 'query', 'sql': 'SELECT 1', 'shape': 'raw'}, 120)\n"
            "if sys.argv[2] == 'mid_query':\n"
            "    req = {'op': 'query', 'sql': 'SELECT count(*) FROM range(1000000000000)', 'shape': 'raw'}\n"
            "    w.proc.stdin.write(json.dumps(req).encode() + b'\\n')\n"
            "    w.proc.stdin.flush()\n"
            "print(w.proc.pid, w._tmp, flush=True)\n"
            "w.proc.wait()\n")
    parent = subprocess.Popen([sys.executable, "-c", code, str(library.lib.root), when], stdout=subprocess.PIPE,
                              text=True)
    assert parent.stdout is not None
    pid_text, private = parent.stdout.readline().split()
    pid = int(pid_text)
    assert Path(private).is_dir()
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        try:  # reap it if it became our child's orphan under this process (it is init's otherwise)
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    status = Path(f"/proc/{pid}/status")
    assert not status.exists() or "zombie" in status.read_text(), "the worker outlived its parent"
    assert not Path(private).exists()


def test_s4_memory_of_user_sql_is_capped(library, capsys: pytest.CaptureFixture) -> None:  # type: ignore[no-untyped-def]
    """3 GB in one expression, allowed 256 MB: ended with a clear message (it reached 3.6 GB)."""
    rc = main(["sql", "SELECT length(repeat('x', 3000000000))", "--library", str(library.lib.root),
               "--memory-limit", "256MB", "--timeout", "60"])
    err = capsys.readouterr().err
    assert rc == 1 and "out of memory (limit 256MB)" in err and err.count("\n") == 1


def test_s4_where_predicate_stopped_at_the_timeout(library, capsys: pytest.CaptureFixture) -> None:  # type: ignore[no-untyped-def]
    rc = main(["search", "--like", str(library.clip_ids[0]), "--library", str(library.lib.root), "--no-history",
               "--where", "len(range(40000000)) > 0", "--timeout", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and "timeout" in err and err.count("\n") == 1
    # The predicate ran in a worker; a good one still works afterwards in the same process.
    assert search_json(library, "--where", "codec = 'h264'")


def test_d1_spill_goes_to_a_private_folder(library, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                                           capsys: pytest.CaptureFixture) -> None:
    """A query past its memory limit spills, but not into ./.tmp (DuckDB's default) nor the
    library, and the spill folder is gone afterwards."""
    import tempfile

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    before = sorted(p.name for p in library.lib.root.iterdir())
    out = _run(["sql", "SELECT count(DISTINCT i::VARCHAR || 'padding-padding-padding') AS n FROM range(4000000) t(i)",
                "--library", str(library.lib.root), "--memory-limit", "64MB", "--json"])
    assert json.loads(out) == [{"n": 4000000}]  # it needed more than 64 MB: it spilled, and finished
    assert list(cwd.iterdir()) == [] and sorted(p.name for p in library.lib.root.iterdir()) == before
    assert list(tmp.iterdir()) == []  # the worker's private folder is removed with it


def test_s4_thumbnail_names_from_ids_only(library) -> None:  # type: ignore[no-untyped-def]
    from vidsearch.search.output import FrameRef, make_thumbnails

    out = make_thumbnails(library.lib, {12345: FrameRef("/nonexistent/../../etc/x.mp4", 2.0, 25.0)})
    assert out == {12345: None}  # extraction failed (no such video), nothing written elsewhere
    assert [p.name for p in library.lib.thumbs_dir.iterdir()] == []


# ---------------------------------------------------------------------------------------------
# S6: reference-following media. Playlists named .mp4 point at a FIFO beside them (opening it for
# reading is observable: a writer's non-blocking open succeeds only while a reader has it open;
# discovery skips FIFOs without opening them, B22), at a regular video outside the ingested
# folder whose atime is set in the past (this relatime filesystem then updates it on any read),
# at a loopback HTTP listener that records every connection, and at /etc/hostname. Each detector
# is first shown to fire on a decoder that follows references, so that "0 observed" in the real
# run means something.
# ---------------------------------------------------------------------------------------------
class _Observers:
    """A FIFO reader detector, a loopback listener and an atime watch, all started at once."""

    def __init__(self, fifo_dir: Path, fixture: Path) -> None:
        import socketserver
        import threading

        self.fifo = fifo_dir / "ref.fifo"
        os.mkfifo(self.fifo)
        self.fixture = fixture
        self.fifo_opens = 0
        self.requests: list[bytes] = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer.requests.append(self.request.recv(256))

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self.server.serve_forever, daemon=True),
                         threading.Thread(target=self._watch_fifo, daemon=True)]
        for t in self._threads:
            t.start()
        self.reset_atime()

    def _watch_fifo(self) -> None:
        while not self._stop.wait(0.002):
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                assert e.errno == errno.ENXIO, e  # no reader: the normal case
                continue
            self.fifo_opens += 1
            os.close(fd)  # the reader sees end-of-file at once: nothing blocks

    def reset_atime(self) -> None:
        st = self.fixture.stat()
        os.utime(self.fixture, ns=(946684800 * 10**9, st.st_mtime_ns))  # atime 2000-01-01

    def fixture_read(self) -> bool:
        return self.fixture.stat().st_atime_ns != 946684800 * 10**9

    def close(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def observers(tmp_path: Path):  # type: ignore[no-untyped-def]
    refs, d = tmp_path / "refs", tmp_path / "in"
    refs.mkdir()
    d.mkdir()
    fixture = lavfi_video(refs / "fixture.mp4", size="64x48", seconds=2, rate=10)
    obs = _Observers(d, fixture)
    yield obs
    obs.close()


def _playlists(obs: _Observers) -> dict[str, str]:
    """Name -> text of each reference-following file, all named .mp4, written beside the FIFO."""
    d = obs.fifo.parent
    fix, fifo, http = obs.fixture, obs.fifo, f"http://127.0.0.1:{obs.port}"
    hls = "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{}\n#EXT-X-ENDLIST\n"
    rel_fix, rel_fifo = os.path.relpath(fix, d), fifo.name
    lists = {
        "hls_hostname.mp4": hls.format("file:///etc/hostname"),
        "hls_fixture.mp4": hls.format(f"file://{fix}"),
        "hls_fixture_rel.mp4": hls.format(rel_fix),
        "hls_fifo.mp4": hls.format(f"file://{fifo}"),
        "hls_http.mp4": hls.format(f"{http}/seg.ts"),
        "concat_fixture.mp4": f"ffconcat version 1.0\nfile '{rel_fix}'\n",
        "concat_fifo.mp4": f"ffconcat version 1.0\nfile '{rel_fifo}'\n",
        "concat_http.mp4": f"ffconcat version 1.0\nfile '{http}/x.mp4'\n",
        "concat_hostname.mp4": "ffconcat version 1.0\nfile '/etc/hostname'\n",
    }
    for name, text in lists.items():
        (d / name).write_text(text)
    return lists


def test_s6_detectors_fire_on_decoders_that_follow_references(observers: _Observers, tmp_path: Path) -> None:
    """The controls: decord follows an HLS playlist to the local video [M], PyAV left to guess
    the format follows an ffconcat list to the FIFO, and forced to HLS with http allowed it
    connects to the listener."""
    import av
    import decord

    d = observers.fifo.parent
    _playlists(observers)
    assert len(decord.VideoReader(str(d / "hls_fixture.mp4"))) == 20
    assert observers.fixture_read()
    with contextlib.suppress(av.error.FFmpegError):
        av.open(str(d / "concat_fifo.mp4")).close()
    deadline = time.monotonic() + 5
    while observers.fifo_opens == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert observers.fifo_opens >= 1
    with contextlib.suppress(av.error.FFmpegError):
        av.open(str(d / "hls_http.mp4"), format="hls", options={"protocol_whitelist": "file,http,tcp"}).close()
    assert observers.requests


def test_s6_thumbnails_never_follow_references(observers: _Observers, tmp_path: Path) -> None:
    """A video replaced by a playlist after its ingest: ``search --thumbnails`` (and the page's
    thumbnails) run ffmpeg on the path. Forced to the catalog's demuxer, or to the one the
    file's first bytes show (none here), with the file protocol only, ffmpeg opens no referenced
    file and makes no connection: no thumbnail, a warning each. (Left to guess the format, as it
    was, ffmpeg opened the FIFO through the ffconcat list.)"""
    from vidsearch.library import Library
    from vidsearch.search.output import FrameRef, make_thumbnails

    d = observers.fifo.parent
    lists = _playlists(observers)
    (tmp_path / "lib").mkdir()
    frames = {}
    for k, name in enumerate(sorted(lists)):
        frames[2 * k + 1] = FrameRef(str(d / name), 1.0, 10.0, "mov")  # ingested as an MP4, replaced since
        frames[2 * k + 2] = FrameRef(str(d / name), 1.0, 10.0)  # no container recorded: sniffed now
    observers.reset_atime()
    assert make_thumbnails(Library(tmp_path / "lib"), frames) == dict.fromkeys(frames)
    time.sleep(0.05)  # let the FIFO watcher take one more look
    assert observers.requests == [] and observers.fifo_opens == 0
    assert not observers.fixture_read()


def test_s6_reference_following_media_rejected_at_probe(observers: _Observers, tmp_path: Path) -> None:
    from vidsearch.library import Library
    from vidsearch.pipeline.runner import IngestOptions, run_ingest
    from vidsearch.schemas.config import IngestCfg

    d = observers.fifo.parent
    lists = _playlists(observers)
    good = lavfi_video(d / "good.mp4", size="48x32", seconds=1, rate=10)
    observers.reset_atime()
    # decord first: of the two readers it is the one that follows an HLS playlist [M]. The probe
    # (PyAV, the demuxer forced to the sniffed container, file protocol only) must decide first.
    os.environ[DECODER_ENV] = "decord"
    try:
        s = run_ingest([d], tmp_path / "lib", IngestCfg(decode_workers=1, decode_timeout_s=30),
                       IngestOptions(model=TEST_MODEL, executor="local", build_index=False, progress=False))
    finally:
        os.environ.pop(DECODER_ENV, None)
    assert (s.videos_done, s.videos_failed, s.exit_code) == (1, len(lists), 2)
    with Library(tmp_path / "lib").connect_catalog() as con:
        rows = {Path(p).name: (st, stage, et, msg) for p, st, stage, et, msg in con.execute(
            "SELECT path, status, stage, error_type, error_message FROM videos").fetchall()}
    assert rows[good.name][0] == "done"
    for name in lists:
        status, stage, error_type, msg = rows[name]
        assert (status, stage, error_type) == ("failed", "probe", "NotAVideo"), rows[name]
        kind = "hls" if name.startswith("hls") else "concat"
        assert f"format {kind} not allowed" in msg and name in msg
    check_library(tmp_path / "lib")
    time.sleep(0.05)  # let the FIFO watcher take one more look
    assert observers.requests == []        # no connection reached the loopback listener
    assert observers.fifo_opens == 0       # nothing opened the referenced FIFO
    assert not observers.fixture_read()    # nothing read the referenced video


# ---------------------------------------------------------------------------------------------
# S4: library subfolders that are symbolic links pointing outside the library. Every writer
# (ingest's lock and recovery, index build, thumbnails, search history) must refuse them before
# touching anything: a recovery that empties ".tmp" would otherwise empty the folder it points to.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sub", ["shards", ".tmp", "index", "thumbs"])
def test_s4_symlinked_library_folders_refused_nothing_written_outside(library, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                      capsys: pytest.CaptureFixture, sub: str) -> None:
    from vidsearch.library import Library, LibraryError

    s = synth.copy_synthetic(library, tmp_path / "lib")
    root = s.lib.root
    outside = tmp_path / "outside"
    outside.mkdir()
    # Bait named like what each writer writes or cleans up in that folder.
    bait = {"precious.txt": b"keep", "part-000009.parquet": b"not a shard", "videos-000009.parquet": b"x",
            "index.json": b"{}", "1.jpg": b"jpg"}
    for name, data in bait.items():
        (outside / name).write_bytes(data)
    real = root / sub
    if real.exists():
        shutil.move(real, tmp_path / f"{sub}.real")
    os.symlink(outside, real)
    before = {p.name: p.read_bytes() for p in outside.iterdir()}

    with pytest.raises(LibraryError, match="symbolic link"), Library(root).lock():
        pass  # lock() is the ingest's first step (recovery runs inside it)
    rc_index = main(["index", "--library", str(root), "--rebuild"])
    rc_search = main(["search", "--like", str(s.clip_ids[0]), "--library", str(root), "--thumbnails", "-k", "2"])
    err = capsys.readouterr().err
    if sub in ("shards", ".tmp", "index"):
        assert rc_index == 1 and "symbolic link" in err
    if sub == "thumbs":
        assert rc_search == 1 and "symbolic link" in err
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == before  # nothing written or deleted


def test_s4_manifest_paths_outside_the_library_refused(library, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                       capsys: pytest.CaptureFixture) -> None:
    """A crafted manifest naming a shard outside the library is never read, nor deleted by a
    --new-index restart (which deletes the listed shard files)."""
    s = synth.copy_synthetic(library, tmp_path / "lib")
    victim = tmp_path / "victim.parquet"
    victim.write_bytes((s.lib.root / "shards" / "part-000001.parquet").read_bytes())
    m = json.loads(s.lib.manifest_path.read_text())
    m["shards"][0]["clips_file"] = "shards/../../victim.parquet"
    s.lib.manifest_path.write_text(json.dumps(m))
    digest = sha256_file(victim)
    assert main(["index", "--library", str(s.lib.root), "--rebuild"]) == 1  # reads every listed shard
    # Refused when the manifest is read (S1: a shard's file is its own name in shards/, nothing else).
    assert "manifest.json: malformed manifest (shards[0].clips_file" in capsys.readouterr().err
    from vidsearch.library import Library, LibraryError
    from vidsearch.schemas.manifest import ModelInfo

    lib = Library(s.lib.root)
    with pytest.raises(LibraryError, match="shards.0..clips_file"), lib.lock():
        lib.init(ModelInfo(name="other", fingerprint="f" * 16, embed_dim=8, num_frames=4), allow_new_model=True)
    assert victim.is_file() and sha256_file(victim) == digest


# ---------------------------------------------------------------------------------------------
# S9: foreign Parquet files in shards/ are never read: only manifest-listed shards are opened.
# ---------------------------------------------------------------------------------------------
_OLD_ATIME_NS = 946684800 * 10**9


def test_s9_foreign_parquet_in_shards_never_read(library, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                 capsys: pytest.CaptureFixture) -> None:
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    s = synth.copy_synthetic(library, tmp_path / "lib")
    root = s.lib.root
    shards = root / "shards"
    # Crafted: valid magic at both ends around garbage, with a footer length far past the file
    # (the DuckDB #4903 class of malformed metadata), under a shard-like name...
    crafted = shards / "part-000099.parquet"
    crafted.write_bytes(b"PAR1" + os.urandom(4096) + (2**31 - 1).to_bytes(4, "little") + b"PAR1")
    # ...and a well-formed file whose rows would double the clips if anything globbed the folder.
    planted = shards / "planted.parquet"
    pq.write_table(pa.table({"clip_id": pa.array(list(range(library.n)), pa.int64())}), planted)
    # The control: a glob over the folder does fail on them ([M] rule 4).
    with pytest.raises(duckdb.Error):
        duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{shards}/*.parquet')").fetchall()
    before = digests(s)  # (reads every file in shards/, hence before the atime reset)
    for p in (crafted, planted):
        os.utime(p, ns=(_OLD_ATIME_NS, p.stat().st_mtime_ns))

    status = json.loads(_run(["status", "--library", str(root), "--json"]))
    assert status["clips"] == status["clips_in_shards"] == library.n
    assert {"stray file shards/planted.parquet (not in the manifest; ignored)",
            "stray file shards/part-000099.parquet (not in the manifest; ignored)"} <= set(status["health"]["problems"])
    assert json.loads(_run(["sql", "SELECT count(*) AS n FROM clips", "--library", str(root),
                            "--json"])) == [{"n": library.n}]
    hits = search_json(s)
    assert len(hits) == 20 and set(hits) <= {int(c) for c in library.clip_ids}
    for p in (crafted, planted):
        assert p.stat().st_atime_ns == _OLD_ATIME_NS, f"{p.name} was read"
    # A writer (here the index rebuild) takes the lock, whose recovery deletes the unlisted
    # shard-named file as an interrupted commit's leftover, unread; other names stay, unread.
    assert main(["index", "--library", str(root), "--rebuild"]) == 0
    assert json.loads((root / "index" / "index.json").read_text())["n"] == library.n
    assert not crafted.exists() and planted.stat().st_atime_ns == _OLD_ATIME_NS
    listed = s.lib.read_manifest().shard_file_names
    assert {k: v for k, v in digests(s).items() if k in listed} == {k: v for k, v in before.items() if k in listed}


# ---------------------------------------------------------------------------------------------
# Issue 10 S3 / S4 over HTTP: a real `vidsearch serve` over a library whose videos are real
# H.264 files named like documents (.html, .htm, .svg, .xhtml, no extension; discovery finds them
# by content), plus a GIF named .html (a container with no video/* type).
# ---------------------------------------------------------------------------------------------
_hspec = importlib.util.spec_from_file_location("_serve_harness", Path(__file__).parents[1] / "browser" / "harness.py")
harness = sys.modules.get("_serve_harness") or importlib.util.module_from_spec(_hspec)
if "_serve_harness" not in sys.modules:
    sys.modules["_serve_harness"] = harness  # dataclasses look their module up there
    _hspec.loader.exec_module(harness)

DOCUMENT_NAMES = {"holiday.html": "testsrc2", "page.htm": "smptebars", "drawing.svg": "mandelbrot",
                  "doc.xhtml": "rgbtestsrc", "README": "testsrc"}
SQL_TIMEOUT = 4


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    pytest.importorskip("fastapi", reason="vidsearch serve needs fastapi + uvicorn")
    base = tmp_path_factory.mktemp("web")
    media = base / "media"
    files = {}
    for i, (name, src) in enumerate(DOCUMENT_NAMES.items()):
        mp4 = harness.make_video(media / f"v{i}.mp4", src, 2 + i)
        files[name] = mp4.rename(media / name)  # the content decides, never the name
    gif = media / "anim.html"
    harness.ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-t", "2", "-f", "gif", gif)
    files["anim.html"] = gif
    lib = base / "lib"
    r = harness.ingest([media], lib)
    assert r.returncode == 0, r.stdout + r.stderr
    with duckdb_rows(lib, "SELECT path, video_id, container FROM videos WHERE status = 'done'") as rows:
        ids = {Path(p).name: (vid, container) for p, vid, container in rows}
    assert set(ids) == set(files), ids
    with harness.serving(lib, "--no-history", "--sql-timeout", str(SQL_TIMEOUT)) as server:
        yield server, files, ids


@contextlib.contextmanager
def duckdb_rows(lib: Path, query: str):  # type: ignore[no-untyped-def]
    import duckdb

    with duckdb.connect(str(lib / "catalog.duckdb"), read_only=True) as con:
        yield con.execute(query).fetchall()


def test_s3_video_type_comes_from_the_probed_container(web) -> None:  # type: ignore[no-untyped-def]
    server, files, ids = web
    for name in DOCUMENT_NAMES:
        vid, container = ids[name]
        assert {"mov", "mp4"} & set(container.split(","))  # the probe's name for ISO BMFF / QuickTime
        for method in ("GET", "HEAD"):
            r = harness.get(f"{server.url}/api/videos/{vid}/file", method=method)
            assert r.status == 200, (name, r.status)
            assert r.headers["content-type"] == "video/mp4", name  # never text/html or image/svg+xml
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["content-security-policy"] == "sandbox"
            assert "content-disposition" not in r.headers
            assert r.body == (files[name].read_bytes() if method == "GET" else b"")


def test_s3_container_without_a_video_type_is_a_download(web) -> None:  # type: ignore[no-untyped-def]
    server, files, ids = web
    vid, container = ids["anim.html"]
    assert container == "gif"
    r = harness.get(f"{server.url}/api/videos/{vid}/file")
    assert r.status == 200 and r.body == files["anim.html"].read_bytes()
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"] == f'attachment; filename="{vid}.bin"'  # not "anim.html"
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["content-security-policy"] == "sandbox"


def test_s3_every_response_says_nosniff(web) -> None:  # type: ignore[no-untyped-def]
    server, _, ids = web
    hit = harness.get(f"{server.url}/api/search?q=x&k=1").json()["hits"][0]
    replies = {p: harness.get(server.url + p) for p in (
        "/", "/static/app.js", "/api/status", "/api/search?q=", "/api/nothing", "/api/clips/1",
        hit["thumbnail_url"], "/openapi.json")}
    assert replies["/api/search?q="].status == 400 and replies["/api/nothing"].status == 404
    for path, r in replies.items():
        assert r.headers.get("x-content-type-options") == "nosniff", path
    thumb = replies[hit["thumbnail_url"]]
    assert thumb.status == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.headers["content-security-policy"] == "sandbox"
    assert "default-src 'self'" in replies["/"].headers["content-security-policy"]  # the page keeps its own


@pytest.mark.parametrize("headers, status", [
    ({}, 200),                                              # curl, scripts: no browser to steer
    ({"Sec-Fetch-Site": "same-origin"}, 200),               # the page itself
    ({"Sec-Fetch-Site": "none"}, 200),                      # typed into the address bar
    ({"Sec-Fetch-Site": "cross-site"}, 403),                # any web page
    ({"Sec-Fetch-Site": "same-site"}, 403),                 # another port of localhost
    ({"Origin": "http://evil.example"}, 403),
    ({"Origin": "null"}, 403),                              # sandboxed frames, file:// pages
    ({"Origin": "http://127.0.0.1:1"}, 403),
    ({"Origin": "SERVER", "Sec-Fetch-Site": "same-origin"}, 200),
])
def test_s4_cross_site_api_requests_are_refused(web, headers: dict[str, str], status: int) -> None:  # type: ignore[no-untyped-def]
    server, _, ids = web
    h = {k: (server.url if v == "SERVER" else v) for k, v in headers.items()}
    vid = ids["holiday.html"][0]
    for path in ("/api/status", "/api/search?q=x&where=clip_index%20%3E%3D%200", f"/api/videos/{vid}/file"):
        r = harness.get(server.url + path, h)
        assert r.status == status, (path, headers, r.status, r.body[:200])
        if status == 403:
            assert "refused" in r.json()["error"] and r.headers["x-content-type-options"] == "nosniff"
    # Following a link to the page from elsewhere is fine; its own requests are same-origin.
    assert harness.get(server.url + "/", h).status == 200


def test_s4_a_slow_where_holds_up_no_other_request(web) -> None:  # type: ignore[no-untyped-def]
    """A predicate that runs until the server's --sql-timeout: meanwhile status and other
    searches answer (they waited behind the service lock for 55 s), and it ends with a clear 400."""
    import threading
    import urllib.parse

    server, _, _ = web
    slow = urllib.parse.quote("(SELECT count(*) FROM range(10000000000000) t(i) WHERE i % 7 = 3) > 0")
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(harness.get(f"{server.url}/api/search?q=a&where={slow}")))
    t.start()
    answered_meanwhile = 0
    while t.is_alive():
        alive_before = t.is_alive()
        status = harness.get(f"{server.url}/api/status", timeout=SQL_TIMEOUT * 10)
        search = harness.get(f"{server.url}/api/search?q=b&k=2", timeout=SQL_TIMEOUT * 10)
        assert status.status == 200 and search.status == 200
        answered_meanwhile += alive_before and t.is_alive()
    t.join()
    assert answered_meanwhile >= 1
    r = result[0]
    assert r.status == 400 and "timeout" in r.json()["error"], r.body
    assert harness.get(f"{server.url}/api/search?q=a&where=clip_index%20%3E%3D%200").status == 200
