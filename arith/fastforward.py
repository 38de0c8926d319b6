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
order of operations); ``tests/test_fastforward.py`` checks them against ``functional_call``.  The forward needs only
a :class:`ViTLayout` (widths, heads, patch, activation), read from the model config without importing open_clip, so
a bundle with an inline model config (the embedded default, every bundle built from ``--config``) loads and evaluates
without open_clip and torchvision (:class:`arith.models.Base` builds the module on first use); a named or tagged model
(``ViT-B-32`` / ``openai``) still imports open_clip for its config.  Encoders this does not recognise (attentional
pooling, layer scale, average pooling, ...) keep using the module: :meth:`ViTLayout.from_config` and :func:`staged`
return None for them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

P = "visual."


# open_clip's CLIPVisionCfg defaults for the fields a plain ViT reads (model.py); tests check them against open_clip.
VISION_DEFAULTS = {"layers": 12, "width": 768, "head_width": 64, "mlp_ratio": 4.0, "patch_size": 16, "image_size": 224}
# Fields that leave the encoder a plain class-token ViT at these values (None: any value), and the fields that only
# matter when a feature they belong to is switched on.  Any other field: not recognised, the module decides.
_PLAIN = {"ls_init_value": (None,), "attentional_pool": (False,), "no_ln_pre": None, "pos_embed_type": ("learnable",),
          "final_ln_after_pool": (False,), "pool_type": ("tok",), "output_tokens": (False,), "act_kwargs": (None,),
          "norm_kwargs": (None,), "block_type": (None, "default"), "qk_norm": (False,), "scaled_cosine_attn": (False,),
          "scale_heads": (False,), "scale_attn_inner": (False,), "scale_attn": (False,), "scale_fc": (False,),
          "timm_model_name": (None, ""), "patch_dropout": None}  # patch dropout: the identity in evaluation
_INERT = {"attn_pooler_queries", "attn_pooler_heads", "timm_model_pretrained", "timm_pool", "timm_proj",
          "timm_proj_bias", "timm_drop", "timm_drop_path"}


def _pair(v) -> tuple[int, int]:
    """An open_clip size (an int, or [height, width]) as a pair of positive ints; ValueError otherwise."""
    pair = (v, v) if isinstance(v, int) and not isinstance(v, bool) else tuple(v)
    if len(pair) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in pair):
        raise ValueError(f"not a size: {v!r}")
    return pair


@dataclass(frozen=True)
class ViTLayout:
    """Everything the staged forward needs to know about a standard open_clip ViT image encoder.

    Read either from an open_clip model config (:meth:`from_config`, no open_clip import: what lets a bundle with an
    inline config load and evaluate without importing open_clip and torchvision, about 2.5 s of the app's cold
    start) or from a built module (:meth:`from_module`).  Both say None for encoders outside this layout;
    ``tests/test_fastforward.py`` checks that they agree, and that :meth:`shapes` lists exactly the module's
    parameters.
    """

    width: int
    layers: int
    heads: int
    mlp_width: int
    patch: tuple[int, int]
    grid: tuple[int, int]
    embed_dim: int
    ln_pre: bool = True
    ln_eps: float = 1e-5
    quick_gelu: bool = False

    @classmethod
    def from_config(cls, cfg: Mapping) -> ViTLayout | None:
        """The layout of an open_clip model config (``embed_dim``, ``vision_cfg``, ``quick_gelu``), or None when the
        config asks for anything this layout does not cover (or is not understood)."""
        vc = cfg.get("vision_cfg")
        if not isinstance(vc, Mapping) or "embed_dim" not in cfg:
            return None
        for key, value in vc.items():
            if key in VISION_DEFAULTS or key in _INERT:
                continue
            if key not in _PLAIN or (_PLAIN[key] is not None and value not in _PLAIN[key]):
                return None
        v = {**VISION_DEFAULTS, **vc}
        try:
            if (not isinstance(v["layers"], int) or isinstance(v["layers"], bool) or v["layers"] < 1
                    or v["width"] % v["head_width"] or not 0 <= float(v.get("patch_dropout", 0.0)) < 1):
                return None  # what open_clip would refuse to build, or builds differently, is left to open_clip
            image, patch = _pair(v["image_size"]), _pair(v["patch_size"])
            return cls(width=int(v["width"]), layers=int(v["layers"]), heads=int(v["width"]) // int(v["head_width"]),
                       mlp_width=int(int(v["width"]) * float(v["mlp_ratio"])), patch=patch,
                       grid=(image[0] // patch[0], image[1] // patch[1]), embed_dim=int(cfg["embed_dim"]),
                       ln_pre=not v.get("no_ln_pre", False), quick_gelu=bool(cfg.get("quick_gelu", False)))
        except (TypeError, ValueError, IndexError, ZeroDivisionError):
            return None

    @classmethod
    def from_module(cls, visual: nn.Module) -> ViTLayout | None:
        """The layout of a built open_clip visual tower, or None (:func:`why_not` says why)."""
        if why_not(visual) is not None:
            return None
        blk = visual.transformer.resblocks[0]
        norms = [m for m in visual.modules() if isinstance(m, nn.LayerNorm)]
        return cls(width=int(visual.class_embedding.shape[-1]), layers=len(visual.transformer.resblocks),
                   heads=blk.attn.num_heads, mlp_width=blk.mlp.c_fc.out_features, patch=tuple(visual.conv1.kernel_size),
                   grid=tuple(visual.grid_size), embed_dim=int(visual.proj.shape[1]),
                   ln_pre=isinstance(visual.ln_pre, nn.LayerNorm), ln_eps=norms[0].eps,
                   quick_gelu=not isinstance(blk.mlp.gelu, nn.GELU))

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The encoder's parameter names (``visual.`` prefix) and shapes, in the module's order."""
        w, m = self.width, self.mlp_width
        out = {P + "class_embedding": (w,), P + "positional_embedding": (self.grid[0] * self.grid[1] + 1, w),
               P + "proj": (w, self.embed_dim), P + "conv1.weight": (w, 3, *self.patch)}
        if self.ln_pre:
            out |= {P + "ln_pre.weight": (w,), P + "ln_pre.bias": (w,)}
        for i in range(self.layers):
            b = f"{P}transformer.resblocks.{i}."
            out |= {b + "ln_1.weight": (w,), b + "ln_1.bias": (w,), b + "attn.in_proj_weight": (3 * w, w),
                    b + "attn.in_proj_bias": (3 * w,), b + "attn.out_proj.weight": (w, w), b + "attn.out_proj.bias": (w,),
                    b + "ln_2.weight": (w,), b + "ln_2.bias": (w,), b + "mlp.c_fc.weight": (m, w),
                    b + "mlp.c_fc.bias": (m,), b + "mlp.c_proj.weight": (w, m), b + "mlp.c_proj.bias": (w,)}
        return out | {P + "ln_post.weight": (w,), P + "ln_post.bias": (w,)}


def why_not(visual: nn.Module) -> str | None:
    """Why this visual tower is not the standard open_clip ViT this module implements (None: it is)."""
    from open_clip.transformer import QuickGELU, ResidualAttentionBlock, VisionTransformer

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
    if len(visual.transformer.resblocks) == 0:
        return "no blocks"
    c = visual.conv1
    if c.stride != c.kernel_size or c.padding != (0, 0) or c.dilation != (1, 1) or c.groups != 1 or c.bias is not None:
        return "non-standard patch embedding"
    if len({m.eps for m in visual.modules() if isinstance(m, nn.LayerNorm)}) != 1:
        return "layer norms with different eps"
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
        if not (type(mlp.gelu) is QuickGELU or (type(mlp.gelu) is nn.GELU and mlp.gelu.approximate == "none")):
            return "activation other than GELU or QuickGELU"
        if a.num_heads != visual.transformer.resblocks[0].attn.num_heads:
            return "blocks with different numbers of heads"
    return None


class StagedViT:
    """The no-grad forward of one standard ViT (a :class:`ViTLayout`) as stages 0 … S-1; ``run(params, x, start)``
    resumes at ``start`` from the activation that enters it (stage 0 takes preprocessed images)."""

    def __init__(self, layout: ViTLayout):
        self.layout = layout
        self.width = layout.width
        # stage names: "embed", then ("attn", i) and ("mlp", i) per block, then "post"
        self.names: list = ["embed"] + [(kind, i) for i in range(layout.layers) for kind in ("attn", "mlp")] + ["post"]
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
                last = i == self.layout.layers - 1
                x = self._attn(params, i, x, cls_only=last) if kind == "attn" else self._mlp(params, i, x)
        return x

    def _embed(self, p, x):
        lay = self.layout
        x = F.conv2d(x, p[P + "conv1.weight"], None, lay.patch)  # stride = kernel = patch, no padding, no bias
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = p[P + "class_embedding"].view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + p[P + "positional_embedding"].to(x.dtype)
        if lay.ln_pre:
            x = F.layer_norm(x, (self.width,), p[P + "ln_pre.weight"], p[P + "ln_pre.bias"], lay.ln_eps)
        return x

    def _attn(self, p, i: int, x, cls_only: bool):
        b = f"{P}transformer.resblocks.{i}."
        n, length, e = x.shape
        heads = self.layout.heads
        hd = e // heads
        y = F.layer_norm(x, (e,), p[b + "ln_1.weight"], p[b + "ln_1.bias"], self.layout.ln_eps)
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
        b = f"{P}transformer.resblocks.{i}."
        y = F.layer_norm(x, (x.shape[-1],), p[b + "ln_2.weight"], p[b + "ln_2.bias"], self.layout.ln_eps)
        y = F.linear(y, p[b + "mlp.c_fc.weight"], p[b + "mlp.c_fc.bias"])
        # open_clip's QuickGELU is x * sigmoid(1.702 x); nn.GELU() the exact (erf) GELU
        y = y * torch.sigmoid(1.702 * y) if self.layout.quick_gelu else F.gelu(y)
        return x + F.linear(y, p[b + "mlp.c_proj.weight"], p[b + "mlp.c_proj.bias"])

    def _post(self, p, x):
        x = x[:, 0]
        x = F.layer_norm(x, (x.shape[-1],), p[P + "ln_post.weight"], p[P + "ln_post.bias"], self.layout.ln_eps)
        return x @ p[P + "proj"]


def staged(module: nn.Module) -> StagedViT | None:
    """The staged forward of an :class:`arith.models.ImageEncoder`, or None when its tower is not the standard ViT."""
    visual = getattr(module, "visual", None)
    layout = None if visual is None else ViTLayout.from_module(visual)
    return None if layout is None else StagedViT(layout)
