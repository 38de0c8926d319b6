import json
import shutil

import pytest
import torch

from arith.bundle import BundleError, load_bundle
from arith.specs import Files

from conftest import MODES, TASKS


def test_bundle_has_everything(bundle):
    assert bundle.task_names == list(TASKS)
    assert bundle.modes == list(MODES)
    assert set(bundle.results) >= {"accuracy", "addition", "negation", "disentanglement", "kernel", "similarity",
                                   "training"}
    for t in TASKS:
        assert set(bundle.data[t]) == {"val", "test"}
        assert bundle.data[t]["test"].images.dtype == torch.uint8
        assert bundle.heads[t].num_classes == 4
    assert set(bundle.linear_cache) == {"val", "test"}
    prov = bundle.manifest["provenance"]
    assert prov["versions"]["torch"] and prov["minutes"] is not None
    assert bundle.finetune_config("attn").steps == 24


def test_flipped_byte_is_refused_naming_the_file(copy):
    rel = Files.vector("attn", TASKS[0])
    path = copy / rel
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(BundleError, match=rel):
        load_bundle(copy)


def test_missing_file_is_refused(copy):
    (copy / Files.HEADS).unlink()
    with pytest.raises(BundleError, match=Files.HEADS):
        load_bundle(copy)


def test_broken_manifest_is_refused(copy):
    (copy / Files.MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="manifest.json"):
        load_bundle(copy)
    (copy / Files.MANIFEST).write_text(json.dumps({"format": "arith-bundle", "format_version": "0"}))
    with pytest.raises(BundleError, match="format version"):
        load_bundle(copy)


def test_swapped_base_weights_are_refused_even_with_fresh_hashes(copy):
    from safetensors.torch import load_file, save_file

    from arith.bundle import sha256_file

    state = load_file(copy / Files.BASE)
    k = next(iter(state))
    state[k] = state[k] + 1
    save_file(state, copy / Files.BASE)
    m = json.loads((copy / Files.MANIFEST).read_text())
    m["files"][Files.BASE] = {"sha256": sha256_file(copy / Files.BASE), "bytes": (copy / Files.BASE).stat().st_size}
    (copy / Files.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="base id"):
        load_bundle(copy)


def test_vector_under_the_wrong_path_is_refused(copy):
    from arith.bundle import sha256_file

    a, b = Files.vector("attn", TASKS[0]), Files.vector("attn", TASKS[1])
    shutil.copy(copy / a, copy / b)
    m = json.loads((copy / Files.MANIFEST).read_text())
    m["files"][b] = {"sha256": sha256_file(copy / b), "bytes": (copy / b).stat().st_size}
    (copy / Files.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="path says otherwise"):
        load_bundle(copy)


def test_path_escape_is_refused(copy):
    m = json.loads((copy / Files.MANIFEST).read_text())
    m["files"]["../outside"] = {"sha256": "0", "bytes": 1}
    (copy / Files.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="escapes"):
        load_bundle(copy)


def test_linear_cache_matches_fresh_jvps(bundle):
    ev = bundle.evaluator()
    from arith.evaluate import Evaluator

    plain = Evaluator(bundle.base, bundle.heads, bundle.data)
    tv = bundle.vectors["linear"][TASKS[0]]
    assert torch.allclose(ev.jvp(tv, "test"), plain.jvp(tv, "test"), atol=1e-5)
    small = bundle.evaluator(max_per_task=10)
    assert torch.allclose(small.jvp(tv, "test"), Evaluator(bundle.base, bundle.heads, bundle.data, 10).jvp(tv, "test"),
                          atol=1e-5)


def test_one_head_shared_by_two_tasks_is_written_and_read_back(bundle, tmp_path):
    """Two tasks of one concept group share one zero-shot head tensor (the default's digits and street)."""
    from safetensors.torch import load_file

    from arith.bundle import BundleWriter
    from arith.heads import heads_from_tensors

    t0, t1 = TASKS[0], TASKS[1]
    w = BundleWriter(tmp_path / "s", "shared", bundle.base.spec, bundle.base.id,
                     [bundle.tasks[t0], bundle.tasks[t1]], "")
    w.put_heads({t0: bundle.heads[t0], t1: bundle.heads[t0]})
    got = heads_from_tensors(load_file(str(tmp_path / "s" / Files.HEADS)), [t0, t1], bundle.base.embed_dim)
    assert torch.equal(got[t0].weight, bundle.heads[t0].weight)
    assert torch.equal(got[t1].weight, bundle.heads[t0].weight)


def test_a_build_into_another_base_models_bundle_says_it_starts_over(copy):
    """A build keeps nothing of a bundle of another θ0, and says so (it used to replace it without a word)."""
    from arith.build import BuildPlan, open_writer
    from arith.data import get_task

    from conftest import tiny_base

    old = json.loads((copy / "manifest.json").read_text())["base"]["id"]
    said, other = [], tiny_base(seed=1)
    sources = [get_task(t) for t in TASKS]
    writer = open_writer(copy, BuildPlan(name="tiny", tasks=TASKS, modes=MODES), other, [s.info() for s in sources],
                         sources, said.append)
    assert other.id != old and writer.replaced_base == old
    assert said == [f"build: {copy} holds a bundle of another base model ({old}); starting over"]
    assert writer.manifest["files"] == {} and writer.manifest["base"]["id"] == other.id
