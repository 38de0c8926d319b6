"""View 2, examples: what the edited model of the sidebar predicts on the test images of one task, against θ0 and the
task's own fine-tuned model: the images it fixes and breaks (accuracy is their net), the same under every mode, and
per class, the classes it confuses."""

import shlex

import pandas as pd
import streamlit as st

from arith.examples import ORDERS, SHOWN, prediction_rows, rows_where
from arith.merge import method_label
from ui import charts
from ui.common import guard, pixels, points_delta
from ui.state import METHOD, cli_command, context, mode_label

ctx = context()
ex = ctx.ex
st.title("Examples")
st.caption("The edited model of the sidebar on the test images of one task, image by image. A change of accuracy is "
           "a net figure: the images the edit *fixes* (θ0 wrong, the edited model right) minus those it *breaks* "
           "(θ0 right, the edited model wrong).")

if not ex.tasks:
    st.info("This bundle holds no evaluation images.")
    st.stop()
edited = ctx.eval_tasks()
if st.session_state.get("examples_task") not in ex.tasks:
    st.session_state["examples_task"] = edited[0] if edited else ex.tasks[0]
task = st.selectbox("Task", ex.tasks, key="examples_task", persist_state="session",
                    help="Any task of the bundle: one the edit leaves at λ = 0 shows what the other vectors do to it.")

with guard("Predicting"):
    r = ex.predictions(ctx.mode, ctx.coefs, task, "test", extra=ctx.extra(), method=ctx.method)
    c, n = r["counts"], r["counts"]["n"]
    lam = {k: v for k, v in r["coefficients"].items() if v}
    st.caption(f"{mode_label(ctx.mode)}"
               + ("" if ctx.method == METHOD else f", merged by {method_label(ctx.method)}") + "; "
               + ("λ: " + ", ".join(f"{k} {v:g}" for k, v in lam.items()) if lam
                  else "every λ is 0: the edited model is θ0") + f"; {n} test images.")

    def share(k: int) -> str:  # k of the n images in percent, written as the tables below write it
        return f"{charts.fixed(100 * k / n)}%"

    cols = st.columns(5 if c["alone"] is not None else 4)
    cols[0].metric("Edited model", share(c["merged"]), **points_delta((c["merged"] - c["base"]) / n, "θ0"),
                   help="Test accuracy on this task")
    cols[1].metric("Zero-shot (θ0)", share(c["base"]))
    cols[2].metric("Fixed", c["fixed"], help="Images θ0 gets wrong and the edited model right")
    cols[3].metric("Broken", c["broken"], help="Images θ0 gets right and the edited model wrong")
    if c["alone"] is not None:
        cols[4].metric(f"{charts.alone_label(ctx.mode).capitalize()}", share(c["alone"]),
                       help=f"θ0 + τ ({r['alone_vector']}, λ = 1), the normaliser of normalized accuracy")

    which = st.radio("Show", list(SHOWN), horizontal=True, key="examples_which", persist_state="session",
                     format_func=lambda w: f"{w} ({len(rows_where(r, w))})", help=" · ".join(
                         f"{w}: {d}" for w, d in SHOWN.items()))
    left, middle, right = st.columns([2, 2, 1])
    order = left.radio("Order", list(ORDERS), horizontal=True, key="examples_order", persist_state="session",
                       format_func=lambda o: {"split": "split", "confident": "most confident",
                                              "unsure": "least confident"}[o],
                       help="By the edited model's probability of its prediction: *wrong*, most confident first, "
                            "lists its confident mistakes")
    count = middle.select_slider("Images", [8, 16, 24, 32, 48, 64], value=24, key="examples_count",
                                 persist_state="session")
    rows = rows_where(r, which, order)
    pages = max(1, -(-len(rows) // count))
    # a page beyond the last (another filter, more images a page) is the last
    st.session_state["examples_page"] = min(max(1, int(st.session_state.get("examples_page", 1))), pages)
    page = right.number_input("Page", min_value=1, max_value=pages, step=1, key="examples_page",
                              help=f"{pages} page(s) of {count} images")
    names, y = r["classes"], r["labels"]
    per_row = 8 if max(map(len, names)) <= 8 else 6  # long class names ("priority road") wrap less in wider cells
    first = (page - 1) * count
    shown = rows[first:first + count]
    if not shown:
        st.info(f"No {which} images ({SHOWN[which]}).")
    else:
        st.caption(f"Images {first + 1}–{first + len(shown)} of {len(rows)}, in {ORDERS[order]}. Under each: its class, "
                   "then the edited model's prediction with its probability, and θ0's; ✓ right, ✗ wrong.")
        images = ex.images(task, "test", shown)
        mark = {True: "✓", False: "✗"}
        for start in range(0, len(shown), per_row):
            for col, i, img in zip(st.columns(per_row), shown[start:start + per_row], images[start:start + per_row]):
                col.image(pixels(img), width="content")
                col.caption(f"**{names[y[i]]}**  \nedited: {names[r['merged'][i]]} {mark[r['merged'][i] == y[i]]} "
                            f"{100 * r['confidence'][i]:.0f}%  \nθ0: {names[r['base'][i]]} {mark[r['base'][i] == y[i]]}")

    st.subheader("The same coefficients under every mode")
    table, skipped = [], set()  # skipped: selected vectors some mode lacks (λ = 0 there)
    for m in ctx.modes:
        coefs = ctx.coefs_in(m)
        skipped.update(k for k, v in ctx.coefs.items() if v and k not in coefs)
        rm = ex.predictions(m, coefs, task, "test", extra=ctx.extra(m), method=ctx.method)
        cm = rm["counts"]
        table.append({"mode": mode_label(m), "edited (%)": 100 * cm["merged"] / cm["n"], "fixed": cm["fixed"],
                      "broken": cm["broken"],
                      "own model (%)": None if cm["alone"] is None else 100 * cm["alone"] / cm["n"]})
    st.dataframe(pd.DataFrame(table), hide_index=True, key="examples_modes",
                 column_config={c: st.column_config.NumberColumn(format="%.1f") for c in ("edited (%)",
                                                                                           "own model (%)")})
    st.caption(f"{task} under each mode's own task vectors at the coefficients above: what the edit fixes and breaks "
               "on this task, mode by mode."
               + (f" Not in every mode (λ = 0 there): {', '.join(sorted(skipped))}." if skipped else ""))

    st.subheader("Per class")
    pc = r["per_class"]
    st.plotly_chart(charts.accuracy_bars(dict(zip(pc["classes"], pc["merged"])), dict(zip(pc["classes"], pc["base"])),
                                         dict(zip(pc["classes"], pc["alone"] or [])), pc["classes"], ctx.mode),
                    key="examples_per_class")
    st.caption("Test accuracy per class: bars the edited model, black lines θ0, diamonds the task's own model."
               + ("" if len(pc["classes"]) == len(r["classes"]) else f" {len(r['classes']) - len(pc['classes'])} "
                  f"of the {len(r['classes'])} classes have no image among the {n} in use and are left out."))

    st.subheader("Confusion matrix")
    change = st.toggle("Against θ0", key="examples_change", persist_state="session",
                       help="The edited model's counts minus θ0's: where the edit moves predictions")
    st.plotly_chart(charts.confusion_heatmap(r, change=change), key="examples_confusion")
    st.download_button("Download the predictions (CSV)", lambda: pd.DataFrame(prediction_rows(r)).to_csv(index=False),
                       file_name=f"predictions-{task}-{ctx.mode}.csv", mime="text/csv", key="examples_csv",
                       on_click="ignore", help="One row per test image: its class, θ0's, the edited model's (with its "
                                               "probability) and the task's own model's prediction, fixed or broken")
    cmd, own = cli_command(ctx, "predict", f"--task {shlex.quote(task)}")
    with st.expander("The same from the command line"):
        st.code(cmd, language="bash")
        if own:
            st.caption("Workspace vectors join the command as files (`--vector NAME=FILE`): the *Export and share* "
                       "page offers each one for download.")
