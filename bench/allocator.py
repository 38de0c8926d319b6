"""The allocator settings of ``arith/memory.py``: full-mode slider requests with glibc's defaults and with the settings.

Each variant runs in ``--processes`` fresh processes (``--child``), because the effect differs between processes:
a process loads the bundle, warms up with 3 requests, then times ``--requests`` full-mode requests (new random
coefficients each, all 8 tasks × 256 test images) and counts the minor page faults and system time they take.
``--thread-per-rerun`` also runs the requests as Streamlit does: the bundle loaded on one thread, then every 3
requests on a new thread.

    python -m bench.allocator --bundle precomputed/default --threads 2 --json bench/results/allocator.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import threading
import time

from bench._common import ROOT, emit, machine, parser, set_threads, table

VARIANTS = {"glibc defaults": "default", "keep_freed_memory": ""}  # -> $ARITH_MALLOC of the child


def child(args) -> dict:
    set_threads(args.threads)  # applies keep_freed_memory() unless $ARITH_MALLOC=default
    from arith.bundle import load_bundle
    from arith.explore import Explorer
    from arith.memory import settings

    holder, times = {}, []

    def load() -> None:
        holder["ex"] = Explorer(load_bundle(args.bundle), max_per_task=256)

    if args.thread_per_rerun:  # as the app: loaded on one script thread, requests on later ones
        t = threading.Thread(target=load)
        t.start()
        t.join()
    else:
        load()
    ex = holder["ex"]
    names, rng = list(ex.vectors("full")), random.Random(args.seed)

    def requests(n: int, timed: bool) -> None:
        for _ in range(n):
            coefs = {name: rng.uniform(-1, 1) for name in names}
            t0 = time.perf_counter()
            ex.evaluate("full", coefs, "test")
            if timed:
                times.append(time.perf_counter() - t0)

    def rerun(n: int, timed: bool) -> None:  # the main thread never runs torch work in the app's layout
        if args.thread_per_rerun:
            t = threading.Thread(target=requests, args=(n, timed))
            t.start()
            t.join()
        else:
            requests(n, timed)

    rerun(3, timed=False)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for start in range(0, args.requests, 3):
        rerun(min(3, args.requests - start), timed=True)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    n = len(times)
    return {"median_ms": 1000 * statistics.median(times), "faults_per_request": (r1.ru_minflt - r0.ru_minflt) / n,
            "sys_ms_per_request": 1000 * (r1.ru_stime - r0.ru_stime) / n, "malloc": settings()}


def main(argv=None) -> dict:
    p = parser("full-mode slider requests with glibc's default allocator settings and with keep_freed_memory()")
    p.add_argument("--processes", type=int, default=4, help="fresh processes per variant")
    p.add_argument("--requests", type=int, default=18)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--thread-per-rerun", action="store_true", help="also time requests on a new thread per 3")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return {}
    threads = set_threads(args.threads)
    rows, res = [], {}
    layouts = [False, True] if args.thread_per_rerun else [False]
    for per_rerun in layouts:
        for label, env in VARIANTS.items():
            name = label + (", thread per rerun" if per_rerun else "")
            runs = []
            for i in range(args.processes):
                cmd = [sys.executable, "-m", "bench.allocator", "--bundle", args.bundle, "--child", "--requests",
                       str(args.requests), "--seed", str(args.seed + i)]
                cmd += ["--threads", str(args.threads)] if args.threads else []
                cmd += ["--thread-per-rerun"] if per_rerun else []
                out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                                     env={**os.environ, "ARITH_MALLOC": env})
                if out.returncode:
                    raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"{name}, process {i + 1}: {runs[-1]['median_ms']:.0f} ms, "
                      f"{runs[-1]['faults_per_request']:.0f} faults/request", file=sys.stderr, flush=True)
            res[name] = runs
            rows.append({"variant": name, "median ms per process": " / ".join(f"{r['median_ms']:.0f}" for r in runs),
                         "faults per request": " / ".join(f"{r['faults_per_request']:.0f}" for r in runs),
                         "sys ms per request": " / ".join(f"{r['sys_ms_per_request']:.0f}" for r in runs)})
    out = {"machine": machine(), "bundle": args.bundle, "threads": threads, "requests": args.requests, "variants": res}
    emit(args, out, f"full-mode slider requests, {args.processes} fresh processes per variant, {threads} thread(s)\n"
         + table(rows))
    return out


if __name__ == "__main__":
    main()
