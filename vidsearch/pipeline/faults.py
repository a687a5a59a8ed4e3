"""Fault-injection hooks for the reliability tests (docs/RELIABILITY.md §8.2); inert unless armed.

The specs are read from the environment by the driver and handed to the workers as arguments:
Ray workers keep the environment of the runtime's start, so a variable set later would not
reach them.

``VIDSEARCH_TEST_DECODE_FAULT`` (runs in the decode child, before each job on a matching file):
parts separated by ``|``, each ``KIND[=ARG]:SUBSTRING`` matched against the video's display path:

* ``segv:S``: the child segfaults, as a broken decoder would (F1);
* ``hang:S``: the child stops answering (F2);
* ``slow=SECS:S``: the child sleeps SECS first, so a test can kill its worker mid-job (F3, F5);
* ``eio=N:S``: the first N jobs on the file in this child raise ``OSError(EIO)``, as a network
  filesystem hiccup does (F18);
* ``marks=DIR`` (no substring): every hook that fires writes ``DIR/<kind>-<pid>-<ppid>-<n>``
  holding the display path, so a test knows it fired and which worker process (the ppid of a
  decode child is its actor) to kill.

``VIDSEARCH_TEST_EMBED_FAULT`` (runs in the embedder's process, once per ``Embedder.process``):
``oom=N`` (a forward pass over more than N clips raises ``torch.cuda.OutOfMemoryError``; 0: every
pass), ``slow=SECS`` (sleep first) and ``marks=DIR`` as above (kind ``embed``).

``VIDSEARCH_TEST_SPEECH_FAULT`` (runs in the speech worker, before each video whose display path
contains the substring): ``fail:S`` (the transcription raises ``TranscribeError``, as a model
failure would), ``slow=SECS:S`` (sleep first, so a test can kill the run meanwhile), ``exit:S``
(the worker process exits at once, as a killed one would) and ``marks=DIR`` (kind ``speech``).

``VIDSEARCH_TEST_OCR_FAULT`` (runs in the OCR worker, before each batch of a video's frames):
the same ``fail`` (the read raises ``OcrError``), ``slow``, ``exit`` and ``marks`` (kind ``ocr``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
import uuid
from dataclasses import dataclass

DECODE_FAULT_ENV = "VIDSEARCH_TEST_DECODE_FAULT"
EMBED_FAULT_ENV = "VIDSEARCH_TEST_EMBED_FAULT"
SPEECH_FAULT_ENV = "VIDSEARCH_TEST_SPEECH_FAULT"
OCR_FAULT_ENV = "VIDSEARCH_TEST_OCR_FAULT"


@dataclass(frozen=True)
class Fault:
    """One armed hook: ``kind``, its argument, and the path substring it applies to."""

    kind: str
    arg: str
    needle: str


def parse(spec: str | None) -> tuple[list[Fault], str | None]:
    """(hooks, marks folder) of a spec string; ([], None) when unarmed."""
    faults: list[Fault] = []
    marks = None
    for part in (spec or "").split("|"):
        head, _, needle = part.partition(":")
        kind, _, arg = head.partition("=")
        if kind == "marks":
            marks = arg or None
        elif kind:
            faults.append(Fault(kind.strip(), arg.strip(), needle))
    return faults, marks


def mark(marks: str | None, kind: str, text: str) -> None:
    """Record that a hook fired (tests read these files); no-op without a marks folder."""
    if marks:
        name = f"{kind}-{os.getpid()}-{os.getppid()}-{uuid.uuid4().hex[:8]}"
        with open(os.path.join(marks, name), "w") as f:
            f.write(text)


class DecodeFaults:
    """The decode child's hooks; ``before_job(path)`` fires those matching ``path``."""

    def __init__(self, spec: str | None) -> None:
        self.faults, self.marks = parse(spec)
        self.eio_count: dict[str, int] = {}

    def before_job(self, display_path: str) -> None:
        for f in self.faults:
            if not f.needle or f.needle not in display_path:
                continue
            if f.kind == "segv":
                mark(self.marks, f.kind, display_path)
                ctypes.string_at(0)  # a real SIGSEGV in this child
            elif f.kind == "hang":
                mark(self.marks, f.kind, display_path)
                time.sleep(10**6)
            elif f.kind == "slow":
                mark(self.marks, f.kind, display_path)
                time.sleep(float(f.arg or 1.0))
            elif f.kind == "eio":
                n = self.eio_count.get(f.needle, 0)
                if n < int(f.arg or 1):
                    self.eio_count[f.needle] = n + 1
                    mark(self.marks, f.kind, display_path)
                    raise OSError(errno.EIO, os.strerror(errno.EIO), display_path)


class EmbedFaults:
    """The embedder's hooks: ``before_call(n)`` per ``process`` call, ``before_forward(n)`` per pass."""

    def __init__(self, spec: str | None) -> None:
        faults, self.marks = parse(spec)
        args = {f.kind: f.arg for f in faults}
        self.oom_above = int(args["oom"]) if "oom" in args else None
        self.slow_s = float(args.get("slow") or 0.0)

    def before_call(self, n_clips: int) -> None:
        """Once per ``Embedder.process`` call (a batch sent by the driver)."""
        if self.slow_s:
            mark(self.marks, "embed", str(n_clips))
            time.sleep(self.slow_s)

    def before_forward(self, n_clips: int) -> None:
        """Before each forward pass: raise CUDA OOM past the armed batch size."""
        if self.oom_above is not None and n_clips > self.oom_above:
            import torch

            mark(self.marks, "oom", str(n_clips))
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (test hook: {n_clips} > {self.oom_above} clips)")


class SpeechFaults:
    """The speech (or OCR: ``kind="ocr"``) worker's hooks; ``before_video(path)`` fires those
    matching ``path``.

    Returns True when the video must fail as a transcription (OCR) error (``fail``); the caller
    raises it, so that the failure travels the same way as a real one.
    """

    def __init__(self, spec: str | None, kind: str = "speech") -> None:
        self.faults, self.marks = parse(spec)
        self.kind = kind

    def before_video(self, display_path: str) -> bool:
        fail = False
        for f in self.faults:
            if not f.needle or f.needle not in display_path:
                continue
            mark(self.marks, self.kind, display_path)
            if f.kind == "slow":
                time.sleep(float(f.arg or 1.0))
            elif f.kind == "exit":
                os._exit(1)  # a worker process that dies under its call (Ray restarts the actor)
            elif f.kind == "fail":
                fail = True
        return fail
