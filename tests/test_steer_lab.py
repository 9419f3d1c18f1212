"""The Steering lab (lldd_core.steering.lab): what a sweep must show, on the demo model and on tiny models.

Demo sweeps are small (splits 30/15/15, 4 prompts, 8 new tokens) and shared by the module (one service, one cache).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

import lldd_core.service as service_module
from lldd_core.cli.main import main
from lldd_core.errors import InputError
from lldd_core.forward.interventions import AddRowVectors, AddVectors, intervene
from lldd_core.models.loading import ModelSpec, load_model, resolve_model
from lldd_core.steering.lab.answers import pareto, recommend
from lldd_core.steering.lab.metrics import distinct_repetition, score_text
from lldd_core.steering.lab.probe import fit_probe
from lldd_core.steering.lab.settings import SweepSettings, parse_strengths

SMALL = {"sizes": (30, 15, 15), "n_prompts": 4, "max_new_tokens": 8}
METRICS = ("success", "perplexity", "repetition", "kl", "readout_shift")


@pytest.fixture(scope="module")
def demo_sweep(demo_default, module_service):
    """All four methods at zero and two strengths; additive at layers 1 and 2 with an extreme strength too."""
    settings = SweepSettings(layers=(1, 2), strengths=(("additive", (0.0, 8.0, 16.0, 64.0)), ("llv", (0.0, 20.0)),
                                                         ("jacobian", (0.0, 1.0)), ("lqr", (0.0, 10.0))), **SMALL)
    spec = ModelSpec(str(demo_default))
    return module_service.steer_sweep(spec, "sentiment", settings), spec, settings


def rows_of(result, method, layer="any"):
    return [r for r in result.rows if r["method"] == method and (layer == "any" or r["layer"] == layer)]


def test_zero_strength_reproduces_the_unsteered_metrics_exactly(demo_sweep):
    computed, _, _ = demo_sweep
    r = computed.result
    zeros = [row for row in r.rows if row["strength"] == 0]
    assert {row["method"] for row in zeros} == {"additive", "llv", "jacobian", "lqr"}
    for row in zeros:
        for name in METRICS:
            assert row[name] == r.unsteered[name], (row, name)  # exactly, not approximately
        i = r.rows.index(row)
        assert r.details[i]["example"] == r.unsteered_texts[0]
    assert r.unsteered["kl"] == 0.0 and r.unsteered["readout_shift"] == 0.0


def test_success_rises_with_strength_and_an_extreme_strength_costs_fluency(demo_sweep):
    r = demo_sweep[0].result
    for layer in (1, 2):
        rows = sorted(rows_of(r, "additive", layer), key=lambda row: row["strength"])
        success = [row["success"] for row in rows]
        shift = [row["readout_shift"] for row in rows]
        # up with strength (Spearman > 0.5 over α = 0, 8, 16, 64), the strongest above the unsteered; 4 prompts make
        # steps of 0.25, and a strong setting may lose one prompt to a loop, so not strictly monotone
        assert spearmanr([row["strength"] for row in rows], success).statistic > 0.5 and success[-1] > success[0], success
        assert shift[0] == 0 and all(b > 0 for b in shift[1:]) and shift[-1] > shift[1], shift
        assert rows[-1]["perplexity"] > r.unsteered["perplexity"]  # α = 64 costs fluency
        assert rows[-1]["kl"] > rows[1]["kl"] > 0  # and side effects, growing with α
    assert r.unsteered["success"] < 1.0  # the prompts are negative reviews: not already steered


def test_answers_probe_and_best_layers(demo_sweep):
    computed, _, settings = demo_sweep
    r = computed.result
    assert 0.9 <= r.probe_accuracy <= 1.0  # held out, on the evaluation split
    assert r.success_by == "verdict"
    assert r.predicted_best_layer in range(1, 4) and r.measured_best_layer in (1, 2)
    fp = r.forward_passes
    assert fp["per_cell"] == 4 * (8 + 1) + len(settings.neutral)
    assert fp["full_layer_sweep"] == fp["layers"] * 3 * fp["per_cell"] and fp["saved"] == fp["full_layer_sweep"] - 3 * fp["per_cell"]
    for method, front in r.pareto.items():
        rows = [r.rows[i] for i in front]
        assert rows and all(row["method"] == method for row in rows)
        assert [row["perplexity"] for row in rows] == sorted(row["perplexity"] for row in rows)
    for rec in r.recommended.values():
        if rec is not None:
            assert rec["success"] >= settings.success_target
            assert rec["perplexity"] <= settings.fluency_budget * r.unsteered["perplexity"]
    summary = r.summary()
    for name in ("rows", "unsteered", "recommended", "predicted_best_layer", "measured_best_layer", "forward_passes"):
        assert name in summary
    assert set(summary["rows"][0]) == {"method", "layer", "strength", *METRICS}


def test_a_widened_sweep_computes_only_its_new_cells(demo_sweep, module_service):
    computed, spec, settings = demo_sweep
    again = module_service.steer_sweep(spec, "sentiment", settings)
    assert again.cache_hit and again.result.cells_computed == 0 and again.result.rows == computed.result.rows
    wider = SweepSettings(**{**settings.__dict__, "strengths": (*settings.strengths[:1], ("llv", (0.0, 10.0, 20.0)),
                                                                 *settings.strengths[2:])})
    grown = module_service.steer_sweep(spec, "sentiment", wider)
    assert grown.result.cells_computed == 1  # llv Δy = 10 only
    same = [row for row in grown.result.rows if not (row["method"] == "llv" and row["strength"] == 10.0)]
    assert same == computed.result.rows


def test_the_external_judge_path(demo_default, module_service, tmp_path):
    """A tiny random classifier saved with the demo's own tokenizer judges the continuations."""
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    tok = AutoTokenizer.from_pretrained(str(demo_default))
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tok), n_positions=128, num_labels=2,
                        id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1},
                        pad_token_id=tok.eos_token_id)
    folder = tmp_path / "judge"
    GPT2ForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    spec = ModelSpec(str(demo_default))
    settings = SweepSettings(methods=("additive",), layers=(2,), strengths=(("additive", (0.0, 16.0)),),
                             classifier=str(folder), **SMALL)
    r = module_service.steer_sweep(spec, "sentiment", settings).result
    assert r.success_by == "judge"
    model = GPT2ForSequenceClassification.from_pretrained(folder).eval()
    for row, extra in zip(r.rows, r.details):
        assert row["success"] == extra["judge_success"]
    with torch.no_grad():  # the judge's verdicts by hand on the unsteered continuations
        p = [float(torch.softmax(model(**tok(t if t.strip() else " ", return_tensors="pt")).logits[0].double(), -1)[1])
             for t in r.unsteered_texts]
    assert r.unsteered["success"] == float(np.mean(np.asarray(p) > 0.5))
    with pytest.raises(InputError, match="Could not load the classifier"):
        module_service.steer_sweep(spec, "sentiment", SweepSettings(classifier=str(tmp_path / "none"), **SMALL))
    with pytest.raises(InputError, match="has no label 'upbeat'"):
        module_service.steer_sweep(spec, "sentiment", SweepSettings(
            methods=("additive",), layers=(2,), strengths=(("additive", (0.0,)),), classifier=str(folder),
            classifier_label="upbeat", **SMALL))


# --- pieces on tiny models and hand-made data --------------------------------------------------------------


def test_row_vectors_add_per_row_what_add_vectors_adds_alone(gpt2_f64):
    handle = load_model(resolve_model(gpt2_f64))
    d = handle.info.d_model
    torch.manual_seed(1)
    w1, w2 = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    mask = torch.ones_like(ids)

    def logits(interventions, rows):
        with torch.no_grad(), intervene(handle.model, handle.adapter, interventions, attention_mask=mask[rows]):
            return handle.model(input_ids=ids[rows], attention_mask=mask[rows]).logits

    merged = logits([AddRowVectors({1: torch.stack([w1, w2])})], [0, 1])
    assert torch.allclose(merged[0], logits([AddVectors({1: w1})], [0])[0], atol=1e-10, rtol=0)
    assert torch.allclose(merged[1], logits([AddVectors({1: w2})], [1])[0], atol=1e-10, rtol=0)
    zero = logits([AddRowVectors({1: torch.zeros(2, d, dtype=torch.float64)})], [0, 1])
    assert torch.equal(zero, logits([], [0, 1]))  # a zero row is no intervention, bit for bit


def test_perplexity_and_readout_of_one_text(gpt2_f64):
    handle = load_model(resolve_model(gpt2_f64))
    prompt, new = [5, 6, 7], [8, 9, 10, 8, 9]
    v = torch.randn(handle.info.d_model, dtype=torch.float64)
    s = score_text(handle, prompt, new, v)
    ids = torch.tensor([prompt + new])
    with torch.no_grad():
        out = handle.model(input_ids=ids, output_hidden_states=True)
    logp = torch.log_softmax(out.logits[0, 2:-1], -1)
    nll = -logp[torch.arange(5), torch.tensor(new)].mean()
    assert abs(s.perplexity - float(torch.exp(nll))) < 1e-10
    # x_L before the final norm: the last block's output (hidden_states[-1] is normed in GPT-2)
    assert s.repetition == distinct_repetition(new) == pytest.approx(1 / 4)


def test_probe_fits_separable_data_and_is_deterministic():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (40, 5)) + 3, rng.normal(0, 1, (40, 5)) - 3])
    y = np.r_[np.ones(40), np.zeros(40)]
    a, b = fit_probe(X, y), fit_probe(X, y)
    assert a.accuracy(X, y) == 1.0 and np.array_equal(a.weight, b.weight)
    assert a.probability(np.full((1, 5), 3.0))[0] > 0.99


def test_pareto_and_recommendation_rules():
    rows = [{"method": "m", "layer": 1, "strength": s, "success": sc, "perplexity": p}
            for s, sc, p in [(0, 0.0, 1.0), (2, 0.5, 1.2), (4, 0.5, 2.0), (8, 1.0, 3.0), (16, 1.0, 9.0)]]
    assert pareto(rows) == [0, 1, 3]  # (4: same success, more perplexity; 16: dominated by 8)
    tie = [*rows, {**rows[3], "layer": 2, "strength": 8.0}, {**rows[3], "layer": 3, "strength": -4.0}]
    assert pareto(tie) == [0, 1, 6]  # one setting per point: the least |strength|
    assert recommend(rows, 0.75, 3.0, 1.0)["strength"] == 8
    assert recommend(rows, 0.75, 2.0, 1.0) is None
    assert recommend(rows, 0.5, 10.0, 1.0)["strength"] == 2


def test_settings_refuse_bad_input_in_one_line():
    for bad, match in [({"methods": ("nope",)}, "cannot sweep"), ({"strengths": (("jacobian", (9.0,)),)}, "λ"),
                       ({"layers": (9,)}, "layer"), ({"n_prompts": 0}, "evaluation prompts"),
                       ({"success_by": "judge"}, "needs a classifier"), ({"prompts": (" ",)}, "empty")]:
        with pytest.raises(InputError, match=match) as err:
            SweepSettings(**bad).check(4, 64)
        assert "\n" not in str(err.value)
    assert parse_strengths(["0,4", "llv=0,10"], ("additive", "llv")) == (("additive", (0.0, 4.0)), ("llv", (0.0, 10.0)))


def test_cli_steer_sweep_json_and_bad_input(capsys, tiny_dirs, cache_dir, monkeypatch):
    monkeypatch.setattr(service_module, "_SERVICE", None)
    base = ["steer-sweep", "--model", str(tiny_dirs["gpt2"]), "--dataset", "sentiment", "--sizes", "6,4,3",
            "--prompts", "2", "--max-new-tokens", "3", "--quiet"]
    code = main([*base, "--method", "additive,lqr", "--layers", "1", "--strengths", "0,4", "--json", "-"])
    out, _ = capsys.readouterr()
    assert code == 0
    payload = json.loads(out)
    for name in ("rows", "unsteered", "recommended", "predicted_best_layer", "measured_best_layer", "forward_passes"):
        assert name in payload
    assert [(r["method"], r["layer"], r["strength"]) for r in payload["rows"]] == [
        ("additive", 1, 0.0), ("additive", 1, 4.0), ("lqr", None, 0.0), ("lqr", None, 4.0)]
    assert set(payload["rows"][0]) == {"method", "layer", "strength", *METRICS}
    for bad in (["--method", "nope"], ["--strengths", "additive=abc"], ["--layers", "7"],
                ["--classifier", str(cache_dir / "missing")]):
        code = main([*base, *bad])
        _, err = capsys.readouterr()
        assert code == 2 and err.startswith("error:") and err.count("\n") == 1, (bad, err)
