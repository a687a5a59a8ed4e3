"""Keyword matching of real OCR output: exact words vs character trigrams vs fuzzy terms (issue 15).

``bench/keyword_ocr_match.py`` measures the match modes on text corrupted by a synthetic error
model; this one uses what rapidocr really reads. It draws ``--frames`` 1920x1080 frames with
phrases of several heights (the small ones are where OCR misreads), shrinks them to the OCR size
(``OcrCfg.long_side``), reads them with :class:`vidsearch.pipeline.ocr.ScreenReader`, and indexes
every reading as a screen-text row (one "video" per frame) with the keyword index of issue 14.
Each drawn phrase then becomes queries (the whole phrase, one word, two words) in lower case,
and a hit counts when its row was read from a phrase holding every query word. Reported per
mode (``exact`` stemmed words, ``ngram`` OCR-folded trigrams, ``both`` = the default for screen
rows, ``fuzzy`` = Levenshtein-1 terms): recall@1 and recall@5 over all queries, and apart for
phrases read exactly, read with errors (normalised text differs) and not read at all (found
only through another phrase holding the same words).

    python bench/ocr_match.py --frames 40 --cache /tmp/ocr_match.json
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def read_all(n_frames: int, seed: int, heights: list[int]) -> list[dict[str, Any]]:
    """OCR rows of ``n_frames`` drawn frames: [{frame, truth, text}] (truth: the drawn phrase or '')."""
    import cv2
    from ocr_resolution import draw_frame, fonts

    from vidsearch.pipeline.ocr import ScreenReader, ocr_frame_size, similarity
    from vidsearch.schemas.ocr_config import OcrCfg

    cfg = OcrCfg()
    reader = ScreenReader(cfg)
    reader.setup()
    rng, nrng, ff = random.Random(seed), np.random.default_rng(seed), fonts()
    kinds = ["flat", "gradient", "smooth", "stripes", "busy"]
    w, h = ocr_frame_size(1920, 1080, cfg.long_side)
    rows = []
    for i in range(n_frames):
        img, truth = draw_frame(rng, nrng, heights, kinds[i % len(kinds)], ff)
        small = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA) if w != 1920 else img
        for b in reader.read(small):
            best = max(truth, key=lambda t: similarity(t[1], b.text))[1]
            rows.append({"frame": i, "truth": best if similarity(best, b.text) >= 0.5 else "", "text": b.text})
        # phrases OCR did not read at all still become queries (their rows are missing)
        rows += [{"frame": i, "truth": p, "text": None} for _, p in truth]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--heights", default="13,16,20,27,36", help="text heights in pixels at 1080p")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=None, help="keep the OCR rows here and reuse them")
    args = ap.parse_args()
    import pyarrow as pa
    from tantivy import Occur, Query

    from vidsearch.indexer.keyword import KeywordIndex, build_keyword_index, sanitize_query
    from vidsearch.pipeline.ocr import normalize_text
    from vidsearch.schemas.text_tables import KEYWORD_DOC_SCHEMA, WORD_TYPE

    if args.cache and args.cache.is_file():
        rows = json.loads(args.cache.read_text())
    else:
        rows = read_all(args.frames, args.seed, [int(x) for x in args.heights.split(",")])
        if args.cache:
            args.cache.write_text(json.dumps(rows))
    read = [r for r in rows if r["text"] is not None]
    phrases = [r for r in rows if r["text"] is None]
    n = len(read)
    table = pa.table({"key": pa.array(range(n), pa.int64()), "video_id": [f"f{r['frame']}" for r in read],
                      "source": ["screen"] * n, "start_s": [0.0] * n, "end_s": [1.0] * n,
                      "text": [r["text"] for r in read], "words": pa.nulls(n, pa.list_(WORD_TYPE))},
                     schema=KEYWORD_DOC_SCHEMA)
    rng = random.Random(args.seed)
    queries = []   # (query, frame, read | misread | unread)
    for p in phrases:
        words = normalize_text(p["truth"]).split()
        rows_of = [r for r in read if r["frame"] == p["frame"] and r["truth"] == p["truth"]]
        if not rows_of:
            kind = "unread"      # no row: no mode can find it
        elif all(normalize_text(r["text"]) != normalize_text(p["truth"]) for r in rows_of):
            kind = "misread"     # read, with errors: where the modes differ
        else:
            kind = "read"
        queries.append((" ".join(words), p["frame"], kind))
        queries.append((rng.choice(words), p["frame"], kind))
        if len(words) > 2:
            queries.append((" ".join(rng.sample(words, 2)), p["frame"], kind))
    tmp = Path(tempfile.mkdtemp())
    try:
        build_keyword_index(table, tmp / "text")
        index = KeywordIndex.open(tmp / "text")
        res = {}
        for mode in ("exact", "ngram", "both", "fuzzy"):
            stats = {"all": [0, 0, 0], "read": [0, 0, 0], "misread": [0, 0, 0], "unread": [0, 0, 0]}
            t = time.perf_counter()
            for q, _frame, kind in queries:
                if mode == "fuzzy":
                    terms = sanitize_query(q).positive_terms
                    sub = [(Occur.Should, Query.fuzzy_term_query(index._schema, "text", w, distance=1)) for w in terms]
                    hits = index._searcher.search(Query.boolean_query(sub), 5).hits
                    keys = [index._searcher.doc(a).to_dict()["key"][0] for _, a in hits]
                else:
                    keys = [h.key for h in index.search(q, 5, modalities=["screen"], mode=mode)]  # type: ignore[arg-type]
                qw = set(q.split())
                good = [k for k in keys if qw <= set(normalize_text(read[k]["truth"]).split())]
                for bucket in ("all", kind):
                    s = stats[bucket]
                    s[0] += 1
                    s[1] += bool(keys) and keys[0] in good
                    s[2] += bool(good)
            res[mode] = {b: {"queries": s[0], "recall@1": round(s[1] / max(1, s[0]), 3),
                             "recall@5": round(s[2] / max(1, s[0]), 3)} for b, s in stats.items()}
            res[mode]["ms_per_query"] = round((time.perf_counter() - t) * 1000 / len(queries), 2)
        exact_rows = sum(normalize_text(r["text"]) == normalize_text(r["truth"]) for r in read if r["truth"])
        print(json.dumps({"rows_read": n, "phrases": len(phrases), "rows_read_exactly": exact_rows,
                          "garbage_rows": sum(not r["truth"] for r in read), "queries": len(queries),
                          "results": res}, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
