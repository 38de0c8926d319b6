"""Merging task vectors into a model, as a registry of merge methods (method.md §3).

A merge method maps (task vectors, per-task coefficients) to one parameter offset δ; the merged model is
θ0 + δ, built as a *new* dict (keys δ does not touch share θ0's read-only tensors).  Nothing is written in place,
so concurrent users with different coefficients never see each other's weights.

``task_arithmetic`` is the papers' θ0 + Σ_t λ_t τ_t (linear in λ; negative λ negates a task).  ``ties`` is
TIES-merging (Yadav et al. 2023: trim to the top-k magnitudes, elect a sign per entry, average the agreeing
entries), ``dare`` is DARE (Yu et al. 2024: drop entries at random, rescale the rest, add) and ``dare_ties`` the
two together (DARE's drops, TIES's election), included as the common baselines of the merging literature and to
show that a method is one record.

A method's tunable settings are declared on its record (:class:`MethodOption`), and a *method spec* names a method
with settings in one string, ``name`` or ``name:option=value,…`` (e.g. ``ties:density=0.5,scope=vector``).  The
spec is what the CLI's ``--method``, a link's ``method=``, a coefficient set and the engine's caches carry;
:func:`canonical_method` writes it with options sorted, defaults and moot options left out, so equal requests share
one key.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the registry is read without torch (the app's sidebar lists it before torch is imported)
    import torch

    from .taskvec import TaskVector

Delta = dict[str, "torch.Tensor"]


@dataclass(frozen=True)
class MethodOption:
    """One setting of a merge method: a number in [low, high] (``choices`` empty; a whole number when ``integer``)
    or one of ``choices``."""

    name: str
    label: str
    default: float | int | str
    help: str = ""
    low: float = 0.0
    high: float = 1.0
    step: float = 0.05
    choices: tuple[str, ...] = ()
    low_open: bool = False  # the lower bound itself is not allowed (a density of 0 keeps nothing)
    integer: bool = False  # a whole number (a seed): kept exactly, as an int

    def value(self, raw: object) -> float | int | str:
        """``raw`` (text from a spec, or a value) checked against this option; a clear ValueError otherwise."""
        if self.choices:
            if str(raw) not in self.choices:
                raise ValueError(f"option {self.name!r} must be one of {', '.join(self.choices)}, not {raw!r}")
            return str(raw)
        try:
            v = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"option {self.name!r} must be a number, not {raw!r}") from None
        if self.integer:
            if not (math.isfinite(v) and v == int(v) and self.low <= v <= self.high):
                raise ValueError(f"option {self.name!r} must be a whole number from {self.low:g} to {self.high:g}, "
                                 f"not {raw!r}")
            return int(v)
        if math.isfinite(v):
            v = float(f"{v:.6g}")  # the number used is the number a spec writes (:meth:`text`): one key per value
        if not (math.isfinite(v) and (self.low < v if self.low_open else self.low <= v) and v <= self.high):
            lo = "(" if self.low_open else "["
            raise ValueError(f"option {self.name!r} must lie in {lo}{self.low:g}, {self.high:g}], not {raw!r}")
        return v

    def text(self, value: float | int | str) -> str:
        """``value`` as a spec writes it (numbers with ``%g``, six significant digits, as :meth:`value` keeps;
        whole numbers in full)."""
        if self.choices:
            return str(value)
        return str(int(value)) if self.integer else f"{value:g}"

    @property
    def widget_low(self) -> float:
        """The lowest value a slider offers: ``low``, or one step above it when ``low`` itself is not allowed."""
        return self.low + self.step if self.low_open else self.low

    def describe(self) -> str:
        """``name=default`` (numbers) or ``name=a|b`` (choices), for help texts."""
        return f"{self.name}={'|'.join(self.choices)}" if self.choices else f"{self.name}={self.text(self.default)}"


@dataclass(frozen=True)
class MergeMethod:
    name: str
    label: str
    combine: Callable[..., Delta]  # combine(vectors, coefs, **options) -> δ
    linear: bool  # δ is Σ_t λ_t τ_t of the stored vectors (lets linearized evaluation reuse cached J τ_t)
    description: str = ""
    options: tuple[MethodOption, ...] = ()  # keyword arguments of ``combine`` a user may set
    # task addition searches its shared α over {0, 0.05, …, alpha_max} and per-task λ over {0, 0.1, …, alpha_max}
    # (arith.protocols): 1 for the papers' sum; a method that averages instead of adding needs a larger one
    alpha_max: float = 1.0
    # option values -> the same values with the options that another value makes moot reset to their defaults, so
    # that equal merges share one canonical spec (and one cache entry); None: every option always matters.  It must
    # return valid values and be idempotent; the sidebar disables the widget of an option it makes moot
    simplify: Callable[[dict], dict] | None = None
    # vector, option values -> a vector: the method is task arithmetic on each τ_t mapped by this (DARE's drops), so
    # a linearized mode adds the mapped vectors' cached J (see :attr:`cached_jvp`); None: no such form
    per_vector: Callable[..., TaskVector] | None = None

    @property
    def cached_jvp(self) -> bool:
        """Whether a linearized mode merged by this method is a weighted sum of cached J τ (of the stored vectors,
        or of the vectors ``per_vector`` maps them to), rather than one J δ per request."""
        return self.linear or self.per_vector is not None

    def moot(self, values: Mapping[str, float | int | str], option: str) -> bool:
        """Whether ``option`` has no effect given the other ``values``: ``simplify`` resets every other value of it
        (every choice; a number's ends) to its default.  The sidebar disables a moot option's widget."""
        opt = next(o for o in self.options if o.name == option)
        if self.simplify is None:
            return False
        default = opt.value(opt.default)
        probes = opt.choices or tuple({opt.value(opt.widget_low), opt.value(opt.high)} - {default})
        return all(self.simplify({**values, option: opt.value(c)})[option] == default for c in probes)

    def defaults(self) -> dict[str, float | int | str]:
        return {o.name: o.value(o.default) for o in self.options}


MERGE_METHODS: dict[str, MergeMethod] = {}


def register_merge_method(method: MergeMethod, *, replace: bool = False) -> MergeMethod:
    """Add a merge method record to the registry (``MERGE_METHODS``) and return it; every command, page and help text then
    offers it.  A name already registered is refused unless ``replace`` (re-running a notebook cell)."""
    if method.name in MERGE_METHODS and not replace:
        raise ValueError(f"merge method {method.name!r} is already registered (replace=True replaces it)")
    MERGE_METHODS[method.name] = method
    return method


def get_merge_method(spec: str) -> MergeMethod:
    """The record of a method name or method spec (``ties`` or ``ties:density=0.5``)."""
    return parse_method(spec)[0]


def parse_method(spec: str) -> tuple[MergeMethod, dict[str, float | int | str]]:
    """A method spec, ``name`` or ``name:option=value,…``, as (record, every option's value, defaults filled in).
    Unknown methods or options, repeated options and values out of range raise a ValueError naming them."""
    if not isinstance(spec, str):
        raise ValueError(f"a merge method is named by a string, not {type(spec).__name__}")
    name, _, rest = spec.partition(":")
    name = name.strip()
    try:
        method = MERGE_METHODS[name]
    except KeyError:
        raise ValueError(f"unknown merge method {name!r}; known: {', '.join(MERGE_METHODS)}") from None
    known = {o.name: o for o in method.options}
    values = method.defaults()
    seen: set[str] = set()
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, raw = (x.strip() for x in item.partition("="))
        if not known:
            raise ValueError(f"merge method {name!r} takes no options (got {item!r}); write {name} alone")
        if not eq or key not in known:
            raise ValueError(f"merge method {name!r} has no option {key!r} (options: {', '.join(known)}); "
                             f"write {name}:option=value")
        if key in seen:
            raise ValueError(f"option {key!r} is given twice in {spec!r}")
        seen.add(key)
        values[key] = known[key].value(raw)
    return method, values


def method_spec(name: str, **options: float | int | str) -> str:
    """The canonical spec of ``name`` with ``options``: options sorted, those at their default left out, numbers
    written with ``%g`` (``ties:density=0.5``; plain ``ties`` when every option is at its default).  The record's
    ``simplify`` first resets options that other values make moot (TIES at density 1: the scope), so that equal
    merges share one spec; the spec then merges exactly as ``name`` with ``options`` does."""
    method, values = parse_method(name)
    opts = {o.name: o for o in method.options}
    for k, v in options.items():
        if k not in opts:
            raise ValueError(f"merge method {name!r} has no option {k!r} (options: {', '.join(opts) or 'none'})")
        values[k] = opts[k].value(v)
    if method.simplify is not None:  # re-checked: a hook must return valid values
        values = {k: opts[k].value(v) for k, v in method.simplify(values).items()}
    parts = [f"{k}={opts[k].text(v)}" for k, v in sorted(values.items()) if v != opts[k].value(opts[k].default)]
    return method.name + (":" + ",".join(parts) if parts else "")


def canonical_method(spec: str) -> str:
    """``spec`` rewritten canonically (see :func:`method_spec`); a ValueError if it names no valid method."""
    method, values = parse_method(spec)
    return method_spec(method.name, **values)


def is_method(spec: object) -> bool:
    """Whether ``spec`` is a valid method spec."""
    try:
        parse_method(spec)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


def method_label(spec: str) -> str:
    """A human label: the method's label, with its non-default options (``TIES-merging (density 0.5)``)."""
    try:
        method, values = parse_method(spec)
    except ValueError:
        return str(spec)
    shown = [f"{o.label.lower()} {o.text(values[o.name])}" for o in method.options
             if values[o.name] != o.value(o.default)]
    return method.label + (f" ({', '.join(shown)})" if shown else "")


def check_coefs(coefs: Sequence[float]) -> None:
    """Coefficients are finite real numbers: a NaN or infinite λ would merge to NaN / Inf weights, whose argmax
    predictions look like (bad) accuracies rather than an error."""
    for c in coefs:
        try:
            ok = math.isfinite(float(c))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"coefficient {c!r} is not a finite number")


def _check(vectors: Sequence[TaskVector], coefs: Sequence[float]) -> None:
    if len(vectors) != len(coefs):
        raise ValueError(f"{len(vectors)} task vectors but {len(coefs)} coefficients")
    check_coefs(coefs)
    if len({v.base_id for v in vectors}) > 1:
        raise ValueError("task vectors of different base models cannot be merged")
    if len({v.linearized for v in vectors}) > 1:
        raise ValueError("linearized-mode and non-linear task vectors cannot be merged together")


def task_arithmetic(vectors: Sequence[TaskVector], coefs: Sequence[float]) -> Delta:
    """δ = Σ_t λ_t τ_t over the union of the vectors' keys (zero coefficients are skipped)."""
    _check(vectors, coefs)
    delta: Delta = {}
    for tv, lam in zip(vectors, coefs):
        lam = float(lam)
        if lam == 0.0:
            continue
        for k, t in tv.tensors.items():
            delta[k] = delta[k] + lam * t if k in delta else lam * t
    return delta


def ties(vectors: Sequence[TaskVector], coefs: Sequence[float], density: float = 0.2, scope: str = "tensor") -> Delta:
    """TIES-merging of the scaled vectors λ_t τ_t: keep each vector's top ``density`` fraction of entries by
    magnitude, elect the sign of their sum per entry, and average the entries that agree with it.

    ``scope`` says over what the top fraction is taken: each tensor of a vector on its own (``tensor``, as mergekit
    trims) or the whole vector at once (``vector``, as the TIES paper's code flattens each task vector).  The trim
    is τ_t's own, before scaling (|λ x| ≥ |λ| c ⟺ |x| ≥ c, so scaling would not move it), which lets each vector
    memoise its thresholds (:meth:`arith.taskvec.TaskVector.top_threshold`)."""
    _check(vectors, coefs)
    if not 0.0 < float(density) <= 1.0:
        raise ValueError(f"TIES density must lie in (0, 1], not {density!r}")
    if scope not in ("tensor", "vector"):
        raise ValueError(f"TIES scope must be 'tensor' or 'vector', not {scope!r}")
    density = float(density)
    live = [(v, float(lam)) for v, lam in zip(vectors, coefs) if float(lam) != 0.0]
    delta: Delta = {}
    for k in sorted({k for v, _ in live for k in v.tensors}):
        # trim: each τ_t's entries at or above its memoised threshold (per tensor, or over the whole vector); at
        # density 1 every entry is kept, the same values without the comparison
        delta[k] = _elect_and_average([lam * v.tensors[k] if density >= 1.0 else lam * v.tensors[k] * (
            v.tensors[k].abs() >= v.top_threshold(density, k if scope == "tensor" else None))
            for v, lam in live if k in v.tensors])
    return delta


def _elect_and_average(scaled: list) -> torch.Tensor:
    """TIES's sign election and disjoint mean over the scaled, trimmed tensors of one key: the sign of their sum
    per entry, and the mean of the entries that agree with it (0 where none does)."""
    import torch

    stacked = torch.stack(scaled)
    sign = torch.sign(stacked.sum(0))
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    return (stacked * agree).sum(0) / agree.sum(0).clamp(min=1)


class _Dropped(Mapping):
    """τ's tensors after DARE's drop-and-rescale, m ⊙ τ / density, each computed when read (not kept): a linearized
    mode whose J of the mapped vector is cached never reads them."""

    def __init__(self, tv: TaskVector, density: float, seed: int):
        self._tv, self._density, self._seed = tv, density, seed

    def __getitem__(self, key: str):
        t = self._tv.tensors[key]
        return t * self._tv.dare_mask(self._density, self._seed, key) / self._density

    @property
    def unmapped(self) -> Mapping:
        """τ's own tensors, of the same keys and shapes (for what needs shapes only: TaskVector.numel)."""
        return self._tv.tensors

    def __iter__(self):
        return iter(self._tv.tensors)

    def __len__(self) -> int:
        return len(self._tv.tensors)


def dare_vector(tv: TaskVector, density: float = 0.5, seed: int = 0) -> TaskVector:
    """DARE's drop-and-rescale of one vector, m ⊙ τ / density (τ itself at density 1), with the mask of
    :meth:`arith.taskvec.TaskVector.dare_mask`.  Its ``uid`` names (τ's uid, density, seed) without hashing the
    tensors, so a linearized mode caches J of it like any stored vector's; its tensors are computed when read."""
    import hashlib

    from .taskvec import TaskVector

    if density >= 1.0:
        return tv
    meta = tv.derived_meta(f"DARE(density {float(density):g}, seed {int(seed)}) of {{}}")  # not what training made
    out = TaskVector(_Dropped(tv, float(density), int(seed)), tv.task, tv.mode, tv.base_id, meta)
    out.__dict__["uid"] = hashlib.sha256(f"{tv.uid}|dare|{float(density)!r}|{int(seed)}".encode()).hexdigest()[:20]
    return out


def _check_drops(vectors, coefs, density, seed, name: str) -> tuple[float, int]:
    """The merge's inputs and DARE's two settings checked (a direct call bypasses the spec's checks): (density, seed)."""
    _check(vectors, coefs)
    if not 0.0 < float(density) <= 1.0:
        raise ValueError(f"{name} density must lie in (0, 1], not {density!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"{name} seed must be a non-negative whole number, not {seed!r}")
    return float(density), int(seed)


def dare(vectors: Sequence[TaskVector], coefs: Sequence[float], density: float = 0.5, seed: int = 0) -> Delta:
    """DARE (Yu et al. 2024, "Language Models are Super Mario"): drop each entry of every τ_t at random, keeping it
    with probability ``density``, rescale the kept entries by 1 / density, then add as task arithmetic does:
    δ = Σ_t λ_t (m_t ⊙ τ_t) / density, so E[δ] is task arithmetic's δ (DARE-linear in mergekit's terms).

    The masks m_t are τ_t's own (:meth:`arith.taskvec.TaskVector.dare_mask`): drawn from ``seed`` and the vector's
    content, never from its position, so a merge is reproducible on any device and in any order of the vectors (up
    to the rounding of the sum).  It is task arithmetic on the vectors :func:`dare_vector` maps, so a linearized mode
    adds their cached J (m_t ⊙ τ_t) / density, and at density 1 it is task arithmetic exactly, in every mode."""
    density, seed = _check_drops(vectors, coefs, density, seed, "DARE")
    return task_arithmetic([dare_vector(v, density, seed) if float(lam) != 0.0 else v
                            for v, lam in zip(vectors, coefs)], coefs)


def dare_ties(vectors: Sequence[TaskVector], coefs: Sequence[float], density: float = 0.5, seed: int = 0) -> Delta:
    """DARE-TIES (after mergekit's ``dare_ties``): DARE's random drops and rescaling (:func:`dare_vector`, the same masks
    as :func:`dare`) in place of TIES's magnitude trim, then TIES's sign election and disjoint mean of the scaled
    vectors λ_t (m_t ⊙ τ_t) / density.  The mean is over the count of agreeing entries, as in this project's TIES
    (the TIES paper's disjoint mean), where mergekit divides by the sum of the agreeing weights.  At density 1 it is
    TIES with nothing trimmed (``ties:density=1``)."""
    density, seed = _check_drops(vectors, coefs, density, seed, "DARE-TIES")
    live = [(dare_vector(v, density, seed), float(lam)) for v, lam in zip(vectors, coefs) if float(lam) != 0.0]
    return {k: _elect_and_average([lam * v.tensors[k] for v, lam in live if k in v.tensors])
            for k in sorted({k for v, _ in live for k in v.tensors})}


# DARE's settings, shared by DARE and DARE-TIES (the same density and seed draw the same drops in both)
DROP_OPTIONS = (MethodOption("density", "Density", 0.5, "probability of keeping each entry of a vector (the DARE "
                                                        "paper's 1 − p; 1 drops nothing)",
                             low=0.0, high=1.0, step=0.05, low_open=True),
                MethodOption("seed", "Seed", 0, "draws the random drops; each vector's are its own, whatever the "
                                                "order of the vectors", low=0, high=999, step=1, integer=True))


def _dare_simplify(values: dict) -> dict:
    # at density 1 nothing is dropped, so the seed that draws the drops does not matter
    return {**values, "seed": 0} if values["density"] >= 1.0 else values


def _ties_simplify(values: dict) -> dict:
    # at density 1 nothing is trimmed, so where the trim is counted (scope) does not matter
    return {**values, "scope": "tensor"} if values["density"] >= 1.0 else values


register_merge_method(MergeMethod("task_arithmetic", "Task arithmetic", task_arithmetic, linear=True,
                                  description="θ0 + Σ λ_t τ_t (Ilharco et al. 2023)"))
register_merge_method(MergeMethod(
    "ties", "TIES-merging", ties, linear=False,
    description="each vector trimmed to its largest entries (the density; per tensor or over the whole vector) and "
                "scaled by its λ, a sign elected per entry, the agreeing entries averaged (Yadav et al. 2023; a shared α is "
                "the paper's λ, about 1, searched here up to 2; one task at λ = 1 is not its fine-tuned model)",
    options=(MethodOption("density", "Density", 0.2, "fraction of each vector's entries kept, by magnitude "
                                                     "(the paper's k; 1 keeps every entry)",
                          low=0.0, high=1.0, step=0.05, low_open=True),
             MethodOption("scope", "Trim over", "tensor", "where the largest entries are counted: within each "
                                                          "tensor (mergekit) or over the whole vector (the paper's "
                                                          "code)", choices=("tensor", "vector"))),
    # the disjoint mean averages the agreeing entries: its α plays the part of the sum's α × (number of tasks)
    alpha_max=2.0, simplify=_ties_simplify))
register_merge_method(MergeMethod(
    "dare", "DARE", dare, linear=False,
    description="each vector's entries dropped at random (kept with probability the density, drawn from the seed) "
                "and the kept ones rescaled by 1 / density, then added as task arithmetic adds (Yu et al. 2024); on "
                "average over seeds it is task arithmetic, and at density 1 exactly",
    options=DROP_OPTIONS, simplify=_dare_simplify, per_vector=dare_vector))
register_merge_method(MergeMethod(
    "dare_ties", "DARE-TIES", dare_ties, linear=False,
    description="DARE's random drops and rescaling in place of TIES's trim, then TIES's sign election and mean of "
                "the agreeing entries (after mergekit's dare_ties; a shared α about 1, searched up to 2; at density 1 it is "
                "TIES with nothing trimmed)",
    options=DROP_OPTIONS, alpha_max=2.0, simplify=_dare_simplify))


def combine(vectors: Sequence[TaskVector], coefs: Sequence[float], method: str = "task_arithmetic", **options) -> Delta:
    """The parameter offset δ of ``method`` (a name or spec, :func:`parse_method`) for these vectors and
    coefficients; keyword ``options`` override the spec's."""
    record, values = parse_method(method)
    return record.combine(vectors, coefs, **{**values, **options})


def apply_delta(theta0: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """θ0 + δ as a new dict; untouched keys reference θ0's tensors (read-only), touched ones are new tensors.  A δ key
    θ0 lacks, or of another shape, is a ValueError naming it (a vector of another architecture)."""
    out = dict(theta0)
    for k, d in delta.items():
        if k not in theta0 or theta0[k].shape != d.shape:
            have = "has no such tensor" if k not in theta0 else f"has shape {tuple(theta0[k].shape)}"
            raise ValueError(f"{k}: the task vector's {tuple(d.shape)} does not fit θ0, which {have} (a vector of "
                             "another model?)")
        out[k] = theta0[k] + d.to(theta0[k].device, theta0[k].dtype)
    return out


def merge(theta0: Mapping[str, torch.Tensor], vectors: Sequence[TaskVector], coefs: Sequence[float],
          method: str = "task_arithmetic", **options) -> dict[str, torch.Tensor]:
    """Merged parameters θ0 + δ(vectors, coefs): for ``task_arithmetic``, θ0 + Σ_t λ_t τ_t.

    Keys no vector touches are θ0's own tensors, not copies (a merge costs only what it changes): read the result
    (``functional_call``, :meth:`arith.models.Base.features`), or make weights of your own to edit in place or train
    (:meth:`arith.models.Base.encoder`, or clone them).  Linearized-mode vectors give θ0 + δ too: the non-linear
    model at those weights, not the linear model f(θ0) + J δ that :class:`arith.evaluate.Evaluator` scores for them."""
    return apply_delta(theta0, combine(vectors, coefs, method, **options))
