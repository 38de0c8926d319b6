"""Modules of one's own that extend the registries: ``$ARITH_EXTENSIONS``, a comma-separated list of importable modules
(e.g. ``mylab.arith_ext``) that call :func:`arith.modes.register_mode`, :func:`arith.merge.register_merge_method` or
:func:`arith.data.register_task` when imported.  The CLI and the app import them as they start, and a task name the
registry lacks imports them too, so a mode, a merge method or a task family of one's own is one record in one's own
module, with no change to the engine (README, *Extending*)."""

from __future__ import annotations

import importlib
import os

EXTENSIONS_VAR = "ARITH_EXTENSIONS"


def extension_modules() -> list[str]:
    """The module names ``$ARITH_EXTENSIONS`` lists (none when unset)."""
    return [m for m in (part.strip() for part in os.environ.get(EXTENSIONS_VAR, "").split(",")) if m]


_FAILED: dict[str, str] = {}  # module -> why its import failed: not imported again (it may have registered half)


def load_extensions() -> list[str]:
    """Import every module ``$ARITH_EXTENSIONS`` names (each once: Python caches modules) and return their names.
    A module that cannot be found, or fails as it runs, is a ValueError naming it and its error; a failed module is
    not imported again (a second run would find its first records registered and fail on those instead)."""
    names = extension_modules()
    for mod in names:
        if mod in _FAILED:
            raise ValueError(_FAILED[mod])
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name and mod.startswith(e.name):
                _FAILED[mod] = f"${EXTENSIONS_VAR} names {mod!r}, which cannot be imported (is it on PYTHONPATH?)"
            else:
                _FAILED[mod] = f"${EXTENSIONS_VAR} module {mod!r} failed as it was imported: {e}"
            raise ValueError(_FAILED[mod]) from None
        except Exception as e:
            _FAILED[mod] = f"${EXTENSIONS_VAR} module {mod!r} failed as it was imported: {type(e).__name__}: {e}"
            raise ValueError(_FAILED[mod]) from None
    return names
