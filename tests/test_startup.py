"""Start-up: ``streamlit run app.py`` serves app.py as an st.App, and the first view is drawn from the bundle's index
and precomputed results before torch is imported; the tensors load afterwards, in the background."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def test_the_first_view_is_drawn_without_torch_and_the_tensors_load_afterwards(bundle_dir, tmp_path):
    # a fresh process, so that nothing has imported torch; the background load starts ARITH_LOAD_DELAY s after a run
    code = ("import sys, time\n"
            "from streamlit.testing.v1 import AppTest\n"
            "at = AppTest.from_file('app.py', default_timeout=120).run()\n"
            "drawn_without_torch = 'torch' not in sys.modules\n"
            "at.run()\n"
            "drawn_without_torch = drawn_without_torch and 'torch' not in sys.modules\n"
            "assert not at.exception, at.exception\n"
            "assert [t.value for t in at.title] == ['Task arithmetic'], [t.value for t in at.title]\n"
            "assert len(at.metric) == 4 and not at.error, (at.metric, at.error)\n"
            "ex = at.session_state['_ctx'].ex\n"
            "deadline = time.monotonic() + 120\n"
            "while not ex.loaded and time.monotonic() < deadline:\n"
            "    time.sleep(0.05)\n"
            "print(drawn_without_torch, ex.loaded, 'torch' in sys.modules)\n")
    env = {**os.environ, "ARITH_BUNDLE": str(bundle_dir), "ARITH_DEVICE": "cpu", "ARITH_LOAD_DELAY": "3",
           "ARITH_PRECOMPUTED_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-3:] == ["True", "True", "True"], out.stdout
