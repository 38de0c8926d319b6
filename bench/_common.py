"""Shared plumbing of the benchmarks: arguments, thread count, machine description, tables, JSON, statistics."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/x.py` as well as `python -m bench.x`
    sys.path.insert(0, str(ROOT))

DEFAULT_BUNDLE = os.environ.get("ARITH_BUNDLE") or str(ROOT / "precomputed" / "default")


def parser(description: str, bundle: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    if bundle:
        p.add_argument("--bundle", default=DEFAULT_BUNDLE, help="bundle directory (default: $ARITH_BUNDLE or "
                                                                "precomputed/default)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's choice, usually one per core)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    return p


_LOAD_AT_START: tuple[float, float, float] | None = None  # see set_threads and machine


def set_threads(n: int | None) -> int:
    """Set torch's intra-op thread count (and the env vars child processes inherit); returns the count in use."""
    from arith.cost import set_intra_op_threads
    from arith.memory import keep_freed_memory

    keep_freed_memory()  # what the app does at start (arith/memory.py); every benchmark calls set_threads first
    global _LOAD_AT_START
    if _LOAD_AT_START is None and hasattr(os, "getloadavg"):  # the machine's load before the benchmark's own work
        _LOAD_AT_START = os.getloadavg()
    if n is not None:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(n)
    return set_intra_op_threads(n)


def machine() -> dict:
    """What the figures were measured on (absolute times only hold for this)."""
    import torch

    from arith.memory import settings

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = list(range(os.cpu_count() or 1))
    # the load average when the benchmark started (set_threads, its first call), not the load it made itself
    load = _LOAD_AT_START or (os.getloadavg() if hasattr(os, "getloadavg") else None)
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "affinity": affinity, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "malloc": settings(),
            "loadavg_at_start": [round(x, 2) for x in load] if load else None,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": " ".join(sys.argv)}


def summary(seconds: Sequence[float]) -> dict:
    """Median, p95, mean, min and max in milliseconds."""
    ms = sorted(1000.0 * s for s in seconds)
    if not ms:
        return {"n": 0}
    p95 = ms[min(len(ms) - 1, max(0, int(round(0.95 * (len(ms) - 1)))))]
    return {"n": len(ms), "median_ms": statistics.median(ms), "p95_ms": p95, "mean_ms": statistics.fmean(ms),
            "min_ms": ms[0], "max_ms": ms[-1]}


def table(rows: list[dict], columns: Sequence[str] | None = None, floatfmt: str = "{:.1f}") -> str:
    """A plain aligned text table."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0])

    def fmt(v):
        if isinstance(v, float):
            return floatfmt.format(v)
        return "—" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))
    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def markdown_table(head: Sequence[str], rows) -> str:
    """A Markdown table (the studies' ``--summarize`` output, pasted into docs/default-bundle.md)."""
    return "\n".join(["| " + " | ".join(map(str, r)) + " |" for r in [head, ["---"] * len(head), *rows]])


def emit(args, result: dict, text: str) -> None:
    """Print the table; write ``result`` (with the machine description) to ``--json FILE`` when given."""
    print(text, flush=True)
    if getattr(args, "json", None):
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1, sort_keys=True))
        print(f"(JSON written to {path})", file=sys.stderr)


def rss_mb(pid: int | str = "self") -> float:
    """Current resident set size of a process in MiB (Linux /proc)."""
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb(pid: int | str = "self") -> float:
    """Peak resident set size (VmHWM) of a process in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def write_json_atomic(path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` atomically: a run stopped by ``timeout`` leaves the last complete file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)
