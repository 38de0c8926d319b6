"""Small tensor-free pieces the app's opening view needs before torch is imported: the accuracy summary of
method.md §3 (absolute and normalized accuracy), the tasks a merge leaves unedited, the coefficient grid of the ξ
heatmaps (method.md §4) and the check of an evaluation subset's size."""

from __future__ import annotations

from collections.abc import Mapping

# ξ grid: 15 points over [-2, 2], the values of numpy.linspace(-2, 2, 15) (the same products and sums, last point
# exact), written out so that importing it needs no numpy
GRID = tuple([-2.0 + i * (4.0 / 14) for i in range(14)] + [2.0])


def summarize(acc: Mapping[str, float], normalizers: Mapping[str, float] | None = None) -> dict:
    """``absolute``: mean accuracy; ``normalized``: mean of acc_t / acc_t(fine-tuned alone, same mode)."""
    out = {"accuracy": dict(acc), "absolute": sum(acc.values()) / max(1, len(acc))}
    if normalizers is not None:
        missing = [t for t in acc if t not in normalizers]
        if missing:
            raise ValueError(f"no fine-tuned accuracy to normalise by for task(s) {missing}")
        ratios = [acc[t] / normalizers[t] if normalizers[t] > 0 else 0.0 for t in acc]
        out["normalized"] = sum(ratios) / max(1, len(ratios))
    return out


def untouched(acc: Mapping[str, float], zeroshot: Mapping[str, float], coefs: Mapping[str, float],
              task_of: Mapping[str, str]) -> dict | None:
    """The tasks that no vector with λ ≠ 0 was trained on, in a merge with coefficients ``coefs`` (vector name -> λ;
    ``task_of``: vector name -> its task): ``{"tasks", "absolute", "zeroshot", "change"}``, their mean accuracy
    against θ0's.  What they lose is the other vectors' leakage into them.  None when every task of ``acc`` is
    edited or none is (then it says nothing the totals do not)."""
    edited = {task_of.get(n, n) for n, v in coefs.items() if v != 0}
    tasks = [t for t in acc if t in zeroshot and t not in edited]
    if not tasks or len(tasks) == len(acc):
        return None
    absolute = sum(acc[t] for t in tasks) / len(tasks)
    before = sum(zeroshot[t] for t in tasks) / len(tasks)
    return {"tasks": tasks, "absolute": absolute, "zeroshot": before, "change": absolute - before}


def check_max_per_task(n) -> None:
    """An evaluation subset is a positive whole number of images per task (or None: all of them); 0 would leave
    nothing to score and a negative n would drop the last images (Python's slicing)."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"max_per_task must be a positive number of images per task (or None for all), got {n!r}")
