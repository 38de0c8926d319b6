"""The benchmark scripts keep working: each runs on the tiny bundle with minimal sizes and writes its JSON.
(No timing is asserted: the figures belong in BENCHMARKS.md.)"""

from __future__ import annotations

import json

import pytest


def test_slider_benchmark(bundle_dir, tmp_path, capsys):
    from bench.slider import main

    out = tmp_path / "slider.json"
    res = main(["--bundle", str(bundle_dir), "--sets", "3", "--baseline", "--json", str(out)])  # no --threads: it is
    # process-wide and would change the rest of the test session
    assert set(res["modes"]) == {"full", "attn", "linear", "mlp"}
    for mode, r in res["modes"].items():
        assert r["optimised"]["new"]["n"] == 3 and r["baseline"]["cached"]["n"] == 3 and r["speedup"] > 0, mode
    assert json.loads(out.read_text())["machine"]["torch_threads"] == res["threads"] >= 1
    assert "speedup" in capsys.readouterr().out


def test_slider_benchmark_times_another_merge_method(bundle_dir, tmp_path):
    from bench.slider import main

    res = main(["--bundle", str(bundle_dir), "--sets", "2", "--modes", "attn", "linear", "--method", "dare:seed=3",
                "--no-rerun", "--json", str(tmp_path / "s.json")])
    assert res["method"] == "dare:seed=3" and set(res["modes"]) == {"attn", "linear"}
    assert all(r["optimised"]["new"]["n"] == 2 for r in res["modes"].values())
    with pytest.raises(SystemExit):  # argparse names a bad spec and exits
        main(["--bundle", str(bundle_dir), "--method", "dare:seed=-1"])


def test_on_demand_benchmark(bundle_dir, tmp_path):
    from bench.on_demand import main

    res = main(["--bundle", str(bundle_dir), "--modes", "attn", "linear", "--json", str(tmp_path / "o.json")])
    assert set(res["sweep"]) == set(res["examples"]) == {"attn", "linear"}
    assert all(set(s) == {1, 2} and min(s.values()) > 0 for s in res["sweep"].values())  # 3 tasks: 1 and 2 of them
    assert all(set(e) == set(res["tasks"]) for e in res["examples"].values())
    assert set(res["examples_view"]) == set(res["tasks"][:-1])
    assert json.loads((tmp_path / "o.json").read_text())["tasks"] == res["tasks"]


def test_churn_study_counts_add_up_to_the_stored_addition(bundle_dir, tmp_path):
    from arith.bundle import load_bundle
    from bench.churn import main

    res = main(["--bundle", str(bundle_dir), "--json", str(tmp_path / "c.json")])
    stored = load_bundle(bundle_dir).results["addition"]
    zs = load_bundle(bundle_dir).results["accuracy"]["zeroshot"]["test"]
    for mode, r in res["modes"].items():
        per = r["per_task"]
        assert r["alpha"] == stored[mode]["alpha"] and r["fixed"] == sum(c["fixed"] for c in per.values())
        for t, c in per.items():  # fixed − broken is the stored addition's change over zero-shot, per task
            assert (c["fixed"] - c["broken"]) / c["n"] == pytest.approx(stored[mode]["accuracy"][t] - zs[t], abs=1e-6)


def test_diagnostics_benchmark(bundle_dir, tmp_path):
    from bench.diagnostics import main

    res = main(["--bundle", str(bundle_dir), "--grids", "2", "3", "--images", "8", "16", "--scaling-grid", "2",
                "--json", str(tmp_path / "d.json")])
    assert res["xi"]["points"] == 225 and len(res["scaling"]) == 4 and res["kernel"]["seconds"] > 0
    assert res["linearity"]["max_over_min"] >= 1


def test_merge_methods_benchmark_compares_with_an_earlier_run(bundle_dir, tmp_path):
    from bench.merge_methods import main

    first = main(["--bundle", str(bundle_dir), "--json", str(tmp_path / "a.json")])
    assert set(first["tune_linear_task_arithmetic"]["coefficients"]) == set(first["ties_attn_0.7"])
    again = main(["--bundle", str(bundle_dir), "--compare", str(tmp_path / "a.json")])
    c = again["compared_with"]
    assert c["device"] == "cpu" and c["compared"] > 10 and c["differ"] == 0  # the same run: every number the same
    broken = json.loads((tmp_path / "a.json").read_text())
    broken["ties_attn_0.7"][next(iter(broken["ties_attn_0.7"]))] += 0.5
    (tmp_path / "b.json").write_text(json.dumps(broken))
    c = main(["--bundle", str(bundle_dir), "--compare", str(tmp_path / "b.json")])["compared_with"]
    assert c["differ"] == 1 and c["max_abs_diff"] == pytest.approx(0.5) and c["where"].startswith("/ties_attn_0.7/")


@pytest.mark.slow
def test_finetune_cost_benchmark(bundle_dir, tmp_path):
    from bench.finetune_cost import main

    res = main(["--bundle", str(bundle_dir), "--modes", "full", "attn", "--steps", "2", "--warmup", "1",
                "--batch-size", "8", "--json", str(tmp_path / "f.json")])
    attn = res["modes"]["attn"]
    assert attn["trainable_params"] < res["modes"]["full"]["trainable_params"]
    assert attn["state_vs_full"] < 1 and attn["time_vs_full"] > 0 and not attn["mkl_static"]
    static = main(["--bundle", str(bundle_dir), "--modes", "attn", "--steps", "2", "--warmup", "1", "--batch-size", "8",
                   "--mkl-static"])
    assert static["modes"]["attn"]["mkl_static"] and static["modes"]["attn"]["seconds_per_step"] > 0


def test_thread_bits_study_compares_every_count_with_the_first(bundle_dir):
    import torch

    from bench.thread_bits import main

    before = torch.get_num_threads()
    res = main(["--bundle", str(bundle_dir), "--modes", "attn", "--counts", "2", "1", "--steps", "2"])
    rows = res["rows"]
    assert [(r["what"].split()[0], r["threads"]) for r in rows] == [("θ0", 2), ("θ0", 1), ("attn", 2), ("attn", 1)]
    assert rows[0]["bit-identical"] and rows[2]["bit-identical"]  # the reference against itself
    assert torch.get_num_threads() == before  # the study leaves the process's count as it found it


@pytest.mark.slow
def test_app_start_benchmark_without_a_browser(bundle_dir, tmp_path):
    from bench.app_start import main

    res = main(["--bundle", str(bundle_dir), "--runs", "1", "--no-browser", "--json", str(tmp_path / "a.json")])
    assert not res["browser"] and res["cold_start_median_s"] > 0 and res["bundle_tensors_mb"] > 0


@pytest.mark.slow
@pytest.mark.browser
def test_app_start_benchmark_times_the_minimal_page_beside_the_app(bundle_dir, tmp_path):
    from bench.app_start import browser_missing, main

    if browser_missing():
        pytest.skip(browser_missing())
    res = main(["--bundle", str(bundle_dir), "--runs", "1", "--sessions", "0", "--floor", "--json", str(tmp_path / "a.json")])
    assert res["browser"] and len(res["runs"]) == 1 and len(res["floor_runs"]) == 1
    assert res["floor_median_s"] == res["floor_runs"][0] > 0 and res["cold_start_median_s"] > 0
    assert "warm_session_render_s" in res["runs"][0]  # the app's run stays the last: the session probes ran on it


@pytest.mark.slow
def test_allocator_benchmark(bundle_dir, tmp_path):
    from bench.allocator import main

    res = main(["--bundle", str(bundle_dir), "--processes", "1", "--requests", "3", "--thread-per-rerun",
                "--json", str(tmp_path / "m.json")])
    assert len(res["variants"]) == 4 and all(r[0]["median_ms"] > 0 for r in res["variants"].values())
    assert res["variants"]["glibc defaults"][0]["malloc"] is None  # the child honoured ARITH_MALLOC=default


def test_standin_tasks_register_and_load():
    from arith.data import get_task
    from bench.standin import register

    names = register()
    assert len(names) == 8 == len(set(names))
    a, b = get_task(names[0]).load("test", n=4), get_task(names[3]).load("test", n=4)  # same family, other draws
    assert a.images.shape == (4, 3, 32, 32) and not (a.images == b.images).all()


def test_machine_reports_the_load_average_from_before_the_benchmark_ran(monkeypatch):
    import torch

    from bench import _common

    monkeypatch.setattr(_common, "_LOAD_AT_START", None)
    loads = iter([(0.5, 0.6, 0.7), (3.0, 3.0, 3.0)])
    monkeypatch.setattr(_common.os, "getloadavg", lambda: next(loads))
    before = torch.get_num_threads()
    _common.set_threads(None)  # every benchmark's first call: the snapshot
    assert _common.machine()["loadavg_at_start"] == [0.5, 0.6, 0.7]  # not the (3, 3, 3) its own work made later
    assert torch.get_num_threads() == before


def test_merge_options_benchmark_marks_the_best_spec_on_validation(bundle_dir, tmp_path, capsys):
    from bench.merge_options import main

    res = main(["--bundle", str(bundle_dir), "--modes", "attn", "--specs", "ties", "ties:density=1,scope=tensor",
                "--json", str(tmp_path / "o.json")])
    rows = {r["method"]: r for r in res["rows"]}
    assert list(rows) == ["task_arithmetic", "ties", "ties:density=1"]  # specs canonical, task arithmetic first
    best = res["best_on_validation"]["attn"]
    assert best in ("ties", "ties:density=1") and rows[best]["val_normalized"] == max(
        rows[m]["val_normalized"] for m in ("ties", "ties:density=1"))
    assert json.loads((tmp_path / "o.json").read_text())["rows"][1]["alpha"] == rows["ties"]["alpha"]
    assert f"`{best}` ✓" in capsys.readouterr().out
