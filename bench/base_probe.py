"""Study: how the pre-trained base (pre-training length, width, source pool) moves task addition and kernel
agreement, scored on VALIDATION only.

Pre-trains θ0 with the default recipe (``arith/default/build.py``) plus ``--set`` changes to its
:class:`~arith.default.pretrain.PretrainConfig`, then fine-tunes the eight default tasks in each ``--modes`` at each
``--lrs`` (or the ``--runs`` given, e.g. ``attn=1e-3 full=3e-4``) with the build's schedule and scores the vectors as
``bench/recipe_probe.py`` does (single-task, validation-chosen α, addition and its gain over zero-shot, normalized
accuracy, agreement with the linearization, ‖τ‖/‖θ0‖; with ``--xi`` also the mean ξ on the build's pairs and grid).
Test splits are never read.  The JSON is rewritten after every (mode, lr), so a run cut short keeps what it finished.

    python -m bench.base_probe --set steps=16000 --tag steps16k --json bench/results/base_probe/steps16k.json
    python -m bench.base_probe --summarize bench/results/base_probe/*.json     # docs/default-bundle.md's table

``--device cuda`` runs pre-training, fine-tuning and evaluation on a GPU, which makes a study of several bases
affordable (``bench/base_sweep.sh`` runs one on a lent GPU machine); the build itself runs on the CPU.  A GPU's θ0
differs from the CPU's (the 8,000-step reference: validation zero-shot 62.5 on an H100, 63.6 on the CPU; means move
by up to about a point), so compare variants within one device.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench._common import machine, markdown_table, parser, set_threads, write_json_atomic
from bench.recipe_probe import score, summary_line


def probe_base(pretrain_overrides: dict, modes=("attn",), lrs=(None,), finetune_overrides: dict | None = None,
               device: str = "cpu", quick: bool = False, on_result=None, log=print,
               runs: list[tuple[str, float | None]] | None = None, xi: bool = False) -> dict:
    """Pre-train a variant of the default base and score fine-tuning on it; ``on_result(res)`` after each run.
    ``quick`` starts from the ``--quick`` build's recipe (3 tasks, a tiny ViT) instead of the default's.  The runs are
    every (mode, lr) of ``modes`` × ``lrs`` in that order, or ``runs``, a list of (mode, lr) pairs, in its order
    (``[]``: pre-training only).
    ``xi`` also scores the mean ξ over the build's pairs and grid, on the build's images per task for ξ."""
    from arith.data import get_task
    from arith.default.build import DEFAULT, QUICK, pretrained_base
    from arith.default.concepts import TASK_STYLES
    from arith.default.pretrain import PretrainConfig
    from arith.evaluate import Evaluator
    from arith.modes import get_mode
    from arith.specs import FinetuneConfig

    recipe = QUICK if quick else DEFAULT
    plan = recipe.plan
    pcfg = PretrainConfig.from_dict({**recipe.pretrain.to_dict(), **pretrain_overrides})
    runs = [(m, lr) for m in modes for lr in lrs] if runs is None else runs
    for mode, _ in runs:  # an unknown mode fails now, not after pre-training (an hour for a wide base on a CPU)
        get_mode(mode)
    start = time.perf_counter()
    base, group_heads, stats = pretrained_base(pcfg, log, device=device)
    stats = {**stats, "wall_seconds": time.perf_counter() - start}
    log(f"pre-training: {stats['seconds']:.0f} s, final loss {stats['final_loss']:.3f}, scale {stats['scale']:.1f}")
    res = {"pretrain": pcfg.to_dict(), "pretraining": stats, "device": str(device),
           "parameters": sum(v.numel() for v in base.params.values()), "runs": []}
    if not runs:
        return res
    base = base.to(device)
    group = {s.name: s.group for s in TASK_STYLES}
    heads = {t: group_heads[group[t]] for t in plan.tasks}
    train = {t: get_task(t).load("train", n=plan.train_n, seed=plan.seed) for t in plan.tasks}
    val = {t: {"val": get_task(t).load("val", n=plan.eval_n, seed=plan.seed)} for t in plan.tasks}
    ev = Evaluator(base, heads, val)
    xi_ev = Evaluator(base, heads, val, max_per_task=plan.xi_eval_n) if xi else None
    for mode, lr in runs:
        over = {**(finetune_overrides or {}), **({"lr": lr} if lr is not None else {})}
        cfg = FinetuneConfig.from_dict({**plan.config(mode).to_dict(), **over})
        res["runs"].append(score(ev, train, cfg, xi_ev=xi_ev, xi_pairs=plan.xi_pairs, xi_grid=plan.xi_grid))
        if on_result:
            on_result(res)
    return res


def summarize(paths) -> str:
    """A Markdown table of earlier ``--json`` results, one row per (variant, mode, lr) (docs/default-bundle.md's table)."""
    head = ("variant", "steps", "width", "layers", "pool", "final loss", "mode", "lr", "zero-shot", "single-task", "α",
            "addition", "over zero-shot", "normalized", "agreement", "mean ξ", "‖τ‖/‖θ0‖", "device")
    rows = []
    for path in paths:
        r = json.loads(Path(path).read_text())
        pre = r["pretrain"]
        for run in r["runs"]:
            pct = {k: f"{100 * run[k]:.1f}" for k in ("zero_shot", "single", "absolute", "normalized")}
            cells = (r["tag"], f"{pre['steps']:,}", pre["width"], pre["layers"], f"{pre['pool']:,}",
                     f"{r['pretraining']['final_loss']:.3f}",
                     run["mode"], f"{run['config']['lr']:g}", pct["zero_shot"], pct["single"], f"{run['alpha']:.2f}",
                     pct["absolute"], f"{100 * run['gain']:+.1f}", pct["normalized"],
                     "—" if run["agreement"] is None else f"{100 * run['agreement']:.1f}",
                     "—" if run.get("xi") is None else f"{run['xi']:.3f}", f"{run['tau_relative_norm']:.3f}",
                     r.get("device", "cpu").split(":")[0])
            rows.append(cells)
    return markdown_table(head, rows)


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0], bundle=False)
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="pre-training fields that differ from the default recipe, e.g. steps=16000 width=128")
    p.add_argument("--finetune-set", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="fine-tuning fields that differ from the build's schedule")
    p.add_argument("--modes", nargs="+", default=["attn"])
    p.add_argument("--lrs", nargs="+", type=float, default=[None], help="learning rates (default: the build's)")
    p.add_argument("--runs", nargs="+", default=None, metavar="MODE=LR",
                   help="these (mode, lr) runs in this order instead of --modes × --lrs, e.g. attn=1e-3 full=3e-4")
    p.add_argument("--xi", action="store_true", help="also the mean ξ over the build's pairs and grid")
    p.add_argument("--pretrain-only", action="store_true",
                   help="only pre-train and print the seconds per step (what a variant would cost a build here)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="start from the --quick build's recipe (tests)")
    p.add_argument("--tag", default="base")
    p.add_argument("--summarize", nargs="+", metavar="JSON", help="only print a table of earlier results")
    args = p.parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize))
        return 0
    set_threads(args.threads)
    from arith.lrsweep import parse_overrides

    def write(res):
        res = {"tag": args.tag, **res, "machine": machine()}
        if args.json:
            write_json_atomic(args.json, res)
        print(summary_line(f"{args.tag} {res['runs'][-1]['mode']} lr {res['runs'][-1]['config']['lr']:g}",
                           res["runs"][-1]), flush=True)

    runs = None
    if args.runs:
        try:
            runs = [(m, float(lr)) for m, lr in (r.split("=", 1) for r in args.runs)]
        except ValueError:
            p.error(f"--runs takes MODE=LR pairs, e.g. attn=1e-3; got {' '.join(args.runs)}")
    res = probe_base(parse_overrides(args.overrides), args.modes, args.lrs, parse_overrides(args.finetune_set),
                     args.device, args.quick, on_result=write, log=lambda m: print(f"{args.tag}: {m}", flush=True),
                     runs=[] if args.pretrain_only else runs, xi=args.xi)
    if args.pretrain_only:
        pre = res["pretraining"]
        print(f"{args.tag}: {1000 * pre['seconds'] / res['pretrain']['steps']:.1f} ms per pre-training step, "
              f"{res['parameters']:,} parameters ({args.device})"
              + ("; θ0 came from the cache, so this is the time of the run that cached it (ARITH_DATA_CACHE=off "
                 "times a fresh run)" if pre.get("reused") else ""))
        if args.json:
            write_json_atomic(args.json, {"tag": args.tag, **res, "machine": machine()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
