"""docs/RELIABILITY.md F9-F11, F13 for the index: corrupt, stale, extended and swapped indexes."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from vidsearch.indexer import IndexCorrupt, IndexStale, load_index, read_meta, update_index
from vidsearch.indexer.doctor import diagnose
from vidsearch.search import Searcher

_spec = importlib.util.spec_from_file_location("_synth", Path(__file__).parents[1] / "unit" / "conftest.py")
synth = importlib.util.module_from_spec(_spec)
sys.modules["_synth"] = synth
_spec.loader.exec_module(synth)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    s = synth.build_synthetic_library(tmp_path_factory.mktemp("faults") / "lib", 1500, seed=4)
    with s.lib.lock():
        update_index(s.lib)
    return s


@pytest.fixture
def s(built, tmp_path: Path):  # type: ignore[no-untyped-def]
    return synth.copy_synthetic(built, tmp_path / "lib")


def top(searcher: Searcher, s, i: int) -> list[int]:  # type: ignore[no-untyped-def]
    return [h.clip_id for h in searcher.search(vector=s.vectors[i], k=5, merge=False).hits]


def index_file(s) -> Path:  # type: ignore[no-untyped-def]
    return s.lib.index_dir / read_meta(s.lib).index_file


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_f9_corrupt_index_detected_before_faiss_and_rebuilt(s, damage: str) -> None:  # type: ignore[no-untyped-def]
    p = index_file(s)
    data = bytearray(p.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x10  # FAISS itself would load this silently
    p.write_bytes(bytes(data))
    with pytest.raises(IndexCorrupt, match="SHA-256"):
        load_index(s.lib)
    assert any("SHA-256" in pr.message and "doctor --fix" in pr.fix for pr in diagnose(s.lib))
    # A searcher only reads: it answers exactly from the shards, says how to repair, and
    # leaves the damaged index as it found it (docs/RELIABILITY.md: read commands do not write).
    before = p.read_bytes()
    with Searcher(s.lib, record_history=False) as searcher:
        assert searcher.index is None and top(searcher, s, 7)[0] == s.clip_ids[7]
        assert any("vidsearch index --rebuild" in w for w in searcher.warnings)
    assert p.read_bytes() == before and diagnose(s.lib)
    with s.lib.lock():  # the writer's repair
        update_index(s.lib, rebuild=True)
    load_index(s.lib)
    assert diagnose(s.lib) == []


def test_f9_corrupt_index_while_writer_holds_lock_falls_back_to_exact(s) -> None:  # type: ignore[no-untyped-def]
    with Searcher(s.lib, record_history=False) as good:
        expected = top(good, s, 11)
    p = index_file(s)
    p.write_bytes(p.read_bytes()[:100])
    with s.lib.lock():  # a writer (ingest) holds the library: no rebuild, exact search instead
        with Searcher(s.lib, record_history=False) as searcher:
            assert searcher.index is None
            assert any("vidsearch index --rebuild" in w for w in searcher.warnings)
            assert top(searcher, s, 11) == expected
        report = update_index(s.lib)  # the writer's own update repairs it
    assert report.action == "rebuilt" and report.vectors == s.n


def test_corrupt_vector_cache_detected(s) -> None:  # type: ignore[no-untyped-def]
    meta = read_meta(s.lib)
    p = s.lib.index_dir / meta.shards[0].vectors_file
    data = bytearray(p.read_bytes())
    data[-5] ^= 0xFF
    p.write_bytes(bytes(data))
    idx = load_index(s.lib)
    with pytest.raises(IndexCorrupt, match="SHA-256"):
        idx.vectors.vectors(meta.shards[0].shard_id)
    assert diagnose(s.lib)


@pytest.mark.parametrize("when", ["at check", "at query"])
@pytest.mark.parametrize("writer", [False, True])
def test_corrupt_vector_cache_found_by_a_searcher_is_searched_exactly(s, when: str, writer: bool) -> None:  # type: ignore[no-untyped-def]
    """A vector-cache file altered after the index was loaded: found when the server checks the
    cache at start, or when a filtered query first reads it. With or without a writer, the
    searcher answers exactly from the shards, says how to repair, and repairs nothing."""
    from vidsearch.search import Filters

    meta = read_meta(s.lib)
    f = Filters(where="clips.clip_index % 7 = 0")  # a small subset: exact scoring from the cache
    with Searcher(s.lib, record_history=False) as good:
        expected = [h.clip_id for h in good.search(vector=s.vectors[3], k=5, filters=f, merge=False).hits]
    with contextlib.ExitStack() as stack:
        if writer:
            stack.enter_context(s.lib.lock())
        searcher = stack.enter_context(Searcher(s.lib, record_history=False))
        assert searcher.index is not None
        p = s.lib.index_dir / meta.shards[0].vectors_file
        data = bytearray(p.read_bytes())
        data[-5] ^= 0xFF
        p.write_bytes(bytes(data))
        if when == "at check":
            searcher.check_vector_cache()
        res = searcher.search(vector=s.vectors[3], k=5, filters=f, merge=False)
        assert [h.clip_id for h in res.hits] == expected
        assert searcher.index is None and any("SHA-256" in w and "--rebuild" in w for w in res.warnings)
        assert res.strategy == "exact-subset"
    assert p.read_bytes() == bytes(data) and diagnose(s.lib)  # left for `vidsearch index --rebuild`


def test_shard_added_after_indexing_is_searched_not_dropped(s) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(9)
    v = rng.standard_normal((6, s.dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    video = dict(s.videos[0], video_id="e" * 32, path="/media/late/new.mp4", num_clips=6)
    clips, vids, new_ids = synth.make_shard_tables([video], [6], [v], synth.SYNTH_FINGERPRINT, s.dim)
    with s.lib.lock():
        s.lib.commit(clips, vids, run_id="run-2")  # ingest stopped before updating the index
    assert any("not in the index" in pr.message for pr in diagnose(s.lib))
    with Searcher(s.lib, record_history=False) as searcher:
        res = searcher.search(vector=v[2], k=3, merge=False)
        assert res.hits[0].clip_id == new_ids[2] and res.strategy.endswith("+exact-new")
        assert searcher.warnings
    with s.lib.lock():
        assert update_index(s.lib).action == "extended"
    with Searcher(s.lib, record_history=False) as searcher:
        res = searcher.search(vector=v[2], k=3, merge=False)
        assert res.hits[0].clip_id == new_ids[2] and res.strategy == "ann"


def test_index_built_for_another_model_is_stale(s, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    other = synth.build_synthetic_library(tmp_path / "other", 300, seed=5, fingerprint="other-model-fp")
    with other.lib.lock():
        update_index(other.lib)
    # Put the other library's index (another embedding space) into this library.
    import shutil

    shutil.rmtree(s.lib.index_dir)
    shutil.copytree(other.lib.index_dir, s.lib.index_dir)
    with pytest.raises(IndexStale, match="other-model-fp"):
        load_index(s.lib)
    assert any("index:" in pr.message for pr in diagnose(s.lib))
    with s.lib.lock():
        report = update_index(s.lib)
    assert report.action == "rebuilt" and report.vectors == s.n
    assert read_meta(s.lib).model_fingerprint == synth.SYNTH_FINGERPRINT


def test_f11_index_covers_shard_the_manifest_lacks(s) -> None:  # type: ignore[no-untyped-def]
    import json
    from dataclasses import replace

    m = s.lib.read_manifest()
    dropped = m.shards[-1]
    m2 = replace(m, shards=m.shards[:-1], generation=m.generation + 1)
    s.lib.manifest_path.write_text(m2.to_json())
    with pytest.raises(IndexStale, match=f"shard {dropped.shard_id}"):
        load_index(s.lib)
    assert json.loads((s.lib.index_dir / "index.json").read_text())["n"] == s.n


def test_f13_swap_while_searcher_holds_old_index(s) -> None:  # type: ignore[no-untyped-def]
    with Searcher(s.lib, record_history=False) as searcher:
        before = top(searcher, s, 3)
        old_file = index_file(s)
        with s.lib.lock():
            update_index(s.lib, rebuild=True)  # new file, old one deleted
        assert not old_file.exists()
        assert top(searcher, s, 3) == before  # the loaded copy keeps working


# --------------------------------------------------------------------------- S2: crafted index files
def _install(s, index, **meta_changes) -> Path:  # type: ignore[no-untyped-def]
    """Put ``index`` into the library as a crafted index, with index.json and its SHA-256 updated."""
    import hashlib
    import uuid
    from dataclasses import replace

    import faiss

    from vidsearch.indexer.store import write_meta

    name = f"faiss-{uuid.uuid4().hex[:16]}.index"
    p = s.lib.index_dir / name
    faiss.write_index(index, str(p))
    data = p.read_bytes()
    meta = replace(read_meta(s.lib), index_file=name, index_sha256=hashlib.sha256(data).hexdigest(),
                   index_bytes=len(data), n=int(index.ntotal), **meta_changes)
    write_meta(s.lib, meta)
    return p


def _exact_top(s, i: int, k: int = 5) -> list[int]:  # type: ignore[no-untyped-def]
    scores = s.vectors @ s.vectors[i]
    order = np.lexsort((s.clip_ids, -scores))[:k]
    return [int(c) for c in s.clip_ids[order]]


def _state(p: Path) -> tuple[int, int, bytes]:
    st = p.stat()
    return st.st_size, st.st_mtime_ns, p.read_bytes()


def _mapped_or_open(p: Path) -> bool:
    """Whether this process maps or holds open ``p`` (OnDiskInvertedLists mmaps its file)."""
    import os

    target = str(p.resolve())
    maps = Path("/proc/self/maps").read_text()
    fds = [os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")]
    return target in maps or target in fds


@pytest.mark.parametrize("wrapped", [True, False], ids=["IDMap2(IVFFlat)", "IVFFlat"])
def test_s2_on_disk_inverted_lists_pointing_outside_are_refused(s, tmp_path: Path, wrapped: bool) -> None:  # type: ignore[no-untyped-def]
    """The reproduction: IDMap2(IVFFlat) whose lists are OnDiskInvertedLists in a file outside the
    library (and the same IVF without the wrapper, the layout vidsearch builds, so the refusal is
    the lists' own). FAISS would map that file read-write (SIGBUS in search, growth at the next
    ingest); vidsearch refuses the structure before FAISS opens anything, searches exactly with a
    warning, and a writer rebuilds the index without touching the outside file."""
    import faiss

    outside = tmp_path / "outside" / "lists.ondisk"
    outside.parent.mkdir()
    quantizer = faiss.IndexFlatIP(s.dim)
    ivf = faiss.IndexIVFFlat(quantizer, s.dim, 8, faiss.METRIC_INNER_PRODUCT)
    ivf.train(s.vectors)
    crafted = faiss.IndexIDMap2(ivf) if wrapped else ivf
    crafted.add_with_ids(s.vectors, s.clip_ids)
    # Move the lists to a file outside the library (as faiss demos/demo_ondisk_ivf.py does).
    ondisk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(outside))
    lists = faiss.InvertedListsPtrVector()
    lists.push_back(ivf.invlists)
    ondisk.merge_from_multiple(lists.data(), lists.size())
    ivf.replace_invlists(ondisk, False)
    p = _install(s, crafted)
    del crafted, ivf, ondisk, lists, quantizer  # unmaps the outside file in this process
    before = _state(outside)
    assert not _mapped_or_open(outside)

    refused = "ID map around 'IwFl'" if wrapped else "'ilod'"
    with pytest.raises(IndexCorrupt, match=refused):
        load_index(s.lib)
    assert not _mapped_or_open(outside) and _state(outside) == before
    assert any(refused in pr.message for pr in diagnose(s.lib))

    with s.lib.lock():  # as during an ingest: the searcher cannot repair, it answers exactly
        with Searcher(s.lib, record_history=False) as searcher:
            assert searcher.index is None
            assert any(refused in w for w in searcher.warnings)
            assert top(searcher, s, 11) == _exact_top(s, 11)
        assert not _mapped_or_open(outside) and _state(outside) == before
        report = update_index(s.lib)  # the writer (ingest, index) rebuilds it from the shards
    assert report.action == "rebuilt" and report.vectors == s.n
    assert not p.exists() and _state(outside) == before and not _mapped_or_open(outside)
    load_index(s.lib)


def _hnsw_raw(s):  # type: ignore[no-untyped-def]
    import faiss

    index = faiss.IndexHNSWFlat(s.dim, 8, faiss.METRIC_INNER_PRODUCT)
    index.add(s.vectors)
    return index


def _lsh(s):  # type: ignore[no-untyped-def]
    import faiss

    index = faiss.IndexIDMap2(faiss.IndexLSH(s.dim, 64))
    index.add_with_ids(s.vectors, s.clip_ids)
    return index


def _factory(spec: str, metric: int | None = None):  # type: ignore[no-untyped-def]
    def make(s):  # type: ignore[no-untyped-def]
        import faiss

        index = faiss.index_factory(s.dim, spec, faiss.METRIC_INNER_PRODUCT if metric is None else metric)
        index.train(s.vectors)
        if faiss.try_extract_index_ivf(index) is None and not isinstance(index, faiss.IndexIDMap):
            index = faiss.IndexIDMap2(index)
        index.add_with_ids(s.vectors, s.clip_ids)
        return index
    return make


def _wrong_dim(s):  # type: ignore[no-untyped-def]
    import faiss

    index = faiss.IndexIDMap2(faiss.IndexFlatIP(s.dim // 2))
    index.add_with_ids(np.ascontiguousarray(s.vectors[:, : s.dim // 2]), s.clip_ids)
    return index


@pytest.mark.parametrize("make, refused", [
    (_hnsw_raw, "IHNf"),                                # HNSW without the ID map vidsearch adds
    (_lsh, "IxHe|metric 1"),                            # LSH (an L2 index) inside an ID map
    (_factory("IDMap,Flat"), "IxMp"),                   # IDMap (vidsearch writes IDMap2)
    (_factory("IVF16,SQ8"), "IwSq"),                    # an IVF kind vidsearch does not build
    (_factory("PCA16,IVF16,Flat"), "IxPT"),             # a pre-transform chain
    (_factory("IVF16_HNSW8,Flat"), "IHNf"),             # an HNSW coarse quantizer
    (_factory("IVF16,Flat", metric=1), "metric 1"),     # L2 instead of inner product
    (_wrong_dim, "dimension 16"),                       # another dimension than index.json
])
def test_s2_index_structures_vidsearch_does_not_build_are_refused(s, make, refused: str) -> None:  # type: ignore[no-untyped-def]
    _install(s, make(s))
    with pytest.raises(IndexCorrupt, match=refused):
        load_index(s.lib)
    with s.lib.lock(), Searcher(s.lib, record_history=False) as searcher:
        assert searcher.index is None and searcher.warnings
        assert top(searcher, s, 4) == _exact_top(s, 4)
    with s.lib.lock():
        assert update_index(s.lib).action == "rebuilt"
    load_index(s.lib)


@pytest.mark.parametrize("damage, refused", [
    ("header", "truncated"), ("size field", "run past the end"), ("hnsw neighbour", "neighbour ids out of range"),
    ("trailing", "unexpected bytes"),
])
def test_s2_crafted_bytes_of_an_accepted_structure_are_refused(s, damage: str, refused: str) -> None:  # type: ignore[no-untyped-def]
    """Bytes that would pass the SHA-256 (index.json updated with them) but not the walk."""
    import faiss

    index = faiss.IndexIDMap2(faiss.IndexHNSWFlat(s.dim, 8, faiss.METRIC_INNER_PRODUCT))
    index.add_with_ids(s.vectors, s.clip_ids)
    data = bytearray(faiss.serialize_index(index).tobytes())
    if damage == "header":
        data = data[:20]                                # truncated inside the first header
    elif damage == "size field":
        data[37 + 37:37 + 37 + 8] = (1 << 50).to_bytes(8, "little")  # assign_probas count: huge
    elif damage == "hnsw neighbour":
        # A neighbour id past the graph: FAISS would read memory at that offset while searching.
        hnsw = faiss.downcast_index(index.index).hnsw
        nb = faiss.vector_to_array(hnsw.neighbors)
        nb[np.flatnonzero(nb >= 0)[5]] = s.n + 1000
        faiss.copy_array_to_vector(nb, hnsw.neighbors)
        data = bytearray(faiss.serialize_index(index).tobytes())
    else:
        data += b"\0" * 8
    p = _install(s, faiss.IndexIDMap2(faiss.IndexHNSWFlat(s.dim, 8, faiss.METRIC_INNER_PRODUCT)))
    p.write_bytes(bytes(data))
    _install_bytes(s, p, bytes(data))
    with pytest.raises(IndexCorrupt, match=refused):
        load_index(s.lib)


def _install_bytes(s, p: Path, data: bytes) -> None:  # type: ignore[no-untyped-def]
    import hashlib
    from dataclasses import replace

    from vidsearch.indexer.store import write_meta

    write_meta(s.lib, replace(read_meta(s.lib), index_sha256=hashlib.sha256(data).hexdigest(), index_bytes=len(data)))


@pytest.mark.parametrize("field, value", [
    ("index_file", "../../outside.index"),
    ("index_file", "/etc/hostname"),
    ("vectors_file", "../../../outside.npy"),
    ("dim", "32"),
    ("n", -1),
    ("search_params", {"nprobe": "all"}),
    ("shards", "everything"),
])
def test_s2_index_json_names_and_types_are_checked(s, field: str, value: object) -> None:  # type: ignore[no-untyped-def]
    """index.json is untrusted: no name in it can reach outside index/, every value is typed."""
    import json

    from vidsearch.indexer.store import meta_path

    raw = json.loads(meta_path(s.lib).read_text())
    if field == "vectors_file":
        raw["shards"][0]["vectors_file"] = value
    else:
        raw[field] = value
    meta_path(s.lib).write_text(json.dumps(raw))
    with pytest.raises(IndexCorrupt, match="index metadata"):
        read_meta(s.lib)
    with pytest.raises(IndexCorrupt):
        load_index(s.lib)


def test_s2_symlinked_index_file_is_refused(s, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p = index_file(s)
    outside = tmp_path / "outside.index"
    p.rename(outside)
    p.symlink_to(outside)
    with pytest.raises(IndexCorrupt, match="symbolic link"):
        load_index(s.lib)


def test_s2_factories_that_build_other_structures_are_refused_at_build(s) -> None:  # type: ignore[no-untyped-def]
    from vidsearch.library import LibraryError
    from vidsearch.schemas.config import IndexCfg

    with s.lib.lock():
        with pytest.raises(LibraryError, match="does not load"):
            update_index(s.lib, IndexCfg(factory="PCA16,IVF16,Flat"), rebuild=True)
        assert update_index(s.lib, IndexCfg(factory="IVF16,PQ8"), rebuild=True).kind == "ivf_pq"
    load_index(s.lib)
