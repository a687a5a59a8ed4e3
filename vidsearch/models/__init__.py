"""InternVideo2 encoders for vidsearch: registry, factory, preprocessing, checkpoint loading.

>>> from vidsearch.models import create_model, list_models
>>> model = create_model("internvideo2-s2-1b", device="cuda")      # official weights
>>> v = model.encode_video(frames)      # uint8 (B, T, H, W, 3) -> (B, 512), L2-normalised
>>> t = model.encode_text(["a dog playing in the snow"])

Searching needs only the text tower: ``create_text_encoder(name, ...)`` (the same as
``create_model(name, ..., text_only=True)``) builds and loads no vision tower, starts in a fraction
of the time, and its ``encode_text`` is bit-identical to the full model's (same ``fingerprint``).
Test models (random weights) have ``model.is_test_model`` True and ``model.test_model_warning``,
a one-line text for the warnings of ingest and search (None for real models).
"""

from vidsearch.schemas.model_config import EncoderCfg, ModelCfg, PreprocessCfg, PretrainedCfg, TextCfg, VisionCfg

from .errors import CheckpointError, WeightsNotFoundError
from .factory import (
    add_model_config,
    build_model_skeleton,
    create_model,
    create_text_encoder,
    get_model_config,
    list_models,
)
from .model import InternVideo2Model, compute_fingerprint
from .preprocess import FrameSample, middle_indices, preprocess_frames, sample_frame_indices, uniform_indices
from .text import TextTokenizer, TokenBatch
from .weights import checkpoint_filter_fn, convert_to_safetensors, load_checkpoint, load_state_dict

__all__ = [
    "CheckpointError",
    "EncoderCfg",
    "FrameSample",
    "InternVideo2Model",
    "ModelCfg",
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
