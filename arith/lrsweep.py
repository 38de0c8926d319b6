"""``python -m arith lr-sweep``: choose fine-tuning learning rates on validation splits only.

For each mode and candidate lr, fine-tune every task with the bundle's schedule and score the mean single-task
*validation* accuracy (a candidate equal to the bundle's own configuration evaluates the bundle's vectors instead of
retraining them: the same seeded run). Per mode the chosen lr is the smallest within one standard error of the best
(:func:`choose_lr`), and the result says whether ``full`` and ``attn`` got the same one. The sweep is stored in the
bundle as ``results/lr_selection.json`` so the choice behind a bundle's task vectors can be audited; test splits are
never looked at.

``--seeds`` fine-tunes every (mode, lr, task) once per fine-tuning seed and scores an lr by the mean over the seeds,
so that a choice does not rest on one seed's luck (the standard error of the rule stays the binomial one of the
validation images, which seed-averaging does not shrink; the spread over seeds is reported beside it).  ``--device``
trains and evaluates on a GPU; runs on another device than the CPU never reuse the bundle's (CPU-trained) vectors.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from .bundle import BundleWriter, load_bundle, trained_with
from .cli import _bar, _emit, arguments, command, device_type
from .data import data_root_setting, get_task
from .explore import resolve_device
from .finetune import finetune
from .specs import FinetuneConfig


def choose_lr(scores: dict[float, float], n_images: int) -> tuple[float, float]:
    """The one-standard-error rule: the smallest lr whose mean validation accuracy is within one standard error
    (binomial, over ``n_images`` validation images) of the best.  Differences smaller than the noise do not move
    the choice to larger steps (larger task vectors); returns (lr, standard error)."""
    best = max(scores.values())
    se = math.sqrt(max(best * (1 - best), 0.0) / max(n_images, 1))
    return min(lr for lr, acc in scores.items() if acc >= best - se - 1e-12), se


def _schedule(cfg: FinetuneConfig) -> dict:
    """What a run was trained with besides its mode and lr: runs of earlier sweeps are reused only on an equal one
    (runs saved before schedules were recorded match on mode, lr and steps, and only when nothing is overridden)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in ("mode", "lr")}


def _previous_runs(paths, tasks: list[str], base_id: str) -> list[dict]:
    runs = []
    for path in paths or ():
        prev = json.loads(Path(path).read_text())
        if prev.get("base_id", base_id) != base_id:
            raise ValueError(f"lr-sweep: {path} was made on another base model ({prev.get('base_id')})")
        for r in prev.get("runs", []):
            if sorted(r.get("val_accuracy", {})) != sorted(tasks):
                raise ValueError(f"lr-sweep: {path} scored other tasks ({sorted(r.get('val_accuracy', {}))})")
            runs.append({**r, "from": str(path)})
    return runs


def lr_sweep(bundle_dir, modes, lrs, tasks=None, steps=None, train_n=None, progress_factory=None, log=print,
             previous=None, overrides=None, seeds=None, device="cpu", vectors_dir=None, train=True) -> dict:
    """Validation accuracy per (mode, lr, seed, task); returns {"runs": [...], "chosen": {mode: lr}, ...}.

    ``overrides``: fine-tuning fields that differ from the bundle's schedule (e.g. ``{"weight_decay": 0.0}``), the
    same for every mode; a run on another schedule never reuses the bundle's vectors.  ``previous``: JSON files of
    earlier sweeps on the same bundle and tasks; their runs count as done (same mode, lr, seed and schedule; the
    first file that has one wins), so a sweep can be extended with new candidates or seeds without retraining the old
    ones; an lr only they have joins when they have it for every seed.  ``seeds``: fine-tuning seeds (default: the
    schedule's own); an lr scores the mean over them.  ``vectors_dir``: the vectors of every run this call trains are
    also written there, as ``<mode>_lr<lr>_seed<seed>/<task>.safetensors`` (for studies of the same runs).
    ``train=False`` only combines: it fails, naming them, when runs are missing from ``previous``."""
    overrides = dict(overrides or {})
    fixed = sorted(({"mode", "lr"} | ({"seed"} if seeds else set())) & set(overrides))
    if fixed:
        raise ValueError(f"lr-sweep: {fixed} cannot be overridden (the sweep sets them)")
    if seeds and len(set(seeds)) != len(seeds):
        raise ValueError(f"lr-sweep: --seeds repeats a seed ({list(seeds)})")
    FinetuneConfig.from_dict({**overrides, "mode": "full"})  # unknown fields and bad values fail before any training
    b = load_bundle(bundle_dir)
    tasks = list(tasks or b.task_names)
    unknown = [t for t in tasks if t not in b.tasks]
    if unknown:
        raise ValueError(f"lr-sweep: task {unknown[0]!r} is not in the bundle; its tasks: {', '.join(b.task_names)}")
    plan = b.manifest.get("plan", {})
    prev = _previous_runs(previous, tasks, b.base.id)
    n_val = sum(len(b.data[t]["val"]) for t in tasks)
    # every (mode, lr, seed) cell first, with the earlier run that answers it: nothing trains before all are known
    cells = []
    for mode in modes:
        recipe = b.recipe(mode)[0]
        base_cfg = (recipe.with_steps(steps) if steps else recipe).to_dict()  # the warm-up keeps its share
        base_cfg.update(overrides)
        own_seed = base_cfg["seed"]
        wanted = list(seeds or [own_seed])
        have = {(r["lr"], _seed_of(r, own_seed)) for r in prev if r["mode"] == mode}
        extra = {lr for lr, _ in have if all((lr, sd) in have for sd in wanted)}
        for lr in sorted(set(lrs) | extra):
            for seed in wanted:
                cfg = FinetuneConfig.from_dict({**base_cfg, "mode": mode, "lr": lr, "seed": seed})
                schedule = _schedule(cfg)
                # runs saved before schedules were recorded were trained with the schedule's own seed
                done = next((r for r in prev if (r["mode"], r["lr"], r["steps"]) == (mode, lr, cfg.steps)
                             and (r["schedule"] == schedule if "schedule" in r
                                  else not overrides and seed == own_seed)), None)
                cells.append((mode, lr, cfg, done))
    missing = [f"{m} lr={lr:g} seed={cfg.seed}" for m, lr, cfg, done in cells if done is None]
    if missing and not train:
        raise ValueError(f"lr-sweep: --no-train, but the earlier sweeps lack {len(missing)} run(s): "
                         + ", ".join(missing))
    train_n = train_n or plan.get("train_n")
    # the bundle's own vectors stand for runs on the same data, on the CPU that trained them
    reuse = train_n == plan.get("train_n") and str(device) == "cpu"
    ev = data = None
    runs = []
    for mode, lr, cfg, done in cells:
        if done is None:
            if ev is None:  # the first run to train: evaluator and training splits
                ev = b.evaluator(device=device)
                root = data_root_setting(recorded=plan.get("data_root"))  # this machine's, else the builder's
                if "splits" in b.results:  # tasks read from disk: custom folders registered, sizes checked
                    from .datasets import register_folder_tasks

                    register_folder_tasks(b, tasks=tasks, root=root)
                data = {t: get_task(t).load("train", size=b.base.image_size, n=train_n, seed=plan.get("seed", 0),
                                            root=root) for t in tasks}
            done = _run(b, ev, mode, lr, cfg, tasks, data, reuse, progress_factory, vectors_dir)
            log(f"lr-sweep: {mode} lr={lr:g} seed={cfg.seed}: mean validation accuracy {100 * done['val_mean']:.1f}")
        runs.append(done)
    chosen, best, errors, means, spread = {}, {}, {}, {}, {}
    for mode in modes:
        per_lr: dict[float, list] = {}
        for r in runs:
            if r["mode"] == mode:
                per_lr.setdefault(r["lr"], []).append(r["val_mean"])
        scores = {lr: float(np.mean(v)) for lr, v in per_lr.items()}
        chosen[mode], errors[mode] = choose_lr(scores, n_val)
        best[mode] = max(sorted(scores), key=lambda lr: (scores[lr], -lr))
        means[mode] = {repr(lr): v for lr, v in scores.items()}
        spread[mode] = {repr(lr): float(np.std(v, ddof=1)) if len(v) > 1 else None for lr, v in per_lr.items()}
    shared = None
    if "full" in chosen and "attn" in chosen:
        shared = chosen["full"] == chosen["attn"]
    n_seeds = len(seeds or [None])
    return {"modes": list(modes), "lrs": sorted({r["lr"] for r in runs}), "tasks": tasks, "runs": runs,
            "seeds": list(seeds) if seeds else None, "trained_on": sorted({r.get("device", "cpu") for r in runs}),
            "chosen": chosen, "best": best, "standard_error": errors, "validation_images": n_val,
            "val_mean": means, "seed_sd": spread,
            "full_and_attn_agree": shared, "base_id": b.base.id, "overrides": overrides,
            "criterion": "smallest lr within one standard error of the best mean single-task validation accuracy"
                         + (f" (mean over {n_seeds} fine-tuning seeds)" if n_seeds > 1 else "")}


def _seed_of(run: dict, own_seed: int) -> int:
    """The fine-tuning seed of an earlier run (runs saved before schedules were recorded used the schedule's own)."""
    return run["schedule"]["seed"] if "schedule" in run else own_seed


def _run(b, ev, mode, lr, cfg, tasks, data, reuse, progress_factory, vectors_dir) -> dict:
    """Fine-tune (or take the bundle's own vector for) every task with ``cfg``; one run record."""
    acc, reused, t0 = {}, [], time.perf_counter()
    for t in tasks:
        tv = b.vectors.get(mode, {}).get(t)
        if tv is not None and reuse and trained_with(tv.meta, cfg):  # the bundle's own vector: no retraining
            reused.append(t)
        else:
            bar = progress_factory(f"{mode} lr={lr:g} seed={cfg.seed} {t}", cfg.steps) if progress_factory else None
            tv = finetune(ev.base, b.heads[t], data[t], cfg, task=t, progress=bar).vector
        if vectors_dir:
            tv.save(Path(vectors_dir) / f"{mode}_lr{lr:g}_seed{cfg.seed}" / f"{t}.safetensors")
        acc[t] = ev.evaluate([tv], [1.0], "val", [t])[t]
    return {"mode": mode, "lr": lr, "seed": cfg.seed, "steps": cfg.steps, "val_accuracy": acc,
            "val_mean": float(np.mean(list(acc.values()))), "seconds": time.perf_counter() - t0,
            "reused_bundle_vectors": reused, "device": str(ev.base.device), "schedule": _schedule(cfg)}


def _args(p):
    p.add_argument("--bundle", required=True, help="the bundle whose recipe is swept (--save writes into it)")
    p.add_argument("--modes", nargs="+", default=["full", "attn", "linear", "mlp"], help="default full attn linear mlp")
    p.add_argument("--lrs", nargs="+", type=float, default=[1e-4, 3e-4, 1e-3],
                   help="candidate learning rates (default 1e-4 3e-4 1e-3)")
    p.add_argument("--tasks", nargs="+", help="tasks to sweep on (default: all)")
    p.add_argument("--steps", type=int, help="override the bundle's fine-tuning steps (the warm-up keeps its share "
                   "of them, as in finetune and the Train page)")
    p.add_argument("--train-n", type=int, help="training images per task (default: the bundle's recipe)")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="fine-tuning fields that differ from the bundle's schedule, e.g. weight_decay=0")
    p.add_argument("--previous", nargs="+", metavar="JSON",
                   help="earlier sweeps (lr-sweep --json output) on this bundle: their runs are reused, not retrained")
    p.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                   help="fine-tuning seeds; an lr scores the mean over them (default: the schedule's own seed)")
    p.add_argument("--device", type=device_type, default="cpu",
                   help="cpu (default), cuda, auto; on another device than the CPU the bundle's vectors are not reused")
    p.add_argument("--no-train", action="store_true",
                   help="only combine --previous sweeps: fail, naming them, if any run is missing")
    p.add_argument("--vectors", metavar="DIR", help="also write every task vector this run trains under DIR")
    p.add_argument("--save", action="store_true", help="store the sweep in the bundle (results/lr_selection.json)")


def parse_overrides(items) -> dict:
    """``FIELD=VALUE`` strings -> a dict; values are JSON (``0``, ``true``, ``1e-4``), else kept as text."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes FIELD=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@command("lr-sweep", "choose fine-tuning learning rates per mode on validation splits only")
@arguments(_args)
def cmd_lr_sweep(args):
    res = lr_sweep(args.bundle, args.modes, args.lrs, args.tasks, args.steps, args.train_n,
                   progress_factory=lambda d, n: _bar(d), log=lambda m: None if args.json else print(m, flush=True),
                   previous=args.previous, overrides=parse_overrides(args.overrides), seeds=args.seeds,
                   device=resolve_device(args.device), vectors_dir=args.vectors, train=not args.no_train)
    if args.save:
        b = load_bundle(args.bundle)
        w = BundleWriter.reopen(b)
        w.put_result("lr_selection", res)
    _emit(args, res, lambda r: "chosen: " + ", ".join(f"{m} {lr:g}" for m, lr in r["chosen"].items()))
