"""Typed, frozen configuration objects of the InternVideo2 encoders.

The named variants live as JSON files in ``vidsearch/models/configs/``; they are parsed with
``json`` and validated into these dataclasses (never executed). Every field says what it controls
and what breaks when it is wrong. Facts and numbers come from ``shared/internvideo2_facts.md``
(sections in brackets).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "VisionCfg",
    "TextCfg",
    "EncoderCfg",
    "PreprocessCfg",
    "PretrainedCfg",
    "ModelCfg",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class VisionCfg:
    """Architecture of the InternVideo2 vision tower (``PretrainInternVideo2``, facts §1.1)."""

    # Input frame side in pixels; with patch_size it fixes the patch grid (224/14 = 16x16). A wrong
    # value changes the number of pos_embed rows and the checkpoint will not load.
    img_size: int = 224
    # Spatial patch side of the Conv3d patch embed (kernel = stride = (tubelet, p, p)).
    patch_size: int = 14
    # Temporal kernel of the Conv3d; 1 for every InternVideo2 stage-2 model (one token per frame patch).
    tubelet_size: int = 1
    # Frames per clip the model is built for; pos_embed has 1 + T*grid^2 rows. The stage-2 checkpoints
    # are 4-frame; other values interpolate pos_embed in time when loading (facts §1.3).
    num_frames: int = 4
    # Token width d_model (1408 for 1B, 3200 for 6B).
    embed_dim: int = 1408
    # Number of transformer blocks (40 for 1B, 48 for 6B).
    depth: int = 40
    # Attention heads; head_dim = embed_dim / num_heads (88 for 1B, 128 for 6B).
    num_heads: int = 16
    # Hidden width of the block MLP: int(1408 * 48/11) = 6144 for 1B, 12800 for 6B.
    mlp_hidden_dim: int = 6144
    # Bias on the fused qkv Linear; False in every official model (the checkpoint has no qkv.bias key).
    qkv_bias: bool = False
    # RMSNorm over the FULL width of q and k (all heads concatenated) before the head split.
    qk_norm: bool = True
    # eps of every RMSNorm (block norms and q/k norms); 1e-6 officially.
    norm_eps: float = 1e-6
    # LayerScale init value; only matters for random init (checkpoints carry the learned gamma).
    init_values: float = 1e-5
    # True: a separate img_pos_embed is used for single-frame inputs (1B). False: images use the
    # video pos_embed averaged over T (6B, which has no img_pos_embed key).
    sep_image_video_pos_embed: bool = True
    # Heads of the attention-pooling head clip_projector (16 for both 1B and 6B).
    pool_num_heads: int = 16
    # eps of the three LayerNorms of clip_projector (nn.LayerNorm default 1e-5 officially).
    pool_norm_eps: float = 1e-5
    # Output width of clip_projector (clip_embed_dim = 768); input width of vision_proj.
    clip_embed_dim: int = 768
    # MLP activation. False = exact erf GELU, what the official fp32 demo runs (facts §6). True = tanh
    # approximation, what flash-attn's FusedMLP ran in official training and evaluation.
    gelu_approx: bool = False
    # Attention kernel: "sdpa" (torch scaled_dot_product_attention; picks flash/mem-efficient/math)
    # or "flash" (the flash_attn package, imported lazily; used only for CUDA fp16/bf16 inputs,
    # other inputs fall back to SDPA). Both compute the same function: not in the fingerprint.
    attn_impl: Literal["sdpa", "flash"] = "sdpa"

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads or self.embed_dim % self.pool_num_heads:
            raise ValueError(
                f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads} "
                f"and pool_num_heads {self.pool_num_heads}"
            )
        if self.num_frames < 1 or self.num_frames % self.tubelet_size:
            raise ValueError(f"num_frames {self.num_frames} must be >= 1 and a multiple of tubelet_size")
        for name in ("embed_dim", "depth", "num_heads", "mlp_hidden_dim", "clip_embed_dim", "patch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"vision {name} must be >= 1")
        if self.attn_impl not in ("sdpa", "flash"):
            raise ValueError(f"attn_impl must be 'sdpa' or 'flash', got {self.attn_impl!r}")

    @property
    def grid_size(self) -> int:
        """Patches per side of a frame (16 at 224/14)."""
        return self.img_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Tokens per clip including cls: 1 + T/tubelet * grid^2 (1025 for 1B at 4 frames)."""
        return 1 + (self.num_frames // self.tubelet_size) * self.grid_size**2


@dataclass(frozen=True)
class TextCfg:
    """Architecture of the BERT-large text tower and its ITM fusion layers (facts §2)."""

    # WordPiece vocabulary size; must equal the tokenizer's vocab (30522 for bert-large-uncased).
    vocab_size: int = 30522
    # BERT hidden width (1024 for BERT-large).
    hidden_size: int = 1024
    # Total BERT layers in the checkpoint (24): layers [0, fusion_layer) are the text path, the rest
    # are the ITM fusion layers with cross-attention.
    num_hidden_layers: int = 24
    # First fusion layer (19): the text embedding is the [CLS] output of layer fusion_layer-1.
    fusion_layer: int = 19
    # Attention heads of every BERT layer.
    num_attention_heads: int = 16
    # FFN width of every BERT layer.
    intermediate_size: int = 4096
    # Rows of the position-embedding table (512); texts are much shorter (context_length).
    max_position_embeddings: int = 512
    # Rows of the token-type table; only type 0 is ever used (the official code passes none).
    type_vocab_size: int = 2
    # LayerNorm eps of BERT (1e-12); a wrong value shifts every text embedding slightly.
    layer_norm_eps: float = 1e-12
    # BERT activation; "gelu" is the exact erf GELU of config_bert_large.json.
    hidden_act: str = "gelu"
    # Tokens per text, [CLS] included (max_txt_l = 40 in the demo and eval configs).
    context_length: int = 40
    # Tokenizer source: an HF repo id holding vocab.txt, or "builtin:<file>" for a vocab shipped in
    # vidsearch/models/assets (test models only).
    tokenizer: str = "google-bert/bert-large-uncased"
    # Lower-case and strip accents before WordPiece (bert-large-uncased behaviour).
    do_lower_case: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.fusion_layer <= self.num_hidden_layers:
            raise ValueError(
                f"fusion_layer {self.fusion_layer} must be in [1, num_hidden_layers={self.num_hidden_layers}]"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("text hidden_size must be divisible by num_attention_heads")
        if not 2 <= self.context_length <= self.max_position_embeddings:
            raise ValueError(f"context_length must be in [2, {self.max_position_embeddings}]")


@dataclass(frozen=True)
class EncoderCfg:
    """The dual encoder: vision tower, text tower, projections and the optional ITM head."""

    # Vision tower hyper-parameters.
    vision: VisionCfg = field(default_factory=VisionCfg)
    # Text tower hyper-parameters.
    text: TextCfg = field(default_factory=TextCfg)
    # Joint embedding width: out dim of vision_proj and text_proj (512 for 1B, 768 for 6B). Wrong
    # value = checkpoint will not load; the library stores vectors of this width.
    embed_dim: int = 512
    # Width the ITM cross-attention reads. None: raw vision tokens (embed_dim of the vision tower,
    # 1B). An int: x_vis first goes through av_concat_vision_proj = Linear(d_model -> this) +
    # LayerNorm (6B, 768).
    itm_vision_width: int | None = None
    # Seed of the deterministic random init used when no weights are loaded.
    init_seed: int = 0

    def __post_init__(self) -> None:
        if self.embed_dim < 1:
            raise ValueError("embed_dim must be >= 1")


@dataclass(frozen=True)
class PreprocessCfg:
    """How sampled RGB frames become the model's input tensor (facts §4)."""

    # Frames sampled per clip; must equal the vision tower's num_frames.
    num_frames: int = 4
    # Output side of the square (squashed, not cropped) resize; must equal the vision img_size.
    img_size: int = 224
    # Per-channel RGB mean on the 0-1 scale (ImageNet); normalisation runs in float64 like the demo.
    mean: tuple[float, float, float] = IMAGENET_MEAN
    # Per-channel RGB std on the 0-1 scale (ImageNet).
    std: tuple[float, float, float] = IMAGENET_STD
    # Resize filter: "bilinear" = the demo's cv2 INTER_LINEAR (no antialias); "bicubic" = the official
    # eval's torchvision Resize(BICUBIC). Neither antialiases (see preprocess.py for why).
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    # Frame sampling: "uniform" = the demo's frames[::n//T][:T] from the clip start; "middle" = the
    # official eval's midpoints of T equal segments.
    sampling: Literal["uniform", "middle"] = "uniform"

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.img_size < 1:
            raise ValueError("num_frames and img_size must be >= 1")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {self.interpolation!r}")
        if self.sampling not in ("uniform", "middle"):
            raise ValueError(f"sampling must be 'uniform' or 'middle', got {self.sampling!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ValueError("mean and std must have 3 entries and std must be positive")


@dataclass(frozen=True)
class PretrainedCfg:
    """Where a variant's official weights live and what they are (timm ``PretrainedCfg``)."""

    # Hugging Face repo id of the checkpoint (gated repos need an accepted licence and a token).
    hf_hub_id: str | None = None
    # File name inside the repo.
    filename: str | None = None
    # Expected SHA-256 of that file; None when not known (then nothing is verified).
    sha256: str | None = None
    # Frames the checkpoint's pos_embed was trained with (4 for the stage-2 "f4" files).
    num_frames: int = 4
    # Source layout of the file, used in messages ("official_stage2").
    layout: str = "official_stage2"
    # Licence of the weights (what the model card says).
    license: str | None = None
    # Provenance URL (model card or paper).
    url: str | None = None


@dataclass(frozen=True)
class ModelCfg:
    """A named, fully resolved model variant: architecture + preprocessing + weights entry."""

    # Registry name, e.g. "internvideo2-s2-1b".
    name: str
    # Architecture.
    encoder: EncoderCfg
    # Input contract; stored with every embedding.
    preprocess: PreprocessCfg
    # Official weights; None for test models (random init from encoder.init_seed).
    pretrained: PretrainedCfg | None = None
    # Human description; test models say so loudly.
    description: str = ""
    # True for random-weight test models that must never be used for real search.
    is_test_model: bool = False
    # Text-to-clip cosine below which a hit is "no good match" (`vidsearch search --min-score`
    # default for text queries). Measured per model on data with a known answer (demo model:
    # bench/min_score.py); None where unmeasured: every hit is shown, however weak. Too high hides
    # right answers; too low shows weak best matches as if they were answers. Not in the fingerprint.
    min_score: float | None = None

    def __post_init__(self) -> None:
        if self.min_score is not None and not -1.0 <= self.min_score <= 1.0:
            raise ValueError(f"min_score is a cosine similarity in [-1, 1], got {self.min_score}")
        v, p = self.encoder.vision, self.preprocess
        if v.num_frames != p.num_frames or v.img_size != p.img_size:
            raise ValueError(
                f"preprocess (frames={p.num_frames}, img_size={p.img_size}) must match the vision tower "
                f"(frames={v.num_frames}, img_size={v.img_size})"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCfg:
        """Validate a parsed JSON dict into a ModelCfg; unknown keys raise ValueError."""
        return _from_dict(cls, d, path="")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        return dataclasses.asdict(self)


def _from_dict(cls: type, d: Any, path: str) -> Any:
    """Build dataclass ``cls`` from ``d`` recursively, checking keys and simple types."""
    if not isinstance(d, dict):
        raise ValueError(f"config {path or '<root>'}: expected an object, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"config {path or '<root>'}: unknown keys {unknown}")
    kwargs: dict[str, Any] = {}
    for key, value in d.items():
        kwargs[key] = _coerce(hints[key], value, f"{path}.{key}" if path else key)
    try:
        return cls(**kwargs)
    except TypeError as e:  # missing required fields
        raise ValueError(f"config {path or '<root>'}: {e}") from None


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        assert len(inner) == 1, f"unsupported union {tp}"
        return _coerce(inner[0], value, path)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, path)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"config {path}: {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ValueError(f"config {path}: expected a list of {len(args)} numbers")
        return tuple(_coerce(a, v, path) for a, v in zip(args, value, strict=True))
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config {path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config {path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config {path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"config {path}: expected a string, got {value!r}")
        return value
    raise AssertionError(f"unsupported config type {tp} at {path}")
