"""Adding a mode, a task family or a merge method is one record: what the rest of the engine and the app then
derive from the registries (kernel subsets, checkpoint import, colours, the table's kernel column, task discovery)."""

from __future__ import annotations

import sys

import pytest
import torch

from arith import modes as M
from arith.convert import choose_mode
from arith.data import get_task
from arith.evaluate import Evaluator
from arith.kernel import kernel_report
from arith.modes import ALL, Mode, kernel_subsets, register_mode
from arith.taskvec import TaskVector

LN = r"visual\.transformer\.resblocks\.\d+\.ln_\d\.(weight|bias)"


@pytest.fixture
def extra_modes():
    """Two modes registered for one test (a LayerNorm-only mode with a kernel subset, a second linearized mode),
    removed afterwards so that no other test sees them."""
    added = [register_mode(Mode("ln_only", "LayerNorm-only", (LN,), part="LayerNorm", kernel_subset="layernorm")),
             register_mode(Mode("linear_twin", "Linearized twin", ALL, linearized=True))]
    try:
        yield added
    finally:
        for m in added:
            M.MODES.pop(m.name, None)


def test_builtin_kernel_subsets_keep_their_order():
    assert kernel_subsets() == {"attention": "attn", "mlp": "mlp", "all": "full"}


def test_a_registered_mode_adds_its_kernel_subset(extra_modes, base, bundle):
    assert list(kernel_subsets()) == ["attention", "mlp", "layernorm", "all"]
    ev = Evaluator(bundle.base, bundle.heads, bundle.data, max_per_task=8)
    task = bundle.task_names[0]
    tv = bundle.vectors["full"][task]
    rep = kernel_report(ev, tv, task, path=(0.0, 1.0))
    assert list(rep["restricted"]) == ["attention", "mlp", "layernorm", "all"]
    ln = rep["restricted"]["layernorm"]
    kept = sum(float(t.pow(2).sum()) for k, t in tv.tensors.items() if M.MODES["ln_only"].trains(k))
    assert ln["norm_fraction"] == pytest.approx((kept ** 0.5) / tv.norm(), rel=1e-5)
    # an attention-only vector has no LayerNorm part: None, as for its MLP part
    assert kernel_report(ev, bundle.vectors["attn"][task], task, path=(1.0,))["restricted"]["layernorm"] is None


def test_import_auto_picks_the_narrowest_registered_mode(extra_modes, base):
    delta = {k: torch.zeros_like(v) for k, v in base.params.items()}
    ln_key = next(k for k in delta if M.MODES["ln_only"].trains(k))
    delta[ln_key] += 0.1
    assert choose_mode(delta, "auto")[0] == "ln_only"  # not full, which also trains it
    attn_key = next(k for k in delta if M.MODES["attn"].trains(k))
    delta[attn_key] += 0.1
    assert choose_mode(delta, "auto")[0] == "full"  # LayerNorm and attention: only full trains both
    assert choose_mode({k: torch.zeros_like(v) for k, v in base.params.items()}, None)[0] == "ln_only"  # no change


def test_import_auto_without_extra_modes(base):
    delta = {k: torch.zeros_like(v) for k, v in base.params.items()}
    for name in ("attn", "mlp"):
        d = dict(delta)
        k = next(k for k in d if M.MODES[name].trains(k))
        d[k] = d[k] + 1.0
        assert choose_mode(d, "auto")[0] == name
    bias = next(k for k in delta if k.endswith("attn.in_proj_bias"))
    assert choose_mode({**delta, bias: delta[bias] + 1.0}, "auto")[0] == "attn_bias"
    assert choose_mode(delta, None)[0] == "attn"  # no change at all: the narrowest built-in mode, as before


def test_the_table_leaves_every_linearized_mode_out_of_kernel_agreement(extra_modes):
    from types import SimpleNamespace

    from arith.report import results_rows

    modes = ["attn", "linear", "linear_twin"]
    res = {"kernel": {m: {"t": {"at_1": {"agreement": 0.9}}} for m in modes}}
    rows = results_rows(SimpleNamespace(results=res, modes=modes, finetune_config=lambda m: None))
    kernel = {r["mode"]: r["kernel agreement"] for r in rows}
    assert kernel["attn"] == pytest.approx(0.9) and kernel["linear"] is None and kernel["linear_twin"] is None


def test_a_registered_mode_gets_a_colour_of_its_own(extra_modes):
    from ui import charts

    builtin = set(charts.MODE_COLOURS.values()) | set(charts.VIEW_COLOURS)
    colours = {charts.mode_colour(m.name) for m in extra_modes}
    assert len(colours) == 2 and not colours & builtin
    assert charts.part_style("layernorm")[0] == "LayerNorm part of τ"
    rows = [{"mode": "full", **{f"{s}_agreement": 0.9 for s in kernel_subsets()}}]
    names = [trace.name for trace in charts.restricted_bars(rows, "agreement", "agreement", percent=True).data]
    assert names == ["attention part of τ", "MLP part of τ", "LayerNorm part of τ", "all of τ"]


def test_extensions_named_in_the_environment_register_their_tasks(extension, monkeypatch):
    extension("lab_tasks_for_test",
              "from arith.data import TaskSource, register_task, get_task\n"
              "src = get_task('synthetic-stripes')\n"
              "register_task(TaskSource('lab-stripes', src.classnames, src.loader, family='lab'))\n")
    monkeypatch.setenv("ARITH_EXTENSIONS", " lab_tasks_for_test , ")  # spaces and an empty entry are fine
    assert get_task("lab-stripes").family == "lab"
    assert len(get_task("lab-stripes").load("test", size=8, n=4)) == 4
    monkeypatch.setenv("ARITH_EXTENSIONS", "no_such_module_here")
    with pytest.raises(ValueError, match=r"ARITH_EXTENSIONS names 'no_such_module_here'"):
        get_task("lab-nothing")


def test_synthetic_tasks_are_records():
    from arith.data import SYNTHETIC

    for kind, (names, _) in SYNTHETIC.items():
        src = get_task(f"synthetic-{kind}")
        assert src.classnames == names
        split = src.load("test", size=8, n=16)
        assert int(split.labels.max()) < len(names)


def test_vectors_of_a_registered_mode_are_task_vectors(extra_modes, base):
    keys = [k for k in base.params if M.MODES["ln_only"].trains(k)]
    tv = TaskVector({k: torch.ones_like(base.params[k]) for k in keys}, "t", "ln_only", base.id)
    assert tv.mode == "ln_only" and set(tv.tensors) == set(keys)


EXTENSION = '''
import torch
from arith.merge import MergeMethod, MethodOption, register_merge_method, task_arithmetic
from arith.modes import Mode, register_mode


def top_k(vectors, coefs, density=0.2):
    """task arithmetic, then each tensor's largest |entries| kept"""
    out = {}
    for k, d in task_arithmetic(vectors, coefs).items():
        keep = max(1, int(density * d.numel()))
        cut = d.abs().flatten().kthvalue(d.numel() - keep + 1).values
        out[k] = torch.where(d.abs() >= cut, d, torch.zeros_like(d))
    return out


register_merge_method(MergeMethod("topk", "Magnitude top-k", top_k, linear=False,
                                  options=(MethodOption("density", "Density", 0.2, low=0.0, high=1.0, low_open=True),)))
register_mode(Mode("ln_only", "LayerNorm-only", (r"visual\\.transformer\\.resblocks\\.\\d+\\.ln_\\d\\.(weight|bias)",)))
'''


def test_an_extension_module_reaches_every_command(bundle_dir, tmp_path):
    """A merge method and a mode of one's own, in one's own module named by $ARITH_EXTENSIONS: the CLI lists and runs
    them (in a subprocess: the registries of this test process stay as they are)."""
    import json
    import os
    import subprocess

    (tmp_path / "lab_ext_for_test.py").write_text(EXTENSION)
    env = {**os.environ, "ARITH_EXTENSIONS": "lab_ext_for_test", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "arith", *args], capture_output=True, text=True, env=env,
                              timeout=300)

    assert "topk (density=0.2)" in " ".join(cli("evaluate", "--help").stdout.split())
    task = json.loads(cli("info", "--bundle", str(bundle_dir), "--json").stdout)["tasks"][0]
    r = cli("evaluate", "--bundle", str(bundle_dir), "--mode", "full", "--coef", f"{task}=1", "--method",
            "topk:density=0.5", "--max-per-task", "8", "--json")
    assert r.returncode == 0, r.stderr
    assert 0.0 <= json.loads(r.stdout)["accuracy"][task] <= 1.0
    r = cli("info", "--model", "ViT-B-32", "--mode", "ln_only", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["trainable"] > 0, r.stderr
    bad = subprocess.run([sys.executable, "-m", "arith", "table", "--json"], capture_output=True, text=True,
                         env={**env, "ARITH_EXTENSIONS": "lab_missing_ext"}, timeout=120)
    assert bad.returncode == 2 and "lab_missing_ext" in bad.stderr and json.loads(bad.stdout)["ok"] is False


def test_an_extension_that_fails_half_way_keeps_its_own_error(extension):
    """A module that registers a record and then fails: its error, each time, not 'already registered' the second
    time (the app calls load_extensions on every run)."""
    from arith.extensions import load_extensions

    extension("lab_half_ext", "from arith.modes import ALL, Mode, register_mode\n"
                              "register_mode(Mode('half_mode', 'Half', ALL))\n"
                              "import lab_dependency_that_is_not_installed\n")
    for _ in range(2):
        with pytest.raises(ValueError, match="'lab_half_ext' failed as it was imported: No module named "
                                             "'lab_dependency_that_is_not_installed'"):
            load_extensions()


def test_a_vector_name_may_hold_an_equals_sign(tmp_path):
    from arith.cli import _named_file

    f = tmp_path / "lr-1e-3.safetensors"
    f.write_bytes(b"")
    odd = tmp_path / "a=b.safetensors"
    odd.write_bytes(b"")
    assert _named_file(f"lr=1e-3={f}") == ("lr=1e-3", str(f))
    assert _named_file(f"mine={odd}") == ("mine", str(odd))  # the file's own '=' stays in the path
    assert _named_file(str(odd)) == (None, str(odd))  # a plain path that exists
    assert _named_file("mine=missing.safetensors") == ("mine", "missing.safetensors")
    assert _named_file("plain.safetensors") == (None, "plain.safetensors")


def test_the_zero_vector_is_named_by_its_name_not_its_task(bundle):
    from arith.explore import Explorer

    ex = Explorer(bundle)
    t1, t2 = bundle.task_names[:2]
    zero = bundle.vectors["attn"][t1].scale(0.0)
    with pytest.raises(ValueError, match="the vector 'nothing' is zero"):
        ex.xi("attn", "nothing", t2, alphas=[0.0, 1.0], extra={"nothing": zero}, length=0.05)
