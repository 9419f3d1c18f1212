"""Issue 19's dense families: what their tiny configs exercise, the scaling multipliers, steering at zero
strength, StableLM's parallel-residual option and the multimodal Gemma 3 memory estimate.

The family suites (test_linearize, test_jacobian, test_graph, test_views, test_depth, test_placement,
test_gains) parametrize over these families too; this file holds what those do not already check.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StableLmConfig

from lldd_core.analysis.gains import prepare_gains
from lldd_core.analysis.graph import build_graph, raw_logits
from lldd_core.analysis.graph_decode import decode_graph_neurons, decoded_neurons
from lldd_core.analysis.graph_prune import prune
from lldd_core.analysis.graph_result import KIND_LOGIT, KIND_NEURON
from lldd_core.concepts.catalog import load as load_dataset
from lldd_core.forward.depth import prompt_context
from lldd_core.forward.jacobian import jacobian_operator, reconstruct, relative_error
from lldd_core.forward.linearize import detached_mode
from lldd_core.forward.residual import run_to_layer
from lldd_core.models.arch import adapter_for, text_config
from lldd_core.models.loading import ModelSpec, load_model, resolve_model
from lldd_core.models.memory import estimate_memory
from lldd_core.steering.generate import GenerationSettings, generate
from lldd_core.steering.methods.additive import AdditiveParams
from lldd_core.steering.methods.base import SteeringContext
from lldd_core.steering.methods.jacobian import JacobianParams
from lldd_core.steering.methods.llv import LLVParams
from lldd_core.steering.methods.lqr import LQRParams
from lldd_core.steering.methods.registry import plan_steering
from lldd_core.steering.pieces import mean_jacobians
from tests.helpers import load, prompt_ids
from tests.tiny import COMMON, CONFIGS, PROMPT, build_tokenizer, randomized

DENSE = ("granite", "smollm3", "olmo3", "starcoder2", "stablelm", "cohere2", "gemma3")
PROMPT_TOKENS = len(build_tokenizer()(PROMPT)["input_ids"])


def test_tiny_configs_exercise_what_the_families_add():
    """The multipliers are not 1, SmolLM3 has a layer without rotary, the windows are shorter than the
    test prompt, StarCoder2 and StableLM carry biases, Gemma 3 is the multimodal class."""
    granite = CONFIGS["granite"][0]
    assert all(getattr(granite, a) != 1 for a in ("embedding_multiplier", "residual_multiplier",
                                                   "attention_multiplier", "logits_scaling"))
    assert 0 in CONFIGS["smollm3"][0].no_rope_layers and 1 in CONFIGS["smollm3"][0].no_rope_layers
    for family in ("smollm3", "olmo3", "starcoder2", "cohere2", "gemma3"):
        cfg = text_config(CONFIGS[family][0])
        assert cfg.sliding_window < PROMPT_TOKENS, family
        assert family == "starcoder2" or "sliding_attention" in cfg.layer_types, family
    assert CONFIGS["cohere2"][0].logit_scale != 1
    assert CONFIGS["starcoder2"][1] and CONFIGS["stablelm"][1]
    assert CONFIGS["stablelm"][0].use_qkv_bias and CONFIGS["stablelm"][0].qk_layernorm
    assert CONFIGS["gemma3"][0].model_type == "gemma3"


@pytest.mark.parametrize("family", ["granite", "cohere2"])
def test_the_logit_multiplier_is_what_the_stock_head_applies(tiny_dirs, family):
    """Raw logits (graphs, decodings) equal the stock model's, which are not ``unembed(final_norm(x_L))``."""
    handle = load(tiny_dirs[family])
    ids = prompt_ids(handle)
    adapter, model = handle.adapter, handle.model
    c = adapter.logit_multiplier(model)
    assert c != 1.0
    with torch.no_grad():
        stock = model(ids[None]).logits[0, -1]
        with detached_mode(model, adapter):
            xk = run_to_layer(model, adapter, ids[None], handle.n_layers).xk
            ours = raw_logits(model, adapter, xk)
            unscaled = adapter.unembedding(model)(adapter.final_norm(model)(xk[:, -1]))[0]
    assert relative_error(stock, ours) < 1e-6
    assert relative_error(stock, unscaled) > 1e-2  # the multiplier matters


def test_granite_neuron_decodings_carry_the_residual_and_logit_multipliers(tiny_dirs):
    """A neuron's output decoding scores are its direct logit effect per unit value: ``c · W_U F (r · W_down[:, i])``
    (``r`` residual multiplier, ``c = 1 / logits_scaling``), spelled out from the named weights."""
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["granite"], dtype=torch.float64).eval()
    tok = AutoTokenizer.from_pretrained(tiny_dirs["granite"])
    adapter, cfg = adapter_for("granite"), model.config
    g = prune(build_graph(model, adapter, torch.tensor(tok(PROMPT)["input_ids"][:6]), max_nodes=None))
    g = dataclasses.replace(g, **decode_graph_neurons(model, adapter, g, tok, n=4))
    node = int(decoded_neurons(g)[0])
    layer, i = int(g.node_layer[node]), int(g.node_index[node])
    with torch.no_grad():
        col = model.model.layers[layer].mlp.down_proj.weight[:, i]
        logit = model.lm_head.weight @ (model.model.norm.weight * col) * cfg.residual_multiplier / cfg.logits_scaling
    order = torch.argsort(logit, descending=True)[:4]
    got = g.decoding(node)["out+"]
    assert [t for t, _ in got] == [tok.decode([int(j)]) for j in order]
    np.testing.assert_allclose([v for _, v in got], logit[order].numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", DENSE)
def test_zero_strength_steering_is_unsteered(tiny_dirs, family):
    handle = load(tiny_dirs[family])
    setup = prepare_gains(handle, load_dataset("sentiment"), n_eval=3, sizes=(6, 4, 3))
    concept = SteeringContext(setup, mean_jacobians=mean_jacobians(handle, setup.operating, pad_id=setup.pad))
    settings = GenerationSettings(max_new_tokens=6)
    prompt = [handle.info.encode("The movie was")]
    plain = generate(handle, prompt, [], settings)[0].new_ids
    plans = [plan_steering(handle, "additive", AdditiveParams(layers=[1], strength=0.0), concept),
             plan_steering(handle, "llv", LLVParams(dy=0.0, order=4), concept),
             plan_steering(handle, "jacobian", JacobianParams("The Golden Gate", lam=1.0, variant="blend")),
             plan_steering(handle, "lqr", LQRParams(q=0.0, r=1.0, qf=0.0, lam=2.0), concept)]
    for plan in plans:
        assert generate(handle, prompt, plan.interventions, settings)[0].new_ids == plain, plan.params
    strong = plan_steering(handle, "additive", AdditiveParams(layers=[1], strength=50.0), concept)
    assert generate(handle, prompt, strong.interventions, settings)[0].new_ids != plain


def test_cohere2_float64_derivatives_equal_central_differences(tiny_dirs):
    """Live float64 mode computes Cohere's own LayerNorm in float64 (stock: float32 inside), so at the
    full-attention layer (no rotary) JVPs equal central differences as tightly as in the other families.
    Its rotary layers round Q and K to float32 inside the stock attention (even in float64): there the
    differences' rounding needs a larger step and the agreement is ~1e-6 relative."""
    handle = load(tiny_dirs["cohere2"])
    ctx = prompt_context(handle.model, handle.adapter, handle.info.encode("The cat says meow and the dog"))
    P = torch.linalg.qr(torch.randn(ctx.states.shape[1], 5, generator=torch.Generator().manual_seed(0),
                                    dtype=torch.float64))[0]
    assert CONFIGS["cohere2"][0].layer_types == ["sliding_attention", "full_attention"]
    torch.testing.assert_close(ctx.jacobian_actions(1, P), ctx.fd_actions(1, P, h=1e-5), rtol=1e-6, atol=1e-7)
    jvp = ctx.jacobian_actions(0, P)
    assert float((jvp - ctx.fd_actions(0, P, h=1e-3)).abs().max()) < 1e-5 * float(jvp.abs().max())


def test_stablelm_parallel_residual_is_exact(tmp_path):
    """``use_parallel_residual``: one input norm feeds attention and MLP (no post-attention norm); the detached
    map reconstructs in float64 and the attribution graph is complete."""
    config = StableLmConfig(**COMMON, num_key_value_heads=2, partial_rotary_factor=0.5, use_qkv_bias=True,
                            use_parallel_residual=True)
    torch.manual_seed(0)
    model = randomized(AutoModelForCausalLM.from_config(config, dtype=torch.float64).eval())
    adapter = adapter_for("stablelm")
    block = adapter.layers(model)[0]
    assert block.post_attention_layernorm is None and adapter.mlp_norm_module(block) is block.input_layernorm
    ids = torch.arange(3, 3 + PROMPT_TOKENS)
    op = jacobian_operator(model, adapter, ids)
    full = op.full()
    with torch.no_grad():
        stock = model.get_decoder()(ids[None]).last_hidden_state[0, -1]
    assert relative_error(stock, op.y) < 1e-6
    assert relative_error(op.y, reconstruct(full.J, op.x0, full.b)) < 1e-10
    assert float(full.b.norm()) > 1e-3
    g = build_graph(model, adapter, ids[:8], max_nodes=None, batch_size=512)
    inc = g.incoming_sums()
    for kind in (g.node_kind == KIND_NEURON, g.node_kind == KIND_LOGIT):
        assert np.max(np.abs(inc[kind] - g.node_activation[kind])) <= 1e-10 * np.max(np.abs(g.node_activation[kind]))


def test_multimodal_gemma3_memory_counts_its_language_model(tiny_dirs):
    """Every parameter (the vision tower too) in the weights; the KV cache and widths of the text config."""
    spec = ModelSpec(str(tiny_dirs["gemma3"]), dtype="float32", device="cpu")
    info = resolve_model(spec)
    assert (info.n_layers, info.d_model) == (2, 32)
    estimate = estimate_memory(info, tokens=7)
    handle = load_model(spec)
    assert estimate.n_params == sum(p.numel() for p in handle.model.parameters())
    assert estimate.kv_per_token == 2 * 2 * 2 * 8 * 4  # L · kv heads · head_dim · float32
    assert estimate.jacobian == 7 * 32 * 32 * 4
