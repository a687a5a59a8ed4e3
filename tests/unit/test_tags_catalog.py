"""`vidsearch tag` on a library: committed tag rows, the catalog's `tags` view, reruns, new clips,
new label sets, replaced videos, every way a reader builds the catalog, the label cache.

Synthetic libraries (real shards and catalog) in the tiny test model's embedding space, tagged
with the tiny model's real text tower: the rows are compared with an independent computation of
the same scores from the shards' embeddings.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SyntheticLibrary, make_shard_tables

from vidsearch.cli import main
from vidsearch.library import Library
from vidsearch.schemas.tables import VIDEO_SCHEMA, clip_schema
from vidsearch.search import tagging
from vidsearch.search.tagging import make_tagger, tag_library
from vidsearch.search.tags import ZeroShotTagger

LABELS = ["a dog", "a cat", "snow", "a beach", "a car", "cooking", "dancing", "a city at night"]
OTHER = ["a red circle", "a blue square", "rain", "a crowd"]


@pytest.fixture(scope="module")
def tiny_fingerprint() -> str:
    from vidsearch.models import create_model

    return create_model("internvideo2-tiny").fingerprint


@pytest.fixture
def tiny_library(synthetic_library_factory, tiny_fingerprint: str) -> SyntheticLibrary:  # type: ignore[no-untyped-def]
    return synthetic_library_factory(300, fingerprint=tiny_fingerprint, model_name="internvideo2-tiny", seed=5,
                                     max_clips_per_video=12)


def _tags(lib: Library) -> set[tuple[int, str, str, int]]:
    with lib.open_catalog_readonly() as r:
        rows = r.con.execute("SELECT clip_id, video_id, label, rank FROM tags").fetchall()
    return {(int(c), str(v), str(label), int(k)) for c, v, label, k in rows}


def _expected(lib: Library, labels: list[str], top_k: int) -> set[tuple[int, str, str, int]]:
    """The same scores computed independently: the tiny text tower + the shards' embeddings."""
    m = lib.read_manifest()
    assert m.model is not None
    tagger, _ = make_tagger(m.model, labels)
    out = set()
    for s in m.shards:
        if not s.clips_rows:
            continue
        t = pq.read_table(lib.root / s.clips_file)
        emb = np.asarray(t.column("embedding").combine_chunks().flatten(), np.float32).reshape(t.num_rows, -1)
        scores = tagger.scores(emb)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
        for cid, vid, row in zip(t.column("clip_id").to_pylist(), t.column("video_id").to_pylist(), order,
                                 strict=True):
            out |= {(cid, vid, labels[j], k + 1) for k, j in enumerate(row)}
    return out


def _add_video(s: SyntheticLibrary, n: int, index: int) -> None:
    """Commit one more video of ``n`` clips (a later ingest)."""
    m = s.lib.read_manifest()
    assert m.model is not None
    rng = np.random.default_rng(index)
    v = rng.standard_normal((n, s.dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    row = dict(s.videos[0], video_id=f"new{index:029d}", path=f"/media/new/v{index}.mp4",
               path_bytes=f"/media/new/v{index}.mp4".encode(), num_clips=n, duration_s=4.0 * n)
    clips, vids, _ = make_shard_tables([row], [n], [v], m.model.fingerprint, s.dim)
    with s.lib.lock():
        s.lib.commit(clips, vids, run_id=f"run-new-{index}")


def test_tag_rows_rerun_new_clips_and_a_new_label_set(tiny_library: SyntheticLibrary) -> None:
    lib = tiny_library.lib
    rep = tag_library(lib, LABELS, source="labels.txt", top_k=3, clips_per_commit=100)
    n = tiny_library.n
    assert (rep.clips_tagged, rep.rows, rep.replaced) == (n, 3 * n, None) and rep.commits >= 2
    assert _tags(lib) == _expected(lib, LABELS, 3)
    with lib.open_catalog_readonly() as r:
        ranks = r.con.execute("SELECT list(score ORDER BY rank) FROM tags GROUP BY clip_id").fetchall()
        (sets,) = r.con.execute("SELECT count(DISTINCT tagset) FROM tag_sets").fetchone() or (0,)
    assert len(ranks) == n and sets == 1
    assert all(0 < s[-1] <= s[0] <= 1 and s == sorted(s, reverse=True) for (s,) in ranks)
    # Nothing to do the second time: no commit at all.
    shards = len(lib.read_manifest().shards)
    again = tag_library(lib, LABELS, source="labels.txt", top_k=3)
    assert (again.clips_tagged, again.commits, again.clips_already) == (0, 0, n) and again.embeddings_cached
    assert len(lib.read_manifest().shards) == shards
    # New clips: only they are tagged.
    _add_video(tiny_library, 7, 1)
    more = tag_library(lib, LABELS, source="labels.txt", top_k=3)
    assert (more.clips_tagged, more.clips_already) == (7, n)
    assert _tags(lib) == _expected(lib, LABELS, 3)
    # Another label set (or another --top) replaces the tags.
    new = tag_library(lib, OTHER, source="other.txt", top_k=2)
    assert new.replaced == rep.tagset and new.clips_tagged == n + 7
    assert _tags(lib) == _expected(lib, OTHER, 2)
    with duckdb.connect(str(lib.catalog_path), read_only=True) as con:  # the writer's cache keeps one set
        assert con.execute("SELECT DISTINCT tagset FROM tag_rows").fetchall() == [(new.tagset,)]
    top = tag_library(lib, OTHER, source="other.txt", top_k=1)
    assert top.replaced == new.tagset and len(_tags(lib)) == n + 7


def test_interrupted_run_resumes_where_it_stopped(tiny_library: SyntheticLibrary,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    lib = tiny_library.lib
    real = Library.commit
    calls = {"n": 0}

    def flaky(self: Library, *a: object, **kw: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed after one tagging commit
        return real(self, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Library, "commit", flaky)
    with pytest.raises(KeyboardInterrupt):
        tag_library(lib, LABELS, source="labels.txt", top_k=2, clips_per_commit=1)
    monkeypatch.setattr(Library, "commit", real)
    first = len(_tags(lib)) // 2
    assert 0 < first < tiny_library.n  # the first commit is kept and visible
    rep = tag_library(lib, LABELS, source="labels.txt", top_k=2, clips_per_commit=1)
    assert rep.clips_tagged == tiny_library.n - first and rep.clips_already == first
    assert _tags(lib) == _expected(lib, LABELS, 2)


def test_tags_of_replaced_videos_disappear(tiny_library: SyntheticLibrary) -> None:
    lib = tiny_library.lib
    tag_library(lib, LABELS, source="labels.txt", top_k=2)
    gone = tiny_library.videos[1]
    row = dict(gone, status="replaced", run_id="run-2", ingested_at=dt.datetime(2025, 2, 1, tzinfo=dt.UTC))
    m = lib.read_manifest()
    assert m.model is not None
    with lib.lock():  # what ingest commits when new content appears at the video's path
        lib.commit(clip_schema(m.model.embed_dim).empty_table(), pa.Table.from_pylist([row], schema=VIDEO_SCHEMA),
                   run_id="run-2")
    tags = _tags(lib)
    assert tags and gone["video_id"] not in {v for _, v, _, _ in tags}
    assert {v for _, v, _, _ in _expected(lib, LABELS, 2)} - {v for _, v, _, _ in tags} == {gone["video_id"]}
    # the rows are kept (the video may come back); only the view leaves them out
    with lib.open_catalog_readonly() as r:
        assert r.con.execute("SELECT count(*) FROM tag_rows WHERE video_id = ?", [gone["video_id"]]).fetchone()[0] > 0


def test_every_catalog_path_shows_the_same_tags(tiny_library: SyntheticLibrary, tmp_path: Path) -> None:
    """Catalog current, catalog behind the manifest (a newer label set committed after it), no
    catalog at all, and a catalog from before the tag tables existed: the same `tags`."""
    lib = tiny_library.lib
    tag_library(lib, LABELS, source="labels.txt", top_k=2)
    current = _tags(lib)
    assert current == _expected(lib, LABELS, 2)
    # A new label set committed without a catalog refresh (a writer killed before it): readers lay
    # the newer shards over the old catalog, and the new set replaces the old one there too.
    m = lib.read_manifest()
    assert m.model is not None
    tagger, _ = make_tagger(m.model, OTHER)
    orig_commit = Library.commit

    def no_refresh(self: Library, *a: object, **kw: object) -> object:
        kw["refresh_catalog"] = False
        return orig_commit(self, *a, **kw)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Library, "commit", no_refresh)
        mp.setattr(Library, "refresh_catalog", lambda self, m=None: None)
        tag_library(lib, OTHER, source="other.txt", top_k=2)
    assert not lib.catalog_is_current()
    with lib.open_catalog_readonly() as r:
        assert r.load.source == "catalog+shards"
        lagging = {(int(c), str(v), str(la), int(k)) for c, v, la, k in
                   r.con.execute("SELECT clip_id, video_id, label, rank FROM tags").fetchall()}
    assert lagging == _expected(lib, OTHER, 2)
    # No catalog: everything from the shards.
    lib.catalog_path.rename(tmp_path / "catalog.duckdb")
    with lib.open_catalog_readonly() as r:
        assert r.load.source == "shards"
    assert _tags(lib) == lagging
    # A writer rebuilds it; a catalog of an older vidsearch (no tag tables) is rebuilt from scratch.
    with lib.lock():
        lib.refresh_catalog()
    with duckdb.connect(str(lib.catalog_path)) as con:
        con.execute("DROP TABLE tag_rows")
        con.execute("DROP TABLE tag_sets")
    assert not lib.catalog_is_current()
    with lib.open_catalog_readonly() as r:
        assert r.load.source == "shards"  # readers do not trust tables that are not this version's
    assert _tags(lib) == lagging
    with lib.lock():
        assert lib.refresh_catalog().shards_added == len(lib.read_manifest().shards)
    assert lib.catalog_is_current()
    with lib.open_catalog_readonly() as r:
        assert r.load.source == "catalog"
    assert _tags(lib) == lagging


def test_label_embeddings_are_cached_and_checked(tiny_library: SyntheticLibrary, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    m = tiny_library.lib.read_manifest()
    assert m.model is not None
    first, cached = make_tagger(m.model, LABELS)
    assert not cached
    files = list((tmp_path / "cache" / "label-embeddings").glob("*.npy"))
    assert [f.name for f in files] == [f"{first.fingerprint}.npy"]
    again, cached = make_tagger(m.model, LABELS)
    assert cached and np.array_equal(again.embeddings, first.embeddings)
    for bad in (b"not a numpy file", None):
        if bad is None:  # a well-formed file of the wrong shape
            np.save(files[0], np.ones((3, 2), np.float32))
        else:
            files[0].write_bytes(bad)
        redo, cached = make_tagger(m.model, LABELS)
        assert not cached and np.allclose(redo.embeddings, first.embeddings)
    # the cache is keyed by labels, prompts and model: another prompt set is another file
    make_tagger(m.model, LABELS, templates=("a video of {}.",))
    assert len(list((tmp_path / "cache" / "label-embeddings").glob("*.npy"))) == 2
    assert isinstance(first, ZeroShotTagger)


def test_tag_command_and_sql(tiny_library: SyntheticLibrary, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    lib = str(tiny_library.lib.root)
    labels = tmp_path / "labels.txt"
    labels.write_text("# my labels\n" + "\n".join(LABELS) + "\n\n", encoding="utf-8")
    assert main(["-q", "tag", "--library", lib, "--labels", str(labels), "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert f"tagged    {tiny_library.n} clips: {2 * tiny_library.n} tags" in out
    assert main(["sql", "SELECT label, count(DISTINCT video_id) FROM tags GROUP BY 1 ORDER BY 2 DESC", "--library",
                 lib, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and {r["label"] for r in rows} <= set(LABELS)
    assert main(["-q", "tag", "--library", lib, "--labels", str(labels), "--top", "2"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(["sql", "SELECT labels, n_labels, top_k FROM tag_sets", "--library", lib, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0] == {"labels": str(labels), "n_labels": len(LABELS), "top_k": 2}
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"a dog\n\xff\xfe\n")
    for argv, words in ((["--labels", str(bad)], "not UTF-8"), (["--labels", "nope"], "not a builtin list"),
                        (["--labels", str(labels), "--min-score", "2"], "between 0 and 1"),
                        (["--labels", str(labels), "--template", "a video"], "{}")):
        assert main(["tag", "--library", lib, *argv]) == 1
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, err


def test_tag_is_a_writer(tiny_library: SyntheticLibrary, capsys: pytest.CaptureFixture[str]) -> None:
    lib = tiny_library.lib
    with lib.lock():  # another writer (an ingest) holds the library
        assert main(["tag", "--library", str(lib.root), "--labels", "kinetics400"]) == 1
    assert "lock" in capsys.readouterr().err.lower()
    assert not _tags(lib)
    assert tagging.CLIPS_PER_COMMIT >= 10_000
