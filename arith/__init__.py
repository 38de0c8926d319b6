"""Task Arithmetic Explorer engine: build, fine-tune, merge, evaluate and diagnose task vectors.

Pure Python (torch, open_clip, safetensors, numpy); never imports Streamlit.  Start with
:func:`arith.bundle.load_bundle` and :meth:`arith.bundle.Bundle.evaluator`, or ``python -m arith --help``.
"""

__version__ = "0.1.0"

from .bundle import Bundle, BundleError, load_bundle
from .evaluate import Evaluator, summarize
from .merge import MERGE_METHODS, merge
from .models import Base
from .modes import MODES, Mode, get_mode, register_mode
from .specs import FinetuneConfig, ModelSpec, TaskInfo
from .taskvec import TaskVector, TaskVectorError, load_task_vector

__all__ = ["Base", "Bundle", "BundleError", "Evaluator", "FinetuneConfig", "MERGE_METHODS", "MODES", "Mode",
           "ModelSpec", "TaskInfo", "TaskVector", "TaskVectorError", "get_mode", "load_bundle", "load_task_vector",
           "merge", "register_mode", "summarize", "__version__"]
