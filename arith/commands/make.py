"""Commands that describe, train, time and precompute: ``info``, ``finetune``, ``cost``, ``precompute``.
(``build-bundle`` lives in ``arith/realbuild.py``, ``build-default`` in ``arith/default/build.py``, ``import`` in
``arith/convert.py``, ``lr-sweep`` in ``arith/lrsweep.py``.)"""

from __future__ import annotations

import os
import sys

from ..cli import _bar, _bundle_arg, _config_arg, _emit, _mode_arg, _pct, _table, arguments, command, device_type
from ..specs import PRECOMPUTED


def _info_args(p):
    p.add_argument("--model", help="open_clip model name, e.g. ViT-L-14 (default, without --config or --bundle: "
                                   "ViT-B-32, the paper's; no weights are downloaded)")
    p.add_argument("--config", help="inline open_clip model config: a JSON file or string")
    p.add_argument("--mode", help="one mode (default: all modes)")
    p.add_argument("--bundle", help="report on a bundle instead: its base, tasks, modes and files")


@command("info", "trainable / total parameter counts per mode (no download), or a bundle's contents")
@arguments(_info_args)
def cmd_info(args):
    from ..models import count_parameters
    from ..modes import MODES, get_mode
    from ..specs import ModelSpec

    if args.bundle and (args.model or args.config or args.mode):
        raise ValueError("info reports on a bundle (--bundle) or counts a model's parameters (--model or --config, "
                         "with --mode), not both")
    if args.bundle:
        from ..bundle import load_bundle

        b = load_bundle(args.bundle)
        res = {"bundle": str(b.root), "name": b.name, "base": b.base.spec.to_dict(), "base_id": b.base.id,
               "tasks": b.task_names, "classnames": {t: list(i.classnames) for t, i in b.tasks.items()}, "modes": b.modes,
               "results": sorted(b.results), "provenance": b.manifest.get("provenance", {})}
        _emit(args, res, lambda r: "\n".join(f"{k}: {v}" for k, v in r.items()))
        return
    if args.config:
        spec = ModelSpec(config=_config_arg(args.config))
    else:
        spec = ModelSpec(name=args.model or "ViT-B-32")
    modes = [get_mode(args.mode).name] if args.mode else list(MODES)
    rows = [{"mode": m, **count_parameters(spec, m)} for m in modes]
    for r in rows:
        r["fraction"] = r["trainable"] / r["total"]
    res = {"model": spec.label, **rows[0]} if args.mode else {"model": spec.label, "modes": rows}
    _emit(args, res, lambda r: f"{spec.label}\n" + _table(rows))


def _finetune_args(p):
    _bundle_arg(p)
    p.add_argument("--task", required=True, help="the task to fine-tune on (one of the bundle's, or --task-folder's)")
    _mode_arg(p)
    p.add_argument("--attn-bias", action="store_true", help="with --mode attn: also train the two attention biases")
    p.add_argument("--steps", type=int, help="default: the bundle's recipe for the mode; other step counts keep the "
                   "recipe's share of warm-up steps")
    p.add_argument("--batch-size", type=int, help="default: the bundle's recipe for the mode")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the bundle's recipe for the mode)")
    p.add_argument("--weight-decay", type=float, help="AdamW's decoupled decay (default: the recipe's)")
    p.add_argument("--warmup-steps", type=int, help="default: the recipe's, scaled with --steps")
    p.add_argument("--grad-clip", type=float, help="gradient-norm clip (default: the recipe's)")
    p.add_argument("--seed", type=int, help="batch order and augmentation (default: the recipe's)")
    p.add_argument("--data-root", help="where the task's training data lives (real data sets; default "
                   "$ARITH_DATA_ROOT, else the path the build recorded)")
    p.add_argument("--task-folder", action="append", default=[], metavar="NAME=PATH",
                   help="where a custom folder task's images are now (default: the path recorded in the bundle)")
    p.add_argument("--workers", type=int, help="DataLoader workers per process (default $ARITH_DATA_WORKERS or cores-1, ≤8)")
    p.add_argument("--train-n", type=int, help="use at most this many training images")
    p.add_argument("--device", type=device_type, default="auto", help="cpu, cuda, ... (default auto: cuda when available)")
    p.add_argument("--out", required=True, help="where to write the task vector (.safetensors)")


@command("finetune", "fine-tune one task in one mode and write its task vector (torchrun: data-parallel)")
@arguments(_finetune_args)
def cmd_finetune(args):
    from .. import distributed as D
    from ..bundle import load_bundle
    from ..data import data_root_setting, get_task
    from ..explore import resolve_device
    from ..finetune import finetune
    from ..specs import FinetuneConfig
    from ..taskvec import check_output_path

    args.device = resolve_device(args.device)
    check_output_path(args.out)  # before training, not after it
    if args.train_n is not None and args.train_n < 1:
        raise ValueError(f"--train-n must be a positive number of images (got {args.train_n}); leave it out for all")
    if args.attn_bias and args.mode not in ("attn", "attn_bias"):
        raise ValueError(f"--attn-bias adds the attention biases to --mode attn, not to {args.mode!r} "
                         "(or give --mode attn_bias)")
    b = load_bundle(args.bundle)
    mode = "attn_bias" if args.attn_bias else args.mode
    if args.task not in b.tasks:
        raise ValueError(f"task {args.task!r} is not in the bundle; it has {b.task_names}")
    recipe, source = b.recipe(mode)  # the Train page's too
    if args.steps is not None:  # the recipe over fewer or more steps, its warm-up keeping its share (as the Train page)
        recipe = recipe.with_steps(args.steps)
    if args.warmup_steps is not None and args.warmup_steps >= recipe.steps:
        raise ValueError(f"--warmup-steps {args.warmup_steps} leaves no step after the warm-up of a "
                         f"{recipe.steps}-step run: give fewer warm-up steps than steps")
    overrides = {"batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
                 "warmup_steps": args.warmup_steps, "grad_clip": args.grad_clip, "seed": args.seed}
    cfg = FinetuneConfig.from_dict({**recipe.to_dict(), **{k: v for k, v in overrides.items() if v is not None},
                                    "mode": mode})
    if args.workers is not None:
        os.environ["ARITH_DATA_WORKERS"] = str(args.workers)
    from ..datasets import parse_task_folders, register_folder_tasks

    # tasks read from disk: custom folders registered (where the bundle recorded them, or where they are now) and
    # checked against the bundle, the paper's data sets checked too
    root = data_root_setting(args.data_root, b.manifest.get("plan", {}).get("data_root"))  # flag, variable, recorded
    register_folder_tasks(b, parse_task_folders(args.task_folder), tasks=[args.task], root=root)
    with D.session(args.device):  # under torchrun: one process group for the run; a no-op otherwise
        if source != f"the bundle's recipe for {mode}" and D.is_main():  # borrowed: say whose numbers these are
            print(f"finetune: {source}", file=sys.stderr)
        device = D.device_for(args.device)
        base = b.base if device == "cpu" else b.base.to(device)
        train = get_task(args.task).load("train", size=base.image_size, n=args.train_n, seed=cfg.seed, root=root)
        res = finetune(base, b.heads[args.task], train, cfg, task=args.task,
                       progress=_bar(f"{mode}/{args.task}") if D.is_main() else None)
        processes = D.world_size()
    if not D.is_main():
        return 0  # rank 0 writes the vector and reports
    res.vector.save(args.out)
    ev = b.evaluator()
    acc = {s: ev.evaluate([res.vector], [1.0], s, [args.task])[args.task] for s in ("val", "test")}
    out = {"task": args.task, "mode": mode, "out": args.out, "steps": cfg.steps, "lr": cfg.lr, "seconds": res.seconds,
           "seconds_per_step": res.seconds_per_step, "final_loss": res.losses[-1], "norm": res.vector.norm(),
           "accuracy": acc, "zeroshot": {s: ev.zeroshot(s, [args.task])[args.task] for s in ("val", "test")},
           "processes": processes, "batch_size": cfg.batch_size, "recipe": source}
    _emit(args, out, lambda r: f"{mode}/{args.task}: {cfg.steps} steps in {r['seconds']:.1f}s; "
                               f"test accuracy {_pct(acc['test'])} (zero-shot {_pct(r['zeroshot']['test'])}); {args.out}")


def _cost_args(p):
    _bundle_arg(p)
    _mode_arg(p)
    p.add_argument("--task", help="whose head and images to use (default: the first task)")
    p.add_argument("--steps", type=int, default=20, help="timed steps (default 20, after warm-up steps)")
    p.add_argument("--batch-size", type=int, default=64, help="default 64")
    p.add_argument("--device", type=device_type, default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--threads", type=int, help="torch's intra-op threads for the measurement (default: torch's own)")


@command("cost", "seconds per step and peak memory of fine-tuning one mode (run one process per mode)")
@arguments(_cost_args)
def cmd_cost(args):
    from ..bundle import load_bundle
    from ..cost import measure, set_intra_op_threads

    set_intra_op_threads(args.threads)
    b = load_bundle(args.bundle)
    task = args.task or b.task_names[0]
    if task not in b.data:
        raise ValueError(f"task {task!r} is not in the bundle (or has no stored images); its tasks: "
                         f"{', '.join(b.task_names)}")
    split = b.data[task]["val"]
    res = measure(b.base, b.heads[task], split.images, split.labels, args.mode, args.steps, args.batch_size,
                  device=args.device)
    _emit(args, res, lambda r: f"{r['mode']}: {1000 * r['seconds_per_step']:.1f} ms/step, peak {r['peak_mb']:.0f} MB")


def _precompute_args(p):
    _bundle_arg(p)
    p.add_argument("--only", nargs="+", metavar="RESULT",
                   help=f"recompute only these results ({', '.join(PRECOMPUTED)}); the bundle's others are kept")
    p.add_argument("--device", type=device_type, default=None, help="run the evaluations there (e.g. cuda; default the CPU)")


@command("precompute", "recompute a bundle's precomputed results from its own vectors, with its build plan's settings "
                       "(all of them, or --only some: e.g. a result added after the bundle was built)")
@arguments(_precompute_args)
def cmd_precompute(args):
    import time

    from ..build import BuildPlan, precompute
    from ..bundle import BundleWriter, load_bundle

    b = load_bundle(args.bundle)
    if not isinstance(b.manifest.get("plan"), dict):
        raise ValueError(f"{args.bundle}: the manifest has no build plan (build-default and build-bundle record one), "
                         "so the settings of its precomputed results are unknown")
    t0 = time.perf_counter()
    out = precompute(b.root, BuildPlan.from_dict(b.manifest["plan"]), device=args.device, only=args.only, bundle=b)
    writer = BundleWriter.reopen(b)  # reads the manifest as precompute left it
    prov = dict(writer.manifest.get("provenance") or {})
    line = (time.strftime("%Y-%m-%d", time.gmtime()) + ": python -m arith precompute"
            + (" --only " + " ".join(args.only) if args.only else ""))
    prov["notes"] = "\n".join(x for x in (prov.get("notes"), line) if x)  # the build's own record stays as it was
    writer.manifest["provenance"] = prov
    writer.save_manifest()
    res = {"bundle": str(b.root), "results": sorted(out), "seconds": round(time.perf_counter() - t0, 1)}
    _emit(args, res, lambda r: f"{r['bundle']}: recomputed {', '.join(r['results'])} in {r['seconds']} s")
