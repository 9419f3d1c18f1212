"""Concept directions too small to trust are flagged, shown, and kept out of the agreement figures by default."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lldd_core import service as service_module
from lldd_core.analysis.gains import analyze_gains
from lldd_core.cli.main import main
from lldd_core.concepts.catalog import load as load_dataset
from lldd_core.linalg.agreement import agreement, direction_reliability, kept_layers
from lldd_core.models.loading import ModelSpec, load_model
from tests.apptest import open_page


def test_weak_and_identical_layers_are_flagged_a_real_difference_is_not():
    rng = np.random.default_rng(0)
    n, d = 200, 16
    labels = np.repeat([1, 0], n // 2)
    states = rng.normal(size=(n, 4, d))
    states[:, 0] *= 0.01  # layer 0: tiny states around a large common offset: no class difference
    states[:, 0] += 10.0
    states[:, 1, 0] += np.where(labels == 1, 2.0, -2.0)  # layer 1: a clear class difference along e_0
    states[:, 2] = 1.5  # layer 2: every state identical, E = 0 exactly
    states[:, 3, 0] += np.where(labels == 1, 1.0, -1.0)  # layer 3: half as strong, still trusted
    norms, noise, strength, flagged = direction_reliability(states, labels)
    assert flagged == [0, 2]
    assert norms[1] == pytest.approx(4.0, rel=0.1) and norms[2] == 0.0
    assert strength[3] > 0.05 * strength.max() > strength[0]
    # with no class difference ‖E‖ is about the noise (layer 0: sqrt(d (1/100 + 1/100)) · 0.01)
    assert noise[0] == pytest.approx(0.01 * np.sqrt(d * 2 / (n // 2)), rel=0.15)


def test_kept_layers_mask():
    assert kept_layers([1, 2, 3], [0, 2]).tolist() == [True, False, True]


@pytest.fixture(scope="module")
def result(tiny_dirs):
    handle = load_model(ModelSpec(str(tiny_dirs["llama"]), dtype="float64", device="cpu"))
    return analyze_gains(handle, load_dataset("sentiment"), order=4, n_eval=3, sizes=(20, 6, 3))


def test_gains_result_reports_norms_and_leaves_flagged_layers_out_of_the_agreement(result):
    L = result.n_layers
    assert len(result.direction_norms) == len(result.direction_noise) == len(result.direction_strength) == L + 1
    assert all(0 <= k <= L for k in result.flagged_layers)
    keep = kept_layers(result.layers, result.flagged_layers)
    out = agreement(result.predicted, result.measured, keep)
    every = agreement(result.predicted, result.measured)
    np.testing.assert_array_equal(result.spearman, out.spearman)
    assert result.mean_pearson == pytest.approx(out.mean_pearson, nan_ok=True)
    assert result.agreement_all_layers["mean_spearman"] == pytest.approx(every.mean_spearman, nan_ok=True)
    assert result.agreement_all_layers["pearson_of_means"] == pytest.approx(every.pearson_of_means, nan_ok=True)
    summary = result.summary()
    for key in ("direction_norms", "direction_noise", "flagged_layers", "agreement_all_layers"):
        assert key in summary
    json.dumps(summary)  # JSON-able


def test_flagging_changes_only_the_agreement_not_the_curves(result):
    """Leaving a layer out is a choice about the figures: with nothing flagged both agreements coincide."""
    if not result.flagged_layers:
        assert result.agreement_all_layers["mean_spearman"] == pytest.approx(result.mean_spearman, nan_ok=True)
    assert result.predicted.shape[1] == len(result.layers)  # flagged layers stay in the curves


def test_cli_gains_json_has_direction_norms_and_flagged_layers(tiny_dirs, cache_dir, capsys, monkeypatch):
    monkeypatch.setattr(service_module, "_SERVICE", None)
    code = main(["gains", "--model", str(tiny_dirs["gpt2"]), "--dataset", "sentiment", "--sizes", "6,4,3",
                 "--n-eval", "2", "--order", "4", "--device", "cpu", "--json", "-", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    assert len(data["direction_norms"]) == data["n_layers"] + 1
    assert isinstance(data["flagged_layers"], list) and "mean_spearman" in data["agreement_all_layers"]


def test_page_shows_the_direction_norms_and_the_flagged_caption(tiny_dirs, fresh_service, monkeypatch):
    import lldd_core.linalg.agreement as agreement_module

    monkeypatch.setattr(agreement_module, "MIN_RELATIVE_STRENGTH", 0.999)  # flags every layer but the strongest
    at = open_page("pages/gains.py", tiny_dirs["gpt2"], monkeypatch)
    for key, value in {"gn_concept": 6, "gn_operating": 4, "gn_evaluation": 3, "gn_order_of_32": 4,
                       "gn_n_eval": 3}.items():
        at.number_input(key=key).set_value(value)
    at.button(key="gn_compute").click().run()
    assert not at.exception
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert any(t.startswith("Concept direction strength per layer") for t in titles)
    flagged_caption = [c.value for c in at.caption if c.value.startswith("Flagged ")]
    toggles = [t for t in at.toggle if t.key == "gn_include_flagged"]
    assert flagged_caption and "leave out" in flagged_caption[0] and len(toggles) == 1
    before = {m.label: m.value for m in at.metric}
    toggles[0].set_value(True).run()
    assert not at.exception
    assert "include" in next(c.value for c in at.caption if c.value.startswith("Flagged "))
    assert {m.label: m.value for m in at.metric}.keys() == before.keys()
