"""Mistral / Ministral: Llama layout with sliding-window attention (the mask carries the window)."""

from .base import FamilyAdapter


class MistralAdapter(FamilyAdapter):
    name = "Mistral"
    model_types = ("mistral",)
