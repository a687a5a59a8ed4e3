"""Ray executor: CPU decode actors and GPU (or CPU) embed actors, wired by the driver's loop.

* Decode actors (``num_cpus=1`` each) wrap a :class:`DecodeWorker`, so a crashing or hanging
  decoder kills only the actor's child process, never the actor or the job (F1/F2). [M] Ray Data's
  default path loops forever on a segfaulting decoder; this design finished the same job in seconds.
* Embed actors wrap an :class:`Embedder`: ``num_gpus=1`` each when the cluster has GPUs, else one
  CPU actor. Pools are sized independently.
* ``decode`` has two return values (metadata, frames) so the driver fetches only the metadata; the
  frames go from the decode actor's object store straight to an embed actor and are freed once
  embedded. The driver bounds the number of chunks in flight, so frames never pile up in the object
  store (memory flat on a 10,000-video run).
* On one machine ``ray.init`` starts a local runtime; ``--ray-address`` joins a cluster (the video
  paths and the library folder must then be reachable from every node).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from vidsearch.pipeline.decode import DecodeWorker, strip_frames
from vidsearch.pipeline.embed import Embedder
from vidsearch.pipeline.types import FramesChunk, VideoError, VideoPlan, VideoTask
from vidsearch.schemas.config import IngestCfg
from vidsearch.schemas.manifest import ModelInfo
from vidsearch.schemas.model_config import PreprocessCfg

_logger = logging.getLogger(__name__)


class _DecodeActor:
    def __init__(self, cfg: IngestCfg, pp: PreprocessCfg, fault: str | None) -> None:
        self.worker = DecodeWorker(cfg, pp, fault)
        self.worker.setup()

    def ready(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def plan(self, task: VideoTask) -> VideoPlan | VideoError:
        return self.worker.plan(task)

    def decode(self, plan: VideoPlan, lo: int, hi: int) -> tuple[Any, Any]:
        out = self.worker.decode(plan, lo, hi)
        if isinstance(out, VideoError):
            return out, None
        return strip_frames(out)


class _EmbedActor:
    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.embedder = Embedder(**kwargs)
        self.embedder.setup()

    def info(self) -> ModelInfo:
        return self.embedder.info()

    def embed(self, *frames: np.ndarray) -> list[np.ndarray] | VideoError:
        sizes = [len(f) for f in frames]
        try:
            emb = self.embedder.process(np.concatenate(frames))
        except VideoError as e:
            return e
        return list(np.split(emb, np.cumsum(sizes)[:-1]))


def init_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Start (or join) Ray; returns True when this call started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "configure_logging": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, **kwargs)
    return True


class RayBackend:
    """Actor pools behind ObjectRefs (see ``runner.Backend``)."""

    def __init__(self, cfg: IngestCfg, pp: PreprocessCfg, embedder_kwargs: dict[str, Any],
                 n_decode: int | None, n_embed: int | None, fault: str | None,
                 address: str | None = None) -> None:
        import ray

        self._ray = ray
        self._owns_ray = init_ray(address)
        res = ray.cluster_resources()
        gpus = int(res.get("GPU", 0))
        cpus = int(res.get("CPU", 1))
        use_gpu = gpus > 0 and embedder_kwargs.get("device") in (None, "cuda")
        self.n_embed = n_embed or (gpus if use_gpu else 1)
        embed_cpus = 0 if use_gpu else self.n_embed
        self.n_decode = n_decode or max(1, cpus - embed_cpus)
        embed_cls = ray.remote(num_gpus=1 if use_gpu else 0, num_cpus=1 if not use_gpu else 0,
                               max_restarts=2, max_task_retries=2)(_EmbedActor)
        decode_cls = ray.remote(num_cpus=1, max_restarts=3, max_task_retries=2)(_DecodeActor)
        kwargs = dict(embedder_kwargs)
        if use_gpu:
            kwargs["device"] = "cuda"
        self._embed = [embed_cls.remote(kwargs) for _ in range(self.n_embed)]
        # SPREAD puts decode actors on every node of a cluster rather than filling the first.
        self._decode = [decode_cls.options(scheduling_strategy="SPREAD").remote(cfg, pp, fault)
                        for _ in range(self.n_decode)]
        self.nodes = ray.get([a.ready.remote() for a in self._decode])
        _logger.info("ray: %d decode actors on %d nodes, %d embed actors (%s)", self.n_decode,
                     len(set(self.nodes)), self.n_embed, "GPU" if use_gpu else "CPU")

    def model_info(self) -> ModelInfo:
        return self._ray.get(self._embed[0].info.remote())

    def submit_plan(self, worker: int, task: VideoTask) -> Any:
        return self._decode[worker].plan.remote(task)

    def submit_decode(self, worker: int, plan: VideoPlan, lo: int, hi: int) -> tuple[Any, Any]:
        meta, frames = self._decode[worker].decode.options(num_returns=2).remote(plan, lo, hi)
        return meta, frames

    def submit_embed(self, worker: int, frames: list[Any]) -> Any:
        return self._embed[worker].embed.remote(*frames)

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        ready, _ = self._ray.wait(handles, num_returns=1, timeout=timeout)
        if not ready:
            return []
        ready, _ = self._ray.wait(handles, num_returns=len(handles), timeout=0)
        return ready

    def get(self, handle: Any) -> Any:
        try:
            return self._ray.get(handle)
        except self._ray.exceptions.RayActorError as e:
            return VideoError("DecoderCrash", "decode", f"worker actor died ({str(e).splitlines()[0][:150]})")

    def release(self, handles: list[Any]) -> None:
        """Drop the driver's references so the object store frees embedded frames at once."""
        handles.clear()

    def close(self) -> None:
        for a in self._decode + self._embed:
            self._ray.kill(a)
        if self._owns_ray:
            self._ray.shutdown()


__all__ = ["RayBackend", "init_ray", "FramesChunk"]
