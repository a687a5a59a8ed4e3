"""Health checks of a library's index against its manifest (used by ``vidsearch doctor``)."""

from __future__ import annotations

from dataclasses import dataclass

from vidsearch.indexer.build import load_index
from vidsearch.indexer.store import (
    IndexCorrupt,
    IndexMissing,
    IndexStale,
    check_file,
    read_meta,
    stale_reasons,
    uncovered_shards,
)
from vidsearch.library import Library, LibraryError


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a library and the command that fixes it."""

    message: str
    fix: str


def diagnose(library: Library) -> list[Problem]:
    """Every problem found: shards (Library.verify), catalog currency, index vs manifest."""
    root = library.root
    problems = [Problem(p, f"`vidsearch ingest ... --library {root}` sets the shard aside in quarantine/ and "
                           "ingests its videos again" if "shard" in p and "stray" not in p
                        else "remove the file (it is ignored)")
                for p in library.verify()]
    try:
        m = library.read_manifest()
    except LibraryError as e:
        return [Problem(str(e), "point --library at a vidsearch library")]
    if not library.catalog_is_current(m):
        problems.append(Problem("catalog.duckdb is missing or behind the manifest",
                                f"`vidsearch index --library {root}` refreshes it"))
    rebuild = f"`vidsearch index --rebuild --library {root}`"
    try:
        meta = read_meta(library)
    except IndexMissing:
        if m.total_clips:
            problems.append(Problem("no FAISS index yet", f"`vidsearch index --library {root}`"))
        return problems
    except IndexCorrupt as e:
        return [*problems, Problem(str(e), rebuild)]
    reasons = stale_reasons(meta, m)
    problems += [Problem(f"index: {r}", rebuild) for r in reasons]
    if not reasons:
        try:
            load_index(library, m, meta=meta)
            for s in meta.shards:
                check_file(library, s.vectors_file, s.vectors_sha256)
                check_file(library, s.ids_file, s.ids_sha256)
        except (IndexCorrupt, IndexStale) as e:
            problems.append(Problem(str(e), rebuild))
    new = uncovered_shards(meta, m)
    if new:
        problems.append(Problem(f"{sum(s.clips_rows for s in new)} clips in {len(new)} shard(s) are not in "
                                "the index (searched exactly until indexed)", f"`vidsearch index --library {root}`"))
    if any("rebuild" in n for n in meta.report.get("notes", [])) and meta.report.get("rebuild_suggested"):
        problems.append(Problem("index: too many vectors added since training", rebuild))
    return problems
