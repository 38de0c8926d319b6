"""Bundle integrity: a file whose checksum, shape or manifest entry is wrong is refused with a message naming the
file, even when its sha256 was refreshed to match; a missing optional result is recomputed, not a crash."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from arith.bundle import BundleError, load_bundle
from arith.explore import Explorer
from arith.specs import Files

from conftest import TASKS, manifest, rehash, rewrite, write_manifest


def _linear(root, split="test"):
    return Files.linear_cache(split)


WRONG_SHAPES = {
    "head of the wrong width": (Files.HEADS, lambda t: t.__setitem__(f"{TASKS[0]}.weight", torch.zeros(4, 7))),
    "head with another number of classes": (Files.HEADS, lambda t: t.__setitem__(
        f"{TASKS[1]}.weight", torch.nn.functional.normalize(torch.randn(5, 32), dim=1))),
    "head with NaN": (Files.HEADS, lambda t: t[f"{TASKS[0]}.weight"].fill_(float("nan"))),
    "grey images": (Files.data(TASKS[0]), lambda t: t.__setitem__("test.images", t["test.images"][:, :1].contiguous())),
    "float images": (Files.data(TASKS[0]), lambda t: t.__setitem__("test.images", t["test.images"].float())),
    "labels of another length": (Files.data(TASKS[1]), lambda t: t.__setitem__("val.labels", t["val.labels"][:-1].clone())),
    "labels out of range": (Files.data(TASKS[2]), lambda t: t["test.labels"].__setitem__(0, 99)),
    "task vector of the wrong shape": (Files.vector("attn", TASKS[0]), None),
    "base weight of the wrong shape": (Files.BASE, lambda t: t.__setitem__("visual.proj", torch.zeros(3, 3))),
    "linear cache of the wrong width": (_linear(None), lambda t: t.__setitem__("f0", torch.zeros(t["f0"].shape[0], 5))),
    "linear cache rows that do not add up": (_linear(None), lambda t: t.__setitem__("__rows__", t["__rows__"] + 1)),
    "linear cache J τ of another shape": (_linear(None), lambda t: t.__setitem__(
        next(k for k in t if k not in ("f0", "__rows__")), torch.zeros(3, 32))),
    "linear cache with Inf": (_linear(None), lambda t: t["f0"].__setitem__((0, 0), float("inf"))),
    "linear cache J τ with NaN": (_linear(None), lambda t: t[next(k for k in t if k not in ("f0", "__rows__"))].__setitem__(
        (0, 0), float("nan"))),
}


@pytest.mark.parametrize("case", list(WRONG_SHAPES))
def test_wrong_contents_with_a_fresh_checksum_are_refused_naming_the_file(copy, case):
    rel, change = WRONG_SHAPES[case]
    if change is None:  # a task vector: rewrite it with its metadata, one tensor transposed
        from safetensors import safe_open

        with safe_open(str(copy / rel), "pt") as fh:
            meta = fh.metadata()
        tensors = load_file(copy / rel)
        k = sorted(tensors)[0]
        tensors[k] = torch.zeros(tensors[k].shape[1], tensors[k].shape[0] + 1)
        save_file(tensors, copy / rel, metadata=meta)
        rehash(copy, rel)
    else:
        rewrite(copy, rel, change)
    with pytest.raises(BundleError) as err:
        load_bundle(copy)
    assert str(err.value).startswith(rel), err.value


def test_a_truncated_file_is_refused_by_its_size(copy):
    rel = Files.data(TASKS[0])
    blob = (copy / rel).read_bytes()
    (copy / rel).write_bytes(blob[:-10])
    with pytest.raises(BundleError, match=rf"^{rel}: .* bytes, the manifest says") as e:
        load_bundle(copy)
    assert "restore the bundle from where it came from, or rebuild it" in str(e.value)  # not the default's advice
    from arith.index import EMBEDDED_DEFAULT, restore_hint

    assert "git checkout -- precomputed/default" in restore_hint(EMBEDDED_DEFAULT)  # the default comes back from git
    (copy / rel).unlink()
    with pytest.raises(BundleError, match=rf"^{rel}: listed in the manifest but missing \(restore the bundle"):
        load_bundle(copy)


MANIFESTS = {
    "files is a list": lambda m: m.__setitem__("files", []),
    "a file entry is a string": lambda m: m["files"].__setitem__(Files.BASE, "abc"),
    "a file entry without sha256": lambda m: m["files"][Files.BASE].pop("sha256"),
    "a size that is not a number": lambda m: m["files"][Files.BASE].__setitem__("bytes", "12"),
    "tasks is a dict": lambda m: m.__setitem__("tasks", {"a": 1}),
    "a task without class names": lambda m: m["tasks"][0].pop("classnames"),
    "a task with an unknown field": lambda m: m["tasks"][0].__setitem__("colour", "red"),
    "base is a string": lambda m: m.__setitem__("base", "ViT"),
    "base spec of another width": lambda m: m["base"]["spec"]["config"]["vision_cfg"].__setitem__("width", 48),
    "base spec with two names": lambda m: m["base"]["spec"].__setitem__("name", "ViT-B-32"),
    "modes is a string": lambda m: m.__setitem__("modes", "attn"),
    "name is a number": lambda m: m.__setitem__("name", 3),
    "finetune is a list": lambda m: m.__setitem__("finetune", []),
    "no base file listed": lambda m: m["files"].pop(Files.BASE),
    "a listed file that does not exist": lambda m: m["files"].__setitem__("vectors/attn/ghost.safetensors",
                                                                          {"sha256": "0" * 64, "bytes": 1}),
    "not a JSON object": lambda m: m.clear() or m.update({"format": "arith-bundle", "format_version": "1",
                                                          "base": {}, "tasks": [], "files": {}}),
}


@pytest.mark.parametrize("case", list(MANIFESTS))
def test_a_wrong_manifest_is_refused_naming_the_file(copy, case):
    m = manifest(copy)
    MANIFESTS[case](m)
    write_manifest(copy, m)
    with pytest.raises(BundleError) as err:
        load_bundle(copy)
    msg = str(err.value)
    assert msg.startswith((Files.MANIFEST, Files.BASE, "vectors/attn/ghost")), msg


def test_a_result_that_is_not_an_object_is_refused(copy):
    (copy / Files.result("addition")).write_text("[1, 2, 3]")
    rehash(copy, Files.result("addition"))
    with pytest.raises(BundleError, match=r"^results/addition\.json: not a JSON object"):
        load_bundle(copy)


# -- missing optional results ------------------------------------------------------------------------------------
def drop(root, rels) -> None:
    m = manifest(root)
    for rel in rels:
        m["files"].pop(rel, None)
        (root / rel).unlink(missing_ok=True)
    write_manifest(root, m)


def answers(ex: Explorer) -> dict:
    """Everything the app's views ask the engine for on the tiny bundle, as plain numbers."""
    out = {"zeroshot": ex.zeroshot("test"), "zeroshot_val": ex.zeroshot("val")}
    for mode in ex.modes:
        out[f"ft/{mode}"] = ex.finetuned(mode, "test")
        out[f"eval/{mode}"] = ex.evaluate(mode, {TASKS[0]: 0.5, TASKS[2]: -0.35})["accuracy"]
        add = ex.addition(mode)
        out[f"add/{mode}"] = (add["alpha"], add["absolute"], add["normalized"], add["accuracy"])
    for mode in ("attn", "linear"):  # the diagnostics: one non-linear and the linearized mode keep the test short
        neg = ex.negation(mode, TASKS[1])
        out[f"neg/{mode}"] = (neg["alpha"], neg["target"], neg["control"])
        xi = ex.xi(mode, TASKS[0], TASKS[1], alphas=[-2.0, -1.0, 0.0, 1.0, 2.0])
        out[f"xi/{mode}"] = (xi["prediction"], [[round(v, 4) for v in r] for r in xi["representation"]])
        k = ex.kernel(mode, TASKS[2])
        out[f"kernel/{mode}"] = [(p["s"], p["acc_nonlinear"], p["acc_linear"], p["agreement"]) for p in k["path"]]
    for mode in ("full", "attn"):  # where task addition loses its points: stored, or computed
        alone = ex.alone(mode)
        out[f"alone/{mode}"] = (alone["curve"], alone["interference"]["cost_of_others"])
        pairs = ex.pairs(mode)
        out[f"pairs/{mode}"] = (pairs["alpha"], pairs["cost"], pairs["hurt"], pairs["additive_cost"])
    sim = ex.similarity()
    out["similarity"] = (sim["all"]["labels"], [[round(v, 5) for v in r] for r in sim["all"]["cosine"]])
    return out


@pytest.fixture(scope="module")
def reference(bundle):
    return answers(Explorer(bundle))


@pytest.mark.parametrize("missing", ["accuracy", "addition", "alone", "pairs", "negation", "disentanglement", "kernel",
                                     "similarity", "training", "linear caches", "everything"])
def test_a_missing_optional_result_is_recomputed(copy, missing, reference):
    rels = {"linear caches": [Files.linear_cache("val"), Files.linear_cache("test")]}.get(missing)
    if missing == "everything":
        rels = [r for r in manifest(copy)["files"] if r.startswith((Files.RESULTS_DIR, Files.CACHE_DIR))]
    drop(copy, rels or [Files.result(missing)])
    b = load_bundle(copy)
    assert missing not in b.results
    got = answers(Explorer(b))
    assert got.keys() == reference.keys()
    for key, value in reference.items():
        assert got[key] == value, key


def test_a_precomputed_result_of_the_wrong_form_is_recomputed(copy, reference):
    res = json.loads((copy / Files.result("addition")).read_text())
    res["attn"] = {"alpha": 0.3}  # lacks the fields the views show
    res["full"] = "garbage"
    (copy / Files.result("addition")).write_text(json.dumps(res))
    acc = json.loads((copy / Files.result("accuracy")).read_text())
    acc["zeroshot"]["test"] = {TASKS[0]: "high"}
    (copy / Files.result("accuracy")).write_text(json.dumps(acc))
    rehash(copy, Files.result("addition"))
    rehash(copy, Files.result("accuracy"))
    got = answers(Explorer(load_bundle(copy)))
    assert got == reference


def test_stored_pair_costs_of_the_wrong_form_are_computed_instead(copy, reference):
    pairs = json.loads((copy / Files.result("pairs")).read_text())
    pairs["attn"]["cost"][0][1] = "high"  # a cell that is not a number
    pairs["full"]["hurt"] = {TASKS[0]: 0.1}  # not every task
    (copy / Files.result("pairs")).write_text(json.dumps(pairs))
    rehash(copy, Files.result("pairs"))
    ex = Explorer(load_bundle(copy))
    assert ex.pairs_stored("linear") and not ex.pairs_stored("attn") and not ex.pairs_stored("full")
    got = answers(ex)
    assert got == reference
