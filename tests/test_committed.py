"""The committed default bundle (``precomputed/default``) and what the README says about it: the bundle opens with
every checksum verified and every result the build precomputes, and the README's results tables are what
``python -m arith table --per-task`` prints from it (no tensor is loaded: a second or two)."""

from __future__ import annotations

import json

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


def test_the_readme_results_tables_are_what_the_table_command_prints_from_the_bundle(capsys):
    assert main(["table", "--bundle", str(DEFAULT), "--per-task"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    readme = (ROOT / "README.md").read_text().splitlines()
    assert len(printed) > 10 and [line for line in printed if line not in readme] == []
