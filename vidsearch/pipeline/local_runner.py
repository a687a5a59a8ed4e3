"""Local executor: the same units as the Ray executor, in this process plus decode children.

Each decode worker is a :class:`DecodeWorker` (a persistent killable child process) driven by its
own thread, so calls to one worker run in order, exactly like calls to one Ray actor; the embedder
runs in one more thread. Useful for tests and debugging (``--executor local``).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
from typing import Any

import numpy as np

from vidsearch.pipeline.decode import DecodeWorker
from vidsearch.pipeline.embed import Embedder
from vidsearch.pipeline.types import ChunkRequest, FramesChunk, VideoTask
from vidsearch.schemas.config import IngestCfg
from vidsearch.schemas.manifest import ModelInfo
from vidsearch.schemas.model_config import PreprocessCfg

_logger = logging.getLogger(__name__)


class LocalBackend:
    """Decode workers and one embedder behind futures (see ``runner.Backend``)."""

    def __init__(self, cfg: IngestCfg, pp: PreprocessCfg, embedder_kwargs: dict[str, Any],
                 n_decode: int, fault: str | None) -> None:
        self.n_decode = max(1, n_decode)
        self.n_embed = 1
        self._workers = [DecodeWorker(cfg, pp, fault) for _ in range(self.n_decode)]
        self._threads = [cf.ThreadPoolExecutor(1, thread_name_prefix=f"decode{i}") for i in range(self.n_decode)]
        self._embed_thread = cf.ThreadPoolExecutor(1, thread_name_prefix="embed")
        self.embedder = Embedder(**embedder_kwargs)
        # Start the children while the model loads.
        self._setups = [t.submit(w.setup) for w, t in zip(self._workers, self._threads, strict=True)]
        try:
            self.embedder.setup()
        except BaseException:
            self.close()  # weights missing or corrupt: stop the children started above
            raise

    def model_info(self) -> ModelInfo:
        return self.embedder.info()

    def submit_plan(self, worker: int, task: VideoTask) -> cf.Future:
        return self._threads[worker].submit(self._workers[worker].plan, task)

    def submit_decode(self, worker: int, request: ChunkRequest) -> tuple[cf.Future, cf.Future]:
        f = self._threads[worker].submit(self._workers[worker].decode, request)
        return f, f

    def submit_embed(self, worker: int, frames: list[cf.Future]) -> cf.Future:
        def run() -> list[np.ndarray]:
            chunks: list[FramesChunk] = [f.result() for f in frames]
            return self.embedder.process_parts([np.asarray(c.frames) for c in chunks])

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
        for w in self._workers:
            w.close()
        self.embedder.close()
