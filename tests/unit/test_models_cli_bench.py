"""`vidsearch weights` command and the benchmark's CPU smoke mode."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from vidsearch.commands import weights as weights_cmd
from vidsearch.models import create_model

REPO = Path(__file__).resolve().parents[2]


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    weights_cmd.add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_weights_convert_and_errors(tmp_path, capsys) -> None:
    src = create_model("internvideo2-tiny", vision_only=True, init_seed=3)
    # our own layout is a valid source too (vision only -> --no-itm, text taken from a full model)
    full = create_model("internvideo2-tiny", init_seed=3)
    torch.save({"model": full.state_dict()}, tmp_path / "ckpt.pt")
    dst = tmp_path / "tiny.safetensors"
    rc = _run(
        [
            "weights",
            "convert",
            str(tmp_path / "ckpt.pt"),
            "--to",
            str(dst),
            "--model",
            "internvideo2-tiny",
            "--no-itm",
            "--json",
        ]
    )
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dst"] == str(dst) and dst.is_file()
    m = create_model("internvideo2-tiny", checkpoint=dst, vision_only=True)
    fr = torch.randint(0, 256, (1, 4, 56, 56, 3), dtype=torch.uint8)
    torch.testing.assert_close(m.encode_video(fr), src.encode_video(fr), rtol=0, atol=0)
    # user errors: exit 1 with one line on stderr
    assert _run(["weights", "convert", str(tmp_path / "nope.pt"), "--to", str(dst)]) == 1
    assert _run(["weights", "convert", str(tmp_path / "ckpt.pt"), "--to", str(tmp_path / "x.bin")]) == 1
    assert (
        _run(
            [
                "weights",
                "convert",
                str(tmp_path / "ckpt.pt"),
                "--to",
                str(dst),
                "--model",
                "internvideo2-tiny",
                "--weights-sha256",
                "0" * 64,
            ]
        )
        == 1
    )
    # ITM requested but the source has no fusion layers
    assert (
        _run(["weights", "convert", str(tmp_path / "ckpt.pt"), "--to", str(dst), "--model", "internvideo2-tiny"]) == 1
    )
    err = capsys.readouterr().err
    assert "does not exist" in err and "SHA-256" in err and "text_fusion" in err


def test_weights_list(capsys) -> None:
    assert _run(["weights", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["internvideo2-tiny"]["is_test_model"] is True
    assert rows["internvideo2-s2-1b"]["env_var"] == "VIDSEARCH_WEIGHTS_INTERNVIDEO2_S2_1B"
    assert rows["internvideo2-demo"]["is_test_model"] is False
    assert _run(["weights", "list"]) == 0
    table = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "shipped with vidsearch" in table["internvideo2-demo"]
    assert "random weights (test model)" in table["internvideo2-tiny"]


def test_bench_cpu_smoke(tmp_path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "embed_throughput.py"), "--device", "cpu", "--tiny", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())["results"]
    assert res[0]["ours_clips_s"] > 0 and res[0]["bare_clips_s"] > 0
    assert "ratio" in proc.stdout
