"""The Jacobian operator's variants: ``reference`` is the reference implementation's recipe token for token,
and the phrase's bias channel is part of the map (``a = Σ_i J_i x_{0,i} + b``)."""

from __future__ import annotations

import pytest
import torch

from lldd_core.forward.interventions import JacobianSteering, intervene
from lldd_core.forward.jacobian import jacobian_operator
from lldd_core.models.loading import ModelSpec, load_model
from lldd_core.steering.generate import GenerationSettings, generate
from lldd_core.steering.methods.jacobian import JacobianParams
from tests.helpers import load
from tests.tiny import BIASED

PHRASE = "The bridge out of Marin is the"
PROMPTS = ["The service at the diner was terrible and I", "Please could you pass the",
           "We went to the cafe and the food was"]


def _blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks of a plain Hugging Face model (GPT-2 or Llama-style), found without lldd."""
    inner = getattr(model, "transformer", None) or model.model
    return inner.h if hasattr(inner, "h") else inner.layers


def reference_recipe(model, prompt: list[int], J: torch.Tensor, lsplit: int, lam: float, n_new: int) -> list[int]:
    """The reference's ``apply_steering_operator``, written again on the plain model with one hook.

    Every step recomputes the whole text (no KV cache): ``x_0`` of each position, ``added_k =
    cumsum_k J[k mod T_s] x_{0,k}``, then at the input of block ``lsplit - 1`` every position's
    ``h_i += λ added_i ‖h_i‖ / (2 ‖added_i‖)``; greedy next token. (The reference re-tokenizes the
    decoded text each step; token ids are kept here, as lldd does.)
    """
    ids = list(prompt)
    T_s = J.shape[0]
    for _ in range(n_new):
        x = torch.tensor([ids])
        with torch.no_grad():
            x0 = model(x, output_hidden_states=True).hidden_states[0][0]
            added = torch.cumsum(torch.stack([J[k % T_s] @ x0[k] for k in range(len(ids))]), 0)

            def pre(module, args, kwargs, added=added):
                h = (args[0] if args else kwargs["hidden_states"]).clone()
                h[0] += torch.stack([lam * added[i] * h[0, i].norm() / (2 * added[i].norm()) for i in range(len(ids))])
                return ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})

            hook = _blocks(model)[lsplit - 1].register_forward_pre_hook(pre, with_kwargs=True)
            try:
                logits = model(x).logits[0, -1]
            finally:
                hook.remove()
        ids.append(int(logits.argmax()))
    return ids[len(prompt):]


def _reference_jacobian(handle, phrase: str, lsplit: int) -> torch.Tensor:
    """``∂ norm(x_lsplit)(last token) / ∂x_{0,i}`` of the phrase, detached (as the reference takes it)."""
    ids = torch.tensor(handle.info.encode(phrase))
    return jacobian_operator(handle.model, handle.adapter, ids, layer=lsplit, final_norm=True).full().J


def _compare(handle, n_new: int = 12, lam: float = 1.028045295795) -> int:
    """lldd's ``reference`` variant against the recipe above; returns how many prompts the steering changed."""
    L = handle.n_layers
    lsplit = 2 * L // 3
    J = _reference_jacobian(handle, PHRASE, lsplit)
    changed = 0
    eos = handle.info.tokenizer.eos_token_id
    for text in PROMPTS:
        prompt = handle.info.encode(text)
        ours = generate(handle, [prompt], [JacobianSteering(J, lsplit, lam, "reference")],
                        GenerationSettings(max_new_tokens=n_new))[0].new_ids
        theirs = reference_recipe(handle.model, prompt, J, lsplit, lam, n_new)
        assert ours == theirs[: len(ours)], (text, ours, theirs)
        assert len(ours) == n_new or ours[-1] == eos  # lldd stops at the end of text, the recipe goes on
        plain = generate(handle, [prompt], [], GenerationSettings(max_new_tokens=n_new))[0].new_ids
        changed += plain != ours
    return changed


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_reference_variant_is_the_reference_recipe_on_tiny_models(tiny_dirs, family):
    assert _compare(load(tiny_dirs[family]), n_new=8) >= 1


def test_reference_variant_is_the_reference_recipe_on_demo_llama(demo_llama):
    # λ 1.5: at the reference's λ ≈ 1.03 whether a greedy token flips depends on the CPU's rounding of the
    # demo weights (AVX-512 builds changed none of the prompts, AVX2 builds did); at 1.5 both change 2 of 3
    assert _compare(load_model(ModelSpec(str(demo_llama), dtype="float64", device="cpu")), lam=1.5) >= 1


def test_reference_variant_is_the_reference_recipe_on_demo_gpt2(demo_default):
    # λ 3: on the GPT-2 demo the reference's λ ≈ 1.03 (and 1.5) flips no greedy token of these prompts within 12
    # tokens on some builds (AMD: 0 of 3; the CI machine's: 0 of 3), so the token-for-token comparison would not
    # see the steering act; at 3 it changes all three on this machine's build (2.0: one)
    assert _compare(load_model(ModelSpec(str(demo_default), dtype="float64", device="cpu")), lam=3.0) >= 1


def test_reference_variant_at_zero_strength_is_unsteered(tiny_dirs):
    handle = load(tiny_dirs["llama"])
    J = _reference_jacobian(handle, PHRASE, 1)
    prompt = handle.info.encode(PROMPTS[0])
    steered = generate(handle, [prompt], [JacobianSteering(J, 1, 0.0, "reference")], GenerationSettings(max_new_tokens=6))
    assert steered[0].new_ids == generate(handle, [prompt], [], GenerationSettings(max_new_tokens=6))[0].new_ids


@pytest.mark.parametrize("family", BIASED)
def test_blend_at_zero_on_the_phrase_itself_reproduces_its_state_with_the_bias_channel(tiny_dirs, family):
    """``a`` at the phrase's last token is ``Σ_i J_i x_{0,i} + b = x_ℓ`` exactly: replacing ``x_ℓ`` by it
    (blend, λ = 0, at ``ℓ = L`` so no later block reads the other positions) leaves the last token's
    logits unchanged — and without ``b`` it would not."""
    handle = load(tiny_dirs[family])
    ids = torch.tensor(handle.info.encode(PHRASE))
    layer = handle.n_layers
    full = jacobian_operator(handle.model, handle.adapter, ids, layer=layer, final_norm=False).full()
    assert float(full.b.norm()) > 1e-3  # a bias family: the channel is not zero
    with torch.no_grad():
        plain = handle.model(ids[None]).logits[0, -1]
        with intervene(handle.model, handle.adapter, [JacobianSteering(full.J, layer, 0.0, "blend", b=full.b)]):
            with_b = handle.model(ids[None]).logits[0, -1]
        with intervene(handle.model, handle.adapter, [JacobianSteering(full.J, layer, 0.0, "blend")]):
            without_b = handle.model(ids[None]).logits[0, -1]
    # 1e-6, not 1e-10: the stock model's norms round through float32 even in a float64 model
    assert float((with_b - plain).abs().max() / plain.abs().max()) < 1e-6
    assert float((without_b - plain).abs().max() / plain.abs().max()) > 1e-4


def test_service_reference_variant_defaults_and_caching(tiny_dirs, cache_dir, monkeypatch):
    """Through the service: λ ≈ 1.028 and x_{2L//3} by default, the recipe's text, the Jacobian cached with its norm."""
    from lldd_core import service as service_module
    from lldd_core.steering.pieces import REFERENCE_LAMBDA

    monkeypatch.setattr(service_module, "_SERVICE", None)
    svc = service_module.get_service()
    spec = ModelSpec(str(tiny_dirs["llama"]), dtype="float64", device="cpu")
    settings = GenerationSettings(max_new_tokens=8)
    got = svc.steer(spec, PROMPTS[0], "jacobian", JacobianParams(PHRASE, variant="reference"), settings=settings)
    L = svc.info(spec).n_layers
    assert got.result.params["lam"] == REFERENCE_LAMBDA and got.result.params["layer"] == 2 * L // 3
    handle = svc.handle(spec)
    J = svc.steering_jacobian(spec, PHRASE, 2 * L // 3, variant="reference")
    assert J.cache_hit and J.result.final_norm and J.result.reconstruction_error < 1e-10
    prompt = handle.info.encode(PROMPTS[0])
    theirs = reference_recipe(handle.model, prompt, torch.as_tensor(J.result.J), 2 * L // 3, REFERENCE_LAMBDA, 8)
    assert got.result.steered_tokens == [handle.info.tokenizer.decode([t]) for t in theirs][: len(got.result.steered_tokens)]
    blend = svc.steering_jacobian(spec, PHRASE, 2 * L // 3, variant="blend")
    assert not blend.cache_hit and not blend.result.final_norm  # a different map, its own entry
    svc.cache.close()
