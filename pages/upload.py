"""View 6, upload: task vectors (safetensors) for the current base model join this session's workspace."""

import logging
from pathlib import Path

import pandas as pd
import streamlit as st

from arith.convert import check_weights_metadata, import_state_dicts
from arith.modes import MODES
from arith.safefile import load_safetensors
from arith.specs import Meta
from arith.taskvec import MissingMetadata, load_task_vector, validate
from ui.common import ROOT, message, readme_section
from ui.state import (
    add_to_workspace,
    context,
    mode_label,
    remove_from_workspace,
    request_select,
    selected_note,
    upload_limit_mb,
    workspace_store,
    workspace_twin,
)

EXAMPLE = ROOT / "assets" / "example-task-vector.safetensors"
log = logging.getLogger("arith.app")

ctx = context()
ex = ctx.ex
base = ex.bundle.base
st.title("Upload task vectors")
st.markdown(f"Task vectors for this bundle's base model **`{base.id}`** ({base.spec.label}), as safetensors files "
            "keyed by open_clip state-dict names. Each file is checked before it is used; accepted vectors join "
            "this session's **workspace** and appear in every view (sidebar tasks, ξ, kernel, vectors, export). "
            "Nothing you upload is visible to other sessions or kept after you leave. Fine-tuned weights θ_t "
            "(safetensors) are taken to their task vector τ = θ_t − θ0 here.")
with st.expander("File format (README → Task-vector files)"):
    st.markdown(readme_section("Task-vector files") or "See the README's *Task-vector files* section.")
    st.markdown("Check a file from the command line with `python -m arith validate FILE --bundle DIR`.")

if EXAMPLE.is_file():
    data = EXAMPLE.read_bytes()
    try:
        load_task_vector(data, base)
        st.download_button("Download an example task vector", data, file_name=EXAMPLE.name, key="upload_example",
                           on_click="ignore",
                           help="A vector for the embedded default bundle; upload it back to try the workflow.")
    except ValueError:
        st.caption(f"The example file `{EXAMPLE.relative_to(ROOT)}` is for another base model (the embedded default).")
    except Exception as e:  # the page goes on without the example
        log.exception("checking the example task vector")
        st.caption(f"The example file `{EXAMPLE.relative_to(ROOT)}` could not be checked ({type(e).__name__}: {e}).")

VECTORS, WEIGHTS = "task vectors τ", "fine-tuned weights θ_t"
kind = st.radio("The files hold", [VECTORS, WEIGHTS], horizontal=True, key="upload_kind", persist_state="session",
                help="Fine-tuned weights: an open_clip state dict of the whole model or its image encoder (a "
                     "`model.safetensors` of your own fine-tune, fp32, fp16 or bf16). τ = θ_t − θ0 is taken here against "
                     "this bundle's θ0 and the mode is the narrowest one that trains every changed tensor (README → "
                     "Importing checkpoints; `python -m arith import` does the same, and reads .pt files too).")
c1, c2 = st.columns(2)
FROM_FILE = "(from the file's metadata)"
# persist_state: the choices survive a visit to another page (a widget not drawn in a run is otherwise dropped)
task_override = c1.selectbox("Task, for files without metadata", [FROM_FILE, *ex.bundle.task_names], key="upload_task",
                             persist_state="session")
mode_override = c2.selectbox("Mode, for files without metadata", [FROM_FILE, *MODES], key="upload_mode", persist_state="session",
                             format_func=lambda m: m if m == FROM_FILE else mode_label(m))
assume_base = kind == VECTORS and st.checkbox(
    f"Files without `arith.base_model` are for this base ({base.id})", key="upload_assume_base", persist_state="session",
    help="For task vectors written by other tools: their keys and shapes are still checked against this base, but not "
         "which checkpoint they were fine-tuned from.")
limit_mb = upload_limit_mb()
files = st.file_uploader("Files (.safetensors)", accept_multiple_files=True, key="upload_files",
                         max_upload_size=limit_mb,
                         help=f"One or several files of up to {limit_mb} MB. Pickles (.pt/.pth/.bin) are refused: "
                              "convert them to safetensors.")

log = st.session_state.setdefault("upload_log", [])
# each upload is read once; a refused one again only when the options for files without metadata change
accepted = st.session_state.setdefault("upload_accepted", set())
refused = st.session_state.setdefault("upload_refused", {})
new_results = []
for f in files or []:
    options = (kind, task_override, mode_override, assume_base)
    if f.file_id in accepted or refused.get(f.file_id) == options:
        continue
    try:
        f.seek(0)  # the reader checks the size first and refuses an oversized file without reading it
        tensors, meta = load_safetensors(f, max_bytes=limit_mb * 2**20)
        report = {}
        if kind == WEIGHTS:
            check_weights_metadata(meta)  # a task vector, or a linearized mode's merged weights, is refused
            if task_override == FROM_FILE:
                raise ValueError("fine-tuned weights do not say their task: choose it above (Task)")
            tv, report = import_state_dicts(base, tensors, task=task_override,
                                            mode=None if mode_override == FROM_FILE else mode_override)
        else:
            # the pickers fill in what a file does not say; a file's own metadata is never overridden
            for key, value in ((Meta.TASK, task_override), (Meta.MODE, mode_override)):
                if value != FROM_FILE:
                    meta.setdefault(key, value)
            tv = validate(tensors, meta, base, assume_base=assume_base)
    except ValueError as e:
        refused[f.file_id] = options
        hint = ""  # the checkbox above answers what the file does not say
        if isinstance(e, MissingMetadata) and Meta.BASE in e.keys and kind == VECTORS and not assume_base:
            hint = (f" If it is a task vector for this bundle's base, tick *Files without `{Meta.BASE}` are for this "
                    "base* above.")
        text = message(e) + (f".{hint}" if hint and not message(e).endswith(".") else hint)
        new_results.append({"id": f.file_id, "file": f.name, "ok": False, "message": text})
        continue
    except Exception as e:  # a malformed upload must never show a traceback
        refused[f.file_id] = options
        new_results.append({"id": f.file_id, "file": f.name, "ok": False,
                            "message": f"cannot be read ({type(e).__name__}: {e})"})
        continue
    accepted.add(f.file_id)
    twin = workspace_twin(ex, tv)
    how = f"uploaded {f.name}" if kind == VECTORS else f"θ_t − θ0 of {f.name} ({tv.mode})"
    name = add_to_workspace(ex, tv, Path(f.name).stem, how)
    request_select([name])
    added = f"already in the workspace as {name!r} (the same tensors), not added again" if twin else f"added as {name!r}"
    elsewhere = ("" if tv.task in ex.bundle.task_names else
                 f" Its task {tv.task!r} is none of the bundle's: it changes the merged model, but no task here "
                 "scores it, and the diagnostics that need its task's images (ξ, kernel) leave it out.")
    left = (f" {report['left_out']} tensor(s) outside the image encoder (text tower, heads) were left out."
            if report.get("left_out") else "")
    new_results.append({"id": f.file_id, "file": f.name, "ok": True,
                        "message": f"{added}: {tv.task}, mode {tv.mode}, {len(tv.tensors)} tensors, "
                                   f"‖τ‖ = {tv.norm():.4g}; {selected_note(ctx, tv.mode)}.{elsewhere}{left}"})
if new_results:
    fresh = {r["id"] for r in new_results}  # a file read again (other options) replaces its earlier message
    log[:] = new_results + [r for r in log if r.get("id") not in fresh]
    if any(r["ok"] for r in new_results):
        st.rerun()  # the sidebar lists the new vectors on the next run

for r in log:
    if r["ok"]:
        st.success(f"{r['file']}: {r['message']}", icon="✅")
    else:
        st.error(f"{r['file']}: {r['message']}", icon="⚠️")
if log and st.button("Clear these messages", key="upload_clear_log"):
    log.clear()
    st.rerun()

st.subheader("This session's workspace")
store = workspace_store(base.id)
if not store:
    st.caption("Empty: upload a file above or train a vector on the Train page.")
else:
    st.dataframe(pd.DataFrame([{"name": n, "task": e["vector"].task, "mode": mode_label(e["vector"].mode),
                                "tensors": len(e["vector"].tensors), "parameters": e["vector"].numel,
                                "source": e["source"], "added": e["added"]} for n, e in store.items()]),
                 hide_index=True, key="ws_table")
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    victim = c1.selectbox("Remove a vector", list(store), key="ws_remove_name")
    c2.button("Remove", key="ws_remove", on_click=remove_from_workspace, args=(base.id, victim))
