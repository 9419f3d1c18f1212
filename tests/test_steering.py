"""Steered generation: zero strength is unsteered, hooks never outlive a run, batches steer like single prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lldd_core.analysis.gains import prepare_gains
from lldd_core.concepts.catalog import load
from lldd_core.errors import InputError
from lldd_core.forward.hooks import capture, hooks, on_input
from lldd_core.forward.interventions import AddVectors, JacobianSteering, LQRFeedback, intervene
from lldd_core.steering.calibrate import mean_exact_gains, steering_layers, trusted_layers
from lldd_core.steering.compare import compare
from lldd_core.steering.generate import GenerationSettings, generate, readout_along
from lldd_core.steering.methods.additive import AdditiveParams
from lldd_core.steering.methods.base import SteeringContext
from lldd_core.steering.methods.jacobian import JacobianParams
from lldd_core.steering.methods.llv import LLVParams
from lldd_core.steering.methods.lqr import LQRParams
from lldd_core.steering.methods.registry import plan_steering
from lldd_core.steering.pieces import mean_jacobians
from tests.helpers import load as load_model

PROMPTS = ["The movie was", "I really did not like the food at this place because", "Great"]
SMALL = {"n_eval": 3, "sizes": (6, 4, 3)}
GREEDY = GenerationSettings(max_new_tokens=8)


@pytest.fixture(scope="module")
def steer_env(tiny_dirs):
    handle = load_model(tiny_dirs["llama"])
    setup = prepare_gains(handle, load("sentiment"), **SMALL)
    A = mean_jacobians(handle, setup.operating, pad_id=setup.pad)
    return handle, setup, A


def _texts(handle, prompts, interventions=(), settings=GREEDY):
    return [g.new_ids for g in generate(handle, [handle.info.encode(p) for p in prompts], interventions, settings)]


def _hook_count(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_zero_strength_is_unsteered_and_hooks_are_removed(steer_env):
    handle, setup, A = steer_env
    concept, with_A = SteeringContext(setup), SteeringContext(setup, mean_jacobians=A)
    before = _hook_count(handle.model)
    plain = _texts(handle, PROMPTS[:1])
    zero_plans = [
        plan_steering(handle, "additive", AdditiveParams(layers=[1], strength=0.0), concept),
        plan_steering(handle, "additive", AdditiveParams(layers=[1], strength=0.0, positions="all"), concept),
        plan_steering(handle, "llv", LLVParams(dy=0.0, order=4), concept),
        plan_steering(handle, "jacobian", JacobianParams("The Golden Gate", lam=1.0, variant="blend")),
        plan_steering(handle, "jacobian", JacobianParams("The Golden Gate", lam=0.0, variant="additive")),
        plan_steering(handle, "lqr", LQRParams(q=0.0, r=1.0, qf=0.0, lam=2.0), with_A),
        plan_steering(handle, "lqr", LQRParams(q=0.0, r=1.0, qf=0.0, lam=2.0, setpoint="scaled", at="output"), with_A),
    ]
    for plan in zero_plans:
        assert _texts(handle, PROMPTS[:1], plan.interventions) == plain, plan.params
    strong = [plan_steering(handle, "additive", AdditiveParams(layers=[1], strength=50.0), concept),
              plan_steering(handle, "jacobian", {"steer_text": "The Golden Gate", "lam": 0.0}),  # a dict works too
              plan_steering(handle, "lqr", LQRParams(q=10.0, r=0.1, qf=10.0, lam=10.0), with_A),
              plan_steering(handle, "lqr", LQRParams(q=10.0, r=0.1, qf=10.0, lam=10.0, setpoint="scaled", at="output"),
                            with_A)]
    for plan in strong:
        assert _texts(handle, PROMPTS[:1], plan.interventions) != plain, plan.params
        assert _texts(handle, PROMPTS[:1]) == plain  # the model generates exactly as before
    assert _hook_count(handle.model) == before


def test_hooks_are_removed_when_generation_fails(steer_env):
    handle, _setup, _ = steer_env
    before = _hook_count(handle.model)
    bad = AddVectors({1: torch.zeros(3)})  # wrong width: the hook raises inside the forward
    with pytest.raises(RuntimeError):
        generate(handle, [handle.info.encode("Hello")], [bad], GREEDY)
    assert _hook_count(handle.model) == before


@pytest.mark.parametrize("kind", ["additive-last", "additive-all", "jacobian-blend", "jacobian-additive", "lqr-input",
                                  "lqr-output"])
def test_left_padded_batch_steers_like_single_prompts(steer_env, kind):
    handle, setup, A = steer_env
    if kind.startswith("additive"):
        plan = lambda: plan_steering(handle, "additive",
                                     AdditiveParams(layers=[1], strength=3.0, positions=kind.split("-")[1]),
                                     SteeringContext(setup))
    elif kind.startswith("jacobian"):
        plan = lambda: plan_steering(handle, "jacobian",
                                     JacobianParams("The Golden Gate", lam=0.4, variant=kind.split("-")[1]))
    else:
        plan = lambda: plan_steering(handle, "lqr", LQRParams(q=1.0, r=1.0, qf=1.0, lam=3.0, at=kind.split("-")[1]),
                                     SteeringContext(setup, mean_jacobians=A))
    batched = _texts(handle, PROMPTS, plan().interventions)
    single = [_texts(handle, [p], plan().interventions)[0] for p in PROMPTS]
    assert batched == single


def test_lqr_input_feedback_corrects_block_inputs_by_its_error(steer_env):
    """``at="input"``: block k runs on ``x_k + (β_k - v_kᵀx_k) K_k v_k`` at the last position, nothing else moves."""
    handle, setup, _ = steer_env
    blocks = handle.adapter.layers(handle.model)
    L, d = handle.n_layers, handle.info.d_model
    gen, dtype = torch.Generator().manual_seed(0), next(handle.model.parameters()).dtype
    v = torch.nn.functional.normalize(torch.randn(L, d, generator=gen, dtype=dtype), dim=-1)
    Kv = torch.zeros(L, d, dtype=dtype)
    Kv[1] = torch.randn(d, generator=gen, dtype=dtype)
    beta = torch.full((L,), 2.0, dtype=dtype)
    ids = torch.tensor([handle.info.encode(PROMPTS[1])])
    seen: dict = {}
    with torch.no_grad(), hooks(capture(blocks[1], seen, "plain", at="input", select=lambda x: x.clone())):
        handle.model(input_ids=ids)
    with torch.no_grad(), intervene(handle.model, handle.adapter, [LQRFeedback(v, beta, Kv, "input")]), \
            hooks(capture(blocks[1], seen, "steered", at="input", select=lambda x: x.clone())):
        handle.model(input_ids=ids)
    x = seen["plain"][0, -1]
    torch.testing.assert_close(seen["steered"][0, -1], x + (2.0 - x @ v[1]) * Kv[1])
    torch.testing.assert_close(seen["steered"][0, :-1], seen["plain"][0, :-1], rtol=0, atol=0)


def test_llv_and_lqr_steer_at_the_trusted_layers_up_to_the_gain_peak(steer_env):
    handle, setup, A = steer_env
    gains = mean_exact_gains(setup)
    layers = steering_layers(setup, gains)
    llv = plan_steering(handle, "llv", LLVParams(dy=2.0, order=4), SteeringContext(setup))
    assert llv.params["layers"] == layers and np.flatnonzero(llv.schedule).tolist() == layers
    assert float(gains @ llv.schedule) == pytest.approx(2.0, rel=1e-12)  # the exact gains' first-order shift is Δy
    lqr = plan_steering(handle, "lqr", None, SteeringContext(setup, mean_jacobians=A))
    fb = lqr.interventions[0]
    assert fb.at == "input" and lqr.params["layers"] == layers
    assert [k for k in range(handle.n_layers) if float(fb.gain_dirs[k].abs().max()) > 0] == layers
    reference = plan_steering(handle, "lqr", LQRParams(setpoint="scaled", at="output"),
                              SteeringContext(setup, mean_jacobians=A))
    assert reference.params["layers"] == list(range(handle.n_layers))


def test_steering_layers_stop_at_the_largest_trusted_gain():
    from types import SimpleNamespace

    setup = SimpleNamespace(layers=[0, 1, 2, 3, 4], flagged_layers=[0])
    assert steering_layers(setup, np.array([9.0, 1.0, 3.0, 2.0, 2.5])) == [1, 2]  # x_0 is flagged: not the peak
    assert steering_layers(setup, np.array([0.0, 4.0, 3.0, 2.0, 1.0])) == [1]
    assert trusted_layers(setup) == [1, 2, 3, 4]


def test_positions_count_real_tokens_only(steer_env):
    handle, _, _ = steer_env
    ids = [handle.info.encode(p) for p in PROMPTS]
    seen = []

    class Spy(AddVectors):
        def hooks(self, blocks, positions):
            return [on_input(blocks[0], lambda h: seen.append(positions.current.clone()))]

    generate(handle, ids, [Spy({})], GenerationSettings(max_new_tokens=3))
    first = seen[0]
    for b, seq in enumerate(ids):
        row = first[b][first[b] >= 0]
        assert row.tolist() == list(range(len(seq)))
    assert seen[1][:, 0].tolist() == [len(s) for s in ids]  # the first generated token continues each row


def test_jacobian_operator_running_sum_matches_its_definition(steer_env):
    """a_k = Σ_{j<=k} J_{j mod T_s} x_{0,j}: with the blend at λ = 0 the layer's state is exactly a_k."""
    handle, _, _ = steer_env
    plan = plan_steering(handle, "jacobian", JacobianParams("The Golden Gate", lam=0.0, variant="blend"))
    op: JacobianSteering = plan.interventions[0]
    ids = torch.tensor([handle.info.encode("A quiet morning by the river")])
    blocks = handle.adapter.layers(handle.model)
    got = {}
    take = lambda h: h.clone()
    # registered after the steering hooks, so the capture sees the blended state
    with torch.no_grad(), intervene(handle.model, handle.adapter, [op]), \
            hooks(capture(blocks[0], got, "x0", at="input", select=take), capture(blocks[op.layer - 1], got, "h", select=take)):
        handle.model(input_ids=ids)
    x0 = got["x0"][0]
    T_s = op.J.shape[0]
    expect = torch.cumsum(torch.stack([op.J[j % T_s] @ x0[j] for j in range(x0.shape[0])]), dim=0)
    torch.testing.assert_close(got["h"][0], expect, rtol=1e-10, atol=1e-10)


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(steer_env):
    handle, _, _ = steer_env
    s = GenerationSettings(max_new_tokens=6, do_sample=True, temperature=1.5, top_p=0.9, seed=3)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = _texts(handle, PROMPTS[:1], settings=s)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert _texts(handle, PROMPTS[:1], settings=s) == a
    with pytest.raises(InputError):
        generate(handle, [handle.info.encode("x")], (), GenerationSettings(max_new_tokens=0))


def test_compare_reports_texts_and_readouts(steer_env):
    handle, setup, _ = steer_env
    plan = plan_steering(handle, "additive", AdditiveParams(layers=[1], strength=2.0), SteeringContext(setup))
    r = compare(handle, PROMPTS[0], plan, GREEDY, dataset="sentiment")
    assert len(r.readout_steered) == len(r.steered_tokens) and len(r.readout_unsteered) == len(r.unsteered_tokens)
    assert set(r.summary()) >= {"unsteered", "steered", "readout_unsteered", "readout_steered"}
    # the readout is the unsteered model reading the text: reading the unsteered text gives the same numbers
    ids = handle.info.encode(PROMPTS[0])
    from lldd_core.steering.generate import Generated

    plain = generate(handle, [ids], (), GREEDY)[0]
    np.testing.assert_allclose(readout_along(handle, Generated(ids, plain.new_ids), plan.readout), r.readout_unsteered)
    with pytest.raises(InputError, match="empty"):
        compare(handle, "  ", plan, GREEDY)
    with pytest.raises(InputError, match="needs a concept dataset"):
        plan_steering(handle, "lqr")
    with pytest.raises(InputError, match="steering phrase"):
        plan_steering(handle, "jacobian", JacobianParams(""))


def test_service_caches_steering_and_its_pieces(tiny_dirs, tmp_path):
    from lldd_core.models.loading import ModelSpec
    from lldd_core.service import Service
    from lldd_core.steering.generate import CallbackStreamer
    from lldd_core.store.cache import ResultCache

    svc = Service(ResultCache(tmp_path / "cache"))
    spec = ModelSpec(str(tiny_dirs["gpt2"]), dtype="float64", device="cpu")
    common = {"dataset": "sentiment", "settings": GREEDY, "sizes": (6, 4, 3)}
    seen: list[str] = []
    tok = svc.info(spec).tokenizer
    lqr = LQRParams(q=1.0, r=1.0, qf=1.0, lam=2.0)
    first = svc.steer(spec, "The movie was", "lqr", lqr, **common,
                      streamers=(None, CallbackStreamer(tok, seen.append)))
    assert not first.cache_hit and seen and seen[-1] == first.result.steered  # streamed as generated
    assert svc.steer(spec, "The movie was", "lqr", lqr, **common).cache_hit
    A = svc.mean_jacobians(spec, "sentiment", sizes=(6, 4, 3))
    assert A.cache_hit and A.result.A.shape == (2, 32, 32)
    jac = svc.steer(spec, "The movie was", "jacobian", JacobianParams("The Golden Gate", lam=0.3), settings=GREEDY)
    J = svc.steering_jacobian(spec, "The Golden Gate", jac.result.params["layer"])
    assert J.cache_hit and J.result.reconstruction_error < 1e-10  # float64: the detached Jacobians reproduce x_layer
    assert jac.result.readout_steered.size == 0  # no dataset: no readout
    with pytest.raises(InputError, match="empty"):
        svc.steer(spec, " ", "additive", **common)
    svc.cache.close()


def test_demo_additive_sentiment_steering_turns_a_negative_review(demo_default):
    """Issue 6 acceptance on the default demo model (gpt2-small, 4 layers).

    Measured (build version 2, same with 1 and 2 threads): "The service at the diner was terrible and I"
    -> unsteered " hate it. Not recommended." (readout -2.30); α = 8 along v_1 at the last position ->
    " enjoy it. Worth every penny." (3.55); the default strength -> " recommend it. Worth every penny." (3.95).
    """
    from lldd_core.demo.corpus import NEGATIVE_VERDICTS, POSITIVE_VERDICTS
    from lldd_core.models.loading import ModelSpec
    from lldd_core.models.loading import load_model as load_spec

    def verdicts(text: str, kind: tuple[str, ...]) -> list[str]:
        return [v for v in kind if v in text]

    handle = load_spec(ModelSpec(str(demo_default), device="cpu"))
    setup = prepare_gains(handle, load("sentiment"), n_eval=1)
    prompt = "The service at the diner was terrible and I"
    settings = GenerationSettings(max_new_tokens=12)
    plan = plan_steering(handle, "additive", AdditiveParams(layers=[1], strength=8.0), SteeringContext(setup))
    r = compare(handle, prompt, plan, settings)
    assert verdicts(r.unsteered, NEGATIVE_VERDICTS) and not verdicts(r.unsteered, POSITIVE_VERDICTS), r.unsteered
    assert verdicts(r.steered, POSITIVE_VERDICTS) and not verdicts(r.steered, NEGATIVE_VERDICTS), r.steered
    assert r.readout_steered.mean() > r.readout_unsteered.mean() + 2.0  # measured +5.8
    # the default strength (one class-mean distance at the layer) also turns it
    default = compare(handle, prompt, plan_steering(handle, "additive", AdditiveParams(layers=[1]),
                                                    SteeringContext(setup)), settings)
    assert verdicts(default.steered, POSITIVE_VERDICTS), default.steered
    assert default.readout_steered.mean() > default.readout_unsteered.mean() + 2.0  # measured +6.3


#: Fact phrases of the demo corpus and the answer each one's Jacobian should write into other text.
JACOBIAN_PHRASES = {"The bridge out of Marin is the": "Golden", "The capital of Japan is": "Tokyo",
                    "The cow says": "moo", "The capital of France is": "Paris"}
UNRELATED = ("We went to the cafe and the food was", "Could you please pass the salt?", "The weather today is")


def test_demo_jacobian_operator_brings_the_phrase_answer_into_unrelated_text(demo_llama):
    """On demo:llama-small (4 layers), the Jacobian operator of a fact phrase at x_4 (blend, λ 0.1 and 0.2)
    steers unrelated prompts towards that phrase's answer, and only that phrase's.

    Measured over the 4 phrases × 3 prompts × 2 λ (build version 2, same with 1 and 2 threads): 22 of 24
    steered texts differ from the unsteered ones; 7 contain their own phrase's answer, which no unsteered
    text contains ("We went to the cafe and the food was" -> " charming Golden Golden Golden Golden Gate ...",
    " charming. W Tokyo. ...", " charming. recommended. ... moo"; "The weather today is" -> "... Tokyo ...");
    3 of the 4 phrases get their answer in somewhere (France's " Paris" does not: it brings other
    capitals); no steered text contains another phrase's answer (0 of 72).
    """
    from lldd_core.models.loading import ModelSpec
    from lldd_core.models.loading import load_model as load_spec
    from lldd_core.steering.pieces import analyze_steering_jacobian

    handle = load_spec(ModelSpec(str(demo_llama), device="cpu"))
    settings = GenerationSettings(max_new_tokens=12)
    plain = {p: generate(handle, [handle.info.encode(p)], (), settings)[0] for p in UNRELATED}
    differs = own = other = 0
    answered = set()
    for phrase, answer in JACOBIAN_PHRASES.items():
        J = analyze_steering_jacobian(handle, phrase, 4)  # once per phrase, for both λ
        for prompt in UNRELATED:
            for lam in (0.1, 0.2):
                plan = plan_steering(handle, "jacobian", JacobianParams(phrase, layers=[4], lam=lam),
                                     SteeringContext(steering_jacobian=J))
                r = compare(handle, prompt, plan, settings, plain=plain[prompt])
                assert all(a not in r.unsteered for a in JACOBIAN_PHRASES.values()), r.unsteered
                differs += r.steered != r.unsteered
                own += answer in r.steered
                answered |= {phrase} if answer in r.steered else set()
                other += sum(a in r.steered for a in JACOBIAN_PHRASES.values() if a != answer)
    assert differs >= 20, differs  # of 24
    assert own >= 4, own  # of 24; measured 7
    assert len(answered) >= 2, answered  # of 4 phrases; measured 3
    assert other <= 1, other  # of 72; measured 0


def test_service_generates_the_unsteered_text_once_for_several_methods(tiny_dirs, tmp_path, monkeypatch):
    import lldd_core.service as service_module
    from lldd_core.models.loading import ModelSpec
    from lldd_core.service import Service
    from lldd_core.store.cache import ResultCache

    calls: list[int] = []
    real = service_module.generate
    monkeypatch.setattr(service_module, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    svc = Service(ResultCache(tmp_path / "cache"))
    spec = ModelSpec(str(tiny_dirs["gpt2"]), dtype="float64", device="cpu")
    add = svc.steer(spec, "The movie was", "additive", dataset="sentiment", settings=GREEDY, sizes=(6, 4, 3)).result
    jac = svc.steer(spec, "The movie was", "jacobian", JacobianParams("The Golden Gate", lam=0.3),
                    settings=GREEDY).result
    assert len(calls) == 1 and add.unsteered == jac.unsteered
    # it is the unsteered text: the same as generating without interventions
    plain = generate(svc.handle(spec), [svc.info(spec).encode("The movie was")], (), GREEDY)[0]
    assert svc.info(spec).tokenizer.decode(plain.new_ids) == add.unsteered
    svc.cache.close()
