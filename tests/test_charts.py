"""The app's chart builders (``ui/charts.py``): what a figure says agrees with the tables beside it and with what a
click does."""

from __future__ import annotations

import pytest

from ui import charts
from ui.state import snap


@pytest.mark.parametrize(("value", "digits", "shown"), [
    (81.25, 1, "81.3"), (56.25, 1, "56.3"), (6.25, 1, "6.3"), (-6.25, 1, "-6.3"),  # exact ties: away from zero
    (93.3, 1, "93.3"), (0.285, 2, "0.28"), (2.675, 2, "2.67"),  # not ties in binary: the nearest
])
def test_chart_labels_round_as_the_tables_format_in_the_browser(value, digits, shown):
    """Tables format "%.1f" with JavaScript's toFixed (values checked with node); Python's format would give 81.2
    for 81.25, so the accuracy bars said 81.2 above a table that said 81.3."""
    assert charts.fixed(value, digits) == shown


def test_accuracy_bar_labels_use_the_tables_rounding():
    fig = charts.accuracy_bars({"a": 0.8125, "b": 0.5}, {"a": 0.5, "b": 0.5}, {"a": 0.9}, ["a"], "attn")
    assert list(fig.data[0].text) == ["81.3", "50.0"]


def test_xi_heatmap_names_the_vectors_and_shows_the_coefficient_a_click_sets():
    grid = [-2.0, -2 / 7, 2.0]
    res = {"alpha1": grid, "alpha2": grid, "tasks": ["digits", "street"], "prediction": [[0.1] * 3] * 3}
    fig = charts.xi_heatmap(res, "prediction", 2.0, "attn", names=("digits (attn, trained)", "street"), snap=snap)
    cells = fig.data[1]
    assert fig.layout.yaxis.title.text == "λ digits (attn, trained)" and fig.layout.xaxis.title.text == "λ street"
    i = 1 * 3 + 2  # row α1 = −2/7, column α2 = 2
    assert (cells.y[i], cells.x[i]) == (pytest.approx(-2 / 7), 2.0)
    assert list(cells.customdata[i])[:5] == [0.1, snap(-2 / 7), 2.0, -2 / 7, 2.0] and snap(-2 / 7) == -0.3
    assert cells.customdata[i][5] == "a click sets λ digits (attn, trained)=-0.30, λ street=2.00"
    assert "digits (attn, trained)" in cells.hovertemplate
    plain = charts.xi_heatmap(res, "prediction", 2.0, "attn")  # defaults: the result's tasks, the grid's own values
    assert plain.layout.yaxis.title.text == "λ digits"
    assert list(plain.data[1].customdata[i])[:5] == [0.1, -2 / 7, 2.0, -2 / 7, 2.0]


def test_kernel_charts_draw_agreement_in_percent_like_the_table():
    reports = {"attn": {"path": [{"s": 0.0, "agreement": 1.0}, {"s": 1.0, "agreement": 0.867}]}}
    assert list(charts.kernel_path(reports, "agreement", "agreement (%)", percent=True).data[0].y) == [100.0, 86.7]
    assert list(charts.kernel_path(reports, "agreement", "agreement").data[0].y) == [1.0, 0.867]
    rows = [{"mode": "attn", "attention_agreement": 0.5, "mlp_agreement": None, "all_agreement": 0.25}]
    bars = charts.restricted_bars(rows, "agreement", "agreement (%)", percent=True)
    assert [list(b.y) for b in bars.data] == [[50.0], [None], [25.0]]


def test_norm_profile_colours_modes_as_everywhere_and_tells_tasks_apart_by_line_and_marker():
    profiles = {"full/digits": {"resblocks.0": 1.0, "conv1": 0.5}, "attn/digits": {"resblocks.0": 0.7},
                "attn/letters": {"resblocks.0": 0.2}}
    full, attn, letters = charts.norm_profile(profiles).data
    assert (full.line.color, attn.line.color) == (charts.mode_colour("full"), charts.mode_colour("attn"))
    assert (full.line.dash, full.marker.symbol) == (attn.line.dash, attn.marker.symbol)  # one task, one style
    assert (letters.line.dash, letters.marker.symbol) != (attn.line.dash, attn.marker.symbol)
    assert letters.line.color == attn.line.color and attn.name == "digits · Attention-only"
    assert list(full.x) == ["conv1", "resblocks.0"]  # in the order the input flows


def test_addition_curves_mark_each_sweeps_own_validation_choice():
    def sweep(alphas, chosen):
        return {"alpha": chosen, "curve": [{"alpha": a, "test": {"normalized": 0.5 + a / 10, "absolute": 0.4}}
                                           for a in alphas]}

    ta = sweep([round(0.05 * i, 2) for i in range(21)], 0.35)
    ties = sweep([round(0.05 * i, 2) for i in range(41)], 1.55)
    fig = charts.addition_curves({"attn": ta}, "normalized", None, None, {"attn": ties}, "TIES-merging")
    stars = [t for t in fig.data if t.marker.symbol == "star"]
    assert sorted(s.x[0] for s in stars) == [0.35, 1.55]
    assert any("TIES-merging" in s.hovertemplate and s.x[0] == 1.55 for s in stars)
    assert [t.line.dash for t in fig.data if t.mode == "lines"] == ["dot"] and max(fig.data[-2].x) == 2.0


def test_the_cosine_heatmap_names_vectors_as_the_rest_of_its_page_does():
    fig = charts.cosine_heatmap(["attn/digits", "full/digits", "attn/mine"], [[1, 0.5, 0], [0.5, 1, 0], [0, 0, 1]])
    names = ["digits · Attention-only", "digits · Full fine-tuning", "mine · Attention-only"]  # not "attn/digits"
    assert list(fig.data[0].x) == list(fig.data[0].y) == names


def test_the_xi_heatmap_hover_names_the_coefficients_as_its_axes_do():
    res = {"alpha1": [-1.0, 0.0, 1.0], "alpha2": [-1.0, 0.0, 1.0], "tasks": ["a", "b"], "xi": [[0.0] * 3] * 3}
    fig = charts.xi_heatmap(res, "xi", 1.0, "t", snap=snap)
    cell = next(d for d in fig.data if d.name == "cell")
    assert fig.layout.xaxis.title.text == "λ b" and fig.layout.yaxis.title.text == "λ a"
    assert cell.hovertemplate.startswith("λ a=") and ", λ b=" in cell.hovertemplate and "α" not in cell.hovertemplate
