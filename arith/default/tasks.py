"""The embedded default's eight tasks and its pre-training pool, registered as task sources.

Splits are generated deterministically from (task, split, seed); the scikit-learn digits are split once with a
seeded permutation (256 test, 256 validation, the rest train).  Generated arrays are cached on disk under
``$ARITH_DATA_CACHE`` (default ``.cache/default-data``) so repeated builds skip the drawing.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from ..data import Split, TaskSource, register_task, split_seed
from . import concepts as C

TRAIN_N, EVAL_N = 6000, 256
TASK_VERSION, POOL_VERSION = "12", "3"  # bump when a renderer changes


def _cache_dir() -> Path | None:
    d = os.environ.get("ARITH_DATA_CACHE", str(Path(__file__).resolve().parents[2] / ".cache" / "default-data"))
    return None if d in ("", "0", "off") else Path(d)


def cached(key: str, make):
    """``make()`` -> (images, labels) arrays, memoised on disk by ``key``."""
    from .render import fonts_id

    d = _cache_dir()
    key = f"{key}|fonts:{fonts_id()}"  # images drawn with other fonts are other images
    path = d / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz" if d else None
    if path is not None and path.exists():
        with np.load(path) as z:
            return z["images"], z["labels"]
    images, labels = make()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, images=images, labels=labels)
        os.replace(tmp, path)
    return images, labels


def _digits_split(split: str, seed: int = 0) -> np.ndarray:
    """Indices of scikit-learn's 1,797 digits in ``split``.  The partition is fixed (``seed`` is ignored), so
    training data loaded with any seed (``finetune --seed``, the Train page) never includes a stored test image."""
    del seed
    n = len(C._sklearn_digits()[1])
    perm = np.random.default_rng(split_seed("digits", "perm", 0)).permutation(n)
    return {"test": perm[:EVAL_N], "val": perm[EVAL_N:2 * EVAL_N], "train": perm[2 * EVAL_N:]}[split]


def _loader(style: C.TaskStyle):
    ncls = len(next(g for g in C.GROUPS if g.name == style.group).concepts)

    def load(split: str, *, size: int = 32, n: int | None = None, seed: int = 0, root=None) -> Split:
        if size != 32:
            raise ValueError(f"the default tasks are 32×32, not {size}")
        count = n or (TRAIN_N if split == "train" else EVAL_N)

        def make():
            rng = np.random.default_rng(split_seed(style.name, split, seed))
            if style.render is None:
                idx = _digits_split(split, seed)
                if n is not None:
                    idx = idx[:n]
                return C.digits_hand(split, idx, rng)
            labels = rng.integers(0, ncls, count)
            return np.stack([style.render(int(k), rng) for k in labels]), labels.astype(np.int64)

        images, labels = cached(f"task{TASK_VERSION}/{style.name}/{split}/{seed}/{count}", make)
        return Split(torch.from_numpy(images), torch.from_numpy(labels))

    return load


for _style in C.TASK_STYLES:
    _group = next(g for g in C.GROUPS if g.name == _style.group)
    register_task(TaskSource(_style.name, _group.names, _loader(_style), _style.templates, "default", _style.description,
                             TASK_VERSION))

DEFAULT_TASKS = tuple(s.name for s in C.TASK_STYLES)


def source_pool(n: int, seed: int = 0, rich: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pre-training images in the source style, concepts drawn uniformly: (uint8 [n,3,32,32], concept ids).
    ``rich`` adds generic nuisances (see :func:`concepts.render_source`)."""

    def make():
        rng = np.random.default_rng(split_seed("source-pool", "train", seed))
        concepts = rng.integers(0, len(C.CONCEPTS), n)
        gidx = C.GROUP_OF[concepts]
        first = {gi: int(np.argmax(C.GROUP_OF == gi)) for gi in range(len(C.GROUPS))}
        imgs = np.stack([C.render_source(int(g), int(c) - first[int(g)], rng, rich) for c, g in zip(concepts, gidx)])
        return imgs, concepts.astype(np.int64)

    return cached(f"{POOL_VERSION}pool/{n}/{seed}" + ("/rich1" if rich else ""), make)
