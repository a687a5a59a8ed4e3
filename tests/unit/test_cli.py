"""The ``vidsearch`` entry point: exit codes, where an internal error's traceback goes, logging
levels, and ``VIDSEARCH_LIBRARY`` as every command's default library.

Errors are injected for real: a child ``python`` replaces one library function with one that
raises, then runs ``vidsearch.cli.main`` exactly as the ``vidsearch`` script does, so the exit
code and stderr are the process's own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import SyntheticLibrary

from vidsearch.cli import EXIT_INTERNAL, EXIT_USER, build_parser, main
from vidsearch.commands import LIBRARY_ENV

REPO = Path(__file__).resolve().parents[2]


def run_cli(tmp_path: Path, argv: list[str], inject: str = "", env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    """``vidsearch ARGV`` in a child process after running ``inject`` (Python) in it."""
    code = textwrap.dedent(inject) + "\nimport sys\nfrom vidsearch.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    child_env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"),
                 "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **(env or {})}
    child_env.pop(LIBRARY_ENV, None)
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120,
                          env=child_env, cwd=tmp_path)


# A bug deep in the library code: the constructor every command calls raises a RuntimeError.
BUG = """
import vidsearch.library as L
def broken(self, *a, **k):
    raise RuntimeError("injected bug\\nsecond line of the message")
L.Library.__init__ = broken
"""


def files_under(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file())


@pytest.mark.parametrize(("command", "log_in_library"), [(["index"], True), (["status"], False),
                                                         (["sql", "SELECT 1"], False)])
def test_internal_error_exits_3_with_one_line_naming_the_log(tmp_path: Path, command: list[str],
                                                             log_in_library: bool) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    r = run_cli(tmp_path, [*command, "--library", str(lib)], BUG)
    assert r.returncode == EXIT_INTERNAL, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("vidsearch: internal error: RuntimeError: injected bug ...")
    # A writer command keeps the log beside its library; a read command never writes the library.
    logs = files_under(lib) if log_in_library else files_under(tmp_path / "cache" / "vidsearch" / "logs")
    assert len(logs) == 1 and str(logs[0]) in lines[0]
    if log_in_library:
        assert logs[0].parent == lib / "logs"
    else:
        assert files_under(lib) == []
    text = logs[0].read_text()
    assert "Traceback (most recent call last)" in text and "RuntimeError: injected bug" in text
    assert f"command: vidsearch {command[0]}" in text
    assert oct(logs[0].stat().st_mode & 0o777) == oct(0o600)


def test_internal_error_with_debug_prints_the_traceback_and_writes_no_log(tmp_path: Path) -> None:
    r = run_cli(tmp_path, ["status", "--library", str(tmp_path), "--debug"], BUG)
    assert r.returncode == EXIT_INTERNAL
    assert "Traceback (most recent call last)" in r.stderr and "in broken" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == "vidsearch: internal error: RuntimeError: injected bug ..."
    assert not (tmp_path / "cache").exists()


def test_crash_log_falls_back_when_the_library_logs_folder_is_a_link(tmp_path: Path) -> None:
    lib, outside = tmp_path / "lib", tmp_path / "outside"
    lib.mkdir()
    outside.mkdir()
    (lib / "logs").symlink_to(outside)
    r = run_cli(tmp_path, ["index", "--library", str(lib)], BUG)
    assert r.returncode == EXIT_INTERNAL
    assert files_under(outside) == []
    assert len(files_under(tmp_path / "cache" / "vidsearch" / "logs")) == 1


@pytest.mark.parametrize("inject, words", [
    ("", "is not a vidsearch library"),  # a LibraryError
    ("import vidsearch.library as L\ndef bad(self, *a, **k):\n    raise ValueError('bad time: 1:99')\n"
     "L.Library.__init__ = bad\n", "bad time: 1:99"),
    ("import vidsearch.library as L\ndef gone(self, *a, **k):\n"
     "    raise FileNotFoundError(2, 'No such file', 'x.mp4')\nL.Library.__init__ = gone\n", "x.mp4"),
])
def test_user_errors_exit_1_with_one_line_and_no_log(tmp_path: Path, inject: str, words: str) -> None:
    r = run_cli(tmp_path, ["status", "--library", str(tmp_path / "nolib")], inject)
    assert r.returncode == EXIT_USER, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vidsearch: error:") and words in lines[0], r.stderr
    assert not (tmp_path / "cache").exists()


# A command that logs one record at each level, then succeeds.
LOUD = """
import logging
import vidsearch.commands.status as st
def run(args):
    log = logging.getLogger("vidsearch.test")
    log.debug("a-debug"); log.info("an-info"); log.warning("a-warning"); log.error("an-error")
    return 0
st.run = run
"""


@pytest.mark.parametrize(("flags", "shown"), [
    ([], {"a-warning", "an-error"}),
    (["-q"], {"an-error"}),
    (["-v"], {"an-info", "a-warning", "an-error"}),
    (["-vv"], {"a-debug", "an-info", "a-warning", "an-error"}),
    (["--quiet", "-v"], {"an-error"}),  # quiet wins
])
def test_log_levels(tmp_path: Path, flags: list[str], shown: set[str]) -> None:
    r = run_cli(tmp_path, ["status", "--library", "x", *flags], LOUD)
    assert r.returncode == 0, r.stderr
    assert {w for w in ("a-debug", "an-info", "a-warning", "an-error") if w in r.stderr} == shown


def _library_options(env: str | None, monkeypatch: pytest.MonkeyPatch) -> dict[str, argparse.Action]:
    if env is None:
        monkeypatch.delenv(LIBRARY_ENV, raising=False)
    else:
        monkeypatch.setenv(LIBRARY_ENV, env)
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: a for name, p in sub.choices.items() for a in p._actions if a.dest == "library"}


def test_every_library_option_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    unset = _library_options(None, monkeypatch)
    # demo creates its own library (./vidsearch-demo); eval --msrvtt makes one beside the dataset (a
    # queries file without --library or the variable is one error line: test_hits_cli); every other
    # command reads or writes one.
    assert set(unset) >= {"ingest", "status", "index", "search", "sql", "serve", "doctor", "export", "eval"}
    for name, a in unset.items():
        if name not in ("demo", "eval"):
            assert a.required and a.default is None, name
    assert LIBRARY_ENV in (unset["eval"].help or "")
    for name, a in _library_options("/data/vlib", monkeypatch).items():
        if name not in ("demo", "eval"):
            assert not a.required and a.default == "/data/vlib", name
            assert LIBRARY_ENV in (a.help or ""), name


def test_library_from_the_environment(synthetic_library: SyntheticLibrary, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture) -> None:
    root = str(synthetic_library.lib.root)
    monkeypatch.setenv(LIBRARY_ENV, root)
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["library"] == root
    # --library wins over the environment.
    assert main(["status", "--json", "--library", str(Path(root).parent / "other")]) == EXIT_USER
    assert "other is not a vidsearch library" in capsys.readouterr().err
    monkeypatch.delenv(LIBRARY_ENV)
    assert main(["status"]) == EXIT_USER
    err = capsys.readouterr().err
    assert "--library" in err and LIBRARY_ENV in err


# A broken pipe that is not our output: a socket or a child's pipe inside a command.
SOCKET_PIPE = """
import vidsearch.library as L
def broken(self, *a, **k):
    raise BrokenPipeError(32, "Broken pipe (a socket)")
L.Library.__init__ = broken
"""


def test_a_broken_pipe_that_is_not_stdout_is_an_internal_error(tmp_path: Path) -> None:
    """Only our own output closing (``| head``) ends quietly; a BrokenPipeError from anything else
    is a bug report, and stdout stays usable (it is not pointed at /dev/null)."""
    r = run_cli(tmp_path, ["status", "--library", str(tmp_path)], SOCKET_PIPE + "\nimport atexit\n"
                "atexit.register(lambda: print('stdout still open'))\n")
    assert r.returncode == EXIT_INTERNAL, r.stderr
    assert "internal error: BrokenPipeError" in r.stderr
    assert "stdout still open" in r.stdout
