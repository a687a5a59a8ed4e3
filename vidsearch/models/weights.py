"""Safe checkpoint loading, key mapping and conversion (timm ``_helpers`` / ``checkpoint_filter_fn``).

Rules:

* ``.safetensors`` files load with ``safetensors.torch.load_file``; anything else with
  ``torch.load(weights_only=True)`` passed explicitly. There is NO fallback to full pickle: an
  unsafe file raises ``CheckpointError`` naming its globals. ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``
  is removed from the environment during the call, so it cannot turn the safe loader off.
* ``checkpoint_filter_fn`` unwraps containers, detects the source layout by sentinel keys, maps
  keys with the literal tables below (checked against ``shared/internvideo2_facts.md`` §3), drops
  training-only keys from an explicit allowlist, then fixes shapes (temporal pos-embed resampling).
* Loading is strict: every missing or unexpected key raises ``CheckpointError``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vidsearch.schemas.model_config import ModelCfg

from .digests import checkpoint_sha256
from .errors import CheckpointError
from .pos_embed import resample_pos_embed

_logger = logging.getLogger(__name__)

__all__ = [
    "load_state_dict",
    "checkpoint_filter_fn",
    "detect_layout",
    "load_checkpoint",
    "sha256_file",
    "OFFICIAL_STAGE2_RENAMES",
    "OFFICIAL_STAGE2_DROP_EXACT",
    "OFFICIAL_STAGE2_DROP_PREFIXES",
]

# ----------------------------------------------------------------------------- key tables
# Official stage-2 checkpoint (``ckpt["module"]`` of a DeepSpeed stage-1 save) -> this package.
# First matching prefix wins. The fusion layers are split off by index in ``_map_official``.
OFFICIAL_STAGE2_RENAMES: tuple[tuple[str, str], ...] = (
    ("vision_encoder.", "vision_encoder."),  # identical module names (facts §3.3)
    ("vision_proj.", "vision_proj."),  # Linear(768 -> 512) (1B) / (768 -> 768) (6B)
    ("text_proj.", "text_proj."),  # Linear(1024 -> 512 / 768)
    ("itm_head.", "itm_head."),  # Linear(1024 -> 2), ITM only
    ("av_concat_vision_proj.", "av_concat_vision_proj."),  # 6B ITM only (UNCERTAIN key names)
    ("text_encoder.bert.embeddings.", "text_encoder.embeddings."),  # HF BertModel has no `bert.`
    # text_encoder.bert.encoder.layer.{i}. -> text_encoder.encoder.layer.{i}.       (i <  fusion_layer)
    #                                     -> text_fusion.layer.{i - fusion_layer}. (i >= fusion_layer)
)
# Training-only or unused entries of the official file: dropped by exact name ...
OFFICIAL_STAGE2_DROP_EXACT: frozenset[str] = frozenset(
    {
        "temp",  # learned temperature; the demo uses a fixed x100, the eval raw cosine
        "vision_encoder.clip_pos_embed",  # pos embed of the training-only CLIP decoders
        "vision_encoder.clip_img_pos_embed",  # same, single-image variant
        "text_encoder.bert.embeddings.position_ids",  # arange buffer, rebuilt by BertModel
    }
)
# ... and by prefix.
OFFICIAL_STAGE2_DROP_PREFIXES: tuple[str, ...] = (
    "vision_encoder.clip_decoder.",  # 6 distillation decoders (training-only)
    "vision_encoder.final_clip_decoder.",  # final distillation decoder (training-only)
    "text_encoder.cls.",  # MLM head (training-only)
    # 6B audio-visual training parts, never used for video-text retrieval (UNCERTAIN names,
    # taken from the module names of internvideo2_stage2_audiovisual.py in facts §2).
    "audio_encoder.",
    "audio_proj.",
    "av_fusion.",
    "avtm_head.",
)
# Parts of this package's own layout that a model built without them ignores.
_ITM_PREFIXES = ("itm_head.", "av_concat_vision_proj.", "text_fusion.")
_TEXT_PREFIXES = ("text_encoder.", "text_proj.")
_VISION_PREFIXES = ("vision_encoder.", "vision_proj.")

_SENTINEL_VISION = "vision_encoder.blocks.0.attn.qkv.weight"
_SENTINEL_OFFICIAL_TEXT = "text_encoder.bert."
_LAYER_RE = re.compile(r"^text_encoder\.bert\.encoder\.layer\.(\d+)\.(.*)$")


# ----------------------------------------------------------------------------- file loading
@contextlib.contextmanager
def _without_env(name: str) -> Iterator[None]:
    """Temporarily remove ``name`` from os.environ (not thread-safe; loading is a setup step)."""
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


def _unsafe_globals(path: Path) -> list[str]:
    getter = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if getter is None:
        return []
    try:
        return list(getter(str(path)))
    except Exception:  # noqa: BLE001 - best effort for the error message only
        return []


def load_state_dict(path: str | os.PathLike[str], keep: Callable[[str], bool] | None = None) -> dict[str, Any]:
    """Load a checkpoint file safely, without executing code.

    Returns the raw top-level object as a dict (containers are unwrapped later by
    ``checkpoint_filter_fn``). Tensors are read lazily where the format allows: a safetensors
    file only for the keys ``keep`` accepts, a zip ``.pt`` memory-mapped (a tensor's bytes are
    read when it is copied into the model), so loading one tower of a large checkpoint reads
    that tower, not the file.

    Raises:
        CheckpointError: unsafe pickle (the message names the globals), unreadable or not a dict.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return {k: f.get_tensor(k) for k in f.keys() if keep is None or keep(k)}  # noqa: SIM118
        except Exception as e:  # noqa: BLE001 - corrupt file: user-facing message
            raise CheckpointError(f"cannot read safetensors file {path}: {e}") from e
    # A zip checkpoint (torch.save since 1.6) can be memory-mapped; the legacy format cannot.
    mmap = zipfile.is_zipfile(path)
    # Since torch 2.6 an explicit weights_only=True wins over TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, but
    # older versions let the variable override it; remove it so no version can load unsafely.
    with _without_env("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as e:
            names = _unsafe_globals(path)
            raise CheckpointError(
                f"{path} is not a plain tensor checkpoint: loading it would run code from the pickle "
                f"(unsafe globals: {', '.join(names) if names else 'see below'}). vidsearch never loads "
                "such files. If you trust the file, convert it once in a separate Python session, e.g. "
                "`sd = torch.load(path, weights_only=False)['module']; safetensors.torch.save_file(sd, "
                "'out.safetensors')`, then pass the .safetensors file.\n"
                f"torch said: {str(e).splitlines()[0][:300]}"
            ) from e
        except (RuntimeError, OSError, EOFError) as e:
            raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return dict(obj)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a checkpoint, remembered for an unchanged file (``digests.py``)."""
    return checkpoint_sha256(path)


# ----------------------------------------------------------------------------- filtering
def _cfg_of(model: nn.Module) -> ModelCfg:
    """The resolved config of an ``InternVideo2Model`` (the key mapping depends on it)."""
    cfg = getattr(model, "cfg", None)
    if not isinstance(cfg, ModelCfg):
        raise TypeError(f"expected an InternVideo2Model, got {type(model).__name__}")
    return cfg


def _unwrap(sd: Mapping[str, Any]) -> dict[str, Any]:
    # Official loaders: ckpt["model"] if present, else ckpt["module"] (DeepSpeed), else flat.
    for key in ("model", "module", "state_dict"):
        if key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
            break
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint entries that are not tensors: {bad[:5]}")
    # DataParallel/DDP saves prefix every key with `module.`.
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return dict(sd)


def detect_layout(sd: Mapping[str, torch.Tensor]) -> str:
    """Name the source layout of an unwrapped state dict by sentinel keys.

    Returns:
        ``"official_stage2"`` (OpenGVLab stage-2 ``.pt``) or ``"vidsearch"`` (our safetensors).
    """
    if _SENTINEL_VISION not in sd:
        raise CheckpointError(
            f"unknown checkpoint layout: no {_SENTINEL_VISION!r}; first keys: {sorted(sd)[:8]}. Only "
            "InternVideo2 stage-2 checkpoints (official .pt or vidsearch .safetensors) are supported."
        )
    if any(k.startswith(_SENTINEL_OFFICIAL_TEXT) for k in sd):
        return "official_stage2"
    return "vidsearch"


def _map_official(sd: Mapping[str, torch.Tensor], fusion_layer: int) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for k, v in sd.items():
        if k in OFFICIAL_STAGE2_DROP_EXACT or k.startswith(OFFICIAL_STAGE2_DROP_PREFIXES):
            continue
        m = _LAYER_RE.match(k)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            if i < fusion_layer:
                out[f"text_encoder.encoder.layer.{i}.{rest}"] = v
            else:
                out[f"text_fusion.layer.{i - fusion_layer}.{rest}"] = v
            continue
        for src, dst in OFFICIAL_STAGE2_RENAMES:
            if k.startswith(src):
                out[dst + k.removeprefix(src)] = v
                break
        else:
            unknown.append(k)  # kept under its own name: strict loading reports it
            out[k] = v
    if unknown:
        _logger.debug("official checkpoint keys with no mapping: %s", unknown[:10])
    return out


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Turn a loaded checkpoint into a state dict for ``model`` (an ``InternVideo2Model``).

    Unwraps ``model``/``module``/``state_dict`` containers, strips a ``module.`` prefix, maps keys
    of the detected layout, drops training-only keys and parts the model was built without (ITM,
    text or vision tower), and resamples ``pos_embed`` in time/space to the model's frames and grid. Tensors
    keep the checkpoint dtype.
    """
    sd = _unwrap(state_dict)
    layout = detect_layout(sd)
    cfg = _cfg_of(model)
    if layout == "official_stage2":
        sd = _map_official(sd, cfg.encoder.text.fusion_layer)
    own = model.state_dict()
    if not any(k.startswith(_ITM_PREFIXES) for k in own):
        sd = {k: v for k, v in sd.items() if not k.startswith(_ITM_PREFIXES)}
    if not any(k.startswith(_TEXT_PREFIXES) for k in own):
        sd = {k: v for k, v in sd.items() if not k.startswith(_TEXT_PREFIXES)}
    if not any(k.startswith(_VISION_PREFIXES) for k in own):
        sd = {k: v for k, v in sd.items() if not k.startswith(_VISION_PREFIXES)}

    v = cfg.encoder.vision
    src_t = cfg.pretrained.num_frames if cfg.pretrained is not None else None
    t = v.num_frames // v.tubelet_size
    key = "vision_encoder.pos_embed"
    if key in sd and key in own and sd[key].shape != own[key].shape:
        sd[key] = resample_pos_embed(sd[key], t, v.grid_size, src_num_frames=src_t)
    key = "vision_encoder.img_pos_embed"
    if key in sd and key in own and sd[key].shape != own[key].shape:
        sd[key] = resample_pos_embed(sd[key], 1, v.grid_size, src_num_frames=1)
    return sd


def _raw_keys_needed(model: nn.Module) -> Callable[[str], bool] | None:
    """Which raw checkpoint keys a model built without its vision tower needs (None: all).

    The vision sentinel stays: ``detect_layout`` recognises a checkpoint by it.
    """
    if getattr(model, "with_vision", True):
        return None
    return lambda k: k == _SENTINEL_VISION or not k.startswith(_VISION_PREFIXES)


def _check_and_load(model: nn.Module, sd: dict[str, torch.Tensor], origin: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shape_bad = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(sd) & set(own))
        if sd[k].shape != own[k].shape
    ]
    if missing or unexpected or shape_bad:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys, first: {missing[:8]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, first: {unexpected[:8]}")
        if shape_bad:
            parts.append(f"{len(shape_bad)} shape mismatches, first: {shape_bad[:4]}")
        raise CheckpointError(f"{origin} does not fit model {_cfg_of(model).name}: " + "; ".join(parts))
    # load_state_dict copies each tensor into its parameter with Tensor.copy_, which casts (e.g. a
    # fp16 checkpoint into a fp32 model) exactly as a .to() first would: casting here as well made
    # a second full copy (3.2 s of a 7.2 s text-tower load of the 1B checkpoint).
    result = model.load_state_dict(sd, strict=False)
    # Inspect, never discard: the pre-check above must have caught everything.
    assert not result.missing_keys and not result.unexpected_keys, result


def load_checkpoint(
    model: nn.Module,
    path: str | os.PathLike[str],
    expected_sha256: str | None = None,
) -> str:
    """Load ``path`` into ``model`` strictly; return the weights identity for the fingerprint.

    Args:
        model: an ``InternVideo2Model``.
        path: ``.safetensors`` or ``.pt``/``.pth`` file.
        expected_sha256: if given, the file must have this SHA-256.

    Returns:
        ``"sha256:<hex>"``: of the file, or of its source when it is a vidsearch conversion.

    Raises:
        CheckpointError: hash mismatch, unsafe or unreadable file, keys that do not fit.
    """
    path = Path(path)
    digest = sha256_file(path)
    if expected_sha256 is not None and digest.lower() != expected_sha256.lower():
        raise CheckpointError(
            f"SHA-256 of {path} is {digest}, expected {expected_sha256}: the file is corrupt or not the "
            "published one; download it again"
        )
    weights_id = f"sha256:{digest}"
    if path.suffix == ".safetensors":
        meta = _safetensors_metadata(path)
        # A vidsearch conversion holds the same tensors as its source, so it keeps the source's
        # identity and the fingerprint does not change when a user converts once.
        if meta.get("format") == "vidsearch" and meta.get("source_sha256"):
            weights_id = f"sha256:{meta['source_sha256']}"
    raw = load_state_dict(path, keep=_raw_keys_needed(model))
    sd = checkpoint_filter_fn(raw, model)
    _check_and_load(model, sd, str(path))
    _logger.info("loaded %s (%d tensors) into %s", path, len(sd), _cfg_of(model).name)
    return weights_id


def _safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})
