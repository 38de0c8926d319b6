"""Merge invariants (DEVELOPERS.md "Correctness first")."""

import pytest
import torch

from arith.merge import MERGE_METHODS, apply_delta, combine, merge
from arith.taskvec import TaskVector


def _vec(base, seed, mode="full", scale=1e-2, task=None):
    g = torch.Generator().manual_seed(seed)
    from arith.modes import get_mode

    m = get_mode(mode)
    t = {k: scale * torch.randn(v.shape, generator=g) for k, v in base.params.items() if m.trains(k)}
    return TaskVector(t, task or f"t{seed}", mode, base.id)


def _x(n=6):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(9))


def test_zero_coefficients_give_the_base_exactly(base):
    vs = [_vec(base, 1), _vec(base, 2)]
    params = merge(base.params, vs, [0.0, 0.0])
    assert all(params[k] is base.params[k] for k in base.params)
    x = _x()
    assert torch.equal(base.features(params, x), base.features(None, x))


def test_one_task_at_one_gives_the_finetuned_model(base):
    tv = _vec(base, 3)
    theta_t = {k: base.params[k] + tv.tensors[k] for k in base.params}
    x = _x()
    assert torch.allclose(base.features(merge(base.params, [tv], [1.0]), x), base.features(theta_t, x), atol=1e-6)


def test_merged_parameters_are_linear_in_the_coefficients(base):
    v1, v2 = _vec(base, 4), _vec(base, 5)
    a = combine([v1, v2], [0.3, -0.7])
    b = combine([v1, v2], [0.5, 0.2])
    ab = combine([v1, v2], [0.8, -0.5])
    for k in ab:
        assert torch.allclose(a[k] + b[k], ab[k], atol=1e-7)
    twice = combine([v1, v2], [0.6, -1.4])
    for k in twice:
        assert torch.allclose(2 * a[k], twice[k], atol=1e-7)


def test_negation_undoes_addition_and_order_does_not_matter(base):
    v1, v2 = _vec(base, 6), _vec(base, 7)
    d = combine([v1, v1], [0.4, -0.4])
    assert all(torch.allclose(t, torch.zeros_like(t), atol=1e-8) for t in d.values())
    d12, d21 = combine([v1, v2], [0.3, 0.9]), combine([v2, v1], [0.9, 0.3])
    assert all(torch.allclose(d12[k], d21[k], atol=1e-7) for k in d12)


def test_merging_never_mutates_inputs(base):
    v1, v2 = _vec(base, 8, "attn"), _vec(base, 9, "mlp")
    snap = {k: t.clone() for k, t in {**base.params, **{f"1{k}": t for k, t in v1.tensors.items()}}.items()}
    params = merge(base.params, [v1, v2], [1.5, -2.0])
    for k, t in base.params.items():
        assert torch.equal(t, snap[k])
    for k, t in v1.tensors.items():
        assert torch.equal(t, snap[f"1{k}"])
    touched = set(v1.tensors) | set(v2.tensors)
    assert all(params[k] is base.params[k] for k in base.params if k not in touched)


def test_attention_only_merge_touches_only_attention(base):
    v = _vec(base, 10, "attn")
    params = merge(base.params, [v], [1.0])
    changed = {k for k in base.params if not torch.equal(params[k], base.params[k])}
    assert changed == set(v.tensors)
    assert all(".attn." in k for k in changed)


def test_bad_merges_are_refused(base):
    v = _vec(base, 11)
    with pytest.raises(ValueError, match="coefficients"):
        combine([v], [1.0, 2.0])
    lin = TaskVector(dict(v.tensors), "x", "linear", base.id)
    with pytest.raises(ValueError, match="linearized"):
        combine([v, lin], [1.0, 1.0])
    with pytest.raises(ValueError, match="unknown merge method"):
        combine([v], [1.0], "nope")


def test_ties_keeps_sign_consensus(base):
    v1, v2 = _vec(base, 12), _vec(base, 13)
    d = combine([v1, v2], [1.0, 1.0], "ties")
    k = next(iter(d))
    stack = torch.stack([v1.tensors[k], v2.tensors[k]])
    nz = d[k] != 0
    # every kept entry has the sign of the elected direction and no larger magnitude than the inputs
    assert nz.float().mean() <= 0.4 + 1e-6
    assert (d[k][nz].abs() <= stack.abs().max(0).values[nz] + 1e-7).all()
    # nothing trimmed: the elected sign is that of the sum, and only the entries agreeing with it are averaged
    full = combine([v1, v2], [1.0, 1.0], "ties", density=1.0)[k]
    elected = torch.sign(stack.sum(0))
    agree = (torch.sign(stack) == elected) & (stack != 0)
    expect = (stack * agree).sum(0) / agree.sum(0).clamp(min=1)
    assert torch.allclose(full, expect, atol=1e-7) and (torch.sign(full) * elected >= 0).all()
    assert combine([v1], [0.0], "ties") == {}


def test_vectors_that_cannot_be_merged_together_are_refused(base):
    v1, v2 = _vec(base, 1), _vec(base, 2)
    other = TaskVector(dict(v2.tensors), "t2", "full", "another base")
    lin = TaskVector(dict(v2.tensors), "t2", "linear", base.id)
    for method in MERGE_METHODS:  # every registered method, one added later too
        with pytest.raises(ValueError, match="different base models"):
            combine([v1, other], [1.0, 1.0], method)
        with pytest.raises(ValueError, match="linearized-mode and non-linear"):
            combine([v1, lin], [1.0, 1.0], method)
    for op in (lambda a, b: a + b, lambda a, b: a - b):
        with pytest.raises(ValueError, match="linearized-mode vector with a non-linear one"):
            op(v1, lin)
        with pytest.raises(ValueError, match="different bases"):
            op(v1, other)


@pytest.mark.parametrize(("options", "match"), [({"density": 0.0}, "density"), ({"density": 1.5}, "density"),
                                                ({"scope": "layer"}, "scope")])
def test_ties_options_given_as_keywords_are_checked(base, options, match):
    """Keyword options skip the spec parser: the method's own checks are the only guard."""
    with pytest.raises(ValueError, match=match):
        combine([_vec(base, 1)], [1.0], "ties", **options)


def test_apply_delta_builds_new_tensors(base):
    k = next(iter(base.params))
    delta = {k: torch.ones_like(base.params[k])}
    out = apply_delta(base.params, delta)
    assert out[k] is not base.params[k] and torch.allclose(out[k] - base.params[k], delta[k])


# -- method specs: a method with its options in one string (CLI --method, links, coefficient sets, cache keys) --------
def test_method_specs_are_canonical_and_checked():
    from arith.merge import canonical_method, is_method, method_label, method_spec, parse_method

    assert canonical_method("ties") == canonical_method("ties:density=0.2,scope=tensor") == "ties"
    assert canonical_method(" ties: scope=vector , density=0.50 ") == "ties:density=0.5,scope=vector"
    assert method_spec("ties", density=0.5) == "ties:density=0.5"
    assert parse_method("ties:density=1")[1] == {"density": 1.0, "scope": "tensor"}
    assert method_label("ties:density=0.5,scope=vector") == "TIES-merging (density 0.5, trim over vector)"
    assert method_label("task_arithmetic") == "Task arithmetic" and not is_method(3)
    for spec, msg in [("nope", "unknown merge method 'nope'"), ("ties:k=3", "has no option 'k'"),
                      ("task_arithmetic:density=0.5", "'task_arithmetic' takes no options"),
                      ("ties:density", "has no option 'density'"),
                      ("ties:density=0", r"must lie in \(0, 1\]"), ("ties:density=1.5", r"\(0, 1\]"),
                      ("ties:density=nan", r"\(0, 1\]"), ("ties:density=a", "must be a number"),
                      ("ties:scope=layer", "one of tensor, vector"), ("ties:density=0.3,density=0.4", "given twice")]:
        with pytest.raises(ValueError, match=msg):
            parse_method(spec)
        assert not is_method(spec)
    with pytest.raises(ValueError, match="has no option 'k'"):
        method_spec("ties", k=1)


def test_a_spec_merges_with_its_options(base):
    vs = [_vec(base, 20), _vec(base, 21), _vec(base, 22)]
    coefs = [0.4, 0.7, -0.5]
    for density, scope in [(0.5, "tensor"), (0.3, "vector")]:
        spec = f"ties:density={density},scope={scope}"
        want = combine(vs, coefs, "ties", density=density, scope=scope)
        got = combine(vs, coefs, spec)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    d5, d2 = combine(vs, coefs, "ties:density=0.5"), combine(vs, coefs, "ties")
    assert any(not torch.equal(d5[k], d2[k]) for k in d5)


def test_ties_at_full_density_on_one_vector_is_task_arithmetic(base):
    v = _vec(base, 23)
    for scope in ("tensor", "vector"):
        d = combine([v], [0.6], f"ties:density=1,scope={scope}")
        assert all(torch.allclose(d[k], 0.6 * v.tensors[k]) for k in v.tensors)


def test_ties_trims_over_the_whole_vector_or_per_tensor(base):
    # entries of very different sizes per tensor: the whole-vector trim keeps the large tensors' entries
    v = _vec(base, 24)
    sizes = {k: (10.0 if i % 2 else 0.1) for i, k in enumerate(sorted(v.tensors))}
    v = TaskVector({k: t * sizes[k] for k, t in v.tensors.items()}, "t", "full", base.id)
    total = sum(t.numel() for t in v.tensors.values())
    for scope in ("tensor", "vector"):
        d = combine([v], [1.0], f"ties:density=0.25,scope={scope}")
        kept = {k: int((d[k] != 0).sum()) for k in d}
        assert abs(sum(kept.values()) - 0.25 * total) <= len(d)  # each trim keeps round(density · entries)
        if scope == "tensor":
            assert all(abs(kept[k] - 0.25 * d[k].numel()) <= 1 for k in d)
        else:  # the small tensors lose (nearly) everything to the large ones
            small = [k for k in d if sizes[k] < 1 and d[k].numel() > 16]
            assert small and all(kept[k] < 0.05 * d[k].numel() for k in small)


def test_ties_is_homogeneous_in_a_shared_positive_coefficient(base):
    # |λ x| ≥ |λ| c ⟺ |x| ≥ c: a shared λ > 0 scales δ and moves nothing else (either scope)
    vs = [_vec(base, 25), _vec(base, 26)]
    for scope in ("tensor", "vector"):
        one, half = (combine(vs, [c, c], f"ties:scope={scope}") for c in (1.0, 0.5))
        assert all(torch.allclose(half[k], 0.5 * one[k], atol=1e-9) for k in one)


def _ties_reference(vectors, coefs, density, scope):
    """TIES written out directly: trim each scaled vector λ_t τ_t by its own top-k (kthvalue, no memo), elect, average."""
    scaled = [{k: lam * t for k, t in v.tensors.items()} for v, lam in zip(vectors, coefs) if lam != 0]

    def cut(x):  # the k-th largest magnitude of x
        keep = max(1, int(round(density * x.numel())))
        return x.abs().reshape(-1).kthvalue(x.numel() - keep + 1).values

    whole = [cut(torch.cat([t.reshape(-1) for t in s.values()])) for s in scaled]
    out = {}
    for k in sorted({k for s in scaled for k in s}):
        trimmed = torch.stack([s[k] * (s[k].abs() >= (cut(s[k]) if scope == "tensor" else whole[i]))
                               for i, s in enumerate(scaled) if k in s])
        sign = torch.sign(trimmed.sum(0))
        agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
        out[k] = (trimmed * agree).sum(0) / agree.sum(0).clamp(min=1)
    return out


@pytest.mark.parametrize("scope", ["tensor", "vector"])
def test_ties_with_memoised_thresholds_matches_a_direct_implementation(base, scope):
    vs = [_vec(base, 30), _vec(base, 31, mode="attn"), _vec(base, 32)]
    for coefs in ([0.7, 0.3, -0.45], [1.3, 0.0, 0.1]):
        for density in (0.2, 0.55, 1.0):  # at 1 the trim is skipped: the same values
            got = combine(vs, coefs, f"ties:density={density},scope={scope}")
            want = _ties_reference(vs, coefs, density, scope)
            assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert vs[0]._thresholds  # memoised on the vector ...
    n = vs[0].numel
    flat = torch.cat([t.reshape(-1) for t in vs[0].tensors.values()]).abs()
    assert vs[0].top_threshold(0.2) == float(flat.kthvalue(n - round(0.2 * n) + 1).values)  # ... and exact
    assert int((flat >= vs[0].top_threshold(0.2)).sum()) == round(0.2 * n)  # the top 20 % of entries, no more


def test_canonical_specs_are_idempotent_and_write_the_number_they_use():
    from arith.merge import canonical_method, parse_method

    for spec in ("ties:density=0.2000001", "ties:density=0.1999999999", "ties:density=0.30000000000000004",
                 "ties:density=0.123456789,scope=vector", "ties:density=1e-3", " ties :density=.5"):
        once = canonical_method(spec)
        assert canonical_method(once) == once
        assert parse_method(once)[1] == parse_method(spec)[1]  # the spec written is the merge computed
    assert canonical_method("ties:density=0.2000001") == canonical_method("ties") == "ties"
    assert canonical_method("ties:density=0.30000000000000004") == "ties:density=0.3"
    # at density 1 nothing is trimmed: the scope does not matter, and one spec names both
    assert canonical_method("ties:density=1,scope=vector") == canonical_method("ties:density=1") == "ties:density=1"
    assert canonical_method("ties:density=0.99,scope=vector") == "ties:density=0.99,scope=vector"


def test_each_method_searches_its_own_alpha_grid():
    from arith.protocols import ALPHAS, TUNE_GRID, alpha_grid

    assert alpha_grid() == ALPHAS and len(ALPHAS) == 21 and ALPHAS[-1] == 1.0
    assert alpha_grid(step=0.1) == TUNE_GRID and len(TUNE_GRID) == 11
    ties = alpha_grid("ties:density=0.5")  # options do not move the grid; the record's alpha_max does
    assert len(ties) == 41 and ties[:21] == ALPHAS and ties[-1] == 2.0 and len(alpha_grid("ties", 0.1)) == 21


def test_at_full_density_the_trim_scope_is_moot(base):
    from arith.merge import MERGE_METHODS

    vs = [_vec(base, 40), _vec(base, 41, mode="attn"), _vec(base, 42)]
    coefs = [0.8, -0.6, 0.3]
    whole, per = combine(vs, coefs, "ties:density=1,scope=vector"), combine(vs, coefs, "ties:density=1,scope=tensor")
    assert whole.keys() == per.keys() and all(torch.equal(whole[k], per[k]) for k in whole)  # so one spec names both
    ties = MERGE_METHODS["ties"]
    assert ties.moot({"density": 1.0, "scope": "vector"}, "scope") and not ties.moot({"density": 0.9}, "scope")
    assert not ties.moot({"density": 1.0, "scope": "tensor"}, "density")  # no other value makes the density moot
    assert not MERGE_METHODS["task_arithmetic"].options


# -- DARE: random drops, rescaled, added ------------------------------------------------------------------------------
def test_dare_drops_and_rescales_each_entry(base):
    v = _vec(base, 50)
    d = combine([v], [0.7], "dare:density=0.3,seed=4")
    kept, n = 0, 0
    for k, t in v.tensors.items():
        nz = d[k] != 0
        # every entry is either dropped (exactly 0) or λ τ / density
        assert torch.allclose(d[k][nz], t[nz] * (0.7 / 0.3), rtol=1e-6)
        assert torch.equal(nz, v.dare_mask(0.3, 4, k) & (t != 0))
        kept, n = kept + int(nz.sum()), n + t.numel()
    # Binomial(n, 0.3): a kept share more than 5 standard deviations off would mean a wrong keep probability
    assert abs(kept - 0.3 * n) < 5 * (n * 0.3 * 0.7) ** 0.5


def test_dare_at_full_density_is_task_arithmetic_exactly_and_the_seed_is_moot(base):
    from arith.merge import MERGE_METHODS, canonical_method

    vs, coefs = [_vec(base, 51), _vec(base, 52, mode="attn")], [0.6, -1.1]
    ta = combine(vs, coefs)
    for seed in (0, 7):
        d = combine(vs, coefs, f"dare:density=1,seed={seed}")
        assert d.keys() == ta.keys() and all(torch.equal(d[k], ta[k]) for k in d)
    assert canonical_method("dare:density=1,seed=7") == "dare:density=1"
    dare = MERGE_METHODS["dare"]
    assert dare.moot({"density": 1.0, "seed": 3}, "seed") and not dare.moot({"density": 0.5, "seed": 3}, "seed")
    assert not dare.moot({"density": 1.0, "seed": 3}, "density")


def test_dare_masks_follow_the_seed_and_the_content_not_the_order(base):
    v1, v2, v3 = _vec(base, 53), _vec(base, 54), _vec(base, 55, mode="attn")
    spec = "dare:density=0.4,seed=2"
    a = combine([v1, v2, v3], [0.5, 0.3, -0.2], spec)
    b = combine([v3, v1, v2], [-0.2, 0.5, 0.3], spec)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-7) for k in a)
    # the same content draws the same masks (a fresh object, nothing memoised), another seed other masks
    twin = TaskVector({k: t.clone() for k, t in v1.tensors.items()}, "other name", v1.mode, v1.base_id)
    k = next(iter(v1.tensors))
    assert torch.equal(twin.dare_mask(0.4, 2, k), v1.dare_mask(0.4, 2, k))
    assert not torch.equal(v1.dare_mask(0.4, 3, k), v1.dare_mask(0.4, 2, k))
    assert not torch.equal(v2.dare_mask(0.4, 2, k), v1.dare_mask(0.4, 2, k))  # each vector drops its own entries


def test_dare_is_linear_in_the_coefficients_for_fixed_masks(base):
    vs = [_vec(base, 56), _vec(base, 57)]
    spec = "dare:density=0.6,seed=1"
    a, b, ab = (combine(vs, c, spec) for c in ([0.3, -0.7], [0.5, 0.2], [0.8, -0.5]))
    assert all(torch.allclose(a[k] + b[k], ab[k], atol=1e-7) for k in ab)
    assert combine(vs, [0.0, 0.0], spec) == {}


def test_dare_averages_to_task_arithmetic_over_seeds(base):
    # E[m ⊙ τ / p] = τ: the mean over seeds converges to task arithmetic's δ, entry by entry (with the masks' noise)
    v = _vec(base, 58)
    ta = combine([v], [1.0])
    seeds = 200
    mean = {k: sum(combine([v], [1.0], f"dare:density=0.5,seed={s}")[k] for s in range(seeds)) / seeds for k in ta}
    for k in ta:
        # each entry's mean is τ times (2 · Binomial(200, 0.5) / 200), whose sd is 1/sqrt(200) ≈ 0.071
        ratio = (mean[k] / ta[k])[ta[k].abs() > 1e-6]
        assert abs(float(ratio.mean()) - 1.0) < 0.05 and float((ratio - 1).abs().max()) < 0.5


def test_dare_options_are_checked(base):
    from arith.merge import dare, parse_method

    v = _vec(base, 59)
    for spec, msg in [("dare:seed=1.5", "whole number"), ("dare:seed=-1", "whole number from 0 to 999"),
                      ("dare:density=0", r"must lie in \(0, 1\]"), ("dare:scope=vector", "has no option 'scope'")]:
        with pytest.raises(ValueError, match=msg):
            parse_method(spec)
    with pytest.raises(ValueError, match="seed"):
        dare([v], [1.0], seed=0.5)
    with pytest.raises(ValueError, match="density"):
        dare([v], [1.0], density=1.5)
    assert parse_method("dare:seed=12")[1] == {"density": 0.5, "seed": 12} and isinstance(
        parse_method("dare:seed=12.0")[1]["seed"], int)


def test_dare_masks_are_pinned():
    """The masks' values, pinned: a change to how seeds are derived, or to torch's CPU generator, would silently
    change every DARE result (and the README's DARE table); this test says so instead."""
    tv = TaskVector({"visual.proj": torch.linspace(-1, 1, 1000).reshape(20, 50)}, "golden", "full", "b0")
    assert tv.uid == "836743daaad0a8edc7b5"
    m = tv.dare_mask(0.5, 0, "visual.proj")
    assert m.dtype == torch.bool and int(m.sum()) == 484
    assert torch.nonzero(m.reshape(-1))[:8].reshape(-1).tolist() == [0, 1, 2, 7, 8, 12, 13, 14]
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # drawn in fp32 whatever the default dtype
    try:
        fresh = TaskVector({"visual.proj": torch.linspace(-1, 1, 1000, dtype=torch.float32).reshape(20, 50)},
                           "golden", "full", "b0")
        assert torch.equal(fresh.dare_mask(0.5, 0, "visual.proj"), m)
    finally:
        torch.set_default_dtype(old)


def test_dare_is_task_arithmetic_on_the_mapped_vectors(base):
    from arith.merge import MERGE_METHODS, dare_vector

    v1, v2 = _vec(base, 60), _vec(base, 61)
    spec, coefs = "dare:density=0.4,seed=5", [0.7, -0.3]
    mapped = [dare_vector(v, 0.4, 5) for v in (v1, v2)]
    d, ta = combine([v1, v2], coefs, spec), combine(mapped, coefs)
    assert d.keys() == ta.keys() and all(torch.equal(d[k], ta[k]) for k in d)
    k = next(iter(v1.tensors))
    assert torch.equal(mapped[0].tensors[k], v1.tensors[k] * v1.dare_mask(0.4, 5, k) / 0.4)
    # a mapped vector is named by (τ, density, seed), not by hashing its tensors; at density 1 it is τ itself
    assert mapped[0].uid == dare_vector(v1, 0.4, 5).uid != dare_vector(v1, 0.4, 6).uid != v1.uid
    assert dare_vector(v1, 1.0, 5) is v1
    assert MERGE_METHODS["dare"].cached_jvp and MERGE_METHODS["task_arithmetic"].cached_jvp
    assert not MERGE_METHODS["ties"].cached_jvp


# -- DARE-TIES: DARE's drops, then TIES's election and disjoint mean ---------------------------------------------------
def test_dare_ties_elects_and_averages_the_dropped_vectors(base):
    from arith.merge import dare_vector

    vs, coefs = [_vec(base, 70), _vec(base, 71), _vec(base, 72, mode="attn")], [0.9, 0.5, -0.7]
    got = combine(vs, coefs, "dare_ties:density=0.4,seed=3")
    dropped = [dare_vector(v, 0.4, 3) for v in vs]  # the same masks as DARE's
    for k in got:  # written out: λ m ⊙ τ / p, the sign of the sum per entry, the mean of the entries that agree
        x = torch.stack([lam * d.tensors[k] for d, lam in zip(dropped, coefs) if k in d.tensors])
        sign = torch.sign(x.sum(0))
        agree = (torch.sign(x) == sign) & (x != 0)
        assert torch.equal(got[k], (x * agree).sum(0) / agree.sum(0).clamp(min=1)), k
    assert got.keys() == {k for v in vs for k in v.tensors}
    swapped = combine(vs[::-1], coefs[::-1], "dare_ties:density=0.4,seed=3")
    assert all(torch.allclose(got[k], swapped[k], atol=1e-7) for k in got)  # the order of the vectors does not matter


def test_dare_ties_at_full_density_is_untrimmed_ties(base):
    from arith.merge import canonical_method
    from arith.protocols import alpha_grid

    vs, coefs = [_vec(base, 73), _vec(base, 74)], [0.8, -0.4]
    a, b = combine(vs, coefs, "dare_ties:density=1,seed=9"), combine(vs, coefs, "ties:density=1")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert canonical_method("dare_ties:density=1,seed=9") == "dare_ties:density=1"
    assert alpha_grid("dare_ties")[-1] == 2.0 and alpha_grid("dare")[-1] == 1.0  # a mean, against DARE's sum
    with pytest.raises(ValueError, match="whole number"):
        combine(vs, coefs, "dare_ties:seed=0.5")


def test_dare_ties_on_one_vector_is_dare_and_is_never_a_sum_of_cached_jvps(base):
    from arith.merge import MERGE_METHODS, dare_ties

    v = _vec(base, 75)
    # one vector: every kept entry elects its own sign and is its own mean, so the drops are DARE's, exactly
    a, b = combine([v], [0.6], "dare_ties:density=0.3,seed=8"), combine([v], [0.6], "dare:density=0.3,seed=8")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the election is not linear: a linearized mode must compute J δ, not add cached J of the dropped vectors
    assert not MERGE_METHODS["dare_ties"].cached_jvp and MERGE_METHODS["dare_ties"].per_vector is None
    for kwargs, msg in [({"seed": 0.5}, "DARE-TIES seed"), ({"density": 0.0}, "DARE-TIES density")]:
        with pytest.raises(ValueError, match=msg):  # a direct call, past the spec's own checks
            dare_ties([v], [1.0], **kwargs)
