"""The Scaling page through Streamlit's AppTest (app.py with st.navigation, real service, tiny saved GPT-2s)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import lldd_core.service as service_module
from lldd_core.analysis.settings import GainsSettings
from lldd_core.models.loading import ModelSpec
from tests.apptest import APP, assert_clean
from tests.test_sweep import save_family

SETTINGS = GainsSettings(order=4, n_eval=2, sizes=(6, 4, 3))


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return save_family(tmp_path_factory.mktemp("family"))[:2]


@pytest.fixture()
def fresh_service(cache_dir: Path, family: list[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A new process-wide service on this test's empty cache directory (AppTest runs in-process), and a
    tiny model as the sidebar's default (so the app's first page does not build the demo model)."""
    monkeypatch.setattr(service_module, "_SERVICE", None)
    monkeypatch.setenv("LLDD_DEFAULT_MODEL", family[0])
    yield
    if service_module._SERVICE is not None:
        service_module._SERVICE.cache.close()


def open_scaling(family: list[str]) -> AppTest:
    """The app on the Scaling page with the tiny family as a custom list and tiny settings."""
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("pages/scaling.py").run()
    assert_clean(at)
    assert [t.value for t in at.title] == ["Scaling"]
    assert at.selectbox(key="sc_family").value == "demo"
    assert at.multiselect(key="sc_datasets").value == ["sentiment"]
    assert (at.number_input(key="sc_order").value, at.number_input(key="sc_n_eval").value) == (32, 32)
    at.selectbox(key="sc_family").set_value("custom").run()
    at.text_input(key="sc_models").set_value(", ".join(family))
    at.number_input(key="sc_order").set_value(SETTINGS.order)
    at.number_input(key="sc_n_eval").set_value(SETTINGS.n_eval)
    for name, n in zip(("concept", "operating", "evaluation"), SETTINGS.sizes):
        at.number_input(key=f"sc_{name}").set_value(n)
    at.run()
    assert_clean(at)
    return at


def statuses(at: AppTest) -> list[str]:
    (frame,) = at.dataframe
    return frame.value["status"].tolist()


def test_status_then_compute_missing_then_cached(family: list[str], fresh_service) -> None:
    at = open_scaling(family)
    assert statuses(at) == ["missing", "missing"]
    button = at.button(key="sc_compute")
    assert button.label == "Compute missing (2 cells)" and not button.disabled
    assert not at.get("plotly_chart")
    assert any("No cell has a result" in i.value for i in at.info)

    button.click().run()
    assert_clean(at)
    assert at.status[0].label.startswith("Scaling sweep ready — Computed in")
    assert statuses(at) == ["computed", "computed"]
    # the button counts what is missing after the sweep, not before it
    assert at.button(key="sc_compute").disabled and at.button(key="sc_compute").label == "All cells cached"
    assert "Split sizes: `sentiment` 6/4/3 per class (concept/operating/evaluation)." in [c.value for c in at.caption]
    (frame,) = at.dataframe
    assert frame.value["model"].tolist() == family and frame.value["dataset"].tolist() == ["sentiment"] * 2
    assert len(at.get("plotly_chart")) == 1
    service = service_module.get_service()
    for model, params, spearman in zip(family, frame.value["parameters"], frame.value["mean Spearman"]):
        result = service.cached_gains(ModelSpec(model), "sentiment", SETTINGS)
        assert result is not None and result.n_params == params
        assert result.mean_spearman == pytest.approx(spearman, nan_ok=True)

    at.run()  # a plain rerun reads the cache: everything cached, nothing to compute
    assert_clean(at)
    assert statuses(at) == ["cached", "cached"]
    assert at.button(key="sc_compute").disabled and at.button(key="sc_compute").label == "All cells cached"
    at.checkbox(key="sc_paper").check().run()
    assert_clean(at)
    assert len(at.get("plotly_chart")) == 1


def test_unavailable_cells_explain_themselves(family: list[str], fresh_service, tmp_path: Path) -> None:
    at = open_scaling(family[:1])
    missing = tmp_path / "no-such-model"
    at.text_input(key="sc_models").set_value(f"{family[0]}, {missing}")
    at.multiselect(key="sc_datasets").set_value(["sentiment", "sst2"]).run()
    assert not at.exception and not at.error
    assert statuses(at) == ["missing", "unavailable", "unavailable", "unavailable"]
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 2  # one per reason: the hub dataset offline, the model path
    assert any("not available offline" in w for w in warnings) and any("No model directory" in w for w in warnings)
    at.button(key="sc_compute").click().run()  # computes the one cell it can
    assert not at.exception and not at.error
    assert statuses(at) == ["computed", "unavailable", "unavailable", "unavailable"]
    at.text_input(key="sc_models").set_value("  ").run()
    assert not at.exception and any("Enter the models" in i.value for i in at.info)


def test_failed_cells_say_why_and_are_remembered(family: list[str], fresh_service) -> None:
    at = open_scaling(family)
    at.number_input(key="sc_order").set_value(20).run()  # more than the smaller model's hidden size (16)
    at.button(key="sc_compute").click().run()
    assert not at.exception and not at.warning
    assert at.status[0].label.startswith("Scaling sweep ready — Computed in")
    assert statuses(at) == ["failed", "computed"]
    assert at.button(key="sc_compute").label == "Compute missing (1 cell)"  # the failed one, after the sweep
    (error,) = [e.value for e in at.error]
    assert error.startswith("1 cell failed") and "hidden size 16" in error
    at.run()  # the cache knows nothing of failures; the page remembers them
    assert statuses(at) == ["failed", "cached"] and len(at.error) == 1
    assert at.button(key="sc_compute").label == "Compute missing (1 cell)"
    at.text_input(key="sc_models").set_value(family[0]).run()
    at.button(key="sc_compute").click().run()  # nothing can be computed: the status box says so, once
    assert not at.exception
    assert at.status[0].label == "Could not compute the scaling sweep"
    assert [e.value.split(".")[0] for e in at.error] == ["No cell could be computed"]
    assert statuses(at) == ["failed"]
