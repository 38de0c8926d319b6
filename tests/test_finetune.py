import pytest
import torch

from arith.data import get_task
from arith.finetune import Cancelled, Trainable, finetune, lr_factor
from arith.heads import prototype_head
from arith.specs import FinetuneConfig

TASK = "synthetic-stripes"


def _setup(base):
    train = get_task(TASK).load("train", size=16, n=128)
    head = prototype_head(base.encode(train.images), train.labels, 4)
    return train, head


def _cfg(mode, **kw):
    return FinetuneConfig(**{"mode": mode, "steps": 6, "batch_size": 16, "lr": 1e-2, "warmup_steps": 2, **kw})


def test_attn_mode_changes_only_attention_weights(base):
    train, head = _setup(base)
    snap = {k: v.clone() for k, v in base.params.items()}
    res = finetune(base, head, train, _cfg("attn"), task=TASK)
    assert all(torch.equal(snap[k], base.params[k]) for k in snap), "θ0 must stay untouched"
    keys = set(res.vector.tensors)
    assert keys == {k for k in base.params if k.endswith(("attn.in_proj_weight", "attn.out_proj.weight"))}
    assert all(t.abs().sum() > 0 for t in res.vector.tensors.values()), "every attention tensor moved"


def test_attn_bias_switch_adds_the_biases(base):
    train, head = _setup(base)
    res = finetune(base, head, train, _cfg("attn_bias", steps=2), task=TASK)
    assert any(k.endswith("attn.in_proj_bias") for k in res.vector.tensors)
    assert not any(".mlp." in k or k.endswith(("ln_1.weight", "proj")) and "attn" not in k for k in res.vector.tensors)


@pytest.mark.parametrize("mode", ["full", "attn", "linear", "mlp"])
def test_training_is_deterministic_and_learns(base, mode):
    train, head = _setup(base)
    a = finetune(base, head, train, _cfg(mode, steps=12), task=TASK)
    b = finetune(base, head, train, _cfg(mode, steps=12), task=TASK)
    assert a.vector.uid == b.vector.uid
    assert sum(a.losses[-3:]) < sum(a.losses[:3])
    assert a.vector.mode == mode and a.vector.base_id == base.id
    assert a.vector.meta["arith.steps"] == "12"


def test_progress_and_cancel(base):
    train, head = _setup(base)
    seen = []
    finetune(base, head, train, _cfg("attn", steps=3), task=TASK, progress=lambda i, n, loss: seen.append((i, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    calls = iter([False, False, True])
    with pytest.raises(Cancelled, match="after 2 of"):
        finetune(base, head, train, _cfg("attn", steps=5), task=TASK, should_stop=lambda: next(calls))


def test_schedule_warms_up_then_decays():
    cfg = FinetuneConfig(steps=100, warmup_steps=10)
    f = [lr_factor(s, cfg) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] < 0.01


def test_with_steps_keeps_the_warm_up_share():
    cfg = FinetuneConfig(steps=500, warmup_steps=50, lr=1e-3)
    assert cfg.with_steps(500) == cfg
    assert (cfg.with_steps(100).steps, cfg.with_steps(100).warmup_steps, cfg.with_steps(100).lr) == (100, 10, 1e-3)
    assert cfg.with_steps(2000).warmup_steps == 200
    assert cfg.with_steps(1).warmup_steps == 0  # a run of one step still takes a step after its warm-up
    assert FinetuneConfig(steps=10, warmup_steps=10).with_steps(4).warmup_steps == 3


def test_trainable_linear_starts_at_the_base(base):
    x = base.preprocess(get_task(TASK).load("test", size=16, n=4).images)
    m = Trainable(base, "linear")
    assert torch.allclose(m(x), base.features(None, x))


def test_bad_configs_are_refused():
    with pytest.raises(ValueError):
        FinetuneConfig(steps=0)
    with pytest.raises(ValueError):
        FinetuneConfig(lr=-1)
    # each of these trained a vector that validate and every loader then refused (a NaN τ; a seed the metadata rejects)
    for bad, match in (({"lr": float("inf")}, "lr"), ({"lr": float("nan")}, "lr"), ({"seed": -1}, "seed"),
                       ({"weight_decay": float("nan")}, "weight_decay"), ({"grad_clip": float("inf")}, "grad_clip"),
                       ({"label_smoothing": 1.0}, "label_smoothing")):
        with pytest.raises(ValueError, match=match):
            FinetuneConfig(**bad)
    assert FinetuneConfig.from_json(FinetuneConfig(lr=3e-4).to_json()) == FinetuneConfig(lr=3e-4)
