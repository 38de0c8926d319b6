"""``python -m arith import``: state-dict pairs and tangent-space linearized checkpoints become task-vector files;
whole pickled modules are refused without being unpickled."""

import json
import pickle

import pytest
import torch

from arith.cli import main
from arith.convert import from_state_dicts, import_checkpoint, import_state_dicts, visual_state
from arith.models import Base, ImageEncoder, build_clip
from arith.specs import ModelSpec
from arith.taskvec import load_task_vector

from conftest import TINY_CLIP


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return build_clip(ModelSpec(config=TINY_CLIP))


@pytest.fixture(scope="module")
def base(clip):
    return Base(ModelSpec(config=TINY_CLIP), ImageEncoder(clip.visual))


def _finetuned(clip, keys=lambda k: True, scale=1e-2, seed=1):
    g = torch.Generator().manual_seed(seed)
    sd = {k: v.clone() for k, v in clip.state_dict().items()}
    for k, v in sd.items():
        if k.startswith("visual.") and v.is_floating_point() and keys(k):
            sd[k] = v + scale * torch.randn(v.shape, generator=g)
    return sd


def run(capsys, *argv):
    code = main([*argv, "--json"])
    out = json.loads(capsys.readouterr().out)
    return code, out


def test_state_dict_pair_with_wrapper_prefixes(clip, base, tmp_path, capsys):
    ft = _finetuned(clip)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in ft.items()}}, tmp_path / "ft.pt")  # open_clip
    torch.save({f"model.{k}": v for k, v in clip.state_dict().items()}, tmp_path / "pre.pt")  # task-vectors style
    code, res = run(capsys, "import", "--config", json.dumps(TINY_CLIP), "--pretrained-state", str(tmp_path / "pre.pt"),
                    "--finetuned", str(tmp_path / "ft.pt"), "--task", "cars", "--out", str(tmp_path / "tv.safetensors"))
    assert code == 0 and res["mode"] == "full" and res["changed"] == len(base.params)
    assert res["base_model"] == base.id  # the base rebuilt from the pre-trained file is the same θ0
    tv = load_task_vector(tmp_path / "tv.safetensors", base)
    assert tv.task == "cars" and tv.mode == "full" and "arith.imported" in tv.meta
    for k, t in tv.tensors.items():
        assert t.dtype == torch.float32 and torch.allclose(t, ft[k] - clip.state_dict()[k], atol=1e-7)


def test_mode_is_detected_and_checked(clip, base, tmp_path):
    attn_only = _finetuned(clip, keys=lambda k: k.endswith(("attn.in_proj_weight", "attn.out_proj.weight")))
    torch.save(attn_only, tmp_path / "attn.pt")
    tv, rep = import_checkpoint(base, tmp_path / "attn.pt", task="dtd")  # against the base's own θ0
    assert tv.mode == "attn" and rep["changed"] == 4 and set(tv.tensors) == {
        k for k in base.params if k.endswith(("attn.in_proj_weight", "attn.out_proj.weight"))}
    torch.save({k[len("visual."):]: v for k, v in attn_only.items() if k.startswith("visual.")}, tmp_path / "vis.pt")
    assert import_checkpoint(base, tmp_path / "vis.pt", task="dtd", mode="attn_bias")[0].mode == "attn_bias"
    torch.save(_finetuned(clip), tmp_path / "full.pt")
    with pytest.raises(ValueError, match=r"visual\.class_embedding: changed by fine-tuning but mode 'attn' does not"):
        import_checkpoint(base, tmp_path / "full.pt", task="dtd", mode="attn")
    with pytest.raises(ValueError, match="linearized vectors come from linearized checkpoints"):
        import_checkpoint(base, tmp_path / "full.pt", task="dtd", mode="linear")


def test_wrong_base_and_wrong_shapes_are_refused(clip, base, tmp_path):
    other = _finetuned(clip, seed=7)
    torch.save(other, tmp_path / "other.pt")
    torch.save(_finetuned(clip), tmp_path / "ft.pt")
    with pytest.raises(ValueError, match="differs from the base's θ0"):
        import_checkpoint(base, tmp_path / "ft.pt", task="x", pretrained_state=tmp_path / "other.pt")
    bad = _finetuned(clip)
    bad["visual.proj"] = torch.zeros(3, 3)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"visual\.proj: shape \(3, 3\)"):
        import_checkpoint(base, tmp_path / "bad.pt", task="x")


def _linearized_checkpoint(clip, delta_seed=3):
    """What the tangent-space repo's LinearizedImageEncoder.save writes for an ImageEncoder (CLIP minus its text
    transformer): params0/params lists in the module's parameter order, and the model name."""
    import copy

    enc = copy.deepcopy(clip)
    del enc.transformer
    params0 = [p.detach().clone() for p in enc.parameters()]
    g = torch.Generator().manual_seed(delta_seed)
    params = [p + 1e-2 * torch.randn(p.shape, generator=g) for p in params0]
    names = [n for n, _ in enc.named_parameters()]
    sd = {f"model.params.{i}": p for i, p in enumerate(params)}
    sd.update({f"model.params0.{i}": p for i, p in enumerate(params0)})
    sd["model_name"] = "ViT-B-32"
    return sd, dict(zip(names, zip(params0, params)))


def test_tangent_space_linearized_checkpoint(clip, base, tmp_path, capsys):
    sd, named = _linearized_checkpoint(clip)
    torch.save(sd, tmp_path / "linear_finetuned.pt")
    torch.save(clip.state_dict(), tmp_path / "pre.pt")
    code, res = run(capsys, "import", "--config", json.dumps(TINY_CLIP), "--pretrained-state", str(tmp_path / "pre.pt"),
                    "--finetuned", str(tmp_path / "linear_finetuned.pt"), "--task", "svhn",
                    "--out", str(tmp_path / "lin.safetensors"))
    assert code == 0 and res["mode"] == "linear" and res["model_name"] == "ViT-B-32"
    tv = load_task_vector(tmp_path / "lin.safetensors", base)
    assert set(tv.tensors) == set(base.params)
    for k, t in tv.tensors.items():
        p0, p = named[k]
        assert torch.allclose(t, p - p0, atol=1e-7), k
    # another parameter order (an older open_clip): matched by value against θ0 -- pre-trained weights have no
    # two equal tensors; the random tiny model's LayerNorms (all ones) would be ambiguous, and are refused as such
    reorder = lambda d: {f"model.{w}.{new}": d[f"model.{w}.{old}"]
                         for w in ("params", "params0") for new, old in enumerate(reversed(range(len(named))))}
    torch.save(reorder(sd), tmp_path / "ambiguous.pt")
    with pytest.raises(ValueError, match="parameter order cannot be recovered"):
        import_checkpoint(base, tmp_path / "ambiguous.pt", task="svhn")
    trained = build_clip(ModelSpec(config=TINY_CLIP))
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    base2 = Base(ModelSpec(config=TINY_CLIP), ImageEncoder(trained.visual))
    sd2, named2 = _linearized_checkpoint(trained)
    torch.save(reorder(sd2), tmp_path / "reordered.pt")
    tv2, _ = import_checkpoint(base2, tmp_path / "reordered.pt", task="svhn")
    assert all(torch.allclose(t, named2[k][1] - named2[k][0], atol=1e-7) for k, t in tv2.tensors.items())
    # linearized around other weights: refused
    other, _ = _linearized_checkpoint(build_clip(ModelSpec(config=TINY_CLIP)))
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="linearized around other weights"):
        import_checkpoint(base, tmp_path / "other.pt", task="svhn")


class _Boom:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(BOOM),))


BOOM = ""


def test_whole_module_pickles_are_never_unpickled(clip, tmp_path, capsys):
    global BOOM
    BOOM = str(tmp_path / "unpickled")
    with open(tmp_path / "finetuned.pt", "wb") as fh:
        pickle.dump({"model": _Boom()}, fh, protocol=2)  # what torch.save(module) of an old release amounts to
    torch.save({"state": _Boom()}, tmp_path / "zip.pt")  # a torch.save zip holding an object
    torch.save(clip.state_dict(), tmp_path / "pre.pt")
    for name in ("finetuned.pt", "zip.pt"):
        code, res = run(capsys, "import", "--config", json.dumps(TINY_CLIP), "--pretrained-state", str(tmp_path / "pre.pt"),
                        "--finetuned", str(tmp_path / name), "--task", "x", "--out", str(tmp_path / "x.safetensors"))
        assert code == 2 and name in res["error"] and "weights_only" in res["error"]
        assert "Importing checkpoints" in res["error"]
    assert not (tmp_path / "unpickled").exists(), "nothing was unpickled"
    assert not (tmp_path / "x.safetensors").exists()


def test_visual_state_keeps_only_the_image_encoder(clip):
    vis = visual_state({f"module.model.{k}": v for k, v in clip.state_dict().items()} | {"module.model.step": 3})
    assert vis and all(k.startswith("visual.") for k in vis) and "visual.proj" in vis


ATTN = ("attn.in_proj_weight", "attn.out_proj.weight")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_checkpoint_keeps_its_mode_and_its_values(clip, base, tmp_path, dtype):
    """An fp16 or bf16 attention-only fine-tune: its untouched tensors are θ0 rounded, not fine-tuning (it was
    imported as `full`, and `--mode attn` was refused); against θ0's own fp16 file too, and linearized."""
    ft = {k: v.to(dtype) for k, v in _finetuned(clip, keys=lambda k: k.endswith(ATTN)).items()}
    tv = from_state_dicts(base, ft, task="x")
    assert tv.mode == "attn" and set(tv.tensors) == {k for k in base.params if k.endswith(ATTN)}
    assert all(torch.equal(t, ft[k].float() - base.params[k]) for k, t in tv.tensors.items())  # θ0 + τ = θ_t
    pre = {k: v.to(dtype) for k, v in clip.state_dict().items()}
    assert from_state_dicts(base, ft, task="x", mode="attn", pretrained=pre).mode == "attn"
    sd, named = _linearized_checkpoint(clip)
    lin = from_state_dicts(base, {k: v.to(dtype) if torch.is_tensor(v) else v for k, v in sd.items()}, task="x")
    assert lin.mode == "linear" and torch.allclose(lin.tensors["visual.proj"], named["visual.proj"][1] - named["visual.proj"][0],
                                                   atol=0.05)


def test_checkpoints_that_are_not_float_weights_of_this_encoder_are_refused(clip, base):
    key = next(k for k in base.params if k.endswith("attn.in_proj_weight"))
    for dtype in (torch.int8, torch.bool, torch.complex64):
        ft = _finetuned(clip, keys=lambda k: k.endswith(ATTN))
        ft[key] = ft[key].to(dtype)
        with pytest.raises(ValueError, match=f"{key}: torch.{str(dtype).split('.')[1]} in the fine-tuned checkpoint"):
            from_state_dicts(base, ft, task="x")
    bigger = _finetuned(clip) | {"visual.transformer.resblocks.9.ln_1.weight": torch.ones(TINY_CLIP["vision_cfg"]["width"])}
    with pytest.raises(ValueError, match="resblocks.9.ln_1.weight: in the fine-tuned checkpoint but not in the base"):
        from_state_dicts(base, bigger, task="x")
    with pytest.raises(ValueError, match="equals θ0: nothing was fine-tuned"):
        from_state_dicts(base, clip.state_dict(), task="x")
    sd, _ = _linearized_checkpoint(clip)
    with pytest.raises(ValueError, match="params equal its params0"):
        from_state_dicts(base, {k.replace("params.", "params0.") if ".params." in k else k: v for k, v in sd.items()}
                         | {k: v for k, v in sd.items() if ".params0." in k} |
                         {k: sd[k.replace(".params.", ".params0.")] for k in sd if ".params." in k}, task="x")


def test_heads_and_nested_wrappers_are_found_and_what_is_left_out_is_reported(clip, base, tmp_path, capsys):
    """A task-vectors ImageClassifier (image_encoder.model.* beside classification_head.*) and a timm-style
    {"model": sd} import; the text tower and the head are left out and counted."""
    ft = _finetuned(clip, keys=lambda k: k.endswith(ATTN))
    width = TINY_CLIP["embed_dim"]
    classifier = {f"image_encoder.model.{k}": v for k, v in ft.items()} | {"classification_head.weight": torch.ones(3, width)}
    assert from_state_dicts(base, classifier, task="x").mode == "attn"
    assert from_state_dicts(base, {"model": ft, "epoch": 1}, task="x").mode == "attn"
    text = next(k for k in ft if not k.startswith("visual.") and ft[k].is_floating_point())
    ft[text] = ft[text] + 1  # a FLYP-style fine-tune also trained the text tower
    torch.save(ft, tmp_path / "ft.pt")
    torch.save(clip.state_dict(), tmp_path / "pre.pt")
    code, res = run(capsys, "import", "--config", json.dumps(TINY_CLIP), "--pretrained-state", str(tmp_path / "pre.pt"),
                    "--finetuned", str(tmp_path / "ft.pt"), "--task", "x", "--out", str(tmp_path / "tv.safetensors"))
    others = sum(1 for k, v in ft.items() if not k.startswith("visual.") and torch.is_tensor(v))
    assert code == 0 and res["left_out"] == others and res["left_out_changed"] == 1
    assert main(["import", "--config", json.dumps(TINY_CLIP), "--pretrained-state", str(tmp_path / "pre.pt"),
                 "--finetuned", str(tmp_path / "ft.pt"), "--task", "x", "--out", str(tmp_path / "tv2.safetensors")]) == 0
    assert f"{others} tensor(s) outside the image encoder left out (text tower, heads, 1 of them changed)" in \
        capsys.readouterr().out
    with pytest.raises(ValueError, match="holds none of the base's image-encoder tensors"):
        from_state_dicts(base, {"model": {"blocks.0.weight": torch.ones(2)}}, task="x")


def test_import_never_overwrites_its_inputs_and_names_damaged_files(clip, tmp_path, capsys):
    torch.save(_finetuned(clip), tmp_path / "ft.pt")
    torch.save(clip.state_dict(), tmp_path / "pre.pt")
    before = (tmp_path / "ft.pt").read_bytes()
    args = ["import", "--config", json.dumps(TINY_CLIP), "--task", "x"]
    for out, flag in (("ft.pt", "--finetuned"), ("pre.pt", "--pretrained-state")):
        code, res = run(capsys, *args, "--pretrained-state", str(tmp_path / "pre.pt"), "--finetuned",
                        str(tmp_path / "ft.pt"), "--out", str(tmp_path / out))
        assert code == 2 and f"is the {flag} checkpoint itself" in res["error"]
    assert (tmp_path / "ft.pt").read_bytes() == before
    (tmp_path / "cut.pt").write_bytes(before[: len(before) // 2])  # a truncated torch.save zip: damaged, not a pickle
    code, res = run(capsys, *args, "--pretrained-state", str(tmp_path / "pre.pt"), "--finetuned", str(tmp_path / "cut.pt"),
                    "--out", str(tmp_path / "o.safetensors"))
    assert code == 2 and res["error"].startswith("cut.pt: not a checkpoint torch can read") and "truncated" in res["error"]
    assert "Importing checkpoints" not in res["error"]
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, tmp_path / "pre.safetensors")
    (tmp_path / "bad.safetensors").write_bytes((tmp_path / "pre.safetensors").read_bytes()[:-100])
    code, res = run(capsys, *args, "--pretrained-state", str(tmp_path / "bad.safetensors"), "--finetuned",
                    str(tmp_path / "ft.pt"), "--out", str(tmp_path / "o.safetensors"))
    assert code == 2 and res["error"].startswith("bad.safetensors: ")
    (tmp_path / "zip.safetensors").write_bytes(before)  # a torch.save zip under the other name: read by torch, safely
    code, res = run(capsys, *args, "--pretrained-state", str(tmp_path / "pre.pt"), "--finetuned",
                    str(tmp_path / "zip.safetensors"), "--out", str(tmp_path / "o.safetensors"))
    assert code == 0 and res["mode"] == "full"
    code, res = run(capsys, "import", "--bundle", str(tmp_path / "nowhere"), *args[1:], "--pretrained-state",
                    str(tmp_path / "pre.pt"), "--finetuned", str(tmp_path / "ft.pt"), "--out", str(tmp_path / "p.safetensors"))
    assert code == 2 and "not both" in res["error"]


def test_what_the_diff_review_found(clip, base):
    """BatchNorm buffers are not weights (a ResNet's checkpoint imports); a bf16 θ_t given as θ0 is refused (a
    tolerance of bf16's rounding passed it); two image encoders in one file are refused, not one picked; the text
    tower's changes are counted at the coarser precision, and not at all when no key matches; an empty nest is skipped."""
    cfg = {**TINY_CLIP, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16}}
    torch.manual_seed(0)
    resnet = build_clip(ModelSpec(config=cfg))
    rbase = Base(ModelSpec(config=cfg), ImageEncoder(resnet.visual))
    assert rbase.buffers
    ft = {k: (v + 0.01 if k.startswith("visual.") and v.is_floating_point() and k not in rbase.buffers else v.clone())
          for k, v in resnet.state_dict().items()}
    ft = {k: (v + 1 if k in rbase.buffers and v.is_floating_point() else v) for k, v in ft.items()}  # stats moved too
    assert set(from_state_dicts(rbase, ft, task="x").tensors) == set(rbase.params)

    sd = _finetuned(clip, scale=1e-3)
    g = torch.Generator().manual_seed(2)  # fine-tuning's changes are far below bf16's rounding of θ0 (0.4 %)
    small = {k: (v * (1 + 1e-3 * torch.randn(v.shape, generator=g)) if k.startswith("visual.") and v.is_floating_point()
                 else v) for k, v in clip.state_dict().items()}
    half = {k: v.to(torch.bfloat16) for k, v in small.items()}
    with pytest.raises(ValueError, match="differs from the base's θ0"):
        from_state_dicts(base, clip.state_dict(), task="x", pretrained=half)  # the files swapped

    two = {f"teacher.{k}": v for k, v in sd.items()} | {f"student.{k}": v for k, v in clip.state_dict().items()}
    with pytest.raises(ValueError, match="2 image encoders .*teacher.visual.…"):
        from_state_dicts(base, {"state_dict": two}, task="x")

    from arith.convert import _vector

    text = next(k for k in sd if not k.startswith("visual.") and sd[k].is_floating_point())
    pre16 = {k: v.half() if v.is_floating_point() else v for k, v in clip.state_dict().items()}
    _, rep = _vector(base, sd, "x", None, pre16, {})
    assert rep["left_out_changed"] == 0  # the fp32 text tower, untouched, equals θ0's fp16 copy once rounded
    _, rep = _vector(base, sd | {text: sd[text] + 1}, "x", None, pre16, {})
    assert rep["left_out_changed"] == 1
    classifier = {f"image_encoder.model.{k}": v for k, v in sd.items()} | {"classification_head.weight": torch.ones(2, 2)}
    _, rep = _vector(base, classifier, "x", None, clip.state_dict(), {})
    assert rep["left_out"] > 0 and rep["left_out_changed"] is None  # no key of the θ0 file to compare with
    assert from_state_dicts(base, {"state_dict": {}, "model": sd}, task="x").mode == "full"


def test_a_text_tower_or_a_task_vector_given_as_weights_is_named(clip, base):
    text_only = {k: v for k, v in clip.state_dict().items() if not k.startswith("visual.")}
    with pytest.raises(ValueError, match="no image-encoder tensors: the checkpoint holds a text tower"):
        from_state_dicts(base, text_only, task="x")
    tau = {k: 1e-2 * torch.randn_like(v) for k, v in base.params.items()}  # a full τ, uploaded as if it were θ_t
    with pytest.raises(ValueError, match=r"‖θ_t − θ0‖ is .* × ‖θ0‖: these weights are no fine-tune of this θ0"):
        from_state_dicts(base, tau, task="x")


def test_a_linearized_checkpoints_tensors_outside_the_encoder_are_counted(clip, base):
    sd, named = _linearized_checkpoint(clip)
    n = len(named)
    outside = sum(1 for k in named if not k.startswith("visual."))  # the CLIP parameters an ImageEncoder keeps
    assert outside and import_state_dicts(base, sd, task="x")[1]["left_out"] == outside
    extra = sd | {f"model.params0.{n}": torch.ones(3), f"model.params.{n}": torch.ones(3)}
    tv, report = import_state_dicts(base, extra, task="x")
    assert tv.mode == "linear" and report["left_out"] == outside + 1 and report["left_out_changed"] is None


def test_a_tensor_changed_in_one_entry_counts_as_changed(clip, base):
    """A fine-tune that moved a single entry of an MLP weight still trained that tensor: the mode must train it and τ
    must hold the change (not be narrowed to a mode that drops it)."""
    key = "visual.transformer.resblocks.0.mlp.c_fc.weight"
    ft = {k: v.clone() for k, v in clip.state_dict().items()}
    ft[key][0, 0] += 0.25
    tv, rep = import_state_dicts(base, ft, task="dtd")
    assert rep["changed"] == 1 and key in tv.tensors
    expected = torch.zeros_like(ft[key])
    expected[0, 0] = ft[key][0, 0] - clip.state_dict()[key][0, 0]
    assert torch.equal(tv.tensors[key], expected)
    assert all(not t.any() for k, t in tv.tensors.items() if k != key)


def test_a_pretrained_file_that_differs_from_theta0_in_its_last_tensor_is_refused(clip, base):
    pre = {k: v.clone() for k, v in clip.state_dict().items()}
    last = list(base.params)[-1]
    pre[last] = pre[last] + 0.1
    with pytest.raises(ValueError, match=rf"{last} differs from the base's θ0 \(1 tensor"):
        from_state_dicts(base, _finetuned(clip), task="dtd", pretrained=pre)


def test_linearized_indices_must_run_from_zero_without_gaps():
    from arith.convert import _indexed

    t = torch.zeros(2)
    assert len(_indexed({"model.params0.0": t, "model.params0.1": t}, "params0")) == 2
    for keys in (("params0.0", "params0.2"), ("params0.1",)):
        with pytest.raises(ValueError, match="indices are not 0.."):
            _indexed(dict.fromkeys(keys, t), "params0")


def test_a_linearized_checkpoint_is_refused_under_a_non_linear_mode(clip, base):
    sd = {}
    for i, v in enumerate(base.params.values()):
        sd[f"model.params0.{i}"] = v.detach().clone()
        sd[f"model.params.{i}"] = v.detach().clone() + 0.01
    assert from_state_dicts(base, sd, task="dtd").mode == "linear"
    for mode in ("full", "attn"):
        with pytest.raises(ValueError, match=f"gives a 'linear' task vector, not '{mode}'"):
            from_state_dicts(base, sd, task="dtd", mode=mode)
