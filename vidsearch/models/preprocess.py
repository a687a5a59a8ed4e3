"""Frame sampling and pixel preprocessing for InternVideo2 (facts §4).

Two official pipelines exist and both are reproduced:

* demo (``demo/utils.py``): frames ``0, step, 2*step, ...`` with ``step = n // T``; cv2
  ``INTER_LINEAR`` squash-resize to 224 (no crop, no antialias); ``/255`` and ImageNet mean/std in
  float64 numpy, then float32. -> ``sampling="uniform"``, ``interpolation="bilinear"``.
* official eval (``dataset/video_utils.py``, ``dataset/__init__.py``): midpoints of T equal
  segments, torchvision ``Resize((224, 224), BICUBIC)``. -> ``sampling="middle"``,
  ``interpolation="bicubic"``.

Decoding is not done here: the input is RGB uint8 frames already sampled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from vidsearch.schemas.model_config import PreprocessCfg

_logger = logging.getLogger(__name__)

__all__ = [
    "PreprocessCfg",
    "FrameSample",
    "uniform_indices",
    "middle_indices",
    "sample_frame_indices",
    "preprocess_frames",
]


@dataclass(frozen=True)
class FrameSample:
    """Frame indices chosen for one clip."""

    indices: tuple[int, ...]  # absolute frame indices, len == num_frames, non-decreasing
    padded: bool  # True when the clip had fewer frames than num_frames and frames were repeated


def _check_range(start: int, end: int, num_frames: int) -> int:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if start < 0 or end <= start:
        raise ValueError(f"empty or negative frame range [{start}, {end})")
    return end - start


def uniform_indices(start: int, end: int, num_frames: int) -> FrameSample:
    """The demo's ``frames[::n // T][:T]`` generalised to the clip ``[start, end)``.

    With ``n = end - start >= T``: ``start + i * (n // T)`` for i < T (starts at the clip's first
    frame, NOT at segment middles). With ``n < T`` the demo asserts; here frames are repeated evenly
    (``start + i * n // T``) and ``padded`` is True.
    """
    n = _check_range(start, end, num_frames)
    if n >= num_frames:
        step = n // num_frames
        return FrameSample(tuple(start + i * step for i in range(num_frames)), False)
    return FrameSample(tuple(start + (i * n) // num_frames for i in range(num_frames)), True)


def middle_indices(start: int, end: int, num_frames: int) -> FrameSample:
    """The official eval's ``get_frame_indices(sample="middle")`` on the clip ``[start, end)``.

    ``intervals = linspace(0, n, min(T, n) + 1).astype(int)`` and each index is
    ``(a + b - 1) // 2`` of its interval; with fewer than T frames the last index is repeated, as
    the official code pads.
    """
    n = _check_range(start, end, num_frames)
    acc = min(num_frames, n)
    intervals = np.linspace(0, n, acc + 1).astype(int)
    idx = [start + (int(a) + int(b) - 1) // 2 for a, b in zip(intervals[:-1], intervals[1:], strict=True)]
    padded = len(idx) < num_frames
    idx += [idx[-1]] * (num_frames - len(idx))
    return FrameSample(tuple(idx), padded)


def sample_frame_indices(
    start: int, end: int, num_frames: int, mode: Literal["uniform", "middle"] = "uniform"
) -> FrameSample:
    """Pick ``num_frames`` indices in ``[start, end)`` with the given sampling mode."""
    if mode == "uniform":
        return uniform_indices(start, end, num_frames)
    if mode == "middle":
        return middle_indices(start, end, num_frames)
    raise ValueError(f"sampling must be 'uniform' or 'middle', got {mode!r}")


def preprocess_frames(
    frames: np.ndarray | torch.Tensor,
    cfg: PreprocessCfg,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """RGB uint8 frames -> normalised float32 model input.

    Resize is a squash to ``img_size`` x ``img_size`` (no crop) with ``align_corners=False`` and no
    antialias: bilinear matches cv2 ``INTER_LINEAR`` of the demo. The result is rounded to uint8
    levels because cv2 (and torchvision on uint8 tensors) return uint8. Normalisation runs in
    float64 as the demo's numpy code does, then casts to float32.

    Note: the official eval's torchvision ``Resize`` antialias default depends on the torchvision
    version it ran with (UNCERTAIN); bicubic here does not antialias.

    Args:
        frames: uint8 (T, H, W, 3) or (B, T, H, W, 3), RGB.
        cfg: preprocessing contract of the model.
        device: where to compute (default: where ``frames`` are; numpy -> CPU).

    Returns:
        float32 (B, T, 3, img_size, img_size).
    """
    x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if x.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 RGB, got {x.dtype}")
    if x.ndim == 4:
        x = x.unsqueeze(0)  # (1, T, H, W, 3)
    if x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"frames must be (B, T, H, W, 3) or (T, H, W, 3), got {tuple(x.shape)}")
    if device is not None:
        x = x.to(device)
    B, T, H, W, _ = x.shape
    S = cfg.img_size
    x = x.permute(0, 1, 4, 2, 3).reshape(B * T, 3, H, W)  # (B*T, 3, H, W)
    if (H, W) != (S, S):
        x = F.interpolate(
            x.float(), size=(S, S), mode=cfg.interpolation, align_corners=False, antialias=False
        )  # (B*T, 3, S, S)
        x = x.round_().clamp_(0, 255)  # uint8 output levels of cv2 / torchvision
    x = x.to(torch.float64) / 255.0
    mean = torch.tensor(cfg.mean, dtype=torch.float64, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float64, device=x.device).view(1, 3, 1, 1)
    x = ((x - mean) / std).to(torch.float32)
    return x.reshape(B, T, 3, S, S)  # (B, T, 3, S, S)
