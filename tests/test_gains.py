"""Gain curves end to end: predicted (LLV), measured (injection) and exact linear gains."""

from __future__ import annotations

import numpy as np
import pytest

from lldd_core.analysis.gains import analyze_gains
from lldd_core.concepts.catalog import load
from lldd_core.errors import InputError
from tests.helpers import load as load_model
from tests.tiny import MOE

SMALL = (6, 4, 3)


@pytest.mark.parametrize("family", ["gpt2", "llama", "granite", "smollm3", "olmo3", "starcoder2", "stablelm", "cohere2",
                                    "gemma3", *MOE])  # issue 19: every new family
def test_full_order_prediction_is_exact_and_small_eps_measures_it(tiny_dirs, family):
    handle = load_model(tiny_dirs[family])
    data = load("sentiment")
    d = handle.info.d_model
    r = analyze_gains(handle, data, order=d, eps=1e-4, n_eval=3, sizes=SMALL)
    assert r.predicted.shape == r.measured.shape == r.exact.shape == (3, len(r.layers))
    np.testing.assert_allclose(r.predicted, r.exact, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(r.measured, r.exact, rtol=2e-2, atol=1e-3 * np.abs(r.exact).max())
    assert r.split_sizes == {"concept": 6, "operating": 4, "evaluation": 3}
    finite = r.spearman[np.isfinite(r.spearman)]  # one layer left (llama drops k = 0): no correlation
    assert r.mean_spearman == pytest.approx(finite.mean() if finite.size else float("nan"), nan_ok=True)
    assert set(r.summary()) >= {"layers", "prompts", "mean_spearman", "mean_pearson"}
    assert set(r.summary()["prompts"][0]) == {"text", "predicted", "measured", "exact", "spearman", "pearson"}


def test_population_mode_and_complements_run(tiny_dirs):
    handle = load_model(tiny_dirs["gpt2"])
    data = load("politeness")
    for complement in ("krylov", "random", "pca"):
        r = analyze_gains(handle, data, order=4, n_eval=2, sizes=SMALL, complement=complement, mode="population")
        assert np.allclose(r.predicted[0], r.predicted[1])  # one curve for every prompt
    with pytest.raises(InputError, match="order"):
        analyze_gains(handle, data, order=0, sizes=SMALL)
    with pytest.raises(InputError, match="complement"):
        analyze_gains(handle, data, complement="magic", sizes=SMALL)


def test_demo_model_sentiment_krylov_predicts_the_measured_curve(demo_default):
    """The issue's acceptance check: d = 32 Krylov, built-in sentiment, mean Spearman >= 0.9, better than random.

    Measured (build version 2, the same with 1 and 2 threads; AMD EPYC, AVX2): Krylov mean Spearman 1.000
    (every prompt's 4 layers ranked right) / Pearson 0.9994; random 1.000 / 0.9955. With Spearman at its
    ceiling for both, "better than random" is read off the curves themselves: Krylov's predicted curve is
    off the exact linear gain by 3.4 % on average, random's by 9.1 %. The bounds leave room for another
    CPU's rounding and for a build with another seed (an earlier build gave Spearman 0.89-0.91).
    """
    from lldd_core.models.loading import ModelSpec
    from lldd_core.models.loading import load_model as load_spec

    handle = load_spec(ModelSpec(str(demo_default), device="cpu"))
    data = load("sentiment")
    krylov = analyze_gains(handle, data, order=32, n_eval=32)
    random = analyze_gains(handle, data, order=32, n_eval=32, complement="random")
    assert krylov.mean_spearman >= 0.9, krylov.mean_spearman
    assert krylov.mean_pearson >= 0.95, krylov.mean_pearson
    assert krylov.mean_spearman >= random.mean_spearman and krylov.mean_pearson > random.mean_pearson

    def off_exact(r) -> float:
        return float(np.abs(r.predicted - r.exact).mean() / np.abs(r.exact).mean())

    assert off_exact(krylov) < 0.6 * off_exact(random), (off_exact(krylov), off_exact(random))
    # the measured curve tends to the exact linear one; eps = 0.1 is close on this model (5.9 %)
    assert np.abs(krylov.measured - krylov.exact).mean() < 0.1 * np.abs(krylov.exact).mean()


SETTINGS = {"n_eval": 3, "sizes": SMALL}


def test_ablations_equal_the_single_analyses(tiny_dirs):
    """Each ablation row is the analysis with that value; what the value does not touch is shared."""
    from lldd_core.analysis.ablation import ablate_gains

    handle = load_model(tiny_dirs["gpt2"])
    data = load("sentiment")
    d = handle.info.d_model
    by_order = ablate_gains(handle, data, "order", [2, d], order=4, **SETTINGS)
    assert by_order.values == [2, d] and by_order.predicted.shape[:2] == (2, 3)
    for i, r in enumerate(by_order.values):
        single = analyze_gains(handle, data, order=r, **SETTINGS)
        np.testing.assert_allclose(by_order.predicted[i], single.predicted, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(by_order.measured[i], single.measured, rtol=1e-10, atol=1e-12)
        assert by_order.mean_spearman[i] == pytest.approx(single.mean_spearman, nan_ok=True)
        assert by_order.spearman_of_means[i] == pytest.approx(single.spearman_of_means, nan_ok=True)
    np.testing.assert_allclose(by_order.predicted[1], by_order.exact, rtol=1e-8, atol=1e-10)  # full order

    by_eps = ablate_gains(handle, data, "eps", [1e-4, 0.3], order=4, **SETTINGS)
    np.testing.assert_array_equal(by_eps.predicted[0], by_eps.predicted[1])
    for i, e in enumerate(by_eps.values):
        single = analyze_gains(handle, data, order=4, eps=e, **SETTINGS)
        np.testing.assert_allclose(by_eps.measured[i], single.measured, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(by_eps.predicted[i], single.predicted, rtol=1e-10, atol=1e-12)
    # smaller eps measures closer to the exact linear gain
    err = [np.abs(m - by_eps.exact).max() for m in by_eps.measured]
    assert err[0] < err[1]

    by_comp = ablate_gains(handle, data, "complement", None, order=4, **SETTINGS)
    assert by_comp.values == ["krylov", "random", "pca"]
    for i, c in enumerate(by_comp.values):
        single = analyze_gains(handle, data, order=4, complement=c, **SETTINGS)
        np.testing.assert_allclose(by_comp.predicted[i], single.predicted, rtol=1e-10, atol=1e-12)
    assert {row["value"] for row in by_comp.summary()["values"]} == {"krylov", "random", "pca"}


def test_ablation_values_are_checked(tiny_dirs):
    from lldd_core.analysis.ablation import ablate_gains, ablation_values

    assert ablation_values("order", 16) == [1, 2, 4, 8, 16]
    assert ablation_values("order", 768) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768]  # up to the hidden size
    assert ablation_values("eps", 16, [0.5, 0.1, 0.1]) == [0.1, 0.5]
    handle = load_model(tiny_dirs["gpt2"])
    data = load("sentiment")
    for vary, values, match in [("order", [0, 4], "Orders"), ("eps", [-1.0], "positive"), ("complement", ["x"], "complement"),
                                ("depth", None, "ablation"), ("order", [], "at least one")]:
        with pytest.raises(InputError, match=match):
            ablate_gains(handle, data, vary, values, **SETTINGS)


def test_aggregated_agreement_is_the_correlation_of_the_mean_curves():
    from scipy import stats

    from lldd_core.linalg.agreement import agreement

    rng = np.random.default_rng(0)
    P = rng.normal(size=(5, 6))
    M = P + 0.3 * rng.normal(size=(5, 6))
    M[4] = 1.0  # a flat measured curve has no correlation
    a = agreement(P, M)
    assert np.isnan(a.spearman[4]) and np.isnan(a.pearson[4])
    assert a.mean_spearman == pytest.approx(np.mean([stats.spearmanr(P[i], M[i])[0] for i in range(4)]))
    assert a.pearson_of_means == pytest.approx(stats.pearsonr(P.mean(0), M.mean(0))[0])
    assert a.spearman_of_means == pytest.approx(stats.spearmanr(P.mean(0), M.mean(0))[0])
