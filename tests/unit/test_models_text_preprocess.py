"""Tokenizer layout (official: no [SEP]) and frame sampling / pixel preprocessing."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from vidsearch.models import (
    PreprocessCfg,
    TextTokenizer,
    middle_indices,
    preprocess_frames,
    sample_frame_indices,
    uniform_indices,
)
from vidsearch.models.hub import ASSETS_DIR

TINY_VOCAB = ASSETS_DIR / "tiny_vocab.txt"
# The official demo video, shipped with the tests (tests/data/README.md: source, licence).
DEMO_VIDEO = Path(__file__).resolve().parents[1] / "data" / "internvideo2_demo_example1.mp4"


# --------------------------------------------------------------------------- tokenizer
@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer(TINY_VOCAB, context_length=40)


def _vocab(tok: TextTokenizer) -> list[str]:
    return TINY_VOCAB.read_text().splitlines()


def test_cls_first_no_sep_padding_and_mask(tok) -> None:
    b = tok(["A playful dog", "snow"])
    v = _vocab(tok)
    assert b.input_ids.shape == (2, 40) and b.attention_mask.shape == (2, 40)
    assert b.input_ids.dtype == torch.long
    ids = b.input_ids[0].tolist()
    assert [v[i] for i in ids[:4]] == ["[CLS]", "a", "playful", "dog"]
    assert ids[4:] == [v.index("[PAD]")] * 36
    assert v.index("[SEP]") not in b.input_ids.tolist()[0] + b.input_ids.tolist()[1]
    assert b.attention_mask[0].tolist() == [1] * 4 + [0] * 36
    assert b.attention_mask[1].tolist() == [1] * 2 + [0] * 38


def test_lowercasing_and_wordpieces(tok) -> None:
    v = _vocab(tok)
    ids = tok(["DOGS Running"]).input_ids[0, :5].tolist()
    assert [v[i] for i in ids] == ["[CLS]", "dog", "##s", "running", "[PAD]"]
    assert tok.tokenize("Snowy YARD!") == ["snowy", "yard", "!"]


def test_truncation_keeps_39_wordpieces(tok) -> None:
    v = _vocab(tok)
    words = " ".join(["dog", "cat"] * 30)  # 60 word pieces
    b = tok([words])
    ids = b.input_ids[0].tolist()
    assert len(ids) == 40 and v[ids[0]] == "[CLS]"
    assert [v[i] for i in ids[1:]] == (["dog", "cat"] * 20)[:39]
    assert b.attention_mask.sum().item() == 40
    assert v.index("[SEP]") not in ids and v.index("[PAD]") not in ids


def test_empty_text_and_unknown_words(tok) -> None:
    v = _vocab(tok)
    b = tok(["", "\u72d7 xylophone"])  # a CJK character is not in the vocabulary
    assert b.attention_mask[0].sum().item() == 1  # [CLS] only
    row = [v[i] for i in b.input_ids[1].tolist() if i != v.index("[PAD]")]
    assert row[:3] == ["[CLS]", "[UNK]", "x"] and row[3:] == ["##y", "##l", "##o", "##p", "##h", "##o", "##n", "##e"]
    with pytest.raises(TypeError):
        tok("a single string")


def test_vocab_in_tmp_path_and_missing_special_tokens(tmp_path) -> None:
    f = tmp_path / "vocab.txt"
    f.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s"]) + "\n")
    t = TextTokenizer(f, context_length=6)
    b = t(["Hello WORLDS hello hello"])
    assert b.input_ids[0].tolist() == [2, 5, 6, 7, 5, 5]  # [CLS] hello world ##s hello hello (5 pieces)
    assert t.vocab_size == 8
    g = tmp_path / "bad.txt"
    g.write_text("\n".join(["[PAD]", "[UNK]", "hello"]) + "\n")
    with pytest.raises(ValueError, match=r"\[CLS\]"):
        TextTokenizer(g)


# Texts that exercise every normalisation step: case, accents, CJK, control characters, special
# tokens written in the text, words longer than WordPiece's 100-character limit, emoji.
TRICKY_TEXTS = [
    "a dog",
    "A playful dog and its owner wrestle in the snowy yard.",
    "",
    "\u00dcn\u00efc\u00f6d\u00e9 caf\u00e9 na\u00efve",
    "\u4e2d\u6587 \u5b57\u7b26 test",
    "[CLS] x [SEP] [MASK] [mask] [PAD]",
    "tab\there\r\nnew\x00ctl\u200b",
    "a" * 150,
    "red,circle!!moving-left?",
    "  lots   of   space  ",
    "emoji \U0001f600 ok",
    "\ufb01 ligature \u216b",
]


@pytest.mark.parametrize("vocab", ["tiny_vocab.txt", "demo_vocab.txt", "tmp"])
def test_tokenizer_ids_equal_transformers_bert_tokenizer(tmp_path, vocab) -> None:
    """The tokenizers pipeline gives BertTokenizer's ids (which the checkpoints were trained with)."""
    transformers = pytest.importorskip("transformers")
    if vocab == "tmp":  # accents and CJK pieces, a blank line and a duplicate line
        path = tmp_path / "vocab.txt"
        path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cafe", "naive", "\u4e2d",
                                    "##s", "", "a", "dog", "cafe", "##ve", "na", "x", "\u00e9"]) + "\n",
                        encoding="utf-8")
    else:
        path = ASSETS_DIR / vocab
    ours = TextTokenizer(path, context_length=40)
    ref = transformers.BertTokenizer(vocab=str(path), do_lower_case=True)
    for text in TRICKY_TEXTS:
        got = ours(["x", text]).input_ids[1]
        want = [ours.cls_id, *ref(text, add_special_tokens=False)["input_ids"][:39]]
        assert got[: len(want)].tolist() == want, text
        assert (got[len(want):] == ours.pad_id).all(), text
        assert ours.tokenize(text) == ref.tokenize(text), text


# --------------------------------------------------------------------------- sampling
def test_uniform_sampling() -> None:
    assert uniform_indices(0, 40, 4).indices == (0, 10, 20, 30)  # demo: frames[::10][:4]
    assert uniform_indices(0, 43, 4).indices == (0, 10, 20, 30)
    assert uniform_indices(100, 108, 4).indices == (100, 102, 104, 106)
    s = uniform_indices(5, 7, 4)
    assert s.padded and s.indices == (5, 5, 6, 6)
    assert not uniform_indices(0, 4, 4).padded
    with pytest.raises(ValueError):
        uniform_indices(5, 5, 4)


def test_middle_sampling() -> None:
    assert middle_indices(0, 40, 4).indices == (4, 14, 24, 34)
    assert middle_indices(10, 50, 4).indices == (14, 24, 34, 44)
    # official get_frame_indices: linspace(0, 10, 5).astype(int) = 0,2,5,7,10 -> (0+1)//2 ...
    assert middle_indices(0, 10, 4).indices == (0, 3, 5, 8)
    s = middle_indices(0, 2, 4)
    assert s.padded and s.indices == (0, 1, 1, 1)
    assert sample_frame_indices(0, 40, 4, "middle") == middle_indices(0, 40, 4)
    with pytest.raises(ValueError):
        sample_frame_indices(0, 40, 4, "random")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- pixels
def test_preprocess_constant_image_and_layout() -> None:
    cfg = PreprocessCfg(num_frames=2, img_size=8)
    fr = np.zeros((2, 5, 7, 3), dtype=np.uint8)
    fr[..., 0], fr[..., 1], fr[..., 2] = 255, 128, 0
    x = preprocess_frames(fr, cfg)
    assert x.shape == (1, 2, 3, 8, 8) and x.dtype == torch.float32
    expected = [(1 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (0 - 0.406) / 0.225]
    for c in range(3):
        torch.testing.assert_close(x[0, :, c], torch.full((2, 8, 8), expected[c]), rtol=0, atol=1e-6)


def test_preprocess_bilinear_matches_half_pixel_formula() -> None:
    # 2x downscale with align_corners=False and no antialias samples between pixel pairs:
    # out[i] = (in[2i] + in[2i+1]) / 2 -> then rounded to uint8 levels like cv2.
    row = np.array([0, 10, 20, 31, 40, 50, 60, 70], dtype=np.uint8)
    fr = np.broadcast_to(row[None, :, None], (8, 8, 3)).copy()[None]  # (1, 8, 8, 3)
    x = preprocess_frames(fr, PreprocessCfg(num_frames=1, img_size=4))
    levels = x[0, 0, 0, 0].double() * 0.229 + 0.485
    np.testing.assert_allclose((levels * 255).numpy(), [5, 26, 45, 65], atol=1e-3)  # 25.5 -> 26 (round half even: 26)


def _decode(path: Path) -> np.ndarray:
    try:
        import decord

        vr = decord.VideoReader(str(path))
        return vr.get_batch(list(range(len(vr)))).asnumpy()
    except ImportError:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
        raw = subprocess.run(
            [exe, "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
            capture_output=True,
            check=True,
        ).stdout
        return np.frombuffer(raw, np.uint8).reshape(-1, 480, 640, 3)


def test_demo_video_preprocessing_matches_facts_sheet() -> None:
    frames = _decode(DEMO_VIDEO)
    assert frames.shape == (40, 480, 640, 3)
    s = sample_frame_indices(0, len(frames), 4, "uniform")
    assert s.indices == (0, 10, 20, 30) and not s.padded
    x = preprocess_frames(frames[list(s.indices)], PreprocessCfg())
    assert x.shape == (1, 4, 3, 224, 224) and x.dtype == torch.float32
    # Facts §4.1 (cv2 decode, BGR->RGB, INTER_LINEAR). decord/ffmpeg's YUV->RGB conversion differs
    # slightly from OpenCV's: measured here |d mean| = 1.2e-3, |d std| = 1.4e-4, per-frame means
    # within 1.4e-3, per-channel means within 1.3e-3 (~0.07 uint8 levels on average). The tolerance
    # 3e-3 (about 0.17 levels) allows decoder differences but catches any real mistake (BGR order,
    # antialias, wrong mean/std, crop instead of squash all move these by >= 1e-2).
    tol = 3e-3
    assert abs(x.mean().item() - -0.0397885) < tol
    assert abs(x.std().item() - 0.8963435) < tol
    for got, ref in zip(x.mean(dim=(0, 2, 3, 4)).tolist(), [0.122682, 0.158420, -0.123894, -0.316362], strict=True):
        assert abs(got - ref) < tol
    for got, ref in zip(x.mean(dim=(0, 1, 3, 4)).tolist(), [-0.415751, -0.109034, 0.405420], strict=True):
        assert abs(got - ref) < tol
    # antialiased resize would be a visible change (what the facts sheet warns about)
    xa = torch.nn.functional.interpolate(
        torch.from_numpy(frames[[0, 10, 20, 30]]).permute(0, 3, 1, 2).float(),
        size=(224, 224),
        mode="bilinear",
        antialias=True,
    )
    assert (
        xa.round() / 255
        - (x[0] * torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) + torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1))
    ).abs().max() > 0.05
