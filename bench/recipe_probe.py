"""Study: how a fine-tuning recipe change moves task addition and kernel agreement, scored on VALIDATION only.

Fine-tunes every task of a bundle in one mode with the bundle's schedule plus the given changes, then reports on the
validation splits: mean single-task accuracy, the task-addition α chosen by normalized accuracy (0 … 1 step 0.05),
its absolute accuracy and gain over zero-shot, the agreement of f(θ0 + τ) with f(θ0) + Jτ, and ‖τ‖/‖θ0‖.  Test
splits are never read, so a variant can be chosen on what this prints.  Seeded: a rerun gives the same numbers.

    python -m bench.recipe_probe --bundle precomputed/default --mode attn --set weight_decay=0 \\
        --tag wd0 --json bench/results/recipe_probe/wd0.json

``--head-scale`` fine-tunes against the heads' logits at another temperature (evaluation keeps the bundle's heads;
accuracy does not depend on the scale).  One torch job at a time on a 2-core machine.
"""

from __future__ import annotations

import time

import numpy as np

from bench._common import emit, machine, parser, set_threads, table


def probe(bundle_dir: str, mode: str, overrides: dict, train_n: int | None = None, head_scale: float | None = None,
          kernel: bool = True) -> dict:
    """Retrain the bundle's ``mode`` vectors with ``overrides`` and score them on validation (:func:`score`)."""
    from arith.bundle import load_bundle
    from arith.data import get_task
    from arith.heads import Head
    from arith.specs import FinetuneConfig

    b = load_bundle(bundle_dir, verify=False)
    plan = b.manifest.get("plan", {})
    cfg = FinetuneConfig.from_dict({**b.recipe(mode)[0].to_dict(), **overrides})
    heads = {t: Head(b.heads[t].weight, head_scale) if head_scale else b.heads[t] for t in b.task_names}
    train = {t: get_task(t).load("train", size=b.base.image_size, n=train_n or plan.get("train_n"),
                                 seed=plan.get("seed", 0), root=plan.get("data_root")) for t in b.task_names}
    res = score(b.evaluator(), train, cfg, heads, kernel)
    return {"mode": mode, "train_n": train_n or plan.get("train_n"), "head_scale": head_scale, **res}


def score(ev, train: dict, cfg, heads: dict | None = None, kernel: bool = True, **xi) -> dict:
    """Fine-tune every task of ``train`` with ``cfg`` from ``ev.base`` and score the vectors with
    :func:`score_vectors` (``xi``: its ``xi_ev``, ``xi_pairs``, ``xi_grid``).  ``heads`` (default ``ev.heads``) are
    the ones fine-tuning trains against."""
    from arith.finetune import finetune

    heads = heads or ev.heads
    start = time.perf_counter()
    tvs = {t: finetune(ev.base, heads[t], train[t], cfg, task=t).vector for t in train}
    seconds = time.perf_counter() - start
    return {"mode": cfg.mode, "config": cfg.to_dict(), "finetune_seconds": seconds, **score_vectors(ev, tvs, kernel, **xi)}


def score_vectors(ev, tvs: dict, kernel: bool = True, xi_ev=None, xi_pairs: int = 6, xi_grid: int = 15,
                  split: str = "val") -> dict:
    """Score task vectors ``{task: τ}`` on ``ev``'s ``split`` (default "val"): single-task accuracy, task addition at
    the α (0 … 1 step 0.05) chosen by normalized accuracy **on validation** whatever ``split`` is, its gain over
    zero-shot, agreement with the linearization at s = 1, ‖τ‖/‖θ0‖; with ``xi_ev`` (an evaluator, e.g. on fewer
    images per task) also the mean ξ over the first ``xi_pairs`` task pairs on a ``xi_grid``² grid over [−2, 2]²
    (the build's pairs and grid).  ``split="test"`` reports what the build reports, for studies that choose nothing."""
    import itertools

    import torch

    from arith.disentangle import xi_grid as xi_of
    from arith.kernel import compare
    from arith.merge import merge
    from arith.metrics import GRID

    tasks = list(tvs)
    single = {sp: {t: ev.evaluate([tvs[t]], [1.0], sp, [t])[t] for t in tasks} for sp in {"val", split}}

    def addition(sp, alpha):
        acc = ev.evaluate([tvs[t] for t in tasks], [float(alpha)] * len(tasks), sp, tasks)
        return {"alpha": round(float(alpha), 2), "absolute": float(np.mean(list(acc.values()))),
                "normalized": float(np.mean([acc[t] / single[sp][t] for t in tasks])), "accuracy": acc}

    # task addition θ0 + α Σ_t τ_t, α chosen by mean normalized accuracy on validation (method.md §3)
    curve = [addition("val", alpha) for alpha in np.arange(0, 1.0001, 0.05)]
    best = max(curve, key=lambda r: r["normalized"])
    zs = curve[0]["accuracy"]  # α = 0 is θ0 itself
    if split != "val":
        best, zs = addition(split, best["alpha"]), ev.evaluate([], [], split, tasks)
    agree = {}
    if kernel:  # share of predictions on which the non-linear model agrees with its linearization at s = 1
        for t in tasks:
            f0 = ev.merged_features([], [], split, [t])
            f_nl = ev.features(merge(ev.base.params, [tvs[t]], [1.0]), split, [t])
            agree[t] = compare(ev, t, split, f_nl, f0 + ev.jvp(tvs[t], split, tasks=[t]), f0)["agreement"]
    xi = {}
    if xi_ev is not None:  # weight disentanglement error (method.md §4), prediction level
        grid = [float(a) for a in torch.linspace(GRID[0], GRID[-1], xi_grid)]
        for a, b in list(itertools.combinations(tasks, 2))[:xi_pairs]:
            xi[f"{a}|{b}"] = xi_of(xi_ev, tvs[a], tvs[b], a, b, grid, split=split)["mean"]["prediction"]
    theta0 = float(torch.sqrt(sum((v.float() ** 2).sum() for v in ev.base.params.values())))
    zs_mean = float(np.mean(list(zs.values())))
    return {"zero_shot": zs_mean, "single": float(np.mean(list(single[split].values()))),
            "alpha": best["alpha"], "absolute": best["absolute"], "normalized": best["normalized"],
            "gain": best["absolute"] - zs_mean, "agreement": float(np.mean(list(agree.values()))) if agree else None,
            "xi": float(np.mean(list(xi.values()))) if xi else None, "xi_pairs": xi or None,
            "tau_relative_norm": float(np.mean([float(tvs[t].norm()) for t in tasks])) / theta0,
            "per_task": {t: {"zero_shot": zs[t], "single": single[split][t], "added": best["accuracy"][t],
                             "agreement": agree.get(t)} for t in tasks},
            "curve": [{k: v for k, v in r.items() if k != "accuracy"} for r in curve], "split": split,
            "alpha_chosen_on": "val"}


def summary_line(tag: str, res: dict) -> str:
    """One line with what :func:`score` found."""
    return (f"{tag}: single {100 * res['single']:.1f}  α {res['alpha']:.2f}  addition "
            f"{100 * res['absolute']:.1f} (normalized {100 * res['normalized']:.1f}, {100 * res['gain']:+.1f} over "
            f"zero-shot {100 * res['zero_shot']:.1f})  agreement "
            + ("—" if res["agreement"] is None else f"{100 * res['agreement']:.1f}")
            + ("" if res.get("xi") is None else f"  mean ξ {res['xi']:.3f}")
            + f"  ‖τ‖/‖θ0‖ {res['tau_relative_norm']:.3f}  ({res['finetune_seconds']:.0f} s fine-tuning, validation)")


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--mode", default="attn")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="fine-tuning fields that differ from the bundle's schedule (JSON values), e.g. weight_decay=0")
    p.add_argument("--train-n", type=int, help="training images per task (default: the bundle's plan)")
    p.add_argument("--head-scale", type=float, help="fine-tune at this logit scale instead of the heads' own")
    p.add_argument("--no-kernel", action="store_true", help="skip the agreement check")
    p.add_argument("--tag", default="probe")
    args = p.parse_args(argv)
    set_threads(args.threads)
    from arith.lrsweep import parse_overrides

    res = {"tag": args.tag, **probe(args.bundle, args.mode, parse_overrides(args.overrides), args.train_n,
                                    args.head_scale, not args.no_kernel), "machine": machine()}
    rows = [{"task": t, **{k: (None if v is None else round(100 * v, 1)) for k, v in r.items()}}
            for t, r in res["per_task"].items()]
    emit(args, res, table(rows) + "\n" + summary_line(args.tag, res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
