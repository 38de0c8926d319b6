"""The Streamlit app, driven headless with ``streamlit.testing.v1.AppTest`` on the tiny bundle.

Every view renders without an exception or an error message; the numbers shown are the engine's; sliders, presets
and links change them; uploads and training add to the session's workspace and nothing of one session leaks into
another.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save

from arith.bundle import load_bundle
from arith.explore import Explorer
from arith.export import parse_coefficient_set
from arith.models import fingerprint
from arith.modes import get_mode, source_of
from arith.report import results_rows
from arith.specs import Files, FinetuneConfig, Meta
from ui.charts import fixed, mode_colour
from ui.state import mode_label

from conftest import rewrite, tiny_base

PAGES = {
    "pages/arithmetic.py": "Task arithmetic",
    "pages/examples.py": "Examples",
    "pages/disentanglement.py": "Weight disentanglement",
    "pages/kernel.py": "Kernel behaviour",
    "pages/vectors.py": "Task vectors",
    "pages/upload.py": "Upload task vectors",
    "pages/train.py": "Train a task vector",
    "pages/export.py": "Export and share",
}
STRIPES, COLOURS, QUADS = "synthetic-stripes", "synthetic-colours", "synthetic-quadrants"


# -- helpers ------------------------------------------------------------------------------------------------------
def clean(at) -> None:
    """No exception and no error message anywhere on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def table(at, column: str):
    """The first table on the page with this column (st.dataframe keys are not visible to AppTest)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def shown_accuracy(at) -> dict[str, float]:
    t = table(at, "edited (%)")
    return dict(zip(t["task"], t["edited (%)"]))


def coefs_in_url(at) -> dict[str, float]:
    return {k[2:]: float(v) for k, v in at.query_params.items() if k.startswith("c.")}


def charts(at) -> int:
    return len(at.get("plotly_chart"))


def workspace(at) -> dict:
    ctx = at.session_state["_ctx"]
    return dict(ctx.workspace)


@pytest.fixture(scope="module")
def engine(bundle_dir):
    """An independent Explorer on the same bundle: the reference for the numbers the app shows."""
    return Explorer(load_bundle(bundle_dir))


# -- every view ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("page", list(PAGES))
def test_every_view_renders_on_the_bundle(new_app, page, bundle_dir):
    at = new_app()
    at.switch_page(page).run()
    clean(at)
    assert at.title[0].value == PAGES[page]
    assert len(at.sidebar.slider) == 3  # one λ per task, shared by every page
    if page.endswith("arithmetic.py"):
        assert [m.label for m in at.metric][:2] == ["Absolute accuracy", "Normalized accuracy"]
        assert charts(at) == 3
        assert not [b for b in at.button if b.key == "sweep_compute"]  # the stored sweeps: drawn, nothing to ask
    if page.endswith("disentanglement.py"):  # precomputed grids show at once: one heatmap per mode, no compute button
        assert charts(at) == 4
        assert not [b for b in at.button if b.key == "xi_compute"]
    if page.endswith("kernel.py"):
        assert len(table(at, "accuracy, non-linear (%)")) == 4
        means = {r["mode"]: r["kernel agreement"] for r in results_rows(load_bundle(bundle_dir))}  # the README's
        over_all = next(c.value for c in at.caption if c.value.startswith("Agreement at s = 1, mean over"))
        assert f"{mode_label('attn')} {100 * means['attn']:.1f} % (3 tasks)" in over_all
        assert f"{mode_label('linear')} " not in over_all
    if page.endswith("vectors.py"):
        assert len(table(at, "L2 norm")) == 12
        # the per-block profile: one colour per mode (the app's), one line style per task
        traces = json.loads(next(c for c in at.get("plotly_chart") if "L2 norm of" in c.proto.spec).proto.spec)["data"]
        shown = at.multiselect(key="vec_profile").value
        style = dict(zip(shown, ((t["line"]["color"], t["line"]["dash"]) for t in traces)))
        assert len(traces) == len(shown) and len(shown) > len({n.split("/")[1] for n in shown})  # a task in two modes
        for a in shown:
            for b in shown:
                (ma, ta), (mb, tb) = a.split("/"), b.split("/")
                assert (style[a][0] == style[b][0]) == (ma == mb) and (style[a][1] == style[b][1]) == (ta == tb)
        assert all(style[a][0] == mode_colour(a.split("/")[0]) for a in shown)


def test_shown_accuracies_are_the_engines(new_app, engine):
    at = new_app()
    clean(at)
    coefs = {n: float(at.sidebar.slider(key=f"w_coef::{n}").value) for n in (STRIPES, COLOURS, QUADS)}
    ref = engine.evaluate("attn", coefs, "test")
    assert shown_accuracy(at) == pytest.approx({t: 100 * a for t, a in ref["accuracy"].items()})
    assert metric(at, "All tasks, absolute") == f"{100 * ref['absolute']:.1f}%"
    # opens on the bundle's validation-chosen α in the paper's mode
    assert at.sidebar.selectbox(key="w_mode").value == "attn"
    assert set(coefs.values()) == {engine.bundle.results["addition"]["attn"]["alpha"]}


def test_examples_page_shows_the_engines_predictions_of_the_sidebars_model(new_app, engine):
    at = new_app()
    coefs = {n: float(at.sidebar.slider(key=f"w_coef::{n}").value) for n in (STRIPES, COLOURS, QUADS)}
    at.switch_page("pages/examples.py").run()
    clean(at)
    task = at.selectbox(key="examples_task").value
    ref = engine.predictions("attn", coefs, task)
    c, n = ref["counts"], ref["counts"]["n"]
    assert metric(at, "Edited model") == f"{fixed(100 * c['merged'] / n)}%"
    assert metric(at, "Zero-shot (θ0)") == f"{fixed(100 * c['base'] / n)}%"
    assert (metric(at, "Fixed"), metric(at, "Broken")) == (str(c["fixed"]), str(c["broken"]))
    assert metric(at, "Fine-tuned alone") == f"{fixed(100 * c['alone'] / n)}%"
    assert f"--task {task}" in at.code[0].value and all(f"--coef {k}={v:g}" in at.code[0].value
                                                        for k, v in coefs.items() if v)

    def shown() -> list[str]:  # the caption under each image starts with its class in bold
        return [c.value for c in at.caption if c.value.startswith("**")]

    assert len(shown()) == min(24, n)
    first_page = shown()
    pages = -(-n // 24)
    at.number_input(key="examples_page").set_value(pages).run()  # the last page: the rest of the images
    assert len(shown()) == n - 24 * (pages - 1) and shown() != first_page
    assert f"Images {24 * (pages - 1) + 1}–{n} of {n}" in " ".join(c.value for c in at.caption)
    assert [b.proto.label for b in at.get("download_button")] == ["Download the predictions (CSV)"]
    for which, count in (("wrong", n - c["merged"]), ("changed", None)):
        at.radio(key="examples_which").set_value(which).run()  # fewer images: the page moves back within them
        clean(at)
        cells = shown()
        if count is not None:
            assert len(cells) == min(24, count)
        if which == "wrong":  # each caption's edited prediction is marked wrong
            assert all(cell.split("  \n")[1].split()[-2] == "✗" for cell in cells), cells[:3]
    at.toggle(key="examples_change").set_value(True).run()
    at.radio(key="examples_order").set_value("confident").run()
    clean(at)
    modes = table(at, "fixed")  # the same coefficients under every mode: each mode's own answer
    for m, row in zip(["full", "attn", "linear", "mlp"], modes.to_dict("records")):
        cm = engine.predictions(m, coefs, task)["counts"]
        assert (row["fixed"], row["broken"]) == (cm["fixed"], cm["broken"])
        assert row["edited (%)"] == pytest.approx(100 * cm["merged"] / cm["n"])
    # another task, and a λ of 0 everywhere: the edited model is θ0, nothing fixed or broken
    at.selectbox(key="examples_task").set_value(QUADS).run()
    for name in (STRIPES, COLOURS, QUADS):
        at.sidebar.slider(key=f"w_coef::{name}").set_value(0.0).run()
    clean(at)
    assert (metric(at, "Fixed"), metric(at, "Broken")) == ("0", "0")
    assert metric(at, "Edited model") == metric(at, "Zero-shot (θ0)")


def test_examples_command_reproduces_the_page_on_a_servers_image_subset(new_app, monkeypatch, capsys):
    """With ARITH_MAX_PER_TASK the page scores the first N images of each task; its command must say so."""
    import shlex

    from arith.cli import main

    monkeypatch.setenv("ARITH_MAX_PER_TASK", "10")
    at = new_app()
    at.switch_page("pages/examples.py").run()
    clean(at)
    cmd = at.code[0].value
    assert "--max-per-task 10" in cmd and "256" not in cmd
    argv = shlex.split(cmd.replace("\\\n", " "))[3:]  # after "python -m arith"
    assert main([*argv, "--bundle", os.environ["ARITH_BUNDLE"], "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    c = res["counts"]
    assert c["n"] == 10 and (metric(at, "Fixed"), metric(at, "Broken")) == (str(c["fixed"]), str(c["broken"]))
    assert metric(at, "Edited model") == f"{fixed(100 * c['merged'] / 10)}%"
    # every page says that its numbers are the subset's (the sidebar), and why nothing stored is shown
    assert any("scores the first 10 images of each task" in i.value for i in at.sidebar.info)
    at.switch_page("pages/arithmetic.py").run()
    assert any("the first 10 images per task that this server scores" in i.value for i in at.info)


def test_moving_a_slider_changes_the_shown_accuracies(new_app, engine):
    at = new_app()
    before, absolute = shown_accuracy(at), metric(at, "Absolute accuracy")
    at.sidebar.slider(key=f"w_coef::{STRIPES}").set_value(-1.5).run()
    clean(at)
    after = shown_accuracy(at)
    assert after != before and metric(at, "Absolute accuracy") != absolute
    assert coefs_in_url(at)[STRIPES] == -1.5  # mirrored in the link
    coefs = {n: float(at.sidebar.slider(key=f"w_coef::{n}").value) for n in (STRIPES, COLOURS, QUADS)}
    assert after == pytest.approx({t: 100 * a for t, a in engine.evaluate("attn", coefs)["accuracy"].items()})


def test_each_task_alone_is_drawn_on_demand_with_the_engines_interference(new_app, engine):
    at = new_app()
    assert not [d for d in at.dataframe if "cost of the other vectors" in d.value.columns]  # not computed up front
    at.toggle(key="sweep_alone").set_value(True).run(timeout=120)
    clean(at)
    gaps = table(at, "cost of the other vectors")
    assert len(gaps) == len(engine.bundle.modes) and charts(at) == 5  # with the cost along α and the pair heatmap
    ref = engine.alone("attn")["interference"]
    row = gaps[gaps["mode"].str.startswith(mode_label("attn"))].iloc[0]
    assert row["cost of the other vectors"] == pytest.approx(100 * ref["cost_of_others"])
    assert row["each task alone at α"] == pytest.approx(100 * ref["alone_absolute"])
    per_task = table(at, f"{mode_label('attn')} merged (%)")
    assert list(per_task["task"]) == list(ref["per_task"])
    assert dict(zip(per_task["task"], per_task[f"{mode_label('attn')} alone (%)"])) == pytest.approx(
        {t: 100 * v["alone"] for t, v in ref["per_task"].items()})
    fig = json.loads(next(c for c in at.get("plotly_chart") if "each task alone" in c.proto.spec).proto.spec)
    dashed = [d for d in fig["data"] if d.get("line", {}).get("dash") == "dash" and d["x"] != [None]]
    assert len(dashed) == len(engine.bundle.modes)  # one dashed line per mode, and one legend key for them all
    assert [d["name"] for d in fig["data"] if d["x"] == [None]] == ["dashed: each task alone at α"]
    # the same gap drawn along α (the metric shown: normalized), one line per mode, starred at the chosen α
    cost = json.loads(next(c for c in at.get("plotly_chart") if "other vectors cost" in c.proto.spec).proto.spec)
    line = next(d for d in cost["data"] if d.get("name") == mode_label("attn"))
    star = line["x"].index(ref["alpha"])
    assert line["y"][star] == pytest.approx(100 * (ref["alone_normalized"] - ref["merged_normalized"]))
    assert len([d for d in cost["data"] if d.get("mode") == "lines+markers"]) == len(engine.bundle.modes)
    # which vector costs which task, for the chosen mode, the engine's matrix in points: the bundle's stored matrix
    # at once (no toggle) ...
    at.selectbox(key="pairs_mode").set_value("full").run(timeout=120)
    clean(at)
    assert engine.pairs_stored("full") and not [t for t in at.toggle if t.key == "sweep_pairs"]
    assert_heatmap(at, engine.pairs("full"))
    # ... and for any other selection of tasks, computed only when asked
    at.sidebar.multiselect(key="w_tasks").set_value([STRIPES, QUADS]).run(timeout=120)
    clean(at)
    if [b for b in at.button if b.key == "sweep_compute"]:  # not swept yet in this process: asked for first
        at.button(key="sweep_compute").click().run(timeout=120)
        clean(at)
    assert not engine.pairs_stored("full", [STRIPES, QUADS])
    assert not [c for c in at.get("plotly_chart") if "task hurt" in c.proto.spec]
    at.toggle(key="sweep_pairs").set_value(True).run(timeout=120)
    clean(at)
    assert_heatmap(at, engine.pairs("full", [STRIPES, QUADS]))
    # the toggle keeps its state while a selection with a stored matrix hides it
    at.sidebar.multiselect(key="w_tasks").set_value(list(engine.bundle.task_names)).run(timeout=120)
    clean(at)
    assert not [t for t in at.toggle if t.key == "sweep_pairs"]
    at.sidebar.multiselect(key="w_tasks").set_value([STRIPES, QUADS]).run(timeout=120)
    clean(at)
    assert at.toggle(key="sweep_pairs").value
    assert_heatmap(at, engine.pairs("full", [STRIPES, QUADS]))


def test_a_sweep_the_bundle_does_not_store_is_computed_only_when_asked(new_app, engine):
    import streamlit as st

    st.cache_resource.clear()  # the app opens the bundle afresh: nothing swept in this process yet
    at = new_app()
    picked = [STRIPES, QUADS]
    at.sidebar.multiselect(key="w_tasks").set_value(picked).run(timeout=120)
    clean(at)
    ex, modes = at.session_state["_ctx"].ex, at.session_state["_ctx"].modes
    assert not any(ex.addition_ready(m, picked) for m in modes)  # changing the selection swept nothing
    assert not [d for d in at.dataframe if "validation-chosen α" in d.value.columns]
    note = f"Not stored for this choice of tasks or mode: {', '.join(map(mode_label, modes))}."
    assert any(i.value.startswith(note) for i in at.info)
    assert at.button(key="sweep_compute").label == f"Sweep α for {len(modes)} mode(s)"
    at.button(key="sweep_compute").click().run(timeout=300)
    clean(at)
    sweep = table(at, "validation-chosen α")
    assert list(sweep["mode"]) == [mode_label(m) for m in modes] and all(ex.addition_ready(m, picked) for m in modes)
    assert list(sweep["validation-chosen α"]) == [engine.addition(m, picked)["alpha"] for m in modes]
    assert list(sweep["absolute (%)"]) == pytest.approx([100 * engine.addition(m, picked)["absolute"] for m in modes])
    # later runs draw the computed sweeps without asking again
    at.sidebar.slider(key=f"w_coef::{STRIPES}").set_value(0.5).run(timeout=120)
    clean(at)
    assert not [b for b in at.button if b.key == "sweep_compute"] and len(table(at, "validation-chosen α")) == len(modes)


def assert_heatmap(at, pairs):
    """The shown pair heatmap is ``pairs``' cost matrix in points, and its caption its additive cost."""
    heat = json.loads(next(c for c in at.get("plotly_chart") if "task hurt" in c.proto.spec).proto.spec)
    z = heat["data"][0]["z"]
    assert heat["data"][0]["x"] == pairs["tasks"] and z[0][0] is None
    assert z[0][1] == pytest.approx(100 * pairs["cost"][0][1]) and z[1][0] == pytest.approx(100 * pairs["cost"][1][0])
    assert any(f"{fixed(100 * pairs['additive_cost'])} points" in c.value for c in at.caption)  # as the table rounds


def test_negation_shows_the_bundles_results_and_opens_each_negated_model(new_app, engine):
    at = new_app()
    clean(at)
    rows = table(at, "λ in θ0 − λ τ_t")
    assert list(rows["task"]) == engine.tasks
    for t, lam in zip(rows["task"], rows["λ in θ0 − λ τ_t"]):  # the bundle's precomputed protocol, per task
        assert lam == engine.negation("attn", t)["alpha"] > 0  # λ of θ0 − λ τ_t, as the caption writes it
    neg = engine.negation("attn", COLOURS)
    at.sidebar.selectbox(key="w_method").set_value("ties").run()  # the protocol's model is task arithmetic's
    at.selectbox(key="neg_task").set_value(COLOURS).run()
    at.button(key="neg_open").click().run()
    clean(at)
    assert at.sidebar.selectbox(key="w_method").value == "task_arithmetic"
    # just θ0 − λ τ: the one task selected at −λ, and its accuracy is the protocol's test target
    assert at.sidebar.multiselect(key="w_tasks").value == [COLOURS]
    assert at.sidebar.slider(key=f"w_coef::{COLOURS}").value == -neg["alpha"]
    assert shown_accuracy(at)[COLOURS] == pytest.approx(100 * neg["target"])
    assert metric(at, "All tasks, absolute") == f"{100 * engine.evaluate('attn', {COLOURS: -neg['alpha']})['absolute']:.1f}%"


def test_negation_missing_from_a_bundle_is_computed_on_demand(new_app, engine, copy, monkeypatch):
    files = json.loads((copy / Files.MANIFEST).read_text())
    for rel in [r for r in files["files"] if r.startswith("results/negation")]:
        del files["files"][rel]
        (copy / rel).unlink()
    (copy / Files.MANIFEST).write_text(json.dumps(files))
    monkeypatch.setenv("ARITH_BUNDLE", str(copy))
    at = new_app()
    clean(at)
    assert not [d for d in at.dataframe if "λ in θ0 − λ τ_t" in d.value.columns]
    at.button(key="neg_compute").click().run(timeout=300)
    clean(at)
    assert not [i for i in at.info if "Not precomputed" in i.value]  # gone in the run that computed them
    rows = table(at, "λ in θ0 − λ τ_t")
    assert list(rows["task"]) == engine.tasks
    for t, lam, target in zip(rows["task"], rows["λ in θ0 − λ τ_t"], rows["target (%)"]):  # the protocol, computed
        ref = engine.negation("attn", t)
        assert lam == ref["alpha"] and target == pytest.approx(100 * ref["target"])
    at.run()  # kept: the next run shows them without offering to compute again
    assert table(at, "λ in θ0 − λ τ_t").equals(rows) and not [b for b in at.button if b.key == "neg_compute"]


def test_view_choices_persist_across_pages(new_app):
    at = new_app()
    at.switch_page("pages/vectors.py").run()
    at.multiselect(key="vec_modes").set_value(["attn", "mlp"]).run()
    at.multiselect(key="vec_profile").set_value(["mlp/" + COLOURS]).run()
    at.switch_page("pages/kernel.py").run()
    at.selectbox(key="kernel_task").set_value(COLOURS).run()
    at.switch_page("pages/disentanglement.py").run()
    at.toggle(key="xi_rep").set_value(True).run()
    at.switch_page("pages/arithmetic.py").run()
    at.radio(key="sweep_metric").set_value("absolute").run()
    at.switch_page("pages/export.py").run()
    for page, check in (("pages/vectors.py", lambda: (at.multiselect(key="vec_modes").value,
                                                        at.multiselect(key="vec_profile").value)),
                        ("pages/kernel.py", lambda: at.selectbox(key="kernel_task").value),
                        ("pages/disentanglement.py", lambda: at.toggle(key="xi_rep").value),
                        ("pages/arithmetic.py", lambda: at.radio(key="sweep_metric").value)):
        at.switch_page(page).run()
        clean(at)
        assert check() == {"pages/vectors.py": (["attn", "mlp"], ["mlp/" + COLOURS]), "pages/kernel.py": COLOURS,
                           "pages/disentanglement.py": True, "pages/arithmetic.py": "absolute"}[page], page
    # a view chosen in the sidebar meanwhile joins the kept choice, as every mode joins it on a first visit
    at.sidebar.selectbox(key="w_mode").set_value("full@attn").run()
    at.switch_page("pages/vectors.py").run()
    clean(at)
    assert at.multiselect(key="vec_modes").value == ["attn", "mlp", "full@attn"]
    at.multiselect(key="vec_modes").set_value(["full@attn"]).run()  # the profile's only vector (mlp's) goes ...
    clean(at)
    assert at.multiselect(key="vec_profile").value and not any("Choose at least one" in i.value for i in at.info)
    at.multiselect(key="vec_profile").set_value([]).run()  # ... and one emptied on purpose says what to do
    assert any("Choose at least one vector" in i.value for i in at.info)


def test_mode_switch_and_task_selection(new_app, engine):
    at = new_app()
    at.sidebar.selectbox(key="w_mode").set_value("full").run()
    clean(at)
    coefs = {n: float(at.sidebar.slider(key=f"w_coef::{n}").value) for n in (STRIPES, COLOURS, QUADS)}
    assert shown_accuracy(at) == pytest.approx({t: 100 * a for t, a in engine.evaluate("full", coefs)["accuracy"].items()})
    at.sidebar.multiselect(key="w_tasks").set_value([COLOURS]).run()
    clean(at)
    assert len(at.sidebar.slider) == 1 and at.query_params["tasks"] == COLOURS
    only = {COLOURS: float(at.sidebar.slider(key=f"w_coef::{COLOURS}").value)}
    assert shown_accuracy(at) == pytest.approx({t: 100 * a for t, a in engine.evaluate("full", only)["accuracy"].items()})


def test_tie_switch_and_presets(new_app, engine):
    at = new_app()
    at.sidebar.toggle(key="w_tie").set_value(True).run()
    clean(at)
    assert [s.key for s in at.sidebar.slider] == ["w_coef_all"]
    at.sidebar.slider(key="w_coef_all").set_value(0.5).run()
    assert coefs_in_url(at) == {STRIPES: 0.5, COLOURS: 0.5, QUADS: 0.5} and at.query_params["tie"] == "1"

    at.sidebar.button(key="w_preset_zero").click().run()
    clean(at)
    assert coefs_in_url(at) == {STRIPES: 0.0, COLOURS: 0.0, QUADS: 0.0}
    assert metric(at, "Absolute accuracy") == metric(at, "Zero-shot absolute")  # θ0 itself
    assert "Tasks at λ = 0" not in [m.label for m in at.metric]  # every task is: nothing to set apart

    at.sidebar.button(key="w_preset_alpha").click().run()
    alpha = engine.bundle.results["addition"]["attn"]["alpha"]
    assert coefs_in_url(at) == {STRIPES: alpha, COLOURS: alpha, QUADS: alpha}

    at.sidebar.selectbox(key="w_only").set_value(COLOURS).run()
    at.sidebar.button(key="w_preset_only").click().run()
    clean(at)
    assert coefs_in_url(at) == {STRIPES: 0.0, COLOURS: 1.0, QUADS: 0.0}
    assert not at.sidebar.toggle(key="w_tie").value and len(at.sidebar.slider) == 3
    # one vector alone: the two tasks left at λ = 0 show its leakage into them, against their zero-shot mean
    acc, zs = engine.evaluate("attn", {COLOURS: 1.0})["accuracy"], engine.zeroshot("test")
    left = next(m for m in at.metric if m.label == "Tasks at λ = 0")
    assert left.value == f"{50 * (acc[STRIPES] + acc[QUADS]):.1f}%"
    assert left.proto.delta == f"{50 * (acc[STRIPES] + acc[QUADS] - zs[STRIPES] - zs[QUADS]):+.1f} points vs zero-shot"
    at.sidebar.toggle(key="w_tie").set_value(True).run()  # tied again: at the one λ that is not 0, not zero-shot
    assert coefs_in_url(at) == {STRIPES: 1.0, COLOURS: 1.0, QUADS: 1.0}


def test_a_link_reproduces_the_view(new_app):
    a = new_app()
    a.sidebar.selectbox(key="w_mode").set_value("linear").run()
    a.sidebar.slider(key=f"w_coef::{COLOURS}").set_value(-0.75).run()
    link = dict(a.query_params)
    b = new_app(link)  # a new session opened on that link
    clean(b)
    assert b.sidebar.selectbox(key="w_mode").value == "linear"
    assert b.sidebar.slider(key=f"w_coef::{COLOURS}").value == -0.75
    assert shown_accuracy(b) == shown_accuracy(a)
    none = new_app({"mode": "attn", "tasks": ""})  # a link with no task selected keeps it so
    clean(none)
    assert none.sidebar.multiselect(key="w_tasks").value == [] and not none.sidebar.slider
    assert metric(none, "Absolute accuracy") == metric(none, "Zero-shot absolute")
    bad = new_app({"mode": "attn", "tasks": [STRIPES], "c.synthetic-stripes": "lots"})
    assert not bad.exception
    assert any("From the link: coefficient 'synthetic-stripes'='lots' is not a number: ignored" in w.value
               for w in bad.sidebar.warning)
    assert len(bad.sidebar.slider) == 1
    # what the link asks for and the bundle lacks is named, once each, and the view opens on what it has
    odd = new_app({"mode": "bogus", "tasks": [STRIPES, "nope"], f"c.{STRIPES}": "9", "c.zzz": "9"})
    clean(odd)
    notes = [w.value for w in odd.sidebar.warning]
    assert odd.sidebar.selectbox(key="w_mode").value == "attn" and odd.sidebar.multiselect(key="w_tasks").value == [STRIPES]
    assert any("mode 'bogus' is not in this bundle" in n and n.endswith(": ignored") for n in notes), notes
    assert any("no attn task vector named 'nope', 'zzz': ignored" in n for n in notes), notes
    assert any(f"coefficient '{STRIPES}'=9 clipped" in n for n in notes) and not any("'zzz'=9" in n for n in notes)
    odd.run()
    assert not odd.sidebar.warning  # shown once, on the run that read the link


def test_two_sessions_do_not_affect_each_other(new_app, bundle):
    a, b = new_app(), new_app()
    a.sidebar.slider(key=f"w_coef::{STRIPES}").set_value(-2.0).run()
    seen_a = (shown_accuracy(a), dict(a.query_params))
    b.sidebar.slider(key=f"w_coef::{STRIPES}").set_value(2.0).run()
    b.switch_page("pages/upload.py").run()
    tv = bundle.vectors["attn"][COLOURS].scale(0.5)
    b.file_uploader(key="upload_files").set_value(("half.safetensors", tv.to_bytes(), "application/octet-stream")).run()
    assert len(workspace(b)) == 1
    a.run()
    assert (shown_accuracy(a), dict(a.query_params)) == seen_a
    assert coefs_in_url(a)[STRIPES] == -2.0 and coefs_in_url(b)[STRIPES] == 2.0
    assert workspace(a) == {} and "half" not in a.sidebar.multiselect(key="w_tasks").options
    b.switch_page("pages/arithmetic.py").run()
    assert shown_accuracy(b) != shown_accuracy(a)


def test_the_same_vector_uploaded_twice_is_kept_once(new_app, bundle):
    at = new_app()
    at.switch_page("pages/upload.py").run()
    blob = bundle.vectors["attn"][COLOURS].scale(0.5).to_bytes()
    at.file_uploader(key="upload_files").set_value(("half.safetensors", blob, "x")).run()
    at.file_uploader(key="upload_files").set_value(("half-again.safetensors", blob, "x")).run()
    assert list(workspace(at)) == ["half"]
    assert any("half-again.safetensors: already in the workspace as 'half'" in s.value for s in at.success)


def test_presets_and_sweeps_say_that_workspace_vectors_took_no_part(new_app, bundle):
    """The validation α and the α sweeps are the bundle's vectors' (stored or swept): a selected workspace vector is
    set to that α too, and the page says it was not part of choosing it."""
    at = new_app()
    at.switch_page("pages/upload.py").run()
    at.file_uploader(key="upload_files").set_value(("half.safetensors",
                                                    bundle.vectors["attn"][COLOURS].scale(0.5).to_bytes(), "x")).run()
    at.switch_page("pages/arithmetic.py").run()
    assert "half" in at.sidebar.multiselect(key="w_tasks").value
    assert any("half (workspace) not among them" in c.value for c in at.caption)
    at.sidebar.button(key="w_preset_alpha").click().run()
    clean(at)
    assert any("chosen on the bundle's vectors only: half (workspace)" in i.value for i in at.sidebar.info)
    assert coefs_in_url(at)["half"] == bundle.results["addition"]["attn"]["alpha"]


# -- upload -------------------------------------------------------------------------------------------------------
def _bad_files(bundle) -> dict[str, tuple[bytes, str]]:
    """file name -> (bytes, a fragment of the message that file must get)."""
    tv = bundle.vectors["attn"][STRIPES]
    good = {k: t.clone() for k, t in tv.tensors.items()}
    meta = tv.metadata()
    key = next(iter(good))
    wrong_shape = dict(good, **{key: torch.zeros(3, 3)})
    nan = dict(good, **{key: good[key].clone().fill_(float("nan"))})
    mlp_key = "visual.transformer.resblocks.0.mlp.c_fc.weight"
    lying = dict(good, **{mlp_key: torch.zeros(bundle.base.shapes[mlp_key])})
    other = tiny_base(seed=1)
    other_meta = dict(meta, **{Meta.BASE: other.id})
    return {
        "garbage.safetensors": (b"this is not a tensor file, just some text", "the file is text"),
        "weights.pt": (pickle.dumps({"a": 1}), "pickle"),
        "wrong-shape.safetensors": (st_save(wrong_shape, metadata=meta), "shape"),
        "nan.safetensors": (st_save(nan, metadata=meta), "non-finite"),
        "lying.safetensors": (st_save(lying, metadata=meta), "does not train"),
        "no-metadata.safetensors": (st_save(good), "metadata lacks"),
        "other-base.safetensors": (st_save(good, metadata=other_meta), "another base model"),
        "empty.safetensors": (b"", "empty"),
        # fine-tuned weights θ_t (θ0 + τ) where a task vector belongs: refused, pointing to the weights option
        "theta-t.safetensors": (st_save({k: bundle.base.params[k] + t for k, t in good.items()}, metadata=meta),
                                "fine-tuned weights θ_t, not a task vector"),
    }


def test_upload_accepts_valid_files_and_names_each_problem(new_app, bundle, engine):
    at = new_app()
    at.switch_page("pages/upload.py").run()
    clean(at)
    valid = bundle.vectors["attn"][STRIPES].scale(0.5)
    bad = _bad_files(bundle)
    files = [("stripes-half.safetensors", valid.to_bytes(), "application/octet-stream")]
    files += [(name, data, "application/octet-stream") for name, (data, _) in bad.items()]
    at.file_uploader(key="upload_files").set_value(files).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == len(bad)
    for name, (_, fragment) in bad.items():
        msg = next(e for e in errors if e.startswith(f"{name}:"))
        assert fragment in msg, (name, msg)
    assert len(set(errors)) == len(errors)
    assert [m.value for m in at.success] and all(m.value.endswith(".") for m in at.success)  # sentences, not run-ons
    ws = workspace(at)
    assert list(ws) == ["stripes-half"] and ws["stripes-half"].task == STRIPES
    assert torch.equal(ws["stripes-half"].tensors[next(iter(valid.tensors))], next(iter(valid.tensors.values())))
    # the new vector is selected in the sidebar (λ = 0) and appears in every view
    assert "stripes-half" in at.sidebar.multiselect(key="w_tasks").value
    at.sidebar.slider(key="w_coef::stripes-half").set_value(1.0).run()
    at.switch_page("pages/arithmetic.py").run()
    clean(at)
    coefs = {n: float(at.sidebar.slider(key=f"w_coef::{n}").value) for n in at.sidebar.multiselect(key="w_tasks").value}
    ref = engine.evaluate("attn", coefs, extra={"stripes-half": ws["stripes-half"]})
    assert coefs["stripes-half"] == 1.0
    assert shown_accuracy(at) == pytest.approx({t: 100 * a for t, a in ref["accuracy"].items()})
    lam = dict(zip(table(at, "λ")["task"], table(at, "λ")["λ"]))  # stripes has two vectors: both λ are shown
    assert f"{coefs[STRIPES]:g} ({STRIPES})" in lam[STRIPES] and "1 (stripes-half)" in lam[STRIPES], lam
    at.switch_page("pages/vectors.py").run()
    clean(at)
    assert "stripes-half" in set(table(at, "L2 norm")["vector"])
    at.switch_page("pages/kernel.py").run()
    at.selectbox(key="kernel_task").set_value("stripes-half").run()
    clean(at)
    at.switch_page("pages/disentanglement.py").run()
    clean(at)
    assert "stripes-half" in at.selectbox(key="xi_t1").options
    at.switch_page("pages/export.py").run()
    clean(at)
    record = json.loads(at.code[0].value)
    assert record["coefficients"]["stripes-half"] == 1.0


def test_files_without_metadata_take_the_chosen_task_and_mode(new_app, bundle):
    at = new_app()
    at.switch_page("pages/upload.py").run()
    tv = bundle.vectors["mlp"][COLOURS]
    at.selectbox(key="upload_task").set_value(COLOURS)
    at.selectbox(key="upload_mode").set_value("mlp")
    at.file_uploader(key="upload_files").set_value(("bare.safetensors", st_save(dict(tv.tensors)), "x")).run()
    assert "lacks arith.base_model" in at.error[0].value and not workspace(at)  # which base: not assumed silently
    assert "which base model it is for. If it is a task vector for this bundle's base, tick *Files without " \
           "`arith.base_model` " \
           "are for this base* above." in at.error[0].value  # and where to say it, as a sentence of its own
    at.checkbox(key="upload_assume_base").check().run()
    assert [(v.task, v.mode) for v in workspace(at).values()] == [(COLOURS, "mlp")]
    assert not at.error and at.success  # the earlier refusal is gone once the file is accepted
    at.selectbox(key="upload_task").set_value(STRIPES).run()  # an accepted file is not read again
    assert len(workspace(at)) == 1
    at.button(key="upload_clear_log").click().run()
    assert not at.success and [(v.task, v.mode) for v in workspace(at).values()] == [(COLOURS, "mlp")]
    at.sidebar.selectbox(key="w_mode").set_value("mlp").run()
    clean(at)
    assert "bare" in at.sidebar.multiselect(key="w_tasks").options


# -- train ----------------------------------------------------------------------------------------------------------
def train_quads(at, mode: str, steps: int, name: str) -> None:
    """Fill the Train form (shown for ``mode``) for a few steps on the quadrants task and press Train."""
    at.selectbox(key="train_task").set_value(QUADS)
    at.number_input(key=f"train_steps::{mode}").set_value(steps)
    at.number_input(key=f"train_batch::{mode}").set_value(16)
    at.text_input(key="train_name").set_value(name)
    next(b for b in at.button if b.label == "Train").click().run(timeout=300)
    clean(at)


def test_training_a_few_steps_adds_a_vector(new_app):
    at = new_app()
    at.switch_page("pages/train.py").run()
    clean(at)
    at.number_input(key="train_lr::attn").set_value(2.5e-5)
    train_quads(at, "attn", 3, "quads-quick")
    # the ± step follows the value the form ran with: a tenth of its decade (before: of the recipe's lr)
    lr = at.number_input(key="train_lr::attn")
    assert lr.proto.step == pytest.approx(1e-6) and lr.value == pytest.approx(2.5e-5)  # the value stays
    ws = workspace(at)
    assert list(ws) == ["quads-quick"] and ws["quads-quick"].task == QUADS and ws["quads-quick"].mode == "attn"
    assert ws["quads-quick"].meta[Meta.STEPS] == "3" and float(ws["quads-quick"].meta[Meta.LR]) == pytest.approx(2.5e-5)
    assert any("Trained 'quads-quick'" in s.value for s in at.success)
    assert len(at.get("download_button")) == 1 and at.get("download_button")[0].proto.ignore_rerun
    assert "quads-quick" in at.sidebar.multiselect(key="w_tasks").value


def test_the_train_form_follows_the_chosen_modes_recipe_and_selects_in_that_mode(new_app, bundle):
    at = new_app()
    at.switch_page("pages/train.py").run()
    lr = at.number_input(key="train_lr::attn")
    assert lr.proto.step == pytest.approx(10 ** (np.floor(np.log10(bundle.finetune_config("attn").lr)) - 1))  # not 0.01
    assert [f.proto.form.enter_to_submit for f in at.get("form")] == [False]  # Enter in a field starts nothing
    lr.set_value(0.0123).run()
    at.selectbox(key="train_mode").set_value("full").run()
    clean(at)
    assert at.number_input(key="train_lr::full").value == pytest.approx(bundle.finetune_config("full").lr)
    assert not [n for n in at.number_input if n.key == "train_lr::attn"]  # one set of fields per mode
    assert any(c.value.startswith("The bundle's recipe for full:") for c in at.caption)
    # a mode the bundle has no recipe for: the one `python -m arith finetune` uses too (arith.index.recipe), named
    at.selectbox(key="train_mode").set_value("attn_bias").run()
    cfg, source = bundle.recipe("attn_bias")
    assert at.number_input(key="train_lr::attn_bias").value == pytest.approx(cfg.lr)
    assert any(c.value.startswith("The bundle's recipe for attn (it has none for attn_bias):") for c in at.caption)
    at.selectbox(key="train_mode").set_value("full").run()
    at.button(key="train_cancel").click().run()
    assert any(w.value == "No training is running." for w in at.warning)
    train_quads(at, "full", 2, "quads-full")
    assert workspace(at)["quads-full"].mode == "full"
    assert "quads-full" not in at.sidebar.multiselect(key="w_tasks").options  # the sidebar shows attn ...
    at.sidebar.selectbox(key="w_mode").set_value("full").run()
    assert "quads-full" in at.sidebar.multiselect(key="w_tasks").value  # ... and selects it where it lives
    # a loaded coefficient set is exactly its vectors: one waiting to be selected (dropped by a mode switch) stays out
    at.sidebar.selectbox(key="w_mode").set_value("attn").run()
    at.switch_page("pages/export.py").run()
    record = dict(parse_coefficient_set(at.code[0].value, bundle.base.id), mode="full", coefficients={STRIPES: 0.25})
    at.file_uploader(key="export_import").set_value(("set.json", json.dumps(record).encode(), "application/json")).run()
    clean(at)
    assert at.sidebar.selectbox(key="w_mode").value == "full"
    assert at.sidebar.multiselect(key="w_tasks").value == [STRIPES]


# -- export ---------------------------------------------------------------------------------------------------------
def test_export_and_load_a_coefficient_set(new_app, bundle):
    at = new_app()
    at.sidebar.slider(key=f"w_coef::{QUADS}").set_value(-0.5).run()
    at.switch_page("pages/export.py").run()
    clean(at)
    downloads = at.get("download_button")
    assert len(downloads) == 2  # coefficient set and merged weights
    # a click does not rerun the page: a rerun would drop the other button's file, which is built on click
    assert all(d.proto.ignore_rerun for d in downloads)
    record = parse_coefficient_set(at.code[0].value, bundle.base.id)
    assert record["mode"] == "attn" and record["coefficients"][QUADS] == -0.5
    assert list(record["coefficients"]) == at.sidebar.multiselect(key="w_tasks").value  # the sidebar's order
    assert "c.synthetic-quadrants=-0.5" in at.code[1].value  # the share link
    assert "--coef synthetic-quadrants=-0.5" in at.code[2].value  # the CLI command
    assert f"--bundle {bundle.root.resolve()}" in at.code[2].value  # not the embedded default: named
    # load a coefficient set: switches the mode and sets exactly those coefficients
    other = dict(record, mode="full", coefficients={STRIPES: 0.25, COLOURS: -1.0, "gone": 1.0})
    at.file_uploader(key="export_import").set_value(("set.json", json.dumps(other).encode(), "application/json")).run()
    clean(at)
    assert "ignored: gone" in at.info[0].value
    assert at.sidebar.selectbox(key="w_mode").value == "full"
    assert coefs_in_url(at) == {STRIPES: 0.25, COLOURS: -1.0}
    big = dict(record, coefficients={STRIPES: 50.0, COLOURS: -0.5})  # beyond the sliders: set to 2, and said so
    at.file_uploader(key="export_import").set_value(("big.json", json.dumps(big).encode(), "application/json")).run()
    clean(at)
    assert f"clipped to the sliders' range [-2, 2]: {STRIPES}=50" in at.info[0].value
    assert coefs_in_url(at) == {STRIPES: 2.0, COLOURS: -0.5}
    at.file_uploader(key="export_import").set_value(("bad.json", b"{\"format\": \"nope\"}", "application/json")).run()
    assert any("not a coefficient set" in e.value for e in at.error) and not at.exception
    # a set for a mode this session lacks, or of none of its vectors, is refused and changes nothing
    before = (at.sidebar.selectbox(key="w_mode").value, at.sidebar.multiselect(key="w_tasks").value, coefs_in_url(at))
    for name, rec in (("bias.json", dict(record, mode="attn_bias")), ("none.json", dict(record, coefficients={"gone": 1.0}))):
        at.file_uploader(key="export_import").set_value((name, json.dumps(rec).encode(), "application/json")).run()
        assert not at.exception
        assert any(e.value.startswith(name) and "nothing was changed" in e.value for e in at.error), name
        assert (at.sidebar.selectbox(key="w_mode").value, at.sidebar.multiselect(key="w_tasks").value,
                coefs_in_url(at)) == before



def test_the_merge_method_is_chosen_in_the_sidebar_and_travels_with_links_and_sets(new_app, engine, bundle):
    at = new_app()
    assert at.sidebar.selectbox(key="w_method").value == "task_arithmetic" and "method" not in at.query_params
    coefs = {n: float(at.sidebar.slider(key=f"w_coef::{n}").value) for n in (STRIPES, COLOURS, QUADS)}
    at.sidebar.selectbox(key="w_method").set_value("ties").run()
    clean(at)
    ties, ta = engine.evaluate("attn", coefs, "test", method="ties"), engine.evaluate("attn", coefs, "test")
    assert ties["accuracy"] != ta["accuracy"]  # the tiny bundle tells the two apart
    assert shown_accuracy(at) == pytest.approx({t: 100 * a for t, a in ties["accuracy"].items()})
    assert any("TIES-merging" in i.value for i in at.info) and at.query_params["method"] == "ties"
    assert any("J δ afresh" in c.value for c in at.caption)  # the bundle has a linearized mode: its cache cannot serve
    assert any("Validation α" in i.value for i in at.info)  # the coefficients may be task arithmetic's
    assert at.caption[0].value.startswith("θ = θ0 + δ(λ), merged by TIES-merging")

    def sweep_notes(at) -> list[str]:
        spec = next(s for s in (json.loads(c.proto.spec) for c in at.get("plotly_chart"))
                    if s["layout"].get("xaxis", {}).get("title", {}).get("text") == "shared α")
        return [a.get("text") for a in spec["layout"].get("annotations", [])]

    at.sidebar.toggle(key="w_tie").set_value(True).run()  # the tied α is not marked on task arithmetic's curves
    assert "tied α" not in sweep_notes(at)
    at.toggle(key="sweep_method::ties").set_value(True).run(timeout=300)  # ... but on TIES's own sweep, once drawn
    clean(at)
    assert "tied α" in sweep_notes(at)
    sweep = next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if json.loads(c.proto.spec)["layout"]
                 .get("xaxis", {}).get("title", {}).get("text") == "shared α")
    dotted = [t for t in sweep["data"] if t.get("line", {}).get("dash") == "dot"]
    assert {t["name"] for t in dotted} == {f"{mode_label(m)}, TIES-merging" for m in ("full", "attn", "linear", "mlp")}
    want = engine.addition("attn", method="ties")
    row = table(at, "validation-chosen α").set_index("mode").loc[f"{mode_label('attn')}, TIES-merging"]
    assert row["validation-chosen α"] == want["alpha"] and row["absolute (%)"] == pytest.approx(100 * want["absolute"])
    assert max(dotted[0]["x"]) == 2.0  # TIES's α grid
    at.sidebar.slider(key="w_method::ties.density").set_value(0.5).run()  # another spec: its sweep is not started
    assert not at.toggle(key="sweep_method::ties:density=0.5").value and "tied α" not in sweep_notes(at)
    memo = at.session_state["_ctx"].ex._memo
    assert memo.get(("add", "attn", tuple(engine.tasks), "ties:density=0.5")) is None
    assert memo.get(("add", "attn", tuple(engine.tasks), "ties")) is not None  # the key the sweep was stored under
    at.sidebar.slider(key="w_method::ties.density").set_value(0.2).run()  # back: the toggle and its sweep are kept
    assert at.toggle(key="sweep_method::ties").value and "tied α" in sweep_notes(at)
    # the cost along α is task arithmetic's, so it does not mark the tied α of the sidebar's TIES model
    at.toggle(key="sweep_alone").set_value(True).run(timeout=120)
    cost = next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if "other vectors cost" in c.proto.spec)
    assert "tied α" not in [a.get("text") for a in cost["layout"].get("annotations", [])]
    at.toggle(key="sweep_alone").set_value(False).run()
    at.toggle(key="sweep_method::ties").set_value(False).run()
    at.sidebar.selectbox(key="w_method").set_value("task_arithmetic").run()
    assert "tied α" in sweep_notes(at) and not any("J δ afresh" in c.value for c in at.caption) and not at.info
    at.sidebar.toggle(key="w_tie").set_value(False)
    at.sidebar.selectbox(key="w_method").set_value("ties").run()
    # the comparison of modes merges by it too
    full = engine.evaluate("full", coefs, "test", method="ties")
    row = table(at, "absolute (%)").set_index("mode").loc[mode_label("full")]
    assert row["absolute (%)"] == pytest.approx(100 * full["absolute"])
    # a link carries it; an unknown one is named and task arithmetic opens
    b = new_app(dict(at.query_params))
    clean(b)
    assert b.sidebar.selectbox(key="w_method").value == "ties" and shown_accuracy(b) == shown_accuracy(at)
    odd = new_app({"method": "nope"})
    assert odd.sidebar.selectbox(key="w_method").value == "task_arithmetic"
    assert any("unknown merge method 'nope'" in w.value for w in odd.sidebar.warning)
    # export: the set records it, the command passes it, and loading a set switches to its method
    at.switch_page("pages/export.py").run()
    clean(at)
    record = parse_coefficient_set(at.code[0].value, bundle.base.id)
    assert record["method"] == "ties" and "--method ties" in at.code[2].value
    at.sidebar.selectbox(key="w_method").set_value("task_arithmetic").run()
    assert "method" not in at.query_params and "--method" not in at.code[2].value
    at.file_uploader(key="export_import").set_value(("set.json", json.dumps(record).encode(), "application/json")).run()
    clean(at)
    assert at.sidebar.selectbox(key="w_method").value == "ties" and at.query_params["method"] == "ties"
    # the validation-α preset sweeps α under the chosen method, not the stored task-arithmetic sweep
    at.switch_page("pages/arithmetic.py").run()
    at.sidebar.button(key="w_preset_alpha").click().run(timeout=300)
    clean(at)
    alpha = engine.addition("attn", method="ties")["alpha"]
    assert {float(at.sidebar.slider(key=f"w_coef::{n}").value) for n in coefs} == {alpha}
    swept = at.session_state["_ctx"].ex._memo.get(("add", "attn", tuple(engine.tasks), "ties"))
    assert swept is not None and swept["method"] == "ties" and swept["alpha"] == alpha  # computed, not the stored sweep



def test_a_merge_methods_options_are_widgets_that_travel_with_links_and_sets(new_app, engine, bundle):
    at = new_app()
    coefs = {n: float(at.sidebar.slider(key=f"w_coef::{n}").value) for n in (STRIPES, COLOURS, QUADS)}
    assert not any(s.key.startswith("w_method::") for s in at.sidebar.slider)  # task arithmetic has no options
    at.sidebar.selectbox(key="w_method").set_value("ties").run()
    density, scope = at.sidebar.slider(key="w_method::ties.density"), at.sidebar.radio(key="w_method::ties.scope")
    assert density.value == pytest.approx(0.2) and scope.value == "tensor" and at.query_params["method"] == "ties"
    density.set_value(0.5)
    scope.set_value("vector").run()
    clean(at)
    spec = "ties:density=0.5,scope=vector"
    assert at.query_params["method"] == spec
    want = engine.evaluate("attn", coefs, "test", method=spec)
    assert want["accuracy"] != engine.evaluate("attn", coefs, "test", method="ties")["accuracy"]
    assert shown_accuracy(at) == pytest.approx({t: 100 * a for t, a in want["accuracy"].items()})
    assert any("density 0.5, trim over vector" in i.value for i in at.info)
    # a link opens the same view; a bad option is named and the method opens at its defaults
    b = new_app(dict(at.query_params))
    clean(b)
    assert b.sidebar.slider(key="w_method::ties.density").value == pytest.approx(0.5)
    assert b.sidebar.radio(key="w_method::ties.scope").value == "vector" and shown_accuracy(b) == shown_accuracy(at)
    odd = new_app({"method": "ties:density=3"})
    assert odd.sidebar.selectbox(key="w_method").value == "task_arithmetic"
    assert any("must lie in (0, 1]" in w.value for w in odd.sidebar.warning)
    low = new_app({"method": "ties:density=0.01"})  # valid, below the slider's range: its end, said so
    assert low.sidebar.slider(key="w_method::ties.density").value == pytest.approx(0.05)
    assert any("outside the slider's range" in w.value for w in low.sidebar.warning)
    assert low.query_params["method"] == "ties:density=0.05" and not low.exception
    # a method's settings survive choosing another one and coming back
    b.sidebar.selectbox(key="w_method").set_value("task_arithmetic").run()
    assert "method" not in b.query_params
    b.sidebar.selectbox(key="w_method").set_value("ties").run()
    assert b.query_params["method"] == spec and b.sidebar.radio(key="w_method::ties.scope").value == "vector"
    # the coefficient set and the command carry the spec; loading the set restores the options
    at.switch_page("pages/export.py").run()
    clean(at)
    record = parse_coefficient_set(at.code[0].value, bundle.base.id)
    assert record["method"] == spec and f"--method {spec}" in at.code[2].value
    at.sidebar.slider(key="w_method::ties.density").set_value(1.0).run()  # nothing trimmed: the scope is moot
    assert at.sidebar.radio(key="w_method::ties.scope").disabled and at.query_params["method"] == "ties:density=1"
    at.sidebar.slider(key="w_method::ties.density").set_value(0.5).run()
    assert not at.sidebar.radio(key="w_method::ties.scope").disabled and at.query_params["method"] == spec
    at.sidebar.selectbox(key="w_method").set_value("task_arithmetic").run()
    at.file_uploader(key="export_import").set_value(("set.json", json.dumps(record).encode(), "application/json")).run()
    clean(at)
    assert at.query_params["method"] == spec and at.sidebar.radio(key="w_method::ties.scope").value == "vector"



def test_dares_seed_is_a_whole_number_widget_moot_at_full_density(new_app, engine):
    at = new_app()
    coefs = {n: float(at.sidebar.slider(key=f"w_coef::{n}").value) for n in (STRIPES, COLOURS, QUADS)}
    at.sidebar.selectbox(key="w_method").set_value("dare").run()
    seed = at.sidebar.slider(key="w_method::dare.seed")
    assert seed.value == 0 and isinstance(seed.value, int) and not seed.disabled and at.query_params["method"] == "dare"
    seed.set_value(7).run()
    clean(at)
    spec = "dare:seed=7"
    assert at.query_params["method"] == spec
    want = engine.evaluate("attn", coefs, "test", method=spec)
    assert shown_accuracy(at) == pytest.approx({t: 100 * a for t, a in want["accuracy"].items()})
    assert any("DARE (seed 7)" in i.value for i in at.info)
    at.sidebar.slider(key="w_method::dare.density").set_value(1.0).run()  # nothing dropped: the seed is moot
    assert at.sidebar.slider(key="w_method::dare.seed").disabled and at.query_params["method"] == "dare:density=1"
    ta = engine.evaluate("attn", coefs, "test")
    assert shown_accuracy(at) == pytest.approx({t: 100 * a for t, a in ta["accuracy"].items()})  # task arithmetic
    b = new_app({"method": "dare:density=0.6,seed=12"})  # a link sets both widgets
    clean(b)
    assert b.sidebar.slider(key="w_method::dare.seed").value == 12
    assert b.sidebar.slider(key="w_method::dare.density").value == pytest.approx(0.6)
    c = new_app({"method": "dare_ties:seed=4"})  # DARE-TIES: the same two widgets, its own keys
    clean(c)
    assert c.sidebar.slider(key="w_method::dare_ties.seed").value == 4 and c.query_params["method"] == "dare_ties:seed=4"
    want = engine.evaluate("attn", coefs, "test", method="dare_ties:seed=4")
    assert shown_accuracy(c) == pytest.approx({t: 100 * a for t, a in want["accuracy"].items()})

def test_the_per_task_preset_sets_the_validation_chosen_coefficients(new_app, engine):
    at = new_app()
    at.sidebar.selectbox(key="w_mode").set_value("linear").run()
    at.sidebar.toggle(key="w_tie").set_value(True).run()
    at.sidebar.button(key="w_preset_tune").click().run(timeout=300)
    clean(at)
    tuned = engine.tune("linear")
    assert len(set(tuned["coefficients"].values())) > 1  # the tiny bundle's linear vectors do move apart
    assert not at.sidebar.toggle(key="w_tie").value
    assert {n: at.sidebar.slider(key=f"w_coef::{n}").value for n in tuned["coefficients"]} == tuned["coefficients"]
    assert shown_accuracy(at) == pytest.approx({t: 100 * a for t, a in tuned["accuracy"].items()})


# -- disentanglement --------------------------------------------------------------------------------------------------
def test_disentanglement_computes_missing_grids(new_app):
    at = new_app()
    at.switch_page("pages/disentanglement.py").run()
    at.selectbox(key="xi_t1").set_value(COLOURS).run()
    at.selectbox(key="xi_t2").set_value(QUADS).run()  # not precomputed in the tiny bundle
    clean(at)
    assert charts(at) == 0 and [b for b in at.button if b.key == "xi_compute"]
    at.button(key="xi_compute").click().run(timeout=300)
    clean(at)
    assert charts(at) == 4 and len(table(at, "mean ξ (prediction)")) == 4
    assert not [b for b in at.button if b.key == "xi_compute"]  # the offer goes with the run that computed
    assert not any("Not precomputed" in i.value for i in at.info)
    at.toggle(key="xi_rep").set_value(True).run()  # the representation variant: same grids, no recomputation
    clean(at)
    assert charts(at) == 4 and not [b for b in at.button if b.key == "xi_compute"]


def test_xi_offers_only_pairs_of_two_tasks(new_app, bundle):
    """A workspace vector of Task 1's own task is no partner: ξ scores each vector on its own task's images."""
    at = new_app()
    at.switch_page("pages/upload.py").run()
    blob = bundle.vectors["attn"][COLOURS].scale(0.5).to_bytes()
    at.file_uploader(key="upload_files").set_value(("half.safetensors", blob, "x")).run()
    at.switch_page("pages/disentanglement.py").run()
    at.selectbox(key="xi_t1").set_value(COLOURS).run()
    clean(at)
    assert "half" not in at.selectbox(key="xi_t2").options and STRIPES in at.selectbox(key="xi_t2").options
    at.selectbox(key="xi_t1").set_value("half").run()
    assert COLOURS not in at.selectbox(key="xi_t2").options
    clean(at)


def test_xi_click_maps_rows_to_task1_and_columns_to_task2():
    from ui.state import xi_click

    assert xi_click({"x": 0.571, "y": -1.43}, "a", "b") == {"a": -1.45, "b": 0.55}
    assert xi_click({"x": 5.0, "y": 0.0}, "a", "b") == {"a": 0.0, "b": 2.0}  # clipped to the slider range
    assert xi_click({}, "a", "b") is None


def test_a_new_vector_says_where_it_shows_up():
    """Upload and Train add a vector to the workspace and select it: the note says so, and names the mode to switch
    to when the sidebar shows another one (a view shows its source mode's vectors)."""
    from types import SimpleNamespace

    from ui.state import selected_note

    assert selected_note(SimpleNamespace(mode="attn", tie=False), "attn") == (
        "selected in the sidebar, at λ = 0: move its slider to add it")
    assert f"switch the mode to {mode_label('full')}" in selected_note(SimpleNamespace(mode="attn", tie=False), "full")
    assert "switch" not in selected_note(SimpleNamespace(mode="full@attn", tie=True), "full")
    assert "at the shared α" in selected_note(SimpleNamespace(mode="full@attn", tie=True), "full")


# -- bundles ------------------------------------------------------------------------------------------------------
def test_without_a_bundle_the_app_explains_how_to_build_one(app_env, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from conftest import ROOT

    monkeypatch.delenv("ARITH_BUNDLE")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    clean(at)
    assert at.subheader[0].value == "No bundle to open yet"
    assert any("build-bundle" in c.value for c in at.code)


def test_a_damaged_bundle_gets_a_message_not_a_traceback(new_app, bundle_dir, tmp_path, monkeypatch):
    broken = tmp_path / "broken"
    shutil.copytree(bundle_dir, broken)
    with open(broken / "heads.safetensors", "ab") as fh:
        fh.write(b"\0")
    monkeypatch.setenv("ARITH_BUNDLE", str(broken))
    at = new_app()
    assert not at.exception
    assert any("heads.safetensors" in e.value for e in at.error)
    assert at.subheader[0].value == "No bundle to open yet"


def test_tensors_that_fail_to_load_show_their_error_where_they_are_needed(new_app, copy, monkeypatch):
    rel = Files.vector("attn", STRIPES)
    rewrite(copy, rel, lambda t: next(iter(t.values())).fill_(float("inf")))  # the sha256 matches: the index opens
    monkeypatch.setenv("ARITH_BUNDLE", str(copy))
    at = new_app()  # the first view comes from the index and the precomputed results
    clean(at)
    assert at.title[0].value == "Task arithmetic"
    at.switch_page("pages/vectors.py").run()  # a page that needs the tensors waits for them: the error, not the page
    assert not at.exception and any(rel in e.value for e in at.error)
    assert [t.value for t in at.title] != ["Task vectors"]
    at.switch_page("pages/arithmetic.py").run()  # the failed load is kept: every later run names the file
    assert not at.exception and any(rel in e.value for e in at.error)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_tensors_that_cannot_go_to_the_device_get_a_message_and_another_try(new_app, monkeypatch):
    monkeypatch.setenv("ARITH_DEVICE", "cuda")  # no GPU here: moving θ0 fails, and it is not the bundle's fault
    at = new_app()
    clean(at)  # the first view needs no tensors
    for _ in range(2):  # each run tries again, and says so
        at.switch_page("pages/kernel.py").run()
        assert not at.exception and any("Could not load the tensors" in e.value for e in at.error)


def test_bundle_discovery_order(tmp_path, monkeypatch, bundle_dir):
    from ui.state import discover_bundles

    root = tmp_path / "precomputed"
    for name in ("zeta", "default", "alpha", "not-a-bundle"):
        (root / name).mkdir(parents=True)
        if name != "not-a-bundle":
            (root / name / "manifest.json").write_text("{}")
    monkeypatch.setenv("ARITH_PRECOMPUTED_DIR", str(root))
    monkeypatch.delenv("ARITH_BUNDLE", raising=False)
    assert [r.label for r in discover_bundles()] == ["default", "alpha", "zeta"]
    monkeypatch.setenv("ARITH_BUNDLE", str(bundle_dir))
    refs = discover_bundles()
    assert refs[0].path == bundle_dir.resolve() and refs[0].source == "$ARITH_BUNDLE"
    assert [r.label for r in refs[1:]] == ["default", "alpha", "zeta"]


def test_the_app_never_mutates_shared_objects(new_app, bundle_dir):
    at = new_app()
    at.sidebar.slider(key=f"w_coef::{STRIPES}").set_value(-1.0).run()
    for page in PAGES:
        at.switch_page(page).run()
        clean(at)
    ex = at.session_state["_ctx"].ex
    fresh = load_bundle(bundle_dir)
    assert fingerprint(ex.bundle.base.params) == fingerprint(fresh.base.params)
    assert json.dumps(ex.bundle.results, sort_keys=True) == json.dumps(fresh.results, sort_keys=True)
    for mode, vs in fresh.vectors.items():
        for task, tv in vs.items():
            mine = ex.bundle.vectors[mode][task]
            assert all(torch.equal(mine.tensors[k], t) for k, t in tv.tensors.items())


def test_a_bundle_without_precomputed_results_computes_them(new_app, bundle_dir, tmp_path, monkeypatch):
    bare = tmp_path / "bare"
    shutil.copytree(bundle_dir, bare)
    manifest = json.loads((bare / "manifest.json").read_text())
    for rel in [r for r in manifest["files"] if r.startswith(("results/", "cache/"))]:
        del manifest["files"][rel]
        (bare / rel).unlink()
    (bare / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("ARITH_BUNDLE", str(bare))
    at = new_app()
    clean(at)
    assert set(coefs_in_url(at).values()) == {0.3}  # no validation α shipped: the fallback opening coefficient
    for page in PAGES:
        at.switch_page(page).run(timeout=300)
        clean(at)
    at.switch_page("pages/disentanglement.py").run()
    assert charts(at) == 0 and [b for b in at.button if b.key == "xi_compute"]  # nothing precomputed: offered


def test_a_mode_only_the_workspace_has(new_app, bundle):
    from arith.finetune import finetune
    from arith.specs import FinetuneConfig

    data = bundle.data[COLOURS]["val"]
    cfg = FinetuneConfig(mode="attn_bias", steps=2, batch_size=8, lr=1e-3, warmup_steps=0)
    tv = finetune(bundle.base, bundle.heads[COLOURS], data, cfg, task=COLOURS).vector
    at = new_app()
    at.switch_page("pages/upload.py").run()
    at.file_uploader(key="upload_files").set_value(("ab.safetensors", tv.to_bytes(), "x")).run()
    assert "Attention-only + biases" in at.sidebar.selectbox(key="w_mode").options  # the mode's label
    at.sidebar.selectbox(key="w_mode").set_value("attn_bias").run()
    assert at.sidebar.multiselect(key="w_tasks").options == ["ab"]
    at.sidebar.multiselect(key="w_tasks").set_value(["ab"]).run()
    at.sidebar.slider(key="w_coef::ab").set_value(1.0).run()
    for page in PAGES:
        at.switch_page(page).run()
        clean(at)
    # a round trip through a mode without the vector selects it again, at its coefficient
    at.sidebar.selectbox(key="w_mode").set_value("attn").run()
    assert "ab" not in at.sidebar.multiselect(key="w_tasks").value
    at.sidebar.selectbox(key="w_mode").set_value("attn_bias").run()
    clean(at)
    assert at.sidebar.multiselect(key="w_tasks").value == ["ab"] and at.sidebar.slider(key="w_coef::ab").value == 1.0


def test_modes_trained_at_different_learning_rates_say_so(new_app, bundle_dir, tmp_path, monkeypatch):
    """The mode comparison names each mode's fine-tuning lr, and says when they differ (then it is not only about
    what each mode trains); the tiny bundle trains every mode at one lr, so it says nothing there."""
    at = new_app()
    modes = table(at, "bundle's lr")
    assert set(modes["bundle's lr"]) == {"0.003"}
    assert not [c for c in at.info if "different learning rates" in c.value]
    other = tmp_path / "lrs"
    shutil.copytree(bundle_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["finetune"]["attn"]["lr"] = 0.001  # the manifest is not in its own checksum list
    (other / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("ARITH_BUNDLE", str(other))
    at = new_app()
    modes = table(at, "bundle's lr")
    assert dict(zip(modes["mode"], modes["bundle's lr"]))[mode_label("attn")] == "0.001"
    said = [c.value for c in at.info if "different learning rates" in c.value]
    assert len(said) == 1 and f"{mode_label('attn')} 0.001" in said[0] and f"{mode_label('full')} 0.003" in said[0]


def test_arith_autocast_runs_the_app_under_autocast_and_a_bad_value_is_named(new_app, monkeypatch):
    monkeypatch.setenv("ARITH_AUTOCAST", "bf16")
    at = new_app()
    at.sidebar.slider(key=f"w_coef::{STRIPES}").set_value(-1.5).run()  # computed, not a stored row
    assert not at.exception and not at.error and shown_accuracy(at)
    monkeypatch.setenv("ARITH_AUTOCAST", "half")
    at = new_app()
    assert not at.exception
    assert any("ARITH_AUTOCAST must be bf16, fp16 or fp32 (or unset), not 'half'" in e.value for e in at.error)


@pytest.mark.parametrize("value, said", [("abc", "ARITH_MAX_PER_TASK must be a positive whole number of images"),
                                         ("0", "ARITH_MAX_PER_TASK must be a positive whole number of images")])
def test_a_bad_arith_max_per_task_is_named(new_app, monkeypatch, value, said):
    monkeypatch.setenv("ARITH_MAX_PER_TASK", value)
    at = new_app()
    assert not at.exception and any(said in e.value for e in at.error)


def test_a_view_is_chosen_like_a_mode_and_every_page_shows_it_beside_the_modes(new_app, engine, bundle):
    at = new_app()
    box = at.sidebar.selectbox(key="w_mode")
    assert box.options[-4:] == [mode_label(v) for v in engine.views] == [
        "Full fine-tuning, attention part", "Full fine-tuning, MLP part", "Linearized (NTK), attention part",
        "Linearized (NTK), MLP part"]
    box.set_value("full@attn").run()
    clean(at)
    coefs = {n: float(at.sidebar.slider(key=f"w_coef::{n}").value) for n in (STRIPES, COLOURS, QUADS)}
    ref = engine.evaluate("full@attn", coefs, "test")
    assert shown_accuracy(at) == pytest.approx({t: 100 * a for t, a in ref["accuracy"].items()})
    assert ref["accuracy"] != engine.evaluate("full", coefs, "test")["accuracy"]  # the cut is what is shown
    assert f"cut vector alone, {mode_label('full@attn')} (%)" in table(at, "edited (%)").columns  # not fine-tuned
    modes = table(at, "bundle's lr")
    assert list(modes["mode"])[-1] == mode_label("full@attn")
    assert modes["bundle's lr"].iloc[-1] == modes["bundle's lr"].iloc[0]  # a view's lr is its source's (full)
    assert at.query_params["mode"] == "full@attn"
    for page in PAGES:
        at.switch_page(page).run()
        clean(at)
    at.switch_page("pages/kernel.py").run()
    assert len(table(at, "accuracy, non-linear (%)")) == 5  # four modes, then the view
    at.switch_page("pages/vectors.py").run()
    assert len(table(at, "L2 norm")) == 15
    at.switch_page("pages/export.py").run()
    assert any("--mode full@attn" in c.value for c in at.code)
    at.switch_page("pages/disentanglement.py").run()
    assert charts(at) == 4 and [b for b in at.button if b.key == "xi_compute"]  # the view's grid is computed
    at.button(key="xi_compute").click().run(timeout=300)
    clean(at)
    assert charts(at) == 5
    # a full vector uploaded in this session is in the view too, cut, in every table and chart of the vectors page
    at.switch_page("pages/upload.py").run()
    mine = bundle.vectors["full"][COLOURS].scale(0.5)
    at.file_uploader(key="upload_files").set_value(("half.safetensors", mine.to_bytes(), "x")).run()
    clean(at)
    assert at.sidebar.selectbox(key="w_mode").value == "full@attn" and "half" in at.sidebar.multiselect(key="w_tasks").value
    at.switch_page("pages/vectors.py").run()
    clean(at)
    norms = table(at, "L2 norm")
    row = norms[(norms["vector"] == "half") & (norms["mode"] == mode_label("full@attn"))]
    assert row["L2 norm"].iloc[0] == pytest.approx(mine.cut(get_mode("attn")).norm())
    specs = [json.loads(c.proto.spec)["data"][0] for c in at.get("plotly_chart")]
    heat = next(d for d in specs if d.get("type") == "heatmap")
    assert f"half · {mode_label('full@attn')}" in heat["x"] and f"half · {mode_label('full')}" in heat["x"]
    at.multiselect(key="vec_modes").set_value(["full@attn"]).run()  # the view alone still has the session's vector
    heat = next(d for d in (json.loads(c.proto.spec)["data"][0] for c in at.get("plotly_chart")) if d.get("type") == "heatmap")
    assert sorted(heat["x"]) == sorted(f"{n} · {mode_label('full@attn')}" for n in (STRIPES, COLOURS, QUADS, "half"))
    # training with a view current: the form opens on the view's source mode, and the new vector is shown, cut
    at.switch_page("pages/train.py").run()
    assert at.selectbox(key="train_mode").value == "full"
    train_quads(at, "full", 2, "quads-cut")
    assert "quads-cut" in at.sidebar.multiselect(key="w_tasks").value
    assert not any("switch the mode" in s.value for s in at.success)
    # a link opens the view; a view of a linearized mode is the linear model (the export says so)
    b = new_app({"mode": "linear@mlp"})
    clean(b)
    assert b.sidebar.selectbox(key="w_mode").value == "linear@mlp"
    b.switch_page("pages/export.py").run()
    assert any("Linearized mode" in w.value for w in b.warning)
    for odd in ("full@nope", "attn@mlp", "full@attn@mlp"):  # not a view: named, and the app opens on attn
        c = new_app({"mode": odd})
        clean(c)
        assert c.sidebar.selectbox(key="w_mode").value == "attn"
        assert any(f"mode {odd!r} is not in this bundle" in w.value for w in c.sidebar.warning)


def test_disentanglement_at_one_length_computes_every_modes_grid_on_one_scale(new_app, engine):
    at = new_app()
    at.switch_page("pages/disentanglement.py").run()
    assert charts(at) == 4  # the stored grids, as built
    at.toggle(key="xi_at_length").set_value(True).run()
    clean(at)
    assert charts(at) == 0 and [b for b in at.button if b.key == "xi_compute"]  # never the stored grids
    at.select_slider(key="xi_length").set_value(0.025).run()
    at.button(key="xi_compute").click().run(timeout=300)
    clean(at)
    assert charts(at) == 4
    t1, t2 = at.selectbox(key="xi_t1").value, at.selectbox(key="xi_t2").value
    means = table(at, "mean ξ (prediction)")
    grid = [float(a) for a in json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]["x"]]
    for m, shown in zip(engine.modes, means["mean ξ (prediction)"]):
        assert shown == pytest.approx(engine.xi(m, t1, t2, grid, length=0.025)["mean"]["prediction"])
    assert any("At one length" in c.value for c in at.caption)
    at.toggle(key="xi_at_length").set_value(False).run()  # back to the vectors as built: the stored grids at once
    assert charts(at) == 4 and not [b for b in at.button if b.key == "xi_compute"]


# -- a researcher's own vectors: the app review's findings ----------------------------------------------------------
def test_fine_tuned_weights_upload_as_their_task_vector(new_app, bundle):
    """θ_t as a safetensors state dict (prefixed, bf16 untouched tensors as a half-precision save would leave them)
    joins the workspace as θ_t − θ0 in the narrowest mode; files that are not weights, or without a task, are named."""
    from safetensors.torch import save as st_save

    tau = bundle.vectors["attn"][STRIPES].scale(0.5)
    theta_t = {f"model.{k}": (t + tau.tensors[k] if k in tau.tensors else t.to(torch.bfloat16))
               for k, t in bundle.base.params.items()}
    at = new_app()
    at.switch_page("pages/upload.py").run()
    at.radio(key="upload_kind").set_value("fine-tuned weights θ_t").run()
    assert not at.get("checkbox") or all(c.key != "upload_assume_base" for c in at.get("checkbox"))
    blob = st_save({k: v.contiguous() for k, v in theta_t.items()})
    at.file_uploader(key="upload_files").set_value([("mine.safetensors", blob, "x"),
                                                    ("vec.safetensors", tau.to_bytes(), "x")]).run()
    errors = [e.value for e in at.error]
    assert any(e.startswith("mine.safetensors: fine-tuned weights do not say their task") for e in errors), errors
    assert any(e.startswith("vec.safetensors: a task vector (its metadata says so)") for e in errors), errors
    at.selectbox(key="upload_task").set_value(STRIPES).run()
    ws = workspace(at)
    assert list(ws) == ["mine"] and (ws["mine"].task, ws["mine"].mode) == (STRIPES, "attn")
    assert set(ws["mine"].tensors) == set(tau.tensors)
    assert all(torch.allclose(ws["mine"].tensors[k], tau.tensors[k], atol=1e-6) for k in tau.tensors)
    assert any("mine.safetensors: added as 'mine': " in s.value for s in at.success)
    # a message per file: the refusal before the task was chosen is replaced by the result
    assert not any(e.value.startswith("mine.safetensors:") for e in at.error)


def test_merged_weights_exported_by_the_app_upload_back_as_weights(new_app, bundle):
    """The Export page's merged weights are fine-tuned weights too: uploaded as θ_t they give back the edit; a full
    CLIP state dict's text tower is left out and said so; a linearized mode's merged weights are refused."""
    from safetensors.torch import save as st_save

    from arith.export import merged_safetensors

    vs = bundle.vectors["attn"]
    merged = merged_safetensors(bundle.base.params, vs, {STRIPES: 0.5}, base_id=bundle.base.id, mode="attn")
    lin = merged_safetensors(bundle.base.params, bundle.vectors["linear"], {STRIPES: 0.5}, base_id=bundle.base.id,
                             mode="linear")
    with_text = st_save({**{k: v.contiguous() for k, v in bundle.base.params.items()},
                         "visual.transformer.resblocks.0.attn.out_proj.weight":
                             bundle.base.params["visual.transformer.resblocks.0.attn.out_proj.weight"] + 0.01,
                         "token_embedding.weight": torch.zeros(4, 2), "ln_final.weight": torch.ones(2)})
    at = new_app()
    at.switch_page("pages/upload.py").run()
    at.radio(key="upload_kind").set_value("fine-tuned weights θ_t").run()
    at.selectbox(key="upload_task").set_value(STRIPES).run()
    at.file_uploader(key="upload_files").set_value([("merged.safetensors", merged, "x"), ("lin.safetensors", lin, "x"),
                                                    ("clip.safetensors", with_text, "x")]).run()
    assert not at.exception
    ws = workspace(at)
    assert ws["merged"].mode == "attn"
    assert all(torch.allclose(ws["merged"].tensors[k], 0.5 * vs[STRIPES].tensors[k], atol=1e-6) for k in vs[STRIPES].tensors)
    assert any(e.value.startswith("lin.safetensors: merged weights of a linearized mode") for e in at.error)
    assert any(s.value.startswith("clip.safetensors: added") and "2 tensor(s) outside the image encoder" in s.value
               for s in at.success)


def test_twins_in_one_upload_are_one_vector_and_every_page_still_runs(new_app, bundle):
    at = new_app()
    at.switch_page("pages/upload.py").run()
    blob = bundle.vectors["attn"][COLOURS].scale(0.5).to_bytes()
    at.file_uploader(key="upload_files").set_value([("a.safetensors", blob, "x"), ("b.safetensors", blob, "x"),
                                                    ("c.safetensors", blob, "x")]).run()
    assert not at.exception and list(workspace(at)) == ["a"]
    tasks = at.sidebar.multiselect(key="w_tasks").value
    assert tasks.count("a") == 1
    for page in ("pages/arithmetic.py", "pages/vectors.py", "pages/export.py"):
        at.switch_page(page).run()
        assert not at.exception, page


def test_a_files_own_task_and_mode_are_never_overridden_by_the_pickers(new_app, bundle):
    at = new_app()
    at.switch_page("pages/upload.py").run()
    at.selectbox(key="upload_task").set_value(STRIPES)
    at.selectbox(key="upload_mode").set_value("mlp")
    tv = bundle.vectors["attn"][COLOURS].scale(0.5)  # its metadata: COLOURS, attn
    at.file_uploader(key="upload_files").set_value(("half.safetensors", tv.to_bytes(), "x")).run()
    assert [(v.task, v.mode) for v in workspace(at).values()] == [(COLOURS, "attn")]
    # the same tensors labelled with another task are another vector (another head scores them), not a duplicate
    relabelled = dict(tv.metadata(), **{Meta.TASK: QUADS})
    at.file_uploader(key="upload_files").set_value(
        ("quads.safetensors", st_save(dict(tv.tensors), metadata=relabelled), "x")).run()
    assert sorted(v.task for v in workspace(at).values()) == sorted([COLOURS, QUADS])


def test_upload_and_train_settings_survive_a_visit_to_another_page(new_app, bundle):
    at = new_app()
    at.switch_page("pages/train.py").run()
    at.number_input(key="train_lr::attn").set_value(2e-3)
    at.number_input(key="train_seed::attn").set_value(5)
    at.number_input(key="train_n").set_value(64)
    train_quads(at, "attn", 12, "quick")  # the form's values count once submitted
    # the recipe over 12 steps keeps its warm-up's share, as `finetune --steps 12` does
    trained = FinetuneConfig.from_json(workspace(at)["quick"].meta[Meta.CONFIG])
    assert trained.warmup_steps == bundle.finetune_config("attn").with_steps(12).warmup_steps
    at.selectbox(key="train_mode").set_value("mlp").run()
    at.switch_page("pages/upload.py").run()
    at.selectbox(key="upload_mode").set_value("mlp")
    at.selectbox(key="upload_task").set_value(QUADS)
    at.checkbox(key="upload_assume_base").check().run()
    at.switch_page("pages/arithmetic.py").run()
    at.switch_page("pages/train.py").run()
    assert (at.selectbox(key="train_task").value, at.selectbox(key="train_mode").value) == (QUADS, "mlp")
    at.selectbox(key="train_mode").set_value("attn").run()
    assert [at.number_input(key=f"train_{f}::attn").value for f in ("steps", "batch", "seed")] == [12, 16, 5]
    assert at.number_input(key="train_lr::attn").value == pytest.approx(2e-3)
    assert (at.number_input(key="train_n").value, at.text_input(key="train_name").value) == (64, "quick")
    at.switch_page("pages/upload.py").run()
    assert (at.selectbox(key="upload_mode").value, at.selectbox(key="upload_task").value) == ("mlp", QUADS)
    assert at.checkbox(key="upload_assume_base").value


def test_a_name_queued_twice_is_selected_once(new_app):
    """The sidebar takes a name queued twice for selection once (one widget key per name), whoever queued it."""
    from ui.state import S_SELECT

    at = new_app()
    at.sidebar.multiselect(key="w_tasks").set_value([STRIPES]).run()
    at.session_state[S_SELECT] = [QUADS, QUADS]
    at.run()
    assert not at.exception and at.sidebar.multiselect(key="w_tasks").value == [STRIPES, QUADS]


def test_extensions_reach_the_app(new_app, extension, monkeypatch):
    extension("lab_app_ext", "from arith.merge import MergeMethod, register_merge_method, task_arithmetic\n"
                             "register_merge_method(MergeMethod('lab_sum', 'Lab sum', "
                             "lambda vs, cs: task_arithmetic(vs, cs), linear=False))\n")
    assert "Lab sum" in new_app().sidebar.selectbox(key="w_method").options
    monkeypatch.setenv("ARITH_EXTENSIONS", "lab_missing_app_ext")
    at = new_app()
    assert any("lab_missing_app_ext" in e.value for e in at.error) and not at.exception


@pytest.mark.parametrize("mode", ["attn", "full@attn"])
def test_the_export_command_carries_workspace_vectors_under_their_names(new_app, bundle, tmp_path, capsys, mode):
    """The command the Export page prints gives the app's numbers: a workspace vector that shares a task with a
    bundle vector joins as NAME=FILE with its own λ (before, its λ was lost and the bundle's replaced).  In a view
    the file is the uncut vector, which the command cuts as the app does."""
    import shlex

    from arith.cli import main

    at = new_app()
    at.sidebar.selectbox(key="w_mode").set_value(mode).run()
    at.switch_page("pages/upload.py").run()
    mine = bundle.vectors[source_of(mode)][COLOURS].scale(0.5)
    at.file_uploader(key="upload_files").set_value(("my half.safetensors", mine.to_bytes(), "x")).run()
    at.sidebar.slider(key="w_coef::my half").set_value(1.0).run()
    at.switch_page("pages/arithmetic.py").run()
    shown = shown_accuracy(at)
    at.switch_page("pages/export.py").run()
    clean(at)
    cmd = at.code[2].value
    assert "--vector my-half.safetensors" not in cmd and shlex.quote("my half=my-half.safetensors") in cmd
    assert any(d.label == "Download my-half.safetensors" for d in at.get("download_button"))
    mine.save(tmp_path / "my-half.safetensors")
    argv = shlex.split(cmd.replace("\\\n", " "))[3:]  # after "python -m arith"
    argv = [a.replace("my-half.safetensors", str(tmp_path / "my-half.safetensors")) for a in argv]
    assert main(["evaluate", *argv[1:], "--bundle", str(bundle.root), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["accuracy"]
    assert {t: 100 * a for t, a in got.items() if t in shown} == pytest.approx(shown, abs=1e-3)
    assert len(shown) == 3  # every task, COLOURS edited by both its vectors


def test_each_export_download_is_its_own_workspace_vector(new_app, bundle, monkeypatch):
    """The Export page's download buttons hand out each workspace vector's own file, under the name its command
    line uses, also when two names make the same file name (the second gets ``-2``)."""
    from streamlit.delta_generator import DeltaGenerator

    from arith.taskvec import load_task_vector

    offered = {}
    original = DeltaGenerator.download_button

    def record(self, label, data, file_name=None, *args, **kwargs):  # kept to be called after the run, as a click is
        if kwargs.get("key", "").startswith("export_vec::"):
            offered[file_name] = data
        return original(self, label, data, file_name, *args, **kwargs)

    monkeypatch.setattr(DeltaGenerator, "download_button", record)
    at = new_app()
    at.switch_page("pages/upload.py").run()
    mine = {"my half": bundle.vectors["attn"][COLOURS].scale(0.5), "my-half": bundle.vectors["attn"][STRIPES].scale(0.25)}
    at.file_uploader(key="upload_files").set_value([(f"{n}.safetensors", tv.to_bytes(), "x")
                                                    for n, tv in mine.items()]).run()
    for n in mine:
        at.sidebar.slider(key=f"w_coef::{n}").set_value(0.5).run()
    at.switch_page("pages/export.py").run()
    clean(at)
    files = {"my half": "my-half.safetensors", "my-half": "my-half-2.safetensors"}
    cmd = at.code[2].value
    assert all(f"{n}={f}" in cmd for n, f in files.items()) and set(offered) == set(files.values())
    for n, f in files.items():
        got = load_task_vector(offered[f]() if callable(offered[f]) else offered[f], bundle.base)
        assert (got.task, got.mode) == (mine[n].task, mine[n].mode)
        assert all(torch.equal(got.tensors[k], mine[n].tensors[k]) for k in mine[n].tensors)


def test_a_coefficient_set_saved_with_other_tensors_says_so(new_app, bundle):
    at = new_app()
    at.switch_page("pages/upload.py").run()
    at.file_uploader(key="upload_files").set_value(
        ("mine.safetensors", bundle.vectors["attn"][COLOURS].scale(0.5).to_bytes(), "x")).run()
    at.switch_page("pages/export.py").run()
    record = parse_coefficient_set(at.code[0].value, bundle.base.id)
    record["vectors"]["mine"]["uid"] = "0" * 16  # saved in a session whose 'mine' was another file
    at.file_uploader(key="export_import").set_value(("set.json", json.dumps(record).encode(), "application/json")).run()
    clean(at)
    assert any("mine here is not the vector the set was saved with" in w.value for w in at.warning)


def test_a_vector_of_a_task_the_bundle_lacks_is_named_where_it_cannot_be_scored(new_app, bundle):
    at = new_app()
    at.switch_page("pages/upload.py").run()
    tv = bundle.vectors["attn"][COLOURS].scale(0.5)
    meta = dict(tv.metadata(), **{Meta.TASK: "elsewhere"})
    at.file_uploader(key="upload_files").set_value(("other.safetensors", st_save(dict(tv.tensors), metadata=meta),
                                                    "x")).run()
    assert any("is none of the bundle's" in s.value for s in at.success)
    at.sidebar.slider(key="w_coef::other").set_value(1.0).run()
    at.switch_page("pages/arithmetic.py").run()
    assert any("other (task elsewhere, λ 1)" in c.value for c in at.caption)
    for page in ("pages/disentanglement.py", "pages/kernel.py"):
        at.switch_page(page).run()
        assert not at.exception and not at.error, page
        assert any(c.value.startswith("Left out: other") for c in at.caption), page
