"""Cohere 2 (Command R7B): parallel blocks ``x + attn(ln(x)) + mlp(ln(x))`` with one mean-centering
LayerNorm without bias, sliding-window layers with rotary and full-attention layers without (the mask
carries the window), no biases, and ``logits = logit_scale * unembed(final_norm(x_L))``."""

from torch import nn

from .base import FamilyAdapter, text_config


class Cohere2Adapter(FamilyAdapter):
    name = "Cohere 2"
    model_types = ("cohere2",)
    mlp_norm = "input_layernorm"

    def logit_multiplier(self, model: nn.Module) -> float:
        return float(text_config(model.config).logit_scale)
