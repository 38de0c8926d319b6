"""The paper's eight data sets and custom image folders, read from a data root (the ``real`` task family).

Names: ``cars``, ``dtd``, ``eurosat``, ``gtsrb``, ``mnist``, ``resisc45``, ``sun397``, ``svhn`` (method.md §7), plus
``folder:/path`` custom tasks (:func:`folder_task`).  Each has its class names and the CLIP prompt templates of
the task-vectors / tangent-space papers (CLIP's own per-data-set templates).  Folder layouts under the data root
are torchvision's (what ``torchvision.datasets.X(root, download=True)`` writes) where torchvision has the data
set, and documented ones otherwise (:data:`LAYOUTS`); a missing or incomplete folder raises a
``FileNotFoundError`` naming the expected layout.

Splits (method.md §7, fixed for every build: ``SPLIT_SEED``):

* train pool = the official training split (DTD: train + val; EuroSAT, RESISC45 without split files and custom
  folders without ``train/``/``test/``: all images minus a fixed seeded test hold-out);
* val = a seeded random hold-out of min(10 % of the train pool, 5000) images, never trained on;
* test = the official test split; bundles store a seeded random fixed subset of ``n`` images (256 by default) of
  val and test for interactive evaluation, and ``python -m arith evaluate-full`` streams all of it.
  :func:`split_record` gives the indices (stored in a bundle's ``results/splits.json``).

Images are uint8 ``[N, 3, S, S]`` at the encoder's size S with open_clip's evaluation geometry (resize the
shortest side to S, bicubic; centre crop); normalisation happens in :meth:`arith.models.Base.preprocess`.
Training splits are :class:`LazySplit` views that decode images on demand, so SUN397's ~100k images never sit in
memory; :func:`arith.finetune.finetune` streams them through ``LazySplit.stream`` (DataLoader workers, this
rank's share only) with open_clip's training augmentation (``RandomResizedCrop(S, scale=(0.9, 1))``, bicubic)
when the run's ``augment`` is on.  Its random draws come from (seed, step, position in the global batch), so
the images are the same whatever the number of workers or processes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data import Split, TaskSource, register_task, split_seed

SPLIT_SEED = 0  # every build holds out the same validation images (stored with the bundle)
VAL_FRACTION, VAL_CAP = 0.1, 5000
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# -- templates (CLIP's per-data-set prompts, as used by the task-vectors and tangent-space papers) ----------------
TEMPLATES: dict[str, tuple[str, ...]] = {
    "cars": ("a photo of a {}.", "a photo of the {}.", "a photo of my {}.", "i love my {}!", "a photo of my dirty {}.",
             "a photo of my clean {}.", "a photo of my new {}.", "a photo of my old {}."),
    "dtd": ("a photo of a {} texture.", "a photo of a {} pattern.", "a photo of a {} thing.", "a photo of a {} object.",
            "a photo of the {} texture.", "a photo of the {} pattern.", "a photo of the {} thing.",
            "a photo of the {} object."),
    "eurosat": ("a centered satellite photo of {}.", "a centered satellite photo of a {}.",
                "a centered satellite photo of the {}."),
    "gtsrb": ('a zoomed in photo of a "{}" traffic sign.', 'a centered photo of a "{}" traffic sign.',
              'a close up photo of a "{}" traffic sign.'),
    "mnist": ('a photo of the number: "{}".',),
    "resisc45": tuple(f"{kind} {what} {{}}." for what in ("of", "of a", "of the")
                      for kind in ("satellite imagery", "aerial imagery", "satellite photo", "aerial photo",
                                   "satellite view", "aerial view")),
    "sun397": ("a photo of a {}.", "a photo of the {}."),
    "svhn": ('a photo of the number: "{}".',),
}
FOLDER_TEMPLATES = ("a photo of a {}.",)

# -- class names -------------------------------------------------------------------------------------------------
DIGITS = tuple(str(i) for i in range(10))
DTD_CLASSES = (
    "banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed", "cracked", "crosshatched",
    "crystalline", "dotted", "fibrous", "flecked", "freckled", "frilly", "gauzy", "grid", "grooved", "honeycombed",
    "interlaced", "knitted", "lacelike", "lined", "marbled", "matted", "meshed", "paisley", "perforated", "pitted",
    "pleated", "polka-dotted", "porous", "potholed", "scaly", "smeared", "spiralled", "sprinkled", "stained",
    "stratified", "striped", "studded", "swirly", "veined", "waffled", "woven", "wrinkled", "zigzagged")
EUROSAT_FOLDERS = ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
                   "PermanentCrop", "Residential", "River", "SeaLake")
EUROSAT_CLASSES = ("annual crop land", "forest", "brushland or shrubland", "highway or road",
                   "industrial buildings or commercial buildings", "pasture land", "permanent crop land",
                   "residential buildings or homes or apartments", "river", "lake or sea")
GTSRB_CLASSES = (
    "red and white circle 20 kph speed limit", "red and white circle 30 kph speed limit",
    "red and white circle 50 kph speed limit", "red and white circle 60 kph speed limit",
    "red and white circle 70 kph speed limit", "red and white circle 80 kph speed limit",
    "end / de-restriction of 80 kph speed limit", "red and white circle 100 kph speed limit",
    "red and white circle 120 kph speed limit", "red and white circle red car and black car no passing",
    "red and white circle red truck and black car no passing", "red and white triangle road intersection warning",
    "white and yellow diamond priority road", "red and white upside down triangle yield right-of-way", "stop",
    "empty red and white circle", "red and white circle no truck entry", "red circle with white horizonal stripe no entry",
    "red and white triangle with exclamation mark warning",
    "red and white triangle with black left curve approaching warning",
    "red and white triangle with black right curve approaching warning",
    "red and white triangle with black double curve approaching warning",
    "red and white triangle rough / bumpy road warning", "red and white triangle car skidding / slipping warning",
    "red and white triangle with merging / narrow lanes warning",
    "red and white triangle with person digging / construction / road work warning",
    "red and white triangle with traffic light approaching warning", "red and white triangle with person walking warning",
    "red and white triangle with child and person walking warning", "red and white triangle with bicyle warning",
    "red and white triangle with snowflake / ice warning", "red and white triangle with deer warning",
    "white circle with gray strike bar no speed limit", "blue circle with white right turn arrow mandatory",
    "blue circle with white left turn arrow mandatory", "blue circle with white forward arrow mandatory",
    "blue circle with white forward or right turn arrow mandatory",
    "blue circle with white forward or left turn arrow mandatory", "blue circle with white keep right arrow mandatory",
    "blue circle with white keep left arrow mandatory", "blue circle with white arrows indicating a traffic circle",
    "white circle with gray strike bar indicating no passing for cars has ended",
    "white circle with gray strike bar indicating no passing for trucks has ended")
RESISC45_FOLDERS = (
    "airplane", "airport", "baseball_diamond", "basketball_court", "beach", "bridge", "chaparral", "church",
    "circular_farmland", "cloud", "commercial_area", "dense_residential", "desert", "forest", "freeway", "golf_course",
    "ground_track_field", "harbor", "industrial_area", "intersection", "island", "lake", "meadow",
    "medium_residential", "mobile_home_park", "mountain", "overpass", "palace", "parking_lot", "railway",
    "railway_station", "rectangular_farmland", "river", "roundabout", "runway", "sea_ice", "ship", "snowberg",
    "sparse_residential", "stadium", "storage_tank", "tennis_court", "terrace", "thermal_power_station", "wetland")

# -- expected folder layouts (shown when a folder is missing) -----------------------------------------------------
LAYOUTS: dict[str, str] = {
    "mnist": "ROOT/MNIST/raw/{train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
             "t10k-labels-idx1-ubyte}  (torchvision.datasets.MNIST(ROOT, download=True))",
    "svhn": "ROOT/svhn/{train_32x32.mat, test_32x32.mat}  (torchvision.datasets.SVHN(ROOT/svhn, split, download=True); "
            "needs scipy)",
    "gtsrb": "ROOT/gtsrb/GTSRB/Training/000NN/*.ppm, ROOT/gtsrb/GTSRB/Final_Test/Images/*.ppm and "
             "ROOT/gtsrb/GT-final_test.csv  (torchvision.datasets.GTSRB(ROOT, split, download=True))",
    "dtd": "ROOT/dtd/dtd/images/<class>/*.jpg and ROOT/dtd/dtd/labels/{train1,val1,test1}.txt  "
           "(torchvision.datasets.DTD(ROOT, download=True)); train pool = train1 + val1, test = test1",
    "eurosat": "ROOT/eurosat/2750/<AnnualCrop|Forest|...>/*.jpg  (torchvision.datasets.EuroSAT(ROOT, download=True); "
               "test = a fixed seeded 10 % of it), or ROOT/EuroSAT_splits/{train,test}/<class>/*.jpg",
    "cars": "ROOT/stanford_cars/{cars_train,cars_test}/*.jpg, ROOT/stanford_cars/devkit/{cars_meta.mat, "
            "cars_train_annos.mat} and ROOT/stanford_cars/cars_test_annos_withlabels.mat  "
            "(torchvision.datasets.StanfordCars layout; its download is broken upstream: fetch the files by hand; "
            "needs scipy)",
    "resisc45": "ROOT/resisc45/NWPU-RESISC45/<class>/*.jpg, optionally ROOT/resisc45/resisc45-{train,test}.txt "
                "(file names per split, as in torchgeo / the task-vectors repo; without them test = a fixed seeded 20 %)",
    "sun397": "ROOT/SUN397/ClassName.txt, ROOT/SUN397/<letter>/<class>/.../sun_*.jpg (torchvision.datasets.SUN397) "
              "and the official partition ROOT/SUN397/{Training_01.txt, Testing_01.txt} (Partitions.zip; also read "
              "from ROOT/SUN397/Partitions/)",
    "folder": "PATH/<class>/*.jpg (test = a fixed seeded 20 %), or PATH/train/<class>/*.jpg and "
              "PATH/test/<class>/*.jpg (an ImageFolder tree; class names are the folder names)",
}


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
        with Image.open(self.paths[i]) as im:
            return im.convert("RGB")


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


# -- catalogs per data set ----------------------------------------------------------------------------------------
def _check_labels(task: str, labels: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise FileNotFoundError(f"no images found in {where}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise FileNotFoundError(f"labels outside 0..{num_classes - 1} in {where}")
    return labels


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _class_folders(root: Path, known: Sequence[str] | None = None) -> dict[str, list[Path]]:
    """{class folder name: sorted image files} of an ImageFolder tree (only ``known`` folders when given)."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    out = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if known is not None and d.name not in known:
            raise FileNotFoundError(f"{d}: unexpected class folder {d.name!r}")
        out[d.name] = _image_files(d)
    if not out:
        raise FileNotFoundError(f"{root} has no class folders")
    return out


def _folder_catalog(root: Path, classes: Sequence[str], task: str) -> Catalog:
    folders = _class_folders(root, classes)
    paths, labels = [], []
    for name, files in folders.items():
        paths += files
        labels += [classes.index(name)] * len(files)
    return Catalog(PathReader(paths), _check_labels(task, np.array(labels), len(classes), str(root)), str(root))


def _subset(cat: Catalog, rows: np.ndarray, where: str) -> Catalog:
    rows = np.asarray(rows, dtype=np.int64)
    reader = cat.read
    if isinstance(reader, PathReader):
        return Catalog(PathReader([reader.paths[r] for r in rows]), cat.labels[rows], where)
    if isinstance(reader, ArrayReader):
        return Catalog(ArrayReader(reader.array[rows]), cat.labels[rows], where)
    raise TypeError("cannot take a subset of this reader")


def _mnist(root: Path) -> dict[str, Catalog]:
    from torchvision.datasets import MNIST

    out = {}
    for split in ("train", "test"):
        ds = MNIST(str(root), train=split == "train", download=False)
        where = f"{root}/MNIST/raw ({split})"
        out[split] = Catalog(ArrayReader(ds.data.numpy()), _check_labels("mnist", ds.targets.numpy(), 10, where), where)
    return out


def _svhn(root: Path) -> dict[str, Catalog]:
    import scipy.io as sio

    out = {}
    for split in ("train", "test"):
        path = root / "svhn" / f"{split}_32x32.mat"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing")
        mat = sio.loadmat(str(path))
        data = np.transpose(mat["X"], (3, 2, 0, 1))  # [32, 32, 3, N] -> [N, 3, 32, 32], as torchvision's SVHN
        labels = mat["y"].astype(np.int64).squeeze(-1) % 10  # the digit 0 is stored as 10
        out[split] = Catalog(ArrayReader(data), _check_labels("svhn", labels, 10, str(path)), str(path))
    return out


def _gtsrb(root: Path) -> dict[str, Catalog]:
    from torchvision.datasets import GTSRB

    out = {}
    for split in ("train", "test"):
        ds = GTSRB(str(root), split=split, download=False)
        paths = [p for p, _ in ds._samples]
        if split == "train":  # label = the class folder (00000..00042), whatever folders exist
            labels = [int(Path(p).parent.name) for p in paths]
        else:
            labels = [c for _, c in ds._samples]
        where = f"{root}/gtsrb ({split})"
        out[split] = Catalog(PathReader(paths), _check_labels("gtsrb", np.array(labels), 43, where), where)
    return out


def _dtd(root: Path) -> dict[str, Catalog]:
    from torchvision.datasets import DTD

    parts = {}
    for split in ("train", "val", "test"):
        ds = DTD(str(root), split=split, partition=1, download=False)
        paths = [str(p) for p in ds._image_files]
        unknown = sorted({Path(p).parent.name for p in paths} - set(DTD_CLASSES))
        if unknown:
            raise FileNotFoundError(f"unknown DTD classes {unknown[:3]}")
        labels = np.array([DTD_CLASSES.index(Path(p).parent.name) for p in paths])
        parts[split] = (paths, labels)
    where = f"{root}/dtd/dtd"
    train_paths, train_labels = parts["train"][0] + parts["val"][0], np.concatenate([parts["train"][1], parts["val"][1]])
    return {"train": Catalog(PathReader(train_paths), _check_labels("dtd", train_labels, 47, where), where + " (train1+val1)"),
            "test": Catalog(PathReader(parts["test"][0]), _check_labels("dtd", parts["test"][1], 47, where), where + " (test1)")}


def _eurosat(root: Path) -> dict[str, Catalog]:
    split_root = root / "EuroSAT_splits"
    if (split_root / "train").is_dir() and (split_root / "test").is_dir():
        return {s: _folder_catalog(split_root / s, EUROSAT_FOLDERS, "eurosat") for s in ("train", "test")}
    from torchvision.datasets import EuroSAT

    ds = EuroSAT(str(root), download=False)
    paths = [p for p, _ in ds.samples]
    unknown = sorted({Path(p).parent.name for p in paths} - set(EUROSAT_FOLDERS))
    if unknown:
        raise FileNotFoundError(f"unknown EuroSAT classes {unknown[:3]}")
    where = f"{root}/eurosat/2750"
    labels = _check_labels("eurosat", np.array([EUROSAT_FOLDERS.index(Path(p).parent.name) for p in paths]), 10, where)
    whole = Catalog(PathReader(paths), labels, where)
    train, test = fixed_test_holdout(len(whole), "eurosat", 0.1)
    return {"train": _subset(whole, train, where + " (90 %)"), "test": _subset(whole, test, where + " (fixed 10 %)")}


def cars_classnames(root: Path) -> tuple[str, ...]:
    import scipy.io as sio

    meta = root / "stanford_cars" / "devkit" / "cars_meta.mat"
    if not meta.is_file():
        raise FileNotFoundError(f"{meta} is missing")
    names = sio.loadmat(str(meta), squeeze_me=True)["class_names"].tolist()
    return tuple(str(n).replace("_", " ") for n in np.atleast_1d(names))


def _cars(root: Path) -> dict[str, Catalog]:
    from torchvision.datasets import StanfordCars

    n = len(cars_classnames(root))
    out = {}
    for split in ("train", "test"):
        try:
            ds = StanfordCars(str(root), split=split, download=False)
        except RuntimeError as e:
            raise FileNotFoundError(str(e)) from None
        where = f"{root}/stanford_cars ({split})"
        out[split] = Catalog(PathReader([p for p, _ in ds._samples]),
                             _check_labels("cars", np.array([c for _, c in ds._samples]), n, where), where)
    return out


def _resisc45(root: Path) -> dict[str, Catalog]:
    base = root / "resisc45"
    where = f"{base}/NWPU-RESISC45"
    whole = _folder_catalog(base / "NWPU-RESISC45", RESISC45_FOLDERS, "resisc45")
    lists = {s: base / f"resisc45-{s}.txt" for s in ("train", "test")}
    if all(p.is_file() for p in lists.values()):
        names = [Path(p).name for p in whole.read.paths]
        out = {}
        for s, path in lists.items():
            wanted = {line.strip() for line in path.read_text().splitlines() if line.strip()}
            rows = np.array([i for i, nm in enumerate(names) if nm in wanted], dtype=np.int64)
            if len(rows) == 0:
                raise FileNotFoundError(f"none of the files listed in {path} is under {where}")
            out[s] = _subset(whole, rows, f"{where} ({path.name})")
        return out
    train, test = fixed_test_holdout(len(whole), "resisc45", 0.2)
    return {"train": _subset(whole, train, where + " (80 %)"), "test": _subset(whole, test, where + " (fixed 20 %)")}


def _sun397_classes(data: Path) -> list[str]:
    path = data / "ClassName.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def sun397_classnames(root: Path) -> tuple[str, ...]:
    """'/a/apartment_building/outdoor' -> 'apartment building outdoor'."""
    return tuple(re.sub(r"[_/]", " ", c[3:]) for c in _sun397_classes(root / "SUN397"))


def _sun397(root: Path) -> dict[str, Catalog]:
    data = root / "SUN397"
    classes = {c: i for i, c in enumerate(_sun397_classes(data))}
    out = {}
    for split, fname in (("train", "Training_01.txt"), ("test", "Testing_01.txt")):
        path = next((p for p in (data / fname, data / "Partitions" / fname) if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(f"{data / fname} (the official partition) is missing")
        paths, labels = [], []
        for line in path.read_text().splitlines():
            rel = line.strip()
            if not rel:
                continue
            cls = "/".join(rel.split("/")[:-1])
            if cls not in classes:
                raise FileNotFoundError(f"{path}: {rel!r} is not under a class of ClassName.txt")
            paths.append(data.joinpath(*rel.lstrip("/").split("/")))
            labels.append(classes[cls])
        missing = [p for p in paths[:50] if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{missing[0]} (listed in {path.name}) is missing")
        where = f"{data} ({fname})"
        out[split] = Catalog(PathReader(paths), _check_labels("sun397", np.array(labels), len(classes), where), where)
    return out


# -- the registry --------------------------------------------------------------------------------------------------
_CACHE: dict[tuple[str, str], dict[str, Catalog]] = {}
_CACHE_LOCK = threading.Lock()


def data_root(root: str | os.PathLike | None, task: str) -> Path:
    root = root or os.environ.get("ARITH_DATA_ROOT")
    if not root:
        raise FileNotFoundError(f"task {task!r} reads its images from a data root: pass --data-root DIR (or set "
                                f"$ARITH_DATA_ROOT); expected layout: {LAYOUTS.get(task, LAYOUTS['folder'])}")
    return Path(root).expanduser()


@dataclass(frozen=True)
class RealTask(TaskSource):
    """A task whose images live on disk.  ``catalogs(root)`` lists the official splits; ``names(root)`` reads
    class names that only the data knows (Cars, SUN397); ``path`` fixes the root (custom folders)."""

    catalogs: Callable[[Path], dict[str, Catalog]] | None = None
    names: Callable[[Path], tuple[str, ...]] | None = None
    layout: str = ""
    path: str | None = None

    def root(self, root=None) -> Path:
        return Path(self.path) if self.path else data_root(root, self.name)

    def splits(self, root=None) -> dict[str, Catalog]:
        """The official train/test catalogs (cached per root); a clear message naming the layout otherwise."""
        r = self.root(root)
        key = (self.name, str(r.resolve()))
        with _CACHE_LOCK:
            if key in _CACHE:
                return _CACHE[key]
        try:
            cats = self.catalogs(r)
        except (RuntimeError, FileNotFoundError, OSError, ValueError, KeyError) as e:
            raise FileNotFoundError(f"{self.name}: no usable data set under {r} ({e}). Expected layout: "
                                    f"{self.layout.replace('ROOT', str(r)).replace('PATH', str(r))}") from None
        with _CACHE_LOCK:
            _CACHE[key] = cats
        return cats

    def resolve(self, root=None) -> RealTask:
        """This task with the class names its data defines (Cars, SUN397); itself otherwise."""
        if self.names is None:
            return self
        r = self.root(root)
        try:
            names = self.names(r)
        except (FileNotFoundError, OSError, KeyError, ValueError) as e:
            raise FileNotFoundError(f"{self.name}: cannot read its class names under {r} ({e}). Expected layout: "
                                    f"{self.layout.replace('ROOT', str(r))}") from None
        return dataclasses.replace(self, classnames=names)

    def partition(self, root=None) -> Partition:
        cats = self.splits(root)
        return make_partition(self.name, len(cats["train"]), len(cats["test"]))


def _real_loader(name: str):
    def load(split: str, *, size: int = 224, n: int | None = None, seed: int = 0, root=None):
        task = get_real(name)
        cats = task.splits(root)
        part = task.partition(root)
        if split == "train":
            rows = part.train
            if n is not None and n < len(rows):  # a seeded subset of the training pool
                rows = np.sort(rows[np.random.default_rng(split_seed(name, "train-n", seed)).permutation(len(rows))[:n]])
            return LazySplit(cats["train"], rows, size, f"{name}/train")
        rows = part.val if split == "val" else part.test
        lazy = LazySplit(cats["train" if split == "val" else "test"], rows, size, f"{name}/{split}")
        return lazy if n is None else lazy.head(n).materialize()

    return load


def get_real(name: str) -> RealTask:
    from .data import get_task

    task = get_task(name)
    if not isinstance(task, RealTask):
        raise ValueError(f"task {name!r} does not read images from disk")
    return task


def split_record(task: str, root=None, eval_n: int | None = None, train_n: int | None = None, seed: int = 0) -> dict:
    """What a bundle stores about a real task's splits: sizes, the seeds and the held-out indices (§7)."""
    t = get_real(task)
    cats = t.splits(root)
    part = t.partition(root)
    rec = {"task": task, "source": {"train": cats["train"].where, "test": cats["test"].where},
           "split_seed": SPLIT_SEED, "val_rule": f"seeded random min({VAL_FRACTION:g} × train pool, {VAL_CAP})",
           "train_pool": len(cats["train"]), "test_size": len(cats["test"]), "train": len(part.train),
           "val": part.val.tolist(), "eval_n": eval_n,
           "val_eval": part.val[:eval_n].tolist() if eval_n else part.val.tolist(),
           "test_eval": part.test[:eval_n].tolist() if eval_n else part.test.tolist()}
    if train_n is not None:
        rec.update({"train_n": train_n, "train_seed": seed})
    if t.path:
        rec["path"] = t.path
    return rec


def _register(name: str, classnames, catalogs, description: str, names=None) -> None:
    register_task(RealTask(name, tuple(classnames), _real_loader(name), TEMPLATES[name], "real", description,
                           catalogs=catalogs, names=names, layout=LAYOUTS[name]))


_register("cars", (), _cars, "Stanford Cars: 196 car models (class names from the devkit)", names=cars_classnames)
_register("dtd", DTD_CLASSES, _dtd, "Describable Textures: 47 textures")
_register("eurosat", EUROSAT_CLASSES, _eurosat, "EuroSAT: 10 land-use classes in Sentinel-2 RGB tiles")
_register("gtsrb", GTSRB_CLASSES, _gtsrb, "German Traffic Sign Recognition Benchmark: 43 signs")
_register("mnist", DIGITS, _mnist, "MNIST: handwritten digits")
_register("resisc45", tuple(c.replace("_", " ") for c in RESISC45_FOLDERS), _resisc45,
          "NWPU-RESISC45: 45 remote-sensing scenes")
_register("sun397", (), _sun397, "SUN397: 397 scene categories (class names from ClassName.txt)",
          names=sun397_classnames)
_register("svhn", DIGITS, _svhn, "Street View House Numbers: digits")
PAPER_TASKS = ("cars", "dtd", "eurosat", "gtsrb", "mnist", "resisc45", "sun397", "svhn")


# -- custom ImageFolder tasks -------------------------------------------------------------------------------------
def _folder_catalogs(path: Path, name: str) -> dict[str, Catalog]:
    if (path / "train").is_dir() and (path / "test").is_dir():
        classes = tuple(sorted(_class_folders(path / "train")))
        return {s: _folder_catalog(path / s, classes, name) for s in ("train", "test")}
    classes = tuple(sorted(_class_folders(path)))
    whole = _folder_catalog(path, classes, name)
    train, test = fixed_test_holdout(len(whole), name, 0.2)
    return {"train": _subset(whole, train, f"{path} (80 %)"), "test": _subset(whole, test, f"{path} (fixed 20 %)")}


def folder_classes(path: Path) -> tuple[str, ...]:
    """Class folder names of an ImageFolder tree (``train/`` when the tree is pre-split)."""
    tree = path / "train" if (path / "train").is_dir() and (path / "test").is_dir() else path
    return tuple(sorted(_class_folders(tree)))


def folder_task(path: str | os.PathLike, name: str | None = None, templates: Sequence[str] = FOLDER_TEMPLATES) -> RealTask:
    """Register (once) and return a task over an ImageFolder tree; class names are the folder names
    (``_`` read as a space).  ``name`` defaults to the folder's name."""
    from .data import TASKS

    path = Path(path).expanduser().resolve()
    name = name or re.sub(r"[^a-z0-9_-]+", "-", path.name.lower()).strip("-") or "folder"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"task name {name!r}: use letters, digits, '_', '-' and '.'")
    if name in TASKS:
        old = TASKS[name]
        if isinstance(old, RealTask) and old.path == str(path):
            return old
        raise ValueError(f"task name {name!r} is already taken; pick another with NAME=PATH")
    try:
        classes = folder_classes(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{name}: {e}. Expected layout: {LAYOUTS['folder'].replace('PATH', str(path))}") from None
    task = RealTask(name, tuple(c.replace("_", " ") for c in classes), _real_loader(name), tuple(templates), "folder",
                    f"image folder {path}", catalogs=lambda r: _folder_catalogs(r, name), layout=LAYOUTS["folder"],
                    path=str(path))
    register_task(task)
    return task


def parse_task(spec: str) -> str:
    """A task argument: a registered name, ``folder:PATH`` or ``NAME=PATH`` (custom ImageFolder tasks)."""
    if spec.startswith("folder:"):
        return folder_task(spec[len("folder:"):]).name
    name, sep, path = spec.partition("=")
    if sep:
        return folder_task(path, name).name
    return spec


def register_folder_tasks(bundle, overrides: dict[str, str] | None = None) -> list[str]:
    """Register a bundle's custom folder tasks from the paths in its ``results/splits.json`` (``overrides``:
    NAME -> PATH where the images live now); returns the names registered."""
    from .data import TASKS

    paths = {t: r["path"] for t, r in bundle.results.get("splits", {}).items() if isinstance(r, dict) and r.get("path")}
    paths.update(overrides or {})
    done = []
    for name, path in paths.items():
        if name in bundle.tasks and name not in TASKS:
            folder_task(path, name)
            done.append(name)
    return done
