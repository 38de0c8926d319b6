"""The tensor-free side of a bundle: its manifest, the check of every file, its precomputed results and the names of
what it holds.  Importing this module imports no tensor library.

Opening a bundle starts here.  :meth:`BundleIndex.open` reads ``manifest.json``, checks the size and sha256 of every
file it lists (about 0.1 s for the default bundle), reads ``results/*.json`` and the shapes in the data files'
headers.  That is enough to answer every request the bundle's precomputed results cover (the app's opening view is
one) before torch is even imported; :func:`arith.bundle.load_bundle` then builds the tensors on the same index.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .specs import FORMAT_VERSION, Files, FinetuneConfig, TaskInfo

BUNDLE_FORMAT = "arith-bundle"
EVAL_SPLITS = ("val", "test")
MAX_HEADER_BYTES = 100 * 2**20  # a safetensors header larger than this is not one of ours


class BundleError(ValueError):
    """A bundle is missing, damaged or inconsistent; the message names the file."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def bundle_file_at(path: str | Path) -> tuple[Path, str] | None:
    """(bundle root, file name in its manifest) when ``path`` is one of a bundle's own files (its manifest, or a file
    the manifest lists with its checksum), else None.  Writing over such a file by hand leaves the bundle unloadable
    (its size or sha256 no longer matches), so commands refuse it as an output; other files beside a bundle's are
    harmless (loading reads only the listed ones).  A write replaces the path as given (a temporary file renamed onto
    it), so the path is looked at as written (``..`` folded), with its folder's links followed, and fully resolved:
    a bundle file reached through a link to a folder, or a link in a bundle pointing elsewhere, counts too."""
    given = Path(path).expanduser()
    for where in dict.fromkeys((Path(os.path.abspath(given)), given.parent.resolve() / given.name, given.resolve())):
        found = _listed_in_bundle(where)
        if found is not None:
            return found
    return None


def _listed_in_bundle(path: Path) -> tuple[Path, str] | None:
    """:func:`bundle_file_at` for one absolute path: the nearest folder above it holding a manifest decides."""
    for root in path.parents:
        manifest = root / Files.MANIFEST
        if not manifest.is_file():
            continue
        try:
            m = json.loads(manifest.read_text())
        except (OSError, ValueError, RecursionError):
            return None  # not a readable manifest: no bundle to protect here
        if not isinstance(m, dict) or m.get("format") != BUNDLE_FORMAT:
            return None
        rel = path.relative_to(root).as_posix()
        return (root.resolve(), rel) if rel == Files.MANIFEST or rel in (m.get("files") or {}) else None
    return None


def read_manifest(root: Path) -> dict:
    """``root/manifest.json``, checked for the fields every reader relies on; :class:`BundleError` otherwise."""
    path = root / Files.MANIFEST
    if not Path(root).exists():
        raise BundleError(f"{root}: no such bundle directory")
    if not Path(root).is_dir():
        raise BundleError(f"{root} is a file, not a bundle directory")
    if not path.exists():
        raise BundleError(f"{path}: no manifest; not a bundle directory")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise BundleError(f"{Files.MANIFEST}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{Files.MANIFEST}: not an {BUNDLE_FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{Files.MANIFEST}: format version {manifest.get('format_version')!r}, "
                          f"this version reads {FORMAT_VERSION!r}")
    for key in ("base", "tasks", "files"):
        if key not in manifest:
            raise BundleError(f"{Files.MANIFEST}: missing {key!r}")
    files = manifest["files"]
    if not isinstance(files, dict) or not all(
            isinstance(e, dict) and isinstance(e.get("sha256"), str) and type(e.get("bytes")) is int
            for e in files.values()):
        raise BundleError(f"{Files.MANIFEST}: 'files' must map each file to its sha256 and size in bytes")
    if not isinstance(manifest["tasks"], list) or not all(isinstance(t, dict) for t in manifest["tasks"]):
        raise BundleError(f"{Files.MANIFEST}: 'tasks' must be a list of task records")
    if not isinstance(manifest["base"], dict) or not isinstance(manifest["base"].get("spec"), dict):
        raise BundleError(f"{Files.MANIFEST}: 'base' must hold the model spec")
    if not isinstance(manifest.get("modes", []), list) or not all(isinstance(m, str) for m in manifest.get("modes", [])):
        raise BundleError(f"{Files.MANIFEST}: 'modes' must be a list of mode names")
    for key, kind in (("name", str), ("finetune", dict), ("provenance", dict)):
        if key in manifest and not isinstance(manifest[key], kind):
            raise BundleError(f"{Files.MANIFEST}: {key!r} must be a {kind.__name__}")
    return manifest


def require_core_files(manifest: dict) -> None:
    """The manifest lists θ0 and the heads; a :class:`BundleError` naming the first it lacks otherwise."""
    for rel in (Files.BASE, Files.HEADS):
        if rel not in manifest["files"]:
            raise BundleError(f"{rel} is not listed in {Files.MANIFEST}: the bundle is incomplete (an unfinished "
                              "build? the same build command resumes it)")


# the embedded default's folder: its files come back from git, or from its build command
EMBEDDED_DEFAULT = Path(__file__).resolve().parent.parent / "precomputed" / "default"


def restore_hint(root: Path) -> str:
    """What to do about a bundle file that is missing or no longer matches the manifest."""
    if Path(root).resolve() == EMBEDDED_DEFAULT:
        return "restore the embedded default: `git checkout -- precomputed/default`, or `python -m arith build-default`"
    return "restore the bundle from where it came from, or rebuild it"


def verify_files(root: Path, manifest: dict, hashes: bool = True) -> None:
    """Every file the manifest lists exists with its recorded size and sha256 (``hashes=False``: its size only, a
    stat per file); refuses naming the file."""
    for rel, entry in sorted(manifest["files"].items()):
        path = root / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise BundleError(f"{rel}: file path escapes the bundle directory")
        if not path.is_file():
            raise BundleError(f"{rel}: listed in the manifest but missing ({restore_hint(root)})")
        if path.stat().st_size != entry.get("bytes"):
            raise BundleError(f"{rel}: {path.stat().st_size} bytes, the manifest says {entry.get('bytes')} (damaged or "
                              f"edited; {restore_hint(root)})")
        if hashes and sha256_file(path) != entry.get("sha256"):
            raise BundleError(f"{rel}: sha256 does not match the manifest (damaged or edited; {restore_hint(root)})")


def read_results(root: Path, manifest: dict) -> dict[str, Any]:
    """The precomputed results, ``results/<name>.json`` -> ``{name: object}``; each must be a JSON object."""
    results = {}
    for rel in manifest["files"]:
        if rel.startswith(Files.RESULTS_DIR + "/") and rel.endswith(".json"):
            try:
                obj = json.loads((root / rel).read_text())
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
                raise BundleError(f"{rel}: not valid JSON ({e})") from None
            if not isinstance(obj, dict):
                raise BundleError(f"{rel}: not a JSON object")
            results[Path(rel).stem] = obj
    return results


def split_sizes(path: Path, rel: str) -> dict[str, int]:
    """Images per split of a data file, from the shape of ``<split>.images`` in its safetensors header (the 8-byte
    little-endian header length, then a JSON object; nothing else is read).  Loading checks the tensors agree."""
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > MAX_HEADER_BYTES:
                raise ValueError(f"header of {n} bytes")
            header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        sizes = {}
        for split in EVAL_SPLITS:
            if f"{split}.images" in header:
                size = header[f"{split}.images"]["shape"][0]
                if type(size) is not int or size < 0:
                    raise ValueError(f"{split}.images has shape {header[f'{split}.images']['shape']!r}")
                sizes[split] = size
        return sizes
    except (OSError, struct.error, ValueError, KeyError, IndexError, TypeError, RecursionError) as e:
        raise BundleError(f"{rel}: cannot read its safetensors header ({e})") from None


def finetune_config(manifest: Mapping[str, Any], mode: str) -> FinetuneConfig | None:
    """The fine-tuning config a manifest records for ``mode`` (None when it records none; an unknown mode is refused,
    so that a misspelt one is not read as "no config")."""
    from .modes import get_mode

    get_mode(mode)
    cfg = manifest.get("finetune", {}).get(mode)
    return FinetuneConfig.from_dict(cfg) if cfg else None


def recipe(manifest: Mapping[str, Any], mode: str) -> tuple[FinetuneConfig, str]:
    """The recipe to fine-tune ``mode`` with on this bundle (its ``mode`` field set to it), and where it comes from, as
    a phrase: the bundle's own recipe for the mode; else that of the mode it borrows from (:attr:`Mode.recipe_from`,
    attn_bias: attn's); else the first recipe the bundle records (steps, batch and learning rate at the bundle's
    scale); else the engine's defaults (``FinetuneConfig``'s: the paper's recipe for real CLIP).  The CLI's finetune,
    the Train page and lr-sweep all start from it, so one mode never gets two recipes."""
    from .modes import get_mode

    recorded = [m for m in manifest.get("modes", []) if manifest.get("finetune", {}).get(m)]
    for other in dict.fromkeys((mode, get_mode(mode).recipe_from, *recorded[:1])):  # in this order, each once
        cfg = finetune_config(manifest, other) if other else None
        if cfg is not None:
            source = f"the bundle's recipe for {other}" + ("" if other == mode else f" (it has none for {mode})")
            return dataclasses.replace(cfg, mode=mode), source
    return FinetuneConfig(mode=mode), f"the engine's defaults (the bundle records no recipe for {mode})"


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


@dataclass(frozen=True)
class BundleIndex:
    """What a bundle holds, by name, and its precomputed results: everything but the tensors.  Read-only."""

    root: Path
    manifest: Mapping[str, Any]
    tasks: Mapping[str, TaskInfo]  # every task of the manifest, in its order
    vectors: Mapping[str, Mapping[str, str]]  # mode -> {vector name: its task}, modes in the manifest's order
    sizes: Mapping[str, Mapping[str, int]]  # task with evaluation data -> split -> images stored
    results: Mapping[str, Any] = field(default_factory=dict)
    stamps: Mapping[str, tuple[int, int, int] | None] = field(default_factory=dict)  # file -> size, mtime, inode

    @classmethod
    def open(cls, root: str | Path, verify: bool = True) -> BundleIndex:
        """Read and check a bundle directory's manifest, files (sizes and sha256 when ``verify``) and results."""
        root = Path(root).expanduser()
        manifest = read_manifest(root)
        stamps = {rel: _stamp(root / rel) for rel in manifest["files"]}  # before the hashes: a later edit shows
        if verify:
            verify_files(root, manifest)
        try:
            tasks = {t["name"]: TaskInfo.from_dict(t) for t in manifest["tasks"]}
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{Files.MANIFEST}: bad task list ({e})") from None
        files = manifest["files"]
        require_core_files(manifest)  # what every answer rests on, even one read from the stored results
        vectors: dict[str, dict[str, str]] = {}
        for rel in sorted(files):  # vectors/<mode>/<task>.safetensors; loading checks each file holds what its path says
            parts = Path(rel).parts
            if len(parts) == 3 and parts[0] == Files.VECTORS_DIR and rel == Files.vector(parts[1], Path(parts[2]).stem):
                vectors.setdefault(parts[1], {})[Path(parts[2]).stem] = Path(parts[2]).stem
        order = {m: i for i, m in enumerate(manifest.get("modes", []))}
        vectors = dict(sorted(vectors.items(), key=lambda kv: order.get(kv[0], len(order))))
        # each mode's vectors in the bundle's task order (the files are listed alphabetically), as every table is
        rank = {t: i for i, t in enumerate(tasks)}
        vectors = {m: dict(sorted(vs.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))
                   for m, vs in vectors.items()}
        sizes = {t: split_sizes(root / Files.data(t), Files.data(t)) for t in tasks if Files.data(t) in files}
        return cls(root, manifest, tasks, vectors, sizes, read_results(root, manifest), stamps)

    def check_unchanged(self) -> None:
        """Every file is as it was when the index was read (size, modification time, inode: a rebuild in place or a
        replaced file shows), so what the index checked and answered from is what loads; :class:`BundleError`
        names the first file that changed."""
        for rel, stamp in sorted(self.stamps.items()):
            if _stamp(self.root / rel) != stamp:
                raise BundleError(f"{rel}: changed since the bundle was opened (rebuilt?); open it again")

    @property
    def name(self) -> str:
        return self.manifest.get("name", self.root.name)

    @property
    def base_id(self) -> str | None:
        return self.manifest["base"].get("id")

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    @property
    def modes(self) -> list[str]:
        return list(self.vectors)

    def finetune_config(self, mode: str) -> FinetuneConfig | None:
        """The fine-tuning config the bundle's ``mode`` vectors were trained with (None when not recorded)."""
        return finetune_config(self.manifest, mode)

    def recipe(self, mode: str) -> tuple[FinetuneConfig, str]:
        """The recipe to fine-tune ``mode`` with, and where it comes from (:func:`recipe`)."""
        return recipe(self.manifest, mode)

    @property
    def evaluation_tasks(self) -> list[str]:
        """The tasks with evaluation data, in the manifest's order."""
        return [t for t in self.tasks if t in self.sizes]
