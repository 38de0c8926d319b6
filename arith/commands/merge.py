"""Commands that merge task vectors and run the task-arithmetic protocols (method.md §3): ``evaluate``,
``predict``, ``addition``, ``negation``, ``tune``."""

from __future__ import annotations

import math
import sys

from ..cli import (
    _bar,
    _bundle_arg,
    _emit,
    _explorer,
    _load_extra,
    _method_arg,
    _mode_arg,
    _parse_coefs,
    _pct,
    _table,
    _vectors_arg,
    arguments,
    command,
)
from ..metrics import untouched


def _evaluate_args(p):
    _bundle_arg(p)
    _mode_arg(p)
    p.add_argument("--coef", action="append", default=[], metavar="TASK=VALUE", help="coefficient λ of a task vector")
    p.add_argument("--alpha", type=float, metavar="A",
                   help="λ = A for every task vector named after a bundle task in --mode (task addition's shared α; a "
                        "--vector FILE that replaces a bundle task's vector included); --coef then sets single λs")
    p.add_argument("--split", default="test", choices=["val", "test"], help="evaluation split (default test)")
    _method_arg(p, "merge method (default task_arithmetic: θ0 + Σ λ_t τ_t)")
    p.add_argument("--max-per-task", type=int, metavar="N", help="evaluate on the first N images of each task")
    _vectors_arg(p)


@command("evaluate", "per-task accuracy of θ0 + Σ λ_t τ_t for given coefficients")
@arguments(_evaluate_args)
def cmd_evaluate(args):
    ex = _explorer(args, args.max_per_task)
    extra = _load_extra(ex, args.vector, args.mode)
    ex.require_vectors(args.mode, extra)  # not θ0's accuracies under a mode the bundle has no vectors of
    res = ex.evaluate(args.mode, _coefs(args, ex, extra), args.split, extra=extra, method=args.method)
    # the λ evaluated (4 decimals): 1e-5 is λ = 0, and its task is one the vectors leave alone
    left = untouched(res["accuracy"], ex.zeroshot(args.split), res["coefficients"], ex.catalog(args.mode, extra))
    if left:  # the app's "Tasks at λ = 0"
        res = {**res, "untouched": left}

    def text(r):
        out = (_table([{"task": t, "accuracy": _pct(a)} for t, a in r["accuracy"].items()])
               + f"\nabsolute {_pct(r['absolute'])}  normalized {_pct(r.get('normalized'))}")
        if "untouched" in r:
            u = r["untouched"]
            out += (f"\ntasks at λ = 0 ({len(u['tasks'])}): {_pct(u['absolute'])}, "
                    f"{100 * u['change']:+.1f} points vs zero-shot (the other vectors' leakage)")
        return out

    _emit(args, res, text)


def _coefs(args, ex, extra) -> dict[str, float]:
    """``--alpha`` for the bundle's vectors of ``--mode``, then ``--coef`` (which may name any vector)."""
    coefs = {}
    if args.alpha is not None:
        if not math.isfinite(args.alpha):
            raise ValueError(f"--alpha must be a finite number, got {args.alpha}")
        coefs = {n: args.alpha for n in ex.catalog(args.mode, extra) if n in ex.task_names}
        if not coefs:
            raise ValueError(f"--alpha: no {args.mode} task vector is named after a bundle task; give the files' λ "
                             "with --coef NAME=VALUE")
    return {**coefs, **_parse_coefs(args.coef)}


def _predict_args(p):
    _evaluate_args(p)
    p.add_argument("--task", required=True, help="the task whose evaluation images to predict (a task of the bundle)")
    p.add_argument("--top", type=int, default=5, metavar="N",
                   help="how many of the edited model's most frequent confusions to list (default 5; 0: none)")
    p.add_argument("--csv", metavar="FILE", help="also write one row per image to FILE (CSV: class, θ0's, the edited "
                                                  "model's and the own model's prediction, confidence, fixed or broken)")


@command("predict", "per-image predictions of θ0 + Σ λ_t τ_t on one task: images fixed and broken against θ0, "
                    "the most frequent confusions")
@arguments(_predict_args)
def cmd_predict(args):
    if args.top < 0:
        raise ValueError(f"--top must be 0 or more, got {args.top}")
    from ..taskvec import check_output_path

    csv = check_output_path(args.csv, "CSV file", "predictions.csv") if args.csv else None  # before the predictions, not after
    ex = _explorer(args, args.max_per_task)
    extra = _load_extra(ex, args.vector, args.mode)
    ex.require_vectors(args.mode, extra)
    res = ex.predictions(args.mode, _coefs(args, ex, extra), args.task, args.split, extra=extra, method=args.method)
    res["confusions"] = confusions(res, args.top)
    if csv is not None:
        import pandas as pd

        from ..examples import prediction_rows

        pd.DataFrame(prediction_rows(res)).to_csv(csv, index=False)
        print(f"(one row per image written to {csv})", file=sys.stderr)

    def text(r):
        c, n = r["counts"], r["counts"]["n"]
        out = (f"{r['mode']}, {r['task']} ({r['split']}, {n} images): θ0 {_pct(c['base'] / n)} % → edited "
               f"{_pct(c['merged'] / n)} % ({100 * (c['merged'] - c['base']) / n:+.1f} points): {c['fixed']} images "
               f"fixed, {c['broken']} broken")
        if c["alone"] is not None:
            out += f"; alone ({r['alone_vector']} at λ = 1) {_pct(c['alone'] / n)} %"
        if r["confusions"]:
            out += (f"\nthe edited model's most frequent confusions (of {n - c['merged']} wrong):\n"
                    + _table(r["confusions"]))
        return out

    _emit(args, res, text)


def confusions(r: dict, top: int) -> list[dict]:
    """The ``top`` most frequent (true, predicted) pairs off the diagonal of a :meth:`Explorer.predictions` answer's
    confusion matrix, each with θ0's count of the same confusion."""
    names, conf = r["classes"], r["confusion"]
    base: dict[tuple[int, int], int] = {}
    for y, p in zip(r["labels"], r["base"]):
        base[y, p] = base.get((y, p), 0) + 1
    pairs = sorted(((conf[i][j], i, j) for i in range(len(conf)) for j in range(len(conf)) if i != j and conf[i][j]),
                   key=lambda x: (-x[0], x[1], x[2]))[:top]
    return [{"true": names[i], "predicted": names[j], "images": k, "θ0": base.get((i, j), 0)} for k, i, j in pairs]


def _addition_args(p):
    _bundle_arg(p)
    _mode_arg(p)
    p.add_argument("--tasks", nargs="+", help="tasks to add (default: all)")
    _method_arg(p, "merge method (default task_arithmetic, the bundle's stored sweep; others are computed)")
    p.add_argument("--alone", action="store_true",
                   help="also each task alone at every α (θ0 + α τ_t on task t) and, at the chosen α, what the other "
                        "vectors cost (alone − merged): the result's `alone` and `interference`")
    p.add_argument("--pairs", action="store_true",
                   help="also which vector costs which task at the chosen α: task i with θ0 + α τ_i + α τ_j against "
                        "θ0 + α τ_i, every ordered pair (test split; the result's `pairs`)")


@command("addition", "task addition: shared α chosen on validation, test absolute / normalized accuracy")
@arguments(_addition_args)
def cmd_addition(args):
    ex = _explorer(args)
    if args.method != "task_arithmetic" and (args.alone or args.pairs):
        raise ValueError("--alone and --pairs measure task arithmetic's interference; leave out --method")
    res = ex.addition(args.mode, args.tasks, progress=_bar(f"addition {args.mode}"), method=args.method)
    if args.alone:
        alone = ex.alone(args.mode, args.tasks, progress=_bar(f"alone {args.mode}"))
        res = {**res, "alone": {k: v for k, v in alone.items() if k != "interference"},
               "interference": alone["interference"]}
    if args.pairs:
        res = {**res, "pairs": ex.pairs(args.mode, args.tasks, progress=_bar(f"pairs {args.mode}"))}

    def text(r):
        merged = "" if args.method == "task_arithmetic" else f" ({args.method})"
        out = (f"{args.mode}{merged}: α={r['alpha']:.2f}  absolute {_pct(r['absolute'])}  "
               f"normalized {_pct(r['normalized'])}\n")
        i = r.get("interference")
        if i is None:
            acc = r["accuracy"]  # in the bundle's task order, as evaluate prints (stored results sort their keys)
            order = [t for t in dict.fromkeys([*r.get("tasks", []), *acc]) if t in acc]
            out += _table([{"task": t, "accuracy": _pct(acc[t])} for t in order])
        else:
            out += (f"at α={i['alpha']:.2f} (test): each task alone {_pct(i['alone_absolute'])}, merged "
                    f"{_pct(i['merged_absolute'])}; the other vectors cost {100 * i['cost_of_others']:.1f} points, "
                    f"scaling τ to α {100 * i['cost_of_alpha']:.1f} (single-task {_pct(i['single_absolute'])})\n")
            out += _table([{"task": t, "alone": _pct(v["alone"]), "merged": _pct(v["merged"])}
                           for t, v in i["per_task"].items()])
        if "pairs" in r:
            from ..report import PAIR_LABEL, markdown, pair_matrix_rows

            p = r["pairs"]
            out += (f"\n\nat α={p['alpha']:.2f} (test), points task i loses when τ_j joins θ0 + α τ_i (rows: i, "
                    "columns: j); if these costs added up, the other vectors would cost a task "
                    f"{100 * p['additive_cost']:.1f} points on average (the rows' mean sum)\n")
            rows = pair_matrix_rows(p)
            out += markdown(rows, pct=tuple(k for k in rows[0] if k != PAIR_LABEL))
        return out

    _emit(args, res, text)


def _negation_args(p):
    _bundle_arg(p)
    _mode_arg(p)
    p.add_argument("--task", required=True, help="the task to forget")
    p.add_argument("--control", nargs="+", help="control tasks (default: every other task)")


@command("negation", "task negation: λ chosen on validation with control ≥ 0.95 × zero-shot")
@arguments(_negation_args)
def cmd_negation(args):
    ex = _explorer(args)
    res = ex.negation(args.mode, args.task, args.control, progress=_bar(f"negation {args.mode}/{args.task}"))
    _emit(args, res, lambda r: f"{args.mode}: negate {args.task} with λ={r['alpha']:.2f}: target {_pct(r['target'])} "
                               f"(zero-shot {_pct(r['zeroshot_target'])}), control {_pct(r['control'])} "
                               f"(zero-shot {_pct(r['zeroshot_control'])})")


def _tune_args(p):
    _bundle_arg(p)
    _mode_arg(p)
    p.add_argument("--tasks", nargs="+", help="tasks to add (default: all)")
    _method_arg(p, "merge method")


@command("tune", "one λ per task, chosen on validation by coordinate ascent from task addition's shared α")
@arguments(_tune_args)
def cmd_tune(args):
    ex = _explorer(args)
    add = ex.addition(args.mode, args.tasks, progress=_bar(f"addition {args.mode}"), method=args.method)
    res = ex.tune(args.mode, args.tasks, progress=_bar(f"tune {args.mode}"), method=args.method)
    res = {**res, "shared": {k: add[k] for k in ("alpha", "absolute", "normalized", "accuracy", "val_normalized")}}

    def text(r):
        sh = r["shared"]
        out = (f"{args.mode}: per-task λ {_pct(r['absolute'])} absolute, {_pct(r['normalized'])} normalized (test); "
               f"shared α={sh['alpha']:.2f}: {_pct(sh['absolute'])}, {_pct(sh['normalized'])}. Validation normalized "
               f"{_pct(sh['val_normalized'])} → {_pct(r['val_normalized'])} in {r['evaluations']} evaluations"
               f"{'' if r['converged'] else ' (stopped after its last round, not converged)'}\n")
        return out + _table([{"task": t, "λ": f"{c:g}", "tuned": _pct(r["accuracy"][t]),
                              "shared α": _pct(sh["accuracy"][t])} for t, c in r["coefficients"].items()])

    _emit(args, res, text)
