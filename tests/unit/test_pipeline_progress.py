"""Ingest progress when stderr is not a terminal: a line every interval and one at the end."""

from __future__ import annotations

import io

from vidsearch.pipeline.progress import Progress, Snapshot, duration_text, plural


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def snap(settled: int, clips: int, elapsed: float, eta: float | None = None, failed: int = 0) -> Snapshot:
    return Snapshot(videos_settled=settled, videos_total=10, clips=clips, failed=failed, elapsed_s=elapsed,
                    eta_s=eta)


def test_lines_every_interval_and_a_last_one() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress(True, out, interval_s=5.0, clock=clock)
    assert not p.tty
    p.say("starting Ray ...")
    p.start(10)
    p.update(snap(0, 0, 0.5))           # too early: nothing yet
    clock.t += 5.0
    p.update(snap(2, 40, 5.5, eta=30.0))
    clock.t += 1.0
    p.update(snap(3, 60, 6.5, eta=20.0))  # within the interval: not shown ...
    p.close()                            # ... but the last figures are, once, at the end
    p.close()
    assert out.getvalue().splitlines() == [
        "starting Ray ...",
        "ingest: 2/10 videos, 40 clips, 7.3 clips/s, about 30 s left",
        "ingest: 3/10 videos, 60 clips, 9.2 clips/s, about 20 s left",
    ]


def test_disabled_shows_nothing_and_finished_runs_show_no_eta() -> None:
    out = io.StringIO()
    p = Progress(False, out)
    p.say("x")
    p.start(1)
    p.update(snap(1, 3, 1.0))
    p.close()
    assert out.getvalue() == ""
    line = Snapshot(videos_settled=1, videos_total=1, clips=1, failed=1, elapsed_s=2.0, eta_s=5.0).line()
    assert line == "ingest: 1/1 video, 1 clip, 0.5 clips/s, 1 failed"


def test_plural_and_duration_text() -> None:
    assert (plural(1, "shard"), plural(0, "shard"), plural(12345, "clip")) == ("1 shard", "0 shards", "12,345 clips")
    assert [duration_text(s) for s in (0.4, 42, 60, 429.1, 3600, 11520, 4000)] == [
        "0 s", "42 s", "1 min", "7 min 9 s", "1 h", "3 h 12 min", "1 h 6 min"]
