"""StarCoder2: LayerNorms with biases, biases on every projection, a plain GELU MLP ``c_proj(act(c_fc(x)))``,
rotary attention with grouped KV heads and an optional sliding window (carried by the mask)."""

from .base import FamilyAdapter


class Starcoder2Adapter(FamilyAdapter):
    name = "StarCoder2"
    model_types = ("starcoder2",)
    mlp_down = "mlp.c_proj"
    mlp_up = "mlp.c_fc"
    mlp_gate = None
    gated_mlp = False
    biases = True
