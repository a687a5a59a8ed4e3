"""Accept only the FAISS structures vidsearch builds, before FAISS reads a byte (RELIABILITY S2).

A FAISS file is a tree of objects, each introduced by a four-character code (fourcc) and read
by ``faiss.read_index`` with no questions asked: ``OnDiskInvertedLists`` (fourcc ``ilod``) names
another file, which FAISS maps read-write (a crafted index made search die of SIGBUS and the next
ingest grew a file outside the library), an HNSW graph's neighbour ids are used as memory offsets,
and a size field is an allocation. So the serialized bytes are walked here first, against the
layouts of ``faiss/impl/index_write.cpp``, and only these trees are accepted::

    IxM2 (IndexIDMap2) -> IxFI (IndexFlatIP)                        "IDMap2,Flat"
    IxM2 (IndexIDMap2) -> IHNf (IndexHNSWFlat) -> IxFI (storage)    "IDMap2,HNSW<M>,Flat"
    IwFl (IndexIVFFlat), quantizer IxFI, lists ilar                 "IVF<n>,Flat"
    IwPQ (IndexIVFPQ),   quantizer IxFI, lists ilar                 "IVF<n>,PQ<m>[x<bits>]"

every index of them inner-product, of the library's dimension, with consistent counts; an
``ilar`` (in-memory) inverted list whose sizes add up to ``ntotal``; HNSW neighbours inside the
graph; no byte left over. Anything else (another fourcc, an on-disk or custom inverted list, a
truncated header, a wrong dimension) raises :class:`UnsupportedIndex`, which readers treat like a
corrupt index (exact search with a warning) and writers rebuild.

:func:`read_checked_index` then hands FAISS the same open file (no path: nothing is looked up
again, and a symbolic link is refused), with ``IO_FLAG_READ_ONLY``, and checks the loaded types.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = ["UnsupportedIndex", "IndexShape", "check_structure", "read_checked_index", "ACCEPTED_FAMILIES"]

ACCEPTED_FAMILIES = ("Flat", "HNSW<M>[,Flat]", "IVF<nlist>,Flat", "IVF<nlist>,PQ<m>[x<nbits>]")

_METRIC_INNER_PRODUCT = 0
_MAX_DIM = 1 << 16
_MAX_COUNT = 1 << 40  # no vector in a vidsearch index has this many elements


class UnsupportedIndex(ValueError):
    """The bytes are not one of the FAISS structures vidsearch builds (see the module docstring)."""


@dataclass(frozen=True)
class IndexShape:
    """What the walk found: the structure's family and its sizes."""

    family: str            # "flat" / "hnsw" / "ivf_flat" / "ivf_pq"
    d: int
    ntotal: int
    nlist: int = 0


class _Bytes:
    """Little-endian reads from a seekable binary file of known size; every read is bounded."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f = f
        self.size = size
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise UnsupportedIndex(f"truncated: {what} needs {n} bytes at offset {self.pos}, the file has {self.size}")
        data = self.f.read(n)
        if len(data) != n:
            raise UnsupportedIndex(f"short read of {what} at offset {self.pos}")
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise UnsupportedIndex(f"truncated: {what} needs {n} bytes at offset {self.pos}, the file has {self.size}")
        self.pos += n
        self.f.seek(self.pos)

    def fourcc(self) -> str:
        raw = self.take(4, "a type code")
        return raw.decode("latin-1")

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def i32(self, what: str) -> int:
        return int(struct.unpack("<i", self.take(4, what))[0])

    def i64(self, what: str) -> int:
        return int(struct.unpack("<q", self.take(8, what))[0])

    def u64(self, what: str) -> int:
        return int(struct.unpack("<Q", self.take(8, what))[0])

    def count(self, itemsize: int, what: str) -> int:
        """A FAISS vector's element count, checked against the bytes that remain."""
        n = self.u64(f"{what} size")
        if n > _MAX_COUNT or self.pos + n * itemsize > self.size:
            raise UnsupportedIndex(f"{what}: {n} elements of {itemsize} bytes run past the end of the file")
        return n

    def skip_vector(self, itemsize: int, what: str) -> int:
        n = self.count(itemsize, what)
        self.skip(n * itemsize, what)
        return n

    def array(self, dtype: str, what: str) -> np.ndarray:
        dt = np.dtype(dtype)
        n = self.count(dt.itemsize, what)
        return np.frombuffer(self.take(n * dt.itemsize, what), dtype=dt)


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise UnsupportedIndex(message)


def _header(b: _Bytes, d: int, what: str) -> tuple[int, bool]:
    """``write_index_header``: d, ntotal, two unused int64, is_trained, metric (+ arg if > 1)."""
    got_d = b.i32(f"{what} dimension")
    ntotal = b.i64(f"{what} ntotal")
    b.skip(16, f"{what} header")
    trained = b.u8(f"{what} is_trained")
    metric = b.i32(f"{what} metric")
    _need(got_d == d, f"{what} has dimension {got_d}, the library {d}")
    _need(0 <= ntotal <= _MAX_COUNT, f"{what} claims {ntotal} vectors")
    _need(trained in (0, 1), f"{what}: is_trained byte {trained}")
    _need(metric == _METRIC_INNER_PRODUCT, f"{what} uses metric {metric}, not inner product")
    return ntotal, bool(trained)


def _flat_ip(b: _Bytes, d: int, what: str) -> int:
    """``IxFI``: header + the vectors (a float vector whose length is given in 4-float units)."""
    code = b.fourcc()
    _need(code == "IxFI", f"{what} is {code!r}, expected an inner-product flat index (IxFI)")
    ntotal, _ = _header(b, d, what)
    floats = b.count(4, f"{what} vectors")  # WRITEXBVECTOR: code bytes / 4, then the bytes
    _need(floats == ntotal * d, f"{what}: {floats} floats stored for {ntotal} vectors of dim {d}")
    b.skip(floats * 4, f"{what} vectors")
    return ntotal


def _hnsw_flat(b: _Bytes, d: int) -> int:
    """``IHNf``: header, the HNSW graph (every neighbour checked), then an ``IxFI`` storage."""
    ntotal, _ = _header(b, d, "HNSW index")
    probas = b.array("<f8", "HNSW assign_probas")
    cum = b.array("<i4", "HNSW cum_nneighbor_per_level")
    levels = b.array("<i4", "HNSW levels")
    offsets = b.array("<u8", "HNSW offsets")
    neighbors = b.array("<i4", "HNSW neighbors")
    entry = b.i32("HNSW entry point")
    max_level = b.i32("HNSW max level")
    b.skip(12, "HNSW search settings")  # efConstruction, efSearch, a deprecated int
    n_levels = len(cum) - 1
    _need(len(probas) == n_levels and n_levels >= 1, "HNSW level tables disagree")
    _need(bool(np.all(np.diff(cum) >= 0)) and int(cum[0]) == 0, "HNSW neighbour counts are not cumulative")
    _need(len(levels) == ntotal and len(offsets) == ntotal + 1, "HNSW tables do not match ntotal")
    if ntotal:
        _need(int(levels.min()) >= 1 and int(levels.max()) <= n_levels, "HNSW node levels out of range")
        _need(int(offsets[0]) == 0, "HNSW offsets do not start at 0")
        _need(np.array_equal(np.diff(offsets).astype(np.int64), cum[levels].astype(np.int64)),
              "HNSW offsets do not match the node levels")
        _need(int(offsets[-1]) == len(neighbors), "HNSW neighbour table has the wrong size")
        _need(0 <= entry < ntotal and max_level == int(levels.max()) - 1, "HNSW entry point out of range")
        _need(bool(np.all((neighbors >= -1) & (neighbors < ntotal))), "HNSW neighbour ids out of range")
    else:
        _need(len(neighbors) == 0 and entry == -1, "empty HNSW graph with nodes")
    stored = _flat_ip(b, d, "HNSW storage")
    _need(stored == ntotal, f"HNSW storage holds {stored} vectors, the graph {ntotal}")
    return ntotal


def _inverted_lists(b: _Bytes, nlist: int, code_size: int) -> int:
    """``ilar`` only (in memory): nlist, code_size, list sizes ("full" or "sprs"), then data."""
    code = b.fourcc()
    _need(code == "ilar", f"inverted lists of type {code!r} (only in-memory 'ilar' lists are accepted; "
                          "'ilod' would make FAISS open another file)")
    _need(b.u64("list count") == nlist, "inverted lists disagree with nlist")
    _need(b.u64("code size") == code_size, f"inverted lists code size is not {code_size}")
    kind = b.fourcc()
    if kind == "full":
        sizes = b.array("<u8", "list sizes")
        _need(len(sizes) == nlist, "list sizes do not match nlist")
    elif kind == "sprs":
        pairs = b.array("<u8", "sparse list sizes")
        _need(len(pairs) % 2 == 0, "sparse list sizes are not pairs")
        lists, sizes = pairs[0::2], pairs[1::2]
        _need(bool(np.all(lists < nlist)) and bool(np.all(np.diff(lists.astype(np.int64)) > 0)),
              "sparse list numbers out of order or range")
    else:
        raise UnsupportedIndex(f"inverted list layout {kind!r}")
    _need(bool(np.all(sizes <= _MAX_COUNT)), "inverted list size out of range")
    total = int(sizes.sum(dtype=np.uint64))
    b.skip(total * (code_size + 8), "inverted list codes and ids")  # codes then int64 ids, per list
    return total


def _ivf(b: _Bytes, d: int, family: str) -> tuple[int, int]:
    """``IwFl`` / ``IwPQ``: the IVF header, a flat IP quantizer, no direct map, ``ilar`` lists."""
    what = "IVF index"
    ntotal, trained = _header(b, d, what)
    nlist = b.u64("nlist")
    b.u64("nprobe")
    _need(1 <= nlist <= 1 << 24, f"nlist {nlist}")
    _need(trained or ntotal == 0, "an untrained IVF index holds vectors")
    centroids = _flat_ip(b, d, "IVF quantizer")
    _need(centroids == nlist or not trained, f"the quantizer holds {centroids} centroids for {nlist} lists")
    _need(b.u8("direct map type") == 0 and b.skip_vector(8, "direct map") == 0,
          "IVF index with a direct map (vidsearch builds none)")
    if family == "ivf_flat":
        code_size = 4 * d
    else:
        b.u8("by_residual")
        code_size = b.u64("PQ code size")
        pq_d, m, nbits = b.u64("PQ d"), b.u64("PQ M"), b.u64("PQ nbits")
        _need(pq_d == d and 1 <= m <= d and d % m == 0 and 1 <= nbits <= 16,
              f"PQ with d={pq_d}, M={m}, nbits={nbits}")
        _need(code_size == (m * nbits + 7) // 8, "PQ code size does not match M x nbits")
        n_centroids = b.count(4, "PQ centroids")
        _need(n_centroids == d * (1 << nbits), "PQ centroid table has the wrong size")
        b.skip(n_centroids * 4, "PQ centroids")
    listed = _inverted_lists(b, nlist, code_size)
    _need(listed == ntotal, f"inverted lists hold {listed} vectors, the index {ntotal}")
    return ntotal, nlist


def check_structure(f: BinaryIO, size: int, d: int) -> IndexShape:
    """Walk a serialized FAISS index from the start of ``f`` (``size`` bytes) without FAISS.

    Raises:
        UnsupportedIndex: anything but the accepted trees (module docstring), inconsistent
            counts, a truncated file or trailing bytes.
    """
    _need(1 <= d <= _MAX_DIM, f"dimension {d}")
    f.seek(0)
    b = _Bytes(f, size)
    top = b.fourcc()
    if top == "IxM2":
        ntotal, _ = _header(b, d, "ID map")
        inner = b.fourcc()
        b.pos -= 4
        b.f.seek(b.pos)
        if inner == "IxFI":
            family, stored, nlist = "flat", _flat_ip(b, d, "flat index"), 0
        elif inner == "IHNf":
            b.skip(4, "type code")
            family, stored, nlist = "hnsw", _hnsw_flat(b, d), 0
        else:
            raise UnsupportedIndex(f"ID map around {inner!r} (vidsearch wraps only IxFI or IHNf)")
        _need(stored == ntotal, f"the ID map holds {ntotal} vectors, its index {stored}")
        _need(b.skip_vector(8, "ID map") == ntotal, "the ID map has the wrong number of ids")
    elif top in ("IwFl", "IwPQ"):
        family = "ivf_flat" if top == "IwFl" else "ivf_pq"
        ntotal, nlist = _ivf(b, d, family)
    else:
        raise UnsupportedIndex(f"index type {top!r} is not one vidsearch builds ({', '.join(ACCEPTED_FAMILIES)})")
    _need(b.pos == size, f"{size - b.pos} unexpected bytes after the index")
    return IndexShape(family, d, ntotal, nlist)


def _check_loaded(index: Any, shape: IndexShape) -> None:
    """The types FAISS built must be the ones the walk accepted (belt and braces)."""
    import faiss

    def fail(what: str) -> UnsupportedIndex:
        return UnsupportedIndex(f"FAISS loaded {what}, not the accepted {shape.family} structure")

    if shape.family in ("flat", "hnsw"):
        if type(index) is not faiss.IndexIDMap2:
            raise fail(type(index).__name__)
        inner = faiss.downcast_index(index.index)
        inner_type: type = faiss.IndexFlatIP if shape.family == "flat" else faiss.IndexHNSWFlat
        if type(inner) is not inner_type:
            raise fail(f"an ID map around {type(inner).__name__}")
    else:
        top_type: type = faiss.IndexIVFFlat if shape.family == "ivf_flat" else faiss.IndexIVFPQ
        if type(index) is not top_type:
            raise fail(type(index).__name__)
        ivf: Any = index  # (the type test above narrowed ``index`` to ``object`` for mypy)
        if type(faiss.downcast_InvertedLists(ivf.invlists)) is not faiss.ArrayInvertedLists:
            raise fail("inverted lists that are not in memory")
        if type(faiss.downcast_index(ivf.quantizer)) is not faiss.IndexFlatIP:
            raise fail("a quantizer that is not IndexFlatIP")
    if index.d != shape.d or index.ntotal != shape.ntotal or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise fail(f"d={index.d} ntotal={index.ntotal} metric={index.metric_type}")


def read_checked_index(path: Path, d: int, sha256: str | None = None) -> tuple[Any, IndexShape]:
    """Open ``path`` once (no symbolic link), check its SHA-256 and structure, then let FAISS read it.

    FAISS reads from the already open file through a callback, never by path, and with
    ``IO_FLAG_READ_ONLY``; the structure check has already refused anything that would open
    another file. A file changed between the check and the read (vidsearch never writes an index
    in place) is caught by hashing the bytes FAISS consumed.

    Raises:
        FileNotFoundError: no such file.
        UnsupportedIndex: a symbolic link or not a regular file, another SHA-256 (message starts
            with "SHA-256"), or a structure vidsearch does not build.
    """
    import faiss

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsupportedIndex(f"{path} is a symbolic link; index files must be real files") from None
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UnsupportedIndex(f"{path} is not a regular file")
        if sha256 is not None and hashlib.file_digest(f, "sha256").hexdigest() != sha256:
            raise UnsupportedIndex("SHA-256 differs from index.json (truncated or corrupted)")
        shape = check_structure(f, st.st_size, d)
        f.seek(0)
        seen = hashlib.sha256()

        def feed(n: int) -> bytes:
            data = f.read(n)
            seen.update(data)
            return data

        reader = faiss.PyCallbackIOReader(feed)  # type: ignore[attr-defined]  # not in faiss's stub
        try:
            index = faiss.read_index(reader, faiss.IO_FLAG_READ_ONLY)
        except RuntimeError as e:
            raise UnsupportedIndex(f"FAISS cannot read it ({str(e).splitlines()[0]})") from e
        finally:
            del reader
        if f.read(1) or (sha256 is not None and seen.hexdigest() != sha256):
            raise UnsupportedIndex("the file changed while it was read")
    _check_loaded(index, shape)
    return index, shape
