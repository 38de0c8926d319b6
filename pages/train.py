"""View 7, train: fine-tune a task vector for a task and mode from the app; it joins the session's workspace."""

import math

import streamlit as st

from arith.data import data_root_setting, get_task
from arith.datasets import register_folder_tasks
from arith.finetune import Cancelled, finetune
from arith.modes import MODES, source_of
from arith.specs import FinetuneConfig
from ui import charts
from ui.common import Progress, guard, pct
from ui.state import add_to_workspace, context, mode_label, request_select, selected_note, workspace_twin

ctx = context()
ex = ctx.ex
b = ex.bundle
st.title("Train a task vector")
st.caption("Fine-tune θ0 on a task in a chosen mode with the frozen head (AdamW, warm-up then cosine), exactly as "
           "`python -m arith finetune` does. The result joins this session's workspace and can be downloaded.")


@st.cache_resource(show_spinner="Loading the training split…", max_entries=8)
def train_split(task: str, size: int, n: int | None, seed: int, root: str | None):
    return get_task(task).load("train", size=size, n=n, seed=seed, root=root)


# where the data sets are here (a Space mounts them anywhere), else where the bundle's builder had them
data_root = data_root_setting(recorded=b.manifest.get("plan", {}).get("data_root"))


def why_not(task: str) -> str | None:
    """None when this machine can read the task's training images (a built-in source, or data on disk: a custom
    folder at the path the bundle recorded, registered here, with the sizes the bundle was built from), else why."""
    try:
        if "splits" in b.results:
            register_folder_tasks(b, tasks=[task], root=data_root)
        get_task(task)
        return None
    except (ValueError, OSError) as e:
        return str(e)


reasons = {t: why_not(t) for t in b.task_names if t in b.heads}
tasks = [t for t, why in reasons.items() if why is None]
left_out = {t: why for t, why in reasons.items() if why is not None}
if left_out:
    with st.expander(f"{len(left_out)} task(s) cannot be trained here"):
        for t, why in left_out.items():
            st.markdown(f"- **{t}**: {why}")
if not tasks:
    st.warning("None of this bundle's tasks has training data this machine can read, so nothing can be trained.")
    st.stop()
modes = list(MODES)
source = source_of(ctx.mode)  # a view (full@attn) shows its source mode's vectors, cut
c1, c2 = st.columns(2)
if st.session_state.get("train_task") not in tasks:
    st.session_state["train_task"] = next((ex.vectors(ctx.mode)[n].task for n in ctx.tasks
                                           if n in ex.vectors(ctx.mode) and ex.vectors(ctx.mode)[n].task in tasks), tasks[0])
task = c1.selectbox("Task", tasks, key="train_task", persist_state="session")
if st.session_state.get("train_mode") not in modes:
    st.session_state["train_mode"] = source if source in modes else "attn"
mode = c2.selectbox("Mode", modes, key="train_mode", persist_state="session", format_func=mode_label)
cfg0, recipe = b.recipe(mode)  # the recipe `python -m arith finetune` starts from, and where it comes from
plan = b.manifest.get("plan", {})

with st.form("train_form", border=True, enter_to_submit=False):  # only the button starts a run
    c1, c2, c3, c4 = st.columns(4)
    # one set of fields per mode, each starting from that mode's recipe: a keyed input keeps its value whatever
    # default it is given later, in the browser too, so a field shared by the modes would keep another mode's lr
    steps = c1.number_input("Steps", 1, 100_000, int(cfg0.steps), key=f"train_steps::{mode}", persist_state="session")
    # ± moves by a tenth of the value's decade (1e-4 around 1e-3; the widget's own step, 0.01, jumps lr by 10×): of the
    # value the form last ran with, since a form reruns only when submitted (Streamlit keeps a keyed input's value
    # when its step changes)
    lr_key = f"train_lr::{mode}"
    lr_now = float(st.session_state.get(lr_key) or cfg0.lr)
    lr = c2.number_input("Learning rate", 1e-8, 1.0, float(cfg0.lr), step=10.0 ** (math.floor(math.log10(lr_now)) - 1),
                         format="%.2e", key=lr_key, persist_state="session")
    batch = c3.number_input("Batch size", 1, 4096, int(cfg0.batch_size), key=f"train_batch::{mode}", persist_state="session")
    seed = c4.number_input("Seed", 0, 2**31 - 1, int(cfg0.seed), key=f"train_seed::{mode}", persist_state="session")
    c1, c2 = st.columns(2)
    train_n = c1.number_input("Training images (0 = all)", 0, 10_000_000, int(plan.get("train_n") or 0),
                              key="train_n", persist_state="session",
                              help="At most this many of the task's training images (the bundle's recipe by default); "
                                   "a task with fewer trains on all of its own.")
    name = c2.text_input("Name in the workspace", "", placeholder=f"{task} ({mode}, trained)", key="train_name",
                         persist_state="session")
    st.caption(f"{recipe[0].upper()}{recipe[1:]}: {cfg0.steps} steps, lr {cfg0.lr:g}, batch {cfg0.batch_size}, "
               f"weight decay {cfg0.weight_decay:g}, warm-up {cfg0.warmup_steps} (the same share of other step counts), "
               f"gradient clip {cfg0.grad_clip:g}. "
               f"Runs on {b.base.device}.")
    go = st.form_submit_button("Train", type="primary")

cancel = st.button("Cancel training", key="train_cancel", help="Stops a running fine-tuning; nothing is added.")
# a press during a run interrupts it (Streamlit reruns the page), leaving the flag set by the run
was_running = st.session_state.pop("train_running", False)
if cancel:
    st.warning("Training cancelled; nothing was added to the workspace." if was_running else "No training is running.")

if go:
    with guard("Training"):
        cfg = FinetuneConfig.from_dict({**cfg0.with_steps(int(steps)).to_dict(), "mode": mode, "lr": float(lr),
                                        "batch_size": int(batch), "seed": int(seed)})
        data = train_split(task, b.base.image_size, int(train_n) or None, cfg.seed, data_root)
        bar = Progress(f"Fine-tuning {task} ({mode_label(mode)})")
        st.session_state["train_running"] = True
        try:
            res = finetune(b.base, b.heads[task], data, cfg, task=task, progress=bar,
                           should_stop=lambda: bool(st.session_state.get("train_cancel")))
        except Cancelled as e:
            st.warning(f"Training cancelled: {e}.")
            res = None
        except Exception:
            st.session_state.pop("train_running", None)
            raise
        finally:
            bar.done()
        st.session_state.pop("train_running", None)  # not reached when a rerun interrupts the run
        if res is not None:
            twin = workspace_twin(ex, res.vector)  # the same recipe and seed again: the same vector, bit for bit
            label = add_to_workspace(ex, res.vector, name or f"{task} ({mode}, trained)",
                                     f"trained: {cfg.steps} steps, lr {cfg.lr:g}")
            request_select([label])
            result = {"name": label, "twin": twin is not None, "task": task, "mode": mode, "steps": cfg.steps,
                      "seconds": res.seconds,
                      "losses": res.losses, "norm": res.vector.norm(), "base_id": b.base.id}
            if task in ex.tasks:
                acc = ex.evaluate(mode, {label: 1.0}, "test", extra={label: res.vector}, tasks=[task])
                result["accuracy"] = acc["accuracy"][task]
                result["zeroshot"] = ex.zeroshot("test")[task]
            st.session_state["train_last"] = result
            st.rerun()

last = st.session_state.get("train_last")
if last and last["base_id"] == b.base.id:
    ws = ctx.workspace
    where = ("It equals the workspace's " + repr(last["name"]) + " (same recipe and seed), so it was not added again"
             if last.get("twin") else "It is in the workspace")
    st.success(f"Trained {last['name']!r}: {last['steps']} steps in {last['seconds']:.1f} s, final loss "
               f"{last['losses'][-1]:.4f}, ‖τ‖ = {last['norm']:.4g}. {where} and "
               f"{selected_note(ctx, last['mode'])}.", icon="✅")
    if "accuracy" in last:
        c1, c2 = st.columns(2)
        c1.metric(f"{last['task']}: test accuracy, θ0 + τ", pct(last["accuracy"]))
        c2.metric(f"{last['task']}: zero-shot", pct(last["zeroshot"]))
    st.plotly_chart(charts.loss_curve(last["losses"]), key="train_loss")
    if last["name"] in ws:
        with guard("Download"):
            tv = ws[last["name"]]
            st.download_button("Download the task vector (.safetensors)", lambda: tv.to_bytes(),
                               file_name=f"{last['task']}-{last['mode']}.safetensors", key="train_download",
                               mime="application/octet-stream", on_click="ignore")
    else:
        st.caption(f"{last['name']!r} was removed from the workspace.")
elif not go:
    st.info("Set the recipe and press Train. A progress bar shows each step; Cancel stops the run.")
