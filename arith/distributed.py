"""Running under ``torchrun``: process-group set-up from the environment, and rank-0-only side effects.

``torchrun --nproc_per_node N -m arith finetune ...`` (or ``build-bundle``) starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR``/``MASTER_PORT`` set.  :func:`init_from_env` joins the
process group (NCCL on CUDA, gloo on CPU) when ``WORLD_SIZE > 1``; :func:`arith.finetune.finetune` then splits
every global batch across the ranks and wraps the trainable tensors in ``DistributedDataParallel``, so the task
vector equals a single-process run with the same global batch.  Only rank 0 writes files and prints results.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist


def world_from_env() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank: the group's while it is joined, else torchrun's ``$RANK`` (0 in a single process), so
    that rank 0 alone still writes and prints after the group is released."""
    if initialized():
        return dist.get_rank()
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def world_size() -> int:
    return dist.get_world_size() if initialized() else 1


def is_main() -> bool:
    """True in a single process and on rank 0 of a group: the process that writes files and prints."""
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_env(device: str = "cpu") -> bool:
    """Join the process group torchrun describes (once); False when not launched with ``WORLD_SIZE > 1``.

    ``device`` picks the backend: NCCL for CUDA, gloo otherwise (``$ARITH_DIST_BACKEND`` overrides).
    """
    if world_from_env() <= 1 or initialized():
        return initialized()
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(local_rank())
    backend = os.environ.get("ARITH_DIST_BACKEND") or ("nccl" if cuda else "gloo")
    minutes = float(os.environ.get("ARITH_DIST_TIMEOUT_MIN", "60"))  # rank 0 writes files while the others wait
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=minutes))
    return True


def device_for(device: str) -> str:
    """``cuda`` means this process's GPU under torchrun (``cuda:$LOCAL_RANK``); anything else is kept."""
    if device == "cuda" and initialized():
        return f"cuda:{local_rank()}"
    return device


def barrier() -> None:
    if initialized():
        dist.barrier()


def broadcast(obj):
    """Rank 0's ``obj`` on every rank (any picklable value); ``obj`` itself in a single process."""
    if not initialized():
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    if initialized():
        dist.barrier()
        dist.destroy_process_group()


@contextmanager
def session(device: str = "cpu"):
    """Join the group for the duration of a command (a no-op in a single process), then leave it."""
    joined = init_from_env(device)
    try:
        yield
    finally:
        if joined:
            shutdown()
