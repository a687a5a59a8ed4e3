"""Zero-shot tags (vidsearch.search.tags): label lists, prompt ensembling, calibrated scores, rows.

Text embeddings come from the shipped demo model (no stand-in encoder); the score maths is
checked on arrays against plain NumPy recomputations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from vidsearch.demo.model import load_demo_model
from vidsearch.search.tags import (
    TAGS_SCHEMA,
    VIDEO_TEMPLATES,
    LabelError,
    ZeroShotTagger,
    builtin_labels,
    encode_labels,
    label_scores,
    read_labels,
    tag_table,
    top_labels,
)


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return load_demo_model(device="cpu")


def test_read_labels(tmp_path: Path) -> None:
    f = tmp_path / "labels.txt"
    f.write_bytes("\ufeff# my labels\nred circle\n\n  blue   square \r\nred circle\ngreen\tstar\n".encode())
    assert read_labels(f) == ["red circle", "blue square", "green star"]


@pytest.mark.parametrize("content,message", [
    (b"", "no labels"),
    (b"# only a comment\n\n", "no labels"),
    (b"ok\n\xff\xfe\n", "not UTF-8"),
    (b"ok\x00\n", "binary"),
    (("x" * 201).encode(), "longer than 200"),
    (b"ok\nbad\x07bell\n", "control characters"),
])
def test_read_labels_errors(tmp_path: Path, content: bytes, message: str) -> None:
    f = tmp_path / "labels.txt"
    f.write_bytes(content)
    with pytest.raises(LabelError, match=message):
        read_labels(f)
    with pytest.raises(LabelError, match="missing"):
        read_labels(tmp_path / "missing")


def test_builtin_kinetics400() -> None:
    labels = builtin_labels("kinetics400")
    assert len(labels) == 400 and len(set(labels)) == 400
    assert labels[0] == "abseiling" and labels[-1] == "zumba" and labels == sorted(labels, key=str.lower)
    assert "passing American football (not in game)" in labels and "massaging person's head" in labels
    with pytest.raises(LabelError, match="no builtin"):
        builtin_labels("imagenet")


def test_prompt_ensemble_is_mean_of_normalised_prompts(model) -> None:  # type: ignore[no-untyped-def]
    labels = ["red circle", "blue square"]
    emb = encode_labels(model.encode_text, labels, VIDEO_TEMPLATES, batch_size=5)  # batches split a label
    assert emb.shape == (2, model.embed_dim) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    for label, row in zip(labels, emb, strict=True):
        t = model.encode_text([p.format(label) for p in VIDEO_TEMPLATES]).float().numpy()
        t /= np.linalg.norm(t, axis=1, keepdims=True)
        m = t.mean(0)
        assert np.allclose(row, m / np.linalg.norm(m), atol=1e-5)
    with pytest.raises(LabelError, match="exactly once"):
        encode_labels(model.encode_text, labels, ["no slot"])
    with pytest.raises(LabelError, match="exactly once"):
        encode_labels(model.encode_text, labels, ["{} and {}"])


def test_scores_are_a_softmax_over_labels() -> None:
    rng = np.random.default_rng(0)
    clips = rng.normal(size=(50, 16)).astype(np.float32)
    labels = rng.normal(size=(7, 16)).astype(np.float32)
    labels /= np.linalg.norm(labels, axis=1, keepdims=True)
    s = label_scores(clips, labels, logit_scale=100.0)
    cos = (clips / np.linalg.norm(clips, axis=1, keepdims=True)) @ labels.T
    ref = np.exp(100 * cos - (100 * cos).max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    assert np.allclose(s, ref, atol=1e-6) and np.allclose(s.sum(1), 1, atol=1e-5)
    assert (np.argsort(-s, 1) == np.argsort(-cos, 1)).all()  # the calibration keeps each clip's order
    idx, vals = top_labels(s, 3)
    assert (idx == np.argsort(-s, 1)[:, :3]).all() and (np.diff(vals, axis=1) <= 0).all()
    idx, vals = top_labels(s, 3, min_score=0.5)
    assert ((idx == -1) == (vals < 0.5)).all()
    idx, _ = top_labels(s, 20)  # more than the labels: all of them
    assert idx.shape == (50, 7)


def test_tag_table_rows() -> None:
    scores = np.array([[0.7, 0.2, 0.1], [0.05, 0.05, 0.9], [0.34, 0.33, 0.33]], np.float32)
    t = tag_table(np.array([11, 12, 13]), ["a", "b", "c"], ["x", "y", "z"], scores, top_k=2, min_score=0.2)
    assert t.schema == TAGS_SCHEMA
    assert t.to_pylist() == [
        {"clip_id": 11, "video_id": "a", "label": "x", "score": pytest.approx(0.7), "rank": 1},
        {"clip_id": 11, "video_id": "a", "label": "y", "score": pytest.approx(0.2), "rank": 2},
        {"clip_id": 12, "video_id": "b", "label": "z", "score": pytest.approx(0.9), "rank": 1},
        {"clip_id": 13, "video_id": "c", "label": "x", "score": pytest.approx(0.34), "rank": 1},
        {"clip_id": 13, "video_id": "c", "label": "y", "score": pytest.approx(0.33), "rank": 2},
    ]


def test_tagger_batches_and_is_incremental(model) -> None:  # type: ignore[no-untyped-def]
    """Scores of a clip depend on the clip and the label set only: tagging a subset (new clips
    of a later run) or in other batch sizes gives the same rows."""
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(40, model.embed_dim)).astype(np.float32)
    ids = np.arange(1000, 1040, dtype=np.int64)
    vids = [f"v{i % 3}" for i in range(40)]
    tagger = ZeroShotTagger(model.encode_text, ["red circle", "blue square", "green star", "white heart"],
                            model_fingerprint=model.fingerprint)
    full = tagger.tag(emb, ids, vids, top_k=2, batch_size=7)
    assert full.num_rows == 80
    assert full.equals(tagger.tag(emb, ids, vids, top_k=2, batch_size=1000))
    later = tagger.tag(emb[30:], ids[30:], vids[30:], top_k=2)
    assert later.equals(full.slice(60))
    same = ZeroShotTagger(model.encode_text, ["red circle", "blue square", "green star", "white heart"],
                          model_fingerprint=model.fingerprint)
    other = ZeroShotTagger(model.encode_text, ["red circle", "blue square"], model_fingerprint=model.fingerprint)
    assert same.fingerprint == tagger.fingerprint != other.fingerprint
    with pytest.raises(LabelError, match="do not match"):
        tagger.tag(emb[:, :8], ids, vids)
    with pytest.raises(LabelError, match="min-score"):
        tagger.tag(emb, ids, vids, min_score=2.0)
    assert tagger.tag(emb[:0], ids[:0], vids[:0]).equals(pa.Table.from_pylist([], schema=TAGS_SCHEMA))


def test_kinetics_labels_encode_with_a_real_model(model) -> None:  # type: ignore[no-untyped-def]
    labels = builtin_labels()[::16]  # 25 of them: words the demo vocabulary spells by characters
    tagger = ZeroShotTagger(model.encode_text, labels)
    assert tagger.embeddings.shape == (25, model.embed_dim)
    assert np.isfinite(tagger.embeddings).all() and len({e.tobytes() for e in tagger.embeddings}) == 25
    rows = tagger.tag(np.ones((2, model.embed_dim), np.float32), np.array([1, 2]), ["a", "a"], top_k=5)
    assert rows.num_rows == 10 and set(rows.column("label").to_pylist()) <= set(labels)
