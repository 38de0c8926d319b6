"""``python -m arith build-default``: rebuild the embedded default bundle from offline sources, seeded.

1. draw the source pool (78 concepts in source styles) and pre-train the tiny ViT (``pretrain.py``);
2. the zero-shot head of each task = the frozen concept rows of its classes;
3. draw the eight tasks' train / validation / test splits (``tasks.py``);
4. fine-tune every (task, mode) with one schedule; learning rates are the ones chosen on validation
   (``LR`` below, with the sweeps behind them; a sweep is stored in the bundle by ``lr-sweep … --save`` after a
   rebuild, as docs/default-bundle.md's *Learning rates, chosen on validation only* shows);
5. precompute what the app shows (addition, negation, ξ grids, kernel diagnostics, similarities, linear caches)
   and the training cost per mode (one process per mode); record provenance.

``--quick`` builds a tiny bundle (3 tasks, a 2-layer ViT, a few steps) for the tests in well under a minute.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import os
import shlex
import sys
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ..build import BuildPlan, Stopwatch, build_bundle, cpu_capability
from ..cli import DEFAULT_BUNDLE, _bar, _emit, arguments, command
from ..cost import measure_modes, set_intra_op_threads
from .pretrain import PRETRAIN_VERSION, PretrainConfig, pretrain
from .render import fonts_id
from .tasks import DEFAULT_TASKS, source_pool


@dataclass(frozen=True)
class Recipe:
    pretrain: PretrainConfig
    plan: BuildPlan
    cost_steps: int = 20


MODES = ("full", "attn", "linear", "mlp")
# No weight decay: AdamW's decoupled decay pulls every trained weight towards 0, not towards θ0. At the paper's lr
# (1e-5) that is negligible; at 1e-3 it shrinks the trained weights by ~2.5 % over 500 steps, a component of τ that
# every task shares (−c·θ0), which task addition sums eight times. Validation (bench/recipe_probe.py, attn): same
# single-task accuracy, task addition +1.5 points; see docs/default-bundle.md, *Weight decay 0*.
FINETUNE = {"steps": 500, "batch_size": 64, "weight_decay": 0.0, "warmup_steps": 50, "augment": False}
# Chosen on validation only. full and attn: `python -m arith lr-sweep --lrs 3e-4 1e-3 3e-3 --seeds 0 1 2` on this
# recipe's base (all eight tasks, this schedule, three fine-tuning seeds per cell, run on a GPU by bench/lr_seeds.sh;
# the smallest lr within one standard error of the best seed-mean; bench/results/lr_seeds/, and in the bundle as
# results/lr_selection.json; the plan and rule were committed before the runs, bench/results/lr_seeds/PLAN.md).
# One seed per cell had given attn 3e-3 and full 1e-3; over three seeds attn's 1e-3 and full's 3e-4 are within
# one standard error of their best. linear and mlp: the same sweep and rule on the CPU (seed 0 from the single-seed
# sweep bench/results/lr_sweep_16k.json, seeds 1 and 2 in bench/results/lr_seeds_cpu/, plan committed before the runs);
# both choices stood (linear 92.6 / 92.6 / 92.4, mlp 93.2 / 94.0 / 94.1 at 3e-4 / 1e-3 / 3e-3).
LR = {"full": 3e-4, "attn": 1e-3, "linear": 3e-4, "mlp": 1e-3}

# torch's intra-op thread count of the committed build (this project's 2-core machine). The CPU kernels reduce
# LayerNorm's and the patch convolution's weight gradients over the batch in per-thread chunks, so pre-training and
# the modes that train those weights change with the count. `python -m bench.thread_bits` (30 steps of one task,
# bench/results/thread_bits.json): full's τ differs at 1, 3 and 4 threads from 2, linear's at 3 and 4, attn's and
# mlp's never; θ0's gradient on one batch differs at 1, 3 and 4. The build pins the count, so a machine with more
# cores rebuilds this bundle (bit for bit where its CPU runs the same kernels), and records it in the manifest's
# provenance; the θ0 cache is keyed by it.
THREADS = 2

DEFAULT = Recipe(
    PretrainConfig(width=80, layers=4, head_width=20, embed_dim=80, pool=96_000, steps=16_000, batch_size=128, lr=1e-3,
                   rich=True, softmax="global"),
    BuildPlan(name="default", tasks=DEFAULT_TASKS, modes=MODES,
              finetune={m: {**FINETUNE, "lr": LR[m]} for m in MODES},
              eval_n=256, train_n=6000, head="given", xi_pairs=6, xi_grid=15, xi_eval_n=128,
              linear_cache_splits=("test",),
              description="Offline default: a CLIP-like 4-layer ViT (width 80, 0.33 M parameters) pre-trained on 78 "
                          "procedural concepts; eight held-out-style tasks (digits, street, letters, shapes, textures, "
                          "signs, terrain, scenes)."),
)
QUICK = Recipe(
    PretrainConfig(width=32, layers=2, head_width=16, embed_dim=32, pool=3000, steps=120, batch_size=64, lr=2e-3,
                   rich=False),
    BuildPlan(name="default-quick", tasks=("digits", "terrain", "scenes"), modes=MODES,
              finetune={"*": {"steps": 12, "batch_size": 32, "lr": 1e-3, "warmup_steps": 2}},
              eval_n=48, train_n=256, head="given", xi_pairs=2, xi_grid=5,
              description="Tiny quick build for tests."),
    cost_steps=3,
)


@contextmanager
def intra_op_threads(n: int | None):
    """Run the block at ``n`` intra-op threads (None: leave torch's count alone) and restore the count after it
    (:func:`arith.cost.set_intra_op_threads`: torch is called only when the count differs)."""
    before = torch.get_num_threads()
    try:
        yield set_intra_op_threads(n)
    finally:
        set_intra_op_threads(before)


def build_default(out: str | Path, quick: bool = False, seed: int = 0, log=None, command_line: str = "",
                  threads: int | None = THREADS, lrs: Mapping[str, float] | None = None) -> Path:
    """Rebuild the default (or the quick) bundle into ``out`` at ``threads`` intra-op threads (None, from Python only:
    torch's own count; the results then hold bit for bit only on machines with that count); returns the directory.
    A rebuild into an earlier build at another count starts over: its θ0 differs, and the bundle is keyed by θ0's id.

    ``lrs`` replaces the recipe's learning rate of the modes it names (``--lr MODE=LR``: e.g. one shared lr for full
    and attn); the manifest's plan and provenance command record it."""
    recipe = QUICK if quick else DEFAULT
    plan = BuildPlan.from_dict({**recipe.plan.to_dict(), "seed": seed})
    if lrs:
        plan = dataclasses.replace(plan, finetune=with_lrs(plan, lrs))
    with intra_op_threads(threads):
        return _build_default(out, recipe, plan, seed, log, command_line, quick)


def with_lrs(plan: BuildPlan, lrs: Mapping[str, float]) -> dict:
    """``plan``'s per-mode fine-tuning settings with the learning rates of ``lrs`` in place of the recipe's."""
    unknown = sorted(set(lrs) - set(plan.modes))
    if unknown:
        raise ValueError(f"build-default: --lr names mode(s) {unknown} that the recipe does not train "
                         f"(its modes: {', '.join(plan.modes)})")
    bad = {m: lr for m, lr in lrs.items() if not (math.isfinite(lr) and lr > 0)}
    if bad:
        raise ValueError(f"build-default: learning rates must be finite and > 0 (got {bad})")
    return {m: {**plan.config(m).to_dict(), **({"lr": float(lrs[m])} if m in lrs else {})} for m in plan.modes}


def _build_default(out, recipe: Recipe, plan: BuildPlan, seed: int, log, command_line: str, quick: bool) -> Path:
    from .concepts import TASK_STYLES

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    pcfg = PretrainConfig.from_dict({**recipe.pretrain.to_dict(), "seed": seed})
    watch = Stopwatch()
    base, group_heads, stats = pretrained_base(pcfg, log, stopwatch=watch)
    stats["config"] = pcfg.to_dict()
    style = {s.name: s.group for s in TASK_STYLES}
    heads = {t: group_heads[style[t]] for t in plan.tasks}
    out = build_bundle(out, base, plan, heads=heads, log=log, progress_factory=lambda d, n: _bar(d),
                       command=command_line, extra_results={"pretraining": stats}, stopwatch=watch)
    log("build-default: measuring training cost per mode (one process each)")
    from ..bundle import BundleWriter, load_bundle

    with watch.stage("cost"):
        cost = measure_modes(out, plan.modes, steps=recipe.cost_steps, batch_size=plan.config("full").batch_size,
                             fresh_process=not quick, threads=torch.get_num_threads())
    b = load_bundle(out, verify=False)
    writer = BundleWriter.reopen(b)
    writer.put_result("cost", cost)
    prov = dict(writer.manifest["provenance"])
    prov["minutes"], prov["stages"] = watch.minutes(), watch.stages()
    prov["pretraining_reused"] = bool(stats.get("reused"))  # True: minutes exclude pre-training (see pretrained_base)
    writer.manifest["provenance"] = prov
    writer.save_manifest()
    return Path(out)


def pretrain_key(pcfg: PretrainConfig, device: str = "cpu") -> str:
    """The cache key of a pre-trained θ0: everything its bits depend on (the recipe, the source pool's version and
    fonts, torch; the device, or on the CPU the thread count and kernel level)."""
    import json

    from .tasks import POOL_VERSION

    ident = [pcfg.to_dict(), POOL_VERSION, PRETRAIN_VERSION, torch.__version__, ["fonts", fonts_id()]]
    dev = torch.device(device)
    if dev.type != "cpu":  # another device's θ0 differs; a GPU's also by model and CUDA version
        ident.append([dev.type, torch.cuda.get_device_name(dev) if dev.type == "cuda" else "", torch.version.cuda])
    else:  # and on the CPU by the thread count (see THREADS) and the kernel level (AVX2, AVX512: other bits)
        ident.append(["threads", torch.get_num_threads(), "cpu", cpu_capability()])
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def pretrained_base(pcfg: PretrainConfig, log, device: str = "cpu", stopwatch: Stopwatch | None = None) -> tuple:
    """Pre-train θ0 (or reuse the result of an identical earlier run, kept next to the cached task data).

    Pre-training is seeded and deterministic, so a rebuild that only changes fine-tuning (e.g. after
    ``lr-sweep``) need not repeat it; the manifest records whether it was reused.  ``device`` other than the CPU
    (studies only) is part of the cache key, since its θ0 differs numerically, and so is the CPU's thread count.
    Returns (θ0 as a Base, the concept rows per group as Heads, stats); ``stopwatch`` times drawing the source
    pool and pre-training (as the stages "source pool" and "pre-training"; neither runs when θ0 is reused).
    """
    import json

    from safetensors.torch import load_file, save_file

    from ..heads import Head
    from ..models import Base
    from .tasks import _cache_dir

    d = _cache_dir()
    path = d / f"pretrain-{pretrain_key(pcfg, device)}.safetensors" if d else None
    if path is not None and path.exists():
        log(f"build-default: reusing pre-trained θ0 from {path}")
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        tensors = load_file(str(path))
        theta0 = {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}
        stats = {**json.loads(meta["stats"]), "reused": True}
        heads = {k[len("head."):]: Head(v, stats["scale"]) for k, v in tensors.items() if k.startswith("head.")}
        return Base.from_state_dict(pcfg.spec(), theta0), heads, stats
    watch = stopwatch or Stopwatch()
    log(f"build-default: drawing the source pool ({pcfg.pool} images)")
    with watch.stage("source pool"):
        images, concepts = source_pool(pcfg.pool, seed=pcfg.seed, rich=pcfg.rich)
    log(f"build-default: pre-training {pcfg.width}w × {pcfg.layers} layers for {pcfg.steps} steps")
    with watch.stage("pre-training"):
        base, heads, stats = pretrain(pcfg, torch.from_numpy(images), torch.from_numpy(concepts),
                                      progress=_bar("pre-training"), device=device)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"encoder.{k}": v.detach().clone() for k, v in base.module.state_dict().items()}
        tensors.update({f"head.{g}": h.weight.detach().clone() for g, h in heads.items()})
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"stats": json.dumps(stats)})
        os.replace(tmp, path)
    return base, heads, stats


def _mode_lr(text: str) -> tuple[str, float]:
    mode, sep, value = text.partition("=")
    try:
        if sep and mode:
            return mode, float(value)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"--lr takes MODE=LR (e.g. full=1e-3), got {text!r}")


def _lr_overrides(pairs: list[tuple[str, float]]) -> dict[str, float]:
    modes = [m for m, _ in pairs]
    twice = sorted({m for m in modes if modes.count(m) > 1})
    if twice:
        raise ValueError(f"build-default: --lr given more than once for {twice}")
    return dict(pairs)


def _args(p):
    p.add_argument("--out", help="bundle directory (default precomputed/default; --quick needs one of its own)")
    p.add_argument("--quick", action="store_true", help="tiny bundle for tests (3 tasks, few steps, < 1 minute), "
                                                        "written to --out")
    p.add_argument("--seed", type=int, default=0, help="data, pre-training and fine-tuning seed (default 0, the committed one)")
    p.add_argument("--lr", action="append", default=[], metavar="MODE=LR", type=_mode_lr,
                   help="train MODE at LR instead of the recipe's (repeatable; e.g. --lr full=1e-3 for one shared lr)")
    p.add_argument("--threads", type=int, default=THREADS,
                   help=f"torch's intra-op threads (default {THREADS}, the committed bundle's: pre-training and the full "
                        "and linear vectors differ bit-wise at another count)")


@command("build-default", "rebuild the embedded default bundle from offline sources (seeded, ~40 min on 2 cores)")
@arguments(_args)
def cmd_build_default(args):
    if args.out is None and args.quick:  # a test bundle must not replace the committed one
        raise ValueError("build-default --quick builds a tiny test bundle: name its directory with --out DIR (without "
                         f"it the build would replace the embedded default in {DEFAULT_BUNDLE})")
    line = "python -m arith " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    out = build_default(args.out or DEFAULT_BUNDLE, quick=args.quick, seed=args.seed, command_line=line, threads=args.threads,
                        lrs=_lr_overrides(args.lr))
    from ..bundle import load_bundle

    b = load_bundle(out)
    prov = b.manifest["provenance"]
    res = {"out": str(out), "tasks": b.task_names, "modes": b.modes, "minutes": prov["minutes"],
           "stages": prov.get("stages", [])}
    _emit(args, res, lambda r: f"default bundle written to {r['out']} in {r['minutes']} minutes ("
          + ", ".join(f"{k} {v}" for k, v in r["stages"]) + ")")
