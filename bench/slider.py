"""Benchmark 2, the slider path: a new coefficient set → per-task accuracies on every task of a bundle.

For each mode, ``--sets`` random coefficient sets (every task's λ drawn from the sidebar's grid −2, −1.95, …, 2)
go through :meth:`arith.explore.Explorer.evaluate`, exactly what the app calls when a slider moves; the table
gives the median and p95 latency, the latency of the same sets again (a cached repeat), and of the very first
request (which builds the evaluation tensors and the shared θ0 activations once per process).  ``rerun`` is
what the Task-arithmetic view computes per slider move: the current mode plus the same coefficients under every
other mode.

``--baseline`` also runs the engine as it was before the optimisations (open_clip's module through
``functional_call``, batches of 1024, no shared θ0 activations), in the same process: compare the two as ratios.
``--profile MODE`` prints a cProfile of the requests of one mode.  ``--method SPEC`` times another merge method
(``ties``, ``dare:density=0.3``): the same requests, merged by it.

    python -m bench.slider --bundle precomputed/default --baseline --json bench/results/slider.json
"""

from __future__ import annotations

import dataclasses
import random
import sys
import time

from arith.cli import method_type
from bench._common import emit, machine, parser, set_threads, summary, table

TARGET_MS = {"linear": 10.0}  # median; the other modes: 250 ms.  Cached repeats: 5 ms.
DEFAULT_TARGET_MS, CACHED_TARGET_MS = 250.0, 5.0
GRID = [round(-2.0 + 0.05 * i, 2) for i in range(81)]


def baseline_explorer(bundle, max_per_task=None):
    """An Explorer whose evaluator is the pre-optimisation engine (module forward, batches of 1024, no prefixes)."""
    from arith.explore import Explorer
    from arith.models import Base

    plain = Base(bundle.base.spec, bundle.base.module, base_id=bundle.base.id)
    plain.__dict__["staged"] = None
    ex = Explorer(bundle, max_per_task=max_per_task)
    ex._evaluators[max_per_task] = dataclasses.replace(bundle, base=plain).evaluator(
        max_per_task=max_per_task, batch_size=1024, prefix_cache_mb=0)
    return ex


def coefficient_sets(names, n, seed):
    rng = random.Random(seed)
    return [{t: rng.choice(GRID) for t in names} for _ in range(n)]


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, the process's CPU seconds) of fn(): CPU time is what the request cost, wall time what a user
    waits; they differ when other processes compete for the core."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def time_mode(explorers: dict, mode: str, sets, split: str = "test", method: str = "task_arithmetic") -> dict:
    """Time every variant's Explorer on the same coefficient sets, interleaved request by request (alternating
    which variant goes first) so that both see the same background load."""
    names = list(next(iter(explorers.values())).vectors(mode))
    first = coefficient_sets(names, 1, seed=-1)[0]
    out = {v: {"first_ms": 1000 * _timed(lambda ex=ex: ex.evaluate(mode, first, split, method=method))[0]}
           for v, ex in explorers.items()}
    for phase in ("new", "cached"):
        wall, cpu = {v: [] for v in explorers}, {v: [] for v in explorers}
        for i, coefs in enumerate(sets):
            c = {n: coefs[n] for n in names}
            order = list(explorers) if i % 2 == 0 else list(reversed(explorers))
            for v in order:
                w, t = _timed(lambda ex=explorers[v], c=c: ex.evaluate(mode, c, split, method=method))
                wall[v].append(w)
                cpu[v].append(t)
        for v in explorers:
            out[v][phase], out[v][phase + "_cpu"] = summary(wall[v]), summary(cpu[v])
    return out


def time_rerun(ex, sets, split: str = "test", method: str = "task_arithmetic") -> dict:
    """All modes for each new set (the Task-arithmetic view's work per slider move)."""
    out = []
    for coefs in sets:
        t = time.perf_counter()
        for mode in ex.modes:
            names = set(ex.vectors(mode))
            ex.evaluate(mode, {n: v for n, v in coefs.items() if n in names}, split, method=method)
        out.append(time.perf_counter() - t)
    return summary(out)


def breakdown(ex, mode: str, sets, split: str = "test", sync=lambda: None, method: str = "task_arithmetic") -> dict:
    """Where one request's time goes: merge (δ and θ0 + δ), forward pass, heads and accuracy (medians, ms).
    ``sync``: waits for the device (``torch.cuda.synchronize`` on a GPU, whose kernels run asynchronously).  A
    linearized mode counts its whole request as the merge: a weighted sum of cached J τ (or, for a method without
    that form, one J δ)."""
    from arith.merge import apply_delta, combine

    ev = ex.evaluator()
    vs = ex.vectors(mode)
    parts = {"merge": [], "forward": [], "heads": []}
    for coefs in sets[:10]:
        names = sorted(coefs)
        vectors, lam = [vs[n] for n in names], [coefs[n] for n in names]
        t0 = time.perf_counter()
        if vectors[0].linearized:
            feats = ev.merged_features(vectors, lam, split, method=method)
            sync()
            t1 = t2 = time.perf_counter()
        else:
            params = apply_delta(ev.base.params, combine(ev.resident(vectors), lam, method))  # as merged_features does
            sync()
            t1 = time.perf_counter()
            feats = ev.features(params, split)
            sync()
            t2 = time.perf_counter()
        ev.accuracy(feats, split)
        t3 = time.perf_counter()
        parts["merge"].append(t1 - t0)
        parts["forward"].append(t2 - t1)
        parts["heads"].append(t3 - t2)
    return {k: summary(v)["median_ms"] for k, v in parts.items()}


def main(argv=None) -> dict:
    p = parser("slider latency: new coefficient set → per-task accuracies, per mode")
    p.add_argument("--sets", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", nargs="*", help="modes to time (default: all of the bundle's)")
    p.add_argument("--split", default="test")
    p.add_argument("--method", default="task_arithmetic", type=method_type,
                   help="merge method spec (default task arithmetic), e.g. ties or dare:density=0.3")
    p.add_argument("--device", default="cpu", help="evaluate there (e.g. cuda: θ0 and the evaluation on the GPU, as the "
                                                   "app on a GPU machine; task vectors are copied there on first use)")
    p.add_argument("--max-per-task", type=int, help="evaluate on the first N images per task (default: all)")
    p.add_argument("--baseline", action="store_true", help="also time the pre-optimisation engine in this run")
    p.add_argument("--no-rerun", action="store_true", help="skip the all-modes (one view rerun) measurement")
    p.add_argument("--profile", metavar="MODE", help="print a cProfile of MODE's requests instead")
    p.add_argument("--torch-profile", metavar="MODE", help="print torch.profiler's operator table of 5 requests of MODE "
                                                           "(add --baseline to profile the pre-optimisation engine)")
    args = p.parse_args(argv)
    threads = set_threads(args.threads)

    import torch

    from arith.bundle import load_bundle
    from arith.explore import Explorer

    bundle = load_bundle(args.bundle)
    if args.device != "cpu":  # what Explorer.open(device=...) does, so the app's GPU path is what is timed
        bundle = dataclasses.replace(bundle, base=bundle.base.to(args.device))
    sync = (lambda: torch.cuda.synchronize(args.device)) if args.device.startswith("cuda") else (lambda: None)
    tasks = bundle.task_names
    modes = args.modes or bundle.modes
    n_images = {t: len(bundle.data[t][args.split].head(args.max_per_task)) for t in tasks}
    sets = coefficient_sets(tasks, args.sets, args.seed)

    if args.profile:
        import cProfile
        import pstats

        ex = Explorer(bundle, max_per_task=args.max_per_task)
        ex.evaluate(args.profile, {}, args.split, method=args.method)
        prof = cProfile.Profile()
        prof.enable()
        for coefs in sets:
            ex.evaluate(args.profile, {n: coefs[n] for n in ex.vectors(args.profile)}, args.split, method=args.method)
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
        return {}

    if args.torch_profile:
        from torch.profiler import ProfilerActivity, profile

        ex = baseline_explorer(bundle, args.max_per_task) if args.baseline else Explorer(bundle, max_per_task=args.max_per_task)
        names = list(ex.vectors(args.torch_profile))
        ex.evaluate(args.torch_profile, {n: 0.5 for n in names}, args.split, method=args.method)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for coefs in sets[:5]:
                ex.evaluate(args.torch_profile, {n: coefs[n] for n in names}, args.split, method=args.method)
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=20))
        return {}

    makers = {"optimised": lambda: Explorer(bundle, max_per_task=args.max_per_task)}
    if args.baseline:
        makers["baseline"] = lambda: baseline_explorer(bundle, args.max_per_task)
    rows, result = [], {"machine": machine(), "bundle": str(bundle.root), "device": args.device, "tasks": tasks,
                        "images": n_images,
                        "sets": args.sets, "split": args.split, "method": args.method, "threads": threads, "modes": {}}
    for mode in modes:
        explorers = {v: make() for v, make in makers.items()}
        timed = time_mode(explorers, mode, sets, args.split, args.method)
        for variant, r in timed.items():
            r["breakdown_ms"] = breakdown(explorers[variant], mode, sets, args.split, sync, args.method)
            result["modes"].setdefault(mode, {})[variant] = r
            print(f"{variant} {mode}: median {r['new']['median_ms']:.1f} ms (CPU {r['new_cpu']['median_ms']:.1f}), "
                  f"p95 {r['new']['p95_ms']:.1f} ms, cached {r['cached']['median_ms']:.3f} ms, first {r['first_ms']:.0f} ms",
                  file=sys.stderr, flush=True)
            target = TARGET_MS.get(mode, DEFAULT_TARGET_MS)
            rows.append({"mode": mode, "variant": variant, "median ms": r["new"]["median_ms"], "p95 ms": r["new"]["p95_ms"],
                         "CPU median ms": r["new_cpu"]["median_ms"], "target ms": target,
                         "met": "yes" if r["new"]["median_ms"] <= target else "no",
                         "cached median ms": r["cached"]["median_ms"], "cached p95 ms": r["cached"]["p95_ms"],
                         "cached met": "yes" if r["cached"]["median_ms"] <= CACHED_TARGET_MS else "no",
                         "first ms": r["first_ms"], **{f"{k} ms": v for k, v in r["breakdown_ms"].items()}})
    if not args.no_rerun:
        for variant, make in makers.items():
            ex = make()
            for mode in modes:  # warm: evaluation tensors, shared activations
                ex.evaluate(mode, coefficient_sets(list(ex.vectors(mode)), 1, seed=-2)[0], args.split, method=args.method)
            r = time_rerun(ex, coefficient_sets(tasks, min(args.sets, 20), args.seed + 1), args.split, args.method)
            result.setdefault("rerun", {})[variant] = r
            rows.append({"mode": "rerun (all modes)", "variant": variant, "median ms": r["median_ms"], "p95 ms": r["p95_ms"]})
    if args.baseline:
        for mode in modes:
            v = result["modes"][mode]
            v["speedup"] = v["baseline"]["new"]["median_ms"] / v["optimised"]["new"]["median_ms"]
            v["speedup_cpu"] = v["baseline"]["new_cpu"]["median_ms"] / v["optimised"]["new_cpu"]["median_ms"]
            rows.append({"mode": mode, "variant": "speedup", "median ms": v["speedup"], "CPU median ms": v["speedup_cpu"]})
    head = (f"slider path: {len(tasks)} tasks × {sorted(set(n_images.values()))} {args.split} images, {args.sets} random "
            f"coefficient sets, {threads} thread(s), on {args.device}")
    emit(args, result, head + "\n" + table(rows, floatfmt="{:.2f}"))
    return result


if __name__ == "__main__":
    main()
