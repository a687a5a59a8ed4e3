"""Ray executor: CPU decode actors and GPU (or CPU) embed actors, wired by the driver's loop.

* Decode actors (``num_cpus=1`` each) wrap a :class:`DecodeWorker`, so a crashing or hanging
  decoder kills only the actor's child process, never the actor or the job (F1/F2). [M] Ray Data's
  default path loops forever on a segfaulting decoder; this design finished the same job in seconds.
* An actor process that dies itself (kill -9, the kernel OOM killer, Ray's memory monitor) is
  restarted by Ray (up to ``_ACTOR_RESTARTS`` times); Ray does not retry its calls
  (``max_task_retries=0``): :meth:`RayBackend.get` raises :class:`WorkerLost` and the driver
  retries the call, charging the death to the call the actor was running, so a video that kills
  its worker every time ends as a ``WorkerKilled`` row instead of an endless retry (F3-F5).
* Embed actors wrap an :class:`Embedder`: ``num_gpus=1`` each when the cluster has GPUs, else one
  CPU actor. Pools are sized independently.
* Speech actors (``--speech``) wrap a :class:`~vidsearch.pipeline.text.SpeechWorker`: one per GPU
  by default, sharing the GPU with that GPU's embed actor (``num_gpus`` 0.25 against 0.75: Ray
  packs one of each per GPU; Whisper small in float16 needs ~1 GB of its memory), else one CPU
  actor whose CTranslate2 threads are reserved as its ``num_cpus`` (int8), taken from the decode
  pool's share. Calls go to them beside decode and embed, so the embedder never waits on them.
* OCR actors (``--ocr``) wrap a :class:`~vidsearch.pipeline.text.ScreenWorker` (rapidocr loaded
  once): CPU actors whose onnxruntime threads are reserved as their ``num_cpus`` (as far as the
  decode pool keeps a CPU), or, where the driver's onnxruntime has the CUDA provider
  (onnxruntime-gpu), one per GPU at :data:`OCR_GPU_SHARE` of it.
* ``decode`` has three return values (metadata, frames, OCR frames) so the driver fetches only the
  metadata; the frames go from the decode actor's object store straight to an embed actor (the OCR
  frames to an OCR actor) and are freed once used. The driver bounds the number of chunks in
  flight, so frames never pile up in the object store (memory flat on a 10,000-video run).
* On one machine ``ray.init`` starts a local runtime; ``--ray-address`` joins a cluster (the video
  paths and the library folder must then be reachable from every node).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from vidsearch.pipeline.decode import DecodeWorker, strip_frames
from vidsearch.pipeline.embed import Embedder
from vidsearch.pipeline.types import (
    ChunkRequest,
    FramesChunk,
    GpuChunkRequest,
    GpuFallback,
    VideoError,
    VideoPlan,
    VideoTask,
    WorkerLost,
)
from vidsearch.schemas.config import IngestCfg
from vidsearch.schemas.manifest import ModelInfo
from vidsearch.schemas.model_config import PreprocessCfg
from vidsearch.schemas.ocr_config import OcrCfg
from vidsearch.schemas.speech_config import SpeechCfg

_logger = logging.getLogger(__name__)

# Restarts of one actor before Ray gives it up: finite, so a worker that cannot live (a broken
# GPU, a node out of memory for good) ends the run instead of restarting forever, and generous,
# since each death costs only its current call.
_ACTOR_RESTARTS = 20


class _DecodeActor:
    def __init__(self, cfg: IngestCfg, pp: PreprocessCfg, fault: str | None, ocr: OcrCfg | None = None) -> None:
        self.worker = DecodeWorker(cfg, pp, fault, ocr)
        self.worker.setup()

    def ready(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def plan(self, task: VideoTask, ocr: bool = False, ocr_only: bool = False) -> VideoPlan | VideoError:
        return self.worker.plan(task, ocr, ocr_only)

    def subtitles(self, task: VideoTask) -> Any:
        return self.worker.subtitles(task)

    def decode(self, request: ChunkRequest) -> tuple[Any, Any, Any]:
        out = self.worker.decode(request)
        if isinstance(out, VideoError):
            return out, None, None
        return strip_frames(out)


class _EmbedActor:
    def __init__(self, kwargs: dict[str, Any], cfg: IngestCfg | None = None, pp: PreprocessCfg | None = None,
                 nvdec_sessions: int = 0, gpu_device: str | None = None) -> None:
        if nvdec_sessions > 0 and gpu_device != "cpu":
            # Before the model touches the GPU: FFmpeg's NVDEC needs the primary context's flags.
            from vidsearch.pipeline.nvdec import align_cuda_context

            align_cuda_context(0)  # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU: device 0
        self.embedder = Embedder(**kwargs)
        # A setup error (weights missing, SHA-256 mismatch) is kept and raised by info(): Ray
        # turns an error in __init__ into an ActorDiedError that has lost the exception's type.
        self.setup_error: Exception | None = None
        self.gpu: Any = None
        self.gpu_frames: dict[str, Any] = {}  # chunk key -> CUDA frames, until their embed call
        try:
            self.embedder.setup()
        except Exception as e:  # noqa: BLE001 - re-raised by info() with its type
            self.setup_error = e
            return
        if nvdec_sessions > 0 and cfg is not None and pp is not None:
            import torch

            from vidsearch.pipeline.nvdec import GpuDecoder

            if gpu_device == "cpu":  # the runner's test hook: PyAV's CPU decoder stands in for NVDEC
                self.gpu = GpuDecoder(cfg, pp, nvdec_sessions, "cpu")
            elif torch.cuda.is_available():
                # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU: it is device 0 here.
                self.gpu = GpuDecoder(cfg, pp, nvdec_sessions, str(torch.cuda.current_device()))
            if self.gpu is not None:
                self.gpu.setup()

    def gpu_status(self) -> Any:
        from vidsearch.pipeline.nvdec import NvdecStatus

        return self.gpu.status if self.gpu is not None else NvdecStatus(False, "the embed worker has no GPU")

    def gpu_decode(self, request: GpuChunkRequest, key: str) -> FramesChunk | GpuFallback:
        # Runs in the "nvdec" concurrency group: one thread per NVDEC session, beside embed().
        out = self.gpu.decode(request)
        if isinstance(out, FramesChunk):
            if out.kept:
                self.gpu_frames[key] = out.frames
            return replace(out, frames=None)
        return out

    def release(self, video_id: str, keys: list[str]) -> None:
        for k in keys:
            self.gpu_frames.pop(k, None)
        if self.gpu is not None and not keys:
            self.gpu.discard(video_id)

    def ready(self) -> bool:
        return True

    def info(self) -> ModelInfo:
        if self.setup_error is not None:
            raise self.setup_error
        return self.embedder.info()

    def embed(self, *frames: Any) -> list[np.ndarray]:
        # A str part is a GpuKey: frames this actor decoded on its GPU (they never left it).
        return self.embedder.process_parts([self.gpu_frames.pop(f) if isinstance(f, str) else f for f in frames])


class _StageActor:
    """An actor around a text-stage worker (speech, OCR): set up once at start; a setup error is
    kept and raised by info(), as _EmbedActor does (Ray loses an __init__ error's type)."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.setup_error: Exception | None = None
        try:
            self.worker.setup()
        except Exception as e:  # noqa: BLE001 - re-raised by info() with its type
            self.setup_error = e

    def ready(self) -> bool:
        return True

    def info(self) -> dict[str, Any]:
        if self.setup_error is not None:
            raise self.setup_error
        return self.worker.info()  # type: ignore[no-any-return]


class _SpeechActor(_StageActor):
    def __init__(self, cfg: SpeechCfg, fault: str | None) -> None:
        from vidsearch.pipeline.text import SpeechWorker

        super().__init__(SpeechWorker(cfg, fault))

    def transcribe(self, task: VideoTask, origin_s: float | None) -> Any:
        return self.worker.process(task, origin_s)


class _OcrActor(_StageActor):
    def __init__(self, cfg: OcrCfg, fault: str | None) -> None:
        from vidsearch.pipeline.text import ScreenWorker

        super().__init__(ScreenWorker(cfg, fault))

    def read(self, task: VideoTask, frames: Any) -> Any:
        return self.worker.process(task, frames)


# GPU share of one speech actor where it runs beside an embed actor on the same GPU.
SPEECH_GPU_SHARE = 0.25
# GPU share of one OCR actor on a GPU (onnxruntime-gpu): detection + recognition models need
# a few hundred MB; the embed actor takes what speech and OCR leave.
OCR_GPU_SHARE = 0.125


def speech_pool(cpus: int, gpus: int, embed_cpus: int, cfg: SpeechCfg, n_speech: int | None,
                ) -> tuple[int, float, float, SpeechCfg]:
    """(actors, num_gpus and num_cpus of each, their SpeechCfg) of the speech pool.

    On GPUs: one actor per GPU at :data:`SPEECH_GPU_SHARE` of it (the rest is the embedder's),
    with up to one CPU for audio decoding and the voice-activity model. On CPUs: one actor whose
    CTranslate2 threads (``cfg.cpu_threads``, default min(4, CPUs / 2)) are reserved as far as
    the decode pool keeps a CPU; Ray does not enforce CPU reservations, so on a 2-core machine
    the actor runs unreserved beside one decode worker rather than never being scheduled.
    """
    if gpus > 0 and cfg.device != "cpu":
        n = n_speech or gpus
        return (n, SPEECH_GPU_SHARE * min(1.0, gpus / n), min(1.0, max(0, cpus - embed_cpus - 1) / n),
                replace(cfg, cpu_threads=cfg.cpu_threads or 2))
    n = n_speech or 1
    threads = cfg.cpu_threads or max(1, min(4, cpus // 2))
    return n, 0.0, min(float(threads), max(0.0, (cpus - embed_cpus - 1) / n)), \
        replace(cfg, cpu_threads=threads, device="cpu")


def ocr_pool(cpus: int, gpus: int, reserved_cpus: float, cfg: OcrCfg, n_ocr: int | None,
             cuda_provider: bool) -> tuple[int, float, float, OcrCfg]:
    """(actors, num_gpus and num_cpus of each, their OcrCfg) of the OCR pool.

    On GPUs, when onnxruntime has its CUDA provider and the device is not forced to the CPU: one
    actor per GPU at :data:`OCR_GPU_SHARE` of it. Otherwise CPU actors (``device="cpu"``: an actor
    without a GPU must not try CUDA): ``n_ocr`` or one per 4 CPUs, ``cfg.threads`` (default 1)
    onnxruntime threads each, reserved as ``num_cpus`` as far as the decode pool keeps a CPU
    (``reserved_cpus``: what the embed and speech actors hold already). Ray does not enforce CPU
    reservations, so on a small machine the actors run unreserved rather than never being scheduled.
    """
    if gpus > 0 and cuda_provider and cfg.device != "cpu":
        n = n_ocr or gpus
        return n, OCR_GPU_SHARE * min(1.0, gpus / n), min(1.0, max(0.0, cpus - reserved_cpus - 1) / n), \
            replace(cfg, threads=cfg.threads or 2, device="cuda")
    n = n_ocr or max(1, cpus // 4)
    threads = cfg.threads or 1
    return n, 0.0, min(float(threads), max(0.0, (cpus - reserved_cpus - 1) / n)), \
        replace(cfg, threads=threads, device="cpu")


def _onnx_cuda() -> bool:
    """Whether this process's onnxruntime offers the CUDA provider (onnxruntime-gpu installed)."""
    try:
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except Exception:  # noqa: BLE001 - a broken install: the CPU
        return False


class _QuietAuthNotice(logging.Filter):
    """Drops Ray's "Token authentication is enabled for this Ray cluster ..." notice, printed at
    every start of a local runtime (Ray >= 2.5x). The runtime is this process's own, started and
    stopped by it; the notice only buried ingest's first lines. Token authentication itself stays
    on (Ray's default); other messages of that logger pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def init_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Start (or join) Ray; returns True when this call started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    auth_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _QuietAuthNotice) for f in auth_log.filters):
        auth_log.addFilter(_QuietAuthNotice())
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "configure_logging": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # The GPU decoder is a declared resource of a GPU node: {"nvdec": 1} per GPU (a cluster's
        # nodes declare it with `ray start --resources '{"nvdec": N}'`).
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, resources={NVDEC_RESOURCE: _local_gpus()}, **kwargs)
    return True


NVDEC_RESOURCE = "nvdec"


def _local_gpus() -> int:
    """GPUs of this machine (0 without CUDA), without creating a CUDA context in the driver."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken driver: no GPU
        return 0


class RayBackend:
    """Actor pools behind ObjectRefs (see ``runner.Backend``)."""

    def __init__(self, cfg: IngestCfg, pp: PreprocessCfg, embedder_kwargs: dict[str, Any],
                 n_decode: int | None, n_embed: int | None, fault: str | None,
                 address: str | None = None, say: Callable[[str], None] = lambda _: None,
                 nvdec_sessions: int = 0, gpu_device: str | None = None, speech: SpeechCfg | None = None,
                 n_speech: int | None = None, speech_fault: str | None = None, ocr: OcrCfg | None = None,
                 n_ocr: int | None = None, ocr_fault: str | None = None) -> None:
        import ray

        self._ray = ray
        t0 = time.monotonic()
        if not ray.is_initialized():
            say(f"joining the Ray cluster at {address} ..." if address else "starting Ray ...")
        self._owns_ray = init_ray(address)
        res = ray.cluster_resources()
        gpus = int(res.get("GPU", 0))
        cpus = int(res.get("CPU", 1))
        use_gpu = gpus > 0 and embedder_kwargs.get("device") in (None, "cuda")
        self.n_embed = n_embed or (gpus if use_gpu else 1)
        embed_cpus = 0 if use_gpu else self.n_embed
        self.n_speech, speech_gpus, speech_cpus = 0, 0.0, 0.0
        if speech is not None:
            self.n_speech, speech_gpus, speech_cpus, speech = speech_pool(cpus, gpus if use_gpu else 0, embed_cpus,
                                                                         speech, n_speech)
        self.n_ocr, ocr_gpus, ocr_cpus = 0, 0.0, 0.0
        if ocr is not None:
            self.n_ocr, ocr_gpus, ocr_cpus, ocr = ocr_pool(cpus, gpus if use_gpu else 0,
                                                           embed_cpus + self.n_speech * speech_cpus, ocr, n_ocr,
                                                           _onnx_cuda())
        self.n_decode = n_decode or max(1, cpus - embed_cpus - int(self.n_speech * speech_cpus)
                                        - int(self.n_ocr * ocr_cpus))
        # GPU decode runs in the embed actors (frames stay on their GPU): where the cluster
        # declares one "nvdec" per GPU, each embed actor takes one, so that every GPU node runs
        # its own decode + embed pipeline; NVDEC threads run in a concurrency group of their own.
        # gpu_device="cpu": the runner's test hook (PyAV's CPU decoder in the embed actor's
        # NVDEC threads), so that this wiring runs on machines without a GPU.
        self._nvdec = nvdec_sessions if use_gpu or gpu_device == "cpu" else 0
        nvdec_res = {NVDEC_RESOURCE: 1} if self._nvdec and res.get(NVDEC_RESOURCE, 0) >= self.n_embed else {}
        # Beside a speech actor on the same GPU, the embed actor takes the rest of the GPU.
        embed_gpu = 1.0 - (SPEECH_GPU_SHARE if speech_gpus else 0.0) - (OCR_GPU_SHARE if ocr_gpus else 0.0)
        embed_opts: dict[str, Any] = {"num_gpus": embed_gpu if use_gpu else 0, "num_cpus": 1 if not use_gpu else 0,
                                      "max_restarts": _ACTOR_RESTARTS, "max_task_retries": 0}
        if nvdec_res:
            embed_opts["resources"] = nvdec_res
        if self._nvdec:
            embed_opts["concurrency_groups"] = {"nvdec": self._nvdec}
        embed_cls = ray.remote(**embed_opts)(_EmbedActor)
        decode_cls = ray.remote(num_cpus=1, max_restarts=_ACTOR_RESTARTS, max_task_retries=0)(_DecodeActor)
        kwargs = dict(embedder_kwargs)
        if use_gpu:
            kwargs["device"] = "cuda"
        # Actor handles (Ray's typing cannot express ``.remote`` on the wrapped class's methods).
        self._embed: list[Any] = [embed_cls.remote(kwargs, cfg, pp, self._nvdec, gpu_device)
                                  for _ in range(self.n_embed)]
        # SPREAD puts decode actors on every node of a cluster rather than filling the first.
        self._decode: list[Any] = [decode_cls.options(scheduling_strategy="SPREAD").remote(cfg, pp, fault, ocr)
                                   for _ in range(self.n_decode)]
        self._speech: list[Any] = []
        if speech is not None:
            speech_cls = ray.remote(num_gpus=speech_gpus, num_cpus=speech_cpus, max_restarts=_ACTOR_RESTARTS,
                                    max_task_retries=0)(_SpeechActor)
            self._speech = [speech_cls.remote(speech, speech_fault) for _ in range(self.n_speech)]
        self._ocr: list[Any] = []
        if ocr is not None:
            ocr_cls = ray.remote(num_gpus=ocr_gpus, num_cpus=ocr_cpus, max_restarts=_ACTOR_RESTARTS,
                                 max_task_retries=0)(_OcrActor)
            self._ocr = [ocr_cls.remote(ocr, ocr_fault) for _ in range(self.n_ocr)]
        self.nodes = ray.get([a.ready.remote() for a in self._decode])
        nodes = len(set(self.nodes))
        say(f"Ray ready ({time.monotonic() - t0:.1f} s): {self.n_decode} decode "
            f"{'worker' if self.n_decode == 1 else 'workers'}" + (f" on {nodes} nodes" if nodes > 1 else "")
            + f", {self.n_embed} embed {'worker' if self.n_embed == 1 else 'workers'} ({'GPU' if use_gpu else 'CPU'})"
            + (f", {self.n_speech} speech {'worker' if self.n_speech == 1 else 'workers'} "
               f"({'GPU' if speech_gpus else f'CPU, {speech.cpu_threads} threads'})" if speech is not None else "")
            + (f", {self.n_ocr} OCR {'worker' if self.n_ocr == 1 else 'workers'} "
               f"({'GPU' if ocr_gpus else f'CPU, {ocr.threads} threads'})" if ocr is not None else ""))

    def model_info(self) -> ModelInfo:
        """The embed actors' model; raises the actor's own setup error (e.g. weights not found)."""
        try:
            info: ModelInfo = self._ray.get(self._embed[0].info.remote())
            return info
        except self._ray.exceptions.RayTaskError as e:
            raise e.cause from None

    def speech_info(self) -> dict[str, Any] | None:
        """The speech actors' model; raises an actor's own setup error (e.g. SpeechModelNotFoundError)."""
        if not self._speech:
            return None
        try:
            info: dict[str, Any] = self._ray.get(self._speech[0].info.remote())
            return info
        except self._ray.exceptions.RayTaskError as e:
            raise e.cause from None

    def submit_speech(self, worker: int, task: VideoTask, origin_s: float | None) -> Any:
        return self._speech[worker].transcribe.remote(task, origin_s)

    def ocr_info(self) -> dict[str, Any] | None:
        """The OCR actors' engine; raises an actor's own setup error (e.g. OcrModelNotFoundError)."""
        if not self._ocr:
            return None
        try:
            info: dict[str, Any] = self._ray.get(self._ocr[0].info.remote())
            return info
        except self._ray.exceptions.RayTaskError as e:
            raise e.cause from None

    def submit_ocr(self, worker: int, task: VideoTask, frames: Any) -> Any:
        return self._ocr[worker].read.remote(task, frames)  # Ray resolves the frames' ObjectRef there

    def submit_subtitles(self, worker: int, task: VideoTask) -> Any:
        return self._decode[worker].subtitles.remote(task)

    def submit_plan(self, worker: int, task: VideoTask, ocr: bool = False, ocr_only: bool = False) -> Any:
        return self._decode[worker].plan.remote(task, ocr, ocr_only)

    def submit_decode(self, worker: int, request: ChunkRequest) -> tuple[Any, Any, Any]:
        meta, frames, ocr_frames = self._decode[worker].decode.options(num_returns=3).remote(request)
        return meta, frames, ocr_frames

    def submit_embed(self, worker: int, frames: list[Any]) -> Any:
        return self._embed[worker].embed.remote(*frames)

    def gpu_status(self) -> list[Any]:
        if not self._nvdec:
            return []
        return list(self._ray.get([a.gpu_status.remote() for a in self._embed]))

    def gpu_sessions(self) -> int:
        return self._nvdec

    def submit_gpu_decode(self, worker: int, request: GpuChunkRequest, key: str) -> Any:
        return self._embed[worker].gpu_decode.options(concurrency_group="nvdec").remote(request, key)

    def release_gpu(self, worker: int, video_id: str, keys: list[str]) -> None:
        self._embed[worker].release.remote(video_id, keys)  # no reply needed

    def await_worker(self, pool: str, worker: int, timeout: float = 300.0) -> None:
        """Block until a restarting actor answers again (Ray rejects calls made meanwhile).

        Raises:
            WorkerLost: permanent, when it will not come back (or not within ``timeout``).
        """
        actor = {"embed": self._embed, "speech": self._speech, "ocr": self._ocr}.get(pool, self._decode)[worker]
        exc = self._ray.exceptions
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._ray.get(actor.ready.remote(), timeout=max(0.1, deadline - time.monotonic()))
                return
            except exc.ActorUnavailableError:
                time.sleep(0.2)
            except (exc.RayActorError, exc.GetTimeoutError) as e:
                raise WorkerLost(f"{pool} worker {worker} did not restart ({str(e).splitlines()[0][:150]})",
                                 permanent=True) from None
        raise WorkerLost(f"{pool} worker {worker} did not restart within {timeout:.0f} s", permanent=True)

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        ready, _ = self._ray.wait(handles, num_returns=1, timeout=timeout)
        if not ready:
            return []
        ready, _ = self._ray.wait(handles, num_returns=len(handles), timeout=0)
        return ready

    def get(self, handle: Any) -> Any:
        """The call's result; raises :class:`WorkerLost` when its actor died meanwhile."""
        exc = self._ray.exceptions
        try:
            return self._ray.get(handle)
        except exc.ActorUnavailableError as e:  # died; Ray is restarting it
            raise WorkerLost(f"worker process died ({str(e).splitlines()[0][:150]})") from None
        except exc.RayActorError as e:  # died for good (restarts used up, or could not start)
            raise WorkerLost(f"worker process died ({str(e).splitlines()[0][:150]})", permanent=True) from None

    def close(self) -> None:
        for a in self._decode + self._embed + self._speech + self._ocr:
            self._ray.kill(a)
        if self._owns_ray:
            self._ray.shutdown()


__all__ = ["RayBackend", "init_ray", "FramesChunk"]
