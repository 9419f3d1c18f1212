"""The sidebar: the model picker and settings (stored as a ``ModelSpec`` for the pages), memory and cache.

UI only: widgets and session state here, every computation goes through
:func:`lldd_core.service.get_service`.
"""

from __future__ import annotations

import functools
from collections.abc import Collection

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from lldd_core.demo import DEMO_CONFIGS, DEMO_PREFIX, demo_name, is_demo, read_info
from lldd_core.errors import LLDDError
from lldd_core.models.hub import is_cached
from lldd_core.models.loading import DEVICE_CHOICES, DTYPES, QUANTIZATIONS, ModelSpec, default_model
from lldd_core.models.memory import format_bytes
from lldd_core.plots.common import THEMES
from lldd_core.plots.export import SCALES, ExportSettings
from lldd_core.service import get_service
from pages.common.build import FIRST_USE_BUILD
from pages.common.link import fields
from pages.common.ui import SCALE_KEY, THEME_KEY, WIDTH_KEY, plural

#: Where app.py leaves the sidebar's model choice for the pages.
SPEC_KEY = "model_spec"

#: The model picker: demo models (built by lldd, nothing downloaded), then well-known hub models.
DEMO_MODELS: tuple[str, ...] = tuple(DEMO_PREFIX + name for name in DEMO_CONFIGS)
HUB_MODELS: tuple[str, ...] = (
    "gpt2",
    "gpt2-medium",
    "gpt2-large",
    "EleutherAI/pythia-160m",
    "EleutherAI/pythia-410m",
    "Qwen/Qwen3-0.6B",
    "meta-llama/Llama-3.2-1B",
    "google/gemma-3-1b-it",
    "microsoft/Phi-4-mini-instruct",
    "allenai/OLMo-2-0425-1B",
    # issue 19: dense families
    "ibm-granite/granite-3.3-2b-instruct",
    "HuggingFaceTB/SmolLM3-3B",
    "allenai/Olmo-3-7B-Instruct",
    "bigcode/starcoder2-3b",
    "stabilityai/stablelm-2-1_6b",
    "CohereLabs/c4ai-command-r7b-12-2024",
    "google/gemma-3-4b-it",
    # issue 19: mixture-of-experts
    "mistralai/Mixtral-8x7B-v0.1",
    "Qwen/Qwen3-30B-A3B",
    "Qwen/Qwen1.5-MoE-A2.7B",
    "allenai/OLMoE-1B-7B-0924",
    "openai/gpt-oss-20b",
)
#: The picker's last entry; it reveals a free text field. Has spaces, so it is never a model id.
OTHER = "Other (hub id or local path)"
MODEL_CHOICES: tuple[str, ...] = (*DEMO_MODELS, *HUB_MODELS, OTHER)

#: Widget keys of the picker and its free text field (tests address them).
CHOICE_KEY = "sidebar_model_choice"
OTHER_KEY = "sidebar_model"
#: Our own copies of the last choice and text: Streamlit can lose a widget's value when its label
#: changes (a demo model becomes "built") and forgets it when the widget is hidden (the text field).
LAST_CHOICE_KEY = "sidebar_model_choice.last"
LAST_OTHER_KEY = "sidebar_model.last"
#: The listed models that were on this machine when the picker was last drawn (its labels depend on it).
BUILT_KEY = "sidebar_model_choice.built"

DEVICE_HELP = (
    "auto: CUDA, then Apple MPS, then CPU. cpu / cuda / mps: exactly that device. "
    "map: spread the model over all GPUs (accelerate's device_map='auto'), for models too big for one."
)


def initial_model() -> str:
    """The model the sidebar starts with: ``$LLDD_DEFAULT_MODEL``, else the built-in demo model."""
    return default_model().strip()


def local_models() -> frozenset[str]:
    """The listed models usable without the network: built demo models and hub models in the local HF cache."""
    built = (m for m in DEMO_MODELS if read_info(demo_name(m)) is not None)
    return frozenset((*built, *(m for m in HUB_MODELS if is_cached(m))))


def choice_label(choice: str, built: Collection[str] = ()) -> str:
    """How the picker shows ``choice``: the default is marked, demo models say whether they are built, and
    ✓ marks the models in ``built`` (on this machine: :func:`local_models`).

    Short on purpose: the sidebar cuts labels after about 32 characters.
    """
    if choice == OTHER:
        return choice
    notes = ["default"] if choice == initial_model() else []
    if is_demo(choice) and choice not in built:
        notes.append("not built")
    label = choice + (f" ({', '.join(notes)})" if notes else "")
    return label + (" ✓" if choice in built else "")


def model_note(model: str) -> str:
    """One caption under the picker about where the chosen model comes from."""
    if is_demo(model) and demo_name(model) in DEMO_CONFIGS:
        cfg, info = DEMO_CONFIGS[demo_name(model)], read_info(demo_name(model))
        shape = f"{cfg.arch}, {cfg.n_layers} layers, d={cfg.d_model}"
        if info is None:
            return f"Demo model ({shape}), not built yet. {FIRST_USE_BUILD}"
        return (
            f"Demo model ({shape}, {info.parameters / 1e6:.1f}M parameters) trained by lldd on its own "
            f"corpus; nothing is downloaded. Held-out loss {info.heldout_loss:.2f} (unigram {info.unigram_loss:.2f})."
        )
    if model in HUB_MODELS and is_cached(model):
        return "In the local Hugging Face cache: works without the network."
    if model in HUB_MODELS:
        return "Downloaded from the Hugging Face hub on first use (needs the network once, some need a login)."
    return ""


def pick_model(sb: DeltaGenerator) -> str:
    """The model picker and, for "Other", its free text field; returns the model id or path."""
    start = initial_model()
    first_choice = start if start in MODEL_CHOICES else OTHER
    last = st.session_state.get(LAST_CHOICE_KEY, first_choice)
    index = MODEL_CHOICES.index(last) if last in MODEL_CHOICES else 0
    # One snapshot per run: the labels must not change between drawing the picker and reading it.
    built = local_models()
    labels_changed = st.session_state.get(BUILT_KEY, built) != built
    st.session_state[BUILT_KEY] = built
    current = st.session_state.get(CHOICE_KEY)  # read with last run's labels, so still right
    if labels_changed and current in MODEL_CHOICES:
        # The browser still shows the old label ("not built"): hand it the value under its new one.
        st.session_state[CHOICE_KEY] = current
        index = 0  # the value comes from session state; Streamlit warns about a non-zero default too
    choice = sb.selectbox(
        "Model",
        MODEL_CHOICES,
        # Also the value Streamlit falls back to if it cannot match the browser's label.
        index=index,
        format_func=functools.partial(choice_label, built=built),
        key=CHOICE_KEY,
        help="✓ = on this machine: a built demo model, or a hub model in the local Hugging Face cache. "
        "Demo models are small GPT-2 / Llama models that lldd trains itself (nothing is downloaded; "
        "the others are built on first use). Hub models are downloaded once. "
        "'Other' takes any hub id or the path of a local model directory.",
    )
    choice = choice if choice in MODEL_CHOICES else last  # defensive: never an unknown choice
    st.session_state[LAST_CHOICE_KEY] = choice
    if choice != OTHER:
        note = model_note(choice)
        if note:
            sb.caption(note)
        return choice
    text = sb.text_input(
        "Hub id or local path",
        value=st.session_state.get(LAST_OTHER_KEY, "" if start in MODEL_CHOICES else start),
        key=OTHER_KEY,
        placeholder="org/name or /path/to/model",
        help="A Hugging Face hub id such as 'Qwen/Qwen2.5-0.5B', the path of a local model directory, "
        "or demo:<name> for a demo model.",
    )
    st.session_state[LAST_OTHER_KEY] = text
    return text.strip()


def render_model_sidebar() -> ModelSpec:
    """Draw the model settings in the sidebar, store the resulting spec in session state, return it."""
    sb = st.sidebar
    sb.header("Model")
    # Linkable; never the two safety switches: a link must not turn on remote code or pickles.
    fields(CHOICE_KEY, OTHER_KEY, "sidebar_revision", "sidebar_dtype", "sidebar_device", "sidebar_max_memory",
           "sidebar_quantization")
    model = pick_model(sb)
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
    max_memory = None
    if device == "map":
        max_memory = sb.text_input(
            "Max memory per device (optional)", value="", key="sidebar_max_memory", placeholder="0=20GiB,cpu=64GiB",
            help="Limits for device 'map'; what does not fit is offloaded to disk and loaded block by block (slow).",
        ).strip() or None
    quantization = sb.selectbox(
        "Quantization", list(QUANTIZATIONS), index=0, key="sidebar_quantization",
        help="8-bit / 4-bit weights via bitsandbytes (pip install '.[quant]'; CUDA GPUs only). Jacobian "
        "products then fall back from forward mode, which the page says.",
    )
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
        max_memory=max_memory,
        quantization=quantization,
    )
    st.session_state[SPEC_KEY] = spec
    render_memory_estimate(sb, spec)
    return spec


def render_memory_estimate(sb: DeltaGenerator, spec: ModelSpec) -> None:
    """What the model will need before it is loaded, with a warning when it does not fit the device."""
    try:
        estimate = get_service().memory(spec)
    except LLDDError:
        return  # the page reports why the model cannot be resolved when it is used
    if estimate is None:
        return
    detail = "  \n".join(f"{what}: {format_bytes(n)}" for what, n in estimate.rows())
    available = f" of {format_bytes(estimate.available)} available" if estimate.available is not None else ""
    sb.caption(f"Memory: ≈ {format_bytes(estimate.needed)}{available}", help=f"Estimated before loading.  \n{detail}")
    if estimate.warning:
        sb.warning(estimate.warning, icon="⚠️")


def render_figure_sidebar() -> DeltaGenerator:
    """The figure theme and export size (linkable: a link reproduces the look), and a place for the report
    bundle's button (filled after the view ran, :func:`pages.common.ui.report_button`); returns that place."""
    sb = st.sidebar
    sb.divider()
    sb.subheader("Figures and report")
    fields(THEME_KEY, SCALE_KEY, WIDTH_KEY)
    sb.selectbox("Theme", list(THEMES), format_func=lambda name: THEMES[name].label, key=THEME_KEY,
                 help="Dashboard: the app's own look (light or dark). Report: white, black axes, colour-blind-safe "
                 "Okabe–Ito colours and print-sized fonts; figures are then shown exactly as they export.")
    c1, c2 = sb.columns(2)
    c1.selectbox("Export scale", SCALES, index=SCALES.index(ExportSettings().scale), format_func=lambda s: f"{s:g}×",
                 key=SCALE_KEY, help="PNG pixels per layout pixel (2–3× prints sharply). SVG and PDF are vector.")
    c2.number_input("Export width (px)", min_value=300, max_value=3000, value=ExportSettings().width, step=50,
                    key=WIDTH_KEY, help="Layout width of exported figures; the height is each figure's own.")
    return sb.empty()


def render_cache_sidebar() -> None:
    """Resident model, cache size and a button that empties the cache, small at the sidebar's foot.

    Drawn after the page has run, so the numbers include what the page just computed.
    """
    service = get_service()
    sb = st.sidebar
    sb.divider()
    sb.subheader("Cache")
    try:
        if sb.button("Clear cache", key="sidebar_clear_cache", help="Delete every stored result (the model stays loaded)."):
            removed = service.cache.clear()
            st.toast(f"Removed {removed} cache entries.")
        info = service.cache.info()
    except LLDDError as err:  # a cache damaged while the app runs
        info = {"directory": str(service.cache.directory), "entries": 0, "size_bytes": 0, "size_limit_bytes": 0,
                "by_kind": {}, "problem": str(err)}
    if info.get("problem"):
        sb.warning(info["problem"], icon="⚠️")
    kinds = {kind: n for kind, n in info["by_kind"].items() if kind != "memo"}  # memo: derived facts, not results
    detail = ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
    sb.caption(
        f"{plural(sum(kinds.values()), 'result')}{f' ({detail})' if detail else ''}, "
        f"{format_bytes(info['size_bytes'])} of {format_bytes(info['size_limit_bytes'])}  \n`{info['directory']}`"
    )
    resident = service.resident
    if resident is not None:
        sb.caption(f"Loaded: `{resident.spec.model}` ({resident.spec.precision}, {resident.device})")
        if resident.notice:
            sb.caption(f"ℹ️ {resident.notice}")


def current_spec() -> ModelSpec:
    """The sidebar's model spec; the default one when a page runs without app.py (e.g. alone in a test)."""
    spec = st.session_state.get(SPEC_KEY)
    return spec if isinstance(spec, ModelSpec) else ModelSpec(initial_model())
