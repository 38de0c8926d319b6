"""Property tests (hypothesis) of the merge algebra and of validation: linearity in the coefficients, negation as an
inverse, order independence, and validation never accepting a non-finite tensor or crashing on a damaged file."""

from __future__ import annotations

import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arith.explore import round_coefs
from arith.merge import apply_delta, combine
from arith.safefile import SafetensorsError
from arith.taskvec import TaskVector, TaskVectorError, load_task_vector, validate

from conftest import tiny_base
from hostile import valid_vector

BASE = tiny_base()
POOL = [valid_vector(BASE, mode, f"t{i}", seed=10 + i).scale(10.0) for i, mode in
        enumerate(("full", "attn", "mlp", "attn", "full", "attn_bias"))]
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
coef = st.floats(-2.0, 2.0, allow_nan=False, width=32)


def close(a: dict, b: dict, atol=1e-6) -> bool:
    keys = set(a) | set(b)
    zero = torch.zeros(())
    return all(torch.allclose(a.get(k, zero), b.get(k, zero), atol=atol, rtol=1e-5) for k in keys)


class Pick(list):
    """Vectors drawn from the pool, shown by index in hypothesis' reports (a task vector's repr is huge)."""

    def __repr__(self):
        return f"POOL{[POOL.index(v) for v in self]}"


@st.composite
def vectors_and_coefs(draw, n_min=1, n_max=4):
    idx = draw(st.lists(st.integers(0, len(POOL) - 1), min_size=n_min, max_size=n_max, unique=True))
    return Pick(POOL[i] for i in idx), draw(st.lists(coef, min_size=len(idx), max_size=len(idx)))


@FAST
@given(vectors_and_coefs(), st.data())
def test_merge_is_linear_in_the_coefficients(vc, data):
    vs, lam = vc
    mu = data.draw(st.lists(coef, min_size=len(vs), max_size=len(vs)))
    c = data.draw(coef)
    d_lam, d_mu = combine(vs, lam), combine(vs, mu)
    both = combine(vs, [a + b for a, b in zip(lam, mu)])
    summed = {k: d_lam.get(k, 0) + d_mu.get(k, 0) for k in set(d_lam) | set(d_mu)}
    assert close(summed, both, atol=1e-5)
    scaled = combine(vs, [c * a for a in lam])
    assert close({k: c * t for k, t in d_lam.items()}, scaled, atol=1e-5)


@FAST
@given(vectors_and_coefs())
def test_negation_is_an_exact_inverse(vc):
    vs, lam = vc
    paired = [v for v in vs for _ in (0, 1)]
    d = combine(paired, [x for a in lam for x in (a, -a)])
    assert all(torch.count_nonzero(t) == 0 for t in d.values())  # λτ + (−λ)τ is exactly zero in floating point
    back = apply_delta(apply_delta(BASE.params, combine(vs, lam)), combine(vs, [-a for a in lam]))
    assert close(back, BASE.params, atol=1e-5)
    tv = vs[0]
    assert all(torch.equal(tv.scale(-1.0).scale(-1.0).tensors[k], t) for k, t in tv.tensors.items())
    assert all(torch.equal((-tv).tensors[k], -t) for k, t in tv.tensors.items())
    assert all(torch.count_nonzero(t) == 0 for t in (tv - tv).tensors.values())


@FAST
@given(vectors_and_coefs(n_min=2), st.randoms(use_true_random=False))
def test_merge_does_not_depend_on_the_order(vc, rnd):
    vs, lam = vc
    order = list(range(len(vs)))
    rnd.shuffle(order)
    assert close(combine(vs, lam), combine([vs[i] for i in order], [lam[i] for i in order]), atol=1e-6)
    if len(vs) == 2:  # a + b == b + a exactly
        a, b = combine(vs, lam), combine(vs[::-1], lam[::-1])
        assert all(torch.equal(a[k], b[k]) for k in a)


@FAST
@given(st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), coef, max_size=4), st.randoms(use_true_random=False))
def test_coefficient_keys_are_canonical(coefs, rnd):
    items = list(coefs.items())
    rnd.shuffle(items)
    key = round_coefs(coefs)
    assert round_coefs(dict(items)) == key == round_coefs(dict(key))  # order-free and idempotent
    assert all(v != 0.0 for _, v in key)


# -- validation ---------------------------------------------------------------------------------------------------
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
BAD = [float("nan"), float("inf"), float("-inf")]


@FAST
@given(st.sampled_from(DTYPES), st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(BAD)), min_size=1, max_size=5),
       st.integers(0, 10**6))
def test_validation_never_accepts_a_non_finite_tensor(dtype, bad, which):
    tv = POOL[1]  # attn
    tensors = {k: t.to(dtype) for k, t in tv.tensors.items()}
    key = sorted(tensors)[which % len(tensors)]
    flat = tensors[key].clone().reshape(-1)
    for pos, value in bad:
        flat[pos % flat.numel()] = value
    tensors[key] = flat.reshape(tensors[key].shape)
    with pytest.raises(TaskVectorError, match="non-finite"):
        validate(tensors, tv.metadata(), BASE)
    with pytest.raises(TaskVectorError, match="non-finite"):  # and through a file
        load_task_vector(TaskVector(tensors, tv.task, tv.mode, tv.base_id).to_bytes() if dtype == torch.float32
                         else _save(tensors, tv.metadata()), BASE)


def _save(tensors, meta):
    from safetensors.torch import save

    return save({k: t.contiguous() for k, t in tensors.items()}, metadata=meta)


@FAST
@given(st.sampled_from(DTYPES), st.floats(1e-8, 1e3))
def test_finite_vectors_of_every_float_dtype_are_accepted_as_fp32(dtype, scale):
    tv = POOL[1]
    tensors = {k: (scale * t / t.abs().max()).to(dtype) for k, t in tv.tensors.items()}
    got = load_task_vector(_save(tensors, tv.metadata()), BASE)
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in got.tensors.values())
    assert all(torch.equal(got.tensors[k], t.float()) for k, t in tensors.items())


GOOD = POOL[1].to_bytes()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.one_of(st.none(), st.integers(0, len(GOOD))), st.binary(max_size=16))
def test_a_damaged_file_is_refused_with_a_message_or_read_correctly(flips, cut, tail):
    """Random byte changes, truncation and trailing junk: only SafetensorsError / TaskVectorError, or a vector that
    passed every check (a flip inside the data can give other finite values, which no check can tell)."""
    blob = bytearray(GOOD)
    for pos, value in flips:
        blob[pos] = value
    blob = bytes(blob[:cut] if cut is not None else blob) + tail
    try:
        tv = load_task_vector(blob, BASE)
    except (SafetensorsError, TaskVectorError) as e:
        assert str(e)
        return
    assert all(torch.isfinite(t).all() and tuple(t.shape) == BASE.shapes[k] for k, t in tv.tensors.items())


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=256), st.integers(0, 2**64 - 1))
def test_random_bytes_are_refused_with_a_message(junk, length):
    for blob in (junk, struct.pack("<Q", length) + junk):
        with pytest.raises((SafetensorsError, TaskVectorError)):
            load_task_vector(blob, BASE)
