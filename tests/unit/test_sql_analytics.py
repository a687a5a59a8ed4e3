"""`vidsearch sql`: the analytics queries of the README, output formats, read-only tables."""

from __future__ import annotations

import json

import pytest
from conftest import SyntheticLibrary

from vidsearch.cli import main
from vidsearch.commands.sql import ANALYTICS
from vidsearch.indexer import update_index
from vidsearch.search import Searcher


def test_analytics_queries_and_formats(synthetic_library: SyntheticLibrary, capsys: pytest.CaptureFixture) -> None:
    s = synthetic_library
    lib = str(s.lib.root)
    with s.lib.lock():
        update_index(s.lib)
    with Searcher(s.lib) as searcher:
        searcher.search(vector=s.vectors[0], k=10)
    for sql in ANALYTICS.values():
        assert main(["sql", sql, "--library", lib, "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert rows, sql
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
