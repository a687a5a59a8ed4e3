"""InternVideo2 vision encoder (stage-2), a clean PyTorch port.

Paper: "InternVideo2: Scaling Foundation Models for Multimodal Video Understanding", Wang et al.,
2024 (arXiv:2403.15377). Upstream code: OpenGVLab/InternVideo,
``InternVideo2/multi_modality/models/backbones/internvideo2/internvideo2.py`` (``PretrainInternVideo2``).

Only the inference path is ported: no masking, no drop-path, no training-only CLIP decoders
(``clip_decoder``, ``final_clip_decoder``, ``clip_pos_embed``). Module and parameter names are the
official ones, so ``vision_encoder.*`` checkpoint keys load 1:1. Numerics follow the official fp32
demo (``shared/internvideo2_facts.md`` §1, §6): RMSNorm and LayerScale in fp32, exact GELU by
default, attention through ``F.scaled_dot_product_attention`` (equal to the naive softmax within fp32
rounding, ~1e-7).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .pos_embed import get_3d_sincos_pos_embed

_logger = logging.getLogger(__name__)

__all__ = [
    "RMSNorm",
    "LayerScale",
    "Attention",
    "Mlp",
    "Block",
    "PatchEmbed3D",
    "CrossAttention",
    "AttentionPoolingBlock",
    "VisionTransformer3D",
]


class RMSNorm(nn.Module):
    """RMSNorm with a weight and no bias, computed in fp32 (official ``RMSNorm``, eps 1e-6).

    fp32 inputs take the official formula op by op (``weight * (x * rsqrt(mean(x^2) + eps))``), so
    the demo's numbers are reproduced. Lower-precision inputs take the fused ``F.rms_norm`` kernel,
    which also accumulates in fp32 but rounds once instead of twice: a bf16-ulp difference, far
    cheaper than four extra passes over the activations on GPU.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            variance = x.pow(2).mean(-1, keepdim=True)
            return self.weight * (x * torch.rsqrt(variance + self.eps))
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


class LayerScale(nn.Module):
    """Per-channel scale ``gamma`` (official ``LayerScale`` with ``force_fp32=True``).

    The official module multiplies in fp32 with autocast off and casts back. A bf16 x bf16 product
    in PyTorch is computed in fp32 and rounded once, which is the same thing, so no explicit upcast
    is needed; with fp32 gamma and bf16 x the product promotes to fp32 and is cast back.
    """

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        # torch.full, not init_values * ones: the same values, and no Python-level op on the meta
        # device (those import torch._dynamo, seconds per process).
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.gamma).to(x.dtype)


def _flash_attn_func() -> Callable[..., torch.Tensor]:
    """Import flash_attn lazily: the package is optional and CUDA-only."""
    try:
        from flash_attn import flash_attn_func  # type: ignore[import-not-found]
    except ImportError as e:
        raise ImportError(
            "attn_impl='flash' needs the flash-attn package (pip install 'vidsearch[gpu]'); "
            "use attn_impl='sdpa' otherwise"
        ) from e
    return flash_attn_func


class Attention(nn.Module):
    """Multi-head self-attention with full-width q/k RMSNorm (official ``Attention``).

    One fused ``qkv`` Linear (no bias), q and k normalised over all heads concatenated BEFORE the
    head split (not per head), softmax(q k^T / sqrt(hd)) v, then ``proj`` (with bias).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = False,
        qk_norm: bool = True,
        norm_layer: Callable[[int], nn.Module] = RMSNorm,
        attn_impl: Literal["sdpa", "flash"] = "sdpa",
    ) -> None:
        super().__init__()
        assert dim % num_heads == 0
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_impl = attn_impl
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = norm_layer(dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)  # 3 x (B, N, C); same order as the official reshape
        q, k = self.q_norm(q), self.k_norm(k)  # full-width RMSNorm, (B, N, C)
        q = q.view(B, N, self.num_heads, self.head_dim)  # (B, N, H, hd)
        k = k.view(B, N, self.num_heads, self.head_dim)  # (B, N, H, hd)
        v = v.view(B, N, self.num_heads, self.head_dim)  # (B, N, H, hd)
        if self.attn_impl == "flash" and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16):
            out = _flash_attn_func()(q, k, v)  # (B, N, H, hd); default softmax scale 1/sqrt(hd)
        else:
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            )  # (B, H, N, hd)
            out = out.transpose(1, 2)  # (B, N, H, hd)
        return self.proj(out.reshape(B, N, C))  # (B, N, C)


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 (official ``Mlp``; ``FusedMLP`` uses the same parameter names)."""

    def __init__(self, dim: int, hidden_dim: int, gelu_approx: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        # exact erf GELU = official fp32 demo; tanh = flash-attn FusedMLP of official training/eval.
        self.act = nn.GELU(approximate="tanh" if gelu_approx else "none")
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x += ls1(attn(norm1(x))); x += ls2(mlp(norm2(x)))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden_dim: int,
        qkv_bias: bool = False,
        qk_norm: bool = True,
        init_values: float = 1e-5,
        norm_eps: float = 1e-6,
        gelu_approx: bool = False,
        attn_impl: Literal["sdpa", "flash"] = "sdpa",
    ) -> None:
        super().__init__()

        def norm_layer(d: int) -> nn.Module:
            return RMSNorm(d, eps=norm_eps)

        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_norm, norm_layer, attn_impl)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, mlp_hidden_dim, gelu_approx)
        self.ls2 = LayerScale(dim, init_values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            # Official order of operations: LayerScale product rounded, then the residual add.
            x = x + self.ls1(self.attn(self.norm1(x)))
            x = x + self.ls2(self.mlp(self.norm2(x)))
            return x
        # bf16/fp16: one fused kernel for residual + LayerScale (x + y * gamma, fp32 inside, one
        # rounding instead of two): a bf16-ulp difference that saves two passes over x per block.
        x = torch.addcmul(x, self.attn(self.norm1(x)), self.ls1.gamma.to(x.dtype))
        x = torch.addcmul(x, self.mlp(self.norm2(x)), self.ls2.gamma.to(x.dtype))
        return x


class PatchEmbed3D(nn.Module):
    """Conv3d patch embed with kernel = stride = (tubelet, p, p); t-major token order."""

    def __init__(self, img_size: int, patch_size: int, num_frames: int, tubelet_size: int, dim: int) -> None:
        super().__init__()
        self.grid_size = img_size // patch_size
        self.num_frames = num_frames
        self.tubelet_size = tubelet_size
        self.proj = nn.Conv3d(
            3, dim, kernel_size=(tubelet_size, patch_size, patch_size), stride=(tubelet_size, patch_size, patch_size)
        )
        self.norm = nn.Identity()  # official patch_embed.norm is Identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, D, T', g, g)
        x = x.flatten(3).permute(0, 2, 3, 1)  # (B, T', g*g, D)
        return self.norm(x)


class CrossAttention(nn.Module):
    """Cross-attention of the pooling head: bias-free Linears plus separate q/k/v_bias params."""

    def __init__(self, dim: int, num_heads: int, out_dim: int) -> None:
        super().__init__()
        assert dim % num_heads == 0
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.k_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, x_q: torch.Tensor, x_k: torch.Tensor, x_v: torch.Tensor) -> torch.Tensor:
        B, Nq, C = x_q.shape
        Nk = x_k.shape[1]
        H, hd = self.num_heads, self.head_dim
        q = F.linear(x_q, self.q.weight, self.q_bias).view(B, Nq, H, hd).transpose(1, 2)  # (B, H, Nq, hd)
        k = F.linear(x_k, self.k.weight, self.k_bias).view(B, Nk, H, hd).transpose(1, 2)  # (B, H, Nk, hd)
        v = F.linear(x_v, self.v.weight, self.v_bias).view(B, Nk, H, hd).transpose(1, 2)  # (B, H, Nk, hd)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, Nq, hd); scale hd^-0.5 as official
        out = out.transpose(1, 2).reshape(B, Nq, C)  # (B, Nq, C)
        return self.proj(out)  # (B, Nq, out_dim)


class AttentionPoolingBlock(nn.Module):
    """Official ``AttentionPoolingBlock`` (``clip_projector``): attentive pooling to one vector.

    The query is the mean of ALL tokens (cls included); q, k and v inputs get their own LayerNorm
    (eps 1e-5); the positional terms of the official code are 0 here.
    """

    def __init__(self, dim: int, num_heads: int, out_dim: int, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.norm1_q = nn.LayerNorm(dim, eps=norm_eps)
        self.norm1_k = nn.LayerNorm(dim, eps=norm_eps)
        self.norm1_v = nn.LayerNorm(dim, eps=norm_eps)
        self.cross_attn = CrossAttention(dim, num_heads, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_q = x.mean(1, keepdim=True)  # (B, 1, D): mean over cls + all patch tokens
        out = self.cross_attn(self.norm1_q(x_q), self.norm1_k(x), self.norm1_v(x))  # (B, 1, out_dim)
        return out.squeeze(1)  # (B, out_dim)


class VisionTransformer3D(nn.Module):
    """InternVideo2 vision tower: patch embed, cls, joint pos embed, blocks, attention pooling.

    ``forward_features`` returns ``x_vis`` (the last block's tokens, no final norm), which feeds the
    ITM cross-attention; ``forward`` returns the pooled ``clip_embed_dim`` feature.
    """

    def __init__(
        self,
        *,
        img_size: int = 224,
        patch_size: int = 14,
        tubelet_size: int = 1,
        num_frames: int = 4,
        embed_dim: int = 1408,
        depth: int = 40,
        num_heads: int = 16,
        mlp_hidden_dim: int = 6144,
        qkv_bias: bool = False,
        qk_norm: bool = True,
        norm_eps: float = 1e-6,
        init_values: float = 1e-5,
        sep_image_video_pos_embed: bool = True,
        pool_num_heads: int = 16,
        pool_norm_eps: float = 1e-5,
        clip_embed_dim: int = 768,
        gelu_approx: bool = False,
        attn_impl: Literal["sdpa", "flash"] = "sdpa",
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        if embed_dim % num_heads or embed_dim % pool_num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads and pool_num_heads")
        if num_frames % tubelet_size:
            raise ValueError(f"num_frames {num_frames} must be a multiple of tubelet_size {tubelet_size}")
        if attn_impl not in ("sdpa", "flash"):
            raise ValueError(f"attn_impl must be 'sdpa' or 'flash', got {attn_impl!r}")
        self.embed_dim = embed_dim
        self.num_frames = num_frames
        self.tubelet_size = tubelet_size
        self.grid_size = img_size // patch_size
        self.sep_image_video_pos_embed = sep_image_video_pos_embed
        n_patch = self.grid_size**2
        t = num_frames // tubelet_size

        self.patch_embed = PatchEmbed3D(img_size, patch_size, num_frames, tubelet_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + t * n_patch, embed_dim))  # (1, 1+T*N, D)
        if sep_image_video_pos_embed:
            self.img_pos_embed = nn.Parameter(torch.zeros(1, 1 + n_patch, embed_dim))  # (1, 1+N, D)
        self.blocks = nn.ModuleList(
            [
                Block(
                    embed_dim,
                    num_heads,
                    mlp_hidden_dim,
                    qkv_bias=qkv_bias,
                    qk_norm=qk_norm,
                    init_values=init_values,
                    norm_eps=norm_eps,
                    gelu_approx=gelu_approx,
                    attn_impl=attn_impl,
                )
                for _ in range(depth)
            ]
        )
        self.clip_projector = AttentionPoolingBlock(embed_dim, pool_num_heads, clip_embed_dim, pool_norm_eps)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Random init as the official builder (sincos pos embeds, trunc-normal 0.02 Linears)."""
        if self.pos_embed.is_meta:
            return  # a build for loading weights: nothing to fill (the factory's meta build)
        t = self.num_frames // self.tubelet_size
        pe = get_3d_sincos_pos_embed(self.embed_dim, self.grid_size, t, cls_token=True)
        self.pos_embed.copy_(torch.from_numpy(pe).float().unsqueeze(0))
        if self.sep_image_video_pos_embed:
            img_pe = get_3d_sincos_pos_embed(self.embed_dim, self.grid_size, 1, cls_token=True)
            self.img_pos_embed.copy_(torch.from_numpy(img_pe).float().unsqueeze(0))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if self.patch_embed.proj.bias is not None:
            nn.init.zeros_(self.patch_embed.proj.bias)

    def _pos_embed_for(self, t: int) -> torch.Tensor:
        if t == self.num_frames // self.tubelet_size:
            return self.pos_embed
        if t == 1:
            if self.sep_image_video_pos_embed:
                return self.img_pos_embed
            # Official: cls pos + the video pos embed averaged over its T frames.
            n = self.grid_size**2
            cls_pos = self.pos_embed[:, :1]  # (1, 1, D)
            patch = self.pos_embed[:, 1:].view(1, -1, n, self.embed_dim).mean(1)  # (1, N, D)
            return torch.cat([cls_pos, patch], dim=1)  # (1, 1+N, D)
        raise ValueError(
            f"the model is built for {self.num_frames} frames (or 1 for images), got {t * self.tubelet_size}; "
            "build it with num_frames=... to interpolate the position embedding"
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens after the last block (``x_vis``, no final norm).

        Args:
            x: normalised frames (B, 3, T, H, W).

        Returns:
            (B, 1 + T*g*g, D).
        """
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"expected (B, 3, T, H, W), got {tuple(x.shape)}")
        x = x.to(self.patch_embed.proj.weight.dtype)
        x = self.patch_embed(x)  # (B, T, N, D)
        B, T, N, D = x.shape
        x = x.reshape(B, T * N, D)  # (B, T*N, D): t-major, then row, then column
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)  # (B, 1+T*N, D)
        x = x + self._pos_embed_for(T)
        for blk in self.blocks:
            x = blk(x)
        return x

    def forward_head(self, x_vis: torch.Tensor) -> torch.Tensor:
        """Attention-pool ``x_vis`` (B, L, D) to (B, clip_embed_dim)."""
        return self.clip_projector(x_vis)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> pooled (B, clip_embed_dim)."""
        return self.forward_head(self.forward_features(x))
