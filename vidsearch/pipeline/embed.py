"""Embed stage: batches of sampled clips -> L2-normalised embeddings.

:class:`Embedder` is a plain class (setup / process / close); Ray's embed actors wrap it, the
local runner calls it in-process. On CUDA the model runs in bf16 and the embeddings come back as
float32; without a GPU it runs in float32 on the CPU. A CUDA out-of-memory error halves the batch
and retries (RELIABILITY.md F4); a single clip that still does not fit raises ``EmbedOOM``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import numpy as np

from vidsearch.pipeline.types import VideoError
from vidsearch.schemas.manifest import ModelInfo

_logger = logging.getLogger(__name__)


class Embedder:
    """Holds the model; ``process(frames)`` embeds uint8 clips (N, T, S, S, 3)."""

    def __init__(self, model_name: str, checkpoint: str | None = None, device: str | None = None,
                 tokenizer: str | None = None, batch_size: int = 32, dtype: str | None = None,
                 pretrained: bool = True) -> None:
        self.model_name, self.checkpoint, self.tokenizer = model_name, checkpoint, tokenizer
        self.pretrained = pretrained  # False: random-init architecture (benchmarks only)
        self.device_arg, self.dtype_arg = device, dtype
        self.batch_size = max(1, batch_size)
        self.model: Any = None
        self.calls = 0  # number of process() calls; tests count re-embeds with it

    def setup(self) -> None:
        """Load the model on the GPU when there is one (bf16), else on the CPU (float32)."""
        import torch

        from vidsearch.models import create_model

        device = self.device_arg or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.dtype_arg:
            dtype = getattr(torch, self.dtype_arg)
        else:
            dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        self.model = create_model(self.model_name, checkpoint=self.checkpoint, device=device,
                                  tokenizer=self.tokenizer, dtype=dtype, vision_only=True,
                                  pretrained=self.pretrained)
        _logger.info("embedder: %s on %s (%s)", self.model_name, device, dtype)

    def info(self) -> ModelInfo:
        """The library's embedding space: name, fingerprint, dim, frames, preprocessing."""
        m = self.model
        return ModelInfo(name=m.name, fingerprint=m.fingerprint, embed_dim=m.embed_dim,
                         num_frames=m.num_frames, preprocess=_jsonable(asdict(m.preprocess_cfg)),
                         is_test_model=bool(m.is_test_model))

    def preprocess_cfg(self) -> Any:
        return self.model.preprocess_cfg

    def process(self, frames: np.ndarray) -> np.ndarray:
        """Embed clips.

        Args:
            frames: uint8 (N, T, S, S, 3), frames already sampled and resized by the decoder.

        Returns:
            float32 (N, D), L2-normalised; row i belongs to clip i.

        Failure branches: CUDA OOM -> the batch is split and retried; one clip still OOM ->
        ``VideoError(EmbedOOM)`` (the runner fails the videos of that batch).
        """
        import torch

        self.calls += 1
        out: list[np.ndarray] = []
        bs = self.batch_size
        i = 0
        while i < len(frames):
            batch = frames[i:i + bs]
            try:
                emb = self.model.encode_video(batch)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                if bs == 1:
                    raise VideoError("EmbedOOM", "embed", "one clip does not fit in GPU memory") from None
                bs = max(1, bs // 2)
                _logger.warning("CUDA out of memory: embed batch size now %d", bs)
                continue
            out.append(emb.float().cpu().numpy())
            i += len(batch)
        dim = self.model.embed_dim
        return np.concatenate(out) if out else np.zeros((0, dim), np.float32)

    def close(self) -> None:
        self.model = None


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x
