"""`streamlit run app.py` serves app.py as an st.App whose lifespan starts importing torch (ui/warmup.py)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path

from ui import warmup

ROOT = Path(__file__).resolve().parent.parent


def test_streamlit_run_finds_the_app_in_app_py():
    from streamlit.web.server.app_discovery import discover_asgi_app

    found = discover_asgi_app(ROOT / "app.py")
    assert found.is_asgi_app and found.import_string == "app:app"


def test_imported_as_a_module_app_py_is_an_st_app_and_draws_nothing():
    # a fresh process: constructing an st.App pins process-wide Streamlit settings
    code = ("import sys, streamlit as st\n"
            "import app\n"
            "assert isinstance(app.app, st.App), type(app.app)\n"
            "assert 'ui.entry' not in sys.modules and 'torch' not in sys.modules\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr


def test_warm_up_imports_and_never_raises(caplog):
    sys.modules.pop("colorsys", None)
    assert warmup.warm_up(("colorsys",)) >= 0 and "colorsys" in sys.modules
    with caplog.at_level(logging.ERROR, logger="arith.app"):
        warmup.warm_up(("arith_no_such_module", "colorsys"))
    assert "arith_no_such_module" in caplog.text


def test_the_lifespan_starts_the_imports_on_a_daemon_thread_and_serves_at_once(monkeypatch):
    seen = []
    real_start = warmup.start

    def spy(modules=("colorsys",)):
        t = real_start(modules)
        seen.append(t)
        return t

    monkeypatch.setattr(warmup, "start", spy)

    async def serve():
        async with warmup.lifespan(None):
            pass

    asyncio.run(serve())
    assert len(seen) == 1 and seen[0].daemon and seen[0].name == "arith-start-up-imports"
    seen[0].join(30)
    assert not seen[0].is_alive()


def test_wait_returns_once_the_start_up_imports_are_done():
    t = warmup.start(("colorsys",))
    warmup.wait()
    assert not t.is_alive()
    warmup.wait()  # nothing running: returns at once
