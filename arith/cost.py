"""Training cost per mode: seconds per step and memory, each mode measured in a fresh process.

Memory is reported two ways.  ``state_mb`` is what one training step keeps alive, counted exactly: the tensors
autograd saves for the backward pass (activations, once per storage) plus gradients and AdamW's two moments of the
trainable tensors; it is deterministic and independent of the allocator.  ``peak_mb`` is measured: on CUDA
``torch.cuda.max_memory_allocated`` during the run; on CPU the growth of the process's peak resident set (Linux:
``VmHWM``, reset through ``/proc/self/clear_refs`` after loading, so loading the bundle does not hide the peak; elsewhere
the growth of ``ru_maxrss``, which can read 0 when loading peaked higher).  ``python -m arith cost`` runs one
measurement; :func:`measure_modes` runs one subprocess per mode and collects them.
"""

from __future__ import annotations

import json
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def reset_peak_rss() -> bool:
    """Reset the process's peak resident set (Linux ≥ 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def training_state_mb(base, head, images, labels, mode: str) -> dict:
    """MiB one training step keeps alive: tensors saved for backward (deduplicated by storage, parameters excluded)
    and gradients + AdamW moments of the trainable tensors (3 × their size)."""
    import torch.nn.functional as F

    from .finetune import Trainable

    model = Trainable(base, mode)
    seen: dict[int, int] = {}
    params = {p.data_ptr() for p in model.parameters()} | {t.data_ptr() for t in base.params.values()}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    x = base.preprocess(images.to(base.device))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(head.logits(model(x)), labels.to(base.device))
    loss.backward()
    trainable = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"saved_activations_mb": sum(seen.values()) / 2**20, "grads_and_adam_mb": 3 * trainable / 2**20,
            "trainable": sum(p.numel() for p in model.parameters())}


def set_intra_op_threads(n: int | None) -> int:
    """Set torch's intra-op thread count to ``n`` (None: leave it); returns the count in use.

    ``torch.set_num_threads`` is called only when the count differs: the call also turns MKL's dynamic threading
    off, which made fine-tuning steps of the default's small ViT 6–36 % slower at an unchanged count of 2 (same
    bits; ``python -m bench.finetune_cost --mkl-static``, BENCHMARKS.md)."""
    if n is not None and n < 1:
        raise ValueError(f"threads must be ≥ 1 (got {n})")
    if n is not None and n != torch.get_num_threads():
        torch.set_num_threads(n)
    return torch.get_num_threads()


def measure(base, head, images, labels, mode: str, steps: int = 20, batch_size: int = 64, warmup: int = 3,
            device: str = "cpu") -> dict:
    """Seconds per step (median after ``warmup`` steps), ``state_mb`` and ``peak_mb`` of fine-tuning ``mode``."""
    import gc

    from .data import Split
    from .finetune import finetune
    from .specs import FinetuneConfig

    if steps < 1 or warmup < 0 or batch_size < 1:
        raise ValueError(f"cost: need steps ≥ 1, warmup ≥ 0 and a batch size ≥ 1 (got steps={steps}, "
                         f"warmup={warmup}, batch size {batch_size})")
    if device != "cpu":
        base = base.to(device)
    state = training_state_mb(base, head, images[:batch_size], labels[:batch_size], mode)
    gc.collect()
    if device != "cpu":
        torch.cuda.reset_peak_memory_stats()
        before, reset = torch.cuda.memory_allocated(), True
    else:
        reset = reset_peak_rss()
        rss0 = _peak_rss_mb()  # after a reset: the current resident set
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
        peak = _peak_rss_mb() - rss0
    return {"mode": mode, "seconds_per_step": per_step, "peak_mb": peak,
            "state_mb": state["saved_activations_mb"] + state["grads_and_adam_mb"], **state,
            "peak_is_exact": reset, "batch_size": batch_size, "steps": steps, "device": device,
            "threads": torch.get_num_threads()}


def measure_modes(bundle_dir: str, modes, task: str | None = None, steps: int = 20, batch_size: int = 64,
                  device: str = "cpu", fresh_process: bool = True, threads: int | None = None) -> dict:
    """Run ``python -m arith cost`` once per mode in a fresh process; {mode: measurement}.

    ``fresh_process=False`` measures in this process (fast, for tests; peak memory is then not comparable).
    ``threads`` gives the fresh processes that intra-op thread count (default: torch's own)."""
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
        if threads is not None:
            cmd += ["--threads", str(threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise ValueError(f"cost: measuring {mode} in a fresh process failed ({shlex.join(cmd)}):\n{tail}")
        out[mode] = json.loads(proc.stdout)
    base = out.get("full")
    if base:
        for m in out.values():
            m["time_vs_full"] = m["seconds_per_step"] / base["seconds_per_step"]
            m["memory_vs_full"] = m["peak_mb"] / base["peak_mb"] if base["peak_mb"] > 0 else None
            m["state_vs_full"] = m["state_mb"] / base["state_mb"] if base["state_mb"] > 0 else None
    return out
