"""Gemma 3 multimodal checkpoints (``Gemma3ForConditionalGeneration``) through their language model.

Text-only prompts never reach the vision tower or the projector, so the model is the Gemma 3 text
model (see :mod:`.gemma`) with the language model's blocks and norms (``get_decoder()``) and the
outer ``lm_head``; the residual stream, the detached map and the bias channel are the language
model's. Image inputs are not analysed.
"""

from collections.abc import Iterator

from torch import nn

from .gemma import GemmaAdapter

#: Children of ``Gemma3Model`` that only images run through.
VISION_PARTS = ("vision_tower", "multi_modal_projector")


class Gemma3MultimodalAdapter(GemmaAdapter):
    name = "Gemma 3 (multimodal, language model)"
    model_types = ("gemma3",)

    def text_modules(self, model: nn.Module) -> Iterator[nn.Module]:
        vision = {id(m) for name, child in model.named_modules() if name.rsplit(".", 1)[-1] in VISION_PARTS
                  for m in child.modules()}
        yield from (m for m in model.modules() if id(m) not in vision)
