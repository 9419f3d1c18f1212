"""SmolLM3: the Llama layout; every ``no_rope_layer_interval``-th layer attends without rotary
embeddings (NoPE) and may use a sliding window (the mask carries it). Nothing to linearize differently:
Q and K are frozen after whatever positional treatment their layer gives them."""

from .base import FamilyAdapter


class SmolLM3Adapter(FamilyAdapter):
    name = "SmolLM3"
    model_types = ("smollm3",)
