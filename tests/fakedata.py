"""Tiny generated stand-ins for the paper's data sets, written in the folder layouts the loaders read.

Images are small, non-square and class-coloured (class c gets its own colour, plus noise), so a tiny encoder can
learn them in a few steps and the resize + centre-crop geometry is exercised.  Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 80, 230], [230, 200, 40], [200, 60, 200], [40, 200, 200]])


def image(c: int, rng: np.random.Generator, size=(20, 14)) -> np.ndarray:
    """HxWx3 uint8 image of class ``c`` (width 20, height 14 by default)."""
    w, h = size
    base = COLOURS[c % len(COLOURS)] * (0.6 + 0.4 * ((c // len(COLOURS)) % 2))
    img = base[None, None, :] + rng.normal(0, 20, size=(h, w, 3))
    img[h // 3: 2 * h // 3, w // 3: 2 * w // 3] = 255 - base  # a contrasting patch
    return np.clip(img, 0, 255).astype(np.uint8)


def save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _labels(n: int, classes: int, rng) -> np.ndarray:
    return np.array([i % classes for i in range(n)])[rng.permutation(n)]


def make_mnist(root: Path, n_train=40, n_test=20, seed=0) -> None:
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = _labels(n, 10, rng).astype(np.uint8)
        x = np.stack([image(int(c), rng, (28, 28))[..., 0] for c in y])
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(np.array([2051, n, 28, 28], ">i4").tobytes() + x.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(np.array([2049, n], ">i4").tobytes() + y.tobytes())


def make_svhn(root: Path, n_train=40, n_test=20, seed=0) -> None:
    import scipy.io as sio

    rng = np.random.default_rng(seed)
    (root / "svhn").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        y = _labels(n, 10, rng)
        x = np.stack([image(int(c), rng, (32, 32)) for c in y], axis=-1)  # [32, 32, 3, N]
        sio.savemat(str(root / "svhn" / f"{split}_32x32.mat"), {"X": x, "y": np.where(y == 0, 10, y)[:, None]})


def make_gtsrb(root: Path, classes=(0, 1, 2, 14), per_class=6, n_test=12, seed=0) -> None:
    rng = np.random.default_rng(seed)
    base = root / "gtsrb"
    for c in classes:
        for i in range(per_class):
            save(base / "GTSRB" / "Training" / f"{c:05d}" / f"{c:05d}_{i:05d}.ppm", image(c, rng))
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i in range(n_test):
        c = classes[i % len(classes)]
        save(base / "GTSRB" / "Final_Test" / "Images" / f"{i:05d}.ppm", image(c, rng))
        rows.append(f"{i:05d}.ppm;20;14;1;1;19;13;{c}")
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")


def make_dtd(root: Path, classes=("banded", "dotted", "zigzagged"), per_split=4, seed=0) -> None:
    rng = np.random.default_rng(seed)
    data = root / "dtd" / "dtd"
    for split in ("train", "val", "test"):
        lines = []
        for c in classes:
            for i in range(per_split):
                name = f"{c}_{split}_{i:04d}.jpg"
                save(data / "images" / c / name, image(classes.index(c), rng))
                lines.append(f"{c}/{name}")
        (data / "labels").mkdir(parents=True, exist_ok=True)
        (data / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")


def make_eurosat(root: Path, per_class=6, seed=0) -> None:
    from arith.realsets import EUROSAT_FOLDERS

    rng = np.random.default_rng(seed)
    for c, folder in enumerate(EUROSAT_FOLDERS):
        for i in range(per_class):
            save(root / "eurosat" / "2750" / folder / f"{folder}_{i}.jpg", image(c, rng, (16, 16)))


def make_cars(root: Path, names=("AM General Hummer SUV 2000", "Acura RL Sedan 2012", "smart fortwo Convertible 2012"),
              n_train=12, n_test=9, seed=0) -> None:
    import scipy.io as sio

    rng = np.random.default_rng(seed)
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True, exist_ok=True)
    sio.savemat(str(base / "devkit" / "cars_meta.mat"), {"class_names": np.array(names, dtype=object)})
    for split, n, annos in (("train", n_train, base / "devkit" / "cars_train_annos.mat"),
                            ("test", n_test, base / "cars_test_annos_withlabels.mat")):
        recs = []
        for i in range(n):
            c = i % len(names)
            fname = f"{i + 1:05d}.jpg"
            save(base / f"cars_{split}" / fname, image(c, rng, (30, 18)))
            recs.append((1, 1, 29, 17, c + 1, fname))
        arr = np.array(recs, dtype=[("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"),
                                    ("class", "O"), ("fname", "O")])
        sio.savemat(str(annos), {"annotations": arr})


def make_resisc45(root: Path, classes=("airplane", "beach", "wetland"), per_class=8, split_files=True, seed=0) -> None:
    from arith.realsets import RESISC45_FOLDERS

    rng = np.random.default_rng(seed)
    base = root / "resisc45"
    names = {"train": [], "test": []}
    for c in classes:
        for i in range(per_class):
            name = f"{c}_{i + 1:03d}.jpg"
            save(base / "NWPU-RESISC45" / c / name, image(RESISC45_FOLDERS.index(c), rng, (16, 16)))
            names["test" if i % 4 == 0 else "train"].append(name)
    if split_files:
        for s, lst in names.items():
            (base / f"resisc45-{s}.txt").write_text("\n".join(lst) + "\n")


def make_sun397(root: Path, classes=("/a/abbey", "/b/bedroom", "/s/skyscraper", "/a/apartment_building/outdoor"),
                per_class=6, partitions=True, seed=0) -> None:
    rng = np.random.default_rng(seed)
    data = root / "SUN397"
    data.mkdir(parents=True, exist_ok=True)
    (data / "ClassName.txt").write_text("\n".join(classes) + "\n")
    train, test = [], []
    for c_i, c in enumerate(classes):
        for i in range(per_class):
            rel = f"{c}/sun_{c_i}{i:04d}.jpg"
            save(data.joinpath(*rel.lstrip("/").split("/")), image(c_i, rng, (24, 16)))
            (test if i % 3 == 0 else train).append(rel)
    if partitions:
        (data / "Training_01.txt").write_text("\n".join(train) + "\n")
        (data / "Testing_01.txt").write_text("\n".join(test) + "\n")


def make_folder(path: Path, classes=("daisy", "red_rose", "tulip"), per_class=10, presplit=False, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for c_i, c in enumerate(classes):
        for i in range(per_class):
            sub = ("test" if i % 4 == 0 else "train") if presplit else ""
            save(path / sub / c / f"{i}.png", image(c_i, rng, (18, 22)))
    return path


MAKERS = {"mnist": make_mnist, "svhn": make_svhn, "gtsrb": make_gtsrb, "dtd": make_dtd, "eurosat": make_eurosat,
          "cars": make_cars, "resisc45": make_resisc45, "sun397": make_sun397}
