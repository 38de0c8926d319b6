"""bench/gpu_check.py, the GPU measurements of issue 5, runs end to end (here on the CPU with a tiny model)."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_smoke_run(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--tiny", "--device", "cpu", "--json", str(tmp_path / "out.json")])
    assert json.loads((tmp_path / "out.json").read_text()) == json.loads(json.dumps(res))
    train = {r["mode"]: r for r in res["finetune"]}
    assert set(train) == {"full", "attn", "linear"} and all(r["seconds_per_step"] > 0 for r in train.values())
    assert train["attn"]["trainable"] < train["full"]["trainable"] == train["linear"]["trainable"]
    rows = {(r["mode"], r["autocast"]): r for r in res["slider"]}
    assert {("attn", "fp32"), ("attn", "bf16"), ("full", "fp32"), ("linear", "fp32")} <= set(rows)
    assert all(r["images"] == 8 * 16 for r in rows.values())
    lin = rows[("linear", "fp32")]
    assert lin["median_s"] < lin["first_call_s"], "warm linear sliders are a weighted sum of cached J τ"
    assert "| slider evaluation, 8 × 16 images |" in capsys.readouterr().out
