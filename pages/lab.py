"""Steering lab view: is this steering any good? Success, fluency and side effects over methods, layers, strengths.

UI only: a concept dataset, the methods with each one's knob values, the layers, the prompts and the judging
thresholds -> one ``get_service().steer_sweep(spec, dataset, SweepSettings)`` (progress per cell, every cell
cached on its own) -> the Pareto plot (:mod:`lldd_core.plots.lab`), the recommendation per method with a button
that opens the Steering page on it (:mod:`pages.common.handoff`), the LLV-predicted best layer beside the measured
one with the forward passes saved, and the table of every cell (CSV).
"""

from __future__ import annotations

import streamlit as st

from lldd_core import ranges
from lldd_core.errors import InputError
from lldd_core.plots.lab import pareto_figure, recommendation_line, rows_table
from lldd_core.plots.spectra import file_slug
from lldd_core.service import get_service
from lldd_core.steering.lab.answers import SweepResult
from lldd_core.steering.lab.knobs import knob, swept
from lldd_core.steering.lab.settings import SweepSettings
from lldd_core.store.export import csv_text
from pages.common.datasets import dataset_picker
from pages.common.forms import seed_input, split_size_inputs, view_start
from pages.common.handoff import send_to_steering
from pages.common.link import fields, replaying
from pages.common.nav import run_view
from pages.common.ui import Shown, chart, current_theme, kept, run_with_status, table

RESULT_KEY = "lab.last"
SUCCESS_BY = {"auto": "auto (judge if given, else verdict)", "verdict": "verdict (readout vs boundary)",
              "probe": "concept probe", "judge": "external judge"}


def strengths_inputs(methods: list[str]) -> tuple[tuple[tuple[str, tuple[float, ...]], ...], list[str]]:
    """One comma-separated text input per chosen method (its own knob); the values and any problems."""
    out, problems = [], []
    cols = st.columns(max(1, len(methods)))
    for col, method in zip(cols, methods):
        k = knob(method)
        key = f"lb_strengths_{method}"
        fields(key)
        text = col.text_input(f"{method}: {k.symbol} ({k.name})", value=",".join(f"{v:g}" for v in k.defaults),
                              key=key, help=f"Comma-separated values of the {method} method's knob, each "
                              f"{k.range.describe()}; 0 leaves the text unsteered.")
        try:
            out.append((method, tuple(float(v) for v in ranges.parse_list(text, k.range))))
        except InputError as err:
            problems.append(str(err))
    return tuple(out), problems


def inputs(n_layers: int, d: int) -> tuple[object, SweepSettings | None, list[str]]:
    """Every widget: (dataset, settings or ``None``, problems)."""
    dataset = dataset_picker("lb_ds")
    fields("lb_methods", f"lb_layers_of_{n_layers}", "lb_n_prompts", "lb_max_new", "lb_target", "lb_budget",
           "lb_success_by", "lb_classifier")
    methods = st.multiselect("Methods", list(swept()), default=["additive", "llv"], key="lb_methods",
                             help="Each method is swept over its own knob: additive α, LLV Δy, Jacobian λ "
                             "(norm-matched variant), LQR state weight q.")
    problems = [] if methods else ["Choose at least one method."]
    strengths, bad = strengths_inputs(methods)
    problems += bad
    c1, c2, c3 = st.columns([2, 1, 1])
    layers = c1.multiselect(f"Layers l: x_l (additive 0–{n_layers - 1}, Jacobian 1–{n_layers})",
                            list(range(n_layers + 1)), default=[], key=f"lb_layers_of_{n_layers}",
                            placeholder="additive 1..L-1, Jacobian its default",
                            help="Layers of the methods that steer at one layer; LLV and LQR steer every layer.")
    n_prompts = c2.number_input("Evaluation prompts", **ranges.N_PROMPTS.widget(), value=4, step=1,
                                key="lb_n_prompts", help="Evaluation-split texts of the class steered away from.")
    max_new = c3.number_input("New tokens", **ranges.MAX_NEW.widget(hi=64), value=12, step=1, key="lb_max_new",
                              help="Greedy continuation length of every cell.")
    c4, c5, c6, c7 = st.columns(4)
    target = c4.number_input("Success target", **ranges.SUCCESS_TARGET.widget(), value=0.75, step=0.05,
                             key="lb_target", help="The share of texts the recommendation must reach.")
    budget = c5.number_input("Fluency budget (× unsteered perplexity)", **ranges.FLUENCY_BUDGET.widget(), value=3.0,
                             step=0.5, key="lb_budget", help="The most perplexity the recommendation may cost.")
    by = c6.selectbox("Success by", list(SUCCESS_BY), format_func=SUCCESS_BY.get, key="lb_success_by")
    classifier = c7.text_input("External judge (optional)", value="", key="lb_classifier",
                               help="A local Hugging Face sequence-classification model directory (or cached id).")
    with st.expander("Concept splits"):
        sizes = split_size_inputs("lb")
        seed = seed_input(st, "lb_seed", help="Seed of the splits.")
    if dataset is None:
        problems.append("Choose a concept dataset.")
    if problems:
        return dataset, None, problems
    settings = SweepSettings(methods=tuple(methods), layers=tuple(int(x) for x in layers) or None,
                             strengths=strengths, n_prompts=int(n_prompts), max_new_tokens=int(max_new),
                             sizes=tuple(sizes), seed=int(seed), success_target=float(target),
                             fluency_budget=float(budget), success_by=None if by == "auto" else by,
                             classifier=classifier.strip() or None)
    return dataset, settings, []


def show(shown: Shown, n_layers: int) -> None:
    """The answers: best layers and passes, recommendations (with hand-over buttons), the plot, the table."""
    r: SweepResult = shown.result
    fp = r.forward_passes
    m = st.columns(5)
    m[0].metric("Probe held-out accuracy", f"{r.probe_accuracy:.3f}",
                help="Logistic regression on x_L last-token states of the concept split, tested on the evaluation split.")
    m[1].metric("Best layer: LLV predicted", "–" if r.predicted_best_layer is None else f"x_{r.predicted_best_layer}")
    m[2].metric("Best layer: measured", "–" if r.measured_best_layer is None else f"x_{r.measured_best_layer}",
                help="The swept additive layer with the largest mean readout shift.")
    m[3].metric("Forward passes saved", f"{fp['saved']:,}",
                help=f"A full additive layer sweep ({fp['layers']} layers × {fp['strengths']} strengths) costs "
                f"{fp['full_layer_sweep']:,} passes; at the predicted layer alone {fp['predicted_layer_sweep']:,}. "
                f"The prediction took {fp['prediction_jvps']:,} Jacobian-vector products.")
    m[4].metric("Cells new / cached", f"{r.cells_computed} / {r.cells_cached}",
                help="Cells computed by this run / read from the cache (a widened sweep computes only its new cells).")
    st.caption(f"`{r.model}` · dataset `{r.dataset}`, steering towards **{r.target}** · {len(r.prompts)} prompts, "
               f"{r.settings['max_new_tokens']} new tokens (greedy) · success by {r.success_by} · every metric read "
               "by the unsteered model; KL on neutral prompts.")
    st.subheader("Recommended settings")
    for method, rec in r.recommended.items():
        c1, c2 = st.columns([5, 1])
        c1.markdown(recommendation_line(method, rec, r))
        if rec is not None:
            index = r.rows.index(rec) if rec in r.rows else None
            row = {**rec, "params": r.details[index]["params"] if index is not None else {}}
            if c2.button("Open in Steering", key=f"lb_send_{method}",
                         help="Opens the Steering page with this method, layer and strength."):
                send_to_steering(row, n_layers, r.dataset, r.settings["steer_text"])
    chart(pareto_figure(r, theme=current_theme()), "lb_pareto_chart", "lab_pareto")
    st.subheader("Every setting")
    rows = rows_table(r)
    table(rows, key="lb_table", name="lab_sweep")
    st.download_button("Download the sweep (CSV)", data=lambda: csv_text(rows), file_name=file_slug(
        f"{r.model}_lab") + ".csv", mime="text/csv", on_click="ignore", key="lb_csv")


def main() -> None:
    spec, shape = view_start(
        "Steering lab",
        "Which method, layer and strength? Sweep them and see what steering achieves (success) and what it costs "
        "(fluency, repetition, side effects), with the LLV prediction of the best layer.")
    if shape is None:
        return
    n_layers, d = shape
    dataset, settings, problems = inputs(n_layers, d)
    for problem in problems:
        st.info(problem)
    run = st.button("Run sweep", type="primary", key="lb_run", disabled=bool(problems)) or (
        replaying() and not problems)
    if run and settings is not None:
        computed = run_with_status("Steering lab sweep", lambda progress: get_service().steer_sweep(
            spec, dataset, settings, progress=progress))
        if computed is not None:
            if computed.warning:
                st.warning(computed.warning)
            st.session_state[RESULT_KEY] = Shown(computed.result, computed.cache_hit, spec, "")
    last = kept(RESULT_KEY, SweepResult)
    if last is not None:
        show(last, n_layers)
    elif not run:
        st.info("Choose methods and strengths and press **Run sweep**.")


run_view(main)  # under app.py, also when Streamlit runs this file directly
