"""The embedded default's pieces: deterministic data, pre-training, the --quick build, the results table."""

import json

import numpy as np
import pytest
import torch

from arith.cli import main
from arith.data import get_task
from arith.default import concepts as C
from arith.default.build import build_default
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
    for key in ("accuracy", "addition", "negation", "disentanglement", "kernel", "similarity", "training", "cost",
                "pretraining"):
        assert key in b.results, key
    assert b.results["cost"]["attn"]["seconds_per_step"] > 0
    assert b.manifest["provenance"]["command"] is not None and b.manifest["provenance"]["minutes"] > 0
    # zero-shot heads are the frozen concept rows of each task's classes
    assert b.heads["digits"].num_classes == 10 and b.heads["terrain"].num_classes == 8


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


def test_lr_sweep_uses_validation_and_is_saved(quick, capsys):
    from arith.bundle import load_bundle

    args = ["lr-sweep", "--bundle", str(quick), "--modes", "attn", "full", "--lrs", "1e-4", "1e-3",
            "--tasks", "digits", "--steps", "3", "--save", "--json"]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["chosen"]) == {"attn", "full"} and res["chosen"]["attn"] in (1e-4, 1e-3)
    assert len(res["runs"]) == 4 and all(set(r["val_accuracy"]) == {"digits"} for r in res["runs"])
    best = max(r["val_mean"] for r in res["runs"] if r["mode"] == "attn")
    assert next(r for r in res["runs"] if r["mode"] == "attn" and r["lr"] == res["chosen"]["attn"])["val_mean"] == best
    assert load_bundle(quick).results["lr_selection"]["chosen"] == res["chosen"]
