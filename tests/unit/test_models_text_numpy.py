"""The NumPy query encoder: no torch import, the torch model's embeddings to float32 rounding."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from vidsearch.models import create_numpy_text_encoder, create_text_encoder
from vidsearch.models.text_numpy import erf

TEXTS = ["a red circle", "two green stars moving to the left", "", "Ünïcödé [SEP] 中文 " + "zz " * 50]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("VIDSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_erf_matches_math_erf() -> None:
    z = np.concatenate([np.linspace(-7, 7, 100_001), [0.0, -0.0, 1e-300, 6.0, 40.0, -40.0]])
    want = np.array([math.erf(v) for v in z])
    assert np.abs(erf(z) - want).max() < 1e-10


def _close(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == np.float32
    assert np.abs(a - b).max() < 1e-5, np.abs(a - b).max()


def test_demo_model_from_its_safetensors(cache_dir) -> None:
    fast = create_numpy_text_encoder("internvideo2-demo")
    ref = create_text_encoder("internvideo2-demo")
    assert fast.fingerprint == ref.fingerprint and fast.weights_id == ref.weights_id
    a, b = fast.encode_text(TEXTS), ref.encode_text(TEXTS).numpy()
    _close(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, rtol=1e-6)
    # The same ranking of a collection by either embedding (no near-ties among 2,000 vectors).
    db = np.random.default_rng(0).standard_normal((2000, a.shape[1])).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    for i in range(len(TEXTS)):
        assert np.array_equal(np.argsort(-(db @ a[i]))[:20], np.argsort(-(db @ b[i]))[:20])
    assert not cache_dir.exists()  # a safetensors checkpoint is read directly, nothing is cached
    assert fast.encode_text([]).shape == (0, a.shape[1])


def test_official_pt_checkpoint_is_converted_once_then_read_without_torch(cache_dir, tmp_path) -> None:
    """The official layout in a torch .pt: converted once (torch) into the cache, then NumPy only."""
    import torch

    from vidsearch.models import create_model

    src = create_model("internvideo2-tiny", init_seed=5)
    sd = {("text_encoder.bert." + k.removeprefix("text_encoder.") if k.startswith("text_encoder.") else k): v
          for k, v in src.state_dict().items()}
    ckpt = tmp_path / "official.pt"
    torch.save({"module": sd}, ckpt)
    ref = create_text_encoder("internvideo2-tiny", checkpoint=ckpt)
    fast = create_numpy_text_encoder("internvideo2-tiny", checkpoint=ckpt)
    assert fast.fingerprint == ref.fingerprint
    _close(fast.encode_text(TEXTS), ref.encode_text(TEXTS).numpy())
    cached = list((cache_dir / "text-towers").glob("*.safetensors"))
    assert [p.stem for p in cached] == [ref.fingerprint]
    code = ("import sys\nfrom vidsearch.models import create_numpy_text_encoder\n"
            f"m = create_numpy_text_encoder('internvideo2-tiny', checkpoint={str(ckpt)!r})\n"
            "print(m.fingerprint, 'torch' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "VIDSEARCH_CACHE_DIR": str(cache_dir)})
    assert r.stdout.split() == [ref.fingerprint, "False"], r.stderr


def test_test_model_random_weights_match_and_warn(cache_dir) -> None:
    fast = create_numpy_text_encoder("internvideo2-tiny")
    ref = create_text_encoder("internvideo2-tiny")
    assert fast.fingerprint == ref.fingerprint and fast.is_test_model
    assert fast.test_model_warning == ref.test_model_warning
    _close(fast.encode_text(TEXTS), ref.encode_text(TEXTS).numpy())


def test_wrong_checksum_and_wrong_shapes_are_refused(cache_dir, tmp_path) -> None:
    from safetensors.numpy import save_file

    from vidsearch.models import CheckpointError
    from vidsearch.models.hub import ASSETS_DIR

    with pytest.raises(CheckpointError, match="SHA-256"):
        create_numpy_text_encoder("internvideo2-demo", weights_sha256="0" * 64)
    bad = tmp_path / "bad.safetensors"
    save_file({"text_proj.weight": np.zeros((3, 3), np.float32),
               "vision_encoder.blocks.0.attn.qkv.weight": np.zeros((3, 3), np.float32)}, str(bad))
    with pytest.raises(CheckpointError, match="does not fit"):
        create_numpy_text_encoder("internvideo2-tiny", checkpoint=bad)
    # A header whose offsets point past the file is refused before anything is mapped.
    data = bytearray(bad.read_bytes())
    hdr_len = int.from_bytes(data[:8], "little")
    header = data[8:8 + hdr_len].decode().replace('"data_offsets":[0,36]', '"data_offsets":[0,999999]')
    forged = tmp_path / "forged.safetensors"
    forged.write_bytes(len(header.encode()).to_bytes(8, "little") + header.encode() + data[8 + hdr_len:])
    with pytest.raises(CheckpointError, match="outside the file"):
        create_numpy_text_encoder("internvideo2-tiny", checkpoint=forged)
    assert (ASSETS_DIR / "internvideo2-demo.safetensors").is_file()


def test_one_shot_query_imports_no_torch() -> None:
    code = ("import sys, time\nt = time.perf_counter()\n"
            "from vidsearch.models import create_numpy_text_encoder\n"
            "v = create_numpy_text_encoder('internvideo2-demo').encode_text(['a red circle'])\n"
            "print(v.shape, [m for m in ('torch', 'transformers') if m in sys.modules])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.stdout.strip() == "(1, 128) []", r.stdout + r.stderr
