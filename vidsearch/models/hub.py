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
from dataclasses import dataclass
from pathlib import Path

from vidsearch.schemas.model_config import ModelCfg

from .errors import WeightsNotFoundError

_logger = logging.getLogger(__name__)

__all__ = [
    "resolve_checkpoint",
    "resolve_vocab",
    "model_env_var",
    "local_weights",
    "download_weights",
    "LocalWeights",
    "ASSETS_DIR",
]

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
        if _offline():
            raise
        _logger.info("%s/%s not in the HF cache (%s); downloading", repo_id, filename, type(e).__name__)
    _check_reachable()
    return Path(hf_hub_download(repo_id, filename))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _reason(e: Exception) -> str:
    """Why a hub lookup failed, in a few words."""
    if isinstance(e, _Unreachable):
        return f"cannot reach the Hugging Face hub: {e}"
    if _offline():
        return "HF_HUB_OFFLINE is set and it is not in the Hugging Face cache"
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def _weights_help(cfg: ModelCfg, reason: str) -> str:
    pre = cfg.pretrained
    assert pre is not None and pre.hf_hub_id and pre.filename
    return (
        f"weights for {cfg.name} not found ({reason}).\n"
        f"Get them (about 3 GB for 1B, 25 GB for 6B; the repository is gated: accept the licence on "
        f"https://huggingface.co/{pre.hf_hub_id} and log in with `hf auth login` or set HF_TOKEN):\n"
        f"    vidsearch weights download {cfg.name}\n"
        f"(the same as `hf download {pre.hf_hub_id} {pre.filename}` plus the tokenizer vocabulary), "
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
        raise WeightsNotFoundError(_weights_help(cfg, _reason(e))) from e


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
            f"tokenizer vocabulary for {cfg.name} not found ({_reason(e)}). Download it with\n"
            f"    vidsearch weights download {cfg.name}      (or: hf download {spec} vocab.txt)\n"
            f"or pass --tokenizer PATH / set VIDSEARCH_TOKENIZER to a vocab.txt (or a folder holding it)."
        ) from e


# ----------------------------------------------------------------------------- local / download
@dataclass(frozen=True)
class LocalWeights:
    """Where a model's weights and vocabulary are on this machine (nothing is downloaded)."""

    weights: Path | None        # None: not found locally
    weights_origin: str         # "--checkpoint", an env var, "shipped with vidsearch", "HF cache", ...
    vocab: Path | None
    vocab_origin: str

    @property
    def present(self) -> bool:
        return self.weights is not None and self.vocab is not None


def _cached(repo_id: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename)
    return Path(found) if isinstance(found, str) else None


def local_weights(cfg: ModelCfg) -> LocalWeights:
    """Find ``cfg``'s weights and vocabulary without any network access (``weights list``)."""
    weights: Path | None = None
    origin = "not found"
    for var in (model_env_var(cfg.name), "VIDSEARCH_WEIGHTS"):
        if os.environ.get(var):
            try:
                weights, origin = _local(os.environ[var], cfg, var), f"${var}"
            except WeightsNotFoundError:
                origin = f"${var} points at nothing usable"
            break
    pre = cfg.pretrained
    if weights is None and not origin.startswith("$"):
        if cfg.pretrained is None:
            origin = "random weights (test model): nothing to download"
        elif pre is not None and (pre.filename or "").startswith("builtin:"):
            p = ASSETS_DIR / (pre.filename or "").removeprefix("builtin:")
            weights, origin = (p, "shipped with vidsearch") if p.is_file() else (None, "missing from the install")
        elif pre is not None and pre.hf_hub_id and pre.filename:
            weights = _cached(pre.hf_hub_id, pre.filename)
            origin = "HF cache" if weights else f"not downloaded: vidsearch weights download {cfg.name}"
    spec = cfg.encoder.text.tokenizer
    vocab: Path | None
    if os.environ.get("VIDSEARCH_TOKENIZER"):
        try:
            vocab, vorigin = resolve_vocab(cfg), "$VIDSEARCH_TOKENIZER"
        except WeightsNotFoundError:
            vocab, vorigin = None, "$VIDSEARCH_TOKENIZER points at nothing usable"
    elif spec.startswith("builtin:"):
        vocab, vorigin = ASSETS_DIR / spec.removeprefix("builtin:"), "shipped with vidsearch"
    else:
        vocab = _cached(spec, "vocab.txt")
        vorigin = "HF cache" if vocab else f"not downloaded: vidsearch weights download {cfg.name}"
    if cfg.pretrained is None:  # test models: random weights are "present"
        return LocalWeights(None, origin, vocab, vorigin)
    return LocalWeights(weights, origin, vocab, vorigin)


def _download_error(cfg: ModelCfg, repo_id: str, filename: str, e: Exception) -> WeightsNotFoundError:
    """One clear message per way a hub download fails, naming what works with this install."""
    from huggingface_hub import errors

    page = f"https://huggingface.co/{repo_id}"
    manual = f"`hf download {repo_id} {filename}`"
    if _offline() or isinstance(e, errors.OfflineModeIsEnabled):
        msg = (f"HF_HUB_OFFLINE is set and {repo_id}/{filename} is not in the Hugging Face cache: unset "
               f"HF_HUB_OFFLINE to download it, or copy it here from a machine with network ({manual} there) "
               f"and pass --checkpoint PATH or set {model_env_var(cfg.name)}")
    elif isinstance(e, errors.GatedRepoError):
        from huggingface_hub import get_token

        who = ("you are not logged in: run `hf auth login` (or set HF_TOKEN)" if get_token() is None
               else "your token has no access yet")
        msg = (f"{repo_id} is gated and {who}; accept its licence at {page} with the same account, then run "
               f"`vidsearch weights download {cfg.name}` again")
    elif isinstance(e, errors.RepositoryNotFoundError):
        msg = (f"{repo_id} is not visible to you (not logged in? run `hf auth login` or set HF_TOKEN; "
               f"the page is {page})")
    elif isinstance(e, (_Unreachable, errors.LocalEntryNotFoundError)):  # the latter: no network
        msg = (f"cannot reach the Hugging Face hub to download {repo_id}/{filename} ({e}); with network "
               f"run `vidsearch weights download {cfg.name}` or {manual}, or pass --checkpoint PATH")
    elif isinstance(e, errors.EntryNotFoundError):
        msg = f"{repo_id} has no file {filename} (the repository changed?); see {page}"
    else:
        msg = f"downloading {repo_id}/{filename} failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
    return WeightsNotFoundError(msg)


class _Unreachable(OSError):
    """The hub's host cannot be resolved or connected to."""


def _check_reachable(timeout: float = 5.0) -> None:
    """Fail in seconds when the hub cannot be reached: huggingface_hub retries a failed request
    five times with back-off (30 s and a screen of warnings before the same conclusion)."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or os.environ.get("ALL_PROXY"):
        return  # through a proxy: the direct connection says nothing
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise _Unreachable(f"{host}:{port}: {e.strerror or e}") from None


def download_weights(cfg: ModelCfg) -> tuple[Path, Path]:
    """Fetch ``cfg``'s checkpoint and tokenizer vocabulary into the Hugging Face cache.

    Files already in the cache are not fetched again. The checkpoint's SHA-256 is checked when
    the registry knows it.

    Returns:
        (weights file, vocab.txt) in the cache.

    Raises:
        WeightsNotFoundError: the model has nothing to download, or the hub refused (gated repo,
            not logged in, offline, unreachable): the message says what to do.
        CheckpointError: the downloaded file has another SHA-256 than the registry's.
    """
    from huggingface_hub import hf_hub_download

    pre = cfg.pretrained
    if pre is None or not pre.hf_hub_id or not pre.filename or pre.filename.startswith("builtin:"):
        what = "random weights (a test model)" if pre is None else "weights shipped with vidsearch"
        raise WeightsNotFoundError(f"{cfg.name} has {what}: there is nothing to download")
    out: list[Path] = []
    spec = cfg.encoder.text.tokenizer
    wanted = [(pre.hf_hub_id, pre.filename)] + ([] if spec.startswith("builtin:") else [(spec, "vocab.txt")])
    for repo_id, filename in wanted:
        try:
            try:
                out.append(Path(hf_hub_download(repo_id, filename, local_files_only=True)))
                _logger.info("%s/%s is in the HF cache already", repo_id, filename)
                continue
            except Exception:  # noqa: BLE001 - not cached (or offline): the online try says why
                if _offline():
                    raise
            _check_reachable()
            out.append(Path(hf_hub_download(repo_id, filename)))
        except Exception as e:  # noqa: BLE001 - every hub failure becomes one actionable message
            raise _download_error(cfg, repo_id, filename, e) from e
    if pre.sha256:
        from .digests import checkpoint_sha256
        from .errors import CheckpointError

        digest = checkpoint_sha256(out[0])
        if digest != pre.sha256.lower():
            raise CheckpointError(f"{out[0]}: SHA-256 {digest}, the registry expects {pre.sha256}; delete it "
                                  f"and download again")
    vocab = out[1] if len(out) > 1 else ASSETS_DIR / spec.removeprefix("builtin:")
    return out[0], vocab
