"""The demo world: short videos of coloured shapes whose content is known exactly.

A *scene* shows 1-3 identical shapes (circle, square, triangle, star, cross, heart) of one colour
doing one thing (moving left/right/up/down, growing, shrinking, rotating, appearing,
disappearing) over a varied background (solid, gradient, blotches, stripes), with camera shake,
flicker and sensor noise so that the task is not trivial. A *video* is a sequence of scenes joined
by hard cuts, so clip boundaries, shots and timestamps matter. Every scene has a plain-English
caption (:mod:`vidsearch.demo.captions`) and exact start/end times.

Everything is a pure function of a seed: :func:`sample_video` draws the specs, :class:`SceneRenderer`
draws any frame of a scene on demand (training renders in memory), :func:`write_video` pipes the
frames into ffmpeg (libx264) so that the demo exercises the real decode path, and
:func:`generate_world` writes a folder of videos plus ``world.json`` (the ground truth).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vidsearch.demo.captions import COLOURS, COUNTS, MOTIONS, SHAPES, Attributes, canonical_caption
from vidsearch.files import atomic_output, atomic_write_text

_logger = logging.getLogger(__name__)

__all__ = [
    "WORLD_FORMAT",
    "SceneSpec",
    "VideoSpec",
    "SceneTruth",
    "VideoTruth",
    "World",
    "sample_attributes",
    "sample_scene",
    "sample_video",
    "SceneRenderer",
    "render_video",
    "write_video",
    "generate_world",
    "load_world",
    "ffmpeg_exe",
]

WORLD_FORMAT = 1

# Base RGB of each colour name; every scene perturbs it a little (lighting, "camera white balance").
_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 185, 60),
    "blue": (45, 95, 235),
    "yellow": (235, 215, 40),
    "purple": (150, 55, 205),
    "orange": (245, 135, 25),
    "white": (240, 240, 240),
}
# Shapes whose look does not change under rotation cannot show "rotating".
_ROTATION_INVARIANT = frozenset({"circle"})


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary shipped by ``imageio-ffmpeg`` (no system ffmpeg needed)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


# ---- specs ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SceneSpec:
    """One scene: what it shows, how long it lasts and the seed of every visual detail."""

    attributes: Attributes
    num_frames: int
    seed: int

    @property
    def caption(self) -> str:
        """The canonical caption (``"two blue squares growing"``)."""
        return canonical_caption(self.attributes)


@dataclass(frozen=True)
class VideoSpec:
    """A video: scenes joined by hard cuts, at one size and frame rate."""

    name: str                  # file stem, unique in a world
    folder: str                # sub-folder of the world (lets tests filter by path)
    scenes: tuple[SceneSpec, ...]
    width: int = 128
    height: int = 96
    fps: int = 10

    @property
    def num_frames(self) -> int:
        return sum(s.num_frames for s in self.scenes)

    @property
    def relpath(self) -> str:
        return f"videos/{self.folder}/{self.name}.mp4"


@dataclass(frozen=True)
class SceneTruth:
    """Ground truth of one scene inside a written video (times in seconds, end exclusive)."""

    index: int
    start_s: float
    end_s: float
    start_frame: int
    end_frame: int
    caption: str
    shape: str
    colour: str
    count: int
    motion: str
    # For appear/disappear: when the event happens (s, from the video start); None otherwise.
    event_s: float | None = None

    @property
    def attributes(self) -> Attributes:
        return Attributes(self.shape, self.colour, self.count, self.motion)


@dataclass(frozen=True)
class VideoTruth:
    """Ground truth of one written video."""

    relpath: str
    fps: int
    width: int
    height: int
    num_frames: int
    duration_s: float
    scenes: tuple[SceneTruth, ...]


@dataclass(frozen=True)
class World:
    """A generated folder of videos with its ground truth (``world.json``)."""

    root: Path
    seed: int
    videos: tuple[VideoTruth, ...]
    format: int = WORLD_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    def scenes(self) -> Iterator[tuple[VideoTruth, SceneTruth]]:
        """Every (video, scene) pair in order."""
        for v in self.videos:
            for s in v.scenes:
                yield v, s

    def video(self, path: str | os.PathLike[str]) -> VideoTruth:
        """The video whose file is ``path`` (absolute or relative to the root)."""
        p = Path(path)
        rel = p.resolve().relative_to(self.root.resolve()).as_posix() if p.is_absolute() else p.as_posix()
        for v in self.videos:
            if v.relpath == rel:
                return v
        raise KeyError(f"{path} is not a video of the demo world at {self.root}")


def sample_attributes(rng: np.random.Generator) -> Attributes:
    """Uniform over shape x colour x count x motion, minus rotating circles."""
    while True:
        a = Attributes(
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            colour=COLOURS[int(rng.integers(len(COLOURS)))],
            count=COUNTS[int(rng.integers(len(COUNTS)))],
            motion=MOTIONS[int(rng.integers(len(MOTIONS)))],
        )
        if not (a.motion == "rotate" and a.shape in _ROTATION_INVARIANT):
            return a


def sample_scene(rng: np.random.Generator, fps: int = 10, min_s: float = 3.0, max_s: float = 6.0,
                 attributes: Attributes | None = None) -> SceneSpec:
    """Draw one scene: random attributes (unless given), a length in [min_s, max_s] s, a seed."""
    a = attributes or sample_attributes(rng)
    n = int(rng.integers(round(min_s * fps), round(max_s * fps) + 1))
    return SceneSpec(a, n, int(rng.integers(2**31)))


def sample_video(seed: int, index: int, *, scenes: tuple[int, int] = (3, 5), folders: Sequence[str] = ("a",),
                 width: int = 128, height: int = 96, fps: int = 10,
                 scene_seconds: tuple[float, float] = (3.0, 6.0)) -> VideoSpec:
    """The ``index``-th video of the world ``seed``: deterministic, independent of other indices.

    Consecutive scenes never share all four attributes, so a cut is always a change of content.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, 0x5CE7E]))
    n_scenes = int(rng.integers(scenes[0], scenes[1] + 1))
    specs: list[SceneSpec] = []
    while len(specs) < n_scenes:
        s = sample_scene(rng, fps, *scene_seconds)
        if specs and s.attributes == specs[-1].attributes:
            continue
        specs.append(s)
    folder = folders[index % len(folders)]
    return VideoSpec(f"demo_{seed}_{index:04d}", folder, tuple(specs), width, height, fps)


# ---- rendering -----------------------------------------------------------------------------------
def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test in the object's unit frame (u right, v up, circumradius ~1)."""
    if shape == "circle":
        return u * u + v * v <= 0.85
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.72
    if shape == "triangle":  # equilateral, apex up, circumradius 1 -> inradius 0.5
        c30, s30 = math.cos(math.pi / 6), 0.5
        return (v >= -0.5) & (u * c30 + v * s30 <= 0.5) & (-u * c30 + v * s30 <= 0.5)
    if shape == "star":  # five points, outer radius 1, inner 0.42
        rho = np.hypot(u, v)
        theta = np.arctan2(u, v)  # 0 = straight up, so a point is at the top
        sector = 2 * math.pi / 5
        phi = np.abs(np.mod(theta + sector / 2, sector) - sector / 2)  # fold into [0, 36 deg]
        x, y = rho * np.cos(phi), rho * np.sin(phi)
        # Inside iff on the centre's side of the edge from the point (1, 0) to the inner
        # vertex at 36 deg.
        ri, a = 0.42, sector / 2
        x2, y2 = ri * math.cos(a), ri * math.sin(a)
        return (x - 1.0) * (y2 - 0.0) - y * (x2 - 1.0) <= 0
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.28) & (av <= 0.9)) | ((av <= 0.28) & (au <= 0.9))
    if shape == "heart":  # (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, scaled into the unit disc
        x, y = u * 1.25, v * 1.25 + 0.15
        return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0
    raise ValueError(f"unknown shape {shape!r}")


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Blotchy low-frequency noise in [0, 1]: a random grid upsampled bilinearly."""
    g = rng.random((cells + 1, cells + 1))
    ys = np.linspace(0, cells, h)
    xs = np.linspace(0, cells, w)
    y0 = np.minimum(ys.astype(int), cells - 1)
    x0 = np.minimum(xs.astype(int), cells - 1)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    a = g[y0][:, x0] * (1 - fx) + g[y0][:, x0 + 1] * fx
    b = g[y0 + 1][:, x0] * (1 - fx) + g[y0 + 1][:, x0 + 1] * fx
    return a * (1 - fy) + b * fy


def _muted_colour(rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    """A dull background colour (low saturation, value in [lo, hi]) so every shape colour shows."""
    grey = rng.uniform(lo, hi)
    hue = rng.uniform(-1, 1, 3)
    return np.clip(grey + hue * rng.uniform(0.0, 0.12), 0, 1) * 255


class SceneRenderer:
    """Draws the frames of one scene at a given size; any frame index, in any order.

    All per-scene randomness (background, layout, speeds, colour shift) is drawn in ``__init__``
    from ``spec.seed``; per-frame randomness (shake, flicker, noise) from ``(spec.seed, frame)``,
    so ``frame(i)`` is a pure function.
    """

    # Pixels of camera shake (each axis, per frame) and standard deviation of the sensor noise.
    SHAKE_PX = 2
    NOISE_STD = 6.0

    def __init__(self, spec: SceneSpec, width: int = 128, height: int = 96, fps: int = 10) -> None:
        self.spec = spec
        self.width, self.height, self.fps = width, height, fps
        a = spec.attributes
        rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 0xB0B]))
        m = self.SHAKE_PX
        self._bg = self._background(rng, height + 2 * m, width + 2 * m)  # (H+2m, W+2m, 3) float32
        base = np.array(_RGB[a.colour], dtype=np.float32)
        self.rgb = np.clip(base + rng.uniform(-18, 18, 3), 0, 255).astype(np.float32)
        short = min(width, height)
        # Object size: smaller when more objects must fit side by side.
        r_frac = {1: (0.19, 0.26), 2: (0.16, 0.21), 3: (0.13, 0.17)}[a.count]
        self.radius = float(rng.uniform(*r_frac) * short)
        self.angle0 = float(rng.uniform(0, 2 * math.pi)) if a.shape != "triangle" or rng.random() < 0.5 else 0.0
        self.spin = float(rng.choice([-1, 1]) * rng.uniform(math.radians(45), math.radians(90)))  # rad/s
        self.event_frac = float(rng.uniform(0.3, 0.45))  # appear/disappear time as a fraction
        self._layout(rng)

    # -- per-scene drawing ------------------------------------------------------------------------
    def _background(self, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
        kind = int(rng.integers(4))
        c1, c2 = _muted_colour(rng, 0.08, 0.45), _muted_colour(rng, 0.08, 0.45)
        if kind == 0:  # solid
            t = np.zeros((h, w), np.float32)
        elif kind == 1:  # linear gradient at a random angle
            ang = rng.uniform(0, 2 * math.pi)
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            proj = xx * math.cos(ang) + yy * math.sin(ang)
            t = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
        elif kind == 2:  # blotches
            t = _smooth_noise(rng, h, w, int(rng.integers(3, 7)))
        else:  # soft stripes
            ang = rng.uniform(0, math.pi)
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            period = rng.uniform(12, 30)
            t = 0.5 + 0.5 * np.sin((xx * math.cos(ang) + yy * math.sin(ang)) * 2 * math.pi / period)
        bg = c1[None, None, :] * (1 - t[..., None]) + c2[None, None, :] * t[..., None]
        return bg.astype(np.float32)

    def _layout(self, rng: np.random.Generator) -> None:
        """Start centres (px) and the displacement over the whole scene for each object."""
        a, W, H, r = self.spec.attributes, self.width, self.height, self.radius
        n = a.count
        margin = r * 1.05 + self.SHAKE_PX
        self.delta = np.zeros(2, np.float32)  # (dx, dy) over the scene, image axes (y down)
        horizontal = a.motion in ("left", "right")
        vertical = a.motion in ("up", "down")
        if horizontal:
            travel = rng.uniform(0.45, 0.62) * W
            self.delta[0] = -travel if a.motion == "left" else travel
            # Objects stacked in a column, so they never overlap while moving sideways.
            ys = self._spread(rng, H, n, margin)
            x_lo = margin + (travel if a.motion == "left" else 0)
            x_hi = W - margin - (0 if a.motion == "left" else travel)
            x = rng.uniform(x_lo, max(x_lo, x_hi))
            xs = np.clip(x + rng.uniform(-0.3, 0.3, n) * r, x_lo, max(x_lo, x_hi))
        elif vertical:
            travel = rng.uniform(0.35, 0.5) * H
            self.delta[1] = travel if a.motion == "down" else -travel
            xs = self._spread(rng, W, n, margin)
            y_lo = margin + (travel if a.motion == "up" else 0)
            y_hi = H - margin - (0 if a.motion == "up" else travel)
            y = rng.uniform(y_lo, max(y_lo, y_hi))
            ys = np.clip(y + rng.uniform(-0.3, 0.3, n) * r, y_lo, max(y_lo, y_hi))
        else:
            # In place: a row across the longer side, with some vertical scatter.
            xs = self._spread(rng, W, n, margin)
            ys = np.clip(H / 2 + rng.uniform(-0.2, 0.2, n) * (H - 2 * margin), margin, H - margin)
        self.centres = np.stack([xs, ys], axis=1).astype(np.float32)  # (n, 2) x, y

    @staticmethod
    def _spread(rng: np.random.Generator, length: float, n: int, margin: float) -> np.ndarray:
        """n positions along an axis, evenly spaced in random slots, at least 2*margin apart."""
        usable = length - 2 * margin
        slot = usable / n
        jitter = max(0.0, (slot - 2 * margin) / 2) if n > 1 else usable / 2 * 0.5
        centres = margin + slot * (np.arange(n) + 0.5)
        return centres + rng.uniform(-1, 1, n) * jitter

    # -- per-frame --------------------------------------------------------------------------------
    def state(self, frame: int) -> tuple[np.ndarray, float, float, bool]:
        """(centres (n, 2), radius, angle, visible) of the objects at ``frame``."""
        a = self.spec.attributes
        p = frame / max(self.spec.num_frames - 1, 1)  # progress 0..1 over the scene
        centres = self.centres + p * self.delta
        radius = self.radius
        if a.motion == "grow":
            radius *= 0.5 + 0.5 * p
        elif a.motion == "shrink":
            radius *= 1.0 - 0.5 * p
        angle = self.angle0 + (self.spin * frame / self.fps if a.motion == "rotate" else 0.0)
        event = self.event_frame
        visible = True
        if a.motion == "appear":
            visible = frame >= event
        elif a.motion == "disappear":
            visible = frame < event
        return centres, radius, angle, visible

    @property
    def event_frame(self) -> int:
        """Frame index (in the scene) of the appear/disappear event."""
        return max(1, round(self.event_frac * self.spec.num_frames))

    def frame(self, i: int) -> np.ndarray:
        """RGB uint8 (H, W, 3) of frame ``i`` of the scene."""
        if not 0 <= i < self.spec.num_frames:
            raise IndexError(f"frame {i} outside scene of {self.spec.num_frames} frames")
        rng = np.random.default_rng(np.random.SeedSequence([self.spec.seed, 0xF4A, i]))
        m, H, W = self.SHAKE_PX, self.height, self.width
        ox, oy = (int(v) for v in rng.integers(-m, m + 1, 2))
        img = self._bg[m + oy: m + oy + H, m + ox: m + ox + W].copy()
        centres, radius, angle, visible = self.state(i)
        if visible:
            for cx, cy in centres:
                self._draw(img, cx - ox, cy - oy, radius, angle)
        img *= rng.uniform(0.93, 1.07)  # flicker
        img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(self.NOISE_STD)
        return np.clip(img, 0, 255).astype(np.uint8)

    def _draw(self, img: np.ndarray, cx: float, cy: float, radius: float, angle: float) -> None:
        H, W = img.shape[:2]
        ext = radius * 1.1
        x0, x1 = max(int(cx - ext), 0), min(int(cx + ext) + 2, W)
        y0, y1 = max(int(cy - ext), 0), min(int(cy + ext) + 2, H)
        if x0 >= x1 or y0 >= y1:
            return
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dx, dy = (xx + 0.5 - cx) / radius, (cy - (yy + 0.5)) / radius  # v axis points up
        ca, sa = math.cos(angle), math.sin(angle)
        u, v = dx * ca + dy * sa, -dx * sa + dy * ca  # rotate the sample points by -angle
        mask = _shape_mask(self.spec.attributes.shape, u, v)
        # Slight top-lit shading so that the shapes are not perfectly flat.
        shade = (1.0 + 0.12 * np.clip(dy, -1, 1))[..., None]
        region = img[y0:y1, x0:x1]
        region[mask] = np.clip(self.rgb[None, :] * shade[mask], 0, 255)

    def frames(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """uint8 (T, H, W, 3) of the given frame indices (all frames by default)."""
        idx = range(self.spec.num_frames) if indices is None else indices
        return np.stack([self.frame(int(i)) for i in idx])


def render_video(video: VideoSpec) -> Iterator[np.ndarray]:
    """Yield every frame (H, W, 3 uint8) of ``video``, scene after scene (hard cuts)."""
    for spec in video.scenes:
        r = SceneRenderer(spec, video.width, video.height, video.fps)
        for i in range(spec.num_frames):
            yield r.frame(i)


def _truth(video: VideoSpec) -> VideoTruth:
    scenes: list[SceneTruth] = []
    start = 0
    for k, spec in enumerate(video.scenes):
        a = spec.attributes
        event_s = None
        if a.motion in ("appear", "disappear"):
            r = SceneRenderer(spec, video.width, video.height, video.fps)
            event_s = (start + r.event_frame) / video.fps
        end = start + spec.num_frames
        scenes.append(SceneTruth(k, start / video.fps, end / video.fps, start, end, spec.caption,
                                 a.shape, a.colour, a.count, a.motion, event_s))
        start = end
    return VideoTruth(video.relpath, video.fps, video.width, video.height, video.num_frames,
                      video.num_frames / video.fps, tuple(scenes))


def write_video(video: VideoSpec, path: str | os.PathLike[str], *, crf: int = 23) -> VideoTruth:
    """Encode ``video`` to an H.264 MP4 at ``path`` (atomically) and return its ground truth.

    Frames are piped as raw RGB into the ffmpeg of ``imageio-ffmpeg``; the file appears under its
    final name only once ffmpeg has succeeded (:func:`vidsearch.files.atomic_output`).

    Raises:
        RuntimeError: ffmpeg failed (its stderr tail is in the message).
    """
    path = Path(path)
    with atomic_output(path, suffix=".mp4") as tmp:  # ffmpeg picks the container from the suffix
        cmd = [
            ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{video.width}x{video.height}", "-r", str(video.fps),
            "-i", "-",
            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "veryfast", "-crf", str(crf),
            # Deterministic output: one thread and no encoder timestamp in the stream.
            "-threads", "1", "-x264-params", "threads=1", "-map_metadata", "-1", "-fflags", "+bitexact",
            "-movflags", "+faststart", str(tmp),
        ]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdin is not None
        try:
            try:
                for frame in render_video(video):
                    proc.stdin.write(frame.tobytes())
            except BrokenPipeError:
                pass  # ffmpeg died; its exit code and stderr say why below
            finally:
                proc.stdin.close()
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            if proc.wait() != 0:
                raise RuntimeError(f"ffmpeg failed writing {path}: {err[-2000:]}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return _truth(video)


def _truth_from_dict(d: dict[str, Any]) -> VideoTruth:
    scenes = tuple(SceneTruth(**s) for s in d["scenes"])
    return VideoTruth(**{**d, "scenes": scenes})


def generate_world(root: str | os.PathLike[str], *, n_videos: int = 24, seed: int = 0,
                   folders: Sequence[str] = ("park", "studio", "street"), scenes: tuple[int, int] = (3, 5),
                   scene_seconds: tuple[float, float] = (3.0, 6.0), width: int = 128, height: int = 96,
                   fps: int = 10) -> World:
    """Write ``n_videos`` demo videos under ``root/videos/<folder>/`` and ``root/world.json``.

    The ground truth lives outside ``root/videos`` so that ingesting that folder sees videos only.
    Videos already listed with the same ground truth in an existing ``world.json`` are kept (a
    rerun is cheap); ``world.json`` is written last, atomically.

    Returns:
        The world (paths relative to ``root``).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    known: dict[str, VideoTruth] = {}
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        old = load_world(root)
        if old.seed == seed:
            known = {v.relpath: v for v in old.videos}
    truths: list[VideoTruth] = []
    for i in range(n_videos):
        spec = sample_video(seed, i, scenes=scenes, folders=folders, width=width, height=height, fps=fps,
                            scene_seconds=scene_seconds)
        out = root / spec.relpath
        truth = _truth(spec)
        if out.is_file() and known.get(spec.relpath) == truth:
            truths.append(truth)
            continue
        truths.append(write_video(spec, out))
        _logger.debug("wrote %s (%d scenes, %.1f s)", out, len(spec.scenes), truth.duration_s)
    world = World(root.absolute(), seed, tuple(truths))
    doc = {"format": WORLD_FORMAT, "seed": seed, "videos": [asdict(v) for v in truths]}
    atomic_write_text(root / "world.json", json.dumps(doc, indent=1))
    return world


def load_world(root: str | os.PathLike[str]) -> World:
    """Read ``root/world.json`` written by :func:`generate_world`."""
    root = Path(root)
    doc = json.loads((root / "world.json").read_text())
    if doc.get("format") != WORLD_FORMAT:
        raise ValueError(f"{root}/world.json: unsupported format {doc.get('format')!r}")
    return World(root.absolute(), int(doc["seed"]), tuple(_truth_from_dict(v) for v in doc["videos"]))


