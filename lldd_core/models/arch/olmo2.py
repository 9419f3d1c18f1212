"""OLMo 2: norms after the sub-layers (``x + norm(attn(x))``) and RMSNorms on full Q and K."""

from .base import FamilyAdapter


class Olmo2Adapter(FamilyAdapter):
    name = "OLMo 2"
    model_types = ("olmo2",)
    attention_output = "post_attention_layernorm"
    mlp_output = "post_feedforward_layernorm"
    mlp_norm = None
