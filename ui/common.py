"""Small helpers shared by the pages: errors as messages, progress bars, number formatting."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import streamlit as st

log = logging.getLogger("arith.app")

ROOT = Path(__file__).resolve().parent.parent


def readme_section(title: str) -> str:
    """The markdown of one ``## title`` section of the README (the app shows the file format from there).  On a
    Space, README.md is the Space's own and the repository's is ``docs/README.md`` (``space-prepare``)."""
    for path in (ROOT / "README.md", ROOT / "docs" / "README.md"):
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        out, inside = [], False
        for line in text.splitlines():
            if line.startswith("## "):
                if inside:
                    break
                inside = line[3:].strip() == title
                continue
            if inside:
                out.append(line)
        if out:
            return "\n".join(out).strip()
    return ""


def message(e: BaseException) -> str:
    """The user-facing text of an engine error (``KeyError`` keeps its argument unquoted)."""
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    return str(e) or type(e).__name__


@contextmanager
def guard(what: str = ""):
    """Run a block of a page; an error becomes an ``st.error`` message (never a traceback) and the block stops.

    Engine errors (``ValueError``, ``KeyError``, ``FileNotFoundError``) carry messages meant for the user; anything
    else is logged with its traceback on the server and shown by type and message.  Streamlit's own control flow
    (``st.stop``, ``st.rerun``) derives from ``BaseException`` and passes through.
    """
    try:
        yield
    except (ValueError, KeyError, FileNotFoundError) as e:
        st.error(f"{what}: {message(e)}" if what else message(e), icon="⚠️")
    except Exception as e:  # the app must never show a traceback
        log.exception("error in the app%s", f" ({what})" if what else "")
        st.error(f"{what + ': ' if what else ''}unexpected {type(e).__name__}: {e}", icon="🛑")


class Progress:
    """An ``st.progress`` bar driven by the engine's ``progress(done, total)`` callbacks; removed by :meth:`done`."""

    def __init__(self, label: str, where=None):
        self.label = label
        self.bar = (where or st).progress(0.0, text=label)

    def __call__(self, done: int, total: int, *extra) -> None:
        frac = min(1.0, done / total) if total else 1.0
        text = f"{self.label} ({done}/{total})"
        if extra and isinstance(extra[0], float):
            text += f" · loss {extra[0]:.4f}"
        self.bar.progress(frac, text=text)

    def done(self) -> None:
        self.bar.empty()


def pct(x: float | None, digits: int = 1) -> str:
    """A fraction in [0, 1] as a percentage string; '—' for None.  Rounded as the tables beside it are
    (:func:`ui.charts.fixed`: 0.5625 is 56.3%, not Python's 56.2%)."""
    from .charts import fixed

    return "—" if x is None else f"{fixed(100 * x, digits)}%"


def as_percent(x: float | None) -> float | None:
    """A fraction in [0, 1] as a number of percent (for tables and chart axes)."""
    return None if x is None else 100.0 * x


def points_delta(change: float, against: str = "zero-shot") -> dict:
    """``st.metric`` delta arguments for a change of accuracy (a fraction) in points: ``+1.2 points vs zero-shot``
    (``against`` names the reference), in grey and without an arrow when it rounds to 0.0 (Streamlit would draw
    "+0.0" as a green rise)."""
    text = f"{100 * change:+.1f}"
    flat = text in ("+0.0", "-0.0")
    return {"delta": f"{'±0.0' if flat else text} points vs {against}",
            **({"delta_color": "off", "delta_arrow": "off"} if flat else {})}


def pixels(image, size: int = 96):
    """An image array [H, W, 3] enlarged by whole pixels to about ``size`` wide (a browser would blur a 32×32 image
    it scales itself)."""
    k = max(1, round(size / image.shape[1]))
    return image.repeat(k, axis=0).repeat(k, axis=1)
