"""The demo model ``internvideo2-demo``: its config, vocabulary, weights files and loading.

The demo model is the InternVideo2 architecture of :mod:`vidsearch.models` at tiny widths and
depths (a 4-block ViT at 96 px with 12 px patches, a 3-layer BERT over a WordPiece vocabulary made
for the demo captions), trained from scratch on the generated world by
``python -m vidsearch.demo.train``. It is NOT InternVideo2: it knows coloured shapes and nothing
else. Every file it needs ships in ``vidsearch/models/assets`` and is written by the training
command: the vocabulary, the safetensors weights, the held-out evaluation and the registry config
``vidsearch/models/configs/internvideo2-demo.json`` (which carries the weights' SHA-256; the
model factory verifies it at load).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from vidsearch.demo.captions import training_words

_logger = logging.getLogger(__name__)

__all__ = [
    "DEMO_MODEL",
    "ASSETS_DIR",
    "CONFIGS_DIR",
    "VOCAB_NAME",
    "WEIGHTS_NAME",
    "EVAL_NAME",
    "build_vocab",
    "demo_config",
    "weights_path",
    "load_demo_model",
]

DEMO_MODEL = "internvideo2-demo"
_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
ASSETS_DIR = _MODELS_DIR / "assets"
CONFIGS_DIR = _MODELS_DIR / "configs"
VOCAB_NAME = "demo_vocab.txt"
WEIGHTS_NAME = f"{DEMO_MODEL}.safetensors"
EVAL_NAME = f"{DEMO_MODEL}.eval.json"

_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
_PUNCT = ",.'-!?:;()"


def build_vocab() -> list[str]:
    """The demo WordPiece vocabulary: specials, every training word, then character fallbacks.

    Whole words come from :func:`vidsearch.demo.captions.training_words`. Single characters and
    ``##`` continuation characters let any other word be tokenised into pieces instead of one
    ``[UNK]`` (as a real BERT vocabulary does); such pieces are rare in training, which is why the
    "unseen words" evaluation is near chance on the attribute they name.
    """
    vocab: list[str] = list(_SPECIALS)
    seen = set(vocab)
    for tok in [*training_words(), *_PUNCT, *_CHARS, *(f"##{c}" for c in _CHARS)]:
        if tok not in seen:
            vocab.append(tok)
            seen.add(tok)
    return vocab


def demo_config(vocab_size: int, weights_sha256: str | None) -> dict[str, Any]:
    """The registry JSON of ``internvideo2-demo`` (format of ``vidsearch/models/configs``)."""
    return {
        "name": DEMO_MODEL,
        "description": (
            "DEMO MODEL, not InternVideo2: the InternVideo2 architecture at tiny size, trained from "
            "scratch on the generated shapes world (python -m vidsearch.demo.train --seed 0). It finds "
            "coloured shapes and their motions in demo videos and nothing else."
        ),
        "is_test_model": False,
        "encoder": {
            "vision": {
                "img_size": 96, "patch_size": 12, "tubelet_size": 1, "num_frames": 4,
                "embed_dim": 128, "depth": 4, "num_heads": 4, "mlp_hidden_dim": 512,
                "qkv_bias": False, "qk_norm": True, "norm_eps": 1e-6, "init_values": 0.1,
                "sep_image_video_pos_embed": True,
                "pool_num_heads": 4, "pool_norm_eps": 1e-5, "clip_embed_dim": 128,
                "gelu_approx": False, "attn_impl": "sdpa",
            },
            "text": {
                "vocab_size": vocab_size, "hidden_size": 128, "num_hidden_layers": 3, "fusion_layer": 3,
                "num_attention_heads": 4, "intermediate_size": 512, "max_position_embeddings": 32,
                "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu", "context_length": 32,
                "tokenizer": f"builtin:{VOCAB_NAME}", "do_lower_case": True,
            },
            "embed_dim": 128,
            "itm_vision_width": None,
            "init_seed": 0,
        },
        "preprocess": {
            "num_frames": 4, "img_size": 96,
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
            "interpolation": "bilinear", "sampling": "uniform",
        },
        "pretrained": {
            "hf_hub_id": None,
            # "builtin:" = shipped in vidsearch/models/assets, like the tokenizer's builtin: vocab.
            "filename": f"builtin:{WEIGHTS_NAME}",
            "sha256": weights_sha256,
            "num_frames": 4,
            "layout": "vidsearch",
            "license": "Apache-2.0 (trained by vidsearch on generated data)",
            "url": "vidsearch/demo/train.py",
        },
    }


def weights_path() -> Path:
    """The shipped demo weights file."""
    return ASSETS_DIR / WEIGHTS_NAME


def load_demo_model(device: str | None = None) -> Any:
    """``create_model("internvideo2-demo")`` with the shipped weights (SHA-256 verified).

    The shipped file is passed explicitly as the checkpoint, so this works whether or not the
    model hub resolves ``builtin:`` weight entries by itself.
    """
    from vidsearch.models import create_model

    return create_model(DEMO_MODEL, checkpoint=str(weights_path()), device=device)


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` as indented JSON with a trailing newline (stable diffs)."""
    path.write_text(json.dumps(doc, indent=2) + "\n")
