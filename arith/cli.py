"""``python -m arith <command>``: every number the app shows, scriptable.

Each command takes ``--json`` (machine-readable output on stdout; field names are documented in the README) and
most take ``--bundle DIR`` (default: ``$ARITH_BUNDLE`` or the embedded ``precomputed/default``).  Progress goes
to stderr as tqdm bars.  Errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from .memory import keep_freed_memory
from .merge import MERGE_METHODS, canonical_method
from .specs import PRECOMPUTED

DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "precomputed" / "default"
COMMANDS: dict[str, tuple[Callable, Callable, str]] = {}  # name -> (add_arguments, run, help)


def command(name: str, help: str):
    def wrap(fn):
        COMMANDS[name] = (getattr(fn, "arguments", lambda p: None), fn, help)
        return fn
    return wrap


def arguments(adder: Callable[[argparse.ArgumentParser], None]):
    def wrap(fn):
        fn.arguments = adder
        return fn
    return wrap


# -- shared helpers ---------------------------------------------------------------------------------------------------
def method_type(text: str) -> str:
    """argparse's ``type`` for a merge-method spec: its canonical form, or an argparse error naming the fault."""
    try:
        return canonical_method(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _method_arg(p: argparse.ArgumentParser, help: str) -> None:
    """``--method NAME[:OPTION=VALUE,…]``: a merge method of ``arith.merge``'s registry, with its options."""
    known = "; ".join(m.name + (" (" + ", ".join(o.describe() for o in m.options) + ")" if m.options else "")
                      for m in MERGE_METHODS.values())
    p.add_argument("--method", default="task_arithmetic", type=method_type, metavar="NAME[:OPTION=VALUE,…]",
                   help=f"{help}; methods and options: {known}; e.g. ties:density=0.5,scope=vector")


def _bundle_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", default=os.environ.get("ARITH_BUNDLE", str(DEFAULT_BUNDLE)),
                   help="bundle directory (default: $ARITH_BUNDLE or precomputed/default)")


def _mode_arg(p: argparse.ArgumentParser, default: str = "attn") -> None:
    p.add_argument("--mode", default=default, help=f"fine-tuning mode (default {default})")


def _explorer(args, max_per_task=None):
    """The bundle's explorer: answers what its precomputed results hold without loading (or importing) torch."""
    from .explore import Explorer

    return Explorer.open(args.bundle, max_per_task=max_per_task)


def _config_arg(text: str) -> dict:
    """``--config``: inline JSON (open_clip model-config format) or the path of a JSON file."""
    text = text.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--config: not valid JSON ({e})") from None
    try:
        return json.loads(Path(text).read_text())
    except OSError as e:
        raise ValueError(f"--config: neither inline JSON nor a readable file ({e.strerror}: {text[:80]})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--config: {text} is not valid JSON ({e})") from None


def _bar(desc: str):
    """A progress callback ``(done, total, *_)`` drawing a tqdm bar on stderr (rate-limited like any tqdm bar)."""
    from tqdm import tqdm

    state = {}

    def update(done: int, total: int, *_):
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True,
                                mininterval=0.5)
        bar = state["bar"]
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
    return update


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _table(rows: list[dict]) -> str:
    import pandas as pd

    return pd.DataFrame(rows).to_string(index=False)


def _emit(args, result: dict, text: Callable[[dict], str]) -> None:
    print(json.dumps(result, indent=1, sort_keys=True) if args.json else text(result))


def _parse_coefs(items: list[str]) -> dict[str, float]:
    coefs = {}
    for item in items or []:
        name, sep, value = item.rpartition("=")
        if not sep or not name:
            raise ValueError(f"--coef expects task=value, got {item!r}")
        try:
            coefs[name] = float(value)
        except ValueError:
            raise ValueError(f"--coef {item!r}: {value!r} is not a number") from None
    return coefs


# -- commands -----------------------------------------------------------------------------------------------------
def _info_args(p):
    p.add_argument("--model", help="open_clip model name, e.g. ViT-B-32 (no weights are downloaded)")
    p.add_argument("--config", help="inline open_clip model config: a JSON file or string")
    p.add_argument("--mode", help="one mode (default: all modes)")
    p.add_argument("--bundle", help="report on a bundle instead: its base, tasks, modes and files")


@command("info", "trainable / total parameter counts per mode (no download), or a bundle's contents")
@arguments(_info_args)
def cmd_info(args):
    from .models import count_parameters
    from .modes import MODES, get_mode
    from .specs import ModelSpec

    if args.bundle and not (args.model or args.config):
        from .bundle import load_bundle

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
    p.add_argument("--task", required=True)
    _mode_arg(p)
    p.add_argument("--attn-bias", action="store_true", help="with --mode attn: also train the two attention biases")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--data-root", help="where the task's training data lives (real data sets)")
    p.add_argument("--train-n", type=int, help="use at most this many training images")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default auto: cuda when available)")
    p.add_argument("--out", required=True, help="where to write the task vector (.safetensors)")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@command("finetune", "fine-tune one task in one mode and write its task vector (torchrun: data-parallel)")
@arguments(_finetune_args)
def cmd_finetune(args):
    from . import distributed as D
    from .bundle import load_bundle
    from .data import get_task
    from .explore import resolve_device
    from .finetune import finetune
    from .specs import FinetuneConfig

    args.device = resolve_device(args.device)
    b = load_bundle(args.bundle)
    mode = "attn_bias" if args.mode == "attn" and args.attn_bias else args.mode
    if args.task not in b.tasks:
        raise ValueError(f"task {args.task!r} is not in the bundle; it has {b.task_names}")
    base_cfg = (b.finetune_config(mode) or b.finetune_config(args.mode) or FinetuneConfig()).to_dict()
    overrides = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
                 "warmup_steps": args.warmup_steps, "grad_clip": args.grad_clip, "seed": args.seed}
    cfg = FinetuneConfig.from_dict({**base_cfg, **{k: v for k, v in overrides.items() if v is not None}, "mode": mode})
    if cfg.warmup_steps >= cfg.steps:
        cfg = FinetuneConfig.from_dict({**cfg.to_dict(), "warmup_steps": max(0, cfg.steps // 10)})
    if "splits" in b.results:  # custom image-folder tasks come back from the paths the bundle recorded
        from .datasets import register_folder_tasks

        register_folder_tasks(b)
    with D.session(args.device):  # under torchrun: one process group for the run; a no-op otherwise
        device = D.device_for(args.device)
        base = b.base if device == "cpu" else b.base.to(device)
        train = get_task(args.task).load("train", size=base.image_size, n=args.train_n, seed=cfg.seed,
                                         root=args.data_root)
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
           "processes": processes, "batch_size": cfg.batch_size}
    _emit(args, out, lambda r: f"{mode}/{args.task}: {cfg.steps} steps in {r['seconds']:.1f}s; "
                               f"test accuracy {_pct(acc['test'])} (zero-shot {_pct(r['zeroshot']['test'])}); {args.out}")


def _vectors_arg(p):
    p.add_argument("--vector", action="append", default=[], metavar="FILE",
                   help="extra task-vector file (validated; joins under its task name, replacing the bundle's)")


def _load_extra(ex, files: list[str]) -> dict:
    """Task-vector files given on the command line, checked against the bundle's base (loads its tensors)."""
    if not files:
        return {}
    from .taskvec import load_task_vector

    base = ex.bundle.base
    return {tv.task: tv for tv in (load_task_vector(f, base) for f in files)}


def _evaluate_args(p):
    _bundle_arg(p)
    _mode_arg(p)
    p.add_argument("--coef", action="append", default=[], metavar="TASK=VALUE", help="coefficient λ of a task vector")
    p.add_argument("--split", default="test", choices=["val", "test"])
    _method_arg(p, "merge method (default task_arithmetic: θ0 + Σ λ_t τ_t)")
    p.add_argument("--max-per-task", type=int, help="evaluate on the first N images of each task")
    _vectors_arg(p)


@command("evaluate", "per-task accuracy of θ0 + Σ λ_t τ_t for given coefficients")
@arguments(_evaluate_args)
def cmd_evaluate(args):
    ex = _explorer(args, args.max_per_task)
    extra = _load_extra(ex, args.vector)
    res = ex.evaluate(args.mode, _parse_coefs(args.coef), args.split, extra=extra, method=args.method)
    _emit(args, res, lambda r: _table([{"task": t, "accuracy": _pct(a)} for t, a in r["accuracy"].items()])
          + f"\nabsolute {_pct(r['absolute'])}  normalized {_pct(r.get('normalized'))}")


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
            out += _table([{"task": t, "accuracy": _pct(a)} for t, a in r["accuracy"].items()])
        else:
            out += (f"at α={i['alpha']:.2f} (test): each task alone {_pct(i['alone_absolute'])}, merged "
                    f"{_pct(i['merged_absolute'])}; the other vectors cost {100 * i['cost_of_others']:.1f} points, "
                    f"scaling τ to α {100 * i['cost_of_alpha']:.1f} (single-task {_pct(i['single_absolute'])})\n")
            out += _table([{"task": t, "alone": _pct(v["alone"]), "merged": _pct(v["merged"])}
                           for t, v in i["per_task"].items()])
        if "pairs" in r:
            from .report import PAIR_LABEL, markdown, pair_matrix_rows

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


def _disentangle_args(p):
    _bundle_arg(p)
    _mode_arg(p)
    p.add_argument("--tasks", nargs=2, required=True, metavar=("TASK1", "TASK2"))
    p.add_argument("--grid", type=int, default=15, help="grid points per axis (default 15)")
    p.add_argument("--range", type=float, default=2.0, help="α from -R to R (default 2)")
    p.add_argument("--length", type=float, metavar="L",
                   help="take both vectors at one length first, ‖τ‖ = L·‖θ0‖ (α = 1 is then that length), so modes "
                        "whose vectors differ in length compare at the same distance from θ0")
    p.add_argument("--max-per-task", type=int)
    _vectors_arg(p)


@command("disentangle", "weight disentanglement error ξ(α1, α2) on a grid")
@arguments(_disentangle_args)
def cmd_disentangle(args):
    import numpy as np

    ex = _explorer(args, args.max_per_task)
    grid = [float(a) for a in np.linspace(-args.range, args.range, args.grid)]
    res = ex.xi(args.mode, *args.tasks, alphas=grid, extra=_load_extra(ex, args.vector),
                progress=_bar(f"ξ {args.mode}"), length=args.length)
    at = "" if args.length is None else f" at ‖τ‖ = {args.length:g}‖θ0‖"
    _emit(args, res, lambda r: f"{args.mode} {r['tasks'][0]} × {r['tasks'][1]}{at}: mean ξ {r['mean']['prediction']:.3f} "
                               f"(representation {r['mean']['representation']:.3f})\n"
                               + "\n".join(" ".join(f"{v:.2f}" for v in row) for row in r["prediction"]))


def _kernel_args(p):
    _bundle_arg(p)
    _mode_arg(p)
    p.add_argument("--task", required=True)
    _vectors_arg(p)


@command("kernel", "kernel diagnostics: non-linear vs linearized model, restricted linearization")
@arguments(_kernel_args)
def cmd_kernel(args):
    from .report import summary_row

    ex = _explorer(args)
    res = ex.kernel(args.mode, args.task, extra=_load_extra(ex, args.vector), progress=_bar("kernel"))
    _emit(args, res, lambda r: _table([summary_row(r)]) + "\n" + _table(r["path"]))


def _validate_args(p):
    p.add_argument("file")
    _bundle_arg(p)
    p.add_argument("--task", help="task name, for files without our metadata")
    p.add_argument("--mode", help="mode, for files without our metadata")


@command("validate", "check a task-vector file against a bundle's base model")
@arguments(_validate_args)
def cmd_validate(args):
    from .bundle import load_bundle
    from .taskvec import load_task_vector

    b = load_bundle(args.bundle)
    try:
        tv = load_task_vector(args.file, b.base, task=args.task, mode=args.mode)
    except ValueError as e:
        _emit(args, {"ok": False, "file": args.file, "error": str(e)}, lambda r: f"invalid: {r['error']}")
        return 2
    res = {"ok": True, "file": args.file, "task": tv.task, "mode": tv.mode, "base_model": tv.base_id,
           "keys": len(tv.tensors), "parameters": tv.numel, "norm": tv.norm()}
    _emit(args, res, lambda r: f"ok: {r['task']} ({r['mode']}), {r['keys']} tensors, ‖τ‖ = {r['norm']:.4g}")


def _similarity_args(p):
    _bundle_arg(p)
    p.add_argument("--modes", nargs="+", help="modes to include (default: all)")
    _vectors_arg(p)


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


def _cost_args(p):
    _bundle_arg(p)
    _mode_arg(p)
    p.add_argument("--task", help="whose head and images to use (default: the first task)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch's intra-op threads for the measurement (default: torch's own)")


@command("cost", "seconds per step and peak memory of fine-tuning one mode (run one process per mode)")
@arguments(_cost_args)
def cmd_cost(args):
    from .bundle import load_bundle
    from .cost import measure, set_intra_op_threads

    set_intra_op_threads(args.threads)
    b = load_bundle(args.bundle)
    task = args.task or b.task_names[0]
    split = b.data[task]["val"]
    res = measure(b.base, b.heads[task], split.images, split.labels, args.mode, args.steps, args.batch_size,
                  device=args.device)
    _emit(args, res, lambda r: f"{r['mode']}: {1000 * r['seconds_per_step']:.1f} ms/step, peak {r['peak_mb']:.0f} MB")


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
    from . import report as rp
    from .index import BundleIndex

    b = BundleIndex.open(args.bundle)  # precomputed results only: no tensor is loaded (unless --alone or --pairs on
    # a bundle without those results stored)
    res = {"rows": rp.results_rows(b), "per_task": rp.per_task_rows(b)}
    alone = {}
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
        from .parts import part_rows

        res["views"] = part_rows(ex, list(ex.modes) + (args.views or ex.views), _bar)
    if args.lengths:
        from .parts import length_rows

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


def _precompute_args(p):
    _bundle_arg(p)
    p.add_argument("--only", nargs="+", metavar="RESULT",
                   help=f"recompute only these results ({', '.join(PRECOMPUTED)}); the bundle's others are kept")
    p.add_argument("--device", default=None, help="run the evaluations there (e.g. cuda; default the CPU)")


@command("precompute", "recompute a bundle's precomputed results from its own vectors, with its build plan's settings "
                       "(all of them, or --only some: e.g. a result added after the bundle was built)")
@arguments(_precompute_args)
def cmd_precompute(args):
    import time

    from .build import BuildPlan, precompute
    from .bundle import BundleWriter, load_bundle

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


# ``build-bundle`` lives in arith/realbuild.py (real CLIP data sets, torchrun); ``import`` in arith/convert.py.


# -- entry point ------------------------------------------------------------------------------------------------------
def build_parser(plugins: bool = True) -> argparse.ArgumentParser:
    """The CLI's parser: the core commands, and with ``plugins`` those defined next to what they drive."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="python -m arith", description="Task Arithmetic Explorer engine")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    if plugins:
        _load_plugins()
    for name, (add, _, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add(p)
        p.add_argument("--json", action="store_true", help="print JSON on stdout")
    return parser


def _load_plugins() -> None:
    """Commands defined next to what they drive (bundle builders, importers) register themselves on import."""
    import importlib

    for mod in ("arith.default.build", "arith.realbuild", "arith.convert", "arith.lrsweep"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if not (e.name and mod.startswith(e.name)):
                raise


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # the core commands need no plugin: without them, one that the bundle's precomputed results answer (table,
    # addition, ...) runs without importing torch
    command_name = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(plugins=command_name not in COMMANDS).parse_args(argv)
    keep_freed_memory()
    _, run, _ = COMMANDS[args.command]
    try:
        return int(run(args) or 0)
    except (ValueError, KeyError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": msg}))
        print(f"error: {msg}", file=sys.stderr)
        return 2
