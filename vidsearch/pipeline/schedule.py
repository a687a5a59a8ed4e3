"""Which decoder takes a planned video: the GPU's NVDEC sessions or the CPU decode workers (pure).

The rule (issue 13, ``docs/ARCHITECTURE.md``): a video goes to whichever side has room; under
``--decode auto`` only videos of at least ``IngestCfg.gpu_decode_min_pixels`` are offered to the
GPU (:func:`worth_gpu`: small frames decode faster on the CPU workers). The GPU
side of one embed worker has room while it holds fewer videos than its NVDEC sessions plus a
short queue (``GPU_QUEUE_FACTOR``); the CPU side has room when the decode worker that planned
the video has nothing else queued. A video NVDEC cannot take (a refusal) always goes to the CPU.
When both sides are full the video waits its turn on the GPU (the faster side) rather than
behind a busy CPU worker. Nothing here imports Ray, torch or PyAV.
"""

from __future__ import annotations

from collections.abc import Sequence

# Videos an embed worker holds per NVDEC session: one being decoded, and half a video queued so
# that a session finishing a video starts the next at once (chunks come one at a time per video).
GPU_QUEUE_FACTOR = 1.5


def worth_gpu(width: int, height: int, min_pixels: int) -> bool:
    """Whether a video's frames are large enough for NVDEC to pay under ``--decode auto``
    (``IngestCfg.gpu_decode_min_pixels``: small frames decode faster on the CPU workers)."""
    return min_pixels <= 0 or width * height >= min_pixels


def gpu_capacity(sessions: int) -> int:
    """Videos an embed worker with ``sessions`` NVDEC sessions holds at most before it is "full"."""
    return int(sessions * GPU_QUEUE_FACTOR) if sessions > 0 else 0


def choose_side(eligible: Sequence[bool], active: Sequence[int], sessions: Sequence[int], cpu_room: bool) -> int | None:
    """The embed worker whose GPU decodes the video, or None for the CPU path.

    Args:
        eligible: per embed worker, whether its NVDEC can take this video (and the worker is live).
        active: per embed worker, videos it holds now.
        sessions: per embed worker, its NVDEC sessions (0: no GPU decode there).
        cpu_room: the CPU decode worker that planned the video has nothing else queued.
    """
    cands = [e for e, ok in enumerate(eligible) if ok and sessions[e] > 0]
    if not cands:
        return None
    e = min(cands, key=lambda i: (active[i] / sessions[i], i))  # the least loaded GPU
    if active[e] < gpu_capacity(sessions[e]):
        return e
    return None if cpu_room else e


def gpu_room(active: Sequence[int], sessions: Sequence[int]) -> int:
    """Videos the GPU side could take now (summed over embed workers): how many plans the
    driver asks for ahead of the CPU workers' own needs."""
    return sum(max(0, gpu_capacity(s) - a) for a, s in zip(active, sessions, strict=True))


def next_gpu_chunks(videos: Sequence[tuple[bool, bool]], in_flight: int, sessions: int) -> list[int]:
    """Which of an embed worker's videos get their next chunk submitted now.

    Args:
        videos: per video it holds, in the order they came: (a chunk is in flight, chunks are left).
        in_flight: GPU decode calls of that worker in flight.
        sessions: its NVDEC sessions.

    Returns:
        Indices into ``videos``: oldest first, one chunk per video (a video's chunks share one
        decoder and come in order), at most ``sessions - in_flight``.
    """
    free = max(0, sessions - in_flight)
    out: list[int] = []
    for i, (busy, left) in enumerate(videos):
        if len(out) >= free:
            break
        if not busy and left:
            out.append(i)
    return out
