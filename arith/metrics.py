"""Small tensor-free pieces the app's opening view needs before torch is imported: the accuracy summary of
method.md §4 (absolute and normalized accuracy) and the coefficient grid of the ξ heatmaps (method.md §5)."""

from __future__ import annotations

from collections.abc import Mapping

# ξ grid: 15 points over [-2, 2], the values of numpy.linspace(-2, 2, 15) (the same products and sums, last point
# exact), written out so that importing it needs no numpy
GRID = tuple([-2.0 + i * (4.0 / 14) for i in range(14)] + [2.0])


def summarize(acc: Mapping[str, float], normalizers: Mapping[str, float] | None = None) -> dict:
    """``absolute``: mean accuracy; ``normalized``: mean of acc_t / acc_t(fine-tuned alone, same mode)."""
    out = {"accuracy": dict(acc), "absolute": sum(acc.values()) / max(1, len(acc))}
    if normalizers is not None:
        ratios = [acc[t] / normalizers[t] if normalizers[t] > 0 else 0.0 for t in acc]
        out["normalized"] = sum(ratios) / max(1, len(ratios))
    return out
