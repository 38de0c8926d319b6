"""A staged evaluation forward of open_clip's standard ViT image encoder (the slider path's hot loop).

:meth:`arith.models.Base.features` runs the open_clip module through ``torch.func.functional_call``: general, and
what fine-tuning and the JVPs use.  For evaluation without gradients this module computes the same function
directly from the parameter dict, in *stages* (the patch embedding, then each block's attention and MLP
sub-layers, then the pooled projection), which buys three things:

* the last block runs only for the class token, the one output the encoder returns (open_clip computes all tokens
  and drops all but one): about a fifth of a 4-layer encoder's work;
* attention is plain batched matrix products on contiguous [N, L, ·] tensors.  ``nn.MultiheadAttention``'s slow
  path (taken for an odd number of heads, for gradients, or inside :func:`arith.linearize.forward_ad_attention`)
  transposes to [L, N, ·] and runs the input projection as a broadcast ``bmm``; and its kernel choice follows
  process-global switches, so an evaluation could round differently while another thread computes a JVP.  Here
  the result does not depend on what other threads do;
* a merge that leaves the first stages untouched (attention-only and MLP-only task vectors never touch the patch
  embedding; MLP-only ones not block 0's attention either) can start from a cached θ0 activation
  (:meth:`StagedViT.first_stage`, used by :class:`arith.evaluate.Evaluator`).

Outputs match the module's to float32 rounding (relative differences ~1e-7, from a different but equivalent
order of operations); ``tests/test_fastforward.py`` checks them against ``functional_call``.  Encoders this does
not recognise (attentional pooling, layer scale, average pooling, ...) keep using the module: :func:`staged`
returns None for them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

P = "visual."


def _why_not(visual: nn.Module) -> str | None:
    """Why this visual tower is not the standard open_clip ViT this module implements (None: it is)."""
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    if not isinstance(visual, VisionTransformer):
        return f"{type(visual).__name__} is not an open_clip VisionTransformer"
    if visual.attn_pool is not None or visual.pool_type != "tok" or visual.final_ln_after_pool or visual.output_tokens:
        return "pooling other than the class token"
    if visual.proj is None or not isinstance(visual.ln_post, nn.LayerNorm):
        return "no final projection or layer norm"
    if not isinstance(visual.ln_pre, (nn.LayerNorm, nn.Identity)):
        return "unknown ln_pre"
    if any(True for _ in visual.buffers()):
        return "buffers"
    for blk in visual.transformer.resblocks:
        if not isinstance(blk, ResidualAttentionBlock) or hasattr(blk, "ln_1_kv"):
            return "non-standard residual block"
        if not (isinstance(blk.ls_1, nn.Identity) and isinstance(blk.ls_2, nn.Identity)):
            return "layer scale"
        a = blk.attn
        if (not isinstance(a, nn.MultiheadAttention) or not a._qkv_same_embed_dim or a.in_proj_bias is None
                or a.bias_k is not None or a.add_zero_attn or a.out_proj.bias is None):
            return "non-standard attention"
        if not (isinstance(blk.ln_1, nn.LayerNorm) and isinstance(blk.ln_2, nn.LayerNorm)):
            return "non-standard layer norms"
        mlp = blk.mlp
        if (not isinstance(mlp, nn.Sequential) or list(mlp._modules) != ["c_fc", "gelu", "c_proj"]
                or mlp.c_fc.bias is None or mlp.c_proj.bias is None):
            return "non-standard MLP"
    return None


class StagedViT:
    """The no-grad forward of one open_clip ViT as stages 0 … S-1; ``run(params, x, start)`` resumes at ``start``
    from the activation that enters it (stage 0 takes preprocessed images)."""

    def __init__(self, visual: nn.Module):
        self.v = visual
        self.blocks = list(visual.transformer.resblocks)
        self.width = int(visual.class_embedding.shape[-1])
        # stage names: "embed", then ("attn", i) and ("mlp", i) per block, then "post"
        self.names: list = ["embed"] + [(kind, i) for i in range(len(self.blocks)) for kind in ("attn", "mlp")] + ["post"]
        self._block_re = re.compile(r"visual\.transformer\.resblocks\.(\d+)\.(ln_1|attn|ln_2|mlp)\.")

    # -- which stage a parameter belongs to -------------------------------------------------------------------------
    def stage_of(self, key: str) -> int:
        m = self._block_re.match(key)
        if m:
            i, part = int(m.group(1)), m.group(2)
            return 1 + 2 * i + (0 if part in ("ln_1", "attn") else 1)
        if key.startswith(P + "ln_post.") or key == P + "proj":
            return len(self.names) - 1
        return 0  # conv1, class/positional embeddings, ln_pre and anything unknown: from the start

    def first_stage(self, keys: Iterable[str]) -> int:
        """The first stage whose output depends on any of ``keys`` (the number of stages when none does)."""
        return min((self.stage_of(k) for k in keys), default=len(self.names))

    # -- forward ----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, params: Mapping[str, torch.Tensor], x: torch.Tensor, start: int = 0, stop: int | None = None
            ) -> torch.Tensor:
        """Stages ``start`` … ``stop - 1`` (to the end by default) on ``x``: the features when run to the end."""
        stop = len(self.names) if stop is None else stop
        for s in range(start, stop):
            name = self.names[s]
            if name == "embed":
                x = self._embed(params, x)
            elif name == "post":
                x = self._post(params, x)
            else:
                kind, i = name
                last = i == len(self.blocks) - 1
                x = self._attn(params, i, x, cls_only=last) if kind == "attn" else self._mlp(params, i, x)
        return x

    def _embed(self, p, x):
        v = self.v
        x = F.conv2d(x, p[P + "conv1.weight"], p.get(P + "conv1.bias"), v.conv1.stride, v.conv1.padding,
                     v.conv1.dilation, v.conv1.groups)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = p[P + "class_embedding"].view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + p[P + "positional_embedding"].to(x.dtype)
        if isinstance(v.ln_pre, nn.LayerNorm):
            x = F.layer_norm(x, (self.width,), p[P + "ln_pre.weight"], p[P + "ln_pre.bias"], v.ln_pre.eps)
        return x

    def _attn(self, p, i: int, x, cls_only: bool):
        blk, b = self.blocks[i], f"{P}transformer.resblocks.{i}."
        n, length, e = x.shape
        heads = blk.attn.num_heads
        hd = e // heads
        y = F.layer_norm(x, (e,), p[b + "ln_1.weight"], p[b + "ln_1.bias"], blk.ln_1.eps)
        w, bias = p[b + "attn.in_proj_weight"], p[b + "attn.in_proj_bias"]
        if cls_only:  # only the class token leaves the encoder: queries (and everything after) for it alone
            q = F.linear(y[:, :1], w[:e], bias[:e])
            k, v = F.linear(y, w[e:], bias[e:]).split(e, dim=-1)
        else:
            q, k, v = F.linear(y, w, bias).split(e, dim=-1)
        lq = q.shape[1]
        q = q.reshape(n, lq, heads, hd).transpose(1, 2)
        k = k.reshape(n, length, heads, hd).transpose(1, 2)
        v = v.reshape(n, length, heads, hd).transpose(1, 2)
        a = torch.softmax((q * (1.0 / math.sqrt(hd))) @ k.transpose(-2, -1), dim=-1) @ v
        a = F.linear(a.transpose(1, 2).reshape(n, lq, e), p[b + "attn.out_proj.weight"], p[b + "attn.out_proj.bias"])
        return (x[:, :1] if cls_only else x) + a

    def _mlp(self, p, i: int, x):
        blk, b = self.blocks[i], f"{P}transformer.resblocks.{i}."
        y = F.layer_norm(x, (x.shape[-1],), p[b + "ln_2.weight"], p[b + "ln_2.bias"], blk.ln_2.eps)
        y = blk.mlp.gelu(F.linear(y, p[b + "mlp.c_fc.weight"], p[b + "mlp.c_fc.bias"]))
        return x + F.linear(y, p[b + "mlp.c_proj.weight"], p[b + "mlp.c_proj.bias"])

    def _post(self, p, x):
        x = x[:, 0]
        x = F.layer_norm(x, (x.shape[-1],), p[P + "ln_post.weight"], p[P + "ln_post.bias"], self.v.ln_post.eps)
        return x @ p[P + "proj"]


def staged(module: nn.Module) -> StagedViT | None:
    """The staged forward of an :class:`arith.models.ImageEncoder`, or None when its tower is not the standard ViT."""
    visual = getattr(module, "visual", None)
    if visual is None or _why_not(visual) is not None:
        return None
    return StagedViT(visual)
