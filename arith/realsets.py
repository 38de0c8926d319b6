"""The paper's eight data sets (method.md §7) and ImageFolder trees: prompt templates, class names, the folder
layouts expected under a data root, and how to read each one's official splits into :class:`Catalog` s.

Layouts are torchvision's (what ``torchvision.datasets.X(root, download=True)`` writes) where torchvision has
the data set, and documented ones otherwise (:data:`LAYOUTS`).  The registry that turns these into tasks is
:mod:`arith.datasets`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .imagedata import ArrayReader, Catalog, PathReader, fixed_test_holdout

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


# -- catalogs per data set ----------------------------------------------------------------------------------------
def _check_labels(task: str, labels: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise FileNotFoundError(f"no images found in {where}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise FileNotFoundError(f"labels outside 0..{num_classes - 1} in {where}")
    return labels


def _hidden(path: Path, top: Path) -> bool:
    """Under a folder whose name starts with '.' (.ipynb_checkpoints, .git, ...) below ``top``."""
    return any(part.startswith(".") for part in path.relative_to(top).parts)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not _hidden(p, folder))


def _class_folders(root: Path, known: Sequence[str] | None = None) -> dict[str, list[Path]]:
    """{class folder name: sorted image files} of an ImageFolder tree (only ``known`` folders when given; folders
    whose names start with '.' are not classes).  Without ``known`` the tree defines the classes, so a class
    folder without images is refused (with ``known``, e.g. a pre-split tree's test/, a class may be absent)."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    out = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if known is not None and d.name not in known:
            raise FileNotFoundError(f"{d}: unexpected class folder {d.name!r}")
        out[d.name] = _image_files(d)
        if known is None and not out[d.name]:
            raise FileNotFoundError(f"{d}: a class folder with no images ({', '.join(IMAGE_EXTENSIONS)}); "
                                    "add some or remove it")
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


# -- custom ImageFolder tasks -------------------------------------------------------------------------------------
def _folder_catalogs(path: Path, name: str) -> dict[str, Catalog]:
    if (path / "train").is_dir() and (path / "test").is_dir():
        classes = tuple(sorted(_class_folders(path / "train")))
        return {s: _folder_catalog(path / s, classes, name) for s in ("train", "test")}
    classes = tuple(sorted(_class_folders(path)))
    whole = _folder_catalog(path, classes, name)
    train, test = fixed_test_holdout(len(whole), name, 0.2)
    return {"train": _subset(whole, train, f"{path} (80 %)"), "test": _subset(whole, test, f"{path} (fixed 20 %)")}


def folder_fingerprint(path: Path) -> str:
    """sha256 over the image files of a folder task's tree (each one's path below ``path`` and its size): a build
    resumed after the folder gained, lost or replaced images must start over, since its stored test images were
    drawn from the old list and could now fall in the training split."""
    h = hashlib.sha256()
    for p in _image_files(Path(path)):
        h.update(f"{p.relative_to(path).as_posix()}\t{p.stat().st_size}\n".encode())
    return h.hexdigest()


def folder_classes(path: Path) -> tuple[str, ...]:
    """Class folder names of an ImageFolder tree (``train/`` when the tree is pre-split)."""
    tree = path / "train" if (path / "train").is_dir() and (path / "test").is_dir() else path
    return tuple(sorted(_class_folders(tree)))

