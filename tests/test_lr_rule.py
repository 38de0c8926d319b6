"""The learning-rate rule of ``lr-sweep`` (README: the smallest lr within one binomial standard error of the best mean
single-task validation accuracy; seeds averaged; earlier sweeps reused only for the same run), checked on runs
handed in through ``previous`` so that nothing trains."""

from __future__ import annotations

import json
import math

import pytest

from arith.bundle import load_bundle
from arith.lrsweep import choose_lr, lr_sweep
from arith.specs import FinetuneConfig

from conftest import TASKS


def test_the_best_is_the_highest_score_wherever_its_lr_is():
    # best 0.90 at the middle lr; 10 000 images: se = sqrt(0.9 · 0.1 / 10 000) = 0.003
    lr, se = choose_lr({1e-4: 0.80, 3e-4: 0.90, 1e-3: 0.70}, 10_000)
    assert lr == 3e-4 and se == pytest.approx(0.003)


def test_the_margin_is_a_standard_error_not_a_variance():
    # 100 images at 0.9: se = 0.03 (the variance, 0.0009, would leave only the best itself)
    assert choose_lr({1e-4: 0.88, 1e-3: 0.90}, 100) == (1e-4, pytest.approx(0.03))
    assert choose_lr({1e-4: 0.86, 1e-3: 0.90}, 100)[0] == 1e-3  # 0.04 below: outside one se


def _runs(bundle, mode, tasks, table, *, schedule=True, steps=None):
    """Run records as lr-sweep writes them: ``table`` maps (lr, seed) -> val_mean."""
    recipe = bundle.finetune_config(mode)
    out = []
    for (lr, seed), mean in table.items():
        cfg = FinetuneConfig.from_dict({**recipe.to_dict(), "mode": mode, "lr": lr, "seed": seed})
        sched = {k: v for k, v in cfg.to_dict().items() if k not in ("mode", "lr")}
        r = {"mode": mode, "lr": lr, "seed": seed, "steps": steps or cfg.steps, "val_mean": mean,
             "val_accuracy": {t: mean for t in tasks}}
        if schedule:
            r["schedule"] = sched
        out.append(r)
    return out


def _previous(tmp_path, bundle, runs, name="prev.json", base_id=None):
    path = tmp_path / name
    path.write_text(json.dumps({"base_id": base_id or bundle.base.id, "runs": runs}))
    return [str(path)]


def test_an_lr_scores_the_mean_over_seeds_and_the_error_is_over_the_validation_images(bundle_dir, bundle, tmp_path):
    tasks = list(TASKS[:2])
    runs = _runs(bundle, "attn", tasks, {(1e-3, 0): 0.5, (1e-3, 1): 0.9, (1e-2, 0): 0.8, (1e-2, 1): 0.8})
    res = lr_sweep(bundle_dir, ["attn"], [1e-3, 1e-2], tasks=tasks, seeds=[0, 1], train=False, log=lambda m: None,
                   previous=_previous(tmp_path, bundle, runs))
    n_val = sum(len(bundle.data[t]["val"]) for t in tasks)
    assert res["validation_images"] == n_val
    assert res["val_mean"]["attn"] == {"0.001": pytest.approx(0.7), "0.01": pytest.approx(0.8)}  # means, not maxima
    se = math.sqrt(0.8 * 0.2 / n_val)
    assert res["standard_error"]["attn"] == pytest.approx(se)
    assert res["best"]["attn"] == 1e-2 and res["chosen"]["attn"] == (1e-3 if 0.7 >= 0.8 - se else 1e-2)
    # the spread over seeds beside it: the sample standard deviation (0.5, 0.9: 0.2 · √2)
    assert res["seed_sd"]["attn"] == {"0.001": pytest.approx(0.2 * math.sqrt(2)), "0.01": pytest.approx(0.0)}


def test_the_validation_images_are_the_validation_splits_not_the_test_splits(bundle_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from arith.specs import Files

    from conftest import manifest, rehash, write_manifest

    # a copy whose first task keeps only 10 of its validation images: validation and test sizes now differ
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    rel = Files.data(TASKS[0])
    raw = load_file(str(copy / rel))
    raw["val.images"], raw["val.labels"] = raw["val.images"][:10].contiguous(), raw["val.labels"][:10].contiguous()
    save_file(raw, str(copy / rel))
    rehash(copy, rel)
    m = manifest(copy)  # the stored J τ of the validation images no longer fit them: drop it (it is optional)
    m["files"].pop(Files.linear_cache("val"), None)
    write_manifest(copy, m)
    b = load_bundle(copy)
    tasks = list(TASKS[:2])
    assert len(b.data[TASKS[0]]["val"]) == 10 != len(b.data[TASKS[0]]["test"])
    runs = _runs(b, "attn", tasks, {(1e-3, 0): 0.5})
    res = lr_sweep(copy, ["attn"], [1e-3], tasks=tasks, seeds=[0], train=False, log=lambda m: None,
                   previous=_previous(tmp_path, b, runs))
    assert res["validation_images"] == 10 + len(b.data[TASKS[1]]["val"])


def test_of_equally_good_lrs_the_best_is_the_smallest(bundle_dir, bundle, tmp_path):
    tasks = list(TASKS[:1])
    runs = _runs(bundle, "attn", tasks, {(1e-3, 0): 0.75, (1e-2, 0): 0.75})
    res = lr_sweep(bundle_dir, ["attn"], [1e-3, 1e-2], tasks=tasks, seeds=[0], train=False, log=lambda m: None,
                   previous=_previous(tmp_path, bundle, runs))
    assert res["best"]["attn"] == res["chosen"]["attn"] == 1e-3


def test_an_earlier_run_of_another_length_is_not_reused(bundle_dir, bundle, tmp_path):
    # a run saved before schedules were recorded matches on mode, lr and steps: other steps are another run
    tasks = list(TASKS[:1])
    own = bundle.finetune_config("attn")
    runs = _runs(bundle, "attn", tasks, {(1e-3, own.seed): 0.75}, schedule=False, steps=own.steps + 1)
    with pytest.raises(ValueError, match="lack 1 run"):
        lr_sweep(bundle_dir, ["attn"], [1e-3], tasks=tasks, train=False, log=lambda m: None,
                 previous=_previous(tmp_path, bundle, runs))
    same = _runs(bundle, "attn", tasks, {(1e-3, own.seed): 0.75}, schedule=False)
    res = lr_sweep(bundle_dir, ["attn"], [1e-3], tasks=tasks, train=False, log=lambda m: None,
                   previous=_previous(tmp_path, bundle, same))
    assert res["chosen"]["attn"] == 1e-3


def test_an_earlier_sweep_on_another_base_is_refused(bundle_dir, bundle, tmp_path):
    tasks = list(TASKS[:1])
    runs = _runs(bundle, "attn", tasks, {(1e-3, 0): 0.75})
    with pytest.raises(ValueError, match="another base model"):
        lr_sweep(bundle_dir, ["attn"], [1e-3], tasks=tasks, seeds=[0], train=False, log=lambda m: None,
                 previous=_previous(tmp_path, bundle, runs, base_id="some-other-base#0"))


def test_a_sweep_on_another_device_or_data_never_reuses_the_bundles_vectors(bundle_dir, monkeypatch):
    # the bundle's vectors were trained on the CPU: a run on a GPU trains its own (what _run is told; nothing trains)
    import arith.lrsweep as lrsweep
    from arith.bundle import Bundle

    told = []

    def run(b, ev, mode, lr, cfg, tasks, data, reuse, *rest):
        told.append(reuse)
        return {"mode": mode, "lr": lr, "seed": cfg.seed, "steps": cfg.steps, "val_accuracy": dict.fromkeys(tasks, 0.5),
                "val_mean": 0.5, "device": "x", "schedule": {}}

    monkeypatch.setattr(lrsweep, "_run", run)
    monkeypatch.setattr(Bundle, "evaluator", lambda self, *a, **kw: None)
    for device in ("cuda", "cpu"):
        lr_sweep(bundle_dir, ["attn"], [1e-3], tasks=[TASKS[0]], device=device, log=lambda m: None)
    # nor does a run on other training data (another train_n) than the bundle's
    own = load_bundle(bundle_dir).manifest["plan"].get("train_n")
    lr_sweep(bundle_dir, ["attn"], [1e-3], tasks=[TASKS[0]], train_n=(own or 64) // 2, log=lambda m: None)
    assert told == [False, True, False]
