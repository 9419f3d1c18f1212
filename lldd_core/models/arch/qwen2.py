"""Qwen2 / Qwen2.5: Llama layout with biases on the Q, K and V projections."""

from .base import FamilyAdapter


class Qwen2Adapter(FamilyAdapter):
    name = "Qwen2 / Qwen2.5"
    model_types = ("qwen2",)
    biases = True
