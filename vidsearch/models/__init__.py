"""InternVideo2 encoders for vidsearch: registry, factory, preprocessing, checkpoint loading.

>>> from vidsearch.models import create_model, list_models
>>> model = create_model("internvideo2-s2-1b", device="cuda")      # official weights
>>> v = model.encode_video(frames)      # uint8 (B, T, H, W, 3) -> (B, 512), L2-normalised
>>> t = model.encode_text(["a dog playing in the snow"])

Searching needs only the text tower: ``create_text_encoder(name, ...)`` (the same as
``create_model(name, ..., text_only=True)``) builds and loads no vision tower, starts in a fraction
of the time, and its ``encode_text`` is bit-identical to the full model's (same ``fingerprint``).

A one-shot search on the CPU should use ``create_numpy_text_encoder(name, checkpoint=...,
tokenizer=...)`` instead: the same text tower in NumPy, importing no torch (torch's import alone
is ~2.3 s of CPU on the 2-core machine). Its embeddings equal torch's to float32 rounding (1.2e-7
on the demo model; same ranking), not bit for bit; its ``encode_text`` returns a NumPy array and
it has the same ``name``/``fingerprint``/``is_test_model``/``test_model_warning``. Measured with
the searcher calling it (2-core machine, load average ~12): ``vidsearch search "a red circle"
--library DEMO`` 0.87 s of CPU (3.65 s with ``create_text_encoder``). Import it as
``vidsearch.models.create_numpy_text_encoder`` *without* importing ``create_model`` in the same
statement: the package loads its torch parts lazily, on first use of a torch name.

Test models (random weights) have ``model.is_test_model`` True and ``model.test_model_warning``,
a one-line text for the warnings of ingest and search (None for real models).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vidsearch.schemas.model_config import EncoderCfg, ModelCfg, PreprocessCfg, PretrainedCfg, TextCfg, VisionCfg

from .errors import CheckpointError, WeightsNotFoundError
from .registry import add_model_config, compute_fingerprint, get_model_config, list_models

# Everything that imports torch loads on first use (PEP 562): importing the registry, the errors
# or the NumPy query encoder must not pay torch's import (~2.3 s of CPU on the 2-core machine).
_LAZY = {
    "create_model": "factory", "create_text_encoder": "factory", "build_model_skeleton": "factory",
    "InternVideo2Model": "model",
    "FrameSample": "preprocess", "middle_indices": "preprocess", "preprocess_frames": "preprocess",
    "sample_frame_indices": "preprocess", "uniform_indices": "preprocess",
    "TextTokenizer": "text", "TokenBatch": "text",
    "checkpoint_filter_fn": "weights", "convert_to_safetensors": "factory", "load_checkpoint": "weights",
    "load_state_dict": "weights",
    "NumpyTextEncoder": "text_numpy", "create_numpy_text_encoder": "text_numpy",
}  # fmt: skip

if TYPE_CHECKING:
    from .factory import build_model_skeleton, convert_to_safetensors, create_model, create_text_encoder
    from .model import InternVideo2Model
    from .preprocess import FrameSample, middle_indices, preprocess_frames, sample_frame_indices, uniform_indices
    from .text import TextTokenizer, TokenBatch
    from .text_numpy import NumpyTextEncoder, create_numpy_text_encoder
    from .weights import checkpoint_filter_fn, load_checkpoint, load_state_dict


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "CheckpointError",
    "EncoderCfg",
    "FrameSample",
    "InternVideo2Model",
    "ModelCfg",
    "NumpyTextEncoder",
    "PreprocessCfg",
    "PretrainedCfg",
    "TextCfg",
    "TextTokenizer",
    "TokenBatch",
    "VisionCfg",
    "WeightsNotFoundError",
    "add_model_config",
    "build_model_skeleton",
    "checkpoint_filter_fn",
    "compute_fingerprint",
    "convert_to_safetensors",
    "create_model",
    "create_numpy_text_encoder",
    "create_text_encoder",
    "get_model_config",
    "list_models",
    "load_checkpoint",
    "load_state_dict",
    "middle_indices",
    "preprocess_frames",
    "sample_frame_indices",
    "uniform_indices",
]
