"""InternVideo2 stage-2 dual encoder (+ optional ITM re-ranker), open_clip-style surface.

Upstream: OpenGVLab/InternVideo ``InternVideo2/multi_modality/models/internvideo2_stage2.py``
(``encode_vision``, ``encode_text``, ``vision_proj``, ``text_proj``, ``itm_head``) and
``demo/utils.py`` (``get_vid_feat``/``get_txt_feat``: project then L2-normalise).

Submodule names follow the official checkpoint so that keys map with a short literal table
(``weights.py``): ``vision_encoder`` 1:1, ``text_encoder`` = ``text_encoder.bert`` minus the fusion
layers, ``text_fusion.layer.{j}`` = ``text_encoder.bert.encoder.layer.{fusion_layer + j}``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidsearch.files import sha256_file
from vidsearch.schemas.model_config import ModelCfg, PreprocessCfg

from .internvideo2 import VisionTransformer3D
from .preprocess import preprocess_frames
from .registry import compute_fingerprint
from .text import BertFusion, TextTokenizer, build_text_encoder

_logger = logging.getLogger(__name__)

__all__ = ["InternVideo2Model", "compute_fingerprint"]

def _init_linear(m: nn.Linear) -> nn.Linear:
    nn.init.trunc_normal_(m.weight, std=0.02)
    if m.bias is not None:
        nn.init.zeros_(m.bias)
    return m


class InternVideo2Model(nn.Module):
    """InternVideo2 stage-2: video and text embeddings in one space, ITM scores on demand.

    Build it with ``vidsearch.models.create_model``. Embeddings are float32 and L2-normalised.
    """

    def __init__(
        self,
        cfg: ModelCfg,
        *,
        with_vision: bool = True,
        with_text: bool = True,
        with_itm: bool = False,
        tokenizer: TextTokenizer | None = None,
    ) -> None:
        super().__init__()
        if with_itm and not (with_text and with_vision):
            raise ValueError("with_itm=True needs both towers (neither vision_only nor text_only)")
        if not (with_vision or with_text):
            raise ValueError("build at least one tower (with_vision or with_text)")
        enc = cfg.encoder
        v = enc.vision
        self.cfg = cfg
        self.name = cfg.name
        self.embed_dim = enc.embed_dim
        self.num_frames = v.num_frames
        self.preprocess_cfg: PreprocessCfg = cfg.preprocess
        self.is_test_model = cfg.is_test_model
        self.with_itm = with_itm
        self.tokenizer = tokenizer
        self.weights_id = f"seed:{enc.init_seed}"  # replaced by the factory when weights are loaded
        self.weights_source = "random init"
        self.with_vision = with_vision
        self.with_text = with_text

        # Each part draws from its own seeded stream, so e.g. the vision tower of a vision-only
        # build equals that of a full build (same fingerprint "seed:<n>" -> same embeddings).
        seed = enc.init_seed
        with torch.random.fork_rng(devices=[]):
            if with_vision:
                torch.manual_seed(seed)
                self.vision_encoder = VisionTransformer3D(**asdict(v))
                self.vision_proj = _init_linear(nn.Linear(v.clip_embed_dim, enc.embed_dim))
            if with_text:
                torch.manual_seed(seed + 1)
                self.text_encoder = build_text_encoder(enc.text)
                self.text_proj = _init_linear(nn.Linear(enc.text.hidden_size, enc.embed_dim))
            if with_itm:
                torch.manual_seed(seed + 2)
                width = v.embed_dim
                if enc.itm_vision_width is not None:
                    # 6B: x_vis -> Linear(d_model -> 768) -> LayerNorm before the cross-attention.
                    # UNCERTAIN: official key names assumed to be av_concat_vision_proj.{0,1}.*
                    # (an nn.Sequential); the facts sheet does not list them.
                    self.av_concat_vision_proj = nn.Sequential(
                        _init_linear(nn.Linear(v.embed_dim, enc.itm_vision_width)), nn.LayerNorm(enc.itm_vision_width)
                    )
                    width = enc.itm_vision_width
                self.text_fusion = BertFusion(enc.text, encoder_width=width)
                self.itm_head = _init_linear(nn.Linear(enc.text.hidden_size, 2))
        self.eval()

    # ----------------------------------------------------------------- identity
    @property
    def fingerprint(self) -> str:
        """Hash of (name, resolved architecture, preprocessing, weights sha256 or init seed)."""
        return compute_fingerprint(self.cfg, self.weights_id)

    def describe(self) -> dict[str, Any]:
        """JSON-able summary stored next to embeddings."""
        tok = None
        if self.tokenizer is not None:
            tok = {
                "vocab_file": str(self.tokenizer.vocab_file),
                "vocab_sha256": sha256_file(self.tokenizer.vocab_file),
                "context_length": self.tokenizer.context_length,
            }
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "embed_dim": self.embed_dim,
            "num_frames": self.num_frames,
            "preprocess": asdict(self.preprocess_cfg),
            "weights": {"id": self.weights_id, "source": self.weights_source},
            "tokenizer": tok,
            "is_test_model": self.is_test_model,
            "description": self.cfg.description,
            "gelu_approx": self.cfg.encoder.vision.gelu_approx,
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    @property
    def test_model_warning(self) -> str | None:
        """One line for ingest/search warnings when this is a random-weight test model, else None."""
        if not self.is_test_model:
            return None
        return (
            f"{self.name} is a TEST MODEL with random weights: its results mean nothing; use a real model "
            "(vidsearch weights list) for search"
        )

    def _proj(self) -> nn.Linear:
        return self.vision_proj if self.with_vision else self.text_proj

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self._proj().weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the parameters."""
        return self._proj().weight.dtype

    # ------------------------------------------------------------------ vision
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Vision tokens ``x_vis`` after the last block.

        Args:
            x: normalised frames (B, T, 3, H, W), the demo/eval layout.

        Returns:
            (B, 1 + T*g*g, D) in the model dtype.
        """
        if not self.with_vision:
            raise RuntimeError(f"model {self.name} was built without the vision tower (text_only=True)")
        if x.ndim != 5 or x.shape[2] != 3:
            raise ValueError(f"expected (B, T, 3, H, W), got {tuple(x.shape)}")
        x = x.permute(0, 2, 1, 3, 4)  # (B, 3, T, H, W) as encode_vision does
        return self.vision_encoder.forward_features(x)

    def _video_embed(self, x_vis: torch.Tensor, normalize: bool) -> torch.Tensor:
        pooled = self.vision_encoder.forward_head(x_vis)  # (B, clip_embed_dim)
        emb = self.vision_proj(pooled).float()  # (B, embed_dim)
        return F.normalize(emb, dim=-1) if normalize else emb

    def encode_video_preprocessed(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Embed already-normalised frames (B, T, 3, H, W) (see ``preprocess_frames``).

        Returns:
            float32 (B, embed_dim) on the model device, L2-normalised unless ``normalize=False``.
        """
        with torch.inference_mode():
            x = x.to(self.device, self.dtype, non_blocking=True)
            return self._video_embed(self.forward_features(x), normalize)

    def preprocess(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 RGB (B, T, H, W, 3) already sampled to T frames -> (B, T, 3, S, S) float32."""
        shape = tuple(frames.shape)
        if len(shape) != 5 or shape[1] != self.num_frames:
            raise ValueError(
                f"frames must be uint8 (B, {self.num_frames}, H, W, 3) already sampled to "
                f"{self.num_frames} frames, got {shape}"
            )
        return preprocess_frames(frames, self.preprocess_cfg, device=self.device)

    def encode_video(self, frames: np.ndarray | torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Embed uint8 RGB clips (B, T, H, W, 3) already sampled to ``num_frames`` frames.

        Resize and normalisation follow ``preprocess_cfg``. Returns float32 (B, embed_dim) on the
        model device, L2-normalised.
        """
        with torch.inference_mode():
            return self.encode_video_preprocessed(self.preprocess(frames), normalize)

    # -------------------------------------------------------------------- text
    def _require_text(self) -> TextTokenizer:
        if not self.with_text or self.tokenizer is None:
            raise RuntimeError(f"model {self.name} was built without the text tower (vision_only=True)")
        return self.tokenizer

    def _text_hidden(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self._require_text()(texts).to(self.device)
        out = self.text_encoder(
            input_ids=tok.input_ids,
            attention_mask=tok.attention_mask,
            token_type_ids=torch.zeros_like(tok.input_ids),
        )
        return out.last_hidden_state, tok.attention_mask  # (B, L, h), (B, L)

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        """Embed texts: [CLS] of BERT layer fusion_layer-1 -> text_proj -> L2 normalise.

        Returns:
            float32 (len(texts), embed_dim) on the model device.
        """
        with torch.inference_mode():
            hidden, _ = self._text_hidden(texts)
            emb = self.text_proj(hidden[:, 0]).float()  # (B, embed_dim)
            return F.normalize(emb, dim=-1) if normalize else emb

    # --------------------------------------------------------------------- ITM
    def itm_score(
        self, frames: np.ndarray | torch.Tensor, texts: Sequence[str], pairwise: bool = False
    ) -> torch.Tensor:
        """ITM match logits (``itm_head(...)[:, 1]``, the official re-ranking score).

        Args:
            frames: uint8 RGB (B_v, T, H, W, 3) already sampled.
            texts: B_t texts.
            pairwise: False -> score every video against every text, (B_v, B_t). True -> score
                video i with text i, (B,); needs B_v == B_t.

        Returns:
            float32 scores (higher = better match); not probabilities.
        """
        if not self.with_itm:
            raise RuntimeError("build the model with create_model(..., with_itm=True) to get ITM scores")
        with torch.inference_mode():
            x_vis = self.forward_features(self.preprocess(frames).to(self.dtype))  # (B_v, N, D)
            if hasattr(self, "av_concat_vision_proj"):
                x_vis = self.av_concat_vision_proj(x_vis)  # (B_v, N, 768), 6B only
            hidden, mask = self._text_hidden(texts)  # (B_t, L, h), (B_t, L)
            n_v, n_t = x_vis.shape[0], hidden.shape[0]
            if pairwise:
                if n_v != n_t:
                    raise ValueError(f"pairwise=True needs as many videos as texts, got {n_v} and {n_t}")
                vis, hid, msk = x_vis, hidden, mask
            else:
                vis = x_vis.repeat_interleave(n_t, dim=0)  # (B_v*B_t, N, D): video-major
                hid = hidden.repeat(n_v, 1, 1)  # (B_v*B_t, L, h)
                msk = mask.repeat(n_v, 1)  # (B_v*B_t, L)
            fused = self.text_fusion(hid, msk, vis)  # (P, L, h)
            score = self.itm_head(fused[:, 0]).float()[:, 1]  # (P,)
            return score if pairwise else score.view(n_v, n_t)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Same as ``encode_video_preprocessed`` without inference mode (for tracing)."""
        return self._video_embed(self.forward_features(frames), True)
