"""Importing checkpoints made elsewhere as our task-vector files (``python -m arith import``).

Two inputs are understood, both read with ``torch.load(..., weights_only=True)`` (or as safetensors), never
unpickled as objects:

* a pair of state dicts, pre-trained θ0 and fine-tuned θ_t (open_clip CLIP state dicts, an open_clip training
  checkpoint ``{"state_dict": ...}``, or a visual tower alone; wrapper prefixes such as ``module.``, ``model.``,
  ``image_encoder.`` and ``_orig_mod.`` are stripped): τ = θ_t − θ0 on the image encoder, in fp32.  The mode is
  the smallest one that trains every changed tensor (``attn``, ``attn_bias``, ``mlp``, else ``full``) unless
  ``--mode`` says otherwise, and then every changed tensor must be one the mode trains;
* a linearized checkpoint of the tangent-space repository (Ortiz-Jimenez et al.; ``LinearizedImageEncoder.save``
  writes ``{"model.params0.<i>": θ0 tensors, "model.params.<i>": θ tensors, "model_name": str}`` in the order of
  the encoder's parameters): τ = params − params0 on the visual tower, mode ``linear``.  The list positions are
  matched to open_clip names by the sequence of shapes (then by value against θ0), and params0 must equal the
  base's θ0.

Released checkpoints of the task-vectors and tangent-space papers' *non-linear* models are whole pickled modules;
they fail under ``weights_only=True`` and get a message pointing at the README's one-off offline recipe (unpickle
in a throwaway environment with the old open_clip, save ``state_dict()``, import that).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch

from .cli import _config_arg, _emit, arguments, command
from .modes import MODES, get_mode
from .specs import Meta
from .taskvec import FAR, TaskVector, as_base, check_output_path, validate

WRAPPERS = ("module.", "_orig_mod.", "model.", "image_encoder.")
NESTS = ("state_dict", "model", "module")  # {"state_dict": sd} (open_clip, Lightning), {"model": sd} (timm, DeiT)
RECIPE = ("it is probably a whole pickled module (the task-vectors / tangent-space release format), which is never "
          "unpickled here; convert it once offline to a state dict (README, 'Importing checkpoints')")
ZIP = b"PK\x03\x04"  # what torch.save writes
TEXT_KEYS = ("token_embedding.", "ln_final.", "text_projection")  # a CLIP text tower's own (open_clip names)


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint's mapping (tensors and plain values), read without unpickling arbitrary objects: safetensors, or
    ``torch.load(weights_only=True)`` (a torch.save zip is read so whatever its name).  Errors name the file."""
    from .safefile import SafetensorsError, load_safetensors

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if path.suffix == ".safetensors" and head != ZIP:
        try:
            return load_safetensors(path, max_bytes=8 * 2**30)[0]
        except SafetensorsError as e:
            raise ValueError(f"{path.name}: {e}") from None
    try:
        with open(path, "rb") as fh:  # a file object: torch.load reads a path's suffix (.safetensors) otherwise
            obj = torch.load(fh, map_location="cpu", weights_only=True)
    except Exception as e:
        if head != ZIP:
            try:  # a safetensors file under another name
                return load_safetensors(path, max_bytes=8 * 2**30)[0]
            except SafetensorsError:
                pass
        raise ValueError(f"{path.name}: {_load_error(e)}") from None
    return _unwrap(obj, path.name)


def _load_error(e: Exception) -> str:
    """What torch.load's refusal means: an object weights_only will not unpickle (naming the class or function it
    asks for), or a file that is not a readable checkpoint at all (truncated, damaged, another format)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # torch's message carries terminal colour codes
    if "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        held = f" (it asks for {found.group(1)})" if found else ""
        return f"torch.load(weights_only=True) refused to unpickle it{held}; {RECIPE}"
    first = (text.strip().splitlines() or [type(e).__name__])[0][:160] or type(e).__name__
    return f"not a checkpoint torch can read ({first}); is it truncated or damaged?"


def _unwrap(obj, name: str) -> dict:
    """The state dict inside ``{"state_dict": ...}`` or ``{"model": ...}`` wrappers (a state dict's own values are
    tensors, never mappings)."""
    while isinstance(obj, Mapping) and (nest := next((n for n in NESTS if isinstance(obj.get(n), Mapping) and obj[n]),
                                                     None)):
        obj = obj[nest]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{name}: holds a {type(obj).__name__}, not a state dict")
    return dict(obj)


def _tensors(sd: Mapping) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if isinstance(k, str) and torch.is_tensor(v)}


def split_state(sd: Mapping) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(image-encoder tensors under open_clip names ``visual.…``, every other tensor: text tower, heads).  Wrapper
    prefixes shared by every key are stripped; the image encoder is also found under a prefix of its own when other
    keys lack it (``image_encoder.model.visual.…`` beside ``classification_head.…``)."""
    tensors = _tensors(sd)
    changed = True
    while changed and tensors:
        changed = False
        for w in WRAPPERS:
            if all(k.startswith(w) for k in tensors):
                tensors = {k[len(w):]: v for k, v in tensors.items()}
                changed = True
    prefix = ""
    if not any(k.startswith("visual.") for k in tensors):
        nested = Counter(k[:k.index(".visual.") + 1] for k in tensors if ".visual." in k)
        text = sorted(k for k in tensors if k.startswith(TEXT_KEYS))
        if not nested and text:
            raise ValueError(f"no image-encoder tensors: the checkpoint holds a text tower ({', '.join(text[:3])}, …)")
        if not nested:  # a visual tower saved on its own
            return {f"visual.{k}": v for k, v in tensors.items()}, {}
        if len(nested) > 1:
            raise ValueError(f"the checkpoint holds {len(nested)} image encoders ({', '.join(f'{p}visual.…' for p in nested)}):"
                             " save the one to import on its own")
        prefix = next(iter(nested))
    mine = {k: v for k, v in tensors.items() if k.startswith(prefix + "visual.")}
    return {k[len(prefix):]: v for k, v in mine.items()}, {k: v for k, v in tensors.items() if k not in mine}


def visual_state(sd: Mapping) -> dict[str, torch.Tensor]:
    """The image-encoder tensors of a state dict under open_clip names (``visual.…``): :func:`split_state`'s first."""
    return split_state(sd)[0]


def _indexed(sd: Mapping, name: str) -> list[torch.Tensor]:
    pat = re.compile(rf"^(?:.*\.)?{name}\.(\d+)$")
    items = sorted((int(m.group(1)), v) for k, v in _tensors(sd).items() if (m := pat.match(k)))
    if [i for i, _ in items] != list(range(len(items))):
        raise ValueError(f"linearized checkpoint: {name}.<i> indices are not 0..{len(items) - 1}")
    return [v for _, v in items]


def is_linearized(sd: Mapping) -> bool:
    return any(re.match(r"^(?:.*\.)?params0\.\d+$", k) for k in sd if isinstance(k, str))


def _norm(tensors) -> float:
    return float(sum(t.double().pow(2).sum() for t in tensors)) ** 0.5


def _coarser(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """The coarser of two float dtypes (the larger machine epsilon): where two copies of one weight can be compared."""
    return max((a, b), key=lambda d: torch.finfo(d).eps)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same weights: in fp32 to 1e-5; an fp16 or bf16 copy of θ0 is θ0 rounded to it, exactly (a tolerance of
    that precision's rounding would also pass fine-tuned weights, whose changes are smaller)."""
    if torch.finfo(_coarser(a.dtype, b.dtype)).eps > torch.finfo(torch.float32).eps:
        return _same(a, b.to(a.device))
    return a.shape == b.shape and torch.allclose(a.float(), b.float().to(a.device), rtol=1e-5, atol=1e-6)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal at the coarser precision of the two (any dtypes; an integer tensor by value)."""
    if a.shape != b.shape:
        return False
    if a.is_floating_point() and b.is_floating_point():
        common = _coarser(a.dtype, b.dtype)
        return torch.equal(a.to(common), b.to(common))
    return torch.equal(a, b.to(a.dtype))


def _check_floats(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Weights are real floating-point tensors: an integer, bool or complex one is refused by name (casting it would
    import something else than what was trained)."""
    bad = sorted(k for k, v in tensors.items() if not v.is_floating_point())
    if bad:
        raise ValueError(f"{bad[0]}: {tensors[bad[0]].dtype} in the {what}; weights must be floating point "
                         f"({len(bad)} such tensor(s))")


def _map_positions(params0: list[torch.Tensor], params: list[torch.Tensor],
                   theta0: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """open_clip key -> list position of the visual tower's tensors in a linearized checkpoint."""
    keys = list(theta0)
    shapes = [tuple(theta0[k].shape) for k in keys]
    n = len(keys)
    offsets = [o for o in range(len(params0) - n + 1)
               if all(tuple(params0[o + i].shape) == shapes[i] for i in range(n))]
    for o in offsets:  # a contiguous run with the visual tower's shapes, in order, whose values are θ0
        if all(_close(params0[o + i], theta0[k]) for i, k in enumerate(keys)):
            return {k: o + i for i, k in enumerate(keys)}
    used: set[int] = set()
    mapping = {}
    for k in keys:  # another parameter order: match each tensor by its value in θ0
        hits = [i for i, p in enumerate(params0) if i not in used and _close(p, theta0[k])]
        if not hits:
            raise ValueError(f"linearized checkpoint: no params0 tensor equals the base's {k} "
                             f"{tuple(theta0[k].shape)}; it was linearized around other weights than this base")
        if any(not torch.equal(params[i], params[hits[0]]) for i in hits[1:]):
            raise ValueError(f"linearized checkpoint: {k} matches several params0 tensors that were fine-tuned "
                             "differently; the parameter order cannot be recovered")
        used.add(hits[0])
        mapping[k] = hits[0]
    return mapping


def linearized_vector(sd: Mapping, theta0: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """τ = params − params0 of a tangent-space ``LinearizedImageEncoder`` state dict, under open_clip names."""
    p0, p = _indexed(sd, "params0"), _indexed(sd, "params")
    if len(p0) != len(p) or not p0:
        raise ValueError(f"linearized checkpoint: {len(p0)} params0 but {len(p)} params tensors")
    _check_floats({f"params0.{i}": t for i, t in enumerate(p0)} | {f"params.{i}": t for i, t in enumerate(p)},
                  "linearized checkpoint")
    for i, (a, b) in enumerate(zip(p0, p)):
        if a.shape != b.shape:
            raise ValueError(f"linearized checkpoint: params.{i} has shape {tuple(b.shape)}, params0.{i} {tuple(a.shape)}")
    mapping = _map_positions(p0, p, theta0)
    return {k: p[i].float() - p0[i].float() for k, i in mapping.items()}


def pair_vector(finetuned: Mapping[str, torch.Tensor], pretrained: Mapping[str, torch.Tensor],
                shapes: Mapping[str, tuple]) -> dict[str, torch.Tensor]:
    """θ_t − θ0 over the base's keys, fp32; missing, extra and non-float keys and shape mismatches are refused by
    name.  A tensor counts as changed when the two differ at the coarser precision of the two: an fp16 or bf16
    checkpoint's untouched tensors are θ0 rounded, not fine-tuning, and give exact zeros."""
    out = {}
    for what, sd in (("fine-tuned", finetuned), ("pre-trained", pretrained)):
        if sd and not any(k in sd for k in shapes):
            raise ValueError(f"the {what} checkpoint holds none of the base's image-encoder tensors (it has e.g. "
                             f"{', '.join(sorted(sd)[:3])}); is it an open_clip model of this architecture?")
        extra = sorted(k for k in sd if k not in shapes)
        if extra:
            raise ValueError(f"{extra[0]}: in the {what} checkpoint but not in the base's image encoder "
                             f"({len(extra)} such tensor(s)); the checkpoint is of another architecture")
        _check_floats({k: v for k, v in sd.items() if k in shapes}, f"{what} checkpoint")
    for k, shape in shapes.items():
        for what, sd in (("fine-tuned", finetuned), ("pre-trained", pretrained)):
            if k not in sd:
                raise ValueError(f"{k}: missing from the {what} checkpoint")
            if tuple(sd[k].shape) != tuple(shape):
                raise ValueError(f"{k}: shape {tuple(sd[k].shape)} in the {what} checkpoint, the base has {tuple(shape)}")
        ft, pre = finetuned[k], pretrained[k]
        out[k] = torch.zeros(shape) if _same(ft, pre) else ft.float() - pre.float()
    return out


def choose_mode(delta: Mapping[str, torch.Tensor], mode: str | None) -> tuple[str, list[str]]:
    """The mode of a state-dict-pair vector and the keys that changed; refuses a ``mode`` that would drop a change."""
    changed = [k for k, d in delta.items() if bool((d != 0).any())]
    if mode in (None, "auto"):  # the narrowest registered mode (fewest trained entries) that trains every change
        fits = [m for m in MODES.values() if not m.linearized and all(m.trains(k) for k in changed)]
        if fits:
            return min(fits, key=lambda m: sum(d.numel() for k, d in delta.items() if m.trains(k))).name, changed
    m = get_mode(mode)
    if m.linearized:
        raise ValueError(f"mode {mode!r}: linearized vectors come from linearized checkpoints (params0/params), not "
                         "from a pair of ordinary state dicts")
    outside = [k for k in changed if not m.trains(k)]
    if outside:
        raise ValueError(f"{outside[0]}: changed by fine-tuning but mode {m.name!r} does not train it "
                         f"({len(outside)} such tensor(s)); import it as mode auto (or full)")
    return m.name, changed


def check_weights_metadata(meta: Mapping[str, str]) -> None:
    """A safetensors file offered as fine-tuned weights θ_t: refuses one whose metadata says it is a task vector, and
    merged weights of a linearized mode (the evaluated model is the linear one at them, so θ_t − θ0 would be another
    vector).  Merged weights of another mode, and files without this library's metadata, pass."""
    from .export import MERGED_KIND

    if meta.get(Meta.KIND) == MERGED_KIND and meta.get("arith.linearized") == "true":
        raise ValueError("merged weights of a linearized mode: the app evaluated the linear model at them, not these "
                         "weights in the ordinary encoder, so their τ would be another vector")
    if Meta.FORMAT in meta and meta.get(Meta.KIND) != MERGED_KIND:
        raise ValueError("a task vector (its metadata says so), not fine-tuned weights: load it as a task vector")


def from_state_dicts(base, finetuned: Mapping, *, task: str, mode: str | None = None,
                     pretrained: Mapping | None = None) -> TaskVector:
    """A validated task vector τ = θ_t − θ0 for ``base`` from in-memory state dicts: ``finetuned`` (a CLIP model's
    or its visual tower's; ``module.``/``model.``/``image_encoder.`` prefixes and ``{"state_dict": ...}`` are fine, as
    is a tangent-space linearized one) against ``pretrained`` (default: θ0 itself, which it must then equal).
    ``mode`` None or ``"auto"``: the narrowest mode that trains every tensor that changed (attn, mlp, full, or a
    mode registered since)."""
    return import_state_dicts(base, finetuned, task=task, mode=mode, pretrained=pretrained)[0]


def import_state_dicts(base, finetuned: Mapping, *, task: str, mode: str | None = None,
                       pretrained: Mapping | None = None) -> tuple[TaskVector, dict]:
    """:func:`from_state_dicts` with its report: ``mode``, ``changed`` (tensors that differ from θ0), ``left_out``
    (the checkpoint's tensors outside the image encoder: text tower, heads), ``left_out_changed`` (how many of them
    differ from ``pretrained``'s; None without it), ``format``."""
    pretrained = None if pretrained is None else _unwrap(pretrained, "the pre-trained state dict")
    return _vector(base, _unwrap(finetuned, "the fine-tuned state dict"), task, mode, pretrained, {})


def _vector(base, sd: Mapping, task: str, mode: str | None, pretrained: Mapping | None, info: dict) -> tuple[TaskVector, dict]:
    """(task vector, report) of :func:`from_state_dicts`; ``info`` names the sources for the file's metadata."""
    base = as_base(base)
    theta0 = {k: v.detach().cpu() for k, v in base.params.items()}
    buffers = set(getattr(base, "buffers", {}))  # BatchNorm statistics and the like: not weights, not in τ
    given, given_others = split_state(pretrained) if pretrained is not None else ({}, {})
    given = {k: v for k, v in given.items() if k not in buffers}
    if pretrained is not None:
        _check_floats({k: v for k, v in given.items() if k in theta0}, "pre-trained checkpoint")
        diff = [k for k in theta0 if k in given and not _close(given[k], theta0[k])]
        if diff:
            raise ValueError(f"{info.get('pretrained', 'the pre-trained state dict')}: {diff[0]} differs from the "
                             f"base's θ0 ({len(diff)} tensor(s)); import against the base these weights belong to")
    if is_linearized(sd):
        if mode not in (None, "auto", "linear"):
            raise ValueError(f"a linearized checkpoint gives a 'linear' task vector, not {mode!r}")
        tensors, mode, changed, others = linearized_vector(sd, theta0), "linear", None, {}
        left_out = len(_indexed(sd, "params0")) - len(tensors)  # list positions outside the image encoder
        info["format"] = "tangent-space linearized (params0/params)"
        if isinstance(sd.get("model_name"), str):
            info["model_name"] = sd["model_name"]
        if not any(bool((t != 0).any()) for t in tensors.values()):
            raise ValueError("the linearized checkpoint's params equal its params0: nothing was fine-tuned")
    else:
        visual, others = split_state(sd)
        left_out = len(others)
        visual = {k: v for k, v in visual.items() if k not in buffers}
        delta = pair_vector(visual, given if pretrained is not None else theta0,
                            {k: tuple(v.shape) for k, v in theta0.items()})
        if not any(bool((d != 0).any()) for d in delta.values()):
            raise ValueError("the fine-tuned checkpoint's image encoder equals θ0: nothing was fine-tuned (is it the "
                             "pre-trained file?)")
        far = _norm(delta.values()) / max(_norm(theta0.values()), 1e-12)
        if far > FAR:
            raise ValueError(f"‖θ_t − θ0‖ is {far:.2f} × ‖θ0‖: these weights are no fine-tune of this θ0 (a task "
                             "vector given as weights, or another pre-trained model?)")
        mode, changed = choose_mode(delta, mode)
        tensors = {k: v for k, v in delta.items() if get_mode(mode).trains(k)}
        info["format"] = "state-dict pair" if pretrained is not None else "state dict against the base's θ0"
    meta = {Meta.BASE: base.id, Meta.MODE: mode, Meta.TASK: task, "arith.imported": json.dumps(info, sort_keys=True)}
    tv = validate(tensors, meta, base, check_weights=False)  # τ = θ_t − θ0 was taken here (FAR checked the weights)
    # what τ leaves out: the checkpoint's other tensors (text tower, heads); with θ0's file, how many of them changed
    shared = [k for k in others if k in given_others]  # None: no θ0 file, or none of its keys to compare with
    left_changed = sum(not _same(others[k], given_others[k]) for k in shared) if shared else None
    report = {**info, "mode": mode, "changed": None if changed is None else len(changed),
              "left_out": left_out, "left_out_changed": left_changed}
    return tv, report


def import_checkpoint(base, finetuned: str | Path, *, task: str, mode: str | None = None,
                      pretrained_state: str | Path | None = None) -> tuple[TaskVector, dict]:
    """A validated task vector for ``base`` from a fine-tuned checkpoint (and optionally its θ0 file)."""
    pretrained = None if pretrained_state is None else read_checkpoint(pretrained_state)
    return _import(base, finetuned, task, mode, pretrained_state, pretrained)


def _import(base, finetuned, task, mode, pretrained_state, pretrained) -> tuple[TaskVector, dict]:
    """:func:`import_checkpoint` with θ0's file already read (``pretrained``), so a command reads it once."""
    info: dict = {"source": Path(finetuned).name}
    if pretrained_state is not None:
        info["pretrained"] = Path(pretrained_state).name
    return _vector(base, read_checkpoint(finetuned), task, mode, pretrained, info)


# -- command ----------------------------------------------------------------------------------------------------------
def _import_args(p):
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model", help="open_clip model of the base, e.g. ViT-B-32 (with --pretrained and/or --pretrained-state)")
    g.add_argument("--config", help="inline open_clip model config of the base (with --pretrained-state)")
    p.add_argument("--bundle", help="the bundle whose θ0 is the base (default, without --model or --config: "
                                    "$ARITH_BUNDLE or precomputed/default)")
    p.add_argument("--pretrained", help="open_clip pretrained tag of the base (e.g. openai): names the base id and, "
                                        "without --pretrained-state, loads its weights (open_clip's cache)")
    p.add_argument("--pretrained-state", help="θ0 as a state-dict file (.pt read with weights_only=True, or safetensors)")
    p.add_argument("--finetuned", required=True, help="the fine-tuned checkpoint (state dict or linearized checkpoint)")
    p.add_argument("--task", required=True, help="task name recorded in the vector (e.g. the bundle's task)")
    p.add_argument("--mode", default="auto", help="auto (default: the narrowest mode that trains every tensor the "
                   f"checkpoint changed, or linear for a linearized checkpoint) or one of {', '.join(MODES)}")
    p.add_argument("--out", required=True, help="task-vector file to write (.safetensors)")


def _import_base(args, pretrained: Mapping | None):
    from .bundle import load_bundle
    from .cli import DEFAULT_BUNDLE
    from .models import Base
    from .specs import ModelSpec

    if args.bundle and (args.model or args.config):
        raise ValueError("the base is a bundle's θ0 (--bundle) or a model (--model or --config), not both")
    if not (args.model or args.config):
        return load_bundle(args.bundle or os.environ.get("ARITH_BUNDLE", str(DEFAULT_BUNDLE))).base
    if args.config:
        cfg = _config_arg(args.config)
        spec = ModelSpec(config=cfg)
    else:
        spec = ModelSpec(name=args.model, pretrained=args.pretrained)
    if pretrained is not None:
        # the id: open_clip:<name>:<tag> for a known tag, else a fingerprint
        return Base.from_state_dict(spec, visual_state(pretrained))
    if not (args.model and args.pretrained):
        raise ValueError("give the base: --bundle, or --model with --pretrained and/or --pretrained-state")
    return Base.from_spec(spec)



@command("import", "convert a fine-tuned checkpoint (state dicts or a linearized checkpoint) into a task-vector file")
@arguments(_import_args)
def cmd_import(args):
    out = check_output_path(args.out)  # before the checkpoints are read, not after
    for flag, given in (("--finetuned", args.finetuned), ("--pretrained-state", args.pretrained_state)):
        if given and out.exists() and Path(given).exists() and os.path.samefile(out, given):
            raise ValueError(f"--out {args.out} is the {flag} checkpoint itself; write the task vector elsewhere")
    pretrained = read_checkpoint(args.pretrained_state) if args.pretrained_state else None
    base = _import_base(args, pretrained)
    tv, report = _import(base, args.finetuned, args.task, args.mode, args.pretrained_state, pretrained)
    tv.save(args.out)
    res = {"ok": True, "out": args.out, "task": tv.task, "mode": tv.mode, "base_model": tv.base_id,
           "keys": len(tv.tensors), "parameters": tv.numel, "norm": tv.norm(), **report}

    def text(r):
        left = ""
        if r["left_out"]:
            which = f", {r['left_out_changed']} of them changed" if r["left_out_changed"] else ""
            left = f"; {r['left_out']} tensor(s) outside the image encoder left out (text tower, heads{which})"
        return (f"{r['format']}: {r['mode']} task vector for {r['task']} ({r['keys']} tensors, ‖τ‖ = {r['norm']:.4g}) "
                f"written to {r['out']}{left}")

    _emit(args, res, text)
