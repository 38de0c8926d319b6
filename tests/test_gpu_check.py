"""The GPU scripts run end to end (here on the CPU with tiny models): bench/gpu_check.py (the measurements of issue 5),
bench/gpu_build_check.py (the real-CLIP build path and its invariants) and bench/compare_results.py."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def quick_pair(bundle_dir, tmp_path):
    """The tiny bundle and a copy of it."""
    copy = tmp_path / "copy"
    shutil.copytree(bundle_dir, copy)
    return bundle_dir, copy


def test_gpu_check_smoke_run(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--tiny", "--device", "cpu", "--json", str(tmp_path / "out.json")])
    assert json.loads((tmp_path / "out.json").read_text()) == json.loads(json.dumps(res))
    train = {r["mode"]: r for r in res["finetune"]}
    assert set(train) == {"full", "attn", "linear"} and all(r["seconds_per_step"] > 0 for r in train.values())
    assert train["attn"]["trainable"] < train["full"]["trainable"] == train["linear"]["trainable"]
    rows = {(r["mode"], r["method"], r["autocast"]): r for r in res["slider"]}
    ta = "task_arithmetic"
    assert {("attn", ta, "fp32"), ("attn", ta, "bf16"), ("full", ta, "fp32"), ("linear", ta, "fp32")} <= set(rows)
    # TIES (both trims), DARE and DARE-TIES are timed on the slider path too, except for the linearized model (J δ per move)
    assert {(m, s, "fp32") for m in ("attn", "full") for s in ("ties", "ties:scope=vector", "dare", "dare_ties")} <= set(rows)
    assert not any(m == "linear" and s != ta for m, s, _ in rows)
    assert all(r["images"] == 8 * 16 for r in rows.values())
    lin = rows[("linear", ta, "fp32")]
    assert lin["median_s"] < lin["first_call_s"], "warm linear sliders are a weighted sum of cached J τ"
    assert "| slider evaluation, 8 × 16 images |" in capsys.readouterr().out
    assert res["upload"]["base_device"] == "cpu" and res["upload"]["mode"] == "full"  # on a GPU: θ0 there, file here


def test_gpu_build_check_smoke_run(tmp_path, capsys, monkeypatch):
    """bench/gpu_build_check.py: build-bundle on a device and the invariants of what it wrote (here: the CPU)."""
    monkeypatch.setenv("ARITH_DATA_WORKERS", "0")
    from bench.gpu_build_check import main

    res = main(["--device", "cpu", "--model-config", "tiny", "--steps", "2", "--json", str(tmp_path / "b.json")])
    names = [r["check"] for r in res["checks"]]
    assert res["ok"] and len(names) == 12 and "linear: f_lin(θ0) = f(θ0)" in names
    assert sum(n.endswith(")") and "Examples at λ = 1" in n for n in names) == 3  # one per mode
    assert [k for k, _ in res["stages"]] == ["task data", "fine-tuning", "precompute"]
    assert "FAIL" not in capsys.readouterr().out


def test_gpu_build_check_reports_a_broken_invariant(tmp_path, capsys, monkeypatch):
    import bench.gpu_build_check as mod

    monkeypatch.setenv("ARITH_DATA_WORKERS", "0")
    real = mod.checks
    monkeypatch.setattr(mod, "checks", lambda out, device: [*real(out, device), {"check": "planted", "ok": False,
                                                                                 "detail": "-"}])
    with pytest.raises(SystemExit) as e:
        mod.main(["--device", "cpu", "--model-config", "tiny", "--steps", "2"])
    assert e.value.code == 1 and "FAIL planted" in capsys.readouterr().out


def test_compare_results_finds_what_differs(quick_pair, capsys):
    """bench/compare_results.py: a bundle against itself differs nowhere; one changed number is found and placed."""
    from bench.compare_results import compare_json, main

    a, b = quick_pair
    res = main([str(a), str(b)])
    assert res["files"] and all(f["differ"] == 0 for f in res["files"].values())
    assert all(v in (0.0, None) for row in res["table_difference"] for k, v in row.items() if k != "mode")
    changed = compare_json({"x": [1.0, {"y": 2.0, "seconds": 5.0}], "z": True}, {"x": [1.0, {"y": 2.5, "seconds": 9.0}],
                                                                                  "z": False, "w": 1})
    assert changed == {"compared": 2, "differ": 1, "max_abs_diff": 0.5, "where": "/x[1]/y", "only_first": [],
                       "only_second": ["/w"]}
    assert "| accuracy |" in capsys.readouterr().out
