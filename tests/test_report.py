"""The report bundle (lldd_core/store/report.py): the zip's files, settings.json, the self-contained HTML, tables
through csv_text, hostile names and texts, and a figure that cannot be drawn. Figures are drawn by a stand-in
here (tests/test_plots_export.py draws them in a real browser)."""

from __future__ import annotations

import base64
import io
import json
import re
import zipfile

import pandas as pd
import plotly.graph_objects as go
import pytest

import lldd_core
from lldd_core.plots.export import ExportError, ExportSettings
from lldd_core.store.report import HTML_ROWS, ReportContent, bundle, read_settings, safe_name

SVG = b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'><text>x</text></svg>"


def render(fig: go.Figure, fmt: str, export: ExportSettings) -> bytes:
    return SVG if fmt == "svg" else f"PNG {export.scale} {fig.layout.title.text}".encode()


def content() -> ReportContent:
    fig = go.Figure(go.Scatter(x=[1, 2], y=[3, 4]), layout={"title": {"text": "gain <b>curve</b>"}})
    tokens = pd.DataFrame({"token": ["=HYPERLINK(\"http://x\")", "<script>alert(1)</script>", " Paris"],
                           "σ_1": [1.5, -2.0, 3.25]})
    return ReportContent(
        title="Gain curves", figures=[("gains_demo_mean", fig), ("gains_demo_mean", fig)],
        tables=[("prompts", tokens), ("../../etc/passwd", pd.DataFrame({"n": range(HTML_ROWS + 5)}))],
        settings={"url": "http://localhost:8501/gains?gn_mode=prompt&x=%3Cb%3E", "url_path": "gains",
                  "query": {"gn_mode": "prompt", "gn_ds": ["sentiment"]}, "model": {"model": "demo:gpt2-small"},
                  "theme": "report"},
    )


def files(zipped: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(zipped)) as z:
        assert z.testzip() is None
        return {n: z.read(n) for n in z.namelist()}


def test_the_zip_holds_settings_html_figures_and_tables() -> None:
    got = files(bundle(content(), ExportSettings(scale=3.0, width=800), render=render))
    assert list(got)[:2] == ["settings.json", "report.html"]
    assert {"figures/gains_demo_mean.svg", "figures/gains_demo_mean.png", "figures/gains_demo_mean.json",
            "figures/gains_demo_mean_2.svg", "tables/prompts.csv", "tables/etc_passwd.csv"} <= set(got)
    assert all(not n.startswith(("/", "..")) and ".." not in n for n in got)  # names stay inside the zip
    assert got["figures/gains_demo_mean.png"] == b"PNG 3.0 gain <b>curve</b>"
    assert go.Figure(json.loads(got["figures/gains_demo_mean.json"])).layout.title.text == "gain <b>curve</b>"
    csv = got["tables/prompts.csv"].decode()
    assert csv.splitlines()[1].startswith('"\'=HYPERLINK')  # formula-safe, as every lldd CSV (store/export.py)
    assert csv.endswith("\r\n") and "3.25" in csv
    assert len(got["tables/etc_passwd.csv"].decode().splitlines()) == HTML_ROWS + 6


def test_settings_json_reproduces_the_view() -> None:
    zipped = bundle(content(), ExportSettings(scale=2.0, width=1000), render=render)
    settings = read_settings(zipped)
    assert settings["view"] == "Gain curves" and settings["url_path"] == "gains"
    assert settings["query"] == {"gn_mode": "prompt", "gn_ds": ["sentiment"]}
    assert settings["url"].startswith("http://localhost:8501/gains?")
    assert settings["lldd_version"] == lldd_core.__version__
    assert settings["export"] == {"scale": 2.0, "width": 1000, "height": None}
    assert settings["model"] == {"model": "demo:gpt2-small"} and settings["theme"] == "report"
    assert settings["figure_problems"] == [] and re.fullmatch(r"\d{4}-\d\d-\d\dT.*", settings["created"])


def test_the_html_embeds_the_figures_as_images_and_escapes_every_text() -> None:
    page = files(bundle(content(), render=render))["report.html"].decode()
    images = re.findall(r"src='data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 2 and base64.b64decode(images[0]) == SVG
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>curve" not in page and "=HYPERLINK" in page
    assert f"First {HTML_ROWS} of {HTML_ROWS + 5} rows" in page
    assert "href='http://localhost:8501/gains?gn_mode=prompt&amp;x=%3Cb%3E'" in page
    assert page.count("<table") == 2 and "lldd " + lldd_core.__version__ in page


def test_a_figure_that_cannot_be_drawn_stays_as_json_and_says_why() -> None:
    def no_browser(fig: go.Figure, fmt: str, export: ExportSettings) -> bytes:
        raise ExportError("Figure export needs Chrome or Chromium: install one.")

    zipped = bundle(content(), render=no_browser)
    got = files(zipped)
    assert "figures/gains_demo_mean.json" in got and not any(n.endswith((".svg", ".png")) for n in got)
    problems = read_settings(zipped)["figure_problems"]
    assert len(problems) == 2 and problems[0].startswith("gains_demo_mean.svg: Figure export needs Chrome")
    assert "figures/gains_demo_mean.json holds it as plotly JSON" in got["report.html"].decode()


@pytest.mark.parametrize(("name", "expected"), [("a b/c", "a_b_c"), ("", "item"), ("..", "item"), ("x" * 200, "x" * 80)])
def test_safe_names(name: str, expected: str) -> None:
    assert safe_name(name, set()) == expected
    taken: set[str] = set()
    assert [safe_name("t", taken) for _ in range(3)] == ["t", "t_2", "t_3"]
