"""``vidsearch sql``: read-only SQL over videos, clips, failures, runs, searches, search_results."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

import pyarrow as pa

from vidsearch.library import Library
from vidsearch.search.output import escape_display
from vidsearch.search.sandbox import check_select, open_sandbox, run_query


def run_sql(library: Library, sql: str, *, timeout_s: float = 30.0, memory_limit: str = "2GB",
            threads: int = 2) -> pa.Table:
    """Run one user SELECT on the locked sandbox and return the rows.

    Raises:
        QueryRefused: not exactly one SELECT statement.
        QueryFailed: it ran and failed (blocked file/network access, an error, the timeout).
    """
    con = open_sandbox(library, memory_limit=memory_limit, threads=threads)
    try:
        check_select(con, sql)
        return run_query(con, sql, timeout_s=timeout_s)
    finally:
        con.close()


def _cell(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else str(v)
    if isinstance(v, bytes):
        return escape_display(v.decode("utf-8", "backslashreplace"))
    return escape_display(str(v))


def format_rows(table: pa.Table, max_width: int = 60) -> str:
    """A plain aligned table; long cells are cut with an ellipsis, control characters escaped."""
    names = table.column_names
    rows = [[_cell(v) for v in row.values()] for row in table.to_pylist()]
    rows = [[c if len(c) <= max_width else c[:max_width - 1] + "…" for c in r] for r in rows]
    widths = [max([len(n), *(len(r[i]) for r in rows)]) for i, n in enumerate(names)]
    out = ["  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)).rstrip(),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    out.append(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''})")
    return "\n".join(out)


def to_json_rows(table: pa.Table) -> str:
    return json.dumps(table.to_pylist(), default=str, ensure_ascii=False, indent=1)


def to_csv_rows(table: pa.Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(table.column_names)
    for row in table.to_pylist():
        w.writerow(["" if v is None else v for v in row.values()])
    return buf.getvalue()
