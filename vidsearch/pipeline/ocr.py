"""Screen-text stage: text in the picture (slides, signs, captions burnt in) -> ``screen_text`` rows.

OCR is rapidocr (https://github.com/RapidAI/RapidOCR) running PaddleOCR's PP-OCR models (Du et
al. 2020, "PP-OCR: A Practical Ultra Lightweight OCR System"; the wheel ships PP-OCRv6 small
detection and recognition and the v2 mobile orientation classifier as ONNX files) on onnxruntime.
The models are loaded from the wheel by explicit path, so nothing is downloaded at run time
(rapidocr would otherwise fetch a missing model or character list from the network).

Per video, in three parts that can run in different processes:

1. **Candidates** (in the decode pass, :func:`ocr_sample_indices`, :func:`ocr_frame_size`): one
   frame every ``OcrCfg.interval_s`` of the video, at ``OcrCfg.long_side``, taken from the same
   forward decode as the clip frames. The 224-px model input throws small text away; the OCR
   frames are converted and resized separately from the same decoded pictures.
2. **Change check** (:class:`ChangeGate`, numpy only, cheap enough for the decode child): a
   candidate whose picture matches the frame OCR last read is not read again ("same"); a changed
   one is read unless a read happened less than ``min_ocr_interval_s`` ago ("skip": no
   information). So a static slide costs one read, a slide deck one read per slide, and a
   camera pan at most one read per ``min_ocr_interval_s``.
3. **Reading and merging** (:class:`ScreenReader`, :func:`merge_screen_text`): rapidocr reads
   the text lines of a frame (detection at ``det_side``, recognition on crops of the full OCR
   frame); consecutive readings of the same line (normalised text, fuzzy ratio) merge into one
   row spanning [first seen, last seen + interval].

:func:`read_video_text` chains the three in one process (tests, the in-process runner).

Failure branches: the engine fails on a frame -> :class:`OcrError` ``OcrError``; frames for an
OCR-only pass of a video do not decode -> ``OcrDecodeError`` (raised by the caller that decodes).
Both are rows for stage ``ocr`` only; the clips stay. Missing model files are a systemic error
raised by :meth:`ScreenReader.setup` (:class:`OcrModelNotFoundError`), before any video.
"""

from __future__ import annotations

import bisect
import difflib
import logging
import math
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vidsearch.pipeline.types import OCR_DECISION_CODES, OcrChunk
from vidsearch.schemas.ocr_config import OcrCfg
from vidsearch.schemas.text_tables import ScreenTextRow, text_row_id

_logger = logging.getLogger(__name__)

OCR_ERROR_TYPES = ("OcrError", "OcrDecodeError")
# Seconds of video per decode chunk of a video whose pass hands out OCR candidates: its RGB
# frames to read (<= 1 per second at the read cap, 2.7 MB each at 1280x720) travel with the
# chunk, so a chunk of 16 x 4-s clips (64 s) would carry up to ~180 MB; 16 s carry <= ~50 MB.
OCR_CHUNK_S = 16.0
# An OCR-only decode pass (a video embedded by an earlier run) is cut into windows of this many
# seconds (one chunk each), whatever the library's clip length was.
OCR_ONLY_WINDOW_S = 16.0
# The ONNX files rapidocr's wheel ships (models/ inside the package); see default_models.yaml there.
DET_MODEL = "PP-OCRv6_det_small.onnx"
REC_MODEL = "PP-OCRv6_rec_small.onnx"
CLS_MODEL = "ch_ppocr_mobile_v2.0_cls_mobile.onnx"
# Frames larger than this are refused (a reader bug, not user input: the decoder resizes).
MAX_FRAME_PIXELS = 4096 * 4096
# A recognised line longer than this is cut (no sign or slide line is; a runaway is garbage).
MAX_TEXT_CHARS = 500


class OcrModelNotFoundError(FileNotFoundError):
    """rapidocr or its packaged ONNX models are missing; the message says what to install."""


class OcrDeviceError(RuntimeError):
    """``device="cuda"`` asked for, but onnxruntime has no CUDA provider here."""


class OcrError(Exception):
    """A per-video OCR failure (a failure row for stage ``ocr``; the video's clips stay).

    Args:
        error_type: one of :data:`OCR_ERROR_TYPES`.
        message: one human line; the runner prefixes the file's display path.
    """

    stage = "ocr"

    def __init__(self, error_type: str, message: str) -> None:
        if error_type not in OCR_ERROR_TYPES:
            raise ValueError(f"unknown OCR error type {error_type!r}")
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (OcrError, (self.error_type, self.message))  # travels between processes as a value


# ----------------------------------------------------------------------------------------------
# Text normalisation


def clean_text(text: str) -> str:
    """What a row stores: control and format characters removed, whitespace runs -> one space, capped."""
    t = "".join(" " if unicodedata.category(c)[0] in "CZ" else c for c in text)
    return " ".join(t.split())[:MAX_TEXT_CHARS]


def normalize_text(text: str) -> str:
    """The form two readings are compared in: NFKD without accents, case-folded, alphanumerics only,
    single spaces (``"Grand-Opening SALE!"`` -> ``"grand opening sale"``)."""
    t = unicodedata.normalize("NFKD", text)
    t = "".join(c for c in t if not unicodedata.combining(c)).casefold()
    return " ".join("".join(c if c.isalnum() else " " for c in t).split())


def similarity(a: str, b: str) -> float:
    """Similarity in [0, 1] of two texts after :func:`normalize_text` (difflib's ratio)."""
    na, nb = normalize_text(a), normalize_text(b)
    return _norm_similarity(na, nb)


def _numbers(norm: str) -> list[str]:
    """The all-digit words of a normalised text: "home 2 away 1" -> ["2", "1"]. A digit inside a
    word ("0pening", "sh0p") is more likely a misread letter than a number and is left out."""
    return [w for w in norm.split() if w.isdigit()]


def _norm_similarity(na: str, nb: str) -> float:
    if na == nb:
        return 1.0
    if not na or not nb:
        return 0.0
    sm = difflib.SequenceMatcher(None, na, nb, autojunk=False)
    return sm.ratio()


# ----------------------------------------------------------------------------------------------
# Candidate frames (what the decode pass hands out)


def ocr_frame_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(width, height) of the OCR frame of a ``width`` x ``height`` picture: the long side at most
    ``long_side`` (never upscaled), aspect kept, both even (what swscale and encoders like)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"bad frame size {width}x{height}")
    scale = min(1.0, long_side / max(width, height))
    w, h = max(2, round(width * scale)), max(2, round(height * scale))
    return w - w % 2, h - h % 2


def ocr_sample_indices(pts_s: Sequence[float], interval_s: float) -> list[int]:
    """Indices of the frames nearest to 0, interval, 2 x interval, ... on the clips' timeline.

    ``pts_s``: each frame's time (seconds, 0 = the first frame), in frame order (non-decreasing).
    One index per grid point, duplicates removed (a low frame rate has fewer frames than points);
    the last grid point lies within the video. Pure, so the decode worker and tests share it.
    """
    if interval_s <= 0:
        raise ValueError(f"interval_s must be > 0, got {interval_s}")
    n = len(pts_s)
    if n == 0:
        return []
    out: list[int] = []
    last = pts_s[-1]
    k = 0
    while True:
        g = k * interval_s
        if g > last + interval_s / 2:
            break
        i = bisect.bisect_left(pts_s, g)
        if i == n or (i > 0 and g - pts_s[i - 1] <= pts_s[i] - g):
            i -= 1  # the earlier frame is nearer (or no frame lies after g)
        if not out or i > out[-1]:
            out.append(i)
        k += 1
    return out


# ----------------------------------------------------------------------------------------------
# Change check

Decision = Literal["ocr", "same", "skip"]


def grey_half(frame: np.ndarray) -> np.ndarray:
    """A half-size grey copy of an RGB uint8 frame: 2x2 block means of Rec. 601 luma, float32.

    Averaging (not subsampling) matters: H.264 rings around sharp text edges differently in an I
    and a P frame of the same picture, and the 2x2 mean halves that noise while a changed glyph,
    several pixels wide, keeps its contrast (measured: ringing 6.7 -> a changed digit 22+).
    """
    h, w = frame.shape[0] // 2 * 2, frame.shape[1] // 2 * 2
    f = frame[:h, :w]
    s = f[0::2, 0::2].astype(np.uint16)                    # (h/2, w/2, 3): sums of 2x2 blocks
    s += f[1::2, 0::2]
    s += f[0::2, 1::2]
    s += f[1::2, 1::2]
    y = s[..., 0].astype(np.float32) * np.float32(0.299 / 4)   # (h/2, w/2)
    y += s[..., 1] * np.float32(0.587 / 4)
    y += s[..., 2] * np.float32(0.114 / 4)
    return y


def tile_change(ref: np.ndarray, cur: np.ndarray, tile: int) -> float:
    """How much the most changed tile of two grey images changed, above the image's noise floor.

    Per tile of ``tile`` x ``tile`` pixels: the mean absolute difference, after removing a global
    brightness shift (a fade or auto exposure moves every pixel alike and is not new text). The
    result is the largest tile value minus the median tile value: sensor and compression noise
    raise every tile alike (the median), while a changed glyph raises its own tile only.
    """
    if ref.shape != cur.shape:
        return math.inf
    d = cur - ref
    d -= np.median(d[::4, ::4])
    np.abs(d, out=d)
    h, w = d.shape[0] // tile * tile, d.shape[1] // tile * tile
    if h == 0 or w == 0:
        return float(d.mean()) if d.size else 0.0
    tiles = d[:h, :w].reshape(h // tile, tile, w // tile, tile).mean(axis=(1, 3))  # (H/t, W/t)
    top = float(tiles.max())
    if h < d.shape[0]:  # the bottom and right strips that do not fill a tile
        top = max(top, float(d[h:].mean()))
    if w < d.shape[1]:
        top = max(top, float(d[:, w:].mean()))
    return top - float(np.median(tiles))


class ChangeGate:
    """Decides per candidate frame: read it (``ocr``), same picture as the last read (``same``), or
    changed but read too recently (``skip``). Keeps one half-size grey frame; numpy only.

    Args:
        cfg: ``change_tile``, ``change_threshold``, ``min_ocr_interval_s`` and ``refresh_s``.
    """

    def __init__(self, cfg: OcrCfg | None = None) -> None:
        self.cfg = cfg or OcrCfg()
        self._ref: np.ndarray | None = None
        self._last_read_s = -math.inf
        self.last_change = 0.0     # the last candidate's change measure (for logs and tests)

    def decide(self, time_s: float, frame: np.ndarray) -> Decision:
        """The decision for the candidate at ``time_s`` (candidates in time order).

        Args:
            frame: the candidate as an RGB uint8 (H, W, 3) OCR frame, or already as its half-size
                grey copy (h, w): a decoder makes that ~8x faster than :func:`grey_half`
                (PyAV: ``VideoReformatter().reformat(frame, width=W // 2, height=H // 2,
                format="gray", interpolation="AREA")``, the reformatter kept between frames;
                swscale's area filter is the same 2x2 mean) and then converts to RGB only the
                candidates this returns ``ocr`` for.
        """
        cur = grey_half(frame) if frame.ndim == 3 else frame.astype(np.float32, copy=False)
        cfg = self.cfg
        if self._ref is None:
            changed = True
            self.last_change = math.inf
        else:
            self.last_change = tile_change(self._ref, cur, cfg.change_tile)
            changed = self.last_change > cfg.change_threshold
        since = time_s - self._last_read_s
        if not changed and not (cfg.refresh_s and since >= cfg.refresh_s - 1e-6):
            return "same"
        if since < cfg.min_ocr_interval_s - 1e-6:
            return "skip"
        self._ref, self._last_read_s = cur, time_s
        return "ocr"


class CandidateTap:
    """A video's OCR candidates, taken as its decode pass goes by (runs in the decode child).

    The reader calls :meth:`on_frame` with every candidate frame it decodes, in presentation
    order: the change check runs on a half-size grey copy made by swscale (a kept
    ``VideoReformatter``: ~0.75 ms a frame, against ~10 ms for ``to_ndarray(width=...)``, which
    builds a new swscale context per call), and only the candidates it passes are converted to
    RGB at the OCR size. A decode chunk then :meth:`take` s the candidates of its own frame range,
    so each candidate is handed out once whatever the reader decoded ahead; candidates before
    ``start`` (a reader that starts again from the first frame) are not looked at.

    Args:
        cfg: the OCR settings (gate, interval).
        indices, times: the candidates (``OcrPlan``).
        size: (width, height) of the OCR frames as displayed.
        rotation: degrees the reader rotates frames by to display them upright.
        start: the first frame index this tap is responsible for.
    """

    def __init__(self, cfg: OcrCfg, indices: Sequence[int], times: Sequence[float], size: tuple[int, int],
                 rotation: int = 0, start: int = 0) -> None:
        self.cfg = cfg
        self.time_of = dict(zip(indices, times, strict=True))
        self.indices = tuple(indices)
        self.tap_set = frozenset(indices)
        self.size = size
        self.rotation = rotation
        self.gate = ChangeGate(cfg)
        self.done_upto = start - 1                 # the last candidate index looked at
        self.results: dict[int, tuple[str, np.ndarray | None]] = {}
        self.error: str | None = None
        self.gate_s = 0.0
        self.convert_s = 0.0
        self._to_grey: Any = None
        self._to_rgb: Any = None

    def last_in(self, lo: int, hi: int | None) -> int | None:
        """The last candidate index in frames ``[lo, hi)`` (None: none), which a chunk's decode must reach."""
        j = bisect.bisect_left(self.indices, hi) if hi is not None else len(self.indices)
        return self.indices[j - 1] if j > 0 and self.indices[j - 1] >= lo else None

    def on_frame(self, index: int, frame: Any) -> None:
        """One decoded frame (a PyAV ``VideoFrame``, or an RGB array from another reader)."""
        if index <= self.done_upto or index not in self.time_of or self.error is not None:
            return
        self.done_upto = index
        try:
            self._look(index, frame)
        except Exception as e:  # noqa: BLE001 - swscale/OpenCV errors on odd frames: OCR of this video stops
            self.error = f"OCR frames could not be made ({type(e).__name__}: {str(e)[:160]})"
            _logger.info("%s", self.error, exc_info=True)

    def _look(self, index: int, frame: Any) -> None:
        w, h = self.size
        t0 = time.perf_counter()
        rgb: np.ndarray | None = None
        if isinstance(frame, np.ndarray):  # an upright RGB frame of any size (the decord reader)
            import cv2

            rgb = frame if frame.shape[:2] == (h, w) else cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
            grey: np.ndarray = rgb
        else:
            from av.video.reformatter import Interpolation, VideoReformatter

            from vidsearch.pipeline.colour import colour_spec, swscale_args

            if self._to_grey is None:
                self._to_grey, self._to_rgb = VideoReformatter(), VideoReformatter()
            # Coded orientation: the reader turns frames upright after converting them.
            cw, ch = (h, w) if self.rotation in (90, 270) else (w, h)
            sws = swscale_args(colour_spec(frame.colorspace, frame.color_range))
            grey = self._to_grey.reformat(frame, width=cw // 2, height=ch // 2, format="gray",
                                          interpolation=Interpolation.AREA, threads=1).to_ndarray()
        decision = self.gate.decide(self.time_of[index], grey)
        t1 = time.perf_counter()
        self.gate_s += t1 - t0
        if decision == "ocr" and rgb is None:
            a = self._to_rgb.reformat(frame, width=cw, height=ch, format="rgb24", interpolation=Interpolation.AREA,
                                      **sws).to_ndarray()
            rgb = np.ascontiguousarray(np.rot90(a, self.rotation // 90)) if self.rotation else a
            self.convert_s += time.perf_counter() - t1
        self.results[index] = (decision, rgb if decision == "ocr" else None)

    def take(self, lo: int, hi: int | None) -> tuple[OcrChunk, np.ndarray | None]:
        """The candidates of frames ``[lo, hi)`` looked at so far (``hi`` None: to the end), as the
        chunk's :class:`~vidsearch.pipeline.types.OcrChunk` and its frames to read, uint8
        (n_read, H, W, 3) or None. Candidates before ``lo`` are dropped; later ones are kept for
        the next chunk."""
        mine = sorted(i for i in self.results if i >= lo and (hi is None or i < hi))
        times = tuple(self.time_of[i] for i in mine)
        decisions = "".join(OCR_DECISION_CODES[self.results[i][0]] for i in mine)
        frames = [f for i in mine if (f := self.results[i][1]) is not None]
        self.results = {i: r for i, r in self.results.items() if hi is not None and i >= hi}
        chunk = OcrChunk(times, decisions, gate_s=self.gate_s, convert_s=self.convert_s, error=self.error)
        self.gate_s = self.convert_s = 0.0
        return chunk, (np.stack(frames) if frames else None)


# ----------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class TextBox:
    """One line of text read in a frame."""

    text: str
    confidence: float
    box: tuple[float, float, float, float]   # x0, y0, x1, y1 as fractions (0..1) of the frame


@dataclass(frozen=True)
class FrameText:
    """What OCR found at one candidate time. ``boxes`` None: the picture is the same as at the
    previous read, so its lines are still there (a ``same`` decision)."""

    time_s: float
    boxes: tuple[TextBox, ...] | None


def _package_models() -> tuple[Path, str]:
    try:
        import rapidocr
    except ImportError as e:
        raise OcrModelNotFoundError(
            "on-screen text needs rapidocr: pip install 'rapidocr>=3.10,<4' onnxruntime") from e
    root = Path(rapidocr.__file__).resolve().parent / "models"
    # rapidocr 3.x has no __version__; the installed distribution's version is what the model id
    # records (an upgrade may change what it reads).
    try:
        from importlib.metadata import version

        found = version("rapidocr")
    except Exception:  # noqa: BLE001 - a source tree without metadata
        found = str(getattr(rapidocr, "__version__", "unknown"))
    missing = [f for f in (DET_MODEL, REC_MODEL, CLS_MODEL) if not (root / f).is_file()]
    if missing:
        raise OcrModelNotFoundError(
            f"rapidocr {found} at {root.parent} lacks its packaged models "
            f"({', '.join(missing)}); reinstall the wheel: pip install --force-reinstall 'rapidocr>=3.10,<4'")
    return root, found


def check_ocr_models() -> None:
    """rapidocr and its packaged models are installed (checked before an ``--ocr`` ingest starts).

    Raises:
        OcrModelNotFoundError: what to install.
    """
    _package_models()


def status_model_id(model_id: str, cfg: OcrCfg) -> str:
    """The OCR status's model id (``text_status.model`` of kind ``screen``): the engine and models
    plus the hash of the settings that change the rows. Resume compares it: the same id is done."""
    return f"{model_id}@{cfg.fingerprint()}"


class ScreenReader:
    """rapidocr over RGB frames (stage contract: ``setup()`` in the worker, ``read()``, ``close()``).

    Args:
        cfg: detector size, orientation classifier, confidence floor and threads.
    """

    def __init__(self, cfg: OcrCfg | None = None) -> None:
        self.cfg = cfg or OcrCfg()
        self._engine: Any = None
        self._model_id: str | None = None
        self.device: str | None = None     # "cpu" or "cuda" once set up

    @property
    def model_id(self) -> str:
        """Recorded in ``screen_text.model``: engine version and the detection/recognition models."""
        if self._model_id is None:
            raise RuntimeError("ScreenReader.setup() has not run")
        return self._model_id

    def setup(self) -> None:
        """Load the three ONNX models from the rapidocr wheel (once per worker).

        Raises:
            OcrModelNotFoundError: rapidocr is not installed or its wheel lacks the models.
            OcrDeviceError: ``device="cuda"`` without onnxruntime's CUDA provider.
        """
        if self._engine is not None:
            return
        root, version = _package_models()
        from rapidocr import RapidOCR

        cfg = self.cfg
        params: dict[str, Any] = {
            # rapidocr logs a warning for every frame without text; ours are enough.
            "Global.log_level": "error",
            "Global.use_cls": cfg.use_cls,
            "Global.text_score": cfg.min_confidence,
            # rapidocr shrinks any frame over 2000 px before detection and cropping; a larger
            # long_side is the caller's choice, so the cap follows it.
            "Global.max_side_len": max(2000, cfg.long_side),
            # Explicit paths: rapidocr downloads a model only when model_path is unset. The
            # recognition model carries its character list in its ONNX metadata (no keys file).
            "Det.model_path": str(root / DET_MODEL),
            "Rec.model_path": str(root / REC_MODEL),
            "Cls.model_path": str(root / CLS_MODEL),
            # Detection input: the long side at most det_side (rapidocr's default scales the
            # *short* side up to 736, i.e. 1308x736 for any 16:9 frame, slower for no gain here).
            "Det.limit_type": "max",
            "Det.limit_side_len": cfg.det_side,
            "EngineConfig.onnxruntime.intra_op_num_threads": cfg.threads or -1,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        }
        import onnxruntime

        cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        if cfg.device == "cuda" and not cuda:
            raise OcrDeviceError(f"OCR on cuda needs onnxruntime-gpu; onnxruntime {onnxruntime.__version__} offers "
                                 f"{', '.join(onnxruntime.get_available_providers())}")
        self.device = "cuda" if cuda and cfg.device != "cpu" else "cpu"
        params["EngineConfig.onnxruntime.use_cuda"] = self.device == "cuda"
        t0 = time.perf_counter()
        engine = RapidOCR(params=params)
        # rapidocr loads each model on first use; load them now so that a broken model fails
        # here (before any video) and the first frame's time is not the model load.
        engine._load_det_model()
        engine._load_rec_model()
        if cfg.use_cls:
            engine._load_cls_model()
        self._engine = engine
        self._model_id = f"rapidocr-{version}/{Path(DET_MODEL).stem}+{Path(REC_MODEL).stem}"
        _logger.info("OCR %s on %s loaded in %.1f s (detector %d px, %s threads)", self._model_id, self.device,
                     time.perf_counter() - t0, cfg.det_side, cfg.threads or "all")

    def close(self) -> None:
        """Drop the engine (``setup()`` loads it again)."""
        self._engine = None

    def read(self, frame: np.ndarray) -> list[TextBox]:
        """Text lines of one RGB uint8 (H, W, 3) frame, top to bottom.

        Raises:
            ValueError: ``frame`` is not an RGB uint8 image of a sane size (a caller bug).
            OcrError: ``OcrError`` when the engine fails on it.
        """
        if not (isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3
                and frame.shape[2] == 3):
            raise ValueError(f"expected an (H, W, 3) uint8 RGB frame, got {getattr(frame, 'shape', type(frame))}")
        h, w = frame.shape[:2]
        if h < 8 or w < 8 or h * w > MAX_FRAME_PIXELS:
            raise ValueError(f"OCR frame of {w}x{h} pixels is outside 8x8..{MAX_FRAME_PIXELS} pixels")
        self.setup()
        bgr = np.ascontiguousarray(frame[:, :, ::-1])  # rapidocr takes arrays in OpenCV's BGR order
        try:
            out = self._engine(bgr)
        except Exception as e:  # noqa: BLE001 - onnxruntime/OpenCV raise many types; all mean "this frame failed"
            raise OcrError("OcrError", f"text recognition failed ({type(e).__name__}: {str(e)[:200]})") from e
        boxes, txts, scores = getattr(out, "boxes", None), getattr(out, "txts", None), getattr(out, "scores", None)
        if boxes is None or txts is None or scores is None or len(txts) == 0:
            return []
        result = []
        for poly, txt, score in zip(np.asarray(boxes, dtype=np.float64), txts, scores, strict=True):
            text = clean_text(str(txt))
            if not any(c.isalnum() for c in text):
                continue  # punctuation or a stray mark on a texture: nothing a query can find
            xs = np.clip(poly[:, 0] / w, 0.0, 1.0)   # poly: (4, 2) corner points in pixels
            ys = np.clip(poly[:, 1] / h, 0.0, 1.0)
            box = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
            result.append(TextBox(text, float(score), box))
        result.sort(key=lambda b: (round(b.box[1], 2), b.box[0]))
        return result


# ----------------------------------------------------------------------------------------------
# Merging


@dataclass
class _Track:
    first_s: float
    last_s: float
    last_norm: str
    variants: dict[str, list[Any]] = field(default_factory=dict)  # norm -> [conf sum, best conf, text, box]
    n: int = 0
    conf_sum: float = 0.0

    def add(self, t: float, norm: str, b: TextBox) -> None:
        self.last_s, self.last_norm = t, norm
        self.n += 1
        self.conf_sum += b.confidence
        v = self.variants.get(norm)
        if v is None:
            self.variants[norm] = [b.confidence, b.confidence, b.text, b.box]
        else:
            v[0] += b.confidence
            if b.confidence > v[1]:
                v[1:] = [b.confidence, b.text, b.box]

    def best(self) -> tuple[str, list[Any]]:
        """The variant read most confidently over all frames (a vote of confidence sums)."""
        return max(self.variants.items(), key=lambda kv: (kv[1][0], kv[1][1]))

    def similarity(self, norm: str) -> float:
        if _numbers(norm) != _numbers(self.last_norm):
            return 0.0  # a clock, a score, a price: a changed number is new text, not a misreading
        s = _norm_similarity(self.last_norm, norm)
        if s < 1.0:
            s = max(s, _norm_similarity(self.best()[0], norm))
        return s


def merge_screen_text(video_id: str, frames: Iterable[FrameText], *, cfg: OcrCfg | None = None,
                      duration_s: float | None = None, model: str | None = None) -> list[ScreenTextRow]:
    """Merge per-frame readings of one video into ``screen_text`` rows.

    A line read in consecutive frames (normalised similarity >= ``merge_similarity`` and the same
    numbers: a clock or a score that changes is new text; each line of a frame joins at most one
    row, best matches first) is one row from the first time it was
    read to the last time + ``interval_s`` (the next candidate, where it was gone), capped at
    ``duration_s``. A row survives frames without it for up to ``max_gap_s``. Its text is the
    variant with the largest summed confidence (a misread frame is outvoted), its box that
    variant's most confident box, its confidence the mean over all its readings.

    Args:
        frames: in time order; ``boxes`` None repeats the previous read's lines.
    """
    cfg = cfg or OcrCfg()
    open_: list[_Track] = []
    done: list[_Track] = []
    prev: tuple[TextBox, ...] = ()
    last_t = -math.inf
    for ft in frames:
        t = ft.time_s
        if not math.isfinite(t) or t < last_t:
            raise ValueError(f"frame times must be finite and in order, got {t} after {last_t}")
        last_t = t
        if ft.boxes is not None:
            prev = ft.boxes
        lines = [(n, b) for b in prev if (n := normalize_text(b.text))]
        pairs = []
        for ti, tr in enumerate(open_):
            for li, (n, _) in enumerate(lines):
                s = tr.similarity(n)
                if s >= cfg.merge_similarity:
                    pairs.append((s, ti, li))
        pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
        used_t: set[int] = set()
        used_l: set[int] = set()
        for _, ti, li in pairs:
            if ti in used_t or li in used_l:
                continue
            used_t.add(ti)
            used_l.add(li)
            open_[ti].add(t, *lines[li])
        still = []
        for ti, tr in enumerate(open_):
            if ti in used_t or t - tr.last_s <= cfg.max_gap_s + 1e-9:
                still.append(tr)
            else:
                done.append(tr)
        for li, (n, b) in enumerate(lines):
            if li not in used_l:
                tr = _Track(first_s=t, last_s=t, last_norm=n)
                tr.add(t, n, b)
                still.append(tr)
        open_ = still
    done.extend(open_)
    rows = []
    for tr in done:
        norm, (_, _, text, box) = tr.best()
        end = tr.last_s + cfg.interval_s
        if duration_s is not None and math.isfinite(duration_s):
            end = min(end, max(duration_s, tr.last_s))
        rows.append(ScreenTextRow(
            video_id=video_id,
            text_id=text_row_id(video_id, "screen", round(tr.first_s * 1000), round(end * 1000), norm, model or ""),
            start_s=tr.first_s, end_s=end, text=text, confidence=tr.conf_sum / tr.n, box=box, model=model,
        ))
    rows.sort(key=lambda r: (r.start_s, r.box[1] if r.box else 0.0, r.box[0] if r.box else 0.0, r.text))
    return rows


# ----------------------------------------------------------------------------------------------
# One video in one process


@dataclass
class ScreenTextResult:
    """The screen text of one video and what it cost."""

    rows: list[ScreenTextRow] = field(default_factory=list)
    candidates: int = 0       # candidate frames seen
    read: int = 0             # frames OCR read
    same: int = 0             # candidates equal to the last read frame (not read)
    skipped: int = 0          # changed candidates not read (rate cap)
    gate_s: float = 0.0       # wall time in the change check
    ocr_s: float = 0.0        # wall time in rapidocr
    model_id: str | None = None


def read_video_text(reader: ScreenReader, video_id: str, samples: Iterable[tuple[float, np.ndarray]], *,
                    duration_s: float | None = None, gate: ChangeGate | None = None) -> ScreenTextResult:
    """Change check, OCR and merging of one video's candidate frames, in this process.

    Args:
        reader: a set-up (or lazily set-up) :class:`ScreenReader`.
        samples: ``(time_s, RGB uint8 frame)`` in time order, one per candidate
            (:func:`ocr_sample_indices`), at the OCR size (:func:`ocr_frame_size`).
        duration_s: the video's duration; caps the last row's end.
        gate: a fresh :class:`ChangeGate` per video (default: one from ``reader.cfg``).

    Raises:
        OcrError: the engine failed on a frame.
    """
    reader.setup()
    gate = gate or ChangeGate(reader.cfg)
    res = ScreenTextResult(model_id=reader.model_id)
    texts: list[FrameText] = []
    for t, frame in samples:
        res.candidates += 1
        t0 = time.perf_counter()
        decision = gate.decide(t, frame)
        res.gate_s += time.perf_counter() - t0
        if decision == "same":
            res.same += 1
            texts.append(FrameText(t, None))
        elif decision == "skip":
            res.skipped += 1
        else:
            t0 = time.perf_counter()
            boxes = reader.read(frame)
            res.ocr_s += time.perf_counter() - t0
            res.read += 1
            texts.append(FrameText(t, tuple(boxes)))
    res.rows = merge_screen_text(video_id, texts, cfg=reader.cfg, duration_s=duration_s, model=reader.model_id)
    return res
