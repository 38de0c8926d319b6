"""Numbers that must not drift or slip through: diagnostics in fp32 under autocast, values beyond fp32's range,
non-finite coefficients, head scales, DARE's draws on kept device copies, negation's fallback, caches' dtypes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save

from arith.cli import main
from arith.evaluate import Evaluator
from arith.explore import Explorer
from arith.heads import heads_from_tensors, heads_to_tensors
from arith.kernel import kernel_report
from arith.merge import combine, merge
from arith.modes import get_mode
from arith.protocols import task_negation
from arith.taskvec import TaskVectorError, load_task_vector

from conftest import TASKS
from hostile import valid_vector


def test_kernel_report_compares_fp32_models_under_autocast(bundle):
    """f(θ0) and J τ are fp32; the non-linear model they are compared with must be too, or a small τ's relative error
    measures bf16 rounding (0.5 against 0.01 before the fix) instead of non-linearity."""
    tv = bundle.vectors["full"][TASKS[0]].scale(1e-2)
    exact = Evaluator(bundle.base, bundle.heads, bundle.data)
    low = Evaluator(bundle.base, bundle.heads, bundle.data, autocast="bf16")
    want = kernel_report(exact, tv, TASKS[0], subsets=())
    got = kernel_report(low, tv, TASKS[0], subsets=())
    for a, b in zip(got["path"], want["path"]):
        assert a["rel_error_features"] == pytest.approx(b["rel_error_features"], rel=1e-3, abs=1e-6)
        assert a["agreement"] == b["agreement"]
    # the ordinary (non-diagnostic) forward still runs under autocast
    assert not torch.equal(low.features(None, "test"), exact.features(None, "test"))
    assert torch.allclose(low.features(None, "test", fp32=True), exact.features(None, "test"), atol=1e-5)


def test_negation_measures_zero_shot_in_the_arithmetic_of_its_curve(bundle):
    """Under autocast the control floor and the reported zero-shot are θ0 through the same reduced-precision forward
    as θ0 − λτ; without autocast (and for the linear model, which is fp32) they are the cached f(θ0)."""
    low = Evaluator(bundle.base, bundle.heads, bundle.data, autocast="bf16")
    t = TASKS[0]
    for mode in ("full", "linear"):
        tv = bundle.vectors[mode][t]
        res = task_negation(low, tv, t, TASKS)
        zs = low.evaluate([tv], [0.0], "test", list(TASKS))
        assert res["zeroshot_target"] == zs[t]
        assert res["zeroshot_control"] == pytest.approx(sum(zs[c] for c in TASKS[1:]) / (len(TASKS) - 1))
        if mode == "linear":
            assert zs == low.zeroshot("test", list(TASKS))


def test_negation_falls_back_to_no_negation_when_no_lambda_keeps_the_controls(bundle):
    """A grid without 0 whose every λ breaks the control constraint: the result negates nothing (λ = 0), rather than
    the grid's first λ, which breaks the constraint too."""
    ev = bundle.evaluator()
    t = TASKS[0]
    huge = bundle.vectors["full"][t].scale(1e3)
    res = task_negation(ev, huge, t, TASKS, alphas=[0.5, 1.0])
    assert not res["constraint_met"] and res["alpha"] == 0.0
    zs = ev.zeroshot("test", list(TASKS))
    assert res["target"] == zs[t]


def test_float64_values_beyond_float32_are_refused(base, tmp_path):
    tv = valid_vector(base)
    tensors = {k: t.double() for k, t in tv.tensors.items()}
    k0 = sorted(tensors)[0]
    tensors[k0][0, 0] = 1e300  # finite in fp64, inf in fp32 (vectors are kept in fp32)
    with pytest.raises(TaskVectorError, match=r"beyond float32's range"):
        load_task_vector(save(tensors, metadata=tv.metadata()), base)
    tensors[k0][0, 0] = 1e30  # large but representable: accepted, as fp32
    assert load_task_vector(save(tensors, metadata=tv.metadata()), base).tensors[k0].dtype == torch.float32


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_coefficients_are_refused_everywhere(bundle, bad, capsys):
    ev = bundle.evaluator()
    for mode in ("attn", "linear"):  # the linear model's cached sums too
        vs = [bundle.vectors[mode][t] for t in TASKS[:2]]
        with pytest.raises(ValueError, match="not a finite number"):
            ev.evaluate(vs, [0.3, bad], "test")
    with pytest.raises(ValueError, match="not a finite number"):
        combine(vs, [bad, 0.1])
    with pytest.raises(ValueError, match="not a finite number"):
        merge(bundle.base.params, vs, [bad, 0.1])
    with pytest.raises(ValueError, match="not a finite number"):
        Explorer(bundle).evaluate("attn", {TASKS[0]: bad})
    with pytest.raises(ValueError, match="2 task vectors but 1 coefficients"):
        ev.evaluate(vs, [0.3], "test")
    code = main(["evaluate", "--bundle", str(bundle.root), "--coef", f"{TASKS[0]}={bad}", "--json"])
    assert code == 2 and "not a finite number" in json.loads(capsys.readouterr().out.splitlines()[0])["error"]


def test_a_xi_grid_needs_coefficients(bundle):
    with pytest.raises(ValueError, match="at least one coefficient per axis"):
        Explorer(bundle).xi("attn", TASKS[0], TASKS[1], alphas=[])


def test_explorer_computes_with_the_coefficients_its_cache_key_names(bundle):
    ex = Explorer(bundle)
    a = ex.evaluate("attn", {TASKS[0]: 0.30004, TASKS[1]: -0.2})
    assert a["coefficients"] == {TASKS[0]: 0.3, TASKS[1]: -0.2}
    want = bundle.evaluator().evaluate([bundle.vectors["attn"][t] for t in TASKS[:2]], [0.3, -0.2], "test")
    assert a["accuracy"] == want
    assert ex.evaluate("attn", {TASKS[0]: 0.00004})["accuracy"] == ex.zeroshot()  # below the key's precision: 0


@pytest.mark.parametrize("scale", [float("nan"), 0.0, -10.0, float("inf")])
def test_head_scales_must_be_positive_and_finite(bundle, scale):
    tensors = heads_to_tensors(bundle.heads)
    dim = next(iter(bundle.heads.values())).weight.shape[1]
    assert set(heads_from_tensors(tensors, list(TASKS), dim)) == set(TASKS)
    tensors[f"{TASKS[1]}.scale"] = torch.tensor(scale)
    with pytest.raises(ValueError, match=rf"{TASKS[1]}\.scale must be one positive finite number"):
        heads_from_tensors(tensors, list(TASKS), dim)


def test_kept_device_copies_of_a_cut_draw_dare_masks_as_the_cut_does(bundle):
    """The GPU keeps copies of vectors (Evaluator.resident; exercised on the CPU with a budget): a cut's copy must draw
    DARE's masks with its source's uid, as the cut does, so that results do not depend on the device or the cache."""
    full = bundle.vectors["full"][TASKS[0]]
    cut = full.cut(get_mode("attn"))
    kept = Evaluator(bundle.base, bundle.heads, bundle.data, vector_cache_mb=64).resident([cut])[0]
    assert kept is not cut and kept.uid == cut.uid
    spec = "dare:density=0.5"
    want, got, whole = combine([cut], [1.0], spec), combine([kept], [1.0], spec), combine([full], [1.0], spec)
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) and torch.equal(got[k], whole[k]) for k in got)


def test_seeded_linear_caches_are_fp32_whatever_the_file_held(bundle):
    ev = Evaluator(bundle.base, bundle.heads, bundle.data)
    tv = bundle.vectors["linear"][TASKS[0]]
    ref = bundle.evaluator(linear_cache=False)
    f0, jt = ref.f0("test"), ref.jvp(tv, "test")
    ev.seed_linear_cache("test", f0.to(torch.bfloat16), {tv.uid: jt.to(torch.float16)})
    assert ev.f0("test").dtype == ev.jvp(tv, "test").dtype == torch.float32
