"""The app's pure helpers (``ui.state``, ``ui.common``): coefficients, links, settings read from the environment,
messages and progress text; no Streamlit session is needed."""

import math

import pytest

from ui import common, state


def test_beyond_sliders_keeps_the_range_ends():
    assert state.beyond_sliders({"a": 2.0, "b": -2.0, "c": 2.05, "d": -2.5, "e": 0}) == {"c": 2.05, "d": -2.5}


def test_reachable_bounds_the_magnitude():
    assert state.reachable(2.0, -2.0, 0.0)
    assert not state.reachable(-2.5) and not state.reachable(0.1, 2.1)


def test_a_xi_cell_with_its_own_alphas_maps_them_to_its_tasks():
    cell = {"x": 9, "y": 9, "customdata": [0, 0, 0, 0.5, -1.0]}  # data[3] is α1 (task1), data[4] α2 (task2)
    assert state.xi_click(cell, "t1", "t2") == {"t1": 0.5, "t2": -1.0}
    assert state.xi_click({"customdata": [0, 0, 0, -2.5, 0.5]}, "t1", "t2") is None  # beyond the sliders
    assert state.xi_click({"x": "0.3", "y": "-0.7"}, "t1", "t2") == {"t1": -0.7, "t2": 0.3}
    assert state.xi_click({"x": "no"}, "t1", "t2") is None


@pytest.mark.parametrize("value, tied", [("1", True), ("true", True), ("yes", True), ("0", False), ("no", False),
                                         ("false", False)])
def test_a_links_tie_is_on_only_for_a_yes(value, tied):
    assert state.parse_link({"tie": [value]})[0]["tie"] is tied


def test_a_link_ignores_non_finite_coefficients_and_takes_the_last_value():
    choices, notes = state.parse_link({"mode": ["attn", "linear"], "c.a": ["nan"], "c.b": ["inf"], "c.c": ["0.37"],
                                       "c.d": ["-9"]})
    assert choices["mode"] == "linear"
    assert choices["coefs"] == {"c": 0.35, "d": -2.0} and choices["clipped"] == {"d": -9.0}
    assert len(notes) == 2 and all("is not a number: ignored" in n for n in notes)


class _Ex:
    def __init__(self, addition):
        self.addition = addition

    def result(self, name):
        return self.addition if name == "addition" else None


def test_the_opening_alpha_is_the_bundles_snapped_to_the_slider_step():
    assert state.default_alpha(_Ex({"attn": {"alpha": 0.37}}), "attn") == 0.35
    assert state.default_alpha(_Ex({"attn": {"alpha": 7.0}}), "attn") == 2.0
    for bad in ({"attn": {"alpha": math.nan}}, {"attn": {"alpha": "0.4"}}, {"mlp": {"alpha": 0.4}}, None):
        assert state.default_alpha(_Ex(bad), "attn") == state.DEFAULT_COEF
    # a view has no sweep of its own: it opens at its source mode's α (links without coefficients, README tour)
    stored = _Ex({"full": {"alpha": 0.4}, "linear": {"alpha": 0.35}})
    assert state.default_alpha(stored, "full@attn") == 0.4 and state.default_alpha(stored, "linear@mlp") == 0.35
    assert state.default_alpha(_Ex({"full": {"alpha": 0.4}, "full@attn": {"alpha": 0.7}}), "full@attn") == 0.7


@pytest.mark.parametrize("value, delay", [("", 2.0), ("off", None), ("OFF", None), ("0.5", 0.5), ("-3", 0.0),
                                          ("soon", 2.0)])
def test_load_delay(monkeypatch, value, delay):
    monkeypatch.setenv("ARITH_LOAD_DELAY", value)
    assert state.load_delay() == delay


@pytest.mark.parametrize("value, autocast", [("", None), ("fp32", None), ("off", None), ("None", None),
                                             (" BF16 ", "bf16"), ("fp16", "fp16")])
def test_preferred_autocast(monkeypatch, value, autocast):
    monkeypatch.setenv("ARITH_AUTOCAST", value)
    assert state.preferred_autocast() == autocast


def test_preferred_autocast_refuses_other_values(monkeypatch):
    monkeypatch.setenv("ARITH_AUTOCAST", "int8")
    with pytest.raises(ValueError, match="bf16, fp16 or fp32"):
        state.preferred_autocast()


def test_bundles_of_the_same_folder_name_get_distinct_labels(tmp_path, monkeypatch):
    root = tmp_path / "precomputed"
    for d in (root / "default", tmp_path / "mine" / "default"):
        d.mkdir(parents=True)
        (d / "manifest.json").write_text("{}")
    monkeypatch.setenv("ARITH_PRECOMPUTED_DIR", str(root))
    monkeypatch.setenv("ARITH_BUNDLE", str(tmp_path / "mine" / "default"))
    assert [r.label for r in state.discover_bundles()] == ["default", "default (2)"]


def test_message_of_an_engine_error():
    assert common.message(KeyError("no task 'x'")) == "no task 'x'"  # unquoted, unlike str(KeyError)
    assert common.message(ValueError("bad")) == "bad"
    assert common.message(ValueError()) == "ValueError"


def test_readme_section_is_exactly_the_titled_section(tmp_path, monkeypatch):
    (tmp_path / "README.md").write_text("# T\n## Old Bundles\nold\n## Bundles\nnew\n\n## Next\nlater\n")
    monkeypatch.setattr(common, "ROOT", tmp_path)
    assert common.readme_section("Bundles") == "new"
    assert common.readme_section("Missing") == ""


class _Bar:
    def __init__(self):
        self.calls = []

    def progress(self, frac, text):
        self.calls.append((frac, text))
        return self


def test_progress_is_clipped_to_one_and_shows_the_loss():
    where = _Bar()
    p = common.Progress("Training", where=where)
    p(1, 4, 0.5)
    p(5, 4)
    p(0, 0)
    assert where.calls == [(0.0, "Training"), (0.25, "Training (1/4) · loss 0.5000"), (1.0, "Training (5/4)"),
                           (1.0, "Training (0/0)")]


def test_pct_honours_its_digits():
    assert common.pct(0.125, 2) == "12.50%" and common.pct(0.125) == "12.5%" and common.pct(None) == "—"
    # a tie rounds as the tables' "%.1f" does in the browser (away from zero), not to even as Python's format does
    assert common.pct(0.5625) == "56.3%" and common.pct(0.8125) == "81.3%" and common.pct(0.81249) == "81.2%"
    assert common.as_percent(0.25) == 25.0 and common.as_percent(None) is None


def test_a_change_that_rounds_to_zero_points_is_drawn_flat():
    from ui.common import points_delta

    assert points_delta(0.0123) == {"delta": "+1.2 points vs zero-shot"}  # Streamlit colours and arrows it by sign
    assert points_delta(-0.05) == {"delta": "-5.0 points vs zero-shot"}
    assert points_delta(0.0123, "θ0") == {"delta": "+1.2 points vs θ0"}
    for flat in (0.0, 0.0004, -0.0004):  # "+0.0" would be a green rise, "-0.0" a red fall
        assert points_delta(flat) == {"delta": "±0.0 points vs zero-shot", "delta_color": "off", "delta_arrow": "off"}


def test_accuracy_bars_label_every_name_even_numbers():
    """A digit task's classes "0" … "9" as the x axis: categories, each labelled (plotly would read them as numbers
    and label every other one)."""
    from ui.charts import accuracy_bars

    names = [str(i) for i in range(10)]
    fig = accuracy_bars({n: 0.5 for n in names}, {n: 0.4 for n in names}, {}, names, "attn")
    assert fig.layout.xaxis.type == "category" and list(fig.data[0].x) == names
    letters = [chr(65 + i) for i in range(26)]  # θ0's marks narrow with many bars, and keep their width for few
    many = accuracy_bars({n: 0.5 for n in letters}, {n: 0.4 for n in letters}, {}, letters, "attn")
    assert many.data[1].marker.size < fig.data[1].marker.size == 44
