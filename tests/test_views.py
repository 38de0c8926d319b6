"""Mode views: a mode's vectors cut post hoc to the tensors another mode trains (``full@attn``), end to end."""

import json

import pytest
import torch

from arith.cli import main
from arith.disentangle import xi_grid
from arith.explore import Explorer
from arith.export import coefficient_set, parse_coefficient_set
from arith.merge import merge
from arith.modes import get_mode, label_of, parse_view, views_of
from arith.parts import part_rows, xi_pairs
from arith.protocols import task_addition
from arith.specs import Meta
from arith.taskvec import TaskVector, TaskVectorError

ATTN = get_mode("attn")


@pytest.fixture(scope="module")
def ev(bundle):
    return bundle.evaluator()


def zero_filled(tv: TaskVector, part) -> TaskVector:
    """The cut written out the long way: every tensor of τ kept, zeroed outside the part."""
    return TaskVector({k: t if part.trains(k) else torch.zeros_like(t) for k, t in tv.tensors.items()},
                      tv.task, tv.mode, tv.base_id)


def test_views_are_named_source_at_part_and_refuse_what_cuts_nothing():
    view = parse_view("full@attn")
    assert (view.source.name, view.part.name, view.name) == ("full", "attn", "full@attn")
    assert parse_view("attn") is None
    assert label_of("linear@mlp") == "Linearized (NTK), MLP part"
    assert label_of("attn") == "Attention-only" and label_of("nope") == "nope"
    assert views_of(["full", "attn", "linear", "mlp"]) == ["full@attn", "full@mlp", "linear@attn", "linear@mlp"]
    assert views_of(["attn", "mlp"]) == []
    for bad, says in (("full@full", "keeps the whole vector"), ("full@linear", "keeps the whole vector"),
                      ("attn@mlp", "already hold only"), ("full@nope", "unknown mode 'nope'"),
                      ("nope@attn", "unknown mode 'nope'")):
        with pytest.raises(ValueError, match=says):
            parse_view(bad)


def test_a_cut_keeps_the_parts_own_tensors_and_names_itself(bundle):
    tv = bundle.vectors["full"][bundle.task_names[0]]
    cut = tv.cut(ATTN)
    assert set(cut.tensors) == {k for k in tv.tensors if ATTN.trains(k)} and 0 < len(cut.tensors) < len(tv.tensors)
    assert all(cut.tensors[k] is tv.tensors[k] for k in cut.tensors)  # no copy: τ's own read-only tensors
    assert (cut.mode, cut.task, cut.meta[Meta.PART]) == ("full", tv.task, "attn")
    fresh = TaskVector(dict(tv.tensors), tv.task, tv.mode, tv.base_id)  # equal content, nothing memoised
    assert cut.uid != tv.uid and cut.uid == fresh.cut(ATTN).uid != tv.cut(get_mode("mlp")).uid
    assert fresh.cut(ATTN) is not cut and tv.cut(ATTN) is cut  # memoised on the vector it was cut from
    assert tv.cut("attn") is cut  # a mode's name is the mode
    with pytest.raises(ValueError, match="unknown mode 'atn'"):
        tv.cut("atn")
    # DARE draws a cut's masks as its source's: DARE of full@attn is the attention part of DARE of full
    k = next(iter(cut.tensors))
    assert torch.equal(cut.dare_mask(0.5, 3, k), tv.dare_mask(0.5, 3, k))
    assert not torch.equal(cut.dare_mask(0.5, 3, k), tv.dare_mask(0.5, 4, k))
    assert cut.norm() ** 2 == pytest.approx(sum(float(t.double().pow(2).sum()) for t in cut.tensors.values()))
    assert tv.cut(get_mode("full")) is tv  # a part that holds every tensor of τ cuts nothing
    with pytest.raises(TaskVectorError, match="holds no tensor that 'mlp' trains"):
        bundle.vectors["attn"][tv.task].cut(get_mode("mlp"))


def test_merged_weights_of_a_cut_move_only_the_part(bundle):
    tvs = [bundle.vectors["full"][t] for t in bundle.task_names[:2]]
    cuts = [tv.cut(ATTN) for tv in tvs]
    coefs = [0.7, -0.4]
    w = merge(bundle.base.params, cuts, coefs)
    for k, t0 in bundle.base.params.items():
        if ATTN.trains(k):
            torch.testing.assert_close(w[k], t0 + coefs[0] * tvs[0].tensors[k] + coefs[1] * tvs[1].tensors[k])
        else:
            assert torch.equal(w[k], t0)  # outside the part: θ0 exactly


@pytest.mark.parametrize("mode", ["full", "linear"])
def test_a_cut_evaluates_as_its_zero_filled_vector(bundle, ev, mode):
    tv = bundle.vectors[mode][bundle.task_names[0]]
    cut, long = tv.cut(ATTN), zero_filled(tv, ATTN)
    assert cut.linearized == long.linearized == (mode == "linear")
    got = ev.merged_features([cut], [0.8], "test", bundle.task_names)
    torch.testing.assert_close(got, ev.merged_features([long], [0.8], "test", bundle.task_names), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(got, ev.merged_features([tv], [0.8], "test", bundle.task_names))  # the cut matters


def test_explorer_serves_a_view_as_a_mode(bundle_dir):
    ex = Explorer.open(bundle_dir)
    assert ex.views == ["full@attn", "full@mlp", "linear@attn", "linear@mlp"]
    assert ex.catalog("full@attn") == ex.catalog("full")
    vs = ex.vectors("full@attn")
    assert vs["synthetic-stripes"] is ex.vectors("full@attn")["synthetic-stripes"]  # memoised: one uid, one cache
    assert all(set(v.tensors) == {k for k in ex.bundle.vectors["full"][t].tensors if ATTN.trains(k)}
               for t, v in vs.items())
    add = ex.addition("full@attn")
    ref = task_addition(ex.evaluator(), {t: vs[t] for t in ex.tasks})
    assert (add["alpha"], add["absolute"], add["normalized"]) == (ref["alpha"], ref["absolute"], ref["normalized"])
    # the normaliser is the cut's own single-task accuracy, not full fine-tuning's
    ft = ex.finetuned("full@attn")
    assert ft == add["finetuned"]["test"] == {t: ex.evaluator().evaluate([vs[t]], [1.0], "test", [t])[t] for t in ex.tasks}
    one = ex.evaluate("full@attn", {"synthetic-stripes": 1.0})
    assert one["accuracy"]["synthetic-stripes"] == ft["synthetic-stripes"]
    a, b = xi_pairs(ex)[0]
    assert ex.cached_xi("full@attn", a, b, [0.0, 1.0]) is None
    xi = ex.xi("full@attn", a, b, alphas=[0.0, 1.0])
    ref = xi_grid(ex.evaluator(ex._xi_n()), vs[a], vs[b], a, b, [0.0, 1.0])
    assert xi["prediction"] == ref["prediction"] != ex.xi("full", a, b, alphas=[0.0, 1.0])["prediction"]
    assert xi["mode"] == ex.cached_xi("full@attn", a, b, [0.0, 1.0])["mode"] == "full@attn"  # named as asked
    # a view's kernel report is its source's linearization restricted to the part, at s = 1
    kern, whole = ex.kernel("full@attn", a), ex.kernel("full", a)
    at_1 = next(r for r in whole["restricted"]["attention"]["path"] if r["s"] == 1.0)
    assert kern["at_1"] == pytest.approx(at_1) and kern["mode"] == "full@attn"
    with pytest.raises(ValueError, match="keeps the whole vector"):
        ex.addition("full@linear")


def test_a_workspace_vector_is_cut_under_its_own_name_and_task(bundle_dir):
    """A uid names content only: a session's copy of a bundle vector filed under another task is cut, scored and
    cached as that task's, and its cut lives on the session's vector, not in the shared Explorer."""
    ex = Explorer.open(bundle_dir)
    a, b = ex.tasks[:2]
    orig = ex.vectors("full")[a]
    mine = TaskVector(orig.tensors, b, "full", orig.base_id)  # same tensors, filed under task b
    assert mine.uid == orig.uid
    warm = ex.finetuned("full@attn"), ex.kernel("full@attn", a), ex.xi("full@attn", a, b, alphas=[1.0])
    got = ex.vectors("full@attn", {"mine": mine})["mine"]
    assert got.task == b and got is mine.cut(ATTN) and got is not orig.cut(ATTN)
    assert ex.catalog("full@attn", {"mine": mine})["mine"] == b
    assert ex.kernel("full@attn", "mine", {"mine": mine})["task"] == b != warm[1]["task"]
    c = ex.tasks[2]
    other = ex.vectors("full")[b]
    copy_b = TaskVector(other.tensors, c, "full", other.base_id)  # b's content, filed under task c
    xi = ex.xi("full@attn", a, "copy", alphas=[1.0], extra={"copy": copy_b})  # content of (a, b), scored on (a, c)
    assert xi["tasks"] == [a, c] and warm[2]["tasks"] == [a, b]
    # an evaluation is not shared between workspaces whose vectors differ only in their task: the normalisers go by
    # task (here a mode only the workspace has, whose one vector is the only normaliser)
    src = ex.vectors("attn")[a]
    as_a, as_b = (TaskVector(src.tensors, t, "attn_bias", src.base_id) for t in (a, b))
    r1 = ex.evaluate("attn_bias", {"x": 0.5}, extra={"x": as_a}, tasks=[a])
    r2 = ex.evaluate("attn_bias", {"x": 0.5}, extra={"x": as_b}, tasks=[a])
    assert r1["accuracy"] == r2["accuracy"] and r1["normalized"] is not None and r2["normalized"] is None
    ft = ex.finetuned("full@attn", extra={b: mine})  # named after task b: replaces b's own vector there
    assert ft[b] == ex.evaluator().evaluate([got], [1.0], "test", [b])[b]
    assert all(v is not got for v in ex._memo._d.values())  # the shared memo keeps no session's cut vector


def test_part_rows_score_modes_from_the_bundle_and_views_computed(bundle_dir):
    ex = Explorer.open(bundle_dir)
    rows = {r["mode"]: r for r in part_rows(ex, ["full", "attn", "full@attn"])}
    stored = ex.results["addition"]["full"]
    assert rows["full"]["addition abs"] == stored["absolute"] and rows["full"]["‖τ‖² kept"] is None
    assert 0 < rows["full@attn"]["‖τ‖² kept"] < 1
    zs = sum(ex.zeroshot("test").values()) / len(ex.tasks)
    for r in rows.values():
        assert r["over zero-shot"] == pytest.approx(r["addition abs"] - zs)
        assert 0 <= r["mean ξ"] <= 2 and 0 <= r["kernel agreement"] <= 1
    assert rows["full@attn"]["single-task"] == pytest.approx(sum(ex.finetuned("full@attn").values()) / len(ex.tasks))
    assert part_rows(ex, ["linear@attn"])[0]["kernel agreement"] is None  # a linear model is its own linearization


def test_cli_table_views_and_a_view_as_mode(bundle_dir, capsys):
    assert main(["table", "--bundle", str(bundle_dir), "--views", "full@mlp", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["mode"] for r in res["views"]] == ["full", "attn", "linear", "mlp", "full@mlp"]
    assert main(["addition", "--bundle", str(bundle_dir), "--mode", "full@mlp", "--json"]) == 0
    add = json.loads(capsys.readouterr().out)
    assert add["absolute"] == res["views"][-1]["addition abs"]
    assert main(["addition", "--bundle", str(bundle_dir), "--mode", "attn@mlp", "--json"]) == 2
    assert "already hold only" in json.loads(capsys.readouterr().out)["error"]


def test_every_command_that_takes_a_mode_takes_a_view(bundle_dir, capsys):
    b = ["--bundle", str(bundle_dir), "--json"]
    ex = Explorer.open(bundle_dir)
    t1, t2 = ex.tasks[:2]

    def cosine(t):  # attn's τ_t against full's τ_t cut to the attention weights, by hand
        a, c = ex.vectors("attn")[t], zero_filled(ex.vectors("full")[t], ATTN)
        dot = sum(float((a.tensors[k].double() * c.tensors[k].double()).sum()) for k in a.tensors)
        return dot / (a.norm() * c.norm())
    for argv, check in (
            (["negation", "--mode", "full@mlp", "--task", t1], lambda r: 0 <= r["target"] <= 1),
            (["tune", "--mode", "full@mlp"], lambda r: set(r["coefficients"]) == set(ex.tasks)),
            (["disentangle", "--mode", "full@mlp", "--tasks", t1, t2, "--grid", "3"], lambda r: r["mode"] == "full@mlp"),
            (["kernel", "--mode", "full@mlp", "--task", t1],
             lambda r: r["restricted"]["attention"] is None and r["mode"] == "full@mlp"),
            (["evaluate", "--mode", "linear@attn", "--coef", f"{t1}=1"],
             lambda r: r["accuracy"] == ex.evaluator().evaluate([ex.vectors("linear")[t1].cut(ATTN)], [1.0], "test")),
            (["similarity", "--modes", "attn", "full@attn"], lambda r: r["all"]["cosine"][r["all"]["labels"].index(
                f"attn/{t1}")][r["all"]["labels"].index(f"full@attn/{t1}")] == pytest.approx(cosine(t1)))):
        assert main([*argv, *b]) == 0, argv
        assert check(json.loads(capsys.readouterr().out)), argv


def test_a_view_is_named_where_only_a_mode_will_do_and_travels_in_a_coefficient_set(bundle, bundle_dir, capsys):
    with pytest.raises(ValueError, match="'full@attn' is a view .* not trained"):
        get_mode("full@attn")
    with pytest.raises(ValueError, match="view 'full@nope': unknown mode 'nope'"):
        get_mode("full@nope")
    assert main(["finetune", "--bundle", str(bundle_dir), "--mode", "full@attn", "--task", bundle.task_names[0],
                 "--steps", "1", "--out", "/dev/null", "--json"]) == 2
    assert "is a view" in json.loads(capsys.readouterr().out)["error"]
    vs = {t: tv.cut(ATTN) for t, tv in bundle.vectors["full"].items()}
    rec = coefficient_set(bundle="tiny", base_id=bundle.base.id, mode="full@attn", coefs={bundle.task_names[0]: 0.5},
                          vectors=vs)
    back = parse_coefficient_set(json.dumps(rec), bundle.base.id)
    assert (back["mode"], back["coefficients"]) == ("full@attn", {bundle.task_names[0]: 0.5})
    with pytest.raises(ValueError, match="view 'full@nope'"):
        parse_coefficient_set(json.dumps({**rec, "mode": "full@nope"}), bundle.base.id)


def test_a_views_rows_name_its_source_modes_learning_rate(bundle):
    """The arithmetic page's sweep table asks the manifest for each shown mode's lr; a view was trained as its source."""
    from arith.report import interference_rows

    ex = Explorer(bundle, max_per_task=8)
    alone = {"full@attn": ex.alone("full@attn")}
    rows, _ = interference_rows(ex.index, alone, {"full@attn": ex.addition("full@attn")})
    assert rows[0]["mode"] == "full@attn" and rows[0]["lr"] == bundle.finetune_config("full").lr
