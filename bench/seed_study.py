"""Study: how much the fine-tuning seed moves single-task accuracy and the merge measures (validation by default).

Scores the task vectors that ``python -m arith lr-sweep --seeds … --vectors DIR`` wrote, one set per
(mode, lr, seed) in ``DIR/<mode>_lr<lr>_seed<seed>/<task>.safetensors``, with ``bench.recipe_probe.score_vectors``:
single-task accuracy, the validation-chosen α of task addition, its absolute and normalized accuracy and gain over
zero-shot, agreement with the linearization, and the mean ξ over the build's six task pairs (15×15 over [−2, 2]²,
128 validation images per task).  A set that lacks one of the bundle's tasks (a sweep cut short) is skipped, with a
line saying so.  Test splits are read only with ``--split test``, which reports what the build reports (α still chosen
on validation) to show the seed spread of a finished bundle's numbers; choices are made on validation.  The JSON is
rewritten after every set, so a run cut short keeps what it finished; ``--summarize`` prints mean ± standard
deviation over seeds per (split, mode, lr).

    python -m arith lr-sweep --bundle precomputed/default --modes full attn --lrs 1e-3 3e-3 --seeds 0 1 2 \\
        --vectors /tmp/vec --json > /tmp/sweep.json
    python -m bench.seed_study --vectors /tmp/vec --json /tmp/seeds.json [--only 'attn_*'] [--device cuda]
    python -m bench.seed_study --summarize /tmp/seeds.json
"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import numpy as np

from bench._common import machine, markdown_table, parser, set_threads, write_json_atomic
from bench.recipe_probe import score_vectors

SET = re.compile(r"^(?P<mode>[a-z_]+)_lr(?P<lr>[0-9.e+-]+)_seed(?P<seed>-?\d+)$")
MEASURES = (("single", "single-task", 100), ("alpha", "α", 1), ("absolute", "addition", 100),
            ("gain", "over zero-shot", 100), ("normalized", "normalized", 100), ("agreement", "agreement", 100),
            ("xi", "mean ξ", 1), ("tau_relative_norm", "‖τ‖/‖θ0‖", 1))


def vector_sets(root, only=None) -> list[tuple[dict, Path]]:
    """``(key, directory)`` per set of vectors under ``root``, key = {mode, lr, seed}; ``only``: glob patterns."""
    out = []
    for d in sorted(Path(root).iterdir()):
        m = SET.match(d.name)
        if d.is_dir() and m and (not only or any(fnmatch.fnmatch(d.name, pat) for pat in only)):
            out.append(({"mode": m["mode"], "lr": float(m["lr"]), "seed": int(m["seed"])}, d))
    return out


def study(bundle_dir: str, root, only=None, device: str = "cpu", xi: bool = True, on_result=None, log=print,
          split: str = "val") -> dict:
    """Score every vector set under ``root`` on the bundle's ``split`` (see the module docstring; α is chosen on
    validation either way)."""
    from arith.bundle import load_bundle
    from arith.explore import resolve_device
    from arith.taskvec import load_task_vector

    b = load_bundle(bundle_dir, verify=False)
    plan = b.manifest.get("plan", {})
    device = resolve_device(device)
    ev = b.evaluator(device=device)
    xi_ev = b.evaluator(max_per_task=plan.get("xi_eval_n"), device=device) if xi else None
    res = {"bundle": str(bundle_dir), "base_id": b.base.id, "device": str(device), "split": split, "sets": []}
    for key, d in vector_sets(root, only):
        lacking = [t for t in b.task_names if not (d / f"{t}.safetensors").exists()]
        if lacking:
            log(f"{d.name}: skipped, no vector for {', '.join(lacking)}")
            continue
        tvs = {t: load_task_vector(d / f"{t}.safetensors", b.base) for t in b.task_names}
        res["sets"].append({**key, **score_vectors(ev, tvs, xi_ev=xi_ev, xi_pairs=plan.get("xi_pairs", 6),
                                                   xi_grid=plan.get("xi_grid", 15), split=split)})
        log(f"{d.name}: " + "  ".join(f"{label} {_fmt(res['sets'][-1][k], scale, k == 'gain')}" for k, label, scale in MEASURES))
        if on_result:
            on_result(res)
    return res


def _fmt(v, scale, sign=False) -> str:
    return "—" if v is None else f"{scale * v:{'+' if sign else ''}.1f}" if scale == 100 else f"{v:.3f}"


def summarize(paths) -> str:
    """A Markdown table: per (mode, lr), the seeds scored and mean ± sd over them of every measure."""
    groups: dict[tuple, dict] = {}
    for path in paths:  # a set in two files counts once
        for s in json.loads(Path(path).read_text())["sets"]:
            groups.setdefault((s.get("split", "val"), s["mode"], s["lr"]), {})[s["seed"]] = s
    groups = {k: list(v.values()) for k, v in groups.items()}
    head = ["split", "mode", "lr", "seeds", *(label for _, label, _ in MEASURES)]
    rows = []
    for (split, mode, lr), sets in sorted(groups.items()):
        cells = [split, mode, f"{lr:g}", ", ".join(str(s["seed"]) for s in sorted(sets, key=lambda s: s["seed"]))]
        for key, _, scale in MEASURES:
            vals = [s[key] for s in sets if s.get(key) is not None]
            if not vals:
                cells.append("—")
                continue
            mean, sd = float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
            digits = 1 if scale == 100 else (2 if key == "alpha" else 3)
            sign = "+" if key == "gain" else ""
            cells.append(f"{scale * mean:{sign}.{digits}f} ± {scale * sd:.{digits}f}")
        rows.append(cells)
    return markdown_table(head, rows)


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--vectors", metavar="DIR", help="what lr-sweep --vectors wrote")
    p.add_argument("--only", nargs="+", metavar="GLOB", help="score only these sets, e.g. 'attn_lr0.001_*'")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-xi", action="store_true", help="skip the ξ grids (the slowest part on a CPU)")
    p.add_argument("--split", default="val", choices=("val", "test"),
                   help="where to score (α is chosen on validation either way); test is for reports, never choices")
    p.add_argument("--summarize", nargs="+", metavar="JSON", help="only print a table of earlier results")
    args = p.parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize))
        return 0
    if not args.vectors:
        p.error("--vectors is required (or --summarize)")
    set_threads(args.threads)

    def write(res):
        if args.json:
            write_json_atomic(args.json, {**res, "machine": machine()})

    write(study(args.bundle, args.vectors, args.only, args.device, not args.no_xi, on_result=write,
                log=lambda m: print(m, flush=True), split=args.split))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
