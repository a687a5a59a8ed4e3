"""Search-quality evaluation (vidsearch.search.evaluate): queries files, the metrics, MSR-VTT layout."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vidsearch.search.evaluate import (
    EvalError,
    EvalHit,
    EvalQuery,
    evaluate,
    find_msrvtt,
    read_msrvtt,
    read_queries,
    temporal_iou,
)


def _write(path: Path, lines: list[object]) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_read_queries(tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    f = _write(tmp_path / "q.jsonl", [
        {"query": "a dog", "path": "v/a.mp4", "start_s": 1, "end_s": 2.5},
        "",
        {"query": "  a cat  ", "path": str(tmp_path / "v" / "b.mp4")},
        {"query": "x", "path": "~/c.mp4", "start_s": 0, "end_s": 1, "video_id": "abc"},
    ])
    qs = read_queries(f)
    assert [q.query for q in qs] == ["a dog", "a cat", "x"]
    assert qs[0].path == str(tmp_path / "v" / "a.mp4")  # relative to the queries file
    assert (qs[0].start_s, qs[0].end_s, qs[0].line) == (1.0, 2.5, 1)
    assert qs[1].start_s is None and qs[1].end_s is None and qs[1].line == 3
    assert qs[2].path == os.path.expanduser("~/c.mp4") and qs[2].video_id == "abc"


@pytest.mark.parametrize("line,message", [
    ("{not json", "q.jsonl:2: not JSON"),
    ("[1, 2]", "q.jsonl:2: expected a JSON object"),
    ({"path": "a.mp4"}, "q.jsonl:2: 'query' must be"),
    ({"query": "a"}, "q.jsonl:2: 'path' must"),
    ({"query": "a", "path": "a.mp4", "start_s": -1, "end_s": 2}, "start_s must be a non-negative"),
    ({"query": "a", "path": "a.mp4", "start_s": "1", "end_s": 2}, "start_s must be a non-negative"),
    ({"query": "a", "path": "a.mp4", "start_s": True, "end_s": 2}, "start_s must be a non-negative"),
    ({"query": "a", "path": "a.mp4", "start_s": 3, "end_s": 3}, "end_s (3) must be after start_s (3)"),
    ({"query": "a", "path": "a.mp4", "start_s": 3}, "give both start_s and end_s"),
])
def test_read_queries_errors_name_file_and_line(tmp_path: Path, line: object, message: str) -> None:
    f = _write(tmp_path / "q.jsonl", [{"query": "ok", "path": "a.mp4"}, line])
    with pytest.raises(EvalError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_queries(f)


def test_read_queries_bad_files(tmp_path: Path) -> None:
    with pytest.raises(EvalError, match="no queries"):
        read_queries(_write(tmp_path / "empty.jsonl", ["", "  "]))
    (tmp_path / "bin.jsonl").write_bytes(b'{"query": "\xff"}\n')
    with pytest.raises(EvalError, match="not UTF-8"):
        read_queries(tmp_path / "bin.jsonl")
    with pytest.raises(EvalError, match="missing.jsonl"):
        read_queries(tmp_path / "missing.jsonl")


def test_temporal_iou() -> None:
    assert temporal_iou(0, 2, 1, 3) == pytest.approx(1 / 3)
    assert temporal_iou(0, 2, 0, 2) == 1.0
    assert temporal_iou(0, 1, 1, 2) == 0.0
    assert temporal_iou(0, 4, 1, 2) == pytest.approx(0.25)


def test_metrics_match_counts_built_by_hand() -> None:
    """Ten queries whose first right hit is placed at a known rank; the expected figures are
    counted by hand from those ranks, not by the code under test."""
    target = "/lib/target.mp4"
    placed = [1, 2, 5, 6, 10, None, 1, 3, None, 11]  # 11: beyond the top 10, so a miss
    wrong_video = EvalHit("/lib/other.mp4", 10.0, 12.0)
    wrong_time = EvalHit(target, 30.0, 32.0)              # same video, no overlap
    queries = [EvalQuery(f"q{i}", target, 10.0 + i, 12.0 + i) for i in range(10)]
    script = {}
    for q, r in zip(queries, placed, strict=True):
        assert q.start_s is not None
        touching = EvalHit(target, q.start_s - 2.0, q.start_s)  # ends where the target starts: not right
        hits = [wrong_video, wrong_time, touching] * 4
        if r is not None:
            hits.insert(r - 1, EvalHit(target, q.start_s + 1.0, q.start_s + 3.0))  # overlaps by 1 s
        script[q.query] = hits
    asked = []

    def search(text: str, k: int) -> list[EvalHit]:
        asked.append(k)
        return script[text]

    rep = evaluate(queries, search)
    assert asked == [10] * 10
    assert rep.n_queries == 10
    assert rep.recall_at_1 == 2 / 10          # ranks 1, 1
    assert rep.recall_at_5 == 5 / 10          # 1, 2, 5, 1, 3
    assert rep.recall_at_10 == 7 / 10         # + 6, 10
    assert rep.mrr == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 6 + 1 / 10 + 1 + 1 / 3) / 10)
    assert [o.rank for o in rep.per_query] == [r if r is not None and r <= 10 else None for r in placed]
    assert rep.mean_iou == pytest.approx(1 / 3)  # every right hit overlaps its 2 s target by 1 s of 3
    d = json.loads(rep.to_json())
    assert {"n_queries", "recall_at_1", "recall_at_5", "recall_at_10", "mrr", "mean_iou", "per_query"} <= set(d)
    assert d["per_query"][5]["rank"] is None and d["per_query"][0]["rank"] == 1


def test_same_video_by_id_whole_video_targets_and_k() -> None:
    q_whole = EvalQuery("anything in it", "/lib/a.mp4")
    q_moved = EvalQuery("moved file", "/old/place.mp4", 0.0, 5.0, video_id="vid1")

    def search(text: str, k: int) -> list[EvalHit]:
        return [EvalHit("/lib/b.mp4", 0, 1, "vid2"), EvalHit("/lib/a.mp4", 50, 60, "vid3"),
                EvalHit("/new/place.mp4", 4, 6, "vid1")]

    rep = evaluate([q_whole, q_moved], search)
    assert [o.rank for o in rep.per_query] == [2, 3]
    assert rep.per_query[0].iou == 1.0  # the whole video is the target: the hit's own span
    with pytest.raises(EvalError, match="at least 10"):
        evaluate([q_whole], search, k=5)


# ---- MSR-VTT 1k-A layout ----------------------------------------------------------------------------
CSV_HEAD = "key,vid_key,video_id,sentence\n"


def _msrvtt(root: Path, layout: str, ids: list[int], sentences: list[str] | None = None) -> Path:
    if layout == "msrvtt-zip":          # MSR-VTT's own archive + CLIP4Clip's msrvtt_data
        videos, csv_dir = root / "MSRVTT" / "videos" / "all", root / "MSRVTT" / "msrvtt_data"
    else:                               # CLIP4Clip's DATA_PATH layout
        videos, csv_dir = root / "MSRVTT_Videos", root
    videos.mkdir(parents=True)
    csv_dir.mkdir(parents=True, exist_ok=True)
    sentences = sentences or [f"sentence number {i}, with a comma" for i in ids]
    rows = [f'ret{n},msr{i},video{i},"{s}"\n' for n, (i, s) in enumerate(zip(ids, sentences, strict=True))]
    (csv_dir / "MSRVTT_JSFUSION_test.csv").write_text(CSV_HEAD + "".join(rows))
    for i in ids:
        (videos / f"video{i}.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    return videos


@pytest.mark.parametrize("layout", ["msrvtt-zip", "clip4clip"])
def test_read_msrvtt_layouts(tmp_path: Path, layout: str) -> None:
    videos = _msrvtt(tmp_path, layout, [7010, 7020, 9999])
    csv_path, found = find_msrvtt(tmp_path)
    assert found == videos and csv_path.name == "MSRVTT_JSFUSION_test.csv"
    qs = read_msrvtt(tmp_path)
    assert [q.query for q in qs] == ["sentence number 7010, with a comma", "sentence number 7020, with a comma",
                                     "sentence number 9999, with a comma"]
    assert [Path(q.path).name for q in qs] == ["video7010.mp4", "video7020.mp4", "video9999.mp4"]
    assert all(q.start_s is None and q.end_s is None for q in qs)  # the whole video is the target


def test_read_msrvtt_refuses_bad_rows(tmp_path: Path) -> None:
    videos = _msrvtt(tmp_path, "msrvtt-zip", [1, 2])
    (videos / "video2.mp4").unlink()
    with pytest.raises(EvalError, match="1 of 2 videos missing"):
        read_msrvtt(tmp_path)
    assert [Path(q.path).name for q in read_msrvtt(tmp_path, require_all=False)] == ["video1.mp4"]
    csv_path = tmp_path / "MSRVTT" / "msrvtt_data" / "MSRVTT_JSFUSION_test.csv"
    csv_path.write_text(CSV_HEAD + "ret0,msr1,../../../etc/passwd,a sentence\n")
    with pytest.raises(EvalError, match="is not video<N>"):
        read_msrvtt(tmp_path)
    csv_path.write_text("a,b\n1,2\n")
    with pytest.raises(EvalError, match="expected the columns"):
        read_msrvtt(tmp_path)
    with pytest.raises(EvalError, match="no MSRVTT_JSFUSION_test.csv"):
        find_msrvtt(tmp_path / "MSRVTT" / "videos")
