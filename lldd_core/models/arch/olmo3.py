"""OLMo 3: the OLMo 2 layout (norms after the sub-layers, RMSNorms on full Q and K) with alternating
sliding-window and full-attention layers (the mask carries the window)."""

from .olmo2 import Olmo2Adapter


class Olmo3Adapter(Olmo2Adapter):
    name = "OLMo 3"
    model_types = ("olmo3",)
