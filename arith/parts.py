"""Where a mode trains against what it learns there: modes and mode views side by side (``python -m arith table
--views``).

Attention-only fine-tuning changes only the attention weights.  Whether its task vectors interfere less because of
*where* they live or because of *what* training there learns is a question the bundle's own vectors can answer: cut
full fine-tuning's τ_t to its attention weights (the view ``full@attn``, :class:`arith.modes.ModeView`) and score
it the way the build scores a mode.  A cut vector is a vector of its source mode with fewer tensors, so every
protocol applies unchanged; its single-task accuracy (θ0 + cut τ_t on task t) is its own normaliser (method.md §3:
normalized accuracy divides by the same mode's single-task accuracy).
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .modes import get_mode, parse_view

if TYPE_CHECKING:
    from .explore import Explorer

ProgressFactory = Callable[[str], Callable[[int, int], None] | None]


def xi_pairs(ex: Explorer) -> list[tuple[str, str]]:
    """The task pairs the build precomputes ξ grids for (its plan's ``xi_pairs`` first pairs of the bundle's tasks)."""
    n = int(ex.index.manifest.get("plan", {}).get("xi_pairs", 6))
    return list(itertools.combinations(ex.tasks, 2))[:n]


def _kept(ex: Explorer, name: str) -> float | None:
    """A view's share of its source vectors' squared norm, averaged over tasks (None for a plain mode)."""
    view = parse_view(name)
    if view is None:
        return None
    whole, cut = ex.vectors(view.source.name), ex.vectors(name)
    return statistics.fmean(cut[t].norm() ** 2 / whole[t].norm() ** 2 for t in cut if whole[t].norm() > 0)


def part_rows(ex: Explorer, names: Sequence[str], bar: ProgressFactory | None = None) -> list[dict]:
    """One row per mode or view in ``names``, scored as the build scores a mode (test splits; α chosen on
    validation): the share of ‖τ‖² a view keeps, single-task accuracy, task addition (α, absolute, gain over
    zero-shot, normalized), mean ξ over the build's pairs and mean kernel agreement (None for a linearized mode,
    whose vectors are their own linearization).  Plain modes come from the bundle's precomputed results where it
    has them; views are computed (about 40 s each for the embedded default on 2 CPU cores)."""
    bar = bar or (lambda _label: None)
    zs = statistics.fmean(ex.zeroshot("test").values())
    pairs = xi_pairs(ex)
    rows = []
    for name in names:
        view = parse_view(name)
        linearized = (view.source if view else get_mode(name)).linearized
        add = ex.addition(name, progress=bar(f"addition {name}"))
        ft = add["finetuned"]["test"]
        xi = [ex.xi(name, a, b, progress=bar(f"ξ {name} {a}×{b}"))["mean"]["prediction"] for a, b in pairs]
        agree = None if linearized else statistics.fmean(
            ex.kernel(name, t, progress=bar(f"kernel {name} {t}"))["at_1"]["agreement"] for t in add["tasks"])
        rows.append({"mode": name, "‖τ‖² kept": _kept(ex, name),
                     "single-task": statistics.fmean(ft[t] for t in add["tasks"]),
                     "addition α": add["alpha"], "addition abs": add["absolute"],
                     "over zero-shot": add["absolute"] - zs, "addition norm": add["normalized"],
                     "mean ξ": statistics.fmean(xi) if xi else None, "kernel agreement": agree})
    return rows


def length_rows(ex: Explorer, names: Sequence[str], lengths: Sequence[float],
                bar: ProgressFactory | None = None) -> list[dict]:
    """Mean ξ over the build's pairs per mode or view in ``names``, as built and with every vector taken at each
    of ``lengths`` (‖τ_t‖ = length · ‖θ0‖, :meth:`Explorer.xi`): ξ grows with how far from θ0 the added vectors
    reach, so modes whose vectors differ in length are compared at one length.  ``‖τ‖/‖θ0‖`` is the mean length
    the mode's vectors have (the grid's a = 1 under ``length`` is that length for every vector)."""
    bar = bar or (lambda _label: None)
    columns = {f"mean ξ at {float(length):g}": float(length) for length in lengths}
    if len(columns) < len(lengths):
        raise ValueError(f"lengths {list(lengths)} name the same column twice: give distinct lengths")
    pairs, theta = xi_pairs(ex), ex.theta0_norm
    rows = []
    for name in names:
        vs = ex.vectors(name)
        row = {"mode": name, "‖τ‖/‖θ0‖": statistics.fmean(tv.norm() / theta for tv in vs.values()),
               "mean ξ": statistics.fmean(ex.xi(name, a, b, progress=bar(f"ξ {name} {a}×{b}"))["mean"]["prediction"]
                                          for a, b in pairs)}
        for column, length in columns.items():
            row[column] = statistics.fmean(
                ex.xi(name, a, b, length=length, progress=bar(f"ξ {name} {a}×{b} at {length:g}"))["mean"]["prediction"]
                for a, b in pairs)
        rows.append(row)
    return rows
