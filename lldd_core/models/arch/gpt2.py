"""GPT-2: LayerNorm with biases, Conv1D projections with biases, plain GELU MLP, learned positions."""

from torch import nn

from .base import FamilyAdapter


class GPT2Adapter(FamilyAdapter):
    name = "GPT-2"
    model_types = ("gpt2",)
    attention_output = "attn"
    mlp_output = "mlp"
    mlp_down = "mlp.c_proj"
    mlp_up = "mlp.c_fc"
    mlp_gate = None
    mlp_norm = "ln_2"
    gated_mlp = False
    biases = True

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return self.decoder(model).h

    def final_norm(self, model: nn.Module) -> nn.Module:
        return self.decoder(model).ln_f
