"""Llama 2/3: RMSNorm, gated SiLU MLP, rotary attention with grouped KV heads, no biases."""

from .base import FamilyAdapter


class LlamaAdapter(FamilyAdapter):
    name = "Llama"
    model_types = ("llama",)
