"""Model factory (open_clip ``factory.py`` style): ``create_model`` builds the model, loads and
maps weights, and places it. The registry of named variants is ``registry.py`` (re-exported here).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from vidsearch import files
from vidsearch.schemas.model_config import ModelCfg

from .digests import checkpoint_sha256
from .errors import CheckpointError, WeightsNotFoundError
from .hub import resolve_checkpoint, resolve_vocab
from .model import InternVideo2Model
from .registry import add_model_config, get_model_config, list_models
from .text import TextTokenizer
from .weights import checkpoint_filter_fn, load_checkpoint, load_state_dict

_logger = logging.getLogger(__name__)

__all__ = [
    "list_models",
    "add_model_config",
    "get_model_config",
    "create_model",
    "create_text_encoder",
    "build_model_skeleton",
    "convert_to_safetensors",
]

def build_model_skeleton(
    cfg: ModelCfg,
    *,
    with_vision: bool = True,
    with_text: bool = True,
    with_itm: bool = False,
    tokenizer: TextTokenizer | None = None,
) -> InternVideo2Model:
    """Instantiate the architecture with its deterministic random init (seed ``init_seed``).

    The model saves and restores the global RNG state, so building it does not disturb callers.
    """
    return InternVideo2Model(cfg, with_vision=with_vision, with_text=with_text, with_itm=with_itm, tokenizer=tokenizer)


def create_model(
    name: str,
    checkpoint: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    tokenizer: str | os.PathLike[str] | None = None,
    with_itm: bool = False,
    dtype: torch.dtype | None = None,
    *,
    pretrained: bool = True,
    vision_only: bool = False,
    text_only: bool = False,
    weights_sha256: str | None = None,
    **overrides: Any,
) -> InternVideo2Model:
    """Build an InternVideo2 model, load its weights and move it to ``device``.

    Args:
        name: a name from ``list_models()``.
        checkpoint: weights file or folder; default: env vars, then the HF cache/hub.
        device: target device (default CPU).
        tokenizer: vocab.txt file or folder holding it; default: ``VIDSEARCH_TOKENIZER``, then the
            config's source (HF cache/hub or a built-in test vocab).
        with_itm: also build and load the ITM fusion layers and ``itm_head``.
        dtype: parameter dtype (default float32; ``torch.bfloat16`` is meant for CUDA).
        pretrained: False builds the random-init architecture without looking for weights (test
            models never have weights; an explicit ``checkpoint`` is still loaded).
        vision_only: skip the text tower and the tokenizer (video embedding only, e.g. ingest).
        text_only: skip the vision tower (text embedding only, e.g. search); same embeddings and
            fingerprint as the full model. ``create_text_encoder`` is the short form.
        weights_sha256: require this SHA-256 of the weights file (default: the registry's, if any).
        **overrides: architecture/preprocessing overrides, see ``get_model_config``.

    Raises:
        ValueError: unknown name or override.
        WeightsNotFoundError: weights or vocabulary not found (the message says how to get them).
        CheckpointError: the weights file is unsafe, corrupt or does not fit.
    """
    if vision_only and text_only:
        raise ValueError("vision_only and text_only exclude each other")
    if with_itm and (vision_only or text_only):
        raise ValueError("with_itm=True needs both towers (neither vision_only nor text_only)")
    cfg = get_model_config(name, **overrides)
    tok: TextTokenizer | None = None
    if not vision_only:
        vocab = resolve_vocab(cfg, tokenizer)
        tok = TextTokenizer(vocab, cfg.encoder.text.context_length, cfg.encoder.text.do_lower_case)
        if tok.vocab_size != cfg.encoder.text.vocab_size:
            raise ValueError(
                f"tokenizer {vocab} has {tok.vocab_size} tokens but {name} expects {cfg.encoder.text.vocab_size}"
            )
    ckpt_path: Path | None = None
    if checkpoint is not None or (pretrained and cfg.pretrained is not None):
        ckpt_path = resolve_checkpoint(cfg, checkpoint)
    elif pretrained and cfg.pretrained is None and not cfg.is_test_model:
        raise WeightsNotFoundError(f"{name} has no pretrained entry; pass checkpoint=... or pretrained=False")

    parts: dict[str, Any] = {"with_vision": not text_only, "with_text": not vision_only, "with_itm": with_itm}
    if ckpt_path is None:
        model = build_model_skeleton(cfg, tokenizer=tok, **parts)
    else:
        # Every persistent tensor comes from the checkpoint: skip the random init (25 s for 1B on
        # two cores) by building on the meta device and allocating empty storage.
        with torch.device("meta"), _SkipInitOnMeta():
            model = build_model_skeleton(cfg, tokenizer=tok, **parts)
        _materialize_on_cpu(model)
        _reset_nonpersistent_buffers(model)
        expected = weights_sha256 or (cfg.pretrained.sha256 if cfg.pretrained is not None else None)
        model.weights_id = load_checkpoint(model, ckpt_path, expected_sha256=expected)
        model.weights_source = str(ckpt_path)
    if cfg.is_test_model:
        _logger.warning("%s is a TEST MODEL with random weights: not for real search", name)
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    model.eval()
    return model


class _SkipInitOnMeta(TorchFunctionMode):
    """Skip the value-only in-place ops (random init) on meta tensors while a model is built.

    On the meta device they compute nothing, yet several (``normal_``, ``uniform_``) run through
    Python reference implementations that import ``torch._dynamo``: 2-3 s of every one-shot search
    before its query was encoded. Ops that change a shape or a flag are never skipped.
    """

    _VALUE_OPS = frozenset({
        "normal_", "uniform_", "trunc_normal_", "zero_", "zeros_", "ones_", "fill_", "constant_",
        "copy_", "erfinv_", "mul_", "add_", "sub_", "div_", "clamp_", "sqrt_", "exponential_",
        "random_", "bernoulli_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
        "xavier_normal_", "orthogonal_",
    })  # fmt: skip

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in self._VALUE_OPS:
            # nn.init passes the tensor by keyword ("tensor"), Tensor methods positionally.
            target = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


def create_text_encoder(
    name: str,
    checkpoint: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    tokenizer: str | os.PathLike[str] | None = None,
    dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> InternVideo2Model:
    """The text tower of ``name`` only: what a search needs to embed its query.

    ``create_model(name, ..., text_only=True)``: no vision tower is built or loaded, so it starts
    much faster; ``encode_text`` returns bit-identical embeddings and ``fingerprint`` is the full
    model's. ``encode_video`` raises. Arguments as for ``create_model``.
    """
    return create_model(name, checkpoint, device, tokenizer, dtype=dtype, text_only=True, **kwargs)


def _materialize_on_cpu(model: torch.nn.Module) -> None:
    """Give every meta parameter and buffer uninitialised CPU storage (the checkpoint fills it).

    What ``Module.to_empty`` does, without its ``empty_like`` on meta tensors: that runs through
    Python reference code that imports sympy and torch.fx (about 2 s per one-shot search).
    """
    made: dict[int, torch.Tensor] = {}  # a tensor shared by two modules stays shared
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for key, t in list(table.items()):
                if t is None or not t.is_meta:
                    continue
                if id(t) not in made:
                    empty = torch.empty(t.shape, dtype=t.dtype, device="cpu")
                    is_param = isinstance(t, torch.nn.Parameter)
                    made[id(t)] = torch.nn.Parameter(empty, t.requires_grad) if is_param else empty
                table[key] = made[id(t)]  # type: ignore[assignment]


def _reset_nonpersistent_buffers(model: InternVideo2Model) -> None:
    """Refill the buffers that state dicts do not carry after ``to_empty`` (garbage otherwise)."""
    persistent = set(model.state_dict())
    for name, buf in model.named_buffers():
        if name in persistent:
            continue
        # Only HF BertEmbeddings has such buffers: position ids 0..max_pos-1 and token type 0.
        assert name in ("text_encoder.embeddings.position_ids", "text_encoder.embeddings.token_type_ids"), name
        if name.endswith("position_ids"):
            buf.copy_(torch.arange(buf.shape[-1], device=buf.device).expand_as(buf))
        else:
            buf.zero_()


def convert_to_safetensors(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    model_name: str,
    with_itm: bool = True,
    **overrides: Any,
) -> Path:
    """Convert a checkpoint (e.g. the official ``.pt``) into vidsearch's safetensors layout.

    The model is built on the meta device (no memory, no init) only to know the target keys and
    shapes. The output keeps the source dtype, carries metadata (model name, source sha256) and is
    written atomically (temp file in the same folder, fsync, ``os.replace``).

    Returns:
        The destination path.
    """
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    cfg = get_model_config(model_name, **overrides)
    with torch.device("meta"):
        skeleton = build_model_skeleton(cfg, with_text=True, with_itm=with_itm)
    raw = load_state_dict(src)
    sd = checkpoint_filter_fn(raw, skeleton)
    own = skeleton.state_dict()
    # Check keys/shapes against the skeleton without copying any data.
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    bad = [k for k in set(sd) & set(own) if sd[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise CheckpointError(
            f"{src} does not fit {model_name}: missing {missing[:8]}, unexpected {unexpected[:8]}, "
            f"shape mismatches {sorted(bad)[:4]}"
        )
    tensors = {k: v.contiguous() for k, v in sorted(sd.items())}
    metadata = {
        "format": "vidsearch",
        "model": cfg.name,
        "source_file": src.name,
        "source_sha256": checkpoint_sha256(src),
        "with_itm": str(with_itm).lower(),
    }
    with files.atomic_output(dst) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    _logger.info("wrote %s (%d tensors)", dst, len(tensors))
    return dst
