"""Family adapters, one small module per family, looked up by ``config.model_type``."""

from __future__ import annotations

from ...errors import UnsupportedFamilyError
from .base import FamilyAdapter, is_activation, is_layer_norm, is_norm, text_config
from .cohere2 import Cohere2Adapter
from .gemma import GemmaAdapter
from .gemma3_multimodal import Gemma3MultimodalAdapter
from .gpt2 import GPT2Adapter
from .gpt_neox import GPTNeoXAdapter
from .gpt_oss import GptOssAdapter
from .granite import GraniteAdapter
from .llama import LlamaAdapter
from .mistral import MistralAdapter
from .mixtral import MixtralAdapter
from .olmo2 import Olmo2Adapter
from .olmo3 import Olmo3Adapter
from .olmoe import OlmoeAdapter
from .phi3 import Phi3Adapter
from .qwen2 import Qwen2Adapter
from .qwen2_moe import Qwen2MoeAdapter
from .qwen3 import Qwen3Adapter
from .qwen3_moe import Qwen3MoeAdapter
from .smollm3 import SmolLM3Adapter
from .stablelm import StableLmAdapter
from .starcoder2 import Starcoder2Adapter

ADAPTERS: tuple[FamilyAdapter, ...] = (
    GPT2Adapter(),
    GPTNeoXAdapter(),
    LlamaAdapter(),
    MistralAdapter(),
    Qwen2Adapter(),
    Qwen3Adapter(),
    GemmaAdapter(),
    Phi3Adapter(),
    Olmo2Adapter(),
    # issue 19: dense families
    GraniteAdapter(),
    SmolLM3Adapter(),
    Olmo3Adapter(),
    Starcoder2Adapter(),
    StableLmAdapter(),
    Cohere2Adapter(),
    Gemma3MultimodalAdapter(),
    # issue 19: mixture-of-experts
    MixtralAdapter(),
    Qwen3MoeAdapter(),
    Qwen2MoeAdapter(),
    OlmoeAdapter(),
    GptOssAdapter(),
)

_BY_TYPE = {t: a for a in ADAPTERS for t in a.model_types}


def supported_model_types() -> list[str]:
    return sorted(_BY_TYPE)


def supported_families_text() -> str:
    return ", ".join(f"{a.name} ({'/'.join(a.model_types)})" for a in ADAPTERS)


def adapter_for(model_type: str) -> FamilyAdapter:
    """The adapter for ``config.model_type``; a clear error listing the supported families otherwise."""
    try:
        return _BY_TYPE[model_type]
    except KeyError:
        raise UnsupportedFamilyError(
            f"Model type '{model_type}' is not supported. Supported families: {supported_families_text()}."
        ) from None


__all__ = [
    "ADAPTERS",
    "FamilyAdapter",
    "adapter_for",
    "is_activation",
    "is_layer_norm",
    "is_norm",
    "supported_families_text",
    "supported_model_types",
    "text_config",
]
