"""The demo models learn, carry concepts, linearize exactly and rebuild identically."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from lldd_core.demo import DEMO_CONFIGS, build_demo, corpus, datasets
from lldd_core.demo.build import META_FILE, greedy_completion
from lldd_core.forward.jacobian import jacobian_operator, reconstruct, relative_error
from lldd_core.models.loading import ModelSpec, load_model


def _load(path):
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_default_model_has_learned(demo_default):
    info = json.loads((demo_default / META_FILE).read_text())
    print(f"held-out loss {info['heldout_loss']:.3f} nats vs unigram {info['unigram_loss']:.3f}; "
          f"built in {info['build_seconds']:.0f} s")
    assert info["heldout_loss"] < 0.5 * info["unigram_loss"]
    model, tok = _load(demo_default)
    completions = {p: greedy_completion(model, tok, p) for p, _ in corpus.FACT_PROMPTS}
    right = [p for p, a in corpus.FACT_PROMPTS if completions[p].strip().startswith(a)]
    print(completions)
    assert len(right) >= 8, completions
    assert greedy_completion(model, tok, "The bridge out of Marin is the").strip().startswith("Golden Gate")


@torch.no_grad()
def _final_states(model, tok, texts: list[str]) -> torch.Tensor:
    """Last-token state at the final layer (after the final norm), one sentence at a time."""
    out = []
    for text in texts:
        ids = torch.tensor([tok(text)["input_ids"]])
        out.append(model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1])
    return torch.stack(out)


def test_sentiment_direction_separates_held_out_half(demo_default):
    model, tok = _load(demo_default)
    rows = datasets.load("sentiment")
    fit, test = rows[: len(rows) // 2], rows[len(rows) // 2 :]
    fit_x = _final_states(model, tok, [r["text"] for r in fit])
    fit_y = torch.tensor([r["label"] for r in fit])
    mu1, mu0 = fit_x[fit_y == 1].mean(0), fit_x[fit_y == 0].mean(0)
    v = (mu1 - mu0) / (mu1 - mu0).norm()
    threshold = float(((mu1 + mu0) / 2) @ v)
    test_x = _final_states(model, tok, [r["text"] for r in test])
    pred = (test_x @ v > threshold).long()
    accuracy = float((pred == torch.tensor([r["label"] for r in test])).float().mean())
    print(f"sentiment class-mean direction: held-out accuracy {accuracy:.3f}")
    assert accuracy >= 0.9


def test_default_model_jacobian_reconstructs(demo_default):
    handle = load_model(ModelSpec(str(demo_default), dtype="float32", device="cpu"))
    ids = torch.tensor(handle.info.encode("The bridge out of Marin is the"))
    assert handle.info.token_strings(ids.tolist())[0] == "<|endoftext|>"
    op = jacobian_operator(handle.model, handle.adapter, ids)
    full = op.full()
    assert relative_error(op.y, reconstruct(full.J, op.x0, full.b)) < 1e-5


@pytest.mark.parametrize("name", [n for n in DEMO_CONFIGS if n != "gpt2-small"])
def test_other_demo_models_build_and_reconstruct(name, tmp_path):
    """Every size and architecture builds (a few steps here) and its Jacobian reconstructs."""
    info = build_demo(name, steps=2, target=tmp_path / name)
    assert info.parameters > 0 and (tmp_path / name / "model.safetensors").exists()
    handle = load_model(ModelSpec(str(tmp_path / name), dtype="float32", device="cpu"))
    assert handle.model.config.model_type == DEMO_CONFIGS[name].arch
    op = jacobian_operator(handle.model, handle.adapter, torch.tensor(handle.info.encode("The cow says")))
    full = op.full()
    assert relative_error(op.y, reconstruct(full.J, op.x0, full.b)) < 1e-5


def test_family_grows(tmp_path):
    sizes = [DEMO_CONFIGS[n] for n in ("gpt2-small", "gpt2-medium", "gpt2-large")]
    assert [c.d_model for c in sizes] == sorted(c.d_model for c in sizes)
    assert [c.n_layers for c in sizes] == sorted(c.n_layers for c in sizes)
    assert DEMO_CONFIGS["llama-small"].d_model == DEMO_CONFIGS["gpt2-small"].d_model


def test_rebuild_with_same_seed_is_identical(tmp_path):
    a = build_demo("llama-small", steps=3, target=tmp_path / "a")
    b = build_demo("llama-small", steps=3, target=tmp_path / "b")
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a.heldout_loss == b.heldout_loss
    c = build_demo("llama-small", steps=3, seed=1, target=tmp_path / "c")
    wc = load_file(tmp_path / "c" / "model.safetensors")
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    assert c.seed == 1
