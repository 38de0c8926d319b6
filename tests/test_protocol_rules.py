"""The protocols' selection rules (method.md §3) on a stub evaluator whose accuracies are a table written by hand.

Each table is built so that one wrong rule (the split a choice is made on, the normaliser, the control threshold
and its comparison, a tie-break, the sign of a negation) picks a different coefficient or reports a different
number; the expected values are worked out in the comments, not read off the code's output.  No network runs.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from arith.metrics import summarize
from arith.protocols import alone_curve, interference, pair_costs, task_addition, task_negation, tune_coefficients


class StubEvaluator:
    """``evaluate`` looks the accuracies up in ``table[(split, coefs)]`` (coefs: the tuple of coefficients, the
    vectors' tasks as a prefix when ``by_tasks``); ``zeroshot`` is the row at coefficient 0."""

    autocast = None

    def __init__(self, table, finetuned=None, by_tasks=False):
        self.table, self._finetuned, self.by_tasks = table, finetuned, by_tasks

    def _row(self, vectors, coefs, split):
        key = tuple(float(c) + 0.0 for c in coefs)  # -0.0 -> 0.0
        if self.by_tasks:
            key = (tuple(v.task for v in vectors), key)
        return self.table[(split, key)]

    def evaluate(self, vectors, coefs, split="test", tasks=None, method="task_arithmetic"):
        row = self._row(vectors, coefs, split)
        return {t: row[t] for t in (tasks or row)}

    def zeroshot(self, split="test", tasks=None):
        row = self.table[(split, (0.0,))]
        return {t: row[t] for t in (tasks or row)}

    def finetuned(self, vectors, split="test"):
        return dict(self._finetuned[split])


def _vec(task):
    return SimpleNamespace(task=task, linearized=False)


# -- negation: θ0 − λτ, λ minimising target validation accuracy with the controls' mean ≥ 0.95 × their zero-shot ----
def _negation_table():
    # validation: controls C1, C2 start at 1.0 (floor 0.95 exactly); test zero-shot controls are 0.5 (a floor taken
    # from test would be 0.475 and let λ = 1 through)
    val = {0.0: (0.8, 1.0, 1.0), -0.25: (0.6, 0.99, 0.99), -0.5: (0.4, 0.95, 0.95),  # 0.5: exactly at the floor
           -0.75: (0.2, 0.91, 0.91),  # allowed by a 0.9 ratio, not by 0.95
           -1.0: (0.1, 0.5, 0.5)}
    test = {0.0: (0.6, 0.5, 0.5), -0.5: (0.3, 0.45, 0.35), 0.5: (0.9, 0.2, 0.2), -1.0: (0.05, 0.1, 0.1),
            -0.75: (0.1, 0.3, 0.3)}
    # adding τ (λ > 0 passed as +λ) raises the target: a sign slip never finds the low target
    for a in (0.25, 0.5, 0.75, 1.0):
        val[a] = (0.9, 1.0, 1.0)
    table = {}
    for split, rows in (("val", val), ("test", test)):
        for c, (t, c1, c2) in rows.items():
            table[(split, (c,))] = {"T": t, "C1": c1, "C2": c2}
    return table


ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def test_negation_chooses_the_lowest_target_that_keeps_95_percent_of_the_controls_on_validation():
    ev = StubEvaluator(_negation_table())
    res = task_negation(ev, _vec("T"), "T", ["T", "C1", "C2"], alphas=ALPHAS)
    # λ = 0.5 keeps the controls at exactly 0.95 × 1.0 (≥, not >); λ = 0.75 (0.91) and λ = 1 (0.5) break it
    assert res["alpha"] == 0.5
    assert res["controls"] == ["C1", "C2"] and res["constraint_met"] is True
    # reported on test at −0.5: target 0.3, controls' mean (0.45 + 0.35) / 2
    assert res["target"] == 0.3 and res["control"] == pytest.approx(0.4)
    assert res["zeroshot_target"] == 0.6 and res["zeroshot_control"] == pytest.approx(0.5)
    # the validation curve: θ0 − λτ at each λ
    assert [r["val"]["target"] for r in res["curve"]] == [0.8, 0.6, 0.4, 0.2, 0.1]
    assert [r["val"]["control"] for r in res["curve"]] == pytest.approx([1.0, 0.99, 0.95, 0.91, 0.5])


def test_negation_that_only_lambda_zero_satisfies_reports_the_constraint_unmet():
    ev = StubEvaluator(_negation_table())
    res = task_negation(ev, _vec("T"), "T", ["C1", "C2"], alphas=(0.0, 1.0))  # λ = 1 breaks the controls
    assert res["alpha"] == 0.0 and res["constraint_met"] is False
    assert res["target"] == 0.6  # θ0 on test


# -- task addition: one shared α chosen by mean normalized *validation* accuracy (val normalisers) ----------------
def _addition_stub():
    ft = {"val": {"A": 1.0, "B": 0.5}, "test": {"A": 0.5, "B": 1.0}}
    val = {0.0: (0.75, 0.1875),  # abs 0.46875 (the best absolute), norm (0.75 + 0.375) / 2 = 0.5625
           0.5: (0.5, 0.375),  # abs 0.4375, norm (0.5 + 0.75) / 2 = 0.625: the best
           1.0: (0.25, 0.5)}  # abs 0.375, norm (0.25 + 1.0) / 2 = 0.625: a tie, the smaller α wins
    # with test normalisers the val rows would score 0.84375, 0.6875, 0.5: α = 0
    test = {0.0: (0.25, 0.25), 0.5: (0.25, 0.5), 1.0: (0.5, 1.0)}  # test norm 0.375, 0.5, 1.0: α = 1 on test
    table = {}
    for split, rows in (("val", val), ("test", test)):
        for a, (x, y) in rows.items():
            table[(split, (a, a))] = {"A": x, "B": y}
    return StubEvaluator(table, ft)


def test_task_addition_selects_alpha_on_validation_normalized_accuracy_and_reports_test():
    ev = _addition_stub()
    res = task_addition(ev, {"A": _vec("A"), "B": _vec("B")}, alphas=(0.0, 0.5, 1.0))
    assert res["alpha"] == 0.5
    assert res["val_normalized"] == 0.625
    # test at α = 0.5: A 0.25 / 0.5, B 0.5 / 1.0
    assert res["absolute"] == 0.375 and res["normalized"] == 0.5
    assert res["accuracy"] == {"A": 0.25, "B": 0.5}
    assert [r["val"]["normalized"] for r in res["curve"]] == [0.5625, 0.625, 0.625]
    assert [r["test"]["normalized"] for r in res["curve"]] == [0.375, 0.5, 1.0]


def test_summarize_divides_each_task_by_its_own_normaliser():
    s = summarize({"A": 0.5, "B": 0.25, "C": 0.9}, {"A": 1.0, "B": 0.5, "C": 0.9})
    assert s["absolute"] == pytest.approx(0.55)
    assert s["normalized"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)


# -- per-task coefficients: only a strict improvement moves a λ ------------------------------------------------
def test_tuning_moves_a_coefficient_only_on_a_strict_improvement():
    ft = {"val": {"A": 1.0, "B": 1.0}, "test": {"A": 1.0, "B": 1.0}}
    table = {}
    for la in (0.0, 0.5, 1.0):
        for lb in (0.0, 0.5, 1.0):
            # A's accuracy depends on λ_A only: 0.25, 0.5, 0.5 (λ_A = 1 ties the start 0.5); B's on λ_B: 0.5 at 0.5,
            # 0.75 at 1.0 (a strict gain), 0.25 at 0
            acc = {"A": {0.0: 0.25, 0.5: 0.5, 1.0: 0.5}[la], "B": {0.0: 0.25, 0.5: 0.5, 1.0: 0.75}[lb]}
            for split in ("val", "test"):
                table[(split, (la, lb))] = acc
    ev = StubEvaluator(table, ft)
    res = tune_coefficients(ev, {"A": _vec("A"), "B": _vec("B")}, 0.5, grid=(0.0, 0.5, 1.0), rounds=5)
    assert res["coefficients"] == {"A": 0.5, "B": 1.0}
    assert res["start_val_normalized"] == 0.5 and res["val_normalized"] == pytest.approx(0.625)
    assert [(m["task"], m["coef"]) for m in res["moves"]] == [("B", 1.0)]
    assert res["converged"] and res["rounds"] == 2


# -- each task alone and the interference it gives ------------------------------------------------------------
def test_alone_curve_scores_each_split_on_that_split_and_interference_subtracts_merged_from_alone():
    ft = {"val": {"A": 1.0, "B": 1.0}, "test": {"A": 0.8, "B": 0.6}}
    table = {}
    # alone: one vector, keyed by its task; merged: both vectors
    alone = {("val", 0.0): (0.3, 0.2), ("val", 0.5): (0.7, 0.5), ("test", 0.0): (0.1, 0.1), ("test", 0.5): (0.6, 0.4)}
    merged = {("val", 0.0): (0.3, 0.2), ("val", 0.5): (0.6, 0.3), ("test", 0.0): (0.1, 0.1), ("test", 0.5): (0.4, 0.3)}
    for (split, a), (x, y) in alone.items():
        table[(split, (("A",), (a,)))] = {"A": x, "B": -1.0}
        table[(split, (("B",), (a,)))] = {"A": -1.0, "B": y}
    for (split, a), (x, y) in merged.items():
        table[(split, (("A", "B"), (a, a)))] = {"A": x, "B": y}
    ev = StubEvaluator(table, ft, by_tasks=True)
    vs = {"A": _vec("A"), "B": _vec("B")}
    al = alone_curve(ev, vs, alphas=(0.0, 0.5))
    assert al["curve"][1]["val"]["accuracy"] == {"A": 0.7, "B": 0.5}
    assert al["curve"][1]["test"]["accuracy"] == {"A": 0.6, "B": 0.4}
    add = task_addition(ev, vs, alphas=(0.0, 0.5))
    assert add["alpha"] == 0.5  # val norm 0.25 at 0, 0.45 at 0.5
    gap = interference(add, al)
    # test at α = 0.5: alone (0.6 + 0.4) / 2 = 0.5, merged (0.4 + 0.3) / 2 = 0.35, single-task (0.8 + 0.6) / 2 = 0.7
    assert gap["alone_absolute"] == pytest.approx(0.5) and gap["merged_absolute"] == pytest.approx(0.35)
    assert gap["cost_of_others"] == pytest.approx(0.15)  # alone − merged: positive when the others hurt
    assert gap["cost_of_alpha"] == pytest.approx(0.2)  # single-task − alone
    assert gap["per_task"] == {"A": {"alone": 0.6, "merged": 0.4}, "B": {"alone": 0.4, "merged": 0.3}}


def test_pair_costs_rows_are_the_task_hurt_and_columns_the_vector_added():
    a = 0.5
    table = {("test", (("A",), (a,))): {"A": 0.9, "B": 0.0, "C": 0.0},
             ("test", (("B",), (a,))): {"A": 0.0, "B": 0.8, "C": 0.0},
             ("test", (("C",), (a,))): {"A": 0.0, "B": 0.0, "C": 0.7}}
    # task i with τ_j added: A loses 0.1 to B and 0.3 to C; B loses 0.2 to A, nothing to C; C loses 0.4 to A, 0.1 to B
    pair = {("A", "B"): 0.8, ("A", "C"): 0.6, ("B", "A"): 0.6, ("B", "C"): 0.8, ("C", "A"): 0.3, ("C", "B"): 0.6}
    for (i, j), acc in pair.items():
        table[("test", ((i, j), (a, a)))] = {i: acc, j: -1.0}
    ev = StubEvaluator(table, by_tasks=True)
    p = pair_costs(ev, {t: _vec(t) for t in "ABC"}, a)
    want = [[0.0, 0.1, 0.3], [0.2, 0.0, 0.0], [0.4, 0.1, 0.0]]
    assert [c for row in p["cost"] for c in row] == pytest.approx([c for row in want for c in row])
    assert p["hurt"] == pytest.approx({"A": 0.4, "B": 0.2, "C": 0.5})
    assert p["inflicted"] == pytest.approx({"A": 0.6, "B": 0.2, "C": 0.3})
    assert p["additive_cost"] == pytest.approx((0.4 + 0.2 + 0.5) / 3)
