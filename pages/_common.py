"""UI helpers shared by app.py and the pages: the model sidebar, formatting, progress display.

UI only: widgets and session state here, every computation goes through
:func:`lldd_core.service.get_service`. Not a page: app.py lists its pages explicitly with
``st.navigation``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from lldd_core.models import DEVICE_CHOICES, DTYPES, ModelSpec
from lldd_core.service import get_service

#: Where app.py leaves the sidebar's model choice for the pages.
SPEC_KEY = "model_spec"
DEFAULT_MODEL_ENV = "LLDD_DEFAULT_MODEL"
FALLBACK_MODEL = "gpt2"

DEVICE_HELP = (
    "auto: CUDA, then Apple MPS, then CPU. cpu / cuda / mps: exactly that device. "
    "map: spread the model over all GPUs (accelerate's device_map='auto'), for models too big for one."
)


@dataclass
class Shown:
    """A result kept in session state with the request that produced it.

    Defined here, not in a page: a page script is re-executed on every rerun, so a class defined
    there would be a new class each time and ``isinstance`` on last run's object would fail.
    """

    result: Any
    cache_hit: bool
    spec: ModelSpec
    prompt: str


def default_model() -> str:
    """The model the sidebar starts with: ``$LLDD_DEFAULT_MODEL``, else ``gpt2``."""
    return os.environ.get(DEFAULT_MODEL_ENV, "").strip() or FALLBACK_MODEL


def render_model_sidebar() -> ModelSpec:
    """Draw the model settings in the sidebar, store the resulting spec in session state, return it."""
    sb = st.sidebar
    sb.header("Model")
    model = sb.text_input(
        "Model (hub id or local path)",
        value=default_model(),
        key="sidebar_model",
        help="A Hugging Face hub id such as 'gpt2' or 'Qwen/Qwen2.5-0.5B', or the path of a local model directory.",
    )
    revision = sb.text_input(
        "Revision (optional)",
        value="",
        key="sidebar_revision",
        placeholder="main",
        help="Branch, tag or commit of a hub model. Results are cached per resolved commit.",
    )
    dtypes = list(DTYPES)
    dtype = sb.selectbox(
        "Precision",
        dtypes,
        index=dtypes.index("float32"),
        key="sidebar_dtype",
        help="float64 gives reconstruction errors near 1e-16; bfloat16/float16 save memory on big models.",
    )
    devices = list(DEVICE_CHOICES)
    device = sb.selectbox("Device", devices, index=devices.index("auto"), key="sidebar_device", help=DEVICE_HELP)
    trust = sb.checkbox("Trust remote code", value=False, key="sidebar_trust_remote_code")
    sb.caption("⚠️ Runs Python code from the model's repository on this machine. Only for sources you trust.")
    if trust:
        sb.warning("Remote code is enabled for this model.", icon="⚠️")
    pickle = sb.checkbox(
        "Allow pickled weights",
        value=False,
        key="sidebar_allow_pickle",
        help="Load .bin/.pt weights when a model has no safetensors. Unpickling can execute code: trusted sources only.",
    )
    spec = ModelSpec(
        model=model.strip(),
        revision=revision.strip() or None,
        dtype=dtype,
        device=device,
        trust_remote_code=trust,
        allow_pickle=pickle,
    )
    st.session_state[SPEC_KEY] = spec
    return spec


def render_cache_sidebar() -> None:
    """Resident model, cache size and a button that empties the cache, small at the sidebar's foot.

    Drawn after the page has run, so the numbers include what the page just computed.
    """
    service = get_service()
    sb = st.sidebar
    sb.divider()
    sb.subheader("Cache")
    if sb.button("Clear cache", key="sidebar_clear_cache", help="Delete every stored result (the model stays loaded)."):
        removed = service.cache.clear()
        st.toast(f"Removed {removed} cache entries.")
    info = service.cache.info()
    kinds = {kind: n for kind, n in info["by_kind"].items() if kind != "memo"}  # memo: derived facts, not results
    detail = ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
    sb.caption(
        f"{plural(sum(kinds.values()), 'result')}{f' ({detail})' if detail else ''}, "
        f"{format_bytes(info['size_bytes'])} of {format_bytes(info['size_limit_bytes'])}  \n`{info['directory']}`"
    )
    resident = service.resident
    if resident is not None:
        sb.caption(f"Loaded: `{resident.spec.model}` ({resident.spec.dtype}, {resident.device})")


def current_spec() -> ModelSpec:
    """The sidebar's model spec; the default one when a page runs without app.py (e.g. alone in a test)."""
    spec = st.session_state.get(SPEC_KEY)
    return spec if isinstance(spec, ModelSpec) else ModelSpec(default_model())


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def format_sci(value: float) -> str:
    """A small quantity such as a relative error: ``3.2e-16``."""
    return f"{value:.1e}"


def format_norm(value: float) -> str:
    """A norm or other O(1)-ish quantity with four significant digits."""
    return f"{value:.4g}"


def progress_reporter(bar: DeltaGenerator) -> Callable[[float, str], None]:
    """A ``progress(frac, msg)`` callback for the core that moves ``bar`` (clamped to [0, 1])."""

    def report(frac: float, msg: str) -> None:
        bar.progress(min(max(float(frac), 0.0), 1.0), text=msg)

    return report


def plural(n: int, noun: str) -> str:
    """``1 result``, ``2 results``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
