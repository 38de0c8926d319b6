"""Bundles: a directory with everything the app and the CLI need for one base model (the design notes' "Bundle":
a manifest, safetensors files, precomputed JSON).

    manifest.json                     format version, base spec and id, tasks, modes, sha256 of every file,
                                      provenance, fine-tuning configs
    base.safetensors                  θ0 (``visual.*`` keys)
    text.safetensors                  optional: the text tower, to make zero-shot heads for new class names
    heads.safetensors                 frozen heads, ``<task>.weight`` / ``<task>.scale``
    data/<task>.safetensors           evaluation splits: ``<split>.images`` uint8, ``<split>.labels`` int64
    vectors/<mode>/<task>.safetensors task vectors (the same files ``arith validate`` reads)
    results/<name>.json               precomputed results (addition, negation, ξ grids, kernel, ...)
    cache/linear-<split>.safetensors  f(θ0; x) and J τ_t per linear-mode vector: instant linearized sliders

Loading verifies every listed file's size and sha256 (``arith.index``) and refuses a damaged bundle naming the file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .data import Split
from .heads import Head, heads_from_tensors, heads_to_tensors
from .index import BUNDLE_FORMAT, EVAL_SPLITS, BundleError, BundleIndex, finetune_config, read_manifest, recipe, sha256_file
from .models import Base, fingerprint
from .safefile import SafetensorsError, load_safetensors
from .specs import FORMAT_VERSION, Files, FinetuneConfig, Meta, ModelSpec, Provenance, TaskInfo
from .taskvec import TaskVector, TaskVectorError, validate


@dataclass(repr=False)
class Bundle:
    """A loaded bundle.  Treat every tensor in it as read-only: it is shared by all sessions of the app."""

    def __repr__(self) -> str:  # a summary: the default would print every image and tensor (megabytes)
        vectors = ", ".join(f"{m}: {len(vs)}" for m, vs in self.vectors.items()) or "none"
        return (f"Bundle({self.name!r} at {str(self.root)!r}; {len(self.tasks)} tasks: {', '.join(self.tasks)}; "
                f"task vectors {vectors}; results: {', '.join(sorted(self.results)) or 'none'})")

    root: Path
    manifest: dict
    base: Base
    tasks: dict[str, TaskInfo]
    heads: dict[str, Head]
    data: dict[str, dict[str, Split]]
    vectors: dict[str, dict[str, TaskVector]]
    results: dict[str, Any] = field(default_factory=dict)
    linear_cache: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The bundle's name (its manifest's, else its folder's)."""
        return self.manifest.get("name", self.root.name)

    @property
    def modes(self) -> list[str]:
        """The fine-tuning modes this bundle holds task vectors of, in its order."""
        return list(self.vectors)

    @property
    def task_names(self) -> list[str]:
        """Its tasks, in the bundle's order."""
        return list(self.tasks)

    @property
    def index(self) -> BundleIndex:
        """This bundle's :class:`~arith.index.BundleIndex`, from what is loaded (no file is read)."""
        return BundleIndex(self.root, self.manifest, self.tasks,
                           {m: {n: tv.task for n, tv in vs.items()} for m, vs in self.vectors.items()},
                           {t: {s: len(sp) for s, sp in d.items()} for t, d in self.data.items()}, self.results)

    def finetune_config(self, mode: str) -> FinetuneConfig | None:
        """The fine-tuning config the ``mode`` vectors were trained with (None when not recorded)."""
        return finetune_config(self.manifest, mode)

    def recipe(self, mode: str) -> tuple[FinetuneConfig, str]:
        """The recipe to fine-tune ``mode`` with, and where it comes from (:func:`arith.index.recipe`)."""
        return recipe(self.manifest, mode)

    def evaluator(self, max_per_task: int | None = None, device=None, linear_cache: bool = True, **kw):
        """An :class:`arith.evaluate.Evaluator` on this bundle's evaluation splits, linear caches installed (unless
        ``linear_cache=False``: then f(θ0; x) and J τ are computed afresh, as ``precompute`` must); on ``device``
        other than the CPU it holds its own copy of θ0 there (the bundle's stays read-only on the CPU)."""
        from .evaluate import Evaluator

        base = self.base if device is None or str(device) == "cpu" else self.base.to(device)
        ev = Evaluator(base, self.heads, self.data, max_per_task=max_per_task, **kw)
        for split, cache in (self.linear_cache if linear_cache else {}).items():
            idx = _cache_index(ev, split, cache)
            if idx is not None:
                ev.seed_linear_cache(split, cache["f0"][idx],
                                     {k: v[idx] for k, v in cache.items() if k not in ("f0", ROWS_KEY)})
        return ev


ROWS_KEY = "__rows__"  # in a linear cache: images per task, in the evaluator's task order, when it was computed


def _cache_index(ev, split: str, cache: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """Rows of a cached split that correspond to ``ev``'s evaluation set (which may keep fewer images per task),
    or None when the cache was computed on a different layout."""
    rows = cache.get(ROWS_KEY)
    es = ev.eval_set(split)
    if rows is None or len(rows) != len(es.tasks):
        return None
    offsets = torch.cumsum(rows, 0) - rows
    idx = []
    for i, t in enumerate(es.tasks):
        n = es.slices[t].stop - es.slices[t].start
        if n > int(rows[i]):
            return None
        idx.append(torch.arange(int(offsets[i]), int(offsets[i]) + n))
    return torch.cat(idx)


def trained_with(meta: Mapping[str, str], config: FinetuneConfig) -> bool:
    """Whether a task vector's metadata says it was fine-tuned with exactly ``config``."""
    stored = meta.get(Meta.CONFIG)
    return stored is not None and json.loads(stored) == json.loads(config.to_json())


# -- writing ------------------------------------------------------------------------------------------------------
class BundleWriter:
    """Writes a bundle file by file, keeping the manifest's file table current (so an interrupted build resumes:
    files already listed with a matching hash are kept)."""

    def __init__(self, root: str | Path, name: str, spec: ModelSpec, base_id: str, tasks: list[TaskInfo],
                 description: str = ""):
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        old = read_manifest(self.root) if (self.root / Files.MANIFEST).exists() else {}
        # a different base: nothing old can be kept (``replaced_base`` names the one whose bundle is started over)
        self.replaced_base = old.get("base", {}).get("id") if old and old.get("base", {}).get("id") != base_id else None
        if self.replaced_base is not None:
            old = {}
        self.manifest = {
            "format": BUNDLE_FORMAT, "format_version": FORMAT_VERSION, "name": name, "description": description,
            "base": {"spec": spec.to_dict(), "id": base_id},
            "tasks": [t.to_dict() for t in tasks], "splits": list(EVAL_SPLITS),
            "modes": old.get("modes", []), "finetune": old.get("finetune", {}), "files": old.get("files", {}),
            "provenance": old.get("provenance", {}), **{k: old[k] for k in ("plan", "signature") if k in old},
        }

    @classmethod
    def reopen(cls, bundle) -> BundleWriter:
        """A writer on a loaded bundle's directory, to add or replace results and manifest entries in place."""
        return cls(bundle.root, bundle.name, bundle.base.spec, bundle.base.id, list(bundle.tasks.values()),
                   bundle.manifest.get("description", ""))

    def has(self, rel: str) -> bool:
        """Whether ``rel`` is already written and intact (used to resume a build)."""
        entry, path = self.manifest["files"].get(rel), self.root / rel
        return bool(entry) and path.exists() and path.stat().st_size == entry["bytes"] and sha256_file(path) == entry["sha256"]

    def _record(self, rel: str) -> None:
        path = self.root / rel
        self.manifest["files"][rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        self.save_manifest()

    def has_vector(self, mode: str, task: str, config: FinetuneConfig) -> bool:
        """Whether the (mode, task) vector is written, intact and was trained with exactly ``config``."""
        rel = Files.vector(mode, task)
        if not self.has(rel):
            return False
        with safe_open(str(self.root / rel), "pt") as f:
            return trained_with(f.metadata() or {}, config)

    def start_over_unless(self, signature: dict, *also: dict) -> bool:
        """Keep the files of an earlier (interrupted) build only if it was made from the same ``signature`` (what
        the data, heads and vectors depend on besides θ0, whose id is checked on opening; ``also``: older spellings
        of the same signature, kept too); records ``signature``; returns whether any earlier file other than θ0
        was dropped."""
        signature = json.loads(json.dumps(signature))
        same = [signature, *(json.loads(json.dumps(a)) for a in also)]
        dropped = False
        if self.manifest.get("signature") not in same:
            dropped = any(rel != Files.BASE for rel in self.manifest["files"])
            self.manifest["files"] = {k: v for k, v in self.manifest["files"].items() if k == Files.BASE}
            self.manifest["modes"], self.manifest["finetune"] = [], {}
        self.manifest["signature"] = signature
        self.save_manifest()
        return dropped

    def put_tensors(self, rel: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None):
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        out, seen = {}, set()
        for k, v in tensors.items():
            v = v.detach().cpu().contiguous()
            # safetensors refuses tensors that share storage (e.g. one zero-shot head used by two tasks): copy repeats
            ptr = v.untyped_storage().data_ptr() if v.numel() else None
            out[k] = v.clone() if ptr in seen else v
            seen.add(ptr)
        save_file(out, str(tmp), metadata=dict(metadata or {}))
        os.replace(tmp, path)
        self._record(rel)

    def put_json(self, rel: str, obj: Any) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")  # atomic, like the tensors: an interrupted write leaves no half file
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
        os.replace(tmp, path)
        self._record(rel)

    def put_base(self, base: Base) -> None:
        self.put_tensors(Files.BASE, base.params)

    def put_heads(self, heads: Mapping[str, Head]) -> None:
        self.put_tensors(Files.HEADS, heads_to_tensors(heads))

    def put_data(self, task: str, splits: Mapping[str, Split]) -> None:
        tensors = {}
        for split, s in splits.items():
            tensors[f"{split}.images"], tensors[f"{split}.labels"] = s.images, s.labels
        self.put_tensors(Files.data(task), tensors)

    def put_vector(self, tv: TaskVector, config: FinetuneConfig | None = None) -> None:
        """Write ``tv`` as ``vectors/<mode>/<task>.safetensors`` and list it; ``config``: the recipe it was trained
        with (recorded per mode in the manifest)."""
        rel = Files.vector(tv.mode, tv.task)
        path = self.root / rel  # not tv.save: that refuses a bundle's own files, which the writer alone may replace
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(tv.to_bytes())
        os.replace(tmp, path)
        self._record(rel)
        if tv.mode not in self.manifest["modes"]:
            self.manifest["modes"].append(tv.mode)
        if config is not None:
            self.manifest["finetune"][tv.mode] = config.to_dict()
        self.save_manifest()

    def put_result(self, name: str, obj: Any) -> None:
        """Write a precomputed result as ``results/<name>.json`` and list it."""
        self.put_json(Files.result(name), obj)

    def set_provenance(self, prov: Provenance) -> None:
        self.manifest["provenance"] = prov.to_dict()
        self.save_manifest()

    def save_manifest(self) -> None:
        path = self.root / Files.MANIFEST
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.manifest, indent=1, sort_keys=True))
        os.replace(tmp, path)


# -- reading ------------------------------------------------------------------------------------------------------
def _tensors(root: Path, rel: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(root / rel))
    except Exception as e:
        raise BundleError(f"{rel}: cannot be read as safetensors ({e})") from None


def load_bundle(root: str | Path, verify: bool = True, index: BundleIndex | None = None) -> Bundle:
    """Load and check a bundle directory; :class:`BundleError` names the file at fault.  ``index``: the bundle's
    :class:`~arith.index.BundleIndex` when already read (its files checked then); its manifest and results are used
    as they are, and with ``verify`` every file must be unchanged since (a stat each, no second hash)."""
    root = Path(root).expanduser()
    if index is None:
        index = BundleIndex.open(root, verify=verify)
    elif verify:
        index.check_unchanged()
    manifest, tasks = dict(index.manifest), dict(index.tasks)
    files = manifest["files"]
    try:
        spec = ModelSpec.from_dict(manifest["base"]["spec"])
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{Files.MANIFEST}: bad base spec ({e})") from None
    base_state = _tensors(root, Files.BASE)
    base_id = manifest["base"].get("id")
    try:
        base = Base.from_state_dict(spec, base_state, base_id=base_id)
    except ValueError as e:
        raise BundleError(f"{Files.BASE}: {e}") from None
    if base_id and "#" in base_id and base_id.rsplit("#", 1)[1] != fingerprint(base.params):
        raise BundleError(f"{Files.BASE}: weights do not match the base id {base_id!r}")

    raw_heads = _tensors(root, Files.HEADS)  # its own error names the file
    try:
        heads = heads_from_tensors(raw_heads, list(tasks), base.embed_dim)
    except ValueError as e:
        raise BundleError(f"{Files.HEADS}: {e}") from None
    for t, h in heads.items():
        if h.num_classes != tasks[t].num_classes:
            raise BundleError(f"{Files.HEADS}: head of {t!r} has {h.num_classes} classes, the task {tasks[t].num_classes}")

    data: dict[str, dict[str, Split]] = {}
    for t in tasks:
        rel = Files.data(t)
        if rel not in files:
            continue
        raw = _tensors(root, rel)
        data[t] = {}
        for split in EVAL_SPLITS:
            if f"{split}.images" in raw:
                try:
                    s = Split(raw[f"{split}.images"], raw[f"{split}.labels"].long())
                except (KeyError, ValueError) as e:
                    raise BundleError(f"{rel}: {split} split: {e}") from None
                if len(s) and (int(s.labels.max()) >= tasks[t].num_classes or int(s.labels.min()) < 0):
                    raise BundleError(f"{rel}: {split} labels outside 0..{tasks[t].num_classes - 1}")
                if len(s) != index.sizes.get(t, {}).get(split):  # what the index answered from must be what loads
                    raise BundleError(f"{rel}: {split} split has {len(s)} images, its header "
                                      f"{index.sizes.get(t, {}).get(split)}")
                data[t][split] = s

    vectors: dict[str, dict[str, TaskVector]] = {}
    for mode, names in index.vectors.items():  # modes in the manifest's order, as the index lists them
        for name in names:
            rel = Files.vector(mode, name)
            try:
                tensors, meta = load_safetensors(root / rel)
                # the builder took τ = θ_t − θ0 itself: the weights-as-vector check (a pass over every tensor
                # against θ0) guards uploads, not the load of a checksummed bundle
                tv = validate(tensors, meta, base, check_weights=False)
            except (SafetensorsError, TaskVectorError) as e:
                raise BundleError(f"{rel}: {e}") from None
            if (tv.mode, tv.task) != (mode, name):
                raise BundleError(f"{rel}: holds mode {tv.mode!r} task {tv.task!r}, its path says otherwise")
            vectors.setdefault(mode, {})[name] = tv
    results = dict(index.results)

    linear_cache = {}
    for split in EVAL_SPLITS:
        rel = Files.linear_cache(split)
        if rel in files:
            linear_cache[split] = _check_linear_cache(rel, _tensors(root, rel), base.embed_dim,
                                                      [len(d[split]) for d in data.values() if split in d])
    return Bundle(root, manifest, base, tasks, heads, data, vectors, results, linear_cache)


def _check_linear_cache(rel: str, cache: dict[str, torch.Tensor], dim: int, stored: list[int]) -> dict:
    """A linear cache holds f0 and J τ entries of one shape [images, dim], finite, and per-task row counts that fit
    the stored evaluation images (it may cover fewer); else :class:`BundleError` naming the file."""
    f0 = cache.get("f0")
    if f0 is None or f0.ndim != 2 or f0.shape[1] != dim or not f0.is_floating_point():
        shape = None if f0 is None else tuple(f0.shape)
        raise BundleError(f"{rel}: f0 has shape {shape}, expected [images, {dim}] floats")
    for key, t in cache.items():
        if key == ROWS_KEY:
            continue
        if t.shape != f0.shape or not t.is_floating_point():
            raise BundleError(f"{rel}: {key} has shape {tuple(t.shape)} {t.dtype}, f0 has {tuple(f0.shape)}")
        if not torch.isfinite(t).all():
            raise BundleError(f"{rel}: {key} holds non-finite values")
    rows = cache.get(ROWS_KEY)
    if rows is not None:
        counts = rows.tolist() if rows.ndim == 1 and not rows.is_floating_point() else None
        if (counts is None or len(counts) != len(stored) or sum(counts) != f0.shape[0]
                or any(not 0 <= c <= n for c, n in zip(counts, stored))):
            raise BundleError(f"{rel}: per-task rows {rows.tolist()} do not fit the evaluation data "
                              f"({stored} images, f0 has {f0.shape[0]} rows)")
    return cache


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
