"""A merge method's options on a bundle: task addition (shared α chosen on validation) for every mode under each
method spec of a grid, against task arithmetic; per mode, the spec with the best validation score is marked, so an
option is chosen the way α is (on validation), and its test numbers are what that choice gives.

    python -m bench.merge_options --json bench/results/merge_options.json              # the default grid (TIES)
    python -m bench.merge_options --modes attn --specs ties ties:density=0.5           # any specs

Reporting only: nothing in the bundle changes.  Each row is ``python -m arith addition --mode M --method SPEC``.
"""

from __future__ import annotations

import time

from bench._common import emit, markdown_table, parser, set_threads

# TIES's density and trim scope (at density 1 the two scopes keep every entry alike: one row)
SPECS = ("ties", "ties:density=0.5", "ties:density=1", "ties:scope=vector", "ties:density=0.5,scope=vector")


def run(bundle: str, modes: list[str] | None, specs: list[str], device: str = "cpu") -> dict:
    """Task addition per (mode, spec), plus task arithmetic's, each with its whole α sweep (``curve``: absolute and
    normalized accuracy per α on both splits); ``best`` per mode is the spec with the highest validation normalized
    accuracy at its own validation-chosen α (the first such spec on a tie)."""
    from arith.explore import Explorer
    from arith.merge import canonical_method

    ex = Explorer.open(bundle, device=device)
    specs = list(dict.fromkeys(canonical_method(s) for s in specs))
    rows, best = [], {}
    for mode in modes or ex.modes:
        for spec in ("task_arithmetic", *specs):
            start = time.perf_counter()
            r = ex.addition(mode, method=spec)
            curve = [{"alpha": c["alpha"], **{f"{split}_{k}": c[split][k] for split in ("val", "test")
                                              for k in ("absolute", "normalized")}} for c in r["curve"]]
            rows.append({"mode": mode, "method": spec, "alpha": r["alpha"], "val_normalized": r["val_normalized"],
                         "absolute": r["absolute"], "normalized": r["normalized"], "accuracy": r["accuracy"],
                         "curve": curve, "seconds": time.perf_counter() - start})
        mine = [row for row in rows if row["mode"] == mode and row["method"] != "task_arithmetic"]
        best[mode] = max(mine, key=lambda row: row["val_normalized"])["method"] if mine else None
    return {"bundle": bundle, "device": device, "specs": specs, "rows": rows, "best_on_validation": best}


def markdown(res: dict) -> str:
    """One row per (mode, spec): α, validation normalized accuracy, test absolute / normalized (%)."""
    pct = lambda v: f"{100 * v:.1f}"
    out = []
    for r in res["rows"]:
        chosen = " ✓" if res["best_on_validation"].get(r["mode"]) == r["method"] else ""
        out.append([r["mode"], f"`{r['method']}`{chosen}", f"{r['alpha']:.2f}", pct(r["val_normalized"]),
                    pct(r["absolute"]), pct(r["normalized"])])
    return markdown_table(["mode", "method", "α", "val normalized", "test absolute", "test normalized"], out)


def main(argv=None) -> dict:
    p = parser("Task addition under a merge method's options, every mode; the best spec per mode on validation")
    p.add_argument("--modes", nargs="+", help="modes (default: the bundle's)")
    p.add_argument("--specs", nargs="+", default=list(SPECS), help="method specs (default: TIES at densities 0.2, "
                                                                  "0.5 and 1, each trim)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    set_threads(args.threads)
    res = run(args.bundle, args.modes, args.specs, args.device)
    emit(args, res, markdown(res) + "\n\n✓: the highest validation normalized accuracy of the mode's specs")
    return res


if __name__ == "__main__":
    main()
