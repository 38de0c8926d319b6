"""Images on disk as lazy uint8 splits, and the seeded split indices every real task uses (method.md §7).

A :class:`Catalog` is one official split of a data set (how to read image ``i``, and all its labels);
:class:`LazySplit` is a :class:`arith.data.Split` look-alike over some of its rows that decodes on demand, with
open_clip's evaluation geometry or, for training, its ``RandomResizedCrop`` drawn from (seed, step, position in
the global batch), so the images are the same whatever the number of DataLoader workers or processes.
:func:`make_partition` holds out the validation rows of a training pool; :func:`fixed_test_holdout` makes a test
split for data sets without one.  The data sets themselves are in :mod:`arith.realsets`, their registry in
:mod:`arith.datasets`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data import Split, split_seed

SPLIT_SEED = 0  # every build holds out the same validation images (stored with the bundle)
VAL_FRACTION, VAL_CAP = 0.1, 5000


# -- geometry ----------------------------------------------------------------------------------------------------
def eval_geometry(img: Image.Image, size: int) -> Image.Image:
    """open_clip's evaluation geometry: resize the shortest side to ``size`` (bicubic), centre-crop."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    img = TF.resize(img, size, interpolation=InterpolationMode.BICUBIC)
    return TF.center_crop(img, [size, size])


def random_resized_crop(img: Image.Image, size: int, rng: np.random.Generator, scale=(0.9, 1.0),
                        ratio=(3 / 4, 4 / 3)) -> Image.Image:
    """open_clip's training crop (torchvision ``RandomResizedCrop`` logic) with draws from ``rng``."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    width, height = img.size
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(rng.integers(0, height - h + 1))
            j = int(rng.integers(0, width - w + 1))
            break
    else:  # fall back to a centre crop of the clamped aspect ratio
        in_ratio = width / height
        if in_ratio < min(ratio):
            w, h = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            h, w = height, int(round(height * max(ratio)))
        else:
            w, h = width, height
        i, j = (height - h) // 2, (width - w) // 2
    return TF.resized_crop(img, i, j, h, w, [size, size], interpolation=InterpolationMode.BICUBIC)


def to_uint8(img: Image.Image) -> torch.Tensor:
    """[3, H, W] uint8 tensor of an RGB image."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


# -- readers: picklable, so DataLoader workers can use them -------------------------------------------------------
class PathReader:
    """Image ``i`` of a list of files, as RGB."""

    def __init__(self, paths: Sequence[str | Path]):
        self.paths = [str(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __call__(self, i: int) -> Image.Image:
        path = self.paths[i]
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, SyntaxError, ValueError) as e:  # PIL: not an image, truncated, a bad header
            raise OSError(f"{path}: cannot read this image ({e})") from None


class ArrayReader:
    """Image ``i`` of a uint8 array: [N, H, W] (grey) or [N, 3, H, W]."""

    def __init__(self, array: np.ndarray):
        self.array = np.ascontiguousarray(array)

    def __len__(self) -> int:
        return len(self.array)

    def __call__(self, i: int) -> Image.Image:
        a = self.array[i]
        return Image.fromarray(a, "L").convert("RGB") if a.ndim == 2 else Image.fromarray(np.moveaxis(a, 0, -1), "RGB")


@dataclass(frozen=True)
class Catalog:
    """One official split of a data set: how to read image ``i`` and all labels (no image decoded)."""

    read: Callable[[int], Image.Image]
    labels: np.ndarray  # int64 [N]
    where: str = ""

    def __len__(self) -> int:
        return len(self.labels)


# -- lazy splits --------------------------------------------------------------------------------------------------
def _workers() -> int:
    """DataLoader workers per process: ``$ARITH_DATA_WORKERS``, else the cores (less one) shared among the
    processes torchrun started on this machine, at most 8."""
    env = os.environ.get("ARITH_DATA_WORKERS")
    if env is not None:
        return max(0, int(env))
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return min(8, max(0, ((os.cpu_count() or 1) - 1) // local))


class _Items(torch.utils.data.Dataset):
    """Decodes (step, position, row) items: row of ``index``, crop drawn from (seed, step, position)."""

    def __init__(self, read, index: np.ndarray, size: int, augment: bool, seed: int):
        self.read, self.index, self.size, self.augment, self.seed = read, index, size, augment, seed

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item):
        step, pos, row = item
        img = self.read(int(self.index[row]))
        if self.augment and step >= 0:
            img = random_resized_crop(img, self.size, np.random.default_rng([self.seed, step, pos]))
        else:
            img = eval_geometry(img, self.size)
        return to_uint8(img)


def _collate(items):
    return torch.stack(items)


class LazyImages:
    """A uint8 ``[N, 3, S, S]`` image array that decodes on indexing (ints, slices, index tensors/arrays)."""

    dtype = torch.uint8
    ndim = 4

    def __init__(self, read, index: np.ndarray, size: int):
        self.read, self.index, self.size = read, np.asarray(index, dtype=np.int64), size
        self._items = _Items(read, self.index, size, augment=False, seed=0)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.index), 3, self.size, self.size)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, (int, np.integer)):
            return self._items[(-1, 0, int(key) % len(self))]
        rows = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(
            key.cpu().numpy() if torch.is_tensor(key) else key, dtype=np.int64).reshape(-1)
        if len(rows) == 0:
            return torch.empty((0, 3, self.size, self.size), dtype=torch.uint8)
        return torch.stack([self._items[(-1, 0, int(r))] for r in rows])


class LazySplit:
    """A :class:`arith.data.Split` look-alike over images on disk: ``images`` (:class:`LazyImages`), ``labels``
    (int64 tensor), ``len``, ``head(n)``, ``materialize()`` and ``stream`` / ``batches`` for training and
    evaluation through DataLoader workers.  ``indices`` are the rows of the official split it holds."""

    def __init__(self, catalog: Catalog, indices: np.ndarray, size: int, name: str = "", workers: int | None = None):
        self.catalog, self.size, self.name = catalog, size, name
        self.indices = np.asarray(indices, dtype=np.int64)
        self.images = LazyImages(catalog.read, self.indices, size)
        self.labels = torch.from_numpy(np.asarray(catalog.labels, dtype=np.int64)[self.indices].copy())
        self.workers = _workers() if workers is None else workers

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return f"LazySplit({self.name!r}, {len(self)} images at {self.size}px)"

    def subset(self, rows: Sequence[int] | np.ndarray) -> LazySplit:
        return LazySplit(self.catalog, self.indices[np.asarray(rows, dtype=np.int64)], self.size, self.name, self.workers)

    def head(self, n: int | None) -> LazySplit:
        return self if n is None or n >= len(self) else self.subset(np.arange(n))

    def materialize(self) -> Split:
        """All images decoded into an in-memory :class:`Split` (for the small evaluation subsets)."""
        images = torch.cat(list(self.batches(256))) if len(self) else torch.empty((0, 3, self.size, self.size),
                                                                                   dtype=torch.uint8)
        return Split(images, self.labels.clone())

    def _loader(self, batch_lists: list[list[tuple[int, int, int]]], augment: bool, seed: int):
        dataset = _Items(self.catalog.read, self.indices, self.size, augment, seed)
        workers = min(self.workers, len(batch_lists))
        return torch.utils.data.DataLoader(dataset, batch_sampler=batch_lists, num_workers=workers,
                                           collate_fn=_collate, pin_memory=torch.cuda.is_available(),
                                           prefetch_factor=4 if workers else None)

    def batches(self, batch_size: int = 256) -> Iterator[torch.Tensor]:
        """uint8 image batches in order, evaluation geometry (labels: ``self.labels`` in the same order)."""
        lists = [[(-1, 0, r) for r in range(i, min(i + batch_size, len(self)))] for i in range(0, len(self), batch_size)]
        yield from self._loader(lists, augment=False, seed=0) if lists else ()

    def stream(self, batches: Iterable[torch.Tensor], *, rank: int = 0, world: int = 1, seed: int = 0,
               augment: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 images, labels) of this rank's share (``[rank::world]``) of each global batch of row indices.

        With ``augment`` each image gets open_clip's ``RandomResizedCrop`` drawn from (seed, step, position in
        the global batch): the same crops in one process or many, with any number of workers.
        """
        lists, labels = [], []
        for step, idx in enumerate(batches):
            rows = idx.tolist()
            mine = [(step, pos, r) for pos, r in enumerate(rows) if pos % world == rank]
            lists.append(mine)
            labels.append(self.labels[[r for _, _, r in mine]])
        yield from zip(self._loader(lists, augment, seed), labels)


# -- split indices (method.md §7) ---------------------------------------------------------------------------------
def holdout_size(n_train: int) -> int:
    """min(10 % of the training pool, 5000), at least one image when there are two or more."""
    return min(VAL_CAP, max(1 if n_train >= 2 else 0, int(round(VAL_FRACTION * n_train))))


def _perm(n: int, task: str, what: str, seed: int = SPLIT_SEED) -> np.ndarray:
    return np.random.default_rng(split_seed(task, what, seed)).permutation(n)


@dataclass(frozen=True)
class Partition:
    """Rows of the official splits: ``train`` and ``val`` index the train pool, ``test`` the test split."""

    train: np.ndarray
    val: np.ndarray  # seeded random order: the first n are the stored evaluation subset
    test: np.ndarray  # seeded random order, likewise


def make_partition(task: str, n_train: int, n_test: int) -> Partition:
    perm = _perm(n_train, task, "val")
    k = holdout_size(n_train)
    return Partition(np.sort(perm[k:]), perm[:k], _perm(n_test, task, "test"))


def fixed_test_holdout(n: int, task: str, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows) of a data set without an official test split: a fixed seeded hold-out."""
    perm = _perm(n, task, "official-test")
    k = max(1, int(round(fraction * n))) if n >= 2 else 0
    return np.sort(perm[k:]), np.sort(perm[:k])


