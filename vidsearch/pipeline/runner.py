"""``run_ingest``: checks -> discover -> resume selection -> (plan, decode, embed on an executor) -> write.

Before anything is created or started (no library folder, no Ray): the inputs must name
something (:func:`~vidsearch.pipeline.discover.check_inputs`), the model must be the library's
(the default when none is asked for) and its weights must be found. Then the writer lock, Ray or
the local executor, and the loop.

The scheduling loop is :class:`vidsearch.pipeline.driver.Driver`; what a run is asked and what it
did are :mod:`vidsearch.pipeline.run_types`. Resume rules: :mod:`vidsearch.pipeline.resume`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from vidsearch.library import Library, ModelMismatch, crash_point, utcnow
from vidsearch.pipeline.discover import check_inputs, discover
from vidsearch.pipeline.driver import Backend, Driver
from vidsearch.pipeline.faults import DECODE_FAULT_ENV, EMBED_FAULT_ENV, OCR_FAULT_ENV, SPEECH_FAULT_ENV
from vidsearch.pipeline.progress import Progress, plural
from vidsearch.pipeline.resume import (
    TextSelection,
    read_state,
    read_text_state,
    select_text_work,
    select_work,
)
from vidsearch.pipeline.run_types import DEFAULT_MODEL, IngestOptions, IngestSummary
from vidsearch.pipeline.write import ShardWriter
from vidsearch.schemas.config import IngestCfg
from vidsearch.schemas.ocr_config import OcrCfg
from vidsearch.schemas.speech_config import DEFAULT_SPEECH_MODEL, SpeechCfg

_logger = logging.getLogger(__name__)

# Kept for callers of the former private name (the catalog-lag tests).
_read_state = read_state

NVDEC_CPU_ENV = "VIDSEARCH_TEST_NVDEC_CPU"


class DecodeUnavailable(Exception):
    """``--decode gpu`` on a machine without a usable GPU decoder (one line: what is missing)."""


def _fault_spec(var: str = DECODE_FAULT_ENV) -> str | None:
    """A test hook's spec (:mod:`vidsearch.pipeline.faults`), read here and passed to workers."""
    return os.environ.get(var) or None


def run_ingest(inputs: Sequence[str | bytes], library_root: str | os.PathLike[str], cfg: IngestCfg,
               opts: IngestOptions) -> IngestSummary:
    """Ingest ``inputs`` into the library at ``library_root``.

    Args:
        inputs: folders, files, globs or ``@LIST`` files.
        library_root: the library folder (created if needed).
        cfg: how videos become clips.
        opts: model, executor and resume options.

    Returns:
        The run summary; ``exit_code`` is 0 ok, 2 some videos failed/partial, 130 interrupted.

    Raises:
        InputError: an input names nothing (nothing is created).
        ModelMismatch: the library holds another model's embeddings (and not ``new_index``).
        WeightsNotFoundError: the model's weights are not found (nothing is created).
        SpeechModelNotFoundError: ``--speech`` and the speech model is not found (nothing is created).
        OcrModelNotFoundError: ``--ocr`` and rapidocr or its models are missing (nothing is created).
        LibraryLocked: another writer holds the library.
        LibraryError: the shard location is unusable (unreachable, no bucket, denied) or differs
            from the one the library was created with.
    """
    t_start = time.monotonic()
    progress = Progress(opts.progress, interval_s=opts.progress_interval_s)
    paths = check_inputs(inputs)
    library = Library(library_root)
    model_name = _model_for(library, opts)
    run_id = f"{utcnow().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    summary = IngestSummary(run_id=run_id, library=str(library.root), model=model_name)
    checkpoint, pp, warning = _check_model(model_name, opts)
    _check_decode(opts)
    speech = _speech_cfg(library, opts)
    if speech is not None:
        _check_speech_model(speech, opts)
    ocr = _ocr_cfg(library, opts)
    if ocr is not None and not opts.ray_address:  # a cluster's nodes answer for themselves
        from vidsearch.pipeline.ocr import check_ocr_models

        check_ocr_models()
    if warning:
        _logger.warning("%s", warning)
        summary.warnings.append(warning)
    stop = threading.Event()
    created = not os.path.lexists(library.root)
    try:
        with library.lock(break_lock=opts.break_lock):
            _ingest_locked(library, paths, cfg, opts, summary, progress, stop, model_name, checkpoint, pp, t_start,
                           speech, ocr)
    except BaseException:
        if created and not library.exists():
            # Failed before its first commit (e.g. weights that do not load): leave no empty library.
            _remove_empty_dirs(library.root)
        raise
    summary.elapsed_s = time.monotonic() - t_start
    return summary


def _remove_empty_dirs(root: Path) -> None:
    """Remove ``root`` and its subfolders if they hold no file (never a file, never a link)."""
    for dirpath, _, _ in os.walk(root, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)


def _speech_cfg(library: Library, opts: IngestOptions) -> SpeechCfg | None:
    """The speech settings of this run (None without ``--speech``).

    The model: the one asked for, else the one the library's last ``--speech`` run used (its
    name or folder, from the run records), else :data:`DEFAULT_SPEECH_MODEL`.
    """
    if not opts.speech:
        return None
    name = opts.speech_model
    if name is None and library.exists():
        for run in reversed(library.read_manifest().runs):
            used = (run.get("settings") or {}).get("speech_model")
            if isinstance(used, str) and used:
                name = used
                break
    return SpeechCfg(model=str(name or DEFAULT_SPEECH_MODEL), language=opts.speech_language,
                     device="cpu" if opts.device == "cpu" else "auto", cpu_threads=opts.speech_threads or 0)


def _ocr_cfg(library: Library, opts: IngestOptions) -> OcrCfg | None:
    """The OCR settings of this run (None without ``--ocr``).

    The detector size: the one asked for, else the one the library's last ``--ocr`` run used
    (from the run records, as the speech model), else :class:`OcrCfg`'s.
    """
    if not opts.ocr:
        return None
    det = opts.ocr_det_side
    if det is None and library.exists():
        for run in reversed(library.read_manifest().runs):
            used = (run.get("settings") or {}).get("ocr_det_side")
            if isinstance(used, int) and not isinstance(used, bool):
                det = used
                break
    base = OcrCfg()
    return replace(base, det_side=det or base.det_side, threads=opts.ocr_threads or 0,
                   device="cpu" if opts.device == "cpu" else "auto")


def _check_speech_model(speech: SpeechCfg, opts: IngestOptions) -> None:
    """The speech model's files, found before anything is created (as the weights are).

    Raises:
        SpeechModelNotFoundError: the message says what to download and which flag to use.
    """
    if opts.ray_address:
        return  # each node finds its own copy (checked when the speech workers start)
    from vidsearch.pipeline.speech import resolve_speech_model

    resolve_speech_model(speech.model)


def _ingest_locked(library: Library, paths: list[bytes], cfg: IngestCfg, opts: IngestOptions,
                   summary: IngestSummary, progress: Progress, stop: threading.Event, model_name: str,
                   checkpoint: str | None, pp: Any, t_start: float, speech: SpeechCfg | None = None,
                   ocr: OcrCfg | None = None) -> None:
    """:func:`run_ingest` once the writer lock is held."""
    run_id = summary.run_id
    # Before Ray, the model and any decoding: a bad shard location fails in a second.
    library.open_shards(opts.shards_uri)
    if library.exists():
        # F10: a missing or corrupt shard is set aside and its videos redone by this run.
        summary.shards_quarantined = len(library.quarantine_bad_shards())
    found = discover(paths, cfg.extensions, sniff=opts.sniff, expand=False)
    summary.not_regular = len(found.skipped_not_regular)
    progress.say(f"found {plural(len(found.tasks), 'video')}"
                 + (f" ({len(found.failures)} unreadable)" if found.failures else ""))
    embedder_kwargs = {"model_name": model_name, "checkpoint": checkpoint,
                       "tokenizer": opts.tokenizer, "device": opts.device,
                       "batch_size": cfg.batch_size, "pretrained": not opts.random_weights,
                       "fault": _fault_spec(EMBED_FAULT_ENV), "compile": "auto" if opts.compile else "off",
                       "overrides": dict(opts.model_overrides)}
    gpu_decode = opts.decode != "cpu" and opts.device != "cpu"
    # Test hook: the GPU decode path (scheduling, sessions, fallbacks; the Ray actor's concurrency
    # group) with PyAV's CPU decoder standing in for NVDEC, so machines without a GPU run it end
    # to end. Inert otherwise.
    nvdec_cpu = os.environ.get(NVDEC_CPU_ENV) == "1"
    n_decode = cfg.decode_workers or max(1, (os.cpu_count() or 2) - 1)
    backend: Backend
    t_model = time.monotonic()  # the local executor loads the model while it starts
    if opts.executor == "local":
        from vidsearch.pipeline.local_runner import LocalBackend

        progress.say(f"starting {plural(n_decode, 'decode worker')}; loading model {model_name} ..."
                     + (f" and speech model {speech.model} ..." if speech is not None else "")
                     + (" and OCR ..." if ocr is not None else ""))
        if speech is not None and not speech.cpu_threads:
            speech = replace(speech, cpu_threads=max(1, min(4, (os.cpu_count() or 2) // 2)))
        if ocr is not None and not ocr.threads:
            ocr = replace(ocr, threads=max(1, min(4, (os.cpu_count() or 2) // 2)))
        backend = LocalBackend(cfg, pp, embedder_kwargs, n_decode, _fault_spec(),
                               nvdec_sessions=opts.nvdec_sessions if gpu_decode else 0,
                               gpu_device="cpu" if nvdec_cpu else None, speech=speech,
                               speech_fault=_fault_spec(SPEECH_FAULT_ENV), ocr=ocr,
                               ocr_fault=_fault_spec(OCR_FAULT_ENV))
    else:
        from vidsearch.pipeline.ray_runner import RayBackend

        backend = RayBackend(cfg, pp, embedder_kwargs, cfg.decode_workers, opts.embed_actors,
                             _fault_spec(), opts.ray_address, say=progress.say,
                             nvdec_sessions=opts.nvdec_sessions if gpu_decode else 0,
                             gpu_device="cpu" if nvdec_cpu else None, speech=speech,
                             n_speech=opts.speech_workers, speech_fault=_fault_spec(SPEECH_FAULT_ENV),
                             ocr=ocr, n_ocr=opts.ocr_workers, ocr_fault=_fault_spec(OCR_FAULT_ENV))
        t_model = time.monotonic()  # the embed actor has been loading it meanwhile
        progress.say(f"loading model {model_name} ...")
    summary.decode_nodes = len(set(getattr(backend, "nodes", ()))) or 1
    try:
        model = backend.model_info()
        progress.say(f"model {model.name} ready ({time.monotonic() - t_model:.1f} s)")
        speech_info = backend.speech_info()
        if speech_info is not None:
            summary.speech_model, summary.speech_device = speech_info["model_id"], speech_info["device"]
            progress.say(f"speech model {speech_info['model_id']} ready on {speech_info['device']} "
                         f"({speech_info['compute_type']}; {plural(backend.n_speech, 'worker')})")
        ocr_info = backend.ocr_info()
        if ocr_info is not None:
            summary.screen_model, summary.screen_status_model = ocr_info["model_id"], ocr_info["status_model"]
            summary.ocr_device, summary.ocr_workers = ocr_info["device"], backend.n_ocr
            progress.say(f"OCR {ocr_info['model_id']} ready on {ocr_info['device']} "
                         f"({plural(backend.n_ocr, 'worker')} of {plural(ocr_info['threads'] or 1, 'thread')})")
        gpu_caps = _gpu_decoders(backend, opts, summary, progress)
        if model.preprocess and tuple(model.preprocess.get("mean", ())) != tuple(pp.mean):
            _logger.warning("embedder preprocessing differs from the registry's")
        settings = {**cfg.to_dict(), "model": model_name, "executor": opts.executor}
        if speech is not None:
            settings.update(speech_model=speech.model, speech_model_id=summary.speech_model,
                            speech_language=speech.language)
        if ocr is not None:
            settings.update(ocr_model_id=summary.screen_status_model, ocr_det_side=ocr.det_side,
                            ocr_settings=ocr.settings())
        library.init(model, settings, allow_new_model=opts.new_index)
        writer = ShardWriter(library, model, run_id, cfg.shard_rows, cfg.commit_interval_s)
        started = utcnow()
        library.record_run(_run_record(summary, started, None, settings))
        old_handler = None
        if threading.current_thread() is threading.main_thread():
            def on_sigint(signum: int, frame: Any) -> None:
                # First Ctrl-C: stop cleanly (commit what is settled); a second one aborts.
                stop.set()
                signal.signal(signal.SIGINT, signal.default_int_handler)
            old_handler = signal.signal(signal.SIGINT, on_sigint)
        try:
            selection = select_work(found.tasks, found.failures, *read_state(library), run_id=run_id,
                                    retry_failed=opts.retry_failed, max_attempts=opts.max_attempts,
                                    now=utcnow())
            stages: dict[str, str | None] = {}
            if speech is not None:
                stages["speech"] = summary.speech_model
            if ocr is not None:
                stages["screen"] = summary.screen_status_model
            redo = {k for k, asked in (("speech", opts.retranscribe), ("screen", opts.reocr)) if asked}
            text = select_text_work(selection, read_text_state(library), stages=stages,
                                    redo_other_model=frozenset(redo), retry_failed=opts.retry_failed,
                                    max_attempts=opts.max_attempts)
            _note_other_models(text, summary)
            Driver(backend, writer, cfg, opts, summary, stop, progress, gpu_caps, ocr).run(selection, text)
            writer.flush()
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
        summary.elapsed_s = time.monotonic() - t_start
        summary.status = ("interrupted" if stop.is_set()
                          else "partial" if summary.exit_code == 2 else "ok")
        # Also the end-of-run catalog refresh: the writer deferred some (ShardWriter).
        library.record_run(_run_record(summary, started, utcnow(), settings))
    finally:
        backend.close()
    if opts.build_index and not stop.is_set():
        crash_point("after_manifest_before_index")
        progress.say("updating the FAISS index ...")
        summary.index = _update_index(library)


def _note_other_models(text: TextSelection, summary: IngestSummary) -> None:
    """Say once that videos transcribed by another model keep their transcripts (the decision of
    issue 14: no silent re-transcription of a whole library; ``--retranscribe`` asks for it)."""
    c = text.of("speech")
    summary.speech_done_before = c.done_before
    summary.speech_other_model = c.other_model
    summary.speech_failed_before = c.failed_before
    summary.text_only_videos = text.text_only
    o = text.of("screen")
    summary.screen_done_before = o.done_before
    summary.screen_other_settings = o.other_model
    summary.screen_failed_before = o.failed_before
    for n, by_model, kept, flag, redo in (
            (c.other_model, c.other_models, "keep transcripts of another speech model", "--retranscribe",
             f"transcribe them again with {summary.speech_model}"),
            (o.other_model, o.other_models, "keep screen text read with other OCR settings", "--reocr",
             f"read them again with {summary.screen_status_model}")):
        if n:
            models = ", ".join(f"{m} ({k})" for m, k in sorted(by_model.items()))
            line = f"{plural(n, 'video')} {kept} ({models}); pass {flag} to {redo}"
            _logger.warning("%s", line)
            summary.warnings.append(line)


def _check_decode(opts: IngestOptions) -> None:
    """``--decode gpu`` where no GPU decoder can be: said before anything is created.

    Raises:
        DecodeUnavailable: one line naming what is missing.
    """
    if opts.decode not in ("auto", "cpu", "gpu"):
        raise ValueError(f"decode must be auto, cpu or gpu, not {opts.decode!r}")
    if opts.decode != "gpu":
        return
    if opts.device == "cpu":
        raise DecodeUnavailable("--decode gpu: GPU decode feeds the embedder on the GPU, and --device cpu was given")
    if opts.ray_address:
        return  # the cluster's GPU nodes answer for themselves (checked once their workers start)
    import torch

    if not torch.cuda.is_available():
        why = "torch is a CPU build" if torch.version.cuda is None else "no CUDA device is visible"
        raise DecodeUnavailable(f"--decode gpu: CUDA is not available ({why}: torch {torch.__version__})")


def _gpu_decoders(backend: Backend, opts: IngestOptions, summary: IngestSummary, progress: Progress) -> list[Any]:
    """Per embed worker, the NVDEC capabilities of its GPU decoder, or None where it has none.

    Raises:
        DecodeUnavailable: ``--decode gpu`` and no embed worker can decode.
    """
    status = backend.gpu_status() if opts.decode != "cpu" else []
    caps = [s.caps if s.ok else None for s in status]
    if opts.decode == "gpu" and not any(c is not None for c in caps):
        why = status[0].reason if status else "the embedder does not run on a GPU"
        raise DecodeUnavailable(f"--decode gpu: {why}")
    if any(c is not None for c in caps):
        summary.decoders = "gpu+cpu"
        progress.say(f"GPU decode: {backend.gpu_sessions()} NVDEC sessions per GPU, beside the CPU decoders")
    elif status and opts.decode == "auto":
        # Said once: the machine decodes on its CPUs (no libnvcuvid, MIG without decoders, ...).
        _logger.warning("GPU decode unavailable (%s); decoding on the CPU", status[0].reason)
    elif opts.decode == "auto":
        _logger.info("GPU decode unavailable (the embedder runs on the CPU); decoding on the CPU")
    return caps


def _model_for(library: Library, opts: IngestOptions) -> str:
    """The model this run embeds with: the one asked for, else the library's, else the default.

    Raises:
        ModelMismatch: the library holds another model's embeddings and ``new_index`` is off
            (said before anything starts; ``Library.init`` checks the weights' fingerprint too).
    """
    have = library.read_manifest().model if library.exists() else None
    if opts.model is None:
        return have.name if have is not None else DEFAULT_MODEL
    if have is not None and have.name != opts.model and not opts.new_index:
        raise ModelMismatch(
            f"{library.root} holds embeddings of model {have.name} (fingerprint {have.fingerprint}); "
            f"refusing to mix in {opts.model}. Use another --library, or pass --new-index to start "
            "this library over with the new model.")
    return opts.model


def _check_model(name: str, opts: IngestOptions) -> tuple[str | None, Any, str | None]:
    """The model's config and weights, checked before anything is created (docs/RELIABILITY.md F17).

    Returns:
        (the weights file for the embedder, the model's preprocessing, a warning line for test
        models). The weights file is ``opts.checkpoint`` as given when the embedder runs on
        another machine (``ray_address``: each node finds its own copy) and None when there are
        no weights to load; the SHA-256 is checked where the weights are loaded.

    Raises:
        ValueError: an unknown model name.
        WeightsNotFoundError: no weights found; the message says what to download and where.
    """
    from vidsearch.models import WeightsNotFoundError, get_model_config
    from vidsearch.models.hub import resolve_checkpoint

    cfg = get_model_config(name, **opts.model_overrides)
    warning = (f"{name} is a TEST MODEL with random weights: its embeddings mean nothing (use it for "
               "tests only)") if cfg.is_test_model else None
    if opts.random_weights or opts.ray_address:
        return opts.checkpoint, cfg.preprocess, warning
    if opts.checkpoint is not None or cfg.pretrained is not None:
        return str(resolve_checkpoint(cfg, opts.checkpoint)), cfg.preprocess, warning
    if not cfg.is_test_model:
        raise WeightsNotFoundError(f"{name} has no published weights; pass --checkpoint PATH")
    return None, cfg.preprocess, warning


def _run_record(s: IngestSummary, started: dt.datetime, ended: dt.datetime | None,
                settings: dict[str, Any]) -> dict[str, Any]:
    return {"run_id": s.run_id, "started_at": started.isoformat(),
            "ended_at": ended.isoformat() if ended else None, "status": s.status,
            "videos_seen": s.videos_seen, "videos_done": s.videos_done,
            "videos_partial": s.videos_partial, "videos_failed": s.videos_failed,
            "videos_skipped": s.videos_skipped + s.videos_quarantined, "clips": s.clips,
            "clips_per_s": round(s.clips_per_s, 3), "settings": settings,
            **({"speech": {"model": s.speech_model, "device": s.speech_device, "videos": s.speech_videos,
                           "silent": s.speech_silent, "no_audio": s.speech_no_audio, "failed": s.speech_failed,
                           "segments": s.speech_segments, "audio_s": round(s.speech_audio_s, 3),
                           "work_s": round(s.speech_work_s, 3),
                           "audio_h_per_h": round(s.speech_audio_h_per_h, 3)}} if s.speech_model else {}),
            **({"ocr": {"model": s.screen_status_model, "device": s.ocr_device, "workers": s.ocr_workers,
                        "videos": s.screen_videos, "none": s.screen_none, "failed": s.screen_failed,
                        "rows": s.screen_rows, "candidates": s.ocr_candidates, "read": s.ocr_frames_read,
                        "video_s": round(s.ocr_video_s, 3), "work_s": round(s.ocr_work_s, 3),
                        "decode_s": round(s.ocr_decode_s, 3), "frames_per_s": round(s.ocr_frames_per_s, 3),
                        "video_h_per_h": round(s.ocr_video_h_per_h, 3)}} if s.screen_model else {}),
            "subtitles": {"videos": s.subtitle_videos, "segments": s.subtitle_segments}}


def _update_index(library: Library) -> str:
    """Build or extend the FAISS index and the keyword index; one line saying what was done."""
    from vidsearch.indexer import update_index

    r = update_index(library)
    kw = r.keyword or {}
    words = (f"; keyword index {kw['action']}: {plural(kw['docs'], 'document')}"
             if kw.get("action") not in (None, "none", "unchanged") else "")
    if r.action == "extended":
        return f"extended {r.factory}: {plural(r.vectors, 'vector')} ({r.added:,} added){words}"
    return f"{r.action} {r.factory}: {plural(r.vectors, 'vector')}{words}"
