"""Granite (3.x dense): the Llama layout with four scaling multipliers from the config.

``x_0 = embedding_multiplier * embed(t)`` (inside ``x_0``, like Gemma's scale), each block adds
``residual_multiplier * term`` for its attention and MLP terms, the attention scores are scaled by
``attention_multiplier`` (instead of ``1/sqrt(head_dim)``; carried by the attention call), and
``logits = unembed(final_norm(x_L)) / logits_scaling``.
"""

from torch import nn

from .base import FamilyAdapter, text_config


class GraniteAdapter(FamilyAdapter):
    name = "Granite"
    model_types = ("granite",)

    def residual_multiplier(self, model: nn.Module) -> float:
        return float(text_config(model.config).residual_multiplier)

    def logit_multiplier(self, model: nn.Module) -> float:
        return 1.0 / float(text_config(model.config).logits_scaling)
