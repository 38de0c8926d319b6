"""The Explorer's memo: every input of an answer is in its key.  Each case asks one question, then the same question
with one input changed, and the second answer must be what a fresh Explorer gives (not the first one again)."""

from __future__ import annotations

import pytest

from arith.explore import Explorer
from arith.taskvec import TaskVector

N = 6  # images per task: a subset, so that answers are computed (the bundle's stored results cover all images)


def _ask(ex, bundle, case):
    t0, t1, t2 = bundle.task_names[:3]
    return {
        "split": (lambda: ex.evaluate("attn", {t0: 0.3}, split="test"),
                  lambda: ex.evaluate("attn", {t0: 0.3}, split="val")),
        "method": (lambda: ex.evaluate("full", {t0: 0.5, t1: 0.5}),
                   lambda: ex.evaluate("full", {t0: 0.5, t1: 0.5}, method="ties:density=0.2")),
        "tasks": (lambda: ex.evaluate("attn", {t0: 0.3}, tasks=[t0, t1]),
                  lambda: ex.evaluate("attn", {t0: 0.3}, tasks=[t0, t2])),
        "mode": (lambda: ex.evaluate("attn", {t0: 1.0}), lambda: ex.evaluate("full", {t0: 1.0})),
        "λ to 4 decimals": (lambda: ex.evaluate("full", {t0: 0.251}), lambda: ex.evaluate("full", {t0: 0.349})),
        "finetuned split": (lambda: ex.finetuned("attn", "test"), lambda: ex.finetuned("attn", "val")),
        "zero-shot split": (lambda: ex.zeroshot("test"), lambda: ex.zeroshot("val")),
        "negation controls": (lambda: ex.negation("full", t0, [t1]), lambda: ex.negation("full", t0, [t2])),
        "ξ tasks": (lambda: ex.xi("full", t0, t1, [0.0, 1.0]), lambda: ex.xi("full", t0, t2, [0.0, 1.0])),
        "ξ at a length": (lambda: ex.xi("full", t0, t1, [1.0], length=0.05),
                          lambda: ex.xi("full", t1, t0, [1.0], length=0.05)),
        "kernel task": (lambda: ex.kernel("attn", t0), lambda: ex.kernel("attn", t1)),
        "addition method": (lambda: ex.addition("full"), lambda: ex.addition("full", method="ties:density=0.2")),
        "tune method": (lambda: ex.tune("attn"), lambda: ex.tune("attn", method="ties:density=0.2")),
        # a uid names content only: the same tensors scored on another task's head are another question
        "ξ of a vector on another task": (lambda: ex.xi("full", t0, t1, [0.0, 1.0]),
                                           lambda: ex.xi("full", t0, "x", [0.0, 1.0], extra=_as(bundle, "full", t1, t2))),
        "kernel of a vector on another task": (lambda: ex.kernel("attn", t0),
                                               lambda: ex.kernel("attn", "x", extra=_as(bundle, "attn", t0, t1))),
    }[case]


def _as(bundle, mode, task, other):
    """A workspace vector named "x": ``task``'s vector in ``mode``, labelled as a vector of ``other``."""
    tv = bundle.vectors[mode][task]
    return {"x": TaskVector(dict(tv.tensors), other, tv.mode, tv.base_id, dict(tv.meta))}


@pytest.mark.parametrize("case", ["split", "method", "tasks", "mode", "λ to 4 decimals", "finetuned split",
                                  "zero-shot split", "negation controls", "ξ tasks", "ξ at a length", "kernel task",
                                  "addition method", "tune method", "ξ of a vector on another task",
                                  "kernel of a vector on another task"])
def test_a_changed_input_is_not_served_the_memoised_answer(bundle, case):
    ex = Explorer(bundle, max_per_task=N)
    first, second = _ask(ex, bundle, case)
    first()
    got = second()
    fresh = Explorer(bundle, max_per_task=N)
    _, again = _ask(fresh, bundle, case)
    assert got == again()


def test_xi_at_a_length_scales_each_vector_to_that_length(bundle):
    ex = Explorer(bundle, max_per_task=N)
    t0, t1 = bundle.task_names[:2]
    res = ex.xi("full", t0, t1, [1.0], length=0.05)
    for a, t in ((res["alpha1"][0], t0), (res["alpha2"][0], t1)):
        assert a * bundle.vectors["full"][t].norm() == pytest.approx(0.05 * ex.theta0_norm, rel=1e-6)


def test_xi_grids_use_the_fewer_of_the_builds_and_the_explorers_images(copy):
    from conftest import manifest, write_manifest

    m = manifest(copy)
    m.setdefault("plan", {})["xi_eval_n"] = 10
    write_manifest(copy, m)
    assert [Explorer.open(str(copy), max_per_task=n)._xi_n() for n in (None, 4, 20)] == [10, 4, 10]
