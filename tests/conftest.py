"""Fixtures: tiny random open_clip ViTs with real key names ("pico" models) and a tiny bundle built once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from arith.build import BuildPlan, build_bundle
from arith.bundle import load_bundle, sha256_file
from arith.models import Base
from arith.specs import Files, ModelSpec

TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 16, "patch_size": 4, "width": 32, "layers": 2, "head_width": 16}}
TINY_CLIP = {**TINY, "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
TASKS = ("synthetic-stripes", "synthetic-colours", "synthetic-quadrants")
MODES = ("full", "attn", "linear", "mlp")


def tiny_base(seed: int = 0, config: dict = TINY) -> Base:
    torch.manual_seed(seed)
    return Base.from_spec(ModelSpec(config=config))


@pytest.fixture
def base() -> Base:
    return tiny_base()


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    plan = BuildPlan(name="tiny", tasks=TASKS, modes=MODES,
                     finetune={"*": {"steps": 24, "batch_size": 32, "lr": 3e-3, "warmup_steps": 3}},
                     eval_n=48, xi_pairs=2, xi_grid=5)
    build_bundle(out, tiny_base(), plan, log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def bundle(bundle_dir):
    return load_bundle(bundle_dir)


# -- damaged copies of the bundle (tests/test_integrity.py, tests/test_bundle.py, tests/test_index.py) -------------
@pytest.fixture
def copy(bundle_dir, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(bundle_dir, dst)
    return dst


def serving_only(ex):
    """``ex`` with computing switched off: every answer must come from the bundle's stored results or the memo (an
    Explorer returns its callers' own copies, so identity cannot tell)."""
    def computes(*_, **__):
        raise AssertionError("computed, not served")
    ex.evaluator = computes
    return ex


def manifest(root) -> dict:
    return json.loads((root / Files.MANIFEST).read_text())


def write_manifest(root, m: dict) -> None:
    (root / Files.MANIFEST).write_text(json.dumps(m))


def rehash(root, rel: str) -> None:
    """Record ``rel``'s current size and sha256 in the manifest: only the contents checks can catch it now."""
    m = manifest(root)
    m["files"][rel] = {"sha256": sha256_file(root / rel), "bytes": (root / rel).stat().st_size}
    write_manifest(root, m)


def rewrite(root, rel: str, change) -> None:
    """Load a safetensors file of the bundle, let ``change`` edit its dict, save it and refresh its hash."""
    tensors = load_file(root / rel)
    change(tensors)
    save_file(tensors, root / rel)
    rehash(root, rel)



# -- the Streamlit app (tests/test_app.py, tests/test_browser.py) ---------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def app_env(bundle_dir, monkeypatch, tmp_path):
    """Point the app at the tiny bundle only: ``$ARITH_BUNDLE`` set, an empty ``precomputed/`` stand-in, CPU, no
    background load of the tensors."""
    monkeypatch.setenv("ARITH_BUNDLE", str(bundle_dir))
    monkeypatch.setenv("ARITH_PRECOMPUTED_DIR", str(tmp_path / "no-precomputed"))
    monkeypatch.setenv("ARITH_DEVICE", "cpu")
    monkeypatch.setenv("ARITH_LOAD_DELAY", "off")  # tensors load when a test's request needs them, never behind it
    monkeypatch.delenv("ARITH_MAX_PER_TASK", raising=False)
    return bundle_dir


@pytest.fixture
def new_app(app_env, monkeypatch):
    """A factory of fresh app sessions (``streamlit.testing.v1.AppTest`` of ``app.py``), each already run once.

    A Streamlit server runs a ``pages/`` directory the legacy way only until its first ``st.navigation`` call (the
    app then reruns once, see ``ui.state.leave_legacy_pages_mode``); AppTest resets that switch before every run,
    which would make every test run start with that extra rerun and drop button clicks.  Keep the server's steady
    state instead.
    """
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.testing.v1 import AppTest, app_test

    class NavigationPagesManager(PagesManager):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            PagesManager.uses_pages_directory = False

    monkeypatch.setattr(app_test, "PagesManager", NavigationPagesManager)

    def make(query_params: dict | None = None):
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        if query_params:
            at.query_params.update(query_params)
        return at.run()
    return make


# -- extension modules ($ARITH_EXTENSIONS, arith/extensions.py) ----------------------------------------------------
@pytest.fixture
def extension(tmp_path, monkeypatch):
    """``install(name, source)`` writes a module of one's own, puts it on the path and names it in
    ``$ARITH_EXTENSIONS``; afterwards every mode, merge method and task registered since, the module and any record
    of its failure are gone, so no other test sees them."""
    import sys

    from arith import extensions
    from arith.data import TASKS
    from arith.merge import MERGE_METHODS
    from arith.modes import MODES

    registries = (MODES, MERGE_METHODS, TASKS)
    before = [set(r) for r in registries]
    names: list[str] = []
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(source)
        names.append(name)
        monkeypatch.setenv("ARITH_EXTENSIONS", name)
        return name

    yield install
    for registry, keys in zip(registries, before):
        for key in set(registry) - keys:
            registry.pop(key)
    for name in names:
        sys.modules.pop(name, None)
        extensions._FAILED.pop(name, None)
