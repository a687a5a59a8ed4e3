"""YUV -> RGB colour conversion and the model's resize in torch, shared by the CPU and GPU readers.

Why here and not in swscale: NVDEC hands out NV12 planes on the GPU (``VideoPlane.__dlpack__``),
and a trip through host memory to let swscale convert them would cost more than the decode. So
the GPU path converts in torch, and this module is the single definition of that conversion, the
one the CPU path must agree with.

Which matrix and range (both paths, :func:`colour_spec`): the stream's own tags, as FFmpeg 8's
``sws_scale_frame`` (PyAV >= 17) reads them: BT.709, BT.2020 (non-constant luminance), SMPTE
240M, FCC; BT.470BG / SMPTE 170M and **untagged streams are BT.601** (swscale's default, what
OpenCV, decord and the InternVideo2 demo's frames went through); range is full only when tagged
``JPEG`` (full), else limited (16-235 luma, 16-240 chroma). The CPU reader passes the same choice
to swscale explicitly (:func:`swscale_args`), so an old PyAV that ignored the frame's tags and a
new one that reads them give the same frames.

Arithmetic (:func:`yuv_to_rgb`): float32, chroma replicated over its 2x2 luma block (nearest,
as swscale's unscaled YUV->RGB converters do), round to integers and clamp to 0..255: an RGB
uint8 frame, held as float. Against swscale's fixed-point SIMD converters it differs by at most
a few levels in a few pixels (``tests/unit/test_pipeline_colour.py`` measures it).

Resize (:func:`resize_rgb`): exactly :func:`vidsearch.models.preprocess.preprocess_frames`'s
(float32 ``F.interpolate`` of a channels-last (1, 3, H, W) view, no antialias, round, clamp),
on whatever device the frame is: on the CPU it is bit-identical to
:func:`vidsearch.pipeline.readers.resize_uint8`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Matrix = Literal["bt601", "bt709", "bt2020", "smpte240m", "fcc"]

# (Kr, Kb) luma weights of each matrix (ITU-R BT.601/709/2020, SMPTE 240M, FCC 73.682).
_KR_KB: dict[str, tuple[float, float]] = {
    "bt601": (0.299, 0.114),
    "bt709": (0.2126, 0.0722),
    "bt2020": (0.2627, 0.0593),
    "smpte240m": (0.212, 0.087),
    "fcc": (0.30, 0.11),
}

# FFmpeg's AVColorSpace values -> matrix. Anything else (unspecified, reserved, RGB, YCgCo,
# BT.2020 constant luminance, ICtCp) is converted as BT.601, as swscale does.
_AVCOL_SPC = {1: "bt709", 4: "fcc", 5: "bt601", 6: "bt601", 7: "smpte240m", 9: "bt2020"}
_AVCOL_RANGE_JPEG = 2  # AVCOL_RANGE_JPEG: full range


@dataclass(frozen=True)
class ColourSpec:
    """How a stream's YUV samples map to RGB."""

    matrix: Matrix = "bt601"      # luma/chroma weights; wrong -> hues shift (greens, skin tones)
    full_range: bool = False      # True: 0-255 luma; False: 16-235 (wrong -> washed out or crushed)


def colour_spec(colorspace: int | None, color_range: int | None) -> ColourSpec:
    """The conversion for a frame/stream with FFmpeg's ``AVColorSpace`` and ``AVColorRange``
    values (PyAV's ``frame.colorspace``/``frame.color_range`` or the codec context's)."""
    matrix: Any = _AVCOL_SPC.get(int(colorspace or 0), "bt601")
    return ColourSpec(matrix=matrix, full_range=int(color_range or 0) == _AVCOL_RANGE_JPEG)


def swscale_args(spec: ColourSpec) -> dict[str, Any]:
    """Keyword arguments for PyAV's ``VideoFrame.reformat``/``to_ndarray`` that make swscale
    convert with ``spec`` (and one thread: swscale's default, 0, starts one thread per core in
    every decode process)."""
    from av.video.reformatter import ColorRange, Colorspace

    cs = {"bt601": Colorspace.ITU601, "bt709": Colorspace.ITU709, "bt2020": Colorspace.BT2020,
          "smpte240m": Colorspace.SMPTE240M, "fcc": Colorspace.FCC}[spec.matrix]
    return {"src_colorspace": cs, "src_color_range": ColorRange.JPEG if spec.full_range else ColorRange.MPEG,
            "threads": 1}


def rgb_coefficients(spec: ColourSpec) -> tuple[float, float, float, float, float, float]:
    """``(y_off, y_gain, r_v, g_u, g_v, b_u)``: R = g*(Y - off) + r_v*(V-128), G = g*(Y - off)
    - g_u*(U-128) - g_v*(V-128), B = g*(Y - off) + b_u*(U-128), in 8-bit units."""
    kr, kb = _KR_KB[spec.matrix]
    kg = 1.0 - kr - kb
    if spec.full_range:
        y_off, y_gain, c_gain = 0.0, 1.0, 1.0
    else:
        y_off, y_gain, c_gain = 16.0, 255.0 / 219.0, 255.0 / 224.0
    r_v = 2.0 * (1.0 - kr) * c_gain
    b_u = 2.0 * (1.0 - kb) * c_gain
    g_u = 2.0 * kb * (1.0 - kb) / kg * c_gain
    g_v = 2.0 * kr * (1.0 - kr) / kg * c_gain
    return y_off, y_gain, r_v, g_u, g_v, b_u


def yuv_to_rgb(y: Any, u: Any, v: Any, spec: ColourSpec, scale: float = 1.0) -> Any:
    """Planes -> RGB as a float32 (3, H, W) tensor of integer values 0..255 (an RGB uint8 frame).

    Args:
        y: (H, W) luma tensor (uint8, or 16-bit samples held as int16/int32/float).
        u: (ceil(H/2), ceil(W/2)) Cb (4:2:0); (H, W) for 4:4:4.
        v: Cr, the shape of ``u``.
        spec: matrix and range.
        scale: multiplies the samples into 8-bit units (1/256 for P010/P016's high-bit 16-bit words).
    """
    import torch

    H, W = y.shape[-2:]
    yf = y.to(torch.float32)
    uf = u.to(torch.float32)
    vf = v.to(torch.float32)
    if scale != 1.0:
        yf, uf, vf = yf * scale, uf * scale, vf * scale
    if uf.shape[-2:] != (H, W):  # 4:2:0: replicate each chroma sample over its 2x2 luma block
        uf = uf.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)[..., :H, :W]
        vf = vf.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)[..., :H, :W]
    y_off, y_gain, r_v, g_u, g_v, b_u = rgb_coefficients(spec)
    yy = (yf - y_off) * y_gain
    uc, vc = uf - 128.0, vf - 128.0
    rgb = torch.stack((yy + r_v * vc, yy - g_u * uc - g_v * vc, yy + b_u * uc))  # (3, H, W)
    return rgb.round_().clamp_(0.0, 255.0)


def nv12_to_rgb(y: Any, uv: Any, spec: ColourSpec, scale: float = 1.0) -> Any:
    """NV12 (or P010/P016) planes as NVDEC hands them out -> float32 (3, H, W) RGB levels.

    Args:
        y: (H, W) luma.
        uv: (H/2, W/2, 2) interleaved Cb, Cr.
    """
    return yuv_to_rgb(y, uv[..., 0], uv[..., 1], spec, scale)


def resize_rgb(rgb: Any, size: int, interpolation: str = "bilinear") -> Any:
    """(3, H, W) float RGB levels (or (H, W, 3) uint8) -> (S, S, 3) uint8 tensor, with exactly
    the arithmetic of ``preprocess_frames``: float32 ``F.interpolate`` of a channels-last
    (1, 3, H, W) view, no antialias, ``align_corners=False``, then round and clamp."""
    import torch
    import torch.nn.functional as F

    if rgb.ndim == 3 and rgb.shape[-1] == 3 and rgb.dtype == torch.uint8:
        hwc = rgb
    else:
        hwc = rgb.permute(1, 2, 0)  # (H, W, 3)
    h, w = hwc.shape[:2]
    if h == size and w == size:
        return hwc.round().clamp(0, 255).to(torch.uint8) if hwc.is_floating_point() else hwc.contiguous()
    # Channels-last float32 (1, 3, H, W), as preprocess_frames's permute of (B*T, H, W, 3) frames:
    # the interpolation kernel (and so its rounding) depends on the memory layout.
    x = hwc.to(torch.float32).contiguous().unsqueeze(0).permute(0, 3, 1, 2)  # (1, 3, H, W)
    x = F.interpolate(x, size=(size, size), mode=interpolation, align_corners=False, antialias=False)
    x = x.round_().clamp_(0, 255).to(torch.uint8)  # (1, 3, S, S)
    return x[0].permute(1, 2, 0).contiguous()  # (S, S, 3)
