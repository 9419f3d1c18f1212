"""Screenshots of every view after its main action, at the export scale (device scale factor 2), in a real browser.

One server (tests/test_browser.py's ``server`` fixture: the 5-step default demo model, nothing downloaded), the
seven views in sequence, each with small settings so the whole walk stays near two minutes on two cores. Each
shot lands in ``test-output/screens/<view>.png`` (``$LLDD_SCREENS_DIR`` overrides the folder, e.g. for "before"
shots of another checkout). Besides the pictures it checks no error box, one export control per figure and the
report bundle in the sidebar.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.test_browser import ROOT, assert_no_errors, browser_page, full_screenshot, server  # noqa: F401  (fixture)

#: Device scale factor of the shots: the figures' default export scale (lldd_core/plots/export.py).
SCALE = 2
SHOTS = Path(os.environ.get("LLDD_SCREENS_DIR") or ROOT / "test-output" / "screens")
IDLE = '[data-testid="stStatusWidget"]'


def fill(page: Any, values: dict[str, str]) -> None:
    """Type ``values`` into the number inputs labelled so (Tab, not Enter: Enter would submit a form)."""
    for label, value in values.items():
        field = page.get_by_label(label, exact=True)
        field.fill(value)
        field.press("Tab")


def settle(page: Any) -> None:
    """Until the run is over (Streamlit's "Running" widget gone)."""
    from playwright.sync_api import expect

    expect(page.locator(IDLE)).to_have_count(0, timeout=60_000)
    page.wait_for_timeout(500)


def jacobian(page: Any) -> None:
    from playwright.sync_api import expect

    page.get_by_role("button", name="Compute", exact=True).click()
    expect(page.locator('[data-testid="stMetric"]')).to_have_count(8)
    settle(page)
    page.get_by_role("button", name="Compute spectra").click()
    expect(page.get_by_text("Top-8 singular pairs")).to_be_visible()


def layers(page: Any) -> None:
    from playwright.sync_api import expect

    page.get_by_role("button", name="Compute", exact=True).click()
    expect(page.get_by_role("heading", name="Emergence table")).to_be_visible()


def graph(page: Any) -> None:
    from playwright.sync_api import expect

    fill(page, {"Neurons visited (most influential first)": "64"})
    page.get_by_role("button", name="Compute graph").click()
    expect(page.locator('[data-testid="stMetric"]', has_text="Replacement score")).to_be_visible()


SMALL = {"Concept": "6", "Operating": "4", "Evaluation": "3", "Reduced order d": "4", "Evaluation prompts": "3"}


def gains(page: Any) -> None:
    from playwright.sync_api import expect

    fill(page, SMALL)
    page.get_by_role("button", name="Compute gain curves").click()
    expect(page.locator('[data-testid="stMetric"]', has_text="Mean Spearman")).to_be_visible()


def scaling(page: Any) -> None:
    from playwright.sync_api import expect

    page.get_by_role("combobox", name="Model family").click()
    page.get_by_role("option").last.click()  # custom list
    field = page.get_by_role("textbox", name="Models (comma-separated, smallest first)")
    field.fill("demo:gpt2-small")
    field.press("Enter")
    settle(page)
    fill(page, {"Reduced order d": "4", "Evaluation prompts": "3", "Concept examples per class": "6",
                "Operating examples per class": "4", "Evaluation examples per class": "3"})
    settle(page)
    missing = page.get_by_role("button", name=re.compile(r"^Compute missing"))
    if missing.count():  # the Gain curves view may have computed this very cell already
        # the other test worker can keep both cores busy: the rerun that enables the button took over a minute once
        settle(page)
        missing.click(timeout=180_000)
    expect(page.get_by_role("button", name="All cells cached")).to_be_disabled()
    expect(page.locator('[data-testid="stPlotlyChart"]')).to_have_count(1)


def control(page: Any) -> None:
    from playwright.sync_api import expect

    fill(page, SMALL)
    page.get_by_role("button", name="Compute schedules").click()
    expect(page.locator('[data-testid="stMetric"]', has_text="Reached")).to_be_visible()


def steering(page: Any) -> None:
    from playwright.sync_api import expect

    page.get_by_text("Concept splits").click()
    fill(page, {"Concept": "6", "Operating": "4", "Evaluation": "3"})
    settle(page)
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_text("Mean readout: unsteered")).to_be_visible()


#: (URL path, heading, main action) per view, in the order of app.py's navigation.
VIEWS: tuple[tuple[str, str, Callable[[Any], None]], ...] = (
    ("/jacobian", "Detached Jacobian", jacobian), ("/layers", "Layers", layers), ("/graph", "Attribution graph", graph),
    ("/gains", "Gain curves", gains), ("/scaling", "Scaling", scaling), ("/control", "Control", control),
    ("/steering", "Steering", steering),
)

def test_every_view_after_its_main_action(server: str) -> None:  # noqa: F811  (the fixture)
    from playwright.sync_api import expect

    SHOTS.mkdir(parents=True, exist_ok=True)
    with browser_page(scale=SCALE) as page:
        only = os.environ.get("LLDD_SCREENS_ONLY")  # e.g. "/scaling" while working on one view
        for path, heading, action in VIEWS:
            if only and path not in only.split(","):
                continue
            page.set_viewport_size({"width": 1400, "height": 1000})
            page.goto(server + path, wait_until="domcontentloaded")
            expect(page.get_by_role("heading", name=heading)).to_be_visible()
            settle(page)
            try:
                action(page)
                settle(page)
            except Exception:
                page.screenshot(path=str(SHOTS / f"{path.strip('/')}.failed.png"))  # where it stopped
                raise
            assert_no_errors(page)
            full_screenshot(page, SHOTS / f"{path.strip('/')}.png", 7000)
            if os.environ.get("LLDD_SCREENS_BEFORE") == "1":
                continue  # main's code: pictures only
            figures = page.locator('[data-testid="stPlotlyChart"]').count()
            exports = page.locator('[data-testid="stPopover"]', has_text="Export figure").count()
            assert exports == figures, (path, exports, figures)
            bundle = page.locator('[data-testid="stSidebar"]').get_by_role("button", name="Download report (zip)")
            expect(bundle).to_be_visible()
            if path == "/jacobian":
                downloads_work(page, bundle, figures)


def downloads_work(page: Any, bundle: Any, figures: int) -> None:
    """The first figure's PNG export and the report bundle, as a user downloads them: drawn at the export scale."""
    from tests.test_plots_export import png_size

    page.locator('[data-testid="stPopover"]', has_text="Export figure").first.click()
    with page.expect_download() as download:
        page.get_by_role("button", name="PNG", exact=True).first.click()
    width, height = png_size(Path(download.value.path()).read_bytes())
    assert (width, height) == (2 * 1000, 2 * 430)  # the reconstruction figure: 1000 × its 430 px, at 2×
    page.keyboard.press("Escape")
    with page.expect_download() as download:
        bundle.click()
    with zipfile.ZipFile(download.value.path()) as z:
        names = z.namelist()
        settings = json.loads(z.read("settings.json"))
    assert sum(n.endswith(".svg") for n in names) == sum(n.endswith(".png") for n in names) == figures
    assert settings["view"] == "Detached Jacobian" and settings["query"]["dj_prompt"] and settings["lldd_version"]
    assert settings["figure_problems"] == []
