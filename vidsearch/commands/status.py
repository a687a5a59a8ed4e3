"""``vidsearch status --library DIR [--json]``: what a library holds and whether it is healthy."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from vidsearch.commands import add_library_argument


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "status", help="summarise a library: videos, clips, failures, runs, health",
        description="What a library holds (videos by state, searchable clips, hours of video), its "
                    "recent failures, its ingest runs and whether every shard the manifest lists is "
                    "intact. Reads only: never changes the library. Exit code 2 when the health check "
                    "finds problems.")
    add_library_argument(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def library_status(root: str, max_attempts: int = 2) -> dict[str, Any]:
    """Status of the library at ``root`` as a JSON-able dict (read-only; never waits on a writer)."""
    from vidsearch.library import Library
    from vidsearch.schemas.text_tables import KIND_STAGE_SQL

    lib = Library(root)
    m = lib.read_manifest()
    out: dict[str, Any] = {
        "library": str(lib.root), "library_id": m.library_id, "generation": m.generation,
        "model": (None if m.model is None else {"name": m.model.name, "fingerprint": m.model.fingerprint,
                                                 "embed_dim": m.model.embed_dim,
                                                 "is_test_model": m.model.is_test_model}),
        "shards": len(m.shards), "clips_in_shards": m.total_clips, "shards_at": lib.shards_location(m),
        # A running ingest refreshes catalog.duckdb now and then, not at every commit (and a
        # killed or out-of-disk one not at all): the counts below come from the reader's
        # catalog, that file completed in memory with the newer shards (D9), so they do not trail.
        "catalog_current": lib.catalog_is_current(m),
    }
    with lib.connect_catalog() as con:
        def q(sql: str, *params: Any) -> list[tuple[Any, ...]]:
            return con.execute(sql, list(params)).fetchall()

        states = dict(q(
            "SELECT CASE WHEN status = 'failed' AND attempts >= ? THEN 'quarantined' ELSE status END s, "
            "count(*) FROM videos GROUP BY s", max_attempts))
        out["videos"] = {k: states.get(k, 0) for k in ("done", "partial", "failed", "quarantined", "replaced")}
        out["clips"] = q("SELECT count(*) FROM clips c JOIN videos v USING (video_id) "
                         "WHERE v.status IN ('done', 'partial')")[0][0]
        seconds = float(q("SELECT coalesce(sum(duration_s), 0) FROM videos "
                          "WHERE status IN ('done', 'partial')")[0][0] or 0)
        out["duration_s"] = round(seconds, 3)
        out["hours"] = round(seconds / 3600, 4)
        out["failures_by_type"] = dict(q(
            "SELECT error_type, count(*) FROM videos WHERE status IN ('failed', 'partial') "
            "AND error_type IS NOT NULL GROUP BY error_type ORDER BY count(*) DESC, error_type"))
        out["recent_failures"] = [
            {"path": p, "stage": s, "error_type": t, "message": msg, "attempts": a}
            for p, s, t, msg, a in q("SELECT path, stage, error_type, error_message, attempts FROM videos "
                                     "WHERE status IN ('failed', 'partial') ORDER BY ingested_at DESC LIMIT 20")]
        out["text"] = _text_status(q)
        for stage, t, n in q(f"SELECT {KIND_STAGE_SQL} AS stage, error_type, count(*) FROM text_status "
                             "WHERE status = 'failed' GROUP BY stage, error_type ORDER BY stage, error_type"):
            out["failures_by_type"][f"{stage}:{t}"] = n
        out["recent_failures"] += [
            {"path": p, "stage": s, "error_type": t, "message": msg, "attempts": a}
            for p, s, t, msg, a in q(f"SELECT path, {KIND_STAGE_SQL}, error_type, error_message, attempts "
                                     "FROM text_status WHERE status = 'failed' ORDER BY recorded_at DESC LIMIT 20")]
        cur = con.execute("SELECT * FROM runs ORDER BY started_at")
        names = [d[0] for d in cur.description]
        out["runs"] = [{k: _run_value(k, v) for k, v in zip(names, r, strict=True)} for r in cur.fetchall()]
    problems = lib.verify()
    out["health"] = {"ok": not problems, "problems": problems}
    return out


def _text_status(q: Any) -> dict[str, Any]:
    """Transcript and screen-text counts of searchable videos (issue 14): rows by source, and videos
    by text-stage status (speech: ok / silent / no_audio / failed; subtitles: ok / none)."""
    live = "video_id IN (SELECT video_id FROM videos WHERE status IN ('done', 'partial'))"
    segments = dict(q(f"SELECT source, count(*) FROM transcripts WHERE {live} GROUP BY source"))
    by_kind: dict[str, dict[str, int]] = {}
    for kind, status, n in q(f"SELECT kind, status, count(*) FROM text_status WHERE {live} GROUP BY kind, status"):
        by_kind.setdefault(kind, {})[status] = n
    models = {kind: [m for (m,) in q(f"SELECT DISTINCT model FROM text_status WHERE kind = '{kind}' AND model IS "
                                     f"NOT NULL AND status <> 'failed' AND {live} ORDER BY model")]
              for kind in ("speech", "screen")}
    return {"speech_segments": segments.get("speech", 0), "subtitle_segments": segments.get("subtitle", 0),
            "screen_rows": q(f"SELECT count(*) FROM screen_text WHERE {live}")[0][0],
            "speech": by_kind.get("speech", {}), "subtitles": by_kind.get("subtitle", {}),
            "screen": by_kind.get("screen", {}), "speech_models": models["speech"], "screen_models": models["screen"]}


def _run_value(key: str, value: Any) -> Any:
    """A ``runs`` column as JSON wants it: times as text, ``settings`` as an object (the catalog
    keeps it as JSON text; text that is not a JSON object stays text)."""
    if value is None:
        return None
    if key.endswith("_at"):
        return str(value)
    if key == "settings" and isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        return parsed if isinstance(parsed, dict) else value
    return value


def run(args: argparse.Namespace) -> int:
    from vidsearch.commands.ingest import _esc
    from vidsearch.pipeline.progress import duration_text, plural

    st = library_status(args.library)
    if args.json:
        json.dump(st, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0
    v = st["videos"]
    lines = [
        f"library {_esc(st['library'])}  (generation {st['generation']}, {plural(st['shards'], 'shard')})",
        f"model   {st['model']['name'] if st['model'] else '-'}"
        + ("  [TEST MODEL]" if st["model"] and st["model"]["is_test_model"] else ""),
        f"videos  {v['done']} done, {v['partial']} partial, {v['failed']} failed, "
        f"{v['quarantined']} quarantined, {v['replaced']} replaced",
        f"clips   {st['clips']:,} searchable ({duration_text(st['duration_s'])} of video)",
    ]
    t = st["text"]
    sp, sub = t["speech"], t["subtitles"]
    if sp:
        others = (("silent", "silent"), ("no_audio", "without audio"), ("failed", "failed"))
        lines.append(f"speech  {plural(sp.get('ok', 0), 'video')} with speech "
                     f"({plural(t['speech_segments'], 'segment')})"
                     + "".join(f", {sp[k]:,} {what}" for k, what in others if sp.get(k))
                     + (f"  [{', '.join(_esc(m) for m in t['speech_models'])}]" if t["speech_models"] else ""))
    if sub:
        lines.append(f"subtitles {plural(sub.get('ok', 0), 'video')} with subtitles "
                     f"({plural(t['subtitle_segments'], 'segment')}), {sub.get('none', 0):,} without")
    scr = t["screen"]
    if scr:
        lines.append(f"screen  {plural(scr.get('ok', 0), 'video')} with text on screen "
                     f"({plural(t['screen_rows'], 'row')}), {scr.get('none', 0):,} without"
                     + (f", {scr['failed']:,} failed" if scr.get("failed") else "")
                     + (f"  [{', '.join(_esc(m) for m in t['screen_models'])}]" if t["screen_models"] else ""))
    if "://" in st["shards_at"] or not st["shards_at"].startswith(st["library"]):
        lines.insert(1, f"shards  {_esc(st['shards_at'])}")
    if not st["catalog_current"]:
        lines.append(f"catalog.duckdb behind the manifest ({st['clips_in_shards']} clips committed in shards): "
                     "the counts above include the newer shards (read from them); the next writer "
                     "(ingest, index, doctor --fix) brings the file up to date")
    if st["failures_by_type"]:
        lines.append("failures " + ", ".join(f"{k}: {n}" for k, n in st["failures_by_type"].items()))
        for f in st["recent_failures"][:10]:
            lines.append(f"  {f['error_type']:<16} {_esc(str(f['message']))[:110]}")
    if st["runs"]:
        r = st["runs"][-1]
        lines.append(f"last run {r['run_id']} {r['status']}: {plural(r['clips'] or 0, 'clip')}, "
                     f"{r['clips_per_s'] or 0:.1f} clips/s")
    h = st["health"]
    lines.append("health  ok" if h["ok"] else "health  PROBLEMS: " + "; ".join(h["problems"]))
    sys.stdout.write("\n".join(lines) + "\n")
    return 0 if h["ok"] else 2
