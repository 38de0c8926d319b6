"""A stand-in for the embedded default bundle, for developing the benchmarks before the real one exists.

Same shapes as the default is expected to have: an open_clip ViT of width 96, 4 layers, head width 32, patch 8 on
32×32 images (embed dim 96, ~0.48 M parameters), eight tasks with 256 validation + 256 test images each, and the
modes full / attn / linear / mlp.  The eight tasks are the procedural ``synthetic-*`` families (stripes, colours,
quadrants) drawn with different seeds, registered here as ``standin-<family>-<k>``; the base is randomly initialised
and the heads are class prototypes, so accuracies mean nothing: only sizes and timings matter.

    python -m bench.standin --out /tmp/standin          # ~10 minutes on one core

Every benchmark takes ``--bundle /tmp/standin``.
"""

from __future__ import annotations

import sys
import time

from bench._common import parser, set_threads

CONFIG = {"embed_dim": 96, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 96, "layers": 4, "head_width": 32}}
FAMILIES = ("stripes", "colours", "quadrants")
N_TASKS = 8


def task_names(n: int = N_TASKS) -> list[str]:
    return [f"standin-{FAMILIES[i % 3]}-{i}" for i in range(n)]


def register(n: int = N_TASKS) -> list[str]:
    """Register the stand-in tasks (idempotent); returns their names."""
    from arith.data import TASKS, TaskSource, _synthetic, get_task

    names = task_names(n)
    for i, name in enumerate(names):
        if name in TASKS:
            continue
        family = FAMILIES[i % 3]
        inner = _synthetic(family)
        src = get_task(f"synthetic-{family}")

        def load(split, *, size=32, n=None, seed=0, root=None, _inner=inner, _i=i):
            return _inner(split, size=size, n=n, seed=seed + 1000 * _i, root=root)

        TASKS[name] = TaskSource(name, src.classnames, load, src.templates, "standin",
                                 f"stand-in: {family} drawn with seed offset {1000 * i}")
    return names


def main(argv=None) -> None:
    p = parser("build the stand-in bundle (width 96, 3 heads, synthetic tasks)", bundle=False)
    p.add_argument("--out", default="/tmp/standin")
    p.add_argument("--tasks", type=int, default=N_TASKS)
    p.add_argument("--eval-n", type=int, default=256, help="validation and test images per task")
    p.add_argument("--steps", type=int, default=60, help="fine-tuning steps per (task, mode)")
    p.add_argument("--xi-pairs", type=int, default=1, help="pairs with precomputed ξ grids (the default has 6)")
    p.add_argument("--negation", action="store_true", help="also precompute task negation (slow)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    set_threads(args.threads)

    import torch

    from arith.build import BuildPlan, build_bundle
    from arith.models import Base
    from arith.specs import ModelSpec

    names = register(args.tasks)
    torch.manual_seed(args.seed)
    base = Base.from_spec(ModelSpec(config=CONFIG))
    plan = BuildPlan(name="standin", tasks=tuple(names), modes=("full", "attn", "linear", "mlp"),
                     finetune={"*": {"steps": args.steps, "batch_size": 64, "lr": 1e-3, "warmup_steps": 5}},
                     eval_n=args.eval_n, train_n=512, head="prototype", seed=args.seed, xi_pairs=args.xi_pairs,
                     xi_grid=15, kernel=True, negation=args.negation,
                     description="benchmark stand-in for the embedded default (random base, synthetic tasks)")
    start = time.perf_counter()
    build_bundle(args.out, base, plan, command=" ".join(["python -m bench.standin", *(argv or sys.argv[1:])]))
    print(f"stand-in bundle in {args.out} ({(time.perf_counter() - start) / 60:.1f} min)")


if __name__ == "__main__":
    main()
