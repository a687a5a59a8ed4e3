"""`vidsearch sql`: the analytics queries of the README, output formats, read-only tables.

Also the output rules of issue 10 (D5: DuckDB's special values print as DuckDB prints them; D6:
strict JSON) and of issue 11 (6: a closed pipe ends quietly; 7: cells cut only on a terminal,
paths keeping their end; 9: CSV lines end with LF).
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import SyntheticLibrary

from vidsearch.cli import EXIT_BROKEN_PIPE, main
from vidsearch.commands.sql import ANALYTICS
from vidsearch.indexer import update_index
from vidsearch.search import Searcher

REPO = Path(__file__).resolve().parents[2]


def strict_json(text: str) -> Any:
    """json.loads that refuses NaN / Infinity / -Infinity, as RFC 8259 parsers do."""
    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def sql(lib: SyntheticLibrary, query: str, *flags: str, capsys: pytest.CaptureFixture) -> str:
    rc = main(["sql", query, "--library", str(lib.lib.root), *flags])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out


def test_analytics_queries_and_formats(synthetic_library: SyntheticLibrary, capsys: pytest.CaptureFixture) -> None:
    s = synthetic_library
    lib = str(s.lib.root)
    with s.lib.lock():
        update_index(s.lib)
    with Searcher(s.lib) as searcher:
        searcher.search(vector=s.vectors[0], k=10)
    for query in ANALYTICS.values():
        assert main(["sql", query, "--library", lib, "--json"]) == 0
        rows = strict_json(capsys.readouterr().out)
        assert rows, query
    assert main(["sql", ANALYTICS["hours of video per codec"], "--library", lib, "--csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "codec,videos,hours" and len(lines) == 5
    assert main(["sql", "SELECT count(*) AS n FROM failures", "--library", lib]) == 0
    assert "(1 row)" in capsys.readouterr().out


def test_history_tables_exist_before_first_search(synthetic_library: SyntheticLibrary,
                                                  capsys: pytest.CaptureFixture) -> None:
    assert main(["sql", "SELECT count(*) AS n FROM searches", "--library", str(synthetic_library.lib.root),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": 0}]


# ---- D5: values Python cannot hold print as DuckDB prints them ----------------------------------

SPECIAL = ("SELECT 'infinity'::TIMESTAMP AS ts, '-infinity'::DATE AS d, 'infinity'::TIMESTAMPTZ AS tz, "
           "'290309-12-22 (BC) 00:00:00'::TIMESTAMP AS bc, INTERVAL 1 MONTH AS iv, 'nan'::DOUBLE AS x, "
           "true AS b, NULL::INTEGER AS nothing")


def test_d5_special_values_in_table_json_and_csv(_synthetic_3000: SyntheticLibrary,
                                                 capsys: pytest.CaptureFixture) -> None:
    lib = _synthetic_3000
    table = sql(lib, SPECIAL, capsys=capsys).splitlines()
    assert table[0].split() == ["ts", "d", "tz", "bc", "iv", "x", "b", "nothing"]
    assert table[2].split() == ["infinity", "-infinity", "infinity", "290309-12-22", "(BC)", "00:00:00",
                                "1", "month", "nan", "true", "NULL"]
    assert strict_json(sql(lib, SPECIAL, "--json", capsys=capsys)) == [
        {"ts": "infinity", "d": "-infinity", "tz": "infinity", "bc": "290309-12-22 (BC) 00:00:00",
         "iv": "1 month", "x": "nan", "b": True, "nothing": None}]
    assert sql(lib, SPECIAL, "--csv", capsys=capsys) == (
        "ts,d,tz,bc,iv,x,b,nothing\ninfinity,-infinity,infinity,290309-12-22 (BC) 00:00:00,1 month,nan,true,\n")


def test_d5_every_duckdb_type_in_every_format(_synthetic_3000: SyntheticLibrary,
                                              capsys: pytest.CaptureFixture) -> None:
    """test_all_types(): minimum and maximum of every type, NULLs, BC dates, nested infinities."""
    lib = _synthetic_3000
    query = "SELECT * FROM test_all_types()"
    table = sql(lib, query, capsys=capsys)
    assert "290309-12-22 (BC) 00:00:00" in table and "(3 rows)" in table and "\x00" not in table
    assert "goo\\x00se" in table  # a NUL inside a string is escaped, not printed
    rows = strict_json(sql(lib, query, "--json", capsys=capsys))
    assert len(rows) == 3
    lo, hi, nulls = rows
    assert all(v is None for v in nulls.values())
    assert (lo["bool"], hi["bool"], lo["int"], hi["tinyint"]) == (False, True, -2147483648, 127)
    assert hi["hugeint"] == str(2**127 - 1) and hi["uhugeint"] == str(2**128 - 1)  # exact, as text
    assert hi["ubigint"] == str(2**64 - 1) and lo["ubigint"] == "0"  # the whole column is text
    assert lo["timestamp"] == "290309-12-22 (BC) 00:00:00" and hi["date"] == "5881580-07-10"
    assert hi["double_array"] == [42.0, "nan", "inf", "-inf", None, -42.0]
    assert hi["date_array"] == ["1970-01-01", "infinity", "-infinity", None, "2022-05-12"]
    assert hi["struct"] == {"a": 42, "b": "🦆🦆🦆🦆🦆🦆"} and hi["map"] == {"key1": "🦆🦆🦆🦆🦆🦆", "key2": "goose"}
    assert hi["dec38_10"] == "9999999999999999999999999999.9999999999" and hi["dec_4_1"] == 999.9
    assert hi["varchar"] == "goo\x00se"
    csv_lines = sql(lib, query, "--csv", capsys=capsys).split("\n")
    assert len(csv_lines) == 5 and csv_lines[-1] == ""  # header, 3 rows, final newline
    assert "290309-12-22 (BC) 00:00:00" in csv_lines[1] and "infinity" in csv_lines[2]


# ---- D6: strict JSON -------------------------------------------------------------------------------

def test_d6_json_is_strict_and_exact(_synthetic_3000: SyntheticLibrary, capsys: pytest.CaptureFixture) -> None:
    lib = _synthetic_3000
    rows = strict_json(sql(lib, "SELECT 'nan'::DOUBLE AS a, 'inf'::DOUBLE AS b, '-inf'::FLOAT AS c, 0.5::FLOAT AS f, "
                                "[1.5, 'nan'::DOUBLE] AS l, {'x': 'inf'::DOUBLE} AS st, 1.5 AS dec, "
                                "9007199254740993::BIGINT AS big, 42::BIGINT AS small, sum(i) AS total, "
                                "1 AS dup, 2 AS dup FROM range(3) t(i)", "--json", capsys=capsys))
    assert rows == [{"a": "nan", "b": "inf", "c": "-inf", "f": 0.5, "l": [1.5, "nan"], "st": {"x": "inf"},
                     "dec": 1.5, "big": "9007199254740993", "small": 42, "total": 3, "dup": 1, "dup_1": 2}]
    # Clip ids are random int64: strings, exact, every one of them (jq and JavaScript round numbers).
    ids = strict_json(sql(lib, "SELECT clip_id FROM clips ORDER BY clip_id", "--json", capsys=capsys))
    assert [int(r["clip_id"]) for r in ids] == sorted(int(c) for c in lib.clip_ids)
    assert all(isinstance(r["clip_id"], str) for r in ids)


def test_d6_wide_integers_inside_lists_and_structs_are_strings(_synthetic_3000: SyntheticLibrary,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """As at the top level (issue 11 item 8): an integer past 2**53 inside a list, struct or map
    is a string, and so is every integer at the same place in that column, while columns and
    fields holding only small ones keep numbers. A saved search's merged_clip_ids (BIGINT[]) is
    what users export this way."""
    lib = _synthetic_3000
    rows = strict_json(sql(lib, "SELECT [9007199254740993, 7]::BIGINT[] AS ids, [1, 2]::BIGINT[] AS small, "
                                "{'id': 9223372036854775807::BIGINT, 'n': 3::BIGINT, 'f': 0.5} AS st, "
                                "[{'id': -9007199254740993::BIGINT}, {'id': 5::BIGINT}] AS nest, "
                                "[170141183460469231731687303715884105727::HUGEINT] AS huge, "
                                "MAP {'k': 9007199254740993::BIGINT} AS m, "
                                "[true, false] AS flags", "--json", capsys=capsys))
    assert rows == [{"ids": ["9007199254740993", "7"], "small": [1, 2],
                     "st": {"id": "9223372036854775807", "n": 3, "f": 0.5},
                     "nest": [{"id": "-9007199254740993"}, {"id": "5"}],
                     "huge": ["170141183460469231731687303715884105727"],
                     "m": {"k": "9007199254740993"}, "flags": [True, False]}]
    # The same rule across rows: the column's small value is a string too when another row's is not.
    rows = strict_json(sql(lib, "SELECT [x]::BIGINT[] AS l FROM (VALUES (9007199254740993), (1)) t(x) ORDER BY x",
                           "--json", capsys=capsys))
    assert rows == [{"l": ["1"]}, {"l": ["9007199254740993"]}]
    # Real clip ids in lists: exact after a round trip through strict JSON.
    rows = strict_json(sql(lib, "SELECT list(clip_id ORDER BY clip_id) AS ids FROM clips", "--json", capsys=capsys))
    assert [int(c) for c in rows[0]["ids"]] == sorted(int(c) for c in lib.clip_ids)


# ---- 9: CSV line ends; 7: table width --------------------------------------------------------------

def test_csv_lines_end_with_lf(_synthetic_3000: SyntheticLibrary, capsys: pytest.CaptureFixture) -> None:
    out = sql(_synthetic_3000, "SELECT clip_id, path FROM clips LIMIT 5", "--csv", capsys=capsys)
    assert "\r" not in out and out.count("\n") == 6
    assert all(int(line.split(",")[0]) in set(_synthetic_3000.clip_ids.tolist()) for line in out.splitlines()[1:])


# Paths longer than the terminal default (60): a real library's are.
DEEP = "/home/someone/videos/from/the/old/camera/and/the/new/one"
LONG_PATHS = f"SELECT '{DEEP}' || path AS path, codec FROM videos ORDER BY path LIMIT 3"


def test_table_cells_are_not_cut_off_a_terminal(_synthetic_3000: SyntheticLibrary,
                                                capsys: pytest.CaptureFixture) -> None:
    paths = sorted(v["path"] for v in _synthetic_3000.videos)[:3]
    for flags in ((), ("--max-width", "0")):
        out = sql(_synthetic_3000, LONG_PATHS, *flags, capsys=capsys)
        assert "…" not in out
        assert all(DEEP + p in out for p in paths)
    out = sql(_synthetic_3000, "SELECT path, 'abcdefghijklmnop' AS word FROM videos ORDER BY path LIMIT 3",
              "--max-width", "14", capsys=capsys)
    cells = [line.split() for line in out.splitlines()[2:5]]
    for (path, word), full in zip(cells, sorted(paths)[:3], strict=True):
        assert path.startswith("…") and full.endswith(path[1:]) and len(path) == 14  # the file name stays
        assert word == "abcdefghijklm…"
    assert main(["sql", "SELECT 1", "--library", str(_synthetic_3000.lib.root), "--max-width", "-1"]) == 1


def test_table_on_a_terminal_keeps_the_file_names(_synthetic_3000: SyntheticLibrary) -> None:
    """Under a real pseudo-terminal the default width applies, cutting paths from the left."""
    main_fd, tty_fd = pty.openpty()
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "vidsearch.cli", "sql", LONG_PATHS, "--library",
                             str(_synthetic_3000.lib.root)], stdout=tty_fd, stderr=subprocess.PIPE, env=env,
                            cwd=REPO)
    os.close(tty_fd)
    chunks = []
    while True:
        ready, _, _ = select.select([main_fd], [], [], 120)
        assert ready, "no output from vidsearch sql"
        try:
            data = os.read(main_fd, 65536)
        except OSError:  # EIO: the terminal's other side closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(main_fd)
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    lines = b"".join(chunks).decode().splitlines()
    paths = sorted(v["path"] for v in _synthetic_3000.videos)[:3]
    cells = [line.split()[0] for line in lines[2:5]]
    assert len(cells) == 3
    for cell, p in zip(cells, paths, strict=True):
        assert len(cell) == 60 and cell.startswith("…") and (DEEP + p).endswith(cell[1:])
        assert cell.endswith(Path(p).name)


def test_format_rows_cuts_paths_from_the_left() -> None:
    import pyarrow as pa

    from vidsearch.search.sql import format_rows

    t = pa.table({"path": ["/very/long/folder/name/holiday.mp4", "/a/b.mp4"], "note": ["x" * 30, "ok"]})
    lines = format_rows(t, 16).splitlines()
    assert lines[2].split() == ["…ame/holiday.mp4", "xxxxxxxxxxxxxxx…"]
    assert lines[3].split() == ["/a/b.mp4", "ok"]
    assert "…" not in format_rows(t, 0) and "…" not in format_rows(t, None)


# ---- 6: a closed pipe ends quietly -------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["sql", "SELECT * FROM clips, range(20)"],
    ["sql", "SELECT * FROM clips, range(20)", "--json"],
    ["sql", "SELECT * FROM clips, range(20)", "--csv"],
    ["search", "--like", "CLIP", "--json", "--no-history", "-k", "200", "--no-merge"],
])
def test_output_into_a_closed_pipe_ends_quietly(synthetic_library: SyntheticLibrary, tmp_path: Path,
                                                args: list[str]) -> None:
    """`vidsearch ... | head -1`: no BrokenPipeError traceback, exit status 141 like `yes | head -1`."""
    lib = synthetic_library  # a copy: building an index must not change the session's library
    if args[0] == "search":
        with lib.lib.lock():
            update_index(lib.lib)
    argv = [a.replace("CLIP", str(int(lib.clip_ids[0]))) for a in args]
    err = tmp_path / "stderr"
    script = ('"$@" 2>"$ERR" | head -1 >/dev/null; echo "${PIPESTATUS[0]}"')
    r = subprocess.run(["bash", "-c", script, "bash", sys.executable, "-m", "vidsearch.cli", *argv,
                        "--library", str(lib.lib.root)], capture_output=True, text=True,
                       env={**os.environ, "ERR": str(err)}, cwd=REPO, timeout=300)
    assert r.stdout.strip() == str(EXIT_BROKEN_PIPE), (r.stdout, err.read_text())
    assert err.read_text() == ""
