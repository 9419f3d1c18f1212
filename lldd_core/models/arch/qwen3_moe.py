"""Qwen3-MoE: Qwen3's attention (RMSNorms on queries and keys) with a sparse MoE MLP (top-k of many
small experts, optionally renormalized); layers listed in ``mlp_only_layers`` keep a dense MLP.

The router (``mlp.gate``) is frozen in detached mode: the top-k choice and its weights are constants.
"""

from .base import FamilyAdapter


class Qwen3MoeAdapter(FamilyAdapter):
    name = "Qwen3-MoE"
    model_types = ("qwen3_moe",)
    experts = True
    router = "mlp.gate"
    router_softmax_first = True
