"""Hostile uploads through the app's Upload view (AppTest): every file of the corpus in tests/hostile.py gets its
specific message, nothing crashes or hangs (each run has a deadline), and no state changes: not the session's
workspace, choices or link, not the shared bundle.  Files over the configured size limit are refused before they
are read."""

from __future__ import annotations

import copy
import json

import pytest

from arith.models import fingerprint

from conftest import tiny_base
from hostile import corpus, valid_vector

DEADLINE_S = 30  # per AppTest run: a file that made the view hang fails the test instead of blocking it


def snapshot(at) -> dict:
    """What a refused upload must not change: the session's choices, coefficients, workspace and link."""
    ss = at.session_state
    return {"mode": ss["w_mode"], "tasks": list(ss["w_tasks"]), "coefs": copy.deepcopy(ss["coefs"]),
            "workspace": {b: sorted(ws) for b, ws in ss["workspace"].items()} if "workspace" in ss else {},
            "link": dict(at.query_params), "sliders": [(s.key, s.value) for s in at.sidebar.slider]}


def shared(at) -> tuple:
    ex = at.session_state["_ctx"].ex
    return (fingerprint(ex.bundle.base.params), json.dumps(ex.bundle.results, sort_keys=True),
            {m: {t: tv.uid for t, tv in vs.items()} for m, vs in ex.bundle.vectors.items()})


def test_every_hostile_file_gets_its_message_and_changes_nothing(new_app, bundle):
    cases = corpus(bundle.base)
    assert corpus(tiny_base())[0][0] == cases[0][0] and len(cases) >= 25
    at = new_app()
    at.switch_page("pages/upload.py").run(timeout=DEADLINE_S)
    before, base_state = snapshot(at), shared(at)
    for i, (name, blob, expect) in enumerate(cases):
        fname = f"case{i:02d}.safetensors"
        at.file_uploader(key="upload_files").set_value((fname, blob, "application/octet-stream")).run(timeout=DEADLINE_S)
        assert not at.exception, (name, [e.value for e in at.exception])
        mine = [e.value for e in at.error if e.value.startswith(f"{fname}:")]
        assert len(mine) == 1 and expect.lower() in mine[0].lower(), (name, mine)
        assert "unexpected" not in mine[0] and "cannot be read (" not in mine[0], (name, mine)  # the engine's message
        assert snapshot(at) == before, name
    assert len(at.error) == len(cases)  # one message per file, all still listed
    assert shared(at) == base_state
    # the session still works: a valid file is accepted and the arithmetic view computes as before
    good = valid_vector(bundle.base, "attn", "synthetic-colours", seed=3)
    at.file_uploader(key="upload_files").set_value(("good.safetensors", good.to_bytes(), "x")).run(timeout=DEADLINE_S)
    assert list(at.session_state["_ctx"].workspace) == ["good"]
    at.switch_page("pages/arithmetic.py").run(timeout=DEADLINE_S)
    assert not at.exception and not at.error


def test_all_hostile_files_in_one_upload(new_app, bundle):
    cases = corpus(bundle.base)
    at = new_app()
    at.switch_page("pages/upload.py").run(timeout=DEADLINE_S)
    before = snapshot(at)
    files = [(f"case{i:02d}.safetensors", blob, "application/octet-stream") for i, (_, blob, _) in enumerate(cases)]
    at.file_uploader(key="upload_files").set_value(files).run(timeout=DEADLINE_S)
    assert not at.exception
    errors = {e.value.split(":", 1)[0]: e.value for e in at.error}
    for i, (name, _, expect) in enumerate(cases):
        assert expect.lower() in errors[f"case{i:02d}.safetensors"].lower(), name
    assert snapshot(at) == before


def test_an_oversized_upload_is_refused_before_it_is_read(new_app, bundle, monkeypatch):
    """``$ARITH_MAX_UPLOAD_MB`` (default: Streamlit's server.maxUploadSize) is passed to the uploader and to the
    engine's reader, which checks the file's size before reading a byte of it."""
    from streamlit.runtime.uploaded_file_manager import UploadedFile

    monkeypatch.setenv("ARITH_MAX_UPLOAD_MB", "1")
    reads = []
    for method in ("read", "getvalue", "getbuffer", "read1", "readinto"):
        original = getattr(UploadedFile, method)

        def spy(self, *args, _original=original, _method=method, **kw):
            reads.append((self.name, _method))
            return _original(self, *args, **kw)
        monkeypatch.setattr(UploadedFile, method, spy)

    at = new_app()
    at.switch_page("pages/upload.py").run(timeout=DEADLINE_S)
    before = snapshot(at)
    big = b"\0" * (1024**2 + 1)
    small = valid_vector(bundle.base, "attn", "synthetic-quadrants", seed=5).to_bytes()
    at.file_uploader(key="upload_files").set_value([("big.safetensors", big, "x"), ("small.safetensors", small, "x")])
    at.run(timeout=DEADLINE_S)
    assert not at.exception
    msg = next(e.value for e in at.error if e.value.startswith("big.safetensors:"))
    assert "over the 1048576-byte limit" in msg
    assert ("big.safetensors", "read") not in reads and not [r for r in reads if r[0] == "big.safetensors"]
    assert ("small.safetensors", "read") in reads  # the spy sees reads: the small file was read and accepted
    assert list(at.session_state["_ctx"].workspace) == ["small"]
    assert snapshot(at)["coefs"] == {**before["coefs"], "small": 0.0}  # only the accepted file was added


@pytest.mark.parametrize("limit", ["0", "-5", "lots", "99999999"])
def test_the_upload_limit_setting_is_sane(monkeypatch, limit):
    from arith.safefile import DEFAULT_MAX_BYTES
    from ui.state import upload_limit_mb

    monkeypatch.setenv("ARITH_MAX_UPLOAD_MB", limit)
    assert 1 <= upload_limit_mb() <= DEFAULT_MAX_BYTES // 2**20


def hostile_coefficient_sets(base_id: str) -> list[tuple[str, bytes, str]]:
    ok = {"format": "arith-coefficients", "format_version": "1", "base_model": base_id, "mode": "attn"}

    def rec(**kw):
        return json.dumps({**ok, **kw}).encode()
    return [
        ("empty", b"", "invalid JSON"),
        ("not UTF-8", b"\xff\xfe\x00", "not UTF-8"),
        ("deeply nested", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        ("a 5000-digit number", b"1" * 5000, "digits"),
        ("too large", b" " * (1024**2 + 1), "over 1048576 bytes"),
        ("a list", b"[1, 2]", "not a coefficient set"),
        ("another base", rec(base_model="open_clip:ViT-B-32:openai", coefficients={}), "for base model"),
        ("unknown mode", rec(mode="lora", coefficients={}), "unknown mode"),
        ("unknown method", rec(method="magic", coefficients={}), "unknown merge method"),
        ("NaN coefficient", rec(coefficients={"x": float("nan")}), "non-finite"),
        ("string coefficient", rec(coefficients={"x": "1"}), "non-numeric"),
        ("coefficients a list", rec(coefficients=[1, 2]), "must be an object"),
    ]


def test_hostile_coefficient_sets_in_the_export_view(new_app, bundle):
    at = new_app()
    at.switch_page("pages/export.py").run(timeout=DEADLINE_S)
    before = snapshot(at)
    for i, (name, blob, expect) in enumerate(hostile_coefficient_sets(bundle.base.id)):
        at.file_uploader(key="export_import").set_value((f"set{i}.json", blob, "application/json")).run(timeout=DEADLINE_S)
        assert not at.exception, name
        msg = [e.value for e in at.error if e.value.startswith(f"set{i}.json:")]
        assert len(msg) == 1 and expect in msg[0], (name, msg)
        assert snapshot(at) == before, name
