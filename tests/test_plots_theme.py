"""Figure themes (lldd_core/plots/common.py): the registry, every figure builder taking one, the report look
(white, black axes, Okabe–Ito, print fonts) and readable log axes."""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil

import numpy as np
import plotly.graph_objects as go
import pytest

import lldd_core.plots as plots_package
from lldd_core.plots import common, control, gains
from lldd_core.plots.common import DASHBOARD, REPORT, THEMES, Theme, get_theme, log_axis, log_tick_text, register_theme
from tests.test_plots_control import control_result, steering_result
from tests.test_plots_gains import handmade

#: Okabe & Ito's eight colours.
OKABE_ITO = {"#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"}


def figure_builders() -> list[tuple[str, object]]:
    """Every public function of lldd_core.plots that returns a figure."""
    found = []
    for info in pkgutil.iter_modules(plots_package.__path__):
        module = importlib.import_module(f"lldd_core.plots.{info.name}")
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ == module.__name__ and not name.startswith("_") and \
                    inspect.signature(fn).return_annotation in ("go.Figure", go.Figure):
                found.append((f"{info.name}.{name}", fn))
    return found


def test_the_registry_holds_the_dashboard_and_the_report_theme() -> None:
    assert list(THEMES)[:2] == ["dashboard", "report"] and get_theme("report") is REPORT
    with pytest.raises(ValueError, match="choose one of dashboard, report"):
        get_theme("neon")
    with pytest.raises(ValueError, match="registered already"):
        register_theme(Theme("report", "again", common.D3_HUES, ("#000000",)))
    assert set(REPORT.hues.values()) - {"#8C8C8C"} <= OKABE_ITO  # grey: the one neutral
    assert set(REPORT.palette) <= OKABE_ITO and len(set(REPORT.palette)) == len(REPORT.palette)
    for role in common.ROLE_HUES:  # every role has a colour in every theme
        for theme in THEMES.values():
            assert theme.color(role).startswith("#")
    assert REPORT.rgba("measured", 0.25) == "rgba(213, 94, 0, 0.25)"


def test_every_figure_builder_takes_a_theme() -> None:
    builders = figure_builders()
    assert len(builders) >= 19, [n for n, _ in builders]
    for name, fn in builders:
        theme = inspect.signature(fn).parameters.get("theme")
        assert theme is not None and theme.default is DASHBOARD, name
        assert "theme.apply(fig)" in inspect.getsource(fn), name  # and applies it to what it returns


def test_a_registered_theme_reaches_the_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new theme is one registered object: the builders use its colours without knowing its name."""
    mono = Theme("mono", "Mono", {h: "#123456" for h in common.D3_HUES}, ("#123456",), native=False,
                 layout={"paper_bgcolor": "#fafafa"})
    monkeypatch.setitem(THEMES, "mono", mono)
    fig = gains.prompt_curves_figure(handmade(), 0, theme=get_theme("mono"))
    assert {t.line.color for t in fig.data} == {"#123456"} and fig.layout.paper_bgcolor == "#fafafa"


def report_figures() -> list[go.Figure]:
    r, steer = control_result(), [steering_result("additive", [" The", " food", " was", " great", "."],
                                                  schedule=np.array([0.0, 1.0]))]
    return [
        gains.mean_curves_figure(handmade(), theme=REPORT), gains.direction_norms_figure(handmade(), theme=REPORT),
        gains.agreement_histogram(handmade(), theme=REPORT), control.energy_figure(r, theme=REPORT),
        control.relative_energy_figure(r, theme=REPORT), control.schedule_figure(r, 0, theme=REPORT),
        control.gains_figure(r, theme=REPORT), control.readout_figure(steer, theme=REPORT),
        control.steering_schedule_figure(steer, theme=REPORT),
    ]


def test_the_report_theme_is_white_with_black_axes_okabe_ito_colours_and_print_fonts() -> None:
    for fig in report_figures():
        layout = fig.layout
        assert layout.paper_bgcolor == "white" and layout.plot_bgcolor == "white"
        assert layout.font.family.startswith("DejaVu Sans") and layout.font.size >= 12
        for axis in (layout.xaxis, layout.yaxis):
            assert axis.showgrid is False and axis.linecolor == "black" and axis.ticks == "outside"
        colors = set()
        for t in fig.data:
            for part in (getattr(t, "line", None), getattr(t, "marker", None)):
                color = getattr(part, "color", None) if part is not None else None
                colors |= set(color) if isinstance(color, tuple | list) else {color}
        colors = {c for c in colors if isinstance(c, str) and c.startswith("#")}
        assert colors and colors <= OKABE_ITO | {REPORT.hues["grey"]}, (layout.title.text, colors)


def test_the_dashboard_theme_keeps_plotlys_look() -> None:
    fig = gains.prompt_curves_figure(handmade(), 0)
    assert fig.layout.paper_bgcolor is None and fig.layout.font.family is None and fig.layout.template.layout.colorway
    assert [t.line.color for t in fig.data] == ["#1f77b4", "#d62728", "#2ca02c"]


@pytest.mark.parametrize(("value", "text"), [(1.0, "1"), (10.0, "10"), (1000.0, "1000"), (0.001, "0.001"),
                                             (1e-4, "1e-4"), (2e-5, "2e-5"), (1e4, "1e4"), (3e6, "3e6")])
def test_log_tick_text(value: float, text: str) -> None:
    assert log_tick_text(value) == text


def test_log_axes_label_powers_of_ten_only_and_never_crowd() -> None:
    axis = log_axis([3e-7, 0.5, 2.0, 4e3])
    assert axis["type"] == "log" and axis["tickmode"] == "array"
    assert all(math.log10(v).is_integer() for v in axis["tickvals"])  # no minor labels (2, 5) between decades
    assert axis["ticktext"][:2] == ["1e-6", "1e-4"] and "1" in axis["ticktext"] and "100" in axis["ticktext"]
    assert log_axis([0.02, 300.0])["ticktext"] == ["0.1", "1", "10", "100"]  # only what is in view
    assert axis["minor"]["ticks"] == "outside"  # minor ticks drawn, unlabelled
    lo, hi = axis["range"]
    assert lo < math.log10(3e-7) and hi > math.log10(4e3)
    wide = log_axis([1e-30, 1e30])
    assert len(wide["tickvals"]) <= 9  # every few decades over a wide range
    inside = log_axis([2.0, 7.0])  # within one decade: 2 and 5
    assert inside["tickvals"] == [2.0, 5.0]
    assert "tickvals" not in log_axis([0.9, 1.3]) and log_axis([np.nan, 0.0])["type"] == "log"
    few = log_axis([0.05, 6.0])  # two decades: 1-2-5 labels, the other digits as minor ticks
    assert few["ticktext"] == ["0.05", "0.1", "0.2", "0.5", "1", "2", "5"]
    assert 0.3 == pytest.approx(few["minor"]["tickvals"][5]) and not any(np.isclose(few["minor"]["tickvals"], 0.2))
    assert log_axis([0.03, 9.0])["ticktext"] == ["0.05", "0.1", "0.2", "0.5", "1", "2", "5", "10"]


def test_the_log_axes_of_the_figures_use_it() -> None:
    r = control_result()
    fig = control.energy_figure(r)
    assert fig.layout.yaxis.type == "log"
    assert set(fig.layout.yaxis.ticktext) <= {"0.1", "0.2", "0.5", "1", "2", "5", "10", "20", "50", "100"}
    assert fig.layout.yaxis.minor.ticks == "outside"
    ratio = control.relative_energy_figure(r)
    assert "1" in ratio.layout.yaxis.ticktext  # 1 = the LLV schedule's energy
