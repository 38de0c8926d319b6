from pathlib import Path

import open_clip
import pytest
import torch

from arith.models import Base, build_clip, build_visual, count_parameters, model_config
from arith.modes import MODES, get_mode
from arith.specs import ModelSpec

from conftest import TINY, TINY_CLIP, tiny_base


@pytest.mark.parametrize("name,expected", [("ViT-B-32", 28311552), ("ViT-B-16", 28311552), ("ViT-L-14", 100663296)])
def test_attention_parameter_counts_match_the_paper(name, expected):
    counts = count_parameters(ModelSpec(name=name), "attn")
    assert counts["trainable"] == expected  # 4 d² per block (method.md §2)
    assert 0.3 < counts["trainable"] / counts["total"] < 0.34


def test_full_mode_trains_everything_and_mlp_is_disjoint_from_attn():
    spec = ModelSpec(name="ViT-B-32")
    full = count_parameters(spec, "full")
    assert full["trainable"] == full["total"] == 87849216
    enc = build_visual(spec, device="meta")
    keys = [k for k, _ in enc.named_parameters()]
    attn, mlp = set(get_mode("attn").trainable_keys(keys)), set(get_mode("mlp").trainable_keys(keys))
    assert len(attn) == len(mlp) == 24 and not attn & mlp
    assert all(k.startswith("visual.transformer.resblocks.") for k in attn | mlp)
    bias = set(get_mode("attn_bias").trainable_keys(keys))
    assert attn < bias and len(bias - attn) == 24


def test_openai_weights_get_quickgelu():
    assert model_config(ModelSpec(name="ViT-B-32", pretrained="openai"))["quick_gelu"] is True
    assert not model_config(ModelSpec(name="ViT-B-32")).get("quick_gelu", False)
    assert model_config(ModelSpec(name="ViT-B-32", pretrained="openai", quick_gelu=False))["quick_gelu"] is False
    enc = build_visual(ModelSpec(name="ViT-B-32", pretrained="openai"), device="meta")
    acts = {type(m).__name__ for m in enc.modules()}
    assert "QuickGELU" in acts


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="unknown open_clip model"):
        model_config(ModelSpec(name="ViT-Nope"))
    with pytest.raises(ValueError, match="exactly one"):
        ModelSpec()


def test_spec_round_trips_through_json():
    spec = ModelSpec(config=TINY, quick_gelu=True)
    assert ModelSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="unknown field"):
        ModelSpec.from_dict({"name": "ViT-B-32", "pretrainde": "openai"})


def test_functional_forward_matches_the_module_and_leaves_it_alone(base):
    x = base.preprocess(torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8))
    before = {k: v.clone() for k, v in base.params.items()}
    ref = base.module(x)
    assert torch.equal(base.features(None, x), ref)
    shifted = {k: v + 0.01 for k, v in base.params.items()}
    assert not torch.allclose(base.features(shifted, x), ref)
    assert all(torch.equal(before[k], base.params[k]) for k in before)
    assert all(not p.requires_grad for p in base.params.values())


def test_base_round_trips_through_a_state_dict(base):
    again = Base.from_state_dict(base.spec, base.params, base_id=base.id)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(again.features(None, x), base.features(None, x))
    assert again.id == base.id == base.default_id()
    with pytest.raises(ValueError, match="missing"):
        Base.from_state_dict(base.spec, {k: v for k, v in list(base.params.items())[1:]})
    bad = dict(base.params)
    bad["visual.proj"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="visual.proj"):
        Base.from_state_dict(base.spec, bad)


def test_base_id_depends_on_the_weights():
    assert tiny_base(0).id == tiny_base(0).id
    assert tiny_base(0).id != tiny_base(1).id


def test_inline_clip_gives_a_text_tower():
    torch.manual_seed(0)
    clip = build_clip(ModelSpec(config=TINY_CLIP))
    tok = open_clip.tokenizer.SimpleTokenizer(context_length=16)
    emb = clip.encode_text(tok(["a photo of a cat."]))
    assert emb.shape == (1, 32)
    with pytest.raises(ValueError, match="text tower"):
        build_clip(ModelSpec(config=TINY))


def test_preprocess_resizes_and_normalises(base):
    x = base.preprocess(torch.full((1, 3, 32, 32), 255, dtype=torch.uint8))
    assert x.shape == (1, 3, 16, 16)
    assert torch.allclose(x[0, :, 0, 0], (1 - base.mean.flatten()) / base.std.flatten())


def test_preprocess_centre_crops_a_non_square_image_instead_of_stretching_it(base):
    x = torch.randint(0, 256, (2, 3, 32, 48), dtype=torch.uint8)
    x[..., :, :8] = 0  # the margins the crop removes: a stretch would mix them in
    x[..., :, 40:] = 255
    assert torch.equal(base.preprocess(x), base.preprocess(x[..., :, 8:40]))
    tall = x.transpose(-1, -2)  # 48 × 32: the same crop along the height
    assert torch.equal(base.preprocess(tall), base.preprocess(tall[..., 8:40, :]))


def test_every_registered_mode_has_trainable_tensors(base):
    for mode in MODES.values():
        assert mode.trainable_keys(base.params), mode.name


def test_openai_statistics_are_open_clips():
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    from arith import models

    assert models.OPENAI_DATASET_MEAN == OPENAI_DATASET_MEAN and models.OPENAI_DATASET_STD == OPENAI_DATASET_STD


def test_loading_and_evaluating_a_bundle_does_not_import_open_clip(bundle_dir):
    """The app's first view loads a bundle and evaluates merges; open_clip (and torchvision, torch._dynamo with it)
    costs ~2.5 s of import on two cores, so that path must not import it (it is imported on first use of a module)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from arith.bundle import load_bundle\n"
            "from arith.explore import Explorer\n"
            f"ex = Explorer(load_bundle({str(bundle_dir)!r}))\n"
            "for m in ex.bundle.vectors:\n"
            "    ex.evaluate(m, {n: 0.37 for n in ex.vectors(m)}, 'test')\n"
            "print(sorted(m for m in ('open_clip', 'torchvision', 'torch._dynamo') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
