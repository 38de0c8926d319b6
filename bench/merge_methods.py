"""TIES-merging, DARE and per-task coefficients through the app's path (:class:`arith.explore.Explorer`) on a device, and
the same run elsewhere compared number by number: the merge method and the *Per-task λ* preset on a GPU against
the CPU (``bench/gpu_verify.sh``, step ``methods``).

    python -m bench.merge_methods --device cuda --json DIR/methods-cuda.json
    python -m bench.merge_methods --compare DIR/methods-cuda.json --json DIR/methods-cpu.json   # then here, on the CPU
"""

from __future__ import annotations

import json
import time

from bench._common import emit, parser
from bench.compare_results import compare_json

RUNS = (("linear", "task_arithmetic"), ("attn", "ties"))  # a linear-mode merge and a non-linear method
SPEC = "ties:density=0.5,scope=vector"  # a method with options: the whole-vector trim
DROPS = ("dare:density=0.3,seed=1", "dare_ties")  # random drops: drawn on the CPU, so the same masks on every device


def run(bundle: str, device: str) -> dict:
    """TIES edits at λ = 0.7 on every task (attn; default options and :data:`SPEC`), DARE and DARE-TIES edits
    (:data:`DROPS`; attn, and DARE also linear, whose J of the dropped vectors is computed there), and per-task λ for
    each of :data:`RUNS`."""
    from arith.explore import Explorer

    ex = Explorer.open(bundle, device=device)
    start = time.perf_counter()
    at = {t: 0.7 for t in ex.tasks}
    out = {"device": device, "ties_attn_0.7": ex.evaluate("attn", at, method="ties")["accuracy"],
           f"{SPEC}_attn_0.7": ex.evaluate("attn", at, method=SPEC)["accuracy"]}
    for spec in DROPS:
        out[f"{spec}_attn_0.7"] = ex.evaluate("attn", at, method=spec)["accuracy"]
    out[f"{DROPS[0]}_linear_0.7"] = ex.evaluate("linear", at, method=DROPS[0])["accuracy"]
    for mode, method in RUNS:
        r = ex.tune(mode, method=method)
        out[f"tune_{mode}_{method}"] = {k: r[k] for k in ("coefficients", "accuracy", "val_normalized", "evaluations")}
    out["seconds"] = time.perf_counter() - start
    return out


def main(argv=None) -> dict:
    p = parser("TIES and per-task λ through the Explorer on a device; --compare another run's JSON")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compare", metavar="FILE", help="an earlier run's JSON (e.g. on a GPU) to compare with")
    args = p.parse_args(argv)
    res = run(args.bundle, args.device)
    text = (f"{args.device}: {res['seconds']:.1f} s; per-task λ: "
            + "; ".join(f"{k[5:]} {v['coefficients']}" for k, v in res.items() if k.startswith("tune_")))
    if args.compare:
        other = json.loads(open(args.compare).read())
        res["compared_with"] = {"device": other.get("device"), **compare_json(other, res)}
        c = res["compared_with"]
        text += (f"\nagainst {c['device']}: {c['compared']} numbers, {c['differ']} differ, largest |Δ| "
                 f"{c['max_abs_diff']:.3g}" + (f" at {c['where']}" if c["where"] else ""))
    emit(args, res, text)
    return res


if __name__ == "__main__":
    main()
