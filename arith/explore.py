"""The engine's front door for the app and the CLI: one loaded bundle, answers per request.

An :class:`Explorer` wraps a read-only :class:`~arith.bundle.Bundle` and one evaluator per evaluation-subset
size.  Every method is a function of its arguments (mode, coefficients, extra vectors from a session's
workspace): nothing a caller passes is stored, so sessions cannot see each other.  Results the bundle ships
precomputed are returned as they are when the request matches them; everything else is computed (and memoised
in bounded caches keyed by content).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence

from .bundle import Bundle
from .disentangle import GRID, xi_grid
from .evaluate import LRU, Evaluator, summarize
from .kernel import kernel_report
from .protocols import task_addition, task_negation
from .taskvec import TaskVector

Progress = Callable[[int, int], None] | None


XI_FIELDS = ("alpha1", "alpha2", "prediction", "representation", "tasks")


def round_coefs(coefs: Mapping[str, float], digits: int = 4) -> tuple[tuple[str, float], ...]:
    """Canonical cache key of a coefficient set: sorted, rounded, zeros dropped."""
    return tuple(sorted((k, round(float(v), digits)) for k, v in coefs.items() if round(float(v), digits) != 0.0))


class Explorer:
    """Answers the questions the app asks about one bundle; thread-safe, never mutates the bundle."""

    def __init__(self, bundle: Bundle, max_per_task: int | None = None, cache_size: int = 512):
        self.bundle = bundle
        self.max_per_task = max_per_task
        self._evaluators: dict[int | None, Evaluator] = {}
        self._lock = threading.Lock()
        self._memo = LRU(cache_size)

    # -- plumbing ---------------------------------------------------------------------------------------------------
    def evaluator(self, max_per_task: int | None | str = "default") -> Evaluator:
        n = self.max_per_task if max_per_task == "default" else max_per_task
        with self._lock:
            if n not in self._evaluators:
                self._evaluators[n] = self.bundle.evaluator(max_per_task=n)
            return self._evaluators[n]

    @property
    def tasks(self) -> list[str]:
        return [t for t in self.bundle.task_names if t in self.bundle.data]

    @property
    def modes(self) -> list[str]:
        return self.bundle.modes

    def vectors(self, mode: str, extra: Mapping[str, TaskVector] | None = None) -> dict[str, TaskVector]:
        """The bundle's vectors of ``mode`` plus a session's ``extra`` vectors of that mode (by display name)."""
        out = dict(self.bundle.vectors.get(mode, {}))
        for name, tv in (extra or {}).items():
            if tv.mode == mode:
                out[name] = tv
        return out

    def _memoised(self, key, compute):
        hit = self._memo.get(key)
        return hit if hit is not None else self._memo.put(key, compute())

    def _precomputed(self, name: str, *path, need: Sequence[str] = ()):
        """A precomputed result, or None when the bundle lacks it (or it is not a JSON object with the ``need``
        fields): the caller then computes it."""
        node = self.bundle.results.get(name)
        for p in path:
            if not isinstance(node, dict) or p not in node:
                return None
            node = node[p]
        return node if isinstance(node, dict) and all(k in node for k in need) else None

    def _precomputed_accuracy(self, *path) -> dict | None:
        pre = self._precomputed("accuracy", *path)
        return pre if pre and all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in pre.values()) else None

    # -- accuracies -----------------------------------------------------------------------------------------------
    def zeroshot(self, split: str = "test") -> dict[str, float]:
        pre = self._precomputed_accuracy("zeroshot", split) if self.uses_all_images else None
        return dict(pre) if pre else self._memoised(("zs", split), lambda: self.evaluator().zeroshot(split))

    def finetuned(self, mode: str, split: str = "test", extra: Mapping[str, TaskVector] | None = None) -> dict[str, float]:
        """Single-task accuracy of each task's vector in ``mode`` (the normaliser of normalized accuracy).
        An extra vector named after a bundle task replaces the bundle's for that task."""
        vs = {n: tv for n, tv in self.vectors(mode, extra).items() if tv.task in self.tasks}
        pre = self._precomputed_accuracy("finetuned", mode, split) if self.uses_all_images else None
        out = {}
        for name, tv in vs.items():
            if tv.task in out and name != tv.task:  # another vector of an already covered task: not its normaliser
                continue
            if pre and name in pre and tv is self.bundle.vectors.get(mode, {}).get(name):
                out[tv.task] = pre[name]
            else:
                out[tv.task] = self._memoised(("ft", tv.uid, split),
                                              lambda tv=tv: self.evaluator().evaluate([tv], [1.0], split, [tv.task])[tv.task])
        return out

    @property
    def uses_all_images(self) -> bool:
        """Whether evaluation sees every stored image (then the bundle's precomputed results apply)."""
        n = self.max_per_task
        return n is None or all(len(s) <= n for splits in self.bundle.data.values() for s in splits.values())

    def evaluate(self, mode: str, coefs: Mapping[str, float], split: str = "test",
                 extra: Mapping[str, TaskVector] | None = None, tasks: Sequence[str] | None = None,
                 method: str = "task_arithmetic") -> dict:
        """Merged model θ0 + δ(λ) in ``mode`` on every task: ``accuracy`` per task, ``absolute``, ``normalized``.

        ``coefs`` maps vector names (bundle task names or workspace names) to λ; missing names are 0.
        """
        vs = self.vectors(mode, extra)
        unknown = sorted(set(coefs) - set(vs))
        if unknown:
            raise KeyError(f"no {mode} task vector named {unknown}; have {sorted(vs)}")
        tasks = list(tasks or self.tasks)
        # every vector of the mode is in the key, not only the merged ones: workspace vectors named after a bundle
        # task change the normalisers (finetuned()), so sessions with different workspaces must not share results
        key = ("eval", mode, split, tuple(tasks), method, round_coefs(coefs),
               tuple(sorted((n, tv.uid) for n, tv in vs.items())))

        def compute():
            pre = self._from_addition(mode, coefs, split, tasks, method, vs)
            if pre is not None:
                return pre
            nonzero = {n for n, _ in round_coefs(coefs)}
            # bundle tasks in the bundle's order, then workspace vectors: the order the protocols add vectors in
            names = [n for n in self.bundle.task_names if n in nonzero] + [n for n in vs if n in nonzero
                                                                           and n not in self.bundle.task_names]
            acc = self.evaluator().evaluate([vs[n] for n in names], [float(coefs[n]) for n in names], split, tasks,
                                            method)
            ft = self.finetuned(mode, split, extra)
            return summarize(acc, {t: ft.get(t, 0.0) for t in acc} if all(t in ft for t in acc) else None)

        res = dict(self._memoised(key, compute))
        res.update({"mode": mode, "split": split, "coefficients": {k: float(v) for k, v in coefs.items()}})
        return res

    def _from_addition(self, mode: str, coefs: Mapping[str, float], split: str, tasks: Sequence[str], method: str,
                       vs: Mapping[str, TaskVector]) -> dict | None:
        """The bundle's precomputed task-addition sweep already holds θ0 + α Σ_t τ_t on every task for α ∈ {0, 0.05,
        …, 1}: a request for one shared α over all the bundle's vectors (the app's opening view, the validation α
        preset, a tied slider) is a row of it.  The row was computed by the same evaluator, adding the vectors in the
        same order, so it is exactly what computing would return.  None when the request is anything else."""
        pre = self._precomputed("addition", mode, need=("tasks", "curve"))
        if (pre is None or not self.uses_all_images or pre.get("method", "task_arithmetic") != method
                or list(tasks) != self.tasks or pre["tasks"] != self.tasks or set(coefs) != set(pre["tasks"])
                or any(vs[n] is not self.bundle.vectors.get(mode, {}).get(n) for n in coefs)):
            return None
        alphas = {v for _, v in round_coefs(coefs)} or {0.0}
        if len(alphas) != 1 or len(round_coefs(coefs)) not in (0, len(coefs)):
            return None
        alpha = alphas.pop()
        for row in pre["curve"]:
            if isinstance(row, dict) and round(float(row.get("alpha", -1)), 4) == alpha and isinstance(row.get(split), dict):
                r = row[split]
                if isinstance(r.get("accuracy"), dict) and set(r["accuracy"]) == set(self.tasks):
                    return {"accuracy": {t: r["accuracy"][t] for t in self.tasks}, "absolute": r["absolute"],
                            "normalized": r["normalized"]}
        return None

    # -- protocols and diagnostics --------------------------------------------------------------------------------
    def addition(self, mode: str, tasks: Sequence[str] | None = None, progress: Progress = None) -> dict:
        tasks = list(tasks or self.tasks)
        pre = self._precomputed("addition", mode, need=("tasks", "alpha", "absolute", "normalized", "accuracy", "curve"))
        if pre and pre.get("tasks") == tasks and self.uses_all_images:
            return pre
        vs = self.vectors(mode)
        return self._memoised(("add", mode, tuple(tasks)), lambda: task_addition(
            self.evaluator(), {t: vs[t] for t in tasks}, progress=progress))

    def negation(self, mode: str, target: str, controls: Sequence[str] | None = None, progress: Progress = None) -> dict:
        controls = [c for c in (controls or self.tasks) if c != target]
        pre = self._precomputed("negation", mode, target, need=("controls", "alpha", "target", "control", "curve"))
        if pre and pre.get("controls") == controls and self.uses_all_images:
            return pre
        tv = self.vectors(mode)[target]
        return self._memoised(("neg", mode, target, tuple(controls)),
                              lambda: task_negation(self.evaluator(), tv, target, controls, progress=progress))

    def xi(self, mode: str, task1: str, task2: str, alphas: Sequence[float] = GRID,
           extra: Mapping[str, TaskVector] | None = None, progress: Progress = None) -> dict:
        """ξ grid for a pair (precomputed when the bundle has it for this grid, either orientation)."""
        alphas = [float(a) for a in alphas]
        for a, b, flip in ((task1, task2, False), (task2, task1, True)):
            pre = self._precomputed("disentanglement", mode, f"{a}|{b}", need=XI_FIELDS)
            if pre and not extra and _same_grid(pre["alpha1"], alphas) and self._xi_precomputed_ok():
                return _transpose(pre) if flip else pre
        vs = self.vectors(mode, extra)
        return self._memoised(("xi", mode, vs[task1].uid, vs[task2].uid, tuple(alphas)), lambda: xi_grid(
            self.evaluator(self._xi_n()), vs[task1], vs[task2], vs[task1].task, vs[task2].task, alphas,
            progress=progress))

    def _xi_n(self) -> int | None:
        """Images per task for ξ grids: the bundle's ``xi_eval_n`` (its precomputed grids used it), capped by this
        Explorer's own subset."""
        n, m = self.bundle.manifest.get("plan", {}).get("xi_eval_n"), self.max_per_task
        return m if n is None else (n if m is None else min(n, m))

    def _xi_precomputed_ok(self) -> bool:
        n = self.bundle.manifest.get("plan", {}).get("xi_eval_n")
        return self.uses_all_images if n is None else (self.max_per_task is None or self.max_per_task >= n)

    def kernel(self, mode: str, task: str, extra: Mapping[str, TaskVector] | None = None, progress: Progress = None) -> dict:
        pre = self._precomputed("kernel", mode, task, need=("at_1", "path", "restricted"))
        if pre and not extra and self.uses_all_images:
            return pre
        tv = self.vectors(mode, extra)[task]
        return self._memoised(("kernel", tv.uid), lambda: kernel_report(self.evaluator(), tv, tv.task, progress=progress))

    def cached_xi(self, mode: str, task1: str, task2: str, alphas: Sequence[float] = GRID,
                  extra: Mapping[str, TaskVector] | None = None) -> dict | None:
        """What :meth:`xi` would return if it is available without computing (precomputed or memoised), else None.
        Lets a caller show ready grids at once and offer to compute the others."""
        alphas = [float(a) for a in alphas]
        for a, b, flip in ((task1, task2, False), (task2, task1, True)):
            pre = self._precomputed("disentanglement", mode, f"{a}|{b}", need=XI_FIELDS)
            if pre and not extra and _same_grid(pre["alpha1"], alphas) and self._xi_precomputed_ok():
                return _transpose(pre) if flip else pre
        vs = self.vectors(mode, extra)
        if task1 not in vs or task2 not in vs:
            return None
        return self._memo.get(("xi", mode, vs[task1].uid, vs[task2].uid, tuple(alphas)))

    # -- task-vector statistics -------------------------------------------------------------------------------------
    def vector_stats(self, mode: str, extra: Mapping[str, TaskVector] | None = None) -> dict[str, dict]:
        """Per vector of ``mode`` (by name): ``task``, ``norm``, ``parameters`` and the per-block norm profile
        ``blocks`` (:meth:`TaskVector.block_norms`); memoised by content."""
        out = {}
        for name, tv in self.vectors(mode, extra).items():
            out[name] = {"task": tv.task, **self._memoised(("stats", tv.uid), lambda tv=tv: {
                "norm": tv.norm(), "parameters": tv.numel, "blocks": tv.block_norms()})}
        return out

    def similarity(self, modes: Sequence[str] | None = None, extra: Mapping[str, TaskVector] | None = None) -> dict:
        """Cosine similarities of task vectors within each mode and across modes (labels ``mode/name``), the format
        of :func:`arith.build.similarity_table`; the bundle's precomputed table when it covers the request."""
        from .build import similarity_table

        modes = list(modes or self.modes)
        vectors = {m: self.vectors(m, extra) for m in modes}
        pre = self._precomputed("similarity", need=("by_mode", "all"))
        labels = [f"{m}/{n}" for m, vs in vectors.items() for n in vs]
        if (pre and self.uses_all_images and set(pre.get("by_mode", {})) == set(modes)
                and pre.get("all", {}).get("labels") == labels
                and not any(tv.mode in modes for tv in (extra or {}).values())):
            return pre
        key = ("sim", tuple((m, tuple((n, tv.uid) for n, tv in vs.items())) for m, vs in vectors.items()))
        return self._memoised(key, lambda: similarity_table(vectors))


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
