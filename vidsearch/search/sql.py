"""``vidsearch sql``: read-only SQL over the catalog (videos, clips, failures, runs, transcripts,
text_status, screen_text, tags, tag_sets) and the search history (searches, search_results).

The query runs in a sandbox worker process (:func:`vidsearch.search.sandbox.run_user_sql`);
this module turns its rows into the three outputs:

- a table for people: values as DuckDB prints them (``infinity``, ``290309-12-22 (BC)``,
  intervals, lists), floats to 6 significant digits, control characters escaped; cells cut only
  on a terminal, paths from the left so that the file name stays;
- CSV: the same text, full precision, ``\\n`` line ends;
- strict JSON (RFC 8259; no NaN/Infinity): booleans, numbers and strings as they are; a float
  that is not finite is DuckDB's spelling as a string (``"nan"``, ``"inf"``, ``"-inf"``);
  64-bit and wider integer columns holding a value a JavaScript number cannot hold exactly
  (beyond +-2**53) are strings, every value of the column, so a clip id survives ``jq``;
  nested values are JSON (DuckDB's ``to_json``), with the same rule for the integers inside
  them, place by place (a list's elements, a struct's field: :func:`_wide_ints_as_text`);
  everything else is DuckDB's text.
"""

from __future__ import annotations

import csv
import decimal
import io
import json
import math
from collections.abc import Callable
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]

from vidsearch.library import Library
from vidsearch.search.output import escape_display
from vidsearch.search.sandbox import ENCODING_KEY, TYPE_KEY, Shape, finite_or_text, run_user_sql

# Integers a JavaScript number (an IEEE double) holds exactly.
JSON_SAFE_INT = 2**53 - 1
_WIDE_INT_TYPES = ("BIGINT", "UBIGINT", "HUGEINT", "UHUGEINT")


def run_sql(library: Library, sql: str, *, timeout_s: float = 30.0, memory_limit: str = "2GB",
            threads: int = 2, shape: Shape = "raw") -> pa.Table:
    """Run one user SELECT in a sandbox worker and return the rows (see ``run_user_sql``'s shapes).

    Raises:
        QueryRefused: not exactly one SELECT statement.
        QueryFailed: it ran and failed (blocked file/network access, an error, the timeout, memory).
    """
    return run_user_sql(library, sql, timeout_s=timeout_s, memory_limit=memory_limit, threads=threads,
                        shape=shape)


def _encoding(field: pa.Field) -> bytes:
    return (field.metadata or {}).get(ENCODING_KEY, b"native")


def _cell(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else str(finite_or_text(v))
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, bytes):
        return escape_display(v.decode("utf-8", "backslashreplace"))
    return escape_display(str(v))


def _cut(cell: str, width: int) -> str:
    if width <= 0 or len(cell) <= width:
        return cell
    if width == 1:
        return "…"
    # A path keeps its end (the file name): rows of one folder would otherwise all look alike.
    if "/" in cell:
        return "…" + cell[len(cell) - (width - 1):]
    return cell[:width - 1] + "…"


def format_rows(table: pa.Table, max_width: int | None = None) -> str:
    """A plain aligned table; control characters escaped.

    Args:
        table: rows from :func:`run_sql` with ``shape="text"``.
        max_width: cut cells longer than this (paths from the left); None or 0: never.
    """
    names = [escape_display(n) for n in table.column_names]
    rows = [[_cell(v) for v in row] for row in zip(*(c.to_pylist() for c in table.columns), strict=True)] \
        if table.num_columns else []
    if max_width:
        rows = [[_cut(c, max_width) for c in r] for r in rows]
    widths = [max([len(n), *(len(r[i]) for r in rows)]) for i, n in enumerate(names)]
    out = ["  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)).rstrip(),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    out.append(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''})")
    return "\n".join(out)


def _json_constant(name: str) -> str:
    # DuckDB's to_json writes NaN / Infinity / -Infinity, which strict parsers reject.
    return {"NaN": "nan", "Infinity": "inf", "-Infinity": "-inf"}[name]


def _nested(v: Any) -> Any:
    """Floats in parsed nested JSON made strict (non-finite ones become text)."""
    if isinstance(v, float):
        return finite_or_text(v)
    if isinstance(v, list):
        return [_nested(x) for x in v]
    if isinstance(v, dict):
        return {k: _nested(x) for k, x in v.items()}
    return v


# A place inside a nested value: struct/map keys, and None for "an element of a list".
_Place = tuple[str | None, ...]


def _wide_places(v: Any, place: _Place, out: set[_Place]) -> None:
    """Add to ``out`` the places in ``v`` holding an integer a double cannot hold exactly."""
    if isinstance(v, bool):
        return
    if isinstance(v, int):
        if abs(v) > JSON_SAFE_INT:
            out.add(place)
    elif isinstance(v, list):
        for x in v:
            _wide_places(x, (*place, None), out)
    elif isinstance(v, dict):
        for k, x in v.items():
            _wide_places(x, (*place, k), out)


def _ints_as_text(v: Any, place: _Place, wide: set[_Place]) -> Any:
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v) if place in wide else v
    if isinstance(v, list):
        return [_ints_as_text(x, (*place, None), wide) for x in v]
    if isinstance(v, dict):
        return {k: _ints_as_text(x, (*place, k), wide) for k, x in v.items()}
    return v


def _wide_ints_as_text(values: list[Any]) -> list[Any]:
    """Parsed nested values of one column, with the top-level rule applied inside them: where
    any row has an integer past 2**53 at a place (the elements of a list, a struct's field),
    every integer at that place becomes a string, in every row; other places keep numbers
    (a BIGINT[] of clip ids becomes strings, a count beside it stays a number)."""
    wide: set[_Place] = set()
    for v in values:
        _wide_places(v, (), wide)
    return values if not wide else [_ints_as_text(v, (), wide) for v in values]


def _number(d: decimal.Decimal) -> int | float | str:
    # A DECIMAL as a JSON number when a double holds it exactly, else its exact text.
    if d == d.to_integral_value() and abs(d) <= JSON_SAFE_INT:
        return int(d)
    f = float(d)
    return f if math.isfinite(f) and decimal.Decimal(repr(f)) == d else str(d)


def _json_column(field: pa.Field, values: list[Any]) -> list[Any]:
    enc = _encoding(field)
    conv: Callable[[Any], Any]
    if enc == b"json":
        values = _wide_ints_as_text([None if v is None else _nested(json.loads(v, parse_constant=_json_constant))
                                     for v in values])
    elif enc == b"int":
        values = [None if v is None else int(v) for v in values]
    if enc in (b"native", b"int"):
        dtype = (field.metadata or {}).get(TYPE_KEY, b"").decode()
        if dtype in _WIDE_INT_TYPES and any(v is not None and abs(v) > JSON_SAFE_INT for v in values):
            return [None if v is None else str(v) for v in values]
        if pa.types.is_floating(field.type):
            conv = finite_or_text
        elif pa.types.is_decimal(field.type):
            conv = _number
        else:
            return values
        return [None if v is None else conv(v) for v in values]
    return values


def to_json_rows(table: pa.Table) -> str:
    """Strict JSON: a list of row objects (rows from :func:`run_sql` with ``shape="json"``).

    A name that repeats (``SELECT 1 AS a, 2 AS a``) gets a suffix, as DuckDB's own renaming does
    (``a``, ``a_1``), so no value is lost.
    """
    names: list[str] = []
    for n in table.column_names:
        name, i = n, 0
        while name in names:
            i += 1
            name = f"{n}_{i}"
        names.append(name)
    cols = [_json_column(f, c.to_pylist()) for f, c in zip(table.schema, table.columns, strict=True)]
    rows = [dict(zip(names, r, strict=True)) for r in zip(*cols, strict=True)] if cols else \
        [{} for _ in range(table.num_rows)]
    return json.dumps(rows, ensure_ascii=False, indent=1, allow_nan=False)


def to_csv_rows(table: pa.Table) -> str:
    """CSV with a header row and ``\\n`` line ends (rows from :func:`run_sql` with ``shape="text"``).

    Text is written as it is (CSV quoting, no escaping); NULL is an empty field; floats in full
    precision (``nan``, ``inf`` as DuckDB spells them).
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(table.column_names)
    cols = [c.to_pylist() for c in table.columns]
    for row in zip(*cols, strict=True):
        w.writerow(["" if v is None else str(finite_or_text(v)) if isinstance(v, float) else v for v in row])
    return buf.getvalue()
