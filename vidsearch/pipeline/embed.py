"""Embed stage: batches of sampled clips -> L2-normalised embeddings.

:class:`Embedder` is a plain class (setup / process / close); Ray's embed actors wrap it, the
local runner calls it in-process. On CUDA the model runs in bf16 and the embeddings come back as
float32; without a GPU it runs in float32 on the CPU.

Out of memory (docs/RELIABILITY.md F4): a ``torch.cuda.OutOfMemoryError`` (or an allocator
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
                 pretrained: bool = True, fault: str | None = None, compile: str | None = "auto",
                 overrides: dict[str, Any] | None = None) -> None:
        self.model_name, self.checkpoint, self.tokenizer = model_name, checkpoint, tokenizer
        self.overrides = dict(overrides or {})  # preprocessing overrides (IngestOptions.model_overrides)
        self.pretrained = pretrained  # False: random-init architecture (benchmarks only)
        self.device_arg, self.dtype_arg = device, dtype
        self.batch_size = max(1, batch_size)  # forward batch; halved on out-of-memory
        self.model: Any = None
        self.calls = 0  # number of process() calls; tests count re-embeds with it
        self.oom_splits = 0  # times an out-of-memory error halved the forward batch
        self.faults = EmbedFaults(fault)
        # torch.compile of the encoder's blocks: "auto" (on CUDA), "off", or a torch.compile
        # backend name ("inductor", "eager", ...: tests use the cheap ones on the CPU).
        self.compile_mode = compile or "off"
        self.compiled = False  # the blocks run compiled (warm-up passed)

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
                                      pretrained=self.pretrained, **self.overrides)
        finally:
            factory_log.removeFilter(quiet)
        _logger.info("embedder: %s on %s (%s)", self.model_name, device, dtype)
        if self.compile_mode != "off" and (self.compile_mode != "auto" or str(device).startswith("cuda")):
            self._compile("inductor" if self.compile_mode == "auto" else self.compile_mode)

    def _compile(self, backend: str) -> None:
        """Compile the vision encoder's blocks (regional compilation, as ``bench/embed_throughput.py``:
        one graph shared by the identical blocks; the whole model hit an Inductor assertion with
        torch 2.11) and warm them up at the forward batch size, so the first real batch does not
        pay the compile. Inductor keeps its compiled kernels in its on-disk cache, so a second
        run (or a restarted actor) compiles in seconds. Any failure -> eager, one log line."""
        import time

        import torch

        blocks = list(getattr(getattr(self.model, "vision_encoder", None), "blocks", []) or [])
        if not blocks:
            _logger.warning("torch.compile skipped: %s has no vision_encoder.blocks", self.model_name)
            return
        t0 = time.monotonic()
        try:
            for blk in blocks:
                blk.compile(backend=backend, dynamic=False)
            pp = self.model.preprocess_cfg
            x = torch.zeros((self.batch_size, self.model.num_frames, pp.img_size, pp.img_size, 3), dtype=torch.uint8)
            self.model.encode_video(x)
        except Exception as e:  # noqa: BLE001 - a compiler failure must never stop ingest
            for blk in blocks:
                blk._compiled_call_impl = None  # back to the eager forward
            cause = e.__cause__ or getattr(e, "inner_exception", None)
            why = " ".join(str(x).strip().splitlines()[0] for x in (e, cause) if x is not None and str(x).strip())
            _logger.warning("torch.compile failed (%s: %s); embedding eagerly", type(e).__name__, why[:240])
            return
        self.compiled = True
        _logger.info("embedder: %d blocks compiled (%s) and warmed up in %.1f s", len(blocks), backend,
                     time.monotonic() - t0)

    def _forward(self, batch: Any) -> Any:
        """``encode_video`` of one forward batch; compiled blocks see a fixed batch size (the
        batch is padded to it: a new shape would compile again), eager ones any size."""
        n = len(batch)
        if not self.compiled or n == self.batch_size:
            return self.model.encode_video(batch)
        pad = self.batch_size - n
        if isinstance(batch, np.ndarray):
            full: Any = np.concatenate([batch, np.zeros((pad, *batch.shape[1:]), batch.dtype)])
        else:
            import torch

            full = torch.cat([batch, batch.new_zeros((pad, *batch.shape[1:]))])
        return self.model.encode_video(full)[:n]

    def info(self) -> ModelInfo:
        """The library's embedding space: name, fingerprint, dim, frames, preprocessing."""
        m = self.model
        return ModelInfo(name=m.name, fingerprint=m.fingerprint, embed_dim=m.embed_dim,
                         num_frames=m.num_frames, preprocess=_jsonable(asdict(m.preprocess_cfg)),
                         is_test_model=bool(m.is_test_model))

    def preprocess_cfg(self) -> Any:
        return self.model.preprocess_cfg

    def process(self, frames: Any) -> np.ndarray:
        """Embed clips.

        Args:
            frames: uint8 (N, T, S, S, 3), frames already sampled and resized by the decoder: a
                numpy array, or a torch tensor (the GPU decoder's, already on the GPU).

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
                emb = self._forward(batch)
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
                if self.compiled:
                    # A smaller fixed batch is a new shape: recompiling under memory pressure
                    # is the wrong moment. Eager from here.
                    for blk in self.model.vision_encoder.blocks:
                        blk._compiled_call_impl = None
                    self.compiled = False
                _logger.warning("out of memory: embed batch size now %d (%s)", self.batch_size,
                                str(e).splitlines()[0][:120])
                continue
            out[i:i + len(batch)] = emb.float().cpu().numpy()
            i += len(batch)
        return out

    def process_parts(self, parts: list[Any]) -> list[np.ndarray]:
        """:meth:`process` over several frame arrays (the chunks of one embed call) as one
        batch; returns their embeddings split back, one array per part. Parts may be numpy
        arrays (CPU decode) and torch tensors (GPU decode, on the model's device) mixed: they
        are then joined on the GPU."""
        if all(isinstance(p, np.ndarray) for p in parts):
            frames: Any = np.concatenate(parts)
        else:
            import torch

            dev = next(p.device for p in parts if not isinstance(p, np.ndarray))
            frames = torch.cat([torch.from_numpy(p).to(dev, non_blocking=True) if isinstance(p, np.ndarray) else p
                                for p in parts])
        emb = self.process(frames)
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
