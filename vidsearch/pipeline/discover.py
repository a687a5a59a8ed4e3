"""Discover stage: input paths -> regular video files with a content fingerprint.

Inputs are folders (walked recursively), globs, single files, or ``@LIST`` files holding one path
per line (relative paths are relative to the list file's folder). Policy (docs/RELIABILITY.md B7):

* a file named explicitly on the command line or in a list is always a candidate;
* inside folders, a file is a candidate when its extension is in ``extensions`` or, unless
  ``sniff=False``, when its first bytes are a known video container (so a real video named
  ``.txt`` or without extension is found; ``--no-sniff`` turns that off);
* only regular files are opened (``S_ISREG`` after following links): FIFOs, devices and
  directories named ``x.mp4`` are skipped, never opened, so discovery cannot block (B22);
* folders are visited once by ``(st_dev, st_ino)``, so symlink loops terminate (B18); a file
  reached twice through links is one candidate;
* a dangling link or a path of a list file that is missing is a ``NotFound`` failure, an
  unreadable file a ``PermissionDenied`` failure; but a command-line input that names nothing (a
  mistyped path, a glob that matches nothing, a missing list file) is the user's error:
  :func:`check_inputs` raises :class:`InputError` before anything is created.
"""

from __future__ import annotations

import datetime as dt
import glob
import hashlib
import logging
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from vidsearch.pipeline.probe import sniff_container
from vidsearch.pipeline.types import VideoTask
from vidsearch.schemas import ids

_logger = logging.getLogger(__name__)

_GLOB_CHARS = frozenset(b"*?[")


class InputError(ValueError):
    """A command-line input names nothing (:func:`check_inputs`); one line naming it."""


def check_inputs(inputs: Sequence[str | bytes]) -> list[bytes]:
    """The inputs as absolute paths (list files and globs expanded), or an error for the first
    input that names nothing.

    Run before the library, Ray or the model are touched: a mistyped path costs nothing and
    creates nothing. Paths inside a list file may be missing (they become ``NotFound`` rows).

    Raises:
        InputError: a path that does not exist (not even as a dangling link), a glob that matches
            nothing, a list file that cannot be read.
    """
    out: list[bytes] = []
    for raw in inputs:
        p = os.fsencode(raw)
        if not os.path.lexists(p) and not (p.startswith(b"@") and os.path.lexists(p[1:])) \
                and not _GLOB_CHARS & set(p):
            raise InputError(f"{ids.display_path(p)}: no such file or folder")
        paths = [path for path, _ in _expand_inputs([p])]
        if not paths and _GLOB_CHARS & set(p) and not p.startswith(b"@"):
            raise InputError(f"{ids.display_path(p)}: no file matches this pattern")
        out.extend(paths)
    return out


@dataclass(frozen=True)
class DiscoverFailure:
    """A path that could not become a task (no content to fingerprint)."""

    path_bytes: bytes
    error_type: str               # NotFound, PermissionDenied, IOError
    message: str

    @property
    def video_id(self) -> str:
        return path_video_id(self.path_bytes)


@dataclass
class DiscoverResult:
    """Tasks in a deterministic order (sorted by path bytes) plus per-path failures."""

    tasks: list[VideoTask] = field(default_factory=list)
    failures: list[DiscoverFailure] = field(default_factory=list)
    skipped_not_regular: list[bytes] = field(default_factory=list)


def path_video_id(path_bytes: bytes) -> str:
    """Stand-in ``video_id`` of a path whose content cannot be read (NotFound, PermissionDenied).

    Prefixed ``path-`` so it never collides with a content fingerprint.
    """
    return "path-" + hashlib.sha256(b"vidsearch-path\0" + path_bytes).hexdigest()[: ids.VIDEO_ID_HEX - 5]


def _stat(path: bytes) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _has_ext(name: bytes, exts: frozenset[bytes]) -> bool:
    _, ext = os.path.splitext(name)
    return ext.lower() in exts


def _sniffs_as_video(path: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return False
    return sniff_container(head) is not None


def _expand_inputs(inputs: Sequence[str | bytes]) -> Iterable[tuple[bytes, bool]]:
    """Yield (absolute path, explicit) for every input after expanding @LIST files and globs.

    Paths are made absolute (not resolved: a symlink stays the path the user gave) because the
    library stores them and search, thumbnails and the web server open them from any directory.
    """
    for p, explicit in _expand_inputs_raw(inputs):
        yield os.path.abspath(p), explicit


def _expand_inputs_raw(inputs: Sequence[str | bytes]) -> Iterable[tuple[bytes, bool]]:
    for raw in inputs:
        p = os.fsencode(raw)
        if p.startswith(b"@") and not os.path.lexists(p):
            listfile = p[1:]
            base = os.path.dirname(os.path.abspath(listfile))
            try:
                with open(listfile, "rb") as f:
                    lines = f.read().splitlines()
            except OSError as e:
                raise InputError(f"cannot read path list {ids.display_path(listfile)}: "
                                 f"{e.strerror or e}") from e
            for line in lines:
                line = line.strip()
                if line and not line.startswith(b"#"):
                    yield (line if os.path.isabs(line) else os.path.join(base, line)), True
        elif not os.path.lexists(p) and _GLOB_CHARS & set(p):
            matches = sorted(glob.glob(p, recursive=True))
            for m in matches:
                yield m, True
        else:
            yield p, True


def discover(inputs: Sequence[str | bytes], extensions: Sequence[str], sniff: bool = True,
             fingerprint: bool = True, expand: bool = True) -> DiscoverResult:
    """Find video files under ``inputs`` and fingerprint them.

    Args:
        inputs: folders, files, globs, or ``@LIST`` files; with ``expand=False``, the absolute
            paths :func:`check_inputs` returned (taken as they are: no glob or list expansion).
        extensions: lower-case extensions with the dot, e.g. ``(".mp4", ".mkv")``.
        sniff: inside folders, also keep files whose first bytes are a video container.
        fingerprint: compute ``video_id`` (False leaves it empty; for tests of the walk).

    Returns:
        Tasks sorted by path bytes and failures. Failure branches: dangling link or missing path
        -> ``NotFound``; unreadable file -> ``PermissionDenied``; other read errors -> ``IOError``;
        non-regular files are listed in ``skipped_not_regular`` (never opened).
    """
    exts = frozenset(os.fsencode(e.lower()) for e in extensions)
    result = DiscoverResult()
    seen_files: set[tuple[int, int]] = set()
    seen_dirs: set[tuple[int, int]] = set()
    files: list[bytes] = []

    def add_file(path: bytes, st: os.stat_result) -> None:
        if not stat.S_ISREG(st.st_mode):
            _logger.info("skipping %s: not a regular file", ids.display_path(path))
            result.skipped_not_regular.append(path)
            return
        key = (st.st_dev, st.st_ino)
        if key in seen_files:
            _logger.info("skipping %s: same file as one already found", ids.display_path(path))
            return
        seen_files.add(key)
        files.append(path)

    def walk(root: bytes) -> None:
        stack = [root]
        while stack:
            d = stack.pop()
            try:
                st = os.stat(d)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen_dirs:
                continue  # a symlink loop or a folder reached twice
            seen_dirs.add((st.st_dev, st.st_ino))
            try:
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except PermissionError:
                _logger.warning("cannot list %s: permission denied", ids.display_path(d))
                continue
            subdirs = []
            for e in entries:
                path = os.path.join(d, e.name)
                est = _stat(path)
                if est is None:
                    if _has_ext(e.name, exts):
                        result.failures.append(DiscoverFailure(path, "NotFound",
                                                               "dangling symbolic link"))
                    continue
                if stat.S_ISDIR(est.st_mode):
                    subdirs.append(path)
                elif _has_ext(e.name, exts) or sniff and stat.S_ISREG(est.st_mode) and _sniffs_as_video(path):
                    add_file(path, est)
            stack.extend(reversed(subdirs))

    expanded = _expand_inputs(inputs) if expand else ((os.fsencode(p), True) for p in inputs)
    for path, _explicit in expanded:
        st = _stat(path)
        if st is None:
            what = "dangling symbolic link" if os.path.islink(path) else "no such file or folder"
            result.failures.append(DiscoverFailure(path, "NotFound", what))
        elif stat.S_ISDIR(st.st_mode):
            walk(path)
        else:
            add_file(path, st)

    for path in sorted(files):
        if not fingerprint:
            st = os.stat(path)
            result.tasks.append(VideoTask(path, ids.display_path(path), "", st.st_size,
                                          _mtime(st)))
            continue
        task_or_failure = make_task(path)
        if isinstance(task_or_failure, DiscoverFailure):
            result.failures.append(task_or_failure)
        else:
            result.tasks.append(task_or_failure)
    return result


def _mtime(st: os.stat_result) -> dt.datetime:
    return dt.datetime.fromtimestamp(st.st_mtime, dt.UTC)


def make_task(path: bytes) -> VideoTask | DiscoverFailure:
    """Fingerprint one regular file. Failure branches: NotFound, PermissionDenied, IOError."""
    try:
        st = os.stat(path)
        video_id = ids.video_fingerprint(path)
    except FileNotFoundError:
        return DiscoverFailure(path, "NotFound", "file vanished before it could be read")
    except PermissionError:
        return DiscoverFailure(path, "PermissionDenied", "permission denied reading the file")
    except OSError as e:
        return DiscoverFailure(path, "IOError", f"cannot read the file ({e.strerror or e})")
    return VideoTask(path, ids.display_path(path), video_id, st.st_size, _mtime(st))
