"""Benchmark 3, diagnostics: a 15×15 ξ grid for one pair of tasks in one mode, kernel diagnostics for one task, and
how the grid's cost scales with the number of grid points and of evaluation images.

The grid's cost should be linear in both (each point is one forward pass of the merged model over both tasks'
images), so the table also gives the cost per (grid point × image): constant across sizes when it is.

    python -m bench.diagnostics --bundle precomputed/default --json bench/results/diagnostics.json
"""

from __future__ import annotations

import sys
import time

import numpy as np

from bench._common import emit, machine, parser, set_threads, table

GRID_TARGET_S = 20.0


def grid(n: int, r: float = 2.0) -> list[float]:
    return [float(a) for a in np.linspace(-r, r, n)]


def time_xi(bundle, mode: str, pair, n_grid: int, per_task: int | None, baseline: bool = False) -> dict:
    from arith.disentangle import xi_grid

    ev = evaluator(bundle, per_task, baseline)
    vs = bundle.vectors[mode]
    a, b = pair
    ev.merged_features([vs[a]], [0.5], "test", [a])  # evaluation tensors and shared θ0 activations: once per process
    images = sum(ev.eval_set("test").slices[t].stop - ev.eval_set("test").slices[t].start for t in pair)
    t, c = time.perf_counter(), time.process_time()
    res = xi_grid(ev, vs[a], vs[b], a, b, grid(n_grid))
    s, cpu = time.perf_counter() - t, time.process_time() - c
    points = n_grid * n_grid
    return {"mode": mode, "grid": f"{n_grid}×{n_grid}", "points": points, "images": images, "seconds": s, "cpu_s": cpu,
            "us_per_point_image": 1e6 * s / (points * images), "cpu_us_per_point_image": 1e6 * cpu / (points * images),
            "mean_xi": res["mean"]["prediction"]}


def evaluator(bundle, per_task, baseline: bool):
    if not baseline:
        return bundle.evaluator(max_per_task=per_task)
    import dataclasses

    from arith.models import Base

    plain = Base(bundle.base.spec, bundle.base.module, base_id=bundle.base.id)
    plain.__dict__["staged"] = None
    return dataclasses.replace(bundle, base=plain).evaluator(max_per_task=per_task, batch_size=1024, prefix_cache_mb=0)


def time_kernel(bundle, mode: str, task: str, baseline: bool = False) -> dict:
    from arith.kernel import kernel_report

    ev = evaluator(bundle, None, baseline)
    ev.eval_set("test")
    t, c = time.perf_counter(), time.process_time()
    rep = kernel_report(ev, bundle.vectors[mode][task], task)
    return {"mode": mode, "task": task, "seconds": time.perf_counter() - t, "cpu_s": time.process_time() - c,
            "agreement_at_1": rep["at_1"]["agreement"]}


def main(argv=None) -> dict:
    p = parser("cost of the ξ grid and of the kernel diagnostics, and how the grid scales")
    p.add_argument("--mode", default="attn")
    p.add_argument("--pair", nargs=2, metavar="TASK", help="the two tasks (default: the bundle's first two)")
    p.add_argument("--task", help="task of the kernel diagnostics (default: the first)")
    p.add_argument("--grids", nargs="*", type=int, default=[5, 10, 15], help="grid sizes for the scaling (points per axis)")
    p.add_argument("--images", nargs="*", type=int, default=[64, 128, 256], help="images per task for the scaling")
    p.add_argument("--scaling-grid", type=int, default=10, help="grid size used when scaling the images")
    p.add_argument("--baseline", action="store_true", help="also time the pre-optimisation engine (15×15 and kernel)")
    args = p.parse_args(argv)
    threads = set_threads(args.threads)

    from arith.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    pair = args.pair or bundle.task_names[:2]
    task = args.task or bundle.task_names[0]
    stored = min(len(bundle.data[t]["test"]) for t in pair)
    result = {"machine": machine(), "bundle": str(bundle.root), "threads": threads, "pair": pair, "mode": args.mode}
    rows = []

    def log(r):
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}, file=sys.stderr, flush=True)

    main_run = time_xi(bundle, args.mode, pair, 15, None)
    main_run.update(what="ξ grid (target)", target_s=GRID_TARGET_S, met="yes" if main_run["seconds"] <= GRID_TARGET_S else "no")
    log(main_run)
    rows.append(main_run)
    result["xi"] = main_run
    scaling = []
    for n in args.grids:
        r = main_run if n == 15 else time_xi(bundle, args.mode, pair, n, None)
        scaling.append({**r, "what": "scaling: grid points"})
        log(r)
    for k in args.images:
        if k > stored:
            continue
        r = time_xi(bundle, args.mode, pair, args.scaling_grid, k)
        scaling.append({**r, "what": "scaling: images"})
        log(r)
    rows += [r for r in scaling if r is not main_run]
    result["scaling"] = scaling
    per = [r["cpu_us_per_point_image"] for r in scaling]
    result["linearity"] = {"min_us_per_point_image": min(per), "max_us_per_point_image": max(per),
                           "max_over_min": max(per) / min(per)}
    k = time_kernel(bundle, args.mode, task)
    log(k)
    result["kernel"] = k
    rows.append({"what": "kernel diagnostics", "mode": args.mode, "grid": task, "seconds": k["seconds"], "cpu_s": k["cpu_s"]})
    if args.baseline:
        b = time_xi(bundle, args.mode, pair, 15, None, baseline=True)
        log(b)
        kb = time_kernel(bundle, args.mode, task, baseline=True)
        log(kb)
        result["baseline"] = {"xi": b, "kernel": kb, "xi_speedup_cpu": b["cpu_s"] / main_run["cpu_s"],
                              "kernel_speedup_cpu": kb["cpu_s"] / k["cpu_s"]}
        rows.append({**b, "what": "ξ grid, pre-optimisation engine"})
        rows.append({"what": "kernel, pre-optimisation engine", "mode": args.mode, "grid": task, "seconds": kb["seconds"],
                     "cpu_s": kb["cpu_s"]})
    cols = ["what", "mode", "grid", "points", "images", "seconds", "cpu_s", "cpu_us_per_point_image", "target_s", "met"]
    head = (f"diagnostics: {args.mode}, pair {pair[0]} | {pair[1]}, {threads} thread(s); CPU cost per point·image varies "
            f"{result['linearity']['max_over_min']:.2f}× across sizes (1.00 = exactly linear)")
    emit(args, result, head + "\n" + table(rows, cols, floatfmt="{:.2f}"))
    return result


if __name__ == "__main__":
    main()
