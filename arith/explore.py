"""The engine's front door for the app and the CLI: one bundle, answers per request.

An :class:`Explorer` answers from a bundle's :class:`~arith.index.BundleIndex` (its names and precomputed results)
and, for anything the index cannot answer, from the loaded :class:`~arith.bundle.Bundle` and one evaluator per
evaluation-subset size.  Every method is a function of its arguments (mode, coefficients, extra vectors from a
session's workspace): nothing a caller passes is stored, so sessions cannot see each other.  Results the bundle
ships precomputed are returned when the request matches them; everything else is computed (and memoised in bounded
caches keyed by content).  Every answer is the caller's own copy (:func:`~arith.explore_diagnostics.fresh`).

:meth:`Explorer.open` reads only the index and loads the tensors on first need (or on a background thread,
:meth:`Explorer.load_in_background`): the requests the precomputed results answer (the app's opening view) are
answered before torch is imported.  Importing this module imports no tensor library either; every path that
computes first takes :attr:`Explorer.bundle`, which waits for a load in progress, and only then imports the modules
that need torch (two threads never import torch at once).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .examples import Examples, new_memo
from .explore_diagnostics import Diagnostics, fresh
from .index import BundleError, BundleIndex
from .lru import LRU
from .merge import canonical_method, check_coefs
from .metrics import check_max_per_task, summarize
from .modes import parse_view, views_of

if TYPE_CHECKING:
    from .bundle import Bundle
    from .evaluate import Evaluator
    from .taskvec import TaskVector

Progress = Callable[[int, int], None] | None
log = logging.getLogger(__name__)
# Loading a bundle imports torch on first use; two threads importing it at once can see a half-initialised module,
# so loads, of any bundle, run one at a time.
_ONE_LOAD_AT_A_TIME = threading.Lock()


NEGATION_FIELDS = ("controls", "alpha", "target", "control", "curve", "zeroshot_target", "zeroshot_control",
                   "constraint_met")


def round_coefs(coefs: Mapping[str, float], digits: int = 4) -> tuple[tuple[str, float], ...]:
    """Canonical cache key of a coefficient set: sorted, rounded, zeros dropped."""
    return tuple(sorted((k, round(float(v), digits)) for k, v in coefs.items() if round(float(v), digits) != 0.0))


def resolve_device(device: str = "auto") -> str:
    """``auto``: ``cuda`` when torch sees a GPU, else ``cpu``; any other name is returned as it is."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Explorer(Diagnostics, Examples):
    """Answers the questions the app asks about one bundle; thread-safe, never mutates the bundle.

    ``Explorer(bundle)`` wraps a loaded bundle; :meth:`open` reads a bundle directory's index and loads the rest
    when first needed.  Accuracies and the task-arithmetic protocols are here; ξ, kernel reports and vector
    statistics come from :class:`~arith.explore_diagnostics.Diagnostics`, per-image predictions from
    :class:`~arith.examples.Examples`."""

    def __init__(self, bundle: Bundle | None = None, max_per_task: int | None = None, cache_size: int = 512, *,
                 index: BundleIndex | None = None, loader: Callable[[], Bundle] | None = None,
                 autocast: str | None = None):
        if bundle is None and (index is None or loader is None):
            raise TypeError("Explorer needs a bundle, or an index and a loader")
        if autocast not in (None, "fp16", "bf16"):
            raise ValueError(f"autocast must be None, 'fp16' or 'bf16', got {autocast!r}")
        check_max_per_task(max_per_task)  # before anything loads
        self.index = index if index is not None else bundle.index
        self.max_per_task = max_per_task
        # forward passes of the results computed here (not the precomputed ones, which stay fp32): see Evaluator
        self.autocast = autocast
        self._bundle, self._loader, self._damaged = bundle, loader, None
        self._load_lock, self._loading = threading.Lock(), None
        self._evaluators: dict[int | None, Evaluator] = {}
        self._lock = threading.Lock()
        self._memo = LRU(cache_size)
        self._examples = new_memo()  # per-image answers: arrays, bounded in bytes too

    @classmethod
    def open(cls, root: str | Path, device: str = "cpu", max_per_task: int | None = None, verify: bool = True,
             **kw) -> Explorer:
        """Read the bundle's index now (manifest, size and sha256 of every file, precomputed results; no tensor
        library) and load its tensors, onto ``device`` (``auto``: :func:`resolve_device`), when first needed."""
        index = BundleIndex.open(root, verify=verify)

        def load() -> Bundle:
            from .bundle import load_bundle

            # the files must be as the index checked them: they may have changed since (a rebuild in place)
            bundle = load_bundle(root, verify=verify, index=index)
            dev = resolve_device(device)
            return bundle if dev == "cpu" else dataclasses.replace(bundle, base=bundle.base.to(dev))

        return cls(index=index, loader=load, max_per_task=max_per_task, **kw)

    # -- loading ----------------------------------------------------------------------------------------------------
    @property
    def bundle(self) -> Bundle:
        """The loaded bundle: loads it on first use, waits for a load in progress.  A damaged bundle
        (:class:`BundleError`) raises the same error here every time; after any other failure (memory, a device)
        the next use tries again."""
        if self._bundle is not None:
            return self._bundle
        with self._load_lock:
            if self._bundle is None:
                if self._damaged is not None:
                    raise BundleError(self._damaged)  # a fresh exception: re-raising one object grows its traceback
                with _ONE_LOAD_AT_A_TIME:
                    try:
                        self._bundle = self._loader()
                    except BundleError as e:
                        self._damaged = str(e)
                        raise
            return self._bundle

    @property
    def loaded(self) -> bool:
        """Whether the tensors are loaded (then nothing waits on :attr:`bundle`)."""
        return self._bundle is not None

    @property
    def load_error(self) -> BundleError | None:
        """Why the bundle's tensors cannot be loaded (it is damaged), else None."""
        return None if self._damaged is None else BundleError(self._damaged)

    def load_in_background(self, delay: float = 0.0) -> threading.Thread | None:
        """Load the tensors on a daemon thread after ``delay`` seconds (a request that needs them sooner loads them
        itself; the thread then finds them loaded).  Returns the thread, or None when they are loaded or a thread is
        already on it.  A failure is left for :attr:`bundle` to raise; one that is not a damaged bundle lets a
        later call try again."""
        if self._bundle is not None or self._loading is not None:  # the common case, every run: no lock
            return None
        with self._lock:
            if self._bundle is not None or self._loading is not None:
                return None
            self._loading = threading.Thread(target=self._load_quietly, args=(delay,), name="arith-bundle-load",
                                             daemon=True)
        self._loading.start()
        return self._loading

    def _load_quietly(self, delay: float) -> None:
        time.sleep(delay)
        try:
            _ = self.bundle
        except BundleError:  # kept; load_error and .bundle report it where it can be shown
            pass
        except Exception:
            log.exception("loading the tensors of %s failed; the next request tries again", self.index.root)
            with self._lock:
                self._loading = None

    # -- plumbing ---------------------------------------------------------------------------------------------------
    def evaluator(self, max_per_task: int | None | str = "default") -> Evaluator:
        """The shared :class:`~arith.evaluate.Evaluator` on this bundle's evaluation images (the Explorer's own
        ``max_per_task`` by default; one per subset size, built once)."""
        n = self.max_per_task if max_per_task == "default" else max_per_task
        bundle = self.bundle  # first: loads (and imports torch) before anything below may
        with self._lock:
            if n not in self._evaluators:
                self._evaluators[n] = bundle.evaluator(max_per_task=n, autocast=self.autocast)
            return self._evaluators[n]

    @property
    def name(self) -> str:
        return self.index.name

    @property
    def base_id(self) -> str | None:
        return self.index.base_id

    @property
    def task_names(self) -> list[str]:
        """Every task of the bundle, in its order."""
        return self.index.task_names

    @property
    def tasks(self) -> list[str]:
        """The tasks with evaluation data, in the bundle's order."""
        return self.index.evaluation_tasks

    @property
    def modes(self) -> list[str]:
        return self.index.modes

    @property
    def results(self) -> dict:
        """The bundle's precomputed results: the caller's own copy (every session shares the bundle's).  A page that
        needs one entry reads :meth:`result`, a smaller copy."""
        return copy.deepcopy(self.index.results)

    @fresh
    def result(self, name: str, default=None):
        """One precomputed result (``"addition"``, ``"disentanglement"``, ``"kernel"``, …) as the caller's own copy;
        ``default`` when the bundle has none."""
        return self.index.results.get(name, default)

    @property
    def views(self) -> list[str]:
        """The mode views this bundle's modes make possible (:func:`arith.modes.views_of`: ``full@attn``, …): each
        is a mode name every method here takes, serving the source mode's vectors cut to the part, computed."""
        return views_of(self.modes)

    def catalog(self, mode: str, extra: Mapping[str, TaskVector] | None = None) -> dict[str, str]:
        """Vector name -> its task, for :meth:`vectors` (same names, same order) without loading any tensor."""
        view = parse_view(mode)
        if view:
            return self.catalog(view.source.name, extra)
        out = dict(self.index.vectors.get(mode, {}))
        out.update({name: tv.task for name, tv in _own(mode, extra).items()})
        return out if out else self._known_mode(mode)

    def vectors(self, mode: str, extra: Mapping[str, TaskVector] | None = None) -> dict[str, TaskVector]:
        """The bundle's vectors of ``mode`` plus a session's ``extra`` vectors of that mode (by display name); for a
        view (``full@attn``), the source mode's, each cut to the part (memoised on the source vector, not here: a
        session's vectors and their cuts leave with the session)."""
        view = parse_view(mode)
        if view:
            return {n: tv.cut(view.part) for n, tv in self.vectors(view.source.name, extra).items()}
        out = dict(self.bundle.vectors.get(mode, {}))
        out.update(_own(mode, extra))
        return out if out else self._known_mode(mode)

    def _known_mode(self, mode: str) -> dict:
        """No vectors of ``mode`` here: an empty answer for a mode (a page may ask about one only the workspace has,
        or had), an error naming this bundle's modes and views for a name that is no mode."""
        from .modes import get_mode

        try:
            get_mode(mode)
        except ValueError as e:
            raise ValueError(f"{e}; this bundle has {', '.join(self.modes)}"
                             + (f" and the views {', '.join(self.views)}" if self.views else "")) from None
        return {}

    def require_vectors(self, mode: str, extra: Mapping[str, TaskVector] | None = None) -> None:
        """A KeyError naming this bundle's modes and views when neither it nor ``extra`` has a vector of ``mode``:
        :meth:`evaluate` answers θ0 for such a mode (a page may show one the workspace had), a command refuses it."""
        if not self.catalog(mode, extra):
            raise KeyError(f"this bundle has no {mode} task vectors; its modes: {', '.join(self.modes)}"
                           + (f"; views: {', '.join(self.views)}" if self.views else ""))

    def _named(self, mode: str, names: Sequence[str], extra: Mapping[str, TaskVector] | None = None
               ) -> dict[str, TaskVector]:
        """The vectors of ``mode`` called ``names`` (:meth:`vectors`), or an error naming the ones it lacks."""
        self.require_vectors(mode, extra)
        vs = self.vectors(mode, extra)
        missing = [n for n in names if n not in vs]
        if missing:
            raise KeyError(f"no {mode} task vector named {missing}; have {sorted(vs)}{_elsewhere(missing, extra)}")
        return {n: vs[n] for n in names}

    def _memoised(self, key, compute):
        hit = self._memo.get(key)
        return hit if hit is not None else self._memo.put(key, compute())

    def _precomputed(self, name: str, *path, need: Sequence[str] = ()):
        """A precomputed result, or None when the bundle lacks it (or it is not a JSON object with the ``need``
        fields): the caller then computes it."""
        node = self.index.results.get(name)
        for p in path:
            if not isinstance(node, dict) or p not in node:
                return None
            node = node[p]
        return node if isinstance(node, dict) and all(k in node for k in need) else None

    def _precomputed_accuracy(self, *path) -> dict | None:
        pre = self._precomputed("accuracy", *path)
        return pre if pre and all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in pre.values()) else None

    # -- accuracies -----------------------------------------------------------------------------------------------
    @fresh
    def zeroshot(self, split: str = "test") -> dict[str, float]:
        """θ0's accuracy per task on ``split`` (the stored one when it covers the images in use)."""
        pre = self._precomputed_accuracy("zeroshot", split) if self.uses_all_images else None
        return dict(pre) if pre else self._memoised(("zs", split), lambda: self.evaluator().zeroshot(split))

    @fresh
    def finetuned(self, mode: str, split: str = "test", extra: Mapping[str, TaskVector] | None = None) -> dict[str, float]:
        """Single-task accuracy of each task's vector in ``mode`` (the normaliser of normalized accuracy).
        An extra vector named after a bundle task replaces the bundle's for that task."""
        own = _own(mode, extra)
        pre = self._precomputed_accuracy("finetuned", mode, split) if self.uses_all_images else None
        out = {}
        for task, name in self.alone_names(mode, extra).items():
            if pre and name in pre and name not in own:  # the bundle's own vector: its precomputed accuracy
                out[task] = pre[name]
            else:
                tv = self.vectors(mode, extra)[name]
                out[task] = self._memoised(("ft", tv.uid, tv.task, split),  # a uid names content, not the task
                                           lambda tv=tv: self.evaluator().evaluate([tv], [1.0], split, [tv.task])[tv.task])
        return out

    def alone_names(self, mode: str, extra: Mapping[str, TaskVector] | None = None) -> dict[str, str]:
        """Task -> the name of the vector whose single-task accuracy normalises it (:meth:`finetuned`), for the tasks
        with evaluation data: a task's first vector of ``mode``, or the one named after the task when there are
        several (a workspace vector named after a bundle task replaces the bundle's)."""
        out = {}
        for name, task in self.catalog(mode, extra).items():
            if task in self.tasks and (task not in out or name == task):
                out[task] = name
        return out

    @property
    def uses_all_images(self) -> bool:
        """Whether evaluation sees every stored image (then the bundle's precomputed results apply)."""
        n = self.max_per_task
        return n is None or all(size <= n for sizes in self.index.sizes.values() for size in sizes.values())

    @fresh
    def evaluate(self, mode: str, coefs: Mapping[str, float], split: str = "test",
                 extra: Mapping[str, TaskVector] | None = None, tasks: Sequence[str] | None = None,
                 method: str = "task_arithmetic") -> dict:
        """Merged model θ0 + δ(λ) in ``mode`` on every task: ``accuracy`` per task, ``absolute``, ``normalized``.

        ``coefs`` maps vector names (bundle task names or workspace names) to λ; missing names are 0.  Each λ is
        taken to 4 decimals (:func:`round_coefs`, the cache key): what is computed is what the key says.
        ``normalized`` is None when an evaluated task has no vector of ``mode`` to normalise by.
        """
        coefs = self._checked_coefs(mode, coefs, extra)
        tasks = _selection(tasks) or list(self.tasks)
        method = canonical_method(method)  # one cache key per request, however the spec was written
        res = self._from_addition(mode, coefs, split, tasks, method, extra)
        if res is None:
            res = dict(self._computed(mode, coefs, split, tasks, method, extra))
        res.update({"mode": mode, "split": split, "coefficients": {k: float(v) for k, v in coefs.items()}})
        return res

    def _checked_coefs(self, mode: str, coefs: Mapping[str, float], extra: Mapping[str, TaskVector] | None
                       ) -> dict[str, float]:
        """``coefs`` as computed (each λ to 4 decimals), or an error: not a mapping, a λ that is not a finite
        number, a name that is no vector of ``mode``."""
        if not isinstance(coefs, Mapping):
            raise TypeError(f"coefficients are a mapping vector name -> λ, not a {type(coefs).__name__}")
        check_coefs(list(coefs.values()))
        coefs = {k: round(float(v), 4) for k, v in coefs.items()}
        names = self.catalog(mode, extra)
        unknown = sorted(set(coefs) - set(names))
        if unknown:
            raise KeyError(f"no {mode} task vector named {unknown}; have {sorted(names)}{_elsewhere(unknown, extra)}")
        return coefs

    def _merge_order(self, coefs: Mapping[str, float], vs: Mapping[str, TaskVector]) -> list[str]:
        """The vectors with λ ≠ 0: bundle tasks in the bundle's order, then workspace vectors (the order the
        protocols add vectors in, so equal requests sum in the same order)."""
        nonzero = {n for n, _ in round_coefs(coefs)}
        return ([n for n in self.task_names if n in nonzero]
                + [n for n in vs if n in nonzero and n not in self.task_names])

    def _computed(self, mode: str, coefs: Mapping[str, float], split: str, tasks: list[str], method: str,
                  extra: Mapping[str, TaskVector] | None) -> dict:
        vs = self.vectors(mode, extra)
        # every vector of the mode is in the key, not only the merged ones: workspace vectors named after a bundle
        # task change the normalisers (finetuned(), which goes by each vector's task: a uid names content only), so
        # sessions with different workspaces must not share results
        key = ("eval", mode, split, tuple(tasks), method, round_coefs(coefs),
               tuple(sorted((n, tv.uid, tv.task) for n, tv in vs.items())))

        def compute():
            names = self._merge_order(coefs, vs)
            acc = self.evaluator().evaluate([vs[n] for n in names], [float(coefs[n]) for n in names], split, tasks,
                                            method)
            ft = self.finetuned(mode, split, extra)
            out = summarize(acc, {t: ft.get(t, 0.0) for t in acc} if all(t in ft for t in acc) else None)
            out.setdefault("normalized", None)  # None: a task without a vector of this mode to normalise by
            return out

        return self._memoised(key, compute)

    def _from_addition(self, mode: str, coefs: Mapping[str, float], split: str, tasks: Sequence[str], method: str,
                       extra: Mapping[str, TaskVector] | None = None) -> dict | None:
        """The bundle's precomputed task-addition sweep already holds θ0 + α Σ_t τ_t on every task for α ∈ {0, 0.05,
        …, 1}: a request for one shared α over all the bundle's own vectors (the app's opening view, the validation
        α preset, a tied slider) is a row of it.  The row was computed by the same evaluator, adding the vectors in
        the same order, so it is exactly what computing would return on the build's device in fp32 (elsewhere, or
        under ``autocast``, a computed point may differ by an image or two).  None when the request is anything
        else."""
        pre = self._precomputed("addition", mode, need=("tasks", "curve"))
        own = _own(mode, extra)
        if (pre is None or not self.uses_all_images or pre.get("method", "task_arithmetic") != method
                or list(tasks) != self.tasks or pre["tasks"] != self.tasks or set(coefs) != set(pre["tasks"])
                or any(n in own for n in coefs)):
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
    def _in_order(self, tasks: Sequence[str] | None) -> list[str]:
        """``tasks`` (all by default) in the bundle's order: the protocols add vectors in the order given, so one
        selection is one request (and the stored results answer it) whatever order it was picked in."""
        tasks = _selection(tasks)
        if tasks is None:
            return list(self.tasks)
        rank = {t: i for i, t in enumerate(self.tasks)}
        return sorted(dict.fromkeys(tasks), key=lambda t: rank.get(t, len(rank)))

    def _stored_addition(self, mode: str, tasks: Sequence[str], method: str = "task_arithmetic") -> dict | None:
        """The build's task-addition sweep for ``mode`` when it answers a request for ``tasks``, else None."""
        if mode not in self.modes:  # results stored for vectors the bundle no longer lists answer nothing
            return None
        pre = self._precomputed("addition", mode, need=("tasks", "alpha", "absolute", "normalized", "accuracy", "curve"))
        return (pre if pre and pre.get("tasks") == list(tasks) and self.uses_all_images
                and pre.get("method", "task_arithmetic") == method else None)

    def addition_ready(self, mode: str, tasks: Sequence[str] | None = None, method: str = "task_arithmetic") -> bool:
        """Whether :meth:`addition` for this request is served at once (the bundle's stored sweep, or one this
        Explorer already computed) rather than swept: 21 values of α on two splits, seconds to minutes on a CPU."""
        tasks, method = self._in_order(tasks), canonical_method(method)
        return (self._stored_addition(mode, tasks, method) is not None
                or self._memo.get(("add", mode, tuple(tasks), method)) is not None)

    @fresh
    def addition(self, mode: str, tasks: Sequence[str] | None = None, progress: Progress = None,
                 method: str = "task_arithmetic") -> dict:
        """Shared-α task addition (:func:`arith.protocols.task_addition`) over the bundle's ``tasks`` in ``mode``,
        merged by ``method``: the bundle's stored sweep when it is that request, else computed and memoised."""
        tasks, method = self._in_order(tasks), canonical_method(method)
        pre = self._stored_addition(mode, tasks, method)
        if pre is not None:
            return pre
        vs = self._named(mode, tasks)
        from .protocols import task_addition  # after self.vectors: torch is imported by the bundle's load

        return self._memoised(("add", mode, tuple(tasks), method), lambda: task_addition(
            self.evaluator(), vs, method=method, progress=progress))

    @fresh
    def alone(self, mode: str, tasks: Sequence[str] | None = None, progress: Progress = None) -> dict:
        """Each task alone at every α of the addition sweep (:func:`arith.protocols.alone_curve`, test split), and at
        the addition's chosen α the gap between alone and merged (``interference``); precomputed in bundles built
        since the alone curve joined the build (or added by ``python -m arith precompute --only alone``), else
        computed on demand; memoised."""
        tasks = self._in_order(tasks)
        add = self.addition(mode, tasks, progress=progress)  # precomputed, memoised, or (rarely) swept first
        from .protocols import alone_curve, interference

        pre = self._precomputed("alone", mode, need=("tasks", "finetuned", "curve"))
        if pre and pre.get("tasks") == tasks and self.uses_all_images:  # the build's curve: no tensor is touched
            try:
                return self._memoised(("alone", mode, tuple(tasks)), lambda: {**pre, "interference": interference(add, pre)})
            except (KeyError, TypeError, ValueError):  # a malformed stored result: compute it instead
                pass
        vs = self._named(mode, tasks)

        def compute():
            curve = alone_curve(self.evaluator(), vs, progress=progress,
                                finetuned=add.get("finetuned"), splits=("test",))
            return {**curve, "interference": interference(add, curve)}

        return self._memoised(("alone", mode, tuple(tasks)), compute)

    def _stored_pairs(self, mode: str, tasks: Sequence[str]) -> dict | None:
        """The build's pair costs for ``mode`` when they answer this request: the same tasks, in order, on the test
        split, at the chosen α of the stored addition sweep that :meth:`addition` serves, and well formed (finite
        numbers: n × n cost and pair matrices, per-task alone, hurt and inflicted); else None."""
        pre = self._precomputed("pairs", mode, need=("tasks", "alpha", "split", "cost", "hurt", "inflicted",
                                                     "additive_cost"))
        add = self._stored_addition(mode, tasks)
        if not (pre and add and pre["tasks"] == list(tasks) and pre["split"] == "test"):
            return None

        def number(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        def per_task(d) -> bool:
            return isinstance(d, dict) and set(d) == set(tasks) and all(number(v) for v in d.values())

        ok = (pre["alpha"] == add["alpha"] and number(pre["additive_cost"])
              and all(per_task(pre.get(k)) for k in ("alone", "hurt", "inflicted"))
              and all(isinstance(m, list) and len(m) == len(tasks)
                      and all(isinstance(r, list) and len(r) == len(tasks) and all(number(v) for v in r) for r in m)
                      for m in (pre["cost"], pre.get("pair"))))
        return pre if ok else None

    def pairs_stored(self, mode: str, tasks: Sequence[str] | None = None) -> bool:
        """Whether :meth:`pairs` for these tasks is served from the bundle (instant) rather than computed."""
        return self._stored_pairs(mode, _selection(tasks) or list(self.tasks)) is not None

    @fresh
    def pairs(self, mode: str, tasks: Sequence[str] | None = None, progress: Progress = None) -> dict:
        """Which vector costs which task at the addition's chosen α (:func:`arith.protocols.pair_costs`, test
        split; every ordered pair of ``tasks``); precomputed in bundles built since pair costs joined the build (or
        added by ``python -m arith precompute --only pairs``), else computed on demand; memoised."""
        tasks = _selection(tasks) or list(self.tasks)  # the order asked for: the matrix's rows and columns
        if len(tasks) < 2:  # before the addition sweep it needs
            raise ValueError(f"pair costs need at least two task vectors (got {tasks})")
        pre = self._stored_pairs(mode, tasks)
        if pre is not None:  # the build's matrix: no tensor is touched
            return pre
        add = self.addition(mode, tasks, progress=progress)
        vs = self._named(mode, tasks)
        from .protocols import pair_costs

        return self._memoised(("pairs", mode, tuple(tasks), float(add["alpha"])), lambda: pair_costs(
            self.evaluator(), vs, add["alpha"], progress=progress))

    @fresh
    def negation(self, mode: str, target: str, controls: Sequence[str] | None = None, progress: Progress = None) -> dict:
        """Task negation of the bundle's ``target`` vector in ``mode`` (θ0 − λ τ, λ chosen on validation; the other
        tasks, or ``controls``, as control): precomputed when the bundle has it, else computed and memoised."""
        controls = self._controls(target, controls)
        ready = self.cached_negation(mode, target, controls)
        if ready is not None:
            return ready
        tv = self._named(mode, [target])[target]
        from .protocols import task_negation

        return self._memoised(("neg", mode, target, tuple(controls)),
                              lambda: task_negation(self.evaluator(), tv, target, controls, progress=progress))

    @fresh
    def tune(self, mode: str, tasks: Sequence[str] | None = None, progress: Progress = None,
             method: str = "task_arithmetic") -> dict:
        """One λ per task, chosen on validation by coordinate ascent from the shared α of :meth:`addition`
        (:func:`arith.protocols.tune_coefficients`), visiting the tasks in the bundle's order; memoised."""
        tasks, method = self._in_order(tasks), canonical_method(method)
        add = self.addition(mode, tasks, progress=progress, method=method)
        vs = self._named(mode, tasks)
        from .protocols import tune_coefficients

        return self._memoised(("tune", mode, tuple(tasks), method), lambda: tune_coefficients(
            self.evaluator(), vs, add["alpha"], method=method, progress=progress,
            finetuned=add.get("finetuned")))

    @fresh
    def cached_negation(self, mode: str, target: str, controls: Sequence[str] | None = None) -> dict | None:
        """What :meth:`negation` would return if it is available without computing (precomputed or memoised)."""
        controls = self._controls(target, controls)
        pre = self._precomputed("negation", mode, target, need=NEGATION_FIELDS) if mode in self.modes else None
        if pre and pre.get("controls") == controls and self.uses_all_images:
            return pre
        return self._memo.get(("neg", mode, target, tuple(controls)))


    def _controls(self, target: str, controls: Sequence[str] | None) -> list[str]:
        """Negation's control tasks: ``controls`` (default: every other task) without the target; an error when none
        is left, or one is no task of the bundle."""
        controls = None if controls is None else [controls] if isinstance(controls, str) else list(controls)
        unknown = [c for c in controls or () if c not in self.tasks]
        if unknown:
            raise ValueError(f"control task {unknown[0]!r} is not in the bundle; its tasks: {', '.join(self.tasks)}")
        left = [c for c in (self.tasks if controls is None else controls) if c != target]
        if not left:
            raise ValueError(f"negating {target!r} needs a control task other than {target!r} itself "
                             "(the controls must keep their accuracy)")
        return left


def _elsewhere(names: Sequence[str], extra: Mapping[str, TaskVector] | None) -> str:
    """For an error about missing names: which of them are ``extra`` vectors of another mode (shown there)."""
    other = {n: extra[n].mode for n in names if extra and n in extra}
    return "".join(f"; {n!r} is a vector of mode {m}, shown there" for n, m in other.items())


def _selection(tasks: str | Sequence[str] | None) -> list[str] | None:
    """Tasks as asked for: None (every task), one name (itself, not its letters) or names; an empty selection is an
    error, not a request for every task."""
    if tasks is None:
        return None
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    if not tasks:
        raise ValueError("no tasks selected (leave the argument out, or pass None, for every task)")
    return tasks


def _own(mode: str, extra: Mapping[str, TaskVector] | None) -> dict[str, TaskVector]:
    """The ``extra`` vectors (a session's workspace) of ``mode``."""
    return {n: tv for n, tv in (extra or {}).items() if tv.mode == mode}
