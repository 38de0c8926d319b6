"""Concepts, styles and the eight downstream tasks of the embedded default.

* 78 concepts in 7 groups (digits, letters, shapes, textures, signs, terrain, scenes).
* ``source`` style: what pre-training sees — source fonts and palettes, 40 % clean and 60 % with generic
  nuisances (random colours, clutter, small rotation, blur, noise, channel gains).
* eight task styles, each a held-out shift of one group (like CLIP meeting MNIST, SVHN, GTSRB, EuroSAT...):
  handwritten digits (scikit-learn's), faded street-number digits in held-out fonts among distractors, letters (half
  hollow) in held-out fonts with shear and noise, texture-filled outlined shapes, warped zoomed textures, small
  signs in scenery at night, false-colour terrain, dusk scenes through a thermal-camera colour map.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from . import render as R


@dataclass(frozen=True)
class Group:
    name: str
    concepts: tuple[str, ...]
    names: tuple[str, ...]  # class names as a task shows them


GROUPS = (
    Group("digits", R.DIGITS, R.DIGITS),
    Group("letters", R.LETTERS, R.LETTERS),
    Group("shapes", R.SHAPES, R.SHAPES),
    Group("textures", R.TEXTURES, R.TEXTURES),
    Group("signs", R.SIGNS, R.SIGNS),
    Group("terrain", R.TERRAIN, R.TERRAIN),
    Group("scenes", R.SCENES, R.SCENES),
)
CONCEPTS = tuple((g.name, c) for g in GROUPS for c in g.concepts)  # global concept index -> (group, concept)
GROUP_OF = np.array([i for i, g in enumerate(GROUPS) for _ in g.concepts])


def concept_index(group: str, k: int) -> int:
    return CONCEPTS.index((group, next(g for g in GROUPS if g.name == group).concepts[k]))


# -- source style ---------------------------------------------------------------------------------------------------
def _background(rng, nuisance: bool, rich: bool = False):
    if not nuisance:
        return Image.new("RGB", (R.S, R.S), R.rand_colour(rng))
    u = rng.random()
    if not rich:
        return R.clutter(rng, int(rng.integers(6, 16))) if u < 0.6 else R.gradient(rng)
    if u < 0.35:
        return R.clutter(rng, int(rng.integers(6, 16)))
    if u < 0.55:
        return R.gradient(rng)
    if u < 0.8:
        tex = R.texture(R.TEXTURES[int(rng.integers(len(R.TEXTURES)))], rng, R.rand_colour(rng), R.rand_colour(rng))
        return Image.blend(tex, Image.new("RGB", (R.S, R.S), R.rand_colour(rng)), 0.5)
    return R.scene(R.SCENES[int(rng.integers(len(R.SCENES)))], rng)


def _blobs(img: Image.Image, rng, n: int = 3) -> None:
    d = ImageDraw.Draw(img)
    for _ in range(n):
        x, y = rng.integers(0, R.S - 8, 2)
        d.ellipse([x, y, x + rng.integers(4, 9), y + rng.integers(4, 9)], fill=R.rand_colour(rng))


def render_source(gi: int, k: int, rng: np.random.Generator, rich: bool = False) -> np.ndarray:
    """Concept ``k`` of group ``gi`` in the pre-training style.

    ``rich`` adds the generic nuisances a web-scale pool would contain: textured and scenic backgrounds,
    neighbouring glyphs, objects off-centre and small, distractor blobs (the task styles stay held out: other
    fonts, handwriting, hollow glyphs, false colour, greyscale, warps).
    """
    g = GROUPS[gi].name
    nuis = rng.random() < 0.6
    rot = rng.uniform(-10, 10) if nuis else 0.0
    if g in ("digits", "letters"):
        bg = _background(rng, nuis, rich)
        fg = R.contrasting(rng, bg.getpixel((2, 2)))
        img = R.glyph(GROUPS[gi].concepts[k], rng, "source", bg, fg, rot=rot,
                      dx=int(rng.integers(-4, 5)), dy=int(rng.integers(-4, 5)))
        if rich and nuis and rng.random() < 0.4:  # neighbours, as in a crop of a word or a house number
            for side in (-1, 1):
                other = GROUPS[gi].concepts[int(rng.integers(len(GROUPS[gi].concepts)))]
                img = R.glyph(other, rng, "source", img, fg, dx=side * int(rng.integers(30, 38)))
    elif g == "shapes":
        img = _background(rng, nuis, rich)
        off, rmin = (12, 10) if rich and nuis else (6, 12)
        if rich and nuis and rng.random() < 0.5:
            _blobs(img, rng)
        fg = R.contrasting(rng, img.getpixel((2, 2)))
        r = rng.uniform(rmin, 22)
        R.draw_shape(ImageDraw.Draw(img), R.SHAPES[k], 32 + rng.uniform(-off, off), 32 + rng.uniform(-off, off), r, fg,
                     outline=int(rng.integers(3, 6)) if rng.random() < 0.3 else 0, rot=rng.uniform(0, 6.3) * (k != 1))
    elif g == "textures":
        img = R.texture(R.TEXTURES[k], rng, R.rand_colour(rng), R.rand_colour(rng), warp=rng.uniform(0, 2) if nuis else 0)
    elif g == "signs":
        img = _background(rng, nuis, rich)
        off, rmin = (10, 12) if rich and nuis else (5, 18)
        R.draw_sign(img, R.SIGNS[k], 32 + rng.uniform(-off, off), 32 + rng.uniform(-off, off), rng.uniform(rmin, 27), rng)
        img = img.rotate(rot, resample=Image.BILINEAR)
    elif g == "terrain":
        img = R.terrain(R.TERRAIN[k], rng)
    else:
        img = R.scene(R.SCENES[k], rng)
    if not nuis:
        return R.finish(img, rng)
    return R.finish(img, rng, noise=rng.uniform(0, 10), blur=rng.uniform(0, 0.8) if rng.random() < 0.5 else 0,
                    gains=0.2)


# -- the eight task styles ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _sklearn_digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def digits_hand(split: str, idx: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digits (8×8), upsampled, white on black, jittered."""
    imgs, labels = _sklearn_digits()
    out = np.zeros((len(idx), 3, R.OUT, R.OUT), np.uint8)
    for j, i in enumerate(idx):
        size = int(rng.integers(20, 27))
        glyph = Image.fromarray((imgs[i] * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
        canvas = Image.new("L", (R.OUT, R.OUT), 0)
        off = (R.OUT - size) // 2
        canvas.paste(glyph, (off + int(rng.integers(-2, 3)), off + int(rng.integers(-2, 3))))
        out[j] = np.repeat(np.asarray(canvas)[None], 3, 0)
    return out, labels[idx]


def street(k: int, rng) -> np.ndarray:
    plate = R.rand_colour(rng)
    bg = R.clutter(rng, 10, base=plate)
    fg = tuple(int(0.7 * a + 0.3 * b) for a, b in zip(R.contrasting(rng, plate), plate))  # faded paint
    img = R.glyph(R.DIGITS[k], rng, "task", bg, fg, size=(34, 44), dx=int(rng.integers(-3, 4)))
    for side in (-1, 1):  # partially visible neighbours, as in SVHN crops
        if rng.random() < 0.7:
            img = R.glyph(R.DIGITS[int(rng.integers(10))], rng, "task", img, fg, size=(34, 44),
                          dx=side * int(rng.integers(30, 38)))
    return R.finish(img, rng, noise=8, blur=rng.uniform(0.3, 1.2))


def letters(k: int, rng) -> np.ndarray:
    bg = Image.new("RGB", (R.S, R.S), R.rand_colour(rng))
    fg = R.contrasting(rng, bg.getpixel((0, 0)))
    img = R.glyph(R.LETTERS[k], rng, "task", bg, fg, rot=rng.uniform(-8, 8), shear=rng.uniform(-0.35, 0.35),
                  dx=int(rng.integers(-3, 4)), dy=int(rng.integers(-3, 4)),
                  hollow=2 if rng.random() < 0.5 else 0)
    return R.finish(img, rng, noise=14)


def shapes(k: int, rng) -> np.ndarray:
    """Texture-filled shapes with an outline (the source fills shapes with one colour)."""
    img = R.gradient(rng) if rng.random() < 0.5 else Image.new("RGB", (R.S, R.S), R.rand_colour(rng))
    cx, cy, r = 32 + rng.uniform(-6, 6), 32 + rng.uniform(-6, 6), rng.uniform(15, 21)
    rot = rng.uniform(0, 6.3) * (k != 1)
    mask = Image.new("L", (R.S, R.S), 0)
    R.draw_shape(ImageDraw.Draw(mask), R.SHAPES[k], cx, cy, r, 255, rot=rot)
    fill = R.texture(R.TEXTURES[int(rng.integers(len(R.TEXTURES)))], rng, R.rand_colour(rng), R.rand_colour(rng))
    img.paste(fill, (0, 0), mask)
    R.draw_shape(ImageDraw.Draw(img), R.SHAPES[k], cx, cy, r, R.contrasting(rng, img.getpixel((0, 0))), outline=3, rot=rot)
    return R.finish(img, rng, noise=8)


def textures(k: int, rng) -> np.ndarray:
    """Warped, zoomed-in textures with muted colours."""
    img = R.texture(R.TEXTURES[k], rng, R.rand_colour(rng, 40, 220), R.rand_colour(rng, 40, 220), warp=rng.uniform(2, 4))
    return R.finish(img.resize((80, 80)).crop((8, 8, 72, 72)), rng, noise=10, gains=0.3)


def signs(k: int, rng) -> np.ndarray:
    """Small traffic signs in scenery at night: dark, colour-cast, noisy and blurred."""
    img = R.scene(R.SCENES[int(rng.integers(len(R.SCENES) - 1))], rng)
    R.draw_sign(img, R.SIGNS[k], 32 + rng.uniform(-10, 10), 32 + rng.uniform(-10, 10), rng.uniform(11, 17), rng, "task")
    arr = np.asarray(img).astype(np.float32) * rng.uniform(0.3, 0.55) * np.array([0.8, 0.9, 1.3])  # night, blue cast
    return R.finish(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), rng, noise=10, blur=rng.uniform(0.6, 1.4))


FALSE_COLOUR = (2, 0, 1)  # like EuroSAT's non-RGB bands: a fixed permutation of the channels


def terrain(k: int, rng) -> np.ndarray:
    return R.finish(R.terrain(R.TERRAIN[k], rng), rng, noise=6, perm=FALSE_COLOUR)


_THERMAL = np.array([[0, 0, 4], [80, 18, 123], [190, 55, 82], [250, 140, 10], [252, 255, 164]], np.float32)


def scenes(k: int, rng) -> np.ndarray:
    """Dusk scenes seen by a "thermal camera": brightness mapped through an inferno-like colour map."""
    grey = np.asarray(R.scene(R.SCENES[k], rng, palette=rng.uniform(0.6, 1.0)).convert("L")).astype(np.float32) / 255
    pos = grey * (len(_THERMAL) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_THERMAL) - 2)
    t = (pos - lo)[..., None]
    arr = _THERMAL[lo] * (1 - t) + _THERMAL[lo + 1] * t
    return R.finish(Image.fromarray(arr.astype(np.uint8)), rng, noise=10, blur=0.6)


@dataclass(frozen=True)
class TaskStyle:
    name: str
    group: str
    render: Callable | None  # (k, rng) -> uint8 [3, 32, 32]; None: see ``digits_hand``
    description: str
    templates: tuple[str, ...]


TASK_STYLES = (
    TaskStyle("digits", "digits", None, "handwritten digits (scikit-learn), MNIST-like", ("a photo of the number: \"{}\".",)),
    TaskStyle("street", "digits", street, "faded house-number digits in held-out fonts with distractors, SVHN-like",
              ("a photo of the number: \"{}\".",)),
    TaskStyle("letters", "letters", letters, "letters in held-out fonts, half of them hollow, sheared and noisy",
              ("a photo of the letter {}.",)),
    TaskStyle("shapes", "shapes", shapes, "texture-filled outlined shapes", ("a photo of a {}.",)),
    TaskStyle("textures", "textures", textures, "warped fine-scale textures, DTD-like", ("a photo of a {} texture.",)),
    TaskStyle("signs", "signs", signs, "small traffic signs in scenery at night, GTSRB-like",
              ("a photo of a \"{}\" traffic sign.",)),
    TaskStyle("terrain", "terrain", terrain, "false-colour top-down terrain tiles, EuroSAT-like",
              ("a satellite photo of {}.",)),
    TaskStyle("scenes", "scenes", scenes, "dusk scenes through a thermal-camera colour map, SUN397-like", ("a photo of a {}.",)),
)
