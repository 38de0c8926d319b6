"""The embedded default's pieces: deterministic data, pre-training, the --quick build, the results table."""

import json

import numpy as np
import pytest
import torch

from arith.cli import main
from arith.data import get_task
from arith.default import concepts as C
from arith.default.build import DEFAULT_BUNDLE, QUICK, THREADS, build_default, intra_op_threads, with_lrs
from arith.default.pretrain import PretrainConfig, competition_mask, pretrain
from arith.default.tasks import DEFAULT_TASKS, source_pool


def test_eight_tasks_with_class_names():
    assert len(DEFAULT_TASKS) == 8
    for t in DEFAULT_TASKS:
        src = get_task(t)
        assert src.family == "default" and len(src.classnames) >= 8 and src.templates


@pytest.mark.parametrize("task", ["street", "letters", "signs", "terrain", "digits"])
def test_task_splits_are_deterministic_and_distinct(task, monkeypatch):
    monkeypatch.setenv("ARITH_DATA_CACHE", "off")
    src = get_task(task)
    a, b = src.load("val", n=12), src.load("val", n=12)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    test = src.load("test", n=12)
    assert not torch.equal(a.images, test.images)
    assert a.images.shape == (12, 3, 32, 32) and a.images.dtype == torch.uint8
    assert int(a.labels.max()) < len(src.classnames)


def test_digit_splits_do_not_overlap():
    from arith.default.tasks import _digits_split

    parts = [set(_digits_split(s, 0).tolist()) for s in ("train", "val", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert sum(map(len, parts)) == 1797
    # fixed whatever the seed: training data loaded with another seed never includes a stored test image
    assert all(set(_digits_split(s, 7).tolist()) == p for s, p in zip(("train", "val", "test"), parts))


def test_competition_mask_keeps_lookalike_glyphs_apart():
    m = competition_mask("global")
    names = [c for _, c in C.CONCEPTS]
    assert not m[names.index("0"), names.index("O")] and m[names.index("0"), names.index("A")]
    g = competition_mask("group")
    assert not g[names.index("0"), names.index("A")] and g[names.index("0"), names.index("7")]


def test_pretraining_is_seeded(monkeypatch):
    monkeypatch.setenv("ARITH_DATA_CACHE", "off")
    imgs, concepts = source_pool(96, seed=5)
    cfg = PretrainConfig(width=32, layers=1, head_width=16, embed_dim=16, steps=3, batch_size=16, seed=5)
    a = pretrain(cfg, torch.from_numpy(imgs), torch.from_numpy(concepts))
    b = pretrain(cfg, torch.from_numpy(imgs), torch.from_numpy(concepts))
    assert a[0].id == b[0].id
    assert set(a[1]) == {g.name for g in C.GROUPS}
    assert torch.allclose(a[1]["digits"].weight.norm(dim=1), torch.ones(10))


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick") / "default"
    build_default(out, quick=True, log=lambda m: None)
    return out


def test_quick_build_has_everything(quick):
    from arith.bundle import load_bundle

    b = load_bundle(quick)
    assert b.task_names == ["digits", "terrain", "scenes"] and b.modes == ["full", "attn", "linear", "mlp"]
    for key in ("accuracy", "addition", "alone", "pairs", "negation", "disentanglement", "kernel", "similarity",
                "training", "cost", "pretraining"):
        assert key in b.results, key
    cost = b.results["cost"]
    assert cost["attn"]["seconds_per_step"] > 0
    # exact training state: attn keeps gradients and AdamW moments for the attention weights only
    assert 0 < cost["attn"]["grads_and_adam_mb"] < cost["full"]["grads_and_adam_mb"]
    assert cost["attn"]["state_mb"] < cost["full"]["state_mb"] < cost["linear"]["state_mb"]
    assert b.manifest["provenance"]["command"] is not None and b.manifest["provenance"]["minutes"] > 0
    # built, and its cost measured, at the pinned intra-op thread count, which the provenance records
    assert b.manifest["provenance"]["threads"] == THREADS and cost["attn"]["threads"] == THREADS
    assert b.manifest["provenance"]["cpu"] == torch.backends.cpu.get_cpu_capability()  # and the CPU's kernel level
    # where the build's time went, stage by stage (no pool or pre-training stage when θ0 came from the cache)
    stages = b.manifest["provenance"]["stages"]
    first = [] if b.results["pretraining"].get("reused") else ["source pool", "pre-training"]
    assert [k for k, _ in stages] == [*first, "task data", "fine-tuning", "precompute", "cost"]
    assert all(v >= 0 for _, v in stages) and sum(v for _, v in stages) <= b.manifest["provenance"]["minutes"] + 0.05
    # zero-shot heads are the frozen concept rows of each task's classes
    assert b.heads["digits"].num_classes == 10 and b.heads["terrain"].num_classes == 8


def test_lr_overrides_replace_only_the_named_modes_learning_rate(capsys):
    plan = QUICK.plan
    ft = with_lrs(plan, {"attn": 5e-3})
    assert ft["attn"]["lr"] == 5e-3
    for m in plan.modes:  # every other setting, and every other mode, is the recipe's
        want = {**plan.config(m).to_dict(), **({"lr": 5e-3} if m == "attn" else {})}
        assert ft[m] == want
    with pytest.raises(ValueError, match=r"does not train.*full, attn"):
        with_lrs(plan, {"atn": 1e-3})
    for bad in (0.0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite and > 0"):
            with_lrs(plan, {"full": bad})
    with pytest.raises(SystemExit):
        main(["build-default", "--quick", "--lr", "full"])  # not MODE=LR: refused before anything is built
    assert main(["build-default", "--quick", "--out", "/nonexistent/x", "--lr", "full=1e-3", "--lr", "full=2e-3"]) == 2
    assert "more than once" in capsys.readouterr().err
    # a test bundle never lands on the committed default: --quick without --out is refused before anything is built
    before = {p: p.stat().st_mtime_ns for p in DEFAULT_BUNDLE.rglob("*")}
    assert main(["build-default", "--quick"]) == 2
    assert "name its directory with --out DIR" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in DEFAULT_BUNDLE.rglob("*")} == before


def test_rebuild_with_another_lr_retrains_only_that_mode(quick, tmp_path):
    import shutil

    from arith.bundle import load_bundle

    out = tmp_path / "default"
    shutil.copytree(quick, out)
    before = load_bundle(quick)
    new_lr = before.finetune_config("attn").lr * 2
    logs = []
    build_default(out, quick=True, log=logs.append, lrs={"attn": new_lr})
    trained = sorted(m.split(":")[1].strip() for m in logs if m.startswith("build: ") and " steps in " in m)
    assert trained == sorted(f"attn/{t}" for t in before.task_names)  # the other modes' vectors are kept
    b = load_bundle(out)
    assert b.finetune_config("attn").lr == new_lr and b.manifest["plan"]["finetune"]["attn"]["lr"] == new_lr
    assert b.finetune_config("full") == before.finetune_config("full") and b.base.id == before.base.id
    for t in b.task_names:
        kept = before.vectors["full"][t].tensors
        assert all(torch.equal(b.vectors["full"][t].tensors[k], kept[k]) for k in kept)
        moved = before.vectors["attn"][t].tensors
        assert any(not torch.equal(b.vectors["attn"][t].tensors[k], moved[k]) for k in moved)


def test_table_command(quick, capsys):
    assert main(["table", "--bundle", str(quick), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    modes = [r["mode"] for r in res["rows"]]
    assert modes == ["full", "attn", "linear", "mlp"]
    for r in res["rows"]:
        assert 0 <= r["single-task"] <= 1 and r["s/step"] > 0
    assert main(["table", "--bundle", str(quick), "--per-task"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("| mode |") and "| digits |" in text
    assert np.isfinite([r["mean ξ"] for r in res["rows"]]).all()
    assert "alone" not in res  # computed only when asked


def test_the_alone_curves_are_precomputed_and_served_as_computed(quick):
    from arith.bundle import load_bundle
    from arith.explore import Explorer
    from arith.protocols import alone_curve

    b = load_bundle(quick)
    ex = Explorer.open(str(quick))
    for mode, vs in b.vectors.items():
        stored = b.results["alone"][mode]
        fresh = alone_curve(b.evaluator(), {t: vs[t] for t in ex.tasks}, finetuned=b.results["accuracy"]["finetuned"][mode],
                            splits=("test",))
        assert json.loads(json.dumps(fresh)) == stored  # the build's curve is the engine's, bit for bit
        served = ex.alone(mode)
        assert {k: served[k] for k in stored} == stored and served["interference"]["same_zero_shot"]


def test_the_pair_costs_are_precomputed_at_the_chosen_alpha_and_served_as_computed(quick):
    from arith.bundle import load_bundle
    from arith.explore import Explorer
    from arith.protocols import pair_costs

    b = load_bundle(quick)
    ex = Explorer.open(str(quick))
    for mode, vs in b.vectors.items():
        stored = b.results["pairs"][mode]
        assert stored["alpha"] == b.results["addition"][mode]["alpha"] and stored["tasks"] == ex.tasks
        fresh = pair_costs(b.evaluator(), {t: vs[t] for t in ex.tasks}, stored["alpha"])
        assert json.loads(json.dumps(fresh)) == stored  # the build's matrix is the engine's, bit for bit
        assert ex.pairs_stored(mode) and ex.pairs(mode) == stored


@pytest.mark.parametrize("result", ["alone", "pairs"])
def test_precompute_recomputes_only_what_it_is_asked_to(quick, tmp_path, capsys, result):
    import shutil

    from arith.bundle import load_bundle

    copy = tmp_path / "b"
    shutil.copytree(quick, copy)
    manifest = json.loads((copy / "manifest.json").read_text())  # as if built before the result joined the build
    del manifest["files"][f"results/{result}.json"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    (copy / "results" / f"{result}.json").unlink()
    before = load_bundle(copy).manifest
    assert result not in load_bundle(copy).results
    with intra_op_threads(THREADS):  # the build's thread count: CPU bits are reproducible only at the same count
        assert main(["precompute", "--bundle", str(copy), "--only", result, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    after = load_bundle(copy)  # checksums verified: the manifest records the rewritten file
    assert res["results"] == [result] and after.results[result] == load_bundle(quick).results[result]
    same = [f for f in before["files"] if f != f"results/{result}.json"]
    assert all(after.manifest["files"][f] == before["files"][f] for f in same)  # every other file kept as it was
    prov = after.manifest["provenance"]
    assert prov["command"] == before["provenance"]["command"] and prov["notes"].endswith(f"precompute --only {result}")
    assert main(["precompute", "--bundle", str(copy), "--only", "alones"]) == 2
    assert "unknown result(s) ['alones']" in capsys.readouterr().err


def test_precompute_recomputes_the_linear_mode_instead_of_reading_its_stored_cache(quick, tmp_path, capsys):
    """A stale linear cache (here: J τ doubled, checksums refreshed) must not leak into what precompute writes: the
    cache and the linear mode's results are computed afresh from θ0 and the vectors, equal to the build's."""
    import shutil

    from arith.bundle import BundleWriter, load_bundle
    from arith.specs import Files

    copy = tmp_path / "b"
    shutil.copytree(quick, copy)
    b = load_bundle(copy)
    rel = Files.linear_cache("test")
    stale = {k: (v if k in ("f0", "__rows__") else 2 * v) for k, v in b.linear_cache["test"].items()}
    writer = BundleWriter.reopen(b)
    writer.put_tensors(rel, stale)
    writer.save_manifest()
    assert load_bundle(copy).evaluator().evaluate(list(b.vectors["linear"].values()), [1.0] * 3, "test") != \
        load_bundle(quick).evaluator().evaluate(list(b.vectors["linear"].values()), [1.0] * 3, "test")  # it bites
    with intra_op_threads(THREADS):  # the build's thread count: CPU bits are reproducible only at the same count
        assert main(["precompute", "--bundle", str(copy), "--only", "linear_cache", "addition", "--json"]) == 0
    capsys.readouterr()
    after, built = load_bundle(copy), load_bundle(quick)
    for k, v in built.linear_cache["test"].items():
        assert torch.equal(after.linear_cache["test"][k], v), k
    assert after.results["addition"]["linear"] == built.results["addition"]["linear"]


def test_table_alone_tabulates_each_task_alone_against_the_merge(quick, capsys):
    from arith.explore import Explorer

    assert main(["table", "--bundle", str(quick), "--alone", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    ex = Explorer.open(str(quick))
    for row, by_alpha in zip(res["alone"], res["alone_by_alpha"]):
        ref = ex.alone(row["mode"])["interference"]
        add = {r["alpha"]: r["test"]["absolute"] for r in ex.addition(row["mode"])["curve"]}
        solo = {r["alpha"]: r["test"]["absolute"] for r in ex.alone(row["mode"])["curve"]}
        assert row["addition α"] == ref["alpha"] and row["merged at α"] == add[ref["alpha"]]
        assert row["cost of the other vectors"] == pytest.approx(row["each task alone at α"] - row["merged at α"])
        assert by_alpha["α = 0.3"] == pytest.approx(solo[0.3] - add[0.3])  # read off the two curves
    assert main(["table", "--bundle", str(quick), "--alone"]) == 0
    text = capsys.readouterr().out
    assert "| cost of the other vectors |" in text and "| α = 1 |" in text and "-0.0" not in text


def test_table_pairs_says_which_vector_costs_which_task(quick, capsys):
    from arith.explore import Explorer

    assert main(["table", "--bundle", str(quick), "--alone", "--pairs", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    ex = Explorer.open(str(quick))
    for row in res["pairs"]:
        p = ex.pairs(row["mode"])
        assert row["addition α"] == ex.addition(row["mode"])["alpha"] == p["alpha"]
        assert row["cost if pairs added up"] == pytest.approx(np.mean([sum(r) for r in p["cost"]]))
        assert row["cost of the other vectors"] == ex.alone(row["mode"])["interference"]["cost_of_others"]
        assert row["its cost"] == max(v for r, costs in enumerate(p["cost"]) for c, v in enumerate(costs) if r != c)
        matrix = res["pair_matrices"][row["mode"]]
        assert [r["task hurt / τ added"] for r in matrix] == [*p["tasks"], "Σ (inflicted)"]
        assert matrix[0][p["tasks"][0]] is None and matrix[0][p["tasks"][1]] == p["cost"][0][1]
    assert main(["table", "--bundle", str(quick), "--pairs"]) == 0
    text = capsys.readouterr().out
    assert "| costliest pair |" in text and "| Σ (inflicted) |" in text and "attn:" in text


def test_lr_sweep_uses_validation_and_is_saved(quick, capsys):
    from arith.bundle import load_bundle

    args = ["lr-sweep", "--bundle", str(quick), "--modes", "attn", "full", "--lrs", "1e-4", "1e-3",
            "--tasks", "digits", "--steps", "3", "--save", "--json"]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["chosen"]) == {"attn", "full"} and res["chosen"]["attn"] in (1e-4, 1e-3)
    assert len(res["runs"]) == 4 and all(set(r["val_accuracy"]) == {"digits"} for r in res["runs"])
    from arith.lrsweep import choose_lr

    scores = {r["lr"]: r["val_mean"] for r in res["runs"] if r["mode"] == "attn"}
    assert res["chosen"]["attn"] == choose_lr(scores, res["validation_images"])[0]
    assert load_bundle(quick).results["lr_selection"]["chosen"] == res["chosen"]


def test_lr_choice_is_the_smallest_within_one_standard_error_of_the_best():
    from arith.lrsweep import choose_lr

    # best 0.90 on 2048 images: standard error ≈ 0.0066
    assert choose_lr({1e-4: 0.85, 3e-4: 0.896, 1e-3: 0.90}, 2048)[0] == 3e-4
    assert choose_lr({1e-4: 0.85, 3e-4: 0.88, 1e-3: 0.90}, 2048)[0] == 1e-3
    lr, se = choose_lr({1e-3: 0.5}, 100)
    assert lr == 1e-3 and se == pytest.approx(0.05)


def test_lr_sweep_extends_an_earlier_sweep_without_retraining_it(quick, tmp_path, capsys):
    args = ["lr-sweep", "--bundle", str(quick), "--modes", "attn", "--tasks", "digits", "--steps", "3", "--json"]
    assert main([*args, "--lrs", "1e-4"]) == 0
    first = tmp_path / "first.json"
    first.write_text(capsys.readouterr().out)
    assert main([*args, "--lrs", "1e-3", "--previous", str(first)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["lrs"] == [1e-4, 1e-3] and [r.get("from") for r in res["runs"]] == [str(first), None]
    # --steps keeps the recipe's warm-up share, as finetune and the Train page do (12 steps, 2 of warm-up -> 9, 2)
    assert main([*args[:-3], "--steps", "9", "--lrs", "1e-3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"][0]["schedule"]["warmup_steps"] == 2
    # a sweep scored on other tasks is refused, naming the file
    assert main([*args, "--tasks", "terrain", "--lrs", "1e-3", "--previous", str(first)]) == 2
    assert "other tasks" in json.loads(capsys.readouterr().out)["error"]


def test_pretraining_is_reused_from_the_cache_bit_for_bit(tmp_path, monkeypatch):
    from arith.default.build import pretrained_base

    monkeypatch.setenv("ARITH_DATA_CACHE", str(tmp_path))
    cfg = PretrainConfig(width=32, layers=1, head_width=16, embed_dim=16, pool=96, steps=3, batch_size=16, seed=2)
    logs = []
    a = pretrained_base(cfg, logs.append)
    b = pretrained_base(cfg, logs.append)
    assert not a[2].get("reused") and b[2]["reused"] and any("reusing" in m for m in logs)
    assert a[0].id == b[0].id
    assert set(a[1]) == set(b[1]) and all(torch.equal(a[1][g].weight, b[1][g].weight) for g in a[1])
    assert a[1]["digits"].scale == b[1]["digits"].scale
    other = PretrainConfig.from_dict({**cfg.to_dict(), "seed": 3})
    assert not pretrained_base(other, logs.append)[2].get("reused")  # another recipe is not served from the cache
    with intra_op_threads(torch.get_num_threads() + 1):  # nor is θ0 made at another thread count (its bits differ)
        assert not pretrained_base(cfg, logs.append)[2].get("reused")
    # nor on a CPU of another kernel level (AVX2 vs AVX512 kernels give other bits)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "SOME_OTHER_ISA")
    assert not pretrained_base(cfg, logs.append)[2].get("reused")


def test_intra_op_threads_are_pinned_for_the_block_and_restored_after_it():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="inside"), intra_op_threads(before + 1) as n:
        assert n == torch.get_num_threads() == before + 1
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    with intra_op_threads(None) as n:
        assert n == before
    with pytest.raises(ValueError, match="threads must be ≥ 1"), intra_op_threads(0):
        pass
    assert torch.get_num_threads() == before


def test_cost_in_a_fresh_process_runs_at_the_threads_asked_for(quick):
    from arith.cost import measure_modes

    before = torch.get_num_threads()
    out = measure_modes(str(quick), ["attn"], steps=2, batch_size=8, threads=before + 1)
    assert out["attn"]["threads"] == before + 1 and out["attn"]["seconds_per_step"] > 0


def test_lr_sweep_reuses_the_bundles_own_vectors_for_its_own_lr(quick, capsys):
    from arith.bundle import load_bundle

    b = load_bundle(quick)
    own = b.finetune_config("attn").lr
    assert main(["lr-sweep", "--bundle", str(quick), "--modes", "attn", "--lrs", str(own), str(own / 3),
                 "--tasks", "digits", "--json"]) == 0
    runs = {r["lr"]: r for r in json.loads(capsys.readouterr().out)["runs"]}
    assert runs[own]["reused_bundle_vectors"] == ["digits"] and runs[own / 3]["reused_bundle_vectors"] == []
    # what it reports for the reused run is the bundle vector's validation accuracy
    val = b.evaluator().evaluate([b.vectors["attn"]["digits"]], [1.0], "val", ["digits"])["digits"]
    assert runs[own]["val_accuracy"]["digits"] == val


def test_lr_sweep_overrides_the_schedule_and_reuses_only_runs_on_the_same_one(quick, tmp_path, capsys):
    from arith.bundle import load_bundle

    own = load_bundle(quick).finetune_config("attn")
    args = ["lr-sweep", "--bundle", str(quick), "--modes", "attn", "--tasks", "digits", "--json"]
    assert main([*args, "--lrs", str(own.lr), "--set", "weight_decay=0", "augment=true"]) == 0
    res = json.loads(capsys.readouterr().out)
    (run,) = res["runs"]
    assert res["overrides"] == {"weight_decay": 0, "augment": True}
    # another schedule: the bundle's vector at the same lr is not taken for it
    assert run["reused_bundle_vectors"] == [] and run["schedule"]["weight_decay"] == 0 and run["schedule"]["augment"]
    first = tmp_path / "first.json"
    first.write_text(json.dumps(res))
    assert main([*args, "--lrs", str(own.lr), "--set", "weight_decay=0", "augment=true", "--previous", str(first)]) == 0
    assert json.loads(capsys.readouterr().out)["runs"][0]["from"] == str(first)
    # without the overrides the earlier run is on another schedule: trained again (here: the bundle's own vector)
    assert main([*args, "--lrs", str(own.lr), "--previous", str(first)]) == 0
    again = json.loads(capsys.readouterr().out)["runs"][0]
    assert again.get("from") is None and again["reused_bundle_vectors"] == ["digits"]
    for bad, why in ((["lr=1e-3"], "cannot be overridden"), (["momentum=0.9"], "unknown field"),
                     (["weight_decay=-1"], "non-negative"), (["weight_decay"], "FIELD=VALUE")):
        assert main([*args, "--lrs", "1e-3", "--set", *bad]) == 2
        assert why in json.loads(capsys.readouterr().out)["error"]


def test_lr_sweep_averages_over_seeds_and_extends_a_sweep_by_seed(quick, tmp_path, capsys):
    from arith.bundle import load_bundle
    from arith.taskvec import load_task_vector

    args = ["lr-sweep", "--bundle", str(quick), "--modes", "attn", "--lrs", "1e-3", "--tasks", "digits", "terrain",
            "--steps", "3", "--json"]
    assert main([*args, "--seeds", "0", "1", "--vectors", str(tmp_path / "vec")]) == 0
    res = json.loads(capsys.readouterr().out)
    runs = res["runs"]
    assert [r["seed"] for r in runs] == [0, 1] and res["seeds"] == [0, 1]
    assert [r["schedule"]["seed"] for r in runs] == [0, 1]
    assert res["val_mean"]["attn"]["0.001"] == pytest.approx(np.mean([r["val_mean"] for r in runs]))
    assert res["seed_sd"]["attn"]["0.001"] == pytest.approx(np.std([r["val_mean"] for r in runs], ddof=1))
    assert "mean over 2 fine-tuning seeds" in res["criterion"]
    # the vectors of every run are written, and score what the run recorded
    b = load_bundle(quick)
    ev = b.evaluator()
    tvs = []
    for r in runs:
        tvs.append(load_task_vector(tmp_path / "vec" / f"attn_lr0.001_seed{r['seed']}" / "digits.safetensors", b.base))
        assert ev.evaluate([tvs[-1]], [1.0], "val", ["digits"])["digits"] == r["val_accuracy"]["digits"]
    assert any(not torch.equal(tvs[0].tensors[k], tvs[1].tensors[k]) for k in tvs[0].tensors)  # seeds differ
    # a second sweep with one more seed trains only that seed
    first = tmp_path / "first.json"
    first.write_text(json.dumps(res))
    assert main([*args, "--seeds", "0", "1", "2", "--previous", str(first)]) == 0
    again = json.loads(capsys.readouterr().out)["runs"]
    assert [(r["seed"], r.get("from")) for r in again] == [(0, str(first)), (1, str(first)), (2, None)]
    # --no-train only combines: a missing seed is named, and nothing is trained
    assert main([*args, "--seeds", "0", "1", "3", "--previous", str(first), "--no-train"]) == 2
    assert "lack 1 run(s): attn lr=0.001 seed=3" in json.loads(capsys.readouterr().out)["error"]
    assert main([*args, "--seeds", "0", "1", "--previous", str(first), "--no-train"]) == 0
    combined = json.loads(capsys.readouterr().out)
    assert combined["val_mean"] == res["val_mean"] and combined["trained_on"] == ["cpu"]
    # an lr only the earlier sweep has joins when it has every seed (1e-3 for seeds 0, 1), else not (seeds 0-2)
    assert main([*args, "--lrs", "3e-4", "--seeds", "0", "1", "--previous", str(first), "--no-train"]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert "lack 2 run(s): attn lr=0.0003 seed=0, attn lr=0.0003 seed=1" in error
    assert main([*args, "--lrs", "3e-4", "--seeds", "0", "1", "2", "--previous", str(first), "--no-train"]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert "lack 3 run(s)" in error and "lr=0.001" not in error
    # a run saved before schedules were recorded counts as the schedule's own seed only
    old = dict(res, runs=[{k: v for k, v in r.items() if k not in ("schedule", "seed")} for r in runs[:1]])
    first.write_text(json.dumps(old))
    assert main([*args, "--seeds", "0", "--previous", str(first), "--no-train"]) == 0
    assert main([*args, "--seeds", "1", "--previous", str(first), "--no-train"]) == 2
    capsys.readouterr()
    # the sweep sets the seed: overriding it is refused; a repeated seed too
    assert main([*args, "--seeds", "0", "--set", "seed=3"]) == 2
    assert "cannot be overridden" in json.loads(capsys.readouterr().out)["error"]
    assert main([*args, "--seeds", "0", "0"]) == 2
    assert "repeats a seed" in json.loads(capsys.readouterr().out)["error"]


def test_recipe_probe_with_no_change_retrains_the_bundles_own_vectors(quick, tmp_path, capsys):
    from arith.bundle import load_bundle
    from bench.recipe_probe import main

    out = tmp_path / "probe.json"
    assert main(["--bundle", str(quick), "--mode", "attn", "--tag", "same", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    b = load_bundle(quick)
    ev = b.evaluator()
    # seeded, same data and schedule: the probe's single-task accuracies are the bundle's vectors' (validation only)
    for t in b.task_names:
        assert res["per_task"][t]["single"] == ev.evaluate([b.vectors["attn"][t]], [1.0], "val", [t])[t]
    assert res["split"] == "val" and res["config"] == b.finetune_config("attn").to_dict()
    assert res["curve"][0]["alpha"] == 0 and res["curve"][0]["absolute"] == pytest.approx(res["zero_shot"])
    assert res["alpha"] in [r["alpha"] for r in res["curve"]] and 0 <= res["agreement"] <= 1
    assert "same:" in capsys.readouterr().out
    assert main(["--bundle", str(quick), "--mode", "attn", "--set", "weight_decay=0.5", "--no-kernel",
                 "--json", str(out)]) == 0
    changed = json.loads(out.read_text())
    assert changed["config"]["weight_decay"] == 0.5 and changed["agreement"] is None


def test_seed_study_scores_the_vectors_an_lr_sweep_wrote(quick, tmp_path, capsys):
    import itertools

    from arith.bundle import load_bundle
    from arith.taskvec import load_task_vector
    from bench.seed_study import main as study

    b = load_bundle(quick)
    ev = b.evaluator()
    assert main(["lr-sweep", "--bundle", str(quick), "--modes", "attn", "--lrs", "1e-3", "--steps", "3",
                 "--seeds", "0", "1", "--vectors", str(tmp_path / "vec"), "--json"]) == 0
    sweep = json.loads(capsys.readouterr().out)
    out = tmp_path / "seeds.json"
    assert study(["--bundle", str(quick), "--vectors", str(tmp_path / "vec"), "--json", str(out)]) == 0
    sets = json.loads(out.read_text())["sets"]
    assert [(s["mode"], s["lr"], s["seed"]) for s in sets] == [("attn", 1e-3, 0), ("attn", 1e-3, 1)]
    for s, run in zip(sets, sweep["runs"]):
        # the same vectors on the same validation images: the study's single-task accuracy is the sweep's
        assert s["single"] == pytest.approx(run["val_mean"]) and s["split"] == "val"
        pairs = list(itertools.combinations(b.task_names, 2))[: b.manifest["plan"]["xi_pairs"]]
        assert sorted(s["xi_pairs"]) == sorted(f"{a}|{c}" for a, c in pairs) and 0 <= s["xi"] <= 2
        assert 0 <= s["agreement"] <= 1 and s["alpha"] in [r["alpha"] for r in s["curve"]]
    capsys.readouterr()
    assert study(["--summarize", str(out)]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| val | attn")]
    assert len(row) == 1 and "| 0, 1 |" in row[0] and "±" in row[0]
    # --only filters the sets by the folder names lr-sweep writes (bench/lr_seeds.sh relies on them)
    assert study(["--bundle", str(quick), "--vectors", str(tmp_path / "vec"), "--only", "attn_lr0.001_seed1",
                  "--json", str(out)]) == 0
    assert [s["seed"] for s in json.loads(out.read_text())["sets"]] == [1]
    # --split test reports on test what the build reports, with α still chosen on validation
    test_out = tmp_path / "test.json"
    assert study(["--bundle", str(quick), "--vectors", str(tmp_path / "vec"), "--only", "attn_lr0.001_seed1",
                  "--split", "test", "--no-xi", "--json", str(test_out)]) == 0
    (on_test,) = json.loads(test_out.read_text())["sets"]
    assert on_test["split"] == "test" and on_test["alpha"] == sets[1]["alpha"] and on_test["curve"] == sets[1]["curve"]
    tv = load_task_vector(tmp_path / "vec" / "attn_lr0.001_seed1" / "digits.safetensors", b.base)
    assert on_test["per_task"]["digits"]["single"] == ev.evaluate([tv], [1.0], "test", ["digits"])["digits"]
    # a set that lacks a task (a sweep cut short) is skipped, not scored on fewer tasks
    (tmp_path / "vec" / "attn_lr0.001_seed0" / f"{b.task_names[-1]}.safetensors").unlink()
    assert study(["--bundle", str(quick), "--vectors", str(tmp_path / "vec"), "--json", str(out)]) == 0
    assert [s["seed"] for s in json.loads(out.read_text())["sets"]] == [1]
    assert f"attn_lr0.001_seed0: skipped, no vector for {b.task_names[-1]}" in capsys.readouterr().out


def test_base_probe_with_no_change_reproduces_the_quick_build(quick, tmp_path, capsys, monkeypatch):
    from arith.bundle import load_bundle
    from bench.base_probe import main

    monkeypatch.setenv("ARITH_DATA_CACHE", "off")  # pre-train again rather than reuse the build's cached θ0
    out = tmp_path / "base.json"
    assert main(["--quick", "--modes", "attn", "mlp", "--tag", "t", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    b = load_bundle(quick)
    ev = b.evaluator()
    assert res["pretrain"] == b.results["pretraining"]["config"] and [r["mode"] for r in res["runs"]] == ["attn", "mlp"]
    assert not res["pretraining"].get("reused")
    # seeded: the probe's θ0 is the quick build's (zero-shot equal) and so are its vectors (single-task equal)
    for run in res["runs"]:
        assert run["split"] == "val" and run["config"] == b.finetune_config(run["mode"]).to_dict()
        for t in b.task_names:
            assert run["per_task"][t]["zero_shot"] == ev.evaluate([], [], "val", [t])[t]
            assert run["per_task"][t]["single"] == ev.evaluate([b.vectors[run["mode"]][t]], [1.0], "val", [t])[t]
    assert "t mlp lr 0.001:" in capsys.readouterr().out
    assert main(["--quick", "--set", "steps=7", "--lrs", "3e-4", "--json", str(out)]) == 0
    changed = json.loads(out.read_text())
    assert changed["pretrain"]["steps"] == 7 and changed["runs"][0]["config"]["lr"] == 3e-4
    assert changed["runs"][0]["xi"] is None
    # --runs: (mode, lr) pairs in the order given; --xi: the mean ξ over the plan's pairs, each in [0, 2]
    assert main(["--quick", "--set", "steps=7", "--runs", "mlp=3e-4", "attn=1e-3", "--xi", "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [(r["mode"], r["config"]["lr"]) for r in runs] == [("mlp", 3e-4), ("attn", 1e-3)]
    for r in runs:
        assert len(r["xi_pairs"]) == 2 and 0 <= r["xi"] <= 2 and r["xi"] == sum(r["xi_pairs"].values()) / 2
    with pytest.raises(SystemExit):
        main(["--quick", "--runs", "attn"])
    with pytest.raises(ValueError, match="unknown mode 'atn'"):  # before pre-training, which would write the JSON
        main(["--quick", "--runs", "atn=1e-3", "--json", str(tmp_path / "never.json")])
    assert not (tmp_path / "never.json").exists()
    capsys.readouterr()
    assert main(["--summarize", str(out)]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 4 and rows[2].startswith("| base | 7 | ") and " mlp | 0.0003 | " in rows[2]
    assert float(rows[3].split(" | ")[-3]) == pytest.approx(runs[1]["xi"], abs=5e-4)  # the mean ξ column
    assert main(["--quick", "--set", "steps=5", "--pretrain-only", "--tag", "p", "--json", str(tmp_path / "only.json")]) == 0
    only = json.loads((tmp_path / "only.json").read_text())
    assert only["runs"] == [] and only["pretrain"]["steps"] == 5 and only["pretraining"]["seconds"] > 0
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if "ms per pre-training step" in ln]
    assert line.startswith(f"p: {1000 * only['pretraining']['seconds'] / 5:.1f} ms per pre-training step, ")


def test_pair_summary_breaks_ties_in_task_order_whatever_the_stored_key_order():
    from arith.report import pair_summary_rows

    tasks = ["b", "a", "c"]  # a stored result's dicts come back with sorted keys: a, b, c
    cost = [[0.0, 0.02, 0.01], [0.02, 0.0, 0.01], [0.0, 0.0, 0.0]]
    p = {"tasks": tasks, "alpha": 0.3, "cost": cost, "additive_cost": 0.02,
         "hurt": {"a": 0.03, "b": 0.03, "c": 0.0}, "inflicted": {"a": 0.02, "b": 0.02, "c": 0.02}}
    row = pair_summary_rows({"attn": p})[0]
    assert row["most hurt task"] == "b" and row["costliest vector"] == "b"  # the first of the tied tasks in order
    assert row["costliest pair"] == "a → b" and row["its cost"] == 0.02 and row["cost of the other vectors"] is None


def test_precompute_pairs_without_a_stored_addition_says_what_to_run(quick, tmp_path, capsys):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(quick, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["files"]["results/addition.json"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    (copy / "results" / "addition.json").unlink()
    before = (copy / "results" / "pairs.json").read_bytes()
    assert main(["precompute", "--bundle", str(copy), "--only", "pairs"]) == 2
    assert "no task addition for full (its chosen α); precompute addition first" in capsys.readouterr().err
    assert (copy / "results" / "pairs.json").read_bytes() == before  # nothing written
    assert main(["precompute", "--bundle", str(copy), "--only", "addition", "pairs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"] == ["addition", "pairs"]


def test_drawn_data_cached_with_other_fonts_is_drawn_again(tmp_path, monkeypatch):
    """Images drawn before the font packages were installed (Pillow's built-in font) are other images: the cache key
    names the fonts, so neither they nor a θ0 pre-trained on them are reused after (a stale cache failed the
    base-probe test on a machine whose fonts arrived mid-session)."""
    from arith.default import render, tasks

    monkeypatch.setenv("ARITH_DATA_CACHE", str(tmp_path))
    calls = []

    def make():
        calls.append(1)
        return np.zeros((1, 3, 2, 2), np.uint8), np.zeros(1, np.int64)

    for files in ((), ("/fonts/a.ttf",), ()):
        monkeypatch.setattr(render, "font_files", lambda kind, files=files: files)
        tasks.cached("some/key", make)
    assert len(calls) == 2 and len(list(tmp_path.glob("*.npz"))) == 2  # the third call found the first's file


def test_the_pretrained_theta0_cache_key_names_the_fonts(monkeypatch):
    from arith.default import render
    from arith.default.build import pretrain_key
    from arith.default.pretrain import PretrainConfig

    keys = set()
    for files in ((), ("/fonts/a.ttf",)):
        monkeypatch.setattr(render, "font_files", lambda kind, files=files: files)
        keys.add(pretrain_key(PretrainConfig()))
    assert len(keys) == 2
