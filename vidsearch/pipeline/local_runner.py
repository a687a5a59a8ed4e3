"""Local executor: the same units as the Ray executor, in this process plus decode children.

Each decode worker is a :class:`DecodeWorker` (a persistent killable child process) driven by its
own thread, so calls to one worker run in order, exactly like calls to one Ray actor; the embedder
runs in one more thread, and GPU decode (:class:`~vidsearch.pipeline.nvdec.GpuDecoder`, when
asked for) in ``nvdec_sessions`` more, its frames kept here until embedded. Speech recognition
(``--speech``) runs in one more thread, in this process (:class:`~vidsearch.pipeline.text.SpeechWorker`;
CTranslate2 releases the GIL while it computes), and so does OCR (``--ocr``,
:class:`~vidsearch.pipeline.text.ScreenWorker`; onnxruntime releases it too). Useful for tests
and debugging (``--executor local``).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
from dataclasses import replace
from typing import Any

import numpy as np

from vidsearch.pipeline.decode import DecodeWorker
from vidsearch.pipeline.embed import Embedder
from vidsearch.pipeline.types import ChunkRequest, FramesChunk, GpuChunkRequest, GpuFallback, VideoTask
from vidsearch.schemas.config import IngestCfg
from vidsearch.schemas.manifest import ModelInfo
from vidsearch.schemas.model_config import PreprocessCfg
from vidsearch.schemas.ocr_config import OcrCfg
from vidsearch.schemas.speech_config import SpeechCfg

_logger = logging.getLogger(__name__)


class LocalBackend:
    """Decode workers and one embedder behind futures (see ``runner.Backend``)."""

    def __init__(self, cfg: IngestCfg, pp: PreprocessCfg, embedder_kwargs: dict[str, Any],
                 n_decode: int, fault: str | None, nvdec_sessions: int = 0,
                 gpu_device: str | None = None, speech: SpeechCfg | None = None,
                 speech_fault: str | None = None, ocr: OcrCfg | None = None, ocr_fault: str | None = None) -> None:
        self.n_decode = max(1, n_decode)
        self.n_embed = 1
        self.n_speech = 1 if speech is not None else 0
        self.n_ocr = 1 if ocr is not None else 0
        self._workers = [DecodeWorker(cfg, pp, fault, ocr) for _ in range(self.n_decode)]
        self._threads = [cf.ThreadPoolExecutor(1, thread_name_prefix=f"decode{i}") for i in range(self.n_decode)]
        self._embed_thread = cf.ThreadPoolExecutor(1, thread_name_prefix="embed")
        self._speech: Any = None
        self._speech_thread: cf.ThreadPoolExecutor | None = None
        self._speech_setup: cf.Future | None = None
        if speech is not None:
            from vidsearch.pipeline.text import SpeechWorker

            self._speech = SpeechWorker(speech, speech_fault)
            self._speech_thread = cf.ThreadPoolExecutor(1, thread_name_prefix="speech")
            self._speech_setup = self._speech_thread.submit(self._speech.setup)  # loads beside the embedder
        self._ocr: Any = None
        self._ocr_thread: cf.ThreadPoolExecutor | None = None
        self._ocr_setup: cf.Future | None = None
        if ocr is not None:
            from vidsearch.pipeline.text import ScreenWorker

            self._ocr = ScreenWorker(ocr, ocr_fault)
            self._ocr_thread = cf.ThreadPoolExecutor(1, thread_name_prefix="ocr")
            self._ocr_setup = self._ocr_thread.submit(self._ocr.setup)
        if nvdec_sessions > 0 and gpu_device is None:
            # Before the model touches the GPU: FFmpeg's NVDEC needs the primary context's flags.
            from vidsearch.pipeline.nvdec import align_cuda_context

            dev = str(embedder_kwargs.get("device") or "cuda")
            align_cuda_context(int(dev.split(":")[1]) if dev.startswith("cuda:") else 0)
        self.embedder = Embedder(**embedder_kwargs)
        # Start the children while the model loads.
        self._setups = [t.submit(w.setup) for w, t in zip(self._workers, self._threads, strict=True)]
        self._gpu: Any = None
        self._gpu_threads: cf.ThreadPoolExecutor | None = None
        self._gpu_frames: dict[str, Any] = {}
        self.nvdec_sessions = nvdec_sessions
        try:
            self.embedder.setup()
        except BaseException:
            self.close()  # weights missing or corrupt: stop the children started above
            raise
        device = str(self.embedder.model.device) if self.embedder.model is not None else "cpu"
        if nvdec_sessions > 0 and (gpu_device is not None or device.startswith("cuda")):
            from vidsearch.pipeline.nvdec import GpuDecoder

            # ``gpu_device="cpu"``: the GPU path's code with PyAV's CPU decoder (tests).
            index = gpu_device or str(self.embedder.model.device.index or 0)
            self._gpu = GpuDecoder(cfg, pp, nvdec_sessions, index)
            self._gpu.setup()
            self._gpu_threads = cf.ThreadPoolExecutor(nvdec_sessions, thread_name_prefix="nvdec")

    def gpu_status(self) -> list[Any]:
        return [self._gpu.status] if self._gpu is not None else []

    def gpu_sessions(self) -> int:
        return self.nvdec_sessions if self._gpu is not None else 0

    def submit_gpu_decode(self, worker: int, request: GpuChunkRequest, key: str) -> cf.Future:
        assert self._gpu is not None and self._gpu_threads is not None

        def run() -> FramesChunk | GpuFallback:
            out = self._gpu.decode(request)
            if isinstance(out, FramesChunk) and out.kept:
                self._gpu_frames[key] = out.frames  # stays on the GPU until its embed call
            return replace(out, frames=None) if isinstance(out, FramesChunk) else out

        return self._gpu_threads.submit(run)

    def release_gpu(self, worker: int, video_id: str, keys: list[str]) -> None:
        for k in keys:
            self._gpu_frames.pop(k, None)
        if self._gpu is not None and not keys:
            self._gpu.discard(video_id)

    def model_info(self) -> ModelInfo:
        return self.embedder.info()

    def submit_plan(self, worker: int, task: VideoTask, ocr: bool = False, ocr_only: bool = False) -> cf.Future:
        return self._threads[worker].submit(self._workers[worker].plan, task, ocr, ocr_only)

    def ocr_info(self) -> dict[str, Any] | None:
        """The OCR worker's engine (raises its setup error, e.g. OcrModelNotFoundError)."""
        if self._ocr is None or self._ocr_setup is None:
            return None
        self._ocr_setup.result()
        info: dict[str, Any] = self._ocr.info()
        return info

    def submit_ocr(self, worker: int, task: VideoTask, frames: cf.Future) -> cf.Future:
        assert self._ocr is not None and self._ocr_thread is not None

        def run() -> Any:
            chunk = frames.result()
            arr, chunk.ocr_frames = chunk.ocr_frames, None  # read once; the future keeps the chunk
            return self._ocr.process(task, arr)

        return self._ocr_thread.submit(run)

    def speech_info(self) -> dict[str, Any] | None:
        """The speech worker's model (raises its setup error, e.g. SpeechModelNotFoundError)."""
        if self._speech is None or self._speech_setup is None:
            return None
        self._speech_setup.result()
        info: dict[str, Any] = self._speech.info()
        return info

    def submit_speech(self, worker: int, task: VideoTask, origin_s: float | None) -> cf.Future:
        assert self._speech is not None and self._speech_thread is not None
        return self._speech_thread.submit(self._speech.process, task, origin_s)

    def submit_subtitles(self, worker: int, task: VideoTask) -> cf.Future:
        return self._threads[worker].submit(self._workers[worker].subtitles, task)

    def submit_decode(self, worker: int, request: ChunkRequest) -> tuple[cf.Future, cf.Future, cf.Future]:
        f = self._threads[worker].submit(self._workers[worker].decode, request)
        return f, f, f

    def submit_embed(self, worker: int, frames: list[cf.Future]) -> cf.Future:
        def run() -> list[np.ndarray]:
            parts: list[Any] = []
            for f in frames:
                if isinstance(f, str):  # a GpuKey: frames this process decoded on its GPU
                    parts.append(self._gpu_frames.pop(f))
                else:
                    parts.append(np.asarray(f.result().frames))
            return self.embedder.process_parts(parts)

        return self._embed_thread.submit(run)

    def await_worker(self, pool: str, worker: int, timeout: float = 300.0) -> None:
        """Nothing to wait for: local workers are threads of this process (no restarts)."""

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        done, _ = cf.wait(handles, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return list(done)

    def get(self, handle: cf.Future) -> Any:
        return handle.result()

    def close(self) -> None:
        for f in self._setups:
            if not f.cancel():
                f.exception()  # a child being started must finish starting before it is stopped
        for t in self._threads:
            t.shutdown(wait=False, cancel_futures=True)
        self._embed_thread.shutdown(wait=False, cancel_futures=True)
        if self._speech_thread is not None:
            # A transcription in progress cannot be interrupted: wait for it, then drop the model.
            self._speech_thread.shutdown(wait=True, cancel_futures=True)
            self._speech.close()
        if self._ocr_thread is not None:
            self._ocr_thread.shutdown(wait=True, cancel_futures=True)
            self._ocr.close()
        if self._gpu_threads is not None:
            self._gpu_threads.shutdown(wait=True, cancel_futures=True)
        if self._gpu is not None:
            self._gpu.close()
        self._gpu_frames.clear()
        for w in self._workers:
            w.close()
        self.embedder.close()
