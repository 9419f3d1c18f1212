"""Settings objects (lldd_core.analysis.settings): validation, the keyword form, and one set of defaults
shared by the CLI's options and the pages' widgets."""

from __future__ import annotations

import dataclasses

import pytest
from streamlit.testing.v1 import AppTest

from lldd_core.analysis import settings as S
from lldd_core.cli.main import build_parser
from lldd_core.errors import InputError
from tests.apptest import open_page


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


# --- one set of defaults ------------------------------------------------------------------------


def test_cli_defaults_are_the_settings_defaults() -> None:
    assert S.GainsSettings.from_args(parse("gains", "--dataset", "sentiment")) == S.GainsSettings()
    sweep = parse("sweep", "--models", "a")
    assert S.GainsSettings.from_args(sweep) == S.GainsSettings()
    control = parse("control", "--dataset", "sentiment")
    assert S.ControlSettings.from_args(control, targets=tuple(control.target)) == S.ControlSettings()
    spectrum = parse("spectrum", "--prompt", "x")
    assert S.SpectrumSettings(layer=spectrum.layer, final_norm=not spectrum.no_final_norm, k=spectrum.top_k,
                              n_decode=spectrum.decode, method=spectrum.method) == S.SpectrumSettings()
    layers = parse("layers", "--prompt", "x")
    assert S.LayersSettings(k=layers.top_k, n_decode=layers.decode, lens=not layers.no_lens,
                            method=layers.method) == S.LayersSettings()
    assert layers.sites is None  # every site: the settings' default
    jac = parse("jacobian", "--prompt", "x")
    assert S.JacobianSettings(layer=jac.layer, final_norm=not jac.no_final_norm) == S.JacobianSettings()
    assert S.GraphSettings.from_args(parse("graph", "--prompt", "x")) == S.GraphSettings()


def test_the_settings_vocabularies_are_the_cores() -> None:
    from lldd_core.analysis.spectrum import METHODS
    from lldd_core.concepts.data import PAPER_PER_CLASS
    from lldd_core.forward.views import SITES
    from lldd_core.linalg.llv import COMPLEMENTS

    assert S.COMPLEMENTS == tuple(COMPLEMENTS)
    assert S.SITES == tuple(SITES)
    assert S.SPECTRUM_METHODS == tuple(METHODS)
    assert tuple(S.SplitSizes()) == (PAPER_PER_CLASS["concept"], PAPER_PER_CLASS["operating"],
                                     PAPER_PER_CLASS["evaluation"])


@pytest.mark.parametrize("page, prefix, cls", [("pages/gains.py", "gn", S.GainsSettings),
                                                ("pages/control.py", "ct", S.ControlSettings)])
def test_page_widgets_start_at_the_settings_defaults(page: str, prefix: str, cls: type, tiny_dirs, fresh_service,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    at: AppTest = open_page(page, tiny_dirs["gpt2"], monkeypatch)
    d = 32  # the tiny model's hidden size: the order widget is keyed by it and capped at it
    defaults = cls()
    assert at.number_input(key=f"{prefix}_order_of_{d}").value == min(defaults.order, d)
    assert at.number_input(key=f"{prefix}_n_eval").value == defaults.n_eval
    assert at.number_input(key=f"{prefix}_seed").value == defaults.seed
    assert at.selectbox(key=f"{prefix}_complement").value == defaults.complement
    sizes = tuple(at.number_input(key=f"{prefix}_{name}").value for name in ("concept", "operating", "evaluation"))
    assert sizes == tuple(defaults.sizes)
    if cls is S.GainsSettings:
        assert at.number_input(key="gn_eps").value == defaults.eps
        assert at.radio(key="gn_mode").value == defaults.mode
    else:
        assert at.number_input(key="ct_tol").value == defaults.tol
        # the one deliberate difference: the page compares several targets, the command reaches one
        assert at.text_input(key="ct_targets").value == "0.5, 1, 2"


# --- validation and the keyword form ------------------------------------------------------------


def test_check_normalizes_and_refuses_in_one_line() -> None:
    s = S.GainsSettings(order=8, sizes=[10, 5, 5]).check(d_model=16)
    assert isinstance(s.sizes, S.SplitSizes) and s.sizes == (10, 5, 5) and s.sizes.operating == 5
    for bad in ({"order": 17}, {"eps": 0.0}, {"eps": float("nan")}, {"n_eval": 0}, {"complement": "svd"},
                {"mode": "both"}, {"sizes": (1, 2)}, {"seed": -1}):
        with pytest.raises(InputError) as err:
            dataclasses.replace(s, **bad).check(d_model=16)
        assert "\n" not in str(err.value)
    c = S.ControlSettings(targets=[0.5, 2]).check(d_model=64)
    assert c.targets == (0.5, 2.0)
    with pytest.raises(InputError):
        S.ControlSettings(targets=(0.0,)).check()  # a zero shift asks for nothing
    with pytest.raises(InputError):
        S.ControlSettings(tol=1.0).check()
    assert S.SpectrumSettings().check(n_layers=4, d_model=16).layer == 4  # default: the last block
    with pytest.raises(InputError):
        S.SpectrumSettings(k=17).check(n_layers=4, d_model=16)
    layers = S.LayersSettings(sites="mlp,cumulative").check(d_model=16)
    assert layers.sites == ("cumulative", "mlp")  # canonical order: one cache entry per set
    with pytest.raises(InputError):
        S.LayersSettings(sites=("heads",)).check(d_model=16)
    with pytest.raises(InputError):
        S.GraphSettings(edge_threshold=1.5).check()


def test_resolve_is_the_keyword_form_and_settings_are_frozen() -> None:
    base = S.GainsSettings(order=4)
    assert S.GainsSettings.resolve(None, {}) == S.GainsSettings()
    assert S.GainsSettings.resolve(base, {}) is base
    assert S.GainsSettings.resolve(base, {"eps": 0.2}) == S.GainsSettings(order=4, eps=0.2)
    with pytest.raises(TypeError):
        S.GainsSettings.resolve(None, {"orders": 4})  # a misspelt field is a caller's bug, not a silent default
    with pytest.raises(TypeError):
        S.GainsSettings.resolve(S.ControlSettings(), {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.order = 8  # type: ignore[misc]


def test_control_keys_its_surrogate_like_the_gains_it_runs() -> None:
    """Control's cache parameters are the population-mode gains settings (ε unused: 0) plus targets and tol."""

    class Data:
        name = "toy"

        def fingerprint(self) -> str:
            return "f" * 8

    c = S.ControlSettings(targets=(1.0, 2.0), order=6, n_eval=3, sizes=S.SplitSizes(6, 4, 3), seed=2, tol=0.05)
    params = c.cache_params(Data())  # type: ignore[arg-type]
    assert params == {"dataset": "toy", "fingerprint": "ffffffff", "order": 6, "eps": 0.0, "n_eval": 3,
                      "complement": "krylov", "mode": "population", "sizes": [6, 4, 3], "seed": 2,
                      "targets": [1.0, 2.0], "tol": 0.05}
