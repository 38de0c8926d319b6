"""The paper's eight data sets and custom image folders, read from a data root (the ``real`` task family):
their registry.  What each data set is (templates, class names, layouts, readers) is in :mod:`arith.realsets`;
lazy image splits and the split indices are in :mod:`arith.imagedata`.

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
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import TaskSource, register_task, split_seed
from .imagedata import SPLIT_SEED, VAL_CAP, VAL_FRACTION, Catalog, LazySplit, Partition, make_partition
from .realsets import (
    DIGITS,
    DTD_CLASSES,
    EUROSAT_CLASSES,
    FOLDER_TEMPLATES,
    GTSRB_CLASSES,
    LAYOUTS,
    RESISC45_FOLDERS,
    TEMPLATES,
    _cars,
    _dtd,
    _eurosat,
    _folder_catalogs,
    _gtsrb,
    _mnist,
    _resisc45,
    _sun397,
    _svhn,
    cars_classnames,
    folder_classes,
    sun397_classnames,
)

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


_REGISTRY_LOCK = threading.RLock()  # folder tasks: check-then-register, and a refused one's removal, as one step


def folder_task(path: str | os.PathLike, name: str | None = None, templates: Sequence[str] = FOLDER_TEMPLATES) -> RealTask:
    """Register (once) and return a task over an ImageFolder tree; class names are the folder names
    (``_`` read as a space; folders whose names start with ``.`` are not classes).  ``name`` defaults to the
    folder's name.  Refused: an empty path, a name another task has, fewer than two classes, an empty class
    folder, and two folders that read as one class name."""
    from .data import _load_families

    if not str(path).strip():
        raise ValueError(f"task {name or 'folder'!r}: no folder given (folder:PATH or NAME=PATH)")
    path = Path(path).expanduser().resolve()
    name = name or re.sub(r"[^a-z0-9_-]+", "-", path.name.lower()).strip("-") or "folder"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"task name {name!r}: use letters, digits, '_', '-' and '.'")
    _load_families()  # the built-in tasks first: a folder named like one must not take its name
    with _REGISTRY_LOCK:  # sessions of the app register folder tasks from their threads
        return _register_folder(path, name, templates)


def _register_folder(path: Path, name: str, templates: Sequence[str]) -> RealTask:
    from .data import TASKS

    if name in TASKS:
        old = TASKS[name]
        if isinstance(old, RealTask) and old.path == str(path):
            return old
        whose = "a built-in task" if not (isinstance(old, RealTask) and old.path) else f"the folder {old.path}"
        raise ValueError(f"task name {name!r} is taken by {whose}; pick another with NAME=PATH")
    try:
        classes = folder_classes(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{name}: {e}. Expected layout: {LAYOUTS['folder'].replace('PATH', str(path))}") from None
    names = [c.replace("_", " ") for c in classes]
    if len(names) < 2:
        raise ValueError(f"{name}: {path} has {len(names)} class folder(s); a classification task needs two or more")
    twins = [c for c in classes if names.count(c.replace("_", " ")) > 1]
    if twins:
        raise ValueError(f"{name}: class folders {twins} read as one class name ('_' is read as a space); rename one")
    task = RealTask(name, tuple(names), _real_loader(name), tuple(templates), "folder",
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


def parse_task_folders(values: Sequence[str]) -> dict[str, str]:
    """``--task-folder NAME=PATH`` values (where a bundle's custom folder task's images are now) as {NAME: PATH}."""
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not (sep and name.strip() and path.strip()):
            raise ValueError(f"--task-folder {v!r}: expected NAME=PATH (the bundle's task name, where its images are)")
        out[name.strip()] = path
    return out


def register_folder_tasks(bundle, overrides: dict[str, str] | None = None, tasks: Sequence[str] | None = None,
                          root=None) -> list[str]:
    """Make a bundle's tasks that read images from disk ready to train or evaluate on: register its custom folder
    tasks among ``tasks`` (all by default) from the paths in its ``results/splits.json`` (``overrides``: NAME ->
    PATH where the images live now; a folder must hold the bundle's classes), then check that each such task's
    data (``root`` for the paper's data sets) has the sizes the bundle was built from.  A folder that gained or
    lost images would hold out other validation and test images (for a folder without ``train/``/``test/``, some
    of the stored test images would be trained on), so it is refused.  Returns the names registered."""
    from .data import TASKS

    records = {t: r for t, r in bundle.results.get("splits", {}).items() if isinstance(r, dict)}
    wanted = [t for t in (bundle.tasks if tasks is None else tasks) if t in bundle.tasks]
    paths = {t: r["path"] for t, r in records.items() if r.get("path")}
    paths.update(overrides or {})
    done: list[str] = []
    with _REGISTRY_LOCK:
        try:
            for name in wanted:
                if name in paths:
                    new = name not in TASKS
                    # registered earlier in this process (another bundle, another session): the same folder gives
                    # the task itself, another one is refused, named
                    try:
                        task = folder_task(paths[name], name)
                    except FileNotFoundError as e:  # the recorded folder is gone: say how to point at its new place
                        if name in (overrides or {}) or Path(paths[name]).expanduser().exists():
                            raise
                        raise FileNotFoundError(f"{e} (moved? --task-folder {name}=NEWPATH gives its new place)") from None
                    if new:
                        done.append(name)
                    if task.classnames != tuple(bundle.tasks[name].classnames):
                        raise ValueError(f"{name}: {task.path} holds classes {list(task.classnames)}, the bundle's "
                                         f"task has {list(bundle.tasks[name].classnames)}")
                rec = records.get(name, {})
                if "train_pool" in rec and isinstance(TASKS.get(name), RealTask):
                    _check_sizes(TASKS[name], rec, root)
        except BaseException:
            for name in done:  # nothing changes: no task is left registered with other classes or images
                TASKS.pop(name, None)
            raise
    return done


def _check_sizes(task: RealTask, rec: dict, root) -> None:
    """The task's data has the sizes its split record (``split_record``) was made from."""
    cats = task.splits(root)
    now = (len(cats["train"]), len(cats["test"]))
    if now != (rec["train_pool"], rec["test_size"]):
        raise ValueError(f"{task.name}: {cats['train'].where} now holds {now[0]} training-pool and {now[1]} test "
                         f"images; the bundle was built from {rec['train_pool']} and {rec['test_size']}, so its "
                         "held-out validation and test images would not be the ones it stores (some could be "
                         "trained on). Restore the images, or build a new bundle")
