"""Per-image predictions (arith/examples.py, ``python -m arith predict``, the Examples page): the invariants that tie
them to the accuracies every other view shows."""

import json

import numpy as np
import pytest
import torch

from arith.bundle import load_bundle
from arith.cli import main
from arith.commands.merge import confusions
from arith.examples import SHOWN, rows_where
from arith.explore import Explorer
from ui.common import pixels

from conftest import MODES, TASKS

STRIPES, COLOURS, QUADS = TASKS


@pytest.fixture(scope="module")
def ex(bundle_dir):
    return Explorer(load_bundle(bundle_dir))


def _check_counts(r: dict) -> None:
    """Everything a prediction answer says about itself agrees."""
    y, b, m = (np.array(r[k]) for k in ("labels", "base", "merged"))
    c, n = r["counts"], len(y)
    assert c["n"] == n == len(r["confidence"]) and c["base"] == (b == y).sum() and c["merged"] == (m == y).sum()
    assert c["fixed"] == ((b != y) & (m == y)).sum() and c["broken"] == ((b == y) & (m != y)).sum()
    assert c["merged"] - c["base"] == c["fixed"] - c["broken"]
    for key, pred in (("confusion", m), ("confusion_base", b)):
        conf = np.array(r[key])
        assert conf.shape == (len(r["classes"]),) * 2 and conf.sum() == n
        assert np.trace(conf) == (pred == y).sum()
        assert (conf.sum(axis=1) == np.bincount(y, minlength=len(r["classes"]))).all()
    assert all(1 / len(r["classes"]) - 1e-6 <= p <= 1 + 1e-6 for p in r["confidence"])
    pc = r["per_class"]  # per class: the diagonal over the row sums, for the classes with images
    conf = np.array(r["confusion"])
    seen = [i for i in range(len(r["classes"])) if conf[i].sum()]
    assert pc["classes"] == [r["classes"][i] for i in seen] and pc["n"] == [conf[i].sum() for i in seen]
    assert pc["merged"] == pytest.approx([conf[i, i] / conf[i].sum() for i in seen])
    assert sum(a * k for a, k in zip(pc["base"], pc["n"])) == pytest.approx(c["base"])
    if r["alone"] is not None:
        assert sum(a * k for a, k in zip(pc["alone"], pc["n"])) == pytest.approx(c["alone"])


@pytest.mark.parametrize("mode", MODES)
def test_zero_coefficients_predict_as_theta0_and_one_task_at_1_as_its_own_model(ex, mode):
    r0 = ex.predictions(mode, {t: 0.0 for t in TASKS}, STRIPES)
    assert r0["merged"] == r0["base"] and r0["counts"]["fixed"] == r0["counts"]["broken"] == 0
    assert r0["confusion"] == r0["confusion_base"]
    r1 = ex.predictions(mode, {STRIPES: 1.0}, STRIPES)
    assert r1["alone_vector"] == STRIPES and r1["merged"] == r1["alone"]
    assert r1["base"] == r0["base"] and r1["labels"] == r0["labels"]
    for r in (r0, r1):
        _check_counts(r)


@pytest.mark.parametrize("mode", ["attn", "linear", "full@attn"])
def test_counts_are_the_accuracies_the_other_views_show(ex, mode):
    coefs = {STRIPES: 0.7, COLOURS: -0.4, QUADS: 1.3}
    for task in TASKS:
        r = ex.predictions(mode, coefs, task, "val")
        _check_counts(r)
        n = r["counts"]["n"]
        # the accuracies are fp32 means: equal within 1e-6, far below one image (1 / n)
        acc = ex.evaluate(mode, coefs, "val", tasks=[task])["accuracy"][task]
        assert r["counts"]["merged"] / n == pytest.approx(acc, abs=1e-6)
        assert r["counts"]["base"] / n == pytest.approx(ex.zeroshot("val")[task], abs=1e-6)
        assert r["counts"]["alone"] / n == pytest.approx(ex.finetuned(mode, "val")[task], abs=1e-6)
        assert r["classes"] == list(ex.bundle.tasks[task].classnames)
        assert r["labels"] == ex.bundle.data[task]["val"].labels.tolist()


def test_a_workspace_vector_named_after_the_task_is_its_own_model(ex):
    tv = ex.vectors("attn")[COLOURS]
    half = tv * 0.5  # keeps its task
    mine = ex.predictions("attn", {COLOURS: 1.0}, COLOURS, extra={COLOURS: half})
    other = ex.predictions("attn", {"mine": 1.0}, COLOURS, extra={"mine": half})
    bundle = ex.predictions("attn", {COLOURS: 1.0}, COLOURS)
    assert mine["alone_vector"] == COLOURS and mine["merged"] == mine["alone"]
    assert other["alone_vector"] == COLOURS and other["alone"] == bundle["alone"]  # another name: the bundle's stays
    assert other["merged"] == mine["merged"]  # the same vector, under two names
    # the memo keeps the workspaces apart: the half-length vector's answer is not the bundle's
    assert mine["confidence"] != bundle["confidence"]


def test_answers_are_the_callers_own_and_bad_requests_are_named(ex):
    r = ex.predictions("attn", {STRIPES: 1.0}, STRIPES)
    r["merged"][0] = -1
    r["counts"]["n"] = 0
    again = ex.predictions("attn", {STRIPES: 1.0}, STRIPES)
    assert again["merged"][0] != -1 and again["counts"]["n"] > 0
    assert 0 < ex._examples.nbytes <= ex._examples.max_bytes  # the memo counts its arrays' bytes
    with pytest.raises(KeyError, match="no evaluation images of task 'nope'"):
        ex.predictions("attn", {}, "nope")
    with pytest.raises(ValueError, match="split"):
        ex.predictions("attn", {}, STRIPES, split="train")
    with pytest.raises(KeyError, match="no attn task vector named"):
        ex.predictions("attn", {"nope": 1.0}, STRIPES)
    with pytest.raises(ValueError):
        ex.predictions("attn", {STRIPES: float("nan")}, STRIPES)
    with pytest.raises(TypeError):
        ex.predictions("attn", [1.0], STRIPES)


def test_images_are_the_predicted_ones_in_their_order(ex, bundle_dir):
    r = ex.predictions("attn", {STRIPES: 1.0}, COLOURS)
    all_images = ex.images(COLOURS)
    src = ex.bundle.data[COLOURS]["test"].images
    assert all_images.dtype == np.uint8 and all_images.shape == (len(r["labels"]), *src.shape[2:], 3)
    assert (all_images == src.permute(0, 2, 3, 1).numpy()).all()
    rows = [3, 0, 7]
    assert (ex.images(COLOURS, "test", rows) == all_images[rows]).all()
    all_images[0] = 0  # a copy: the bundle's images are not written to
    assert torch.equal(ex.bundle.data[COLOURS]["test"].images, src) and src[0].any()
    with pytest.raises(IndexError, match="no row"):
        ex.images(COLOURS, "test", [len(r["labels"])])
    sub = Explorer(load_bundle(bundle_dir), max_per_task=10)  # the subset in use, as the predictions: the first 10
    assert len(sub.images(COLOURS)) == len(sub.predictions("attn", {}, COLOURS)["labels"]) == 10
    assert (sub.images(COLOURS) == src[:10].permute(0, 2, 3, 1).numpy()).all()
    for odd in ([1.7], [True], ["1"]):
        with pytest.raises(TypeError, match="whole numbers"):
            ex.images(COLOURS, "test", odd)
    assert (ex.images(COLOURS, "test", [np.int64(2)]) == ex.images(COLOURS, "test", [2])).all()


def test_rows_where_picks_what_it_says(ex):
    r = ex.predictions("attn", {STRIPES: 1.0, COLOURS: 1.0, QUADS: 1.0}, QUADS)
    y, b, m = r["labels"], r["base"], r["merged"]
    got = {w: rows_where(r, w) for w in SHOWN}
    assert got["all"] == list(range(len(y)))
    assert len(got["fixed"]) == r["counts"]["fixed"] and len(got["broken"]) == r["counts"]["broken"]
    assert len(got["wrong"]) == len(y) - r["counts"]["merged"]
    assert set(got["fixed"]) | set(got["broken"]) <= set(got["changed"])
    assert all(m[i] != b[i] for i in got["changed"]) and all(m[i] != y[i] for i in got["wrong"])
    with pytest.raises(ValueError, match="one of"):
        rows_where(r, "right")
    p = r["confidence"]
    for which in SHOWN:  # the orders are the same rows, sorted by confidence, ties in the split's order
        sure, unsure = rows_where(r, which, "confident"), rows_where(r, which, "unsure")
        assert sorted(sure) == sorted(unsure) == got[which]
        assert sure == sorted(got[which], key=lambda i: (-p[i], i)) and unsure == sorted(got[which], key=lambda i: (p[i], i))
    with pytest.raises(ValueError, match="order"):
        rows_where(r, "all", "random")


def test_prediction_rows_are_the_answer_image_by_image(ex, bundle_dir, tmp_path, capsys):
    from arith.examples import prediction_rows

    r = ex.predictions("attn", {STRIPES: 1.0, COLOURS: 1.0}, STRIPES)
    rows = prediction_rows(r)
    names = r["classes"]
    assert [row["image"] for row in rows] == list(range(r["counts"]["n"]))
    assert [row["class"] for row in rows] == [names[y] for y in r["labels"]]
    assert [row["edited"] for row in rows] == [names[m] for m in r["merged"]]
    assert [row["own_model"] for row in rows] == [names[a] for a in r["alone"]]
    assert sum(row["change"] == "fixed" for row in rows) == r["counts"]["fixed"]
    assert sum(row["change"] == "broken" for row in rows) == r["counts"]["broken"]
    assert "own_model" not in prediction_rows({**r, "alone": None})[0]
    # the command writes the same rows as CSV
    import pandas as pd

    out = tmp_path / "p.csv"
    assert main(["predict", "--bundle", str(bundle_dir), "--mode", "attn", "--task", STRIPES, "--coef", f"{STRIPES}=1",
                 "--coef", f"{COLOURS}=1", "--csv", str(out)]) == 0
    capsys.readouterr()
    assert pd.read_csv(out, keep_default_na=False).to_dict("records") == pd.DataFrame(rows).to_dict("records")
    assert main(["predict", "--bundle", str(bundle_dir), "--task", STRIPES, "--csv", str(tmp_path)]) == 2
    assert f"is a directory: give the CSV file to write, e.g. {tmp_path / 'predictions.csv'}" in capsys.readouterr().err
    # a bundle's own file is never an output: overwriting it would leave the bundle unloadable
    manifest = bundle_dir / "manifest.json"
    before = manifest.read_bytes()
    assert main(["predict", "--bundle", str(bundle_dir), "--task", STRIPES, "--csv", str(manifest)]) == 2
    assert "own manifest.json" in capsys.readouterr().err and manifest.read_bytes() == before


def test_confusions_lists_the_largest_off_diagonal_cells_with_theta0s():
    r = {"classes": ["a", "b", "c"], "labels": [0, 0, 0, 1, 1, 2], "base": [1, 1, 0, 1, 0, 2],
         "confusion": [[1, 0, 2], [3, 0, 0], [0, 0, 0]]}
    assert confusions(r, 5) == [{"true": "b", "predicted": "a", "images": 3, "θ0": 1},
                                {"true": "a", "predicted": "c", "images": 2, "θ0": 0}]
    assert confusions(r, 1) == confusions(r, 5)[:1] and confusions(r, 0) == []


def test_predict_command(bundle_dir, capsys, ex):
    argv = ["predict", "--bundle", str(bundle_dir), "--mode", "attn", "--task", COLOURS, "--coef", f"{STRIPES}=0.5",
            "--coef", f"{COLOURS}=0.5"]
    assert main([*argv, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    ref = ex.predictions("attn", {STRIPES: 0.5, COLOURS: 0.5}, COLOURS)
    assert res["counts"] == ref["counts"] and res["merged"] == ref["merged"] and res["confusion"] == ref["confusion"]
    assert res["confusions"] == confusions(ref, 5)  # --top's list, in the JSON too
    assert main(argv) == 0
    text = capsys.readouterr().out
    c = ref["counts"]
    assert f"{c['fixed']} images fixed, {c['broken']} broken" in text
    assert f"θ0 {100 * c['base'] / c['n']:.1f} % → edited {100 * c['merged'] / c['n']:.1f} %" in text
    for bad, msg in ((["--top", "-1"], "--top must be 0 or more"), (["--split", "val", "--task", "nope"], "nope")):
        assert main([*argv, *bad]) == 2
        assert msg in capsys.readouterr().err


def test_alpha_sets_every_bundle_vector_of_the_mode_and_coef_overrides_it(bundle_dir, capsys, ex):
    def evaluate(*extra):
        assert main(["evaluate", "--bundle", str(bundle_dir), "--mode", "attn", *extra, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    assert evaluate("--alpha", "0.5")["coefficients"] == {t: 0.5 for t in TASKS}
    got = evaluate("--alpha", "0.5", "--coef", f"{QUADS}=-1")
    assert got["coefficients"] == {STRIPES: 0.5, COLOURS: 0.5, QUADS: -1.0}
    assert got["accuracy"] == ex.evaluate("attn", {STRIPES: 0.5, COLOURS: 0.5, QUADS: -1.0})["accuracy"]
    assert main(["evaluate", "--bundle", str(bundle_dir), "--alpha", "inf"]) == 2
    assert "--alpha must be a finite number" in capsys.readouterr().err


def test_alpha_with_no_vector_named_after_a_bundle_task_is_refused(bundle_dir, capsys, ex, tmp_path):
    """A mode only --vector files have (named otherwise): --alpha would set nothing and print θ0's accuracies."""
    from arith.modes import get_mode
    from arith.taskvec import TaskVector

    params = ex.bundle.base.params
    keys = get_mode("attn_bias").trainable_keys(params)
    tv = TaskVector({k: 1e-3 * torch.ones_like(params[k]) for k in keys}, COLOURS, "attn_bias", ex.bundle.base.id)
    path = tv.save(tmp_path / "ab.safetensors")
    for command in (["evaluate"], ["predict", "--task", COLOURS]):
        argv = [*command, "--bundle", str(bundle_dir), "--mode", "attn_bias", "--vector", f"ab={path}"]
        assert main([*argv, "--alpha", "0.5"]) == 2
        assert "--alpha: no attn_bias task vector is named after a bundle task" in capsys.readouterr().err
        assert main([*argv, "--coef", "ab=0.5", "--json"]) == 0  # named, it counts
        assert json.loads(capsys.readouterr().out)["coefficients"] == {"ab": 0.5}


def test_pixels_enlarges_by_whole_pixels():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    big = pixels(img, size=9)
    assert big.shape == (6, 9, 3) and (big[::3, ::3] == img).all() and (big[2, 8] == img[0, 2]).all()
    assert pixels(img, size=1).shape == img.shape
