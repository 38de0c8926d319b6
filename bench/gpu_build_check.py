"""The real-CLIP build path on a device, end to end: ``build-bundle`` with open_clip's ViT-B-32 (random weights,
nothing downloaded) on two small generated data sets in the loaders' folder layouts (``tests/fakedata.py``), in
``full``, ``attn`` and ``linear``; then the bundle it wrote, loaded on the same device, checked against the engine's
invariants, recomputed afresh:

- coefficient 0 gives the zero-shot accuracies the build stored (every mode; for ``linear`` through f_lin);
- one task at coefficient 1 gives the single-task accuracies the build stored;
- the linearized model at zero offset has the base model's features (max |Δ| reported);
- the stored linear cache (f(θ0; x), J τ) matches a fresh computation;
- the Examples view's per-image answer (``Explorer.predictions``, on the device) at one task's λ = 1 is that task's
  own model, and its counts agree with the stored single-task accuracy.

Prints the build's stages (minutes) and each check; exits 1 when a check fails.  What a Space user does with
real weights and data, minus the download (``--model ViT-B-32 --pretrained openai`` there).

    python bench/gpu_build_check.py --device cuda --json gpu-build.json
    python bench/gpu_build_check.py --device cpu --model-config tiny --steps 2   # seconds: the test's smoke run
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # fakedata: the tests' generated stand-ins for the data sets

from bench._common import emit, machine, parser  # noqa: E402
from bench.gpu_check import TINY as TINY_VISION  # noqa: E402

# the smoke run's model: gpu_check's 2-layer 16-px encoder with a one-layer text tower (a CLIP, as build-bundle needs)
TINY = {**TINY_VISION, "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
MODES = ("full", "attn", "linear")


def build(data: Path, out: Path, args) -> dict:
    """``build-bundle`` through the CLI, as a user runs it; returns its JSON."""
    import contextlib
    import io

    from arith.cli import main

    model = ["--config", json.dumps(TINY)] if args.model_config == "tiny" else ["--model", args.model]
    # a folder task is registered process-wide by name: one name per data directory
    folder = f"blooms-{data.parent.name.lower()}"
    argv = ["build-bundle", *model, "--tasks", "mnist", f"{folder}={data / 'blooms'}", "--data-root", str(data),
            "--modes", *MODES, "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--warmup-steps", "1",
            "--eval-n", "16", "--xi-grid", "5", "--xi-pairs", "1", "--device", args.device, "--out", str(out), "--json"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(argv)
    if code != 0:
        raise SystemExit(f"build-bundle exited {code}: {buf.getvalue()[-2000:]}")
    return json.loads(buf.getvalue())


def checks(out: Path, device: str) -> list[dict]:
    """The invariants of the module docstring on the written bundle, computed afresh on ``device``."""
    import torch

    from arith.bundle import load_bundle

    b = load_bundle(out)
    ev = b.evaluator(device=device, linear_cache=False)
    stored = b.results["accuracy"]
    zs = ev.zeroshot("test")
    rows = [{"check": "zero-shot = stored", "ok": zs == stored["zeroshot"]["test"], "detail": zs}]
    for mode, vs in b.vectors.items():
        zero = ev.evaluate(list(vs.values()), [0.0] * len(vs), "test")
        rows.append({"check": f"{mode}: coefficient 0 = zero-shot", "ok": zero == zs, "detail": zero})
        single = {t: ev.evaluate([tv], [1.0], "test", tasks=[t])[t] for t, tv in vs.items()}
        rows.append({"check": f"{mode}: one task at 1 = stored single-task", "detail": single,
                     "ok": single == stored["finetuned"][mode]["test"]})
    lin = b.vectors.get("linear")
    if lin:
        tvs = list(lin.values())
        f_lin = ev.linear_features(tvs, [0.0] * len(tvs), "test")
        f0 = ev.features(None, "test")
        gap = (f_lin - f0).abs().max().item()
        rows.append({"check": "linear: f_lin(θ0) = f(θ0)", "ok": gap <= 1e-5 * max(1.0, f0.abs().max().item()),
                     "detail": f"max |Δ| {gap:.3g}"})
        cache = b.linear_cache.get("test", {})
        fresh = ev.export_linear_cache(tvs, "test")
        worst = max(((fresh[k] - v).abs().max() / v.abs().max().clamp_min(1e-12)).item()
                    for k, v in cache.items() if k != "__rows__")
        rows.append({"check": "linear cache = fresh f(θ0), J τ", "ok": worst <= 1e-4, "detail": f"max relative |Δ| {worst:.3g}"})
    # the Examples view's per-image answers, on the device: the task's own vector at λ = 1 is its fine-tuned model
    from arith.explore import Explorer

    ex = Explorer.open(out, device=device)
    for mode, vs in b.vectors.items():
        t = next(iter(vs))
        p = ex.predictions(mode, {t: 1.0}, t)
        c = p["counts"]
        rows.append({"check": f"{mode}: Examples at λ = 1 = stored single-task ({t})", "detail": c,
                     "ok": p["merged"] == p["alone"] and abs(c["merged"] / c["n"] - stored["finetuned"][mode]["test"][t])
                     < 1e-6 and c["merged"] - c["base"] == c["fixed"] - c["broken"]})
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return rows


def main(argv=None) -> dict:
    p = parser("the real-CLIP build path (build-bundle) on a device, and the invariants of what it wrote", bundle=False)
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture (random weights, nothing downloaded)")
    p.add_argument("--model-config", choices=["tiny"], help="a 2-layer 16-px CLIP instead of --model (smoke run)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--keep", help="write the bundle here (default: a temporary directory)")
    args = p.parse_args(argv)

    from fakedata import make_folder, make_mnist

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        make_mnist(data)
        make_folder(data / "blooms")
        out = Path(args.keep) if args.keep else Path(tmp) / "bundle"
        t0 = time.perf_counter()
        res = build(data, out, args)
        minutes = (time.perf_counter() - t0) / 60
        rows = checks(out, args.device)
    result = {"machine": machine(), "device": args.device, "model": args.model_config or args.model,
              "steps": args.steps, "batch_size": args.batch_size, "build_minutes": minutes,
              "stages": res.get("stages"), "checks": rows, "ok": all(r["ok"] for r in rows)}
    lines = [f"build-bundle on {args.device}, {result['model']}, {args.steps} steps × batch {args.batch_size}, modes "
             f"{' '.join(MODES)}: {minutes:.2f} min (stages: {res.get('stages')})"]
    lines += [f"{'ok  ' if r['ok'] else 'FAIL'} {r['check']}: {r['detail']}" for r in rows]
    emit(args, result, "\n".join(lines))
    if not result["ok"]:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
