"""Typed configuration of on-screen text reading (``ingest --ocr``); see ``pipeline/ocr.py``.

The defaults come from measurements on this project's test frames (``bench/ocr_resolution.py``,
``bench/ocr_speed.py``; figures in docs/ARCHITECTURE.md, "Screen text").
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

# The fields that change what a video's screen_text rows are (not where or how fast they are
# computed): their hash is part of the OCR status's model id, so resume knows which videos were
# read with other settings (kept, unless `ingest --reocr`).
ROW_FIELDS = ("interval_s", "min_ocr_interval_s", "refresh_s", "long_side", "det_side", "use_cls",
              "min_confidence", "change_tile", "change_threshold", "merge_similarity", "max_gap_s")


@dataclass(frozen=True)
class OcrCfg:
    """How frames become ``screen_text`` rows. Fields that change the rows are recorded per run."""

    # Seconds between OCR candidate frames that the decode pass hands out. A text's start is
    # known to within one interval, so it bounds the time error of a hit; every candidate costs a
    # colour conversion + resize in the decoder and a cheap change check, not an OCR run.
    interval_s: float = 0.5
    # At most one OCR run per this many seconds, however much the picture changes (a camera pan
    # changes every candidate). Caps the OCR cost at 1 / min_ocr_interval_s frames per second of
    # video; a text shown for less than this between two runs can be missed.
    min_ocr_interval_s: float = 1.0
    # Re-read an unchanged picture after this many seconds anyway: bounds what a change the
    # change check missed (a few pixels of a scoreboard) can cost. 0 = never.
    refresh_s: float = 10.0
    # Long side (pixels) of the OCR frames the decoder hands out (never upscaled). Recognition
    # reads its crops from this frame: too small and small text is lost (measured: text 1.5% of
    # the frame height needs >= 1280 px), larger costs decode time and memory only.
    long_side: int = 1280
    # Long side of the text detector's input (rapidocr's Det.limit_side_len, limit_type "max").
    # Detection dominates the cost (~quadratic in this); it finds boxes, recognition still reads
    # them at ``long_side``.
    det_side: int = 960
    # Orientation classifier (text turned 180 degrees): off, as text in video is upright; on
    # costs ~5% more per frame.
    use_cls: bool = False
    # Recognition score below which a line is dropped (rapidocr's text_score). Lower finds more
    # small or blurred text and more garbage on textures.
    min_confidence: float = 0.6
    # Change check: the frame is compared with the last frame OCR read, on a half-size grey copy
    # (2x2 means) cut into tiles of ``change_tile`` pixels (8x8 pixels of the OCR frame: part of
    # one glyph of small text). Per tile the mean absolute difference; the frame changed when the
    # largest tile exceeds the median tile (the noise floor) by ``change_threshold`` grey levels.
    # Measured on this project's test frames: H.264 ringing around text between an I and a P
    # frame of the same slide up to 6.7, Gaussian noise of sigma 10 2.6; one changed digit of
    # 14-18 px text 22-26.
    change_tile: int = 4
    change_threshold: float = 12.0
    # Two readings are the same text when their normalised forms (case, accents, punctuation and
    # spacing removed) have at least this similarity (difflib ratio): OCR misreads a letter or
    # two between frames of the same caption.
    merge_similarity: float = 0.8
    # A text row stays open while it is missing from reads for at most this many seconds (a
    # detection that flickers for one frame does not split a caption into two rows).
    max_gap_s: float = 1.5
    # "auto" = onnxruntime's CUDA provider when it is installed (onnxruntime-gpu), else the CPU;
    # "cuda" without that provider is refused at setup.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # onnxruntime intra-op threads of one reader (0 = onnxruntime's default: all cores). Set it to
    # the cores an OCR actor owns, or actors oversubscribe the machine.
    threads: int = 0

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {self.interval_s}")
        if self.min_ocr_interval_s < 0 or self.refresh_s < 0 or self.max_gap_s < 0:
            raise ValueError("min_ocr_interval_s, refresh_s and max_gap_s must be >= 0")
        if not 160 <= self.long_side <= 4096 or not 160 <= self.det_side <= 4096:
            raise ValueError(f"long_side and det_side must be in 160..4096, got {self.long_side}, {self.det_side}")
        if not 0.0 <= self.min_confidence < 1.0:
            raise ValueError(f"min_confidence must be in [0, 1), got {self.min_confidence}")
        if not 0.0 < self.merge_similarity <= 1.0:
            raise ValueError(f"merge_similarity must be in (0, 1], got {self.merge_similarity}")
        if self.change_tile < 2 or self.change_threshold < 0:
            raise ValueError("change_tile must be >= 2 and change_threshold >= 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def settings(self) -> dict[str, Any]:
        """The fields that change the rows (:data:`ROW_FIELDS`), as recorded in a run's settings."""
        return {k: getattr(self, k) for k in ROW_FIELDS}

    def fingerprint(self) -> str:
        """8 hex digits of SHA-256 over :meth:`settings` (device and threads do not count)."""
        blob = json.dumps(self.settings(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:8]
