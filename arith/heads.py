"""Frozen classification heads (method.md §1): never trained, computed once per (base, task).

* CLIP zero-shot heads: for each class, encode every prompt template with θ0's text tower, L2-normalise each
  embedding, average, normalise again; logits = exp(logit_scale) · normalise(f(x)) @ Wᵀ.
* Prototype heads, for encoders without a text tower: the normalised mean of normalised θ0 features per class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True, repr=False)
class Head:
    """A frozen linear head on normalised features: ``logits = scale · normalise(f) @ weight.T``."""

    def __repr__(self) -> str:
        return f"Head({self.num_classes} classes, {self.weight.shape[1]}-d features, scale {self.scale:g})"

    weight: torch.Tensor  # [C, D], rows L2-normalised
    scale: float = 100.0

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """scale · normalise(features) @ weightᵀ (method.md §1: the frozen zero-shot head)."""
        w = self.weight.to(features.device, features.dtype)
        return self.scale * F.normalize(features, dim=-1) @ w.T

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """The predicted class index of each row of ``features``."""
        return self.logits(features).argmax(dim=-1)

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])


@torch.no_grad()
def zeroshot_head(clip, tokenizer: Callable, classnames: Sequence[str], templates: Sequence[str],
                  device: str | torch.device = "cpu") -> Head:
    """The paper's zero-shot head from an open_clip CLIP model's text tower (method.md §1)."""
    clip = clip.to(device).eval()
    rows = []
    for name in classnames:
        tokens = tokenizer([t.format(name) for t in templates]).to(device)
        emb = F.normalize(clip.encode_text(tokens).float(), dim=-1)
        rows.append(F.normalize(emb.mean(dim=0), dim=-1))
    return Head(torch.stack(rows).cpu(), float(clip.logit_scale.exp()))


@torch.no_grad()
def prototype_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int, scale: float = 100.0) -> Head:
    """Normalised class means of normalised θ0 features (a head for encoders without a text tower)."""
    f = F.normalize(features.float(), dim=-1)
    w = torch.zeros(num_classes, f.shape[1], dtype=f.dtype, device=f.device)
    w.index_add_(0, labels.to(f.device), f)
    empty = (w.norm(dim=1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"prototype head: no examples for class(es) {empty}")
    return Head(F.normalize(w, dim=-1).cpu(), scale)


def heads_to_tensors(heads: Mapping[str, Head]) -> dict[str, torch.Tensor]:
    """Flatten heads for a safetensors file: ``<task>.weight`` and ``<task>.scale``."""
    out = {}
    for task, h in heads.items():
        out[f"{task}.weight"] = h.weight.detach().float().contiguous()
        out[f"{task}.scale"] = torch.tensor(float(h.scale))
    return out


def heads_from_tensors(tensors: Mapping[str, torch.Tensor], tasks: Sequence[str], embed_dim: int) -> dict[str, Head]:
    """Inverse of :func:`heads_to_tensors`, checking that every task has a [C, embed_dim] head."""
    heads = {}
    for task in tasks:
        w, s = tensors.get(f"{task}.weight"), tensors.get(f"{task}.scale")
        if w is None or s is None:
            raise ValueError(f"heads: no head for task {task!r}")
        if w.ndim != 2 or w.shape[1] != embed_dim or not torch.isfinite(w).all():
            raise ValueError(f"heads: {task}.weight has shape {tuple(w.shape)}, expected [classes, {embed_dim}], finite")
        # logits = scale · cos: a scale that is not a positive number predicts class 0 (NaN, 0) or the least similar
        # class (negative) for every image
        if s.numel() != 1 or not (math.isfinite(float(s)) and float(s) > 0):
            raise ValueError(f"heads: {task}.scale must be one positive finite number, got {s.flatten()[:3].tolist()}")
        heads[task] = Head(w.float(), float(s))
    return heads
