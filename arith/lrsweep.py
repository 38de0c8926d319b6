"""``python -m arith lr-sweep``: choose fine-tuning learning rates on validation splits only.

For each mode and candidate lr, fine-tune every task with the bundle's schedule and score the mean single-task
*validation* accuracy; the best lr per mode is reported (ties: the smaller lr), together with whether one lr is
best for both ``full`` and ``attn``.  The sweep is stored in the bundle as ``results/lr_selection.json`` so the
choice behind a bundle's task vectors can be audited; test splits are never looked at.
"""

from __future__ import annotations

import time

import numpy as np

from .bundle import BundleWriter, load_bundle
from .cli import _bar, _emit, arguments, command
from .data import get_task
from .finetune import finetune
from .specs import FinetuneConfig


def lr_sweep(bundle_dir, modes, lrs, tasks=None, steps=None, train_n=None, progress_factory=None, log=print) -> dict:
    """Validation accuracy per (mode, lr, task); returns {"runs": [...], "chosen": {mode: lr}, ...}."""
    b = load_bundle(bundle_dir)
    ev = b.evaluator()
    tasks = list(tasks or b.task_names)
    plan = b.manifest.get("plan", {})
    train_n = train_n or plan.get("train_n")
    data = {t: get_task(t).load("train", size=b.base.image_size, n=train_n, seed=plan.get("seed", 0),
                                root=plan.get("data_root")) for t in tasks}
    runs, chosen = [], {}
    for mode in modes:
        base_cfg = (b.finetune_config(mode) or FinetuneConfig(mode=mode)).to_dict()
        if steps:
            base_cfg.update(steps=steps, warmup_steps=min(base_cfg["warmup_steps"], steps // 10))
        scores = {}
        for lr in lrs:
            cfg = FinetuneConfig.from_dict({**base_cfg, "mode": mode, "lr": lr})
            acc, t0 = {}, time.perf_counter()
            for t in tasks:
                bar = progress_factory(f"{mode} lr={lr:g} {t}", cfg.steps) if progress_factory else None
                tv = finetune(b.base, b.heads[t], data[t], cfg, task=t, progress=bar).vector
                acc[t] = ev.evaluate([tv], [1.0], "val", [t])[t]
            scores[lr] = float(np.mean(list(acc.values())))
            runs.append({"mode": mode, "lr": lr, "steps": cfg.steps, "val_accuracy": acc, "val_mean": scores[lr],
                         "seconds": time.perf_counter() - t0})
            log(f"lr-sweep: {mode} lr={lr:g}: mean validation accuracy {100 * scores[lr]:.1f}")
        chosen[mode] = max(sorted(scores), key=lambda lr: (round(scores[lr], 6), -lr))
    shared = None
    if "full" in chosen and "attn" in chosen:
        shared = chosen["full"] == chosen["attn"]
    return {"modes": list(modes), "lrs": list(lrs), "tasks": tasks, "runs": runs, "chosen": chosen,
            "full_and_attn_agree": shared, "criterion": "mean single-task validation accuracy"}


def _args(p):
    p.add_argument("--bundle", required=True)
    p.add_argument("--modes", nargs="+", default=["full", "attn", "linear", "mlp"])
    p.add_argument("--lrs", nargs="+", type=float, default=[1e-4, 3e-4, 1e-3])
    p.add_argument("--tasks", nargs="+", help="tasks to sweep on (default: all)")
    p.add_argument("--steps", type=int, help="override the bundle's fine-tuning steps")
    p.add_argument("--train-n", type=int)
    p.add_argument("--save", action="store_true", help="store the sweep in the bundle (results/lr_selection.json)")


@command("lr-sweep", "choose fine-tuning learning rates per mode on validation splits only")
@arguments(_args)
def cmd_lr_sweep(args):
    res = lr_sweep(args.bundle, args.modes, args.lrs, args.tasks, args.steps, args.train_n,
                   progress_factory=lambda d, n: _bar(d), log=lambda m: None if args.json else print(m))
    if args.save:
        b = load_bundle(args.bundle)
        w = BundleWriter(b.root, b.name, b.base.spec, b.base.id, list(b.tasks.values()), b.manifest.get("description", ""))
        w.put_result("lr_selection", res)
    _emit(args, res, lambda r: "chosen: " + ", ".join(f"{m} {lr:g}" for m, lr in r["chosen"].items()))
