"""Training cost per mode: seconds per step and peak memory, each mode measured in a fresh process.

CPU peak memory is the growth of the process's maximum resident set size over the fine-tuning steps (the base,
data and heads are loaded first), so one process per mode keeps the modes from hiding each other's peaks.
On CUDA it is ``torch.cuda.max_memory_allocated``.  ``python -m arith cost`` runs one measurement;
:func:`measure_modes` runs one subprocess per mode and collects them.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import torch


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def measure(base, head, images, labels, mode: str, steps: int = 20, batch_size: int = 64, warmup: int = 3,
            device: str = "cpu") -> dict:
    """Seconds per step (after ``warmup`` steps) and peak memory (MB) of fine-tuning ``mode``."""
    from .data import Split
    from .finetune import finetune
    from .specs import FinetuneConfig

    if device != "cpu":
        base = base.to(device)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    rss0 = _rss_mb()
    times = []
    last = [time.perf_counter()]

    def tick(i, n, loss):
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    cfg = FinetuneConfig(mode=mode, steps=steps + warmup, batch_size=batch_size, lr=1e-4, warmup_steps=1)
    finetune(base, head, Split(images, labels), cfg, task="cost", progress=tick)
    per_step = sorted(times[warmup:])[len(times[warmup:]) // 2]  # median
    if device != "cpu":
        peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        peak = _rss_mb() - rss0
    return {"mode": mode, "seconds_per_step": per_step, "peak_mb": peak, "batch_size": batch_size, "steps": steps,
            "device": device, "threads": torch.get_num_threads()}


def measure_modes(bundle_dir: str, modes, task: str | None = None, steps: int = 20, batch_size: int = 64,
                  device: str = "cpu", fresh_process: bool = True) -> dict:
    """Run ``python -m arith cost`` once per mode in a fresh process; {mode: measurement}.

    ``fresh_process=False`` measures in this process (fast, for tests; peak memory is then not comparable)."""
    out = {}
    if not fresh_process:
        from .bundle import load_bundle

        b = load_bundle(bundle_dir, verify=False)
        task = task or b.task_names[0]
        split = b.data[task]["val"]
        out = {m: measure(b.base, b.heads[task], split.images, split.labels, m, steps, batch_size, device=device)
               for m in modes}
    for mode in modes if fresh_process else ():
        cmd = [sys.executable, "-m", "arith", "cost", "--bundle", str(bundle_dir), "--mode", mode, "--steps", str(steps),
               "--batch-size", str(batch_size), "--device", device, "--json"]
        if task:
            cmd += ["--task", task]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[mode] = json.loads(proc.stdout)
    base = out.get("full")
    if base:
        for m in out.values():
            m["time_vs_full"] = m["seconds_per_step"] / base["seconds_per_step"]
            m["memory_vs_full"] = m["peak_mb"] / base["peak_mb"] if base["peak_mb"] > 0 else None
    return out
