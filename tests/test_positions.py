"""Additive steering positions: ``last`` steers every forward's last token, ``prompt`` the prompt's last token only."""

from __future__ import annotations

import torch

from lldd_core.forward.interventions import AddVectors
from lldd_core.steering.generate import GenerationSettings, generate
from tests.helpers import load

PROMPT = "The cat says meow and the dog"


def _full_recompute(handle, prompt: list[int], w: torch.Tensor, layer: int, where: str, n_new: int) -> list[int]:
    """Greedy tokens without a KV cache: every step reruns the whole text with ``w`` added at block
    ``layer``'s input at the prompt's last position (``prompt``) or at every position from it on (``last``)."""
    ids = list(prompt)
    blocks = handle.adapter.layers(handle.model)
    first = len(prompt) - 1
    for _ in range(n_new):
        steered = [first] if where == "prompt" else list(range(first, len(ids)))

        def pre(module, args, kwargs, steered=steered):
            h = (args[0] if args else kwargs["hidden_states"]).clone()
            h[0, steered] += w
            return ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})

        hook = blocks[layer].register_forward_pre_hook(pre, with_kwargs=True)
        try:
            with torch.no_grad():
                logits = handle.model(torch.tensor([ids])).logits[0, -1]
        finally:
            hook.remove()
        ids.append(int(logits.argmax()))
    return ids[len(prompt):]


def test_prompt_and_last_positions_match_a_full_recomputation(tiny_dirs):
    handle = load(tiny_dirs["llama"])
    prompt = handle.info.encode(PROMPT)
    w = 3.0 * torch.nn.functional.normalize(torch.randn(32, generator=torch.Generator().manual_seed(0),
                                                        dtype=torch.float64), dim=0)
    out = {}
    for where in ("prompt", "last"):
        got = generate(handle, [prompt], [AddVectors({1: w}, where)], GenerationSettings(max_new_tokens=6))[0].new_ids
        assert got == _full_recompute(handle, prompt, w, 1, where, len(got))
        out[where] = got
    plain = generate(handle, [prompt], [], GenerationSettings(max_new_tokens=6))[0].new_ids
    assert out["prompt"][0] == out["last"][0]  # the first forward is steered alike
    assert out["prompt"] != plain
    assert out["prompt"] != out["last"]  # only `last` keeps steering the generated tokens
