"""Fine-tuning loop (method.md §2): the same optimiser and schedule for every mode; the output is a task vector.

AdamW on the mode's trainable tensors only, linear warm-up then cosine decay, gradient clipping, frozen head.
Seeded: batches come from a ``torch.Generator``, so a CPU run is bit-for-bit repeatable.  Under ``torchrun``
(``torch.distributed`` initialised) each rank takes its share of the same global batch and the trainable
module is wrapped in ``DistributedDataParallel``, which averages gradients: the result equals a single-process
run with that global batch.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .data import Split
from .heads import Head
from .linearize import linearized_features
from .models import Base
from .modes import get_mode
from .specs import FinetuneConfig, Meta
from .taskvec import TaskVector, library_versions

Progress = Callable[[int, int, float], None]  # (step done, total steps, loss)


class Cancelled(RuntimeError):
    """Raised when ``should_stop()`` asks a fine-tuning run to stop."""


@dataclass(repr=False)
class FinetuneResult:
    """A fine-tuning run: its task vector, wall time, time per step, losses per step and (CUDA) peak memory."""

    def __repr__(self) -> str:
        loss = f", final loss {self.losses[-1]:.4g}" if self.losses else ""
        return f"FinetuneResult({self.vector!r}, {self.seconds:.1f} s, {self.seconds_per_step:.3g} s/step{loss})"
    vector: TaskVector
    seconds: float
    seconds_per_step: float
    losses: list[float] = field(default_factory=list)
    peak_memory_bytes: int | None = None  # CUDA only; CPU peaks are measured per process by bench/


class Trainable(nn.Module):
    """The mode's trainable tensors as parameters, initialised at θ0; everything else is read from θ0.

    Its forward is the non-linear encoder f(x; θ) or, for linearized modes, f(x; θ0) + J (θ − θ0).
    """

    def __init__(self, base: Base, mode: str):
        super().__init__()
        self.base, self.mode = base, get_mode(mode)
        self.keys = self.mode.trainable_keys(base.params)
        if not self.keys:
            raise ValueError(f"mode {mode!r} trains no tensor of {base.spec.label}")
        # ParameterDict names cannot contain dots
        self.weights = nn.ParameterDict({k.replace(".", "__"): nn.Parameter(base.params[k].clone()) for k in self.keys})

    def current(self) -> dict[str, torch.Tensor]:
        return {k: self.weights[k.replace(".", "__")] for k in self.keys}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.current()
        if self.mode.linearized:
            return linearized_features(self.base, {k: theta[k] - self.base.params[k] for k in self.keys}, x)
        return self.base.features(theta, x)

    def task_vector(self) -> dict[str, torch.Tensor]:
        return {k: (p.detach() - self.base.params[k]).float().cpu() for k, p in self.current().items()}


def lr_factor(step: int, cfg: FinetuneConfig) -> float:
    """Linear warm-up to the peak lr over ``warmup_steps``, then cosine decay to 0 at ``steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * (step - cfg.warmup_steps) / span))


def _augment(images: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (reflect-padded crop) of a uint8 batch."""
    n, _, h, w = images.shape
    padded = F.pad(images.float(), (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    return out.to(torch.uint8)


def _batches(n: int, batch: int, steps: int, seed: int):
    """Yield index tensors of ``steps`` global batches: shuffled epochs, seeded, identical on every rank."""
    gen = torch.Generator().manual_seed(seed)
    perm, pos = torch.randperm(n, generator=gen), 0
    for _ in range(steps):
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        take = perm[pos:pos + batch] if batch <= n else torch.randint(0, n, (batch,), generator=gen)
        pos += batch
        yield take


def _tensor_batches(train: Split, batches, rank: int, world: int, aug_gen: torch.Generator | None):
    """(uint8 images, labels) of this rank's share of each global batch of an in-memory split.

    Augmentation draws for the whole global batch before it is split, so every rank sees the images a single
    process would.
    """
    for idx in batches:
        images = train.images[idx]
        if aug_gen is not None:
            images = _augment(images, aug_gen)
        yield images[rank::world], train.labels[idx][rank::world]


def _dist():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def finetune(base: Base, head: Head, train: Split, cfg: FinetuneConfig, *, task: str,
             progress: Progress | None = None, should_stop: Callable[[], bool] | None = None) -> FinetuneResult:
    """Fine-tune ``base`` on ``train`` with a frozen ``head`` and return the task vector τ = θ_t − θ0.

    Runs on ``base``'s device (move it with :meth:`Base.to`).  ``progress(step, total, loss)`` is called after
    every step; ``should_stop()`` is polled before each step and raises :class:`Cancelled` when true.
    """
    torch.manual_seed(cfg.seed)
    rank, world = _dist()
    if cfg.batch_size % world:
        raise ValueError(f"batch size {cfg.batch_size} is not divisible by the {world} processes")
    model = Trainable(base, cfg.mode)
    runner: nn.Module = model
    if world > 1:
        runner = nn.parallel.DistributedDataParallel(model, device_ids=[base.device] if base.device.type == "cuda" else None)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)
    if base.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(base.device)

    labels = getattr(train, "labels", None)  # a lazy data set checks its own labels as it decodes
    if torch.is_tensor(labels) and len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= head.num_classes):
        raise ValueError(f"{task}: training labels outside the head's classes 0..{head.num_classes - 1} (the head of "
                         "another task?)")
    losses: list[float] = []
    start = time.perf_counter()
    batches = _batches(len(train), cfg.batch_size, cfg.steps, cfg.seed)
    if hasattr(train, "stream"):  # a lazy data set (arith.imagedata): decodes this rank's share, in workers
        stream = train.stream(batches, rank=rank, world=world, seed=cfg.seed, augment=cfg.augment)
    else:
        stream = _tensor_batches(train, batches, rank, world, aug_gen if cfg.augment else None)
    try:
        for step in range(cfg.steps):
            if should_stop is not None and should_stop():
                raise Cancelled(f"stopped after {step} of {cfg.steps} steps")
            images, labels = next(stream)
            x = base.preprocess(images)
            logits = head.logits(runner(x))
            loss = F.cross_entropy(logits, labels.to(logits.device), label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            losses.append(loss.item())
            if progress is not None:
                progress(step + 1, cfg.steps, losses[-1])
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    seconds = time.perf_counter() - start

    meta = {Meta.STEPS: str(cfg.steps), Meta.LR: repr(cfg.lr), Meta.SEED: str(cfg.seed),
            Meta.CONFIG: cfg.to_json(), Meta.VERSIONS: json.dumps(library_versions(), sort_keys=True)}
    vector = TaskVector(model.task_vector(), task, cfg.mode, base.id, meta)
    peak = torch.cuda.max_memory_allocated(base.device) if base.device.type == "cuda" else None
    return FinetuneResult(vector, seconds, seconds / cfg.steps, losses, peak)
