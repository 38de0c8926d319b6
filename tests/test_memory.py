"""arith.memory: the allocator settings the app, the CLI and the benchmarks apply (process-wide: fresh processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GLIBC = sys.platform.startswith("linux") and bool(os.confstr("CS_GNU_LIBC_VERSION"))


def _run(code: str, **env) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_settings_are_applied_once_without_importing_torch():
    got = json.loads(_run("import json, sys\n"
                          "from arith.memory import keep_freed_memory, settings\n"
                          "a = keep_freed_memory(); b = keep_freed_memory(trim_mb=1)\n"
                          "assert a is b and settings() is a\n"
                          "print(json.dumps({'applied': a, 'torch': 'torch' in sys.modules}))\n", ARITH_MALLOC=""))
    assert got["torch"] is False
    if GLIBC:
        assert got["applied"] == {"trim_threshold_mb": 512, "mmap_threshold_mb": 256, "arena_max": 1}


def test_it_can_be_turned_off():
    assert _run("from arith.memory import keep_freed_memory; print(keep_freed_memory())", ARITH_MALLOC="default") == "None"


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_a_full_mode_slider_request_faults_no_pages_in():
    """The point of the settings, on the embedded default: a full-mode request (new merged weights, ~150 MB of
    activations, all freed again) faults no pages in once the process has warmed up.  With glibc's defaults the same
    requests take tens of thousands of minor faults each (``python -m bench.allocator``)."""
    code = ("import random, resource\n"
            "from arith.memory import keep_freed_memory\n"
            "keep_freed_memory()\n"
            "from arith.bundle import load_bundle\n"
            "from arith.explore import Explorer\n"
            f"ex = Explorer(load_bundle({str(ROOT / 'precomputed' / 'default')!r}), max_per_task=256)\n"
            "names, rng = list(ex.vectors('full')), random.Random(0)\n"
            "for i in range(8):\n"
            "    if i == 3: r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "    ex.evaluate('full', {n: rng.uniform(-1, 1) for n in names}, 'test')\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) // 5)\n")
    assert int(_run(code, ARITH_MALLOC="")) < 1000
