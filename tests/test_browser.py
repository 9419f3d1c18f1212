"""Real-browser smoke test: ``streamlit run app.py`` in a subprocess, driven by headless Chromium.

It follows the README quick start: no settings, so the app opens on the default demo model, and
nothing is downloaded. The demo model is built beforehand with 5 training steps (a few seconds)
into a temporary ``$LLDD_DEMO_DIR``; the first-use build itself is covered by the AppTest tests.

Skipped when Chromium or playwright is missing, unless ``LLDD_REQUIRE_BROWSER=1`` (then it fails).
Leaves a screenshot in ``test-output/browser_detached_jacobian.png``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.streamlit_server import free_port, running

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = ROOT / "test-output" / "browser_detached_jacobian.png"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
#: Streamlit's error box (``stAlertContent`` + kind) and its traceback box.
ERROR_SELECTOR = '[data-testid="stAlertContentError"], [data-testid="stException"]'
STARTUP_S = 60
COMPUTE_S = 60

pytestmark = pytest.mark.browser


def _require_browser() -> None:
    """Skip without a browser, or fail if the run demands one (CI sets LLDD_REQUIRE_BROWSER=1)."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(str(CHROMIUM))
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package")
    if missing:
        message = "browser test needs " + " and ".join(missing)
        if os.environ.get("LLDD_REQUIRE_BROWSER") == "1":
            pytest.fail(message + " (LLDD_REQUIRE_BROWSER=1)")
        pytest.skip(message)


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[str]:
    """A headless streamlit server on a free local port, on the default demo model; its URL. Always terminated."""
    _require_browser()
    from lldd_core.demo import DEFAULT_DEMO, build_demo

    build_demo(DEFAULT_DEMO, steps=5, target=tmp_path / "demo" / DEFAULT_DEMO)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k != "LLDD_DEFAULT_MODEL"},  # the built-in default
        "LLDD_DEMO_DIR": str(tmp_path / "demo"),
        "LLDD_CACHE_DIR": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [
        sys.executable, "-m", "streamlit", "run", "app.py",
        "--server.headless", "true",
        "--server.port", str(port),
        "--server.address", "127.0.0.1",
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
    ]  # fmt: skip
    with running(cmd, env, tmp_path / "streamlit.log", port, STARTUP_S):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def browser_page(scale: float = 1) -> Iterator[Any]:
    """A headless Chromium page (1400×1000 CSS pixels at device scale factor ``scale``); the browser is always closed."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=COMPUTE_S * 1000)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, device_scale_factor=scale)
            page.set_default_timeout(COMPUTE_S * 1000)
            yield page
        finally:
            browser.close()


@contextlib.contextmanager
def opened(server: str, path: str, heading: str, scale: float = 1) -> Iterator[Any]:
    """A headless Chromium page (device scale ``scale``) on ``server + path`` showing ``heading`` (no "Page not
    found" dialog, also on a fresh server's first request: pages/common/nav.py); the browser is always closed."""
    from playwright.sync_api import expect

    with browser_page(scale) as page:
        page.goto(server + path, wait_until="domcontentloaded")
        expect(page.get_by_role("heading", name=heading)).to_be_visible()
        expect(page.get_by_role("dialog")).to_have_count(0)
        yield page


def full_screenshot(page: Any, path: Path, max_height: int) -> None:
    """Streamlit scrolls inside its main container, so a full-page screenshot would stop at the viewport:
    grow the viewport to the content (at most ``max_height``), let plotly redraw, then shoot."""
    height = page.evaluate(
        "Math.max(...[...document.querySelectorAll('[data-testid=\"stMain\"], [data-testid=\"stMain\"] *')]"
        ".map(e => e.scrollHeight))"
    )
    page.set_viewport_size({"width": 1400, "height": min(int(height) + 40, max_height)})
    page.wait_for_timeout(800)  # plotly redraws on resize
    page.screenshot(path=str(path), full_page=True)


def assert_no_errors(page: Any) -> None:
    errors = page.locator(ERROR_SELECTOR)
    assert errors.count() == 0, errors.all_inner_texts()


def test_compute_in_a_real_browser(server: str) -> None:
    from playwright.sync_api import expect

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    with opened(server, "", "Detached Jacobian") as page:  # the first run imports torch and transformers
        compute = page.get_by_role("button", name="Compute")
        expect(compute).to_be_enabled()
        sidebar = page.locator('[data-testid="stSidebar"]')
        expect(sidebar.get_by_role("combobox", name="Model")).to_have_value("demo:gpt2-small (default) ✓")
        expect(sidebar).to_contain_text("nothing is downloaded")
        compute.click()

        metrics = page.locator('[data-testid="stMetric"]')
        expect(metrics).to_have_count(8)
        charts = page.locator('[data-testid="stPlotlyChart"] .main-svg')
        expect(charts.first).to_be_visible()
        expect(page.locator('[data-testid="stPlotlyChart"]')).to_have_count(3)
        # plotly draws the detached points and the spectrum lines into the SVG
        expect(page.locator('[data-testid="stPlotlyChart"] .scatterlayer .trace').first).to_be_attached()
        error_value = page.locator('[data-testid="stMetric"]', has_text="Detached reconstruction error")
        value = error_value.locator('[data-testid="stMetricValue"]').inner_text().strip()
        assert float(value) < 1e-4, value  # float32 default: rounding level
        from_cache = page.locator('[data-testid="stMetric"]', has_text="From cache")
        expect(from_cache.locator('[data-testid="stMetricValue"]')).to_have_text("no")
        # wait until the run is over (the top-right "Running" widget goes away), then look
        expect(page.locator('[data-testid="stStatusWidget"]')).to_have_count(0, timeout=15_000)
        full_screenshot(page, SCREENSHOT, 6000)
        assert_no_errors(page)

        with page.expect_download() as download:
            page.get_by_role("button", name="Download result (JSON)").click()
        saved = json.loads(Path(download.value.path()).read_text())
        assert saved["model"] == "demo:gpt2-small" and saved["layer"] == 4
        assert saved["reconstruction_error"] == pytest.approx(float(value), rel=0.1)
def test_layers_page_in_a_real_browser(server: str) -> None:
    """The Layers page by its URL: compute, three figures, the emergence table, no error."""
    from playwright.sync_api import expect

    shot = ROOT / "test-output" / "browser_layers.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    with opened(server, "/layers", "Layers") as page:
        page.get_by_role("button", name="Compute").click()
        expect(page.locator('[data-testid="stPlotlyChart"]')).to_have_count(3)
        expect(page.get_by_role("heading", name="Emergence table")).to_be_visible()
        expect(page.locator('[data-testid="stDataFrame"]').first).to_be_visible()
        expect(page.locator('[data-testid="stStatusWidget"]')).to_have_count(0, timeout=15_000)
        page.wait_for_timeout(800)
        page.screenshot(path=str(shot), full_page=True)
        assert_no_errors(page)


def test_gain_curves_page_in_a_real_browser(server: str) -> None:
    """The Gain curves page by its URL: small settings, compute, figures, table, one ablation, no error."""
    import re

    from playwright.sync_api import expect

    shot = ROOT / "test-output" / "browser_gain_curves.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    with opened(server, "/gains", "Gain curves") as page:
        expect(page.get_by_role("combobox", name="Concept dataset")).to_have_value(re.compile(r"^sentiment"))
        # small settings (Tab, not Enter: Enter would submit the form at the first field)
        for label, value in [("Concept", "6"), ("Operating", "4"), ("Evaluation", "3"), ("Reduced order d", "4"),
                             ("Evaluation prompts", "3")]:
            field = page.get_by_label(label, exact=True)
            field.fill(value)
            field.press("Tab")
        page.get_by_role("button", name="Compute gain curves").click()
        expect(page.locator('[data-testid="stMetric"]', has_text="Mean Spearman")).to_be_visible()
        expect(page.locator('[data-testid="stPlotlyChart"]')).to_have_count(4)  # mean curves, direction strength, one prompt, histogram
        expect(page.locator('[data-testid="stPlotlyChart"] .scatterlayer .trace').first).to_be_attached()
        expect(page.get_by_text("Split sizes: 6/4/3 per class")).to_be_visible()
        expect(page.locator('[data-testid="stDataFrame"]').first).to_be_visible()
        prompts = page.locator('[data-testid="stMetric"]', has_text="Evaluation prompts")
        expect(prompts.locator('[data-testid="stMetricValue"]')).to_have_text("3")

        page.get_by_role("tab", name="Complement").click()
        page.get_by_role("button", name="Run ablation over the complement").click()
        expect(page.locator('[data-testid="stPlotlyChart"]')).to_have_count(5)
        expect(page.locator('[data-testid="stDataFrame"]')).to_have_count(2)
        expect(page.locator('[data-testid="stStatusWidget"]')).to_have_count(0, timeout=15_000)
        full_screenshot(page, shot, 8000)
        assert_no_errors(page)


def test_attribution_graph_page_in_a_real_browser(server: str) -> None:
    """The Attribution graph page by its URL: compute, hover a neuron (its decodings), pin it by a click,
    intervene (prediction beside the full model's change), export the intervention and the graph; a screenshot."""
    from playwright.sync_api import expect

    shot = ROOT / "test-output" / "browser_attribution_graph.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    with opened(server, "/graph", "Attribution graph") as page:
        field = page.get_by_label("Neurons visited (most influential first)", exact=True)
        field.fill("128")
        field.press("Tab")
        page.get_by_role("button", name="Compute graph").click()
        expect(page.locator('[data-testid="stMetric"]', has_text="Replacement score")).to_be_visible()
        expect(page.locator('[data-testid="stPlotlyChart"] .scatterlayer .trace').first).to_be_attached()
        expect(page.get_by_text("Targets: ")).to_be_visible()
        expect(page.locator('[data-testid="stStatusWidget"]')).to_have_count(0, timeout=15_000)
        # marker traces in kind order (embedding, bias, MLP neuron, logit): the neurons' first point
        traces = page.locator('[data-testid="stPlotlyChart"] .scatterlayer .trace:has(path.point)')
        expect(traces).to_have_count(4)
        point = traces.nth(2).locator("path.point").first
        point.scroll_into_view_if_needed()
        box = point.bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x - 30, y)  # plotly's drag layer takes the pointer: hover and click by coordinates
        page.mouse.move(x, y, steps=5)
        expect(page.locator(".hoverlayer")).to_contain_text("MLP neuron")
        expect(page.locator(".hoverlayer")).to_contain_text("raises (output)")  # the neuron's decodings
        page.mouse.click(x, y)  # click to pin: the page reruns with the node pinned and the intervention measured
        expect(page.get_by_text("Intervene on the pinned neurons")).to_be_visible()
        expect(page.get_by_text("Decodings (output through the unembedding")).to_be_visible()
        expect(page.get_by_text("Intervention ready")).to_be_attached()
        expect(page.locator('[data-testid="stStatusWidget"]')).to_have_count(0, timeout=15_000)
        with page.expect_download() as download:
            page.get_by_role("button", name="Download the intervention (CSV)").click()
        rows = Path(download.value.path()).read_text().splitlines()
        header = rows[0].split(",")
        assert {"baseline logit", "predicted change", "frozen change", "measured change"} <= set(header)
        measured = [float(r.split(",")[header.index("measured change")]) for r in rows[1:]]
        assert len(measured) == 3 and all(math.isfinite(m) for m in measured)  # zeroed: the full model's change
        with page.expect_download() as download:
            page.get_by_role("button", name="Download the graph (lldd JSON)").click()
        saved = json.loads(Path(download.value.path()).read_text())
        assert saved["model"] == "demo:gpt2-small" and len(saved["top_path"]) == 3
        assert any("decodings" in n for n in saved["nodes"])
        full_screenshot(page, shot, 8000)
        assert_no_errors(page)


#: Every navigation entry the browser can show: Streamlit's page list (sidebar or top) and app.py's own links.
NAV_LINKS = ('[data-testid="stSidebarNav"] a, [data-testid="stSidebarNavLink"], [data-testid="stTopNav"] a, '
             '[data-testid="stPageLink-NavLink"]')
#: Installed before any page script: records every navigation entry (path | text) and dialog ever drawn.
WATCH_NAV = """
window.__seen = new Set();
new MutationObserver(() => {
  document.querySelectorAll('%s').forEach(a =>
    window.__seen.add(new URL(a.href, location.href).pathname + ' | ' + a.innerText.trim().split('\\n').pop()));  // icons are ligature text
  document.querySelectorAll('[role="dialog"]').forEach(d => window.__seen.add('dialog | ' + d.innerText.trim()));
}).observe(document, {subtree: true, childList: true, characterData: true, attributes: true});
""" % NAV_LINKS
#: URLs of files in pages/ that are not views, and of the old names: none may run anything but app.py.
NOT_VIEWS = ("/_datasets", "/_ui", "/common", "/ui", "/nav", "/link", "/sidebar", "/detached_jacobian", "/depth",
             "/app")


def test_first_seconds_after_start_show_only_views(server: str) -> None:
    """From the server's first request on (Streamlit's legacy pages/ mode, pages/common/nav.py) for 10 s: a deep
    link shows its view with no dialog, no navigation entry is anything but a view, and no helper file URL runs."""
    import time

    from playwright.sync_api import expect

    from tests.apptest import views

    start = time.monotonic()  # the server just answered its health check; no session has run yet
    allowed = {f"/{url}" for url in views()}
    titles = {title for _, title in views().values()}
    with browser_page() as page:
        page.add_init_script(WATCH_NAV)
        page.goto(server + "/jacobian", wait_until="domcontentloaded")  # the very first request of the process
        expect(page.get_by_role("heading", name="Detached Jacobian")).to_be_visible()
        expect(page.get_by_role("button", name="Compute")).to_be_enabled()
        probes = []
        for path in NOT_VIEWS:  # while the first run may still be in the legacy mode
            probe = page.context.browser.new_page()
            probe.add_init_script(WATCH_NAV)
            probe.goto(server + path, wait_until="domcontentloaded")
            probes.append((path, probe))
        for path, probe in probes:
            # not run: Streamlit says so and runs app.py's default view instead
            expect(probe.get_by_role("dialog")).to_contain_text("Page not found")
            expect(probe.get_by_role("heading", name="Detached Jacobian")).to_be_visible()
            expect(probe.locator('[data-testid="stPageLink-NavLink"]')).to_have_count(len(titles))
            assert probe.locator(ERROR_SELECTOR).count() == 0, (path, probe.locator(ERROR_SELECTOR).all_inner_texts())
        page.wait_for_timeout(max(0.0, 10.0 - (time.monotonic() - start)) * 1000)
        links = page.locator('[data-testid="stPageLink-NavLink"]')
        assert sorted(text.strip().split("\n")[-1] for text in links.all_inner_texts()) == sorted(titles)
        assert_no_errors(page)
        for where, seen in [("/jacobian", page.evaluate("[...window.__seen]"))] + [
                (path, probe.evaluate("[...window.__seen]")) for path, probe in probes]:
            entries = [s.split(" | ", 1) for s in seen if not s.startswith("dialog")]
            assert entries, where
            assert all(href in allowed and text in titles for href, text in entries), (where, entries)
            if where == "/jacobian":
                assert not [s for s in seen if s.startswith("dialog")], seen  # no "Page not found"


def test_a_permalink_reopens_the_same_result_from_the_cache(server: str) -> None:
    """Compute on the Jacobian view with other settings, take the address (pages/common/link.py), open it in a
    new browser: the form is filled the same and the same metrics appear from the cache, nothing clicked."""
    import re

    from playwright.sync_api import expect

    prompt = "The river flows to the"
    with opened(server, "/jacobian", "Detached Jacobian") as page:
        page.get_by_label("Prompt").fill(prompt)
        layer = page.get_by_label(re.compile(r"^Layer l: output x_l"))  # its label names the convention
        layer.fill("2")
        layer.press("Tab")
        page.get_by_text("Apply final norm").click()
        page.get_by_role("button", name="Compute").click()
        metrics = page.locator('[data-testid="stMetric"]')
        expect(metrics).to_have_count(8)
        expect(page.locator('[data-testid="stStatusWidget"]')).to_have_count(0, timeout=15_000)
        values = {m.locator('[data-testid="stMetricLabel"]').inner_text(): m.locator(
            '[data-testid="stMetricValue"]').inner_text() for m in metrics.all()}
        assert values.pop("From cache") == "no"
        # the address follows the widgets at the end of the run (wait for it: the run may still be finishing)
        expect(page).to_have_url(re.compile(r"^(?=.*[?&]dj_final_norm=0)(?=.*[?&]dj_layer=2)(?=.*dj_prompt=The\+river)"))
        link = page.url
        assert "sidebar_model_choice=" in link
        shown_link = page.locator('[data-testid="stSidebar"] [data-testid="stCode"]').inner_text()
        assert shown_link.strip() == link  # the copy-link box holds the address itself
    with opened(server, link[len(server):], "Detached Jacobian") as fresh:
        expect(fresh.get_by_label("Prompt")).to_have_value(prompt)
        expect(fresh.get_by_label(re.compile(r"^Layer l: output x_l"))).to_have_value("2")
        metrics = fresh.locator('[data-testid="stMetric"]')
        expect(metrics).to_have_count(8)  # without a click
        again = {m.locator('[data-testid="stMetricLabel"]').inner_text(): m.locator(
            '[data-testid="stMetricValue"]').inner_text() for m in metrics.all()}
        assert again.pop("From cache") == "yes"
        assert again == values
        expect(fresh.locator('[data-testid="stPlotlyChart"]')).to_have_count(3)
        assert_no_errors(fresh)
        expect(fresh).to_have_url(link)  # the reopened view writes the same link


#: with the other views' screenshots (tests/test_browser_screens.py), at the same export scale
LAB_SCREENSHOT = ROOT / "test-output" / "screens" / "lab.png"


def test_steering_lab_page_in_a_real_browser(server: str) -> None:
    """The Steering lab opened by a link with small settings (pages/common/link.py fills the form): run the sweep,
    see the Pareto plot and the table, send the first method's setting to the Steering page; a screenshot."""
    from playwright.sync_api import expect

    query = "lb_concept=6&lb_operating=4&lb_evaluation=3&lb_n_prompts=2&lb_max_new=4&lb_methods=additive&lb_target=0.01"
    with opened(server, f"/lab?{query}&lb_budget=1000000&lb_strengths_additive=0,8,64", "Steering lab", scale=2) as page:
        run = page.get_by_role("button", name="Run sweep")
        expect(run).to_be_enabled()
        expect(page.get_by_role("textbox", name="additive: α (strength)")).to_have_value("0,8,64")
        run.click()
        expect(page.locator('[data-testid="stPlotlyChart"] .main-svg').first).to_be_visible()
        expect(page.locator('[data-testid="stMetric"]', has_text="Cells new / cached")).to_contain_text("10 / 0")  # unsteered + 3 layers × 3
        expect(page.locator('[data-testid="stStatusWidget"]')).to_have_count(0, timeout=15_000)
        expect(page.locator('[data-testid="stDataFrame"]')).to_have_count(1)
        LAB_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        full_screenshot(page, LAB_SCREENSHOT, 5000)
        assert_no_errors(page)
        send = page.get_by_role("button", name="Open in Steering")
        if send.count():  # the 5-step demo model may reach the target with none of the three strengths
            send.first.click()
            expect(page.get_by_role("heading", name="Steering", exact=True)).to_be_visible()
            assert_no_errors(page)
