"""The papers' task-arithmetic protocols (method.md §3): task addition and task negation.

* Addition: θ0 + α Σ_t τ_t with one shared α ∈ {0, 0.05, …, 1}, chosen to maximise mean *normalized* accuracy on
  the validation splits (normalisers: each task's fine-tuned accuracy in the same mode, on validation), then
  reported on test (absolute and normalized with test normalisers).
* Negation: θ0 − λ τ_target, λ chosen on validation to minimise target accuracy subject to the control tasks'
  mean accuracy staying ≥ 0.95 × their zero-shot accuracy; reported on test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .evaluate import Evaluator
from .metrics import summarize
from .taskvec import TaskVector

ALPHAS = tuple(round(a, 2) for a in np.arange(0.0, 1.0001, 0.05))
CONTROL_RATIO = 0.95

Progress = Callable[[int, int], None]


def _mean(d: Mapping[str, float], keys: Sequence[str]) -> float:
    return float(np.mean([d[k] for k in keys]))


def task_addition(ev: Evaluator, vectors: Mapping[str, TaskVector], alphas: Sequence[float] = ALPHAS,
                  method: str = "task_arithmetic", progress: Progress | None = None,
                  finetuned: Mapping[str, Mapping[str, float]] | None = None) -> dict:
    """Shared-α task addition over ``vectors`` (task -> τ_t of one mode).

    Returns ``alpha`` (chosen on validation), ``absolute`` and ``normalized`` (test), ``accuracy`` (test, per
    task), the single-task ``finetuned`` accuracies used as normalisers, and the whole sweep ``curve`` (per α:
    validation and test absolute/normalized) for plotting.  ``finetuned`` may pass precomputed normalisers.
    """
    tasks = list(vectors)
    tvs = [vectors[t] for t in tasks]
    ft = {s: dict(finetuned[s]) if finetuned and s in finetuned else ev.finetuned(vectors, s) for s in ("val", "test")}
    curve = []
    for i, a in enumerate(alphas):
        row = {"alpha": float(a)}
        for split in ("val", "test"):
            s = summarize(ev.evaluate(tvs, [a] * len(tvs), split, tasks, method), ft[split])
            row[split] = {"absolute": s["absolute"], "normalized": s["normalized"], "accuracy": s["accuracy"]}
        curve.append(row)
        if progress:
            progress(i + 1, len(alphas))
    best = max(curve, key=lambda r: (r["val"]["normalized"], -r["alpha"]))  # ties: the smaller α
    return {"method": method, "tasks": tasks, "alpha": best["alpha"], "absolute": best["test"]["absolute"],
            "normalized": best["test"]["normalized"], "accuracy": best["test"]["accuracy"],
            "val_normalized": best["val"]["normalized"], "finetuned": ft, "curve": curve}


def task_negation(ev: Evaluator, vector: TaskVector, target: str, controls: Sequence[str],
                  alphas: Sequence[float] = ALPHAS, progress: Progress | None = None) -> dict:
    """Negate ``vector`` (the target task's τ): θ0 − λ τ with λ chosen on validation (method.md §3).

    Returns ``alpha``, test ``target`` and ``control`` accuracy at that λ, their zero-shot values, the validation
    ``curve`` (per λ: ``val`` target and control) and whether any λ > 0 met the control constraint
    (``constraint_met``).  Test accuracy is evaluated at the chosen λ only.
    """
    controls = [c for c in controls if c != target]
    if not controls:
        raise ValueError("task negation needs at least one control task other than the target")
    tasks = [target, *controls]
    zs = {s: ev.zeroshot(s, tasks) for s in ("val", "test")}
    floor = CONTROL_RATIO * _mean(zs["val"], controls)
    curve = []
    for i, a in enumerate(alphas):
        acc = ev.evaluate([vector], [-a], "val", tasks)
        curve.append({"alpha": float(a), "val": {"target": acc[target], "control": _mean(acc, controls)}})
        if progress:
            progress(i + 1, len(alphas) + 1)
    ok = [r for r in curve if r["val"]["control"] >= floor]
    best = min(ok, key=lambda r: (r["val"]["target"], r["alpha"])) if ok else curve[0]
    test = ev.evaluate([vector], [-best["alpha"]], "test", tasks)
    if progress:
        progress(len(alphas) + 1, len(alphas) + 1)
    return {"target_task": target, "controls": controls, "alpha": best["alpha"],
            "target": test[target], "control": _mean(test, controls),
            "zeroshot_target": zs["test"][target], "zeroshot_control": _mean(zs["test"], controls),
            "constraint_met": any(r["alpha"] > 0 for r in ok), "curve": curve}
