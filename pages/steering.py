"""Steering view: a prompt's continuation steered by one or more methods, beside the unsteered one.

UI only: a prompt, generation settings, the registered steering methods
(:mod:`lldd_core.steering.methods.registry`) with their controls (the built-in ones laid out by hand, any
other built from its ``Params`` fields) and a concept dataset (:mod:`pages.common.datasets`) -> one
``get_service().steer(spec, prompt, method, params)`` per method, tokens streamed into the page
as they are generated -> texts side by side with the differences highlighted, the concept readout
along the generated tokens, the schedules and parameters from :mod:`lldd_core.plots.control`.
Errors a user can cause show as ``st.error``; the last good result stays on screen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from lldd_core import ranges
from lldd_core.analysis.settings import SplitSizes
from lldd_core.concepts.data import ConceptData
from lldd_core.errors import InputError
from lldd_core.forward.interventions import JACOBIAN_VARIANTS, LQR_AT, POSITIONS
from lldd_core.layering import depth
from lldd_core.models.loading import ModelSpec
from lldd_core.plots.control import (
    diff_marks,
    differing,
    has_readout,
    has_schedule,
    mean_readouts,
    params_table,
    readout_figure,
    readout_table,
    settings_line,
    steering_schedule_figure,
    text_html,
    tokens_html,
)
from lldd_core.plots.gains import splits_line
from lldd_core.plots.spectra import file_slug
from lldd_core.service import get_service
from lldd_core.steering.calibrate import DEFAULT_SHIFT
from lldd_core.steering.compare import SteeringResult
from lldd_core.steering.examples import examples
from lldd_core.steering.generate import CallbackStreamer, GenerationSettings
from lldd_core.steering.methods.additive import AdditiveParams
from lldd_core.steering.methods.base import SteeringMethod, options
from lldd_core.steering.methods.jacobian import JacobianParams
from lldd_core.steering.methods.llv import LLVParams
from lldd_core.steering.methods.lqr import SETPOINTS, LQRParams
from lldd_core.steering.methods.registry import get as get_method
from lldd_core.steering.methods.registry import names as method_names
from lldd_core.steering.pieces import default_jacobian_layer
from lldd_core.store.export import csv_text
from pages.common.datasets import dataset_picker
from pages.common.forms import order_input, prompt_area, seed_input, view_start
from pages.common.link import replaying
from pages.common.nav import run_view
from pages.common.ui import Shown, chart, current_theme, plural, run_with_status, table

#: Session-state key of the last successful run: a list of :class:`Shown`, one per method.
RESULT_KEY = "steer.last"
#: The example datasets the page offers prompts of, and the default prompt: a negative review, begun.
EXAMPLE_DATASETS = ("sentiment", "politeness", "topic", "truth")
DEFAULT_PROMPT = examples("sentiment")[0]
OWN_TEXT = "(your own text)"
DEFAULT_STEER_TEXT = "The Golden Gate"
DEFAULT_MAX_NEW = 40
DECODINGS = {"greedy": "greedy", "sampling": "sampling (seeded)"}

#: How the calibrated defaults choose where to steer (lldd_core.steering.calibrate.steering_layers).
LLV_RULE = ("Defaults: the least-energy schedule over the trusted layers up to the exact gain's peak (later layers "
            "write the concept's output tokens instead of changing the text), its amplitude set by the exact gains so "
            "the predicted readout shift is Δy. Where the gain peaks at the first trusted layer, that layer alone.")
LQR_RULE = ("Defaults: feedback at block inputs x_k of the trusted layers up to the exact gain's peak, towards the "
            "target class's mean (class-mean setpoint, λ = 1), state cost ten times the control cost (q = 10, r = 1).")

READOUT_NOTE = (
    "The concept readout `v_Lᵀ x_L` (the class-mean direction at the last block's output, before the final norm) at "
    "each generated token, as the **unsteered** model reads prompt + continuation: both texts are measured by the "
    "same instrument, so a method cannot raise it merely by writing into the states it is read from."
)


def max_new_limit(context: int | None) -> int:
    """The most new tokens the page offers: :data:`~lldd_core.ranges.MAX_NEW_TOKENS`, fewer when the model's
    context is shorter (at least one prompt token must fit beside them)."""
    return ranges.MAX_NEW_TOKENS if context is None else max(1, min(ranges.MAX_NEW_TOKENS, context - 1))


def generation_settings(context: int | None) -> GenerationSettings:
    """Max new tokens (bounded by the model's ``context``) and decoding (greedy, or sampling with a seed,
    temperature and top-p)."""
    c1, c2, c3, c4, c5 = st.columns([1, 1.5, 1, 1, 1])
    top = max_new_limit(context)
    max_new = c1.number_input(
        "Max new tokens", **ranges.MAX_NEW.widget(hi=top), value=min(DEFAULT_MAX_NEW, top), step=1,
        key=f"st_max_new_of_{top}",  # another model's context gets a fresh widget, never an out-of-range value
        help=ranges.MAX_NEW.sentence(hi=top)
        + (f" The prompt plus these must fit the model's {context} positions." if context else ""))
    decoding = c2.radio("Decoding", list(DECODINGS), format_func=DECODINGS.get, horizontal=True, key="st_decoding",
                        help="greedy: always the most likely token. sampling: seeded, so a run is reproducible.")
    if decoding == "greedy":
        return GenerationSettings(max_new_tokens=int(max_new))
    temperature = c3.number_input("Temperature", **ranges.TEMPERATURE.widget(), value=1.0, step=0.1,
                                  key="st_temperature", help=f"{ranges.TEMPERATURE.describe()}.")
    top_p = c4.number_input("Top-p", **ranges.TOP_P.widget(), value=1.0, step=0.05, key="st_top_p",
                            help="Nucleus sampling: keep the most likely tokens up to this probability mass "
                            f"({ranges.TOP_P.describe()}).")
    seed = seed_input(c5, "st_sample_seed")
    return GenerationSettings(max_new_tokens=int(max_new), do_sample=True, temperature=float(temperature),
                              top_p=float(top_p), seed=int(seed))


def additive_controls(n_layers: int, d: int) -> AdditiveParams | str:
    """The additive method's controls: its settings, or a message saying what is missing."""
    c1, c2, c3 = st.columns(3)
    c1, c2, c3, c4 = st.columns([1.3, 1, 1, 1])
    layers = c1.multiselect(
        f"Layers l: x_l (0–{n_layers - 1})", list(range(n_layers)), default=[], key=f"st_add_layers_of_{n_layers}",
        placeholder="calibrated: largest gain",
        help=f"Residual-stream layers x_l (0..{n_layers - 1}; block l reads x_l) that get α·v_l. Empty: the layer "
        "whose concept direction moves the readout most (largest exact gain, trusted directions only).",
    )
    strength = c2.number_input(
        "Strength α", **ranges.STRENGTH.widget(), value=None, step=0.5, format="%.4g", key="st_add_strength",
        placeholder="calibrated",
        help=f"Amount along the unit direction v_l, {ranges.STRENGTH.describe()}. Empty: calibrated, α = shift · "
        "‖E_L‖ / gain, so the predicted readout shift is the shift in class-mean distances; negative values push "
        "towards the other class.",
    )
    shift = shift_input(c3, "st_add_shift")
    positions = c4.radio("Positions", POSITIONS, horizontal=True, key="st_add_positions",
                         help="last: only the newest token of every forward; all: every position.")
    return AdditiveParams(layers=sorted(int(layer) for layer in layers) or None,
                          strength=None if strength is None else float(strength), positions=str(positions),
                          shift=shift)


def shift_input(col: DeltaGenerator, key: str) -> float:
    """The calibration's target: the predicted readout shift in class-mean distances ‖E_L‖."""
    return float(col.number_input(
        "Shift (class-mean distances)", **ranges.SHIFT.widget(), value=DEFAULT_SHIFT, step=0.1, format="%.3g",
        key=key, help="Target of the calibrated default: the predicted readout shift at x_L, in class-mean distances "
        f"‖E_L‖ (0.5: from a class mean to the boundary, 1: to the other mean); {ranges.SHIFT.describe()}."))


def llv_controls(n_layers: int, d: int) -> LLVParams:
    c1, c2, c3 = st.columns(3)
    dy = c1.number_input("Target shift Δy", **ranges.DY.widget(), value=None, step=0.5, format="%.4g",
                         key="st_llv_dy", placeholder="calibrated",
                         help="Readout change the surrogate's least-energy schedule aims for "
                         f"({ranges.DY.describe()}). Empty: calibrated, Δy = shift · ‖E_L‖.")
    shift = shift_input(c2, "st_llv_shift")
    order = order_input(c3, d, "st_llv_order", help=f"Order of the LLV surrogate: {ranges.ORDER.describe(hi=d)}.",
                        value=LLVParams.order)
    st.caption(LLV_RULE)
    return LLVParams(dy=None if dy is None else float(dy), order=int(order), shift=shift)


def jacobian_controls(n_layers: int, d: int) -> JacobianParams:
    c1, c2, c3, c4 = st.columns([3, 2, 1, 2])
    text = c1.text_input("Steering phrase", value=DEFAULT_STEER_TEXT, key="st_jac_text",
                         help="Its detached Jacobian at the chosen layer is applied to the new text's inputs.")
    layer = c2.number_input(f"Layer l: x_l (1–{n_layers})", **ranges.JACOBIAN_LAYER.widget(hi=n_layers),
                            value=default_jacobian_layer(n_layers), step=1, key=f"st_jac_layer_of_{n_layers}",
                            help=f"The phrase's Jacobian x_0 → x_l steers the new text at x_l (the output of block "
                            f"l − 1), l = 1..{n_layers}.")
    # the variant first (drawn in the last column): λ's range depends on it
    variant = c4.radio("Variant", JACOBIAN_VARIANTS, horizontal=True, key="st_jac_variant",
                       help="blend: h ← λh + (1−λ)a (the paper). additive: h ← h + λ·a·‖h‖/(2‖a‖) (the reference "
                       "implementation).")
    lam_range = ranges.lam_range("jacobian", str(variant))
    lam = c3.number_input("λ", **lam_range.widget(), value=0.5, step=0.1, format="%.4g", key=f"st_jac_lam_{variant}",
                          help=lam_range.sentence())
    st.caption("λ = 1 with blend, or λ = 0 with additive, leaves the text unsteered.")
    return JacobianParams(steer_text=str(text), layers=[int(layer)], lam=float(lam), variant=str(variant))


def lqr_controls(n_layers: int, d: int) -> LQRParams:
    c1, c2, c3, c4 = st.columns(4)
    q = c1.number_input("q (state cost)", **ranges.Q.widget(), value=LQRParams.q, step=1.0, format="%.4g",
                        key="st_lqr_q", help=ranges.Q.sentence())
    r = c2.number_input("r (control cost)", **ranges.R.widget(), value=LQRParams.r, step=1.0, format="%.4g",
                        key="st_lqr_r", help=ranges.R.sentence())
    qf = c3.number_input("q_f (final cost)", **ranges.QF.widget(), value=LQRParams.qf, step=1.0, format="%.4g",
                         key="st_lqr_qf", help=ranges.QF.sentence())
    lam = c4.number_input("λ (setpoint)", **ranges.LAM_LQR.widget(), value=1.0, step=0.25, format="%.4g",
                          key="st_lqr_lam", help="class-mean: β_k = v_k·(μ_1+μ_0)/2 + λ‖E_k‖/2 (1: the target class's "
                          f"mean, 0: the boundary); scaled: β_k = λ‖E_k‖; {ranges.LAM_LQR.describe()}.")
    c5, c6 = st.columns(2)
    setpoint = c5.radio("Setpoint", SETPOINTS, horizontal=True, key="st_lqr_setpoint",
                        help="class-mean: towards the class means (λ = 1: the target class's mean along v_k); "
                        "scaled: the reference's λ‖E_k‖.")
    at = c6.radio("Acts on", LQR_AT, index=LQR_AT.index(LQRParams.at), horizontal=True, key="st_lqr_at",
                  help="input: corrects block k's input x_k at the trusted layers up to the gain's peak (where additive "
                  "and LLV steer); output: the reference, block k's output at every layer.")
    st.caption(LQR_RULE)
    return LQRParams(q=float(q), r=float(r), qf=float(qf), lam=float(lam), setpoint=str(setpoint), at=str(at))


#: The built-in methods' hand-laid controls; any other registered method gets :func:`generic_controls`.
CONTROLS: dict[str, Callable[[int, int], Any]] = {
    "additive": additive_controls, "llv": llv_controls, "jacobian": jacobian_controls, "lqr": lqr_controls,
}


def generic_controls(method: SteeringMethod) -> Any:
    """One widget per option of ``method``'s ``Params`` (a number, a choice, a text, or comma-separated
    numbers) with the field's default: its settings, or a message saying what is wrong."""
    fields = options(method.Params)
    values: dict[str, Any] = {}
    for col, (field, opt) in zip(st.columns(max(1, len(fields))), fields):
        key, label = f"st_{method.name}_{field.name}", field.name.replace("_", " ")
        rng = opt.range
        if opt.choices:
            values[field.name] = col.radio(label, opt.choices, key=key, help=opt.help,
                                           index=list(opt.choices).index(field.default))
        elif rng is not None and not opt.many:
            values[field.name] = col.number_input(label, **rng.widget(), value=field.default, key=key,
                                                  step=1 if rng.kind is int else None,
                                                  help=f"{opt.help}: {rng.describe()}.")
        elif rng is not None:
            text = col.text_input(label, value=",".join(map(str, field.default or ())), key=key,
                                  help=f"{opt.help}: comma-separated, each {rng.describe()}.")
            try:
                values[field.name] = ranges.parse_list(text, rng) if text.strip() else None
            except InputError as err:
                return str(err)
        else:
            values[field.name] = col.text_input(label, value=str(field.default), key=key, help=opt.help)
    return method.Params(**values)


def method_controls(method: str, n_layers: int, d: int) -> Any:
    """One method's box: its one-line explanation and controls; its settings or what is missing."""
    chosen = get_method(method)
    with st.container(border=True):
        st.markdown(f"**{method}** — {chosen.help}")
        controls = CONTROLS.get(method)
        return controls(n_layers, d) if controls is not None else generic_controls(chosen)


def split_settings() -> dict:
    """Split sizes and seed of the concept dataset (directions, operating prompts)."""
    with st.expander("Concept splits"):
        cols = st.columns(4)
        sizes = [
            cols[i].number_input(name.capitalize(), **rng.widget(), value=SplitSizes()[i],
                                 step=50, key=f"st_{name}")
            for i, (name, rng) in enumerate(zip(("concept", "operating", "evaluation"), ranges.SIZES))
        ]
        seed = seed_input(cols[3], "st_seed", help="Seed of the splits.")
    return {"sizes": tuple(int(n) for n in sizes), "seed": int(seed)}


@dataclass
class Slots:
    """The live text placeholders: the unsteered column and one per method."""

    unsteered: DeltaGenerator
    steered: dict[str, DeltaGenerator]


def writer(slot: DeltaGenerator) -> Callable[[str], None]:
    """A streamer callback that shows the text so far in ``slot``."""
    return lambda text: slot.markdown(text_html(text), unsafe_allow_html=True)


def live_columns(methods: list[str]) -> Slots:
    """Empty columns (unsteered, then each method) with a placeholder each, for streaming."""
    cols = st.columns(1 + len(methods))
    cols[0].markdown("**Unsteered**")
    unsteered = cols[0].empty()
    steered = {}
    for col, method in zip(cols[1:], methods):
        col.markdown(f"**Steered: {method}**")
        steered[method] = col.empty()
    return Slots(unsteered, steered)


def generate(spec: ModelSpec, prompt: str, plan: dict[str, Any], common: dict, status: DeltaGenerator,
             slots: Slots) -> list[Shown] | None:
    """One ``steer`` per method with tokens streamed into ``slots``; ``None`` at the first user error (shown)."""
    service = get_service()
    tokenizer = service.info(spec).tokenizer
    out: list[Shown] = []
    for method, params in plan.items():
        streamers = (None if out else CallbackStreamer(tokenizer, writer(slots.unsteered)),
                     CallbackStreamer(tokenizer, writer(slots.steered[method])))

        def call(progress, method=method, params=params, streamers=streamers):
            return service.steer(spec, prompt, method, params, streamers=streamers, progress=progress, **common)

        with status:
            computed = run_with_status(f"{get_method(method).label} steering", call)
        if computed is None:
            return None
        r = computed.result
        slots.unsteered.markdown(text_html(r.unsteered), unsafe_allow_html=True)  # a cache hit does not stream
        slots.steered[method].markdown(text_html(r.steered), unsafe_allow_html=True)
        out.append(Shown(r, computed.cache_hit, spec, prompt))
    return out


def show_texts(shown: list[Shown]) -> None:
    """The prompt, then the unsteered text and each steered one side by side, differences highlighted."""
    first: SteeringResult = shown[0].result
    st.markdown("**Prompt**")
    st.text(first.prompt)
    cols = st.columns(1 + len(shown))
    with cols[0]:
        st.markdown("**Unsteered**")
        st.markdown(tokens_html(first.unsteered_tokens), unsafe_allow_html=True)
        st.caption(plural(len(first.unsteered_tokens), "new token"))
    for col, item in zip(cols[1:], shown):
        r: SteeringResult = item.result
        _, marks = diff_marks(r.unsteered_tokens, r.steered_tokens)
        origin = "from cache" if item.cache_hit else f"computed in {r.elapsed_s:.2f} s"
        with col:
            st.markdown(f"**Steered: {r.method}**")
            st.markdown(tokens_html(r.steered_tokens, marks), unsafe_allow_html=True)
            st.caption(f"{differing(marks)} of {plural(len(marks), 'token')} differ from the unsteered text · {origin}")
            if r.params.get("rule"):
                st.caption(f"{r.params['rule']}.")
            verdict = r.verdict(r.readout_steered)
            if verdict:
                st.caption(f"Verdict (mean readout against the class-mean boundary {r.boundary:.3g}): "
                           f"{r.verdict(r.readout_unsteered)} → **{verdict}**")
            if r.steered_loop:
                st.warning(f"The steered text loops: it repeats “{r.steered_loop.strip()}”. The steering is too "
                           "strong here: lower the strength (or the shift)."
                           + (" The unsteered text loops too." if r.unsteered_loop else ""), icon="⚠️")
    st.caption("Highlighted: tokens only the steered text has (the two token sequences aligned by difflib).")


def show_details(shown: list[Shown]) -> None:
    """Readout along the tokens, schedules over layers, parameters, and the CSV download."""
    results = [s.result for s in shown]
    first = results[0]
    slug = file_slug(f"{first.model}_steer")
    st.caption(f"`{first.model}` ({first.family}, {first.dtype}) · {settings_line(first)}"
               + (f" · dataset `{first.dataset}`" if first.dataset else "")
               + (f", splits {splits_line(first.split_sizes)[0]}" if first.split_sizes else ""))
    st.subheader("Concept readout")
    if has_readout(results):
        st.caption(READOUT_NOTE)
        means = mean_readouts(results)
        base = means.pop("unsteered")
        row = st.columns(1 + len(means))
        row[0].metric("Mean readout: unsteered", f"{base:.4g}")
        for col, (method, value) in zip(row[1:], means.items()):
            col.metric(f"Mean readout: {method}", f"{value:.4g}", delta=f"{value - base:+.4g}",
                       help="Mean over the generated tokens; the change is against the unsteered text.")
        chart(readout_figure(results, theme=current_theme()), "st_readout_chart", f"{slug}_readout")
    else:
        st.info("No concept readout: the Jacobian method ran without a concept dataset.")
    if has_schedule(results):
        st.subheader("Schedule over layers")
        chart(steering_schedule_figure(results, theme=current_theme()), "st_schedule_chart", f"{slug}_schedule")
    st.subheader("Parameters used")
    table(params_table(results), key="st_params", name="parameters")
    st.download_button(
        "Download texts and readouts (CSV)", data=lambda: csv_text(readout_table(results)),
        file_name=f"{slug}.csv", mime="text/csv", on_click="ignore", key="st_readout_csv",
    )


def _use_example() -> None:
    """Copy the chosen example into the prompt box (its own text stays when "your own text" is chosen)."""
    choice = st.session_state.get("st_example")
    if isinstance(choice, tuple):
        st.session_state["st_prompt"] = choice[1]


def example_prompt() -> str:
    """A pick of in-domain examples (texts of the class steering moves away from, per built-in dataset) and the
    prompt box they fill; the default prompt is the first negative review."""
    choices: list[Any] = [(name, text) for name in EXAMPLE_DATASETS for text in examples(name)]
    st.selectbox("Example prompt", [*choices, OWN_TEXT], key="st_example", on_change=_use_example,
                 format_func=lambda c: c if isinstance(c, str) else f"{c[0]}: {c[1]}",
                 help="Begun texts of the class the concept moves away from (a negative review, a rude request, "
                 "...), none of them in the concept split. Steer them towards the dataset's first class.")
    return prompt_area("st_prompt", DEFAULT_PROMPT, height=80)


def inputs(n_layers: int, d: int, context: int | None) -> tuple[str, dict[str, Any], dict, list[str]]:
    """Every input widget; (prompt, per-method settings, common keyword arguments, problems)."""
    prompt = example_prompt()
    settings = generation_settings(context)
    methods = st.multiselect(
        "Methods", list(method_names()), default=["additive"], key="st_methods",
        help="Each selected method is generated beside the same unsteered text.",
    )
    problems: list[str] = [] if methods else ["Choose at least one method."]
    plan: dict[str, Any] = {}
    for method in method_names():
        if method not in methods:
            continue
        controls = method_controls(method, n_layers, d)
        if isinstance(controls, str):
            problems.append(controls)
        else:
            plan[method] = controls
    needs = [m for m in methods if get_method(m).needs_dataset]
    st.markdown("**Concept dataset** " + (f"(needed by {', '.join(needs)})" if needs else "(optional)"))
    use = bool(needs) or st.checkbox(
        "Read the concept along the generated tokens", value=True, key="st_use_dataset",
        help="The Jacobian method needs no concept; with a dataset the page also plots the concept readout.",
    )
    dataset: str | ConceptData | None = None
    splits = {}
    if use:
        dataset = dataset_picker("st_ds")
        splits = split_settings()
        if dataset is None:
            problems.append("Choose a concept dataset.")
    common = {"dataset": dataset, "settings": settings, **splits}
    return prompt, plan, common, problems


def main() -> None:
    spec, shape = view_start(
        "Steering",
        "Steer a model's continuation of a prompt along a concept (or a phrase) and compare it with the "
        "unsteered text, token by token.",
    )
    submitted, prompt, plan, common = False, "", {}, {}
    if shape is not None:
        n_layers, d = shape
        context = get_service().info(spec).max_positions  # resolved already (model_shape): memoized
        st.caption(f"`{spec.model}`: {depth(n_layers)}, hidden size {d}"
                   + (f", {context} positions." if context else "."))
        prompt, plan, common, problems = inputs(n_layers, d, context)
        for problem in problems:
            st.info(problem)
        submitted = st.button("Generate", type="primary", key="st_generate", disabled=bool(problems)) or (
            replaying() and not problems)
    area = st.empty()  # the texts: live while they stream, at the top of the result area
    status = st.container()  # the status boxes, under the text (each collapses when done)
    details = st.empty()  # readout, schedules and parameters; emptied first, so nothing stale sits under the text
    if submitted:
        details.empty()
        with area.container():
            slots = live_columns(list(plan))
        shown = generate(spec, prompt, plan, common, status, slots)
        area.empty()
        if shown is not None:
            st.session_state[RESULT_KEY] = shown
    last = st.session_state.get(RESULT_KEY)
    has_result = isinstance(last, list) and bool(last) and all(
        isinstance(s, Shown) and isinstance(s.result, SteeringResult) for s in last)
    if has_result:
        with area.container():
            show_texts(last)
        with details.container():
            show_details(last)
    elif shape is not None and not submitted:
        details.info("Type a prompt, choose one or more methods and press **Generate**.")


run_view(main)  # under app.py, also when Streamlit runs this file directly
