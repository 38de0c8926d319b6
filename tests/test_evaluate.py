"""Evaluation, protocols and diagnostics on the tiny bundle."""

import numpy as np
import pytest
import torch

from arith.disentangle import xi_grid
from arith.evaluate import Evaluator, shared_vector_cache, vector_bytes
from arith.explore import Explorer, round_coefs
from arith.kernel import kernel_report
from arith.metrics import summarize
from arith.protocols import (
    ALPHAS,
    TUNE_GRID,
    alone_curve,
    interference,
    pair_costs,
    task_addition,
    task_negation,
    tune_coefficients,
)
from arith.report import interference_curve, summary_row

from conftest import TASKS, serving_only


@pytest.fixture(scope="module")
def ev(bundle):
    return bundle.evaluator()


def test_zero_coefficients_give_zero_shot(bundle, ev):
    for mode, vs in bundle.vectors.items():
        acc = ev.evaluate(list(vs.values()), [0.0] * len(vs), "test")
        assert acc == ev.zeroshot("test"), mode


def test_fine_tuning_beats_zero_shot(bundle, ev):
    zs = ev.zeroshot("test")
    for mode, vs in bundle.vectors.items():
        ft = ev.finetuned(vs, "test")
        assert np.mean(list(ft.values())) > np.mean(list(zs.values())), mode


def test_linear_mode_merge_is_the_linear_model(bundle, ev):
    vs = list(bundle.vectors["linear"].values())
    coefs = [0.7, -0.4, 1.1]
    fast = ev.merged_features(vs, coefs, "test")
    from arith.linearize import jvp_features
    from arith.merge import combine

    delta = combine(vs, coefs)
    f0, jd = jvp_features(bundle.base, delta, ev.eval_set("test").x)
    assert torch.allclose(fast, f0 + jd, atol=1e-4)


def test_linear_mode_merged_by_dare_adds_cached_jvps_of_the_dropped_vectors(bundle):
    from arith.linearize import jvp_features
    from arith.merge import combine, dare_vector

    ev = bundle.evaluator()
    vs = list(bundle.vectors["linear"].values())
    coefs = [0.7, -0.4, 1.1]
    # at density 1 it is task arithmetic's linear model, bit for bit (the same cached J τ_t)
    assert torch.equal(ev.merged_features(vs, coefs, "test", method="dare:density=1"), ev.merged_features(vs, coefs, "test"))
    spec = "dare:density=0.3,seed=2"
    n_jvps = len(ev._jvp)
    got = ev.merged_features(vs, coefs, "test", method=spec)
    assert len(ev._jvp) == n_jvps + len(vs)  # one J (m ⊙ τ_t) / density per vector, cached ...
    f0, jd = jvp_features(bundle.base, combine(vs, coefs, spec), ev.eval_set("test").x)
    assert torch.allclose(got, f0 + jd, atol=1e-4)  # ... and their sum is J δ of DARE's δ
    assert not torch.allclose(got, ev.merged_features(vs, coefs, "test"), atol=1e-4)
    other = [0.1, 0.2, 0.3]  # another slider move: the same cached J, weighted anew, and no new JVP
    want = ev.f0("test") + sum(c * ev.jvp(dare_vector(v, 0.3, 2), "test") for c, v in zip(other, vs))
    assert torch.allclose(ev.merged_features(vs, other, "test", method=spec), want, atol=1e-6)
    assert len(ev._jvp) == n_jvps + len(vs)


def test_evaluation_subset_and_task_selection(bundle):
    ev = Evaluator(bundle.base, bundle.heads, bundle.data, max_per_task=8)
    assert len(ev.eval_set("test").x) == 8 * len(TASKS)
    tv = bundle.vectors["attn"][TASKS[1]]
    sub = ev.evaluate([tv], [1.0], "test", [TASKS[1]])
    assert list(sub) == [TASKS[1]]
    assert sub[TASKS[1]] == ev.evaluate([tv], [1.0], "test")[TASKS[1]]


def test_task_addition_protocol(bundle, ev):
    res = task_addition(ev, bundle.vectors["attn"])
    assert res["alpha"] in ALPHAS
    assert len(res["curve"]) == len(ALPHAS)
    best_val = max(r["val"]["normalized"] for r in res["curve"])
    assert res["val_normalized"] == best_val
    row = next(r for r in res["curve"] if r["alpha"] == res["alpha"])
    assert res["absolute"] == row["test"]["absolute"] == pytest.approx(np.mean(list(res["accuracy"].values())))
    assert res["curve"][0]["test"]["accuracy"] == ev.zeroshot("test")


def test_per_task_tuning_keeps_to_its_evaluation_bound(bundle, ev):
    """From λ = 1 every move is downwards, so λ_t's value at the start of its pass comes up again later in the grid;
    it was scored already, and scoring it again broke the README's bound (268 evaluations where it said 264)."""
    res = tune_coefficients(ev, bundle.vectors["linear"], 1.0, rounds=3)
    assert res["moves"] and res["evaluations"] <= 1 + res["rounds"] * len(res["tasks"]) * (len(res["grid"]) - 1)


@pytest.mark.parametrize("mode", ["attn", "linear"])
def test_per_task_coefficients_climb_on_validation_and_stop_where_no_single_move_helps(bundle, ev, mode):
    vs = bundle.vectors[mode]
    add = task_addition(ev, vs)
    res = tune_coefficients(ev, vs, add["alpha"], rounds=10)
    assert res["start_val_normalized"] == pytest.approx(add["val_normalized"])  # starts at the shared α
    assert res["evaluations"] <= 1 + res["rounds"] * len(vs) * (len(res["grid"]) - 1)  # README's bound
    assert res["val_normalized"] >= res["start_val_normalized"]
    scores = [m["val_normalized"] for m in res["moves"]]
    assert scores == sorted(scores) and len(set(scores)) == len(scores)  # only strict improvements
    coefs = res["coefficients"]
    assert all(c in TUNE_GRID or c == add["alpha"] for c in coefs.values())
    tvs, tasks = list(vs.values()), list(vs)

    def val(c):
        return summarize(ev.evaluate(tvs, [c[t] for t in tasks], "val"), ev.finetuned(vs, "val"))["normalized"]

    assert val(coefs) == pytest.approx(res["val_normalized"])
    assert res["converged"]  # a coordinate optimum on the grid: no single λ_t move scores higher
    for t in tasks:
        assert all(val({**coefs, t: g}) <= res["val_normalized"] + 1e-12 for g in (*TUNE_GRID, add["alpha"])), t
    assert all(m["round"] <= res["rounds"] and coefs[m["task"]] in (m["coef"], *TUNE_GRID) for m in res["moves"])
    # the bundle's order whatever order the tasks come in: one selection is one request
    ex = Explorer(bundle)
    assert ex.tune(mode, tasks[::-1])["coefficients"] == ex.tune(mode, tasks)["coefficients"] == coefs
    assert serving_only(Explorer(bundle)).addition(mode, tasks[::-1]) == bundle.results["addition"][mode]  # stored
    test = ev.evaluate(tvs, [coefs[t] for t in tasks], "test")  # reported on test at the chosen coefficients
    assert res["accuracy"] == test and res["absolute"] == pytest.approx(np.mean(list(test.values())))
    with pytest.raises(ValueError, match="rounds"):
        tune_coefficients(ev, vs, 0.3, rounds=0)


@pytest.mark.parametrize("mode", ["attn", "linear"])
def test_each_task_alone_runs_from_zero_shot_to_single_task_and_gives_the_interference(bundle, ev, mode):
    vs = bundle.vectors[mode]
    add = task_addition(ev, vs)
    alone = alone_curve(ev, vs)
    assert [r["alpha"] for r in alone["curve"]] == [r["alpha"] for r in add["curve"]]
    for split in ("val", "test"):  # α = 0 is θ0 and α = 1 each fine-tuned model, exactly
        assert alone["curve"][0][split]["accuracy"] == ev.zeroshot(split)
        assert alone["curve"][-1][split]["accuracy"] == ev.finetuned(vs, split) == alone["finetuned"][split]
        assert alone["curve"][-1][split]["normalized"] == pytest.approx(1.0)
    mid = alone["curve"][len(ALPHAS) // 2]  # at one α, each entry is θ0 + α τ_t on task t alone
    for t, tv in vs.items():
        assert mid["test"]["accuracy"][t] == ev.evaluate([tv], [mid["alpha"]], "test", [t])[t]
    gap = interference(add, alone)
    row = next(r for r in add["curve"] if r["alpha"] == add["alpha"])
    assert gap["alpha"] == add["alpha"] and gap["merged_absolute"] == add["absolute"] == row["test"]["absolute"]
    assert gap["alone_absolute"] == row_at(alone, add["alpha"])["test"]["absolute"]
    assert gap["cost_of_alpha"] == pytest.approx(np.mean(list(ev.finetuned(vs, "test").values())) - gap["alone_absolute"])
    assert {t: v["merged"] for t, v in gap["per_task"].items()} == add["accuracy"]
    assert gap["same_zero_shot"]  # both curves are θ0 at α = 0, on this machine
    with pytest.raises(ValueError, match="no 'val' split"):
        interference(add, alone_curve(ev, vs, alphas=(0.0, add["alpha"]), splits=("test",)), split="val")
    with pytest.raises(ValueError, match="alone curve over"):
        interference(add, alone_curve(ev, {t: vs[t] for t in list(vs)[:2]}, alphas=(0.0, 1.0)))
    with pytest.raises(ValueError, match="not on the alone curve's grid"):
        interference({**add, "alpha": 0.123}, alone)
    # the same gap at every α: zero at α = 0 (both are θ0), the interference's cost of the others at the chosen α
    along = interference_curve(add, alone)
    assert [r["alpha"] for r in along] == [r["alpha"] for r in add["curve"]]
    assert along[0]["absolute"] == along[0]["normalized"] == 0.0
    at = next(r for r in along if r["alpha"] == add["alpha"])
    assert at["absolute"] == gap["cost_of_others"]
    assert at["normalized"] == gap["alone_normalized"] - gap["merged_normalized"]
    if len(vs) > 1:  # one vector alone is the merge: the curve would be 0 throughout
        assert any(r["absolute"] != 0.0 for r in along)
    assert interference_curve(add, alone_curve(ev, vs, alphas=(0.0, add["alpha"]), splits=("test",)))[1]["alpha"] \
        == add["alpha"]  # only the α both curves have
    with pytest.raises(ValueError, match="alone curve over"):
        interference_curve(add, alone_curve(ev, {t: vs[t] for t in list(vs)[:2]}, alphas=(0.0, 1.0)))


@pytest.mark.parametrize("mode", ["attn", "linear"])
def test_pair_costs_set_each_pair_against_the_task_alone(bundle, ev, mode):
    vs = bundle.vectors[mode]
    tasks = list(vs)
    add = task_addition(ev, vs)
    p = pair_costs(ev, vs, add["alpha"])
    assert p["alone"] == row_at(alone_curve(ev, vs, splits=("test",)), add["alpha"])["test"]["accuracy"]
    for r, i in enumerate(tasks):
        assert p["cost"][r][r] == 0
        for c, j in enumerate(tasks):
            if i != j:  # task i with θ0 + α τ_i + α τ_j, against θ0 + α τ_i
                pair = ev.evaluate([vs[i], vs[j]], [add["alpha"]] * 2, "test", [i])[i]
                assert p["pair"][r][c] == pair and p["cost"][r][c] == pytest.approx(p["alone"][i] - pair)
    assert p["hurt"][tasks[0]] == pytest.approx(sum(p["cost"][0]))
    assert p["inflicted"][tasks[0]] == pytest.approx(sum(row[0] for row in p["cost"]))
    # with two tasks the pair is the whole merge, so the cost if pairs added up is the other vectors' cost in interference()
    two = {t: vs[t] for t in tasks[:2]}
    add2 = task_addition(ev, two)
    assert pair_costs(ev, two, add2["alpha"])["additive_cost"] == pytest.approx(
        interference(add2, alone_curve(ev, two))["cost_of_others"])
    # a vector scaled to zero costs no task anything, and at α = 0 nothing costs anything
    quiet = pair_costs(ev, {**vs, tasks[1]: vs[tasks[1]].scale(0.0)}, add["alpha"])
    assert [row[1] for row in quiet["cost"]] == [0.0] * len(tasks)
    assert pair_costs(ev, vs, 0.0)["cost"] == [[0.0] * len(tasks)] * len(tasks)
    with pytest.raises(ValueError, match="at least two task vectors"):
        pair_costs(ev, {tasks[0]: vs[tasks[0]]}, 0.5)


def test_explorer_pairs_follow_the_tasks_asked_for(bundle, ev):
    ex = Explorer(bundle)
    a, b = list(bundle.vectors["attn"])[:2]
    everything = ex.pairs("attn")
    sub = ex.pairs("attn", [b, a])  # its own addition, α and order, not the all-task entry's
    alpha = ex.addition("attn", [b, a])["alpha"]
    assert sub["tasks"] == [b, a] and sub["alpha"] == alpha and everything["tasks"] == list(ex.tasks)
    vs = bundle.vectors["attn"]
    assert sub["pair"][0][1] == ev.evaluate([vs[b], vs[a]], [alpha, alpha], "test", [b])[b]
    with pytest.raises(ValueError, match="at least two task vectors"):
        ex.pairs("attn", [a])


def row_at(curve: dict, alpha: float) -> dict:
    return next(r for r in curve["curve"] if r["alpha"] == alpha)


def test_explorer_alone_uses_the_precomputed_sweep_and_follows_a_task_subset(bundle, ev):
    ex = Explorer(bundle)
    pre = bundle.results["addition"]["attn"]
    full = ex.alone("attn")
    assert full["tasks"] == pre["tasks"] and set(full["finetuned"]) == {"test"}
    gap = full["interference"]
    assert gap["merged_absolute"] == pre["absolute"] and gap["same_zero_shot"]
    two = ex.alone("attn", TASKS[:2])  # a subset: its own addition sweep and α
    assert two["tasks"] == list(TASKS[:2]) and set(two["interference"]["per_task"]) == set(TASKS[:2])
    assert two["interference"]["merged_absolute"] == ex.addition("attn", TASKS[:2])["absolute"]
    chosen = row_at(two, two["interference"]["alpha"])["test"]["accuracy"]
    vs = bundle.vectors["attn"]
    assert chosen == {t: ev.evaluate([vs[t]], [two["interference"]["alpha"]], "test", [t])[t] for t in TASKS[:2]}
    assert serving_only(ex).alone("attn") == full  # memoised


def test_task_negation_protocol(bundle, ev):
    t = TASKS[0]
    res = task_negation(ev, bundle.vectors["full"][t], t, TASKS)
    assert res["controls"] == list(TASKS[1:])
    val = {r["alpha"]: r["val"] for r in res["curve"]}
    assert val[res["alpha"]]["control"] >= 0.95 * np.mean([ev.zeroshot("val")[c] for c in TASKS[1:]]) - 1e-9
    assert res["zeroshot_target"] == ev.zeroshot("test")[t]
    with pytest.raises(ValueError, match="control"):
        task_negation(ev, bundle.vectors["full"][t], t, [t])


@pytest.mark.parametrize("mode", ["attn", "linear"])
def test_xi_grid(bundle, ev, mode):
    a, b = TASKS[:2]
    vs = bundle.vectors[mode]
    res = xi_grid(ev, vs[a], vs[b], a, b, [-1.0, 0.0, 1.0])
    xi = np.array(res["prediction"])
    assert xi.shape == (3, 3) and xi[1, 1] == 0.0 and np.array(res["representation"])[1, 1] == pytest.approx(0, abs=1e-6)
    assert (xi >= 0).all() and (xi <= 2).all()
    # ξ(α1, 0) compares θ0 + α1τ1 with itself on task 1 and θ0 + α1τ1 with θ0 on task 2
    f = ev.merged_features([vs[a]], [1.0], "test", [b])
    expect = float((ev.heads[b].predict(f) != ev.heads[b].predict(ev.merged_features([], [], "test", [b]))).float().mean())
    assert xi[2, 1] == pytest.approx(expect)


def test_kernel_report(bundle, ev):
    t = TASKS[0]
    rep = kernel_report(ev, bundle.vectors["full"][t], t)
    at0 = rep["path"][0]
    assert at0["s"] == 0 and at0["agreement"] == 1.0 and at0["rel_error_logits"] == 0.0
    assert set(rep["restricted"]) == {"attention", "mlp", "all"}
    assert rep["restricted"]["attention"]["norm_fraction"] < 1
    row = summary_row(rep)
    assert 0 <= row["agreement"] <= 1 and "attention_agreement" in row
    attn = kernel_report(ev, bundle.vectors["attn"][t], t)
    assert attn["restricted"]["mlp"] is None


def test_kernel_report_at_zero_is_exact_when_forward_passes_round_differently(bundle, ev, monkeypatch):
    """On a GPU a forward pass over other batches rounds differently; θ0 + 0·τ must still be f(θ0) itself."""
    t = TASKS[0]
    real = ev.features
    monkeypatch.setattr(ev, "features", lambda *a, **k: real(*a, **k) * (1 + 1e-6))  # rounding-sized, not zero
    rep = kernel_report(ev, bundle.vectors["full"][t], t, path=(0.0, 1.0))
    for row in [rep["path"][0]] + [r["path"][0] for r in rep["restricted"].values() if r is not None]:
        assert row["rel_error_features"] == 0.0 and row["rel_error_logits"] == 0.0 and row["agreement"] == 1.0
    assert rep["path"][1]["rel_error_features"] > 0


def test_explorer_uses_precomputed_results_and_memoises(bundle):
    assert serving_only(Explorer(bundle)).addition("attn") == bundle.results["addition"]["attn"]
    ex = Explorer(bundle)
    mine = ex.addition("attn")
    mine["accuracy"].clear()  # a caller's copy: editing it changes nothing stored
    assert ex.addition("attn") == bundle.results["addition"]["attn"] and bundle.results["addition"]["attn"]["accuracy"]
    res = ex.evaluate("attn", {TASKS[0]: 0.5, TASKS[1]: 0.25})
    assert set(res["accuracy"]) == set(TASKS) and 0 <= res["normalized"] <= 2
    again = ex.evaluate("attn", {TASKS[0]: 0.50001, TASKS[1]: 0.25})
    assert again["accuracy"] == res["accuracy"]
    with pytest.raises(KeyError, match="no attn task vector"):
        ex.evaluate("attn", {"nope": 1.0})
    flipped = ex.xi("attn", TASKS[1], TASKS[0], alphas=np.linspace(-2, 2, 5))
    pre = bundle.results["disentanglement"]["attn"][f"{TASKS[0]}|{TASKS[1]}"]
    assert flipped["prediction"] == [list(r) for r in zip(*pre["prediction"])]


def test_explorer_serves_the_stored_alone_curve_and_computes_past_a_malformed_one(bundle):
    import dataclasses

    stored = bundle.results["alone"]["attn"]
    served = serving_only(Explorer(bundle)).alone("attn")  # served, not recomputed
    assert served["curve"] == stored["curve"] and served["interference"]["same_zero_shot"]
    broken = {**bundle.results, "alone": {"attn": {**stored, "curve": [{"alpha": 0.0}]}}}  # no row at the chosen α
    fresh = Explorer(dataclasses.replace(bundle, results=broken)).alone("attn")
    assert fresh["curve"] == stored["curve"]  # computed: what was stored
    assert fresh["interference"] == served["interference"]


def test_addition_ready_says_whether_a_sweep_is_served_without_computing(bundle):
    ex = Explorer(bundle)
    sub = [TASKS[1], TASKS[0]]  # another selection, in any order
    assert ex.addition_ready("attn") and ex.addition_ready("attn", list(reversed(TASKS)))  # the stored sweep
    assert not ex.addition_ready("attn", sub) and not ex.addition_ready("attn", method="ties")
    assert not ex.addition_ready("full", sub)
    ex.addition("attn", sub)  # swept once ...
    assert ex.addition_ready("attn", sub[::-1]) and serving_only(ex).addition("attn", sub)  # ... then served
    assert not ex.addition_ready("full", sub)  # per mode


def test_explorer_serves_the_stored_pair_costs_only_where_they_answer_the_request(bundle):
    import dataclasses

    stored = bundle.results["pairs"]["attn"]
    ex = Explorer(bundle)
    assert ex.pairs_stored("attn") and serving_only(Explorer(bundle)).pairs("attn") == stored  # served
    sub = list(TASKS[:2])  # another set of tasks: computed, and equal to the stored matrix's block
    assert not ex.pairs_stored("attn", sub)
    vs = bundle.vectors["attn"]
    assert ex.pairs("attn", sub) == pair_costs(bundle.evaluator(), {t: vs[t] for t in sub}, ex.addition("attn", sub)["alpha"])
    for broken in ({**stored, "cost": stored["cost"][:1]},  # not n × n
                   {**stored, "alpha": stored["alpha"] + 0.05}):  # not at the addition's chosen α
        other = Explorer(dataclasses.replace(bundle, results={**bundle.results, "pairs": {"attn": broken}}))
        assert not other.pairs_stored("attn")
        fresh = other.pairs("attn")
        assert fresh == stored  # computed past it: what was stored


def test_explorer_extra_vectors_are_per_call(bundle):
    ex = Explorer(bundle)
    tv = bundle.vectors["attn"][TASKS[0]]
    mine = 2.0 * tv
    with_extra = ex.evaluate("attn", {"mine": 1.0}, extra={"mine": mine})
    assert "mine" not in ex.vectors("attn")
    assert with_extra["accuracy"] == ex.evaluator().evaluate([tv], [2.0], "test")


def test_round_coefs():
    assert round_coefs({"b": 0.123456, "a": 0.0, "c": -1}) == (("b", 0.1235), ("c", -1.0))


def test_xi_grids_use_the_bundles_xi_subset(bundle):
    import dataclasses

    manifest = {**bundle.manifest, "plan": {**bundle.manifest.get("plan", {}), "xi_eval_n": 10}}
    ex = Explorer(dataclasses.replace(bundle, manifest=manifest))
    pre = bundle.results["disentanglement"]["attn"][f"{TASKS[0]}|{TASKS[1]}"]
    assert serving_only(Explorer(dataclasses.replace(bundle, manifest=manifest))).xi(
        "attn", TASKS[0], TASKS[1], alphas=pre["alpha1"]) == pre
    fresh = ex.xi("attn", TASKS[1], TASKS[2], alphas=[-1.0, 0.0, 1.0])
    assert fresh["images_per_task"] == [10, 10]
    capped = Explorer(dataclasses.replace(bundle, manifest=manifest), max_per_task=6)
    assert capped.xi("attn", TASKS[1], TASKS[2], alphas=[0.0, 1.0])["images_per_task"] == [6, 6]


def test_resident_vectors_are_kept_by_uid_within_their_byte_budget_and_merge_as_the_originals(bundle):
    """The GPU's kept copies of task vectors (Evaluator.resident), exercised on the CPU with an explicit budget: the
    same uid and values, kept least-recently-used within vector_cache_mb, results equal to merging the originals,
    the originals untouched; a request that does not fit is merged from the originals (no thrashing); the CPU
    default keeps nothing, in the one cache per device that every evaluator shares."""
    vs = list(bundle.vectors["full"].values())
    one = max(vector_bytes(v) for v in vs)
    before = {k: t.clone() for k, t in vs[0].tensors.items()}
    plain = Evaluator(bundle.base, bundle.heads, bundle.data)
    assert plain._vectors is shared_vector_cache("cpu") is Explorer(bundle).evaluator(8)._vectors
    assert plain._vectors.max_bytes == 0 and plain.resident(vs)[0] is vs[0]  # nothing copied on the CPU by default
    ev = Evaluator(bundle.base, bundle.heads, bundle.data, vector_cache_mb=2.5 * one / 2**20)  # room for two
    assert ev._vectors is not plain._vectors
    first = ev.resident(vs[:2])
    assert [c.uid for c in first] == [v.uid for v in vs[:2]] and all(c is not v for c, v in zip(first, vs))
    assert all(torch.equal(c.tensors[k], v.tensors[k]) for c, v in zip(first, vs) for k in v.tensors)
    assert len(ev._vectors) == 2 and ev._vectors.nbytes <= ev._vectors.max_bytes
    assert ev.resident(vs[1:2])[0] is first[1]  # kept: the same copy again
    assert ev.resident(vs) == vs and len(ev._vectors) == 2  # three do not fit: the originals, the cache unchanged
    coefs = [0.3, -0.7, 1.2]
    assert ev.evaluate(vs[:2], coefs[:2], "test") == plain.evaluate(vs[:2], coefs[:2], "test")
    assert ev.evaluate(vs, coefs, "test") == plain.evaluate(vs, coefs, "test")
    assert all(torch.equal(vs[0].tensors[k], t) for k, t in before.items())


def test_linearized_model_stays_fp32_under_autocast(bundle, ev):
    """f(x; θ0) + Σ λ J τ is fp32 whatever ``autocast`` says: autocast's rounding of f(x; θ0) would otherwise be
    added to fp32 J τ terms that, with small task vectors, are no larger than it.  The non-linear passes do run
    under autocast."""
    low = Evaluator(bundle.base, bundle.heads, bundle.data, autocast="bf16")
    assert torch.equal(low.f0("test"), ev.f0("test"))
    vs, coefs = list(bundle.vectors["linear"].values()), [0.7, -0.4, 1.1]
    assert torch.equal(low.merged_features(vs, coefs, "test"), ev.merged_features(vs, coefs, "test"))
    assert low.zeroshot("test") == ev.zeroshot("test") == low.evaluate([], [], "test")  # θ0 is one model, λ = 0 too
    tv = bundle.vectors["attn"][TASKS[0]]
    assert not torch.equal(low.features(None, "test"), ev.features(None, "test"))  # bf16 matrix products
    assert not torch.equal(low.merged_features([tv], [1.0], "test"), ev.merged_features([tv], [1.0], "test"))


def test_explorer_autocast_computes_under_autocast_and_serves_stored_results_as_stored(bundle, monkeypatch):
    """``Explorer(autocast=...)`` (the app's $ARITH_AUTOCAST): computed requests go through an autocast evaluator,
    stored ones are the bundle's; a bad value is refused before anything loads, in the engine and in the app."""
    import ui.state

    ex, exact = Explorer(bundle, autocast="bf16"), Explorer(bundle)
    assert ex.evaluator().autocast == "bf16" and exact.evaluator().autocast is None
    tasks = ex.tasks
    assert ex.evaluate("attn", {t: 0.3 for t in tasks}) == exact.evaluate("attn", {t: 0.3 for t in tasks})  # stored row
    got = ex.evaluate("attn", {tasks[0]: 0.7, tasks[1]: -0.2})["accuracy"]
    want = exact.evaluate("attn", {tasks[0]: 0.7, tasks[1]: -0.2})["accuracy"]
    assert set(got) == set(want) and all(abs(got[t] - want[t]) <= 0.1 for t in got)
    with pytest.raises(ValueError, match="autocast must be None, 'fp16' or 'bf16', got 'fp8'"):
        Explorer(bundle, autocast="fp8")
    for value, parsed in (("", None), ("fp32", None), ("BF16", "bf16"), ("fp16", "fp16")):
        monkeypatch.setenv("ARITH_AUTOCAST", value)
        assert ui.state.preferred_autocast() == parsed
    monkeypatch.setenv("ARITH_AUTOCAST", "half")
    with pytest.raises(ValueError, match="ARITH_AUTOCAST must be bf16, fp16 or fp32"):
        ui.state.preferred_autocast()


def test_untouched_tasks_are_those_no_vector_with_a_coefficient_edits():
    from arith.metrics import untouched

    acc, zs = {"a": 0.9, "b": 0.5, "c": 0.7}, {"a": 0.6, "b": 0.6, "c": 0.8}
    task_of = {"a": "a", "b": "b", "mine (a)": "a"}
    left = untouched(acc, zs, {"a": 0.5, "b": 0.0}, task_of)
    assert left["tasks"] == ["b", "c"] and left["absolute"] == pytest.approx(0.6)
    assert left["zeroshot"] == pytest.approx(0.7) and left["change"] == pytest.approx(-0.1)
    assert untouched(acc, zs, {"mine (a)": 1.0}, task_of)["tasks"] == ["b", "c"]  # a workspace vector's own task
    assert untouched(acc, zs, {"a": 0.0}, task_of) is None  # nothing edited: θ0 itself
    assert untouched(acc, zs, {"a": 1.0, "b": 1.0, "c": -1.0}, {**task_of, "c": "c"}) is None  # every task edited
