"""The committed default bundle (``precomputed/default``) and what the docs say about it: the bundle opens with
every checksum verified and every result the build precomputes, and the results tables of the README and of
``docs/default-bundle.md`` are what ``python -m arith table`` prints from it (no tensor is loaded: a second or two)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from arith.cli import main
from arith.index import BundleIndex
from arith.specs import PRECOMPUTED, Files

from conftest import ROOT

DEFAULT = ROOT / "precomputed" / "default"


@pytest.fixture(scope="module")
def index():
    return BundleIndex.open(DEFAULT)  # sizes and sha256 of every file against the manifest


def test_the_committed_default_holds_every_precomputed_result_for_every_mode(index):
    assert index.modes == ["full", "attn", "linear", "mlp"] and len(index.task_names) == 8
    files = json.loads((DEFAULT / Files.MANIFEST).read_text())["files"]
    for name in PRECOMPUTED:
        if name == "linear_cache":
            assert Files.linear_cache("test") in files
            continue
        assert name in index.results, name
        if name not in ("accuracy", "similarity"):  # per mode
            assert set(index.results[name]) == set(index.modes), name


def tables(text: str) -> list[list[str]]:
    """The markdown tables in ``text``: each a run of consecutive lines that start with ``|``."""
    out, run = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            run.append(line)
        elif run:
            out.append(run)
            run = []
    return out


@pytest.mark.parametrize(("args", "doc"), [(["--per-task"], "README.md"),
                                         (["--alone", "--pairs"], "docs/default-bundle.md")])
def test_the_documented_tables_are_what_the_table_command_prints_from_the_bundle(capsys, args, doc):
    """Each table the command prints is in the document whole (header to last row, in order), as the text says."""
    assert main(["table", "--bundle", str(DEFAULT), *args]) == 0
    out = capsys.readouterr().out
    readme = tables((ROOT / doc).read_text())
    if args == ["--per-task"]:
        targets = tables(out)  # the results table and the per-task table
    else:  # the pair summary, and the matrix of attention-only (the only mode whose matrix the docs quote)
        before, attn = out.split("\n\nattn:\n\n")
        targets = [t for t in tables(before) if t[0].startswith("| mode | addition α | cost if pairs")]
        targets.append(tables(attn)[0])
    assert len(targets) == 2
    for table in targets:
        assert table in readme, table[0]


def test_the_upload_pages_example_vector_is_valid_for_the_committed_default(index):
    """``assets/example-task-vector.safetensors`` is what the Upload page offers for download on the embedded
    default: it must validate against the committed base, or the page hides it (``python assets/make_example.py``
    remakes it after a rebuild)."""
    from arith.bundle import load_bundle
    from arith.taskvec import load_task_vector

    base = load_bundle(DEFAULT, verify=False).base
    tv = load_task_vector(ROOT / "assets" / "example-task-vector.safetensors", base)
    assert tv.base_id == base.id and tv.mode == "attn" and tv.task in index.task_names


def test_the_readme_python_api_example_runs_as_written_and_prints_what_it_says(tmp_path, monkeypatch, capsys):
    """The README's *Python API* block, executed as written from a directory where ``precomputed/`` is the
    repository's."""
    import re

    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "precomputed").symlink_to(ROOT / "precomputed")
    monkeypatch.chdir(tmp_path)
    names = {"__name__": "readme_example"}
    exec(compile(code, "README.md#python-api", "exec"), names)
    out = capsys.readouterr().out.splitlines()
    absolute, normalized = re.match(r"absolute ([\d.]+), normalized ([\d.]+)$", out[0]).groups()
    assert f"absolute {absolute} and normalized {normalized}" in section
    edited = eval(out[1], {})  # the edited model's accuracy on digits and street
    assert f"({100 * edited['digits']:.1f} % and {100 * edited['street']:.1f} %" in section
    assert names["mine"].task == "digits" and names["mine"].uid == names["run"].vector.uid  # saved and read back


def test_the_package_exports_are_objects_not_modules():
    """``arith.<name>`` resolves lazily (PEP 562); a name that is also a submodule would turn into that module once
    anything imported it."""
    import importlib
    import types

    import arith

    for name in arith.__all__:
        if name != "__version__":
            importlib.import_module(f"arith.{arith._EXPORTS[name]}")
            assert not isinstance(getattr(arith, name), types.ModuleType), name


def test_negations_at_the_end_of_the_search_are_flagged(new_app, monkeypatch):
    """The default's attention-only negation of terrain stops at the grid's last λ: the page says so."""
    negation = json.loads((DEFAULT / "results" / "negation.json").read_text())["attn"]
    edge = sorted(t for t, r in negation.items() if r["alpha"] >= max(p["alpha"] for p in r["curve"]))
    monkeypatch.setenv("ARITH_BUNDLE", str(DEFAULT))
    at = new_app()
    caps = [c.value for c in at.caption if "end of the λ searched" in c.value]
    assert edge and len(caps) == 1 and all(t in caps[0] for t in edge)


def test_the_stored_similarity_table_is_served_in_the_bundles_task_order(monkeypatch):
    """The committed table lists its vectors alphabetically (the order of its build); the Explorer lists them in the
    bundle's task order, and serves the stored cosines permuted rather than computing them again."""
    from arith import build
    from arith.explore import Explorer

    def computes(*_, **__):
        raise AssertionError("computed, not served")

    monkeypatch.setattr(build, "similarity_table", computes)
    stored = json.loads((DEFAULT / "results" / "similarity.json").read_text())
    ex = Explorer.open(DEFAULT)
    got = ex.similarity()
    want = [f"{m}/{n}" for m in ex.modes for n in ex.catalog(m)]
    assert got["all"]["labels"] == want != stored["all"]["labels"]
    at = {label: i for i, label in enumerate(stored["all"]["labels"])}
    assert all(got["all"]["cosine"][i][j] == stored["all"]["cosine"][at[a]][at[b]]
               for i, a in enumerate(want) for j, b in enumerate(want))
    attn = got["by_mode"]["attn"]
    assert attn["labels"] == list(ex.catalog("attn")) and list(attn["norms"]) == attn["labels"]


def test_precompute_reproduces_the_committed_similarity_table(tmp_path, capsys):
    """The stored table lists each mode's vectors alphabetically whatever order the bundle lists them in (the index
    went to task order later), so recomputing it on the committed default gives the committed file back: the same
    labels in the same order, the same cosines up to float rounding (the GPU recompute of 2026-11-27 found the rows
    permuted)."""
    import shutil

    copy = tmp_path / "default"
    shutil.copytree(DEFAULT, copy)
    assert main(["precompute", "--bundle", str(copy), "--only", "similarity", "--json"]) == 0
    capsys.readouterr()
    old, new = (json.loads((d / "results" / "similarity.json").read_text()) for d in (DEFAULT, copy))
    for got, want in [(new["all"], old["all"])] + [(new["by_mode"][m], old["by_mode"][m]) for m in old["by_mode"]]:
        assert got["labels"] == want["labels"]
        assert np.allclose(got["cosine"], want["cosine"], rtol=0, atol=1e-12)
    assert list(new["by_mode"]) == list(old["by_mode"])
