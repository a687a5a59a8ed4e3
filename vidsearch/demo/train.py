"""Train the demo model ``internvideo2-demo`` on the generated world (one command, one seed).

    python -m vidsearch.demo.train --seed 0 --device cuda      # 223 s on one H200 + 16 CPU cores
    python -m vidsearch.demo.train --seed 0 --device cpu       # same recipe; ~a day on 2 shared cores

The shipped weights are the output of the first command (2500 steps x 256 clips). The data stream
is bitwise reproducible (any worker count); CUDA training is not bitwise reproducible across runs
(two seed-0 runs gave different weight hashes with equal held-out recall to two decimals), so the
SHA-256 in the registry pins the file that was evaluated, not a re-run. On CPU one fwd+bwd of this
model runs at about 7 clips/s on the shared 2-core machine, hence the GPU for the shipped file.

Contrastive training (symmetric InfoNCE, CLIP / InternVideo2 stage-2 style) of the InternVideo2
vision and text towers of :mod:`vidsearch.models`, from scratch, on clips rendered in memory by
:mod:`vidsearch.demo.world`:

* every sample ``i`` of the run is a pure function of ``(seed, i)`` (scene, window, caption,
  augmentation), so the data do not depend on the number of loader workers;
* clip windows and frame sampling follow the ingest pipeline (``uniform_indices`` inside a window
  of 2-4 s of a scene); pixels go through the model's own ``preprocess_frames`` (squash resize,
  ImageNet normalisation), the path ``encode_video`` takes at search time;
* half of the clips go through a YUV 4:2:0 round trip with 8-bit rounding, the main artefact of
  the H.264 files the demo writes (chroma at half resolution);
* in-batch positives are every pair with the same attributes (soft multi-positive targets), so
  two "two blue squares growing" clips in a batch are not pushed apart.

At the end the weights are saved as safetensors, the registry config with their SHA-256 is
written, the saved file is loaded back through ``vidsearch.models.create_model`` (the shipped
artefact, SHA-256 verified) and evaluated on held-out scenes rendered from a separate seed stream:
text->clip R@1/R@5 for training-style captions and for held-out paraphrases, saved as
``internvideo2-demo.eval.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from vidsearch.demo.captions import (
    CAPTION_STYLES,
    COLOURS,
    COUNTS,
    MOTIONS,
    SHAPES,
    Attributes,
    CaptionStyle,
    sample_caption,
)
from vidsearch.demo.model import (
    ASSETS_DIR,
    CONFIGS_DIR,
    DEMO_MODEL,
    EVAL_NAME,
    VOCAB_NAME,
    WEIGHTS_NAME,
    build_vocab,
    demo_config,
    write_json,
)
from vidsearch.demo.world import SceneRenderer, SceneSpec, sample_scene
from vidsearch.files import sha256_file

_logger = logging.getLogger(__name__)

__all__ = ["TrainCfg", "attribute_index", "render_training_clip", "evaluate", "train", "main"]

# Seed-stream tags: training samples, held-out evaluation scenes and eval captions never share one.
_TRAIN_STREAM = 0x7A1
_EVAL_STREAM = 0xE7A1
_CAPTION_STREAM = 0xCA9


@dataclass(frozen=True)
class TrainCfg:
    """Hyper-parameters of a training run (all recorded in the eval JSON)."""

    seed: int = 0
    steps: int = 2500
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    # Window of a training clip inside its scene, in seconds (the pipeline's clips are <= 4 s).
    min_window_s: float = 2.0
    max_window_s: float = 4.0
    # Probability of the YUV 4:2:0 round trip (H.264 chroma subsampling).
    yuv_prob: float = 0.5
    # Held-out evaluation scenes (the issue asks for at least 500 clips).
    eval_scenes: int = 600
    # Video frame size and rate of the rendered world (as vidsearch demo writes it).
    width: int = 128
    height: int = 96
    fps: int = 10


def attribute_index(a: Attributes) -> int:
    """Dense integer id of an attribute combination (equal ids = same semantics)."""
    return ((SHAPES.index(a.shape) * len(COLOURS) + COLOURS.index(a.colour)) * len(COUNTS)
            + COUNTS.index(a.count)) * len(MOTIONS) + MOTIONS.index(a.motion)


def yuv420_roundtrip(frames: np.ndarray) -> np.ndarray:
    """RGB -> BT.601 YUV with 2x2-averaged chroma -> RGB, rounded to 8 bits (uint8 in and out)."""
    x = frames.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    u = (b - y) * 0.564
    v = (r - y) * 0.713
    T, H, W = y.shape
    h2, w2 = H // 2 * 2, W // 2 * 2

    def sub(c: np.ndarray) -> np.ndarray:
        c = c[:, :h2, :w2].reshape(T, h2 // 2, 2, w2 // 2, 2).mean(axis=(2, 4))  # (T, H/2, W/2)
        c = np.round(c)
        return np.repeat(np.repeat(c, 2, axis=1), 2, axis=2)  # nearest upsample, (T, h2, w2)

    y = np.round(y[:, :h2, :w2])
    u, v = sub(u), sub(v)
    out = np.stack([y + 1.403 * v, y - 0.344 * u - 0.714 * v, y + 1.773 * u], axis=-1)
    res = frames.copy()
    res[:, :h2, :w2] = np.clip(np.round(out), 0, 255).astype(np.uint8)
    return res


def _window(rng: np.random.Generator, r: SceneRenderer, cfg: TrainCfg, num_frames: int) -> tuple[int, ...]:
    """Frame indices of a training clip: a 2-4 s window of the scene, sampled like the pipeline.

    Appear/disappear scenes keep only windows whose sampled frames see the event (one frame before
    it, one after): a window entirely after an appearance shows a still shape, and its caption
    would be a lie.
    """
    from vidsearch.models.preprocess import uniform_indices

    n = r.spec.num_frames
    lo = min(n, round(cfg.min_window_s * cfg.fps))
    hi = min(n, round(cfg.max_window_s * cfg.fps))
    event = r.spec.attributes.motion in ("appear", "disappear")
    for _ in range(50):
        length = int(rng.integers(lo, hi + 1))
        start = int(rng.integers(0, n - length + 1))
        idx = uniform_indices(start, start + length, num_frames).indices
        if not event or idx[0] < r.event_frame <= idx[-1]:
            return idx
    # The scene's first 4 s always hold the event (at 30-45 % of a 3-6 s scene).
    return uniform_indices(0, hi, num_frames).indices


def render_training_clip(seed: int, i: int, cfg: TrainCfg, num_frames: int = 4
                         ) -> tuple[np.ndarray, int, str]:
    """Sample ``i`` of the run ``seed``: uint8 frames (T, H, W, 3), attribute id, caption."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _TRAIN_STREAM, i]))
    spec = sample_scene(rng, cfg.fps)
    r = SceneRenderer(spec, cfg.width, cfg.height, cfg.fps)
    frames = r.frames(_window(rng, r, cfg, num_frames))
    if rng.random() < cfg.yuv_prob:
        frames = yuv420_roundtrip(frames)
    # A fifth of the captions are the canonical sentence: what vidsearch demo asks.
    style: CaptionStyle = "canonical" if rng.random() < 0.2 else "train"
    return frames, attribute_index(spec.attributes), sample_caption(spec.attributes, rng, style)


def eval_scenes(seed: int, n: int, fps: int = 10) -> list[SceneSpec]:
    """The held-out scenes: drawn from their own seed stream, never rendered in training."""
    return [sample_scene(np.random.default_rng(np.random.SeedSequence([seed, _EVAL_STREAM, i])), fps)
            for i in range(n)]


def eval_captions(scenes: Sequence[SceneSpec], seed: int, style: CaptionStyle) -> list[str]:
    """One caption per held-out scene in ``style`` (deterministic)."""
    out = []
    for i, s in enumerate(scenes):
        rng = np.random.default_rng(np.random.SeedSequence([seed, _CAPTION_STREAM, CAPTION_STYLES.index(style), i]))
        out.append(sample_caption(s.attributes, rng, style))
    return out


def _recall(sim: np.ndarray, keys: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Text->clip recall: query q is right at k if a top-k clip has the attributes of clip q."""
    order = np.argsort(-sim, axis=1, kind="stable")
    hit = keys[order] == keys[:, None]  # (Q, N): is the clip at rank j a match for query q
    return {f"R@{k}": float(hit[:, :k].any(axis=1).mean()) for k in ks}


def evaluate(model: Any, seed: int, n_scenes: int = 600, cfg: TrainCfg | None = None,
             batch_size: int = 64) -> dict[str, Any]:
    """Held-out text->clip retrieval of ``model`` on ``n_scenes`` new scenes.

    Each scene gives one clip (its first 4 s, i.e. the first clip the ingest pipeline cuts with
    ``--segment shots``) and one query per caption style; a query is right at k when one of its
    top-k clips shows the same attributes (several held-out scenes can share all four).

    Returns:
        ``{"clips": n, "duplicate_fraction": ..., "styles": {style: {"R@1": .., "R@5": .., ...}},
        "examples": {style: [three captions]}}``.
    """
    import torch

    from vidsearch.models.preprocess import uniform_indices

    cfg = cfg or TrainCfg()
    scenes = eval_scenes(seed, n_scenes, cfg.fps)
    keys = np.array([attribute_index(s.attributes) for s in scenes])
    embs = []
    for lo in range(0, len(scenes), batch_size):
        batch = []
        for s in scenes[lo:lo + batch_size]:
            r = SceneRenderer(s, cfg.width, cfg.height, cfg.fps)
            end = min(s.num_frames, round(cfg.max_window_s * cfg.fps))
            batch.append(r.frames(uniform_indices(0, end, model.num_frames).indices))
        embs.append(model.encode_video(np.stack(batch)).cpu().numpy())
    vid = np.concatenate(embs)
    _, counts = np.unique(keys, return_counts=True)
    result: dict[str, Any] = {
        "clips": len(scenes),
        "distinct_attribute_sets": int(len(counts)),
        "styles": {},
        "examples": {},
    }
    for style in CAPTION_STYLES:
        caps = eval_captions(scenes, seed, style)
        with torch.inference_mode():
            txt = np.concatenate([model.encode_text(caps[i:i + 256]).cpu().numpy()
                                  for i in range(0, len(caps), 256)])
        result["styles"][style] = _recall(txt @ vid.T, keys)
        result["examples"][style] = caps[:3]
    return result


# ---------------------------------------------------------------------------------------- training
class _ClipData:
    """Map-style dataset over sample indices; a pure function of (seed, index)."""

    def __init__(self, seed: int, n: int, cfg: TrainCfg) -> None:
        self.seed, self.n, self.cfg = seed, n, cfg

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, str]:
        return render_training_clip(self.seed, i, self.cfg)


class _Collate:
    """Stack frames and tokenise captions in the loader workers."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, items: list[tuple[np.ndarray, int, str]]) -> tuple[Any, Any, Any, Any]:
        import torch

        frames = torch.from_numpy(np.stack([it[0] for it in items]))  # (B, T, H, W, 3) uint8
        keys = torch.tensor([it[1] for it in items], dtype=torch.long)
        tok = self.tokenizer([it[2] for it in items])
        return frames, keys, tok.input_ids, tok.attention_mask


def _encode_text_train(model: Any, input_ids: Any, attention_mask: Any) -> Any:
    """``encode_text`` with gradients: [CLS] of the BERT text path -> text_proj -> L2 normalise."""
    import torch
    import torch.nn.functional as F

    hidden = model.text_encoder(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=torch.zeros_like(input_ids)).last_hidden_state  # (B, L, h)
    return F.normalize(model.text_proj(hidden[:, 0]).float(), dim=-1)  # (B, D)


def _lr_at(step: int, cfg: TrainCfg) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * p)))


def train(cfg: TrainCfg, out_dir: Path, config_dir: Path, device: str = "cpu", workers: int = 1,
          log_every: int = 50) -> dict[str, Any]:
    """Train, save the weights/vocab/config, reload the saved model and evaluate it.

    Args:
        cfg: hyper-parameters.
        out_dir: where ``demo_vocab.txt``, the safetensors and the eval JSON go.
        config_dir: where ``internvideo2-demo.json`` goes.
        device: "cpu" or "cuda".
        workers: data loader worker processes (renders clips); does not change the result.
        log_every: steps between progress log lines.

    Returns:
        The evaluation document (also written to ``out_dir / EVAL_NAME``).
    """
    if device.startswith("cuda"):
        # Deterministic cuBLAS; must be set before CUDA initialises.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    from vidsearch.models import TextTokenizer, add_model_config, build_model_skeleton, create_model
    from vidsearch.models.preprocess import preprocess_frames
    from vidsearch.schemas.model_config import ModelCfg

    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_dir.mkdir(parents=True, exist_ok=True)
    vocab = build_vocab()
    vocab_path = out_dir / VOCAB_NAME
    vocab_path.write_text("\n".join(vocab) + "\n")
    model_doc = demo_config(len(vocab), None)
    model_doc["encoder"]["init_seed"] = cfg.seed
    mcfg = ModelCfg.from_dict(model_doc)
    tok = TextTokenizer(vocab_path, mcfg.encoder.text.context_length, mcfg.encoder.text.do_lower_case)
    model = build_model_skeleton(mcfg, tokenizer=tok).to(device)
    model.train()
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07), device=device))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "pos_embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": [*no_decay, logit_scale], "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    n_params = sum(p.numel() for p in model.parameters())
    _logger.info("training %s (%.2fM parameters) on %s for %d steps of %d clips", DEMO_MODEL,
                 n_params / 1e6, device, cfg.steps, cfg.batch_size)
    # A map-style dataset is anything with __len__/__getitem__; _ClipData stays a plain class so
    # that this module imports without torch (the cast only tells the type checker).
    data = cast("torch.utils.data.Dataset[tuple[np.ndarray, int, str]]",
                _ClipData(cfg.seed, cfg.steps * cfg.batch_size, cfg))
    loader: torch.utils.data.DataLoader[tuple[np.ndarray, int, str]] = torch.utils.data.DataLoader(
        data, batch_size=cfg.batch_size, shuffle=False, num_workers=workers, collate_fn=_Collate(tok),
        persistent_workers=False, prefetch_factor=4 if workers > 0 else None, drop_last=True)
    t0 = time.monotonic()
    seen_loss: list[float] = []
    for step, (frames, keys, ids, mask) in enumerate(loader):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        frames, keys = frames.to(device, non_blocking=True), keys.to(device)
        x = preprocess_frames(frames, mcfg.preprocess)  # (B, T, 3, S, S), the search-time path
        v = model(x)  # (B, D), L2-normalised; InternVideo2Model.forward has gradients
        t = _encode_text_train(model, ids.to(device), mask.to(device))
        scale = logit_scale.clamp(max=math.log(100)).exp()
        logits = scale * t @ v.T  # (B text, B video)
        pos = (keys[:, None] == keys[None, :]).float()
        target = pos / pos.sum(1, keepdim=True)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        seen_loss.append(float(loss))
        if (step + 1) % log_every == 0 or step == 0:
            _logger.info("step %d/%d loss %.4f scale %.1f lr %.2e %.1f s", step + 1, cfg.steps,
                         float(np.mean(seen_loss[-log_every:])), float(scale), _lr_at(step, cfg),
                         time.monotonic() - t0)
    train_s = time.monotonic() - t0

    weights = out_dir / WEIGHTS_NAME
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"model": DEMO_MODEL, "trained_by": "vidsearch.demo.train",
                                             "seed": str(cfg.seed), "steps": str(cfg.steps)})
    digest = sha256_file(weights)
    config_path = config_dir / f"{DEMO_MODEL}.json"
    write_json(config_path, demo_config(len(vocab), digest))

    # Evaluate the saved artefact exactly as users get it: registry config + factory + SHA check.
    add_model_config(config_path)
    shipped = create_model(DEMO_MODEL, checkpoint=str(weights), tokenizer=str(vocab_path), device=device)
    result = evaluate(shipped, cfg.seed + 1, cfg.eval_scenes, cfg)
    doc = {
        "model": DEMO_MODEL,
        "weights_sha256": digest,
        "command": f"python -m vidsearch.demo.train --seed {cfg.seed} --device {device.split(':')[0]}",
        "train_cfg": asdict(cfg),
        "parameters": n_params,
        "device": _device_name(device),
        "train_seconds": round(train_s, 1),
        "final_loss": round(float(np.mean(seen_loss[-100:])), 4),
        "eval_seed": cfg.seed + 1,
        "heldout": result,
        "note": ("text->clip retrieval over held-out rendered scenes (first 4 s of each, as ingest "
                 "with --segment shots cuts them); a query is right at k when a top-k clip shows its "
                 "attributes. 'paraphrase' and 'synonym' use sentence structures never seen in "
                 "training; 'unseen' uses words the model never saw (reported, not a target)."),
    }
    write_json(out_dir / EVAL_NAME, doc)
    return doc


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> int:
    """CLI of ``python -m vidsearch.demo.train``."""
    p = argparse.ArgumentParser(prog="python -m vidsearch.demo.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0, help="seed of everything (data, init, eval)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", type=Path, default=None,
                   help="write vocab, weights, eval JSON and config here (default: the package's "
                        "vidsearch/models/assets and vidsearch/models/configs)")
    p.add_argument("--steps", type=int, default=TrainCfg.steps, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=TrainCfg.batch_size, help="clips per step")
    p.add_argument("--lr", type=float, default=TrainCfg.lr, help="peak learning rate")
    p.add_argument("--eval-scenes", type=int, default=TrainCfg.eval_scenes, help="held-out clips")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="clip-rendering worker processes (result does not depend on it)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cfg = TrainCfg(seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                   eval_scenes=args.eval_scenes, warmup_steps=min(TrainCfg.warmup_steps, args.steps // 10))
    out = args.out or ASSETS_DIR
    doc = train(cfg, out, args.out or CONFIGS_DIR, device=args.device, workers=args.workers)
    print(json.dumps({"train_seconds": doc["train_seconds"], "heldout": doc["heldout"]["styles"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
