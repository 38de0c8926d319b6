"""Task Arithmetic Explorer engine: build, fine-tune, merge, evaluate and diagnose task vectors.

Pure Python (torch, open_clip, safetensors, numpy); never imports Streamlit.  Start with
:func:`arith.bundle.load_bundle` and :meth:`arith.bundle.Bundle.evaluator`, or ``python -m arith --help``.

The names below are imported on first use (PEP 562), so ``import arith.memory`` or ``import arith.specs`` does not
import torch: the app's server sets its allocator up before anything heavy is loaded.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Bundle": "bundle", "BundleError": "bundle", "load_bundle": "bundle",
    "Evaluator": "evaluate", "summarize": "metrics", "BundleIndex": "index",
    "MERGE_METHODS": "merge",  # not merge(): ``arith.merge`` is the module once anything has imported it
    "Base": "models",
    "MODES": "modes", "Mode": "modes", "get_mode": "modes", "register_mode": "modes",
    "FinetuneConfig": "specs", "ModelSpec": "specs", "TaskInfo": "specs",
    "TaskVector": "taskvec", "TaskVectorError": "taskvec", "load_task_vector": "taskvec",
    "from_state_dicts": "convert",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:  # a submodule not imported yet (``arith.merge.merge``)
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":  # the submodule exists but needs something missing
                raise
            raise AttributeError(f"module 'arith' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
