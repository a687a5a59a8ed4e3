"""Throughput of the InternVideo2-1B vision encoder vs a bare ViT of the same shape.

Measures clips/s of ``create_model("internvideo2-s2-1b", pretrained=False, vision_only=True)``
(random weights; no checkpoint or tokenizer needed) and of a bare pre-norm ViT with the same width,
depth, heads, MLP and token count (LayerNorm, SDPA, no q/k-norm, no LayerScale, no pooling head),
at several frame counts and batch sizes, and prints the ratio, the peak GPU memory and the
bf16-vs-fp32 cosine of the 1B encoder on the same input.

    python bench/embed_throughput.py                       # H100/H200: 4 and 8 frames, batch 8/32/64
    python bench/embed_throughput.py --compile --batches 32
    python bench/embed_throughput.py --device cpu --tiny   # smoke test (tiny model, 1 iteration)

Measured (NVIDIA H200, torch 2.11.0+cu130, bf16, SDPA, 20 iterations after 5 warm-ups):

    frames batch  ours clips/s  bare ViT clips/s  ratio  peak GiB (ours/bare)
    4      8      180.9         199.9             0.905  4.1 / 4.2
    4      32     181.9         199.8             0.911  4.9 / 5.1
    4      64     183.1         199.7             0.917  5.9 / 6.4
    8      8       81.5          88.5             0.920  4.4 / 4.5
    8      32      82.4          89.2             0.923  5.9 / 6.5
    8      64      82.1          89.2             0.921  8.0 / 9.1
    --compile (blocks), batch 32: 4 frames 200.0 vs 199.3 (1.003); 8 frames 89.9 vs 90.0 (0.999)
    --cuda-graphs, 4 frames, batch 8: 186.3 vs 203.6 (0.915)
    bf16 vs fp32 cosine, 4 random clips: min 0.999992 (LayerScale 1e-5), 0.999987 (LayerScale 0.1)

About 2.33 TFLOP per 4-frame clip, so 182 clips/s is ~420 TFLOP/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

try:
    import vidsearch  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vidsearch.models import create_model, get_model_config  # noqa: E402


class BareBlock(nn.Module):
    """Plain pre-norm ViT block: LayerNorm, fused qkv (no bias, like InternVideo2), SDPA, GELU MLP."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(self.norm1(x)).view(B, N, 3, self.heads, C // self.heads)  # (B, N, 3, H, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, hd)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        x = x + self.proj(a)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class BareViT(nn.Module):
    """Conv3d patch embed + cls + pos embed + plain blocks; no head (the reference for the ratio)."""

    def __init__(self, dim: int, depth: int, heads: int, hidden: int, patch: int, img: int, frames: int) -> None:
        super().__init__()
        self.patch_embed = nn.Conv3d(3, dim, (1, patch, patch), (1, patch, patch))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + frames * (img // patch) ** 2, dim))
        self.blocks = nn.ModuleList([BareBlock(dim, heads, hidden) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, 3, H, W)
        x = self.patch_embed(x.permute(0, 2, 1, 3, 4))  # (B, D, T, g, g)
        x = x.flatten(2).transpose(1, 2)  # (B, T*g*g, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed  # (B, 1+T*g*g, D)
        for b in self.blocks:
            x = b(x)
        return x


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], torch.Tensor], device: torch.device, warmup: int, iters: int) -> float:
    """Seconds per call (CUDA events on GPU, perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000 / iters
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def make_runner(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, cuda_graphs: bool
) -> Callable[[], torch.Tensor]:
    """A zero-argument callable running ``f(x)``, optionally replayed from a captured CUDA graph."""
    if not cuda_graphs or x.device.type != "cuda":
        return lambda: f(x)
    static_x = x.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            f(static_x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static_y = f(static_x)

    def run() -> torch.Tensor:
        g.replay()
        return static_y

    return run


def bf16_cosine(name: str, frames: int, device: torch.device, overrides: dict) -> dict:
    """Cosine between the fp32 and bf16 embeddings of the same random-weight encoder and input."""
    if device.type != "cuda":
        return {}
    torch.manual_seed(0)
    m = create_model(name, pretrained=False, vision_only=True, device=device, num_frames=frames, **overrides)
    size = m.preprocess_cfg.img_size
    x = torch.randn(4, frames, 3, size, size, device=device)
    e32 = m.encode_video_preprocessed(x)
    m.to(torch.bfloat16)
    e16 = m.encode_video_preprocessed(x)
    cos = F.cosine_similarity(e32, e16, dim=-1)
    del m
    torch.cuda.empty_cache()
    return {"min": cos.min().item(), "mean": cos.mean().item()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    p.add_argument("--tiny", action="store_true", help="use the tiny test model (smoke test; CPU friendly)")
    p.add_argument("--frames", type=int, nargs="+", default=None, help="frame counts (default 4 8; tiny: 4)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 8 32 64; tiny: 2)")
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default 20; tiny: 1)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up iterations (default 5; tiny: 0)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="weights/activations dtype")
    p.add_argument("--attn-impl", default="sdpa", choices=["sdpa", "flash"], help="attention kernel of the 1B model")
    p.add_argument("--compile", action="store_true", help="torch.compile the blocks of both models (per shape)")
    p.add_argument("--cuda-graphs", action="store_true", help="replay captured CUDA graphs (GPU only)")
    p.add_argument("--no-bare", action="store_true", help="skip the bare-ViT reference")
    p.add_argument("--no-cosine", action="store_true", help="skip the bf16-vs-fp32 cosine check")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    name = "internvideo2-tiny" if args.tiny else "internvideo2-s2-1b"
    frames_list = args.frames or ([4] if args.tiny else [4, 8])
    batches = args.batches or ([2] if args.tiny else [8, 32, 64])
    iters = args.iters if args.iters is not None else (1 if args.tiny else 20)
    warmup = args.warmup if args.warmup is not None else (0 if args.tiny else 5)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        dev_name = torch.cuda.get_device_name(device)
    else:
        dev_name = f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"device: {dev_name}; torch {torch.__version__}; model {name}; dtype {args.dtype}; "
        f"attn {args.attn_impl}; compile={args.compile}; cuda_graphs={args.cuda_graphs}"
    )

    results: list[dict] = []
    for frames in frames_list:
        t0 = time.perf_counter()
        model = create_model(
            name,
            pretrained=False,
            vision_only=True,
            device=device,
            dtype=dtype,
            num_frames=frames,
            attn_impl=args.attn_impl,
        )
        v = get_model_config(name, num_frames=frames).encoder.vision
        print(
            f"\n[{frames} frames] built {name} in {time.perf_counter() - t0:.1f}s: "
            f"{v.num_tokens} tokens/clip, {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params"
        )
        bare = None
        if not args.no_bare:
            with torch.device(device):
                bare = (
                    BareViT(v.embed_dim, v.depth, v.num_heads, v.mlp_hidden_dim, v.patch_size, v.img_size, frames)
                    .to(dtype)
                    .eval()
                )
        ve = model.vision_encoder
        if args.compile:
            # Regional compilation: each block is compiled (one graph shared by the 40 identical
            # blocks), patch embed and head stay eager. Whole-model compile of the 1B encoder hit
            # an Inductor assertion (tiling_utils._solve_simple_expr) with torch 2.11 on H200.
            for blk in [*ve.blocks, *(bare.blocks if bare is not None else [])]:
                blk.compile()
        enc, bare_f = ve, bare

        def ours(x: torch.Tensor, enc: nn.Module = enc, proj: nn.Module = model.vision_proj) -> torch.Tensor:
            pooled = enc(x.permute(0, 2, 1, 3, 4))  # (B, 3, T, H, W) -> (B, clip_embed_dim)
            return F.normalize(proj(pooled).float(), dim=-1)

        for bs in batches:
            x = torch.randn(bs, frames, 3, v.img_size, v.img_size, device=device, dtype=dtype)
            row = {"frames": frames, "batch": bs}
            try:
                with torch.inference_mode():
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    t = time_fn(make_runner(ours, x, args.cuda_graphs), device, warmup, iters)
                    row["ours_clips_s"] = bs / t
                    if device.type == "cuda":
                        row["ours_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                    if bare_f is not None:
                        if device.type == "cuda":
                            torch.cuda.reset_peak_memory_stats(device)
                        tb = time_fn(make_runner(bare_f, x, args.cuda_graphs), device, warmup, iters)
                        row["bare_clips_s"] = bs / tb
                        row["ratio"] = row["ours_clips_s"] / row["bare_clips_s"]
                        if device.type == "cuda":
                            row["bare_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            except torch.OutOfMemoryError:
                row["error"] = "out of memory"
                torch.cuda.empty_cache()
            except Exception as e:  # noqa: BLE001 - e.g. a compiler failure: report it, go on
                row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
            results.append(row)
            msg = f"  batch {bs:>3}: ours {row.get('ours_clips_s', float('nan')):8.1f} clips/s"
            if "bare_clips_s" in row:
                msg += f" | bare ViT {row['bare_clips_s']:8.1f} clips/s | ratio {row['ratio']:.3f}"
            if "ours_peak_gib" in row:
                msg += f" | peak {row['ours_peak_gib']:.1f} GiB (bare {row.get('bare_peak_gib', float('nan')):.1f})"
            print(msg + (f" | {row['error']}" if "error" in row else ""), flush=True)
        del model, bare, enc, bare_f
        if device.type == "cuda":
            torch.cuda.empty_cache()

    cos = {}
    if not args.no_cosine and device.type == "cuda":
        # Random init has LayerScale 1e-5 (blocks ~ identity, which would make bf16 look perfect);
        # init_values=0.1 makes every block contribute, a harsher test of bf16 numerics.
        for iv in (1e-5, 0.1):
            cos[str(iv)] = bf16_cosine(name, frames_list[0], device, {"vision_init_values": iv})
            print(
                f"bf16 vs fp32 cosine ({frames_list[0]} frames, LayerScale init {iv}): "
                f"min {cos[str(iv)]['min']:.6f} mean {cos[str(iv)]['mean']:.6f}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"device": dev_name, "results": results, "bf16_cosine": cos}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
