"""OLMoE: OLMo's pre-norm layout with RMSNorms on full Q and K and a sparse MoE MLP (top-8 of 64).

The router (``mlp.gate``) is frozen in detached mode: top-k choice and weights are constants at this input.
A checkpoint with ``clip_qkv`` set clamps Q, K and V; the clamp on V is not detached (OLMoE-1B-7B has none).
"""

from .base import FamilyAdapter


class OlmoeAdapter(FamilyAdapter):
    name = "OLMoE"
    model_types = ("olmoe",)
    experts = True
    router = "mlp.gate"
    router_softmax_first = True
