"""Weight disentanglement error ξ(α1, α2) on a grid (method.md §4; Ortiz-Jimenez et al. 2023, Def. and Fig. 3).

    ξ(α1, α2) = Σ_{t∈{1,2}} E_{x∼D_t} dist( f_t(x; θ0 + α_t τ_t), f_t(x; θ0 + α1 τ1 + α2 τ2) )

"prediction": dist = 1[argmax differs] with task t's frozen head (range [0, 2]).  Note the reference code's
``prediction_error`` returned *agreement*; this returns disagreement, so 0 means disentangled.
"representation": heads dropped, dist = 1 − cos between encoder outputs; comparing the two tells whether the heads
or the representation carry the interference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .evaluate import Evaluator
from .metrics import GRID
from .taskvec import TaskVector

VARIANTS = ("prediction", "representation")


def _disagreement(head, ref: torch.Tensor, got: torch.Tensor) -> float:
    return float((head.predict(ref) != head.predict(got)).float().mean())


def _cosine_distance(ref: torch.Tensor, got: torch.Tensor) -> float:
    return float((1.0 - F.cosine_similarity(ref, got, dim=-1)).mean())


def xi_grid(ev: Evaluator, tv1: TaskVector, tv2: TaskVector, task1: str | None = None, task2: str | None = None,
            alphas: Sequence[float] = GRID, alphas2: Sequence[float] | None = None, split: str = "test",
            method: str = "task_arithmetic", progress: Callable[[int, int], None] | None = None) -> dict:
    """ξ over the grid ``alphas`` × ``alphas2`` (rows: α1 for ``tv1``/``task1``; columns: α2), both variants.

    Returns ``{"prediction": [[...]], "representation": [[...]], "alpha1", "alpha2", "tasks", "mode", "split",
    "mean": {variant: mean over the grid}}``; ``prediction[i][j]`` is ξ(alpha1[i], alpha2[j]) in [0, 2].
    The two variants come from the same forward passes, so the second costs nothing.  ``task1``/``task2``: the tasks
    whose data each vector is scored on, by default the vectors' own (``tv.task``).
    """
    task1, task2 = task1 or tv1.task, task2 or tv2.task
    unknown = [t for t in (task1, task2) if t not in ev.tasks]
    if unknown:
        raise ValueError(f"no evaluation data for task(s) {unknown}; this evaluator has {', '.join(ev.tasks)}")
    if task1 == task2:
        raise ValueError("ξ needs two different tasks")
    a1s, a2s = [float(a) for a in alphas], [float(a) for a in (alphas if alphas2 is None else alphas2)]
    if not a1s or not a2s:
        raise ValueError("ξ needs at least one coefficient per task (alphas and alphas2 must not be empty)")
    pair = [task1, task2]
    sl = ev.eval_set(split).slices[task1]
    n1 = sl.stop - sl.start
    h1, h2 = ev.heads[task1], ev.heads[task2]
    # single-task references: task t's data under θ0 + α_t τ_t
    ref1 = [ev.merged_features([tv1], [a], split, [task1], method) for a in a1s]
    ref2 = [ev.merged_features([tv2], [a], split, [task2], method) for a in a2s]
    pred = np.zeros((len(a1s), len(a2s)))
    rep = np.zeros_like(pred)
    total, done = len(a1s) * len(a2s), 0
    for i, a1 in enumerate(a1s):
        for j, a2 in enumerate(a2s):
            f = ev.merged_features([tv1, tv2], [a1, a2], split, pair, method)
            pred[i, j] = _disagreement(h1, ref1[i], f[:n1]) + _disagreement(h2, ref2[j], f[n1:])
            rep[i, j] = _cosine_distance(ref1[i], f[:n1]) + _cosine_distance(ref2[j], f[n1:])
            done += 1
            if progress:
                progress(done, total)
    return {"prediction": pred.tolist(), "representation": rep.tolist(), "alpha1": a1s, "alpha2": a2s,
            "tasks": pair, "mode": tv1.mode, "split": split, "images_per_task": [n1, len(f) - n1],
            "mean": {"prediction": float(pred.mean()), "representation": float(rep.mean())}}
