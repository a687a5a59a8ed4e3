"""Keyword index at scale: build time, size and query latency over N synthetic transcript segments.

Segments are 6-20 words drawn from a Zipf-distributed vocabulary of 50k made-up words (plus a
few real ones so that stemming and phrases are exercised), spread over N/50 videos, with word
timings (speech) or without (subtitles, a quarter). Queries: one rare word, one common word,
two words, a quoted phrase, and the same with a modality filter and a 1,000-video filter.
Latency includes building KeywordHit objects (snippet + matched-word span) for the top k.

    python bench/keyword_search.py --segments 1000000 --k 100 --out /tmp/kwbench
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from vidsearch.indexer.keyword import KeywordIndex, build_keyword_index
from vidsearch.schemas.text_tables import KEYWORD_DOC_SCHEMA, WORD_TYPE

REAL = ["tomato", "garden", "running", "orchestra", "violin", "airplane", "station", "river", "mountain", "market"]


def make_vocab(n: int, rng: random.Random) -> list[str]:
    syll = ["ka", "lo", "mi", "ren", "to", "sa", "vi", "del", "nor", "pu", "shi", "gar", "en", "tri", "ol"]
    words = set()
    while len(words) < n:
        words.add("".join(rng.choice(syll) for _ in range(rng.randint(2, 4))))
    return REAL + sorted(words)


def make_docs(n: int, seed: int) -> tuple[pa.Table, list[str]]:
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    vocab = make_vocab(50_000, rng)
    ranks = np.minimum(nrng.zipf(1.3, size=n * 20) - 1, len(vocab) - 1)
    lengths = nrng.integers(6, 21, size=n)
    keys, vids, sources, starts, ends, texts, words = [], [], [], [], [], [], []
    pos = 0
    for i in range(n):
        ln = int(lengths[i])
        ws = [vocab[int(r)] for r in ranks[pos:pos + ln]]
        pos += ln
        t0 = (i % 50) * 6.0
        speech = i % 4 != 0
        keys.append(i + 1)
        vids.append(f"video{i // 50:07d}")
        sources.append("speech" if speech else "subtitle")
        starts.append(t0)
        ends.append(t0 + 0.35 * ln)
        texts.append(" ".join(ws))
        words.append([{"start_s": t0 + 0.35 * j, "end_s": t0 + 0.35 * j + 0.3, "word": " " + w, "prob": 0.9}
                      for j, w in enumerate(ws)] if speech else None)
    table = pa.table({"key": pa.array(keys, pa.int64()), "video_id": vids, "source": sources,
                      "start_s": pa.array(starts, pa.float64()), "end_s": pa.array(ends, pa.float64()),
                      "text": texts, "words": pa.array(words, pa.list_(WORD_TYPE))}, schema=KEYWORD_DOC_SCHEMA)
    return table, vocab


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--segments", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None, help="indexing threads (default min(4, cores))")
    ap.add_argument("--out", type=Path, default=Path("/tmp/vidsearch-kwbench"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    t = time.perf_counter()
    docs, vocab = make_docs(args.segments, args.seed)
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    meta = build_keyword_index(docs, args.out / "text", threads=args.threads)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    index = KeywordIndex.open(args.out / "text")
    open_verify_s = time.perf_counter() - t
    t = time.perf_counter()
    KeywordIndex.open(args.out / "text", verify=False)
    open_s = time.perf_counter() - t
    rng = random.Random(args.seed + 1)
    some_videos = sorted({f"video{rng.randrange(args.segments // 50):07d}" for _ in range(1000)})
    cases = {
        "rare word": lambda: vocab[rng.randrange(5000, 50_000)],
        "common word": lambda: vocab[rng.randrange(10, 60)],
        "two words": lambda: f"{vocab[rng.randrange(100, 5000)]} {vocab[rng.randrange(100, 5000)]}",
        "phrase": lambda: f'"{vocab[rng.randrange(10, 300)]} {vocab[rng.randrange(10, 300)]}"',
        "stemmed real word": lambda: rng.choice(["tomatoes", "gardens", "run", "violins"]),
    }
    results = {}
    for name, make in cases.items():
        for variant, kwargs in (("", {}), (" +speech only", {"sources": ["speech"]}),
                                (" +1000 videos", {"video_ids": some_videos})):
            times, nhits = [], []
            for _ in range(args.repeats):
                q = make()
                t = time.perf_counter()
                hits = index.search(q, args.k, **kwargs)
                times.append((time.perf_counter() - t) * 1000)
                nhits.append(len(hits))
            times.sort()
            results[name + variant] = {"p50_ms": round(statistics.median(times), 2),
                                       "p95_ms": round(times[int(0.95 * (len(times) - 1))], 2),
                                       "mean_hits": round(sum(nhits) / len(nhits), 1)}
    print(json.dumps({
        "segments": args.segments, "k": args.k, "cpus": os.cpu_count(), "generate_s": round(gen_s, 1),
        "build_s": round(build_s, 1), "index_mb": round(du(args.out / "text") / 2**20, 1), "n_docs": meta.n_docs,
        "open_with_sha256_s": round(open_verify_s, 2), "open_s": round(open_s, 3), "queries": results,
    }, indent=1))


if __name__ == "__main__":
    main()
