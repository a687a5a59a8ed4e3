"""``vidsearch weights``: download, list and convert model weights.

``download NAME`` fetches a model's checkpoint and the BERT vocabulary into the Hugging Face
cache through the hub API (the same as ``hf download``), with one clear line when the repository
is gated, the user is not logged in (``hf auth login``) or the machine is offline. ``list`` says
for every variant whether its weights are on this machine, and where. ``convert`` runs once on a
trusted machine; afterwards only the safetensors file is loaded. The official ``.pt`` is read
with ``torch.load(weights_only=True)`` as well: a file that needs full pickle is refused (exit 1)
with the names of its globals.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

_logger = logging.getLogger(__name__)

EXIT_OK, EXIT_USER, EXIT_INTERNAL = 0, 1, 3


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``weights download``, ``weights list`` and ``weights convert``."""
    p = subparsers.add_parser(
        "weights",
        help="download, list and convert model weights",
        description="Manage InternVideo2 weights.",
    )
    sub = p.add_subparsers(dest="weights_command", metavar="ACTION", required=True)

    d = sub.add_parser(
        "download",
        help="download a model's checkpoint and tokenizer vocabulary into the Hugging Face cache",
        description="Fetch the checkpoint and the BERT vocabulary of MODEL from the Hugging Face hub into "
        "its cache, where vidsearch finds them. The InternVideo2 repositories are gated: accept the licence "
        "on the model page and log in first (`hf auth login`, or set HF_TOKEN).",
    )
    d.add_argument("model", metavar="MODEL", help="model variant, e.g. internvideo2-s2-1b (see `weights list`)")
    d.add_argument("--json", action="store_true", help="print the paths as JSON on stdout")
    d.set_defaults(func=run)

    c = sub.add_parser(
        "convert",
        help="convert a checkpoint (e.g. the official .pt) to vidsearch safetensors",
        description="Load SRC safely, map its keys to vidsearch's layout, drop training-only tensors "
        "and write DST atomically with metadata (model name, source sha256).",
    )
    c.add_argument("src", help="checkpoint to convert (.pt/.pth/.bin or .safetensors)")
    c.add_argument("--to", dest="dst", required=True, help="output path, e.g. internvideo2-s2-1b.safetensors")
    c.add_argument(
        "--model", default="internvideo2-s2-1b", help="model variant the checkpoint belongs to (see `weights list`)"
    )
    c.add_argument("--no-itm", action="store_true", help="leave out the ITM fusion layers and itm_head (smaller file)")
    c.add_argument("--weights-sha256", default=None, help="refuse SRC unless its SHA-256 equals this hex digest")
    c.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    c.set_defaults(func=run)

    ls = sub.add_parser("list", help="list model variants and whether their weights are on this machine")
    ls.add_argument("--json", action="store_true", help="print JSON on stdout")
    ls.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Dispatch ``weights`` actions. Exit codes: 0 ok, 1 user error, 3 internal error."""
    try:
        if args.weights_command == "convert":
            return _convert(args)
        if args.weights_command == "list":
            return _list(args)
        if args.weights_command == "download":
            return _download(args)
        print(f"vidsearch weights: unknown action {args.weights_command!r}", file=sys.stderr)
        return EXIT_USER
    except Exception as e:  # noqa: BLE001 - mapped to exit codes below
        from vidsearch.models import CheckpointError, WeightsNotFoundError

        if isinstance(e, (CheckpointError, WeightsNotFoundError, ValueError, FileNotFoundError)):
            print(f"vidsearch weights: error: {e}", file=sys.stderr)
            return EXIT_USER
        _logger.exception("weights %s failed", args.weights_command)
        return EXIT_INTERNAL


def _convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vidsearch.models import convert_to_safetensors
    from vidsearch.models.weights import sha256_file

    src = Path(args.src)
    if not src.is_file():
        raise FileNotFoundError(f"{src} does not exist")
    if not args.dst.endswith(".safetensors"):
        raise ValueError(f"--to must end in .safetensors, got {args.dst}")
    if args.weights_sha256:
        digest = sha256_file(src)
        if digest.lower() != args.weights_sha256.lower():
            raise ValueError(f"SHA-256 of {src} is {digest}, expected {args.weights_sha256}")
    dst = convert_to_safetensors(src, args.dst, args.model, with_itm=not args.no_itm)
    report = {"src": str(src), "dst": str(dst), "model": args.model, "with_itm": not args.no_itm}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"wrote {dst} ({args.model}{'' if not args.no_itm else ', no ITM'})")
    return EXIT_OK


def _download(args: argparse.Namespace) -> int:
    from vidsearch.models import get_model_config
    from vidsearch.models.hub import download_weights

    cfg = get_model_config(args.model)
    weights, vocab = download_weights(cfg)
    if args.json:
        print(json.dumps({"model": cfg.name, "weights": str(weights), "vocab": str(vocab)}))
    else:
        print(f"{cfg.name}: weights {weights}\n{' ' * len(cfg.name)}  vocabulary {vocab}\n"
              f"vidsearch finds them in the Hugging Face cache: `vidsearch ingest DIR --library LIB "
              f"--model {cfg.name}`")
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    from vidsearch.models import get_model_config, list_models
    from vidsearch.models.hub import local_weights, model_env_var

    rows: list[dict[str, Any]] = []
    for name in list_models():
        cfg = get_model_config(name)
        pre = cfg.pretrained
        local = local_weights(cfg)
        rows.append(
            {
                "name": name,
                "embed_dim": cfg.encoder.embed_dim,
                "num_frames": cfg.encoder.vision.num_frames,
                "is_test_model": cfg.is_test_model,
                "hf_hub_id": pre.hf_hub_id if pre else None,
                "filename": pre.filename if pre else None,
                "env_var": model_env_var(name),
                "description": cfg.description,
                "present": local.present or cfg.is_test_model,
                "weights_path": str(local.weights) if local.weights else None,
                "weights_origin": local.weights_origin,
                "vocab_path": str(local.vocab) if local.vocab else None,
                "vocab_origin": local.vocab_origin,
            }
        )
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            if r["hf_hub_id"]:
                src = f"{r['hf_hub_id']}/{r['filename']}"
            elif (r["filename"] or "").startswith("builtin:"):
                src = "weights shipped with vidsearch"
            else:
                src = "random weights (test model)"
            print(f"{r['name']:<22} {r['embed_dim']:>4}-d {r['num_frames']} frames  {src}  [{r['env_var']}]")
            if r["is_test_model"]:
                state = "present (random init, nothing to download)"
            elif r["present"]:
                state = f"present: {r['weights_path']} ({r['weights_origin']})"
            else:
                state = f"weights {r['weights_origin']}"
            print(f"{'':<22} {state}")
            if not r["is_test_model"] and r["vocab_path"] is None:
                print(f"{'':<22} vocabulary {r['vocab_origin']}")
    return EXIT_OK
