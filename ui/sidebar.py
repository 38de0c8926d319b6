"""The sidebar: the bundle, the fine-tuning mode, the merge method and its options, the tasks and one coefficient
slider per task (or one tied slider), the validation presets, and the link it keeps in the URL.  Every page's
:class:`~ui.state.Context` comes from here (:func:`sidebar`, run by :mod:`ui.entry` before the page)."""

from __future__ import annotations

from collections.abc import Mapping

import streamlit as st

from arith.explore import Explorer
from arith.merge import MERGE_METHODS, get_merge_method, is_method, method_label, method_spec, parse_method

from .common import Progress, message
from .state import (
    COEF_MAX,
    COEF_MIN,
    COEF_PREFIX,
    COEF_STEP,
    K_ALL,
    K_BUNDLE,
    K_METHOD,
    K_MODE,
    K_ONLY,
    K_TASKS,
    K_TIE,
    METHOD,
    METHOD_OPTION_PREFIX,
    OWNED_PARAMS,
    S_APPLY,
    S_CHECKED,
    S_COEFS,
    S_CTX,
    S_METHOD_OPTIONS,
    S_NOTES,
    S_PENDING,
    S_SELECT,
    Context,
    cannot_open,
    default_alpha,
    discover_bundles,
    link_notes,
    link_params,
    load_explorer,
    mode_label,
    parse_link,
    set_coefs,
    snap,
    workspace_store,
)


def _sync_url(desired: Mapping[str, str | list[str]]) -> None:
    qp = st.query_params
    for key in list(qp.keys()):
        if (key in OWNED_PARAMS or key.startswith("c.")) and key not in desired:
            del qp[key]
    for key, value in desired.items():
        want = list(value) if isinstance(value, list) else [value]
        if qp.get_all(key) != want:
            qp[key] = value


def _reset_choices() -> None:
    for key in (K_MODE, K_TASKS, K_TIE, K_ALL, S_COEFS, S_SELECT):
        st.session_state.pop(key, None)
    for key in [k for k in st.session_state if str(k).startswith(COEF_PREFIX)]:
        del st.session_state[key]


def _on_slider(name: str) -> None:
    st.session_state.setdefault(S_COEFS, {})[name] = snap(st.session_state[COEF_PREFIX + name])


def _on_tie_slider(names: list[str]) -> None:
    set_coefs({n: st.session_state[K_ALL] for n in names})


def _on_tie_toggle(names: list[str]) -> None:
    if st.session_state.get(K_TIE) and names:
        store = st.session_state.setdefault(S_COEFS, {})
        # the first task's λ that is not 0: after "Only this" the tie keeps that task's λ, not the others' 0
        v = snap(next((store[n] for n in names if store.get(n, 0.0) != 0.0), store.get(names[0], 0.0)))
        st.session_state[K_ALL] = v
        set_coefs({n: v for n in names})


CHOOSE_ALPHA = ("Choosing α on the validation splits", "addition")
CHOOSE_LAMBDAS = ("One λ per task on validation: up to 3 rounds, fewer if one changes nothing", "tune")


def _on_validation(sb, ex: Explorer, mode: str, tasks: list[str], method: str, preset: str, steps) -> dict | None:
    """Run a preset's ``steps`` ((progress label, name of an Explorer method taking ``(mode, tasks, progress=,
    method=)``)) in turn on the selected bundle vectors merged by ``method``, each with a progress bar at the top of
    the main page; the last one's result, or None with the reason shown in the sidebar."""
    in_bundle = [n for n in tasks if n in ex.catalog(mode)]
    if not in_bundle:
        sb.warning(f"{preset} needs at least one of the bundle's task vectors selected.")
        return None
    res = None
    try:
        for label, name in steps:
            bar = Progress(label)  # on the main page, on top: the sidebar's button may be below its fold
            try:
                res = getattr(ex, name)(mode, in_bundle, progress=bar, method=method)
            finally:
                bar.done()
    except (ValueError, KeyError) as e:
        sb.error(message(e))
        return None
    if left := [n for n in tasks if n not in in_bundle]:  # the sweeps are the bundle's vectors': say who was not in
        sb.info(f"{preset} was chosen on the bundle's vectors only: {', '.join(left)} (workspace) took no part in "
                "choosing it.")
    return res


def _method_option_key(method: str, option: str) -> str:
    return f"{METHOD_OPTION_PREFIX}{method}.{option}"


def _method_widgets(sb, applied: str | None, linked: str | None) -> str:
    """The merge-method select and one widget per option the chosen method declares (``arith.merge``'s records);
    returns the canonical method spec.  ``applied`` (a loaded coefficient set, a page's request) sets the widgets;
    so does ``linked`` (the link's ``method=``) on a session's first run.  Option values live in a session store
    too (:data:`S_METHOD_OPTIONS`): a method's settings survive choosing another method and coming back, which
    Streamlit's widget state alone does not (it drops the state of widgets not drawn)."""
    ss = st.session_state
    store = ss.setdefault(S_METHOD_OPTIONS, {})
    wanted = applied if is_method(applied) else None
    if wanted is None and ss.get(K_METHOD) not in MERGE_METHODS:
        wanted = linked if is_method(linked) else METHOD
    if wanted is not None:
        record, values = parse_method(wanted)
        ss[K_METHOD] = record.name
        for o in record.options:
            v = values[o.name]
            if not o.choices and not o.widget_low <= v <= o.high:  # valid, but outside what the slider offers
                sb.warning(f"{record.label}'s {o.label.lower()} {o.text(v)} is outside the slider's range "
                           f"[{o.text(o.widget_low)}, {o.text(o.high)}]; set to the nearest end.")
                v = min(max(v, o.widget_low), o.high)
            ss[_method_option_key(record.name, o.name)] = store[_method_option_key(record.name, o.name)] = v
    name = sb.selectbox("Merge method", list(MERGE_METHODS), key=K_METHOD, format_func=method_label,
                        help="How the scaled task vectors λ_t τ_t combine into one edit δ (θ = θ0 + δ); the "
                             "Task arithmetic page describes the method chosen. The α sweep (which can draw this "
                             "method's beside it), negation, ξ and kernel views stay task arithmetic.")
    values, record = {}, MERGE_METHODS[name]
    for o in record.options:
        key = _method_option_key(name, o.name)
        if key not in ss:
            ss[key] = store.get(key, o.value(o.default))
        # the options above decide whether this one matters (TIES's scope, DARE's and DARE-TIES's seed: not at
        # density 1)
        moot = record.moot({**record.defaults(), **values}, o.name)
        helptext = o.help + (" (no effect at these settings)" if moot else "")
        if o.choices:
            values[o.name] = sb.radio(o.label, o.choices, key=key, horizontal=True, disabled=moot, help=helptext)
        elif o.integer:
            values[o.name] = sb.slider(o.label, int(o.widget_low), int(o.high), step=int(o.step), key=key,
                                       help=helptext, disabled=moot)
        else:
            values[o.name] = sb.slider(o.label, float(o.widget_low), float(o.high), step=float(o.step), key=key,
                                       help=helptext, format="%.2f", disabled=moot)
        store[key] = values[o.name]
    return method_spec(name, **values)


def sidebar() -> Context | None:
    """Render the shared widgets in the sidebar and return this run's context (None: no bundle could be opened;
    the reason is already on the page)."""
    ss = st.session_state
    refs = discover_bundles()
    if not refs:
        return None
    if S_PENDING not in ss:  # a session's first run: read the link
        raw = {k: st.query_params.get_all(k) for k in st.query_params.keys()}
        ss[S_PENDING], ss[S_NOTES] = parse_link(raw)
    pending: dict = ss[S_PENDING]
    sb = st.sidebar

    labels = [r.label for r in refs]
    if ss.get(K_BUNDLE) not in labels:
        ss[K_BUNDLE] = pending.get("bundle") if pending.get("bundle") in labels else labels[0]
    if len(refs) > 1:
        sb.selectbox("Bundle", labels, key=K_BUNDLE, on_change=_reset_choices,
                     help="A bundle is a base model with its tasks, task vectors and precomputed results.")
    ref = refs[labels.index(ss[K_BUNDLE])]
    try:
        ex = load_explorer(ref)
        if ex.load_error is not None:  # its tensors failed to load in the background after an earlier run
            raise ex.load_error
    except (ValueError, FileNotFoundError, OSError) as e:
        cannot_open(ref, e)
        return None
    store = workspace_store(ex.base_id)
    workspace = {n: e["vector"] for n, e in store.items()}
    probe = Context(ref, ex, "", [], {}, False, workspace)

    if not probe.modes:
        st.error(f"The bundle {ref.label!r} has no task vectors.")
        return None
    if not ex.uses_all_images:  # every page's numbers: say once, where every page shows it
        sb.info(f"This server scores the first {ex.max_per_task} images of each task's splits (`ARITH_MAX_PER_TASK`): "
                "every number is computed on them, so it differs from the bundle's stored results over all images, "
                "which are not used.", icon="✂️")
    modes = probe.modes + ex.views  # the views last: the modes' vectors cut to a part, computed when chosen
    apply = ss.pop(S_APPLY, None)
    if apply and apply["mode"] in modes:
        ss[K_MODE] = apply["mode"]
    if ss.get(K_MODE) not in modes:
        ss[K_MODE] = next((m for m in (pending.get("mode"), "attn") if m in modes), modes[0])
    mode = sb.selectbox("Fine-tuning mode", modes, key=K_MODE, format_func=mode_label,
                        help="What fine-tuning changed: every weight (full), the attention weights only (attn, "
                             "the paper's), the first-order Taylor model (linear), ... The last entries are views: "
                             "a mode's vectors cut after training to the tensors another mode trains (full fine-tuning "
                             "cut to the attention weights: where a mode trains, apart from what it learns there); "
                             "their results are computed when chosen.")
    probe.mode = mode
    method = _method_widgets(sb, apply.get("method") if apply else None, pending.get("method"))
    names = probe.names(mode)
    if K_TASKS not in ss:
        wanted = pending.get("tasks")
        ss[K_TASKS] = ([n for n in wanted if n in names] if wanted is not None
                       else [n for n in ex.task_names if n in names])
    else:
        if dropped := [n for n in ss[K_TASKS] if n not in names]:  # another mode's vectors: selected again there
            ss[S_SELECT] = list(dict.fromkeys([*ss.get(S_SELECT, []), *dropped]))
        ss[K_TASKS] = [n for n in ss[K_TASKS] if n in names]
    if apply:  # exactly the set's vectors: nothing waiting to be selected joins them
        ss.pop(S_SELECT, None)
        ss[K_TASKS] = [n for n in apply["coefs"] if n in names]
        set_coefs({n: v for n, v in apply["coefs"].items() if n in names}, untie=True)
    if ss.get(S_SELECT):  # names of another mode's vectors (trained or uploaded there) wait until it is shown
        want = list(dict.fromkeys(ss.pop(S_SELECT)))  # a name queued twice (twins in one upload) is one widget
        ss[K_TASKS] = ss[K_TASKS] + [n for n in want if n in names and n not in ss[K_TASKS]]
        if later := [n for n in want if n not in names]:
            ss[S_SELECT] = later
    if S_COEFS not in ss:
        alpha = default_alpha(ex, mode)
        ss[S_COEFS] = {n: alpha for n in names if n in ex.task_names}
        ss[S_COEFS].update(pending.get("coefs", {}))
        if pending.get("tie"):
            ss[K_TIE] = True
    if not ss.get(S_CHECKED):  # the first run that gets this far (an earlier one may have found no bundle to open)
        ss[S_CHECKED] = True
        ss[S_NOTES] = [*ss.get(S_NOTES, []), *link_notes(pending, labels, ref.label, modes, mode, names)]
    tasks = sb.multiselect("Tasks", names, key=K_TASKS, help="The task vectors to add; the others get λ = 0.")

    # presets (before the sliders, so they may set the sliders' values in this run)
    sb.caption("Presets")
    c1, c2 = sb.columns(2)
    if c1.button("All zero", key="w_preset_zero", width="stretch", help="θ0: the zero-shot model"):
        set_coefs({n: 0.0 for n in tasks})
        if ss.get(K_TIE):
            ss[K_ALL] = 0.0
    if c2.button("Validation α", key="w_preset_alpha", width="stretch",
                 help="The shared α ∈ {0, 0.05, …, "
                      f"{get_merge_method(method).alpha_max:g}}} chosen on the validation splits by normalized "
                      "accuracy (task addition, merged by the merge method above)"):
        res = _on_validation(sb, ex, mode, tasks, method, "Validation α", [CHOOSE_ALPHA])
        if res is not None:
            set_coefs({n: res["alpha"] for n in tasks})
            if ss.get(K_TIE):
                ss[K_ALL] = snap(res["alpha"])
    if sb.button("Per-task λ (validation)", key="w_preset_tune", width="stretch",
                 help="One λ per task, by coordinate ascent on validation from the validation α (each λ over 0, "
                      f"0.1, …, {get_merge_method(method).alpha_max:g} and that α; up to 3 rounds), for the merge "
                      "method above."):
        res = _on_validation(sb, ex, mode, tasks, method, "Per-task λ", [CHOOSE_ALPHA, CHOOSE_LAMBDAS])  # α: stored or swept
        if res is not None:
            set_coefs(res["coefficients"], untie=True)
    if tasks:
        if ss.get(K_ONLY) not in tasks:
            ss[K_ONLY] = tasks[0]
        c3, c4 = sb.columns([3, 2], vertical_alignment="bottom")
        only = c3.selectbox("One task only", tasks, key=K_ONLY)
        if c4.button("Only this", key="w_preset_only", width="stretch", help="λ = 1 for this task, 0 for the others"):
            set_coefs({n: (1.0 if n == only else 0.0) for n in tasks}, untie=True)

    tie = sb.toggle("Tie all coefficients", key=K_TIE, on_change=_on_tie_toggle, args=(tasks,),
                    help="One shared α for every selected task (the papers' task addition)")
    coefs_store = ss[S_COEFS]
    if tie and tasks:
        if K_ALL not in ss:
            ss[K_ALL] = snap(coefs_store.get(tasks[0], 0.0))
        sb.slider("α (all tasks)", COEF_MIN, COEF_MAX, step=COEF_STEP, key=K_ALL, on_change=_on_tie_slider,
                  args=(tasks,), format="%.2f")
        for n in tasks:
            coefs_store[n] = snap(ss[K_ALL])
    else:
        for n in tasks:
            key = COEF_PREFIX + n
            if key not in ss:
                ss[key] = snap(coefs_store.get(n, 0.0))
            label = f"λ {n}" + (" (workspace)" if n in workspace else "")
            sb.slider(label, COEF_MIN, COEF_MAX, step=COEF_STEP, key=key, on_change=_on_slider, args=(n,),
                      format="%.2f", help="Negative values negate the task (forgetting).")
            coefs_store[n] = snap(ss[key])
    if not tasks:
        sb.info("Select at least one task to edit the model.")
    for note in ss.pop(S_NOTES, []):  # shown once, on the run that read the link
        sb.warning(f"From the link: {note}")

    ctx = Context(ref, ex, mode, list(tasks), {n: coefs_store.get(n, 0.0) for n in tasks}, bool(tie), workspace,
                  method)
    _sync_url(link_params(ctx, multiple_bundles=len(refs) > 1))
    ss[S_CTX] = ctx
    return ctx
