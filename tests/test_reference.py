"""The diagnostics' numbers against references computed here another way: J δ by central finite differences in
fp64 (not ``torch.func.jvp``), ξ's representation variant and the kernel report's errors from their definitions
(method.md §4, §5), on the tiny bundle."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from arith.disentangle import xi_grid
from arith.explore import Explorer
from arith.kernel import kernel_report
from arith.merge import MERGE_METHODS, combine

from conftest import TASKS

EPS = 1e-3  # fp64 central differences: error ~EPS² ‖f'''‖, far below the fp32 tolerances used here


@pytest.fixture(scope="module")
def ev(bundle):
    return bundle.evaluator(max_per_task=16)


@pytest.fixture(scope="module")
def enc64(bundle):
    return bundle.base.encoder().double()


def _f64(bundle, enc64, x, delta=None, scale=1.0):
    """f(x; θ0 + scale·δ) in fp64."""
    params = {k: t.double() for k, t in bundle.base.params.items()}
    for k, d in (delta or {}).items():
        params[k] = params[k] + scale * d.double()
    with torch.no_grad():
        return functional_call(enc64, params, (x.double(),))


def _jvp_fd(bundle, enc64, x, delta):
    """J(θ0) δ by central differences."""
    return (_f64(bundle, enc64, x, delta, EPS) - _f64(bundle, enc64, x, delta, -EPS)) / (2 * EPS)


def _x(ev, tasks):
    es = ev.eval_set("test")
    return torch.cat([es.x[es.slices[t]] for t in tasks])


@pytest.mark.parametrize("method", [*MERGE_METHODS,  # every registered method at its defaults, and with options
                                    "ties:density=0.5", "dare:density=0.5,seed=1", "dare_ties:density=0.5,seed=1"])
def test_a_linearized_merge_is_f0_plus_j_delta(bundle, ev, enc64, method):
    """Every merge method in linearized mode: the linear model at θ0 + δ, f(θ0) + J δ, whichever path computes it
    (cached J τ_t for task arithmetic and DARE, J δ afresh for the TIES family)."""
    vs = [bundle.vectors["linear"][t] for t in TASKS]
    coefs = [0.6, -0.4, 0.8]
    delta = combine(vs, coefs, method)
    x = _x(ev, TASKS)
    want = _f64(bundle, enc64, x) + _jvp_fd(bundle, enc64, x, delta)
    got = ev.merged_features(vs, coefs, "test", method=method).double()
    assert (got - want).norm() <= 1e-4 * want.norm()
    # and the offset is really there: the linear model differs from θ0 by J δ, not by nothing
    assert (got - _f64(bundle, enc64, x)).norm() > 1e-3 * want.norm()


def test_kernel_report_errors_follow_their_definitions(bundle, ev, enc64):
    task = TASKS[0]
    tv = bundle.vectors["full"][task]
    path = (0.5, 1.0)
    rep = kernel_report(ev, tv, task, path=path, subsets=("attention",))
    x = _x(ev, [task])
    f0 = _f64(bundle, enc64, x)
    jt = _jvp_fd(bundle, enc64, x, tv.tensors)
    head, labels = ev.heads[task], ev.labels("test", task)
    for row, s in zip(rep["path"], path):
        f_nl, f_lin = _f64(bundle, enc64, x, tv.tensors, s), f0 + s * jt
        assert row["s"] == s
        assert row["rel_error_features"] == pytest.approx(float((f_nl - f_lin).norm() / (f_nl - f0).norm()), rel=1e-3)
        l_nl, l_lin = head.logits(f_nl.float()), head.logits(f_lin.float())
        acc_nl = float((l_nl.argmax(-1) == labels).float().mean())
        acc_lin = float((l_lin.argmax(-1) == labels).float().mean())
        assert row["acc_nonlinear"] == pytest.approx(acc_nl, abs=1.5 / len(labels))  # an image on a tie at most
        assert row["acc_linear"] == pytest.approx(acc_lin, abs=1.5 / len(labels))
        adv = (row["acc_nonlinear"] - row["acc_linear"]) / (1 - 1 / head.num_classes)
        assert row["nonlinear_advantage"] == pytest.approx(adv)
    part = {k: t for k, t in tv.tensors.items() if ".attn." in k and k.endswith("weight")}
    norm = math.sqrt(sum(float(t.double().pow(2).sum()) for t in part.values()))
    assert rep["restricted"]["attention"]["norm_fraction"] == pytest.approx(norm / tv.norm(), rel=1e-9)
    assert rep["at_1"] == rep["path"][1]


def test_xi_representation_variant_is_the_mean_cosine_distance_per_image(bundle, ev):
    a, b = TASKS[:2]
    vs = bundle.vectors["attn"]
    alphas = [-1.0, 0.5]
    res = xi_grid(ev, vs[a], vs[b], a, b, alphas)
    for i, a1 in enumerate(alphas):
        for j, a2 in enumerate(alphas):
            merged = ev.merged_features([vs[a], vs[b]], [a1, a2], "test", [a, b])
            n1 = len(ev.labels("test", a))
            want = sum(float((1 - F.cosine_similarity(ev.merged_features([tv], [al], "test", [t]), f, dim=-1)).mean())
                       for tv, al, t, f in ((vs[a], a1, a, merged[:n1]), (vs[b], a2, b, merged[n1:])))
            assert res["representation"][i][j] == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert max(max(row) for row in res["representation"]) > 1e-4  # off the origin it measures something


def test_xi_of_one_task_with_itself_is_refused(bundle, ev):
    tv = bundle.vectors["attn"][TASKS[0]]
    with pytest.raises(ValueError, match="two different tasks"):
        xi_grid(ev, tv, tv, TASKS[0], TASKS[0])
    ex = Explorer(bundle, max_per_task=8)
    with pytest.raises(ValueError, match="two different tasks"):  # an upload of the same task, as the app can ask
        ex.xi("attn", TASKS[0], "mine", alphas=[0.0, 1.0], extra={"mine": 0.5 * tv})


def test_a_seeded_linear_cache_too_short_for_the_images_is_refused(bundle):
    """A longer cache is fine (an evaluator on a subset uses its first rows); a shorter one would leave images out."""
    ev = bundle.evaluator(linear_cache=False)
    n = len(ev.eval_set("test").labels)
    f0 = torch.zeros(n, bundle.base.embed_dim)
    with pytest.raises(ValueError, match=f"{n - 1} rows for {n} evaluation images"):
        ev.seed_linear_cache("test", f0, {"some uid": f0[:-1]})
    with pytest.raises(ValueError, match=f"{n - 1} rows for {n} evaluation images"):
        ev.seed_linear_cache("test", f0[:-1], {})
    assert "test" not in ev._f0  # nothing installed
