"""The results tables (arith/report.py) on hand-written results, every expected cell worked out by hand."""

from types import SimpleNamespace

import pytest

from arith.report import interference_curve, pair_matrix_rows, pair_summary_rows, results_rows


def test_results_row_takes_each_column_from_its_own_result():
    res = {"accuracy": {"zeroshot": {"test": {"A": 0.2, "B": 0.4}},
                        "finetuned": {"attn": {"test": {"A": 0.9, "B": 0.7}}}},
           "addition": {"attn": {"alpha": 0.3, "absolute": 0.6, "normalized": 0.75}},
           "negation": {"attn": {"A": {"target": 0.1, "control": 0.5, "zeroshot_target": 0.2},
                                 "B": {"target": 0.3, "control": 0.7, "zeroshot_target": 0.4}}},
           "disentanglement": {"attn": {"A|B": {"mean": {"prediction": 0.2}}, "A|C": {"mean": {"prediction": 0.4}}}},
           "kernel": {"attn": {"A": {"at_1": {"agreement": 0.9}, "path": [{"s": 1.5, "agreement": 0.1}]},
                               "B": {"at_1": {"agreement": 0.7}, "path": [{"s": 1.5, "agreement": 0.2}]}}}}
    (row,) = results_rows(SimpleNamespace(results=res, modes=["attn"], finetune_config=lambda m: None))
    assert row["zero-shot"] == pytest.approx(0.3) and row["single-task"] == pytest.approx(0.8)
    assert (row["addition α"], row["addition abs"], row["addition norm"]) == (0.3, 0.6, 0.75)
    assert row["negation target"] == pytest.approx(0.2) and row["negation control"] == pytest.approx(0.6)
    assert row["mean ξ"] == pytest.approx(0.3) and row["kernel agreement"] == pytest.approx(0.8)


PAIRS = {"tasks": ["A", "B", "C"], "alpha": 0.5, "cost": [[0.0, 0.1, 0.3], [0.2, 0.0, 0.0], [0.4, 0.1, 0.0]],
         "hurt": {"A": 0.4, "B": 0.2, "C": 0.5}, "inflicted": {"A": 0.6, "B": 0.2, "C": 0.3}, "additive_cost": 1.1 / 3}


def test_pair_summary_names_the_vector_then_the_task_it_hurts():
    (row,) = pair_summary_rows({"attn": PAIRS})
    # cost[2][0] = 0.4: adding τ_A costs task C the most
    assert row["costliest pair"] == "A → C" and row["its cost"] == 0.4
    assert (row["costliest vector"], row["inflicted"]) == ("A", 0.6)
    assert (row["most hurt task"], row["hurt"]) == ("C", 0.5)


def test_pair_matrix_rows_are_tasks_hurt_and_columns_vectors_added():
    rows = pair_matrix_rows(PAIRS)
    assert rows[2] == {"task hurt / τ added": "C", "A": 0.4, "B": 0.1, "C": None, "Σ (hurt)": 0.5}
    assert rows[-1] == {"task hurt / τ added": "Σ (inflicted)", "A": 0.6, "B": 0.2, "C": 0.3, "Σ (hurt)": None}


def test_interference_curve_is_alone_minus_merged_at_every_alpha():
    add = {"tasks": ["A"], "curve": [{"alpha": 0.0, "test": {"absolute": 0.5, "normalized": 0.6}},
                                     {"alpha": 0.5, "test": {"absolute": 0.25, "normalized": 0.5}}]}
    alone = {"tasks": ["A"], "curve": [{"alpha": 0.0, "test": {"absolute": 0.5, "normalized": 0.6}},
                                       {"alpha": 0.5, "test": {"absolute": 0.75, "normalized": 1.0}}]}
    assert interference_curve(add, alone) == [{"alpha": 0.0, "absolute": 0.0, "normalized": 0.0},
                                              {"alpha": 0.5, "absolute": 0.5, "normalized": 0.5}]


def test_a_views_kept_share_is_the_mean_ratio_of_squared_norms():
    from arith.parts import _kept

    norms = {"full": {"A": 5.0, "B": 2.0}, "full@attn": {"A": 3.0, "B": 1.0}}
    ex = SimpleNamespace(vectors=lambda name: {t: SimpleNamespace(norm=lambda n=n: n) for t, n in norms[name].items()})
    assert _kept(ex, "full@attn") == pytest.approx((9 / 25 + 1 / 4) / 2)  # ‖τ‖² kept, per task, then averaged
    assert _kept(ex, "full") is None  # a plain mode keeps everything: no share to show


def test_xi_pairs_are_the_plans_first_pairs_of_tasks():
    from arith.parts import xi_pairs

    def ex(plan):
        return SimpleNamespace(tasks=("A", "B", "C"), index=SimpleNamespace(manifest={"plan": plan}))

    assert xi_pairs(ex({"xi_pairs": 2})) == [("A", "B"), ("A", "C")]
    assert xi_pairs(ex({"xi_pairs": 1})) == [("A", "B")]
    assert xi_pairs(ex({})) == [("A", "B"), ("A", "C"), ("B", "C")]  # the default, 6, takes every pair of three
