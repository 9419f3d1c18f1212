"""Decoding vectors to tokens: an embedding row decodes to its own token first."""

from __future__ import annotations

import torch

from lldd_core.linalg.decoding import decode_input, decode_output
from tests.helpers import load


def test_embedding_rows_decode_to_their_tokens(tiny_dirs):
    for family in ("gpt2", "llama", "gemma2"):
        handle = load(tiny_dirs[family])
        W_E = handle.model.get_input_embeddings().weight
        tokens = torch.arange(3, 40)
        decoded = decode_input(W_E[tokens], W_E, top=5)
        assert torch.equal(decoded.ids[:, 0], tokens)
        torch.testing.assert_close(decoded.scores[:, 0], torch.ones(len(tokens), dtype=W_E.dtype))


def test_unembedding_rows_decode_to_their_tokens(tiny_dirs):
    """``W_U w_t`` peaks at ``t`` when rows have similar norms; scale rows to make that exact."""
    handle = load(tiny_dirs["qwen3"])
    W_U = handle.model.get_output_embeddings().weight
    W = W_U / W_U.norm(dim=-1, keepdim=True)  # equal norms: ||w_t||^2 = 1 > w_r . w_t for r != t
    tokens = torch.arange(3, 60)
    decoded = decode_output(W[tokens], W, top=3)
    assert torch.equal(decoded.ids[:, 0], tokens)


def test_unembedding_rows_of_a_trained_model(demo_default):
    """Trained (tied) rows of the tokens a prompt uses decode to themselves by logits.

    Not every row does: rows of tokens the corpus never or rarely uses stay near their random init.
    """
    from lldd_core.models.loading import ModelSpec, load_model

    handle = load_model(ModelSpec(str(demo_default), device="cpu"))
    W_U = handle.model.get_output_embeddings().weight
    ids = torch.tensor(handle.info.encode("The bridge out of Marin is the Golden Gate"))
    assert torch.equal(decode_output(W_U[ids], W_U, top=1).ids[:, 0], ids)


def test_strings_keep_the_shape(tiny_dirs):
    handle = load(tiny_dirs["gpt2"])
    W_E = handle.model.get_input_embeddings().weight
    decoded = decode_input(W_E[torch.arange(6)].reshape(2, 3, -1), W_E, top=4)
    strings = decoded.strings(handle.tokenizer)
    assert len(strings) == 2 and len(strings[0]) == 3 and len(strings[0][0]) == 4
    assert strings[1][2][0] == handle.tokenizer.decode([5])
