"""View 5, task vectors: norms, per-block norm profiles and cosine similarities across tasks and modes."""

import pandas as pd
import streamlit as st

from ui import charts
from ui.common import guard
from ui.state import context, mode_label

ctx = context()
ex = ctx.ex
st.title("Task vectors")
st.caption("τ_t = θ_t − θ0 on the tensors each mode trains. Workspace vectors (uploaded or trained in this session) "
           "are included.")


def keep_valid(key: str, options: list[str], *, join_new: bool = False, refill: list[str] | None = None) -> None:
    """A choice kept for the session (``persist_state``) loses what is no longer offered (a removed vector, a mode).
    ``join_new``: options offered since the last visit join it (a view or mode chosen in the sidebar meanwhile, as
    the first visit shows every mode); ``refill``: what a choice left with nothing by that starts again from."""
    seen = st.session_state.get(f"{key}::offered")
    st.session_state[f"{key}::offered"] = list(options)
    if key not in st.session_state:
        return
    had = st.session_state[key]
    kept = [o for o in had if o in options]
    if join_new and seen is not None:
        kept += [o for o in options if o not in seen and o not in kept]
    if had and not kept and refill is not None:
        kept = list(refill)
    st.session_state[key] = kept


keep_valid("vec_modes", ctx.modes, join_new=True)
modes = st.multiselect("Modes", ctx.modes, default=None if "vec_modes" in st.session_state else ctx.modes,
                       format_func=mode_label, key="vec_modes", persist_state="session")
if not modes:
    st.info("Choose at least one mode.")
    st.stop()

with guard("Norms"):
    stats = {m: ex.vector_stats(m, ctx.extra(m)) for m in modes}
    st.subheader("Norms")
    theta0 = ex.theta0_norm  # the unit of the ξ view's "At one length"
    rows = [{"mode": mode_label(m), "vector": n, "task": s["task"], "L2 norm": s["norm"], "‖τ‖ / ‖θ0‖": s["norm"] / theta0,
             "parameters": s["parameters"], "source": "workspace" if ctx.is_workspace(n) else "bundle"}
            for m, vs_ in stats.items() for n, s in vs_.items()]
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="vec_norms",
                 column_config={"L2 norm": st.column_config.NumberColumn(format="%.4g"),
                                "‖τ‖ / ‖θ0‖": st.column_config.NumberColumn(format="%.3f"),
                                "parameters": st.column_config.NumberColumn(format="localized")})

    st.subheader("Per-block norm profile")
    labels = [f"{m}/{n}" for m, vs_ in stats.items() for n in vs_]
    # default: the selected tasks of the current mode, and the first of them in every other mode
    first = ctx.tasks[0] if ctx.tasks else None
    default = [lab for lab in labels if lab.split("/", 1)[1] in ctx.tasks and lab.startswith(f"{ctx.mode}/")
               or lab.split("/", 1)[1] == first] or labels[:4]
    keep_valid("vec_profile", labels, refill=default)
    chosen = st.multiselect("Vectors", labels, default=None if "vec_profile" in st.session_state else default,
                            key="vec_profile", persist_state="session", format_func=charts.vector_label)
    if not chosen:
        st.info("Choose at least one vector to draw its profile.")
    profiles = {lab: stats[lab.split("/", 1)[0]][lab.split("/", 1)[1]]["blocks"] for lab in chosen}
    st.plotly_chart(charts.norm_profile(profiles), key="vec_profile_chart")
    st.caption("L2 norm of τ per transformer block (resblocks.i) and per top-level module (conv1, proj, ...). "
               "Colour: the mode, as on every page; line style and marker: the task. Attention-only vectors are zero "
               "outside the attention weights.")

with guard("Cosine similarity"):
    st.subheader("Cosine similarity across tasks and modes")
    sim = ex.similarity(modes, {n: tv for m in modes for n, tv in ctx.extra(m).items()} or None)
    st.plotly_chart(charts.cosine_heatmap(sim["all"]["labels"], sim["all"]["cosine"]), key="vec_cosine")
    st.caption("Low similarity between different tasks of one mode means the vectors occupy different directions; "
               "compare the same task across modes to see how much the modes agree.")
