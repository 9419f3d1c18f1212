"""UI helpers shared by app.py and the pages: the model sidebar, first-use builds, formatting, progress.

UI only: widgets and session state here, every computation goes through
:func:`lldd_core.service.get_service`. Not a page: app.py lists its pages explicitly with
``st.navigation``.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

# Private, but the only way to recognise Streamlit's rerun/stop signals (see BuildProgress);
# streamlit is pinned in requirements.txt.
from streamlit.runtime.scriptrunner_utils.exceptions import ScriptControlException

from lldd_core.demo import DEMO_CONFIGS, DEMO_PREFIX, demo_dir, demo_name, is_demo, read_info
from lldd_core.errors import LLDDError
from lldd_core.models.loading import DEVICE_CHOICES, DTYPES, QUANTIZATIONS, ModelSpec, default_model
from lldd_core.models.memory import format_bytes
from lldd_core.service import get_service

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
#: The demo models that were built when the picker was last drawn (its labels depend on it).
BUILT_KEY = "sidebar_model_choice.built"

FIRST_USE_BUILD = "The demo model is built on first use: ~1–3 minutes on a CPU, once."
#: A one-run message: "built in N s", shown after the rerun that follows a build.
BUILT_FLASH_KEY = "demo_build.flash"

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


def initial_model() -> str:
    """The model the sidebar starts with: ``$LLDD_DEFAULT_MODEL``, else the built-in demo model."""
    return default_model().strip()


def choice_label(choice: str, built: Collection[str] = ()) -> str:
    """How the picker shows ``choice``: the default is marked, demo models say whether they are ``built``.

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
    built = frozenset(m for m in DEMO_MODELS if read_info(demo_name(m)) is not None)
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
        help="Demo models are small GPT-2 / Llama models that lldd trains itself (nothing is downloaded; "
        "✓ = built, the others are built on first use). Hub models are downloaded once. "
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


@dataclass
class DemoBuild:
    """A demo build running in this process, as its progress callback last reported it."""

    started: float
    fraction: float = 0.0
    message: str = "Starting"


#: Demo builds in progress, by model id: process-wide, like the service, so a later run of the page
#: (or another tab) follows a running build instead of queueing a second one behind its lock.
_BUILDS: dict[str, DemoBuild] = {}
_BUILDS_LOCK = threading.Lock()


class BuildProgress:
    """The progress callback of a demo build: moves ``bar``, and lets a rerun wait for the build.

    Streamlit interrupts a script at its next ``st`` call when the user touches a widget (or
    leaves). A build interrupted that way would be thrown away and restart from zero on the next
    run, so any widget click in the first minutes would cost the whole build again. Instead the
    signal is kept, the build runs to its end, and :meth:`resume` raises the signal afterwards.
    Meanwhile the new run shows this build's progress from ``build`` (see :func:`follow_build`).
    """

    def __init__(self, bar: DeltaGenerator, build: DemoBuild) -> None:
        self.bar = bar
        self.build = build
        self.pending: ScriptControlException | None = None

    def __call__(self, frac: float, msg: str) -> None:
        self.build.fraction, self.build.message = min(max(float(frac), 0.0), 1.0), msg
        if self.pending is not None:
            return  # this page is being replaced: stop drawing, keep building
        try:
            self.bar.progress(self.build.fraction, text=msg)
        except ScriptControlException as signal:
            self.pending = signal

    def resume(self) -> None:
        """Raise the rerun or stop Streamlit asked for during the build, if any."""
        if self.pending is not None:
            raise self.pending


def follow_build(spec: ModelSpec, build: DemoBuild, bar: DeltaGenerator) -> str | None:
    """Show the progress of a build another run is doing until it ends; an error message or ``None``."""
    while _BUILDS.get(spec.model) is build:
        bar.progress(build.fraction, text=build.message)
        time.sleep(0.5)
    if get_service().needs_build(spec):
        return f"The build of {spec.model} did not finish. Reload the page to try again."
    return None


def build_or_follow(spec: ModelSpec, bar: DeltaGenerator) -> tuple[str | None, float]:
    """Build ``spec``'s demo model, or follow the build already running; (error message or ``None``, seconds)."""
    with _BUILDS_LOCK:
        build = _BUILDS.get(spec.model)
        mine = build is None
        if build is None:
            build = _BUILDS[spec.model] = DemoBuild(started=time.perf_counter())
    if not mine:
        return follow_build(spec, build, bar), time.perf_counter() - build.started
    progress = BuildProgress(bar, build)
    failure: str | None = None
    try:
        get_service().ensure_demo(spec, progress)
    except LLDDError as err:
        failure = str(err)
    except OSError as err:  # a read-only or full disk: the environment, not a bug in lldd
        failure = (
            f"Could not write {spec.model} to {demo_dir()}: {err.strerror or err}. "
            "Set LLDD_DEMO_DIR to a writable folder with some free space, then reload."
        )
    finally:
        with _BUILDS_LOCK:
            _BUILDS.pop(spec.model, None)
    progress.resume()  # a rerun the user asked for during the build replaces this one now
    return failure, time.perf_counter() - build.started


def ensure_model_ready(spec: ModelSpec) -> bool:
    """Build ``spec``'s demo model if it is missing, with an explanation and a progress bar.

    Call it before anything that resolves the model (``info()``). After a build the script reruns,
    so the sidebar shows the model as built. Returns ``False`` when there is nothing to analyse: no
    model entered (a hint is shown) or the build failed (an ``st.error``); the session keeps running.
    """
    flash = st.session_state.pop(BUILT_FLASH_KEY, None)
    if flash:
        st.success(flash, icon=":material/check_circle:")
    if not spec.model:  # "Other" with an empty field: a prompt, not an error
        st.info("Enter a hub id or the path of a local model directory in the sidebar.", icon=":material/arrow_back:")
        return False
    if not get_service().needs_build(spec):
        return True
    note = st.empty()
    note.info(
        f"{FIRST_USE_BUILD} lldd trains `{spec.model}` on its own generated corpus (nothing is downloaded) and "
        f"keeps it in `{demo_dir()}` for every later session.",
        icon=":material/construction:",
    )
    with st.status(f"Building {spec.model}…", expanded=True) as status:
        failure, seconds = build_or_follow(spec, st.progress(0.0, text="Starting"))
        if failure is not None:
            status.update(label=f"Could not build {spec.model}", state="error", expanded=False)
    if failure is not None:
        note.empty()
        st.error(failure)  # outside the collapsed status box, so it is seen
        return False
    st.session_state[BUILT_FLASH_KEY] = f"Built `{spec.model}` in {seconds:.0f} s; it is reused from now on."
    st.rerun()  # so the sidebar, drawn before the build, shows the model as built


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



def run_with_status(noun: str, call: Callable[[Callable[[float, str], None]], Any]) -> Any | None:
    """``call(progress)`` inside an ``st.status`` box with a progress bar ("Computing {noun}…").

    Returns the service's ``Computed``; on a user error (:class:`LLDDError`) shows it with
    ``st.error`` below the collapsed box and returns ``None``.
    """
    failure: LLDDError | None = None
    with st.status(f"Computing {noun}…", expanded=True) as status:
        bar = st.progress(0.0, text="Resolving the model and tokenizing")
        try:
            computed = call(progress_reporter(bar))
        except LLDDError as err:
            failure = err
            status.update(label=f"Could not compute the {noun}", state="error", expanded=False)
        else:
            bar.progress(1.0, text="Done")
            source = "Loaded from cache" if computed.cache_hit else f"Computed in {computed.result.elapsed_s:.2f} s"
            status.update(label=f"{noun[0].upper()}{noun[1:]} ready — {source}", state="complete", expanded=False)
    if failure is not None:
        st.error(str(failure))  # outside the collapsed status box, so it is seen
        return None
    if getattr(computed, "warning", None):
        st.warning(computed.warning, icon="⚠️")  # e.g. a full or damaged cache: shown, but not stored
    return computed


def plural(n: int, noun: str) -> str:
    """``1 result``, ``2 results``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def model_shape(spec: ModelSpec) -> tuple[int, int] | None:
    """(layers, hidden size) of the model, or ``None`` after showing why it could not be resolved."""
    try:
        info = get_service().info(spec)
    except LLDDError as err:
        st.error(str(err))
        return None
    return info.n_layers, info.d_model
