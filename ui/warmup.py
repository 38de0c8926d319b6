"""Server start-up for ``streamlit run app.py``: start importing torch before the first browser connects.

Streamlit runs the app's script only when a session connects, so the first visitor of a fresh server (a Space that
just woke up) would wait for ``import torch`` (1.6-1.8 s on two cores) after the page itself has loaded.  ``app.py``
is also an ``st.App`` whose lifespan calls :func:`start`: a daemon thread imports torch while the server answers and
the browser loads the page, so the script finds it imported, or waits for the rest of it (:func:`wait`).  That
took the cold start from 6.1 to 5.8 s in interleaved runs on the CI machine (BENCHMARKS.md).  Importing pandas and
plotly here as well made it slower: the page is served by the same interpreter meanwhile.

The page script first waits for these imports to finish (:func:`wait`), so the two threads never import at the
same time; ``arith`` and ``ui`` are never imported from this thread.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from contextlib import asynccontextmanager

log = logging.getLogger("arith.app")

MODULES = ("torch",)


def warm_up(modules: tuple[str, ...] = MODULES) -> float:
    """Import ``modules`` in order and return the seconds taken.  An import that fails is logged and not raised:
    the script's own import of it shows the error in the page."""
    t0 = time.perf_counter()
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:
            log.exception("start-up import of %s failed", name)
            break
    seconds = time.perf_counter() - t0
    log.info("start-up imports (%s) done in %.2f s", ", ".join(modules), seconds)
    return seconds


_threads: list[threading.Thread] = []


def start(modules: tuple[str, ...] = MODULES) -> threading.Thread:
    """Run :func:`warm_up` on a daemon thread (it never delays the server or its shutdown)."""
    thread = threading.Thread(target=warm_up, args=(modules,), name="arith-start-up-imports", daemon=True)
    _threads.append(thread)
    thread.start()
    return thread


def wait() -> None:
    """Block until every start-up import has finished (at once when none runs).  The page script calls this before
    its own imports, so the two threads are never inside one import together: ``import torch.nn`` while another
    thread is still executing ``torch/__init__`` would not wait for it (CPython waits only for the module named)."""
    for thread in list(_threads):
        thread.join()


@asynccontextmanager
async def lifespan(app):
    """The ``st.App`` lifespan of ``app.py``: start the imports, then serve at once."""
    start()
    yield
