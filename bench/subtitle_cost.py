"""What reading subtitles costs per video in ingest (issue 14: "always read, at almost no cost").

The decode worker reads a video's subtitles while it plans it (``decode.plan_video`` ->
``text.read_subtitle_outcome``): the sidecar files of the video's folder (one ``scandir``, cached
per folder while the folder is unchanged) and, only when the probe saw subtitle streams, the
container's text tracks (a demux pass over the subtitle packets). This bench times that call, and
the probe + plan it rides on, for:

* ``plain``: no subtitles at all (the common case: one folder listing);
* ``sidecar``: a 90-minute film's .srt (1,200 cues) beside the video;
* ``mov_text``: the same cues as an embedded mov_text track (the container is opened again and
  its subtitle packets demuxed);
* ``plain`` in a folder of ``--folder-files`` other files (the listing grows with the folder).

    python bench/subtitle_cost.py --repeat 20 --folder-files 10000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from vidsearch.pipeline.decode import plan_video
from vidsearch.pipeline.discover import discover
from vidsearch.pipeline.text import read_subtitle_outcome
from vidsearch.schemas.config import IngestCfg
from vidsearch.schemas.model_config import PreprocessCfg


def ffmpeg(*args: str | os.PathLike[str]) -> None:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *map(str, args)],
                   check=True)


def srt(cues: int) -> str:
    out = []
    for i in range(cues):
        a, b = i * 4.5, i * 4.5 + 3.0
        def t(x: float) -> str:
            return f"{int(x // 3600):02d}:{int(x % 3600 // 60):02d}:{int(x % 60):02d},{int(x * 1000 % 1000):03d}"
        out.append(f"{i + 1}\n{t(a)} --> {t(b)}\nLine {i} of the film, said by someone\nover two lines.\n")
    return "\n".join(out) + "\n"


def timed(fn, repeat: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    xs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - t)
    return {"median_ms": round(1000 * statistics.median(xs), 3), "max_ms": round(1000 * max(xs), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--cues", type=int, default=1200)
    ap.add_argument("--folder-files", type=int, default=10000)
    ap.add_argument("--seconds", type=int, default=60, help="length of the test videos")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = root / "src.mp4"
        ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=320x240:rate=25:duration={args.seconds}", "-c:v", "libx264",
               "-preset", "ultrafast", "-pix_fmt", "yuv420p", src)
        (root / "cues.srt").write_text(srt(args.cues))
        cases = {}
        for name in ("plain", "sidecar", "mov_text", "big_folder"):
            d = root / name
            d.mkdir()
            v = d / "film.mp4"
            if name == "mov_text":
                ffmpeg("-i", src, "-i", root / "cues.srt", "-map", "0", "-map", "1", "-c:v", "copy",
                       "-c:s", "mov_text", v)
            else:
                os.link(src, v)
            if name == "sidecar":
                (d / "film.srt").write_text(srt(args.cues))
            if name == "big_folder":
                for i in range(args.folder_files):
                    (d / f"other_{i:06d}.txt").touch()
            cases[name] = v
        cfg, pp = IngestCfg(), PreprocessCfg()
        report: dict[str, object] = {"repeat": args.repeat, "cues": args.cues, "folder_files": args.folder_files,
                                     "video_seconds": args.seconds}
        for name, v in cases.items():
            task = discover([os.fsencode(v)], cfg.extensions).tasks[0]
            plan = plan_video(task, cfg, pp)
            origin, streams = plan.probe.origin_s, plan.probe.subtitle_streams
            out = read_subtitle_outcome(task.path_bytes, task.video_id, origin_s=origin, embedded=streams > 0)
            report[name] = {
                "segments": len(out.rows), "status": out.status,
                "subtitles": timed(lambda t=task, o=origin, s=streams: read_subtitle_outcome(
                    t.path_bytes, t.video_id, origin_s=o, embedded=s > 0), args.repeat),
                "plan_with_subtitles": timed(lambda t=task: plan_video(t, cfg, pp), max(3, args.repeat // 4)),
            }
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
