"""Health checks and repairs of a library (``vidsearch doctor`` and ``vidsearch doctor --fix``).

``diagnose`` only reads (RELIABILITY rule 13: read commands do not write): shard digests,
catalog currency, the index against the manifest. ``repair`` is a writer step, under the lock:
it removes what a killed writer left, sets corrupt shards aside, rebuilds the catalog and brings
the index up to date, then reports what it did. Every problem carries the exact command that
fixes it (paths and model filled in).
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from vidsearch.indexer.build import IndexReport, load_index, update_index
from vidsearch.indexer.store import (
    IndexCorrupt,
    IndexMissing,
    IndexStale,
    check_file,
    read_meta,
    stale_reasons,
    uncovered_shards,
)
from vidsearch.indexer.text import keyword_problems
from vidsearch.library import Library, LibraryError
from vidsearch.schemas.config import IndexCfg
from vidsearch.schemas.manifest import Manifest

_logger = logging.getLogger(__name__)

__all__ = ["Problem", "RepairReport", "diagnose", "repair", "reingest_command"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a library and the command that fixes it."""

    message: str
    fix: str


@dataclass
class RepairReport:
    """What ``repair`` did (each list empty when nothing was needed)."""

    removed: list[str] = field(default_factory=list)          # temp / unlisted shard files deleted
    quarantined: list[int] = field(default_factory=list)      # shard ids set aside
    reingest: str | None = None                               # the command that re-embeds their videos
    catalog_rebuilt: bool = False
    index: IndexReport | None = None

    def lines(self) -> list[str]:
        """One line per action, for the terminal."""
        out = [f"removed {p}" for p in self.removed]
        if self.quarantined:
            out.append(f"set aside {len(self.quarantined)} missing or corrupt shard(s) in quarantine/ "
                       f"(ids {', '.join(map(str, self.quarantined))}); their videos are marked failed")
            if self.reingest:
                out.append(f"re-embed them with: {self.reingest}")
        if self.catalog_rebuilt:
            out.append("rebuilt catalog.duckdb from the shards")
        if self.index is not None and self.index.action != "unchanged":
            out.append(f"index {self.index.action}: {self.index.kind}, {self.index.vectors} vectors")
        kw = self.index.keyword if self.index is not None else None
        if kw is not None and kw.get("action") not in ("none", "unchanged"):
            out.append(f"keyword index {kw['action']}: {kw['docs']:,} documents")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"removed": self.removed, "quarantined": self.quarantined, "reingest": self.reingest,
                "catalog_rebuilt": self.catalog_rebuilt,
                "index": None if self.index is None else self.index.to_dict()}


def _q(path: object) -> str:
    return shlex.quote(str(path))


def fix_command(library: Library) -> str:
    """The repair command for this library."""
    return f"vidsearch doctor --fix --library {_q(library.root)}"


def reingest_command(library: Library, paths: list[str], model: str | None) -> str:
    """``vidsearch ingest`` of the folders holding ``paths`` (at most 5, else their common folder).

    Ingest skips every video already done, so naming a whole folder re-embeds only those lost.
    """
    folders = sorted({str(PurePath(p).parent) for p in paths})
    if len(folders) > 5:
        common = os.path.commonpath(folders)
        folders = [common] if common not in ("", "/") else folders[:5]
    where = " ".join(_q(f) for f in folders) if folders else "VIDEO_FOLDERS"
    return (f"vidsearch ingest {where} --library {_q(library.root)}"
            + (f" --model {_q(model)}" if model else ""))


def _paths_in_shards(library: Library, m: Manifest, shard_ids: list[int]) -> list[str]:
    """Video paths with clips in ``shard_ids``: from the catalog when it can be read safely, else
    from the shards' videos files that are still intact."""
    import duckdb

    if not shard_ids:
        return []
    if library.catalog_path.is_file() and library.catalog_problem() is None:
        try:
            # The catalog is untrusted too: external access off, so a table swapped for a view
            # over some file reads nothing; the shard ids are bound, never formatted into SQL.
            with duckdb.connect(str(library.catalog_path), read_only=True,
                                config={"enable_external_access": False}) as con:
                rows = con.execute("SELECT DISTINCT path FROM clips WHERE list_contains(?, shard_id) "
                                   "ORDER BY path", [shard_ids]).fetchall()
            return [r[0] for r in rows if isinstance(r[0], str)]
        except duckdb.Error as e:
            _logger.info("catalog unreadable for the re-ingest command (%s)", e)
    paths: list[str] = []
    for entry in m.shards:
        if entry.shard_id in shard_ids:
            try:
                t = library.read_shard(entry, "videos", columns=["path"], verify=True)
            except Exception as e:  # noqa: BLE001 - a lost videos file: those paths are unknown
                _logger.info("%s unreadable for the re-ingest command (%s)", entry.videos_file, e)
                continue
            paths += [p for p in t.column("path").to_pylist() if isinstance(p, str)]
    return sorted(set(paths))


def _lost_video_paths(library: Library) -> list[str]:
    """Paths of videos whose clips were lost with a quarantined shard (``error_type=ShardCorrupt``)."""
    try:
        with library.connect_catalog() as con:
            rows = con.execute("SELECT DISTINCT path FROM videos WHERE error_type = 'ShardCorrupt' "
                               "AND status = 'failed' ORDER BY path").fetchall()
    except Exception as e:  # noqa: BLE001 - only the suggested command depends on it
        _logger.info("catalog unreadable for the re-ingest command (%s)", e)
        return []
    return [r[0] for r in rows if isinstance(r[0], str)]


def diagnose(library: Library) -> list[Problem]:
    """Every problem found: shards (``Library.verify``), catalog currency, index vs manifest.

    Reads only: the library is byte-identical afterwards.
    """
    root = library.root
    fix = fix_command(library)
    try:
        m = library.read_manifest()
    except LibraryError as e:
        return [Problem(str(e), "point --library at a vidsearch library")]
    problems: list[Problem] = []
    found = library.verify()
    again = None
    if any("stray" not in p for p in found):
        try:  # which shards (verify names files); hashing them twice only when some are bad
            bad_shards = sorted(library.shard_problems(m))
        except LibraryError:
            bad_shards = []
        again = reingest_command(library, _paths_in_shards(library, m, bad_shards),
                                 m.model.name if m.model else None)
    for p in found:
        if "stray" in p:
            problems.append(Problem(p, f"{fix} (deletes unlisted part-/videos- files; other files are ignored)"))
        else:
            problems.append(Problem(p, f"{fix} (sets the shard aside in quarantine/), then {again}"))
    if not library.catalog_is_current(m):
        problems.append(Problem("catalog.duckdb is missing, unreadable or behind the manifest", fix))
    for message, needs_fix in keyword_problems(library, m):
        problems.append(Problem(message, fix if needs_fix else f"vidsearch index --library {_q(root)}"))
    try:
        meta = read_meta(library)
    except IndexMissing:
        if m.total_clips:
            problems.append(Problem("no FAISS index yet", f"vidsearch index --library {_q(root)}"))
        return problems
    except IndexCorrupt as e:
        return [*problems, Problem(str(e), fix)]
    reasons = stale_reasons(meta, m)
    problems += [Problem(f"index: {r}", fix) for r in reasons]
    if not reasons:
        try:
            load_index(library, m, meta=meta)
            for s in meta.shards:
                check_file(library, s.vectors_file, s.vectors_sha256)
                check_file(library, s.ids_file, s.ids_sha256)
        except (IndexCorrupt, IndexStale) as e:
            problems.append(Problem(str(e), fix))
    new = uncovered_shards(meta, m)
    if new:
        problems.append(Problem(f"{sum(s.clips_rows for s in new)} clips in {len(new)} shard(s) are not in "
                                "the index (searched exactly until indexed)", f"vidsearch index --library {_q(root)}"))
    if meta.report.get("rebuild_suggested"):
        problems.append(Problem("index: many vectors were added since it was trained; a rebuild is faster",
                                f"vidsearch index --rebuild --library {_q(root)}"))
    return problems


def _index_needs_rebuild(library: Library, m: Manifest) -> bool:
    try:
        meta = read_meta(library)
    except IndexMissing:
        return False
    except IndexCorrupt:
        return True
    if stale_reasons(meta, m):
        return True
    try:
        loaded = load_index(library, m, meta=meta)
        for s in meta.shards:  # the vector cache is part of the index
            check_file(library, s.vectors_file, s.vectors_sha256)
            check_file(library, s.ids_file, s.ids_sha256)
    except (IndexCorrupt, IndexStale):
        return True
    del loaded
    return False


def repair(library: Library, cfg: IndexCfg | None = None,
           progress: Callable[[str], None] | None = None) -> RepairReport:
    """Repair what ``diagnose`` finds (writer: the caller holds ``library.lock()``).

    In order: remove temp files and unlisted shard files (``Library.recover``), set missing or
    corrupt shards aside (their videos become ``failed``/``ShardCorrupt``, re-embedded by the
    next ingest), rebuild the catalog if it is not current, then rebuild a corrupt or stale index
    (or add the shards it lacks). A suggested-but-optional index rebuild is left to
    ``vidsearch index --rebuild``.
    """
    say = progress or (lambda msg: _logger.info("%s", msg))
    report = RepairReport()
    catalog_was_current = library.catalog_is_current()
    report.removed = library.recover()
    report.quarantined = library.quarantine_bad_shards()  # refreshes the catalog when it drops shards
    m = library.read_manifest()
    if not library.catalog_is_current(m):
        say("rebuilding catalog.duckdb from the shards")
        library.refresh_catalog(m)
    report.catalog_rebuilt = not catalog_was_current
    if report.quarantined:
        report.reingest = reingest_command(library, _lost_video_paths(library), m.model.name if m.model else None)
    if m.model is not None and m.total_clips:
        rebuild = _index_needs_rebuild(library, m)
        report.index = update_index(library, cfg, rebuild=rebuild, progress=say)
    return report
