"""Fine-tuning modes: a registry of small declarative records (method.md §2).

A mode says which image-encoder tensors fine-tuning may change (regular expressions over open_clip state-dict
names) and whether the model is trained and merged as its first-order Taylor expansion at θ0.  Adding a mode is
adding one :class:`Mode` record with :func:`register_mode`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

# Patterns over full CLIP keys, e.g. "visual.transformer.resblocks.3.attn.in_proj_weight".
# open_clip packs W_q, W_k, W_v into one [3d, d] `in_proj_weight` (HF CLIP splits them): τ acts on the packed tensor.
ATTN_WEIGHTS = (r"visual\.transformer\.resblocks\.\d+\.attn\.in_proj_weight",
                r"visual\.transformer\.resblocks\.\d+\.attn\.out_proj\.weight")
ATTN_BIASES = (r"visual\.transformer\.resblocks\.\d+\.attn\.in_proj_bias",
               r"visual\.transformer\.resblocks\.\d+\.attn\.out_proj\.bias")
MLP_WEIGHTS = (r"visual\.transformer\.resblocks\.\d+\.mlp\.c_fc\.weight",
               r"visual\.transformer\.resblocks\.\d+\.mlp\.c_proj\.weight")
ALL = (r"visual\..*",)


@dataclass(frozen=True)
class Mode:
    """One fine-tuning mode.

    name: registry key (CLI ``--mode``, file paths, metadata).
    patterns: full-match regexes of the tensors this mode trains; the task vector is zero elsewhere.
    linearized: train and evaluate f_lin(x; θ) = f(x; θ0) + J_θ f(x; θ0)(θ − θ0) instead of f (method.md §2).
    part: what the patterns select, as a short noun ("attention"), for the label of a view that cuts to it.
    kernel_subset: the name under which the kernel diagnostics linearize τ restricted to these tensors (method.md §5:
        attention weights against MLP weights against all of τ); empty: no such restricted linearization.
    recipe_from: the mode whose recipe a bundle's fine-tuning uses for this one when it records none of its own (a
        variant trains as its parent does: attn_bias as attn); empty: the bundle's first recipe (:func:`arith.index.recipe`).
    """

    name: str
    label: str
    patterns: tuple[str, ...]
    linearized: bool = False
    description: str = ""
    part: str = ""
    kernel_subset: str = ""
    recipe_from: str = ""

    @cached_property
    def _regex(self) -> re.Pattern:
        return re.compile("|".join(f"(?:{p})" for p in self.patterns))

    def trains(self, key: str) -> bool:
        """Whether fine-tuning in this mode changes the tensor named ``key``."""
        return self._regex.fullmatch(key) is not None

    def trainable_keys(self, keys: Iterable[str]) -> list[str]:
        return [k for k in keys if self.trains(k)]


MODES: dict[str, Mode] = {}


def register_mode(mode: Mode, *, replace: bool = False) -> Mode:
    """Add a mode record to the registry (``MODES``) and return it; every command, page and help text then
    offers it.  A name already registered is refused unless ``replace`` (re-running a notebook cell)."""
    if mode.name in MODES and not replace:
        raise ValueError(f"mode {mode.name!r} is already registered (replace=True replaces it)")
    if mode.recipe_from and mode.recipe_from not in MODES:  # checked here, not when a run first needs a recipe
        raise ValueError(f"mode {mode.name!r}: recipe_from {mode.recipe_from!r} is not a registered mode; known: "
                         f"{', '.join(MODES)}")
    MODES[mode.name] = mode
    return mode


def kernel_subsets() -> dict[str, str]:
    """Restricted linearizations of the kernel diagnostics, ``{subset name: the mode whose tensors it keeps}``, from
    the modes' records in registration order, the subset that keeps every tensor last ("all")."""
    parts = [(m.kernel_subset, m.name) for m in MODES.values() if m.kernel_subset and not m.linearized]
    return dict(sorted(parts, key=lambda p: MODES[p[1]].patterns == ALL))  # stable: the registry's order otherwise


def get_mode(name: str) -> Mode:
    """The registered mode ``name``; a ValueError listing the modes (or saying it is a view) otherwise."""
    try:
        return MODES[name]
    except KeyError:
        if VIEW_SEP in name:  # a view where only a mode will do (fine-tuning, cost, parameter counts)
            parse_view(name)  # first its own error when it is not a view either
            raise ValueError(f"{name!r} is a view (a mode's vectors cut to another mode's tensors): it can be "
                             f"evaluated, not trained or measured; modes: {', '.join(MODES)}") from None
        raise ValueError(f"unknown mode {name!r}; known modes: {', '.join(MODES)}") from None


register_mode(Mode("full", "Full fine-tuning", ALL,
                   description="every image-encoder parameter (non-linear baseline)", kernel_subset="all"))
register_mode(Mode("attn", "Attention-only", ATTN_WEIGHTS,
                   description="W_q, W_k, W_v (packed in_proj_weight) and W_o of every block (Jin et al. 2025)",
                   part="attention", kernel_subset="attention"))
register_mode(Mode("attn_bias", "Attention-only + biases", ATTN_WEIGHTS + ATTN_BIASES,
                   description="attention weights and their two biases (the `attn` switch)",
                   part="attention + biases", recipe_from="attn"))
register_mode(Mode("linear", "Linearized (NTK)", ALL, linearized=True,
                   description="first-order Taylor model at θ0, all parameters (Ortiz-Jimenez et al. 2023)"))
register_mode(Mode("mlp", "MLP-only", MLP_WEIGHTS,
                   description="c_fc and c_proj weights of every block (ablation for the kernel diagnostics)",
                   part="MLP", kernel_subset="mlp"))


# -- views: a mode's vectors cut post hoc to the tensors another mode trains -------------------------------------
# "full@attn" is full fine-tuning's τ_t with every entry outside the attention weights set to 0.  It separates *where*
# a mode trains from *what* training there learns: attention-only fine-tuning against the attention part of a
# full-fine-tuning τ.  The cut vectors stay vectors of their source mode (a linearized source stays linearized);
# only the tensors they hold change.
VIEW_SEP = "@"


@dataclass(frozen=True)
class ModeView:
    """``source``'s task vectors restricted to the tensors ``part`` trains (named ``source@part``)."""

    source: Mode
    part: Mode

    @property
    def name(self) -> str:
        return f"{self.source.name}{VIEW_SEP}{self.part.name}"

    @property
    def label(self) -> str:
        return f"{self.source.label}, {self.part.part or self.part.name} part"


def parse_view(name: str) -> ModeView | None:
    """The :class:`ModeView` named ``name`` (``source@part``), None for a plain mode name; a clear error for a view
    that names an unknown mode or cuts to a part that keeps every tensor (``full``, ``linear``: no cut at all)."""
    if VIEW_SEP not in name:
        return None
    source, _, part = name.partition(VIEW_SEP)
    try:
        view = ModeView(get_mode(source), get_mode(part))
    except ValueError as e:
        raise ValueError(f"view {name!r}: {e}") from None
    if view.part.patterns == ALL:
        raise ValueError(f"{name!r}: {part!r} trains every tensor, so cutting to it keeps the whole vector")
    if view.source.patterns != ALL:
        raise ValueError(f"{name!r}: only the vectors of a mode that trains every tensor (full, linear) are cut to "
                         f"a part; {source!r} vectors already hold only the tensors {source!r} trains")
    return view


def views_of(modes: Iterable[str]) -> list[str]:
    """The views that ``modes`` (a bundle's) make possible: each mode that trains every tensor, cut to the part each
    other mode trains, in the order given (e.g. ``full@attn``, ``full@mlp``, ``linear@attn``, ``linear@mlp``)."""
    modes = [get_mode(m) for m in modes if m in MODES]
    return [f"{s.name}{VIEW_SEP}{p.name}" for s in modes if s.patterns == ALL for p in modes if p.patterns != ALL]


def resolve(name: str) -> Mode:
    """The mode whose vectors ``name`` (a mode or a view) serves: a view's source, whose evaluation it keeps (a
    linearized source's cut vectors are still the linear model's).  A clear ``ValueError`` for an unknown name."""
    view = parse_view(name)
    return view.source if view else get_mode(name)


def source_of(name: str) -> str:
    """The name of the mode whose vectors ``name`` serves (a view's source; a mode itself), or ``name`` unchanged
    when it names neither (a workspace mode the registry lacks)."""
    try:
        return resolve(name).name
    except ValueError:
        return name


def is_linearized(name: str) -> bool:
    """Whether the vectors of a mode or view named ``name`` are evaluated as the linear model (False when unknown)."""
    try:
        return resolve(name).linearized
    except ValueError:
        return False


def label_of(name: str) -> str:
    """A mode's or a view's label (the name itself when neither is registered)."""
    try:
        view = parse_view(name)
    except ValueError:
        return name
    return view.label if view else (MODES[name].label if name in MODES else name)
