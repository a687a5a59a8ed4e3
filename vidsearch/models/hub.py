"""Where weights and tokenizer vocabularies come from: local paths, env vars, the HF cache/hub.

Resolution order for a checkpoint:

1. ``checkpoint=`` (``--checkpoint``): a file, or a folder holding the official file name,
   ``<model>.safetensors`` or exactly one ``*.safetensors``/``*.pt``/``*.pth``.
2. ``VIDSEARCH_WEIGHTS_<MODEL>`` (e.g. ``VIDSEARCH_WEIGHTS_INTERNVIDEO2_S2_1B``), then
   ``VIDSEARCH_WEIGHTS``: same forms.
3. The Hugging Face cache (``local_files_only=True``), then the hub unless ``HF_HUB_OFFLINE=1``.

Tokenizer: ``tokenizer=`` (``--tokenizer``) or ``VIDSEARCH_TOKENIZER``: a folder with
``vocab.txt`` or the file itself; else ``vocab.txt`` of the config's HF repo from cache/hub;
``builtin:<file>`` configs (test models) use ``vidsearch/models/assets``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from vidsearch.schemas.model_config import ModelCfg

from .errors import WeightsNotFoundError

_logger = logging.getLogger(__name__)

__all__ = ["resolve_checkpoint", "resolve_vocab", "model_env_var", "ASSETS_DIR"]

ASSETS_DIR = Path(__file__).parent / "assets"
_CKPT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def model_env_var(name: str) -> str:
    """Per-model weights variable, e.g. internvideo2-s2-1b -> VIDSEARCH_WEIGHTS_INTERNVIDEO2_S2_1B."""
    return "VIDSEARCH_WEIGHTS_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def _pick_in_dir(folder: Path, cfg: ModelCfg) -> Path:
    names = [f"{cfg.name}.safetensors"]
    if cfg.pretrained is not None and cfg.pretrained.filename:
        names.insert(0, cfg.pretrained.filename)
    for n in names:
        if (folder / n).is_file():
            return folder / n
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _CKPT_SUFFIXES)
    if len(found) == 1:
        return found[0]
    raise WeightsNotFoundError(
        f"{folder} holds {len(found)} checkpoint files; expected one of {names} or exactly one "
        f"{'/'.join(_CKPT_SUFFIXES)} file. Pass the file itself with --checkpoint."
    )


def _local(path: str | os.PathLike[str], cfg: ModelCfg, origin: str) -> Path:
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        return _pick_in_dir(p, cfg)
    raise WeightsNotFoundError(f"{origin} points at {p}, which does not exist")


def _hub_download(repo_id: str, filename: str) -> Path:
    """hf_hub_download, cache first; raises the hub's own errors."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=True))
    except Exception as e:  # noqa: BLE001 - any cache miss falls through to the online try
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise
        _logger.info("%s/%s not in the HF cache (%s); downloading", repo_id, filename, type(e).__name__)
    return Path(hf_hub_download(repo_id, filename))


def _weights_help(cfg: ModelCfg, reason: str) -> str:
    pre = cfg.pretrained
    assert pre is not None and pre.hf_hub_id and pre.filename
    return (
        f"weights for {cfg.name} not found ({reason}).\n"
        f"Download them (about 3 GB for 1B; the repo is gated: accept the licence on "
        f"https://huggingface.co/{pre.hf_hub_id} and log in with `huggingface-cli login` or set HF_TOKEN):\n"
        f"    huggingface-cli download {pre.hf_hub_id} {pre.filename}\n"
        f"then run again (the HF cache is searched), or point vidsearch at a local copy with "
        f"--checkpoint PATH, or the environment variable {model_env_var(cfg.name)} or VIDSEARCH_WEIGHTS "
        f"(a file or a folder).\n"
        f"Tip: `vidsearch weights convert PATH --to {cfg.name}.safetensors --model {cfg.name}` converts "
        f"the pickle to safetensors once."
    )


def resolve_checkpoint(cfg: ModelCfg, checkpoint: str | os.PathLike[str] | None = None) -> Path:
    """Find the weights file of ``cfg`` (see the module docstring for the order).

    Raises:
        WeightsNotFoundError: nothing found; the message says what to download and which flag or
            environment variable to use.
    """
    if checkpoint is not None:
        return _local(checkpoint, cfg, "--checkpoint")
    for var in (model_env_var(cfg.name), "VIDSEARCH_WEIGHTS"):
        if os.environ.get(var):
            return _local(os.environ[var], cfg, var)
    pre = cfg.pretrained
    if pre is not None and pre.filename and pre.filename.startswith("builtin:"):
        # Weights that ship inside the package (the demo model); their SHA-256 is still checked.
        p = ASSETS_DIR / pre.filename.removeprefix("builtin:")
        if not p.is_file():
            raise WeightsNotFoundError(f"{cfg.name}: packaged weights {p} are missing; reinstall vidsearch")
        return p
    if pre is None or not pre.hf_hub_id or not pre.filename:
        raise WeightsNotFoundError(
            f"{cfg.name} has no published weights; pass --checkpoint PATH or set {model_env_var(cfg.name)}"
        )
    try:
        return _hub_download(pre.hf_hub_id, pre.filename)
    except Exception as e:  # noqa: BLE001 - every hub failure becomes the same actionable message
        raise WeightsNotFoundError(_weights_help(cfg, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")) from e


def resolve_vocab(cfg: ModelCfg, tokenizer: str | os.PathLike[str] | None = None) -> Path:
    """Find the WordPiece ``vocab.txt`` for ``cfg``.

    Raises:
        WeightsNotFoundError: nothing found; the message says how to get it.
    """
    src = tokenizer if tokenizer is not None else os.environ.get("VIDSEARCH_TOKENIZER") or None
    if src is not None:
        p = Path(src).expanduser()
        if p.is_dir() and (p / "vocab.txt").is_file():
            return p / "vocab.txt"
        if p.is_file():
            return p
        origin = "--tokenizer" if tokenizer is not None else "VIDSEARCH_TOKENIZER"
        raise WeightsNotFoundError(f"{origin} points at {p}: expected a vocab.txt file or a folder holding one")
    spec = cfg.encoder.text.tokenizer
    if spec.startswith("builtin:"):
        p = ASSETS_DIR / spec.removeprefix("builtin:")
        if not p.is_file():
            raise WeightsNotFoundError(f"built-in vocabulary {p} is missing from the installation")
        return p
    try:
        return _hub_download(spec, "vocab.txt")
    except Exception as e:  # noqa: BLE001
        raise WeightsNotFoundError(
            f"tokenizer vocabulary for {cfg.name} not found ({type(e).__name__}). Download it with\n"
            f"    huggingface-cli download {spec} vocab.txt\n"
            f"or pass --tokenizer PATH / set VIDSEARCH_TOKENIZER to a vocab.txt (or a folder holding it)."
        ) from e
