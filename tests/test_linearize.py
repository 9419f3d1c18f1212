"""Detached mode changes nothing but autograd: same output, and the model restored bit for bit."""

from __future__ import annotations

import pytest
import torch

from lldd_core.forward.jacobian import relative_error
from lldd_core.forward.linearize import DETACHED_ATTENTION, detached_mode, live_mode
from tests.helpers import load, normal_output, prompt_ids
from tests.tiny import FAMILIES


def _snapshot(model: torch.nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "forwards": {name for name, m in model.named_modules() if "forward" in m.__dict__},
        "attn": model.config._attn_implementation,
        "training": model.training,
    }


def _same(a: dict, b: dict) -> bool:
    return (
        a["forwards"] == b["forwards"]
        and a["attn"] == b["attn"]
        and a["training"] == b["training"]
        and a["state"].keys() == b["state"].keys()
        and all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_detached_output_equals_normal_output(tiny_dirs, family):
    """Catches a missing causal or sliding-window mask: the error would be O(1), not ~1e-7."""
    handle = load(tiny_dirs[family])
    ids = prompt_ids(handle)
    assert len(ids) > 4  # longer than the sliding windows of the test models
    expected = normal_output(handle, ids)
    with detached_mode(handle.model, handle.adapter), torch.no_grad():
        assert handle.model.config._attn_implementation == DETACHED_ATTENTION
        got = handle.model.get_decoder()(ids[None]).last_hidden_state[0, -1]
    # stock transformers rounds norms through float32: ~1e-7 relative in float64
    assert relative_error(expected, got) < 1e-6


@pytest.mark.parametrize("family", FAMILIES)
def test_model_restored_bit_for_bit(tiny_dirs, family):
    handle = load(tiny_dirs[family])
    ids = prompt_ids(handle)
    before = _snapshot(handle.model)
    out_before = normal_output(handle, ids)
    with detached_mode(handle.model, handle.adapter):
        handle.model(ids[None])
    with live_mode(handle.model, handle.adapter):
        handle.model(ids[None])
    assert _same(before, _snapshot(handle.model))
    assert torch.equal(out_before, normal_output(handle, ids))


def test_model_restored_after_error(tiny_dirs):
    handle = load(tiny_dirs["llama"])
    handle.model.train()  # detached mode switches to eval and must switch back
    before = _snapshot(handle.model)
    with pytest.raises(RuntimeError, match="boom"):
        with detached_mode(handle.model, handle.adapter):
            raise RuntimeError("boom")
    assert _same(before, _snapshot(handle.model))


def test_mask_is_causal_in_detached_mode(tiny_dirs):
    """Changing a later token must not change an earlier position's output."""
    handle = load(tiny_dirs["llama"])
    ids = prompt_ids(handle)
    changed = ids.clone()
    changed[-1] = (changed[-1] + 1) % 100
    with detached_mode(handle.model, handle.adapter), torch.no_grad():
        a = handle.model.get_decoder()(ids[None]).last_hidden_state[0, :-1]
        b = handle.model.get_decoder()(changed[None]).last_hidden_state[0, :-1]
    assert torch.equal(a, b)
