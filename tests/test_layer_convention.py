"""One layer numbering everywhere (issue 16): the residual stream ``x_l``, ``l = 0..L``.

``x_0`` is the embedding output (block 0's input), ``x_l`` the input of block ``l`` and the output of
block ``l-1``, ``x_L`` the output of the last block. Block ``b`` (``0..L-1``) reads ``x_b`` and writes
``x_{b+1}``. Everything a user sees follows it:

* every page's layer controls (AppTest on the tiny gpt2, ``L = 2``): a widget whose label mentions a layer,
  a block or ``x_`` names ``x_l`` (its values ``0..L``) or ``block b`` (its values ``0..L-1``);
* every figure's layer axis (the plots functions on real small results): its title names ``x_l`` or
  ``block b`` and its ticks lie in that range; table columns likewise;
* the CLI: every option that mentions a layer says which ``x_l`` or block it means, and the JSON fields;
* the numbers mean what they say: layer ``l``'s Jacobian output is ``x_l``, additive and Jacobian
  steering at layer ``l`` change ``x_l`` and leave ``x_{l-1}`` alone.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from streamlit.testing.v1 import AppTest

from lldd_core import service as service_module
from lldd_core.analysis.control import analyze_control
from lldd_core.analysis.gains import analyze_gains
from lldd_core.analysis.graph import build_graph
from lldd_core.analysis.graph_prune import prune
from lldd_core.cli.main import build_parser, main
from lldd_core.concepts.catalog import load as load_dataset
from lldd_core.forward import hooks as hk
from lldd_core.forward.depth import last_token_states
from lldd_core.forward.interventions import AddVectors, JacobianSteering, intervene
from lldd_core.models.loading import ModelSpec, load_model
from lldd_core.plots import common, control, gains, graph, spectra
from lldd_core.service import Service
from lldd_core.steering.pieces import analyze_steering_jacobian
from tests.apptest import assert_clean, open_page
from tests.tiny import PROMPT

L = 2  # the tiny models' depth
SMALL = (6, 4, 3)
PAGES = ("pages/jacobian.py", "pages/layers.py", "pages/graph.py", "pages/gains.py", "pages/scaling.py",
         "pages/control.py", "pages/steering.py")
MENTIONS = re.compile(r"layer|block|x_", re.IGNORECASE)
STREAM = re.compile(r"x_l\b")
BLOCK = re.compile(r"\bblock b\b")
#: The layer controls each page must have, by key: (meaning, lowest, highest) for L = 2.
EXPECTED = {
    "dj_layer_of_2": ("stream", 1, L),  # the Jacobian x_0 -> x_l (x_0 -> x_0 is the identity)
    "st_add_layers_of_2": ("stream", 0, L - 1),  # additive steering adds at x_l, the input of block l
    "st_jac_layer_of_2": ("stream", 1, L),  # Jacobian steering replaces x_l by the phrase's map x_0 -> x_l
}


def meaning(text: str) -> str | None:
    """``stream`` when ``text`` names ``x_l``, ``block`` when it names ``block b``; else None."""
    return "stream" if STREAM.search(text) else "block" if BLOCK.search(text) else None


def in_range(kind: str, values: list[int], n_layers: int = L) -> bool:
    top = n_layers if kind == "stream" else n_layers - 1
    return bool(values) and all(0 <= v <= top for v in values)


# --- pages ------------------------------------------------------------------------------------------
def layer_widgets(at: AppTest) -> Iterator[tuple[str, str, list[int] | None]]:
    """(key, label, the values it offers; None for a widget without numbers) of every widget that mentions a
    layer, a block or ``x_`` in its label."""
    for kind in ("number_input", "slider", "multiselect", "selectbox", "radio", "toggle", "checkbox", "text_input"):
        for w in getattr(at, kind):
            if not MENTIONS.search(w.label):
                continue
            if kind in ("number_input", "slider"):
                values = [int(w.min), int(w.max)]
            elif kind in ("multiselect", "selectbox", "radio"):
                values = [int(o) for o in w.options] if all(str(o).lstrip("-").isdigit() for o in w.options) else None
            else:
                values = None
            yield w.key, w.label, values


def test_every_pages_layer_controls_follow_the_convention(tiny_dirs, fresh_service, monkeypatch) -> None:
    at = open_page(None, tiny_dirs["gpt2"], monkeypatch)
    found: dict[str, tuple[str, list[int]]] = {}
    for page in PAGES:
        at.switch_page(page).run()
        if page == "pages/steering.py":  # every method's controls on the page at once
            at.multiselect(key="st_methods").set_value(["additive", "llv", "jacobian", "lqr"]).run()
        assert_clean(at)
        for key, label, values in layer_widgets(at):
            if values is None:
                continue
            kind = meaning(label)
            assert kind is not None, f"{page}: {label!r} names neither x_l nor block b"
            assert in_range(kind, values), f"{page}: {label!r} offers {values}, outside the {kind} range"
            stated = re.search(r"\((\d+)\s*[–.-]+\s*(\d+)\)", label)
            if stated:  # a range in the label is the widget's range
                assert [int(stated[1]), int(stated[2])] == [min(values), max(values)], label
            found[key] = (kind, values)
    for key, (kind, lo, hi) in EXPECTED.items():
        assert key in found, f"no layer control {key}"
        assert found[key][0] == kind and (min(found[key][1]), max(found[key][1])) == (lo, hi), (key, found[key])


# --- figures and tables -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def handle(gpt2_f64):
    return load_model(gpt2_f64)


def _ints(labels: list) -> list[int]:
    out = []
    for label in labels:
        m = re.search(r"-?\d+", str(label))
        if m:
            out.append(int(m[0]))
    return out


def _values(data) -> list:
    """A figure's array as a flat list (plotly writes numeric arrays as base64 ``{dtype, bdata}``)."""
    if isinstance(data, dict) and "bdata" in data:
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"]).tolist()
    return [] if data is None else np.asarray(data, dtype=object).ravel().tolist()


def axis_ticks(fig: dict, name: str) -> list[int]:
    """The numbers a reader sees on axis ``name`` (``xaxis``, ``yaxis2``...): its tick texts, its tick values
    or the data of the traces drawn on it."""
    axis = fig["layout"].get(name, {})
    if axis.get("ticktext") is not None:
        return _ints(_values(axis["ticktext"]))
    if axis.get("tickvals") is not None:
        return _ints(_values(axis["tickvals"]))
    letter, ref = name[0], name[0] + name[5:]
    values = [v for trace in fig["data"] if trace.get(f"{letter}axis", letter) == ref for v in _values(trace.get(letter))]
    return sorted({int(v) for v in values if isinstance(v, int | float | np.number) and float(v).is_integer()})


def check_figure(fig: go.Figure, n_layers: int = L) -> list[str]:
    """Every layer axis of ``fig`` names x_l or block b and its ticks lie in that range; titles that name a
    layer by number name its x_l. Returns the layer axes found."""
    data = json.loads(fig.to_json())  # as the browser receives it
    found = []
    for name, axis in data["layout"].items():
        if not re.fullmatch(r"[xy]axis\d*", name):
            continue
        title = (axis.get("title") or {}).get("text") or ""
        if not re.search(r"layer|block|depth", title, re.IGNORECASE):
            continue
        kind = meaning(title)
        assert kind is not None, f"axis {name} {title!r} names neither x_l nor block b"
        ticks = axis_ticks(data, name)
        assert in_range(kind, ticks, n_layers), f"axis {name} {title!r}: ticks {ticks} outside the {kind} range"
        found.append(kind)
    title = (data["layout"].get("title") or {}).get("text") or ""
    if re.search(r"\blayer \d", title):
        assert re.search(r"x_\d", title), f"title {title!r} numbers a layer without its x_l"
    return found


def check_table_columns(columns: list[str]) -> None:
    for column in columns:
        if re.search(r"layer|block", column, re.IGNORECASE):
            assert meaning(column) or "layer l" in column, f"column {column!r} names neither x_l nor block b"


def test_spectra_figures(module_service: Service, gpt2_f64: ModelSpec) -> None:
    jac = module_service.jacobian(gpt2_f64, PROMPT, layer=1).result
    full = module_service.spectrum(gpt2_f64, PROMPT, layer=1, k=3, n_decode=3, method="full").result
    for fig in (common.spectrum_figure(jac), common.reconstruction_scatter(jac), common.token_contribution_figure(jac),
                spectra.norm_distribution_figure(full, -1)):
        check_figure(fig)
    r = module_service.layers(gpt2_f64, PROMPT, k=3, n_decode=3, method="full").result
    assert check_figure(spectra.stable_rank_figure(r, -1)) and check_figure(spectra.stable_rank_figure(r))
    for site in r.sites:
        expected = ["stream"] if site == "cumulative" else ["block"]
        assert check_figure(spectra.singular_value_heatmap(r, site, 0)) == expected, site
        assert check_figure(spectra.emergence_figure(r, site)) == expected, site
        table = spectra.emergence_table(r, site)
        check_table_columns(list(table.columns))
        first = list(table.iloc[:, 0])
        assert first == (list(range(1, L + 1)) if site == "cumulative" else list(range(L))), (site, first)
    check_table_columns(list(spectra.stable_rank_table(r).columns))


def test_gains_control_graph_figures(handle) -> None:
    data = load_dataset("sentiment")
    g = analyze_gains(handle, data, order=4, n_eval=2, sizes=SMALL)
    for fig in (gains.mean_curves_figure(g), gains.prompt_curves_figure(g, 0), gains.direction_norms_figure(g)):
        assert check_figure(fig) == ["stream"]
    check_table_columns(list(gains.prompt_table(g).columns) + list(gains.curves_table(g).columns))
    c = analyze_control(handle, data, [1.0], order=4, n_eval=2, sizes=SMALL)
    for fig in (control.schedule_figure(c, 0), control.gains_figure(c)):
        assert check_figure(fig) == ["stream"]
    check_table_columns(list(control.schedules_table(c).columns))
    ids = torch.tensor(handle.info.tokenizer(PROMPT)["input_ids"][:6])
    attribution = prune(build_graph(handle.model, handle.adapter, ids, max_nodes=32, batch_size=32))
    assert check_figure(graph.graph_figure(attribution)) == ["block"]


def test_steering_schedule_figure(module_service: Service, gpt2_f64: ModelSpec) -> None:
    from lldd_core.steering.generate import GenerationSettings
    from lldd_core.steering.methods.additive import AdditiveParams

    r = module_service.steer(gpt2_f64, "The food was", "additive", AdditiveParams(layers=[1]), dataset="sentiment",
                  settings=GenerationSettings(max_new_tokens=2), sizes=SMALL).result
    assert r.schedule.shape == (L,) and r.schedule[1] != 0 and r.schedule[0] == 0  # indexed by l of x_l
    assert check_figure(control.steering_schedule_figure([r])) == ["stream"]


# --- CLI --------------------------------------------------------------------------------------------
def test_cli_layer_flags_say_which_x_l() -> None:
    subparsers = next(a for a in build_parser()._actions if a.choices and "jacobian" in a.choices).choices
    flags = {name: a.help for name, sub in subparsers.items() for a in sub._actions if "--layer" in a.option_strings}
    assert {"jacobian", "spectrum", "steer"} <= flags.keys()
    for name, text in flags.items():
        assert STREAM.search(text) or BLOCK.search(text), (name, text)


@pytest.fixture()
def cli(cache_dir, monkeypatch, capsys):
    monkeypatch.setattr(service_module, "_SERVICE", None)

    def run(*argv: str) -> dict:
        assert main([*argv, "--json", "-", "--quiet"]) == 0
        return json.loads(capsys.readouterr().out)

    return run


def test_cli_json_layer_fields(cli, tiny_dirs) -> None:
    model = ["--model", str(tiny_dirs["gpt2"]), "--device", "cpu"]
    assert cli("jacobian", *model, "--prompt", PROMPT, "--layer", "1")["layer"] == 1
    data = cli("layers", *model, "--prompt", PROMPT, "--top-k", "2", "--decode", "2", "--method", "full")
    # each entry: the views into x_l; its block views are those of block l - 1 (x_{l-1} -> x_l)
    assert [(e["layer"], e["of_block"]) for e in data["layers"]] == [(l, l - 1) for l in range(1, L + 1)]
    steer = cli("steer", *model, "--prompt", "The food was", "--method", "jacobian", "--layer", "1",
                "--steer-text", "The Golden Gate", "--max-new-tokens", "2")
    assert steer["params"]["layer"] == 1


# --- the numbers mean what they say -----------------------------------------------------------------
def test_layer_l_means_x_l(handle) -> None:
    """The Jacobian at layer l reconstructs x_l of the last token; additive steering at l adds to x_l only
    (x_{l-1} unchanged); Jacobian steering at l replaces x_l (x_{l-1} unchanged)."""
    ids = handle.info.tokenizer(PROMPT)["input_ids"]
    states = last_token_states(handle.model, handle.adapter, [ids])[0]  # [L + 1, d]: x_0..x_L
    from lldd_core.analysis.jacobian import analyze_jacobian

    for layer in range(1, L + 1):
        r = analyze_jacobian(handle, ids, layer=layer, final_norm=False)
        np.testing.assert_allclose(r.y, states[layer], atol=1e-10)

    blocks = handle.adapter.layers(handle.model)

    def hidden(interventions) -> np.ndarray:
        """x_0..x_{L-1} of the last token as the blocks read them (captured after the interventions' hooks)."""
        batch, seen = torch.tensor([ids]), {}
        grabs = [hk.capture(blocks[b], seen, b, at="input", select=lambda h: h[0, -1].detach()) for b in range(L)]
        with intervene(handle.model, handle.adapter, interventions, attention_mask=torch.ones_like(batch)), \
                hk.hooks(*grabs), torch.no_grad():
            handle.model(input_ids=batch)
        return torch.stack([seen[b] for b in range(L)]).double().numpy()

    base = hidden([])
    np.testing.assert_allclose(base, states[:L], atol=1e-10)
    w = torch.ones(handle.info.d_model, dtype=torch.float64)
    steered = hidden([AddVectors({1: w})])
    np.testing.assert_allclose(steered[0], base[0], atol=1e-12)
    np.testing.assert_allclose(steered[1], base[1] + 1.0, atol=1e-10)
    J = analyze_steering_jacobian(handle, "The Golden Gate", 1)
    assert J.layer == 1
    steered = hidden([JacobianSteering(torch.as_tensor(J.J), 1, 0.5, "blend", b=torch.as_tensor(J.b))])
    np.testing.assert_allclose(steered[0], base[0], atol=1e-12)
    assert np.abs(steered[1] - base[1]).max() > 1e-6
