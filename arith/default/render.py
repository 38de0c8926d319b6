"""Procedural renderers for the embedded default: 78 visual concepts in 7 groups, each in several styles.

Everything is drawn with PIL at 64×64 and downsampled to 32×32, from a ``numpy.random.Generator``, so a
(seed, index) pair always gives the same image.  A renderer takes ``(concept index, rng, style)``; the *source*
styles feed pre-training, the *task* styles (held-out fonts, false colour, warps, clutter...) define the eight
downstream tasks, so zero-shot transfer is possible but imperfect, as for CLIP on the paper's data sets.

Fonts come from Debian packages (see the README, *The embedded default*): source fonts are DejaVu,
Liberation and FreeFont; the held-out task fonts are URW base35.  Missing fonts fall back to Pillow's built-in
font so that the tests' ``--quick`` build still runs (with a warning); the real build requires them.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

S = 64  # drawing canvas; images are downsampled to 32
OUT = 32

DIGITS = tuple("0123456789")
LETTERS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
SHAPES = ("circle", "square", "triangle", "diamond", "star", "hexagon", "cross", "ring")
TEXTURES = ("striped", "chequered", "dotted", "wavy", "grid", "zigzag", "speckled", "concentric")
SIGNS = ("stop", "yield", "no entry", "speed limit 30", "speed limit 50", "ahead only", "turn left",
         "turn right", "warning", "priority road")
TERRAIN = ("forest", "river", "sea", "highway", "residential", "industrial", "pasture", "crop field")
SCENES = ("beach", "forest path", "desert", "mountains", "city skyline", "snowfield", "night sky", "lake at sunset")

SOURCE_FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/truetype/liberation",
                    "/usr/share/fonts/truetype/freefont")
TASK_FONT_DIR = "/usr/share/fonts/opentype/urw-base35"
_EXCLUDE = ("MathTeXGyre", "ExtraLight", "StandardSymbols", "D050000L")


@functools.cache
def font_files(kind: str) -> tuple[str, ...]:
    dirs = SOURCE_FONT_DIRS if kind == "source" else (TASK_FONT_DIR,)
    files = sorted(f for d in dirs for f in glob.glob(f"{d}/*.[ot]tf") if not any(x in f for x in _EXCLUDE))
    if not files:
        warnings.warn(f"no {kind} fonts found in {dirs}; using Pillow's built-in font (install the Debian font "
                      "packages listed in the README for the real default bundle)", stacklevel=2)
    return tuple(files)


def fonts_id() -> str:
    """Which fonts draw the images here (file names and sizes; "none": Pillow's built-in one): part of every cache key
    for drawn data and for the θ0 pre-trained on it, so a cache filled before the font packages were installed is
    not reused after (the images differ)."""
    names = [f"{Path(f).name}:{Path(f).stat().st_size if Path(f).exists() else 0}"  # a package upgrade keeping names
             for kind in ("source", "task") for f in font_files(kind)]
    return hashlib.sha1("\n".join(names).encode()).hexdigest()[:12] if names else "none"


@functools.lru_cache(maxsize=512)
def _font(path: str | None, size: int):
    return ImageFont.truetype(path, size) if path else ImageFont.load_default(size)


def pick_font(kind: str, rng: np.random.Generator, size: int):
    files = font_files(kind)
    return _font(files[rng.integers(len(files))] if files else None, size)


# -- colours and backgrounds ---------------------------------------------------------------------------------------
def rand_colour(rng, lo=0, hi=256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def contrasting(rng, bg) -> tuple[int, int, int]:
    for _ in range(20):
        c = rand_colour(rng)
        if abs(sum(c) - sum(bg)) > 200:
            return c
    return (255, 255, 255) if sum(bg) < 380 else (0, 0, 0)


def clutter(rng, n=12, base=None) -> Image.Image:
    img = Image.new("RGB", (S, S), base or rand_colour(rng))
    d = ImageDraw.Draw(img)
    for _ in range(n):
        x0, y0 = rng.integers(-10, S, 2)
        w, h = rng.integers(6, 30, 2)
        c = rand_colour(rng)
        k = rng.integers(3)
        if k == 0:
            d.rectangle([x0, y0, x0 + w, y0 + h], fill=c)
        elif k == 1:
            d.ellipse([x0, y0, x0 + w, y0 + h], fill=c)
        else:
            d.line([x0, y0, x0 + w, y0 + h], fill=c, width=int(rng.integers(1, 5)))
    return img


def gradient(rng, c0=None, c1=None, vertical=True) -> Image.Image:
    c0, c1 = np.array(c0 or rand_colour(rng), float), np.array(c1 or rand_colour(rng), float)
    t = np.linspace(0, 1, S)[:, None, None] if vertical else np.linspace(0, 1, S)[None, :, None]
    arr = (c0 * (1 - t) + c1 * t) * np.ones((S, S, 1))
    return Image.fromarray(arr.astype(np.uint8))


# -- glyphs ------------------------------------------------------------------------------------------------------------
def glyph(ch: str, rng, fonts: str, bg: Image.Image, colour, size=(38, 52), rot=0.0, shear=0.0, dx=0, dy=0,
          hollow: int = 0):
    """Draw character ``ch`` centred (plus offset) on ``bg`` with optional rotation, shear and a hollow outline
    of width ``hollow``."""
    font = pick_font(fonts, rng, int(rng.integers(*size)))
    layer = Image.new("L", (S, S), 0)
    d = ImageDraw.Draw(layer)
    box = d.textbbox((0, 0), ch, font=font)
    w, h = box[2] - box[0], box[3] - box[1]
    d.text(((S - w) / 2 - box[0] + dx, (S - h) / 2 - box[1] + dy), ch, font=font, fill=0 if hollow else 255,
           stroke_width=hollow, stroke_fill=255)
    if shear:
        layer = layer.transform((S, S), Image.AFFINE, (1, shear, -shear * S / 2, 0, 1, 0), resample=Image.BILINEAR)
    if rot:
        layer = layer.rotate(rot, resample=Image.BILINEAR)
    out = bg.copy()
    out.paste(Image.new("RGB", (S, S), colour), (0, 0), layer)
    return out


# -- shapes ------------------------------------------------------------------------------------------------------------
def _poly(n, cx, cy, r, rot, star=False):
    pts = []
    for i in range(n * (2 if star else 1)):
        rr = r * (0.45 if star and i % 2 else 1.0)
        a = rot + math.pi * 2 * i / (n * (2 if star else 1))
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def draw_shape(d: ImageDraw.ImageDraw, kind: str, cx, cy, r, colour, outline=0, rot=0.0):
    fill, width = (None, outline) if outline else (colour, 0)
    line = colour if outline else None
    if kind == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=line, width=width)
    elif kind == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(3, int(r * 0.35)))
    elif kind == "square":
        d.polygon(_poly(4, cx, cy, r * 1.2, rot + math.pi / 4), fill=fill, outline=line, width=width)
    elif kind == "diamond":
        d.polygon([(cx, cy - r * 1.2), (cx + r * 0.75, cy), (cx, cy + r * 1.2), (cx - r * 0.75, cy)],
                  fill=fill, outline=line, width=width)
    elif kind == "triangle":
        d.polygon(_poly(3, cx, cy, r * 1.2, rot - math.pi / 2), fill=fill, outline=line, width=width)
    elif kind == "star":
        d.polygon(_poly(5, cx, cy, r * 1.25, rot - math.pi / 2, star=True), fill=fill, outline=line, width=width)
    elif kind == "hexagon":
        d.polygon(_poly(6, cx, cy, r * 1.1, rot), fill=fill, outline=line, width=width)
    elif kind == "cross":
        t = r * 0.38
        pts = [(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t), (-r, -t), (-t, -t)]
        c, s = math.cos(rot), math.sin(rot)
        d.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts], fill=fill, outline=line, width=width)


# -- textures ----------------------------------------------------------------------------------------------------------
def texture(kind: str, rng, c0, c1, warp: float = 0.0) -> Image.Image:
    yy, xx = np.mgrid[0:S, 0:S].astype(float)
    if warp:
        ph = rng.uniform(0, 6.3, 2)
        xx, yy = xx + warp * np.sin(yy / 7 + ph[0]), yy + warp * np.sin(xx / 9 + ph[1])
    a = rng.uniform(0, math.pi)
    u = xx * math.cos(a) + yy * math.sin(a)
    v = -xx * math.sin(a) + yy * math.cos(a)
    p = rng.uniform(7, 13)
    if kind == "striped":
        m = (np.sin(2 * math.pi * u / p) > 0)
    elif kind == "chequered":
        m = ((np.floor(u / p) + np.floor(v / p)) % 2) == 0
    elif kind == "dotted":
        m = ((u % p - p / 2) ** 2 + (v % p - p / 2) ** 2) < (p * 0.28) ** 2
    elif kind == "wavy":
        m = np.sin(2 * math.pi * (u + 3 * np.sin(2 * math.pi * v / (2.5 * p))) / p) > 0
    elif kind == "grid":
        m = ((u % p) < p * 0.22) | ((v % p) < p * 0.22)
    elif kind == "zigzag":
        m = np.sin(2 * math.pi * (u + np.abs((v % p) - p / 2)) / p) > 0
    elif kind == "speckled":
        m = rng.random((S, S)) < 0.25
        m = np.kron(m[::2, ::2], np.ones((2, 2), bool))[:S, :S]
    else:  # concentric
        cx, cy = rng.uniform(10, 54, 2)
        m = np.sin(2 * math.pi * np.hypot(xx - cx, yy - cy) / p) > 0
    c0, c1 = np.array(c0, float), np.array(c1, float)
    arr = np.where(m[..., None], c0, c1)
    return Image.fromarray(arr.astype(np.uint8))


# -- signs -------------------------------------------------------------------------------------------------------------
RED, WHITE, BLUE, YELLOW, BLACK = (200, 20, 30), (245, 245, 245), (20, 60, 180), (240, 200, 20), (15, 15, 15)


def _arrow(d, cx, cy, r, direction, colour):
    w = r * 0.22
    if direction == "up":
        d.polygon([(cx - w, cy + r * 0.7), (cx + w, cy + r * 0.7), (cx + w, cy - r * 0.1), (cx + 2.2 * w, cy - r * 0.1),
                   (cx, cy - r * 0.75), (cx - 2.2 * w, cy - r * 0.1), (cx - w, cy - r * 0.1)], fill=colour)
    else:
        s = -1 if direction == "left" else 1
        d.polygon([(cx - s * r * 0.1, cy + r * 0.7), (cx + s * w - s * r * 0.1, cy + r * 0.7), (cx + s * w - s * r * 0.1, cy),
                   (cx + s * r * 0.2, cy), (cx + s * r * 0.2, cy + w * 1.3), (cx + s * r * 0.75, cy - w * 0.6),
                   (cx + s * r * 0.2, cy - w * 2.5), (cx + s * r * 0.2, cy - w * 1.3), (cx - s * r * 0.1, cy - w * 1.3)],
                  fill=colour)


def draw_sign(img: Image.Image, kind: str, cx, cy, r, rng, fonts="source"):
    d = ImageDraw.Draw(img)
    if kind == "stop":
        d.polygon(_poly(8, cx, cy, r, math.pi / 8), fill=RED)
        d.polygon(_poly(8, cx, cy, r * 0.85, math.pi / 8), outline=WHITE, width=2)
        f = pick_font(fonts, rng, max(8, int(r * 0.55)))
        d.text((cx, cy), "STOP", font=f, fill=WHITE, anchor="mm")
    elif kind == "yield":
        d.polygon(_poly(3, cx, cy, r * 1.1, math.pi / 2), fill=RED)
        d.polygon(_poly(3, cx, cy - r * 0.05, r * 0.6, math.pi / 2), fill=WHITE)
    elif kind == "no entry":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=RED)
        d.rectangle([cx - r * 0.7, cy - r * 0.18, cx + r * 0.7, cy + r * 0.18], fill=WHITE)
    elif kind.startswith("speed limit"):
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=RED)
        d.ellipse([cx - r * 0.75, cy - r * 0.75, cx + r * 0.75, cy + r * 0.75], fill=WHITE)
        f = pick_font(fonts, rng, max(8, int(r * 0.8)))
        d.text((cx, cy), kind.split()[-1], font=f, fill=BLACK, anchor="mm")
    elif kind in ("ahead only", "turn left", "turn right"):
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=BLUE)
        _arrow(d, cx, cy, r, {"ahead only": "up", "turn left": "left", "turn right": "right"}[kind], WHITE)
    elif kind == "warning":
        d.polygon(_poly(3, cx, cy + r * 0.1, r * 1.15, -math.pi / 2), fill=RED)
        d.polygon(_poly(3, cx, cy + r * 0.2, r * 0.75, -math.pi / 2), fill=WHITE)
        f = pick_font(fonts, rng, max(8, int(r * 0.8)))
        d.text((cx, cy + r * 0.2), "!", font=f, fill=BLACK, anchor="mm")
    else:  # priority road
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=WHITE)
        d.polygon([(cx, cy - r * 0.7), (cx + r * 0.7, cy), (cx, cy + r * 0.7), (cx - r * 0.7, cy)], fill=YELLOW)


# -- terrain (top-down tiles) and scenes (side views) ------------------------------------------------------------------
def terrain(kind: str, rng) -> Image.Image:
    def jit(c, a=20):
        return tuple(int(np.clip(v + rng.integers(-a, a + 1), 0, 255)) for v in c)

    noise = rng.normal(0, 1, (S // 4, S // 4))
    big = np.kron(noise, np.ones((4, 4)))
    if kind == "forest":
        base = np.array(jit((30, 90, 35)), float)
        arr = base + 25 * big[..., None] + rng.normal(0, 12, (S, S, 1))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    elif kind == "sea":
        base = np.array(jit((20, 60, 130)), float)
        arr = base + 8 * big[..., None] + rng.normal(0, 4, (S, S, 1))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    elif kind == "pasture":
        base = np.array(jit((110, 150, 60)), float)
        img = Image.fromarray(np.clip(base + 10 * big[..., None], 0, 255).astype(np.uint8))
    elif kind == "crop field":
        img = Image.new("RGB", (S, S))
        d = ImageDraw.Draw(img)
        a, p = rng.uniform(0, math.pi), rng.integers(5, 10)
        cols = [jit((150, 130, 60)), jit((90, 140, 50)), jit((170, 160, 90))]
        for i in range(-S, 2 * S, p):
            c = cols[(i // p) % 3]
            dx, dy = math.cos(a) * 2 * S, math.sin(a) * 2 * S
            d.line([(i - dx, -dy + i * 0), (i + dx, dy)], fill=c, width=int(p))
    else:
        img = Image.fromarray(np.clip(np.array(jit((100, 130, 70)), float) + 10 * big[..., None], 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(img)
        if kind == "river":
            pts = [(x, S / 2 + 12 * math.sin(x / 10 + rng.uniform(0, 6)) + rng.uniform(-6, 6)) for x in range(-4, S + 8, 8)]
            d.line(pts, fill=jit((40, 80, 150)), width=int(rng.integers(6, 12)))
        elif kind == "highway":
            y = rng.integers(16, 48)
            d.rectangle([0, y - 6, S, y + 6], fill=jit((110, 110, 110), 10))
            for x in range(0, S, 10):
                d.line([(x, y), (x + 5, y)], fill=(230, 230, 230), width=1)
            img = img.rotate(rng.uniform(0, 180), resample=Image.BILINEAR, fillcolor=jit((100, 130, 70)))
        elif kind == "residential":
            for _ in range(14):
                x, y = rng.integers(0, S - 8, 2)
                d.rectangle([x, y, x + rng.integers(5, 9), y + rng.integers(5, 9)], fill=jit((180, 80, 70), 40))
        else:  # industrial
            for _ in range(5):
                x, y = rng.integers(0, S - 16, 2)
                d.rectangle([x, y, x + rng.integers(12, 24), y + rng.integers(10, 20)], fill=jit((170, 170, 175), 25))
    return img


def scene(kind: str, rng, palette: float = 0.0) -> Image.Image:
    def jit(c, a=18):
        return tuple(int(np.clip(v + rng.integers(-a, a + 1), 0, 255)) for v in c)

    h = int(rng.integers(24, 42))  # horizon
    if kind == "night sky":
        img = gradient(rng, jit((5, 5, 30)), jit((20, 20, 60)))
        d = ImageDraw.Draw(img)
        for _ in range(25):
            x, y = rng.integers(0, S, 2)
            d.point((x, y), fill=(255, 255, 230))
        d.ellipse([44, 6, 54, 16], fill=(240, 240, 200))
        d.rectangle([0, h + 10, S, S], fill=jit((10, 10, 15)))
        return img
    sky = {"beach": (120, 180, 240), "forest path": (150, 190, 230), "desert": (200, 210, 240),
           "mountains": (130, 170, 220), "city skyline": (160, 170, 190), "snowfield": (200, 210, 225),
           "lake at sunset": (240, 140, 80)}[kind]
    img = gradient(rng, jit(sky), jit(tuple(min(255, v + 40) for v in sky)))
    d = ImageDraw.Draw(img)
    if kind == "beach":
        d.rectangle([0, h, S, h + 10], fill=jit((30, 100, 170)))
        d.rectangle([0, h + 10, S, S], fill=jit((225, 200, 140)))
    elif kind == "forest path":
        d.rectangle([0, h, S, S], fill=jit((40, 100, 40)))
        for _ in range(7):
            x = rng.integers(0, S)
            d.polygon([(x, h - rng.integers(14, 26)), (x - 7, h + 4), (x + 7, h + 4)], fill=jit((20, 70, 30)))
        d.polygon([(S / 2 - 3, h + 2), (S / 2 + 3, h + 2), (S / 2 + 16, S), (S / 2 - 16, S)], fill=jit((140, 110, 70)))
    elif kind == "desert":
        d.rectangle([0, h, S, S], fill=jit((220, 180, 110)))
        for _ in range(3):
            x = rng.integers(-10, S)
            d.ellipse([x, h - 6, x + 40, h + 14], fill=jit((210, 165, 95)))
        d.ellipse([8, 6, 18, 16], fill=(255, 240, 150))
    elif kind == "mountains":
        d.rectangle([0, h, S, S], fill=jit((70, 110, 60)))
        for _ in range(3):
            x, top = rng.integers(-10, S), rng.integers(4, h - 6)
            d.polygon([(x - 24, h), (x, top), (x + 24, h)], fill=jit((100, 100, 110)))
            d.polygon([(x - 6, top + 6), (x, top), (x + 6, top + 6)], fill=(240, 240, 245))
    elif kind == "city skyline":
        d.rectangle([0, h, S, S], fill=jit((60, 60, 65)))
        x = 0
        while x < S:
            w, top = rng.integers(5, 12), rng.integers(6, h)
            d.rectangle([x, top, x + w, h], fill=jit((70, 75, 90), 30))
            for wy in range(int(top) + 3, h - 2, 5):
                d.point((x + 2, wy), fill=(250, 230, 150))
            x += w + 1
    elif kind == "snowfield":
        d.rectangle([0, h, S, S], fill=jit((235, 240, 250), 10))
        for _ in range(3):
            x = rng.integers(0, S)
            d.polygon([(x, h - 12), (x - 5, h + 2), (x + 5, h + 2)], fill=jit((30, 60, 40)))
    else:  # lake at sunset
        d.ellipse([24, h - 10, 40, h + 6], fill=(255, 200, 90))
        d.rectangle([0, h, S, S], fill=jit((60, 50, 100)))
        for y in range(h + 3, S, 4):
            d.line([(20, y), (44, y)], fill=jit((220, 140, 80)), width=1)
    if palette:
        arr = np.asarray(img).astype(float)
        tint = np.array([1.0 + 0.3 * palette, 0.8, 0.6 + 0.2 * palette])
        arr = arr * tint * 0.75 + rng.normal(0, 6, arr.shape)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return img


# -- nuisances and output -------------------------------------------------------------------------------------------
def finish(img: Image.Image, rng, noise: float = 0.0, blur: float = 0.0, gains: float = 0.0,
           perm: tuple[int, int, int] | None = None) -> np.ndarray:
    """Blur, downsample to 32×32, per-channel gains, channel permutation and noise → uint8 [3, 32, 32]."""
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    arr = np.asarray(img.resize((OUT, OUT), Image.LANCZOS)).astype(np.float32)
    if gains:
        arr = arr * rng.uniform(1 - gains, 1 + gains, 3)
    if perm is not None:
        arr = arr[..., list(perm)]
    if noise:
        arr = arr + rng.normal(0, noise, arr.shape)
    return np.clip(arr, 0, 255).astype(np.uint8).transpose(2, 0, 1)
