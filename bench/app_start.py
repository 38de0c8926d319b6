"""Benchmark 4, the app: ``streamlit run app.py`` to the first full render of the first view, and memory per extra
session.

Cold start: a headless Chromium is started first (not counted); then the clock starts with ``streamlit run
app.py`` (a fresh process: imports, the bundle's index with every sha256 checked, the first view) and stops when the
browser shows the Task-arithmetic view complete: its title, its three charts drawn, no script running.  Repeated
``--runs`` times; with several ``--load-delay`` values (the app's ``ARITH_LOAD_DELAY``) the variants are interleaved.
``--floor`` interleaves a minimal Streamlit page (a title, a metric, three small plotly charts and a table, no engine;
served with the app's ``.streamlit/config.toml``) timed the same way: what Streamlit and a fresh headless Chromium
take on the machine before the app does anything.
Then, on the last server: a session with coefficients of its own opened at once (it needs the tensors, which may
still be loading), a new session of the default view, and ``--sessions`` more sessions with their own coefficients,
the server's resident memory read after each: the growth per session, against the size of the bundle's tensors,
shows that the bundle is held once per process.

Needs Debian's ``chromium`` and the ``playwright`` package (as ``tests/test_browser.py``); without them, or with
``--no-browser``, it times the first complete run of the app's script under ``streamlit.testing`` in a fresh
process instead (no browser rendering, no memory per session).

    python -m bench.app_start --bundle precomputed/default --json bench/results/app_start.json
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench._common import ROOT, emit, machine, parser, rss_mb, set_threads, table

# $ARITH_PRECOMPUTED_DIR for the timed app: a folder that does not exist, so it opens --bundle and nothing else
# (a fresh temporary folder per run used to be left behind in /tmp)
NO_BUNDLES = str(Path(tempfile.gettempdir()) / "arith-bench-no-bundles")

CHROMIUM = os.environ.get("ARITH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TARGET_S = 6.0
TITLE = """() => [...document.querySelectorAll('h1')].some(e => e.innerText.includes('Task arithmetic'))"""
RENDERED = """() => {
  const h = [...document.querySelectorAll('h1')].some(e => e.innerText.includes('Task arithmetic'));
  const charts = [...document.querySelectorAll('[data-testid="stPlotlyChart"]')].filter(e => e.querySelector('.main-svg'));
  const metric = [...document.querySelectorAll('[data-testid="stMetric"]')].some(e => e.innerText.includes('Absolute accuracy'));
  return h && metric && charts.length >= 3 && !document.querySelector('[data-testid="stStatusWidget"]');
}"""


def browser_missing() -> str | None:
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FLOOR_PAGE = """import pandas as pd
import plotly.graph_objects as go
import streamlit as st

st.set_page_config(layout="wide")
st.title("Task arithmetic")
st.metric("Absolute accuracy", "80.4%")
for i in range(3):
    st.plotly_chart(go.Figure(go.Bar(x=list("abcdefgh"), y=list(range(8)))), key=f"chart{i}")
st.dataframe(pd.DataFrame({"task": ["a", "b"], "accuracy": [0.8, 0.9]}))
"""


def start_server(bundle: str, port: int, log: Path, threads: int | None, load_delay: float | None = None,
                 script: Path | None = None) -> subprocess.Popen:
    """``streamlit run app.py`` (or ``script``, run in its own folder) on ``port``, output to ``log``."""
    env = {**os.environ, "ARITH_BUNDLE": bundle, "ARITH_DEVICE": "cpu",
           "ARITH_PRECOMPUTED_DIR": NO_BUNDLES}
    if load_delay is not None:
        env["ARITH_LOAD_DELAY"] = str(load_delay)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    out = open(log, "wb")
    return subprocess.Popen([sys.executable, "-m", "streamlit", "run", script.name if script else "app.py",
                             "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
                             "--browser.gatherUsageStats", "false"], cwd=script.parent if script else ROOT, env=env,
                            stdout=out, stderr=subprocess.STDOUT)


def wait_healthy(url: str, proc: subprocess.Popen, deadline_s: float = 120) -> None:
    end = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError("streamlit did not start")
        time.sleep(0.05)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def bundle_tensor_mb(bundle_dir: str) -> float:
    from arith.bundle import load_bundle

    b = load_bundle(bundle_dir)
    n = sum(t.numel() * t.element_size() for t in b.base.params.values())
    n += sum(s.images.numel() + 8 * s.labels.numel() for d in b.data.values() for s in d.values())
    n += sum(t.numel() * 4 for vs in b.vectors.values() for tv in vs.values() for t in tv.tensors.values())
    n += sum(t.numel() * t.element_size() for c in b.linear_cache.values() for t in c.values())
    return n / 2**20


def open_session(browser, url: str, query: str = "") -> float:
    """Seconds for a new browser session of ``url`` + ``query`` to show the first view complete."""
    t = time.perf_counter()
    page = browser.new_context(viewport={"width": 1400, "height": 1800}).new_page()
    page.goto(f"{url}/{query}")
    page.wait_for_function(RENDERED, timeout=300_000, polling=50)
    return time.perf_counter() - t


def own_coefficients(rng: random.Random, tasks: list[str]) -> str:
    """A link to the attention-only view with random coefficients of its own (in no precomputed result)."""
    return "?mode=attn&" + "&".join(f"c.{t}={rng.choice([-1.5, -0.5, 0.25, 0.6, 1.0])}" for t in tasks)


def with_browser(args, bundle_tasks: list[str]) -> dict:
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="arith-bench-chromium-")
    floor = Path(profile) / "floor" / "floor.py"
    (floor.parent / ".streamlit").mkdir(parents=True)
    floor.write_text(FLOOR_PAGE)
    # the app's server settings (no file watcher, fast reruns, theme, toolbar): like for like
    shutil.copy(ROOT / ".streamlit" / "config.toml", floor.parent / ".streamlit" / "config.toml")
    runs, sessions, floor_runs = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            # variants interleaved; the floor page first in each round, so that the app's last run comes last
            plan = [(run, delay, page_) for run in range(args.runs)
                    for delay, page_ in ([(None, floor)] if args.floor else []) + [(d, None) for d in args.load_delay]]
            for i, (run, delay, script) in enumerate(plan):
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                ctx = browser.new_context(viewport={"width": 1400, "height": 1800})
                page = ctx.new_page()
                t0 = time.perf_counter()
                proc = start_server(args.bundle, port, Path(profile) / f"server-{i}.log", args.threads, delay, script)
                try:
                    wait_healthy(url, proc)
                    if script is not None:  # the floor page: no title check of the app's, the same full render
                        page.goto(url + "/")
                        page.wait_for_function(RENDERED, timeout=300_000, polling=50)
                        floor_runs.append(time.perf_counter() - t0)
                        continue
                    t_health = time.perf_counter() - t0
                    page.goto(url + "/")  # returns once the frontend's page has loaded
                    t_loaded = time.perf_counter() - t0
                    page.wait_for_function(TITLE, timeout=300_000, polling=50)
                    t_title = time.perf_counter() - t0
                    page.wait_for_function(RENDERED, timeout=300_000, polling=50)
                    t_render = time.perf_counter() - t0
                    rss_first = rss_mb(proc.pid)
                    r = {"run": run + 1, "load_delay": delay, "server_ready_s": t_health, "frontend_loaded_s": t_loaded,
                         "title_shown_s": t_title,
                         "first_render_s": t_render, "rss_after_first_mb": rss_first}
                    if i == len(plan) - 1:  # on the last server: computed views and memory per extra session
                        rng = random.Random(0)
                        sessions.append({"sessions": 1, "rss_mb": rss_first})
                        # at once: its coefficients are in no precomputed result, so its run needs the tensors,
                        # which may still be loading (or not yet started: ARITH_LOAD_DELAY)
                        r["computing_session_right_after_s"] = open_session(browser, url, own_coefficients(rng, bundle_tasks))
                        sessions.append({"sessions": 2, "rss_mb": rss_mb(proc.pid)})
                        r["warm_session_render_s"] = open_session(browser, url)
                        sessions.append({"sessions": 3, "rss_mb": rss_mb(proc.pid)})
                        for k in range(args.sessions):
                            open_session(browser, url, own_coefficients(rng, bundle_tasks))
                            sessions.append({"sessions": k + 4, "rss_mb": rss_mb(proc.pid)})
                    runs.append(r)
                    print(r, file=sys.stderr, flush=True)
                finally:
                    stop(proc)
                    ctx.close()
        finally:
            browser.close()
            shutil.rmtree(profile, ignore_errors=True)
    return {"runs": runs, "sessions": sessions, **({"floor_runs": floor_runs} if args.floor else {})}


def without_browser(args) -> dict:
    """The first complete script run in a fresh process (imports + bundle load + the first view), via AppTest."""
    code = ("import time; t0 = time.perf_counter()\n"
            "from streamlit.testing.v1 import AppTest\n"
            "at = AppTest.from_file('app.py', default_timeout=300).run()\n"
            "at.run()\n"  # the run after the legacy-pages switch: the first view as a browser gets it
            "assert not at.exception, at.exception\n"
            "print(time.perf_counter() - t0)\n")
    runs = []
    for run in range(args.runs):
        env = {**os.environ, "ARITH_BUNDLE": args.bundle, "ARITH_DEVICE": "cpu",
               "ARITH_PRECOMPUTED_DIR": NO_BUNDLES}
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        runs.append({"run": run + 1, "first_render_s": time.perf_counter() - t0,
                     "script_s": float(out.stdout.strip().splitlines()[-1])})
    return {"runs": runs, "sessions": []}


def main(argv=None) -> dict:
    p = parser("app cold start to the first full render, and memory per extra session")
    p.add_argument("--runs", type=int, default=3, help="cold starts (the median is reported)")
    p.add_argument("--sessions", type=int, default=8, help="extra sessions for the memory measurement")
    p.add_argument("--no-browser", action="store_true", help="time the app's first script run without a browser")
    p.add_argument("--load-delay", type=float, nargs="+", default=[None], metavar="S",
                   help="ARITH_LOAD_DELAY for the server (default: the app's own); several values are run interleaved "
                        "and each gets its median (the first is the one reported against the target)")
    p.add_argument("--floor", action="store_true",
                   help="also time a minimal Streamlit page (title, metric, three plotly charts, a table), interleaved: "
                        "the part of the cold start that is Streamlit and the browser on this machine")
    args = p.parse_args(argv)
    threads = set_threads(args.threads)
    args.bundle = str(Path(args.bundle).resolve())

    from arith.bundle import load_bundle

    tasks = load_bundle(args.bundle).task_names
    missing = None if args.no_browser else browser_missing()
    if missing:
        print(f"no browser ({missing}): timing the first script run instead", file=sys.stderr)
    if args.floor and (args.no_browser or missing):
        print("--floor needs the browser: the minimal page is not timed", file=sys.stderr)
    res = without_browser(args) if (args.no_browser or missing) else with_browser(args, tasks)
    res.update(machine=machine(), bundle=args.bundle, threads=threads, browser=not (args.no_browser or missing),
               bundle_tensors_mb=bundle_tensor_mb(args.bundle))
    delays = list(dict.fromkeys(r.get("load_delay") for r in res["runs"]))
    by_delay = {d: [r["first_render_s"] for r in res["runs"] if r.get("load_delay") == d] for d in delays}
    cold = by_delay[delays[0]]
    res["cold_start_median_s"] = statistics.median(cold)
    if len(delays) > 1:
        res["cold_start_median_s_by_load_delay"] = {str(d): statistics.median(v) for d, v in by_delay.items()}
    rows = [{"measure": "cold start → first full render (median of "
                        f"{len(cold)})" + (f", ARITH_LOAD_DELAY={delays[0]:g}" if delays[0] is not None else ""),
             "value": res["cold_start_median_s"], "unit": "s", "target": TARGET_S,
             "met": "yes" if res["cold_start_median_s"] <= TARGET_S else "no"}]
    rows += [{"measure": f"  the same, ARITH_LOAD_DELAY={d:g} (interleaved, median of {len(v)})",
              "value": statistics.median(v), "unit": "s"} for d, v in list(by_delay.items())[1:]]
    if res.get("floor_runs"):
        res["floor_median_s"] = statistics.median(res["floor_runs"])
        rows.append({"measure": f"  a minimal Streamlit page, the same way (interleaved, median of {len(res['floor_runs'])})",
                     "value": res["floor_median_s"], "unit": "s", "met": "Streamlit + browser floor: "
                     + ", ".join(f"{v:.2f}" for v in res["floor_runs"])})
    rows += [{"measure": f"  run {r['run']}: rendered"
                         + (f" (delay {r['load_delay']:g})" if len(delays) > 1 and r.get("load_delay") is not None else ""),
              "value": r["first_render_s"], "unit": "s", "target": None,
              "met": (f"server ready {r['server_ready_s']:.2f}, page loaded {r['frontend_loaded_s']:.2f}, "
                      f"title {r['title_shown_s']:.2f}") if "server_ready_s" in r else f"script {r['script_s']:.2f}"}
             for r in res["runs"]]
    warm = [r["warm_session_render_s"] for r in res["runs"] if "warm_session_render_s" in r]
    after = [r["computing_session_right_after_s"] for r in res["runs"] if "computing_session_right_after_s" in r]
    if after:
        rows.append({"measure": "a session with its own coefficients, opened right after → rendered", "value": after[0],
                     "unit": "s", "met": "computes: waits for the tensors if they are still loading"})
    if warm:
        rows.append({"measure": "a new session on the warm server → rendered", "value": warm[0], "unit": "s"})
    s = res["sessions"]
    if len(s) >= 4:
        # The first session with coefficients of its own is the first to compute (the opening view is precomputed
        # and needs no tensors): torch, the bundle's tensors and the shared evaluation tensors arrive with it, once.
        # Per extra session: the least-squares slope of RSS over the sessions after it (single readings are noisy).
        res["rss_first_computing_session_mb"] = s[1]["rss_mb"] - s[0]["rss_mb"]
        rows.append({"measure": "one-time: torch, the tensors, evaluation tensors (first computing session)",
                     "value": res["rss_first_computing_session_mb"], "unit": "MB"})
        s = s[1:]
        xs, ys = [r["sessions"] for r in s], [r["rss_mb"] for r in s]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        per = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        res["rss_per_extra_session_mb"] = per
        rows.append({"measure": f"server RSS with {s[0]['sessions']} sessions", "value": s[0]["rss_mb"], "unit": "MB"})
        rows.append({"measure": f"server RSS with {s[-1]['sessions']} sessions", "value": s[-1]["rss_mb"], "unit": "MB"})
        rows.append({"measure": "memory per extra session (slope)", "value": per, "unit": "MB",
                     "met": f"bundle tensors {res['bundle_tensors_mb']:.1f} MB: held once" if per < 0.5 * res["bundle_tensors_mb"]
                     else f"bundle tensors {res['bundle_tensors_mb']:.1f} MB"})
    head = f"app: {args.bundle}, {threads} torch thread(s) in the bench process, browser: {res['browser']}"
    emit(args, res, head + "\n" + table(rows, ["measure", "value", "unit", "target", "met"], floatfmt="{:.2f}"))
    return res


if __name__ == "__main__":
    main()
