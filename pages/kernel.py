"""View 4, kernel behaviour: how close each fine-tuned model is to its linearization at θ0, per mode, and which
weights (attention vs MLP) behave like a kernel."""

import pandas as pd
import streamlit as st

from arith.modes import is_linearized
from arith.report import kernel_agreement, summary_row
from ui import charts
from ui.common import Progress, guard
from ui.state import context, mode_label

ctx = context()
ex = ctx.ex
st.title("Kernel behaviour")
st.caption("A fine-tuned model is in the kernel regime when f(x; θ0 + τ) ≈ f(x; θ0) + J(θ0)τ. For each mode: the "
           "non-linear model θ0 + sτ against its post-hoc linearization, and the linearization restricted to the "
           "attention weights, the MLP weights or the whole model.")

names, unscored = ctx.scored_names()
if unscored:
    st.caption(f"Left out: {', '.join(unscored)}, vectors of tasks this bundle has no images of.")
if not names:
    st.info("No task vectors in this mode.")
    st.stop()
if st.session_state.get("kernel_task") not in names:
    st.session_state["kernel_task"] = ctx.tasks[0] if ctx.tasks else names[0]
name = st.selectbox("Task", names, key="kernel_task", persist_state="session")
modes = [m for m in ctx.modes if name in ctx.scored_names(m)[0]]

with guard("Kernel diagnostics"):
    reports = {}
    for m in modes:
        ws = ctx.extra(m)
        bar = Progress(f"Kernel diagnostics, {mode_label(m)}")
        try:
            reports[m] = ex.kernel(m, name, extra={name: ws[name]} if name in ws else None, progress=bar)
        finally:
            bar.done()
    rows = [summary_row(r) for r in reports.values()]

    st.subheader("At s = 1 (the fine-tuned model)")
    table = pd.DataFrame([{"mode": mode_label(r["mode"]), "accuracy, non-linear (%)": 100 * r["acc_nonlinear"],
                           "accuracy, linearized (%)": 100 * r["acc_linear"], "agreement (%)": 100 * r["agreement"],
                           "rel. error, logits": r["rel_error_logits"], "rel. error, features": r["rel_error_features"],
                           "non-linear advantage": r["nonlinear_advantage"]} for r in rows])
    fmt = {c: st.column_config.NumberColumn(format="%.1f") for c in table.columns if c.endswith("(%)")}
    fmt.update({c: st.column_config.NumberColumn(format="%.3f", help="lower: closer to the linearization")
                for c in table.columns if c.startswith("rel. error")})
    fmt["non-linear advantage"] = st.column_config.NumberColumn(format="%.3f")
    st.dataframe(table, hide_index=True, key="kernel_table", column_config=fmt)
    # the bundle's stored diagnostics over its tasks (the README's results table), on the images this page uses
    stored = kernel_agreement(ex.result("kernel")) if ex.uses_all_images else {}
    over_all = {m: v for m, v in stored.items() if not is_linearized(m)}
    if over_all:
        st.caption("Agreement at s = 1, mean over the tasks with stored diagnostics: "
                   + ", ".join(f"{mode_label(m)} {100 * v:.1f} % ({n} tasks)" for m, (v, n) in over_all.items())
                   + ". Linearized modes are left out: their own model is the linear one.")
    st.caption("Relative error ‖f − f_lin‖ / ‖f − f(θ0)‖; non-linear advantage (acc_nonlinear − acc_linear) / (1 − 1/C) "
               "(Ortiz-Jimenez et al. 2023). For the linearized mode, whose own model is the linearized one, the "
               "non-linear model is its τ run through the ordinary network: a post-hoc check.")

    st.subheader("Along θ0 + sτ")
    a, b = st.columns(2)
    a.plotly_chart(charts.kernel_path(reports, "rel_error_logits", "relative error of the logits"), key="kernel_err")
    b.plotly_chart(charts.kernel_path(reports, "agreement", "prediction agreement (%)", percent=True), key="kernel_agree")

    st.subheader("Linearizing part of τ: attention weights vs MLP weights vs all of τ")
    st.caption("τ kept only on the attention weights (W_q, W_k, W_v, W_o), only on the MLP weights, or whole, each "
               "compared with its own linearization at s = 1. Compare the bars within one mode: a lower error (higher "
               "agreement) for the attention part than for the MLP part is the claim that attention modules behave "
               "like kernels. Missing bars: the mode's vector has no such weights.")
    a, b = st.columns(2)
    a.plotly_chart(charts.restricted_bars(rows, "rel_error_logits", "relative error of the logits"), key="kernel_r_err")
    b.plotly_chart(charts.restricted_bars(rows, "agreement", "prediction agreement (%)", percent=True), key="kernel_r_agree")
    frac = pd.DataFrame([{"mode": mode_label(m), **{f"‖τ_part‖ / ‖τ‖, {s}": (r["restricted"][s] or {}).get("norm_fraction")
                                                     for s in r["restricted"]}}
                         for m, r in reports.items()])
    st.dataframe(frac, hide_index=True, key="kernel_fracs",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in frac.columns if c != "mode"})
    st.caption("The norm of τ restricted to each part over the norm of τ (None: the mode's vector has none there). "
               "A ratio of norms: the squares of the parts add up to at most 1, the rest being embeddings, "
               "LayerNorms and biases.")
