"""Mixture-of-experts families (issue 19): eager experts in every precision, routers that really route,
GPT-OSS's constant ``+1`` in the bias channel, every expert in the memory estimate, zero-strength steering.

The family suites (test_linearize, test_jacobian, test_views, test_depth, test_placement, test_gains) run
on these families through ``tests.tiny``; this file covers what is particular to them.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM

from lldd_core.analysis.gains import prepare_gains
from lldd_core.concepts.catalog import load as load_concept
from lldd_core.errors import InputError
from lldd_core.forward.jacobian import jacobian_operator, reconstruct, relative_error
from lldd_core.forward.linearize import live_mode
from lldd_core.models.arch.base import EXPERTS_IMPLEMENTATION
from lldd_core.models.loading import ModelSpec, experts_kwargs, resolve_model
from lldd_core.models.memory import estimate_memory
from lldd_core.models.placement import bias_scale
from lldd_core.steering.generate import GenerationSettings, generate
from lldd_core.steering.methods.additive import AdditiveParams
from lldd_core.steering.methods.base import SteeringContext
from lldd_core.steering.methods.jacobian import JacobianParams
from lldd_core.steering.methods.llv import LLVParams
from lldd_core.steering.methods.registry import plan_steering
from tests.helpers import load, normal_output, prompt_ids
from tests.tiny import CONFIGS, MOE


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
def test_experts_load_eagerly_and_run_in_every_precision(tiny_dirs, dtype):
    for family in MOE:
        handle = load(tiny_dirs[family], dtype)
        assert handle.model.config._experts_implementation == EXPERTS_IMPLEMENTATION == "eager"
        assert torch.isfinite(normal_output(handle, prompt_ids(handle))).all(), family


def test_transformers_default_experts_refuse_float64(tiny_dirs):
    """Why loading chooses the experts loop: transformers 5's default grouped_mm has no float64 kernel."""
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["mixtral"], dtype=torch.float64)
    if model.config._experts_implementation != "grouped_mm":
        pytest.skip(f"this transformers defaults to {model.config._experts_implementation}")
    with pytest.raises(RuntimeError):
        model(torch.tensor([[1, 5, 9]]))


@pytest.mark.parametrize("family", MOE)
def test_routers_choose_several_experts(tiny_dirs, family):
    """The tiny models really route: every MoE layer sends the prompt's tokens to at least three of four experts."""
    handle = load(tiny_dirs[family])
    routers = list(handle.adapter.routers(handle.model))
    assert len(routers) == handle.n_layers
    indices: list[torch.Tensor] = []  # each router returns (logits, weights, indices)
    handles = [r.register_forward_hook(lambda _m, _a, out: indices.append(out[2])) for r in routers]
    try:
        with torch.no_grad():
            handle.model(prompt_ids(handle)[None])
    finally:
        for h in handles:
            h.remove()
    chosen = [len(torch.unique(i)) for i in indices]
    assert len(chosen) == len(routers)
    assert min(chosen) >= 3, chosen


def test_gpt_oss_plus_one_is_the_bias_channel_and_its_clamps_are_active(tiny_dirs):
    """With every bias parameter zeroed, GPT-OSS's bias channel is its constant ``+1`` alone (still exact)."""
    handle = load(tiny_dirs["gpt_oss"])
    model, ids = handle.model, prompt_ids(handle)
    experts = model.model.layers[0].mlp.experts
    ups: list = []
    h = experts.register_forward_pre_hook(
        lambda m, args: ups.append((args[0] @ m.gate_up_proj[0] + m.gate_up_proj_bias[0])[..., 1::2]))
    try:
        with torch.no_grad():
            model(ids[None])
    finally:
        h.remove()
    assert (ups[0].abs() > experts.limit).any() and (ups[0].abs() < experts.limit).any()  # the clamp acts
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    op = jacobian_operator(model, handle.adapter, ids)
    full = op.full()
    assert relative_error(op.y, reconstruct(full.J, op.x0, full.b)) < 1e-10
    assert float(full.b.norm() / op.y.detach().norm()) > 1e-3
    assert bias_scale() == 1.0  # the scale is back to a plain 1 outside the bias channel


@pytest.mark.parametrize("family", MOE)
def test_memory_estimate_counts_every_expert(tiny_dirs, family):
    config = CONFIGS[family][0]
    estimate = estimate_memory(resolve_model(ModelSpec(str(tiny_dirs[family]), dtype="bfloat16", device="cpu")))
    handle = load(tiny_dirs[family], "bfloat16")
    assert estimate.n_params == sum(p.numel() for p in handle.model.parameters())
    assert estimate.weights == 2 * estimate.n_params
    n_experts = getattr(config, "num_local_experts", None) or config.num_experts
    width = getattr(config, "moe_intermediate_size", None) or config.intermediate_size
    experts = config.num_hidden_layers * n_experts * 3 * width * config.hidden_size  # gate, up, down of each
    assert estimate.n_params > experts
    expert_params = sum(p.numel() for n, p in handle.model.named_parameters() if ".experts." in n)
    assert expert_params >= experts


GREEDY = GenerationSettings(max_new_tokens=4)


@pytest.mark.parametrize("family", MOE)
def test_zero_strength_steering_is_unsteered(tiny_dirs, family):
    handle = load(tiny_dirs[family])
    setup = prepare_gains(handle, load_concept("sentiment"), n_eval=3, sizes=(6, 4, 3))
    concept = SteeringContext(setup)
    prompt = [handle.info.encode("The movie was")]
    plain = [g.new_ids for g in generate(handle, prompt, (), GREEDY)]
    plans = [plan_steering(handle, "additive", AdditiveParams(layers=[1], strength=0.0), concept),
             plan_steering(handle, "llv", LLVParams(dy=0.0, order=4), concept),
             plan_steering(handle, "jacobian", JacobianParams("The Golden Gate", lam=1.0, variant="blend")),
             plan_steering(handle, "jacobian", JacobianParams("The Golden Gate", lam=0.0, variant="additive"))]
    for plan in plans:
        assert [g.new_ids for g in generate(handle, prompt, plan.interventions, GREEDY)] == plain, plan.params
    strong = plan_steering(handle, "additive", AdditiveParams(layers=[1], strength=50.0), concept)
    assert [g.new_ids for g in generate(handle, prompt, strong.interventions, GREEDY)] != plain


def test_mxfp4_experts_are_dequantized_and_dense_families_get_no_experts_arguments(tiny_dirs):
    """GPT-OSS checkpoints store experts in MXFP4, whose kernels would bypass detached mode: loading dequantizes."""
    info = resolve_model(ModelSpec(str(tiny_dirs["gpt_oss"]), device="cpu"))
    assert experts_kwargs(info) == {"experts_implementation": "eager"}
    info.config.quantization_config = {"quant_method": "mxfp4"}
    kwargs = experts_kwargs(info)
    assert kwargs["experts_implementation"] == "eager" and kwargs["quantization_config"].dequantize is True
    quantized = dataclasses.replace(info, spec=dataclasses.replace(info.spec, quantization="4bit"))
    with pytest.raises(InputError, match="MXFP4"):
        experts_kwargs(quantized)
    assert experts_kwargs(resolve_model(ModelSpec(str(tiny_dirs["llama"]), device="cpu"))) == {}


@pytest.mark.parametrize("family", MOE)
def test_float64_live_mode_equals_the_stock_forward(tiny_dirs, family):
    """Live mode's float64 attention (GPT-OSS's sinks included) and routers compute what the stock model does."""
    handle = load(tiny_dirs[family])
    ids = prompt_ids(handle)
    expected = normal_output(handle, ids)
    with live_mode(handle.model, handle.adapter), torch.no_grad():
        got = handle.model.get_decoder()(ids[None]).last_hidden_state[0, -1]
    assert relative_error(expected, got) < 1e-6
    if family == "gpt_oss":  # the sinks matter at these weights: leaving them out would be caught above
        with torch.no_grad():
            for block in handle.adapter.layers(handle.model):
                block.self_attn.sinks.zero_()
        assert relative_error(expected, normal_output(handle, ids)) > 1e-3
