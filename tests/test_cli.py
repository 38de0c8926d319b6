"""End to end through the CLI: build a 2-task bundle in every mode, then every command with --json."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from arith.cli import main

from conftest import TINY

TWO = ["synthetic-stripes", "synthetic-colours"]


def run(capsys, *argv) -> dict:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


@pytest.fixture(scope="module")
def cli_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "b"
    code = main(["build-bundle", "--config", json.dumps(TINY), "--tasks", *TWO, "--modes", "full", "attn", "linear",
                 "mlp", "--steps", "8", "--batch-size", "16", "--lr", "3e-3", "--warmup-steps", "2", "--eval-n", "32",
                 "--xi-grid", "3", "--out", str(out)])
    assert code == 0
    return str(out)


def test_info_runs_as_a_module_without_weights():
    proc = subprocess.run([sys.executable, "-m", "arith", "info", "--model", "ViT-B-32", "--mode", "attn", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["trainable"] == 28311552 and res["total"] == 87849216


def test_a_reader_that_stops_reading_or_a_full_disk_gives_no_traceback(cli_bundle):
    """`python -m arith table --json | head -1`: the pipe closes while the command writes."""
    import os

    for argv in (["info", "--model", "ViT-B-32", "--mode", "attn", "--json"],  # a short output: flushed at the end
                 ["table", "--bundle", cli_bundle, "--per-task", "--json"]):
        proc = subprocess.Popen([sys.executable, "-m", "arith", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdout.close()  # before the interpreter has started: every write meets a closed pipe
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 0 and not err, err
    if os.path.exists("/dev/full"):  # a write that fails (no space): one line on stderr, no traceback
        with open("/dev/full", "w") as full:
            proc = subprocess.run([sys.executable, "-m", "arith", "table", "--bundle", cli_bundle, "--json"],
                                  stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_every_command_has_help(capsys):
    from arith.cli import COMMANDS, build_parser

    build_parser()  # registers the plugin commands (build-bundle, import, ...) first
    for name in list(COMMANDS):
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert "--json" in capsys.readouterr().out
    # README: "--help documents every option": no option without its help text
    import argparse

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    bare = [f"{name} {a.option_strings[-1]}" for name, p in sub.choices.items() for a in p._actions
            if a.option_strings and not a.help]
    assert not bare, bare


def test_end_to_end(cli_bundle, capsys, tmp_path):
    b = ["--bundle", cli_bundle]
    info = run(capsys, "info", *b)
    assert info["modes"] == ["full", "attn", "linear", "mlp"] and list(info["tasks"]) == TWO

    ev = run(capsys, "evaluate", *b, "--mode", "attn", "--coef", f"{TWO[0]}=0.5", "--coef", f"{TWO[1]}=-0.25")
    assert set(ev["accuracy"]) == set(TWO) and 0 <= ev["absolute"] <= 1 and "normalized" in ev
    assert ev["coefficients"] == {TWO[0]: 0.5, TWO[1]: -0.25}
    zero = run(capsys, "evaluate", *b, "--mode", "linear")
    assert zero["accuracy"] == run(capsys, "evaluate", *b, "--mode", "full")["accuracy"]  # both are θ0

    add = run(capsys, "addition", *b, "--mode", "attn")
    assert main(["addition", *b, "--mode", "attn"]) == 0  # the text lists tasks in the bundle's order, as evaluate does
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]] == TWO != sorted(TWO)
    assert 0 <= add["alpha"] <= 1 and {"absolute", "normalized", "accuracy"} <= set(add)
    alone = run(capsys, "addition", *b, "--mode", "attn", "--alone")  # the same addition, plus each task alone
    gap = alone["interference"]
    assert {k: alone[k] for k in add} == add and gap["alpha"] == add["alpha"]
    assert gap["merged_absolute"] == add["absolute"] and set(gap["per_task"]) == set(TWO)
    assert alone["alone"]["curve"][-1]["test"]["accuracy"] == alone["alone"]["finetuned"]["test"]
    pairs = run(capsys, "addition", *b, "--mode", "attn", "--pairs")  # which vector costs which task, at that α
    assert pairs["pairs"]["alpha"] == add["alpha"] and pairs["pairs"]["tasks"] == list(TWO)
    assert pairs["pairs"]["alone"] == {t: v["alone"] for t, v in gap["per_task"].items()}
    assert main(["addition", *b, "--mode", "attn", "--pairs"]) == 0
    assert "points task i loses" in capsys.readouterr().out
    ties = run(capsys, "addition", *b, "--mode", "attn", "--method", "ties")  # swept, not the stored sweep
    assert ties["method"] == "ties" and ties["curve"] != add["curve"]
    at = next(r for r in ties["curve"] if r["alpha"] == ties["alpha"])["test"]["accuracy"]
    coefs = [a for t in TWO for a in ("--coef", f"{t}={ties['alpha']:g}")]
    assert run(capsys, "evaluate", *b, "--mode", "attn", "--method", "ties", *coefs)["accuracy"] == at
    assert main(["addition", *b, "--mode", "attn", "--method", "ties", "--alone", "--json"]) == 2
    assert "task arithmetic" in json.loads(capsys.readouterr().out)["error"]
    # a method with options: written at its defaults it is the same request; other values merge otherwise
    assert run(capsys, "addition", *b, "--mode", "attn", "--method", "ties:scope=tensor,density=0.20") == ties
    spec = "ties:density=0.5,scope=vector"
    half = run(capsys, "addition", *b, "--mode", "attn", "--method", "ties: scope=vector,density=0.50")
    assert half["method"] == spec and half["curve"] != ties["curve"]
    at = next(r for r in half["curve"] if r["alpha"] == half["alpha"])["test"]["accuracy"]
    coefs = [a for t in TWO for a in ("--coef", f"{t}={half['alpha']:g}")]
    assert run(capsys, "evaluate", *b, "--mode", "attn", "--method", spec, *coefs)["accuracy"] == at
    with pytest.raises(SystemExit):
        main(["evaluate", *b, "--mode", "attn", "--method", "ties:density=2"])
    assert "must lie in (0, 1]" in capsys.readouterr().err
    assert main(["addition", *b, "--mode", "attn", "--method", spec, "--pairs", "--json"]) == 2
    assert "task arithmetic" in json.loads(capsys.readouterr().out)["error"]
    tuned = run(capsys, "tune", *b, "--mode", "linear")  # one λ per task, from the shared α
    assert tuned["start"] == run(capsys, "addition", *b, "--mode", "linear")["alpha"] == tuned["shared"]["alpha"]
    assert tuned["val_normalized"] >= tuned["shared"]["val_normalized"] and set(tuned["coefficients"]) == set(TWO)
    coefs = [a for t, c in tuned["coefficients"].items() for a in ("--coef", f"{t}={c:g}")]
    assert run(capsys, "evaluate", *b, "--mode", "linear", *coefs)["accuracy"] == tuned["accuracy"]

    neg = run(capsys, "negation", *b, "--mode", "full", "--task", TWO[0])
    assert {"target", "control", "alpha", "zeroshot_target", "zeroshot_control"} <= set(neg)

    xi = run(capsys, "disentangle", *b, "--mode", "linear", "--tasks", *TWO, "--grid", "3")
    assert len(xi["prediction"]) == 3 and xi["prediction"][1][1] == 0

    ker = run(capsys, "kernel", *b, "--mode", "attn", "--task", TWO[1])
    assert 0 <= ker["at_1"]["agreement"] <= 1
    assert main(["kernel", *b, "--mode", "attn", "--task", TWO[1]]) == 0  # the text: percent, as other commands print
    lines = capsys.readouterr().out.splitlines()
    header, first = re.findall(r"\S+(?: \(%\))?", lines[1]), lines[2].split()  # "agreement (%)" is one column
    assert first[header.index("agreement (%)")] == f"{100 * ker['at_1']['agreement']:.1f}"

    sim = run(capsys, "similarity", *b)
    assert len(sim["all"]["labels"]) == 8

    out = tmp_path / "tv.safetensors"
    ft = run(capsys, "finetune", *b, "--task", TWO[0], "--mode", "attn", "--steps", "3", "--out", str(out))
    assert ft["steps"] == 3 and out.exists() and ft["norm"] > 0
    ok = run(capsys, "validate", str(out), *b)
    assert ok["ok"] and ok["mode"] == "attn"
    # the bundle's recipe (8 steps, 2 of warm-up) over 3 steps keeps its warm-up's share, as the Train page does
    from arith.bundle import load_bundle
    from arith.specs import FinetuneConfig, Meta
    from arith.taskvec import load_task_vector

    trained = FinetuneConfig.from_json(load_task_vector(out, load_bundle(cli_bundle).base).meta[Meta.CONFIG])
    assert (trained.steps, trained.warmup_steps) == (3, 1)
    bias = run(capsys, "finetune", *b, "--task", TWO[0], "--mode", "attn_bias", "--attn-bias", "--steps", "1",
               "--out", str(tmp_path / "bias.safetensors"))  # the flag names the mode already given: fine
    assert bias["mode"] == "attn_bias" and bias["recipe"] == "the bundle's recipe for attn (it has none for attn_bias)"
    assert main(["finetune", *b, "--task", TWO[0], "--mode", "attn", "--steps", "3", "--warmup-steps", "3",
                 "--out", str(tmp_path / "no.safetensors")]) == 2
    assert "leaves no step after the warm-up" in capsys.readouterr().err
    assert not (tmp_path / "no.safetensors").exists()
    ev2 = run(capsys, "evaluate", *b, "--mode", "attn", "--vector", str(out), "--coef", f"{TWO[0]}=1")
    assert set(ev2["accuracy"]) == set(TWO)
    assert ev2["untouched"]["tasks"] == [TWO[1]]  # the app's "Tasks at λ = 0": what the other vector leaks into it
    assert ev2["untouched"]["absolute"] == ev2["accuracy"][TWO[1]]
    # a λ that rounds to 0 (4 decimals, what is evaluated) edits nothing: its task is not counted as edited
    tiny = run(capsys, "evaluate", *b, "--mode", "attn", "--coef", f"{TWO[0]}=0.00001", "--coef", f"{TWO[1]}=1")
    assert tiny["coefficients"][TWO[0]] == 0.0 and tiny["untouched"]["tasks"] == [TWO[0]]


def test_errors_are_one_line_json(cli_bundle, capsys, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04junk")
    assert main(["validate", str(bad), "--bundle", cli_bundle, "--json"]) == 2
    res = json.loads(capsys.readouterr().out)
    assert res["ok"] is False and "pickle" in res["error"]
    assert main(["evaluate", "--bundle", cli_bundle, "--coef", "nope=1", "--json"]) == 2
    assert "no attn task vector" in json.loads(capsys.readouterr().out)["error"]
    assert main(["evaluate", "--bundle", cli_bundle, "--coef", "oops", "--json"]) == 2
    capsys.readouterr()
    for where, says in ((tmp_path / "nope", "nope: no such bundle directory"), (bad, "bad.safetensors is a file, not a"),
                        (tmp_path, "manifest.json: no manifest; not a bundle directory")):
        assert main(["table", "--bundle", str(where)]) == 2 and says in capsys.readouterr().err


def test_a_file_without_metadata_is_read_once_validate_writes_it_a_copy(cli_bundle, tmp_path, capsys):
    """Vectors written by other tools carry no arith metadata: validate names the flags that fill it in, and with
    --out writes a copy that every command then reads as it is (the Upload page's pickers do the same in the app)."""
    from safetensors.torch import save_file

    from arith.bundle import load_bundle

    b = ["--bundle", cli_bundle]
    tv = load_bundle(cli_bundle).vectors["attn"][TWO[0]]
    raw = tmp_path / "raw.safetensors"
    save_file({k: t.contiguous() for k, t in tv.tensors.items()}, str(raw))  # tensors only, no metadata
    assert main(["validate", str(raw), *b]) == 2  # every field it lacks, named at once, with the flags that give them
    assert ("lacks arith.task, arith.mode, arith.base_model: cannot tell which task and mode it was fine-tuned for nor "
            "which base model it is for (--task T, --mode M, --assume-base)") in capsys.readouterr().out
    assert main(["validate", str(raw), *b, "--task", TWO[0], "--mode", "attn"]) == 2
    assert "lacks arith.base_model: cannot tell which base model it is for (--assume-base)" in capsys.readouterr().out
    assert main(["evaluate", *b, "--vector", str(raw)]) == 2  # the other commands point at the command that fixes it
    hint = re.search(r"`python -m arith (validate [^`]*)`", capsys.readouterr().err).group(1)
    assert hint == f"validate {raw} --task T --mode M --assume-base --out FIXED.safetensors"
    fixed = tmp_path / "fixed.safetensors"  # the hint, run as it reads
    res = run(capsys, *hint.replace("--task T", f"--task {TWO[0]}").replace("--mode M", "--mode attn")
              .replace("FIXED.safetensors", str(fixed)).split(), *b)
    assert res["ok"] and res["out"] == str(fixed) and res["base_model"] == tv.base_id
    mine = run(capsys, "evaluate", *b, "--vector", f"mine={fixed}", "--coef", "mine=1")
    own = run(capsys, "evaluate", *b, "--coef", f"{TWO[0]}=1")
    assert mine["accuracy"] == own["accuracy"]  # the same tensors: the same model
    assert main(["validate", str(raw), *b, "--task", TWO[0], "--mode", "attn", "--assume-base",
                 "--out", str(Path(cli_bundle) / "vectors" / "attn" / f"{TWO[0]}.safetensors")]) == 2
    assert "own vectors/attn" in capsys.readouterr().err
    gone = tmp_path / "gone.safetensors"  # a file that is not there is invalid, in the same shape as any other
    assert main(["validate", str(gone), *b, "--json"]) == 2
    assert json.loads(capsys.readouterr().out) == {"ok": False, "file": str(gone), "error": f"{gone}: no such file"}


def test_what_the_precomputed_results_answer_is_printed_without_torch(cli_bundle):
    # a fresh process: the core commands load no plugin, and these read only the bundle's index
    code = ("import sys\n"
            "from arith.cli import main\n"
            f"b = ['--bundle', {cli_bundle!r}, '--json']\n"
            "for cmd in (['table'], ['addition', '--mode', 'attn'], ['negation', '--task', sys.argv[1]],\n"
            "            ['kernel', '--task', sys.argv[1]], ['similarity']):\n"
            "    assert main(cmd + b) == 0, cmd\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code, TWO[0]], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "False"
    assert '"alpha"' in out.stdout and '"cosine"' in out.stdout  # the answers were printed


def test_bad_input_gets_a_one_line_error_and_status_2(bundle, capsys, tmp_path):
    """Every way a command line can ask for something the bundle lacks, or for nonsense, ends in ``error: …`` naming
    the fault (exit status 2), never a traceback, a bare key, or numbers computed from something else."""
    from conftest import TASKS

    attn_file = str(bundle.vectors["attn"][TASKS[0]].save(tmp_path / "attn.safetensors"))
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(Path(attn_file).read_bytes()[:-100])
    out = str(tmp_path / "new.safetensors")
    b = ["--bundle", str(bundle.root)]
    cases = [
        (["evaluate", *b, "--mode", "full", "--coef", f"{TASKS[0]}=1", "--vector", attn_file],
         "a attn task vector, but --mode full uses full vectors"),
        (["kernel", *b, "--mode", "full@attn", "--task", TASKS[0], "--vector", attn_file], "--mode full@attn uses full"),
        (["evaluate", *b, "--mode", "bogus"], "unknown mode 'bogus'; known modes: full, attn, attn_bias, linear, mlp; "
                                               "this bundle has full, attn, linear, mlp and the views full@attn"),
        (["evaluate-full", *b, "--mode", "full", "--coef", f"{TASKS[0]}=1", "--vector", attn_file],
         "a attn task vector, but --mode full uses full vectors"),
        (["addition", *b, "--mode", "attn_bias"], "this bundle has no attn_bias task vectors; its modes: full, attn"),
        (["similarity", *b, "--modes", "bogus"], "unknown mode 'bogus'"),
        (["addition", *b, "--tasks", "foo"], "no attn task vector named ['foo']"),
        (["negation", *b, "--task", "foo"], "no attn task vector named ['foo']"),
        (["kernel", *b, "--task", "foo"], "no attn task vector named ['foo']"),
        (["disentangle", *b, "--tasks", TASKS[0], "foo"], "no attn task vector named ['foo']"),
        (["disentangle", *b, "--tasks", *TASKS[:2], "--grid", "0"], "--grid takes 2 to 101 points"),
        (["disentangle", *b, "--tasks", *TASKS[:2], "--grid", "100000"], "--grid takes 2 to 101 points"),
        (["disentangle", *b, "--tasks", *TASKS[:2], "--range", "-1"], "--range a positive number"),
        (["evaluate", *b, "--max-per-task", "0"], "max_per_task must be a positive number"),
        (["evaluate", *b, "--max-per-task", "-3"], "max_per_task must be a positive number"),
        (["evaluate", *b, "--coef", f"{TASKS[0]}=1", "--coef", f"{TASKS[0]}=2"], f"--coef {TASKS[0]} is given twice"),
        (["validate", str(tmp_path), *b], "is a directory, not a safetensors file"),
        (["evaluate", *b, "--vector", str(tmp_path)], "is a directory, not a safetensors file"),
        (["table", *b, "--views", "full"], "--views takes views (SOURCE@PART"),
        (["similarity", *b, "--modes", "attn_bias"], "no attn_bias task vectors to compare"),
        (["negation", *b, "--task", TASKS[0], "--control", TASKS[0]], f"needs a control task other than {TASKS[0]!r}"),
        (["negation", *b, "--task", TASKS[0], "--control", "nope"], "control task 'nope' is not in the bundle"),
        (["cost", *b, "--task", "nosuch"], "task 'nosuch' is not in the bundle"),
        (["cost", *b, "--batch-size", "0"], "a batch size ≥ 1"),
        (["validate", attn_file, *b, "--mode", "nonsense"], "unknown mode 'nonsense'"),
        (["evaluate", *b, "--mode", "attn_bias"], "this bundle has no attn_bias task vectors; its modes: full, attn"),
        (["info", *b, "--mode", "attn"], "not both"),
        (["evaluate", *b, "--vector", str(trunc), "--coef", f"{TASKS[0]}=1"], "trunc.safetensors"),
        (["evaluate", *b, "--vector", attn_file, "--vector", attn_file], f"two vectors named {TASKS[0]!r}"),
        (["evaluate", *b, "--vector", f"mine={tmp_path / 'none.safetensors'}"], "none.safetensors"),
        # refused before training: each of these trained first, then wrote nothing or a vector every loader refuses
        (["finetune", *b, "--task", TASKS[0], "--seed", "-1", "--out", out], "seed must be non-negative"),
        (["finetune", *b, "--task", TASKS[0], "--lr", "inf", "--out", out], "lr must be a positive finite number"),
        (["finetune", *b, "--task", TASKS[0], "--out", str(tmp_path)], "is a directory: give the task-vector file"),
        (["finetune", *b, "--task", TASKS[0], "--out", "/proc/nope/x.safetensors"], "cannot make its folder /proc/nope"),
        (["finetune", *b, "--task", TASKS[0], "--mode", "full", "--attn-bias", "--out", out], "--attn-bias adds"),
        (["finetune", *b, "--task", TASKS[0], "--train-n", "0", "--out", out], "--train-n must be a positive"),
        # a bundle's own files are never outputs: overwritten, the bundle would no longer load
        (["finetune", *b, "--task", TASKS[0], "--out", str(bundle.root / "vectors" / "attn" / f"{TASKS[0]}.safetensors")],
         f"own vectors/attn/{TASKS[0]}.safetensors"),
        (["import", *b, "--finetuned", attn_file, "--task", TASKS[0], "--out", str(bundle.root / "base.safetensors")],
         "own base.safetensors"),
        # torch's own errors: one line, and where to find the traceback
        (["info", "--config", json.dumps({"embed_dim": 32, "vision_cfg": {"width": -5}})], "ARITH_DEBUG=1 shows"),
    ]
    for argv, want in cases:
        code = main(argv)
        captured = capsys.readouterr()
        said = captured.err + captured.out
        assert code == 2 and want in said, (argv, code, said)
        assert "Traceback" not in said
    assert not Path(out).exists() and not list(tmp_path.glob("*.tmp"))
    from arith.index import verify_files  # the bundle's own files are as they were

    verify_files(bundle.root, bundle.manifest)


def test_ctrl_c_prints_one_line_and_the_shells_code(cli_bundle, capsys, monkeypatch):
    import arith.cli

    def stopped(args):
        raise KeyboardInterrupt

    arith.cli._load(arith.cli.PLUGINS)  # build-bundle's module registers it
    for name in ("table", "build-bundle"):
        add, _, help_ = arith.cli.COMMANDS[name]
        monkeypatch.setitem(arith.cli.COMMANDS, name, (add, stopped, help_))
    assert main(["table", "--bundle", cli_bundle]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    assert main(["build-bundle", "--config", "{}", "--tasks", "mnist", "--out", "x"]) == 130
    assert "the same command resumes" in capsys.readouterr().err


def test_an_error_from_a_dataloader_worker_prints_as_its_last_line():
    from arith.cli import _one_line

    worker = ("Caught OSError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
              '  File "x.py", line 3, in read\n    raise OSError(msg)\n'
              "OSError: /data/a/1.png: cannot read this image (image file is truncated)\n")
    assert _one_line(worker) == "/data/a/1.png: cannot read this image (image file is truncated)"
    assert _one_line("plain: message\nsecond line") == "plain: message\nsecond line"


def test_table_of_a_bundle_without_vectors_says_so(copy, capsys):
    """A build stopped before its first vector leaves a bundle with nothing to tabulate: an error, not an empty table."""
    m = json.loads((copy / "manifest.json").read_text())
    m["files"] = {rel: v for rel, v in m["files"].items() if not rel.startswith(("vectors/", "results/", "cache/"))}
    m["modes"], m["finetune"] = [], {}
    (copy / "manifest.json").write_text(json.dumps(m))
    assert main(["table", "--bundle", str(copy)]) == 2
    assert "no task vectors to tabulate" in capsys.readouterr().err


def test_usage_errors_print_json_too(cli_bundle, capsys):
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--bundle", cli_bundle, "--method", "nosuch", "--json"])
    assert e.value.code == 2
    res = json.loads(capsys.readouterr().out)
    assert res["ok"] is False and "unknown merge method 'nosuch'" in res["error"]


def test_a_device_this_machine_lacks_is_refused_before_any_work():
    import torch

    from arith.cli import check_device

    assert check_device("cpu") == "cpu" and check_device("auto") == "auto"
    with pytest.raises(ValueError, match="is not a device"):
        check_device("nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU on this machine"):
            check_device("cuda")
    else:
        with pytest.raises(ValueError, match="CUDA GPU"):
            check_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize(("count", "said"), [(1, "this machine has one CUDA GPU, cuda:0$"),
                                             (4, "this machine has 4 CUDA GPUs, cuda:0 to cuda:3$")])
def test_a_gpu_index_past_the_machines_gpus_says_which_it_has(monkeypatch, count, said):
    """As the lent H200 answered `cost --device cuda:7` (BENCHMARKS, GPU run 12), with torch's counts patched here."""
    import torch

    from arith.cli import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    with pytest.raises(ValueError, match=said):
        check_device("cuda:7")
    assert check_device(f"cuda:{count - 1}") == f"cuda:{count - 1}" and check_device("cuda") == "cuda"


def test_build_bundle_refuses_bad_settings_before_writing_anything(tmp_path, capsys):
    out = tmp_path / "b"
    for bad in (["--modes", "nonsense"], ["--steps", "0"], ["--lr", "nan"], ["--modes", "attn", "attn"],
                ["--eval-n", "0"], ["--xi-grid", "1"], ["--xi-pairs", "-1"], ["--train-n", "0"]):
        assert main(["build-bundle", "--config", json.dumps(TINY), "--tasks", *TWO, "--out", str(out), *bad]) == 2
        assert "error:" in capsys.readouterr().err
        assert not out.exists(), bad


def test_a_bundle_with_vectors_and_no_results_is_not_a_table_of_dashes(copy, capsys):
    m = json.loads((copy / "manifest.json").read_text())
    m["files"] = {rel: v for rel, v in m["files"].items() if not rel.startswith("results/")}
    (copy / "manifest.json").write_text(json.dumps(m))
    assert main(["table", "--bundle", str(copy)]) == 2
    assert "no precomputed results to tabulate" in capsys.readouterr().err


def test_a_manifest_without_its_heads_opens_nothing(copy, capsys):
    m = json.loads((copy / "manifest.json").read_text())
    del m["files"]["heads.safetensors"]
    (copy / "manifest.json").write_text(json.dumps(m))
    (copy / "heads.safetensors").unlink()
    for cmd in (["table"], ["addition"], ["info"]):  # the stored results are not served without what they rest on
        assert main([*cmd, "--bundle", str(copy)]) == 2, cmd
        assert "heads.safetensors is not listed in manifest.json" in capsys.readouterr().err


def test_space_init_reports_a_bundle_with_a_missing_file(copy):
    from arith.space import init_space

    (copy / "heads.safetensors").unlink()
    res = init_space(str(copy))
    assert res["ok"] is False and res["bundle_source"] == "damaged"
    assert any("heads.safetensors" in n for n in res["notes"])
    m = json.loads((copy / "manifest.json").read_text())  # the heads no longer listed either: still not a bundle
    del m["files"]["heads.safetensors"]
    (copy / "manifest.json").write_text(json.dumps(m))
    res = init_space(str(copy))
    assert res["ok"] is False and any("heads.safetensors is not listed" in n for n in res["notes"])


def test_arith_debug_shows_the_traceback_of_torchs_errors(monkeypatch):
    monkeypatch.setenv("ARITH_DEBUG", "1")
    with pytest.raises(RuntimeError, match="negative dimension"):
        main(["info", "--config", json.dumps({"embed_dim": 32, "vision_cfg": {"width": -5}})])


def test_every_device_flag_is_checked_as_it_is_parsed(cli_bundle, tmp_path, capsys):
    b = ["--bundle", cli_bundle]
    for argv in (["finetune", *b, "--task", TWO[0], "--out", str(tmp_path / "x.safetensors")], ["cost", *b],
                 ["precompute", *b], ["lr-sweep", *b], ["evaluate-full", *b],
                 ["build-bundle", "--config", json.dumps(TINY), "--tasks", *TWO, "--out", str(tmp_path / "b")]):
        with pytest.raises(SystemExit) as e:
            main([*argv, "--device", "nonsense"])
        assert e.value.code == 2 and "is not a device" in capsys.readouterr().err, argv
    assert not list(tmp_path.iterdir())


def test_finetune_refuses_a_directory_before_it_trains(cli_bundle, tmp_path, capsys, monkeypatch):
    import arith.finetune

    def trained(*_, **__):
        raise AssertionError("trained before checking --out")

    monkeypatch.setattr(arith.finetune, "finetune", trained)
    assert main(["finetune", "--bundle", cli_bundle, "--task", TWO[0], "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_a_failed_save_leaves_no_temporary_file(bundle, tmp_path, monkeypatch):
    from pathlib import Path as P

    tv = next(iter(bundle.vectors["attn"].values()))
    target = tmp_path / "v.safetensors"

    def broken(self, other):
        raise OSError("disk full")

    monkeypatch.setattr(P, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        tv.save(target)
    assert not list(tmp_path.iterdir())


def test_results_of_vectors_the_manifest_no_longer_lists_are_not_served(copy, capsys):
    m = json.loads((copy / "manifest.json").read_text())
    m["files"] = {rel: v for rel, v in m["files"].items() if not rel.startswith("vectors/mlp/")}
    (copy / "manifest.json").write_text(json.dumps(m))
    assert main(["addition", "--bundle", str(copy), "--mode", "mlp"]) == 2
    assert "no mlp task vectors" in capsys.readouterr().err
    from conftest import TASKS

    assert main(["negation", "--bundle", str(copy), "--mode", "mlp", "--task", TASKS[0]]) == 2


def test_an_unknown_flag_is_reported_with_its_subcommands_usage(cli_bundle, capsys):
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--bundle", cli_bundle, "--nosuchflag", "--json"])
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert json.loads(out) == {"ok": False, "error": "python -m arith evaluate: unrecognized arguments: --nosuchflag"}
    assert "usage: python -m arith evaluate" in err and "--coef" in err
