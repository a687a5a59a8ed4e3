"""Tiny InternVideo2: shapes, normalisation, determinism, official-formula equivalence, golden."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vidsearch.models import create_model, get_model_config
from vidsearch.models.internvideo2 import Attention, AttentionPoolingBlock, RMSNorm
from vidsearch.models.pos_embed import get_3d_sincos_pos_embed, resample_pos_embed

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "internvideo2_tiny_golden.safetensors"
GOLDEN_TEXTS = ["A playful dog and its owner wrestle in the snowy yard.", "a man walks", "zzz qqq"]


@pytest.fixture(scope="module")
def tiny():
    return create_model("internvideo2-tiny", with_itm=True)


def _frames(seed: int, b: int = 2, h: int = 40, w: int = 50) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 4, h, w, 3), generator=g, dtype=torch.uint8).numpy()


def test_shapes_and_l2_norm(tiny) -> None:
    v = tiny.encode_video(_frames(0))
    t = tiny.encode_text(["a dog", "the snowy yard", ""])
    assert v.shape == (2, 32) and t.shape == (3, 32)
    assert v.dtype == torch.float32 and t.dtype == torch.float32
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(3))
    x = tiny.preprocess(_frames(0))
    assert x.shape == (2, 4, 3, 56, 56)
    assert tiny.forward_features(x).shape == (2, 1 + 4 * 16, 64)
    torch.testing.assert_close(tiny.encode_video_preprocessed(x), v)
    raw = tiny.encode_video(_frames(0), normalize=False)
    torch.testing.assert_close(F.normalize(raw, dim=-1), v)


def test_torch_input_and_bad_input(tiny) -> None:
    fr = _frames(1)
    torch.testing.assert_close(tiny.encode_video(torch.from_numpy(fr)), tiny.encode_video(fr))
    with pytest.raises(ValueError, match="already sampled"):
        tiny.encode_video(fr[:, :3])
    with pytest.raises(ValueError, match="uint8"):
        tiny.encode_video(fr.astype(np.float32))


def test_deterministic_init() -> None:
    a = create_model("internvideo2-tiny")
    b = create_model("internvideo2-tiny")
    c = create_model("internvideo2-tiny", init_seed=7)
    fr = _frames(2)
    torch.testing.assert_close(a.encode_video(fr), b.encode_video(fr), rtol=0, atol=0)
    torch.testing.assert_close(a.encode_text(["a dog"]), b.encode_text(["a dog"]), rtol=0, atol=0)
    assert not torch.allclose(a.encode_video(fr), c.encode_video(fr))
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_parts_do_not_change_each_other_init(tiny) -> None:
    """Same seed -> same vision tower whether or not text/ITM are built (same fingerprint)."""
    fr = _frames(7)
    vis = create_model("internvideo2-tiny", vision_only=True)
    txt = create_model("internvideo2-tiny")
    torch.testing.assert_close(vis.encode_video(fr), tiny.encode_video(fr), rtol=0, atol=0)
    torch.testing.assert_close(txt.encode_text(["a dog"]), tiny.encode_text(["a dog"]), rtol=0, atol=0)
    assert vis.fingerprint == txt.fingerprint == tiny.fingerprint


TEXTS = ["a dog", "A playful dog and its owner wrestle in the snowy yard.", "", "zzz qqq " * 30]


def test_text_only_is_bit_identical_to_the_full_model(tiny) -> None:
    """create_text_encoder: no vision tower, same text embeddings to the bit, same fingerprint."""
    from vidsearch.models import create_text_encoder

    txt = create_text_encoder("internvideo2-tiny")
    assert not hasattr(txt, "vision_encoder") and not hasattr(txt, "vision_proj")
    assert txt.fingerprint == tiny.fingerprint
    assert torch.equal(txt.encode_text(TEXTS), tiny.encode_text(TEXTS))
    with pytest.raises(RuntimeError, match="without the vision tower"):
        txt.encode_video(_frames(0))
    with pytest.raises(ValueError, match="exclude each other"):
        create_model("internvideo2-tiny", vision_only=True, text_only=True)
    with pytest.raises(ValueError, match="both towers"):
        create_model("internvideo2-tiny", text_only=True, with_itm=True)


def test_text_only_with_weights_is_bit_identical() -> None:
    """The demo model's shipped weights: the text-only load maps the same tensors."""
    from vidsearch.models import create_text_encoder

    full = create_model("internvideo2-demo")
    txt = create_text_encoder("internvideo2-demo")
    assert txt.fingerprint == full.fingerprint and txt.weights_id == full.weights_id
    assert torch.equal(txt.encode_text(TEXTS), full.encode_text(TEXTS))
    assert sum(p.numel() for p in txt.parameters()) < sum(p.numel() for p in full.parameters())


def test_test_model_warning() -> None:
    """A random-weight test model says so in one line; a real model has no such warning."""
    tiny = create_model("internvideo2-tiny", vision_only=True)
    assert tiny.is_test_model
    warning = tiny.test_model_warning
    assert warning is not None and "TEST MODEL" in warning and "internvideo2-tiny" in warning
    assert "\n" not in warning
    demo = create_model("internvideo2-demo", vision_only=True)
    assert not demo.is_test_model and demo.test_model_warning is None


def test_global_rng_untouched() -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    create_model("internvideo2-tiny", vision_only=True)
    torch.testing.assert_close(torch.rand(3), expected)


def test_single_frame_uses_img_pos_embed(tiny) -> None:
    x = tiny.preprocess(_frames(3))[:, :1]  # (B, 1, 3, S, S)
    out = tiny.forward_features(x)
    assert out.shape == (2, 17, 64)
    ve = tiny.vision_encoder
    assert ve._pos_embed_for(1) is ve.img_pos_embed
    no_sep = create_model("internvideo2-tiny", vision_sep_image_video_pos_embed=False, vision_only=True).vision_encoder
    pe = no_sep._pos_embed_for(1)  # cls row + mean over T of the video rows
    torch.testing.assert_close(pe[0, 0], no_sep.pos_embed[0, 0])
    torch.testing.assert_close(pe[0, 1:], no_sep.pos_embed[0, 1:].view(4, 16, 64).mean(0))
    with pytest.raises(ValueError, match="built for 4 frames"):
        tiny.forward_features(tiny.preprocess(_frames(3))[:, :2])


# --------------------------------------------------------------------------- official formulas
def _official_rmsnorm(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    dt = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(dt)


def test_rmsnorm_matches_official_formula() -> None:
    torch.manual_seed(0)
    n = RMSNorm(24)
    with torch.no_grad():
        n.weight.normal_()
    x = torch.randn(3, 5, 24) * 3
    torch.testing.assert_close(n(x), _official_rmsnorm(x, n.weight), rtol=0, atol=0)
    xb = x.bfloat16()
    torch.testing.assert_close(n(xb).float(), _official_rmsnorm(xb, n.weight.bfloat16()).float(), rtol=1e-2, atol=1e-2)


def test_attention_matches_official_naive_attention() -> None:
    """Official Attention: qkv.reshape(B,N,3,H,hd).permute(2,0,3,1,4), q/k RMSNorm over the
    flattened heads, (q*scale) @ k^T softmax @ v (_naive_attn)."""
    torch.manual_seed(0)
    B, N, C, H = 2, 9, 32, 4
    attn = Attention(C, H, qkv_bias=False, qk_norm=True)
    with torch.no_grad():
        attn.q_norm.weight.normal_()
        attn.k_norm.weight.normal_()
    x = torch.randn(B, N, C)
    qkv = attn.qkv(x).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q = _official_rmsnorm(q.transpose(1, 2).flatten(-2, -1), attn.q_norm.weight).view(B, N, H, -1).transpose(1, 2)
    k = _official_rmsnorm(k.transpose(1, 2).flatten(-2, -1), attn.k_norm.weight).view(B, N, H, -1).transpose(1, 2)
    a = ((q * (C // H) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
    ref = attn.proj((a @ v).transpose(1, 2).reshape(B, N, C))
    torch.testing.assert_close(attn(x), ref, rtol=1e-5, atol=1e-6)


def test_attention_pool_matches_official() -> None:
    torch.manual_seed(0)
    B, N, C, H, out_dim = 2, 7, 32, 4, 12
    pool = AttentionPoolingBlock(C, H, out_dim)
    with torch.no_grad():
        for p in pool.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(B, N, C)
    ca = pool.cross_attn
    xq = pool.norm1_q(x.mean(1, keepdim=True))
    q = F.linear(xq, ca.q.weight, ca.q_bias).reshape(B, 1, H, -1).permute(0, 2, 1, 3)
    k = F.linear(pool.norm1_k(x), ca.k.weight, ca.k_bias).reshape(B, N, H, -1).permute(0, 2, 1, 3)
    v = F.linear(pool.norm1_v(x), ca.v.weight, ca.v_bias).reshape(B, N, H, -1).permute(0, 2, 1, 3)
    a = ((q * (C // H) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
    ref = ca.proj((a @ v).transpose(1, 2).reshape(B, 1, C)).squeeze(1)
    torch.testing.assert_close(pool(x), ref, rtol=1e-5, atol=1e-6)


def test_gelu_option_changes_the_mlp() -> None:
    exact = create_model("internvideo2-tiny", vision_only=True)
    approx = create_model("internvideo2-tiny", vision_only=True, gelu_approx=True)
    assert exact.vision_encoder.blocks[0].mlp.act.approximate == "none"
    assert approx.vision_encoder.blocks[0].mlp.act.approximate == "tanh"
    fr = _frames(4)
    d = (exact.encode_video(fr) - approx.encode_video(fr)).abs().max().item()
    assert 0 < d < 1e-2


def _transformers_bert(name: str, attn: str, seed: int):
    transformers = pytest.importorskip("transformers")
    cfg = get_model_config(name).encoder.text
    config = transformers.BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.fusion_layer,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
        hidden_act=cfg.hidden_act, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.layer_norm_eps)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return transformers.BertModel(config, add_pooling_layer=False).eval()


@pytest.mark.parametrize("name", ["internvideo2-tiny", "internvideo2-demo"])
def test_text_encoder_equals_transformers_bert(name) -> None:
    """Our BERT text path: transformers' init to the bit, its SDPA outputs to the bit, eager close.

    vidsearch does not import transformers (seconds per search); this pins it to what it replaced.
    """
    from vidsearch.models.text import BertTextEncoder

    cfg = get_model_config(name).encoder.text
    ref = _transformers_bert(name, "sdpa", seed=5)
    eager = _transformers_bert(name, "eager", seed=5)
    torch.manual_seed(5)
    ours = BertTextEncoder(cfg).eval()
    want_sd, got_sd = ref.state_dict(), ours.state_dict()
    assert set(got_sd) == set(want_sd)
    for k in want_sd:
        assert torch.equal(got_sd[k], want_sd[k]), k
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, cfg.vocab_size, (3, cfg.context_length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    mask[1, 17:] = 0
    with torch.inference_mode():
        for m in (mask, torch.ones_like(mask)):  # padded batch, and no padding at all (no mask)
            kw = dict(input_ids=ids, attention_mask=m, token_type_ids=torch.zeros_like(ids))
            got = ours(**kw).last_hidden_state
            assert torch.equal(got, ref(**kw).last_hidden_state)
            torch.testing.assert_close(got, eager(**kw).last_hidden_state, rtol=1e-5, atol=1e-5)


def test_text_path_does_not_import_transformers_or_dynamo() -> None:
    """A query embedding needs neither (they cost seconds per one-shot search)."""
    code = (
        "import sys\n"
        "from vidsearch.models import create_text_encoder\n"
        "m = create_text_encoder('internvideo2-demo')\n"
        "m.encode_text(['a red circle'])\n"
        "bad = [k for k in ('transformers', 'torch._dynamo', 'torch._inductor') if k in sys.modules]\n"
        "print('loaded:', bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_text_ignores_padding(tiny) -> None:
    """The [CLS] feature must not depend on pad positions (mask works)."""
    tok = tiny.tokenizer(["a dog runs"])
    ids2 = tok.input_ids.clone()
    ids2[0, 10:] = 7  # garbage where the mask is 0
    with torch.no_grad():
        a = tiny.text_encoder(input_ids=tok.input_ids, attention_mask=tok.attention_mask).last_hidden_state[:, 0]
        b = tiny.text_encoder(input_ids=ids2, attention_mask=tok.attention_mask).last_hidden_state[:, 0]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_itm_scores(tiny) -> None:
    fr = _frames(5, b=2)
    texts = ["a dog", "a cat in the snow", "man"]
    s = tiny.itm_score(fr, texts)
    assert s.shape == (2, 3) and torch.isfinite(s).all()
    p = tiny.itm_score(np.concatenate([fr, fr[:1]]), texts, pairwise=True)
    assert p.shape == (3,)
    torch.testing.assert_close(p, torch.stack([s[0, 0], s[1, 1], s[0, 2]]), rtol=1e-5, atol=1e-6)
    # the score must come from the fusion of BOTH inputs
    assert s[0].std() > 0 and s[:, 0].std() > 0
    with pytest.raises(RuntimeError, match="with_itm=True"):
        create_model("internvideo2-tiny").itm_score(fr, texts)


# --------------------------------------------------------------------------- pos embed
def test_temporal_interpolation_2_to_4_by_hand() -> None:
    # grid 1x1, D=2: rows [cls, t0, t1]. linear, align_corners=False, 2 -> 4: source coordinate
    # (i + 0.5) * 2/4 - 0.5 = -0.25, 0.25, 0.75, 1.25 -> clamped weights below.
    pe = torch.tensor([[[9.0, -9.0], [0.0, 10.0], [4.0, 20.0]]])
    out = resample_pos_embed(pe, num_frames=4, grid_size=1)
    expected = torch.tensor([[[9.0, -9.0], [0.0, 10.0], [1.0, 12.5], [3.0, 17.5], [4.0, 20.0]]])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_temporal_interpolation_4_to_8_weights() -> None:
    torch.manual_seed(0)
    g, D = 2, 3
    pe = torch.randn(1, 1 + 4 * g * g, D)
    out = resample_pos_embed(pe, num_frames=8, grid_size=g)
    assert out.shape == (1, 1 + 8 * g * g, D)
    torch.testing.assert_close(out[:, 0], pe[:, 0], rtol=0, atol=0)  # cls row preserved
    W = torch.tensor(
        [
            [1.0, 0, 0, 0],
            [0.75, 0.25, 0, 0],
            [0.25, 0.75, 0, 0],
            [0, 0.75, 0.25, 0],
            [0, 0.25, 0.75, 0],
            [0, 0, 0.75, 0.25],
            [0, 0, 0.25, 0.75],
            [0, 0, 0, 1.0],
        ]
    )  # (T_new, T_old)
    old = pe[0, 1:].view(4, g * g, D)
    expected = torch.einsum("nt,tpd->npd", W, old).reshape(8 * g * g, D)
    torch.testing.assert_close(out[0, 1:], expected, rtol=0, atol=1e-6)


def test_spatial_interpolation_only_when_grid_changes() -> None:
    pe = torch.from_numpy(get_3d_sincos_pos_embed(16, 4, 2)).float()[None]
    assert resample_pos_embed(pe, 2, 4) is pe
    out = resample_pos_embed(pe, 2, 6, src_num_frames=2)
    assert out.shape == (1, 1 + 2 * 36, 16)
    torch.testing.assert_close(out[:, 0], pe[:, 0])


def test_sincos_layout() -> None:
    pe = get_3d_sincos_pos_embed(32, 3, 2)  # D/4 = 8 temporal dims, 24 spatial (12 from w, 12 from h)
    assert pe.shape == (1 + 2 * 9, 32)
    assert np.all(pe[0] == 0)
    rows = pe[1:].reshape(2, 3, 3, 32)  # (t, h, w, D)
    assert np.allclose(rows[0, :, :, :8], rows[0, 0, 0, :8])  # temporal part constant within a frame
    assert not np.allclose(rows[0, ..., :8], rows[1, ..., :8])  # ... and differs between frames
    assert np.allclose(rows[:, :, 1, 8:20], rows[:, :1, 1, 8:20])  # first spatial half: w only
    assert not np.allclose(rows[:, :, 0, 8:20], rows[:, :, 1, 8:20])
    assert np.allclose(rows[:, 1, :, 20:], rows[:, 1, :1, 20:])  # second half: h only
    np.testing.assert_allclose(rows[0, 0, 1, 8], np.sin(1.0))  # w=1, omega_0 = 1


# --------------------------------------------------------------------------- golden regression
def _golden_outputs(model) -> dict[str, torch.Tensor]:
    fr = _frames(1234, b=2, h=48, w=64)
    x = model.preprocess(fr)
    return {
        "frames": torch.from_numpy(fr),
        "x_vis": model.forward_features(x),
        "video": model.encode_video(fr),
        "text": model.encode_text(GOLDEN_TEXTS),
        "itm": model.itm_score(fr, GOLDEN_TEXTS),
    }


def test_golden_regression(tiny) -> None:
    """open_clip-style exact regression; regenerate with VIDSEARCH_REGEN_GOLDEN=1 when a change of
    numerics is intended (and say why in the commit)."""
    from safetensors.torch import load_file, save_file

    with torch.inference_mode():
        got = _golden_outputs(tiny)
    if os.environ.get("VIDSEARCH_REGEN_GOLDEN") == "1":
        save_file({k: v.contiguous() for k, v in got.items()}, str(GOLDEN))
    ref = load_file(str(GOLDEN))
    assert torch.equal(ref["frames"], got["frames"]), "seeded input changed: torch RNG differs"
    for k in ("x_vis", "video", "text", "itm"):
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=2e-5, msg=f"golden {k} differs")


def test_bf16_path_close_to_fp32_on_cpu() -> None:
    """Covers the reduced-precision branches (fused rms_norm, addcmul LayerScale) without a GPU."""
    m = create_model("internvideo2-tiny", vision_only=True)
    x = m.preprocess(_frames(6))
    e32 = m.encode_video_preprocessed(x)
    m.to(torch.bfloat16)
    e16 = m.encode_video_preprocessed(x)
    assert e16.dtype == torch.float32
    cos = F.cosine_similarity(e32, e16, dim=-1)
    assert cos.min() > 0.995, cos
