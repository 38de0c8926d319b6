"""The papers' task-arithmetic protocols (method.md §3): task addition and task negation.

* Addition: θ0 + α Σ_t τ_t with one shared α ∈ {0, 0.05, …, 1} (a merge method's record may extend the grid: TIES
  and DARE-TIES average rather than add, and search up to 2), chosen to maximise mean *normalized* accuracy on
  the validation splits (normalisers: each task's fine-tuned accuracy in the same mode, on validation), then
  reported on test (absolute and normalized with test normalisers).
* Each task alone at the shared α: θ0 + α τ_t on task t, the addition sweep without the other vectors. At one α the
  gap between the two (alone − merged) is what the other task vectors cost: the interference that weight
  disentanglement (method.md §4) is about; what remains between "alone at α" and single-task accuracy is the price of
  the small α that interference forces.
* Pairs at the shared α: θ0 + α τ_i + α τ_j on task i, against task i alone: which vector costs which task.
* Negation: θ0 − λ τ_target, λ chosen on validation to minimise target accuracy subject to the control tasks'
  mean accuracy staying ≥ 0.95 × their zero-shot accuracy; reported on test.
* Per-task coefficients (not the papers' protocol, which shares one α; a common relaxation of it): θ0 + Σ_t λ_t τ_t
  with each λ_t chosen on validation by coordinate ascent from the shared α, reported on test like addition.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .evaluate import Evaluator
from .merge import get_merge_method
from .metrics import summarize
from .taskvec import TaskVector


def alpha_grid(method: str = "task_arithmetic", step: float = 0.05) -> tuple[float, ...]:
    """{0, step, 2·step, …} up to ``method``'s record's alpha_max: task addition's α grid (step 0.05) and per-task
    λ's (0.1).  Each value is i·step rounded to 10 decimals (0.15, not 0.15000000000000002)."""
    step = float(step)
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"an α grid's step must be a positive number, not {step!r}")
    top = get_merge_method(method).alpha_max
    return tuple(round(i * step, 10) for i in range(int(math.floor(top / step + 1e-9)) + 1))


def _check_alphas(alphas: Sequence[float], what: str, negative: bool = True) -> list[float]:
    """A coefficient grid: not empty, finite, and (unless ``negative``) no value below 0."""
    alphas = [float(a) for a in alphas]
    if not alphas:
        raise ValueError(f"{what} needs at least one coefficient to try")
    bad = [a for a in alphas if not math.isfinite(a) or (a < 0 and not negative)]
    if bad:
        raise ValueError(f"{what}: coefficient {bad[0]!r} is not a {'finite' if negative else 'finite, non-negative'} "
                         "number")
    return alphas


ALPHAS = alpha_grid()  # task arithmetic's: {0, 0.05, …, 1}
TUNE_GRID = alpha_grid(step=0.1)  # {0, 0.1, …, 1}
CONTROL_RATIO = 0.95

Progress = Callable[[int, int], None]


def _mean(d: Mapping[str, float], keys: Sequence[str]) -> float:
    return float(np.mean([d[k] for k in keys]))


def _normalisers(ev: Evaluator, vectors: Mapping[str, TaskVector], splits: Sequence[str],
                 finetuned: Mapping[str, Mapping[str, float]] | None) -> dict[str, dict[str, float]]:
    """Per split, each task's single-task accuracy (method.md §4's normaliser): the ones passed in, else evaluated."""
    return {s: dict(finetuned[s]) if finetuned and s in finetuned else ev.finetuned(vectors, s) for s in splits}


def task_addition(ev: Evaluator, vectors: Mapping[str, TaskVector], alphas: Sequence[float] | None = None,
                  method: str = "task_arithmetic", progress: Progress | None = None,
                  finetuned: Mapping[str, Mapping[str, float]] | None = None) -> dict:
    """Shared-α task addition over ``vectors`` (task -> τ_t of one mode), α over ``alphas`` (default
    :func:`alpha_grid` of ``method``: {0, 0.05, …, 1} for task arithmetic).

    Returns ``alpha`` (chosen on validation), ``absolute`` and ``normalized`` (test), ``accuracy`` (test, per
    task), the single-task ``finetuned`` accuracies used as normalisers, and the whole sweep ``curve`` (per α:
    validation and test absolute/normalized) for plotting.  ``finetuned`` may pass precomputed normalisers.
    """
    tasks = list(vectors)
    if not tasks:
        raise ValueError("task addition needs at least one task vector")
    tvs = [vectors[t] for t in tasks]
    alphas = alpha_grid(method) if alphas is None else _check_alphas(alphas, "task addition")
    ft = _normalisers(ev, vectors, ("val", "test"), finetuned)
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


def alone_curve(ev: Evaluator, vectors: Mapping[str, TaskVector], alphas: Sequence[float] = ALPHAS,
                progress: Progress | None = None, finetuned: Mapping[str, Mapping[str, float]] | None = None,
                splits: Sequence[str] = ("val", "test")) -> dict:
    """Each task alone at every α of the addition sweep: θ0 + α τ_t evaluated on task t, on ``splits``.

    ``curve`` has the rows of :func:`task_addition`'s (per α and split: ``absolute``, ``normalized``, ``accuracy``),
    with the same normalisers, so the two curves subtract row by row.  α = 0 is the zero-shot model and α = 1 the
    single-task accuracy, exactly.
    """
    tasks = list(vectors)
    ft = _normalisers(ev, vectors, splits, finetuned)
    curve = []
    for i, a in enumerate(alphas):
        row = {"alpha": float(a)}
        for split in splits:
            acc = {t: ev.evaluate([vectors[t]], [a], split, [t])[t] for t in tasks}
            s = summarize(acc, ft[split])
            row[split] = {"absolute": s["absolute"], "normalized": s["normalized"], "accuracy": s["accuracy"]}
        curve.append(row)
        if progress:
            progress(i + 1, len(alphas))
    return {"tasks": tasks, "finetuned": ft, "curve": curve}


def interference(addition: Mapping, alone: Mapping, split: str = "test") -> dict:
    """At the addition's chosen α: each task alone vs merged (absolute and normalized) and the gap between them.

    ``addition`` is :func:`task_addition`'s result, ``alone`` :func:`alone_curve`'s over the same tasks and α grid.
    ``cost_of_others`` = alone − merged (what adding the other vectors costs, in accuracy points as fractions);
    ``cost_of_alpha`` = single-task − alone (what scaling every τ to α costs before any other vector is added).
    ``same_zero_shot``: whether the two curves agree at α = 0 (both are θ0 there); False means they were computed
    on machines whose forward passes differ (e.g. a bundle's precomputed sweep against a live alone curve), so the
    gaps carry that difference too.
    """
    if list(addition["tasks"]) != list(alone["tasks"]):
        raise ValueError(f"interference: addition over {addition['tasks']} but alone curve over {alone['tasks']}")
    if split not in alone["finetuned"]:
        raise ValueError(f"interference: the alone curve has no {split!r} split (it has {sorted(alone['finetuned'])})")
    alpha = float(addition["alpha"])
    rows = {round(r["alpha"], 4): r for r in alone["curve"]}
    merged = {round(r["alpha"], 4): r for r in addition["curve"]}
    if round(alpha, 4) not in rows or round(alpha, 4) not in merged:
        raise ValueError(f"interference: α = {alpha} is not on the alone curve's grid")
    a, m = rows[round(alpha, 4)][split], merged[round(alpha, 4)][split]
    single = _mean(alone["finetuned"][split], alone["tasks"])
    return {"alpha": alpha, "split": split, "single_absolute": single,
            "alone_absolute": a["absolute"], "merged_absolute": m["absolute"],
            "alone_normalized": a["normalized"], "merged_normalized": m["normalized"],
            "cost_of_others": a["absolute"] - m["absolute"], "cost_of_alpha": single - a["absolute"],
            "per_task": {t: {"alone": a["accuracy"][t], "merged": m["accuracy"][t]} for t in alone["tasks"]},
            "same_zero_shot": 0.0 in rows and 0.0 in merged
            and rows[0.0][split]["accuracy"] == merged[0.0][split]["accuracy"]}


def pair_costs(ev: Evaluator, vectors: Mapping[str, TaskVector], alpha: float, split: str = "test",
               progress: Progress | None = None) -> dict:
    """Which vector costs which task, at one shared α: for every ordered pair (i, j), task i's accuracy with θ0 +
    α τ_i + α τ_j against θ0 + α τ_i alone (the alone curve's row at α).

    ``cost[i][j]`` = alone_i − pair_ij (fractions; positive: adding τ_j hurts task i; the diagonal is 0), rows and
    columns in ``tasks`` order.  ``hurt`` = each row's sum (what the other vectors, one at a time, cost task i) and
    ``inflicted`` = each column's sum (what τ_j costs the other tasks, one at a time).  The rows' mean over tasks
    (``additive_cost``) is what the other vectors would cost task addition at α if their costs simply added up;
    set beside :func:`interference`'s ``cost_of_others`` it shows how far they do.
    """
    tasks = list(vectors)
    if len(tasks) < 2:
        raise ValueError(f"pair costs need at least two task vectors (got {tasks})")
    a = float(alpha)
    alone = {t: ev.evaluate([vectors[t]], [a], split, [t])[t] for t in tasks}
    n, done = len(tasks) * (len(tasks) - 1), 0
    pair = [[alone[i]] * len(tasks) for i in tasks]
    for r, i in enumerate(tasks):
        for c, j in enumerate(tasks):
            if i == j:
                continue
            pair[r][c] = ev.evaluate([vectors[i], vectors[j]], [a, a], split, [i])[i]
            done += 1
            if progress:
                progress(done, n)
    cost = [[alone[i] - pair[r][c] for c in range(len(tasks))] for r, i in enumerate(tasks)]
    hurt = {i: float(sum(cost[r])) for r, i in enumerate(tasks)}
    inflicted = {j: float(sum(cost[r][c] for r in range(len(tasks)))) for c, j in enumerate(tasks)}
    return {"tasks": tasks, "alpha": a, "split": split, "alone": alone, "pair": pair, "cost": cost,
            "hurt": hurt, "inflicted": inflicted, "additive_cost": _mean(hurt, tasks)}


def task_negation(ev: Evaluator, vector: TaskVector, target: str, controls: Sequence[str],
                  alphas: Sequence[float] = ALPHAS, progress: Progress | None = None) -> dict:
    """Negate ``vector`` (the target task's τ): θ0 − λ τ with λ chosen on validation (method.md §3).

    Returns ``alpha``, test ``target`` and ``control`` accuracy at that λ, their zero-shot values, the validation
    ``curve`` (per λ: ``val`` target and control) and whether any λ > 0 met the control constraint
    (``constraint_met``).  Test accuracy is evaluated at the chosen λ only.
    """
    controls = [c for c in ([controls] if isinstance(controls, str) else controls) if c != target]  # a name, not letters
    if not controls:
        raise ValueError("task negation needs at least one control task other than the target")
    # θ0 − λ τ: a λ below 0 would add τ, not negate it
    alphas = _check_alphas(alphas, "task negation", negative=False)
    tasks = [target, *controls]
    # zero-shot (the floor, and the reference the result reports) in the curve's own arithmetic: f(x; θ0) is fp32,
    # while under an evaluator's autocast the non-linear θ0 − λτ runs in reduced precision
    reduced = ev.autocast is not None and not vector.linearized
    zs = {s: ev.evaluate([vector], [0.0], s, tasks) if reduced else ev.zeroshot(s, tasks) for s in ("val", "test")}
    floor = CONTROL_RATIO * _mean(zs["val"], controls)
    curve = []
    for i, a in enumerate(alphas):
        acc = ev.evaluate([vector], [-a], "val", tasks)
        curve.append({"alpha": float(a), "val": {"target": acc[target], "control": _mean(acc, controls)}})
        if progress:
            progress(i + 1, len(alphas) + 1)
    ok = [r for r in curve if r["val"]["control"] >= floor]
    if ok:
        best = min(ok, key=lambda r: (r["val"]["target"], r["alpha"]))
    else:  # no λ keeps the controls: negate nothing (λ = 0 is θ0, whether or not the grid holds it)
        best = {"alpha": 0.0}
    test = ev.evaluate([vector], [-best["alpha"]], "test", tasks)
    if progress:
        progress(len(alphas) + 1, len(alphas) + 1)
    return {"target_task": target, "controls": controls, "alpha": best["alpha"],
            "target": test[target], "control": _mean(test, controls),
            "zeroshot_target": zs["test"][target], "zeroshot_control": _mean(zs["test"], controls),
            "constraint_met": any(r["alpha"] > 0 for r in ok), "curve": curve}


def tune_coefficients(ev: Evaluator, vectors: Mapping[str, TaskVector], start: float,
                      grid: Sequence[float] | None = None, rounds: int = 3, method: str = "task_arithmetic",
                      progress: Progress | None = None,
                      finetuned: Mapping[str, Mapping[str, float]] | None = None) -> dict:
    """One λ per task, chosen on validation: coordinate ascent on mean normalized validation accuracy.

    Every λ_t starts at ``start`` (the shared α of task addition).  A round visits the tasks in the order of
    ``vectors`` (the result can depend on it: :meth:`arith.explore.Explorer.tune` passes the bundle's order) and
    moves λ_t to the value of ``grid`` (default :func:`alpha_grid` of ``method`` at step 0.1) ∪ {``start``} that
    scores best with the other coefficients held; only a strict improvement moves it, so a tie keeps the current
    value, then the smaller one.  It stops after a round that moves nothing, or after ``rounds``.  The score never
    falls.  The normalisers are the same as in :func:`task_addition`.

    Returns ``coefficients`` (task -> λ), the validation score at the start and at the end (``start_val_normalized``,
    ``val_normalized``), ``converged``, ``rounds`` run, ``evaluations``, the ``moves`` made (one per task and round
    whose λ changed: ``round``, ``task``, ``coef``, ``val_normalized``), and the test ``absolute``, ``normalized`` and
    per-task ``accuracy`` at the chosen coefficients.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    tasks = list(vectors)
    tvs = [vectors[t] for t in tasks]
    ft = _normalisers(ev, vectors, ("val", "test"), finetuned)
    grid = sorted({round(float(g), 6) for g in (alpha_grid(method, 0.1) if grid is None else grid)} | {float(start)})

    def score(coefs: Mapping[str, float], split: str = "val") -> dict:
        return summarize(ev.evaluate(tvs, [coefs[t] for t in tasks], split, tasks, method), ft[split])

    coefs = {t: float(start) for t in tasks}
    best = start_score = score(coefs)["normalized"]
    moves, evaluations, done, total = [], 1, 0, rounds * len(tasks) * len(grid)
    converged, ran = False, 0
    for r in range(rounds):
        ran += 1
        moved = False
        for t in tasks:
            was = coefs[t]
            for g in grid:
                done += 1
                # λ_t's value at the start of this pass scored `best` then (≤ best now): a move never returns to it
                if g != coefs[t] and g != was:
                    trial = {**coefs, t: g}
                    s = score(trial)["normalized"]
                    evaluations += 1
                    if s > best:
                        best, coefs = s, trial
                if progress:
                    progress(done, total)
            if coefs[t] != was:
                moved = True
                moves.append({"round": r + 1, "task": t, "coef": coefs[t], "val_normalized": best})
        if not moved:
            converged = True
            break
    if progress and done < total:
        progress(total, total)
    test = score(coefs, "test")
    return {"method": method, "tasks": tasks, "start": float(start), "grid": grid, "coefficients": coefs,
            "start_val_normalized": start_score, "val_normalized": best, "converged": converged, "rounds": ran,
            "evaluations": evaluations, "moves": moves, "absolute": test["absolute"],
            "normalized": test["normalized"], "accuracy": test["accuracy"], "finetuned": ft}
