"""``vidsearch ingest PATH... --library DIR``: cut, embed and store a video library."""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import replace
from typing import Any

from vidsearch.commands import add_break_lock_argument, add_library_argument


def add_parser(subparsers: Any) -> None:
    from vidsearch.schemas.config import IngestCfg

    p = subparsers.add_parser(
        "ingest", help="cut videos into clips, embed them and store them in a library",
        description="Ingest folders (recursive), globs, files or @LIST files (one path per line) "
                    "into a library folder. Rerunning the same command resumes: committed videos "
                    "are skipped, failed ones retried up to twice.")
    p.add_argument("paths", nargs="+", help="folders, files, globs, or @FILE listing paths")
    add_library_argument(p, "library folder (created if missing); always local")
    p.add_argument("--shards-uri", metavar="URI",
                   help="keep the Parquet shards at this pyarrow filesystem URI instead of LIBRARY/shards "
                        "(s3://bucket/prefix, gs://..., file:///abs/path, hdfs://...; set when the library is "
                        "created; credentials from the environment, never in the URI)")
    p.add_argument("--model", default=None,
                   help="model name (default: the library's model; for a new library internvideo2-s2-1b; "
                        "internvideo2-tiny for tests)")
    p.add_argument("--checkpoint", help="weights file or folder (default: env vars, then HF cache)")
    p.add_argument("--tokenizer", help="tokenizer vocab (not needed for ingest; kept for symmetry)")
    p.add_argument("--device", help="embed device: cuda or cpu (default: cuda when present)")
    p.add_argument("--batch-size", type=int, default=32, help="clips per embed batch (default 32)")
    p.add_argument("--decode-workers", type=int, help="decode worker processes (default: CPUs - 1)")
    p.add_argument("--embed-actors", type=int, help="embed actors (default: one per GPU, else 1)")
    p.add_argument("--segment", choices=("fixed", "shots"), default="fixed",
                   help="fixed windows, or shots cut at scene changes (default fixed)")
    p.add_argument("--clip-seconds", type=float, default=4.0, help="window length in seconds (default 4)")
    p.add_argument("--stride", type=float, default=None, help="window step in seconds (default = clip length)")
    lim = IngestCfg()
    p.add_argument("--scene-threshold", type=float, default=lim.scene_threshold,
                   help=f"ffmpeg scene score above which a frame starts a new shot (--segment shots; "
                        f"default {lim.scene_threshold:g})")
    p.add_argument("--skip-static", action="store_true", help="drop near-static clips that repeat the previous one")
    p.add_argument("--ext", help="comma-separated extensions to pick up in folders, e.g. .mp4,.mkv (default: "
                                 f"{','.join(lim.extensions)})")
    p.add_argument("--no-sniff", action="store_true",
                   help="in folders, take only files with a video extension (no content sniffing)")
    p.add_argument("--decode-timeout", type=float, default=300.0,
                   help="seconds without progress before a decoder is killed (default 300)")
    p.add_argument("--max-pixels", type=int, default=lim.max_pixels,
                   help=f"refuse videos whose frames have more pixels (TooLarge; default {lim.max_pixels}, 8K)")
    p.add_argument("--max-frames", type=int, default=lim.max_frames,
                   help=f"refuse videos with more frames (TooManyFrames; default {lim.max_frames})")
    p.add_argument("--max-streams", type=int, default=lim.max_streams,
                   help=f"refuse files with more streams (TooManyStreams; default {lim.max_streams}, "
                        f"of which at most {lim.max_video_streams} video)")
    p.add_argument("--decode-memory", type=int, default=lim.decode_memory_mb, metavar="MIB",
                   help=f"memory each decode process may use beyond its start-up; a video needing more "
                        f"fails as TooLarge (default {lim.decode_memory_mb}; 0 = no cap)")
    p.add_argument("--shard-rows", type=int, default=4096, help="clip rows per shard (default 4096)")
    p.add_argument("--commit-interval", type=float, default=lim.commit_interval_s,
                   help=f"commit at least this often, seconds (default {lim.commit_interval_s:g})")
    p.add_argument("--new-index", action="store_true",
                   help="start the library over if it holds another model's embeddings")
    p.add_argument("--retry-failed", action="store_true", help="retry quarantined (failed twice) videos")
    add_break_lock_argument(p)
    p.add_argument("--decode", choices=("auto", "cpu", "gpu"), default="auto",
                   help="where videos are decoded: auto (NVDEC on the embedding GPU beside the CPU decoders when "
                        "the GPU can decode, else the CPU), cpu, or gpu (fail when no GPU decoder is usable); "
                        "videos NVDEC cannot take go to the CPU either way (default auto)")
    p.add_argument("--nvdec-sessions", type=int, default=8, metavar="N",
                   help="NVDEC decode sessions (threads) per GPU (default 8: H100/H200 have 7 decoders)")
    p.add_argument("--no-compile", action="store_true",
                   help="run the encoder eagerly (default: torch.compile its blocks on CUDA, warmed up once)")
    sp = p.add_argument_group("speech and subtitles (subtitles are always read: sidecar .srt/.vtt/.ass and "
                              "embedded text tracks)")
    sp.add_argument("--speech", action="store_true",
                    help="also transcribe what is said (faster-whisper; videos already embedded are transcribed "
                         "without being embedded again)")
    sp.add_argument("--speech-model", metavar="NAME_OR_PATH",
                    help="faster-whisper model name (tiny ... large-v3, turbo, distil-*), Hugging Face repo id, or "
                         "a local CTranslate2 Whisper folder (default: the library's last one, else small)")
    sp.add_argument("--language", metavar="CODE",
                    help="spoken language, e.g. en or de (default: detected per video)")
    sp.add_argument("--speech-workers", type=int, metavar="N",
                    help="speech recognition workers (default: one per GPU, sharing it with the embedder; else 1)")
    sp.add_argument("--speech-threads", type=int, metavar="N",
                    help="CPU threads per speech worker on a CPU (default: min(4, CPUs / 2))")
    sp.add_argument("--retranscribe", action="store_true",
                    help="transcribe again the videos another speech model transcribed (default: keep them)")
    oc = p.add_argument_group("on-screen text")
    oc.add_argument("--ocr", action="store_true",
                    help="also read the text in the picture (rapidocr, offline; slides, signs, burnt-in captions) "
                         "from the same decode pass as the clips; videos already embedded are read without being "
                         "embedded again")
    oc.add_argument("--ocr-workers", type=int, metavar="N",
                    help="OCR workers (default: one per GPU with onnxruntime-gpu, else one per 4 CPUs; 1 with "
                         "--executor local)")
    oc.add_argument("--ocr-threads", type=int, metavar="N",
                    help="onnxruntime threads per OCR worker (default 1; --executor local: min(4, CPUs / 2))")
    oc.add_argument("--ocr-det-side", type=int, metavar="PX",
                    help="long side of the text detector's input: 1280 finds smaller print (the detector's cost "
                         "grows with its side squared) (default: the library's last, else 960)")
    oc.add_argument("--reocr", action="store_true",
                    help="read again the videos read with other OCR settings (default: keep their screen text)")
    p.add_argument("--executor", choices=("ray", "local"), default="ray",
                   help="ray (default) or local (same stages, no Ray; for debugging)")
    p.add_argument("--ray-address", help="join this Ray cluster instead of starting one")
    p.add_argument("--no-index", action="store_true", help="do not build/extend the FAISS index")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vidsearch.cli import UserError
    from vidsearch.pipeline.discover import InputError, check_inputs

    if args.batch_size < 1 or args.clip_seconds <= 0 or (args.stride is not None and args.stride <= 0):
        raise UserError("--batch-size, --clip-seconds and --stride must be positive")
    if min(args.max_pixels, args.max_frames, args.max_streams) < 1 or args.decode_memory < 0:
        raise UserError("--max-pixels, --max-frames and --max-streams must be positive, --decode-memory >= 0")
    if "://" in args.library:
        # The library folder holds DuckDB and mmapped FAISS files, which need a local filesystem;
        # a URI here would silently become a local folder named "s3:". Refuse instead.
        raise UserError(f"--library {args.library}: the library folder must be a local path; put the "
                        "shards on a remote filesystem with --shards-uri (e.g. --shards-uri s3://bucket/prefix)")
    try:
        check_inputs(args.paths)  # before the heavy imports below: a typo answers at once
    except InputError as e:
        raise UserError(str(e)) from None
    from vidsearch.models import list_models
    from vidsearch.pipeline.runner import DecodeUnavailable, IngestOptions, run_ingest
    from vidsearch.schemas.config import IngestCfg

    if args.model is not None and args.model not in list_models():
        raise UserError(f"--model {args.model}: unknown model; known: {', '.join(list_models())}")
    cfg = IngestCfg()
    cfg = replace(cfg, segment=args.segment, clip_seconds=args.clip_seconds,
                  stride=args.stride if args.stride is not None else args.clip_seconds,
                  scene_threshold=args.scene_threshold, skip_static=args.skip_static,
                  batch_size=args.batch_size, decode_workers=args.decode_workers,
                  decode_timeout_s=args.decode_timeout, shard_rows=args.shard_rows,
                  commit_interval_s=args.commit_interval, max_pixels=args.max_pixels,
                  max_frames=args.max_frames, max_streams=args.max_streams,
                  decode_memory_mb=args.decode_memory)
    if args.ext:
        exts = tuple(e if e.startswith(".") else f".{e}" for e in (x.strip().lower() for x in args.ext.split(",")) if e)
        cfg = replace(cfg, extensions=exts)
    opts = IngestOptions(model=args.model, checkpoint=args.checkpoint, tokenizer=args.tokenizer,
                         device=args.device, executor=args.executor, ray_address=args.ray_address,
                         shards_uri=args.shards_uri,
                         embed_actors=args.embed_actors, new_index=args.new_index,
                         retry_failed=args.retry_failed, break_lock=args.break_lock,
                         build_index=not args.no_index, sniff=not args.no_sniff,
                         progress=not args.quiet, decode=args.decode,
                         nvdec_sessions=args.nvdec_sessions, compile=not args.no_compile)
    if args.nvdec_sessions < 1:
        raise UserError("--nvdec-sessions must be at least 1")
    speech_flags = [f for f, v in (("--speech-model", args.speech_model), ("--language", args.language),
                                   ("--speech-workers", args.speech_workers), ("--speech-threads", args.speech_threads),
                                   ("--retranscribe", args.retranscribe)) if v]
    if speech_flags and not args.speech:
        raise UserError(f"{', '.join(speech_flags)} {'needs' if len(speech_flags) == 1 else 'need'} --speech")
    if (args.speech_workers is not None and args.speech_workers < 1) or (
            args.speech_threads is not None and args.speech_threads < 1):
        raise UserError("--speech-workers and --speech-threads must be at least 1")
    if args.language is not None and not re.fullmatch(r"[A-Za-z]{2,3}", args.language):
        raise UserError(f"--language {args.language!r}: expected a language code such as en or de")
    opts = replace(opts, speech=args.speech, speech_model=args.speech_model,
                   speech_language=args.language.lower() if args.language else None,
                   speech_workers=args.speech_workers, speech_threads=args.speech_threads,
                   retranscribe=args.retranscribe)
    ocr_flags = [f for f, v in (("--ocr-workers", args.ocr_workers), ("--ocr-threads", args.ocr_threads),
                                ("--ocr-det-side", args.ocr_det_side), ("--reocr", args.reocr)) if v]
    if ocr_flags and not args.ocr:
        raise UserError(f"{', '.join(ocr_flags)} {'needs' if len(ocr_flags) == 1 else 'need'} --ocr")
    if (args.ocr_workers is not None and args.ocr_workers < 1) or (
            args.ocr_threads is not None and args.ocr_threads < 1):
        raise UserError("--ocr-workers and --ocr-threads must be at least 1")
    if args.ocr_det_side is not None and not 160 <= args.ocr_det_side <= 4096:
        raise UserError(f"--ocr-det-side {args.ocr_det_side}: expected 160..4096 pixels")
    opts = replace(opts, ocr=args.ocr, ocr_workers=args.ocr_workers, ocr_threads=args.ocr_threads,
                   ocr_det_side=args.ocr_det_side, reocr=args.reocr)
    try:
        s = run_ingest(args.paths, args.library, cfg, opts)
    except (InputError, DecodeUnavailable) as e:
        raise UserError(str(e)) from None
    if args.json:
        json.dump(s.to_dict(), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_summary(s.to_dict()))
    return s.exit_code


def _esc(text: str) -> str:
    # File names may hold control characters (docs/RELIABILITY.md S8): never print them raw.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def format_summary(d: dict[str, Any]) -> str:
    """One screen of text for the end of a run."""
    from vidsearch.pipeline.progress import duration_text, plural

    counts = [(d["videos_done"], "done"), (d["videos_partial"], "partial"), (d["videos_failed"], "failed"),
              (d["videos_skipped"], "already done"), (d["videos_quarantined"], "quarantined"),
              (d["videos_failed_before"], "failed before"), (d["videos_moved"], "moved"),
              (d["videos_duplicate"], "duplicate"), (d["videos_replaced"], "replaced")]
    lines = [
        f"vidsearch ingest: {d['status']}  (run {d['run_id']})",
        f"  library   {_esc(d['library'])}",
        f"  model     {_esc(str(d.get('model') or '-'))}",
        f"  videos    {plural(d['videos_seen'], 'video')} seen"
        + (": " + ", ".join(f"{n:,} {what}" for n, what in counts if n) if any(n for n, _ in counts) else ""),
        f"  clips     {plural(d['clips'], 'clip')} in {duration_text(d['elapsed_s'])} "
        f"({d['clips_per_s']:.1f} clips/s)",
    ]
    if d.get("speech_model"):
        audio, work = d["speech_audio_s"], d["speech_work_s"]
        said = [(d["speech_silent"], "silent"), (d["speech_no_audio"], "without audio"),
                (d["speech_failed"], "failed"), (d["speech_done_before"], "transcribed before"),
                (d["speech_other_model"], "by another model, kept"), (d["speech_failed_before"], "failed before")]
        lines.append(
            f"  speech    {plural(d['speech_videos'], 'video')} with speech, {plural(d['speech_segments'], 'segment')}"
            + "".join(f", {n:,} {what}" for n, what in said if n)
            + f"; {duration_text(audio)} of audio in {duration_text(work)} of worker time"
            + (f" ({audio / work:.1f} audio h/h per worker, {d['speech_audio_h_per_h']:.1f} for the run)"
               if work > 0 else "")
            + f" [{_esc(str(d['speech_model']))} on {d.get('speech_device')}]")
    if d.get("screen_model"):
        work = d["ocr_work_s"]
        said = [(d["screen_none"], "without text"), (d["screen_failed"], "failed"),
                (d["screen_done_before"], "read before"), (d["screen_other_settings"], "with other settings, kept"),
                (d["screen_failed_before"], "failed before")]
        lines.append(
            f"  screen    {plural(d['screen_videos'], 'video')} with text, {plural(d['screen_rows'], 'row')}"
            + "".join(f", {n:,} {what}" for n, what in said if n)
            + f"; OCR read {plural(d['ocr_frames_read'], 'frame')} of {d['ocr_candidates']:,} candidates in "
            + f"{duration_text(work)} of worker time"
            + (f" ({d['ocr_frames_per_s']:.2f} frames/s, {d['ocr_video_s'] / work:.1f} video h/h per worker, "
               f"{d['ocr_video_h_per_h']:.1f} for the run)" if work > 0 else "")
            + f"; change checks + RGB in the decoders {d['ocr_decode_s']:.1f} s"
            + f" [{_esc(str(d.get('screen_status_model')))} on {d.get('ocr_device')}]")
    if d.get("subtitle_videos") or d.get("text_only_videos"):
        lines.append(f"  subtitles {plural(d['subtitle_videos'], 'video')} with subtitles, "
                     f"{plural(d['subtitle_segments'], 'segment')}"
                     + (f"; {plural(d['text_only_videos'], 'video')} embedded earlier got text only"
                        if d.get("text_only_videos") else ""))
    if d.get("index"):
        lines.append(f"  index     {d['index']}")
    fails = d.get("failures") or []
    if fails:
        lines.append(f"  problems  ({len(fails)}; `vidsearch status --library ...` lists them all)")
        for f in fails[:10]:
            lines.append(f"    {f['error_type']:<16} {_esc(str(f['error_message']))[:100]}")
    if d["status"] == "interrupted":
        lines.append("  interrupted: rerun the same command to finish (committed work is kept)")
    return "\n".join(lines) + "\n"
