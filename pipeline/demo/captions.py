"""Captions that name every object of a demo image, in varied words and orders.

Every caption states each object's colour and shape (so it identifies its image within the
split), sometimes its size, and sometimes where one object is relative to another; it never
mentions the background. Synonyms are drawn often enough to pass a vocabulary threshold of 4.
"""
from __future__ import annotations

import numpy as np

from pipeline.demo.scene import SceneObject

COLOR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red",), "orange": ("orange",), "yellow": ("yellow",), "green": ("green",),
    "cyan": ("cyan", "turquoise"), "blue": ("blue",), "purple": ("purple", "violet"), "white": ("white",),
}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disk"), "square": ("square", "box"), "triangle": ("triangle",),
    "star": ("star",), "cross": ("cross", "plus"), "diamond": ("diamond", "rhombus"),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("to the left of", "left of"), "right": ("to the right of", "right of"),
    "above": ("above", "over"), "below": ("below", "under", "beneath"),
}
COUNT_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}
SINGLE_FRAMES = ("{p}", "a picture of {p}", "there is {p}", "an image showing {p}", "{p} alone", "one {b}")
GROUP_FRAMES = ("{l}", "there are {n} shapes : {l}", "{n} objects : {l}", "an image with {l}", "a picture showing {l}")
REST_JOINERS = (" and ", " , as well as ", " , with ")
SIZE_MENTION_PROB = 0.5
RELATION_FRAME_PROB = 0.4
# Relations are stated only when clear: centres apart by this fraction of the image side,
# along an axis that dominates the other by RELATION_AXIS_RATIO.
RELATION_MIN_GAP = 0.15
RELATION_AXIS_RATIO = 1.5
ATTEMPTS_PER_CAPTION = 40


def relation(a: SceneObject, b: SceneObject, image_size: int) -> str | None:
    """Where `a` is relative to `b` (left/right/above/below), or None when not clear-cut."""
    (ax, ay), (bx, by) = a.centre, b.centre
    dx, dy = bx - ax, by - ay
    if abs(dx) >= RELATION_MIN_GAP * image_size and abs(dx) >= RELATION_AXIS_RATIO * abs(dy):
        return "left" if dx > 0 else "right"
    if abs(dy) >= RELATION_MIN_GAP * image_size and abs(dy) >= RELATION_AXIS_RATIO * abs(dx):
        return "above" if dy > 0 else "below"
    return None


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _bare_phrase(rng: np.random.Generator, obj: SceneObject) -> str:
    """'[size] colour shape', size included half of the time."""
    words = [_pick(rng, SIZE_WORDS[obj.size])] if rng.random() < SIZE_MENTION_PROB else []
    return " ".join(words + [_pick(rng, COLOR_WORDS[obj.color]), _pick(rng, SHAPE_WORDS[obj.shape])])


def _phrase(rng: np.random.Generator, obj: SceneObject) -> str:
    bare = _bare_phrase(rng, obj)
    return ("an " if bare[0] in "aeiou" else "a ") + bare


def _listing(rng: np.random.Generator, objects: list[SceneObject]) -> str:
    phrases = [_phrase(rng, o) for o in objects]
    if len(phrases) == 1:
        return phrases[0]
    last_joiner = " and " if len(phrases) > 2 or rng.random() < 0.7 else " with "
    return " , ".join(phrases[:-1]) + last_joiner + phrases[-1]


def _relational(rng: np.random.Generator, objects: list[SceneObject], image_size: int) -> str | None:
    """'A <relation> B' for a random clearly related pair, the other objects listed after."""
    pairs = [(a, b, r) for a in objects for b in objects if a is not b
             and (r := relation(a, b, image_size)) is not None]
    if not pairs:
        return None
    a, b, rel = pairs[int(rng.integers(len(pairs)))]
    text = f"{_phrase(rng, a)} {_pick(rng, RELATION_PHRASES[rel])} {_phrase(rng, b)}"
    rest = [o for o in objects if o is not a and o is not b]
    return text + (_pick(rng, REST_JOINERS) + _listing(rng, rest) if rest else "")


def _caption_body(rng: np.random.Generator, objects: list[SceneObject], image_size: int) -> str:
    if len(objects) == 1:
        frame = _pick(rng, SINGLE_FRAMES)
        return frame.format(p=_phrase(rng, objects[0]), b=_bare_phrase(rng, objects[0]))
    if rng.random() < RELATION_FRAME_PROB and (text := _relational(rng, objects, image_size)):
        return text
    frame = _pick(rng, GROUP_FRAMES)
    return frame.format(l=_listing(rng, objects), n=COUNT_WORDS[len(objects)])


def write_captions(rng: np.random.Generator, objects: tuple[SceneObject, ...],
                   count: int, image_size: int) -> list[str]:
    """`count` distinct captions, objects in a fresh random order for each; Flickr-style raw text."""
    captions: list[str] = []
    for _ in range(ATTEMPTS_PER_CAPTION * count):
        order = [objects[int(i)] for i in rng.permutation(len(objects))]
        body = _caption_body(rng, order, image_size)
        caption = body[0].upper() + body[1:] + " ."
        if caption not in captions:
            captions.append(caption)
        if len(captions) == count:
            return captions
    raise ValueError(f"could not write {count} distinct captions for {len(objects)} object(s); "
                     "lower captions_per_image")


def tokenize(caption: str) -> list[str]:
    """Karpathy-style tokens: lower-cased words, punctuation dropped."""
    return [word for word in caption.lower().split() if word.isalnum()]
