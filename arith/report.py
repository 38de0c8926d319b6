"""The paper-style results table of a bundle (``python -m arith table``), from its precomputed results only: a
loaded :class:`~arith.bundle.Bundle` or just its :class:`~arith.index.BundleIndex` (no tensors, no torch)."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .modes import is_linearized, source_of

if TYPE_CHECKING:
    from .bundle import Bundle
    from .index import BundleIndex


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def results_rows(bundle: Bundle | BundleIndex) -> list[dict]:
    """One row per mode: fine-tuning lr, zero-shot and single-task accuracy, task addition (α, absolute, normalized), negation
    (target, control), mean ξ over the precomputed pairs, kernel agreement, and training cost (time per step;
    memory: ``state MB`` exact, ``peak MB`` measured, see arith/cost.py)."""
    r = bundle.results
    zs = r.get("accuracy", {}).get("zeroshot", {}).get("test", {})
    rows, agreement = [], kernel_agreement(r.get("kernel"))
    for mode in bundle.modes:
        ft = r.get("accuracy", {}).get("finetuned", {}).get(mode, {}).get("test", {})
        add = r.get("addition", {}).get(mode, {})
        neg = r.get("negation", {}).get(mode, {})
        xi = r.get("disentanglement", {}).get(mode, {})
        cost = r.get("cost", {}).get(mode) or {}
        train = r.get("training", {}).get(mode, {})
        cfg = bundle.finetune_config(source_of(mode))  # a view (full@attn) was trained as its source mode
        rows.append({
            "mode": mode,
            "lr": cfg.lr if cfg else None,
            "zero-shot": _mean(zs.values()),
            "single-task": _mean(ft.values()),
            "addition α": add.get("alpha"),
            "addition abs": add.get("absolute"),
            "addition norm": add.get("normalized"),
            "negation target": _mean(n["target"] for n in neg.values()),
            "negation control": _mean(n["control"] for n in neg.values()),
            "mean ξ": _mean(g["mean"]["prediction"] for g in xi.values()),
            "kernel agreement": agreement.get(mode, (None,))[0] if not is_linearized(mode) else None,
            "s/step": cost.get("seconds_per_step") or _mean(t.get("seconds_per_step") for t in train.values()),
            "state MB": cost.get("state_mb"),
            "peak MB": cost.get("peak_mb"),
        })
    return rows


def kernel_agreement(per_mode: dict | None) -> dict[str, tuple[float, int]]:
    """Mean agreement at s = 1 per mode over the tasks whose stored kernel diagnostics have it: {mode: (mean, tasks)}.
    ``per_mode``: a bundle's ``kernel`` result (mode -> task -> report); malformed entries are skipped, so a page can
    show it beside its own numbers."""
    out = {}
    for mode, per_task in (per_mode.items() if isinstance(per_mode, dict) else ()):
        vals = [k["at_1"]["agreement"] for k in (per_task.values() if isinstance(per_task, dict) else ())
                if isinstance(k, dict) and isinstance(k.get("at_1"), dict)
                and isinstance(k["at_1"].get("agreement"), (int, float))]
        if vals:
            out[mode] = (statistics.fmean(vals), len(vals))
    return out


VIEW_PCT = ("‖τ‖² kept", "single-task", "addition abs", "over zero-shot", "addition norm", "kernel agreement")
PCT = ("zero-shot", "single-task", "addition abs", "addition norm", "negation target", "negation control",
       "kernel agreement")


def markdown(rows: list[dict], pct: tuple[str, ...] | None = None) -> str:
    """Render rows as a GitHub markdown table; ``pct`` columns (default: the accuracies) are shown in %."""
    cols = list(rows[0]) if rows else []
    pct = PCT if pct is None else pct

    def fmt(col, v):
        if v is None:
            return "—"
        if col in pct:
            text = f"{100 * v:.1f}"
            return "0.0" if text == "-0.0" else text
        if col == "lr":
            return f"{v:g}"
        if col == "addition α":
            return f"{v:.2f}"
        if col in ("mean ξ", "‖τ‖/‖θ0‖") or col.startswith("mean ξ at "):
            return f"{v:.3f}"
        if col == "s/step":
            return f"{v:.4f}"
        if col in ("state MB", "peak MB"):
            return f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(c, r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def per_task_rows(bundle: Bundle | BundleIndex) -> list[dict]:
    """Per task: zero-shot and single-task accuracy per mode, and accuracy after task addition per mode."""
    r = bundle.results
    zs = r.get("accuracy", {}).get("zeroshot", {}).get("test", {})
    rows = []
    for t in bundle.task_names:
        row = {"task": t, "zero-shot": zs.get(t)}
        for mode in bundle.modes:
            row[f"{mode} single"] = r.get("accuracy", {}).get("finetuned", {}).get(mode, {}).get("test", {}).get(t)
            row[f"{mode} added"] = r.get("addition", {}).get(mode, {}).get("accuracy", {}).get(t)
        rows.append(row)
    return rows


COST_ALPHAS = (0.2, 0.3, 0.4, 0.5, 1.0)


def interference_curve(addition: Mapping, alone: Mapping, split: str = "test") -> list[dict]:
    """What the other vectors cost at every α of both curves (interference as one number per α, not as the gap
    between two curves): per α, ``absolute`` and ``normalized`` = each task alone − merged, as fractions.
    :func:`arith.protocols.interference`'s ``cost_of_others`` is the ``absolute`` one at the chosen α."""
    if list(addition["tasks"]) != list(alone["tasks"]):
        raise ValueError(f"interference: addition over {addition['tasks']} but alone curve over {alone['tasks']}")
    rows = {round(r["alpha"], 4): r[split] for r in alone["curve"] if split in r}
    return [{"alpha": float(r["alpha"]), **{k: rows[round(r["alpha"], 4)][k] - r[split][k]
                                             for k in ("absolute", "normalized")}}
            for r in addition["curve"] if round(r["alpha"], 4) in rows and split in r]


def interference_rows(bundle: Bundle | BundleIndex, alone: dict[str, dict],
                      additions: dict[str, dict]) -> tuple[list[dict], list[dict]]:
    """Where task addition loses its points, per mode (``alone``: mode -> :meth:`arith.explore.Explorer.alone`;
    ``additions``: mode -> the task addition it was measured against, :meth:`arith.explore.Explorer.addition`).

    First table: at the validation-chosen α, single-task, each task alone at α, merged at α and the two costs
    (scaling every τ to α; adding the other vectors).  Second: the other vectors' cost at the α of ``COST_ALPHAS``,
    from the alone and addition curves (None where ``additions`` lacks the mode or the α).  Test split, absolute
    accuracy, as fractions."""
    at_alpha, by_alpha = [], []
    for mode, a in alone.items():
        i, cfg = a["interference"], bundle.finetune_config(source_of(mode))
        at_alpha.append({"mode": mode, "lr": cfg.lr if cfg else None, "addition α": i["alpha"],
                         "single-task": i["single_absolute"], "each task alone at α": i["alone_absolute"],
                         "merged at α": i["merged_absolute"], "cost of scaling to α": i["cost_of_alpha"],
                         "cost of the other vectors": i["cost_of_others"]})
        add = additions.get(mode)
        along = {round(r["alpha"], 4): r["absolute"] for r in interference_curve(add, a)} if add else {}
        by_alpha.append({"mode": mode, **{f"α = {x:g}": along.get(round(x, 4)) for x in COST_ALPHAS}})
    return at_alpha, by_alpha


def interference_per_task(alone: dict[str, dict]) -> list[dict]:
    """One row per task (every mode's tasks, in order): each task alone and merged at each mode's chosen α."""
    rows = []
    for t in dict.fromkeys(t for a in alone.values() for t in a["tasks"]):
        row = {"task": t}
        for mode, a in alone.items():
            v = a["interference"]["per_task"].get(t)
            if v is not None:
                row[f"{mode} alone"], row[f"{mode} merged"] = v["alone"], v["merged"]
        rows.append(row)
    return rows


PAIR_LABEL = "task hurt / τ added"


def pair_matrix_rows(pairs: dict) -> list[dict]:
    """:func:`arith.protocols.pair_costs` as rows: one per task hurt, one column per vector added (its cost to that
    task, as a fraction; None on the diagonal) and the row's sum; a last row ``Σ (inflicted)`` sums each column."""
    tasks, cost = pairs["tasks"], pairs["cost"]
    rows = [{PAIR_LABEL: i, **{j: (None if i == j else cost[r][c]) for c, j in enumerate(tasks)},
             "Σ (hurt)": pairs["hurt"][i]} for r, i in enumerate(tasks)]
    rows.append({PAIR_LABEL: "Σ (inflicted)", **pairs["inflicted"], "Σ (hurt)": None})
    return rows


def pair_summary_rows(pairs: dict[str, dict], alone: dict[str, dict] | None = None) -> list[dict]:
    """Per mode (``pairs``: mode -> :meth:`arith.explore.Explorer.pairs`): what the other vectors would cost a task if
    their one-at-a-time costs added up, beside the merged model's actual cost of the other vectors
    when ``alone`` has the mode, and the costliest pair, vector and most-hurt task (fractions; test split)."""
    rows = []
    for mode, p in pairs.items():
        tasks, cost = p["tasks"], p["cost"]
        r, c = max(((r, c) for r in range(len(tasks)) for c in range(len(tasks)) if r != c), key=lambda rc: cost[rc[0]][rc[1]])
        worst_j, worst_i = max(tasks, key=p["inflicted"].get), max(tasks, key=p["hurt"].get)  # ties: the first task
        actual = (alone or {}).get(mode, {}).get("interference", {}).get("cost_of_others")
        rows.append({"mode": mode, "addition α": p["alpha"], "cost if pairs added up": p["additive_cost"],
                     "cost of the other vectors": actual, "costliest pair": f"{tasks[c]} → {tasks[r]}",
                     "its cost": cost[r][c], "costliest vector": worst_j, "inflicted": p["inflicted"][worst_j],
                     "most hurt task": worst_i, "hurt": p["hurt"][worst_i]})
    return rows


def summary_row(report: dict) -> dict:
    """One flat row per (task, mode) for tables: agreement and errors at s = 1 and the restricted errors."""
    row = {"task": report["task"], "mode": report["mode"], **report["at_1"]}
    for name, r in report["restricted"].items():
        if r is not None:
            at1 = min(r["path"], key=lambda p: abs(p["s"] - 1.0))
            row[f"{name}_agreement"] = at1["agreement"]
            row[f"{name}_rel_error_logits"] = at1["rel_error_logits"]
    return row
