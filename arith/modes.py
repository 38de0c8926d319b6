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
    """

    name: str
    label: str
    patterns: tuple[str, ...]
    linearized: bool = False
    description: str = ""

    @cached_property
    def _regex(self) -> re.Pattern:
        return re.compile("|".join(f"(?:{p})" for p in self.patterns))

    def trains(self, key: str) -> bool:
        """Whether fine-tuning in this mode changes the tensor named ``key``."""
        return self._regex.fullmatch(key) is not None

    def trainable_keys(self, keys: Iterable[str]) -> list[str]:
        return [k for k in keys if self.trains(k)]


MODES: dict[str, Mode] = {}


def register_mode(mode: Mode) -> Mode:
    if mode.name in MODES:
        raise ValueError(f"mode {mode.name!r} is already registered")
    MODES[mode.name] = mode
    return mode


def get_mode(name: str) -> Mode:
    try:
        return MODES[name]
    except KeyError:
        raise ValueError(f"unknown mode {name!r}; known modes: {', '.join(MODES)}") from None


register_mode(Mode("full", "Full fine-tuning", ALL,
                   description="every image-encoder parameter (non-linear baseline)"))
register_mode(Mode("attn", "Attention-only", ATTN_WEIGHTS,
                   description="W_q, W_k, W_v (packed in_proj_weight) and W_o of every block (Jin et al. 2025)"))
register_mode(Mode("attn_bias", "Attention-only + biases", ATTN_WEIGHTS + ATTN_BIASES,
                   description="attention weights and their two biases (the `attn` switch)"))
register_mode(Mode("linear", "Linearized (NTK)", ALL, linearized=True,
                   description="first-order Taylor model at θ0, all parameters (Ortiz-Jimenez et al. 2023)"))
register_mode(Mode("mlp", "MLP-only", MLP_WEIGHTS,
                   description="c_fc and c_proj weights of every block (ablation for the kernel diagnostics)"))
