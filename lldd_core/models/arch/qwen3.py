"""Qwen3: Llama layout with RMSNorms on queries and keys (detached with Q and K anyway)."""

from .base import FamilyAdapter


class Qwen3Adapter(FamilyAdapter):
    name = "Qwen3"
    model_types = ("qwen3",)
