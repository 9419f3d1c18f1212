"""On a trained demo model the decoded spectra say what the model computes (the paper's reading)."""

from __future__ import annotations

from lldd_core.demo.corpus import FACT_PROMPTS
from lldd_core.models.loading import ModelSpec
from lldd_core.service import Service
from lldd_core.store.cache import ResultCache


def test_last_token_top_singular_vector_decodes_to_the_greedy_next_token(demo_llama, tmp_path):
    service = Service(ResultCache(tmp_path / "cache"))
    spec = ModelSpec(str(demo_llama), device="cpu")
    hits = {}
    for prompt, _answer in FACT_PROMPTS:
        r = service.spectrum(spec, prompt, k=4, n_decode=8).result
        assert r.converged
        hits[prompt] = r.next_token in r.u_tokens[-1][0]  # top-8 tokens of u_1 of the last token
        if prompt.startswith("The bridge out of Marin"):
            assert r.next_token == " Golden" and r.next_token in r.u_tokens[-1][0], r.u_tokens[-1][0]
    # measured (build version 2, same with 1 and 2 threads): 10 of 10, the first decoded token of u_1 in 8
    # (Marin's u_1 starts " capital", " Golden"; France's " Nairobi", ..., " Paris" further down)
    assert sum(hits.values()) >= 8, hits
