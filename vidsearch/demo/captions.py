"""Plain-English captions of demo scenes: the lexicon, training templates and held-out paraphrases.

A scene is described by four attributes (shape, colour, count, motion). Captions come in four
*styles*, which is how the demo model's held-out evaluation separates memorisation from
understanding:

* ``canonical``: one fixed sentence per scene, e.g. "two blue squares growing". Used as the
  ground-truth caption in sidecars, by ``vidsearch demo`` and in the training mix.
* ``train``: the training distribution: several sentence templates and a few synonyms per
  attribute value ("a crimson disc sliding left" is a training sentence).
* ``paraphrase``: sentence *structures* that never occur in training ("the circle is red and it is
  moving to the left"), over canonical words that do.
* ``synonym``: held-out structures combined with the training synonyms (the issue's stretch goal).
* ``unseen``: words the model never saw at all ("ruby", "orb"); reported for honesty only: a model
  of a few MB trained from scratch on this world cannot know English beyond it.

Every function is deterministic given its ``numpy.random.Generator``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np

__all__ = [
    "SHAPES",
    "COLOURS",
    "MOTIONS",
    "COUNTS",
    "CaptionStyle",
    "CAPTION_STYLES",
    "Attributes",
    "canonical_caption",
    "sample_caption",
    "training_words",
    "all_words",
]

_T = TypeVar("_T")

CaptionStyle = Literal["canonical", "train", "paraphrase", "synonym", "unseen"]
CAPTION_STYLES: tuple[CaptionStyle, ...] = ("canonical", "train", "paraphrase", "synonym", "unseen")

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "white")
MOTIONS: tuple[str, ...] = (
    "left", "right", "up", "down", "grow", "shrink", "rotate", "appear", "disappear",
)
COUNTS: tuple[int, ...] = (1, 2, 3)


@dataclass(frozen=True)
class Attributes:
    """What a scene shows: ``count`` objects of one ``shape`` and ``colour`` doing ``motion``."""

    shape: str
    colour: str
    count: int
    motion: str

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; one of {SHAPES}")
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; one of {COLOURS}")
        if self.count not in COUNTS:
            raise ValueError(f"count must be one of {COUNTS}, got {self.count}")
        if self.motion not in MOTIONS:
            raise ValueError(f"unknown motion {self.motion!r}; one of {MOTIONS}")

    @property
    def key(self) -> tuple[str, str, int, str]:
        """Hashable identity: two scenes with the same key match the same queries."""
        return (self.shape, self.colour, self.count, self.motion)


# ---- lexicon -------------------------------------------------------------------------------------
# Per attribute value: (canonical, training synonyms, never-seen synonyms). Training synonyms occur
# in training captions; never-seen ones only in the "unseen" evaluation.
_SHAPE_WORDS: dict[str, tuple[tuple[str, str], list[tuple[str, str]], list[tuple[str, str]]]] = {
    # (singular, plural)
    "circle": (("circle", "circles"), [("disc", "discs"), ("ball", "balls")], [("orb", "orbs")]),
    "square": (("square", "squares"), [("box", "boxes"), ("block", "blocks")], [("cube", "cubes")]),
    "triangle": (("triangle", "triangles"), [("pyramid", "pyramids")], [("wedge", "wedges")]),
    "star": (("star", "stars"), [("starburst", "starbursts")], [("pentagram", "pentagrams")]),
    "cross": (("cross", "crosses"), [("plus", "pluses")], [("x", "xs")]),
    "heart": (("heart", "hearts"), [("love heart", "love hearts")], [("valentine", "valentines")]),
}
_COLOUR_WORDS: dict[str, tuple[str, list[str], list[str]]] = {
    "red": ("red", ["crimson", "scarlet"], ["ruby"]),
    "green": ("green", ["emerald", "lime"], ["jade"]),
    "blue": ("blue", ["navy", "azure"], ["cobalt"]),
    "yellow": ("yellow", ["golden", "lemon"], ["canary"]),
    "purple": ("purple", ["violet", "magenta"], ["lilac"]),
    "orange": ("orange", ["amber", "tangerine"], ["apricot"]),
    "white": ("white", ["snowy", "ivory"], ["pearl"]),
}
_COUNT_WORDS: dict[int, tuple[str, list[str], list[str]]] = {
    1: ("a", ["one", "a single"], ["a lone"]),
    2: ("two", ["a pair of", "2"], ["a couple of"]),
    3: ("three", ["3", "a group of three"], ["a trio of"]),
}
# Motion: (participle phrase, training variants, never-seen variants). "{ing}" forms only; the verb
# forms for the "moves"/"move" templates are derived by _finite().
_MOTION_WORDS: dict[str, tuple[str, list[str], list[str]]] = {
    "left": ("moving to the left", ["moving left", "sliding left", "drifting to the left",
                                    "heading left", "going left"], ["travelling westward"]),
    "right": ("moving to the right", ["moving right", "sliding right", "drifting to the right",
                                      "heading right", "going right"], ["travelling eastward"]),
    "up": ("moving up", ["moving upwards", "rising", "sliding up", "going up", "heading up"],
           ["ascending"]),
    "down": ("moving down", ["moving downwards", "falling", "sliding down", "going down",
                             "dropping"], ["descending"]),
    "grow": ("growing", ["getting bigger", "expanding", "enlarging", "growing larger"],
             ["swelling"]),
    "shrink": ("shrinking", ["getting smaller", "contracting", "becoming smaller"], ["dwindling"]),
    "rotate": ("rotating", ["spinning", "turning around", "twirling"], ["revolving"]),
    "appear": ("appearing", ["popping up", "showing up", "coming into view"], ["materialising"]),
    "disappear": ("disappearing", ["vanishing", "going away", "leaving the frame"], ["evaporating"]),
}

# ---- templates -----------------------------------------------------------------------------------
# Placeholders: {n} count phrase ("a", "two", ...), {k} count adjective after "the" ("" or "two "),
# {c} colour, {s} shape (number-agreeing), {m} motion participle, {be} is/are, {it} it/they.
# Training and held-out templates share their words but not their sentence structure.
_TRAIN_TEMPLATES: tuple[str, ...] = (
    "{n} {c} {s} {m}",
    "{n} {c} {s} that {be} {m}",
    "a video of {n} {c} {s} {m}",
    "a clip showing {n} {c} {s} {m}",
    "{n} {c} {s} {m} on the background",
    "we see {n} {c} {s} {m}",
    "there {be} {n} {c} {s} and {it} {be} {m}",
    "{n} {c} {s} {m} in the video",
)
_PARAPHRASE_TEMPLATES: tuple[str, ...] = (
    "the {k}{s} {be} {c} and {it} {be} {m}",  # colour as a predicate
    "{m}, {n} {c} {s}",                       # motion first
    "{n} {s} in {c} {m}",                     # colour after the noun
    "{n} {s}, {c}, {m}",                      # a list
    "a clip of {n} {s} that {be} {c} and {m}",
    "in the video {n} {c} {s} {be} {m}",
)
# "the two squares": a number word, never "a pair of"; empty for one object.
_K_CANONICAL: dict[int, str] = {1: "", 2: "two ", 3: "three "}
_K_SYNONYM: dict[int, str] = {1: "", 2: "2 ", 3: "3 "}


def _fill(template: str, a: Attributes, n: str, k: str, c: str, s: str, m: str) -> str:
    plural = a.count > 1
    text = template.format(n=n, k=k, c=c, s=s, m=m, be="are" if plural else "is",
                           it="they" if plural else "it")
    return _fix_articles(" ".join(text.split()))


def _fix_articles(text: str) -> str:
    """'a orange' -> 'an orange' (and 'a amber', 'a ivory', ...)."""
    words = text.split(" ")
    for i in range(len(words) - 1):
        if words[i] == "a" and words[i + 1][:1] in "aeiou":
            words[i] = "an"
    return " ".join(words)


def canonical_caption(a: Attributes) -> str:
    """The one fixed caption of a scene, e.g. ``"a red circle moving to the left"``."""
    shape = _SHAPE_WORDS[a.shape][0]
    return _fill("{n} {c} {s} {m}", a, _COUNT_WORDS[a.count][0], "", _COLOUR_WORDS[a.colour][0],
                 shape[0] if a.count == 1 else shape[1], _MOTION_WORDS[a.motion][0])


def _pick(rng: np.random.Generator, options: Sequence[_T]) -> _T:
    return options[int(rng.integers(len(options)))]


def sample_caption(a: Attributes, rng: np.random.Generator, style: CaptionStyle = "train") -> str:
    """A caption of ``a`` in the given style (see the module docstring).

    Args:
        a: the scene attributes.
        rng: source of randomness (template and synonym choice).
        style: which distribution to draw from.

    Returns:
        A lower-case English sentence.
    """
    if style == "canonical":
        return canonical_caption(a)
    shape_c, shape_syn, shape_new = _SHAPE_WORDS[a.shape]
    col_c, col_syn, col_new = _COLOUR_WORDS[a.colour]
    cnt_c, cnt_syn, cnt_new = _COUNT_WORDS[a.count]
    mot_c, mot_syn, mot_new = _MOTION_WORDS[a.motion]
    k = _K_CANONICAL[a.count]
    if style == "train":
        # Each word is a synonym with probability 1/4, so that the canonical words are the
        # best-trained ones and every synonym is still seen thousands of times.
        def choose(canon: _T, syn: Sequence[_T]) -> _T:
            return _pick(rng, syn) if rng.random() < 0.25 else canon

        shape, colour = choose(shape_c, shape_syn), choose(col_c, col_syn)
        count, motion = choose(cnt_c, cnt_syn), choose(mot_c, mot_syn)
        template = _pick(rng, _TRAIN_TEMPLATES)
    elif style == "paraphrase":
        shape, colour, count, motion = shape_c, col_c, cnt_c, mot_c
        template = _pick(rng, _PARAPHRASE_TEMPLATES)
    elif style == "synonym":
        shape, colour = _pick(rng, shape_syn), _pick(rng, col_syn)
        count, motion, k = _pick(rng, cnt_syn), _pick(rng, mot_syn), _K_SYNONYM[a.count]
        template = _pick(rng, _PARAPHRASE_TEMPLATES)
    elif style == "unseen":
        shape, colour, count, motion = shape_new[0], col_new[0], cnt_new[0], mot_new[0]
        template = "{n} {c} {s} {m}"
    else:
        raise ValueError(f"unknown caption style {style!r}; one of {CAPTION_STYLES}")
    return _fill(template, a, count, k, colour, shape[0] if a.count == 1 else shape[1], motion)


def training_words() -> list[str]:
    """Every word a training caption can contain, sorted (the demo vocabulary is built from it).

    Enumerated from the training templates and the training lexicon, so the vocabulary covers the
    training distribution exactly and none of the never-seen words.
    """
    words: set[str] = {"is", "are", "it", "they", "an"}
    for tmpl in _TRAIN_TEMPLATES:
        words.update(w for w in tmpl.replace(",", " ").split() if not w.startswith("{"))
    for canon, syn, _ in _SHAPE_WORDS.values():
        for singular, plural in (canon, *syn):
            words.update(singular.split() + plural.split())
    for table in (_COLOUR_WORDS, _COUNT_WORDS, _MOTION_WORDS):
        for word, synonyms, _ in table.values():
            for phrase in (word, *synonyms):
                words.update(phrase.split())
    return sorted(words)


def all_words(style: CaptionStyle) -> set[str]:
    """Lower-case words (punctuation split off) that captions of ``style`` may contain."""
    rng = np.random.default_rng(0)
    words: set[str] = set()
    for shape in SHAPES:
        for colour in COLOURS:
            for count in COUNTS:
                for motion in MOTIONS:
                    a = Attributes(shape, colour, count, motion)
                    for _ in range(40):
                        text = sample_caption(a, rng, style).replace(",", " ")
                        words.update(text.split())
    return words
