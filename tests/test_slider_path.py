"""The slider path's shortcuts give exactly what computing gives: requests answered from the precomputed task-addition
sweep, repeats answered from the memo."""

from __future__ import annotations

import pytest

from arith.explore import Explorer
from arith.protocols import ALPHAS

from conftest import TASKS


@pytest.fixture
def computing(monkeypatch):
    """Explorer.evaluate without the precomputed-sweep shortcut (the unoptimised path)."""
    def make(bundle):
        ex = Explorer(bundle)
        monkeypatch.setattr(ex, "_from_addition", lambda *a, **k: None)
        return ex
    return make


@pytest.mark.parametrize("split", ["test", "val"])
def test_shared_alpha_requests_equal_the_computed_results(bundle, computing, split):
    fast, slow = Explorer(bundle), computing(bundle)
    hits = 0
    for mode in bundle.modes:
        for alpha in (ALPHAS[0], ALPHAS[3], bundle.results["addition"][mode]["alpha"], ALPHAS[-1]):
            coefs = {t: alpha for t in TASKS}
            assert fast._from_addition(mode, coefs, split, list(TASKS), "task_arithmetic")
            hits += 1
            got, ref = fast.evaluate(mode, coefs, split), slow.evaluate(mode, coefs, split)
            assert got == ref, (mode, alpha)
    assert hits == 4 * len(bundle.modes)


def test_other_requests_are_computed(bundle):
    ex = Explorer(bundle)
    vs = ex.vectors("attn")
    tasks = list(TASKS)
    a = ALPHAS[4]
    coefs = {t: a for t in TASKS}
    # the control: one shared α over the bundle's own vectors is a row of the sweep (each case below changes one thing)
    assert ex._from_addition("attn", coefs, "test", tasks, "task_arithmetic", None) is not None
    for other in ({TASKS[0]: a, TASKS[1]: a},  # not every vector
                  {TASKS[0]: a, TASKS[1]: a, TASKS[2]: a + 0.01},  # not one shared α
                  {t: 0.33 for t in TASKS},  # not on the sweep's grid
                  {t: -a for t in TASKS},  # negative
                  {TASKS[0]: a, TASKS[1]: a, TASKS[2]: 0.0}):  # one of them off
        assert ex._from_addition("attn", other, "test", tasks, "task_arithmetic", None) is None, other
    assert ex._from_addition("attn", coefs, "test", tasks[:2], "task_arithmetic", None) is None  # a task subset
    assert ex._from_addition("attn", coefs, "test", tasks, "ties", None) is None  # another merge method
    mine = {TASKS[0]: 2.0 * vs[TASKS[0]]}  # an uploaded vector replacing a bundle task's
    assert ex._from_addition("attn", coefs, "test", tasks, "task_arithmetic", mine) is None
    small = Explorer(bundle, max_per_task=8)  # an evaluation subset: the sweep does not apply
    assert small._from_addition("attn", coefs, "test", tasks, "task_arithmetic", None) is None


def test_repeats_and_rounding_share_the_memo(bundle):
    ex = Explorer(bundle)
    coefs = {TASKS[0]: 0.35, TASKS[1]: -1.2}
    first = ex.evaluate("full", coefs)
    n = len(ex._memo)
    again = ex.evaluate("full", {TASKS[0]: 0.35000001, TASKS[1]: -1.2})
    assert again["accuracy"] == first["accuracy"] and len(ex._memo) == n


def test_spellings_of_one_merge_method_share_the_memo(bundle):
    ex = Explorer(bundle)
    coefs = {TASKS[0]: 0.6, TASKS[1]: 0.4}
    first = ex.evaluate("attn", coefs, method="ties:density=0.5")
    n = len(ex._memo)
    for spelling in ("ties: density=0.50 ,scope=tensor", "ties:scope=tensor,density=0.5000000001"):
        assert ex.evaluate("attn", coefs, method=spelling)["accuracy"] == first["accuracy"] and len(ex._memo) == n
    assert ex.evaluate("attn", coefs, method="ties:density=0.2")["accuracy"] == ex.evaluate("attn", coefs,
                                                                                             method="ties")["accuracy"]
    add = ex.addition("attn", method="ties:scope=tensor")  # canonical in the result, one sweep for both spellings
    n = len(ex._memo)
    assert add["method"] == "ties" and ex.addition("attn", method="ties") == add and len(ex._memo) == n
