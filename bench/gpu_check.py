"""GPU checks of issue 5: fine-tuning cost per mode and slider-evaluation latency of a ViT-B/32-sized encoder.

    python bench/gpu_check.py                      # on the GPU (cuda), ViT-B/32 with random weights (no download)
    python bench/gpu_check.py --json gpu.json      # also write the numbers as JSON
    python bench/gpu_check.py --tiny --device cpu  # a seconds-long smoke run of the same code (what the tests run)

1. Fine-tuning: seconds per step (median after warm-up steps) and peak memory (``torch.cuda.max_memory_allocated``,
   θ0 included) of ``full``, ``attn`` and ``linear`` with the engine's own loop (:func:`arith.finetune.finetune`),
   batch 128 of 224² images, AdamW, fp32 as in the paper's recipe.
2. Slider evaluation: wall time of one ``Evaluator.evaluate`` call — θ0 + Σ λ_t τ_t on 8 tasks × 256 images, each
   task through its own head — for every mode, as the app does when a slider moves: vectors on the CPU as a bundle
   loads them, merged there (``cpu``) or copied to the GPU on first use and kept there (``kept``, the app's path),
   and moved to the GPU beforehand (``gpu``); fp32, and under autocast (fp16 / bf16; τ stays fp32).  ``linear`` is timed cold
   (J τ_t computed) and warm (cached: a weighted sum).

3. Upload: a task-vector file read to the CPU (as the app's Upload page reads one) and validated against θ0 on the
   device, as the app's base is on a GPU: the checks that compare values with θ0 run across the two devices.

Random weights, images and heads: the costs do not depend on the values.  Paste the table into BENCHMARKS.md
with the card's name.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arith.cli import method_type
from arith.data import Split
from arith.evaluate import Evaluator
from arith.finetune import finetune
from arith.heads import Head
from arith.models import Base
from arith.modes import get_mode
from arith.specs import FinetuneConfig, ModelSpec
from arith.taskvec import TaskVector, load_task_vector

TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 16, "patch_size": 4, "width": 32, "layers": 2, "head_width": 16}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _random_head(dim: int, classes: int, gen: torch.Generator) -> Head:
    return Head(torch.nn.functional.normalize(torch.randn(classes, dim, generator=gen), dim=-1))


def finetune_cost(base: Base, mode: str, batch: int, steps: int, warmup: int, gen: torch.Generator) -> dict:
    n = max(2 * batch, 256)
    s = base.image_size
    split = Split(torch.randint(0, 256, (n, 3, s, s), dtype=torch.uint8, generator=gen),
                  torch.randint(0, 10, (n,), generator=gen))
    head = _random_head(base.embed_dim, 10, gen)
    if base.device.type == "cuda":
        torch.cuda.empty_cache()
    times, last = [], [time.perf_counter()]

    def tick(i, total, loss):
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    cfg = FinetuneConfig(mode=mode, steps=steps + warmup, batch_size=batch, lr=1e-5, warmup_steps=1)
    res = finetune(base, head, split, cfg, task="bench", progress=tick)
    timed = times[warmup:] or times
    peak = res.peak_memory_bytes
    return {"mode": mode, "seconds_per_step": statistics.median(timed), "steps_timed": len(timed),
            "peak_memory_mib": None if peak is None else peak / 2**20,
            "trainable": sum(t.numel() for t in res.vector.tensors.values()), "batch_size": batch}


def _vectors(base: Base, mode: str, tasks: list[str], gen: torch.Generator) -> list[TaskVector]:
    m = get_mode(mode)
    keys = m.trainable_keys(base.params)
    return [TaskVector({k: 1e-3 * torch.randn(base.params[k].shape, generator=gen) for k in keys}, t, mode, base.id)
            for t in tasks]


def upload_check(base: Base, gen: torch.Generator, mode: str = "full") -> dict:
    """A task-vector file's bytes read and validated against ``base`` wherever it lives (the Upload page's path):
    the file's tensors are on the CPU, θ0 may be on a GPU."""
    blob = _vectors(base, mode, ["upload"], gen)[0].to_bytes()
    t = time.perf_counter()
    tv = load_task_vector(blob, base)
    seconds = time.perf_counter() - t
    assert tv.numel == sum(base.params[k].numel() for k in get_mode(mode).trainable_keys(base.params))
    return {"mode": mode, "megabytes": len(blob) / 2**20, "base_device": str(base.device), "seconds": seconds}


def slider_latency(base: Base, tasks: int, per_task: int, repeats: int, gen: torch.Generator,
                   modes=("attn", "full", "linear"), methods=("task_arithmetic",)) -> list[dict]:
    """Seconds per slider move, per mode and where the vectors live; merge methods other than task arithmetic
    (method specs, e.g. ``ties:scope=vector``) are timed on the app's path only (vectors kept, fp32)."""
    s = base.image_size
    names = [f"task{i}" for i in range(tasks)]
    data = {t: {"test": Split(torch.randint(0, 256, (per_task, 3, s, s), dtype=torch.uint8, generator=gen),
                              torch.randint(0, 10, (per_task,), generator=gen))} for t in names}
    heads = {t: _random_head(base.embed_dim, 10, gen) for t in names}
    rows = []
    for mode in modes:
        cpu_vecs = _vectors(base, mode, names, gen)
        # cpu: CPU vectors merged on the CPU, the sum moved (vector cache off: the engine before it kept vectors on
        # the GPU); kept: the same CPU vectors, copied to the GPU on first use and kept by the process's vector
        # cache (the app's path; the first call also hashes them for the cache's key); gpu: vectors moved to the GPU
        # beforehand, cache off.  Linear mode's warm path is a sum of cached J τ: no kept variant
        where = ("cpu", "kept", "gpu") if mode != "linear" else ("cpu", "gpu")
        variants = [(w, None) for w in where] if base.device.type == "cuda" else [("cpu", None)]
        if mode != "linear":
            variants += [(where, amp) for where, _ in list(variants) for amp in ("fp16", "bf16")]
            if base.device.type != "cuda":
                variants = [v for v in variants if v[1] != "fp16"]  # CPU autocast is bf16 only
        variants = [(w, a, "task_arithmetic") for w, a in variants]
        if mode != "linear":  # a linearized model merged otherwise computes J δ per move: not a slider path
            keep = "kept" if base.device.type == "cuda" else "cpu"
            variants += [(keep, None, m) for m in methods if m != "task_arithmetic"]
        for where, amp, method in variants:
            vecs = cpu_vecs if where != "gpu" else [TaskVector({k: v.to(base.device) for k, v in tv.tensors.items()},
                                                               tv.task, tv.mode, tv.base_id) for tv in cpu_vecs]
            ev = Evaluator(base, heads, data, autocast=amp, vector_cache_mb=None if where == "kept" else 0)
            coefs = [0.3] * len(vecs)
            _sync(base.device)
            t0 = time.perf_counter()
            ev.evaluate(vecs, coefs, "test", method=method)  # first call: preprocessing (and J τ_t in linear mode)
            _sync(base.device)
            cold = time.perf_counter() - t0
            times = []
            for r in range(repeats):
                coefs = [0.3 + 0.01 * (r + 1)] * len(vecs)  # a new slider position each time
                _sync(base.device)
                t0 = time.perf_counter()
                ev.evaluate(vecs, coefs, "test", method=method)
                _sync(base.device)
                times.append(time.perf_counter() - t0)
            rows.append({"mode": mode, "method": method, "vectors_on": where, "autocast": amp or "fp32",
                         "images": tasks * per_task,
                         "first_call_s": cold, "median_s": statistics.median(times), "min_s": min(times)})
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture (random weights, nothing downloaded)")
    p.add_argument("--tiny", action="store_true", help="a 2-layer 16-px ViT instead: a smoke run of this script")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed fine-tuning steps per mode")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--per-task", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-finetune", action="store_true", help="only the slider evaluation")
    p.add_argument("--methods", nargs="+", type=method_type, default=["ties", "ties:scope=vector", "dare", "dare_ties"],
                   help="merge methods (specs) the slider evaluation also times, beside task arithmetic's every "
                        "variant: with the vectors kept on the device, fp32, non-linearized modes")
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run on a GPU machine (or --device cpu --tiny for a smoke run)")
    if args.tiny:
        args.batch_size, args.steps, args.warmup, args.per_task, args.repeats = 8, 2, 1, 16, 2
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    spec = ModelSpec(config=TINY) if args.tiny else ModelSpec(name=args.model)
    base = Base.from_spec(spec, load_weights=False, device=args.device)
    device = base.device
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "model": spec.label, "image_size": base.image_size, "torch": torch.__version__,
            "cuda": torch.version.cuda, "parameters": sum(v.numel() for v in base.params.values())}
    train = [] if args.no_finetune else [finetune_cost(base, m, args.batch_size, args.steps, args.warmup, gen)
                                         for m in ("full", "attn", "linear")]
    slider = slider_latency(base, args.tasks, args.per_task, args.repeats, gen, methods=list(dict.fromkeys(args.methods)))
    upload = upload_check(base, gen)
    res = {"info": info, "finetune": train, "slider": slider, "upload": upload}
    print(f"{info['device']} · {info['model']} ({info['parameters']:,} visual parameters, "
          f"{info['image_size']}px) · torch {info['torch']} CUDA {info['cuda']}\n")
    if train:
        print(f"| mode | trainable | s/step (batch {args.batch_size}) | peak memory (MiB) |")
        print("|---|---:|---:|---:|")
    for r in train:
        peak = "—" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}"
        print(f"| {r['mode']} | {r['trainable']:,} | {r['seconds_per_step']:.3f} | {peak} |")
    print(f"\n| slider evaluation, {args.tasks} × {args.per_task} images | merge | vectors on | precision "
          "| first call (s) | median (s) |")
    print("|---|---|---|---|---:|---:|")
    for r in slider:
        print(f"| {r['mode']} | {r['method']} | {r['vectors_on']} | {r['autocast']} | {r['first_call_s']:.3f} "
              f"| {r['median_s']:.3f} |")
    print(f"\nupload: a {upload['mode']} vector file ({upload['megabytes']:.1f} MB) read and validated against θ0 on "
          f"{upload['base_device']} in {upload['seconds']:.3f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
