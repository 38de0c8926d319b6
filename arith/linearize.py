"""The first-order Taylor model at θ0 (method.md §2 `linear`, §5 kernel behaviour).

    f_lin(x; θ0 + δ) = f(x; θ0) + J_θ f(x; θ0) δ

computed with ``torch.func.jvp`` around the *fixed* point θ0 (the reference code moved the expansion point every
step, which is not NTK fine-tuning).  Because the JVP is linear in its tangent, a merged linear model is
f(x; θ0) + Σ_t λ_t J τ_t: caching f(x; θ0) and J τ_t per task makes any new coefficient set a weighted sum.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from contextlib import ExitStack, contextmanager

import torch
from torch.func import jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

_lock = threading.Lock()
# torch's forward-mode AD keeps its dual level in process-global state (torch.autograd.forward_ad._current_level):
# two threads inside torch.func.jvp at once fail with "no level exists".  JVPs therefore run one at a time.
_jvp_lock = threading.RLock()
_depth = 0
_stack: ExitStack | None = None
_saved_fastpath = True


@contextmanager
def forward_ad_attention():
    """Make ``nn.MultiheadAttention`` differentiable in forward mode for the duration of the block.

    Its fused eval-mode fast path and the flash SDPA kernel on CPU do not implement forward AD in torch 2.14
    (method.md §2).  Both switches are process-global, so the context is reference-counted: concurrent linearized
    computations in several threads keep them off until the last one leaves, and ordinary forward passes elsewhere
    get the fast kernels back afterwards.
    """
    global _depth, _stack, _saved_fastpath
    with _lock:
        if _depth == 0:
            _saved_fastpath = torch.backends.mha.get_fastpath_enabled()
            torch.backends.mha.set_fastpath_enabled(False)
            _stack = ExitStack()
            _stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _stack.close()
                _stack = None
                torch.backends.mha.set_fastpath_enabled(_saved_fastpath)


def jvp_features(base, delta: Mapping[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(x; θ0), J_θ f(x; θ0) δ) for a parameter offset ``delta`` over any subset of θ0's keys.

    Keys absent from ``delta`` are held at θ0 and are not differentiated, so a restricted linearization (tangent
    only on attention or only on MLP weights, method.md §5) is just a ``delta`` with fewer keys.  Gradients flow
    back into ``delta`` (linearized fine-tuning trains through this).
    """
    keys = list(delta)
    if not keys:
        f0 = base.features(None, x)
        return f0, torch.zeros_like(f0)
    primals = {k: base.params[k] for k in keys}
    tangents = {k: delta[k].to(dtype=base.params[k].dtype) for k in keys}

    def f(p):
        return base.features(p, x)

    base.module  # noqa: B018 - a lazily built module must be built before the transform, not inside it
    with _jvp_lock, forward_ad_attention():
        f0, jd = jvp(f, (primals,), (tangents,))
    return f0, jd


def linearized_features(base, delta: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """f_lin(x; θ0 + δ) = f(x; θ0) + J δ."""
    f0, jd = jvp_features(base, delta, x)
    return f0 + jd
