"""arith.export (merged weights, coefficient sets) and the Explorer helpers the app uses."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open

from arith.build import similarity_table
from arith.explore import Explorer
from arith.explore_diagnostics import _reordered
from arith.export import coefficient_set, merged_safetensors, merged_state, parse_coefficient_set
from arith.models import fingerprint

from conftest import serving_only

S, C, Q = "synthetic-stripes", "synthetic-colours", "synthetic-quadrants"


def test_merged_weights_are_theta0_plus_the_weighted_vectors(bundle, tmp_path):
    base, vs = bundle.base, bundle.vectors["attn"]
    before = fingerprint(base.params)
    coefs = {S: 0.5, C: -1.25, Q: 0.0}
    data = merged_safetensors(base.params, vs, coefs, base_id=base.id, mode="attn")
    path = tmp_path / "m.safetensors"
    path.write_bytes(data)
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
        got = {k: fh.get_tensor(k) for k in fh.keys()}
    assert set(got) == set(base.params)
    for k, t0 in base.params.items():
        want = t0 + 0.5 * vs[S].tensors[k] - 1.25 * vs[C].tensors[k] if k in vs[S].tensors else t0
        assert torch.allclose(got[k], want, atol=1e-6), k
    assert meta["arith.kind"] == "merged_model" and meta["arith.base_model"] == base.id
    assert meta["arith.mode"] == "attn" and meta["arith.linearized"] == "false"
    assert json.loads(meta["arith.coefficients"]) == coefs
    spelled = merged_safetensors(base.params, vs, coefs, base_id=base.id, mode="attn", method="ties: scope=tensor")
    path.write_bytes(spelled)
    with safe_open(str(path), "pt") as fh:  # a merge method is recorded in its canonical spelling
        assert fh.metadata()["arith.method"] == "ties"
    assert fingerprint(base.params) == before  # θ0 untouched
    lin = merged_safetensors(base.params, bundle.vectors["linear"], {S: 1.0}, base_id=base.id, mode="linear")
    assert b'"arith.linearized":"true"' in lin[:4096]


def test_merged_state_refuses_unknown_names_and_zero_is_theta0(bundle):
    base, vs = bundle.base, bundle.vectors["full"]
    with pytest.raises(KeyError, match="nope"):
        merged_state(base.params, vs, {"nope": 1.0})
    same = merged_state(base.params, vs, {S: 0.0})
    assert all(torch.equal(same[k], v) for k, v in base.params.items())


def test_coefficient_sets_round_trip_and_bad_ones_are_refused(bundle):
    vs = bundle.vectors["attn"]
    rec = coefficient_set(bundle="tiny", base_id=bundle.base.id, mode="attn", coefs={S: 0.3, C: -0.7}, vectors=vs)
    assert rec["vectors"][S]["uid"] == vs[S].uid and rec["vectors"][C]["task"] == C
    back = parse_coefficient_set(json.dumps(rec).encode(), bundle.base.id)
    assert back["coefficients"] == {S: 0.3, C: -0.7} and back["mode"] == "attn"
    cases = {
        b"\xff\xfe": "UTF-8",
        "{not json": "invalid JSON",
        json.dumps({"format": "other"}): "not a coefficient set",
        json.dumps({**rec, "format_version": "9"}): "format version",
        json.dumps({**rec, "base_model": "elsewhere"}): "base model",
        json.dumps({**rec, "mode": "sideways"}): "unknown mode",
        json.dumps({**rec, "method": "average"}): "unknown merge method",
        json.dumps({**rec, "coefficients": [1, 2]}): "must be an object",
        json.dumps({**rec, "coefficients": {S: "1"}}): "non-numeric",
        json.dumps({**rec, "coefficients": {S: True}}): "non-numeric",
    }
    for data, fragment in cases.items():
        with pytest.raises(ValueError, match=fragment):
            parse_coefficient_set(data, bundle.base.id)
    with pytest.raises(ValueError, match="non-finite"):
        parse_coefficient_set({**rec, "coefficients": {S: math.inf}})
    with pytest.raises(KeyError):
        coefficient_set(bundle="tiny", base_id=bundle.base.id, mode="attn", coefs={"nope": 1.0}, vectors=vs)


# -- Explorer helpers ---------------------------------------------------------------------------------------------
@pytest.fixture
def ex(bundle):
    return Explorer(bundle)


def test_cached_xi_serves_precomputed_and_memoised_grids_only(ex, bundle):
    pre = bundle.results["disentanglement"]["attn"]
    pair = next(iter(pre))
    a, b = pair.split("|")
    grid = pre[pair]["alpha1"]
    assert ex.cached_xi("attn", a, b, grid) == pre[pair]
    flipped = ex.cached_xi("attn", b, a, grid)
    assert flipped["tasks"] == [b, a] and flipped["prediction"][1][0] == pre[pair]["prediction"][0][1]
    assert ex.cached_xi("attn", C, Q, grid) is None  # not precomputed, not computed yet
    computed = ex.xi("attn", C, Q, grid)
    assert ex.cached_xi("attn", C, Q, grid) == computed
    half = {"half": bundle.vectors["attn"][C].scale(0.5)}
    assert ex.cached_xi("attn", "half", Q, grid, extra=half) is None
    done = ex.xi("attn", "half", Q, grid, extra=half)
    assert ex.cached_xi("attn", "half", Q, grid, extra=half) == done


def test_vector_stats_and_similarity(ex, bundle):
    stats = ex.vector_stats("attn")
    tv = bundle.vectors["attn"][S]
    assert stats[S]["norm"] == pytest.approx(tv.norm()) and stats[S]["parameters"] == tv.numel
    assert stats[S]["blocks"] == pytest.approx(tv.block_norms())
    served, stored = serving_only(Explorer(bundle)).similarity(), bundle.results["similarity"]  # precomputed: served
    names = {m: list(bundle.vectors[m]) for m in bundle.vectors}  # in the bundle's task order, stored alphabetically
    assert served == _reordered(stored, names) and stored["by_mode"]["attn"]["labels"] == sorted(names["attn"])
    extra = {"neg": -bundle.vectors["attn"][S]}
    sim = ex.similarity(["attn"], extra)
    assert sim["all"]["labels"][-1] == "attn/neg"
    i, j = sim["all"]["labels"].index(f"attn/{S}"), sim["all"]["labels"].index("attn/neg")
    assert sim["all"]["cosine"][i][j] == pytest.approx(-1.0)
    assert sim == similarity_table({"attn": ex.vectors("attn", extra)})
    assert serving_only(ex).similarity(["attn"], extra) == sim  # memoised


def test_an_extra_vector_of_a_bundle_task_does_not_replace_its_normaliser(ex, bundle):
    ft = ex.finetuned("attn", "test")
    weak = {"weak": bundle.vectors["attn"][S].scale(0.01)}
    assert ex.finetuned("attn", "test", extra=weak) == ft
    same_name = {S: bundle.vectors["attn"][S].scale(0.01)}  # named after the task: it replaces the bundle's
    assert ex.finetuned("attn", "test", extra=same_name)[S] == ex.evaluate("attn", {S: 0.01}, tasks=[S])["accuracy"][S]


def test_the_example_file_script_makes_a_vector_valid_for_its_bundle(bundle_dir, bundle, tmp_path, capsys):
    import importlib.util

    from arith.taskvec import load_task_vector

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("make_example", ROOT / "assets" / "make_example.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "example.safetensors"
    assert mod.make(bundle_dir, out) == 0
    tv = load_task_vector(out, bundle.base)
    assert (tv.task, tv.mode) == (bundle.task_names[0], "attn") and tv.meta["arith.seed"] == "1"
    assert tv.uid != bundle.vectors["attn"][tv.task].uid


# -- from a review of the protocols, the Explorer and export as a notebook user meets them ----------------------------
def test_merged_weights_are_the_callers_own_and_their_metadata_cannot_contradict_them(bundle):
    base, vs = bundle.base, bundle.vectors["attn"]
    before = fingerprint(base.params)
    with pytest.raises(ValueError, match="λ: 'synthetic-stripes' has a non-numeric or non-finite value True"):
        merged_state(base.params, vs, {S: True})
    state = merged_state(base.params, vs, {S: 0.5})
    for t in state.values():
        t.mul_(0)  # untouched entries were θ0's own storage: this zeroed the shared θ0
    assert fingerprint(base.params) == before
    lin = bundle.vectors["linear"]
    for kwargs, said in (({"mode": "attn"}, "is a linear vector: the file cannot say it is mode .attn."),
                         ({"mode": "atn"}, "unknown mode"), ({"mode": "linear", "base_id": "other"}, "made for the base")):
        with pytest.raises(ValueError, match=said):
            merged_safetensors(base.params, lin, {S: 0.5}, **{"base_id": base.id, **kwargs})


def test_coefficient_sets_refuse_what_json_cannot_carry(bundle):
    vs = bundle.vectors["attn"]
    for bad in (math.nan, math.inf, True):
        with pytest.raises(ValueError, match="non-numeric or non-finite"):
            coefficient_set(bundle="b", base_id="x", mode="attn", coefs={S: bad}, vectors=vs)
    record = coefficient_set(bundle="b", base_id="x", mode="attn", coefs={S: 0.5}, vectors=vs)
    for big in ("1" * 401, "1" * 5001):  # beyond float's range; beyond Python's digit limit for int()
        text = json.dumps(record).replace("0.5", big)
        with pytest.raises(ValueError, match="not a coefficient set|non-numeric or non-finite"):
            parse_coefficient_set(text)


def test_one_task_name_is_a_task_and_an_empty_selection_is_an_error(ex):
    a, b = ex.tasks[:2]
    assert ex.evaluate("attn", {a: 0.3}, tasks=a) == ex.evaluate("attn", {a: 0.3}, tasks=[a])
    assert ex.addition("attn", a)["tasks"] == [a] and ex.pairs("attn", [a, b])["tasks"] == [a, b]
    assert ex.negation("attn", a, b)["control"] == ex.negation("attn", a, [b])["control"]
    for call in (lambda: ex.evaluate("attn", {a: 0.3}, tasks=[]), lambda: ex.addition("attn", []),
                 lambda: ex.pairs("attn", [])):
        with pytest.raises(ValueError, match="no tasks selected"):
            call()
    with pytest.raises(TypeError, match="mapping vector name -> λ"):
        ex.evaluate("attn", [0.3, 0.3, 0.3])
    res = ex.evaluate("attn_bias", {})  # a mode without vectors: nothing to normalise by, said as None
    assert res["normalized"] is None and res["absolute"] == pytest.approx(sum(ex.zeroshot().values()) / len(ex.tasks))


def test_alpha_grids_and_the_protocols_refuse_grids_they_cannot_use(ex, bundle):
    from arith.protocols import alpha_grid, task_addition, task_negation

    assert alpha_grid(step=0.025)[:4] == (0.0, 0.025, 0.05, 0.075) and len(set(alpha_grid(step=0.001))) == 1001
    assert alpha_grid() == tuple(round(0.05 * i, 2) for i in range(21))
    for step in (0, -0.1, math.nan):
        with pytest.raises(ValueError, match="step must be a positive number"):
            alpha_grid(step=step)
    ev, vs = bundle.evaluator(), bundle.vectors["attn"]
    with pytest.raises(ValueError, match="at least one task vector"):
        task_addition(ev, {})
    with pytest.raises(ValueError, match="at least one coefficient"):
        task_addition(ev, vs, alphas=[])
    with pytest.raises(ValueError, match="finite, non-negative"):
        task_negation(ev, vs[S], S, [C], alphas=[-1.0, 0.5])  # θ0 − (−1)τ adds τ: no negation


def test_a_vector_asked_for_in_another_mode_is_said_to_be_there(ex, bundle):
    mine = bundle.vectors["attn"][S].scale(0.5)
    with pytest.raises(KeyError, match="'mine' is a vector of mode attn, shown there"):
        ex.evaluate("full", {"mine": 1.0}, extra={"mine": mine})


def test_export_takes_numpy_and_torch_numbers_and_refuses_a_mode_its_vectors_are_not(bundle):
    import numpy as np

    base, vs = bundle.base, bundle.vectors["attn"]
    ref = merged_state(base.params, vs, {S: 0.5})
    for lam in (np.float32(0.5), torch.tensor(0.5), np.float64(0.5)):
        got = merged_state(base.params, vs, {S: lam})
        assert all(torch.equal(got[k], ref[k]) for k in ref)
    with pytest.raises(ValueError, match="is a attn vector: the file cannot say it is mode 'mlp'"):
        merged_safetensors(base.params, vs, {S: 0.5}, base_id=base.id, mode="mlp")
    with pytest.raises(ValueError, match="λ: 'synthetic-stripes' has a non-numeric or non-finite value 'abc'"):
        merged_safetensors(base.params, vs, {S: "abc"}, base_id=base.id, mode="attn")
    assert merged_safetensors(base.params, bundle.vectors["full"], {S: 0.5}, base_id=base.id, mode="full@attn")
    with pytest.raises(ValueError, match="an integer of"):
        merged_state(base.params, vs, {S: 10**5000})


def test_negation_takes_one_control_name(bundle):
    from arith.protocols import task_negation

    ev, vs = bundle.evaluator(), bundle.vectors["attn"]
    assert task_negation(ev, vs[S], S, C, alphas=[0.0, 0.5]) == task_negation(ev, vs[S], S, [C], alphas=[0.0, 0.5])
