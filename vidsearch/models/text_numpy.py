"""Query embeddings without torch: the InternVideo2 text tower in NumPy, for one-shot searches.

A ``vidsearch search`` process embeds one query. With torch that costs its import alone (about
2.3 s of CPU on the 2-core development machine, more than the rest of the search together);
this module imports NumPy, ``tokenizers`` and the standard library only. It runs the same
network as ``model.InternVideo2Model.encode_text`` (BERT's first ``fusion_layer`` layers, the
[CLS] feature, ``text_proj``, L2 normalisation) in float32 with the same operation order, so the
embeddings agree with torch's to float32 rounding (a unit test bounds the difference at 1e-5
and checks the same search ranking); they are not bit-identical (BLAS and erf differ in the last
bits). Where bit-identity matters, use ``create_text_encoder`` (torch).

Weights: a safetensors checkpoint (the demo model's, or a ``vidsearch weights convert`` output)
is read directly (memory-mapped). Anything else (the official ``.pt``, which only torch can read
safely, or a random-init test model) is converted once with torch into a text-tower file in the
user cache folder (``$VIDSEARCH_CACHE_DIR``/``~/.cache/vidsearch/text-towers/<fingerprint>
.safetensors``), which later searches read without torch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vidsearch.schemas.model_config import ModelCfg

from .digests import checkpoint_sha256, user_cache_dir
from .errors import CheckpointError, WeightsNotFoundError
from .hub import resolve_checkpoint, resolve_vocab
from .registry import compute_fingerprint, get_model_config
from .wordpiece import WordPieceTokenizer

_logger = logging.getLogger(__name__)

__all__ = ["NumpyTextEncoder", "create_numpy_text_encoder", "erf"]

_CACHE_FORMAT = "vidsearch-text-tower-1"


# ----------------------------------------------------------------------------- erf
# NumPy has no erf. Exact GELU needs it to float32 precision: piecewise cubic Hermite
# interpolation of math.erf on a 1/128 grid over [0, 6] (erf and its derivative are known
# exactly at the knots); the interpolation error is below 1e-10 (tested against math.erf), far
# under float32 rounding. Past 6, erf is 1 to double precision.
_ERF_STEP = 1.0 / 128
_ERF_X = np.arange(0.0, 6.0 + _ERF_STEP / 2, _ERF_STEP)
_ERF_F = np.array([math.erf(x) for x in _ERF_X])
_ERF_D = 2.0 / math.sqrt(math.pi) * np.exp(-_ERF_X * _ERF_X) * _ERF_STEP  # derivative x step


def erf(z: np.ndarray) -> np.ndarray:
    """Error function of a float array, computed in float64 (accurate to about 1e-10)."""
    z = np.asarray(z, dtype=np.float64)
    a = np.minimum(np.abs(z), 6.0)
    i = np.minimum((a / _ERF_STEP).astype(np.int64), len(_ERF_X) - 2)
    t = a / _ERF_STEP - i
    t2 = t * t
    t3 = t2 * t
    f = ((2 * t3 - 3 * t2 + 1) * _ERF_F[i] + (t3 - 2 * t2 + t) * _ERF_D[i]
         + (3 * t2 - 2 * t3) * _ERF_F[i + 1] + (t3 - t2) * _ERF_D[i + 1])
    return np.copysign(f, z)


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, ``0.5 x (1 + erf(x / sqrt 2))`` (config_bert_large.json's "gelu")."""
    x64 = x.astype(np.float64)
    return (0.5 * x64 * (1.0 + erf(x64 * (1.0 / math.sqrt(2.0))))).astype(np.float32)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True, dtype=np.float64)
    xc = x.astype(np.float64) - mu
    var = (xc * xc).mean(-1, keepdims=True)
    return (xc / np.sqrt(var + eps)).astype(np.float32) * w + b


# ----------------------------------------------------------------------------- safetensors
_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": np.uint16,
              "I64": np.int64, "I32": np.int32}


def _read_safetensors(path: Path, wanted: Any) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors whose name ``wanted(name)`` accepts, as float32 / ints, and the metadata).

    Tensors are memory-mapped (read when used) from the file's data section; the header is
    validated (offsets inside the file, sizes matching shapes) before anything is mapped.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointError(f"{path}: not a safetensors file")
        n = struct.unpack("<Q", head)[0]
        if n > min(size - 8, 100 << 20):
            raise CheckpointError(f"{path}: safetensors header of {n} bytes")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise CheckpointError(f"{path}: unreadable safetensors header ({e})") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: unreadable safetensors header")
    meta = header.pop("__metadata__", None) or {}
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if size > 8 + n else np.zeros(0, np.uint8)
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if not wanted(name):
            continue
        try:
            dtype = _ST_DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            lo, hi = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: tensor {name!r}: bad header entry ({e})") from e
        count = math.prod(shape)
        if not 0 <= lo <= hi <= len(data) or hi - lo != count * np.dtype(dtype).itemsize:
            raise CheckpointError(f"{path}: tensor {name!r} lies outside the file or has the wrong size")
        arr = data[lo:hi].view(dtype).reshape(shape)
        if info["dtype"] == "BF16":  # bfloat16 = the high half of a float32
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = arr
    return out, {str(k): str(v) for k, v in meta.items()}


# ----------------------------------------------------------------------------- the encoder
class NumpyTextEncoder:
    """The text tower of an InternVideo2 model in NumPy (float32). Build it with
    ``create_numpy_text_encoder``; ``encode_text`` matches the torch model's to float32 rounding."""

    def __init__(self, cfg: ModelCfg, tensors: dict[str, np.ndarray], tokenizer: WordPieceTokenizer,
                 weights_id: str, weights_source: str) -> None:
        t = cfg.encoder.text
        self.cfg = cfg
        self.name = cfg.name
        self.embed_dim = cfg.encoder.embed_dim
        self.is_test_model = cfg.is_test_model
        self.tokenizer = tokenizer
        self.weights_id = weights_id
        self.weights_source = weights_source
        self._eps = t.layer_norm_eps
        self._heads = t.num_attention_heads
        want = _expected_shapes(cfg)
        missing = sorted(set(want) - set(tensors))
        bad = [f"{k}: {tuple(tensors[k].shape)} vs {want[k]}" for k in sorted(set(want) & set(tensors))
               if tuple(tensors[k].shape) != want[k]]
        if missing or bad:
            raise CheckpointError(f"{weights_source} does not fit the text tower of {cfg.name}: missing "
                                  f"{missing[:6]}, shape mismatches {bad[:4]}")

        def w(k: str) -> np.ndarray:
            return np.asarray(tensors[k], dtype=np.float32)

        def lin(k: str) -> tuple[np.ndarray, np.ndarray]:  # (in, out) for x @ W, and the bias
            # A transposed view, not a copy: BLAS reads it as is, and a memory-mapped checkpoint
            # stays unread until a query needs it (copying the 1B tower's 1.3 GB took 13 s here).
            return w(f"{k}.weight").T, w(f"{k}.bias")

        e = "text_encoder.embeddings."
        self._word = w(e + "word_embeddings.weight")
        self._pos = w(e + "position_embeddings.weight")
        self._type0 = w(e + "token_type_embeddings.weight")[0]
        self._ln0 = (w(e + "LayerNorm.weight"), w(e + "LayerNorm.bias"))
        self._layers = []
        for i in range(t.fusion_layer):
            p = f"text_encoder.encoder.layer.{i}."
            self._layers.append({
                "q": lin(p + "attention.self.query"), "k": lin(p + "attention.self.key"),
                "v": lin(p + "attention.self.value"), "o": lin(p + "attention.output.dense"),
                "ln1": (w(p + "attention.output.LayerNorm.weight"), w(p + "attention.output.LayerNorm.bias")),
                "i": lin(p + "intermediate.dense"), "out": lin(p + "output.dense"),
                "ln2": (w(p + "output.LayerNorm.weight"), w(p + "output.LayerNorm.bias")),
            })
        self._proj = lin("text_proj")

    @property
    def fingerprint(self) -> str:
        """The embedding space: equal to the torch model's for the same weights."""
        return compute_fingerprint(self.cfg, self.weights_id)

    @property
    def test_model_warning(self) -> str | None:
        """One line for search warnings when this is a random-weight test model, else None."""
        if not self.is_test_model:
            return None
        return (f"{self.name} is a TEST MODEL with random weights: its results mean nothing; use a real model "
                "(vidsearch weights list) for search")

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray:
        """Embed texts: [CLS] of BERT layer fusion_layer-1 -> text_proj -> L2 normalise.

        Returns:
            float32 (len(texts), embed_dim).
        """
        ids, mask = self.tokenizer.encode(texts)  # (B, L) each
        if not len(ids):
            return np.zeros((0, self.embed_dim), np.float32)
        # A few texts are small matrix products: BLAS threads only add their wake-ups, which on a
        # busy 2-core machine cost ~1 s per query (measured: 1.0 s with OpenBLAS's 2 threads, 20 ms
        # with one, for the demo model).
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # no stubs

        with threadpool_limits(limits=1 if ids.size <= 512 else None, user_api="blas"):
            return self._encode(ids, mask, normalize)

    def _encode(self, ids: np.ndarray, mask: np.ndarray, normalize: bool) -> np.ndarray:
        B, L = ids.shape
        x = (self._word[ids] + self._type0) + self._pos[:L]  # (B, L, h): word + type, then position
        x = _layer_norm(x, *self._ln0, self._eps)
        # Key mask as in the torch model: padded keys get no weight (exp(-inf) = 0).
        bias = np.where(mask.astype(bool), 0.0, -np.inf).astype(np.float32)[:, None, None, :]  # (B, 1, 1, L)
        H = self._heads
        hd = x.shape[-1] // H
        scale = np.float32(hd**-0.5)
        for layer in self._layers:
            def heads(k: str, x: np.ndarray = x, layer: dict[str, Any] = layer) -> np.ndarray:
                wt, b = layer[k]
                return (x @ wt + b).reshape(B, L, H, hd).transpose(0, 2, 1, 3)  # (B, H, L, hd)

            q, k, v = heads("q"), heads("k"), heads("v")
            s = (q @ k.transpose(0, 1, 3, 2)) * scale + bias  # (B, H, L, L)
            s = np.exp(s - s.max(-1, keepdims=True))
            a = (s / s.sum(-1, keepdims=True)) @ v  # (B, H, L, hd)
            a = a.transpose(0, 2, 1, 3).reshape(B, L, H * hd)  # (B, L, h)
            wt, b = layer["o"]
            x = _layer_norm(a @ wt + b + x, *layer["ln1"], self._eps)
            wt, b = layer["i"]
            h = _gelu(x @ wt + b)  # (B, L, intermediate)
            wt, b = layer["out"]
            x = _layer_norm(h @ wt + b + x, *layer["ln2"], self._eps)
        wt, b = self._proj
        emb = x[:, 0] @ wt + b  # (B, embed_dim)
        if normalize:
            emb = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), np.float32(1e-12))
        return emb.astype(np.float32)


def _expected_shapes(cfg: ModelCfg) -> dict[str, tuple[int, ...]]:
    t, d = cfg.encoder.text, cfg.encoder.embed_dim
    h, i = t.hidden_size, t.intermediate_size
    e = "text_encoder.embeddings."
    out: dict[str, tuple[int, ...]] = {
        e + "word_embeddings.weight": (t.vocab_size, h),
        e + "position_embeddings.weight": (t.max_position_embeddings, h),
        e + "token_type_embeddings.weight": (t.type_vocab_size, h), e + "LayerNorm.weight": (h,),
        e + "LayerNorm.bias": (h,), "text_proj.weight": (d, h), "text_proj.bias": (d,),
    }
    for n in range(t.fusion_layer):
        p = f"text_encoder.encoder.layer.{n}."
        for lin, (o, k) in {"attention.self.query": (h, h), "attention.self.key": (h, h),
                            "attention.self.value": (h, h), "attention.output.dense": (h, h),
                            "intermediate.dense": (i, h), "output.dense": (h, i)}.items():
            out[p + lin + ".weight"], out[p + lin + ".bias"] = (o, k), (o,)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            out[p + ln + ".weight"], out[p + ln + ".bias"] = (h,), (h,)
    return out


def _is_text_key(k: str) -> bool:
    return k.startswith(("text_encoder.", "text_proj."))


def _text_tensors_from_safetensors(path: Path, cfg: ModelCfg) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    tensors, meta = _read_safetensors(path, _is_text_key)
    if any(k.startswith("text_encoder.bert.") for k in tensors):  # the official key layout
        tensors = {("text_encoder." + k.removeprefix("text_encoder.bert.")
                    if k.startswith("text_encoder.bert.") else k): v for k, v in tensors.items()}
    want = _expected_shapes(cfg)
    return {k: v for k, v in tensors.items() if k in want}, meta


def _build_cache(cfg: ModelCfg, ckpt: Path | None, vocab: Path, fingerprint: str, target: Path,
                 weights_sha256: str | None, overrides: dict[str, Any]) -> None:
    """Convert the text tower once with torch (``create_text_encoder``) into ``target``."""
    from safetensors.torch import save_file

    from vidsearch import files

    from .factory import create_text_encoder

    kw: dict[str, Any] = {"tokenizer": str(vocab), "weights_sha256": weights_sha256}
    if ckpt is not None:
        kw["checkpoint"] = str(ckpt)
    else:
        kw["pretrained"] = False
    model = create_text_encoder(cfg.name, **kw, **overrides)
    if model.fingerprint != fingerprint:
        raise CheckpointError(f"{cfg.name}: text tower fingerprint {model.fingerprint}, expected {fingerprint}")
    tensors = {k: v.detach().float().contiguous() for k, v in model.state_dict().items() if _is_text_key(k)}
    target.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_output(target) as tmp:
        save_file(tensors, str(tmp), metadata={"format": _CACHE_FORMAT, "fingerprint": fingerprint,
                                               "weights_id": model.weights_id, "model": cfg.name})
    _logger.info("cached the text tower of %s in %s", cfg.name, target)


def create_numpy_text_encoder(
    name: str,
    checkpoint: str | os.PathLike[str] | None = None,
    tokenizer: str | os.PathLike[str] | None = None,
    *,
    pretrained: bool = True,
    weights_sha256: str | None = None,
    **overrides: Any,
) -> NumpyTextEncoder:
    """The text tower of ``name`` in NumPy (see the module docstring); arguments as ``create_model``.

    The first use of a non-safetensors checkpoint (or a test model) converts its text tower with
    torch into the user cache folder; later calls import no torch.

    Raises:
        ValueError: unknown name or override.
        WeightsNotFoundError: weights or vocabulary not found (the message says how to get them).
        CheckpointError: the weights have another SHA-256 than required, or do not fit.
    """
    cfg = get_model_config(name, **overrides)
    vocab = resolve_vocab(cfg, tokenizer)
    t = cfg.encoder.text
    tok = WordPieceTokenizer(vocab, t.context_length, t.do_lower_case)
    if tok.vocab_size != t.vocab_size:
        raise ValueError(f"tokenizer {vocab} has {tok.vocab_size} tokens but {name} expects {t.vocab_size}")
    ckpt: Path | None = None
    if checkpoint is not None or (pretrained and cfg.pretrained is not None):
        ckpt = resolve_checkpoint(cfg, checkpoint)
    elif pretrained and cfg.pretrained is None and not cfg.is_test_model:
        raise WeightsNotFoundError(f"{name} has no pretrained entry; pass checkpoint=... or pretrained=False")
    if ckpt is None:
        weights_id, source = f"seed:{cfg.encoder.init_seed}", "random init"
    else:
        digest = checkpoint_sha256(ckpt)
        expected = weights_sha256 or (cfg.pretrained.sha256 if cfg.pretrained is not None else None)
        if expected is not None and digest.lower() != expected.lower():
            raise CheckpointError(f"SHA-256 of {ckpt} is {digest}, expected {expected}: the file is corrupt or "
                                  "not the published one; download it again")
        weights_id, source = f"sha256:{digest}", str(ckpt)
    if ckpt is not None and ckpt.suffix == ".safetensors":
        tensors, meta = _text_tensors_from_safetensors(ckpt, cfg)
        if meta.get("format") == "vidsearch" and meta.get("source_sha256"):
            weights_id = f"sha256:{meta['source_sha256']}"  # a conversion keeps its source's identity
        return NumpyTextEncoder(cfg, tensors, tok, weights_id, source)
    fingerprint = compute_fingerprint(cfg, weights_id)
    cached = user_cache_dir() / "text-towers" / f"{fingerprint}.safetensors"
    if cached.is_file():
        try:
            tensors, meta = _read_safetensors(cached, _is_text_key)
            if meta.get("format") == _CACHE_FORMAT and meta.get("fingerprint") == fingerprint:
                return NumpyTextEncoder(cfg, tensors, tok, weights_id, source)
        except CheckpointError as e:
            _logger.warning("text tower cache %s unusable (%s); converting again", cached, e)
    _build_cache(cfg, ckpt, vocab, fingerprint, cached, weights_sha256, overrides)
    tensors, _ = _read_safetensors(cached, _is_text_key)
    return NumpyTextEncoder(cfg, tensors, tok, weights_id, source)
