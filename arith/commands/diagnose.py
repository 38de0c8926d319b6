"""Commands that diagnose a bundle's vectors and print its tables: ``disentangle`` (ξ, method.md §4), ``kernel``
(§5), ``validate``, ``similarity``, ``table``."""

from __future__ import annotations

from ..cli import (
    _bar,
    _bundle_arg,
    _emit,
    _explorer,
    _load_extra,
    _mode_arg,
    _table,
    _vectors_arg,
    arguments,
    command,
    missing_flags,
)


def _disentangle_args(p):
    _bundle_arg(p)
    _mode_arg(p)
    p.add_argument("--tasks", nargs=2, required=True, metavar=("TASK1", "TASK2"),
                   help="the pair: rows α1 of TASK1, columns α2 of TASK2")
    p.add_argument("--grid", type=int, default=15, help="grid points per axis (default 15)")
    p.add_argument("--range", type=float, default=2.0, help="α from -R to R (default 2)")
    p.add_argument("--length", type=float, metavar="L",
                   help="take both vectors at one length first, ‖τ‖ = L·‖θ0‖ (α = 1 is then that length), so modes "
                        "whose vectors differ in length compare at the same distance from θ0")
    p.add_argument("--max-per-task", type=int, help="score ξ on the first N images of each task (default: all stored)")
    _vectors_arg(p, named_for="--tasks")


MAX_GRID = 101  # 10,201 cells: hours on a CPU already; a larger grid is a typo, not a request


@command("disentangle", "weight disentanglement error ξ(α1, α2) on a grid")
@arguments(_disentangle_args)
def cmd_disentangle(args):
    import numpy as np

    if not 2 <= args.grid <= MAX_GRID or not args.range > 0:
        raise ValueError(f"--grid takes 2 to {MAX_GRID} points and --range a positive number (got {args.grid} and "
                         f"{args.range:g}): the grid runs from -R to R, and each of its grid² cells evaluates two "
                         "merged models")
    ex = _explorer(args, args.max_per_task)
    grid = [float(a) for a in np.linspace(-args.range, args.range, args.grid)]
    res = ex.xi(args.mode, *args.tasks, alphas=grid, extra=_load_extra(ex, args.vector, args.mode),
                progress=_bar(f"ξ {args.mode}"), length=args.length)
    at = "" if args.length is None else f" at ‖τ‖ = {args.length:g}‖θ0‖"
    _emit(args, res, lambda r: f"{args.mode} {r['tasks'][0]} × {r['tasks'][1]}{at}: mean ξ {r['mean']['prediction']:.3f} "
                               f"(representation {r['mean']['representation']:.3f})\n"
                               + "\n".join(" ".join(f"{v:.2f}" for v in row) for row in r["prediction"]))


def _kernel_args(p):
    _bundle_arg(p)
    _mode_arg(p)
    p.add_argument("--task", required=True, help="the task vector (and its task's images) to check")
    _vectors_arg(p, named_for="--task")


@command("kernel", "kernel diagnostics: non-linear vs linearized model, restricted linearization")
@arguments(_kernel_args)
def cmd_kernel(args):
    from ..report import summary_row

    ex = _explorer(args)
    res = ex.kernel(args.mode, args.task, extra=_load_extra(ex, args.vector, args.mode), progress=_bar("kernel"))
    _emit(args, res, lambda r: f"{r['task']} ({r['mode']}), f(θ0 + sτ) against f(θ0) + s·J(θ0)τ, test split\n"
                               + _table(_kernel_rows([summary_row(r)])) + "\n\nalong s:\n" + _table(_kernel_rows(r["path"])))


def _kernel_rows(rows: list[dict]) -> list[dict]:
    """The kernel report's rows as the other commands print accuracies and agreements (percent); the relative
    errors and the non-linear advantage ((acc_nonlinear − acc_linear) / (1 − 1/C), method.md §5) as fractions; the
    task and mode left to the heading."""
    def percent(k: str) -> bool:
        return k.startswith("acc_") or k.endswith("agreement")

    def cell(k: str, v):
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return v
        if k == "s":
            return f"{v:.2f}"
        return f"{100 * v:.1f}" if percent(k) else f"{v:+.3f}" if "advantage" in k else f"{v:.3f}"

    def name(k: str) -> str:
        return f"{k} (%)" if percent(k) else k

    return [{name(k): cell(k, v) for k, v in r.items() if k not in ("task", "mode")} for r in rows]


def _validate_args(p):
    p.add_argument("file")
    _bundle_arg(p)
    p.add_argument("--task", help="task name, for files without our metadata")
    p.add_argument("--mode", help="mode, for files without our metadata")
    p.add_argument("--assume-base", action="store_true",
                   help="a file that names no base model (arith.base_model) is for the bundle's θ0: its keys, shapes "
                        "and values are still checked, but not which checkpoint it was fine-tuned from")
    p.add_argument("--out", help="also write the checked vector there, with its metadata (task, mode, base model), "
                                 "so that every command and the app read it without these options")


@command("validate", "check a task-vector file against a bundle's base model (and, with --out, write a copy holding "
                     "the metadata a file written by other tools lacks)")
@arguments(_validate_args)
def cmd_validate(args):
    from ..bundle import load_bundle
    from ..modes import get_mode
    from ..taskvec import check_output_path, load_task_vector

    if args.mode:
        get_mode(args.mode)  # a mistyped --mode is the flag's fault, not the file's
    out = check_output_path(args.out) if args.out else None
    b = load_bundle(args.bundle)
    try:
        tv = load_task_vector(args.file, b.base, task=args.task, mode=args.mode, assume_base=args.assume_base)
    except (ValueError, OSError) as e:  # a file that is not there, or cannot be read, is invalid too
        _emit(args, {"ok": False, "file": args.file, "error": str(e) + missing_flags(e)},
              lambda r: f"invalid: {r['error']}")
        return 2
    res = {"ok": True, "file": args.file, "task": tv.task, "mode": tv.mode, "base_model": tv.base_id,
           "keys": len(tv.tensors), "parameters": tv.numel, "norm": tv.norm()}
    if out is not None:
        res["out"] = str(tv.save(out))
    _emit(args, res, lambda r: f"ok: {r['task']} ({r['mode']}), {r['keys']} tensors, ‖τ‖ = {r['norm']:.4g}"
                               + (f"; written with its metadata to {r['out']}" if "out" in r else ""))


def _similarity_args(p):
    _bundle_arg(p)
    p.add_argument("--modes", nargs="+", help="modes to include (default: all)")
    _vectors_arg(p, named_for="the similarity table's labels")


@command("similarity", "cosine similarity between task vectors, within and across modes")
@arguments(_similarity_args)
def cmd_similarity(args):
    ex = _explorer(args)
    extra = _load_extra(ex, args.vector)
    modes = args.modes or ex.modes + sorted({tv.mode for tv in extra.values()} - set(ex.modes))
    res = ex.similarity(modes, extra)  # the bundle's precomputed table when it covers the request

    def text(r):
        import pandas as pd

        a = r["all"]
        return pd.DataFrame(a["cosine"], index=a["labels"], columns=a["labels"]).round(3).to_string()
    _emit(args, res, text)


def _table_args(p):
    _bundle_arg(p)
    p.add_argument("--per-task", action="store_true", help="also print the per-task table")
    p.add_argument("--alone", action="store_true",
                   help="also where task addition loses its points: each task alone at α against the merged model, "
                        "per mode (the bundle's stored alone curves, or computed: seconds per mode)")
    p.add_argument("--pairs", action="store_true",
                   help="also which vector costs which task at each mode's chosen α: a summary per mode and the matrix "
                        "of every mode (the bundle's stored pair costs, or computed: seconds per mode)")
    p.add_argument("--views", nargs="*", metavar="VIEW",
                   help="also the bundle's modes beside their views, the vectors of full (or linear) cut post hoc to "
                        "the part another mode trains (full@attn: full fine-tuning's τ on the attention weights only), "
                        "scored as the build scores a mode: computed, about 40 s per view on 2 CPU cores (default: "
                        "every view the bundle's modes make possible)")
    p.add_argument("--lengths", nargs="+", type=float, metavar="L",
                   help="also mean ξ over the build's pairs per mode (and view, with --views) with every task vector "
                        "taken at each length L (‖τ‖ = L·‖θ0‖), beside the vectors' own lengths: computed, about 40 s "
                        "per mode and length on 2 CPU cores")


@command("table", "the paper-style results table of a bundle (markdown), from its precomputed results "
                  "(--alone, --pairs: also where task addition loses its points, stored or computed)")
@arguments(_table_args)
def cmd_table(args):
    from .. import report as rp
    from ..index import BundleIndex

    b = BundleIndex.open(args.bundle)  # precomputed results only: no tensor is loaded (unless --alone or --pairs on
    # a bundle without those results stored)
    res = {"rows": rp.results_rows(b), "per_task": rp.per_task_rows(b)}
    if not res["rows"]:
        raise ValueError(f"{args.bundle}: no task vectors to tabulate (an unfinished build? the same build command "
                         "resumes it)")
    if "accuracy" not in b.results:  # vectors but nothing precomputed: a table of dashes would say nothing
        raise ValueError(f"{args.bundle}: no precomputed results to tabulate (an unfinished build? the same build "
                         "command resumes it; `python -m arith precompute` computes them from the vectors)")
    alone = {}
    from ..modes import parse_view

    for v in args.views or ():
        if not parse_view(v):  # a view's own error when it does not parse; a mode is always in the table
            raise ValueError(f"--views takes views (SOURCE@PART, e.g. full@attn), not {v!r}: the bundle's modes are "
                             "always in the table")
    if args.alone or args.pairs or args.views is not None or args.lengths:
        ex = _explorer(args)
    if args.alone:
        alone = {m: ex.alone(m, progress=_bar(f"alone {m}")) for m in ex.modes}
        res["alone"], res["alone_by_alpha"] = rp.interference_rows(b, alone, {m: ex.addition(m) for m in alone})
    if args.pairs:
        pairs = {m: ex.pairs(m, progress=_bar(f"pairs {m}")) for m in ex.modes}
        res["pairs"] = rp.pair_summary_rows(pairs, alone)
        res["pair_matrices"] = {m: rp.pair_matrix_rows(p) for m, p in pairs.items()}
    if args.views is not None:
        from ..parts import part_rows

        res["views"] = part_rows(ex, list(ex.modes) + (args.views or ex.views), _bar)
    if args.lengths:
        from ..parts import length_rows

        views = [] if args.views is None else (args.views or ex.views)
        res["lengths"] = length_rows(ex, list(ex.modes) + views, args.lengths, _bar)

    def text(r):
        out = rp.markdown(r["rows"])
        if args.per_task and r["per_task"]:
            out += "\n\n" + rp.markdown(r["per_task"], pct=tuple(k for k in r["per_task"][0] if k != "task"))
        if "alone" in r:
            out += "\n\n" + rp.markdown(r["alone"], pct=tuple(k for k in r["alone"][0] if k not in ("mode", "lr", "addition α")))
            out += "\n\n" + rp.markdown(r["alone_by_alpha"], pct=tuple(k for k in r["alone_by_alpha"][0] if k != "mode"))
        if "pairs" in r:
            out += "\n\n" + rp.markdown(r["pairs"], pct=("cost if pairs added up", "cost of the other vectors", "its cost",
                                                       "inflicted", "hurt"))
            for mode, rows in r["pair_matrices"].items():
                out += f"\n\n{mode}:\n\n" + rp.markdown(rows, pct=tuple(k for k in rows[0] if k != rp.PAIR_LABEL))
        if "views" in r:
            out += "\n\n" + rp.markdown(r["views"], pct=rp.VIEW_PCT)
        if "lengths" in r:
            out += "\n\n" + rp.markdown(r["lengths"], pct=())
        return out
    _emit(args, res, text)
