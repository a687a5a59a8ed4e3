"""GPU checks (marker ``gpu``; skipped without CUDA)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F

from vidsearch.models import create_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("frames", [4, 8])
def test_bf16_vs_fp32_1b_shaped(frames: int) -> None:
    """bf16 weights vs fp32 on a 1B-shaped random-weight encoder: cosine >= 0.999.

    LayerScale init 0.1 (instead of 1e-5) makes every block contribute, so bf16 errors compound
    as they would with trained weights.
    """
    free, _ = torch.cuda.mem_get_info()
    overrides = {} if free > 24 * 2**30 else {"vision_depth": 12}  # mid-size on small GPUs
    m = create_model(
        "internvideo2-s2-1b",
        pretrained=False,
        vision_only=True,
        device="cuda",
        num_frames=frames,
        vision_init_values=0.1,
        **overrides,
    )
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(4, frames, 3, 224, 224, device="cuda", generator=g)
    e32 = m.encode_video_preprocessed(x)
    m.to(torch.bfloat16)
    e16 = m.encode_video_preprocessed(x)
    cos = F.cosine_similarity(e32, e16, dim=-1)
    assert cos.min().item() >= 0.999, cos


def test_uint8_frames_on_gpu_match_cpu() -> None:
    cpu = create_model("internvideo2-tiny", vision_only=True)
    gpu = create_model("internvideo2-tiny", vision_only=True, device="cuda")
    fr = torch.randint(0, 256, (2, 4, 60, 80, 3), dtype=torch.uint8)
    torch.testing.assert_close(gpu.encode_video(fr).cpu(), cpu.encode_video(fr), rtol=1e-4, atol=1e-4)
