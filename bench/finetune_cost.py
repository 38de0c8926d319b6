"""Benchmark 1, fine-tuning cost per mode: seconds per step and peak memory of full, attn, linear and mlp on the same
encoder, batch and data, with ratios to full.

Each mode runs in a fresh process (``--child MODE``) so that no mode inherits another's allocations; it fine-tunes
the bundle's base on one task (its stored images: the bundle ships no training split, and the cost does not depend
on the labels) with ``arith.finetune.finetune``, the loop every bundle is built with.  Time per step is the median
over ``--steps`` steps after ``--warmup``.  Memory, two ways:

* ``peak RSS``: growth of the process's peak resident memory over the fine-tuning run (Linux; the peak is reset
  after loading, via /proc/self/clear_refs) — what the machine sees, allocator caching included;
* ``training state``: bytes autograd saves for the backward pass in one step (activations, counted once per
  storage) plus the trainable tensors' gradients and AdamW's two moments — the deterministic part that the mode
  changes, independent of the allocator and of other processes.

    python -m bench.finetune_cost --bundle precomputed/default --json bench/results/finetune_cost.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from bench._common import ROOT, emit, machine, parser, peak_rss_mb, rss_mb, set_threads, table

MODES = ("full", "attn", "linear", "mlp")


def child(args) -> dict:
    set_threads(args.threads)
    import torch

    if args.mkl_static:  # the call turns MKL's dynamic threading off, even at an unchanged count
        torch.set_num_threads(torch.get_num_threads())

    from arith.bundle import load_bundle
    from arith.cost import reset_peak_rss, training_state_mb
    from arith.data import Split
    from arith.finetune import finetune
    from arith.specs import FinetuneConfig

    b = load_bundle(args.bundle)
    task = args.task or b.task_names[0]
    data = b.data[task]
    images = torch.cat([data[s].images for s in ("val", "test") if s in data])
    labels = torch.cat([data[s].labels for s in ("val", "test") if s in data])
    base, head = b.base, b.heads[task]
    state = training_state_mb(base, head, images[:args.batch_size], labels[:args.batch_size], args.child)
    state["trainable_params"] = state.pop("trainable")
    cfg = FinetuneConfig(mode=args.child, steps=args.warmup + args.steps, batch_size=args.batch_size, lr=1e-4,
                         warmup_steps=1, seed=0)
    import gc

    gc.collect()
    rss0 = rss_mb()
    reset = reset_peak_rss()
    times, last = [], [time.perf_counter()]

    def tick(step, total, loss):
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    cpu0 = time.process_time()
    res = finetune(base, head, Split(images, labels), cfg, task=task, progress=tick)
    cpu = (time.process_time() - cpu0) / cfg.steps
    steady = sorted(times[args.warmup:])
    return {"mode": args.child, "task": task, "batch_size": args.batch_size, "steps": args.steps,
            "threads": torch.get_num_threads(), "mkl_static": bool(args.mkl_static),
            "seconds_per_step": steady[len(steady) // 2], "cpu_seconds_per_step": cpu,
            "mean_seconds_per_step": sum(steady) / len(steady),
            "peak_rss_growth_mb": (peak_rss_mb() - rss0) if reset else None, "final_loss": res.losses[-1], **state}


def main(argv=None) -> dict:
    p = parser("fine-tuning cost per mode (one fresh process per mode)")
    p.add_argument("--modes", nargs="*", default=list(MODES))
    p.add_argument("--task", help="whose head and images to use (default: the first task)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=1, help="run each mode this many times (in turn) and keep the median")
    p.add_argument("--mkl-static", action="store_true",
                   help="each child calls torch.set_num_threads at its own count first, which turns MKL's dynamic "
                        "threading off (what --threads did before 2026-11-26; compare with a run without it)")
    p.add_argument("--child", help=argparse_hidden())
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return {}
    threads = set_threads(args.threads)
    runs: dict[str, list[dict]] = {m: [] for m in args.modes}
    for rep in range(args.repeats):
        for mode in args.modes:  # modes in turn, so that background load spreads over all of them
            cmd = [sys.executable, "-m", "bench.finetune_cost", "--bundle", args.bundle, "--child", mode,
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size)]
            if args.task:
                cmd += ["--task", args.task]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            if args.mkl_static:
                cmd += ["--mkl-static"]
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=os.environ.copy())
            if out.returncode:
                raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            runs[mode].append(r)
            print(f"{mode} (run {rep + 1}): {1000 * r['seconds_per_step']:.1f} ms/step, state "
                  f"{r['saved_activations_mb'] + r['grads_and_adam_mb']:.1f} MB", file=sys.stderr, flush=True)

    def med(rs, key):
        vals = sorted(r[key] for r in rs if r.get(key) is not None)
        return vals[len(vals) // 2] if vals else None

    res = {m: {**rs[0], **{k: med(rs, k) for k in ("seconds_per_step", "cpu_seconds_per_step", "peak_rss_growth_mb")},
               "runs": rs} for m, rs in runs.items()}
    full = res.get("full")
    rows = []
    for m, r in res.items():
        state = r["saved_activations_mb"] + r["grads_and_adam_mb"]
        row = {"mode": m, "trainable": r["trainable_params"], "ms/step": 1000 * r["seconds_per_step"],
               "CPU ms/step": 1000 * r["cpu_seconds_per_step"], "peak RSS MB": r["peak_rss_growth_mb"],
               "state MB": state}
        if full:
            fstate = full["saved_activations_mb"] + full["grads_and_adam_mb"]
            r["time_vs_full"] = r["seconds_per_step"] / full["seconds_per_step"]
            r["cpu_vs_full"] = r["cpu_seconds_per_step"] / full["cpu_seconds_per_step"]
            r["state_vs_full"] = state / fstate
            r["rss_vs_full"] = (r["peak_rss_growth_mb"] / full["peak_rss_growth_mb"]
                                if r["peak_rss_growth_mb"] and full["peak_rss_growth_mb"] else None)
            row.update({"time ×full": r["time_vs_full"], "CPU ×full": r["cpu_vs_full"], "state ×full": r["state_vs_full"],
                        "RSS ×full": r["rss_vs_full"]})
        rows.append(row)
    targets = []
    if full and "attn" in res:
        a = res["attn"]
        targets = [f"attn time ≤ 0.8× full: {a['cpu_vs_full']:.2f}× CPU, {a['time_vs_full']:.2f}× wall "
                   f"({'met' if a['cpu_vs_full'] <= 0.8 else 'not met'})",
                   f"attn memory below full: state {a['state_vs_full']:.2f}×, peak RSS "
                   + (f"{a['rss_vs_full']:.2f}×" if a["rss_vs_full"] else "—")
                   + f" ({'met' if a['state_vs_full'] < 1 else 'not met'})"]
    if full and "linear" in res:
        targets.append(f"linear (paper: ~2× full): {res['linear']['cpu_vs_full']:.2f}× CPU time, "
                       f"{res['linear']['state_vs_full']:.2f}× state")
    out = {"machine": machine(), "bundle": args.bundle, "threads": threads, "modes": res, "targets": targets}
    head = (f"fine-tuning cost: batch {args.batch_size}, {args.steps} steps after {args.warmup} warm-up, "
            f"{threads} thread(s), {args.repeats} run(s) per mode (median)")
    emit(args, out, head + "\n" + table(rows, floatfmt="{:.2f}") + "\n" + "\n".join(targets))
    return out


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
