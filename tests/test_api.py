"""The engine as a library user meets it: what a researcher does with ``arith`` in a notebook must not change θ0, the
bundle or anything shared, and a misuse must say what was wrong."""

import math

import pytest
import torch

import arith
from arith.bundle import trained_with
from arith.disentangle import xi_grid
from arith.explore import Explorer
from arith.kernel import kernel_report
from arith.merge import dare_vector, merge
from arith.models import Base
from arith.specs import FinetuneConfig, Meta
from arith.taskvec import TaskVector, TaskVectorError, load_task_vector, validate

from conftest import tiny_base
from hostile import valid_vector


def _snapshot(params):
    return {k: t.clone() for k, t in params.items()}


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("built", ["module", "tensors"])
def test_theta0_module_refuses_load_state_dict_and_encoder_gives_a_copy(built):
    base = tiny_base()
    if built == "tensors":  # a Base made from tensors alone builds its module lazily, around θ0's own tensors
        base = Base.from_state_dict(base.spec, base.params)
    before = _snapshot(base.params)
    tv = valid_vector(base, "full")
    weights = merge(base.params, [tv], [1.0])
    with pytest.raises(RuntimeError, match=r"base\.encoder"):
        base.module.load_state_dict(weights)
    assert _same(base.params, before)

    x = torch.randn(3, 3, base.image_size, base.image_size)
    enc = base.encoder(weights)
    assert torch.allclose(enc(x), base.features(weights, x), atol=1e-5)
    assert all(p.requires_grad for p in enc.parameters())  # ready to train
    enc.load_state_dict(base.params)  # an encoder of one's own takes any weights...
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(1.0)  # ...and in-place edits
    assert _same(base.params, before)
    assert torch.allclose(base.encoder()(x), base.features(None, x), atol=1e-5)


def test_a_deep_copy_of_theta0s_module_is_ones_own(base):
    import copy

    before = _snapshot(base.params)
    mine = copy.deepcopy(base.module)
    mine.load_state_dict({k: t + 1.0 for k, t in base.params.items()})  # a copy's tensors: allowed
    assert _same(base.params, before)
    moved = base.to("cpu")  # another Base: its module is its θ0, guarded in turn
    with pytest.raises(RuntimeError, match=r"base\.encoder"):
        moved.module.load_state_dict(dict(base.params))


def test_encoder_refuses_weights_that_do_not_fit(base):
    key = next(iter(base.params))
    with pytest.raises(ValueError, match="visual.nope"):
        base.encoder({"visual.nope": torch.zeros(1)})
    with pytest.raises(ValueError, match=key):
        base.encoder({key: torch.zeros(1)})


def test_scaling_refuses_non_finite_coefficients(base):
    tv = valid_vector(base)
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(TaskVectorError, match="finite"):
            tv.scale(bad)
        with pytest.raises(TaskVectorError, match="finite"):
            bad * tv


def test_derived_vectors_record_how_and_never_vouch_for_training(base, tmp_path):
    cfg = FinetuneConfig(mode="attn", steps=7)
    trained_meta = {Meta.CONFIG: cfg.to_json(), Meta.STEPS: "7", Meta.LR: "0.001", Meta.SEED: "0",
                    Meta.CREATED: "2020-01-01T00:00:00+00:00", "note": "kept"}
    a = TaskVector(valid_vector(base, seed=1).tensors, "a", "attn", base.id, trained_meta)
    b = TaskVector(valid_vector(base, seed=2).tensors, "b", "attn", base.id, trained_meta)
    assert trained_with(a.meta, cfg)
    for derived, made in [(0.5 * a, "0.5 × a"), (a / 4, "0.25 × a"), (-a, "-1 × a"),
                          (a - 0.5 * b, "a - 0.5 × b"), (0.5 * (a + b), "0.5 × (a + b)"),
                          (dare_vector(a, 0.5, 3), "DARE(density 0.5, seed 3) of a")]:
        assert derived.meta[Meta.DERIVED] == made
        assert not any(k in derived.meta for k in Meta.TRAINING)
        again = load_task_vector(derived.save(tmp_path / "d.safetensors"), base)
        assert not trained_with(again.meta, cfg)
        assert again.metadata()[Meta.CREATED] != trained_meta[Meta.CREATED]  # written now, not when a was trained
    assert (0.5 * a).meta["note"] == "kept"


def test_vectors_sum_and_divide_like_numbers(base):
    a, b, c = (valid_vector(base, seed=s) for s in range(3))
    total = sum([a, b, c])
    direct = a + b + c
    assert all(torch.equal(total.tensors[k], direct.tensors[k]) for k in direct.tensors)
    halved = a / 2
    assert all(torch.allclose(halved.tensors[k], 0.5 * a.tensors[k]) for k in a.tensors)
    assert sum([a]) is a
    with pytest.raises(TaskVectorError, match="divide a task vector by 0"):
        a / 0


def test_a_sum_of_two_modes_cannot_be_saved_and_unknown_modes_are_refused(base, tmp_path):
    mixed = valid_vector(base, "attn") + valid_vector(base, "full", seed=1)
    assert mixed.mode == "attn+full"
    with pytest.raises(TaskVectorError, match="different modes"):
        mixed.save(tmp_path / "mixed.safetensors")
    assert not (tmp_path / "mixed.safetensors").exists()
    with pytest.raises(TaskVectorError, match="'atn'"):
        TaskVector(valid_vector(base).tensors, "t", "atn", base.id)


def test_load_task_vector_takes_a_bundle_for_its_base(bundle, tmp_path, monkeypatch):
    tv = next(iter(bundle.vectors["attn"].values()))
    again = load_task_vector(tv.save(tmp_path / "v.safetensors"), bundle)
    assert again.uid == tv.uid
    monkeypatch.setenv("HOME", str(tmp_path))  # ~ in a path, written and read
    assert load_task_vector(tv.save("~/home.safetensors"), bundle).uid == tv.uid
    assert load_task_vector("~/home.safetensors", bundle).uid == tv.uid and (tmp_path / "home.safetensors").is_file()


def test_diagnostics_refuse_grids_and_paths_that_cannot_answer(bundle):
    ev = bundle.evaluator(max_per_task=8)
    (t1, v1), (t2, v2) = list(bundle.vectors["attn"].items())[:2]
    with pytest.raises(ValueError, match="at least one coefficient"):
        xi_grid(ev, v1, v2, t1, t2, alphas=[])
    with pytest.raises(ValueError, match="s = 1"):
        kernel_report(ev, v1, t1, path=(0.0, 0.5))
    with pytest.raises(ValueError, match="'attn'.*attention"):
        kernel_report(ev, v1, t1, subsets=("attn",))
    assert kernel_report(ev, v1, t1, path=(0.5, 1.0), subsets=())["at_1"]["s"] == 1.0


def test_one_task_name_is_not_read_as_its_letters(bundle):
    ev = bundle.evaluator(max_per_task=8)
    task, tv = next(iter(bundle.vectors["attn"].items()))
    assert ev.evaluate([tv], [0.5], "test", task) == ev.evaluate([tv], [0.5], "test", [task])
    assert ev.zeroshot("test", task) == ev.zeroshot("test", [task])


def test_finetune_config_of_a_misspelt_mode_is_an_error(bundle):
    assert bundle.finetune_config("attn") is not None
    with pytest.raises(ValueError, match="unknown mode 'atn'"):
        bundle.finetune_config("atn")


def test_explorer_results_are_the_callers_own(bundle_dir):
    ex = Explorer.open(bundle_dir)
    mode = ex.modes[0]
    alpha = ex.addition(mode)["alpha"]
    ex.results["addition"][mode]["alpha"] = -5.0
    ex.result("addition")[mode]["alpha"] = -5.0
    assert ex.addition(mode)["alpha"] == alpha == ex.result("addition")[mode]["alpha"]
    assert ex.result("no such result", {}) == {}


def test_from_state_dicts_rebuilds_a_vector_and_checks_theta0(bundle):
    base = bundle.base
    tv = bundle.vectors["attn"][next(iter(bundle.vectors["attn"]))]
    finetuned = {k: t + tv.tensors[k] if k in tv.tensors else t.clone() for k, t in base.params.items()}
    wrapped = {"state_dict": {f"module.{k}": t for k, t in finetuned.items()}}
    got = arith.from_state_dicts(bundle, wrapped, task=tv.task)  # auto: the narrowest mode
    assert got.mode == "attn" and got.tensors.keys() == tv.tensors.keys()
    assert all(torch.allclose(got.tensors[k], tv.tensors[k], atol=1e-6) for k in tv.tensors)
    assert arith.from_state_dicts(base, finetuned, task=tv.task, mode="full").mode == "full"
    other = {k: t + 1.0 for k, t in base.params.items()}
    with pytest.raises(ValueError, match="differs from the base's θ0"):
        arith.from_state_dicts(base, finetuned, task=tv.task, pretrained=other)


# -- from a review of the API as a notebook user meets it --------------------------------------------------------------
def test_an_evaluator_refuses_vectors_of_another_base_and_things_that_are_not_vectors(bundle):
    """Another θ0's vector (same architecture) scored as numbers before; now every entry point names it."""
    other = Base.from_state_dict(bundle.base.spec, {k: v + 0.05 for k, v in bundle.base.params.items()})
    ev = arith.Evaluator(other, bundle.heads, bundle.data, max_per_task=8)
    tvs = list(bundle.vectors["attn"].values())
    for call in (lambda: ev.evaluate(tvs[:1], [1.0]), lambda: ev.jvp(tvs[0], "test"),
                 lambda: ev.linear_features(list(bundle.vectors["linear"].values())[:1], [1.0], "test"),
                 lambda: xi_grid(ev, tvs[0], tvs[1], alphas=[1.0])):
        with pytest.raises(ValueError, match="was made for the base .*not this evaluator's θ0"):
            call()
    mine = bundle.evaluator(max_per_task=8)
    with pytest.raises(TypeError, match="a dict of vectors"):
        mine.evaluate(bundle.vectors["attn"], [1.0] * len(tvs))
    with pytest.raises(TypeError, match="mapping task -> task vector"):
        mine.finetuned(tvs)


def test_what_an_evaluator_returns_is_the_callers_to_edit(bundle):
    """f(θ0), J τ and the features of a merge at λ = 0 are the evaluator's caches: editing a returned tensor in place
    changed every later answer (zero-shot included)."""
    ev = bundle.evaluator(max_per_task=8)
    lin = list(bundle.vectors["linear"].values())[0]
    before = ev.zeroshot("test"), ev.evaluate([lin], [1.0])
    for f in (ev.f0("test"), ev.merged_features([], [], "test"), ev.jvp(lin, "test"),
              ev.linear_features([lin], [0.0], "test")):
        f.mul_(0)
    assert (ev.zeroshot("test"), ev.evaluate([lin], [1.0])) == before


def test_an_evaluator_refuses_tasks_without_a_head_and_labels_outside_it(bundle):
    digits = next(iter(bundle.data))
    with pytest.raises(ValueError, match=r"evaluation data for task\(s\) \['mine'\] without a head"):
        arith.Evaluator(bundle.base, bundle.heads, {digits: bundle.data[digits], "mine": bundle.data[digits]})
    s = bundle.data[digits]["test"]
    shifted = {digits: {"test": type(s)(s.images, s.labels + bundle.heads[digits].num_classes)}}
    with pytest.raises(ValueError, match="labels outside its head's classes"):
        arith.Evaluator(bundle.base, bundle.heads, shifted).zeroshot("test")


def test_a_cut_is_not_saved_as_a_file_no_loader_reads(bundle, tmp_path):
    cut = bundle.vectors["full"][next(iter(bundle.vectors["full"]))].cut(arith.get_mode("attn"))
    for tv in (cut, 0.5 * cut):
        with pytest.raises(TaskVectorError, match="cut to 'attn' .*cannot be saved"):
            tv.save(tmp_path / "cut.safetensors")
    assert not (tmp_path / "cut.safetensors").exists()


def test_load_overrides_fill_in_and_never_contradict_the_file(bundle, tmp_path):
    tv = bundle.vectors["full"][next(iter(bundle.vectors["full"]))]
    path = tv.save(tmp_path / "v.safetensors")
    with pytest.raises(TaskVectorError, match="mode='full', not 'linear' as asked"):
        load_task_vector(path, bundle, mode="linear")  # a full vector read as linear was scored as another model
    with pytest.raises(TaskVectorError, match="not 'other' as asked"):
        load_task_vector(path, bundle, task="other")
    assert load_task_vector(path, bundle, mode="full", task=tv.task).uid == tv.uid  # agreeing is fine
    meta = {Meta.BASE: bundle.base.id}  # a file of another tool's: task and mode filled in
    assert validate(dict(tv.tensors), meta, bundle, task="mine", mode="full").task == "mine"


def test_notebook_reprs_are_summaries_and_vectors_only_combine_with_vectors(bundle):
    assert len(repr(bundle)) < 1000 and all(m in repr(bundle) for m in bundle.modes)
    tv = bundle.vectors["attn"][next(iter(bundle.vectors["attn"]))]
    for obj in (tv, bundle.base, bundle.evaluator(), next(iter(bundle.heads.values())),
                bundle.data[tv.task]["test"]):
        assert len(repr(obj)) < 300 and "tensor(" not in repr(obj), repr(obj)
    assert f"{tv.numel:,} entries" in repr(tv) and "made as '0.5 × " in repr(0.5 * tv)
    for bad in (lambda: tv + 0, lambda: tv - 1, lambda: tv * tv):
        with pytest.raises(TypeError):
            bad()


def test_registries_take_a_record_again_only_when_told(extension):
    from arith.modes import MODES, Mode

    mode = Mode("lab_ln_api", "LayerNorm only", (r"visual\..*ln_.*",))
    try:
        arith.register_mode(mode)
        with pytest.raises(ValueError, match="already registered .replace=True"):
            arith.register_mode(mode)
        assert arith.register_mode(mode, replace=True) is mode and MODES["lab_ln_api"] is mode
    finally:
        MODES.pop("lab_ln_api", None)


def test_summarize_and_finetune_name_what_does_not_fit(bundle):
    with pytest.raises(ValueError, match=r"no fine-tuned accuracy to normalise by for task\(s\) \['b'\]"):
        arith.summarize({"a": 0.5, "b": 0.4}, {"a": 0.9})
    from arith.finetune import finetune
    from arith.heads import Head

    t, head = next(iter(bundle.heads.items()))
    two = Head(head.weight[:2], head.scale)  # another task's head, of fewer classes than t's labels
    assert int(bundle.data[t]["test"].labels.max()) >= 2
    with pytest.raises(ValueError, match="training labels outside the head's classes 0..1"):
        finetune(bundle.base, two, bundle.data[t]["test"], FinetuneConfig(steps=1), task=t)


def test_merge_names_a_vector_that_does_not_fit_theta0(bundle):
    tv = bundle.vectors["attn"][next(iter(bundle.vectors["attn"]))]
    key = next(iter(tv.tensors))
    wide = TaskVector({key: torch.zeros(*tv.tensors[key].shape[:-1], tv.tensors[key].shape[-1] + 1)}, tv.task, "attn",
                      tv.base_id)
    alien = TaskVector({"visual.nope": torch.zeros(2)}, tv.task, "full", tv.base_id)
    for bad, said in ((wide, "does not fit θ0, which has shape"), (alien, "visual.nope: .*has no such tensor")):
        with pytest.raises(ValueError, match=said):
            merge(bundle.base.params, [bad], [1.0])


def test_a_sum_with_a_cut_is_a_cut_and_printing_a_dare_vector_draws_nothing(bundle, tmp_path):
    full = bundle.vectors["full"]
    a, b = (full[t].cut(arith.get_mode("attn")) for t in list(full)[:2])
    for tv in (a + b, a - b, list(full.values())[0] + b):
        with pytest.raises(TaskVectorError, match="cannot be saved"):
            tv.save(tmp_path / "sum.safetensors")
    v = bundle.vectors["attn"][next(iter(bundle.vectors["attn"]))]
    src = TaskVector(dict(v.tensors), v.task, v.mode, v.base_id)  # its own: no masks drawn on it yet
    tv = dare_vector(src, 0.5, 1)
    assert f"{tv.numel:,} entries" in repr(tv) and tv.numel == v.numel and "_dare" not in src.__dict__
