"""Paraphrased captions for ``scenes``: every caption states every attribute of every group."""

from __future__ import annotations

from typing import Sequence

import re

import numpy as np

__all__ = ["describe", "noun_phrase"]

_COUNT = {1: ("a", "one", "a single"), 2: ("two", "a pair of"), 3: ("three", "a group of three")}
_NOUN = {
    "circle": (("circle", "circles"), ("disc", "discs")),
    "square": (("square", "squares"),),
    "triangle": (("triangle", "triangles"),),
    "star": (("star", "stars"), ("five-pointed star", "five-pointed stars")),
    "diamond": (("diamond", "diamonds"), ("rhombus", "rhombuses")),
    "hexagon": (("hexagon", "hexagons"),),
    "cross": (("cross", "crosses"), ("plus sign", "plus signs")),
    "ring": (("ring", "rings"), ("hoop", "hoops")),
}
_SIZE = {"small": ("small", "little", "tiny"), "medium": ("medium-sized", "mid-sized", "medium"), "large": ("large", "big")}
_TEXTURE_PRE = {"solid": ("solid", "filled", "plain"), "striped": ("striped",), "dotted": ("dotted", "spotted", "polka-dot"),
                "outlined": ("outlined", "hollow")}
_TEXTURE_POST = {"solid": ("filled with solid colour",), "striped": ("with stripes", "covered in stripes"),
                 "dotted": ("with dots", "covered in dots"), "outlined": ("drawn only as an outline", "drawn in outline")}
_WHERE = {
    "top left": ("in the top left", "at the top left", "in the upper left corner"),
    "top": ("at the top", "at the top centre", "in the upper middle"),
    "top right": ("in the top right", "at the top right", "in the upper right corner"),
    "left": ("on the left", "at the left side", "in the middle of the left side"),
    "centre": ("in the centre", "in the middle", "at the centre"),
    "right": ("on the right", "at the right side", "in the middle of the right side"),
    "bottom left": ("in the bottom left", "at the bottom left", "in the lower left corner"),
    "bottom": ("at the bottom", "at the bottom centre", "in the lower middle"),
    "bottom right": ("in the bottom right", "at the bottom right", "in the lower right corner"),
}
_A_VOWEL = re.compile(r"\ba (?=[aeiou])")
_ONE = ("{c}", "there is {c}", "an image of {c}", "a grey background with {c}", "{W}, {np}")
_TWO = ("{a} and {b}", "{a}, plus {b}", "there is {a} and {b}", "a grey background with {a}; {b}", "{a}, next to {b}")


def _pick(options: Sequence[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def _article(words: str) -> str:
    return _A_VOWEL.sub("an ", words)


def noun_phrase(group: tuple, rng: np.random.Generator) -> str:
    """``two small red striped squares`` and its paraphrases; all five attributes but position."""
    count, shape, colour, size, texture, _ = group
    noun = _pick(_NOUN[shape], rng)[0 if count == 1 else 1]
    cnt, sz = _pick(_COUNT[count], rng), _pick(_SIZE[size], rng)
    form = int(rng.integers(3))
    if form == 0:
        text = f"{cnt} {sz} {colour} {_pick(_TEXTURE_PRE[texture], rng)} {noun}"
    elif form == 1:
        text = f"{cnt} {sz} {colour} {noun} {_pick(_TEXTURE_POST[texture], rng)}"
    else:
        verb = "is" if count == 1 else "are"
        text = f"{cnt} {noun} that {verb} {sz}, {colour} and {_pick(_TEXTURE_PRE[texture], rng)}"
    return _article(text)


def _clause(group: tuple, rng: np.random.Generator) -> str:
    return f"{noun_phrase(group, rng)} {_pick(_WHERE[group[5]], rng)}"


def _caption(category: tuple, rng: np.random.Generator) -> str:
    if len(category) == 1:
        template = _pick(_ONE, rng)
        if template.startswith("{W}"):
            where = _pick(_WHERE[category[0][5]], rng)
            return _article(template.format(W=where, np=noun_phrase(category[0], rng)))
        return _article(template.format(c=_clause(category[0], rng)))
    first, second = (category[0], category[1]) if rng.random() < 0.5 else (category[1], category[0])
    return _article(_pick(_TWO, rng).format(a=_clause(first, rng), b=_clause(second, rng)))


def describe(category: tuple, n: int, rng: np.random.Generator) -> list[str]:
    """``n`` captions of one category, distinct where the grammar allows it."""
    out: list[str] = []
    for _ in range(n * 20):
        text = _caption(category, rng)
        if text not in out:
            out.append(text)
        if len(out) == n:
            break
    while len(out) < n:  # a grammar too small for n distinct captions repeats them
        out.append(out[len(out) % len(out)])
    return out
