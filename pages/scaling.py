"""Scaling view: how well the LLV surrogate predicts gain curves as models grow.

UI only: a model family (or a list of models), datasets and the gain settings ->
:func:`lldd_core.sweep.study.sweep_status` (the result cache alone: instant, loads no weights) -> the status
table and the agreement-vs-size figure of :mod:`lldd_core.plots.scaling`; the "Compute missing" button
runs :func:`lldd_core.sweep.study.run_sweep` (the same ``gains`` analysis and cache as the Gain curves page
and ``python -m lldd_core gains`` / ``sweep``). Models or datasets that cannot be used here (e.g. a
hub model not downloaded, offline) show as *unavailable* with the reason; errors never end the session.
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

# Private, but the only way to recognise Streamlit's rerun/stop signals (see pages/common/build.py).
from streamlit.runtime.scriptrunner_utils.exceptions import ScriptControlException

from lldd_core.analysis.settings import COMPLEMENTS, MODES, GainsSettings
from lldd_core.concepts.catalog import DatasetListing, list_datasets
from lldd_core.concepts.data import ConceptData
from lldd_core.errors import LLDDError
from lldd_core.models.loading import ModelSpec
from lldd_core.plots.gains import splits_line
from lldd_core.plots.scaling import cells_table, scaling_figure
from lldd_core.ranges import ORDER, SIZES
from lldd_core.service import Computed, get_service
from lldd_core.store.export import csv_text
from lldd_core.sweep.study import (
    FAMILIES,
    SweepCell,
    SweepReport,
    fill_params,
    load_data,
    needs_download,
    parse_list,
    run_sweep,
    summary_line,
    sweep_status,
)
from pages.common.datasets import listing_label
from pages.common.forms import eps_input, n_eval_input
from pages.common.nav import run_view
from pages.common.sidebar import current_spec
from pages.common.ui import chart, current_theme, plural, run_with_status, table

#: The family choice that reveals a free list of models.
CUSTOM = "custom"
FAMILY_LABELS = {
    "demo": "demo — lldd's own GPT-2 models (small, medium, large; nothing downloaded)",
    "gpt2": "gpt2 — GPT-2, -medium, -large (the LLV paper's family; hub)",
    "pythia": "pythia — Pythia 70M to 1B (hub)",
    CUSTOM: "custom — a list of models",
}
DEFAULT_DATASETS = ["sentiment"]
#: Session-state key of the failures of earlier sweeps: {(cell key): message}, so a failed cell keeps
#: saying why after the rerun that follows (the cache has no record of failures).
FAILED_KEY = "scaling.failed"
#: The "Compute missing" button's widget key.
COMPUTE_KEY = "sc_compute"

EXPLANATION = """
Every **cell** is one model on one concept dataset, analysed exactly as on the *Gain curves* page (same settings,
same cache): the low-order LLV surrogate predicts each evaluation prompt's gain curve over layers and an injection
of size ε measures it in the full model. **Agreement** is the Spearman (rank) and Pearson (linear) correlation of
the two curves over layers, averaged over prompts (n/a when a curve is constant or has a single layer).

The LLV paper (Nettasinghe & Joseph) finds that agreement grows with size: family averages of Spearman ≈ 0.77
(GPT-2), 0.81 (GPT-2-medium) and 0.995 (GPT-2-large), with order d = 32 and ε = 0.1 on ten datasets, 400 / 200 /
200 examples per class.

**Status**: *cached* — a stored result; *computed* — computed just now; *missing* — press **Compute missing**
(demo models that are not built yet are built first, a few minutes each on a CPU); *unavailable* — the model or
dataset cannot be used here (the note says why, e.g. a hub model that is not downloaded while offline); *failed* —
the computation stopped with an error (the note says what to change). Finished cells are stored as they complete,
so a sweep that is stopped resumes where it stopped.
"""


def cell_key(cell: SweepCell, spec: ModelSpec, settings: GainsSettings) -> tuple:
    """What a failure is remembered under: the cell, the precision and device, and the settings."""
    return (cell.model, cell.dataset, spec.dtype, spec.device, settings)


def choose_models() -> list[str]:
    """The family picker and, for a custom list, its text field; returns the models, smallest first."""
    options = [*FAMILIES, CUSTOM]
    family = st.selectbox(
        "Model family", options, format_func=lambda f: FAMILY_LABELS.get(f, f), key="sc_family",
        help="Models of one family from small to large. Hub models are downloaded once (needs the network).",
    )
    if family != CUSTOM:
        st.caption("Models: " + ", ".join(f"`{m}`" for m in FAMILIES[family]))
        return list(FAMILIES[family])
    text = st.text_input(
        "Models (comma-separated, smallest first)", key="sc_models",
        placeholder="gpt2, gpt2-medium, /path/to/model, demo:gpt2-small",
        help="Hugging Face hub ids, local model directories or demo:<name>.",
    )
    return parse_list(text)


def choose_datasets() -> list[str]:
    """The datasets multiselect (registered datasets: built-in and the paper's hub tasks)."""
    rows: dict[str, DatasetListing] = {r.name: r for r in list_datasets()}  # cache metadata only
    return list(st.multiselect(
        "Datasets", list(rows), default=[n for n in DEFAULT_DATASETS if n in rows],
        format_func=lambda n: listing_label(rows[n]) if n in rows else n, key="sc_datasets",
        help="One line per dataset in the figure. Hub datasets that are not downloaded need the network once.",
    ))


def choose_settings() -> GainsSettings:
    """The gain settings (the defaults of the Gain curves page and the ``gains`` command)."""
    defaults = GainsSettings()
    c1, c2, c3, c4, c5 = st.columns(5)
    order = c1.number_input("Reduced order d", **ORDER.widget(), value=defaults.order, step=1, key="sc_order",
                            help="Columns of each layer's basis P_l (at most every model's hidden size).")
    eps = eps_input(c2, "sc_eps", defaults.eps, help="Size of the injection for the measured gains.")
    n_eval = n_eval_input(c3, "sc_n_eval", defaults.n_eval)
    complement = c4.selectbox("Complement", COMPLEMENTS, key="sc_complement",
                              help="How each basis is completed after v_l: krylov (default); random and pca are "
                              "ablations.")
    mode = c5.selectbox("Mode", MODES, key="sc_mode",
                        help="prompt: each prompt's own Jacobians; population: the operating prompts' mean model.")
    cols = st.columns(3)
    sizes = [
        cols[i].number_input(f"{name.capitalize()} examples per class", **rng.widget(),
                             value=defaults.sizes[i], step=50, key=f"sc_{name}")
        for i, (name, rng) in enumerate(zip(("concept", "operating", "evaluation"), SIZES))
    ]
    return GainsSettings(order=int(order), eps=float(eps), n_eval=int(n_eval), complement=str(complement),
                        mode=str(mode), sizes=tuple(int(n) for n in sizes))


@st.cache_resource(show_spinner="Loading the dataset…", max_entries=32)
def concept_data(name: str) -> ConceptData:
    """A registered dataset, loaded once per process (its fingerprint is part of every cell's cache key)."""
    return load_data(name)


def dataset_inputs(names: list[str]) -> list[str | ConceptData]:
    """Loaded data where that needs no download; the name otherwise (the sweep then says what is needed)."""
    out: list[str | ConceptData] = []
    for name in names:
        if needs_download(name):
            out.append(name)
            continue
        try:
            out.append(concept_data(name))
        except LLDDError:
            out.append(name)  # the status check reports it as unavailable, with the reason
    return out


def with_failures(cells: list[SweepCell], spec: ModelSpec, settings: GainsSettings) -> list[SweepCell]:
    """``cells`` with the missing ones that failed in an earlier sweep of this session marked ``failed``."""
    failed: dict = st.session_state.get(FAILED_KEY, {})
    out = []
    for c in cells:
        message = failed.get(cell_key(c, spec, settings)) if c.status == "missing" else None
        out.append(SweepCell(c.model, c.dataset, "failed", message) if message else c)
    return out


def remember(report: SweepReport, spec: ModelSpec, settings: GainsSettings) -> None:
    """Keep this sweep's failures for later runs of the page; forget those of cells that now have a result."""
    failed: dict = dict(st.session_state.get(FAILED_KEY, {}))
    for c in report.cells:
        key = cell_key(c, spec, settings)
        if c.status == "failed":
            failed[key] = c.message
        else:
            failed.pop(key, None)
    st.session_state[FAILED_KEY] = failed


def reasons(cells: list[SweepCell], status: str) -> list[str]:
    """One markdown line per distinct reason the cells of ``status`` give, naming those cells."""
    grouped: dict[str, list[str]] = {}
    for c in cells:
        if c.status == status:
            grouped.setdefault(c.message, []).append(f"`{c.model}` × `{c.dataset}`")
    return [f"{plural(len(where), 'cell')} {status} ({', '.join(where)}): {message}"
            for message, where in grouped.items()]


def compute(models: list[str], data: list[str | ConceptData], spec: ModelSpec,
            settings: GainsSettings) -> tuple[SweepReport | None, bool]:
    """Run the sweep in a status box (one bar over the cells to compute).

    Returns the report (``None`` if the sweep could not start, after an ``st.error``) and whether the
    failures were already shown: a sweep in which every computation failed ends as an error box.

    A widget click during the sweep asks Streamlit to rerun the page; the signal is held until the running
    cell is finished and stored, then the sweep stops there (the rerun shows it; pressing the button again
    resumes).
    """
    pending: list[ScriptControlException] = []
    where: dict = {"done": 0, "total": 1, "what": ""}  # the running cell, as the sweep last reported it

    def call(report: Callable[[float, str], None]) -> Computed[SweepReport]:
        def show(fraction: float, message: str) -> None:
            if pending:
                return  # this page is being replaced: stop drawing, finish the cell
            try:
                report(fraction, message)
            except ScriptControlException as signal:
                pending.append(signal)

        def outer(done: int, total: int, what: str) -> None:
            where.update(done=done, total=max(total, 1), what=what)
            show(done / where["total"], f"Cell {min(done + 1, total)} of {total}: {what}" if done < total else what)

        def inner(fraction: float, message: str) -> None:
            show((where["done"] + min(max(fraction, 0.0), 1.0)) / where["total"],
                 f"Cell {where['done'] + 1} of {where['total']}: {where['what']} — {message}")

        def on_cell(cell: SweepCell) -> None:
            if pending:
                raise pending[0]

        run = held["report"] = run_sweep(get_service(), models, data, like=spec, settings=settings,
                                         progress=outer, cell_progress=inner, on_cell=on_cell)
        computed = run.count("computed")
        if run.count("failed") and not computed:
            raise LLDDError("No cell could be computed. " + " ".join(reasons(run.cells, "failed")))
        return Computed(run, cache_hit=not computed)  # a hit: another session computed them meanwhile

    held: dict[str, SweepReport] = {}
    done = run_with_status("scaling sweep", call)
    report = held.get("report")
    return report, done is None and report is not None


def to_compute(cells: list[SweepCell]) -> int:
    """How many cells the button would compute: the missing ones and those that failed."""
    return sum(c.status in ("missing", "failed") for c in cells)


def compute_button(slot: DeltaGenerator, todo: int) -> None:
    """The sweep's button in ``slot``: "Compute missing (n cells)", or disabled once every cell has a result."""
    label = f"Compute missing ({plural(todo, 'cell')})" if todo else "All cells cached"
    slot.button(label, type="primary", key=COMPUTE_KEY, disabled=todo == 0,
                help="Computes every cell without a result, model by model; finished cells are stored at once.")


def splits_caption(cells: list[SweepCell], settings: GainsSettings) -> str | None:
    """The splits the results used, per dataset (they depend on the data, not the model); ``None`` without results."""
    by_dataset = {c.dataset: c.split_sizes for c in cells if c.done and c.split_sizes}
    if not by_dataset:
        return None
    parts = [f"`{name}` {splits_line(sizes, settings.sizes)[0]}" for name, sizes in by_dataset.items()]
    return "Split sizes: " + "; ".join(parts) + "."


def show_cells(cells: list[SweepCell], spec: ModelSpec, settings: GainsSettings, failures_shown: bool = False) -> None:
    """The status table, the splits used, what is wrong with the cells that cannot be computed, and the figure."""
    st.subheader("Cells")
    st.caption(f"{summary_line(cells)} · precision {spec.dtype}, device {spec.device} (from the sidebar)")
    splits = splits_caption(cells, settings)
    if splits is not None:
        st.caption(splits)
    cells_frame = cells_table(fill_params(cells))
    table(
        cells_frame, key="sc_table", name="cells",
        column_config={
            "parameters": st.column_config.NumberColumn(format="compact"),
            "mean Spearman": st.column_config.NumberColumn(format="%.3f"),
            "mean Pearson": st.column_config.NumberColumn(format="%.3f"),
            "compute s": st.column_config.NumberColumn(format="%.1f"),
        },
    )
    st.download_button("Download cells (CSV)", data=lambda: csv_text(cells_frame), file_name="scaling_cells.csv",
                       mime="text/csv", on_click="ignore", key="sc_cells_csv")
    for line in reasons(cells, "unavailable"):
        st.warning(line)
    for line in [] if failures_shown else reasons(cells, "failed"):
        st.error(line)
    st.subheader("Agreement against model size")
    if not any(c.done and c.n_params is not None for c in cells):
        st.info("No cell has a result for these settings yet: press **Compute missing**.")
        return
    paper = st.checkbox("Show the LLV paper's GPT-2 family averages", value=False, key="sc_paper")
    chart(scaling_figure(cells, paper=paper, theme=current_theme()), "sc_figure", "scaling_agreement")


def main() -> None:
    st.title("Scaling")
    st.caption("Agreement of predicted and measured gain curves against model size, across a family of models.")
    with st.expander("What am I looking at?"):
        st.markdown(EXPLANATION)
    spec = current_spec()
    models = choose_models()
    names = choose_datasets()
    settings = choose_settings()
    if not models:
        st.info("Enter the models to compare, separated by commas.", icon=":material/edit:")
        return
    if not names:
        st.info("Choose at least one dataset.", icon=":material/dataset:")
        return
    data = dataset_inputs(names)
    service = get_service()
    try:
        cells = with_failures(sweep_status(service, models, data, like=spec, settings=settings), spec, settings)
    except LLDDError as err:  # settings no model can run with
        st.error(str(err))
        return
    # The button is drawn after the sweep, in its place above the sweep's status box, so that its label
    # counts what is missing once the sweep has run; a press is read from its state before it is drawn.
    button = st.empty()
    report, failures_shown = None, False
    if st.session_state.get(COMPUTE_KEY) and to_compute(cells):
        report, failures_shown = compute(models, data, spec, settings)
        if report is not None:
            remember(report, spec, settings)
            cells = report.cells
    compute_button(button, to_compute(cells))
    show_cells(cells, spec, settings, failures_shown)


run_view(main)  # under app.py, also when Streamlit runs this file directly
