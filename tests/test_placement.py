"""A model dispatched by accelerate with blocks offloaded to disk computes what the plain model does.

``device="map"`` with a ``max_memory`` smaller than the model makes accelerate keep some modules on
the disk (``meta`` tensors here, loaded by its hooks for each call). Detached mode, the bias
channel, the residual hooks and the steering hooks must all work through those hooks: the same
detached Jacobians, gain curves and steered text as the plain model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lldd_core.analysis.gains import analyze_gains, prepare_gains
from lldd_core.analysis.spectrum import embedding_matrices
from lldd_core.concepts.catalog import load
from lldd_core.errors import InputError
from lldd_core.forward.jacobian import jacobian_operator, reconstruct, relative_error
from lldd_core.forward.linearize import detached_mode
from lldd_core.models.loading import ModelSpec, load_model, parse_max_memory
from lldd_core.models.placement import forward_attribute, input_device, offloaded, tensor_of
from lldd_core.steering.compare import compare
from lldd_core.steering.generate import GenerationSettings
from lldd_core.steering.methods.additive import AdditiveParams
from lldd_core.steering.methods.base import SteeringContext
from lldd_core.steering.methods.jacobian import JacobianParams
from lldd_core.steering.methods.registry import plan_steering
from tests.helpers import load as load_plain
from tests.helpers import prompt_ids
from tests.tiny import FAMILIES

SMALL = (6, 4, 3)


def _weight_bytes(handle) -> int:
    return sum(p.numel() * p.element_size() for p in handle.model.parameters())


def load_offloaded(path, plain, tmp_path, monkeypatch, fraction: float = 0.6):
    """``path`` through ``device="map"`` with room on the CPU for ``fraction`` of the weights: the rest on disk."""
    monkeypatch.setenv("LLDD_OFFLOAD_DIR", str(tmp_path / "offload"))
    budget = int(fraction * _weight_bytes(plain))
    handle = load_model(ModelSpec(str(path), dtype=plain.spec.dtype, device="map", max_memory=f"cpu={budget}"))
    assert "disk" in handle.model.hf_device_map.values(), handle.model.hf_device_map
    assert offloaded(handle.model)
    return handle


@pytest.mark.parametrize("family", FAMILIES)
def test_offloaded_detached_jacobian_equals_plain(tiny_dirs, family, tmp_path, monkeypatch):
    plain = load_plain(tiny_dirs[family])
    mapped = load_offloaded(tiny_dirs[family], plain, tmp_path, monkeypatch)
    ids = prompt_ids(plain)
    a = jacobian_operator(plain.model, plain.adapter, ids).full()
    op = jacobian_operator(mapped.model, mapped.adapter, ids)
    b = op.full()
    torch.testing.assert_close(b.J, a.J, rtol=0, atol=1e-12)
    torch.testing.assert_close(b.b, a.b, rtol=0, atol=1e-12)
    assert relative_error(op.y, reconstruct(b.J, op.x0, b.b)) < 1e-10
    # the decoders read offloaded embeddings through the hooks' weights map
    for x, y in zip(embedding_matrices(mapped), embedding_matrices(plain)):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_offloaded_gains_and_steered_text_equal_plain(tiny_dirs, tmp_path, monkeypatch):
    plain = load_plain(tiny_dirs["gpt2"])
    mapped = load_offloaded(tiny_dirs["gpt2"], plain, tmp_path, monkeypatch)
    data = load("sentiment")
    a = analyze_gains(plain, data, order=8, eps=0.1, n_eval=3, sizes=SMALL)
    b = analyze_gains(mapped, data, order=8, eps=0.1, n_eval=3, sizes=SMALL)
    for name in ("predicted", "measured", "exact", "directions"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-10, atol=1e-12, err_msg=name)
    # functorch cannot see through accelerate's per-call weight loading: reverse mode, said so
    assert mapped.notice is not None and "reverse-over-reverse" in mapped.notice and plain.notice is None

    settings = GenerationSettings(max_new_tokens=10)
    results = []
    for handle in (plain, mapped):
        setup = prepare_gains(handle, data, n_eval=1, sizes=SMALL)
        plans = [plan_steering(handle, "additive", AdditiveParams(layers=[1], strength=4.0), SteeringContext(setup)),
                 plan_steering(handle, "jacobian", JacobianParams("The Golden Gate", lam=0.2, variant="blend"))]
        results.append([compare(handle, "The food at this place was", plan, settings) for plan in plans])
    for r_plain, r_mapped in zip(*results):
        assert (r_mapped.unsteered_tokens, r_mapped.steered_tokens) == (r_plain.unsteered_tokens, r_plain.steered_tokens)
        np.testing.assert_allclose(r_mapped.readout_steered, r_plain.readout_steered, rtol=1e-10, atol=1e-12)
    assert any(r.steered_tokens != r.unsteered_tokens for r in results[0])  # the steering did something


def test_patches_go_inside_accelerate_hooks_and_are_removed(tiny_dirs, tmp_path, monkeypatch):
    plain = load_plain(tiny_dirs["llama"])
    mapped = load_offloaded(tiny_dirs["llama"], plain, tmp_path, monkeypatch)
    norm = mapped.adapter.final_norm(mapped.model)
    assert forward_attribute(norm) == "_old_forward" and forward_attribute(plain.adapter.final_norm(plain.model)) == "forward"
    hooked = norm.forward
    before = norm._old_forward
    with detached_mode(mapped.model, mapped.adapter):
        assert norm.forward is hooked and norm._old_forward is not before
    assert norm._old_forward is before
    assert input_device(mapped.model) == torch.device("cpu")
    lm_head = mapped.adapter.unembedding(mapped.model)
    torch.testing.assert_close(tensor_of(lm_head), plain.adapter.unembedding(plain.model).weight)


def test_max_memory_is_parsed_and_checked(tiny_dirs):
    assert parse_max_memory("0=20GiB, cuda:1=10GiB,cpu=500MB,mps=123") == {0: 20 * 2**30, 1: 10 * 2**30, "cpu": 500 * 10**6,
                                                                            "mps": 123}
    assert parse_max_memory("") is None and parse_max_memory(None) is None
    for bad in ("gpu0=1GiB", "cpu", "cpu=lots"):
        with pytest.raises(InputError, match="max-memory|amount"):
            parse_max_memory(bad)
    from lldd_core.models.loading import resolve_model

    with pytest.raises(InputError, match="device 'map'"):
        resolve_model(ModelSpec(str(tiny_dirs["gpt2"]), device="cpu", max_memory="cpu=1GiB"))


def test_quantized_loading_explains_what_is_missing(tiny_dirs, monkeypatch, capsys):
    import importlib.util

    from lldd_core.cli.main import main

    spec = ModelSpec(str(tiny_dirs["llama"]), quantization="4bit")
    if importlib.util.find_spec("bitsandbytes") is None:  # the CPU path: no optional extras installed
        with pytest.raises(InputError, match=r"needs bitsandbytes.*\.\[quant\]"):
            load_model(spec)
        assert main(["jacobian", "--model", str(tiny_dirs["llama"]), "--prompt", "The Golden Gate",
                     "--quantization", "8bit", "--quiet"]) == 2
        assert "bitsandbytes" in capsys.readouterr().err
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "bitsandbytes" else real_find_spec(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="needs a CUDA GPU"):
        load_model(spec)
    with pytest.raises(InputError, match="Unknown quantization"):
        load_model(ModelSpec(str(tiny_dirs["llama"]), quantization="3bit"))


@pytest.mark.parametrize("method", ["full", "matrix_free"])
def test_offloaded_spectra_and_layer_views_equal_plain(tiny_dirs, tmp_path, monkeypatch, method):
    from lldd_core.analysis.layers import analyze_layers
    from lldd_core.analysis.spectrum import analyze_spectrum

    plain = load_plain(tiny_dirs["gpt2"])
    mapped = load_offloaded(tiny_dirs["gpt2"], plain, tmp_path, monkeypatch)
    ids = plain.info.encode("The Golden Gate Bridge is")
    a = analyze_spectrum(plain, ids, k=4, method=method)
    b = analyze_spectrum(mapped, ids, k=4, method=method)
    np.testing.assert_allclose(b.singular_values, a.singular_values, rtol=1e-9, atol=1e-12)
    assert (b.u_tokens, b.v_tokens, b.next_token) == (a.u_tokens, a.v_tokens, a.next_token)
    la = analyze_layers(plain, ids, k=3, method=method)
    lb = analyze_layers(mapped, ids, k=3, method=method)
    np.testing.assert_allclose(lb.singular_values, la.singular_values, rtol=1e-9, atol=1e-12)
