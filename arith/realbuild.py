"""Bundles of real CLIP models on the paper's data sets: ``build-bundle``, ``evaluate-full`` (issue 5).

``python -m arith build-bundle --model ViT-B-32 --pretrained openai --data-root DIR --tasks cars dtd ...
--modes full attn linear --out precomputed/NAME`` fine-tunes every (task, mode) with the paper's recipe
(method.md §2: AdamW lr 1e-5, wd 0.1, batch 128, 500 warm-up steps then cosine, clip 1.0, 2000 steps, open_clip
training crops), makes zero-shot heads from each data set's prompt templates with the text tower, stores
seeded validation/test evaluation subsets and the held-out indices (``results/splits.json``), precomputes what
the app shows first and writes a bundle the app opens like the default.  It resumes: finished (mode, task)
vectors are kept.  Under ``torchrun`` every fine-tuning run is data-parallel (:mod:`arith.distributed`); rank 0
writes the bundle and precomputes the diagnostics alone after the group is released.

The same command builds tiny random models on the built-in synthetic tasks (``--config``), which is what the
tests and the README's quick example run.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from . import distributed as D
from .build import BuildPlan, Log, Stopwatch, cpu_capability, make_heads, open_writer, precompute
from .bundle import BundleWriter, load_bundle
from .cli import _bar, _config_arg, _cuda, _emit, _load_extra, _parse_coefs, _pct, _table, arguments, command, device_type
from .data import data_root_setting, get_task
from .finetune import finetune
from .models import Base, ImageEncoder, build_clip
from .specs import Files, ModelSpec, Provenance
from .taskvec import library_versions

PAPER = {"steps": 2000, "batch_size": 128, "lr": 1e-5, "weight_decay": 0.1, "warmup_steps": 500, "grad_clip": 1.0}
PROTOTYPE_N = 5000  # training images per task for prototype heads (encoders without a text tower)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _resolved(name: str, root):
    src = get_task(name)
    return src.resolve(root) if hasattr(src, "resolve") else src


def _in_memory(split):
    return split.materialize() if hasattr(split, "materialize") else split


def load_base(spec: ModelSpec, device: str = "cpu", head: str = "auto") -> tuple[Base, object, object]:
    """θ0 (and the CLIP model + tokenizer when zero-shot heads are wanted) on ``device``.

    Named models with a pretrained tag load open_clip's weights (downloaded once into its cache); inline configs
    are random (seed the global RNG first).  Under torchrun rank 0 fetches first, so the cache is filled once.
    """
    import open_clip

    has_text = "text_cfg" in (spec.config or {"text_cfg": 1})
    want_clip = head != "prototype" and has_text and (bool(spec.pretrained) or head == "zeroshot")
    if head == "zeroshot" and not has_text:
        raise ValueError("--head zeroshot needs a model with a text tower")
    if not D.is_main():
        D.barrier()
    try:
        if want_clip:
            clip = build_clip(spec, load_weights=True, device=device)
            if spec.name:
                tokenizer = open_clip.get_tokenizer(spec.name)
            else:
                ctx = spec.config["text_cfg"].get("context_length", 77)
                tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=ctx)
            base = Base(spec, ImageEncoder(clip.visual))
        else:
            clip = tokenizer = None
            base = Base.from_spec(spec, device=device)
    finally:
        if D.is_main():
            D.barrier()
    return base, clip, tokenizer


def _read_heads(out, tasks: list[str], embed_dim: int):
    """The bundle's frozen heads (read alone: the vectors may be gigabytes)."""
    from safetensors.torch import load_file

    from .heads import heads_from_tensors

    return heads_from_tensors(load_file(str(Path(out) / Files.HEADS)), tasks, embed_dim)


def build_real(out: str | Path, base: Base, plan: BuildPlan, *, clip=None, tokenizer=None, device: str | None = None,
               log: Log = _stderr, progress_factory: Callable | None = None, command: str = "") -> dict:
    """Build (or resume) ``plan``'s bundle for ``base`` in ``out``; returns what was trained and kept.

    Works in one process and under torchrun (every rank calls it; rank 0 writes).  ``device`` runs the
    precomputation (default: ``base``'s device).
    """
    watch = Stopwatch()
    main = D.is_main()
    log = log if main else (lambda m: None)
    device = device or str(base.device)
    root = plan.data_root
    sources = {t: _resolved(t, root) for t in plan.tasks}
    for s in sources.values():  # a data set that is not where it should be: refused before anything is written
        if hasattr(s, "splits"):
            s.splits(root)
        # a bundle written inside a folder task's tree would become one of its class folders on the next read
        folder = Path(s.path).resolve() if getattr(s, "path", None) else None
        if folder is not None and (folder == Path(out).resolve() or folder in Path(out).resolve().parents):
            raise ValueError(f"--out {out} is inside the folder of task {s.name!r} ({folder}): the bundle's own "
                             "files would be read as a class of its images; write the bundle elsewhere")
    infos = [s.info() for s in sources.values()]
    size = base.image_size
    writer = None
    with watch.stage("task data"):  # evaluation splits and heads (rank 0; the others wait at the barrier)
        if main:
            writer = open_writer(out, plan, base, infos, sources.values(), log)
            if not writer.has(Files.BASE):
                writer.put_base(base)
            records = {}
            for name, s in sources.items():
                if not writer.has(Files.data(name)):
                    count = f"up to {plan.eval_n}" if plan.eval_n else "all"
                    log(f"build: {name}: storing {count} validation and test images per split")
                    writer.put_data(name, {sp: _in_memory(s.load(sp, size=size, n=plan.eval_n, seed=plan.seed, root=root))
                                           for sp in ("val", "test")})
                if hasattr(s, "splits"):
                    from .datasets import split_record

                    records[name] = split_record(name, root, eval_n=plan.eval_n, train_n=plan.train_n, seed=plan.seed)
            if records:
                writer.put_result("splits", records)
            if not writer.has(Files.HEADS):
                needs_train = clip is None or plan.head == "prototype"
                train = None
                if needs_train:
                    log("build: prototype heads from θ0 features of the training images")
                    train = {n: s.load("train", size=size, seed=plan.seed, root=root,  # lazy: encoded batch by batch
                                       n=min(plan.train_n or PROTOTYPE_N, PROTOTYPE_N) if hasattr(s, "splits")
                                       else plan.train_n) for n, s in sources.items()}
                else:
                    log(f"build: zero-shot heads from the text tower ({sum(len(i.templates) for i in infos)} templates)")
                writer.put_heads(make_heads(base, infos, train, plan.head, clip, tokenizer))
    D.barrier()
    heads = _read_heads(out, list(sources), base.embed_dim)
    pending = [(m, t) for m in plan.modes for t in plan.tasks
               if not writer.has_vector(m, t, plan.config(m))] if main else None
    pending = D.broadcast(pending)
    kept = [(m, t) for m in plan.modes for t in plan.tasks if (m, t) not in pending]
    if kept:
        log(f"build: resuming; {len(kept)} finished (mode, task) vector(s) kept")
    timing_path = Path(out) / Files.result("training")
    timing = json.loads(timing_path.read_text()) if main and writer.has(Files.result("training")) else {}
    with watch.stage("fine-tuning"):
        for i, (mode, task) in enumerate(pending):
            cfg = plan.config(mode)
            train = sources[task].load("train", size=size, n=plan.train_n, seed=plan.seed, root=root)
            bar = progress_factory(f"[{i + 1}/{len(pending)}] {mode}/{task}", cfg.steps) if progress_factory and main else None
            res = finetune(base, heads[task], train, cfg, task=task, progress=bar)
            if main:
                writer.put_vector(res.vector, cfg)
                timing.setdefault(mode, {})[task] = {
                    "seconds": res.seconds, "seconds_per_step": res.seconds_per_step, "final_loss": res.losses[-1],
                    "peak_memory_bytes": res.peak_memory_bytes, "device": str(base.device), "processes": D.world_size(),
                    "train_images": len(train)}
                writer.put_result("training", timing)
                log(f"build: [{i + 1}/{len(pending)}] {mode}/{task}: {cfg.steps} steps in {res.seconds:.1f}s "
                    f"({D.world_size()} process(es)), loss {res.losses[-1]:.3f}")
    world = D.world_size()
    D.shutdown()  # the other ranks are done; rank 0 precomputes alone (no collective can time out meanwhile)
    summary = {"trained": [f"{m}/{t}" for m, t in pending], "kept": [f"{m}/{t}" for m, t in kept], "processes": world}
    if not main:
        return summary
    log(f"build: precomputing diagnostics on {device}")
    with watch.stage("precompute"):
        precompute(out, plan, log, device=device)
    writer = BundleWriter(out, plan.name, base.spec, base.id, infos, plan.description)
    writer.manifest["plan"] = plan.to_dict()
    minutes = watch.minutes()
    writer.set_provenance(Provenance(command=command, seed=plan.seed, versions=library_versions(), minutes=minutes,
                                     stages=watch.stages(),
                                     created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                     threads=torch.get_num_threads(), cpu=cpu_capability()))
    return {**summary, "minutes": minutes, "stages": watch.stages()}


# -- exact full-split evaluation ------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_full(bundle, mode: str, coefs: Mapping[str, float], *, root=None, split: str = "test",
                  tasks: Sequence[str] | None = None, extra: Mapping | None = None, batch_size: int = 256,
                  device: str = "cpu", autocast: str | None = None, normalize: bool = False,
                  progress: Callable[[int, int], None] | None = None) -> dict:
    """Exact accuracy of θ0 + Σ λ_t τ_t on the *whole* split of each task, streamed from the data root.

    ``split="test"`` is the official test split (all of it, not the bundle's stored subset); ``"val"`` the whole
    validation hold-out.  In a linearized mode the merged model is the linear model.  ``normalize`` also
    evaluates each task's own fine-tuned model to report normalized accuracy (one more pass per task).
    """
    from .linearize import jvp_features
    from .merge import apply_delta, combine
    from .metrics import summarize
    from .modes import get_mode

    base = bundle.base if device == "cpu" else bundle.base.to(device)
    vectors = dict(bundle.vectors.get(mode, {}))
    vectors.update({t: v for t, v in (extra or {}).items() if v.mode == mode})
    unknown = sorted(set(coefs) - set(vectors))
    if unknown:
        raise ValueError(f"no {mode} task vector for {unknown}; available: {sorted(vectors)}")
    tasks = list(tasks or bundle.task_names)
    linear = get_mode(mode).linearized
    sources = {t: get_task(t) for t in tasks}
    for t, s in sources.items():
        if not hasattr(s, "splits"):
            raise ValueError(f"task {t!r} has no images on disk to stream (evaluate-full is for real data sets)")
    lazies = {t: s.load(split, size=base.image_size, n=None, root=root) for t, s in sources.items()}
    total = sum(len(x) for x in lazies.values()) * (2 if normalize else 1)
    done = [0]

    def run(names, lams, only=None) -> dict[str, float]:
        delta = combine([vectors[n] for n in names], lams) if names else {}
        params = apply_delta(base.params, delta) if delta and not linear else None
        tangent = {k: v.to(base.device) for k, v in delta.items()} if linear else {}
        acc = {}
        for t in only or tasks:
            lazy, correct, pos = lazies[t], 0, 0
            for images in lazy.batches(batch_size):
                x = base.preprocess(images)
                if linear and tangent:
                    f = sum(jvp_features(base, tangent, x))
                elif autocast is not None:
                    with torch.autocast(base.device.type, dtype=torch.float16 if autocast == "fp16" else torch.bfloat16):
                        f = base.features(params, x).float()
                else:
                    f = base.features(params, x)
                pred = bundle.heads[t].predict(f).cpu()
                correct += int((pred == lazy.labels[pos:pos + len(images)]).sum())
                pos += len(images)
                done[0] += len(images)
                if progress is not None:
                    progress(done[0], total)
            acc[t] = correct / max(1, len(lazy))
        return acc

    start = time.perf_counter()
    names = [t for t, v in coefs.items() if float(v) != 0.0]
    acc = run(names, [float(coefs[n]) for n in names])
    finetuned = {t: run([t], [1.0], [t])[t] for t in tasks if t in vectors} if normalize else None
    out = summarize(acc, finetuned if finetuned and set(finetuned) == set(acc) else None)
    out.update({"mode": mode, "split": split, "coefficients": {n: float(coefs[n]) for n in names},
                "images": {t: len(x) for t, x in lazies.items()}, "seconds": time.perf_counter() - start,
                "device": str(base.device), "autocast": autocast})
    if finetuned is not None:
        out["finetuned"] = finetuned
    return out


# -- commands -------------------------------------------------------------------------------------------------------
def _build_args(p):
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", help="open_clip model name, e.g. ViT-B-32, ViT-B-16, ViT-L-14")
    g.add_argument("--config", help="inline open_clip model config (JSON file or string): random-init tiny models")
    p.add_argument("--pretrained", help="open_clip pretrained tag or checkpoint path (e.g. openai)")
    p.add_argument("--tasks", nargs="+", default=[],
                   help="task names (the paper's: cars dtd eurosat gtsrb mnist resisc45 sun397 svhn; synthetic-*), "
                        "folder:PATH or NAME=PATH for an ImageFolder tree")
    p.add_argument("--task-folder", action="append", default=[], metavar="NAME=PATH",
                   help="add a custom task from an ImageFolder tree (repeatable)")
    p.add_argument("--modes", nargs="+", default=["full", "attn", "linear"], help="fine-tuning modes (default full attn linear)")
    p.add_argument("--data-root", default=None, help="root folder of the data sets (default $ARITH_DATA_ROOT)")
    p.add_argument("--out", required=True, help="bundle directory to write (resumes if it exists)")
    p.add_argument("--name", help="bundle name (default: the directory name)")
    p.add_argument("--steps", type=int, default=PAPER["steps"],
                   help=f"fine-tuning steps per task (default {PAPER['steps']}, the paper's)")
    p.add_argument("--batch-size", type=int, default=PAPER["batch_size"], help="global batch (split across torchrun ranks)")
    p.add_argument("--lr", type=float, default=PAPER["lr"], help=f"peak learning rate, every mode (default {PAPER['lr']:g})")
    p.add_argument("--weight-decay", type=float, default=PAPER["weight_decay"],
                   help=f"AdamW's (default {PAPER['weight_decay']:g})")
    p.add_argument("--warmup-steps", type=int, default=PAPER["warmup_steps"],
                   help=f"linear warm-up, then cosine decay (default {PAPER['warmup_steps']})")
    p.add_argument("--grad-clip", type=float, default=PAPER["grad_clip"],
                   help=f"gradient-norm clip (default {PAPER['grad_clip']:g})")
    p.add_argument("--augment", choices=["auto", "on", "off"], default="auto",
                   help="training crops: open_clip's RandomResizedCrop for data sets on disk, pixel jitter for "
                        "synthetic tasks (auto: on when every task is on disk)")
    p.add_argument("--eval-n", type=int, default=256, help="validation/test images stored per task (the slider subset)")
    p.add_argument("--train-n", type=int, help="training images per task (default: all)")
    p.add_argument("--xi-pairs", type=int, default=6, help="task pairs whose ξ grids are precomputed per mode (default 6)")
    p.add_argument("--xi-grid", type=int, default=15, help="ξ grid points per axis over [−2, 2] (default 15)")
    p.add_argument("--head", default="auto", choices=["auto", "zeroshot", "prototype"],
                   help="frozen heads: CLIP zero-shot (class names × templates), class prototypes, or auto (zero-shot "
                        "for pretrained weights with a text tower, else prototypes)")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--device", type=device_type, default="cuda" if _cuda() else "cpu", help="default cuda when present, else cpu")
    p.add_argument("--workers", type=int, help="DataLoader workers per process (default $ARITH_DATA_WORKERS or cores-1, ≤8)")


def _config_spec(args) -> ModelSpec:
    if args.config:
        cfg = _config_arg(args.config)
        return ModelSpec(config=cfg)
    return ModelSpec(name=args.model, pretrained=args.pretrained)


@command("build-bundle", "fine-tune every (task, mode) and write a bundle the app loads (resumable; torchrun-ready)")
@arguments(_build_args)
def cmd_build_bundle(args):
    import os

    from .datasets import parse_task

    if args.workers is not None:
        os.environ["ARITH_DATA_WORKERS"] = str(args.workers)
    tasks = [parse_task(t) for t in args.tasks] + [parse_task(f if "=" in f else f"folder:{f}") for f in args.task_folder]
    if not tasks:
        raise ValueError("no tasks: give --tasks and/or --task-folder")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"a task is listed twice: {tasks}")
    spec = _config_spec(args)
    on_disk = all(hasattr(get_task(t), "splits") for t in tasks)
    augment = on_disk if args.augment == "auto" else args.augment == "on"
    ft = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
          "warmup_steps": min(args.warmup_steps, args.steps // 2), "grad_clip": args.grad_clip, "seed": args.seed,
          "augment": augment}
    # the plan checks itself (modes, learning rates, sizes) before the base is loaded or anything written
    plan = BuildPlan(name=args.name or Path(args.out).name, tasks=tuple(tasks), modes=tuple(args.modes),
                     finetune={"*": ft}, eval_n=args.eval_n, train_n=args.train_n, head=args.head, seed=args.seed,
                     xi_pairs=args.xi_pairs, xi_grid=args.xi_grid, data_root=args.data_root,
                     description=f"{spec.label} on {', '.join(tasks)}")
    with D.session(args.device):
        device = D.device_for(args.device)
        torch.manual_seed(args.seed)
        base, clip, tokenizer = load_base(spec, device, args.head)
        summary = build_real(args.out, base, plan, clip=clip, tokenizer=tokenizer, device=device,
                             progress_factory=lambda desc, total: _bar(desc),
                             command="python -m arith " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    if not D.is_main():
        return 0
    b = load_bundle(args.out)
    res = {"out": str(args.out), "base_id": b.base.id, "tasks": b.task_names, "modes": b.modes,
           "results": sorted(b.results), **summary}
    _emit(args, res, lambda r: f"bundle written to {r['out']} ({len(r['tasks'])} tasks × {len(r['modes'])} modes; "
                               f"trained {len(r['trained'])}, kept {len(r['kept'])}) in {r['minutes']} minutes ("
                               + ", ".join(f"{k} {v}" for k, v in r["stages"]) + ")")


def _full_args(p):
    from .cli import _bundle_arg, _mode_arg, _vectors_arg

    _bundle_arg(p)
    _mode_arg(p)
    p.add_argument("--coef", action="append", default=[], metavar="TASK=VALUE", help="coefficient λ of a task vector")
    p.add_argument("--data-root", default=None,
                   help="root folder of the data sets (default $ARITH_DATA_ROOT, else the path the build recorded)")
    p.add_argument("--task-folder", action="append", default=[], metavar="NAME=PATH",
                   help="where a custom folder task's images are (default: the path recorded in the bundle)")
    p.add_argument("--tasks", nargs="+", help="tasks to evaluate (default: all)")
    p.add_argument("--split", default="test", choices=["val", "test"], help="default test")
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch (default 256)")
    p.add_argument("--device", type=device_type, default="cuda" if _cuda() else "cpu", help="default cuda when present, else cpu")
    p.add_argument("--amp", choices=["fp16", "bf16"], help="autocast the forward passes (τ stays fp32; not in linear modes)")
    p.add_argument("--normalize", action="store_true", help="also evaluate each task's own fine-tuned model")
    _vectors_arg(p)


@command("evaluate-full", "exact accuracy of θ0 + Σ λ_t τ_t on the whole test (or val) split, streamed from --data-root")
@arguments(_full_args)
def cmd_evaluate_full(args):
    b = load_bundle(args.bundle)
    from .datasets import parse_task_folders, register_folder_tasks

    root = data_root_setting(args.data_root, b.manifest.get("plan", {}).get("data_root"))  # flag, variable, recorded
    register_folder_tasks(b, parse_task_folders(args.task_folder), tasks=args.tasks, root=root)
    res = evaluate_full(b, args.mode, _parse_coefs(args.coef), root=root, split=args.split, tasks=args.tasks,
                        extra=_load_extra(b, args.vector, args.mode), batch_size=args.batch_size, device=args.device,
                        autocast=args.amp, normalize=args.normalize, progress=_bar(f"{args.split} {args.mode}"))
    _emit(args, res, lambda r: _table([{"task": t, "images": r["images"][t], "accuracy": _pct(a)}
                                       for t, a in r["accuracy"].items()])
          + f"\nabsolute {_pct(r['absolute'])}  normalized {_pct(r.get('normalized'))}")


from . import space as _space  # noqa: E402,F401  (registers space-init and space-prepare)
