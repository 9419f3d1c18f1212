"""Loading a causal LM by hub id or local directory into a :class:`ModelHandle`.

Safety defaults: weights load from safetensors only (``allow_pickle`` opts into ``.bin`` files) and
``trust_remote_code`` is off unless asked. Every result is keyed on the *resolved* revision: the
commit hash for hub models, a sha256 of the config and weight files for local directories.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import MutableMapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..demo import DEMO_CONFIGS, build_demo, demo_name, demo_path, is_built, is_demo
from ..errors import InputError, LLDDError, ModelLoadError, ResourceError
from ..progress import ProgressFn
from .arch import FamilyAdapter, adapter_for, text_config
from .arch.base import EXPERTS_IMPLEMENTATION
from .hub import hub_access, hub_revision
from .placement import input_device

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
#: ``device`` values besides torch device strings: ``auto`` picks CUDA, then MPS, then CPU;
#: ``map`` spreads the model over all GPUs with accelerate's ``device_map="auto"``.
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps", "map")
#: Weight quantization through bitsandbytes (the optional ``quant`` extra; CUDA only).
QUANTIZATIONS = ("none", "8bit", "4bit")

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")

#: The model the dashboard and CLI open with when none is given: the built-in demo model.
BUILTIN_DEFAULT_MODEL = "demo:gpt2-small"


def default_model() -> str:
    """``$LLDD_DEFAULT_MODEL`` if set (and not blank), else the built-in default."""
    from ..env import env_text

    return env_text("LLDD_DEFAULT_MODEL", BUILTIN_DEFAULT_MODEL)


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for. ``model`` is a hub id (``org/name``) or a local directory."""

    model: str
    revision: str | None = None
    dtype: str = "float32"
    device: str = "auto"
    trust_remote_code: bool = False
    allow_pickle: bool = False
    #: with ``device="map"``: the most each device may hold, ``"0=20GiB,1=20GiB,cpu=64GiB"``; blocks
    #: beyond it are offloaded (CPU, then disk under :func:`offload_dir`) and loaded per call
    max_memory: str | None = None
    quantization: str = "none"

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def precision(self) -> str:
        """What the numbers of a result depend on besides the weights: the dtype, and the quantization."""
        return self.dtype if self.quantization == "none" else f"{self.dtype}+{self.quantization}"


@dataclass(eq=False)
class ModelInfo:
    """Everything about a model but its weights: enough to tokenize and to build cache keys."""

    spec: ModelSpec
    config: object
    tokenizer: object
    adapter: FamilyAdapter
    revision: str

    @property
    def n_layers(self) -> int:
        return int(text_config(self.config).num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(text_config(self.config).hidden_size)

    @property
    def max_positions(self) -> int | None:
        return self.adapter.max_positions(self.config)

    @property
    def family(self) -> str:
        return self.adapter.name

    def encode(self, prompt: str, max_tokens: int | None = None) -> list[int]:
        """Token ids of ``prompt`` (with the tokenizer's special tokens), validated."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("The prompt is empty: type some text to analyse.")
        ids = list(self.tokenizer(prompt)["input_ids"])
        if not ids:
            raise InputError("The prompt produced no tokens: type some text to analyse.")
        limit = self.max_positions
        if limit is not None and len(ids) > limit:
            raise InputError(
                f"The prompt has {len(ids)} tokens but {self.spec.model} handles at most {limit}: shorten it."
            )
        if max_tokens is not None and len(ids) > max_tokens:
            raise InputError(
                f"The prompt has {len(ids)} tokens; this analysis allows at most {max_tokens}: shorten it."
            )
        return ids

    def token_strings(self, ids: list[int]) -> list[str]:
        """Each token decoded on its own (spaces kept, so they read like the prompt)."""
        return [self.tokenizer.decode([i]) for i in ids]


@dataclass(eq=False)
class ModelHandle:
    """A loaded model; ``lock`` serializes computations on it (one resident model, many sessions)."""

    info: ModelInfo
    model: nn.Module
    device: torch.device
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def spec(self) -> ModelSpec:
        return self.info.spec

    @property
    def adapter(self) -> FamilyAdapter:
        return self.info.adapter

    @property
    def tokenizer(self) -> object:
        return self.info.tokenizer

    @property
    def revision(self) -> str:
        return self.info.revision

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.spec.dtype]

    @property
    def n_layers(self) -> int:
        return len(self.adapter.layers(self.model))

    @property
    def notice(self) -> str | None:
        """Why Jacobian products on this model do not use forward mode (:mod:`lldd_core.forward.jvp`), or ``None``."""
        from ..forward.jvp import notice

        return notice(self.model)

    def result_fields(self, input_ids: list[int] | None = None) -> dict:
        """The fields every result records about its model (and, given ``input_ids``, its prompt)."""
        fields = {"model": self.spec.model, "revision": self.revision, "dtype": self.spec.precision,
                  "family": self.adapter.name}
        if input_ids is not None:
            fields.update(tokens=self.info.token_strings(input_ids), input_ids=[int(i) for i in input_ids])
        return fields


def resolve_device(device: str) -> torch.device:
    """``auto``: CUDA, then MPS, then CPU. Otherwise a torch device string, checked for availability."""
    if device in ("auto", "map"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"Unknown device '{device}'. Use one of: {', '.join(DEVICE_CHOICES)}.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA was requested but no CUDA GPU is available: choose device 'auto' or 'cpu'.")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError("MPS was requested but is not available here: choose device 'auto' or 'cpu'.")
    return dev


def offload_dir() -> Path:
    """Where accelerate may write offloaded weights: ``$LLDD_OFFLOAD_DIR``, else ``offload/`` next to the cache."""
    from ..env import env_folder
    from ..store.keys import cache_dir

    return env_folder("LLDD_OFFLOAD_DIR", cache_dir() / "offload")


def parse_max_memory(text: str | None) -> dict[int | str, int] | None:
    """``"0=20GiB, cpu=64GiB"`` -> ``{0: 21474836480, "cpu": 68719476736}`` (GPU indices as ints, bytes)."""
    if text is None or not text.strip():
        return None
    out: dict[int | str, int] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, amount = part.partition("=")
        name, amount = name.strip().lower(), amount.strip()
        if not sep or not amount or not (name.isdigit() or name in ("cpu", "mps") or name.startswith("cuda:")):
            raise InputError(f"Bad max-memory entry {part.strip()!r}: write device=amount pairs such as "
                             "'0=20GiB,cpu=64GiB' (GPU index, cuda:N, cpu or mps).")
        key: int | str = int(name.split(":")[-1]) if name.isdigit() or name.startswith("cuda:") else name
        out[key] = _size(amount)
    return out or None


def _size(amount: str) -> int:
    """``"20GiB"``, ``"500MB"`` or plain bytes, in bytes."""
    from accelerate.utils import convert_file_size_to_int

    try:
        return int(amount) if amount.isdigit() else int(convert_file_size_to_int(amount))
    except ValueError:
        raise InputError(f"Bad amount {amount!r} in max-memory: use sizes such as 20GiB or 500MB.") from None


def _check_quantization_name(spec: ModelSpec) -> None:
    if spec.quantization not in QUANTIZATIONS:
        raise InputError(f"Unknown quantization {spec.quantization!r}: choose one of {', '.join(QUANTIZATIONS)}.")


def check_quantization(spec: ModelSpec) -> dict:
    """``from_pretrained`` arguments for ``spec.quantization``, or an explained error where it cannot run here."""
    _check_quantization_name(spec)
    if spec.quantization == "none":
        return {}
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise InputError(f"{spec.quantization} loading needs bitsandbytes, which is not installed: "
                         "`pip install '.[quant]'` in the lldd checkout (bitsandbytes, CUDA GPUs only), or choose quantization 'none'.")
    if not torch.cuda.is_available():
        raise InputError(f"{spec.quantization} loading (bitsandbytes) needs a CUDA GPU and there is none here: "
                         "choose quantization 'none' and bfloat16 or float32 instead.")
    if spec.dtype == "float64":
        raise InputError("Quantized weights compute in half or single precision: choose bfloat16, float16 or float32.")
    from transformers import BitsAndBytesConfig

    if spec.quantization == "8bit":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=DTYPES[spec.dtype],
                                    bnb_4bit_quant_type="nf4")
    return {"quantization_config": config, "device_map": "auto"}


def _quant_method(config: object) -> str | None:
    q = getattr(config, "quantization_config", None)
    method = q.get("quant_method") if isinstance(q, dict) else getattr(q, "quant_method", None)
    return None if method is None else str(getattr(method, "value", method))


def experts_kwargs(info: ModelInfo) -> dict:
    """``from_pretrained`` arguments for a mixture-of-experts family, none for dense ones.

    The experts run as the per-expert loop (:data:`~lldd_core.models.arch.base.EXPERTS_IMPLEMENTATION`:
    transformers 5's default ``grouped_mm`` refuses float64), and checkpoints whose experts are stored in
    MXFP4 (GPT-OSS) are dequantized: MXFP4 kernels replace the experts' forward, which detached mode
    could not freeze (transformers dequantizes to bfloat16 anyway where the kernels are missing).
    """
    if not info.adapter.experts:
        return {}
    kwargs: dict = {"experts_implementation": EXPERTS_IMPLEMENTATION}
    if _quant_method(info.config) == "mxfp4":
        if info.spec.quantization != "none":
            raise InputError(f"{info.spec.model} stores its experts in MXFP4, which lldd dequantizes; "
                             "choose quantization 'none'.")
        from transformers import Mxfp4Config

        kwargs["quantization_config"] = Mxfp4Config(dequantize=True)
    return kwargs


def is_local(model: str) -> bool:
    """A local directory, or something that is clearly meant as a path."""
    expanded = os.path.expanduser(model)
    return os.path.exists(expanded) or model.startswith(("/", "./", "../", "~", ".\\")) or os.sep + os.sep in model


def model_source(model: str, progress: ProgressFn | None = None) -> str:
    """What ``from_pretrained`` gets: the directory of a demo model or local path, else the hub id.

    ``demo:<name>`` names a built-in demo model (see :mod:`lldd_core.demo`); one that is not built
    yet is built here, once (1-3 minutes on a CPU), reporting ``progress``.
    """
    if is_demo(model):
        name = demo_name(model)
        if name not in DEMO_CONFIGS:
            raise ModelLoadError(f"There is no demo model '{name}'. Demo models: {', '.join(DEMO_CONFIGS)}.")
        if not is_built(name):
            build_demo(name, progress=progress)
        return str(demo_path(name))
    return os.path.expanduser(model) if is_local(model) else model


def local_revision(path: str | Path, memo: MutableMapping | None = None) -> str:
    """sha256 over ``config.json`` and the weight files of a local model directory.

    Hashing gigabytes takes seconds, so a ``memo`` keyed on (path, size, mtime) of the files can
    remember the answer across loads.
    """
    root = Path(path).expanduser().resolve()
    files = sorted(p for p in root.iterdir() if p.is_file() and (p.name == "config.json" or p.suffix in _WEIGHT_SUFFIXES))
    stamp = "|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    memo_key = f"local-revision:{root}:{stamp}"
    if memo is not None and memo_key in memo:
        return memo[memo_key]
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.name.encode())
        with p.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    revision = "sha256:" + digest.hexdigest()[:32]
    if memo is not None:
        memo[memo_key] = revision
    return revision


def _chain(err: BaseException) -> list[BaseException]:
    out, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        out.append(err)
        err = err.__cause__ or err.__context__
    return out


def explain_load_error(model: str, revision: str | None, err: BaseException) -> LLDDError:
    """Turn whatever the hub or transformers raised into a message that says what to do."""
    from huggingface_hub import errors as hub

    if is_out_of_memory(err):
        return ResourceError(
            f"Out of memory while loading '{model}': choose a smaller model, a lower precision "
            "(bfloat16/float16), or another device."
        )
    chain = _chain(err)
    text = " ".join(str(e) for e in chain)
    names = {type(e).__name__ for e in chain}
    if any(isinstance(e, hub.GatedRepoError) for e in chain) or "gated repo" in text.lower():
        return ModelLoadError(
            f"'{model}' is a gated model: accept its licence on the Hugging Face hub, then log in "
            "(`hf auth login`) or set HF_TOKEN, and try again."
        )
    if any(isinstance(e, hub.RevisionNotFoundError) for e in chain) or "invalid git identifier" in text:
        return ModelLoadError(f"Revision '{revision}' does not exist for '{model}': check the branch, tag or commit.")
    if any(isinstance(e, hub.RepositoryNotFoundError) for e in chain) or "is not a valid model identifier" in text:
        return ModelLoadError(
            f"'{model}' is neither a local directory nor a model id on the Hugging Face hub: check the spelling "
            "(ids look like 'org/name'), or log in if it is private."
        )
    offline = (
        any(isinstance(e, hub.LocalEntryNotFoundError) for e in chain)
        or "OfflineModeIsEnabled" in names
        or "RevisionResolutionError" in names
        or "couldn't connect" in text.lower()
        or "offline mode" in text.lower()
        or any(isinstance(e, (ConnectionError, TimeoutError)) for e in chain)
    )
    if offline:
        return ModelLoadError(
            f"'{model}' is not in the local Hugging Face cache and the hub cannot be reached: use a local path "
            "or a demo model, or connect to the network once to download it."
        )
    if "safetensors" in text.lower() and ("no file named" in text.lower() or "does not appear to have" in text.lower()):
        return ModelLoadError(
            f"'{model}' has no safetensors weights. Pickled weights can run code when loaded; enable "
            "'allow pickle' (--allow-pickle) only if you trust the source."
        )
    if "trust_remote_code" in text:
        return ModelLoadError(
            f"'{model}' needs custom code from its repository. lldd runs no remote code unless you enable "
            "'trust remote code' (--trust-remote-code); only do that for sources you trust."
        )
    return ModelLoadError(f"Could not load '{model}': {chain[-1] if chain else err}")



def is_out_of_memory(err: BaseException) -> bool:
    """True if ``err`` (or its cause) is an out-of-memory error of torch, CUDA or the host."""
    return any(
        isinstance(e, (torch.OutOfMemoryError, MemoryError))
        or "out of memory" in str(e).lower()
        or "can't allocate memory" in str(e).lower()
        for e in _chain(err)
    )


def resolve_model(
    spec: ModelSpec, revision_memo: MutableMapping | None = None, progress: ProgressFn | None = None
) -> ModelInfo:
    """Config, tokenizer, adapter and resolved revision of ``spec``, without loading weights.

    A demo model that is not built yet is built first (``progress`` reports it).

    Raises :class:`~lldd_core.errors.LLDDError` subclasses with actionable messages for unknown or
    gated ids, missing network, unknown revisions and unsupported families.
    """
    from transformers import AutoConfig, AutoTokenizer

    if spec.dtype not in DTYPES:
        raise InputError(f"Unknown dtype '{spec.dtype}'. Use one of: {', '.join(DTYPES)}.")
    resolve_device(spec.device)  # a bad device is reported before any work, also on a cache hit
    _check_quantization_name(spec)  # bitsandbytes itself is checked at load: a cache hit needs none
    if spec.max_memory is not None and spec.device != "map":
        raise InputError("max-memory applies to device 'map' (a model spread over devices): choose device 'map'.")
    parse_max_memory(spec.max_memory)
    if not isinstance(spec.model, str) or not spec.model.strip():
        raise InputError("No model given: enter a hub id (e.g. 'gpt2') or the path of a local model directory.")
    local = is_local(spec.model) or is_demo(spec.model)
    source = model_source(spec.model, progress)
    if local and not os.path.isdir(source):
        raise ModelLoadError(f"No model directory at '{spec.model}': check the path.")
    common = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    if not local:
        common.update(hub_access(spec.model, spec.revision))  # fails at once when the hub cannot be reached
        try:
            common["revision"] = hub_revision(spec.model, spec.revision, common)
        except Exception as err:
            raise explain_load_error(spec.model, spec.revision, err) from err
    try:
        config = AutoConfig.from_pretrained(source, **common)
    except Exception as err:  # the hub and transformers raise many types; classify them
        raise explain_load_error(spec.model, spec.revision, err) from err
    adapter = adapter_for(getattr(config, "model_type", "?"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
    except Exception as err:
        raise explain_load_error(spec.model, spec.revision, err) from err
    # the commit of a hub model (transformers 5 configs no longer carry ``_commit_hash``)
    revision = local_revision(source, revision_memo) if local else common["revision"].resolved
    return ModelInfo(spec=spec, config=config, tokenizer=tokenizer, adapter=adapter, revision=revision)


def load_model(spec: ModelSpec | ModelInfo, revision_memo: MutableMapping | None = None) -> ModelHandle:
    """Load the weights of ``spec`` (or of an already resolved :class:`ModelInfo`).

    The model is put in eval mode with parameters frozen (``requires_grad=False``): analyses
    differentiate with respect to activations, never weights.
    """
    from transformers import AutoModelForCausalLM

    info = spec if isinstance(spec, ModelInfo) else resolve_model(spec, revision_memo)
    spec = info.spec
    device = resolve_device(spec.device)
    source = model_source(spec.model)
    load_kwargs = {
        "revision": spec.revision,
        "trust_remote_code": spec.trust_remote_code,
        "dtype": DTYPES[spec.dtype],
        "use_safetensors": None if spec.allow_pickle else True,  # None: safetensors first, then .bin
    }
    if not (is_local(spec.model) or is_demo(spec.model)):  # the commit the config and tokenizer came from
        load_kwargs.update(hub_access(spec.model, spec.revision), revision=info.revision)
    load_kwargs.update(check_quantization(spec))
    load_kwargs.update(experts_kwargs(info))
    if spec.device == "map":
        # blocks that do not fit the devices (max_memory) are offloaded and loaded per call by
        # accelerate's hooks, which every analysis works through (lldd_core.models.placement)
        load_kwargs.update(device_map="auto", offload_folder=str(offload_dir()))
        max_memory = parse_max_memory(spec.max_memory)
        if max_memory is not None:
            load_kwargs["max_memory"] = max_memory
    try:
        model = AutoModelForCausalLM.from_pretrained(source, config=info.config, **load_kwargs)
        if "device_map" not in load_kwargs:
            model = model.to(device)
    except Exception as err:
        raise explain_load_error(spec.model, spec.revision, err) from err
    model.eval()
    model.requires_grad_(False)
    return ModelHandle(info=info, model=model, device=input_device(model))
