"""Merging task vectors into a model, as a registry of merge methods (method.md §3).

A merge method maps (task vectors, per-task coefficients) to one parameter offset δ; the merged model is
θ0 + δ, built as a *new* dict (keys δ does not touch share θ0's read-only tensors).  Nothing is written in place,
so concurrent users with different coefficients never see each other's weights.

``task_arithmetic`` is the papers' θ0 + Σ_t λ_t τ_t (linear in λ; negative λ negates a task).  ``ties`` is
TIES-merging (Yadav et al. 2023: trim to the top-k magnitudes, elect a sign per entry, average the agreeing
entries), included to show that a method is one record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the registry is read without torch (the app's sidebar lists it before torch is imported)
    import torch

    from .taskvec import TaskVector

Delta = dict[str, "torch.Tensor"]


@dataclass(frozen=True)
class MergeMethod:
    name: str
    label: str
    combine: Callable[..., Delta]  # combine(vectors, coefs, **options) -> δ
    linear: bool  # δ is linear in the coefficients (lets linearized evaluation reuse cached J τ_t)
    description: str = ""


MERGE_METHODS: dict[str, MergeMethod] = {}


def register_merge_method(method: MergeMethod) -> MergeMethod:
    if method.name in MERGE_METHODS:
        raise ValueError(f"merge method {method.name!r} is already registered")
    MERGE_METHODS[method.name] = method
    return method


def get_merge_method(name: str) -> MergeMethod:
    try:
        return MERGE_METHODS[name]
    except KeyError:
        raise ValueError(f"unknown merge method {name!r}; known: {', '.join(MERGE_METHODS)}") from None


def _check(vectors: Sequence[TaskVector], coefs: Sequence[float]) -> None:
    if len(vectors) != len(coefs):
        raise ValueError(f"{len(vectors)} task vectors but {len(coefs)} coefficients")
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


def ties(vectors: Sequence[TaskVector], coefs: Sequence[float], density: float = 0.2) -> Delta:
    """TIES-merging of the scaled vectors λ_t τ_t: keep each vector's top ``density`` fraction of entries by
    magnitude, elect the sign of their sum per entry, and average the entries that agree with it."""
    import torch

    _check(vectors, coefs)
    delta: Delta = {}
    keys = sorted({k for v in vectors for k in v.tensors})
    for k in keys:
        stack = [float(lam) * v.tensors[k] for v, lam in zip(vectors, coefs) if k in v.tensors and float(lam) != 0.0]
        if not stack:
            continue
        t = torch.stack(stack)
        flat = t.reshape(len(stack), -1).abs()
        keep = max(1, int(round(density * flat.shape[1])))
        thresh = flat.kthvalue(flat.shape[1] - keep + 1, dim=1, keepdim=True).values
        trimmed = t * (flat >= thresh).reshape(t.shape)
        sign = torch.sign(trimmed.sum(0))
        agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
        count = agree.sum(0).clamp(min=1)
        delta[k] = (trimmed * agree).sum(0) / count
    return delta


register_merge_method(MergeMethod("task_arithmetic", "Task arithmetic", task_arithmetic, linear=True,
                                  description="θ0 + Σ λ_t τ_t (Ilharco et al. 2023)"))
register_merge_method(MergeMethod("ties", "TIES-merging", ties, linear=False,
                                  description="each scaled vector trimmed to its top 20 % of entries per tensor, "
                                              "a sign elected per entry, the agreeing entries averaged (Yadav et al. "
                                              "2023; a shared α is the paper's λ, about 1; one task at λ = 1 is not "
                                              "its fine-tuned model)"))


def combine(vectors: Sequence[TaskVector], coefs: Sequence[float], method: str = "task_arithmetic", **options) -> Delta:
    """The parameter offset δ of ``method`` for these vectors and coefficients."""
    return get_merge_method(method).combine(vectors, coefs, **options)


def apply_delta(theta0: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """θ0 + δ as a new dict; untouched keys reference θ0's tensors (read-only), touched ones are new tensors."""
    out = dict(theta0)
    for k, d in delta.items():
        out[k] = theta0[k] + d.to(theta0[k].device, theta0[k].dtype)
    return out


def merge(theta0: Mapping[str, torch.Tensor], vectors: Sequence[TaskVector], coefs: Sequence[float],
          method: str = "task_arithmetic", **options) -> dict[str, torch.Tensor]:
    """Merged parameters θ0 + δ(vectors, coefs): for ``task_arithmetic``, θ0 + Σ_t λ_t τ_t."""
    return apply_delta(theta0, combine(vectors, coefs, method, **options))
