"""Colour conversion and resize in torch (the GPU path's arithmetic, run on the CPU here).

* ``yuv_to_rgb`` with the stream's matrix and range agrees with swscale (what the CPU reader
  uses) within a few levels, for BT.601/709/2020, limited and full range; the wrong matrix does
  not (the test would see a path that ignored the tags).
* ``resize_rgb`` is bit-identical to the CPU reader's ``resize_uint8`` (hence to
  ``preprocess_frames``), from float RGB levels and from uint8 frames.
* The CPU reader honours the tags: a BT.709-tagged video decodes with BT.709, not swscale's old
  BT.601 default.
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from media_tools import ffmpeg

from vidsearch.pipeline.colour import (
    ColourSpec,
    colour_spec,
    nv12_to_rgb,
    resize_rgb,
    swscale_args,
    yuv_to_rgb,
)
from vidsearch.pipeline.readers import PyAVReader, resize_uint8
from vidsearch.schemas.model_config import PreprocessCfg

# (ffmpeg output options, expected spec): tags written by x264 into the stream's VUI.
TAGGED = {
    "bt709_limited": (("-pix_fmt", "yuv420p", "-colorspace", "bt709", "-color_primaries", "bt709",
                       "-color_trc", "bt709", "-color_range", "tv"), ColourSpec("bt709", False)),
    "bt601_full": (("-pix_fmt", "yuvj420p", "-color_range", "pc"), ColourSpec("bt601", True)),
    "untagged": (("-pix_fmt", "yuv420p"), ColourSpec("bt601", False)),
    "bt2020_limited": (("-pix_fmt", "yuv420p", "-colorspace", "bt2020nc", "-color_range", "tv"),
                       ColourSpec("bt2020", False)),
}


@pytest.fixture(scope="module")
def tagged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("colour")
    out = {}
    for name, (opts, _) in TAGGED.items():
        out[name] = d / f"{name}.mp4"
        ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x96:rate=30:duration=0.5,noise=alls=20:allf=t",
               "-c:v", "libx264", *opts, out[name])
    return out


def _first_frame(path: Path) -> av.VideoFrame:
    with av.open(str(path)) as c:
        return next(c.decode(video=0))


def _planes(frame: av.VideoFrame) -> list[torch.Tensor]:
    return [torch.from_numpy(np.frombuffer(memoryview(p), np.uint8).reshape(p.height, p.line_size)[:, : p.width].copy())
            for p in frame.planes[:3]]


def test_colour_spec_follows_ffmpeg_tags() -> None:
    assert colour_spec(1, 1) == ColourSpec("bt709", False)      # BT709, MPEG (limited)
    assert colour_spec(5, 2) == ColourSpec("bt601", True)       # BT470BG, JPEG (full)
    assert colour_spec(6, 0) == ColourSpec("bt601", False)      # SMPTE170M, unspecified range
    assert colour_spec(9, 1) == ColourSpec("bt2020", False)
    assert colour_spec(2, 0) == ColourSpec("bt601", False)      # unspecified: swscale's default
    assert colour_spec(None, None) == ColourSpec("bt601", False)


@pytest.mark.parametrize("name", list(TAGGED))
def test_yuv_to_rgb_agrees_with_swscale(tagged: dict[str, Path], name: str) -> None:
    frame = _first_frame(tagged[name])
    spec = colour_spec(frame.colorspace, frame.color_range)
    assert spec == TAGGED[name][1]
    ref = frame.to_ndarray(format="rgb24", **swscale_args(spec)).astype(np.int16)
    mine = yuv_to_rgb(*_planes(frame), spec).permute(1, 2, 0).numpy().astype(np.int16)
    diff = np.abs(mine - ref)
    # swscale's fixed-point converters truncate where this rounds: <= 3 levels, ~1 on average.
    assert diff.max() <= 3 and diff.mean() < 1.2, (name, diff.max(), diff.mean())
    if spec.matrix != "bt601" or spec.full_range:  # the wrong conversion is far off: the check has teeth
        wrong = yuv_to_rgb(*_planes(frame), ColourSpec("bt601", False)).permute(1, 2, 0).numpy()
        assert np.abs(wrong.astype(np.int16) - ref).mean() > 2.0


def test_nv12_is_planar_with_interleaved_chroma() -> None:
    rng = np.random.default_rng(1)
    y = torch.from_numpy(rng.integers(0, 256, (6, 8), dtype=np.uint8))
    u = torch.from_numpy(rng.integers(0, 256, (3, 4), dtype=np.uint8))
    v = torch.from_numpy(rng.integers(0, 256, (3, 4), dtype=np.uint8))
    uv = torch.stack([u, v], dim=-1)  # (3, 4, 2) as NVDEC's NV12 chroma plane
    spec = ColourSpec("bt709", False)
    assert torch.equal(nv12_to_rgb(y, uv, spec), yuv_to_rgb(y, u, v, spec))
    # 10-bit samples in the high bits of 16-bit words (P010) convert like their 8-bit values
    y16, uv16 = y.to(torch.int32) * 256, uv.to(torch.int32) * 256
    assert torch.equal(nv12_to_rgb(y16, uv16, spec, scale=1 / 256), nv12_to_rgb(y, uv, spec))
    # nearest chroma: the 2x2 luma block of one chroma sample shares it (flat luma -> flat RGB)
    rgb = yuv_to_rgb(torch.full((6, 8), 120, dtype=torch.uint8), u, v, spec)
    assert torch.equal(rgb[:, 0::2, 0::2], rgb[:, 1::2, 1::2])


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize(("h", "w"), [(1080, 1920), (360, 640), (97, 131), (224, 224)])
def test_resize_rgb_is_the_cpu_resize_bit_for_bit(interpolation: str, h: int, w: int) -> None:
    pp = PreprocessCfg(interpolation=interpolation)
    frames = np.random.default_rng(h + w).integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    want = resize_uint8(frames, pp)
    for k in range(2):
        as_levels = torch.from_numpy(frames[k]).permute(2, 0, 1).float()  # (3, H, W) as yuv_to_rgb gives
        got = resize_rgb(as_levels, pp.img_size, interpolation)
        assert got.dtype == torch.uint8 and tuple(got.shape) == (pp.img_size, pp.img_size, 3)
        np.testing.assert_array_equal(got.numpy(), want[k])
        np.testing.assert_array_equal(resize_rgb(torch.from_numpy(frames[k]), pp.img_size, interpolation).numpy(),
                                      want[k])


def test_cpu_reader_decodes_bt709_with_bt709(tagged: dict[str, Path]) -> None:
    path = tagged["bt709_limited"]
    reader = PyAVReader(str(path), "mov", 0)
    got = reader.get([0]).frames[0]
    reader.close()
    frame = _first_frame(path)
    want = frame.to_ndarray(format="rgb24", **swscale_args(ColourSpec("bt709", False)))
    as_601 = frame.to_ndarray(format="rgb24", **swscale_args(ColourSpec("bt601", False)))
    np.testing.assert_array_equal(got, want)
    assert np.abs(got.astype(np.int16) - as_601).mean() > 1.0
    assert os.path.exists(path)
