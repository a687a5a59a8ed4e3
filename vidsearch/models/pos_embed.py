"""Position embeddings of InternVideo2: 3D sin-cos init and checkpoint resampling.

Reproduces ``models/backbones/internvideo2/pos_embed.py`` of OpenGVLab/InternVideo (facts §1.3):
``get_3d_sincos_pos_embed`` for random init, and ``interpolate_pos_embed_internvideo2_new`` for
loading a checkpoint at another frame count (temporal linear) or grid size (spatial bicubic).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

_logger = logging.getLogger(__name__)

__all__ = ["get_3d_sincos_pos_embed", "resample_pos_embed", "interpolate_temporal"]


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """[sin(p*w), cos(p*w)] with w_i = 1/10000^(i/(dim/2)); (len(pos), dim)."""
    assert dim % 2 == 0
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # (dim/2,)
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)  # (M, dim/2)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (M, dim)


def get_3d_sincos_pos_embed(embed_dim: int, grid_size: int, t_size: int, cls_token: bool = True) -> np.ndarray:
    """3D sin-cos table as in the official init: (1 + t*g*g, D) with a zero cls row.

    The first D/4 dims encode t, the last 3D/4 a 2-D sincos whose first half comes from the
    column (w) index and the second half from the row index (MAE's "w goes first" meshgrid).
    """
    if embed_dim % 16:
        # D/4 temporal dims and 3D/8 dims per spatial axis must each split into sin/cos halves.
        raise ValueError(f"embed_dim {embed_dim} must be divisible by 16 for the 3D sincos init")
    dim_t = embed_dim // 4
    dim_s = embed_dim // 4 * 3
    gh = np.arange(grid_size, dtype=np.float32)
    gw = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(gw, gh), axis=0)  # (2, g, g): [0] = w index, [1] = h index
    emb_w = _sincos_1d(dim_s // 2, grid[0])  # (g*g, dim_s/2)
    emb_h = _sincos_1d(dim_s // 2, grid[1])  # (g*g, dim_s/2)
    spatial = np.concatenate([emb_w, emb_h], axis=1)  # (g*g, dim_s)
    temporal = _sincos_1d(dim_t, np.arange(t_size, dtype=np.float32))  # (t, dim_t)
    temporal = np.repeat(temporal[:, None, :], grid_size**2, axis=1)  # (t, g*g, dim_t)
    spatial = np.repeat(spatial[None, :, :], t_size, axis=0)  # (t, g*g, dim_s)
    pos = np.concatenate([temporal, spatial], axis=-1).reshape(-1, embed_dim)  # (t*g*g, D)
    if cls_token:
        pos = np.concatenate([np.zeros([1, embed_dim]), pos], axis=0)  # (1 + t*g*g, D)
    return pos


def interpolate_temporal(patch_pos: torch.Tensor, t_old: int, t_new: int) -> torch.Tensor:
    """Linearly resample patch position rows in time, exactly as the official loader.

    Args:
        patch_pos: (1, t_old * P, D) rows WITHOUT the cls row, t-major.
        t_old: frames the rows were trained with.
        t_new: frames wanted.

    Returns:
        (1, t_new * P, D) in the input dtype.
    """
    _, n, d = patch_pos.shape
    assert n % t_old == 0, (n, t_old)
    p = n // t_old
    x = patch_pos.reshape(1, t_old, p, d)  # (1, T_old, P, D)
    x = x.permute(0, 2, 3, 1).reshape(p, d, t_old)  # (P, D, T_old): P as batch, D as channels
    # mode='linear' with the default align_corners=False (interpolate_pos_embed_internvideo2_new).
    x = F.interpolate(x, size=t_new, mode="linear", align_corners=False)  # (P, D, T_new)
    x = x.permute(2, 0, 1).reshape(1, t_new * p, d)  # (1, T_new*P, D)
    return x


def _interpolate_spatial(patch_pos: torch.Tensor, t: int, g_old: int, g_new: int) -> torch.Tensor:
    """Bicubic (align_corners=False) resample of each frame's g_old x g_old grid to g_new."""
    _, _, d = patch_pos.shape
    x = patch_pos.reshape(t, g_old, g_old, d).permute(0, 3, 1, 2)  # (T, D, g_old, g_old)
    x = F.interpolate(x, size=(g_new, g_new), mode="bicubic", align_corners=False)  # (T, D, g, g)
    return x.permute(0, 2, 3, 1).reshape(1, t * g_new * g_new, d)  # (1, T*g*g, D)


def resample_pos_embed(
    pos_embed: torch.Tensor,
    num_frames: int,
    grid_size: int,
    src_num_frames: int | None = None,
) -> torch.Tensor:
    """Resample a checkpoint's joint pos embed (1, 1 + T_old*g_old^2, D) to (1, 1 + T*g^2, D).

    The cls row is kept as is. Time is resampled first (linear), then space (bicubic) only when the
    grid changes. The source layout is inferred: if the rows fit the target grid, the grid is
    unchanged and T_old = rows / g^2; otherwise ``src_num_frames`` (the checkpoint's frame count)
    gives T_old and the grid follows.

    Args:
        pos_embed: checkpoint tensor, any float dtype (kept; the official loader resamples the
            checkpoint tensor before load_state_dict casts it).
        num_frames: target frames (tubelets).
        grid_size: target patches per side.
        src_num_frames: frames of the checkpoint, needed only when the grid changes.
    """
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed must be (1, N, D), got {tuple(pos_embed.shape)}")
    n_patch = pos_embed.shape[1] - 1
    if n_patch % (grid_size**2) == 0:
        t_old, g_old = n_patch // grid_size**2, grid_size
    else:
        if not src_num_frames or n_patch % src_num_frames:
            raise ValueError(f"cannot infer the layout of a pos_embed with {n_patch} patch rows")
        t_old = src_num_frames
        g_old = math.isqrt(n_patch // t_old)
        if g_old * g_old * t_old != n_patch:
            raise ValueError(f"pos_embed with {n_patch} patch rows is not T x g x g for T={t_old}")
    if t_old == num_frames and g_old == grid_size:
        return pos_embed
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]  # (1, 1, D), (1, T_old*g_old^2, D)
    if t_old != num_frames:
        _logger.info("interpolating pos_embed in time: %d -> %d frames", t_old, num_frames)
        patch_pos = interpolate_temporal(patch_pos, t_old, num_frames)
    if g_old != grid_size:
        _logger.info("interpolating pos_embed in space: %d -> %d patches per side", g_old, grid_size)
        patch_pos = _interpolate_spatial(patch_pos, num_frames, g_old, grid_size)
    return torch.cat([cls_pos, patch_pos], dim=1)  # (1, 1 + T*g*g, D)
