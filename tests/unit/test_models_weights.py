"""Checkpoint loading: official layout, safety rules, strictness, conversion, resolution."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from vidsearch.models import (
    CheckpointError,
    WeightsNotFoundError,
    build_model_skeleton,
    checkpoint_filter_fn,
    convert_to_safetensors,
    create_model,
    get_model_config,
    load_state_dict,
)

FUSION = 2  # tiny text config: layers 0-1 text path, layer 2 fusion


# Reverse mapping written independently of weights.py: our key -> official stage-2 key.
def _to_official(key: str) -> str:
    if key.startswith("text_encoder."):
        return "text_encoder.bert." + key.removeprefix("text_encoder.")
    m = re.match(r"text_fusion\.layer\.(\d+)\.(.*)", key)
    if m:
        return f"text_encoder.bert.encoder.layer.{int(m.group(1)) + FUSION}.{m.group(2)}"
    return key  # vision_encoder.*, vision_proj.*, text_proj.*, itm_head.* are 1:1


def _official_state_dict(model) -> dict[str, torch.Tensor]:
    """Official key names and shapes for the tiny variant, training-only keys included."""
    sd = {_to_official(k): v.clone() for k, v in model.state_dict().items()}
    D, C, H, V = 64, 48, 32, 332
    g = torch.Generator().manual_seed(0)
    for i in range(6):
        sd[f"vision_encoder.clip_decoder.{i}.head.weight"] = torch.randn(96, D, generator=g)
        sd[f"vision_encoder.clip_decoder.{i}.head.bias"] = torch.randn(96, generator=g)
        sd[f"vision_encoder.clip_decoder.{i}.norm.weight"] = torch.ones(96)
        sd[f"vision_encoder.clip_decoder.{i}.norm.bias"] = torch.zeros(96)
    sd["vision_encoder.final_clip_decoder.head.weight"] = torch.randn(C, C, generator=g)
    sd["vision_encoder.final_clip_decoder.head.bias"] = torch.zeros(C)
    sd["vision_encoder.final_clip_decoder.norm.weight"] = torch.ones(C)
    sd["vision_encoder.final_clip_decoder.norm.bias"] = torch.zeros(C)
    sd["vision_encoder.clip_pos_embed"] = torch.randn(1, 65, D, generator=g)
    sd["vision_encoder.clip_img_pos_embed"] = torch.randn(1, 17, D, generator=g)
    sd["text_encoder.bert.embeddings.position_ids"] = torch.arange(64)[None]
    sd["text_encoder.cls.predictions.bias"] = torch.zeros(V)
    sd["text_encoder.cls.predictions.transform.dense.weight"] = torch.randn(H, H, generator=g)
    sd["text_encoder.cls.predictions.transform.dense.bias"] = torch.zeros(H)
    sd["text_encoder.cls.predictions.transform.LayerNorm.weight"] = torch.ones(H)
    sd["text_encoder.cls.predictions.transform.LayerNorm.bias"] = torch.zeros(H)
    sd["text_encoder.cls.predictions.decoder.weight"] = sd["text_encoder.bert.embeddings.word_embeddings.weight"]
    sd["text_encoder.cls.predictions.decoder.bias"] = torch.zeros(V)
    sd["temp"] = torch.tensor(0.07)
    return sd


@pytest.fixture(scope="module")
def source_model():
    """A tiny model with weights different from the seeded init, rounded to bf16."""
    m = create_model("internvideo2-tiny", with_itm=True, init_seed=99)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.bfloat16().float())
    return m


@pytest.fixture()
def official_ckpt(tmp_path, source_model) -> Path:
    sd = {k: (v.bfloat16() if v.is_floating_point() else v) for k, v in _official_state_dict(source_model).items()}
    path = tmp_path / "official.pt"
    torch.save({"module": sd, "epoch": 3}, path)  # DeepSpeed stage-1 layout
    return path


def _frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (2, 4, 30, 40, 3), dtype=np.uint8)


def test_official_layout_loads_every_tensor(official_ckpt, source_model) -> None:
    m = create_model("internvideo2-tiny", checkpoint=official_ckpt, with_itm=True)
    ref = source_model.state_dict()
    got = m.state_dict()
    assert set(got) == set(ref)
    for k in ref:
        assert got[k].dtype == torch.float32, k  # bf16 checkpoint cast to the model dtype
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0, msg=k)
    fr = _frames()
    torch.testing.assert_close(m.encode_video(fr), source_model.encode_video(fr), rtol=0, atol=0)
    torch.testing.assert_close(m.encode_text(["a dog"]), source_model.encode_text(["a dog"]), rtol=0, atol=0)
    torch.testing.assert_close(m.itm_score(fr, ["a dog", "x"]), source_model.itm_score(fr, ["a dog", "x"]))
    assert m.weights_id.startswith("sha256:") and m.fingerprint != source_model.fingerprint
    assert not any(b.is_meta for b in m.buffers())  # the meta-device build left nothing unfilled


def test_official_layout_without_itm_drops_fusion(official_ckpt, source_model) -> None:
    m = create_model("internvideo2-tiny", checkpoint=official_ckpt)
    assert not hasattr(m, "text_fusion") and not hasattr(m, "itm_head")
    fr = _frames()
    torch.testing.assert_close(m.encode_video(fr), source_model.encode_video(fr), rtol=0, atol=0)
    v = create_model("internvideo2-tiny", checkpoint=official_ckpt, vision_only=True)
    torch.testing.assert_close(v.encode_video(fr), source_model.encode_video(fr), rtol=0, atol=0)
    assert v.fingerprint == m.fingerprint  # same weights, same preprocessing: same space
    t = create_model("internvideo2-tiny", checkpoint=official_ckpt, text_only=True)
    assert not hasattr(t, "vision_encoder") and t.fingerprint == m.fingerprint
    texts = ["a dog", "snow in the yard"]
    assert torch.equal(t.encode_text(texts), m.encode_text(texts))


@pytest.mark.parametrize("container", ["model", "state_dict", "flat", "module_prefix"])
def test_containers_and_module_prefix(tmp_path, source_model, container) -> None:
    sd = _official_state_dict(source_model)
    if container == "flat":
        obj = sd
    elif container == "module_prefix":
        obj = {"model": {f"module.{k}": v for k, v in sd.items()}}
    else:
        obj = {container: sd}
    path = tmp_path / "c.pt"
    torch.save(obj, path)
    m = create_model("internvideo2-tiny", checkpoint=path, vision_only=True)
    torch.testing.assert_close(m.encode_video(_frames()), source_model.encode_video(_frames()), rtol=0, atol=0)


def test_missing_key_fails_with_its_name(tmp_path, source_model) -> None:
    sd = _official_state_dict(source_model)
    del sd["vision_encoder.blocks.1.attn.q_norm.weight"]
    torch.save({"module": sd}, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=r"missing keys.*vision_encoder\.blocks\.1\.attn\.q_norm\.weight"):
        create_model("internvideo2-tiny", checkpoint=tmp_path / "m.pt")


def test_unexpected_key_fails_with_its_name(tmp_path, source_model) -> None:
    sd = _official_state_dict(source_model)
    sd["vision_encoder.blocks.0.attn.qkv.bias"] = torch.zeros(192)
    torch.save({"module": sd}, tmp_path / "u.pt")
    with pytest.raises(CheckpointError, match=r"unexpected keys.*vision_encoder\.blocks\.0\.attn\.qkv\.bias"):
        create_model("internvideo2-tiny", checkpoint=tmp_path / "u.pt")


def test_shape_mismatch_and_unknown_layout(tmp_path, source_model) -> None:
    sd = _official_state_dict(source_model)
    sd["vision_proj.weight"] = torch.zeros(16, 48)
    torch.save(sd, tmp_path / "s.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatch.*vision_proj\.weight"):
        create_model("internvideo2-tiny", checkpoint=tmp_path / "s.pt")
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="unknown checkpoint layout"):
        create_model("internvideo2-tiny", checkpoint=tmp_path / "x.pt")


def _touch(path: str) -> None:
    Path(path).write_text("pwned")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch, (self.marker,))


@pytest.mark.parametrize("force_env", [False, True])
def test_unsafe_pickle_is_refused(tmp_path, source_model, monkeypatch, force_env) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"module": {"vision_proj.weight": torch.zeros(2), "x": _Evil(marker)}}, path)
    assert not marker.exists()
    if force_env:
        # Would make torch.load default to full pickle; vidsearch must ignore it.
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError) as ei:
        load_state_dict(path)
    assert not marker.exists(), "the pickle ran code"
    assert "_touch" in str(ei.value) and "convert" in str(ei.value)
    with pytest.raises(CheckpointError):
        create_model("internvideo2-tiny", checkpoint=path)
    assert not marker.exists()
    if force_env:
        assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"  # restored after the call
    else:
        # Sanity check of the test itself: full unpickling really runs the payload.
        torch.load(path, weights_only=False)
        assert marker.exists()


def test_temporal_interpolation_on_load(official_ckpt, source_model) -> None:
    m = create_model("internvideo2-tiny", checkpoint=official_ckpt, num_frames=8, vision_only=True)
    pe4 = source_model.vision_encoder.pos_embed.detach()
    pe8 = m.vision_encoder.pos_embed.detach()
    assert pe8.shape == (1, 1 + 8 * 16, 64)
    torch.testing.assert_close(pe8[:, 0], pe4[:, 0], rtol=0, atol=0)
    # frame 1 of 8 sits at source coordinate 0.25: 0.75 * frame0 + 0.25 * frame1 (in bf16, as the
    # official loader resamples the checkpoint tensor before the cast)
    old = pe4[0, 1:].view(4, 16, 64)
    new = pe8[0, 1:].view(8, 16, 64)
    torch.testing.assert_close(new[0], old[0], rtol=0, atol=0)
    torch.testing.assert_close(new[1], 0.75 * old[0] + 0.25 * old[1], rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(new[7], old[3], rtol=0, atol=0)
    fr = np.random.default_rng(1).integers(0, 256, (1, 8, 30, 40, 3), dtype=np.uint8)
    assert m.encode_video(fr).shape == (1, 32)


def test_convert_to_safetensors_roundtrip(tmp_path, official_ckpt, source_model) -> None:
    from safetensors import safe_open

    dst = convert_to_safetensors(official_ckpt, tmp_path / "out" / "tiny.safetensors", "internvideo2-tiny")
    assert dst.is_file() and not list(dst.parent.glob("*.tmp"))
    with safe_open(str(dst), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["model"] == "internvideo2-tiny" and meta["format"] == "vidsearch"
    assert len(meta["source_sha256"]) == 64
    assert "temp" not in keys and not any("clip_decoder" in k or ".cls." in k for k in keys)
    assert any(k.startswith("text_fusion.") for k in keys)
    a = create_model("internvideo2-tiny", checkpoint=dst, with_itm=True)
    b = create_model("internvideo2-tiny", checkpoint=official_ckpt, with_itm=True)
    torch.testing.assert_close(a.encode_video(_frames()), b.encode_video(_frames()), rtol=0, atol=0)
    assert a.fingerprint == b.fingerprint  # a conversion keeps its source's identity
    # our own layout also loads into a model without ITM / text
    c = create_model("internvideo2-tiny", checkpoint=dst, vision_only=True)
    torch.testing.assert_close(c.encode_video(_frames()), b.encode_video(_frames()), rtol=0, atol=0)


def test_sha256_verification(official_ckpt) -> None:
    with pytest.raises(CheckpointError, match="SHA-256"):
        create_model("internvideo2-tiny", checkpoint=official_ckpt, weights_sha256="0" * 64)
    from vidsearch.models.weights import sha256_file

    m = create_model("internvideo2-tiny", checkpoint=official_ckpt, weights_sha256=sha256_file(official_ckpt))
    assert m.weights_id == "sha256:" + sha256_file(official_ckpt)


def test_filter_fn_keeps_bf16_and_drops_training_keys(source_model) -> None:
    sd = {k: v.bfloat16() for k, v in _official_state_dict(source_model).items()}
    out = checkpoint_filter_fn({"module": sd}, source_model)
    assert set(out) == set(source_model.state_dict())
    assert out["vision_proj.weight"].dtype == torch.bfloat16


# --------------------------------------------------------------------------- resolution
@pytest.fixture()
def empty_hf_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf"), raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    for var in ("VIDSEARCH_WEIGHTS", "VIDSEARCH_WEIGHTS_INTERNVIDEO2_S2_1B", "VIDSEARCH_TOKENIZER"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def test_missing_weights_message_says_what_to_do(empty_hf_cache, tmp_path) -> None:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "dog"]) + "\n")
    with pytest.raises(WeightsNotFoundError) as ei:
        create_model("internvideo2-s2-1b", vision_only=True)
    msg = str(ei.value)
    assert "vidsearch weights download internvideo2-s2-1b" in msg
    assert "hf download OpenGVLab/InternVideo2-Stage2_1B-224p-f4 InternVideo2-stage2_1b-224p-f4.pt" in msg
    assert "gated" in msg and "HF_TOKEN" in msg and "hf auth login" in msg and "huggingface-cli" not in msg
    assert "--checkpoint" in msg and "VIDSEARCH_WEIGHTS_INTERNVIDEO2_S2_1B" in msg and "VIDSEARCH_WEIGHTS" in msg


def test_missing_tokenizer_message(empty_hf_cache) -> None:
    with pytest.raises(WeightsNotFoundError) as ei:
        create_model("internvideo2-s2-1b")
    msg = str(ei.value)
    assert "vidsearch weights download internvideo2-s2-1b" in msg and "huggingface-cli" not in msg
    assert "hf download google-bert/bert-large-uncased vocab.txt" in msg
    assert "--tokenizer" in msg and "VIDSEARCH_TOKENIZER" in msg


def test_env_var_and_folder_resolution(empty_hf_cache, tmp_path, official_ckpt, monkeypatch, source_model) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "anything.pt").write_bytes(official_ckpt.read_bytes())
    monkeypatch.setenv("VIDSEARCH_WEIGHTS_INTERNVIDEO2_TINY", str(folder))
    # test models load weights only when asked: pretrained=True + env var is not enough
    assert create_model("internvideo2-tiny").weights_id == "seed:1234"
    m = create_model("internvideo2-tiny", checkpoint=folder, vision_only=True)
    torch.testing.assert_close(m.encode_video(_frames()), source_model.encode_video(_frames()), rtol=0, atol=0)
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        create_model("internvideo2-tiny", checkpoint=tmp_path / "nope.pt")


def test_env_var_for_pretrained_model(empty_hf_cache, tmp_path, monkeypatch) -> None:
    # A real-sized config would be too slow: shrink the 1B architecture with overrides and point the
    # per-model variable at a file; the resolution must pick it before the hub.
    small = dict(
        vision_embed_dim=32,
        vision_depth=1,
        vision_num_heads=2,
        vision_mlp_hidden_dim=64,
        vision_pool_num_heads=2,
        vision_clip_embed_dim=16,
        img_size=28,
        embed_dim=8,
    )
    sk = build_model_skeleton(get_model_config("internvideo2-s2-1b", **small), with_text=False)
    path = tmp_path / "small.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sk.state_dict().items()}, str(path))
    monkeypatch.setenv("VIDSEARCH_WEIGHTS_INTERNVIDEO2_S2_1B", str(path))
    m = create_model("internvideo2-s2-1b", vision_only=True, **small)
    assert m.weights_source == str(path)
    monkeypatch.delenv("VIDSEARCH_WEIGHTS_INTERNVIDEO2_S2_1B")
    monkeypatch.setenv("VIDSEARCH_WEIGHTS", str(tmp_path))
    assert create_model("internvideo2-s2-1b", vision_only=True, **small).weights_source == str(path)


def test_checkpoint_digest_is_remembered_across_processes_until_the_file_changes(tmp_path, monkeypatch) -> None:
    """Hashing a 3 GB checkpoint at every one-shot search cost seconds; an unchanged file's digest
    is kept in the user cache folder, and any write to the file (its ctime) invalidates it."""
    import hashlib
    import json
    import os

    from vidsearch.models import digests as w

    monkeypatch.setenv("VIDSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(w._DigestCache, "MIN_BYTES", 1)
    f = tmp_path / "big.pt"
    f.write_bytes(b"a" * 1000)
    real = hashlib.sha256(f.read_bytes()).hexdigest()
    assert w._DigestCache().get(f) == real
    cache = json.loads((tmp_path / "cache" / "weights-sha256.json").read_text())
    assert cache[str(f.resolve())]["sha256"] == real
    # Another process (a fresh cache object) takes the stored digest without reading the file:
    cache[str(f.resolve())]["sha256"] = "0" * 64
    (tmp_path / "cache" / "weights-sha256.json").write_text(json.dumps(cache))
    assert w._DigestCache().get(f) == "0" * 64
    # Same size, mtime set back: the ctime still changes, so the file is hashed again.
    st = f.stat()
    f.write_bytes(b"b" * 1000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert w._DigestCache().get(f) == hashlib.sha256(b"b" * 1000).hexdigest()
    # An unwritable cache folder is not an error.
    monkeypatch.setenv("VIDSEARCH_CACHE_DIR", str(f / "not-a-dir"))
    assert w._DigestCache().get(f) == hashlib.sha256(b"b" * 1000).hexdigest()
