"""Exact keywords vs character trigrams vs fuzzy terms for OCR-style misread text (issue 15).

Screen-text rows are short phrases (signs, slide titles) with OCR-like errors injected at a
given rate per character: confusables (O->0, l->1, I->l, S->5, B->8, rn->m), a dropped or
doubled letter, case flips, stray punctuation. Each query is the clean phrase (or one or two of
its words); the relevant row is the corrupted copy among N distractor rows. Measured: recall@1
and recall@10 of

* ``exact``: the stemmed word field (``KeywordIndex.search(mode="exact")``);
* ``ngram``: the OCR-folded trigram field (``mode="ngram"``);
* ``both``: exact words for speech/subtitle rows, trigrams for screen rows (the default; here
  all rows are screen rows, so it must equal ``ngram``);
* ``fuzzy``: tantivy's Levenshtein-1 term query on the word field, per query word.

    python bench/keyword_ocr_match.py --rows 20000 --queries 500 --error-rate 0.08
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from vidsearch.indexer.keyword import KeywordIndex, build_keyword_index, sanitize_query
from vidsearch.schemas.text_tables import KEYWORD_DOC_SCHEMA, WORD_TYPE

WORDS = [
    "grand", "opening", "sale", "today", "only", "fresh", "bread", "coffee", "station", "platform", "exit",
    "north", "south", "museum", "library", "closed", "open", "monday", "friday", "weekend", "discount",
    "kitchen", "garden", "hotel", "pharmacy", "police", "parking", "entrance", "welcome", "introduction",
    "results", "chapter", "summary", "revenue", "growth", "quarter", "market", "analysis", "project",
    "timeline", "team", "meeting", "agenda", "questions", "thank", "you", "final", "score", "home", "away",
    "minutes", "goal", "penalty", "free", "delivery", "premium", "organic", "chocolate", "milk", "tomato",
    "sauce", "pasta", "recipe", "ingredients", "warning", "danger", "caution", "wet", "floor",
]
CONFUSE = {"o": "0", "O": "0", "l": "1", "I": "l", "i": "l", "S": "5", "s": "5", "B": "8", "m": "rn", "e": "c"}


def corrupt(text: str, rate: float, rng: random.Random) -> str:
    out = []
    for c in text:
        r = rng.random()
        if r < rate * 0.5 and c in CONFUSE:
            out.append(CONFUSE[c])
        elif r < rate * 0.65 and c.isalpha():
            continue  # dropped letter
        elif r < rate * 0.75 and c.isalpha():
            out.append(c + c)
        elif r < rate * 0.9 and c.isalpha():
            out.append(c.swapcase())
        elif r < rate and c == " ":
            out.append(rng.choice([" ", ". ", ", ", "  "]))
        else:
            out.append(c)
    return "".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--error-rate", type=float, default=0.08)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from tantivy import Occur, Query

    rng = random.Random(args.seed)
    phrases = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5))) for _ in range(args.rows)]
    # upper-case signs and title-case slides are common on screen
    phrases = [p.upper() if rng.random() < 0.4 else p.title() for p in phrases]
    texts = [corrupt(p, args.error_rate, rng) for p in phrases]
    table = pa.table({"key": pa.array(range(args.rows), pa.int64()), "video_id": [f"v{i}" for i in range(args.rows)],
                      "source": ["screen"] * args.rows, "start_s": [0.0] * args.rows, "end_s": [1.0] * args.rows,
                      "text": texts, "words": pa.nulls(args.rows, pa.list_(WORD_TYPE))}, schema=KEYWORD_DOC_SCHEMA)
    tmp = Path(tempfile.mkdtemp())
    try:
        build_keyword_index(table, tmp / "text")
        index = KeywordIndex.open(tmp / "text")
        picks = rng.sample(range(args.rows), args.queries)
        queries = []
        for i in picks:
            ws = phrases[i].lower().split()
            queries.append((i, " ".join(ws) if rng.random() < 0.5 else " ".join(rng.sample(ws, min(2, len(ws))))))
        res = {}
        for mode in ("exact", "ngram", "both", "fuzzy"):
            r1 = r10 = 0
            t = time.perf_counter()
            for i, q in queries:
                if mode == "fuzzy":
                    words = sanitize_query(q).positive_terms
                    sub = [(Occur.Should, Query.fuzzy_term_query(index._schema, "text", w, distance=1)) for w in words]
                    hits = index._searcher.search(Query.boolean_query(sub), 10).hits
                    keys = [index._searcher.doc(a).to_dict()["key"][0] for _, a in hits]
                else:
                    keys = [h.key for h in index.search(q, 10, modalities=["screen"], mode=mode)]  # type: ignore[arg-type]
                # a hit counts when the row's clean phrase holds every query word (duplicates exist)
                good = {k for k in keys if set(q.split()) <= set(phrases[k].lower().split())}
                r1 += bool(keys) and keys[0] in good
                r10 += bool(good) or i in keys
            res[mode] = {"recall@1": round(r1 / len(queries), 3), "recall@10": round(r10 / len(queries), 3),
                         "ms_per_query": round((time.perf_counter() - t) * 1000 / len(queries), 2)}
        print(json.dumps({"rows": args.rows, "queries": args.queries, "error_rate": args.error_rate,
                          "example": [phrases[0], texts[0]], "results": res}, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
