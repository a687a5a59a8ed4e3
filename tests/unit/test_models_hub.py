"""``vidsearch weights download`` / ``list`` against a local stand-in for the Hugging Face hub.

The hub is a small HTTP server on 127.0.0.1 speaking the part of the protocol
``hf_hub_download`` uses (HEAD + GET of ``/<repo>/resolve/main/<file>``, ``X-Repo-Commit``,
``ETag``, ``X-Error-Code``), reached through ``HF_ENDPOINT``; the cache is ``HF_HOME`` in
``tmp_path``. No network, and the real huggingface_hub client does every request.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_FILE = "/OpenGVLab/InternVideo2-Stage2_1B-224p-f4/resolve/main/InternVideo2-stage2_1b-224p-f4.pt"
VOCAB_FILE = "/google-bert/bert-large-uncased/resolve/main/vocab.txt"
FILES = {REPO_FILE: b"stand-in weights", VOCAB_FILE: b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n"}


class FakeHub:
    def __init__(self) -> None:
        self.mode = "ok"            # ok / gated / missing
        self.requests: list[str] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> bytes | None:
                hub.requests.append(f"{self.command} {self.path}")
                body = FILES.get(self.path)
                code = {"gated": ("GatedRepo", 401), "missing": ("RepoNotFound", 401)}.get(hub.mode)
                if body is None or code is not None:
                    error, status = code or ("EntryNotFound", 404)
                    self.send_response(status)
                    self.send_header("X-Error-Code", error)
                    self.send_header("X-Error-Message", "stand-in hub says no")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                self.send_response(200)
                self.send_header("X-Repo-Commit", "c" * 40)
                self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                return body

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
                self._answer()

            def do_GET(self) -> None:  # noqa: N802
                body = self._answer()
                if body is not None:
                    self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    h = FakeHub()
    yield h
    h.close()


def _env(tmp_path: Path, endpoint: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "VIDSEARCH_WEIGHTS", "VIDSEARCH_TOKENIZER", "HUGGING_FACE"))
           and k.lower() not in ("https_proxy", "http_proxy", "all_proxy")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1", **extra)
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    return env


def _vidsearch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vidsearch", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def _one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")]
    assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "huggingface-cli" not in lines[0]  # the installed huggingface_hub ships only `hf`
    return lines[0]


def test_download_fetches_weights_and_vocab_into_the_cache_and_list_finds_them(hub: FakeHub, tmp_path: Path) -> None:
    env = _env(tmp_path, hub.url)
    before = json.loads(_vidsearch(env, "weights", "list", "--json").stdout)
    row = next(r for r in before if r["name"] == "internvideo2-s2-1b")
    assert not row["present"] and row["weights_path"] is None
    assert "vidsearch weights download internvideo2-s2-1b" in row["weights_origin"]

    r = _vidsearch(env, "weights", "download", "internvideo2-s2-1b", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert Path(got["weights"]).read_bytes() == FILES[REPO_FILE]
    assert Path(got["vocab"]).read_bytes() == FILES[VOCAB_FILE]
    assert Path(got["weights"]).is_relative_to(tmp_path / "hf")

    after = json.loads(_vidsearch(env, "weights", "list", "--json").stdout)
    row = next(r for r in after if r["name"] == "internvideo2-s2-1b")
    assert row["present"] and row["weights_path"] == got["weights"] and row["vocab_path"] == got["vocab"]
    text = _vidsearch(env, "weights", "list").stdout
    assert f"present: {got['weights']} (HF cache)" in text

    served = len(hub.requests)
    assert _vidsearch(env, "weights", "download", "internvideo2-s2-1b").returncode == 0
    assert len(hub.requests) == served  # already in the cache: no request at all


def test_download_of_a_gated_repository_says_to_accept_the_licence_and_log_in(hub: FakeHub, tmp_path: Path) -> None:
    hub.mode = "gated"
    line = _one_error_line(_vidsearch(_env(tmp_path, hub.url), "weights", "download", "internvideo2-s2-1b"))
    assert "gated" in line and "hf auth login" in line and "not logged in" in line
    assert "https://huggingface.co/OpenGVLab/InternVideo2-Stage2_1B-224p-f4" in line


def test_download_of_an_invisible_repository_says_to_log_in(hub: FakeHub, tmp_path: Path) -> None:
    hub.mode = "missing"
    line = _one_error_line(_vidsearch(_env(tmp_path, hub.url), "weights", "download", "internvideo2-s2-6b"))
    assert "not visible" in line and "hf auth login" in line


def test_download_offline_is_one_clear_line(tmp_path: Path) -> None:
    line = _one_error_line(_vidsearch(_env(tmp_path, HF_HUB_OFFLINE="1"), "weights", "download", "internvideo2-s2-1b"))
    assert "HF_HUB_OFFLINE" in line and "hf download OpenGVLab/InternVideo2-Stage2_1B-224p-f4" in line
    assert "--checkpoint" in line and not (tmp_path / "hf" / "hub").exists()


def test_download_with_the_hub_unreachable_fails_fast(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = _one_error_line(_vidsearch(_env(tmp_path, f"http://127.0.0.1:{port}"), "weights", "download",
                                      "internvideo2-s2-1b"))
    assert "cannot reach the Hugging Face hub" in line


@pytest.mark.parametrize("name, says", [("internvideo2-demo", "shipped with vidsearch"),
                                        ("internvideo2-tiny", "test model")])
def test_download_of_a_model_without_hub_weights(tmp_path: Path, name: str, says: str) -> None:
    assert says in _one_error_line(_vidsearch(_env(tmp_path, HF_HUB_OFFLINE="1"), "weights", "download", name))


def test_list_names_weights_given_by_environment_variable(tmp_path: Path) -> None:
    ckpt = tmp_path / "iv2.safetensors"
    ckpt.write_bytes(b"x")
    env = _env(tmp_path, HF_HUB_OFFLINE="1", VIDSEARCH_WEIGHTS_INTERNVIDEO2_S2_1B=str(ckpt))
    rows = {r["name"]: r for r in json.loads(_vidsearch(env, "weights", "list", "--json").stdout)}
    assert rows["internvideo2-s2-1b"]["weights_path"] == str(ckpt)
    assert rows["internvideo2-s2-1b"]["weights_origin"] == "$VIDSEARCH_WEIGHTS_INTERNVIDEO2_S2_1B"
    assert not rows["internvideo2-s2-1b"]["present"]  # the vocabulary is still missing
    assert rows["internvideo2-demo"]["present"] and rows["internvideo2-tiny"]["present"]


def test_missing_weights_error_names_commands_that_exist(tmp_path: Path) -> None:
    code = ("from vidsearch.models import create_model\n"
            "create_model('internvideo2-s2-1b', tokenizer='vidsearch/models/assets/tiny_vocab.txt', "
            "text_vocab_size=332)\n")
    r = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path, HF_HUB_OFFLINE="1"),
                       capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2])
    assert r.returncode != 0 and "WeightsNotFoundError" in r.stderr
    assert "vidsearch weights download internvideo2-s2-1b" in r.stderr and "hf auth login" in r.stderr
    assert "huggingface-cli" not in r.stderr
