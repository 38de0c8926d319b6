"""View 3, weight disentanglement: ξ(α1, α2) heatmaps for a pair of tasks, one per mode, on one colour scale."""

from functools import partial

import numpy as np
import pandas as pd
import streamlit as st

from arith.disentangle import GRID
from ui import charts
from ui.common import Progress, guard
from ui.state import METHOD, context, mode_label, request_view, snap, xi_click

LENGTHS = (0.01, 0.025, 0.05, 0.1, 0.2)  # ‖τ‖ / ‖θ0‖; the embedded default's vectors measure 0.02–0.09

ctx = context()
ex = ctx.ex
st.title("Weight disentanglement")
st.markdown("**Dark = disentangled**: adding the other task's vector leaves this task's predictions alone. Each cell "
            "is ξ, the share of each task's test predictions that change when the other task's vector joins, summed "
            "over the two tasks (0 to 2).",
            help="ξ(α1, α2) = Σ_t E_x∼D_t 1[f_t(x; θ0 + α_t τ_t) ≠ f_t(x; θ0 + α1 τ1 + α2 τ2)] (Ortiz-Jimenez et al. "
                 "2023, method.md §4).")
st.caption("Click a cell to open that model, θ0 + α1 τ1 + α2 τ2: the sidebar then switches to that panel's mode and "
           "selects just these two tasks at the cell's coefficients.")

names, unscored = ctx.scored_names()
if unscored:
    st.caption(f"Left out: {', '.join(unscored)}, vectors of tasks this bundle has no images of.")
if len(names) < 2:
    st.info("Weight disentanglement needs two task vectors in this mode.")
    st.stop()

# default pair: the first pair the bundle has precomputed (for this mode, else for any: a view or a workspace-only
# mode then opens on the pair and grid the bundle's modes show at once), else the first two tasks
stored = ex.result("disentanglement") or {}
pre = stored.get(ctx.mode) or next((g for g in stored.values() if isinstance(g, dict) and g), {})
first = next((k.split("|") for k in pre if all(p in names for p in k.split("|"))), names[:2])
if st.session_state.get("xi_t1") not in names:
    st.session_state["xi_t1"] = first[0]
c1, c2, c3 = st.columns([2, 2, 3])
t1 = c1.selectbox("Task 1 (rows, α1)", names, key="xi_t1", persist_state="session")
task_of = ex.catalog(ctx.mode, ctx.extra())  # vector name -> its task
others = [n for n in names if task_of[n] != task_of[t1]]  # ξ scores each vector on its own task's images: two tasks
if not others:
    st.info(f"ξ needs two vectors of different tasks: every other vector here is of {task_of[t1]!r}, as {t1!r} is.")
    st.stop()
if st.session_state.get("xi_t2") not in others:
    st.session_state["xi_t2"] = first[1] if first[1] in others else others[0]
t2 = c2.selectbox("Task 2 (columns, α2)", others, key="xi_t2", persist_state="session",
                  help=f"The vectors of tasks other than {task_of[t1]!r} (Task 1's): ξ compares two tasks.")
with c3:
    rep = st.toggle("Representation level", key="xi_rep", persist_state="session",
                    help="Heads dropped: ξ counts 1 − cos between the encoder outputs instead of changed predictions.")
    at_length = st.toggle("At one length", key="xi_at_length", persist_state="session",
                          help="Take every vector at the same length ‖τ‖ = L·‖θ0‖ first, so that modes whose vectors "
                               "differ in length are compared at the same distance from θ0 (ξ grows with it). Computed.")
variant = "representation" if rep else "prediction"
length = (st.select_slider("Length L (‖τ‖ as a fraction of ‖θ0‖)", LENGTHS, value=0.05, key="xi_length",
                           persist_state="session") if at_length else None)

# the grid: the one the bundle precomputed, else the papers' 15 × 15 on [−2, 2]
pre_pair = next((pre[k] for k in (f"{t1}|{t2}", f"{t2}|{t1}") if k in pre), None)
grid = [float(a) for a in (pre_pair["alpha1"] if pre_pair else GRID)]
sizes = sorted({5, 9, 15, len(grid)})
axis = "a" if at_length else "α"
n = st.select_slider(f"Grid points per axis ({axis} ∈ [−2, 2])", sizes, value=len(grid), key=f"xi_n_{len(grid)}",
                     persist_state="session",
                     help="Precomputed grids show at once; other grids are computed (n² merged models per mode).")
if n != len(grid):
    grid = [float(a) for a in np.linspace(GRID[0], GRID[-1], n)]

modes = [m for m in ctx.modes if {t1, t2} <= set(ctx.scored_names(m)[0])]


def extra_for(m):
    ws = ctx.extra(m)
    chosen = {k: ws[k] for k in (t1, t2) if k in ws}
    return chosen or None


with guard("ξ grids"):
    ready = {m: ex.cached_xi(m, t1, t2, grid, extra_for(m), length=length) for m in modes}
    missing = [m for m in modes if ready[m] is None]
    if missing:
        label = ", ".join(mode_label(m) for m in missing)
        where = "precomputed for this pair and grid" if length is None else f"computed yet at length {length:g}‖θ0‖"
        offer = st.empty()  # the note and its button go once the grids are computed (not on the next run)
        with offer.container():
            st.info(f"Not {where}: {label} ({len(grid) ** 2} merged models each).")
            clicked = st.button(f"Compute ξ for {label}", type="primary", key="xi_compute")
        if clicked:
            offer.empty()
            for m in missing:
                bar = Progress(f"ξ grid, {mode_label(m)}")
                try:
                    ready[m] = ex.xi(m, t1, t2, grid, extra=extra_for(m), progress=bar, length=length)
                finally:
                    bar.done()
    shown = {m: r for m, r in ready.items() if r is not None}
    if shown:
        zmax = max(max(max(row) for row in r[variant]) for r in shown.values())
        zmax = max(zmax, 1e-6)
        current = (ctx.coefs.get(t1, 0.0), ctx.coefs.get(t2, 0.0))

        def on_click(key: str, m: str) -> None:
            event = st.session_state.get(key)
            points = (event or {}).get("selection", {}).get("points", [])
            if points:
                values = xi_click(points[0], t1, t2)
                if values:
                    request_view(m, values, METHOD)  # the cell's model, θ0 + α1 τ1 + α2 τ2, in the clicked panel's mode

        cols = st.columns(2 if len(shown) == 4 else min(3, len(shown)))
        for i, (m, r) in enumerate(shown.items()):
            key = f"xi_{m}_{t1}_{t2}_{variant}_{len(grid)}_{length}"
            with cols[i % len(cols)]:
                st.plotly_chart(charts.xi_heatmap(r, variant, zmax, mode_label(m), current, names=(t1, t2), snap=snap,
                                                  title_colour=charts.mode_colour(m)),
                                key=key, on_select=partial(on_click, key, m), selection_mode="points")
        st.caption(f"Colour scale shared by all panels: 0 to {zmax:.3f}. ✕ marks the current (λ {t1}, λ {t2})."
                   + ("" if length is None else
                      f" At one length: every vector is rescaled to ‖τ‖ = {length:g}‖θ0‖ before the grid, so a = ±2 "
                      "reaches the same distance from θ0 in every panel; a cell's own λ (hover) and the ✕ (at a = λ "
                      "over the panel's scale, left out when off the grid) differ by mode, and a cell beyond the "
                      "sliders' ±2 opens nothing."))
        st.dataframe(pd.DataFrame([{"mode": mode_label(m), "mean ξ (prediction)": r["mean"]["prediction"],
                                    "mean ξ (representation)": r["mean"]["representation"]}
                                   for m, r in shown.items()]), hide_index=True, key="xi_means",
                     column_config={c: st.column_config.NumberColumn(format="%.3f", help="lower: more disentangled")
                                    for c in ("mean ξ (prediction)", "mean ξ (representation)")})
