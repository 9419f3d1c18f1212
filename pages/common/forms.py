"""Form pieces several pages share: number inputs bounded by :mod:`lldd_core.ranges`, the prompt box.

UI only. Each input takes the container to draw in (a column) and its widget key; bounds come
from the range objects the CLI and the service check against, so a widget never offers a value
the core refuses. Inputs whose bound is the model's size (the hidden size ``d``) key their widget
by that size: another model gets a fresh widget, never an out-of-range value.
"""

from __future__ import annotations

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from lldd_core.analysis.settings import ConceptSettings, GainsSettings, SplitSizes
from lldd_core.errors import LLDDError
from lldd_core.models.loading import ModelSpec
from lldd_core.ranges import DECODE, EPS, N_EVAL, ORDER, SEED, SIZES, TOP_K
from lldd_core.service import get_service
from pages.common.build import ensure_model_ready
from pages.common.link import fields
from pages.common.sidebar import current_spec


def model_shape(spec: ModelSpec) -> tuple[int, int] | None:
    """(layers, hidden size) of the model, the bounds of the forms' inputs; ``None`` after showing why it
    could not be resolved."""
    try:
        info = get_service().info(spec)
    except LLDDError as err:
        st.error(str(err))
        return None
    return info.n_layers, info.d_model


def view_start(title: str, caption: str) -> tuple[ModelSpec, tuple[int, int] | None]:
    """A view's title and caption, the sidebar's model (a demo model is built on first use, visibly,
    before anything asks for its config) and its (layers, hidden size); ``None`` when it is not ready."""
    st.title(title)
    st.caption(caption)
    spec = current_spec()
    return spec, model_shape(spec) if ensure_model_ready(spec) else None


def prompt_area(key: str, value: str, height: int = 90) -> str:
    """The prompt text box."""
    fields(key)
    return st.text_area("Prompt", value=value, key=key, height=height)


def seed_input(col: DeltaGenerator, key: str, help: str | None = None,
               value: int = ConceptSettings.default("seed")) -> int:
    """A seed (:data:`~lldd_core.ranges.SEED`), the settings' default (0) unless ``value``."""
    fields(key)
    return int(col.number_input("Seed", **SEED.widget(), value=value, step=1, key=key, help=help))


def order_input(col: DeltaGenerator, d: int, key: str, help: str, value: int = GainsSettings.default("order")) -> int:
    """The reduced order ``d`` of the LLV surrogate (1..hidden size ``d``, starting at ``value`` or ``d``), keyed
    ``{key}_of_{d}``."""
    fields(f"{key}_of_{d}")
    return int(col.number_input("Reduced order d", **ORDER.widget(hi=d), value=min(value, d), step=1,
                                key=f"{key}_of_{d}", help=help))


def eps_input(col: DeltaGenerator, key: str, value: float, help: str) -> float:
    """The injection size ε of the measured gains (:data:`~lldd_core.ranges.EPS`)."""
    fields(key)
    return float(col.number_input("ε (injection size)", **EPS.widget(), value=value, step=0.01, format="%.4g",
                                  key=key, help=help))


def n_eval_input(col: DeltaGenerator, key: str, value: int, help: str | None = None) -> int:
    """How many evaluation prompts (:data:`~lldd_core.ranges.N_EVAL`)."""
    fields(key)
    return int(col.number_input("Evaluation prompts", **N_EVAL.widget(), value=value, step=1, key=key, help=help))


def top_k_input(col: DeltaGenerator, d: int, key: str, help: str) -> int:
    """Top-k singular values (1..hidden size ``d``, 8 by default), keyed ``{key}_of_{d}``."""
    fields(f"{key}_of_{d}")
    return int(col.number_input("Top-k singular values", **TOP_K.widget(hi=d), value=min(8, d), step=1,
                                key=f"{key}_of_{d}", help=help))


def decode_input(col: DeltaGenerator, key: str, value: int) -> int:
    """Decoded tokens per singular vector (:data:`~lldd_core.ranges.DECODE`)."""
    fields(key)
    return int(col.number_input("Decoded tokens per vector", **DECODE.widget(), value=value, step=1, key=key,
                                help=DECODE.sentence()))


SPLIT_HELP = {
    "concept": "Examples per class for the concept directions v_l (class-mean differences).",
    "operating": "Examples per class for the bases P_l and the population model.",
    "evaluation": "Examples per class the evaluation prompts are drawn from.",
}


def split_size_inputs(prefix: str) -> tuple[int, int, int]:
    """Concept / operating / evaluation examples per class (:class:`~lldd_core.analysis.settings.SplitSizes`'
    defaults, the paper's), keyed ``{prefix}_{split}``."""
    defaults = SplitSizes()
    fields(*(f"{prefix}_{name}" for name in SPLIT_HELP))
    st.markdown("**Split sizes per class** (balanced, disjoint, seeded; the default is fitted to a smaller "
                "dataset, other sizes shrink when a class is smaller)")
    cols = st.columns(3)
    return tuple(  # type: ignore[return-value]
        int(cols[i].number_input(name.capitalize(), **rng.widget(), value=defaults[i],
                                 step=50, key=f"{prefix}_{name}", help=f"{help_text} {rng.sentence()}"))
        for i, ((name, help_text), rng) in enumerate(zip(SPLIT_HELP.items(), SIZES))
    )
