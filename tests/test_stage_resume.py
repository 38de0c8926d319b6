"""Resuming the staged forward (arith/fastforward.py) after the stages a change leaves untouched: for a change to any
one tensor, or to two, running θ0's activation from ``first_stage`` of the changed keys on gives the full forward."""

from __future__ import annotations

import torch

from conftest import tiny_base


def _x(base, n=4):
    g = torch.Generator().manual_seed(0)
    return base.preprocess(torch.randint(0, 256, (n, 3, base.image_size, base.image_size), generator=g, dtype=torch.uint8))


def _changed(base, keys):
    g = torch.Generator().manual_seed(1)
    return {k: v + 0.5 * torch.randn(v.shape, generator=g) if k in keys else v for k, v in base.params.items()}


def _resumed(st, base, params, keys, x):
    start = st.first_stage(keys)
    mid = st.run(base.params, x, 0, start)  # what a cache of θ0's activations holds
    return st.run(params, mid, start)


def test_resuming_at_the_first_changed_stage_is_the_full_forward_for_every_tensor():
    base = tiny_base()
    st, x = base.staged, _x(base)
    for k in base.params:
        params = _changed(base, {k})
        torch.testing.assert_close(_resumed(st, base, params, [k], x), st.run(params, x), msg=k)


def test_two_changed_tensors_resume_at_the_earlier_one():
    base = tiny_base()
    st, x = base.staged, _x(base)
    keys = ["visual.transformer.resblocks.1.mlp.c_fc.weight", "visual.transformer.resblocks.0.ln_1.weight"]
    params = _changed(base, set(keys))
    assert st.first_stage(keys) == 1
    torch.testing.assert_close(_resumed(st, base, params, keys, x), st.run(params, x))


def test_each_tensor_resumes_at_the_stage_that_first_reads_it():
    # a change resumes as late as it can: the cached prefix is only worth having when it is long
    base = tiny_base()
    st = base.staged
    last = len(st.names) - 1
    b = "visual.transformer.resblocks.1."
    want = {"visual.conv1.weight": 0, "visual.ln_pre.weight": 0, b + "ln_1.bias": 3, b + "attn.out_proj.weight": 3,
            b + "ln_2.weight": 4, b + "mlp.c_proj.bias": 4, "visual.ln_post.weight": last, "visual.proj": last}
    assert {k: st.first_stage([k]) for k in want} == want
