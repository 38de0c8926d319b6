"""Evaluating merged models with frozen heads (method.md §3), fast enough for a slider.

An :class:`Evaluator` owns the evaluation images of a set of tasks, preprocessed once and concatenated so that a
merged model is evaluated on every task in one batched pass; each task's slice then goes through that task's
head.  Linearized models never run the network at request time: f(x; θ0) and J(θ0)τ_t are cached per split
(and may be seeded from a bundle), so f_lin(x; θ0 + Σ λ_t τ_t) = f(x; θ0) + Σ λ_t J τ_t is a weighted sum.
All caches are bounded LRUs keyed by content hashes; none of them is ever modified in place.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .data import Split
from .heads import Head
from .linearize import jvp_features
from .lru import LRU
from .merge import apply_delta, check_coefs, combine, parse_method
from .metrics import check_max_per_task
from .models import Base
from .taskvec import TaskVector


@dataclass(frozen=True)
class EvalSet:
    """One split of every task: preprocessed images concatenated in task order, with each task's slice."""

    tasks: tuple[str, ...]
    x: torch.Tensor
    labels: torch.Tensor
    slices: Mapping[str, slice]

    def rows(self, tasks: Sequence[str]) -> torch.Tensor:
        return torch.cat([torch.arange(self.slices[t].start, self.slices[t].stop) for t in tasks])


class Evaluator:
    """Per-task top-1 accuracy of merged models on fixed evaluation sets.

    ``data[task][split]`` are uint8 splits; ``max_per_task`` keeps the first n images of each (the fixed
    interactive subset); ``batch_size`` bounds memory of a forward pass.  ``autocast`` (``"fp16"`` or ``"bf16"``)
    runs the non-linear forward passes of merged models under ``torch.autocast`` for speed on a GPU: the merged
    weights θ0 + Σ λ τ are still formed in fp32 (τ is never rounded), only the matrix products of the forward pass
    are.  Off by default; f(x; θ0) (zero-shot, the constant term of the linear model) and the linearized (JVP) passes
    always run in fp32.  Caches are bounded: J τ by ``cache_size`` entries and ``jvp_cache_mb``, shared θ0
    activations by 4 entries of at most ``prefix_cache_mb`` each.  On a GPU, task vectors are copied there on first
    use and kept, so a slider move merges on the GPU and moves nothing: a ViT-B/32
    bundle's vectors are 0.1–0.35 GB each, and summing eight on the CPU then moving the sum cost 0.04–0.18 s of a
    0.45–0.60 s move (BENCHMARKS.md, *GPU*).  The kept copies are the vectors' own values (the CPU originals are never
    written to), in one cache per device that every evaluator of the process shares (:func:`shared_vector_cache`:
    least recently used first out, a quarter of the device's memory), or in the evaluator's own when
    ``vector_cache_mb`` is given; a request whose vectors do not fit merges on the CPU as before.
    """

    def __init__(self, base: Base, heads: Mapping[str, Head], data: Mapping[str, Mapping[str, Split]],
                 max_per_task: int | None = None, batch_size: int | None = None, cache_size: int = 256,
                 autocast: str | None = None, prefix_cache_mb: float = 64.0, jvp_cache_mb: float = 512.0,
                 vector_cache_mb: float | None = None):
        if autocast not in (None, "fp16", "bf16"):
            raise ValueError(f"autocast must be None, 'fp16' or 'bf16', got {autocast!r}")
        check_max_per_task(max_per_task)
        self.autocast = autocast
        self.base, self.heads = base, dict(heads)
        headless = [t for t in data if t not in self.heads]
        if headless:
            raise ValueError(f"evaluation data for task(s) {headless} without a head (heads: {', '.join(self.heads)})")
        self.tasks = tuple(data)
        self._data = {t: dict(data[t]) for t in self.tasks}
        # CPU: batches of 256 keep each activation small enough to be served from the allocator's free lists
        # instead of fresh page-faulted memory (25 % faster than 1024 on the default's encoder, same results)
        self.max_per_task = max_per_task
        self.batch_size = batch_size or (256 if base.device.type == "cpu" else 1024)
        self._sets: dict[str, EvalSet] = {}
        self._lock = threading.Lock()
        self._f0: dict[str, torch.Tensor] = {}
        self._jvp = LRU(cache_size, max_bytes=int(jvp_cache_mb * 2**20))
        # θ0 activations entering the first stage a merge touches, per (split, stage); see _resume
        self._prefix, self.prefix_cache_bytes = LRU(4), int(prefix_cache_mb * 2**20)
        # task vectors kept on the device: the process's cache for it, or this evaluator's own
        self._vectors = (shared_vector_cache(base.device) if vector_cache_mb is None
                         else new_vector_cache(base.device, vector_cache_mb))

    def __repr__(self) -> str:
        return (f"Evaluator({len(self.tasks)} tasks: {', '.join(self.tasks)}; θ0 {self.base.id!r} on {self.base.device}"
                f"{'' if self.max_per_task is None else f'; {self.max_per_task} images per task'}"
                f"{'' if self.autocast is None else f'; autocast {self.autocast}'})")

    # -- evaluation sets ------------------------------------------------------------------------------------------
    def eval_set(self, split: str) -> EvalSet:
        """Every task's evaluation images of ``split`` (at most ``max_per_task`` each), preprocessed once on the
        evaluator's device and concatenated in task order, with each task's slice."""
        with self._lock:
            if split not in self._sets:
                xs, ys, slices, pos = [], [], {}, 0
                for t in self.tasks:
                    if split not in self._data[t]:
                        raise KeyError(f"task {t!r} has no {split!r} split")
                    s = self._data[t][split].head(self.max_per_task)
                    n = self.heads[t].num_classes
                    if len(s) and (int(s.labels.min()) < 0 or int(s.labels.max()) >= n):
                        raise ValueError(f"task {t!r}: {split} labels outside its head's classes 0..{n - 1}")
                    xs.append(self.base.preprocess(s.images))
                    ys.append(s.labels.to(self.base.device))
                    slices[t] = slice(pos, pos + len(s))
                    pos += len(s)
                self._sets[split] = EvalSet(self.tasks, torch.cat(xs), torch.cat(ys), slices)
            return self._sets[split]

    def _select(self, split: str, tasks: Sequence[str] | None) -> tuple[EvalSet, list[str], torch.Tensor | None]:
        es = self.eval_set(split)
        if isinstance(tasks, str):  # one task's name, not its letters
            tasks = [tasks]
        tasks = list(self.tasks if tasks is None else tasks)
        unknown = [t for t in tasks if t not in es.slices]
        if unknown:
            raise KeyError(f"no evaluation data for task(s) {unknown}")
        rows = None if tasks == list(self.tasks) else es.rows(tasks)
        return es, tasks, rows

    # -- features -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _forward(self, params, x: torch.Tensor, start: int = 0, stop: int | None = None,
                 fp32: bool = False) -> torch.Tensor:
        """The no-grad forward (stages ``start`` … ``stop`` - 1 of :meth:`Base.eval_features`) in batches; under
        the evaluator's ``autocast`` unless ``fp32``."""
        if self.autocast is not None and not fp32:
            dtype = torch.float16 if self.autocast == "fp16" else torch.bfloat16
            with torch.autocast(self.base.device.type, dtype=dtype):
                return torch.cat([self.base.eval_features(params, x[i:i + self.batch_size], start, stop).float()
                                  for i in range(0, len(x), self.batch_size)])
        return torch.cat([self.base.eval_features(params, x[i:i + self.batch_size], start, stop)
                          for i in range(0, len(x), self.batch_size)])

    def _resume(self, params: Mapping[str, torch.Tensor] | None, split: str) -> tuple[int, torch.Tensor | None]:
        """Where a forward under ``params`` can start: (stage, the θ0 activation entering it on every image of
        ``split``), or (0, None).  The stages before the first one a merge touches compute what they compute under
        θ0 (attention-only and MLP-only task vectors leave the patch embedding alone), so every request shares
        their output.  A touched key is one whose tensor is not θ0's own (``apply_delta`` keeps the others)."""
        st = self.base.staged
        if st is None or params is None:
            return 0, None
        theta0 = self.base.params
        first = min(st.first_stage(k for k, t in params.items() if t is not theta0.get(k)), len(st.names) - 1)
        es = self.eval_set(split)
        n_tokens = theta0["visual.positional_embedding"].shape[0]
        if first == 0 or len(es.x) * n_tokens * st.width * 4 > self.prefix_cache_bytes:
            return 0, None
        key = (split, first)
        hit = self._prefix.get(key)
        if hit is None:
            hit = self._prefix.put(key, self._forward(None, es.x, 0, first))
        return first, hit

    def features(self, params: Mapping[str, torch.Tensor] | None, split: str,
                 tasks: Sequence[str] | None = None, fp32: bool = False) -> torch.Tensor:
        """Non-linear encoder outputs f(x; params) on the split's images of ``tasks`` (all by default).  ``fp32``:
        in fp32 even under the evaluator's autocast (a comparison with :meth:`f0` or J τ, which are fp32)."""
        es, tasks, rows = self._select(split, tasks)
        exact = fp32 and self.autocast is not None
        start, h = (0, None) if exact else self._resume(params, split)  # the cached prefixes ran under autocast
        src = es.x if h is None else h
        return self._forward(params, src if rows is None else src[rows], start, fp32=fp32)

    def f0(self, split: str) -> torch.Tensor:
        """f(x; θ0) on every image of ``split`` (a copy of the cached tensor: editing it changes nothing here).
        Always fp32, autocast or not: it is the constant term of the linearized model f(x; θ0) + Σ λ J τ (method.md
        §2), whose J τ terms are fp32 too, and with small task vectors J τ can be as small as autocast's rounding of
        f(x; θ0)."""
        return self._cached_f0(split).clone()

    def _cached_f0(self, split: str) -> torch.Tensor:
        if split not in self._f0:
            self._f0[split] = self._forward(None, self.eval_set(split).x, fp32=True)
        return self._f0[split]

    def check_vectors(self, vectors: Sequence[TaskVector]) -> None:
        """Every item is a :class:`TaskVector` made for this evaluator's θ0 (its ``base_id``); else a TypeError or
        ValueError naming it.  Scoring another base's vector would give numbers, not an error (method.md §1)."""
        for v in vectors:
            if not isinstance(v, TaskVector):
                hint = " (a dict of vectors? pass list(d.values()))" if isinstance(v, str) else ""
                raise TypeError(f"expected task vectors, got a {type(v).__name__} {v!r:.40}{hint}")
            if v.base_id != self.base.id:
                raise ValueError(f"{v.task} ({v.mode}) was made for the base {v.base_id!r}, not this evaluator's "
                                 f"θ0 {self.base.id!r}")

    def jvp(self, vector: TaskVector, split: str, tasks: Sequence[str] | None = None) -> torch.Tensor:
        """J(θ0) τ on the split's images of ``tasks`` (all by default), cached by content (a copy is returned).  A
        restricted linearization (method.md §5) is the JVP of a cut vector (:meth:`arith.taskvec.TaskVector.cut`)."""
        self.check_vectors([vector])
        return self._cached_jvp(vector, split, tasks).clone()

    def _cached_jvp(self, vector: TaskVector, split: str, tasks: Sequence[str] | None = None) -> torch.Tensor:
        es, tasks, rows = self._select(split, tasks)
        sel = tuple(sorted(vector.tensors))
        ck = (vector.uid, split, None if rows is None else tuple(tasks))
        hit = self._jvp.get(ck)
        if hit is not None:
            return hit
        x = es.x if rows is None else es.x[rows]
        tangent = {k: vector.tensors[k].to(self.base.device) for k in sel}
        out = [jvp_features(self.base, tangent, x[i:i + self.batch_size])[1].detach()
               for i in range(0, len(x), self.batch_size)]
        return self._jvp.put(ck, torch.cat(out))

    def seed_linear_cache(self, split: str, f0: torch.Tensor, jvps: Mapping[str, torch.Tensor]) -> None:
        """Install precomputed f(x; θ0) and J τ (keyed by vector uid) for ``split`` (a bundle's cache file)."""
        n = len(self.eval_set(split).x)
        for name, t in [("f0", f0), *jvps.items()]:
            if t.shape[0] < n:
                raise ValueError(f"linear cache {name}: {t.shape[0]} rows for {n} evaluation images")
        # fp32 whatever the file held: the linear model's terms are fp32 (see f0)
        self._f0[split] = f0[:n].to(self.base.device, torch.float32)
        for uid, t in jvps.items():
            self._jvp.put((uid, split, None), t[:n].to(self.base.device, torch.float32))

    def export_linear_cache(self, vectors: Sequence[TaskVector], split: str) -> dict[str, torch.Tensor]:
        """f(x; θ0), J τ per vector (keyed by uid) and the per-task row counts, for a bundle's cache file."""
        es = self.eval_set(split)
        out = {"f0": self._cached_f0(split).cpu(), "__rows__": torch.tensor([es.slices[t].stop - es.slices[t].start
                                                                     for t in es.tasks])}
        for tv in vectors:
            out[tv.uid] = self._cached_jvp(tv, split).cpu()
        return out

    def linear_features(self, vectors: Sequence[TaskVector], coefs: Sequence[float], split: str,
                        tasks: Sequence[str] | None = None) -> torch.Tensor:
        """f_lin = f(x; θ0) + Σ λ_t J τ_t: a weighted sum of cached tensors, no network pass."""
        self.check_vectors(vectors)
        es, tasks, rows = self._select(split, tasks)
        out = self._cached_f0(split)
        for tv, lam in zip(vectors, coefs):
            if float(lam) != 0.0:
                out = out + float(lam) * self._cached_jvp(tv, split)
        if rows is not None:
            return out[rows]  # indexing copies
        return out.clone() if out is self._f0[split] else out  # never the cached tensor itself

    def resident(self, vectors: Sequence[TaskVector]) -> list[TaskVector]:
        """``vectors`` with their tensors on the evaluator's device: kept copies on a GPU (see the class docstring),
        the vectors themselves on the CPU, when the cache is off, or when together they exceed it (kept one by one,
        each would evict the next one needed: every request would copy them all).  A copy keeps the original's
        ``uid``; vectors of equal content share one copy (whose task and metadata are the first one's: only the
        tensors are read)."""
        cache = self._vectors
        if cache.max_bytes == 0 or sum(map(vector_bytes, vectors)) > cache.max_bytes:
            return list(vectors)
        out = []
        for tv in vectors:
            hit = cache.get(tv.uid)
            if hit is None:
                hit = TaskVector({k: t.to(self.base.device) for k, t in tv.tensors.items()}, tv.task, tv.mode,
                                 tv.base_id, dict(tv.meta))
                hit.__dict__["uid"] = tv.uid  # the same values: no second hash (cached_property's slot)
                hit.__dict__["_thresholds"] = tv._thresholds  # nor second TIES trims (plain floats, any device)
                if "_mask_uid" in tv.__dict__:  # a cut draws DARE's masks as its source does (TaskVector.cut)
                    hit.__dict__["_mask_uid"] = tv.__dict__["_mask_uid"]
                cache.put(tv.uid, hit)  # evicts others first: this request's vectors fit together
            out.append(hit)
        return out

    def merged_features(self, vectors: Sequence[TaskVector], coefs: Sequence[float], split: str,
                        tasks: Sequence[str] | None = None, method: str = "task_arithmetic",
                        linearized: bool | None = None) -> torch.Tensor:
        """Features of the merged model θ0 + δ(vectors, coefs); a linearized mode's merge is the linear model.
        With no vectors it is θ0 in every mode: :meth:`f0`, the one f(x; θ0) that zero-shot and the linear model use."""
        if len(vectors) != len(coefs):
            raise ValueError(f"{len(vectors)} task vectors but {len(coefs)} coefficients")
        check_coefs(coefs)  # every path below, the linear model's cached sums included
        self.check_vectors(vectors)
        if not vectors:
            _, _, rows = self._select(split, tasks)
            return self.f0(split) if rows is None else self._cached_f0(split)[rows]
        if linearized is None:
            linearized = bool(vectors) and all(v.linearized for v in vectors)
        if linearized:
            record, options = parse_method(method)
            if record.cached_jvp:  # Σ λ_t J τ_t of the stored (or the method's mapped) vectors, each J cached
                if record.per_vector is not None:
                    vectors = [record.per_vector(v, **options) if float(lam) != 0.0 else v for v, lam in zip(vectors, coefs)]
                return self.linear_features(vectors, coefs, split, tasks)
        delta = combine(self.resident(vectors), coefs, method)
        if linearized:
            es, tasks, rows = self._select(split, tasks)
            x = es.x if rows is None else es.x[rows]
            d = {k: v.to(self.base.device) for k, v in delta.items()}
            with torch.no_grad():
                return torch.cat([sum(jvp_features(self.base, d, x[i:i + self.batch_size]))
                                  for i in range(0, len(x), self.batch_size)])
        return self.features(apply_delta(self.base.params, delta), split, tasks)

    # -- predictions and accuracy ---------------------------------------------------------------------------------
    def predictions(self, features: torch.Tensor, split: str, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Each task's predicted labels, using its own frozen head on its own slice of ``features``."""
        es, tasks, _ = self._select(split, tasks)
        out, pos = {}, 0
        for t in tasks:
            n = es.slices[t].stop - es.slices[t].start
            out[t] = self.heads[t].predict(features[pos:pos + n])
            pos += n
        return out

    def labels(self, split: str, task: str) -> torch.Tensor:
        """The int64 labels of ``task``'s evaluation images in ``split``, in the order its features come."""
        es = self.eval_set(split)
        return es.labels[es.slices[task]]

    def accuracy(self, features: torch.Tensor, split: str, tasks: Sequence[str] | None = None) -> dict[str, float]:
        """Top-1 accuracy per task of ``features`` (the rows of ``tasks``' images in ``split``, in order) under each
        task's frozen head."""
        preds = self.predictions(features, split, tasks)
        return {t: float((p == self.labels(split, t)).float().mean()) for t, p in preds.items()}

    def evaluate(self, vectors: Sequence[TaskVector], coefs: Sequence[float], split: str = "test",
                 tasks: Sequence[str] | None = None, method: str = "task_arithmetic") -> dict[str, float]:
        """Per-task top-1 accuracy (fraction) of the merged model θ0 + δ(vectors, coefs)."""
        return self.accuracy(self.merged_features(vectors, coefs, split, tasks, method), split, tasks)

    def zeroshot(self, split: str = "test", tasks: Sequence[str] | None = None) -> dict[str, float]:
        """Accuracy of θ0 itself per task (the zero-shot heads on the pre-trained encoder)."""
        es, tasks, rows = self._select(split, tasks)
        f = self._cached_f0(split)
        return self.accuracy(f if rows is None else f[rows], split, tasks)

    def finetuned(self, vectors: Mapping[str, TaskVector], split: str = "test") -> dict[str, float]:
        """Single-task accuracy: θ0 + τ_t (its linearization in a linearized mode) on task t alone; ``vectors``: task
        -> its vector."""
        if not isinstance(vectors, Mapping):
            raise TypeError(f"finetuned() takes a mapping task -> task vector, not a {type(vectors).__name__}")
        return {t: self.evaluate([tv], [1.0], split, [t])[t] for t, tv in vectors.items()}


def vector_bytes(tv: TaskVector) -> int:
    """Bytes a task vector's tensors hold."""
    return sum(t.numel() * t.element_size() for t in tv.tensors.values())


def new_vector_cache(device: torch.device | str, mb: float | None = None, entries: int = 256) -> LRU:
    """A cache of task vectors kept on ``device`` for :meth:`Evaluator.resident`, bounded by ``mb`` MiB when given,
    else holding nothing on the CPU (the vectors are there already) and up to a quarter of a GPU's memory."""
    device = torch.device(device)
    if mb is not None:
        limit = max(0, int(mb * 2**20))
    elif device.type != "cuda":
        limit = 0
    else:
        limit = torch.cuda.get_device_properties(device).total_memory // 4
    return LRU(entries, max_bytes=limit, sizeof=vector_bytes)


_SHARED: dict[str, LRU] = {}
_SHARED_LOCK = threading.Lock()


def shared_vector_cache(device: torch.device | str) -> LRU:
    """The process's one cache of task vectors kept on ``device`` (:func:`new_vector_cache`'s default bound): every
    evaluator there shares it, so the app's bundles, sessions and ξ subsets together keep at most that much."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # "cuda" and "cuda:0" are one device, one cache
        device = torch.device("cuda", torch.cuda.current_device())
    key = str(device)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = new_vector_cache(key)
        return _SHARED[key]
