"""The app's state: which bundle, mode, tasks and coefficients (the sidebar), the session's workspace, the URL.

* A bundle is opened once per process (``st.cache_resource``) as an :class:`arith.explore.Explorer` and treated as
  read-only: every session shares it, none writes to it.  Opening reads only its index (names, checksums,
  precomputed results); the tensors load when first needed, or in the background after a run (:func:`load_delay`).
* Everything a session owns lives in ``st.session_state``: its choices, its coefficients and its *workspace*
  (task vectors it uploaded or trained, per base model).  Nothing of one session is visible to another.
* The current bundle, mode, merge method, tasks and coefficients are mirrored in the URL query parameters
  (``?bundle=…&mode=attn&tasks=a&tasks=b&c.a=0.3&c.b=0.3``; ``method=ties`` or ``method=ties:density=0.5`` when it
  is not task arithmetic, in :func:`arith.merge.method_spec`'s canonical form) and
  read back on a session's first run, so a link reproduces the view.

Bundle discovery: ``$ARITH_BUNDLE`` if set, then ``precomputed/default``, then every other directory with a
``manifest.json`` under ``precomputed/`` (``$ARITH_PRECOMPUTED_DIR`` overrides that folder).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from arith.explore import Explorer
from arith.merge import MERGE_METHODS, get_merge_method, is_method, method_label, method_spec, parse_method
from arith.modes import label_of, source_of

from .common import Progress, message

if TYPE_CHECKING:
    from arith.taskvec import TaskVector

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("arith.app")
COEF_MIN, COEF_MAX, COEF_STEP = -2.0, 2.0, 0.05
DEFAULT_COEF = 0.3  # when a bundle has no precomputed validation α
METHOD = "task_arithmetic"

# widget keys
K_BUNDLE, K_MODE, K_TASKS, K_TIE, K_ALL, K_ONLY = "w_bundle", "w_mode", "w_tasks", "w_tie", "w_coef_all", "w_only"
K_METHOD = "w_method"
METHOD_OPTION_PREFIX = "w_method::"  # + "<method>.<option>": one widget per option of the chosen merge method
COEF_PREFIX = "w_coef::"
# session keys that are not widgets
S_COEFS, S_WORKSPACE, S_PENDING, S_NOTES, S_CTX = "coefs", "workspace", "_pending_link", "_link_notes", "_ctx"
S_SELECT, S_APPLY, S_CHECKED = "_select_next", "_apply_view", "_link_checked"
S_METHOD_OPTIONS = "method_options"  # widget key -> value of every merge-method option set in this session
OWNED_PARAMS = ("bundle", "mode", "method", "tasks", "tie")  # plus "c.<name>"


# -- bundles ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BundleRef:
    label: str
    path: Path
    source: str  # "$ARITH_BUNDLE" or "precomputed"


def precomputed_dir() -> Path:
    return Path(os.environ.get("ARITH_PRECOMPUTED_DIR") or ROOT / "precomputed")


def discover_bundles() -> list[BundleRef]:
    """``$ARITH_BUNDLE`` first (even if broken, so its error is shown), then ``precomputed/default``, then the
    other bundle directories under ``precomputed/`` in name order."""
    refs: list[BundleRef] = []
    seen: set[Path] = set()
    labels: set[str] = set()

    def add(path: Path, source: str) -> None:
        path = path.resolve()
        if path in seen:
            return
        label, i = path.name or str(path), 2
        while label in labels:
            label, i = f"{path.name} ({i})", i + 1
        seen.add(path)
        labels.add(label)
        refs.append(BundleRef(label, path, source))

    env = os.environ.get("ARITH_BUNDLE")
    if env:
        add(Path(env), "$ARITH_BUNDLE")
    root = precomputed_dir()
    if root.is_dir():
        default = root / "default"
        others = sorted(p for p in root.iterdir() if p.is_dir() and p.name != "default")
        for p in ([default] if default.is_dir() else []) + others:
            if (p / "manifest.json").is_file():
                add(p, "precomputed")
    return refs


def upload_limit_mb() -> int:
    """The largest task-vector upload, in MB: ``$ARITH_MAX_UPLOAD_MB`` if set, else Streamlit's
    ``server.maxUploadSize``, never more than the engine's reader accepts (``arith.safefile.DEFAULT_MAX_BYTES``)."""
    from arith.safefile import DEFAULT_MAX_BYTES

    try:
        mb = int(os.environ.get("ARITH_MAX_UPLOAD_MB") or st.get_option("server.maxUploadSize"))
    except (TypeError, ValueError):
        mb = DEFAULT_MAX_BYTES // 2**20
    return max(1, min(mb, DEFAULT_MAX_BYTES // 2**20))


def preferred_device() -> str:
    """``$ARITH_DEVICE`` if set, else ``auto``: ``cuda`` when torch sees one, else ``cpu`` (resolved when the
    tensors load, so choosing it imports nothing)."""
    return os.environ.get("ARITH_DEVICE") or "auto"


def preferred_autocast() -> str | None:
    """``$ARITH_AUTOCAST`` (``bf16`` or ``fp16``): the forward passes of what the app computes run under autocast,
    about 4× faster on a GPU with a ViT-B/32 (BENCHMARKS.md, *GPU*); unset, empty or ``fp32``: exact fp32.
    Results the bundle precomputed are shown as stored (fp32) either way."""
    value = (os.environ.get("ARITH_AUTOCAST") or "").strip().lower()
    if value in ("", "fp32", "off", "none"):
        return None
    if value not in ("bf16", "fp16"):
        raise ValueError(f"ARITH_AUTOCAST must be bf16, fp16 or fp32 (or unset), not {value!r}")
    return value


@st.cache_resource(show_spinner="Opening the bundle (checking every file's sha256)…", max_entries=4)
def _open_explorer(path: str, stamp: float, device: str, max_per_task: int | None,
                   autocast: str | None = None) -> Explorer:
    return Explorer.open(path, device=device, max_per_task=max_per_task, autocast=autocast)


def load_explorer(ref: BundleRef) -> Explorer:
    """The shared, read-only explorer of a bundle (opened once per process; again if its manifest changes).  It
    answers from the bundle's index and precomputed results at once and loads the tensors when first needed:
    :func:`ui.entry.main` starts that load in the background after a run that did not need them."""
    manifest = ref.path / "manifest.json"
    stamp = manifest.stat().st_mtime if manifest.exists() else 0.0
    n = os.environ.get("ARITH_MAX_PER_TASK")
    return _open_explorer(str(ref.path), stamp, preferred_device(), int(n) if n else None, preferred_autocast())


LOAD_DELAY_S = 2.0


def load_delay() -> float | None:
    """Seconds between the first view's run and the start of the background load of the bundle's tensors:
    ``$ARITH_LOAD_DELAY`` if set (``off``: never; they then load when a request first needs them), else 2.
    Loading them imports torch, which holds the interpreter for ~1.6 s on two cores; started at once, it slowed the
    browser's drawing of the first view (its plotly.js is served by this process) from 4.97 to 5.68 s on the CI
    machine (BENCHMARKS.md).  A request that needs the tensors sooner loads them itself."""
    value = os.environ.get("ARITH_LOAD_DELAY", "").strip().lower()
    if value == "off":
        return None
    try:
        return max(0.0, float(value)) if value else LOAD_DELAY_S
    except ValueError:
        return LOAD_DELAY_S


def cannot_open(ref: BundleRef, e: BaseException) -> None:
    st.error(f"Cannot open the bundle {ref.label!r} ({ref.path}, from {ref.source}): {message(e)}", icon="⚠️")


def tensors_ready(ctx: Context) -> bool:
    """Wait, with a spinner, until the bundle's tensors are loaded; False, with the error on the page, when they
    cannot be.  ``ui.entry.main`` calls this before a page that imports torch, so that only the load imports it."""
    if not ctx.ex.loaded:
        try:
            with st.spinner("Loading the bundle's tensors…"):
                _ = ctx.ex.bundle
        except (ValueError, FileNotFoundError, OSError) as e:
            cannot_open(ctx.ref, e)
            return False
        except Exception as e:  # memory, a device: not the bundle's fault, and the next run tries again
            log.exception("loading the tensors of %s failed", ctx.ref.path)
            st.error(f"Could not load the tensors of the bundle {ctx.ref.label!r}: {type(e).__name__}: "
                     f"{message(e)}. Reload the page to try again.", icon="⚠️")
            return False
    return True


# -- the session's view -------------------------------------------------------------------------------------------
def mode_label(mode: str) -> str:
    return label_of(mode)


@dataclass
class Context:
    """What the sidebar decided for this run; pages read it with :func:`context`."""

    ref: BundleRef
    ex: Explorer
    mode: str
    tasks: list[str]  # selected vector names (bundle task names or workspace names)
    coefs: dict[str, float]  # λ per selected name (rounded to the slider step)
    tie: bool
    workspace: dict[str, TaskVector] = field(default_factory=dict)  # this session's vectors for this base
    method: str = METHOD

    @property
    def modes(self) -> list[str]:
        """The bundle's modes, then any other mode the workspace has vectors of, then the current mode when it is a
        view (``full@attn``), which every page then compares with the modes."""
        out = list(self.ex.modes) + sorted({tv.mode for tv in self.workspace.values()} - set(self.ex.modes))
        return out + [self.mode] if self.mode and self.mode not in out else out

    def extra(self, mode: str | None = None) -> dict[str, TaskVector]:
        """The workspace vectors of ``mode`` (the current one by default), as the engine's ``extra`` argument; for a
        view, its source mode's (the engine cuts them as it cuts the bundle's)."""
        mode = source_of(mode or self.mode)
        return {n: tv for n, tv in self.workspace.items() if tv.mode == mode}

    def names(self, mode: str | None = None) -> list[str]:
        """Vector names available in ``mode``: the bundle's tasks, then the workspace's."""
        return list(self.ex.catalog(mode or self.mode, self.extra(mode)))

    def coefs_in(self, mode: str) -> dict[str, float]:
        """The current coefficients restricted to the vectors ``mode`` has (used to compare modes)."""
        names = set(self.names(mode))
        return {n: c for n, c in self.coefs.items() if n in names}

    def eval_tasks(self, names: list[str] | None = None, mode: str | None = None) -> list[str]:
        """Evaluation tasks of the selected vectors (their ``task``, where the bundle has data), in bundle order."""
        vs = self.ex.catalog(mode or self.mode, self.extra(mode))
        wanted = {vs[n] for n in (self.tasks if names is None else names) if n in vs}
        return [t for t in self.ex.tasks if t in wanted]

    def is_workspace(self, name: str) -> bool:
        return name in self.workspace


def context() -> Context | None:
    """The context the entry file's sidebar built for this run (None when no bundle could be opened)."""
    leave_legacy_pages_mode()
    return st.session_state.get(S_CTX)


def leave_legacy_pages_mode() -> None:
    """Streamlit runs a ``pages/`` directory the legacy way until some run calls ``st.navigation``: the first run
    on a fresh server (and every ``AppTest`` run) executes ``app.py`` as a legacy page, or a deep-linked page on its
    own without ``app.py``.  Widgets created in such a run get other identities than in later runs, so they would
    lose their values on the next interaction.  Switch the process to ``st.navigation`` mode and rerun at once
    (``ui.entry.main`` calls this before any widget; pages call it through :func:`context`): the same URL path then
    resolves to the same page through ``app.py``."""
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # pragma: no cover - a Streamlit without it has no legacy mode to leave
        return
    if getattr(PagesManager, "uses_pages_directory", False):
        PagesManager.uses_pages_directory = False
        st.rerun()


# -- workspace ----------------------------------------------------------------------------------------------------
def workspace_store(base_id: str) -> dict[str, dict]:
    """This session's workspace entries for a base model: ``name -> {"vector", "source", "added"}``."""
    return st.session_state.setdefault(S_WORKSPACE, {}).setdefault(base_id, {})


def add_to_workspace(ex: Explorer, tv: TaskVector, hint: str, source: str) -> str:
    """Add ``tv`` to this session's workspace under a new name (never a bundle task's name, so it never silently
    replaces a bundle vector); returns the name."""
    store = workspace_store(ex.base_id)
    taken = set(store) | set(ex.task_names) | {n for m in ex.modes for n in ex.catalog(m)}
    base = hint.strip() or f"{tv.task} ({tv.mode})"
    name, i = base, 2
    while name in taken:
        name, i = f"{base} #{i}", i + 1
    store[name] = {"vector": tv, "source": source, "added": time.strftime("%H:%M:%S")}
    return name


def request_select(names: list[str]) -> None:
    """Select these vector names in the sidebar on the next run (when they exist in the current mode), at λ = 0
    unless they already have a coefficient.  Pages call this after the sidebar has rendered."""
    st.session_state.setdefault(S_SELECT, []).extend(names)


def request_view(mode: str, coefs: Mapping[str, float], method: str | None = None) -> None:
    """Switch to ``mode`` with exactly these tasks and coefficients on the next run (a loaded coefficient set, a ξ
    cell, a negated model), and to merge ``method`` when given."""
    st.session_state[S_APPLY] = {"mode": mode, "coefs": dict(coefs), "method": method}


def remove_from_workspace(base_id: str, name: str) -> None:
    workspace_store(base_id).pop(name, None)
    st.session_state.get(S_COEFS, {}).pop(name, None)
    if name in st.session_state.get(K_TASKS, []):
        st.session_state[K_TASKS] = [t for t in st.session_state[K_TASKS] if t != name]
    if name in st.session_state.get(S_SELECT, []):  # no longer waits to be selected in its mode
        st.session_state[S_SELECT] = [t for t in st.session_state[S_SELECT] if t != name]


# -- coefficients -----------------------------------------------------------------------------------------------------
def snap(v: float) -> float:
    """A coefficient clipped to the slider range and rounded to its step (the cache key's rounding)."""
    v = min(COEF_MAX, max(COEF_MIN, float(v)))
    return round(round(v / COEF_STEP) * COEF_STEP, 4)


def beyond_sliders(coefs: Mapping[str, float]) -> dict[str, float]:
    """The coefficients :func:`snap` would clip: outside the sliders' [COEF_MIN, COEF_MAX]."""
    return {n: float(v) for n, v in coefs.items() if not COEF_MIN <= float(v) <= COEF_MAX}


def selected_note(ctx: Context, mode: str) -> str:
    """Where a vector of ``mode`` just added to the workspace and selected shows up: the sidebar's mode may be
    another one (a view shows its source mode's vectors), and a tied slider sets every λ at once."""
    elsewhere = "" if mode == source_of(ctx.mode) else f" (switch the mode to {mode_label(mode)} to see it)"
    how = "at the shared α (all coefficients are tied)" if ctx.tie else "at λ = 0: move its slider to add it"
    return f"selected in the sidebar{elsewhere}, {how}"


def set_coefs(values: Mapping[str, float], select: bool = False, untie: bool = False) -> None:
    """Set coefficients (and their sliders).  Call before the sidebar renders (a callback, or a button handled
    above the sliders).  ``select`` adds the names to the selected tasks; ``untie`` switches the tie off."""
    store = st.session_state.setdefault(S_COEFS, {})
    for name, v in values.items():
        store[name] = snap(v)
        st.session_state[COEF_PREFIX + name] = store[name]
    if select:
        cur = list(st.session_state.get(K_TASKS, []))
        st.session_state[K_TASKS] = cur + [n for n in values if n not in cur]
    if untie:
        st.session_state[K_TIE] = False


def reachable(*coefs: float) -> bool:
    """Whether the sliders can set these coefficients (|λ| ≤ COEF_MAX; a ξ cell at a length may lie beyond)."""
    return all(abs(c) <= COEF_MAX + 1e-9 for c in coefs)


def xi_click(point: Mapping, task1: str, task2: str) -> dict[str, float] | None:
    """The coefficients a click on a ξ heatmap cell means: rows are α1 (``y``), columns α2 (``x``); the cell's own
    α from its ``customdata`` when it carries them (a grid drawn at one length is placed on its ``a`` grid).  None
    for a cell the sliders cannot reach (|α| > 2, at a length): it would open another model than the one drawn."""
    try:
        data = point.get("customdata")
        if isinstance(data, (list, tuple)) and len(data) >= 5:
            a1, a2 = float(data[3]), float(data[4])
            return {task1: snap(a1), task2: snap(a2)} if reachable(a1, a2) else None
        return {task1: snap(float(point["y"])), task2: snap(float(point["x"]))}
    except (KeyError, TypeError, ValueError):
        return None


def default_alpha(ex: Explorer, mode: str) -> float:
    """The opening coefficient: the bundle's validation-chosen α for ``mode`` when it ships one."""
    a = ex.results.get("addition", {}).get(mode)
    a = a.get("alpha") if isinstance(a, dict) else None
    return snap(a) if isinstance(a, (int, float)) and math.isfinite(a) else DEFAULT_COEF


# -- URL --------------------------------------------------------------------------------------------------------------
def parse_link(params: Mapping[str, list[str]]) -> tuple[dict, list[str]]:
    """Read the owned query parameters (each a list of values) into choices; returns (choices, notes on what was
    ignored).  Names are checked against the bundle later (:func:`link_notes`); so are clipped coefficients, so that
    a coefficient for a name the bundle lacks is called unknown, not clipped (``choices["clipped"]``)."""
    out: dict = {}
    notes: list[str] = []
    for key in ("bundle", "mode", "method"):
        if params.get(key):
            out[key] = params[key][-1]
    if "tasks" in params:  # present but empty: no task selected
        out["tasks"] = [t for v in params["tasks"] for t in v.split(",") if t]
    if params.get("tie"):
        out["tie"] = params["tie"][-1] in ("1", "true", "yes")
    coefs = {}
    for key, values in params.items():
        if key.startswith("c.") and values:
            try:
                v = float(values[-1])
                if not math.isfinite(v):
                    raise ValueError
            except ValueError:
                notes.append(f"coefficient {key[2:]!r}={values[-1]!r} is not a number")
                continue
            if not COEF_MIN <= v <= COEF_MAX:
                out.setdefault("clipped", {})[key[2:]] = v
            coefs[key[2:]] = snap(v)
    if coefs:
        out["coefs"] = coefs
    return out, notes


def link_notes(choices: Mapping, bundles: Sequence[str], bundle: str, modes: Sequence[str], mode: str,
               names: Sequence[str]) -> list[str]:
    """What a link asked for that the opened view does not have: another bundle or mode, an unknown merge method,
    unknown vector names (in ``tasks`` or a coefficient), and coefficients clipped to the slider range."""
    notes = []
    if choices.get("bundle") not in (None, bundle):
        notes.append(f"bundle {choices['bundle']!r} is not here (bundles: {', '.join(bundles)}): ignored")
    if choices.get("mode") not in (None, mode):
        notes.append(f"mode {choices['mode']!r} is not in this bundle (modes: {', '.join(modes)}): ignored")
    if choices.get("method") is not None:
        try:
            parse_method(choices["method"])
        except ValueError as e:
            notes.append(f"merge method {choices['method']!r}: {e}: ignored")
    unknown = [n for n in [*choices.get("tasks", []), *choices.get("coefs", {})] if n not in names]
    if unknown:
        notes.append(f"no {mode} task vector named {', '.join(repr(n) for n in dict.fromkeys(unknown))}: ignored")
    for n, v in choices.get("clipped", {}).items():
        if n in names:
            notes.append(f"coefficient {n!r}={v:g} clipped to [{COEF_MIN:g}, {COEF_MAX:g}]")
    return notes


def link_params(ctx: Context, multiple_bundles: bool = True) -> dict[str, str | list[str]]:
    """The query parameters that reproduce the current view."""
    out: dict[str, str | list[str]] = {}
    if multiple_bundles:
        out["bundle"] = ctx.ref.label
    out["mode"] = ctx.mode
    if ctx.method != METHOD:
        out["method"] = ctx.method
    out["tasks"] = list(ctx.tasks) if ctx.tasks else ""
    if ctx.tie:
        out["tie"] = "1"
    for n, v in ctx.coefs.items():
        out[f"c.{n}"] = f"{v:g}"
    return out


def _sync_url(desired: Mapping[str, str | list[str]]) -> None:
    qp = st.query_params
    for key in list(qp.keys()):
        if (key in OWNED_PARAMS or key.startswith("c.")) and key not in desired:
            del qp[key]
    for key, value in desired.items():
        want = list(value) if isinstance(value, list) else [value]
        if qp.get_all(key) != want:
            qp[key] = value


# -- the sidebar ------------------------------------------------------------------------------------------------------
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
        v = snap(store.get(names[0], 0.0))
        st.session_state[K_ALL] = v
        set_coefs({n: v for n in names})


CHOOSE_ALPHA = ("Choosing α on the validation splits", "addition")
CHOOSE_LAMBDAS = ("One λ per task on validation: up to 3 rounds, fewer if one changes nothing", "tune")


def _on_validation(sb, ex: Explorer, mode: str, tasks: list[str], method: str, preset: str, steps) -> dict | None:
    """Run a preset's ``steps`` ((progress label, name of an Explorer method taking ``(mode, tasks, progress=,
    method=)``)) in turn on the selected bundle vectors merged by ``method``, each with a progress bar in the
    sidebar; the last one's result, or None with the reason shown there."""
    in_bundle = [n for n in tasks if n in ex.catalog(mode)]
    if not in_bundle:
        sb.warning(f"{preset} needs at least one of the bundle's task vectors selected.")
        return None
    res = None
    try:
        for label, name in steps:
            bar = Progress(label, sb)
            try:
                res = getattr(ex, name)(mode, in_bundle, progress=bar, method=method)
            finally:
                bar.done()
    except (ValueError, KeyError) as e:
        sb.error(message(e))
        return None
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
        want = ss.pop(S_SELECT)
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
