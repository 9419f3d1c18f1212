"""GPT-NeoX / Pythia: parallel residual ``x + attn(ln1(x)) + mlp(ln2(x))``, partial rotary, biases."""

from torch import nn

from .base import FamilyAdapter


class GPTNeoXAdapter(FamilyAdapter):
    name = "GPT-NeoX / Pythia"
    model_types = ("gpt_neox",)
    attention_output = "attention"
    mlp_output = "mlp"
    mlp_down = "mlp.dense_4h_to_h"
    mlp_up = "mlp.dense_h_to_4h"
    mlp_gate = None
    gated_mlp = False
    biases = True

    def final_norm(self, model: nn.Module) -> nn.Module:
        return self.decoder(model).final_layer_norm
