"""The :class:`~arith.explore.Explorer`'s diagnostics: ξ grids, kernel reports, task-vector statistics, similarities.

A mixin, so that the Explorer stays one object while its accuracy protocols (``explore.py``) and its diagnostics
(here) live in modules of their own.  It uses the Explorer's plumbing: ``vectors``, ``_named``, ``catalog``,
``modes``, ``evaluator``, ``bundle``, ``loaded``, ``index``, ``max_per_task``, ``uses_all_images``, ``_precomputed``,
``_memo`` and ``_memoised``.  Like the rest of the Explorer, nothing a caller passes is stored; results are memoised by content
(and task: a uid names content only).
"""

from __future__ import annotations

import copy
import functools
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from .metrics import GRID
from .modes import parse_view

if TYPE_CHECKING:
    from .taskvec import TaskVector

Progress = Callable[[int, int], None] | None
XI_FIELDS = ("alpha1", "alpha2", "prediction", "representation", "tasks")


def fresh(method):
    """An Explorer method that returns the caller's own copy: its answers come from the bundle's precomputed results
    and from caches every session shares, which a caller that edits what it got back must not change."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        return copy.deepcopy(method(*args, **kwargs))
    return wrapper


class Diagnostics:
    """ξ (method.md §4), kernel behaviour (§5), and the statistics of task vectors, for an Explorer."""

    @fresh
    def xi(self, mode: str, task1: str, task2: str, alphas: Sequence[float] = GRID,
           extra: Mapping[str, TaskVector] | None = None, progress: Progress = None,
           length: float | None = None) -> dict:
        """ξ grid for a pair (precomputed when the bundle has it for this grid, either orientation).

        With ``length`` both vectors are first taken at one length, ‖τ_t‖ = ``length`` · ‖θ0‖: the grid runs over
        α_t = a · length ‖θ0‖ / ‖τ_t‖ for a in ``alphas``, so modes whose vectors differ in length are compared at
        the same distance from θ0 (ξ grows with the length of what is added).  The result then also holds
        ``length`` and ``grid`` (the a values); ``alpha1`` and ``alpha2`` are the coefficients used.  Computed."""
        alphas = [float(a) for a in alphas]
        stored = self._stored_xi(mode, task1, task2, alphas, extra, length)
        if stored is not None:
            return stored
        if not alphas:
            raise ValueError("a ξ grid needs at least one coefficient per axis")
        vs = self._named(mode, [task1, task2], extra)
        a1s, a2s = self._xi_axes([(task1, vs[task1]), (task2, vs[task2])], alphas, length)
        from .disentangle import xi_grid

        res = self._memoised(self._xi_key(mode, vs[task1], vs[task2], a1s, a2s), lambda: xi_grid(
            self.evaluator(self._xi_n()), vs[task1], vs[task2], vs[task1].task, vs[task2].task, a1s, a2s,
            progress=progress))
        return _as_asked(res, mode, alphas, length)

    def _stored_xi(self, mode: str, task1: str, task2: str, alphas: list[float],
                   extra: Mapping[str, TaskVector] | None, length: float | None) -> dict | None:
        """The bundle's precomputed grid for the pair (either orientation) when it answers the request: the same
        grid, the bundle's own vectors (no ``extra``), images as the bundle scored them, and no ``length`` (the
        stored grids are of the vectors as built).  Checks ``length`` first."""
        if length is not None:
            _check_length(length)
            return None
        if extra or not self._xi_precomputed_ok():
            return None
        for a, b, flip in ((task1, task2, False), (task2, task1, True)):
            pre = self._precomputed("disentanglement", mode, f"{a}|{b}", need=XI_FIELDS)
            if pre and _same_grid(pre["alpha1"], alphas):
                return _transpose(pre) if flip else pre
        return None

    @staticmethod
    def _xi_key(mode: str, tv1: TaskVector, tv2: TaskVector, a1s: Sequence[float], a2s: Sequence[float]) -> tuple:
        """A ξ grid's memo key: the vectors' content and the tasks they are scored on (a uid names content only)."""
        return ("xi", mode, tv1.uid, tv1.task, tv2.uid, tv2.task, tuple(a1s), tuple(a2s))

    def _xi_axes(self, pair: Sequence[tuple[str, TaskVector]], alphas: list[float],
                 length: float | None) -> tuple[list[float], list[float]]:
        """The coefficients of a ξ grid's two axes (``pair``: (name, vector) in axis order): ``alphas`` itself, or
        at ``length`` (see :meth:`xi`)."""
        if length is None:
            return alphas, alphas
        _check_length(length)
        out = []
        for name, tv in pair:
            norm = self._memoised(("norm", tv.uid), tv.norm)
            if norm == 0:
                raise ValueError(f"the vector {name!r} is zero: it has no direction to take at a length")
            out.append([a * length * self.theta0_norm / norm for a in alphas])
        return out[0], out[1]

    @property
    def theta0_norm(self) -> float:
        """‖θ0‖ over the image encoder's floating-point tensors (the unit of ``length`` in :meth:`xi`)."""
        return self._memoised(("theta0_norm",), lambda: math.sqrt(sum(
            float(t.double().pow(2).sum()) for t in self.bundle.base.params.values() if t.is_floating_point())))

    def _xi_n(self) -> int | None:
        """Images per task for ξ grids: the bundle's ``xi_eval_n`` (its precomputed grids used it), capped by this
        Explorer's own subset."""
        n, m = self.index.manifest.get("plan", {}).get("xi_eval_n"), self.max_per_task
        return m if n is None else (n if m is None else min(n, m))

    def _xi_precomputed_ok(self) -> bool:
        n = self.index.manifest.get("plan", {}).get("xi_eval_n")
        return self.uses_all_images if n is None else (self.max_per_task is None or self.max_per_task >= n)

    @fresh
    def kernel(self, mode: str, task: str, extra: Mapping[str, TaskVector] | None = None, progress: Progress = None) -> dict:
        """The kernel report (:func:`arith.kernel.kernel_report`) of ``task``'s vector in ``mode`` (a view: its cut
        vector; ``extra``: a session's vector of that name), stored or computed and memoised."""
        pre = self._precomputed("kernel", mode, task, need=("at_1", "path", "restricted"))
        if pre and not extra and self.uses_all_images:
            return pre
        tv = self._named(mode, [task], extra)[task]
        from .kernel import kernel_report

        res = self._memoised(("kernel", tv.uid, tv.task),
                             lambda: kernel_report(self.evaluator(), tv, tv.task, progress=progress))
        return _as_asked(res, mode)

    @fresh
    def cached_xi(self, mode: str, task1: str, task2: str, alphas: Sequence[float] = GRID,
                  extra: Mapping[str, TaskVector] | None = None, length: float | None = None) -> dict | None:
        """What :meth:`xi` would return if it is available without computing (precomputed or memoised), else None.
        Lets a caller show ready grids at once and offer to compute the others."""
        alphas = [float(a) for a in alphas]
        stored = self._stored_xi(mode, task1, task2, alphas, extra, length)
        if stored is not None:
            return stored
        if not self.loaded:  # nothing is memoised before the tensors are loaded
            return None
        vs = self.vectors(mode, extra)
        if task1 not in vs or task2 not in vs:
            return None
        a1s, a2s = self._xi_axes([(task1, vs[task1]), (task2, vs[task2])], alphas, length)
        res = self._memo.get(self._xi_key(mode, vs[task1], vs[task2], a1s, a2s))
        return None if res is None else _as_asked(res, mode, alphas, length)

    # -- task-vector statistics -------------------------------------------------------------------------------------
    @fresh
    def vector_stats(self, mode: str, extra: Mapping[str, TaskVector] | None = None) -> dict[str, dict]:
        """Per vector of ``mode`` (by name): ``task``, ``norm``, ``parameters`` and the per-block norm profile
        ``blocks`` (:meth:`TaskVector.block_norms`); memoised by content."""
        out = {}
        for name, tv in self.vectors(mode, extra).items():
            out[name] = {"task": tv.task, **self._memoised(("stats", tv.uid), lambda tv=tv: {
                "norm": tv.norm(), "parameters": tv.numel, "blocks": tv.block_norms()})}
        return out

    @fresh
    def similarity(self, modes: Sequence[str] | None = None, extra: Mapping[str, TaskVector] | None = None) -> dict:
        """Cosine similarities of task vectors within each mode and across modes (labels ``mode/name``), the format
        of :func:`arith.build.similarity_table`; the bundle's precomputed table when it covers the request."""
        modes = list(modes or self.modes)
        pre = self._precomputed("similarity", need=("by_mode", "all"))
        names = {m: list(self.catalog(m, extra)) for m in modes}
        empty = [m for m in modes if not names[m]]
        if empty or not modes:
            which = f"{empty[0]} " if empty else ""
            raise ValueError(f"no {which}task vectors to compare; this bundle has {', '.join(self.modes) or 'none'}")
        labels = [f"{m}/{n}" for m in modes for n in names[m]]
        if (pre and self.uses_all_images and set(pre.get("by_mode", {})) == set(modes)
                and sorted(pre.get("all", {}).get("labels", [])) == sorted(labels)
                and not any(tv.mode in modes for tv in (extra or {}).values())):
            try:
                return _reordered(pre, names)  # a build may have listed the vectors in another order
            except (KeyError, IndexError, TypeError):  # a stored table that does not hold what it says: compute
                pass
        vectors = {m: self.vectors(m, extra) for m in modes}
        from .build import similarity_table

        key = ("sim", tuple((m, tuple((n, tv.uid) for n, tv in vs.items())) for m, vs in vectors.items()))
        return self._memoised(key, lambda: similarity_table(vectors))


def _reordered(table: dict, names: Mapping[str, Sequence[str]]) -> dict:
    """A stored similarity table (:func:`arith.build.similarity_table`) with its rows and columns in the order of
    ``names`` (mode -> vector names): the same cosines, permuted."""
    def permute(labels, cosine, order):
        at = {label: i for i, label in enumerate(labels)}
        rows = [at[label] for label in order]
        return [[cosine[i][j] for j in rows] for i in rows]

    by_mode = {}
    for m, order in names.items():
        b = table["by_mode"][m]
        by_mode[m] = {**b, "labels": list(order), "cosine": permute(b["labels"], b["cosine"], order),
                      "norms": {n: b["norms"][n] for n in order}}
    labels = [f"{m}/{n}" for m, order in names.items() for n in order]
    return {**table, "by_mode": by_mode,
            "all": {**table["all"], "labels": labels,
                    "cosine": permute(table["all"]["labels"], table["all"]["cosine"], labels)}}


def _check_length(length) -> None:
    """A ξ grid's ``length`` (a fraction of ‖θ0‖) is a positive finite real number, not a bool."""
    if not (isinstance(length, numbers.Real) and not isinstance(length, bool) and math.isfinite(length) and length > 0):
        raise ValueError(f"a length must be a positive number (a fraction of ‖θ0‖), not {length!r}")


def _as_asked(res: dict, mode: str, grid: Sequence[float] | None = None, length: float | None = None) -> dict:
    """A diagnostic as asked for: computed on a view's cut vectors it names the view (``full@attn``), not the
    vectors' own mode; a ξ grid at a ``length`` says so (with its ``grid``)."""
    if parse_view(mode):
        res = {**res, "mode": mode}
    return res if length is None else {**res, "length": float(length), "grid": list(grid)}


def _same_grid(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b))


def _transpose(res: dict) -> dict:
    out = dict(res)
    for v in ("prediction", "representation"):
        out[v] = [list(r) for r in zip(*res[v])]
    out["alpha1"], out["alpha2"], out["tasks"] = res["alpha2"], res["alpha1"], list(reversed(res["tasks"]))
    if "images_per_task" in res:
        out["images_per_task"] = list(reversed(res["images_per_task"]))
    return out
