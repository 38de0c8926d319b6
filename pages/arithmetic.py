"""View 1, task arithmetic: accuracy of θ0 + Σ λ_t τ_t per task, the same coefficients under every mode, and the
papers' sweep of the shared α."""

import pandas as pd
import streamlit as st

from arith.merge import get_merge_method, method_label
from arith.metrics import summarize, untouched
from arith.modes import is_linearized, source_of
from arith.report import interference_curve, interference_per_task, interference_rows
from ui import charts
from ui.common import Progress, guard, pct, points_delta
from ui.state import METHOD, context, mode_label, request_view

ctx = context()
st.title("Task arithmetic")
st.caption(("θ = θ0 + Σ_t λ_t τ_t" if ctx.method == METHOD else f"θ = θ0 + δ(λ), merged by {method_label(ctx.method)}")
           + ", evaluated with each task's frozen head on its test split. Move the coefficients in the sidebar; "
           "negative λ negates (forgets) a task.")
ex, mode = ctx.ex, ctx.mode
if ctx.method != METHOD:
    st.info(f"Merge method **{method_label(ctx.method)}**: {get_merge_method(ctx.method).description}. The coefficients "
            "may have been chosen for task arithmetic: *Validation α* or *Per-task λ* in the sidebar choose them for "
            "this method.", icon="🔀")
    st.caption("It applies to the edited model and the comparison of modes. The α sweep below is the papers' task "
               "arithmetic (*Also merged by* adds this method's as dotted lines), and so are the pair costs and "
               "negation.")
tasks = ctx.eval_tasks()


PCT = ("single-task", "each task alone at α", "merged at α", "cost of scaling to α", "cost of the other vectors")


def trained_lr(m: str) -> str:
    """The learning rate the bundle's ``m`` vectors (a view's: its source's) were fine-tuned at, from its manifest."""
    cfg = ex.index.finetune_config(source_of(m))
    return f"{cfg.lr:g}" if cfg else "—"


def subset_summary(acc: dict, ft: dict | None) -> dict:
    """The engine's absolute / normalized accuracy over the tasks that were added."""
    keep = [t for t in tasks if t in acc]
    return summarize({t: acc[t] for t in keep}, {t: ft[t] for t in keep} if ft and all(t in ft for t in keep) else None)


with guard("Evaluating the edited model"):
    res = ex.evaluate(mode, ctx.coefs, "test", extra=ctx.extra(), method=ctx.method)
    zs = ex.zeroshot("test")
    ft = ex.finetuned(mode, "test", extra=ctx.extra())
    acc = res["accuracy"]
    here = subset_summary(acc, ft) if tasks else res
    zs_here = subset_summary(zs, None) if tasks else summarize(zs)

    lam: dict[str, list[tuple[str, float]]] = {}  # task -> its vectors' (name, λ): a workspace vector may share a task
    task_of = ex.catalog(mode, ctx.extra())
    for n, v in ctx.coefs.items():
        lam.setdefault(task_of[n], []).append((n, v))
    left = untouched(acc, zs, ctx.coefs, task_of)  # the tasks no vector of theirs edits, and the leakage into them

    c1, c2, c3, c4, *c5 = st.columns(5 if left else 4)
    c1.metric("Absolute accuracy", pct(here["absolute"]), help="Mean test accuracy over the selected tasks (those at "
              "λ = 0 included)", **points_delta(here["absolute"] - zs_here["absolute"]))
    c2.metric("Normalized accuracy", pct(here.get("normalized")),
              help="Mean over the selected tasks of accuracy / accuracy of the task's own fine-tuned model (same mode)")
    c3.metric("Zero-shot absolute", pct(zs_here["absolute"]), help="θ0 on the same tasks")
    c4.metric("All tasks, absolute", pct(res["absolute"]), help="Mean over every task of the bundle")
    if left:
        c5[0].metric("Tasks at λ = 0", pct(left["absolute"]), **points_delta(left["change"]),
                     help=f"Mean over the {len(left['tasks'])} tasks that no vector with λ ≠ 0 was trained on: what "
                          "they lose is the other vectors' leakage into them.")
    st.plotly_chart(charts.accuracy_bars(acc, zs, ft, tasks, mode), key="acc_bars")
    shared = any(len(v) > 1 for v in lam.values())
    table = pd.DataFrame({"task": list(acc), "edited (%)": [100 * acc[t] for t in acc],
                          "zero-shot (%)": [100 * zs.get(t, float("nan")) for t in acc],
                          f"{charts.alone_label(mode)}, {mode_label(mode)} (%)": [100 * ft[t] if t in ft else float("nan")
                                                                                 for t in acc],
                          "λ": [(" + ".join(f"{v:g} ({n})" for n, v in lam[t]) if t in lam else "0") if shared
                                else lam[t][0][1] if t in lam else 0.0 for t in acc]})
    st.dataframe(table, hide_index=True, key="acc_table",
                 column_config={**{c: st.column_config.NumberColumn(format="%.1f") for c in table.columns[1:4]},
                                **({} if shared else {"λ": st.column_config.NumberColumn(format="%.2f")})})
    outside = [f"{n} (task {t}, λ {v:g})" for t, nv in lam.items() if t not in acc for n, v in nv if v != 0]
    if outside:
        st.caption("Also in the edited model, with no task here to score them (the bundle has no images of their "
                   f"tasks): {', '.join(outside)}.")

st.subheader("The same coefficients under every mode")
st.caption("Interference at a glance: the coefficients above, applied to each mode's own task vectors.")
if not get_merge_method(ctx.method).cached_jvp and any(is_linearized(m) for m in ctx.modes):
    st.caption(f"{method_label(ctx.method)}'s δ is not a weighted sum of fixed vectors, so a linearized mode cannot "
               "reuse its cached J τ_t: each request computes J δ afresh (one Jacobian-vector product; about 1.5–1.8 s "
               "for a ViT-B/32 on an H200, BENCHMARKS.md).")
with guard("Comparing modes"):
    per_mode, rows = {}, []
    skipped = set()  # selected vectors that some mode lacks (λ = 0 there)
    for m in ctx.modes:
        coefs = ctx.coefs_in(m)
        skipped.update(n for n in ctx.coefs if n not in coefs)
        r = ex.evaluate(m, coefs, "test", extra=ctx.extra(m), method=ctx.method)
        f = ex.finetuned(m, "test", extra=ctx.extra(m))
        s = subset_summary(r["accuracy"], f) if tasks else r
        per_mode[m] = r["accuracy"]
        rows.append({"mode": mode_label(m), "bundle's lr": trained_lr(m), "absolute (%)": 100 * s["absolute"],
                     "normalized (%)": 100 * s["normalized"] if s.get("normalized") is not None else None})
    lrs = {m: trained_lr(m) for m in ctx.modes}
    if len(set(lrs.values()) - {"—"}) > 1:  # the comparison is then not only about what each mode trains
        st.info("These modes' vectors were trained at different learning rates ("
                + ", ".join(f"{mode_label(m)} {lr}" for m, lr in lrs.items()) + "), each chosen on validation. A smaller "
                "learning rate gives a shorter τ, which interferes less: the paper compares modes at one learning rate "
                "(for the embedded default, docs/default-bundle.md has both comparisons).", icon="⚠️")
    st.plotly_chart(charts.modes_bars(per_mode), key="modes_bars")
    pct_cols = {c: st.column_config.NumberColumn(format="%.1f") for c in ("absolute (%)", "normalized (%)")}
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="modes_table", column_config=pct_cols)
    with st.expander("Per task"):
        per_task = pd.DataFrame([{"mode": mode_label(m), **{f"{t} (%)": 100 * v for t, v in a.items()}}
                                 for m, a in per_mode.items()])
        st.dataframe(per_task, hide_index=True, key="modes_per_task",
                     column_config={c: st.column_config.NumberColumn(format="%.1f") for c in per_task.columns[1:]})
    if skipped:
        st.caption("Not in every mode (λ = 0 there): " + ", ".join(sorted(skipped)))

st.subheader("Accuracy vs the shared α (task addition)")
st.caption("The papers' protocol: θ0 + α Σ_t τ_t for α ∈ {0, 0.05, …, 1}; ★ = α chosen on validation by "
           "normalized accuracy. Test accuracy shown."
           + ("" if ctx.method == METHOD else f" Dotted, on demand: merged by {method_label(ctx.method)}, α up to "
                                              f"{get_merge_method(ctx.method).alpha_max:g}."))
with guard("Task-addition sweep"):
    selected = {m: names for m in ctx.modes if (names := [n for n in ctx.tasks if n in ex.catalog(m)])}
    if outside := [n for n in ctx.tasks if ctx.is_workspace(n)]:
        st.caption(f"The sweeps add the bundle's vectors of the selected tasks; {', '.join(outside)} (workspace) "
                   "not among them.")
    # the bundle's sweeps (and any this process swept) are drawn at once; another selection's is swept when asked,
    # so that adding or removing a task does not hold the page for a sweep per mode
    todo = [m for m, names in selected.items() if not ex.addition_ready(m, names)]
    if todo:
        offer = st.empty()  # the note and its button go once the sweeps are computed (not on the next run)
        box = offer.container()
        why = ("this choice of tasks or mode" if ex.uses_all_images else
               f"the first {ex.max_per_task} images per task that this server scores")
        box.info(f"Not stored for {why}: {', '.join(map(mode_label, todo))}. The bundle stores "
                 "each of its modes' sweep over all of its tasks; this one scores 21 values of α on the selected tasks' "
                 "validation and test splits (about a second per task and mode for the embedded default on 2 CPU "
                 "cores).", icon="⏳")
        if box.button(f"Sweep α for {len(todo)} mode(s)", key="sweep_compute"):
            offer.empty()
            todo = []
    curves = {}
    for m, names in selected.items():
        if m in todo:
            continue
        bar = Progress(f"Sweeping α for {mode_label(m)}")
        try:
            curves[m] = ex.addition(m, names, progress=bar)
        finally:
            bar.done()
    if not selected:
        st.info("Select at least one of the bundle's task vectors to see the sweep.")
    elif curves:
        metric = st.radio("Metric", ["normalized", "absolute"], horizontal=True, key="sweep_metric",
                          persist_state="session")
        alone = {}
        # persist_state: a widget's choice survives the runs that do not draw it (a hidden toggle, another page)
        if st.toggle("Each task alone at α (dashed)", key="sweep_alone", persist_state="session",
                     help="θ0 + α τ_t on task t, without the other vectors. At one α, the gap from the dashed line "
                          "down to the solid one is what the other task vectors cost (interference); the rise of the "
                          "dashed line from there up to α = 1 (each task's own fine-tuned model) is what the small α "
                          "costs. Stored in bundles built with it, else computed on demand."):
            for m in curves:
                bar = Progress(f"Each task alone for {mode_label(m)}")
                try:
                    alone[m] = ex.alone(m, curves[m]["tasks"], progress=bar)
                finally:
                    bar.done()
        merged = {}
        if ctx.method != METHOD and st.toggle(
                # one toggle per spec: moving an option's widget does not start a new sweep unasked
                f"Also merged by {method_label(ctx.method)} (dotted)", key=f"sweep_method::{ctx.method}",
                persist_state="session",
                help="The same sweep with the vectors merged by the sidebar's merge method, α over its own grid (up "
                     f"to {get_merge_method(ctx.method).alpha_max:g}), chosen on validation the same way: what the "
                     "Validation α preset computes, one sweep per mode, on demand."):
            for m in curves:
                bar = Progress(f"Sweeping α for {mode_label(m)}, merged by {method_label(ctx.method)}")
                try:
                    merged[m] = ex.addition(m, curves[m]["tasks"], progress=bar, method=ctx.method)
                finally:
                    bar.done()
        # the tied α is marked on these curves only when its model's (the sidebar's merge) is drawn
        tied = ctx.coefs[ctx.tasks[0]] if ctx.tie and ctx.tasks and (ctx.method == METHOD or merged) else None
        st.plotly_chart(charts.addition_curves(curves, metric, tied, alone, merged, method_label(ctx.method)),
                        key="sweep")
        sweeps = [(mode_label(m), c) for m, c in curves.items()]
        sweeps += [(f"{mode_label(m)}, {method_label(ctx.method)}", c) for m, c in merged.items()]
        st.dataframe(pd.DataFrame([{"mode": name, "validation-chosen α": c["alpha"],
                                    "absolute (%)": 100 * c["absolute"], "normalized (%)": 100 * c["normalized"]}
                                   for name, c in sweeps]), hide_index=True, key="sweep_table",
                     column_config={"validation-chosen α": st.column_config.NumberColumn(format="%.2f"),
                                    "absolute (%)": st.column_config.NumberColumn(format="%.1f"),
                                    "normalized (%)": st.column_config.NumberColumn(format="%.1f")})
        if alone:
            st.markdown("**What the other vectors cost, along α**")
            st.caption(f"The gap between the dashed and the solid line above, drawn on its own: each task alone minus "
                       f"merged, {metric} accuracy, test, in points (★: the validation-chosen α). The lower a mode's "
                       "line, the less its task vectors interfere.")
            costs = {m: interference_curve(curves[m], alone[m]) for m in alone}
            # task arithmetic's gaps: the tied α is marked only when the sidebar's model is task arithmetic's too
            st.plotly_chart(charts.interference_curves(costs, {m: curves[m]["alpha"] for m in alone}, metric,
                                                       tied if ctx.method == METHOD else None), key="interference_curves")
            at_alpha, _ = interference_rows(ex.index, alone, curves)
            gaps = pd.DataFrame([{**r, "mode": mode_label(r["mode"]), **{k: 100 * v for k, v in r.items() if k in PCT}}
                                 for r in at_alpha]).drop(columns="lr")
            st.caption("At each mode's validation-chosen α (test, absolute accuracy in %; costs in points).")
            st.dataframe(gaps, hide_index=True, key="interference_table",
                         column_config={"addition α": st.column_config.NumberColumn(format="%.2f"),
                                        **{c: st.column_config.NumberColumn(format="%.1f") for c in PCT}})
            with st.expander("Per task: alone and merged at the chosen α"):
                label = {f"{m} {k}": f"{mode_label(m)} {k} (%)" for m in alone for k in ("alone", "merged")}
                per_task = pd.DataFrame([{"task": r["task"], **{label[k]: 100 * v for k, v in r.items() if k != "task"}}
                                         for r in interference_per_task(alone)])
                st.dataframe(per_task, hide_index=True, key="interference_per_task",
                             column_config={c: st.column_config.NumberColumn(format="%.1f") for c in per_task.columns[1:]})
            with st.expander("Which vector costs which task"):
                choices = [m for m in alone if len(curves[m]["tasks"]) > 1]
                if not choices:
                    st.info("Select at least two tasks to see which vector costs which.")
                else:
                    if st.session_state.get("pairs_mode") not in choices:  # opens on the sidebar's mode
                        st.session_state["pairs_mode"] = mode if mode in choices else choices[0]
                    pm = st.selectbox("Mode", choices, format_func=mode_label, key="pairs_mode", persist_state="session")
                    # the bundle's stored matrix is drawn at once; any other is computed only when asked
                    if ex.pairs_stored(pm, curves[pm]["tasks"]) or st.toggle(
                            "Compute every pair", key="sweep_pairs", persist_state="session",
                            help="Task i with θ0 + α τ_i + α τ_j against θ0 + α τ_i, for every ordered pair, at the "
                                 "mode's validation-chosen α (test split). Computed on demand."):
                        bar = Progress(f"Pairs for {mode_label(pm)}")
                        try:
                            pairs = ex.pairs(pm, curves[pm]["tasks"], progress=bar)
                        finally:
                            bar.done()
                        st.plotly_chart(charts.pair_heatmap(pairs), key="pairs_heatmap")
                        others = alone[pm]["interference"]["cost_of_others"]
                        st.caption(f"If their one-at-a-time costs added up, the other vectors would cost a task "
                                   f"{charts.fixed(100 * pairs['additive_cost'])} points on average (the rows' mean sum); "
                                   f"all of them at once cost it {charts.fixed(100 * others)} (the table above).")

st.subheader("Task negation (forgetting)")
st.caption("θ0 − λ τ_t for each task t in this mode, with λ chosen on the validation splits: the largest drop of task "
           "t's accuracy that keeps the other tasks (the control) at ≥ 95 % of their zero-shot accuracy. Test "
           "accuracy at that λ; switch the sidebar's mode to compare modes. *Open* sets the task's coefficient in "
           "the sidebar (θ0 + Σ λ_t τ_t) to −λ.")
NEG_LAMBDA = "λ in θ0 − λ τ_t"
with guard("Task negation"):
    own = ex.catalog(mode)
    targets = [t for t in ex.tasks if own.get(t) == t]  # the bundle's vector of each task
    if len(ex.tasks) < 2 or not targets:
        st.info("Task negation needs a task vector of this bundle and at least one other task as the control.")
        st.stop()
    ready = {t: ex.cached_negation(mode, t) for t in targets}
    missing = [t for t, r in ready.items() if r is None]
    if missing:
        offer = st.empty()  # the note and its button go once the λ are computed (not on the next run)
        box = offer.container()
        subset = "" if ex.uses_all_images else f" on the first {ex.max_per_task} images per task that this server scores"
        box.info(f"Not precomputed in {mode_label(mode)}{subset}: {', '.join(missing)} (21 values of λ each, on "
                 "validation).")
        if box.button(f"Compute negation for {len(missing)} task(s)", key="neg_compute"):
            offer.empty()
            for t in missing:
                bar = Progress(f"Negating {t} ({mode_label(mode)})")
                try:
                    ready[t] = ex.negation(mode, t, progress=bar)
                finally:
                    bar.done()
    done = {t: r for t, r in ready.items() if r is not None}
    if done:
        st.dataframe(pd.DataFrame([{"task": t, NEG_LAMBDA: r["alpha"], "target (%)": 100 * r["target"],
                                    "target zero-shot (%)": 100 * r["zeroshot_target"], "control (%)": 100 * r["control"],
                                    "control zero-shot (%)": 100 * r["zeroshot_control"],
                                    "constraint met": r["constraint_met"]} for t, r in done.items()]),
                     hide_index=True, key="neg_table",
                     column_config={NEG_LAMBDA: st.column_config.NumberColumn(format="%.2f"),
                                    **{c: st.column_config.NumberColumn(format="%.1f") for c in (
                                        "target (%)", "target zero-shot (%)", "control (%)", "control zero-shot (%)")}})
        edge = [t for t, r in done.items() if r.get("curve") and r["alpha"] >= max(p["alpha"] for p in r["curve"])]
        if edge:
            st.caption(f"At the end of the λ searched ({max(p['alpha'] for p in done[edge[0]]['curve']):g}): "
                       f"{', '.join(edge)}. The controls still held there, so a larger λ might forget more.")
        c1, c2 = st.columns([3, 2], vertical_alignment="bottom")
        target = c1.selectbox("Negated model to open", list(done), key="neg_task", persist_state="session")
        c2.button("Open θ0 − λ τ", key="neg_open", width="stretch", on_click=request_view,
                  args=(mode, {target: 0.0 - done[target]["alpha"]}, METHOD),  # the protocol's model
                  help="Selects just this task in the sidebar, at coefficient −λ: the views above then show that model.")
