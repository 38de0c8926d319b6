"""The tensor-free bundle index and the explorer that answers from it before (and without) loading the tensors."""

from __future__ import annotations

import dataclasses
import json
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from arith.bundle import BundleError
from arith.explore import Explorer
from arith.index import BundleIndex
from arith.lru import LRU
from arith.metrics import GRID
from arith.specs import Files

from conftest import ROOT, TASKS, rewrite


def opening_requests(ex: Explorer) -> dict:
    """Everything the app's first view asks for, and the diagnostics the bundle ships precomputed."""
    out = {"zeroshot": ex.zeroshot("test")}
    for mode in ex.modes:
        alpha = ex.results["addition"][mode]["alpha"]
        out[f"eval/{mode}"] = ex.evaluate(mode, {t: alpha for t in ex.task_names}, "test")
        out[f"eval0/{mode}"] = ex.evaluate(mode, {t: 0.0 for t in ex.task_names}, "val")
        out[f"ft/{mode}"] = ex.finetuned(mode, "test")
        out[f"add/{mode}"] = ex.addition(mode)
        out[f"neg/{mode}"] = ex.negation(mode, TASKS[0])
        out[f"kernel/{mode}"] = ex.kernel(mode, TASKS[0])
        pair = next(iter(ex.results["disentanglement"][mode])).split("|")
        out[f"xi/{mode}"] = ex.xi(mode, pair[1], pair[0], alphas=ex.results["disentanglement"][mode]["|".join(pair)]["alpha2"])
    out["similarity"] = ex.similarity()
    return out


def test_the_index_of_a_directory_equals_the_index_of_the_loaded_bundle(bundle_dir, bundle):
    read, loaded = BundleIndex.open(bundle_dir), bundle.index
    assert read.tasks == loaded.tasks and read.results == loaded.results and read.manifest == loaded.manifest
    assert read.vectors == loaded.vectors  # same modes, names and order
    assert list(read.vectors) == bundle.modes and [list(v) for v in read.vectors.values()] == [
        list(v) for v in bundle.vectors.values()]
    assert read.sizes == loaded.sizes and read.sizes[TASKS[0]]["test"] == len(bundle.data[TASKS[0]]["test"])
    assert read.evaluation_tasks == list(TASKS) and read.base_id == bundle.base.id


def test_opening_answers_every_precomputed_request_without_loading_and_exactly(bundle_dir, bundle):
    lazy = Explorer.open(bundle_dir)
    got = opening_requests(lazy)
    assert not lazy.loaded
    assert got == opening_requests(Explorer(bundle))
    assert lazy.catalog("attn") == {t: t for t in TASKS}


def test_a_request_the_index_cannot_answer_loads_the_tensors_and_computes(bundle_dir, bundle):
    lazy, eager = Explorer.open(bundle_dir), Explorer(bundle)
    coefs = {TASKS[0]: 0.7, TASKS[2]: -0.4}
    assert lazy.evaluate("attn", coefs) == eager.evaluate("attn", coefs)
    assert lazy.loaded and lazy.load_in_background() is None  # nothing left to load
    assert lazy.catalog("full") == {n: tv.task for n, tv in lazy.vectors("full").items()}


def test_workspace_vectors_are_named_by_the_catalog_and_never_answered_from_the_index(bundle_dir, bundle):
    lazy = Explorer.open(bundle_dir)
    mine = bundle.vectors["attn"][TASKS[1]].scale(3.0)
    extra = {TASKS[1]: mine, "mine": mine}  # one shadows the bundle's vector of that task
    assert lazy.catalog("attn", extra) == {**{t: t for t in TASKS}, "mine": TASKS[1]}
    alpha = lazy.results["addition"]["attn"]["alpha"]
    coefs = {t: alpha for t in TASKS}
    shadowed = lazy.evaluate("attn", coefs, extra=extra)
    assert lazy.loaded and shadowed != lazy.evaluate("attn", coefs)
    assert shadowed == Explorer(bundle).evaluate("attn", coefs, extra=extra)


def test_the_opening_answers_equal_what_computing_gives(bundle_dir, bundle):
    lazy, computing = Explorer.open(bundle_dir), Explorer(dataclasses.replace(bundle, results={}))
    assert lazy.zeroshot("test") == computing.zeroshot("test")
    for mode in bundle.modes:
        alpha = lazy.results["addition"][mode]["alpha"]
        assert lazy.finetuned(mode, "test") == computing.finetuned(mode, "test"), mode
        assert lazy.evaluate(mode, {t: alpha for t in TASKS}) == computing.evaluate(mode, {t: alpha for t in TASKS})
    assert not lazy.loaded


def test_a_workspace_vector_named_after_a_bundle_task_is_its_normaliser_computed(bundle_dir, bundle):
    mine = bundle.vectors["attn"][TASKS[1]].scale(3.0)
    got = Explorer.open(bundle_dir).finetuned("attn", "test", extra={TASKS[1]: mine})
    alone = Explorer(bundle).evaluator().evaluate([mine], [1.0], "test", [TASKS[1]])[TASKS[1]]
    assert got[TASKS[1]] == alone != bundle.results["accuracy"]["finetuned"]["attn"]["test"][TASKS[1]]


def counting_loader(bundle, fail_first: int = 0, error=RuntimeError):
    calls = []

    def load():
        calls.append(threading.get_ident())
        time.sleep(0.05)
        if len(calls) <= fail_first:
            raise error("not now")
        return bundle
    return load, calls


def test_threads_that_need_the_tensors_at_once_load_them_once(bundle):
    load, calls = counting_loader(bundle)
    ex = Explorer(index=bundle.index, loader=load)
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(ex.bundle)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(seen) == 6 and all(b is bundle for b in seen)


def test_a_failure_that_is_not_a_damaged_bundle_is_tried_again(bundle):
    load, calls = counting_loader(bundle, fail_first=2)
    ex = Explorer(index=bundle.index, loader=load)
    ex.load_in_background().join(30)  # fails (kept nowhere: logged), and lets a later call start again
    assert not ex.loaded and ex.load_error is None
    with pytest.raises(RuntimeError):
        _ = ex.bundle
    thread = ex.load_in_background()
    assert thread is not None
    thread.join(30)
    assert ex.loaded and ex.bundle is bundle and len(calls) == 3


def test_a_damaged_bundle_raises_a_fresh_error_each_time(bundle):
    load, calls = counting_loader(bundle, fail_first=99, error=BundleError)
    ex = Explorer(index=bundle.index, loader=load)
    errors = []
    for _ in range(3):
        with pytest.raises(BundleError) as info:
            _ = ex.bundle
        errors.append(info.value)
    assert len(calls) == 1 and isinstance(ex.load_error, BundleError)  # tried once; the same message every time
    assert len({id(e) for e in errors}) == 3 and len({str(e) for e in errors}) == 1


def test_a_file_changed_after_the_index_was_read_is_refused_when_the_tensors_load(copy):
    ex = Explorer.open(copy)
    rel = Files.vector("full", TASKS[2])
    rewrite(copy, rel, lambda t: next(iter(t.values())).mul_(2.0))  # a rebuild in place: new hash in a new manifest
    with pytest.raises(BundleError, match=rel):
        _ = ex.bundle


def header_file(path, header) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text)


@pytest.mark.parametrize("header", [[1, 2], {"test.images": {"shape": [-3, 3, 16, 16]}},
                                    {"test.images": {"shape": [2.0, 3, 16, 16]}}, {"test.images": {}}])
def test_the_index_refuses_data_headers_it_cannot_trust(copy, header):
    header_file(copy / Files.data(TASKS[0]), header)
    with pytest.raises(BundleError, match=f"{Files.data(TASKS[0])}: cannot read its safetensors header"):
        BundleIndex.open(copy, verify=False)


def test_the_background_load_loads_once(bundle_dir):
    ex = Explorer.open(bundle_dir)
    thread = ex.load_in_background()
    assert thread is not None and thread.daemon and ex.load_in_background() is None
    thread.join(120)
    assert ex.loaded and ex.load_error is None and ex.bundle.base.id == ex.base_id


def test_tensors_that_fail_to_load_after_the_index_opened_raise_every_time(copy):
    rel = Files.vector("attn", TASKS[1])
    rewrite(copy, rel, lambda t: next(iter(t.values())).fill_(float("nan")))  # the sha256 matches: only loading sees it
    ex = Explorer.open(copy)
    alpha = ex.results["addition"]["attn"]["alpha"]
    assert ex.evaluate("attn", {t: alpha for t in TASKS})["accuracy"]  # the index still answers what it holds
    ex.load_in_background().join(120)  # the failure stays on that thread, kept for later
    assert isinstance(ex.load_error, BundleError) and rel in str(ex.load_error) and not ex.loaded
    for _ in range(2):
        with pytest.raises(BundleError, match=rel):
            ex.evaluate("attn", {TASKS[0]: 0.5})


def test_the_index_refuses_a_data_file_whose_header_is_not_safetensors(copy):
    (copy / Files.data(TASKS[0])).write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(BundleError, match="cannot read its safetensors header"):
        BundleIndex.open(copy, verify=False)
    with pytest.raises(BundleError, match=Files.data(TASKS[0])):  # with the checks on, its size gives it away first
        BundleIndex.open(copy)


def test_a_capped_evaluation_subset_uses_the_sizes_in_the_index(bundle_dir, bundle):
    n = min(s for sizes in bundle.index.sizes.values() for s in sizes.values())
    assert Explorer.open(bundle_dir, max_per_task=n + 1000).uses_all_images
    assert not Explorer.open(bundle_dir, max_per_task=n - 1).uses_all_images


def test_importing_the_opening_path_imports_no_tensor_library():
    code = ("import sys\n"
            "import arith.explore, arith.index, arith.metrics, arith.lru\n"
            "print(sorted(m for m in ('torch', 'numpy', 'safetensors', 'open_clip') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and json.loads(out.stdout.strip().replace("'", '"')) == [], out.stdout + out.stderr


def test_the_xi_grid_is_numpys_linspace():
    assert GRID == tuple(float(a) for a in np.linspace(-2.0, 2.0, 15))


def test_the_lru_counts_tensor_bytes_without_importing_torch():
    cache = LRU(maxsize=8, max_bytes=100)
    cache.put("a", torch.zeros(10))  # 40 bytes
    cache.put("b", "text")
    cache.put("c", torch.zeros(20))  # 80 bytes: over the bound, the oldest go
    assert cache.nbytes == 80 and cache.get("a") is None and cache.get("c") is not None


def _bare_bundle(tmp_path, files, tasks=("zeta", "alpha")):
    """A manifest listing ``files`` (no tensors; opened with verify=False)."""
    from arith.specs import FORMAT_VERSION

    manifest = {"format": "arith-bundle", "format_version": FORMAT_VERSION, "base": {"spec": {}},
                "tasks": [{"name": t, "classnames": ["a", "b"]} for t in tasks],
                "files": {rel: {"sha256": "0" * 64, "bytes": 0} for rel in files}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_vectors_are_listed_in_task_order_and_only_safetensors_files_count(tmp_path):
    core = [Files.BASE, Files.HEADS]
    root = _bare_bundle(tmp_path, core + ["vectors/attn/alpha.safetensors", "vectors/attn/zeta.safetensors",
                                          "vectors/attn/notes.txt", "vectors/attn/zeta.json"])
    idx = BundleIndex.open(root, verify=False)
    assert list(idx.vectors["attn"]) == ["zeta", "alpha"]  # the manifest's task order, not the files' alphabetical one


def test_only_files_under_results_are_results(tmp_path):
    root = _bare_bundle(tmp_path, [Files.BASE, Files.HEADS, "results/accuracy.json", "results.json",
                                   "results-old/stale.json"])
    for rel in ("results/accuracy.json", "results.json", "results-old/stale.json"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text('{"x": 1}')
    assert set(BundleIndex.open(root, verify=False).results) == {"accuracy"}


def test_a_manifest_size_must_be_a_whole_number_not_a_bool(tmp_path):
    from arith.index import read_manifest

    root = _bare_bundle(tmp_path, [Files.BASE])
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"][Files.BASE]["bytes"] = True
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="sha256 and size in bytes"):
        read_manifest(root)


def test_an_oversized_safetensors_header_is_refused_before_it_is_read(tmp_path):
    from arith.index import MAX_HEADER_BYTES, split_sizes

    path = tmp_path / "d.safetensors"
    path.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}")
    with pytest.raises(BundleError, match=f"header of {MAX_HEADER_BYTES + 1} bytes"):
        split_sizes(path, "data/d.safetensors")


def test_one_recipe_per_mode_with_where_it_comes_from():
    """The CLI's finetune, the Train page and lr-sweep start from :func:`arith.index.recipe`: the mode's own recipe,
    else its parent's (attn_bias: attn's), else the bundle's first, else the engine's defaults; each says which."""
    from arith.index import recipe
    from arith.specs import FinetuneConfig

    m = {"modes": ["full", "attn"], "finetune": {"full": FinetuneConfig(mode="full", lr=1e-3, steps=50).to_dict(),
                                                 "attn": FinetuneConfig(mode="attn", lr=2e-3, steps=60).to_dict()}}
    cfg, source = recipe(m, "attn")
    assert (cfg.mode, cfg.lr, cfg.steps, source) == ("attn", 2e-3, 60, "the bundle's recipe for attn")
    cfg, source = recipe(m, "attn_bias")  # trains attn's tensors and two biases: attn's recipe, not full's
    assert (cfg.mode, cfg.lr, cfg.steps) == ("attn_bias", 2e-3, 60)
    assert source == "the bundle's recipe for attn (it has none for attn_bias)"
    cfg, source = recipe(m, "mlp")  # no parent: the bundle's first recipe, at the bundle's scale
    assert (cfg.mode, cfg.lr, cfg.steps, source) == ("mlp", 1e-3, 50, "the bundle's recipe for full (it has none for mlp)")
    only = {"modes": ["attn_bias"], "finetune": {"attn_bias": FinetuneConfig(mode="attn_bias", lr=5e-4).to_dict()}}
    assert recipe(only, "attn")[1] == "the bundle's recipe for attn_bias (it has none for attn)"  # a prefix is no match
    cfg, source = recipe({"modes": []}, "attn_bias")
    assert cfg == FinetuneConfig(mode="attn_bias") and source.startswith("the engine's defaults")
    with pytest.raises(ValueError, match="unknown mode"):
        recipe(m, "atn")
    from arith.modes import Mode, register_mode

    with pytest.raises(ValueError, match="recipe_from 'fulll' is not a registered mode"):
        register_mode(Mode("ln_typo", "LN", (r"x",), recipe_from="fulll"))


def test_a_bundles_own_files_are_told_from_files_beside_them(bundle_dir, tmp_path):
    """Outputs are refused only where they would overwrite what the manifest lists (arith.taskvec.check_output_path)."""
    from arith.index import bundle_file_at

    rel = next(r for r in json.loads((bundle_dir / "manifest.json").read_text())["files"] if r.startswith("vectors/"))
    assert bundle_file_at(bundle_dir / rel) == (bundle_dir.resolve(), rel)
    assert bundle_file_at(bundle_dir / "manifest.json") == (bundle_dir.resolve(), "manifest.json")
    assert bundle_file_at(bundle_dir / "notes.csv") is None  # beside the bundle's files: loading never reads it
    assert bundle_file_at(bundle_dir / "vectors" / "attn" / "mine.safetensors") is None
    assert bundle_file_at(tmp_path / "x.safetensors") is None
    assert bundle_file_at(bundle_dir / "vectors" / ".." / "manifest.json") == (bundle_dir.resolve(), "manifest.json")


def test_links_do_not_hide_a_bundles_own_files(copy, tmp_path):
    """A write replaces the path it is given: a listed file that is a link elsewhere, or one reached through a
    linked folder, is still the bundle's (writing there would leave it unloadable)."""
    from arith.index import bundle_file_at

    rel = next(r for r in json.loads((copy / "manifest.json").read_text())["files"] if r.startswith("vectors/"))
    outside = tmp_path / "elsewhere.safetensors"
    (copy / rel).rename(outside)
    (copy / rel).symlink_to(outside)  # the listed file is a link to a file outside the bundle
    assert bundle_file_at(copy / rel) == (copy.resolve(), rel)
    folder = tmp_path / "vectors-elsewhere"
    (copy / "vectors").rename(folder)
    (copy / "vectors").symlink_to(folder, target_is_directory=True)  # the folder is a link
    assert bundle_file_at(copy / rel) == (copy.resolve(), rel)
    link = tmp_path / "link-to-bundle"
    link.symlink_to(copy, target_is_directory=True)  # the bundle reached through a link to it
    assert bundle_file_at(link / "manifest.json") == (copy.resolve(), "manifest.json")
