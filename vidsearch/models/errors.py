"""Exceptions of vidsearch.models (user-facing messages: say what to do)."""

from __future__ import annotations

__all__ = ["CheckpointError", "WeightsNotFoundError"]


class CheckpointError(RuntimeError):
    """A checkpoint file is unsafe, corrupt, or does not fit the model (missing/unexpected keys)."""


class WeightsNotFoundError(FileNotFoundError):
    """Model weights or the tokenizer vocabulary could not be found locally or on the hub."""
