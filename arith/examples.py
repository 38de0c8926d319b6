"""The :class:`~arith.explore.Explorer`'s per-image answers: what a merged model predicts on each evaluation image of
one task, beside θ0's and the task's own fine-tuned model's predictions, and the images themselves.

Accuracy (method.md §3) is a net figure: a merge that moves a task from 80 % to 85 % may have fixed 120 images and
broken 70.  This module counts both (``fixed``: θ0 wrong, the merge right; ``broken``: the reverse; their difference
is the change in correct images) and draws the merged model's confusion matrix, so a user can look at which images
and which classes a task vector helps or costs.  A mixin, like :mod:`arith.explore_diagnostics`: it uses the
Explorer's ``_checked_coefs``, ``_merge_order``, ``alone_names``, ``vectors``, ``evaluator``, ``bundle``, ``index``,
``max_per_task`` and ``_examples``.  Nothing a caller passes is stored; results are memoised by content, and every
answer is built anew for its caller.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .lru import LRU
from .merge import canonical_method

if TYPE_CHECKING:
    import numpy as np

    from .taskvec import TaskVector


def new_memo() -> LRU:
    """The Explorer's memo of per-image answers: bounded in entries and in the bytes of their arrays."""
    return LRU(64, max_bytes=256 * 2**20,
               sizeof=lambda hit: sum(getattr(v, "nbytes", 0) for v in hit.values()))


class Examples:
    """Per-image predictions of merged models, for an Explorer (its ``_examples`` is a :func:`new_memo`)."""

    def _check_task(self, task: str, split: str) -> None:
        if task not in self.tasks:
            raise KeyError(f"no evaluation images of task {task!r}; this bundle has images of {', '.join(self.tasks)}")
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")

    def predictions(self, mode: str, coefs: Mapping[str, float], task: str, split: str = "test",
                    extra: Mapping[str, TaskVector] | None = None, method: str = "task_arithmetic") -> dict:
        """What the merged model θ0 + δ(λ) in ``mode`` (merged by ``method``; a linearized mode's merge is its
        linear model, as in :meth:`evaluate`) predicts on each evaluation image of ``task``: the images the
        accuracies use, in the order :meth:`images` returns them.

        Returns ``classes`` (the task's class names); per image ``labels``, ``base`` (θ0), ``merged`` and ``alone``
        (the task's own vector at λ = 1, the normaliser of normalized accuracy; None when ``mode`` has no vector
        of the task) as class indices, and ``confidence`` (the merged model's softmax probability of its
        prediction under the task's frozen head); ``counts``: ``n``, ``base``/``merged``/``alone`` correct,
        ``fixed`` (θ0 wrong, the merge right) and ``broken`` (θ0 right, the merge wrong), so that ``merged`` −
        ``base`` = ``fixed`` − ``broken``; ``confusion`` and ``confusion_base``: the merged model's and θ0's counts,
        rows the true class, columns the predicted one; ``per_class``: over the classes with images here, their
        ``classes``, ``n`` images and the ``base``, ``merged`` and ``alone`` accuracies.  Coefficients are checked
        and rounded as :meth:`evaluate` does.
        """
        self._check_task(task, split)
        coefs = self._checked_coefs(mode, coefs, extra)
        method = canonical_method(method)
        vs = self.vectors(mode, extra)
        alone = self.alone_names(mode, extra).get(task)
        # every vector of the mode in the key, as evaluate's: a workspace vector named after the task replaces
        # the bundle's as its own model
        key = ("pred", mode, split, task, method, tuple(sorted((k, v) for k, v in coefs.items() if v != 0)),
               tuple(sorted((n, tv.uid, tv.task) for n, tv in vs.items())))

        def compute() -> dict:
            names = self._merge_order(coefs, vs)
            return self._predict(task, split, [vs[n] for n in names], [coefs[n] for n in names], method,
                                 vs[alone] if alone is not None else None)

        hit = self._examples.get(key)
        hit = hit if hit is not None else self._examples.put(key, compute())
        # the memo holds arrays (a real bundle's task may have 20,000 images and 397 classes); the caller gets lists
        out = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in hit.items()}
        out.update({"counts": dict(hit["counts"]), "classes": list(hit["classes"]), "task": task, "mode": mode,
                    "per_class": copy.deepcopy(hit["per_class"]),
                    "split": split, "method": method, "coefficients": {k: float(v) for k, v in coefs.items()},
                    "alone_vector": alone})
        return out

    def _predict(self, task: str, split: str, vectors: list[TaskVector], coefs: list[float], method: str,
                 alone: TaskVector | None) -> dict:
        import torch

        ev = self.evaluator()
        head = ev.heads[task]
        labels = ev.labels(split, task)
        with torch.no_grad():
            probs = torch.softmax(head.logits(ev.merged_features(vectors, coefs, split, [task], method)), dim=-1)
            confidence, merged = probs.max(dim=-1)
            base = head.predict(ev.merged_features([], [], split, [task]))
            own = None if alone is None else head.predict(ev.merged_features([alone], [1.0], split, [task]))
        right = {"base": base == labels, "merged": merged == labels}
        counts = {"n": len(labels), **{k: int(v.sum()) for k, v in right.items()},
                  "alone": None if own is None else int((own == labels).sum()),
                  "fixed": int((~right["base"] & right["merged"]).sum()),
                  "broken": int((right["base"] & ~right["merged"]).sum())}
        c = head.num_classes

        def confusion(pred):  # counts of (true class, predicted class), row-major
            return torch.bincount(labels * c + pred, minlength=c * c).reshape(c, c).int().cpu().numpy()

        def ints(t):
            return t.int().cpu().numpy()

        # accuracy per class, over the classes with images here: right / images of the class
        names = tuple(self.index.tasks[task].classnames)
        per = torch.bincount(labels, minlength=c)
        seen = [i for i in range(c) if per[i] > 0]

        def per_class(pred):
            right = torch.bincount(labels[pred == labels], minlength=c)
            return [float(right[i]) / float(per[i]) for i in seen]

        return {"classes": names, "labels": ints(labels), "base": ints(base),
                "merged": ints(merged), "alone": None if own is None else ints(own),
                "confidence": confidence.float().cpu().numpy(), "counts": counts, "confusion": confusion(merged),
                "confusion_base": confusion(base),
                "per_class": {"classes": [names[i] for i in seen], "n": [int(per[i]) for i in seen],
                              "base": per_class(base), "merged": per_class(merged),
                              "alone": None if own is None else per_class(own)}}

    def images(self, task: str, split: str = "test", rows: Sequence[int] | None = None) -> np.ndarray:
        """uint8 [n, H, W, 3] copies of ``task``'s evaluation images in ``split`` (those in use: the first
        ``max_per_task``), all or the given ``rows``, in the order :meth:`predictions` answers for them."""
        self._check_task(task, split)
        images = self.bundle.data[task][split].head(self.max_per_task).images
        if rows is not None:
            rows = list(rows)
            odd = [r for r in rows if isinstance(r, bool) or not isinstance(r, numbers.Integral)]
            if odd:
                raise TypeError(f"image rows are whole numbers, not {odd[0]!r}")
            rows = [int(r) for r in rows]
            bad = [r for r in rows if not 0 <= r < len(images)]
            if bad:
                raise IndexError(f"task {task!r} has {len(images)} {split} images in use; no row {bad[0]}")
            images = images[rows]
        return images.permute(0, 2, 3, 1).cpu().numpy().copy()


# which images a page or command lists: (label, what it holds)
SHOWN = {"all": "every image", "fixed": "θ0 wrong, the edited model right", "broken": "θ0 right, the edited model wrong",
         "wrong": "the edited model wrong", "changed": "the edited model predicts another class than θ0"}


# the order they are listed in: (label, what it is)
ORDERS = {"split": "the split's order", "confident": "the edited model's most confident first",
          "unsure": "the edited model's least confident first"}


def rows_where(pred: Mapping, which: str = "all", order: str = "split") -> list[int]:
    """The rows of a :meth:`Examples.predictions` answer that are ``which`` (a key of :data:`SHOWN`), in ``order``
    (a key of :data:`ORDERS`: by the edited model's probability of its prediction, ties in the split's order).
    Wrong images, most confident first, are the edited model's confident mistakes."""
    if which not in SHOWN:
        raise ValueError(f"which images: one of {', '.join(SHOWN)}, not {which!r}")
    if order not in ORDERS:
        raise ValueError(f"order: one of {', '.join(ORDERS)}, not {order!r}")
    y, b, m, p = pred["labels"], pred["base"], pred["merged"], pred["confidence"]
    keep = {"all": lambda i: True, "fixed": lambda i: b[i] != y[i] and m[i] == y[i],
            "broken": lambda i: b[i] == y[i] and m[i] != y[i], "wrong": lambda i: m[i] != y[i],
            "changed": lambda i: m[i] != b[i]}[which]
    rows = [i for i in range(len(y)) if keep(i)]
    if order != "split":
        rows.sort(key=lambda i: -p[i] if order == "confident" else p[i])  # stable: ties keep the split's order
    return rows


def prediction_rows(pred: Mapping) -> list[dict]:
    """A :meth:`Examples.predictions` answer as one row per image: its row among the split's images in use, its class,
    θ0's, the edited model's (with its probability) and the own model's predicted class by name, and ``fixed`` or
    ``broken`` against θ0.  The table a CSV file holds."""
    names, y = pred["classes"], pred["labels"]
    alone = pred["alone"]
    change = {i: which for which in ("fixed", "broken") for i in rows_where(pred, which)}
    rows = []
    for i, label in enumerate(y):
        row = {"image": i, "class": names[label], "theta0": names[pred["base"][i]], "edited": names[pred["merged"][i]],
               "edited_confidence": round(float(pred["confidence"][i]), 6), "change": change.get(i, "")}
        if alone is not None:
            row["own_model"] = names[alone[i]]
        rows.append(row)
    return rows
