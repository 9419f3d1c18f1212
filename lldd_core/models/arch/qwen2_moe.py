"""Qwen2-MoE / Qwen1.5-MoE: Qwen2's attention (Q, K, V biases) with a sparse MoE MLP plus a shared expert:

    mlp(x) = sum_{e in topk} w_e(x) E_e(x) + sigmoid(g . x) S(x)

Detached mode freezes the router (``mlp.gate``: top-k choice and weights ``w_e``) and the shared-expert
gate's logit ``g . x`` (``mlp.shared_expert_gate``), so ``sigmoid(g . x)`` is a constant factor; the
experts ``E_e`` and the shared expert ``S`` are gated MLPs with their activated gates detached.
"""

from .base import FamilyAdapter


class Qwen2MoeAdapter(FamilyAdapter):
    name = "Qwen2-MoE"
    model_types = ("qwen2_moe",)
    experts = True
    biases = True
    router = "mlp.gate"
    router_softmax_first = True
    frozen = ("mlp.shared_expert_gate",)
