"""Phi-3 / Phi-4(-mini): fused QKV and gate-up projections, partial rotary, no biases.

The MLP is ``down(up * act(gate))``. We detach the whole activated gate ``act(gate)``, the same
convention as every other gated family; the reference implementation detaches Phi the other way
round (``up`` and ``sigmoid(gate)`` frozen). Both give exact reconstructions; ours keeps one rule
for all families so that Jacobians are comparable across them.
"""

from .base import FamilyAdapter


class Phi3Adapter(FamilyAdapter):
    name = "Phi-3 / Phi-4"
    model_types = ("phi3",)
    mlp_up = "mlp.gate_up_proj"
    mlp_gate = "mlp.gate_up_proj"
    mlp_gate_up_fused = True
