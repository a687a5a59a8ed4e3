"""Zero-shot tags: each clip's most likely labels from a label list, by text-video similarity.

The classic zero-shot use of a CLIP-style model (CLIP §3.1.4, InternVideo2's zero-shot action
recognition): every label becomes a text embedding, and a clip's tags are the labels whose
embeddings are closest to the clip's.

- **Prompt ensembling.** A bare label ("abseiling") is a poor sentence; each label is written into
  several sentences (:data:`VIDEO_TEMPLATES`, the "a video of ..." half of CLIP's Kinetics-700
  prompt list, github.com/openai/CLIP data/prompts.md), each encoded and L2-normalised, then
  averaged and normalised again (CLIP's ``zeroshot_classifier``).
- **Calibration against the label set.** A clip's score for a label is the softmax over all labels
  of ``LOGIT_SCALE`` x cosine: the share of the model's belief that this label, rather than any
  other of the set, describes the clip. The scale is 100, what InternVideo2's own zero-shot demo
  uses (``(100.0 * video_features @ text_features.T).softmax(dim=-1)``) and the cap of CLIP's
  learned logit scale. Measured on the demo library (``bench/tags_calibration.py``: 440 clips, 42
  "colour shape" labels, default templates): with one threshold for all labels, raw cosine
  reaches a macro-F1 of 0.26, per-label z-scores of the cosine over the library's clips 0.27, the
  softmax 0.45 (0.46 / 0.91 / 0.26 vs cosine 0.34 / 0.76 / 0.22 for shape, colour and motion
  labels): a ``--min-score`` means far more nearly the same for every label after the softmax.
  The softmax depends on the clip and the label set only, never on the rest of the library, so
  tagging new clips later gives the same scores (incremental runs). A score does depend on the
  label set: the same clip scores lower for "red circle" when "orange circle" is also a label.

The unit works on arrays (clip embeddings in, Arrow rows out); the catalog table and the
``vidsearch tag`` command build on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]

_logger = logging.getLogger(__name__)

__all__ = [
    "BUILTIN_LABELS",
    "LOGIT_SCALE",
    "TAGS_SCHEMA",
    "VIDEO_TEMPLATES",
    "LabelError",
    "ZeroShotTagger",
    "builtin_labels",
    "check_labels",
    "check_templates",
    "encode_labels",
    "label_scores",
    "read_labels",
    "tag_table",
    "tagger_fingerprint",
    "top_labels",
]

# The "a video of" prompts of CLIP's Kinetics-700 list.
VIDEO_TEMPLATES: tuple[str, ...] = (
    "a video of {}.",
    "a video of a person {}.",
    "a video of a person using {}.",
    "a video of a person doing {}.",
    "a video of a person during {}.",
    "a video of a person performing {}.",
    "a video of a person practicing {}.",
)
LOGIT_SCALE = 100.0
BUILTIN_LABELS = ("kinetics400",)
MAX_LABELS = 20_000
MAX_LABEL_CHARS = 200

TAGS_SCHEMA = pa.schema([
    pa.field("clip_id", pa.int64(), nullable=False),
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("label", pa.string(), nullable=False),
    pa.field("score", pa.float32(), nullable=False),   # softmax over the label set, 0..1
    pa.field("rank", pa.int16(), nullable=False),      # 1 = the clip's best label
])


class LabelError(ValueError):
    """A label list or template that cannot be used."""


def check_labels(labels: Sequence[str], source: str = "labels") -> list[str]:
    """Labels as the tagger uses them: whitespace collapsed, ``#`` comments and blanks dropped,
    duplicates kept once (a warning).

    Raises:
        LabelError: no labels, too many, one too long or holding control characters.
    """
    out: list[str] = []
    seen: set[str] = set()
    for i, raw in enumerate(labels, 1):
        label = " ".join(raw.split())  # tabs, runs of spaces, stray CR
        if not label or label.startswith("#"):
            continue
        if len(label) > MAX_LABEL_CHARS:
            raise LabelError(f"{source}: label {i} is longer than {MAX_LABEL_CHARS} characters")
        if not label.isprintable():
            raise LabelError(f"{source}: label {i} holds control characters")
        if label in seen:
            _logger.warning("%s: label %r given twice; kept once", source, label)
            continue
        seen.add(label)
        out.append(label)
    if not out:
        raise LabelError(f"{source}: no labels (one per line; '#' starts a comment)")
    if len(out) > MAX_LABELS:
        raise LabelError(f"{source}: {len(out)} labels; at most {MAX_LABELS}")
    return out


def read_labels(path: str | os.PathLike[str]) -> list[str]:
    """Labels from a UTF-8 text file: one per line; blank lines and ``#`` comments skipped,
    whitespace collapsed, duplicates kept once.

    Raises:
        LabelError: unreadable, not UTF-8 text, no labels, too many, or a label too long.
    """
    name = os.fsdecode(path)
    try:
        with open(path, "rb") as f:
            data = f.read(64 * 1024 * 1024 + 1)
    except OSError as e:
        raise LabelError(f"{name}: {e.strerror or e}") from None
    if len(data) > 64 * 1024 * 1024:
        raise LabelError(f"{name}: over 64 MiB; not a label list")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise LabelError(f"{name}: not UTF-8 text (byte {e.start})") from None
    if "\x00" in text:
        raise LabelError(f"{name}: binary file, not a label list")
    return check_labels(text.splitlines(), name)


def builtin_labels(name: str = "kinetics400") -> list[str]:
    """A label list shipped with vidsearch: ``kinetics400`` (the 400 Kinetics-400 classes)."""
    if name not in BUILTIN_LABELS:
        raise LabelError(f"no builtin label list {name!r}; builtin: {', '.join(BUILTIN_LABELS)}")
    text = resources.files("vidsearch.search").joinpath("labels", f"{name}.txt").read_text("utf-8")
    return check_labels(text.splitlines(), f"builtin:{name}")


def check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    """Prompt templates, each with ``{}`` exactly once (LabelError otherwise)."""
    if not templates:
        raise LabelError("no prompt templates")
    for t in templates:
        if t.count("{}") != 1 or t.replace("{}", "").count("{") or t.replace("{}", "").count("}"):
            raise LabelError(f"template {t!r} must hold '{{}}' exactly once (where the label goes)")
    return tuple(templates)


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def encode_labels(encode_text: Callable[[list[str]], Any], labels: Sequence[str],
                  templates: Sequence[str] = VIDEO_TEMPLATES, batch_size: int = 256) -> np.ndarray:
    """Prompt-ensembled label embeddings, ``(len(labels), D)`` float32, L2-normalised.

    Args:
        encode_text: the model's text encoder (``model.encode_text``): texts -> ``(B, D)``.
        labels: the labels.
        templates: sentences with ``{}`` where the label goes.
        batch_size: texts per call of ``encode_text``.
    """
    templates = check_templates(templates)
    texts = [t.format(label) for label in labels for t in templates]
    parts = [_normalise(_as_array(encode_text(texts[i:i + batch_size]))) for i in range(0, len(texts), batch_size)]
    emb = np.concatenate(parts).reshape(len(labels), len(templates), -1)  # (L, T, D)
    return _normalise(emb.mean(axis=1)).astype(np.float32)


def label_scores(clip_emb: np.ndarray, label_emb: np.ndarray, logit_scale: float = LOGIT_SCALE) -> np.ndarray:
    """``(N, L)`` softmax over labels of ``logit_scale`` x cosine (rows sum to 1)."""
    logits = logit_scale * (_normalise(_as_array(clip_emb)) @ label_emb.T)
    logits -= logits.max(axis=1, keepdims=True)  # stable exp
    p = np.exp(logits)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def top_labels(scores: np.ndarray, top_k: int, min_score: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Each row's best ``top_k`` columns, best first: ``(indices, scores)``, both ``(N, k)``.

    Entries below ``min_score`` have index -1.
    """
    n, n_labels = scores.shape
    k = min(top_k, n_labels)
    if k <= 0:
        return np.zeros((n, 0), np.int64), np.zeros((n, 0), np.float32)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n_labels else np.tile(np.arange(n_labels), (n, 1))
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    idx = np.where(vals >= min_score, idx, -1)
    return idx, vals


def tag_table(clip_ids: np.ndarray, video_ids: Sequence[str], labels: Sequence[str], scores: np.ndarray,
              top_k: int = 5, min_score: float = 0.0) -> pa.Table:
    """The ``tags`` rows (:data:`TAGS_SCHEMA`) of clips whose label scores are ``scores``."""
    idx, vals = top_labels(scores, top_k, min_score)
    keep = idx >= 0
    rows, cols = np.nonzero(keep)
    label_arr = np.asarray(labels, dtype=object)
    vid = np.asarray(video_ids, dtype=object)
    return pa.table({
        "clip_id": pa.array(np.asarray(clip_ids, dtype=np.int64)[rows], pa.int64()),
        "video_id": pa.array(vid[rows], pa.string()),
        "label": pa.array(label_arr[idx[rows, cols]], pa.string()),
        "score": pa.array(vals[rows, cols], pa.float32()),
        "rank": pa.array(cols + 1, pa.int16()),
    }, schema=TAGS_SCHEMA)


def tagger_fingerprint(labels: Sequence[str], templates: Sequence[str], logit_scale: float,
                       model_fingerprint: str) -> str:
    """What label scores depend on (labels, templates, scale, model), as a short hex hash."""
    key = json.dumps({"labels": list(labels), "templates": list(templates), "scale": float(logit_scale),
                      "model": model_fingerprint}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class ZeroShotTagger:
    """Labels encoded once, then any number of clips tagged.

    ``fingerprint`` identifies what the scores depend on (labels, templates, scale, model): tags
    stored with one fingerprint stay valid for new clips; a different one means re-tagging all.
    ``embeddings`` may be given (a cache of an earlier encoding with the same fingerprint); then
    ``encode_text`` is not called.
    """

    def __init__(self, encode_text: Callable[[list[str]], Any] | None, labels: Sequence[str], *,
                 templates: Sequence[str] = VIDEO_TEMPLATES, logit_scale: float = LOGIT_SCALE,
                 model_fingerprint: str = "", embeddings: np.ndarray | None = None) -> None:
        if not np.isfinite(logit_scale) or logit_scale <= 0:
            raise LabelError(f"logit scale must be positive, got {logit_scale!r}")
        self.labels = check_labels(list(labels), "labels")
        self.templates = check_templates(templates)
        self.logit_scale = float(logit_scale)
        self.fingerprint = tagger_fingerprint(self.labels, self.templates, self.logit_scale, model_fingerprint)
        if embeddings is not None:
            emb = np.asarray(embeddings, dtype=np.float32)
            if emb.ndim != 2 or emb.shape[0] != len(self.labels) or not np.isfinite(emb).all():
                raise LabelError(f"label embeddings of shape {emb.shape} do not fit {len(self.labels)} labels")
            # As encode_labels left them (bit for bit: the same scores as the run that encoded them),
            # normalised only when they are not already.
            norms = np.linalg.norm(emb, axis=1)
            self.embeddings = emb if np.allclose(norms, 1.0, atol=1e-4) else _normalise(emb)
        elif encode_text is None:
            raise LabelError("no text encoder and no label embeddings")
        else:
            self.embeddings = encode_labels(encode_text, self.labels, self.templates)

    def scores(self, clip_emb: np.ndarray) -> np.ndarray:
        """``(N, L)`` calibrated scores of clips (embeddings of the same model)."""
        if clip_emb.ndim != 2 or clip_emb.shape[1] != self.embeddings.shape[1]:
            raise LabelError(f"clip embeddings of shape {clip_emb.shape} do not match the text "
                             f"embeddings (dim {self.embeddings.shape[1]}): another model?")
        return label_scores(clip_emb, self.embeddings, self.logit_scale)

    def tag(self, clip_emb: np.ndarray, clip_ids: np.ndarray, video_ids: Sequence[str], *, top_k: int = 5,
            min_score: float = 0.0, batch_size: int = 8192) -> pa.Table:
        """Tag rows of the clips, computed ``batch_size`` clips at a time (memory: batch x labels)."""
        if top_k < 1:
            raise LabelError(f"--top must be at least 1, got {top_k}")
        if not 0.0 <= min_score <= 1.0:
            raise LabelError(f"--min-score is a probability between 0 and 1, got {min_score}")
        if not len(clip_emb) == len(clip_ids) == len(video_ids):
            raise ValueError("clip_emb, clip_ids and video_ids differ in length")
        parts = [tag_table(clip_ids[i:i + batch_size], video_ids[i:i + batch_size], self.labels,
                           self.scores(clip_emb[i:i + batch_size]), top_k, min_score)
                 for i in range(0, len(clip_emb), batch_size)]
        return pa.concat_tables(parts) if parts else TAGS_SCHEMA.empty_table()
