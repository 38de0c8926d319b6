"""Building bundles: base → heads → evaluation splits → task vectors per (mode, task) → precomputed results.

One pipeline serves the tests' tiny bundles, ``build-default`` and ``build-bundle`` for real CLIP.  It resumes:
a (mode, task) whose vector file is already in the manifest with a matching hash is not trained again.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .bundle import Bundle, BundleWriter, load_bundle
from .data import Split, data_root_setting, get_task
from .disentangle import GRID, xi_grid
from .finetune import finetune
from .heads import Head, prototype_head, zeroshot_head
from .kernel import kernel_report
from .models import Base
from .modes import get_mode
from .protocols import alone_curve, pair_costs, task_addition, task_negation
from .realsets import folder_fingerprint
from .specs import PRECOMPUTED, Files, FinetuneConfig, Provenance, TaskInfo, _JsonRecord
from .taskvec import cosine_matrix, library_versions

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Stopwatch:
    """Wall-clock time per named stage of a build (the provenance's ``stages``: [name, minutes] in run order)."""

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self._seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name`` (a stage timed twice adds up)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[name] = self._seconds.get(name, 0.0) + time.perf_counter() - t0

    def stages(self) -> list[list]:
        return [[k, round(v / 60, 2)] for k, v in self._seconds.items()]

    def minutes(self) -> float:
        """Minutes since the stopwatch was made."""
        return round((time.perf_counter() - self._start) / 60, 2)


@dataclass(frozen=True)
class BuildPlan(_JsonRecord):
    """What a bundle holds and how it is made.

    ``finetune`` maps mode -> FinetuneConfig fields (the mode name is filled in); ``eval_n``/``train_n`` cap the
    images per task; ``xi_pairs`` is the number of task pairs with precomputed ξ grids (per mode).
    """

    name: str
    tasks: tuple[str, ...]
    modes: tuple[str, ...]
    finetune: dict = field(default_factory=dict)
    eval_n: int | None = 256
    train_n: int | None = None
    head: str = "auto"  # "zeroshot" (text tower), "prototype", "auto", or "given" (build_bundle(heads=...))
    seed: int = 0
    xi_pairs: int = 6
    xi_grid: int = 15
    xi_eval_n: int | None = None  # images per task for ξ grids (None: all stored); on-demand grids use the same
    linear_cache_splits: tuple[str, ...] = ("val", "test")  # splits whose f(θ0; x), J τ_t are stored (sliders: test)
    kernel: bool = True
    negation: bool = True
    data_root: str | None = None
    description: str = ""

    def __post_init__(self):
        # checked as the plan is made, before a build writes anything: a bad mode or lr must not leave a
        # half-written bundle behind (each per-mode config is checked by FinetuneConfig itself)
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"a build plan needs one or more distinct tasks (got {list(self.tasks)})")
        if len(set(self.modes)) != len(self.modes):
            raise ValueError(f"a mode is listed twice: {list(self.modes)}")
        for mode in self.modes:
            get_mode(mode)
            self.config(mode)
        for name in ("eval_n", "train_n", "xi_eval_n"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive number of images per task, or unset (got {v!r})")
        if self.xi_pairs < 0 or self.xi_grid < 2:
            raise ValueError(f"xi_pairs must be ≥ 0 and xi_grid ≥ 2 (got {self.xi_pairs} and {self.xi_grid})")

    def config(self, mode: str) -> FinetuneConfig:
        return FinetuneConfig.from_dict({**self.finetune.get(mode, self.finetune.get("*", {})), "mode": mode})


def make_heads(base: Base, tasks: Sequence[TaskInfo], train: dict[str, Split] | None, kind: str,
               clip=None, tokenizer=None) -> dict[str, Head]:
    """Zero-shot heads from a text tower when one is given (``kind`` zeroshot/auto), else prototype heads."""
    if kind == "zeroshot" and clip is None:
        raise ValueError("zero-shot heads need a CLIP model with a text tower")
    heads = {}
    for t in tasks:
        if clip is not None and kind in ("zeroshot", "auto"):
            heads[t.name] = zeroshot_head(clip, tokenizer, t.classnames, t.templates, device=base.device)
        else:
            split = train[t.name]
            heads[t.name] = prototype_head(base.encode(split.images), split.labels, t.num_classes)
    return heads


def precompute(bundle_dir: str | Path, plan: BuildPlan, log: Log = _stderr, device: str | None = None,
               only: Sequence[str] | None = None, bundle: Bundle | None = None) -> dict:
    """Compute the results the app shows first and store them in the bundle (results/*.json, linear caches).

    ``device`` (e.g. ``"cuda"``) runs the evaluations there; the default is the CPU.  ``only`` (names from
    ``PRECOMPUTED``) recomputes just those results and keeps the bundle's others (``python -m arith precompute``);
    the single-task accuracies that addition and alone need are then read from the bundle.  ``bundle``: the bundle
    at ``bundle_dir`` when the caller has already loaded it (it is not loaded again).
    """
    unknown = sorted(set(only or ()) - set(PRECOMPUTED))
    if unknown:
        raise ValueError(f"precompute: unknown result(s) {unknown} (known: {', '.join(PRECOMPUTED)})")

    def want(name: str) -> bool:
        return only is None or name in only

    bundle = load_bundle(bundle_dir) if bundle is None else bundle
    if device is not None and device != "cpu":
        bundle = dataclasses.replace(bundle, base=bundle.base.to(device))
    writer = BundleWriter.reopen(bundle)
    # every stored image: the Explorer serves these results when it evaluates on all.  Not from the stored linear
    # caches: the linear mode's results and the caches themselves are recomputed from θ0 and the vectors, like the rest
    ev = bundle.evaluator(linear_cache=False)
    tasks = [t for t in bundle.task_names if t in ev.tasks]
    own = {m: {t: vs[t] for t in tasks if t in vs} for m, vs in bundle.vectors.items()}  # each mode's, in task order
    out: dict = {}
    if want("accuracy") or "accuracy" not in bundle.results:
        log("precompute: zero-shot and single-task accuracies")
        out["accuracy"] = {"zeroshot": {s: ev.zeroshot(s) for s in ("val", "test")},
                           "finetuned": {m: {s: ev.finetuned(vs, s) for s in ("val", "test")}
                                         for m, vs in bundle.vectors.items()}}
        writer.put_result("accuracy", out["accuracy"])
    finetuned = (out.get("accuracy") or bundle.results["accuracy"])["finetuned"]
    if want("addition"):
        out["addition"] = {}
        for mode, vs in own.items():
            log(f"precompute: task addition ({mode})")
            out["addition"][mode] = task_addition(ev, vs, finetuned=finetuned[mode])
        writer.put_result("addition", out["addition"])
    if want("alone"):  # each task alone at every α of the sweep (test): the app's toggle and table --alone, instantly
        out["alone"] = {}
        for mode, vs in own.items():
            log(f"precompute: each task alone ({mode})")
            out["alone"][mode] = alone_curve(ev, vs, finetuned=finetuned[mode], splits=("test",))
        writer.put_result("alone", out["alone"])
    if want("pairs") and len(tasks) > 1:  # which vector costs which task, at each mode's chosen α: the app's heatmap
        additions = out.get("addition") or bundle.results.get("addition") or {}
        out["pairs"] = {}
        for mode, vs in own.items():
            if len(vs) < 2:  # nothing to pair
                continue
            if not isinstance(additions.get(mode), dict) or "alpha" not in additions[mode]:
                raise ValueError(f"precompute pairs: the bundle has no task addition for {mode} (its chosen α); "
                                 "precompute addition first (--only addition pairs)")
            log(f"precompute: pair costs ({mode})")
            out["pairs"][mode] = pair_costs(ev, vs, additions[mode]["alpha"])
        writer.put_result("pairs", out["pairs"])
    if want("negation") and plan.negation and len(tasks) > 1:
        out["negation"] = {}
        for mode, vs in bundle.vectors.items():
            log(f"precompute: task negation ({mode})")
            out["negation"][mode] = {t: task_negation(ev, vs[t], t, [c for c in tasks if c != t]) for t in vs}
        writer.put_result("negation", out["negation"])
    pairs = list(itertools.combinations(tasks, 2))[: plan.xi_pairs]
    if want("disentanglement") and pairs:
        grid = [float(a) for a in torch.linspace(GRID[0], GRID[-1], plan.xi_grid)]
        out["disentanglement"] = {}
        xev = ev if plan.xi_eval_n is None else bundle.evaluator(max_per_task=plan.xi_eval_n, linear_cache=False)
        for mode, vs in bundle.vectors.items():
            t0 = time.perf_counter()
            out["disentanglement"][mode] = {f"{a}|{b}": xi_grid(xev, vs[a], vs[b], a, b, grid) for a, b in pairs}
            log(f"precompute: ξ grids ({mode}, {len(pairs)} pairs, {time.perf_counter() - t0:.0f}s)")
        writer.put_result("disentanglement", out["disentanglement"])
    if want("kernel") and plan.kernel:
        out["kernel"] = {}
        for mode, vs in bundle.vectors.items():
            log(f"precompute: kernel diagnostics ({mode})")
            out["kernel"][mode] = {t: kernel_report(ev, vs[t], t) for t in vs}
        writer.put_result("kernel", out["kernel"])
    if want("similarity"):
        # stored with each mode's vectors in alphabetical order, however the bundle lists them (task order since
        # f6318b0), so that a precompute reproduces the committed table; the Explorer permutes it for display
        out["similarity"] = similarity_table({m: dict(sorted(vs.items())) for m, vs in bundle.vectors.items()})
        writer.put_result("similarity", out["similarity"])
    linear = [m for m, vs in bundle.vectors.items() if vs and next(iter(vs.values())).linearized]
    if want("linear_cache") and linear:
        vecs = [tv for m in linear for tv in bundle.vectors[m].values()]
        for split in plan.linear_cache_splits:  # every stored image; an evaluator on a subset slices it
            writer.put_tensors(Files.linear_cache(split), ev.export_linear_cache(vecs, split))
    return out


def cpu_capability() -> str:
    """torch's CPU kernel level here ("AVX2", "AVX512", ...): CPU results are bit-for-bit reproducible only on the
    same (and at the same intra-op thread count)."""
    return torch.backends.cpu.get_cpu_capability()


def similarity_table(vectors: dict[str, dict]) -> dict:
    """Cosine similarities of task vectors: within each mode, and across all modes (labels ``mode/task``)."""
    out = {"by_mode": {}}
    for mode, vs in vectors.items():
        names = list(vs)
        out["by_mode"][mode] = {"labels": names, "cosine": cosine_matrix([vs[n] for n in names]).tolist(),
                                "norms": {n: vs[n].norm() for n in names}}
    labels = [f"{m}/{t}" for m, vs in vectors.items() for t in vs]
    flat = [vs[t] for vs in vectors.values() for t in vs]
    out["all"] = {"labels": labels, "cosine": cosine_matrix(flat).tolist()}
    return out


def build_signature(plan: BuildPlan, sources) -> dict:
    """What a bundle's data, heads and vectors depend on besides θ0 (checked by id) and each vector's fine-tuning
    config (checked per file): a resumed build keeps earlier files only when this is unchanged (or is the
    :func:`legacy_signature` of the same build)."""
    sources = list(sources)
    root = None
    if any(hasattr(s, "splits") and not getattr(s, "path", None) for s in sources):  # a task reads the data root:
        root = data_root_setting(plan.data_root)  # one folder however it is named (the flag or the variable, ~, a
        root = str(Path(root).expanduser().resolve()) if root else None  # trailing slash, a symlink)
    sig = {**legacy_signature(plan, sources), "data_root": root}
    # a custom folder task is its folder, classes and image files, not only its name (absent otherwise: the
    # default's signature stays as it was); the files: a folder that changed since would move images between splits
    folders = {s.name: {"path": s.path, "classes": list(s.classnames), "files": folder_fingerprint(Path(s.path))}
               for s in sources if getattr(s, "path", None)}
    if folders:
        sig["folders"] = folders
    return sig


def legacy_signature(plan: BuildPlan, sources) -> dict:
    """The signature builds recorded before the data root was resolved and folders were named (the root as typed):
    a build interrupted then is resumed, not started over, and gets the new signature."""
    return {"tasks": {s.name: getattr(s, "version", "") for s in sources}, "seed": plan.seed, "eval_n": plan.eval_n,
            "train_n": plan.train_n, "head": plan.head, "data_root": plan.data_root}


def open_writer(out: str | Path, plan: BuildPlan, base: Base, infos: list[TaskInfo], sources, log: Log) -> BundleWriter:
    """The writer of a build into ``out``, keeping what an earlier build of the same base and signature wrote there
    (and saying when it starts over instead)."""
    sources = list(sources)
    writer = BundleWriter(out, plan.name, base.spec, base.id, infos, plan.description)
    if writer.replaced_base is not None:  # its files are dropped already; the signature below finds nothing to drop
        log(f"build: {out} holds a bundle of another base model ({writer.replaced_base}); starting over")
    if writer.start_over_unless(build_signature(plan, sources), legacy_signature(plan, sources)):
        log(f"build: {out} holds a build of other data or settings; starting over")
    return writer


def build_bundle(out: str | Path, base: Base, plan: BuildPlan, *, clip=None, tokenizer=None,
                 heads: dict[str, Head] | None = None, log: Log = _stderr, progress_factory=None,
                 command: str = "", extra_results: dict | None = None, stopwatch: Stopwatch | None = None) -> Path:
    """Build (or resume) the bundle of ``plan`` for ``base`` in ``out``; returns the directory.

    Heads come from ``heads`` when given (e.g. the default's concept rows), else from ``clip``'s text tower, else
    prototypes.  ``extra_results`` are stored as results/<name>.json before precomputation.  ``stopwatch`` (one
    started earlier, e.g. before pre-training) times the stages; the provenance records them and its minutes.
    """
    watch = stopwatch or Stopwatch()
    with watch.stage("task data"):
        writer, sources, infos, train = _prepare(out, base, plan, heads, clip, tokenizer, log, extra_results)
    heads = load_bundle(out, verify=False).heads
    with watch.stage("fine-tuning"):
        _finetune_all(out, writer, base, plan, sources, train, heads, log, progress_factory)
    with watch.stage("precompute"):
        precompute(out, plan, log)
    writer = BundleWriter(out, plan.name, base.spec, base.id, infos, plan.description)
    writer.manifest["plan"] = plan.to_dict()
    writer.set_provenance(Provenance(command=command, seed=plan.seed, versions=library_versions(),
                                     minutes=watch.minutes(), stages=watch.stages(),
                                     created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                     threads=torch.get_num_threads(), cpu=cpu_capability()))
    return Path(out)


def _prepare(out, base: Base, plan: BuildPlan, heads, clip, tokenizer, log: Log, extra_results):
    """The bundle's base, evaluation data, heads and extra results (each kept when a resumed build has it)."""
    sources = [get_task(t) for t in plan.tasks]
    infos = [s.info() for s in sources]
    writer = open_writer(out, plan, base, infos, sources, log)
    if not writer.has(Files.BASE):
        writer.put_base(base)
    size, root = base.image_size, plan.data_root
    log(f"build: loading {len(sources)} task(s)")
    train = {s.name: s.load("train", size=size, n=plan.train_n, seed=plan.seed, root=root) for s in sources}
    for s in sources:
        if not writer.has(Files.data(s.name)):
            writer.put_data(s.name, {sp: s.load(sp, size=size, n=plan.eval_n, seed=plan.seed, root=root)
                                     for sp in ("val", "test")})
    if not writer.has(Files.HEADS):
        writer.put_heads(heads if heads is not None else make_heads(base, infos, train, plan.head, clip, tokenizer))
    for name, obj in (extra_results or {}).items():
        writer.put_result(name, obj)
    return writer, sources, infos, train


def _finetune_all(out, writer: BundleWriter, base: Base, plan: BuildPlan, sources, train, heads, log: Log,
                  progress_factory) -> None:
    """Train every (mode, task) vector the bundle lacks (or holds with another config), recording its timing."""
    timing = json.loads((Path(out) / Files.result("training")).read_text()) if writer.has(Files.result("training")) else {}
    for mode in plan.modes:
        cfg = plan.config(mode)
        for s in sources:
            if writer.has_vector(mode, s.name, cfg):
                continue
            bar = progress_factory(f"{mode}/{s.name}", cfg.steps) if progress_factory else None
            res = finetune(base, heads[s.name], train[s.name], cfg, task=s.name, progress=bar)
            writer.put_vector(res.vector, cfg)
            timing.setdefault(mode, {})[s.name] = {"seconds": res.seconds, "seconds_per_step": res.seconds_per_step,
                                                   "final_loss": res.losses[-1], "peak_memory_bytes": res.peak_memory_bytes}
            writer.put_result("training", timing)
            log(f"build: {mode}/{s.name}: {cfg.steps} steps in {res.seconds:.1f}s, loss {res.losses[-1]:.3f}")
