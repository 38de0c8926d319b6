"""Real-browser smoke test: ``streamlit run app.py`` on a loopback port, driven by headless Chromium.

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and the ``playwright`` Python package
(``pip install playwright``; Playwright's own browser download is not used: the test points it at
``/usr/bin/chromium``).  Without them the test is skipped with the reason.  Run it alone with::

    python -m pytest -m browser tests/test_browser.py

It changes a coefficient and checks that a shown number changes, clicks a ξ heatmap cell and checks that it sets
the two coefficients, turns on "each task alone" and checks its dashed curves and table, draws the stored pair
heatmap, and takes a screenshot of every view (and of the task-addition sweep with the dashed curves,
``1b-interference.png``, and of the pair heatmap, ``1c-pairs.png``).  Screenshots go to ``$ARITH_SCREENSHOTS``
(default ``assets/screenshots/tmp/``, ignored by git); ``ARITH_SCREENSHOTS=assets/screenshots``
refreshes the ones the README shows.  The app opens the tiny test bundle unless ``$ARITH_BROWSER_BUNDLE`` names another one (e.g.
``precomputed/default`` for the README's screenshots).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, parse_qsl, urlsplit

import pytest

from bench.app_start import CHROMIUM, CHROMIUM_ARGS, browser_missing, free_port

from conftest import ROOT

pytestmark = pytest.mark.browser

VIEWS = [  # (url path, title, screenshot name), in the navigation's order
    ("", "Task arithmetic", "1-arithmetic"),
    ("examples", "Examples", "1d-examples"),
    ("disentanglement", "Weight disentanglement", "2-disentanglement"),
    ("kernel", "Kernel behaviour", "3-kernel"),
    ("vectors", "Task vectors", "4-vectors"),
    ("upload", "Upload task vectors", "5-upload"),
    ("train", "Train a task vector", "6-train"),
    ("export", "Export and share", "7-export"),
]


@pytest.fixture(scope="module")
def server(bundle_dir, tmp_path_factory):
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    port = free_port()
    bundle = os.environ.get("ARITH_BROWSER_BUNDLE") or str(bundle_dir)
    env = {**os.environ, "ARITH_BUNDLE": bundle, "ARITH_DEVICE": "cpu",
           "ARITH_PRECOMPUTED_DIR": str(tmp_path_factory.mktemp("no-precomputed"))}
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                                 "--server.address", "127.0.0.1", "--server.headless", "true",
                                 "--browser.gatherUsageStats", "false"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="arith-chromium-")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                   headless=True, viewport={"width": 1400, "height": 1800})
        try:
            yield ctx.new_page()
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)


def _settle(page, title: str) -> None:
    """Wait for a view: its title, no script run in progress, charts drawn."""
    page.get_by_role("heading", name=title, level=1).wait_for(timeout=90_000)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=90_000)
    page.wait_for_timeout(1500)


def _absolute(page) -> str:
    return page.locator('[data-testid="stMetric"]').filter(has_text="Absolute accuracy").locator(
        '[data-testid="stMetricValue"]').first.inner_text()


def _slider_values(page) -> list[str]:
    return page.locator('[data-testid="stSidebar"] [data-testid="stSliderThumbValue"]').all_inner_texts()


def test_change_a_coefficient_see_a_number_change_and_screenshot_every_view(server, page):
    shots = Path(os.environ.get("ARITH_SCREENSHOTS") or ROOT / "assets" / "screenshots" / "tmp")
    shots.mkdir(parents=True, exist_ok=True)
    page.goto(server + "/")
    _settle(page, "Task arithmetic")
    assert not page.locator('[data-testid="stException"]').count()
    before = _absolute(page)

    thumb = page.locator('[data-testid="stSidebar"] [data-testid="stSlider"] input[type="range"]').first
    thumb.focus()
    thumb.press("Home")  # the first task's λ to −2: forget that task
    page.wait_for_function(
        "(v) => { const m = [...document.querySelectorAll('[data-testid=\"stMetric\"]')]"
        ".find(e => e.innerText.includes('Absolute accuracy'));"
        " return m && !m.innerText.includes(v) }", arg=before, timeout=60_000)
    _settle(page, "Task arithmetic")
    after = _absolute(page)
    assert after != before
    assert _slider_values(page)[0] == "-2.00"
    assert "=-2" in page.url  # the coefficient is mirrored in the link
    thumb.press("End")  # back to a readable default for the screenshots
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=\"stSidebar\"] "
                           "[data-testid=\"stSliderThumbValue\"]')][0].innerText === '2.00'", timeout=60_000)
    for _ in range(33):  # 2.00 -> 0.35: the default bundle's opening view (README tour, step 1)
        thumb.press("ArrowLeft")
    _settle(page, "Task arithmetic")

    for i, (_, title, name) in enumerate(VIEWS):  # through the sidebar's navigation: the same session
        page.locator('[data-testid="stSidebarNavLink"]').nth(i).click()
        _settle(page, title)
        assert not page.locator('[data-testid="stException"]').count(), title
        page.screenshot(path=str(shots / f"{name}.png"))
    assert len(list(shots.glob("*.png"))) >= len(VIEWS)


def _with_alone(server, page) -> Path:
    """Open the task-arithmetic view with "each task alone" on; returns the screenshot folder."""
    shots = Path(os.environ.get("ARITH_SCREENSHOTS") or ROOT / "assets" / "screenshots" / "tmp")
    shots.mkdir(parents=True, exist_ok=True)
    page.goto(server + "/")
    _settle(page, "Task arithmetic")
    page.get_by_text("Each task alone at α (dashed)").click()
    page.get_by_text("At each mode's validation-chosen α").wait_for(timeout=300_000)  # stored, or computed on demand
    _settle(page, "Task arithmetic")
    page.locator('[data-testid="stRadio"]').get_by_text("absolute", exact=True).click()  # the tour's step 4 metric
    _settle(page, "Task arithmetic")
    return shots


def test_each_task_alone_draws_dashed_curves_and_the_interference_table(server, page):
    shots = _with_alone(server, page)
    assert not page.locator('[data-testid="stException"]').count()
    chart = page.locator('[data-testid="stPlotlyChart"]').filter(has_text="each task alone").first
    assert chart.count() and "each task alone" in chart.inner_text()
    cost = page.locator('[data-testid="stPlotlyChart"]').filter(has_text="alone − merged")  # the same gap along α
    assert cost.count() == 1 and page.get_by_text("What the other vectors cost, along α").count() == 1
    # from the sweep's heading down to the per-task expander (the main column scrolls, not the window)
    heading = page.get_by_role("heading", name="Accuracy vs the shared α (task addition)")
    heading.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.mouse.move(5, 5)  # off the chart: no plotly toolbar over the legend
    page.wait_for_timeout(500)
    top = heading.bounding_box()["y"]
    end = page.locator('[data-testid="stExpander"]').last.bounding_box()
    assert end["y"] > top
    page.screenshot(path=str(shots / "1b-interference.png"),
                    clip={"x": 300, "y": max(0, top - 10), "width": page.viewport_size["width"] - 300,
                          "height": end["y"] + end["height"] - top + 30})


def test_the_pair_heatmap_shows_which_vector_costs_which_task(server, page):
    shots = _with_alone(server, page)
    expander = page.locator('[data-testid="stExpander"]').filter(has_text="Which vector costs which task")
    expander.get_by_text("Which vector costs which task").click()
    select = expander.locator('[data-testid="stSelectbox"] input')
    assert select.input_value() == "Attention-only"  # the mode selector opens on the sidebar's mode
    page.get_by_text("If their one-at-a-time costs added up").wait_for(timeout=60_000)
    _settle(page, "Task arithmetic")
    assert not expander.get_by_text("Compute every pair").count()  # the bundle's stored matrix: drawn at once
    assert not page.locator('[data-testid="stException"]').count()
    chart = expander.locator('[data-testid="stPlotlyChart"]')
    assert chart.count() == 1 and "task hurt" in chart.inner_text()
    expander.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.mouse.move(5, 5)  # off the chart: no plotly toolbar
    page.wait_for_timeout(500)
    box = expander.bounding_box()
    page.screenshot(path=str(shots / "1c-pairs.png"),
                    clip={"x": box["x"], "y": max(0, box["y"]), "width": box["width"], "height": box["height"]})


def test_clicking_a_xi_cell_opens_that_model(server, page):
    page.goto(server + "/disentanglement")
    _settle(page, "Weight disentanglement")
    cells = page.locator(".js-plotly-plot .nsewdrag").first
    cells.wait_for(timeout=60_000)
    n = int(page.locator('[data-testid="stMain"] [data-testid="stSliderThumbValue"]').first.inner_text())  # grid
    box = cells.bounding_box()
    # the bottom-left cell's centre: α1 (rows, upwards) = α2 (columns) = −2
    page.mouse.click(box["x"] + box["width"] * 0.5 / n, box["y"] + box["height"] * (1 - 0.5 / n))
    # the pair's two sliders move to −2, and they are the only tasks selected: θ0 − 2 τ1 − 2 τ2, the cell's model
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=\"stSidebar\"] "
                           "[data-testid=\"stSliderThumbValue\"]')].filter(e => e.innerText === '-2.00').length === 2",
                           timeout=60_000)
    _settle(page, "Weight disentanglement")
    assert _slider_values(page).count("-2.00") == 2
    page.wait_for_function("() => new URL(location.href).searchParams.getAll('tasks').length === 2", timeout=60_000)
    assert {k: v for k, v in parse_qsl(urlsplit(page.url).query) if k.startswith("c.")} == {  # mirrored state
        f"c.{t}": "-2" for t in parse_qs(urlsplit(page.url).query)["tasks"]}


def test_training_can_be_cancelled_and_merged_weights_download(server, page, tmp_path):
    page.goto(server + "/train")
    _settle(page, "Train a task vector")
    selected = page.locator('[data-testid="stSidebar"] [data-testid="stMultiSelect"] [data-tag]')  # one per task
    tags = selected.count()
    assert tags > 0  # the bundle's tasks, selected (a selector that matched nothing would pass below on 0 == 0)
    # another mode's form starts from that mode's recipe in the browser too (a keyed input ignores a new default)
    lr = page.get_by_label("Learning rate")
    lr.fill("0.0123")
    lr.press("Enter")
    _settle(page, "Train a task vector")
    page.locator('[data-testid="stMain"] [data-testid="stSelectbox"]').filter(has_text="Mode").click()
    page.get_by_role("option", name="Full fine-tuning").click()
    _settle(page, "Train a task vector")
    shown = page.get_by_label("Learning rate").input_value()
    recipe = page.get_by_text("The bundle's recipe for full:").inner_text()
    assert float(shown) != 0.0123 and f"lr {float(shown):g}," in recipe, (shown, recipe)
    steps = page.get_by_label("Steps")
    steps.fill("100000")
    steps.press("Enter")
    page.get_by_role("button", name="Train", exact=True).click()
    page.locator('[data-testid="stProgress"]').first.wait_for(timeout=60_000)
    page.get_by_role("button", name="Cancel training").click()
    page.get_by_text("Training cancelled").first.wait_for(timeout=60_000)
    _settle(page, "Train a task vector")
    assert selected.count() == tags  # a cancelled run adds nothing to the sidebar's tasks

    page.locator('[data-testid="stSidebarNavLink"]').filter(has_text="Export and share").click()
    _settle(page, "Export and share")
    with page.expect_download(timeout=120_000) as info:
        page.get_by_role("button", name="Download the merged weights").click()
    path = tmp_path / "merged.safetensors"
    info.value.save_as(path)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        meta, keys = fh.metadata(), list(fh.keys())
    assert meta["arith.kind"] == "merged_model" and meta["arith.mode"] == "attn"
    assert any(k.endswith("attn.in_proj_weight") for k in keys)
