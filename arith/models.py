"""Image encoders: open_clip models by name or inline config, with parameters passed in from outside.

The engine never edits a module's weights.  A :class:`Base` holds θ0 as a read-only dict of tensors and runs the
encoder with ``torch.func.functional_call``, so a merged model is just another dict of tensors (method.md §1).
Keys are open_clip state-dict names of the full CLIP model (``visual.transformer.resblocks.0.attn.in_proj_weight``)
so task vectors apply to an open_clip checkpoint unchanged.
"""

from __future__ import annotations

import copy
import hashlib
import threading
import weakref
from collections.abc import Mapping
from functools import cached_property

import torch
from torch import nn
from torch.func import functional_call

from .fastforward import StagedViT, ViTLayout, staged
from .specs import ModelSpec

PREFIX = "visual."
# open_clip.constants.OPENAI_DATASET_MEAN / _STD (tests check they still agree): kept here so that loading a bundle
# with an inline config never imports open_clip (and torchvision with it), a third of the app's cold start.
OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)


def _pretrained_cfg(spec: ModelSpec) -> dict:
    """open_clip's pretrained config of a tagged spec ({} when the spec names no tag)."""
    if not (spec.name and spec.pretrained):
        return {}
    from open_clip.pretrained import get_pretrained_cfg

    return get_pretrained_cfg(spec.name, spec.pretrained) or {}


def _is_tag(spec: ModelSpec) -> bool:
    return bool(_pretrained_cfg(spec))


def model_config(spec: ModelSpec) -> dict:
    """The open_clip model config for ``spec`` (a deep copy), with ``quick_gelu`` resolved.

    OpenAI weights were trained with QuickGELU; open_clip only *warns* when a plain ``ViT-B-32`` config is paired
    with them, which silently degrades accuracy.  Here the tag decides unless ``spec.quick_gelu`` overrides it.
    """
    if spec.config is not None:
        cfg = copy.deepcopy(dict(spec.config))
    else:
        import open_clip

        cfg = open_clip.get_model_config(spec.name)
        if cfg is None:
            raise ValueError(f"unknown open_clip model {spec.name!r}; see open_clip.list_models()")
        cfg = copy.deepcopy(cfg)
    if "vision_cfg" not in cfg or "embed_dim" not in cfg:
        raise ValueError("model config needs 'embed_dim' and 'vision_cfg' (open_clip model-config format)")
    quick = spec.quick_gelu
    if quick is None and _is_tag(spec):
        quick = bool(_pretrained_cfg(spec).get("quick_gelu", False))
    if quick is not None:
        cfg["quick_gelu"] = quick
    return cfg


def preprocess_stats(spec: ModelSpec) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std used to normalise images for this encoder (open_clip's, OpenAI's by default)."""
    pcfg = _pretrained_cfg(spec)
    if pcfg:
        return tuple(pcfg.get("mean", OPENAI_DATASET_MEAN)), tuple(pcfg.get("std", OPENAI_DATASET_STD))
    pp = (spec.config or {}).get("preprocess_cfg", {})
    return tuple(pp.get("mean", OPENAI_DATASET_MEAN)), tuple(pp.get("std", OPENAI_DATASET_STD))


class ImageEncoder(nn.Module):
    """Wraps an open_clip visual tower so parameter names carry CLIP's ``visual.`` prefix."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)


def build_visual(spec: ModelSpec, device: str | torch.device = "cpu") -> ImageEncoder:
    """Build the image encoder architecture with random weights (``device="meta"`` allocates nothing)."""
    from open_clip.model import _build_vision_tower

    cfg = model_config(spec)
    with torch.device(device):
        visual = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=cfg.get("quick_gelu", False))
    return ImageEncoder(visual).eval()


def build_clip(spec: ModelSpec, load_weights: bool = True, device: str = "cpu", cache_dir: str | None = None):
    """The whole open_clip CLIP model (text tower included) for ``spec``.

    Named models go through ``open_clip.create_model`` (which downloads tagged weights into open_clip's cache, or
    reads a checkpoint path); inline configs are instantiated directly (random weights).
    """
    import open_clip

    cfg = model_config(spec)
    if spec.name is not None:
        model = open_clip.create_model(
            spec.name,
            pretrained=spec.pretrained if load_weights else None,
            force_quick_gelu=bool(cfg.get("quick_gelu", False)),
            device=device,
            cache_dir=cache_dir,
        )
    else:
        if "text_cfg" not in cfg:
            raise ValueError("this inline config has no text tower ('text_cfg'); use build_visual")
        cfg.pop("preprocess_cfg", None)
        with torch.device(device):
            model = open_clip.model.CLIP(**cfg)
    return model.eval()


def count_parameters(spec: ModelSpec, mode: str) -> dict[str, int]:
    """Trainable and total image-encoder parameter counts of ``mode``, computed on the meta device (no weights)."""
    from .modes import get_mode

    enc = build_visual(spec, device="meta")
    m = get_mode(mode)
    total = trainable = 0
    for key, p in enc.named_parameters():
        total += p.numel()
        trainable += p.numel() if m.trains(key) else 0
    return {"trainable": trainable, "total": total}


def fingerprint(tensors: Mapping[str, torch.Tensor], length: int = 16) -> str:
    """sha256 over key names, shapes, dtypes and bytes: identifies a set of base weights."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:length]


def _guard(base: Base, module: nn.Module) -> None:
    """Make ``load_state_dict`` on θ0's own module refuse: it would write into θ0 (its parameters are θ0's tensors).
    A deep copy of the module (its own tensors) takes the hook along and may load: the hook asks whether the module
    is still the one ``base`` holds."""
    owner = weakref.ref(base)

    def refuse(mod, *args, **kwargs):
        b = owner()
        if b is not None and mod is b._module:
            raise RuntimeError("this encoder holds θ0's own tensors (Base.module), which every evaluation shares: "
                               "loading weights into it would change θ0. Use base.encoder(weights) for an encoder "
                               "of your own")

    module.register_load_state_dict_pre_hook(refuse)


class Base:
    """θ0: a frozen image encoder plus how to feed it images.

    ``params`` is a read-only mapping of detached fp32 tensors; nothing in the engine writes to it.  Call
    :meth:`features` with any parameter dict of the same keys (θ0, a merged model, a fine-tuning step).

    Built from an encoder module, or (:meth:`from_state_dict`) from tensors alone when the config is a standard ViT
    (:class:`arith.fastforward.ViTLayout`): the open_clip module is then built on first use of :attr:`module`
    (fine-tuning, JVPs), sharing θ0's storage, and evaluation never needs it.
    """

    def __init__(self, spec: ModelSpec, encoder: ImageEncoder | None, base_id: str | None = None, *,
                 params: Mapping[str, torch.Tensor] | None = None):
        if (encoder is None) == (params is None):
            raise TypeError("Base needs exactly one of an encoder module or params")
        self.spec = spec
        self._lock = threading.Lock()
        if encoder is not None:
            self._module: ImageEncoder | None = encoder.eval().requires_grad_(False)
            _guard(self, encoder)  # θ0 below is its parameters, not copies
            self.params: dict[str, torch.Tensor] = {k: p.detach() for k, p in encoder.named_parameters()}
            self.buffers: dict[str, torch.Tensor] = {k: b for k, b in encoder.named_buffers()}
        else:
            self._layout = ViTLayout.from_config(model_config(spec))
            if self._layout is None:
                raise ValueError(f"{spec.label}: θ0 from tensors alone needs a standard ViT config; "
                                 "use Base.from_state_dict")
            self._module = None
            self.params = {k: t.detach() for k, t in params.items()}
            self.buffers = {}  # a standard ViT has none (ViTLayout)
        mean, std = preprocess_stats(spec)
        device = next(iter(self.params.values())).device
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.image_size = model_config(spec)["vision_cfg"].get("image_size", 224)
        self.id = base_id or self.default_id()

    @property
    def module(self) -> ImageEncoder:
        """The open_clip encoder holding θ0 (built on first use when this Base was made from tensors alone)."""
        if self._module is None:
            with self._lock:
                if self._module is None:
                    enc = build_visual(self.spec, device="meta")
                    # the module's parameters wrap θ0's own tensors (no copy), frozen as they are created
                    for key, t in self.params.items():
                        owner, _, leaf = key.rpartition(".")
                        setattr(enc.get_submodule(owner), leaf, nn.Parameter(t, requires_grad=False))
                    try:  # inside a torch.func transform the new parameters would be wrapped, and leak out of it
                        _ = [p.data_ptr() for p in enc.parameters()]
                    except RuntimeError as e:
                        raise RuntimeError("Base.module was first used inside a torch.func transform; touch it "
                                           "before the transform (see arith.linearize.jvp_features)") from e
                    left = [k for k, p in enc.named_parameters() if p.is_meta] + [k for k, _ in enc.named_buffers()]
                    if left:
                        raise RuntimeError(f"{self.spec.label}: encoder tensors its layout did not expect: {left[:5]}")
                    self._module = enc.eval()
                    _guard(self, enc)
        return self._module

    def encoder(self, weights: Mapping[str, torch.Tensor] | None = None) -> ImageEncoder:
        """An open_clip encoder of one's own: θ0, or θ0 with ``weights`` in place of its tensors (a merge's output,
        :func:`arith.merge.merge`), in copies on θ0's device.  Training it, loading into it or exporting it never
        touches θ0, which :attr:`module` holds and every evaluation shares."""
        state = {**self.params, **self.buffers}
        if weights is not None:
            unknown = sorted(set(weights) - set(state))
            if unknown:
                raise ValueError(f"{unknown[0]}: not a tensor of {self.spec.label} ({len(unknown)} unknown key(s))")
            wrong = [k for k, t in weights.items() if tuple(t.shape) != tuple(state[k].shape)]
            if wrong:
                raise ValueError(f"{wrong[0]}: shape {tuple(weights[wrong[0]].shape)}, θ0 has {tuple(state[wrong[0]].shape)}")
            state.update(weights)
        enc = build_visual(self.spec, device="meta")
        wanted = enc.state_dict().keys()
        enc.load_state_dict({k: state[k].detach().to(self.device, torch.float32 if state[k].is_floating_point()
                                                     else state[k].dtype).clone() for k in wanted},
                            strict=True, assign=True)
        left = [k for k, t in [*enc.named_parameters(), *enc.named_buffers()] if t.is_meta]
        if left:
            raise RuntimeError(f"{self.spec.label}: encoder tensors θ0 does not hold: {left[:5]}")
        return enc.eval()

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: ModelSpec, load_weights: bool = True, device: str = "cpu",
                  cache_dir: str | None = None) -> Base:
        """Build θ0 from a spec: downloads/loads tagged weights for named models, random init otherwise."""
        if spec.name is not None and spec.pretrained and load_weights:
            clip = build_clip(spec, load_weights=True, device=device, cache_dir=cache_dir)
            return cls(spec, ImageEncoder(clip.visual))
        return cls(spec, build_visual(spec, device=device))

    @classmethod
    def from_state_dict(cls, spec: ModelSpec, state: Mapping[str, torch.Tensor], base_id: str | None = None,
                        device: str = "cpu") -> Base:
        """θ0 from ``visual.*`` tensors (a bundle's base file); every architecture key must be present.  The
        tensors are copied (as fp32 on ``device``); ``state`` is not kept."""
        layout = ViTLayout.from_config(model_config(spec))
        if layout is not None:
            expected = layout.shapes()
        else:
            enc = build_visual(spec, device="meta")
            expected = {k: tuple(p.shape) for k, p in enc.named_parameters()}
        missing = sorted(set(expected) - set(state))
        extra = sorted(k for k in set(state) - set(expected) if k.startswith(PREFIX))
        if missing or extra:
            raise ValueError(f"base weights do not match {spec.label}: missing {missing[:5]}, unexpected {extra[:5]}")
        for key, shape in expected.items():
            if tuple(state[key].shape) != shape:
                raise ValueError(f"base weight {key}: shape {tuple(state[key].shape)}, model expects {shape}")
        if layout is not None:
            params = {k: state[k].detach().to(device=device, dtype=torch.float32, copy=True) for k in expected}
            return cls(spec, None, base_id=base_id, params=params)
        enc = enc.to_empty(device=device)
        enc.load_state_dict({k: state[k] for k in expected}, strict=True)
        return cls(spec, enc, base_id=base_id)

    def __repr__(self) -> str:
        n = sum(t.numel() for t in self.params.values())
        return f"Base({self.spec.label}, id {self.id!r}, {len(self.params)} tensors, {n:,} parameters on {self.device})"

    def default_id(self) -> str:
        """``open_clip:<name>:<tag>`` for tagged weights, else the spec label plus a fingerprint of θ0."""
        if _is_tag(self.spec):
            return f"open_clip:{self.spec.name}:{self.spec.pretrained}"
        return f"{self.spec.label}#{fingerprint(self.params)}"

    # -- shapes and keys ------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where θ0's tensors are."""
        return self.mean.device

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """θ0's tensor shapes by open_clip key (what a task vector is checked against)."""
        return {k: tuple(v.shape) for k, v in self.params.items()}

    @property
    def embed_dim(self) -> int:
        return int(model_config(self.spec)["embed_dim"])

    def to(self, device: str | torch.device) -> Base:
        """A copy of θ0 on ``device`` (the original is untouched)."""
        if self._module is None:
            return Base(self.spec, None, base_id=self.id, params={k: v.to(device, copy=True) for k, v in self.params.items()})
        enc = copy.deepcopy(self._module).to(device)
        return Base(self.spec, enc, base_id=self.id)

    # -- forward ------------------------------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N,3,H,W] (or float in [0,1]) -> normalised float on the encoder's device.

        Images of another size are cropped to a centred square of their shorter side, then resized (bilinear,
        antialiased) to the encoder's size: close to open_clip's evaluation geometry (resize, then centre-crop), and
        never a stretch of a non-square image.  The data loaders already deliver the encoder's size."""
        x = images.to(self.device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if x.shape[-1] != x.shape[-2]:
            from torchvision.transforms.functional import center_crop

            x = center_crop(x, [min(x.shape[-2:])] * 2)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = torch.nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                                antialias=True, align_corners=False)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def encode(self, images: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None,
               batch_size: int = 512) -> torch.Tensor:
        """Features of uint8 images in batches (no gradients): preprocessing plus :meth:`features`."""
        return torch.cat([self.features(params, self.preprocess(images[i:i + batch_size]))
                          for i in range(0, len(images), batch_size)])

    def features(self, params: Mapping[str, torch.Tensor] | None, x: torch.Tensor) -> torch.Tensor:
        """Encoder output (CLIP image embedding, unnormalised) for preprocessed images under ``params``."""
        p = self.params if params is None else params
        return functional_call(self.module, ({**p, **self.buffers} if self.buffers else p), (x,))

    @cached_property
    def staged(self):
        """The staged no-grad forward of this encoder (:mod:`arith.fastforward`), or None when the encoder is not
        the standard open_clip ViT (evaluation then uses :meth:`features`)."""
        if self._module is None:  # built from tensors: from_state_dict checked them against this layout
            return StagedViT(self._layout)
        return staged(self._module)

    @torch.no_grad()
    def eval_features(self, params: Mapping[str, torch.Tensor] | None, x: torch.Tensor, start: int = 0,
                      stop: int | None = None) -> torch.Tensor:
        """:meth:`features` without gradients, through the staged forward when there is one.  ``start``/``stop``
        run only those stages (``x`` is then the activation entering ``start``); they need :attr:`staged`."""
        p = self.params if params is None else params
        if len(p) != len(self.params):  # a partial dict: θ0 for the keys it lacks (as functional_call does)
            p = {**self.params, **p}
        if self.staged is None:
            if start or stop is not None:
                raise ValueError(f"{self.spec.label}: no staged forward to start or stop part-way")
            return self.features(p, x)
        return self.staged.run(p, x, start, stop)
