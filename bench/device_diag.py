"""What the device machine has, in a few lines (``bench/device_call.sh`` prints it at every call).

    python3 bench/device_diag.py [--json FILE]

GPU (name, memory, driver, capability), CPUs, memory, free disk under /tmp, Python, torch, every
package the benches import (version or the import error: a missing device-kit group shows here),
the ffmpeg binary, and, when PyAV is there, ``nvdec_status`` (a real NVDEC decode). Never fails:
each probe reports its own error.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
from typing import Any

MODULES = ("av", "ray", "duckdb", "pyarrow", "torchcodec", "PyNvVideoCodec", "decord", "imageio_ffmpeg",
           "faster_whisper", "ctranslate2", "onnxruntime", "rapidocr", "tantivy", "pysubs2", "PIL")


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


def probe() -> dict[str, Any]:
    """Everything above as one dict (values are strings or numbers)."""
    d: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        with open("/proc/meminfo") as f:
            d["mem_total_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError as e:
        d["mem_total_gib"] = _short(e)
    d["tmp_free_gib"] = round(shutil.disk_usage("/tmp").free / 2**30, 1)
    try:
        d["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception as e:  # noqa: BLE001 - reported, never fatal
        d["nvidia_smi"] = _short(e)
    try:
        import torch

        d["torch"] = f"{torch.__version__} cuda {torch.version.cuda} available {torch.cuda.is_available()}"
        if torch.cuda.is_available():
            d["gpu"] = f"{torch.cuda.get_device_name(0)} sm_{''.join(map(str, torch.cuda.get_device_capability(0)))}"
    except Exception as e:  # noqa: BLE001
        d["torch"] = _short(e)
    mods = {}
    for m in MODULES:
        try:
            mod = importlib.import_module(m)
            mods[m] = str(getattr(mod, "__version__", "ok"))
        except Exception as e:  # noqa: BLE001 - a missing kit group shows as an import error
            mods[m] = "MISSING " + _short(e)[:80]
    d["modules"] = mods
    ff = os.environ.get("IMAGEIO_FFMPEG_EXE") or shutil.which("ffmpeg")
    d["ffmpeg"] = ff or "none"
    if "MISSING" not in mods["av"]:
        try:
            from vidsearch.pipeline.nvdec import nvdec_status

            st = nvdec_status(0)
            d["nvdec_status"] = "ok" if st.ok else st.reason
        except Exception as e:  # noqa: BLE001
            d["nvdec_status"] = _short(e)
    try:
        d["libnvcuvid"] = "yes" if "libnvcuvid" in subprocess.run(["ldconfig", "-p"], capture_output=True,
                                                                   text=True, timeout=20).stdout else "not in ldconfig"
    except Exception as e:  # noqa: BLE001
        d["libnvcuvid"] = _short(e)
    return d


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    d = probe()
    for k, v in d.items():
        if k == "modules":
            print("modules: " + ", ".join(f"{m} {s}" for m, s in v.items()))
        else:
            print(f"{k}: {v}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(d, f, indent=1)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
