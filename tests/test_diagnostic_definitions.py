"""ξ (method.md §4) written out cell by cell on a grid that is not square, against :func:`arith.disentangle.xi_grid`;
the kernel report's s = 1 rows (method.md §5) on a path where s = 1 is not the last point."""

import numpy as np
import pytest

from arith.disentangle import xi_grid
from arith.kernel import kernel_report
from arith.report import summary_row

from conftest import TASKS


@pytest.fixture(scope="module")
def ev(bundle):
    return bundle.evaluator(max_per_task=16)


def test_xi_prediction_cells_and_means_follow_the_definition_on_an_uneven_grid(bundle, ev):
    a, b = TASKS[:2]
    vs = bundle.vectors["attn"]
    a1s, a2s = [-1.0, 0.5], [0.0, 1.0, 2.0]  # rows α1 for task a, columns α2 for task b, of different lengths
    res = xi_grid(ev, vs[a], vs[b], a, b, a1s, a2s)
    n1 = len(ev.labels("test", a))

    def disagree(task, ref, got):
        h = ev.heads[task]
        return float((h.predict(ref) != h.predict(got)).float().mean())

    want = np.zeros((len(a1s), len(a2s)))
    for i, a1 in enumerate(a1s):
        for j, a2 in enumerate(a2s):
            merged = ev.merged_features([vs[a], vs[b]], [a1, a2], "test", [a, b])
            want[i, j] = (disagree(a, ev.merged_features([vs[a]], [a1], "test", [a]), merged[:n1])
                          + disagree(b, ev.merged_features([vs[b]], [a2], "test", [b]), merged[n1:]))
    assert res["alpha1"] == a1s and res["alpha2"] == a2s
    assert np.array(res["prediction"]) == pytest.approx(want)
    assert want.max() > 0 and want.min() < want.max()  # the grid measures something, and not one value everywhere
    # the summary is the mean over the grid's cells, of both variants
    assert res["mean"]["prediction"] == pytest.approx(want.mean())
    assert res["mean"]["representation"] == pytest.approx(np.mean(res["representation"]))


def test_kernel_report_and_its_summary_take_the_rows_at_s_1_not_the_paths_last(bundle, ev):
    t = TASKS[0]
    rep = kernel_report(ev, bundle.vectors["full"][t], t, path=(1.0, 1.5), subsets=("attention",))
    assert rep["at_1"]["s"] == 1.0 and rep["at_1"] == rep["path"][0]
    sub = rep["restricted"]["attention"]["path"]
    assert [r["s"] for r in sub] == [1.0, 1.5] and sub[0]["rel_error_logits"] != sub[1]["rel_error_logits"]
    row = summary_row(rep)
    assert row["s"] == 1.0 and row["rel_error_logits"] == rep["path"][0]["rel_error_logits"]
    assert row["attention_rel_error_logits"] == sub[0]["rel_error_logits"]
    assert row["attention_agreement"] == sub[0]["agreement"]


def test_a_linearized_and_a_non_linear_vector_are_never_scored_together(bundle, ev):
    """A mix is neither the linear model nor the non-linear one: it is refused, not scored as the linear model."""
    t = TASKS[0]
    mix = [bundle.vectors["linear"][t], bundle.vectors["full"][t]]
    with pytest.raises(ValueError, match="cannot be merged together"):
        ev.merged_features(mix, [1.0, 1.0], "test")
    with pytest.raises(ValueError, match="cannot be merged together"):
        ev.evaluate(mix[::-1], [0.5, 0.5], "test")
