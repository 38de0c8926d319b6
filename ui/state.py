"""The app's state: which bundle, mode, tasks and coefficients (chosen in ``ui/sidebar.py``), the session's workspace,
the URL.

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
import re
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from arith.explore import Explorer
from arith.merge import parse_method
from arith.modes import label_of, source_of

from .common import message

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
    n = os.environ.get("ARITH_MAX_PER_TASK", "").strip()
    if n and (not n.isdigit() or int(n) < 1):
        raise ValueError(f"ARITH_MAX_PER_TASK must be a positive whole number of images per task, got {n!r}")
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

    def scored_names(self, mode: str | None = None) -> tuple[list[str], list[str]]:
        """(names, left out) of :meth:`names`: the vectors whose task the bundle has images of, which the diagnostics
        (ξ, kernel) can score, and the others (a workspace vector of a task the bundle does not hold)."""
        catalog = self.ex.catalog(mode or self.mode, self.extra(mode))
        ok = [n for n, t in catalog.items() if t in self.ex.tasks]
        return ok, [n for n in catalog if n not in ok]

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


def workspace_twin(ex: Explorer, tv: TaskVector) -> str | None:
    """The name under which this session's workspace already holds a vector equal to ``tv`` (same content uid and
    the same task), if any: the same file uploaded twice, or the same training run repeated.  The same tensors
    labelled with another task are another vector: they are evaluated with that task's head."""
    return next((n for n, entry in workspace_store(ex.base_id).items()
                 if entry["vector"].uid == tv.uid and entry["vector"].task == tv.task), None)


def add_to_workspace(ex: Explorer, tv: TaskVector, hint: str, source: str) -> str:
    """Add ``tv`` to this session's workspace under a new name (never a bundle task's name, so it never silently
    replaces a bundle vector); returns the name.  A vector the workspace already holds is not added twice: its
    name is returned (:func:`workspace_twin`)."""
    twin = workspace_twin(ex, tv)
    if twin is not None:
        return twin
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
    st.session_state.setdefault(S_SELECT, []).extend(names)  # the sidebar takes each name once


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
    """The opening coefficient: the bundle's validation-chosen α for ``mode`` when it ships one (for a view, which
    has no stored sweep, its source mode's: the vectors it is cut from)."""
    stored = ex.result("addition") or {}
    a = stored.get(mode) if mode in stored else stored.get(source_of(mode))
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
                notes.append(f"coefficient {key[2:]!r}={values[-1]!r} is not a number: ignored")
                continue
            coefs[key[2:]] = v
    clipped = beyond_sliders(coefs)
    if clipped:
        out["clipped"] = clipped
    if coefs:
        out["coefs"] = {n: snap(v) for n, v in coefs.items()}
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


def cli_command(ctx: Context, command: str, *args: str) -> tuple[str, dict[str, str]]:
    """The sidebar's edited model as a ``python -m arith COMMAND`` line (``args`` after the mode), and the workspace
    vectors it names as files: vector name -> the file name it travels as (``--vector NAME=FILE``).  The embedded
    default needs no ``--bundle`` wherever the command runs (not ``$ARITH_BUNDLE``: that is this server's); another
    bundle is named relative to the repository when it is inside it."""
    from arith.cli import DEFAULT_BUNDLE

    path = ctx.ref.path.resolve()
    bundle_arg = ("" if path == DEFAULT_BUNDLE.resolve() else
                  f" --bundle {shlex.quote(str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path))}")
    cmd = [f"python -m arith {command}{bundle_arg} --mode {ctx.mode}" + "".join(f" {a}" for a in args)
           + (f" --method {shlex.quote(ctx.method)}" if ctx.method != METHOD else "")
           # the images in use: a server's ARITH_MAX_PER_TASK evaluates the first N of each task
           + ("" if ctx.ex.uses_all_images else f" --max-per-task {ctx.ex.max_per_task}")]
    own: dict[str, str] = {}  # workspace vector -> the file it travels as: its name made a file name, one per vector
    for n in (n for n in ctx.coefs if ctx.is_workspace(n)):
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", n).strip("-.") or "vector"
        f, i = f"{stem}.safetensors", 2
        while f in own.values():
            f, i = f"{stem}-{i}.safetensors", i + 1
        own[n] = f
    cmd += [f"--vector {shlex.quote(f'{n}={f}')}" for n, f in own.items()]
    cmd += [f"--coef {shlex.quote(f'{n}={v:g}')}" for n, v in ctx.coefs.items()]
    return " \\\n  ".join(cmd), own
