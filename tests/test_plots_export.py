"""Static figure export (lldd_core/plots/export.py) in a real headless Chromium: PNG at a scale, SVG and PDF
with the figure's fonts; no browser is one line, never a traceback.

Skipped without a browser unless ``LLDD_REQUIRE_BROWSER=1`` (then it fails), as the browser tests are.
"""

from __future__ import annotations

import io
import os
import re
import struct
import xml.etree.ElementTree as ET
import zipfile

import plotly.graph_objects as go
import pytest

from lldd_core.plots import export
from lldd_core.plots.common import REPORT
from lldd_core.plots.export import ExportError, ExportSettings, figure_bytes, figure_size, toolbar_config

FAMILY = REPORT.font_family.split(",")[0].strip()  # "DejaVu Sans"


@pytest.fixture(scope="module")
def browser() -> None:
    reason = export.unavailable()
    if reason is not None:
        if os.environ.get("LLDD_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " (LLDD_REQUIRE_BROWSER=1)")
        pytest.skip(reason)


def figure(height: int = 300) -> go.Figure:
    fig = go.Figure(go.Scatter(x=[1, 2, 3], y=[1.0, 10.0, 100.0], name="σ_k"))
    fig.update_layout(height=height, title={"text": "Singular values σ_k ‖J_i‖"})
    return REPORT.apply(fig)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_png_has_scale_times_the_layout_size(browser: None) -> None:
    fig = figure(300)
    for scale in (2.0, 3.0):
        settings = ExportSettings(scale=scale, width=500)
        assert figure_size(fig, settings) == (500, 300)
        assert png_size(figure_bytes(fig, "png", settings)) == (int(500 * scale), int(300 * scale))
    tall = ExportSettings(scale=2.0, width=400, height=250)  # an explicit height wins over the figure's
    assert png_size(figure_bytes(fig, "png", tall)) == (800, 500)


def test_svg_and_pdf_are_vector_at_the_layout_size_with_the_figures_font(browser: None) -> None:
    fig = figure(320)
    settings = ExportSettings(scale=3.0, width=600)
    svg = figure_bytes(fig, "svg", settings)
    root = ET.fromstring(svg)  # parses
    assert root.tag.endswith("svg")
    assert (float(root.get("width")), float(root.get("height"))) == (600, 320)  # the scale is for bitmaps only
    assert FAMILY in svg.decode()  # the text is styled in the figure's family
    assert "Singular values σ_k ‖J_i‖" in "".join(root.itertext())
    pdf = figure_bytes(fig, "pdf", settings)
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    fonts = re.findall(rb"/BaseFont\s*/(?:[A-Z]{6}\+)?([A-Za-z-]+)", pdf)
    assert fonts and all(f.startswith(FAMILY.replace(" ", "").encode()) for f in fonts), fonts  # the same font, embedded


def test_no_browser_is_one_line_that_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chrome")
    with pytest.raises(ExportError) as err:
        figure_bytes(figure(), "png")
    assert "BROWSER_PATH='/nonexistent/chrome'" in str(err.value) and "\n" not in str(err.value)
    monkeypatch.delenv("BROWSER_PATH")
    monkeypatch.setattr(export, "browser_path", lambda: None)
    assert "install one (Debian: apt-get install chromium) or set BROWSER_PATH" in export.unavailable()
    with pytest.raises(ExportError, match="format must be one of png, svg, pdf"):
        figure_bytes(figure(), "jpeg")
    with pytest.raises(ExportError, match="scale must lie in"):
        ExportSettings(scale=10).check()


def test_debian_chromium_when_nothing_else_is_found(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from choreographer.browsers.chromium import Chromium

    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setattr(Chromium, "find_browser", classmethod(lambda cls, **kw: None))
    monkeypatch.setenv("PATH", str(tmp_path))  # no chromium on PATH either
    fake = tmp_path / "chromium-bin"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setattr(export, "DEBIAN_CHROMIUM", fake)
    assert export.browser_path() == str(fake)
    monkeypatch.setattr(export, "DEBIAN_CHROMIUM", tmp_path / "missing")
    assert export.browser_path() is None


def test_the_toolbar_camera_saves_a_png_at_the_export_scale() -> None:
    config = toolbar_config("spectrum of org/model L2", ExportSettings(scale=3.0))
    assert config["toImageButtonOptions"] == {"format": "png", "filename": "spectrum_of_org_model_L2", "scale": 3.0}
    assert config["displaylogo"] is False


def test_a_report_bundle_draws_its_figures_for_real(browser: None) -> None:
    from lldd_core.store.report import ReportContent, bundle

    zipped = bundle(ReportContent("View", figures=[("curve", figure())]), ExportSettings(scale=2.0, width=400))
    with zipfile.ZipFile(io.BytesIO(zipped)) as z:
        assert png_size(z.read("figures/curve.png")) == (800, 600)
        ET.fromstring(z.read("figures/curve.svg"))
