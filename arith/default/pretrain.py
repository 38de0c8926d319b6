"""Pre-training the default's base: a CLIP-like tiny ViT whose "text embeddings" are learned concept vectors.

Recipe (after the second of the project's two small-scale attempts; see the README's *The embedded default*): a
cosine classifier over the 78 source concepts with a learnable logit scale, AdamW with warm-up and cosine decay,
small random translations. The notes restricted the softmax to each sample's group; here all concepts compete
(except look-alike glyphs such as 0/O), which pushes the groups apart in feature space, so a task vector of one
group disturbs the others less. The normalised classifier rows play the role of CLIP's class-name text embeddings:
each task's zero-shot head is the rows of its classes, frozen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..finetune import _augment, _batches
from ..heads import Head
from ..models import Base, build_visual
from ..specs import ModelSpec, _JsonRecord
from . import concepts as C

# bump when this recipe's code changes (loss, masks, schedule, augmentation): a cached θ0 is keyed by it
PRETRAIN_VERSION = "1"

@dataclass(frozen=True)
class PretrainConfig(_JsonRecord):
    width: int = 96
    layers: int = 4
    head_width: int = 32
    mlp_ratio: float = 4.0
    patch_size: int = 8
    embed_dim: int = 64
    pool: int = 96_000
    steps: int = 4000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: float = 0.05
    rich: bool = True  # generic nuisances in the source pool (textured/scenic backgrounds, neighbours, distractors)
    softmax: str = "global"  # "global": all concepts compete, except confusable glyph pairs; "group": within group
    seed: int = 0

    def spec(self) -> ModelSpec:
        return ModelSpec(config={"embed_dim": self.embed_dim, "vision_cfg": {
            "image_size": 32, "patch_size": self.patch_size, "width": self.width, "layers": self.layers,
            "head_width": self.head_width, "mlp_ratio": self.mlp_ratio}})


# glyphs that look alike across groups never compete in the global softmax
CONFUSABLE = (("0", "O"), ("1", "I"), ("5", "S"), ("2", "Z"), ("8", "B"))


def competition_mask(softmax: str) -> torch.Tensor:
    """[concepts, concepts] bool: which concepts a sample of each concept is contrasted against."""
    group = torch.as_tensor(C.GROUP_OF)
    if softmax == "group":
        return group[:, None] == group[None, :]
    mask = torch.ones(len(C.CONCEPTS), len(C.CONCEPTS), dtype=torch.bool)
    names = [c for _, c in C.CONCEPTS]
    for a, b in CONFUSABLE:
        i, j = names.index(a), names.index(b)
        mask[i, j] = mask[j, i] = False
    return mask


class ConceptClassifier(nn.Module):
    """Encoder + cosine classifier over all concepts (a learned "text embedding" per concept)."""

    def __init__(self, spec: ModelSpec, n_concepts: int, softmax: str = "global"):
        super().__init__()
        self.encoder = build_visual(spec)
        self.encoder.train()
        d = spec.config["embed_dim"]
        self.rows = nn.Parameter(torch.randn(n_concepts, d) / math.sqrt(d))
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.register_buffer("mask", competition_mask(softmax))

    def logits(self, x: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
        f = F.normalize(self.encoder(x), dim=-1)
        scale = self.log_scale.clamp(max=math.log(100.0)).exp()
        out = scale * f @ F.normalize(self.rows, dim=-1).T
        return out.masked_fill(~self.mask[concepts], float("-inf"))


def pretrain(cfg: PretrainConfig, images: torch.Tensor, concepts: torch.Tensor,
             progress: Callable[[int, int, float], None] | None = None,
             device: str | torch.device = "cpu") -> tuple[Base, dict, dict]:
    """Pre-train on the source pool; returns (θ0 as a Base, concept rows per group as Heads, stats).

    ``device`` runs the steps elsewhere (a GPU, for studies such as ``bench/base_probe.py``); the pool stays on the
    CPU where it is augmented, batches move.  θ0 and the heads come back on the CPU.  Only the CPU run is the
    build's (numerics differ across devices)."""
    torch.manual_seed(cfg.seed)
    spec = cfg.spec()
    model = ConceptClassifier(spec, len(C.CONCEPTS), cfg.softmax).to(device)
    base_tmp = Base(spec, build_visual(spec, device=device))  # only for preprocessing statistics
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and n != "rows"]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and n != "rows")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}],
                            lr=cfg.lr)
    warm = max(1, int(cfg.warmup * cfg.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, cfg.steps - warm))))
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    losses, start = [], time.perf_counter()
    for step, idx in enumerate(_batches(len(images), cfg.batch_size, cfg.steps, cfg.seed)):
        x, c = base_tmp.preprocess(_augment(images[idx], gen)), concepts[idx].to(device)
        loss = F.cross_entropy(model.logits(x, c), c)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress:
            progress(step + 1, cfg.steps, losses[-1])
    model.eval().cpu()
    base = Base(spec, model.encoder)
    rows = F.normalize(model.rows.detach(), dim=-1)
    scale = float(model.log_scale.detach().clamp(max=math.log(100.0)).exp())
    heads = {}
    for gi, g in enumerate(C.GROUPS):
        heads[g.name] = Head(rows[torch.as_tensor(C.GROUP_OF) == gi].clone(), scale)
    stats = {"seconds": time.perf_counter() - start, "final_loss": float(np.mean(losses[-50:])), "scale": scale}
    return base, heads, stats
