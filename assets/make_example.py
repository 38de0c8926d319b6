"""Regenerate ``assets/example-task-vector.safetensors``: a task vector for the embedded default bundle.

The Upload page offers this file for download so a visitor can try uploading without fine-tuning anything.  It is
fine-tuned afresh (``python -m arith finetune``) on the bundle's first task in attention-only mode with another seed
than the bundle's own vector, so uploading it shows two vectors of one task (compare them on the Task vectors page).
It is only valid for the bundle it was made for: rerun this whenever ``precomputed/default`` is rebuilt::

    python assets/make_example.py                       # precomputed/default -> assets/example-task-vector.safetensors
    python assets/make_example.py --bundle DIR --out FILE
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from arith.bundle import load_bundle  # noqa: E402
from arith.cli import main as cli  # noqa: E402


def make(bundle: Path, out: Path, mode: str = "attn", seed: int = 1, task: str | None = None) -> int:
    b = load_bundle(bundle)
    task = task or b.task_names[0]
    return cli(["finetune", "--bundle", str(bundle), "--task", task, "--mode", mode, "--seed", str(seed),
                "--device", "cpu", "--out", str(out)])


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=ROOT / "precomputed" / "default")
    p.add_argument("--out", type=Path, default=ROOT / "assets" / "example-task-vector.safetensors")
    p.add_argument("--mode", default="attn")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--task", help="default: the bundle's first task")
    a = p.parse_args()
    sys.exit(make(a.bundle, a.out, a.mode, a.seed, a.task))
