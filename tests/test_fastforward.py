"""The staged evaluation forward (arith/fastforward.py) against open_clip's own module through functional_call."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from arith.merge import merge
from arith.models import Base

from conftest import TASKS, tiny_base
from hostile import valid_vector


def _cfg(width=32, layers=2, head_width=16, patch=4, image=16, **extra):
    return {"embed_dim": 24, "vision_cfg": {"image_size": image, "patch_size": patch, "width": width, "layers": layers,
                                            "head_width": head_width, **extra}}


CONFIGS = {
    "two heads": _cfg(),
    "three heads (MultiheadAttention's slow path)": _cfg(width=48, head_width=16, layers=3),
    "the default's shape": _cfg(width=96, layers=4, head_width=32, patch=8, image=32),
    "QuickGELU": {**_cfg(), "quick_gelu": True},
    "no ln_pre": _cfg(no_ln_pre=True),
    "one layer": _cfg(layers=1),
}


def plain(base: Base) -> Base:
    """The same θ0 without the staged forward: evaluation goes through functional_call (the reference)."""
    b = Base(base.spec, base.module, base_id=base.id)
    b.__dict__["staged"] = None
    return b


def _x(base, n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return base.preprocess(torch.randint(0, 256, (n, 3, base.image_size, base.image_size), generator=g, dtype=torch.uint8))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_staged_forward_matches_the_module(name):
    base = tiny_base(config=CONFIGS[name])
    assert base.staged is not None
    x = _x(base)
    for mode, seed in (("full", 1), ("attn", 2), ("mlp", 3)):
        params = merge(base.params, [valid_vector(base, mode, seed=seed).scale(30.0)], [1.0])
        with torch.no_grad():
            ref = base.features(params, x)
        got = base.eval_features(params, x)
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(base.eval_features(None, x), base.features(None, x).detach(), rtol=1e-4, atol=1e-5)


def test_stages_compose_exactly(base):
    st, x = base.staged, _x(base)
    params = merge(base.params, [valid_vector(base, "full", seed=4)], [0.7])
    whole = st.run(params, x)
    for k in range(len(st.names) + 1):
        assert torch.equal(st.run(params, st.run(params, x, 0, k), k), whole), st.names[min(k, len(st.names) - 1)]


def test_first_stage_of_each_mode(base):
    from arith.modes import get_mode

    st = base.staged
    keys = {m: get_mode(m).trainable_keys(base.params) for m in ("full", "attn", "attn_bias", "mlp")}
    assert st.first_stage(keys["full"]) == 0
    assert st.names[st.first_stage(keys["attn"])] == ("attn", 0) == st.names[st.first_stage(keys["attn_bias"])]
    assert st.names[st.first_stage(keys["mlp"])] == ("mlp", 0)
    assert st.names[st.first_stage(["visual.proj"])] == "post"
    assert st.names[st.first_stage(["visual.transformer.resblocks.1.ln_2.bias"])] == ("mlp", 1)
    assert st.first_stage([]) == len(st.names)
    assert st.first_stage(["visual.something.unknown"]) == 0  # unknown: nothing can be skipped


def test_partial_parameter_dicts_use_theta0_for_the_rest(base):
    x = _x(base)
    k = "visual.transformer.resblocks.0.attn.out_proj.weight"
    part = {k: base.params[k] + 0.05}
    torch.testing.assert_close(base.eval_features(part, x), base.features(part, x).detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("extra", [{"pool_type": "avg"}, {"attentional_pool": True}, {"ls_init_value": 0.1}])
def test_other_encoders_fall_back_to_the_module(extra):
    base = tiny_base(config=_cfg(**extra))
    assert base.staged is None
    x = _x(base)
    assert torch.equal(base.eval_features(None, x), base.features(None, x).detach())
    with pytest.raises(ValueError, match="no staged forward"):
        base.eval_features(None, x, start=1)


def test_evaluator_equals_the_unoptimised_path(bundle):
    """Staged forward + shared θ0 prefixes + batches of 256 give the accuracies of the module path in batches of
    1024, for every mode and for a random coefficient set, on every task and on a subset."""
    fast = bundle.evaluator()
    slow = dataclasses.replace(bundle, base=plain(bundle.base)).evaluator(batch_size=1024)
    g = torch.Generator().manual_seed(0)
    for mode, vs in bundle.vectors.items():
        vectors = list(vs.values())
        for _ in range(3):
            coefs = (4 * torch.rand(len(vectors), generator=g) - 2).tolist()
            for split, tasks in (("test", None), ("val", [TASKS[1]])):
                assert fast.evaluate(vectors, coefs, split, tasks) == slow.evaluate(vectors, coefs, split, tasks), mode
                torch.testing.assert_close(fast.merged_features(vectors, coefs, split, tasks),
                                           slow.merged_features(vectors, coefs, split, tasks), rtol=1e-4, atol=1e-5)
    assert fast.zeroshot("test") == slow.zeroshot("test")
    # attention- and MLP-only merges start from cached θ0 activations; full merges do not
    stages = {key[1] for key in fast._prefix._d}
    st = bundle.base.staged
    assert stages == {st.names.index(("attn", 0)), st.names.index(("mlp", 0))}


def test_prefix_cache_is_bounded_and_optional(bundle):
    ev = bundle.evaluator(prefix_cache_mb=0)
    tv = bundle.vectors["attn"][TASKS[0]]
    ref = bundle.evaluator().evaluate([tv], [1.0], "test")
    assert ev.evaluate([tv], [1.0], "test") == ref and len(ev._prefix) == 0


# -- the layout read from a config (no open_clip import) against the one read from the built module ----------------
LAYOUT_CONFIGS = {**CONFIGS, "mlp ratio 2, rectangular image": _cfg(mlp_ratio=2.0, image=[16, 24], patch=[4, 8]),
                  "patch dropout (the identity in evaluation)": _cfg(patch_dropout=0.5),
                  "inert pooler fields": _cfg(attn_pooler_heads=4, timm_pool="avg")}


@pytest.mark.parametrize("name", list(LAYOUT_CONFIGS))
def test_layout_from_config_is_the_modules_layout(name):
    from arith.fastforward import ViTLayout
    from arith.models import build_visual, model_config
    from arith.specs import ModelSpec

    spec = ModelSpec(config=LAYOUT_CONFIGS[name])
    enc = build_visual(spec, device="meta")
    layout = ViTLayout.from_config(model_config(spec))
    assert layout is not None and layout == ViTLayout.from_module(enc.visual)
    assert layout.shapes() == {k: tuple(p.shape) for k, p in enc.named_parameters()}


def test_layout_of_real_clip_configs():
    from open_clip.model import CLIPVisionCfg

    from arith.fastforward import VISION_DEFAULTS, ViTLayout
    from arith.models import build_visual, model_config
    from arith.specs import ModelSpec

    assert VISION_DEFAULTS == {k: getattr(CLIPVisionCfg(), k) for k in VISION_DEFAULTS}
    for spec in (ModelSpec(name="ViT-B-32", pretrained="openai"), ModelSpec(name="ViT-B-16")):
        enc = build_visual(spec, device="meta")
        layout = ViTLayout.from_config(model_config(spec))
        assert layout == ViTLayout.from_module(enc.visual)
        assert layout.quick_gelu is (spec.pretrained == "openai")
        assert layout.shapes() == {k: tuple(p.shape) for k, p in enc.named_parameters()}


@pytest.mark.parametrize("extra", [{"pool_type": "avg"}, {"attentional_pool": True}, {"ls_init_value": 0.1},
                                   {"pos_embed_type": "sin_cos_2d"}, {"qk_norm": True}, {"norm_kwargs": {"eps": 1e-6}},
                                   {"act_kwargs": {"approximate": "tanh"}}, {"timm_model_name": "vit_tiny"},
                                   {"layers": [1, 1, 1, 1]}, {"some_future_field": 1}])
def test_layout_from_config_refuses_what_it_does_not_cover(extra):
    from arith.fastforward import ViTLayout

    assert ViTLayout.from_config(_cfg(**extra)) is None


def test_a_base_from_tensors_builds_its_module_only_when_asked(bundle):
    """A bundle's θ0 evaluates through the config's layout; the open_clip module appears on first use (a JVP, which
    builds it before entering the transform) and wraps θ0's own tensors."""
    from arith.linearize import jvp_features

    base = Base.from_state_dict(bundle.base.spec, bundle.base.params, base_id=bundle.base.id)
    assert base._module is None and base.staged is not None
    k = next(iter(base.params))
    assert base.params[k].data_ptr() != bundle.base.params[k].data_ptr()  # from_state_dict copies
    x = _x(base)
    before = base.eval_features(None, x)
    assert base._module is None
    tau = {kk: torch.full_like(v, 1e-3) for kk, v in base.params.items()}
    f, jt = jvp_features(base, tau, x)  # first use of the module, inside a JVP
    assert base._module is not None
    assert all(p.data_ptr() == base.params[n].data_ptr() and not p.requires_grad for n, p in base.module.named_parameters())
    torch.testing.assert_close(f, before, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(base.to("cpu").eval_features(None, x), before)


def test_a_lazy_module_refuses_to_be_built_inside_a_transform(bundle):
    base = Base.from_state_dict(bundle.base.spec, bundle.base.params, base_id=bundle.base.id)
    x = _x(base)

    def f(p):
        return base.features(p, x)

    k = "visual.proj"
    with pytest.raises(RuntimeError, match="inside a torch.func transform"):
        torch.func.jvp(f, ({k: base.params[k]},), ({k: torch.ones_like(base.params[k])},))
    assert base._module is None
    assert torch.equal(base.module.visual.proj, base.params[k])  # built fine outside


@pytest.mark.parametrize("extra", [{"patch_dropout": 1.0}, {"patch_dropout": None}, {"image_size": [32, 32, 3]},
                                   {"patch_size": True}, {"layers": 0}])
def test_layout_leaves_configs_open_clip_would_refuse_to_open_clip(extra):
    from arith.fastforward import ViTLayout

    assert ViTLayout.from_config(_cfg(**extra)) is None


def test_theta0_from_tensors_alone_needs_a_standard_vit(base):
    spec = dataclasses.replace(base.spec, config=_cfg(pool_type="avg"))
    with pytest.raises(ValueError, match="standard ViT"):
        Base(spec, None, params=base.params)
