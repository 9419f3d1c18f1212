"""Gemma 2 and Gemma 3 (text): ``x_0`` includes the ``sqrt(d)`` embedding scale, RMSNorms scale by
``1 + w``, sandwich norms around both sub-layers, tanh-GELU gate, attention soft-capping (Gemma 2,
inside the detached softmax) and alternating sliding-window layers (carried by the mask)."""

from .base import FamilyAdapter


class GemmaAdapter(FamilyAdapter):
    name = "Gemma 2 / Gemma 3"
    model_types = ("gemma2", "gemma3_text")
    attention_output = "post_attention_layernorm"
    mlp_output = "post_feedforward_layernorm"
    norm_weight_offset = 1.0
    mlp_norm = "pre_feedforward_layernorm"
