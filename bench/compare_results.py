"""Compare two bundles' precomputed results number by number: the same bundle recomputed on another device
(``python -m arith precompute --device cuda``, see ``bench/gpu_verify.sh``), a rebuild on another machine, or before
and after an engine change.

For each result file both bundles hold: how many numeric entries were compared, how many differ, the largest
difference and where it is (timings, which differ by nature, are skipped); the paper-style table of each
(``python -m arith table``) and their difference per mode; and the largest difference in each cached tensor file.
Accuracies are fractions, so on 256 test images one image is 0.0039.

    python -m bench.compare_results precomputed/default /tmp/gpu_bundle --json bench/results/gpu/compare.json
"""

from __future__ import annotations

import math
from pathlib import Path

from bench._common import emit, markdown_table, parser

# entries that measure time or memory, not results: they differ between any two runs
TIMING_KEYS = frozenset({"seconds", "seconds_per_step", "peak_mb", "peak_memory_bytes", "minutes", "when"})


def numeric_leaves(obj, path: str = ""):
    """Yield ``(path, value)`` for every int or float (not bool) in a JSON value, skipping :data:`TIMING_KEYS`."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k not in TIMING_KEYS:
                yield from numeric_leaves(v, f"{path}/{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from numeric_leaves(v, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, float(obj)


def compare_json(a, b) -> dict:
    """Numeric entries of ``a`` and ``b`` matched by path: counts, the largest |b − a| and its path, and the paths
    only one of them has."""
    la, lb = dict(numeric_leaves(a)), dict(numeric_leaves(b))
    common = sorted(set(la) & set(lb))
    diffs = {p: abs(lb[p] - la[p]) for p in common if not (math.isnan(la[p]) and math.isnan(lb[p]))}
    worst = max(diffs, key=diffs.get) if diffs else None
    return {"compared": len(common), "differ": sum(d > 0 for d in diffs.values()),
            "max_abs_diff": diffs[worst] if worst else 0.0, "where": worst if worst and diffs[worst] > 0 else None,
            "only_first": sorted(set(la) - set(lb))[:5], "only_second": sorted(set(lb) - set(la))[:5]}


def compare_tensors(a: Path, b: Path) -> dict:
    """Largest absolute difference per tensor file, relative to the largest |value| of the first."""
    from safetensors.torch import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    keys = sorted(set(ta) & set(tb))
    worst, scale = 0.0, 0.0
    for k in keys:
        if ta[k].shape != tb[k].shape:
            raise ValueError(f"{a.name}: {k} has shape {tuple(ta[k].shape)} against {tuple(tb[k].shape)}")
        worst = max(worst, (tb[k].double() - ta[k].double()).abs().max().item() if ta[k].numel() else 0.0)
        scale = max(scale, ta[k].double().abs().max().item() if ta[k].numel() else 0.0)
    return {"tensors": len(keys), "only_one": len(set(ta) ^ set(tb)), "max_abs_diff": worst,
            "relative": worst / scale if scale else 0.0}


def compare(first: str | Path, second: str | Path) -> dict:
    """Every comparison of the module docstring, for two bundle directories (both checked against their manifests)."""
    from arith.index import BundleIndex
    from arith.report import results_rows

    ia, ib = BundleIndex.open(first), BundleIndex.open(second)
    files = {name: compare_json(ia.results[name], ib.results[name]) for name in sorted(set(ia.results) & set(ib.results))}
    rows_a, rows_b = ({r["mode"]: r for r in results_rows(i)} for i in (ia, ib))
    table = []
    for mode in [m for m in rows_a if m in rows_b]:
        ra, rb = rows_a[mode], rows_b[mode]
        table.append({"mode": mode, **{k: (rb[k] - ra[k]) if isinstance(ra[k], float) and isinstance(rb[k], float)
                                           else None for k in ra if k != "mode" and k not in ("s/step", "peak MB")}})
    cache = {}
    for path in sorted((Path(first) / "cache").glob("*.safetensors")):
        other = Path(second) / "cache" / path.name
        if other.exists():
            cache[path.name] = compare_tensors(path, other)
    return {"first": str(first), "second": str(second), "files": files, "table_difference": table,
            "rows_first": list(rows_a.values()), "rows_second": list(rows_b.values()), "cache": cache}


def render(res: dict) -> str:
    out = [f"{res['second']} against {res['first']}", "",
           markdown_table(["result file", "numbers compared", "differ", "largest |Δ|", "where"],
                          [[n, f["compared"], f["differ"], f"{f['max_abs_diff']:.3g}", f["where"] or "—"]
                           for n, f in res["files"].items()])]
    if res["table_difference"]:
        cols = list(res["table_difference"][0])
        out += ["", "paper-style table, second − first (accuracies as fractions):", "",
                markdown_table(cols, [[("—" if r[c] is None else (f"{r[c]:+.4f}" if isinstance(r[c], float) else r[c]))
                                       for c in cols] for r in res["table_difference"]])]
    for name, c in res["cache"].items():
        out.append(f"\ncache/{name}: {c['tensors']} tensors, largest |Δ| {c['max_abs_diff']:.3g} "
                   f"({c['relative']:.2g} of the largest value)")
    return "\n".join(out)


def main(argv=None) -> dict:
    p = parser("compare two bundles' precomputed results number by number", bundle=False)
    p.add_argument("first", help="the reference bundle directory")
    p.add_argument("second", help="the bundle to compare with it")
    args = p.parse_args(argv)
    res = compare(args.first, args.second)
    emit(args, res, render(res))
    return res


if __name__ == "__main__":
    main()
