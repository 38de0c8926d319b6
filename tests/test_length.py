"""ξ at one length: every task vector rescaled to ‖τ‖ = L·‖θ0‖ before the grid, so modes compare at one distance."""

import json
import math
import statistics

import numpy as np
import pytest

from arith.cli import main
from arith.disentangle import xi_grid
from arith.explore import Explorer
from arith.parts import length_rows, xi_pairs
from ui.charts import xi_heatmap
from ui.state import xi_click

GRID3 = [-1.0, 0.0, 1.0]


@pytest.fixture(scope="module")
def ex(bundle_dir):
    return Explorer.open(bundle_dir)


def test_theta0_norm_is_the_encoders(ex):
    params = ex.bundle.base.params
    assert ex.theta0_norm == pytest.approx(math.sqrt(sum(float(t.double().pow(2).sum()) for t in params.values())))


@pytest.mark.parametrize("mode", ["full", "attn", "linear"])
def test_a_grid_at_one_length_takes_each_vector_to_that_length(ex, mode):
    a, b = xi_pairs(ex)[0]
    vs = ex.vectors(mode)
    res = ex.xi(mode, a, b, alphas=GRID3, length=0.05)
    assert res["length"] == 0.05 and res["grid"] == GRID3 and res["mode"] == mode
    for tv, coefs in ((vs[a], res["alpha1"]), (vs[b], res["alpha2"])):
        c = coefs[-1]  # a = 1: the coefficient that takes τ to 0.05 ‖θ0‖
        assert c * tv.norm() == pytest.approx(0.05 * ex.theta0_norm)
        assert coefs == pytest.approx([g * c for g in GRID3])
    # ξ at a length is ξ of the vectors rescaled to it, on the plain grid (one image either way at most per cell:
    # a·(c τ) and (a c)·τ round differently)
    k1, k2 = (0.05 * ex.theta0_norm / vs[t].norm() for t in (a, b))
    ref = xi_grid(ex.evaluator(ex._xi_n()), vs[a].scale(k1), vs[b].scale(k2), a, b, GRID3)
    one = 1 / min(ref["images_per_task"])
    assert all(abs(x - y) <= one + 1e-9 for r, q in zip(res["prediction"], ref["prediction"]) for x, y in zip(r, q))
    assert np.allclose(res["representation"], ref["representation"], rtol=1e-4, atol=1e-6)
    # the stored grids are the vectors as built: never served for a length, nor a length's grid for them
    stored = ex.results["disentanglement"][mode][f"{a}|{b}"]
    at_stored = ex.xi(mode, a, b, alphas=stored["alpha1"], length=0.05)
    assert at_stored["length"] == 0.05 and at_stored["alpha1"] != stored["alpha1"]
    assert ex.cached_xi(mode, a, b, stored["alpha1"], length=0.05)["alpha1"] == at_stored["alpha1"]
    plain = ex.xi(mode, a, b, alphas=GRID3)
    assert "length" not in plain and plain["alpha1"] == GRID3
    assert ex.cached_xi(mode, a, b, GRID3, length=0.05)["prediction"] == res["prediction"]
    assert ex.cached_xi(mode, a, b, GRID3, length=0.07) is None


def test_modes_at_one_length_reach_the_same_distance_with_their_own_coefficients(ex):
    a, b = xi_pairs(ex)[0]
    full, attn = (ex.xi(m, a, b, alphas=GRID3, length=0.02) for m in ("full", "attn"))
    assert full["alpha1"][-1] * ex.vectors("full")[a].norm() == pytest.approx(attn["alpha1"][-1] * ex.vectors("attn")[a].norm())
    assert full["alpha1"] != attn["alpha1"]
    for bad in (0, -0.1, float("nan"), float("inf"), True, "0.05"):
        with pytest.raises(ValueError, match="positive number"):
            ex.xi("attn", a, b, alphas=GRID3, length=bad)
        with pytest.raises(ValueError, match="positive number"):
            ex.cached_xi("attn", a, b, GRID3, length=bad)
    assert ex.xi("attn", a, b, alphas=GRID3, length=np.float32(0.02))["alpha1"] == pytest.approx(attn["alpha1"])


def test_length_rows_put_the_vectors_own_length_beside_the_chosen_ones(ex):
    with pytest.raises(ValueError, match="same column twice"):
        length_rows(ex, ["attn"], [0.02, 0.0200000001])
    rows = {r["mode"]: r for r in length_rows(ex, ["attn", "full@attn"], [0.02])}
    pairs = xi_pairs(ex)
    for name, r in rows.items():
        vs = ex.vectors(name)
        assert r["‖τ‖/‖θ0‖"] == pytest.approx(statistics.fmean(tv.norm() for tv in vs.values()) / ex.theta0_norm)
        assert r["mean ξ"] == pytest.approx(statistics.fmean(ex.xi(name, a, b)["mean"]["prediction"] for a, b in pairs))
        assert r["mean ξ at 0.02"] == pytest.approx(statistics.fmean(
            ex.xi(name, a, b, length=0.02)["mean"]["prediction"] for a, b in pairs))


def test_cli_disentangle_and_table_at_one_length(bundle_dir, capsys):
    a, b = ["synthetic-stripes", "synthetic-colours"]
    assert main(["disentangle", "--bundle", str(bundle_dir), "--mode", "attn", "--tasks", a, b, "--grid", "3",
                 "--length", "0.03", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["length"] == 0.03 and res["grid"] == [-2.0, 0.0, 2.0]
    assert main(["table", "--bundle", str(bundle_dir), "--lengths", "0.03", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["lengths"]
    assert [r["mode"] for r in rows] == ["full", "attn", "linear", "mlp"] and all("mean ξ at 0.03" in r for r in rows)
    assert main(["table", "--bundle", str(bundle_dir), "--lengths", "0.03"]) == 0
    assert "| mode | ‖τ‖/‖θ0‖ | mean ξ | mean ξ at 0.03 |" in capsys.readouterr().out


def test_a_heatmap_at_one_length_is_drawn_on_its_grid_and_a_click_sets_the_cells_own_coefficients(ex):
    a, b = xi_pairs(ex)[0]
    res = ex.xi("attn", a, b, alphas=GRID3, length=0.05)
    fig = xi_heatmap(res, "prediction", 2.0, "attn", current=(res["alpha1"][-1], 0.0), snap=lambda v: round(v, 4))
    heat, cells, mark = fig.data
    assert list(heat.x) == list(heat.y) == GRID3 and "a " in fig.layout.xaxis.title.text
    i = 8  # the last cell: a = (1, 1)
    assert list(cells.customdata[i][3:5]) == [res["alpha1"][-1], res["alpha2"][-1]]
    assert xi_click({"x": 1.0, "y": 1.0, "customdata": list(cells.customdata[i])}, a, b) == {
        a: pytest.approx(round(res["alpha1"][-1] / 0.05) * 0.05), b: pytest.approx(round(res["alpha2"][-1] / 0.05) * 0.05)}
    assert (mark.x[0], mark.y[0]) == pytest.approx((0.0, 1.0))  # the current λ, placed on the grid
    # a cell beyond the sliders' ±2 says so and a click on it opens nothing; an ✕ off the grid is left out
    far = {**res, "alpha1": [2.5 * v / res["alpha1"][-1] for v in res["alpha1"]], "alpha2": res["alpha2"]}  # a1 = ±2.5
    fig = xi_heatmap(far, "prediction", 2.0, "attn", current=(2.0, 2.0), snap=lambda v: round(v, 4))
    assert len(fig.data) == 2 and "opens nothing" in fig.data[1].customdata[i][5]
    assert xi_click({"x": 1.0, "y": 1.0, "customdata": list(fig.data[1].customdata[i])}, a, b) is None
    assert "a click sets" in fig.data[1].customdata[4][5]  # a = (0, 0): λ 0, reachable
    plain = xi_heatmap(ex.xi("attn", a, b, alphas=GRID3), "prediction", 2.0, "attn")
    assert list(plain.data[0].x) == GRID3 and plain.layout.xaxis.title.text.startswith("λ ")
