"""What each mode trains (method.md §2, exact tensor sets) and that every field of the fine-tuning recipe reaches the
optimiser: weight decay, gradient clipping, label smoothing, the seed's batch order and the lr schedule."""

from __future__ import annotations

import pytest
import torch

import arith.finetune as ft
from arith.data import get_task
from arith.finetune import finetune
from arith.heads import prototype_head
from arith.modes import get_mode, kernel_subsets
from arith.specs import FinetuneConfig

TASK = "synthetic-stripes"


def _blocks(base):
    return sorted({int(k.split(".")[3]) for k in base.params if ".resblocks." in k})


@pytest.mark.parametrize("mode, suffixes", [
    ("attn", ("attn.in_proj_weight", "attn.out_proj.weight")),
    ("attn_bias", ("attn.in_proj_weight", "attn.out_proj.weight", "attn.in_proj_bias", "attn.out_proj.bias")),
    ("mlp", ("mlp.c_fc.weight", "mlp.c_proj.weight")),
])
def test_each_mode_trains_exactly_its_tensors_in_every_block(base, mode, suffixes):
    want = {f"visual.transformer.resblocks.{i}.{s}" for i in _blocks(base) for s in suffixes}
    assert set(get_mode(mode).trainable_keys(base.params)) == want
    assert get_mode("full").trainable_keys(base.params) == list(base.params)


def test_the_restricted_linearizations_keep_every_tensor_last():
    subsets = kernel_subsets()
    assert subsets == {"attention": "attn", "mlp": "mlp", "all": "full"} and list(subsets)[-1] == "all"


def _setup(base):
    train = get_task(TASK).load("train", size=16, n=64)
    head = prototype_head(base.encode(train.images), train.labels, 4)
    return train, head


def _run(base, train, head, **kw):
    cfg = FinetuneConfig(**{"mode": "attn", "steps": 4, "batch_size": 16, "lr": 1e-2, "warmup_steps": 1,
                            "weight_decay": 0.0, "grad_clip": 0.0, **kw})
    return finetune(base, head, train, cfg, task=TASK).vector


def _same(a, b):
    return all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


def test_every_recipe_field_changes_the_run(base):
    train, head = _setup(base)
    ref = _run(base, train, head)
    assert _same(ref, _run(base, train, head))  # seeded: a run repeats bit for bit
    assert not _same(ref, _run(base, train, head, weight_decay=0.5))
    assert not _same(ref, _run(base, train, head, label_smoothing=0.5))
    assert not _same(ref, _run(base, train, head, seed=1))  # another seed: other batches
    # clipping at another norm is another run (a bound of 1e-3 is below every gradient norm here)
    assert not _same(_run(base, train, head, grad_clip=1e-3), _run(base, train, head, grad_clip=1.0))


def test_the_schedule_is_evaluated_at_every_step(base, monkeypatch):
    train, head = _setup(base)
    seen = []
    real = ft.lr_factor
    monkeypatch.setattr(ft, "lr_factor", lambda step, cfg: seen.append(step) or real(step, cfg))
    _run(base, train, head, steps=5)
    assert sorted(set(seen)) == [0, 1, 2, 3, 4, 5]  # LambdaLR: the factor at the start and after each step


def test_the_task_vector_points_where_training_went(base):
    # τ = θ_t − θ0: the training loss at θ0 + τ is below the loss at θ0, and below the loss at θ0 − τ
    train, head = _setup(base)
    tv = _run(base, train, head, steps=8)
    x = base.preprocess(train.images)

    def loss(sign):
        params = {k: v + sign * tv.tensors[k] if k in tv.tensors else v for k, v in base.params.items()}
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(head.logits(base.features(params, x)), train.labels))

    assert loss(1.0) < loss(0.0) < loss(-1.0)


def test_labels_equal_to_the_number_of_classes_are_refused(base):
    train, head = _setup(base)
    bad = type(train)(train.images, torch.where(train.labels == 0, head.num_classes, train.labels))
    with pytest.raises(ValueError, match="outside the head's classes"):
        _run(base, bad, head, steps=1)


def test_a_view_is_evaluated_as_its_source_mode():
    from arith.modes import is_linearized, resolve, source_of

    assert resolve("linear@attn").name == "linear" and is_linearized("linear@attn")
    assert resolve("full@mlp").name == "full" and not is_linearized("full@mlp")
    assert source_of("linear@mlp") == "linear"
