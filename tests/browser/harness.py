"""A real ``vidsearch serve`` on loopback over a tiny-model library, for the API and browser tests.

Loaded by tests/integration/test_serve_api.py and tests/browser/test_browser_search.py with
``importlib`` (test folders are not packages). Everything is real: ffmpeg-generated videos, a
``vidsearch ingest --model internvideo2-tiny --executor local`` child, and a ``vidsearch serve
--port 0`` child whose printed URL the tests talk to over HTTP.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEST_MODEL = "internvideo2-tiny"
CLIP_SECONDS = "2"


def ffmpeg(*args: str | os.PathLike[str]) -> None:
    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *map(str, args)]
    subprocess.run(cmd, check=True, capture_output=True)


def make_video(out: Path, src: str, seconds: float, size: str = "160x96", rate: int = 25) -> Path:
    """An H.264 mp4 with the index first (``+faststart``), playable and seekable in Chromium."""
    out.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg("-f", "lavfi", "-i", f"{src}=size={size}:rate={rate}", "-t", str(seconds), "-c:v", "libx264",
           "-pix_fmt", "yuv420p", "-g", str(rate), "-movflags", "+faststart", out)
    return out


def vidsearch(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "vidsearch.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def ingest(paths: list[Path], library: Path) -> subprocess.CompletedProcess[str]:
    """``vidsearch ingest`` with the tiny test model (local executor, 2 s clips)."""
    return vidsearch("ingest", *map(str, paths), "--library", str(library), "--model", TEST_MODEL,
                     "--executor", "local", "--clip-seconds", CLIP_SECONDS, "--decode-workers", "1")


@dataclass
class ServeLibrary:
    root: Path                 # the library folder
    media: Path                # the videos (absolute paths, so the catalog holds absolute paths)
    videos: dict[str, Path]    # name -> file


# A subtitle beside sky.mp4 (read by every ingest): what is said, for the speech modality of the
# API and the page. Its words are in none of the other tests' queries; "&lt;b&gt;" is decoded to
# the text "<b>", which the page must show as text, never as markup.
SUBTITLE = "The lighthouse keeper waves: 2 < 3 &amp; x&lt;b&gt;y"
SUBTITLE_TEXT = "The lighthouse keeper waves: 2 < 3 & x<b>y"
SUBTITLE_SPAN = (1.0, 3.0)


def make_library(base: Path) -> ServeLibrary:
    """Three good videos in two folders plus one broken file (a failed video), ingested; sky.mp4
    has a sidecar subtitle (:data:`SUBTITLE` from 1 s to 3 s)."""
    media = base / "media"
    v = {
        "dog": make_video(media / "pets" / "dog.mp4", "testsrc2", 12),
        "beach": make_video(media / "travel" / "beach.mp4", "mandelbrot", 10),
        "sky": make_video(media / "travel" / "sky.mp4", "smptebars", 4),
    }
    (media / "travel" / "sky.srt").write_text(f"1\n00:00:01,000 --> 00:00:03,000\n{SUBTITLE}\n\n", encoding="utf-8")
    broken = media / "travel" / "broken.mp4"
    broken.write_text("not a video\n" * 10)
    v["broken"] = broken
    lib = base / "lib"
    r = ingest([media], lib)
    assert r.returncode in (0, 2), f"ingest failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return ServeLibrary(lib, media, v)


class Server:
    """A ``vidsearch serve`` child process; ``url`` is its base URL (``http://127.0.0.1:PORT``)."""

    def __init__(self, library: Path, *extra: str, start_timeout: float = 180) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vidsearch.cli", "serve", "--library", str(library), "--port", "0", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.stderr: list[str] = []
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc.stdout, lines), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, None), daemon=True).start()
        deadline = time.monotonic() + start_timeout
        self.url = ""
        while not self.url:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                msg = f"vidsearch serve did not start in {start_timeout} s:\n{''.join(self.stderr)}"
                raise RuntimeError(msg) from None
            if line.startswith("vidsearch serve: http://"):
                self.url = line.split()[2].rstrip("/")
            elif self.proc.poll() is not None:
                raise RuntimeError(f"vidsearch serve exited {self.proc.returncode}:\n{''.join(self.stderr)}")

    def _pump(self, stream: Any, lines: queue.Queue[str] | None) -> None:
        for line in stream:
            if lines is not None:
                lines.put(line)
            else:
                self.stderr.append(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown (lifespan closes the searcher)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def serving(library: Path, *extra: str) -> Iterator[Server]:
    s = Server(library, *extra)
    try:
        yield s
    finally:
        s.stop()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def get(url: str, headers: dict[str, str] | None = None, method: str = "GET", timeout: float = 60) -> Reply:
    """One HTTP request; 4xx/5xx are returned, not raised."""
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Reply(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())
