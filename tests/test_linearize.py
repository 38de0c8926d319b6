import threading

import torch

from arith.linearize import forward_ad_attention, jvp_features, linearized_features
from arith.modes import get_mode

from conftest import tiny_base


def _x():
    return torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(3))


def _delta(base, scale=1e-3, mode="full", seed=0):
    g = torch.Generator().manual_seed(seed)
    m = get_mode(mode)
    return {k: scale * torch.randn(v.shape, generator=g) for k, v in base.params.items() if m.trains(k)}


def test_linear_model_at_zero_offset_equals_the_base(base):
    x = _x()
    zero = {k: torch.zeros_like(v) for k, v in base.params.items()}
    assert torch.equal(linearized_features(base, zero, x), base.features(None, x))
    f0, jd = jvp_features(base, {}, x)
    assert torch.equal(f0, base.features(None, x)) and not jd.any()


def test_jvp_matches_finite_differences(base):
    x, d = _x(), _delta(base)
    base64 = tiny_base()
    base64.module.double()
    base64.params = {k: v.double() for k, v in base64.params.items()}
    base64.mean, base64.std = base64.mean.double(), base64.std.double()
    x64 = x.double()
    _, jd = jvp_features(base64, {k: v.double() for k, v in d.items()}, x64)
    eps = 1e-4
    plus = base64.features({k: base64.params[k] + eps * d[k].double() for k in d}, x64)
    minus = base64.features({k: base64.params[k] - eps * d[k].double() for k in d}, x64)
    fd = (plus - minus) / (2 * eps)
    assert torch.allclose(jd, fd, rtol=1e-5, atol=1e-8)


def test_jvp_is_linear_in_the_tangent(base):
    x, a, b = _x(), _delta(base, seed=1), _delta(base, seed=2)
    _, ja = jvp_features(base, a, x)
    _, jb = jvp_features(base, b, x)
    _, jab = jvp_features(base, {k: 2 * a[k] - b[k] for k in a}, x)
    assert torch.allclose(jab, 2 * ja - jb, atol=1e-5)


def test_restricted_tangents_add_up_to_the_whole(base):
    x, d = _x(), _delta(base)
    attn, rest = get_mode("attn"), {}
    da = {k: v for k, v in d.items() if attn.trains(k)}
    rest = {k: v for k, v in d.items() if not attn.trains(k)}
    _, j_all = jvp_features(base, d, x)
    _, j_a = jvp_features(base, da, x)
    _, j_r = jvp_features(base, rest, x)
    assert torch.allclose(j_a + j_r, j_all, atol=1e-5)


def test_gradients_flow_through_the_linearized_model(base):
    x = _x()
    d = {k: torch.zeros_like(v, requires_grad=True) for k, v in base.params.items()}
    out = linearized_features(base, d, x).pow(2).sum()
    out.backward()
    assert any(v.grad is not None and v.grad.abs().sum() > 0 for v in d.values())


def test_fastpath_switch_is_scoped_and_thread_safe():
    assert torch.backends.mha.get_fastpath_enabled()
    inside, barrier = [], threading.Barrier(3)

    def work():
        with forward_ad_attention():
            barrier.wait()
            inside.append(torch.backends.mha.get_fastpath_enabled())
            barrier.wait()

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert inside == [False, False, False]
    assert torch.backends.mha.get_fastpath_enabled()
