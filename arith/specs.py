"""Typed, frozen configuration records and the names the on-disk formats use.

Every record here round-trips through JSON (``to_json`` / ``from_json``), so a bundle manifest, a task-vector
file's metadata and a CLI invocation all describe a model or a fine-tuning run the same way.  File names and
metadata keys are defined once, here.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FORMAT_VERSION = "1"


class Meta:
    """Metadata keys of task-vector files (safetensors ``__metadata__``; every value is a string)."""

    FORMAT = "arith.format"
    KIND = "arith.kind"  # always "task_vector"
    BASE = "arith.base_model"
    MODE = "arith.mode"
    TASK = "arith.task"
    STEPS = "arith.steps"
    LR = "arith.lr"
    SEED = "arith.seed"
    CONFIG = "arith.finetune_config"  # JSON of FinetuneConfig
    VERSIONS = "arith.versions"  # JSON {"torch": ..., "open_clip": ..., "arith": ...}
    CREATED = "arith.created"
    PART = "arith.cut_to"  # a vector cut post hoc to the tensors another mode trains (TaskVector.cut): that mode
    DERIVED = "arith.derived"  # how arithmetic made this vector from others ("0.35 × digits", "digits + street")
    TRAINING = (STEPS, LR, SEED, CONFIG, VERSIONS, CREATED)  # what a fine-tuning run vouches for: never inherited

    REQUIRED = (FORMAT, BASE, MODE, TASK)


class Files:
    """File names inside a bundle directory (see ``arith.bundle``)."""

    MANIFEST = "manifest.json"
    BASE = "base.safetensors"  # θ0: the image encoder, open_clip key names ("visual.…")
    TEXT = "text.safetensors"  # optional: the rest of the CLIP model (text tower), for new zero-shot heads
    HEADS = "heads.safetensors"  # one frozen head per task: "<task>.weight" [C, D], "<task>.scale" []
    DATA_DIR = "data"  # data/<task>.safetensors: "<split>.images" uint8 [N,3,H,W], "<split>.labels" int64 [N]
    VECTORS_DIR = "vectors"  # vectors/<mode>/<task>.safetensors
    RESULTS_DIR = "results"  # results/<name>.json
    CACHE_DIR = "cache"  # cache/linear-<split>.safetensors: f(θ0; x) and J(θ0)τ_t for instant linear sliders

    @staticmethod
    def data(task: str) -> str:
        return f"{Files.DATA_DIR}/{task}.safetensors"

    @staticmethod
    def vector(mode: str, task: str) -> str:
        return f"{Files.VECTORS_DIR}/{mode}/{task}.safetensors"

    @staticmethod
    def result(name: str) -> str:
        return f"{Files.RESULTS_DIR}/{name}.json"

    @staticmethod
    def linear_cache(split: str) -> str:
        return f"{Files.CACHE_DIR}/linear-{split}.safetensors"


# The results a build precomputes (``arith.build.precompute``; ``python -m arith precompute --only NAME``): each a
# results/<name>.json file, except the linear caches (cache/linear-<split>.safetensors).
PRECOMPUTED = ("accuracy", "addition", "alone", "pairs", "negation", "disentanglement", "kernel", "similarity",
               "linear_cache")


class _JsonRecord:
    """Mixin: dataclass <-> plain JSON dict, refusing unknown fields so typos do not pass silently."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; expected a subset of {sorted(names)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class ModelSpec(_JsonRecord):
    """Which image encoder: an open_clip model name (+ pretrained tag or checkpoint path) or an inline config.

    ``config`` is an open_clip model config (``{"embed_dim", "vision_cfg", "text_cfg"?, "quick_gelu"?}``), the
    same format as open_clip's ``model_configs/*.json``; it is how the tiny encoders of the tests and the
    embedded default are described.  ``quick_gelu=None`` means "what the pretrained tag was trained with"
    (True for OpenAI weights), so ``ViT-B-32`` + ``openai`` gets QuickGELU without the caller knowing.
    """

    name: str | None = None
    pretrained: str | None = None
    config: dict | None = None
    quick_gelu: bool | None = None

    def __post_init__(self):
        if (self.name is None) == (self.config is None):
            raise ValueError("ModelSpec needs exactly one of `name` (an open_clip model) or `config` (inline)")

    def __hash__(self) -> int:  # config is a dict; hash its canonical JSON
        return hash(self.to_json())

    @property
    def label(self) -> str:
        """Short human-readable name, e.g. ``ViT-B-32/openai`` or ``inline ViT w128 L4``."""
        if self.name:
            return f"{self.name}/{self.pretrained}" if self.pretrained else self.name
        v = self.config["vision_cfg"]
        return f"inline ViT w{v.get('width')} L{v.get('layers')} p{v.get('patch_size')}"


@dataclass(frozen=True)
class FinetuneConfig(_JsonRecord):
    """One fine-tuning run (method.md §2). The paper's recipe for real CLIP is ``FinetuneConfig.paper()``."""

    mode: str = "attn"
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-5
    weight_decay: float = 0.1
    warmup_steps: int = 500
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    seed: int = 0
    # in-memory splits: a random translation by up to 2 pixels; streamed data sets: open_clip's RandomResizedCrop;
    # never a flip (it would change digits and signs)
    augment: bool = False

    def __post_init__(self):
        # refused here, before a run: a config that trains a vector no loader accepts (a NaN τ from an infinite lr,
        # a negative seed that the file's metadata cannot hold) must not cost a run first
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be positive (got {self.steps} and {self.batch_size})")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number (got {self.lr!r})")
        if self.warmup_steps < 0 or self.seed < 0:
            raise ValueError(f"warmup_steps and seed must be non-negative (got {self.warmup_steps} and {self.seed})")
        for name in ("grad_clip", "weight_decay"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a non-negative finite number (got {v!r})")
        if not (math.isfinite(self.label_smoothing) and 0 <= self.label_smoothing < 1):
            raise ValueError(f"label_smoothing must lie in [0, 1) (got {self.label_smoothing!r})")

    def with_steps(self, steps: int) -> FinetuneConfig:
        """The same recipe over ``steps`` steps: the warm-up keeps its share of the run (50 of 500 steps becomes 10
        of 100), so a shorter run keeps the schedule's shape.  The Train page and ``python -m arith finetune
        --steps`` both shorten a bundle's recipe this way."""
        steps = int(steps)
        warmup = min(round(self.warmup_steps * steps / self.steps), max(0, steps - 1))
        return dataclasses.replace(self, steps=steps, warmup_steps=warmup)

    @classmethod
    def paper(cls, mode: str = "attn", **overrides) -> FinetuneConfig:
        """AdamW lr 1e-5, wd 0.1, batch 128, 500 warm-up steps then cosine, clip 1.0, 2000 steps (method.md §2)."""
        return cls(mode=mode, **overrides)


@dataclass(frozen=True)
class TaskInfo(_JsonRecord):
    """A task as a bundle records it: its class names and the prompt templates of its zero-shot head."""

    name: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...] = ("a photo of a {}.",)
    description: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        data = dict(data)
        for key in ("classnames", "templates"):
            if key in data:
                data[key] = tuple(data[key])
        return super().from_dict(data)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


@dataclass(frozen=True)
class Provenance(_JsonRecord):
    """How a bundle or file was made: enough to rebuild it."""

    command: str = ""
    seed: int = 0
    versions: dict = field(default_factory=dict)
    minutes: float | None = None
    created: str = ""
    notes: str = ""
    # torch's intra-op thread count of the building process (what CPU results depend on: the batch reductions of
    # LayerNorm's and the patch convolution's weight gradients are split by thread, so a CPU build is bit-for-bit
    # reproducible only at the same count; recorded for GPU builds too, where it matters little)
    threads: int | None = None
    # torch's CPU kernel level of the building machine (``torch.backends.cpu.get_cpu_capability()``: "AVX2",
    # "AVX512", ...): CPU kernels differ by it, and so do the bits of what a CPU build trains (a build on an AVX-512
    # machine gave another θ0 than the committed default's AVX2 build, with the same gates; docs/default-bundle.md)
    cpu: str = ""
    # [stage, minutes] in the order the build ran them (e.g. "pre-training", "fine-tuning", "precompute"; a list,
    # since the manifest's keys are sorted): where the build's time went, so a build near its budget shows which
    # stage to look at; a stage with nothing to do (a reused θ0, kept vectors) takes ~0 or is absent
    stages: list = field(default_factory=list)
