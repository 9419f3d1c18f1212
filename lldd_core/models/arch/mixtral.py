"""Mixtral: Mistral's layout with a sparse MoE MLP: ``sum_{e in top2} w_e(x) down_e(act(gate_e x) * up_e x)``.

The router (``mlp.gate``: softmax over 8 experts, top-2, renormalized) is frozen in detached mode, so the
chosen experts and their weights ``w_e`` are constants at this input; inside each expert the activated gate
is detached like any gated MLP's.
"""

from .base import FamilyAdapter


class MixtralAdapter(FamilyAdapter):
    name = "Mixtral"
    model_types = ("mixtral",)
    experts = True
    router = "mlp.gate"
    router_softmax_first = True
