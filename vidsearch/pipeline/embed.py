"""Embed stage: batches of sampled clips -> L2-normalised embeddings.

:class:`Embedder` is a plain class (setup / process / close); Ray's embed actors wrap it, the
local runner calls it in-process. On CUDA the model runs in bf16 and the embeddings come back as
float32; without a GPU it runs in float32 on the CPU.

Out of memory (RELIABILITY.md F4): a ``torch.cuda.OutOfMemoryError`` (or an allocator
``RuntimeError`` saying "out of memory") halves the forward batch and retries the same clips; the
smaller size is kept for later calls (the next batch would not fit either). A clip that does not
fit even alone gets a NaN row, and the runner fails its video with ``EmbedOOM``; the other clips
of the batch are embedded. Test hook: ``VIDSEARCH_TEST_EMBED_FAULT`` (:mod:`.faults`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import numpy as np

from vidsearch.pipeline.faults import EmbedFaults
from vidsearch.schemas.manifest import ModelInfo

_logger = logging.getLogger(__name__)


class Embedder:
    """Holds the model; ``process(frames)`` embeds uint8 clips (N, T, S, S, 3)."""

    def __init__(self, model_name: str, checkpoint: str | None = None, device: str | None = None,
                 tokenizer: str | None = None, batch_size: int = 32, dtype: str | None = None,
                 pretrained: bool = True, fault: str | None = None) -> None:
        self.model_name, self.checkpoint, self.tokenizer = model_name, checkpoint, tokenizer
        self.pretrained = pretrained  # False: random-init architecture (benchmarks only)
        self.device_arg, self.dtype_arg = device, dtype
        self.batch_size = max(1, batch_size)  # forward batch; halved on out-of-memory
        self.model: Any = None
        self.calls = 0  # number of process() calls; tests count re-embeds with it
        self.oom_splits = 0  # times an out-of-memory error halved the forward batch
        self.faults = EmbedFaults(fault)

    def setup(self) -> None:
        """Load the model on the GPU when there is one (bf16), else on the CPU (float32)."""
        import torch

        from vidsearch.models import create_model

        device = self.device_arg or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.dtype_arg:
            dtype = getattr(torch, self.dtype_arg)
        else:
            dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        factory_log = logging.getLogger("vidsearch.models.factory")
        quiet = _NoTestModelNotice()
        factory_log.addFilter(quiet)
        try:
            self.model = create_model(self.model_name, checkpoint=self.checkpoint, device=device,
                                      tokenizer=self.tokenizer, dtype=dtype, vision_only=True,
                                      pretrained=self.pretrained)
        finally:
            factory_log.removeFilter(quiet)
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
            float32 (N, D), L2-normalised; row i belongs to clip i. A row is NaN when that clip
            does not fit in memory even alone (the runner fails its video with ``EmbedOOM``).

        Failure branches: out of memory -> the forward batch is halved and the same clips are
        retried; at one clip -> a NaN row. Any other error propagates.
        """
        import torch

        self.calls += 1
        self.faults.before_call(len(frames))
        out = np.empty((len(frames), self.model.embed_dim), np.float32)
        i = 0
        while i < len(frames):
            batch = frames[i:i + self.batch_size]
            try:
                self.faults.before_forward(len(batch))
                emb = self.model.encode_video(batch)
            except RuntimeError as e:  # torch.cuda.OutOfMemoryError is a RuntimeError
                if not _is_cuda_oom(e):
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if len(batch) == 1:
                    _logger.error("out of memory embedding one clip alone: EmbedOOM for its video")
                    out[i] = np.nan
                    i += 1
                    continue
                self.batch_size = max(1, len(batch) // 2)
                self.oom_splits += 1
                _logger.warning("out of memory: embed batch size now %d (%s)", self.batch_size,
                                str(e).splitlines()[0][:120])
                continue
            out[i:i + len(batch)] = emb.float().cpu().numpy()
            i += len(batch)
        return out

    def process_parts(self, parts: list[np.ndarray]) -> list[np.ndarray]:
        """:meth:`process` over several frame arrays (the chunks of one embed call) as one
        batch; returns their embeddings split back, one array per part."""
        emb = self.process(np.concatenate(parts))
        return list(np.split(emb, np.cumsum([len(p) for p in parts])[:-1]))

    def close(self) -> None:
        self.model = None


class _NoTestModelNotice(logging.Filter):
    """Drops the model factory's "TEST MODEL" warning while the embedder loads one: the ingest
    driver says it once for the run, before anything starts (in-process embedders would repeat it,
    Ray actors' logs are not shown)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "TEST MODEL" not in record.getMessage()


def _is_cuda_oom(e: BaseException) -> bool:
    """The GPU ran out of memory: ``torch.cuda.OutOfMemoryError``, or the "out of memory"
    ``RuntimeError`` older torch versions raise (also what the test hook raises)."""
    import torch

    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x
