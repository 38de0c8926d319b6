"""A study, not a timing: task addition image by image.  At each mode's validation-chosen α (the bundle's stored
task-addition result), every task's test images are counted as fixed (θ0 wrong, the merge right) and broken (θ0
right, the merge wrong) by :meth:`arith.explore.Explorer.predictions`, the Examples view's answer.  The gain over
zero-shot is fixed − broken; this says whether a mode gains less because it fixes fewer images or because it
breaks more.  Reporting only: it chooses nothing.

    python -m bench.churn --json bench/results/churn.json
"""

from __future__ import annotations

from bench._common import emit, machine, markdown_table, parser, set_threads


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--modes", nargs="+", help="modes (default: the bundle's, with a stored task-addition α)")
    p.add_argument("--split", default="test", choices=["val", "test"], help="the images counted (default test)")
    args = p.parse_args(argv)
    set_threads(args.threads)

    from arith.explore import Explorer

    ex = Explorer.open(args.bundle)
    addition = ex.result("addition", {})
    modes = args.modes or [m for m in ex.modes if m in addition]
    res = {"machine": machine(), "bundle": str(args.bundle), "split": args.split, "tasks": ex.tasks, "modes": {}}
    rows = []
    for mode in modes:
        alpha = addition[mode]["alpha"]
        per = {t: ex.predictions(mode, {n: alpha for n in ex.tasks}, t, args.split)["counts"] for t in ex.tasks}
        n = sum(c["n"] for c in per.values())
        fixed, broken = sum(c["fixed"] for c in per.values()), sum(c["broken"] for c in per.values())
        res["modes"][mode] = {"alpha": alpha, "per_task": per, "images": n, "fixed": fixed, "broken": broken}
        rows.append([mode, f"{alpha:.2f}", f"{100 * fixed / n:.1f}", f"{100 * broken / n:.1f}",
                     f"{100 * (fixed - broken) / n:+.1f}",
                     *(f"{c['fixed']} / {c['broken']}" for c in per.values())])
    head = ["mode", "α", "fixed (%)", "broken (%)", "gain (points)", *(f"{t} fixed / broken" for t in ex.tasks)]
    emit(args, res, markdown_table(head, rows))
    return res


if __name__ == "__main__":
    main()
