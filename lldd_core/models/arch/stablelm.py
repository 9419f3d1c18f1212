"""StableLM (2): LayerNorms with biases, a gated SiLU MLP, partial rotary, optional Q/K/V biases and
per-head Q/K LayerNorms (``qk_layernorm``; frozen with Q and K anyway).

With ``use_parallel_residual`` a block is ``x + attn(ln(x)) + mlp(ln(x))`` with one shared input
norm and no ``post_attention_layernorm``; otherwise it is sequential like Llama.
"""

from torch import nn

from .base import FamilyAdapter


class StableLmAdapter(FamilyAdapter):
    name = "StableLM"
    model_types = ("stablelm",)
    biases = True

    def mlp_norm_module(self, block: nn.Module) -> nn.Module | None:
        post = getattr(block, "post_attention_layernorm", None)
        return post if post is not None else block.input_layernorm
