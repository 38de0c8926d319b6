"""View 8, export and share: the merged weights (safetensors), the coefficient set (JSON), a link and a command."""

import json
from urllib.parse import urlencode

import pandas as pd
import streamlit as st

from arith.export import changed_vectors, coefficient_set, merged_safetensors, parse_coefficient_set
from arith.merge import method_label
from arith.modes import is_linearized
from ui.common import guard, message
from ui.state import COEF_MAX, COEF_MIN, METHOD, beyond_sliders, cli_command, context, link_params, mode_label, request_view

ctx = context()
ex = ctx.ex
b = ex.bundle
st.title("Export and share")
vectors = ex.vectors(ctx.mode, ctx.extra())
st.markdown(f"Bundle **{ctx.ref.label}** · base `{b.base.id}` · mode **{mode_label(ctx.mode)}** · merge "
            f"**{method_label(ctx.method)}** (`{ctx.method}`)")
if ctx.coefs:
    st.dataframe(pd.DataFrame([{"vector": n, "task": vectors[n].task, "λ": v,
                                "source": "workspace" if ctx.is_workspace(n) else "bundle"}
                               for n, v in ctx.coefs.items()]), hide_index=True, key="export_coefs",
                 column_config={"λ": st.column_config.NumberColumn(format="%.2f")})
else:
    st.info("No task selected: the merged model is θ0 itself.")

st.subheader("Coefficient set (JSON)")
with guard("Coefficient set"):
    record = coefficient_set(bundle=ctx.ref.label, base_id=b.base.id, mode=ctx.mode, coefs=ctx.coefs,
                             vectors=vectors, method=ctx.method)
    text = json.dumps(record, indent=1)  # in the sidebar's order, which loading it back keeps
    st.download_button("Download the coefficient set", text, file_name=f"coefficients-{ctx.mode}.json",
                       mime="application/json", key="export_json",
                       on_click="ignore")
    with st.expander("Show the JSON"):
        st.code(text, language="json")

note = st.session_state.pop("export_note", None)
if note:
    st.info(note)
warning = st.session_state.pop("export_warning", None)
if warning:
    st.warning(warning, icon="⚠️")
with st.expander("Load a coefficient set"):
    up = st.file_uploader("Coefficient set (.json)", type=["json"], key="export_import")
    done = st.session_state.setdefault("export_import_seen", set())
    if up is not None and up.file_id not in done:
        done.add(up.file_id)
        try:
            up.seek(0)
            rec = parse_coefficient_set(up, b.base.id)  # checks the size before reading
            if rec["mode"] not in ctx.modes + ex.views:
                raise ValueError(f"it is for mode {rec['mode']!r}, which this bundle and workspace lack "
                                 f"(modes here: {', '.join(ctx.modes + ex.views)}); nothing was changed")
            known = set(ex.vectors(rec["mode"], ctx.extra(rec["mode"])))
            if rec["coefficients"] and not known & set(rec["coefficients"]):
                raise ValueError(f"none of its vectors ({', '.join(sorted(rec['coefficients']))}) is in this session's "
                                 f"{rec['mode']} vectors; nothing was changed")
            missing = sorted(set(rec["coefficients"]) - known)
            changed = changed_vectors(rec, ex.vectors(rec["mode"], ctx.extra(rec["mode"])))
            if changed:
                st.session_state["export_warning"] = (
                    f"{up.name}: {', '.join(changed)} here {'is not the vector' if len(changed) == 1 else 'are not the vectors'} "
                    "the set was saved with (other tensors under the same name): its λ are applied to them, "
                    "and the numbers can differ from the ones it was saved with.")
            clipped = beyond_sliders({n: v for n, v in rec["coefficients"].items() if n in known})
            st.session_state["export_note"] = (
                f"Loaded {up.name}" + (f"; not available in this session, ignored: {', '.join(missing)}" if missing else "")
                + (f"; clipped to the sliders' range [{COEF_MIN:g}, {COEF_MAX:g}]: "
                   + ", ".join(f"{n}={v:g}" for n, v in clipped.items()) if clipped else ""))
            request_view(rec["mode"], {n: v for n, v in rec["coefficients"].items() if n in known},
                         str(rec.get("method", METHOD)))
            st.rerun()
        except ValueError as e:
            st.error(f"{up.name}: {message(e)}", icon="⚠️")

st.subheader("Merged weights (safetensors)")
n_params = sum(t.numel() for t in b.base.params.values())
what = "θ0 + Σ λ_t τ_t" if ctx.method == METHOD else f"θ0 + δ with δ merged by {method_label(ctx.method)},"
st.markdown(f"{what} for every image-encoder tensor ({n_params:,} parameters, about "
            f"{4 * n_params / 2**20:,.1f} MiB in fp32), open_clip `visual.*` key names; built when you click.")
if is_linearized(ctx.mode):
    st.warning(f"Linearized mode: the file holds θ = {what.rstrip(',')}, the parameters of the linear model "
               "f(x; θ0) + J(θ0)(θ − θ0). Loaded into an ordinary encoder they give the non-linear model at θ, "
               "which is not what the app evaluated (metadata `arith.linearized` = true).")
coefs_now, vecs_now = dict(ctx.coefs), {n: vectors[n] for n in ctx.coefs}
theta0, base_id, mode, method = b.base.params, b.base.id, ctx.mode, ctx.method
st.download_button("Download the merged weights", lambda: merged_safetensors(theta0, vecs_now, coefs_now, base_id=base_id,
                                                                              mode=mode, method=method),
                   file_name=f"merged-{ctx.mode}.safetensors", mime="application/octet-stream", key="export_weights",
                   on_click="ignore")

st.subheader("Share")
params = link_params(ctx)
query = urlencode(params, doseq=True)
url = (st.context.url or "").removesuffix("/export")  # the app's first view, not this page
url = url if not url or url.endswith("/") else url + "/"
st.markdown("The sidebar's choices are mirrored in the address bar, so this link reproduces the view "
            "(workspace vectors are private to your session and do not travel with it):")
st.code(f"{url}?{query}", language=None, wrap_lines=True)
cmd, own = cli_command(ctx, "evaluate")
st.markdown("The same evaluation from the command line:")
st.code(cmd, language="bash")
if own:
    st.caption("Workspace vectors join the command as files, under their names here (`--vector NAME=FILE`): save "
               "each one next to where you run it.")
    cols = st.columns(min(len(own), 4))
    for i, (n, f) in enumerate(own.items()):
        tv = ctx.extra()[n]  # the workspace's own vector: in a view, the CLI cuts it as the page did
        cols[i % len(cols)].download_button(f"Download {f}", lambda tv=tv: tv.to_bytes(), file_name=f,
                                            mime="application/octet-stream", key=f"export_vec::{n}",
                                            on_click="ignore")
