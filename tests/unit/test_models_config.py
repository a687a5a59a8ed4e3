"""Registry, config validation, overrides, fingerprints, and 1B/6B shapes on the meta device."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from vidsearch.models import (
    ModelCfg,
    build_model_skeleton,
    compute_fingerprint,
    create_model,
    get_model_config,
    list_models,
)
from vidsearch.models.factory import add_model_config


def test_registry_lists_the_three_variants() -> None:
    assert {"internvideo2-s2-1b", "internvideo2-s2-6b", "internvideo2-tiny"} <= set(list_models())


def test_tiny_is_labelled_as_test_model() -> None:
    cfg = get_model_config("internvideo2-tiny")
    assert cfg.is_test_model
    assert cfg.description == "TEST MODEL — random weights, not for real search"
    assert cfg.pretrained is None
    assert not get_model_config("internvideo2-s2-1b").is_test_model


def test_pretrained_entries() -> None:
    p1 = get_model_config("internvideo2-s2-1b").pretrained
    assert p1 is not None
    assert (p1.hf_hub_id, p1.filename) == (
        "OpenGVLab/InternVideo2-Stage2_1B-224p-f4",
        "InternVideo2-stage2_1b-224p-f4.pt",
    )
    p6 = get_model_config("internvideo2-s2-6b").pretrained
    assert p6 is not None
    assert (p6.hf_hub_id, p6.filename) == ("OpenGVLab/InternVideo2-Stage2_6B-224p-f4", "internvideo2-s2_6b-224p-f4.pt")


def test_overrides_and_validation() -> None:
    cfg = get_model_config("internvideo2-tiny", num_frames=8, vision_depth=3, text_hidden_size=64, gelu_approx=True)
    assert cfg.encoder.vision.num_frames == 8 and cfg.preprocess.num_frames == 8
    assert cfg.encoder.vision.depth == 3 and cfg.encoder.text.hidden_size == 64
    assert cfg.encoder.vision.gelu_approx
    with pytest.raises(ValueError, match="unknown override"):
        get_model_config("internvideo2-tiny", depth=3)
    with pytest.raises(ValueError, match="divisible"):
        get_model_config("internvideo2-tiny", vision_num_heads=5)
    with pytest.raises(ValueError, match="unknown model"):
        get_model_config("nope")
    with pytest.raises(ValueError, match="one of"):
        get_model_config("internvideo2-tiny", interpolation="nearest")


def test_json_with_unknown_key_or_wrong_type_is_rejected(tmp_path) -> None:
    d = json.loads(json.dumps(get_model_config("internvideo2-tiny").to_dict()))
    d["encoder"]["vision"]["bogus"] = 1
    with pytest.raises(ValueError, match="bogus"):
        ModelCfg.from_dict(d)
    d["encoder"]["vision"].pop("bogus")
    d["encoder"]["vision"]["depth"] = "2"
    with pytest.raises(ValueError, match="expected an integer"):
        ModelCfg.from_dict(d)
    d["encoder"]["vision"]["depth"] = 2
    d["name"] = "tiny-copy"
    f = tmp_path / "wrong-name.json"
    f.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="must be named"):
        add_model_config(f)
    g = tmp_path / "tiny-copy.json"
    g.write_text(json.dumps(d))
    add_model_config(g)
    assert "tiny-copy" in list_models()


def test_fingerprint_depends_on_arch_preprocess_and_weights() -> None:
    base = get_model_config("internvideo2-tiny")
    fp = compute_fingerprint(base, "seed:1234")
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert fp == compute_fingerprint(get_model_config("internvideo2-tiny"), "seed:1234")  # stable
    assert fp != compute_fingerprint(base, "seed:1")
    assert fp != compute_fingerprint(get_model_config("internvideo2-tiny", sampling="middle"), "seed:1234")
    assert fp != compute_fingerprint(get_model_config("internvideo2-tiny", gelu_approx=True), "seed:1234")
    assert fp != compute_fingerprint(get_model_config("internvideo2-tiny", num_frames=8), "seed:1234")
    # attention kernel choice is numerically equivalent: same embedding space
    assert fp == compute_fingerprint(get_model_config("internvideo2-tiny", attn_impl="flash"), "seed:1234")


def test_model_describe_is_json() -> None:
    m = create_model("internvideo2-tiny")
    d = m.describe()
    json.dumps(d)
    assert d["fingerprint"] == m.fingerprint
    assert d["weights"]["id"] == "seed:1234"
    assert d["is_test_model"] is True
    assert m.embed_dim == 32 and m.num_frames == 4
    assert m.preprocess_cfg == get_model_config("internvideo2-tiny").preprocess


def _count(module: torch.nn.Module, prefix: str = "", exclude: tuple[str, ...] = ()) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if n.startswith(prefix) and not n.startswith(exclude))


def test_1b_shapes_and_counts_match_the_facts_sheet() -> None:
    with torch.device("meta"):
        m = build_model_skeleton(get_model_config("internvideo2-s2-1b"), with_itm=True)
    sd = m.state_dict()
    shapes = {
        "vision_encoder.pos_embed": (1, 1025, 1408),
        "vision_encoder.img_pos_embed": (1, 257, 1408),
        "vision_encoder.patch_embed.proj.weight": (1408, 3, 1, 14, 14),
        "vision_encoder.blocks.39.attn.qkv.weight": (4224, 1408),
        "vision_encoder.blocks.0.attn.q_norm.weight": (1408,),
        "vision_encoder.blocks.0.mlp.fc1.weight": (6144, 1408),
        "vision_encoder.clip_projector.cross_attn.k_bias": (1408,),
        "vision_encoder.clip_projector.cross_attn.proj.weight": (768, 1408),
        "vision_proj.weight": (512, 768),
        "text_proj.weight": (512, 1024),
        "text_encoder.encoder.layer.18.output.dense.weight": (1024, 4096),
        "text_fusion.layer.4.crossattention.self.key.weight": (1024, 1408),
        "itm_head.weight": (2, 1024),
    }
    for k, s in shapes.items():
        assert tuple(sd[k].shape) == s, k
    assert "vision_encoder.blocks.0.attn.qkv.bias" not in sd
    assert "vision_encoder.blocks.40.norm1.weight" not in sd
    assert "text_encoder.encoder.layer.19.output.dense.weight" not in sd
    # facts §3.3: vision without training-only entries and img_pos_embed = 1,019,266,816 elements
    assert _count(m.vision_encoder, exclude=("img_pos_embed",)) == 1_019_266_816
    # facts §3.3: embeddings + layers 0-18 = 271,111,168
    assert _count(m.text_encoder) == 271_111_168
    # facts §3.1 full file 1,441,432,055 minus training-only entries (decoders, clip pos embeds,
    # MLM head, temp, position_ids) = 61,856,117
    assert _count(m) == 1_441_432_055 - 61_856_117


def test_6b_shapes() -> None:
    with torch.device("meta"):
        m = build_model_skeleton(get_model_config("internvideo2-s2-6b"), with_itm=True)
    sd = m.state_dict()
    assert tuple(sd["vision_encoder.pos_embed"].shape) == (1, 1025, 3200)
    assert "vision_encoder.img_pos_embed" not in sd
    assert tuple(sd["vision_encoder.blocks.47.attn.qkv.weight"].shape) == (9600, 3200)
    assert tuple(sd["vision_encoder.blocks.0.mlp.fc1.weight"].shape) == (12800, 3200)
    assert tuple(sd["vision_encoder.clip_projector.cross_attn.proj.weight"].shape) == (768, 3200)
    assert tuple(sd["vision_proj.weight"].shape) == (768, 768)
    assert tuple(sd["text_proj.weight"].shape) == (768, 1024)
    assert tuple(sd["av_concat_vision_proj.0.weight"].shape) == (768, 3200)
    assert tuple(sd["av_concat_vision_proj.1.weight"].shape) == (768,)
    assert tuple(sd["text_fusion.layer.0.crossattention.self.key.weight"].shape) == (1024, 768)
    assert m.vision_encoder.blocks[0].attn.head_dim == 128
    assert m.vision_encoder.clip_projector.cross_attn.head_dim == 200
