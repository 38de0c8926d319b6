"""Tasks as a registry of small records, and the image tensors the engine works on.

Images are uint8 ``[N, 3, H, W]`` with int64 labels everywhere (bundles store them so); :meth:`Base.preprocess`
turns them into normalised floats.  A :class:`TaskSource` knows a task's class names, its zero-shot prompt
templates and how to load a split.  The ``synthetic`` family below is tiny, procedural and deterministic: tests
and ``--quick`` builds use it; the embedded default's tasks and the paper's data sets register the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .specs import TaskInfo

SPLITS = ("train", "val", "test")


@dataclass(frozen=True, repr=False)
class Split:
    """uint8 images [N, 3, H, W] and int64 labels [N]."""

    def __repr__(self) -> str:
        return f"Split({len(self)} images {tuple(self.images.shape[1:])}, {len(self.labels.unique())} classes seen)"

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [N, 3, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.ndim != 1 or len(self.labels) != len(self.images):
            raise ValueError("labels must be [N] with one label per image")

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> Split:
        """The first ``n`` examples (all when ``n`` is None): fixed evaluation subsets."""
        return self if n is None or n >= len(self) else Split(self.images[:n], self.labels[:n])


Loader = Callable[..., Split]  # loader(split, *, size, n, seed, root) -> Split


@dataclass(frozen=True)
class TaskSource:
    """One task: names, templates and a loader ``load(split, *, size, n, seed, root) -> Split``."""

    name: str
    classnames: tuple[str, ...]
    loader: Loader
    templates: tuple[str, ...] = ("a photo of a {}.",)
    family: str = "custom"
    description: str = ""
    version: str = ""  # bump when the images a loader makes change (a resumed bundle build then starts over)

    def info(self) -> TaskInfo:
        return TaskInfo(self.name, self.classnames, self.templates, self.description)

    def load(self, split: str, *, size: int = 32, n: int | None = None, seed: int = 0, root: str | None = None) -> Split:
        """The task's ``split`` (train, val or test) at ``size`` pixels, at most ``n`` images (drawn with ``seed``
        where the task draws them), read from ``root`` when the task's images live on disk."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self.loader(split, size=size, n=n, seed=seed, root=root)


TASKS: dict[str, TaskSource] = {}


def register_task(source: TaskSource, *, replace: bool = False) -> TaskSource:
    """Add a task record to the registry (``TASKS``) and return it; every command, page and help text then
    offers it.  A name already registered is refused unless ``replace`` (re-running a notebook cell)."""
    if source.name in TASKS and not replace:
        raise ValueError(f"task {source.name!r} is already registered (replace=True replaces it)")
    TASKS[source.name] = source
    return source


def get_task(name: str) -> TaskSource:
    """The registered task ``name`` (its family modules imported on first need); a ValueError listing the tasks."""
    if name not in TASKS:
        _load_families()
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None


FAMILY_MODULES = ("arith.default.tasks", "arith.datasets")


def _load_families() -> None:
    """Import the modules that register further task families (kept lazy: they pull in fonts, datasets...), then
    one's own extensions (``$ARITH_EXTENSIONS``, :mod:`arith.extensions`)."""
    import importlib

    from .extensions import load_extensions

    for mod in FAMILY_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if not (e.name and mod.startswith(e.name)):
                raise
    load_extensions()


def data_root_setting(given: str | None = None, recorded: str | None = None) -> str | None:
    """Where the data sets are, by one rule everywhere: a root given here (a command's ``--data-root``), else
    ``$ARITH_DATA_ROOT`` (this machine's), else the one a bundle's build recorded (its builder's)."""
    return given or os.environ.get("ARITH_DATA_ROOT") or recorded


def split_seed(task: str, split: str, seed: int) -> int:
    """A stable per-(task, split, seed) integer: splits never share random draws."""
    import zlib

    return zlib.crc32(f"{task}/{split}/{seed}".encode()) & 0x7FFFFFFF


# -- the synthetic family: tiny, learnable in a few dozen steps, for tests and --quick builds -----------------------
_SYNTH_N = {"train": 512, "val": 96, "test": 96}
_COLOURS = np.array([[230, 40, 40], [40, 200, 60], [50, 80, 230], [230, 200, 40]], dtype=np.float32)


def _stripes(img, c, rng, yy, xx, size) -> None:  # orientation of a grating
    phase, freq = rng.uniform(0, 6.28), rng.uniform(3, 5)
    u = [yy, xx, (xx + yy) / 1.41, (xx - yy) / 1.41][c]
    img += 90 * np.sin(6.28 * freq * u + phase)[None]


def _colours(img, c, rng, yy, xx, size) -> None:  # colour of a blob at a random place
    cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.3)
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
    img[:, mask] = _COLOURS[c][:, None] + rng.normal(0, 15, size=(3, 1))


def _quadrants(img, c, rng, yy, xx, size) -> None:  # which quadrant holds the bright square
    qy, qx = divmod(int(c), 2)
    s = size // 2
    y0, x0 = qy * s + rng.integers(0, s // 3 + 1), qx * s + rng.integers(0, s // 3 + 1)
    img[:, y0:y0 + s // 2, x0:x0 + s // 2] = 245


# kind -> (class names, draw(image, class, rng, yy, xx, size) painting one class's pattern onto a noise image in place)
SYNTHETIC = {
    "stripes": (("horizontal stripes", "vertical stripes", "diagonal stripes", "anti-diagonal stripes"), _stripes),
    "colours": (("red blob", "green blob", "blue blob", "yellow blob"), _colours),
    "quadrants": (("top-left square", "top-right square", "bottom-left square", "bottom-right square"), _quadrants),
}


def _synthetic(kind: str) -> Loader:
    names, draw = SYNTHETIC[kind]

    def load(split: str, *, size: int = 32, n: int | None = None, seed: int = 0, root=None) -> Split:
        n = n or _SYNTH_N[split]
        rng = np.random.default_rng(split_seed(f"synthetic-{kind}", split, seed))
        labels = rng.integers(0, len(names), size=n)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        imgs = rng.normal(110, 30, size=(n, 3, size, size)).astype(np.float32)
        for i, c in enumerate(labels):
            draw(imgs[i], int(c), rng, yy, xx, size)
        images = torch.from_numpy(np.clip(imgs, 0, 255).astype(np.uint8))
        return Split(images, torch.from_numpy(labels.astype(np.int64)))

    return load


for _kind, (_names, _) in SYNTHETIC.items():
    register_task(TaskSource(f"synthetic-{_kind}", _names, _synthetic(_kind), ("a picture of a {}.",), "synthetic",
                             f"procedural {_kind} ({len(_names)} classes) for tests and --quick bundles"))
