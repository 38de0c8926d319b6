"""Fixtures: tiny random open_clip ViTs with real key names ("pico" models) and a tiny bundle built once."""

from __future__ import annotations

import pytest
import torch

from arith.build import BuildPlan, build_bundle
from arith.bundle import load_bundle
from arith.models import Base
from arith.specs import ModelSpec

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
