"""Kernel-behaviour diagnostics (method.md §5): how close a fine-tuned model is to its linearization at θ0.

For a task vector τ and task t, compares the non-linear model f(x; θ0 + sτ) with the post-hoc linearized model
f(x; θ0) + s J(θ0)τ:

* accuracy of each, prediction agreement, relative error ‖f − f_lin‖ / ‖f − f(θ0)‖ of logits and of features;
* Ortiz-Jimenez et al.'s non-linear advantage (acc_nonlinear − acc_linear) / (1 − 1/C);
* the same along the path s ∈ [0, 1.5];
* restricted linearization: τ kept only on attention weights, only on MLP weights, or whole, each compared with
  its own linearization — the explicit form of the claim that attention modules behave like kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .evaluate import Evaluator
from .merge import merge
from .modes import get_mode, kernel_subsets
from .taskvec import TaskVector, TaskVectorError

PATH = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


def _rel(a: torch.Tensor, b: torch.Tensor, ref: torch.Tensor) -> float:
    den = float((a - ref).norm())
    return float((a - b).norm()) / den if den > 0 else 0.0


def compare(ev: Evaluator, task: str, split: str, f_nl: torch.Tensor, f_lin: torch.Tensor, f0: torch.Tensor) -> dict:
    """Accuracy, agreement and relative errors of a non-linear vs a linearized output on one task."""
    head, labels = ev.heads[task], ev.labels(split, task)
    l_nl, l_lin, l0 = head.logits(f_nl), head.logits(f_lin), head.logits(f0)
    p_nl, p_lin = l_nl.argmax(-1), l_lin.argmax(-1)
    acc_nl, acc_lin = float((p_nl == labels).float().mean()), float((p_lin == labels).float().mean())
    c = head.num_classes
    return {"acc_nonlinear": acc_nl, "acc_linear": acc_lin, "agreement": float((p_nl == p_lin).float().mean()),
            "rel_error_logits": _rel(l_nl, l_lin, l0), "rel_error_features": _rel(f_nl, f_lin, f0),
            "nonlinear_advantage": (acc_nl - acc_lin) / (1.0 - 1.0 / c)}


def _restrict(tv: TaskVector, mode: str) -> TaskVector | None:
    """τ cut to the tensors ``mode`` trains (:meth:`TaskVector.cut`, what a view such as ``full@attn`` holds), None
    when it holds none of them."""
    try:
        return tv.cut(get_mode(mode))
    except TaskVectorError:
        return None


def kernel_report(ev: Evaluator, tv: TaskVector, task: str, split: str = "test", path: Sequence[float] = PATH,
                  subsets: Sequence[str] | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
    """Kernel diagnostics of ``tv`` on ``task``: the non-linear model θ0 + sτ against f(θ0) + s Jτ.

    Returns ``{"task", "mode", "at_1": compare(...) at s = 1, "path": [{"s", ...compare}], "restricted":
    {subset: {"norm_fraction", "path": [...]} or None}}``.  ``path`` must hold s = 1; ``subsets`` are names from
    :func:`arith.modes.kernel_subsets` (all of them by default: "attention", "mlp", "all" with the built-in modes).
    """
    if 1.0 not in [float(s) for s in path]:
        raise ValueError(f"path {list(path)} lacks s = 1, where at_1 reports τ itself")
    known = kernel_subsets()
    subsets = tuple(known) if subsets is None else tuple(subsets)
    unknown = [name for name in subsets if name not in known]
    if unknown:
        raise ValueError(f"unknown subset {unknown[0]!r}; known: {', '.join(known)}")
    tasks = [task]
    f0 = ev.merged_features([], [], split, tasks)
    steps = len(path) * (1 + len(subsets))
    done = 0

    def along(vec: TaskVector) -> list[dict]:
        nonlocal done
        jt = ev.jvp(vec, split, tasks=tasks)
        # on θ0's device once per path, not once per point: each merge then scales τ there (a ViT-B/32 τ is 0.35 GB)
        here = TaskVector({k: t.to(ev.base.device) for k, t in vec.tensors.items()}, vec.task, vec.mode, vec.base_id)
        rows = []
        for s in path:
            # non-linear, any mode.  θ0 + 0·τ is θ0, so at s = 0 it is f(θ0) itself: a second forward pass over
            # other batches can differ from f0 by rounding on a GPU (kernels vary with the batch shape), which
            # turned the relative error's 0/0 into 1 (BENCHMARKS.md, *GPU*)
            # In fp32 under autocast too: f0 and J τ are fp32, and against a bf16 forward ‖f − f_lin‖ measures
            # rounding, not non-linearity (tests/test_numerics.py compares the two evaluators)
            f_nl = f0 if s == 0 else ev.features(merge(ev.base.params, [here], [s]), split, tasks, fp32=True)
            rows.append({"s": float(s), **compare(ev, task, split, f_nl, f0 + s * jt, f0)})
            done += 1
            if progress:
                progress(done, steps)
        return rows

    whole = along(tv)
    at_1 = min(whole, key=lambda r: abs(r["s"] - 1.0))
    norm = tv.norm()
    restricted = {}
    for name in subsets:
        sub = _restrict(tv, known[name])
        if sub is None:
            restricted[name] = None
            done += len(path)
            continue
        restricted[name] = {"norm_fraction": sub.norm() / norm if norm > 0 else 0.0, "path": along(sub)}
    return {"task": task, "mode": tv.mode, "split": split, "at_1": at_1, "path": whole, "restricted": restricted}
