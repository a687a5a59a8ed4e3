"""Model registry: named variants as JSON configs, resolved with overrides (no torch here).

Named variants are JSON files in ``vidsearch/models/configs/``; ``add_model_config`` registers
more (a file or a folder). ``compute_fingerprint`` names an embedding space. This module imports
no torch, so that tools that only read configs (``weights list``, the NumPy query encoder) start
fast.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vidsearch.schemas.model_config import ModelCfg, PreprocessCfg, TextCfg, VisionCfg

__all__ = ["add_model_config", "list_models", "get_model_config", "compute_fingerprint", "preprocess_overrides"]

_CONFIG_DIR = Path(__file__).parent / "configs"
_MODEL_CONFIGS: dict[str, dict[str, Any]] = {}  # name -> parsed JSON (validated on registration)

# Shortcuts accepted by create_model(**overrides) that set more than one field.
_SHORTCUTS = ("num_frames", "img_size", "gelu_approx", "attn_impl", "embed_dim", "init_seed")


def add_model_config(path: str | os.PathLike[str]) -> None:
    """Register the JSON config file ``path``, or every ``*.json`` in the folder ``path``."""
    p = Path(path)
    files = sorted(p.glob("*.json")) if p.is_dir() else [p]
    for f in files:
        with open(f, encoding="utf-8") as fh:
            d = json.load(fh)
        cfg = ModelCfg.from_dict(d)  # validate now, so a bad file fails at registration
        if cfg.name != f.stem:
            raise ValueError(f"config {f} declares name {cfg.name!r}; the file must be named {cfg.name}.json")
        _MODEL_CONFIGS[cfg.name] = d


def list_models() -> list[str]:
    """Names of all registered model variants, sorted."""
    return sorted(_MODEL_CONFIGS)


def get_model_config(name: str, **overrides: Any) -> ModelCfg:
    """The resolved config of ``name`` with ``overrides`` applied.

    Overrides:
        ``vision_<field>`` / ``text_<field>``: any ``VisionCfg`` / ``TextCfg`` field, e.g.
        ``vision_depth=2``, ``vision_embed_dim=64``, ``text_hidden_size=32``.
        Shortcuts: ``num_frames`` and ``img_size`` (vision and preprocess together),
        ``gelu_approx`` and ``attn_impl`` (vision), ``embed_dim`` and ``init_seed`` (encoder),
        ``interpolation``, ``sampling`` (preprocess), ``description``.

    Raises:
        ValueError: unknown model or override, or an invalid value.
    """
    if name not in _MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; available: {list_models()}")
    d = copy.deepcopy(_MODEL_CONFIGS[name])
    enc, vis, txt, pre = (
        d["encoder"],
        d["encoder"].setdefault("vision", {}),
        d["encoder"].setdefault("text", {}),
        d["preprocess"],
    )
    vis_fields = {f.name for f in dataclasses.fields(VisionCfg)}
    txt_fields = {f.name for f in dataclasses.fields(TextCfg)}
    pre_fields = {f.name for f in dataclasses.fields(PreprocessCfg)}
    for key, value in overrides.items():
        if key in ("num_frames", "img_size"):
            vis[key] = value
            pre[key] = value
        elif key in ("gelu_approx", "attn_impl"):
            vis[key] = value
        elif key in ("embed_dim", "init_seed", "itm_vision_width"):
            enc[key] = value
        elif key in ("interpolation", "sampling", "mean", "std") and key in pre_fields:
            pre[key] = list(value) if isinstance(value, tuple) else value
        elif key == "description":
            d["description"] = value
        elif key.startswith("vision_") and key.removeprefix("vision_") in vis_fields:
            vis[key.removeprefix("vision_")] = value
        elif key.startswith("text_") and key.removeprefix("text_") in txt_fields:
            txt[key.removeprefix("text_")] = value
        else:
            raise ValueError(
                f"unknown override {key!r}; use vision_<field> ({sorted(vis_fields)}), text_<field> "
                f"({sorted(txt_fields)}) or one of num_frames, img_size, gelu_approx, attn_impl, "
                "embed_dim, init_seed, itm_vision_width, interpolation, sampling, description"
            )
    return ModelCfg.from_dict(d)


# Preprocessing fields a library may have been ingested with other values of (IngestOptions.model_overrides).
_PREPROCESS_OVERRIDES = {"sampling": ("uniform", "middle"), "interpolation": ("bilinear", "bicubic")}


def preprocess_overrides(name: str, preprocess: Any) -> dict[str, Any]:
    """The overrides under which ``name`` has the preprocessing ``preprocess`` (a library's record).

    A library ingested with other frame sampling or resize filter than the registry's (``vidsearch
    eval --msrvtt``: the official eval's middle sampling + bicubic) has another fingerprint; its
    text encoder must be built with the same overrides to match it (the text tower does not use
    them). Only ``sampling`` and ``interpolation`` with known values are taken; {} otherwise.
    """
    if name not in _MODEL_CONFIGS or not isinstance(preprocess, dict):
        return {}
    base = get_model_config(name).preprocess
    out: dict[str, Any] = {}
    for key, allowed in _PREPROCESS_OVERRIDES.items():
        v = preprocess.get(key)
        if isinstance(v, str) and v in allowed and v != getattr(base, key):
            out[key] = v
    return out


# Config fields that choose an implementation but not the function computed (equal within float
# rounding); they are left out of the fingerprint so that e.g. flash vs sdpa runs share a library.
_IMPL_ONLY_FIELDS = ("attn_impl",)


def compute_fingerprint(cfg: ModelCfg, weights_id: str) -> str:
    """Short stable hex hash of (name, architecture, preprocessing, weights identity).

    Args:
        cfg: the resolved model config (after overrides).
        weights_id: ``"sha256:<hex>"`` of the weights file, or ``"seed:<n>"`` for random init.
    """
    arch = asdict(cfg.encoder)
    for f in _IMPL_ONLY_FIELDS:
        arch["vision"].pop(f, None)
    payload = {
        "name": cfg.name,
        "arch": arch,
        "preprocess": asdict(cfg.preprocess),
        "weights": weights_id,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


add_model_config(_CONFIG_DIR)
