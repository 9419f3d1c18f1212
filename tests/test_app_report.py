"""Figure export, the report theme and the report bundle through AppTest (pages/common/ui.py, sidebar, app.py).

The tiny saved gpt2 on the Detached Jacobian view: one export control per figure, the sidebar's theme drawing
every figure in the report look, and the bundle of what the view drew, whose settings.json reopens the same view
(its ``query`` as a permalink: pages/common/link.py).
"""

from __future__ import annotations

import json
import zipfile
from io import BytesIO

import plotly.graph_objects as go
import pytest
from streamlit.testing.v1 import AppTest

from lldd_core.plots.common import REPORT
from lldd_core.store.report import bundle, read_settings
from pages.common.ui import EXPORT_FORMATS, REPORT_CONTENT
from tests.apptest import APP, assert_clean, metrics, open_page

PROMPT = "The cat sat on the"


def fake_render(fig: go.Figure, fmt: str, export) -> bytes:
    """No browser in these tests (tests/test_plots_export.py draws for real): the format and size as bytes."""
    return f"{fmt} {export.scale} {export.width}".encode()


@pytest.fixture()
def computed(tiny_dirs, fresh_service, monkeypatch) -> AppTest:
    at = open_page(None, tiny_dirs["gpt2"], monkeypatch)
    at.text_area(key="dj_prompt").set_value(PROMPT)
    at.number_input(key="dj_layer_of_2").set_value(1)
    at.button(key="dj_compute").click().run()
    assert_clean(at)
    return at


def test_every_figure_has_an_export_control_and_the_sidebar_a_bundle(computed: AppTest) -> None:
    charts = computed.get("plotly_chart")
    assert len(charts) == 3
    labels = [b.label for b in computed.get("download_button")]
    for fmt in EXPORT_FORMATS:  # one PNG, SVG and PDF button per figure
        assert labels.count(fmt.upper()) == len(charts)
    assert [b.label for b in computed.sidebar.get("download_button")] == ["Download report (zip)"]
    # the toolbar's camera saves a PNG at the export scale under the figure's name
    configs = [json.loads(c.proto.config) for c in charts]
    assert {c["toImageButtonOptions"]["format"] for c in configs} == {"png"}
    assert {c["toImageButtonOptions"]["scale"] for c in configs} == {2.0}
    assert configs[0]["toImageButtonOptions"]["filename"].startswith("reconstruction_")

    computed.selectbox(key="sidebar_export_scale").set_value(3.0).run()
    configs = [json.loads(c.proto.config) for c in computed.get("plotly_chart")]
    assert {c["toImageButtonOptions"]["scale"] for c in configs} == {3.0}


def test_the_report_theme_draws_every_figure_as_it_exports(computed: AppTest) -> None:
    dashboard = [json.loads(c.proto.spec) for c in computed.get("plotly_chart")]
    assert all(c.proto.theme == "streamlit" for c in computed.get("plotly_chart"))
    computed.selectbox(key="sidebar_theme").set_value("report").run()
    assert_clean(computed)
    charts = computed.get("plotly_chart")
    assert all(c.proto.theme == "" for c in charts)  # drawn as built: what the export saves
    for spec, before in zip((json.loads(c.proto.spec) for c in charts), dashboard, strict=True):
        layout = spec["layout"]
        assert layout["paper_bgcolor"] == "white" and layout["font"]["family"] == REPORT.font_family
        assert layout["xaxis"]["showgrid"] is False and layout["xaxis"]["linecolor"] == "black"
        colors = {t.get("marker", {}).get("color") for t in spec["data"]} | {
            t.get("line", {}).get("color") for t in spec["data"]}
        assert colors & set(REPORT.hues.values())  # Okabe–Ito
        assert len(spec["data"]) == len(before["data"])  # the same figure, another look


def test_the_bundle_holds_the_view_and_its_settings_reopen_it(computed: AppTest) -> None:
    content = computed.session_state[REPORT_CONTENT]
    assert content.title == "Detached Jacobian"
    assert [name.split("_")[0] for name, _ in content.figures] == ["reconstruction", "spectrum", "contributions"]
    assert [name for name, _ in content.tables] == ["tokens"]
    zipped = bundle(content, render=fake_render)
    with zipfile.ZipFile(BytesIO(zipped)) as z:
        names = set(z.namelist())
        assert {"settings.json", "report.html", "tables/tokens.csv"} <= names
        assert sum(n.startswith("figures/") and n.endswith(".svg") for n in names) == 3
        assert z.read("tables/tokens.csv").decode().splitlines()[0].startswith("position,token,id")
    settings = read_settings(zipped)
    query = settings["query"]
    assert query["dj_prompt"] == PROMPT and query["dj_layer"] == "1" and settings["lldd_version"]
    assert settings["model"]["model"] == computed.text_input(key="sidebar_model").value
    assert "dj_prompt=The+cat+sat+on+the" in settings["url"]

    first = metrics(computed)
    again = AppTest.from_file(APP, default_timeout=120)
    for name, value in query.items():
        again.query_params[name] = value
    again.run()
    assert_clean(again)
    assert again.text_area(key="dj_prompt").value == PROMPT
    assert again.number_input(key="dj_layer_of_2").value == 1
    shown = metrics(again)
    assert shown.pop("From cache") == "yes" and first.pop("From cache") == "no"
    assert shown == first  # the same result, from the cache
    reopened = again.session_state[REPORT_CONTENT]
    assert reopened.settings["query"] == query
